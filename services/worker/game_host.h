/* The game module host: loads the module (worker.game) and implements the
 * ts_game_api_t of tessera/game.h over a zone. One module per process.
 *
 * The zone calls the host through its ts_zone_game_hooks_t (on the tick
 * thread: when a join, command or request is applied, and after each step);
 * the host copies the entity into a ts_game_entity_t, calls the module and
 * copies vx, vy (clamped to the max speed) and the state bytes back, marking
 * the entity changed when they differ. Every callback is timed (two clock
 * reads); one longer than worker.game_budget_ms is an overrun. A crash
 * inside a callback (SIGSEGV, SIGBUS, SIGFPE, SIGILL) is reported by a
 * signal handler on its own stack, which writes one ERROR line naming the
 * module, the callback and the cell, then lets the signal kill the process
 * (the orchestrator recovers its cells elsewhere from their checkpoints). */
#ifndef TS_WORKER_GAME_HOST_H
#define TS_WORKER_GAME_HOST_H

#include <stdint.h>

#include "tessera/game.h"
#include "tessera/status.h"
#include "zone.h"

typedef struct ts_game_host ts_game_host_t;

/* What a callback's ts_game_ctx_t is: the host and the cell. */
struct ts_game_ctx {
    ts_game_host_t *h;
    ts_zone_t *z;
    bool in_tick; /* on_tick (not an input being applied) */
    int in_query; /* inside api->query: no spawn, no despawn */
    /* on_request: who asked, and from which cell (an answer goes there) */
    const ts_input_t *req;
};

/* Callbacks, for tessera_worker_game_errors_total{callback}. */
typedef enum {
    TS_GAME_CB_JOIN = 0,
    TS_GAME_CB_COMMAND,
    TS_GAME_CB_REQUEST,
    TS_GAME_CB_TICK,
    TS_GAME_CB_N
} ts_game_cb_t;

typedef struct {
    uint64_t commands;      /* on_command calls */
    uint64_t requests_sent; /* api->request calls that queued a request */
    uint64_t requests;      /* on_request calls */
    uint64_t events;        /* events queued (emit_to, emit_at) */
    uint64_t errors[TS_GAME_CB_N];
    uint64_t overruns;
    uint64_t faults;
} ts_game_stats_t;

/* Loads the module at path ("" or "move": the built-in movement module,
 * which has no callbacks), checks its ABI version and calls its load(config).
 * budget_ms: the overrun threshold. TS_ERR_CONFIG (with a message in err)
 * when the file cannot be loaded, lacks the symbol, has another ABI version
 * or its load() fails. */
ts_status_t ts_game_host_load(ts_game_host_t **out, const char *path, const char *config, int64_t budget_ms,
                              char *err, size_t errcap);
/* The same for a module table already in memory (tests, built-ins). */
ts_status_t ts_game_host_open(ts_game_host_t **out, const ts_game_module_t *m, const char *config,
                              int64_t budget_ms, char *err, size_t errcap);
/* Calls the module's unload() and closes it (NULL: no-op). */
void ts_game_host_close(ts_game_host_t *h);
const char *ts_game_host_name(const ts_game_host_t *h);
/* Connects z to the host (its hooks; nothing for a module without
 * callbacks); max_speed: the clamp of the velocities a module writes. */
void ts_game_host_attach(ts_game_host_t *h, ts_zone_t *z, double max_speed);
/* Tick thread: the counters (totals since load). */
void ts_game_host_stats(const ts_game_host_t *h, ts_game_stats_t *out);
/* Installs the crash handlers (SIGSEGV, SIGBUS, SIGFPE, SIGILL) that name
 * the module when the crash happens inside one of its callbacks. Called by
 * ts_game_host_load for a module from a file. */
void ts_game_host_install_fault_handlers(void);
/* worker.fault_file: the crash handler also appends its line to path (the
 * file outlives the process: in Kubernetes an emptyDir survives a container
 * restart). At start the lines already there are counted into the faults
 * counter (tessera_worker_game_faults_total carries on across restarts) and
 * the last one is logged again. "" or NULL: no file. Returns the number of
 * earlier crashes found, or -1 (logged) when the file cannot be opened. */
int ts_game_host_set_fault_file(ts_game_host_t *h, const char *path);

/* The split of a parent cell: the child's game state is a copy of the
 * parent's with an RNG derived from the parent's and the child's quadrant;
 * its world counters start at 0 (the parent moves its own to quadrant 0
 * through the input streams: zone.h, ts_zone_queue_counter_move). */
void ts_game_split_state(const ts_zone_game_t *parent, unsigned quadrant, ts_zone_game_t *child);

/* The process's host (main.c loads it before the metrics start). */
ts_game_host_t *ts_game_host_global(void);
void ts_game_host_set_global(ts_game_host_t *h);

#endif
