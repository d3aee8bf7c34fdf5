/* Input hand-off from nats.c's delivery thread to the tick thread: one
 * ordered JetStream consumer per worker over the world's whole input
 * stream, demultiplexed by cell.
 *
 * Each cell the worker binds (or receives in a handover) registers a
 * context with the demultiplexer (`w->dmx`): the cell, the stream sequence
 * it has had everything up to (`delivered`, at first the sequence it starts
 * after) and the generation its messages are tagged with. The delivery
 * callback parses the cell out of the subject (no allocation), looks it up
 * in a table keyed by cell and passes the message on to every context of
 * that cell whose `delivered` is below its sequence; a message of a cell
 * nobody here registered (most of the world) is dropped. The hand-off is as
 * before: the message is kept without copying it and pushed into a bounded
 * lock-free ring, tagged with the context's generation, or into the
 * context's `held` list (under the worker mutex) while the cell is not
 * bound yet. The table is under `dmx.mu`, which the delivery thread takes
 * once per message; it is contended only by registrations and releases (a
 * hash update each) and a restart's bookkeeping, never held across I/O.
 * Lock order: dmx.mu, then w->mu.
 *
 * Invariants:
 *   - the consumer delivers in stream order without gaps; `covered` is the
 *     sequence up to which every message has been passed on or dropped, and
 *     every message above it is still to come;
 *   - a context sees its cell's messages in stream order, each once: it
 *     never gets a message at or below `delivered`;
 *   - a context registered below `covered` may have missed input between
 *     its start and `covered`: the table keeps, per cell, the last sequence
 *     the consumer passed (`last_seen`, one slot per cell of the world made
 *     at its first message), so the context has a gap (`gap_to`) only if
 *     its cell had a message in there (or the consumer never saw that
 *     stretch: `seen_from`). Its owner then asks whether that input is
 *     needed (do_bind reads the cell's last input; a handover target needs
 *     only what follows its Diff, s2 >= gap_to) and, if so, rewinds it: the context drops everything
 * (`awaiting`) until the consumer is created again from (its start + 1) — rewinds asked close together
 *     coalesce to the lowest start — and `delivered` drops what the other
 *     cells already had;
 *   - a full ring is a rewind too: the context goes back to just before the
 *     message that did not fit and waits for the consumer to start there
 *     again. Nothing is lost: the stream still has it.
 *
 * The consumer reads one instance of the input stream (`dmx.stream_id`,
 * ts_bus_sub_stream_id): a stream created again after a lost store has
 * sequences from 1 again, so when the consumer finds another instance every
 * context is marked `stale` (and awaits): its owner registers again, at its
 * position if that refers to the instance there is, else from the new
 * one's start (worker.c). */
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
static bool from_worker(const char *subj)
{
    size_t n = subj ? strlen(subj) : 0;
    return n >= 2 && subj[n - 2] == '.' && subj[n - 1] == 'w';
}

/* Cells in a hand-on: a worker's message (a Departure, a Transfer) reached
 * them less than HOT_US ago, so a gateway's input to them may be for an
 * entity that just left and must be forwarded; those wake the tick thread
 * too. A small table keyed by the cell's context (one worker per process);
 * a collision or a stale entry only costs a wake. */
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

/* One cell in the demultiplexer's table: its registered contexts, and the
 * last sequence of it the consumer passed (registered or not), which tells
 * a cell registered behind the consumer whether it missed anything. Made
 * at a cell's first message or registration (one allocation per cell of
 * the world, not per message) and kept until the worker stops. */
typedef struct {
    ts_sub_ctx_t *ctxs; /* a list by next_same */
    uint64_t last_seen;
} dmx_slot_t;

/* Under dmx.mu: the cell's slot, made if it has none (NULL if out of
 * memory). */
static dmx_slot_t *get_slot(ts_demux_t *d, const ts_cell_t *cell)
{
    dmx_slot_t *slot = ts_cellmap_get(&d->by_cell, cell);
    if (slot) return slot;
    slot = calloc(1, sizeof(*slot));
    if (slot && ts_cellmap_put(&d->by_cell, cell, slot) != TS_OK) {
        free(slot);
        slot = NULL;
    }
    return slot;
}

/* The callback context of one consumer: messages of a consumer that was
 * replaced since (its token is not the current one) are dropped. */
struct ts_dmx_feed {
    ts_worker_t *w;
    uint64_t token;
};

