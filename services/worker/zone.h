/* One cell owned by this worker: its entities and the rules that keep every
 * input applied exactly once.
 *
 * Invariants:
 * - Input-stream messages are applied in stream order; a message whose stream
 *   sequence is not above last_applied_seq is skipped (replay-safe).
 * - An input (entity, client seq) changes its entity at most once: the entity
 *   keeps the highest applied client seq and a 64-bit window of the ones below.
 * - The zone's state is a function of its input stream up to last_applied_seq
 *   (plus simulated motion): when an entity walks out, the zone only queues a
 *   Departure for its own input stream; the entity leaves when that Departure
 *   is consumed. So every input ordered before the Departure is applied here
 *   and every input after it is forwarded — identically when a new owner
 *   replays the stream from a checkpoint or a handover snapshot.
 * - A Transfer is accepted only if the entity is not here and its
 *   (incarnation, hop count) is newer than what it had when it last left here
 *   (replayed or zombie transfers are dropped; an id that left the game and
 *   joined again is a newer incarnation).
 * The zone knows nothing of the bus: the worker publishes what it builds. */
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
/* The exactly-once window: the last 512 client sequences of an entity. An
 * input older than that (512 inputs behind the newest applied one) cannot be
 * told from a duplicate and is dropped, counted as lost. */
#define TS_WINDOW_WORDS 8
#define TS_WINDOW_BITS (TS_WINDOW_WORDS * 64)
/* How long (ticks) a departed entity's destination is remembered. */
#define TS_ZONE_DEPARTED_TICKS 1200

typedef struct {
    uint64_t id;
    double x, y, vx, vy;
    uint64_t last_input_seq;
    uint64_t inputs_applied;
    uint64_t applied_window[TS_WINDOW_WORDS];
    char name[TS_ENTITY_NAME_MAX];
    uint64_t hops;
    uint64_t incarnation; /* stream seq of the Join that created it */
    /* a player's entity: its gateway and connection, and when that closed
     * (wall clock; 0 while connected). 0 gateway: not a player's. */
    uint32_t gateway;
    uint64_t gateway_instance;
    uint64_t session;
    uint64_t detached_us;
    uint64_t mod;   /* zone modification counter at the last change */
    bool dirty;     /* changed since the last published delta */
    bool departing; /* a Departure for it is queued or in the stream */
} ts_entity_t;

typedef struct {
    uint64_t entity;
    ts_cell_t to;
    uint64_t hops;
} ts_departure_t;

typedef enum {
    TS_INPUT_JOIN = 1,
    TS_INPUT_MOVE,
    TS_INPUT_LEAVE,
    TS_INPUT_DETACH,
    TS_INPUT_ATTACH
} ts_input_kind_t;

/* An input as the worker keeps it (for forwarding). */
typedef struct {
    uint64_t entity;
    uint64_t seq;
    uint64_t sent_us;
    ts_input_kind_t kind;
    double a, b; /* join: x, y; move: dx, dy */
    char name[TS_ENTITY_NAME_MAX];
    /* join, attach: the owning gateway and connection; detach: the session
     * closed at time_us */
    uint32_t gateway;
    uint64_t gateway_instance;
    uint64_t session;
    uint64_t time_us;
} ts_input_t;

/* Everything one tick sends to one destination cell. Transfers caused by the
 * Departure at stream sequence marker_seq travel in their own entry, so the
 * message id can be derived from it (a replay re-publishes the same id). */
typedef struct {
    ts_cell_t dest;
    uint64_t marker_seq;
    /* Once published an entry is sealed (id_seq != 0: the number its message
     * id was made from): nothing is added to it, and a failed publish is
     * retried with the same bytes and id. pub_seq is the Ts-Seq of the
     * publish in flight, 0 when none is. */
    uint64_t id_seq;
    uint64_t pub_seq;
    ts_entity_t *transfers;
    size_t ntransfers, cap_transfers;
    ts_input_t *inputs;
    size_t ninputs, cap_inputs;
} ts_zone_out_t;

