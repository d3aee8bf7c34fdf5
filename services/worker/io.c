/* The worker's two helper threads.
 *
 * The I/O thread runs every step that waits on the network so the tick
 * thread never does: full registry reads (asked for, or when the version it
 * checks once a second moved), binding a cell (read its checkpoint,
 * register it for its input, held, and read its last input), creating the
 * worker's input consumer again (a rewind, inbox.c), registering a cell
 * again after the input stream was replaced, the PreCopy request to a
 * handover target and the drain request. Jobs come in through a queue
 * (bounded by the cells this worker has: one job per cell at a time, plus
 * one resync and one consumer restart) and results go back to the tick thread through a list under
 * the worker's mutex, with a wake-up.
 *
 * The liveness thread refreshes `ts:worker:<id>:alive` with this process's
 * instance token on its own Redis connection every worker.hb_ms, whatever
 * the tick does: a slow worker is never mistaken for a dead one. If another
 * process took the id (the key holds another token) it sets `fenced` and the
 * worker stops acting. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define VERSION_CHECK_MS 1000
#define DRAIN_REQUEST_MS 2000
#define RECONNECT_CHECK_MS 50
#define RECONNECT_CHECK_FOR_MS 2000 /* then only the once-a-second check (JetStream may be off) */

ts_io_job_t *ts_io_job_new(ts_io_kind_t kind)
{
    ts_io_job_t *job = calloc(1, sizeof(*job));
    if (job) job->kind = kind;
    return job;
}

void ts_io_job_free(ts_io_job_t *job)
{
    if (!job) return;
    ts_worker_free_ctx(job->ctx);
    ts_zone_destroy(job->zone);
    free(job->marks);
    free(job->cells);
    if (job->req) tessera__v1__handover__free_unpacked(job->req, NULL);
    free(job->req_reply);
    free(job->buf);
    free(job);
}

void ts_io_submit(ts_worker_t *w, ts_io_job_t *job)
{
    pthread_mutex_lock(&w->io_mu);
    job->next = NULL;
    if (w->io_tail)
        w->io_tail->next = job;
    else
        w->io_head = job;
    w->io_tail = job;
    w->io_queued++;
    pthread_cond_signal(&w->io_cond);
    pthread_mutex_unlock(&w->io_mu);
}

void ts_worker_request_resync(ts_worker_t *w)
{
    if (w->view.resync_pending) return;
    ts_io_job_t *job = ts_io_job_new(TS_IO_RESYNC);
    if (!job) return;
    w->view.resync_pending = true;
    ts_io_submit(w, job);
}

ts_io_job_t *ts_io_take_done(ts_worker_t *w)
{
    pthread_mutex_lock(&w->mu);
    ts_io_job_t *head = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return head;
}

