/* The leader's control API on tessera.ctl.<world>.*, text in and text out:
 *
 *   handover  "<cell-key> <worker>"  -> "ok <from>-><to> epoch <E>-><E+1> freeze_us=<n> total_us=<n>"
 *                                       or "error: <reason>"
 *   drain     "<worker>"             -> "ok draining <n> cells" at once, then its cells move one by one
 *   stats     ""                     -> the stats JSON (stats.h)
 *
 * Handover requests are queued by the nats.c callbacks and handed to the
 * main loop, which starts them as state machines (handover.c) and answers
 * when each finishes — several run at once, and stats and drain are
 * answered in the callback from state the mutex guards, so ctl never waits
 * behind a handover. Draining workers
 * are kept in memory and in the Redis set ts:{w<world>}:draining, so a new
 * leader carries on; a worker leaves the set once it is gone.
 *
 * Invariants: only the leader is subscribed; every queued request gets
 * exactly one reply (its result, or "error: not leader" when the lead is
 * lost first); the queue never holds more than QUEUE_MAX requests. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define QUEUE_MAX 256
#define PAYLOAD_MAX 256
#define DRAIN_RETRY_US 1000000ULL
#define POLL_BATCH 16

typedef enum { REQ_HANDOVER = 0, REQ_DRAIN_MARK } req_kind_t;

typedef struct {
    req_kind_t kind;
    char *reply; /* reply subject, NULL for internal requests */
    ts_cell_t cell;
    char worker[TS_WORKER_ID_MAX];
} req_t;

typedef struct {
    char id[TS_WORKER_ID_MAX];
    size_t cells;
} owned_t;

struct ts_ctl {
    ts_orch_t *o;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    req_t *q;
    size_t nq;
    ts_bus_sub_t *subs[3];
    bool serving;
    char (*draining)[TS_WORKER_ID_MAX];
    size_t ndraining, cap_draining;
    owned_t *owned; /* per-owner cell counts of the latest snapshot */
    size_t nowned, cap_owned;
    uint64_t next_drain_us;
    bool woken;
};

static const char TEXT[] = "text/plain";

static void respond_text(ts_ctl_t *c, const ts_bus_msg_t *msg, const char *text)
{
    ts_bus_hdr_t hdr = {.type = TEXT};
    if (ts_bus_msg_reply(msg) && *ts_bus_msg_reply(msg))
        ts_bus_respond(c->o->bus, msg, &hdr, text, strlen(text));
}

static void publish_reply(ts_ctl_t *c, const char *subject, const char *text)
{
    if (!subject) return;
    ts_bus_hdr_t hdr = {.type = TEXT};
    ts_status_t st = ts_bus_publish(c->o->bus, subject, &hdr, text, strlen(text));
    if (st != TS_OK) ts_warn("cannot send ctl reply to %s: %s", subject, ts_status_str(st));
}

/* Copies the payload as a trimmed, NUL-terminated string; false if too long. */
static bool payload_text(const ts_bus_msg_t *msg, char *buf, size_t cap)
{
    size_t n = ts_bus_msg_len(msg);
    if (n >= cap) return false;
    memcpy(buf, ts_bus_msg_data(msg), n);
    buf[n] = '\0';
    char *s = buf;
    while (isspace((unsigned char)*s))
        s++;
    memmove(buf, s, strlen(s) + 1);
    n = strlen(buf);
    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        buf[--n] = '\0';
    return true;
}

static bool queue_locked(ts_ctl_t *c, const req_t *r)
{
    if (c->nq >= QUEUE_MAX) return false;
    c->q[c->nq++] = *r;
    pthread_cond_signal(&c->cond);
    return true;
}

