/* A load-generator client's WebSocket (see ws_client.h): the upgrade
 * handshake as text, frames through wslay's frame layer.
 *
 * Invariants: every frame this side builds is masked and final; a frame
 * from the gateway that RFC 6455 forbids a server to send ends the feed
 * with TS_ERR_MALFORMED; a binary message is buffered only when it arrives
 * in more than one piece (a frame split over reads or over wslay's 4 KB
 * input buffer, or fragments), and never beyond max_msg. */
#define _GNU_SOURCE /* memmem, strncasecmp */
#include "ws_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <wslay/wslay.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* a message buffer grown past this is given back once the message is out */
#define KEEP_MSG_CAP (64 * 1024)

struct ts_simws {
    wslay_frame_context_ptr frames;
    uint64_t rng;
    size_t max_msg;
    bool upgraded;
    char *head; /* the upgrade answer so far (TS_SIMWS_MAX_HEAD + 1), while upgrading */
    size_t head_len;
    char accept[32]; /* the Sec-WebSocket-Accept the answer must carry */
    /* bytes of the current feed not yet given to wslay */
    const uint8_t *in;
    size_t in_len;
    /* the frame being built */
    uint8_t *out;
    size_t out_len, out_cap;
    /* the frame being received */
    bool in_frame;
    uint8_t frame_op;
    uint64_t frame_got;
    /* a binary message whose final frame has not come yet */
    bool in_msg;
    uint8_t *msg;
    size_t msg_len, msg_cap;
    uint8_t ctl[TS_SIMWS_MAX_CONTROL];
    size_t ctl_len;
};

static ssize_t recv_cb(uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    ts_simws_t *w = ud;
    if (w->in_len == 0) return -1; /* wslay: WSLAY_ERR_WANT_READ */
    size_t n = len < w->in_len ? len : w->in_len;
    memcpy(buf, w->in, n);
    w->in += n;
    w->in_len -= n;
    return (ssize_t)n;
}

static ssize_t send_cb(const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    ts_simws_t *w = ud;
    if (len > w->out_cap - w->out_len) return -1;
    memcpy(w->out + w->out_len, data, len);
    w->out_len += len;
    return (ssize_t)len;
}

static uint64_t next_rand(ts_simws_t *w)
{
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return w->rng;
}

static int genmask_cb(uint8_t *buf, size_t len, void *ud)
{
    ts_simws_t *w = ud;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t r = next_rand(w);
        for (size_t j = i; j < len && j < i + 8; j++, r >>= 8)
            buf[j] = (uint8_t)r;
    }
    return 0;
}

ts_simws_t *ts_simws_new(uint64_t seed, size_t max_msg)
{
    ts_simws_t *w = calloc(1, sizeof *w);
    if (w == NULL) return NULL;
    w->rng = seed ^ 0x9e3779b97f4a7c15ull;
    if (w->rng == 0) w->rng = 1; /* xorshift never leaves 0 */
    w->max_msg = max_msg;
    struct wslay_frame_callbacks cb = {send_cb, recv_cb, genmask_cb};
    if (wslay_frame_context_init(&w->frames, &cb, w) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

void ts_simws_free(ts_simws_t *w)
{
    if (w == NULL) return;
    wslay_frame_context_free(w->frames);
    free(w->head);
    free(w->msg);
    free(w);
}

bool ts_simws_upgraded(const ts_simws_t *w)
{
    return w->upgraded;
}

/* ---- the upgrade ---------------------------------------------------------- */

size_t ts_simws_request(ts_simws_t *w, const char *host, int port, const char *path, char *out, size_t cap)
{
    uint8_t nonce[16];
    genmask_cb(nonce, sizeof nonce, w);
    char key[32];
    EVP_EncodeBlock((unsigned char *)key, nonce, sizeof nonce); /* 24 characters */
    char cat[sizeof key + sizeof WS_GUID];
    snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)cat, strlen(cat), digest);
    EVP_EncodeBlock((unsigned char *)w->accept, digest, SHA_DIGEST_LENGTH); /* 28 characters */

    bool v6 = strchr(host, ':') != NULL;
    int n = snprintf(out, cap,
                     "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, v6 ? "[" : "", host, v6 ? "]" : "", port, key);
    if (n < 0 || (size_t)n >= cap) return 0;
    free(w->head);
    w->head = malloc(TS_SIMWS_MAX_HEAD + 1);
    w->head_len = 0;
    w->upgraded = false;
    return w->head == NULL ? 0 : (size_t)n;
}

/* The value of header `name` in the head's header lines (after the status
 * line), trimmed; false if absent. */
static bool header_value(const char *head, const char *name, const char **val, size_t *len)
{
    size_t nlen = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line != NULL && line[2] != '\r' && line[2] != '\0') {
        line += 2;
        const char *eol = strstr(line, "\r\n");
        if (eol == NULL) return false;
        if ((size_t)(eol - line) > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1, *e = eol;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *val = v;
            *len = (size_t)(e - v);
            return true;
        }
        line = eol;
    }
    return false;
}

