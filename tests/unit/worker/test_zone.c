/* Unit tests of services/worker/zone.c: the exactly-once rules of a cell. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tessera/util.h"
#include "zone.h"

static const ts_world_t WORLD = {.id = 0, .cell_size = 100, .x0 = -2, .y0 = -2, .width = 4, .height = 4};

static ts_zone_t *zone_at(int cx, int cy)
{
    ts_cell_t c = {.world = 0, .cx = cx, .cy = cy};
    ts_zone_t *z = NULL;
    assert_int_equal(ts_zone_create(&z, &c, 1, &WORLD, 50), TS_OK);
    return z;
}

static ts_input_t move(uint64_t entity, uint64_t seq, double dx, double dy)
{
    ts_input_t in = {.entity = entity, .seq = seq, .kind = TS_INPUT_MOVE, .a = dx, .b = dy};
    return in;
}

static ts_input_t join(uint64_t entity, uint64_t seq, double x, double y)
{
    ts_input_t in = {.entity = entity, .seq = seq, .kind = TS_INPUT_JOIN, .a = x, .b = y};
    return in;
}

static ts_entity_t *get(ts_zone_t *z, uint64_t id)
{
    return ts_map_get(&z->entities, id);
}

static void loop_departures(ts_zone_t *z, uint64_t seq, uint64_t tick);
static Tessera__V1__InputBatch *take_outbox(ts_zone_t *z, size_t i);

#define APPLY(e, s) assert_int_equal(ts_entity_accept_seq((e), (s)), TS_SEQ_APPLY)
#define DUP(e, s) assert_int_equal(ts_entity_accept_seq((e), (s)), TS_SEQ_DUPLICATE)

static void test_seq_window(void **state)
{
    (void)state;
    ts_entity_t e = {0};
    APPLY(&e, 1);
    DUP(&e, 1);
    APPLY(&e, 5);
    /* 2..4 arrive late (forwarded): each applies once */
    APPLY(&e, 3);
    DUP(&e, 3);
    APPLY(&e, 2);
    APPLY(&e, 4);
    DUP(&e, 4);
    DUP(&e, 5);
    DUP(&e, 1);
    /* jumps across word boundaries keep what was applied and what was not */
    APPLY(&e, 69);
    DUP(&e, 5);
    APPLY(&e, 6);
    APPLY(&e, 300);
    DUP(&e, 69);
    DUP(&e, 6);
    APPLY(&e, 7);
    APPLY(&e, 200);
    DUP(&e, 200);
    /* a gap of 511 behind the newest is still inside the window */
    APPLY(&e, 600);
    APPLY(&e, 600 - 511);
    DUP(&e, 300);
    /* beyond the window: refused as too old rather than risk a double apply */
    assert_int_equal(ts_entity_accept_seq(&e, 600 - 513), TS_SEQ_TOO_OLD);
    APPLY(&e, 5000);
    assert_int_equal(ts_entity_accept_seq(&e, 600), TS_SEQ_TOO_OLD);
}

/* The whole window survives a transfer (protobuf round trip). */
static void test_window_travels(void **state)
{
    (void)state;
    ts_zone_t *a = zone_at(-1, 0);
    ts_input_t j = join(3, 1, -1, 50);
    ts_zone_apply_input(a, &j, 1);
    for (uint64_t s = 2; s <= 400; s += 2) {
        ts_input_t m = move(3, s, 0, 0);
        ts_zone_apply_input(a, &m, 1);
    }
    ts_input_t go = move(3, 401, 40, 0);
    ts_zone_apply_input(a, &go, 1);
    ts_zone_step(a, 0.05, 2);
    loop_departures(a, 10, 2);
    Tessera__V1__InputBatch *t = take_outbox(a, 0);
    assert_true(t->transfers[0]->entity->n_applied_window_ext > 0);
    ts_zone_t *b = zone_at(0, 0);
    assert_true(ts_zone_apply_batch(b, 11, t, 2));
    tessera__v1__input_batch__free_unpacked(t, NULL);
    ts_entity_t *e = get(b, 3);
    assert_non_null(e);
    /* the odd ones were never applied: late, they apply once; the even ones are duplicates */
    for (uint64_t s = 3; s < 400; s += 2) {
        ts_input_t late = move(3, s, 0, 0);
        ts_zone_apply_input(b, &late, 3);
    }
    for (uint64_t s = 2; s <= 400; s += 2) {
        ts_input_t again = move(3, s, 0, 0);
        ts_zone_apply_input(b, &again, 3);
    }
    assert_int_equal(e->inputs_applied, 401);
    assert_int_equal(b->stats.duplicates, 200);
    assert_int_equal(b->stats.dropped, 0);
    ts_zone_destroy(a);
    ts_zone_destroy(b);
}

static void test_join_move_step(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(0, 0);
    ts_input_t j = join(7, 1, 10, 10);
    ts_zone_apply_input(z, &j, 1);
    ts_input_t m = move(7, 2, 1000, 0); /* clamped to max speed 50 */
    ts_zone_apply_input(z, &m, 1);
    ts_zone_apply_input(z, &m, 1); /* duplicate */
    ts_entity_t *e = get(z, 7);
    assert_non_null(e);
    assert_int_equal(e->inputs_applied, 2);
    assert_int_equal(e->last_input_seq, 2);
    assert_true(e->vx == 50.0);
    assert_int_equal(z->stats.duplicates, 1);
    ts_zone_step(z, 0.1, 2);
    assert_true(e->x > 14.9 && e->x < 15.1);
    ts_zone_destroy(z);
}

/* A Move that arrives after a newer one (forwarded from a cell the entity
 * left, overtaken by a Move sent straight here) is applied once but does not
 * undo the newer velocity. */
static void test_late_move_keeps_newer_velocity(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(0, 0);
    ts_input_t j = join(7, 1, 10, 10);
    ts_zone_apply_input(z, &j, 1);
    ts_input_t stop = move(7, 5, 0, 0);
    ts_zone_apply_input(z, &stop, 1);
    ts_input_t late = move(7, 4, 20, 0);
    ts_zone_apply_input(z, &late, 1);
    ts_entity_t *e = get(z, 7);
    assert_int_equal(e->inputs_applied, 3);
    assert_true(e->vx == 0.0 && e->vy == 0.0);
    ts_zone_apply_input(z, &late, 1); /* and once only */
    assert_int_equal(e->inputs_applied, 3);
    ts_input_t go = move(7, 6, 0, 10);
    ts_zone_apply_input(z, &go, 1);
    assert_true(e->vx == 0.0 && e->vy == 10.0);
    ts_zone_destroy(z);
}

static void test_stream_seq_replay_skipped(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(0, 0);
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    Tessera__V1__Input in = TESSERA__V1__INPUT__INIT;
    Tessera__V1__JoinInput jn = TESSERA__V1__JOIN_INPUT__INIT;
    Tessera__V1__Input *inp[1] = {&in};
    in.entity = 9;
    in.seq = 1;
    in.kind_case = TESSERA__V1__INPUT__KIND_JOIN;
    in.join = &jn;
    jn.x = 5;
    jn.y = 5;
    b.n_inputs = 1;
    b.inputs = inp;
    assert_true(ts_zone_apply_batch(z, 10, &b, 1));
    assert_false(ts_zone_apply_batch(z, 10, &b, 1));
    assert_false(ts_zone_apply_batch(z, 3, &b, 1));
    assert_int_equal(z->last_applied_seq, 10);
    assert_int_equal(get(z, 9)->inputs_applied, 1);
    /* the same client input again under a new stream sequence (a retried
     * publish that escaped de-duplication) is still applied once */
    assert_true(ts_zone_apply_batch(z, 11, &b, 1));
    assert_int_equal(get(z, 9)->inputs_applied, 1);
    ts_zone_destroy(z);
}

/* Publishes the zone's queued Departures "into its own stream" at seq. */
static void loop_departures(ts_zone_t *z, uint64_t seq, uint64_t tick)
{
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_departures(z, &buf, &len), TS_OK);
    assert_non_null(buf);
    Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(ib);
    z->deps_in_flight = z->ndeps;
    ts_zone_departures_done(z);
    assert_true(ts_zone_apply_batch(z, seq, ib, tick));
    tessera__v1__input_batch__free_unpacked(ib, NULL);
}

static Tessera__V1__InputBatch *take_outbox(ts_zone_t *z, size_t i)
{
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_outbox(z, i, &buf, &len), TS_OK);
    Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(ib);
    return ib;
}

/* Walks an entity from cell (-1,0) into (0,0) through its Departure and the
 * outbox, with an input that reaches the old cell after the crossing. */
