/* Cell ids and quadtree math.
 *
 * A cell at depth d is addressed inside its root by d-bit local coordinates
 * (lx, ly); sub interleaves them two bits per level, most significant level
 * first, bit0 = east (x), bit1 = north (y). Global integer coordinates at
 * depth d are root * 2^d + local; neighbour and position lookups go through
 * them with floor division so negative roots behave like positive ones.
 *
 * Invariants: every function that returns a cell returns a valid one
 * (depth <= TS_CELL_MAX_DEPTH, sub < 4^depth), even for NaN/inf positions,
 * out-of-range depths or offsets that leave the int32 root range (those
 * clamp or wrap; they never crash). Text form is canonical: no signs other
 * than '-' on cx/cy, no leading zeros, no "-0", so one cell has exactly one
 * subject. */
#include "tessera/cell.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

#include "tessera/util.h"

static uint64_t splitmix64(uint64_t x)
{
    return ts_splitmix64(&x);
}

static uint8_t clamp_depth(uint8_t d)
{
    return d > TS_CELL_MAX_DEPTH ? TS_CELL_MAX_DEPTH : d;
}

static uint64_t sub_limit(uint8_t depth)
{
    return (uint64_t)1 << (2u * depth);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

bool ts_cell_eq(const ts_cell_t *a, const ts_cell_t *b)
{
    return a->world == b->world && a->cx == b->cx && a->cy == b->cy && a->depth == b->depth &&
           a->sub == b->sub;
}

int ts_cell_cmp(const ts_cell_t *a, const ts_cell_t *b)
{
    if (a->world != b->world) return a->world < b->world ? -1 : 1;
    if (a->cx != b->cx) return a->cx < b->cx ? -1 : 1;
    if (a->cy != b->cy) return a->cy < b->cy ? -1 : 1;
    if (a->depth != b->depth) return a->depth < b->depth ? -1 : 1;
    if (a->sub != b->sub) return a->sub < b->sub ? -1 : 1;
    return 0;
}

bool ts_cell_valid(const ts_cell_t *c)
{
    return c != NULL && c->depth <= TS_CELL_MAX_DEPTH && c->sub < sub_limit(c->depth);
}

uint64_t ts_cell_hash(const ts_cell_t *c)
{
    uint64_t h = splitmix64(c->world);
    h = splitmix64(h ^ (((uint64_t)(uint32_t)c->cx << 32) | (uint32_t)c->cy));
    h = splitmix64(h ^ c->depth);
    h = splitmix64(h ^ c->sub);
    if (h == 0 || h == UINT64_MAX) h = 0x9e3779b97f4a7c15ull;
    return h;
}

int ts_cell_format(const ts_cell_t *c, char *buf, size_t cap)
{
    if (c == NULL || buf == NULL || cap == 0) return -1;
    int n = snprintf(buf, cap, "%" PRIu32 ".%" PRId32 ".%" PRId32 ".%u.%" PRIu64, c->world, c->cx, c->cy,
                     (unsigned)c->depth, c->sub);
    if (n < 0 || (size_t)n >= cap) {
        buf[0] = '\0';
        return -1;
    }
    return n;
}

/* One canonical decimal token ending at '.' or NUL: optional '-' when
 * neg_ok, no leading zeros, no "-0". Magnitude in *mag; overflow of uint64 is
 * TS_ERR_RANGE. */
static ts_status_t take_number(const char **p, bool neg_ok, bool *neg, uint64_t *mag)
{
    const char *s = *p;
    *neg = false;
    if (*s == '-') {
        if (!neg_ok) return TS_ERR_PARSE;
        *neg = true;
        s++;
    }
    if (*s < '0' || *s > '9') return TS_ERR_PARSE;
    if (*s == '0' && s[1] >= '0' && s[1] <= '9') return TS_ERR_PARSE;
    uint64_t v = 0;
    bool overflow = false;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            overflow = true;
        else
            v = v * 10 + d;
    }
    if (*s != '.' && *s != '\0') return TS_ERR_PARSE;
    if (*neg && v == 0 && !overflow) return TS_ERR_PARSE;
    if (overflow) return TS_ERR_RANGE;
    *mag = v;
    *p = s;
    return TS_OK;
}

