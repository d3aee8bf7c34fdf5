/* Load balancing policy (services/orch/balance.c): the load formula, where
 * recovered or drained cells go, and the rebalancer's decisions — it moves
 * cells from hot to cold workers until the load is even, then stays still;
 * an idle cluster never moves; a new worker gets a first cell; a worker's
 * last cell and moves that do not lower the max load are never proposed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "balance.h"

#define MAXC 64
#define SEC 1000000ULL

typedef struct {
    ts_balance_worker_t w[8];
    size_t nw;
    ts_balance_cell_t c[MAXC];
    size_t nc;
    ts_balance_view_t v;
} cluster_t;

static void add_worker(cluster_t *k, const char *id, double p99)
{
    ts_balance_worker_t *w = &k->w[k->nw++];
    memset(w, 0, sizeof *w);
    snprintf(w->id, sizeof w->id, "%s", id);
    w->eligible = true;
    w->tick_p99_ms = p99;
}

/* A width x height grid of root cells from (0, 0); owner[cy][cx]. */
static void grid(cluster_t *k, int width, int height, const int *owner, double entities)
{
    k->nc = 0;
    for (int cy = 0; cy < height; cy++) {
        for (int cx = 0; cx < width; cx++) {
            ts_balance_cell_t *c = &k->c[k->nc++];
            memset(c, 0, sizeof *c);
            c->cell = (ts_cell_t){.world = 0, .cx = cx, .cy = cy};
            c->owner = owner[cy * width + cx];
            c->entities = entities;
            c->inputs_per_s = entities * 5;
        }
    }
}

static void view(cluster_t *k)
{
    assert_int_equal(ts_balance_view_init(&k->v, k->w, k->nw, k->c, k->nc, 50.0), TS_OK);
}

static size_t owned(const cluster_t *k, int w)
{
    size_t n = 0;
    for (size_t i = 0; i < k->nc; i++)
        n += k->c[i].owner == w;
    return n;
}

static bool touches(const cluster_t *k, size_t i, int w)
{
    for (size_t j = 0; j < k->nc; j++) {
        if (k->c[j].owner != w) continue;
        int dx = k->c[j].cell.cx - k->c[i].cell.cx, dy = k->c[j].cell.cy - k->c[i].cell.cy;
        if (abs(dx) + abs(dy) == 1) return true;
    }
    return false;
}

static void test_load_formula(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "a", 25.0); /* half the 50 ms budget */
    add_worker(&k, "b", 0.0);
    int owner[4] = {0, 0, 0, 1};
    grid(&k, 4, 1, owner, 100);
    view(&k);
    /* entities 300 vs 100 (mean 200), inputs 1500 vs 500 (mean 1000) */
    assert_true(fabs(k.w[0].load - (0.5 * 1.5 + 0.3 * 1.5 + 0.2 * 0.5)) < 1e-9);
    assert_true(fabs(k.w[1].load - (0.5 * 0.5 + 0.3 * 0.5)) < 1e-9);
    assert_true(fabs(k.v.mean_load - (k.w[0].load + k.w[1].load) / 2) < 1e-9);
    assert_int_equal(k.w[0].ncells, 3);
    /* a cell carries its share of the owner's tick term */
    assert_true(fabs(ts_balance_cell_load(&k.v, 0) - (0.5 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 / 3)) < 1e-9);
    /* the cells of a worker add up to its load */
    double sum = 0;
    for (size_t i = 0; i < 3; i++)
        sum += ts_balance_cell_load(&k.v, i);
    assert_true(fabs(sum - k.w[0].load) < 1e-9);
    ts_balance_view_free(&k.v);

    /* a term whose mean is 0 counts 0: an idle cluster has load 0 everywhere */
    grid(&k, 4, 1, owner, 0);
    k.w[0].tick_p99_ms = k.w[1].tick_p99_ms = 0;
    view(&k);
    assert_true(k.w[0].load == 0 && k.w[1].load == 0 && k.v.mean_load == 0);
    ts_balance_view_free(&k.v);
}

