/* Cell ids: text form, quadtree navigation, neighbours across root borders
 * and position lookup, including negative and extreme coordinates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tessera/cell.h"
#include "tessera/map.h"
#include "tessera/util.h"

static ts_cell_t mk(uint32_t w, int32_t cx, int32_t cy, uint8_t depth, uint64_t sub)
{
    ts_cell_t c = {.world = w, .cx = cx, .cy = cy, .depth = depth, .sub = sub};
    return c;
}

static void assert_cell(const ts_cell_t *c, uint32_t w, int32_t cx, int32_t cy, uint8_t depth, uint64_t sub)
{
    assert_int_equal(c->world, w);
    assert_int_equal(c->cx, cx);
    assert_int_equal(c->cy, cy);
    assert_int_equal(c->depth, depth);
    assert_int_equal(c->sub, sub);
}

static void test_format_parse_round_trip(void **state)
{
    const ts_cell_t cells[] = {
        mk(0, 0, 0, 0, 0),
        mk(0, -2, -2, 0, 0),
        mk(7, -1, 1, 3, 63),
        mk(UINT32_MAX, INT32_MIN, INT32_MAX, TS_CELL_MAX_DEPTH, (1ull << 32) - 1),
        mk(42, 123456, -654321, 5, 777),
    };
    for (size_t i = 0; i < sizeof cells / sizeof cells[0]; i++) {
        char buf[TS_CELL_STR_MAX];
        int n = ts_cell_format(&cells[i], buf, sizeof buf);
        assert_true(n > 0);
        assert_int_equal((size_t)n, strlen(buf));
        ts_cell_t back;
        assert_int_equal(ts_cell_parse(buf, &back), TS_OK);
        assert_true(ts_cell_eq(&back, &cells[i]));
    }
    char buf[TS_CELL_STR_MAX];
    ts_cell_t c = mk(0, -2, 1, 2, 9);
    assert_int_equal(ts_cell_format(&c, buf, sizeof buf), 10);
    assert_string_equal(buf, "0.-2.1.2.9");
}

static void test_format_small_buffer(void **state)
{
    ts_cell_t c = mk(0, -2, 1, 0, 0);
    char buf[8];
    assert_int_equal(ts_cell_format(&c, buf, sizeof buf), -1);
    char exact[10]; /* "0.-2.1.0.0" is 10 chars, needs 11 */
    assert_int_equal(ts_cell_format(&c, exact, sizeof exact), -1);
    char ok[11];
    assert_int_equal(ts_cell_format(&c, ok, sizeof ok), 10);
    assert_string_equal(ok, "0.-2.1.0.0");
}

static void test_parse_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "0",
        "0.0.0.0",
        "0.0.0.0.",
        "0.0.0.0.0.",
        "0.0.0.0.0x",
        "0.0.0.0.0 ",
        " 0.0.0.0.0",
        "a.0.0.0.0",
        "0..0.0.0",
        "+1.0.0.0.0",
        "0.+1.0.0.0",
        "-1.0.0.0.0",
        "0.01.0.0.0",
        "0.-0.0.0.0",
        "0.-.0.0.0",
        "0.0.0.-1.0",
        "0.0.0.0.-0",
        "0.0.0.0.1",
        "0.0.0.1.4",
        "0.0.0.2.16",
        "0.0.0.17.0",
        "0.0.0.255.0",
        "4294967296.0.0.0.0",
        "0.2147483648.0.0.0",
        "0.0.-2147483649.0.0",
        "0.0.0.0.18446744073709551616",
        "0.0.0.0.99999999999999999999999",
        "0.0.0.0.0.input",
        "0,0,0,0,0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ts_cell_t c = mk(9, 9, 9, 0, 0);
        ts_status_t st = ts_cell_parse(bad[i], &c);
        if (st == TS_OK) fail_msg("accepted \"%s\"", bad[i]);
        assert_cell(&c, 9, 9, 9, 0, 0); /* untouched on failure */
    }
    ts_cell_t c;
    assert_int_not_equal(ts_cell_parse(NULL, &c), TS_OK);
    /* the extremes that do fit are accepted */
    assert_int_equal(ts_cell_parse("4294967295.-2147483648.2147483647.16.4294967295", &c), TS_OK);
    assert_cell(&c, UINT32_MAX, INT32_MIN, INT32_MAX, 16, 4294967295ull);
}

