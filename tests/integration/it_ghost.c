/* Ghosts and `nearby` end to end: real nats-server -js and redis-server,
 * tessera-orch (no rebalancing) and workers w1 (cells with cx < 0) and w2
 * (cx >= 0) of the default 4 x 4 world of 100-unit cells. Entities are
 * joined straight into the cells' input streams; what they report is read
 * from the cells' state subjects.
 *
 * What is asserted:
 *  - two entities 1 unit apart on either side of the border x = 0 (cells of
 *    w1 and w2) each report nearby = 1 within 2 of their cell's ticks;
 *    after one walks away both report 0 within 2 ticks, and 1 again within
 *    2 ticks when it walks back;
 *  - the same across x = -100, a border between two cells of w1;
 *  - at depth: root (0, 0) split in four (tessera-ctl split) and its
 *    east children handed to w1, the same across x = 50 (depth-1 cells of
 *    w2 and w1) and across x = 0 (root (-1, 0) of w1 and a depth-1 child of
 *    w2), the entities joined and moved through the root's input stream
 *    (forwarded by position, as from a gateway that has not seen the split);
 *  - a GhostDelta forged with an epoch older than the registry's is
 *    ignored (nearby stays 0 for 10 ticks); the same with the current epoch
 *    counts (1 within 2 ticks), and the real owner's next keyframe, which
 *    does not name it, removes it again;
 *  - a crowd spread across a border, once at rest: every entity's nearby
 *    equals the brute-force count over all entities of both cells.
 * It prints the ghost traffic of one border (both directions) per second
 * with that crowd walking along it. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
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
#include "tessera/registry.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define WAIT_MS 20000
#define RADIUS 2.0
#define MAX_TRACKED 512
#define CROWD 240
#define CROWD_BASE 100000

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static ts_bus_t *bus;
static ts_bus_sub_t *state_sub, *ghost_sub;

/* What the state subjects said of the tracked entities. */
typedef struct {
    uint64_t id;
    bool seen;
    ts_cell_t cell;
    uint64_t tick; /* of its cell's worker, in the latest state naming it */
    double x, y;
    uint32_t nearby;
    uint64_t kf_tick; /* latest keyframe naming it */
    double kf_x, kf_y;
    uint32_t kf_nearby;
} track_t;

static struct {
    pthread_mutex_t mu;
    track_t t[MAX_TRACKED];
    size_t n;
    uint64_t ghost_msgs, ghost_bytes; /* on the watched border's two ghost subjects */
    ts_cell_t ghost_a, ghost_b;
} S = {.mu = PTHREAD_MUTEX_INITIALIZER};

static track_t *find(uint64_t id)
{
    for (size_t i = 0; i < S.n; i++)
        if (S.t[i].id == id) return &S.t[i];
    return NULL;
}

static void track(uint64_t id)
{
    pthread_mutex_lock(&S.mu);
    if (!find(id) && S.n < MAX_TRACKED) S.t[S.n++] = (track_t){.id = id};
    pthread_mutex_unlock(&S.mu);
}

