/* Gateway client against a small in-process TCP server on 127.0.0.1: frames
 * go out with increasing sequence numbers and the right payload, replies
 * come back decoded, and timeouts, peer closes and garbage from the peer are
 * reported as statuses rather than hangs or crashes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tessera/client.h"
#include "tessera/util.h"

typedef enum {
    SRV_ECHO,          /* answer every frame: Ping -> Pong, others -> Welcome naming a cell */
    SRV_SILENT,        /* accept, read nothing, wait for the client to go */
    SRV_ONE_CLOSE,     /* send one Pong, then close */
    SRV_GARBAGE,       /* send a frame whose payload is not a ServerFrame */
    SRV_HUGE,          /* send a header announcing more than the client accepts */
    SRV_RAW,           /* record raw bytes */
    SRV_SLOW_READ,     /* read one big frame in small, slow pieces */
    SRV_WS_BAD_ACCEPT, /* answer a WebSocket upgrade with 101 and a wrong Sec-WebSocket-Accept */
    SRV_WS_NOT_101,    /* answer a WebSocket upgrade with 1010 (not 101) */
} srv_mode_t;

#define MAX_FRAMES 16

typedef struct {
    srv_mode_t mode;
    int listen_fd;
    int port;
    pthread_t thread;
    /* what the server saw */
    Tessera__V1__ClientFrame *frames[MAX_FRAMES];
    int nframes;
    uint8_t raw[256];
    size_t raw_len;
    size_t big_len;
    bool joined;
} server_t;

static const ts_cell_t served_cell = {.world = 0, .cx = -1, .cy = 1, .depth = 0, .sub = 0};

static int read_full(int fd, void *buf, size_t n, int timeout_ms)
{
    uint8_t *p = buf;
    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, timeout_ms) <= 0) return -1;
        ssize_t r = read(fd, p, n);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void write_frame(int fd, const ProtobufCMessage *msg)
{
    uint8_t *payload;
    size_t len;
    if (ts_proto_pack(msg, &payload, &len) != TS_OK) return;
    uint8_t hdr[TS_FRAME_HEADER];
    ts_frame_put_header(hdr, (uint32_t)len);
    (void)!send(fd, hdr, sizeof hdr, MSG_NOSIGNAL);
    (void)!send(fd, payload, len, MSG_NOSIGNAL);
    free(payload);
}

static void serve_echo(server_t *s, int fd)
{
    while (s->nframes < MAX_FRAMES) {
        uint8_t hdr[TS_FRAME_HEADER];
        if (read_full(fd, hdr, sizeof hdr, 5000) != 0) return;
        uint32_t len = ts_frame_get_header(hdr);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf == NULL || read_full(fd, buf, len, 5000) != 0) {
            free(buf);
            return;
        }
        Tessera__V1__ClientFrame *f = tessera__v1__client_frame__unpack(NULL, len, buf);
        free(buf);
        if (f == NULL) return;
        s->frames[s->nframes++] = f;

        Tessera__V1__ServerFrame out = TESSERA__V1__SERVER_FRAME__INIT;
        Tessera__V1__Pong pong = TESSERA__V1__PONG__INIT;
        Tessera__V1__Welcome welcome = TESSERA__V1__WELCOME__INIT;
        Tessera__V1__CellId cell;
        out.seq = f->seq;
        if (f->payload_case == TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING) {
            pong.client_time_us = f->ping->client_time_us;
            pong.server_time_us = 123;
            out.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG;
            out.pong = &pong;
        } else {
            ts_proto_cell_init(&cell, &served_cell);
            out.cell = &cell;
            out.epoch = 9;
            welcome.protocol_version = TS_PROTOCOL_VERSION;
            welcome.entity = 1000 + f->seq;
            welcome.gateway = (char *)"test";
            out.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME;
            out.welcome = &welcome;
        }
        write_frame(fd, &out.base);
    }
}

