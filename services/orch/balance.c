/* Load balancing policy (see balance.h for the load formula).
 *
 * Invariants: a proposed move takes a cell from an eligible worker that owns
 * at least two cells to another eligible worker; a load move strictly lowers
 * max(load_from, load_to) by the cell's estimated load; nothing moves within
 * the cooldown of the previous move; an idle cluster (every cell load 0)
 * never has a load move, only an empty worker gets its first cell. */
#include "balance.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EPS 1e-9

static const int EDGE[4] = {1, 3, 4, 6}; /* edge neighbours in ts_cell_neighbors order */

static double worker_load(const ts_balance_view_t *v, const ts_balance_worker_t *w)
{
    double load = 0;
    if (v->mean_entities > 0) load += 0.5 * w->entities / v->mean_entities;
    if (v->mean_inputs > 0) load += 0.3 * w->inputs_per_s / v->mean_inputs;
    if (v->budget_ms > 0) load += 0.2 * w->tick_p99_ms / v->budget_ms;
    return load;
}

ts_status_t ts_balance_view_init(ts_balance_view_t *v, ts_balance_worker_t *w, size_t nw,
                                 ts_balance_cell_t *c, size_t nc, double budget_ms)
{
    memset(v, 0, sizeof *v);
    v->w = w;
    v->nw = nw;
    v->c = c;
    v->nc = nc;
    v->budget_ms = budget_ms;
    ts_map_init(&v->index);
    for (size_t i = 0; i < nw; i++) {
        w[i].ncells = 0;
        w[i].entities = w[i].inputs_per_s = 0;
    }
    for (size_t i = 0; i < nc; i++) {
        if (ts_map_put(&v->index, ts_cell_hash(&c[i].cell), (void *)(uintptr_t)(i + 1)) != TS_OK) {
            ts_map_free(&v->index);
            return TS_ERR_NOMEM;
        }
        int o = c[i].owner;
        if (o < 0 || (size_t)o >= nw) {
            c[i].owner = -1;
            continue;
        }
        w[o].ncells++;
        w[o].entities += c[i].entities;
        w[o].inputs_per_s += c[i].inputs_per_s;
    }
    double sum_e = 0, sum_i = 0;
    for (size_t i = 0; i < nw; i++) {
        if (!w[i].eligible) continue;
        v->neligible++;
        sum_e += w[i].entities;
        sum_i += w[i].inputs_per_s;
    }
    if (v->neligible > 0) {
        v->mean_entities = sum_e / (double)v->neligible;
        v->mean_inputs = sum_i / (double)v->neligible;
    }
    double sum_load = 0;
    for (size_t i = 0; i < nw; i++) {
        w[i].load = worker_load(v, &w[i]);
        if (w[i].eligible) sum_load += w[i].load;
    }
    if (v->neligible > 0) v->mean_load = sum_load / (double)v->neligible;
    return TS_OK;
}

void ts_balance_view_free(ts_balance_view_t *v)
{
    if (!v) return;
    ts_map_free(&v->index);
}

double ts_balance_cell_load(const ts_balance_view_t *v, size_t i)
{
    const ts_balance_cell_t *c = &v->c[i];
    double load = 0;
    if (v->mean_entities > 0) load += 0.5 * c->entities / v->mean_entities;
    if (v->mean_inputs > 0) load += 0.3 * c->inputs_per_s / v->mean_inputs;
    if (c->owner >= 0 && v->budget_ms > 0) {
        const ts_balance_worker_t *o = &v->w[c->owner];
        if (o->entities > 0) load += 0.2 * (o->tick_p99_ms / v->budget_ms) * (c->entities / o->entities);
    }
    return load;
}

long ts_balance_find(const ts_balance_view_t *v, const ts_cell_t *cell)
{
    uintptr_t k = (uintptr_t)ts_map_get(&v->index, ts_cell_hash(cell));
    if (k == 0 || !ts_cell_eq(&v->c[k - 1].cell, cell)) return -1;
    return (long)(k - 1);
}

