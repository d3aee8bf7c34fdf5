/* Frame reader: whole frames out of arbitrary partial reads, oversized
 * frames refused from the header alone, and malformed payloads detected by
 * the protobuf decoder rather than crashing it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "tessera/frame.h"
#include "tessera/proto.h"
#include "tessera/util.h"

/* Appends one framed, packed ClientFrame (a Move with the given seq) to buf. */
static size_t put_move(uint8_t *buf, uint64_t seq, double dx)
{
    Tessera__V1__Move mv = TESSERA__V1__MOVE__INIT;
    mv.dx = dx;
    mv.dy = -dx;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.seq = seq;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE;
    f.move = &mv;
    uint8_t *packed;
    size_t len;
    assert_int_equal(ts_proto_pack(&f.base, &packed, &len), TS_OK);
    ts_frame_put_header(buf, (uint32_t)len);
    memcpy(buf + TS_FRAME_HEADER, packed, len);
    free(packed);
    return TS_FRAME_HEADER + len;
}

static void expect_move(const uint8_t *payload, size_t len, uint64_t seq, double dx)
{
    Tessera__V1__ClientFrame *f = tessera__v1__client_frame__unpack(NULL, len, payload);
    assert_non_null(f);
    assert_int_equal(f->seq, seq);
    assert_int_equal(f->payload_case, TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE);
    assert_true(f->move->dx == dx && f->move->dy == -dx);
    tessera__v1__client_frame__free_unpacked(f, NULL);
}

static void test_header_round_trip(void **state)
{
    uint8_t h[TS_FRAME_HEADER];
    ts_frame_put_header(h, 0x01020304u);
    assert_int_equal(h[0], 1);
    assert_int_equal(h[1], 2);
    assert_int_equal(h[2], 3);
    assert_int_equal(h[3], 4);
    assert_int_equal(ts_frame_get_header(h), 0x01020304u);
    const uint32_t vals[] = {0, 1, 255, 256, 65536, 0x7fffffffu, 0xffffffffu};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        ts_frame_put_header(h, vals[i]);
        assert_int_equal(ts_frame_get_header(h), vals[i]);
    }
}

static void test_byte_by_byte(void **state)
{
    uint8_t stream[512];
    size_t n = 0, ends[3];
    n += put_move(stream + n, 1, 1.5);
    ends[0] = n;
    n += put_move(stream + n, 2, 2.5);
    ends[1] = n;
    n += put_move(stream + n, 300, -7.25);
    ends[2] = n;

    ts_frame_reader_t r;
    ts_frame_reader_init(&r, TS_FRAME_DEFAULT_MAX);
    const uint8_t *p;
    size_t len;
    int got = 0;
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_AGAIN);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ts_frame_reader_feed(&r, stream + i, 1), TS_OK);
        ts_status_t st = ts_frame_reader_next(&r, &p, &len);
        if (i + 1 == ends[got]) {
            assert_int_equal(st, TS_OK);
            const uint64_t seqs[] = {1, 2, 300};
            const double dxs[] = {1.5, 2.5, -7.25};
            expect_move(p, len, seqs[got], dxs[got]);
            got++;
        } else {
            assert_int_equal(st, TS_ERR_AGAIN);
        }
    }
    assert_int_equal(got, 3);
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_AGAIN);
    ts_frame_reader_free(&r);
}

