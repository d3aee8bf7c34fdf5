/* Blocking client connection to a gateway.
 *
 * One socket, one frame reader (frames up to TS_CLIENT_MAX_FRAME). Every wait
 * goes through poll() with the caller's timeout; sends loop over partial
 * writes and EINTR and never raise SIGPIPE (MSG_NOSIGNAL); a send blocked for
 * CLIENT_SEND_TIMEOUT_S gives TS_ERR_TIMEOUT and may leave a frame half
 * written, so the connection should be closed then. Sequence numbers
 * increase by one per frame unless the caller sets its own. The client
 * remembers the cell and epoch of the last ServerFrame that named one and
 * stamps them on the frames the convenience wrappers build. */
#include "tessera/client.h"
#include "tessera/game.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tessera/net.h"
#include "tessera/util.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <wslay/wslay.h>

#define TS_CLIENT_MAX_FRAME (4u * 1024u * 1024u)
#define CLIENT_SEND_TIMEOUT_S 10
#define CLIENT_READ_CHUNK 65536

_Static_assert(TS_CLIENT_COUNTERS == TS_GAME_COUNTERS, "one counter count");

struct ts_client {
    int fd;
    ts_frame_reader_t reader;
    uint64_t last_seq;
    uint64_t epoch;
    bool has_cell;
    ts_cell_t cell;
    struct client_ws *ws;                 /* WebSocket transport (ts_client_connect_ws); NULL: TCP */
    int64_t counters[TS_CLIENT_COUNTERS]; /* the latest WorldCounters */
    bool has_counters;
};

static ts_status_t ws_send_message(ts_client_t *c, const uint8_t *p, size_t len);
static ts_status_t ws_feed(ts_client_t *c, const uint8_t *data, size_t len);
static bool ws_closed(const ts_client_t *c);
static void ws_free(ts_client_t *c);

ts_status_t ts_client_connect(ts_client_t **out, const char *host, int port, int64_t timeout_ms)
{
    if (out == NULL || host == NULL || *host == '\0' || port <= 0 || port > 65535) return TS_ERR_INVALID;
    *out = NULL;
    ts_status_t st;
    int fd = ts_net_connect(host, port, ts_net_deadline(timeout_ms), &st);
    if (fd < 0) return st == TS_ERR_TIMEOUT ? TS_ERR_TIMEOUT : TS_ERR_UNAVAILABLE;
    /* a send blocked that long means the gateway stopped reading */
    struct timeval tv = {.tv_sec = CLIENT_SEND_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    ts_client_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return TS_ERR_NOMEM;
    }
    c->fd = fd;
    ts_frame_reader_init(&c->reader, TS_CLIENT_MAX_FRAME);
    *out = c;
    return TS_OK;
}

void ts_client_destroy(ts_client_t *c)
{
    if (c == NULL) return;
    if (c->fd >= 0) close(c->fd);
    ts_frame_reader_free(&c->reader);
    ws_free(c);
    free(c);
}

static ts_status_t send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return TS_ERR_TIMEOUT;
            if (errno == EPIPE || errno == ECONNRESET) return TS_ERR_CLOSED;
            return TS_ERR_IO;
        }
        p += w;
        n -= (size_t)w;
    }
    return TS_OK;
}

ts_status_t ts_client_send_raw(ts_client_t *c, const void *data, size_t len)
{
    if (c == NULL || (data == NULL && len > 0)) return TS_ERR_INVALID;
    return send_all(c->fd, data, len);
}

ts_status_t ts_client_send_message(ts_client_t *c, const void *data, size_t len)
{
    if (c == NULL || (data == NULL && len > 0) || len > UINT32_MAX) return TS_ERR_INVALID;
    if (c->ws != NULL) return ws_send_message(c, data, len);
    uint8_t head[TS_FRAME_HEADER];
    ts_frame_put_header(head, (uint32_t)len);
    ts_status_t st = send_all(c->fd, head, sizeof head);
    return st == TS_OK ? send_all(c->fd, data, len) : st;
}

