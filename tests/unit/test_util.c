/* Helpers: strict number parsing (config values depend on it), percentiles
 * (heartbeat tick-time figures), the random generator and clocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tessera/status.h"
#include "tessera/util.h"

static void test_status_str(void **state)
{
    assert_string_equal(ts_status_str(TS_OK), "ok");
    assert_string_equal(ts_status_str(TS_ERR_TIMEOUT), "timed out");
    for (int i = 0; i < TS_STATUS_COUNT; i++) {
        assert_non_null(ts_status_str((ts_status_t)i));
        assert_true(strlen(ts_status_str((ts_status_t)i)) > 0);
    }
    assert_non_null(ts_status_str(TS_STATUS_COUNT));
    assert_non_null(ts_status_str((ts_status_t)-5));
}

static void test_parse_i64(void **state)
{
    int64_t v = 0;
    assert_int_equal(ts_parse_i64("0", &v), TS_OK);
    assert_int_equal(v, 0);
    assert_int_equal(ts_parse_i64("-42", &v), TS_OK);
    assert_int_equal(v, -42);
    assert_int_equal(ts_parse_i64("+7", &v), TS_OK);
    assert_int_equal(v, 7);
    assert_int_equal(ts_parse_i64("9223372036854775807", &v), TS_OK);
    assert_true(v == INT64_MAX);
    assert_int_equal(ts_parse_i64("-9223372036854775808", &v), TS_OK);
    assert_true(v == INT64_MIN);

    v = 5;
    assert_int_equal(ts_parse_i64("9223372036854775808", &v), TS_ERR_RANGE);
    assert_int_equal(ts_parse_i64("-9223372036854775809", &v), TS_ERR_RANGE);
    const char *bad[] = {"", " ", " 1", "1 ", "1x", "x1", "0x10", "1.5", "--1", "-", "1e3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ts_parse_i64(bad[i], &v) != TS_ERR_PARSE) fail_msg("i64 accepted \"%s\"", bad[i]);
    }
    assert_int_equal(v, 5);
    assert_int_not_equal(ts_parse_i64(NULL, &v), TS_OK);
}

static void test_parse_u64(void **state)
{
    uint64_t v = 0;
    assert_int_equal(ts_parse_u64("18446744073709551615", &v), TS_OK);
    assert_true(v == UINT64_MAX);
    assert_int_equal(ts_parse_u64("500", &v), TS_OK);
    assert_true(v == 500);
    v = 9;
    assert_int_equal(ts_parse_u64("18446744073709551616", &v), TS_ERR_RANGE);
    const char *bad[] = {"", "-1", "-0", " 1", "1 ", "+", "abc", "12a", "1.0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ts_parse_u64(bad[i], &v) != TS_ERR_PARSE) fail_msg("u64 accepted \"%s\"", bad[i]);
    }
    assert_true(v == 9);
}

static void test_parse_double(void **state)
{
    double v = 0;
    assert_int_equal(ts_parse_double("100", &v), TS_OK);
    assert_true(v == 100.0);
    assert_int_equal(ts_parse_double("-0.5", &v), TS_OK);
    assert_true(v == -0.5);
    assert_int_equal(ts_parse_double("1e3", &v), TS_OK);
    assert_true(v == 1000.0);
    assert_int_equal(ts_parse_double("1e-400", &v), TS_OK); /* underflow rounds to 0 */
    assert_true(fabs(v) < 1e-300);
    v = 3;
    assert_int_equal(ts_parse_double("1e400", &v), TS_ERR_RANGE);
    const char *bad[] = {"", " 1", "1 ", "1.5x", "x", "nan", "inf", "-inf", "1..2", "."};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ts_parse_double(bad[i], &v) != TS_ERR_PARSE) fail_msg("double accepted \"%s\"", bad[i]);
    }
    assert_true(v == 3);
}

static void test_strlcpy(void **state)
{
    char buf[5];
    assert_int_equal(ts_strlcpy(buf, "hello world", sizeof buf), 11);
    assert_string_equal(buf, "hell");
    assert_int_equal(ts_strlcpy(buf, "hi", sizeof buf), 2);
    assert_string_equal(buf, "hi");
    assert_int_equal(ts_strlcpy(buf, "abcd", sizeof buf), 4);
    assert_string_equal(buf, "abcd");
    buf[0] = 'z';
    assert_int_equal(ts_strlcpy(buf, "abc", 0), 3);
    assert_int_equal(buf[0], 'z');
}

