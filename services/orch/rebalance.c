/* Rebalancing: every orch.rebalance_interval_ms the leader builds a view of
 * the cluster (who is alive, draining, what each cell weighs according to
 * the heartbeats), asks the policy in balance.c for at most one move and
 * performs it as a live handover. Every decision that moves a cell is logged
 * with the scores behind it; the reasons for not moving at debug level.
 *
 * Invariants: nothing moves while a drain is in progress, while an
 * eligible worker's heartbeat is missing or while a cell's input rate is not
 * measured yet (its load would read as zero);
 * a failed move still starts the cooldown, so a broken worker is not
 * hammered with handovers. */
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/util.h"

static int add_worker(ts_orch_view_t *vw, size_t cap, const char *id)
{
    for (size_t i = 0; i < vw->nw; i++) {
        if (strcmp(vw->w[i].id, id) == 0)
            return (int)i;
    }
    if (vw->nw == cap || !ts_orch_worker_id_ok(id))
        return -1;
    ts_balance_worker_t *w = &vw->w[vw->nw];
    memset(w, 0, sizeof *w);
    ts_strlcpy(w->id, id, sizeof w->id);
    return (int)vw->nw++;
}

int ts_orch_view_worker(const ts_orch_view_t *vw, const char *id)
{
    for (size_t i = 0; i < vw->nw; i++) {
        if (strcmp(vw->w[i].id, id) == 0)
            return (int)i;
    }
    return -1;
}

ts_status_t ts_orch_view_build(ts_orch_t *o, ts_orch_view_t *vw)
{
    memset(vw, 0, sizeof *vw);
    if (!o->reg)
        return TS_ERR_UNAVAILABLE;
    uint64_t now = ts_mono_us();
    size_t nhb = ts_workers_snapshot(o->workers, NULL, 0);
    char **known = NULL;
    size_t nknown = 0;
    ts_status_t st = ts_registry_workers(o->reg, &known, &nknown);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return TS_ERR_UNAVAILABLE;
    }
    size_t ndrain = ts_ctl_draining_copy(o->ctl, NULL, 0);
    size_t cap = nhb + nknown + ndrain + o->ncells + 1;
    ts_worker_info_t *hbs = calloc(nhb + 1, sizeof *hbs);
    char(*draining)[TS_WORKER_ID_MAX] = calloc(ndrain + 1, sizeof *draining);
    vw->w = calloc(cap, sizeof *vw->w);
    vw->alive = calloc(cap, sizeof *vw->alive);
    vw->fresh = calloc(cap, sizeof *vw->fresh);
    vw->c = calloc(o->ncells + 1, sizeof *vw->c);
    if (!hbs || !draining || !vw->w || !vw->alive || !vw->fresh || !vw->c) {
        st = TS_ERR_NOMEM;
        goto cleanup;
    }
    size_t m = ts_workers_snapshot(o->workers, hbs, nhb);
    nhb = m < nhb ? m : nhb;
    for (size_t i = 0; i < nhb; i++) {
        int k = add_worker(vw, cap, hbs[i].id);
        if (k < 0)
            continue;
        vw->fresh[k] = hbs[i].alive;
        vw->w[k].tick_p99_ms = hbs[i].alive ? hbs[i].tick_p99_ms : 0;
    }
    for (size_t i = 0; i < nknown; i++)
        add_worker(vw, cap, known[i]);
    size_t nd = ts_ctl_draining_copy(o->ctl, draining, ndrain);
    for (size_t i = 0; i < nd && i < ndrain; i++)
        add_worker(vw, cap, draining[i]);
    for (size_t i = 0; i < o->ncells; i++) {
        ts_balance_cell_t *c = &vw->c[vw->nc++];
        c->cell = o->cells[i].cell;
        c->owner = o->cells[i].state == TS_CELL_ACTIVE ? add_worker(vw, cap, o->cells[i].owner) : -1;
        ts_cell_load_t load;
        if (ts_workers_cell_load(o->workers, &c->cell, now, &load)) {
            c->entities = load.entities;
            c->inputs_per_s = load.inputs_per_s;
            vw->warming += !load.rate_known;
        }
    }
    for (size_t i = 0; i < vw->nw; i++) {
        bool alive = false;
        st = ts_registry_worker_is_alive(o->reg, vw->w[i].id, &alive);
        if (st != TS_OK) {
            ts_orch_registry_broken(o, st);
            st = TS_ERR_UNAVAILABLE;
            goto cleanup;
        }
        ts_worker_info_t info;
        bool says_draining = ts_workers_get(o->workers, vw->w[i].id, &info) && info.alive && info.draining;
        vw->alive[i] = alive;
        vw->w[i].eligible = alive && !says_draining && !ts_ctl_is_draining(o->ctl, vw->w[i].id);
    }
    double budget = 1000.0 / (double)(o->cfg->worker_tick_hz > 0 ? o->cfg->worker_tick_hz : 20);
    st = ts_balance_view_init(&vw->v, vw->w, vw->nw, vw->c, vw->nc, budget);