ts_status_t ts_client_send(ts_client_t *c, Tessera__V1__ClientFrame *frame)
{
    if (c == NULL || frame == NULL) return TS_ERR_INVALID;
    if (frame->seq == 0) frame->seq = c->last_seq + 1;
    size_t len = protobuf_c_message_get_packed_size(&frame->base);
    if (len > UINT32_MAX) return TS_ERR_OVERSIZED;
    uint8_t *buf = malloc(TS_FRAME_HEADER + len);
    if (buf == NULL) return TS_ERR_NOMEM;
    ts_frame_put_header(buf, (uint32_t)len);
    protobuf_c_message_pack(&frame->base, buf + TS_FRAME_HEADER);
    ts_status_t st = c->ws != NULL ? ws_send_message(c, buf + TS_FRAME_HEADER, len)
                                   : send_all(c->fd, buf, TS_FRAME_HEADER + len);
    free(buf);
    if (st == TS_OK) c->last_seq = frame->seq;
    return st;
}

static void remember_cell(ts_client_t *c, const Tessera__V1__ServerFrame *f)
{
    /* a login or resume that took an existing entity over: its inputs go on
     * above the ones already applied (the gateway drops a seq at or below) */
    if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME && f->welcome != NULL &&
        f->welcome->resumed && f->welcome->last_input_seq > c->last_seq)
        c->last_seq = f->welcome->last_input_seq;
    if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_WORLD_COUNTERS && f->world_counters != NULL) {
        memset(c->counters, 0, sizeof c->counters);
        for (size_t i = 0; i < f->world_counters->n_values && i < TS_CLIENT_COUNTERS; i++)
            c->counters[i] = f->world_counters->values[i];
        c->has_counters = true;
    }
    ts_cell_t cell;
    if (f->cell != NULL && ts_proto_cell_get(f->cell, &cell) == TS_OK) {
        c->cell = cell;
        c->has_cell = true;
        c->epoch = f->epoch;
    }
}

ts_status_t ts_client_recv(ts_client_t *c, int64_t timeout_ms, Tessera__V1__ServerFrame **out)
{
    if (c == NULL || out == NULL) return TS_ERR_INVALID;
    *out = NULL;
    uint64_t deadline_us = ts_net_deadline(timeout_ms);
    for (;;) {
        const uint8_t *payload;
        size_t len;
        ts_status_t st = ts_frame_reader_next(&c->reader, &payload, &len);
        if (st == TS_OK) {
            Tessera__V1__ServerFrame *f = tessera__v1__server_frame__unpack(NULL, len, payload);
            if (f == NULL) return TS_ERR_MALFORMED;
            remember_cell(c, f);
            *out = f;
            return TS_OK;
        }
        if (st != TS_ERR_AGAIN) return TS_ERR_MALFORMED;
        if (ws_closed(c)) return TS_ERR_CLOSED;

        st = ts_net_wait(c->fd, POLLIN, deadline_us);
        if (st != TS_OK) return st;
        uint8_t chunk[CLIENT_READ_CHUNK];
        ssize_t n = recv(c->fd, chunk, sizeof chunk, 0);
        if (n == 0) return TS_ERR_CLOSED;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
            return errno == ECONNRESET ? TS_ERR_CLOSED : TS_ERR_IO;
        }
        st =
            c->ws != NULL ? ws_feed(c, chunk, (size_t)n) : ts_frame_reader_feed(&c->reader, chunk, (size_t)n);
        if (st != TS_OK) return st;
    }
}

/* Sends a frame carrying one payload, stamped with the known cell/epoch. */
static ts_status_t send_payload(ts_client_t *c, Tessera__V1__ClientFrame *f)
{
    Tessera__V1__CellId cell;
    if (c->has_cell) {
        ts_proto_cell_init(&cell, &c->cell);
        f->cell = &cell;
        f->epoch = c->epoch;
    }
    return ts_client_send(c, f);
}

