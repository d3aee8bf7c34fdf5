/* Players at the gateway, end to end (real nats-server -js, redis-server,
 * tessera-orch, workers w1 and w2, gateways): what a player relies on when
 * its connection goes wrong, when it comes back, and when it must log in.
 *
 *   gw1 (stack gateway, id 1): short timeouts (hello 1 s, idle 2 s, slow
 *        reader 1 s above 1 KiB), resume grace 3 s
 *   gw2 (id 2): same secret and grace, long timeouts: observers and resume
 *   gwk (id 4): killed with SIGKILL
 *   gwa (id 3): gateway.auth.required with an HS256 secret and an RS256 key
 *   workers: the same resume secret, so every resume or login on another
 *        gateway goes through the worker's check of the Attach's token
 *
 * Observers (on gw2) watch other players' entities in their Deltas: a
 * despawned entity shows up in `removed`.
 *
 * `it_players --ws` runs the same tests with every player on WebSocket
 * (each gateway also listens on gateway.ws_listen) and the 10,000 idle
 * sockets on the WebSocket listener; the slow reader (a raw socket that
 * never reads) and the CLI's login stay on TCP. */
#define _GNU_SOURCE /* POLLRDHUP */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "tessera/bus.h"
#include "tessera/client.h"
#include "tessera/frame.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define SECRET "it-resume-secret"
#define GRACE_S 3
#define AUTH_SECRET "it-auth-secret"
#define AUDIENCE "tessera-it"

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static bool use_ws; /* players connect over WebSocket */
/* each gateway's TCP port and its WebSocket port (--ws) */
static int tcp_ports[16], ws_ports[16];
static size_t nports;

static void note_ws_port(int tcp, int ws)
{
    assert_true(nports < sizeof tcp_ports / sizeof tcp_ports[0]);
    tcp_ports[nports] = tcp;
    ws_ports[nports++] = ws;
}

/* The port players of the gateway on TCP port `port` connect to. */
static int player_port(int port)
{
    for (size_t i = 0; use_ws && i < nports; i++)
        if (tcp_ports[i] == port) return ws_ports[i];
    return port;
}
static int gw2_port;
static int gw2_idx = -1;

/* CPU seconds (user + system) the process has used so far. */
static double cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* One client connection and what its frames told it. */
typedef struct {
    ts_client_t *c;
    uint64_t seq; /* last frame seq sent */
    uint64_t entity;
    char resume_token[1024];
    char player[160];
    bool resumed;
    uint64_t welcome_ack;
    uint64_t ack;      /* highest Delta/Snapshot last_input_seq */
    uint64_t want_seq; /* me_applied waits for this input */
    bool closed;
    Tessera__V1__ErrorCode last_error;
    bool last_error_fatal;
    char last_error_msg[256];
    /* an entity being watched */
    uint64_t watch;
    bool watch_any; /* watch the first other entity that shows up */
    bool watch_seen, watch_removed;
    Tessera__V1__EntityState watch_state;
    /* the own entity */
    Tessera__V1__EntityState me;
    bool me_seen;
    uint64_t last_ping_us;
} cl_t;

static void cl_connect(cl_t *p, int port)
{
    memset(p, 0, sizeof *p);
    if (use_ws)
        assert_int_equal(ts_client_connect_ws(&p->c, "127.0.0.1", player_port(port), NULL, 3000), TS_OK);
    else
        assert_int_equal(ts_client_connect(&p->c, "127.0.0.1", port, 3000), TS_OK);
}

static void cl_close(cl_t *p)
{
    ts_client_destroy(p->c);
    p->c = NULL;
}

static void note(cl_t *p, const Tessera__V1__ServerFrame *f)
{
    const Tessera__V1__EntityState *const *es = NULL;
    size_t n = 0;
    switch (f->payload_case) {
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME:
        if (f->welcome->entity) p->entity = f->welcome->entity;
        if (f->welcome->resume_token && f->welcome->resume_token[0])
            snprintf(p->resume_token, sizeof p->resume_token, "%s", f->welcome->resume_token);
        snprintf(p->player, sizeof p->player, "%s", f->welcome->player ? f->welcome->player : "");
        p->resumed = f->welcome->resumed;
        p->welcome_ack = f->welcome->last_input_seq;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT:
        p->entity = f->snapshot->entity;
        if (f->snapshot->last_input_seq > p->ack) p->ack = f->snapshot->last_input_seq;
        es = (const Tessera__V1__EntityState *const *)f->snapshot->entities;
        n = f->snapshot->n_entities;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA:
        if (f->delta->last_input_seq > p->ack) p->ack = f->delta->last_input_seq;
        es = (const Tessera__V1__EntityState *const *)f->delta->entities;
        n = f->delta->n_entities;
        for (size_t i = 0; i < f->delta->n_removed; i++)
            if (p->watch && f->delta->removed[i] == p->watch) p->watch_removed = true;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_CELL_CHANGED:
        if (f->cell_changed->resume_token && f->cell_changed->resume_token[0])
            snprintf(p->resume_token, sizeof p->resume_token, "%s", f->cell_changed->resume_token);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR:
        p->last_error = f->error->code;
        p->last_error_fatal = f->error->fatal;
        snprintf(p->last_error_msg, sizeof p->last_error_msg, "%s", f->error->message);
        break;
    default:
        break;
    }
    for (size_t i = 0; i < n; i++) {
        if (p->watch_any && p->watch == 0 && p->entity && es[i]->id != p->entity) p->watch = es[i]->id;
        if (p->watch && es[i]->id == p->watch) {
            p->watch_state = *es[i];
            p->watch_state.name = NULL;
            p->watch_seen = true;
            p->watch_removed = false;
        }
        if (p->entity && es[i]->id == p->entity) {
            p->me = *es[i];
            p->me.name = NULL;
            p->me_seen = true;
        }
    }
}

static ts_status_t cl_send(cl_t *p, Tessera__V1__ClientFrame *f)
{
    f->seq = ++p->seq;
    return ts_client_send(p->c, f);
}

/* Receives frames for up to ms (pinging every 500 ms so idle timeouts do
 * not hit), until cond(p) holds or the connection closed. */
