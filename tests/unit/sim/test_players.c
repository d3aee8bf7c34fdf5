/* The sim's players: entity ids the sim can recognise, a Join then Moves
 * with gap-free client sequences, inputs addressed to the cell the workers'
 * state last showed, and an applied count that only the state can raise. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "players.h"
#include "tessera/proto.h"

static const ts_world_t WORLD = {.id = 3, .cell_size = 100, .x0 = -2, .y0 = -2, .width = 4, .height = 4};
#define PERIOD_US 200000 /* 5 Hz */

static ts_players_t *make(size_t n, uint64_t seed)
{
    ts_players_t *pl = NULL;
    assert_int_equal(ts_players_create(&pl, n, seed, &WORLD, 20, 5, 1000000), TS_OK);
    assert_non_null(pl);
    return pl;
}

/* Packs a StateDelta of cell (cx, cy) showing entity with inputs_applied,
 * and optionally a departure of left_entity to (tx, ty). */
static uint8_t *state_delta(int32_t cx, int32_t cy, uint64_t entity, uint64_t applied, uint64_t left_entity,
                            int32_t tx, int32_t ty, size_t *len)
{
    ts_cell_t cell = {.world = WORLD.id, .cx = cx, .cy = cy}, to = {.world = WORLD.id, .cx = tx, .cy = ty};
    Tessera__V1__CellId cell_pb, to_pb;
    ts_proto_cell_init(&cell_pb, &cell);
    ts_proto_cell_init(&to_pb, &to);
    Tessera__V1__EntityState es = TESSERA__V1__ENTITY_STATE__INIT, *esp = &es;
    es.id = entity;
    es.x = cx * 100.0 + 50;
    es.y = cy * 100.0 + 50;
    es.inputs_applied = applied;
    Tessera__V1__EntityLeft left = TESSERA__V1__ENTITY_LEFT__INIT, *leftp = &left;
    left.id = left_entity;
    left.to = &to_pb;
    Tessera__V1__StateDelta d = TESSERA__V1__STATE_DELTA__INIT;
    d.cell = &cell_pb;
    d.epoch = 4;
    if (entity) {
        d.n_entities = 1;
        d.entities = &esp;
    }
    if (left_entity) {
        d.n_left = 1;
        d.left = &leftp;
    }
    uint8_t *buf = NULL;
    assert_int_equal(ts_proto_pack(&d.base, &buf, len), TS_OK);
    return buf;
}

static void apply(ts_players_t *pl, int32_t cx, int32_t cy, uint64_t entity, uint64_t applied,
                  uint64_t left_entity, int32_t tx, int32_t ty)
{
    size_t len;
    uint8_t *buf = state_delta(cx, cy, entity, applied, left_entity, tx, ty, &len);
    assert_int_equal(ts_players_apply_state(pl, buf, len), TS_OK);
    free(buf);
}

/* Inputs for `entity` in the next collect at now_us. */
static size_t collect_for(ts_players_t *pl, uint64_t now_us, uint64_t entity, ts_sim_input_t *out, size_t cap)
{
    ts_sim_inputs_t in = {0};
    assert_int_equal(ts_players_collect(pl, now_us, &in), TS_OK);
    size_t n = 0;
    for (size_t i = 0; i < in.len; i++) {
        if (in.v[i].entity == entity && n < cap) out[n++] = in.v[i];
    }
    ts_sim_inputs_free(&in);
    return n;
}

