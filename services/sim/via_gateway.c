/* Gateway mode of tessera-sim: N real clients on one libuv loop.
 *
 * Each client walks IDLE -> CONNECTING -> JOINING -> PLAYING, or ends in
 * FAILED (could not connect or join) or DROPPED (the gateway closed a
 * joined client). With o->ws_path a client stays CONNECTING until the
 * gateway answered its WebSocket upgrade (ws_client.c) and then speaks in
 * binary messages: same frames, same timings, same counters; the bytes
 * counted are those on the wire (WebSocket headers instead of length
 * prefixes). The run walks RAMP -> PLAY -> SETTLE -> DONE:
 *
 *   RAMP    clients connect at up to TS_VG_CONNECT_RATE a second, at most
 *           TS_VG_MAX_HANDSHAKES between connect and the Snapshot that
 *           answers their Join; each sends Hello (seq 1) and Join (seq 2) on
 *           connect, then Moves at rate_hz (seq 3, 4, ...) once joined.
 *   PLAY    starts when no client is still connecting or joining and lasts
 *           duration_s; latency, Deltas and bytes are measured over it.
 *   SETTLE  no more Moves; waits up to SETTLE_MS until every playing
 *           client's own entity shows inputs_applied >= its inputs sent.
 *
 * One 5 ms timer drives connects, Moves, timeouts and the report; reads go
 * into one shared buffer and whole frames are scanned in place (track.c),
 * so per-client memory is the frame reader's partial frame, the send-time
 * ring and a few counters. Writes go out with uv_try_write; only what the
 * socket does not take is copied into a queued uv_write, and a client with
 * more than MAX_OUT_PENDING bytes queued skips Moves (counted) instead of
 * growing without bound.
 *
 * Each client follows its entity's cell from the frames (track.c): how
 * many CellChanged it got, whether one named the cell it already had or a
 * frame named a new cell without one (either fails the run), and the
 * deepest cell it was in. With a hotspot, a share of the clients walks into
 * it and later disperses (ts_sim_crowd_heading, as bus-mode players do). */
#include "via_gateway.h"

#include <math.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "latency.h"
#include "tessera/frame.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/service.h"
#include "tessera/util.h"
#include "track.h"
#include "ws_client.h"

#define TICK_MS 5
#define REPORT_US 1000000ull
#define SETTLE_MS 20000
#define JOIN_TIMEOUT_US 15000000ull
#define CONNECT_ATTEMPTS 3
#define RETRY_US 500000ull
#define MAX_OUT_PENDING (64 * 1024)
#define READ_BUF (64 * 1024)
#define MAX_FRAME (4u * 1024u * 1024u)
#define ERRORS_LOGGED 10
/* a tick this much later than TICK_MS counts as the generator falling behind */
#define LATE_TICK_MS 20
/* file descriptors besides the clients' sockets */
#define FD_MARGIN 64
/* Heading change per Move, radians (uniform in +-TURN/2). */
#define TURN 0.6

typedef enum {
    CL_IDLE = 0,
    CL_CONNECTING,
    CL_JOINING,
    CL_PLAYING,
    CL_FAILED,
    CL_DROPPED,
    CL_NPHASES
} cl_phase_t;
typedef enum { RUN_RAMP = 0, RUN_PLAY, RUN_SETTLE, RUN_DONE } run_phase_t;

typedef struct vg vg_t;

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req; /* the Leave is written before the close */
    vg_t *vg;
    uint32_t idx;
    uint8_t phase;
    uint8_t attempts;
    bool handle_open;      /* uv_tcp_init done, uv_close not yet called */
    bool handle_busy;      /* uv_tcp_init done, close callback not yet run */
    uint64_t retry_at_us;  /* IDLE after a failed connect: next attempt */
    uint64_t rejoin_at_us; /* JOINING after a refused Join: next Join */
    uint64_t connect_us;   /* start of the current attempt */
    ts_frame_reader_t reader;
    ts_track_t track;
    ts_seq_ring_t ring;
    uint64_t last_seq;
    uint64_t sent; /* Join + Moves */
    uint64_t skipped;
    uint64_t next_move_us;
    size_t out_pending;
    double x, y, vx, vy, heading;
    uint64_t pos_us;
    ts_sim_crowd_t crowd;
    uint64_t window_deltas, window_bytes;
    ts_simws_t *ws; /* with o->ws_path: this connection's WebSocket, else NULL */
} client_t;

typedef struct {
    uv_write_t req;
    client_t *c;
    size_t len;
    uint8_t data[];
} wreq_t;

struct vg {
    uv_loop_t loop;
    uv_timer_t tick;
    const ts_vg_opts_t *o;
    struct sockaddr_storage addr;
    client_t *c;
    size_t n;
    size_t count[CL_NPHASES];
    size_t next_idle; /* clients below this index have left IDLE once */
    size_t retries_waiting;
    double connect_tokens;
    uint64_t last_tick_us;
    uint64_t period_us;
    run_phase_t phase;
    uint64_t start_us, window_start_us, window_end_us, settle_end_us, ramp_end_us;
    uint64_t next_report_us, last_report_us;
    uint64_t report_sent, report_deltas;
    double wx0, wy0, wx1, wy1;
    ts_rng_t rng;
    ts_rng_t ws_rng; /* WebSocket keys and masks (keeps rng's draws those of a TCP run) */
    ts_lat_hist_t hist_sec, hist_all;
    /* Moves still unanswered when their client was told its entity changed
     * cells (they went to the old cell): a subset of hist_all */
    ts_lat_hist_t hist_cross_sec, hist_cross_all;
    uint64_t errors, errors_logged, malformed, deltas_total, bytes_total;
    uint64_t not_stored; /* inputs the gateway reported it could not store */
    uint64_t window_moves;
    uint64_t max_tick_gap_us, late_ticks; /* is the generator keeping up? */
    uint64_t cell_errors_logged;
    uint8_t readbuf[READ_BUF];
    bool stop_now;
};

