/* The local copy of a world's cell registry (see celltree.h).
 *
 * Entries live in a cell-keyed map; spatial questions walk the quadtree
 * down from the root cells a query touches, descending only through split
 * cells, so a query costs what it returns plus the split cells above it.
 * The range of root coordinates ever seen bounds the roots a query visits,
 * so a huge radius costs the world, not the radius. */
#include "tessera/celltree.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/cellmap.h"
#include "tessera/log.h"

struct ts_celltree {
    uint32_t world;
    double cell_size;
    ts_cellmap_t cells; /* cell -> ts_cell_entry_t* */
    bool any;           /* the root range below is set */
    int32_t min_cx, min_cy, max_cx, max_cy;
};

ts_status_t ts_celltree_new(ts_celltree_t **out, uint32_t world, double cell_size)
{
    *out = NULL;
    if (!(cell_size > 0) || !isfinite(cell_size)) return TS_ERR_INVALID;
    ts_celltree_t *t = calloc(1, sizeof(*t));
    if (!t) return TS_ERR_NOMEM;
    t->world = world;
    t->cell_size = cell_size;
    ts_cellmap_init(&t->cells);
    *out = t;
    return TS_OK;
}

void ts_celltree_clear(ts_celltree_t *t)
{
    ts_cellmap_clear(&t->cells, free);
    t->any = false;
}

void ts_celltree_free(ts_celltree_t *t)
{
    if (!t) return;
    ts_celltree_clear(t);
    ts_cellmap_free(&t->cells);
    free(t);
}

bool ts_celltree_state_live(ts_cell_state_t s)
{
    return s == TS_CELL_ACTIVE || s == TS_CELL_HANDOVER;
}

static void widen(ts_celltree_t *t, const ts_cell_t *c)
{
    if (!t->any) {
        t->min_cx = t->max_cx = c->cx;
        t->min_cy = t->max_cy = c->cy;
        t->any = true;
        return;
    }
    if (c->cx < t->min_cx) t->min_cx = c->cx;
    if (c->cx > t->max_cx) t->max_cx = c->cx;
    if (c->cy < t->min_cy) t->min_cy = c->cy;
    if (c->cy > t->max_cy) t->max_cy = c->cy;
}

bool ts_celltree_apply(ts_celltree_t *t, const ts_cell_entry_t *e)
{
    if (e->cell.world != t->world || !ts_cell_valid(&e->cell)) return false;
    ts_cell_entry_t *cur = ts_cellmap_get(&t->cells, &e->cell);
    if (cur) {
        if (e->epoch < cur->epoch) return false;
        if (e->epoch == cur->epoch && e->state == cur->state && strcmp(e->owner, cur->owner) == 0)
            return false;
        *cur = *e;
        return true;
    }
    cur = malloc(sizeof(*cur));
    if (!cur || ts_cellmap_put(&t->cells, &e->cell, cur) != TS_OK) {
        free(cur);
        ts_error("cell tree: out of memory keeping a registry entry");
        return false;
    }
    *cur = *e;
    widen(t, &e->cell);
    return true;
}

const ts_cell_entry_t *ts_celltree_get(const ts_celltree_t *t, const ts_cell_t *cell)
{
    return ts_cellmap_get(&t->cells, cell);
}

size_t ts_celltree_len(const ts_celltree_t *t)
{
    return t->cells.len;
}

const ts_cell_entry_t *ts_celltree_locate(const ts_celltree_t *t, double x, double y)
{
    if (!isfinite(x) || !isfinite(y)) return NULL;
    for (uint8_t d = 0; d <= TS_CELL_MAX_DEPTH; d++) {
        ts_cell_t c;
        ts_cell_from_pos(t->world, t->cell_size, d, x, y, &c);
        const ts_cell_entry_t *e = ts_cellmap_get(&t->cells, &c);
        if (!e) return NULL;
        if (ts_celltree_state_live(e->state)) return e;
        if (e->state != TS_CELL_SPLIT) return NULL;
    }
    return NULL;
}

/* A region test on a cell's bounds [x0, x1] x [y0, y1]. */
typedef struct {
    const ts_celltree_t *t;
    bool (*hit)(const void *q, double x0, double y0, double x1, double y1);
    const void *q;
    const ts_cell_t *skip; /* neighbours: the cell itself, its ancestors and descendants */
    ts_celltree_fn fn;
    void *ud;
    size_t n;
} walk_t;