static void test_crossing_forward_exactly_once(void **state)
{
    (void)state;
    ts_zone_t *a = zone_at(-1, 0);
    ts_zone_t *b = zone_at(0, 0);
    ts_input_t j = join(42, 1, -1, 50);
    ts_zone_apply_input(a, &j, 1);
    ts_input_t m = move(42, 2, 40, 0);
    ts_zone_apply_input(a, &m, 1);
    ts_zone_step(a, 0.05, 2); /* x = -1 + 2 = 1: outside, a Departure is queued */
    assert_non_null(get(a, 42));
    assert_int_equal(a->ndeps, 1);
    ts_zone_step(a, 0.05, 3); /* only one Departure per crossing */
    assert_int_equal(a->ndeps, 1);
    loop_departures(a, 50, 3);
    assert_null(get(a, 42));
    assert_int_equal(a->nout, 1);
    assert_int_equal(a->out[0].dest.cx, 0);
    assert_int_equal(a->out[0].marker_seq, 50);
    assert_int_equal(a->out[0].ntransfers, 1);

    /* a late input to the old cell is forwarded, not dropped */
    ts_input_t late = move(42, 3, 0, 10);
    ts_zone_apply_input(a, &late, 4);
    assert_int_equal(a->stats.forwarded, 1);

    Tessera__V1__InputBatch *ib = take_outbox(a, 0);
    assert_int_equal(ib->n_transfers, 1);
    assert_int_equal(ib->transfers[0]->entity->hops, 1);
    assert_true(ts_zone_apply_batch(b, 100, ib, 4));
    /* the same batch again under another stream seq: no double apply */
    assert_true(ts_zone_apply_batch(b, 101, ib, 4));
    tessera__v1__input_batch__free_unpacked(ib, NULL);
    ib = take_outbox(a, 1);
    assert_int_equal(ib->n_inputs, 1);
    assert_true(ts_zone_apply_batch(b, 102, ib, 4));
    tessera__v1__input_batch__free_unpacked(ib, NULL);

    ts_entity_t *e = get(b, 42);
    assert_non_null(e);
    assert_true(e->x >= 0);
    assert_int_equal(e->inputs_applied, 3); /* join + move + late move */
    assert_int_equal(e->last_input_seq, 3);
    assert_true(e->vy == 10.0);
    assert_int_equal(b->stats.transfers_in, 1);

    /* the departure is announced in the old cell's delta, with its
     * destination, once its Transfer is stored (not before) */
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_delta(a, 4, false, "w1", &bufs, &lens, &nparts), TS_OK);
    assert_int_equal(nparts, 0); /* nothing changed, nothing announced yet */
    ts_zone_outbox_done(a, 0);
    assert_int_equal(ts_zone_pack_delta(a, 4, false, "w1", &bufs, &lens, &nparts), TS_OK);
    assert_int_equal(nparts, 1);
    Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, lens[0], bufs[0]);
    free(bufs[0]);
    free(bufs);
    free(lens);
    assert_non_null(d);
    assert_int_equal(d->n_left, 1);
    assert_int_equal(d->left[0]->id, 42);
    assert_non_null(d->left[0]->to);
    assert_int_equal(d->left[0]->to->cx, 0);
    tessera__v1__state_delta__free_unpacked(d, NULL);
    ts_zone_destroy(a);
    ts_zone_destroy(b);
}

/* A new owner that loads a checkpoint and replays the stream makes the same
 * apply / forward decisions as the old one, and the destination drops the
 * transfer it already has. */
static void test_checkpoint_replay_is_exactly_once(void **state)
{
    (void)state;
    ts_zone_t *a = zone_at(-1, 0);
    ts_zone_t *b = zone_at(0, 0);
    ts_input_t j = join(8, 1, -1, 50);
    ts_zone_apply_input(a, &j, 1);
    a->last_applied_seq = 10;

    uint8_t *cpbuf;
    size_t cplen;
    assert_int_equal(ts_zone_pack_checkpoint(a, 1, "w1", false, &cpbuf, &cplen), TS_OK);

    /* the stream after the checkpoint: move (11), departure (12), move (13) */
    Tessera__V1__InputBatch mb = TESSERA__V1__INPUT_BATCH__INIT;
    Tessera__V1__Input in = TESSERA__V1__INPUT__INIT;
    Tessera__V1__MoveInput mv = TESSERA__V1__MOVE_INPUT__INIT;
    Tessera__V1__Input *inp[1] = {&in};
    in.entity = 8;
    in.kind_case = TESSERA__V1__INPUT__KIND_MOVE;
    in.move = &mv;
    mv.dx = 40;
    mb.n_inputs = 1;
    mb.inputs = inp;
    in.seq = 2;
    assert_true(ts_zone_apply_batch(a, 11, &mb, 2));
    ts_zone_step(a, 0.05, 2);
    uint8_t *depbuf;
    size_t deplen;
    assert_int_equal(ts_zone_pack_departures(a, &depbuf, &deplen), TS_OK);
    Tessera__V1__InputBatch *dep = tessera__v1__input_batch__unpack(NULL, deplen, depbuf);
    free(depbuf);
    a->deps_in_flight = a->ndeps;
    ts_zone_departures_done(a);
    assert_true(ts_zone_apply_batch(a, 12, dep, 3));
    in.seq = 3;
    assert_true(ts_zone_apply_batch(a, 13, &mb, 3));
    Tessera__V1__InputBatch *t1 = take_outbox(a, 0);
    Tessera__V1__InputBatch *f1 = take_outbox(a, 1);
    assert_true(ts_zone_apply_batch(b, 100, t1, 3));
    assert_true(ts_zone_apply_batch(b, 101, f1, 3));
    assert_int_equal(get(b, 8)->inputs_applied, 3);

    /* the old owner dies; a new one loads the checkpoint and replays 11..13 */
    ts_zone_t *a2 = zone_at(-1, 0);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, cplen, cpbuf);
    free(cpbuf);
    assert_int_equal(ts_zone_load_checkpoint(a2, cp, false, 1), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    assert_int_equal(a2->last_applied_seq, 10);
    in.seq = 2;
    assert_true(ts_zone_apply_batch(a2, 11, &mb, 5));
    assert_true(ts_zone_apply_batch(a2, 12, dep, 5));
    in.seq = 3;
    assert_true(ts_zone_apply_batch(a2, 13, &mb, 5));
    assert_null(get(a2, 8));
    assert_int_equal(a2->stats.forwarded, 1);
    Tessera__V1__InputBatch *t2 = take_outbox(a2, 0);
    Tessera__V1__InputBatch *f2 = take_outbox(a2, 1);
    assert_true(ts_zone_apply_batch(b, 102, t2, 5));
    assert_true(ts_zone_apply_batch(b, 103, f2, 5));
    assert_int_equal(get(b, 8)->inputs_applied, 3);
    assert_int_equal(b->stats.transfers_in, 1);

    /* the entity moves on from b; a replayed transfer into b stays dropped */
    ts_zone_step(b, 5.0, 6);
    assert_int_equal(b->ndeps, 1);
    loop_departures(b, 104, 6);
    assert_null(get(b, 8));
    assert_true(ts_zone_apply_batch(b, 105, t2, 6));
    assert_null(get(b, 8));

    tessera__v1__input_batch__free_unpacked(dep, NULL);
    tessera__v1__input_batch__free_unpacked(t1, NULL);
    tessera__v1__input_batch__free_unpacked(f1, NULL);
    tessera__v1__input_batch__free_unpacked(t2, NULL);
    tessera__v1__input_batch__free_unpacked(f2, NULL);
    ts_zone_destroy(a);
    ts_zone_destroy(a2);
    ts_zone_destroy(b);
}

static int player_events;
static void count_player(void *ud, void *zone, ts_entity_t *e)
{
    (void)ud;
    (void)zone;
    (void)e;
    player_events++;
}

/* Players: a Detach stops the entity for its own connection only, an Attach
 * hands it to a new one; neither touches the exactly-once window; the
 * entity's gateway, connection and detachment travel in checkpoints. */
static void test_detach_attach(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(0, 0);
    z->player_hook = count_player;
    player_events = 0;
    ts_input_t j = join(5, 1, 10, 10);
    j.gateway = 1;
    j.gateway_instance = 77;
    j.session = 3;
    ts_zone_apply_input(z, &j, 1);
    ts_input_t m = move(5, 2, 4, 0);
    ts_zone_apply_input(z, &m, 1);
    ts_entity_t *e = get(z, 5);
    assert_int_equal(e->gateway, 1);
    assert_int_equal(e->session, 3);
    assert_int_equal(player_events, 1);

    ts_input_t d = {.entity = 5, .kind = TS_INPUT_DETACH, .session = 9, .time_us = 1000};
    ts_zone_apply_input(z, &d, 2); /* another connection's: ignored */
    assert_true(e->vx == 4 && e->detached_us == 0);
    d.session = 3;
    ts_zone_apply_input(z, &d, 2);
    assert_true(e->vx == 0 && e->vy == 0);
    assert_int_equal(e->detached_us, 1000);
    assert_int_equal(e->last_input_seq, 2);
    assert_int_equal(e->inputs_applied, 2);
    assert_int_equal(player_events, 2);

    ts_input_t a = {.entity = 5, .kind = TS_INPUT_ATTACH, .gateway = 2, .gateway_instance = 88, .session = 4};
    ts_zone_apply_input(z, &a, 3);
    assert_int_equal(e->detached_us, 0);
    assert_int_equal(e->gateway, 2);
    assert_int_equal(e->gateway_instance, 88);
    assert_int_equal(e->session, 4);
    ts_zone_apply_input(z, &d, 3); /* the old connection's late Detach */
    assert_int_equal(e->detached_us, 0);
    /* the player's numbering goes on: seq 2 was applied, 3 was not */
    m.seq = 2;
    ts_zone_apply_input(z, &m, 3);
    assert_int_equal(e->inputs_applied, 2);
    m.seq = 3;
    ts_zone_apply_input(z, &m, 3);
    assert_int_equal(e->inputs_applied, 3);

    d.session = 4;
    d.time_us = 2000;
    ts_zone_apply_input(z, &d, 4);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_checkpoint(z, 4, "w1", false, &buf, &len), TS_OK);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(cp);
    ts_zone_t *z2 = zone_at(0, 0);
    assert_int_equal(ts_zone_load_checkpoint(z2, cp, false, 4), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    ts_entity_t *e2 = get(z2, 5);
    assert_non_null(e2);
    assert_int_equal(e2->gateway, 2);
    assert_int_equal(e2->gateway_instance, 88);
    assert_int_equal(e2->session, 4);
    assert_int_equal(e2->detached_us, 2000);
    assert_int_equal(e2->last_input_seq, 3);

    /* the grace is over: despawned as a Leave would */
    size_t left = z2->nleft;
    ts_zone_despawn(z2, e2);
    assert_null(get(z2, 5));
    assert_int_equal(z2->nleft, left + 1);
    ts_zone_destroy(z);
    ts_zone_destroy(z2);
}

