/* Cells at depth against real nats-server -js and redis-server: the split
 * and merge registry scripts (atomic, epochs never go backwards, a refused
 * one changes nothing), tessera-ctl split/merge through the orchestrator
 * interleaved with SIGKILLs of the leading orchestrator and of the owner
 * while players play (every acknowledged input applied exactly once), and
 * the automatic split and merge of a hotspot: the crowded cell splits to
 * depth >= 2, its children spread over both workers, and everything merges
 * back once the crowd disperses, with gateway clients playing throughout,
 * half of them in the crowd: none reconnects, each is told CellChanged
 * exactly when its entity's cell changed, some are in cells of depth 2.
 * At every registry read: no overlapping live cells, the world covered, no
 * epoch lower than before. */
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
#include "tessera/map.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define WAIT_MS 20000
#define CTL_MS 10000

/* ---- registry watch: consistency and epochs that only grow ------------------------- */

static ts_probe_epochs_t SEEN;

/* Reads the whole registry; fails the test on an inconsistent one or an
 * epoch lower than one seen before. Caller frees *cells. */
static void read_registry(ts_registry_t *reg, ts_cell_entry_t **cells, size_t *n)
{
    char why[256];
    if (!ts_probe_registry_read(reg, WORLD, &SEEN, cells, n, why, sizeof why)) {
        ts_h.failed = true;
        fail_msg("%s", why);
    }
}

static ts_cell_entry_t get(ts_registry_t *reg, const ts_cell_t *c)
{
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, c, &e), TS_OK);
    return e;
}

/* ---- 1. the registry scripts ---------------------------------------------------------- */