static uint64_t now_us(void)
{
    return ts_mono_us();
}

static void set_phase(client_t *c, cl_phase_t p)
{
    c->vg->count[c->phase]--;
    c->phase = (uint8_t)p;
    c->vg->count[p]++;
}

static size_t in_handshake(const vg_t *vg)
{
    return vg->count[CL_CONNECTING] + vg->count[CL_JOINING];
}

/* ---- sockets ------------------------------------------------------------ */

static void on_close(uv_handle_t *h)
{
    client_t *c = h->data;
    c->handle_busy = false;
    c->out_pending = 0;
    ts_frame_reader_free(&c->reader);
    ts_simws_free(c->ws);
    c->ws = NULL;
}

static void close_client(client_t *c)
{
    if (!c->handle_open) return;
    c->handle_open = false;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

/* The client gives up (connect or join failed). */
static void fail_client(client_t *c, const char *why)
{
    vg_t *vg = c->vg;
    if (c->phase == CL_FAILED || c->phase == CL_DROPPED) return;
    bool joined = c->phase == CL_PLAYING;
    set_phase(c, joined ? CL_DROPPED : CL_FAILED);
    close_client(c);
    if (vg->errors_logged < ERRORS_LOGGED) {
        vg->errors_logged++;
        ts_warn("client %u: %s: %s", c->idx, why, joined ? "dropped" : "gave up");
    }
}

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    client_t *c = w->c;
    c->out_pending = c->out_pending > w->len ? c->out_pending - w->len : 0;
    free(w);
    if (status < 0 && status != UV_ECANCELED && c->handle_open) fail_client(c, uv_strerror(status));
}

/* Sends bytes in order: what the socket takes now, the rest queued. */
static bool send_bytes(client_t *c, const uint8_t *data, size_t len)
{
    if (!c->handle_open) return false;
    size_t done = 0;
    if (c->out_pending == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n >= 0) {
            done = (size_t)n;
        } else if (n != UV_EAGAIN) {
            fail_client(c, uv_strerror(n));
            return false;
        }
    }
    if (done == len) return true;
    size_t rest = len - done;
    wreq_t *w = malloc(sizeof *w + rest);
    if (w == NULL) {
        fail_client(c, "out of memory");
        return false;
    }
    w->c = c;
    w->len = rest;
    memcpy(w->data, data + done, rest);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)rest);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc != 0) {
        free(w);
        fail_client(c, uv_strerror(rc));
        return false;
    }
    c->out_pending += rest;
    return true;
}

/* Packs a ClientFrame with the next seq into out (cap bytes), behind its
 * length header on TCP, as one binary message on a WebSocket; returns the
 * length, 0 if it does not fit. */
static size_t pack_frame(client_t *c, Tessera__V1__ClientFrame *f, uint8_t *out, size_t cap)
{
    f->seq = c->last_seq + 1;
    size_t len = tessera__v1__client_frame__get_packed_size(f), n;
    if (c->ws != NULL) {
        uint8_t msg[256];
        if (len > sizeof msg) return 0;
        tessera__v1__client_frame__pack(f, msg);
        n = ts_simws_encode(c->ws, TS_SIMWS_BINARY, msg, len, out, cap);
        if (n == 0) return 0;
    } else {
        if (len + TS_FRAME_HEADER > cap) return 0;
        ts_frame_put_header(out, (uint32_t)len);
        tessera__v1__client_frame__pack(f, out + TS_FRAME_HEADER);
        n = len + TS_FRAME_HEADER;
    }
    c->last_seq = f->seq;
    return n;
}

/* Sends Hello (first connect only) and Join in one write. The Join counts
 * as sent once the Snapshot shows the gateway took it. */
static void send_join(client_t *c, bool hello_too)
{
    uint8_t buf[256];
    size_t n = 0;
    if (hello_too) {
        Tessera__V1__Hello hello = TESSERA__V1__HELLO__INIT;
        hello.protocol_version = TS_PROTOCOL_VERSION;
        hello.client_name = (char *)"tessera-sim";
        Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
        f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
        f.hello = &hello;
        n = pack_frame(c, &f, buf, sizeof buf);
    }
    char name[32];
    snprintf(name, sizeof name, "sim-%u", c->idx);
    Tessera__V1__Join join = TESSERA__V1__JOIN__INIT;
    join.x = c->x;
    join.y = c->y;
    join.name = name;
    Tessera__V1__ClientFrame jf = TESSERA__V1__CLIENT_FRAME__INIT;
    jf.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN;
    jf.join = &join;
    size_t m = pack_frame(c, &jf, buf + n, sizeof buf - n);
    if ((hello_too && n == 0) || m == 0) {
        fail_client(c, "Hello/Join do not fit the send buffer");
        return;
    }
    send_bytes(c, buf, n + m);
}

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Dead-reckons the position, turns a little (or heads for the hotspot or
 * away from it) and bounces off the world's edges (looking two Move periods
 * ahead), as the bus mode's players do. */
