/* Worker side of a handover: cell C moves from source A to target B.
 *
 *   orch -> A  PREPARE   A marks the zone, sends B a PreCopy (snapshot at s1)
 *                        B starts consuming C after s1, holding the input
 *   orch -> A  FREEZE    A applies what it has received, stops applying (s2;
 *                        later input is held), sends B the Diff, which also
 *                        carries A's unpublished transfers and forwards; B
 *                        answers the FREEZE to the orchestrator
 *   orch       CAS       registry: owner B, epoch + 1
 *   orch -> B  COMMIT    B owns C: its tick thread binds the zone and applies
 *                        what it held after s2
 *   orch -> A  COMMIT    A drops C and what it held
 *   orch -> *  ABORT     before the CAS: A resumes, applying what it held;
 *                        B discards
 *
 * All messages travel on <cell>.handover; every worker of the world listens
 * and only the named target acts. PreCopy / Diff / COMMIT / Abort on the
 * target side are handled directly on the nats.c thread (they only touch
 * pending zones, under the worker mutex) so neither the source nor the
 * orchestrator ever waits for the target's tick. Requests that touch bound
 * cells are queued for the tick thread, which serves them as soon as they
 * arrive, between ticks.
 *
 * Whatever is lost — an orchestrator dying between CAS and COMMIT, a COMMIT
 * that never arrives — the registry decides: a frozen source that hears
 * nothing for FROZEN_TIMEOUT_US resumes only if the registry still names it at
 * the same epoch, and a target binds its pending zone when the registry gives
 * it the cell. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define FROZEN_TIMEOUT_US 3000000ULL
#define PENDING_TIMEOUT_US 15000000ULL

typedef struct {
    bool ok;
    const char *error;
    uint64_t seq;
    uint64_t freeze_us, resume_us;
    uint32_t entities;
} ack_t;

static void send_ack(ts_worker_t *w, const char *reply, const Tessera__V1__Handover *req, const ack_t *a)
{
    if (!reply || !*reply) return;
    Tessera__V1__Handover m = TESSERA__V1__HANDOVER__INIT;
    m.id = req->id;
    m.phase = TESSERA__V1__HANDOVER_PHASE__HANDOVER_ACK;
    m.cell = req->cell;
    m.epoch = req->epoch;
    m.target = w->id;
    m.ok = a->ok;
    m.error = (char *)(a->error ? a->error : "");
    m.seq = a->seq;
    m.freeze_us = a->freeze_us;
    m.resume_us = a->resume_us;
    m.entities = a->entities;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_proto_pack(&m.base, &buf, &len) != TS_OK) return;
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HANDOVER, .epoch = req->epoch};
    ts_bus_publish(w->bus, reply, &hdr, buf, len);
    free(buf);
}

static ts_pending_t *find_pending(ts_worker_t *w, const char *id)
{
    for (size_t i = 0; i < w->npending; i++)
        if (strcmp(w->pending[i].id, id) == 0) return &w->pending[i];
    return NULL;
}

/* Removes p from the pending list (caller holds w->mu) and returns it by
 * value; the caller frees it with free_pending() after unlocking, since
 * releasing its input context takes the demultiplexer's mutex, which comes
 * before w->mu (inbox.c). */
static ts_pending_t take_pending(ts_worker_t *w, ts_pending_t *p)
{
    ts_pending_t out = *p;
    *p = w->pending[--w->npending];
    return out;
}

/* Its input context is unregistered and freed at once. */
static void free_pending(ts_worker_t *w, ts_pending_t *p)
{
    ts_worker_release_sub(w, p->ctx);
    ts_zone_destroy(p->zone);
    memset(p, 0, sizeof(*p));
}

static bool last_part(const Tessera__V1__Handover *m)
{
    return m->parts <= 1 || m->part + 1 == m->parts;
}

static Tessera__V1__Checkpoint *unpack_snapshot(const Tessera__V1__Handover *m)
{
    if (!m->snapshot.data || m->snapshot.len == 0) return NULL;
    return tessera__v1__checkpoint__unpack(NULL, m->snapshot.len, m->snapshot.data);
}

