/* Hash map from a cell id to a pointer: O(1) look-ups of a cell's binding,
 * registry entry or subscription. Not thread-safe. */
#ifndef TESSERA_CELLMAP_H
#define TESSERA_CELLMAP_H

#include <stddef.h>

#include "tessera/cell.h"
#include "tessera/map.h"
#include "tessera/status.h"

typedef struct {
    ts_map_t buckets; /* hash(cell) -> chain of nodes */
    size_t len;
} ts_cellmap_t;

void ts_cellmap_init(ts_cellmap_t *m);
/* Frees the map's own memory (not the values). */
void ts_cellmap_free(ts_cellmap_t *m);
/* Calls fn on every value, then frees the map's memory; the map is empty
 * and usable afterwards. */
void ts_cellmap_clear(ts_cellmap_t *m, void (*fn)(void *val));
/* Value for cell, or NULL. */
void *ts_cellmap_get(const ts_cellmap_t *m, const ts_cell_t *cell);
/* Inserts or replaces; val must not be NULL. */
ts_status_t ts_cellmap_put(ts_cellmap_t *m, const ts_cell_t *cell, void *val);
/* Removes and returns the value, or NULL if absent. */
void *ts_cellmap_del(ts_cellmap_t *m, const ts_cell_t *cell);
/* Calls fn on every (cell, value), in no particular order; fn must not
 * change the map. */
void ts_cellmap_each(const ts_cellmap_t *m, void (*fn)(void *ud, const ts_cell_t *cell, void *val), void *ud);

#endif
