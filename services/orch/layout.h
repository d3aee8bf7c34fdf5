/* The world layout the orchestrator writes into the registry: the world's
 * geometry and one owner per root cell, built from the configuration alone
 * (no I/O), so it can be unit-tested. */
#ifndef TESSERA_ORCH_LAYOUT_H
#define TESSERA_ORCH_LAYOUT_H

#include <stddef.h>

#include "tessera/config.h"
#include "tessera/registry.h"
#include "tessera/status.h"

#define TS_LAYOUT_MAX_SIDE 1024

typedef struct {
    ts_world_t world;
    char (*workers)[TS_WORKER_ID_MAX]; /* world.workers in order, no duplicates */
    size_t nworkers;
    ts_cell_entry_t *cells; /* root cells row by row from (x0, y0), epoch 1, active */
    size_t ncells;
} ts_layout_t;

/* Builds the layout from world.id, world.cell_size, world.x0/y0,
 * world.width/height, world.workers and world.assign. Default owners are
 * contiguous column blocks, one per worker, in list order; world.assign
 * ("cx:cy=worker,...") overrides single cells. On error (TS_ERR_CONFIG) a
 * message naming the bad key is written into err and *out is left empty.
 * Free with ts_layout_free. */
ts_status_t ts_layout_build(ts_layout_t *out, const ts_config_t *cfg, char *err, size_t errcap);
void ts_layout_free(ts_layout_t *l);

/* Entry for root cell (cx, cy), or NULL if it is outside the world. Borrowed. */
const ts_cell_entry_t *ts_layout_cell(const ts_layout_t *l, int32_t cx, int32_t cy);
/* How many cells the worker owns in the layout. */
size_t ts_layout_count_owned(const ts_layout_t *l, const char *worker);

#endif