static ts_status_t take_u(const char **p, uint64_t max, uint64_t *out)
{
    bool neg;
    ts_status_t st = take_number(p, false, &neg, out);
    if (st == TS_OK && *out > max) st = TS_ERR_RANGE;
    return st;
}

static ts_status_t take_i32(const char **p, int32_t *out)
{
    bool neg;
    uint64_t mag;
    ts_status_t st = take_number(p, true, &neg, &mag);
    if (st != TS_OK) return st;
    if ((!neg && mag > (uint64_t)INT32_MAX) || (neg && mag > (uint64_t)INT32_MAX + 1)) return TS_ERR_RANGE;
    *out = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
    return TS_OK;
}

static ts_status_t take_dot(const char **p)
{
    if (**p != '.') return TS_ERR_PARSE;
    (*p)++;
    return TS_OK;
}

ts_status_t ts_cell_parse_prefix(const char *s, ts_cell_t *out, const char **end)
{
    if (s == NULL || out == NULL) return TS_ERR_INVALID;
    const char *p = s;
    ts_cell_t c;
    uint64_t world, depth;
    ts_status_t st;
    if ((st = take_u(&p, UINT32_MAX, &world)) != TS_OK || (st = take_dot(&p)) != TS_OK ||
        (st = take_i32(&p, &c.cx)) != TS_OK || (st = take_dot(&p)) != TS_OK ||
        (st = take_i32(&p, &c.cy)) != TS_OK || (st = take_dot(&p)) != TS_OK ||
        (st = take_u(&p, TS_CELL_MAX_DEPTH, &depth)) != TS_OK || (st = take_dot(&p)) != TS_OK ||
        (st = take_u(&p, UINT64_MAX, &c.sub)) != TS_OK)
        return st;
    c.world = (uint32_t)world;
    c.depth = (uint8_t)depth;
    if (c.sub >= sub_limit(c.depth)) return TS_ERR_RANGE;
    *out = c;
    if (end) *end = p;
    return TS_OK;
}

ts_status_t ts_cell_parse(const char *s, ts_cell_t *out)
{
    const char *end = NULL;
    ts_cell_t c;
    ts_status_t st = ts_cell_parse_prefix(s, &c, &end);
    if (st != TS_OK) return st;
    if (*end != '\0') return TS_ERR_PARSE;
    *out = c;
    return TS_OK;
}

ts_status_t ts_cell_parent(const ts_cell_t *c, ts_cell_t *out)
{
    if (c == NULL || out == NULL || !ts_cell_valid(c)) return TS_ERR_INVALID;
    if (c->depth == 0) return TS_ERR_RANGE;
    *out = *c;
    out->depth = (uint8_t)(c->depth - 1);
    out->sub = c->sub >> 2;
    return TS_OK;
}

ts_status_t ts_cell_children(const ts_cell_t *c, ts_cell_t out[4])
{
    if (c == NULL || out == NULL || !ts_cell_valid(c)) return TS_ERR_INVALID;
    if (c->depth >= TS_CELL_MAX_DEPTH) return TS_ERR_RANGE;
    for (unsigned q = 0; q < 4; q++) {
        out[q] = *c;
        out[q].depth = (uint8_t)(c->depth + 1);
        out[q].sub = c->sub * 4 + q;
    }
    return TS_OK;
}

ts_quad_t ts_cell_quadrant(const ts_cell_t *c)
{
    return (ts_quad_t)(c->sub & 3u);
}

bool ts_cell_contains(const ts_cell_t *anc, const ts_cell_t *c)
{
    if (!ts_cell_valid(anc) || !ts_cell_valid(c)) return false;
    if (anc->world != c->world || anc->cx != c->cx || anc->cy != c->cy || anc->depth > c->depth) return false;
    return (c->sub >> (2u * (unsigned)(c->depth - anc->depth))) == anc->sub;
}

