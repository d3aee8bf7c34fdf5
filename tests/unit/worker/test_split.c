/* Unit tests of services/worker/split.c: what the owner of a split or
 * retired cell decides at a tick boundary, with real zones (zone.c is
 * compiled in) and a real cell tree; publishing is left out (stubs below).
 *
 * The world is 2 x 1 root cells of 100: P = (0,0) and Q = (1,0). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tessera/util.h"
#include "worker_internal.h"
#include "zone.c" /* the simulation itself, unchanged */

/* ---- what split.c calls of the rest of the worker ---------------------------- */

static int checkpoints_written;

void ts_worker_publish_checkpoint(ts_worker_t *w, ts_zone_t *z)
{
    (void)w;
    (void)z;
    checkpoints_written++;
}

void ts_marks_release(ts_worker_t *w, ts_binding_t *b)
{
    (void)w;
    b->anchored = false;
}

void ts_worker_metrics_split(bool split, double seconds, double work_seconds)
{
    (void)split;
    (void)seconds;
    (void)work_seconds;
}

/* ---- fixtures -------------------------------------------------------------------- */

static const ts_world_t WORLD = {.id = 0, .cell_size = 100, .x0 = 0, .y0 = 0, .width = 2, .height = 1};
static const ts_cell_t P = {.world = 0, .cx = 0, .cy = 0};
static const ts_cell_t Q = {.world = 0, .cx = 1, .cy = 0};

typedef struct {
    ts_worker_t *w;
    ts_cell_t kids[4];
    uint64_t stream_seq;
} fx_t;

static ts_cell_entry_t entry(const ts_cell_t *c, uint64_t epoch, ts_cell_state_t state)
{
    ts_cell_entry_t e = {.cell = *c, .epoch = epoch, .state = state};
    ts_strlcpy(e.owner, "w1", sizeof e.owner);
    return e;
}

static void put(fx_t *f, const ts_cell_t *c, uint64_t epoch, ts_cell_state_t state)
{
    ts_cell_entry_t e = entry(c, epoch, state);
    ts_celltree_apply(f->w->tree, &e);
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->w = calloc(1, sizeof(*f->w));
    ts_strlcpy(f->w->id, "w1", sizeof f->w->id);
    f->w->world = WORLD;
    assert_int_equal(ts_celltree_new(&f->w->tree, 0, WORLD.cell_size), TS_OK);
    assert_int_equal(ts_cell_children(&P, f->kids), TS_OK);
    put(f, &P, 1, TS_CELL_ACTIVE);
    put(f, &Q, 1, TS_CELL_ACTIVE);
    checkpoints_written = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    ts_celltree_free(f->w->tree);
    free(f->w);
    free(f);
    return 0;
}

static ts_binding_t *bind(fx_t *f, const ts_cell_t *c, uint64_t epoch, ts_cell_state_t state)
{
    ts_binding_t *b = calloc(1, sizeof(*b));
    assert_int_equal(ts_zone_create(&b->zone, c, epoch, &WORLD, 50), TS_OK);
    ts_cell_entry_t e = entry(c, epoch, state);
    ts_split_set_mode(f->w, b, &e, false);
    return b;
}

static void unbind(ts_binding_t *b)
{
    ts_zone_destroy(b->zone);
    free(b);
}

static void join_at(fx_t *f, ts_zone_t *z, uint64_t id, double x, double y)
{
    ts_input_t in = {.entity = id, .seq = 1, .kind = TS_INPUT_JOIN, .a = x, .b = y};
    z->cur_stream_seq = ++f->stream_seq;
    ts_zone_apply_input(z, &in, 1);
    z->last_applied_seq = f->stream_seq;
}

/* The split of P: P split at epoch 2, its children active. */
static void split_p(fx_t *f, ts_binding_t *p)
{
    ts_cell_entry_t e = entry(&P, 2, TS_CELL_SPLIT);
    put(f, &P, 2, TS_CELL_SPLIT);
    for (int q = 0; q < 4; q++)
        put(f, &f->kids[q], 2, TS_CELL_ACTIVE);
    assert_true(ts_split_take_epoch(f->w, p, &e));
}

