/* Hash map: the values users store come back, survive growth and deletion,
 * and iteration visits every live key exactly once, even while deleting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>

#include "tessera/map.h"

enum { N = 100000 };

/* Distinct non-reserved keys with clustered low bits, like entity ids. */
static uint64_t key_of(size_t i)
{
    return (uint64_t)(i + 1) << 8;
}

static void *val_of(size_t i)
{
    return (void *)(uintptr_t)(i * 2 + 1);
}

static void test_empty(void **state)
{
    ts_map_t m;
    ts_map_init(&m);
    assert_null(ts_map_get(&m, 1));
    assert_null(ts_map_del(&m, 1));
    size_t it = 0;
    uint64_t k;
    void *v;
    assert_false(ts_map_next(&m, &it, &k, &v));
    ts_map_free(&m);
    ts_map_free(&m); /* idempotent */
}

static void test_reserved_keys(void **state)
{
    ts_map_t m;
    ts_map_init(&m);
    int x;
    assert_int_equal(ts_map_put(&m, 0, &x), TS_ERR_INVALID);
    assert_int_equal(ts_map_put(&m, UINT64_MAX, &x), TS_ERR_INVALID);
    assert_int_equal(m.len, 0);
    assert_int_equal(ts_map_put(&m, 1, &x), TS_OK);
    assert_null(ts_map_get(&m, 0));
    assert_null(ts_map_get(&m, UINT64_MAX));
    assert_null(ts_map_del(&m, UINT64_MAX));
    assert_ptr_equal(ts_map_get(&m, 1), &x);
    ts_map_free(&m);
}

static void test_put_get_replace(void **state)
{
    ts_map_t m;
    ts_map_init(&m);
    int a, b;
    assert_int_equal(ts_map_put(&m, 42, &a), TS_OK);
    assert_int_equal(ts_map_put(&m, 42, &b), TS_OK);
    assert_int_equal(m.len, 1);
    assert_ptr_equal(ts_map_get(&m, 42), &b);
    assert_int_equal(ts_map_put(&m, UINT64_MAX - 1, &a), TS_OK);
    assert_ptr_equal(ts_map_get(&m, UINT64_MAX - 1), &a);
    /* NULL values are storable (get cannot tell them from absent) */
    assert_int_equal(ts_map_put(&m, 7, NULL), TS_OK);
    assert_int_equal(m.len, 3);
    ts_map_free(&m);
}

static void test_many_keys(void **state)
{
    ts_map_t m;
    ts_map_init(&m);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(ts_map_put(&m, key_of(i), val_of(i)), TS_OK);
    assert_int_equal(m.len, N);
    assert_true((m.cap & (m.cap - 1)) == 0);
    for (size_t i = 0; i < N; i++)
        assert_ptr_equal(ts_map_get(&m, key_of(i)), val_of(i));
    assert_null(ts_map_get(&m, key_of(N)));
    assert_null(ts_map_get(&m, 3));

    /* delete the odd ones */
    for (size_t i = 1; i < N; i += 2)
        assert_ptr_equal(ts_map_del(&m, key_of(i)), val_of(i));
    assert_int_equal(m.len, N / 2);
    for (size_t i = 0; i < N; i++) {
        if (i % 2)
            assert_null(ts_map_get(&m, key_of(i)));
        else
            assert_ptr_equal(ts_map_get(&m, key_of(i)), val_of(i));
    }
    assert_null(ts_map_del(&m, key_of(1)));

    /* iteration sees each live key exactly once with its value */
    unsigned char *seen = calloc(N, 1);
    assert_non_null(seen);
    size_t count = 0;
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&m, &it, &k, &v);) {
        size_t i = (size_t)(k >> 8) - 1;
        assert_true(i < N);
        assert_int_equal(i % 2, 0);
        assert_false(seen[i]);
        seen[i] = 1;
        assert_ptr_equal(v, val_of(i));
        count++;
    }
    assert_int_equal(count, N / 2);
    free(seen);
    ts_map_free(&m);
}

static void test_churn_keeps_table_bounded(void **state)
{
    /* insert/delete cycles leave tombstones; the table must not grow
     * without bound, and lookups must still terminate */
    ts_map_t m;
    ts_map_init(&m);
    for (size_t round = 0; round < 50; round++) {
        for (size_t i = 0; i < 1000; i++)
            assert_int_equal(ts_map_put(&m, key_of(round * 1000 + i), val_of(i)), TS_OK);
        for (size_t i = 0; i < 1000; i++)
            assert_ptr_equal(ts_map_del(&m, key_of(round * 1000 + i)), val_of(i));
    }
    assert_int_equal(m.len, 0);
    assert_true(m.cap <= 8192);
    assert_null(ts_map_get(&m, key_of(123456789)));
    ts_map_free(&m);
}

static void test_delete_during_iteration(void **state)
{
    ts_map_t m;
    ts_map_init(&m);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(ts_map_put(&m, key_of(i), val_of(i)), TS_OK);
    /* delete every visited key whose index is a multiple of 3 */
    unsigned char *seen = calloc(N, 1);
    assert_non_null(seen);
    size_t visited = 0;
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&m, &it, &k, &v);) {
        size_t i = (size_t)(k >> 8) - 1;
        assert_false(seen[i]);
        seen[i] = 1;
        visited++;
        if (i % 3 == 0) assert_ptr_equal(ts_map_del(&m, k), val_of(i));
    }
    assert_int_equal(visited, N);
    size_t left = N - (N + 2) / 3;
    assert_int_equal(m.len, left);
    for (size_t i = 0; i < N; i++) {
        if (i % 3 == 0)
            assert_null(ts_map_get(&m, key_of(i)));
        else
            assert_ptr_equal(ts_map_get(&m, key_of(i)), val_of(i));
    }
    /* delete everything while iterating */
    size_t removed = 0;
    for (size_t it = 0; ts_map_next(&m, &it, &k, &v);) {
        assert_non_null(ts_map_del(&m, k));
        removed++;
    }
    assert_int_equal(removed, left);
    assert_int_equal(m.len, 0);
    size_t it = 0;
    assert_false(ts_map_next(&m, &it, &k, &v));
    free(seen);
    ts_map_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_reserved_keys),
        cmocka_unit_test(test_put_get_replace),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_churn_keeps_table_bounded),
        cmocka_unit_test(test_delete_during_iteration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
