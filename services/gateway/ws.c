/* WebSocket transport (wslay frames) and the world map's HTTP listener.
 *
 * A connection on gateway.ws_listen starts in the HTTP phase: its request
 * head (at most GW_WS_MAX_HEAD bytes) is parsed once complete. `GET /ws`
 * with a valid upgrade request and an allowed Origin gets `101 Switching
 * Protocols` and becomes a WebSocket; anything else gets one HTTP response
 * and the connection closes after it.
 *
 * A WebSocket connection is an ordinary gw_conn_t: the session layer sees
 * whole ClientFrames from gw_ws_on_read and writes ServerFrames with
 * gw_conn_writev, which hands them here. Invariants:
 *   - frames are parsed and built by wslay's frame layer; this file only
 *     decides what a frame means (messages, control frames, limits);
 *   - a message larger than gateway.max_frame is refused at the first
 *     report wslay makes of the frame that takes it past the limit (the
 *     frame's header with its first payload bytes: wslay's payload_length,
 *     summed over the message's fragments), before anything of its payload
 *     is buffered (ERROR_OVERSIZED, close 1009);
 *   - a frame wslay or RFC 6455 calls invalid (unmasked, reserved bits, bad
 *     opcode or continuation) and a text message get ERROR_MALFORMED and
 *     a close frame (1002 / 1003); an Error always goes out before the close;
 *   - outgoing frames reference the caller's pieces; only the WebSocket
 *     headers are new bytes, so the fan-out stays one write per client.
 *
 * Worker heartbeats (tessera.worker.*.hb) feed the map: a nats.c thread
 * decodes each one and updates `workers` under `lock`; /api/world reads it
 * on the loop. The table holds one entry per worker, bounded. /api/events
 * pushes the same to the map as it changes (see "the map's push feed"). */
#define _GNU_SOURCE /* memmem */
#include "ws.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <wslay/wslay.h>

#include "tessera/log.h"
#include "tessera/util.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_MAX_HEADERS 64
#define WS_MAX_WORKERS 256
#define WS_MAX_WORKER_CELLS 4096
/* A worker silent this long leaves the map. */
#define WS_WORKER_STALE_MS 5000
/* Control frames (ping, pong) a peer may send per second before it is
 * treated as flooding. */
#define WS_MAX_CONTROL_PER_S 100
#define WS_MAX_ASSETS 32
/* The map's push feed (/api/events): viewers at once, how often changes go
 * out, registry changes held between two sends (more: the next send is a
 * whole world), and the unsent output after which a viewer is dropped. */
#define WS_MAX_VIEWERS 64
#define WS_EVENTS_MS 100
/* Entity dots go out every this many sends (5 a second), when any changed. */
#define WS_DOTS_EVERY 2
#define WS_MAX_CELL_EVENTS 4096
#define WS_VIEWER_MAX_BACKLOG ((size_t)1 << 20)

typedef enum { WS_HTTP = 0, WS_OPEN, WS_DONE } ws_phase_t;

struct gw_ws {
    ws_phase_t phase;
    char *head; /* HTTP request head, until complete */
    size_t head_len;
    uint8_t *early; /* output before the upgrade finished */
    size_t early_len;

    wslay_frame_context_ptr frames;
    /* reading */
    const uint8_t *in; /* bytes of the current read not yet given to wslay */
    size_t in_len;
    bool in_frame;
    uint64_t frame_got;
    uint8_t frame_opcode;
    bool in_message; /* a fragmented data message is being assembled */
    uint8_t *msg;
    size_t msg_len, msg_cap;
    uint8_t ctrl[125];
    size_t ctrl_len;
    uint64_t ctrl_window_us;
    uint32_t ctrl_count;
    /* writing: length-prefixed frames may span calls */
    uint8_t len_hdr[TS_FRAME_HEADER];
    size_t len_hdr_n;
    uint64_t out_left; /* payload bytes of the current frame not yet seen */
    uint16_t close_code;
    bool close_sent;
    size_t delivered; /* messages handed to the session by this read */
    bool viewer;      /* a /api/events stream */
};

/* One asset of the map page. */
typedef struct {
    char name[64];
    const char *type;
    const uint8_t *data;
    size_t len;
    uint8_t *owned; /* read from gateway.web_dir */
} ws_asset_t;

/* A worker's latest heartbeat, as the map needs it. */
typedef struct {
    char id[64];
    uint64_t seen_ms; /* ts_now_us()/1000 when it arrived */
    uint32_t entities;
    uint64_t inputs_applied;
    uint64_t ticks;
    double tick_p99_ms;
    bool draining;
    char (*cells)[TS_CELL_STR_MAX];
    uint64_t *cell_epochs;
    uint32_t *cell_entities;
    size_t ncells;
    bool changed;   /* a heartbeat since the last push */
    bool gone_sent; /* pushed as gone (silent for WS_WORKER_STALE_MS) */
} ws_worker_t;

/* One RegistryChange, as the map's push feed carries it. */
typedef struct {
    char key[TS_CELL_STR_MAX];
    ts_cell_t id;
    uint64_t epoch, version;
    ts_cell_state_t state;
    char owner[64];
} ws_cell_event_t;

typedef struct gw_ws_server {
    uv_tcp_t tcp;
    bool open;
    int port;
    ts_bus_sub_t *hb_sub;
    ws_asset_t assets[WS_MAX_ASSETS];
    size_t nassets;
    pthread_mutex_t lock; /* workers */
    ws_worker_t workers[WS_MAX_WORKERS];
    size_t nworkers;
    /* loop thread: the push feed, with the registry changes the gateway
     * applied since the last push */
    ws_cell_event_t *cell_events; /* WS_MAX_CELL_EVENTS */
    size_t ncell_events;
    bool events_lost;
    uv_timer_t events_timer;
    bool timer_open;
    gw_conn_t *viewers[WS_MAX_VIEWERS];
    size_t nviewers;
    uint64_t pushes;
    uint64_t sends;        /* timer runs since the first viewer came */
    uint64_t dots_ver;     /* gw->ents_ver the last dots event was built at */
    uint64_t counters_ver; /* world counters version the viewers were last sent */
    bool dots_due;         /* a viewer came: the next dots event goes out whatever changed */
} gw_ws_server_t;

/* Scratch of one gw_ws_writev call (loop thread only). */
typedef struct {
    bool hdr; /* base is an offset into hdr_buf */
    const uint8_t *base;
    size_t off, len;
} ws_piece_t;
static ws_piece_t *g_pieces;
static size_t g_npieces, g_pieces_cap;
static uint8_t *g_hdr;
static size_t g_hdr_len, g_hdr_cap;
static uv_buf_t *g_iov;
static size_t g_iov_cap;
static const uint8_t *g_payload; /* the payload piece being sent */

#include "web_assets.h" /* generated: the map page built into the binary */

static gw_ws_server_t *server_of(gw_t *gw)
{
    return gw->ws_server;
}

/* ---- output ---------------------------------------------------------------- */

static bool pieces_push(ws_piece_t p)
{
    if (g_npieces == g_pieces_cap) {
        size_t cap = g_pieces_cap ? g_pieces_cap * 2 : 256;
        ws_piece_t *n = realloc(g_pieces, cap * sizeof *n);
        if (n == NULL) return false;
        g_pieces = n;
        g_pieces_cap = cap;
    }
    g_pieces[g_npieces++] = p;
    return true;
}

