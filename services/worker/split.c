/* Cells at any depth on the worker side: executing a split or a merge, and
 * the forwarding mode of split and retired cells.
 *
 * The orchestrator decides a split or a merge with one compare-and-set in
 * the registry and never asks the worker anything; the owner learns it from
 * the RegistryChange (or a full read) like any other change:
 *
 *   split of P   P becomes `split` (epoch + 1, still ours) and its four
 *                children `active` (ours, new epochs). The children are bound
 *                like any cell we are given; P stays bound, now forwarding.
 *   merge of P   the children become `retired` (epoch + 1, still ours) and P
 *                `active` (ours, epoch + 1). P is bound (or taken over in
 *                place if we were its forwarder); the children stay bound,
 *                forwarding.
 *
 * A forwarding cell (split or retired) still steps the entities it holds
 * (they keep moving until they are gone), but at every tick boundary where
 * it holds an entity that is not on its way yet, it
 * queues a Departure for it to the deepest live cell containing its
 * position (ts_celltree_locate): the Departure goes into the cell's own
 * input stream and the entity leaves when it is consumed, through the same
 * Departure -> Transfer machinery as a border crossing. So every input
 * ordered before the Departure is applied in the old cell and every input
 * after it follows the departed record, and a new owner replaying the
 * stream after a crash takes the same decisions: a split or merge that was
 * under way completes on whoever owns the cell next. Whatever reaches a
 * forwarding cell later goes the same way: a Transfer or a Join creates the
 * entity, which departs at the next tick; an input for a departed entity is
 * forwarded by its departed record, and those records do not expire while
 * the cell forwards (an empty cell is not stepped). EntityLeft{to} in the cell's
 * state, sent once each Transfer is stored, re-routes gateways.
 *
 * A live cell's own border crossings go to the deepest live cell at the
 * entity's position too (ts_zone_step picks the same-depth cell; this file
 * corrects it from the cell tree), so an entity walking out of a child
 * lands in an unsplit neighbour root or in a grandchild alike.
 *
 * Taking a cell over in place: when the registry moves a cell we hold from
 * or to split/retired at exactly epoch + 1 with us as owner, nobody else
 * owned it in between, so the zone is exact: only its epoch and mode change
 * (no rebinding, no replay).
 *
 * Costs: a forwarding cell scans its entities only when something changed
 * in it (its zone's modification counter moved) or a destination was not
 * known yet, and writes a checkpoint only when something arrived since the
 * last one, so an emptied forwarder costs a keyframe of nothing a second;
 * correcting a live cell's departures is one O(depth) look-up per
 * departure. Tick thread only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "tessera/log.h"
#include "tessera/util.h"
#include "worker_internal.h"

bool ts_split_holds(ts_cell_state_t s)
{
    return s == TS_CELL_ACTIVE || s == TS_CELL_SPLIT || s == TS_CELL_RETIRED;
}

static bool forwarding_state(ts_cell_state_t s)
{
    return s == TS_CELL_SPLIT || s == TS_CELL_RETIRED;
}

void ts_split_set_mode(ts_worker_t *w, ts_binding_t *b, const ts_cell_entry_t *e, bool in_place)
{
    bool fwd = forwarding_state(e->state);
    if (b->mode_set && e->state == b->reg_state) return;
    bool was = b->mode_set && b->forwarding;
    ts_cell_state_t before = b->reg_state;
    b->mode_set = true;
    b->reg_state = e->state;
    b->forwarding = fwd;
    ts_zone_t *z = b->zone;
    if (fwd) {
        b->fwd_scan = true;
        b->fwd_seen_forwarded = z->stats.forwarded;
        b->fwd_phase = 0;
        b->fwd_moved = 0;
        b->fwd_work_ns = 0;
        b->fwd_in_place = in_place;
        if (in_place || ts_zone_entities(z) > 0 || b->catching_up) {
            /* a split or merge to execute here, or maybe one a dead owner
             * left half done (its replay tells) */
            b->fwd_phase = 1;
            b->fwd_start_us = ts_mono_us();
        }
        ts_info("cell %s: %s at epoch %" PRIu64 "; forwarding (%zu entities to move on)", z->key,
                e->state == TS_CELL_SPLIT ? "split" : "retired", e->epoch, ts_zone_entities(z));
    } else if (was) {
        ts_info("cell %s: %s -> %s at epoch %" PRIu64 "; live again", z->key, ts_cell_state_str(before),
                ts_cell_state_str(e->state), e->epoch);
        if (before == TS_CELL_SPLIT) {
            w->stats.merges++;
            /* the game module's cell state: the parent takes its first
             * child's (if that child is bound here; else it keeps its own) */
            ts_cell_t kids[4];
            bool have = ts_cell_children(&z->cell, kids) == TS_OK;
            ts_binding_t *k0 = have ? ts_cellmap_get(&w->by_cell, &kids[0]) : NULL;
            int64_t own[TS_GAME_COUNTERS];
            memcpy(own, z->game.counters, sizeof(own));
            if (k0) z->game = k0->zone->game;
            /* its world counters stay its own: the children's come through
             * its input stream (move_counters) */
            memcpy(z->game.counters, own, sizeof(own));
        }
    }
}

