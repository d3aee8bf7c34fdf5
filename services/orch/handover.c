/* The orchestrator's side of live handovers: the preconditions, a bounded
 * queue of requests (ctl, drains, the rebalancer), and the transport of the
 * state machines in hosm.c — every request is a core NATS publish whose
 * reply subject is <inbox>.<request number>; one wildcard subscription on
 * the inbox copies each answer into a bounded queue and wakes the main loop,
 * which feeds it to the machine. Nothing here waits for a worker.
 *
 * Invariants: at most orch.max_handovers machines in flight and QUEUE_MAX
 * requests queued (a request beyond is refused with "error: busy, try
 * again"); every request gets exactly one reply on its reply subject (if it
 * has one); preconditions are checked when a request starts (not when it is
 * queued) against the local registry copy and liveness table; the answers
 * queue never holds more than ANSWERS_MAX (a machine whose answer is
 * dropped times out and aborts, which is safe before the CAS and harmless
 * after it). */
#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define QUEUE_MAX 4096
#define ANSWERS_MAX 1024
#define ANSWER_DATA_MAX 1024
#define ANSWERS_PER_POLL 64

typedef struct {
    ts_cell_t cell;
    char to[TS_WORKER_ID_MAX];
    ts_ho_reason_t why;
    char *reply; /* reply subject, NULL for internal requests */
} pending_t;

typedef struct {
    uint64_t req;
    size_t len; /* SIZE_MAX: too large to keep (malformed) */
    uint8_t data[ANSWER_DATA_MAX];
} answer_t;

struct ts_handovers {
    ts_orch_t *o;
    ts_hos_t hos;
    char inbox[96];
    size_t inbox_len;
    ts_bus_sub_t *sub;

    pthread_mutex_t mu; /* guards the answers ring */
    answer_t *answers;
    size_t ahead, alen;
    uint64_t dropped;

    pending_t *queue; /* ring, main thread only */
    size_t qhead, qlen;
    size_t busy_why[TS_HO_REASONS]; /* queued + in flight per reason */
};

/* ---- transport -------------------------------------------------------------------- */

static void on_answer(void *ud, const ts_bus_msg_t *msg)
{
    ts_handovers_t *hs = ud;
    const char *subject = ts_bus_msg_subject(msg);
    if (strncmp(subject, hs->inbox, hs->inbox_len) != 0 || subject[hs->inbox_len] != '.') return;
    uint64_t req = 0;
    if (ts_parse_u64(subject + hs->inbox_len + 1, &req) != TS_OK || req == 0) return;
    size_t len = ts_bus_msg_len(msg);
    bool dropped = false;
    pthread_mutex_lock(&hs->mu);
    if (hs->alen < ANSWERS_MAX) {
        answer_t *a = &hs->answers[(hs->ahead + hs->alen++) % ANSWERS_MAX];
        a->req = req;
        a->len = len <= ANSWER_DATA_MAX ? len : SIZE_MAX;
        if (len <= ANSWER_DATA_MAX) memcpy(a->data, ts_bus_msg_data(msg), len);
    } else {
        dropped = ++hs->dropped % 100 == 1;
    }
    pthread_mutex_unlock(&hs->mu);
    if (dropped) ts_warn("handover answers queue full (%d); dropping (the handover times out)", ANSWERS_MAX);
    ts_orch_wake(hs->o);
}

static ts_status_t io_send(void *ud, const char *subject, uint64_t req, uint64_t epoch, const uint8_t *buf,
                           size_t len)
{
    ts_handovers_t *hs = ud;
    char reply[128];
    snprintf(reply, sizeof reply, "%s.%" PRIu64, hs->inbox, req);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HANDOVER, .epoch = epoch};
    return ts_bus_publish_reply(hs->o->bus, subject, reply, &hdr, buf, len);
}

static ts_status_t io_cas(void *ud, const ts_ho_t *h, ts_cell_entry_t *out, char *why, size_t cap)
{
    ts_handovers_t *hs = ud;
    ts_orch_t *o = hs->o;
    if (!o->leading || !ts_leader_held(o->leader)) {
        snprintf(why, cap, "lost the leader lock");
        return TS_ERR_UNAVAILABLE;
    }
    ts_status_t st = ts_orch_cas(o, &h->cell, h->epoch, h->to, out);
    if (st == TS_ERR_UNAVAILABLE)
        snprintf(why, cap, "%s",
                 o->leading && ts_leader_held(o->leader) ? "registry unavailable" : "lost the leader lock");
    return st;
}