static void test_parse_prefix(void **state)
{
    ts_cell_t c;
    const char *end = NULL;
    const char *s = "3.-1.2.1.3.state";
    assert_int_equal(ts_cell_parse_prefix(s, &c, &end), TS_OK);
    assert_cell(&c, 3, -1, 2, 1, 3);
    assert_string_equal(end, ".state");
    assert_int_equal(ts_cell_parse_prefix("3.-1.2.0.0", &c, &end), TS_OK);
    assert_string_equal(end, "");
    assert_int_not_equal(ts_cell_parse_prefix("3.-1.2.0", &c, &end), TS_OK);
    assert_int_not_equal(ts_cell_parse_prefix("3.-1.2.0.0x.state", &c, &end), TS_OK);
}

static void test_valid_and_eq(void **state)
{
    ts_cell_t c = mk(0, 0, 0, 0, 0);
    assert_true(ts_cell_valid(&c));
    c.sub = 1;
    assert_false(ts_cell_valid(&c));
    c = mk(0, 0, 0, 2, 15);
    assert_true(ts_cell_valid(&c));
    c.sub = 16;
    assert_false(ts_cell_valid(&c));
    c = mk(0, 0, 0, TS_CELL_MAX_DEPTH + 1, 0);
    assert_false(ts_cell_valid(&c));

    ts_cell_t a = mk(1, 2, 3, 1, 2), b = a;
    assert_true(ts_cell_eq(&a, &b));
    b.world = 2;
    assert_false(ts_cell_eq(&a, &b));
    b = a;
    b.sub = 3;
    assert_false(ts_cell_eq(&a, &b));

    /* the total order: world, cx, cy, depth, sub; negative coordinates first */
    assert_int_equal(ts_cell_cmp(&a, &a), 0);
    assert_true(ts_cell_cmp(&a, &b) < 0 && ts_cell_cmp(&b, &a) > 0);
    ts_cell_t neg = mk(1, -5, 9, 0, 0), pos = mk(1, 0, -9, 0, 0), other = mk(0, 9, 9, 0, 0);
    assert_true(ts_cell_cmp(&neg, &pos) < 0);
    assert_true(ts_cell_cmp(&other, &neg) < 0);
    ts_cell_t shallow = mk(1, 2, 3, 0, 0);
    assert_true(ts_cell_cmp(&shallow, &a) < 0);
}

static void test_from_pos_borders(void **state)
{
    ts_cell_t c;
    ts_cell_from_pos(0, 100, 0, -0.5, 0, &c);
    assert_cell(&c, 0, -1, 0, 0, 0);
    ts_cell_from_pos(0, 100, 0, 0, -0.5, &c);
    assert_cell(&c, 0, 0, -1, 0, 0);
    ts_cell_from_pos(0, 100, 0, 0.0, 0.0, &c);
    assert_cell(&c, 0, 0, 0, 0, 0);
    ts_cell_from_pos(0, 100, 0, -0.0, -0.0, &c);
    assert_cell(&c, 0, 0, 0, 0, 0);
    ts_cell_from_pos(0, 100, 0, 100.0, 99.999, &c);
    assert_cell(&c, 0, 1, 0, 0, 0);
    ts_cell_from_pos(0, 100, 0, -100.0, -100.0001, &c);
    assert_cell(&c, 0, -1, -2, 0, 0);
    ts_cell_from_pos(0, 100, 0, -200.0, 199.999999, &c);
    assert_cell(&c, 0, -2, 1, 0, 0);
    ts_cell_from_pos(0, 100, 0, -1e-300, 1e-300, &c);
    assert_cell(&c, 0, -1, 0, 0, 0);

    /* depth 1: quadrants, border points go right/up */
    ts_cell_from_pos(5, 100, 1, 10, 10, &c);
    assert_cell(&c, 5, 0, 0, 1, TS_QUAD_SW);
    ts_cell_from_pos(5, 100, 1, 50, 10, &c);
    assert_cell(&c, 5, 0, 0, 1, TS_QUAD_SE);
    ts_cell_from_pos(5, 100, 1, 10, 50, &c);
    assert_cell(&c, 5, 0, 0, 1, TS_QUAD_NW);
    ts_cell_from_pos(5, 100, 1, 50, 50, &c);
    assert_cell(&c, 5, 0, 0, 1, TS_QUAD_NE);
    ts_cell_from_pos(5, 100, 1, -50, -50, &c);
    assert_cell(&c, 5, -1, -1, 1, TS_QUAD_NE);
    ts_cell_from_pos(5, 100, 1, -50.001, -50.001, &c);
    assert_cell(&c, 5, -1, -1, 1, TS_QUAD_SW);
    ts_cell_from_pos(5, 100, 1, -0.001, -99.999, &c);
    assert_cell(&c, 5, -1, -1, 1, TS_QUAD_SE);

    /* depth 2 inside root (-1, 0): x in [-100, 0), local column 3 is [-25, 0) */
    ts_cell_from_pos(0, 100, 2, -1, 1, &c);
    assert_cell(&c, 0, -1, 0, 2, (uint64_t)TS_QUAD_SE * 4 + TS_QUAD_SE);
}

