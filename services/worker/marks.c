/* Tick marks: what a new owner needs to replay a cell's ticks exactly.
 *
 * The worker has one ordered consumer over the whole input stream and
 * applies its cells' messages in stream order, so "this instance ran tick N
 * having applied every input-stream message of its cells through stream
 * sequence S" describes tick N for all of its cells at once. Each acting
 * tick publishes that (a TickMark on
 * tessera.worker.<id>.marks.<world>.<instance>, stream TS_MARKS_<world>)
 * before anything the tick outputs, on the same connection, asynchronously
 * like every other publish; a checkpoint names the instance and tick it was
 * written at. A new owner replaying a cell from such a checkpoint reads that
 * instance's marks after the tick (an I/O thread, while the bind runs) and
 * re-runs them: the cell's input up to S, then one tick, per mark. A tick
 * the original missed has no mark, so it is not re-run.
 *
 * S is the highest stream sequence the tick thread has taken from the
 * consumer: the consumer delivers in stream order, so a bound cell has
 * every message of its own up to S, except after an input hand-off that
 * lost its place (a full ring rewinds the consumer), while the cell is
 * frozen for a handover, re-registered, or when a message reaches it late
 * after all. Such a cell is "released": the next mark lists it, and a
 * replay from a checkpoint before that mark goes by store times, as does a
 * replay whose marks are missing (a mark not published or not stored:
 * the chain of prev_tick has a hole; marks older than the stream keeps;
 * another input stream instance). A cell is anchored again by its next
 * checkpoint.
 *
 * Threads: publishing, releasing and anchoring run on the tick thread; the
 * publish outcome on a nats.c thread (a counter); reading and selecting a
 * cell's marks on the I/O threads, through a cache of the last few
 * instances read (a recovery binds many cells of a dead worker at once). */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"
#include "worker_internal.h"

/* A cached read of one instance's marks serves the binds of the next
 * seconds (the instance is dead: its marks do not change). */
#define MARKS_CACHE_US 3000000ULL
/* How long a read of an instance's marks may take. */
#define MARKS_READ_MS 3000

/* ---- tick thread --------------------------------------------------------- */

void ts_marks_release(ts_worker_t *w, ts_binding_t *b)
{
    if (!b->anchored) return;
    b->anchored = false;
    ts_marks_t *m = &w->marks;
    if (m->nreleased == m->cap_released) {
        size_t ncap = m->cap_released ? m->cap_released * 2 : 16;
        ts_cell_t *v = realloc(m->released, ncap * sizeof(*v));
        if (!v) { /* the chain gets a hole instead: every replay from here goes by store times */
            m->broken = true;
            return;
        }
        m->released = v;
        m->cap_released = ncap;
    }
    m->released[m->nreleased++] = b->zone->cell;
}

void ts_marks_took(ts_worker_t *w, uint64_t stream_seq)
{
    if (stream_seq > w->marks.through) w->marks.through = stream_seq;
}

void ts_marks_applying(ts_worker_t *w, ts_binding_t *b, uint64_t stream_seq)
{
    /* a message at or below the last mark's sequence: the cell ticked
     * without it there */
    if (b->anchored && stream_seq != 0 && stream_seq <= w->marks.marked_through &&
        stream_seq > b->zone->last_applied_seq)
        ts_marks_release(w, b);
}

/* Whether b's marks stop describing it at this tick. */
static bool not_marked(const ts_binding_t *b)
{
    return b->state != TS_BIND_ACTIVE || b->catching_up || b->restarting || b->resub_needed ||
           atomic_load(&b->ctx->stale);
}

