/* Worker: binds the cells the registry gives it and runs the tick loop.
 *
 * Input reaches the tick through inbox.c, bound cells live in bindings.c,
 * slow steps run on the I/O thread (io.c), publishing is output.c and
 * handovers handover.c. This file holds what ties them together: the
 * registry view, the results of I/O jobs, the tick loop and the lifecycle.
 *
 * The registry: the worker keeps its own copy and applies each
 * RegistryChange in O(1); a version gap, a lost change or a reconnect costs
 * one full read on the I/O thread. A cell the registry gives us is bound by
 * the I/O thread (checkpoint read + consumer) and adopted on a later tick.
 *
 * Between ticks the tick thread sleeps, and wakes for registry changes,
 * handover steps, I/O results and relay passes (relay_pass): the links of
 * an entity's hand-on to another cell are applied and published as they
 * arrive instead of one tick per link. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"
#include "tessera/log.h"
#include "tessera/service.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define DRAIN_TIMEOUT_MS 30000
/* While a drain is under way the orchestrator is asked again this often, so
 * a worker whose cells nobody can take any more (the other workers died or
 * stopped meanwhile) learns it at once instead of waiting DRAIN_TIMEOUT_MS.
 * The asking has its own thread: the I/O threads may all be waiting for
 * PreCopy answers from a target that is gone. */
#define DRAIN_RECHECK_MS 1000
#define DRAIN_RECHECK_TIMEOUT_MS 500
#define RESUB_RETRY_US 1000000ULL /* a consumer that could not be created (the stream not back yet) */
/* Between two restarts of the input consumer: rewinds asked meanwhile (a
 * recovery binding many cells) coalesce to the lowest start. */
#define REWIND_GAP_US 100000ULL
/* Between ticks, a worker's message (a Departure in the cell's own stream,
 * a Transfer), a gateway's input to a cell that had one in the last 100 ms
 * (it may be for an entity that just left: forwarded at once) or a publish
 * outcome wakes the tick thread for a relay pass, at most this often: an
 * entity crossing into another cell is handed on by that chain of messages,
 * and waiting for the next tick at each link added one or two ticks to the
 * inputs of every crossing player. Other inputs do not wake it: a pass for
 * each costs a context switch and changes nothing, as the tick that follows
 * applies them before it steps (see inbox.c). */
#define RELAY_GAP_US 4000ULL
/* What the cells catching up after a recovery may replay per tick, all of
 * them together, in entity steps (a step of a cell costs 1 + its entities;
 * the rest at the next ticks): about what a tick of 50,000 entities costs,
 * so a long backlog does not stall the other cells (a cell of 1,000
 * entities replays a second of its time per tick, an empty one 2,500 s). */
#define REPLAY_BUDGET_PER_TICK 50000

/* nats.c thread: a JetStream publish's outcome, noted for the tick thread,
 * which takes it on its next relay pass (a stored Transfer releases the
 * inputs forwarded after it). */
static void on_publish_outcome(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok,
                               uint64_t stream_seq)
{
    if (subject && strncmp(subject, "tessera.worker.", 15) == 0) { /* a tick mark: only counted */
        ts_marks_on_outcome(ud, ok);
        return;
    }
    ts_worker_on_publish_outcome(ud, subject, seq, count, ok, stream_seq);
    ts_worker_wake(ud);
}

/* The thread that asks the orchestrator again during a drain (one worker
 * per process). */
static struct {
    pthread_t thread;
    bool started;
    atomic_bool stop;
    atomic_bool refused; /* the orchestrator answered "error: ..." or nobody serves drains */
} asker;

static void *drain_asker_main(void *arg)
{
    ts_worker_t *w = arg;
    char subj[TS_SUBJECT_MAX];
    ts_subject_ctl(subj, sizeof(subj), w->world.id, "drain");
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    uint64_t next = ts_mono_us() + DRAIN_RECHECK_MS * 1000ULL;
    while (!atomic_load(&asker.stop)) {
        if (ts_mono_us() < next) {
            ts_sleep_ms(20);
            continue;
        }
        next = ts_mono_us() + DRAIN_RECHECK_MS * 1000ULL;
        ts_bus_msg_t *reply = NULL;
        ts_status_t st =
            ts_bus_request(w->bus, subj, &hdr, w->id, strlen(w->id), DRAIN_RECHECK_TIMEOUT_MS, &reply);
        if (st == TS_OK) {
            const char *text = (const char *)ts_bus_msg_data(reply);
            size_t len = ts_bus_msg_len(reply);
            if (len >= 6 && strncmp(text, "error:", 6) == 0) {
                ts_info("drain: orchestrator says: %.*s", (int)len, text);
                atomic_store(&asker.refused, true);
            }
            ts_bus_msg_destroy(reply);
        } else if (st == TS_ERR_UNAVAILABLE) {
            ts_info("drain: no orchestrator serves drains any more");
            atomic_store(&asker.refused, true);
        } /* a timeout: asked again in a second */
        if (atomic_load(&asker.refused)) {
            ts_worker_wake(w);
            break;
        }
    }
    return NULL;
}

static void drain_asker_start(ts_worker_t *w)
{
    if (asker.started) return;
    atomic_store(&asker.stop, false);
    atomic_store(&asker.refused, false);
    asker.started = pthread_create(&asker.thread, NULL, drain_asker_main, w) == 0;
}

static void drain_asker_stop(void)
{
    if (!asker.started) return;
    atomic_store(&asker.stop, true);
    pthread_join(asker.thread, NULL);
    asker.started = false;
}
/* registry changes waiting for the tick thread before a full read replaces them */
#define MAX_PENDING_CHANGES 4096