/* wslay's frame layer "sends" here: a header is copied to g_hdr, payload
 * is referenced where the caller keeps it. */
static ssize_t collect_send(const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    (void)ud;
    if (data == g_payload) return pieces_push((ws_piece_t){false, data, 0, len}) ? (ssize_t)len : -1;
    if (g_hdr_len + len > g_hdr_cap) {
        size_t cap = g_hdr_cap ? g_hdr_cap * 2 : 1024;
        while (cap < g_hdr_len + len)
            cap *= 2;
        uint8_t *n = realloc(g_hdr, cap);
        if (n == NULL) return -1;
        g_hdr = n;
        g_hdr_cap = cap;
    }
    memcpy(g_hdr + g_hdr_len, data, len);
    if (!pieces_push((ws_piece_t){true, NULL, g_hdr_len, len})) return -1;
    g_hdr_len += len;
    return (ssize_t)len;
}

static ssize_t frames_recv(uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    struct gw_ws *ws = ud;
    if (ws->in_len == 0) return -1; /* WSLAY_ERR_WANT_READ */
    size_t n = len < ws->in_len ? len : ws->in_len;
    memcpy(buf, ws->in, n);
    ws->in += n;
    ws->in_len -= n;
    return (ssize_t)n;
}

static int frames_genmask(uint8_t *buf, size_t len, void *ud)
{
    (void)ud;
    memset(buf, 0, len); /* servers do not mask */
    return 0;
}

/* Adds one frame (opcode, payload given in pieces or NULL) to the scratch. */
static bool frame_begin(struct gw_ws *ws, uint8_t opcode, uint64_t payload_len)
{
    struct wslay_frame_iocb io = {0};
    io.fin = 1;
    io.opcode = opcode;
    io.payload_length = payload_len;
    g_payload = NULL;
    return wslay_frame_send(ws->frames, &io) >= 0;
}

static bool frame_payload(struct gw_ws *ws, uint8_t opcode, uint64_t payload_len, const uint8_t *p, size_t n)
{
    struct wslay_frame_iocb io = {0};
    io.fin = 1;
    io.opcode = opcode;
    io.payload_length = payload_len;
    io.data = p;
    io.data_length = n;
    g_payload = p;
    ssize_t r = wslay_frame_send(ws->frames, &io);
    g_payload = NULL;
    return r == (ssize_t)n;
}

/* Writes what the scratch holds to the socket. */
static ts_status_t scratch_flush(gw_conn_t *c)
{
    if (g_npieces > g_iov_cap) {
        uv_buf_t *n = realloc(g_iov, g_npieces * sizeof *n);
        if (n == NULL) {
            gw_conn_close(c);
            return TS_ERR_NOMEM;
        }
        g_iov = n;
        g_iov_cap = g_npieces;
    }
    size_t total = 0;
    for (size_t i = 0; i < g_npieces; i++) {
        const ws_piece_t *p = &g_pieces[i];
        g_iov[i] = uv_buf_init((char *)(p->hdr ? g_hdr + p->off : p->base), (unsigned)p->len);
        total += p->len;
    }
    size_t n = g_npieces;
    g_npieces = 0;
    g_hdr_len = 0;
    if (n == 0) return TS_OK;
    return gw_conn_writev_raw(c, g_iov, n, total);
}

/* Sends one control or binary frame with a contiguous payload. */
static ts_status_t send_frame(gw_conn_t *c, uint8_t opcode, const uint8_t *data, size_t len)
{
    struct gw_ws *ws = c->ws;
    g_npieces = 0;
    g_hdr_len = 0;
    if (!frame_begin(ws, opcode, len) || (len > 0 && !frame_payload(ws, opcode, len, data, len))) {
        gw_conn_close(c);
        return TS_ERR_IO;
    }
    return scratch_flush(c);
}

ts_status_t gw_ws_writev(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t total)
{
    struct gw_ws *ws = c->ws;
    if (c->handle_closed) return TS_ERR_CLOSED;
    if (ws->phase == WS_DONE) return TS_OK;
    if (ws->phase == WS_HTTP) {
        /* e.g. an Error before the upgrade: sent right after the 101 */
        if (ws->early_len + total > GW_WS_MAX_EARLY) {
            gw_conn_close(c);
            return TS_ERR_UNAVAILABLE;
        }
        uint8_t *n = realloc(ws->early, ws->early_len + total);
        if (n == NULL) {
            gw_conn_close(c);
            return TS_ERR_NOMEM;
        }
        ws->early = n;
        for (size_t i = 0; i < nbufs; i++) {
            memcpy(ws->early + ws->early_len, bufs[i].base, bufs[i].len);
            ws->early_len += bufs[i].len;
        }
        return TS_OK;
    }
    if (ws->close_sent) return TS_OK;
    g_npieces = 0;
    g_hdr_len = 0;
    for (size_t i = 0; i < nbufs; i++) {
        const uint8_t *p = (const uint8_t *)bufs[i].base;
        size_t n = bufs[i].len;
        while (n > 0) {
            if (ws->out_left == 0 && ws->len_hdr_n < TS_FRAME_HEADER) {
                size_t k = TS_FRAME_HEADER - ws->len_hdr_n;
                if (k > n) k = n;
                memcpy(ws->len_hdr + ws->len_hdr_n, p, k);
                ws->len_hdr_n += k;
                p += k;
                n -= k;
                if (ws->len_hdr_n < TS_FRAME_HEADER) break;
                ws->out_left = ts_frame_get_header(ws->len_hdr);
                if (!frame_begin(ws, WSLAY_BINARY_FRAME, ws->out_left)) goto fail;
                if (ws->out_left == 0) ws->len_hdr_n = 0;
                continue;
            }
            size_t k = n < ws->out_left ? n : (size_t)ws->out_left;
            uint64_t plen = ts_frame_get_header(ws->len_hdr);
            if (!frame_payload(ws, WSLAY_BINARY_FRAME, plen, p, k)) goto fail;
            ws->out_left -= k;
            if (ws->out_left == 0) ws->len_hdr_n = 0;
            p += k;
            n -= k;
        }
    }
    return scratch_flush(c);
fail:
    g_npieces = 0;
    g_hdr_len = 0;
    ts_warn("conn %llu (%s): cannot frame WebSocket output", (unsigned long long)c->id, c->peer);
    gw_conn_close(c);
    return TS_ERR_IO;
}

/* The message of the last Error among length-prefixed ServerFrames (the
 * output queued before an upgrade), into buf; false if there is none. */
static bool early_error(const uint8_t *p, size_t len, char *buf, size_t cap)
{
    bool found = false;
    while (len >= TS_FRAME_HEADER) {
        size_t n = ts_frame_get_header(p);
        if (n > len - TS_FRAME_HEADER) break;
        Tessera__V1__ServerFrame *f = tessera__v1__server_frame__unpack(NULL, n, p + TS_FRAME_HEADER);
        if (f != NULL && f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR && f->error->message) {
            snprintf(buf, cap, "%s", f->error->message);
            found = true;
        }
        if (f != NULL) tessera__v1__server_frame__free_unpacked(f, NULL);
        p += TS_FRAME_HEADER + n;
        len -= TS_FRAME_HEADER + n;
    }
    return found;
}

