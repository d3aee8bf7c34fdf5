/* Crash recovery: every SWEEP_US the leader re-reads the registry and checks
 * the liveness key of every cell owner; each cell whose owner is not alive is
 * compare-and-set (epoch + 1) to the least-loaded live, non-draining worker,
 * preferring one that owns a neighbouring cell, and announced. The new owner
 * loads the cell's checkpoint and replays its input stream.
 *
 * Invariants: an owner this process never saw alive keeps its cells for
 * orch.recovery_grace_ms after the lead was gained (a worker that is still
 * starting is not robbed); every move is a CAS on the epoch the snapshot
 * showed, so a cell that changed meanwhile is left alone until the next
 * sweep; a draining worker that is gone leaves the draining set. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define SWEEP_US 250000ULL
#define NO_TARGET_LOG_US 5000000ULL

void ts_recovery_seen(ts_orch_t *o, const char *id)
{
    if (ts_recovery_was_seen(o, id))
        return;
    if (o->nseen == o->cap_seen) {
        size_t cap = o->cap_seen ? o->cap_seen * 2 : 8;
        char(*v)[TS_WORKER_ID_MAX] = realloc(o->seen, cap * sizeof *v);
        if (!v)
            return;
        o->seen = v;
        o->cap_seen = cap;
    }
    ts_strlcpy(o->seen[o->nseen++], id, TS_WORKER_ID_MAX);
}

bool ts_recovery_was_seen(const ts_orch_t *o, const char *id)
{
    for (size_t i = 0; i < o->nseen; i++) {
        if (strcmp(o->seen[i], id) == 0)
            return true;
    }
    ts_worker_info_t info;
    return ts_workers_get(o->workers, id, &info);
}

void ts_recovery_free(ts_orch_t *o)
{
    free(o->seen);
    o->seen = NULL;
    o->nseen = o->cap_seen = 0;
}

/* Milliseconds since the dead worker's last heartbeat, or 0 if unknown. */
static uint64_t since_last_heartbeat_ms(ts_orch_t *o, const char *id, uint64_t now)
{
    ts_worker_info_t info;
    if (!ts_workers_get(o->workers, id, &info) || info.last_hb_us == 0 || now < info.last_hb_us)
        return 0;
    return (now - info.last_hb_us) / 1000;
}

/* Moves every cell of a dead owner it can; false when the registry failed. */
static bool recover_cells(ts_orch_t *o, ts_orch_view_t *vw, uint64_t now)
{
    static uint64_t next_no_target_log;
    for (size_t i = 0; i < vw->nc; i++) {
        int owner = vw->c[i].owner;
        const char *owner_id = owner >= 0 ? vw->w[owner].id : "";
        if (o->cells[i].state != TS_CELL_ACTIVE || (owner >= 0 && vw->alive[owner]))
            continue;
        if (owner < 0)
            owner_id = o->cells[i].owner;
        if (owner_id[0] && !ts_recovery_was_seen(o, owner_id) &&
            now - o->leading_since_us < (uint64_t)o->cfg->orch_recovery_grace_ms * 1000)
            continue;
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&vw->c[i].cell, key, sizeof key);
        int target = ts_balance_target(&vw->v, i, owner);
        if (target < 0) {
            if (now >= next_no_target_log) {
                ts_warn("cell %s: owner %s is dead and no live worker can take it", key,
                        owner_id[0] ? owner_id : "-");
                next_no_target_log = now + NO_TARGET_LOG_US;
            }
            continue;
        }
        ts_cell_entry_t out;
        uint64_t epoch = o->cells[i].epoch;
        ts_status_t st = ts_orch_cas(o, &vw->c[i].cell, epoch, vw->w[target].id, &out);
        if (st == TS_ERR_CONFLICT)
            continue;
        if (st != TS_OK)
            return false;
        uint64_t ms = since_last_heartbeat_ms(o, owner_id, now);
        ts_info("recovered cell %s from dead %s to %s (epoch %" PRIu64 "), %" PRIu64 " ms after its last heartbeat",
                key, owner_id[0] ? owner_id : "-", vw->w[target].id, out.epoch, ms);
        ts_stats_recovered(&o->stats, ms);
        ts_balance_assign(&vw->v, i, target);
    }
    return true;
}

void ts_recovery_poll(ts_orch_t *o)
{
    uint64_t now = ts_mono_us();
    if (now < o->next_sweep_us)
        return;
    o->next_sweep_us = now + SWEEP_US;
    if (!ts_orch_refresh_cells(o))
        return;
    ts_orch_view_t vw;
    if (ts_orch_view_build(o, &vw) != TS_OK)
        return;
    for (size_t i = 0; i < vw.nw; i++) {
        if (vw.alive[i]) {
            ts_recovery_seen(o, vw.w[i].id);
        } else if (ts_ctl_is_draining(o->ctl, vw.w[i].id)) {
            ts_ctl_drained(o->ctl, vw.w[i].id);
        }
    }
    /* the view's cells are o->cells in the same order */
    if (vw.nc == o->ncells)
        recover_cells(o, &vw, now);
    ts_orch_view_free(&vw);
}
