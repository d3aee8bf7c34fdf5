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
 * - Ghosts (read-only copies of neighbour cells' border entities) are never
 *   written by this zone's simulation and never carry an id it owns; an
 *   entity that arrives here drops its ghost.
 * - The spatial grid holds exactly the owned entities and the ghosts, each
 *   in the bucket of its current position (clamped to the grid).
 * The zone knows nothing of the bus: the worker publishes what it builds. */
#ifndef TS_WORKER_ZONE_H
#define TS_WORKER_ZONE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/game.h"
#include "tessera/map.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/subject.h"

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
    uint64_t mod;    /* zone modification counter at the last change */
    bool dirty;      /* changed since the last published delta */
    bool departing;  /* a Departure for it is queued or in the stream */
    bool ghosted;    /* within ghost margin of a border at the last step */
    uint32_t nearby; /* other entities (owned or ghost) within the interact radius */
    /* the game module's: TS_GAME_PLAYER / TS_GAME_NPC and its state bytes
     * (EntityState.flags / .state) */
    uint32_t flags;
    uint32_t state_len;
    uint8_t state[TS_GAME_STATE_MAX];
} ts_entity_t;

/* A read-only copy of an entity of a neighbour cell (from its owner's
 * `<cell>.ghost` messages). */
typedef struct {
    uint64_t id;
    double x, y, vx, vy;
    ts_cell_t src;  /* the cell whose owner sent it */
    uint64_t epoch; /* of src, in the message that last set it */
    uint64_t stamp; /* the keyframe of src that last named it */
    uint32_t flags; /* the entity's TS_GAME_PLAYER / TS_GAME_NPC */
    uint32_t state_len;
    uint8_t state[TS_GAME_STATE_MAX]; /* its game module state */
} ts_ghost_t;

/* One grid entry: a position and what is there (an owned entity or a
 * ghost), packed so a query reads contiguous memory. */
typedef struct {
    double x, y;
    uintptr_t ref; /* ts_entity_t* or (ts_ghost_t* | 1) */
} ts_grid_slot_t;

/* A uniform grid over the cell and a band of the ghost margin around it;
 * bucket side >= the interact radius, so a nearby count reads 3 x 3
 * buckets. Positions outside the grid go to its edge buckets (queries stay
 * exact). The slots are sorted by bucket: bucket b is
 * slots[start[b] .. start[b + 1]), the buckets of a row one span. Each step
 * rebuilds it from the positions it writes; a change between steps marks it
 * stale and the next query rebuilds it. */
typedef struct {
    double x0, y0, size, inv; /* inv = 1 / size */
    int32_t nx, ny;
    uint32_t *start; /* nx * ny + 1 */
    ts_grid_slot_t *slots;
    size_t n;
    /* staging for the rebuild (slot, bucket), all three of cap slots */
    ts_grid_slot_t *tmp;
    uint32_t *tmp_b;
    uint32_t *counts; /* per slot, for the nearby pass */
    size_t cap;
    bool stale;
} ts_grid_t;

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
    TS_INPUT_ATTACH,
    TS_INPUT_COMMAND, /* a client's Command: client seq, exactly once like Move */
    TS_INPUT_REQUEST, /* a game module's request to entity: seq 0 */
    /* world counters (entity 0, seq 0; worker origin only): a split or
     * retired cell's own marker moving its counters to `peer`, and the
     * counters arriving from `peer` (ts_zone_queue_counter_move) */
    TS_INPUT_COUNTER_MOVE,
    TS_INPUT_COUNTERS
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
    /* join: Join.payload; command: type and payload; request: type,
     * payload, the requesting entity, its position, cell and epoch;
     * attach: its resume token (payload: MAC || player, time_us: expiry,
     * from_cell: its cell; payload_len 0: none) */
    uint32_t type;
    uint32_t payload_len;
    uint8_t payload[TS_GAME_PAYLOAD_MAX];
    uint64_t from;
    double from_x, from_y;
    ts_cell_t from_cell;
    uint64_t from_epoch;
    /* counter move: the cell the counters go to; counters: the cell they
     * come from, the stream seq of its marker and the values */
    ts_cell_t peer;
    uint64_t move_seq;
    int64_t values[TS_GAME_COUNTERS];
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
    /* An entry too large for one message goes as several, one at a time:
     * its items (transfers, then inputs) [0, sent) are stored, and the
     * publish in flight carries the next `chunk` of them. */
    size_t sent, chunk;
    /* forwarded inputs: their first publisher's origin, published under it
     * (checkpoints and handover Diffs carry it: Outbox.origin);
     * TS_ORIGIN_WORKER for transfers and requests (and forwards loaded from
     * a checkpoint written before Outbox.origin) */
    ts_origin_t origin;
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
    uint64_t oversized;      /* messages larger than msg_max: not published (a bug) */
    uint64_t replay_steps;   /* steps re-simulated between replayed inputs (ts_zone_replay_until) */
    uint64_t replay_skipped; /* steps of silences longer than TS_ZONE_REPLAY_GAP_MAX_NS not re-simulated */
} ts_zone_stats_t;