void gw_ws_closing(gw_conn_t *c)
{
    struct gw_ws *ws = c->ws;
    if (ws != NULL && ws->phase == WS_HTTP && !c->handle_closed) {
        /* closed before its upgrade (too many connections from its address,
         * no request in time, the gateway stopping): an HTTP answer saying
         * why, not a silent close */
        char msg[256];
        if (!early_error(ws->early, ws->early_len, msg, sizeof msg))
            snprintf(msg, sizeof msg, "the gateway closed the connection");
        size_t n = strlen(msg);
        msg[n < sizeof msg - 1 ? n++ : n - 1] = '\n';
        ws->phase = WS_DONE;
        uv_buf_t b[2];
        char head[256];
        int hn = snprintf(head, sizeof head,
                          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          n);
        b[0] = uv_buf_init(head, (unsigned)hn);
        b[1] = uv_buf_init(msg, (unsigned)n);
        (void)gw_conn_writev_raw(c, b, 2, (size_t)hn + n);
        return;
    }
    if (ws == NULL || ws->phase != WS_OPEN || ws->close_sent || c->handle_closed) return;
    uint16_t code = ws->close_code ? ws->close_code : WSLAY_CODE_NORMAL_CLOSURE;
    uint8_t body[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    (void)send_frame(c, WSLAY_CONNECTION_CLOSE, body, sizeof body);
    ws->close_sent = true;
}

/* ---- input ----------------------------------------------------------------- */

/* A WebSocket-level failure: the Error, then a close frame with `code`. */
static void ws_fail(gw_conn_t *c, uint16_t code, Tessera__V1__ErrorCode err, const char *what)
{
    c->ws->close_code = code;
    gw_session_error(c, err, true, "%s", what);
}

static void on_control(gw_conn_t *c)
{
    struct gw_ws *ws = c->ws;
    uint64_t now = ts_mono_us();
    if (now - ws->ctrl_window_us >= 1000000) {
        ws->ctrl_window_us = now;
        ws->ctrl_count = 0;
    }
    if (++ws->ctrl_count > WS_MAX_CONTROL_PER_S) {
        c->ws->close_code = WSLAY_CODE_POLICY_VIOLATION;
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT, true,
                         "flooding: more than %d WebSocket control frames/s", WS_MAX_CONTROL_PER_S);
        return;
    }
    switch (ws->frame_opcode) {
    case WSLAY_PING:
        (void)send_frame(c, WSLAY_PONG, ws->ctrl, ws->ctrl_len);
        break;
    case WSLAY_CONNECTION_CLOSE: {
        uint16_t code = WSLAY_CODE_NORMAL_CLOSURE;
        if (ws->ctrl_len >= 2) code = (uint16_t)(ws->ctrl[0] << 8 | ws->ctrl[1]);
        if (code < 1000 || code >= 5000 || code == 1005 || code == 1006 || code == 1015)
            code = WSLAY_CODE_NORMAL_CLOSURE;
        ws->close_code = code;
        gw_conn_close_after_write(c);
        break;
    }
    default: /* pong */
        break;
    }
}

/* Checks a frame when wslay first reports it (its header, with its first
 * payload bytes or none if it has none), before any of its payload is kept:
 * io->payload_length is the length the header announces; false: failed. */
static bool frame_start(gw_conn_t *c, const struct wslay_frame_iocb *io)
{
    struct gw_ws *ws = c->ws;
    size_t max = (size_t)c->gw->cfg->gateway_max_frame;
    if (io->rsv != 0 || !io->mask) {
        ws_fail(c, WSLAY_CODE_PROTOCOL_ERROR, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED,
                io->mask ? "WebSocket frame with reserved bits set"
                         : "unmasked WebSocket frame from a client");
        return false;
    }
    ws->frame_opcode = io->opcode;
    if (wslay_is_ctrl_frame(io->opcode)) {
        if (io->opcode != WSLAY_PING && io->opcode != WSLAY_PONG && io->opcode != WSLAY_CONNECTION_CLOSE) {
            ws_fail(c, WSLAY_CODE_PROTOCOL_ERROR, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED,
                    "unknown WebSocket opcode");
            return false;
        }
        ws->ctrl_len = 0;
        return true;
    }
    if (io->opcode == WSLAY_TEXT_FRAME) {
        ws_fail(c, WSLAY_CODE_UNSUPPORTED_DATA, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED,
                "text messages are not accepted: send each ClientFrame as one binary message");
        return false;
    }
    if (io->opcode == WSLAY_BINARY_FRAME) {
        if (ws->in_message) {
            ws_fail(c, WSLAY_CODE_PROTOCOL_ERROR, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED,
                    "new WebSocket message inside a fragmented one");
            return false;
        }
        ws->in_message = true;
        ws->msg_len = 0;
    } else if (io->opcode != WSLAY_CONTINUATION_FRAME || !ws->in_message) {
        ws_fail(c, WSLAY_CODE_PROTOCOL_ERROR, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED,
                io->opcode == WSLAY_CONTINUATION_FRAME ? "WebSocket continuation without a message"
                                                       : "unknown WebSocket opcode");
        return false;
    }
    /* msg_len: the message's earlier fragments, all received */
    if (io->payload_length > max - ws->msg_len) {
        c->ws->close_code = WSLAY_CODE_MESSAGE_TOO_BIG;
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_OVERSIZED, true,
                         "message of %llu bytes announced, the maximum is %zu",
                         (unsigned long long)(ws->msg_len + io->payload_length), max);
        return false;
    }
    size_t need = ws->msg_len + (size_t)io->payload_length;
    if (need > ws->msg_cap) {
        size_t cap = ws->msg_cap ? ws->msg_cap : 256;
        while (cap < need)
            cap *= 2;
        if (cap > max) cap = max;
        uint8_t *n = realloc(ws->msg, cap);
        if (n == NULL) {
            gw_conn_close(c);
            return false;
        }
        ws->msg = n;
        ws->msg_cap = cap;
    }
    return true;
}

static void read_frames(gw_conn_t *c, const uint8_t *data, size_t len)
{
    struct gw_ws *ws = c->ws;
    ws->in = data;
    ws->in_len = len;
    while (!c->closing && !c->handle_closed) {
        struct wslay_frame_iocb io;
        ssize_t r = wslay_frame_recv(ws->frames, &io);
        if (r == WSLAY_ERR_WANT_READ) break;
        if (r < 0) {
            ws_fail(c, WSLAY_CODE_PROTOCOL_ERROR, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED,
                    "malformed WebSocket frame");
            break;
        }
        if (!ws->in_frame) {
            if (!frame_start(c, &io)) break;
            ws->in_frame = true;
            ws->frame_got = 0;
        }
        if (io.data_length > 0) {
            if (wslay_is_ctrl_frame(ws->frame_opcode)) {
                memcpy(ws->ctrl + ws->ctrl_len, io.data, io.data_length);
                ws->ctrl_len += io.data_length;
            } else {
                memcpy(ws->msg + ws->msg_len, io.data, io.data_length);
                ws->msg_len += io.data_length;
            }
        }
        ws->frame_got += io.data_length;
        if (ws->frame_got < io.payload_length) continue;
        ws->in_frame = false;
        if (wslay_is_ctrl_frame(ws->frame_opcode)) {
            on_control(c);
        } else if (io.fin) {
            ws->in_message = false;
            ws->delivered++;
            gw_session_on_frame(c, ws->msg, ws->msg_len);
        }
    }
    ws->in = NULL;
    ws->in_len = 0;
}