static void on_registry(void *ud, const ts_bus_msg_t *m)
{
    ts_worker_t *w = ud;
    Tessera__V1__RegistryChange *rc =
        tessera__v1__registry_change__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    pthread_mutex_lock(&w->mu);
    if (!rc || rc->world != w->world.id || !rc->cell) {
        if (rc && rc->world == w->world.id) w->changes_overflow = true; /* a bare "re-read" */
    } else if (w->nchanges >= MAX_PENDING_CHANGES) {
        w->changes_overflow = true;
    } else {
        if (w->nchanges == w->cap_changes) {
            size_t ncap = w->cap_changes ? w->cap_changes * 2 : 64;
            Tessera__V1__RegistryChange **v = realloc(w->changes, ncap * sizeof(*v));
            if (v) {
                w->changes = v;
                w->cap_changes = ncap;
            }
        }
        if (w->nchanges < w->cap_changes) {
            w->changes[w->nchanges++] = rc;
            rc = NULL;
        } else {
            w->changes_overflow = true;
        }
    }
    atomic_store(&w->wake, true);
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
    if (rc) tessera__v1__registry_change__free_unpacked(rc, NULL);
}

static void start_bind(ts_worker_t *w, const ts_cell_entry_t *e)
{
    if (ts_cellmap_get(&w->binding, &e->cell)) return; /* already on its way */
    if (ts_handover_bind_pending(w, &e->cell, e->epoch)) return;
    ts_io_job_t *job = ts_io_job_new(TS_IO_BIND);
    if (!job || ts_cellmap_put(&w->binding, &e->cell, (void *)1) != TS_OK) {
        ts_io_job_free(job);
        return;
    }
    job->cell = e->cell;
    job->epoch = e->epoch;
    ts_io_submit(w, job);
}

/* Brings the binding of one cell in line with the view. */
static void reconcile(ts_worker_t *w, const ts_cell_t *cell)
{
    const ts_cell_entry_t *e = ts_worker_find_entry(w, cell);
    ts_binding_t *b = ts_worker_find_binding(w, cell);
    bool mine = e && strcmp(e->owner, w->id) == 0 && ts_split_holds(e->state);
    if (b) {
        if (!mine || e->epoch < b->zone->epoch) {
            if (e && strcmp(e->owner, w->id) != 0)
                ts_info("cell %s: the registry gives it to %s at epoch %" PRIu64 "; letting go", b->zone->key,
                        e->owner, e->epoch);
            ts_worker_unbind(w, b);
            return;
        }
        if (b->state == TS_BIND_FROZEN) return;                                /* the handover decides */
        if (e->epoch > b->zone->epoch && ts_split_take_epoch(w, b, e)) return; /* split or merge */
        if (e->epoch == b->zone->epoch) ts_split_set_mode(w, b, e, false);
        if (e->epoch > b->zone->epoch) {
            /* someone else owned it in between: what we hold is stale */
            ts_warn("cell %s: epoch moved from %" PRIu64 " to %" PRIu64 " behind my back; rebinding",
                    b->zone->key, b->zone->epoch, e->epoch);
            ts_worker_unbind(w, b);
            b = NULL;
        }
    }
    if (!b && mine && !w->draining) start_bind(w, e);
}

/* A cell of the view: its entry (first: ts_worker_find_entry returns it)
 * and since when (monotonic) the view has held its epoch. */
typedef struct {
    ts_cell_entry_t e;
    uint64_t since_us;
} view_entry_t;

/* Puts e in the view; prev: a view it replaces (a full read), whose
 * entries say since when an epoch is known. */
static ts_status_t view_put(ts_regview_t *v, const ts_cell_entry_t *e, const ts_cellmap_t *prev)
{
    view_entry_t *cur = ts_cellmap_get(&v->by_cell, &e->cell);
    if (cur) {
        if (e->epoch != cur->e.epoch) cur->since_us = ts_mono_us();
        cur->e = *e;
        return TS_OK;
    }
    view_entry_t *n = malloc(sizeof(*n));
    if (!n) return TS_ERR_NOMEM;
    const view_entry_t *old = prev ? ts_cellmap_get(prev, &e->cell) : NULL;
    n->e = *e;
    n->since_us = old && old->e.epoch == e->epoch ? old->since_us : ts_mono_us();
    ts_status_t st = ts_cellmap_put(&v->by_cell, &e->cell, n);
    if (st != TS_OK) free(n);
    return st;
}

/* A request sent from a cell at an epoch the registry moved past is
 * refused when it was stored more than this after the worker learned of the
 * move: it came from an owner that lost the cell (a zombie). One stored
 * before (sent while its sender owned the cell), however late it is
 * applied, is not (ts_zone_fence_epoch). */
#define REQUEST_EPOCH_GRACE_US 2000000ULL

uint64_t ts_worker_request_fence(ts_worker_t *w, const ts_cell_t *from, uint64_t stored_ns)
{
    const view_entry_t *v = ts_cellmap_get(&w->view.by_cell, from);
    if (!v) return 0;
    uint64_t ago_us = ts_mono_us() - v->since_us;
    if (ago_us < REQUEST_EPOCH_GRACE_US) return 0;
    /* when it was learned, in the input stream's clock */
    uint64_t server_now = stored_ns ? ts_demux_server_now_ns(w) : 0;
    uint64_t learned_ns = server_now > ago_us * 1000ULL ? server_now - ago_us * 1000ULL : 0;
    return ts_zone_fence_epoch(v->e.epoch, ago_us, learned_ns, stored_ns, REQUEST_EPOCH_GRACE_US);
}

