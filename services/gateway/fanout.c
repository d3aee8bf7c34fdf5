/* Encoded blocks, frame heads and keyframe assembly; see fanout.h. */
#include <stdlib.h>
#include <string.h>

#include "fanout.h"

#define WIRE_VARINT 0
#define WIRE_LEN 2
#define TAG(field, wire) ((uint8_t)((field) << 3 | (wire)))

size_t gw_pb_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

size_t gw_pb_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static bool reserve(gw_blk_t *b, size_t more)
{
    if (b->len + more <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *v = realloc(b->data, cap);
    if (v == NULL) return false;
    b->data = v;
    b->cap = cap;
    return true;
}

static bool add_cut(gw_blk_t *b, size_t off)
{
    if (b->ncuts == b->cuts_cap) {
        size_t cap = b->cuts_cap ? b->cuts_cap * 2 : 8;
        size_t *v = realloc(b->cuts, cap * sizeof *v);
        if (v == NULL) return false;
        b->cuts = v;
        b->cuts_cap = cap;
    }
    b->cuts[b->ncuts++] = off;
    return true;
}

void gw_blk_reset(gw_blk_t *b)
{
    b->len = 0;
    b->ncuts = 0;
    b->count = 0;
}

void gw_blk_free(gw_blk_t *b)
{
    free(b->data);
    free(b->cuts);
    free(b->ents);
    memset(b, 0, sizeof *b);
}

ts_status_t gw_blk_add(gw_blk_t *b, const Tessera__V1__EntityState *s)
{
    size_t n = tessera__v1__entity_state__get_packed_size(s);
    if (!reserve(b, 1 + 10 + n)) return TS_ERR_NOMEM;
    size_t last = b->ncuts ? b->cuts[b->ncuts - 1] : 0;
    if (b->len - last >= GW_BLK_CUT_BYTES && !add_cut(b, b->len)) return TS_ERR_NOMEM;
    if (b->count == b->ents_cap) {
        size_t cap = b->ents_cap ? b->ents_cap * 2 : 64;
        gw_blk_ent_t *v = realloc(b->ents, cap * sizeof *v);
        if (v == NULL) return TS_ERR_NOMEM;
        b->ents = v;
        b->ents_cap = cap;
    }
    uint8_t *p = b->data + b->len;
    *p++ = TAG(2, WIRE_LEN);
    p += gw_pb_varint(p, n);
    p += tessera__v1__entity_state__pack(s, p);
    size_t start = b->len;
    b->len = (size_t)(p - b->data);
    b->ents[b->count] = (gw_blk_ent_t){
        .id = s->id, .x = s->x, .y = s->y, .off = (uint32_t)start, .len = (uint32_t)(b->len - start)};
    b->count++;
    return TS_OK;
}

ts_status_t gw_blk_seal(gw_blk_t *b)
{
    if (b->len == 0) return TS_OK;
    if (b->ncuts > 0 && b->cuts[b->ncuts - 1] == b->len) return TS_OK;
    return add_cut(b, b->len) ? TS_OK : TS_ERR_NOMEM;
}

size_t gw_removed_len(const uint64_t *ids, size_t n)
{
    if (n == 0) return 0;
    size_t body = 0;
    for (size_t i = 0; i < n; i++)
        body += gw_pb_varint_len(ids[i]);
    return 1 + gw_pb_varint_len(body) + body;
}

size_t gw_removed_put(uint8_t *out, const uint64_t *ids, size_t n)
{
    if (n == 0) return 0;
    size_t body = 0;
    for (size_t i = 0; i < n; i++)
        body += gw_pb_varint_len(ids[i]);
    uint8_t *p = out;
    *p++ = TAG(3, WIRE_LEN);
    p += gw_pb_varint(p, body);
    for (size_t i = 0; i < n; i++)
        p += gw_pb_varint(p, ids[i]);
    return (size_t)(p - out);
}

size_t gw_frame_head(uint8_t *out, uint64_t seq, uint64_t epoch, const ts_cell_t *cell, int payload,
                     uint64_t field1, size_t rest_len, size_t *frame_len)
{
    uint8_t *p = out + 4;
    if (seq != 0) {
        *p++ = TAG(1, WIRE_VARINT);
        p += gw_pb_varint(p, seq);
    }
    if (epoch != 0) {
        *p++ = TAG(2, WIRE_VARINT);
        p += gw_pb_varint(p, epoch);
    }
    if (cell != NULL) {
        Tessera__V1__CellId pb;
        ts_proto_cell_init(&pb, cell);
        size_t n = tessera__v1__cell_id__get_packed_size(&pb);
        *p++ = TAG(3, WIRE_LEN);
        p += gw_pb_varint(p, n);
        p += tessera__v1__cell_id__pack(&pb, p);
    }
    size_t body = rest_len;
    if (field1 != 0) body += 1 + gw_pb_varint_len(field1);
    p += gw_pb_varint(p, (uint64_t)payload << 3 | WIRE_LEN); /* fields >= 16 take two bytes */
    p += gw_pb_varint(p, body);
    if (field1 != 0) {
        *p++ = TAG(1, WIRE_VARINT);
        p += gw_pb_varint(p, field1);
    }
    size_t head = (size_t)(p - out);
    size_t frame = head - 4 + rest_len;
    out[0] = (uint8_t)(frame >> 24);
    out[1] = (uint8_t)(frame >> 16);
    out[2] = (uint8_t)(frame >> 8);
    out[3] = (uint8_t)frame;
    *frame_len = frame + 4;
    return head;
}

int gw_kf_note(gw_kf_t *kf, uint64_t epoch, uint64_t tick, uint32_t part, uint32_t parts)
{
    if (parts <= 1) {
        parts = 1;
        part = 0;
    }
    int r = GW_KF_PART;
    if (kf->parts == 0 || kf->epoch != epoch || kf->tick != tick || kf->parts != parts) {
        kf->epoch = epoch;
        kf->tick = tick;
        kf->parts = parts;
        kf->seen = 0;
        kf->mask = 0;
        r = GW_KF_BEGIN;
    }
    if (part >= parts) return r;
    if (part < 64) {
        uint64_t bit = (uint64_t)1 << part;
        if ((kf->mask & bit) == 0) {
            kf->mask |= bit;
            kf->seen++;
        }
    } else {
        kf->seen++;
    }
    if (kf->seen >= kf->parts) {
        kf->parts = 0;
        r |= GW_KF_DONE;
    }
    return r;
}
