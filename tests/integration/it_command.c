/* Game commands and events through a real gateway: real nats-server -js and
 * redis-server, tessera-orch, workers w1 and w2 loading the echo test module
 * (tests/modules/echo.c, worker.game) and a gateway. What players rely on:
 *
 *   - a Command needs a Join first (ERROR_PROTOCOL), one over 256 bytes is
 *     refused (ERROR_MALFORMED, not fatal), commands count against the
 *     frame rate limit, and every other one is applied exactly once,
 *     acknowledged like a Move (last_input_seq);
 *   - Join.payload reaches the module's on_join, and the module's state
 *     bytes and the player flag reach the client in EntityState;
 *   - a module error for a command does not take the cell down;
 *   - an Event to one player reaches that player only; a positional Event
 *     reaches exactly the clients whose area of interest holds the point;
 *   - tessera-client's repl sends commands and prints events.
 *
 * `it_command --ws` runs the same with the players on WebSocket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "tessera/client.h"
#include "tessera/game.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
/* aoi.radius of the gateway: small, so one cell holds clients that see a
 * point and clients that do not */
#define RADIUS 60.0

#ifndef TS_ECHO_SO
#error "TS_ECHO_SO (the echo module's path) is set by tests/CMakeLists.txt"
#endif

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static bool use_ws;
static int ws_port;

/* One connected player and what its frames told it. */
typedef struct {
    ts_client_t *c;
    uint64_t entity;
    bool closed;
    bool me_seen;
    uint64_t me_applied, me_last_seq, max_applied;
    uint32_t me_flags;
    uint8_t me_state[TS_GAME_STATE_MAX];
    size_t me_state_len;
    int errors;
    Tessera__V1__ErrorCode last_error;
    bool last_error_fatal;
    int events;
    Tessera__V1__Event last_event; /* payload points into last_payload */
    uint8_t last_payload[TS_GAME_PAYLOAD_MAX];
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

static void note_entities(player_t *p, Tessera__V1__EntityState *const *es, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const Tessera__V1__EntityState *e = es[i];
        if (p->entity == 0 || e->id != p->entity) continue;
        p->me_seen = true;
        p->me_applied = e->inputs_applied;
        p->me_last_seq = e->last_input_seq;
        if (e->inputs_applied > p->max_applied) p->max_applied = e->inputs_applied;
        p->me_flags = e->flags;
        assert_true(e->state.len <= TS_GAME_STATE_MAX);
        p->me_state_len = e->state.len;
        if (e->state.len > 0) memcpy(p->me_state, e->state.data, e->state.len);
    }
}

static void note_frame(player_t *p, const Tessera__V1__ServerFrame *f)
{
    switch (f->payload_case) {
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT:
        p->entity = f->snapshot->entity;
        note_entities(p, f->snapshot->entities, f->snapshot->n_entities);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA:
        note_entities(p, f->delta->entities, f->delta->n_entities);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_EVENT:
        p->events++;
        p->last_event = *f->event;
        p->last_event.base.unknown_fields = NULL;
        p->last_event.base.n_unknown_fields = 0;
        assert_true(f->event->payload.len <= TS_GAME_PAYLOAD_MAX);
        if (f->event->payload.len > 0) memcpy(p->last_payload, f->event->payload.data, f->event->payload.len);
        p->last_event.payload.data = p->last_payload;
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

static void pump(player_t *p, int64_t ms)
{
    assert_null(recv_until(p, -1, ms));
}

/* A Ping round trip: every frame the gateway wrote to the client before
 * it handled the Ping has been received (and noted) after it. */
static void sync_pong(player_t *p)
{
    uint64_t t = ts_now_us();
    assert_int_equal(ts_client_ping(p->c, t), TS_OK);
    for (;;) {
        Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG, 3000);
        assert_non_null(f);
        bool mine = f->pong->client_time_us == t;
        tessera__v1__server_frame__free_unpacked(f, NULL);
        if (mine) return;
    }
}

static void expect_error(player_t *p, Tessera__V1__ErrorCode code, bool fatal)
{
    Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR, 3000);
    assert_non_null(f);
    assert_int_equal(f->error->code, code);
    assert_int_equal(f->error->fatal, fatal);
    tessera__v1__server_frame__free_unpacked(f, NULL);
}