/* PreCopy + Diff rebuild the zone exactly. */
static void test_precopy_diff(void **state)
{
    (void)state;
    ts_zone_t *src = zone_at(0, 0);
    for (uint64_t id = 1; id <= 10; id++) {
        ts_input_t j = join(id, 1, (double)id * 5, 50);
        ts_zone_apply_input(src, &j, 1);
    }
    src->last_applied_seq = 20;
    ts_zone_mark_precopy(src);
    uint8_t *pre;
    size_t prelen;
    assert_int_equal(ts_zone_pack_checkpoint(src, 1, "w1", false, &pre, &prelen), TS_OK);
    /* after the PreCopy: one moves, one leaves, one joins */
    ts_input_t m = move(3, 2, 0, 5);
    ts_zone_apply_input(src, &m, 2);
    ts_input_t lv = {.entity = 4, .seq = 2, .kind = TS_INPUT_LEAVE};
    ts_zone_apply_input(src, &lv, 2);
    ts_input_t j = join(11, 1, 90, 90);
    ts_zone_apply_input(src, &j, 2);
    src->last_applied_seq = 25;
    uint8_t *diff;
    size_t difflen;
    assert_int_equal(ts_zone_pack_checkpoint(src, 2, "w1", true, &diff, &difflen), TS_OK);
    Tessera__V1__Checkpoint *dcp = tessera__v1__checkpoint__unpack(NULL, difflen, diff);
    assert_non_null(dcp);
    assert_int_equal(dcp->n_entities, 2); /* 3 moved, 11 joined */
    assert_int_equal(dcp->n_removed, 1);

    ts_zone_t *dst = zone_at(0, 0);
    Tessera__V1__Checkpoint *pcp = tessera__v1__checkpoint__unpack(NULL, prelen, pre);
    assert_int_equal(ts_zone_load_checkpoint(dst, pcp, false, 1), TS_OK);
    assert_int_equal(ts_zone_load_checkpoint(dst, dcp, true, 2), TS_OK);
    assert_int_equal(dst->last_applied_seq, 25);
    assert_int_equal(ts_zone_entities(dst), 10);
    assert_null(get(dst, 4));
    assert_non_null(get(dst, 11));
    assert_true(get(dst, 3)->vy == 5.0);
    assert_int_equal(get(dst, 3)->inputs_applied, 2);
    tessera__v1__checkpoint__free_unpacked(pcp, NULL);
    tessera__v1__checkpoint__free_unpacked(dcp, NULL);
    free(pre);
    free(diff);
    ts_zone_destroy(src);
    ts_zone_destroy(dst);
}

/* An id that left the game and joined again is a new incarnation: its
 * transfers are not mistaken for stale ones of the old incarnation. */
static void test_rejoin_is_new_incarnation(void **state)
{
    (void)state;
    ts_zone_t *a = zone_at(-1, 0);
    ts_zone_t *b = zone_at(0, 0);
    Tessera__V1__InputBatch jb = TESSERA__V1__INPUT_BATCH__INIT;
    Tessera__V1__Input in = TESSERA__V1__INPUT__INIT;
    Tessera__V1__JoinInput jn = TESSERA__V1__JOIN_INPUT__INIT;
    Tessera__V1__Input *inp[1] = {&in};
    in.entity = 77;
    in.seq = 1;
    in.kind_case = TESSERA__V1__INPUT__KIND_JOIN;
    in.join = &jn;
    jn.x = -1;
    jn.y = 50;
    jb.n_inputs = 1;
    jb.inputs = inp;

    /* first life: a -> b (hops 1) -> back to a (hops 2), then it leaves the game */
    assert_true(ts_zone_apply_batch(a, 10, &jb, 1));
    ts_input_t m = move(77, 2, 40, 0);
    ts_zone_apply_input(a, &m, 1);
    ts_zone_step(a, 0.05, 1);
    loop_departures(a, 11, 1);
    Tessera__V1__InputBatch *t = take_outbox(a, 0);
    assert_true(ts_zone_apply_batch(b, 12, t, 1));
    tessera__v1__input_batch__free_unpacked(t, NULL);
    ts_input_t back = move(77, 3, -40, 0);
    ts_zone_apply_input(b, &back, 2);
    ts_zone_step(b, 0.1, 2);
    loop_departures(b, 13, 2);
    t = take_outbox(b, 0);
    ts_zone_outbox_done(a, 0);
    ts_zone_outbox_clear(a);
    assert_true(ts_zone_apply_batch(a, 14, t, 2));
    tessera__v1__input_batch__free_unpacked(t, NULL);
    assert_int_equal(get(a, 77)->hops, 2);
    ts_input_t lv = {.entity = 77, .seq = 4, .kind = TS_INPUT_LEAVE};
    ts_zone_apply_input(a, &lv, 3);
    assert_null(get(a, 77));

    /* second life with the same id: a -> b at hops 1, below b's record (2) */
    assert_true(ts_zone_apply_batch(a, 20, &jb, 4));
    ts_zone_apply_input(a, &m, 4);
    ts_zone_step(a, 0.05, 4);
    loop_departures(a, 21, 4);
    t = take_outbox(a, 0);
    assert_int_equal(t->transfers[0]->entity->hops, 1);
    assert_true(ts_zone_apply_batch(b, 22, t, 4));
    tessera__v1__input_batch__free_unpacked(t, NULL);
    ts_entity_t *e = get(b, 77);
    assert_non_null(e); /* not mistaken for a stale transfer */
    assert_int_equal(e->incarnation, 20);
    assert_int_equal(e->inputs_applied, 2);
    ts_zone_destroy(a);
    ts_zone_destroy(b);
}

/* A forward entry created before a transfer to the same cell must not be
 * published before it: the forwarded input of the transferred entity would
 * reach the destination before the entity does. */
static void test_transfers_precede_forwards(void **state)
{
    (void)state;
    ts_zone_t *a = zone_at(-1, 0);
    for (uint64_t id = 1; id <= 2; id++) {
        ts_input_t j = join(id, 1, id == 1 ? -1 : -1.5, 50);
        ts_zone_apply_input(a, &j, 1);
        ts_input_t m = move(id, 2, 40, 0);
        ts_zone_apply_input(a, &m, 1);
    }
    ts_zone_step(a, 0.03, 2); /* only entity 1 crosses */
    assert_int_equal(a->ndeps, 1);
    loop_departures(a, 10, 2);
    ts_zone_outbox_clear(a);
    a->nout = 0; /* its transfer went out */

    /* next tick: a late input for 1 (forward entry first), then 2 departs */
    ts_input_t late1 = move(1, 3, 1, 1);
    ts_zone_apply_input(a, &late1, 3);
    ts_zone_step(a, 0.03, 3);
    assert_int_equal(a->ndeps, 1);
    loop_departures(a, 11, 3);
    ts_input_t late2 = move(2, 3, 1, 1);
    ts_zone_apply_input(a, &late2, 3);
    assert_int_equal(a->nout, 2);
    assert_int_equal(a->out[0].marker_seq, 11);
    assert_int_equal(a->out[0].ntransfers, 1);
    assert_int_equal(a->out[1].marker_seq, 0);
    assert_int_equal(a->out[1].ninputs, 2);

    ts_zone_destroy(a);
}

/* What the source decided but did not publish moves with the Diff. */
static void test_diff_carries_outbox(void **state)
{
    (void)state;
    ts_zone_t *src = zone_at(-1, 0);
    ts_input_t j = join(5, 1, -1, 50);
    ts_zone_apply_input(src, &j, 1);
    ts_input_t m = move(5, 2, 40, 0);
    ts_zone_apply_input(src, &m, 1);
    src->last_applied_seq = 9;
    ts_zone_mark_precopy(src);
    ts_zone_step(src, 0.05, 2);
    loop_departures(src, 10, 2); /* departs: transfer in the outbox, a `left` to announce */
    ts_input_t late = move(5, 3, 0, 1);
    ts_zone_apply_input(src, &late, 2); /* forwarded */
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_checkpoint(src, 2, "w1", true, &buf, &len), TS_OK);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(cp);
    assert_int_equal(cp->n_outbox, 2);
    assert_int_equal(cp->n_left, 0); /* announced by whoever stores the transfer */
    assert_int_equal(cp->n_removed, 1);

    ts_zone_t *dst = zone_at(-1, 0);
    assert_int_equal(ts_zone_load_checkpoint(dst, cp, true, 2), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    assert_int_equal(dst->last_applied_seq, 10);
    assert_int_equal(dst->nout, 2);
    assert_int_equal(dst->out[0].marker_seq, 10);
    assert_int_equal(dst->out[0].ntransfers, 1);
    assert_int_equal(dst->out[0].transfers[0].id, 5);
    assert_int_equal(dst->out[1].ninputs, 1);
    assert_int_equal(dst->out[1].inputs[0].seq, 3);
    assert_int_equal(dst->nleft, 0);
    ts_zone_outbox_done(dst, 0); /* the new owner stored the transfer: now it is announced */
    assert_int_equal(dst->nleft, 1);
    assert_int_equal(dst->left[0].id, 5);
    ts_zone_outbox_clear(dst);
    assert_int_equal(dst->nout, 1);
    assert_null(get(dst, 5));
    /* and late input for it at the new owner is forwarded too */
    ts_input_t later = move(5, 4, 0, 2);
    ts_zone_apply_input(dst, &later, 3);
    assert_int_equal(dst->out[0].ninputs, 2);
    ts_zone_destroy(src);
    ts_zone_destroy(dst);
}

/* Once an outbox entry has been published it is sealed: a retry sends the
 * same bytes under the same message id, so nothing decided later may join
 * it (JetStream would drop the retry as a duplicate if the first attempt was
 * stored, losing what was added). */
