/* tessera-gateway end to end: real nats-server -js and redis-server,
 * tessera-orch, workers w1 and w2 and a gateway. What players rely on:
 * their inputs reach the worker exactly once (also while their entity
 * crosses from w1's cells to w2's on one connection), they see their entity
 * move in Delta frames, bad frames from one client cost that client its
 * connection and nobody else anything, and the CLI works against it.
 *
 * `it_gateway --ws` runs the same tests with the players on WebSocket
 * (gateway.ws_listen, one binary message per frame), plus the WebSocket
 * framing errors. */
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
#include "tessera/client.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static bool use_ws; /* players connect over WebSocket */
static int ws_port; /* gateway.ws_listen */

/* One connected player and what its frames told it. */
typedef struct {
    ts_client_t *c;
    uint64_t entity;
    bool closed;
    bool me_seen;
    Tessera__V1__EntityState me; /* latest own state (name not kept) */
    double first_x;
    bool first_x_set;
    uint64_t max_applied;
    int deltas;
    int cell_changes;
    Tessera__V1__CellId last_to;
    Tessera__V1__CellId frame_cell; /* cell of the latest frame that named one */
    int errors;
    Tessera__V1__ErrorCode last_error;
    bool last_error_fatal;
} player_t;

static void player_connect(player_t *p)
{
    memset(p, 0, sizeof *p);
    if (use_ws)
        assert_int_equal(ts_client_connect_ws(&p->c, "127.0.0.1", ws_port, NULL, 3000), TS_OK);
    else
        assert_int_equal(ts_client_connect(&p->c, "127.0.0.1", stack.gw_port, 3000), TS_OK);
}

static void player_close(player_t *p)
{
    ts_client_destroy(p->c);
    p->c = NULL;
}

/* The own entity among a Snapshot's or Delta's entities. */
static void note_entities(player_t *p, Tessera__V1__EntityState *const *es, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const Tessera__V1__EntityState *e = es[i];
        if (p->entity == 0 || e->id != p->entity) continue;
        p->me = *e;
        p->me.name = NULL;
        p->me_seen = true;
        if (!p->first_x_set) {
            p->first_x = e->x;
            p->first_x_set = true;
        }
        if (e->inputs_applied > p->max_applied) p->max_applied = e->inputs_applied;
    }
}

static void note_frame(player_t *p, const Tessera__V1__ServerFrame *f)
{
    if (f->cell != NULL) p->frame_cell = *f->cell;
    switch (f->payload_case) {
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT:
        p->entity = f->snapshot->entity;
        note_entities(p, f->snapshot->entities, f->snapshot->n_entities);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA:
        p->deltas++;
        note_entities(p, f->delta->entities, f->delta->n_entities);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_CELL_CHANGED:
        p->cell_changes++;
        if (f->cell_changed->to != NULL) p->last_to = *f->cell_changed->to;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR:
        p->errors++;
        p->last_error = f->error->code;
        p->last_error_fatal = f->error->fatal;
        break;
    default:
        break;
    }
}

/* Receives until a frame with payload `want` (returned, caller frees) or
 * timeout (NULL). Every frame on the way updates p. */
static Tessera__V1__ServerFrame *recv_until(player_t *p, int want, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    while (!p->closed) {
        uint64_t now = ts_mono_us();
        if (now >= deadline) return NULL;
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(p->c, (int64_t)((deadline - now) / 1000) + 1, &f);
        if (st == TS_ERR_TIMEOUT) return NULL;
        if (st != TS_OK) {
            p->closed = true;
            return NULL;
        }
        note_frame(p, f);
        if ((int)f->payload_case == want) return f;
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return NULL;
}

/* Receives for ms milliseconds (or until closed). */
static void pump(player_t *p, int64_t ms)
{
    Tessera__V1__ServerFrame *f = recv_until(p, -1, ms);
    assert_null(f);
}

static void expect_pong(player_t *p)
{
    uint64_t t = ts_now_us();
    assert_int_equal(ts_client_ping(p->c, t), TS_OK);
    Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG, 3000);
    assert_non_null(f);
    assert_int_equal(f->pong->client_time_us, t);
    assert_true(f->pong->server_time_us > 0);
    tessera__v1__server_frame__free_unpacked(f, NULL);
}

static void expect_error(player_t *p, Tessera__V1__ErrorCode code, bool fatal)
{
    Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR, 3000);
    assert_non_null(f);
    assert_int_equal(f->error->code, code);
    assert_int_equal(f->error->fatal, fatal);
    assert_true(strlen(f->error->message) > 0);
    tessera__v1__server_frame__free_unpacked(f, NULL);
}

