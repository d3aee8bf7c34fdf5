/* Heartbeat table. Invariants: one entry per worker id, never more than
 * TS_WORKERS_MAX; an entry is alive iff its last heartbeat is younger than
 * the TTL as of the last ts_workers_check (or it just sent one); every
 * access holds the mutex, since heartbeats arrive on nats.c threads. */
#include "workers.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

struct ts_workers {
    pthread_mutex_t mu;
    int64_t ttl_ms;
    ts_worker_info_t *list;
    size_t len, cap;
    uint64_t malformed;
};

ts_status_t ts_workers_create(ts_workers_t **out, int64_t ttl_ms)
{
    *out = NULL;
    ts_workers_t *w = calloc(1, sizeof *w);
    if (!w)
        return TS_ERR_NOMEM;
    pthread_mutex_init(&w->mu, NULL);
    w->ttl_ms = ttl_ms > 0 ? ttl_ms : 3000;
    *out = w;
    return TS_OK;
}

void ts_workers_destroy(ts_workers_t *w)
{
    if (!w)
        return;
    pthread_mutex_destroy(&w->mu);
    free(w->list);
    free(w);
}

static bool id_ok(const char *id)
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

/* Entry for id, created if absent; NULL when the table is full. Holds mu. */
static ts_worker_info_t *entry(ts_workers_t *w, const char *id, bool *created)
{
    *created = false;
    for (size_t i = 0; i < w->len; i++) {
        if (strcmp(w->list[i].id, id) == 0)
            return &w->list[i];
    }
    if (w->len == TS_WORKERS_MAX)
        return NULL;
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        ts_worker_info_t *list = realloc(w->list, cap * sizeof *list);
        if (!list)
            return NULL;
        w->list = list;
        w->cap = cap;
    }
    ts_worker_info_t *e = &w->list[w->len++];
    memset(e, 0, sizeof *e);
    ts_strlcpy(e->id, id, sizeof e->id);
    *created = true;
    return e;
}

ts_status_t ts_workers_record(ts_workers_t *w, const uint8_t *data, size_t len, uint64_t now_us)
{
    Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, len, data);
    if (!hb)
        return TS_ERR_MALFORMED;
    if (!hb->worker || !id_ok(hb->worker)) {
        tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return TS_ERR_MALFORMED;
    }
    pthread_mutex_lock(&w->mu);
    bool created;
    ts_worker_info_t *e = entry(w, hb->worker, &created);
    if (e) {
        if (created)
            ts_info("worker %s appeared: %u entities, %zu cells, capacity %u", e->id, hb->entities, hb->n_cells,
                    hb->capacity);
        else if (!e->alive)
            ts_info("worker %s is back after %.1f s without heartbeat", e->id,
                    (double)(now_us - e->last_hb_us) / 1e6);
        e->alive = true;
        e->last_hb_us = now_us;
        e->ticks = hb->ticks;
        e->entities = hb->entities;
        e->cells = (uint32_t)hb->n_cells;
        e->capacity = hb->capacity;
        e->inputs_applied = hb->inputs_applied;
        e->transfers_out = hb->transfers_out;
        e->tick_p99_ms = hb->tick_p99_ms;
    }
    pthread_mutex_unlock(&w->mu);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
    return TS_OK;
}

void ts_workers_on_heartbeat(void *ud, const ts_bus_msg_t *msg)
{
    ts_workers_t *w = ud;
    if (ts_workers_record(w, ts_bus_msg_data(msg), ts_bus_msg_len(msg), ts_mono_us()) == TS_OK)
        return;
    pthread_mutex_lock(&w->mu);
    uint64_t n = ++w->malformed;
    pthread_mutex_unlock(&w->mu);
    if (n <= 5 || n % 1000 == 0)
        ts_warn("ignoring malformed heartbeat on %s (%zu bytes, %llu so far)", ts_bus_msg_subject(msg),
                ts_bus_msg_len(msg), (unsigned long long)n);
}

size_t ts_workers_check(ts_workers_t *w, uint64_t now_us)
{
    size_t alive = 0;
    uint64_t ttl_us = (uint64_t)w->ttl_ms * 1000;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->len; i++) {
        ts_worker_info_t *e = &w->list[i];
        if (e->alive && now_us - e->last_hb_us > ttl_us) {
            e->alive = false;
            ts_warn("worker %s is dead: no heartbeat for %.1f s (ttl %lld ms); its %u cells are not reassigned",
                    e->id, (double)(now_us - e->last_hb_us) / 1e6, (long long)w->ttl_ms, e->cells);
        }
        alive += e->alive;
    }
    pthread_mutex_unlock(&w->mu);
    return alive;
}

size_t ts_workers_snapshot(ts_workers_t *w, ts_worker_info_t *out, size_t cap)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->len;
    memcpy(out, w->list, (n < cap ? n : cap) * sizeof *out);
    pthread_mutex_unlock(&w->mu);
    return n;
}

void ts_workers_log_status(ts_workers_t *w, uint64_t now_us)
{
    pthread_mutex_lock(&w->mu);
    if (w->len == 0)
        ts_info("status: no worker heartbeats yet");
    for (size_t i = 0; i < w->len; i++) {
        const ts_worker_info_t *e = &w->list[i];
        ts_info("status: worker %s %s last_hb=%.1fs cells=%u entities=%u capacity=%u ticks=%llu "
                "inputs_applied=%llu transfers_out=%llu tick_p99=%.2fms",
                e->id, e->alive ? "alive" : "dead", (double)(now_us - e->last_hb_us) / 1e6, e->cells, e->entities,
                e->capacity, (unsigned long long)e->ticks, (unsigned long long)e->inputs_applied,
                (unsigned long long)e->transfers_out, e->tick_p99_ms);
    }
    pthread_mutex_unlock(&w->mu);
}
