/* The split and merge policy (see splitplan.h). Per cell it keeps the
 * counts of consecutive hot (or, for a split parent, cold) reports and a
 * cooldown; entries of cells that left the snapshot are dropped at the next
 * evaluation. Work per evaluation is O(cells in the snapshot). */
#include "splitplan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/celltree.h"
#include "tessera/util.h"

void ts_splitplan_init(ts_splitplan_t *p, const ts_splitplan_cfg_t *cfg)
{
    memset(p, 0, sizeof *p);
    p->cfg = *cfg;
    if (p->cfg.max_entities < 2) p->cfg.max_entities = 2;
    if (p->cfg.merge_max_entities > p->cfg.max_entities / 2)
        p->cfg.merge_max_entities = p->cfg.max_entities / 2;
    if (p->cfg.windows < 1) p->cfg.windows = 1;
    if (p->cfg.merge_windows < 1) p->cfg.merge_windows = 1;
    if (p->cfg.max_depth < 0) p->cfg.max_depth = 0;
    if (p->cfg.max_depth > TS_CELL_MAX_DEPTH - 1) p->cfg.max_depth = TS_CELL_MAX_DEPTH - 1;
    ts_map_init(&p->index);
}

void ts_splitplan_free(ts_splitplan_t *p)
{
    if (!p) return;
    free(p->v);
    ts_map_free(&p->index);
    memset(p, 0, sizeof *p);
}

static ts_splitplan_track_t *find(const ts_splitplan_t *p, const ts_cell_t *cell)
{
    uintptr_t k = (uintptr_t)ts_map_get(&p->index, ts_cell_hash(cell));
    if (k == 0 || k > p->n || !ts_cell_eq(&p->v[k - 1].cell, cell)) return NULL;
    return &p->v[k - 1];
}

/* The track of cell, created if absent; NULL when out of memory. */
static ts_splitplan_track_t *track(ts_splitplan_t *p, const ts_cell_t *cell)
{
    ts_splitplan_track_t *t = find(p, cell);
    if (t) return t;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        ts_splitplan_track_t *v = realloc(p->v, cap * sizeof *v);
        if (!v) return NULL;
        p->v = v;
        p->cap = cap;
    }
    if (ts_map_put(&p->index, ts_cell_hash(cell), (void *)(uintptr_t)(p->n + 1)) != TS_OK) return NULL;
    t = &p->v[p->n++];
    memset(t, 0, sizeof *t);
    t->cell = *cell;
    return t;
}

/* Drops the tracks the last evaluation did not see (keeping cooldowns that
 * are still running: a cell that comes back keeps its cooldown). */
static void prune(ts_splitplan_t *p, uint64_t now_us)
{
    size_t keep = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (p->v[i].gen != p->gen && p->v[i].cooldown_until_us <= now_us) continue;
        p->v[keep++] = p->v[i];
    }
    if (keep == p->n) return;
    p->n = keep;
    ts_map_free(&p->index);
    ts_map_init(&p->index);
    for (size_t i = 0; i < p->n; i++)
        ts_map_put(&p->index, ts_cell_hash(&p->v[i].cell), (void *)(uintptr_t)(i + 1));
}

bool ts_splitplan_cooling(const ts_splitplan_t *p, const ts_cell_t *cell, uint64_t now_us)
{
    const ts_splitplan_track_t *t = find(p, cell);
    return t && t->cooldown_until_us > now_us;
}

void ts_splitplan_done(ts_splitplan_t *p, const ts_cell_t *cell, uint64_t now_us)
{
    ts_cell_t cells[5];
    size_t n = 1;
    cells[0] = *cell;
    if (ts_cell_children(cell, cells + 1) == TS_OK) n = 5;
    for (size_t i = 0; i < n; i++) {
        ts_splitplan_track_t *t = track(p, &cells[i]);
        if (!t) continue;
        t->hot = 0;
        t->cold = 0;
        t->cooldown_until_us = now_us + p->cfg.cooldown_us;
        t->gen = p->gen;
    }
}

static bool hot(const ts_splitplan_cfg_t *cfg, const ts_splitplan_cell_t *c)
{
    return c->entities > cfg->max_entities ||
           (cfg->max_tick_share > 0 && c->tick_share > cfg->max_tick_share);
}

/* Index of cell in the snapshot, or -1. */
static long snap_find(const ts_map_t *m, const ts_splitplan_cell_t *cells, const ts_cell_t *cell)
{
    uintptr_t k = (uintptr_t)ts_map_get(m, ts_cell_hash(cell));
    if (k == 0 || !ts_cell_eq(&cells[k - 1].entry.cell, cell)) return -1;
    return (long)(k - 1);
}