/* Joins at (x, y); returns the Snapshot frame's cell. */
static Tessera__V1__CellId join_at(player_t *p, double x, double y)
{
    assert_int_equal(ts_client_join(p->c, x, y, "it"), TS_OK);
    Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000);
    assert_non_null(f);
    assert_non_null(f->cell);
    assert_true(f->snapshot->entity != 0);
    assert_true(f->epoch >= 1);
    Tessera__V1__CellId cell = *f->cell;
    tessera__v1__server_frame__free_unpacked(f, NULL);
    return cell;
}

/* Waits until the player's own entity shows `applied` inputs and
 * last_input_seq == seq, and stays there for a second (no late doubles). */
static void expect_applied(player_t *p, uint64_t applied, uint64_t seq, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    while (ts_mono_us() < deadline && !p->closed) {
        if (p->me_seen && p->me.inputs_applied >= applied && p->me.last_input_seq >= seq) break;
        pump(p, 100);
    }
    assert_false(p->closed);
    assert_true(p->me_seen);
    pump(p, 1000);
    assert_int_equal(p->me.inputs_applied, applied);
    assert_int_equal(p->me.last_input_seq, seq);
    assert_int_equal(p->max_applied, applied);
}

static void test_join_move_ping(void **state)
{
    (void)state;
    player_t p;
    player_connect(&p);

    assert_int_equal(ts_client_hello(p.c, "it"), TS_OK);
    Tessera__V1__ServerFrame *f = recv_until(&p, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000);
    assert_non_null(f);
    assert_int_equal(f->welcome->protocol_version, TS_PROTOCOL_VERSION);
    assert_int_equal(f->welcome->entity, 0);
    assert_true(f->welcome->cell_size == 100.0);
    assert_true(strlen(f->welcome->gateway) > 0);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    Tessera__V1__CellId cell = join_at(&p, 10, 10);
    assert_int_equal(cell.cx, 0);
    assert_int_equal(cell.cy, 0);
    uint64_t sent = 1;

    for (int i = 0; i < 10; i++) {
        assert_int_equal(ts_client_move(p.c, 20, 0), TS_OK);
        sent++;
        pump(&p, 100);
    }
    uint64_t last_seq = ts_client_last_seq(p.c);
    expect_pong(&p);
    expect_applied(&p, sent, last_seq, 10000);
    assert_true(p.deltas > 0);
    assert_true(p.me.x > p.first_x);
    assert_true(p.me.vx > 0);

    /* Welcome after the join names the entity */
    assert_int_equal(ts_client_hello(p.c, "it"), TS_OK);
    f = recv_until(&p, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000);
    assert_non_null(f);
    assert_int_equal(f->welcome->entity, p.entity);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    assert_int_equal(ts_client_leave(p.c), TS_OK);
    expect_pong(&p);
    assert_int_equal(p.errors, 0);
    player_close(&p);
    ts_h_pass();
}

static void test_walk_across_workers(void **state)
{
    (void)state;
    player_t p;
    player_connect(&p);
    Tessera__V1__CellId cell = join_at(&p, -30, 50);
    assert_int_equal(cell.cx, -1);
    assert_int_equal(cell.cy, 0);
    uint64_t sent = 1;

    /* 100 moves over ~4 s at 25 units/s: x goes from -30 across 0 to ~70,
     * then it stops there, well inside cell (0, 0) */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(ts_client_move(p.c, 25, 0), TS_OK);
        sent++;
        pump(&p, 40);
        assert_false(p.closed);
    }
    assert_int_equal(ts_client_move(p.c, 0, 0), TS_OK);
    sent++;
    uint64_t last_seq = ts_client_last_seq(p.c);
    uint64_t deadline = ts_mono_us() + 10000000;
    while (p.cell_changes == 0 && ts_mono_us() < deadline && !p.closed)
        pump(&p, 100);
    assert_true(p.cell_changes >= 1);
    assert_int_equal(p.last_to.cx, 0);
    assert_int_equal(p.last_to.cy, 0);

    expect_applied(&p, sent, last_seq, 10000);
    assert_true(p.me.x > 0);
    /* frames now speak of the new cell */
    assert_int_equal(p.frame_cell.cx, 0);
    assert_int_equal(p.frame_cell.cy, 0);

    assert_int_equal(ts_client_move(p.c, 0, 0), TS_OK);
    expect_pong(&p);
    assert_int_equal(p.errors, 0);
    assert_false(p.closed);
    /* the gateway spoke all along: no worker ever took it for gone */
    for (int i = 0; i < 2; i++)
        assert_false(ts_h_log_has(&ts_h, stack.workers[i], ") is gone:"));
    player_close(&p);
    ts_h_pass();
}

static bool gateway_alive(void)
{
    return ts_h_wait(&ts_h, stack.gateway, 0) == -1;
}

