/* The cells this worker owns: the binding table (by cell and by
 * input context generation, both O(1)), adopting a zone whose input is registered,
 * unbinding, and applying input messages to zones in stream order. Tick
 * thread only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "game_host.h"
#include "metrics.h"
#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

ts_binding_t *ts_worker_find_binding(ts_worker_t *w, const ts_cell_t *c)
{
    return ts_cellmap_get(&w->by_cell, c);
}

const ts_cell_entry_t *ts_worker_find_entry(const ts_worker_t *w, const ts_cell_t *c)
{
    return ts_cellmap_get(&w->view.by_cell, c);
}

static void add_stats(ts_zone_stats_t *dst, const ts_zone_stats_t *s)
{
    dst->applied += s->applied;
    dst->forwarded += s->forwarded;
    dst->duplicates += s->duplicates;
    dst->dropped += s->dropped;
    dst->transfers_in += s->transfers_in;
    dst->transfers_out += s->transfers_out;
    dst->oversized += s->oversized;
    dst->replay_steps += s->replay_steps;
    dst->replay_skipped += s->replay_skipped;
}

void ts_worker_release_sub(ts_worker_t *w, ts_sub_ctx_t *ctx)
{
    (void)w;
    ts_worker_free_ctx(ctx); /* unregistered at once: no round trip */
}

/* A cell that replays its input after a checkpoint waits at most this long
 * for the consumer to say it caught up before it acts anyway. */
#define CATCHUP_MAX_US 5000000ULL

static void apply_msg(ts_worker_t *w, ts_zone_t *z, const ts_inbox_msg_t *m);

static void backlog_free(ts_binding_t *b)
{
    for (size_t i = b->backlog_head; i < b->backlog.n; i++)
        ts_bus_held_free(b->backlog.v[i].msg);
    free(b->backlog.v);
    b->backlog = (ts_inbox_t){0};
    b->backlog_head = 0;
}

/* An applied message goes to the publisher thread to be freed (see
 * ts_publisher_reap); reap_flush hands them over. */
static void reap_msg(ts_worker_t *w, ts_bus_held_t msg)
{
    if (w->nreap == w->cap_reap) {
        size_t ncap = w->cap_reap ? w->cap_reap * 2 : 1024;
        ts_bus_held_t *nv = realloc(w->reap, ncap * sizeof(*nv));
        if (!nv) {
            ts_bus_held_free(msg);
            return;
        }
        w->reap = nv;
        w->cap_reap = ncap;
    }
    w->reap[w->nreap++] = msg;
}

static void reap_flush(ts_worker_t *w)
{
    if (w->nreap == 0) return;
    if (ts_publisher_reap(w, w->reap, w->nreap)) {
        w->reap = NULL; /* the publisher frees the array too */
        w->cap_reap = 0;
    } else {
        for (size_t i = 0; i < w->nreap; i++)
            ts_bus_held_free(w->reap[i]);
    }
    w->nreap = 0;
}

/* Applies m to b's zone, or keeps it in b's backlog while b catches up
 * (ts_worker_replay applies it after the steps due before it). True if
 * kept (the backlog owns it). */
static bool apply_to(ts_worker_t *w, ts_binding_t *b, const ts_inbox_msg_t *m)
{
    ts_marks_took(w, m->msg.stream_seq);
    if (b->catching_up) {
        if (ts_inbox_push(&b->backlog, m)) return true;
        ts_error("cell %s: out of memory keeping its replay backlog; applying seq %" PRIu64
                 " without the steps before it",
                 b->zone->key, m->msg.stream_seq);
        ts_worker_replay_flush(w, b);
    }
    ts_marks_applying(w, b, m->msg.stream_seq);
    apply_msg(w, b->zone, m);
    if (m->msg.pending == 0) b->replayed = true;
    return false;
}

typedef struct {
    ts_worker_t *w;
    ts_binding_t *b;
} replay_ctx_t;

/* One replayed tick: what a live tick's ts_split_step does (the zone's
 * step and the module's on_tick; a forwarding cell moves its entities on),
 * nothing published (the cell is replaying). */
static void replay_step(void *ud, ts_zone_t *z, double dt)
{
    replay_ctx_t *rc = ud;
    (void)z;
    ts_split_step(rc->w, rc->b, dt);
}