static void *server_main(void *arg)
{
    server_t *s = arg;
    struct pollfd pfd = {.fd = s->listen_fd, .events = POLLIN};
    if (poll(&pfd, 1, 5000) <= 0) return NULL;
    int fd = accept(s->listen_fd, NULL, NULL);
    if (fd < 0) return NULL;
    switch (s->mode) {
    case SRV_ECHO:
        serve_echo(s, fd);
        break;
    case SRV_SILENT: {
        uint8_t b[64];
        struct pollfd c = {.fd = fd, .events = POLLIN};
        while (poll(&c, 1, 5000) > 0 && read(fd, b, sizeof b) > 0) {
        }
        break;
    }
    case SRV_ONE_CLOSE: {
        Tessera__V1__Pong pong = TESSERA__V1__PONG__INIT;
        Tessera__V1__ServerFrame out = TESSERA__V1__SERVER_FRAME__INIT;
        pong.client_time_us = 77;
        out.seq = 1;
        out.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG;
        out.pong = &pong;
        write_frame(fd, &out.base);
        break;
    }
    case SRV_GARBAGE: {
        static const uint8_t bad[] = {0, 0, 0, 3, 0x1a, 0x7f, 0x01};
        (void)!send(fd, bad, sizeof bad, MSG_NOSIGNAL);
        ts_sleep_ms(200);
        break;
    }
    case SRV_HUGE: {
        uint8_t hdr[TS_FRAME_HEADER];
        ts_frame_put_header(hdr, 0x7fffffffu);
        (void)!send(fd, hdr, sizeof hdr, MSG_NOSIGNAL);
        ts_sleep_ms(200);
        break;
    }
    case SRV_RAW:
        s->raw_len = 0;
        while (s->raw_len < sizeof s->raw) {
            struct pollfd c = {.fd = fd, .events = POLLIN};
            if (poll(&c, 1, 5000) <= 0) break;
            ssize_t r = read(fd, s->raw + s->raw_len, sizeof s->raw - s->raw_len);
            if (r <= 0) break;
            s->raw_len += (size_t)r;
        }
        break;
    case SRV_WS_BAD_ACCEPT:
    case SRV_WS_NOT_101: {
        char req[2048];
        size_t have = 0;
        req[0] = '\0';
        while (have < sizeof req - 1 && !strstr(req, "\r\n\r\n")) {
            struct pollfd c = {.fd = fd, .events = POLLIN};
            if (poll(&c, 1, 5000) <= 0) break;
            ssize_t r = read(fd, req + have, sizeof req - 1 - have);
            if (r <= 0) break;
            have += (size_t)r;
            req[have] = '\0';
        }
        const char *ans =
            s->mode == SRV_WS_BAD_ACCEPT
                ? "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                : "HTTP/1.1 1010 Nope\r\n\r\n";
        (void)!send(fd, ans, strlen(ans), MSG_NOSIGNAL);
        ts_sleep_ms(200);
        break;
    }
    case SRV_SLOW_READ: {
        uint8_t hdr[TS_FRAME_HEADER];
        if (read_full(fd, hdr, sizeof hdr, 5000) != 0) break;
        uint32_t len = ts_frame_get_header(hdr);
        uint8_t *buf = malloc(len);
        size_t got = 0;
        while (buf != NULL && got < len) {
            size_t want = len - got < 65536 ? len - got : 65536;
            if (read_full(fd, buf + got, want, 5000) != 0) break;
            got += want;
            ts_sleep_ms(1);
        }
        if (got == len) {
            Tessera__V1__ClientFrame *f = tessera__v1__client_frame__unpack(NULL, len, buf);
            if (f != NULL) {
                s->frames[s->nframes++] = f;
                s->big_len = len;
            }
        }
        free(buf);
        break;
    }
    }
    close(fd);
    return NULL;
}

static server_t *server_start(srv_mode_t mode)
{
    server_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->mode = mode;
    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->listen_fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->listen_fd, 4), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(s->listen_fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
    return s;
}

/* Waits for the server thread to finish its connection. */
static void server_join(server_t *s)
{
    if (!s->joined) {
        pthread_join(s->thread, NULL);
        s->joined = true;
    }
}

static void server_stop(server_t *s)
{
    server_join(s);
    close(s->listen_fd);
    for (int i = 0; i < s->nframes; i++)
        tessera__v1__client_frame__free_unpacked(s->frames[i], NULL);
    free(s);
}