/* ---- HTTP ------------------------------------------------------------------ */

static void http_reply(gw_conn_t *c, int status, const char *reason, const char *type, const char *extra,
                       const uint8_t *body, size_t len)
{
    char head[1024];
    int n =
        snprintf(head, sizeof head,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n%sConnection: close\r\n\r\n",
                 status, reason, type, len, extra != NULL ? extra : "");
    c->ws->phase = WS_DONE;
    uv_buf_t b[2] = {uv_buf_init(head, (unsigned)n), uv_buf_init((char *)body, (unsigned)len)};
    if (gw_conn_writev_raw(c, b, len > 0 ? 2 : 1, (size_t)n + len) == TS_OK) gw_conn_close_after_write(c);
}

static void http_error(gw_conn_t *c, int status, const char *reason, const char *extra)
{
    char body[128];
    int n = snprintf(body, sizeof body, "%d %s\n", status, reason);
    ts_debug("conn %llu (%s): HTTP %d %s", (unsigned long long)c->id, c->peer, status, reason);
    http_reply(c, status, reason, "text/plain; charset=utf-8", extra, (const uint8_t *)body, (size_t)n);
}

typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} ws_header_t;

static const ws_header_t *find_header(const ws_header_t *h, size_t n, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (h[i].name_len == len && strncasecmp(h[i].name, name, len) == 0) return &h[i];
    return NULL;
}

/* Whether the comma-separated header value holds `token` (any case). */
static bool header_has_token(const ws_header_t *h, const char *token)
{
    if (h == NULL) return false;
    size_t tlen = strlen(token);
    const char *p = h->value, *end = h->value + h->value_len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) == tlen && strncasecmp(s, token, tlen) == 0) return true;
    }
    return false;
}

static bool value_is(const ws_header_t *h, const char *v)
{
    return h != NULL && h->value_len == strlen(v) && strncasecmp(h->value, v, h->value_len) == 0;
}

/* Origin check: no Origin (not a browser) passes; "*" allows any; an empty
 * list allows the page's own host; otherwise an exact match. */
static bool origin_allowed(const ts_config_t *cfg, const ws_header_t *origin, const ws_header_t *host)
{
    if (origin == NULL) return true;
    const char *list = cfg->gateway_ws_origins != NULL ? cfg->gateway_ws_origins : "";
    if (strcmp(list, "*") == 0) return true;
    if (list[0] == '\0') {
        if (host == NULL) return false;
        const char *o = origin->value;
        size_t olen = origin->value_len;
        const char *sep = memmem(o, olen, "://", 3);
        if (sep == NULL) return false;
        const char *oh = sep + 3;
        size_t ohlen = olen - (size_t)(oh - o);
        return ohlen == host->value_len && strncasecmp(oh, host->value, ohlen) == 0;
    }
    const char *p = list;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',')
            p++;
        const char *s = p;
        while (*p != '\0' && *p != ',')
            p++;
        const char *e = p;
        while (e > s && e[-1] == ' ')
            e--;
        if ((size_t)(e - s) == origin->value_len && strncasecmp(s, origin->value, origin->value_len) == 0)
            return true;
    }
    return false;
}

/* Sec-WebSocket-Key must be the base64 of 16 bytes. */
static bool key_valid(const ws_header_t *key)
{
    if (key == NULL || key->value_len != 24 || key->value[22] != '=' || key->value[23] != '=') return false;
    for (size_t i = 0; i < 22; i++) {
        char ch = key->value[i];
        if (!isalnum((unsigned char)ch) && ch != '+' && ch != '/') return false;
    }
    return true;
}

static void upgrade(gw_conn_t *c, const ws_header_t *key, const uint8_t *rest, size_t rest_len)
{
    struct gw_ws *ws = c->ws;
    char buf[64];
    memcpy(buf, key->value, key->value_len);
    memcpy(buf + key->value_len, WS_GUID, sizeof WS_GUID - 1);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)buf, key->value_len + sizeof WS_GUID - 1, digest);
    unsigned char accept[4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1];
    EVP_EncodeBlock(accept, digest, SHA_DIGEST_LENGTH);

    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    if (gw_conn_write_raw(c, (const uint8_t *)head, (size_t)n) != TS_OK) return;
    ws->phase = WS_OPEN;
    ts_debug("conn %llu (%s): WebSocket open", (unsigned long long)c->id, c->peer);
    if (ws->early_len > 0) {
        uint8_t *early = ws->early;
        size_t early_len = ws->early_len;
        ws->early = NULL;
        ws->early_len = 0;
        uv_buf_t b = uv_buf_init((char *)early, (unsigned)early_len);
        (void)gw_ws_writev(c, &b, 1, early_len);
        free(early);
    }
    if (rest_len > 0 && !c->closing) read_frames(c, rest, rest_len);
}

static const char *json_escape_key(const char *s, char *buf, size_t cap)
{
    size_t o = 0;
    for (; *s != '\0' && o + 2 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\' || ch < 0x20) continue;
        buf[o++] = (char)ch;
    }
    buf[o] = '\0';
    return buf;
}

/* A growing text buffer for the JSON answer. */
typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (np == NULL) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static const char *state_name(ts_cell_state_t s)
{
    switch (s) {
    case TS_CELL_ACTIVE:
        return "active";
    case TS_CELL_HANDOVER:
        return "handover";
    case TS_CELL_SPLIT:
        return "split";
    case TS_CELL_RETIRED:
        return "retired";
    }
    return "unknown";
}

/* One worker's entry of the map's feed (under srv->lock). */
static void worker_json(sbuf_t *b, const ws_worker_t *w, uint64_t now_ms, bool first)
{
    char esc[TS_CELL_STR_MAX];
    sb_printf(b,
              "%s{\"id\":\"%s\",\"entities\":%u,\"inputs_applied\":%llu,\"ticks\":%llu,\"tick_p99_ms\":%.3f,"
              "\"draining\":%s,\"age_ms\":%llu,\"cells\":[",
              first ? "" : ",", json_escape_key(w->id, esc, sizeof esc), w->entities,
              (unsigned long long)w->inputs_applied, (unsigned long long)w->ticks, w->tick_p99_ms,
              w->draining ? "true" : "false", (unsigned long long)(now_ms - w->seen_ms));
    for (size_t k = 0; k < w->ncells; k++)
        sb_printf(b, "%s{\"key\":\"%s\",\"epoch\":%llu,\"entities\":%u}", k ? "," : "",
                  json_escape_key(w->cells[k], esc, sizeof esc), (unsigned long long)w->cell_epochs[k],
                  w->cell_entities[k]);
    sb_printf(b, "]}");
}

/* The world counters as a JSON array (as many as the last non-zero one);
 * returns their version. */
