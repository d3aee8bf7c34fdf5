/* Handover state machines (see hosm.h).
 *
 * Invariants: at most one handover per cell and at most cap in flight; every
 * request gets a fresh number, so a late answer to an earlier step (or to a
 * finished handover) is never taken for the current one; a machine awaits at
 * most two answers and always has a deadline while it awaits any; nothing
 * is written to the registry before PREPARE and FREEZE were acknowledged,
 * and after the CAS nothing is rolled back; done() runs exactly once per
 * started handover. */
#include "hosm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

/* What a worker answered to one request. */
typedef struct {
    ts_status_t st; /* TS_OK: ok; TS_ERR_UNAVAILABLE: refused; TS_ERR_TIMEOUT: no answer; TS_ERR_MALFORMED */
    uint64_t seq, freeze_us, resume_us;
    uint32_t entities;
    char error[200];
} ack_t;

const char *ts_ho_state_str(ts_ho_state_t st)
{
    static const char *const names[] = {"prepare",       "freeze",   "commit-target",
                                        "commit-source", "aborting", "done"};
    return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "?";
}

const char *ts_ho_reason_str(ts_ho_reason_t why)
{
    return why == TS_HO_DRAIN       ? "drain"
           : why == TS_HO_REBALANCE ? "rebalance"
           : why == TS_HO_MERGE     ? "merge"
                                    : "ctl";
}

static const char *phase_name(Tessera__V1__HandoverPhase p)
{
    switch (p) {
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE:
        return "PREPARE";
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_FREEZE:
        return "FREEZE";
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT:
        return "COMMIT";
    case TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT:
        return "ABORT";
    default:
        return "?";
    }
}

/* The phase and target each state awaits answers from (slot 0; ABORTING
 * also awaits the target in slot 1). */
static Tessera__V1__HandoverPhase state_phase(ts_ho_state_t st)
{
    switch (st) {
    case TS_HO_PREPARE:
        return TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE;
    case TS_HO_FREEZE:
        return TESSERA__V1__HANDOVER_PHASE__HANDOVER_FREEZE;
    case TS_HO_COMMIT_TO:
    case TS_HO_COMMIT_FROM:
        return TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT;
    default:
        return TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT;
    }
}

static const char *state_target(const ts_ho_t *h, int which)
{
    if (h->state == TS_HO_COMMIT_TO || (h->state == TS_HO_ABORTING && which == 1)) return h->to;
    return h->from;
}

ts_status_t ts_hos_init(ts_hos_t *s, size_t cap, int64_t timeout_ms, const ts_ho_io_t *io)
{
    memset(s, 0, sizeof *s);
    if (cap == 0 || io == NULL || io->send == NULL || io->cas == NULL || io->done == NULL)
        return TS_ERR_INVALID;
    s->slots = calloc(cap, sizeof *s->slots);
    s->used = calloc(cap, sizeof *s->used);
    if (!s->slots || !s->used) {
        ts_hos_free(s);
        return TS_ERR_NOMEM;
    }
    s->cap = cap;
    s->io = *io;
    s->next_req = 1;
    s->timeout_us = (uint64_t)(timeout_ms > 0 ? timeout_ms : 1) * 1000;
    s->prepare_timeout_us = s->timeout_us;
    return TS_OK;
}

void ts_hos_free(ts_hos_t *s)
{
    if (!s) return;
    free(s->slots);
    free(s->used);
    memset(s, 0, sizeof *s);
}

void ts_hos_set_prepare_timeout(ts_hos_t *s, int64_t timeout_ms)
{
    s->prepare_timeout_us = (uint64_t)(timeout_ms > 0 ? timeout_ms : 1) * 1000;
}

const ts_ho_t *ts_hos_find(const ts_hos_t *s, const ts_cell_t *cell)
{
    for (size_t i = 0; i < s->cap; i++) {
        if (s->used[i] && ts_cell_eq(&s->slots[i].cell, cell)) return &s->slots[i];
    }
    return NULL;
}