void ts_marks_tick(ts_worker_t *w, uint64_t now_ns)
{
    ts_marks_t *m = &w->marks;
    uint64_t overflows = atomic_load(&w->dmx.overflows);
    int64_t stream = ts_demux_stream_id(w);
    /* a full ring dropped messages of some cell below what others took:
     * which cells, the tick thread does not know */
    bool all = overflows != m->overflows_seen || stream != m->stream;
    if (stream != m->stream) m->through = 0;
    m->overflows_seen = overflows;
    m->stream = stream;
    for (size_t i = 0; i < w->nbind; i++)
        if (all || not_marked(w->bindings[i])) ts_marks_release(w, w->bindings[i]);
    if (w->nbind == 0 && m->nreleased == 0) return; /* nothing ticks: nothing to describe */

    Tessera__V1__TickMark tm = TESSERA__V1__TICK_MARK__INIT;
    tm.tick = w->tick;
    /* a release that could not be noted: a hole in the chain instead */
    tm.prev_tick = m->broken ? w->tick : m->prev_tick;
    tm.through_seq = m->through;
    tm.clock_ns = now_ns;
    tm.input_stream = stream;
    Tessera__V1__CellId *ids = m->nreleased ? calloc(m->nreleased, sizeof(*ids)) : NULL;
    Tessera__V1__CellId **pids = m->nreleased ? calloc(m->nreleased, sizeof(*pids)) : NULL;
    bool queued = false;
    if (m->nreleased == 0 || (ids && pids)) {
        for (size_t i = 0; i < m->nreleased; i++) {
            ts_proto_cell_init(&ids[i], &m->released[i]);
            pids[i] = &ids[i];
        }
        tm.n_released = m->nreleased;
        tm.released = pids;
        uint8_t *buf = NULL;
        size_t len = 0;
        if (ts_proto_pack(&tm.base, &buf, &len) == TS_OK) {
            char subj[TS_SUBJECT_MAX + TS_INSTANCE_MAX + 32];
            ts_bus_marks_subject(subj, sizeof(subj), w->id, w->world.id, w->instance);
            ts_bus_hdr_t hdr = {.type = TS_TYPE_TICK_MARK, .seq = w->tick};
            queued = ts_publisher_push(w, subj, &hdr, buf, len, true, false);
        }
    }
    free(ids);
    free(pids);
    if (queued)
        m->broken = false;
    else /* the next mark's prev_tick names this one: replays find the hole */
        atomic_fetch_add(&m->failed, 1);
    m->nreleased = 0;
    m->prev_tick = w->tick;
    m->marked_through = m->through;
}

void ts_marks_on_outcome(ts_worker_t *w, bool ok)
{
    if (!ok) atomic_fetch_add(&w->marks.failed, 1);
}

/* ---- reading (I/O threads) ------------------------------------------------ */

struct ts_marks_cache {
    char subject[TS_SUBJECT_MAX + TS_INSTANCE_MAX + 32];
    uint64_t read_us; /* monotonic */
    bool ok;          /* the read finished */
    bool failed;      /* the read failed (not tried again while the cache lasts) */
    ts_tick_mark_t *v;
    size_t n, cap;
};

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct ts_marks_cache *c;
    uint64_t last_seq; /* done once a message at or after it came */
    bool done, nomem;
} read_ctx_t;

static void cache_clear(struct ts_marks_cache *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->v[i].released);
    free(c->v);
    c->v = NULL;
    c->n = c->cap = 0;
    c->ok = c->failed = false;
}

