/* Areas of interest by radius and cells at depth, against real nats-server
 * -js and redis-server, two workers, the orchestrator and a gateway with
 * aoi.radius 60 and aoi.hysteresis 10 (root cells of 100).
 *
 * Root (0,0) (w2's) is split, and its south-west child split again, so the
 * world around the origin holds cells of depth 0, 1 and 2 owned by w1 and
 * w2. A grid of motionless players ("dots") joins across them; the test
 * keeps the ground truth of every entity's position from every cell's state
 * (cell.0.*.*.*.*.state, keyframes and deltas). An observer then:
 *   - joins at a position inside a depth-2 cell: its Welcome and Snapshot
 *     name that cell;
 *   - gets a first Snapshot holding its own entity and every dot within the
 *     radius, none beyond radius + hysteresis;
 *   - walks across roots, depths and owners: after every frame it holds no
 *     entity beyond radius + hysteresis of itself, and once it stands still
 *     it holds every entity within the radius (exactly the truth, up to the
 *     hysteresis band);
 *   - keeps that view while root -1,0 next to it splits (its dots move into
 *     the children, which the gateway subscribes to on the registry change).
 * `it_aoi --ws`: the same with every player on WebSocket. */
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
#include "tessera/client.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/util.h"

#define WORLD 0
#define RADIUS 60.0
#define HYST 10.0
#define EPS 1e-6
#define WAIT_MS 20000
#define CTL_MS 10000
#define MAX_ENT 512
#define DOTS_X 14 /* x = -130, -110, ..., 130 */
#define DOTS_Y 8  /* y = -50, -30, ..., 90 */
#define NDOTS (DOTS_X * DOTS_Y)

static ts_h_stack_t stack;

/* ---- ground truth: every entity's newest position from every cell's state ---- */