static void test_entity_ids(void **state)
{
    ts_players_t *a = make(100, 42), *b = make(100, 42), *c = make(100, 43);
    uint64_t id0 = ts_players_entity(a, 0), id99 = ts_players_entity(a, 99);
    assert_int_equal(id0 >> 48, 0x5150);
    assert_int_equal(id0 & 0xffffffffu, 0);
    assert_int_equal(id99 & 0xffffffffu, 99);
    assert_int_equal(id0 >> 32, id99 >> 32);
    assert_int_equal(ts_players_entity(b, 7), ts_players_entity(a, 7));
    assert_int_not_equal(ts_players_entity(c, 7), ts_players_entity(a, 7));
    assert_int_equal(ts_players_index(a, id99), 99);
    assert_int_equal(ts_players_index(a, id0 + 100), -1);
    assert_int_equal(ts_players_index(a, ts_players_entity(c, 5)), -1);
    assert_int_equal(ts_players_index(a, 5), -1);
    assert_int_equal(ts_players_count(a), 100);
    ts_players_destroy(a);
    ts_players_destroy(b);
    ts_players_destroy(c);
    ts_players_destroy(NULL);
}

static void test_create_rejects_bad_arguments(void **state)
{
    ts_players_t *pl = (ts_players_t *)&pl;
    assert_int_equal(ts_players_create(&pl, 0, 1, &WORLD, 20, 5, 0), TS_ERR_INVALID);
    assert_null(pl);
    assert_int_equal(ts_players_create(&pl, 10, 1, &WORLD, 20, 0, 0), TS_ERR_INVALID);
    assert_int_equal(ts_players_create(&pl, 10, 1, &WORLD, NAN, 5, 0), TS_ERR_INVALID);
    ts_world_t w = WORLD;
    w.cell_size = 0;
    assert_int_equal(ts_players_create(&pl, 10, 1, &w, 20, 5, 0), TS_ERR_INVALID);
}

static void test_join_then_moves(void **state)
{
    const size_t n = 200;
    ts_players_t *pl = make(n, 1);
    ts_sim_inputs_t in = {0};
    /* joins are spread over the first period: all are due after it */
    assert_int_equal(ts_players_collect(pl, 1000000 + PERIOD_US, &in), TS_OK);
    assert_int_equal(in.len, n);
    bool seen[200] = {false};
    bool west = false, east = false;
    for (size_t i = 0; i < in.len; i++) {
        const ts_sim_input_t *j = &in.v[i];
        long idx = ts_players_index(pl, j->entity);
        assert_true(idx >= 0);
        assert_false(seen[idx]);
        seen[idx] = true;
        assert_int_equal(j->kind, TS_SIM_JOIN);
        assert_int_equal(j->seq, 1);
        assert_true(fabs(j->a) <= TS_SIM_START_SPREAD && fabs(j->b) <= TS_SIM_START_SPREAD);
        ts_cell_t want;
        ts_cell_from_pos(WORLD.id, WORLD.cell_size, 0, j->a, j->b, &want);
        assert_true(ts_cell_eq(&j->cell, &want));
        west |= j->a < 0;
        east |= j->a >= 0;
    }
    assert_true(west && east); /* players start on both workers' sides */

    /* nothing is due again before a period passed */
    in.len = 0;
    assert_int_equal(ts_players_collect(pl, 1000000 + PERIOD_US + 1000, &in), TS_OK);
    assert_true(in.len < n / 4);

    /* every period brings one Move per player, sequences without gaps */
    uint64_t id = ts_players_entity(pl, 17), next_seq = 2;
    for (uint64_t k = 2; k < 8; k++) {
        ts_sim_input_t got[8];
        size_t m = collect_for(pl, 1000000 + k * PERIOD_US, id, got, 8);
        assert_true(m <= 1);
        for (size_t i = 0; i < m; i++) {
            assert_int_equal(got[i].kind, TS_SIM_MOVE);
            assert_int_equal(got[i].seq, next_seq++);
            assert_true(fabs(hypot(got[i].a, got[i].b) - 20) < 1e-6);
        }
    }
    assert_true(next_seq >= 7);
    ts_sim_inputs_free(&in);
    ts_players_destroy(pl);
}