static bool cl_pump_until(cl_t *p, int64_t ms, bool (*cond)(const cl_t *))
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000;
    while (!p->closed) {
        if (cond && cond(p)) return true;
        uint64_t now = ts_mono_us();
        if (now >= deadline) break;
        if (now - p->last_ping_us > 500000) {
            Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
            Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
            f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
            f.ping = &ping;
            (void)cl_send(p, &f);
            p->last_ping_us = now;
        }
        uint64_t left = (deadline - now) / 1000 + 1;
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(p->c, left < 100 ? (int64_t)left : 100, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        if (st != TS_OK) {
            p->closed = true;
            break;
        }
        note(p, f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return cond ? cond(p) : true;
}

/* Receives without pinging until a frame with payload `want` (true) or ms. */
static bool cl_wait_frame(cl_t *p, int want, int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000;
    while (!p->closed) {
        uint64_t now = ts_mono_us();
        if (now >= deadline) return false;
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(p->c, (int64_t)((deadline - now) / 1000) + 1, &f);
        if (st == TS_ERR_TIMEOUT) return false;
        if (st != TS_OK) {
            p->closed = true;
            return false;
        }
        note(p, f);
        bool hit = (int)f->payload_case == want;
        tessera__v1__server_frame__free_unpacked(f, NULL);
        if (hit) return true;
    }
    return false;
}

static void cl_hello(cl_t *p, const char *token, const char *resume_token)
{
    Tessera__V1__Hello h = TESSERA__V1__HELLO__INIT;
    h.protocol_version = TS_PROTOCOL_VERSION;
    h.client_name = (char *)"it_players";
    h.token = (char *)(token ? token : "");
    h.resume_token = (char *)(resume_token ? resume_token : "");
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
    f.hello = &h;
    assert_int_equal(cl_send(p, &f), TS_OK);
}

static void cl_join(cl_t *p, double x, double y)
{
    Tessera__V1__Join j = TESSERA__V1__JOIN__INIT;
    j.x = x;
    j.y = y;
    j.name = (char *)"it";
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN;
    f.join = &j;
    assert_int_equal(cl_send(p, &f), TS_OK);
}

static void cl_move_seq(cl_t *p, uint64_t seq, double dx, double dy)
{
    Tessera__V1__Move m = TESSERA__V1__MOVE__INIT;
    m.dx = dx;
    m.dy = dy;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE;
    f.move = &m;
    f.seq = seq;
    if (seq > p->seq) p->seq = seq;
    assert_int_equal(ts_client_send(p->c, &f), TS_OK);
}

static bool has_snapshot(const cl_t *p)
{
    return p->entity != 0 && p->resume_token[0] != '\0';
}
static bool watch_seen(const cl_t *p)
{
    return p->watch_seen;
}
static bool watch_stopped(const cl_t *p)
{
    return p->watch_seen && p->watch_state.vx == 0 && p->watch_state.vy == 0;
}
static bool watch_moving(const cl_t *p)
{
    return p->watch_seen && p->watch_state.vx != 0;
}
static bool watch_removed(const cl_t *p)
{
    return p->watch_removed;
}

/* A player on port that joined at (x, y) and has its Welcome and Snapshot. */
static void join_player(cl_t *p, int port, double x, double y)
{
    cl_connect(p, port);
    cl_join(p, x, y);
    assert_true(cl_wait_frame(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    assert_true(has_snapshot(p));
}

static void expect_fatal(cl_t *p, Tessera__V1__ErrorCode code, int64_t ms)
{
    assert_true(cl_wait_frame(p, TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR, ms));
    assert_int_equal(p->last_error, code);
    assert_true(p->last_error_fatal);
    /* then the gateway closes */
    uint64_t deadline = ts_mono_us() + 3000000;
    while (!p->closed && ts_mono_us() < deadline)
        (void)cl_wait_frame(p, -1, 200);
    assert_true(p->closed);
}

static int spawn_gateway(const char *name, int id, int *port, const char *const *extra)
{
    *port = ts_h_free_port();
    char listen[64], idarg[32], ws_listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", *port);
    snprintf(idarg, sizeof idarg, "--gateway.id=%d", id);
    const char *argv[24] = {listen, idarg, "--gateway.resume_secret=" SECRET, NULL};
    int n = 3;
    int ws_port = 0;
    if (use_ws) {
        ws_port = ts_h_free_port();
        snprintf(ws_listen, sizeof ws_listen, "--gateway.ws_listen=127.0.0.1:%d", ws_port);
        argv[n++] = ws_listen;
        note_ws_port(*port, ws_port);
    }
    for (size_t i = 0; extra && extra[i] && n < 23; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    int idx = ts_h_spawn(&ts_h, name, "tessera-gateway", argv);
    assert_true(ts_h_wait_port(*port, 15000));
    if (use_ws) assert_true(ts_h_wait_port(ws_port, 15000));
    return idx;
}

/* Runs a shell command and returns its first output line (static buffer). */
static const char *run_line(const char *fmt, ...)
{
    static char out[4096];
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    out[0] = '\0';
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    if (fgets(out, sizeof out, f) == NULL) out[0] = '\0';
    pclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    return out;
}

/* ---- connection lifecycle ------------------------------------------------ */

static void test_hello_timeout(void **state)
{
    (void)state;
    cl_t p;
    cl_connect(&p, stack.gw_port);
    uint64_t t0 = ts_mono_us();
    expect_fatal(&p, TESSERA__V1__ERROR_CODE__ERROR_TIMEOUT, 4000);
    uint64_t ms = (ts_mono_us() - t0) / 1000;
    assert_true(ms >= 900 && ms < 2500); /* gateway.hello_timeout_s=1 */
    cl_close(&p);
    ts_h_pass();
}

/* A client that stops sending but keeps its socket open (a half-open
 * connection looks the same from the gateway): closed after the idle
 * timeout, its entity stops at once and is despawned after the grace. */
static void test_idle_player_stopped_then_despawned(void **state)
{
    (void)state;
    cl_t watcher, p;
    join_player(&watcher, gw2_port, 30, 30);
    cl_connect(&p, stack.gw_port);
    cl_hello(&p, NULL, NULL);
    cl_join(&p, 32, 32);
    assert_true(cl_wait_frame(&p, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    cl_move_seq(&p, p.seq + 1, 3, 0);
    uint64_t t0 = ts_mono_us(); /* silent from now on */
    watcher.watch = p.entity;
    assert_true(cl_pump_until(&watcher, 5000, watch_moving)); /* its Move applied, not just its Join */
    assert_true(cl_pump_until(&watcher, 6000, watch_stopped));
    uint64_t stopped_ms = (ts_mono_us() - t0) / 1000;
    assert_true(stopped_ms >= 1500 && stopped_ms < 4000); /* gateway.idle_timeout_s=2 */
    assert_false(watcher.watch_removed);
    assert_true(cl_pump_until(&watcher, (GRACE_S + 3) * 1000, watch_removed));
    uint64_t gone_ms = (ts_mono_us() - t0) / 1000;
    fprintf(stderr,
            "figure: silent client's entity stopped after %.1f s (idle timeout 2 s), despawned %.1f s after "
            "that (grace %d s)\n",
            (double)stopped_ms / 1000.0, (double)(gone_ms - stopped_ms) / 1000.0, GRACE_S);
    assert_true(gone_ms >= stopped_ms + (GRACE_S - 1) * 1000 && gone_ms < stopped_ms + (GRACE_S + 3) * 1000);
    /* what the silent client finds when it reads again */
    expect_fatal(&p, TESSERA__V1__ERROR_CODE__ERROR_TIMEOUT, 1000);
    cl_close(&p);
    cl_close(&watcher);
    ts_h_pass();
}

/* Pings as fast as it can and never reads its Pongs. */
static size_t pack_frame(uint8_t *buf, Tessera__V1__ClientFrame *f)
{
    size_t len = tessera__v1__client_frame__get_packed_size(f);
    ts_frame_put_header(buf, (uint32_t)len);
    tessera__v1__client_frame__pack(f, buf + TS_FRAME_HEADER);
    return len + TS_FRAME_HEADER;
}

static void test_slow_reader_closed(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int rcv = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)stack.gw_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    uint8_t buf[256];
    Tessera__V1__Hello hello = TESSERA__V1__HELLO__INIT;
    Tessera__V1__ClientFrame hf = TESSERA__V1__CLIENT_FRAME__INIT;
    hf.seq = 1;
    hf.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
    hf.hello = &hello;
    size_t hl = pack_frame(buf, &hf);
    assert_int_equal(send(fd, buf, hl, MSG_NOSIGNAL), (ssize_t)hl);
    /* a player, watched from the other gateway (alone in its corner) */
    cl_t watcher;
    join_player(&watcher, gw2_port, -190, -190);
    watcher.watch_any = true;
    Tessera__V1__Join join = TESSERA__V1__JOIN__INIT;
    join.x = join.y = -188;
    join.name = (char *)"slow";
    hf.seq = 2;
    hf.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN;
    hf.join = &join;
    hl = pack_frame(buf, &hf);
    assert_int_equal(send(fd, buf, hl, MSG_NOSIGNAL), (ssize_t)hl);
    assert_true(cl_pump_until(&watcher, 5000, watch_seen));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    uint64_t seq = 2, t0 = ts_mono_us(), closed_at = 0;
    /* Pings for up to 15 s, never reading a Pong; the gateway must hang up
     * (FIN or reset) long before */
    while (closed_at == 0 && ts_mono_us() - t0 < 15000000) {
        Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
        ping.client_time_us = 1;
        Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
        f.seq = seq + 1;
        f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
        f.ping = &ping;
        size_t len = pack_frame(buf, &f);
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w == (ssize_t)len) seq++;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) closed_at = ts_mono_us();
        struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
        if (poll(&pfd, 1, w < 0 ? 5 : 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            closed_at = ts_mono_us();
    }
    assert_true(closed_at != 0);
    fprintf(stderr, "figure: slow reader closed %.1f s after it began (backlog 1 KiB, slow_close 1 s)\n",
            (double)(closed_at - t0) / 1e6);
    /* the backlog passes 1 KiB within the first second; closed 1 s later */
    assert_true(closed_at - t0 < 8000000);
    /* the gateway says why (its log line may follow the close by a moment) */
    assert_true(ts_h_wait_log(&ts_h, stack.gateway, "(slow reader); closing", 3000));
    /* its entity goes after the grace */
    assert_false(watcher.watch_removed);
    assert_true(cl_pump_until(&watcher, (GRACE_S + 3) * 1000, watch_removed));
    close(fd);
    cl_close(&watcher);
    ts_h_pass();
}

/* Reads length-prefixed ServerFrames from a blocking raw socket until a
 * Welcome naming an entity arrives; returns the entity (0: none in ms). */
static uint64_t raw_read_welcome(int fd, int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000;
    uint8_t hdr[TS_FRAME_HEADER];
    static uint8_t body[65536];
    while (ts_mono_us() < deadline) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) <= 0) continue;
        if (recv(fd, hdr, sizeof hdr, MSG_WAITALL) != (ssize_t)sizeof hdr) return 0;
        size_t n = ts_frame_get_header(hdr);
        if (n > sizeof body || recv(fd, body, n, MSG_WAITALL) != (ssize_t)n) return 0;
        Tessera__V1__ServerFrame *f = tessera__v1__server_frame__unpack(NULL, n, body);
        if (f == NULL) return 0;
        uint64_t entity =
            f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME ? f->welcome->entity : 0;
        tessera__v1__server_frame__free_unpacked(f, NULL);
        if (entity != 0) return entity;
    }
    return 0;
}

/* With the default gateway.max_backlog (128 KiB): a joined player that
 * stops reading while its view keeps changing has its Deltas withheld, and
 * from that moment on its slow-reader deadline runs: it is closed
 * gateway.slow_close_s (1 here) later, not left starved; its entity stops.
 * The view: 100 moving entities with long names next to it (their players on
 * a gateway with aoi.radius 1, so they need not read much themselves). */
static void test_slow_reader_default_backlog(void **state)
{
    (void)state;
    enum { MOVERS = 100 };
    int http = ts_h_free_port();
    char http_arg[64];
    snprintf(http_arg, sizeof http_arg, "--gateway.http_listen=127.0.0.1:%d", http);
    const char *slow_args[] = {"--gateway.slow_close_s=1", "--gateway.idle_timeout_s=60", http_arg, NULL};
    int port = 0, mport = 0;
    int idx = spawn_gateway("gws", 6, &port, slow_args);
    const char *mover_args[] = {"--aoi.radius=1", "--gateway.idle_timeout_s=120", NULL};
    int midx = spawn_gateway("gwm", 10, &mport, mover_args);
    assert_true(ts_h_wait_port(http, 15000));
    assert_true(ts_h_metric(http, "tessera_gateway_deltas_skipped_total") == 0);

    /* it watches the slow player from afar, the movers out of its sight */
    cl_t watcher;
    join_player(&watcher, gw2_port, -20, -20);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int rcv = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    uint8_t buf[256];
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    Tessera__V1__Join join = TESSERA__V1__JOIN__INIT;
    join.x = join.y = -120;
    join.name = (char *)"slow";
    f.seq = 1;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN;
    f.join = &join;
    size_t len = pack_frame(buf, &f);
    assert_int_equal(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
    watcher.watch = raw_read_welcome(fd, 5000); /* the last frame it reads */
    assert_true(watcher.watch != 0);
    Tessera__V1__Move move = TESSERA__V1__MOVE__INIT;
    move.dx = 1;
    f.seq = 2;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE;
    f.move = &move;
    len = pack_frame(buf, &f);
    assert_int_equal(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
    assert_true(cl_pump_until(&watcher, 5000, watch_moving));

    cl_t *movers = calloc(MOVERS, sizeof *movers);
    assert_non_null(movers);
    char name[61];
    memset(name, 'm', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    for (int i = 0; i < MOVERS; i++) {
        cl_connect(&movers[i], mport);
        assert_int_equal(ts_client_join(movers[i].c, -198 + 3 * (i % 10), -198 + 3 * (i / 10), name), TS_OK);
        assert_int_equal(ts_client_move(movers[i].c, 1, 0), TS_OK);
    }

    /* it only Pings now (50 ms apart, so the gateway's reset on a closed
     * socket shows at once) and never reads */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    uint64_t seq = 2, t0 = ts_mono_us(), skip_at = 0, closed_at = 0, ping_at = 0;
    while (closed_at == 0 && ts_mono_us() - t0 < 30000000) {
        uint64_t now = ts_mono_us();
        if (now - ping_at >= 50000) {
            Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
            Tessera__V1__ClientFrame pf = TESSERA__V1__CLIENT_FRAME__INIT;
            pf.seq = seq + 1;
            pf.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
            pf.ping = &ping;
            len = pack_frame(buf, &pf);
            ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
            if (w == (ssize_t)len) seq++;
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) closed_at = ts_mono_us();
            ping_at = now;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
        if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) closed_at = ts_mono_us();
        if (closed_at != 0) break;
        if (skip_at == 0 && ts_h_metric(http, "tessera_gateway_deltas_skipped_total") > 0) {
            skip_at = ts_mono_us();
            assert_true(watch_moving(&watcher)); /* stopped later, by the close */
        }
        (void)cl_pump_until(&watcher, 20, NULL);
    }
    assert_true(skip_at != 0);   /* its Deltas were withheld ... */
    assert_true(closed_at != 0); /* ... and it was closed for it */
    double after_s = (double)(closed_at - skip_at) / 1e6;
    fprintf(stderr,
            "figure: non-reading player (default max_backlog 128 KiB): Deltas withheld %.1f s after the "
            "movers joined, closed %.2f s after that (slow_close_s 1)\n",
            (double)(skip_at - t0) / 1e6, after_s);
    /* the deadline starts when its output passes max_backlog, which is at
     * most a flush before the first Delta is withheld */
    assert_true(after_s >= 0.7 && after_s <= 2.0);
    assert_true(ts_h_wait_log(&ts_h, idx, "(slow reader); closing", 3000));
    /* its entity stops at once (Detach) */
    uint64_t c0 = ts_mono_us();
    assert_true(cl_pump_until(&watcher, 3000, watch_stopped));
    fprintf(stderr, "figure: its entity seen stopped %.2f s after the close\n",
            (double)(ts_mono_us() - c0) / 1e6);

    close(fd);
    for (int i = 0; i < MOVERS; i++)
        cl_close(&movers[i]);
    free(movers);
    cl_close(&watcher);
    ts_h_signal(&ts_h, idx, SIGTERM);
    ts_h_signal(&ts_h, midx, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, idx, 10000), 0);
    assert_int_equal(ts_h_wait(&ts_h, midx, 10000), 0);
    ts_h_pass();
}

/* An accepted player socket has TCP keepalive on, with the idle time of
 * gateway.keepalive_s (10): the gateway's end of the connection shows a
 * keepalive timer of at most 10 s in /proc/net/tcp (timer kind 2). */
static void test_keepalive_on(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)player_port(gw2_port))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct sockaddr_in me;
    socklen_t melen = sizeof me;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&me, &melen), 0);
    unsigned want_local = (unsigned)player_port(gw2_port), want_remote = ntohs(me.sin_port);
    /* the gateway's side: local port the gateway's, remote port ours */
    bool found = false, keepalive = false;
    unsigned long when = 0;
    uint64_t deadline = ts_mono_us() + 3000000;
    while (!keepalive && ts_mono_us() < deadline) {
        FILE *tcp = fopen("/proc/net/tcp", "r");
        assert_non_null(tcp);
        char line[512];
        while (fgets(line, sizeof line, tcp) != NULL) {
            unsigned lport = 0, rport = 0, st = 0, tr = 0;
            unsigned long tm = 0;
            if (sscanf(line, " %*d: %*x:%x %*x:%x %x %*x:%*x %x:%lx", &lport, &rport, &st, &tr, &tm) != 5)
                continue;
            if (lport != want_local || rport != want_remote || st != 1 /* ESTABLISHED */) continue;
            found = true;
            if (tr == 2) {
                keepalive = true;
                when = tm;
            }
        }
        fclose(tcp);
        if (!keepalive) ts_sleep_ms(50);
    }
    close(fd);
    assert_true(found);
    assert_true(keepalive);
    /* clock ticks (USER_HZ) left before the first probe */
    long hz = sysconf(_SC_CLK_TCK);
    assert_true(when > 0 && when <= (unsigned long)(10 * hz));
    ts_h_pass();
}

