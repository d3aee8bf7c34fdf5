/* Recovery and handover of cells at depth, with a whole cluster (real
 * nats-server -js, redis-server, orchestrators, two workers, the sim)
 * watched through ts_probe:
 *
 *  - a drain of the worker that owns a split cell, its children and
 *    grandchildren (depth 2) while players play in them: every live cell
 *    moves to the other worker by live handover (its epoch + 1), the
 *    forwarders (split cells) follow by compare-and-set keeping their
 *    state, and nothing is recovered;
 *  - the leading orchestrator SIGKILLed in the middle of an automatic merge
 *    whose children were on two workers: once while the handover that
 *    gathers them onto one owner is in flight (one of its workers held
 *    with SIGSTOP), once after it is done but before the merge script ran.
 *    The standby takes over and merges; afterwards ctl split and merge of
 *    the same cell succeed.
 *
 * At every registry read: no overlapping live cells, the world covered, no
 * epoch lower than before; at the end the sim's verdict is exact (every
 * acknowledged input applied exactly once). */
#include <inttypes.h>
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
#include "tessera/util.h"

#define WORLD 0
#define WAIT_MS 20000
#define CTL_MS 10000
#define HB_MS "250"
#define MERGE_WINDOWS "12" /* cold heartbeats before a merge: 3 s at HB_MS */
#define LIVE_TTL_MS "15000"

/* The root cell the tests split: -1,0 (100 units wide), a crowd at its centre. */
static const ts_cell_t ROOT = {.world = WORLD, .cx = -1, .cy = 0};
static const char *const SIM_ARGS[] = {"--sim.players=200", "--sim.rate_hz=5", "--sim.speed=10",
                                       "--hotspot=-50,50,30,0.5,600", NULL};

typedef struct {
    ts_bus_t *bus;
    ts_registry_t *reg;
    ts_probe_t *probe;
    ts_probe_epochs_t seen;
    int sim;
} env_t;

static env_t env;

/* ---- helpers ------------------------------------------------------------------------ */

/* Reads the whole registry; fails the test on an inconsistent one or an
 * epoch lower than one seen before. Caller frees *cells. */
static void read_registry(ts_cell_entry_t **cells, size_t *n)
{
    char why[256];
    if (!ts_probe_registry_read(env.reg, WORLD, &env.seen, cells, n, why, sizeof why)) {
        ts_h.failed = true;
        fail_msg("%s", why);
    }
}

/* The registry entry of c, from a checked read of the whole registry. */
static ts_cell_entry_t entry_of(const ts_cell_t *c)
{
    ts_cell_entry_t *cells = NULL, e = {0};
    size_t n = 0;
    read_registry(&cells, &n);
    const ts_cell_entry_t *f = ts_probe_cell_find(cells, n, c);
    if (f) e = *f;
    free(cells);
    if (!f) {
        char key[TS_CELL_STR_MAX];
        ts_cell_format(c, key, sizeof key);
        ts_h.failed = true;
        fail_msg("cell %s is not in the registry", key);
    }
    return e;
}

static void ctl_cell_ok(const char *verb, const ts_cell_t *cell, char *reply, size_t cap)
{
    char key[TS_CELL_STR_MAX];
    ts_cell_format(cell, key, sizeof key);
    bool ok = ts_probe_ctl_cell(env.bus, verb, cell, CTL_MS, reply, cap);
    fprintf(stderr, "ctl %s %s: %s\n", verb, key, reply);
    if (!ok) {
        ts_h.failed = true;
        fail_msg("ctl %s %s: %s", verb, key, reply);
    }
}

/* ctl handover of cell to worker `to`; its reply must be ok. */
static void ctl_handover_ok(const ts_cell_t *cell, const char *to)
{
    char key[TS_CELL_STR_MAX], payload[TS_CELL_STR_MAX + TS_WORKER_ID_MAX + 2], reply[512] = "";
    ts_cell_format(cell, key, sizeof key);
    snprintf(payload, sizeof payload, "%s %s", key, to);
    ts_status_t st = ts_probe_ctl(env.bus, WORLD, "handover", payload, CTL_MS, reply, sizeof reply);
    fprintf(stderr, "ctl handover %s: %s\n", payload, st == TS_OK ? reply : ts_status_str(st));
    if (st != TS_OK || strncmp(reply, "ok ", 3) != 0) {
        ts_h.failed = true;
        fail_msg("ctl handover %s: %s", payload, st == TS_OK ? reply : ts_status_str(st));
    }
}