void ts_ctl_wake(ts_ctl_t *c)
{
    pthread_mutex_lock(&c->mu);
    c->woken = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

static size_t draining_index_locked(const ts_ctl_t *c, const char *id)
{
    for (size_t i = 0; i < c->ndraining; i++) {
        if (strcmp(c->draining[i], id) == 0) return i;
    }
    return SIZE_MAX;
}

static bool add_draining_locked(ts_ctl_t *c, const char *id)
{
    if (draining_index_locked(c, id) != SIZE_MAX) return true;
    if (c->ndraining == c->cap_draining) {
        size_t cap = c->cap_draining ? c->cap_draining * 2 : 8;
        char(*v)[TS_WORKER_ID_MAX] = realloc(c->draining, cap * sizeof *v);
        if (!v) return false;
        c->draining = v;
        c->cap_draining = cap;
    }
    ts_strlcpy(c->draining[c->ndraining++], id, TS_WORKER_ID_MAX);
    return true;
}

static void on_handover(void *ud, const ts_bus_msg_t *msg)
{
    ts_ctl_t *c = ud;
    char text[PAYLOAD_MAX], key[PAYLOAD_MAX], worker[PAYLOAD_MAX], extra[2];
    if (!ts_bus_msg_reply(msg) || !*ts_bus_msg_reply(msg)) return;
    if (!payload_text(msg, text, sizeof text) || sscanf(text, "%255s %255s %1s", key, worker, extra) != 2) {
        respond_text(c, msg, "error: usage: <cell-key> <worker>, e.g. \"0.-1.0.0.0 w2\"");
        return;
    }
    req_t r = {.kind = REQ_HANDOVER};
    char reply[384];
    if (ts_cell_parse(key, &r.cell) != TS_OK) {
        snprintf(reply, sizeof reply, "error: bad cell key '%s' (want <world>.<cx>.<cy>.<depth>.<sub>)", key);
        respond_text(c, msg, reply);
        return;
    }
    if (r.cell.world != c->o->world) {
        snprintf(reply, sizeof reply, "error: cell %s is not in world %u", key, c->o->world);
        respond_text(c, msg, reply);
        return;
    }
    if (!ts_worker_id_valid(worker)) {
        snprintf(reply, sizeof reply, "error: bad worker id '%s'", worker);
        respond_text(c, msg, reply);
        return;
    }
    ts_strlcpy(r.worker, worker, sizeof r.worker);
    r.reply = strdup(ts_bus_msg_reply(msg));
    pthread_mutex_lock(&c->mu);
    bool queued = r.reply && c->serving && queue_locked(c, &r);
    pthread_mutex_unlock(&c->mu);
    if (!queued) {
        free(r.reply);
        respond_text(c, msg, "error: busy, try again");
    }
}

/* A worker other than id that is alive and not draining. Holds c->mu. */
static bool other_live_worker_locked(ts_ctl_t *c, const char *id)
{
    size_t n = ts_workers_snapshot(c->o->workers, NULL, 0);
    ts_worker_info_t *list = malloc((n ? n : 1) * sizeof *list);
    if (!list) return false;
    size_t m = ts_workers_snapshot(c->o->workers, list, n);
    n = m < n ? m : n;
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) {
        found = strcmp(list[i].id, id) != 0 && list[i].alive && !list[i].draining &&
                draining_index_locked(c, list[i].id) == SIZE_MAX;
    }
    free(list);
    return found;
}

static void on_drain(void *ud, const ts_bus_msg_t *msg)
{
    ts_ctl_t *c = ud;
    char id[PAYLOAD_MAX], reply[384];
    if (!payload_text(msg, id, sizeof id) || !ts_worker_id_valid(id)) {
        respond_text(c, msg, "error: usage: <worker>");
        return;
    }
    size_t cells = 0;
    bool ok = false, queued = false, fresh = false, alone = false;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->nowned; i++) {
        if (strcmp(c->owned[i].id, id) == 0) cells = c->owned[i].cells;
    }
    if (!c->serving) {
        snprintf(reply, sizeof reply, "error: not leader");
    } else if (!other_live_worker_locked(c, id)) {
        /* also the answer to a draining worker asking again once the others
         * are gone: it stops now instead of waiting for its drain timeout */
        alone = cells > 0;
        snprintf(reply, sizeof reply, "error: no other live worker");
    } else {
        /* a draining worker asks again every second: mark it once */
        fresh = draining_index_locked(c, id) == SIZE_MAX;
        ok = add_draining_locked(c, id);
        req_t r = {.kind = REQ_DRAIN_MARK};
        ts_strlcpy(r.worker, id, sizeof r.worker);
        queued = ok && fresh && queue_locked(c, &r);
        if (fresh) c->next_drain_us = 0;
        snprintf(reply, sizeof reply, ok ? "ok draining %zu cells" : "error: out of memory", cells);
    }
    pthread_mutex_unlock(&c->mu);
    if (alone)
        ts_warn(
            "drain of %s: no other live worker can take its %zu cells; it stops with them (crash recovery "
            "places them once a worker is live)",
            id, cells);
    if (ok && fresh)
        ts_info("drain of %s requested: %zu cells to hand away%s", id, cells,
                queued ? "" : " (not recorded in Redis: queue full)");
    respond_text(c, msg, reply);
}

static void on_stats(void *ud, const ts_bus_msg_t *msg)
{
    ts_ctl_t *c = ud;
    char json[1024];
    if (ts_stats_json(&c->o->stats, ts_leader_holder(c->o->leader), json, sizeof json) < 0)
        snprintf(json, sizeof json, "error: stats do not fit");
    respond_text(c, msg, json);
}