/* A split parent's merge window: true if the action is due. */
static bool eval_merge(ts_splitplan_t *p, const ts_map_t *m, const ts_splitplan_cell_t *cells, size_t i,
                       uint64_t now_us, ts_splitplan_action_t *a)
{
    ts_splitplan_track_t *t = track(p, &cells[i].entry.cell);
    if (!t) return false;
    t->gen = p->gen;
    ts_cell_t kids[4];
    if (ts_cell_children(&cells[i].entry.cell, kids) != TS_OK) return false;
    uint64_t latest = 0;
    uint32_t sum = 0;
    double share = 0;
    long k[4];
    for (int q = 0; q < 4; q++) {
        k[q] = snap_find(m, cells, &kids[q]);
        /* a child that is split itself, unknown or without a load: not now */
        if (k[q] < 0 || cells[k[q]].entry.state != TS_CELL_ACTIVE || !cells[k[q]].has_load) {
            t->cold = 0;
            return false;
        }
        latest = cells[k[q]].report_us > latest ? cells[k[q]].report_us : latest;
        sum += cells[k[q]].entities;
        share += cells[k[q]].tick_share;
    }
    if (latest > t->last_report_us) {
        t->last_report_us = latest;
        bool cold = sum < p->cfg.merge_max_entities &&
                    (p->cfg.max_tick_share <= 0 || share < p->cfg.max_tick_share / 2);
        t->cold = cold ? t->cold + 1 : 0;
    }
    if (t->cold < p->cfg.merge_windows || t->cooldown_until_us > now_us) return false;
    for (int q = 0; q < 4; q++) {
        if (ts_splitplan_cooling(p, &kids[q], now_us)) return false;
    }
    memset(a, 0, sizeof *a);
    a->kind = TS_SPLITPLAN_MERGE;
    a->cell = i;
    a->entities = sum;
    a->same_owner = true;
    /* the owner holding most of the children's entities gathers them */
    uint32_t best = 0;
    int bq = 0;
    for (int q = 0; q < 4; q++) {
        const ts_cell_entry_t *e = &cells[k[q]].entry;
        uint32_t mine = 0;
        for (int r = 0; r < 4; r++)
            if (strcmp(cells[k[r]].entry.owner, e->owner) == 0) mine += cells[k[r]].entities + 1;
        if (mine > best || (mine == best && strcmp(e->owner, cells[k[bq]].entry.owner) < 0)) {
            best = mine;
            bq = q;
        }
        if (strcmp(e->owner, cells[k[0]].entry.owner) != 0) a->same_owner = false;
    }
    ts_strlcpy(a->gather_to, cells[k[bq]].entry.owner, sizeof a->gather_to);
    snprintf(a->why, sizeof a->why, "children hold %u entities together (< %u) for %d reports", sum,
             p->cfg.merge_max_entities, t->cold);
    return true;
}

size_t ts_splitplan_eval(ts_splitplan_t *p, const ts_splitplan_cell_t *cells, size_t n, uint64_t now_us,
                         ts_splitplan_action_t *out, size_t max)
{
    p->gen++;
    ts_map_t m;
    ts_map_init(&m);
    for (size_t i = 0; i < n; i++)
        ts_map_put(&m, ts_cell_hash(&cells[i].entry.cell), (void *)(uintptr_t)(i + 1));
    size_t nout = 0;
    for (size_t i = 0; i < n; i++) {
        const ts_splitplan_cell_t *c = &cells[i];
        if (c->entry.state == TS_CELL_SPLIT) {
            ts_splitplan_action_t a;
            if (eval_merge(p, &m, cells, i, now_us, &a) && nout < max) out[nout++] = a;
            continue;
        }
        if (!ts_celltree_state_live(c->entry.state)) continue;
        ts_splitplan_track_t *t = track(p, &c->entry.cell);
        if (!t) continue;
        t->gen = p->gen;
        t->cold = 0;
        if (!c->has_load) {
            t->hot = 0;
            continue;
        }
        if (c->report_us > t->last_report_us) {
            t->last_report_us = c->report_us;
            t->hot = hot(&p->cfg, c) ? t->hot + 1 : 0;
        }
        if (t->hot < p->cfg.windows || t->cooldown_until_us > now_us ||
            c->entry.cell.depth >= p->cfg.max_depth)
            continue;
        if (nout < max) {
            ts_splitplan_action_t *a = &out[nout++];
            memset(a, 0, sizeof *a);
            a->kind = TS_SPLITPLAN_SPLIT;
            a->cell = i;
            a->entities = c->entities;
            a->same_owner = true;
            ts_strlcpy(a->gather_to, c->entry.owner, sizeof a->gather_to);
            snprintf(a->why, sizeof a->why,
                     "%u entities (max %u), %.2f of its worker's tick budget, for %d reports", c->entities,
                     p->cfg.max_entities, c->tick_share, t->hot);
        }
    }
    ts_map_free(&m);
    prune(p, now_us);
    return nout;
}