static void test_send_recv_wrappers(void **state)
{
    server_t *s = server_start(SRV_ECHO);
    ts_client_t *c = NULL;
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", s->port, 2000), TS_OK);
    assert_int_equal(ts_client_last_seq(c), 0);

    Tessera__V1__ServerFrame *f = NULL;
    assert_int_equal(ts_client_hello(c, "tester"), TS_OK);
    assert_int_equal(ts_client_last_seq(c), 1);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    assert_int_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME);
    assert_int_equal(f->welcome->entity, 1001);
    assert_string_equal(f->welcome->gateway, "test");
    tessera__v1__server_frame__free_unpacked(f, NULL);

    assert_int_equal(ts_client_join(c, 12.5, -3.0, "alice"), TS_OK);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    assert_int_equal(ts_client_move(c, 4.0, -2.0), TS_OK);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    assert_int_equal(ts_client_ping(c, 555), TS_OK);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    assert_int_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG);
    assert_int_equal(f->pong->client_time_us, 555);
    assert_int_equal(f->seq, 4);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    assert_int_equal(ts_client_leave(c), TS_OK);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    /* an explicit sequence number is kept and the next one continues from it */
    Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
    Tessera__V1__ClientFrame raw = TESSERA__V1__CLIENT_FRAME__INIT;
    raw.seq = 100;
    raw.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
    raw.ping = &ping;
    assert_int_equal(ts_client_send(c, &raw), TS_OK);
    assert_int_equal(ts_client_last_seq(c), 100);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    raw.seq = 0;
    assert_int_equal(ts_client_send(c, &raw), TS_OK);
    assert_int_equal(raw.seq, 101);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    assert_int_equal(f->seq, 101);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    ts_client_destroy(c);
    server_join(s);
    assert_int_equal(s->nframes, 7);
    const Tessera__V1__ClientFrame__PayloadCase want[] = {
        TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO, TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN,
        TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE,  TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING,
        TESSERA__V1__CLIENT_FRAME__PAYLOAD_LEAVE, TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING,
        TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING};
    const uint64_t seqs[] = {1, 2, 3, 4, 5, 100, 101};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(s->frames[i]->seq, seqs[i]);
        assert_int_equal(s->frames[i]->payload_case, want[i]);
    }
    assert_int_equal(s->frames[0]->hello->protocol_version, TS_PROTOCOL_VERSION);
    assert_string_equal(s->frames[0]->hello->client_name, "tester");
    assert_null(s->frames[0]->cell); /* no cell known before the first reply */
    assert_true(s->frames[1]->join->x == 12.5 && s->frames[1]->join->y == -3.0);
    assert_string_equal(s->frames[1]->join->name, "alice");
    /* after a reply named the cell, wrapper frames carry it */
    assert_non_null(s->frames[1]->cell);
    assert_int_equal(s->frames[1]->cell->cx, served_cell.cx);
    assert_int_equal(s->frames[1]->cell->cy, served_cell.cy);
    assert_int_equal(s->frames[1]->epoch, 9);
    assert_true(s->frames[2]->move->dx == 4.0 && s->frames[2]->move->dy == -2.0);
    assert_int_equal(s->frames[3]->ping->client_time_us, 555);
    server_stop(s);
}

static void test_recv_timeout(void **state)
{
    server_t *s = server_start(SRV_SILENT);
    ts_client_t *c = NULL;
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", s->port, 2000), TS_OK);
    Tessera__V1__ServerFrame *f = (Tessera__V1__ServerFrame *)&f;
    uint64_t t0 = ts_mono_us();
    assert_int_equal(ts_client_recv(c, 150, &f), TS_ERR_TIMEOUT);
    uint64_t dt = ts_mono_us() - t0;
    assert_null(f);
    assert_true(dt >= 140000);
    assert_true(dt < 3000000);
    assert_int_equal(ts_client_recv(c, 0, &f), TS_ERR_TIMEOUT);
    ts_client_destroy(c);
    server_stop(s);
}

static void test_peer_close(void **state)
{
    server_t *s = server_start(SRV_ONE_CLOSE);
    ts_client_t *c = NULL;
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", s->port, 2000), TS_OK);
    /* the frame sent before the close is still delivered */
    Tessera__V1__ServerFrame *f = NULL;
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_OK);
    assert_int_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG);
    assert_int_equal(f->pong->client_time_us, 77);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_ERR_CLOSED);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_ERR_CLOSED);
    server_stop(s);

    /* writing into a closed connection is an error status, not SIGPIPE */
    ts_status_t st = TS_OK;
    for (int i = 0; i < 50 && st == TS_OK; i++) {
        st = ts_client_ping(c, (uint64_t)i);
        ts_sleep_ms(5);
    }
    assert_true(st == TS_ERR_CLOSED || st == TS_ERR_IO);
    ts_client_destroy(c);
}