/* nats.c delivery thread: one mark. */
static void on_mark(void *ud, const ts_bus_msg_t *msg)
{
    read_ctx_t *r = ud;
    Tessera__V1__TickMark *tm =
        tessera__v1__tick_mark__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    uint64_t seq = ts_bus_msg_stream_seq(msg);
    pthread_mutex_lock(&r->mu);
    struct ts_marks_cache *c = r->c;
    if (tm && !r->done && c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 256;
        ts_tick_mark_t *v = realloc(c->v, ncap * sizeof(*v));
        if (v) {
            c->v = v;
            c->cap = ncap;
        }
    }
    if (tm && !r->done && c->n < c->cap) {
        ts_tick_mark_t *m = &c->v[c->n];
        *m = (ts_tick_mark_t){.tick = tm->tick,
                              .prev_tick = tm->prev_tick,
                              .through_seq = tm->through_seq,
                              .clock_ns = tm->clock_ns,
                              .input_stream = tm->input_stream};
        m->released = tm->n_released ? calloc(tm->n_released, sizeof(*m->released)) : NULL;
        if (tm->n_released && !m->released) r->nomem = true;
        for (size_t i = 0; m->released && i < tm->n_released; i++)
            if (ts_proto_cell_get(tm->released[i], &m->released[m->nreleased]) == TS_OK) m->nreleased++;
        c->n++;
    } else if (!r->done) {
        r->nomem = r->nomem || tm != NULL; /* an undecodable mark is a hole in the chain: skipped */
    }
    if (seq >= r->last_seq) {
        r->done = true;
        pthread_cond_signal(&r->cond);
    }
    pthread_mutex_unlock(&r->mu);
    if (tm) tessera__v1__tick_mark__free_unpacked(tm, NULL);
}

static int by_tick(const void *a, const void *b)
{
    const ts_tick_mark_t *x = a, *y = b;
    return x->tick < y->tick ? -1 : x->tick > y->tick;
}

/* Reads every stored mark on c->subject into c (blocking). */
static ts_status_t read_marks(ts_worker_t *w, struct ts_marks_cache *c)
{
    char stream[64];
    ts_bus_marks_stream(stream, sizeof(stream), w->world.id);
    ts_bus_msg_t *last = NULL;
    ts_status_t st = ts_bus_last_msg(w->bus, stream, c->subject, &last);
    if (st == TS_ERR_NOT_FOUND) {
        c->ok = true; /* none stored */
        return TS_OK;
    }
    if (st != TS_OK) return st;
    read_ctx_t r = {.c = c, .last_seq = ts_bus_msg_stream_seq(last)};
    ts_bus_msg_destroy(last);
    pthread_mutex_init(&r.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* ts_mono_deadline */
    pthread_cond_init(&r.cond, &ca);
    pthread_condattr_destroy(&ca);
    ts_bus_sub_t *sub = NULL;
    st = ts_bus_consume(w->bus, w->world.id, c->subject, 0, on_mark, &r, &sub);
    if (st == TS_OK) {
        struct timespec until;
        ts_mono_deadline(&until, MARKS_READ_MS * 1000000ULL);
        pthread_mutex_lock(&r.mu);
        while (!r.done)
            if (pthread_cond_timedwait(&r.cond, &r.mu, &until) != 0) break;
        bool done = r.done;
        r.done = true; /* nothing more goes into c */
        pthread_mutex_unlock(&r.mu);
        ts_bus_sub_destroy(sub); /* waits for a running callback */
        if (!done) st = TS_ERR_TIMEOUT;
        if (r.nomem) st = TS_ERR_NOMEM;
    }
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cond);
    if (st != TS_OK) return st;
    qsort(c->v, c->n, sizeof(*c->v), by_tick);
    c->ok = true;
    return TS_OK;
}

static bool lists(const ts_tick_mark_t *m, const ts_cell_t *cell)
{
    for (size_t i = 0; i < m->nreleased; i++)
        if (ts_cell_eq(&m->released[i], cell)) return true;
    return false;
}