static void test_several_frames_one_feed(void **state)
{
    uint8_t stream[512];
    size_t n = 0;
    n += put_move(stream + n, 10, 1.0);
    ts_frame_put_header(stream + n, 0); /* zero-length frame in the middle */
    n += TS_FRAME_HEADER;
    n += put_move(stream + n, 11, 2.0);
    n += put_move(stream + n, 12, 3.0);
    size_t partial = 5; /* plus the start of a fifth frame */
    n += put_move(stream + n, 13, 4.0);

    ts_frame_reader_t r;
    ts_frame_reader_init(&r, TS_FRAME_DEFAULT_MAX);
    assert_int_equal(ts_frame_reader_feed(&r, stream, n - partial), TS_OK);
    const uint8_t *p[4];
    size_t len[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(ts_frame_reader_next(&r, &p[i], &len[i]), TS_OK);
    /* payloads handed out earlier stay valid until the next feed */
    expect_move(p[0], len[0], 10, 1.0);
    assert_int_equal(len[1], 0);
    expect_move(p[2], len[2], 11, 2.0);
    expect_move(p[3], len[3], 12, 3.0);
    const uint8_t *q;
    size_t qlen;
    assert_int_equal(ts_frame_reader_next(&r, &q, &qlen), TS_ERR_AGAIN);
    assert_int_equal(ts_frame_reader_feed(&r, stream + n - partial, partial), TS_OK);
    assert_int_equal(ts_frame_reader_next(&r, &q, &qlen), TS_OK);
    expect_move(q, qlen, 13, 4.0);
    assert_int_equal(ts_frame_reader_next(&r, &q, &qlen), TS_ERR_AGAIN);
    ts_frame_reader_free(&r);
}

static void test_zero_length_frame(void **state)
{
    ts_frame_reader_t r;
    ts_frame_reader_init(&r, 16);
    uint8_t h[TS_FRAME_HEADER];
    ts_frame_put_header(h, 0);
    assert_int_equal(ts_frame_reader_feed(&r, h, 3), TS_OK);
    const uint8_t *p;
    size_t len = 99;
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_AGAIN);
    assert_int_equal(ts_frame_reader_feed(&r, h + 3, 1), TS_OK);
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_OK);
    assert_int_equal(len, 0);
    /* an empty payload is an empty message, not an error */
    Tessera__V1__ClientFrame *f = tessera__v1__client_frame__unpack(NULL, len, p);
    assert_non_null(f);
    assert_int_equal(f->seq, 0);
    assert_int_equal(f->payload_case, TESSERA__V1__CLIENT_FRAME__PAYLOAD__NOT_SET);
    tessera__v1__client_frame__free_unpacked(f, NULL);
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_AGAIN);
    ts_frame_reader_free(&r);
}

static void test_max_frame_boundary(void **state)
{
    enum { MAX = 100 };
    uint8_t stream[TS_FRAME_HEADER + MAX];
    memset(stream, 0x5a, sizeof stream);
    ts_frame_put_header(stream, MAX);
    ts_frame_reader_t r;
    ts_frame_reader_init(&r, MAX);
    assert_int_equal(ts_frame_reader_feed(&r, stream, sizeof stream), TS_OK);
    const uint8_t *p;
    size_t len;
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_OK);
    assert_int_equal(len, MAX);
    assert_int_equal(p[MAX - 1], 0x5a);

    ts_frame_put_header(stream, MAX + 1);
    assert_int_equal(ts_frame_reader_feed(&r, stream, TS_FRAME_HEADER), TS_OK);
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_OVERSIZED);
    ts_frame_reader_free(&r);
}

static void test_oversized_header_not_buffered(void **state)
{
    enum { MAX = 1024 };
    ts_frame_reader_t r;
    ts_frame_reader_init(&r, MAX);
    uint8_t h[TS_FRAME_HEADER];
    ts_frame_put_header(h, 0xffffffffu);
    const uint8_t *p;
    size_t len;
    assert_int_equal(ts_frame_reader_feed(&r, h, 2), TS_OK);
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_AGAIN);
    assert_int_equal(ts_frame_reader_feed(&r, h + 2, 2), TS_OK);
    /* known from the header alone */
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_OVERSIZED);

    /* a peer that keeps sending does not make the reader grow */
    uint8_t junk[4096];
    memset(junk, 0xab, sizeof junk);
    for (int i = 0; i < 256; i++) {
        assert_int_equal(ts_frame_reader_feed(&r, junk, sizeof junk), TS_OK);
        assert_true(r.len - r.off <= TS_FRAME_HEADER);
        assert_true(r.cap <= 4096 + TS_FRAME_HEADER);
    }
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_OVERSIZED);
    ts_frame_reader_free(&r);

    /* a good frame followed by an oversized one in the same read: the good
     * one is delivered, the bytes after the bad header are not kept */
    uint8_t stream[64 + 8192];
    size_t n = put_move(stream, 5, 0.5);
    ts_frame_put_header(stream + n, MAX + 1);
    n += TS_FRAME_HEADER;
    memset(stream + n, 0xcd, 8192);
    n += 8192;
    ts_frame_reader_init(&r, MAX);
    assert_int_equal(ts_frame_reader_feed(&r, stream, n), TS_OK);
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_OK);
    expect_move(p, len, 5, 0.5);
    assert_int_equal(r.len - r.off, TS_FRAME_HEADER);
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_ERR_OVERSIZED);
    ts_frame_reader_free(&r);
}