static void test_published_entry_is_sealed(void **state)
{
    (void)state;
    ts_zone_t *a = zone_at(-1, 0);
    ts_input_t j = join(5, 1, -1, 50);
    ts_zone_apply_input(a, &j, 1);
    ts_input_t m = move(5, 2, 40, 0);
    ts_zone_apply_input(a, &m, 1);
    ts_zone_step(a, 0.05, 2);
    loop_departures(a, 7, 2);
    assert_null(get(a, 5));
    ts_input_t late = move(5, 3, 0, 1);
    ts_zone_apply_input(a, &late, 2);
    assert_int_equal(a->nout, 2);
    a->out[1].id_seq = 42; /* the forward entry went out */
    a->out[1].pub_seq = 43;
    ts_input_t later = move(5, 4, 0, 2);
    ts_zone_apply_input(a, &later, 3);
    assert_int_equal(a->nout, 3); /* a new entry, behind the sealed one */
    assert_int_equal(a->out[1].ninputs, 1);
    assert_int_equal(a->out[2].ninputs, 1);
    assert_int_equal(a->out[2].inputs[0].seq, 4);
    assert_int_equal(a->nleft, 0);
    ts_zone_outbox_done(a, 0);
    ts_zone_outbox_done(a, 1);
    ts_zone_outbox_clear(a);
    assert_int_equal(a->nout, 1);
    assert_int_equal(a->out[0].inputs[0].seq, 4);
    assert_int_equal(a->nleft, 1);
    ts_zone_destroy(a);
}

static void test_leave_and_world_edge(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(-2, -2);
    ts_input_t j = join(1, 1, -199, -199);
    ts_zone_apply_input(z, &j, 1);
    ts_input_t m = move(1, 2, -50, -50);
    ts_zone_apply_input(z, &m, 1);
    for (int t = 0; t < 20; t++)
        ts_zone_step(z, 0.05, (uint64_t)t);
    ts_entity_t *e = get(z, 1);
    assert_non_null(e); /* bounced back inside, never left the world */
    assert_true(e->x >= -200 && e->y >= -200);
    assert_true(e->vx > 0 && e->vy > 0);
    ts_input_t lv = {.entity = 1, .seq = 3, .kind = TS_INPUT_LEAVE};
    ts_zone_apply_input(z, &lv, 30);
    assert_null(get(z, 1));
    assert_int_equal(ts_zone_entities(z), 0);
    ts_input_t stray = move(1, 4, 1, 1); /* after leave: dropped, not resurrected */
    ts_zone_apply_input(z, &stray, 31);
    assert_null(get(z, 1));
    assert_int_equal(z->stats.dropped, 1);
    ts_zone_destroy(z);
}

/* A cell of 50,000 entities: its keyframe, its checkpoint and its handover
 * PreCopy + Diff each go in parts that fit a NATS message (1 MB), and a new
 * zone loaded from the parts holds exactly the same entities, windows
 * included. */
enum { BIG = 50000 };
static const size_t MAX_PAYLOAD = 1024 * 1024;

static ts_zone_t *big_zone(void)
{
    ts_zone_t *z = zone_at(0, 0);
    for (uint64_t id = 1; id <= BIG; id++) {
        ts_input_t j = join(id, 1, (double)(id % 100) + 0.25, (double)((id / 100) % 100) + 0.25);
        ts_zone_apply_input(z, &j, 1);
        for (uint64_t s = 2; s <= 1 + id % 5; s++) {
            ts_input_t m = move(id, s * 3, 0, 0); /* gaps: the window has bits */
            ts_zone_apply_input(z, &m, 1);
        }
    }
    z->last_applied_seq = 777;
    return z;
}

static void test_big_cell_keyframe_in_parts(void **state)
{
    (void)state;
    ts_zone_t *z = big_zone();
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_delta(z, 9, true, "w1", &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts >= BIG / TS_ZONE_STATE_PART_ENTITIES);
    ts_map_t seen;
    ts_map_init(&seen);
    for (size_t i = 0; i < nparts; i++) {
        assert_true(lens[i] < MAX_PAYLOAD);
        Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, lens[i], bufs[i]);
        assert_non_null(d);
        assert_true(d->full);
        assert_int_equal(d->part, i);
        assert_int_equal(d->parts, nparts);
        assert_int_equal(d->tick, 9);
        for (size_t k = 0; k < d->n_entities; k++) {
            assert_int_equal(d->entities[k]->applied_window, 0); /* gateways get no window */
            assert_int_equal(d->entities[k]->n_applied_window_ext, 0);
            assert_null(ts_map_get(&seen, d->entities[k]->id));
            ts_map_put(&seen, d->entities[k]->id, (void *)1);
        }
        tessera__v1__state_delta__free_unpacked(d, NULL);
    }
    assert_int_equal(seen.len, BIG);
    ts_map_free(&seen);
    ts_zone_free_parts(bufs, lens, nparts);
    ts_zone_destroy(z);
}

/* The hand-written wire encoding of EntityState (tessera/pbw.h) is byte for
 * byte what protobuf-c packs from the same entity, edge values included:
 * zero and negative-zero doubles, seqs past 2^63, an empty and a full-length
 * name, window extension words. An entity with every byte set catches a
 * field added to the message but not to the encoder. */
static void test_entity_wire_encoding(void **state)
{
    (void)state;
    ts_entity_t e;
    memset(&e, 0x5a, sizeof(e));
    e.name[sizeof(e.name) - 1] = 0;
    e.dirty = e.departing = false;
    e.state_len = TS_GAME_STATE_MAX; /* module state: every byte, and flags */
    assert_true(ts_zone_entity_wire_check(&e, false));
    assert_true(ts_zone_entity_wire_check(&e, true));
    e.state_len = 1;
    e.flags = TS_GAME_NPC;
    assert_true(ts_zone_entity_wire_check(&e, true));

    ts_entity_t v[4] = {
        {.id = 1, .x = 0.0, .y = -0.0, .vx = -3.5, .vy = 1e300},
        {.id = UINT64_MAX,
         .x = 12.25,
         .last_input_seq = (1ull << 63) + 5,
         .inputs_applied = 127,
         .hops = 128},
        {.id = 1ull << 35, .x = 50, .y = 50, .incarnation = 300},
        {0},
    };
    v[1].applied_window[0] = ~0ull;
    v[1].applied_window[3] = 1ull << 40; /* words 1 and 2 zero, 3 set */
    memset(v[1].name, 'n', sizeof(v[1].name) - 1);
    strcpy(v[2].name, "bob");
    v[2].applied_window[TS_WINDOW_WORDS - 1] = 7;
    v[2].flags = TS_GAME_PLAYER;
    v[2].state_len = 3;
    memcpy(v[2].state, "\x00\xffz", 3);
    for (int i = 0; i < 4; i++) {
        assert_true(ts_zone_entity_wire_check(&v[i], false));
        assert_true(ts_zone_entity_wire_check(&v[i], true));
    }

    /* and a delta and a checkpoint built from it decode to the entities */
    ts_zone_t *z = zone_at(0, 0);
    for (int i = 0; i < 3; i++)
        ts_zone_accept_transfer(z, &v[i == 1 ? 3 : i]);
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_delta(z, 9, true, "w1", &bufs, &lens, &nparts), TS_OK);
    Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, lens[0], bufs[0]);
    assert_non_null(d);
    assert_string_equal(d->owner, "w1");
    assert_int_equal(d->n_entities, 2); /* v[3] has id 0: never stored */
    for (size_t k = 0; k < d->n_entities; k++) {
        const ts_entity_t *e2 = get(z, d->entities[k]->id);
        assert_non_null(e2);
        assert_memory_equal(&d->entities[k]->x, &e2->x, sizeof(double));
        assert_string_equal(d->entities[k]->name, e2->name);
        assert_int_equal(d->entities[k]->flags, e2->flags);
        assert_int_equal(d->entities[k]->state.len, e2->state_len);
        if (e2->state_len) assert_memory_equal(d->entities[k]->state.data, e2->state, e2->state_len);
    }
    tessera__v1__state_delta__free_unpacked(d, NULL);
    ts_zone_free_parts(bufs, lens, nparts);
    uint8_t *cp;
    size_t cplen;
    assert_int_equal(ts_zone_pack_checkpoint(z, 9, "w1", false, &cp, &cplen), TS_OK);
    Tessera__V1__Checkpoint *c = tessera__v1__checkpoint__unpack(NULL, cplen, cp);
    assert_non_null(c);
    assert_int_equal(c->n_entities, 2);
    for (size_t k = 0; k < c->n_entities; k++) {
        const ts_entity_t *e2 = get(z, c->entities[k]->id);
        assert_int_equal(c->entities[k]->incarnation, e2->incarnation);
        assert_int_equal(c->entities[k]->flags, e2->flags);
        assert_int_equal(c->entities[k]->state.len, e2->state_len);
    }
    tessera__v1__checkpoint__free_unpacked(c, NULL);
    free(cp);
    ts_zone_destroy(z);
}

static void load_parts(ts_zone_t *dst, uint8_t **bufs, size_t *lens, size_t nparts, bool diff, uint64_t gen)
{
    for (size_t i = 0; i < nparts; i++) {
        assert_true(lens[i] < MAX_PAYLOAD);
        Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, lens[i], bufs[i]);
        assert_non_null(cp);
        assert_int_equal(cp->part, nparts > 1 ? i : 0);
        assert_int_equal(cp->generation, gen);
        assert_int_equal(ts_zone_load_checkpoint(dst, cp, diff, 3), TS_OK);
        tessera__v1__checkpoint__free_unpacked(cp, NULL);
    }
}

static void assert_same_entities(ts_zone_t *a, ts_zone_t *b)
{
    assert_int_equal(ts_zone_entities(a), ts_zone_entities(b));
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&a->entities, &it, &id, &v);) {
        const ts_entity_t *x = v, *y = get(b, id);
        assert_non_null(y);
        assert_true(x->x == y->x && x->y == y->y && x->vx == y->vx && x->vy == y->vy);
        assert_int_equal(x->last_input_seq, y->last_input_seq);
        assert_int_equal(x->inputs_applied, y->inputs_applied);
        assert_memory_equal(x->applied_window, y->applied_window, sizeof(x->applied_window));
    }
}

