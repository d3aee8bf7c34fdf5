/* The draining set: workers asked to hand all their cells away (in memory,
 * and in the Redis set ts:{w<world>}:draining so a new leader carries on),
 * with the per-owner cell counts of the latest registry copy that the ctl
 * callbacks answer from. Its own mutex: nats.c callback threads (drain
 * requests) and the main loop (handover, recovery, rebalance, ctl) use it.
 *
 * Invariants: a worker is added only while another live, non-draining
 * worker exists (checked and added under one lock, so two drains racing
 * cannot leave nobody to take the cells); it leaves the set once it is
 * gone. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/util.h"

typedef struct {
    char id[TS_WORKER_ID_MAX];
    size_t cells;
} owned_t;

struct ts_draining {
    pthread_mutex_t mu;
    char (*ids)[TS_WORKER_ID_MAX];
    size_t n, cap;
    owned_t *owned; /* per-owner cell counts of the latest registry copy */
    size_t nowned, cap_owned;
};

ts_status_t ts_draining_create(ts_draining_t **out)
{
    ts_draining_t *d = calloc(1, sizeof *d);
    if (!d) return TS_ERR_NOMEM;
    pthread_mutex_init(&d->mu, NULL);
    *out = d;
    return TS_OK;
}

void ts_draining_destroy(ts_draining_t *d)
{
    if (!d) return;
    pthread_mutex_destroy(&d->mu);
    free(d->ids);
    free(d->owned);
    free(d);
}

static size_t index_locked(const ts_draining_t *d, const char *id)
{
    for (size_t i = 0; i < d->n; i++) {
        if (strcmp(d->ids[i], id) == 0) return i;
    }
    return SIZE_MAX;
}

static bool add_locked(ts_draining_t *d, const char *id)
{
    if (index_locked(d, id) != SIZE_MAX) return true;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        char(*v)[TS_WORKER_ID_MAX] = realloc(d->ids, cap * sizeof *v);
        if (!v) return false;
        d->ids = v;
        d->cap = cap;
    }
    ts_strlcpy(d->ids[d->n++], id, TS_WORKER_ID_MAX);
    return true;
}

static size_t owned_locked(const ts_draining_t *d, const char *id)
{
    for (size_t i = 0; i < d->nowned; i++) {
        if (strcmp(d->owned[i].id, id) == 0) return d->owned[i].cells;
    }
    return 0;
}

bool ts_draining_has(ts_draining_t *d, const char *id)
{
    pthread_mutex_lock(&d->mu);
    bool has = index_locked(d, id) != SIZE_MAX;
    pthread_mutex_unlock(&d->mu);
    return has;
}

size_t ts_draining_copy(ts_draining_t *d, char (*out)[TS_WORKER_ID_MAX], size_t cap)
{
    pthread_mutex_lock(&d->mu);
    size_t n = d->n;
    for (size_t i = 0; i < n && i < cap; i++)
        memcpy(out[i], d->ids[i], TS_WORKER_ID_MAX);
    pthread_mutex_unlock(&d->mu);
    return n;
}

bool ts_draining_any(ts_draining_t *d)
{
    bool any = false;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->n && !any; i++)
        any = owned_locked(d, d->ids[i]) > 0;
    pthread_mutex_unlock(&d->mu);
    return any;
}

size_t ts_draining_owned(ts_draining_t *d, const char *id)
{
    pthread_mutex_lock(&d->mu);
    size_t n = owned_locked(d, id);
    pthread_mutex_unlock(&d->mu);
    return n;
}

/* A worker other than id that is alive and not draining. Holds d->mu. */
static bool other_live_worker_locked(ts_draining_t *d, ts_workers_t *workers, const char *id)
{
    size_t n = ts_workers_snapshot(workers, NULL, 0);
    ts_worker_info_t *list = malloc((n ? n : 1) * sizeof *list);
    if (!list) return false;
    size_t m = ts_workers_snapshot(workers, list, n);
    n = m < n ? m : n;
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) {
        found = strcmp(list[i].id, id) != 0 && list[i].alive && !list[i].draining &&
                index_locked(d, list[i].id) == SIZE_MAX;
    }
    free(list);
    return found;
}

ts_drain_add_t ts_draining_add(ts_draining_t *d, ts_workers_t *workers, const char *id, size_t *cells)
{
    ts_drain_add_t r;
    pthread_mutex_lock(&d->mu);
    *cells = owned_locked(d, id);
    if (!other_live_worker_locked(d, workers, id))
        r = TS_DRAIN_ALONE;
    else if (index_locked(d, id) != SIZE_MAX)
        r = TS_DRAIN_ALREADY;
    else
        r = add_locked(d, id) ? TS_DRAIN_ADDED : TS_DRAIN_NOMEM;
    pthread_mutex_unlock(&d->mu);
    return r;
}

void ts_draining_clear(ts_draining_t *d)
{
    pthread_mutex_lock(&d->mu);
    d->n = 0;
    pthread_mutex_unlock(&d->mu);
}

void ts_draining_note_cells(ts_draining_t *d, const ts_cell_entry_t *cells, size_t ncells)
{
    pthread_mutex_lock(&d->mu);
    d->nowned = 0;
    for (size_t i = 0; i < ncells; i++) {
        const char *id = cells[i].owner;
        size_t k = 0;
        while (k < d->nowned && strcmp(d->owned[k].id, id) != 0)
            k++;
        if (k == d->nowned) {
            if (d->nowned == d->cap_owned) {
                size_t cap = d->cap_owned ? d->cap_owned * 2 : 8;
                owned_t *v = realloc(d->owned, cap * sizeof *v);
                if (!v) break;
                d->owned = v;
                d->cap_owned = cap;
            }
            ts_strlcpy(d->owned[k].id, id, sizeof d->owned[k].id);
            d->owned[k].cells = 0;
            d->nowned++;
        }
        d->owned[k].cells++;
    }
    pthread_mutex_unlock(&d->mu);
}

void ts_draining_load(ts_orch_t *o)
{
    char **ids = NULL;
    size_t n = 0;
    if (!o->reg) return;
    ts_status_t st = ts_registry_draining(o->reg, o->world, &ids, &n);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return;
    }
    pthread_mutex_lock(&o->drain->mu);
    for (size_t i = 0; i < n; i++) {
        if (ts_worker_id_valid(ids[i])) add_locked(o->drain, ids[i]);
    }
    pthread_mutex_unlock(&o->drain->mu);
    for (size_t i = 0; i < n; i++)
        ts_info("worker %s is being drained (from the registry)", ids[i]);
    ts_registry_free_list(ids, n);
}

void ts_draining_gone(ts_orch_t *o, const char *id)
{
    ts_draining_t *d = o->drain;
    pthread_mutex_lock(&d->mu);
    size_t i = index_locked(d, id);
    if (i != SIZE_MAX) {
        memmove(d->ids[i], d->ids[i + 1], (d->n - i - 1) * sizeof *d->ids);
        d->n--;
    }
    pthread_mutex_unlock(&d->mu);
    if (i != SIZE_MAX)
        ts_info("worker %s is gone; no longer draining (%zu cells left to crash recovery)", id,
                ts_orch_owned(o, id));
    if (o->reg) {
        ts_status_t st = ts_registry_draining_remove(o->reg, o->world, id);
        if (st != TS_OK) ts_orch_registry_broken(o, st);
    }
}