static void post_done(ts_worker_t *w, ts_io_job_t *job)
{
    pthread_mutex_lock(&w->mu);
    job->next = NULL;
    if (w->done_tail)
        w->done_tail->next = job;
    else
        w->done_head = job;
    w->done_tail = job;
    atomic_store(&w->wake, true);
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

/* The version, then every cell. The two are separate reads: a registry lost
 * between them (FLUSHALL) would pair a version from before with the empty or
 * partial cell set from after, and the tick thread would let go of every cell
 * missing from it. The version is read again after the cells: if it went back
 * the read failed, and the next version check reads the lost registry as
 * such. (A version that moved forward is fine: the cells are newer, and the
 * changes in between apply again harmlessly.) */
static void do_resync(ts_worker_t *w, ts_io_job_t *job)
{
    uint64_t after = 0;
    pthread_mutex_lock(&w->reg_mu);
    job->status = ts_registry_version(w->reg, w->world.id, &job->version);
    if (job->status == TS_OK) job->status = ts_registry_cells(w->reg, w->world.id, &job->cells, &job->ncells);
    if (job->status == TS_OK) job->status = ts_registry_version(w->reg, w->world.id, &after);
    pthread_mutex_unlock(&w->reg_mu);
    if (job->status == TS_OK && after < job->version) {
        ts_warn("registry version went from %" PRIu64 " to %" PRIu64
                " while reading every cell (the registry "
                "was lost?); ignoring that read",
                job->version, after);
        job->status = TS_ERR_UNAVAILABLE;
    }
}

static Tessera__V1__Checkpoint *read_checkpoint(ts_worker_t *w, const char *stream, const char *subj,
                                                ts_status_t *st)
{
    ts_bus_msg_t *m = NULL;
    *st = ts_bus_last_msg(w->bus, stream, subj, &m);
    if (*st != TS_OK) return NULL;
    Tessera__V1__Checkpoint *cp =
        tessera__v1__checkpoint__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    ts_bus_msg_destroy(m);
    if (!cp) *st = TS_ERR_MALFORMED;
    return cp;
}

/* Loads the cell's latest checkpoint (all its parts) into z. A part that
 * belongs to another generation (a newer checkpoint being written) means
 * reading again. Returns TS_ERR_NOT_FOUND if the cell has none. */
/* Who wrote a checkpoint: its tick marks follow it (marks.c). */
typedef struct {
    char owner[TS_WORKER_ID_MAX];
    char instance[TS_INSTANCE_MAX];
    uint64_t tick;
} ckpt_writer_t;

static ts_status_t try_load_checkpoint(ts_worker_t *w, ts_zone_t *z, ckpt_writer_t *writer)
{
    char stream[64], head[TS_SUBJECT_MAX], subj[TS_SUBJECT_MAX + 48];
    ts_bus_ckpt_stream(stream, sizeof(stream), w->world.id);
    ts_subject_cell(head, sizeof(head), &z->cell, TS_SUBJ_CHECKPOINT);
    ts_status_t st;
    Tessera__V1__Checkpoint *cp = read_checkpoint(w, stream, head, &st);
    if (!cp) return st;
    uint32_t parts = cp->parts > 1 ? cp->parts : 1;
    uint64_t gen = cp->generation, seq = cp->last_applied_seq;
    size_t entities = cp->n_entities;
    ts_strlcpy(writer->owner, cp->owner ? cp->owner : "", sizeof(writer->owner));
    ts_strlcpy(writer->instance, cp->instance ? cp->instance : "", sizeof(writer->instance));
    writer->tick = cp->tick;
    st = ts_zone_load_checkpoint(z, cp, false, 0);
    for (uint32_t i = 1; i < parts && st == TS_OK; i++) {
        tessera__v1__checkpoint__free_unpacked(cp, NULL);
        snprintf(subj, sizeof(subj), "%s.%" PRIu64 ".%u", head, gen % 2, i);
        cp = read_checkpoint(w, stream, subj, &st);
        if (!cp) break;
        if (cp->generation != gen || cp->part != i || cp->last_applied_seq != seq) {
            st = TS_ERR_STALE;
            break;
        }
        entities += cp->n_entities;
        st = ts_zone_load_checkpoint(z, cp, false, 0);
    }
    if (st == TS_OK)
        ts_info("cell %s: loaded checkpoint at seq %" PRIu64 " (%zu entities in %u parts, epoch %" PRIu64
                "); replaying after it",
                z->key, seq, entities, parts, cp->epoch);
    if (cp) tessera__v1__checkpoint__free_unpacked(cp, NULL);
    return st;
}

/* Returns true if a checkpoint was loaded; without one the zone replays the
 * whole input stream. */
static bool load_checkpoint(ts_worker_t *w, ts_zone_t **z, ckpt_writer_t *writer)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        ts_status_t st = try_load_checkpoint(w, *z, writer);
        if (st == TS_OK) return true;
        if (st == TS_ERR_NOT_FOUND && attempt == 0) return false;
        ts_warn("cell %s: cannot read its checkpoint (%s)%s", (*z)->key, ts_status_str(st),
                attempt < 4 ? "; reading again" : "; replaying the whole stream");
        /* start over from an empty zone */
        ts_zone_t *fresh = NULL;
        if (ts_worker_zone_create(w, &(*z)->cell, (*z)->epoch, &fresh) != TS_OK) return false;
        ts_zone_destroy(*z);
        *z = fresh;
    }
    return false;
}