static void test_big_cell_checkpoint_and_handover_in_parts(void **state)
{
    (void)state;
    ts_zone_t *src = big_zone();
    uint8_t **bufs;
    size_t *lens, nparts;
    /* checkpoint */
    assert_int_equal(ts_zone_pack_checkpoint_parts(src, 3, "w1", false, 42, &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts > 1);
    ts_zone_t *rec = zone_at(0, 0);
    load_parts(rec, bufs, lens, nparts, false, 42);
    ts_zone_free_parts(bufs, lens, nparts);
    assert_int_equal(rec->last_applied_seq, 777);
    assert_same_entities(src, rec);

    /* handover: PreCopy, then changes, then the Diff */
    ts_zone_mark_precopy(src);
    assert_int_equal(ts_zone_pack_checkpoint_parts(src, 3, "w1", false, 0, &bufs, &lens, &nparts), TS_OK);
    ts_zone_t *dst = zone_at(0, 0);
    load_parts(dst, bufs, lens, nparts, false, 0);
    ts_zone_free_parts(bufs, lens, nparts);
    for (uint64_t id = 1; id <= BIG; id += 2) { /* half of them change */
        ts_input_t m = move(id, 100, 1, 1);
        ts_zone_apply_input(src, &m, 2);
    }
    ts_input_t lv = {.entity = 4, .seq = 200, .kind = TS_INPUT_LEAVE};
    ts_zone_apply_input(src, &lv, 2);
    src->last_applied_seq = 900;
    assert_int_equal(ts_zone_pack_checkpoint_parts(src, 3, "w1", true, 0, &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts > 1);
    load_parts(dst, bufs, lens, nparts, true, 0);
    ts_zone_free_parts(bufs, lens, nparts);
    assert_int_equal(dst->last_applied_seq, 900);
    assert_null(get(dst, 4));
    assert_same_entities(src, dst);
    ts_zone_destroy(src);
    ts_zone_destroy(rec);
    ts_zone_destroy(dst);
}

/* ---- space: grid query, nearby, ghosts ------------------------------------ */

typedef struct {
    uint64_t ids[8192];
    size_t n;
} visited_t;

static void visit(void *ud, const ts_entity_t *e, const ts_ghost_t *h)
{
    visited_t *v = ud;
    assert_true((e == NULL) != (h == NULL));
    if (v->n < 8192) v->ids[v->n++] = e ? e->id : h->id;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double urand(ts_rng_t *r, double lo, double hi)
{
    return lo + (hi - lo) * ts_rng_unit(r);
}

/* Every query against a scan of every owned entity and ghost. */
static void check_queries(ts_zone_t *z, ts_rng_t *rng, int nqueries)
{
    static uint64_t want[8192];
    static visited_t got;
    for (int q = 0; q < nqueries; q++) {
        double x = urand(rng, -130, 30), y = urand(rng, -130, 30);
        double r = q % 10 == 0 ? urand(rng, 0, 40) : urand(rng, 0, 4);
        size_t n = 0;
        uint64_t id;
        void *v;
        for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
            const ts_entity_t *e = v;
            if ((e->x - x) * (e->x - x) + (e->y - y) * (e->y - y) <= r * r) want[n++] = id;
        }
        for (size_t it = 0; ts_map_next(&z->ghosts, &it, &id, &v);) {
            const ts_ghost_t *h = v;
            if ((h->x - x) * (h->x - x) + (h->y - y) * (h->y - y) <= r * r) want[n++] = id;
        }
        got.n = 0;
        assert_int_equal(ts_zone_query_radius(z, x, y, r, visit, &got), n);
        assert_int_equal(got.n, n);
        assert_int_equal(ts_zone_query_radius(z, x, y, r, NULL, NULL), n);
        qsort(want, n, sizeof(*want), cmp_u64);
        qsort(got.ids, n, sizeof(*got.ids), cmp_u64);
        assert_memory_equal(want, got.ids, n * sizeof(*want));
    }
}

/* Every owned entity's nearby against a scan. */
static void check_nearby(ts_zone_t *z)
{
    uint64_t id, id2;
    void *v, *v2;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
        const ts_entity_t *e = v;
        uint32_t n = 0;
        for (size_t it2 = 0; ts_map_next(&z->entities, &it2, &id2, &v2);) {
            const ts_entity_t *o = v2;
            n += id2 != id && hypot(o->x - e->x, o->y - e->y) <= z->interact_radius;
        }
        for (size_t it2 = 0; ts_map_next(&z->ghosts, &it2, &id2, &v2);) {
            const ts_ghost_t *h = v2;
            n += hypot(h->x - e->x, h->y - e->y) <= z->interact_radius;
        }
        assert_int_equal(e->nearby, n);
    }
}

static void test_grid_query_matches_brute_force(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(-1, -1); /* [-100, 0) x [-100, 0): negative coordinates */
    assert_int_equal(ts_zone_set_space(z, 2.0, 4.0), TS_OK);
    ts_rng_t rng;
    ts_rng_seed(&rng, 7);
    ts_cell_t src = {.world = 0, .cx = 0, .cy = -1};
    uint64_t seq = 1;
    /* owned entities, some outside the cell (they walked out) or far out of the grid */
    for (uint64_t id = 1; id <= 1500; id++) {
        ts_input_t j = id % 50 == 0 ? join(id, 1, urand(&rng, -200, 199), urand(&rng, -200, 199))
                                    : join(id, 1, urand(&rng, -106, 6), urand(&rng, -106, 6));
        z->cur_stream_seq = seq++;
        ts_zone_apply_input(z, &j, 1);
        if (id % 3 == 0) { /* a dense clump too */
            j = join(id + 100000, 1, urand(&rng, -51, -49), urand(&rng, -51, -49));
            ts_zone_apply_input(z, &j, 1);
        }
    }
    /* ghosts: those outside the cell + margin are not kept */
    for (uint64_t id = 200001; id <= 201000; id++)
        ts_zone_ghost_put(z, &src, 1, 0, id, urand(&rng, -110, 10), urand(&rng, -110, 10), 0, 0);
    size_t kept = ts_zone_ghosts(z);
    assert_true(kept > 0 && kept < 1000);
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->ghosts, &it, &id, &v);) {
        const ts_ghost_t *h = v;
        assert_true(h->x >= -104 && h->x < 4 && h->y >= -104 && h->y < 4);
    }
    /* a ghost never shadows an entity of ours */
    ts_zone_ghost_put(z, &src, 1, 0, 5, -50, -50, 0, 0);
    assert_null(ts_map_get(&z->ghosts, 5));
    check_queries(z, &rng, 1000);
    ts_zone_update_nearby(z);
    check_nearby(z);

    /* everything moves (incrementally re-bucketed), some leave, ghosts move */
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
        ts_entity_t *e = v;
        e->vx = urand(&rng, -50, 50);
        e->vy = urand(&rng, -50, 50);
    }
    for (uint64_t tick = 2; tick < 40; tick++) {
        ts_zone_step(z, 0.05, tick);
        if (tick % 5 == 0) {
            check_nearby(z); /* the step counted them */
            check_queries(z, &rng, 200);
        }
        for (uint64_t gid = 200001; gid <= 201000; gid += 7)
            ts_zone_ghost_put(z, &src, 1, 0, gid, urand(&rng, -110, 10), urand(&rng, -110, 10), 1, 1);
    }
    for (uint64_t eid = 1; eid <= 1500; eid += 4) {
        ts_entity_t *e = get(z, eid);
        if (e) ts_zone_despawn(z, e);
    }
    for (uint64_t gid = 200001; gid <= 201000; gid += 3)
        ts_zone_ghost_remove(z, &src, gid);
    check_queries(z, &rng, 1000);
    ts_zone_update_nearby(z);
    check_nearby(z);

    /* a new radius and margin rebuild the grid with everything in it */
    assert_int_equal(ts_zone_set_space(z, 0.5, 0.5), TS_OK);
    check_queries(z, &rng, 500);
    ts_zone_update_nearby(z);
    check_nearby(z);

    /* no entity of its own: the step skips the grid, a query still finds the ghosts */
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);)
        ts_zone_despawn(z, v);
    assert_int_equal(ts_zone_entities(z), 0);
    ts_zone_step(z, 0.05, 41);
    for (uint64_t gid = 200001; gid <= 201000; gid += 5)
        ts_zone_ghost_put(z, &src, 1, 0, gid, urand(&rng, -110, 10), urand(&rng, -110, 10), 0, 0);
    ts_zone_step(z, 0.05, 42);
    assert_true(ts_zone_ghosts(z) > 0);
    check_queries(z, &rng, 500);
    ts_zone_destroy(z);
}

static Tessera__V1__GhostDelta *pack_ghost(ts_zone_t *z, uint64_t tick, bool full)
{
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_ghost(z, tick, full, 10, "w1", &bufs, &lens, &nparts), TS_OK);
    if (nparts == 0) return NULL;
    assert_int_equal(nparts, 1);
    Tessera__V1__GhostDelta *d = tessera__v1__ghost_delta__unpack(NULL, lens[0], bufs[0]);
    assert_non_null(d);
    ts_zone_free_parts(bufs, lens, nparts);
    return d;
}

/* The state delta the worker packs after the ghosts each tick (it clears
 * the dirty flags the ghost band looks at). */
static void pack_state(ts_zone_t *z, uint64_t tick)
{
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_delta(z, tick, false, "w1", &bufs, &lens, &nparts), TS_OK);
    ts_zone_free_parts(bufs, lens, nparts);
}

static bool names(const Tessera__V1__GhostDelta *d, uint64_t id)
{
    for (size_t i = 0; i < d->n_entities; i++)
        if (d->entities[i]->id == id) return true;
    return false;
}