/* The zone publishes its queued Departures and consumes them from its own
 * stream (what the worker does over two ticks). */
static void consume_departures(fx_t *f, ts_zone_t *z)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_zone_pack_departures(z, &buf, &len), TS_OK);
    assert_non_null(buf);
    Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(ib);
    z->deps_in_flight = z->ndeps;
    ts_zone_departures_done(z);
    assert_true(ts_zone_apply_batch(z, ++f->stream_seq, ib, 2));
    tessera__v1__input_batch__free_unpacked(ib, NULL);
}

/* The input of `entity` forwarded to cell c in z's outbox, or NULL. */
static const ts_input_t *forwarded_to(const ts_zone_t *z, const ts_cell_t *c, uint64_t entity)
{
    for (size_t i = 0; i < z->nout; i++)
        for (size_t k = 0; ts_cell_eq(&z->out[i].dest, c) && k < z->out[i].ninputs; k++)
            if (z->out[i].inputs[k].entity == entity) return &z->out[i].inputs[k];
    return NULL;
}

static bool outbox_has_transfer(ts_zone_t *z, const ts_cell_t *c, uint64_t id)
{
    for (size_t i = 0; i < z->nout; i++)
        for (size_t k = 0; ts_cell_eq(&z->out[i].dest, c) && k < z->out[i].ntransfers; k++)
            if (z->out[i].transfers[k].id == id) return true;
    return false;
}

/* Stores every outbox entry (as JetStream's acks would). */
static void outbox_stored(ts_zone_t *z)
{
    for (size_t i = 0; i < z->nout; i++)
        ts_zone_outbox_done(z, i);
    ts_zone_outbox_clear(z);
}

/* ---- tests ------------------------------------------------------------------------- */

/* Every entity of P goes to the child containing its position, through a
 * Departure in P's own stream; an input arriving after that follows it. */
static void test_split_moves_every_entity_to_its_child(void **state)
{
    fx_t *f = *state;
    ts_binding_t *p = bind(f, &P, 1, TS_CELL_ACTIVE);
    ts_rng_t rng;
    ts_rng_seed(&rng, 3);
    double x[101], y[101];
    for (uint64_t id = 1; id <= 100; id++) {
        x[id] = 1 + 98 * ts_rng_unit(&rng);
        y[id] = 1 + 98 * ts_rng_unit(&rng);
        join_at(f, p->zone, id, x[id], y[id]);
    }
    split_p(f, p);
    assert_int_equal(p->zone->epoch, 2);
    assert_true(p->forwarding);

    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->ndeps, 100);
    for (size_t i = 0; i < p->zone->ndeps; i++) {
        const ts_departure_t *d = &p->zone->deps[i];
        ts_cell_t want;
        ts_cell_from_pos(0, 100, 1, x[d->entity], y[d->entity], &want);
        assert_true(ts_cell_eq(&d->to, &want));
    }
    /* nothing is queued twice while the Departures are on their way */
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->ndeps, 100);

    consume_departures(f, p->zone);
    assert_int_equal(ts_zone_entities(p->zone), 0);
    for (uint64_t id = 1; id <= 100; id++) {
        ts_cell_t want;
        ts_cell_from_pos(0, 100, 1, x[id], y[id], &want);
        assert_true(outbox_has_transfer(p->zone, &want, id));
    }
    /* an input published to P after the split (a gateway that has not seen
     * it) goes to the entity's child */
    ts_input_t mv = {.entity = 7, .seq = 2, .kind = TS_INPUT_MOVE, .a = 1, .b = 1};
    ts_zone_apply_input(p->zone, &mv, 2);
    ts_cell_t kid7;
    ts_cell_from_pos(0, 100, 1, x[7], y[7], &kid7);
    const ts_input_t *fw = forwarded_to(p->zone, &kid7, 7);
    assert_non_null(fw);
    assert_int_equal(fw->seq, 2);

    /* done once every Transfer is stored: counted once, a checkpoint written */
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(f->w->stats.splits, 0);
    outbox_stored(p->zone);
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(f->w->stats.splits, 1);
    assert_int_equal(checkpoints_written, 1);
    assert_int_equal(p->fwd_moved, 100);
    unbind(p);
}

