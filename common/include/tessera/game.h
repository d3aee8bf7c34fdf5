/* The game module API: where a game team puts its game logic.
 *
 * A game module is a shared object the worker loads (worker.game=PATH; the
 * built-in module, "move", is plain movement). It exports one symbol,
 *
 *     const ts_game_module_t *tessera_game_module(void);
 *
 * returning a static table of callbacks whose abi_version the worker checks
 * against TS_GAME_ABI_VERSION before calling anything else. The worker calls
 * the module only on a cell's tick thread, one cell at a time; a callback
 * sees that one cell through its ts_game_ctx_t and calls the worker back
 * through the ts_game_api_t it was given at load.
 *
 * What a module may keep:
 *   - per entity: up to TS_GAME_STATE_MAX bytes of state (ts_game_entity_t
 *     .state), which travel with the entity through transfers, handovers,
 *     splits and merges, checkpoints and ghosts, and reach clients in
 *     EntityState.state;
 *   - per cell: up to TS_GAME_CELL_STATE_MAX bytes (api->cell_state), in the
 *     cell's checkpoints and handovers; on a split each child starts with a
 *     copy of its parent's, on a merge the parent takes its first child's;
 *   - per cell: TS_GAME_COUNTERS world counters (api->counter_add), which
 *     gateways add up over the world's live cells and send to every client
 *     (WorldCounters); on a split the parent's move to child quadrant 0 (the
 *     others start at 0), on a merge the children's move to the parent,
 *     each through the cells' input streams, so the world's sum is kept,
 *     exactly, through crashes too;
 *   - per module: read-only data built by load() from the configuration
 *     (tables, constants). Nothing else: no globals written during a tick,
 *     no wall clock, no rand(), no I/O.
 *
 * Determinism. After a crash the new owner loads the cell's last checkpoint
 * and re-applies its input stream. A module replays exactly when its
 * callbacks are functions of (entity and cell state, the input, api->rng,
 * api->time): the RNG is per cell and its state is checkpointed; time is the
 * cell's simulation time (seconds, advanced by dt each tick, checkpointed).
 * Inputs (joins, commands, requests) are applied exactly once and in stream
 * order. The ticks between them are re-run too, as the last owner ran
 * them: each worker tick publishes a tick mark (the input-stream position
 * its cells had applied when it ticked), and the new owner re-runs, per mark
 * after the checkpoint, the cell's input up to that position and one step
 * (motion, on_tick); a tick the original missed has no mark. Without marks
 * (lost, or not kept that long) it runs the steps due before each input's
 * store time instead, which can move an input stored within the delivery
 * latency before a tick boundary by a tick and re-runs missed ticks. Either
 * way the ticks from the last owner's end to the present are run before the
 * cell goes live. Ghosts during the replayed ticks are the new owner's.
 * Requests the cell already published are never delivered
 * twice: their message ids derive from the cell, the target's cell, the
 * input-stream position that caused them and their rank after it (in
 * on_tick: the last position, the cell's time and the rank; not the epoch),
 * so one decided at another tick on replay is another request. Events are
 * best effort (at most once) and are not sent while a cell replays.
 * api->each and api->query visit in id order, so a module drawing random
 * numbers entity by entity replays too.
 *
 * Cross-border interaction. A module never writes another cell's entity: a
 * ghost (an entity of a neighbouring cell, api->query returns it with
 * TS_GAME_GHOST set) is read-only. To act on it, api->request() sends a
 * request to the owner of the target's cell through that cell's input
 * stream (exactly once, following the target if it moved; fenced by epoch:
 * it carries the sending cell's epoch, and the receiving worker drops it if
 * its registry copy has held a newer epoch of that cell for 2 s — sent by
 * an owner that lost the cell; replayed input is not fenced);
 * the target's owner calls on_request() with the target writable. A request
 * to an entity of the same cell goes the same way (one rule for all).
 *
 * Errors. A callback returns 0 on success or a negative TS_GAME_E* code; an
 * error from on_command is counted and logged (rate-limited) with the
 * module's name and does not affect the cell. A callback that overruns
 * worker.game_budget_ms is counted in tessera_worker_game_overruns_total and
 * logged; a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL) inside a callback is
 * logged with the module's name and the callback, counted in
 * tessera_worker_game_faults_total, and the worker exits so that its cells
 * are recovered elsewhere (memory a faulting module wrote cannot be
 * trusted). */