bool ts_split_take_epoch(ts_worker_t *w, ts_binding_t *b, const ts_cell_entry_t *e)
{
    if (b->state != TS_BIND_ACTIVE || e->epoch != b->zone->epoch + 1) return false;
    /* a plain active -> active change of epoch is somebody else's doing */
    if (!forwarding_state(e->state) && !b->forwarding) return false;
    b->zone->epoch = e->epoch;
    w->bindings_changed++;
    ts_split_set_mode(w, b, e, true);
    /* its ticks from here on run in another mode: a replay starts from a
     * checkpoint in it (the tick marks before do not say the mode) */
    ts_marks_release(w, b);
    b->ckpt_soon = true;
    return true;
}

/* The live cell an entity at (x, y) belongs in; NULL if the tree does not
 * know it yet (a RegistryChange still on its way) or it is `self`. */
static const ts_cell_entry_t *destination(const ts_worker_t *w, const ts_zone_t *z, double x, double y)
{
    const ts_cell_entry_t *to = w->tree ? ts_celltree_locate(w->tree, x, y) : NULL;
    if (!to || ts_cell_eq(&to->cell, &z->cell)) return NULL;
    return to;
}

/* Queues a Departure for every entity of a forwarding cell that is not on
 * its way yet. */
static void move_on(ts_worker_t *w, ts_binding_t *b)
{
    uint64_t t0 = ts_mono_ns();
    ts_zone_t *z = b->zone;
    size_t queued = 0, waiting = 0;
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
        ts_entity_t *e = v;
        if (e->departing) continue;
        const ts_cell_entry_t *to = destination(w, z, e->x, e->y);
        if (!to || !ts_zone_queue_departure(z, e, &to->cell)) {
            waiting++;
            continue;
        }
        queued++;
    }
    b->fwd_scan = waiting > 0; /* look again next tick */
    b->fwd_mod = z->mod_counter;
    if (queued && b->fwd_phase != 1) {
        /* strays (a Join, a Transfer from a neighbour that had not seen the
         * split) are forwarded, not counted as a split or merge */
        w->stats.fwd_entities += queued;
    } else {
        b->fwd_moved += queued;
    }
    if (b->fwd_phase == 1) b->fwd_work_ns += ts_mono_ns() - t0;
    if (waiting && !b->fwd_waiting_logged) {
        b->fwd_waiting_logged = true;
        ts_info("cell %s: %zu entities wait for the registry to name the live cell at their position", z->key,
                waiting);
    }
}

/* No entity left, no Departure queued, every Transfer stored. */
static bool emptied(const ts_zone_t *z)
{
    if (ts_zone_entities(z) > 0 || z->ndeps > 0) return false;
    for (size_t i = 0; i < z->nout; i++)
        if (z->out[i].ntransfers > 0) return false;
    return true;
}

/* What the last checkpoint written of a forwarding cell holds. */
static void note_checkpoint(ts_binding_t *b)
{
    const ts_zone_t *z = b->zone;
    b->fwd_ckpt_valid = z->nout == 0 && z->ndeps == 0;
    b->fwd_ckpt_seq = z->last_applied_seq;
    b->fwd_ckpt_mod = z->mod_counter;
}