/* The orchestrator's stats counter key, polled for up to 3 s until it is at
 * least want (the orchestrator counts a move once its COMMIT round trip is
 * over, a moment after the registry shows it). */
static double stat_at_least(const char *key, double want, char *json, size_t cap)
{
    double v = -1;
    uint64_t deadline = ts_mono_us() + 3000000ULL;
    do {
        if (ts_probe_ctl(env.bus, WORLD, "stats", "", 2000, json, cap) != TS_OK ||
            !ts_probe_json_number(json, key, &v))
            v = -1;
        if (v >= want) break;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    return v;
}

/* Waits until the sim's players play: a second's worth of inputs applied. */
static void wait_players(void)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (ts_probe_inputs_applied(env.probe) < 200 * 5) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the sim's inputs are not applied (%" PRIu64 ")", ts_probe_inputs_applied(env.probe));
        }
        ts_sleep_ms(20);
    }
}

/* Waits until worker's heartbeat lists every live cell the registry gives
 * it, at its epoch: it has bound them and serves them. */
static void wait_serving(const char *worker)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        ts_cell_entry_t *cells = NULL;
        size_t n = 0;
        read_registry(&cells, &n);
        ts_probe_cell_t want[TS_PROBE_CELLS];
        size_t nwant = 0;
        for (size_t i = 0; i < n && nwant < TS_PROBE_CELLS; i++) {
            if (cells[i].state != TS_CELL_ACTIVE || strcmp(cells[i].owner, worker) != 0) continue;
            want[nwant].cell = cells[i].cell;
            want[nwant++].epoch = cells[i].epoch;
        }
        free(cells);
        ts_probe_hb_t hb;
        if (ts_probe_heartbeat(env.probe, worker, &hb) && ts_probe_hb_lists(&hb, want, nwant)) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s does not list its %zu live cells in its heartbeat", worker, nwant);
        }
        ts_sleep_ms(50);
    }
}

static void env_open(void)
{
    memset(&env, 0, sizeof env);
    env.sim = -1;
    assert_int_equal(ts_bus_connect(&env.bus, ts_h.nats_url, "it_split_depth"), TS_OK);
    assert_int_equal(ts_registry_connect(&env.reg, ts_h.redis_url), TS_OK);
    assert_int_equal(ts_probe_create(&env.probe, env.bus), TS_OK);
}

static void env_close(void)
{
    ts_probe_destroy(env.probe);
    env.probe = NULL;
    ts_bus_destroy(env.bus);
    env.bus = NULL;
    ts_registry_destroy(env.reg);
    env.reg = NULL;
}

static void wait_ready(void)
{
    bool ctl_up = false, bound = false;
    if (!ts_probe_wait_ready(env.probe, env.bus, WORLD, 8, WAIT_MS, &ctl_up, &bound)) {
        ts_h.failed = true;
        fail_msg("cluster not ready (ctl %d, cells bound %d)", ctl_up, bound);
    }
}

/* Stops the sim; its verdict must be exact. */
static void check_sim(void)
{
    int rc = 0;
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, env.sim, NULL, NULL, 0, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, %s", rc, v.line);
    }
}

/* ---- 1. drain of a worker holding cells at depth ---------------------------------------- */