/* Sends Pings at `rate` frames/s for ms (or until closed); true if the
 * gateway closed the connection with a fatal ERROR_RATE_LIMIT. *closed_ms
 * is when, from the start. */
static bool ping_at(cl_t *p, int rate, int64_t ms, uint64_t *closed_ms)
{
    uint64_t t0 = ts_mono_us(), sent = 0;
    while (!p->closed && ts_mono_us() - t0 < (uint64_t)ms * 1000) {
        uint64_t due = rate ? (ts_mono_us() - t0) * (uint64_t)rate / 1000000 + 1 : 0;
        for (; sent < due; sent++) {
            Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
            Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
            f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
            f.ping = &ping;
            if (cl_send(p, &f) != TS_OK) break;
        }
        (void)cl_wait_frame(p, -1, 5); /* reads what came back */
        if (p->last_error_fatal) {
            *closed_ms = (ts_mono_us() - t0) / 1000;
            return p->last_error == TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT;
        }
    }
    return false;
}

/* Sends n Pings spread evenly over ms, reading what comes back; false if
 * the gateway closed the connection (a fatal error) meanwhile. */
static bool ping_n(cl_t *p, int n, int64_t ms)
{
    uint64_t t0 = ts_mono_us();
    for (int i = 0; i < n && !p->closed && !p->last_error_fatal; i++) {
        uint64_t due = t0 + (uint64_t)ms * 1000 * (uint64_t)i / (uint64_t)n;
        while (ts_mono_us() < due && !p->last_error_fatal)
            (void)cl_wait_frame(p, -1, 1);
        Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
        Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
        f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
        f.ping = &ping;
        if (cl_send(p, &f) != TS_OK) return false;
    }
    return !p->closed && !p->last_error_fatal;
}