/* Target side, on a nats.c thread: the PreCopy. The target starts consuming
 * the cell's input after s1 right away, holding it (not applying), so that
 * neither the Diff nor the COMMIT costs a subscription round trip; what it
 * holds up to s2 is skipped when it takes the cell. */
/* Inserts a new pending zone for handover m (replacing any other for the
 * same cell). Returns false (and leaves z to the caller) if out of memory. */
static bool add_pending(ts_worker_t *w, const Tessera__V1__Handover *m, ts_zone_t *z)
{
    ts_pending_t old = {0};
    bool ok = false;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->npending; i++) {
        if (!ts_cell_eq(&w->pending[i].zone->cell, &z->cell)) continue;
        old = take_pending(w, &w->pending[i]); /* at most one per cell */
        break;
    }
    if (w->npending == w->cap_pending) {
        size_t ncap = w->cap_pending ? w->cap_pending * 2 : 8;
        ts_pending_t *v = realloc(w->pending, ncap * sizeof(*v));
        if (v) {
            w->pending = v;
            w->cap_pending = ncap;
        }
    }
    if (w->npending < w->cap_pending) {
        ts_pending_t *p = &w->pending[w->npending++];
        memset(p, 0, sizeof(*p));
        ts_strlcpy(p->id, m->id, sizeof(p->id));
        p->zone = z;
        p->parts_got = 1;
        p->created_us = ts_mono_us();
        ok = true;
    }
    pthread_mutex_unlock(&w->mu);
    free_pending(w, &old);
    return ok;
}

/* Target side, on a nats.c thread: the PreCopy (one message or several
 * parts in order). After the last part the target starts consuming the
 * cell's input after s1, holding it (not applying), so that neither the
 * Diff nor the COMMIT costs a subscription round trip; what it holds up to
 * s2 is skipped when it takes the cell. */
static void on_precopy(ts_worker_t *w, const Tessera__V1__Handover *m, const char *reply)
{
    ack_t a = {.ok = false};
    ts_cell_t cell;
    Tessera__V1__Checkpoint *cp = unpack_snapshot(m);
    bool last = last_part(m);
    if (!cp || ts_proto_cell_get(m->cell, &cell) != TS_OK || (m->parts > 1 && m->part >= m->parts)) {
        a.error = "malformed PreCopy";
    } else if (m->part == 0) {
        ts_zone_t *z = NULL;
        if (ts_worker_zone_create(w, &cell, m->epoch, &z) != TS_OK ||
            ts_zone_load_checkpoint(z, cp, false, w->tick) != TS_OK) {
            a.error = "cannot load the PreCopy snapshot";
            ts_zone_destroy(z);
        } else if (!add_pending(w, m, z)) {
            a.error = "out of memory";
            ts_zone_destroy(z);
        } else {
            a.ok = true;
        }
    } else {
        a.error = "PreCopy part without its first part";
        pthread_mutex_lock(&w->mu);
        ts_pending_t *p = find_pending(w, m->id);
        if (p && !p->ctx && p->parts_got == m->part) {
            if (ts_zone_load_checkpoint(p->zone, cp, false, w->tick) == TS_OK) {
                p->parts_got++;
                a = (ack_t){.ok = true};
            } else {
                a.error = "cannot load the PreCopy snapshot";
            }
        } else if (p) {
            a.error = "PreCopy part missing or out of order";
        }
        pthread_mutex_unlock(&w->mu);
    }
    if (cp) tessera__v1__checkpoint__free_unpacked(cp, NULL);
    if (!last && a.ok) return; /* more parts to come; the last one is answered */
    if (a.ok) {
        /* all parts are in: consume the input after s1, held */
        uint64_t after = 0;
        pthread_mutex_lock(&w->mu);
        ts_pending_t *p = find_pending(w, m->id);
        if (p) after = p->zone->last_applied_seq;
        pthread_mutex_unlock(&w->mu);
        ts_sub_ctx_t *ctx = NULL;
        a = (ack_t){.ok = false, .error = "the handover was dropped while its PreCopy arrived"};
        if (p && ts_worker_subscribe_input(w, &cell, after, true, &ctx) != TS_OK) {
            a.error = "cannot consume the cell's input";
        } else if (p) {
            pthread_mutex_lock(&w->mu);
            p = find_pending(w, m->id);
            if (p) {
                p->ctx = ctx;
                ctx = NULL;
                a = (ack_t){.ok = true,
                            .seq = p->zone->last_applied_seq,
                            .entities = (uint32_t)ts_zone_entities(p->zone)};
            }
            pthread_mutex_unlock(&w->mu);
            ts_worker_release_sub(w, ctx);
        }
    }
    if (!a.ok && m->id) { /* drop what arrived of it */
        pthread_mutex_lock(&w->mu);
        ts_pending_t *p = find_pending(w, m->id);
        ts_pending_t gone = {0};
        if (p) gone = take_pending(w, p);
        pthread_mutex_unlock(&w->mu);
        free_pending(w, &gone);
    }
    if (last || !a.ok) send_ack(w, reply, m, &a);
}