static void advance(ts_hos_t *s, ts_ho_t *h, int which, const ack_t *a, uint64_t now_us);

/* Sends one request of the current state to its target (slot which). A
 * failed publish resolves that slot at once as unanswered. */
static void send_req(ts_hos_t *s, ts_ho_t *h, int which, uint64_t now_us)
{
    Tessera__V1__HandoverPhase phase = state_phase(h->state);
    const char *target = state_target(h, which);
    uint64_t req = s->next_req++;
    h->req[which] = req;
    h->deadline_us = now_us + (phase == TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE ? s->prepare_timeout_us
                                                                                      : s->timeout_us);

    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &h->cell);
    Tessera__V1__Handover m = TESSERA__V1__HANDOVER__INIT;
    m.id = h->id;
    m.phase = phase;
    m.cell = &cell_pb;
    m.epoch = h->epoch;
    m.new_epoch = phase == TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT ? h->new_epoch : 0;
    m.from = h->from;
    m.to = h->to;
    m.target = (char *)target;
    uint8_t *buf = NULL;
    size_t len = 0;
    char subject[TS_SUBJECT_MAX];
    ts_subject_cell(subject, sizeof subject, &h->cell, TS_SUBJ_HANDOVER);
    ts_status_t st = ts_proto_pack(&m.base, &buf, &len);
    if (st == TS_OK) st = s->io.send(s->io.ud, subject, req, h->epoch, buf, len);
    free(buf);
    if (st != TS_OK) {
        ack_t a = {.st = TS_ERR_BUS};
        snprintf(a.error, sizeof a.error, "%s to %s: %s", phase_name(phase), target, ts_status_str(st));
        h->req[which] = 0;
        advance(s, h, which, &a, now_us);
    }
}

static void finish(ts_hos_t *s, ts_ho_t *h)
{
    h->state = TS_HO_DONE;
    h->req[0] = h->req[1] = 0;
    size_t slot = (size_t)(h - s->slots);
    s->io.done(s->io.ud, h);
    s->used[slot] = false;
    s->n--;
}

/* Rolls back a handover that did not reach the CAS: ABORT to both. */
static void start_abort(ts_hos_t *s, ts_ho_t *h, const char *reason, uint64_t now_us)
{
    ts_warn("handover %s of cell %s from %s to %s aborted at epoch %" PRIu64 ": %s", h->id, h->key, h->from,
            h->to, h->epoch, reason);
    snprintf(h->reply, sizeof h->reply, "error: %s; aborted, %s keeps %s at epoch %" PRIu64, reason, h->from,
             h->key, h->epoch);
    h->state = TS_HO_ABORTING;
    /* both slots count as awaited until sent, so a failed first send does not
     * finish the machine before the second is out */
    h->req[0] = h->req[1] = UINT64_MAX;
    send_req(s, h, 0, now_us);
    if (h->state == TS_HO_ABORTING) send_req(s, h, 1, now_us);
}

static void succeed(ts_hos_t *s, ts_ho_t *h)
{
    h->freeze_us = h->resume_at_us >= h->freeze_at_us && h->freeze_at_us && h->resume_at_us
                       ? h->resume_at_us - h->freeze_at_us
                       : 0;
    ts_info("handover %s (%s): cell %s from %s to %s, epoch %" PRIu64 "->%" PRIu64 ", seq %" PRIu64
            "..%" PRIu64 ", %u entities, freeze %" PRIu64 " us, total %" PRIu64 " us",
            h->id, ts_ho_reason_str(h->why), h->key, h->from, h->to, h->epoch, h->new_epoch, h->s1, h->s2,
            h->entities, h->freeze_us, h->total_us);
    snprintf(h->reply, sizeof h->reply,
             "ok %s->%s epoch %" PRIu64 "->%" PRIu64 " freeze_us=%" PRIu64 " total_us=%" PRIu64, h->from,
             h->to, h->epoch, h->new_epoch, h->freeze_us, h->total_us);
    finish(s, h);
}