static void test_bad_frames_isolated(void **state)
{
    (void)state;
    player_t good;
    player_connect(&good);
    join_at(&good, 50, -50);
    assert_int_equal(ts_client_move(good.c, 5, 0), TS_OK);
    pump(&good, 500);

    /* 5 bytes that are not a ClientFrame */
    player_t bad;
    player_connect(&bad);
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(ts_client_send_message(bad.c, garbage, sizeof garbage), TS_OK);
    expect_error(&bad, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, true);
    pump(&bad, 2000);
    assert_true(bad.closed);
    player_close(&bad);

    /* a frame announcing 10 MB */
    player_connect(&bad);
    if (use_ws) {
        /* FIN + binary, masked, 64-bit length 0xA00000, its mask key and
         * one payload byte: refused at wslay's first report of the frame,
         * before anything of the 10 MB is buffered */
        const uint8_t huge[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0xa0, 0, 0, 1, 2, 3, 4, 9};
        assert_int_equal(ts_client_send_raw(bad.c, huge, sizeof huge), TS_OK);
    } else {
        uint8_t huge[TS_FRAME_HEADER];
        ts_frame_put_header(huge, 10u * 1024 * 1024);
        assert_int_equal(ts_client_send_raw(bad.c, huge, sizeof huge), TS_OK);
    }
    expect_error(&bad, TESSERA__V1__ERROR_CODE__ERROR_OVERSIZED, true);
    pump(&bad, 2000);
    assert_true(bad.closed);
    player_close(&bad);

    if (use_ws) {
        /* the same with its header and first payload bytes in separate writes */
        player_connect(&bad);
        const uint8_t huge[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0xa0, 0, 0, 1, 2, 3, 4};
        const uint8_t first[] = {9, 9, 9, 9, 9, 9, 9, 9};
        assert_int_equal(ts_client_send_raw(bad.c, huge, sizeof huge), TS_OK);
        pump(&bad, 200); /* nothing to refuse yet: a header alone is a client saying nothing */
        assert_false(bad.closed);
        assert_int_equal(bad.errors, 0);
        assert_int_equal(ts_client_send_raw(bad.c, first, sizeof first), TS_OK);
        expect_error(&bad, TESSERA__V1__ERROR_CODE__ERROR_OVERSIZED, true);
        pump(&bad, 2000);
        assert_true(bad.closed);
        player_close(&bad);
        /* a message of three fragments, the third one passing the maximum */
        player_connect(&bad);
        const uint8_t frag[] = {0x02, 0xfe, 0x7f, 0xff, 0, 0, 0, 0};
        const uint8_t zeros[4096] = {0};
        assert_int_equal(ts_client_send_raw(bad.c, frag, sizeof frag), TS_OK);
        for (size_t sent = 0; sent < 0x7fff; sent += sizeof zeros)
            assert_int_equal(
                ts_client_send_raw(bad.c, zeros, 0x7fff - sent < sizeof zeros ? 0x7fff - sent : sizeof zeros),
                TS_OK);
        const uint8_t frag2[] = {0x00, 0xfe, 0x7f, 0xff, 0, 0, 0, 0};
        assert_int_equal(ts_client_send_raw(bad.c, frag2, sizeof frag2), TS_OK);
        for (size_t sent = 0; sent < 0x7fff; sent += sizeof zeros)
            assert_int_equal(
                ts_client_send_raw(bad.c, zeros, 0x7fff - sent < sizeof zeros ? 0x7fff - sent : sizeof zeros),
                TS_OK);
        const uint8_t frag3[] = {0x80, 0x84, 0, 0,
                                 0,    0,    7}; /* 4 more bytes: 65,538 in all; the first of them */
        assert_int_equal(ts_client_send_raw(bad.c, frag3, sizeof frag3), TS_OK);
        expect_error(&bad, TESSERA__V1__ERROR_CODE__ERROR_OVERSIZED, true);
        pump(&bad, 2000);
        assert_true(bad.closed);
        player_close(&bad);
    }

    /* a frame without payload */
    player_connect(&bad);
    const uint8_t empty[] = {0x08, 0x01}; /* seq = 1, nothing else */
    assert_int_equal(ts_client_send_message(bad.c, empty, sizeof empty), TS_OK);
    expect_error(&bad, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, true);
    player_close(&bad);

    if (use_ws) {
        /* WebSocket frames RFC 6455 forbids, each: the Error, then the close */
        const uint8_t unmasked[] = {0x82, 0x02, 0x08, 0x01};
        const uint8_t text[] = {0x81, 0x82, 0, 0, 0, 0, 'h', 'i'};
        const uint8_t rsv[] = {0xc2, 0x82, 0, 0, 0, 0, 0x08, 0x01};
        const uint8_t bad_opcode[] = {0x83, 0x80, 0, 0, 0, 0};
        const uint8_t long_ping[] = {0x89, 0xfe, 0x00, 0x80, 0, 0, 0, 0};
        const uint8_t lone_continuation[] = {0x80, 0x80, 0, 0, 0, 0};
        const struct {
            const uint8_t *bytes;
            size_t len;
        } cases[] = {{unmasked, sizeof unmasked},
                     {text, sizeof text},
                     {rsv, sizeof rsv},
                     {bad_opcode, sizeof bad_opcode},
                     {long_ping, sizeof long_ping},
                     {lone_continuation, sizeof lone_continuation}};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            player_connect(&bad);
            assert_int_equal(ts_client_send_raw(bad.c, cases[i].bytes, cases[i].len), TS_OK);
            expect_error(&bad, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, true);
            pump(&bad, 2000);
            assert_true(bad.closed);
            player_close(&bad);
        }
    }

    /* the well-behaved client did not notice */
    int deltas = good.deltas;
    pump(&good, 1000);
    assert_false(good.closed);
    assert_true(good.deltas > deltas + 5);
    expect_pong(&good);

    /* a sequence number going backwards is refused, not fatal */
    Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
    ping.client_time_us = 42;
    Tessera__V1__ClientFrame cf = TESSERA__V1__CLIENT_FRAME__INIT;
    cf.seq = 1;
    cf.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
    cf.ping = &ping;
    assert_int_equal(ts_client_send(good.c, &cf), TS_OK);
    expect_error(&good, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false);
    /* the connection goes on once the sequence moves forward again */
    cf.seq = 1000;
    assert_int_equal(ts_client_send(good.c, &cf), TS_OK);
    Tessera__V1__ServerFrame *f = recv_until(&good, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG, 3000);
    assert_non_null(f);
    assert_int_equal(f->pong->client_time_us, 42);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    expect_pong(&good);
    assert_int_equal(good.errors, 1);

    assert_true(gateway_alive());
    player_close(&good);
    ts_h_pass();
}