/* A split seen before its children: the entities wait (no Departure to a
 * cell nobody binds), then go as soon as the children are known. */
static void test_split_waits_for_its_children(void **state)
{
    fx_t *f = *state;
    ts_binding_t *p = bind(f, &P, 1, TS_CELL_ACTIVE);
    join_at(f, p->zone, 1, 10, 10);
    join_at(f, p->zone, 2, 90, 90);
    ts_cell_entry_t e = entry(&P, 2, TS_CELL_SPLIT);
    put(f, &P, 2, TS_CELL_SPLIT);
    assert_true(ts_split_take_epoch(f->w, p, &e));
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->ndeps, 0);
    put(f, &f->kids[TS_QUAD_SW], 2, TS_CELL_ACTIVE);
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->ndeps, 1);
    assert_true(ts_cell_eq(&p->zone->deps[0].to, &f->kids[TS_QUAD_SW]));
    put(f, &f->kids[TS_QUAD_NE], 2, TS_CELL_ACTIVE);
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->ndeps, 2);
    assert_true(ts_cell_eq(&p->zone->deps[1].to, &f->kids[TS_QUAD_NE]));
    unbind(p);
}

/* A Join or a Transfer reaching a split cell is moved on to the live cell
 * at its position at the next tick. */
static void test_forwarder_moves_arrivals_on(void **state)
{
    fx_t *f = *state;
    ts_binding_t *p = bind(f, &P, 1, TS_CELL_ACTIVE);
    split_p(f, p);
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->ndeps, 0);
    join_at(f, p->zone, 5, 70, 20);                                           /* SE */
    ts_entity_t t = {.id = 6, .x = 20, .y = 70, .hops = 3, .incarnation = 1}; /* NW */
    ts_zone_accept_transfer(p->zone, &t);
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->ndeps, 2);
    for (size_t i = 0; i < 2; i++) {
        const ts_departure_t *d = &p->zone->deps[i];
        assert_true(ts_cell_eq(&d->to, &f->kids[d->entity == 5 ? TS_QUAD_SE : TS_QUAD_NW]));
    }
    consume_departures(f, p->zone);
    assert_true(outbox_has_transfer(p->zone, &f->kids[TS_QUAD_SE], 5));
    assert_true(outbox_has_transfer(p->zone, &f->kids[TS_QUAD_NW], 6));
    assert_int_equal(f->w->stats.fwd_entities, 2); /* after the split: forwarded, not a split */
    unbind(p);
}

/* An emptied split cell keeps its departed records however long it
 * forwards (a live cell forgets them after TS_ZONE_DEPARTED_TICKS). */
static void test_forwarder_keeps_departed_records(void **state)
{
    fx_t *f = *state;
    ts_binding_t *p = bind(f, &P, 1, TS_CELL_ACTIVE);
    join_at(f, p->zone, 9, 30, 30);
    split_p(f, p);
    ts_split_step(f->w, p, 0.05);
    consume_departures(f, p->zone);
    outbox_stored(p->zone);
    for (uint64_t tick = 3; tick < 3 + 3 * TS_ZONE_DEPARTED_TICKS; tick++) {
        f->w->tick = tick;
        ts_split_step(f->w, p, 0.05);
    }
    ts_input_t mv = {.entity = 9, .seq = 2, .kind = TS_INPUT_MOVE, .a = 1, .b = 0};
    ts_zone_apply_input(p->zone, &mv, f->w->tick);
    assert_non_null(forwarded_to(p->zone, &f->kids[TS_QUAD_SW], 9));
    /* it writes its periodic checkpoint while something is in flight, then
     * once more, then not until something arrives */
    assert_true(ts_split_checkpoint_due(p));
    assert_true(ts_split_checkpoint_due(p));
    outbox_stored(p->zone);
    assert_true(ts_split_checkpoint_due(p));
    assert_false(ts_split_checkpoint_due(p));
    join_at(f, p->zone, 10, 60, 60);
    assert_true(ts_split_checkpoint_due(p));
    unbind(p);
}

