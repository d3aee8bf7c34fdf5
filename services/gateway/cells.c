/* The gateway's table of cells: what the registry says exists (owner epoch,
 * state) plus cells only seen in state messages (e.g. a destination not yet
 * in the registry view). Beside it, gw->tree holds the same registry view as
 * a cell tree (any depth), which answers position -> deepest live cell and
 * which live cells a circle touches; both are updated together.
 *
 * Invariants: one record per cell id, found through its root (cx, cy) in
 * gw->cell_roots (chains hold every depth under a root, and roots whose
 * hashes collide); records are never freed before gw_cells_free_all, so
 * connections and queued work may keep pointers to them. */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

uint64_t gw_root_key(uint32_t world, int32_t cx, int32_t cy)
{
    ts_cell_t root = {.world = world, .cx = cx, .cy = cy, .depth = 0, .sub = 0};
    uint64_t h = ts_cell_hash(&root);
    return (h == 0 || h == UINT64_MAX) ? 1 : h;
}

gw_cell_t *gw_cell_find(gw_t *gw, const ts_cell_t *id)
{
    gw_cell_t *c = ts_map_get(&gw->cell_roots, gw_root_key(id->world, id->cx, id->cy));
    for (; c != NULL; c = c->next_same_root) {
        if (ts_cell_eq(&c->id, id)) return c;
    }
    return NULL;
}

gw_cell_t *gw_cell_get(gw_t *gw, const ts_cell_t *id)
{
    gw_cell_t *c = gw_cell_find(gw, id);
    if (c != NULL) return c;
    c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->gw = gw;
    c->id = *id;
    if (ts_cell_format(id, c->key, sizeof c->key) < 0 ||
        ts_subject_cell(c->input_subject, sizeof c->input_subject, id, TS_SUBJ_INPUT) < 0 ||
        ts_subject_cell(c->state_subject, sizeof c->state_subject, id, TS_SUBJ_STATE) < 0) {
        free(c);
        return NULL;
    }
    ts_map_init(&c->entities);
    uint64_t rk = gw_root_key(id->world, id->cx, id->cy);
    c->next_same_root = ts_map_get(&gw->cell_roots, rk);
    if (ts_map_put(&gw->cell_roots, rk, c) != TS_OK) {
        free(c);
        return NULL;
    }
    c->next_all = gw->all_cells;
    gw->all_cells = c;
    gw->ncells++;
    return c;
}

uint64_t gw_cell_epoch(const gw_cell_t *cell)
{
    return cell->seen_epoch > cell->reg_epoch ? cell->seen_epoch : cell->reg_epoch;
}

bool gw_cell_live(const gw_cell_t *cell)
{
    return cell->in_registry && (cell->reg_state == TS_CELL_ACTIVE || cell->reg_state == TS_CELL_HANDOVER);
}

/* Takes what the registry says of the cell unless an older epoch; returns
 * true if the cell's liveness changed. */
static bool take_entry(gw_cell_t *c, const ts_cell_entry_t *e)
{
    bool was_live = gw_cell_live(c);
    if (!c->in_registry || e->epoch >= c->reg_epoch) {
        c->reg_state = e->state;
        c->reg_epoch = e->epoch;
        ts_strlcpy(c->reg_owner, e->owner, sizeof c->reg_owner);
    }
    c->in_registry = true;
    return gw_cell_live(c) != was_live;
}

/* The tree again from the records (after a whole registry read). */
static void rebuild_tree(gw_t *gw)
{
    if (gw->tree == NULL) return;
    ts_celltree_clear(gw->tree);
    for (gw_cell_t *c = gw->all_cells; c != NULL; c = c->next_all) {
        if (!c->in_registry) continue;
        ts_cell_entry_t e = {.cell = c->id, .epoch = c->reg_epoch, .state = c->reg_state};
        (void)ts_celltree_apply(gw->tree, &e);
    }
}

bool gw_cells_apply_registry(gw_t *gw, const ts_cell_entry_t *entries, size_t n, uint64_t version)
{
    bool changed = false;
    for (gw_cell_t *c = gw->all_cells; c != NULL; c = c->next_all)
        c->reg_mark = false;
    for (size_t i = 0; i < n; i++) {
        const ts_cell_entry_t *e = &entries[i];
        if (e->cell.world != gw->world.id || !ts_cell_valid(&e->cell)) continue;
        gw_cell_t *c = gw_cell_get(gw, &e->cell);
        if (c == NULL) {
            ts_warn("registry: out of memory for cell records");
            return changed;
        }
        c->reg_mark = true;
        if (c->reg_ver > version) continue; /* a newer RegistryChange said more */
        if (take_entry(c, e)) {
            changed = true;
            gw_aoi_cell_changed(gw, c);
        }
        c->reg_ver = version;
    }
    for (gw_cell_t *c = gw->all_cells; c != NULL; c = c->next_all) {
        if (!c->in_registry || c->reg_mark || c->reg_ver > version) continue;
        bool was_live = gw_cell_live(c);
        c->in_registry = false;
        if (was_live) {
            changed = true;
            gw_aoi_cell_changed(gw, c);
        }
    }
    rebuild_tree(gw);
    return changed;
}

bool gw_cells_apply_change(gw_t *gw, const ts_cell_entry_t *e, uint64_t version, gw_cell_t **cell_out)
{
    *cell_out = NULL;
    if (e->cell.world != gw->world.id || !ts_cell_valid(&e->cell)) return false;
    gw_cell_t *c = gw_cell_get(gw, &e->cell);
    if (c == NULL) {
        ts_warn("registry: out of memory for cell records");
        return false;
    }
    *cell_out = c;
    if (version != 0 && version < c->reg_ver) return false;
    if (version > c->reg_ver) c->reg_ver = version;
    bool changed = take_entry(c, e);
    if (gw->tree != NULL) {
        ts_cell_entry_t te = {.cell = c->id, .epoch = c->reg_epoch, .state = c->reg_state};
        (void)ts_celltree_apply(gw->tree, &te);
    }
    return changed;
}

void gw_cell_clear_entities(gw_t *gw, gw_cell_t *cell)
{
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&cell->entities, &it, &id, &v);) {
        if (ts_map_get(&gw->homes, id) == cell) ts_map_del(&gw->homes, id);
        free(v);
    }
    ts_map_free(&cell->entities);
    cell->nchanged = cell->nremoved = 0;
    cell->full_ver = 0;
    cell->ver++;
    gw->ents_ver++;
    memset(&cell->kf, 0, sizeof cell->kf);
    cell->kf_seen = false;
}

void gw_cells_free_all(gw_t *gw)
{
    gw_cell_t *c = gw->all_cells;
    while (c != NULL) {
        gw_cell_t *next = c->next_all;
        ts_bus_sub_destroy(c->sub);
        gw_cell_clear_entities(gw, c);
        gw_router_drop_inputs(c, c->ninputs);
        free(c->inputs);
        free(c->ctr_flows);
        free(c->evs);
        free(c->ev_buf);
        free(c->subs);
        free(c->changed);
        free(c->removed);
        gw_blk_free(&c->blk);
        gw_blk_free(&c->full);
        free(c);
        c = next;
    }
    gw->all_cells = NULL;
    gw->ncells = 0;
    gw->batch_head = NULL;
    gw->dirty_head = NULL;
    ts_map_free(&gw->cell_roots);
}