/* Global integer coordinates of c at its own depth. */
static void to_global(const ts_cell_t *c, uint8_t depth, int64_t *gx, int64_t *gy)
{
    int64_t lx = 0, ly = 0;
    for (int b = depth - 1; b >= 0; b--) {
        unsigned q = (unsigned)(c->sub >> (2 * b)) & 3u;
        lx = lx * 2 + (q & 1u);
        ly = ly * 2 + (q >> 1);
    }
    *gx = (int64_t)c->cx * ((int64_t)1 << depth) + lx;
    *gy = (int64_t)c->cy * ((int64_t)1 << depth) + ly;
}

/* Root coordinates outside int32 wrap around (two's complement). */
static int32_t wrap_i32(int64_t v)
{
    uint32_t u = (uint32_t)(uint64_t)v;
    return u <= (uint32_t)INT32_MAX ? (int32_t)u : (int32_t)((int64_t)u - ((int64_t)1 << 32));
}

static void from_global(uint32_t world, uint8_t depth, int64_t gx, int64_t gy, ts_cell_t *out)
{
    int64_t side = (int64_t)1 << depth;
    int64_t rx = floor_div(gx, side), ry = floor_div(gy, side);
    int64_t lx = gx - rx * side, ly = gy - ry * side;
    uint64_t sub = 0;
    for (int b = depth - 1; b >= 0; b--)
        sub = sub * 4 + ((uint64_t)((ly >> b) & 1) << 1) + (uint64_t)((lx >> b) & 1);
    out->world = world;
    out->cx = wrap_i32(rx);
    out->cy = wrap_i32(ry);
    out->depth = depth;
    out->sub = sub;
}

void ts_cell_neighbor(const ts_cell_t *c, int dx, int dy, ts_cell_t *out)
{
    uint8_t depth = clamp_depth(c->depth);
    int64_t gx, gy;
    to_global(c, depth, &gx, &gy);
    from_global(c->world, depth, gx + dx, gy + dy, out);
}

void ts_cell_neighbors(const ts_cell_t *c, ts_cell_t out[8])
{
    static const int off[8][2] = {{-1, -1}, {0, -1}, {1, -1}, {-1, 0}, {1, 0}, {-1, 1}, {0, 1}, {1, 1}};
    for (int i = 0; i < 8; i++)
        ts_cell_neighbor(c, off[i][0], off[i][1], &out[i]);
}

/* floor(v / side) as a global coordinate, clamped to the int32 root range at
 * this depth; NaN maps to 0. */
static int64_t pos_to_global(double v, double side, uint8_t depth)
{
    double q = floor(v / side);
    double lo = (double)INT32_MIN * ldexp(1.0, depth);
    double hi = ((double)INT32_MAX + 1.0) * ldexp(1.0, depth) - 1.0;
    if (isnan(q)) return 0;
    if (q < lo) q = lo;
    if (q > hi) q = hi;
    return (int64_t)q;
}

void ts_cell_from_pos(uint32_t world, double cell_size, uint8_t depth, double x, double y, ts_cell_t *out)
{
    depth = clamp_depth(depth);
    double side = ldexp(cell_size, -(int)depth);
    from_global(world, depth, pos_to_global(x, side, depth), pos_to_global(y, side, depth), out);
}

void ts_cell_bounds(const ts_cell_t *c, double cell_size, double *x0, double *y0, double *x1, double *y1)
{
    uint8_t depth = clamp_depth(c->depth);
    double side = ldexp(cell_size, -(int)depth);
    int64_t gx, gy;
    to_global(c, depth, &gx, &gy);
    *x0 = (double)gx * side;
    *y0 = (double)gy * side;
    *x1 = (double)(gx + 1) * side;
    *y1 = (double)(gy + 1) * side;
}

bool ts_cell_has_pos(const ts_cell_t *c, double cell_size, double x, double y)
{
    if (!ts_cell_valid(c) || !isfinite(x) || !isfinite(y)) return false;
    ts_cell_t at;
    ts_cell_from_pos(c->world, cell_size, c->depth, x, y, &at);
    return ts_cell_eq(&at, c);
}