/* One event of the game module for this tick's StateDelta. */
typedef struct {
    uint32_t type;
    bool positional;
    uint64_t entity;
    double x, y;
    uint32_t len;
    uint8_t payload[TS_GAME_PAYLOAD_MAX];
} ts_zone_event_t;

struct ts_zone;
/* The game module host (services/worker/game.c) as the zone calls it: on
 * the tick thread, when a join, command or request is applied and after
 * every step. NULL hooks (the built-in "move" module): none of it. */
typedef struct {
    void (*on_join)(void *ud, struct ts_zone *z, ts_entity_t *e, const ts_input_t *in);
    void (*on_command)(void *ud, struct ts_zone *z, ts_entity_t *e, const ts_input_t *in);
    void (*on_request)(void *ud, struct ts_zone *z, ts_entity_t *e, const ts_input_t *in);
    void (*on_tick)(void *ud, struct ts_zone *z, double dt, uint64_t tick);
} ts_zone_game_hooks_t;

/* What a cell moved to and received from one other cell (world counters;
 * Checkpoint.counter_flows): totals since the first move, so a gateway
 * counts a move on its way as out - the peer's in. The peers are a cell's
 * parent and its children. */
#define TS_ZONE_FLOWS 6
typedef struct {
    ts_cell_t peer;
    uint64_t in_seq; /* the peer's marker seq of the last move applied here */
    int64_t out[TS_GAME_COUNTERS];
    int64_t in[TS_GAME_COUNTERS];
} ts_zone_flow_t;

/* The cell's game module state (checkpointed: Checkpoint.game_*). */
typedef struct {
    uint64_t rng;     /* splitmix64 state, seeded from the cell */
    double time;      /* simulation seconds, advanced by dt each step */
    uint64_t spawned; /* NPCs spawned so far (their ids derive from it) */
    size_t state_len;
    uint8_t state[TS_GAME_CELL_STATE_MAX];
    int64_t counters[TS_GAME_COUNTERS]; /* world counters (api->counter_add) */
} ts_zone_game_t;