/* Owner of the cell covering n (n itself or an ancestor), or -1. */
static int owner_at(const ts_balance_view_t *v, const ts_cell_t *n)
{
    ts_cell_t cur = *n;
    for (;;) {
        long k = ts_balance_find(v, &cur);
        if (k >= 0) return v->c[k].owner;
        ts_cell_t parent;
        if (cur.depth == 0 || ts_cell_parent(&cur, &parent) != TS_OK) return -1;
        cur = parent;
    }
}

/* How many of cell i's neighbours (edge only, or all eight) worker w owns. */
static int neighbours_owned(const ts_balance_view_t *v, size_t i, int w, bool edge_only)
{
    ts_cell_t nb[8];
    ts_cell_neighbors(&v->c[i].cell, nb);
    int n = 0;
    for (int k = 0; k < (edge_only ? 4 : 8); k++) {
        const ts_cell_t *cell = &nb[edge_only ? EDGE[k] : k];
        if (ts_cell_eq(cell, &v->c[i].cell)) continue; /* clamped at the edge of the coordinate range */
        n += owner_at(v, cell) == w;
    }
    return n;
}

int ts_balance_target(const ts_balance_view_t *v, size_t i, int exclude)
{
    double min_load = INFINITY;
    for (size_t k = 0; k < v->nw; k++) {
        if (v->w[k].eligible && (int)k != exclude && v->w[k].load < min_load) min_load = v->w[k].load;
    }
    int best = -1;
    bool best_nb = false;
    for (size_t k = 0; k < v->nw; k++) {
        const ts_balance_worker_t *w = &v->w[k];
        if (!w->eligible || (int)k == exclude || w->load > min_load + TS_BALANCE_TIE) continue;
        bool nb = neighbours_owned(v, i, (int)k, false) > 0;
        if (best >= 0) {
            const ts_balance_worker_t *b = &v->w[best];
            if (nb != best_nb) {
                if (!nb) continue;
            } else if (w->ncells != b->ncells) {
                if (w->ncells > b->ncells) continue;
            } else if (fabs(w->load - b->load) > EPS) {
                if (w->load > b->load) continue;
            } else if (strcmp(w->id, b->id) >= 0) {
                continue;
            }
        }
        best = (int)k;
        best_nb = nb;
    }
    return best;
}

void ts_balance_assign(ts_balance_view_t *v, size_t i, int to)
{
    ts_balance_cell_t *c = &v->c[i];
    double load = ts_balance_cell_load(v, i);
    if (c->owner >= 0) {
        ts_balance_worker_t *from = &v->w[c->owner];
        from->ncells--;
        from->entities -= c->entities;
        from->inputs_per_s -= c->inputs_per_s;
        from->load -= load;
    }
    c->owner = to;
    if (to >= 0) {
        ts_balance_worker_t *w = &v->w[to];
        w->ncells++;
        w->entities += c->entities;
        w->inputs_per_s += c->inputs_per_s;
        w->load += load;
    }
}

void ts_balance_init(ts_balance_t *b, const ts_balance_cfg_t *cfg)
{
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    if (b->cfg.hysteresis < 1) b->cfg.hysteresis = 1;
}

void ts_balance_moved(ts_balance_t *b, uint64_t now_us)
{
    b->last_move_us = now_us ? now_us : 1;
}

/* Picks the cell of `from` to give to `to`, preferring a child of a split
 * cell (depth > 0: a split exists to spread a hot area), then one that
 * touches a cell of `to`, then the lowest resulting max(load_from, load_to),
 * then one on the border of `from`'s area, then the smallest id. With
 * improve, only cells whose move strictly lowers max(load_from, load_to)
 * qualify. */