ts_status_t ts_client_hello(ts_client_t *c, const char *name)
{
    if (c == NULL) return TS_ERR_INVALID;
    Tessera__V1__Hello hello = TESSERA__V1__HELLO__INIT;
    hello.protocol_version = TS_PROTOCOL_VERSION;
    hello.client_name = (char *)(name ? name : "");
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
    f.hello = &hello;
    return send_payload(c, &f);
}

ts_status_t ts_client_join(ts_client_t *c, double x, double y, const char *name)
{
    return ts_client_join_payload(c, x, y, name, NULL, 0);
}

ts_status_t ts_client_join_payload(ts_client_t *c, double x, double y, const char *name, const void *payload,
                                   size_t len)
{
    if (c == NULL || (payload == NULL && len > 0)) return TS_ERR_INVALID;
    Tessera__V1__Join join = TESSERA__V1__JOIN__INIT;
    join.x = x;
    join.y = y;
    join.name = (char *)(name ? name : "");
    join.payload.data = (uint8_t *)payload;
    join.payload.len = len;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN;
    f.join = &join;
    return send_payload(c, &f);
}

ts_status_t ts_client_move(ts_client_t *c, double dx, double dy)
{
    if (c == NULL) return TS_ERR_INVALID;
    Tessera__V1__Move move = TESSERA__V1__MOVE__INIT;
    move.dx = dx;
    move.dy = dy;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE;
    f.move = &move;
    return send_payload(c, &f);
}

ts_status_t ts_client_command(ts_client_t *c, uint32_t type, const void *payload, size_t len)
{
    if (c == NULL || (payload == NULL && len > 0)) return TS_ERR_INVALID;
    Tessera__V1__Command cmd = TESSERA__V1__COMMAND__INIT;
    cmd.type = type;
    cmd.payload.data = (uint8_t *)payload;
    cmd.payload.len = len;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_COMMAND;
    f.command = &cmd;
    return send_payload(c, &f);
}

ts_status_t ts_client_ping(ts_client_t *c, uint64_t client_time_us)
{
    if (c == NULL) return TS_ERR_INVALID;
    Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
    ping.client_time_us = client_time_us;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
    f.ping = &ping;
    return send_payload(c, &f);
}

ts_status_t ts_client_leave(ts_client_t *c)
{
    if (c == NULL) return TS_ERR_INVALID;
    Tessera__V1__Leave leave = TESSERA__V1__LEAVE__INIT;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_LEAVE;
    f.leave = &leave;
    return send_payload(c, &f);
}

uint64_t ts_client_last_seq(const ts_client_t *c)
{
    return c ? c->last_seq : 0;
}

/* ---- WebSocket transport ----------------------------------------------------
 * The upgrade request is written and its answer read here; frames are built
 * and parsed by wslay's frame layer. Each binary message received is handed
 * to the frame reader with a length prefix, so ts_client_recv works the
 * same on both transports. */

struct client_ws {
    wslay_frame_context_ptr frames;
    const uint8_t *in; /* bytes of the current read not yet given to wslay */
    size_t in_len;
    bool in_frame;
    uint64_t frame_got;
    uint8_t opcode;
    uint8_t *msg;
    size_t msg_len, msg_cap;
    bool closed; /* a close frame arrived */
    uint64_t rng;
    uint8_t *obuf; /* one frame being built */
    size_t olen, ocap;
};

static ssize_t ws_recv_cb(uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    struct client_ws *ws = ud;
    if (ws->in_len == 0) return -1;
    size_t n = len < ws->in_len ? len : ws->in_len;
    memcpy(buf, ws->in, n);
    ws->in += n;
    ws->in_len -= n;
    return (ssize_t)n;
}

/* wslay "sends" a frame into obuf; it goes to the socket whole. */
static ssize_t ws_send_cb(const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    struct client_ws *ws = ud;
    if (ws->olen + len > ws->ocap) return -1;
    memcpy(ws->obuf + ws->olen, data, len);
    ws->olen += len;
    return (ssize_t)len;
}

