/* A node of a 3-node JetStream cluster dies under load and comes back:
 * three nats-server nodes secured as `make run` secures one (per-service
 * users and permissions), redis-server, tessera-orch, workers w1 and w2 and
 * a gateway, every stream replicated three times (--stream.replicas=3), a
 * tessera-sim publishing straight into the input streams and a second one
 * playing through the gateway as real TCP clients.
 *
 * What users rely on, asserted here:
 *  - the input stream really has three current replicas before the kill;
 *  - SIGKILL of the node that leads the input stream: the stream gets a new
 *    leader, every service reconnects to a live node and inputs keep being
 *    applied, with no input JetStream acknowledged lost;
 *  - the node restarted on its store rejoins and catches up (three current
 *    replicas again) while the load goes on;
 *  - exact counts at the end: the sim's applied == acked == sent; no
 *    gateway client's input is applied twice, every input missing from a
 *    client's own entity was reported to it as not stored (the gateway
 *    reports inputs it held longer than 5 s while the stream had no leader),
 *    and with none reported every client's entity shows exactly the inputs
 *    it sent, no client was dropped and every client got Deltas. */
#include <inttypes.h>
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
#include "ledger.h"
#include "probe.h"
#include "tessera/bus.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define WAIT_MS 30000
#define SIM_PLAYERS "--sim.players=200"
#define GW_CLIENTS 100
#define LOAD_INPUTS 3000     /* applied before the kill */
#define PROGRESS_INPUTS 3000 /* applied after the kill, and again after the restart */
#define RESUME_MAX_MS 30000  /* a new leader and progress after the kill, at most */
#define REJOIN_MAX_MS 60000  /* the restarted node healthy and caught up, at most */

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static ts_bus_t *bus;
static ts_probe_t *probe;
static ts_ledger_t *ledger;

/* The input stream's leader and how many of its replicas are current,
 * polled until want_current (and a leader other than not_node) or the
 * timeout; returns the leader or -1. */
static int wait_stream(const char *stream, int want_current, int not_node, int64_t timeout_ms, int *current)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    int leader;
    do {
        leader = ts_h_cluster_stream_leader(&ts_h, stream, current);
        if (leader >= 0 && leader != not_node && *current >= want_current) return leader;
        ts_sleep_ms(50);
    } while (ts_mono_us() < deadline);
    return -1;
}

/* Polls the workers' heartbeats until inputs_applied grew by at least n
 * since from; returns how long it took in ms, or -1 after timeout_ms. */
static int64_t wait_progress(uint64_t from, uint64_t n, int64_t timeout_ms)
{
    uint64_t start = ts_mono_us(), deadline = start + (uint64_t)timeout_ms * 1000;
    while (ts_mono_us() < deadline) {
        if (ts_probe_inputs_applied(probe) >= from + n) return (int64_t)(ts_mono_us() - start) / 1000;
        ts_sleep_ms(20);
    }
    return -1;
}

/* Both workers heartbeated after since_us (they reach NATS again). */
static bool workers_heard_since(uint64_t since_us, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    while (ts_mono_us() < deadline) {
        ts_probe_hb_t a, b;
        if (ts_probe_heartbeat(probe, "w1", &a) && ts_probe_heartbeat(probe, "w2", &b) &&
            a.received_us > since_us && b.received_us > since_us)
            return true;
        ts_sleep_ms(20);
    }
    return false;
}

static void start_stack(void)
{
    ts_h_start_cluster(&ts_h, TS_H_SECURE);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_urls, "it_cluster"), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    assert_int_equal(ts_ledger_create(&ledger, bus, WORLD), TS_OK);
    const char *orch[] = {"--stream.replicas=3", "--orch.rebalance=0", NULL};
    const char *worker[] = {"--stream.replicas=3", NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the world or the gateway did not come up");
    }
    bool ctl_ok, bound;
    ts_probe_wait_ready(probe, bus, WORLD, NCELLS / 2, WAIT_MS, &ctl_ok, &bound);
    if (!ctl_ok || !bound) {
        ts_h.failed = true;
        fail_msg("the stack is not ready: orchestrator %s, workers %s", ctl_ok ? "answers" : "silent",
                 bound ? "bound" : "not bound");
    }
}

