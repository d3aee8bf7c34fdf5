/* The sim's copy of the cell registry: a ts_celltree_t loaded once from
 * Redis and kept current from RegistryChange (any thread), so a player's
 * Join goes to the deepest live cell at its position, at any depth. */
#ifndef TESSERA_SIM_CELLS_H
#define TESSERA_SIM_CELLS_H

#include <stdbool.h>
#include <stdint.h>

#include "tessera/bus.h"
#include "tessera/cell.h"
#include "tessera/registry.h"
#include "tessera/status.h"

typedef struct ts_sim_cells ts_sim_cells_t;

/* Subscribes to the world's RegistryChange first, then reads every cell
 * from reg, so no change is missed. */
ts_status_t ts_sim_cells_create(ts_sim_cells_t **out, ts_bus_t *bus, ts_registry_t *reg, const ts_world_t *w);
void ts_sim_cells_destroy(ts_sim_cells_t *c);
/* The deepest live cell at (x, y) and its epoch; false if none is known
 * (the caller falls back to the root cell). Thread-safe. */
bool ts_sim_cells_locate(ts_sim_cells_t *c, double x, double y, ts_cell_t *out, uint64_t *epoch);
/* Live cells now, and the deepest level among them (for the report line). */
void ts_sim_cells_counts(ts_sim_cells_t *c, size_t *live, unsigned *max_depth);

#endif
