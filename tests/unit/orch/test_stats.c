/* Orchestrator statistics (services/orch/stats.c): what `tessera-ctl stats`
 * and the ctl API report — counters, freeze / total percentiles over the
 * last 4096 handovers, and a JSON line that fits the documented shape. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stats.h"
#include "tessera/json.h"

static double field(const char *json, const char *key)
{
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = strstr(json, pattern);
    assert_non_null(p);
    return strtod(p + strlen(pattern), NULL);
}

static void test_empty_stats_are_zero(void **state)
{
    ts_stats_t s;
    ts_stats_init(&s);
    char json[1024];
    assert_true(ts_stats_json(&s, "host-1", json, sizeof json) > 0);
    assert_non_null(strstr(json, "{\"leader\":\"host-1\","));
    const char *keys[] = {"handovers",
                          "aborted",
                          "failed",
                          "freeze_us_p50",
                          "freeze_us_p99",
                          "total_us_p50",
                          "total_us_p99",
                          "recoveries",
                          "recovery_ms_last",
                          "rebalance_moves",
                          "recovery_batch_cells",
                          "recovery_round_trips",
                          "in_flight",
                          "queued",
                          "full_reads"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_true(field(json, keys[i]) == 0);
    assert_int_equal(json[strlen(json) - 1], '}');
    ts_stats_free(&s);
}

static void test_counters_and_percentiles(void **state)
{
    ts_stats_t s;
    ts_stats_init(&s);
    for (int i = 1; i <= 100; i++) {
        ts_stats_count(&s, TS_STAT_HANDOVER);
        ts_stats_sample(&s, (uint64_t)i * 10, (uint64_t)i * 100);
    }
    ts_stats_count(&s, TS_STAT_ABORTED);
    ts_stats_count(&s, TS_STAT_FAILED);
    ts_stats_count(&s, TS_STAT_REBALANCE_MOVE);
    ts_stats_recovered(&s, 1200);
    ts_stats_recovered(&s, 1700);
    ts_stats_recovery_batch(&s, 1024, 150000, 2);
    ts_stats_gauges(&s, 3, 5, 1);
    char json[1024];
    assert_true(ts_stats_json(&s, "h", json, sizeof json) > 0);
    assert_true(field(json, "handovers") == 100);
    assert_true(field(json, "aborted") == 1);
    assert_true(field(json, "failed") == 1);
    assert_true(field(json, "rebalance_moves") == 1);
    assert_true(field(json, "recoveries") == 2);
    assert_true(field(json, "recovery_ms_last") == 1700);
    assert_true(field(json, "recovery_batch_cells") == 1024);
    assert_true(field(json, "recovery_batch_us") == 150000);
    assert_true(field(json, "recovery_round_trips") == 2);
    assert_true(field(json, "in_flight") == 3);
    assert_true(field(json, "queued") == 5);
    assert_true(field(json, "full_reads") == 1);
    double p50 = field(json, "freeze_us_p50"), p99 = field(json, "freeze_us_p99");
    assert_true(p50 >= 500 && p50 <= 510);
    assert_true(p99 >= 980 && p99 <= 1000);
    assert_true(field(json, "total_us_p99") >= 9800);
    ts_stats_free(&s);
}

static void test_window_keeps_the_latest(void **state)
{
    ts_stats_t s;
    ts_stats_init(&s);
    /* 4096 slow handovers, then 4096 fast ones: only the fast ones count */
    for (int i = 0; i < TS_STATS_WINDOW; i++)
        ts_stats_sample(&s, 1000000, 2000000);
    for (int i = 0; i < TS_STATS_WINDOW; i++)
        ts_stats_sample(&s, 100, 200);
    assert_true(ts_stats_freeze_pct(&s, 99) == 100);
    assert_true(ts_stats_total_pct(&s, 100) == 200);
    ts_stats_free(&s);
}

static void test_json_is_safe_and_bounded(void **state)
{
    ts_stats_t s;
    ts_stats_init(&s);
    char json[1024], tiny[16];
    assert_true(ts_stats_json(&s, "evil\"holder\\\n", json, sizeof json) > 0);
    /* the holder is escaped, never able to break the JSON */
    assert_non_null(strstr(json, "\"leader\":\"evil\\\"holder\\\\\\n\""));
    double handovers = -1;
    assert_true(ts_json_number(json, "handovers", &handovers));
    assert_true(handovers == 0);
    assert_int_equal(ts_stats_json(&s, "h", tiny, sizeof tiny), -1);
    ts_stats_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_stats_are_zero),
        cmocka_unit_test(test_counters_and_percentiles),
        cmocka_unit_test(test_window_keeps_the_latest),
        cmocka_unit_test(test_json_is_safe_and_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