static int ws_genmask_cb(uint8_t *buf, size_t len, void *ud)
{
    struct client_ws *ws = ud;
    for (size_t i = 0; i < len; i++) {
        ws->rng ^= ws->rng << 13;
        ws->rng ^= ws->rng >> 7;
        ws->rng ^= ws->rng << 17;
        buf[i] = (uint8_t)ws->rng;
    }
    return 0;
}

static bool ws_closed(const ts_client_t *c)
{
    return c->ws != NULL && c->ws->closed;
}

static void ws_free(ts_client_t *c)
{
    if (c->ws == NULL) return;
    wslay_frame_context_free(c->ws->frames);
    free(c->ws->msg);
    free(c->ws);
    c->ws = NULL;
}

static ts_status_t ws_send_message(ts_client_t *c, const uint8_t *p, size_t len)
{
    struct client_ws *ws = c->ws;
    ws->ocap = len + 14;
    ws->obuf = malloc(ws->ocap);
    ws->olen = 0;
    if (ws->obuf == NULL) return TS_ERR_NOMEM;
    struct wslay_frame_iocb io = {0};
    io.fin = 1;
    io.opcode = WSLAY_BINARY_FRAME;
    io.mask = 1;
    io.payload_length = len;
    io.data = p;
    io.data_length = len;
    ssize_t n = wslay_frame_send(ws->frames, &io);
    ts_status_t st = n < 0 || (size_t)n != len ? TS_ERR_INVALID : send_all(c->fd, ws->obuf, ws->olen);
    free(ws->obuf);
    ws->obuf = NULL;
    ws->ocap = 0;
    return st;
}

static ts_status_t ws_feed(ts_client_t *c, const uint8_t *data, size_t len)
{
    struct client_ws *ws = c->ws;
    ws->in = data;
    ws->in_len = len;
    for (;;) {
        struct wslay_frame_iocb io;
        ssize_t r = wslay_frame_recv(ws->frames, &io);
        if (r == WSLAY_ERR_WANT_READ) break;
        if (r < 0) return TS_ERR_MALFORMED;
        if (!ws->in_frame) {
            ws->in_frame = true;
            ws->frame_got = 0;
            ws->opcode = io.opcode;
            if (io.opcode == WSLAY_BINARY_FRAME) ws->msg_len = 0;
        }
        bool data_frame = ws->opcode == WSLAY_BINARY_FRAME || ws->opcode == WSLAY_CONTINUATION_FRAME;
        if (data_frame && io.data_length > 0) {
            if (ws->msg_len + io.data_length > TS_CLIENT_MAX_FRAME) return TS_ERR_OVERSIZED;
            if (ws->msg_len + io.data_length > ws->msg_cap) {
                size_t ncap = ws->msg_cap ? ws->msg_cap * 2 : 4096;
                while (ncap < ws->msg_len + io.data_length)
                    ncap *= 2;
                uint8_t *nb = realloc(ws->msg, ncap);
                if (nb == NULL) return TS_ERR_NOMEM;
                ws->msg = nb;
                ws->msg_cap = ncap;
            }
            memcpy(ws->msg + ws->msg_len, io.data, io.data_length);
            ws->msg_len += io.data_length;
        }
        ws->frame_got += io.data_length;
        if (ws->frame_got < io.payload_length) continue;
        ws->in_frame = false;
        if (ws->opcode == WSLAY_CONNECTION_CLOSE) ws->closed = true;
        if (!data_frame || !io.fin) continue;
        uint8_t head[TS_FRAME_HEADER];
        ts_frame_put_header(head, (uint32_t)ws->msg_len);
        ts_status_t st = ts_frame_reader_feed(&c->reader, head, sizeof head);
        if (st == TS_OK) st = ts_frame_reader_feed(&c->reader, ws->msg, ws->msg_len);
        if (st != TS_OK) return st;
    }
    return TS_OK;
}

/* The Sec-WebSocket-Accept a server must answer to key (RFC 6455 4.2.2). */
static void ws_expected_accept(const char *key, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char cat[64];
    snprintf(cat, sizeof cat, "%s%s", key, guid);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)cat, strlen(cat), digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH); /* 28 characters */
}

