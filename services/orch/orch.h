/* tessera-orch internals: the orchestrator's state, shared by its modules.
 *
 *   main.c       configuration, connections, the main loop
 *   cells.c      registry snapshot, world creation, RegistryChange broadcasts
 *   handover.c   drives one live handover (PREPARE, FREEZE, CAS, COMMIT / ABORT)
 *   ctl.c        tessera.ctl.<world>.* requests and the drain bookkeeping
 *   recovery.c   cells of dead workers to live ones
 *   rebalance.c  worker loads from heartbeats, one move at a time
 *   balance.c    the load policy itself (pure)
 *   stats.c      counters and percentiles for `stats`
 *   leader.c     the leader lock thread
 *   workers.c    heartbeat table
 *   layout.c     world layout from configuration
 *
 * Threading: everything here belongs to the main thread except what the
 * ctl module guards with its own mutex (the request queue, the draining set
 * and the owned-cell counts the nats.c callbacks read). Only the main thread
 * talks to Redis through o->reg, and only while ts_leader_held(). */
#ifndef TESSERA_ORCH_H
#define TESSERA_ORCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "balance.h"
#include "layout.h"
#include "leader.h"
#include "stats.h"
#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/registry.h"
#include "tessera/status.h"
#include "workers.h"

#define TS_TYPE_HANDOVER "tessera.v1.Handover"

typedef struct ts_ctl ts_ctl_t;

typedef struct {
    const ts_config_t *cfg;
    ts_layout_t layout;
    uint32_t world;
    ts_bus_t *bus;
    ts_registry_t *reg; /* NULL while broken; main.c reconnects */
    ts_workers_t *workers;
    ts_bus_sub_t *hb_sub;
    ts_leader_t *leader;
    ts_stats_t stats;
    ts_ctl_t *ctl;
    volatile sig_atomic_t *stop;

    bool leading; /* the main loop acts as leader */
    uint64_t leading_since_us;
    bool world_written;
    uint64_t next_write_us;

    /* registry snapshot (main thread) */
    ts_cell_entry_t *cells;
    size_t ncells;
    uint64_t cells_us; /* monotonic time of the snapshot, 0: stale */

    /* crash recovery */
    char (*seen)[TS_WORKER_ID_MAX]; /* workers seen alive since this process started */
    size_t nseen, cap_seen;
    uint64_t next_sweep_us;

    /* rebalancing */
    ts_balance_t balance;
    uint64_t next_balance_us;

    uint64_t handover_seq; /* ids "<holder>-<seq>" */
} ts_orch_t;

/* ---- cells.c ---- */
/* Marks the Redis connection broken (logged); main.c reconnects. */
void ts_orch_registry_broken(ts_orch_t *o, ts_status_t st);
/* True for statuses that are answers, not a broken connection. */
bool ts_orch_is_answer(ts_status_t st);
/* Publishes RegistryChange for an entry at a registry version. */
void ts_orch_announce(ts_orch_t *o, const ts_cell_entry_t *e, uint64_t version);
/* Writes the world and creates missing cells; false on a registry error. */
bool ts_orch_write_world(ts_orch_t *o);
/* Re-reads every cell into o->cells; false on a registry error. */
bool ts_orch_refresh_cells(ts_orch_t *o);
/* Replaces the snapshot entry of e->cell after a change this process made. */
void ts_orch_note_cell(ts_orch_t *o, const ts_cell_entry_t *e);
/* Cells the snapshot gives to worker id. */
size_t ts_orch_owned(const ts_orch_t *o, const char *id);
/* Compare-and-set of a cell's owner with everything around it: the leader
 * check, a re-read when the connection broke mid-call (the CAS is not
 * re-sent), the snapshot and the broadcast. TS_OK: *out is the new entry;
 * TS_ERR_CONFLICT: someone else changed the cell (*out current);
 * TS_ERR_UNAVAILABLE: not the leader or Redis unreachable (nothing
 * changed as far as we know). */