static void test_ghost_band_out_and_in(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(0, 0); /* [0, 100)^2 */
    assert_int_equal(ts_zone_set_space(z, 2.0, 4.0), TS_OK);
    ts_input_t j = join(1, 1, 1, 50); /* in the west band */
    ts_zone_apply_input(z, &j, 1);
    j = join(2, 1, 50, 50); /* in the middle */
    ts_zone_apply_input(z, &j, 1);
    j = join(3, 1, 99, 99); /* the north-east corner */
    ts_zone_apply_input(z, &j, 1);
    ts_zone_step(z, 0.05, 1);
    Tessera__V1__GhostDelta *d = pack_ghost(z, 1, false);
    assert_non_null(d);
    assert_false(d->full);
    assert_int_equal(d->epoch, 1);
    assert_int_equal(d->keyframe_ticks, 10);
    assert_int_equal(d->n_entities, 2);
    assert_true(names(d, 1) && names(d, 3) && !names(d, 2));
    tessera__v1__ghost_delta__free_unpacked(d, NULL);
    pack_state(z, 1);
    /* nothing changed: nothing to say; a keyframe says it all again */
    ts_zone_step(z, 0.05, 2);
    assert_null(pack_ghost(z, 2, false));
    d = pack_ghost(z, 2, true);
    assert_true(d->full);
    assert_int_equal(d->n_entities, 2);
    tessera__v1__ghost_delta__free_unpacked(d, NULL);
    /* 1 walks inwards out of the band: removed; 3 leaves the game: removed */
    ts_entity_t *e = get(z, 1);
    e->vx = 50;
    ts_zone_despawn(z, get(z, 3));
    for (uint64_t t = 3; t < 6; t++)
        ts_zone_step(z, 0.05, t);
    assert_true(e->x > 4);
    d = pack_ghost(z, 6, false);
    assert_non_null(d);
    assert_int_equal(d->n_entities, 0);
    assert_int_equal(d->n_removed, 2);
    tessera__v1__ghost_delta__free_unpacked(d, NULL);
    /* an empty band: one empty keyframe, then silence until something is there */
    d = pack_ghost(z, 7, true);
    assert_non_null(d);
    assert_true(d->full);
    assert_int_equal(d->n_entities, 0);
    tessera__v1__ghost_delta__free_unpacked(d, NULL);
    assert_null(pack_ghost(z, 17, true));

    /* in: ghosts of the west neighbour count for nearby, a keyframe
     * replaces them, a stale epoch is dropped, an arriving entity replaces
     * its ghost */
    ts_cell_t west = {.world = 0, .cx = -1, .cy = 0};
    j = join(20, 1, 0.5, 50);
    ts_zone_apply_input(z, &j, 7);
    e = get(z, 20);
    ts_zone_step(z, 0.05, 7);
    assert_int_equal(e->nearby, 0);
    uint64_t k1 = ts_zone_ghost_keyframe(z);
    ts_zone_ghost_put(z, &west, 3, k1, 10, -0.5, 50, 0, 0);
    ts_zone_ghost_put(z, &west, 3, k1, 11, -1.0, 50, 0, 0);
    ts_zone_ghost_sweep(z, &west, k1);
    ts_zone_step(z, 0.05, 8);
    assert_int_equal(e->nearby, 2);
    assert_true(e->dirty); /* the count changed: it goes in the next state */
    uint64_t k2 = ts_zone_ghost_keyframe(z);
    ts_zone_ghost_put(z, &west, 3, k2, 11, -1.0, 50, 0, 0);
    ts_zone_ghost_sweep(z, &west, k2); /* 10 not named: gone */
    assert_int_equal(ts_zone_ghosts(z), 1);
    ts_zone_ghost_put(z, &west, 3, 0, 12, -0.2, 50.2, 0, 0);
    ts_zone_ghost_remove(z, &(ts_cell_t){.world = 0, .cx = 0, .cy = 1}, 12); /* not its source: stays */
    assert_int_equal(ts_zone_ghosts(z), 2);
    assert_int_equal(ts_zone_ghost_drop(z, &west, 4), 2); /* the registry moved to epoch 4 */
    assert_int_equal(ts_zone_ghosts(z), 0);
    ts_zone_ghost_put(z, &west, 4, 0, 13, -0.5, 50, 0, 0);
    ts_entity_t arriving = {.id = 13, .x = 0.1, .y = 50, .hops = 1};
    ts_zone_accept_transfer(z, &arriving);
    assert_int_equal(ts_zone_ghosts(z), 0);
    ts_zone_step(z, 0.05, 9);
    assert_int_equal(e->nearby, 1);
    assert_int_equal(get(z, 13)->nearby, 1);
    ts_zone_destroy(z);
}

/* ---- a crowded cell: every message fits max_payload ------------------------
 * 4,000 entities with full exactly-once windows, the longest name and the
 * most module state bytes (~320 bytes each as a Transfer: 1.3 MB) cross
 * from (0,0) into ONE neighbour in one Departure; 4,000 commands with the
 * largest payload are forwarded after them; 4,000 more entities, outside
 * the cell, have their Departures queued;
 * ten despawns are not announced yet. Every message the zone builds fits
 * msg_max (the default: NATS's 1 MB less headroom; and a small one that cuts
 * everything into many pieces), and a zone loaded from the checkpoint parts
 * has the same entities, departed records, outbox and announcements, cuts
 * the outbox into the same messages and queues the same Departures. */
enum { CROWD = 4000 };

static void fatten(ts_entity_t *e)
{
    for (size_t k = 0; k < TS_WINDOW_WORDS; k++)
        e->applied_window[k] = ~0ULL; /* every word a 10-byte varint */
    e->last_input_seq = UINT64_MAX - 1;
    e->inputs_applied = UINT64_MAX - 1;
    memset(e->name, 'n', sizeof(e->name) - 1);
    e->name[sizeof(e->name) - 1] = 0;
    e->hops = 1ULL << 62;
    e->incarnation = UINT64_MAX - 1;
    e->gateway = UINT32_MAX;
    e->gateway_instance = e->session = e->detached_us = UINT64_MAX - 1;
    e->vx = e->vy = 1e-9;
    e->flags = TS_GAME_PLAYER;
    e->state_len = TS_GAME_STATE_MAX;
    memset(e->state, 0xa5, sizeof(e->state));
}

static void assert_same_entity(const ts_entity_t *a, const ts_entity_t *b)
{
    assert_int_equal(a->id, b->id);
    assert_true(a->x == b->x && a->y == b->y && a->vx == b->vx && a->vy == b->vy);
    assert_int_equal(a->last_input_seq, b->last_input_seq);
    assert_int_equal(a->inputs_applied, b->inputs_applied);
    assert_memory_equal(a->applied_window, b->applied_window, sizeof(a->applied_window));
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->hops, b->hops);
    assert_int_equal(a->incarnation, b->incarnation);
    assert_int_equal(a->gateway, b->gateway);
    assert_int_equal(a->gateway_instance, b->gateway_instance);
    assert_int_equal(a->session, b->session);
    assert_int_equal(a->detached_us, b->detached_us);
    assert_int_equal(a->nearby, b->nearby);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->state_len, b->state_len);
    assert_memory_equal(a->state, b->state, a->state_len);
}

static ts_zone_t *crowd_zone(size_t msg_max)
{
    ts_zone_t *z = zone_at(0, 0);
    z->msg_max = msg_max;
    const ts_cell_t east = {.world = 0, .cx = 1, .cy = 0};
    for (uint64_t id = 1; id <= 2 * CROWD + 10; id++) {
        /* the first half near the east border, the second half already
         * north of the cell (a spawn outside it walks out at the next step) */
        double x = id <= CROWD ? 99.0 + (double)(id % 50) * 0.01 : (double)(id % 97) + 0.5;
        double y = id <= CROWD ? (double)(id % 97) + 0.5 : 100.5;
        ts_input_t j = join(id, 1, x, y);
        ts_zone_apply_input(z, &j, 1);
        fatten(get(z, id));
    }
    for (uint64_t id = 2 * CROWD + 1; id <= 2 * CROWD + 10; id++)
        ts_zone_despawn(z, get(z, id)); /* announced in the next delta: not yet */
    for (uint64_t id = 1; id <= CROWD; id++)
        assert_true(ts_zone_queue_departure(z, get(z, id), &east));
    loop_departures(z, 500, 2); /* one Departure batch: one outbox entry of CROWD transfers */
    assert_int_equal(z->nout, 1);
    assert_int_equal(z->out[0].ntransfers, CROWD);
    z->cur_stream_seq = 501;
    for (uint64_t id = 1; id <= CROWD; id++) {
        ts_input_t c = {.entity = id, .seq = UINT64_MAX - 2, .kind = TS_INPUT_COMMAND, .type = 7};
        c.payload_len = TS_GAME_PAYLOAD_MAX;
        memset(c.payload, 0x5a, sizeof(c.payload));
        ts_zone_apply_input(z, &c, 2); /* it left: forwarded */
    }
    z->last_applied_seq = 501;
    assert_int_equal(z->nout, 2);
    assert_int_equal(z->out[1].ninputs, CROWD);
    ts_zone_step(z, 0.05, 3); /* the second half: CROWD Departures queued north */
    assert_int_equal(z->ndeps, CROWD);
    assert_int_equal(z->nleft, 10);
    return z;
}

/* Packs outbox entry i message by message from item 0: each fits, decodes to
 * the entry's items in order, and together they are all of them. Returns
 * the messages (bufs/lens, caller frees). */
static size_t outbox_messages(ts_zone_t *z, size_t i, uint8_t ***bufs, size_t **lens)
{
    const ts_zone_out_t *o = &z->out[i];
    size_t total = o->ntransfers + o->ninputs, from = 0, n = 0;
    *bufs = calloc(total, sizeof(**bufs));
    *lens = calloc(total, sizeof(**lens));
    assert_non_null(*bufs);
    assert_non_null(*lens);
    while (from < total) {
        size_t count = 0;
        assert_int_equal(ts_zone_pack_outbox_chunk(z, i, from, &(*bufs)[n], &(*lens)[n], &count), TS_OK);
        assert_true(count > 0);
        assert_true((*lens)[n] <= z->msg_max);
        Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, (*lens)[n], (*bufs)[n]);
        assert_non_null(ib);
        assert_int_equal(ib->n_transfers + ib->n_inputs, count);
        for (size_t k = 0; k < ib->n_transfers; k++) {
            assert_int_equal(ib->transfers[k]->entity->id, o->transfers[from + k].id);
            assert_int_equal(ib->transfers[k]->entity->n_applied_window_ext, TS_WINDOW_WORDS - 1);
            assert_int_equal(ib->transfers[k]->from_epoch, z->epoch);
        }
        for (size_t k = 0; k < ib->n_inputs; k++) {
            const ts_input_t *in = &o->inputs[from + ib->n_transfers + k - o->ntransfers];
            assert_int_equal(ib->inputs[k]->entity, in->entity);
            assert_int_equal(ib->inputs[k]->command->payload.len, in->payload_len);
        }
        tessera__v1__input_batch__free_unpacked(ib, NULL);
        from += count;
        n++;
    }
    return n;
}

