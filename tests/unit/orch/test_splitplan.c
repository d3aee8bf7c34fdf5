/* The split and merge policy: a cell splits only after `windows`
 * consecutive hot reports, never beyond max_depth or inside its cooldown;
 * four children merge only when cold together for `merge_windows` reports;
 * a load oscillating around the threshold never splits nor flaps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "splitplan.h"
#include "tessera/util.h"

#define S 1000000ULL

static ts_splitplan_cfg_t cfg(void)
{
    return (ts_splitplan_cfg_t){.max_entities = 100,
                                .max_tick_share = 0,
                                .windows = 3,
                                .cooldown_us = 10 * S,
                                .merge_max_entities = 40,
                                .merge_windows = 2,
                                .max_depth = 2};
}

static ts_splitplan_cell_t cell_at(uint8_t depth, uint64_t sub, ts_cell_state_t state, const char *owner,
                                   uint32_t entities, uint64_t report_us)
{
    ts_splitplan_cell_t c;
    memset(&c, 0, sizeof c);
    c.entry.cell = (ts_cell_t){.world = 0, .cx = 1, .cy = -1, .depth = depth, .sub = sub};
    c.entry.state = state;
    c.entry.epoch = 1;
    ts_strlcpy(c.entry.owner, owner, sizeof c.entry.owner);
    c.has_load = true;
    c.entities = entities;
    c.report_us = report_us;
    return c;
}

/* One root cell with `entities`, reported at t; returns the actions. */
static size_t eval_root(ts_splitplan_t *p, uint32_t entities, uint64_t t, ts_splitplan_action_t *out)
{
    ts_splitplan_cell_t c = cell_at(0, 0, TS_CELL_ACTIVE, "w1", entities, t);
    return ts_splitplan_eval(p, &c, 1, t, out, 4);
}

static void test_split_after_windows(void **state)
{
    (void)state;
    ts_splitplan_cfg_t c = cfg();
    ts_splitplan_t p;
    ts_splitplan_init(&p, &c);
    ts_splitplan_action_t a[4];
    assert_int_equal(eval_root(&p, 150, 1 * S, a), 0);
    assert_int_equal(eval_root(&p, 150, 2 * S, a), 0);
    /* evaluating again without a new report counts nothing */
    ts_splitplan_cell_t same = cell_at(0, 0, TS_CELL_ACTIVE, "w1", 150, 2 * S);
    assert_int_equal(ts_splitplan_eval(&p, &same, 1, 2 * S + 1, a, 4), 0);
    assert_int_equal(eval_root(&p, 150, 3 * S, a), 1);
    assert_int_equal(a[0].kind, TS_SPLITPLAN_SPLIT);
    assert_int_equal(a[0].cell, 0);
    assert_int_equal(a[0].entities, 150);
    /* at the threshold is not over it */
    ts_splitplan_free(&p);
    ts_splitplan_init(&p, &c);
    for (int i = 1; i <= 10; i++)
        assert_int_equal(eval_root(&p, 100, (uint64_t)i * S, a), 0);
    ts_splitplan_free(&p);
}

static void test_oscillation_never_splits(void **state)
{
    (void)state;
    ts_splitplan_cfg_t c = cfg();
    ts_splitplan_t p;
    ts_splitplan_init(&p, &c);
    ts_splitplan_action_t a[4];
    /* two reports over, one under, forever: never three in a row */
    for (int i = 1; i <= 300; i++) {
        uint32_t e = i % 3 == 0 ? 95 : 110;
        assert_int_equal(eval_root(&p, e, (uint64_t)i * S, a), 0);
    }
    ts_splitplan_free(&p);
}