typedef struct {
    uint64_t applied;    /* inputs applied */
    uint64_t forwarded;  /* inputs sent on to the entity's new cell */
    uint64_t duplicates; /* inputs already applied (dropped) */
    uint64_t dropped;    /* inputs for unknown entities or too old (lost) */
    uint64_t transfers_in;
    uint64_t transfers_out;
} ts_zone_stats_t;

typedef struct {
    ts_cell_t cell;
    char key[TS_CELL_STR_MAX];
    uint64_t epoch;
    uint64_t last_applied_seq;
    uint64_t cur_stream_seq; /* of the message being applied (for logs) */
    ts_map_t entities;       /* id -> ts_entity_t* */
    ts_map_t departed;       /* id -> departed record */
    /* per-tick output */
    ts_zone_out_t *out;
    size_t nout, cap_out;
    Tessera__V1__EntityLeft *left;
    size_t nleft, cap_left;
    ts_departure_t *deps; /* to publish into the own input stream */
    size_t ndeps, cap_deps;
    size_t deps_in_flight; /* deps[0..deps_in_flight) are being published */
    uint64_t deps_pub;     /* Ts-Seq of that publish */
    uint64_t mod_counter;
    uint64_t ckpt_generation; /* checkpoints written (chunked ones alternate subjects) */
    uint64_t precopy_mark;    /* mod_counter at the handover PreCopy */
    ts_map_t precopy_ids;     /* entities the PreCopy carried */
    ts_zone_stats_t stats;
    /* scratch reused by ts_zone_pack_delta (no allocation per tick) */
    ts_entity_t **scratch_ents; /* a delta part's entities and their wire sizes */
    size_t *scratch_lens;
    size_t scratch_cap;
    /* world geometry; [x0, x1) x [y0, y1) is this cell, minus a hair so a
     * point inside it is inside by ts_cell_has_pos too */
    double in_x0, in_y0, in_x1, in_y1;
    double cell_size;
    double min_x, min_y, max_x, max_y;
    double max_speed;
    /* players (services/worker/players.c): called on the tick thread when
     * a player's entity arrives, joins, detaches or is attached again */
    void (*player_hook)(void *ud, void *zone, ts_entity_t *e); /* zone: this ts_zone_t */
    void *player_ud;
    bool players_scanned; /* players.c has seen every entity loaded before the hook */
} ts_zone_t;

ts_status_t ts_zone_create(ts_zone_t **out, const ts_cell_t *cell, uint64_t epoch, const ts_world_t *world,
                           double max_speed);
void ts_zone_destroy(ts_zone_t *z);

/* Applies one input-stream message (stream sequence stream_seq). Returns
 * false (and changes nothing) if stream_seq <= last_applied_seq. */
bool ts_zone_apply_batch(ts_zone_t *z, uint64_t stream_seq, const Tessera__V1__InputBatch *batch,
                         uint64_t tick);
/* Applies one input (no stream bookkeeping). */
void ts_zone_apply_input(ts_zone_t *z, const ts_input_t *in, uint64_t tick);
/* Adds an entity arriving from another cell (ignored if already present). */
void ts_zone_accept_transfer(ts_zone_t *z, const ts_entity_t *e);

/* Moves every entity by dt seconds; entities that leave the cell go to the
 * outbox. */
void ts_zone_step(ts_zone_t *z, double dt, uint64_t tick);

/* Outbox entry i is stored by JetStream: announces its transfers in the
 * next state delta (`left`) and empties it. A transfer is announced only once
 * it is stored, so a gateway re-routing a player's input to the new cell
 * always lands behind the entity's Transfer in that cell's stream. */
void ts_zone_outbox_done(ts_zone_t *z, size_t i);
/* Drops emptied outbox entries (keeping the order of the rest). */
void ts_zone_outbox_clear(ts_zone_t *z);

/* Entities per StateDelta message: a keyframe of a larger cell is sent as
 * several parts (StateDelta.part/parts), each well under NATS max_payload. */
#define TS_ZONE_STATE_PART_ENTITIES 4096

/* Packs this tick's StateDelta (changed entities, or all if full; departed
 * ones) as one or more messages and clears dirty flags and the departed
 * list. State carries what gateways need: no exactly-once window (that
 * travels in transfers and checkpoints only). *nparts == 0 when there is
 * nothing to say and !full; otherwise bufs[0..*nparts) / lens are malloc'd
 * buffers the caller frees, and *bufs the malloc'd array. */