static void stop_stack(void)
{
    ts_ledger_destroy(ledger);
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ledger = NULL;
    probe = NULL;
    bus = NULL;
    ts_h_stop(&ts_h);
}

static void test_node_killed_and_restarted_under_load(void **state)
{
    (void)state;
    start_stack();
    char input_stream[64];
    ts_bus_input_stream(input_stream, sizeof input_stream, WORLD);
    int current = 0;
    int leader = wait_stream(input_stream, TS_H_CLUSTER_NODES, -1, WAIT_MS, &current);
    if (leader < 0) {
        ts_h.failed = true;
        fail_msg("%s has %d current replicas, want %d", input_stream, current, TS_H_CLUSTER_NODES);
    }

    const char *sim_args[] = {SIM_PLAYERS, "--sim.seed=5", NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", sim_args);
    char addr[64], clients[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", stack.gw_port);
    snprintf(clients, sizeof clients, "--sim.players=%d", GW_CLIENTS);
    const char *gw_sim_args[] = {"--via-gateway", addr, clients, "--sim.rate_hz=5", "--sim.seed=6", NULL};
    int gw_sim = ts_h_spawn(&ts_h, "sim-gw", "tessera-sim", gw_sim_args);
    if (wait_progress(0, LOAD_INPUTS, WAIT_MS) < 0) {
        ts_h.failed = true;
        fail_msg("fewer than %d inputs applied %d s into the load", LOAD_INPUTS, WAIT_MS / 1000);
    }

    /* SIGKILL the input stream's leader */
    leader = ts_h_cluster_stream_leader(&ts_h, input_stream, &current);
    assert_true(leader >= 0);
    uint64_t applied_at_kill = ts_probe_inputs_applied(probe);
    uint64_t t_kill = ts_mono_us();
    ts_h_cluster_kill(&ts_h, leader);
    int new_leader = wait_stream(input_stream, 1, leader, RESUME_MAX_MS, &current);
    uint64_t t_elected = ts_mono_us();
    int64_t resume_ms = wait_progress(applied_at_kill, PROGRESS_INPUTS, RESUME_MAX_MS);
    fprintf(stderr,
            "killed n%d (leader of %s): new leader n%d after %.0f ms, %d inputs more applied after %lld ms\n",
            leader, input_stream, new_leader, (double)(t_elected - t_kill) / 1000, PROGRESS_INPUTS,
            (long long)resume_ms);
    if (new_leader < 0 || resume_ms < 0) {
        ts_h.failed = true;
        fail_msg("after SIGKILL of n%d: %s", leader,
                 new_leader < 0 ? "the input stream got no new leader" : "inputs stopped being applied");
    }
    if (!workers_heard_since(t_kill, RESUME_MAX_MS)) {
        ts_h.failed = true;
        fail_msg("a worker sent no heartbeat after the kill");
    }

    /* bring it back on its store: it rejoins and catches up under load */
    uint64_t t_restart = ts_mono_us();
    if (!ts_h_cluster_restart(&ts_h, leader, REJOIN_MAX_MS)) {
        ts_h.failed = true;
        fail_msg("n%d did not come back healthy within %d s", leader, REJOIN_MAX_MS / 1000);
    }
    int back = wait_stream(input_stream, TS_H_CLUSTER_NODES, -1, REJOIN_MAX_MS, &current);
    fprintf(stderr, "n%d restarted: healthy, %d current replicas of %s after %.0f ms\n", leader, current,
            input_stream, (double)(ts_mono_us() - t_restart) / 1000);
    if (back < 0) {
        ts_h.failed = true;
        fail_msg("%s has %d current replicas after n%d came back, want %d", input_stream, current, leader,
                 TS_H_CLUSTER_NODES);
    }
    if (wait_progress(ts_probe_inputs_applied(probe), PROGRESS_INPUTS, RESUME_MAX_MS) < 0) {
        ts_h.failed = true;
        fail_msg("inputs stopped being applied after n%d came back", leader);
    }

    /* exact counts: the gateway's clients, then the sim */
    ts_h_signal(&ts_h, gw_sim, SIGINT);
    int rc = ts_h_wait(&ts_h, gw_sim, 60000);
    char *gw_log = ts_h_read_log(&ts_h, gw_sim);
    ts_probe_gw_verdict_t r;
    ts_probe_gw_verdict(gw_log, &r);
    free(gw_log);
    fprintf(
        stderr,
        "gateway clients: %llu of %llu connected, sent %llu applied %llu missing %llu doubled %llu errors "
        "%llu not stored %llu without Deltas %llu\n",
        r.connected, r.clients, r.sent, r.applied, r.missing, r.doubled, r.errors, r.not_stored, r.no_delta);
    if ((rc != 0 && rc != 2) || !r.have_final || !r.have_over || !r.have_no_delta || !r.have_not_stored) {
        ts_h.failed = true;
        fail_msg("tessera-sim --via-gateway exited with %d (final line %s)", rc,
                 r.have_final ? "found" : "missing");
    }
    assert_int_equal(r.clients, GW_CLIENTS);
    assert_int_equal(r.connected, GW_CLIENTS);
    assert_true(r.sent > 0);
    assert_int_equal(r.doubled, 0);
    assert_int_equal(r.no_delta, 0);
    /* Every input is applied exactly once, none reported as not stored: a
     * gateway holds a cell's inputs behind the batch in flight while the bus
     * rides out the leader election (GW_INPUT_MAX_WAIT_US counts from the
     * cell's last progress and is above the bus's retry window). */
    if (r.missing > 0 || r.not_stored > 0) {
        ts_h.failed = true;
        fail_msg("gateway clients: %llu inputs never applied, %llu reported not stored (want 0 and 0)",
                 r.missing, r.not_stored);
    }
    assert_int_equal(rc, 0); /* no client dropped either */
    assert_int_equal(r.applied, r.sent);
    assert_int_equal(r.errors, 0);

    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, sim, ledger, "the node kill", t_kill, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, want 0 with applied == acked == sent > 0; its verdict: %s", rc, v.line);
    }
    stop_stack();
    ts_h_pass();
}

/* A stream made with one replica gets three when a service ensures it with
 * stream.replicas=3 (an existing deployment moved to a cluster), and keeps
 * its messages. */
static void test_stream_replicas_raised(void **state)
{
    (void)state;
    ts_h_start_cluster(&ts_h, TS_H_OPEN);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_urls, "it_cluster"), TS_OK);
    char stream[64];
    ts_bus_input_stream(stream, sizeof stream, 5);
    assert_int_equal(ts_bus_ensure_streams(bus, 5, "file", 60, 1), TS_OK);
    uint64_t seq = 0;
    for (int i = 0; i < 10; i++) {
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .seq = (uint64_t)i + 1};
        assert_int_equal(ts_bus_js_publish(bus, "cell.5.0.0.0.0.input.w", &hdr, "x", 1, 5000, &seq), TS_OK);
    }
    int current = 0;
    assert_true(wait_stream(stream, 1, -1, WAIT_MS, &current) >= 0);
    assert_int_equal(current, 1);

    assert_int_equal(ts_bus_ensure_streams(bus, 5, "file", 60, 3), TS_OK);
    int leader = wait_stream(stream, TS_H_CLUSTER_NODES, -1, WAIT_MS, &current);
    if (leader < 0) {
        ts_h.failed = true;
        fail_msg("%s has %d current replicas after it was ensured with 3", stream, current);
    }
    ts_bus_msg_t *last = NULL;
    assert_int_equal(ts_bus_last_msg(bus, stream, "cell.5.0.0.0.0.input.*", &last), TS_OK);
    assert_int_equal(ts_bus_msg_stream_seq(last), seq);
    ts_bus_msg_destroy(last);
    stop_stack();
    ts_h_pass();
}

static int test_teardown(void **state)
{
    ts_h_test_teardown(state);
    stop_stack();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_node_killed_and_restarted_under_load, ts_h_test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_stream_replicas_raised, ts_h_test_setup, test_teardown),
    };
    return TS_H_RUN("it_cluster", tests, NULL, NULL);
}
