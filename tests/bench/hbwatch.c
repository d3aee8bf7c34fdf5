/* Latest heartbeat per worker, filled on nats.c threads under a mutex. Each
 * worker's cells are kept sorted (ts_cell_cmp) so that checking a thousand
 * cells against a thousand-cell heartbeat stays cheap. */
#include "hbwatch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/proto.h"
#include "tessera/util.h"

typedef struct {
    ts_cell_t cell;
    uint64_t epoch;
} hb_cell_t;

typedef struct {
    ts_hbwatch_hb_t hb;
    hb_cell_t *cells; /* sorted, hb.ncells of them */
} hb_slot_t;

struct ts_hbwatch {
    ts_bus_sub_t *sub;
    pthread_mutex_t mu;
    size_t n;
    hb_slot_t w[TS_HBWATCH_WORKERS];
    const ProtobufCFieldDescriptor *tick_max, *ticks_missed; /* NULL: not in the schema */
};

static int cell_order(const void *a, const void *b)
{
    return ts_cell_cmp(&((const hb_cell_t *)a)->cell, &((const hb_cell_t *)b)->cell);
}

static double field_double(const ProtobufCFieldDescriptor *f, const void *msg)
{
    if (f == NULL || f->type != PROTOBUF_C_TYPE_DOUBLE) return -1;
    return *(const double *)((const char *)msg + f->offset);
}

static int64_t field_u64(const ProtobufCFieldDescriptor *f, const void *msg)
{
    if (f == NULL) return -1;
    if (f->type == PROTOBUF_C_TYPE_UINT64)
        return (int64_t) * (const uint64_t *)((const char *)msg + f->offset);
    if (f->type == PROTOBUF_C_TYPE_UINT32)
        return (int64_t) * (const uint32_t *)((const char *)msg + f->offset);
    return -1;
}

static void on_heartbeat(void *ud, const ts_bus_msg_t *m)
{
    ts_hbwatch_t *w = ud;
    Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (hb == NULL) return;
    if (hb->worker == NULL || hb->worker[0] == '\0') {
        tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    hb_cell_t *cells = calloc(hb->n_cells + 1, sizeof *cells);
    size_t ncells = 0;
    for (size_t k = 0; cells != NULL && k < hb->n_cells; k++) {
        ts_cell_t c;
        if (hb->cells[k]->cell && ts_proto_cell_get(hb->cells[k]->cell, &c) == TS_OK)
            cells[ncells++] = (hb_cell_t){c, hb->cells[k]->epoch};
    }
    if (cells != NULL) qsort(cells, ncells, sizeof *cells, cell_order);

    ts_hbwatch_hb_t rec = {.received_us = ts_mono_us(),
                           .ticks = hb->ticks,
                           .inputs_applied = hb->inputs_applied,
                           .entities = hb->entities,
                           .tick_p99_ms = hb->tick_p99_ms,
                           .tick_max_ms = field_double(w->tick_max, hb),
                           .ticks_missed = field_u64(w->ticks_missed, hb),
                           .ncells = ncells};
    ts_strlcpy(rec.worker, hb->worker, sizeof rec.worker);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);

    pthread_mutex_lock(&w->mu);
    size_t i = 0;
    while (i < w->n && strcmp(w->w[i].hb.worker, rec.worker) != 0)
        i++;
    if (i == w->n && w->n < TS_HBWATCH_WORKERS) w->n++;
    if (i < w->n) {
        free(w->w[i].cells);
        w->w[i].cells = cells;
        double since = w->w[i].hb.tick_max_since_mark_ms;
        w->w[i].hb = rec;
        w->w[i].hb.tick_max_since_mark_ms = rec.tick_max_ms < 0       ? -1
                                            : rec.tick_max_ms > since ? rec.tick_max_ms
                                                                      : since;
        cells = NULL;
    }
    pthread_mutex_unlock(&w->mu);
    free(cells);
}

ts_status_t ts_hbwatch_create(ts_hbwatch_t **out, ts_bus_t *bus)
{
    ts_hbwatch_t *w = calloc(1, sizeof *w);
    if (w == NULL) return TS_ERR_NOMEM;
    pthread_mutex_init(&w->mu, NULL);
    w->tick_max =
        protobuf_c_message_descriptor_get_field_by_name(&tessera__v1__heartbeat__descriptor, "tick_max_ms");
    w->ticks_missed =
        protobuf_c_message_descriptor_get_field_by_name(&tessera__v1__heartbeat__descriptor, "ticks_missed");
    ts_status_t st = ts_bus_subscribe(bus, "tessera.worker.*.hb", on_heartbeat, w, &w->sub);
    if (st != TS_OK) {
        ts_hbwatch_destroy(w);
        return st;
    }
    *out = w;
    return TS_OK;
}

void ts_hbwatch_destroy(ts_hbwatch_t *w)
{
    if (w == NULL) return;
    ts_bus_sub_destroy(w->sub);
    for (size_t i = 0; i < w->n; i++)
        free(w->w[i].cells);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void ts_hbwatch_reset(ts_hbwatch_t *w)
{
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n; i++)
        free(w->w[i].cells);
    memset(w->w, 0, sizeof w->w);
    w->n = 0;
    pthread_mutex_unlock(&w->mu);
}

void ts_hbwatch_mark(ts_hbwatch_t *w)
{
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n; i++)
        w->w[i].hb.tick_max_since_mark_ms = -1;
    pthread_mutex_unlock(&w->mu);
}

/* Index of worker or -1; call with the mutex held. */
static long find(const ts_hbwatch_t *w, const char *worker)
{
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->w[i].hb.worker, worker) == 0) return (long)i;
    return -1;
}

bool ts_hbwatch_get(ts_hbwatch_t *w, const char *worker, ts_hbwatch_hb_t *out)
{
    pthread_mutex_lock(&w->mu);
    long i = find(w, worker);
    if (i >= 0) *out = w->w[i].hb;
    pthread_mutex_unlock(&w->mu);
    return i >= 0;
}

uint64_t ts_hbwatch_inputs_applied(ts_hbwatch_t *w)
{
    uint64_t sum = 0;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n; i++)
        sum += w->w[i].hb.inputs_applied;
    pthread_mutex_unlock(&w->mu);
    return sum;
}

uint64_t ts_hbwatch_entities(ts_hbwatch_t *w)
{
    uint64_t sum = 0;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n; i++)
        sum += w->w[i].hb.entities;
    pthread_mutex_unlock(&w->mu);
    return sum;
}

bool ts_hbwatch_lists(ts_hbwatch_t *w, const char *worker, const ts_cell_t *cell, uint64_t min_epoch,
                      uint64_t after_us, uint64_t *received_us)
{
    bool found = false;
    pthread_mutex_lock(&w->mu);
    long i = find(w, worker);
    if (i >= 0 && w->w[i].hb.received_us > after_us && w->w[i].cells != NULL) {
        hb_cell_t key = {.cell = *cell};
        const hb_cell_t *e = bsearch(&key, w->w[i].cells, w->w[i].hb.ncells, sizeof key, cell_order);
        found = e != NULL && e->epoch >= min_epoch;
        if (found && received_us) *received_us = w->w[i].hb.received_us;
    }
    pthread_mutex_unlock(&w->mu);
    return found;
}
