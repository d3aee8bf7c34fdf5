/* NATS subjects: cell subjects build and parse back to the same cell and
 * kind; anything that is not exactly a cell subject is rejected. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "tessera/registry.h"
#include "tessera/subject.h"

static void test_kind_names(void **state)
{
    assert_string_equal(ts_subject_kind_str(TS_SUBJ_INPUT), "input");
    assert_string_equal(ts_subject_kind_str(TS_SUBJ_STATE), "state");
    assert_string_equal(ts_subject_kind_str(TS_SUBJ_GHOST), "ghost");
    assert_string_equal(ts_subject_kind_str(TS_SUBJ_HANDOVER), "handover");
    assert_string_equal(ts_subject_kind_str(TS_SUBJ_CHECKPOINT), "checkpoint");
    assert_null(ts_subject_kind_str(TS_SUBJ_KIND_COUNT));
    assert_null(ts_subject_kind_str((ts_subject_kind_t)-1));
}

static void test_cell_subject_exact(void **state)
{
    char buf[TS_SUBJECT_MAX];
    ts_cell_t c = {.world = 0, .cx = -2, .cy = 1, .depth = 0, .sub = 0};
    int n = ts_subject_cell(buf, sizeof buf, &c, TS_SUBJ_INPUT);
    assert_string_equal(buf, "cell.0.-2.1.0.0.input");
    assert_int_equal(n, (int)strlen(buf));
    ts_cell_t d = {.world = 12, .cx = 3, .cy = -4, .depth = 2, .sub = 13};
    ts_subject_cell(buf, sizeof buf, &d, TS_SUBJ_CHECKPOINT);
    assert_string_equal(buf, "cell.12.3.-4.2.13.checkpoint");
}

static void test_round_trip(void **state)
{
    const ts_cell_t cells[] = {
        {.world = 0, .cx = 0, .cy = 0, .depth = 0, .sub = 0},
        {.world = 1, .cx = -1, .cy = -1, .depth = 1, .sub = 3},
        {.world = UINT32_MAX,
         .cx = INT32_MIN,
         .cy = INT32_MAX,
         .depth = TS_CELL_MAX_DEPTH,
         .sub = (1ull << 32) - 1},
    };
    for (size_t i = 0; i < sizeof cells / sizeof cells[0]; i++) {
        for (int k = 0; k < TS_SUBJ_KIND_COUNT; k++) {
            char buf[TS_SUBJECT_MAX];
            assert_true(ts_subject_cell(buf, sizeof buf, &cells[i], (ts_subject_kind_t)k) > 0);
            ts_cell_t back;
            ts_subject_kind_t kind;
            assert_int_equal(ts_subject_parse(buf, &back, &kind), TS_OK);
            assert_true(ts_cell_eq(&back, &cells[i]));
            assert_int_equal(kind, k);
        }
    }
}

static void test_build_rejects(void **state)
{
    char buf[TS_SUBJECT_MAX];
    ts_cell_t c = {.world = 0, .cx = -2, .cy = 1, .depth = 0, .sub = 0};
    char small[21]; /* "cell.0.-2.1.0.0.input" needs 22 */
    assert_int_equal(ts_subject_cell(small, sizeof small, &c, TS_SUBJ_INPUT), -1);
    assert_int_equal(small[0], '\0');
    char exact[22];
    assert_int_equal(ts_subject_cell(exact, sizeof exact, &c, TS_SUBJ_INPUT), 21);
    assert_int_equal(ts_subject_cell(buf, sizeof buf, &c, TS_SUBJ_KIND_COUNT), -1);
    ts_cell_t bad = {.world = 0, .cx = 0, .cy = 0, .depth = 1, .sub = 4};
    assert_int_equal(ts_subject_cell(buf, sizeof buf, &bad, TS_SUBJ_STATE), -1);
    assert_int_equal(ts_subject_cell(buf, 0, &c, TS_SUBJ_STATE), -1);
}