static void test_target_least_loaded_neighbour_first(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "dead", 0);
    add_worker(&k, "busy", 0);
    add_worker(&k, "idle1", 0);
    add_worker(&k, "idle2", 0);
    k.w[0].eligible = false;
    /* row 0: dead dead idle2 ; row 1: busy busy idle1 */
    int owner[6] = {0, 0, 3, 1, 1, 2};
    grid(&k, 3, 2, owner, 0);
    k.c[3].entities = k.c[4].entities = 50; /* busy carries all the load */
    view(&k);
    /* cell (1,0) of the dead worker touches idle2 (edge) and idle1 (diagonal): both
     * idle and equally loaded, one cell each -> the smaller id among neighbours */
    int t = ts_balance_target(&k.v, 1, 0);
    assert_true(t == 2 || t == 3);
    assert_string_equal(k.w[t].id, "idle1");
    /* cell (0,0) touches only busy and dead: the idle ones are still less loaded */
    t = ts_balance_target(&k.v, 0, 0);
    assert_true(t == 2 || t == 3);
    ts_balance_assign(&k.v, 0, t);
    assert_int_equal(k.w[t].ncells, 2);
    assert_int_equal(k.c[0].owner, t);
    /* the next one goes to the other idle worker (fewer cells) */
    int t2 = ts_balance_target(&k.v, 1, 0);
    assert_true(t2 != t && (t2 == 2 || t2 == 3));
    /* nobody eligible: -1 */
    for (size_t i = 1; i < k.nw; i++)
        k.w[i].eligible = false;
    assert_int_equal(ts_balance_target(&k.v, 1, 0), -1);
    ts_balance_view_free(&k.v);
}

static ts_balance_cfg_t cfg(int hysteresis, uint64_t cooldown_us)
{
    return (ts_balance_cfg_t){.threshold = 0.25, .hysteresis = hysteresis, .cooldown_us = cooldown_us};
}

static void test_idle_cluster_never_moves(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "w1", 0.4);
    add_worker(&k, "w2", 3.0); /* a noisy tick p99 alone is no reason to move */
    int owner[16];
    for (int i = 0; i < 16; i++)
        owner[i] = (i % 4) < 2 ? 0 : 1;
    grid(&k, 4, 4, owner, 0);
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(1, 0);
    ts_balance_init(&b, &c);
    for (int i = 0; i < 100; i++) {
        view(&k);
        ts_balance_move_t m;
        ts_balance_eval(&b, &k.v, (uint64_t)(i + 1) * SEC, &m);
        assert_int_equal(m.kind, TS_BALANCE_NONE);
        ts_balance_view_free(&k.v);
    }
}

static void test_empty_worker_gets_a_cell(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "w1", 0);
    add_worker(&k, "w3", 0);
    int owner[16] = {0};
    grid(&k, 4, 4, owner, 0); /* idle: only the empty-worker rule can move */
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(3, 10 * SEC);
    ts_balance_init(&b, &c);
    view(&k);
    ts_balance_move_t m;
    ts_balance_eval(&b, &k.v, 100 * SEC, &m);
    assert_int_equal(m.kind, TS_BALANCE_EMPTY);
    assert_int_equal(m.from, 0);
    assert_int_equal(m.to, 1);
    assert_int_equal(k.c[m.cell].owner, 0);
    ts_balance_moved(&b, 100 * SEC);
    ts_balance_view_free(&k.v);
    k.c[m.cell].owner = m.to;

    /* the cooldown applies to it too */
    cluster_t k2 = k;
    add_worker(&k2, "w4", 0);
    view(&k2);
    ts_balance_eval(&b, &k2.v, 105 * SEC, &m);
    assert_int_equal(m.kind, TS_BALANCE_NONE);
    ts_balance_eval(&b, &k2.v, 111 * SEC, &m);
    assert_int_equal(m.kind, TS_BALANCE_EMPTY);
    assert_string_equal(k2.w[m.to].id, "w4");
    ts_balance_view_free(&k2.v);

    /* a donor keeps its last cell: one cell each for w1 and w2, w3 empty */
    cluster_t k3 = {0};
    add_worker(&k3, "w1", 0);
    add_worker(&k3, "w2", 0);
    add_worker(&k3, "w3", 0);
    int owner3[2] = {0, 1};
    grid(&k3, 2, 1, owner3, 10);
    ts_balance_init(&b, &c);
    view(&k3);
    ts_balance_eval(&b, &k3.v, 100 * SEC, &m);
    assert_int_equal(m.kind, TS_BALANCE_NONE);
    ts_balance_view_free(&k3.v);
}