static void view_clear(ts_regview_t *v)
{
    ts_cellmap_clear(&v->by_cell, free);
}

static void tree_put(void *tree, const ts_cell_t *cell, void *entry)
{
    (void)cell;
    ts_celltree_apply(tree, entry);
}

/* A full read: replaces the view (or, when the registry's version went back,
 * raises its entries), then reconciles every binding and every cell of ours
 * (the only O(world) step, and it runs on a resync only). */
static void apply_full(ts_worker_t *w, ts_cell_entry_t *cells, size_t n, uint64_t version, bool backwards)
{
    /* an older read finished late, unless the registry's version went back */
    if (w->view.valid && version < w->view.version && !backwards) return;
    /* a lost registry not written back yet: keep serving what we have */
    if (backwards && n == 0) return;
    if (backwards && w->view.valid) {
        /* a lost registry written again, maybe only partly yet (root cells
         * at epoch 1, an older snapshot): epochs never go back, so a cell it
         * lacks or holds at a lower epoch than the view is not news, and the
         * view's entry stays; so does its version, and the next version
         * check reads the registry again until it is written back above it */
        version = w->view.version;
        for (size_t i = 0; i < n; i++) {
            const ts_cell_entry_t *cur = ts_worker_find_entry(w, &cells[i].cell);
            if (!cur || cells[i].epoch >= cur->epoch) view_put(&w->view, &cells[i], NULL);
        }
        ts_celltree_clear(w->tree);
        ts_cellmap_each(&w->view.by_cell, tree_put, w->tree);
    } else {
        ts_cellmap_t prev = w->view.by_cell;
        ts_cellmap_init(&w->view.by_cell);
        ts_celltree_clear(w->tree);
        for (size_t i = 0; i < n; i++) {
            view_put(&w->view, &cells[i], &prev);
            ts_celltree_apply(w->tree, &cells[i]);
        }
        ts_cellmap_clear(&prev, free);
        ts_cellmap_free(&prev);
    }
    w->view.version = version;
    atomic_store(&w->applied_version, version);
    w->view.valid = true;
    w->view.last_sync_us = ts_mono_us();
    w->stalled_us = 0;
    for (size_t i = 0; i < w->nbind;) {
        ts_binding_t *b = w->bindings[i];
        size_t before = w->nbind;
        reconcile(w, &b->zone->cell);
        if (w->nbind == before) i++;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(cells[i].owner, w->id) == 0) reconcile(w, &cells[i].cell);
}

/* Applies one change to the view (O(1)) if it is the next version; a gap
 * asks for a full read. Changes that arrive while a full read is pending are
 * kept (up to MAX_PENDING_CHANGES) and applied after it, since the read may
 * have been made before they were written. Takes rc over. */
static void apply_change(ts_worker_t *w, Tessera__V1__RegistryChange *rc)
{
    if (!w->view.valid || w->view.resync_pending) {
        if (w->ndeferred < MAX_PENDING_CHANGES) {
            if (w->ndeferred == w->cap_deferred) {
                size_t ncap = w->cap_deferred ? w->cap_deferred * 2 : 64;
                Tessera__V1__RegistryChange **v = realloc(w->deferred, ncap * sizeof(*v));
                if (v) {
                    w->deferred = v;
                    w->cap_deferred = ncap;
                }
            }
            if (w->ndeferred < w->cap_deferred) {
                w->deferred[w->ndeferred++] = rc;
                return;
            }
        }
        /* no room: the version check notices what is missing */
        tessera__v1__registry_change__free_unpacked(rc, NULL);
        return;
    }
    ts_cell_entry_t e = {.epoch = rc->epoch, .state = (ts_cell_state_t)rc->state};
    bool ok = ts_proto_cell_get(rc->cell, &e.cell) == TS_OK && rc->owner;
    if (ok) ts_strlcpy(e.owner, rc->owner, sizeof(e.owner));
    if (!ok || rc->version > w->view.version + 1) {
        ts_info("registry: change %" PRIu64 " after %" PRIu64 " (a gap); reading it all again", rc->version,
                w->view.version);
        ts_worker_request_resync(w);
    } else if (rc->version > w->view.version) {
        const ts_cell_entry_t *cur = ts_worker_find_entry(w, &e.cell);
        if (!cur || e.epoch >= cur->epoch) view_put(&w->view, &e, NULL);
        ts_celltree_apply(w->tree, &e);
        w->view.version = rc->version;
        atomic_store(&w->applied_version, rc->version);
        reconcile(w, &e.cell);
    } /* else older than what we have (a full read overtook it) */
    tessera__v1__registry_change__free_unpacked(rc, NULL);
}

static int cmp_change(const void *a, const void *b)
{
    uint64_t va = (*(Tessera__V1__RegistryChange *const *)a)->version;
    uint64_t vb = (*(Tessera__V1__RegistryChange *const *)b)->version;
    return va < vb ? -1 : va > vb;
}

/* After a full read: the changes kept meanwhile that are newer than it. */
static void apply_deferred(ts_worker_t *w)
{
    Tessera__V1__RegistryChange **v = w->deferred;
    size_t n = w->ndeferred;
    w->deferred = NULL;
    w->ndeferred = w->cap_deferred = 0;
    if (n > 1) qsort(v, n, sizeof(*v), cmp_change);
    for (size_t i = 0; i < n; i++)
        apply_change(w, v[i]);
    free(v);
}

