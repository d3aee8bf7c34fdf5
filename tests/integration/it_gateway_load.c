/* 2,000 real clients through one gateway: real nats-server -js and
 * redis-server, tessera-orch, workers w1 and w2, one tessera-gateway and
 * `tessera-sim --via-gateway` (one event loop, one TCP connection per
 * client; with --ws, it_gateway_load_ws, the gateway also listens on
 * gateway.ws_listen and every client, the readiness probe's too, plays
 * over WebSocket: `--via-gateway ws://...`). What players rely on, for
 * every one of them: it joins, its Moves are applied exactly once (its own
 * entity's inputs_applied ends equal to what it sent: nothing missing,
 * nothing doubled), and it receives Deltas.
 *
 * Shape: a 16x16-cell world so the crowd spreads over 256 cells and two
 * workers, and an area of interest of the player's own cell, so the
 * gateway's output stays proportional to the crowd (~8 neighbours per
 * client) rather than its square; Moves at 2 Hz for 10 s. The sim's exit
 * status and its summary lines are the verdict; its log is printed when
 * the test fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "probe.h"
#include "tessera/client.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 256
#define CLIENTS 2000
#define READY_MS 60000
#define SIM_TIMEOUT_MS 150000

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static int http_port; /* the gateway's /metrics */

/* The stack is ready when a client can join and see its Join applied: the
 * gateway knows the cells and a worker owns and runs the cell. */
static bool probe_join(int port, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    while (ts_mono_us() < deadline) {
        ts_client_t *c = NULL;
        if (ts_h_client_connect(&c, port, 2000) != TS_OK) {
            ts_sleep_ms(200);
            continue;
        }
        bool applied = false;
        uint64_t entity = 0;
        if (ts_client_hello(c, "probe") == TS_OK && ts_client_join(c, 0.5, 0.5, "probe") == TS_OK) {
            while (!applied && ts_mono_us() < deadline) {
                Tessera__V1__ServerFrame *f = NULL;
                if (ts_client_recv(c, 1000, &f) == TS_ERR_TIMEOUT) continue;
                if (f == NULL) break;
                if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
                    /* it holds the own entity once the Join was applied */
                    entity = f->snapshot->entity;
                    for (size_t i = 0; i < f->snapshot->n_entities; i++)
                        if (f->snapshot->entities[i]->id == entity &&
                            f->snapshot->entities[i]->inputs_applied >= 1)
                            applied = true;
                }
                if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA && entity != 0)
                    for (size_t i = 0; i < f->delta->n_entities; i++)
                        if (f->delta->entities[i]->id == entity && f->delta->entities[i]->inputs_applied >= 1)
                            applied = true;
                bool error = f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR;
                tessera__v1__server_frame__free_unpacked(f, NULL);
                if (error) break; /* e.g. the gateway has not read the registry yet */
            }
            (void)ts_client_leave(c);
        }
        ts_client_destroy(c);
        if (applied) return true;
        ts_sleep_ms(200);
    }
    return false;
}

static void test_2000_clients_inputs_applied_exactly_once(void **state)
{
    (void)state;
    char addr[64], players[32];
    if (ts_h_ws)
        snprintf(addr, sizeof addr, "ws://127.0.0.1:%d/ws", ts_h_player_port(stack.gw_port));
    else
        snprintf(addr, sizeof addr, "127.0.0.1:%d", stack.gw_port);
    snprintf(players, sizeof players, "--sim.players=%d", CLIENTS);
    const char *args[] = {"--via-gateway", addr, players, "--sim.rate_hz=2", "--sim.duration_s=10", NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", args);
    int rc = ts_h_wait(&ts_h, sim, SIM_TIMEOUT_MS);
    char *log = ts_h_read_log(&ts_h, sim);
    assert_non_null(log);
    ts_probe_gw_verdict_t r;
    ts_probe_gw_verdict(log, &r);
    free(log);
    if (rc != 0 || !r.have_final || !r.have_latency || !r.have_over || !r.have_no_delta) {
        ts_h.failed = true;
        fail_msg("tessera-sim --via-gateway %s exited with %d (final line %s, summary %s)", addr, rc,
                 r.have_final && r.have_latency ? "found" : "missing",
                 r.have_over && r.have_no_delta ? "found" : "missing");
    }
    assert_int_equal(r.clients, CLIENTS);
    assert_int_equal(r.connected, CLIENTS);
    /* every client sent its Join and about 2 Moves a second for 10 s */
    assert_true(r.sent >= (unsigned long long)CLIENTS * 15);
    assert_int_equal(r.applied, r.sent);
    assert_int_equal(r.missing, 0);
    assert_int_equal(r.doubled, 0);
    assert_int_equal(r.clients_over, 0);
    assert_int_equal(r.errors, 0);
    assert_int_equal(r.no_delta, 0);
    assert_true(r.deltas_pc > 0);
    assert_true(r.bytes_pc > 0);
    /* on TCP, the fan-outs to ~1,000 clients went through the writer
     * threads: what the clients got above is what they wrote */
    if (!ts_h_ws) assert_true(ts_h_metric(http_port, "tessera_gateway_fanout_threaded_writes_total") > 0);
    ts_h_pass();
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    const char *orch_args[] = {"--world.width=16", "--world.height=16", "--world.x0=-8", "--world.y0=-8",
                               NULL};
    http_port = ts_h_free_port();
    char http_arg[64];
    snprintf(http_arg, sizeof http_arg, "--gateway.http_listen=127.0.0.1:%d", http_port);
    const char *gw_args[] = {"--gateway.aoi_radius=0", "--gateway.fanout_threads=1", http_arg, NULL};
    ts_h_spawn_stack(&ts_h, orch_args, NULL, gw_args, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, READY_MS) || !ts_h_wait_port(stack.gw_port, READY_MS) ||
        !probe_join(stack.gw_port, READY_MS)) {
        fprintf(stderr, "it_gateway_load: the stack did not become ready within %d s\n", READY_MS / 1000);
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    ts_h_ws_main(argc, argv); /* --ws: every client on WebSocket */
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_2000_clients_inputs_applied_exactly_once),
    };
    return TS_H_RUN(ts_h_ws ? "it_gateway_load_ws" : "it_gateway_load", tests, group_setup,
                    ts_h_group_teardown);
}