static void publish_reply(ts_handovers_t *hs, const char *subject, const char *text)
{
    if (!subject) return;
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_status_t st = ts_bus_publish(hs->o->bus, subject, &hdr, text, strlen(text));
    if (st != TS_OK) ts_warn("cannot send ctl reply to %s: %s", subject, ts_status_str(st));
}

static void io_done(void *ud, ts_ho_t *h)
{
    ts_handovers_t *hs = ud;
    ts_orch_t *o = hs->o;
    ts_stats_count(&o->stats, h->moved ? TS_STAT_HANDOVER : TS_STAT_ABORTED);
    if (h->unanswered) ts_stats_count(&o->stats, TS_STAT_FAILED);
    if (h->moved && h->resume_at_us) ts_stats_sample(&o->stats, h->freeze_us, h->total_us);
    if (h->moved && h->why == TS_HO_REBALANCE) ts_stats_count(&o->stats, TS_STAT_REBALANCE_MOVE);
    if (h->moved && h->why == TS_HO_DRAIN) ts_stats_count(&o->stats, TS_STAT_DRAIN_MOVE);
    if (h->why == TS_HO_DRAIN && !h->moved)
        ts_warn("drain: cell %s of %s: %s; retrying", h->key, h->from, h->reply);
    if (o->ho_done[h->why]) o->ho_done[h->why](o, h->moved);
    if (hs->busy_why[h->why] > 0) hs->busy_why[h->why]--;
    publish_reply(hs, h->ctx, h->reply);
    free(h->ctx);
    h->ctx = NULL;
}

ts_status_t ts_handovers_create(ts_handovers_t **out, ts_orch_t *o)
{
    *out = NULL;
    ts_handovers_t *hs = calloc(1, sizeof *hs);
    if (!hs) return TS_ERR_NOMEM;
    hs->o = o;
    pthread_mutex_init(&hs->mu, NULL);
    hs->answers = calloc(ANSWERS_MAX, sizeof *hs->answers);
    hs->queue = calloc(QUEUE_MAX, sizeof *hs->queue);
    ts_ho_io_t io = {.ud = hs, .send = io_send, .cas = io_cas, .done = io_done};
    size_t cap = o->cfg->orch_max_handovers > 0 ? (size_t)o->cfg->orch_max_handovers : 1;
    ts_status_t st = hs->answers && hs->queue
                         ? ts_hos_init(&hs->hos, cap, o->cfg->orch_handover_timeout_ms, &io)
                         : TS_ERR_NOMEM;
    if (st == TS_OK) {
        ts_hos_set_prepare_timeout(&hs->hos, o->cfg->orch_precopy_timeout_ms);
        snprintf(hs->inbox, sizeof hs->inbox, "_INBOX.tsorch.%ld_%" PRIx64, (long)getpid(), ts_now_us());
        hs->inbox_len = strlen(hs->inbox);
        char wildcard[128];
        snprintf(wildcard, sizeof wildcard, "%s.*", hs->inbox);
        st = ts_bus_subscribe(o->bus, wildcard, on_answer, hs, &hs->sub);
    }
    if (st != TS_OK) {
        ts_handovers_destroy(hs);
        return st;
    }
    *out = hs;
    return TS_OK;
}

void ts_handovers_destroy(ts_handovers_t *hs)
{
    if (!hs) return;
    ts_bus_sub_destroy(hs->sub); /* no answer callback runs after this */
    if (hs->hos.slots) ts_handovers_reset(hs, "the orchestrator is stopping");
    ts_hos_free(&hs->hos);
    pthread_mutex_destroy(&hs->mu);
    free(hs->answers);
    free(hs->queue);
    free(hs);
}

/* ---- requests ------------------------------------------------------------------------ */

