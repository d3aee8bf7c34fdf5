/* Cell map: every cell of a large mixed set (negative coordinates, several
 * depths and quadrants, two worlds) is found, replaced and removed, and no
 * cell finds another's value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>

#include "tessera/cellmap.h"

static ts_cell_t cell_of(int i)
{
    ts_cell_t c = {
        .world = (uint32_t)(i % 2), .cx = i % 97 - 48, .cy = i / 97 - 20, .depth = (uint8_t)(i % 3)};
    c.sub = c.depth ? (uint64_t)(i % (1 << (2 * c.depth))) : 0;
    return c;
}

static void test_put_get_del(void **state)
{
    enum { N = 20000 };
    ts_cellmap_t m;
    ts_cellmap_init(&m);
    int *vals = calloc(N, sizeof(*vals));
    for (int i = 0; i < N; i++) {
        ts_cell_t c = cell_of(i);
        if (ts_cellmap_get(&m, &c)) continue; /* cell_of repeats some cells */
        vals[i] = i + 1;
        assert_int_equal(ts_cellmap_put(&m, &c, &vals[i]), TS_OK);
    }
    size_t distinct = m.len;
    assert_true(distinct > 1000);
    for (int i = 0; i < N; i++) {
        ts_cell_t c = cell_of(i);
        int *v = ts_cellmap_get(&m, &c);
        assert_non_null(v);
        ts_cell_t back = cell_of(*v - 1);
        assert_true(ts_cell_eq(&back, &c));
    }
    ts_cell_t absent = {.world = 7, .cx = 1000, .cy = 1000};
    assert_null(ts_cellmap_get(&m, &absent));
    assert_null(ts_cellmap_del(&m, &absent));
    int other = -1;
    ts_cell_t c0 = cell_of(0);
    assert_int_equal(ts_cellmap_put(&m, &c0, &other), TS_OK); /* replace */
    assert_int_equal(m.len, distinct);
    assert_ptr_equal(ts_cellmap_get(&m, &c0), &other);
    for (int i = 0; i < N; i++) {
        ts_cell_t c = cell_of(i);
        void *v = ts_cellmap_get(&m, &c);
        if (v) assert_ptr_equal(ts_cellmap_del(&m, &c), v);
        assert_null(ts_cellmap_get(&m, &c));
    }
    assert_int_equal(m.len, 0);
    assert_int_equal(ts_cellmap_put(&m, &c0, NULL), TS_ERR_INVALID);
    ts_cellmap_free(&m);
    ts_cellmap_init(&m);
    for (int i = 0; i < 100; i++) {
        ts_cell_t c = {.world = 1, .cx = i};
        int *v = malloc(sizeof(*v));
        *v = i;
        assert_int_equal(ts_cellmap_put(&m, &c, v), TS_OK);
    }
    ts_cellmap_clear(&m, free); /* frees every value (ASan checks) */
    assert_int_equal(m.len, 0);
    ts_cell_t c5 = {.world = 1, .cx = 5};
    assert_null(ts_cellmap_get(&m, &c5));
    ts_cellmap_free(&m);
    free(vals);
}

static void test_hash_never_reserved(void **state)
{
    for (int i = 0; i < 100000; i++) {
        ts_cell_t c = cell_of(i);
        uint64_t h = ts_cell_hash(&c);
        assert_true(h != 0 && h != UINT64_MAX);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_hash_never_reserved),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