/* The answer (or its absence) for slot `which` of h's current state. */
static void advance(ts_hos_t *s, ts_ho_t *h, int which, const ack_t *a, uint64_t now_us)
{
    switch (h->state) {
    case TS_HO_PREPARE:
        if (a->st != TS_OK) {
            start_abort(s, h, a->error, now_us);
            return;
        }
        h->s1 = a->seq;
        h->state = TS_HO_FREEZE;
        send_req(s, h, 0, now_us);
        return;
    case TS_HO_FREEZE: {
        if (a->st != TS_OK) {
            start_abort(s, h, a->error, now_us);
            return;
        }
        h->s2 = a->seq;
        h->freeze_at_us = a->freeze_us;
        h->entities = a->entities;
        ts_cell_entry_t out;
        char why[160] = "registry unavailable", reason[256];
        memset(&out, 0, sizeof out);
        ts_status_t st = s->io.cas(s->io.ud, h, &out, why, sizeof why);
        if (st != TS_OK) {
            if (st == TS_ERR_CONFLICT)
                snprintf(reason, sizeof reason,
                         "the registry changed under the handover (now %s at epoch %" PRIu64 ")",
                         out.owner[0] ? out.owner : "-", out.epoch);
            else
                snprintf(reason, sizeof reason, "%s", why);
            start_abort(s, h, reason, now_us);
            return;
        }
        /* committed: from here on the registry is the truth */
        h->moved = true;
        h->new_epoch = out.epoch;
        h->state = TS_HO_COMMIT_TO;
        send_req(s, h, 0, now_us);
        return;
    }
    case TS_HO_COMMIT_TO:
        if (a->st == TS_OK) {
            h->resume_at_us = a->resume_us;
        } else {
            ts_warn("handover %s: %s; %s binds the cell when it sees the registry", h->id, a->error, h->to);
            h->unanswered = true;
        }
        h->total_us = now_us - h->t0_us;
        h->state = TS_HO_COMMIT_FROM;
        send_req(s, h, 0, now_us);
        return;
    case TS_HO_COMMIT_FROM:
        if (a->st == TS_ERR_UNAVAILABLE) {
            /* it answered: it already let go on the RegistryChange */
            ts_debug("handover %s: %s", h->id, a->error);
        } else if (a->st != TS_OK) {
            ts_warn("handover %s: %s; %s lets go when it sees the registry", h->id, a->error, h->from);
            h->unanswered = true;
        }
        succeed(s, h);
        return;
    case TS_HO_ABORTING:
        if (a->st != TS_OK && a->st != TS_ERR_UNAVAILABLE) {
            ts_warn("handover %s: %s; %s", h->id, a->error,
                    which == 0 ? "the source resumes on its own after its timeout"
                               : "the target drops its copy on its own");
            h->unanswered = true;
        }
        h->req[which] = 0;
        if (h->req[0] == 0 && h->req[1] == 0) finish(s, h);
        return;
    case TS_HO_DONE:
        return;
    }
}

ts_status_t ts_hos_start(ts_hos_t *s, const ts_ho_t *want, uint64_t now_us)
{
    if (ts_hos_find(s, &want->cell)) return TS_ERR_EXISTS;
    if (ts_hos_full(s)) return TS_ERR_BUSY;
    size_t slot = 0;
    while (s->used[slot])
        slot++;
    ts_ho_t *h = &s->slots[slot];
    *h = *want;
    ts_cell_format(&h->cell, h->key, sizeof h->key);
    h->state = TS_HO_PREPARE;
    h->req[0] = h->req[1] = 0;
    h->t0_us = now_us;
    h->moved = h->unanswered = false;
    h->reply[0] = '\0';
    s->used[slot] = true;
    s->n++;
    send_req(s, h, 0, now_us);
    return TS_OK;
}

