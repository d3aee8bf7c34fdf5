/* Areas of interest: which cells' state each client listens to.
 *
 * A joined client's area of interest is a circle around its entity. It is
 * evaluated around a centre (c->aoi_x, aoi_y), the entity's position at the
 * last evaluation, and re-evaluated once the entity moved gw->aoi_move from
 * it (only the centre moves: view.c re-checks the entities of its cells),
 * and its cells are looked up again (gw_aoi_update) when the centre moved
 * gw->aoi_slack from where they were last looked up, when a cell the circle
 * may reach becomes live or stops being live, or when the client's own cell
 * changes. A lookup around (sub_x, sub_y) references the client's own cell
 * (its inputs' destination, whose `left` entries re-route it) and every live
 * cell, at any depth, that the circle of radius aoi_keep + aoi_slack touches
 * (ts_celltree_query_circle), which holds the keep circle of every centre
 * within aoi_slack of it; view.c shows the entities within gw->aoi_show of
 * the centre and keeps those shown while within aoi_keep.
 * With move = hysteresis / 4, show = radius + move and keep = radius +
 * hysteresis - move, so between two evaluations every entity within
 * aoi.radius of the entity is shown and none beyond radius + hysteresis.
 *
 * Subscriptions are ref-counted: a cell's state subscription exists while
 * at least one client references it (aoi_refs > 0); dropping the last
 * reference unsubscribes (without waiting) and forgets the cell's entities.
 * cell->subs lists the clients referencing a cell, so a flush visits only
 * the clients of cells that changed.
 *
 * The world map (ws.c) holds one more reference on every live cell, at any
 * depth, while at least one map viewer wants entity dots (gw_aoi_map_hold):
 * a cell that becomes live is referenced as the change arrives, one that
 * stops being live is released, and everything is released when the last
 * viewer leaves. cell->map_ref says whether the map holds the cell.
 *
 * Registry changes reach the clients near them in O(change): each client is
 * on the watch list of every root cell its circle's bounding box covers
 * (gw->watch); a cell that becomes live or stops being live queues the
 * watchers of its root. Queued clients are re-evaluated once before the next
 * flush (gw_aoi_run), however many changes queued them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define HYST_SHARE 0.1
/* Cells are looked up again once the centre moved this share of the radius. */
#define SLACK_SHARE 0.25

/* The clients whose circle reaches one root cell. */
typedef struct {
    gw_conn_t **v;
    size_t n, cap;
} gw_watch_t;

ts_status_t gw_aoi_init(gw_t *gw)
{
    const ts_config_t *cfg = gw->cfg;
    double r =
        cfg->aoi_radius > 0 ? cfg->aoi_radius : ((double)cfg->gateway_aoi_radius + 0.5) * gw->world.cell_size;
    double h = cfg->aoi_hysteresis > 0 ? cfg->aoi_hysteresis : HYST_SHARE * r;
    gw->aoi_move = h / 4;
    gw->aoi_show = r + gw->aoi_move;
    gw->aoi_keep = r + h - gw->aoi_move;
    gw->aoi_slack = SLACK_SHARE * r > gw->aoi_move ? SLACK_SHARE * r : gw->aoi_move;
    ts_map_init(&gw->watch);
    ts_info("area of interest: radius %g, hysteresis %g", r, h);
    return TS_OK;
}

void gw_aoi_free(gw_t *gw)
{
    void *v;
    for (size_t it = 0; ts_map_next(&gw->watch, &it, NULL, &v);) {
        gw_watch_t *w = v;
        free(w->v);
        free(w);
    }
    ts_map_free(&gw->watch);
}

static void on_state_msg(void *ud, const ts_bus_msg_t *msg)
{
    gw_cell_t *cell = ud;
    gw_inbox_push(cell->gw, GW_MSG_STATE, cell, msg);
}

static void subscribe(gw_t *gw, gw_cell_t *cell)
{
    static uint64_t warned_us;
    ts_status_t st = ts_bus_subscribe(gw->bus, cell->state_subject, on_state_msg, cell, &cell->sub);
    if (st != TS_OK) {
        cell->sub = NULL;
        gw_warn_limited(&warned_us, "cannot subscribe to", cell->state_subject, st);
    }
}