static void test_registry_split_merge(void **state)
{
    (void)state;
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    const uint32_t wid = 30;
    ts_world_t w = {.id = wid, .cell_size = 100, .x0 = 0, .y0 = 0, .width = 1, .height = 1};
    assert_int_equal(ts_registry_world_set(reg, &w), TS_OK);
    ts_cell_entry_t root = {.cell = {.world = wid}, .owner = "w1", .state = TS_CELL_ACTIVE}, out[5], cur;
    uint64_t v = 0, versions[5];
    assert_int_equal(ts_registry_cell_create(reg, &root, &cur, &v), TS_OK);
    ts_cell_t kids[4];
    assert_int_equal(ts_cell_children(&root.cell, kids), TS_OK);

    /* a stale epoch: refused, nothing changed */
    assert_int_equal(ts_registry_cell_split(reg, &root.cell, 7, out, versions), TS_ERR_CONFLICT);
    assert_int_equal(out[0].epoch, 1);
    assert_int_equal(out[0].state, TS_CELL_ACTIVE);
    uint64_t v2 = 0;
    assert_int_equal(ts_registry_version(reg, wid, &v2), TS_OK);
    assert_int_equal(v2, v);
    assert_int_equal(ts_registry_cell_get(reg, &kids[0], &cur), TS_ERR_NOT_FOUND);
    /* merge of a cell that is not split: refused */
    assert_int_equal(ts_registry_cell_merge(reg, &root.cell, 1, out, versions), TS_ERR_CONFLICT);

    /* split: parent split at 2 (its forwarder w1), children active at 3, one version each, parent first */
    assert_int_equal(ts_registry_cell_split(reg, &root.cell, 1, out, versions), TS_OK);
    assert_true(ts_cell_eq(&out[0].cell, &root.cell));
    assert_int_equal(out[0].state, TS_CELL_SPLIT);
    assert_int_equal(out[0].epoch, 2);
    assert_string_equal(out[0].owner, "w1");
    for (int i = 0; i < 5; i++)
        assert_int_equal(versions[i], v + 1 + (uint64_t)i);
    for (int q = 0; q < 4; q++) {
        assert_true(ts_cell_eq(&out[1 + q].cell, &kids[q]));
        cur = get(reg, &kids[q]);
        assert_int_equal(cur.state, TS_CELL_ACTIVE);
        assert_int_equal(cur.epoch, 3);
        assert_string_equal(cur.owner, "w1");
        assert_int_equal(out[1 + q].epoch, 3);
    }
    cur = get(reg, &root.cell);
    assert_int_equal(cur.state, TS_CELL_SPLIT);
    assert_int_equal(cur.epoch, 2);
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, wid, &cells, &n), TS_OK);
    assert_int_equal(n, 5);
    char why[256];
    assert_true(ts_registry_cells_check(&w, cells, n, why, sizeof why));
    /* the check sees an overlap: the parent live again over live children */
    ts_cell_entry_t *p = (ts_cell_entry_t *)ts_probe_cell_find(cells, n, &root.cell);
    p->state = TS_CELL_ACTIVE;
    assert_false(ts_registry_cells_check(&w, cells, n, why, sizeof why));
    assert_non_null(strstr(why, "lies under"));
    /* ... and a hole: a child retired under a split parent */
    p->state = TS_CELL_SPLIT;
    ((ts_cell_entry_t *)ts_probe_cell_find(cells, n, &kids[2]))->state = TS_CELL_RETIRED;
    assert_false(ts_registry_cells_check(&w, cells, n, why, sizeof why));
    free(cells);

    /* split again: the parent is split now */
    assert_int_equal(ts_registry_cell_split(reg, &root.cell, 2, out, versions), TS_ERR_CONFLICT);
    /* merge with the children on two owners: refused, nothing changed */
    assert_int_equal(ts_registry_cell_cas(reg, &kids[1], 3, "w2", TS_CELL_ACTIVE, &cur, &v), TS_OK);
    assert_int_equal(ts_registry_cell_merge(reg, &root.cell, 2, out, versions), TS_ERR_STALE);
    assert_int_equal(get(reg, &root.cell).state, TS_CELL_SPLIT);
    assert_int_equal(get(reg, &kids[0]).state, TS_CELL_ACTIVE);
    assert_int_equal(ts_registry_cell_cas(reg, &kids[1], 4, "w2", TS_CELL_ACTIVE, &cur, &v), TS_OK);
    for (int q = 0; q < 4; q++) {
        if (q == 1) continue;
        assert_int_equal(ts_registry_cell_cas(reg, &kids[q], 3, "w2", TS_CELL_ACTIVE, &cur, &v), TS_OK);
    }
    /* merge: children retired at epoch + 1 (owner w2, forwarders), parent active at 3 with owner w2 */
    assert_int_equal(ts_registry_cell_merge(reg, &root.cell, 2, out, versions), TS_OK);
    assert_int_equal(out[0].state, TS_CELL_ACTIVE);
    assert_int_equal(out[0].epoch, 3);
    assert_string_equal(out[0].owner, "w2");
    for (int i = 0; i < 5; i++)
        assert_int_equal(versions[i], v + 1 + (uint64_t)i);
    uint64_t kid_epoch[4];
    for (int q = 0; q < 4; q++) {
        cur = get(reg, &kids[q]);
        assert_int_equal(cur.state, TS_CELL_RETIRED);
        assert_string_equal(cur.owner, "w2");
        assert_int_equal(cur.epoch, q == 1 ? 6 : 5);
        kid_epoch[q] = cur.epoch;
    }
    assert_int_equal(ts_registry_cells(reg, wid, &cells, &n), TS_OK);
    assert_true(ts_registry_cells_check(&w, cells, n, why, sizeof why));
    free(cells);

    /* split again: the children's epochs go on from where they were */
    assert_int_equal(ts_registry_cell_split(reg, &root.cell, 3, out, versions), TS_OK);
    assert_int_equal(out[0].epoch, 4);
    for (int q = 0; q < 4; q++) {
        assert_int_equal(out[1 + q].epoch, kid_epoch[q] + 1);
        assert_string_equal(out[1 + q].owner, "w2");
    }
    /* a child at depth 1 splits too; its parent's merge then waits for it */
    assert_int_equal(ts_registry_cell_split(reg, &kids[3], out[4].epoch, out, versions), TS_OK);
    assert_int_equal(out[1].cell.depth, 2);
    assert_int_equal(ts_registry_cell_merge(reg, &root.cell, 4, out, versions), TS_ERR_STALE);
    assert_int_equal(ts_registry_cells(reg, wid, &cells, &n), TS_OK);
    assert_int_equal(n, 9);
    assert_true(ts_registry_cells_check(&w, cells, n, why, sizeof why));
    free(cells);
    assert_int_equal(ts_registry_cell_split(reg, &(ts_cell_t){.world = wid, .depth = 16}, 1, out, versions),
                     TS_ERR_RANGE);
    assert_int_equal(ts_registry_world_reset(reg, wid), TS_OK);
    ts_registry_destroy(reg);
    ts_h_pass();
}