static void test_protocol_errors(void **state)
{
    (void)state;
    player_t p;
    player_connect(&p);

    assert_int_equal(ts_client_move(p.c, 1, 0), TS_OK);
    expect_error(&p, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false);

    assert_int_equal(ts_client_join(p.c, 5000, 5000, "far"), TS_OK);
    expect_error(&p, TESSERA__V1__ERROR_CODE__ERROR_UNKNOWN_CELL, false);

    join_at(&p, -150, -150);
    assert_int_equal(ts_client_join(p.c, 0, 0, "again"), TS_OK);
    expect_error(&p, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false);

    /* over the rate limit: frames dropped with a non-fatal error */
    for (int i = 0; i < 400; i++)
        assert_int_equal(ts_client_ping(p.c, 7), TS_OK);
    int pongs = 0, rate_errors = 0;
    for (;;) {
        Tessera__V1__ServerFrame *f = recv_until(&p, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG, 1000);
        if (f == NULL) break;
        pongs++;
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    rate_errors = p.last_error == TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT;
    assert_true(rate_errors);
    assert_false(p.last_error_fatal);
    assert_true(pongs < 400);
    assert_true(pongs >= 150);
    ts_sleep_ms(1100);
    expect_pong(&p);
    assert_false(p.closed);
    player_close(&p);
    ts_h_pass();
}

static void test_flood_is_fatal(void **state)
{
    (void)state;
    player_t p;
    player_connect(&p);
    /* ~5000 frames/s for up to 4 s: far above 10 x the 200 frames/s limit */
    uint64_t until = ts_mono_us() + 4000000;
    while (ts_mono_us() < until && !p.closed) {
        for (int i = 0; i < 100; i++) {
            if (ts_client_ping(p.c, 9) != TS_OK) {
                p.closed = true;
                break;
            }
        }
        pump(&p, 20);
        if (p.last_error_fatal) break;
    }
    pump(&p, 2000);
    assert_true(p.errors >= 2);
    assert_int_equal(p.last_error, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT);
    assert_true(p.last_error_fatal);
    assert_true(p.closed);
    assert_true(gateway_alive());
    player_close(&p);
    ts_h_pass();
}

static bool delta_has(player_t *p, uint64_t id, int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000;
    while (ts_mono_us() < deadline) {
        Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA, 200);
        if (f == NULL) continue;
        bool found = false;
        for (size_t i = 0; i < f->delta->n_entities; i++)
            found = found || f->delta->entities[i]->id == id;
        tessera__v1__server_frame__free_unpacked(f, NULL);
        if (found) return true;
    }
    return false;
}