static uint64_t counters_json(gw_t *gw, sbuf_t *b)
{
    int64_t v[TS_GAME_COUNTERS];
    uint64_t ver = gw_counters_get(gw, v);
    size_t n = TS_GAME_COUNTERS;
    while (n > 0 && v[n - 1] == 0)
        n--;
    sb_printf(b, "[");
    for (size_t i = 0; i < n; i++)
        sb_printf(b, "%s%lld", i ? "," : "", (long long)v[i]);
    sb_printf(b, "]");
    return ver;
}

/* The map's feed: world, cells (registry view) and workers (heartbeats). */
static void build_world(gw_t *gw, sbuf_t *b)
{
    gw_ws_server_t *srv = server_of(gw);
    char esc[TS_CELL_STR_MAX];
    sb_printf(b,
              "{\"world\":{\"id\":%u,\"cell_size\":%.17g,\"x0\":%d,\"y0\":%d,\"width\":%d,\"height\":%d},"
              "\"gateway\":\"%s\",\"players\":%zu,\"time_ms\":%llu,\"hb_ttl_ms\":%lld,\"max_dots\":%lld,"
              "\"cells\":[",
              gw->world.id, gw->world.cell_size, gw->world.x0, gw->world.y0, gw->world.width,
              gw->world.height, json_escape_key(gw->name, esc, sizeof esc), gw->players.len,
              (unsigned long long)(ts_now_us() / 1000), (long long)gw->cfg->orch_hb_ttl_ms,
              (long long)gw->cfg->gateway_map_max_dots);
    bool first = true;
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        if (!cell->in_registry) continue;
        sb_printf(b,
                  "%s{\"key\":\"%s\",\"cx\":%d,\"cy\":%d,\"depth\":%u,\"sub\":%llu,\"epoch\":%llu,\"state\":"
                  "\"%s\"}",
                  first ? "" : ",", json_escape_key(cell->key, esc, sizeof esc), cell->id.cx, cell->id.cy,
                  (unsigned)cell->id.depth, (unsigned long long)cell->id.sub,
                  (unsigned long long)cell->reg_epoch, state_name(cell->reg_state));
        first = false;
    }
    sb_printf(b, "],\"counters\":");
    counters_json(gw, b);
    sb_printf(b, ",\"workers\":[");
    uint64_t now_ms = ts_now_us() / 1000;
    pthread_mutex_lock(&srv->lock);
    first = true;
    for (size_t i = 0; i < srv->nworkers; i++) {
        const ws_worker_t *w = &srv->workers[i];
        if (now_ms - w->seen_ms > WS_WORKER_STALE_MS) continue;
        worker_json(b, w, now_ms, first);
        first = false;
    }
    pthread_mutex_unlock(&srv->lock);
    sb_printf(b, "]}");
}

static void serve_world(gw_conn_t *c)
{
    sbuf_t b = {0};
    build_world(c->gw, &b);
    if (b.failed) {
        free(b.p);
        http_error(c, 500, "Internal Server Error", NULL);
        return;
    }
    http_reply(c, 200, "OK", "application/json", "Access-Control-Allow-Origin: *\r\n", (const uint8_t *)b.p,
               b.len);
    free(b.p);
}

/* ---- the map's push feed ----------------------------------------------------
 *
 * GET /api/events is a server-sent event stream: `world` (what /api/world
 * answers) once, then every WS_EVENTS_MS at most one `cells` event (the
 * RegistryChanges since the last one, in order: key, cell, epoch, state,
 * owner, version) and one `workers` event (the workers that sent a heartbeat
 * since, and those gone silent), and a `counters` event ({"values":[...]},
 * the world counters, see counters.c) when they changed. So a viewer costs
 * what changes, not the
 * world; a burst of more than WS_MAX_CELL_EVENTS changes between two sends
 * is sent as a whole `world` instead.
 *
 * Entity dots: while a viewer is connected (and gateway.map_max_dots > 0)
 * the gateway holds a state subscription on every live cell of the world
 * (gw_aoi_map_hold; released when the last viewer leaves), so its entity
 * caches (view.c) hold every entity. Every WS_DOTS_EVERY sends, when any
 * cached entity changed since the last one, a `dots` event carries the
 * entities' positions (each entity once, from the cell holding its newest
 * state), at most gateway.map_max_dots of them, with the total. Like every
 * event it is encoded once per send and written to every viewer. */

/* Appends the `dots` event: {"dots":[["id",x,y],...],"total":T,"max":M}. */
static void dots_event(gw_t *gw, sbuf_t *b)
{
    size_t max = (size_t)gw->cfg->gateway_map_max_dots, total = 0;
    sb_printf(b, "event: dots\ndata: {\"dots\":[");
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        if (cell->aoi_refs == 0 || cell->entities.len == 0) continue;
        uint64_t id;
        void *v;
        for (size_t it = 0; ts_map_next(&cell->entities, &it, &id, &v);) {
            const gw_entity_t *e = v;
            if (ts_map_get(&gw->homes, id) != cell || !isfinite(e->pb.x) || !isfinite(e->pb.y)) continue;
            if (total < max)
                sb_printf(b, "%s[\"%llu\",%.1f,%.1f]", total ? "," : "", (unsigned long long)id, e->pb.x,
                          e->pb.y);
            total++;
        }
    }
    sb_printf(b, "],\"total\":%zu,\"max\":%zu}\n\n", total, max);
}

static void viewer_write(gw_conn_t *c, const char *data, size_t len)
{
    if (c->handle_closed || c->closing) return;
    if (c->out_pending > WS_VIEWER_MAX_BACKLOG) {
        ts_info("conn %llu (%s): map viewer %zu bytes behind; closing", (unsigned long long)c->id, c->peer,
                c->out_pending);
        gw_conn_close(c);
        return;
    }
    (void)gw_conn_write_raw(c, (const uint8_t *)data, len);
}

static void world_event(gw_t *gw, sbuf_t *b)
{
    sb_printf(b, "event: world\ndata: ");
    build_world(gw, b);
    sb_printf(b, "\n\n");
}

static void on_events_timer(uv_timer_t *t);

static void serve_events(gw_conn_t *c)
{
    gw_t *gw = c->gw;
    gw_ws_server_t *srv = server_of(gw);
    if (srv->nviewers >= WS_MAX_VIEWERS) {
        http_error(c, 503, "Service Unavailable", "Retry-After: 5\r\n");
        return;
    }
    sbuf_t b = {0};
    sb_printf(&b, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                  "X-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: *\r\n\r\n"
                  "retry: 1000\n\n");
    world_event(gw, &b);
    if (b.failed) {
        free(b.p);
        http_error(c, 500, "Internal Server Error", NULL);
        return;
    }
    c->ws->phase = WS_DONE; /* reads are ignored from now on */
    c->ws->viewer = true;
    /* a viewer only listens: no hello or idle deadline */
    gw_tl_del(gw, c, GW_TL_HELLO);
    gw_tl_del(gw, c, GW_TL_IDLE);
    if (srv->nviewers == 0) {
        /* the first viewer: pushes start, from what changes after its world */
        pthread_mutex_lock(&srv->lock);
        for (size_t i = 0; i < srv->nworkers; i++)
            srv->workers[i].changed = false;
        pthread_mutex_unlock(&srv->lock);
        srv->ncell_events = 0;
        srv->events_lost = false;
        srv->sends = 0;
        int64_t cv[TS_GAME_COUNTERS];
        srv->counters_ver = gw_counters_get(gw, cv); /* in its world event */
        if (srv->timer_open) uv_timer_start(&srv->events_timer, on_events_timer, WS_EVENTS_MS, WS_EVENTS_MS);
        if (gw->cfg->gateway_map_max_dots > 0) gw_aoi_map_hold(gw, true);
    }
    srv->dots_due = gw->cfg->gateway_map_max_dots > 0;
    srv->viewers[srv->nviewers++] = c;
    gw->map_viewers = srv->nviewers;
    viewer_write(c, b.p, b.len);
    free(b.p);
}