/* Applies the first message of b's backlog. */
static void backlog_apply(ts_worker_t *w, ts_binding_t *b)
{
    ts_inbox_msg_t *m = &b->backlog.v[b->backlog_head];
    apply_msg(w, b->zone, m);
    if (m->msg.pending == 0) b->replayed = true;
    reap_msg(w, m->msg);
    b->backlog_head++;
    /* the consumer is delivering: the wait for the end starts again */
    b->catchup_until_us = ts_mono_us() + CATCHUP_MAX_US;
}

static void marks_drop(ts_binding_t *b)
{
    free(b->marks);
    b->marks = NULL;
    b->nmarks = b->mark_i = 0;
}

/* Re-runs the last owner's ticks after the checkpoint (b->marks): before
 * each, the cell's input up to the mark's sequence, then one step, within
 * *budget. A mark waits until every message of the cell up to its
 * sequence is here: one after it is, or the cell's last input at the bind
 * is applied (the marks were read before it) — unless may_wait is false or
 * the wait outlasts CATCHUP_MAX_US: then the rest goes by store times. True
 * when every mark ran. */
static bool replay_marks(ts_worker_t *w, ts_binding_t *b, uint32_t *budget, bool may_wait)
{
    replay_ctx_t rc = {w, b};
    ts_zone_t *z = b->zone;
    while (b->mark_i < b->nmarks) {
        const ts_zone_mark_t *mk = &b->marks[b->mark_i];
        while (b->backlog_head < b->backlog.n &&
               b->backlog.v[b->backlog_head].msg.stream_seq <= mk->through_seq)
            backlog_apply(w, b);
        bool all_here =
            b->backlog_head < b->backlog.n || (b->replayed && z->last_applied_seq >= b->catchup_seq);
        if (!all_here) {
            if (may_wait && ts_mono_us() < b->catchup_until_us) return false;
            ts_warn("cell %s: its input up to seq %" PRIu64 " (tick mark %" PRIu64
                    ") did not come in time; replaying the rest by store times",
                    z->key, mk->through_seq, mk->tick);
            break;
        }
        if (!ts_zone_replay_mark(z, mk, w->dt, w->tick, budget, replay_step, &rc)) return false;
        b->mark_i++;
    }
    marks_drop(b);
    return true;
}

/* Applies b's backlog in order: first along its marks, then each message
 * after the steps due before its store time, within *budget steps. True
 * when the backlog is empty. */
static bool replay_backlog(ts_worker_t *w, ts_binding_t *b, uint32_t *budget, bool may_wait)
{
    replay_ctx_t rc = {w, b};
    ts_zone_t *z = b->zone;
    bool marks_done = replay_marks(w, b, budget, may_wait);
    while (marks_done && b->backlog_head < b->backlog.n) {
        ts_inbox_msg_t *m = &b->backlog.v[b->backlog_head];
        if (!ts_zone_replay_until(z, m->msg.time_ns, w->period_ns, w->dt, w->tick, budget, replay_step, &rc))
            break;
        backlog_apply(w, b);
    }
    reap_flush(w);
    if (!marks_done) return false;
    if (b->backlog_head < b->backlog.n) return false;
    free(b->backlog.v);
    b->backlog = (ts_inbox_t){0};
    b->backlog_head = 0;
    return true;
}

bool ts_worker_replay(ts_worker_t *w, ts_binding_t *b, uint64_t now_ns, uint32_t *budget)
{
    if (!replay_backlog(w, b, budget, true)) return false;
    ts_zone_t *z = b->zone;
    bool late = !b->replayed || z->last_applied_seq < b->catchup_seq;
    if (late && ts_mono_us() < b->catchup_until_us) return false; /* more to come */
    /* the ticks from its last input to now, as the last owner would have run them */
    replay_ctx_t rc = {w, b};
    if (!ts_zone_replay_until(z, now_ns, w->period_ns, w->dt, w->tick, budget, replay_step, &rc))
        return false;
    b->catching_up = false;
    z->replaying = false; /* the game module's events are heard from here on */
    if (late)
        ts_warn("cell %s: its input replay did not catch up in time (at seq %" PRIu64 "); acting anyway",
                z->key, z->last_applied_seq);
    else
        ts_info("cell %s: caught up with its input at seq %" PRIu64 " (%" PRIu64 " ticks replayed); live",
                z->key, z->last_applied_seq, z->stats.replay_steps);
    return true;
}