static struct {
    pthread_mutex_t mu;
    uint64_t id[MAX_ENT];
    double x[MAX_ENT], y[MAX_ENT];
    uint64_t applied[MAX_ENT];
    size_t n;
} TRUTH = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_state(void *ud, const ts_bus_msg_t *msg)
{
    (void)ud;
    Tessera__V1__StateDelta *d =
        tessera__v1__state_delta__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    if (d == NULL) return;
    pthread_mutex_lock(&TRUTH.mu);
    for (size_t i = 0; i < d->n_entities; i++) {
        const Tessera__V1__EntityState *s = d->entities[i];
        size_t k = 0;
        while (k < TRUTH.n && TRUTH.id[k] != s->id)
            k++;
        if (k == TRUTH.n) {
            if (TRUTH.n == MAX_ENT) continue;
            TRUTH.n++;
            TRUTH.id[k] = s->id;
            TRUTH.applied[k] = 0;
        } else if (s->inputs_applied < TRUTH.applied[k]) {
            continue; /* an older copy (the cell it left) */
        }
        TRUTH.x[k] = s->x;
        TRUTH.y[k] = s->y;
        TRUTH.applied[k] = s->inputs_applied;
    }
    pthread_mutex_unlock(&TRUTH.mu);
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

static size_t truth_count(void)
{
    pthread_mutex_lock(&TRUTH.mu);
    size_t n = TRUTH.n;
    pthread_mutex_unlock(&TRUTH.mu);
    return n;
}

static bool truth_pos(uint64_t id, double *x, double *y)
{
    bool found = false;
    pthread_mutex_lock(&TRUTH.mu);
    for (size_t k = 0; k < TRUTH.n && !found; k++) {
        if (TRUTH.id[k] != id) continue;
        *x = TRUTH.x[k];
        *y = TRUTH.y[k];
        found = true;
    }
    pthread_mutex_unlock(&TRUTH.mu);
    return found;
}

/* ---- what one client was shown ---- */

typedef struct {
    ts_client_t *c;
    uint64_t entity;
    Tessera__V1__CellId welcome_cell, snapshot_cell;
    bool snapshot_seen;
    size_t snapshot_n;
    uint64_t id[MAX_ENT];
    double x[MAX_ENT], y[MAX_ENT];
    size_t n;
    size_t frames, violations;
    double me_x, me_y;
    uint64_t me_changed_us;
} view_t;

static size_t view_find(const view_t *v, uint64_t id)
{
    for (size_t i = 0; i < v->n; i++) {
        if (v->id[i] == id) return i;
    }
    return SIZE_MAX;
}

static void view_put(view_t *v, const Tessera__V1__EntityState *s)
{
    size_t i = view_find(v, s->id);
    if (i == SIZE_MAX) {
        if (v->n == MAX_ENT) return;
        i = v->n++;
        v->id[i] = s->id;
    }
    v->x[i] = s->x;
    v->y[i] = s->y;
    if (s->id == v->entity && (s->x != v->me_x || s->y != v->me_y)) {
        v->me_x = s->x;
        v->me_y = s->y;
        v->me_changed_us = ts_mono_us();
    }
}

static void view_del(view_t *v, uint64_t id)
{
    size_t i = view_find(v, id);
    if (i == SIZE_MAX) return;
    v->n--;
    v->id[i] = v->id[v->n];
    v->x[i] = v->x[v->n];
    v->y[i] = v->y[v->n];
}

/* Entities the client holds beyond radius + hysteresis of its own entity,
 * positions as the client was told; printed. */
static size_t view_violations(const view_t *v)
{
    size_t bad = 0;
    for (size_t i = 0; i < v->n; i++) {
        double d = hypot(v->x[i] - v->me_x, v->y[i] - v->me_y);
        if (v->id[i] == v->entity || d <= RADIUS + HYST + EPS) continue;
        fprintf(stderr, "entity %llu shown at distance %.2f from (%.2f, %.2f)\n",
                (unsigned long long)v->id[i], d, v->me_x, v->me_y);
        bad++;
    }
    return bad;
}

static void view_apply(view_t *v, const Tessera__V1__ServerFrame *f)
{
    v->frames++;
    switch (f->payload_case) {
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME:
        if (f->welcome->entity != 0) v->entity = f->welcome->entity;
        if (f->cell != NULL) v->welcome_cell = *f->cell;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT:
        if (!v->snapshot_seen) {
            v->snapshot_seen = true;
            v->n = 0;
            v->snapshot_n = f->snapshot->n_entities;
            if (f->cell != NULL) v->snapshot_cell = *f->cell;
        }
        for (size_t i = 0; i < f->snapshot->n_entities; i++)
            view_put(v, f->snapshot->entities[i]);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA:
        for (size_t i = 0; i < f->delta->n_entities; i++)
            view_put(v, f->delta->entities[i]);
        for (size_t i = 0; i < f->delta->n_removed; i++)
            view_del(v, f->delta->removed[i]);
        break;
    default:
        break;
    }
    if (v->snapshot_seen) v->violations += view_violations(v);
}

/* Receives for ms milliseconds, applying every frame. */
static void view_pump(view_t *v, int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000;
    for (;;) {
        uint64_t now = ts_mono_us();
        if (now >= deadline) return;
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(v->c, (int64_t)((deadline - now) / 1000) + 1, &f);
        if (st == TS_ERR_TIMEOUT) return;
        assert_int_equal(st, TS_OK);
        view_apply(v, f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
}

/* Pumps until the own entity stood still for 600 ms where the truth has it. */
static void view_settle(view_t *v)
{
    uint64_t deadline = ts_mono_us() + 10000 * 1000ull;
    while (ts_mono_us() < deadline) {
        view_pump(v, 100);
        double tx, ty;
        if (v->me_changed_us != 0 && ts_mono_us() - v->me_changed_us > 600000 &&
            truth_pos(v->entity, &tx, &ty) && tx == v->me_x && ty == v->me_y)
            return;
    }
    fail_msg("the observer did not come to rest");
}

/* The client holds every entity within the radius of where the truth has
 * its own entity, and none beyond radius + hysteresis. Returns how many
 * entities are within the radius. */
static size_t expect_exact(const view_t *v)
{
    double ox = 0, oy = 0;
    assert_true(truth_pos(v->entity, &ox, &oy));
    size_t within = 0, missing = 0, extra = 0;
    pthread_mutex_lock(&TRUTH.mu);
    for (size_t k = 0; k < TRUTH.n; k++) {
        double d = hypot(TRUTH.x[k] - ox, TRUTH.y[k] - oy);
        bool shown = view_find(v, TRUTH.id[k]) != SIZE_MAX;
        if (d <= RADIUS) {
            within++;
            if (!shown) {
                missing++;
                fprintf(stderr, "entity %llu at distance %.2f not shown\n", (unsigned long long)TRUTH.id[k],
                        d);
            }
        } else if (shown && d > RADIUS + HYST + EPS && TRUTH.id[k] != v->entity) {
            extra++;
            fprintf(stderr, "entity %llu at distance %.2f shown\n", (unsigned long long)TRUTH.id[k], d);
        }
    }
    pthread_mutex_unlock(&TRUTH.mu);
    for (size_t i = 0; i < v->n; i++) { /* shown but unknown to the truth: a ghost of the view */
        double x, y;
        if (!truth_pos(v->id[i], &x, &y)) {
            extra++;
            fprintf(stderr, "entity %llu shown, unknown\n", (unsigned long long)v->id[i]);
        }
    }
    fprintf(stderr, "observer at (%.1f, %.1f): %zu within the radius, %zu shown, %zu missing, %zu beyond\n",
            ox, oy, within, v->n, missing, extra);
    assert_int_equal(missing, 0);
    assert_int_equal(extra, 0);
    assert_non_null(view_find(v, v->entity) != SIZE_MAX ? v : NULL);
    return within;
}

/* ---- cluster ---- */

static void ctl_ok(ts_bus_t *bus, const char *verb, const ts_cell_t *cell)
{
    char reply[1024];
    if (!ts_probe_ctl_cell(bus, verb, cell, CTL_MS, reply, sizeof reply)) {
        char key[TS_CELL_STR_MAX];
        ts_cell_format(cell, key, sizeof key);
        fail_msg("ctl %s %s: %s", verb, key, reply);
    }
}

static bool wait_active(ts_registry_t *reg, const ts_cell_t *cell, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    do {
        ts_cell_entry_t e;
        if (ts_registry_cell_get(reg, cell, &e) == TS_OK && e.state == TS_CELL_ACTIVE) return true;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    return false;
}

static const char *owner_of(ts_registry_t *reg, const ts_cell_t *cell, ts_cell_entry_t *e)
{
    assert_int_equal(ts_registry_cell_get(reg, cell, e), TS_OK);
    return e->owner;
}

static void test_aoi_across_depths_and_owners(void **state)
{
    (void)state;
    ts_bus_t *bus = NULL;
    ts_registry_t *reg = NULL;
    ts_bus_sub_t *states = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_aoi"), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);

    /* root 0,0 -> depth 1; its south-west child -> depth 2 */
    const ts_cell_t root = {.world = WORLD, .cx = 0, .cy = 0};
    ts_cell_t kids[4], grandkids[4];
    ts_cell_children(&root, kids);
    ts_cell_children(&kids[0], grandkids);
    ctl_ok(bus, "split", &root);
    assert_true(wait_active(reg, &kids[0], WAIT_MS));
    ctl_ok(bus, "split", &kids[0]);
    for (int q = 0; q < 4; q++)
        assert_true(wait_active(reg, &grandkids[q], WAIT_MS));
    /* tessera-ctl cells shows depth, state and parent */
    const char *cells_args[] = {"cells", NULL};
    int ctl = ts_h_spawn(&ts_h, "ctl-cells", "tessera-ctl", cells_args);
    assert_int_equal(ts_h_wait(&ts_h, ctl, 10000), 0);
    char *out = ts_h_read_log(&ts_h, ctl);
    assert_non_null(out);
    const char *row = strstr(out, "\n0.0.0.2.0 "), *top = strstr(out, "\n0.0.0.0.0 ");
    char owner[32] = "", st[32] = "", parent[32] = "";
    unsigned long long epoch = 0;
    unsigned depth = 99;
    assert_non_null(row);
    assert_non_null(top);
    assert_int_equal(sscanf(row + 1, "%*s %31s %llu %31s %u %31s", owner, &epoch, st, &depth, parent), 5);
    assert_string_equal(st, "active");
    assert_int_equal(depth, 2);
    assert_string_equal(parent, "0.0.0.1.0");
    assert_int_equal(sscanf(top + 1, "%*s %31s %llu %31s %u %31s", owner, &epoch, st, &depth, parent), 5);
    assert_string_equal(st, "split");
    assert_int_equal(depth, 0);
    assert_string_equal(parent, "-");
    assert_non_null(strstr(out, "live (deepest at depth 2)"));
    free(out);

    ts_cell_entry_t e1, e2;
    const ts_cell_t west = {.world = WORLD, .cx = -1, .cy = 0};
    assert_string_not_equal(owner_of(reg, &west, &e1), owner_of(reg, &grandkids[0], &e2));

    assert_int_equal(ts_bus_subscribe(bus, "cell.0.*.*.*.*.state", on_state, NULL, &states), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);

    /* the dots: motionless players on a grid across every depth */
    static ts_client_t *dots[NDOTS];
    for (int j = 0; j < DOTS_Y; j++) {
        for (int i = 0; i < DOTS_X; i++) {
            ts_client_t **c = &dots[j * DOTS_X + i];
            assert_int_equal(ts_h_client_connect(c, stack.gw_port, 3000), TS_OK);
            assert_int_equal(ts_client_join(*c, -130.0 + 20.0 * i, -50.0 + 20.0 * j, "dot"), TS_OK);
        }
    }
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ull;
    while (truth_count() < NDOTS && ts_mono_us() < deadline)
        ts_sleep_ms(50);
    assert_int_equal(truth_count(), NDOTS);

    /* the observer joins inside depth-2 cell 0.0.0.2.0 ([0,25) x [0,25)) */
    static view_t obs;
    memset(&obs, 0, sizeof obs);
    assert_int_equal(ts_h_client_connect(&obs.c, stack.gw_port, 3000), TS_OK);
    assert_int_equal(ts_client_join(obs.c, 10, 10, "observer"), TS_OK);
    uint64_t joined_us = ts_mono_us();
    while (!obs.snapshot_seen && ts_mono_us() < joined_us + 5000000ull)
        view_pump(&obs, 100);
    assert_true(obs.snapshot_seen);
    fprintf(stderr, "first Snapshot after %.0f ms: %zu entities\n",
            (double)(ts_mono_us() - joined_us) / 1000.0, obs.snapshot_n);
    ts_cell_t wc, sc;
    assert_int_equal(ts_proto_cell_get(&obs.welcome_cell, &wc), TS_OK);
    assert_int_equal(ts_proto_cell_get(&obs.snapshot_cell, &sc), TS_OK);
    assert_true(ts_cell_eq(&wc, &grandkids[0]));
    assert_true(ts_cell_eq(&sc, &grandkids[0]));
    /* first Snapshot: the own entity and every dot within the radius */
    assert_true(view_find(&obs, obs.entity) != SIZE_MAX);
    obs.me_x = 10;
    obs.me_y = 10;
    size_t dots_within = 0;
    for (size_t i = 0; i < obs.n; i++)
        dots_within += obs.id[i] != obs.entity && hypot(obs.x[i] - 10, obs.y[i] - 10) <= RADIUS;
    size_t expect = 0;
    for (int j = 0; j < DOTS_Y; j++) {
        for (int i = 0; i < DOTS_X; i++)
            expect += hypot(-130.0 + 20.0 * i - 10, -50.0 + 20.0 * j - 10) <= RADIUS;
    }
    assert_int_equal(dots_within, expect);
    assert_int_equal(view_violations(&obs), 0);
    assert_true(obs.snapshot_n >= expect + 1);

    /* at rest where it joined: exactly the truth */
    view_settle(&obs);
    assert_true(expect_exact(&obs) > 0);

    /* west into root -1,0 (the other worker's), then north-east back across
     * depths 0, 1 and 2; checked after every frame on the way, exactly at
     * every stop */
    const double legs[][3] = {{-40, 0, 2500}, {40, 20, 2000}, {30, -30, 1500}, {-20, 40, 1500}};
    for (size_t l = 0; l < sizeof legs / sizeof legs[0]; l++) {
        assert_int_equal(ts_client_move(obs.c, legs[l][0], legs[l][1]), TS_OK);
        view_pump(&obs, (int64_t)legs[l][2]);
        assert_int_equal(ts_client_move(obs.c, 0, 0), TS_OK);
        view_settle(&obs);
        assert_int_equal(obs.violations, 0);
        expect_exact(&obs);
    }
    /* a registry change near it: root -1,0 (w1's, with dots in it) splits
     * while the observer stands next to it; its dots move into the children
     * and the observer's view follows them */
    ctl_ok(bus, "split", &west);
    ts_cell_t west_kids[4];
    ts_cell_children(&west, west_kids);
    for (int q = 0; q < 4; q++)
        assert_true(wait_active(reg, &west_kids[q], WAIT_MS));
    view_pump(&obs, 2500); /* keyframes of the children */
    assert_int_equal(obs.violations, 0);
    expect_exact(&obs);
    fprintf(stderr, "observer: %zu frames, never an entity beyond radius + hysteresis\n", obs.frames);

    ts_client_destroy(obs.c);
    for (size_t i = 0; i < NDOTS; i++)
        ts_client_destroy(dots[i]);
    ts_bus_sub_destroy(states);
    ts_registry_destroy(reg);
    ts_bus_destroy(bus);
    ts_h_pass();
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    const char *orch_args[] = {"--orch.rebalance=0", NULL}; /* roots x < 0: w1, x >= 0: w2 */
    const char *gw_args[] = {"--aoi.radius=60", "--aoi.hysteresis=10", "--gateway.idle_timeout_s=600", NULL};
    ts_h_spawn_stack(&ts_h, orch_args, NULL, gw_args, &stack);
    ts_bus_t *bus = NULL;
    ts_probe_t *probe = NULL;
    bool ctl_up = false, bound = false;
    if (!ts_h_wait_world(&ts_h, WORLD, 16, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS) ||
        !ts_h_wait_port(ts_h_player_port(stack.gw_port), WAIT_MS) ||
        ts_bus_connect(&bus, ts_h.nats_url, "it_aoi-setup") != TS_OK ||
        ts_probe_create(&probe, bus) != TS_OK ||
        !ts_probe_wait_ready(probe, bus, WORLD, 8, WAIT_MS, &ctl_up, &bound)) {
        fprintf(stderr, "it_aoi: the stack did not become ready (ctl %d, bound %d)\n", ctl_up, bound);
        ts_probe_destroy(probe);
        ts_bus_destroy(bus);
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    return 0;
}

int main(int argc, char **argv)
{
    ts_h_ws_main(argc, argv); /* --ws: the players on WebSocket */
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_aoi_across_depths_and_owners),
    };
    return TS_H_RUN(ts_h_ws ? "it_aoi_ws" : "it_aoi", tests, group_setup, ts_h_group_teardown);
}
