/* Rebalancing against real nats-server -js and redis-server: with every cell
 * on w1 and 400 simulated players (a storm left them there), a worker w3
 * that joins receives cells from the orchestrator (live handovers, several
 * at once) until the load is even — at least four cells, entity counts
 * within a factor of two — within STORM_MS, with the default cooldown and
 * hysteresis (one move per cooldown could not do it: the moves are planned
 * in proportion to the imbalance), and then nothing moves any more; no
 * input the sim sent is lost or doubled on the way. An idle, balanced
 * two-worker cluster never moves a cell. A short evaluation interval (flag)
 * keeps the test fast. */
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "probe.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define WAIT_MS 20000
#define PLAYERS 400
#define SETTLE_MS 5000
#define STILL_MS 12000
#define IDLE_MS 10000
#define STORM_MS 10000

static ts_bus_t *bus;
static ts_probe_t *probe; /* latest heartbeat per worker */
static ts_registry_t *reg;

static const char *const ORCH_ARGS[] = {"--orch.rebalance_interval_ms=500", NULL};

/* ---- cluster --------------------------------------------------------------------------- */

static void cluster_start(const char *workers)
{
    ts_h_start(&ts_h);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_rebalance"), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    char flag[64];
    snprintf(flag, sizeof flag, "--world.workers=%s", workers);
    const char *args[] = {ORCH_ARGS[0], flag, NULL};
    ts_h_spawn(&ts_h, "orch", "tessera-orch", args);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the world did not come up");
    }
}

static void cluster_stop(void)
{
    ts_probe_destroy(probe);
    probe = NULL;
    ts_bus_destroy(bus);
    bus = NULL;
    ts_registry_destroy(reg);
    reg = NULL;
}

static int worker_start(const char *id)
{
    char flag[64];
    snprintf(flag, sizeof flag, "--worker.id=%s", id);
    const char *args[] = {flag, NULL};
    return ts_h_spawn(&ts_h, id, "tessera-worker", args);
}

/* Waits until worker id reports `cells` cells and at least `entities` entities. */
static void wait_worker(const char *id, size_t cells, uint32_t entities)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    ts_probe_hb_t h = {0};
    while (ts_mono_us() < deadline) {
        if (ts_probe_heartbeat(probe, id, &h) && h.ncells == cells && h.entities >= entities) return;
        ts_sleep_ms(100);
    }
    ts_h.failed = true;
    fail_msg("%s reports %zu cells and %u entities, want %zu cells and >= %u", id, h.ncells, h.entities,
             cells, entities);
}

/* The orchestrator's handover count, or -1 if it does not answer. */
static long handovers(void)
{
    char json[1024];
    double v = -1;
    if (ts_probe_ctl(bus, 0, "stats", "", 2000, json, sizeof json) != TS_OK ||
        !ts_probe_json_number(json, "handovers", &v))
        return -1;
    return (long)v;
}

/* Cells per owner in the registry, and the sum of all epochs (any move adds one). */
static size_t owned(const char *worker, uint64_t *epoch_sum)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0, k = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
    assert_int_equal(n, NCELLS);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        k += strcmp(cells[i].owner, worker) == 0;
        sum += cells[i].epoch;
    }
    free(cells);
    if (epoch_sum) *epoch_sum = sum;
    return k;
}