static void test_state_moves_believed_cell_and_applied(void **state)
{
    ts_players_t *pl = make(10, 5);
    ts_sim_inputs_t in = {0};
    assert_int_equal(ts_players_collect(pl, 1000000 + PERIOD_US, &in), TS_OK);
    ts_sim_inputs_free(&in);
    uint64_t id = ts_players_entity(pl, 3), other = ts_players_entity(pl, 4);

    ts_players_stats_t st;
    ts_players_stats(pl, &st);
    assert_int_equal(st.applied, 0);
    assert_int_equal(st.seen, 0);

    apply(pl, 1, -2, id, 7, 0, 0, 0);
    ts_sim_input_t got[8];
    assert_int_equal(collect_for(pl, 1000000 + 2 * PERIOD_US, id, got, 8), 1);
    assert_int_equal(got[0].cell.cx, 1);
    assert_int_equal(got[0].cell.cy, -2);
    assert_int_equal(got[0].epoch, 4);
    ts_players_stats(pl, &st);
    assert_int_equal(st.applied, 7);
    assert_int_equal(st.seen, 1);

    /* an older delta cannot lower the applied count */
    apply(pl, 1, -2, id, 5, 0, 0, 0);
    ts_players_stats(pl, &st);
    assert_int_equal(st.applied, 7);

    /* departure: the next input goes to the destination */
    apply(pl, 1, -2, other, 2, id, 0, -2);
    assert_int_equal(collect_for(pl, 1000000 + 3 * PERIOD_US, id, got, 8), 1);
    assert_int_equal(got[0].cell.cx, 0);
    assert_int_equal(got[0].cell.cy, -2);
    ts_players_stats(pl, &st);
    assert_int_equal(st.applied, 9);
    assert_int_equal(st.seen, 2);
    assert_true(st.crossings >= 2);

    /* entities that are not ours change nothing */
    apply(pl, -2, -2, 0x1234, 1000, 0x5678, 1, 1);
    ts_players_stats(pl, &st);
    assert_int_equal(st.applied, 9);
    assert_int_equal(st.deltas, 4);

    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_int_equal(ts_players_apply_state(pl, junk, sizeof junk), TS_ERR_MALFORMED);
    ts_players_stats(pl, &st);
    assert_int_equal(st.malformed, 1);
    ts_players_destroy(pl);
}

static void test_leaves_follow_the_last_seq(void **state)
{
    ts_players_t *pl = make(4, 9);
    ts_sim_inputs_t in = {0};
    assert_int_equal(ts_players_collect_leaves(pl, &in), TS_OK);
    assert_int_equal(in.len, 0); /* nobody joined yet */
    assert_int_equal(ts_players_collect(pl, 1000000 + PERIOD_US, &in), TS_OK);
    assert_int_equal(ts_players_collect(pl, 1000000 + 2 * PERIOD_US, &in), TS_OK);
    assert_int_equal(in.len, 8);
    in.len = 0;
    assert_int_equal(ts_players_collect_leaves(pl, &in), TS_OK);
    assert_int_equal(in.len, 4);
    for (size_t i = 0; i < in.len; i++) {
        assert_int_equal(in.v[i].kind, TS_SIM_LEAVE);
        assert_int_equal(in.v[i].seq, 3);
    }
    ts_sim_inputs_free(&in);
    ts_players_destroy(pl);
}

static void test_players_stay_inside_a_small_world(void **state)
{
    ts_world_t w = {.id = 0, .cell_size = 10, .x0 = 0, .y0 = 0, .width = 1, .height = 1};
    ts_players_t *pl = NULL;
    assert_int_equal(ts_players_create(&pl, 20, 3, &w, 10, 10, 0), TS_OK);
    ts_sim_inputs_t in = {0};
    for (uint64_t t = 0; t < 200; t++) {
        in.len = 0;
        assert_int_equal(ts_players_collect(pl, t * 100000, &in), TS_OK);
        for (size_t i = 0; i < in.len; i++) {
            if (in.v[i].kind == TS_SIM_JOIN)
                assert_true(in.v[i].a >= 0 && in.v[i].a < 10 && in.v[i].b >= 0 && in.v[i].b < 10);
            assert_int_equal(in.v[i].cell.cx, 0);
            assert_int_equal(in.v[i].cell.cy, 0);
        }
    }
    ts_sim_inputs_free(&in);
    ts_players_destroy(pl);
}