/* ---- RegistryChange order ------------------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    ts_cell_t cell[256];
    ts_cell_state_t state[256];
    uint64_t version[256];
    size_t n;
} CHANGES = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_change(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__RegistryChange *rc =
        tessera__v1__registry_change__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (!rc) return;
    pthread_mutex_lock(&CHANGES.mu);
    if (CHANGES.n < 256 && ts_proto_cell_get(rc->cell, &CHANGES.cell[CHANGES.n]) == TS_OK) {
        CHANGES.state[CHANGES.n] = (ts_cell_state_t)rc->state;
        CHANGES.version[CHANGES.n++] = rc->version;
    }
    pthread_mutex_unlock(&CHANGES.mu);
    tessera__v1__registry_change__free_unpacked(rc, NULL);
}

/* The index of the first change of cell to state from index `from`, or -1. */
static long change_index(const ts_cell_t *cell, ts_cell_state_t state, size_t from)
{
    long found = -1;
    pthread_mutex_lock(&CHANGES.mu);
    for (size_t i = from; i < CHANGES.n && found < 0; i++)
        if (ts_cell_eq(&CHANGES.cell[i], cell) && CHANGES.state[i] == state) found = (long)i;
    pthread_mutex_unlock(&CHANGES.mu);
    return found;
}

static size_t changes_now(void)
{
    pthread_mutex_lock(&CHANGES.mu);
    size_t n = CHANGES.n;
    pthread_mutex_unlock(&CHANGES.mu);
    return n;
}

/* Waits for the RegistryChanges of a split (split: parent split, children
 * active) or merge, parent first. */
static void expect_changes(const ts_cell_t *parent, bool split, size_t from)
{
    ts_cell_t kids[4];
    ts_cell_children(parent, kids);
    ts_cell_state_t ps = split ? TS_CELL_SPLIT : TS_CELL_ACTIVE,
                    cs = split ? TS_CELL_ACTIVE : TS_CELL_RETIRED;
    uint64_t deadline = ts_mono_us() + 5000000ULL;
    long p = -1, c[4] = {-1, -1, -1, -1};
    while (ts_mono_us() < deadline) {
        p = change_index(parent, ps, from);
        bool all = p >= 0;
        for (int q = 0; q < 4; q++)
            all &= (c[q] = change_index(&kids[q], cs, from)) >= 0;
        if (all) break;
        ts_sleep_ms(20);
    }
    assert_true(p >= 0);
    for (int q = 0; q < 4; q++) {
        assert_true(c[q] > p);
        assert_true(CHANGES.version[c[q]] > CHANGES.version[p]);
    }
}

/* ---- freeze: how long entities of a splitting or merging cell go without state --------- */

#define MAX_ENT 4096

static struct {
    pthread_mutex_t mu;
    ts_map_t index; /* entity id -> slot + 1 */
    uint64_t id[MAX_ENT];
    ts_cell_t cell[MAX_ENT]; /* cell of the latest state showing it */
    uint64_t last_us[MAX_ENT];
    uint64_t max_gap_us[MAX_ENT]; /* longest gap between two states within the window */
    uint64_t moved_us[MAX_ENT];   /* first state from a cell of the new layout after the change */
    uint64_t handoff_us[MAX_ENT]; /* the gap that state ended: the move itself */
    bool in_area[MAX_ENT];        /* in the changing area when the window opened */
    size_t n;
    bool on;           /* window open */
    uint64_t t0;       /* the change was asked for */
    ts_cell_t area;    /* the parent */
    uint8_t new_depth; /* depth entities show up at afterwards */
} FZ = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_state(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__StateDelta *d =
        tessera__v1__state_delta__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    ts_cell_t cell;
    if (!d || ts_proto_cell_get(d->cell, &cell) != TS_OK) {
        if (d) tessera__v1__state_delta__free_unpacked(d, NULL);
        return;
    }
    uint64_t now = ts_mono_us();
    pthread_mutex_lock(&FZ.mu);
    for (size_t i = 0; i < d->n_entities; i++) {
        uint64_t id = d->entities[i]->id;
        uintptr_t k = (uintptr_t)ts_map_get(&FZ.index, id ? id : 1);
        if (k == 0) {
            if (FZ.n == MAX_ENT) continue;
            k = ++FZ.n;
            ts_map_put(&FZ.index, id ? id : 1, (void *)k);
            FZ.id[k - 1] = id;
            FZ.last_us[k - 1] = now;
        }
        size_t s = k - 1;
        if (FZ.on && now - FZ.last_us[s] > FZ.max_gap_us[s]) FZ.max_gap_us[s] = now - FZ.last_us[s];
        if (FZ.on && FZ.in_area[s] && !FZ.moved_us[s] && cell.depth == FZ.new_depth &&
            ts_cell_contains(&FZ.area, &cell)) {
            FZ.moved_us[s] = now;
            FZ.handoff_us[s] = now - FZ.last_us[s];
        }
        FZ.last_us[s] = now;
        FZ.cell[s] = cell;
    }
    pthread_mutex_unlock(&FZ.mu);
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

/* Opens the window for a split (new_depth = area depth + 1) or merge (new_depth = area depth). */
static void freeze_open(const ts_cell_t *area, uint8_t new_depth)
{
    pthread_mutex_lock(&FZ.mu);
    FZ.on = true;
    FZ.t0 = ts_mono_us();
    FZ.area = *area;
    FZ.new_depth = new_depth;
    for (size_t i = 0; i < FZ.n; i++) {
        FZ.max_gap_us[i] = 0;
        FZ.moved_us[i] = 0;
        FZ.handoff_us[i] = 0;
        FZ.in_area[i] = FZ.t0 - FZ.last_us[i] < 500000 && ts_cell_contains(area, &FZ.cell[i]) &&
                        FZ.cell[i].depth != new_depth;
    }
    pthread_mutex_unlock(&FZ.mu);
}

/* Waits until every entity that was in the area when the window opened shows
 * in the new layout, for at most max_ms (one that walked out never does). */
static void freeze_wait(int64_t max_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)max_ms * 1000ULL;
    for (;;) {
        bool all = true;
        pthread_mutex_lock(&FZ.mu);
        for (size_t i = 0; i < FZ.n && all; i++)
            if (FZ.in_area[i] && !FZ.moved_us[i]) all = false;
        pthread_mutex_unlock(&FZ.mu);
        if (all || ts_mono_us() >= deadline) return;
        ts_sleep_ms(20);
    }
}