/* Under dmx.mu: the consumer is to be created again from stream sequence
 * from at the latest (the tick thread asks the I/O thread). */
static void want_from(ts_demux_t *d, uint64_t from)
{
    if (d->rewind_from == 0 || from < d->rewind_from) d->rewind_from = from;
    atomic_store(&d->want, true);
}

/* Under dmx.mu: ctx cannot take the message at seq (the ring is full, or no
 * memory): it goes back to just before it and waits for a rewind. */
static void ctx_overflow(ts_demux_t *d, ts_sub_ctx_t *ctx, uint64_t seq)
{
    ctx->delivered = seq - 1;
    ctx->awaiting = true;
    want_from(d, seq);
    atomic_fetch_add(&d->overflows, 1);
}

/* Under dmx.mu: hands msg to ctx (held while not bound, else the ring).
 * Returns false if it could not (msg is then freed and ctx awaits a
 * rewind). */
static bool hand_off(ts_worker_t *w, ts_sub_ctx_t *ctx, ts_inbox_msg_t *msg)
{
    if (atomic_load(&ctx->hold)) {
        pthread_mutex_lock(&w->mu);
        bool held = atomic_load(&ctx->hold) && ts_inbox_push(&ctx->held, msg);
        bool still = atomic_load(&ctx->hold);
        pthread_mutex_unlock(&w->mu);
        if (held) return true;
        if (still) { /* out of memory */
            ts_bus_held_free(msg->msg);
            ctx_overflow(&w->dmx, ctx, msg->msg.stream_seq);
            return false;
        }
    }
    if (!ts_ring_push(w->ring, msg)) {
        ts_bus_held_free(msg->msg);
        ctx_overflow(&w->dmx, ctx, msg->msg.stream_seq);
        return false;
    }
    return true;
}

/* The stream's clock is estimated from the messages of the last one or two
 * windows this long: an old sample does not keep a clock that drifted. */
#define CLOCK_WINDOW_US 10000000ULL

/* Under dmx.mu: a message stored at time_ns arrived now. */
static void clock_sample(ts_demux_t *d, uint64_t time_ns)
{
    if (time_ns == 0) return;
    uint64_t mono = ts_mono_ns();
    int64_t off = (int64_t)(time_ns - mono);
    if (mono / 1000 - d->clock_window_us >= CLOCK_WINDOW_US) {
        d->clock_off_prev = d->clock_off;
        d->clock_known_prev = d->clock_known;
        d->clock_known = false;
        d->clock_window_us = mono / 1000;
    }
    if (!d->clock_known || off > d->clock_off) d->clock_off = off;
    d->clock_known = true;
}

uint64_t ts_demux_server_now_ns(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    if (!d->inited) return 0;
    pthread_mutex_lock(&d->mu);
    bool known = d->clock_known || d->clock_known_prev;
    int64_t off = d->clock_known ? d->clock_off : d->clock_off_prev;
    if (d->clock_known && d->clock_known_prev && d->clock_off_prev > off) off = d->clock_off_prev;
    pthread_mutex_unlock(&d->mu);
    return known ? ts_mono_ns() + (uint64_t)off : 0;
}

/* nats.c delivery thread: one uncontended lock, no allocation (but a cell's
 * slot at its first message, and a copy when two contexts of one cell both
 * want the message). */