static void test_hotspot_parse(void **state)
{
    (void)state;
    ts_sim_hotspot_t h;
    assert_int_equal(ts_sim_hotspot_parse("125,-25.5,20", &h), TS_OK);
    assert_true(h.x == 125 && h.y == -25.5 && h.r == 20 && h.share == 0.5 && h.hold_s == 60);
    assert_int_equal(ts_sim_hotspot_parse("0,0,5,0.25,12", &h), TS_OK);
    assert_true(h.share == 0.25 && h.hold_s == 12 && h.from_s == 0);
    assert_int_equal(ts_sim_hotspot_parse("0,0,5,0.25,40,25", &h), TS_OK);
    assert_true(h.hold_s == 40 && h.from_s == 25);
    static const char *const bad[] = {"",
                                      "1,2",
                                      "1,2,0",
                                      "1,2,-3",
                                      "1,2,3,0",
                                      "1,2,3,1.5",
                                      "1,2,3,0.5,-1",
                                      "1,2,3,0.5,1,9",
                                      "a,2,3",
                                      "1,,3",
                                      "1,2,3,",
                                      "1,2,nan",
                                      "1,2,3,1,9,9",
                                      "1,2,3,1,9,-1",
                                      "1,2,3,1,9,2,1",
                                      "1,2,3,1,9,inf"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ts_sim_hotspot_parse(bad[i], &h), TS_ERR_PARSE);
}

/* Counts the players inside the circle after running the walk from t0 to t1 (10 Hz). */
static size_t run_until(ts_players_t *pl, uint64_t *t, uint64_t until, ts_sim_inputs_t *in)
{
    for (; *t < until; *t += 100000) {
        in->len = 0;
        assert_int_equal(ts_players_collect(pl, *t, in), TS_OK);
    }
    return ts_players_in_hotspot(pl, *t);
}

static void test_hotspot_gathers_then_disperses(void **state)
{
    (void)state;
    ts_players_t *pl = make(200, 11);
    ts_sim_hotspot_t h = {.x = 60, .y = -40, .r = 30, .share = 1.0, .hold_s = 40};
    ts_players_set_hotspot(pl, &h, 1000000);
    ts_sim_inputs_t in = {0};
    uint64_t t = 1000000;
    /* at 20 units/s every player reaches the circle from anywhere in the 400x400 world within 30 s */
    size_t inside = run_until(pl, &t, 31000000, &in);
    assert_int_equal(inside, 200);
    /* and stays there while the crowd holds */
    inside = run_until(pl, &t, 40000000, &in);
    assert_int_equal(inside, 200);
    /* then spreads over the world: a circle of 1.8% of its area keeps a few */
    inside = run_until(pl, &t, 80000000, &in);
    assert_true(inside < 20);
    ts_sim_inputs_free(&in);
    ts_players_destroy(pl);
}

/* With from_s, the crowd wanders like everyone else until then. */
static void test_hotspot_gathers_from_its_start(void **state)
{
    (void)state;
    ts_players_t *pl = make(200, 11);
    ts_sim_hotspot_t h = {.x = 60, .y = -40, .r = 30, .share = 1.0, .hold_s = 70, .from_s = 30};
    ts_players_set_hotspot(pl, &h, 1000000);
    ts_sim_inputs_t in = {0};
    uint64_t t = 1000000;
    /* 30 s of free wandering: a circle of 1.8% of the world holds a few */
    size_t inside = run_until(pl, &t, 31000000, &in);
    assert_true(inside < 20);
    /* then 30 s are enough to reach it from anywhere */
    inside = run_until(pl, &t, 61000000, &in);
    assert_int_equal(inside, 200);
    ts_sim_inputs_free(&in);
    ts_players_destroy(pl);
}