static void test_percentile(void **state)
{
    assert_true(ts_percentile(NULL, 0, 50) == 0.0);
    double one[] = {7};
    assert_true(ts_percentile(one, 1, 99) == 7);

    double v[100];
    for (int i = 0; i < 100; i++)
        v[i] = 100 - i; /* 100..1, unsorted on purpose */
    assert_true(ts_percentile(v, 100, 0) == 1);
    assert_true(ts_percentile(v, 100, 100) == 100);
    assert_true(fabs(ts_percentile(v, 100, 50) - 50.5) < 1e-9);
    assert_true(fabs(ts_percentile(v, 100, 99) - 99.01) < 1e-9);
    /* sorted in place */
    for (int i = 1; i < 100; i++)
        assert_true(v[i - 1] <= v[i]);

    double w[] = {5, 1, 3};
    assert_true(ts_percentile(w, 3, 50) == 3);
    assert_true(ts_percentile(w, 3, -10) == 1);
    assert_true(ts_percentile(w, 3, 1000) == 5);
    double x[] = {10, 20};
    assert_true(fabs(ts_percentile(x, 2, 25) - 12.5) < 1e-9);
}

static void test_rng(void **state)
{
    ts_rng_t a, b, z;
    ts_rng_seed(&a, 1);
    ts_rng_seed(&b, 1);
    ts_rng_seed(&z, 0);
    assert_true(z.s != 0);
    for (int i = 0; i < 100; i++)
        assert_true(ts_rng_next(&a) == ts_rng_next(&b));
    ts_rng_seed(&b, 2);
    assert_true(ts_rng_next(&a) != ts_rng_next(&b));

    /* unit draws are in [0, 1) and roughly uniform */
    int bins[10] = {0};
    for (int i = 0; i < 100000; i++) {
        double u = ts_rng_unit(&a);
        assert_true(u >= 0.0 && u < 1.0);
        bins[(int)(u * 10)]++;
    }
    for (int i = 0; i < 10; i++)
        assert_true(bins[i] > 9000 && bins[i] < 11000);

    ts_rng_t zero = {0};
    assert_true(ts_rng_next(&zero) != 0); /* a zero state is repaired, not stuck */
}

static void test_clocks(void **state)
{
    uint64_t m0 = ts_mono_us(), n0 = ts_mono_ns();
    ts_sleep_ms(20);
    uint64_t m1 = ts_mono_us(), n1 = ts_mono_ns();
    assert_true(m1 - m0 >= 19000);
    assert_true(m1 - m0 < 2000000);
    assert_true(n1 - n0 >= 19000000);
    /* wall clock is after 2020-01-01 */
    assert_true(ts_now_us() > 1577836800ull * 1000000ull);
    ts_sleep_ms(0);
    ts_sleep_ms(-5);
}

/* Whole files: content and length exact (a NUL inside too), the bound
 * enforced, a missing file an I/O error. */
static void test_tick_wait(void **state)
{
    (void)state;
    const uint64_t p = 50000000ULL;             /* 20 Hz */
    assert_int_equal(ts_tick_wait_ns(0, p), p); /* on a boundary: the next one */
    assert_int_equal(ts_tick_wait_ns(1, p), p - 1);
    assert_int_equal(ts_tick_wait_ns(p - 1, p), 1);
    assert_int_equal(ts_tick_wait_ns(1764000000123456789ULL, p), p - 23456789ULL);
    /* two processes reading the clock at different moments of one period
     * wake at the same instant */
    uint64_t a = 1764000000010000000ULL, b = 1764000000047000000ULL;
    assert_int_equal(a + ts_tick_wait_ns(a, p), b + ts_tick_wait_ns(b, p));
    assert_int_equal(ts_tick_wait_ns(7, 1), 1);
}

static void test_read_file(void **state)
{
    (void)state;
    char path[] = "/tmp/ts-test-util-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static char big[10000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + i % 26);
    big[5] = '\0';
    assert_int_equal(write(fd, big, sizeof big), (ssize_t)sizeof big);
    close(fd);
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_read_file(path, sizeof big, &buf, &len), TS_OK);
    assert_int_equal(len, sizeof big);
    assert_memory_equal(buf, big, sizeof big);
    assert_int_equal(buf[len], '\0');
    free(buf);
    assert_int_equal(ts_read_file(path, sizeof big - 1, &buf, &len), TS_ERR_OVERSIZED);
    assert_null(buf);
    unlink(path);
    assert_int_equal(ts_read_file(path, 100, &buf, &len), TS_ERR_IO);
    assert_int_equal(ts_read_file("/dev/null", 100, &buf, &len), TS_OK);
    assert_int_equal(len, 0);
    assert_string_equal(buf, "");
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_str), cmocka_unit_test(test_parse_i64),
        cmocka_unit_test(test_parse_u64),  cmocka_unit_test(test_parse_double),
        cmocka_unit_test(test_strlcpy),    cmocka_unit_test(test_percentile),
        cmocka_unit_test(test_rng),        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_read_file),  cmocka_unit_test(test_tick_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
