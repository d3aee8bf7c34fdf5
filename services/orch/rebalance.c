/* Rebalancing: every orch.rebalance_interval_ms the leader builds a view of
 * the cluster (who is alive, draining, overloaded, what each cell weighs
 * according to the heartbeats) from what it holds in memory — the registry
 * copy, the last liveness poll, the heartbeats: no Redis call — asks the
 * policy in balance.c for a plan (as many moves as the imbalance needs, up
 * to PLAN_MAX) and queues them as live handovers, orch.max_handovers of
 * which run at once. The next evaluation waits until the plan is finished.
 * Every decision that moves a cell is logged with the scores behind it; the
 * reasons for not moving at debug level.
 *
 * Invariants: nothing moves while a drain is in progress, while an
 * eligible worker's heartbeat is missing or while a cell's input rate is not
 * measured yet (its load would read as zero); a failed move still starts the
 * cooldown, so a broken worker is not hammered with handovers; a worker
 * whose heartbeat shows overload (tick p99 over the tick budget, missed
 * ticks) sheds cells here — it is never "recovered" while its liveness key
 * is fresh. */
#include <stdlib.h>
#include <string.h>

#include "orch.h"

#define OVERLOAD_MISSED 2
/* Most moves in one plan; orch.max_handovers of them run at once, the rest
 * wait in the handover queue. */
#define PLAN_MAX 1024
#include "tessera/log.h"
#include "tessera/util.h"

static int add_worker(ts_orch_view_t *vw, size_t cap, const char *id)
{
    for (size_t i = 0; i < vw->nw; i++) {
        if (strcmp(vw->w[i].id, id) == 0) return (int)i;
    }
    if (vw->nw == cap || !ts_worker_id_valid(id)) return -1;
    ts_balance_worker_t *w = &vw->w[vw->nw];
    memset(w, 0, sizeof *w);
    ts_strlcpy(w->id, id, sizeof w->id);
    return (int)vw->nw++;
}

int ts_orch_view_worker(const ts_orch_view_t *vw, const char *id)
{
    for (size_t i = 0; i < vw->nw; i++) {
        if (strcmp(vw->w[i].id, id) == 0) return (int)i;
    }
    return -1;
}

ts_status_t ts_orch_view_build(ts_orch_t *o, ts_orch_view_t *vw)
{
    memset(vw, 0, sizeof *vw);
    uint64_t now = ts_mono_us();
    size_t nhb = ts_workers_snapshot(o->workers, NULL, 0);
    size_t ndrain = ts_ctl_draining_copy(o->ctl, NULL, 0);
    size_t cap = nhb + o->live.n + ndrain + o->ncells + 1;
    ts_worker_info_t *hbs = calloc(nhb + 1, sizeof *hbs);
    char(*draining)[TS_WORKER_ID_MAX] = calloc(ndrain + 1, sizeof *draining);
    bool *overloaded = calloc(cap, sizeof *overloaded);
    vw->w = calloc(cap, sizeof *vw->w);
    vw->alive = calloc(cap, sizeof *vw->alive);
    vw->fresh = calloc(cap, sizeof *vw->fresh);
    vw->c = calloc(o->ncells + 1, sizeof *vw->c);
    ts_status_t st = TS_OK;
    if (!hbs || !draining || !overloaded || !vw->w || !vw->alive || !vw->fresh || !vw->c) {
        st = TS_ERR_NOMEM;
        goto cleanup;
    }
    double budget = 1000.0 / (double)(o->cfg->worker_tick_hz > 0 ? o->cfg->worker_tick_hz : 20);
    size_t m = ts_workers_snapshot(o->workers, hbs, nhb);
    nhb = m < nhb ? m : nhb;
    for (size_t i = 0; i < nhb; i++) {
        int k = add_worker(vw, cap, hbs[i].id);
        if (k < 0) continue;
        vw->fresh[k] = hbs[i].alive;
        vw->w[k].tick_p99_ms = hbs[i].alive ? hbs[i].tick_p99_ms : 0;
        /* overloaded: ticks over budget, or ticks missed since its previous
         * heartbeat (one is a hiccup, two are a trend) */
        overloaded[k] =
            hbs[i].alive && (hbs[i].tick_p99_ms > budget || hbs[i].missed_recent >= OVERLOAD_MISSED);
    }
    for (size_t i = 0; i < o->live.n; i++)
        add_worker(vw, cap, o->live.v[i].id);
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
        ts_worker_info_t info;
        bool says_draining = ts_workers_get(o->workers, vw->w[i].id, &info) && info.alive && info.draining;
        vw->alive[i] = ts_liveness_alive(&o->live, vw->w[i].id);
        vw->w[i].eligible = vw->alive[i] && !says_draining && !ts_ctl_is_draining(o->ctl, vw->w[i].id);
        vw->w[i].overloaded = overloaded[i];
    }
    st = ts_balance_view_init(&vw->v, vw->w, vw->nw, vw->c, vw->nc, budget);

