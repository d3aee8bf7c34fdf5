/* Crash recovery: every TS_ORCH_SWEEP_US the leader reads, in one pipelined
 * round trip, the liveness token of every worker it knows of, the world's
 * registry version and the known worker ids. Then:
 *
 *   - a version it did not produce makes it read the registry copy again;
 *   - a worker whose token changed (from one non-empty token to another) was
 *     replaced: the cells its id held belong to the previous incarnation and
 *     are marked for recovery although the id is alive;
 *   - each cell whose owner is not alive, or that a replaced incarnation
 *     held, at any depth and in any state (a split or retired cell is its
 *     owner's forwarder and stays split or retired), goes (epoch + 1) to
 *     the least-loaded live, non-draining worker, preferring one that owns
 *     a neighbouring cell — all of them with one batch of compare-and-sets
 *     (one round trip), then one RegistryChange per moved cell. The new
 *     owner loads the cell's checkpoint and replays its input stream.
 *
 * Slow is not dead: only the liveness key decides (a worker that refreshes
 * it is alive however late its ticks or heartbeats are); an overloaded
 * worker is the rebalancer's business. And a key that expired while Redis
 * itself was unreachable or slow says nothing about the worker: an owner is
 * only declared dead once the polls have been succeeding quickly for a
 * whole liveness TTL (after an outage, a stalled Redis, or gaining the
 * lead), so every worker had its chance to refresh. Recovery never waits for a handover:
 * a cell being handed over is recovered like any other (the handover's CAS
 * then fails and it aborts).
 *
 * Invariants: an owner this process never saw alive keeps its cells for
 * orch.recovery_grace_ms after the lead was gained (a worker that is still
 * starting is not robbed); every move is a CAS on the epoch the copy showed,
 * so a cell that changed meanwhile is left alone until the copy is read
 * again; a draining worker that is gone leaves the draining set. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define NO_TARGET_LOG_US 5000000ULL
/* A liveness poll slower than the TTL / SLOW_POLL_DIV means Redis is
 * struggling. */
#define SLOW_POLL_DIV 3
/* Batches up to this size log one line per cell; larger ones a summary. */
#define LOG_EACH_MAX 16

bool ts_recovery_was_seen(ts_orch_t *o, const char *id)
{
    ts_live_t *l = ts_liveness_get(&o->live, id);
    if (l && l->seen) return true;
    ts_worker_info_t info;
    return ts_workers_get(o->workers, id, &info);
}

/* Milliseconds since the dead worker's last heartbeat, or 0 if unknown. */
static uint64_t since_last_heartbeat_ms(ts_orch_t *o, const char *id, uint64_t now)
{
    ts_worker_info_t info;
    if (!ts_workers_get(o->workers, id, &info) || info.last_hb_us == 0 || now < info.last_hb_us) return 0;
    return (now - info.last_hb_us) / 1000;
}

/* Every id worth polling is in the liveness table: heartbeat senders and
 * draining workers (owners and known ids are added as they are learnt). */
static void learn_ids(ts_orch_t *o)
{
    size_t n = ts_workers_snapshot(o->workers, NULL, 0);
    ts_worker_info_t *hbs = calloc(n + 1, sizeof *hbs);
    if (hbs) {
        size_t m = ts_workers_snapshot(o->workers, hbs, n);
        for (size_t i = 0; i < m && i < n; i++)
            ts_liveness_add(&o->live, hbs[i].id);
        free(hbs);
    }
    size_t nd = ts_draining_copy(o->drain, NULL, 0);
    char(*d)[TS_WORKER_ID_MAX] = calloc(nd + 1, sizeof *d);
    if (d) {
        size_t m = ts_draining_copy(o->drain, d, nd);
        for (size_t i = 0; i < m && i < nd; i++)
            ts_liveness_add(&o->live, d[i]);
        free(d);
    }
}