static void test_from_pos_large_and_nonfinite(void **state)
{
    ts_cell_t c;
    ts_cell_from_pos(0, 100, 0, 2.0e11, -2.0e11, &c);
    assert_cell(&c, 0, 2000000000, -2000000000, 0, 0);
    ts_cell_from_pos(0, 100, 0, 1e30, -1e30, &c);
    assert_true(ts_cell_valid(&c));
    assert_int_equal(c.cx, INT32_MAX);
    assert_int_equal(c.cy, INT32_MIN);
    ts_cell_from_pos(0, 100, 3, 1e300, -1e300, &c);
    assert_true(ts_cell_valid(&c));
    assert_int_equal(c.cx, INT32_MAX);
    assert_int_equal(c.cy, INT32_MIN);

    const double odd[] = {NAN, INFINITY, -INFINITY, -NAN};
    for (size_t i = 0; i < 4; i++) {
        for (uint8_t d = 0; d <= TS_CELL_MAX_DEPTH; d += 4) {
            ts_cell_from_pos(1, 100, d, odd[i], 5, &c);
            assert_true(ts_cell_valid(&c));
            assert_int_equal(c.depth, d);
            ts_cell_from_pos(1, 100, d, 5, odd[i], &c);
            assert_true(ts_cell_valid(&c));
        }
    }
    /* a zero or NaN cell size must not crash either */
    ts_cell_from_pos(0, 0, 2, 1, 1, &c);
    assert_true(ts_cell_valid(&c));
    ts_cell_from_pos(0, NAN, 2, 1, 1, &c);
    assert_true(ts_cell_valid(&c));
    /* depth beyond the maximum is clamped */
    ts_cell_from_pos(0, 100, 200, 1, 1, &c);
    assert_true(ts_cell_valid(&c));

    ts_cell_t root = mk(0, 0, 0, 0, 0);
    assert_false(ts_cell_has_pos(&root, 100, NAN, 1));
    assert_false(ts_cell_has_pos(&root, 100, 1, INFINITY));
}

static void test_bounds_and_has_pos(void **state)
{
    double x0, y0, x1, y1;
    ts_cell_t c = mk(0, -2, 1, 0, 0);
    ts_cell_bounds(&c, 100, &x0, &y0, &x1, &y1);
    assert_true(x0 == -200 && x1 == -100 && y0 == 100 && y1 == 200);
    assert_true(ts_cell_has_pos(&c, 100, -200, 100));
    assert_false(ts_cell_has_pos(&c, 100, -100, 150));
    assert_false(ts_cell_has_pos(&c, 100, -150, 200));
    assert_true(ts_cell_has_pos(&c, 100, -100.000001, 199.99999));

    /* depth 2, root (-1,-1), sub NE.SW = 3*4+0: x in [-50,-25), y in [-50,-25) */
    c = mk(0, -1, -1, 2, 12);
    ts_cell_bounds(&c, 100, &x0, &y0, &x1, &y1);
    assert_true(x0 == -50 && x1 == -25 && y0 == -50 && y1 == -25);

    /* every cell's centre maps back to it, at every depth */
    ts_rng_t rng;
    ts_rng_seed(&rng, 7);
    for (int i = 0; i < 5000; i++) {
        uint8_t d = (uint8_t)(ts_rng_next(&rng) % (TS_CELL_MAX_DEPTH + 1));
        ts_cell_t r =
            mk(3, (int32_t)(ts_rng_next(&rng) % 2001) - 1000, (int32_t)(ts_rng_next(&rng) % 2001) - 1000, d,
               ts_rng_next(&rng) & ((d == 0) ? 0 : ((1ull << (2 * d)) - 1)));
        ts_cell_bounds(&r, 64, &x0, &y0, &x1, &y1);
        ts_cell_t back;
        ts_cell_from_pos(3, 64, d, (x0 + x1) / 2, (y0 + y1) / 2, &back);
        assert_true(ts_cell_eq(&back, &r));
        ts_cell_from_pos(3, 64, d, x0, y0, &back); /* lower-left corner is inside */
        assert_true(ts_cell_eq(&back, &r));
        assert_true(ts_cell_has_pos(&r, 64, x0, y0));
        assert_false(ts_cell_has_pos(&r, 64, x1, y0)); /* right border belongs to the next cell */
        assert_false(ts_cell_has_pos(&r, 64, x0, y1));
    }
}