ts_status_t ts_simws_upgrade(ts_simws_t *w, const uint8_t *data, size_t n, size_t *used, char *why,
                             size_t cap)
{
    *used = 0;
    if (why != NULL && cap > 0) why[0] = '\0';
    if (w->head == NULL) return TS_ERR_INVALID; /* no request made */
    size_t take = n < TS_SIMWS_MAX_HEAD - w->head_len ? n : TS_SIMWS_MAX_HEAD - w->head_len;
    size_t before = w->head_len;
    memcpy(w->head + w->head_len, data, take);
    w->head_len += take;
    w->head[w->head_len] = '\0';
    const char *end = memmem(w->head, w->head_len, "\r\n\r\n", 4);
    if (end == NULL) {
        *used = take;
        if (w->head_len < TS_SIMWS_MAX_HEAD) return TS_ERR_AGAIN;
        if (why != NULL) snprintf(why, cap, "an upgrade answer longer than %d bytes", TS_SIMWS_MAX_HEAD);
        return TS_ERR_MALFORMED;
    }
    size_t head_len = (size_t)(end - w->head) + 4;
    *used = head_len - before;
    w->head[head_len - 2] = '\0'; /* the last header line keeps its CRLF */
    const char *eol = strstr(w->head, "\r\n");
    int status_len = (int)(eol - w->head);
    ts_status_t st = TS_OK;
    const char *acc = NULL;
    size_t acc_len = 0;
    if (strncmp(w->head, "HTTP/1.1 101", 12) != 0 || (status_len > 12 && w->head[12] != ' ')) {
        if (why != NULL)
            snprintf(why, cap, "the gateway answered '%.*s'", status_len > 80 ? 80 : status_len, w->head);
        st = TS_ERR_UNAVAILABLE;
    } else if (!header_value(w->head, "Sec-WebSocket-Accept", &acc, &acc_len) ||
               acc_len != strlen(w->accept) || memcmp(acc, w->accept, acc_len) != 0) {
        if (why != NULL) snprintf(why, cap, "101 without the Sec-WebSocket-Accept for its key");
        st = TS_ERR_UNAVAILABLE;
    }
    free(w->head);
    w->head = NULL;
    w->head_len = 0;
    w->upgraded = st == TS_OK;
    return st;
}

/* ---- frames --------------------------------------------------------------- */

static bool data_op(uint8_t op)
{
    return op == WSLAY_BINARY_FRAME || op == WSLAY_CONTINUATION_FRAME;
}

/* A new frame's header: is it one a server may send here? */
static ts_status_t frame_start(ts_simws_t *w, const struct wslay_frame_iocb *io)
{
    if (io->mask || io->rsv != 0) return TS_ERR_MALFORMED;
    switch (io->opcode) {
    case WSLAY_CONTINUATION_FRAME:
        if (!w->in_msg) return TS_ERR_MALFORMED;
        break;
    case WSLAY_BINARY_FRAME:
        if (w->in_msg) return TS_ERR_MALFORMED;
        w->in_msg = true;
        w->msg_len = 0;
        break;
    case WSLAY_CONNECTION_CLOSE:
    case WSLAY_PING:
    case WSLAY_PONG:
        if (!io->fin || io->payload_length > TS_SIMWS_MAX_CONTROL) return TS_ERR_MALFORMED;
        w->ctl_len = 0;
        break;
    default: /* text, reserved opcodes */
        return TS_ERR_MALFORMED;
    }
    if (data_op(io->opcode) && io->payload_length > w->max_msg - w->msg_len) return TS_ERR_OVERSIZED;
    w->in_frame = true;
    w->frame_op = io->opcode;
    w->frame_got = 0;
    return TS_OK;
}

