/* Metrics and health on every service, as a scraper and Kubernetes probes
 * see them: orchestrator, workers w1 and w2, gateway and sim run with
 * <svc>.http_listen set, against real nats-server and redis-server.
 *
 *   - /readyz answers 503 while a service cannot work yet (a worker started
 *     before the world exists) and 200 once it can; /healthz answers 200
 *     all along; other paths 404;
 *   - /metrics carries the metric names the dashboard uses, with values
 *     that follow what the cluster did: inputs the sim sent are counted as
 *     applied by the workers and acknowledged at the gateway, a handover
 *     made with tessera-ctl is counted with its freeze time, every worker
 *     reports the cells it owns;
 *   - once NATS is gone every service's /readyz turns 503 while /healthz
 *     stays 200 (the loops still turn);
 *   - a cell that cannot be served is reported, never silently frozen: when
 *     the only worker dies (nobody can take its cells),
 *     tessera_orch_cells_unserved counts every cell and `tessera-ctl cells`
 *     flags each one and counts them in its summary. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define WAIT_MS 15000

#define BODY_MAX (1 << 20) /* /metrics with every histogram fits */

/* GET path on 127.0.0.1:port; the status (0 if nothing answered) and the
 * body in *body (caller frees; NULL when nothing answered). */
static int http_get(int port, const char *path, char **body)
{
    *body = malloc(BODY_MAX);
    assert_non_null(*body);
    int status = ts_h_http_get(port, path, *body, BODY_MAX);
    if (status < 0) {
        free(*body);
        *body = NULL;
        return 0;
    }
    return status;
}

static int status_of(int port, const char *path)
{
    char *body = NULL;
    int st = http_get(port, path, &body);
    free(body);
    return st;
}

/* Polls until path answers want; fails the test after timeout_ms. */
static void wait_status(const char *who, int port, const char *path, int want, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    int st;
    while ((st = status_of(port, path)) != want) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s %s answered %d for %lld ms, want %d", who, path, st, (long long)timeout_ms, want);
        }
        ts_sleep_ms(50);
    }
}

/* Sum of every series of metric `name` (exact name, any labels); NAN if
 * the text has none. */
static double metric_sum(const char *text, const char *name)
{
    size_t n = strlen(name);
    double sum = NAN;
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, name, n) == 0 && (p[n] == '{' || p[n] == ' ')) {
            const char *v = p[n] == '{' ? strchr(p + n, '}') : p + n;
            if (v && (!eol || v < eol)) {
                double x = strtod(v + 1, NULL);
                sum = isnan(sum) ? x : sum + x;
            }
        }
        p = eol ? eol + 1 : NULL;
    }
    return sum;
}

static char *scrape(const char *who, int port)
{
    char *body = NULL;
    int st = http_get(port, "/metrics", &body);
    if (st != 200 || !body) {
        ts_h.failed = true;
        fail_msg("%s /metrics answered %d", who, st);
    }
    return body;
}

/* Scrapes until metric `name` reaches at least min; returns its value. */
static double wait_metric(const char *who, int port, const char *name, double min, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    for (;;) {
        char *text = scrape(who, port);
        double v = metric_sum(text, name);
        free(text);
        if (v >= min) return v;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s %s = %g after %lld ms, want >= %g", who, name, v, (long long)timeout_ms, min);
        }
        ts_sleep_ms(100);
    }
}

/* Scrapes until metric `name` equals want. */
static void wait_metric_eq(const char *who, int port, const char *name, double want, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    for (;;) {
        char *text = scrape(who, port);
        double v = metric_sum(text, name);
        free(text);
        if (v == want) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s %s = %g after %lld ms, want %g", who, name, v, (long long)timeout_ms, want);
        }
        ts_sleep_ms(100);
    }
}

static void assert_has(const char *who, const char *text, const char *needle)
{
    if (!strstr(text, needle)) {
        ts_h.failed = true;
        fail_msg("%s /metrics lacks %s", who, needle);
    }
}

static int spawn_with_http(const char *name, const char *bin, const char *key, int *port, const char *a1,
                           const char *a2)
{
    static char flags[8][96];
    static int nflags;
    *port = ts_h_free_port();
    char *flag = flags[nflags++ % 8];
    snprintf(flag, sizeof flags[0], "--%s=127.0.0.1:%d", key, *port);
    const char *argv[] = {flag, a1, a2, NULL};
    return ts_h_spawn(&ts_h, name, bin, argv);
}

