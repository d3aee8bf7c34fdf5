/* Cell tree: on random quadtrees (negative coordinates, depths 0..5, split
 * and merged-back cells), locate and the circle and neighbour queries give
 * exactly what a brute-force scan of every live cell gives; late changes
 * with older epochs are ignored. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/celltree.h"

#define SIZE 64.0
#define MAXE 20000

typedef struct {
    ts_cell_entry_t e[MAXE];
    size_t n;
} list_t;

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double frand(double lo, double hi)
{
    return lo + (hi - lo) * (double)(rnd() >> 11) / 9007199254740992.0;
}

/* Every change of a cell comes with the next epoch of that cell. */
static void put(ts_celltree_t *t, list_t *l, const ts_cell_t *c, ts_cell_state_t st)
{
    ts_cell_entry_t e = {.cell = *c, .epoch = 1, .state = st};
    strcpy(e.owner, (rnd() & 1) ? "w1" : "w2");
    for (size_t i = 0; i < l->n; i++) {
        if (ts_cell_eq(&l->e[i].cell, c)) {
            e.epoch = l->e[i].epoch + 1;
            assert_true(ts_celltree_apply(t, &e));
            l->e[i] = e;
            return;
        }
    }
    assert_true(ts_celltree_apply(t, &e));
    assert_true(l->n < MAXE);
    l->e[l->n++] = e;
}

/* Splits c recursively at random; some subtrees are merged back afterwards
 * (children retired, parent active again). */
static void grow(ts_celltree_t *t, list_t *l, const ts_cell_t *c, int budget)
{
    if (c->depth >= 5 || budget <= 0 || rnd() % 3 == 0) return;
    ts_cell_t kids[4];
    assert_int_equal(ts_cell_children(c, kids), TS_OK);
    put(t, l, c, TS_CELL_SPLIT);
    for (int q = 0; q < 4; q++) {
        put(t, l, &kids[q], (rnd() % 5 == 0) ? TS_CELL_HANDOVER : TS_CELL_ACTIVE);
        grow(t, l, &kids[q], budget - 1);
    }
    if (rnd() % 6 == 0) { /* merged back: the whole subtree below c retires */
        for (size_t i = 0; i < l->n; i++) {
            if (!ts_cell_eq(&l->e[i].cell, c) && ts_cell_contains(c, &l->e[i].cell))
                put(t, l, &l->e[i].cell, TS_CELL_RETIRED);
        }
        put(t, l, c, TS_CELL_ACTIVE);
    }
}

static void build(ts_celltree_t **t, list_t *l)
{
    assert_int_equal(ts_celltree_new(t, 7, SIZE), TS_OK);
    l->n = 0;
    for (int cy = -3; cy <= 2; cy++) {
        for (int cx = -3; cx <= 2; cx++) {
            ts_cell_t root = {.world = 7, .cx = cx, .cy = cy};
            put(*t, l, &root, TS_CELL_ACTIVE);
            grow(*t, l, &root, 5);
        }
    }
    assert_int_equal(ts_celltree_len(*t), l->n);
}

static bool live(const ts_cell_entry_t *e)
{
    return e->state == TS_CELL_ACTIVE || e->state == TS_CELL_HANDOVER;
}

typedef struct {
    ts_cell_t got[MAXE];
    size_t n;
} seen_t;

static void collect(void *ud, const ts_cell_entry_t *e)
{
    seen_t *s = ud;
    for (size_t i = 0; i < s->n; i++)
        assert_false(ts_cell_eq(&s->got[i], &e->cell)); /* once each */
    s->got[s->n++] = e->cell;
}

static bool seen_has(const seen_t *s, const ts_cell_t *c)
{
    for (size_t i = 0; i < s->n; i++)
        if (ts_cell_eq(&s->got[i], c)) return true;
    return false;
}

static list_t L;
static seen_t S;

static void test_live_cells_tile_and_locate(void **state)
{
    (void)state;
    ts_celltree_t *t;
    build(&t, &L);
    for (int i = 0; i < 20000; i++) {
        double x = frand(-3 * SIZE, 3 * SIZE), y = frand(-3 * SIZE, 3 * SIZE);
        const ts_cell_entry_t *want = NULL;
        for (size_t k = 0; k < L.n; k++) {
            if (!live(&L.e[k]) || !ts_cell_has_pos(&L.e[k].cell, SIZE, x, y)) continue;
            assert_null(want); /* live cells never overlap */
            want = &L.e[k];
        }
        assert_non_null(want); /* and cover the world */
        const ts_cell_entry_t *got = ts_celltree_locate(t, x, y);
        assert_non_null(got);
        assert_true(ts_cell_eq(&got->cell, &want->cell));
    }
    /* outside the roots the registry holds */
    assert_null(ts_celltree_locate(t, 10 * SIZE, 0));
    assert_null(ts_celltree_locate(t, NAN, 0));
    ts_celltree_free(t);
}

static bool circle_hits(const ts_cell_t *c, double x, double y, double r)
{
    double x0, y0, x1, y1;
    ts_cell_bounds(c, SIZE, &x0, &y0, &x1, &y1);
    double dx = fmax(fmax(x0 - x, 0), x - x1), dy = fmax(fmax(y0 - y, 0), y - y1);
    return dx * dx + dy * dy <= r * r;
}