/* Joins at (x, y) with a Join payload and waits for the own entity's state. */
static void join_at(player_t *p, double x, double y, const char *payload)
{
    assert_int_equal(ts_client_join_payload(p->c, x, y, "it", payload, strlen(payload)), TS_OK);
    Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000);
    assert_non_null(f);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    uint64_t deadline = ts_mono_us() + 5000000;
    while (!p->me_seen && ts_mono_us() < deadline && !p->closed)
        pump(p, 50);
    assert_true(p->me_seen);
}

static uint32_t state_count(const player_t *p)
{
    if (p->me_state_len < 4) return 0;
    return (uint32_t)p->me_state[0] | (uint32_t)p->me_state[1] << 8 | (uint32_t)p->me_state[2] << 16 |
           (uint32_t)p->me_state[3] << 24;
}

static bool state_rest_is(const player_t *p, const char *text)
{
    size_t n = strlen(text);
    return p->me_state_len == 4 + n && memcmp(p->me_state + 4, text, n) == 0;
}

/* Waits until the own entity shows last_input_seq >= seq, then watches it
 * for a second more (a late double would raise inputs_applied). */
static void wait_applied(player_t *p, uint64_t seq)
{
    uint64_t deadline = ts_mono_us() + 10000000;
    while (p->me_last_seq < seq && ts_mono_us() < deadline && !p->closed)
        pump(p, 50);
    assert_int_equal(p->me_last_seq, seq);
    pump(p, 1000);
    assert_int_equal(p->me_last_seq, seq);
}

/* Waits for an Event frame (returned, caller frees). */
static Tessera__V1__ServerFrame *expect_event(player_t *p)
{
    Tessera__V1__ServerFrame *f = recv_until(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_EVENT, 5000);
    assert_non_null(f);
    return f;
}

/* The worker whose log says its module's on_command failed (the owner of
 * the player's cell): its index in ts_h.procs, or -1 after timeout_ms. */
static int worker_logging(const char *needle, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    do {
        for (int k = 0; k < 2; k++)
            if (ts_h_log_has(&ts_h, stack.workers[k], needle)) return stack.workers[k];
        ts_sleep_ms(20);
    } while (ts_mono_us() < deadline);
    return -1;
}

/* The value of the sample of metric `name` whose labels include `labels`
 * in the worker's /metrics (its port is the one its log names:
 * worker.http_listen=127.0.0.1:0); -1 when there is none. */
static double worker_metric(int idx, const char *name, const char *labels)
{
    char *log = ts_h_read_log(&ts_h, idx);
    assert_non_null(log);
    const char *at = strstr(log, "/readyz on 127.0.0.1:");
    assert_non_null(at);
    int port = atoi(at + strlen("/readyz on 127.0.0.1:"));
    free(log);
    static char body[256 * 1024];
    assert_int_equal(ts_h_http_get(port, "/metrics", body, sizeof body), 200);
    size_t nlen = strlen(name);
    for (const char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, nlen) != 0 || line[nlen] != '{') continue;
        const char *end = strchr(line, '}');
        const char *lab = strstr(line, labels);
        if (end && lab && lab < end) return strtod(end + 1, NULL);
    }
    return -1;
}