static void test_parent_children_round_trip(void **state)
{
    ts_cell_t root = mk(2, -3, 4, 0, 0), p;
    assert_int_equal(ts_cell_parent(&root, &p), TS_ERR_RANGE);

    ts_cell_t c = root;
    for (int d = 0; d < TS_CELL_MAX_DEPTH; d++) {
        ts_cell_t kids[4];
        assert_int_equal(ts_cell_children(&c, kids), TS_OK);
        double px0, py0, px1, py1;
        ts_cell_bounds(&c, 100, &px0, &py0, &px1, &py1);
        double mx = (px0 + px1) / 2, my = (py0 + py1) / 2;
        for (int q = 0; q < 4; q++) {
            assert_int_equal(kids[q].depth, d + 1);
            assert_true(ts_cell_valid(&kids[q]));
            assert_int_equal(ts_cell_quadrant(&kids[q]), q);
            assert_int_equal(ts_cell_parent(&kids[q], &p), TS_OK);
            assert_true(ts_cell_eq(&p, &c));
            assert_true(ts_cell_contains(&c, &kids[q]));
            assert_true(ts_cell_contains(&root, &kids[q]));
            assert_false(ts_cell_contains(&kids[q], &c));
            /* geometry: bit0 = east half, bit1 = north half */
            double x0, y0, x1, y1;
            ts_cell_bounds(&kids[q], 100, &x0, &y0, &x1, &y1);
            assert_true(x0 == ((q & 1) ? mx : px0));
            assert_true(y0 == ((q & 2) ? my : py0));
            assert_true(x1 == ((q & 1) ? px1 : mx));
            assert_true(y1 == ((q & 2) ? py1 : my));
        }
        assert_false(ts_cell_contains(&kids[0], &kids[1]));
        c = kids[(d * 7 + 1) % 4];
    }
    ts_cell_t kids[4];
    assert_int_equal(c.depth, TS_CELL_MAX_DEPTH);
    assert_int_equal(ts_cell_children(&c, kids), TS_ERR_RANGE);

    /* sub path is most significant level first */
    ts_cell_t a = mk(0, 0, 0, 0, 0), k1[4], k2[4];
    ts_cell_children(&a, k1);
    ts_cell_children(&k1[TS_QUAD_NW], k2);
    assert_int_equal(k2[TS_QUAD_SE].sub, 2 * 4 + 1);

    ts_cell_t other = mk(2, -3, 5, 1, 0);
    assert_false(ts_cell_contains(&root, &other));
    assert_true(ts_cell_contains(&root, &root));
}

static void test_neighbors_depth0_across_roots(void **state)
{
    ts_cell_t c = mk(0, -1, 0, 0, 0), n;
    ts_cell_neighbor(&c, 1, 0, &n);
    assert_cell(&n, 0, 0, 0, 0, 0);
    ts_cell_neighbor(&n, -1, 0, &n);
    assert_cell(&n, 0, -1, 0, 0, 0);
    ts_cell_neighbor(&c, -1, -1, &n);
    assert_cell(&n, 0, -2, -1, 0, 0);
    ts_cell_neighbor(&c, 3, -5, &n);
    assert_cell(&n, 0, 2, -5, 0, 0);

    ts_cell_t all[8];
    ts_cell_t o = mk(4, 0, 0, 0, 0);
    ts_cell_neighbors(&o, all);
    const int want[8][2] = {{-1, -1}, {0, -1}, {1, -1}, {-1, 0}, {1, 0}, {-1, 1}, {0, 1}, {1, 1}};
    for (int i = 0; i < 8; i++)
        assert_cell(&all[i], 4, want[i][0], want[i][1], 0, 0);
}