static ts_status_t refuse(ts_handovers_t *hs, const char *reply_subject, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static ts_status_t refuse(ts_handovers_t *hs, const char *reply_subject, const char *fmt, ...)
{
    char text[512];
    int n = snprintf(text, sizeof text, "error: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof text - (size_t)n, fmt, ap);
    va_end(ap);
    ts_stats_count(&hs->o->stats, TS_STAT_REFUSED);
    ts_debug("handover refused: %s", text);
    publish_reply(hs, reply_subject, text);
    return TS_ERR_INVALID;
}

ts_status_t ts_orch_handover(ts_orch_t *o, const ts_cell_t *cell, const char *to, ts_ho_reason_t why,
                             const char *reply_subject)
{
    ts_handovers_t *hs = o->ho;
    char key[TS_CELL_STR_MAX];
    if (ts_cell_format(cell, key, sizeof key) < 0 || cell->world != o->world)
        return refuse(hs, reply_subject, "cell is not in world %u", o->world);
    if (!ts_worker_id_valid(to)) return refuse(hs, reply_subject, "bad worker id '%s'", to);
    if (hs->qlen == QUEUE_MAX) return refuse(hs, reply_subject, "busy, try again");
    char *reply = NULL;
    if (reply_subject && !(reply = strdup(reply_subject))) return refuse(hs, reply_subject, "out of memory");
    pending_t *p = &hs->queue[(hs->qhead + hs->qlen++) % QUEUE_MAX];
    p->cell = *cell;
    ts_strlcpy(p->to, to, sizeof p->to);
    p->why = why;
    p->reply = reply;
    hs->busy_why[why]++;
    ts_orch_wake(o);
    return TS_OK;
}

/* Whether id is alive: the last poll, confirmed with Redis when it says no
 * (a worker that just started is not refused for a poll's age). */
static bool worker_alive(ts_orch_t *o, const char *id, bool *registry_ok)
{
    *registry_ok = true;
    if (ts_liveness_alive(&o->live, id)) return true;
    if (!o->reg) {
        *registry_ok = false;
        return false;
    }
    char token[1][TS_WORKER_TOKEN_MAX];
    const char *ids[] = {id};
    ts_status_t st = ts_registry_workers_liveness(o->reg, ids, 1, token);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        *registry_ok = false;
        return false;
    }
    return token[0][0] != '\0';
}

/* Checks the preconditions of p and starts it; false if it was refused. */
static bool start(ts_handovers_t *hs, pending_t *p, uint64_t now)
{
    ts_orch_t *o = hs->o;
    char key[TS_CELL_STR_MAX];
    ts_cell_format(&p->cell, key, sizeof key);
    if (!o->leading || !ts_leader_held(o->leader)) return refuse(hs, p->reply, "not leader"), false;
    if (!o->reg || o->cells_stale) return refuse(hs, p->reply, "registry unavailable"), false;
    long k = ts_orch_cell_index(o, &p->cell);
    if (k < 0) return refuse(hs, p->reply, "unknown cell %s", key), false;
    const ts_cell_entry_t *e = &o->cells[k];
    if (e->state != TS_CELL_ACTIVE)
        return refuse(hs, p->reply, "cell %s is %s, not active", key, ts_cell_state_str(e->state)), false;
    if (strcmp(e->owner, p->to) == 0)
        return refuse(hs, p->reply, "%s already owns %s (epoch %" PRIu64 ")", p->to, key, e->epoch), false;
    if (ts_hos_find(&hs->hos, &p->cell))
        return refuse(hs, p->reply, "cell %s is being handed over", key), false;
    bool reg_ok = true;
    if (!worker_alive(o, p->to, &reg_ok))
        return refuse(hs, p->reply, reg_ok ? "worker %s is not alive" : "registry unavailable", p->to), false;
    ts_worker_info_t info;
    if (ts_draining_has(o->drain, p->to) || (ts_workers_get(o->workers, p->to, &info) && info.draining))
        return refuse(hs, p->reply, "worker %s is draining", p->to), false;
    if (!e->owner[0] || !ts_worker_id_valid(e->owner) || !worker_alive(o, e->owner, &reg_ok))
        return refuse(hs, p->reply, "owner %s of %s is not alive (crash recovery moves its cells)",
                      e->owner[0] ? e->owner : "-", key),
               false;
    if (o->orphan[k])
        return refuse(hs, p->reply, "owner %s of %s was replaced (crash recovery moves its cells)", e->owner,
                      key),
               false;
    ts_ho_t h = {.cell = p->cell, .epoch = e->epoch, .why = p->why, .ctx = p->reply};
    ts_strlcpy(h.from, e->owner, sizeof h.from);
    ts_strlcpy(h.to, p->to, sizeof h.to);
    snprintf(h.id, sizeof h.id, "%s-%" PRIu64, ts_leader_holder(o->leader), ++o->handover_seq);
    p->reply = NULL; /* the machine owns it now; io_done frees it */
    if (ts_hos_start(&hs->hos, &h, now) != TS_OK) {
        /* cannot happen: checked above; answer anyway */
        publish_reply(hs, h.ctx, "error: busy, try again");
        free(h.ctx);
        return false;
    }
    return true;
}

bool ts_handovers_poll(ts_handovers_t *hs)
{
    bool did = false;
    answer_t batch[16];
    for (int round = 0; round < ANSWERS_PER_POLL / 16; round++) {
        size_t n = 0;
        pthread_mutex_lock(&hs->mu);
        while (n < 16 && hs->alen > 0) {
            batch[n++] = hs->answers[hs->ahead];
            hs->ahead = (hs->ahead + 1) % ANSWERS_MAX;
            hs->alen--;
        }
        pthread_mutex_unlock(&hs->mu);
        if (n == 0) break;
        did = true;
        uint64_t now = ts_mono_us();
        for (size_t i = 0; i < n; i++) {
            static const uint8_t junk = 0xff;
            if (batch[i].len == SIZE_MAX)
                ts_hos_reply(&hs->hos, batch[i].req, &junk, 1, now);
            else
                ts_hos_reply(&hs->hos, batch[i].req, batch[i].data, batch[i].len, now);
        }
    }
    uint64_t now = ts_mono_us();
    if (ts_hos_next_deadline(&hs->hos) <= now) {
        ts_hos_expire(&hs->hos, now);
        did = true;
    }
    while (hs->qlen > 0 && !ts_hos_full(&hs->hos)) {
        pending_t p = hs->queue[hs->qhead];
        hs->qhead = (hs->qhead + 1) % QUEUE_MAX;
        hs->qlen--;
        if (!start(hs, &p, ts_mono_us())) {
            if (hs->busy_why[p.why] > 0) hs->busy_why[p.why]--;
            if (hs->o->ho_done[p.why]) hs->o->ho_done[p.why](hs->o, false);
        }
        free(p.reply);
        did = true;
    }
    return did;
}

uint64_t ts_handovers_next_deadline(ts_handovers_t *hs)
{
    return ts_hos_next_deadline(&hs->hos);
}

size_t ts_hos_count_of(ts_handovers_t *hs)
{
    return hs ? ts_hos_count(&hs->hos) : 0;
}

size_t ts_handovers_busy(ts_handovers_t *hs)
{
    return ts_hos_count(&hs->hos) + hs->qlen;
}

size_t ts_handovers_busy_for(ts_handovers_t *hs, ts_ho_reason_t why)
{
    return hs->busy_why[why];
}

bool ts_handovers_has_cell(ts_handovers_t *hs, const ts_cell_t *cell)
{
    if (ts_hos_find(&hs->hos, cell)) return true;
    for (size_t i = 0; i < hs->qlen; i++) {
        if (ts_cell_eq(&hs->queue[(hs->qhead + i) % QUEUE_MAX].cell, cell)) return true;
    }
    return false;
}

void ts_handovers_reset(ts_handovers_t *hs, const char *why)
{
    ts_hos_cancel_all(&hs->hos, why);
    while (hs->qlen > 0) {
        pending_t *p = &hs->queue[hs->qhead];
        hs->qhead = (hs->qhead + 1) % QUEUE_MAX;
        hs->qlen--;
        char text[256];
        snprintf(text, sizeof text, "error: %s", why);
        publish_reply(hs, p->reply, text);
        free(p->reply);
        p->reply = NULL;
        if (hs->o->ho_done[p->why]) hs->o->ho_done[p->why](hs->o, false);
    }
    memset(hs->busy_why, 0, sizeof hs->busy_why);
    hs->o->rebalance_pending = 0;
}