static void apply_changes(ts_worker_t *w)
{
    pthread_mutex_lock(&w->mu);
    Tessera__V1__RegistryChange **v = w->changes;
    size_t n = w->nchanges;
    bool overflow = w->changes_overflow;
    w->changes = NULL;
    w->nchanges = w->cap_changes = 0;
    w->changes_overflow = false;
    pthread_mutex_unlock(&w->mu);
    if (overflow) ts_worker_request_resync(w);
    for (size_t i = 0; i < n; i++)
        apply_change(w, v[i]);
    free(v);
}

/* ---- I/O results --------------------------------------------------------- */

static void finish_bind(ts_worker_t *w, ts_io_job_t *job)
{
    ts_cellmap_del(&w->binding, &job->cell);
    const ts_cell_entry_t *e = ts_worker_find_entry(w, &job->cell);
    bool still = job->status == TS_OK && e && strcmp(e->owner, w->id) == 0 && ts_split_holds(e->state) &&
                 e->epoch == job->epoch && !ts_worker_find_binding(w, &job->cell) && !w->draining;
    if (!still) {
        if (job->status != TS_OK) {
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&job->cell, key, sizeof(key));
            ts_warn("cell %s: cannot bind (%s); trying again", key, ts_status_str(job->status));
        }
        ts_worker_release_sub(w, job->ctx);
        ts_zone_destroy(job->zone);
        job->ctx = NULL;
        job->zone = NULL;
        /* still ours (at another epoch, or the bind failed): bind again */
        reconcile(w, &job->cell);
        return;
    }
    uint64_t after = job->zone->last_applied_seq;
    ts_zone_t *z = job->zone;
    job->zone = NULL;
    ts_zone_mark_t *marks = job->marks;
    job->marks = NULL;
    if (ts_worker_adopt_marked(w, z, job->epoch, job->ctx, job->caught_up_seq, job->pending > 0, job->found,
                               marks, job->nmarks) == TS_OK) {
        ts_info("cell %s: bound at epoch %" PRIu64 " from checkpoint/replay%s, consuming after seq %" PRIu64,
                w->bindings[w->nbind - 1]->zone->key, job->epoch,
                job->by_marks ? " by its last owner's tick marks" : "", after);
        if (job->found) w->stats.recovered++; /* from a checkpoint */
        if (job->found && job->by_marks) w->stats.recovered_marked++;
        /* a cell without one yet (new, a split's child): written at its
         * first tick, so this worker's tick marks describe it from there */
        if (!job->found) w->bindings[w->nbind - 1]->ckpt_soon = true;
    }
    job->ctx = NULL;
}

/* A new registration for a cell whose input stream is gone (its context
 * went stale, or the I/O thread saw the stream replaced). */
static void finish_resubscribe(ts_worker_t *w, ts_io_job_t *job)
{
    ts_binding_t *b = ts_map_get(&w->by_gen, job->old_gen);
    if (job->status != TS_OK || !b) {
        if (b) { /* (the stream is not back yet?) again in a second, not every tick */
            b->restarting = false;
            b->resub_needed = true;
            b->resub_at_us = ts_mono_us() + RESUB_RETRY_US;
        }
        ts_worker_release_sub(w, job->ctx);
        job->ctx = NULL;
        return;
    }
    /* what the ring still has of the old registration comes first, in order:
     * messages of the old consumer's stream instance only (the bus delivers
     * no other), applied by that instance's sequences */
    ts_worker_apply_inbox(w);
    ts_map_del(&w->by_gen, b->gen);
    if (job->stream_restarted) {
        /* the position was a sequence of an input stream that is gone: the
         * cell reads the new one from its start, once */
        ts_warn("cell %s: applied up to seq %" PRIu64
                " of an input stream that is gone (JetStream lost its store); consuming the new one "
                "from its start",
                b->zone->key, b->zone->last_applied_seq);
        b->zone->last_applied_seq = 0;
        ts_zone_forget_move_seqs(b->zone);
        b->catchup_seq = 0;
        /* the other cells reading the stream that is gone follow at once */
        for (size_t i = 0; i < w->nbind; i++)
            if (w->bindings[i]->ctx->stream_id == job->stream_id) w->bindings[i]->resub_needed = true;
    }
    b->resub_needed = false;
    b->resub_at_us = 0;
    ts_worker_take_consumer(w, b, job);
}

void ts_worker_take_consumer(ts_worker_t *w, ts_binding_t *b, ts_io_job_t *job)
{
    ts_worker_release_sub(w, b->ctx);
    b->ctx = job->ctx;
    b->gen = job->ctx->gen;
    b->restarting = false;
    ts_map_put(&w->by_gen, b->gen, b);
    pthread_mutex_lock(&w->mu);
    ts_inbox_t held = b->ctx->held;
    b->ctx->held = (ts_inbox_t){0};
    atomic_store(&b->ctx->hold, false);
    pthread_mutex_unlock(&w->mu);
    if (b->state == TS_BIND_FROZEN) {
        for (size_t i = 0; i < held.n; i++)
            if (!ts_inbox_push(&b->held, &held.v[i])) ts_bus_held_free(held.v[i].msg);
        free(held.v);
    } else {
        ts_worker_apply_held(w, b, &held);
    }
    job->ctx = NULL;
}