static void cell_ref(gw_t *gw, gw_cell_t *cell)
{
    if (cell->aoi_refs++ > 0) return;
    gw->nsubscribed++;
    if (!gw->stopping) subscribe(gw, cell);
}

static void cell_unref(gw_t *gw, gw_cell_t *cell)
{
    if (cell->aoi_refs == 0 || --cell->aoi_refs > 0) return;
    gw->nsubscribed--;
    ts_bus_sub_close(cell->sub);
    cell->sub = NULL;
    gw_view_forget_cell(gw, cell);
}

void gw_aoi_resubscribe(gw_t *gw)
{
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        if (cell->aoi_refs > 0 && cell->sub == NULL && !gw->stopping) subscribe(gw, cell);
    }
}

void gw_aoi_close_all(gw_t *gw)
{
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        ts_bus_sub_close(cell->sub);
        cell->sub = NULL;
    }
}

/* ---- watch lists ---- */

static void watch_add(gw_t *gw, int32_t cx, int32_t cy, gw_conn_t *c)
{
    uint64_t key = gw_root_key(gw->world.id, cx, cy);
    gw_watch_t *w = ts_map_get(&gw->watch, key);
    if (w == NULL) {
        w = calloc(1, sizeof *w);
        if (w == NULL || ts_map_put(&gw->watch, key, w) != TS_OK) {
            free(w);
            return;
        }
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        gw_conn_t **v = realloc(w->v, cap * sizeof *v);
        if (v == NULL) return;
        w->v = v;
        w->cap = cap;
    }
    w->v[w->n++] = c;
}

static void watch_del(gw_t *gw, int32_t cx, int32_t cy, gw_conn_t *c)
{
    uint64_t key = gw_root_key(gw->world.id, cx, cy);
    gw_watch_t *w = ts_map_get(&gw->watch, key);
    if (w == NULL) return;
    for (size_t i = 0; i < w->n; i++) {
        if (w->v[i] != c) continue;
        w->v[i] = w->v[--w->n];
        break;
    }
    if (w->n == 0) {
        ts_map_del(&gw->watch, key);
        free(w->v);
        free(w);
    }
}

void gw_aoi_unwatch(gw_t *gw, gw_conn_t *c)
{
    if (c->aoi_marked) {
        gw_conn_t **pp = &gw->aoi_head;
        while (*pp != NULL && *pp != c)
            pp = &(*pp)->next_aoi;
        if (*pp == c) *pp = c->next_aoi;
        c->aoi_marked = false;
        c->next_aoi = NULL;
    }
    if (!c->watching) return;
    for (int32_t y = c->wy0; y <= c->wy1; y++) {
        for (int32_t x = c->wx0; x <= c->wx1; x++)
            watch_del(gw, x, y, c);
    }
    c->watching = false;
}

/* Root index of world coordinate v, clamped to [lo, hi]. */
static int32_t root_of(double v, double size, int32_t lo, int32_t hi)
{
    double r = floor(v / size);
    if (r < (double)lo) return lo;
    if (r > (double)hi) return hi;
    return (int32_t)r;
}

/* Watches the roots the circle of radius keep around the centre reaches
 * (within the world). */
static void watch_circle(gw_t *gw, gw_conn_t *c)
{
    const ts_world_t *w = &gw->world;
    int32_t lox = w->x0, hix = (int32_t)((int64_t)w->x0 + w->width - 1);
    int32_t loy = w->y0, hiy = (int32_t)((int64_t)w->y0 + w->height - 1);
    double r = gw->aoi_keep + gw->aoi_slack;
    int32_t x0 = root_of(c->aoi_x - r, w->cell_size, lox, hix),
            x1 = root_of(c->aoi_x + r, w->cell_size, lox, hix);
    int32_t y0 = root_of(c->aoi_y - r, w->cell_size, loy, hiy),
            y1 = root_of(c->aoi_y + r, w->cell_size, loy, hiy);
    if (c->watching && c->wx0 == x0 && c->wx1 == x1 && c->wy0 == y0 && c->wy1 == y1) return;
    gw_aoi_unwatch(gw, c);
    for (int32_t y = y0; y <= y1; y++) {
        for (int32_t x = x0; x <= x1; x++)
            watch_add(gw, x, y, c);
    }
    c->wx0 = x0;
    c->wx1 = x1;
    c->wy0 = y0;
    c->wy1 = y1;
    c->watching = true;
}

