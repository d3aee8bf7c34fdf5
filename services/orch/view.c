/* The cluster as the placement policy (balance.c) sees it: every known
 * worker (heartbeats, liveness, cell owners, the draining set) with its
 * eligibility and load, and every cell of the registry copy with its
 * heartbeat load. Built from memory only — no Redis call — by the
 * rebalancer, crash recovery and the drain. */
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/util.h"

/* A worker whose heartbeat shows this many missed ticks since its previous
 * one is overloaded (one is a hiccup, two are a trend). */
#define OVERLOAD_MISSED 2

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
    size_t ndrain = ts_draining_copy(o->drain, NULL, 0);
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
    size_t nd = ts_draining_copy(o->drain, draining, ndrain);
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
        vw->w[i].eligible = vw->alive[i] && !says_draining && !ts_draining_has(o->drain, vw->w[i].id);
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