static void test_tick_share(void **state)
{
    (void)state;
    ts_splitplan_cfg_t c = cfg();
    c.max_tick_share = 0.5;
    ts_splitplan_t p;
    ts_splitplan_init(&p, &c);
    ts_splitplan_action_t a[4];
    size_t n = 0;
    for (int i = 1; i <= 3; i++) {
        ts_splitplan_cell_t x = cell_at(0, 0, TS_CELL_ACTIVE, "w1", 10, (uint64_t)i * S);
        x.tick_share = 0.7;
        n = ts_splitplan_eval(&p, &x, 1, (uint64_t)i * S, a, 4);
    }
    assert_int_equal(n, 1);
    ts_splitplan_free(&p);
}

static void test_depth_limit(void **state)
{
    (void)state;
    ts_splitplan_cfg_t c = cfg();
    ts_splitplan_t p;
    ts_splitplan_init(&p, &c);
    ts_splitplan_action_t a[4];
    /* a cell at max_depth (2) never splits; one at depth 1 does */
    ts_splitplan_cell_t deep[2] = {cell_at(2, 5, TS_CELL_ACTIVE, "w1", 1000, 0),
                                   cell_at(1, 2, TS_CELL_ACTIVE, "w1", 1000, 0)};
    size_t n = 0;
    for (int i = 1; i <= 5; i++) {
        deep[0].report_us = deep[1].report_us = (uint64_t)i * S;
        n = ts_splitplan_eval(&p, deep, 2, (uint64_t)i * S, a, 4);
        assert_true(n <= 1);
        if (n == 1) assert_int_equal(a[0].cell, 1);
    }
    assert_int_equal(n, 1);
    ts_splitplan_free(&p);
}

/* The parent (split) and its four children with the given entities and owners. */
static void family(ts_splitplan_cell_t f[5], const uint32_t e[4], const char *const owners[4], uint64_t t)
{
    f[0] = cell_at(0, 0, TS_CELL_SPLIT, "w1", 0, t);
    f[0].has_load = false;
    for (int q = 0; q < 4; q++)
        f[1 + q] = cell_at(1, (uint64_t)q, TS_CELL_ACTIVE, owners[q], e[q], t);
}

static void test_cooldown_and_merge(void **state)
{
    (void)state;
    ts_splitplan_cfg_t c = cfg();
    ts_splitplan_t p;
    ts_splitplan_init(&p, &c);
    ts_splitplan_action_t a[4];
    for (int i = 1; i <= 3; i++)
        eval_root(&p, 500, (uint64_t)i * S, a);
    assert_int_equal(a[0].kind, TS_SPLITPLAN_SPLIT);
    ts_splitplan_done(&p, &(ts_cell_t){.world = 0, .cx = 1, .cy = -1}, 3 * S);
    assert_true(ts_splitplan_cooling(&p, &(ts_cell_t){.world = 0, .cx = 1, .cy = -1}, 4 * S));

    /* the children are hot (200 each) but cooling: no split until 13 s */
    static const char *const one[4] = {"w1", "w1", "w1", "w1"};
    uint32_t hotload[4] = {200, 200, 200, 200};
    ts_splitplan_cell_t f[5];
    size_t n = 0;
    uint64_t t = 4 * S;
    for (; t < 13 * S; t += S) {
        family(f, hotload, one, t);
        n = ts_splitplan_eval(&p, f, 5, t, a, 4);
        assert_int_equal(n, 0);
    }
    family(f, hotload, one, t);
    n = ts_splitplan_eval(&p, f, 5, t, a, 4);
    assert_int_equal(n, 4); /* all four children split (their depth 1 < 2) */
    for (size_t i = 0; i < n; i++)
        assert_int_equal(a[i].kind, TS_SPLITPLAN_SPLIT);

    /* cold children: 10 each = 40, not under merge.max_entities (40) */
    ts_splitplan_free(&p);
    ts_splitplan_init(&p, &c);
    uint32_t edge[4] = {10, 10, 10, 10};
    for (t = S; t <= 5 * S; t += S) {
        family(f, edge, one, t);
        assert_int_equal(ts_splitplan_eval(&p, f, 5, t, a, 4), 0);
    }
    /* 39 together: merges after two reports, with one owner */
    uint32_t cold[4] = {9, 10, 10, 10};
    family(f, cold, one, t);
    assert_int_equal(ts_splitplan_eval(&p, f, 5, t, a, 4), 0);
    t += S;
    family(f, cold, one, t);
    assert_int_equal(ts_splitplan_eval(&p, f, 5, t, a, 4), 1);
    assert_int_equal(a[0].kind, TS_SPLITPLAN_MERGE);
    assert_int_equal(a[0].cell, 0);
    assert_true(a[0].same_owner);
    assert_int_equal(a[0].entities, 39);
    ts_splitplan_done(&p, &f[0].entry.cell, t);
    /* merged back: the parent cools down before it may split again */
    ts_splitplan_cell_t merged = cell_at(0, 0, TS_CELL_ACTIVE, "w1", 1000, 0);
    for (int i = 1; i <= 9; i++) {
        merged.report_us = t + (uint64_t)i * S;
        assert_int_equal(ts_splitplan_eval(&p, &merged, 1, merged.report_us, a, 4), 0);
    }
    merged.report_us = t + 10 * S;
    assert_int_equal(ts_splitplan_eval(&p, &merged, 1, merged.report_us, a, 4), 1);
    ts_splitplan_free(&p);
}