static void test_hysteresis_then_adjacent_improving_move(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "hot", 0);
    add_worker(&k, "cold", 0);
    /* 4x4, cold owns the right column only */
    int owner[16];
    for (int i = 0; i < 16; i++)
        owner[i] = (i % 4) == 3 ? 1 : 0;
    grid(&k, 4, 4, owner, 25);
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(3, 0);
    ts_balance_init(&b, &c);
    ts_balance_move_t m;
    for (int i = 0; i < 2; i++) {
        view(&k);
        ts_balance_eval(&b, &k.v, (uint64_t)(i + 1) * SEC, &m);
        assert_int_equal(m.kind, TS_BALANCE_NONE); /* not yet: hysteresis */
        ts_balance_view_free(&k.v);
    }
    view(&k);
    ts_balance_eval(&b, &k.v, 3 * SEC, &m);
    assert_int_equal(m.kind, TS_BALANCE_LOAD);
    assert_int_equal(m.from, 0);
    assert_int_equal(m.to, 1);
    assert_true(m.adjacent);
    assert_int_equal(k.c[m.cell].cell.cx, 2); /* next to the cold column */
    assert_true(touches(&k, m.cell, 1));
    assert_true(fmax(m.from_load - m.cell_load, m.to_load + m.cell_load) < fmax(m.from_load, m.to_load));
    ts_balance_view_free(&k.v);
}

static void test_only_moves_that_lower_the_max(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "hot", 0);
    add_worker(&k, "cold", 0);
    int owner[3] = {0, 0, 1};
    grid(&k, 3, 1, owner, 0);
    k.c[0].entities = 90; /* moving it would make cold the new, hotter max */
    k.c[1].entities = 10;
    k.c[2].entities = 20;
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(1, 0);
    ts_balance_init(&b, &c);
    view(&k);
    ts_balance_move_t m;
    ts_balance_eval(&b, &k.v, SEC, &m);
    assert_int_equal(m.kind, TS_BALANCE_LOAD);
    assert_int_equal(m.cell, 1);
    ts_balance_view_free(&k.v);

    /* a single heavy cell on the hot worker: never moved (its last cell) */
    int owner2[2] = {0, 1};
    grid(&k, 2, 1, owner2, 0);
    k.c[0].entities = 500;
    k.c[1].entities = 1;
    view(&k);
    for (int i = 0; i < 5; i++) {
        ts_balance_eval(&b, &k.v, (uint64_t)(i + 2) * SEC, &m);
        assert_int_equal(m.kind, TS_BALANCE_NONE);
    }
    ts_balance_view_free(&k.v);
}

static void test_draining_and_dead_workers_left_out(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "a", 0);
    add_worker(&k, "b", 0);
    add_worker(&k, "draining", 0);
    k.w[2].eligible = false;
    int owner[8] = {0, 0, 0, 1, 2, 2, 2, 2};
    grid(&k, 8, 1, owner, 30);
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(1, 0);
    ts_balance_init(&b, &c);
    for (int i = 0; i < 10; i++) {
        view(&k);
        ts_balance_move_t m;
        ts_balance_eval(&b, &k.v, (uint64_t)(i + 1) * SEC, &m);
        if (m.kind != TS_BALANCE_NONE) {
            assert_int_not_equal(m.from, 2);
            assert_int_not_equal(m.to, 2);
            k.c[m.cell].owner = m.to;
            ts_balance_moved(&b, (uint64_t)(i + 1) * SEC);
        }
        ts_balance_view_free(&k.v);
    }
    assert_int_equal(owned(&k, 2), 4);
    assert_int_equal(owned(&k, 0), 2);
    assert_int_equal(owned(&k, 1), 2);
}

/* A new worker joins a cluster where one worker owns all 16 cells with
 * uneven load: it converges, ends within the band, and then never moves. */
