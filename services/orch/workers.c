/* Heartbeat table. Invariants: one entry per worker id, never more than
 * TS_WORKERS_MAX; an entry is alive iff its last heartbeat is younger than
 * the TTL as of the last ts_workers_check (or it just sent one); a rate is
 * only computed from two samples of the same counter (same worker, same cell
 * epoch) at least RATE_WINDOW_US apart, so restarts and handovers never show
 * as negative or huge rates; every access holds the mutex, since heartbeats
 * arrive on nats.c threads. */
#include "workers.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/map.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define RATE_WINDOW_US 1000000ULL
/* Cell entries not refreshed for this many TTLs are forgotten. */
#define CELL_FORGET_TTLS 10

/* A counter sampled at the start of the current rate window. */
typedef struct {
    uint64_t value;
    uint64_t at_us;
    bool set;
} baseline_t;

typedef struct {
    ts_cell_load_t load;
    baseline_t base;
} cell_entry_t;

typedef struct {
    ts_worker_info_t info;
    baseline_t base;
} worker_entry_t;

struct ts_workers {
    pthread_mutex_t mu;
    int64_t ttl_ms;
    worker_entry_t *list;
    size_t len, cap;
    ts_map_t cells; /* ts_cell_hash -> cell_entry_t * */
    uint64_t malformed;
};

/* Time since `then`; 0 if it lies after now (a heartbeat recorded on another
 * thread after the caller read the clock). */
static uint64_t age(uint64_t now_us, uint64_t then_us)
{
    return now_us > then_us ? now_us - then_us : 0;
}

/* Feeds one sample of a monotonic counter; updates *rate when a window
 * closes and then returns true. A counter that went back (restart, new zone)
 * restarts the window. */
static bool rate_sample(baseline_t *b, uint64_t value, uint64_t now_us, double *rate)
{
    if (!b->set || value < b->value || now_us < b->at_us) {
        *b = (baseline_t){.value = value, .at_us = now_us, .set = true};
        return false;
    }
    uint64_t dt = now_us - b->at_us;
    if (dt < RATE_WINDOW_US) return false;
    *rate = (double)(value - b->value) * 1e6 / (double)dt;
    *b = (baseline_t){.value = value, .at_us = now_us, .set = true};
    return true;
}

ts_status_t ts_workers_create(ts_workers_t **out, int64_t ttl_ms)
{
    *out = NULL;
    ts_workers_t *w = calloc(1, sizeof *w);
    if (!w) return TS_ERR_NOMEM;
    pthread_mutex_init(&w->mu, NULL);
    ts_map_init(&w->cells);
    w->ttl_ms = ttl_ms > 0 ? ttl_ms : 3000;
    *out = w;
    return TS_OK;
}

void ts_workers_destroy(ts_workers_t *w)
{
    if (!w) return;
    pthread_mutex_destroy(&w->mu);
    uint64_t key;
    void *val;
    for (size_t it = 0; ts_map_next(&w->cells, &it, &key, &val);)
        free(val);
    ts_map_free(&w->cells);
    free(w->list);
    free(w);
}

static worker_entry_t *find(ts_workers_t *w, const char *id)
{
    for (size_t i = 0; i < w->len; i++) {
        if (strcmp(w->list[i].info.id, id) == 0) return &w->list[i];
    }
    return NULL;
}

/* Entry for id, created if absent; NULL when the table is full. Holds mu. */
static worker_entry_t *entry(ts_workers_t *w, const char *id, bool *created)
{
    *created = false;
    worker_entry_t *e = find(w, id);
    if (e) return e;
    if (w->len == TS_WORKERS_MAX) return NULL;
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        worker_entry_t *list = realloc(w->list, cap * sizeof *list);
        if (!list) return NULL;
        w->list = list;
        w->cap = cap;
    }
    e = &w->list[w->len++];
    memset(e, 0, sizeof *e);
    ts_strlcpy(e->info.id, id, sizeof e->info.id);
    *created = true;
    return e;
}

/* Records one CellLoad of a heartbeat. Holds mu. */
static void record_cell(ts_workers_t *w, const char *worker, const Tessera__V1__CellLoad *cl, uint64_t now_us)
{
    ts_cell_t cell;
    if (!cl || ts_proto_cell_get(cl->cell, &cell) != TS_OK) return;
    uint64_t key = ts_cell_hash(&cell);
    cell_entry_t *e = ts_map_get(&w->cells, key);
    if (e && !ts_cell_eq(&e->load.cell, &cell)) return; /* hash collision: keep the first */
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e || ts_map_put(&w->cells, key, e) != TS_OK) {
            free(e);
            return;
        }
        e->load.cell = cell;
    }
    ts_cell_load_t *l = &e->load;
    bool fresh = l->seen_us && age(now_us, l->seen_us) <= (uint64_t)w->ttl_ms * 1000;
    if (l->worker[0] && strcmp(l->worker, worker) != 0 && cl->epoch < l->epoch && fresh)
        return; /* a previous owner still lists it */
    if (strcmp(l->worker, worker) != 0 || cl->epoch != l->epoch) {
        ts_strlcpy(l->worker, worker, sizeof l->worker);
        l->epoch = cl->epoch;
        e->base.set = false; /* a new zone counts from zero; keep the last rate */
    }
    l->entities = cl->entities;
    l->seen_us = now_us;
    if (rate_sample(&e->base, cl->inputs_applied, now_us, &l->inputs_per_s)) l->rate_known = true;
}