static void on_input(void *ud, const ts_bus_msg_t *m)
{
    struct ts_dmx_feed *f = ud;
    ts_worker_t *w = f->w;
    ts_demux_t *d = &w->dmx;
    uint64_t seq = ts_bus_msg_stream_seq(m);
    const char *subj = ts_bus_msg_subject(m);
    ts_cell_t cell;
    ts_subject_kind_t kind;
    bool parsed = subj && ts_subject_parse(subj, &cell, &kind) == TS_OK && kind == TS_SUBJ_INPUT;
    bool from_w = from_worker(subj), wake = false;
    pthread_mutex_lock(&d->mu);
    if (f->token != d->token) { /* a consumer replaced since */
        pthread_mutex_unlock(&d->mu);
        return;
    }
    if (seq > d->covered) d->covered = seq;
    clock_sample(d, ts_bus_msg_time_ns(m));
    size_t want = 0;
    dmx_slot_t *slot = parsed ? get_slot(d, &cell) : NULL;
    if (slot && seq > slot->last_seen) slot->last_seen = seq;
    ts_sub_ctx_t *head = slot ? slot->ctxs : NULL;
    for (ts_sub_ctx_t *c = head; c; c = c->next_same)
        want += !c->awaiting && seq > c->delivered;
    if (want == 0) atomic_fetch_add_explicit(&d->passed, 1, memory_order_relaxed);
    for (ts_sub_ctx_t *c = head; c && want > 0; c = c->next_same) {
        if (c->awaiting || seq <= c->delivered) continue;
        /* the last one takes the message over, the others get copies */
        ts_inbox_msg_t msg = {c->gen, --want == 0 ? ts_bus_msg_hold(m) : ts_bus_msg_copy(m)};
        if (!msg.msg.impl) {
            ctx_overflow(d, c, seq);
            continue;
        }
        c->delivered = seq;
        /* decided before the hand-off: the tick thread may free the message
         * once it has it */
        bool relay = from_w;
        if (relay)
            hot_mark(c);
        else
            relay = hot_now(c);
        if (hand_off(w, c, &msg) && relay) wake = true;
    }
    pthread_mutex_unlock(&d->mu);
    /* a worker's message (a Departure, a Transfer) is a link in an
     * entity's hand-on to another cell, and a gateway's input to a cell in a
     * hand-on may have to be forwarded: the tick thread relays them before
     * the next tick; other inputs wait for the next pass or tick */
    if (wake) ts_worker_wake(w); /* a lock only when nothing was waiting */
}

/* ---- registration ------------------------------------------------------- */

ts_status_t ts_demux_init(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    pthread_mutex_init(&d->mu, NULL);
    ts_cellmap_init(&d->by_cell);
    atomic_init(&d->want, false);
    atomic_init(&d->overflows, 0);
    atomic_init(&d->passed, 0);
    d->inited = true;
    return TS_OK;
}

ts_status_t ts_worker_subscribe_input(ts_worker_t *w, const ts_cell_t *cell, uint64_t after_seq, bool hold,
                                      ts_sub_ctx_t **ctx)
{
    return ts_worker_subscribe_input_at(w, cell, 0, after_seq, hold, ctx);
}

ts_status_t ts_worker_subscribe_input_at(ts_worker_t *w, const ts_cell_t *cell, int64_t stream_id,
                                         uint64_t after_seq, bool hold, ts_sub_ctx_t **ctx)
{
    ts_demux_t *d = &w->dmx;
    ts_sub_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) return TS_ERR_NOMEM;
    c->w = w;
    c->cell = *cell;
    c->gen = atomic_fetch_add(&w->next_gen, 1) + 1;
    atomic_init(&c->hold, hold);
    atomic_init(&c->stale, false);
    ts_status_t st = TS_OK;
    pthread_mutex_lock(&d->mu);
    if (d->stream_id == 0 || d->stopped) {
        st = TS_ERR_UNAVAILABLE; /* the input stream's instance is not known (yet) */
    } else if (stream_id != 0 && stream_id != d->stream_id) {
        st = TS_ERR_STALE;
    } else {
        dmx_slot_t *slot = get_slot(d, cell);
        c->stream_id = d->stream_id;
        c->delivered = after_seq;
        if (!slot) {
            st = TS_ERR_NOMEM;
        } else if (after_seq < d->covered) {
            /* (after_seq, covered] went by: a message of the cell in there
             * (or a part the consumer never saw) is for the owner to decide
             * about (see the top) */
            if (after_seq + 1 < d->seen_from)
                c->gap_to = d->covered;
            else if (slot->last_seen > after_seq)
                c->gap_to = slot->last_seen;
            c->delivered = d->covered;
        }
        if (slot) {
            c->next_same = slot->ctxs;
            slot->ctxs = c;
            c->registered = true;
        }
    }
    pthread_mutex_unlock(&d->mu);
    if (st != TS_OK) {
        free(c);
        return st;
    }
    *ctx = c;
    return TS_OK;
}

void ts_worker_input_rewind(ts_worker_t *w, ts_sub_ctx_t *ctx, uint64_t after_seq)
{
    ts_demux_t *d = &w->dmx;
    pthread_mutex_lock(&d->mu);
    pthread_mutex_lock(&w->mu);
    ts_inbox_t dropped = ctx->held;
    ctx->held = (ts_inbox_t){0};
    pthread_mutex_unlock(&w->mu);
    ctx->delivered = after_seq;
    ctx->gap_to = 0;
    if (after_seq < d->covered) {
        ctx->awaiting = true;
        want_from(d, after_seq + 1);
    }
    pthread_mutex_unlock(&d->mu);
    ts_inbox_free(&dropped);
}