static void take_io_results(ts_worker_t *w)
{
    for (ts_io_job_t *job = ts_io_take_done(w); job;) {
        ts_io_job_t *next = job->next;
        switch (job->kind) {
        case TS_IO_RESYNC:
            w->view.resync_pending = false;
            if (job->status == TS_OK)
                apply_full(w, job->cells, job->ncells, job->version, job->found);
            else
                ts_warn("registry unreachable (%s); keeping the cells I have", ts_status_str(job->status));
            apply_deferred(w);
            break;
        case TS_IO_BIND:
            finish_bind(w, job);
            break;
        case TS_IO_RESUBSCRIBE:
            finish_resubscribe(w, job);
            break;
        case TS_IO_REWIND:
            w->dmx.job_queued = false;
            /* rewinds asked meanwhile coalesce until the next one */
            w->dmx.next_try_us = ts_mono_us() + (job->status == TS_OK ? REWIND_GAP_US : RESUB_RETRY_US);
            break;
        case TS_IO_DRAIN:
            w->drain_state = job->status == TS_OK ? 2 : 3;
            break;
        case TS_IO_STREAM_LOST:
            ts_io_stream_done(w, job);
            break;
        default:
            break;
        }
        ts_io_job_free(job);
        job = next;
    }
}

/* ---- input ------------------------------------------------------------- */

/* The worker's input consumer is created again (by an I/O thread) when
 * contexts wait for a rewind (a cell registered behind it, the ring was
 * full) or it stopped (its stream is, or may be, another instance after a
 * reconnect); at most one restart at a time, REWIND_GAP_US apart. Cells
 * whose input stream is gone (their context went stale, or the I/O thread
 * saw the stream replaced) register again from their position (the last
 * applied sequence of the stream instance it refers to). */
static void restart_consumers(ts_worker_t *w)
{
    uint64_t now = ts_mono_us();
    uint64_t overflows = atomic_load(&w->dmx.overflows);
    if (overflows != w->dmx.overflows_seen) {
        ts_warn("input arrived faster than the tick takes it: %" PRIu64
                " messages did not fit the ring; the consumer starts again before the first of them",
                overflows - w->dmx.overflows_seen);
        w->stats.inbox_overflows += overflows - w->dmx.overflows_seen;
        w->dmx.overflows_seen = overflows;
    }
    if (!w->dmx.job_queued && now >= w->dmx.next_try_us && ts_demux_wanted(w)) {
        ts_io_job_t *job = ts_io_job_new(TS_IO_REWIND);
        if (job) {
            w->dmx.job_queued = true;
            ts_io_submit(w, job);
        }
    }
    for (size_t i = 0; i < w->nbind; i++) {
        ts_binding_t *b = w->bindings[i];
        if (b->restarting || now < b->resub_at_us) continue;
        bool stale = atomic_load(&b->ctx->stale);
        if (!stale && !b->resub_needed) continue;
        ts_io_job_t *job = ts_io_job_new(TS_IO_RESUBSCRIBE);
        if (!job) continue;
        if (stale && !b->resub_needed)
            ts_warn("cell %s: the input stream may be another instance after a reconnect; consuming again "
                    "after seq %" PRIu64 " if it is the same, else the new one from its start",
                    b->zone->key, b->zone->last_applied_seq);
        b->restarting = true;
        job->cell = b->zone->cell;
        job->old_gen = b->gen;
        /* messages still in the ring are applied before the new context's */
        job->after_seq = b->zone->last_applied_seq;
        job->stream_id = b->ctx->stream_id;
        ts_io_submit(w, job);
    }
}

/* Everything other threads left for the tick thread. */
static void take_mail(ts_worker_t *w)
{
    atomic_store(&w->wake, false);
    apply_changes(w);
    take_io_results(w);
    ts_handover_poll(w);
}