/* One Delta per tick: a client whose area of interest holds cells of both
 * workers, each with a player walking (so each publishes state every
 * tick), gets at most one Delta per tick period, and every one of them
 * moves both walkers (both workers tick at the same instants and the
 * gateway waits for the tick's cells before it sends). Without that it
 * got one per worker per tick. */
static void test_one_delta_per_tick(void **state)
{
    (void)state;
    player_t a, b, o;
    player_connect(&a);
    player_connect(&b);
    player_connect(&o);
    Tessera__V1__CellId ca = join_at(&a, -20, 20);
    Tessera__V1__CellId cb = join_at(&b, 20, 20);
    assert_int_equal(ca.cx, -1); /* w1's */
    assert_int_equal(cb.cx, 0);  /* w2's */
    join_at(&o, 0, 50);
    /* 2 units/s north: both stay in their cells for the whole test */
    assert_int_equal(ts_client_move(a.c, 0, 2), TS_OK);
    assert_int_equal(ts_client_move(b.c, 0, 2), TS_OK);
    assert_true(delta_has(&o, a.entity, 5000));
    assert_true(delta_has(&o, b.entity, 5000));
    pump(&o, 500); /* both cells are now "expected" every tick */

    const int64_t window_ms = 3000;
    int deltas = 0, with_both = 0;
    uint64_t start = ts_mono_us(), deadline = start + (uint64_t)window_ms * 1000;
    while (ts_mono_us() < deadline) {
        Tessera__V1__ServerFrame *f = recv_until(&o, TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA,
                                                 (int64_t)(deadline - ts_mono_us()) / 1000 + 1);
        if (f == NULL) break;
        if (ts_mono_us() >= deadline) {
            tessera__v1__server_frame__free_unpacked(f, NULL);
            break;
        }
        bool has_a = false, has_b = false;
        for (size_t i = 0; i < f->delta->n_entities; i++) {
            has_a = has_a || f->delta->entities[i]->id == a.entity;
            has_b = has_b || f->delta->entities[i]->id == b.entity;
        }
        deltas++;
        with_both += has_a && has_b;
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    /* 20 Hz: 60 tick periods in the window, 61 started in it at most */
    const int periods = (int)(window_ms / 50) + 1;
    ts_info("one delta per tick: %d Deltas in %lld ms (%d periods), %d moved both walkers", deltas,
            (long long)window_ms, periods, with_both);
    assert_true(deltas <= periods);
    assert_true(deltas >= periods / 2); /* state kept flowing */
    assert_int_equal(with_both, deltas);
    assert_false(o.closed);
    player_close(&a);
    player_close(&b);
    player_close(&o);
    ts_h_pass();
}

static void publish_state(ts_bus_t *bus, uint64_t epoch, uint64_t id)
{
    ts_cell_t cell = {.world = WORLD, .cx = 1, .cy = 1};
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &cell);
    Tessera__V1__EntityState e = TESSERA__V1__ENTITY_STATE__INIT;
    e.id = id;
    e.x = 160;
    e.y = 160;
    Tessera__V1__EntityState *ents[] = {&e};
    Tessera__V1__StateDelta d = TESSERA__V1__STATE_DELTA__INIT;
    d.cell = &cell_pb;
    d.epoch = epoch;
    d.n_entities = 1;
    d.entities = ents;
    d.owner = (char *)"impostor";
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_proto_pack(&d.base, &buf, &len), TS_OK);
    char subject[TS_SUBJECT_MAX];
    ts_subject_cell(subject, sizeof subject, &cell, TS_SUBJ_STATE);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_STATE_DELTA, .epoch = epoch, .seq = 1};
    assert_int_equal(ts_bus_publish(bus, subject, &hdr, buf, len), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    free(buf);
}

/* Publishes a StateDelta for cell (1, 1) as its owner would: ids at
 * (160, 160); full with part/parts for a keyframe (parts 0: not chunked). */
static void publish_cell_state(ts_bus_t *bus, uint64_t epoch, uint64_t tick, bool full, uint32_t part,
                               uint32_t parts, const uint64_t *ids, size_t n)
{
    ts_cell_t cell = {.world = WORLD, .cx = 1, .cy = 1};
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &cell);
    Tessera__V1__EntityState es[8];
    Tessera__V1__EntityState *ents[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        tessera__v1__entity_state__init(&es[i]);
        es[i].id = ids[i];
        es[i].x = 160;
        es[i].y = 160;
        ents[i] = &es[i];
    }
    Tessera__V1__StateDelta d = TESSERA__V1__STATE_DELTA__INIT;
    d.cell = &cell_pb;
    d.epoch = epoch;
    d.tick = tick;
    d.full = full;
    d.part = part;
    d.parts = parts;
    d.n_entities = n;
    d.entities = ents;
    d.owner = (char *)"it";
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_proto_pack(&d.base, &buf, &len), TS_OK);
    char subject[TS_SUBJECT_MAX];
    ts_subject_cell(subject, sizeof subject, &cell, TS_SUBJ_STATE);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_STATE_DELTA, .epoch = epoch, .seq = tick};
    assert_int_equal(ts_bus_publish(bus, subject, &hdr, buf, len), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    free(buf);
}

