/* ServerFrame wire scanner; see track.h. Field numbers are those of
 * schemas/client.proto and schemas/common.proto. */
#include "track.h"

#include <string.h>

enum {
    WT_VARINT = 0,
    WT_I64 = 1,
    WT_LEN = 2,
    WT_I32 = 5,
};

enum {
    SF_CELL = 3,
    SF_WELCOME = 10,
    SF_SNAPSHOT = 11,
    SF_DELTA = 12,
    SF_CELL_CHANGED = 13,
    SF_PONG = 14,
    SF_ERROR = 15,
};

enum {
    SNAP_ENTITY = 1,
    SNAP_ENTITIES = 2,
    DELTA_ENTITIES = 2,
    ES_ID = 1,
    ES_LAST_INPUT_SEQ = 6,
    ES_INPUTS_APPLIED = 7,
    ERR_CODE = 1,
    ERR_MESSAGE = 2,
    ERR_FATAL = 3,
    ERR_FIRST_SEQ = 4,
    ERR_LAST_SEQ = 5,
    CC_TO = 2,
    CELL_WORLD = 1,
    CELL_CX = 2,
    CELL_CY = 3,
    CELL_DEPTH = 4,
    CELL_SUB = 5,
};

typedef struct {
    const uint8_t *p, *end;
} cursor_t;

/* One field: its number, wire type and value (varint) or bytes (LEN). */
typedef struct {
    uint32_t num;
    unsigned wt;
    uint64_t v;
    const uint8_t *data;
    size_t len;
} field_t;

