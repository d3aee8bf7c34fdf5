/* What a gateway client reads from its ServerFrames: its entity from the
 * Snapshot that answers its Join, the highest last_input_seq and
 * inputs_applied any Delta or Snapshot showed for that entity (never for
 * someone else's, never lowered by an older state), Errors with their code
 * and message, the own entity's cell from the frames (a CellChanged to the
 * cell it already had, or a frame naming a new cell without a CellChanged,
 * counted), and bad bytes refused. Frames are packed by protobuf-c, so the
 * scanner is checked against the real encoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tessera/proto.h"
#include "track.h"

#define ME 0x0001000200000007ull

static uint8_t *pack(Tessera__V1__ServerFrame *f, size_t *len)
{
    *len = tessera__v1__server_frame__get_packed_size(f);
    uint8_t *buf = malloc(*len + 1);
    assert_non_null(buf);
    tessera__v1__server_frame__pack(f, buf);
    return buf;
}

static void entity(Tessera__V1__EntityState *e, uint64_t id, uint64_t seq, uint64_t applied)
{
    tessera__v1__entity_state__init(e);
    e->id = id;
    e->x = 12.5;
    e->y = -3.25;
    e->vx = 20;
    e->last_input_seq = seq;
    e->inputs_applied = applied;
    e->applied_window = 0xffff;
    e->name = (char *)"someone";
    e->hops = 2;
}

/* A Delta frame of n entities: ids 100.., with `me` (if not 0) in the middle
 * showing seq and applied. */
static uint8_t *delta_frame(size_t n, uint64_t me, uint64_t seq, uint64_t applied, size_t *len)
{
    Tessera__V1__EntityState *es = calloc(n, sizeof *es);
    Tessera__V1__EntityState **ptrs = calloc(n, sizeof *ptrs);
    assert_true(es && ptrs);
    for (size_t i = 0; i < n; i++) {
        entity(&es[i], 100 + i, 50 + i, 40 + i);
        ptrs[i] = &es[i];
    }
    if (me != 0) entity(&es[n / 2], me, seq, applied);
    Tessera__V1__Delta d = TESSERA__V1__DELTA__INIT;
    d.tick = 77;
    d.n_entities = n;
    d.entities = ptrs;
    uint64_t removed[] = {5, 6};
    d.n_removed = 2;
    d.removed = removed;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.seq = 9;
    f.epoch = 3;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA;
    f.delta = &d;
    uint8_t *buf = pack(&f, len);
    free(es);
    free(ptrs);
    return buf;
}

static uint8_t *snapshot_frame(uint64_t me, bool me_inside, size_t *len)
{
    Tessera__V1__EntityState a, b;
    entity(&a, 555, 9, 9);
    entity(&b, me, 2, 1);
    Tessera__V1__EntityState *ptrs[] = {&a, &b};
    Tessera__V1__Snapshot s = TESSERA__V1__SNAPSHOT__INIT;
    s.entity = me;
    s.n_entities = me_inside ? 2 : 1;
    s.entities = ptrs;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT;
    f.snapshot = &s;
    return pack(&f, len);
}