/* The poll; false when Redis failed. */
static bool poll_liveness(ts_orch_t *o)
{
    learn_ids(o);
    size_t n = o->live.n;
    const char **ids = calloc(n + 1, sizeof *ids);
    char(*tokens)[TS_WORKER_TOKEN_MAX] = calloc(n + 1, sizeof *tokens);
    size_t *replaced = calloc(n + 1, sizeof *replaced);
    bool ok = ids && tokens && replaced;
    for (size_t i = 0; ok && i < n; i++)
        ids[i] = o->live.v[i].id;
    uint64_t version = 0;
    char **known = NULL;
    size_t nknown = 0;
    uint64_t t0 = ts_mono_us();
    ts_status_t st =
        ok ? ts_registry_liveness_poll(o->reg, o->world, ids, n, tokens, &version, &known, &nknown)
           : TS_ERR_NOMEM;
    uint64_t took_us = ts_mono_us() - t0;
    /* a reconnect since the last poll means Redis was away, however briefly
     * (a restart between two polls loses no poll but may lose the last
     * second of liveness writes) */
    uint64_t connects = ts_registry_connects(o->reg);
    bool reconnected = connects != o->reg_connects;
    o->reg_connects = connects;
    if (st != TS_OK || reconnected || took_us > (uint64_t)o->cfg->orch_hb_ttl_ms * 1000 / SLOW_POLL_DIV)
        o->healthy_since_us = 0; /* the keys may have expired for Redis's sake, not the workers' */
    else if (o->healthy_since_us == 0)
        o->healthy_since_us = ts_mono_us();
    if (st != TS_OK) {
        if (st != TS_ERR_NOMEM) ts_orch_registry_broken(o, st);
        free(ids);
        free(tokens);
        free(replaced);
        return false;
    }
    /* the old tokens, for the log, before apply overwrites them */
    char(*before)[TS_WORKER_TOKEN_MAX] = calloc(n + 1, sizeof *before);
    for (size_t i = 0; before && i < n; i++)
        memcpy(before[i], o->live.v[i].last, TS_WORKER_TOKEN_MAX);
    size_t nrep =
        ts_liveness_apply(&o->live, ids, (const char(*)[TS_WORKER_TOKEN_MAX])tokens, n, replaced, n);
    for (size_t i = 0; i < nknown; i++) {
        if (ts_worker_id_valid(known[i])) ts_liveness_add(&o->live, known[i]);
    }
    ts_registry_free_list(known, nknown);
    if (version != o->version) o->cells_stale = true;
    if (o->cells_stale && !ts_orch_refresh_cells(o)) {
        free(ids);
        free(tokens);
        free(replaced);
        free(before);
        return false;
    }
    for (size_t r = 0; r < nrep; r++) {
        const ts_live_t *l = &o->live.v[replaced[r]];
        size_t marked = 0;
        for (size_t i = 0; i < o->ncells; i++) {
            if (strcmp(o->cells[i].owner, l->id) == 0) {
                o->orphan[i] = true;
                marked++;
            }
        }
        ts_warn("worker %s was replaced by another process (instance %s -> %s): its %zu cells are recovered "
                "at a higher epoch",
                l->id, before ? before[replaced[r]] : "?", l->token, marked);
    }
    free(ids);
    free(tokens);
    free(replaced);
    free(before);
    return true;
}

/* Whether cell i must be recovered now. */
static bool needs_recovery(ts_orch_t *o, size_t i, uint64_t now)
{
    const ts_cell_entry_t *e = &o->cells[i];
    /* every state has an owner: split and retired cells are forwarders */
    if (o->orphan[i]) return true;
    if (o->healthy_since_us == 0 || now - o->healthy_since_us < (uint64_t)o->cfg->orch_hb_ttl_ms * 1000)
        return false; /* Redis was away or slow within a TTL: nobody is dead yet */
    if (e->owner[0]) {
        ts_live_t *l = ts_liveness_get(&o->live, e->owner);
        if (!l || !l->polled || l->token[0]) return false; /* alive, or not polled yet */
        if (!l->seen && now - o->leading_since_us < (uint64_t)o->cfg->orch_recovery_grace_ms * 1000)
            return false;
    }
    return true;
}

/* Whether any cell may need recovery (cheap: per-owner counts). */
static bool any_candidates(ts_orch_t *o)
{
    for (size_t i = 0; i < o->live.n; i++) {
        const ts_live_t *l = &o->live.v[i];
        if (l->ncells > 0 && l->polled && !l->token[0]) return true;
    }
    for (size_t i = 0; i < o->ncells; i++) {
        if (o->orphan[i]) return true;
    }
    return false;
}