/* gateway.rate_limit=20: the flood rule is "more than 10 x 20 frames/s for
 * 2 s", i.e. more than 400 frames within 2 s (counted in 100 ms steps: any
 * 1.9 s always counts). The frame that passes it closes the connection, at
 * once, wherever the flood starts; anything at or below it never does.
 * Frames over the plain rate limit are dropped with a non-fatal
 * ERROR_RATE_LIMIT. */
static void test_flood_limit_exact(void **state)
{
    (void)state;
    const char *extra[] = {"--gateway.rate_limit=20", NULL};
    int port = 0;
    int idx = spawn_gateway("gwf", 5, &port, extra);
    uint64_t at = 0;

    cl_t flood; /* 15x for up to 4 s: its 401st frame (the Hello, then 400 Pings) goes out 399/300 s in */
    cl_connect(&flood, port);
    cl_hello(&flood, NULL, NULL);
    assert_true(ping_at(&flood, 300, 4000, &at));
    assert_non_null(strstr(flood.last_error_msg, "more than 400 frames within 2 s"));
    fprintf(stderr, "figure: 15x flood closed %llu ms in (its 401st frame: 1330 ms)\n",
            (unsigned long long)at);
    assert_true(at >= 1330 && at <= 2000);
    cl_close(&flood);

    /* a flood starting in the middle of everything: 550 ms after the Hello,
     * 400 frames within 0.8 s (25x) are not closed; the 401st, 0.3 s later
     * (401 within 1.1 s), is */
    cl_t mid;
    cl_connect(&mid, port);
    cl_hello(&mid, NULL, NULL);
    assert_false(ping_at(&mid, 0, 550, &at));
    uint64_t first = ts_mono_us();
    assert_true(ping_n(&mid, 399, 800));      /* with the Hello: 400 */
    assert_false(ping_at(&mid, 0, 300, &at)); /* reads; nothing fatal */
    assert_false(mid.closed);
    assert_true(ping_n(&mid, 1, 0)); /* the 401st */
    uint64_t sent = ts_mono_us();
    assert_true(sent - first < 1800000); /* all 401 within 1.9 s (the client kept its pace) */
    expect_fatal(&mid, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT, 1000);
    fprintf(stderr, "figure: the 401st frame of a mid-window flood closed it within %.1f ms\n",
            (double)(ts_mono_us() - sent) / 1000.0);
    cl_close(&mid);

    cl_t bursts; /* 15x for 0.8 s, then quiet for 1.3 s, three times (at most 210 within 2 s) */
    cl_connect(&bursts, port);
    cl_hello(&bursts, NULL, NULL);
    for (int i = 0; i < 3; i++) {
        assert_false(ping_at(&bursts, 300, 800, &at));
        assert_false(ping_at(&bursts, 0, 1300, &at));
    }
    assert_false(bursts.closed);
    cl_close(&bursts);

    cl_t busy; /* just below: 9x (360 within 2 s) for 5 s, never closed */
    cl_connect(&busy, port);
    cl_hello(&busy, NULL, NULL);
    assert_false(ping_at(&busy, 180, 5000, &at));
    assert_false(busy.closed);
    /* what passes 20 frames/s is dropped, and it was told (not fatal) */
    assert_int_equal(busy.last_error, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT);
    assert_false(busy.last_error_fatal);
    assert_non_null(strstr(busy.last_error_msg, "frames are dropped"));
    cl_close(&busy);

    ts_h_signal(&ts_h, idx, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, idx, 10000), 0);
    ts_h_pass();
}

static bool me_applied(const cl_t *p);

/* gateway.max_conns_per_ip=3: a fourth connection from one address is
 * refused with ERROR_UNAVAILABLE, the three keep playing, and a slot that
 * frees is taken again. */
static void test_conns_per_ip(void **state)
{
    (void)state;
    const char *extra[] = {"--gateway.max_conns_per_ip=3", NULL};
    int port = 0;
    int idx = spawn_gateway("gwip", 9, &port, extra);
    cl_t p[3];
    for (int i = 0; i < 3; i++)
        join_player(&p[i], port, 70 + i, 70);
    if (use_ws) { /* refused before the upgrade: an HTTP 503 saying why */
        char body[512];
        assert_int_equal(ts_h_http_get(player_port(port), "/ws", body, sizeof body), 503);
        assert_non_null(strstr(body, "too many connections"));
    } else {
        cl_t extra_conn;
        cl_connect(&extra_conn, port);
        expect_fatal(&extra_conn, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, 3000);
        assert_non_null(strstr(extra_conn.last_error_msg, "too many connections"));
        cl_close(&extra_conn);
    }
    for (int i = 0; i < 3; i++) {
        p[i].want_seq = p[i].seq + 1;
        cl_move_seq(&p[i], p[i].want_seq, 1, 0);
        assert_true(cl_pump_until(&p[i], 3000, me_applied));
        assert_false(p[i].closed);
    }
    cl_close(&p[2]);
    /* the gateway notices the close, then the slot is free */
    cl_t again;
    uint64_t deadline = ts_mono_us() + 3000000;
    bool joined = false;
    while (!joined && ts_mono_us() < deadline) {
        memset(&again, 0, sizeof again);
        ts_status_t st = use_ws ? ts_client_connect_ws(&again.c, "127.0.0.1", player_port(port), NULL, 3000)
                                : ts_client_connect(&again.c, "127.0.0.1", port, 3000);
        if (st != TS_OK) { /* refused: not noticed yet */
            ts_sleep_ms(100);
            continue;
        }
        cl_join(&again, 72, 70);
        joined = cl_wait_frame(&again, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 1000);
        if (!joined) cl_close(&again);
    }
    assert_true(joined);
    cl_close(&again);
    cl_close(&p[0]);
    cl_close(&p[1]);
    ts_h_signal(&ts_h, idx, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, idx, 10000), 0);
    ts_h_pass();
}