static void test_queries_match_brute_force(void **state)
{
    (void)state;
    ts_celltree_t *t;
    build(&t, &L);
    for (int i = 0; i < 300; i++) {
        double x = frand(-4 * SIZE, 4 * SIZE), y = frand(-4 * SIZE, 4 * SIZE), r = frand(0, 1.5 * SIZE);
        S.n = 0;
        size_t n = ts_celltree_query_circle(t, x, y, r, collect, &S);
        assert_int_equal(n, S.n);
        size_t want = 0;
        for (size_t k = 0; k < L.n; k++) {
            if (!live(&L.e[k]) || !circle_hits(&L.e[k].cell, x, y, r)) continue;
            want++;
            assert_true(seen_has(&S, &L.e[k].cell));
        }
        assert_int_equal(S.n, want);
    }
    /* neighbours of every cell, any state, margins 0 and 3 */
    for (size_t k = 0; k < L.n; k++) {
        for (int m = 0; m < 2; m++) {
            double margin = m ? 3.0 : 0.0;
            const ts_cell_t *c = &L.e[k].cell;
            double cx0, cy0, cx1, cy1;
            ts_cell_bounds(c, SIZE, &cx0, &cy0, &cx1, &cy1);
            S.n = 0;
            ts_celltree_neighbors(t, c, margin, collect, &S);
            size_t want = 0;
            for (size_t j = 0; j < L.n; j++) {
                const ts_cell_t *o = &L.e[j].cell;
                if (!live(&L.e[j]) || ts_cell_contains(c, o) || ts_cell_contains(o, c)) continue;
                double x0, y0, x1, y1;
                ts_cell_bounds(o, SIZE, &x0, &y0, &x1, &y1);
                if (!(x0 <= cx1 + margin && cx0 - margin <= x1 && y0 <= cy1 + margin && cy0 - margin <= y1))
                    continue;
                want++;
                assert_true(seen_has(&S, o));
            }
            assert_int_equal(S.n, want);
        }
    }
    ts_celltree_free(t);
}

static void test_neighbors_across_depths(void **state)
{
    (void)state;
    ts_celltree_t *t;
    assert_int_equal(ts_celltree_new(&t, 0, 10.0), TS_OK);
    /* roots (-1,0) and (0,0); (0,0) split once, its SW child split again */
    ts_cell_entry_t e = {.cell = {.world = 0, .cx = -1, .cy = 0}, .epoch = 1, .state = TS_CELL_ACTIVE};
    ts_celltree_apply(t, &e);
    ts_cell_t root = {.world = 0, .cx = 0, .cy = 0}, kids[4], grand[4];
    e = (ts_cell_entry_t){.cell = root, .epoch = 2, .state = TS_CELL_SPLIT};
    ts_celltree_apply(t, &e);
    ts_cell_children(&root, kids);
    for (int q = 0; q < 4; q++) {
        e = (ts_cell_entry_t){
            .cell = kids[q], .epoch = 3, .state = q == TS_QUAD_SW ? TS_CELL_SPLIT : TS_CELL_ACTIVE};
        ts_celltree_apply(t, &e);
    }
    ts_cell_children(&kids[TS_QUAD_SW], grand);
    for (int q = 0; q < 4; q++) {
        e = (ts_cell_entry_t){.cell = grand[q], .epoch = 4, .state = TS_CELL_ACTIVE};
        ts_celltree_apply(t, &e);
    }
    /* the west root touches the SW grandchildren on the left (SW, NW) and the
     * NW child: 3 cells with margin 0 */
    ts_cell_t west = {.world = 0, .cx = -1, .cy = 0};
    S.n = 0;
    assert_int_equal(ts_celltree_neighbors(t, &west, 0, collect, &S), 3);
    assert_true(seen_has(&S, &grand[TS_QUAD_SW]));
    assert_true(seen_has(&S, &grand[TS_QUAD_NW]));
    assert_true(seen_has(&S, &kids[TS_QUAD_NW]));
    /* locate at depth 2 */
    const ts_cell_entry_t *at = ts_celltree_locate(t, 1.0, 1.0);
    assert_non_null(at);
    assert_true(ts_cell_eq(&at->cell, &grand[TS_QUAD_SW]));
    /* an older epoch arriving late changes nothing; a newer one does */
    e = (ts_cell_entry_t){.cell = grand[TS_QUAD_SW], .epoch = 3, .state = TS_CELL_RETIRED};
    assert_false(ts_celltree_apply(t, &e));
    assert_int_equal(ts_celltree_get(t, &grand[TS_QUAD_SW])->state, TS_CELL_ACTIVE);
    e.epoch = 5;
    assert_true(ts_celltree_apply(t, &e));
    assert_false(ts_celltree_apply(t, &e));
    assert_null(ts_celltree_locate(t, 1.0, 1.0));
    /* another world is ignored */
    e.cell.world = 1;
    assert_false(ts_celltree_apply(t, &e));
    ts_celltree_clear(t);
    assert_int_equal(ts_celltree_len(t), 0);
    assert_null(ts_celltree_locate(t, 1.0, 1.0));
    ts_celltree_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_cells_tile_and_locate),
        cmocka_unit_test(test_queries_match_brute_force),
        cmocka_unit_test(test_neighbors_across_depths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