static void test_commands_once(void **state)
{
    (void)state;
    player_t p;
    player_connect(&p);

    /* a Command before Join: refused, not fatal */
    assert_int_equal(ts_client_command(p.c, 3, "x", 1), TS_OK);
    expect_error(&p, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false);

    /* Join.payload reaches on_join: it becomes the entity's state */
    join_at(&p, 10, -10, "hello");
    assert_int_equal(p.me_flags, TS_GAME_PLAYER);
    assert_int_equal(state_count(&p), 0);
    assert_true(state_rest_is(&p, "hello"));
    uint64_t applied0 = p.me_applied; /* the Join */

    /* commands between moves: each applied once, in order */
    int ncmd = 0, nmove = 0;
    char text[16];
    for (int i = 0; i < 20; i++) {
        if (i % 4 == 3) {
            assert_int_equal(ts_client_move(p.c, 1, 0), TS_OK);
            nmove++;
            continue;
        }
        snprintf(text, sizeof text, "s%d", i);
        assert_int_equal(ts_client_command(p.c, 3, text, strlen(text)), TS_OK);
        ncmd++;
    }
    uint64_t last = ts_client_last_seq(p.c);
    wait_applied(&p, last);
    assert_int_equal(p.me_applied, applied0 + (uint64_t)(ncmd + nmove));
    assert_int_equal(p.max_applied, p.me_applied);
    assert_int_equal(state_count(&p), (uint32_t)ncmd);
    assert_true(state_rest_is(&p, "s18"));
    assert_int_equal(p.errors, 1); /* the Command before Join */

    /* 257 bytes: refused at the gateway, the connection goes on */
    uint8_t big[TS_GAME_PAYLOAD_MAX + 1];
    memset(big, 'b', sizeof big);
    assert_int_equal(ts_client_command(p.c, 3, big, sizeof big), TS_OK);
    expect_error(&p, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, false);
    assert_false(p.closed);
    /* exactly 256 bytes pass (the state keeps the first 60) */
    assert_int_equal(ts_client_command(p.c, 3, big, TS_GAME_PAYLOAD_MAX), TS_OK);
    ncmd++;
    /* a command the module fails: counted, the cell goes on */
    assert_int_equal(ts_client_command(p.c, 4, NULL, 0), TS_OK);
    ncmd++;
    assert_int_equal(ts_client_command(p.c, 3, "after", 5), TS_OK);
    ncmd++;
    last = ts_client_last_seq(p.c);
    wait_applied(&p, last);
    assert_int_equal(p.me_applied, applied0 + (uint64_t)(ncmd + nmove));
    assert_int_equal(state_count(&p), (uint32_t)ncmd);
    assert_true(state_rest_is(&p, "after"));
    assert_int_equal(p.errors, 2);
    /* the owner logged the failed command with the module's name and counts it */
    int owner = worker_logging("game module echo: on_command of cell ", 5000);
    assert_true(owner >= 0);
    assert_true(ts_h_log_has(&ts_h, owner, "returned error -"));
    assert_true(worker_metric(owner, "tessera_worker_game_errors_total",
                              "module=\"echo\",callback=\"on_command\"") == 1);
    assert_true(worker_metric(owner, "tessera_worker_game_faults_total", "module=\"echo\"") == 0);

    /* a join payload over 256 bytes is refused too (on a new connection) */
    player_t q;
    player_connect(&q);
    assert_int_equal(ts_client_join_payload(q.c, 10, -20, "it", big, sizeof big), TS_OK);
    expect_error(&q, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, false);
    sync_pong(&q);
    assert_int_equal(q.entity, 0);
    player_close(&q);

    assert_int_equal(ts_client_leave(p.c), TS_OK);
    sync_pong(&p);
    player_close(&p);
    ts_h_pass();
}