ts_status_t ts_orch_cas(ts_orch_t *o, const ts_cell_t *cell, uint64_t epoch, const char *owner,
                        ts_cell_entry_t *out);
void ts_orch_cells_free(ts_orch_t *o);

/* ---- handover.c ---- */
/* 1-63 letters, digits, '-' or '_' (safe in subjects and Redis keys). */
bool ts_orch_worker_id_ok(const char *id);
typedef enum {
    TS_HO_CTL = 0, /* tessera.ctl.<world>.handover */
    TS_HO_DRAIN,
    TS_HO_REBALANCE,
} ts_ho_reason_t;

/* Moves cell to worker `to`, checking the preconditions first. Returns TS_OK
 * when ownership moved; reply (always filled) is the ctl reply text:
 * "ok <from>-><to> epoch <E>-><E+1> freeze_us=<n> total_us=<n>" or
 * "error: <reason>". */
ts_status_t ts_orch_handover(ts_orch_t *o, const ts_cell_t *cell, const char *to, ts_ho_reason_t why, char *reply,
                             size_t cap);

/* ---- ctl.c ---- */
ts_status_t ts_ctl_create(ts_ctl_t **out, ts_orch_t *o);
void ts_ctl_destroy(ts_ctl_t *c);
/* Subscribes to tessera.ctl.<world>.* (leader) / unsubscribes and answers
 * what is queued with "error: not leader" (standby). */
ts_status_t ts_ctl_serve(ts_ctl_t *c, bool on);
/* Serves queued requests and one drain move; main loop, leader only.
 * True if it did anything (the loop then comes back without waiting). */
bool ts_ctl_poll(ts_ctl_t *c);
/* Loads the draining set from Redis (after gaining the lead). */
void ts_ctl_load_draining(ts_ctl_t *c);
/* Publishes the snapshot's per-worker cell counts for the callbacks. */
void ts_ctl_note_cells(ts_ctl_t *c);
bool ts_ctl_is_draining(ts_ctl_t *c, const char *id);
/* Forgets a draining worker that is gone (in memory and in Redis). */
void ts_ctl_drained(ts_ctl_t *c, const char *id);
/* Blocks until a request is queued or timeout_ms passes. */
void ts_ctl_wait(ts_ctl_t *c, int64_t timeout_ms);
/* Copies up to cap draining worker ids into out; returns how many are draining. */
size_t ts_ctl_draining_copy(ts_ctl_t *c, char (*out)[TS_WORKER_ID_MAX], size_t cap);
/* True while some draining worker still owns cells. */
bool ts_ctl_draining_any(ts_ctl_t *c);

/* ---- recovery.c ---- */
/* Every 250 ms: gives the cells of dead owners to live workers. */
void ts_recovery_poll(ts_orch_t *o);
/* Records that a worker was seen alive. */
void ts_recovery_seen(ts_orch_t *o, const char *id);
bool ts_recovery_was_seen(const ts_orch_t *o, const char *id);
void ts_recovery_free(ts_orch_t *o);

/* ---- rebalance.c ---- */
/* A view of the cluster for the policy: every known worker (heartbeats and
 * cell owners) with eligibility checked in Redis, and the snapshot's cells
 * with their heartbeat loads. Free with ts_orch_view_free. */
typedef struct {
    ts_balance_worker_t *w;
    bool *alive; /* liveness key present in Redis, per worker */
    bool *fresh; /* heartbeat within the TTL, per worker */
    size_t nw;
    size_t warming; /* cells whose input rate is not measured yet */
    ts_balance_cell_t *c;
    size_t nc;
    ts_balance_view_t v;
} ts_orch_view_t;
ts_status_t ts_orch_view_build(ts_orch_t *o, ts_orch_view_t *view);
void ts_orch_view_free(ts_orch_view_t *view);
/* Index of worker id in the view, or -1. */
int ts_orch_view_worker(const ts_orch_view_t *view, const char *id);
void ts_rebalance_init(ts_orch_t *o);
/* When due: one evaluation and at most one move. */
void ts_rebalance_poll(ts_orch_t *o);

#endif
