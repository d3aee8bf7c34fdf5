/* The orchestrator's side of a live handover of cell C from its owner A (at
 * epoch E) to worker B, as core NATS requests on <C>.handover:
 *
 *   PREPARE -> A   A sends B the PreCopy itself
 *   FREEZE  -> A   A stops consuming C and sends B the Diff (seq s2)
 *   CAS            registry: owner B, epoch E+1, then RegistryChange
 *   COMMIT  -> B   B consumes C from s2+1 with epoch E+1
 *   COMMIT  -> A   A drops C
 *   ABORT   -> A, B  on any failure before the CAS: A resumes, B discards
 *
 * Invariants: nothing is written before every precondition holds; the CAS is
 * the single point of no return — before it every failure ends in ABORT to
 * both workers and the registry untouched, after it the handover counts as
 * done whatever the COMMIT replies say (the workers converge from the
 * registry on their own); one handover at a time, on the main thread. */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

typedef struct {
    ts_cell_t cell;
    char key[TS_CELL_STR_MAX];
    char id[160];
    uint64_t epoch;
    char from[TS_WORKER_ID_MAX];
    char to[TS_WORKER_ID_MAX];
} ho_t;

/* What a worker answered. */
typedef struct {
    uint64_t seq, freeze_us, resume_us;
    uint32_t entities;
    char error[160];
} ack_t;

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

/* One request to `target`. TS_OK: it acknowledged with ok; TS_ERR_TIMEOUT
 * (or another bus error): no answer; TS_ERR_UNAVAILABLE: it refused, with
 * its reason in a->error. */
static ts_status_t request(ts_orch_t *o, const ho_t *h, Tessera__V1__HandoverPhase phase, const char *target,
                           uint64_t new_epoch, ack_t *a)
{
    memset(a, 0, sizeof *a);
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &h->cell);
    Tessera__V1__Handover m = TESSERA__V1__HANDOVER__INIT;
    m.id = (char *)h->id;
    m.phase = phase;
    m.cell = &cell_pb;
    m.epoch = h->epoch;
    m.new_epoch = new_epoch;
    m.from = (char *)h->from;
    m.to = (char *)h->to;
    m.target = (char *)target;
    uint8_t *buf = NULL;
    size_t len = 0;
    ts_status_t st = ts_proto_pack(&m.base, &buf, &len);
    if (st != TS_OK)
        return st;
    char subject[TS_SUBJECT_MAX];
    ts_subject_cell(subject, sizeof subject, &h->cell, TS_SUBJ_HANDOVER);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HANDOVER, .epoch = h->epoch};
    ts_bus_msg_t *reply = NULL;
    st = ts_bus_request(o->bus, subject, &hdr, buf, len, o->cfg->orch_handover_timeout_ms, &reply);
    free(buf);
    if (st != TS_OK) {
        snprintf(a->error, sizeof a->error, "%s to %s: %s", phase_name(phase), target,
                 st == TS_ERR_TIMEOUT ? "no answer" : ts_status_str(st));
        return st == TS_ERR_UNAVAILABLE ? TS_ERR_BUS : st;
    }
    Tessera__V1__Handover *ack = tessera__v1__handover__unpack(NULL, ts_bus_msg_len(reply), ts_bus_msg_data(reply));
    ts_bus_msg_destroy(reply);
    if (!ack || ack->phase != TESSERA__V1__HANDOVER_PHASE__HANDOVER_ACK || !ack->id ||
        strcmp(ack->id, h->id) != 0) {
        snprintf(a->error, sizeof a->error, "%s to %s: malformed acknowledgement", phase_name(phase), target);
        if (ack)
            tessera__v1__handover__free_unpacked(ack, NULL);
        return TS_ERR_MALFORMED;
    }
    a->seq = ack->seq;
    a->freeze_us = ack->freeze_us;
    a->resume_us = ack->resume_us;
    a->entities = ack->entities;
    st = ack->ok ? TS_OK : TS_ERR_UNAVAILABLE;
    if (!ack->ok)
        snprintf(a->error, sizeof a->error, "%s refused by %s: %s", phase_name(phase), target,
                 ack->error && *ack->error ? ack->error : "no reason given");
    tessera__v1__handover__free_unpacked(ack, NULL);
    return st;
}

