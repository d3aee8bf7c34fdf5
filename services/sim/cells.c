/* The sim's cell tree (see cells.h). One mutex guards the tree: changes
 * arrive on a nats.c thread, look-ups come from the main thread, each is
 * O(depth). */
#include "cells.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/celltree.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"

struct ts_sim_cells {
    pthread_mutex_t mu;
    ts_celltree_t *tree;
    ts_bus_sub_t *sub;
    uint32_t world;
};

static void on_change(void *ud, const ts_bus_msg_t *msg)
{
    ts_sim_cells_t *c = ud;
    Tessera__V1__RegistryChange *rc =
        tessera__v1__registry_change__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    if (!rc) return;
    ts_cell_entry_t e;
    memset(&e, 0, sizeof e);
    if (ts_proto_cell_get(rc->cell, &e.cell) == TS_OK && e.cell.world == c->world && rc->owner &&
        strlen(rc->owner) < sizeof e.owner && (unsigned)rc->state <= TS_CELL_RETIRED) {
        strcpy(e.owner, rc->owner);
        e.epoch = rc->epoch;
        e.state = (ts_cell_state_t)rc->state;
        pthread_mutex_lock(&c->mu);
        ts_celltree_apply(c->tree, &e);
        pthread_mutex_unlock(&c->mu);
    }
    tessera__v1__registry_change__free_unpacked(rc, NULL);
}

ts_status_t ts_sim_cells_create(ts_sim_cells_t **out, ts_bus_t *bus, ts_registry_t *reg, const ts_world_t *w)
{
    *out = NULL;
    ts_sim_cells_t *c = calloc(1, sizeof *c);
    if (!c) return TS_ERR_NOMEM;
    pthread_mutex_init(&c->mu, NULL);
    c->world = w->id;
    ts_status_t st = ts_celltree_new(&c->tree, w->id, w->cell_size);
    char subject[TS_SUBJECT_MAX];
    ts_subject_registry(subject, sizeof subject, w->id);
    if (st == TS_OK) st = ts_bus_subscribe(bus, subject, on_change, c, &c->sub);
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    if (st == TS_OK) st = ts_registry_cells(reg, w->id, &cells, &n);
    if (st == TS_OK) {
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; i < n; i++)
            ts_celltree_apply(c->tree, &cells[i]);
        pthread_mutex_unlock(&c->mu);
    }
    free(cells);
    if (st != TS_OK) {
        ts_sim_cells_destroy(c);
        return st;
    }
    *out = c;
    return TS_OK;
}

void ts_sim_cells_destroy(ts_sim_cells_t *c)
{
    if (!c) return;
    ts_bus_sub_destroy(c->sub); /* no callback runs after this */
    ts_celltree_free(c->tree);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

bool ts_sim_cells_locate(ts_sim_cells_t *c, double x, double y, ts_cell_t *out, uint64_t *epoch)
{
    pthread_mutex_lock(&c->mu);
    const ts_cell_entry_t *e = ts_celltree_locate(c->tree, x, y);
    if (e) {
        *out = e->cell;
        *epoch = e->epoch;
    }
    pthread_mutex_unlock(&c->mu);
    return e != NULL;
}

struct count {
    size_t live;
    unsigned depth;
};

static void count_one(void *ud, const ts_cell_entry_t *e)
{
    struct count *k = ud;
    if (!ts_celltree_state_live(e->state)) return;
    k->live++;
    if (e->cell.depth > k->depth) k->depth = e->cell.depth;
}

void ts_sim_cells_counts(ts_sim_cells_t *c, size_t *live, unsigned *max_depth)
{
    struct count k = {0, 0};
    pthread_mutex_lock(&c->mu);
    ts_celltree_each(c->tree, count_one, &k);
    pthread_mutex_unlock(&c->mu);
    *live = k.live;
    *max_depth = k.depth;
}