static void test_drain_cells_at_depth(void **state)
{
    (void)state;
    env_open();
    const char *orch_args[] = {"--orch.rebalance=0", NULL};
    const char *worker_args[] = {"--worker.hb_ms=" HB_MS, NULL};
    ts_h_stack_t stack;
    ts_h_spawn_stack(&ts_h, orch_args, worker_args, NULL, &stack);
    wait_ready();
    env.sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", SIM_ARGS);
    wait_players();

    /* the crowd's cell split to depth 2: ROOT, then its SE child */
    ts_cell_t kids[4];
    ts_cell_children(&ROOT, kids);
    char reply[1024];
    ctl_cell_ok("split", &ROOT, reply, sizeof reply);
    ctl_cell_ok("split", &kids[1], reply, sizeof reply);
    ts_cell_entry_t root = entry_of(&ROOT);
    char from[TS_WORKER_ID_MAX], to[TS_WORKER_ID_MAX];
    ts_strlcpy(from, root.owner, sizeof from);
    ts_strlcpy(to, strcmp(from, "w1") == 0 ? "w2" : "w1", sizeof to);
    int from_idx = stack.workers[strcmp(from, "w1") == 0 ? 0 : 1];
    wait_serving(from);

    ts_cell_entry_t *before = NULL;
    size_t nbefore = 0;
    read_registry(&before, &nbefore);
    size_t live = 0, forwarders = 0, deep = 0;
    for (size_t i = 0; i < nbefore; i++) {
        if (strcmp(before[i].owner, from) != 0) continue;
        if (before[i].state == TS_CELL_ACTIVE) {
            live++;
            deep += before[i].cell.depth == 2;
        } else {
            forwarders++;
        }
    }
    /* 7 roots, 3 children, 4 grandchildren live; ROOT and kids[1] split */
    assert_int_equal(live, 14);
    assert_int_equal(deep, 4);
    assert_int_equal(forwarders, 2);
    char json[1024];
    double handovers0 = stat_at_least("handovers", 0, json, sizeof json);
    assert_true(handovers0 >= 0);

    /* drain it while the players play */
    assert_int_equal(ts_probe_ctl(env.bus, WORLD, "drain", from, 2000, reply, sizeof reply), TS_OK);
    char want[64];
    snprintf(want, sizeof want, "ok draining %zu cells", live + forwarders);
    if (strcmp(reply, want) != 0) {
        ts_h.failed = true;
        fail_msg("drain %s answered: %s (want %s)", from, reply, want);
    }
    uint64_t t0 = ts_mono_us(), deadline = t0 + WAIT_MS * 1000ULL;
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    for (;;) {
        read_registry(&cells, &n);
        size_t left = 0;
        for (size_t i = 0; i < n; i++)
            left += strcmp(cells[i].owner, from) == 0;
        if (left == 0) break;
        free(cells);
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s still owns %zu cells %d s after its drain", from, left, WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
    fprintf(stderr, "drain: %zu cells of %s (%zu live, %zu at depth 2, %zu forwarders) on %s in %.0f ms\n",
            live + forwarders, from, live, deep, forwarders, to, (double)(ts_mono_us() - t0) / 1e3);
    /* each cell moved once (epoch + 1) to the other worker, state kept */
    assert_int_equal(n, nbefore);
    for (size_t i = 0; i < n; i++) {
        const ts_cell_entry_t *b = ts_probe_cell_find(before, nbefore, &cells[i].cell);
        assert_non_null(b);
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&cells[i].cell, key, sizeof key);
        bool moved = strcmp(b->owner, from) == 0;
        if (strcmp(cells[i].owner, to) != 0 || cells[i].state != b->state ||
            cells[i].epoch != b->epoch + (moved ? 1 : 0)) {
            ts_h.failed = true;
            fail_msg("cell %s: %s %s@%" PRIu64 " before the drain, %s %s@%" PRIu64 " after", key,
                     ts_cell_state_str(b->state), b->owner, b->epoch, ts_cell_state_str(cells[i].state),
                     cells[i].owner, cells[i].epoch);
        }
    }
    free(cells);
    free(before);
    /* the live cells by handover, the forwarders after them; no recovery */
    double drains = stat_at_least("drain_moves", (double)(live + forwarders), json, sizeof json);
    double handovers = stat_at_least("handovers", handovers0 + (double)live, json, sizeof json);
    double recoveries = -1;
    ts_probe_json_number(json, "recoveries", &recoveries);
    if (drains != (double)(live + forwarders) || handovers != handovers0 + (double)live || recoveries != 0) {
        ts_h.failed = true;
        fail_msg("want %zu drain moves, %zu of them handovers, no recovery; stats: %s", live + forwarders,
                 live, json);
    }
    /* the other worker serves every cell; the drained one runs on, empty */
    wait_serving(to);
    uint64_t t_drained = ts_mono_us();
    ts_probe_hb_t hb = {.ncells = 1};
    deadline = t_drained + WAIT_MS * 1000ULL;
    while (!(ts_probe_heartbeat(env.probe, from, &hb) && hb.received_us > t_drained && hb.ncells == 0)) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s still lists %zu cells in its heartbeat after its drain", from, hb.ncells);
        }
        ts_sleep_ms(20);
    }
    assert_int_equal(ts_h_wait(&ts_h, from_idx, 0), -1);
    check_sim();
    env_close();
    ts_h_pass();
}

/* ---- 2. the leader SIGKILLed between the gather and the merge ----------------------------- */

/* Which orchestrator of orch[0..n) leads; fails the test when none does
 * within WAIT_MS. */
static int leader_of(const int *orch, int n)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    long lead = -1;
    do {
        lead = ts_probe_leader_pid(env.bus, WORLD, 1000);
        for (int k = 0; k < n; k++)
            if (orch[k] >= 0 && lead == ts_h.procs[orch[k]].pid) return k;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    ts_h.failed = true;
    fail_msg("no orchestrator leads (stats name pid %ld)", lead);
    return -1;
}