ts_status_t ts_ctl_create(ts_ctl_t **out, ts_orch_t *o)
{
    *out = NULL;
    ts_ctl_t *c = calloc(1, sizeof *c);
    if (!c) return TS_ERR_NOMEM;
    c->q = calloc(QUEUE_MAX, sizeof *c->q);
    if (!c->q) {
        free(c);
        return TS_ERR_NOMEM;
    }
    c->o = o;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    *out = c;
    return TS_OK;
}

/* Takes the queued requests out (caller frees them with free_reqs). */
static req_t *take_queue(ts_ctl_t *c, size_t max, size_t *n)
{
    pthread_mutex_lock(&c->mu);
    size_t k = c->nq < max ? c->nq : max;
    req_t *v = k ? malloc(k * sizeof *v) : NULL;
    if (v) {
        memcpy(v, c->q, k * sizeof *v);
        memmove(c->q, c->q + k, (c->nq - k) * sizeof *c->q);
        c->nq -= k;
    } else {
        k = 0;
    }
    pthread_mutex_unlock(&c->mu);
    *n = k;
    return v;
}

ts_status_t ts_ctl_serve(ts_ctl_t *c, bool on)
{
    if (on == c->serving) return TS_OK;
    if (on) {
        static const char *const verbs[3] = {"handover", "drain", "stats"};
        static const ts_bus_msg_cb cbs[3] = {on_handover, on_drain, on_stats};
        pthread_mutex_lock(&c->mu);
        c->serving = true;
        pthread_mutex_unlock(&c->mu);
        for (int i = 0; i < 3; i++) {
            char subject[96];
            ts_subject_ctl(subject, sizeof subject, c->o->world, verbs[i]);
            ts_status_t st = ts_bus_subscribe(c->o->bus, subject, cbs[i], c, &c->subs[i]);
            if (st != TS_OK) {
                ts_error("cannot subscribe to %s: %s", subject, ts_status_str(st));
                ts_ctl_serve(c, false);
                return st;
            }
        }
        ts_bus_flush(c->o->bus, 1000);
        ts_info("serving tessera.ctl.%u.{handover,drain,stats}", c->o->world);
        return TS_OK;
    }
    for (int i = 0; i < 3; i++) {
        ts_bus_sub_destroy(c->subs[i]);
        c->subs[i] = NULL;
    }
    pthread_mutex_lock(&c->mu);
    c->serving = false;
    c->ndraining = 0; /* a later leader term reloads them from Redis */
    pthread_mutex_unlock(&c->mu);
    size_t n;
    req_t *v = take_queue(c, QUEUE_MAX, &n);
    for (size_t i = 0; i < n; i++) {
        publish_reply(c, v[i].reply, "error: not leader");
        free(v[i].reply);
    }
    free(v);
    return TS_OK;
}

void ts_ctl_destroy(ts_ctl_t *c)
{
    if (!c) return;
    ts_ctl_serve(c, false);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cond);
    free(c->q);
    free(c->draining);
    free(c->owned);
    free(c);
}

void ts_ctl_note_cells(ts_ctl_t *c)
{
    if (!c) return;
    const ts_orch_t *o = c->o;
    pthread_mutex_lock(&c->mu);
    c->nowned = 0;
    for (size_t i = 0; i < o->ncells; i++) {
        const char *id = o->cells[i].owner;
        size_t k = 0;
        while (k < c->nowned && strcmp(c->owned[k].id, id) != 0)
            k++;
        if (k == c->nowned) {
            if (c->nowned == c->cap_owned) {
                size_t cap = c->cap_owned ? c->cap_owned * 2 : 8;
                owned_t *v = realloc(c->owned, cap * sizeof *v);
                if (!v) break;
                c->owned = v;
                c->cap_owned = cap;
            }
            ts_strlcpy(c->owned[k].id, id, sizeof c->owned[k].id);
            c->owned[k].cells = 0;
            c->nowned++;
        }
        c->owned[k].cells++;
    }
    pthread_mutex_unlock(&c->mu);
}

bool ts_ctl_is_draining(ts_ctl_t *c, const char *id)
{
    pthread_mutex_lock(&c->mu);
    bool d = draining_index_locked(c, id) != SIZE_MAX;
    pthread_mutex_unlock(&c->mu);
    return d;
}

size_t ts_ctl_draining_copy(ts_ctl_t *c, char (*out)[TS_WORKER_ID_MAX], size_t cap)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->ndraining;
    for (size_t i = 0; i < n && i < cap; i++)
        memcpy(out[i], c->draining[i], TS_WORKER_ID_MAX);
    pthread_mutex_unlock(&c->mu);
    return n;
}