/* Target side, on a nats.c thread: the Diff. The zone is now exact as of s2. */
static void on_diff(ts_worker_t *w, const Tessera__V1__Handover *m, const char *reply)
{
    ack_t a = {.ok = false, .error = "no PreCopy for this handover"};
    Tessera__V1__Checkpoint *cp = unpack_snapshot(m);
    bool last = last_part(m);
    pthread_mutex_lock(&w->mu);
    ts_pending_t *p = find_pending(w, m->id);
    if (!cp) {
        a.error = "malformed Diff";
    } else if (p && !p->ctx) {
        a.error = "the PreCopy did not complete";
    } else if (p) {
        if (m->part == 0) p->parts_got = 0;
        if (p->parts_got != m->part) {
            a.error = "Diff part missing or out of order";
        } else if (ts_zone_load_checkpoint(p->zone, cp, true, w->tick) == TS_OK) {
            p->parts_got++;
            p->diffed = last;
            a = (ack_t){.ok = true,
                        .seq = p->zone->last_applied_seq,
                        .freeze_us = m->freeze_us,
                        .entities = (uint32_t)ts_zone_entities(p->zone)};
        } else {
            a.error = "cannot load the Diff";
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (cp) tessera__v1__checkpoint__free_unpacked(cp, NULL);
    if (!last && a.ok) return; /* the last part is answered (to the orchestrator) */
    send_ack(w, reply, m, &a);
    ts_debug("handover %s: Diff in %llu us after the freeze (%zu bytes)", m->id,
             (unsigned long long)(ts_now_us() - m->freeze_us), m->snapshot.len);
}

/* Target side, on a nats.c thread: the registry names us; the cell is ours.
 * The tick thread binds it (ts_handover_poll) without further round trips.
 * Returns false if there is no pending zone for it (any more): the tick
 * thread may have bound it from the registry already, and answers then. */
static bool on_commit_target(ts_worker_t *w, const Tessera__V1__Handover *m, const char *reply)
{
    ack_t a = {.ok = false, .error = "no completed Diff for this handover"};
    pthread_mutex_lock(&w->mu);
    ts_pending_t *p = find_pending(w, m->id);
    if (p && p->diffed && p->ctx) {
        p->committed = true;
        p->new_epoch = m->new_epoch;
        a = (ack_t){.ok = true, .resume_us = ts_now_us(), .seq = p->zone->last_applied_seq};
        atomic_store(&w->wake, true);
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->mu);
    if (!p) return false;
    send_ack(w, reply, m, &a);
    return true;
}

static void queue_ctl(ts_worker_t *w, Tessera__V1__Handover *m, const char *reply)
{
    char *r = reply ? strdup(reply) : NULL;
    pthread_mutex_lock(&w->mu);
    if (w->nctl == w->cap_ctl) {
        size_t ncap = w->cap_ctl ? w->cap_ctl * 2 : 8;
        ts_ctl_req_t *v = realloc(w->ctl, ncap * sizeof(*v));
        if (!v) {
            pthread_mutex_unlock(&w->mu);
            free(r);
            tessera__v1__handover__free_unpacked(m, NULL);
            return;
        }
        w->ctl = v;
        w->cap_ctl = ncap;
    }
    w->ctl[w->nctl++] = (ts_ctl_req_t){m, r};
    atomic_store(&w->wake, true);
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

static void on_handover(void *ud, const ts_bus_msg_t *msg)
{
    ts_worker_t *w = ud;
    Tessera__V1__Handover *m = tessera__v1__handover__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    if (!m) {
        ts_warn("undecodable handover message on %s ignored", ts_bus_msg_subject(msg));
        return;
    }
    if (!m->target || strcmp(m->target, w->id) != 0 || !m->id || !m->cell) {
        tessera__v1__handover__free_unpacked(m, NULL);
        return;
    }
    const char *reply = ts_bus_msg_reply(msg);
    switch (m->phase) {
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_PRECOPY:
        on_precopy(w, m, reply);
        break;
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_DIFF:
        on_diff(w, m, reply);
        break;
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT: {
        pthread_mutex_lock(&w->mu);
        ts_pending_t *p = find_pending(w, m->id);
        ts_pending_t gone = {0};
        bool target = p != NULL;
        if (p) gone = take_pending(w, p);
        pthread_mutex_unlock(&w->mu);
        if (target) {
            free_pending(w, &gone);
            ack_t a = {.ok = true};
            send_ack(w, reply, m, &a);
            break;
        }
        queue_ctl(w, m, reply); /* source side: resume on the tick thread */
        return;
    }
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT:
        if (on_commit_target(w, m, reply)) break;
        queue_ctl(w, m, reply); /* source (lets go), or a target that bound it already */
        return;
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE:
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_FREEZE:
        queue_ctl(w, m, reply);
        return;
    default:
        break;
    }
    tessera__v1__handover__free_unpacked(m, NULL);
}

ts_status_t ts_handover_subscribe(ts_worker_t *w)
{
    char subj[TS_SUBJECT_MAX];
    ts_subject_world_wildcard(subj, sizeof(subj), w->world.id, TS_SUBJ_HANDOVER);
    return ts_bus_subscribe(w->bus, subj, on_handover, w, &w->ho_sub);
}

/* Sends the target a PreCopy or a Diff. The Diff is published with the
 * orchestrator's reply subject: the target acknowledges the FREEZE straight
 * to the orchestrator, one hop less inside the freeze window; if it never
 * does, the orchestrator's ABORT (or our own timeout) resumes us. The PreCopy
 * is a request the I/O thread makes (it takes over req): its ACK goes to the
 * orchestrator once the target answered, while this thread ticks on. */
static ts_status_t send_to_target(ts_worker_t *w, Tessera__V1__Handover *req, const char *req_reply,
                                  ts_zone_t *z, Tessera__V1__HandoverPhase phase, const char *orch_reply,
                                  uint64_t freeze_us)
{
    uint8_t **snaps = NULL, *buf = NULL;
    size_t *snaplens = NULL, nparts = 0, len = 0;
    ts_status_t st =
        ts_zone_pack_checkpoint_parts(z, w->tick, w->id, phase == TESSERA__V1__HANDOVER_PHASE__HANDOVER_DIFF,
                                      0, &snaps, &snaplens, &nparts);
    if (st != TS_OK) return st;
    Tessera__V1__Handover m = TESSERA__V1__HANDOVER__INIT;
    m.id = req->id;
    m.phase = phase;
    m.cell = req->cell;
    m.epoch = z->epoch;
    m.from = w->id;
    m.to = req->to;
    m.target = req->to;
    m.seq = z->last_applied_seq;
    m.freeze_us = freeze_us;
    if (nparts > 1) m.parts = (uint32_t)nparts;
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_HANDOVER);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HANDOVER, .epoch = z->epoch, .seq = z->last_applied_seq};
    /* every part but the last goes as a plain message, in order; the last
     * one carries the reply subject. A snapshot part is at most msg_max
     * bytes, and its envelope fits the headroom left for it. */
    for (size_t i = 0; i < nparts && st == TS_OK; i++) {
        m.part = (uint32_t)i;
        m.snapshot.data = snaps[i];
        m.snapshot.len = snaplens[i];
        free(buf);
        buf = NULL;
        st = ts_proto_pack(&m.base, &buf, &len);
        if (st == TS_OK && len > z->msg_max + TS_ZONE_MSG_HEADROOM / 2) {
            z->stats.oversized++;
            ts_error("cell %s: handover %s: snapshot part %zu of %zu bytes is larger than a message may be; "
                     "not sent",
                     z->key, req->id ? req->id : "", i, len);
            st = TS_ERR_OVERSIZED;
        }
        if (st == TS_OK && i + 1 < nparts) st = ts_bus_publish(w->bus, subj, &hdr, buf, len);
    }
    ts_zone_free_parts(snaps, snaplens, nparts);
    if (st != TS_OK) {
        free(buf);
        return st;
    }
    if (orch_reply) {
        st = ts_bus_publish_reply(w->bus, subj, orch_reply, &hdr, buf, len);
        free(buf);
        return st;
    }
    ts_io_job_t *job = ts_io_job_new(TS_IO_REQUEST);
    if (!job) {
        free(buf);
        return TS_ERR_NOMEM;
    }
    ts_strlcpy(job->subject, subj, sizeof(job->subject));
    job->buf = buf;
    job->len = len;
    job->epoch = z->epoch;
    job->after_seq = z->last_applied_seq;
    job->ncells = ts_zone_entities(z);
    job->req = req;
    job->req_reply = req_reply ? strdup(req_reply) : NULL;
    ts_io_submit(w, job);
    return TS_OK;
}

static ts_binding_t *owned_binding(ts_worker_t *w, const Tessera__V1__Handover *m, ack_t *a)
{
    ts_cell_t cell;
    if (ts_proto_cell_get(m->cell, &cell) != TS_OK) {
        a->error = "malformed cell";
        return NULL;
    }
    ts_binding_t *b = ts_worker_find_binding(w, &cell);
    if (!b) {
        /* the registry may already name this worker (a cell just created
         * by a split, or just handed here) while its bind is under way */
        const ts_cell_entry_t *e = ts_worker_find_entry(w, &cell);
        if (e && strcmp(e->owner, w->id) == 0 && e->epoch == m->epoch)
            a->error = "busy, try again: this worker is still binding the cell";
        else
            a->error = "not the owner of this cell";
        return NULL;
    }
    if (b->zone->epoch != m->epoch) {
        a->error = "stale epoch";
        return NULL;
    }
    return b;
}

/* Returns true if it took m over (the I/O thread answers the orchestrator). */
static bool do_prepare(ts_worker_t *w, Tessera__V1__Handover *m, const char *reply)
{
    ack_t a = {.ok = false};
    ts_binding_t *b = owned_binding(w, m, &a);
    if (b && b->state != TS_BIND_ACTIVE) {
        a.error = "cell is frozen in another handover";
    } else if (b && (!m->to || !*m->to || strcmp(m->to, w->id) == 0)) {
        a.error = "bad target";
    } else if (b) {
        ts_zone_mark_precopy(b->zone);
        if (send_to_target(w, m, reply, b->zone, TESSERA__V1__HANDOVER_PHASE__HANDOVER_PRECOPY, NULL, 0) ==
            TS_OK)
            return true;
        a.error = "PreCopy to the target failed";
    }
    send_ack(w, reply, m, &a);
    return false;
}

/* Source: back to owning the cell after an abort, applying what arrived
 * while frozen. */
static void resume(ts_worker_t *w, ts_binding_t *b)
{
    b->state = TS_BIND_ACTIVE;
    b->handover_id[0] = '\0';
    b->fwd_scan = true; /* a forwarding cell's cancelled departures are decided again */
    ts_worker_apply_msgs(w, b->zone, &b->held);
}

static void do_freeze(ts_worker_t *w, const Tessera__V1__Handover *m, const char *reply)
{
    ack_t a = {.ok = false};
    ts_binding_t *b = owned_binding(w, m, &a);
    if (b && b->state != TS_BIND_ACTIVE) {
        a.error = "cell is already frozen";
        b = NULL;
    }
    if (!b) {
        send_ack(w, reply, m, &a);
        return;
    }
    ts_zone_t *z = b->zone;
    /* apply what has arrived (a cell still replaying: all of it, with its
     * ticks); from here on input is held, not applied: s2 */
    ts_worker_apply_inbox(w);
    ts_worker_replay_flush(w, b);
    b->state = TS_BIND_FROZEN;
    uint64_t freeze_us = ts_now_us();
    ts_strlcpy(b->handover_id, m->id, sizeof(b->handover_id));
    b->frozen_us = ts_mono_us();
    /* unpublished transfers, forwards and announcements travel in the Diff and
     * the target publishes them; queued Departures are decided anew there */
    ts_zone_cancel_departures(z);
    ts_status_t st = reply && *reply
                         ? send_to_target(w, (Tessera__V1__Handover *)m, NULL, z,
                                          TESSERA__V1__HANDOVER_PHASE__HANDOVER_DIFF, reply, freeze_us)
                         : TS_ERR_INVALID;
    if (st != TS_OK) {
        ts_warn("cell %s: Diff to %s failed (%s); resuming", z->key, m->to, ts_status_str(st));
        resume(w, b);
        a.error = "Diff to the target failed";
        send_ack(w, reply, m, &a);
    }
    /* on success the target answers the orchestrator */
}

/* Source: the registry names the target now; let go of the cell. */
static void do_commit(ts_worker_t *w, const Tessera__V1__Handover *m, const char *reply)
{
    ack_t a = {.ok = true};
    ts_cell_t cell;
    ts_binding_t *b = ts_proto_cell_get(m->cell, &cell) == TS_OK ? ts_worker_find_binding(w, &cell) : NULL;
    if (b && b->state == TS_BIND_FROZEN && strcmp(b->handover_id, m->id) == 0) {
        w->stats.handovers_out++;
        ts_worker_unbind(w, b);
    } else if (b && b->state == TS_BIND_ACTIVE && b->zone->epoch == m->new_epoch) {
        /* the target, which took the cell from the registry before the COMMIT */
        a.resume_us = b->bound_us;
        a.seq = b->zone->last_applied_seq;
    } else if (b) {
        a = (ack_t){.ok = false, .error = "cell is not frozen in this handover"};
    }
    send_ack(w, reply, m, &a);
}

static void do_abort(ts_worker_t *w, const Tessera__V1__Handover *m, const char *reply)
{
    ack_t a = {.ok = true};
    ts_cell_t cell;
    ts_binding_t *b = ts_proto_cell_get(m->cell, &cell) == TS_OK ? ts_worker_find_binding(w, &cell) : NULL;
    if (b && b->state == TS_BIND_FROZEN && strcmp(b->handover_id, m->id) == 0) {
        ts_info("cell %s: handover %s aborted; resuming after seq %" PRIu64, b->zone->key, m->id,
                b->zone->last_applied_seq);
        resume(w, b);
    }
    send_ack(w, reply, m, &a);
}

/* A frozen cell that heard nothing: the registry decides, from a full read
 * made after the timeout (asked of the I/O thread; decided when it lands). */
static void check_frozen(ts_worker_t *w)
{
    uint64_t now = ts_mono_us();
    for (size_t i = 0; i < w->nbind;) {
        ts_binding_t *b = w->bindings[i];
        if (b->state != TS_BIND_FROZEN || now - b->frozen_us < FROZEN_TIMEOUT_US) {
            i++;
            continue;
        }
        if (w->view.last_sync_us < b->frozen_us + FROZEN_TIMEOUT_US) {
            ts_worker_request_resync(w); /* cannot tell yet: stay frozen */
            i++;
            continue;
        }
        const ts_cell_entry_t *e = ts_worker_find_entry(w, &b->zone->cell);
        if (e && strcmp(e->owner, w->id) == 0 && e->epoch == b->zone->epoch) {
            ts_warn("cell %s: handover %s timed out before commit; resuming", b->zone->key, b->handover_id);
            resume(w, b);
            i++;
        } else {
            ts_info("cell %s: handover %s committed (owner %s, epoch %" PRIu64 ")", b->zone->key,
                    b->handover_id, e ? e->owner : "-", e ? e->epoch : 0);
            w->stats.handovers_out++;
            ts_worker_unbind(w, b); /* moves another binding into slot i */
        }
    }
    ts_pending_t expired[8];
    size_t nexp = 0;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->npending && nexp < 8;) {
        /* created_us may be later than now: pendings are made on nats.c threads */
        const ts_pending_t *q = &w->pending[i];
        if (!q->committed && now > q->created_us && now - q->created_us > PENDING_TIMEOUT_US)
            expired[nexp++] = take_pending(w, &w->pending[i]);
        else
            i++;
    }
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < nexp; i++) {
        ts_warn("handover %s: no commit within %llu s; discarding the received cell", expired[i].id,
                (unsigned long long)(PENDING_TIMEOUT_US / 1000000));
        free_pending(w, &expired[i]);
    }
}