/* Whether the four children are active on one owner (into owner). */
static bool gathered(const ts_cell_entry_t *cells, size_t n, const ts_cell_t kids[4], char *owner, size_t cap)
{
    const ts_cell_entry_t *k0 = ts_probe_cell_find(cells, n, &kids[0]);
    if (!k0 || k0->state != TS_CELL_ACTIVE) return false;
    for (int q = 1; q < 4; q++) {
        const ts_cell_entry_t *k = ts_probe_cell_find(cells, n, &kids[q]);
        if (!k || k->state != TS_CELL_ACTIVE || strcmp(k->owner, k0->owner) != 0) return false;
    }
    ts_strlcpy(owner, k0->owner, cap);
    return true;
}

/* Polls the registry (checked at every read) until ROOT is merged: active,
 * its children retired. */
static void wait_merged(const ts_cell_t kids[4], const char *when)
{
    uint64_t deadline = ts_mono_us() + 2 * WAIT_MS * 1000ULL;
    for (;;) {
        ts_cell_entry_t *cells = NULL;
        size_t n = 0;
        read_registry(&cells, &n);
        const ts_cell_entry_t *r = ts_probe_cell_find(cells, n, &ROOT);
        bool merged = r && r->state == TS_CELL_ACTIVE;
        for (int q = 0; q < 4 && merged; q++) {
            const ts_cell_entry_t *k = ts_probe_cell_find(cells, n, &kids[q]);
            merged = k && k->state == TS_CELL_RETIRED;
        }
        free(cells);
        if (merged) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: cell -1,0 is not merged after %d s", when, 2 * WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
}

/* Splits ROOT through ctl (its owner keeps the children) and hands the
 * first child to the other worker: children on two owners, which the
 * planner (cold children) gathers onto one before it merges them. Returns
 * the other worker in other. */
static void split_across_workers(const ts_cell_t kids[4], char *other, size_t cap)
{
    char reply[1024];
    ctl_cell_ok("split", &ROOT, reply, sizeof reply);
    ts_cell_entry_t k0 = entry_of(&kids[0]);
    ts_strlcpy(other, strcmp(k0.owner, "w1") == 0 ? "w2" : "w1", cap);
    wait_serving(k0.owner); /* the owner splits at its next tick boundary */
    ctl_handover_ok(&kids[0], other);
    k0 = entry_of(&kids[0]);
    assert_string_equal(k0.owner, other);
    assert_int_equal(entry_of(&kids[1]).state, TS_CELL_ACTIVE);
    assert_string_not_equal(entry_of(&kids[1]).owner, other);
}

static void test_leader_killed_between_gather_and_merge(void **state)
{
    (void)state;
    env_open();
    /* the planner merges cold children (all of them always are: at most
     * 200 players) and never splits; a cell is left alone for 6 s after
     * its split, time for the test to hand a child away. Liveness has a
     * 15 s TTL: a worker stopped for a few seconds stays the owner of its
     * cells. */
    const char *orch_args[] = {"--orch.rebalance=0",
                               "--orch.lock_ttl_ms=2000",
                               "--orch.hb_ttl_ms=" LIVE_TTL_MS,
                               "--split.auto=1",
                               "--split.max_entities=100000",
                               "--split.max_tick_share=0",
                               "--merge.max_entities=50000",
                               "--merge.windows=" MERGE_WINDOWS,
                               "--split.cooldown_s=6",
                               NULL};
    int orch[3] = {-1, -1, -1};
    orch[0] = ts_h_spawn(&ts_h, "orch-a", "tessera-orch", orch_args);
    assert_true(ts_h_wait_world(&ts_h, WORLD, 16, WAIT_MS));
    orch[1] = ts_h_spawn(&ts_h, "orch-b", "tessera-orch", orch_args);
    const char *w1[] = {"--worker.id=w1", "--worker.hb_ms=" HB_MS, "--orch.hb_ttl_ms=" LIVE_TTL_MS, NULL};
    const char *w2[] = {"--worker.id=w2", "--worker.hb_ms=" HB_MS, "--orch.hb_ttl_ms=" LIVE_TTL_MS, NULL};
    int widx[2];
    widx[0] = ts_h_spawn(&ts_h, "w1", "tessera-worker", w1);
    widx[1] = ts_h_spawn(&ts_h, "w2", "tessera-worker", w2);
    wait_ready();
    env.sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", SIM_ARGS);
    wait_players();
    ts_cell_t kids[4];
    ts_cell_children(&ROOT, kids);
    char other[TS_WORKER_ID_MAX], owner[TS_WORKER_ID_MAX];

    /* 1. killed while a gather handover is in flight: the worker that
     * holds one child alone is stopped (SIGSTOP) once its heartbeat showed
     * the planner that child, so the handover that gathers the children
     * (it is that handover's source or target) cannot finish; the leader
     * is killed as soon as its log names the handover, and the worker goes
     * on (SIGCONT) */
    int lead = leader_of(orch, 3);
    split_across_workers(kids, other, sizeof other);
    wait_serving(other);
    int stopped = widx[strcmp(other, "w1") == 0 ? 0 : 1];
    ts_h_signal(&ts_h, stopped, SIGSTOP);
    bool gathering = ts_h_wait_log(&ts_h, orch[lead], "merge: handing child", WAIT_MS);
    ts_h_signal(&ts_h, orch[lead], SIGKILL);
    ts_h_wait(&ts_h, orch[lead], 5000);
    orch[lead] = -1;
    ts_h_signal(&ts_h, stopped, SIGCONT);
    if (!gathering) {
        ts_h.failed = true;
        fail_msg("the planner did not gather the children of ROOT within %d s", WAIT_MS / 1000);
    }
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    read_registry(&cells, &n);
    bool done = gathered(cells, n, kids, owner, sizeof owner);
    const ts_cell_entry_t *r = ts_probe_cell_find(cells, n, &ROOT);
    assert_non_null(r);
    fprintf(stderr, "leader killed during the gather: ROOT %s, children %s\n", ts_cell_state_str(r->state),
            done ? "on one owner" : "on two owners");
    assert_int_equal(r->state, TS_CELL_SPLIT);
    assert_false(done);
    free(cells);
    /* the standby leads, gathers the children and merges */
    wait_merged(kids, "after the leader died during the gather");
    wait_serving("w1");
    wait_serving("w2");

    /* 2. killed once the children are on one owner, before the merge
     * script ran (the planner waits for MERGE_WINDOWS fresh cold reports
     * of the gathered children first: 3 s) */
    orch[2] = ts_h_spawn(&ts_h, "orch-c", "tessera-orch", orch_args); /* a standby again */
    lead = leader_of(orch, 3);
    split_across_workers(kids, other, sizeof other);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (done = false; !done;) {
        read_registry(&cells, &n);
        done = gathered(cells, n, kids, owner, sizeof owner);
        r = ts_probe_cell_find(cells, n, &ROOT);
        bool split = r && r->state == TS_CELL_SPLIT;
        free(cells);
        if (!split) {
            ts_h.failed = true;
            fail_msg("ROOT merged before the test saw its children gathered");
        }
        if (!done && ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the planner did not gather the children of ROOT within %d s", WAIT_MS / 1000);
        }
        if (!done) ts_sleep_ms(20);
    }
    ts_h_signal(&ts_h, orch[lead], SIGKILL);
    ts_h_wait(&ts_h, orch[lead], 5000);
    orch[lead] = -1;
    ts_cell_entry_t root = entry_of(&ROOT);
    fprintf(stderr, "leader killed after the gather onto %s: ROOT %s\n", owner,
            ts_cell_state_str(root.state));
    assert_int_equal(root.state, TS_CELL_SPLIT);
    wait_merged(kids, "after the leader died between the gather and the merge");

    /* the new leader splits the cell on request and, asked to merge its
     * children while they are on two workers (within the planner's
     * cooldown, so the request alone acts), gathers them and merges: its
     * answer comes once merged */
    char reply[1024], other2[TS_WORKER_ID_MAX];
    leader_of(orch, 3);
    split_across_workers(kids, other2, sizeof other2);
    ctl_cell_ok("merge", &ROOT, reply, sizeof reply);
    assert_non_null(strstr(reply, "ok merge "));
    ts_cell_entry_t merged = entry_of(&ROOT);
    assert_int_equal(merged.state, TS_CELL_ACTIVE);
    for (int q = 0; q < 4; q++)
        assert_int_equal(entry_of(&kids[q]).state, TS_CELL_RETIRED);
    wait_serving("w1");
    wait_serving("w2");
    check_sim();
    env_close();
    ts_h_pass();
}

static int teardown(void **state)
{
    env_close();
    return ts_h_test_stop(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_drain_cells_at_depth, ts_h_test_start, teardown),
        cmocka_unit_test_setup_teardown(test_leader_killed_between_gather_and_merge, ts_h_test_start,
                                        teardown),
    };
    return TS_H_RUN("it_split_depth", tests, NULL, NULL);
}