static void visit(walk_t *w, const ts_cell_t *c)
{
    const ts_cell_entry_t *e = ts_cellmap_get(&w->t->cells, c);
    if (!e) return;
    double x0, y0, x1, y1;
    ts_cell_bounds(c, w->t->cell_size, &x0, &y0, &x1, &y1);
    if (!w->hit(w->q, x0, y0, x1, y1)) return;
    if (ts_celltree_state_live(e->state)) {
        if (w->skip && (ts_cell_contains(w->skip, c) || ts_cell_contains(c, w->skip))) return;
        w->fn(w->ud, e);
        w->n++;
        return;
    }
    if (e->state != TS_CELL_SPLIT || c->depth >= TS_CELL_MAX_DEPTH) return;
    ts_cell_t kids[4];
    if (ts_cell_children(c, kids) != TS_OK) return;
    for (int q = 0; q < 4; q++)
        visit(w, &kids[q]);
}

/* Visits the roots whose area [x0, x1] x [y0, y1] (closed) may touch, within
 * the range of roots the tree holds. */
static size_t walk(walk_t *w, double x0, double y0, double x1, double y1)
{
    const ts_celltree_t *t = w->t;
    if (!t->any || !(x0 <= x1) || !(y0 <= y1)) return 0;
    double s = t->cell_size;
    /* closed: a root whose far edge is exactly x0 touches the area too */
    double fx0 = ceil(x0 / s) - 1, fy0 = ceil(y0 / s) - 1, fx1 = floor(x1 / s), fy1 = floor(y1 / s);
    if (fx0 > t->max_cx || fy0 > t->max_cy || fx1 < t->min_cx || fy1 < t->min_cy) return 0;
    int64_t rx0 = fx0 < t->min_cx ? t->min_cx : (int64_t)fx0;
    int64_t ry0 = fy0 < t->min_cy ? t->min_cy : (int64_t)fy0;
    int64_t rx1 = fx1 > t->max_cx ? t->max_cx : (int64_t)fx1;
    int64_t ry1 = fy1 > t->max_cy ? t->max_cy : (int64_t)fy1;
    for (int64_t cy = ry0; cy <= ry1; cy++) {
        for (int64_t cx = rx0; cx <= rx1; cx++) {
            ts_cell_t root = {.world = t->world, .cx = (int32_t)cx, .cy = (int32_t)cy, .depth = 0, .sub = 0};
            visit(w, &root);
        }
    }
    return w->n;
}

typedef struct {
    double x, y, r;
} circle_t;

static bool hit_circle(const void *q, double x0, double y0, double x1, double y1)
{
    const circle_t *c = q;
    double dx = c->x < x0 ? x0 - c->x : (c->x > x1 ? c->x - x1 : 0);
    double dy = c->y < y0 ? y0 - c->y : (c->y > y1 ? c->y - y1 : 0);
    return dx * dx + dy * dy <= c->r * c->r;
}

size_t ts_celltree_query_circle(const ts_celltree_t *t, double x, double y, double r, ts_celltree_fn fn,
                                void *ud)
{
    if (!isfinite(x) || !isfinite(y) || !(r >= 0)) return 0;
    circle_t c = {x, y, r};
    walk_t w = {.t = t, .hit = hit_circle, .q = &c, .fn = fn, .ud = ud};
    return walk(&w, x - r, y - r, x + r, y + r);
}

typedef struct {
    double x0, y0, x1, y1;
} rect_t;

/* Closed rectangles: touching counts. */
static bool hit_rect_closed(const void *q, double x0, double y0, double x1, double y1)
{
    const rect_t *r = q;
    return x0 <= r->x1 && r->x0 <= x1 && y0 <= r->y1 && r->y0 <= y1;
}

size_t ts_celltree_neighbors(const ts_celltree_t *t, const ts_cell_t *cell, double margin, ts_celltree_fn fn,
                             void *ud)
{
    if (!ts_cell_valid(cell) || !(margin >= 0) || !isfinite(margin)) return 0;
    rect_t r;
    ts_cell_bounds(cell, t->cell_size, &r.x0, &r.y0, &r.x1, &r.y1);
    r.x0 -= margin;
    r.y0 -= margin;
    r.x1 += margin;
    r.y1 += margin;
    walk_t w = {.t = t, .hit = hit_rect_closed, .q = &r, .skip = cell, .fn = fn, .ud = ud};
    return walk(&w, r.x0, r.y0, r.x1, r.y1);
}

typedef struct {
    ts_celltree_fn fn;
    void *ud;
} each_t;

static void each_one(void *ud, const ts_cell_t *cell, void *val)
{
    (void)cell;
    each_t *e = ud;
    e->fn(e->ud, val);
}

void ts_celltree_each(const ts_celltree_t *t, ts_celltree_fn fn, void *ud)
{
    each_t e = {fn, ud};
    ts_cellmap_each(&t->cells, each_one, &e);
}