static void viewer_gone(gw_conn_t *c)
{
    gw_ws_server_t *srv = server_of(c->gw);
    if (srv == NULL) return;
    for (size_t i = 0; i < srv->nviewers; i++)
        if (srv->viewers[i] == c) {
            srv->viewers[i] = srv->viewers[--srv->nviewers];
            break;
        }
    c->gw->map_viewers = srv->nviewers;
    if (srv->nviewers > 0) return;
    /* nobody to push to: no timer, no subscriptions for the map */
    if (srv->timer_open) uv_timer_stop(&srv->events_timer);
    gw_aoi_map_hold(c->gw, false);
}

static void on_events_timer(uv_timer_t *t)
{
    gw_t *gw = t->data;
    gw_ws_server_t *srv = server_of(gw);
    uint64_t now_ms = ts_now_us() / 1000;
    sbuf_t b = {0};
    bool lost = false;
    pthread_mutex_lock(&srv->lock);
    if (srv->nviewers > 0) {
        lost = srv->events_lost;
        char esc[TS_CELL_STR_MAX], own[2 * 64];
        if (!lost && srv->ncell_events > 0) {
            sb_printf(&b, "event: cells\ndata: [");
            for (size_t i = 0; i < srv->ncell_events; i++) {
                const ws_cell_event_t *e = &srv->cell_events[i];
                sb_printf(&b,
                          "%s{\"key\":\"%s\",\"cx\":%d,\"cy\":%d,\"depth\":%u,\"sub\":%llu,\"epoch\":%llu,"
                          "\"state\":\"%s\",\"owner\":\"%s\",\"version\":%llu}",
                          i ? "," : "", json_escape_key(e->key, esc, sizeof esc), e->id.cx, e->id.cy,
                          (unsigned)e->id.depth, (unsigned long long)e->id.sub, (unsigned long long)e->epoch,
                          state_name(e->state), json_escape_key(e->owner, own, sizeof own),
                          (unsigned long long)e->version);
            }
            sb_printf(&b, "]\n\n");
        }
        bool any = false, first = true;
        for (size_t i = 0; i < srv->nworkers; i++) {
            ws_worker_t *w = &srv->workers[i];
            if (!w->changed) continue;
            if (!any) sb_printf(&b, "event: workers\ndata: {\"workers\":[");
            any = true;
            worker_json(&b, w, now_ms, first);
            first = false;
            w->changed = false;
        }
        first = true;
        for (size_t i = 0; i < srv->nworkers; i++) {
            ws_worker_t *w = &srv->workers[i];
            if (w->gone_sent || now_ms - w->seen_ms <= WS_WORKER_STALE_MS) continue;
            if (!any) sb_printf(&b, "event: workers\ndata: {\"workers\":[");
            if (first) sb_printf(&b, "],\"gone\":[");
            any = true;
            sb_printf(&b, "%s\"%s\"", first ? "" : ",", json_escape_key(w->id, esc, sizeof esc));
            first = false;
            w->gone_sent = true;
        }
        if (any) sb_printf(&b, first ? "],\"gone\":[]}\n\n" : "]}\n\n");
    }
    srv->ncell_events = 0;
    srv->events_lost = false;
    pthread_mutex_unlock(&srv->lock);
    if (lost) world_event(gw, &b);
    int64_t cv[TS_GAME_COUNTERS];
    if (srv->nviewers > 0 && gw_counters_get(gw, cv) != srv->counters_ver) {
        sb_printf(&b, "event: counters\ndata: {\"values\":");
        srv->counters_ver = counters_json(gw, &b);
        sb_printf(&b, "}\n\n");
    }
    if (srv->nviewers > 0 && gw->map_hold && ++srv->sends % WS_DOTS_EVERY == 0 &&
        (srv->dots_due || srv->dots_ver != gw->ents_ver)) {
        dots_event(gw, &b);
        srv->dots_ver = gw->ents_ver;
        srv->dots_due = false;
    }
    if (!b.failed && b.len > 0) {
        srv->pushes++;
        for (size_t i = 0; i < srv->nviewers; i++)
            viewer_write(srv->viewers[i], b.p, b.len);
    }
    free(b.p);
}

void gw_ws_registry_change(gw_t *gw, const ts_cell_entry_t *e, uint64_t version)
{
    gw_ws_server_t *srv = server_of(gw);
    if (srv == NULL || srv->nviewers == 0) return;
    if (srv->ncell_events == WS_MAX_CELL_EVENTS) {
        srv->events_lost = true;
        return;
    }
    ws_cell_event_t *ev = &srv->cell_events[srv->ncell_events++];
    *ev = (ws_cell_event_t){.id = e->cell, .epoch = e->epoch, .version = version, .state = e->state};
    ts_cell_format(&e->cell, ev->key, sizeof ev->key);
    ts_strlcpy(ev->owner, e->owner, sizeof ev->owner);
}

static void serve_asset(gw_conn_t *c, const char *path, size_t len)
{
    gw_ws_server_t *srv = server_of(c->gw);
    const char *name = path + 1;
    size_t nlen = len - 1;
    if (nlen == 0) {
        name = "index.html";
        nlen = strlen(name);
    }
    for (size_t i = 0; i < srv->nassets; i++) {
        const ws_asset_t *a = &srv->assets[i];
        if (strlen(a->name) == nlen && memcmp(a->name, name, nlen) == 0) {
            http_reply(c, 200, "OK", a->type, NULL, a->data, a->len);
            return;
        }
    }
    http_error(c, 404, "Not Found", NULL);
}