/* Binds the first pending zone that is committed (or, with cell, the diffed
 * one for that cell). Returns false if there was none. */
static bool adopt_pending(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch)
{
    ts_pending_t p = {0};
    bool found = false;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->npending; i++) {
        ts_pending_t *q = &w->pending[i];
        bool match = cell ? (q->diffed && q->ctx && ts_cell_eq(&q->zone->cell, cell)) : q->committed;
        if (!match) continue;
        p = take_pending(w, q);
        found = true;
        break;
    }
    pthread_mutex_unlock(&w->mu);
    if (!found) return false;
    uint64_t new_epoch = cell ? epoch : p.new_epoch;
    ts_cell_t c = p.zone->cell;
    if (ts_worker_find_binding(w, &c)) {
        free_pending(w, &p); /* bound meanwhile from the registry */
        return true;
    }
    uint64_t s2 = p.zone->last_applied_seq;
    if (ts_worker_adopt(w, p.zone, new_epoch, p.ctx, 0, false, false) == TS_OK) {
        /* a checkpoint at its first tick here: a replay after a crash of
         * this worker follows this worker's tick marks from there */
        w->bindings[w->nbind - 1]->ckpt_soon = true;
        w->stats.handovers_in++;
        ts_info("cell %s: bound at epoch %" PRIu64 " from handover %s, consuming after seq %" PRIu64,
                w->bindings[w->nbind - 1]->zone->key, new_epoch, p.id, s2);
    }
    return true;
}