/* A live cell's border crossing goes to the deepest live cell at the
 * entity's position: out of Q into split P lands in P's child. */
static void test_crossing_into_a_split_cell_goes_to_the_child(void **state)
{
    fx_t *f = *state;
    ts_binding_t *p = bind(f, &P, 1, TS_CELL_ACTIVE);
    split_p(f, p);
    ts_binding_t *q = bind(f, &Q, 1, TS_CELL_ACTIVE);
    join_at(f, q->zone, 11, 100.5, 80);
    ts_input_t mv = {.entity = 11, .seq = 2, .kind = TS_INPUT_MOVE, .a = -20, .b = 0};
    ts_zone_apply_input(q->zone, &mv, 1);
    ts_split_step(f->w, q, 0.05); /* x: 100.5 -> 99.5 */
    assert_int_equal(q->zone->ndeps, 1);
    assert_true(ts_cell_eq(&q->zone->deps[0].to, &f->kids[TS_QUAD_NE]));
    unbind(q);
    unbind(p);
}

/* The merge: P split -> active and its children active -> retired at
 * epoch + 1 are taken over in place; a child's entities go back to P. */
static void test_merge_takes_over_in_place(void **state)
{
    fx_t *f = *state;
    ts_binding_t *p = bind(f, &P, 1, TS_CELL_ACTIVE);
    split_p(f, p);
    ts_binding_t *c = bind(f, &f->kids[TS_QUAD_NW], 2, TS_CELL_ACTIVE);
    join_at(f, c->zone, 21, 25, 75);
    assert_false(c->forwarding);

    ts_cell_entry_t pe = entry(&P, 3, TS_CELL_ACTIVE), ce = entry(&f->kids[TS_QUAD_NW], 3, TS_CELL_RETIRED);
    put(f, &P, 3, TS_CELL_ACTIVE);
    assert_true(ts_split_take_epoch(f->w, p, &pe));
    assert_false(p->forwarding);
    assert_int_equal(f->w->stats.merges, 1);
    put(f, &f->kids[TS_QUAD_NW], 3, TS_CELL_RETIRED);
    assert_true(ts_split_take_epoch(f->w, c, &ce));
    assert_true(c->forwarding);
    assert_int_equal(c->zone->epoch, 3);

    ts_split_step(f->w, c, 0.05);
    assert_int_equal(c->zone->ndeps, 1);
    assert_true(ts_cell_eq(&c->zone->deps[0].to, &P));
    consume_departures(f, c->zone);
    outbox_stored(c->zone);
    ts_split_step(f->w, c, 0.05);
    assert_int_equal(f->w->stats.merged_cells, 1);
    unbind(c);
    unbind(p);
}

/* The counter move marker a forwarding cell queued into its own stream,
 * consumed at the next stream seq; returns the CountersInput it decided
 * for `to` (the entry's only input). */
static const ts_input_t *consume_counter_marker(fx_t *f, ts_zone_t *z, const ts_cell_t *to)
{
    assert_int_equal(z->nout, 1);
    assert_true(ts_cell_eq(&z->out[0].dest, &z->cell));
    assert_int_equal(z->out[0].ninputs, 1);
    assert_int_equal(z->out[0].inputs[0].kind, TS_INPUT_COUNTER_MOVE);
    assert_true(ts_cell_eq(&z->out[0].inputs[0].peer, to));
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_zone_pack_outbox(z, 0, &buf, &len), TS_OK);
    Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(ib);
    outbox_stored(z);
    assert_true(ts_zone_apply_batch(z, ++f->stream_seq, ib, 2));
    tessera__v1__input_batch__free_unpacked(ib, NULL);
    assert_int_equal(z->nout, 1);
    assert_true(ts_cell_eq(&z->out[0].dest, to));
    assert_int_equal(z->out[0].marker_seq, f->stream_seq);
    assert_int_equal(z->out[0].inputs[0].kind, TS_INPUT_COUNTERS);
    return &z->out[0].inputs[0];
}