static void test_metrics_and_health_on_every_service(void **state)
{
    int p_w1, p_w2, p_orch, p_gw, p_sim;
    char gw_listen[64];
    int gw_port = ts_h_free_port();
    snprintf(gw_listen, sizeof gw_listen, "--gateway.listen=127.0.0.1:%d", gw_port);

    /* a worker started before the world exists: alive, not ready */
    int w1 = spawn_with_http("w1", "tessera-worker", "worker.http_listen", &p_w1, "--worker.id=w1", NULL);
    wait_status("w1", p_w1, "/healthz", 200, WAIT_MS);
    char *body = NULL;
    assert_int_equal(http_get(p_w1, "/readyz", &body), 503);
    assert_non_null(strstr(body, "not ready"));
    free(body);
    assert_int_equal(status_of(p_w1, "/nothing-here"), 404);

    int orch =
        spawn_with_http("orch", "tessera-orch", "orch.http_listen", &p_orch, "--orch.rebalance=0", NULL);
    int w2 = spawn_with_http("w2", "tessera-worker", "worker.http_listen", &p_w2, "--worker.id=w2", NULL);
    int gw = spawn_with_http("gateway", "tessera-gateway", "gateway.http_listen", &p_gw, gw_listen, NULL);
    assert_true(ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS));
    wait_status("orch", p_orch, "/readyz", 200, WAIT_MS);
    wait_status("w1", p_w1, "/readyz", 200, WAIT_MS);
    wait_status("w2", p_w2, "/readyz", 200, WAIT_MS);
    wait_status("gateway", p_gw, "/readyz", 200, WAIT_MS);
    (void)orch;
    (void)w1;
    (void)w2;
    (void)gw;

    /* load: players on the bus, and a few through the gateway */
    int sim = spawn_with_http("sim", "tessera-sim", "sim.http_listen", &p_sim, "--sim.players=200",
                              "--sim.duration_s=8");
    char via[64];
    snprintf(via, sizeof via, "127.0.0.1:%d", gw_port);
    const char *vg_args[] = {"--via-gateway", via, "--sim.players=20", "--sim.duration_s=4", NULL};
    int vg = ts_h_spawn(&ts_h, "simgw", "tessera-sim", vg_args);
    wait_status("sim", p_sim, "/readyz", 200, WAIT_MS);
    wait_metric("sim", p_sim, "tessera_sim_inputs_applied_total", 500, WAIT_MS);
    wait_metric("w1", p_w1, "tessera_worker_inputs_applied_total", 100, WAIT_MS);
    wait_metric("w2", p_w2, "tessera_worker_inputs_applied_total", 100, WAIT_MS);
    wait_metric("gateway", p_gw, "tessera_gateway_inputs_published_total", 20, WAIT_MS);

    /* a live handover, counted by the orchestrator with its freeze time */
    const char *ctl_args[] = {"handover", "0.-1.0.0.0", "w2", NULL};
    int ctl = ts_h_spawn(&ts_h, "ctl", "tessera-ctl", ctl_args);
    assert_int_equal(ts_h_wait(&ts_h, ctl, WAIT_MS), 0);
    wait_metric("orch", p_orch, "tessera_orch_handovers_total", 1, WAIT_MS);
    /* the workers report their cells at heartbeat cadence */
    wait_metric_eq("w2", p_w2, "tessera_worker_cells", 9, WAIT_MS);
    wait_metric_eq("w1", p_w1, "tessera_worker_cells", 7, WAIT_MS);
    wait_metric("w2", p_w2, "tessera_worker_handovers_total", 1, WAIT_MS);

    char *t = scrape("orch", p_orch);
    assert_has("orch", t, "tessera_orch_handovers_total{world=\"0\",result=\"ok\"} 1\n");
    assert_has("orch", t, "tessera_orch_handover_freeze_seconds_count{world=\"0\"} 1\n");
    assert_has("orch", t, "tessera_orch_handover_freeze_seconds_bucket{world=\"0\",le=\"+Inf\"} 1\n");
    assert_has("orch", t, "tessera_orch_handover_seconds_count{world=\"0\"} 1\n");
    assert_has("orch", t, "tessera_orch_leader{world=\"0\"} 1\n");
    assert_has("orch", t, "tessera_orch_workers_live{world=\"0\"} 2\n");
    assert_has("orch", t, "# TYPE tessera_orch_handover_freeze_seconds histogram\n");
    free(t);

    t = scrape("w1", p_w1);
    assert_has("w1", t, "# TYPE tessera_worker_tick_seconds histogram\n");
    assert_has("w1", t, "tessera_worker_cells{worker=\"w1\"} 7\n");
    assert_has("w1", t, "tessera_worker_inputs_lost_total{worker=\"w1\"} 0\n");
    /* every message is cut to fit max_payload: none left unpublished */
    assert_has("w1", t, "tessera_worker_messages_oversized_total{worker=\"w1\"} 0\n");
    assert_true(metric_sum(t, "tessera_worker_input_latency_seconds_count") > 0);
    assert_true(metric_sum(t, "tessera_worker_entities") > 0);
    /* Ticks are counted, and the count goes on. (How many ticks fit in the
     * time so far is not asserted: a loaded machine makes the worker skip
     * late ticks, counted in ticks_missed_total, and ticks_total is copied at
     * heartbeat cadence while the histogram counts every tick at once.) */
    double tick_hist = metric_sum(t, "tessera_worker_tick_seconds_count");
    double ticks = metric_sum(t, "tessera_worker_ticks_total");
    assert_true(ticks > 0);
    assert_true(tick_hist > 0);
    double missed = metric_sum(t, "tessera_worker_ticks_missed_total");
    assert_false(isnan(missed));
    fprintf(stderr, "w1: %.0f ticks counted (%.0f timed), %.0f missed\n", ticks, tick_hist, missed);
    free(t);

    /* the sim finishes exactly: every input applied once */
    assert_int_equal(ts_h_wait(&ts_h, sim, 40000), 0);
    assert_int_equal(ts_h_wait(&ts_h, vg, 40000), 0);
    wait_metric("w1", p_w1, "tessera_worker_ticks_total", ticks + 1, WAIT_MS);
    wait_metric("w1", p_w1, "tessera_worker_tick_seconds_count", tick_hist + 1, WAIT_MS);

    t = scrape("gateway", p_gw);
    assert_has("gateway", t, "# TYPE tessera_gateway_send_seconds histogram\n");
    assert_true(metric_sum(t, "tessera_gateway_input_ack_seconds_count") > 0);
    assert_true(metric_sum(t, "tessera_gateway_send_seconds_count") > 0);
    assert_true(metric_sum(t, "tessera_gateway_sent_bytes_total") > 0);
    assert_has("gateway", t, "tessera_gateway_inputs_not_stored_total{gateway=\"1\"} 0\n");
    free(t);
    wait_metric_eq("gateway", p_gw, "tessera_gateway_clients", 0, WAIT_MS); /* the players left */

    /* NATS goes away: nobody is ready any more, every loop still turns */
    ts_h_signal(&ts_h, TS_H_NATS, SIGKILL);
    assert_true(ts_h_wait(&ts_h, TS_H_NATS, 5000) >= 0);
    wait_status("w1", p_w1, "/readyz", 503, 5000);
    wait_status("w2", p_w2, "/readyz", 503, 5000);
    wait_status("gateway", p_gw, "/readyz", 503, 5000);
    wait_status("orch", p_orch, "/readyz", 503, 5000);
    assert_int_equal(status_of(p_w1, "/healthz"), 200);
    assert_int_equal(status_of(p_gw, "/healthz"), 200);
    assert_int_equal(status_of(p_orch, "/healthz"), 200);
    ts_h_pass();
}

