/* Metrics exposition: what Prometheus parses from /metrics. Names and
 * types, constant and per-series labels with escaping, histogram buckets
 * that are cumulative and end with +Inf, _sum and _count, callbacks and
 * scrape hooks, and updates from several threads at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/metrics.h"

/* not inlined: gcc 12 at -O2 takes its out for a dangling local */
__attribute__((noinline)) static char *render(ts_metrics_t *m)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(ts_metrics_render(m, &out, &len), TS_OK);
    assert_non_null(out);
    assert_int_equal(strlen(out), len);
    return out;
}

/* The text contains line as a whole line. */
static void assert_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0')) return;
    }
    fail_msg("line not found: %s\nin:\n%s", line, text);
}

static void test_counter_gauge_text(void **state)
{
    ts_metrics_t *m = NULL;
    const char *cl[] = {"worker", "w1", NULL};
    assert_int_equal(ts_metrics_create(&m, cl), TS_OK);
    ts_counter_t *c = ts_metrics_counter(m, "tessera_inputs_applied_total", "Inputs applied.", NULL);
    ts_gauge_t *g = ts_metrics_gauge(m, "tessera_entities", "Entities owned.", NULL);
    assert_non_null(c);
    assert_non_null(g);
    ts_counter_inc(c);
    ts_counter_add(c, 41);
    ts_gauge_set(g, 12.5);
    ts_gauge_add(g, -2.5);
    char *t = render(m);
    /* HELP and TYPE come first, once per family */
    assert_true(strncmp(t,
                        "# HELP tessera_inputs_applied_total Inputs applied.\n"
                        "# TYPE tessera_inputs_applied_total counter\n",
                        strlen("# HELP tessera_inputs_applied_total Inputs applied.\n"
                               "# TYPE tessera_inputs_applied_total counter\n")) == 0);
    assert_line(t, "tessera_inputs_applied_total{worker=\"w1\"} 42");
    assert_line(t, "# TYPE tessera_entities gauge");
    assert_line(t, "tessera_entities{worker=\"w1\"} 10");
    free(t);
    /* a mirrored total never goes back */
    ts_counter_set(c, 100);
    ts_counter_set(c, 90);
    assert_int_equal(ts_counter_value(c), 100);
    ts_metrics_destroy(m);
}

static void test_labels_escaped_and_families_grouped(void **state)
{
    ts_metrics_t *m = NULL;
    assert_int_equal(ts_metrics_create(&m, NULL), TS_OK);
    const char *ok[] = {"result", "ok", NULL};
    const char *ab[] = {"result", "aborted", NULL};
    const char *odd[] = {"result", "a\\b\"c\nd", NULL};
    ts_counter_t *c_ok = ts_metrics_counter(m, "tessera_handovers_total", "Handovers by result.", ok);
    ts_counter_t *c_ab = ts_metrics_counter(m, "tessera_handovers_total", "Handovers by result.", ab);
    ts_counter_t *c_odd = ts_metrics_counter(m, "tessera_handovers_total", "Handovers by result.", odd);
    ts_gauge_t *bare = ts_metrics_gauge(m, "tessera_clients", "Help with \\ and\nnewline.", NULL);
    assert_non_null(c_ok);
    assert_non_null(c_ab);
    assert_non_null(c_odd);
    assert_non_null(bare);
    ts_counter_add(c_ok, 3);
    ts_counter_add(c_ab, 1);
    char *t = render(m);
    assert_line(t, "tessera_handovers_total{result=\"ok\"} 3");
    assert_line(t, "tessera_handovers_total{result=\"aborted\"} 1");
    assert_line(t, "tessera_handovers_total{result=\"a\\\\b\\\"c\\nd\"} 0");
    assert_line(t, "tessera_clients 0");
    assert_line(t, "# HELP tessera_clients Help with \\\\ and\\nnewline.");
    /* one HELP/TYPE for the three series of the family */
    const char *first = strstr(t, "# TYPE tessera_handovers_total");
    assert_non_null(first);
    assert_null(strstr(first + 1, "# TYPE tessera_handovers_total"));
    free(t);
    ts_metrics_destroy(m);
}

static void test_bad_names_refused(void **state)
{
    ts_metrics_t *m = NULL;
    assert_int_equal(ts_metrics_create(&m, NULL), TS_OK);
    const char *le[] = {"le", "1", NULL};
    const char *bad[] = {"0x", "1", NULL};
    const char *res[] = {"__x", "1", NULL};
    assert_null(ts_metrics_counter(m, "inputs_total", "no prefix", NULL));
    assert_null(ts_metrics_counter(m, "tessera_bad-name", "dash", NULL));
    assert_null(ts_metrics_counter(m, "tessera_x_total", "le is for buckets", le));
    assert_null(ts_metrics_counter(m, "tessera_x_total", "digit first", bad));
    assert_null(ts_metrics_counter(m, "tessera_x_total", "reserved", res));
    assert_non_null(ts_metrics_counter(m, "tessera_x_total", "ok", NULL));
    /* same name, another type */
    assert_null(ts_metrics_gauge(m, "tessera_x_total", "ok", NULL));
    double down[] = {1, 0.5};
    assert_null(ts_metrics_histogram(m, "tessera_h_seconds", "descending", NULL, down, 2));
    const char *bad_const[] = {"le", "x", NULL};
    ts_metrics_t *m2 = NULL;
    assert_int_equal(ts_metrics_create(&m2, bad_const), TS_ERR_INVALID);
    assert_null(m2);
    /* NULL metrics are no-ops */
    ts_counter_inc(NULL);
    ts_gauge_set(NULL, 1);
    ts_histogram_observe(NULL, 1);
    ts_metrics_destroy(m);
}