static void test_malformed_payload(void **state)
{
    /* field 3 (cell) announced with 127 bytes, only 2 present */
    static const uint8_t truncated[] = {0x1a, 0x7f, 0x08, 0x01};
    /* varint that never terminates */
    static const uint8_t bad_varint[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    /* field number 0 is invalid */
    static const uint8_t field_zero[] = {0x00, 0x01};
    /* wire type 7 does not exist */
    static const uint8_t bad_wire_type[] = {0x0f, 0x01};
    const struct {
        const uint8_t *b;
        size_t n;
    } cases[] = {{truncated, sizeof truncated},
                 {bad_varint, sizeof bad_varint},
                 {field_zero, sizeof field_zero},
                 {bad_wire_type, sizeof bad_wire_type}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[64];
        ts_frame_put_header(buf, (uint32_t)cases[i].n);
        memcpy(buf + TS_FRAME_HEADER, cases[i].b, cases[i].n);
        ts_frame_reader_t r;
        ts_frame_reader_init(&r, TS_FRAME_DEFAULT_MAX);
        assert_int_equal(ts_frame_reader_feed(&r, buf, TS_FRAME_HEADER + cases[i].n), TS_OK);
        const uint8_t *p;
        size_t len;
        assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_OK);
        assert_int_equal(len, cases[i].n);
        assert_null(tessera__v1__client_frame__unpack(NULL, len, p));
        ts_frame_reader_free(&r);
    }
}

static void test_random_chunks(void **state)
{
    /* 2000 frames of random sizes fed in random chunk sizes come out intact
     * and in order; the reader never holds much more than one chunk plus
     * one frame */
    enum { FRAMES = 2000, MAX = 300 };
    ts_rng_t rng;
    ts_rng_seed(&rng, 12345);
    size_t cap = FRAMES * (TS_FRAME_HEADER + MAX);
    uint8_t *stream = malloc(cap);
    uint32_t *sizes = malloc(FRAMES * sizeof *sizes);
    assert_non_null(stream);
    assert_non_null(sizes);
    size_t n = 0;
    for (int i = 0; i < FRAMES; i++) {
        sizes[i] = (uint32_t)(ts_rng_next(&rng) % (MAX + 1));
        ts_frame_put_header(stream + n, sizes[i]);
        n += TS_FRAME_HEADER;
        for (uint32_t j = 0; j < sizes[i]; j++)
            stream[n + j] = (uint8_t)(i + j);
        n += sizes[i];
    }
    ts_frame_reader_t r;
    ts_frame_reader_init(&r, MAX);
    size_t pos = 0;
    int got = 0;
    while (pos < n) {
        size_t chunk = 1 + ts_rng_next(&rng) % 700;
        if (chunk > n - pos) chunk = n - pos;
        assert_int_equal(ts_frame_reader_feed(&r, stream + pos, chunk), TS_OK);
        assert_true(r.len <= chunk + TS_FRAME_HEADER + MAX);
        pos += chunk;
        const uint8_t *p;
        size_t len;
        ts_status_t st;
        while ((st = ts_frame_reader_next(&r, &p, &len)) == TS_OK) {
            assert_true(got < FRAMES);
            assert_int_equal(len, sizes[got]);
            for (size_t j = 0; j < len; j++)
                assert_int_equal(p[j], (uint8_t)(got + j));
            got++;
        }
        assert_int_equal(st, TS_ERR_AGAIN);
    }
    assert_int_equal(got, FRAMES);
    ts_frame_reader_free(&r);
    free(stream);
    free(sizes);
}

static void test_large_frame_memory_released(void **state)
{
    enum { BIG = 1 << 20 };
    uint8_t *stream = calloc(1, TS_FRAME_HEADER + BIG);
    assert_non_null(stream);
    ts_frame_put_header(stream, BIG);
    ts_frame_reader_t r;
    ts_frame_reader_init(&r, BIG);
    for (size_t pos = 0; pos < TS_FRAME_HEADER + BIG; pos += 8192) {
        size_t chunk = TS_FRAME_HEADER + BIG - pos < 8192 ? TS_FRAME_HEADER + BIG - pos : 8192;
        assert_int_equal(ts_frame_reader_feed(&r, stream + pos, chunk), TS_OK);
        assert_true(r.len <= TS_FRAME_HEADER + BIG);
    }
    const uint8_t *p;
    size_t len;
    assert_int_equal(ts_frame_reader_next(&r, &p, &len), TS_OK);
    assert_int_equal(len, BIG);
    assert_int_equal(ts_frame_reader_feed(&r, NULL, 0), TS_OK);
    assert_true(r.cap <= 64 * 1024);
    ts_frame_reader_free(&r);
    ts_frame_reader_free(NULL);
    free(stream);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_round_trip),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_several_frames_one_feed),
        cmocka_unit_test(test_zero_length_frame),
        cmocka_unit_test(test_max_frame_boundary),
        cmocka_unit_test(test_oversized_header_not_buffered),
        cmocka_unit_test(test_malformed_payload),
        cmocka_unit_test(test_random_chunks),
        cmocka_unit_test(test_large_frame_memory_released),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