/* The stream sequence of the last message on the cell's input subject: 0 if
 * it has none, TS_BUS_SEQ_UNKNOWN if the stream cannot say. */
#define TS_BUS_SEQ_UNKNOWN UINT64_MAX
static uint64_t last_input_seq(ts_worker_t *w, const ts_cell_t *cell)
{
    char stream[64], subj[TS_SUBJECT_MAX];
    ts_bus_input_stream(stream, sizeof(stream), w->world.id);
    ts_subject_input_filter(subj, sizeof(subj), cell);
    ts_bus_msg_t *m = NULL;
    ts_status_t st = ts_bus_last_msg(w->bus, stream, subj, &m);
    if (st == TS_ERR_NOT_FOUND) return 0;
    if (st != TS_OK) return TS_BUS_SEQ_UNKNOWN;
    uint64_t seq = ts_bus_msg_stream_seq(m);
    ts_bus_msg_destroy(m);
    return seq;
}

/* Two requests to nats-server: the checkpoint (one more per extra part)
 * and the cell's last input; no consumer is created (the worker's one
 * input consumer is demultiplexed by cell, inbox.c). How far the replay
 * goes (the cell shows nothing until it caught up) is the last message on
 * the cell's input subject, read after the cell registered: every message
 * up to where the consumer was at the registration is stored by then. If
 * the consumer had gone past the checkpoint and the cell has input after
 * it, the cell's context is rewound (the consumer starts again from the
 * checkpoint, together with the other cells asking about then); a cell
 * with nothing after its checkpoint (most of a recovery of quiet cells,
 * and every new cell) costs no rewind. A new cell (a split's child) or one
 * nobody wrote to is live at once. */
static void do_bind(ts_worker_t *w, ts_io_job_t *job)
{
    job->status = ts_worker_zone_create(w, &job->cell, job->epoch, &job->zone);
    if (job->status != TS_OK) return;
    ckpt_writer_t writer = {0};
    job->found = load_checkpoint(w, &job->zone, &writer);
    uint64_t after = job->zone->last_applied_seq;
    job->status = ts_worker_subscribe_input(w, &job->cell, after, true, &job->ctx);
    if (job->status != TS_OK) {
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&job->cell, key, sizeof(key));
        ts_warn("cell %s: cannot register for its input: %s", key, ts_status_str(job->status));
        return;
    }
    /* its last owner's ticks after the checkpoint, read before its last
     * input: every input a mark covers is stored by then */
    if (job->found) {
        const char *why = ts_marks_for_cell(w, writer.owner, writer.instance, writer.tick,
                                            job->ctx->stream_id, &job->cell, &job->marks, &job->nmarks);
        job->by_marks = why == NULL;
        if (why) ts_info("cell %s: replaying its input by store times: %s", job->zone->key, why);
    }
    uint64_t last = last_input_seq(w, &job->cell);
    if (job->ctx->gap_to != 0 && (last == TS_BUS_SEQ_UNKNOWN || last > after))
        ts_worker_input_rewind(w, job->ctx, after);
    job->ctx->gap_to = 0;
    if (last == TS_BUS_SEQ_UNKNOWN) {
        /* replays until the consumer says nothing is pending */
        job->pending = 1;
        job->caught_up_seq = 0;
        return;
    }
    job->caught_up_seq = last;
    job->pending = 0;
}

/* The cell registered again from its position: after after_seq of the
 * stream instance it refers to. If the stream is another instance now
 * (JetStream lost its store) that position is gone: it reads the new
 * instance from its start and the tick thread resets the position. */