/* Receives Deltas for ms milliseconds; true if one of them removed id. */
static bool delta_removes(player_t *p, uint64_t id, int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000;
    bool found = false;
    while (!found && ts_mono_us() < deadline) {
        Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA, 100);
        if (f == NULL) continue;
        for (size_t i = 0; i < f->delta->n_removed; i++)
            found = found || f->delta->removed[i] == id;
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return found;
}

/* A keyframe split in parts removes the entities it does not list only
 * once its last part arrived: clients never see an entity vanish and come
 * back because the first part did not mention it. (An owner at a far
 * higher epoch than the registry's fences the real one out of cell (1, 1);
 * run late, the other tests do not use that cell afterwards.) */
static void test_chunked_keyframe(void **state)
{
    (void)state;
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it-gateway"), TS_OK);
    player_t p;
    player_connect(&p);
    join_at(&p, 150, 150);
    pump(&p, 300);

    const uint64_t epoch = 1000, a = 0x5a01, b = 0x5a02, c = 0x5a03;
    uint64_t ab[] = {a, b}, only_a[] = {a}, only_c[] = {c};
    publish_cell_state(bus, epoch, 10, false, 0, 0, ab, 2);
    assert_true(delta_has(&p, b, 2000));

    /* first of two parts of tick 11's keyframe: b is not in it, but the
     * keyframe is not complete */
    publish_cell_state(bus, epoch, 11, true, 0, 2, only_a, 1);
    bool early = delta_removes(&p, b, 700);
    /* the last part: now b is gone, a (first part) and c stay */
    publish_cell_state(bus, epoch, 11, true, 1, 2, only_c, 1);
    bool removed_b = delta_removes(&p, b, 2000);
    ts_bus_destroy(bus);
    bool removed_a = delta_removes(&p, a, 500);
    player_close(&p);
    assert_false(early);
    assert_true(removed_b);
    assert_false(removed_a);
    ts_h_pass();
}

static void test_stale_epoch_fenced(void **state)
{
    (void)state;
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it-gateway"), TS_OK);
    player_t p;
    player_connect(&p);
    join_at(&p, 150, 150);
    pump(&p, 500);

    /* a deposed owner (epoch 0, below the registry's 1) is not believed */
    publish_state(bus, 0, 0x7777);
    bool stale_seen = delta_has(&p, 0x7777, 1000);
    /* state at the current epoch is */
    publish_state(bus, 1, 0x7778);
    bool current_seen = delta_has(&p, 0x7778, 2000);
    ts_bus_destroy(bus);
    player_close(&p);
    assert_false(stale_seen);
    assert_true(current_seen);
    ts_h_pass();
}

/* One JetStream API request; returns the reply's JSON (caller frees). */
static char *js_api(ts_bus_t *bus, const char *subject, const char *body)
{
    ts_bus_hdr_t hdr = {.type = "application/json"};
    ts_bus_msg_t *reply = NULL;
    assert_int_equal(ts_bus_request(bus, subject, &hdr, body, strlen(body), 3000, &reply), TS_OK);
    size_t len = ts_bus_msg_len(reply);
    char *json = malloc(len + 1);
    assert_non_null(json);
    memcpy(json, ts_bus_msg_data(reply), len);
    json[len] = '\0';
    ts_bus_msg_destroy(reply);
    return json;
}