/* A split cell's world counters go to child quadrant 0 and a retired
 * cell's to its parent, each through a marker in the cell's own input
 * stream (once it caught up); a merge taken in place leaves the parent's
 * own counters as they are (the children's come through its stream). */
static void test_forwarders_move_their_world_counters(void **state)
{
    fx_t *f = *state;
    ts_binding_t *p = bind(f, &P, 1, TS_CELL_ACTIVE);
    p->zone->game.counters[0] = 5;
    p->zone->game.counters[7] = -2;
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->nout, 0); /* a live cell keeps its own */
    split_p(f, p);
    p->catching_up = true; /* replaying: its stream may hold a marker already */
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->nout, 0);
    p->catching_up = false;
    ts_split_step(f->w, p, 0.05);
    ts_split_step(f->w, p, 0.05); /* queued once */
    const ts_input_t *mv = consume_counter_marker(f, p->zone, &f->kids[0]);
    assert_int_equal(mv->values[0], 5);
    assert_int_equal(mv->values[7], -2);
    assert_true(ts_cell_eq(&mv->peer, &P));
    assert_int_equal(ts_zone_counters_len(p->zone), 0);
    outbox_stored(p->zone);
    ts_split_step(f->w, p, 0.05);
    assert_int_equal(p->zone->nout, 0); /* nothing left to move */
    p->zone->game.counters[2] = 1;      /* applied while it forwarded */

    ts_binding_t *a = bind(f, &f->kids[0], 2, TS_CELL_ACTIVE);
    a->zone->game.counters[0] = 7;
    ts_cell_entry_t pe = entry(&P, 3, TS_CELL_ACTIVE), ae = entry(&f->kids[0], 3, TS_CELL_RETIRED);
    put(f, &P, 3, TS_CELL_ACTIVE);
    assert_true(ts_split_take_epoch(f->w, p, &pe));
    assert_int_equal(p->zone->game.counters[2], 1);
    assert_int_equal(p->zone->game.counters[0], 0);
    put(f, &f->kids[0], 3, TS_CELL_RETIRED);
    assert_true(ts_split_take_epoch(f->w, a, &ae));
    ts_split_step(f->w, a, 0.05);
    mv = consume_counter_marker(f, a->zone, &P);
    assert_int_equal(mv->values[0], 7);
    assert_int_equal(ts_zone_counters_len(a->zone), 0);
    unbind(a);
    unbind(p);
}

/* Only a change of exactly one epoch that involves split or retired is
 * taken in place; anything else rebinds as before. */
static void test_take_epoch_rules(void **state)
{
    fx_t *f = *state;
    ts_binding_t *b = bind(f, &Q, 5, TS_CELL_ACTIVE);
    ts_cell_entry_t e = entry(&Q, 6, TS_CELL_ACTIVE);
    assert_false(ts_split_take_epoch(f->w, b, &e)); /* active -> active: someone else's doing */
    e = entry(&Q, 7, TS_CELL_SPLIT);
    assert_false(ts_split_take_epoch(f->w, b, &e)); /* a gap: someone may have owned it between */
    e = entry(&Q, 6, TS_CELL_SPLIT);
    b->state = TS_BIND_FROZEN;
    assert_false(ts_split_take_epoch(f->w, b, &e)); /* a handover decides */
    b->state = TS_BIND_ACTIVE;
    assert_true(ts_split_take_epoch(f->w, b, &e));
    assert_int_equal(b->zone->epoch, 6);
    assert_true(b->forwarding);
    assert_true(ts_split_holds(TS_CELL_SPLIT) && ts_split_holds(TS_CELL_RETIRED) &&
                ts_split_holds(TS_CELL_ACTIVE));
    assert_false(ts_split_holds(TS_CELL_HANDOVER));
    unbind(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_split_moves_every_entity_to_its_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_waits_for_its_children, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forwarder_moves_arrivals_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forwarder_keeps_departed_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crossing_into_a_split_cell_goes_to_the_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_takes_over_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forwarders_move_their_world_counters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_take_epoch_rules, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