static void do_resubscribe(ts_worker_t *w, ts_io_job_t *job)
{
    uint64_t after = job->after_seq;
    job->status = ts_worker_subscribe_input_at(w, &job->cell, job->stream_id, after, true, &job->ctx);
    if (job->status == TS_ERR_STALE) {
        job->stream_restarted = true;
        after = 0;
        job->status = ts_worker_subscribe_input_at(w, &job->cell, 0, 0, true, &job->ctx);
    }
    if (job->status != TS_OK) return;
    if (job->ctx->gap_to != 0) ts_worker_input_rewind(w, job->ctx, after);
}

/* A request whose reply is forwarded to the orchestrator as an ACK. */
static void do_request(ts_worker_t *w, ts_io_job_t *job)
{
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HANDOVER, .epoch = job->epoch, .seq = job->after_seq};
    ts_bus_msg_t *reply = NULL;
    /* answer the orchestrator before its own PREPARE timeout runs out, so
     * it hears that the target is the one that did not answer */
    int64_t timeout_ms = w->cfg->orch_precopy_timeout_ms * 6 / 10;
    if (timeout_ms < 10) timeout_ms = 10;
    ts_status_t st = ts_bus_request(w->bus, job->subject, &hdr, job->buf, job->len, timeout_ms, &reply);
    Tessera__V1__Handover ack = TESSERA__V1__HANDOVER__INIT;
    Tessera__V1__Handover *got = NULL;
    char why[160];
    ack.id = job->req->id;
    ack.phase = TESSERA__V1__HANDOVER_PHASE__HANDOVER_ACK;
    ack.cell = job->req->cell;
    ack.epoch = job->req->epoch;
    ack.target = w->id;
    ack.error = (char *)"";
    if (st == TS_OK) got = tessera__v1__handover__unpack(NULL, ts_bus_msg_len(reply), ts_bus_msg_data(reply));
    if (got && got->ok) {
        ack.ok = true;
        ack.seq = job->after_seq;
        ack.entities = (uint32_t)job->ncells; /* entities in the PreCopy */
    } else if (got) {
        ts_warn("handover %s: target %s refused the PreCopy: %s", job->req->id, job->req->to, got->error);
        ack.error = (char *)"PreCopy refused by the target";
    } else {
        ts_warn("handover %s: target %s did not answer the PreCopy (%s)", job->req->id, job->req->to,
                ts_status_str(st));
        snprintf(why, sizeof(why), "the target %s did not answer the PreCopy",
                 job->req->to ? job->req->to : "?");
        ack.error = why;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (job->req_reply && *job->req_reply && ts_proto_pack(&ack.base, &buf, &len) == TS_OK) {
        ts_bus_hdr_t ah = {.type = TS_TYPE_HANDOVER, .epoch = job->req->epoch};
        ts_bus_publish(w->bus, job->req_reply, &ah, buf, len);
    }
    free(buf);
    if (got) tessera__v1__handover__free_unpacked(got, NULL);
    ts_bus_msg_destroy(reply);
}

static void do_drain(ts_worker_t *w, ts_io_job_t *job)
{
    char subj[TS_SUBJECT_MAX];
    ts_subject_ctl(subj, sizeof(subj), w->world.id, "drain");
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_bus_msg_t *reply = NULL;
    job->status = ts_bus_request(w->bus, subj, &hdr, w->id, strlen(w->id), DRAIN_REQUEST_MS, &reply);
    if (job->status != TS_OK) {
        ts_warn("drain: no orchestrator answered (%s); my cells will be recovered from checkpoints",
                ts_status_str(job->status));
        return;
    }
    const char *text = (const char *)ts_bus_msg_data(reply);
    size_t len = ts_bus_msg_len(reply);
    ts_info("drain: orchestrator says: %.*s", (int)len, text);
    /* the orchestrator answers "error: ..." when it cannot move the cells */
    if (len >= 6 && strncmp(text, "error:", 6) == 0) job->status = TS_ERR_UNAVAILABLE;
    ts_bus_msg_destroy(reply);
}