/* The JSON object that follows "key": in json, copied (caller frees). */
static char *json_object(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    assert_non_null(p);
    p += strlen(pat);
    while (*p == ' ')
        p++;
    assert_true(*p == '{');
    int depth = 0;
    bool in_str = false;
    const char *q = p;
    for (; *q != '\0'; q++) {
        if (in_str) {
            if (*q == '\\' && q[1] != '\0')
                q++;
            else if (*q == '"')
                in_str = false;
        } else if (*q == '"') {
            in_str = true;
        } else if (*q == '{') {
            depth++;
        } else if (*q == '}' && --depth == 0) {
            break;
        }
    }
    assert_int_equal(*q, '}');
    size_t n = (size_t)(q - p) + 1;
    char *out = malloc(n + 1);
    assert_non_null(out);
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

/* Replaces the first `from` in *s with `to` (reallocating). */
static void json_replace(char **s, const char *from, const char *to)
{
    char *at = strstr(*s, from);
    assert_non_null(at);
    size_t head = (size_t)(at - *s), flen = strlen(from), tlen = strlen(to), rest = strlen(at + flen);
    char *out = malloc(head + tlen + rest + 1);
    assert_non_null(out);
    memcpy(out, *s, head);
    memcpy(out + head, to, tlen);
    memcpy(out + head + tlen, at + flen, rest + 1);
    free(*s);
    *s = out;
}

/* full: the world's input stream takes no new message (max_msgs = what it
 * holds, discard new), so every input publish is refused by JetStream.
 * !full: back to unlimited. */
static void input_stream_full(ts_bus_t *bus, bool full)
{
    char stream[64], subject[128];
    ts_bus_input_stream(stream, sizeof stream, WORLD);
    snprintf(subject, sizeof subject, "$JS.API.STREAM.INFO.%s", stream);
    char *info = js_api(bus, subject, "");
    char *cfg = json_object(info, "config");
    char *st = json_object(info, "state");
    const char *m = strstr(st, "\"messages\":");
    assert_non_null(m);
    unsigned long long msgs = strtoull(m + strlen("\"messages\":"), NULL, 10);
    char want[64];
    if (full) {
        snprintf(want, sizeof want, "\"max_msgs\":%llu", msgs);
        json_replace(&cfg, "\"max_msgs\":-1", want);
        json_replace(&cfg, "\"discard\":\"old\"", "\"discard\":\"new\"");
    } else {
        snprintf(want, sizeof want, "\"max_msgs\":%llu", msgs);
        json_replace(&cfg, want, "\"max_msgs\":-1");
        json_replace(&cfg, "\"discard\":\"new\"", "\"discard\":\"old\"");
    }
    snprintf(subject, sizeof subject, "$JS.API.STREAM.UPDATE.%s", stream);
    char *reply = js_api(bus, subject, cfg);
    if (strstr(reply, "\"error\"") != NULL) fail_msg("stream update refused: %s", reply);
    free(reply);
    free(st);
    free(cfg);
    free(info);
}

/* An input JetStream refuses to store is never applied, and its client is
 * told so: an ERROR_INPUT_NOT_STORED naming its seq, not silence. The
 * connection stays usable. */
static void test_input_not_stored_is_reported(void **state)
{
    (void)state;
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it-gateway"), TS_OK);
    player_t p;
    player_connect(&p);
    join_at(&p, -150, -150);
    expect_applied(&p, 1, ts_client_last_seq(p.c), 10000);

    input_stream_full(bus, true);
    assert_int_equal(ts_client_move(p.c, 3, 0), TS_OK);
    uint64_t lost = ts_client_last_seq(p.c);
    Tessera__V1__ServerFrame *f = recv_until(&p, TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR, 10000);
    input_stream_full(bus, false);
    assert_non_null(f);
    assert_int_equal(f->error->code, TESSERA__V1__ERROR_CODE__ERROR_INPUT_NOT_STORED);
    assert_false(f->error->fatal);
    assert_true(f->error->first_seq <= lost && lost <= f->error->last_seq);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    /* the next input is stored and applied; the refused one never is */
    assert_int_equal(ts_client_move(p.c, 0, 0), TS_OK);
    uint64_t next = ts_client_last_seq(p.c);
    expect_applied(&p, 2, next, 10000);
    assert_false(p.closed);
    player_close(&p);
    ts_bus_destroy(bus);
    ts_h_pass();
}

static void test_max_clients(void **state)
{
    (void)state;
    int port = ts_h_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", port);
    const char *argv[] = {listen, "--gateway.max_clients=1", "--gateway.id=2", NULL};
    int idx = ts_h_spawn(&ts_h, "gateway-small", "tessera-gateway", argv);
    assert_true(ts_h_wait_port(port, 15000));
    ts_sleep_ms(300); /* the port probe's connection counts until the gateway sees it close */

    player_t first, second;
    memset(&first, 0, sizeof first);
    memset(&second, 0, sizeof second);
    /* only joined players count: a second connection is served until it joins */
    assert_int_equal(ts_client_connect(&first.c, "127.0.0.1", port, 3000), TS_OK);
    assert_int_equal(ts_client_join(first.c, 10, 10, "first"), TS_OK);
    Tessera__V1__ServerFrame *f = recv_until(&first, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 3000);
    assert_non_null(f);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    assert_int_equal(ts_client_connect(&second.c, "127.0.0.1", port, 3000), TS_OK);
    expect_pong(&second);
    assert_int_equal(ts_client_join(second.c, 10, 10, "second"), TS_OK);
    expect_error(&second, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true);
    pump(&second, 2000);
    assert_true(second.closed);
    player_close(&second);

    /* the slot frees up when the first player goes */
    player_close(&first);
    ts_sleep_ms(200);
    player_connect(&second);
    assert_int_equal(ts_client_join(second.c, 10, 10, "second"), TS_OK);
    f = recv_until(&second, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 3000);
    assert_non_null(f);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    player_close(&second);

    ts_h_signal(&ts_h, idx, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, idx, 10000), 0);
    ts_h_pass();
}

