/* Drain: a worker that is asked to stop (tessera-ctl drain, or SIGTERM as
 * Kubernetes sends it) hands every cell to the other workers by live
 * handover — not by crash recovery — while players keep playing, and no
 * acknowledged input is lost. Real nats-server, redis-server, orchestrator,
 * two workers and the sim. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define SIM_SECONDS "10"
#define LOAD_INPUTS 1000 /* sim inputs applied before the drain */

typedef struct {
    ts_h_stack_t stack;
    int sim;
    ts_bus_t *bus;
    ts_probe_t *probe;
    ts_registry_t *reg;
} drain_env_t;

static void start_env(drain_env_t *env)
{
    const char *orch[] = {"--orch.rebalance=0", NULL};
    ts_h_spawn_stack(&ts_h, orch, NULL, NULL, &env->stack);
    assert_true(ts_h_wait_world(&ts_h, WORLD, NCELLS, 15000));
    assert_int_equal(ts_bus_connect(&env->bus, ts_h.nats_url, "it_drain"), TS_OK);
    assert_int_equal(ts_probe_create(&env->probe, env->bus), TS_OK);
    assert_int_equal(ts_registry_connect(&env->reg, ts_h.redis_url), TS_OK);
    /* every cell bound: the orchestrator answers and both workers report 8 */
    char reply[1024];
    uint64_t deadline = ts_mono_us() + 15000000ULL;
    while (ts_probe_ctl(env->bus, WORLD, "stats", "", 1000, reply, sizeof reply) != TS_OK) {
        assert_true(ts_mono_us() < deadline);
        ts_sleep_ms(100);
    }
    const char *sim[] = {"--sim.players=200", "--sim.duration_s=" SIM_SECONDS, NULL};
    env->sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", sim);
    /* players are walking */
    deadline = ts_mono_us() + 15000000ULL;
    while (ts_probe_inputs_applied(env->probe) < LOAD_INPUTS) {
        if (ts_mono_us() > deadline)
            fail_msg("the workers applied %llu sim inputs in 15 s, want %d",
                     (unsigned long long)ts_probe_inputs_applied(env->probe), LOAD_INPUTS);
        ts_sleep_ms(20);
    }
}

static void stop_env(drain_env_t *env)
{
    ts_probe_destroy(env->probe);
    ts_bus_destroy(env->bus);
    ts_registry_destroy(env->reg);
}

/* Polls until every cell belongs to `owner`; returns how many cells it had
 * to take over, with their epochs checked to have moved by exactly one. */
static size_t wait_all_owned_by(drain_env_t *env, const char *owner, const ts_cell_entry_t *before,
                                size_t nbefore, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    for (;;) {
        ts_cell_entry_t *cells = NULL;
        size_t n = 0;
        assert_int_equal(ts_registry_cells(env->reg, WORLD, &cells, &n), TS_OK);
        size_t owned = 0;
        for (size_t i = 0; i < n; i++)
            owned += strcmp(cells[i].owner, owner) == 0;
        if (owned == n && n == NCELLS) {
            size_t moved = 0;
            for (size_t i = 0; i < n; i++) {
                for (size_t k = 0; k < nbefore; k++) {
                    if (!ts_cell_eq(&before[k].cell, &cells[i].cell) || strcmp(before[k].owner, owner) == 0)
                        continue;
                    assert_int_equal(cells[i].epoch, before[k].epoch + 1);
                    moved++;
                }
            }
            free(cells);
            return moved;
        }
        free(cells);
        if (ts_mono_us() > deadline)
            fail_msg("cells not all owned by %s after %lld ms", owner, (long long)timeout_ms);
        ts_sleep_ms(50);
    }
}

/* The orchestrator counts a move once its COMMIT round trip is over, a
 * moment after the registry shows it: poll briefly. */