/* Once a second: a registry version the tick thread has not reached for a
 * whole second (a lost broadcast, a reconnect) costs one full read. A
 * version ahead by changes still on their way is given that second. */
static void check_version(ts_worker_t *w, uint64_t *lagging)
{
    uint64_t version = 0;
    /* before the read: changes are written before they are announced, so
     * the version read next is at least this one unless Redis lost it */
    uint64_t applied = atomic_load(&w->applied_version);
    pthread_mutex_lock(&w->reg_mu);
    ts_status_t st = ts_registry_version(w->reg, w->world.id, &version);
    pthread_mutex_unlock(&w->reg_mu);
    if (st != TS_OK) return;
    if (version < applied) {
        /* the version never goes down while Redis keeps its data: the
         * registry was lost and written again from scratch */
        *lagging = 0;
        ts_error("registry version %" PRIu64 " is below the %" PRIu64
                 " applied here (the registry was lost?); reading it all again",
                 version, applied);
        ts_io_job_t *job = ts_io_job_new(TS_IO_RESYNC);
        if (!job) return;
        job->found = true; /* TS_IO_RESYNC: replaces the view even at a lower version */
        do_resync(w, job);
        post_done(w, job);
        return;
    }
    if (version == applied) {
        *lagging = 0;
        return;
    }
    if (*lagging == 0 || version < *lagging) {
        *lagging = version; /* look again in a second */
        return;
    }
    *lagging = 0;
    ts_info("registry version %" PRIu64 " not reached by changes within a second; reading it all again",
            version);
    ts_io_job_t *job = ts_io_job_new(TS_IO_RESYNC);
    if (!job) return;
    do_resync(w, job);
    post_done(w, job);
}

/* ---- input stream restarts ------------------------------------------------ */

/* What the timer thread last saw of the world's input stream. */
typedef struct {
    bool known;
    int64_t created_ns;
    uint64_t last_seq;
} stream_watch_t;

ts_status_t ts_io_ensure_streams(ts_worker_t *w)
{
    const ts_config_t *cfg = w->cfg;
    ts_bus_streams_t opts = {.storage = cfg->stream_storage,
                             .max_age_s = cfg->stream_max_age_s,
                             .max_bytes = cfg->stream_max_bytes,
                             .replicas = (int)cfg->stream_replicas};
    return ts_bus_streams_ensure(w->bus, w->world.id, &opts);
}

/* Once a second (timer thread): the input stream's identity. A stream that
 * is gone is created again; one whose creation time changed is a new
 * instance (JetStream lost its store): the tick thread is told, so every
 * cell whose consumer reads another instance consumes the new one from its
 * start instead of waiting for sequences the old one had reached. (Each
 * consumer also stops by itself at its first message after the reconnect,
 * see ts_bus_consume; this covers cells that get no message.) */
static bool check_stream(ts_worker_t *w, stream_watch_t *sw)
{
    if (!ts_bus_connected(w->bus)) return false;
    char stream[64];
    ts_bus_input_stream(stream, sizeof(stream), w->world.id);
    ts_bus_stream_state_t ss;
    ts_status_t st = ts_bus_stream_state(w->bus, stream, &ss);
    if (st == TS_ERR_NOT_FOUND) {
        ts_error("input stream %s is gone (JetStream lost its store?); creating the world's streams again",
                 stream);
        if (ts_io_ensure_streams(w) != TS_OK) return false;
        st = ts_bus_stream_state(w->bus, stream, &ss);
    }
    if (st != TS_OK) return false;
    /* the tick marks' stream, deleted alone: the marks go nowhere (and
     * recoveries replay by store times) until it is there again */
    char marks[64];
    ts_bus_stream_state_t ms;
    ts_bus_marks_stream(marks, sizeof(marks), w->world.id);
    if (ts_bus_stream_state(w->bus, marks, &ms) == TS_ERR_NOT_FOUND) {
        ts_warn("tick mark stream %s is gone; creating the world's streams again", marks);
        ts_io_ensure_streams(w);
    }
    if (!sw->known) {
        *sw = (stream_watch_t){.known = true, .created_ns = ss.created_ns, .last_seq = ss.last_seq};
        return true;
    }
    if (ss.created_ns == sw->created_ns) {
        sw->last_seq = ss.last_seq;
        ts_demux_check_progress(w, ss.created_ns, ss.last_seq);
        return true;
    }
    ts_error("input stream %s restarted (created %" PRId64 " -> %" PRId64 ", last seq %" PRIu64 " -> %" PRIu64
             "): inputs the old stream acknowledged and this worker had not applied yet are lost; every cell "
             "consumes the new stream from its start",
             stream, sw->created_ns, ss.created_ns, sw->last_seq, ss.last_seq);
    ts_worker_metrics_stream_restart();
    ts_io_job_t *job = ts_io_job_new(TS_IO_STREAM_LOST);
    if (job) {
        job->after_seq = sw->last_seq;
        job->stream_id = ss.created_ns;
        post_done(w, job);
    }
    *sw = (stream_watch_t){.known = true, .created_ns = ss.created_ns, .last_seq = ss.last_seq};
    return true;
}

