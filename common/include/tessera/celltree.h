/* A local copy of one world's cell registry, kept current from
 * RegistryChange, that answers spatial questions about cells at any depth.
 *
 * Every cell the registry knows has an entry (owner, epoch, state). A cell is
 * live (it serves inputs and publishes state) when its state is active or
 * handover; a split cell's area belongs to its four children, recursively; a
 * retired cell (merged back into its parent, or never used) serves nothing.
 * The live cells never overlap; together they cover the world.
 *
 * Costs: apply, get and locate are O(depth) hash look-ups; a circle or
 * neighbour query is O(cells it returns + split cells it descends through).
 * Not thread-safe: one tree per thread (or per event loop). */
#ifndef TESSERA_CELLTREE_H
#define TESSERA_CELLTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/registry.h"
#include "tessera/status.h"

typedef struct ts_celltree ts_celltree_t;

/* cell_size: the side of a root cell in world units (ts_world_t.cell_size). */
ts_status_t ts_celltree_new(ts_celltree_t **out, uint32_t world, double cell_size);
void ts_celltree_free(ts_celltree_t *t);
/* Forgets every entry (before reloading the whole registry). */
void ts_celltree_clear(ts_celltree_t *t);

/* Takes what the registry says of e->cell unless the tree already holds a
 * newer epoch of it (an older change arriving late is ignored). Returns true
 * if the entry changed. Entries of another world are ignored. */
bool ts_celltree_apply(ts_celltree_t *t, const ts_cell_entry_t *e);
/* The entry of exactly this cell, or NULL. Valid until the next apply/clear. */
const ts_cell_entry_t *ts_celltree_get(const ts_celltree_t *t, const ts_cell_t *cell);
size_t ts_celltree_len(const ts_celltree_t *t);

/* True for the states that serve a cell's area (active, handover). */
bool ts_celltree_state_live(ts_cell_state_t s);

/* The deepest live cell containing world position (x, y): start at the root
 * cell, descend while the cell is split. NULL if the position's root is not
 * in the registry, or the walk ends in a retired or unknown cell. O(depth). */
const ts_cell_entry_t *ts_celltree_locate(const ts_celltree_t *t, double x, double y);
typedef void (*ts_celltree_fn)(void *ud, const ts_cell_entry_t *e);

/* Calls fn once for every live cell whose area intersects the circle of
 * radius r around (x, y). Returns the number of calls. */
size_t ts_celltree_query_circle(const ts_celltree_t *t, double x, double y, double r, ts_celltree_fn fn,
                                void *ud);
/* The live neighbours of `cell` at any depth: every live cell other than
 * `cell` (and not inside it) whose area comes within `margin` of its
 * borders, diagonals included (margin 0: cells that share an edge or a
 * corner). Returns the number of calls. */
size_t ts_celltree_neighbors(const ts_celltree_t *t, const ts_cell_t *cell, double margin, ts_celltree_fn fn,
                             void *ud);

/* Visits every entry (any state), in no particular order. */
void ts_celltree_each(const ts_celltree_t *t, ts_celltree_fn fn, void *ud);

#endif