/* Decodes an answer for h's current step. */
static void parse_ack(const ts_ho_t *h, int which, const uint8_t *data, size_t len, ack_t *a)
{
    memset(a, 0, sizeof *a);
    const char *phase = phase_name(state_phase(h->state)), *target = state_target(h, which);
    if (len == 0) {
        a->st = TS_ERR_TIMEOUT;
        snprintf(a->error, sizeof a->error, "%s to %s: no answer (no responders)", phase, target);
        return;
    }
    Tessera__V1__Handover *ack = tessera__v1__handover__unpack(NULL, len, data);
    if (!ack || ack->phase != TESSERA__V1__HANDOVER_PHASE__HANDOVER_ACK || !ack->id ||
        strcmp(ack->id, h->id) != 0) {
        a->st = TS_ERR_MALFORMED;
        snprintf(a->error, sizeof a->error, "%s to %s: malformed acknowledgement", phase, target);
        if (ack) tessera__v1__handover__free_unpacked(ack, NULL);
        return;
    }
    a->seq = ack->seq;
    a->freeze_us = ack->freeze_us;
    a->resume_us = ack->resume_us;
    a->entities = ack->entities;
    a->st = ack->ok ? TS_OK : TS_ERR_UNAVAILABLE;
    if (!ack->ok)
        snprintf(a->error, sizeof a->error, "%s refused by %s: %s", phase, target,
                 ack->error && *ack->error ? ack->error : "no reason given");
    tessera__v1__handover__free_unpacked(ack, NULL);
}

void ts_hos_reply(ts_hos_t *s, uint64_t req, const uint8_t *data, size_t len, uint64_t now_us)
{
    if (req == 0) return;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->used[i]) continue;
        ts_ho_t *h = &s->slots[i];
        for (int which = 0; which < 2; which++) {
            if (h->req[which] != req) continue;
            ack_t a;
            parse_ack(h, which, data, len, &a);
            h->req[which] = 0;
            advance(s, h, which, &a, now_us);
            return;
        }
    }
}

void ts_hos_expire(ts_hos_t *s, uint64_t now_us)
{
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->used[i]) continue;
        ts_ho_t *h = &s->slots[i];
        if (now_us < h->deadline_us) continue;
        for (int which = 0; which < 2 && s->used[i] && h->state != TS_HO_DONE; which++) {
            if (h->req[which] == 0) continue;
            ack_t a = {.st = TS_ERR_TIMEOUT};
            snprintf(a.error, sizeof a.error, "%s to %s: no answer", phase_name(state_phase(h->state)),
                     state_target(h, which));
            h->req[which] = 0;
            ts_ho_state_t before = h->state;
            advance(s, h, which, &a, now_us);
            if (h->state != before) break; /* the machine moved on: its new step has a new deadline */
        }
    }
}

void ts_hos_cancel_all(ts_hos_t *s, const char *why)
{
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->used[i]) continue;
        ts_ho_t *h = &s->slots[i];
        ts_warn("handover %s of cell %s from %s to %s (%s): %s", h->id, h->key, h->from, h->to,
                ts_ho_state_str(h->state), why);
        if (h->moved)
            snprintf(h->reply, sizeof h->reply,
                     "ok %s->%s epoch %" PRIu64 "->%" PRIu64 " freeze_us=0 total_us=%" PRIu64, h->from, h->to,
                     h->epoch, h->new_epoch, h->total_us);
        else
            snprintf(h->reply, sizeof h->reply, "error: %s", why);
        h->unanswered = true;
        finish(s, h);
    }
}

uint64_t ts_hos_next_deadline(const ts_hos_t *s)
{
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < s->cap; i++) {
        if (s->used[i] && (s->slots[i].req[0] || s->slots[i].req[1]) && s->slots[i].deadline_us < next)
            next = s->slots[i].deadline_us;
    }
    return next;
}