bool ts_split_checkpoint_due(ts_binding_t *b)
{
    if (!b->forwarding) return true;
    const ts_zone_t *z = b->zone;
    if (b->fwd_ckpt_valid && z->last_applied_seq == b->fwd_ckpt_seq && z->mod_counter == b->fwd_ckpt_mod &&
        z->nout == 0 && z->ndeps == 0)
        return false; /* nothing arrived since: the last one still says it all */
    note_checkpoint(b);
    return true;
}

static void finish(ts_worker_t *w, ts_binding_t *b)
{
    ts_zone_t *z = b->zone;
    double ms = (double)(ts_mono_us() - b->fwd_start_us) / 1e3;
    double work_ms = (double)b->fwd_work_ns / 1e6;
    bool split = b->reg_state == TS_CELL_SPLIT;
    b->fwd_phase = 2;
    if (b->fwd_moved == 0 && !b->fwd_in_place) return; /* recovered after its split or merge was done */
    ts_worker_metrics_split(split, ms / 1e3, work_ms / 1e3);
    if (split)
        w->stats.splits++;
    else
        w->stats.merged_cells++;
    ts_info("cell %s: %s done%s: %zu entities moved to %s in %.2f ms (tick boundary work %.3f ms); "
            "forwarding what still arrives",
            z->key, split ? "split" : "merge",
            b->fwd_in_place ? "" : " (completed after taking the cell over)", b->fwd_moved,
            split ? "its children" : "the live cell", ms, work_ms);
    /* the forwarding state (departed records, nothing else) survives a crash */
    ts_worker_publish_checkpoint(w, z);
    note_checkpoint(b);
}

/* A live cell's departures queued by this tick's step (from index `from`)
 * go to the deepest live cell at the entity's position. */
static void route_departures(ts_worker_t *w, ts_zone_t *z, size_t from)
{
    for (size_t i = from; i < z->ndeps; i++) {
        ts_departure_t *d = &z->deps[i];
        const ts_entity_t *e = ts_map_get(&z->entities, d->entity);
        const ts_cell_entry_t *to = e ? destination(w, z, e->x, e->y) : NULL;
        if (to) d->to = to->cell;
    }
}

/* A forwarding cell's world counters go to the live cell that takes its
 * place (a split cell's to child quadrant 0, a retired cell's to its
 * parent), through a marker in its own input stream: the counters become 0
 * where the marker is applied (by whoever owns the cell then, live or in a
 * replay) and reach the other cell's input stream under a message id
 * derived from the marker's stream seq (zone.h: ts_zone_queue_counter_move).
 * So each value is in exactly one cell's state at every input position,
 * whoever crashes when. A marker is queued once the cell has caught up with
 * its input and holds counters not all 0 (again if it applies something
 * that adds to them later). */
static void move_counters(ts_binding_t *b)
{
    ts_zone_t *z = b->zone;
    if (b->catching_up || z->counter_move_queued || ts_zone_counters_len(z) == 0) return;
    ts_cell_t to, kids[4];
    if (b->reg_state == TS_CELL_SPLIT) {
        if (ts_cell_children(&z->cell, kids) != TS_OK) return;
        to = kids[0];
    } else if (ts_cell_parent(&z->cell, &to) != TS_OK) {
        return;
    }
    if (!ts_zone_queue_counter_move(z, &to))
        ts_error("cell %s: out of memory queuing its world counters' move", z->key);
}

void ts_split_step(ts_worker_t *w, ts_binding_t *b, double dt)
{
    ts_zone_t *z = b->zone;
    /* a forwarding cell steps only while it still holds entities: they keep
     * moving until their Departure is consumed (no freeze), and an emptied
     * forwarder's departed records never expire */
    if (!b->forwarding || ts_zone_entities(z) > 0) {
        size_t from = z->ndeps;
        ts_zone_step(z, dt, w->tick);
        if (z->ndeps > from) route_departures(w, z, from);
    }
    if (!b->forwarding) return;
    move_counters(b);
    w->stats.fwd_inputs += z->stats.forwarded - b->fwd_seen_forwarded;
    b->fwd_seen_forwarded = z->stats.forwarded;
    if (ts_zone_entities(z) > 0 && (b->fwd_scan || z->mod_counter != b->fwd_mod)) move_on(w, b);
    if (b->fwd_phase == 1 && emptied(z)) finish(w, b);
}
