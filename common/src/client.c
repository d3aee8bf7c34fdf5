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
#include <sys/socket.h>
#include <unistd.h>

#include "tessera/util.h"

#define TS_CLIENT_MAX_FRAME (4u * 1024u * 1024u)
#define CLIENT_SEND_TIMEOUT_S 10
#define CLIENT_READ_CHUNK 65536

struct ts_client {
    int fd;
    ts_frame_reader_t reader;
    uint64_t last_seq;
    uint64_t epoch;
    bool has_cell;
    ts_cell_t cell;
};

/* Milliseconds left until deadline_us (a ts_mono_us value); -1: no deadline. */
static int remaining_ms(uint64_t deadline_us)
{
    if (deadline_us == UINT64_MAX) return -1;
    uint64_t now = ts_mono_us();
    if (now >= deadline_us) return 0;
    uint64_t ms = (deadline_us - now + 999) / 1000;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

static uint64_t deadline_after(int64_t timeout_ms)
{
    if (timeout_ms < 0) return UINT64_MAX;
    return ts_mono_us() + (uint64_t)timeout_ms * 1000u;
}

/* Waits for one event on fd. TS_OK when ready, TS_ERR_TIMEOUT, TS_ERR_IO. */
static ts_status_t wait_fd(int fd, short events, uint64_t deadline_us)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, remaining_ms(deadline_us));
        if (rc > 0) return TS_OK;
        if (rc == 0) return TS_ERR_TIMEOUT;
        if (errno != EINTR) return TS_ERR_IO;
    }
}

static int connect_one(const struct addrinfo *ai, uint64_t deadline_us, ts_status_t *st)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        *st = TS_ERR_IO;
        return -1;
    }
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) goto fail_io;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) goto fail_io;
        *st = wait_fd(fd, POLLOUT, deadline_us);
        if (*st != TS_OK) {
            close(fd);
            return -1;
        }
        int err = 0;
        socklen_t elen = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) goto fail_io;
    }
    if (fcntl(fd, F_SETFL, flags) < 0) goto fail_io;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = CLIENT_SEND_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    *st = TS_OK;
    return fd;
fail_io:
    close(fd);
    *st = TS_ERR_IO;
    return -1;
}

ts_status_t ts_client_connect(ts_client_t **out, const char *host, int port, int64_t timeout_ms)
{
    if (out == NULL || host == NULL || *host == '\0' || port <= 0 || port > 65535) return TS_ERR_INVALID;
    *out = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || res == NULL) return TS_ERR_UNAVAILABLE;
    uint64_t deadline_us = deadline_after(timeout_ms);
    ts_status_t st = TS_ERR_UNAVAILABLE;
    int fd = -1;
    for (const struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = connect_one(ai, deadline_us, &st);
        if (st == TS_ERR_TIMEOUT) break;
    }
    freeaddrinfo(res);
    if (fd < 0) return st == TS_ERR_TIMEOUT ? TS_ERR_TIMEOUT : TS_ERR_UNAVAILABLE;

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
    ts_status_t st = send_all(c->fd, buf, TS_FRAME_HEADER + len);
    free(buf);
    if (st == TS_OK) c->last_seq = frame->seq;
    return st;
}

static void remember_cell(ts_client_t *c, const Tessera__V1__ServerFrame *f)
{
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
    uint64_t deadline_us = deadline_after(timeout_ms);
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

        st = wait_fd(c->fd, POLLIN, deadline_us);
        if (st != TS_OK) return st;
        uint8_t chunk[CLIENT_READ_CHUNK];
        ssize_t n = recv(c->fd, chunk, sizeof chunk, 0);
        if (n == 0) return TS_ERR_CLOSED;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
            return errno == ECONNRESET ? TS_ERR_CLOSED : TS_ERR_IO;
        }
        st = ts_frame_reader_feed(&c->reader, chunk, (size_t)n);
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
    if (c == NULL) return TS_ERR_INVALID;
    Tessera__V1__Join join = TESSERA__V1__JOIN__INIT;
    join.x = x;
    join.y = y;
    join.name = (char *)(name ? name : "");
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