static void steer(vg_t *vg, client_t *c, uint64_t now)
{
    double dt = now > c->pos_us ? (double)(now - c->pos_us) / 1e6 : 0;
    c->x = clampd(c->x + c->vx * dt, vg->wx0, vg->wx1);
    c->y = clampd(c->y + c->vy * dt, vg->wy0, vg->wy1);
    c->pos_us = now;
    const ts_sim_hotspot_t *h = vg->o->hotspot;
    double toward, arrive = vg->o->speed * 2.0 * (double)vg->period_us / 1e6 + 1.0;
    double elapsed = (double)(now - vg->start_us) / 1e6;
    if (h != NULL && ts_sim_crowd_heading(&c->crowd, h, elapsed, c->x, c->y, arrive, TURN, &vg->rng, &toward))
        c->heading = toward;
    else
        c->heading += (ts_rng_unit(&vg->rng) - 0.5) * TURN;
    double vx = vg->o->speed * cos(c->heading), vy = vg->o->speed * sin(c->heading);
    double ahead = 2.0 * (double)vg->period_us / 1e6;
    if ((c->x + vx * ahead < vg->wx0 && vx < 0) || (c->x + vx * ahead >= vg->wx1 && vx > 0)) vx = -vx;
    if ((c->y + vy * ahead < vg->wy0 && vy < 0) || (c->y + vy * ahead >= vg->wy1 && vy > 0)) vy = -vy;
    c->heading = atan2(vy, vx);
    c->vx = vx;
    c->vy = vy;
}

static void send_move(client_t *c, uint64_t now)
{
    vg_t *vg = c->vg;
    if (c->out_pending > MAX_OUT_PENDING) {
        c->skipped++;
        return;
    }
    steer(vg, c, now);
    uint8_t buf[128];
    Tessera__V1__Move move = TESSERA__V1__MOVE__INIT;
    move.dx = c->vx;
    move.dy = c->vy;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE;
    f.move = &move;
    size_t n = pack_frame(c, &f, buf, sizeof buf);
    uint64_t sent_at = now_us();
    if (n > 0 && send_bytes(c, buf, n)) {
        c->sent++;
        if (vg->phase == RUN_PLAY) vg->window_moves++;
        ts_seq_ring_put(&c->ring, c->last_seq, sent_at);
    }
}

static void on_error_frame(client_t *c, const ts_track_frame_t *fr)
{
    vg_t *vg = c->vg;
    vg->errors++;
    if (fr->error_code == TS_TRACK_ERROR_INPUT_NOT_STORED && fr->error_last_seq >= fr->error_first_seq &&
        fr->error_first_seq > 0)
        vg->not_stored += fr->error_last_seq - fr->error_first_seq + 1;
    if (vg->errors_logged < ERRORS_LOGGED) {
        vg->errors_logged++;
        ts_warn("client %u: gateway Error code %d%s: %.*s", c->idx, fr->error_code,
                fr->error_fatal ? " (fatal)" : "", (int)(fr->error_msg_len > 200 ? 200 : fr->error_msg_len),
                fr->error_msg ? fr->error_msg : "");
    }
    if (fr->error_fatal)
        fail_client(c, "fatal Error from the gateway");
    else if (c->phase == CL_JOINING)
        fail_client(c, "Error while joining");
}