void ts_worker_free_ctx(ts_sub_ctx_t *ctx)
{
    if (!ctx) return;
    if (ctx->registered) {
        ts_demux_t *d = &ctx->w->dmx;
        pthread_mutex_lock(&d->mu);
        dmx_slot_t *slot = ts_cellmap_get(&d->by_cell, &ctx->cell);
        for (ts_sub_ctx_t **pp = slot ? &slot->ctxs : NULL; pp && *pp; pp = &(*pp)->next_same)
            if (*pp == ctx) {
                *pp = ctx->next_same;
                break;
            }
        pthread_mutex_unlock(&d->mu);
    }
    ts_inbox_free(&ctx->held);
    free(ctx);
}

/* ---- the consumer (I/O thread) ---------------------------------------- */

/* The consumer's filter: the input stream's own subject set. */
static void input_filter(char *buf, size_t cap, uint32_t world)
{
    snprintf(buf, cap, "cell.%" PRIu32 ".*.*.*.*.input.*", world);
}

typedef struct {
    uint64_t from;
    bool stale;
} mark_arg_t;

/* Under dmx.mu: after a restart from a->from, the contexts that waited
 * for it take messages again; with a->stale every context reads a stream
 * that is gone and waits for its owner to register again. */
static void mark_cell(void *ud, const ts_cell_t *cell, void *val)
{
    const mark_arg_t *a = ud;
    dmx_slot_t *slot = val;
    (void)cell;
    if (a->stale) slot->last_seen = 0;
    for (ts_sub_ctx_t *c = slot->ctxs; c; c = c->next_same) {
        if (a->stale) {
            c->awaiting = true;
            atomic_store(&c->stale, true);
        } else if (c->awaiting && !atomic_load(&c->stale) && c->delivered + 1 >= a->from) {
            c->awaiting = false;
        }
    }
}

ts_status_t ts_demux_restart(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    int64_t floor_id = 0;
    uint64_t floor_seq = 0;
    pthread_mutex_lock(&d->mu);
    bool first = d->stream_id == 0;
    pthread_mutex_unlock(&d->mu);
    if (first) { /* nothing registered yet: start at the stream's end */
        ts_status_t st = ts_bus_input_floor(w->bus, w->world.id, &floor_id, &floor_seq);
        if (st != TS_OK) return st;
    }
    struct ts_dmx_feed *f = calloc(1, sizeof(*f));
    if (!f) return TS_ERR_NOMEM;
    pthread_mutex_lock(&d->mu);
    if (d->stopped) {
        pthread_mutex_unlock(&d->mu);
        free(f);
        return TS_ERR_CLOSED;
    }
    if (d->stream_id == 0 && first) {
        d->stream_id = floor_id;
        d->covered = floor_seq;
        d->seen_from = floor_seq + 1;
    }
    uint64_t from = d->rewind_from;
    d->rewind_from = 0;
    atomic_store(&d->want, false);
    if (from == 0 || from > d->covered + 1) from = d->covered + 1; /* a restart: on from where it was */
    int64_t stream_id = d->stream_id;
    ts_bus_sub_t *old = d->sub;
    struct ts_dmx_feed *old_feed = d->feed;
    d->sub = NULL;
    d->feed = NULL;
    f->w = w;
    f->token = ++d->token; /* the old consumer's messages are dropped from here on */
    d->covered = from - 1;
    if (from < d->seen_from) d->seen_from = from;
    mark_arg_t a = {.from = from, .stale = false};
    ts_cellmap_each(&d->by_cell, mark_cell, &a);
    pthread_mutex_unlock(&d->mu);

    ts_bus_sub_destroy(old); /* waits for its running callback */
    free(old_feed);
    char filter[TS_SUBJECT_MAX];
    input_filter(filter, sizeof(filter), w->world.id);
    ts_bus_sub_t *sub = NULL;
    ts_status_t st = ts_bus_consume_at(w->bus, w->world.id, filter, stream_id, from, on_input, f, &sub);
    if (st == TS_ERR_STALE) {
        /* the stream is another instance (JetStream lost its store): every
         * position here is one of the instance that is gone */
        pthread_mutex_lock(&d->mu);
        a = (mark_arg_t){.stale = true};
        ts_cellmap_each(&d->by_cell, mark_cell, &a);
        d->stream_id = 0; /* registrations wait for the new instance */
        d->covered = 0;
        d->seen_from = 1;
        pthread_mutex_unlock(&d->mu);
        st = ts_bus_consume_at(w->bus, w->world.id, filter, 0, 1, on_input, f, &sub);
        if (st == TS_OK) {
            ts_warn("input stream is another instance now: consuming it from its start; every cell here "
                    "consumes it again");
            pthread_mutex_lock(&d->mu);
            d->stream_id = ts_bus_sub_stream_id(sub);
            pthread_mutex_unlock(&d->mu);
            from = 1;
        }
    }
    if (st != TS_OK) {
        ts_warn("cannot consume the input stream from seq %" PRIu64 ": %s; trying again", from,
                ts_status_str(st));
        pthread_mutex_lock(&d->mu);
        want_from(d, from);
        if (d->stream_id == 0) d->covered = 0;
        pthread_mutex_unlock(&d->mu);
        free(f);
        return st;
    }
    pthread_mutex_lock(&d->mu);
    bool keep = !d->stopped && f->token == d->token;
    if (keep) {
        d->sub = sub;
        d->feed = f;
    }
    d->restarts++;
    pthread_mutex_unlock(&d->mu);
    if (!keep) {
        ts_bus_sub_destroy(sub);
        free(f);
        return TS_ERR_CLOSED;
    }
    ts_debug("input consumer (re)started from seq %" PRIu64, from);
    return TS_OK;
}