/* Parses the complete request head (head[0..len) ends with CRLF CRLF). */
static void on_request(gw_conn_t *c, char *head, size_t len, const uint8_t *rest, size_t rest_len)
{
    char *end = head + len;
    char *line_end = memmem(head, len, "\r\n", 2);
    /* request line: METHOD SP target SP HTTP/1.x */
    char *sp1 = memchr(head, ' ', (size_t)(line_end - head));
    char *sp2 = sp1 != NULL ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
    if (sp1 == NULL || sp2 == NULL || line_end - sp2 - 1 != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        http_error(c, 400, "Bad Request", NULL);
        return;
    }
    const char *method = head;
    size_t method_len = (size_t)(sp1 - head);
    const char *target = sp1 + 1;
    size_t target_len = (size_t)(sp2 - target);
    const char *q = memchr(target, '?', target_len);
    size_t path_len = q != NULL ? (size_t)(q - target) : target_len;
    if (path_len == 0 || target[0] != '/') {
        http_error(c, 400, "Bad Request", NULL);
        return;
    }

    ws_header_t hdrs[WS_MAX_HEADERS];
    size_t nh = 0;
    char *p = line_end + 2;
    while (p < end - 2) {
        char *e = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (e == NULL || e == p) break;
        char *colon = memchr(p, ':', (size_t)(e - p));
        if (colon == NULL || colon == p || nh == WS_MAX_HEADERS) {
            http_error(c, colon == NULL || colon == p ? 400 : 431,
                       colon == NULL || colon == p ? "Bad Request" : "Request Header Fields Too Large", NULL);
            return;
        }
        for (char *k = p; k < colon; k++) {
            if (*k == ' ' || *k == '\t' || (unsigned char)*k < 0x21) {
                http_error(c, 400, "Bad Request", NULL);
                return;
            }
        }
        char *v = colon + 1;
        while (v < e && (*v == ' ' || *v == '\t'))
            v++;
        char *ve = e;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        hdrs[nh++] = (ws_header_t){p, (size_t)(colon - p), v, (size_t)(ve - v)};
        p = e + 2;
    }

    if (method_len != 3 || memcmp(method, "GET", 3) != 0) {
        http_error(c, 405, "Method Not Allowed", "Allow: GET\r\n");
        return;
    }
    for (size_t i = 0; i < path_len; i++) {
        char ch = target[i];
        if (!isalnum((unsigned char)ch) && ch != '/' && ch != '.' && ch != '-' && ch != '_') {
            http_error(c, 404, "Not Found", NULL);
            return;
        }
    }
    if (memmem(target, path_len, "..", 2) != NULL) {
        http_error(c, 404, "Not Found", NULL);
        return;
    }
    if (path_len == 3 && memcmp(target, "/ws", 3) == 0) {
        const ws_header_t *key = find_header(hdrs, nh, "Sec-WebSocket-Key");
        if (!value_is(find_header(hdrs, nh, "Upgrade"), "websocket") ||
            !header_has_token(find_header(hdrs, nh, "Connection"), "upgrade")) {
            http_error(c, 426, "Upgrade Required", "Upgrade: websocket\r\nConnection: Upgrade\r\n");
            return;
        }
        if (!value_is(find_header(hdrs, nh, "Sec-WebSocket-Version"), "13")) {
            http_error(c, 426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n");
            return;
        }
        if (!key_valid(key)) {
            http_error(c, 400, "Bad Request", NULL);
            return;
        }
        if (!origin_allowed(c->gw->cfg, find_header(hdrs, nh, "Origin"), find_header(hdrs, nh, "Host"))) {
            ts_info("conn %llu (%s): WebSocket from a disallowed Origin", (unsigned long long)c->id, c->peer);
            http_error(c, 403, "Forbidden", NULL);
            return;
        }
        upgrade(c, key, rest, rest_len);
        return;
    }
    if (path_len == 10 && memcmp(target, "/api/world", 10) == 0) {
        serve_world(c);
        return;
    }
    if (path_len == 11 && memcmp(target, "/api/events", 11) == 0) {
        serve_events(c);
        return;
    }
    serve_asset(c, target, path_len);
}

size_t gw_ws_on_read(gw_conn_t *c, const uint8_t *data, size_t len)
{
    struct gw_ws *ws = c->ws;
    ws->delivered = 0;
    if (ws->phase == WS_OPEN) {
        read_frames(c, data, len);
        return ws->delivered;
    }
    if (ws->phase != WS_HTTP) return 0;
    size_t take = len;
    if (ws->head_len + take > GW_WS_MAX_HEAD) take = GW_WS_MAX_HEAD - ws->head_len;
    if (ws->head == NULL) {
        ws->head = malloc(GW_WS_MAX_HEAD);
        if (ws->head == NULL) {
            gw_conn_close(c);
            return 0;
        }
    }
    size_t before = ws->head_len;
    memcpy(ws->head + ws->head_len, data, take);
    ws->head_len += take;
    /* search from a little before the new bytes: CRLF CRLF may straddle reads */
    size_t from = before > 3 ? before - 3 : 0;
    char *hend = memmem(ws->head + from, ws->head_len - from, "\r\n\r\n", 4);
    if (hend == NULL) {
        if (ws->head_len >= GW_WS_MAX_HEAD) http_error(c, 431, "Request Header Fields Too Large", NULL);
        return 0;
    }
    size_t head_len = (size_t)(hend - ws->head) + 4;
    /* bytes after the head: the first WebSocket frames, if any */
    size_t rest_off = head_len - before;
    const uint8_t *rest = data + rest_off;
    size_t rest_len = len - rest_off;
    char *head = ws->head;
    ws->head = NULL;
    ws->head_len = 0;
    on_request(c, head, head_len, rest, rest_len);
    free(head);
    /* c->ws is gone if the request closed the connection at once */
    return c->handle_closed ? 0 : c->ws->delivered;
}

bool gw_ws_attach(gw_conn_t *c)
{
    struct gw_ws *ws = calloc(1, sizeof *ws);
    if (ws == NULL) return false;
    struct wslay_frame_callbacks cb = {collect_send, frames_recv, frames_genmask};
    if (wslay_frame_context_init(&ws->frames, &cb, ws) != 0) {
        free(ws);
        return false;
    }
    c->ws = ws;
    return true;
}

void gw_ws_free(gw_conn_t *c)
{
    struct gw_ws *ws = c->ws;
    if (ws == NULL) return;
    if (ws->viewer) viewer_gone(c);
    wslay_frame_context_free(ws->frames);
    free(ws->head);
    free(ws->early);
    free(ws->msg);
    free(ws);
    c->ws = NULL;
}

/* ---- heartbeats ------------------------------------------------------------ */

static void worker_clear(ws_worker_t *w)
{
    free(w->cells);
    free(w->cell_epochs);
    free(w->cell_entities);
    w->cells = NULL;
    w->cell_epochs = NULL;
    w->cell_entities = NULL;
    w->ncells = 0;
}

/* nats.c thread: one worker's heartbeat. */
static void on_heartbeat(void *ud, const ts_bus_msg_t *msg)
{
    gw_ws_server_t *srv = ud;
    Tessera__V1__Heartbeat *hb =
        tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    if (hb == NULL || hb->worker == NULL || hb->worker[0] == '\0') {
        if (hb != NULL) tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    size_t n = hb->n_cells < WS_MAX_WORKER_CELLS ? hb->n_cells : WS_MAX_WORKER_CELLS;
    char(*cells)[TS_CELL_STR_MAX] = n ? malloc(n * sizeof *cells) : NULL;
    uint64_t *epochs = n ? malloc(n * sizeof *epochs) : NULL;
    uint32_t *ents = n ? malloc(n * sizeof *ents) : NULL;
    if (n > 0 && (cells == NULL || epochs == NULL || ents == NULL)) {
        free(cells);
        free(epochs);
        free(ents);
        tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const Tessera__V1__CellLoad *cl = hb->cells[i];
        if (cl->cell == NULL) continue;
        ts_cell_t id;
        if (ts_proto_cell_get(cl->cell, &id) != TS_OK) continue;
        ts_cell_format(&id, cells[k], TS_CELL_STR_MAX);
        epochs[k] = cl->epoch;
        ents[k] = cl->entities;
        k++;
    }
    pthread_mutex_lock(&srv->lock);
    ws_worker_t *w = NULL;
    for (size_t i = 0; i < srv->nworkers; i++)
        if (strcmp(srv->workers[i].id, hb->worker) == 0) w = &srv->workers[i];
    if (w == NULL) {
        uint64_t now_ms = ts_now_us() / 1000;
        if (srv->nworkers < WS_MAX_WORKERS) {
            w = &srv->workers[srv->nworkers++];
        } else {
            /* full: take the place of a worker gone silent */
            for (size_t i = 0; i < srv->nworkers && w == NULL; i++)
                if (now_ms - srv->workers[i].seen_ms > WS_WORKER_STALE_MS) w = &srv->workers[i];
        }
        if (w != NULL) {
            worker_clear(w);
            memset(w, 0, sizeof *w);
            snprintf(w->id, sizeof w->id, "%s", hb->worker);
        }
    }
    if (w != NULL) {
        worker_clear(w);
        w->changed = true;
        w->gone_sent = false;
        w->seen_ms = ts_now_us() / 1000;
        w->entities = hb->entities;
        w->inputs_applied = hb->inputs_applied;
        w->ticks = hb->ticks;
        w->tick_p99_ms = hb->tick_p99_ms;
        w->draining = hb->draining;
        w->cells = cells;
        w->cell_epochs = epochs;
        w->cell_entities = ents;
        w->ncells = k;
        cells = NULL;
        epochs = NULL;
        ents = NULL;
    }
    pthread_mutex_unlock(&srv->lock);
    free(cells);
    free(epochs);
    free(ents);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

/* ---- listener -------------------------------------------------------------- */

static const char *content_type(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (dot == NULL) return "application/octet-stream";
    if (strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (strcmp(dot, ".js") == 0) return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    if (strcmp(dot, ".json") == 0) return "application/json";
    if (strcmp(dot, ".png") == 0) return "image/png";
    if (strcmp(dot, ".svg") == 0) return "image/svg+xml";
    return "application/octet-stream";
}

/* The map's files: from gateway.web_dir when set (read once, here at
 * start, never on a request), else the copy built into the binary. */
static ts_status_t load_assets(gw_ws_server_t *srv, const char *dir)
{
    for (size_t i = 0; i < ts_web_assets_n && srv->nassets < WS_MAX_ASSETS; i++) {
        ws_asset_t *a = &srv->assets[srv->nassets++];
        snprintf(a->name, sizeof a->name, "%s", ts_web_assets[i].name);
        a->type = content_type(a->name);
        a->data = ts_web_assets[i].data;
        a->len = ts_web_assets[i].len;
    }
    if (dir == NULL || dir[0] == '\0') return TS_OK;
    for (size_t i = 0; i < srv->nassets; i++) {
        ws_asset_t *a = &srv->assets[i];
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, a->name);
        char *buf = NULL;
        size_t len = 0;
        ts_status_t st = ts_read_file(path, (size_t)64 << 20, &buf, &len);
        if (st != TS_OK) {
            ts_error("gateway.web_dir: cannot read %s: %s", path, ts_status_str(st));
            return st == TS_ERR_NOMEM ? TS_ERR_NOMEM : TS_ERR_CONFIG;
        }
        a->owned = (uint8_t *)buf;
        a->data = (const uint8_t *)buf;
        a->len = len;
    }
    return TS_OK;
}

bool gw_ws_is_server(gw_t *gw, const uv_stream_t *server)
{
    gw_ws_server_t *srv = server_of(gw);
    return srv != NULL && server == (const uv_stream_t *)&srv->tcp;
}

ts_status_t gw_ws_listen(gw_t *gw)
{
    const char *hostport = gw->cfg->gateway_ws_listen;
    if (hostport == NULL || hostport[0] == '\0') return TS_OK;
    char host[256];
    int port = 0;
    if (ts_config_split_hostport(hostport, host, sizeof host, &port) != TS_OK || port < 0 || port > 65535) {
        ts_error("gateway.ws_listen: '%s' is not host:port", hostport);
        return TS_ERR_CONFIG;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        ts_error("gateway.ws_listen: '%s' is not a numeric IPv4/IPv6 address", host);
        return TS_ERR_CONFIG;
    }
    gw_ws_server_t *srv = calloc(1, sizeof *srv);
    if (srv == NULL) return TS_ERR_NOMEM;
    pthread_mutex_init(&srv->lock, NULL);
    gw->ws_server = srv;
    srv->cell_events = malloc(WS_MAX_CELL_EVENTS * sizeof *srv->cell_events);
    if (srv->cell_events == NULL) return TS_ERR_NOMEM;
    ts_status_t st = load_assets(srv, gw->cfg->gateway_web_dir);
    if (st != TS_OK) return st;
    if (uv_tcp_init(gw->loop, &srv->tcp) != 0) return TS_ERR_IO;
    srv->tcp.data = gw;
    srv->open = true;
    int rc = uv_tcp_bind(&srv->tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->tcp, 511, gw_conn_on_connection);
    if (rc != 0) {
        ts_error("cannot listen on %s: %s", hostport, uv_strerror(rc));
        return TS_ERR_IO;
    }
    struct sockaddr_storage bound;
    int n = sizeof bound;
    if (uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&bound, &n) == 0) {
        if (bound.ss_family == AF_INET)
            srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        else if (bound.ss_family == AF_INET6)
            srv->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    }
    st = ts_bus_subscribe(gw->bus, "tessera.worker.*.hb", on_heartbeat, srv, &srv->hb_sub);
    if (st != TS_OK) {
        ts_error("cannot subscribe to worker heartbeats: %s", ts_status_str(st));
        return st;
    }
    uv_timer_init(gw->loop, &srv->events_timer);
    srv->events_timer.data = gw;
    srv->timer_open = true; /* runs while viewers are connected */
    ts_info("WebSocket and world map on http://%s:%d/ (WebSocket path /ws)", host, srv->port);
    return TS_OK;
}

void gw_ws_listen_close(gw_t *gw)
{
    gw_ws_server_t *srv = server_of(gw);
    if (srv == NULL) return;
    ts_bus_sub_close(srv->hb_sub);
    srv->hb_sub = NULL;
    if (srv->timer_open) {
        srv->timer_open = false;
        uv_close((uv_handle_t *)&srv->events_timer, NULL);
    }
    if (!srv->open) return;
    srv->open = false;
    uv_close((uv_handle_t *)&srv->tcp, NULL);
}

void gw_ws_server_free(gw_t *gw)
{
    gw_ws_server_t *srv = server_of(gw);
    if (srv == NULL) return;
    ts_bus_sub_close(srv->hb_sub);
    free(srv->cell_events);
    for (size_t i = 0; i < srv->nassets; i++)
        free(srv->assets[i].owned);
    for (size_t i = 0; i < srv->nworkers; i++)
        worker_clear(&srv->workers[i]);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
    gw->ws_server = NULL;
    free(g_pieces);
    free(g_hdr);
    free(g_iov);
    g_pieces = NULL;
    g_hdr = NULL;
    g_iov = NULL;
    g_pieces_cap = g_hdr_cap = g_iov_cap = 0;
}