static void test_garbage_from_peer(void **state)
{
    server_t *s = server_start(SRV_GARBAGE);
    ts_client_t *c = NULL;
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", s->port, 2000), TS_OK);
    Tessera__V1__ServerFrame *f = NULL;
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_ERR_MALFORMED);
    assert_null(f);
    ts_client_destroy(c);
    server_stop(s);

    s = server_start(SRV_HUGE);
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", s->port, 2000), TS_OK);
    assert_int_equal(ts_client_recv(c, 2000, &f), TS_ERR_MALFORMED);
    ts_client_destroy(c);
    server_stop(s);
}

static void test_send_raw(void **state)
{
    server_t *s = server_start(SRV_RAW);
    ts_client_t *c = NULL;
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", s->port, 2000), TS_OK);
    static const uint8_t bytes[] = {0xff, 0xff, 0xff, 0xff, 1, 2, 3};
    assert_int_equal(ts_client_send_raw(c, bytes, sizeof bytes), TS_OK);
    assert_int_equal(ts_client_send_raw(c, bytes, 0), TS_OK);
    assert_int_equal(ts_client_last_seq(c), 0);
    ts_client_destroy(c);
    server_join(s);
    assert_int_equal(s->raw_len, sizeof bytes);
    assert_memory_equal(s->raw, bytes, sizeof bytes);
    server_stop(s);
}

static void test_large_frame_partial_writes(void **state)
{
    /* a frame far larger than the socket buffers goes out whole while the
     * peer reads it slowly */
    server_t *s = server_start(SRV_SLOW_READ);
    ts_client_t *c = NULL;
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", s->port, 2000), TS_OK);
    size_t n = 3 * 1024 * 1024;
    char *name = malloc(n + 1);
    assert_non_null(name);
    for (size_t i = 0; i < n; i++)
        name[i] = (char)('a' + i % 26);
    name[n] = '\0';
    assert_int_equal(ts_client_join(c, 1, 2, name), TS_OK);
    ts_client_destroy(c);
    server_join(s);
    assert_int_equal(s->nframes, 1);
    assert_int_equal(s->frames[0]->payload_case, TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN);
    assert_string_equal(s->frames[0]->join->name, name);
    assert_true(s->big_len > n);
    free(name);
    server_stop(s);
}

static void test_connect_errors(void **state)
{
    /* a port nobody listens on: bind one, close it, connect to it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t alen = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &alen);
    int port = ntohs(a.sin_port);
    close(fd);

    ts_client_t *c = (ts_client_t *)&c;
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", port, 1000), TS_ERR_UNAVAILABLE);
    assert_null(c);
    assert_int_not_equal(ts_client_connect(&c, "no such host.invalid", 80, 1000), TS_OK);
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", 0, 1000), TS_ERR_INVALID);
    assert_int_equal(ts_client_connect(&c, "127.0.0.1", 70000, 1000), TS_ERR_INVALID);
    assert_int_equal(ts_client_connect(&c, NULL, 80, 1000), TS_ERR_INVALID);
    ts_client_destroy(NULL);
    assert_int_equal(ts_client_last_seq(NULL), 0);
}

/* A WebSocket server must prove it read the key (Sec-WebSocket-Accept) and
 * answer exactly 101; anything else is refused. */
static void test_ws_upgrade_checked(void **state)
{
    (void)state;
    server_t *s = server_start(SRV_WS_BAD_ACCEPT);
    ts_client_t *c = NULL;
    assert_int_equal(ts_client_connect_ws(&c, "127.0.0.1", s->port, NULL, 2000), TS_ERR_MALFORMED);
    assert_null(c);
    server_stop(s);
    s = server_start(SRV_WS_NOT_101);
    assert_int_equal(ts_client_connect_ws(&c, "127.0.0.1", s->port, NULL, 2000), TS_ERR_UNAVAILABLE);
    assert_null(c);
    server_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ws_upgrade_checked),
        cmocka_unit_test(test_send_recv_wrappers),
        cmocka_unit_test(test_recv_timeout),
        cmocka_unit_test(test_peer_close),
        cmocka_unit_test(test_garbage_from_peer),
        cmocka_unit_test(test_send_raw),
        cmocka_unit_test(test_large_frame_partial_writes),
        cmocka_unit_test(test_connect_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