const char *ts_marks_select(const ts_tick_mark_t *v, size_t nv, uint64_t after, int64_t stream_id,
                            const ts_cell_t *cell, ts_zone_mark_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t i = 0;
    while (i < nv && v[i].tick <= after)
        i++;
    if (nv == 0) return "no tick marks of its last owner are stored";
    if (i == nv) return NULL; /* it did not tick after the checkpoint */
    *out = calloc(nv - i, sizeof(**out));
    if (!*out) return "out of memory";
    uint64_t prev = after;
    for (size_t k = i; k < nv; k++) {
        const ts_tick_mark_t *m = &v[k];
        const char *why = NULL;
        if (m->tick == prev) continue; /* stored twice */
        if (k == i ? m->prev_tick > after : m->prev_tick != prev)
            why = "a tick mark of its last owner is missing";
        else if (m->input_stream != stream_id)
            why = "its last owner's tick marks are of another input stream instance";
        else if (lists(m, cell))
            why = "its last owner's tick marks stopped describing it after the checkpoint";
        if (why) {
            free(*out);
            *out = NULL;
            *n = 0;
            return why;
        }
        (*out)[(*n)++] = (ts_zone_mark_t){m->tick, m->through_seq, m->clock_ns};
        prev = m->tick;
    }
    return NULL;
}

/* Under cache_mu: the cache of subj, read if it is not there, older than
 * MARKS_CACHE_US or ends before tick `after` (read before the checkpoint
 * was written); the least recently read entry makes room. NULL if out of
 * memory. */
static struct ts_marks_cache *cached(ts_worker_t *w, const char *subj, uint64_t after)
{
    struct ts_marks_cache *c = NULL;
    for (size_t i = 0; i < TS_MARKS_CACHED && !c; i++) {
        struct ts_marks_cache *e = w->marks.cache[i];
        if (e && strcmp(e->subject, subj) == 0) c = e;
    }
    for (size_t i = 0; i < TS_MARKS_CACHED && !c; i++)
        if (!w->marks.cache[i]) c = w->marks.cache[i] = calloc(1, sizeof(*c));
    if (!c) { /* all taken: the least recently read one */
        c = w->marks.cache[0];
        for (size_t i = 1; i < TS_MARKS_CACHED; i++)
            if (c && w->marks.cache[i] && w->marks.cache[i]->read_us < c->read_us) c = w->marks.cache[i];
    }
    if (!c) return NULL;
    bool fresh = strcmp(c->subject, subj) == 0 && (c->ok || c->failed) &&
                 ts_mono_us() - c->read_us <= MARKS_CACHE_US &&
                 (c->failed || (c->n > 0 && c->v[c->n - 1].tick >= after));
    if (fresh) return c;
    cache_clear(c);
    ts_strlcpy(c->subject, subj, sizeof(c->subject));
    ts_status_t st = read_marks(w, c);
    c->read_us = ts_mono_us();
    if (st != TS_OK) {
        ts_warn("cannot read the tick marks on %s: %s", subj, ts_status_str(st));
        cache_clear(c);
        c->failed = true;
    }
    return c;
}

const char *ts_marks_for_cell(ts_worker_t *w, const char *owner, const char *instance, uint64_t after_tick,
                              int64_t stream_id, const ts_cell_t *cell, ts_zone_mark_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!owner || !owner[0] || !instance || !instance[0]) return "its checkpoint names no tick marks";
    char subj[sizeof(((struct ts_marks_cache *)0)->subject)];
    ts_bus_marks_subject(subj, sizeof(subj), owner, w->world.id, instance);
    pthread_mutex_lock(&w->marks.cache_mu);
    struct ts_marks_cache *c = cached(w, subj, after_tick);
    const char *why;
    if (!c)
        why = "out of memory";
    else if (c->failed)
        why = "its last owner's tick marks cannot be read";
    else
        why = ts_marks_select(c->v, c->n, after_tick, stream_id, cell, out, n);
    pthread_mutex_unlock(&w->marks.cache_mu);
    return why;
}

void ts_marks_init(ts_worker_t *w)
{
    pthread_mutex_init(&w->marks.cache_mu, NULL);
    atomic_init(&w->marks.failed, 0);
}

void ts_marks_free(ts_worker_t *w)
{
    for (size_t i = 0; i < TS_MARKS_CACHED; i++) {
        if (w->marks.cache[i]) cache_clear(w->marks.cache[i]);
        free(w->marks.cache[i]);
    }
    free(w->marks.released);
    pthread_mutex_destroy(&w->marks.cache_mu);
}
