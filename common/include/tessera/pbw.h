/* Hand-written protobuf wire encoding for the few messages that are encoded
 * on a hot path (an EntityState per moving entity per tick).
 *
 * protobuf-c packs through its descriptors: a size pass and a write pass,
 * each walking every field of every message through tables. For a message
 * of nine scalar fields written a hundred thousand times a second that is
 * most of a worker's tick. These helpers write the same wire format
 * directly; the messages they build decode with protobuf-c like any other
 * (tests/unit/test_pbw.c checks that byte for byte).
 *
 * Proto3 rules apply, as protobuf-c applies them: a scalar equal to zero
 * (-0.0 included) is not written; fields go in field-number order. */
#ifndef TS_PBW_H
#define TS_PBW_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { TS_PBW_VARINT = 0, TS_PBW_I64 = 1, TS_PBW_LEN = 2 };

static inline size_t ts_pbw_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *ts_pbw_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Field numbers below 16 take a one-byte tag. */
static inline uint8_t *ts_pbw_tag(uint8_t *p, unsigned field, unsigned wire)
{
    return ts_pbw_varint(p, ((uint64_t)field << 3) | wire);
}

static inline size_t ts_pbw_tag_len(unsigned field)
{
    return ts_pbw_varint_len((uint64_t)field << 3);
}

/* varint field: its size when written (0 when v is 0) */
static inline size_t ts_pbw_u64_len(unsigned field, uint64_t v)
{
    return v ? ts_pbw_tag_len(field) + ts_pbw_varint_len(v) : 0;
}

static inline uint8_t *ts_pbw_u64(uint8_t *p, unsigned field, uint64_t v)
{
    if (!v) return p;
    p = ts_pbw_tag(p, field, TS_PBW_VARINT);
    return ts_pbw_varint(p, v);
}

static inline uint64_t ts_pbw_double_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof(b));
    return b;
}

static inline size_t ts_pbw_double_len(unsigned field, double d)
{
    return d != 0 ? ts_pbw_tag_len(field) + 8 : 0;
}

static inline uint8_t *ts_pbw_double(uint8_t *p, unsigned field, double d)
{
    if (d == 0) return p;
    uint64_t b = ts_pbw_double_bits(d);
    p = ts_pbw_tag(p, field, TS_PBW_I64);
    for (int i = 0; i < 8; i++)
        *p++ = (uint8_t)(b >> (8 * i));
    return p;
}

/* string / bytes field of n bytes (not written when n is 0) */
static inline size_t ts_pbw_bytes_len(unsigned field, size_t n)
{
    return n ? ts_pbw_tag_len(field) + ts_pbw_varint_len(n) + n : 0;
}

static inline uint8_t *ts_pbw_bytes(uint8_t *p, unsigned field, const void *data, size_t n)
{
    if (!n) return p;
    p = ts_pbw_tag(p, field, TS_PBW_LEN);
    p = ts_pbw_varint(p, n);
    memcpy(p, data, n);
    return p + n;
}

/* header of an embedded message (or packed field) of n bytes; always
 * written, an empty embedded message is still present */
static inline size_t ts_pbw_sub_len(unsigned field, size_t n)
{
    return ts_pbw_tag_len(field) + ts_pbw_varint_len(n) + n;
}

static inline uint8_t *ts_pbw_sub_head(uint8_t *p, unsigned field, size_t n)
{
    p = ts_pbw_tag(p, field, TS_PBW_LEN);
    return ts_pbw_varint(p, n);
}

#endif