static bool choose_cell(const ts_balance_view_t *v, int from, int to, bool improve, ts_balance_move_t *m)
{
    const ts_balance_worker_t *f = &v->w[from], *t = &v->w[to];
    long best = -1;
    bool best_adj = false, best_child = false;
    double best_after = 0;
    int best_inner = 0;
    for (size_t i = 0; i < v->nc; i++) {
        if (v->c[i].owner != from) continue;
        double cl = ts_balance_cell_load(v, i);
        if (improve && !(cl > EPS && t->load + cl < f->load - EPS)) continue;
        double after = fmax(f->load - cl, t->load + cl);
        bool adj = neighbours_owned(v, i, to, true) > 0;
        int inner = neighbours_owned(v, i, from, true);
        bool child = v->c[i].cell.depth > 0;
        if (best >= 0) {
            if (child != best_child) {
                if (!child) continue;
            } else if (adj != best_adj) {
                if (!adj) continue;
            } else if (fabs(after - best_after) > EPS) {
                if (after > best_after) continue;
            } else if (inner != best_inner) {
                if (inner > best_inner) continue;
            } else if (ts_cell_cmp(&v->c[i].cell, &v->c[best].cell) >= 0) {
                continue;
            }
        }
        best = (long)i;
        best_child = child;
        best_adj = adj;
        best_after = after;
        best_inner = inner;
    }
    if (best < 0) return false;
    m->cell = (size_t)best;
    m->from = from;
    m->to = to;
    m->adjacent = best_adj;
    m->from_load = f->load;
    m->to_load = t->load;
    m->cell_load = ts_balance_cell_load(v, (size_t)best);
    m->mean_load = v->mean_load;
    return true;
}

/* An eligible worker without cells and the eligible worker with the most
 * cells (at least two; ties: the higher load). */
static bool find_empty(const ts_balance_view_t *v, int *empty, int *donor)
{
    *empty = *donor = -1;
    for (size_t i = 0; i < v->nw; i++) {
        const ts_balance_worker_t *w = &v->w[i];
        if (!w->eligible) continue;
        if (w->ncells == 0 && (*empty < 0 || strcmp(w->id, v->w[*empty].id) < 0)) *empty = (int)i;
        if (w->ncells >= 2 && (*donor < 0 || w->ncells > v->w[*donor].ncells ||
                               (w->ncells == v->w[*donor].ncells && w->load > v->w[*donor].load)))
            *donor = (int)i;
    }
    return *empty >= 0 && *donor >= 0;
}

/* The most loaded overloaded eligible worker with at least two cells, if a
 * worker that is not overloaded can take cells (other than cold, which may
 * be it); replaces *hot. */
static bool overloaded_hot(const ts_balance_view_t *v, int *hot)
{
    int best = -1;
    bool relief = false;
    for (size_t i = 0; i < v->nw; i++) {
        const ts_balance_worker_t *w = &v->w[i];
        if (!w->eligible) continue;
        if (!w->overloaded)
            relief = true;
        else if (w->ncells >= 2 && (best < 0 || w->load > v->w[best].load))
            best = (int)i;
    }
    if (best < 0 || !relief) return false;
    *hot = best;
    return true;
}

/* Hottest and coldest eligible workers (cold: not overloaded if possible). */
static void hot_cold(const ts_balance_view_t *v, int *hot, int *cold)
{
    *hot = *cold = -1;
    for (size_t i = 0; i < v->nw; i++) {
        if (v->w[i].eligible && (*hot < 0 || v->w[i].load > v->w[*hot].load)) *hot = (int)i;
    }
    overloaded_hot(v, hot);
    for (size_t i = 0; i < v->nw; i++) {
        const ts_balance_worker_t *w = &v->w[i];
        if (!w->eligible || (int)i == *hot) continue;
        if (*cold < 0 || (v->w[*cold].overloaded && !w->overloaded) ||
            (v->w[*cold].overloaded == w->overloaded && w->load < v->w[*cold].load))
            *cold = (int)i;
    }
}