ts_status_t ts_zone_pack_delta(ts_zone_t *z, uint64_t tick, bool full, const char *owner, uint8_t ***bufs,
                               size_t **lens, size_t *nparts);
/* Packs an InputBatch for outbox entry i (caller frees *buf). */
ts_status_t ts_zone_pack_outbox(const ts_zone_t *z, size_t i, uint8_t **buf, size_t *len);

/* Packs the queued Departures as an InputBatch for the zone's own input
 * subject; *len == 0 when there are none. The publisher marks them in
 * flight (deps_in_flight, deps_pub); ts_zone_departures_done() drops them
 * once stored; after a failure they simply go again (a Departure consumed
 * twice is harmless: the second finds the entity gone). */
ts_status_t ts_zone_pack_departures(const ts_zone_t *z, uint8_t **buf, size_t *len);
void ts_zone_departures_done(ts_zone_t *z);

/* Checkpoint of the whole zone (diff=false) or of what changed since
 * ts_zone_mark_precopy (diff=true: changed entities and removed ids). Both
 * carry the outbox (transfers and forwards decided but not stored yet) and
 * the departures not announced yet, which the loader takes over: the input
 * that decided them is at or below last_applied_seq and is not replayed. */
ts_status_t ts_zone_pack_checkpoint(const ts_zone_t *z, uint64_t tick, const char *owner, bool diff,
                                    uint8_t **buf, size_t *len);
/* Entities (and departed records) per checkpoint part: a part stays well
 * under NATS max_payload (1 MB by default) even with full windows. */
#define TS_ZONE_CKPT_PART_ENTITIES 3000
/* The same as one or more parts (Checkpoint.part/parts/generation): part 0
 * carries everything that is not an entity or a departed record. bufs/lens
 * are malloc'd arrays of malloc'd buffers the caller frees. */
ts_status_t ts_zone_pack_checkpoint_parts(const ts_zone_t *z, uint64_t tick, const char *owner, bool diff,
                                          uint64_t generation, uint8_t ***bufs, size_t **lens,
                                          size_t *nparts);
void ts_zone_free_parts(uint8_t **bufs, size_t *lens, size_t nparts);
/* True if the hand-written wire encoding of e (state: whole=false; transfers
 * and checkpoints: whole=true) is byte for byte what protobuf-c packs. */
bool ts_zone_entity_wire_check(const ts_entity_t *e, bool whole);
void ts_zone_mark_precopy(ts_zone_t *z);
/* Loads a checkpoint: a full one replaces the zone's state, a diff updates
 * it. Sets last_applied_seq from it. Parts load in order: part 0 does what
 * a whole checkpoint does, later parts add their entities and departed
 * records. */
ts_status_t ts_zone_load_checkpoint(ts_zone_t *z, const Tessera__V1__Checkpoint *cp, bool diff,
                                    uint64_t tick);

/* Forgets queued (unpublished) Departures; the entities will be seen
 * outside the cell again and decided anew. */
void ts_zone_cancel_departures(ts_zone_t *z);

/* Despawns the entity (as a Leave does: announced in the next delta). */
void ts_zone_despawn(ts_zone_t *z, ts_entity_t *e);
/* Stops a player's entity whose connection closed at at_us (wall clock). */
void ts_zone_detach(ts_zone_t *z, ts_entity_t *e, uint64_t at_us);

/* Number of entities in the zone. */
size_t ts_zone_entities(const ts_zone_t *z);

typedef enum { TS_SEQ_APPLY = 0, TS_SEQ_DUPLICATE, TS_SEQ_TOO_OLD } ts_seq_verdict_t;

/* Exactly-once filter: TS_SEQ_APPLY if (entity, seq) has not been applied
 * yet (and marks it applied), TS_SEQ_DUPLICATE if it has, TS_SEQ_TOO_OLD if it
 * is older than the window. */
ts_seq_verdict_t ts_entity_accept_seq(ts_entity_t *e, uint64_t seq);

#endif