static char *write_script(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", ts_h.dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static int run_client(const char *name, const char *const *args, char **log)
{
    char listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", stack.gw_port);
    const char *argv[16];
    int n = 0;
    argv[n++] = listen;
    for (; *args != NULL && n < 15; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    int idx = ts_h_spawn(&ts_h, name, "tessera-client", argv);
    int rc = ts_h_wait(&ts_h, idx, 20000);
    *log = ts_h_read_log(&ts_h, idx);
    assert_non_null(*log);
    return rc;
}

static void test_client_cli(void **state)
{
    (void)state;
    char *log;
    const char *ping[] = {"ping", "2", NULL};
    assert_int_equal(run_client("cli-ping", ping, &log), 0);
    assert_non_null(strstr(log, "2/2 pongs"));
    free(log);

    const char *move[] = {"--at", "-20,10", "move", "40", "0", "1.5", NULL};
    assert_int_equal(run_client("cli-move", move, &log), 0);
    assert_non_null(strstr(log, "snapshot entity="));
    assert_non_null(strstr(log, "cell_changed 0.-1.0.0.0 -> 0.0.0.0.0"));
    assert_non_null(strstr(log, "me=("));
    free(log);

    const char *failing_script[] = {"script",
                                    write_script("failing.txt", "hello\n"
                                                                "-move 1 0\n"
                                                                "join 10 -10\n"
                                                                "move 5 0\n"
                                                                "wait 0.3\n"
                                                                "ping\n"
                                                                "!3\n" /* join again: refused */
                                                                "leave\n"),
                                    NULL};
    assert_int_equal(run_client("cli-script-fail", failing_script, &log), 1);
    assert_non_null(strstr(log, "welcome entity=0"));
    assert_non_null(strstr(log, "error PROTOCOL"));
    assert_non_null(strstr(log, "line 7 failed"));
    free(log);

    const char *good_script[] = {"script",
                                 write_script("good.txt", "hello\n"
                                                          "join 10 -10\n"
                                                          "move 5 0\n"
                                                          "wait 0.3\n"
                                                          "-join 1 1\n"
                                                          "ping\n"
                                                          "leave\n"),
                                 NULL};
    assert_int_equal(run_client("cli-script-good", good_script, &log), 0);
    assert_non_null(strstr(log, "pong rtt="));
    assert_non_null(strstr(log, "delta tick="));
    free(log);
    ts_h_pass();
}

static void test_sigterm_exits_cleanly(void **state)
{
    (void)state;
    player_t p;
    player_connect(&p);
    join_at(&p, 20, 20);
    pump(&p, 300);
    ts_h_signal(&ts_h, stack.gateway, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, stack.gateway, 10000), 0);
    pump(&p, 1000);
    assert_true(p.closed);
    player_close(&p);
    ts_h_pass();
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    char ws_listen[64];
    ws_port = ts_h_free_port();
    snprintf(ws_listen, sizeof ws_listen, "--gateway.ws_listen=127.0.0.1:%d", ws_port);
    /* a tick's state may come up to 40 ms after its first under load
     * (test_one_delta_per_tick) */
    const char *gw[] = {"--log.level=debug", "--gateway.coalesce_ms=40", use_ws ? ws_listen : NULL, NULL};
    ts_h_spawn_stack(&ts_h, NULL, NULL, gw, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, 30000) || !ts_h_wait_port(stack.gw_port, 15000) ||
        (use_ws && !ts_h_wait_port(ws_port, 15000))) {
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    use_ws = argc > 1 && strcmp(argv[1], "--ws") == 0;
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_join_move_ping),     TS_H_TEST(test_walk_across_workers),
        TS_H_TEST(test_one_delta_per_tick), TS_H_TEST(test_bad_frames_isolated),
        TS_H_TEST(test_protocol_errors),    TS_H_TEST(test_flood_is_fatal),
        TS_H_TEST(test_stale_epoch_fenced), TS_H_TEST(test_max_clients),
        TS_H_TEST(test_client_cli),         TS_H_TEST(test_input_not_stored_is_reported),
        TS_H_TEST(test_chunked_keyframe),   TS_H_TEST(test_sigterm_exits_cleanly),
    };
    return TS_H_RUN(use_ws ? "it_gateway_ws" : "it_gateway", tests, group_setup, ts_h_group_teardown);
}