#ifndef TS_GAME_H
#define TS_GAME_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever ts_game_module_t, ts_game_api_t or ts_game_entity_t
 * change incompatibly. */
#define TS_GAME_ABI_VERSION 2

/* World counters per cell (api->counter_add). */
#define TS_GAME_COUNTERS 8

#define TS_GAME_STATE_MAX 64        /* module state bytes per entity */
#define TS_GAME_CELL_STATE_MAX 1024 /* module state bytes per cell */
#define TS_GAME_PAYLOAD_MAX 256     /* command, request and event payload bytes */

/* Error codes a callback or an api function returns. */
#define TS_GAME_OK 0
#define TS_GAME_EINVAL (-1) /* bad argument (unknown command, payload too long, ...) */
#define TS_GAME_ENOENT (-2) /* no such entity */
#define TS_GAME_EPERM (-3)  /* not allowed (writing a ghost, despawning a player, ...) */
#define TS_GAME_ENOSPC (-4) /* a per-tick bound is full (spawns, events, requests) */
#define TS_GAME_ERANGE (-5) /* a position outside the world */

/* ts_game_entity_t.flags */
#define TS_GAME_PLAYER 0x1u /* a player's entity (joined through a gateway) */
#define TS_GAME_NPC 0x2u    /* spawned by the module */
#define TS_GAME_GHOST 0x4u  /* a read-only copy of a neighbour cell's entity */

/* An entity as a module sees it. On the writable views (owned entities
 * given to on_join, on_command, on_request and api->each callbacks) the
 * module may change vx, vy (clamped to the world's max speed), state and
 * state_len; the worker copies them back when the callback returns. The
 * other fields are read-only. */
typedef struct {
    uint64_t id;
    double x, y;
    double vx, vy;
    uint32_t flags;
    uint32_t state_len; /* 0..TS_GAME_STATE_MAX */
    uint8_t state[TS_GAME_STATE_MAX];
    const char *name; /* the Join's name; valid during the callback */
} ts_game_entity_t;

/* One cell during one callback. */
typedef struct ts_game_ctx ts_game_ctx_t;

/* A request from another entity (possibly in another cell). */
typedef struct {
    uint64_t from;         /* the requesting entity */
    double from_x, from_y; /* its position when it asked */
    uint32_t type;
    const uint8_t *payload;
    size_t len;
} ts_game_request_t;

typedef void (*ts_game_each_fn)(void *ud, ts_game_entity_t *e);
typedef void (*ts_game_visit_fn)(void *ud, const ts_game_entity_t *e);