/* The walk of one crowd member, as gateway clients steer it. */
static void test_crowd_heading(void **state)
{
    (void)state;
    ts_sim_hotspot_t h = {.x = 100, .y = 0, .r = 10, .share = 1.0, .hold_s = 20, .from_s = 5};
    ts_rng_t rng;
    ts_rng_seed(&rng, 3);
    ts_sim_crowd_t m;
    ts_sim_crowd_init(&m, &h, &rng, -200, -200, 200, 200);
    assert_true(m.crowd);
    assert_true(m.tx >= -200 && m.tx < 200 && m.ty >= -200 && m.ty < 200);
    double heading = 99;
    /* before from_s: free */
    assert_false(ts_sim_crowd_heading(&m, &h, 4.9, 0, 0, 1, 0, &rng, &heading));
    /* gathering: towards the centre (east), turned by nothing here */
    assert_true(ts_sim_crowd_heading(&m, &h, 5, 0, 0, 1, 0, &rng, &heading));
    assert_true(fabs(heading) < 1e-9);
    /* inside the circle: free */
    assert_false(ts_sim_crowd_heading(&m, &h, 10, 101, 1, 1, 0, &rng, &heading));
    /* after hold_s: towards its spot, until it gets there */
    assert_true(ts_sim_crowd_heading(&m, &h, 20, 100, 0, 1, 0, &rng, &heading));
    assert_true(fabs(heading - atan2(m.ty, m.tx - 100)) < 1e-9);
    assert_false(ts_sim_crowd_heading(&m, &h, 30, m.tx, m.ty, 1, 0, &rng, &heading));
    assert_true(m.dispersed);
    assert_false(ts_sim_crowd_heading(&m, &h, 31, 0, 0, 1, 0, &rng, &heading));
    /* not of the crowd: always free */
    h.share = 1e-12;
    ts_sim_crowd_init(&m, &h, &rng, -200, -200, 200, 200);
    assert_false(m.crowd);
    assert_false(ts_sim_crowd_heading(&m, &h, 10, 0, 0, 1, 0, &rng, &heading));
}

static bool locate_sub3(void *ud, double x, double y, ts_cell_t *cell, uint64_t *epoch)
{
    (void)ud;
    ts_cell_from_pos(WORLD.id, WORLD.cell_size, 2, x, y, cell);
    *epoch = 9;
    return true;
}

static void test_join_goes_to_the_located_cell(void **state)
{
    (void)state;
    ts_players_t *pl = make(50, 5);
    ts_players_set_locate(pl, locate_sub3, NULL);
    ts_sim_inputs_t in = {0};
    assert_int_equal(ts_players_collect(pl, 1000000 + PERIOD_US, &in), TS_OK);
    assert_int_equal(in.len, 50);
    for (size_t i = 0; i < in.len; i++) {
        ts_cell_t want;
        ts_cell_from_pos(WORLD.id, WORLD.cell_size, 2, in.v[i].a, in.v[i].b, &want);
        assert_int_equal(in.v[i].kind, TS_SIM_JOIN);
        assert_true(ts_cell_eq(&in.v[i].cell, &want));
        assert_int_equal(in.v[i].epoch, 9);
    }
    ts_sim_inputs_free(&in);
    ts_players_destroy(pl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hotspot_parse),
        cmocka_unit_test(test_hotspot_gathers_then_disperses),
        cmocka_unit_test(test_hotspot_gathers_from_its_start),
        cmocka_unit_test(test_crowd_heading),
        cmocka_unit_test(test_join_goes_to_the_located_cell),
        cmocka_unit_test(test_entity_ids),
        cmocka_unit_test(test_create_rejects_bad_arguments),
        cmocka_unit_test(test_join_then_moves),
        cmocka_unit_test(test_state_moves_believed_cell_and_applied),
        cmocka_unit_test(test_leaves_follow_the_last_seq),
        cmocka_unit_test(test_players_stay_inside_a_small_world),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
