/* Cell ids and quadtree math.
 *
 * A cell is {world, cx, cy, depth, sub}: (cx, cy) is the depth-0 root cell
 * (coordinates may be negative), depth the quadtree level (0..TS_CELL_MAX_DEPTH),
 * sub the quadrant path, two bits per level, most significant level first
 * (0=SW, 1=SE, 2=NW, 3=NE). A root cell covers
 * [cx*size, (cx+1)*size) x [cy*size, (cy+1)*size) of world space.
 *
 * Text form (also the subject key): "<world>.<cx>.<cy>.<depth>.<sub>". */
#ifndef TESSERA_CELL_H
#define TESSERA_CELL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

#define TS_CELL_MAX_DEPTH 16
/* Longest text form: 10 + 4*11 separators/numbers + 20, rounded up. */
#define TS_CELL_STR_MAX 96

typedef struct {
    uint32_t world;
    int32_t cx, cy;
    uint8_t depth;
    uint64_t sub;
} ts_cell_t;

typedef enum { TS_QUAD_SW = 0, TS_QUAD_SE = 1, TS_QUAD_NW = 2, TS_QUAD_NE = 3 } ts_quad_t;

bool ts_cell_eq(const ts_cell_t *a, const ts_cell_t *b);
/* A total order (world, cx, cy, depth, sub): <0, 0, >0 like strcmp. */
int ts_cell_cmp(const ts_cell_t *a, const ts_cell_t *b);
/* True if the id is well formed: depth in range and sub < 4^depth. */
bool ts_cell_valid(const ts_cell_t *c);
/* Hash suitable for open-addressing tables (splitmix64 mixing); never 0 or
 * UINT64_MAX, so it can key a ts_map_t. */
uint64_t ts_cell_hash(const ts_cell_t *c);

/* Writes "<world>.<cx>.<cy>.<depth>.<sub>" into buf (NUL-terminated).
 * Returns the length, or -1 if buf is too small. */
int ts_cell_format(const ts_cell_t *c, char *buf, size_t cap);
/* Parses exactly the text form (the whole string). */
ts_status_t ts_cell_parse(const char *s, ts_cell_t *out);
/* Parses the first five dot-separated tokens of s; *end points after them. */
ts_status_t ts_cell_parse_prefix(const char *s, ts_cell_t *out, const char **end);

/* Quadtree. parent of a root cell is TS_ERR_RANGE; children of a cell at
 * TS_CELL_MAX_DEPTH is TS_ERR_RANGE. children[q] is quadrant q. */
ts_status_t ts_cell_parent(const ts_cell_t *c, ts_cell_t *out);
ts_status_t ts_cell_children(const ts_cell_t *c, ts_cell_t out[4]);
/* Quadrant of c within its parent (undefined for root cells). */
ts_quad_t ts_cell_quadrant(const ts_cell_t *c);
/* True if anc is c or an ancestor of c. */
bool ts_cell_contains(const ts_cell_t *anc, const ts_cell_t *c);

/* Same-depth neighbour at offset (dx, dy) in cells of this depth, crossing
 * root boundaries as needed. */
void ts_cell_neighbor(const ts_cell_t *c, int dx, int dy, ts_cell_t *out);
/* The 8 same-depth neighbours, order: (-1,-1),(0,-1),(1,-1),(-1,0),(1,0),(-1,1),(0,1),(1,1). */
void ts_cell_neighbors(const ts_cell_t *c, ts_cell_t out[8]);

/* The cell at `depth` that contains world position (x, y); cell_size is the
 * side of a root cell. Positions on a border belong to the cell to the
 * right/top ([lo, hi) intervals). */
void ts_cell_from_pos(uint32_t world, double cell_size, uint8_t depth, double x, double y, ts_cell_t *out);
/* World-space bounds of c: [*x0, *x1) x [*y0, *y1). */
void ts_cell_bounds(const ts_cell_t *c, double cell_size, double *x0, double *y0, double *x1, double *y1);
/* True if (x, y) lies inside c. */
bool ts_cell_has_pos(const ts_cell_t *c, double cell_size, double x, double y);

#endif