static ts_status_t msg_append(ts_simws_t *w, const uint8_t *p, size_t len)
{
    if (len > w->max_msg - w->msg_len) return TS_ERR_OVERSIZED;
    if (w->msg_len + len > w->msg_cap) {
        size_t cap = w->msg_cap ? w->msg_cap : 4096;
        while (cap < w->msg_len + len)
            cap *= 2;
        if (cap > w->max_msg) cap = w->max_msg;
        uint8_t *nb = realloc(w->msg, cap);
        if (nb == NULL) return TS_ERR_NOMEM;
        w->msg = nb;
        w->msg_cap = cap;
    }
    memcpy(w->msg + w->msg_len, p, len);
    w->msg_len += len;
    return TS_OK;
}

static void msg_done(ts_simws_t *w)
{
    w->in_msg = false;
    w->msg_len = 0;
    if (w->msg_cap > KEEP_MSG_CAP) {
        free(w->msg);
        w->msg = NULL;
        w->msg_cap = 0;
    }
}

ts_status_t ts_simws_feed(ts_simws_t *w, const uint8_t *data, size_t n, ts_simws_on_msg_fn on_msg, void *ud)
{
    if (!w->upgraded) return TS_ERR_INVALID;
    w->in = data;
    w->in_len = n;
    for (;;) {
        struct wslay_frame_iocb io;
        ssize_t r = wslay_frame_recv(w->frames, &io);
        if (r == WSLAY_ERR_WANT_READ) return TS_OK;
        if (r < 0) return TS_ERR_MALFORMED;
        if (!w->in_frame) {
            ts_status_t st = frame_start(w, &io);
            if (st != TS_OK) return st;
            /* a whole single-frame message in one piece: no copy */
            if (io.opcode == WSLAY_BINARY_FRAME && io.fin && io.data_length == io.payload_length) {
                w->in_frame = false;
                msg_done(w);
                if (!on_msg(ud, TS_SIMWS_BINARY, io.data, io.data_length)) return TS_OK;
                continue;
            }
        }
        w->frame_got += io.data_length;
        if (data_op(w->frame_op)) {
            ts_status_t st = msg_append(w, io.data, io.data_length);
            if (st != TS_OK) return st;
        } else if (io.data_length > 0) {
            if (io.data_length > sizeof w->ctl - w->ctl_len) return TS_ERR_MALFORMED;
            memcpy(w->ctl + w->ctl_len, io.data, io.data_length);
            w->ctl_len += io.data_length;
        }
        if (w->frame_got < io.payload_length) continue;
        w->in_frame = false;
        bool go_on = true;
        if (data_op(w->frame_op)) {
            if (!io.fin) continue;
            go_on = on_msg(ud, TS_SIMWS_BINARY, w->msg, w->msg_len);
            msg_done(w);
        } else if (w->frame_op != WSLAY_PONG) {
            go_on = on_msg(ud, w->frame_op, w->ctl, w->ctl_len);
        }
        if (!go_on) return TS_OK;
    }
}

size_t ts_simws_encode(ts_simws_t *w, uint8_t opcode, const uint8_t *p, size_t len, uint8_t *out, size_t cap)
{
    size_t head = 2 + (len < 126 ? 0 : len < 65536 ? 2 : 8) + 4;
    if (len > cap || cap - len < head) return 0;
    w->out = out;
    w->out_len = 0;
    w->out_cap = cap;
    struct wslay_frame_iocb io = {0};
    io.fin = 1;
    io.opcode = opcode;
    io.mask = 1;
    io.payload_length = len;
    io.data = p;
    io.data_length = len;
    for (;;) {
        ssize_t r = wslay_frame_send(w->frames, &io);
        if (r < 0 || (r == 0 && io.data_length > 0)) return 0;
        if ((size_t)r >= io.data_length) break;
        io.data += r;
        io.data_length -= (size_t)r;
    }
    w->out = NULL;
    return w->out_len;
}
