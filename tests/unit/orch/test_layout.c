/* The orchestrator's world layout: the default world is split by columns
 * between w1 and w2, overrides move single cells, and every bad layout is
 * refused with a message naming the key. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "layout.h"

static ts_config_t default_config(void)
{
    ts_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.world_id = 0;
    cfg.world_cell_size = 100;
    cfg.world_x0 = -2;
    cfg.world_y0 = -2;
    cfg.world_width = 4;
    cfg.world_height = 4;
    cfg.world_workers = (char *)"w1,w2";
    cfg.world_assign = (char *)"";
    return cfg;
}

static void expect_error(const ts_config_t *cfg, const char *needle)
{
    ts_layout_t l;
    char err[256];
    assert_int_equal(ts_layout_build(&l, cfg, err, sizeof err), TS_ERR_CONFIG);
    if (!strstr(err, needle)) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    assert_null(l.cells);
    assert_int_equal(l.ncells, 0);
    ts_layout_free(&l);
}

static void test_default_world_split_by_column(void **state)
{
    ts_config_t cfg = default_config();
    ts_layout_t l;
    char err[256];
    assert_int_equal(ts_layout_build(&l, &cfg, err, sizeof err), TS_OK);
    assert_int_equal(l.world.id, 0);
    assert_true(l.world.cell_size == 100);
    assert_int_equal(l.world.x0, -2);
    assert_int_equal(l.world.y0, -2);
    assert_int_equal(l.world.width, 4);
    assert_int_equal(l.world.height, 4);
    assert_int_equal(l.nworkers, 2);
    assert_int_equal(l.ncells, 16);
    for (int32_t cx = -2; cx <= 1; cx++) {
        for (int32_t cy = -2; cy <= 1; cy++) {
            const ts_cell_entry_t *e = ts_layout_cell(&l, cx, cy);
            assert_non_null(e);
            assert_int_equal(e->cell.cx, cx);
            assert_int_equal(e->cell.cy, cy);
            assert_int_equal(e->cell.depth, 0);
            assert_int_equal(e->cell.sub, 0);
            assert_int_equal(e->epoch, 1);
            assert_int_equal(e->state, TS_CELL_ACTIVE);
            assert_string_equal(e->owner, cx < 0 ? "w1" : "w2");
        }
    }
    assert_null(ts_layout_cell(&l, 2, 0));
    assert_null(ts_layout_cell(&l, -3, 0));
    assert_null(ts_layout_cell(&l, 0, 2));
    assert_int_equal(ts_layout_count_owned(&l, "w1"), 8);
    assert_int_equal(ts_layout_count_owned(&l, "w2"), 8);
    ts_layout_free(&l);
}

static void test_contiguous_blocks_for_three_workers(void **state)
{
    ts_config_t cfg = default_config();
    cfg.world_id = 7;
    cfg.world_x0 = 10;
    cfg.world_width = 6;
    cfg.world_height = 1;
    cfg.world_workers = (char *)" a , b,c ,";
    ts_layout_t l;
    char err[256];
    assert_int_equal(ts_layout_build(&l, &cfg, err, sizeof err), TS_OK);
    assert_int_equal(l.nworkers, 3);
    assert_string_equal(l.workers[0], "a");
    assert_string_equal(l.workers[2], "c");
    const char *want[6] = {"a", "a", "b", "b", "c", "c"};
    for (int i = 0; i < 6; i++) {
        const ts_cell_entry_t *e = ts_layout_cell(&l, 10 + i, -2);
        assert_non_null(e);
        assert_int_equal(e->cell.world, 7);
        assert_string_equal(e->owner, want[i]);
    }
    ts_layout_free(&l);
}

static void test_more_workers_than_columns(void **state)
{
    ts_config_t cfg = default_config();
    cfg.world_width = 1;
    cfg.world_height = 2;
    cfg.world_workers = (char *)"w1,w2,w3";
    ts_layout_t l;
    char err[256];
    assert_int_equal(ts_layout_build(&l, &cfg, err, sizeof err), TS_OK);
    assert_int_equal(l.ncells, 2);
    assert_string_equal(ts_layout_cell(&l, -2, -2)->owner, "w1");
    assert_string_equal(ts_layout_cell(&l, -2, -1)->owner, "w1");
    ts_layout_free(&l);
}

static void test_assign_overrides_single_cells(void **state)
{
    ts_config_t cfg = default_config();
    cfg.world_assign = (char *)"0:0=w1, -2:1 = w2";
    ts_layout_t l;
    char err[256];
    assert_int_equal(ts_layout_build(&l, &cfg, err, sizeof err), TS_OK);
    assert_string_equal(ts_layout_cell(&l, 0, 0)->owner, "w1");
    assert_string_equal(ts_layout_cell(&l, -2, 1)->owner, "w2");
    assert_string_equal(ts_layout_cell(&l, 0, 1)->owner, "w2");
    assert_string_equal(ts_layout_cell(&l, -2, 0)->owner, "w1");
    assert_int_equal(ts_layout_count_owned(&l, "w1"), 8);
    assert_int_equal(ts_layout_count_owned(&l, "w2"), 8);
    ts_layout_free(&l);
}

static void test_bad_geometry(void **state)
{
    ts_config_t cfg = default_config();
    cfg.world_width = 0;
    expect_error(&cfg, "world.width");
    cfg = default_config();
    cfg.world_width = TS_LAYOUT_MAX_SIDE + 1;
    expect_error(&cfg, "world.width");
    cfg = default_config();
    cfg.world_height = -3;
    expect_error(&cfg, "world.height");
    cfg = default_config();
    cfg.world_cell_size = 0;
    expect_error(&cfg, "world.cell_size");
    cfg = default_config();
    cfg.world_cell_size = NAN;
    expect_error(&cfg, "world.cell_size");
    cfg = default_config();
    cfg.world_x0 = INT32_MAX;
    expect_error(&cfg, "world.x0");
    cfg = default_config();
    cfg.world_id = (int64_t)UINT32_MAX + 1;
    expect_error(&cfg, "world.id");
}

static void test_bad_workers(void **state)
{
    ts_config_t cfg = default_config();
    cfg.world_workers = (char *)"";
    expect_error(&cfg, "at least one worker");
    cfg.world_workers = NULL;
    expect_error(&cfg, "at least one worker");
    cfg.world_workers = (char *)" , ,";
    expect_error(&cfg, "at least one worker");
    cfg.world_workers = (char *)"w1,w1";
    expect_error(&cfg, "twice");
    cfg.world_workers = (char *)"w1,w.2";
    expect_error(&cfg, "w.2");
    cfg.world_workers = (char *)"w1,w*";
    expect_error(&cfg, "bad worker id");
    cfg.world_workers = (char *)"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    expect_error(&cfg, "world.workers");
}

static void test_bad_assign(void **state)
{
    ts_config_t cfg = default_config();
    cfg.world_assign = (char *)"2:0=w1";
    expect_error(&cfg, "outside the world");
    cfg.world_assign = (char *)"0:-3=w1";
    expect_error(&cfg, "outside the world");
    cfg.world_assign = (char *)"0:0=w9";
    expect_error(&cfg, "'w9'");
    cfg.world_assign = (char *)"0-0=w1";
    expect_error(&cfg, "cx:cy=worker");
    cfg.world_assign = (char *)"0=w1:1";
    expect_error(&cfg, "cx:cy=worker");
    cfg.world_assign = (char *)"a:0=w1";
    expect_error(&cfg, "not two integers");
    cfg.world_assign = (char *)"0:0=w1,1:1";
    expect_error(&cfg, "'1:1'");
}

static void test_free_is_idempotent(void **state)
{
    ts_layout_t l;
    memset(&l, 0, sizeof l);
    ts_layout_free(&l);
    ts_layout_free(NULL);
    ts_config_t cfg = default_config();
    assert_int_equal(ts_layout_build(&l, &cfg, NULL, 0), TS_OK);
    ts_layout_free(&l);
    ts_layout_free(&l);
    assert_null(l.cells);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_world_split_by_column),
        cmocka_unit_test(test_contiguous_blocks_for_three_workers),
        cmocka_unit_test(test_more_workers_than_columns),
        cmocka_unit_test(test_assign_overrides_single_cells),
        cmocka_unit_test(test_bad_geometry),
        cmocka_unit_test(test_bad_workers),
        cmocka_unit_test(test_bad_assign),
        cmocka_unit_test(test_free_is_idempotent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