static void test_parse_rejects(void **state)
{
    static const char *const bad[] = {
        /* wrong prefix */
        "",
        "cell",
        "cell.",
        "Cell.0.0.0.0.0.input",
        "cells.0.0.0.0.0.input",
        "tessera.0.0.0.0.0.input",
        ".cell.0.0.0.0.0.input",
        /* bad numbers */
        "cell.x.0.0.0.0.input",
        "cell.0.0.0.0.x.input",
        "cell.-1.0.0.0.0.input",
        "cell.0.01.0.0.0.input",
        "cell.0.0.0.17.0.input",
        "cell.0.0.0.1.4.input",
        "cell.0.99999999999.0.0.0.input",
        "cell.0..0.0.0.input",
        "cell.*.*.*.*.*.input",
        /* missing tokens */
        "cell.0.0.0.0.input",
        "cell.0.0.0.0.0",
        "cell.0.0.0.0.0.",
        /* unknown kind */
        "cell.0.0.0.0.0.inputs",
        "cell.0.0.0.0.0.INPUT",
        "cell.0.0.0.0.0.inp",
        "cell.0.0.0.0.0.*",
        "cell.0.0.0.0.0.>",
        /* trailing tokens */
        "cell.0.0.0.0.0.input.x",
        "cell.0.0.0.0.0.input.",
        "cell.0.0.0.0.0.input.g",
        "cell.0.0.0.0.0.input.g01",
        "cell.0.0.0.0.0.input.g65536",
        "cell.0.0.0.0.0.input.g-1",
        "cell.0.0.0.0.0.input.*",
        "cell.0.0.0.0.0.input.w.x",
        "cell.0.0.0.0.0.state ",
        /* service subjects are not cell subjects */
        "tessera.worker.w1.hb",
        "tessera.registry.0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ts_cell_t c = {.world = 77};
        ts_subject_kind_t k = TS_SUBJ_GHOST;
        ts_status_t st = ts_subject_parse(bad[i], &c, &k);
        if (st != TS_ERR_PARSE) fail_msg("\"%s\": got %s, want parse error", bad[i], ts_status_str(st));
        assert_int_equal(c.world, 77);
        assert_int_equal(k, TS_SUBJ_GHOST);
    }
    ts_cell_t c;
    ts_subject_kind_t k;
    assert_int_not_equal(ts_subject_parse(NULL, &c, &k), TS_OK);
}

/* Input subjects name their publisher: g<gateway id>, s (the sim), w (a
 * worker); nats-server permissions are written against these tokens. */
static void test_input_origin(void **state)
{
    (void)state;
    ts_cell_t c = {.world = 0, .cx = -2, .cy = 1};
    char buf[TS_SUBJECT_MAX];
    assert_int_equal(ts_subject_input(buf, sizeof buf, &c, 7), 24);
    assert_string_equal(buf, "cell.0.-2.1.0.0.input.g7");
    ts_subject_input(buf, sizeof buf, &c, TS_ORIGIN_WORKER);
    assert_string_equal(buf, "cell.0.-2.1.0.0.input.w");
    ts_subject_input(buf, sizeof buf, &c, TS_ORIGIN_SIM);
    assert_string_equal(buf, "cell.0.-2.1.0.0.input.s");
    ts_subject_input(buf, sizeof buf, &c, TS_ORIGIN_GATEWAY_MAX);
    assert_string_equal(buf, "cell.0.-2.1.0.0.input.g65535");
    assert_int_equal(ts_subject_input(buf, sizeof buf, &c, TS_ORIGIN_GATEWAY_MAX + 1), -1);
    assert_int_equal(ts_subject_input(buf, sizeof buf, &c, -3), -1);
    ts_subject_input_filter(buf, sizeof buf, &c);
    assert_string_equal(buf, "cell.0.-2.1.0.0.input.*");

    ts_origin_t o = 0;
    assert_int_equal(ts_subject_input_origin("cell.0.-2.1.0.0.input.g0", &o), TS_OK);
    assert_int_equal(o, 0);
    assert_int_equal(ts_subject_input_origin("cell.0.-2.1.0.0.input.g32766", &o), TS_OK);
    assert_int_equal(o, 32766);
    assert_int_equal(ts_subject_input_origin("cell.0.-2.1.0.0.input.w", &o), TS_OK);
    assert_int_equal(o, TS_ORIGIN_WORKER);
    assert_int_equal(ts_subject_input_origin("cell.0.-2.1.0.0.input.s", &o), TS_OK);
    assert_int_equal(o, TS_ORIGIN_SIM);
    static const char *const bad[] = {"cell.0.0.0.0.0.input",
                                      "cell.0.0.0.0.0.state",
                                      "cell.0.0.0.0.0.input.x",
                                      "cell.0.0.0.0.0.input.g",
                                      "cell.0.0.0.0.0.input.g007",
                                      "cell.0.0.0.0.0.state.g1",
                                      "input.g1x",
                                      "g1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (ts_subject_input_origin(bad[i], &o) != TS_ERR_PARSE) fail_msg("\"%s\" parsed", bad[i]);

    /* an input subject with its origin parses as the cell's input */
    ts_cell_t back;
    ts_subject_kind_t k;
    assert_int_equal(ts_subject_parse("cell.0.-2.1.0.0.input.g7", &back, &k), TS_OK);
    assert_true(ts_cell_eq(&back, &c));
    assert_int_equal(k, TS_SUBJ_INPUT);
}