static void check_crowd(size_t msg_max, size_t min_outbox_msgs, size_t min_dep_msgs)
{
    ts_zone_t *z = crowd_zone(msg_max);
    /* the outbox: the transfers need several messages, each fits */
    uint8_t *whole;
    size_t whole_len;
    assert_int_equal(ts_zone_pack_outbox(z, 0, &whole, &whole_len), TS_OK);
    free(whole);
    assert_true(whole_len > z->msg_max); /* one message would not do */
    uint8_t **src_msgs[2];
    size_t *src_lens[2], src_n[2];
    for (size_t i = 0; i < 2; i++) {
        src_n[i] = outbox_messages(z, i, &src_msgs[i], &src_lens[i]);
        assert_true(src_n[i] >= (i == 0 ? min_outbox_msgs : 1));
    }

    /* the checkpoint: every part fits; loaded, the same zone */
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_checkpoint_parts(z, 3, "w1", false, 5, &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts > 1);
    ts_zone_t *b = zone_at(0, 0);
    b->msg_max = msg_max;
    for (size_t i = 0; i < nparts; i++) {
        assert_true(lens[i] <= z->msg_max);
        Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, lens[i], bufs[i]);
        assert_non_null(cp);
        assert_int_equal(cp->part, i);
        assert_int_equal(cp->parts, nparts);
        assert_int_equal(ts_zone_load_checkpoint(b, cp, false, 3), TS_OK);
        tessera__v1__checkpoint__free_unpacked(cp, NULL);
    }
    ts_zone_free_parts(bufs, lens, nparts);
    assert_int_equal(b->last_applied_seq, 501);
    assert_int_equal(ts_zone_entities(b), ts_zone_entities(z));
    assert_int_equal(ts_zone_entities(b), CROWD);
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
        assert_non_null(get(b, id));
        assert_same_entity(v, get(b, id));
    }
    assert_int_equal(b->departed.len, z->departed.len);
    for (size_t it = 0; ts_map_next(&z->departed, &it, &id, &v);) {
        ts_cell_t to;
        assert_true(ts_zone_locate(b, id, &to));
        assert_true(ts_zone_locate(z, id, &to) && to.cx == 1 && to.cy == 0);
    }
    assert_int_equal(b->nleft, z->nleft);
    for (size_t i = 0; i < z->nleft; i++)
        assert_int_equal(b->left[i].id, z->left[i].id);
    assert_int_equal(b->nout, z->nout);
    for (size_t i = 0; i < z->nout; i++) {
        const ts_zone_out_t *x = &z->out[i], *y = &b->out[i];
        assert_true(ts_cell_eq(&x->dest, &y->dest));
        assert_int_equal(x->marker_seq, y->marker_seq);
        assert_int_equal(x->ntransfers, y->ntransfers);
        assert_int_equal(x->ninputs, y->ninputs);
        for (size_t k = 0; k < x->ntransfers; k++)
            assert_same_entity(&x->transfers[k], &y->transfers[k]);
        for (size_t k = 0; k < x->ninputs; k++) {
            assert_int_equal(x->inputs[k].entity, y->inputs[k].entity);
            assert_int_equal(x->inputs[k].seq, y->inputs[k].seq);
            assert_int_equal(x->inputs[k].kind, y->inputs[k].kind);
            assert_int_equal(x->inputs[k].payload_len, y->inputs[k].payload_len);
            assert_memory_equal(x->inputs[k].payload, y->inputs[k].payload, x->inputs[k].payload_len);
        }
        /* the new owner cuts the entry into the same messages: the same
         * message ids name the same items, so JetStream stores each once */
        uint8_t **msgs;
        size_t *mlens, n = outbox_messages(b, i, &msgs, &mlens);
        assert_int_equal(n, src_n[i]);
        for (size_t k = 0; k < n; k++) {
            assert_int_equal(mlens[k], src_lens[i][k]);
            assert_memory_equal(msgs[k], src_msgs[i][k], mlens[k]);
        }
        ts_zone_free_parts(msgs, mlens, n);
        ts_zone_free_parts(src_msgs[i], src_lens[i], src_n[i]);
    }

    /* the queued Departures are not checkpointed: the loaded zone decides
     * the same ones at its next step */
    ts_zone_step(b, 0.05, 4);
    assert_int_equal(b->ndeps, z->ndeps);
    ts_map_t want;
    ts_map_init(&want);
    for (size_t i = 0; i < z->ndeps; i++)
        assert_int_equal(ts_map_put(&want, z->deps[i].entity, &z->deps[i]), TS_OK);
    for (size_t i = 0; i < b->ndeps; i++) {
        const ts_departure_t *d = ts_map_get(&want, b->deps[i].entity);
        assert_non_null(d);
        assert_true(ts_cell_eq(&d->to, &b->deps[i].to));
        assert_int_equal(d->hops, b->deps[i].hops);
    }
    ts_map_free(&want);

    /* the Departures go as many per message as fit, all of them in order */
    size_t msgs = 0, next = 0;
    while (z->ndeps > 0) {
        uint8_t *buf;
        size_t len, count;
        assert_int_equal(ts_zone_pack_departures_chunk(z, &buf, &len, &count), TS_OK);
        assert_true(count > 0 && len <= z->msg_max);
        Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, len, buf);
        free(buf);
        assert_non_null(ib);
        assert_int_equal(ib->n_departures, count);
        for (size_t k = 0; k < count; k++)
            assert_int_equal(ib->departures[k]->entity, z->deps[k].entity);
        tessera__v1__input_batch__free_unpacked(ib, NULL);
        z->deps_in_flight = count;
        ts_zone_departures_done(z);
        next += count;
        msgs++;
    }
    assert_int_equal(next, CROWD);
    assert_true(msgs >= min_dep_msgs);

    /* and the state: the delta parts fit too */
    size_t dparts;
    assert_int_equal(ts_zone_pack_delta(b, 9, true, "w1", &bufs, &lens, &dparts), TS_OK);
    for (size_t i = 0; i < dparts; i++)
        assert_true(lens[i] <= z->msg_max);
    ts_zone_free_parts(bufs, lens, dparts);
    ts_zone_destroy(z);
    ts_zone_destroy(b);
}

static void test_crowded_outbox_fits_max_payload(void **state)
{
    (void)state;
    /* NATS's default: the 4,000 transfers take two messages at least */
    check_crowd(TS_ZONE_MAX_PAYLOAD_DEFAULT - TS_ZONE_MSG_HEADROOM, 2, 1);
    /* a small max_payload cuts everything into many pieces, outbox entries
     * across checkpoint parts included */
    check_crowd(64 * 1024, 15, 2);
}

/* ---- outbox origins through checkpoints and Diffs ------------------------ */

enum { ORIGIN_CROWD = 120 };

/* A zone whose outbox holds, towards one cell: a crowd's transfers (the
 * worker's), then inputs forwarded for them as first published by gateway 1
 * (that entry published and in flight: sealed), by gateway 2, by the sim and
 * by gateway 1 again (a new entry behind the sealed one), each heavy enough
 * at this max_payload to be cut into several messages and to run across
 * checkpoint parts. */
static ts_zone_t *origin_zone(size_t max_payload)
{
    ts_zone_t *z = zone_at(0, 0);
    ts_zone_set_max_payload(z, max_payload);
    const ts_cell_t east = {.world = 0, .cx = 1, .cy = 0};
    for (uint64_t id = 1; id <= ORIGIN_CROWD; id++) {
        ts_input_t j = join(id, 1, 99.0, (double)(id % 97) + 0.5);
        ts_zone_apply_input(z, &j, 1);
        fatten(get(z, id));
        assert_true(ts_zone_queue_departure(z, get(z, id), &east));
    }
    loop_departures(z, 500, 2);
    assert_int_equal(z->nout, 1);
    assert_int_equal(z->out[0].ntransfers, ORIGIN_CROWD);
    z->cur_stream_seq = 501;
    const ts_origin_t by[] = {1, 2, TS_ORIGIN_SIM, 1};
    for (size_t r = 0; r < 4; r++) {
        z->cur_origin = by[r];
        for (uint64_t id = 1; id <= ORIGIN_CROWD; id++) {
            ts_input_t c = {.entity = id, .seq = 10 + r, .kind = TS_INPUT_COMMAND, .type = 7};
            c.payload_len = TS_GAME_PAYLOAD_MAX;
            memset(c.payload, (int)(0x10 + r), sizeof(c.payload));
            ts_zone_apply_input(z, &c, 2); /* it left: forwarded under by[r] */
        }
        if (r == 0) { /* its first messages went out, the next is in flight */
            z->out[1].id_seq = 42;
            z->out[1].sent = 3;
            z->out[1].pub_seq = 43;
            z->out[1].chunk = 4;
        }
    }
    z->cur_origin = TS_ORIGIN_WORKER;
    z->last_applied_seq = 501;
    assert_int_equal(z->nout, 5);
    const ts_origin_t want[] = {TS_ORIGIN_WORKER, 1, 2, TS_ORIGIN_SIM, 1};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(z->out[i].origin, want[i]);
    return z;
}

/* b's outbox is a's entry by entry (dest, marker, origin, items), and b
 * cuts each entry into the same messages from its first item: a new owner
 * publishes every entry under its origin with the same message ids for the
 * same items (a transfer's ids are made of the marker, dest and range). */