static void sim_verify(int idx)
{
    int rc;
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, idx, NULL, "", 0, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, want 0 with applied == acked == sent > 0; its verdict: %s", rc, v.line);
    }
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_new_worker_receives_cells_then_stillness(void **state)
{
    cluster_start("w1");
    worker_start("w1");
    wait_worker("w1", NCELLS, 0);
    char players[64];
    snprintf(players, sizeof players, "--sim.players=%d", PLAYERS);
    /* slow walkers: the load stays put over the test (walking across cells
     * during handovers is it_handover's business), so convergence is a fact
     * of the policy, not of where the players happen to wander */
    const char *sim_args[] = {players, "--sim.seed=7", "--sim.speed=2", NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", sim_args);
    wait_worker("w1", NCELLS, PLAYERS * 95 / 100);
    assert_int_equal(handovers(), 0); /* a single worker: nothing to balance */

    uint64_t t_join = ts_mono_us();
    worker_start("w3");
    size_t w3_cells = 0;
    bool even = false;
    ts_probe_hb_t e1, e3;
    while (ts_mono_us() - t_join < 30000000ULL && !even) {
        ts_sleep_ms(250);
        w3_cells = owned("w3", NULL);
        uint32_t lo = 0, hi = 0;
        if (w3_cells >= 4 && ts_probe_heartbeat(probe, "w1", &e1) && ts_probe_heartbeat(probe, "w3", &e3)) {
            lo = e1.entities < e3.entities ? e1.entities : e3.entities;
            hi = e1.entities < e3.entities ? e3.entities : e1.entities;
        }
        even = lo > 0 && hi <= 2 * lo && lo + hi >= PLAYERS * 95 / 100;
    }
    double even_s = (double)(ts_mono_us() - t_join) / 1e6;
    fprintf(stderr, "w3 owns %zu cells, load even %.1f s after it started (%ld handovers)\n", w3_cells,
            even_s, handovers());
    if (!even || even_s * 1000 > STORM_MS) {
        ts_h.failed = true;
        fail_msg(
            "%.1f s after w3 joined: %zu cells on w3, load %s (want >= 4 cells and entities within a factor "
            "of 2 within %d s)",
            even_s, w3_cells, even ? "even" : "not even", STORM_MS / 1000);
    }

    /* converged: no handover for SETTLE_MS (bounded) */
    long last = handovers();
    uint64_t quiet_since = ts_mono_us(), deadline = quiet_since + 30000000ULL;
    while (ts_mono_us() - quiet_since < SETTLE_MS * 1000ULL && ts_mono_us() < deadline) {
        ts_sleep_ms(250);
        long now = handovers();
        if (now != last) {
            last = now;
            quiet_since = ts_mono_us();
        }
    }
    if (ts_mono_us() - quiet_since < SETTLE_MS * 1000ULL) {
        ts_h.failed = true;
        fail_msg("handovers still happening %.0f s after w3 joined (%ld so far)",
                 (double)(ts_mono_us() - t_join) / 1e6, last);
    }
    ts_probe_hb_t h1, h3;
    ts_sleep_ms(600);
    assert_true(ts_probe_heartbeat(probe, "w1", &h1) && ts_probe_heartbeat(probe, "w3", &h3));
    uint64_t sum_before = 0;
    size_t w1_cells = owned("w1", &sum_before);
    w3_cells = owned("w3", NULL);
    fprintf(stderr, "converged after %ld handovers: w1 %zu cells %u entities, w3 %zu cells %u entities\n",
            last, w1_cells, h1.entities, w3_cells, h3.entities);
    assert_int_equal(w1_cells + w3_cells, NCELLS);
    uint32_t lo = h1.entities < h3.entities ? h1.entities : h3.entities;
    uint32_t hi = h1.entities < h3.entities ? h3.entities : h1.entities;
    if (lo == 0 || hi > 2 * lo) {
        ts_h.failed = true;
        fail_msg("entity loads after rebalancing: w1 %u, w3 %u (want within a factor of 2)", h1.entities,
                 h3.entities);
    }

    /* and then it stays still */
    ts_sleep_ms(STILL_MS);
    uint64_t sum_after = 0;
    owned("w1", &sum_after);
    long after = handovers();
    if (after != last || sum_after != sum_before) {
        ts_h.failed = true;
        fail_msg("after convergence %ld more handovers in %d s (epoch sum %" PRIu64 " -> %" PRIu64 ")",
                 after - last, STILL_MS / 1000, sum_before, sum_after);
    }
    sim_verify(sim);
    cluster_stop();
    ts_h_pass();
}

static void test_idle_balanced_cluster_never_moves(void **state)
{
    cluster_start("w1,w2");
    worker_start("w1");
    worker_start("w2");
    wait_worker("w1", NCELLS / 2, 0);
    wait_worker("w2", NCELLS / 2, 0);
    uint64_t sum_before = 0;
    owned("w1", &sum_before);
    assert_int_equal(sum_before, NCELLS); /* every cell still at epoch 1 */
    ts_sleep_ms(IDLE_MS);
    uint64_t sum_after = 0;
    assert_int_equal(owned("w1", &sum_after), NCELLS / 2);
    assert_int_equal(sum_after, NCELLS);
    assert_int_equal(handovers(), 0);
    cluster_stop();
    ts_h_pass();
}

static int teardown(void **state)
{
    cluster_stop();
    return ts_h_test_stop(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_new_worker_receives_cells_then_stillness, ts_h_test_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idle_balanced_cluster_never_moves, ts_h_test_setup, teardown),
    };
    return TS_H_RUN("it_rebalance", tests, NULL, NULL);
}
