/* The leader's control API on tessera.ctl.<world>.*, text in and text out:
 *
 *   handover  "<cell-key> <worker>"  -> "ok <from>-><to> epoch <E>-><E+1> freeze_us=<n> total_us=<n>"
 *                                       or "error: <reason>"
 *   drain     "<worker>"             -> "ok draining <n> cells" at once, then its cells move one by one
 *   split     "<cell-key>"           -> "ok split <cell> owner <w> epoch <E>-><E+1> children ..."
 *                                       or "error: ..."
 *   merge     "<parent-key>"         -> "ok merge <cell> owner <w> epoch <E>-><E+1>" or "error: ..."
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

typedef enum { REQ_HANDOVER = 0, REQ_DRAIN_MARK, REQ_SPLIT, REQ_MERGE } req_kind_t;

#define NVERBS 5

typedef struct {
    req_kind_t kind;
    char *reply; /* reply subject, NULL for internal requests */
    ts_cell_t cell;
    char worker[TS_WORKER_ID_MAX];
} req_t;

struct ts_ctl {
    ts_orch_t *o;
    pthread_mutex_t mu;
    req_t *q;
    size_t nq;
    ts_bus_sub_t *subs[NVERBS];
    bool serving;
    uint64_t next_drain_us;
};

static const char TEXT[] = "text/plain";

static void drain_done(ts_orch_t *o, bool moved);

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

/* The caller wakes the main loop (ts_orch_wake) once it let go of c->mu. */
static bool queue_locked(ts_ctl_t *c, const req_t *r)
{
    if (c->nq >= QUEUE_MAX) return false;
    c->q[c->nq++] = *r;
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
    if (queued) ts_orch_wake(c->o);
    if (!queued) {
        free(r.reply);
        respond_text(c, msg, "error: busy, try again");
    }
}

/* split "<cell-key>" and merge "<parent-key>": queued for the main loop. */
static void on_split_merge(ts_ctl_t *c, const ts_bus_msg_t *msg, req_kind_t kind)
{
    char text[PAYLOAD_MAX], key[PAYLOAD_MAX], extra[2], reply[384];
    if (!ts_bus_msg_reply(msg) || !*ts_bus_msg_reply(msg)) return;
    if (!payload_text(msg, text, sizeof text) || sscanf(text, "%255s %1s", key, extra) != 1) {
        respond_text(c, msg, "error: usage: <cell-key>, e.g. \"0.-1.0.0.0\"");
        return;
    }
    req_t r = {.kind = kind};
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
    r.reply = strdup(ts_bus_msg_reply(msg));
    pthread_mutex_lock(&c->mu);
    bool queued = r.reply && c->serving && queue_locked(c, &r);
    pthread_mutex_unlock(&c->mu);
    if (queued) ts_orch_wake(c->o);
    if (!queued) {
        free(r.reply);
        respond_text(c, msg, "error: busy, try again");
    }
}

static void on_split(void *ud, const ts_bus_msg_t *msg)
{
    on_split_merge(ud, msg, REQ_SPLIT);
}

static void on_merge(void *ud, const ts_bus_msg_t *msg)
{
    on_split_merge(ud, msg, REQ_MERGE);
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
    bool queued = false;
    ts_drain_add_t r = TS_DRAIN_NOMEM;
    pthread_mutex_lock(&c->mu);
    if (!c->serving) {
        snprintf(reply, sizeof reply, "error: not leader");
    } else {
        /* a draining worker asks again every second: it is marked once; and
         * once the others are gone it hears "no other live worker" and stops
         * instead of waiting for its drain timeout */
        r = ts_draining_add(c->o->drain, c->o->workers, id, &cells);
        if (r == TS_DRAIN_ADDED) {
            req_t q = {.kind = REQ_DRAIN_MARK};
            ts_strlcpy(q.worker, id, sizeof q.worker);
            queued = queue_locked(c, &q);
            c->next_drain_us = 0;
        }
        if (r == TS_DRAIN_ALONE)
            snprintf(reply, sizeof reply, "error: no other live worker");
        else if (r == TS_DRAIN_NOMEM)
            snprintf(reply, sizeof reply, "error: out of memory");
        else
            snprintf(reply, sizeof reply, "ok draining %zu cells", cells);
    }
    pthread_mutex_unlock(&c->mu);
    if (r == TS_DRAIN_ADDED) ts_orch_wake(c->o);
    if (r == TS_DRAIN_ALONE && cells > 0)
        ts_warn(
            "drain of %s: no other live worker can take its %zu cells; it stops with them (crash recovery "
            "places them once a worker is live)",
            id, cells);
    if (r == TS_DRAIN_ADDED)
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
    o->ho_done[TS_HO_DRAIN] = drain_done;
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
        static const char *const verbs[NVERBS] = {"handover", "drain", "stats", "split", "merge"};
        static const ts_bus_msg_cb cbs[NVERBS] = {on_handover, on_drain, on_stats, on_split, on_merge};
        pthread_mutex_lock(&c->mu);
        c->serving = true;
        pthread_mutex_unlock(&c->mu);
        for (int i = 0; i < NVERBS; i++) {
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
        ts_info("serving tessera.ctl.%u.{handover,drain,stats,split,merge}", c->o->world);
        return TS_OK;
    }
    for (int i = 0; i < NVERBS; i++) {
        ts_bus_sub_destroy(c->subs[i]);
        c->subs[i] = NULL;
    }
    pthread_mutex_lock(&c->mu);
    c->serving = false;
    pthread_mutex_unlock(&c->mu);
    ts_draining_clear(c->o->drain); /* a later leader term reloads them from Redis */
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
    free(c->q);
    free(c);
}

/* A drain handover finished (o->ho_done): a failed one delays the next
 * drain step. */
static void drain_done(ts_orch_t *o, bool moved)
{
    if (!moved) o->ctl->next_drain_us = ts_mono_us() + DRAIN_RETRY_US;
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
    if (now < c->next_drain_us || busy >= cap || !ts_draining_any(o->drain)) return false;
    ts_orch_view_t view;
    if (ts_orch_view_build(o, &view) != TS_OK) return false;
    size_t queued = 0;
    for (size_t i = 0; i < view.nc && busy + queued < cap; i++) {
        int owner = view.c[i].owner;
        if (owner < 0 || !ts_draining_has(o->drain, view.w[owner].id) || !view.alive[owner] ||
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
    if (queued == 0 && busy == 0 && ts_split_drain_forwarders(o, &view)) queued++;
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
        if (r->kind == REQ_SPLIT)
            ts_orch_split(o, &r->cell, r->reply, "asked by tessera-ctl");
        else if (r->kind == REQ_MERGE)
            ts_orch_merge(o, &r->cell, r->reply, "asked by tessera-ctl");
        else
            ts_orch_handover(o, &r->cell, r->worker, TS_HO_CTL, r->reply);
        free(r->reply);
    }
    free(v);
    return drain_step(c) || n > 0;
}
