/* services/gateway/flood.c: the flood rule counts exactly. More than the
 * limit within 1.9 s is always a flood, wherever it starts relative to the
 * 100 ms steps; the limit within 2 s, or a steady rate just below it, never
 * is; a quiet window forgets what came before. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "flood.h"

#define T0 123456789ull /* the connection's start: not on a step boundary of anything */

/* n frames spread evenly over [from, from + span) (us after T0); returns the
 * index (1-based) of the first one found a flood, 0 if none. */
static uint64_t spread(gw_flood_t *f, uint64_t from, uint64_t span, uint64_t n, uint64_t limit)
{
    for (uint64_t i = 0; i < n; i++) {
        if (gw_flood_add(f, T0 + from + span * i / n, limit)) return i + 1;
    }
    return 0;
}

static void test_over_limit_within_1_9_s_is_a_flood_wherever_it_starts(void **state)
{
    (void)state;
    for (uint64_t start = 0; start < 2 * GW_FLOOD_STEP_US; start += 7919) {
        gw_flood_t f;
        gw_flood_init(&f, T0);
        /* 401 frames within 1.9 s: the 401st is the flood, none before */
        assert_int_equal(spread(&f, start, 1900000, 401, 400), 401);
    }
}

static void test_limit_within_2_s_is_not(void **state)
{
    (void)state;
    for (uint64_t start = 0; start < 2 * GW_FLOOD_STEP_US; start += 7919) {
        gw_flood_t f;
        gw_flood_init(&f, T0);
        assert_int_equal(spread(&f, start, 2000000, 400, 400), 0);
        /* and the first frame after the window it filled is not either */
        uint64_t last = start + 2000000 * 399 / 400;
        uint64_t next = (last / GW_FLOOD_STEP_US + GW_FLOOD_STEPS) * GW_FLOOD_STEP_US;
        assert_false(gw_flood_add(&f, T0 + next, 400));
    }
}

static void test_steady_rate_below_the_limit_never_is(void **state)
{
    (void)state;
    gw_flood_t f;
    gw_flood_init(&f, T0);
    /* 9.9 x a limit of 20/s (198 frames/s, 396 per 2 s) for 60 s */
    assert_int_equal(spread(&f, 55555, 60000000, 60 * 198, 400), 0);
    /* 10.1 x for 3 s: a flood within the first 2 s of it */
    uint64_t at = spread(&f, 60055555, 3000000, 3 * 202, 400);
    assert_true(at > 0 && at <= 2 * 202);
}

static void test_quiet_window_forgets(void **state)
{
    (void)state;
    gw_flood_t f;
    gw_flood_init(&f, T0);
    assert_int_equal(spread(&f, 0, 100000, 400, 400), 0); /* the limit at once */
    assert_true(gw_flood_add(&f, T0 + 1999999, 400));     /* one more, 2 s later: still in the window */
    gw_flood_init(&f, T0);
    assert_int_equal(spread(&f, 0, 100000, 400, 400), 0);
    assert_false(gw_flood_add(&f, T0 + 2000000, 400)); /* the step of the 400 left the window */
    assert_int_equal(spread(&f, 2000001, 1000000, 399, 400), 0);
    assert_true(gw_flood_add(&f, T0 + 3000001, 400));
    /* after a long silence, a fresh window */
    assert_false(gw_flood_add(&f, T0 + 3600000000ull, 400));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_over_limit_within_1_9_s_is_a_flood_wherever_it_starts),
        cmocka_unit_test(test_limit_within_2_s_is_not),
        cmocka_unit_test(test_steady_rate_below_the_limit_never_is),
        cmocka_unit_test(test_quiet_window_forgets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