void ts_io_stream_done(ts_worker_t *w, ts_io_job_t *job)
{
    /* the worker's consumer finds the new instance when it starts again */
    if (ts_demux_stream_id(w) != job->stream_id) ts_demux_want_restart(w);
    for (size_t i = 0; i < w->nbind; i++) {
        ts_binding_t *b = w->bindings[i];
        if (b->ctx->stream_id == job->stream_id) continue; /* reads the new one already */
        b->resub_needed = true;
        b->resub_at_us = 0;
    }
}

static void *io_main(void *arg);

/* Under io_mu, by an I/O thread that just took a job: jobs still wait and
 * no thread is free for them, so one more burst thread starts (which does
 * the same when it takes its first job, up to TS_IO_BURST_THREADS). */
static void maybe_grow(ts_worker_t *w)
{
    if (w->io_stop || w->io_queued <= w->io_idle || w->io_burst >= TS_IO_BURST_THREADS) return;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    w->io_burst++;
    if (pthread_create(&t, &attr, io_main, &w->io_burst_arg) != 0) w->io_burst--;
    pthread_attr_destroy(&attr);
}

static void *io_main(void *arg)
{
    const struct ts_io_arg *a = arg;
    ts_worker_t *w = a->w;
    uint64_t lagging = 0;
    stream_watch_t watch = {0};
    /* the connection generation the stream was last checked at: after a
     * reconnect the stream is checked at once, every RECONNECT_CHECK_MS
     * until that works (for at most RECONNECT_CHECK_FOR_MS: JetStream may
     * be off), so the cells move to a new input stream before its first
     * messages arrive rather than a second later */
    uint64_t stream_gen = ts_bus_conn_gen();
    uint64_t look_gen = stream_gen, look_until = 0;
    /* only the timer thread checks the version; the others wait for jobs */
    uint64_t next_check = a->timer ? ts_mono_us() + VERSION_CHECK_MS * 1000ULL : UINT64_MAX;
    uint64_t next_gen_look = a->timer ? ts_mono_us() + RECONNECT_CHECK_MS * 1000ULL : UINT64_MAX;
    pthread_mutex_lock(&w->io_mu);
    for (;;) {
        bool idle_out = false;
        w->io_idle++;
        while (!w->io_head && !w->io_stop) {
            uint64_t now = ts_mono_us();
            if (now >= next_check || now >= next_gen_look) break;
            uint64_t wake = next_check < next_gen_look ? next_check : next_gen_look;
            uint64_t wait_ns = a->burst             ? TS_IO_BURST_IDLE_MS * 1000000ULL
                               : wake == UINT64_MAX ? 3600ULL * 1000000000ULL
                                                    : (wake - now) * 1000ULL;
            struct timespec until;
            ts_mono_deadline(&until, wait_ns);
            if (pthread_cond_timedwait(&w->io_cond, &w->io_mu, &until) != 0 && a->burst && !w->io_head) {
                idle_out = true; /* a burst thread nobody needed for a while */
                break;
            }
        }
        w->io_idle--;
        if (idle_out) break;
        ts_io_job_t *job = w->io_head;
        if (job) {
            w->io_head = job->next;
            if (!w->io_head) w->io_tail = NULL;
            w->io_queued--;
            maybe_grow(w);
        }
        bool stop = w->io_stop;
        pthread_mutex_unlock(&w->io_mu);
        if (job) {
            bool keep = true;
            switch (job->kind) {
            case TS_IO_RESYNC:
                do_resync(w, job);
                break;
            case TS_IO_BIND:
                if (stop)
                    job->status = TS_ERR_CLOSED;
                else
                    do_bind(w, job);
                break;
            case TS_IO_RESUBSCRIBE:
                if (stop)
                    job->status = TS_ERR_CLOSED;
                else
                    do_resubscribe(w, job);
                break;
            case TS_IO_REWIND:
                job->status = stop ? TS_ERR_CLOSED : ts_demux_restart(w);
                break;
            case TS_IO_REQUEST:
                if (!stop) do_request(w, job);
                keep = false;
                break;
            case TS_IO_DRAIN:
                do_drain(w, job);
                break;
            case TS_IO_STREAM_LOST:
                break;
            }
            if (keep && !stop)
                post_done(w, job);
            else
                ts_io_job_free(job);
        } else if (!stop && ts_mono_us() >= next_check) {
            uint64_t gen = ts_bus_conn_gen();
            check_version(w, &lagging);
            if (check_stream(w, &watch)) stream_gen = gen;
            next_check = ts_mono_us() + VERSION_CHECK_MS * 1000ULL;
        } else if (!stop && ts_mono_us() >= next_gen_look) {
            uint64_t gen = ts_bus_conn_gen(), now = ts_mono_us();
            if (gen != look_gen || gen == stream_gen || !ts_bus_connected(w->bus)) {
                look_gen = gen;
                look_until = 0; /* counted from the reconnect */
            } else {
                if (look_until == 0) look_until = now + RECONNECT_CHECK_FOR_MS * 1000ULL;
                if (now < look_until && check_stream(w, &watch)) stream_gen = gen;
            }
            next_gen_look = ts_mono_us() + RECONNECT_CHECK_MS * 1000ULL;
        }
        pthread_mutex_lock(&w->io_mu);
        if (stop && !w->io_head) break;
    }
    if (a->burst && --w->io_burst == 0) pthread_cond_broadcast(&w->io_burst_done);
    pthread_mutex_unlock(&w->io_mu);
    return NULL;
}