/* Whether the response head carries header `name` (any case) with exactly
 * value (surrounding blanks aside). */
static bool head_has(const char *head, const char *name, const char *value)
{
    size_t nlen = strlen(name), vlen = strlen(value);
    for (const char *l = strstr(head, "\r\n"); l != NULL; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (strncasecmp(h, name, nlen) != 0 || h[nlen] != ':') continue;
        h += nlen + 1;
        while (*h == ' ' || *h == '\t')
            h++;
        const char *e = h;
        while (*e != '\r' && *e != '\0')
            e++;
        while (e > h && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        return (size_t)(e - h) == vlen && memcmp(h, value, vlen) == 0;
    }
    return false;
}

ts_status_t ts_client_connect_ws(ts_client_t **out, const char *host, int port, const char *origin,
                                 int64_t timeout_ms)
{
    uint64_t deadline_us = ts_net_deadline(timeout_ms);
    ts_status_t st = ts_client_connect(out, host, port, timeout_ms);
    if (st != TS_OK) return st;
    ts_client_t *c = *out;
    struct client_ws *ws = calloc(1, sizeof *ws);
    if (ws == NULL) goto fail_nomem;
    c->ws = ws;
    ws->rng = ts_mono_us() ^ ((uint64_t)(uintptr_t)c << 16) ^ 0x9e3779b97f4a7c15ull;
    struct wslay_frame_callbacks cb = {ws_send_cb, ws_recv_cb, ws_genmask_cb};
    if (wslay_frame_context_init(&ws->frames, &cb, ws) != 0) goto fail_nomem;

    uint8_t nonce[16];
    ws_genmask_cb(nonce, sizeof nonce, ws);
    char key[25];
    EVP_EncodeBlock((unsigned char *)key, nonce, sizeof nonce); /* 24 characters */
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     host, port, key, origin ? "Origin: " : "", origin ? origin : "", origin ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req) {
        st = TS_ERR_INVALID;
        goto fail;
    }
    st = send_all(c->fd, (const uint8_t *)req, (size_t)n);
    if (st != TS_OK) goto fail;

    /* the answer's head, then maybe the first frames */
    char head[8192];
    size_t have = 0;
    char *end = NULL;
    while (end == NULL) {
        if (have == sizeof head - 1) {
            st = TS_ERR_MALFORMED;
            goto fail;
        }
        st = ts_net_wait(c->fd, POLLIN, deadline_us);
        if (st != TS_OK) goto fail;
        ssize_t r = recv(c->fd, head + have, sizeof head - 1 - have, 0);
        if (r == 0) {
            st = TS_ERR_CLOSED;
            goto fail;
        }
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            st = TS_ERR_IO;
            goto fail;
        }
        have += (size_t)r;
        head[have] = '\0';
        end = strstr(head, "\r\n\r\n");
    }
    if (strncmp(head, "HTTP/1.1 101 ", 13) != 0) {
        st = TS_ERR_UNAVAILABLE;
        goto fail;
    }
    char accept[29];
    ws_expected_accept(key, accept);
    if (!head_has(head, "Sec-WebSocket-Accept", accept)) { /* not a WebSocket server for this key */
        st = TS_ERR_MALFORMED;
        goto fail;
    }
    size_t head_len = (size_t)(end - head) + 4;
    if (have > head_len) {
        st = ws_feed(c, (const uint8_t *)head + head_len, have - head_len);
        if (st != TS_OK) goto fail;
    }
    return TS_OK;
fail_nomem:
    st = TS_ERR_NOMEM;
fail:
    ts_client_destroy(c);
    *out = NULL;
    return st;
}

bool ts_client_counters(const ts_client_t *c, int64_t out[TS_CLIENT_COUNTERS])
{
    if (c == NULL) return false;
    if (out != NULL) memcpy(out, c->counters, sizeof c->counters);
    return c->has_counters;
}