static void test_merge_gathers_to_one_owner(void **state)
{
    (void)state;
    ts_splitplan_cfg_t c = cfg();
    ts_splitplan_t p;
    ts_splitplan_init(&p, &c);
    ts_splitplan_action_t a[4];
    static const char *const two[4] = {"w2", "w1", "w2", "w2"};
    uint32_t cold[4] = {2, 20, 3, 4};
    ts_splitplan_cell_t f[5];
    size_t n = 0;
    for (uint64_t t = S; t <= 2 * S; t += S) {
        family(f, cold, two, t);
        n = ts_splitplan_eval(&p, f, 5, t, a, 4);
    }
    assert_int_equal(n, 1);
    assert_false(a[0].same_owner);
    /* w2 holds 3 children (9 entities + 3), w1 one (20 + 1) */
    assert_string_equal(a[0].gather_to, "w1");
    /* a child that is split itself (grandchildren live): no merge */
    ts_splitplan_free(&p);
    ts_splitplan_init(&p, &c);
    static const char *const one[4] = {"w1", "w1", "w1", "w1"};
    for (uint64_t t = S; t <= 5 * S; t += S) {
        family(f, cold, one, t);
        f[2].entry.state = TS_CELL_SPLIT;
        assert_int_equal(ts_splitplan_eval(&p, f, 5, t, a, 4), 0);
    }
    /* a load oscillating across the merge line never merges */
    ts_splitplan_free(&p);
    ts_splitplan_init(&p, &c);
    uint32_t warm[4] = {20, 20, 20, 20};
    for (int i = 1; i <= 100; i++) {
        family(f, i % 2 ? cold : warm, one, (uint64_t)i * S);
        assert_int_equal(ts_splitplan_eval(&p, f, 5, (uint64_t)i * S, a, 4), 0);
    }
    ts_splitplan_free(&p);
}

static void test_config_clamped(void **state)
{
    (void)state;
    ts_splitplan_cfg_t c = cfg();
    c.merge_max_entities = 1000; /* above the split threshold: would flap */
    c.windows = 0;
    c.max_depth = 99;
    ts_splitplan_t p;
    ts_splitplan_init(&p, &c);
    assert_int_equal(p.cfg.merge_max_entities, 50);
    assert_int_equal(p.cfg.windows, 1);
    assert_int_equal(p.cfg.max_depth, TS_CELL_MAX_DEPTH - 1);
    ts_splitplan_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_after_windows), cmocka_unit_test(test_oscillation_never_splits),
        cmocka_unit_test(test_tick_share),          cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_cooldown_and_merge),  cmocka_unit_test(test_merge_gathers_to_one_owner),
        cmocka_unit_test(test_config_clamped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