static void test_histogram_cumulative(void **state)
{
    ts_metrics_t *m = NULL;
    const char *cl[] = {"worker", "w1", NULL};
    assert_int_equal(ts_metrics_create(&m, cl), TS_OK);
    const double bounds[] = {0.005, 0.01, 0.05};
    ts_histogram_t *h =
        ts_metrics_histogram(m, "tessera_worker_tick_seconds", "Tick duration.", NULL, bounds, 3);
    assert_non_null(h);
    ts_histogram_observe(h, 0.001); /* le 0.005 */
    ts_histogram_observe(h, 0.005); /* le 0.005: the bound itself is in */
    ts_histogram_observe(h, 0.02);  /* le 0.05 */
    ts_histogram_observe(h, 3.0);   /* +Inf only */
    ts_histogram_observe(h, NAN);   /* ignored */
    assert_int_equal(ts_histogram_count(h), 4);
    char *t = render(m);
    assert_line(t, "# TYPE tessera_worker_tick_seconds histogram");
    assert_line(t, "tessera_worker_tick_seconds_bucket{worker=\"w1\",le=\"0.005\"} 2");
    assert_line(t, "tessera_worker_tick_seconds_bucket{worker=\"w1\",le=\"0.01\"} 2");
    assert_line(t, "tessera_worker_tick_seconds_bucket{worker=\"w1\",le=\"0.05\"} 3");
    assert_line(t, "tessera_worker_tick_seconds_bucket{worker=\"w1\",le=\"+Inf\"} 4");
    assert_line(t, "tessera_worker_tick_seconds_sum{worker=\"w1\"} 3.026");
    assert_line(t, "tessera_worker_tick_seconds_count{worker=\"w1\"} 4");
    /* buckets in ascending order, +Inf last, then _sum and _count */
    const char *b1 = strstr(t, "le=\"0.005\"");
    const char *b2 = strstr(t, "le=\"0.01\"");
    const char *b3 = strstr(t, "le=\"0.05\"");
    const char *inf = strstr(t, "le=\"+Inf\"");
    const char *sum = strstr(t, "_sum{");
    const char *cnt = strstr(t, "_count{");
    assert_true(b1 < b2 && b2 < b3 && b3 < inf && inf < sum && sum < cnt);
    free(t);
    ts_metrics_destroy(m);
}

static void test_histogram_without_labels(void **state)
{
    ts_metrics_t *m = NULL;
    assert_int_equal(ts_metrics_create(&m, NULL), TS_OK);
    ts_histogram_t *h = ts_metrics_histogram(m, "tessera_x_seconds", "x", NULL, ts_metrics_seconds_buckets,
                                             ts_metrics_seconds_nbuckets);
    assert_non_null(h);
    char *t = render(m);
    assert_line(t, "tessera_x_seconds_bucket{le=\"0.0001\"} 0");
    assert_line(t, "tessera_x_seconds_bucket{le=\"10\"} 0");
    assert_line(t, "tessera_x_seconds_bucket{le=\"+Inf\"} 0");
    assert_line(t, "tessera_x_seconds_sum 0");
    assert_line(t, "tessera_x_seconds_count 0");
    free(t);
    ts_metrics_destroy(m);
}

static double read_fn(void *ud)
{
    return *(double *)ud;
}

static void hook(void *ud)
{
    ts_gauge_set(ud, 7);
}

static void test_callbacks_and_hooks(void **state)
{
    ts_metrics_t *m = NULL;
    assert_int_equal(ts_metrics_create(&m, NULL), TS_OK);
    double v = 5;
    assert_int_equal(ts_metrics_gauge_fn(m, "tessera_backlog", "Backlog.", NULL, read_fn, &v), TS_OK);
    assert_int_equal(ts_metrics_counter_fn(m, "tessera_sent_total", "Sent.", NULL, read_fn, &v), TS_OK);
    ts_gauge_t *g = ts_metrics_gauge(m, "tessera_hooked", "Set by the scrape hook.", NULL);
    assert_int_equal(ts_metrics_on_scrape(m, hook, g), TS_OK);
    char *t = render(m);
    assert_line(t, "tessera_backlog 5");
    assert_line(t, "tessera_sent_total 5");
    assert_line(t, "tessera_hooked 7");
    free(t);
    v = INFINITY;
    t = render(m);
    assert_line(t, "tessera_backlog +Inf");
    free(t);
    ts_metrics_destroy(m);
}

typedef struct {
    ts_counter_t *c;
    ts_histogram_t *h;
} race_t;

static void *hammer(void *arg)
{
    race_t *r = arg;
    for (int i = 0; i < 100000; i++) {
        ts_counter_inc(r->c);
        ts_histogram_observe(r->h, 0.5);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    ts_metrics_t *m = NULL;
    assert_int_equal(ts_metrics_create(&m, NULL), TS_OK);
    const double bounds[] = {1};
    race_t r = {ts_metrics_counter(m, "tessera_n_total", "n", NULL),
                ts_metrics_histogram(m, "tessera_h", "h", NULL, bounds, 1)};
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &r), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char *t = render(m);
    assert_line(t, "tessera_n_total 400000");
    assert_line(t, "tessera_h_bucket{le=\"1\"} 400000");
    assert_line(t, "tessera_h_sum 200000");
    assert_line(t, "tessera_h_count 400000");
    free(t);
    ts_metrics_destroy(m);
}

int main(void)
{
    ts_log_init("test_metrics", TS_LOG_ERROR, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_gauge_text),
        cmocka_unit_test(test_labels_escaped_and_families_grouped),
        cmocka_unit_test(test_bad_names_refused),
        cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_histogram_without_labels),
        cmocka_unit_test(test_callbacks_and_hooks),
        cmocka_unit_test(test_concurrent_updates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