ts_status_t ts_worker_create(ts_worker_t **out, const ts_config_t *cfg)
{
    if (!ts_worker_id_valid(cfg->worker_id)) {
        ts_error("worker.id '%s' is not a valid worker id (1-%d letters, digits, '-' or '_')", cfg->worker_id,
                 TS_WORKER_ID_MAX - 1);
        return TS_ERR_CONFIG;
    }
    ts_worker_t *w = calloc(1, sizeof(*w));
    if (!w) return TS_ERR_NOMEM;
    w->cfg = cfg;
    ts_strlcpy(w->id, cfg->worker_id, sizeof(w->id));
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&w->wake, false);
    atomic_init(&w->next_gen, 0);
    atomic_init(&w->applied_version, 0);
    atomic_init(&w->fenced, false);
    atomic_init(&w->live_stop, false);
    atomic_init(&w->pub_errors, 0);
    ts_marks_init(w);
    ts_map_init(&w->by_gen);
    ts_arena_init(&w->in_arena);
    ts_cellmap_init(&w->by_cell);
    ts_cellmap_init(&w->binding);
    ts_cellmap_init(&w->view.by_cell);
    for (size_t i = 0; i < TS_FLIGHT_SLOTS; i++) {
        atomic_init(&w->flights[i].seq, 0);
        atomic_init(&w->flights[i].state, TS_FLIGHT_FREE);
    }
    ts_rng_t rng;
    ts_rng_seed(&rng, ts_now_us() ^ ((uint64_t)getpid() << 32));
    w->boot_nonce = ts_rng_next(&rng);
    snprintf(w->instance, sizeof(w->instance), "%016" PRIx64 "-%d", ts_rng_next(&rng), (int)getpid());

    ts_status_t st = ts_ring_create(&w->ring, (size_t)cfg->worker_inbox_ring, sizeof(ts_inbox_msg_t));
    if (st != TS_OK) goto fail;
    char name[128];
    snprintf(name, sizeof(name), "tessera-worker-%s", w->id);
    st = ts_service_connect_bus(cfg, name, TS_SERVICE_CONNECT_MS, &w->bus);
    if (st == TS_OK) w->max_payload = ts_bus_max_payload(w->bus);
    if (st == TS_OK) st = ts_service_connect_registry(cfg, TS_SERVICE_CONNECT_MS, &w->reg);
    if (st == TS_OK) st = ts_service_connect_registry(cfg, TS_SERVICE_CONNECT_MS, &w->live_reg);
    if (st == TS_OK) st = ts_service_wait_world(cfg, w->reg, TS_SERVICE_CONNECT_MS, &w->world);
    if (st != TS_OK) goto fail;
    if ((st = ts_celltree_new(&w->tree, w->world.id, w->world.cell_size)) != TS_OK) goto fail;
    if ((st = ts_live_start(w)) != TS_OK) goto fail;
    /* a cluster still electing its leaders times requests out: retry */
    uint64_t streams_deadline = ts_mono_us() + TS_SERVICE_CONNECT_MS * 1000ULL;
    while ((st = ts_io_ensure_streams(w)) != TS_OK && ts_service_retry_wait(streams_deadline))
        ts_info("JetStream streams not set up yet (%s); trying again", ts_status_str(st));
    if (st != TS_OK) {
        if (!ts_service_stopping()) ts_error("cannot set up JetStream streams: %s", ts_status_str(st));
        goto fail;
    }
    ts_bus_set_ack_handler(w->bus, on_publish_outcome, w);
    if ((st = ts_demux_init(w)) != TS_OK) goto fail;
    while ((st = ts_demux_restart(w)) != TS_OK && ts_service_retry_wait(streams_deadline))
        ts_info("cannot consume the input stream yet (%s); trying again", ts_status_str(st));
    if (st != TS_OK) {
        if (!ts_service_stopping()) ts_error("cannot consume the input stream: %s", ts_status_str(st));
        goto fail;
    }
    char subj[TS_SUBJECT_MAX];
    ts_subject_registry(subj, sizeof(subj), w->world.id);
    if ((st = ts_bus_subscribe(w->bus, subj, on_registry, w, &w->reg_sub)) != TS_OK) goto fail;
    if ((st = ts_handover_subscribe(w)) != TS_OK) goto fail;
    if ((st = ts_players_start(w)) != TS_OK) goto fail;
    if ((st = ts_ghost_start(w)) != TS_OK) goto fail;
    if ((st = ts_publisher_start(w)) != TS_OK) goto fail;
    if ((st = ts_io_start(w)) != TS_OK) goto fail;
    ts_worker_request_resync(w);
    ts_info("worker %s (instance %s): nats %s (max_payload %zu), redis %s, world %u (%dx%d cells of %.0f)",
            w->id, w->instance, cfg->nats_url, w->max_payload, cfg->redis_url, w->world.id, w->world.width,
            w->world.height, w->world.cell_size);
    *out = w;
    return TS_OK;
fail:
    ts_worker_destroy(w);
    return st;
}

ts_status_t ts_worker_zone_create(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch, ts_zone_t **out)
{
    ts_status_t st = ts_zone_create(out, cell, epoch, &w->world, w->cfg->worker_max_speed);
    if (st == TS_OK && w->max_payload) ts_zone_set_max_payload(*out, w->max_payload);
    return st;
}

/* Sleeps until the absolute monotonic time `until`, waking early when
 * another thread left something for the tick thread. */