static void assert_same_outbox(ts_zone_t *a, ts_zone_t *b)
{
    assert_int_equal(b->nout, a->nout);
    for (size_t i = 0; i < a->nout; i++) {
        const ts_zone_out_t *x = &a->out[i], *y = &b->out[i];
        assert_true(ts_cell_eq(&x->dest, &y->dest));
        assert_int_equal(x->marker_seq, y->marker_seq);
        assert_int_equal(x->origin, y->origin);
        assert_int_equal(x->ntransfers, y->ntransfers);
        assert_int_equal(x->ninputs, y->ninputs);
        assert_int_equal(y->id_seq, 0); /* not published by b yet */
        assert_int_equal(y->sent, 0);   /* b sends all of it, from the first item */
        for (size_t k = 0; k < x->ntransfers; k++)
            assert_same_entity(&x->transfers[k], &y->transfers[k]);
        for (size_t k = 0; k < x->ninputs; k++) {
            assert_int_equal(x->inputs[k].entity, y->inputs[k].entity);
            assert_int_equal(x->inputs[k].seq, y->inputs[k].seq);
            assert_memory_equal(x->inputs[k].payload, y->inputs[k].payload, x->inputs[k].payload_len);
        }
        uint8_t **xm, **ym;
        size_t *xl, *yl, xn = outbox_messages(a, i, &xm, &xl), yn = outbox_messages(b, i, &ym, &yl);
        assert_true(xn > 1); /* in pieces */
        assert_int_equal(yn, xn);
        for (size_t k = 0; k < xn; k++) {
            assert_int_equal(yl[k], xl[k]);
            assert_memory_equal(ym[k], xm[k], xl[k]);
        }
        ts_zone_free_parts(xm, xl, xn);
        ts_zone_free_parts(ym, yl, yn);
    }
}

/* Loads parts into dst; returns how many Outbox messages they carried and
 * checks each names its origin ("w", "g1", "g2", "s"). */
static size_t load_origin_parts(ts_zone_t *dst, uint8_t **bufs, size_t *lens, size_t nparts, bool diff)
{
    size_t nob = 0;
    for (size_t i = 0; i < nparts; i++) {
        assert_true(lens[i] <= dst->msg_max);
        Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, lens[i], bufs[i]);
        assert_non_null(cp);
        for (size_t k = 0; k < cp->n_outbox; k++) {
            const char *o = cp->outbox[k]->origin;
            assert_true(strcmp(o, "w") == 0 || strcmp(o, "g1") == 0 || strcmp(o, "g2") == 0 ||
                        strcmp(o, "s") == 0 || strcmp(o, "g5") == 0);
            assert_true((strcmp(o, "w") == 0) == (cp->outbox[k]->n_transfers > 0));
        }
        nob += cp->n_outbox;
        assert_int_equal(ts_zone_load_checkpoint(dst, cp, diff, 3), TS_OK);
        tessera__v1__checkpoint__free_unpacked(cp, NULL);
    }
    return nob;
}

/* A new owner that loads a checkpoint (in parts, outbox entries cut across
 * them) publishes every pending forward under the origin it came with, not
 * the worker's, and cuts every entry into the same messages. */
static void test_outbox_origins_through_checkpoint_parts(void **state)
{
    (void)state;
    ts_zone_t *z = origin_zone(16 * 1024);
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_checkpoint_parts(z, 3, "w1", false, 5, &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts > 2);
    ts_zone_t *b = zone_at(0, 0);
    ts_zone_set_max_payload(b, 16 * 1024);
    size_t nob = load_origin_parts(b, bufs, lens, nparts, false);
    assert_true(nob > z->nout); /* entries continued across parts, and joined again */
    ts_zone_free_parts(bufs, lens, nparts);
    assert_int_equal(b->last_applied_seq, 501);
    assert_same_outbox(z, b);
    /* gateway 1's two entries stay two, each behind what was before it */
    assert_int_equal(b->out[1].inputs[0].seq, 10);
    assert_int_equal(b->out[4].inputs[0].seq, 13);
    ts_zone_destroy(z);
    ts_zone_destroy(b);
}

/* The same through a handover: the PreCopy, then a Diff whose outbox is
 * the source's as of the freeze (one more entry, gateway 5's), both in
 * parts. A Diff or checkpoint written before Outbox.origin ("") loads its
 * forwards as the worker's, as before. */
static void test_outbox_origins_through_diff(void **state)
{
    (void)state;
    ts_zone_t *src = origin_zone(16 * 1024);
    ts_zone_mark_precopy(src);
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_checkpoint_parts(src, 3, "w1", false, 0, &bufs, &lens, &nparts), TS_OK);
    ts_zone_t *dst = zone_at(0, 0);
    ts_zone_set_max_payload(dst, 16 * 1024);
    load_origin_parts(dst, bufs, lens, nparts, false);
    ts_zone_free_parts(bufs, lens, nparts);

    /* after the PreCopy: gateway 5 sends for a departed entity */
    src->cur_stream_seq = 502;
    src->cur_origin = 5;
    for (uint64_t id = 1; id <= ORIGIN_CROWD; id++) {
        ts_input_t c = {.entity = id, .seq = 20, .kind = TS_INPUT_COMMAND, .type = 7};
        c.payload_len = TS_GAME_PAYLOAD_MAX;
        ts_zone_apply_input(src, &c, 3);
    }
    src->cur_origin = TS_ORIGIN_WORKER;
    src->last_applied_seq = 502;
    assert_int_equal(src->nout, 6);
    assert_int_equal(src->out[5].origin, 5);
    assert_int_equal(ts_zone_pack_checkpoint_parts(src, 4, "w1", true, 0, &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts > 1);
    load_origin_parts(dst, bufs, lens, nparts, true);
    ts_zone_free_parts(bufs, lens, nparts);
    assert_int_equal(dst->last_applied_seq, 502);
    assert_same_outbox(src, dst);

    /* an older writer's Diff: no origin on any Outbox */
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_checkpoint(src, 4, "w1", true, &buf, &len), TS_OK);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(cp);
    assert_int_equal(cp->n_outbox, 6);
    char *kept[6];
    for (size_t i = 0; i < cp->n_outbox; i++) {
        kept[i] = cp->outbox[i]->origin;
        cp->outbox[i]->origin = (char *)"";
    }
    ts_zone_t *old = zone_at(0, 0);
    assert_int_equal(ts_zone_load_checkpoint(old, cp, true, 4), TS_OK);
    for (size_t i = 0; i < cp->n_outbox; i++)
        cp->outbox[i]->origin = kept[i];
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    assert_int_equal(old->nout, 2); /* the transfers; the forwards side by side, joined */
    assert_int_equal(old->out[0].origin, TS_ORIGIN_WORKER);
    assert_int_equal(old->out[0].ntransfers, ORIGIN_CROWD);
    assert_int_equal(old->out[1].origin, TS_ORIGIN_WORKER);
    assert_int_equal(old->out[1].ninputs, 5 * ORIGIN_CROWD);
    ts_zone_destroy(old);
    ts_zone_destroy(src);
    ts_zone_destroy(dst);
}

/* A keyframe whose announcements and events alone fill a message: they
 * spread over the parts, and every part fits. */
static void test_delta_parts_cut_by_bytes(void **state)
{
    (void)state;
    ts_zone_t *z = zone_at(0, 0);
    z->msg_max = 64 * 1024;
    for (uint64_t id = 1; id <= 2000; id++) {
        ts_input_t j = join(id, 1, (double)(id % 100) + 0.5, (double)((id / 100) % 100) + 0.5);
        ts_zone_apply_input(z, &j, 1);
        fatten(get(z, id));
    }
    for (uint64_t id = 1001; id <= 2000; id++)
        ts_zone_despawn(z, get(z, id));
    for (uint32_t i = 0; i < TS_GAME_EVENTS_PER_TICK; i++) {
        ts_zone_event_t ev = {.type = i, .entity = 1, .len = TS_GAME_PAYLOAD_MAX};
        memset(ev.payload, 1, sizeof(ev.payload));
        assert_true(ts_zone_add_event(z, &ev));
    }
    uint8_t **bufs;
    size_t *lens, nparts, left = 0, events = 0, ents = 0;
    assert_int_equal(ts_zone_pack_delta(z, 9, true, "w1", &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts > 1);
    for (size_t i = 0; i < nparts; i++) {
        assert_true(lens[i] <= z->msg_max);
        Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, lens[i], bufs[i]);
        assert_non_null(d);
        assert_int_equal(d->part, i);
        assert_int_equal(d->parts, nparts);
        left += d->n_left;
        events += d->n_events;
        ents += d->n_entities;
        tessera__v1__state_delta__free_unpacked(d, NULL);
    }
    assert_int_equal(left, 1000);
    assert_int_equal(events, TS_GAME_EVENTS_PER_TICK);
    assert_int_equal(ents, 1000);
    ts_zone_free_parts(bufs, lens, nparts);
    ts_zone_destroy(z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seq_window),
        cmocka_unit_test(test_window_travels),
        cmocka_unit_test(test_join_move_step),
        cmocka_unit_test(test_late_move_keeps_newer_velocity),
        cmocka_unit_test(test_stream_seq_replay_skipped),
        cmocka_unit_test(test_crossing_forward_exactly_once),
        cmocka_unit_test(test_checkpoint_replay_is_exactly_once),
        cmocka_unit_test(test_detach_attach),
        cmocka_unit_test(test_precopy_diff),
        cmocka_unit_test(test_rejoin_is_new_incarnation),
        cmocka_unit_test(test_transfers_precede_forwards),
        cmocka_unit_test(test_diff_carries_outbox),
        cmocka_unit_test(test_published_entry_is_sealed),
        cmocka_unit_test(test_leave_and_world_edge),
        cmocka_unit_test(test_big_cell_keyframe_in_parts),
        cmocka_unit_test(test_entity_wire_encoding),
        cmocka_unit_test(test_big_cell_checkpoint_and_handover_in_parts),
        cmocka_unit_test(test_crowded_outbox_fits_max_payload),
        cmocka_unit_test(test_outbox_origins_through_checkpoint_parts),
        cmocka_unit_test(test_outbox_origins_through_diff),
        cmocka_unit_test(test_delta_parts_cut_by_bytes),
        cmocka_unit_test(test_grid_query_matches_brute_force),
        cmocka_unit_test(test_ghost_band_out_and_in),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