static void on_frame(client_t *c, const uint8_t *payload, size_t len, uint64_t now)
{
    vg_t *vg = c->vg;
    ts_track_frame_t fr;
    uint64_t before = c->track.last_input_seq;
    if (ts_track_frame(&c->track, payload, len, &fr) != TS_OK) {
        vg->malformed++;
        fail_client(c, "malformed ServerFrame");
        return;
    }
    if (fr.kind == TS_TRACK_DELTA) {
        vg->deltas_total++;
        if (vg->phase == RUN_PLAY) c->window_deltas++;
    } else if (fr.kind == TS_TRACK_ERROR) {
        on_error_frame(c, &fr);
        return;
    }
    if (c->phase == CL_JOINING && c->track.entity != 0) {
        set_phase(c, CL_PLAYING);
        c->sent++; /* the Join */
        c->rejoin_at_us = 0;
        c->pos_us = now;
        c->next_move_us = now + (uint64_t)(ts_rng_unit(&vg->rng) * (double)vg->period_us);
    }
    if (c->track.last_input_seq > before)
        ts_seq_ring_resolve_split(&c->ring, c->track.last_input_seq, now, &vg->hist_sec, &vg->hist_cross_sec);
    if (fr.kind == TS_TRACK_CELL_CHANGED) ts_seq_ring_tag_pending(&c->ring);
    if ((fr.cell_same || fr.cell_unannounced) && vg->cell_errors_logged < ERRORS_LOGGED) {
        vg->cell_errors_logged++;
        const ts_cell_t *k = &c->track.cell;
        ts_warn("client %u: %s cell %u.%d.%d.%u.%llu", c->idx,
                fr.cell_same ? "CellChanged to the cell it was already in:"
                             : "a frame moved it, without CellChanged, to",
                k->world, k->cx, k->cy, (unsigned)k->depth, (unsigned long long)k->sub);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    client_t *c = h->data;
    buf->base = (char *)c->vg->readbuf;
    buf->len = READ_BUF;
}

/* Scans the whole frames in data[0..n) in place; returns the bytes used. */
static size_t frames_in_place(client_t *c, const uint8_t *data, size_t n, uint64_t now, bool *bad)
{
    size_t off = 0;
    while (n - off >= TS_FRAME_HEADER && c->handle_open) {
        uint32_t flen = ts_frame_get_header(data + off);
        if (flen > MAX_FRAME) {
            *bad = true;
            return off;
        }
        if (n - off - TS_FRAME_HEADER < flen) break;
        on_frame(c, data + off + TS_FRAME_HEADER, flen, now);
        off += TS_FRAME_HEADER + flen;
    }
    return off;
}

typedef struct {
    client_t *c;
    uint64_t now;
} ws_read_t;

/* A message on a client's WebSocket: a ServerFrame, a ping (answered) or
 * the gateway's close. False once the client is closed. */
static bool on_ws_msg(void *ud, uint8_t opcode, const uint8_t *payload, size_t len)
{
    ws_read_t *x = ud;
    client_t *c = x->c;
    if (opcode == TS_SIMWS_BINARY) {
        on_frame(c, payload, len, x->now);
    } else if (opcode == TS_SIMWS_PING) {
        uint8_t pong[TS_SIMWS_MAX_CONTROL + TS_SIMWS_FRAME_OVERHEAD];
        size_t n = ts_simws_encode(c->ws, TS_SIMWS_PONG, payload, len, pong, sizeof pong);
        if (n > 0) send_bytes(c, pong, n);
    } else if (opcode == TS_SIMWS_CLOSE) {
        char why[64];
        snprintf(why, sizeof why, "the gateway closed the WebSocket (code %u)",
                 len >= 2 ? (unsigned)payload[0] << 8 | payload[1] : 1005u);
        fail_client(c, why);
    }
    return c->handle_open;
}

/* Bytes on a WebSocket client: the rest of the upgrade answer (then Hello
 * and Join go out), then frames. */
static void ws_read(client_t *c, const uint8_t *data, size_t n, uint64_t now)
{
    if (!ts_simws_upgraded(c->ws)) {
        size_t used = 0;
        char why[160];
        ts_status_t st = ts_simws_upgrade(c->ws, data, n, &used, why, sizeof why);
        if (st == TS_ERR_AGAIN) return;
        if (st != TS_OK) {
            fail_client(c, why);
            return;
        }
        set_phase(c, CL_JOINING);
        send_join(c, true);
        data += used;
        n -= used;
        if (n == 0 || !c->handle_open) return;
    }
    ws_read_t x = {c, now};
    ts_status_t st = ts_simws_feed(c->ws, data, n, on_ws_msg, &x);
    if (st != TS_OK && c->handle_open) {
        if (st != TS_ERR_NOMEM) c->vg->malformed++;
        fail_client(c, st == TS_ERR_OVERSIZED ? "oversized WebSocket message"
                       : st == TS_ERR_NOMEM   ? "out of memory"
                                              : "malformed WebSocket frame");
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    client_t *c = s->data;
    vg_t *vg = c->vg;
    if (nread == 0) return;
    if (nread < 0) {
        fail_client(c, nread == UV_EOF ? "the gateway closed the connection" : uv_strerror((int)nread));
        return;
    }
    uint64_t now = now_us();
    vg->bytes_total += (uint64_t)nread;
    if (vg->phase == RUN_PLAY) c->window_bytes += (uint64_t)nread;
    const uint8_t *data = (const uint8_t *)buf->base;
    size_t n = (size_t)nread;
    if (c->ws != NULL) {
        ws_read(c, data, n, now);
        return;
    }
    bool bad = false;
    if (c->reader.len == c->reader.off) {
        /* nothing buffered: whole frames straight from the read buffer */
        size_t used = frames_in_place(c, data, n, now, &bad);
        data += used;
        n -= used;
    }
    if (!bad && n > 0 && c->handle_open) {
        if (ts_frame_reader_feed(&c->reader, data, n) != TS_OK) {
            fail_client(c, "out of memory");
            return;
        }
        const uint8_t *payload;
        size_t len;
        ts_status_t st = TS_OK;
        while (c->handle_open && (st = ts_frame_reader_next(&c->reader, &payload, &len)) == TS_OK)
            on_frame(c, payload, len, now);
        if (c->handle_open && st == TS_ERR_OVERSIZED) bad = true;
    }
    if (bad) {
        vg->malformed++;
        fail_client(c, "oversized frame");
    }
}

static void start_connect(vg_t *vg, client_t *c, uint64_t now);

/* A WebSocket client sends its upgrade request first; Hello and Join
 * follow the 101 (ws_read). */
static void start_upgrade(client_t *c)
{
    vg_t *vg = c->vg;
    c->ws = ts_simws_new(ts_rng_next(&vg->ws_rng), MAX_FRAME);
    char req[1024];
    size_t n = c->ws != NULL
                   ? ts_simws_request(c->ws, vg->o->host, vg->o->port, vg->o->ws_path, req, sizeof req)
                   : 0;
    if (n == 0) {
        fail_client(c, "cannot build the WebSocket upgrade request");
        return;
    }
    send_bytes(c, (const uint8_t *)req, n);
}

static void on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    vg_t *vg = c->vg;
    if (status == UV_ECANCELED || !c->handle_open) return;
    if (status < 0) {
        close_client(c);
        if (++c->attempts < CONNECT_ATTEMPTS && vg->phase == RUN_RAMP && !vg->stop_now) {
            set_phase(c, CL_IDLE);
            c->retry_at_us = now_us() + RETRY_US;
            vg->retries_waiting++;
        } else {
            fail_client(c, uv_strerror(status));
        }
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
        fail_client(c, uv_strerror(rc));
        return;
    }
    if (vg->o->ws_path != NULL) {
        start_upgrade(c);
        return;
    }
    set_phase(c, CL_JOINING);
    send_join(c, true);
}

static void start_connect(vg_t *vg, client_t *c, uint64_t now)
{
    if (c->handle_busy) return; /* previous attempt still closing; next tick */
    int rc = uv_tcp_init(&vg->loop, &c->tcp);
    if (rc != 0) {
        fail_client(c, uv_strerror(rc));
        return;
    }
    c->tcp.data = c;
    c->connect_req.data = c;
    c->handle_open = c->handle_busy = true;
    ts_frame_reader_init(&c->reader, MAX_FRAME);
    c->connect_us = now;
    set_phase(c, CL_CONNECTING);
    rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&vg->addr, on_connect);
    if (rc != 0) fail_client(c, uv_strerror(rc));
}

/* ---- the run ------------------------------------------------------------- */

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static uint64_t total_applied(const vg_t *vg)
{
    uint64_t a = 0;
    for (size_t i = 0; i < vg->n; i++)
        a += vg->c[i].track.inputs_applied;
    return a;
}

static uint64_t total_sent(const vg_t *vg)
{
    uint64_t s = 0;
    for (size_t i = 0; i < vg->n; i++)
        s += vg->c[i].sent;
    return s;
}

