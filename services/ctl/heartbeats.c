/* The CLI's view of worker heartbeats: the latest one per worker id.
 * Invariants: at most MAX_WORKERS entries, one per id; the mutex guards the
 * table because heartbeats arrive on nats.c threads. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define MAX_WORKERS 4096

struct ts_ctl_hbs {
    pthread_mutex_t mu;
    ts_ctl_hb_t *list;
    size_t len, cap;
};

ts_status_t ts_ctl_hbs_create(ts_ctl_hbs_t **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return TS_ERR_NOMEM;
    pthread_mutex_init(&(*out)->mu, NULL);
    return TS_OK;
}

void ts_ctl_hbs_destroy(ts_ctl_hbs_t *h)
{
    if (!h) return;
    pthread_mutex_destroy(&h->mu);
    free(h->list);
    free(h);
}

static ts_ctl_hb_t *find_or_add(ts_ctl_hbs_t *h, const char *id)
{
    for (size_t i = 0; i < h->len; i++) {
        if (strcmp(h->list[i].id, id) == 0) return &h->list[i];
    }
    if (h->len == MAX_WORKERS) return NULL;
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        ts_ctl_hb_t *list = realloc(h->list, cap * sizeof *list);
        if (!list) return NULL;
        h->list = list;
        h->cap = cap;
    }
    ts_ctl_hb_t *e = &h->list[h->len++];
    memset(e, 0, sizeof *e);
    ts_strlcpy(e->id, id, sizeof e->id);
    return e;
}

void ts_ctl_hbs_on_msg(void *ud, const ts_bus_msg_t *msg)
{
    ts_ctl_hbs_t *h = ud;
    Tessera__V1__Heartbeat *hb =
        tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    if (!hb) return;
    if (hb->worker && hb->worker[0] && strlen(hb->worker) < TS_WORKER_ID_MAX) {
        pthread_mutex_lock(&h->mu);
        ts_ctl_hb_t *e = find_or_add(h, hb->worker);
        if (e) {
            e->seen_us = ts_mono_us();
            e->ticks = hb->ticks;
            e->inputs_applied = hb->inputs_applied;
            e->inputs_dropped = hb->inputs_dropped;
            e->inputs_duplicate = hb->inputs_duplicate;
            e->transfers_out = hb->transfers_out;
            e->transfers_out_remote = hb->transfers_out_remote;
            e->entities = hb->entities;
            e->capacity = hb->capacity;
            e->cells = (uint32_t)hb->n_cells;
            e->tick_p50_ms = hb->tick_p50_ms;
            e->tick_p99_ms = hb->tick_p99_ms;
            e->ticks_missed = hb->ticks_missed;
            e->publishes_failed = hb->publishes_failed;
            e->cells_binding = hb->cells_binding;
            e->draining = hb->draining;
        }
        pthread_mutex_unlock(&h->mu);
    }
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

ts_status_t ts_ctl_hbs_snapshot(ts_ctl_hbs_t *h, ts_ctl_hb_t **out, size_t *n)
{
    pthread_mutex_lock(&h->mu);
    *n = h->len;
    *out = malloc((h->len ? h->len : 1) * sizeof **out);
    if (*out && h->len) memcpy(*out, h->list, h->len * sizeof **out);
    pthread_mutex_unlock(&h->mu);
    return *out ? TS_OK : TS_ERR_NOMEM;
}