cleanup:
    free(hbs);
    free(draining);
    free(overloaded);
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
    if (!vw) return;
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

void ts_rebalance_done(ts_orch_t *o, bool moved)
{
    (void)moved;
    if (o->rebalance_pending > 0 && --o->rebalance_pending == 0)
        ts_balance_moved(&o->balance, ts_mono_us()); /* the cooldown counts from the end of the plan */
}

void ts_rebalance_poll(ts_orch_t *o)
{
    if (!o->cfg->orch_rebalance) return;
    uint64_t now = ts_mono_us();
    if (now < o->next_balance_us || o->rebalance_pending > 0) return;
    o->next_balance_us = now + (uint64_t)o->cfg->orch_rebalance_interval_ms * 1000;
    if (ts_ctl_draining_any(o->ctl)) {
        ts_debug("rebalance: skipped while a worker drains");
        return;
    }
    if (o->cells_stale) return;
    ts_orch_view_t vw;
    if (ts_orch_view_build(o, &vw) != TS_OK) return;
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
    size_t max = PLAN_MAX;
    ts_balance_move_t *plan = calloc(max, sizeof *plan), none;
    size_t n = plan ? ts_balance_plan(&o->balance, &vw.v, now, plan, max, &none) : 0;
    if (n == 0) {
        if (plan) ts_debug("rebalance: no move: %s", none.why);
        free(plan);
        ts_orch_view_free(&vw);
        return;
    }
    ts_balance_moved(&o->balance, now);
    for (size_t k = 0; k < n; k++) {
        const ts_balance_move_t *mv = &plan[k];
        char key[TS_CELL_STR_MAX];
        const ts_balance_cell_t *c = &vw.c[mv->cell];
        const ts_balance_worker_t *fw = &vw.w[mv->from], *tw = &vw.w[mv->to];
        ts_cell_format(&c->cell, key, sizeof key);
        ts_info("rebalance (%s, move %zu of %zu): moving cell %s (load %.3f: %.0f entities, %.0f inputs/s) "
                "from %s "
                "(load %.3f%s) to %s (load %.3f), mean load %.3f, %s; expected %.3f / %.3f after",
                kind_name(mv->kind), k + 1, n, key, mv->cell_load, c->entities, c->inputs_per_s, fw->id,
                mv->from_load, fw->overloaded ? ", overloaded" : "", tw->id, mv->to_load, mv->mean_load,
                mv->adjacent ? "adjacent to its cells" : "not adjacent", mv->from_load - mv->cell_load,
                mv->to_load + mv->cell_load);
        o->rebalance_pending++;
        if (ts_orch_handover(o, &c->cell, tw->id, TS_HO_REBALANCE, NULL) != TS_OK)
            ts_rebalance_done(o, false);
    }
    free(plan);
    ts_orch_view_free(&vw);
}