ts_status_t ts_workers_record(ts_workers_t *w, const Tessera__V1__Heartbeat *hb, const char *subject,
                              uint64_t now_us)
{
    if (!hb || !hb->worker || !ts_worker_id_valid(hb->worker)) {
        pthread_mutex_lock(&w->mu);
        uint64_t n = ++w->malformed;
        pthread_mutex_unlock(&w->mu);
        if (n <= 5 || n % 1000 == 0)
            ts_warn("ignoring malformed heartbeat on %s (%llu so far)", subject, (unsigned long long)n);
        return TS_ERR_MALFORMED;
    }
    pthread_mutex_lock(&w->mu);
    bool created;
    worker_entry_t *we = entry(w, hb->worker, &created);
    if (we) {
        ts_worker_info_t *e = &we->info;
        if (created)
            ts_info("worker %s appeared: %u entities, %zu cells, capacity %u", e->id, hb->entities,
                    hb->n_cells, hb->capacity);
        else if (!e->alive)
            ts_info("worker %s is back after %.1f s without heartbeat", e->id,
                    (double)age(now_us, e->last_hb_us) / 1e6);
        e->alive = true;
        e->last_hb_us = now_us;
        e->ticks = hb->ticks;
        e->entities = hb->entities;
        e->cells = (uint32_t)hb->n_cells;
        e->capacity = hb->capacity;
        e->inputs_applied = hb->inputs_applied;
        e->transfers_out = hb->transfers_out;
        e->tick_p50_ms = hb->tick_p50_ms;
        e->tick_p99_ms = hb->tick_p99_ms;
        e->draining = hb->draining;
        bool same_process = !hb->instance || strcmp(e->instance, hb->instance) == 0;
        e->missed_recent = same_process && hb->ticks_missed >= e->ticks_missed && !created
                               ? hb->ticks_missed - e->ticks_missed
                               : 0;
        e->ticks_missed = hb->ticks_missed;
        e->tick_max_ms = hb->tick_max_ms;
        ts_strlcpy(e->instance, hb->instance ? hb->instance : "", sizeof e->instance);
        rate_sample(&we->base, hb->inputs_applied, now_us, &e->inputs_per_s);
        for (size_t i = 0; i < hb->n_cells; i++)
            record_cell(w, e->id, hb->cells[i], now_us);
    }
    pthread_mutex_unlock(&w->mu);
    return TS_OK;
}

size_t ts_workers_check(ts_workers_t *w, uint64_t now_us)
{
    size_t alive = 0;
    uint64_t ttl_us = (uint64_t)w->ttl_ms * 1000;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->len; i++) {
        ts_worker_info_t *e = &w->list[i].info;
        if (e->alive && age(now_us, e->last_hb_us) > ttl_us) {
            e->alive = false;
            w->list[i].base.set = false;
            e->inputs_per_s = 0;
            ts_warn(
                "worker %s is dead: no heartbeat for %.1f s (ttl %lld ms, %u cells in its last heartbeat)",
                e->id, (double)age(now_us, e->last_hb_us) / 1e6, (long long)w->ttl_ms, e->cells);
        }
        alive += e->alive;
    }
    uint64_t key;
    void *val;
    for (size_t it = 0; ts_map_next(&w->cells, &it, &key, &val);) {
        cell_entry_t *c = val;
        if (age(now_us, c->load.seen_us) > CELL_FORGET_TTLS * ttl_us) {
            ts_map_del(&w->cells, key);
            free(c);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return alive;
}

size_t ts_workers_snapshot(ts_workers_t *w, ts_worker_info_t *out, size_t cap)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->len;
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = w->list[i].info;
    pthread_mutex_unlock(&w->mu);
    return n;
}

bool ts_workers_get(ts_workers_t *w, const char *id, ts_worker_info_t *out)
{
    pthread_mutex_lock(&w->mu);
    worker_entry_t *e = find(w, id);
    if (e) *out = e->info;
    pthread_mutex_unlock(&w->mu);
    return e != NULL;
}

bool ts_workers_cell_load(ts_workers_t *w, const ts_cell_t *cell, uint64_t now_us, ts_cell_load_t *out)
{
    pthread_mutex_lock(&w->mu);
    cell_entry_t *e = ts_map_get(&w->cells, ts_cell_hash(cell));
    bool ok =
        e && ts_cell_eq(&e->load.cell, cell) && age(now_us, e->load.seen_us) <= (uint64_t)w->ttl_ms * 1000;
    if (ok) *out = e->load;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

void ts_workers_log_status(ts_workers_t *w, uint64_t now_us)
{
    pthread_mutex_lock(&w->mu);
    if (w->len == 0) ts_info("status: no worker heartbeats yet");
    for (size_t i = 0; i < w->len; i++) {
        const ts_worker_info_t *e = &w->list[i].info;
        ts_info("status: worker %s %s%s last_hb=%.1fs cells=%u entities=%u capacity=%u ticks=%llu "
                "inputs_applied=%llu inputs/s=%.0f transfers_out=%llu tick_p99=%.2fms",
                e->id, e->alive ? "alive" : "dead", e->draining ? " draining" : "",
                (double)age(now_us, e->last_hb_us) / 1e6, e->cells, e->entities, e->capacity,
                (unsigned long long)e->ticks, (unsigned long long)e->inputs_applied, e->inputs_per_s,
                (unsigned long long)e->transfers_out, e->tick_p99_ms);
    }
    pthread_mutex_unlock(&w->mu);
}