static void on_state(void *ud, const ts_bus_msg_t *m)
{
    Tessera__V1__StateDelta *d =
        tessera__v1__state_delta__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (!d) return;
    ts_cell_t cell;
    if (ts_proto_cell_get(d->cell, &cell) == TS_OK) {
        pthread_mutex_lock(&S.mu);
        for (size_t i = 0; i < d->n_entities; i++) {
            const Tessera__V1__EntityState *e = d->entities[i];
            track_t *t = find(e->id);
            if (!t) continue;
            t->seen = true;
            t->cell = cell;
            t->tick = d->tick;
            t->x = e->x;
            t->y = e->y;
            t->nearby = e->nearby;
            if (d->full) {
                t->kf_tick = d->tick;
                t->kf_x = e->x;
                t->kf_y = e->y;
                t->kf_nearby = e->nearby;
            }
        }
        pthread_mutex_unlock(&S.mu);
    }
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

static void on_ghost(void *ud, const ts_bus_msg_t *m)
{
    ts_cell_t cell;
    ts_subject_kind_t kind;
    if (ts_subject_parse(ts_bus_msg_subject(m), &cell, &kind) != TS_OK) return;
    pthread_mutex_lock(&S.mu);
    if (ts_cell_eq(&cell, &S.ghost_a) || ts_cell_eq(&cell, &S.ghost_b)) {
        S.ghost_msgs++;
        S.ghost_bytes += ts_bus_msg_len(m);
    }
    pthread_mutex_unlock(&S.mu);
}

static track_t get(uint64_t id)
{
    pthread_mutex_lock(&S.mu);
    track_t t = *find(id);
    pthread_mutex_unlock(&S.mu);
    return t;
}

static ts_cell_t root(int cx, int cy)
{
    return (ts_cell_t){.world = WORLD, .cx = cx, .cy = cy};
}

/* ---- inputs ---------------------------------------------------------------- */

static uint64_t next_seq[MAX_TRACKED * 4];

static uint64_t seq_of(uint64_t id)
{
    return ++next_seq[id % (sizeof next_seq / sizeof next_seq[0])];
}

/* One InputBatch into cell's input stream (stored before it returns). */
static void send_inputs(const ts_cell_t *cell, Tessera__V1__Input **inputs, size_t n)
{
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    Tessera__V1__CellId cid;
    ts_proto_cell_init(&cid, cell);
    b.cell = &cid;
    b.n_inputs = n;
    b.inputs = inputs;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_proto_pack(&b.base, &buf, &len), TS_OK);
    char subj[TS_SUBJECT_MAX];
    ts_subject_input(subj, sizeof subj, cell, TS_ORIGIN_WORKER);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .count = (uint32_t)n};
    assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, buf, len, 5000, NULL), TS_OK);
    free(buf);
}

static void join(uint64_t id, double x, double y)
{
    track(id);
    ts_cell_t cell;
    ts_cell_from_pos(WORLD, 100, 0, x, y, &cell);
    Tessera__V1__JoinInput j = TESSERA__V1__JOIN_INPUT__INIT;
    j.x = x;
    j.y = y;
    j.name = (char *)"ghost-it";
    Tessera__V1__Input in = TESSERA__V1__INPUT__INIT;
    in.entity = id;
    in.seq = seq_of(id);
    in.kind_case = TESSERA__V1__INPUT__KIND_JOIN;
    in.join = &j;
    Tessera__V1__Input *ip = &in;
    send_inputs(&cell, &ip, 1);
}

/* Sets the velocity of an entity in `cell`. */
static void move(const ts_cell_t *cell, uint64_t id, double vx, double vy)
{
    Tessera__V1__MoveInput mv = TESSERA__V1__MOVE_INPUT__INIT;
    mv.dx = vx;
    mv.dy = vy;
    Tessera__V1__Input in = TESSERA__V1__INPUT__INIT;
    in.entity = id;
    in.seq = seq_of(id);
    in.kind_case = TESSERA__V1__INPUT__KIND_MOVE;
    in.move = &mv;
    Tessera__V1__Input *ip = &in;
    send_inputs(cell, &ip, 1);
}

/* ---- waiting on what the cells say ----------------------------------------- */

static track_t wait_seen(uint64_t id)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        track_t t = get(id);
        if (t.seen) return t;
        if (ts_mono_us() > deadline) fail_msg("entity %" PRIu64 " never showed in a state delta", id);
        ts_sleep_ms(5);
    }
}

/* Waits until id's state says nearby == want (in any state from now on);
 * returns the tick of the first one that does. */
static uint64_t wait_nearby(uint64_t id, uint32_t want)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        track_t t = get(id);
        if (t.seen && t.nearby == want) return t.tick;
        if (ts_mono_us() > deadline)
            fail_msg("entity %" PRIu64 " at (%.2f, %.2f): nearby %" PRIu32 " at tick %" PRIu64
                     ", want %" PRIu32,
                     id, t.x, t.y, t.nearby, t.tick, want);
        ts_sleep_ms(1);
    }
}