static void assert_moved_by_handover(drain_env_t *env, double expect_moves)
{
    char reply[1024] = "";
    double drains = -1, recoveries = -1;
    uint64_t deadline = ts_mono_us() + 3000000ULL;
    do {
        if (ts_probe_ctl(env->bus, WORLD, "stats", "", 2000, reply, sizeof reply) == TS_OK &&
            ts_probe_json_number(reply, "drain_moves", &drains) &&
            ts_probe_json_number(reply, "recoveries", &recoveries) && drains >= expect_moves)
            break;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    if (drains != expect_moves || recoveries != 0) {
        ts_h.failed = true;
        fail_msg("expected %.0f drain moves and no recovery; stats: %s", expect_moves, reply);
    }
}

static void assert_sim_exact(drain_env_t *env)
{
    int rc = ts_h_wait(&ts_h, env->sim, 40000);
    char *log = ts_h_read_log(&ts_h, env->sim);
    const char *done = log ? strstr(log, "sim: done") : NULL;
    if (rc != 0 || !done) {
        ts_h.failed = true;
        fail_msg("sim exit %d, verdict: %s", rc, done ? done : "none");
    }
    unsigned long long sent = 0, acked = 0, applied = 0;
    assert_int_equal(sscanf(done, "sim: done sent=%llu acked=%llu applied=%llu", &sent, &acked, &applied), 3);
    assert_true(sent > 0);
    assert_true(sent == acked && acked == applied);
    free(log);
}

static void test_ctl_drain_moves_cells_live(void **state)
{
    drain_env_t env = {0};
    start_env(&env);
    ts_cell_entry_t *before = NULL;
    size_t nbefore = 0;
    assert_int_equal(ts_registry_cells(env.reg, WORLD, &before, &nbefore), TS_OK);

    char reply[256];
    assert_int_equal(ts_probe_ctl(env.bus, WORLD, "drain", "w2", 2000, reply, sizeof reply), TS_OK);
    if (strncmp(reply, "ok draining 8 cells", 19) != 0) fail_msg("drain w2 answered: %s", reply);
    assert_int_equal(wait_all_owned_by(&env, "w1", before, nbefore, 10000), 8);
    assert_moved_by_handover(&env, 8);
    /* w2 keeps running, owning nothing, and gets nothing back: its
     * heartbeats say so for a second, and so does the registry then */
    uint64_t t_drained = ts_mono_us();
    ts_probe_hb_t hb = {.ncells = 1};
    uint64_t deadline = t_drained + 10000000ULL;
    while (!(ts_probe_heartbeat(env.probe, "w2", &hb) && hb.received_us > t_drained + 1000000ULL)) {
        if (ts_mono_us() > deadline) fail_msg("w2 sent no heartbeat for 10 s after its drain");
        ts_sleep_ms(20);
    }
    if (hb.ncells != 0) fail_msg("w2 lists %zu cells in its heartbeat a second after its drain", hb.ncells);
    assert_int_equal(wait_all_owned_by(&env, "w1", before, nbefore, 1000), 8);
    assert_int_equal(ts_h_wait(&ts_h, env.stack.workers[1], 0), -1);
    /* the last worker cannot drain: nobody to take its cells */
    assert_int_equal(ts_probe_ctl(env.bus, WORLD, "drain", "w1", 2000, reply, sizeof reply), TS_OK);
    if (strncmp(reply, "error:", 6) != 0) fail_msg("drain of the last worker answered: %s", reply);
    assert_sim_exact(&env);
    free(before);
    stop_env(&env);
    ts_h_pass();
}

static void test_sigterm_drains_then_exits(void **state)
{
    drain_env_t env = {0};
    start_env(&env);
    ts_cell_entry_t *before = NULL;
    size_t nbefore = 0;
    assert_int_equal(ts_registry_cells(env.reg, WORLD, &before, &nbefore), TS_OK);

    ts_h_signal(&ts_h, env.stack.workers[0], SIGTERM); /* what Kubernetes sends */
    assert_int_equal(ts_h_wait(&ts_h, env.stack.workers[0], 15000), 0);
    /* it exited only once it owned nothing: every cell is already on w2 */
    assert_int_equal(wait_all_owned_by(&env, "w2", before, nbefore, 100), 8);
    assert_moved_by_handover(&env, 8);
    char *log = ts_h_read_log(&ts_h, env.stack.workers[0]);
    assert_non_null(log);
    assert_non_null(strstr(log, "draining 8 cells before exit"));
    free(log);
    assert_sim_exact(&env);
    free(before);
    stop_env(&env);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ctl_drain_moves_cells_live, ts_h_test_start, ts_h_test_stop),
        cmocka_unit_test_setup_teardown(test_sigterm_drains_then_exits, ts_h_test_start, ts_h_test_stop),
    };
    return TS_H_RUN("it_drain", tests, NULL, NULL);
}