void gw_aoi_mark(gw_t *gw, gw_conn_t *c)
{
    if (c->aoi_marked || c->phase != GW_PHASE_JOINED) return;
    c->aoi_marked = true;
    c->next_aoi = gw->aoi_head;
    gw->aoi_head = c;
    gw_flush_soon(gw);
}

void gw_aoi_run(gw_t *gw)
{
    while (gw->aoi_head != NULL) {
        gw_conn_t *c = gw->aoi_head;
        gw->aoi_head = c->next_aoi;
        c->next_aoi = NULL;
        c->aoi_marked = false;
        if (c->phase == GW_PHASE_JOINED && !c->handle_closed) gw_aoi_update(gw, c);
    }
}

void gw_aoi_moved(gw_t *gw, gw_conn_t *c, double x, double y)
{
    c->pos_x = x;
    c->pos_y = y;
    c->pos_known = true;
    if (c->phase != GW_PHASE_JOINED) return;
    double dx = x - c->aoi_x, dy = y - c->aoi_y;
    if (dx * dx + dy * dy <= gw->aoi_move * gw->aoi_move) return;
    dx = x - c->sub_x;
    dy = y - c->sub_y;
    if (dx * dx + dy * dy > gw->aoi_slack * gw->aoi_slack) {
        gw_aoi_mark(gw, c);
        return;
    }
    /* its cells still hold the circle: only the centre moves */
    c->aoi_x = x;
    c->aoi_y = y;
    c->resweep = true;
    gw_view_want_flush(gw, c);
}

/* Takes or drops the map's reference on one cell. */
static void map_sync(gw_t *gw, gw_cell_t *cell)
{
    bool want = gw->map_hold && !gw->stopping && gw_cell_live(cell);
    if (want == cell->map_ref) return;
    cell->map_ref = want;
    if (want)
        cell_ref(gw, cell);
    else
        cell_unref(gw, cell);
}

void gw_aoi_map_hold(gw_t *gw, bool on)
{
    if (gw->map_hold == on) return;
    gw->map_hold = on;
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all)
        map_sync(gw, cell);
}

void gw_aoi_cell_changed(gw_t *gw, gw_cell_t *cell)
{
    map_sync(gw, cell);
    gw_watch_t *w = ts_map_get(&gw->watch, gw_root_key(gw->world.id, cell->id.cx, cell->id.cy));
    if (w == NULL) return;
    for (size_t i = 0; i < w->n; i++)
        gw_aoi_mark(gw, w->v[i]);
}

/* ---- one client's cells ---- */

typedef struct {
    gw_t *gw;
    gw_cell_t **v;
    size_t n, cap;
    bool oom;
} cell_vec_t;

static void vec_add(cell_vec_t *vec, gw_cell_t *cell)
{
    if (cell == NULL) {
        vec->oom = true;
        return;
    }
    for (size_t i = 0; i < vec->n; i++) {
        if (vec->v[i] == cell) return;
    }
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 16;
        gw_cell_t **v = realloc(vec->v, cap * sizeof *v);
        if (v == NULL) {
            vec->oom = true;
            return;
        }
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->n++] = cell;
}

static void vec_add_entry(void *ud, const ts_cell_entry_t *e)
{
    cell_vec_t *vec = ud;
    vec_add(vec, gw_cell_get(vec->gw, &e->cell));
}

static void collect_gone(gw_conn_t *c, gw_cell_t *cell)
{
    uint64_t id;
    for (size_t it = 0; ts_map_next(&cell->entities, &it, &id, NULL);) {
        if (ts_map_get(&c->shown, id) == NULL) continue;
        if (c->ngone == c->gone_cap) {
            size_t cap = c->gone_cap ? c->gone_cap * 2 : 64;
            uint64_t *v = realloc(c->gone, cap * sizeof *v);
            if (v == NULL) return;
            c->gone = v;
            c->gone_cap = cap;
        }
        c->gone[c->ngone++] = id;
    }
}

