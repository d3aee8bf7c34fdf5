/* ts_registry_world_probe and ts_registry_rebuild against a real
 * redis-server: a rebuild writes back cells that are missing or behind,
 * never lowers an epoch, moves the version past its floor by one per cell
 * written, and writes the world's metadata last. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "tessera/util.h"

#define WORLD 11

static ts_cell_entry_t entry(int32_t cx, int32_t cy, const char *owner, uint64_t epoch, ts_cell_state_t state)
{
    ts_cell_entry_t e = {.cell = {.world = WORLD, .cx = cx, .cy = cy}, .epoch = epoch, .state = state};
    ts_strlcpy(e.owner, owner, sizeof e.owner);
    return e;
}

static void test_probe_and_rebuild(void **state)
{
    (void)state;
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    assert_int_equal(ts_registry_world_reset(reg, WORLD), TS_OK);
    bool meta = true;
    uint64_t version = 99;
    assert_int_equal(ts_registry_world_probe(reg, WORLD, &meta, &version), TS_OK);
    assert_false(meta);
    assert_int_equal(version, 0);

    /* one cell survived at a high epoch, one at a low one */
    ts_cell_entry_t out;
    uint64_t v = 0;
    ts_cell_entry_t kept = entry(0, 0, "w1", 1, TS_CELL_ACTIVE);
    assert_int_equal(ts_registry_cell_create(reg, &kept, &out, &v), TS_OK);
    for (int i = 0; i < 9; i++)
        assert_int_equal(ts_registry_cell_cas(reg, &kept.cell, out.epoch, "w1", TS_CELL_ACTIVE, &out, &v),
                         TS_OK);
    assert_int_equal(out.epoch, 10);
    ts_cell_entry_t behind = entry(1, 0, "w1", 1, TS_CELL_ACTIVE);
    assert_int_equal(ts_registry_cell_create(reg, &behind, &out, &v), TS_OK);

    ts_cell_entry_t cells[] = {
        entry(0, 0, "w2", 5, TS_CELL_ACTIVE), /* below the registry's 10: left alone */
        entry(1, 0, "w2", 7, TS_CELL_ACTIVE), /* above 1: written */
        entry(2, 0, "w1", 3, TS_CELL_SPLIT),  /* missing: written */
    };
    ts_world_t w = {.id = WORLD, .cell_size = 100, .x0 = 0, .y0 = 0, .width = 3, .height = 1};
    uint64_t versions[3];
    assert_int_equal(ts_registry_rebuild(reg, &w, cells, 3, 1000, versions), TS_OK);
    assert_int_equal(versions[0], 0);
    assert_int_equal(versions[1], 1001);
    assert_int_equal(versions[2], 1002);
    assert_int_equal(ts_registry_world_probe(reg, WORLD, &meta, &version), TS_OK);
    assert_true(meta);
    assert_int_equal(version, 1002);

    assert_int_equal(ts_registry_cell_get(reg, &cells[0].cell, &out), TS_OK);
    assert_int_equal(out.epoch, 10);
    assert_string_equal(out.owner, "w1");
    assert_int_equal(ts_registry_cell_get(reg, &cells[1].cell, &out), TS_OK);
    assert_int_equal(out.epoch, 7);
    assert_string_equal(out.owner, "w2");
    assert_int_equal(ts_registry_cell_get(reg, &cells[2].cell, &out), TS_OK);
    assert_int_equal(out.epoch, 3);
    assert_int_equal(out.state, TS_CELL_SPLIT);
    ts_cell_entry_t *all = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &all, &n), TS_OK);
    assert_int_equal(n, 3);
    free(all);
    ts_world_t got;
    assert_int_equal(ts_registry_world_get(reg, WORLD, &got), TS_OK);
    assert_int_equal(got.width, 3);

    /* a floor below the version: the version only goes up */
    ts_cell_entry_t again = entry(1, 0, "w1", 8, TS_CELL_ACTIVE);
    assert_int_equal(ts_registry_rebuild(reg, &w, &again, 1, 5, versions), TS_OK);
    assert_int_equal(versions[0], 1003);
    /* the compare-and-set carries on from the rebuilt epoch */
    assert_int_equal(ts_registry_cell_cas(reg, &again.cell, 8, "w2", TS_CELL_ACTIVE, &out, &v), TS_OK);
    assert_int_equal(out.epoch, 9);
    assert_int_equal(v, 1004);
    ts_registry_destroy(reg);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {TS_H_TEST(test_probe_and_rebuild)};
    return TS_H_RUN("it_registry_rebuild", tests, ts_h_group_setup, ts_h_group_teardown);
}
