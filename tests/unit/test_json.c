/* JSON through jansson: numbers are read by key from real JSON (not by
 * scanning text), and objects are written with every string escaped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "tessera/json.h"

static void test_number(void **state)
{
    (void)state;
    double v = 0;
    assert_true(ts_json_number("{\"a\":1,\"handovers\":42}", "handovers", &v));
    assert_true(v == 42);
    assert_true(ts_json_number("{ \"x\" : -2.5e3 }", "x", &v));
    assert_true(v == -2500);
    /* a key that only appears inside a string value is not the key */
    assert_false(ts_json_number("{\"note\":\"\\\"handovers\\\":7\"}", "handovers", &v));
    /* a nested key is not a top-level one */
    assert_false(ts_json_number("{\"inner\":{\"handovers\":7}}", "handovers", &v));
    assert_false(ts_json_number("{\"handovers\":\"7\"}", "handovers", &v)); /* not a number */
    assert_false(ts_json_number("error: no leader", "handovers", &v));
    assert_false(ts_json_number("[1,2]", "handovers", &v));
    assert_false(ts_json_number(NULL, "handovers", &v));
    assert_false(ts_json_number("{\"handovers\":1,\"handovers\":2}", "handovers", &v)); /* ambiguous */
}

static void test_object(void **state)
{
    (void)state;
    char buf[256];
    ts_json_field_t f[] = {
        {.name = "leader", .kind = TS_JSON_STR, .str = "host \"a\"\\b\n"},
        {.name = "handovers", .kind = TS_JSON_U64, .u64 = 18446744073709ULL},
        {.name = "ratio", .kind = TS_JSON_NUM, .num = 0.5},
    };
    int n = ts_json_object(f, 3, buf, sizeof buf);
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(buf));
    assert_string_equal(buf,
                        "{\"leader\":\"host \\\"a\\\"\\\\b\\n\",\"handovers\":18446744073709,\"ratio\":0.5}");
    double v = 0;
    assert_true(ts_json_number(buf, "handovers", &v));
    assert_true(v == 18446744073709.0);
    char small[16];
    assert_int_equal(ts_json_object(f, 3, small, sizeof small), -1); /* does not fit: an error, not a cut */
    assert_string_equal(small, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_number),
        cmocka_unit_test(test_object),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