/* Waits until a state of id has passed `cond` on x; returns it. */
static track_t wait_x(uint64_t id, bool beyond, double x)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        track_t t = get(id);
        if (t.seen && (beyond ? t.x > x : t.x < x)) return t;
        if (ts_mono_us() > deadline) fail_msg("entity %" PRIu64 " stayed at x = %.2f", id, t.x);
        ts_sleep_ms(1);
    }
}

/* a and b, `gap` apart across a border, both walking along it: each
 * reports nearby = want within 2 of its own cell's ticks after `mark_*`. */
static void assert_within_2_ticks(uint64_t id, uint32_t want, uint64_t mark_tick, const char *what)
{
    uint64_t got = wait_nearby(id, want);
    if (got > mark_tick + 2)
        fail_msg("%s: entity %" PRIu64 " reported nearby = %" PRIu32 " at tick %" PRIu64 ", %" PRIu64
                 " ticks after tick %" PRIu64 " (want at most 2)",
                 what, id, want, got, got - mark_tick, mark_tick);
}

/* The pair (a west of the border at bx, b east of it) from join to walking
 * away and back. */
static void pair_across(double bx, double y, uint64_t a, uint64_t b, const char *what)
{
    ts_cell_t ca, cb;
    ts_cell_from_pos(WORLD, 100, 0, bx - 0.5, y, &ca);
    ts_cell_from_pos(WORLD, 100, 0, bx + 0.5, y, &cb);
    join(a, bx - 0.5, y);
    join(b, bx + 0.5, y);
    move(&ca, a, 0, 1); /* walking along the border: a state every tick */
    move(&cb, b, 0, 1);
    wait_seen(a);
    wait_seen(b);
    /* both are in their cells' states now: their next ticks count them */
    track_t ta = get(a), tb = get(b);
    assert_within_2_ticks(a, 1, ta.tick, what);
    assert_within_2_ticks(b, 1, tb.tick, what);

    /* b walks away east: once a state shows it out of reach, both say 0 */
    move(&cb, b, 20, 1);
    tb = wait_x(b, true, bx - 0.5 + RADIUS + 0.5);
    ta = get(a);
    assert_within_2_ticks(b, 0, tb.tick, what);
    assert_within_2_ticks(a, 0, ta.tick, what);
    /* ... stops, and comes back */
    tb = wait_x(b, true, bx + 6);
    move(&cb, b, -20, 1);
    tb = wait_x(b, false, bx + 1);
    move(&cb, b, 0, 1);
    ta = get(a);
    assert_within_2_ticks(b, 1, tb.tick, what);
    assert_within_2_ticks(a, 1, ta.tick, what);
}

/* ---- cluster ----------------------------------------------------------------- */

static void cluster_start(void)
{
    pthread_mutex_lock(&S.mu); /* nothing of an earlier test's world */
    S.n = 0;
    S.ghost_msgs = S.ghost_bytes = 0;
    pthread_mutex_unlock(&S.mu);
    ts_h_start(&ts_h);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_ghost"), TS_OK);
    char subj[TS_SUBJECT_MAX];
    ts_subject_world_wildcard(subj, sizeof subj, WORLD, TS_SUBJ_STATE);
    assert_int_equal(ts_bus_subscribe(bus, subj, on_state, NULL, &state_sub), TS_OK);
    ts_subject_world_wildcard(subj, sizeof subj, WORLD, TS_SUBJ_GHOST);
    assert_int_equal(ts_bus_subscribe(bus, subj, on_ghost, NULL, &ghost_sub), TS_OK);
    const char *orch[] = {"--orch.rebalance=0", NULL};
    const char *worker[] = {"--aoi.interact_radius=2", "--ghost.margin=4", "--ghost.keyframe_ticks=10", NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, 16, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the world did not come up");
    }
    /* every cell bound and following its neighbours' ghosts: a pair far
     * from everything else sees itself across each border under test */
    const double borders[2] = {0, -100};
    for (int i = 0; i < 2; i++) {
        uint64_t a = 50 + 2 * (uint64_t)i, b = a + 1;
        join(a, borders[i] - 0.5, 10);
        join(b, borders[i] + 0.5, 10);
        wait_nearby(a, 1);
        wait_nearby(b, 1);
    }
}