void ts_worker_replay_flush(ts_worker_t *w, ts_binding_t *b)
{
    uint32_t budget = UINT32_MAX;
    replay_backlog(w, b, &budget, false);
}

void ts_worker_apply_held(ts_worker_t *w, ts_binding_t *b, ts_inbox_t *msgs)
{
    for (size_t i = 0; i < msgs->n; i++)
        if (apply_to(w, b, &msgs->v[i])) msgs->v[i].msg = (ts_bus_held_t){0};
    ts_inbox_free(msgs);
}

/* The game module takes the zone (before any of its held input applies).
 * A child cell that starts empty (no checkpoint, nothing applied) of a
 * parent bound here starts with the parent's cell state (ts_game_split_state),
 * with its world counters at 0: the parent moves its own to child quadrant 0
 * through the input streams (split.c). */
static void adopt_game(ts_worker_t *w, ts_zone_t *zone, bool replaying)
{
    ts_game_host_attach(ts_game_host_global(), zone, w->cfg->worker_max_speed);
    zone->replaying = replaying;
    ts_cell_t parent;
    if (zone->cell.depth == 0 || zone->last_applied_seq != 0 || zone->game.time != 0 ||
        ts_cell_parent(&zone->cell, &parent) != TS_OK)
        return;
    ts_binding_t *pb = ts_worker_find_binding(w, &parent);
    if (!pb) return;
    unsigned q = (unsigned)ts_cell_quadrant(&zone->cell);
    ts_game_split_state(&pb->zone->game, q, &zone->game);
}

ts_status_t ts_worker_adopt(ts_worker_t *w, ts_zone_t *zone, uint64_t epoch, ts_sub_ctx_t *ctx,
                            uint64_t catchup_seq, bool pending, bool recovered)
{
    return ts_worker_adopt_marked(w, zone, epoch, ctx, catchup_seq, pending, recovered, NULL, 0);
}

ts_status_t ts_worker_adopt_marked(ts_worker_t *w, ts_zone_t *zone, uint64_t epoch, ts_sub_ctx_t *ctx,
                                   uint64_t catchup_seq, bool pending, bool recovered, ts_zone_mark_t *marks,
                                   size_t nmarks)
{
    ts_binding_t *b = calloc(1, sizeof(*b));
    if (b && w->nbind == w->cap_bind) {
        size_t ncap = w->cap_bind ? w->cap_bind * 2 : 16;
        ts_binding_t **v = realloc(w->bindings, ncap * sizeof(*v));
        if (v) {
            w->bindings = v;
            w->cap_bind = ncap;
        }
    }
    if (!b || w->nbind == w->cap_bind || ts_map_put(&w->by_gen, ctx->gen, b) != TS_OK ||
        ts_cellmap_put(&w->by_cell, &zone->cell, b) != TS_OK) {
        if (b) ts_map_del(&w->by_gen, ctx->gen);
        free(b);
        free(marks);
        ts_worker_release_sub(w, ctx);
        ts_zone_destroy(zone);
        return TS_ERR_NOMEM;
    }
    /* registered after messages it needs went by (a handover target whose
     * Diff is older than where the consumer was at its PreCopy): its held
     * input is dropped and it gets everything after its position again */
    if (ctx->gap_to > zone->last_applied_seq) {
        ts_info("cell %s: input after seq %" PRIu64 " went by before it registered; rewinding the consumer",
                zone->key, zone->last_applied_seq);
        ts_worker_input_rewind(w, ctx, zone->last_applied_seq);
    }
    ctx->gap_to = 0;
    zone->epoch = epoch;
    zone->instance = w->instance; /* its checkpoints name this worker's tick marks */
    if (w->max_payload) ts_zone_set_max_payload(zone, w->max_payload);
    b->zone = zone;
    b->marks = marks;
    b->nmarks = nmarks;
    b->ctx = ctx;
    b->gen = ctx->gen;
    b->bound_us = ts_now_us();
    /* from a checkpoint with a clock: its ticks since then are replayed too,
     * with or without input after it */
    b->catching_up =
        pending || catchup_seq > zone->last_applied_seq || (recovered && zone->clock_ns != 0) || nmarks > 0;
    b->catchup_seq = catchup_seq;
    b->replayed = !pending;
    b->catchup_until_us = ts_mono_us() + CATCHUP_MAX_US;
    adopt_game(w, zone, b->catching_up);
    b->index = w->nbind;
    w->bindings[w->nbind++] = b;
    w->bindings_changed++;
    /* a split or retired cell (recovered, handed over) forwards from the start */
    const ts_cell_entry_t *e = ts_worker_find_entry(w, &zone->cell);
    if (e && e->epoch == epoch) ts_split_set_mode(w, b, e, false);
    pthread_mutex_lock(&w->mu);
    ts_inbox_t held = ctx->held;
    ctx->held = (ts_inbox_t){0};
    atomic_store(&ctx->hold, false);
    pthread_mutex_unlock(&w->mu);
    ts_worker_apply_held(w, b, &held); /* kept in its backlog while it catches up */
    return TS_OK;
}

