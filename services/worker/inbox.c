/* Input hand-off from nats.c's delivery threads to the tick thread.
 *
 * Each bound cell has an ordered JetStream consumer on <cell>.input that
 * starts after the zone's last applied stream sequence. Its callback keeps
 * the message without copying it and pushes it into a bounded lock-free ring
 * (no allocation, no lock), tagged with the subscription's generation so a
 * message of a binding that was dropped or restarted since is ignored. A
 * consumer whose context is still `hold` (a cell not bound yet) keeps its
 * messages in the context instead, under the worker mutex. If the ring is
 * full the consumer drops what follows (`overflow`) and the tick thread
 * restarts it after the last applied sequence: nothing is lost, the stream
 * still has it.
 *
 * A consumer reads one instance of the input stream (ctx->stream_id): the
 * bus delivers no message of another (a stream created again after a lost
 * store), so a binding's last_applied_seq is always a sequence of its
 * consumer's instance. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

bool ts_inbox_push(ts_inbox_t *in, const ts_inbox_msg_t *m)
{
    if (in->n == in->cap) {
        size_t ncap = in->cap ? in->cap * 2 : 64;
        ts_inbox_msg_t *v = realloc(in->v, ncap * sizeof(*v));
        if (!v) return false;
        in->v = v;
        in->cap = ncap;
    }
    in->v[in->n++] = *m;
    return true;
}

void ts_inbox_free(ts_inbox_t *in)
{
    for (size_t i = 0; i < in->n; i++)
        ts_bus_held_free(in->v[i].msg);
    free(in->v);
    *in = (ts_inbox_t){0};
}

void ts_worker_wake(ts_worker_t *w)
{
    /* already signalled and not yet taken: the tick thread will see it */
    if (atomic_exchange(&w->wake, true)) return;
    pthread_mutex_lock(&w->mu);
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

/* Whether the message was published by a worker: its subject ends in the
 * workers' origin token (".w"). */
static bool from_worker(const ts_bus_msg_t *m)
{
    const char *subj = ts_bus_msg_subject(m);
    size_t n = subj ? strlen(subj) : 0;
    return n >= 2 && subj[n - 2] == '.' && subj[n - 1] == 'w';
}

/* Cells in a hand-on: a worker's message (a Departure, a Transfer) reached
 * them less than HOT_US ago, so a gateway's input to them may be for an
 * entity that just left and must be forwarded; those wake the tick thread
 * too. A small table keyed by the consumer's context (one worker per
 * process); a collision or a stale entry only costs a wake. */
#define HOT_SLOTS 256
#define HOT_US 100000ULL
static struct {
    _Atomic(const ts_sub_ctx_t *) ctx;
    _Atomic uint64_t until_us;
} hot[HOT_SLOTS];

static size_t hot_slot(const ts_sub_ctx_t *ctx)
{
    return (size_t)(ts_mix64((uint64_t)(uintptr_t)ctx) % HOT_SLOTS);
}

static void hot_mark(const ts_sub_ctx_t *ctx)
{
    size_t i = hot_slot(ctx);
    atomic_store_explicit(&hot[i].until_us, ts_mono_us() + HOT_US, memory_order_relaxed);
    atomic_store_explicit(&hot[i].ctx, ctx, memory_order_relaxed);
}

static bool hot_now(const ts_sub_ctx_t *ctx)
{
    size_t i = hot_slot(ctx);
    return atomic_load_explicit(&hot[i].ctx, memory_order_relaxed) == ctx &&
           ts_mono_us() < atomic_load_explicit(&hot[i].until_us, memory_order_relaxed);
}

/* nats.c delivery thread: no copy, no allocation, no lock on the usual path. */
static void on_input(void *ud, const ts_bus_msg_t *m)
{
    ts_sub_ctx_t *ctx = ud;
    ts_worker_t *w = ctx->w;
    if (atomic_load_explicit(&ctx->overflow, memory_order_relaxed)) return; /* restarted later */
    /* decided before the hand-off: the tick thread may free m once it has it */
    bool relay = from_worker(m);
    if (relay)
        hot_mark(ctx);
    else
        relay = hot_now(ctx);
    ts_inbox_msg_t msg = {ctx->gen, ts_bus_msg_hold(m)};
    if (atomic_load(&ctx->hold)) {
        pthread_mutex_lock(&w->mu);
        bool held = atomic_load(&ctx->hold) && ts_inbox_push(&ctx->held, &msg);
        pthread_mutex_unlock(&w->mu);
        if (held) return;
        if (atomic_load(&ctx->hold)) { /* out of memory: drop and restart */
            ts_bus_held_free(msg.msg);
            atomic_store(&ctx->overflow, true);
            return;
        }
    }
    if (!ts_ring_push(w->ring, &msg)) {
        ts_bus_held_free(msg.msg);
        atomic_store(&ctx->overflow, true);
        return;
    }
    /* a worker's message (a Departure, a Transfer) is a link in an
     * entity's hand-on to another cell, and a gateway's input to a cell in a
     * hand-on may have to be forwarded: the tick thread relays them before
     * the next tick; other inputs wait for the next pass or tick */
    if (relay) ts_worker_wake(w); /* a lock only when nothing was waiting */
}

ts_status_t ts_worker_subscribe_input(ts_worker_t *w, const ts_cell_t *cell, uint64_t after_seq, bool hold,
                                      ts_sub_ctx_t **ctx, ts_bus_sub_t **sub)
{
    return ts_worker_subscribe_input_at(w, cell, 0, after_seq, hold, ctx, sub);
}

ts_status_t ts_worker_subscribe_input_at(ts_worker_t *w, const ts_cell_t *cell, int64_t stream_id,
                                         uint64_t after_seq, bool hold, ts_sub_ctx_t **ctx,
                                         ts_bus_sub_t **sub)
{
    ts_sub_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) return TS_ERR_NOMEM;
    c->w = w;
    c->cell = *cell;
    c->gen = atomic_fetch_add(&w->next_gen, 1) + 1;
    atomic_init(&c->hold, hold);
    atomic_init(&c->overflow, false);
    char subj[TS_SUBJECT_MAX];
    ts_subject_input_filter(subj, sizeof(subj), cell);
    ts_status_t st = ts_bus_consume_at(w->bus, w->world.id, subj, stream_id, after_seq ? after_seq + 1 : 0,
                                       on_input, c, sub);
    if (st != TS_OK) {
        if (st != TS_ERR_STALE) ts_error("cannot consume %s: %s", subj, ts_status_str(st));
        free(c);
        return st;
    }
    c->stream_id = ts_bus_sub_stream_id(*sub);
    *ctx = c;
    return TS_OK;
}

void ts_worker_free_ctx(ts_sub_ctx_t *ctx)
{
    if (!ctx) return;
    ts_inbox_free(&ctx->held);
    free(ctx);
}