static int setup(void **state)
{
    ts_h_test_setup(state);
    cluster_start();
    return 0;
}

static int teardown(void **state)
{
    ts_bus_sub_destroy(state_sub);
    ts_bus_sub_destroy(ghost_sub);
    state_sub = ghost_sub = NULL;
    ts_bus_destroy(bus);
    bus = NULL;
    ts_h_test_teardown(state);
    ts_h_stop(&ts_h);
    return 0;
}

/* ---- tests -------------------------------------------------------------------- */

static void test_nearby_across_borders(void **state)
{
    pair_across(0, 50, 1, 2, "w1|w2 border");
    pair_across(-100, 50, 3, 4, "w1|w1 border");
    ts_h_pass();
}

/* Polls the registry until cell is active and owned by owner. */
static void wait_active(const ts_cell_t *cell, const char *owner)
{
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    char key[TS_CELL_STR_MAX];
    ts_cell_format(cell, key, sizeof key);
    uint64_t deadline = ts_mono_us() + (uint64_t)WAIT_MS * 1000ULL;
    bool ok = false;
    do {
        ts_cell_entry_t e;
        ok = ts_registry_cell_get(reg, cell, &e) == TS_OK && e.state == TS_CELL_ACTIVE &&
             strcmp(e.owner, owner) == 0;
        if (!ok) ts_sleep_ms(50);
    } while (!ok && ts_mono_us() < deadline);
    ts_registry_destroy(reg);
    if (!ok) {
        ts_h.failed = true;
        fail_msg("cell %s did not become active on %s", key, owner);
    }
}

/* A ctl request, asked again while the answer is "busy, try again" (a
 * worker still binding a cell the split just created). */
static void ctl(const char *verb, const char *payload)
{
    char reply[512] = "";
    ts_status_t st;
    uint64_t deadline = ts_mono_us() + (uint64_t)WAIT_MS * 1000ULL;
    do {
        st = ts_probe_ctl(bus, WORLD, verb, payload, WAIT_MS, reply, sizeof reply);
        if (st != TS_OK || !strstr(reply, "busy, try again")) break;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    if (st != TS_OK || strncmp(reply, "ok", 2) != 0) {
        ts_h.failed = true;
        fail_msg("ctl %s %s: %s", verb, payload, reply);
    }
}

static void test_nearby_across_borders_at_depth(void **state)
{
    ts_cell_t parent = root(0, 0), kids[4];
    assert_int_equal(ts_cell_children(&parent, kids), TS_OK);
    char key[TS_CELL_STR_MAX], payload[160];
    ts_cell_format(&parent, key, sizeof key);
    assert_true(ts_probe_ctl_cell(bus, "split", &parent, WAIT_MS, payload, sizeof payload));
    for (int q = 0; q < 4; q++)
        wait_active(&kids[q], "w2");
    /* the east children (x >= 50) go to w1 */
    for (int q = 0; q < 4; q++) {
        double x0, y0, x1, y1;
        ts_cell_bounds(&kids[q], 100, &x0, &y0, &x1, &y1);
        if (x0 < 50) continue;
        ts_cell_format(&kids[q], key, sizeof key);
        snprintf(payload, sizeof payload, "%s w1", key);
        ctl("handover", payload);
        wait_active(&kids[q], "w1");
    }
    pair_across(50, 25, 60, 61, "depth-1 w2|w1 border");
    pair_across(0, 25, 62, 63, "root w1 | depth-1 w2 border");
    /* each was reported by the cell it was forwarded to */
    assert_int_equal(get(60).cell.depth, 1);
    assert_int_equal(get(61).cell.depth, 1);
    assert_int_equal(get(62).cell.depth, 0);
    assert_int_equal(get(63).cell.depth, 1);
    ts_h_pass();
}

/* A forged GhostDelta from cell (0,0) naming an entity right next to a. */
static void forge(uint64_t epoch, uint64_t id, double x, double y)
{
    ts_cell_t src = root(0, 0);
    Tessera__V1__CellId cid;
    ts_proto_cell_init(&cid, &src);
    Tessera__V1__EntityState es = TESSERA__V1__ENTITY_STATE__INIT;
    es.id = id;
    es.x = x;
    es.y = y;
    Tessera__V1__EntityState *ep = &es;
    Tessera__V1__GhostDelta d = TESSERA__V1__GHOST_DELTA__INIT;
    d.cell = &cid;
    d.epoch = epoch;
    d.keyframe_ticks = 10;
    d.n_entities = 1;
    d.entities = &ep;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_proto_pack(&d.base, &buf, &len), TS_OK);
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof subj, &src, TS_SUBJ_GHOST);
    ts_bus_hdr_t hdr = {.type = "tessera.v1.GhostDelta", .epoch = epoch};
    assert_int_equal(ts_bus_publish(bus, subj, &hdr, buf, len), TS_OK);
    free(buf);
}