ts_status_t ts_io_start(ts_worker_t *w)
{
    pthread_mutex_init(&w->io_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->io_cond, &ca);
    pthread_cond_init(&w->io_burst_done, NULL);
    pthread_condattr_destroy(&ca);
    w->io_burst_arg = (struct ts_io_arg){.w = w, .burst = true};
    pthread_mutex_init(&w->reg_mu, NULL);
    w->io_started = true;
    for (size_t i = 0; i < TS_IO_THREADS; i++) {
        w->io_args[i] = (struct ts_io_arg){.w = w, .timer = i == 0};
        if (pthread_create(&w->io_threads[i], NULL, io_main, &w->io_args[i]) != 0) {
            if (i == 0) {
                w->io_started = false;
                pthread_mutex_destroy(&w->reg_mu);
                pthread_cond_destroy(&w->io_cond);
                pthread_cond_destroy(&w->io_burst_done);
                pthread_mutex_destroy(&w->io_mu);
                return TS_ERR_NOMEM;
            }
            break; /* fewer threads still work */
        }
        w->io_nthreads = i + 1;
    }
    return TS_OK;
}

/* Runs what is queued (unsubscribes must happen), then stops the thread and
 * frees results nobody took. */
void ts_io_stop(ts_worker_t *w)
{
    if (!w->io_started) return;
    pthread_mutex_lock(&w->io_mu);
    w->io_stop = true;
    pthread_cond_broadcast(&w->io_cond);
    /* burst threads are detached: wait until the last one has left */
    while (w->io_burst > 0)
        pthread_cond_wait(&w->io_burst_done, &w->io_mu);
    pthread_mutex_unlock(&w->io_mu);
    for (size_t i = 0; i < w->io_nthreads; i++)
        pthread_join(w->io_threads[i], NULL);
    w->io_started = false;
    pthread_mutex_destroy(&w->reg_mu);
    for (ts_io_job_t *job = ts_io_take_done(w); job;) {
        ts_io_job_t *next = job->next;
        ts_io_job_free(job);
        job = next;
    }
    pthread_cond_destroy(&w->io_cond);
    pthread_cond_destroy(&w->io_burst_done);
    pthread_mutex_destroy(&w->io_mu);
}