cleanup:
    free(hbs);
    free(draining);
    ts_registry_free_list(known, nknown);
    if (st != TS_OK) {
        free(vw->w);
        free(vw->alive);
        free(vw->fresh);
        free(vw->c);
        memset(vw, 0, sizeof *vw);
    }
    return st;
}

void ts_orch_view_free(ts_orch_view_t *vw)
{
    if (!vw)
        return;
    ts_balance_view_free(&vw->v);
    free(vw->w);
    free(vw->alive);
    free(vw->fresh);
    free(vw->c);
    memset(vw, 0, sizeof *vw);
}

void ts_rebalance_init(ts_orch_t *o)
{
    ts_balance_cfg_t cfg = {
        .threshold = o->cfg->orch_rebalance_threshold,
        .hysteresis = (int)o->cfg->orch_rebalance_hysteresis,
        .cooldown_us = (uint64_t)o->cfg->orch_rebalance_cooldown_ms * 1000,
    };
    ts_balance_init(&o->balance, &cfg);
    o->next_balance_us = 0;
}

static const char *kind_name(ts_balance_kind_t k)
{
    return k == TS_BALANCE_EMPTY ? "empty worker" : "load";
}

void ts_rebalance_poll(ts_orch_t *o)
{
    if (!o->cfg->orch_rebalance)
        return;
    uint64_t now = ts_mono_us();
    if (now < o->next_balance_us)
        return;
    o->next_balance_us = now + (uint64_t)o->cfg->orch_rebalance_interval_ms * 1000;
    if (ts_ctl_draining_any(o->ctl)) {
        ts_debug("rebalance: skipped while a worker drains");
        return;
    }
    ts_orch_view_t vw;
    if (ts_orch_view_build(o, &vw) != TS_OK)
        return;
    if (vw.warming) {
        ts_debug("rebalance: skipped, %zu cells have no input rate yet", vw.warming);
        ts_orch_view_free(&vw);
        return;
    }
    for (size_t i = 0; i < vw.nw; i++) {
        if (vw.w[i].eligible && !vw.fresh[i]) {
            ts_debug("rebalance: skipped, no recent heartbeat from %s", vw.w[i].id);
            ts_orch_view_free(&vw);
            return;
        }
    }
    ts_balance_move_t mv;
    ts_balance_eval(&o->balance, &vw.v, now, &mv);
    if (mv.kind == TS_BALANCE_NONE) {
        ts_debug("rebalance: no move: %s", mv.why);
        ts_orch_view_free(&vw);
        return;
    }
    char key[TS_CELL_STR_MAX], reply[512];
    const ts_balance_cell_t *c = &vw.c[mv.cell];
    const char *from = vw.w[mv.from].id, *to = vw.w[mv.to].id;
    ts_cell_format(&c->cell, key, sizeof key);
    const ts_balance_worker_t *fw = &vw.w[mv.from], *tw = &vw.w[mv.to];
    ts_info(
        "rebalance (%s): moving cell %s (load %.3f: %.0f entities, %.0f inputs/s) from %s (load %.3f: %zu cells, "
        "%.0f entities, %.0f inputs/s, tick p99 %.1f ms) to %s (load %.3f: %zu cells, %.0f entities, %.0f "
        "inputs/s, tick p99 %.1f ms), mean load %.3f, %s; expected %.3f / %.3f after",
        kind_name(mv.kind), key, mv.cell_load, c->entities, c->inputs_per_s, from, mv.from_load, fw->ncells,
        fw->entities, fw->inputs_per_s, fw->tick_p99_ms, to, mv.to_load, tw->ncells, tw->entities, tw->inputs_per_s,
        tw->tick_p99_ms, mv.mean_load, mv.adjacent ? "adjacent to its cells" : "not adjacent",
        mv.from_load - mv.cell_load, mv.to_load + mv.cell_load);
    ts_balance_moved(&o->balance, now);
    if (ts_orch_handover(o, &c->cell, to, TS_HO_REBALANCE, reply, sizeof reply) == TS_OK)
        ts_stats_count(&o->stats, TS_STAT_REBALANCE_MOVE);
    else
        ts_warn("rebalance: moving cell %s from %s to %s failed: %s", key, from, to, reply);
    ts_orch_view_free(&vw);
}
