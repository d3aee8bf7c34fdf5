/* A load-generator client's WebSocket: the upgrade request carries a key
 * and only a 101 with the Sec-WebSocket-Accept of that key upgrades (the
 * answer may come in any pieces, frames may follow it in the same read);
 * binary messages come out whole however the bytes are cut, fragmented or
 * interleaved with pings; frames a server must not send (masked, text,
 * stray continuations) and messages above the limit are refused; frames
 * this side builds are masked, final and carry the payload. The server's
 * frames are built, and the client's parsed, by wslay in the test too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <wslay/wslay.h>

#include "ws_client.h"

#define MAX_MSG 100000

/* ---- a server side: wslay frames into / out of a buffer ---------------------- */

typedef struct {
    uint8_t buf[200000];
    size_t len, off;
} pipe_t;

static ssize_t pipe_send(const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    pipe_t *p = ud;
    assert_true(p->len + len <= sizeof p->buf);
    memcpy(p->buf + p->len, data, len);
    p->len += len;
    return (ssize_t)len;
}

static ssize_t pipe_recv(uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    pipe_t *p = ud;
    if (p->off == p->len) return -1;
    size_t n = len < p->len - p->off ? len : p->len - p->off;
    memcpy(buf, p->buf + p->off, n);
    p->off += n;
    return (ssize_t)n;
}

static int pipe_mask(uint8_t *buf, size_t len, void *ud)
{
    (void)ud;
    memset(buf, 0x5a, len);
    return 0;
}

/* Appends one server frame (mask 0 unless masked) to p. */
static void server_frame(pipe_t *p, uint8_t opcode, bool fin, bool masked, const uint8_t *data, size_t len)
{
    wslay_frame_context_ptr ctx;
    struct wslay_frame_callbacks cb = {pipe_send, pipe_recv, pipe_mask};
    assert_int_equal(wslay_frame_context_init(&ctx, &cb, p), 0);
    struct wslay_frame_iocb io = {0};
    io.fin = fin;
    io.opcode = opcode;
    io.mask = masked;
    io.payload_length = len;
    io.data = data;
    io.data_length = len;
    assert_int_equal(wslay_frame_send(ctx, &io), (ssize_t)len);
    wslay_frame_context_free(ctx);
}

/* ---- what the feed reports ------------------------------------------------------ */

typedef struct {
    int binary, ping, close;
    uint8_t last[MAX_MSG];
    size_t last_len;
    uint8_t ping_data[TS_SIMWS_MAX_CONTROL];
    size_t ping_len;
    unsigned close_code;
    int stop_after; /* >0: return false on that many-th message */
    int seen;
    const uint8_t *big; /* a message expected among them */
    size_t big_len;
    bool big_seen;
} seen_t;

static bool on_msg(void *ud, uint8_t opcode, const uint8_t *p, size_t len)
{
    seen_t *s = ud;
    s->seen++;
    if (opcode == TS_SIMWS_BINARY) {
        s->binary++;
        assert_true(len <= sizeof s->last);
        memcpy(s->last, p, len);
        s->last_len = len;
        if (s->big != NULL && len == s->big_len && memcmp(p, s->big, len) == 0) s->big_seen = true;
    } else if (opcode == TS_SIMWS_PING) {
        s->ping++;
        memcpy(s->ping_data, p, len);
        s->ping_len = len;
    } else if (opcode == TS_SIMWS_CLOSE) {
        s->close++;
        s->close_code = len >= 2 ? (unsigned)p[0] << 8 | p[1] : 0;
    } else {
        fail_msg("unexpected opcode %u", opcode);
    }
    return s->stop_after == 0 || s->seen < s->stop_after;
}

/* ---- the upgrade ------------------------------------------------------------------ */

/* The Sec-WebSocket-Accept for the key in request req. */
static void accept_for(const char *req, char out[32])
{
    const char *k = strstr(req, "Sec-WebSocket-Key: ");
    assert_non_null(k);
    k += strlen("Sec-WebSocket-Key: ");
    const char *e = strstr(k, "\r\n");
    assert_non_null(e);
    assert_int_equal(e - k, 24);
    char cat[128];
    snprintf(cat, sizeof cat, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", (int)(e - k), k);
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)cat, strlen(cat), d);
    EVP_EncodeBlock((unsigned char *)out, d, SHA_DIGEST_LENGTH);
}

