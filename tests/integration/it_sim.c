/* End to end: orchestrator, workers w1 and w2 and tessera-sim against real
 * nats-server -js and redis-server. What users rely on: every input the
 * sim sent is acknowledged and applied exactly once (the sim exits 0 with
 * applied == acked == sent), the workers' own counters agree, the sim
 * exits 2 when inputs are not applied (on the bus and through a gateway,
 * over TCP and WebSocket) or its clients cannot get in, and tessera-ctl
 * reports the running system. it_gateway_load runs the
 * gateway mode at scale. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "probe.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

static int orch_idx = -1;

#define WAIT_MS 15000
#define MAX_WORKERS 8

/* Latest heartbeat counters per worker, from tessera.worker.*.hb. */
typedef struct {
    pthread_mutex_t mu;
    int n;
    char id[MAX_WORKERS][32];
    uint64_t inputs_applied[MAX_WORKERS];
    size_t cells[MAX_WORKERS];
    uint64_t beats[MAX_WORKERS];
} hbs_t;

static hbs_t HB;

static void on_heartbeat(void *ud, const ts_bus_msg_t *m)
{
    hbs_t *h = ud;
    Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (!hb) return;
    pthread_mutex_lock(&h->mu);
    int i = 0;
    while (i < h->n && strcmp(h->id[i], hb->worker) != 0)
        i++;
    if (i == h->n && h->n < MAX_WORKERS) ts_strlcpy(h->id[h->n++], hb->worker, sizeof h->id[0]);
    if (i < h->n) {
        h->inputs_applied[i] = hb->inputs_applied;
        h->cells[i] = hb->n_cells;
        h->beats[i]++;
    }
    pthread_mutex_unlock(&h->mu);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

/* Sum of inputs_applied over workers; *ready: w1 and w2 beat with 8 cells each. */
static uint64_t hb_applied(bool *ready)
{
    uint64_t sum = 0;
    int ok = 0;
    pthread_mutex_lock(&HB.mu);
    for (int i = 0; i < HB.n; i++) {
        sum += HB.inputs_applied[i];
        if ((strcmp(HB.id[i], "w1") == 0 || strcmp(HB.id[i], "w2") == 0) && HB.cells[i] == 8 &&
            HB.beats[i] >= 2)
            ok++;
    }
    pthread_mutex_unlock(&HB.mu);
    if (ready) *ready = ok == 2;
    return sum;
}

typedef struct {
    unsigned long long sent, acked, applied;
    long long lost;
    int report_lines;
} sim_result_t;

/* Parses the sim's log: its per-second lines and the final line. */
static sim_result_t parse_sim_log(int idx)
{
    sim_result_t r = {0};
    char *log = ts_h_read_log(&ts_h, idx);
    assert_non_null(log);
    const char *done = NULL;
    for (const char *p = log; (p = strstr(p, "sim: ")) != NULL; p++) {
        if (strncmp(p, "sim: players=", 13) == 0) r.report_lines++;
        if (strncmp(p, "sim: done ", 10) == 0) done = p;
    }
    if (!done || sscanf(done, "sim: done sent=%llu acked=%llu applied=%llu lost=%lld", &r.sent, &r.acked,
                        &r.applied, &r.lost) != 4) {
        ts_h.failed = true;
        free(log);
        fail_msg("the sim printed no final line");
    }
    free(log);
    return r;
}

/* The final line of `tessera-sim --via-gateway`; false if it printed none. */
static bool parse_vg_log(int idx, ts_probe_gw_verdict_t *r)
{
    char *log = ts_h_read_log(&ts_h, idx);
    assert_non_null(log);
    ts_probe_gw_verdict(log, r);
    free(log);
    return r->have_final;
}

/* The gateway and the `--via-gateway` sims of
 * test_via_gateway_detects_unapplied_inputs: started once, by the first test
 * that asks, so that its sim waits out its settle time while the previous
 * test's sim waits out its own (no worker runs during either). */
static struct {
    int gw, sim, sim_ws, port, ws_port;
} VG = {-1, -1, -1, 0, 0};

static void vg_unapplied_start(void)
{
    if (VG.sim >= 0) return;
    /* a gateway takes the clients' inputs into the streams, but no worker
     * runs yet, so none is applied: every input is reported missing */
    VG.port = ts_h_free_port();
    VG.ws_port = ts_h_free_port();
    char listen[64], ws_listen[64], addr[64], ws_addr[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", VG.port);
    snprintf(ws_listen, sizeof ws_listen, "--gateway.ws_listen=127.0.0.1:%d", VG.ws_port);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", VG.port);
    snprintf(ws_addr, sizeof ws_addr, "ws://127.0.0.1:%d", VG.ws_port); /* the path defaults to /ws */
    const char *gw_args[] = {listen, ws_listen, NULL};
    VG.gw = ts_h_spawn(&ts_h, "gateway-unapplied", "tessera-gateway", gw_args);
    assert_true(ts_h_wait_port(VG.port, WAIT_MS));
    assert_true(ts_h_wait_port(VG.ws_port, WAIT_MS));
    const char *args[] = {"--via-gateway", addr, "--sim.players=20", "--sim.duration_s=1", NULL};
    VG.sim = ts_h_spawn(&ts_h, "sim-vg-unapplied", "tessera-sim", args);
    /* the same over WebSocket, at the same time */
    const char *ws_args[] = {"--via-gateway", ws_addr, "--sim.players=20", "--sim.duration_s=1", NULL};
    VG.sim_ws = ts_h_spawn(&ts_h, "sim-vg-unapplied-ws", "tessera-sim", ws_args);
}

/* A finished `--via-gateway` sim whose 20 clients all joined and sent
 * inputs of which none was applied: exit 2, everything missing. */
static void assert_vg_unapplied(int sim, const char *what)
{
    int rc = ts_h_wait(&ts_h, sim, 40000);
    ts_probe_gw_verdict_t r;
    if (!parse_vg_log(sim, &r)) {
        ts_h.failed = true;
        fail_msg("tessera-sim --via-gateway (%s) printed no final line (exit %d)", what, rc);
    }
    assert_int_equal(rc, 2);
    assert_int_equal(r.clients, 20);
    assert_int_equal(r.connected, 20);
    assert_true(r.sent > 20); /* Joins and Moves */
    assert_int_equal(r.applied, 0);
    assert_int_equal(r.missing, r.sent);
}

/* A `--via-gateway` sim of 5 clients none of which got in: exit 2. */
static void assert_vg_none_in(const char *name, const char *addr)
{
    const char *args[] = {"--via-gateway", addr, "--sim.players=5", "--sim.duration_s=1", NULL};
    int sim = ts_h_spawn(&ts_h, name, "tessera-sim", args);
    int rc = ts_h_wait(&ts_h, sim, 40000);
    ts_probe_gw_verdict_t r;
    assert_true(parse_vg_log(sim, &r));
    assert_int_equal(rc, 2);
    assert_int_equal(r.clients, 5);
    assert_int_equal(r.connected, 0);
    assert_int_equal(r.sent, 0);
}

static void test_sim_detects_unapplied_inputs(void **state)
{
    /* no worker owns anything yet: inputs are stored but never applied */
    const char *args[] = {"--sim.players=20", "--sim.duration_s=1", "--sim.seed=99", NULL};
    int sim = ts_h_spawn(&ts_h, "sim-unapplied", "tessera-sim", args);
    vg_unapplied_start(); /* the next test's sim, meanwhile */
    int rc = ts_h_wait(&ts_h, sim, 40000);
    sim_result_t r = parse_sim_log(sim);
    assert_int_equal(rc, 2);
    assert_true(r.sent > 0);
    assert_int_equal(r.acked, r.sent);
    assert_int_equal(r.applied, 0);
    assert_int_equal(r.lost, (long long)r.acked);
    ts_h_pass();
}

static void test_via_gateway_detects_unapplied_inputs(void **state)
{
    vg_unapplied_start(); /* started by the previous test, unless it runs alone */
    assert_vg_unapplied(VG.sim, "TCP");
    assert_vg_unapplied(VG.sim_ws, "WebSocket");

    /* an upgrade the gateway refuses (no WebSocket on that path): every
     * client gives up, exit 2 */
    char addr[64];
    snprintf(addr, sizeof addr, "ws://127.0.0.1:%d/nope", VG.ws_port);
    assert_vg_none_in("sim-vg-refused-ws", addr);

    /* no gateway at all: every client fails to connect, exit 2 */
    ts_h_signal(&ts_h, VG.gw, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, VG.gw, 10000), 0);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", VG.port);
    assert_vg_none_in("sim-vg-nogateway", addr);
    ts_h_pass();
}

static void test_sim_inputs_applied_exactly_once(void **state)
{
    ts_bus_t *bus = NULL;
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_sim"), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, "tessera.worker.*.hb", on_heartbeat, &HB, &sub), TS_OK);

    const char *w1_args[] = {"--worker.id=w1", NULL}, *w2_args[] = {"--worker.id=w2", NULL};
    ts_h_spawn(&ts_h, "worker-w1", "tessera-worker", w1_args);
    ts_h_spawn(&ts_h, "worker-w2", "tessera-worker", w2_args);
    bool ready = false;
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (!ready && ts_mono_us() < deadline) {
        hb_applied(&ready);
        ts_sleep_ms(100);
    }
    if (!ready) {
        ts_h.failed = true;
        fail_msg("workers w1 and w2 did not report 8 cells each within %d s", WAIT_MS / 1000);
    }
    /* let the workers drain what the previous test left in the streams */
    ts_sleep_ms(1500);
    uint64_t before = hb_applied(NULL);

    const char *args[] = {"--sim.players=200", "--sim.duration_s=5", NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", args);
    int rc = ts_h_wait(&ts_h, sim, 60000);
    sim_result_t r = parse_sim_log(sim);
    if (rc != 0) {
        ts_h.failed = true;
        fail_msg("tessera-sim exited with %d (sent=%llu acked=%llu applied=%llu)", rc, r.sent, r.acked,
                 r.applied);
    }
    assert_true(r.sent > 0);
    /* 200 players at 5 inputs/s for 5 s: about 5000 inputs */
    assert_true(r.sent >= 3000 && r.sent <= 6000);
    assert_int_equal(r.acked, r.sent);
    assert_int_equal(r.applied, r.acked);
    assert_int_equal(r.lost, 0);
    assert_true(r.report_lines >= 3);

    /* the workers' own counters saw at least every acknowledged input */
    uint64_t applied = 0;
    deadline = ts_mono_us() + 5000000;
    do {
        applied = hb_applied(NULL) - before;
        if (applied >= r.acked) break;
        ts_sleep_ms(100);
    } while (ts_mono_us() < deadline);
    if (applied < r.acked) {
        ts_h.failed = true;
        fail_msg("workers' heartbeats show %llu inputs applied, the sim had %llu acknowledged",
                 (unsigned long long)applied, r.acked);
    }

    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    ts_h_pass();
}

static void test_ctl_reports_running_system(void **state)
{
    const char *watch_args[] = {"watch", "--count", "2", NULL};
    int watch = ts_h_spawn(&ts_h, "ctl-watch", "tessera-ctl", watch_args);
    assert_int_equal(ts_h_wait(&ts_h, watch, 15000), 0);
    char *out = ts_h_read_log(&ts_h, watch);
    assert_non_null(out);
    int lines = 0;
    for (const char *p = out; (p = strstr(p, "cells=16 owners=w1:8,w2:8 entities=")) != NULL; p++)
        lines++;
    if (lines != 2) {
        ts_h.failed = true;
        fail_msg("`tessera-ctl watch --count 2` printed:\n%s", out);
    }
    free(out);

    const char *workers_args[] = {"workers", NULL};
    int workers = ts_h_spawn(&ts_h, "ctl-workers", "tessera-ctl", workers_args);
    assert_int_equal(ts_h_wait(&ts_h, workers, 15000), 0);
    out = ts_h_read_log(&ts_h, workers);
    assert_non_null(out);
    char alive1[8] = "", alive2[8] = "";
    size_t cells1 = 0, cells2 = 0;
    const char *l1 = strstr(out, "\nw1 "), *l2 = strstr(out, "\nw2 ");
    if (!l1 || !l2 || sscanf(l1, " w1 %7s %zu", alive1, &cells1) != 2 ||
        sscanf(l2, " w2 %7s %zu", alive2, &cells2) != 2) {
        ts_h.failed = true;
        fail_msg("`tessera-ctl workers` printed:\n%s", out);
    }
    assert_string_equal(alive1, "yes");
    assert_string_equal(alive2, "yes");
    assert_int_equal(cells1, 8);
    assert_int_equal(cells2, 8);
    assert_non_null(strstr(out, "2 sent a heartbeat"));
    free(out);

    /* live traffic, decoded, without the NATS CLI */
    const char *tail_args[] = {"tail", "tessera.worker.*.hb", "--count", "2", NULL};
    int tail = ts_h_spawn(&ts_h, "ctl-tail", "tessera-ctl", tail_args);
    assert_int_equal(ts_h_wait(&ts_h, tail, 15000), 0);
    out = ts_h_read_log(&ts_h, tail);
    assert_non_null(out);
    int decoded = 0;
    for (const char *p = out; (p = strstr(p, "tessera.v1.Heartbeat {worker=\"w")) != NULL; p++)
        decoded++;
    if (decoded != 2) {
        ts_h.failed = true;
        fail_msg("`tessera-ctl tail tessera.worker.*.hb --count 2` printed:\n%s", out);
    }
    free(out);
    ts_h_pass();
}

static int group_setup(void **state)
{
    pthread_mutex_init(&HB.mu, NULL);
    ts_h_start(&ts_h);
    /* the workers start only in the third test, well after the orchestrator:
     * it must not hand w2's cells to whichever worker beats first meanwhile */
    const char *orch_args[] = {"--orch.recovery_grace_ms=600000", NULL};
    orch_idx = ts_h_spawn(&ts_h, "orch", "tessera-orch", orch_args);
    if (!ts_h_wait_world(&ts_h, 0, 16, WAIT_MS)) {
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    ts_h_signal(&ts_h, orch_idx, SIGTERM);
    int rc = ts_h_wait(&ts_h, orch_idx, 8000);
    if (rc != 0) {
        fprintf(stderr, "it_sim: tessera-orch exited with %d after SIGTERM\n", rc);
        ts_h_fail_dump(&ts_h);
    }
    ts_h_stop(&ts_h);
    pthread_mutex_destroy(&HB.mu);
    return rc == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_sim_detects_unapplied_inputs),
        TS_H_TEST(test_via_gateway_detects_unapplied_inputs),
        TS_H_TEST(test_sim_inputs_applied_exactly_once),
        TS_H_TEST(test_ctl_reports_running_system),
    };
    return TS_H_RUN("it_sim", tests, group_setup, group_teardown);
}