static void test_neighbors_depth3_across_roots(void **state)
{
    /* west-most column of root (0,0) at depth 3: local x = 0, y = 5 */
    ts_cell_t c, n;
    ts_cell_from_pos(0, 80, 3, 1, 55, &c); /* side 10: x col 0, y row 5 */
    assert_int_equal(c.cx, 0);
    ts_cell_neighbor(&c, -1, 0, &n);
    assert_int_equal(n.cx, -1);
    assert_int_equal(n.cy, 0);
    assert_int_equal(n.depth, 3);
    double x0, y0, x1, y1;
    ts_cell_bounds(&n, 80, &x0, &y0, &x1, &y1);
    assert_true(x0 == -10 && x1 == 0 && y0 == 50 && y1 == 60);

    /* south-west corner of root (0,0) stepping (-1,-1) lands in root (-1,-1), NE corner */
    ts_cell_from_pos(0, 80, 3, 0, 0, &c);
    ts_cell_neighbor(&c, -1, -1, &n);
    assert_cell(&n, 0, -1, -1, 3, 63);
    /* and back */
    ts_cell_neighbor(&n, 1, 1, &n);
    assert_true(ts_cell_eq(&n, &c));

    /* generic: a neighbour's bounds are the cell's shifted by (dx, dy) sides */
    ts_rng_t rng;
    ts_rng_seed(&rng, 99);
    for (int i = 0; i < 5000; i++) {
        uint8_t d = (uint8_t)(ts_rng_next(&rng) % 7);
        ts_cell_t r;
        ts_cell_from_pos(1, 100, d, ts_rng_unit(&rng) * 800 - 400, ts_rng_unit(&rng) * 800 - 400, &r);
        int dx = (int)(ts_rng_next(&rng) % 41) - 20, dy = (int)(ts_rng_next(&rng) % 41) - 20;
        ts_cell_neighbor(&r, dx, dy, &n);
        assert_true(ts_cell_valid(&n));
        assert_int_equal(n.depth, d);
        double side = ldexp(100, -d);
        double a0, b0, a1, b1;
        ts_cell_bounds(&r, 100, &x0, &y0, &x1, &y1);
        ts_cell_bounds(&n, 100, &a0, &b0, &a1, &b1);
        assert_true(a0 == x0 + dx * side);
        assert_true(b0 == y0 + dy * side);
        ts_cell_t back;
        ts_cell_neighbor(&n, -dx, -dy, &back);
        assert_true(ts_cell_eq(&back, &r));
    }
}

static void test_neighbor_extremes(void **state)
{
    ts_cell_t c = mk(0, INT32_MAX, INT32_MIN, 2, 15), n;
    ts_cell_neighbor(&c, 1, -1, &n);
    assert_true(ts_cell_valid(&n));
    c = mk(0, 0, 0, TS_CELL_MAX_DEPTH, (1ull << 32) - 1);
    ts_cell_neighbor(&c, 1, 1, &n);
    assert_cell(&n, 0, 1, 1, TS_CELL_MAX_DEPTH, 0);
}

static void test_hash(void **state)
{
    /* distinct cells of a 200x200 grid at two depths: no collisions, and the
     * low bits (what a power-of-two table uses) spread evenly */
    ts_map_t seen;
    ts_map_init(&seen);
    size_t buckets[256] = {0};
    size_t n = 0;
    for (int32_t x = -100; x < 100; x++) {
        for (int32_t y = -100; y < 100; y++) {
            for (uint64_t sub = 0; sub < 2; sub++) {
                ts_cell_t c = mk(0, x, y, sub ? 1 : 0, sub);
                uint64_t h = ts_cell_hash(&c);
                assert_true(h != 0 && h != UINT64_MAX);
                assert_null(ts_map_get(&seen, h));
                assert_int_equal(ts_map_put(&seen, h, &seen), TS_OK);
                buckets[h & 255]++;
                n++;
            }
        }
    }
    for (int i = 0; i < 256; i++) {
        assert_true(buckets[i] > n / 256 / 2);
        assert_true(buckets[i] < n / 256 * 2);
    }
    ts_map_free(&seen);

    ts_cell_t a = mk(0, 1, 2, 0, 0), b = mk(1, 1, 2, 0, 0);
    assert_true(ts_cell_hash(&a) != ts_cell_hash(&b));
    b = a;
    assert_true(ts_cell_hash(&a) == ts_cell_hash(&b));
    b = mk(0, 2, 1, 0, 0);
    assert_true(ts_cell_hash(&a) != ts_cell_hash(&b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_parse_round_trip),
        cmocka_unit_test(test_format_small_buffer),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_parse_prefix),
        cmocka_unit_test(test_valid_and_eq),
        cmocka_unit_test(test_from_pos_borders),
        cmocka_unit_test(test_from_pos_large_and_nonfinite),
        cmocka_unit_test(test_bounds_and_has_pos),
        cmocka_unit_test(test_parent_children_round_trip),
        cmocka_unit_test(test_neighbors_depth0_across_roots),
        cmocka_unit_test(test_neighbors_depth3_across_roots),
        cmocka_unit_test(test_neighbor_extremes),
        cmocka_unit_test(test_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