void ts_balance_eval(ts_balance_t *b, ts_balance_view_t *v, uint64_t now_us, ts_balance_move_t *out)
{
    memset(out, 0, sizeof *out);
    out->kind = TS_BALANCE_NONE;
    out->from = out->to = -1;
    out->mean_load = v->mean_load;
    bool cooled = b->last_move_us == 0 || now_us - b->last_move_us >= b->cfg.cooldown_us;
    if (v->neligible < 2) {
        b->over = 0;
        b->active = false;
        snprintf(out->why, sizeof out->why, "%zu eligible worker(s)", v->neligible);
        return;
    }

    int empty, donor;
    if (find_empty(v, &empty, &donor)) {
        if (!cooled) {
            snprintf(out->why, sizeof out->why, "%s owns no cell; waiting for the cooldown", v->w[empty].id);
            return;
        }
        if (choose_cell(v, donor, empty, false, out)) out->kind = TS_BALANCE_EMPTY;
        return;
    }

    int hot, cold;
    hot_cold(v, &hot, &cold);
    double hot_load = v->w[hot].load, mean = v->mean_load;
    out->from_load = hot_load;
    out->to_load = v->w[cold].load;
    bool over = hot_load > (1 + b->cfg.threshold) * mean && hot_load - mean >= TS_BALANCE_MIN_GAP;
    if (v->w[hot].overloaded && !v->w[cold].overloaded) {
        /* slow is not dead: an overloaded worker sheds cells at once */
        over = true;
        b->over = b->cfg.hysteresis;
        b->active = true;
    }
    b->over = over ? b->over + 1 : 0;
    if (!b->active && b->over >= b->cfg.hysteresis) b->active = true;
    if (b->active && hot_load <= (1 + b->cfg.threshold / 2) * mean && !v->w[hot].overloaded) {
        b->active = false;
        b->over = 0;
    }
    if (!b->active) {
        snprintf(out->why, sizeof out->why,
                 "hottest %s %.3f vs mean %.3f (trigger %.3f, hot %d/%d evaluations)", v->w[hot].id, hot_load,
                 mean, (1 + b->cfg.threshold) * mean, b->over, b->cfg.hysteresis);
        return;
    }
    if (!cooled) {
        snprintf(out->why, sizeof out->why, "hottest %s %.3f vs mean %.3f; waiting for the cooldown",
                 v->w[hot].id, hot_load, mean);
        return;
    }
    if (v->w[hot].ncells < 2) {
        snprintf(out->why, sizeof out->why, "hottest %s owns a single cell", v->w[hot].id);
        return;
    }
    if (!choose_cell(v, hot, cold, true, out)) {
        snprintf(out->why, sizeof out->why, "no cell of %s (%.3f) lowers the max load with %s (%.3f)",
                 v->w[hot].id, hot_load, v->w[cold].id, v->w[cold].load);
        out->from = out->to = -1;
        return;
    }
    out->kind = TS_BALANCE_LOAD;
}

size_t ts_balance_plan(ts_balance_t *b, ts_balance_view_t *v, uint64_t now_us, ts_balance_move_t *moves,
                       size_t max_moves, ts_balance_move_t *none)
{
    ts_balance_move_t m;
    ts_balance_eval(b, v, now_us, &m);
    if (none) *none = m;
    if (m.kind == TS_BALANCE_NONE || max_moves == 0) return 0;
    size_t n = 0;
    moves[n++] = m;
    ts_balance_assign(v, m.cell, m.to);
    bool loading = m.kind == TS_BALANCE_LOAD;
    while (n < max_moves) {
        int empty, donor;
        if (find_empty(v, &empty, &donor)) {
            if (!choose_cell(v, donor, empty, false, &m)) break;
            m.kind = TS_BALANCE_EMPTY;
        } else {
            int hot, cold;
            hot_cold(v, &hot, &cold);
            if (hot < 0 || cold < 0) break;
            double hot_load = v->w[hot].load, mean = v->mean_load;
            if (!loading) {
                /* after the first cells of new workers: load moves if over the threshold */
                bool over =
                    (hot_load > (1 + b->cfg.threshold) * mean && hot_load - mean >= TS_BALANCE_MIN_GAP) ||
                    v->w[hot].overloaded;
                if (!over) break;
                loading = true;
                b->active = true;
            }
            if (hot_load <= (1 + b->cfg.threshold / 2) * mean && !v->w[hot].overloaded) break;
            if (v->w[hot].ncells < 2 || !choose_cell(v, hot, cold, true, &m)) break;
            m.kind = TS_BALANCE_LOAD;
        }
        moves[n++] = m;
        ts_balance_assign(v, m.cell, m.to);
    }
    return n;
}