static void wait_until(ts_worker_t *w, const struct timespec *until)
{
    pthread_mutex_lock(&w->mu);
    while (!atomic_load(&w->wake)) {
        if (pthread_cond_timedwait(&w->cond, &w->mu, until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&w->mu);
}

static bool past(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

/* Sets *next (CLOCK_MONOTONIC) to the next tick boundary: the next multiple
 * of the period on the wall clock, so every worker of a world ticks at the
 * same instants (a gateway then gets its cells' states together and sends a
 * client one Delta per tick, not one per worker). */
static void align_next(struct timespec *next, uint64_t period_ns)
{
    struct timespec mono, real;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    uint64_t rt = (uint64_t)real.tv_sec * 1000000000ULL + (uint64_t)real.tv_nsec;
    uint64_t at =
        (uint64_t)mono.tv_sec * 1000000000ULL + (uint64_t)mono.tv_nsec + ts_tick_wait_ns(rt, period_ns);
    next->tv_sec = (time_t)(at / 1000000000ULL);
    next->tv_nsec = (long)(at % 1000000000ULL);
}

/* Whether b's state goes out as a keyframe (every entity the cell holds;
 * readers forget the ones it does not list) at this tick: due once every
 * full_every ticks, but put off while an entity's Transfer is in flight
 * (its Departure applied, the Transfer not stored yet): no cell would list
 * it, and a player would see its own entity vanish until the next cell
 * shows it. Put off for at most full_every - 1 ticks. */
static bool keyframe_now(ts_binding_t *b, bool due, uint64_t full_every)
{
    if (!due && b->keyframe_late == 0) return false;
    bool in_flight = false;
    for (size_t k = 0; k < b->zone->nout && !in_flight; k++)
        in_flight = b->zone->out[k].ntransfers > 0;
    if (in_flight && b->keyframe_late + 1 < full_every) {
        b->keyframe_late++;
        return false;
    }
    b->keyframe_late = 0;
    return true;
}

/* A relay pass between ticks (tick thread): applies what the inbox holds and
 * publishes at once what that made due — departures, transfers and
 * forwarded inputs — and takes the outcomes of those already sent, which may
 * release the next message to the same cell or announce a finished
 * transfer. A pass visits each binding's outbox counters once; the rest of
 * a binding's work (its step and state) waits for the tick as before. */
static void relay_pass(ts_worker_t *w)
{
    ts_worker_apply_inbox(w);
    if (w->stalled_us != 0 || atomic_load(&w->fenced)) return;
    uint64_t seq0 = w->seq; /* every publish the pass queues takes a Ts-Seq */
    for (size_t i = 0; i < w->nbind; i++) {
        ts_binding_t *b = w->bindings[i];
        ts_zone_t *z = b->zone;
        if (z->ndeps == 0 && z->nout == 0) continue;
        ts_worker_collect_publishes(w, z);
        if (b->state != TS_BIND_ACTIVE || b->catching_up) continue;
        ts_worker_publish_departures(w, z);
        ts_worker_publish_outboxes(w, z);
    }
    if (w->seq != seq0) ts_publisher_kick(w);
}

static void tick_once(ts_worker_t *w, double dt, uint64_t full_every, uint64_t hb_every, uint64_t ckpt_every)
{
    w->tick++;
    /* after a stall (SIGSTOP, a long pause) the registry may have moved on:
     * act again only once a fresh read says what is still ours */
    uint64_t now = ts_mono_us();
    bool stalled = w->last_hb_us && now - w->last_hb_us > (uint64_t)w->cfg->orch_hb_ttl_ms * 500ULL;
    if (stalled) {
        ts_warn("tick thread stalled for %" PRIu64 " ms; re-reading the registry before acting",
                (now - w->last_hb_us) / 1000);
        w->stalled_us = now;
        ts_worker_request_resync(w);
    }
    take_mail(w);
    ts_worker_apply_inbox(w);
    restart_consumers(w);
    ts_ghost_tick(w);
    bool acting = w->stalled_us == 0 && !atomic_load(&w->fenced);
    /* this tick in the input stream's clock: each cell's clock_ns, which a
     * new owner replays the ticks after its checkpoint by (the worker's
     * own clock until a message said how the server's goes) */
    uint64_t now_ns = ts_demux_server_now_ns(w);
    if (now_ns == 0) now_ns = ts_now_us() * 1000ULL;
    /* the tick's mark goes before anything the tick publishes */
    if (acting) ts_marks_tick(w, now_ns);
    uint32_t replay_budget = REPLAY_BUDGET_PER_TICK;
    for (size_t i = 0; i < w->nbind && acting; i++) {
        ts_binding_t *b = w->bindings[i];
        ts_worker_collect_publishes(w, b->zone);
        if (b->state != TS_BIND_ACTIVE) continue;
        if (b->catching_up && !ts_worker_replay(w, b, now_ns, &replay_budget)) continue;
        ts_split_step(w, b, dt); /* a split or retired cell moves its entities on instead */
        b->zone->clock_ns = now_ns;
        ts_worker_publish_departures(w, b->zone);
        ts_worker_publish_outboxes(w, b->zone);
        ts_worker_publish_state(w, b->zone, keyframe_now(b, (w->tick + i) % full_every == 0, full_every));
        if (b->ckpt_soon || ((w->tick + i) % ckpt_every == 0 && ts_split_checkpoint_due(b))) {
            ts_worker_publish_checkpoint(w, b->zone);
            b->ckpt_soon = false;
        }
    }
    if (acting) ts_players_tick(w);
    if (hb_every == 0 || w->tick % hb_every == 0 || stalled) {
        ts_worker_heartbeat(w);
        ts_worker_metrics_snapshot(w);
    }
}

static void ask_drain(ts_worker_t *w)
{
    ts_io_job_t *job = ts_io_job_new(TS_IO_DRAIN);
    if (!job) {
        w->drain_state = 3;
        return;
    }
    w->drain_state = 1;
    ts_io_submit(w, job);
}

ts_status_t ts_worker_run(ts_worker_t *w, volatile sig_atomic_t *stop)
{
    const uint64_t hz = (uint64_t)(w->cfg->worker_tick_hz > 0 ? w->cfg->worker_tick_hz : 20);
    const uint64_t period_ns = 1000000000ULL / hz;
    const double dt = (double)period_ns / 1e9;
    w->period_ns = period_ns;
    w->dt = dt;
    const uint64_t hb_every = (uint64_t)w->cfg->worker_hb_ms * 1000000ULL / period_ns;
    const uint64_t ckpt_ms = w->cfg->worker_checkpoint_ms > 0 ? (uint64_t)w->cfg->worker_checkpoint_ms : 1000;
    const uint64_t ckpt_every = ckpt_ms * 1000000ULL / period_ns ? ckpt_ms * 1000000ULL / period_ns : 1;
    struct timespec next;
    align_next(&next, period_ns);
    ts_worker_heartbeat(w);
    uint64_t drain_deadline = 0;
    ts_status_t rc = TS_OK;
    for (;;) {
        if (atomic_load(&w->fenced)) {
            ts_error(
                "worker %s: another process now holds this worker id; stopping without touching its cells",
                w->id);
            rc = TS_ERR_CONFLICT;
            break;
        }
        if (*stop && !w->draining) {
            w->draining = true;
            ts_worker_metrics_stopping();
            if (w->nbind > 0 && ts_bus_connected(w->bus)) {
                ask_drain(w);
                drain_deadline = ts_mono_us() + DRAIN_TIMEOUT_MS * 1000ULL;
                ts_info("draining %zu cells before exit", w->nbind);
            }
        }
        if (w->draining && w->nbind > 0 && !ts_bus_connected(w->bus)) {
            ts_warn(
                "drain: NATS is unreachable, so no cell can be handed away; stopping now (my %zu cells will "
                "be recovered from their checkpoints)",
                w->nbind);
            break;
        }
        if (w->draining && w->nbind > 0 && w->drain_state == 2) {
            drain_asker_start(w); /* has the orchestrator still someone to hand the cells to? */
            if (atomic_load(&asker.refused)) w->drain_state = 3;
        }
        if (w->draining && (w->nbind == 0 || drain_deadline == 0 || w->drain_state == 3 ||
                            ts_mono_us() > drain_deadline || *stop >= 2))
            break;

        uint64_t t0 = ts_mono_ns();
        tick_once(w, dt, hz, hb_every, ckpt_every);
        ts_publisher_kick(w); /* what the tick queued goes out now */
        double ms = (double)(ts_mono_ns() - t0) / 1e6;
        w->tick_ms[w->tick_samples++ % TS_TICK_SAMPLES] = ms;
        if (ms > w->tick_max_ms) w->tick_max_ms = ms;
        ts_worker_metrics_tick(w, ms / 1e3);

        /* the next boundary; every one this tick ran past is counted as
         * missed (no burst of catch-up ticks) */
        struct timespec due = next;
        align_next(&next, period_ns);
        int64_t gap_ns = (int64_t)(next.tv_sec - due.tv_sec) * 1000000000LL + (next.tv_nsec - due.tv_nsec);
        if (gap_ns > (int64_t)(period_ns + period_ns / 2)) {
            w->overruns++;
            w->ticks_missed += (uint64_t)(gap_ns + (int64_t)period_ns / 2) / period_ns - 1;
        }
        /* between ticks, serve handover requests and registry changes at
         * once, and relay input as it arrives (at most every RELAY_GAP_US) */
        uint64_t last_pass_us = 0;
        bool pass_due = false;
        while (!past(&next) && !(*stop && !w->draining)) {
            struct timespec until = next;
            if (pass_due) {
                struct timespec gap;
                uint64_t since = ts_mono_us() - last_pass_us;
                ts_mono_deadline(&gap, since < RELAY_GAP_US ? (RELAY_GAP_US - since) * 1000ULL : 0);
                if (gap.tv_sec < next.tv_sec || (gap.tv_sec == next.tv_sec && gap.tv_nsec < next.tv_nsec))
                    until = gap;
            }
            wait_until(w, &until);
            if (atomic_load(&w->wake)) {
                take_mail(w);
                pass_due = true;
            }
            if (pass_due && ts_mono_us() - last_pass_us >= RELAY_GAP_US && !past(&next)) {
                relay_pass(w);
                last_pass_us = ts_mono_us();
                pass_due = false;
            }
        }
    }
    drain_asker_stop();
    if (w->drain_state == 3)
        ts_warn(
            "drain: the orchestrator cannot hand my %zu cells away (its answer is logged above); stopping "
            "now, they will be recovered from their checkpoints",
            w->nbind);
    else if (w->draining && w->nbind > 0 && drain_deadline && ts_mono_us() > drain_deadline)
        ts_warn(
            "drain: %zu cells still here after %d s; stopping, they will be recovered from their checkpoints",
            w->nbind, DRAIN_TIMEOUT_MS / 1000);
    /* last words: checkpoints of whatever is still here, and no liveness */
    if (rc == TS_OK)
        for (size_t i = 0; i < w->nbind; i++)
            if (w->bindings[i]->state == TS_BIND_ACTIVE)
                ts_worker_publish_checkpoint(w, w->bindings[i]->zone);
    bool bus_up = ts_bus_connected(w->bus);
    ts_publisher_stop(w); /* publishes what is queued */
    if (bus_up) ts_bus_js_flush(w->bus, 2000);
    /* NATS gone, or a drain given up (requests to a target that is gone may
     * still be waiting on the I/O threads): close the connection, so that
     * they and the unsubscribes fail at once instead of timing out */
    if (!bus_up || w->drain_state == 3) ts_bus_close(w->bus);
    ts_live_stop(w);
    if (rc == TS_OK) ts_registry_worker_forget(w->live_reg, w->id);
    ts_info("worker %s: stopping after %" PRIu64 " ticks", w->id, w->tick);
    return rc;
}

void ts_worker_destroy(ts_worker_t *w)
{
    if (!w) return;
    ts_live_stop(w);
    ts_demux_stop(w); /* no input callback runs after this */
    ts_bus_sub_destroy(w->reg_sub);
    ts_bus_sub_destroy(w->ho_sub);
    ts_players_stop(w);
    ts_ghost_stop(w);
    while (w->nbind)
        ts_worker_unbind(w, w->bindings[w->nbind - 1]);
    ts_handover_free_all(w);
    ts_io_stop(w); /* runs the queued unsubscribes, frees unclaimed results */
    ts_publisher_stop(w);
    free(w->reap);
    ts_arena_free(&w->in_arena);
    if (w->ring) {
        ts_inbox_msg_t m;
        while (ts_ring_pop(w->ring, &m))
            ts_bus_held_free(m.msg);
        ts_ring_destroy(w->ring);
    }
    for (size_t i = 0; i < w->nchanges; i++)
        tessera__v1__registry_change__free_unpacked(w->changes[i], NULL);
    free(w->changes);
    free(w->bindings);
    view_clear(&w->view);
    ts_celltree_free(w->tree);
    ts_cellmap_free(&w->by_cell);
    ts_cellmap_free(&w->binding);
    ts_map_free(&w->by_gen);
    ts_demux_free(w); /* after every context is freed */
    ts_marks_free(w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cond);
    ts_bus_destroy(w->bus);
    ts_registry_destroy(w->reg);
    ts_registry_destroy(w->live_reg);
    free(w);
}