typedef struct ts_zone {
    ts_cell_t cell;
    char key[TS_CELL_STR_MAX];
    uint64_t epoch;
    uint64_t last_applied_seq;
    uint64_t cur_stream_seq; /* of the message being applied (for logs) */
    /* the time of the last step in the input stream's clock (JetStream
     * store times, ns since the Unix epoch; 0: not known): set by every
     * live step, advanced by one period per replayed step, checkpointed */
    uint64_t clock_ns;
    /* the owning worker's instance token (borrowed; NULL: none), written
     * into its checkpoints: its tick marks replay the cell after them */
    const char *instance;
    /* who published the message being applied (set before each batch):
     * inputs forwarded from it keep it, so their destination checks it */
    ts_origin_t cur_origin;
    ts_map_t entities; /* id -> ts_entity_t* */
    ts_map_t departed; /* id -> departed record */
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
    size_t msg_max;           /* bytes a packed message may have (ts_zone_set_max_payload) */
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
    /* space: the grid over owned entities and ghosts, the nearby radius and
     * the border band whose entities go to the neighbours as ghosts */
    ts_grid_t grid;
    double interact_radius, ghost_margin;
    double band_x0, band_y0, band_x1, band_y1;     /* strictly inside: not in the band */
    double ghost_x0, ghost_y0, ghost_x1, ghost_y1; /* ghosts kept: the cell + margin */
    ts_map_t ghosts;                               /* id -> ts_ghost_t* */
    uint64_t ghost_stamp;                          /* keyframes received, all sources */
    /* ghost output since the last pack: band entities the step changed and
     * ids that left the band (or the cell) */
    ts_entity_t **ghost_changed;
    size_t nghost_changed, cap_ghost_changed;
    uint64_t *ghost_removed;
    size_t nghost_removed, cap_ghost_removed;
    bool ghost_quiet; /* the last keyframe was empty and nothing changed since */
    /* game module (services/worker/game.c) */
    const ts_zone_game_hooks_t *game_hooks;
    void *game_ud;
    ts_zone_game_t game;
    /* this tick's events (bounded: TS_GAME_EVENTS_PER_TICK), in the next
     * delta's part 0; not kept while `replaying` (a cell catching up) */
    ts_zone_event_t *events;
    size_t nevents, cap_events;
    bool replaying;
    uint64_t requests_ignored; /* requests for entities this zone never knew */
    uint64_t req_key, req_n;   /* request_marker() in zone.c */
    /* world counter moves (checkpointed): per peer cell, and whether a
     * marker queued by ts_zone_queue_counter_move is not applied yet */
    ts_zone_flow_t flows[TS_ZONE_FLOWS];
    size_t nflows;
    bool counter_move_queued;
    /* per-tick bounds of the module host (game.c): counts of tick game_tick */
    uint64_t game_tick;
    uint32_t game_spawns, game_requests;
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
/* The wire Input as ts_zone_apply_input takes it (the batch's own decoding). */
void ts_zone_input_from_pb(const Tessera__V1__Input *pb, ts_input_t *in);
/* The epoch below which requests sent from cell are refused (0: none). */
typedef uint64_t (*ts_zone_epoch_fn)(void *ud, const ts_cell_t *cell);
/* That epoch, for a request from a cell whose registry epoch is view_epoch:
 * 0 (any goes) while the worker learned that epoch less than grace_us ago,
 * or when the request was stored (stored_ns, the input stream's clock)
 * before learned_ns + grace (when the worker learned it, the same clock):
 * its sender owned the cell when it sent it, however late it is applied.
 * A request stored later comes from an owner the registry replaced (a
 * zombie). stored_ns or learned_ns 0: not known (only the first rule). */
uint64_t ts_zone_fence_epoch(uint64_t view_epoch, uint64_t learned_ago_us, uint64_t learned_ns,
                             uint64_t stored_ns, uint64_t grace_us);
/* Drops, in place, the requests of ib whose sender's epoch (RequestInput.
 * from_epoch) is below epoch_of(ud, from_cell): sent by an owner the
 * registry has replaced since. Returns how many. */
size_t ts_zone_fence_requests(Tessera__V1__InputBatch *ib, ts_zone_epoch_fn epoch_of, void *ud);
/* Adds an entity arriving from another cell (ignored if already present). */
void ts_zone_accept_transfer(ts_zone_t *z, const ts_entity_t *e);

/* Queues a Departure of e (one of z's entities) to `to`; e is departing
 * from then on. False if out of memory (nothing queued). */
bool ts_zone_queue_departure(ts_zone_t *z, ts_entity_t *e, const ts_cell_t *to);
/* Moves every entity by dt seconds; entities that leave the cell go to the
 * outbox. */
void ts_zone_step(ts_zone_t *z, double dt, uint64_t tick);

/* ---- replay --------------------------------------------------------------------
 * A new owner replays the input after the checkpoint (or Diff) as the last
 * owner ran it. With the last owner's tick marks (ts_zone_mark_t, marks.c)
 * it applies the input up to each mark's sequence and runs one step per
 * mark (ts_zone_replay_mark). Without them it goes by store times: the
 * original stepped the cell once a tick, at clock_ns, and
 * applied an input at the first step after it arrived. Before applying an
 * input stored at t_ns, the replay steps the cell (zone step and on_tick)
 * at clock_ns + period, + 2 periods, ... while that is before t_ns; the
 * input then applies before the step at or after its store time, as the
 * original applied it (unless the delivery latency put it on the other
 * side of a tick boundary there). */
typedef void (*ts_zone_step_fn)(void *ud, struct ts_zone *z, double dt);
/* Steps of one silence at most: the clock jumps over the rest. */
#define TS_ZONE_REPLAY_GAP_MAX_NS (30ULL * 1000000000ULL)
/* Runs the steps due before an input stored at t_ns (see above): step(ud,
 * z, dt) each (NULL: ts_zone_step(z, dt, tick)), advancing clock_ns by
 * period_ns, while *budget lasts: each step takes 1 + the zone's entities
 * from it (the last one what is left). True when none is due any more;
 * false when the budget ran out first (call again). A zone whose clock is
 * not known (0) takes t_ns as its clock and steps nothing. */
bool ts_zone_replay_until(struct ts_zone *z, uint64_t t_ns, uint64_t period_ns, double dt, uint64_t tick,
                          uint32_t *budget, ts_zone_step_fn step, void *ud);

/* One tick of the last owner after a checkpoint, from its tick mark
 * (TickMark): the cell had applied its input up to through_seq, then
 * stepped, at clock_ns. */
typedef struct {
    uint64_t tick;
    uint64_t through_seq;
    uint64_t clock_ns;
} ts_zone_mark_t;
/* Runs the step of mark m as ts_zone_replay_until runs one (step(ud, z,
 * dt), NULL: ts_zone_step; it costs 1 + the zone's entities of *budget) and
 * sets clock_ns to the mark's. False (nothing done) if *budget is 0. */
bool ts_zone_replay_mark(struct ts_zone *z, const ts_zone_mark_t *m, double dt, uint64_t tick,
                         uint32_t *budget, ts_zone_step_fn step, void *ud);

/* ---- message size ----------------------------------------------------------
 * Every message the zone packs for the bus (a state delta part, an outbox or
 * departures InputBatch, a checkpoint or handover snapshot part) has at most
 * z->msg_max bytes, whatever the crowd: NATS max_payload (1 MB unless the
 * server says otherwise) less TS_ZONE_MSG_HEADROOM for the headers (message
 * id included) and a handover's envelope around a snapshot part. Parts are
 * cut by bytes; the entity counts below only cap a part further. */
#define TS_ZONE_MSG_HEADROOM 8192
#define TS_ZONE_MAX_PAYLOAD_DEFAULT (1024 * 1024)
/* Sets msg_max from the connection's max_payload (a zone starts with
 * TS_ZONE_MAX_PAYLOAD_DEFAULT's). */
void ts_zone_set_max_payload(ts_zone_t *z, size_t max_payload);

/* Outbox entry i is stored by JetStream: announces its transfers in the
 * next state delta (`left`) and empties it. A transfer is announced only once
 * it is stored, so a gateway re-routing a player's input to the new cell
 * always lands behind the entity's Transfer in that cell's stream. */
void ts_zone_outbox_done(ts_zone_t *z, size_t i);
/* Drops emptied outbox entries (keeping the order of the rest). */
void ts_zone_outbox_clear(ts_zone_t *z);

/* Entities per StateDelta message at most: a keyframe of a larger cell is
 * sent as several parts (StateDelta.part/parts), each also cut to msg_max
 * bytes. */
#define TS_ZONE_STATE_PART_ENTITIES 4096

/* Packs this tick's StateDelta (changed entities, or all if full; departed
 * ones; events) as one or more messages and clears dirty flags, the
 * departed list and the events: the announcements and events go first (in
 * part 0 unless they fill it), then the entities. State carries what gateways need: no exactly-once window
 * (that travels in transfers and checkpoints only). *nparts == 0 when there is nothing to say and !full;
 * otherwise bufs[0..*nparts) / lens are malloc'd buffers the caller frees, and *bufs the malloc'd array. */
ts_status_t ts_zone_pack_delta(ts_zone_t *z, uint64_t tick, bool full, const char *owner, uint8_t ***bufs,
                               size_t **lens, size_t *nparts);
/* Packs an InputBatch of all of outbox entry i (caller frees *buf), whatever
 * its size. */
ts_status_t ts_zone_pack_outbox(const ts_zone_t *z, size_t i, uint8_t **buf, size_t *len);
/* Packs the next message of outbox entry i: its items (transfers, then
 * inputs) from item `from` on, as many as fit msg_max (at least one); *count
 * says how many. The cut depends only on the entry's items, so packing the
 * same entry again (a retry, or a new owner that loaded it from a
 * checkpoint) gives the same messages. Caller frees *buf. */
ts_status_t ts_zone_pack_outbox_chunk(const ts_zone_t *z, size_t i, size_t from, uint8_t **buf, size_t *len,
                                      size_t *count);

/* Packs the queued Departures as an InputBatch for the zone's own input
 * subject; *len == 0 when there are none. The publisher marks them in
 * flight (deps_in_flight, deps_pub); ts_zone_departures_done() drops them
 * once stored; after a failure they simply go again (a Departure consumed
 * twice is harmless: the second finds the entity gone). */
ts_status_t ts_zone_pack_departures(const ts_zone_t *z, uint8_t **buf, size_t *len);
/* The same for the first *count queued Departures: as many as fit msg_max
 * (the rest go in a later message). */
ts_status_t ts_zone_pack_departures_chunk(const ts_zone_t *z, uint8_t **buf, size_t *len, size_t *count);
void ts_zone_departures_done(ts_zone_t *z);

/* Checkpoint of the whole zone (diff=false) or of what changed since
 * ts_zone_mark_precopy (diff=true: changed entities and removed ids). Both
 * carry the outbox (transfers and forwards decided but not stored yet) and
 * the departures not announced yet, which the loader takes over: the input
 * that decided them is at or below last_applied_seq and is not replayed. */
ts_status_t ts_zone_pack_checkpoint(const ts_zone_t *z, uint64_t tick, const char *owner, bool diff,
                                    uint8_t **buf, size_t *len);
/* Entities per checkpoint part at most (a part is also cut by bytes). */
#define TS_ZONE_CKPT_PART_ENTITIES 3000
/* The same as one or more parts (Checkpoint.part/parts/generation) of at
 * most msg_max bytes each: part 0 carries the cell's own fields (game
 * state), and the removed ids, announcements (`left`), outbox entries,
 * departed records and entities are spread over the parts in that order;
 * an outbox entry too large for what is left of a part continues in the
 * next (an Outbox of the same dest, marker_seq and origin, which the loader
 * joins to the one before).
 * bufs/lens are malloc'd arrays of malloc'd buffers the caller frees. */
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
 * a whole checkpoint does, later parts add what they carry (an Outbox of
 * the same dest, marker_seq and origin as the one loaded last continues
 * that entry). Every outbox entry keeps its origin (Outbox.origin; "" from
 * an older writer: the worker's) and is published again from its first
 * item, cut as before, so a transfer's messages get the same ids.
 * A checkpoint written before parts were cut by bytes (everything but the
 * entities and departed records in part 0) loads the same way. */
ts_status_t ts_zone_load_checkpoint(ts_zone_t *z, const Tessera__V1__Checkpoint *cp, bool diff,
                                    uint64_t tick);

/* Forgets queued (unpublished) Departures; the entities will be seen
 * outside the cell again and decided anew. */
void ts_zone_cancel_departures(ts_zone_t *z);

/* Despawns the entity (as a Leave does: announced in the next delta). */
void ts_zone_despawn(ts_zone_t *z, ts_entity_t *e);
/* Stops a player's entity whose connection closed at at_us (wall clock). */
void ts_zone_detach(ts_zone_t *z, ts_entity_t *e, uint64_t at_us);

/* ---- game module ---------------------------------------------------------- */

/* How many of the cell's world counters a message carries: up to the last
 * non-zero one (0: all are 0). */
size_t ts_zone_counters_len(const ts_zone_t *z);
/* World counters move between cells through input streams, like entities:
 * ts_zone_queue_counter_move queues, in an outbox entry for the zone's own
 * input stream, a marker (TS_INPUT_COUNTER_MOVE) naming `to`; when it is
 * applied (at stream seq S, by whoever owns the cell then, live or in a
 * replay) the counters become 0 and go to `to` as a TS_INPUT_COUNTERS in an
 * outbox entry of marker S (message id xfer-<cell>-m<S>-<to>), recorded in
 * the flow to `to`. `to` adds them once: a from_seq not above the flow's
 * in_seq is a copy. The marker's own message id derives from the cell, its
 * epoch and its input position; a second copy moves what the cell has by
 * then (usually nothing). False if out of memory or one is queued and not
 * applied yet. */
bool ts_zone_queue_counter_move(ts_zone_t *z, const ts_cell_t *to);
/* The world's input stream was created again (sequences start over):
 * counters moved here from now on have sequences of the new one. */
void ts_zone_forget_move_seqs(ts_zone_t *z);
/* The counter flows as CounterFlow messages: *n of them in s (pointers in
 * s->p). */
typedef struct {
    Tessera__V1__CounterFlow f[TS_ZONE_FLOWS];
    Tessera__V1__CounterFlow *p[TS_ZONE_FLOWS];
    Tessera__V1__CellId cell[TS_ZONE_FLOWS];
} ts_zone_flows_pb_t;
size_t ts_zone_flows_to_pb(const ts_zone_t *z, ts_zone_flows_pb_t *s);
/* Seeds the cell's game RNG from its cell id (a new zone does this). */
uint64_t ts_zone_game_seed(const ts_cell_t *cell);
/* Outbox entries of requests have this bit in marker_seq (departure
 * markers are stream sequences, below it). */
#define TS_ZONE_REQUEST_MARK (1ULL << 63)
/* Queues a request input (in->kind TS_INPUT_REQUEST) for cell `to`'s input
 * stream in an outbox entry of its own whose message id is deterministic
 * (see zone.c). in_tick: decided in on_tick, not while an input applied.
 * False if out of memory. */
bool ts_zone_send_request(ts_zone_t *z, const ts_cell_t *to, const ts_input_t *in, bool in_tick);
/* The cell of entity id as this zone knows it: its own (owned), the
 * ghost's source, or where it departed to. */
bool ts_zone_locate(const ts_zone_t *z, uint64_t id, ts_cell_t *out);
/* Adds an event to this tick's list: false if full (TS_GAME_EVENTS_PER_TICK);
 * dropped (true) while the zone replays. */
bool ts_zone_add_event(ts_zone_t *z, const ts_zone_event_t *ev);
/* An NPC's id: 0x7fff in the top 16 bits (a player's id starts with its
 * gateway id, and gateway id 32767 is reserved), then the cell and n (the
 * zone's spawn counter) mixed, so replay gives the same. */
uint64_t ts_zone_npc_id(const ts_zone_t *z, uint64_t n);
/* Adds an entity created on the tick thread (an NPC) to the zone: false if
 * the id is taken. Takes e over either way. */
bool ts_zone_add_entity(ts_zone_t *z, ts_entity_t *e);
/* Marks e changed (it goes in the next delta). */
void ts_zone_touch(ts_zone_t *z, ts_entity_t *e);

/* Number of entities in the zone. */
size_t ts_zone_entities(const ts_zone_t *z);

/* ---- space: grid, nearby, ghosts --------------------------------------- */

#define TS_ZONE_INTERACT_RADIUS 2.0
#define TS_ZONE_GHOST_MARGIN 4.0
/* Entities per GhostDelta message (a larger one goes in several). */
#define TS_ZONE_GHOST_PART_ENTITIES 4096

/* Sets the nearby radius and the ghost margin (the margin is at least the
 * radius) and rebuilds the grid if they changed. A zone starts with
 * TS_ZONE_INTERACT_RADIUS and TS_ZONE_GHOST_MARGIN. */
ts_status_t ts_zone_set_space(ts_zone_t *z, double interact_radius, double ghost_margin);

/* What a spatial query visits: an owned entity (ghost == NULL) or a ghost
 * (entity == NULL). */
typedef void (*ts_zone_visit_fn)(void *ud, const ts_entity_t *entity, const ts_ghost_t *ghost);
/* Calls fn (may be NULL) for every owned entity and ghost within distance r
 * of (x, y) (boundary included). Returns how many there are. Reads the
 * buckets the circle overlaps, not every entity (after a change since the
 * last step, the first query re-sorts the grid: O(entities + ghosts)). */
size_t ts_zone_query_radius(ts_zone_t *z, double x, double y, double r, ts_zone_visit_fn fn, void *ud);
/* Sets every owned entity's nearby count (others within the interact
 * radius, owned or ghost); an entity whose count changed goes in the next
 * state delta. ts_zone_step calls it after moving. */
void ts_zone_update_nearby(ts_zone_t *z);

/* A ghost named by a message of src at epoch: added or moved (ignored if
 * the id is an entity of this zone; dropped if it is outside the cell +
 * margin). stamp: the keyframe it belongs to (0 for a delta). */
void ts_zone_ghost_put(ts_zone_t *z, const ts_cell_t *src, uint64_t epoch, uint64_t stamp, uint64_t id,
                       double x, double y, double vx, double vy);
/* Sets the flags and module state of ghost id (if src sent it). */
void ts_zone_ghost_set_game(ts_zone_t *z, const ts_cell_t *src, uint64_t id, uint32_t flags,
                            const void *state, size_t len);
/* Drops ghost id if src sent it. */
void ts_zone_ghost_remove(ts_zone_t *z, const ts_cell_t *src, uint64_t id);
/* A new keyframe of src begins: returns its stamp for ts_zone_ghost_put. */
uint64_t ts_zone_ghost_keyframe(ts_zone_t *z);
/* Drops the ghosts of src that the keyframe `stamp` did not name. */
void ts_zone_ghost_sweep(ts_zone_t *z, const ts_cell_t *src, uint64_t stamp);
/* Drops the ghosts of src (all cells if src is NULL) whose epoch is below
 * min_epoch (UINT64_MAX: all of them). Returns how many. */
size_t ts_zone_ghost_drop(ts_zone_t *z, const ts_cell_t *src, uint64_t min_epoch);
size_t ts_zone_ghosts(const ts_zone_t *z);

/* Packs what this zone's neighbours need of its border band: a keyframe
 * (full: every entity within the ghost margin of a border) or a delta (the
 * ones that changed since the last pack, and the ids that left the band),
 * as one or more GhostDelta messages (*nparts == 0: nothing to say; for a
 * keyframe, when the band is empty and the last keyframe said so already).
 * Same buffer ownership as ts_zone_pack_delta. */
ts_status_t ts_zone_pack_ghost(ts_zone_t *z, uint64_t tick, bool full, uint32_t keyframe_ticks,
                               const char *owner, uint8_t ***bufs, size_t **lens, size_t *nparts);

typedef enum { TS_SEQ_APPLY = 0, TS_SEQ_DUPLICATE, TS_SEQ_TOO_OLD } ts_seq_verdict_t;

/* Exactly-once filter: TS_SEQ_APPLY if (entity, seq) has not been applied
 * yet (and marks it applied), TS_SEQ_DUPLICATE if it has, TS_SEQ_TOO_OLD if it
 * is older than the window. */
ts_seq_verdict_t ts_entity_accept_seq(ts_entity_t *e, uint64_t seq);

#endif