bool ts_handover_bind_pending(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch)
{
    return adopt_pending(w, cell, epoch);
}

void ts_handover_poll(ts_worker_t *w)
{
    while (adopt_pending(w, NULL, 0)) {
    }
    for (;;) {
        pthread_mutex_lock(&w->mu);
        ts_ctl_req_t *reqs = w->ctl;
        size_t n = w->nctl;
        w->ctl = NULL;
        w->nctl = w->cap_ctl = 0;
        pthread_mutex_unlock(&w->mu);
        if (n == 0) {
            free(reqs);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            Tessera__V1__Handover *m = reqs[i].msg;
            switch (m->phase) {
            case TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE:
                if (do_prepare(w, m, reqs[i].reply)) m = NULL;
                break;
            case TESSERA__V1__HANDOVER_PHASE__HANDOVER_FREEZE:
                do_freeze(w, m, reqs[i].reply);
                break;
            case TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT:
                do_commit(w, m, reqs[i].reply);
                break;
            case TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT:
                do_abort(w, m, reqs[i].reply);
                break;
            default:
                break;
            }
            if (m) tessera__v1__handover__free_unpacked(m, NULL);
            free(reqs[i].reply);
        }
        free(reqs);
    }
    check_frozen(w);
}

void ts_handover_free_all(ts_worker_t *w)
{
    for (size_t i = 0; i < w->nctl; i++) {
        tessera__v1__handover__free_unpacked(w->ctl[i].msg, NULL);
        free(w->ctl[i].reply);
    }
    free(w->ctl);
    w->ctl = NULL;
    w->nctl = w->cap_ctl = 0;
    pthread_mutex_lock(&w->mu);
    ts_pending_t *all = w->pending;
    size_t n = w->npending;
    w->pending = NULL;
    w->npending = w->cap_pending = 0;
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < n; i++)
        free_pending(w, &all[i]);
    free(all);
}
