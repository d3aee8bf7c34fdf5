/* One cell owned by this worker: its entities and the rules that keep every
 * input applied exactly once.
 *
 * Invariants:
 * - Input-stream messages are applied in stream order; a message whose stream
 *   sequence is not above last_applied_seq is skipped (replay-safe).
 * - An input (entity, client seq) changes its entity at most once: the entity
 *   keeps the highest applied client seq and a 64-bit window of the ones below.
 * - An entity lives in exactly one zone; when it walks out, it is moved to the
 *   outbox (a Transfer to the destination cell) and remembered as departed so
 *   late inputs for it are forwarded to where it went.
 * The zone knows nothing of the bus: the worker publishes the outbox and the
 * state delta the zone builds. */
#ifndef TS_WORKER_ZONE_H
#define TS_WORKER_ZONE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/map.h"
#include "tessera/proto.h"
#include "tessera/registry.h"

#define TS_ENTITY_NAME_MAX 32
/* How long (ticks) a departed entity's destination is remembered. */
#define TS_ZONE_DEPARTED_TICKS 1200

typedef struct {
    uint64_t id;
    double x, y, vx, vy;
    uint64_t last_input_seq;
    uint64_t inputs_applied;
    uint64_t applied_window;
    char name[TS_ENTITY_NAME_MAX];
    bool dirty; /* changed since the last published delta */
} ts_entity_t;

typedef enum { TS_INPUT_JOIN = 1, TS_INPUT_MOVE, TS_INPUT_LEAVE } ts_input_kind_t;

/* An input as the worker keeps it (for forwarding). */
typedef struct {
    uint64_t entity;
    uint64_t seq;
    uint64_t sent_us;
    ts_input_kind_t kind;
    double a, b; /* join: x, y; move: dx, dy */
    char name[TS_ENTITY_NAME_MAX];
} ts_input_t;

/* Everything one tick sends to one destination cell. */
typedef struct {
    ts_cell_t dest;
    ts_entity_t *transfers;
    size_t ntransfers, cap_transfers;
    ts_input_t *inputs;
    size_t ninputs, cap_inputs;
} ts_zone_out_t;

typedef struct {
    uint64_t applied;     /* inputs applied */
    uint64_t forwarded;   /* inputs sent on to the entity's new cell */
    uint64_t duplicates;  /* inputs already applied (dropped) */
    uint64_t dropped;     /* inputs for unknown entities or too old (dropped) */
    uint64_t transfers_in;
    uint64_t transfers_out;
} ts_zone_stats_t;

typedef struct {
    ts_cell_t cell;
    char key[TS_CELL_STR_MAX];
    uint64_t epoch;
    uint64_t last_applied_seq;
    ts_map_t entities; /* id -> ts_entity_t* */
    ts_map_t departed; /* id -> departed record */
    /* per-tick output */
    ts_zone_out_t *out;
    size_t nout, cap_out;
    Tessera__V1__EntityLeft *left;
    size_t nleft, cap_left;
    ts_zone_stats_t stats;
    /* world geometry */
    double cell_size;
    double min_x, min_y, max_x, max_y;
    double max_speed;
} ts_zone_t;

ts_status_t ts_zone_create(ts_zone_t **out, const ts_cell_t *cell, uint64_t epoch, const ts_world_t *world,
                           double max_speed);
void ts_zone_destroy(ts_zone_t *z);

/* Applies one input-stream message (stream sequence stream_seq). Returns
 * false (and changes nothing) if stream_seq <= last_applied_seq. */
bool ts_zone_apply_batch(ts_zone_t *z, uint64_t stream_seq, const Tessera__V1__InputBatch *batch, uint64_t tick);
/* Applies one input (no stream bookkeeping). */
void ts_zone_apply_input(ts_zone_t *z, const ts_input_t *in, uint64_t tick);
/* Adds an entity arriving from another cell (ignored if already present). */
void ts_zone_accept_transfer(ts_zone_t *z, const ts_entity_t *e);

/* Moves every entity by dt seconds; entities that leave the cell go to the
 * outbox. */
void ts_zone_step(ts_zone_t *z, double dt, uint64_t tick);

/* The outbox of destination i could not be published: its transfers come
 * back into the zone (they retry next tick), its inputs stay queued. */
void ts_zone_outbox_failed(ts_zone_t *z, size_t i);
/* Clears the outbox entries that were published. */
void ts_zone_outbox_clear(ts_zone_t *z);

/* Packs this tick's StateDelta (changed entities, or all if full; departed
 * ones) into a malloc'd buffer and clears dirty flags and the departed list.
 * *len == 0 and *buf == NULL when there is nothing to say and !full. */
ts_status_t ts_zone_pack_delta(ts_zone_t *z, uint64_t tick, bool full, const char *owner, uint8_t **buf,
                               size_t *len);
/* Packs an InputBatch for outbox entry i (caller frees *buf). */
ts_status_t ts_zone_pack_outbox(const ts_zone_t *z, size_t i, uint8_t **buf, size_t *len);

/* Number of entities in the zone. */
size_t ts_zone_entities(const ts_zone_t *z);

/* Exactly-once filter: true if (entity, seq) has not been applied yet, and
 * marks it applied. */
bool ts_entity_accept_seq(ts_entity_t *e, uint64_t seq);

#endif