static void test_converges_then_stays_still(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "w1", 0);
    add_worker(&k, "w3", 0);
    int owner[16] = {0};
    grid(&k, 4, 4, owner, 0);
    for (size_t i = 0; i < k.nc; i++) {
        bool inner = k.c[i].cell.cx >= 1 && k.c[i].cell.cx <= 2 && k.c[i].cell.cy >= 1 && k.c[i].cell.cy <= 2;
        k.c[i].entities = inner ? 44 : 19;
        k.c[i].inputs_per_s = k.c[i].entities * 5;
    }
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(2, 3 * SEC);
    ts_balance_init(&b, &c);
    int moves = 0, last_move = 0;
    for (int t = 1; t <= 400; t++) {
        view(&k);
        ts_balance_move_t m;
        uint64_t now = (uint64_t)t * SEC / 2;
        ts_balance_eval(&b, &k.v, now, &m);
        if (m.kind != TS_BALANCE_NONE) {
            assert_true(owned(&k, m.from) >= 2);
            k.c[m.cell].owner = m.to;
            ts_balance_moved(&b, now);
            moves++;
            last_move = t;
        }
        ts_balance_view_free(&k.v);
    }
    assert_true(moves >= 4 && moves <= 10);
    assert_true(last_move < 100); /* settled within the first 50 s, then 150 s of stillness */
    assert_true(owned(&k, 1) >= 4);
    view(&k);
    double e0 = k.w[0].entities, e1 = k.w[1].entities;
    assert_true(fmax(e0, e1) / fmin(e0, e1) < 1.5);
    assert_true(k.w[0].load <= 1.125 * k.v.mean_load + 1e-9 && k.w[1].load <= 1.125 * k.v.mean_load + 1e-9);
    ts_balance_view_free(&k.v);
}

/* ---- plans: moves in proportion to the imbalance ---------------------------------- */

/* Load of the hottest eligible worker over the mean, after a view init. */
static double hot_over_mean(cluster_t *k)
{
    view(k);
    double hot = 0;
    for (size_t i = 0; i < k->nw; i++)
        if (k->w[i].eligible && k->w[i].load > hot) hot = k->w[i].load;
    double r = hot / k->v.mean_load;
    ts_balance_view_free(&k->v);
    return r;
}

static size_t plan(cluster_t *k, ts_balance_t *b, uint64_t now, ts_balance_move_t *moves, size_t max)
{
    view(k);
    ts_balance_move_t none;
    size_t n = ts_balance_plan(b, &k->v, now, moves, max, &none);
    ts_balance_view_free(&k->v);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(k->c[moves[i].cell].owner, moves[i].to); /* the plan applied it to the view */
        assert_true(moves[i].from != moves[i].to);
    }
    if (n > 0) ts_balance_moved(b, now);
    return n;
}

/* A storm left every cell on w1; w2 joins: one plan evens it out (its
 * first cell, then load moves without waiting for the hysteresis), and the
 * next evaluations move nothing. */
static void test_plan_evens_a_storm_at_once(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "w1", 0);
    add_worker(&k, "w2", 0);
    int owner[16] = {0};
    grid(&k, 4, 4, owner, 25);
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(3, 10 * SEC);
    ts_balance_init(&b, &c);
    ts_balance_move_t moves[16];
    size_t n = plan(&k, &b, 100 * SEC, moves, 16);
    assert_int_equal(moves[0].kind, TS_BALANCE_EMPTY);
    for (size_t i = 1; i < n; i++)
        assert_int_equal(moves[i].kind, TS_BALANCE_LOAD);
    /* about half the cells moved, in one plan */
    assert_true(n >= 6 && n <= 8);
    assert_true(owned(&k, 1) == n);
    assert_true(hot_over_mean(&k) <= 1 + 0.25 / 2 + 1e-9);
    /* settled: nothing moves after the cooldown either */
    for (int i = 0; i < 20; i++)
        assert_int_equal(plan(&k, &b, (uint64_t)(111 + i) * SEC, moves, 16), 0);
}