static void test_stale_ghost_ignored(void **state)
{
    const uint64_t a = 7, phantom = 777;
    ts_cell_t ca = root(-1, 0), src = root(0, 0);
    join(a, -0.5, 60);
    move(&ca, a, 0, 1);
    wait_seen(a);
    wait_nearby(a, 0);
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, &src, &e), TS_OK);
    ts_registry_destroy(reg);
    assert_true(e.epoch >= 1);

    /* an older epoch of (0,0): ignored, for all of 10 of a's ticks */
    track_t t0 = get(a);
    while (get(a).tick < t0.tick + 10) {
        track_t t = get(a);
        forge(e.epoch - 1, phantom, 0.3, t.y);
        if (t.nearby != 0)
            fail_msg("a ghost of epoch %" PRIu64 " (the registry has %" PRIu64
                     ") was counted at tick %" PRIu64,
                     e.epoch - 1, e.epoch, t.tick);
        ts_sleep_ms(10);
    }
    assert_int_equal(get(a).nearby, 0);

    /* the same at the registry's epoch counts ... */
    track_t t = get(a);
    forge(e.epoch, phantom, 0.3, t.y);
    assert_within_2_ticks(a, 1, t.tick, "forged ghost at the current epoch");
    /* ... until the owner's next keyframe, which does not name it */
    t = get(a);
    uint64_t gone = wait_nearby(a, 0);
    if (gone > t.tick + 10 + 2)
        fail_msg("the forged ghost outlived a keyframe period: gone at tick %" PRIu64
                 ", named at tick %" PRIu64,
                 gone, t.tick);
    ts_h_pass();
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void test_crowd_at_rest_matches_brute_force(void **state)
{
    /* CROWD entities in a strip 8 units wide across x = 0, y in [20, 40) */
    ts_rng_t rng;
    ts_rng_seed(&rng, 42);
    double xs[CROWD], ys[CROWD];
    for (int i = 0; i < CROWD; i++) {
        xs[i] = -4 + 8 * ts_rng_unit(&rng);
        ys[i] = 20 + 20 * ts_rng_unit(&rng);
        join(CROWD_BASE + (uint64_t)i, xs[i], ys[i]);
    }
    for (int i = 0; i < CROWD; i++)
        wait_seen(CROWD_BASE + (uint64_t)i);

    /* walking along the border: the ghost traffic of this one border */
    for (int i = 0; i < CROWD; i++) {
        ts_cell_t c;
        ts_cell_from_pos(WORLD, 100, 0, xs[i], ys[i], &c);
        move(&c, CROWD_BASE + (uint64_t)i, 0, i % 2 ? 2 : -2);
    }
    ts_sleep_ms(500); /* all walking */
    pthread_mutex_lock(&S.mu);
    S.ghost_a = root(-1, 0);
    S.ghost_b = root(0, 0);
    S.ghost_msgs = S.ghost_bytes = 0;
    pthread_mutex_unlock(&S.mu);
    uint64_t t0 = ts_mono_us();
    ts_sleep_ms(4000);
    pthread_mutex_lock(&S.mu);
    double secs = (double)(ts_mono_us() - t0) / 1e6;
    double msgs = (double)S.ghost_msgs / secs, bytes = (double)S.ghost_bytes / secs;
    pthread_mutex_unlock(&S.mu);
    size_t band = 0;
    for (int i = 0; i < CROWD; i++) {
        track_t t = get(CROWD_BASE + (uint64_t)i);
        if (fabs(t.x) <= 4) band++;
    }
    printf(
        "ghost traffic, one border (cells -1.0 | 0.0, both directions), %zu entities within the 4-unit "
        "margin walking at 2 u/s, 20 Hz ticks, keyframe every 10: %.0f msgs/s, %.0f bytes/s (%.1f KiB/s)\n",
        band, msgs, bytes, bytes / 1024);

    /* at rest: every entity's nearby is the brute-force count over both cells */
    for (int i = 0; i < CROWD; i++) {
        track_t t = get(CROWD_BASE + (uint64_t)i);
        move(&t.cell, CROWD_BASE + (uint64_t)i, 0, 0);
    }
    /* two keyframes of both cells after the last stop */
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    uint64_t seen_tick[CROWD];
    for (int i = 0; i < CROWD; i++)
        seen_tick[i] = get(CROWD_BASE + (uint64_t)i).tick;
    for (;;) {
        bool settled = true;
        for (int i = 0; i < CROWD && settled; i++)
            settled = get(CROWD_BASE + (uint64_t)i).kf_tick > seen_tick[i] + 40;
        if (settled) break;
        if (ts_mono_us() > deadline) fail_msg("the crowd's cells sent no keyframe after it stopped");
        ts_sleep_ms(50);
    }
    /* every entity of the world is tracked (the crowd, and the pairs the
     * setup left at rest): the brute force counts them all */
    size_t wrong = 0, with_ghosts = 0;
    char first[256] = "";
    pthread_mutex_lock(&S.mu);
    size_t ntracked = S.n;
    pthread_mutex_unlock(&S.mu);
    for (int i = 0; i < CROWD; i++) {
        track_t ti = get(CROWD_BASE + (uint64_t)i);
        uint32_t n = 0, across = 0;
        double d[MAX_TRACKED];
        size_t nd = 0;
        for (size_t j = 0; j < ntracked; j++) {
            pthread_mutex_lock(&S.mu);
            track_t tj = S.t[j];
            pthread_mutex_unlock(&S.mu);
            if (tj.id == ti.id) continue;
            assert_true(tj.kf_tick > 0); /* every one at rest is in a keyframe by now */
            double dist = hypot(tj.kf_x - ti.kf_x, tj.kf_y - ti.kf_y);
            d[nd++] = dist;
            if (dist <= RADIUS) {
                n++;
                if (!ts_cell_eq(&tj.cell, &ti.cell)) across++;
            }
        }
        if (across) with_ghosts++;
        if (ti.kf_nearby != n) {
            qsort(d, nd, sizeof d[0], cmp_double);
            if (wrong++ == 0)
                snprintf(first, sizeof first,
                         "entity at (%.3f, %.3f) says %" PRIu32 ", brute force %" PRIu32 " (%" PRIu32
                         " across the border; nearest distances %.3f %.3f %.3f)",
                         ti.kf_x, ti.kf_y, ti.kf_nearby, n, across, d[0], d[1], d[2]);
        }
    }
    printf("crowd at rest: %d entities, %zu count neighbours across the border, %zu wrong\n", CROWD,
           with_ghosts, wrong);
    if (wrong) fail_msg("%zu of %d entities report a wrong nearby; first: %s", wrong, CROWD, first);
    assert_true(with_ghosts > 0);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nearby_across_borders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nearby_across_borders_at_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_ghost_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crowd_at_rest_matches_brute_force, setup, teardown),
    };
    return TS_H_RUN("it_ghost", tests, NULL, NULL);
}