/* Waits until at least min entities show in fresh states (the last 300 ms)
 * of cells of depth `depth` inside area: its cells are live and publishing
 * (after a recovery, their new owner has bound them). */
static bool wait_area_live(const ts_cell_t *area, uint8_t depth, size_t min, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    for (;;) {
        size_t live = 0;
        pthread_mutex_lock(&FZ.mu);
        uint64_t now = ts_mono_us(); /* under the lock: no state newer than it */
        for (size_t i = 0; i < FZ.n; i++)
            if (now - FZ.last_us[i] < 300000 && FZ.cell[i].depth == depth &&
                ts_cell_contains(area, &FZ.cell[i]))
                live++;
        pthread_mutex_unlock(&FZ.mu);
        if (live >= min) return true;
        if (ts_mono_us() >= deadline) return false;
        ts_sleep_ms(20);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Closes the window and prints: duration (asked -> the last entity of the
 * area shows in the new layout), freeze (per entity: its longest gap
 * between two states in the window, minus one tick) and handoff (per entity
 * that moved: the gap its first state in the new layout ended, the last
 * in the old layout to the first in the new one, minus one tick)
 * percentiles. Freeze includes whatever else stalled the cells in the
 * window (the orchestrator failover's 2 s among them); handoff is the move. */
static void freeze_close(const char *what)
{
    pthread_mutex_lock(&FZ.mu);
    FZ.on = false;
    const double tick_ms = 50.0;
    double *gaps = calloc(FZ.n + 1, sizeof *gaps);
    double *handoffs = calloc(FZ.n + 1, sizeof *handoffs);
    size_t n = 0, moved = 0;
    uint64_t last_move = 0;
    for (size_t i = 0; gaps && handoffs && i < FZ.n; i++) {
        if (!FZ.in_area[i]) continue;
        double g = (double)FZ.max_gap_us[i] / 1000 - tick_ms;
        gaps[n++] = g > 0 ? g : 0;
        if (FZ.moved_us[i]) {
            double h = (double)FZ.handoff_us[i] / 1000 - tick_ms;
            handoffs[moved++] = h > 0 ? h : 0;
            if (FZ.moved_us[i] > last_move) last_move = FZ.moved_us[i];
        }
    }
    if (n) qsort(gaps, n, sizeof *gaps, cmp_double);
    if (moved) qsort(handoffs, moved, sizeof *handoffs, cmp_double);
    fprintf(stderr,
            "measure: %s of %d.%d.%d.%u.%llu: duration_ms=%.1f entities=%zu moved=%zu freeze_ms p50=%.1f "
            "p99=%.1f max=%.1f handoff_ms p50=%.1f p99=%.1f max=%.1f\n",
            what, (int)FZ.area.world, FZ.area.cx, FZ.area.cy, FZ.area.depth, (unsigned long long)FZ.area.sub,
            last_move ? (double)(last_move - FZ.t0) / 1000 : -1.0, n, moved,
            n ? gaps[(size_t)(0.5 * (double)(n - 1))] : 0, n ? gaps[(size_t)(0.99 * (double)(n - 1))] : 0,
            n ? gaps[n - 1] : 0, moved ? handoffs[(size_t)(0.5 * (double)(moved - 1))] : 0,
            moved ? handoffs[(size_t)(0.99 * (double)(moved - 1))] : 0, moved ? handoffs[moved - 1] : 0);
    free(gaps);
    free(handoffs);
    pthread_mutex_unlock(&FZ.mu);
}

/* ---- 2. ctl split and merge with SIGKILLs ------------------------------------------- */

static void ctl_ok(ts_bus_t *bus, const char *verb, const ts_cell_t *cell, char *reply, size_t cap)
{
    char key[TS_CELL_STR_MAX];
    ts_cell_format(cell, key, sizeof key);
    /* right after a failover the new leader may still be reading the registry */
    bool ok = ts_probe_ctl_cell(bus, verb, cell, CTL_MS, reply, cap);
    fprintf(stderr, "ctl %s %s: %s\n", verb, key, reply);
    if (!ok) {
        ts_h.failed = true;
        fail_msg("ctl %s %s: %s", verb, key, reply);
    }
}

/* Polls the registry until cell has state (and owner, if not NULL). */
static bool wait_cell(ts_registry_t *reg, const ts_cell_t *cell, ts_cell_state_t state, const char *owner,
                      int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    do {
        ts_cell_entry_t e;
        if (ts_registry_cell_get(reg, cell, &e) == TS_OK && e.state == state &&
            (!owner || strcmp(e.owner, owner) == 0))
            return true;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    return false;
}

/* Which of the two orchestrators (0 or 1) leads; fails the test when
 * neither does within WAIT_MS. */
static int leader_of(ts_bus_t *bus, const int orch[2])
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    long lead = -1;
    do {
        lead = ts_probe_leader_pid(bus, WORLD, 1000);
        for (int k = 0; k < 2; k++)
            if (lead == ts_h.procs[orch[k]].pid) return k;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    ts_h.failed = true;
    fail_msg("neither orchestrator leads (stats name pid %ld)", lead);
    return -1;
}

static void test_ctl_split_merge_with_kills(void **state)
{
    (void)state;
    ts_bus_t *bus = NULL;
    ts_registry_t *reg = NULL;
    ts_probe_t *probe = NULL;
    ts_bus_sub_t *changes = NULL, *states = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_split"), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, "tessera.registry.0", on_change, NULL, &changes), TS_OK);
    ts_map_init(&FZ.index);
    assert_int_equal(ts_bus_subscribe(bus, "cell.0.*.*.*.*.state", on_state, NULL, &states), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);

    const char *orch_args[] = {"--orch.rebalance=0", "--orch.lock_ttl_ms=2000", "--orch.hb_ttl_ms=2000",
                               NULL};
    int orch[2];
    orch[0] = ts_h_spawn(&ts_h, "orch-a", "tessera-orch", orch_args);
    assert_true(ts_h_wait_world(&ts_h, WORLD, 16, WAIT_MS));
    orch[1] = ts_h_spawn(&ts_h, "orch-b", "tessera-orch", orch_args);
    const char *w1[] = {"--worker.id=w1", "--worker.hb_ms=250", NULL};
    const char *w2[] = {"--worker.id=w2", "--worker.hb_ms=250", NULL};
    int widx[2];
    widx[0] = ts_h_spawn(&ts_h, "w1", "tessera-worker", w1);
    widx[1] = ts_h_spawn(&ts_h, "w2", "tessera-worker", w2);
    bool ctl_up = false, bound = false;
    if (!ts_probe_wait_ready(probe, bus, WORLD, 8, WAIT_MS, &ctl_up, &bound)) {
        ts_h.failed = true;
        fail_msg("cluster not ready (ctl %d, cells bound %d)", ctl_up, bound);
    }
    /* players everywhere, more of them in root cell -1,0 (w1's) */
    const char *sim_args[] = {"--sim.players=200", "--sim.rate_hz=5", "--sim.speed=10",
                              "--hotspot=-50,50,30,0.5,600", NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", sim_args);
    /* every player playing: a second's worth of inputs applied */
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (ts_probe_inputs_applied(probe) < 200 * 5) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the sim's inputs are not applied (%" PRIu64 ")", ts_probe_inputs_applied(probe));
        }
        ts_sleep_ms(20);
    }

    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    read_registry(reg, &cells, &n);
    free(cells);
    const ts_cell_t root = {.world = WORLD, .cx = -1, .cy = 0};
    ts_cell_t kids[4], grandkids[4];
    ts_cell_children(&root, kids);
    ts_cell_children(&kids[1], grandkids); /* SE quadrant of -1,0: around the crowd */
    char reply[1024];

    /* split the root, then one child: depth 2 */
    /* the same window with nothing changing: the gaps the bus and the ticks give anyway */
    freeze_open(&root, 1);
    ts_sleep_ms(2000);
    freeze_close("nothing (baseline)");
    size_t mark = changes_now();
    freeze_open(&root, 1);
    ctl_ok(bus, "split", &root, reply, sizeof reply);
    expect_changes(&root, true, mark);
    freeze_wait(2000);
    freeze_close("split");
    assert_string_equal(get(reg, &root).owner, "w1");
    for (int q = 0; q < 4; q++)
        assert_int_equal(get(reg, &kids[q]).state, TS_CELL_ACTIVE);
    mark = changes_now();
    ctl_ok(bus, "split", &kids[1], reply, sizeof reply);
    expect_changes(&kids[1], true, mark);
    read_registry(reg, &cells, &n);
    free(cells);
    /* refusals: an active cell cannot merge, a split one cannot split */
    assert_int_equal(ts_probe_ctl(bus, WORLD, "merge", "0.-1.0.1.0", CTL_MS, reply, sizeof reply), TS_OK);
    assert_non_null(strstr(reply, "error"));
    assert_int_equal(ts_probe_ctl(bus, WORLD, "split", "0.-1.0.0.0", CTL_MS, reply, sizeof reply), TS_OK);
    assert_non_null(strstr(reply, "error"));
    ts_sleep_ms(2000);

    /* SIGKILL the leading orchestrator; the standby merges the depth-2 cells */
    int dead = leader_of(bus, orch);
    ts_h_signal(&ts_h, orch[dead], SIGKILL);
    ts_h_wait(&ts_h, orch[dead], 5000);
    mark = changes_now();
    freeze_open(&kids[1], 1);
    ctl_ok(bus, "merge", &kids[1], reply, sizeof reply);
    expect_changes(&kids[1], false, mark);
    freeze_wait(2000);
    freeze_close("merge (after an orchestrator failover)");
    read_registry(reg, &cells, &n);
    free(cells);
    ts_sleep_ms(2000);

    /* SIGKILL the owner w1: its cells, the split root (a forwarder) and
     * the retired grandchildren included, go to w2 keeping their states */
    ts_h_signal(&ts_h, widx[0], SIGKILL);
    ts_h_wait(&ts_h, widx[0], 5000);
    assert_true(wait_cell(reg, &root, TS_CELL_SPLIT, "w2", WAIT_MS));
    for (int q = 0; q < 4; q++) {
        assert_true(wait_cell(reg, &kids[q], TS_CELL_ACTIVE, "w2", WAIT_MS));
        assert_true(wait_cell(reg, &grandkids[q], TS_CELL_RETIRED, "w2", WAIT_MS));
    }
    read_registry(reg, &cells, &n);
    free(cells);
    uint64_t t_respawn = ts_mono_us();
    widx[0] = ts_h_spawn(&ts_h, "w1-again", "tessera-worker", w1);
    /* the new w1 is live: a heartbeat of its own */
    ts_probe_hb_t hb;
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (!ts_probe_heartbeat(probe, "w1", &hb) || hb.received_us < t_respawn) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the restarted w1 sends no heartbeat");
        }
        ts_sleep_ms(20);
    }

    /* merge the root back (all four children on w2 now), then split it
     * again; once w2 has bound the children it took over (the registry
     * names the new owner before it binds), so that the merge moves what
     * they hold */
    if (!wait_area_live(&root, 1, 10, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the children of the split root are not live on w2 after the recovery");
    }
    mark = changes_now();
    freeze_open(&root, 0);
    ctl_ok(bus, "merge", &root, reply, sizeof reply);
    expect_changes(&root, false, mark);
    freeze_wait(2000);
    freeze_close("merge");
    assert_string_equal(get(reg, &root).owner, "w2");
    mark = changes_now();
    freeze_open(&root, 1);
    ctl_ok(bus, "split", &root, reply, sizeof reply);
    expect_changes(&root, true, mark);
    freeze_wait(2000);
    freeze_close("split");

    /* a split, then at once SIGKILL of its owner w2: everything goes to w1
     * (the only live worker), the split parent staying split */
    orch[dead] = ts_h_spawn(&ts_h, "orch-c", "tessera-orch", orch_args); /* a standby again */
    mark = changes_now();
    ctl_ok(bus, "split", &kids[2], reply, sizeof reply);
    ts_h_signal(&ts_h, widx[1], SIGKILL);
    ts_h_wait(&ts_h, widx[1], 5000);
    expect_changes(&kids[2], true, mark);
    assert_true(wait_cell(reg, &root, TS_CELL_SPLIT, "w1", WAIT_MS));
    assert_true(wait_cell(reg, &kids[2], TS_CELL_SPLIT, "w1", WAIT_MS));
    ts_cell_t kids2[4];
    ts_cell_children(&kids[2], kids2);
    for (int q = 0; q < 4; q++)
        assert_true(wait_cell(reg, &kids2[q], TS_CELL_ACTIVE, "w1", WAIT_MS));
    read_registry(reg, &cells, &n);
    free(cells);
    ts_sleep_ms(1000);

    /* a merge, then at once SIGKILL of the leading orchestrator: the new
     * leader finds it done and splits the cell again */
    int leader_idx = orch[leader_of(bus, orch)];
    mark = changes_now();
    ctl_ok(bus, "merge", &kids[2], reply, sizeof reply);
    ts_h_signal(&ts_h, leader_idx, SIGKILL);
    ts_h_wait(&ts_h, leader_idx, 5000);
    expect_changes(&kids[2], false, mark);
    mark = changes_now();
    ctl_ok(bus, "split", &kids[2], reply, sizeof reply);
    expect_changes(&kids[2], true, mark);
    ts_sleep_ms(2000);
    read_registry(reg, &cells, &n);
    free(cells);

    /* every acknowledged input applied exactly once */
    int rc = 0;
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, sim, NULL, NULL, 0, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, %s", rc, v.line);
    }
    ts_bus_sub_destroy(changes);
    ts_bus_sub_destroy(states);
    ts_map_free(&FZ.index);
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    ts_h_pass();
}

/* ---- 3. hotspot: automatic split to depth 2, spread, merge back ---------------------- */

static void test_hotspot_splits_and_merges(void **state)
{
    (void)state;
    ts_bus_t *bus = NULL;
    ts_registry_t *reg = NULL;
    ts_probe_t *probe = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_split"), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    memset(&SEEN, 0, sizeof SEEN);

    const char *orch_args[] = {"--split.auto=1",
                               "--split.max_entities=60",
                               "--merge.max_entities=25",
                               "--split.windows=2",
                               "--merge.windows=3",
                               "--split.cooldown_s=3",
                               "--world.max_depth=3",
                               "--orch.rebalance_interval_ms=500",
                               "--orch.rebalance_cooldown_ms=1000",
                               "--orch.rebalance_hysteresis=2",
                               NULL};
    const char *worker_args[] = {"--worker.hb_ms=500", NULL};
    ts_h_stack_t stack;
    ts_h_spawn_stack(&ts_h, orch_args, worker_args, NULL, &stack);
    bool ctl_up = false, bound = false;
    if (!ts_probe_wait_ready(probe, bus, WORLD, 8, WAIT_MS, &ctl_up, &bound)) {
        ts_h.failed = true;
        fail_msg("cluster not ready (ctl %d, cells bound %d)", ctl_up, bound);
    }
    /* 300 players, half of them into a circle inside the SW quadrant of root 0,0 (w2's) for 30 s,
     * and 40 gateway clients, half of them into the same circle */
    const char *hotspot = "--hotspot=25,25,15,0.5,30";
    const char *sim_args[] = {"--sim.players=300", "--sim.rate_hz=5", "--sim.speed=20", hotspot, NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", sim_args);
    char gw[64];
    snprintf(gw, sizeof gw, "127.0.0.1:%d", stack.gw_port);
    const char *vg_args[] = {"--via-gateway",
                             gw,
                             "--sim.players=40",
                             "--sim.rate_hz=5",
                             "--sim.speed=20",
                             "--sim.seed=7",
                             "--sim.duration_s=70",
                             hotspot,
                             NULL};
    int vg = ts_h_spawn(&ts_h, "sim-gw", "tessera-sim", vg_args);

    /* the crowd splits its cell to depth >= 2 and the rebalancer spreads the children */
    uint64_t t0 = ts_mono_us(), deadline = t0 + 60000000ULL;
    unsigned max_depth = 0;
    bool spread = false;
    uint64_t t_depth2 = 0, t_spread = 0;
    while (ts_mono_us() < deadline && !(max_depth >= 2 && spread)) {
        ts_cell_entry_t *cells = NULL;
        size_t n = 0;
        read_registry(reg, &cells, &n);
        bool w1 = false, w2 = false;
        for (size_t i = 0; i < n; i++) {
            const ts_cell_entry_t *e = &cells[i];
            if (e->state != TS_CELL_ACTIVE || e->cell.cx != 0 || e->cell.cy != 0 || e->cell.depth == 0)
                continue;
            if (e->cell.depth > max_depth) max_depth = e->cell.depth;
            w1 |= strcmp(e->owner, "w1") == 0;
            w2 |= strcmp(e->owner, "w2") == 0;
        }
        free(cells);
        if (max_depth >= 2 && !t_depth2) t_depth2 = ts_mono_us();
        if (w1 && w2 && !spread) {
            spread = true;
            t_spread = ts_mono_us();
        }
        ts_sleep_ms(250);
    }
    fprintf(stderr, "hotspot: depth %u after %.1f s, children on both workers after %.1f s\n", max_depth,
            t_depth2 ? (double)(t_depth2 - t0) / 1e6 : -1, t_spread ? (double)(t_spread - t0) / 1e6 : -1);
    if (max_depth < 2 || !spread) {
        ts_h.failed = true;
        fail_msg("hotspot: max depth %u (want >= 2), children on both workers: %d", max_depth, spread);
    }
    /* the crowd disperses at 30 s: everything under root 0,0 merges back */
    deadline = t0 + 120000000ULL;
    bool merged = false;
    while (ts_mono_us() < deadline && !merged) {
        ts_cell_entry_t *cells = NULL;
        size_t n = 0;
        read_registry(reg, &cells, &n);
        const ts_cell_entry_t *r =
            ts_probe_cell_find(cells, n, &(ts_cell_t){.world = WORLD, .cx = 0, .cy = 0});
        merged = r && r->state == TS_CELL_ACTIVE;
        free(cells);
        ts_sleep_ms(250);
    }
    fprintf(stderr, "hotspot: root 0,0 merged back %s after %.1f s\n", merged ? "" : "NOT",
            (double)(ts_mono_us() - t0) / 1e6);
    char json[1024];
    double splits = 0, merges = 0;
    if (ts_probe_ctl(bus, WORLD, "stats", "", 2000, json, sizeof json) == TS_OK) {
        ts_probe_json_number(json, "splits", &splits);
        ts_probe_json_number(json, "merges", &merges);
    }
    fprintf(stderr, "hotspot: %.0f splits, %.0f merges\n", splits, merges);
    if (!merged) {
        ts_h.failed = true;
        fail_msg("root 0,0 did not merge back after the crowd dispersed");
    }
    assert_true(splits >= 2 && merges >= 2);

    /* gateway clients: all stayed connected through the splits, the spread
     * and the merge, every input applied exactly once, CellChanged exactly
     * when their entity's cell changed; they have played through all of it,
     * so they stop now (SIGTERM: settle, then the same verdict) instead of
     * at the end of their 70 s */
    ts_h_signal(&ts_h, vg, SIGTERM);
    int rc = ts_h_wait(&ts_h, vg, 60000);
    char *log = ts_h_read_log(&ts_h, vg);
    const char *line = log ? strstr(log, "via-gateway: clients=") : NULL;
    fprintf(stderr, "%.*s\n", line ? (int)strcspn(line, "\n") : 4, line ? line : "none");
    line = log ? strstr(log, "via-gateway: cells: ") : NULL;
    fprintf(stderr, "%.*s\n", line ? (int)strcspn(line, "\n") : 4, line ? line : "none");
    ts_probe_gw_verdict_t g;
    ts_probe_gw_verdict(log, &g);
    free(log);
    if (rc != 0) {
        ts_h.failed = true;
        fail_msg("via-gateway sim exited %d", rc);
    }
    assert_true(g.have_final && g.have_over && g.have_not_stored && g.have_no_delta && g.have_cells);
    assert_int_equal(g.clients, 40);
    assert_int_equal(g.connected, 40);
    assert_int_equal(g.dropped, 0);
    assert_true(g.sent > 0);
    assert_int_equal(g.applied, g.sent);
    assert_int_equal(g.missing, 0);
    assert_int_equal(g.doubled, 0);
    assert_int_equal(g.errors, 0);
    assert_int_equal(g.not_stored, 0);
    assert_int_equal(g.no_delta, 0);
    assert_int_equal(g.same_cell, 0);
    assert_int_equal(g.unannounced, 0);
    /* clients of the crowd were in the children and grandchildren: each got
     * there (and back) by a CellChanged */
    assert_true(g.clients_depth2 >= 1);
    assert_true(g.clients_depth1 >= g.clients_depth2);
    assert_true(g.cell_changed >= 2 * g.clients_depth2);
    assert_true(g.max_depth >= 2);
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, sim, NULL, NULL, 0, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, %s", rc, v.line);
    }
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_registry_split_merge, ts_h_test_start, ts_h_test_stop),
        cmocka_unit_test_setup_teardown(test_ctl_split_merge_with_kills, ts_h_test_start, ts_h_test_stop),
        cmocka_unit_test_setup_teardown(test_hotspot_splits_and_merges, ts_h_test_start, ts_h_test_stop),
    };
    /* IT_SPLIT_ONLY=<test name pattern> runs only the matching tests */
    if (getenv("IT_SPLIT_ONLY")) cmocka_set_test_filter(getenv("IT_SPLIT_ONLY"));
    return TS_H_RUN("it_split", tests, NULL, NULL);
}