/* The plan is bounded by max_moves; the rest follows in later plans. */
static void test_plan_is_bounded_and_proportional(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "w1", 0);
    add_worker(&k, "w2", 0);
    add_worker(&k, "w3", 0);
    add_worker(&k, "w4", 0);
    int owner[64];
    for (int i = 0; i < 64; i++)
        owner[i] = i < 40 ? 0 : 1 + (i - 40) % 3; /* w1 40 cells, the others 8 each */
    grid(&k, 8, 8, owner, 10);
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(1, 0);
    ts_balance_init(&b, &c);
    ts_balance_move_t moves[64];
    size_t n = plan(&k, &b, 1 * SEC, moves, 8);
    assert_int_equal(n, 8); /* 24 cells should move; 8 at most per plan */
    for (size_t i = 0; i < n; i++)
        assert_int_equal(moves[i].from, 0);
    size_t total = n;
    for (int i = 2; i < 10 && (n = plan(&k, &b, (uint64_t)i * SEC, moves, 8)) > 0; i++)
        total += n;
    assert_true(total >= 22 && total <= 26);
    assert_true(hot_over_mean(&k) <= 1 + 0.25 / 2 + 1e-9);
    assert_int_equal(plan(&k, &b, 20 * SEC, moves, 8), 0);

    /* a smaller imbalance moves fewer cells */
    cluster_t k2 = {0};
    add_worker(&k2, "w1", 0);
    add_worker(&k2, "w2", 0);
    int owner2[16];
    for (int i = 0; i < 16; i++)
        owner2[i] = i < 11 ? 0 : 1; /* loads 1.1 vs 0.5: two cells bring it inside the band */
    grid(&k2, 4, 4, owner2, 10);
    ts_balance_init(&b, &c);
    assert_int_equal(plan(&k2, &b, 1 * SEC, moves, 8), 2);
}

static void test_plan_idle_or_balanced_never_moves(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "w1", 0.4);
    add_worker(&k, "w2", 3.0);
    int owner[16];
    for (int i = 0; i < 16; i++)
        owner[i] = (i % 4) < 2 ? 0 : 1;
    grid(&k, 4, 4, owner, 0);
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(1, 0);
    ts_balance_init(&b, &c);
    ts_balance_move_t moves[8];
    for (int i = 0; i < 50; i++)
        assert_int_equal(plan(&k, &b, (uint64_t)(i + 1) * SEC, moves, 8), 0);
    grid(&k, 4, 4, owner, 30); /* busy but even */
    for (int i = 0; i < 50; i++)
        assert_int_equal(plan(&k, &b, (uint64_t)(i + 100) * SEC, moves, 8), 0);
}

/* Slow is not dead: an overloaded worker sheds cells at once, even when its
 * entity count is even with the others; one that is not overloaded does
 * not. */
static void test_plan_overloaded_worker_sheds(void **state)
{
    cluster_t k = {0};
    add_worker(&k, "slow", 80); /* tick p99 80 ms on a 50 ms budget */
    add_worker(&k, "ok", 5);
    k.w[0].overloaded = true;
    int owner[16];
    for (int i = 0; i < 16; i++)
        owner[i] = (i % 4) < 2 ? 0 : 1;
    grid(&k, 4, 4, owner, 20);
    ts_balance_t b;
    ts_balance_cfg_t c = cfg(3, 0);
    ts_balance_init(&b, &c);
    ts_balance_move_t moves[8];
    size_t n = plan(&k, &b, 1 * SEC, moves, 8);
    assert_true(n >= 1);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(moves[i].from, 0);
        assert_int_equal(moves[i].to, 1);
    }
    assert_true(owned(&k, 0) < 8 && owned(&k, 0) >= 1);

    /* both overloaded: nobody to shed to */
    cluster_t k2 = {0};
    add_worker(&k2, "a", 80);
    add_worker(&k2, "b", 80);
    k2.w[0].overloaded = k2.w[1].overloaded = true;
    grid(&k2, 4, 4, owner, 20);
    ts_balance_init(&b, &c);
    assert_int_equal(plan(&k2, &b, 1 * SEC, moves, 8), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_formula),
        cmocka_unit_test(test_target_least_loaded_neighbour_first),
        cmocka_unit_test(test_idle_cluster_never_moves),
        cmocka_unit_test(test_empty_worker_gets_a_cell),
        cmocka_unit_test(test_hysteresis_then_adjacent_improving_move),
        cmocka_unit_test(test_only_moves_that_lower_the_max),
        cmocka_unit_test(test_draining_and_dead_workers_left_out),
        cmocka_unit_test(test_converges_then_stays_still),
        cmocka_unit_test(test_plan_evens_a_storm_at_once),
        cmocka_unit_test(test_plan_is_bounded_and_proportional),
        cmocka_unit_test(test_plan_idle_or_balanced_never_moves),
        cmocka_unit_test(test_plan_overloaded_worker_sheds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