static const char *run_phase_name(run_phase_t p)
{
    static const char *const names[] = {"ramp", "play", "settle", "done"};
    return names[p];
}

static void report(vg_t *vg, uint64_t now)
{
    double secs = (double)(now - vg->last_report_us) / 1e6;
    if (vg->phase >= RUN_PLAY) ts_lat_hist_merge(&vg->hist_cross_all, &vg->hist_cross_sec);
    ts_lat_hist_merge(&vg->hist_sec, &vg->hist_cross_sec);
    ts_lat_hist_reset(&vg->hist_cross_sec);
    uint64_t sent = total_sent(vg), deltas = vg->deltas_total;
    size_t playing = vg->count[CL_PLAYING];
    double inputs_s = secs > 0 ? (double)(sent - vg->report_sent) / secs : 0;
    double deltas_s =
        secs > 0 && playing > 0 ? (double)(deltas - vg->report_deltas) / secs / (double)playing : 0;
    printf(
        "via-gateway: t=%.0fs phase=%s joined=%zu joining=%zu failed=%zu dropped=%zu sent=%llu applied=%llu "
        "inputs/s=%.0f deltas/s/client=%.1f lat_p50_ms=%.1f lat_p99_ms=%.1f errors=%llu\n",
        (double)(now - vg->start_us) / 1e6, run_phase_name(vg->phase), playing, in_handshake(vg),
        vg->count[CL_FAILED], vg->count[CL_DROPPED], (unsigned long long)sent,
        (unsigned long long)total_applied(vg), inputs_s, deltas_s,
        ms(ts_lat_hist_quantile(&vg->hist_sec, 0.50)), ms(ts_lat_hist_quantile(&vg->hist_sec, 0.99)),
        (unsigned long long)vg->errors);
    if (vg->o->hotspot != NULL) {
        size_t in = 0, deep[3] = {0, 0, 0};
        for (size_t i = 0; i < vg->n; i++) {
            const client_t *c = &vg->c[i];
            if (c->phase != CL_PLAYING) continue;
            in += c->crowd.crowd &&
                  hypot(c->x - vg->o->hotspot->x, c->y - vg->o->hotspot->y) < vg->o->hotspot->r;
            if (c->track.has_cell) deep[c->track.cell.depth >= 2 ? 2 : c->track.cell.depth]++;
        }
        printf("via-gateway: hotspot in=%zu clients in cells at depth 0/1/>=2: %zu/%zu/%zu\n", in, deep[0],
               deep[1], deep[2]);
    }
    fflush(stdout);
    if (vg->phase >= RUN_PLAY) ts_lat_hist_merge(&vg->hist_all, &vg->hist_sec);
    ts_lat_hist_reset(&vg->hist_sec);
    vg->report_sent = sent;
    vg->report_deltas = deltas;
    vg->last_report_us = now;
}

static void ramp(vg_t *vg, uint64_t now)
{
    double dt = (double)(now - vg->last_tick_us) / 1e6;
    vg->connect_tokens += dt * TS_VG_CONNECT_RATE;
    if (vg->connect_tokens > TS_VG_CONNECT_RATE / 10.0) vg->connect_tokens = TS_VG_CONNECT_RATE / 10.0;
    while (vg->connect_tokens >= 1.0 && in_handshake(vg) < TS_VG_MAX_HANDSHAKES) {
        client_t *c = NULL;
        if (vg->retries_waiting > 0) {
            for (size_t i = 0; i < vg->next_idle && c == NULL; i++)
                if (vg->c[i].phase == CL_IDLE && vg->c[i].retry_at_us <= now && !vg->c[i].handle_busy)
                    c = &vg->c[i];
            if (c != NULL) vg->retries_waiting--;
        }
        if (c == NULL && vg->next_idle < vg->n) c = &vg->c[vg->next_idle++];
        if (c == NULL) break;
        vg->connect_tokens -= 1.0;
        start_connect(vg, c, now);
    }
}

static void start_play(vg_t *vg, uint64_t now)
{
    vg->phase = RUN_PLAY;
    vg->window_start_us = now;
    vg->window_end_us = vg->o->duration_s > 0 ? now + (uint64_t)vg->o->duration_s * 1000000ull : UINT64_MAX;
    ts_lat_hist_reset(&vg->hist_sec);
    ts_lat_hist_reset(&vg->hist_cross_sec);
    printf("via-gateway: %zu of %zu clients joined in %.1f s; playing%s\n", vg->count[CL_PLAYING], vg->n,
           (double)(now - vg->start_us) / 1e6, vg->o->duration_s > 0 ? "" : " until signalled");
    fflush(stdout);
}

static void start_settle(vg_t *vg, uint64_t now)
{
    vg->phase = RUN_SETTLE;
    vg->window_end_us = now;
    vg->settle_end_us = now + SETTLE_MS * 1000ull;
}

static bool settled(const vg_t *vg)
{
    for (size_t i = 0; i < vg->n; i++) {
        const client_t *c = &vg->c[i];
        if (c->phase == CL_PLAYING && c->track.inputs_applied < c->sent) return false;
    }
    return true;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    close_client(req->data);
}

/* A player that is done says Leave (a bare close leaves its entity waiting
 * gateway.resume_s for a resume), then closes once the Leave is written. */