static void test_events_reach_the_right_clients(void **state)
{
    (void)state;
    /* a and b 20 apart, c in the same cell but 113 from a (outside the
     * circles of radius 60), d in another worker's cell */
    player_t a, b, c, d;
    player_connect(&a);
    player_connect(&b);
    player_connect(&c);
    player_connect(&d);
    join_at(&a, 10, 10, "");
    join_at(&b, 30, 10, "");
    join_at(&c, 90, 90, "");
    join_at(&d, -50, 10, "");

    /* to one player: a only */
    assert_int_equal(ts_client_command(a.c, 1, "to-a", 4), TS_OK);
    Tessera__V1__ServerFrame *f = expect_event(&a);
    assert_int_equal(f->event->type, 1);
    assert_int_equal(f->event->entity, a.entity);
    assert_false(f->event->positional);
    assert_true(f->event->tick > 0);
    assert_int_equal(f->event->payload.len, 4);
    assert_memory_equal(f->event->payload.data, "to-a", 4);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    sync_pong(&b);
    sync_pong(&c);
    sync_pong(&d);
    assert_int_equal(b.events, 0);
    assert_int_equal(c.events, 0);
    assert_int_equal(d.events, 0);

    /* at a's position: a and b (within 60), not c (113 away), and d, 60
     * away in the neighbouring cell, gets it too */
    assert_int_equal(ts_client_command(a.c, 2, "boom", 4), TS_OK);
    f = expect_event(&a);
    assert_int_equal(f->event->type, 2);
    assert_true(f->event->positional);
    assert_true(f->event->x == 10.0 && f->event->y == 10.0);
    assert_memory_equal(f->event->payload.data, "boom", 4);
    uint64_t tick = f->event->tick;
    tessera__v1__server_frame__free_unpacked(f, NULL);
    f = expect_event(&b);
    assert_int_equal(f->event->type, 2);
    assert_int_equal(f->event->tick, tick);
    assert_memory_equal(f->event->payload.data, "boom", 4);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    f = expect_event(&d);
    assert_int_equal(f->event->type, 2);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    sync_pong(&c);
    assert_int_equal(c.events, 0);

    /* b's own event: b only */
    assert_int_equal(ts_client_command(b.c, 1, "", 0), TS_OK);
    f = expect_event(&b);
    assert_int_equal(f->event->entity, b.entity);
    assert_int_equal(f->event->payload.len, 0);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    sync_pong(&a);
    sync_pong(&c);
    sync_pong(&d);
    assert_int_equal(a.events, 2);
    assert_int_equal(c.events, 0);
    assert_int_equal(d.events, 1);

    /* many events in one burst arrive in order, each once */
    for (int i = 0; i < 30; i++) {
        char t[8];
        snprintf(t, sizeof t, "%d", i);
        assert_int_equal(ts_client_command(c.c, 1, t, strlen(t)), TS_OK);
    }
    for (int i = 0; i < 30; i++) {
        char t[8];
        snprintf(t, sizeof t, "%d", i);
        f = expect_event(&c);
        assert_int_equal(f->event->payload.len, strlen(t));
        assert_memory_equal(f->event->payload.data, t, strlen(t));
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    sync_pong(&c);
    assert_int_equal(c.events, 30);
    assert_int_equal(a.errors + b.errors + c.errors + d.errors, 0);

    player_close(&a);
    player_close(&b);
    player_close(&c);
    player_close(&d);
    ts_h_pass();
}

static void test_commands_rate_limited(void **state)
{
    (void)state;
    player_t p;
    player_connect(&p);
    join_at(&p, -150, 150, "");
    uint64_t applied0 = p.me_applied;
    /* 600 commands at once against gateway.rate_limit 200 (burst 200): the
     * excess is dropped with one non-fatal ERROR_RATE_LIMIT, like Moves */
    for (int i = 0; i < 600; i++)
        assert_int_equal(ts_client_command(p.c, 3, "r", 1), TS_OK);
    expect_error(&p, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT, false);
    /* the bucket refills at 200/s: a frame after 1 s passes */
    uint64_t resume_at = ts_mono_us() + 1100000;
    while (ts_mono_us() < resume_at)
        pump(&p, 100);
    assert_int_equal(ts_client_command(p.c, 3, "end", 3), TS_OK);
    wait_applied(&p, ts_client_last_seq(p.c));
    uint32_t n = state_count(&p);
    assert_true(n >= 200 && n < 600);
    assert_int_equal((uint64_t)n, p.me_applied - applied0); /* what passed, each applied once */
    assert_true(state_rest_is(&p, "end"));
    assert_false(p.closed);
    player_close(&p);
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

static void test_client_repl(void **state)
{
    (void)state;
    char listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", stack.gw_port);
    const char *argv[] = {listen, "script",
                          write_script("cmd.txt", "-cmd 1 early\n"
                                                  "join 10 30 0x6869\n"
                                                  "cmd 1 hello world\n"
                                                  "wait 0.5\n"
                                                  "cmd 2 0x00ff\n"
                                                  "wait 0.5\n"
                                                  "leave\n"),
                          NULL};
    int idx = ts_h_spawn(&ts_h, "cli-cmd", "tessera-client", argv);
    assert_int_equal(ts_h_wait(&ts_h, idx, 20000), 0);
    char *log = ts_h_read_log(&ts_h, idx);
    assert_non_null(log);
    assert_non_null(strstr(log, "error PROTOCOL: Command before Join"));
    assert_non_null(strstr(log, "cmd seq="));
    assert_non_null(strstr(log, "event type=1 entity="));
    assert_non_null(strstr(log, "payload=\"hello world\""));
    assert_non_null(strstr(log, "event type=2 at=(10.00, 30.00)"));
    assert_non_null(strstr(log, "payload=0x00ff"));
    free(log);
    ts_h_pass();
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    char ws_listen[64];
    ws_port = ts_h_free_port();
    snprintf(ws_listen, sizeof ws_listen, "--gateway.ws_listen=127.0.0.1:%d", ws_port);
    const char *workers[] = {"--worker.game=" TS_ECHO_SO, "--worker.http_listen=127.0.0.1:0", NULL};
    const char *gw[] = {"--aoi.radius=60", "--aoi.hysteresis=6", use_ws ? ws_listen : NULL, NULL};
    ts_h_spawn_stack(&ts_h, NULL, workers, gw, &stack);
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
        TS_H_TEST(test_commands_once),
        TS_H_TEST(test_events_reach_the_right_clients),
        TS_H_TEST(test_commands_rate_limited),
        TS_H_TEST(test_client_repl),
    };
    return TS_H_RUN(use_ws ? "it_command_ws" : "it_command", tests, group_setup, ts_h_group_teardown);
}