bool ts_orch_worker_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n >= TS_WORKER_ID_MAX)
        return false;
    for (const char *p = id; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return false;
    }
    return true;
}

static ts_status_t refuse(ts_orch_t *o, char *reply, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static ts_status_t refuse(ts_orch_t *o, char *reply, size_t cap, const char *fmt, ...)
{
    int n = snprintf(reply, cap, "error: ");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < cap)
        vsnprintf(reply + n, cap - (size_t)n, fmt, ap);
    va_end(ap);
    ts_stats_count(&o->stats, TS_STAT_REFUSED);
    return TS_ERR_INVALID;
}

/* Preconditions; fills h from the registry. TS_OK or a refusal in reply. */
static ts_status_t check(ts_orch_t *o, ho_t *h, const char *to, char *reply, size_t cap)
{
    if (!o->leading || !ts_leader_held(o->leader))
        return refuse(o, reply, cap, "not leader");
    if (!ts_orch_worker_id_ok(to))
        return refuse(o, reply, cap, "bad worker id '%s'", to);
    if (!o->reg)
        return refuse(o, reply, cap, "registry unavailable");
    ts_cell_entry_t e;
    ts_status_t st = ts_registry_cell_get(o->reg, &h->cell, &e);
    if (st == TS_ERR_NOT_FOUND)
        return refuse(o, reply, cap, "unknown cell %s", h->key);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return refuse(o, reply, cap, "registry unavailable");
    }
    ts_orch_note_cell(o, &e);
    if (e.state != TS_CELL_ACTIVE)
        return refuse(o, reply, cap, "cell %s is %s, not active", h->key, ts_cell_state_str(e.state));
    if (strcmp(e.owner, to) == 0)
        return refuse(o, reply, cap, "%s already owns %s (epoch %" PRIu64 ")", to, h->key, e.epoch);
    bool alive = false;
    if ((st = ts_registry_worker_is_alive(o->reg, to, &alive)) != TS_OK) {
        ts_orch_registry_broken(o, st);
        return refuse(o, reply, cap, "registry unavailable");
    }
    if (!alive)
        return refuse(o, reply, cap, "worker %s is not alive", to);
    if (ts_ctl_is_draining(o->ctl, to))
        return refuse(o, reply, cap, "worker %s is draining", to);
    ts_worker_info_t info;
    if (ts_workers_get(o->workers, to, &info) && info.draining)
        return refuse(o, reply, cap, "worker %s is draining", to);
    if (!e.owner[0] || !ts_orch_worker_id_ok(e.owner) ||
        (st = ts_registry_worker_is_alive(o->reg, e.owner, &alive)) != TS_OK || !alive) {
        if (st != TS_OK && o->reg)
            ts_orch_registry_broken(o, st);
        return refuse(o, reply, cap, "owner %s of %s is not alive (crash recovery moves its cells)",
                      e.owner[0] ? e.owner : "-", h->key);
    }
    h->epoch = e.epoch;
    ts_strlcpy(h->from, e.owner, sizeof h->from);
    ts_strlcpy(h->to, to, sizeof h->to);
    snprintf(h->id, sizeof h->id, "%s-%" PRIu64, ts_leader_holder(o->leader), ++o->handover_seq);
    return TS_OK;
}

/* Rolls back a handover that did not reach the CAS. */
static void abort_both(ts_orch_t *o, const ho_t *h, const char *reason, char *reply, size_t cap)
{
    ack_t a;
    bool unanswered = false;
    if (request(o, h, TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT, h->from, 0, &a) != TS_OK) {
        ts_warn("handover %s: %s; the source resumes on its own after its timeout", h->id, a.error);
        unanswered = true;
    }
    if (request(o, h, TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT, h->to, 0, &a) != TS_OK) {
        ts_warn("handover %s: %s; the target drops its copy on its own", h->id, a.error);
        unanswered = true;
    }
    ts_stats_count(&o->stats, TS_STAT_ABORTED);
    if (unanswered)
        ts_stats_count(&o->stats, TS_STAT_FAILED);
    ts_warn("handover %s of cell %s from %s to %s aborted at epoch %" PRIu64 ": %s", h->id, h->key, h->from, h->to,
            h->epoch, reason);
    snprintf(reply, cap, "error: %s; aborted, %s keeps %s at epoch %" PRIu64, reason, h->from, h->key, h->epoch);
}