bool ts_ctl_draining_any(ts_ctl_t *c)
{
    bool any = false;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->ndraining && !any; i++) {
        for (size_t k = 0; k < c->nowned; k++) {
            if (strcmp(c->owned[k].id, c->draining[i]) == 0 && c->owned[k].cells > 0) any = true;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return any;
}

void ts_ctl_drained(ts_ctl_t *c, const char *id)
{
    pthread_mutex_lock(&c->mu);
    size_t i = draining_index_locked(c, id);
    if (i != SIZE_MAX)
        memmove(c->draining[i], c->draining[i + 1], (c->ndraining - i - 1) * sizeof *c->draining);
    if (i != SIZE_MAX) c->ndraining--;
    pthread_mutex_unlock(&c->mu);
    ts_orch_t *o = c->o;
    if (i != SIZE_MAX)
        ts_info("worker %s is gone; no longer draining (%zu cells left to crash recovery)", id,
                ts_orch_owned(o, id));
    if (o->reg) {
        ts_status_t st = ts_registry_draining_remove(o->reg, o->world, id);
        if (st != TS_OK) ts_orch_registry_broken(o, st);
    }
}

void ts_ctl_load_draining(ts_ctl_t *c)
{
    ts_orch_t *o = c->o;
    char **ids = NULL;
    size_t n = 0;
    if (!o->reg) return;
    ts_status_t st = ts_registry_draining(o->reg, o->world, &ids, &n);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return;
    }
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        if (ts_worker_id_valid(ids[i])) add_draining_locked(c, ids[i]);
    }
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++)
        ts_info("worker %s is being drained (from the registry)", ids[i]);
    ts_registry_free_list(ids, n);
}

void ts_ctl_wait(ts_ctl_t *c, int64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mu);
    while (c->nq == 0 && !c->woken && !*c->o->stop) {
        if (pthread_cond_timedwait(&c->cond, &c->mu, &until) != 0) break;
    }
    c->woken = false;
    pthread_mutex_unlock(&c->mu);
}

void ts_ctl_drain_result(ts_ctl_t *c, bool moved)
{
    if (!moved) c->next_drain_us = ts_mono_us() + DRAIN_RETRY_US;
}

/* Queues handovers of the cells of draining workers to the least-loaded
 * other workers, as many as there are free handover slots; true if it
 * queued any. */
static bool drain_step(ts_ctl_t *c)
{
    ts_orch_t *o = c->o;
    uint64_t now = ts_mono_us();
    size_t cap = o->cfg->orch_max_handovers > 0 ? (size_t)o->cfg->orch_max_handovers : 1;
    size_t busy = ts_handovers_busy_for(o->ho, TS_HO_DRAIN);
    if (now < c->next_drain_us || busy >= cap || !ts_ctl_draining_any(c)) return false;
    ts_orch_view_t view;
    if (ts_orch_view_build(o, &view) != TS_OK) return false;
    size_t queued = 0;
    for (size_t i = 0; i < view.nc && busy + queued < cap; i++) {
        int owner = view.c[i].owner;
        if (owner < 0 || !ts_ctl_is_draining(c, view.w[owner].id) || !view.alive[owner] ||
            ts_handovers_has_cell(o->ho, &view.c[i].cell))
            continue;
        int target = ts_balance_target(&view.v, i, owner);
        if (target < 0) continue;
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&view.c[i].cell, key, sizeof key);
        ts_info("drain: handing cell %s of %s to %s (load %.3f, %zu cells)", key, view.w[owner].id,
                view.w[target].id, view.w[target].load, view.w[target].ncells);
        if (ts_orch_handover(o, &view.c[i].cell, view.w[target].id, TS_HO_DRAIN, NULL) == TS_OK) queued++;
        ts_balance_assign(&view.v, i, target);
    }
    if (queued == 0 && busy == 0) c->next_drain_us = now + DRAIN_RETRY_US;
    ts_orch_view_free(&view);
    return queued > 0;
}

bool ts_ctl_poll(ts_ctl_t *c)
{
    ts_orch_t *o = c->o;
    size_t n;
    req_t *v = take_queue(c, POLL_BATCH, &n);
    for (size_t i = 0; i < n; i++) {
        req_t *r = &v[i];
        if (r->kind == REQ_DRAIN_MARK) {
            if (o->reg) {
                ts_status_t st = ts_registry_draining_add(o->reg, o->world, r->worker);
                if (st != TS_OK) ts_orch_registry_broken(o, st);
            }
            continue;
        }
        ts_orch_handover(o, &r->cell, r->worker, TS_HO_CTL, r->reply);
        free(r->reply);
    }
    free(v);
    return drain_step(c) || n > 0;
}