/* ---- liveness ---------------------------------------------------------- */

static void *live_main(void *arg)
{
    ts_worker_t *w = arg;
    const int64_t ttl = w->cfg->orch_hb_ttl_ms;
    const uint32_t capacity = (uint32_t)w->cfg->worker_capacity;
    uint64_t period_ms = (uint64_t)(w->cfg->worker_hb_ms > 0 ? w->cfg->worker_hb_ms : 250);
    if (period_ms * 3 > (uint64_t)ttl) period_ms = (uint64_t)ttl / 3; /* at least 3 refreshes per TTL */
    pthread_mutex_lock(&w->live_mu);
    while (!atomic_load(&w->live_stop)) {
        pthread_mutex_unlock(&w->live_mu);
        ts_status_t st = ts_registry_worker_refresh(w->live_reg, w->id, w->instance, ttl, capacity);
        if (st == TS_ERR_CONFLICT) {
            ts_error("worker %s: another process (a newer instance) holds this worker id", w->id);
            atomic_store(&w->fenced, true);
            ts_worker_wake(w);
            return NULL;
        }
        if (st != TS_OK) ts_warn("cannot refresh liveness in the registry: %s", ts_status_str(st));
        struct timespec until;
        ts_mono_deadline(&until, (uint64_t)period_ms * 1000000ULL);
        pthread_mutex_lock(&w->live_mu);
        while (!atomic_load(&w->live_stop))
            if (pthread_cond_timedwait(&w->live_cond, &w->live_mu, &until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&w->live_mu);
    return NULL;
}

ts_status_t ts_live_start(ts_worker_t *w)
{
    ts_status_t st = ts_registry_worker_claim(w->live_reg, w->id, w->instance, w->cfg->orch_hb_ttl_ms,
                                              (uint32_t)w->cfg->worker_capacity);
    if (st == TS_ERR_EXISTS) {
        ts_error(
            "worker id '%s' is already live in another process; refusing to start (stop it first, or wait "
            "%" PRId64 " ms after it died)",
            w->id, w->cfg->orch_hb_ttl_ms);
        return st;
    }
    if (st != TS_OK) {
        ts_error("cannot claim worker id '%s' in the registry: %s", w->id, ts_status_str(st));
        return st;
    }
    pthread_mutex_init(&w->live_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->live_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->live_thread, NULL, live_main, w) != 0) {
        pthread_cond_destroy(&w->live_cond);
        pthread_mutex_destroy(&w->live_mu);
        return TS_ERR_NOMEM;
    }
    w->live_started = true;
    return TS_OK;
}

void ts_live_stop(ts_worker_t *w)
{
    if (!w->live_started) return;
    pthread_mutex_lock(&w->live_mu);
    atomic_store(&w->live_stop, true);
    pthread_cond_signal(&w->live_cond);
    pthread_mutex_unlock(&w->live_mu);
    pthread_join(w->live_thread, NULL);
    w->live_started = false;
    pthread_cond_destroy(&w->live_cond);
    pthread_mutex_destroy(&w->live_mu);
}
