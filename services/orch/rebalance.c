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

/* Most moves in one plan; orch.max_handovers of them run at once, the rest
 * wait in the handover queue. */
#define PLAN_MAX 1024
#include "tessera/log.h"
#include "tessera/util.h"

static void rebalance_done(ts_orch_t *o, bool moved);

void ts_rebalance_init(ts_orch_t *o)
{
    ts_balance_cfg_t cfg = {
        .threshold = o->cfg->orch_rebalance_threshold,
        .hysteresis = (int)o->cfg->orch_rebalance_hysteresis,
        .cooldown_us = (uint64_t)o->cfg->orch_rebalance_cooldown_ms * 1000,
    };
    ts_balance_init(&o->balance, &cfg);
    o->next_balance_us = 0;
    o->ho_done[TS_HO_REBALANCE] = rebalance_done;
}

static const char *kind_name(ts_balance_kind_t k)
{
    return k == TS_BALANCE_EMPTY ? "empty worker" : "load";
}

/* A rebalancing handover finished (o->ho_done). */
static void rebalance_done(ts_orch_t *o, bool moved)
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
    if (ts_draining_any(o->drain)) {
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
        if (ts_orch_handover(o, &c->cell, tw->id, TS_HO_REBALANCE, NULL) != TS_OK) rebalance_done(o, false);
    }
    free(plan);
    ts_orch_view_free(&vw);
}