static void test_welcome_then_snapshot_names_the_entity(void **state)
{
    (void)state;
    ts_track_t t;
    ts_track_init(&t);
    ts_track_frame_t fr;

    Tessera__V1__Welcome w = TESSERA__V1__WELCOME__INIT;
    w.protocol_version = 1;
    w.cell_size = 100;
    w.gateway = (char *)"gw-1";
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME;
    f.welcome = &w;
    size_t len;
    uint8_t *buf = pack(&f, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    free(buf);
    assert_int_equal(fr.kind, TS_TRACK_WELCOME);
    assert_int_equal(t.entity, 0);

    /* a Delta before the entity is known shows nobody as "me" */
    buf = delta_frame(5, ME, 9, 9, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    free(buf);
    assert_int_equal(fr.kind, TS_TRACK_DELTA);
    assert_false(fr.own_shown);
    assert_false(t.seen);

    buf = snapshot_frame(ME, false, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    free(buf);
    assert_int_equal(fr.kind, TS_TRACK_SNAPSHOT);
    assert_int_equal(t.entity, ME);
    assert_false(fr.own_shown);

    buf = snapshot_frame(ME, true, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    free(buf);
    assert_true(fr.own_shown);
    assert_int_equal(t.last_input_seq, 2);
    assert_int_equal(t.inputs_applied, 1);
    assert_int_equal(t.welcomes, 1);
    assert_int_equal(t.snapshots, 2);
    assert_int_equal(t.deltas, 1);
}

static void test_delta_updates_only_the_own_entity_upwards(void **state)
{
    (void)state;
    ts_track_t t;
    ts_track_init(&t);
    t.entity = ME;
    ts_track_frame_t fr;
    size_t len;

    /* 600 entities: more than one gateway frame usually carries */
    uint8_t *buf = delta_frame(600, ME, 30, 29, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    free(buf);
    assert_true(fr.own_shown);
    assert_int_equal(t.last_input_seq, 30);
    assert_int_equal(t.inputs_applied, 29);

    /* others' states (with larger values) leave ours alone */
    buf = delta_frame(50, 0, 0, 0, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    free(buf);
    assert_false(fr.own_shown);
    assert_int_equal(t.last_input_seq, 30);
    assert_int_equal(t.inputs_applied, 29);

    /* an older state of ours (another cell's late delta) does not lower it */
    buf = delta_frame(3, ME, 25, 24, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    free(buf);
    assert_true(fr.own_shown);
    assert_int_equal(t.last_input_seq, 30);
    assert_int_equal(t.inputs_applied, 29);
    assert_int_equal(t.deltas, 3);
}

/* Protobuf messages concatenate: a Delta whose bytes are two Deltas spliced
 * together (as a gateway that encodes each cell once may send) is read as
 * one with every entity. */
static void test_spliced_delta(void **state)
{
    (void)state;
    ts_track_t t;
    ts_track_init(&t);
    t.entity = ME;
    ts_track_frame_t fr;

    Tessera__V1__EntityState a, b;
    entity(&a, 1, 1, 1);
    entity(&b, ME, 44, 40);
    Tessera__V1__EntityState *pa[] = {&a}, *pb[] = {&b};
    Tessera__V1__Delta d1 = TESSERA__V1__DELTA__INIT, d2 = TESSERA__V1__DELTA__INIT;
    d1.n_entities = 1;
    d1.entities = pa;
    d2.n_entities = 1;
    d2.entities = pb;
    uint8_t body[512];
    size_t n1 = tessera__v1__delta__pack(&d1, body);
    size_t n2 = tessera__v1__delta__pack(&d2, body + n1);
    uint8_t frame[600];
    size_t off = 0;
    frame[off++] = 0x08; /* seq = 5 */
    frame[off++] = 5;
    frame[off++] = (12 << 3) | 2; /* delta, LEN */
    assert_true(n1 + n2 < 128);
    frame[off++] = (uint8_t)(n1 + n2);
    memcpy(frame + off, body, n1 + n2);
    off += n1 + n2;
    frame[off++] = 0xa0; /* field 20, varint: a field this client does not know */
    frame[off++] = 0x01;
    frame[off++] = 1;
    assert_int_equal(ts_track_frame(&t, frame, off, &fr), TS_OK);
    assert_int_equal(fr.kind, TS_TRACK_DELTA);
    assert_true(fr.own_shown);
    assert_int_equal(t.last_input_seq, 44);
    assert_int_equal(t.inputs_applied, 40);
}

static void test_error_frame(void **state)
{
    (void)state;
    ts_track_t t;
    ts_track_init(&t);
    ts_track_frame_t fr;
    Tessera__V1__Error e = TESSERA__V1__ERROR__INIT;
    e.code = TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE;
    e.message = (char *)"inputs 7..9 could not be stored";
    e.fatal = false;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR;
    f.error = &e;
    size_t len;
    uint8_t *buf = pack(&f, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    assert_int_equal(fr.kind, TS_TRACK_ERROR);
    assert_int_equal(fr.error_code, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE);
    assert_false(fr.error_fatal);
    assert_int_equal(fr.error_msg_len, strlen(e.message));
    assert_memory_equal(fr.error_msg, e.message, fr.error_msg_len);
    assert_int_equal(t.errors, 1);
    free(buf);

    e.fatal = true;
    buf = pack(&f, &len);
    assert_int_equal(ts_track_frame(&t, buf, len, &fr), TS_OK);
    assert_true(fr.error_fatal);
    assert_int_equal(t.errors, 2);
    assert_int_equal(fr.error_first_seq, 0);
    free(buf);

    /* ERROR_INPUT_NOT_STORED names the client seq range (fields 4 and 5) */
    e.fatal = false;
    e.code = TS_TRACK_ERROR_INPUT_NOT_STORED;
    uint8_t body[256];
    size_t n = tessera__v1__error__pack(&e, body);
    body[n++] = (4 << 3) | 0;
    body[n++] = 7;
    body[n++] = (5 << 3) | 0;
    body[n++] = 0x96; /* 150 */
    body[n++] = 0x01;
    uint8_t frame[300];
    assert_true(n < 128);
    frame[0] = (15 << 3) | 2;
    frame[1] = (uint8_t)n;
    memcpy(frame + 2, body, n);
    assert_int_equal(ts_track_frame(&t, frame, n + 2, &fr), TS_OK);
    assert_int_equal(fr.kind, TS_TRACK_ERROR);
    assert_int_equal(fr.error_code, TS_TRACK_ERROR_INPUT_NOT_STORED);
    assert_int_equal(fr.error_first_seq, 7);
    assert_int_equal(fr.error_last_seq, 150);
    assert_int_equal(t.errors, 3);
}

/* A frame of the given kind naming `cell` as the player's cell. */
static uint8_t *cell_frame(const ts_cell_t *cell, bool snapshot, const ts_cell_t *cc_to, size_t *len)
{
    Tessera__V1__CellId pb, to_pb;
    ts_proto_cell_init(&pb, cell);
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.seq = 4;
    f.epoch = 8;
    f.cell = &pb;
    Tessera__V1__Snapshot s = TESSERA__V1__SNAPSHOT__INIT;
    Tessera__V1__Delta d = TESSERA__V1__DELTA__INIT;
    Tessera__V1__CellChanged cc = TESSERA__V1__CELL_CHANGED__INIT;
    if (cc_to != NULL) {
        ts_proto_cell_init(&to_pb, cc_to);
        cc.to = &to_pb;
        cc.from = &pb;
        cc.entity = ME;
        cc.resume_token = (char *)"token";
        f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_CELL_CHANGED;
        f.cell_changed = &cc;
        f.cell = &to_pb; /* the gateway names the new cell on the CellChanged itself */
    } else if (snapshot) {
        s.entity = ME;
        f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT;
        f.snapshot = &s;
    } else {
        d.tick = 5;
        f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA;
        f.delta = &d;
    }
    return pack(&f, len);
}

/* Builds that frame and reads it. */
static void feed(ts_track_t *t, const ts_cell_t *cell, bool snapshot, const ts_cell_t *cc_to,
                 ts_track_frame_t *fr)
{
    size_t len;
    uint8_t *buf = cell_frame(cell, snapshot, cc_to, &len);
    assert_int_equal(ts_track_frame(t, buf, len, fr), TS_OK);
    free(buf);
}

static void test_cell_follows_frames_and_cell_changed(void **state)
{
    (void)state;
    ts_track_t t;
    ts_track_init(&t);
    ts_track_frame_t fr;
    const ts_cell_t root = {.world = 3, .cx = -1, .cy = -2};
    const ts_cell_t kid = {.world = 3, .cx = -1, .cy = -2, .depth = 1, .sub = 2};
    const ts_cell_t grandkid = {.world = 3, .cx = -1, .cy = -2, .depth = 2, .sub = 9};
    const ts_cell_t other = {.world = 3, .cx = 0, .cy = -2};

    /* before the Snapshot names the entity, frames give it no cell */
    feed(&t, &other, false, NULL, &fr);
    assert_false(t.has_cell);
    feed(&t, &root, true, NULL, &fr);
    assert_int_equal(fr.kind, TS_TRACK_SNAPSHOT);
    assert_true(t.has_cell);
    assert_true(ts_cell_eq(&t.cell, &root));
    assert_int_equal(t.max_depth, 0);
    feed(&t, &root, false, NULL, &fr);
    assert_false(fr.cell_unannounced);

    /* the cell splits: CellChanged to a child, then Deltas naming it */
    feed(&t, &root, false, &kid, &fr);
    assert_int_equal(fr.kind, TS_TRACK_CELL_CHANGED);
    assert_false(fr.cell_same);
    assert_true(ts_cell_eq(&t.cell, &kid));
    feed(&t, &kid, false, NULL, &fr);
    feed(&t, &kid, false, &grandkid, &fr);
    assert_int_equal(t.max_depth, 2);
    assert_int_equal(t.cell_changes, 2);
    assert_int_equal(t.cell_changed_same, 0);
    assert_int_equal(t.cell_changed_unannounced, 0);

    /* a CellChanged to the cell it is already in: counted */
    feed(&t, &grandkid, false, &grandkid, &fr);
    assert_true(fr.cell_same);
    assert_int_equal(t.cell_changed_same, 1);
    assert_int_equal(t.cell_changes, 3);

    /* a merge back without a CellChanged: the Delta naming the root is counted */
    feed(&t, &root, false, NULL, &fr);
    assert_true(fr.cell_unannounced);
    assert_false(fr.cell_same);
    assert_int_equal(t.cell_changed_unannounced, 1);
    assert_true(ts_cell_eq(&t.cell, &root));
    assert_int_equal(t.max_depth, 2);
    feed(&t, &root, false, NULL, &fr);
    assert_int_equal(t.cell_changed_unannounced, 1);
}

static void test_bad_bytes_are_refused(void **state)
{
    (void)state;
    ts_track_t t;
    ts_track_init(&t);
    t.entity = ME;
    ts_track_frame_t fr;
    size_t len;
    uint8_t *buf = delta_frame(10, ME, 3, 2, &len);
    /* every truncation of a valid frame either still parses (it ends between
     * fields) or is refused; none reads past the end (ASan checks) */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        ts_track_t t2 = t;
        (void)ts_track_frame(&t2, copy, cut, &fr);
        free(copy);
    }
    /* cut inside the Delta's length: refused */
    assert_int_equal(ts_track_frame(&t, buf, len - 1, &fr), TS_ERR_MALFORMED);
    free(buf);

    const uint8_t bad_varint[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(ts_track_frame(&t, bad_varint, sizeof bad_varint, &fr), TS_ERR_MALFORMED);
    const uint8_t group[] = {(1 << 3) | 3};
    assert_int_equal(ts_track_frame(&t, group, sizeof group, &fr), TS_ERR_MALFORMED);
    const uint8_t long_len[] = {(12 << 3) | 2, 0x7f, 0x00};
    assert_int_equal(ts_track_frame(&t, long_len, sizeof long_len, &fr), TS_ERR_MALFORMED);
    /* an empty frame is valid protobuf with no payload */
    assert_int_equal(ts_track_frame(&t, long_len, 0, &fr), TS_OK);
    assert_int_equal(fr.kind, TS_TRACK_OTHER);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_welcome_then_snapshot_names_the_entity),
        cmocka_unit_test(test_delta_updates_only_the_own_entity_upwards),
        cmocka_unit_test(test_spliced_delta),
        cmocka_unit_test(test_error_frame),
        cmocka_unit_test(test_cell_follows_frames_and_cell_changed),
        cmocka_unit_test(test_bad_bytes_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