static ts_simws_t *upgraded(void)
{
    ts_simws_t *w = ts_simws_new(42, MAX_MSG);
    assert_non_null(w);
    char req[1024], acc[32], ans[256];
    assert_true(ts_simws_request(w, "127.0.0.1", 8081, "/ws", req, sizeof req) > 0);
    accept_for(req, acc);
    int n = snprintf(ans, sizeof ans,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    size_t used = 0;
    assert_int_equal(ts_simws_upgrade(w, (const uint8_t *)ans, (size_t)n, &used, NULL, 0), TS_OK);
    assert_int_equal(used, (size_t)n);
    assert_true(ts_simws_upgraded(w));
    return w;
}

static void test_request_names_path_host_and_key(void **state)
{
    (void)state;
    ts_simws_t *w = ts_simws_new(1, MAX_MSG);
    assert_non_null(w);
    char req[1024];
    size_t n = ts_simws_request(w, "127.0.0.1", 8081, "/ws", req, sizeof req);
    assert_int_equal(n, strlen(req));
    assert_memory_equal(req, "GET /ws HTTP/1.1\r\n", 18);
    assert_non_null(strstr(req, "\r\nHost: 127.0.0.1:8081\r\n"));
    assert_non_null(strstr(req, "\r\nUpgrade: websocket\r\n"));
    assert_non_null(strstr(req, "\r\nConnection: Upgrade\r\n"));
    assert_non_null(strstr(req, "\r\nSec-WebSocket-Version: 13\r\n"));
    assert_non_null(strstr(req, "\r\nSec-WebSocket-Key: "));
    assert_string_equal(req + n - 4, "\r\n\r\n");
    /* a fresh key per request */
    char req2[1024];
    assert_true(ts_simws_request(w, "::1", 9000, "/game/ws", req2, sizeof req2) > 0);
    assert_string_not_equal(strstr(req, "Key: "), strstr(req2, "Key: "));
    assert_non_null(strstr(req2, "GET /game/ws HTTP/1.1\r\n"));
    assert_non_null(strstr(req2, "\r\nHost: [::1]:9000\r\n"));
    /* does not fit */
    assert_int_equal(ts_simws_request(w, "127.0.0.1", 8081, "/ws", req2, 40), 0);
    ts_simws_free(w);
}

static void test_upgrade_in_pieces_then_frames(void **state)
{
    (void)state;
    ts_simws_t *w = ts_simws_new(7, MAX_MSG);
    char req[1024], acc[32];
    assert_true(ts_simws_request(w, "localhost", 80, "/ws", req, sizeof req) > 0);
    accept_for(req, acc);
    pipe_t *p = calloc(1, sizeof *p);
    int n = snprintf((char *)p->buf, sizeof p->buf,
                     "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                     "sec-websocket-accept:  %s \r\n\r\n",
                     acc);
    p->len = (size_t)n;
    const uint8_t hello[] = "first frame right behind the answer";
    server_frame(p, WSLAY_BINARY_FRAME, true, false, hello, sizeof hello);
    /* the head a byte at a time */
    size_t off = 0, used = 0;
    ts_status_t st = TS_ERR_AGAIN;
    while (st == TS_ERR_AGAIN && off + 1 < (size_t)n) {
        st = ts_simws_upgrade(w, p->buf + off, 1, &used, NULL, 0);
        assert_int_equal(used, 1);
        off++;
    }
    assert_int_equal(st, TS_ERR_AGAIN);
    assert_false(ts_simws_upgraded(w));
    /* the last byte of the head and the frame in one read */
    assert_int_equal(ts_simws_upgrade(w, p->buf + off, p->len - off, &used, NULL, 0), TS_OK);
    assert_int_equal(used, 1);
    off += used;
    seen_t *s = calloc(1, sizeof *s);
    assert_int_equal(ts_simws_feed(w, p->buf + off, p->len - off, on_msg, s), TS_OK);
    assert_int_equal(s->binary, 1);
    assert_int_equal(s->last_len, sizeof hello);
    assert_memory_equal(s->last, hello, sizeof hello);
    free(s);
    free(p);
    ts_simws_free(w);
}

static void test_upgrade_refused(void **state)
{
    (void)state;
    char req[1024], why[160];
    size_t used;
    /* not 101 */
    ts_simws_t *w = ts_simws_new(3, MAX_MSG);
    assert_true(ts_simws_request(w, "h", 1, "/ws", req, sizeof req) > 0);
    const char *forbidden = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(
        ts_simws_upgrade(w, (const uint8_t *)forbidden, strlen(forbidden), &used, why, sizeof why),
        TS_ERR_UNAVAILABLE);
    assert_non_null(strstr(why, "HTTP/1.1 403 Forbidden"));
    assert_false(ts_simws_upgraded(w));
    /* 101 with the accept of another key */
    assert_true(ts_simws_request(w, "h", 1, "/ws", req, sizeof req) > 0);
    const char *wrong = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert_int_equal(ts_simws_upgrade(w, (const uint8_t *)wrong, strlen(wrong), &used, why, sizeof why),
                     TS_ERR_UNAVAILABLE);
    assert_non_null(strstr(why, "Sec-WebSocket-Accept"));
    /* not 101 either */
    assert_true(ts_simws_request(w, "h", 1, "/ws", req, sizeof req) > 0);
    const char *other = "HTTP/1.1 1010 Nope\r\n\r\n";
    assert_int_equal(ts_simws_upgrade(w, (const uint8_t *)other, strlen(other), &used, why, sizeof why),
                     TS_ERR_UNAVAILABLE);
    /* 101 without one */
    assert_true(ts_simws_request(w, "h", 1, "/ws", req, sizeof req) > 0);
    const char *none = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    assert_int_equal(ts_simws_upgrade(w, (const uint8_t *)none, strlen(none), &used, why, sizeof why),
                     TS_ERR_UNAVAILABLE);
    /* a head that never ends */
    assert_true(ts_simws_request(w, "h", 1, "/ws", req, sizeof req) > 0);
    char junk[512];
    memset(junk, 'x', sizeof junk);
    ts_status_t st = TS_ERR_AGAIN;
    for (int i = 0; i < 10 && st == TS_ERR_AGAIN; i++)
        st = ts_simws_upgrade(w, (const uint8_t *)junk, sizeof junk, &used, why, sizeof why);
    assert_int_equal(st, TS_ERR_MALFORMED);
    assert_false(ts_simws_upgraded(w));
    /* frames before an upgrade are refused */
    seen_t s = {0};
    assert_int_equal(ts_simws_feed(w, (const uint8_t *)"x", 1, on_msg, &s), TS_ERR_INVALID);
    ts_simws_free(w);
}

/* ---- frames ------------------------------------------------------------------------ */

static void fill(uint8_t *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(i * 31u + seed);
}

static void test_messages_whole_however_cut(void **state)
{
    (void)state;
    static uint8_t small[300], big[20000], part1[5000], part2[7000];
    fill(small, sizeof small, 1);
    fill(big, sizeof big, 2);
    fill(part1, sizeof part1, 3);
    fill(part2, sizeof part2, 4);
    pipe_t *p = calloc(1, sizeof *p);
    server_frame(p, WSLAY_BINARY_FRAME, true, false, small, sizeof small);
    server_frame(p, WSLAY_BINARY_FRAME, true, false, big, sizeof big); /* beyond wslay's 4 KB buffer */
    server_frame(p, WSLAY_BINARY_FRAME, false, false, part1, sizeof part1);
    server_frame(p, WSLAY_PING, true, false, (const uint8_t *)"hb", 2); /* between fragments */
    server_frame(p, WSLAY_PONG, true, false, NULL, 0);
    server_frame(p, WSLAY_CONTINUATION_FRAME, true, false, part2, sizeof part2);
    server_frame(p, WSLAY_BINARY_FRAME, true, false, NULL, 0);
    const uint8_t bye[] = {0x03, 0xe8, 'o', 'k'};
    server_frame(p, WSLAY_CONNECTION_CLOSE, true, false, bye, sizeof bye);

    size_t cuts[] = {1, 7, 4096, 65536};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        ts_simws_t *w = upgraded();
        seen_t *s = calloc(1, sizeof *s);
        s->big = big;
        s->big_len = sizeof big;
        for (size_t off = 0; off < p->len; off += cuts[k]) {
            size_t n = p->len - off < cuts[k] ? p->len - off : cuts[k];
            assert_int_equal(ts_simws_feed(w, p->buf + off, n, on_msg, s), TS_OK);
        }
        assert_true(s->big_seen);
        assert_int_equal(s->binary, 4);
        assert_int_equal(s->ping, 1);
        assert_int_equal(s->ping_len, 2);
        assert_memory_equal(s->ping_data, "hb", 2);
        assert_int_equal(s->close, 1);
        assert_int_equal(s->close_code, 1000);
        assert_int_equal(s->last_len, 0); /* the empty one came last */
        free(s);
        ts_simws_free(w);
    }

    /* the fragmented message is part1 then part2 */
    pipe_t *q = calloc(1, sizeof *q);
    server_frame(q, WSLAY_BINARY_FRAME, false, false, part1, sizeof part1);
    server_frame(q, WSLAY_CONTINUATION_FRAME, false, false, part2, 10);
    server_frame(q, WSLAY_CONTINUATION_FRAME, true, false, part2 + 10, sizeof part2 - 10);
    ts_simws_t *w = upgraded();
    seen_t *s = calloc(1, sizeof *s);
    assert_int_equal(ts_simws_feed(w, q->buf, q->len, on_msg, s), TS_OK);
    assert_int_equal(s->binary, 1);
    assert_int_equal(s->last_len, sizeof part1 + sizeof part2);
    assert_memory_equal(s->last, part1, sizeof part1);
    assert_memory_equal(s->last + sizeof part1, part2, sizeof part2);
    free(s);
    ts_simws_free(w);
    free(q);
    free(p);
}