/* How long the consumer may stay at one sequence while the stream has more
 * before it is created again. */
#define DMX_STALL_US 3000000ULL

void ts_demux_check_progress(ts_worker_t *w, int64_t stream_id, uint64_t stream_last_seq)
{
    ts_demux_t *d = &w->dmx;
    pthread_mutex_lock(&d->mu);
    bool behind =
        d->sub && stream_id == d->stream_id && stream_last_seq > d->covered && !atomic_load(&d->want);
    uint64_t now = ts_mono_us();
    if (!behind || d->covered != d->watch_covered || d->watch_since_us == 0) {
        d->watch_covered = d->covered;
        d->watch_since_us = now;
    } else if (now - d->watch_since_us >= DMX_STALL_US) {
        /* a consumer whose server side stalled (its leader moved to a node
         * still catching up, say) delivers nothing until the client library
         * misses its heartbeats; every cell here waits for it */
        ts_warn("input consumer still at seq %" PRIu64 " after %.1f s while the stream is at %" PRIu64
                "; creating it again from there",
                d->covered, (double)(now - d->watch_since_us) / 1e6, stream_last_seq);
        want_from(d, d->covered + 1);
        d->watch_since_us = now;
    }
    pthread_mutex_unlock(&d->mu);
}

bool ts_demux_wanted(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    if (atomic_load(&d->want)) return true;
    pthread_mutex_lock(&d->mu);
    bool stopped = d->sub && ts_bus_sub_stopped(d->sub);
    if (stopped) atomic_store(&d->want, true); /* from where it was (or the new instance) */
    pthread_mutex_unlock(&d->mu);
    return stopped;
}

void ts_demux_want_restart(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    pthread_mutex_lock(&d->mu);
    atomic_store(&d->want, true);
    pthread_mutex_unlock(&d->mu);
}

int64_t ts_demux_stream_id(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    pthread_mutex_lock(&d->mu);
    int64_t id = d->stream_id;
    pthread_mutex_unlock(&d->mu);
    return id;
}

void ts_demux_stop(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    if (!d->inited) return;
    pthread_mutex_lock(&d->mu);
    d->stopped = true;
    ts_bus_sub_t *sub = d->sub;
    struct ts_dmx_feed *f = d->feed;
    d->sub = NULL;
    d->feed = NULL;
    d->token++;
    pthread_mutex_unlock(&d->mu);
    ts_bus_sub_destroy(sub);
    free(f);
}

void ts_demux_free(ts_worker_t *w)
{
    ts_demux_t *d = &w->dmx;
    if (!d->inited) return;
    ts_demux_stop(w);
    ts_cellmap_clear(&d->by_cell, free); /* the slots; the contexts belong to their owners */
    pthread_mutex_destroy(&d->mu);
    d->inited = false;
}