void ts_worker_unbind(ts_worker_t *w, ts_binding_t *b)
{
    ts_info("cell %s: unbound (epoch %" PRIu64 ", last applied seq %" PRIu64 ")", b->zone->key,
            b->zone->epoch, b->zone->last_applied_seq);
    ts_marks_release(w, b);
    ts_map_del(&w->by_gen, b->gen);
    ts_cellmap_del(&w->by_cell, &b->zone->cell);
    ts_worker_release_sub(w, b->ctx);
    add_stats(&w->stats.zones, &b->zone->stats);
    w->stats.requests_ignored += b->zone->requests_ignored;
    ts_zone_destroy(b->zone);
    ts_inbox_free(&b->held);
    backlog_free(b);
    marks_drop(b);
    size_t i = b->index;
    w->bindings[i] = w->bindings[--w->nbind];
    w->bindings[i]->index = i;
    w->bindings_changed++;
    free(b);
}

/* ---- the registry view ------------------------------------------------- */

typedef struct {
    ts_worker_t *w;
    uint64_t stored_ns; /* the message's store time */
} fence_ctx_t;

static uint64_t request_fence(void *ud, const ts_cell_t *from)
{
    fence_ctx_t *f = ud;
    return ts_worker_request_fence(f->w, from, f->stored_ns);
}

static void apply_msg(ts_worker_t *w, ts_zone_t *z, const ts_inbox_msg_t *m)
{
    const uint8_t *data = ts_bus_held_data(m->msg);
    size_t len = ts_bus_held_len(m->msg);
    uint64_t seq = m->msg.stream_seq;
    if (seq && seq <= z->last_applied_seq) return; /* replayed: cheap skip before decoding */
    /* into the tick thread's arena: no malloc per decoded field */
    Tessera__V1__InputBatch *ib =
        tessera__v1__input_batch__unpack(ts_arena_allocator(&w->in_arena), len, data);
    if (ib) ts_players_screen(w, z, ts_bus_held_subject(m->msg), ib);
    /* live input only: a replayed request was stored when its sender's epoch
     * was current (the last owner applied it), even if the registry moved
     * on since (the sender recovered with this cell) */
    fence_ctx_t fence = {w, m->msg.time_ns};
    if (ib && !z->replaying) w->stats.requests_refused += ts_zone_fence_requests(ib, request_fence, &fence);
    if (ib) ts_zone_apply_batch(z, seq, ib, w->tick);
    if (ib) ts_worker_metrics_batch(ib);
    ts_arena_reset(&w->in_arena);
    if (!ib && seq > z->last_applied_seq) {
        ts_warn("cell %s: undecodable input message at stream seq %" PRIu64 " skipped", z->key, seq);
        z->last_applied_seq = seq;
        z->stats.dropped++;
    }
}

void ts_worker_apply_msgs(ts_worker_t *w, ts_zone_t *z, ts_inbox_t *msgs)
{
    for (size_t i = 0; i < msgs->n; i++)
        apply_msg(w, z, &msgs->v[i]);
    ts_inbox_free(msgs);
}

void ts_worker_apply_inbox(ts_worker_t *w)
{
    ts_inbox_msg_t m;
    while (ts_ring_pop(w->ring, &m)) {
        ts_marks_took(w, m.msg.stream_seq);
        ts_binding_t *b = ts_map_get(&w->by_gen, m.gen);
        if (b && b->state == TS_BIND_FROZEN) {
            /* after s2: the target applies it, unless the handover aborts */
            if (ts_inbox_push(&b->held, &m)) continue;
            ts_error("cell %s: out of memory holding input during a handover", b->zone->key);
        } else if (b && apply_to(w, b, &m)) {
            continue; /* in its replay backlog */
        }
        reap_msg(w, m.msg);
    }
    reap_flush(w);
}