/* What the worker offers a module (valid from load to unload). */
typedef struct {
    uint32_t abi_version;
    /* Calls fn for every entity this cell owns, writable, in ascending id
     * order (the same on replay). fn may spawn and despawn. Returns how
     * many. */
    size_t (*each)(ts_game_ctx_t *ctx, ts_game_each_fn fn, void *ud);
    /* Calls fn for every owned entity and ghost within r of (x, y),
     * read-only, in ascending id order (a grid query: costs what it returns,
     * plus sorting it). fn may not spawn or despawn (EPERM). Returns how
     * many. */
    size_t (*query)(ts_game_ctx_t *ctx, double x, double y, double r, ts_game_visit_fn fn, void *ud);
    /* Copies an owned entity or ghost of this cell into *out: 0 or ENOENT. */
    int (*get)(ts_game_ctx_t *ctx, uint64_t id, ts_game_entity_t *out);
    /* Writes vx, vy and state of an owned entity: 0, ENOENT, EPERM (ghost). */
    int (*set)(ts_game_ctx_t *ctx, const ts_game_entity_t *e);
    /* Spawns an NPC at (x, y) in this cell (it moves on to other cells like
     * any entity). Returns its id (> 0) or a negative code (ERANGE outside
     * the cell, ENOSPC beyond TS_GAME_SPAWNS_PER_TICK this tick; EPERM
     * inside a query's visit). Ids are derived from the cell and its count
     * of spawns (checkpointed): replay gives the same. An NPC id has 0x7fff
     * in its top 16 bits (player ids start with their gateway id: gateway
     * id 32767 is reserved). */
    int64_t (*spawn)(ts_game_ctx_t *ctx, double x, double y, const char *name, const void *state,
                     size_t state_len);
    /* Despawns an NPC of this cell: 0, ENOENT, EPERM (a player, a ghost,
     * or inside a query's visit). */
    int (*despawn)(ts_game_ctx_t *ctx, uint64_t id);
    /* An Event to the client of a player entity this cell owns (ENOENT
     * otherwise: for another cell's player, send a request and let its
     * owner emit), or to every client whose area of interest contains
     * (x, y). 0, EINVAL, ENOENT, ENOSPC (more than TS_GAME_EVENTS_PER_TICK
     * this tick). Carried in the cell's StateDelta. */
    int (*emit_to)(ts_game_ctx_t *ctx, uint64_t entity, uint32_t type, const void *payload, size_t len);
    int (*emit_at)(ts_game_ctx_t *ctx, double x, double y, uint32_t type, const void *payload, size_t len);
    /* A request to entity `target` (owned here, a ghost, or any id this cell
     * knows the cell of): delivered once to on_request at the target's
     * owner, through the target cell's input stream. 0, ENOENT (no cell
     * known for target), EINVAL, ENOSPC. The request carries from's
     * position as this cell knows it (owned or ghost; else 0, 0). In
     * on_request, a request to req->from (an answer) goes to the cell the
     * request came from, even when no ghost of it is here. */
    int (*request)(ts_game_ctx_t *ctx, uint64_t from, uint64_t target, uint32_t type, const void *payload,
                   size_t len);
    /* The cell's deterministic random numbers (checkpointed). */
    uint64_t (*rng)(ts_game_ctx_t *ctx);
    /* Uniform in [0, 1). */
    double (*rng_unit)(ts_game_ctx_t *ctx);
    /* The cell's simulation time in seconds (checkpointed). */
    double (*time)(ts_game_ctx_t *ctx);
    /* The cell's module state: *len bytes (0 at first) of a
     * TS_GAME_CELL_STATE_MAX buffer the module may write; set *len. */
    uint8_t *(*cell_state)(ts_game_ctx_t *ctx, size_t **len);
    /* The cell's bounds [x0, x1) x [y0, y1) and the world's. */
    void (*cell_bounds)(ts_game_ctx_t *ctx, double *x0, double *y0, double *x1, double *y1);
    void (*world_bounds)(ts_game_ctx_t *ctx, double *x0, double *y0, double *x1, double *y1);
    /* The module's data from load(). */
    void *(*module_data)(ts_game_ctx_t *ctx);
    /* Logs a line prefixed with the module's name and the cell (level: 0
     * debug, 1 info, 2 warn, 3 error); rate-limited per cell. */
    void (*log)(ts_game_ctx_t *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
    /* Adds delta to this cell's world counter `index` (< TS_GAME_COUNTERS):
     * 0 or EINVAL. Counters are per cell, checkpointed and replayed like
     * the rest of the cell's state; gateways send clients their sum over
     * the world's live cells (WorldCounters). Valid in on_join, on_command,
     * on_request and on_tick. (ABI 2) */
    int (*counter_add)(ts_game_ctx_t *ctx, uint32_t index, int64_t delta);
} ts_game_api_t;

#define TS_GAME_SPAWNS_PER_TICK 64
#define TS_GAME_EVENTS_PER_TICK 1024
#define TS_GAME_REQUESTS_PER_TICK 1024

/* A module: every callback but the name and abi_version may be NULL. */
typedef struct {
    uint32_t abi_version; /* TS_GAME_ABI_VERSION */
    const char *name;
    /* Once, before any cell: config is the worker.game_config string (may be
     * ""). *module_data is given back by api->module_data. */
    int (*load)(const ts_game_api_t *api, const char *config, void **module_data);
    void (*unload)(void *module_data);
    /* A player joined (payload: Join.payload from the client). */
    int (*on_join)(ts_game_ctx_t *ctx, ts_game_entity_t *e, const uint8_t *payload, size_t len);
    /* A client's Command, applied exactly once. */
    int (*on_command)(ts_game_ctx_t *ctx, ts_game_entity_t *e, uint32_t type, const uint8_t *payload,
                      size_t len);
    /* A request from api->request, applied exactly once at the target's
     * owner. */
    int (*on_request)(ts_game_ctx_t *ctx, ts_game_entity_t *target, const ts_game_request_t *req);
    /* Every tick, after movement, before the state is published. */
    void (*on_tick)(ts_game_ctx_t *ctx, double dt);
} ts_game_module_t;

/* The symbol a module exports. */
typedef const ts_game_module_t *(*ts_game_module_fn)(void);
#define TS_GAME_MODULE_SYMBOL "tessera_game_module"

#ifdef __cplusplus
}
#endif

#endif