static const char *reason_name(ts_ho_reason_t why)
{
    return why == TS_HO_DRAIN ? "drain" : why == TS_HO_REBALANCE ? "rebalance" : "ctl";
}

ts_status_t ts_orch_handover(ts_orch_t *o, const ts_cell_t *cell, const char *to, ts_ho_reason_t why, char *reply,
                             size_t cap)
{
    ho_t h = {.cell = *cell};
    if (ts_cell_format(cell, h.key, sizeof h.key) < 0 || cell->world != o->world)
        return refuse(o, reply, cap, "cell is not in world %u", o->world);
    ts_status_t st = check(o, &h, to, reply, cap);
    if (st != TS_OK)
        return st;

    uint64_t t0 = ts_mono_us();
    ack_t a;
    char reason[256];
    if (request(o, &h, TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE, h.from, 0, &a) != TS_OK) {
        abort_both(o, &h, a.error, reply, cap);
        return TS_ERR_UNAVAILABLE;
    }
    uint64_t s1 = a.seq;
    if (request(o, &h, TESSERA__V1__HANDOVER_PHASE__HANDOVER_FREEZE, h.from, 0, &a) != TS_OK) {
        abort_both(o, &h, a.error, reply, cap);
        return TS_ERR_UNAVAILABLE;
    }
    uint64_t s2 = a.seq, freeze_at = a.freeze_us;
    uint32_t entities = a.entities;

    ts_cell_entry_t out;
    st = ts_orch_cas(o, &h.cell, h.epoch, h.to, &out);
    if (st != TS_OK) {
        if (st == TS_ERR_CONFLICT)
            snprintf(reason, sizeof reason, "the registry changed under the handover (now %s at epoch %" PRIu64 ")",
                     out.owner[0] ? out.owner : "-", out.epoch);
        else
            snprintf(reason, sizeof reason, "%s",
                     o->leading && ts_leader_held(o->leader) ? "registry unavailable" : "lost the leader lock");
        abort_both(o, &h, reason, reply, cap);
        return TS_ERR_UNAVAILABLE;
    }

    /* committed: from here on the registry is the truth */
    uint64_t resume_at = 0;
    bool unanswered = false;
    if (request(o, &h, TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT, h.to, out.epoch, &a) == TS_OK) {
        resume_at = a.resume_us;
    } else {
        ts_warn("handover %s: %s; %s binds the cell when it sees the registry", h.id, a.error, h.to);
        unanswered = true;
    }
    uint64_t total_us = ts_mono_us() - t0;
    st = request(o, &h, TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT, h.from, out.epoch, &a);
    if (st == TS_ERR_UNAVAILABLE) {
        /* it answered: it already let go on the RegistryChange */
        ts_debug("handover %s: %s", h.id, a.error);
    } else if (st != TS_OK) {
        ts_warn("handover %s: %s; %s lets go when it sees the registry", h.id, a.error, h.from);
        unanswered = true;
    }
    uint64_t freeze_us = resume_at >= freeze_at && freeze_at && resume_at ? resume_at - freeze_at : 0;
    ts_stats_count(&o->stats, TS_STAT_HANDOVER);
    if (unanswered)
        ts_stats_count(&o->stats, TS_STAT_FAILED);
    if (resume_at)
        ts_stats_sample(&o->stats, freeze_us, total_us);
    ts_info("handover %s (%s): cell %s from %s to %s, epoch %" PRIu64 "->%" PRIu64 ", seq %" PRIu64 "..%" PRIu64
            ", %u entities, freeze %" PRIu64 " us, total %" PRIu64 " us",
            h.id, reason_name(why), h.key, h.from, h.to, h.epoch, out.epoch, s1, s2, entities, freeze_us, total_us);
    snprintf(reply, cap, "ok %s->%s epoch %" PRIu64 "->%" PRIu64 " freeze_us=%" PRIu64 " total_us=%" PRIu64, h.from,
             h.to, h.epoch, out.epoch, freeze_us, total_us);
    return TS_OK;
}