/* Adds c (its aoi slot `slot`) to the cell's clients; the index, or SIZE_MAX. */
static size_t subs_add(gw_cell_t *cell, gw_conn_t *c, size_t slot)
{
    if (cell->nsubs == cell->subs_cap) {
        size_t cap = cell->subs_cap ? cell->subs_cap * 2 : 8;
        gw_subref_t *v = realloc(cell->subs, cap * sizeof *v);
        if (v == NULL) return SIZE_MAX;
        cell->subs = v;
        cell->subs_cap = cap;
    }
    cell->subs[cell->nsubs] = (gw_subref_t){.conn = c, .slot = slot};
    return cell->nsubs++;
}

static void subs_del(gw_cell_t *cell, size_t idx)
{
    if (idx >= cell->nsubs) return;
    gw_subref_t last = cell->subs[--cell->nsubs];
    if (idx == cell->nsubs) return;
    cell->subs[idx] = last;
    last.conn->aoi[last.slot].sub_idx = idx;
}

void gw_aoi_update(gw_t *gw, gw_conn_t *c)
{
    cell_vec_t want = {.gw = gw};
    bool joined = c->phase == GW_PHASE_JOINED && c->cell != NULL;
    if (joined) {
        if (!c->pos_known) { /* resumed: its state was not seen yet */
            double x0, y0, x1, y1;
            ts_cell_bounds(&c->cell->id, gw->world.cell_size, &x0, &y0, &x1, &y1);
            c->pos_x = (x0 + x1) / 2;
            c->pos_y = (y0 + y1) / 2;
        }
        c->aoi_x = c->sub_x = c->pos_x;
        c->aoi_y = c->sub_y = c->pos_y;
        c->resweep = true;
        vec_add(&want, c->cell);
        if (gw->tree != NULL)
            (void)ts_celltree_query_circle(gw->tree, c->aoi_x, c->aoi_y, gw->aoi_keep + gw->aoi_slack,
                                           vec_add_entry, &want);
        watch_circle(gw, c);
    } else {
        gw_aoi_unwatch(gw, c);
    }
    gw_aoi_slot_t *slots = NULL;
    if (want.n > 0) slots = malloc(want.n * sizeof *slots);
    if (want.oom || (want.n > 0 && slots == NULL)) {
        ts_warn("conn %llu: out of memory updating the area of interest", (unsigned long long)c->id);
        free(want.v);
        free(slots);
        return;
    }
    bool changed = false;
    for (size_t i = 0; i < want.n; i++) {
        gw_cell_t *cell = want.v[i];
        bool kept = false;
        slots[i] = (gw_aoi_slot_t){.cell = cell, .fresh = true, .sub_idx = SIZE_MAX};
        for (size_t j = 0; j < c->naoi; j++) {
            if (c->aoi[j].cell == cell) {
                slots[i].fresh = c->aoi[j].fresh;
                slots[i].sub_idx = c->aoi[j].sub_idx;
                if (slots[i].sub_idx < cell->nsubs) cell->subs[slots[i].sub_idx].slot = i;
                c->aoi[j].cell = NULL;
                kept = true;
                break;
            }
        }
        if (!kept) {
            cell_ref(gw, cell);
            slots[i].sub_idx = subs_add(cell, c, i);
            changed = true;
        }
    }
    /* slots is complete before other clients' entries move (subs_del) */
    gw_aoi_slot_t *old = c->aoi;
    size_t nold = c->naoi;
    c->aoi = slots;
    c->naoi = want.n;
    for (size_t j = 0; j < nold; j++) {
        gw_cell_t *cell = old[j].cell;
        if (cell == NULL) continue;
        if (joined) collect_gone(c, cell);
        subs_del(cell, old[j].sub_idx);
        cell_unref(gw, cell);
        changed = true;
    }
    free(old);
    free(want.v);
    if (joined && (changed || c->resweep)) gw_view_want_flush(gw, c);
}