/* Runs `tessera-ctl cells` until its output contains want; the output. */
static char *wait_ctl_cells(const char *want, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    for (;;) {
        const char *args[] = {"cells", NULL};
        int ctl = ts_h_spawn(&ts_h, "ctl-cells", "tessera-ctl", args);
        assert_int_equal(ts_h_wait(&ts_h, ctl, WAIT_MS), 0);
        char *out = ts_h_read_log(&ts_h, ctl);
        assert_non_null(out);
        if (strstr(out, want)) return out;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("`tessera-ctl cells` never showed \"%s\":\n%s", want, out);
        }
        free(out);
        ts_sleep_ms(200);
    }
}

static size_t count_of(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_unserved_cells_are_reported(void **state)
{
    int p_orch, p_w1;
    spawn_with_http("orch", "tessera-orch", "orch.http_listen", &p_orch, "--orch.rebalance=0", NULL);
    int w1 = spawn_with_http("w1", "tessera-worker", "worker.http_listen", &p_w1, "--worker.id=w1", NULL);
    assert_true(ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS));
    wait_metric_eq("w1", p_w1, "tessera_worker_cells", NCELLS, WAIT_MS);
    wait_metric_eq("orch", p_orch, "tessera_orch_workers_live", 1, WAIT_MS);
    char *t = scrape("orch", p_orch);
    assert_has("orch", t, "tessera_orch_cells_unserved{world=\"0\"} 0\n");
    assert_has("orch", t, "tessera_orch_registry_rebuilds_total{world=\"0\"} 0\n");
    assert_has("orch", t, "tessera_orch_stream_resets_total{world=\"0\"} 0\n");
    free(t);
    char *out = wait_ctl_cells("\n0 live cells not served (owner not alive)\n", WAIT_MS);
    assert_int_equal(count_of(out, "NOT SERVED"), 0);
    free(out);

    /* the only worker dies: no one can take its cells */
    ts_h_signal(&ts_h, w1, SIGKILL);
    assert_true(ts_h_wait(&ts_h, w1, 5000) >= 0);
    wait_metric_eq("orch", p_orch, "tessera_orch_cells_unserved", NCELLS, WAIT_MS);
    out = wait_ctl_cells("\n16 live cells not served (owner not alive)\n", WAIT_MS);
    if (count_of(out, "  NOT SERVED (owner not alive)\n") != NCELLS) {
        ts_h.failed = true;
        fail_msg("`tessera-ctl cells` does not flag every cell of the dead worker:\n%s", out);
    }
    free(out);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics_and_health_on_every_service, ts_h_test_start,
                                        ts_h_test_stop),
        cmocka_unit_test_setup_teardown(test_unserved_cells_are_reported, ts_h_test_start, ts_h_test_stop),
    };
    return TS_H_RUN("it_metrics", tests, NULL, NULL);
}
