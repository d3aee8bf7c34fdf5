/* The gateway mode's latency bookkeeping: percentiles a reader can trust
 * (exact for small values, within 1/64 of the value above), and a send-time
 * ring that times each Move exactly once, when the first state shows it
 * applied, and says how many it could not time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "latency.h"

static ts_lat_hist_t *hist_new(void)
{
    ts_lat_hist_t *h = malloc(sizeof *h);
    assert_non_null(h);
    ts_lat_hist_reset(h);
    return h;
}

static void test_buckets_are_ordered_and_tight(void **state)
{
    (void)state;
    unsigned prev = 0;
    for (uint64_t v = 0; v < (1ull << 20); v++) {
        unsigned b = ts_lat_bucket(v);
        assert_true(b >= prev);
        assert_true(b < TS_LAT_BUCKETS);
        uint64_t top = ts_lat_bucket_top(b);
        assert_true(top >= v);
        /* the bucket's top is within 1/64 of any value in it */
        assert_true(top - v <= v / 64);
        if (v < 128) assert_int_equal(top, v);
        prev = b;
    }
    /* huge values land in the last bucket instead of out of range */
    assert_int_equal(ts_lat_bucket(UINT64_MAX), TS_LAT_BUCKETS - 1);
    assert_int_equal(ts_lat_bucket(1ull << 40), ts_lat_bucket((1ull << 40) + 1));
}

static void test_quantiles(void **state)
{
    (void)state;
    ts_lat_hist_t *h = hist_new();
    assert_int_equal(ts_lat_hist_quantile(h, 0.5), 0);
    /* 1..100 us: exact buckets */
    for (uint64_t v = 1; v <= 100; v++)
        ts_lat_hist_record(h, v);
    assert_int_equal(h->n, 100);
    assert_int_equal(ts_lat_hist_quantile(h, 0.50), 50);
    assert_int_equal(ts_lat_hist_quantile(h, 0.99), 99);
    assert_int_equal(ts_lat_hist_quantile(h, 0.999), 100);
    assert_int_equal(ts_lat_hist_quantile(h, 1.0), 100);
    assert_int_equal(ts_lat_hist_quantile(h, 0.001), 1);

    /* 9,995 samples of 20 ms and 5 of 300 ms: p99 and p999 are 20 ms (within
     * the bucket), p9999 is 300 ms */
    ts_lat_hist_reset(h);
    for (int i = 0; i < 9995; i++)
        ts_lat_hist_record(h, 20000);
    for (int i = 0; i < 5; i++)
        ts_lat_hist_record(h, 300000);
    uint64_t p99 = ts_lat_hist_quantile(h, 0.99), p999 = ts_lat_hist_quantile(h, 0.999);
    assert_true(p99 >= 20000 && p99 <= 20000 + 20000 / 64);
    assert_true(p999 >= 20000 && p999 <= 20000 + 20000 / 64);
    assert_int_equal(ts_lat_hist_quantile(h, 0.9999), 300000); /* capped at the largest sample */
    assert_int_equal(h->max_us, 300000);
    free(h);
}

static void test_merge_adds_samples(void **state)
{
    (void)state;
    ts_lat_hist_t *a = hist_new(), *b = hist_new();
    for (int i = 0; i < 50; i++)
        ts_lat_hist_record(a, 10);
    for (int i = 0; i < 50; i++)
        ts_lat_hist_record(b, 90);
    ts_lat_hist_merge(a, b);
    assert_int_equal(a->n, 100);
    assert_int_equal(a->max_us, 90);
    assert_int_equal(ts_lat_hist_quantile(a, 0.5), 10);
    assert_int_equal(ts_lat_hist_quantile(a, 0.51), 90);
    free(a);
    free(b);
}

static void test_ring_times_each_seq_once(void **state)
{
    (void)state;
    ts_seq_ring_t *r = malloc(sizeof *r);
    ts_lat_hist_t *h = hist_new();
    assert_non_null(r);
    ts_seq_ring_init(r);
    /* Moves 3, 4, 5 sent at 1000, 1010, 1020 us (1, 2: Hello and Join, not timed) */
    ts_seq_ring_put(r, 3, 1000);
    ts_seq_ring_put(r, 4, 1010);
    ts_seq_ring_put(r, 5, 1020);
    assert_int_equal(ts_seq_ring_pending(r), 3);

    /* the state shows last_input_seq 4 at 1100: seq 3 took 100, seq 4 90 */
    assert_int_equal(ts_seq_ring_resolve(r, 4, 1100, h), 2);
    assert_int_equal(h->n, 2);
    assert_int_equal(h->max_us, 100);
    assert_int_equal(ts_lat_hist_quantile(h, 0.5), 90);
    /* a later state repeating 4, or an older one, times nothing again */
    assert_int_equal(ts_seq_ring_resolve(r, 4, 9000, h), 0);
    assert_int_equal(ts_seq_ring_resolve(r, 2, 9000, h), 0);
    assert_int_equal(h->n, 2);
    /* 5 shows up */
    assert_int_equal(ts_seq_ring_resolve(r, 5, 1070, h), 1);
    assert_int_equal(ts_lat_hist_quantile(h, 0.01), 50);
    assert_int_equal(ts_seq_ring_pending(r), 0);
    assert_int_equal(r->lost, 0);
    free(h);
    free(r);
}

static void test_ring_overrun_is_counted(void **state)
{
    (void)state;
    ts_seq_ring_t *r = malloc(sizeof *r);
    ts_lat_hist_t *h = hist_new();
    assert_non_null(r);
    ts_seq_ring_init(r);
    /* more outstanding than the ring holds: the oldest are given up */
    uint64_t n = TS_SEQ_RING_SIZE + 10;
    for (uint64_t s = 1; s <= n; s++)
        ts_seq_ring_put(r, s, s * 10);
    assert_int_equal(r->lost, 10);
    assert_int_equal(ts_seq_ring_pending(r), TS_SEQ_RING_SIZE);
    /* one jump past all of them times the TS_SEQ_RING_SIZE still held */
    assert_int_equal(ts_seq_ring_resolve(r, n + 100, 100000, h), TS_SEQ_RING_SIZE);
    assert_int_equal(h->n, TS_SEQ_RING_SIZE);
    assert_int_equal(h->max_us, 100000 - 11 * 10);
    assert_int_equal(ts_seq_ring_pending(r), 0);

    /* a gap in seqs (a skipped Move) resolves what is there */
    ts_seq_ring_put(r, n + 101, 5);
    ts_seq_ring_put(r, n + 103, 7);
    assert_int_equal(ts_seq_ring_resolve(r, n + 103, 10, NULL), 2);
    assert_int_equal(ts_seq_ring_pending(r), 0);
    free(h);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_are_ordered_and_tight),
        cmocka_unit_test(test_quantiles),
        cmocka_unit_test(test_merge_adds_samples),
        cmocka_unit_test(test_ring_times_each_seq_once),
        cmocka_unit_test(test_ring_overrun_is_counted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