static void recover(ts_orch_t *o, uint64_t t0, uint64_t rt0)
{
    static uint64_t next_no_target_log;
    uint64_t now = ts_mono_us();
    if (!any_candidates(o)) return;
    ts_orch_view_t vw;
    if (ts_orch_view_build(o, &vw) != TS_OK) return;
    uint64_t t_view = ts_mono_us();
    ts_registry_cas_t *ops = calloc(vw.nc + 1, sizeof *ops);
    const char **from = calloc(vw.nc + 1, sizeof *from);
    size_t nops = 0;
    for (size_t i = 0; ops && from && i < vw.nc && i < o->ncells; i++) {
        if (!needs_recovery(o, i, now)) continue;
        int owner = ts_orch_view_worker(&vw, o->cells[i].owner); /* forwarders have no owner in the view */
        int target = ts_balance_target(&vw.v, i, owner);
        if (target < 0 && o->orphan[i] && owner >= 0 && vw.w[owner].eligible)
            target = owner; /* the only live worker is the new incarnation: it takes them at epoch + 1 */
        if (target < 0) {
            if (now >= next_no_target_log) {
                char key[TS_CELL_STR_MAX];
                ts_cell_format(&o->cells[i].cell, key, sizeof key);
                ts_warn("cell %s: owner %s is dead and no live worker can take it", key,
                        o->cells[i].owner[0] ? o->cells[i].owner : "-");
                next_no_target_log = now + NO_TARGET_LOG_US;
            }
            continue;
        }
        ts_registry_cas_t *op = &ops[nops];
        op->cell = o->cells[i].cell;
        op->expected_epoch = o->cells[i].epoch;
        ts_strlcpy(op->new_owner, vw.w[target].id, sizeof op->new_owner);
        /* a forwarder (split, retired) stays one with its new owner */
        op->new_state = o->cells[i].state == TS_CELL_SPLIT || o->cells[i].state == TS_CELL_RETIRED
                            ? o->cells[i].state
                            : TS_CELL_ACTIVE;
        from[nops] = o->cells[i].owner;
        nops++;
        ts_balance_assign(&vw.v, i, target);
    }
    if (nops == 0) {
        free(ops);
        free(from);
        ts_orch_view_free(&vw);
        return;
    }
    /* the owners' ids, before the copy changes under from[] */
    char(*owners)[TS_WORKER_ID_MAX] = calloc(nops, sizeof *owners);
    for (size_t k = 0; owners && k < nops; k++)
        ts_strlcpy(owners[k], from[k], TS_WORKER_ID_MAX);
    ts_orch_view_free(&vw);
    free(from);
    uint64_t t_plan = ts_mono_us();
    if (!owners || ts_orch_cas_many(o, ops, nops) != TS_OK) {
        free(ops);
        free(owners);
        return;
    }
    size_t moved = 0;
    for (size_t k = 0; k < nops; k++) {
        if (ops[k].result != TS_OK) continue;
        moved++;
        uint64_t ms = since_last_heartbeat_ms(o, owners[k], now);
        ts_stats_recovered(&o->stats, ms);
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&ops[k].cell, key, sizeof key);
        if (nops <= LOG_EACH_MAX)
            ts_info("recovered cell %s from dead %s to %s (epoch %" PRIu64 "), %" PRIu64
                    " ms after its last heartbeat",
                    key, owners[k][0] ? owners[k] : "-", ops[k].new_owner, ops[k].entry.epoch, ms);
        else
            ts_debug("recovered cell %s from dead %s to %s (epoch %" PRIu64 ")", key,
                     owners[k][0] ? owners[k] : "-", ops[k].new_owner, ops[k].entry.epoch);
    }
    uint64_t took_us = ts_mono_us() - t0, rts = ts_registry_round_trips(o->reg) - rt0;
    ts_debug(
        "recovery of %zu cells: poll %.1f ms, view %.1f ms, targets %.1f ms, CAS and announcements %.1f ms",
        nops, (double)(now - t0) / 1000, (double)(t_view - now) / 1000, (double)(t_plan - t_view) / 1000,
        (double)(ts_mono_us() - t_plan) / 1000);
    ts_stats_recovery_batch(&o->stats, moved, took_us, rts);
    if (nops > LOG_EACH_MAX || moved != nops)
        ts_info("recovered %zu of %zu cells in %.1f ms (%" PRIu64 " registry round trips, %" PRIu64
                " ms after the last heartbeat of %s)",
                moved, nops, (double)took_us / 1000, rts, since_last_heartbeat_ms(o, owners[0], now),
                owners[0][0] ? owners[0] : "-");
    free(ops);
    free(owners);
}

void ts_recovery_poll(ts_orch_t *o)
{
    uint64_t now = ts_mono_us();
    if (now < o->next_sweep_us || !o->reg) return;
    o->next_sweep_us = now + TS_ORCH_SWEEP_US;
    uint64_t rt0 = ts_registry_round_trips(o->reg);
    if (!poll_liveness(o) || !o->reg) return;
    for (size_t i = 0; i < o->live.n; i++) {
        const ts_live_t *l = &o->live.v[i];
        if (l->polled && !l->token[0] && ts_draining_has(o->drain, l->id)) {
            char id[TS_WORKER_ID_MAX];
            ts_strlcpy(id, l->id, sizeof id);
            ts_draining_gone(o, id);
        }
    }
    if (o->reg) recover(o, now, rt0);
}