static void test_idle_sockets_do_not_lock_players_out(void **state)
{
    (void)state;
    enum { N = 10000 };
    int *fds = calloc(N, sizeof *fds);
    assert_non_null(fds);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)player_port(gw2_port))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    /* all connects at once (non-blocking), then each one must complete: a
     * connect the gateway's accept queue drops for a moment waits out its
     * SYN retry alongside the others, not one after another */
    int n = 0;
    for (; n < N; n++) {
        fds[n] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fds[n] < 0) break;
        if (connect(fds[n], (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
            close(fds[n]);
            break;
        }
    }
    assert_int_equal(n, N);
    struct pollfd *pfds = calloc(N, sizeof *pfds);
    assert_non_null(pfds);
    for (int i = 0; i < N; i++)
        pfds[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT};
    int connected = 0, failed = 0;
    uint64_t deadline = ts_mono_us() + 60000000ULL;
    while (connected + failed < N && ts_mono_us() < deadline) {
        if (poll(pfds, N, 1000) <= 0) continue;
        for (int i = 0; i < N; i++) {
            if (pfds[i].fd < 0 || pfds[i].revents == 0) continue;
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(pfds[i].fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
                connected++;
            else
                failed++;
            pfds[i].fd = -1;
        }
    }
    free(pfds);
    assert_int_equal(failed, 0);
    assert_int_equal(connected, N);
    /* gw2 runs with gateway.max_clients=10000: the idle sockets fill that
     * many slots if they counted, but only joined players count */
    cl_t p;
    uint64_t t0 = ts_mono_us();
    join_player(&p, gw2_port, 50, 50);
    fprintf(stderr, "figure: join with %d idle sockets open: Snapshot after %.1f ms\n", N,
            (double)(ts_mono_us() - t0) / 1000.0);
    /* what 10,000 idle connections cost the gateway's loop */
    double c0 = cpu_s(ts_h.procs[gw2_idx].pid);
    assert_true(cl_pump_until(&p, 3000, NULL) && !p.closed);
    fprintf(stderr, "figure: gateway CPU with %d idle sockets and one player: %.1f %% of one core over 3 s\n",
            N, (cpu_s(ts_h.procs[gw2_idx].pid) - c0) / 3.0 * 100.0);
    cl_close(&p);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    ts_h_pass();
}

static void test_gateway_killed_players_despawned(void **state)
{
    (void)state;
    int port = 0;
    int idx = spawn_gateway("gwk", 4, &port, NULL);
    cl_t watcher, p;
    join_player(&watcher, gw2_port, -60, -60);
    join_player(&p, port, -62, -62);
    cl_move_seq(&p, p.seq + 1, 0, 2);
    watcher.watch = p.entity;
    assert_true(cl_pump_until(&watcher, 5000, watch_seen));
    ts_h_signal(&ts_h, idx, SIGKILL);
    uint64_t t0 = ts_mono_us();
    assert_true(cl_pump_until(&watcher, (GRACE_S + 5) * 1000, watch_removed));
    fprintf(stderr, "figure: SIGKILLed gateway's entity despawned %.1f s after the kill (grace %d s)\n",
            (double)(ts_mono_us() - t0) / 1e6, GRACE_S);
    cl_close(&p);
    cl_close(&watcher);
    ts_h_pass();
}

/* The entity's gateway and detachment travel with the cell: a player who
 * left without a Leave is despawned on time by the cell's new owner. */
static void test_detached_entity_despawned_after_handover(void **state)
{
    (void)state;
    cl_t watcher, p;
    join_player(&watcher, gw2_port, -40, 60);
    join_player(&p, stack.gw_port, -42, 62);
    cl_move_seq(&p, p.seq + 1, 1, 0);
    watcher.watch = p.entity;
    assert_true(cl_pump_until(&watcher, 5000, watch_seen));
    cl_close(&p); /* no Leave */
    uint64_t t0 = ts_mono_us();
    assert_true(cl_pump_until(&watcher, 3000, watch_stopped));
    /* to whichever worker does not own the cell now */
    const char *reply = "";
    for (int i = 0; i < 2; i++) {
        reply = run_line(
            "TESSERA_NATS_URL='%s' TESSERA_REDIS_URL='%s' %s/tessera-ctl handover 0.-1.0.0.0 %s 2>&1 | "
            "tail -1",
            ts_h.nats_url, ts_h.redis_url, TS_BIN_DIR, i == 0 ? "w2" : "w1");
        if (strstr(reply, "already owns") == NULL) break;
    }
    if (strncmp(reply, "ok", 2) != 0) fprintf(stderr, "handover: %s\n", reply);
    assert_true(strncmp(reply, "ok", 2) == 0);
    assert_false(watcher.watch_removed);
    assert_true(cl_pump_until(&watcher, (GRACE_S + 4) * 1000, watch_removed));
    uint64_t gone_ms = (ts_mono_us() - t0) / 1000;
    assert_true(gone_ms >= (GRACE_S - 1) * 1000);
    cl_close(&watcher);
    ts_h_pass();
}

/* ---- resume -------------------------------------------------------------- */

static bool acked_6(const cl_t *p)
{
    return p->ack >= 6;
}
static bool applied_12(const cl_t *p)
{
    return p->me_seen && p->me.last_input_seq == 12;
}

static void test_resume_on_second_gateway_exactly_once(void **state)
{
    (void)state;
    cl_t p;
    join_player(&p, stack.gw_port, -20, 20); /* seq 1: Join */
    uint64_t entity = p.entity;
    for (uint64_t s = 2; s <= 6; s++)
        cl_move_seq(&p, s, (double)s, 0);
    assert_true(cl_pump_until(&p, 5000, acked_6));
    /* 7..9 go out, then the connection drops without a Leave */
    for (uint64_t s = 7; s <= 9; s++)
        cl_move_seq(&p, s, (double)s, 1);
    char token[1024];
    snprintf(token, sizeof token, "%s", p.resume_token);
    cl_close(&p);

    /* on the other gateway, within the grace */
    cl_t q;
    cl_connect(&q, gw2_port);
    cl_hello(&q, NULL, token); /* a new connection numbers its frames afresh */
    assert_true(cl_wait_frame(&q, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 5000));
    assert_true(q.resumed);
    assert_int_equal(q.entity, entity);
    assert_true(cl_wait_frame(&q, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    /* resend what may not be applied (above the newest ack known), plus an
     * acknowledged one: the worker applies each client seq once */
    uint64_t from = q.welcome_ack > q.ack ? q.welcome_ack : q.ack;
    if (from > 6) from = 6;
    for (uint64_t s = from; s <= 9; s++)
        cl_move_seq(&q, s, (double)s, 1);
    for (uint64_t s = 10; s <= 12; s++)
        cl_move_seq(&q, s, 1, 1);
    assert_true(cl_pump_until(&q, 8000, applied_12));
    assert_int_equal(q.me.id, entity);
    assert_int_equal(q.me.inputs_applied, 12); /* Join + 11 Moves, each once */
    assert_int_equal(q.ack, 12);
    assert_true(q.me.vx == 1 && q.me.vy == 1);
    cl_close(&q);
    ts_h_pass();
}

static void test_resume_refused_forged_or_expired(void **state)
{
    (void)state;
    cl_t p;
    join_player(&p, stack.gw_port, -30, -30);
    char token[1024];
    snprintf(token, sizeof token, "%s", p.resume_token);

    /* forged: one digit of the MAC changed */
    char forged[1024];
    snprintf(forged, sizeof forged, "%s", token);
    char *last = forged + strlen(forged) - 1;
    *last = *last == '0' ? '1' : '0';
    cl_t q;
    cl_connect(&q, gw2_port);
    cl_hello(&q, NULL, forged);
    expect_fatal(&q, TESSERA__V1__ERROR_CODE__ERROR_RESUME_REFUSED, 3000);
    cl_close(&q);

    /* expired: the same entity, signed with the right secret, exp in the past */
    char body[512];
    unsigned long long ent = 0, exp = 0, sub = 0;
    unsigned world = 0, depth = 0;
    int cx = 0, cy = 0;
    assert_int_equal(sscanf(token, "%llu.%u.%d.%d.%u.%llu.%llu.", &ent, &world, &cx, &cy, &depth, &sub, &exp),
                     7);
    snprintf(body, sizeof body, "%llu.%u.%d.%d.%u.%llu.%llu.", ent, world, cx, cy, depth, sub,
             (unsigned long long)time(NULL) - 10);
    const char *mac =
        run_line("printf '%%s' '%s' | openssl dgst -sha256 -hmac '%s' | sed 's/^.*= //'", body, SECRET);
    assert_int_equal(strlen(mac), 64);
    char expired[1024];
    snprintf(expired, sizeof expired, "%s.%s", body, mac);
    cl_connect(&q, gw2_port);
    cl_hello(&q, NULL, expired);
    expect_fatal(&q, TESSERA__V1__ERROR_CODE__ERROR_RESUME_REFUSED, 3000);
    assert_non_null(strstr(q.last_error_msg, "expired"));
    cl_close(&q);

    /* the genuine token still works (same gateway, taking over the connection) */
    cl_connect(&q, stack.gw_port);
    cl_hello(&q, NULL, token);
    assert_true(cl_wait_frame(&q, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    assert_true(q.resumed);
    assert_int_equal(q.entity, p.entity);
    cl_close(&q);
    cl_close(&p);
    ts_h_pass();
}

static void test_leave_then_join_same_connection(void **state)
{
    (void)state;
    cl_t p;
    join_player(&p, gw2_port, 70, -70);
    uint64_t first = p.entity;
    Tessera__V1__Leave l = TESSERA__V1__LEAVE__INIT;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_LEAVE;
    f.leave = &l;
    assert_int_equal(cl_send(&p, &f), TS_OK);
    p.resume_token[0] = '\0';
    cl_join(&p, 71, -71);
    assert_true(cl_wait_frame(&p, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    assert_true(p.entity != 0 && p.entity != first);
    cl_close(&p);
    ts_h_pass();
}

/* ---- auth ---------------------------------------------------------------- */

/* The own entity's state shows the last input sent applied (a state from
 * before it, still on its way, does not count). */
static bool me_applied(const cl_t *p)
{
    return p->me_seen && p->me.last_input_seq >= p->want_seq;
}

static void test_auth(void **state)
{
    (void)state;
    char priv[512], pub[512], pubarg[600];
    snprintf(priv, sizeof priv, "%s/jwt-priv.pem", ts_h.dir);
    snprintf(pub, sizeof pub, "%s/jwt-pub.pem", ts_h.dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s 2>/dev/null && "
             "openssl pkey -in %s -pubout -out %s",
             priv, priv, pub);
    assert_int_equal(system(cmd), 0);
    snprintf(pubarg, sizeof pubarg, "--gateway.auth.public_key=%s", pub);
    const char *extra[] = {"--gateway.auth.required=1", "--gateway.auth.secret=" AUTH_SECRET, pubarg,
                           "--gateway.auth.audience=" AUDIENCE, NULL};
    int port = 0;
    int idx = spawn_gateway("gwa", 3, &port, extra);
    const char *ctl = TS_BIN_DIR "/tessera-ctl token";
    char hs[2048], rs[2048];
    snprintf(hs, sizeof hs, "%s",
             run_line("%s --sub alice --secret %s --aud %s", ctl, AUTH_SECRET, AUDIENCE));
    snprintf(rs, sizeof rs, "%s", run_line("%s --sub bob --key %s --aud %s", ctl, priv, AUDIENCE));

    /* HS256: alice plays */
    cl_t alice;
    cl_connect(&alice, port);
    cl_hello(&alice, hs, NULL);
    assert_true(cl_wait_frame(&alice, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    assert_string_equal(alice.player, "alice");
    cl_join(&alice, 10, -10);
    assert_true(cl_wait_frame(&alice, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));

    /* RS256: bob plays */
    cl_t bob;
    cl_connect(&bob, port);
    cl_hello(&bob, rs, NULL);
    assert_true(cl_wait_frame(&bob, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    assert_string_equal(bob.player, "bob");
    cl_join(&bob, 12, -12);
    assert_true(cl_wait_frame(&bob, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));

    char expired[2048], wrongsig[2048], wrongaud[2048], hs_as_rs[2048];
    snprintf(expired, sizeof expired, "%s",
             run_line("%s --sub eve --secret %s --aud %s --ttl -1h", ctl, AUTH_SECRET, AUDIENCE));
    snprintf(wrongsig, sizeof wrongsig, "%s",
             run_line("%s --sub eve --secret other --aud %s", ctl, AUDIENCE));
    snprintf(wrongaud, sizeof wrongaud, "%s",
             run_line("%s --sub eve --secret %s --aud other", ctl, AUTH_SECRET));
    /* HS256 "signed" with the RS256 public key as the secret */
    snprintf(hs_as_rs, sizeof hs_as_rs, "%s",
             run_line("%s --sub eve --secret \"$(cat %s)\" --aud %s", ctl, pub, AUDIENCE));
    const char *tokens[] = {expired, wrongsig, wrongaud, "", hs_as_rs};
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
        cl_t eve;
        cl_connect(&eve, port);
        cl_hello(&eve, tokens[i], NULL);
        expect_fatal(&eve, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, 3000);
        cl_close(&eve);
        /* alice keeps playing meanwhile */
        alice.want_seq = alice.seq + 1;
        cl_move_seq(&alice, alice.want_seq, (double)(i + 1), 0);
        if (!cl_pump_until(&alice, 3000, me_applied))
            fail_msg("alice: input %llu sent, her state shows %llu", (unsigned long long)alice.want_seq,
                     (unsigned long long)alice.me.last_input_seq);
        assert_int_equal(alice.me.vx, (double)(i + 1));
    }
    /* Join without a Hello carrying a token */
    cl_t eve;
    cl_connect(&eve, port);
    cl_join(&eve, 10, 10);
    expect_fatal(&eve, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, 3000);
    cl_close(&eve);
    /* alice logs in again while she plays: the new login takes her entity
     * over where it is, the old connection is closed */
    cl_t alice2;
    cl_connect(&alice2, port);
    cl_hello(&alice2, hs, NULL);
    assert_true(cl_wait_frame(&alice2, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    cl_join(&alice2, -30, 30);
    assert_true(cl_wait_frame(&alice2, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    assert_true(alice2.resumed);
    assert_int_equal(alice2.entity, alice.entity);
    assert_true(alice2.welcome_ack >= alice.want_seq);
    expect_fatal(&alice, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, 3000);
    cl_close(&alice);
    alice = alice2;
    alice.want_seq = alice.welcome_ack + 1;
    cl_move_seq(&alice, alice.want_seq, 0, 0);
    assert_true(cl_pump_until(&alice, 3000, me_applied));
    assert_true(alice.me.x > 0); /* where she was, not where the second Join asked */
    assert_false(bob.closed);

    /* the CLI logs in with --token; without one it is turned away */
    char carol[2048];
    snprintf(carol, sizeof carol, "%s",
             run_line("%s --sub carol --secret %s --aud %s", ctl, AUTH_SECRET, AUDIENCE));
    assert_string_equal(run_line("%s/tessera-client --gateway.listen=127.0.0.1:%d --token %s join 5 5 2>&1 | "
                                 "grep -c 'welcome .*player=carol'",
                                 TS_BIN_DIR, port, carol),
                        "2");
    assert_string_equal(
        run_line(
            "%s/tessera-client --gateway.listen=127.0.0.1:%d join 5 5 2>&1 | grep -c 'error UNAUTHENTICATED'",
            TS_BIN_DIR, port),
        "1");

    /* alice's connection drops; her resume token works only with her login */
    char token[1024];
    snprintf(token, sizeof token, "%s", alice.resume_token);
    uint64_t entity = alice.entity;
    cl_close(&alice);
    char eve_hs[2048];
    snprintf(eve_hs, sizeof eve_hs, "%s",
             run_line("%s --sub eve --secret %s --aud %s", ctl, AUTH_SECRET, AUDIENCE));
    cl_t eve2;
    cl_connect(&eve2, port);
    cl_hello(&eve2, eve_hs, token);
    expect_fatal(&eve2, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, 3000);
    cl_close(&eve2);
    cl_connect(&alice, port);
    cl_hello(&alice, hs, token);
    assert_true(cl_wait_frame(&alice, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    assert_true(alice.resumed);
    assert_int_equal(alice.entity, entity);
    assert_string_equal(alice.player, "alice");

    cl_close(&alice);
    cl_close(&bob);
    ts_h_signal(&ts_h, idx, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, idx, 10000), 0);
    ts_h_pass();
}

/* One player, one entity, on every gateway: a second login of the same sub
 * on another gateway takes the entity over (no second entity, no teleport,
 * the old connection closed); with no connection left, a login takes the
 * detached entity back. */
static bool me_at_least_vy2(const cl_t *p)
{
    return me_applied(p) && p->me.vy == 2;
}

/* The first login claim gateway 7 publishes (signed), kept to be replayed. */
static struct {
    pthread_mutex_t mu;
    char line[1024];
} claim_seen = {PTHREAD_MUTEX_INITIALIZER, ""};

static void on_claim_seen(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    size_t len = ts_bus_msg_len(m);
    const char *data = (const char *)ts_bus_msg_data(m);
    pthread_mutex_lock(&claim_seen.mu);
    if (claim_seen.line[0] == '\0' && len < sizeof claim_seen.line && len > 6 &&
        memmem(data, len, " 7 ", 3)) {
        memcpy(claim_seen.line, data, len);
        claim_seen.line[len] = '\0';
    }
    pthread_mutex_unlock(&claim_seen.mu);
}

static void test_login_once_across_gateways(void **state)
{
    (void)state;
    const char *extra[] = {"--gateway.auth.required=1", "--gateway.auth.secret=" AUTH_SECRET, NULL};
    int pa = 0, pb = 0;
    int ia = spawn_gateway("gwla", 7, &pa, extra);
    int ib = spawn_gateway("gwlb", 8, &pb, extra);
    /* a bus user that reads the players' claims and publishes its own */
    ts_bus_t *bus = NULL;
    ts_bus_sub_t *claims = NULL;
    char claim_subject[64];
    snprintf(claim_subject, sizeof claim_subject, "tessera.player.%d.claim", WORLD);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_players-claims"), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, claim_subject, on_claim_seen, NULL, &claims), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    const char *ctl = TS_BIN_DIR "/tessera-ctl token";
    char dave_tok[2048];
    snprintf(dave_tok, sizeof dave_tok, "%s", run_line("%s --sub dave --secret %s", ctl, AUTH_SECRET));

    /* dave plays on gateway a and walks east */
    uint64_t t_login;
    cl_t dave;
    cl_connect(&dave, pa);
    cl_hello(&dave, dave_tok, NULL);
    assert_true(cl_wait_frame(&dave, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    t_login = ts_mono_us();
    cl_join(&dave, 150, -150);
    assert_true(cl_wait_frame(&dave, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 5000));
    fprintf(stderr,
            "figure: first login (no entity yet): Welcome %.1f ms after the Join (the claim waits 500 ms)\n",
            (double)(ts_mono_us() - t_login) / 1000.0);
    assert_true(cl_wait_frame(&dave, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    assert_false(dave.resumed);
    uint64_t entity = dave.entity;
    assert_true(entity >> 63); /* a player's entity id, the same on every gateway */
    dave.want_seq = dave.seq + 1;
    cl_move_seq(&dave, dave.want_seq, 1, 0);
    assert_true(cl_pump_until(&dave, 5000, me_applied));

    /* a watcher on gateway b, far from dave, where dave's second Join asks */
    char walt_tok[2048];
    snprintf(walt_tok, sizeof walt_tok, "%s", run_line("%s --sub walt --secret %s", ctl, AUTH_SECRET));
    cl_t watcher;
    cl_connect(&watcher, pb);
    cl_hello(&watcher, walt_tok, NULL);
    cl_join(&watcher, -150, 150);
    assert_true(cl_wait_frame(&watcher, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    watcher.watch = entity;

    /* dave logs in on gateway b and joins somewhere else */
    cl_t dave2;
    cl_connect(&dave2, pb);
    cl_hello(&dave2, dave_tok, NULL);
    assert_true(cl_wait_frame(&dave2, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    t_login = ts_mono_us();
    cl_join(&dave2, -150, 150);
    assert_true(cl_wait_frame(&dave2, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 5000));
    fprintf(stderr,
            "figure: second login on another gateway: entity taken over, Welcome %.1f ms after the Join\n",
            (double)(ts_mono_us() - t_login) / 1000.0);
    assert_true(cl_wait_frame(&dave2, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    assert_true(dave2.resumed);
    assert_int_equal(dave2.entity, entity);
    assert_true(dave2.welcome_ack >= dave.want_seq);
    expect_fatal(&dave, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, 3000);
    assert_non_null(strstr(dave.last_error_msg, "logged in on another connection"));
    cl_close(&dave);
    /* dave2 drives the same entity, from where it was */
    dave2.want_seq = dave2.welcome_ack + 1;
    cl_move_seq(&dave2, dave2.want_seq, 0, 2);
    if (!cl_pump_until(&dave2, 5000, me_at_least_vy2))
        fail_msg("dave2: input %llu sent, state shows %llu", (unsigned long long)dave2.want_seq,
                 (unsigned long long)dave2.me.last_input_seq);
    assert_true(dave2.me.x > 150); /* it kept walking east from (150, -150): no teleport */
    assert_true(dave2.me.y < -100);

    /* claims that do not come from a gateway holding the shared secret, or
     * that are older than dave2's login, close nothing: an unsigned one, a
     * wrongly signed one, and gateway a's signed claim from dave's first
     * login, replayed */
    char forged[1100];
    int n = snprintf(forged, sizeof forged, "claim %llu 7 99 1 %llu tessera.player.%d.found.g7.x",
                     (unsigned long long)entity, (unsigned long long)ts_now_us(), WORLD);
    assert_int_equal(ts_bus_publish(bus, claim_subject, NULL, forged, (size_t)n), TS_OK);
    assert_true(ts_h_wait_log(&ts_h, ib, "login claim refused (no valid signature", 5000));
    n = snprintf(forged, sizeof forged, "claim %llu 7 99 1 %llu tessera.player.%d.found.g7.x %064d",
                 (unsigned long long)entity, (unsigned long long)ts_now_us(), WORLD, 0);
    assert_int_equal(ts_bus_publish(bus, claim_subject, NULL, forged, (size_t)n), TS_OK);
    pthread_mutex_lock(&claim_seen.mu);
    snprintf(forged, sizeof forged, "%s", claim_seen.line);
    pthread_mutex_unlock(&claim_seen.mu);
    assert_true(forged[0] != '\0'); /* gateway a's claim was seen on the bus */
    assert_int_equal(ts_bus_publish(bus, claim_subject, NULL, forged, strlen(forged)), TS_OK);
    assert_true(ts_h_wait_log(&ts_h, ib, "login claim refused (older than the connection", 5000));
    /* dave2 still plays: its next input is applied, no error came */
    dave2.want_seq = dave2.seq + 1;
    cl_move_seq(&dave2, dave2.want_seq, 0, 2);
    if (!cl_pump_until(&dave2, 5000, me_applied))
        fail_msg("dave2 after forged claims: input %llu sent, state shows %llu (error %d: %s)",
                 (unsigned long long)dave2.want_seq, (unsigned long long)dave2.me.last_input_seq,
                 (int)dave2.last_error, dave2.last_error_msg);
    assert_int_equal(dave2.last_error, 0);
    ts_bus_sub_close(claims);
    ts_bus_close(bus);
    /* and nothing named dave appeared where the second Join asked */
    assert_false(cl_pump_until(&watcher, 1000, watch_seen));

    /* dave2's connection drops: the entity is detached; a login on gateway
     * a takes it back (the worker answers) */
    cl_close(&dave2);
    cl_t dave3;
    cl_connect(&dave3, pa);
    cl_hello(&dave3, dave_tok, NULL);
    assert_true(cl_wait_frame(&dave3, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 3000));
    t_login = ts_mono_us();
    cl_join(&dave3, -150, 150);
    assert_true(cl_wait_frame(&dave3, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, 5000));
    fprintf(stderr, "figure: login taking a detached entity back: Welcome %.1f ms after the Join\n",
            (double)(ts_mono_us() - t_login) / 1000.0);
    assert_true(cl_wait_frame(&dave3, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 5000));
    assert_true(dave3.resumed);
    assert_int_equal(dave3.entity, entity);
    assert_true(dave3.welcome_ack >= dave2.want_seq);
    dave3.want_seq = dave3.welcome_ack + 1;
    cl_move_seq(&dave3, dave3.want_seq, 0, 0);
    assert_true(cl_pump_until(&dave3, 5000, me_applied));
    assert_true(dave3.me.x > 150 && dave3.me.y > -150 && dave3.me.y < -100);
    assert_false(cl_pump_until(&watcher, 500, watch_seen));

    /* a login with tessera-client takes the entity over and its moves are
     * applied at once: it numbers them above Welcome.last_input_seq */
    cl_close(&dave3);
    unsigned long long cli_applied = 0, cli_seq = 0;
    const char *fin =
        run_line("%s/tessera-client --gateway.listen=127.0.0.1:%d --token %s move 0 1 0.5 2>&1 | "
                 "grep '^final '",
                 TS_BIN_DIR, pa, dave_tok);
    const char *ap = strstr(fin, "applied=");
    if (ap == NULL || sscanf(ap, "applied=%llu last_seq=%llu", &cli_applied, &cli_seq) != 2)
        fail_msg("tessera-client after a takeover: '%s'", fin);
    fprintf(stderr, "tessera-client takeover: %s (the entity's inputs before: seq %llu)\n", fin,
            (unsigned long long)dave3.want_seq);
    assert_true(cli_seq > dave3.want_seq);

    /* two logins of one new player at once on two gateways: the later wins,
     * one entity */
    char erin_tok[2048];
    snprintf(erin_tok, sizeof erin_tok, "%s", run_line("%s --sub erin --secret %s", ctl, AUTH_SECRET));
    cl_t e1, e2;
    cl_connect(&e1, pa);
    cl_connect(&e2, pb);
    cl_hello(&e1, erin_tok, NULL);
    cl_hello(&e2, erin_tok, NULL);
    cl_join(&e1, 5, 5);
    cl_join(&e2, 6, 6);
    bool s1 = cl_wait_frame(&e1, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 3000);
    bool s2 = cl_wait_frame(&e2, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, 3000);
    cl_t *winner = s2 ? &e2 : &e1, *loser = s2 ? &e1 : &e2;
    assert_true(s1 || s2);
    if (s1 && s2) { /* the first spawned, the second took it over */
        assert_int_equal(e1.entity, e2.entity);
        winner = e2.resumed ? &e2 : &e1;
        loser = winner == &e2 ? &e1 : &e2;
    }
    (void)cl_pump_until(loser, 2000, NULL);
    assert_true(loser->closed);
    assert_int_equal(loser->last_error, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED);
    winner->want_seq = (winner->resumed ? winner->welcome_ack : winner->seq) + 1;
    cl_move_seq(winner, winner->want_seq, 1, 1);
    assert_true(cl_pump_until(winner, 5000, me_applied));
    assert_false(winner->closed);

    cl_close(&e1);
    cl_close(&e2);
    cl_close(&watcher);
    ts_h_signal(&ts_h, ia, SIGTERM);
    ts_h_signal(&ts_h, ib, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, ia, 10000), 0);
    assert_int_equal(ts_h_wait(&ts_h, ib, 10000), 0);
    ts_h_pass();
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    /* the workers check the resume token of an Attach from another gateway */
    const char *workers[] = {"--gateway.resume_s=3", "--gateway.resume_secret=" SECRET, NULL};
    int ws1 = ts_h_free_port(), ws2 = ts_h_free_port();
    char ws1_listen[64], ws2_listen[64];
    snprintf(ws1_listen, sizeof ws1_listen, "--gateway.ws_listen=127.0.0.1:%d", ws1);
    snprintf(ws2_listen, sizeof ws2_listen, "--gateway.ws_listen=127.0.0.1:%d", ws2);
    const char *gw[] = {
        "--gateway.resume_secret=" SECRET, "--gateway.resume_s=3",     "--gateway.hello_timeout_s=1",
        "--gateway.idle_timeout_s=2",      "--gateway.slow_close_s=1", "--gateway.max_backlog=1024",
        "--gateway.rate_limit=1000000",    use_ws ? ws1_listen : NULL, NULL};
    ts_h_spawn_stack(&ts_h, NULL, workers, gw, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, 30000) || !ts_h_wait_port(stack.gw_port, 15000) ||
        (use_ws && !ts_h_wait_port(ws1, 15000))) {
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    gw2_port = ts_h_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", gw2_port);
    const char *gw2[] = {listen,
                         "--gateway.id=2",
                         "--gateway.resume_secret=" SECRET,
                         "--gateway.resume_s=3",
                         "--gateway.hello_timeout_s=60",
                         "--gateway.idle_timeout_s=60",
                         "--gateway.max_clients=10000",
                         use_ws ? ws2_listen : NULL,
                         NULL};
    gw2_idx = ts_h_spawn(&ts_h, "gw2", "tessera-gateway", gw2);
    if (!ts_h_wait_port(gw2_port, 15000) || (use_ws && !ts_h_wait_port(ws2, 15000))) {
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    if (use_ws) {
        note_ws_port(stack.gw_port, ws1);
        note_ws_port(gw2_port, ws2);
    }
    return 0;
}

int main(int argc, char **argv)
{
    use_ws = argc > 1 && strcmp(argv[1], "--ws") == 0;
    /* 10,000 sockets here and as many in the gateway (it inherits this) */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_hello_timeout),
        TS_H_TEST(test_idle_player_stopped_then_despawned),
        TS_H_TEST(test_slow_reader_closed),
        TS_H_TEST(test_slow_reader_default_backlog),
        TS_H_TEST(test_keepalive_on),
        TS_H_TEST(test_resume_on_second_gateway_exactly_once),
        TS_H_TEST(test_resume_refused_forged_or_expired),
        TS_H_TEST(test_leave_then_join_same_connection),
        TS_H_TEST(test_gateway_killed_players_despawned),
        TS_H_TEST(test_detached_entity_despawned_after_handover),
        TS_H_TEST(test_auth),
        TS_H_TEST(test_login_once_across_gateways),
        TS_H_TEST(test_flood_limit_exact),
        TS_H_TEST(test_conns_per_ip),
        TS_H_TEST(test_idle_sockets_do_not_lock_players_out),
    };
    return TS_H_RUN(use_ws ? "it_players_ws" : "it_players", tests, group_setup, ts_h_group_teardown);
}