static void test_service_subjects(void **state)
{
    char buf[TS_SUBJECT_MAX];
    assert_int_equal(ts_subject_world_wildcard(buf, sizeof buf, 0, TS_SUBJ_INPUT), 22);
    assert_string_equal(buf, "cell.0.*.*.*.*.input.*");
    ts_subject_world_wildcard(buf, sizeof buf, 4000000000u, TS_SUBJ_CHECKPOINT);
    assert_string_equal(buf, "cell.4000000000.*.*.*.*.checkpoint");
    assert_int_equal(ts_subject_world_wildcard(buf, sizeof buf, 0, TS_SUBJ_KIND_COUNT), -1);

    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, "w1"), 20);
    assert_string_equal(buf, "tessera.worker.w1.hb");
    /* ids that would change the subject's shape are refused */
    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, ""), -1);
    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, NULL), -1);
    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, "a.b"), -1);
    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, "*"), -1);
    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, "w>"), -1);
    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, "w 1"), -1);
    char small[10];
    assert_int_equal(ts_subject_heartbeat(small, sizeof small, "w1"), -1);

    assert_int_equal(ts_subject_registry(buf, sizeof buf, 3), 18);
    assert_string_equal(buf, "tessera.registry.3");
    assert_int_equal(ts_subject_registry(small, sizeof small, 3), -1);

    assert_int_equal(ts_subject_ctl(buf, sizeof buf, 7, "drain"), 19);
    assert_string_equal(buf, "tessera.ctl.7.drain");
    assert_int_equal(ts_subject_ctl(buf, sizeof buf, 7, "a.b"), -1);
    assert_int_equal(ts_subject_ctl(buf, sizeof buf, 7, NULL), -1);
    assert_int_equal(ts_subject_ctl(small, sizeof small, 7, "stats"), -1);
}

/* One worker-id rule for every service: letters, digits, '-' and '_', 1 to
 * TS_WORKER_ID_MAX - 1 of them. */
static void test_worker_id_rule(void **state)
{
    (void)state;
    assert_true(ts_worker_id_valid("w1"));
    assert_true(ts_worker_id_valid("tessera-worker-0"));
    assert_true(ts_worker_id_valid("Worker_7"));
    char longest[TS_WORKER_ID_MAX];
    memset(longest, 'a', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    assert_true(ts_worker_id_valid(longest));
    char too_long[TS_WORKER_ID_MAX + 1];
    memset(too_long, 'a', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    assert_false(ts_worker_id_valid(too_long));
    const char *bad[] = {NULL, "", "a b", "a.b", "w*", "w>", "w1\n", "w/1", "w:1", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(ts_worker_id_valid(bad[i]));
    char buf[64];
    assert_int_equal(ts_subject_heartbeat(buf, sizeof buf, "w:1"), -1); /* the subject uses the same rule */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_names),    cmocka_unit_test(test_cell_subject_exact),
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_build_rejects),
        cmocka_unit_test(test_parse_rejects), cmocka_unit_test(test_service_subjects),
        cmocka_unit_test(test_input_origin),  cmocka_unit_test(test_worker_id_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