static void leave_and_close(client_t *c)
{
    if (c->phase != CL_PLAYING || !c->handle_open) {
        close_client(c);
        return;
    }
    uint8_t buf[64];
    Tessera__V1__Leave leave = TESSERA__V1__LEAVE__INIT;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_LEAVE;
    f.leave = &leave;
    size_t n = pack_frame(c, &f, buf, sizeof buf);
    if (n > 0 && c->ws != NULL) { /* and a close frame: 1000, normal closure */
        static const uint8_t normal[2] = {0x03, 0xe8};
        size_t m = ts_simws_encode(c->ws, TS_SIMWS_CLOSE, normal, sizeof normal, buf + n, sizeof buf - n);
        n = m > 0 ? n + m : 0;
    }
    c->shutdown_req.data = c;
    if (n == 0 || !send_bytes(c, buf, n) ||
        uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        close_client(c);
}

static void finish(vg_t *vg)
{
    vg->phase = RUN_DONE;
    for (size_t i = 0; i < vg->n; i++)
        leave_and_close(&vg->c[i]);
    uv_timer_stop(&vg->tick);
    uv_close((uv_handle_t *)&vg->tick, NULL);
}

static void on_tick(uv_timer_t *t)
{
    vg_t *vg = t->data;
    uint64_t now = now_us();
    volatile sig_atomic_t *stop = ts_service_stop_flag();
    if (*stop >= 2) vg->stop_now = true;

    if (vg->phase == RUN_RAMP) {
        if (*stop > 0 || now >= vg->ramp_end_us) {
            for (size_t i = 0; i < vg->n; i++)
                if (vg->c[i].phase == CL_IDLE || vg->c[i].phase == CL_CONNECTING ||
                    vg->c[i].phase == CL_JOINING)
                    fail_client(&vg->c[i], *stop > 0 ? "stopped while joining" : "the ramp took too long");
        } else {
            ramp(vg, now);
        }
        if (vg->count[CL_IDLE] == 0 && in_handshake(vg) == 0) start_play(vg, now);
    }
    /* no client left to play (none joined, or the gateway dropped them all):
     * nothing more to measure, even without a duration */
    if (vg->phase == RUN_PLAY && (now >= vg->window_end_us || *stop > 0 || vg->count[CL_PLAYING] == 0))
        start_settle(vg, now);

    for (size_t i = 0; i < vg->n; i++) {
        client_t *c = &vg->c[i];
        if (c->phase == CL_PLAYING) {
            if (vg->phase <= RUN_PLAY && now >= c->next_move_us) {
                send_move(c, now);
                /* a late loop skips the Moves it missed but keeps each
                 * client's phase, so clients never fall into lockstep */
                c->next_move_us += vg->period_us;
                if (c->next_move_us <= now)
                    c->next_move_us += ((now - c->next_move_us) / vg->period_us + 1) * vg->period_us;
            }
        } else if (c->phase == CL_JOINING || c->phase == CL_CONNECTING) {
            if (now - c->connect_us > JOIN_TIMEOUT_US)
                fail_client(c, "no Snapshot within the join timeout");
            else if (c->rejoin_at_us != 0 && now >= c->rejoin_at_us) {
                c->rejoin_at_us = 0;
                send_join(c, false);
            }
        }
    }

    if (now >= vg->next_report_us) {
        report(vg, now);
        vg->next_report_us += REPORT_US;
        if (vg->next_report_us <= now) vg->next_report_us = now + REPORT_US;
    }
    if (vg->phase == RUN_SETTLE && (settled(vg) || now >= vg->settle_end_us || vg->stop_now)) finish(vg);
    uint64_t gap = now - vg->last_tick_us;
    if (gap > vg->max_tick_gap_us) vg->max_tick_gap_us = gap;
    if (gap > (TICK_MS + LATE_TICK_MS) * 1000ull) vg->late_ticks++;
    vg->last_tick_us = now;
}

bool ts_vg_raise_nofile(size_t clients)
{
    rlim_t need = (rlim_t)clients + FD_MARGIN;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        ts_warn("getrlimit(RLIMIT_NOFILE) failed; assuming enough file descriptors");
        return true;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rlim_t old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
        else
            ts_info("raised the open-file limit from %llu to %llu", (unsigned long long)old,
                    (unsigned long long)rl.rlim_cur);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        ts_error("%llu clients need %llu file descriptors but the open-file limit is %llu (hard limit %llu); "
                 "raise it (ulimit -n / ulimit -Hn) or run fewer clients",
                 (unsigned long long)(need - FD_MARGIN), (unsigned long long)need,
                 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
        return false;
    }
    return true;
}

static bool resolve(const ts_vg_opts_t *o, struct sockaddr_storage *out)
{
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(o->host, port, &hints, &res);
    if (rc != 0 || res == NULL) {
        ts_error("cannot resolve gateway address %s:%d: %s", o->host, o->port, gai_strerror(rc));
        return false;
    }
    memset(out, 0, sizeof *out);
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return true;
}

static void init_clients(vg_t *vg)
{
    const ts_world_t *w = &vg->o->world;
    vg->wx0 = (double)w->x0 * w->cell_size;
    vg->wy0 = (double)w->y0 * w->cell_size;
    vg->wx1 = ((double)w->x0 + w->width) * w->cell_size;
    vg->wy1 = ((double)w->y0 + w->height) * w->cell_size;
    /* anywhere in the world, a margin from its edges: a crowd spread out as
     * players are, so each client's area of interest holds its share */
    double mx = fmin(1.0, (vg->wx1 - vg->wx0) * 0.01), my = fmin(1.0, (vg->wy1 - vg->wy0) * 0.01);
    double ax = vg->wx0 + mx, bx = vg->wx1 - mx, ay = vg->wy0 + my, by = vg->wy1 - my;
    vg->count[CL_IDLE] = vg->n;
    for (size_t i = 0; i < vg->n; i++) {
        client_t *c = &vg->c[i];
        c->vg = vg;
        c->idx = (uint32_t)i;
        c->phase = CL_IDLE;
        c->x = ax + ts_rng_unit(&vg->rng) * (bx - ax);
        c->y = ay + ts_rng_unit(&vg->rng) * (by - ay);
        c->heading = ts_rng_unit(&vg->rng) * 2 * M_PI;
        ts_frame_reader_init(&c->reader, MAX_FRAME);
        ts_track_init(&c->track);
        ts_seq_ring_init(&c->ring);
    }
    /* drawn after the positions, which stay those of a run without it */
    for (size_t i = 0; vg->o->hotspot != NULL && i < vg->n; i++)
        ts_sim_crowd_init(&vg->c[i].crowd, vg->o->hotspot, &vg->rng, vg->wx0, vg->wy0, vg->wx1, vg->wy1);
}

static int print_result(vg_t *vg)
{
    ts_lat_hist_merge(&vg->hist_cross_all, &vg->hist_cross_sec);
    ts_lat_hist_merge(&vg->hist_all, &vg->hist_sec);
    ts_lat_hist_merge(&vg->hist_all, &vg->hist_cross_sec);
    ts_lat_hist_reset(&vg->hist_sec);
    ts_lat_hist_reset(&vg->hist_cross_sec);
    uint64_t sent = 0, applied = 0, missing = 0, doubled = 0, skipped = 0, wdeltas = 0, wbytes = 0, lost = 0;
    uint64_t unresolved = 0, cell_changed = 0, cell_same = 0, cell_unannounced = 0;
    size_t joined = 0, over = 0, no_deltas = 0, under = 0, depth1 = 0, depth2 = 0;
    unsigned max_depth = 0;
    for (size_t i = 0; i < vg->n; i++) {
        client_t *c = &vg->c[i];
        if (c->track.entity == 0) continue; /* never joined */
        joined++;
        sent += c->sent;
        applied += c->track.inputs_applied;
        skipped += c->skipped;
        wdeltas += c->window_deltas;
        wbytes += c->window_bytes;
        lost += c->ring.lost;
        unresolved += ts_seq_ring_pending(&c->ring);
        if (c->track.deltas == 0) no_deltas++;
        cell_changed += c->track.cell_changes;
        cell_same += c->track.cell_changed_same;
        cell_unannounced += c->track.cell_changed_unannounced;
        depth1 += c->track.max_depth >= 1;
        depth2 += c->track.max_depth >= 2;
        if (c->track.max_depth > max_depth) max_depth = c->track.max_depth;
        if (c->track.inputs_applied < c->sent) {
            missing += c->sent - c->track.inputs_applied;
            under++;
        } else if (c->track.inputs_applied > c->sent) {
            doubled += c->track.inputs_applied - c->sent;
            over++;
        }
    }
    double window_s =
        vg->window_end_us > vg->window_start_us ? (double)(vg->window_end_us - vg->window_start_us) / 1e6 : 0;
    double deltas_pc = window_s > 0 && joined > 0 ? (double)wdeltas / window_s / (double)joined : 0;
    double bytes_pc = window_s > 0 && joined > 0 ? (double)wbytes / window_s / (double)joined : 0;
    double p50 = ms(ts_lat_hist_quantile(&vg->hist_all, 0.50)),
           p99 = ms(ts_lat_hist_quantile(&vg->hist_all, 0.99));
    double p999 = ms(ts_lat_hist_quantile(&vg->hist_all, 0.999));
    if (vg->hist_all.n == 0) p50 = p99 = p999 = NAN; /* nothing timed: "nan", never a flattering 0 */
    struct rusage ru;
    double cpu_s = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;

    double moves_pc = window_s > 0 && joined > 0 ? (double)vg->window_moves / window_s / (double)joined : 0;
    printf(
        "via-gateway: summary: %zu of %zu clients joined (%zu failed to connect or join, %zu dropped later); "
        "%.1f s measured, Moves/s per client %.1f of %lld; generator loop late by > %d ms %llu times "
        "(longest %.0f ms)\n",
        joined, vg->n, vg->count[CL_FAILED], vg->count[CL_DROPPED], window_s, moves_pc,
        (long long)vg->o->rate_hz, LATE_TICK_MS, (unsigned long long)vg->late_ticks, ms(vg->max_tick_gap_us));
    if (moves_pc < 0.9 * (double)vg->o->rate_hz)
        ts_warn("the generator sent %.1f of %lld Moves/s per client: its loop ran late (CPU starved?); "
                "the figures are for the rate it sent",
                moves_pc, (long long)vg->o->rate_hz);
    printf("via-gateway: summary: inputs sent %llu (Joins and Moves), applied %llu, missing %llu on %zu "
           "clients, "
           "applied more than sent %llu on %zu clients, Moves skipped for a full socket %llu; gateway Errors "
           "%llu "
           "(inputs reported not stored %llu), malformed frames %llu\n",
           (unsigned long long)sent, (unsigned long long)applied, (unsigned long long)missing, under,
           (unsigned long long)doubled, over, (unsigned long long)skipped, (unsigned long long)vg->errors,
           (unsigned long long)vg->not_stored, (unsigned long long)vg->malformed);
    printf("via-gateway: summary: input->own state over %llu Moves: p50 %.1f ms, p99 %.1f ms, p999 %.1f ms, "
           "max %.1f ms (%llu not timed: ring overrun %llu, never shown %llu)\n",
           (unsigned long long)vg->hist_all.n, p50, p99, p999, ms(vg->hist_all.max_us),
           (unsigned long long)(lost + unresolved), (unsigned long long)lost, (unsigned long long)unresolved);
    const ts_lat_hist_t *hx = &vg->hist_cross_all;
    /* the others: every Move not in flight at a cell change (hist_all - hx) */
    ts_lat_hist_t *ho = malloc(sizeof *ho);
    if (ho != NULL) {
        *ho = vg->hist_all;
        ho->n -= hx->n;
        for (unsigned i = 0; i < TS_LAT_BUCKETS; i++)
            ho->counts[i] -= hx->counts[i];
    }
    printf(
        "via-gateway: summary: of them %llu in flight when their entity changed cells: p50 %.1f ms, p99 %.1f "
        "ms, max %.1f ms; the others: p50 %.1f ms, p99 %.1f ms, p999 %.1f ms\n",
        (unsigned long long)hx->n, ms(ts_lat_hist_quantile(hx, 0.50)), ms(ts_lat_hist_quantile(hx, 0.99)),
        ms(hx->max_us), ho ? ms(ts_lat_hist_quantile(ho, 0.50)) : NAN,
        ho ? ms(ts_lat_hist_quantile(ho, 0.99)) : NAN, ho ? ms(ts_lat_hist_quantile(ho, 0.999)) : NAN);
    free(ho);
    printf("via-gateway: summary: per client %.1f Deltas/s, %.0f bytes/s; clients without a Delta %zu; "
           "generator CPU %.1f s over %.1f s\n",
           deltas_pc, bytes_pc, no_deltas, cpu_s, (double)(now_us() - vg->start_us) / 1e6);
    printf("via-gateway: clients=%zu connected=%zu sent=%llu applied=%llu missing=%llu errors=%llu "
           "lat_p50_ms=%.2f "
           "lat_p99_ms=%.2f lat_p999_ms=%.2f deltas_per_s_per_client=%.2f bytes_per_s_per_client=%.0f\n",
           vg->n, joined, (unsigned long long)sent, (unsigned long long)applied, (unsigned long long)missing,
           (unsigned long long)vg->errors, p50, p99, p999, deltas_pc, bytes_pc);
    printf("via-gateway: cells: dropped=%zu cell_changed=%llu same_cell=%llu unannounced=%llu "
           "clients_depth1=%zu clients_depth2=%zu max_depth=%u\n",
           vg->count[CL_DROPPED], (unsigned long long)cell_changed, (unsigned long long)cell_same,
           (unsigned long long)cell_unannounced, depth1, depth2, max_depth);
    fflush(stdout);

    bool ok = joined == vg->n && vg->count[CL_DROPPED] == 0 && missing == 0 && doubled == 0 &&
              no_deltas == 0 && cell_same == 0 && cell_unannounced == 0;
    if (!ok)
        ts_error("via-gateway run failed: %zu of %zu joined, %zu dropped, %llu missing, %llu applied twice, "
                 "%zu clients without Deltas, %llu CellChanged to the cell already had, %llu cell changes "
                 "without CellChanged",
                 joined, vg->n, vg->count[CL_DROPPED], (unsigned long long)missing,
                 (unsigned long long)doubled, no_deltas, (unsigned long long)cell_same,
                 (unsigned long long)cell_unannounced);
    return ok ? TS_VG_EXIT_OK : TS_VG_EXIT_FAILED;
}

int ts_vg_run(const ts_vg_opts_t *o)
{
    if (o->clients == 0 || o->clients > TS_VG_MAX_CLIENTS || o->rate_hz <= 0) {
        ts_error("via-gateway: clients must be 1..%d and rate_hz > 0", TS_VG_MAX_CLIENTS);
        return TS_VG_EXIT_SETUP;
    }
    if (!ts_vg_raise_nofile(o->clients)) return TS_VG_EXIT_SETUP;
    vg_t *vg = calloc(1, sizeof *vg);
    client_t *clients = calloc(o->clients, sizeof *clients);
    int rc = TS_VG_EXIT_SETUP;
    if (vg == NULL || clients == NULL) {
        ts_error("cannot set up %zu clients: out of memory", o->clients);
        goto cleanup;
    }
    vg->o = o;
    vg->c = clients;
    vg->n = o->clients;
    vg->period_us = 1000000ull / (uint64_t)o->rate_hz;
    if (vg->period_us == 0) vg->period_us = 1;
    ts_rng_seed(&vg->rng, o->seed);
    ts_rng_seed(&vg->ws_rng, o->seed ^ now_us());
    if (!resolve(o, &vg->addr)) goto cleanup;
    init_clients(vg);
    if (uv_loop_init(&vg->loop) != 0) {
        ts_error("cannot create an event loop");
        goto cleanup;
    }
    uv_timer_init(&vg->loop, &vg->tick);
    vg->tick.data = vg;
    uint64_t now = now_us();
    vg->start_us = vg->last_tick_us = vg->last_report_us = now;
    vg->next_report_us = now + REPORT_US;
    vg->ramp_end_us = now + (uint64_t)(vg->n / TS_VG_CONNECT_RATE) * 3000000ull + JOIN_TIMEOUT_US * 2;
    ts_info("via-gateway: %zu clients to %s:%d%s%s, %lld Moves/s each, %lld s of play, speed %g, up to %d "
            "connects/s",
            vg->n, o->host, o->port, o->ws_path ? " over WebSocket on " : "", o->ws_path ? o->ws_path : "",
            (long long)o->rate_hz, (long long)o->duration_s, o->speed, TS_VG_CONNECT_RATE);
    if (o->hotspot != NULL)
        ts_info("via-gateway: hotspot: %.0f%% of the clients gather within %g of (%g, %g) from %g s to %g s "
                "after the start, then disperse",
                o->hotspot->share * 100, o->hotspot->r, o->hotspot->x, o->hotspot->y, o->hotspot->from_s,
                o->hotspot->hold_s);
    uv_timer_start(&vg->tick, on_tick, 0, TICK_MS);
    /* returns once finish() closed every handle */
    uv_run(&vg->loop, UV_RUN_DEFAULT);
    rc = print_result(vg);
    if (uv_loop_close(&vg->loop) != 0) ts_warn("event loop closed with handles open");

cleanup:
    if (clients != NULL)
        for (size_t i = 0; i < o->clients; i++) {
            ts_frame_reader_free(&clients[i].reader);
            ts_simws_free(clients[i].ws);
        }
    free(clients);
    free(vg);
    return rc;
}