static void test_stop_leaves_the_rest(void **state)
{
    (void)state;
    pipe_t *p = calloc(1, sizeof *p);
    server_frame(p, WSLAY_BINARY_FRAME, true, false, (const uint8_t *)"a", 1);
    server_frame(p, WSLAY_BINARY_FRAME, true, false, (const uint8_t *)"b", 1);
    ts_simws_t *w = upgraded();
    seen_t s = {.stop_after = 1};
    assert_int_equal(ts_simws_feed(w, p->buf, p->len, on_msg, &s), TS_OK);
    assert_int_equal(s.binary, 1);
    assert_int_equal(s.last[0], 'a');
    ts_simws_free(w);
    free(p);
}

/* One feed of a single bad frame (after a good one); its status. */
static ts_status_t feed_bad(uint8_t opcode, bool fin, bool masked, size_t len, size_t max_msg)
{
    static uint8_t data[4096];
    pipe_t *p = calloc(1, sizeof *p);
    server_frame(p, WSLAY_BINARY_FRAME, true, false, (const uint8_t *)"ok", 2);
    server_frame(p, opcode, fin, masked, data, len);
    ts_simws_t *w = ts_simws_new(9, max_msg);
    char req[1024], acc[32], ans[256];
    assert_true(ts_simws_request(w, "h", 1, "/ws", req, sizeof req) > 0);
    accept_for(req, acc);
    int n = snprintf(ans, sizeof ans, "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    size_t used;
    assert_int_equal(ts_simws_upgrade(w, (const uint8_t *)ans, (size_t)n, &used, NULL, 0), TS_OK);
    seen_t *s = calloc(1, sizeof *s);
    ts_status_t st = ts_simws_feed(w, p->buf, p->len, on_msg, s);
    assert_int_equal(s->binary, st == TS_OK ? 2 : 1); /* the good one came out first */
    free(s);
    ts_simws_free(w);
    free(p);
    return st;
}

static void test_bad_frames_refused(void **state)
{
    (void)state;
    assert_int_equal(feed_bad(WSLAY_BINARY_FRAME, true, true, 3, MAX_MSG), TS_ERR_MALFORMED); /* masked */
    assert_int_equal(feed_bad(WSLAY_TEXT_FRAME, true, false, 3, MAX_MSG), TS_ERR_MALFORMED);
    assert_int_equal(feed_bad(WSLAY_CONTINUATION_FRAME, true, false, 3, MAX_MSG), TS_ERR_MALFORMED);
    assert_int_equal(feed_bad(0x3, true, false, 3, MAX_MSG), TS_ERR_MALFORMED); /* reserved */
    assert_int_equal(feed_bad(WSLAY_PING, false, false, 3, MAX_MSG),
                     TS_ERR_MALFORMED); /* fragmented control */
    assert_int_equal(feed_bad(WSLAY_BINARY_FRAME, true, false, 101, 100), TS_ERR_OVERSIZED);
    assert_int_equal(feed_bad(WSLAY_BINARY_FRAME, true, false, 100, 100), TS_OK); /* at the limit */
}

/* ---- frames this side builds -------------------------------------------------------- */

static void test_encode_masked_final(void **state)
{
    (void)state;
    ts_simws_t *w = upgraded();
    static uint8_t payload[70000], out[70100];
    fill(payload, sizeof payload, 5);
    size_t sizes[] = {0, 20, 125, 126, 65535, 65536, 70000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t len = sizes[k];
        size_t n = ts_simws_encode(w, TS_SIMWS_BINARY, payload, len, out, len + TS_SIMWS_FRAME_OVERHEAD);
        assert_true(n > len && n <= len + TS_SIMWS_FRAME_OVERHEAD);
        /* parsed back by wslay as a server would */
        pipe_t *p = calloc(1, sizeof *p);
        memcpy(p->buf, out, n);
        p->len = n;
        wslay_frame_context_ptr ctx;
        struct wslay_frame_callbacks cb = {pipe_send, pipe_recv, pipe_mask};
        assert_int_equal(wslay_frame_context_init(&ctx, &cb, p), 0);
        size_t got = 0;
        static uint8_t back[70000];
        for (;;) {
            struct wslay_frame_iocb io;
            ssize_t r = wslay_frame_recv(ctx, &io);
            if (r == WSLAY_ERR_WANT_READ) break;
            assert_true(r >= 0);
            assert_int_equal(io.mask, 1);
            assert_int_equal(io.fin, 1);
            assert_int_equal(io.opcode, WSLAY_BINARY_FRAME);
            assert_int_equal(io.payload_length, len);
            memcpy(back + got, io.data, io.data_length);
            got += io.data_length;
            if (got == len) break;
        }
        assert_int_equal(got, len);
        if (len > 0) assert_memory_equal(back, payload, len);
        assert_int_equal(p->off, n); /* nothing left over */
        wslay_frame_context_free(ctx);
        free(p);
    }
    /* masked, so the wire differs from the payload */
    size_t n = ts_simws_encode(w, TS_SIMWS_BINARY, payload, 100, out, sizeof out);
    assert_int_equal(n, 2 + 4 + 100);
    assert_true(memcmp(out + 6, payload, 100) != 0);
    /* does not fit */
    assert_int_equal(ts_simws_encode(w, TS_SIMWS_BINARY, payload, 100, out, 105), 0);
    assert_int_equal(ts_simws_encode(w, TS_SIMWS_BINARY, payload, 200, out, 100), 0);
    /* a close frame */
    const uint8_t code[2] = {0x03, 0xe8};
    n = ts_simws_encode(w, TS_SIMWS_CLOSE, code, 2, out, sizeof out);
    assert_int_equal(n, 2 + 4 + 2);
    assert_int_equal(out[0], 0x88);
    assert_int_equal(out[1], 0x82);
    ts_simws_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_names_path_host_and_key),
        cmocka_unit_test(test_upgrade_in_pieces_then_frames),
        cmocka_unit_test(test_upgrade_refused),
        cmocka_unit_test(test_messages_whole_however_cut),
        cmocka_unit_test(test_stop_leaves_the_rest),
        cmocka_unit_test(test_bad_frames_refused),
        cmocka_unit_test(test_encode_masked_final),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