static bool read_varint(cursor_t *c, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (c->p >= c->end) return false;
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Reads the next field. Returns 1 with *f filled, 0 at the end, -1 if the
 * bytes are not wire format. */
static int next_field(cursor_t *c, field_t *f)
{
    if (c->p >= c->end) return 0;
    uint64_t tag;
    if (!read_varint(c, &tag)) return -1;
    f->num = (uint32_t)(tag >> 3);
    f->wt = (unsigned)(tag & 7);
    if (f->num == 0 || (tag >> 3) > UINT32_MAX) return -1;
    size_t left;
    switch (f->wt) {
    case WT_VARINT:
        return read_varint(c, &f->v) ? 1 : -1;
    case WT_I64:
    case WT_I32: {
        size_t n = f->wt == WT_I64 ? 8 : 4;
        if ((size_t)(c->end - c->p) < n) return -1;
        c->p += n;
        return 1;
    }
    case WT_LEN:
        if (!read_varint(c, &f->v)) return -1;
        left = (size_t)(c->end - c->p);
        if (f->v > left) return -1;
        f->data = c->p;
        f->len = (size_t)f->v;
        c->p += f->len;
        return 1;
    default:
        return -1; /* groups are not used by proto3 */
    }
}

/* One EntityState: stops reading at the id when it is not the own entity. */
static bool scan_entity(ts_track_t *t, const uint8_t *data, size_t len, bool *own)
{
    cursor_t c = {data, data + len};
    field_t f;
    int rc;
    bool have_id = false;
    uint64_t id = 0, seq = 0, applied = 0;
    while ((rc = next_field(&c, &f)) == 1) {
        if (f.wt != WT_VARINT) continue;
        if (f.num == ES_ID) {
            id = f.v;
            have_id = true;
            if (t->entity == 0 || id != t->entity) return true;
        } else if (f.num == ES_LAST_INPUT_SEQ) {
            seq = f.v;
        } else if (f.num == ES_INPUTS_APPLIED) {
            applied = f.v;
        }
    }
    if (rc < 0) return false;
    if (!have_id || t->entity == 0 || id != t->entity) return true;
    t->seen = true;
    *own = true;
    if (seq > t->last_input_seq) t->last_input_seq = seq;
    if (applied > t->inputs_applied) t->inputs_applied = applied;
    return true;
}

/* Every entity (field entities_field) of a Delta or Snapshot. */
static bool scan_entities(ts_track_t *t, const uint8_t *data, size_t len, uint32_t entities_field, bool *own)
{
    cursor_t c = {data, data + len};
    field_t f;
    int rc;
    while ((rc = next_field(&c, &f)) == 1)
        if (f.num == entities_field && f.wt == WT_LEN && !scan_entity(t, f.data, f.len, own)) return false;
    return rc == 0;
}

static bool scan_snapshot(ts_track_t *t, const uint8_t *data, size_t len, bool *own)
{
    cursor_t c = {data, data + len};
    field_t f;
    int rc;
    while ((rc = next_field(&c, &f)) == 1)
        if (f.num == SNAP_ENTITY && f.wt == WT_VARINT && f.v != 0) t->entity = f.v;
    if (rc < 0) return false;
    return scan_entities(t, data, len, SNAP_ENTITIES, own);
}

static bool scan_error(const uint8_t *data, size_t len, ts_track_frame_t *out)
{
    cursor_t c = {data, data + len};
    field_t f;
    int rc;
    while ((rc = next_field(&c, &f)) == 1) {
        if (f.num == ERR_CODE && f.wt == WT_VARINT) {
            out->error_code = (int)f.v;
        } else if (f.num == ERR_FATAL && f.wt == WT_VARINT) {
            out->error_fatal = f.v != 0;
        } else if (f.num == ERR_FIRST_SEQ && f.wt == WT_VARINT) {
            out->error_first_seq = f.v;
        } else if (f.num == ERR_LAST_SEQ && f.wt == WT_VARINT) {
            out->error_last_seq = f.v;
        } else if (f.num == ERR_MESSAGE && f.wt == WT_LEN) {
            out->error_msg = (const char *)f.data;
            out->error_msg_len = f.len;
        }
    }
    return rc == 0;
}

static int32_t zigzag32(uint64_t v)
{
    uint32_t u = (uint32_t)v;
    return (int32_t)((u >> 1) ^ (0u - (u & 1u)));
}

/* A CellId (its absent fields are 0, as protobuf's defaults). */
static bool scan_cell(const uint8_t *data, size_t len, ts_cell_t *out)
{
    cursor_t c = {data, data + len};
    field_t f;
    int rc;
    memset(out, 0, sizeof *out);
    while ((rc = next_field(&c, &f)) == 1) {
        if (f.wt != WT_VARINT) continue;
        if (f.num == CELL_WORLD) {
            out->world = (uint32_t)f.v;
        } else if (f.num == CELL_CX) {
            out->cx = zigzag32(f.v);
        } else if (f.num == CELL_CY) {
            out->cy = zigzag32(f.v);
        } else if (f.num == CELL_DEPTH) {
            if (f.v > UINT8_MAX) return false;
            out->depth = (uint8_t)f.v;
        } else if (f.num == CELL_SUB) {
            out->sub = f.v;
        }
    }
    return rc == 0;
}

/* A CellChanged's `to`; *have says whether it names one. */
static bool scan_cell_changed(const uint8_t *data, size_t len, ts_cell_t *to, bool *have)
{
    cursor_t c = {data, data + len};
    field_t f;
    int rc;
    while ((rc = next_field(&c, &f)) == 1)
        if (f.num == CC_TO && f.wt == WT_LEN) {
            if (!scan_cell(f.data, f.len, to)) return false;
            *have = true;
        }
    return rc == 0;
}

static void set_cell(ts_track_t *t, const ts_cell_t *cell)
{
    t->cell = *cell;
    t->has_cell = true;
    if (cell->depth > t->max_depth) t->max_depth = cell->depth;
}

/* After a whole frame: the own entity's cell as the frame tells it. */
static void follow_cell(ts_track_t *t, ts_track_frame_t *out, const ts_cell_t *frame_cell,
                        bool have_frame_cell, const ts_cell_t *to, bool have_to)
{
    if (t->entity == 0) return; /* not joined yet: no cell of its own */
    if (out->kind == TS_TRACK_CELL_CHANGED && have_to) {
        if (t->has_cell && ts_cell_eq(&t->cell, to)) {
            out->cell_same = true;
            t->cell_changed_same++;
        }
        set_cell(t, to);
        return;
    }
    if (!have_frame_cell) return;
    if (t->has_cell && !ts_cell_eq(&t->cell, frame_cell)) {
        out->cell_unannounced = true;
        t->cell_changed_unannounced++;
    }
    set_cell(t, frame_cell);
}

void ts_track_init(ts_track_t *t)
{
    memset(t, 0, sizeof *t);
}

ts_status_t ts_track_frame(ts_track_t *t, const uint8_t *payload, size_t len, ts_track_frame_t *out)
{
    memset(out, 0, sizeof *out);
    cursor_t c = {payload, payload + len};
    field_t f;
    int rc = 0;
    bool ok = true, have_frame_cell = false, have_to = false;
    ts_cell_t frame_cell, to;
    while (ok && (rc = next_field(&c, &f)) == 1) {
        if (f.wt != WT_LEN) continue;
        if (f.num == SF_CELL) {
            ok = scan_cell(f.data, f.len, &frame_cell);
            have_frame_cell = ok;
            continue;
        }
        if (f.num < SF_WELCOME || f.num > SF_ERROR) continue;
        switch (f.num) {
        case SF_WELCOME:
            out->kind = TS_TRACK_WELCOME;
            t->welcomes++;
            break;
        case SF_SNAPSHOT:
            out->kind = TS_TRACK_SNAPSHOT;
            t->snapshots++;
            ok = scan_snapshot(t, f.data, f.len, &out->own_shown);
            break;
        case SF_DELTA:
            out->kind = TS_TRACK_DELTA;
            t->deltas++;
            ok = scan_entities(t, f.data, f.len, DELTA_ENTITIES, &out->own_shown);
            break;
        case SF_CELL_CHANGED:
            out->kind = TS_TRACK_CELL_CHANGED;
            t->cell_changes++;
            ok = scan_cell_changed(f.data, f.len, &to, &have_to);
            break;
        case SF_PONG:
            out->kind = TS_TRACK_PONG;
            break;
        case SF_ERROR:
            out->kind = TS_TRACK_ERROR;
            t->errors++;
            ok = scan_error(f.data, f.len, out);
            break;
        }
    }
    if (!ok || rc != 0) return TS_ERR_MALFORMED;
    follow_cell(t, out, &frame_cell, have_frame_cell, &to, have_to);
    return TS_OK;
}
