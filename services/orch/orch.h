/* tessera-orch internals: the orchestrator's state, shared by its modules.
 *
 *   main.c       configuration, connections, the main loop
 *   cells.c      the local copy of the registry, world creation, compare-and-sets, RegistryChange broadcasts
 *   handover.c   starts handovers (preconditions, queue), carries their requests and replies
 *   hosm.c       the handover state machines themselves (pure)
 *   ctl.c        tessera.ctl.<world>.* requests and the drain bookkeeping
 *   recovery.c   liveness poll, cells of dead or replaced workers to live ones
 *   rebalance.c  the cluster view, the rebalancer's plans
 *   split.c      split and merge (registry scripts, the automatic planner of splitplan.c)
 *   balance.c    the load policy itself (pure)
 *   liveness.c   worker liveness and incarnations (pure)
 *   stats.c      counters and percentiles for `stats`
 *   leader.c     the leader lock thread
 *   workers.c    heartbeat table
 *   layout.c     world layout from configuration
 *
 * Threading: everything here belongs to the main thread except what the
 * ctl module guards with its own mutex (the request queue, the draining set
 * and the owned-cell counts the nats.c callbacks read) and the handover
 * replies queue (handover.c). The main thread never waits for a worker: every
 * request it sends is answered into a queue it drains, and it sleeps on one
 * condition variable that requests, replies and timers wake. Only the main
 * thread talks to Redis through o->reg, and only while ts_leader_held(). */
#ifndef TESSERA_ORCH_H
#define TESSERA_ORCH_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "balance.h"
#include "hosm.h"
#include "layout.h"
#include "leader.h"
#include "liveness.h"
#include "stats.h"
#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/map.h"
#include "tessera/registry.h"
#include "tessera/status.h"
#include "workers.h"

/* How often the leader reads worker liveness (one pipelined call). */
#define TS_ORCH_SWEEP_US 250000ULL

typedef struct ts_ctl ts_ctl_t;
typedef struct ts_draining ts_draining_t;
typedef struct ts_handovers ts_handovers_t;
typedef struct ts_split ts_split_t;

typedef struct ts_orch ts_orch_t;

struct ts_orch {
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
    ts_draining_t *drain; /* workers being drained (draining.c) */
    volatile sig_atomic_t *stop;

    /* the main loop's wake-up (wake.c) */
    pthread_mutex_t wake_mu;
    pthread_cond_t wake_cond;
    bool woken;
    /* who hears that a handover it started finished, by reason: set by the
     * module that starts them (ctl.c for drains, rebalance.c), so handover.c
     * calls up into neither */
    void (*ho_done[TS_HO_REASONS])(ts_orch_t *o, bool moved);

    bool leading; /* the main loop acts as leader */
    uint64_t leading_since_us;
    bool world_written;
    uint64_t next_write_us;

    /* the local copy of the registry (main thread): the orchestrator is its
     * only writer, so it follows its own compare-and-sets and reads it all
     * only when it gains the lead, after a reconnect or when the version
     * shows a change it did not make */
    ts_cell_entry_t *cells;
    bool *orphan; /* per cell: held by a replaced incarnation of its owner */
    size_t ncells;
    ts_map_t index;      /* ts_cell_hash -> index + 1 */
    uint64_t version;    /* registry version the copy reflects */
    bool cells_stale;    /* a full read is due */
    bool cells_dirty;    /* changed since the ctl counts were published */
    uint64_t full_reads; /* full reads so far (tests, logs) */

    /* liveness and crash recovery */
    ts_liveness_t live;
    uint64_t next_sweep_us;
    uint64_t reg_connects;     /* ts_registry_connects at the last liveness poll */
    uint64_t healthy_since_us; /* liveness polls have been succeeding, quickly, since then (0: not now) */

    /* handovers in flight */
    ts_handovers_t *ho;

    /* rebalancing */
    ts_balance_t balance;
    uint64_t next_balance_us;
    size_t rebalance_pending; /* moves of the current plan not finished */

    uint64_t handover_seq; /* ids "<holder>-<seq>" */

    ts_split_t *split; /* split and merge (split.c) */
};

/* ---- main.c ---- */
/* Creates the world's streams (or updates their limits) from stream.*. */
ts_status_t ts_orch_streams_ensure(ts_orch_t *o);

/* ---- cells.c ---- */
/* Marks the Redis connection broken (logged); main.c reconnects and the
 * local copy is read again. */
void ts_orch_registry_broken(ts_orch_t *o, ts_status_t st);
/* True for statuses that are answers, not a broken connection. */
bool ts_orch_is_answer(ts_status_t st);
/* Publishes RegistryChange for an entry at a registry version (core NATS,
 * does not wait). */
void ts_orch_announce(ts_orch_t *o, const ts_cell_entry_t *e, uint64_t version);
/* Writes the world and creates missing cells; false on a registry error. */
bool ts_orch_write_world(ts_orch_t *o);
/* Reads every cell into the local copy (version first); false on a
 * registry error. */
bool ts_orch_refresh_cells(ts_orch_t *o);
/* Index of cell in the local copy, or -1. */
long ts_orch_cell_index(const ts_orch_t *o, const ts_cell_t *cell);
/* Applies an entry this process learnt (its CAS, a conflict's current
 * entry) to the local copy, with the registry version it came with (0:
 * unknown). A version that is not the next one marks the copy stale. */
void ts_orch_note_cell(ts_orch_t *o, const ts_cell_entry_t *e, uint64_t version);
/* Cells the local copy gives to worker id. */
size_t ts_orch_owned(ts_orch_t *o, const char *id);
/* Compare-and-set of a cell's owner with everything around it: the leader
 * check, a re-read when the connection broke mid-call (the CAS is not
 * re-sent), the local copy and the broadcast. TS_OK: *out is the new entry;
 * TS_ERR_CONFLICT: someone else changed the cell (*out current);
 * TS_ERR_UNAVAILABLE: not the leader or Redis unreachable (nothing
 * changed as far as we know). */
ts_status_t ts_orch_cas(ts_orch_t *o, const ts_cell_t *cell, uint64_t epoch, const char *owner,
                        ts_cell_entry_t *out);
/* Many compare-and-sets in one round trip (recovery), each applied to the
 * local copy and announced on success. TS_OK: ops[i].result says what
 * happened to each; TS_ERR_UNAVAILABLE: not the leader or Redis failed (the
 * copy is read again before anything else is decided). */
ts_status_t ts_orch_cas_many(ts_orch_t *o, ts_registry_cas_t *ops, size_t n);
void ts_orch_cells_free(ts_orch_t *o);

/* ---- handover.c ---- */
/* 1-63 letters, digits, '-' or '_' (safe in subjects and Redis keys). */
/* Subscribes the reply inbox; at most orch.max_handovers in flight. */
ts_status_t ts_handovers_create(ts_handovers_t **out, ts_orch_t *o);
void ts_handovers_destroy(ts_handovers_t *hs);
/* Asks for a handover of cell to worker `to`. It is queued (bounded) and
 * started when fewer than orch.max_handovers are in flight; its outcome goes
 * to reply_subject (NULL: none) as the ctl reply text:
 * "ok <from>-><to> epoch <E>-><E+1> freeze_us=<n> total_us=<n>" or
 * "error: <reason>". TS_OK when queued; otherwise it was refused at once
 * (and the reply, if any, already sent). */
ts_status_t ts_orch_handover(ts_orch_t *o, const ts_cell_t *cell, const char *to, ts_ho_reason_t why,
                             const char *reply_subject);
/* Drives the handovers: answers that arrived, timeouts, queued requests.
 * Main loop; true if it did anything. */
bool ts_handovers_poll(ts_handovers_t *hs);
/* When the next handover timer fires (monotonic us), or UINT64_MAX. */
uint64_t ts_handovers_next_deadline(ts_handovers_t *hs);
/* Handovers in flight. */
size_t ts_hos_count_of(ts_handovers_t *hs);
/* Handovers in flight plus queued. */
size_t ts_handovers_busy(ts_handovers_t *hs);
/* Queued or in flight for this reason. */
size_t ts_handovers_busy_for(ts_handovers_t *hs, ts_ho_reason_t why);
/* Whether the cell is queued or in flight. */
bool ts_handovers_has_cell(ts_handovers_t *hs, const ts_cell_t *cell);
/* Fails every queued request and forgets the machines in flight (the lead
 * was lost: the workers resume or converge from the registry). */
void ts_handovers_reset(ts_handovers_t *hs, const char *why);

/* ---- ctl.c ---- */
ts_status_t ts_ctl_create(ts_ctl_t **out, ts_orch_t *o);
void ts_ctl_destroy(ts_ctl_t *c);
/* Subscribes to tessera.ctl.<world>.* (leader) / unsubscribes and answers
 * what is queued with "error: not leader" (standby). */
ts_status_t ts_ctl_serve(ts_ctl_t *c, bool on);
/* Serves queued requests and one drain move; main loop, leader only.
 * True if it did anything (the loop then comes back without waiting). */
bool ts_ctl_poll(ts_ctl_t *c);

/* ---- draining.c ---- */
ts_status_t ts_draining_create(ts_draining_t **out);
void ts_draining_destroy(ts_draining_t *d);
bool ts_draining_has(ts_draining_t *d, const char *id);
/* Copies up to cap draining worker ids into out; returns how many are draining. */
size_t ts_draining_copy(ts_draining_t *d, char (*out)[TS_WORKER_ID_MAX], size_t cap);
/* True while some draining worker still owns cells. */
bool ts_draining_any(ts_draining_t *d);
/* Cells id owned in the latest registry copy. */
size_t ts_draining_owned(ts_draining_t *d, const char *id);
typedef enum { TS_DRAIN_ADDED, TS_DRAIN_ALREADY, TS_DRAIN_ALONE, TS_DRAIN_NOMEM } ts_drain_add_t;
/* Adds id unless no other live, non-draining worker could take its cells
 * (TS_DRAIN_ALONE); *cells: what it owns. */
ts_drain_add_t ts_draining_add(ts_draining_t *d, ts_workers_t *workers, const char *id, size_t *cells);
/* Forgets the set in memory (the lead was lost; a later term reloads it). */
void ts_draining_clear(ts_draining_t *d);
/* Per-owner cell counts of the registry copy, for the ctl callbacks. */
void ts_draining_note_cells(ts_draining_t *d, const ts_cell_entry_t *cells, size_t ncells);
/* Loads the set from Redis (after gaining the lead). */
void ts_draining_load(ts_orch_t *o);
/* Forgets a draining worker that is gone (in memory and in Redis). */
void ts_draining_gone(ts_orch_t *o, const char *id);

/* ---- wake.c ---- */
void ts_orch_wake_init(ts_orch_t *o);
void ts_orch_wake_destroy(ts_orch_t *o);
/* Wakes ts_orch_wait (any thread). */
void ts_orch_wake(ts_orch_t *o);
/* Blocks until ts_orch_wake is called, the process is asked to stop or
 * timeout_ms passes. */
void ts_orch_wait(ts_orch_t *o, int64_t timeout_ms);

/* ---- recovery.c ---- */
/* Every TS_ORCH_SWEEP_US: one pipelined liveness read; the cells of dead
 * owners and of replaced incarnations go to live workers with one batch of
 * compare-and-sets. Never waits for a handover. */
void ts_recovery_poll(ts_orch_t *o);
bool ts_recovery_was_seen(ts_orch_t *o, const char *id);

/* ---- view.c ---- */
/* A view of the cluster for the policy: every known worker (heartbeats and
 * cell owners) with eligibility checked in Redis, and the snapshot's cells
 * with their heartbeat loads. Free with ts_orch_view_free. */
typedef struct {
    ts_balance_worker_t *w;
    bool *alive; /* liveness key present in Redis at the last poll, per worker */
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

/* ---- rebalance.c ---- */
/* Also registers for the end of its handovers (o->ho_done). */
void ts_rebalance_init(ts_orch_t *o);
/* When due and the previous plan is finished: one evaluation; its moves
 * (in proportion to the imbalance) are queued as handovers, of which
 * orch.max_handovers run at once. */
void ts_rebalance_poll(ts_orch_t *o);

/* ---- split.c ---- */
ts_status_t ts_split_create(ts_split_t **out, ts_orch_t *o);
void ts_split_destroy(ts_split_t *s);
/* Splits an active cell into its four children on its owner (one registry
 * script, then one RegistryChange per changed cell, parent first); why is
 * logged. The outcome goes to reply (NULL: none) as the ctl reply text
 * "ok split <cell> owner <w> epoch <E>-><E+1> children <key>@<epoch>,..." or
 * "error: <reason>". TS_OK if the cell was split. */
ts_status_t ts_orch_split(ts_orch_t *o, const ts_cell_t *cell, const char *reply, const char *why);
/* Merges the four active children of a split cell, all on one owner, back
 * into it: "ok merge <cell> owner <w> epoch <E>-><E+1>" or "error: ...". */
ts_status_t ts_orch_merge(ts_orch_t *o, const ts_cell_t *parent, const char *reply, const char *why);
/* The automatic planner (split.auto): every quarter second, from memory,
 * splits hot cells and merges cold children (gathering them onto one owner
 * by handover first). Main loop, leader only. */
void ts_split_poll(ts_orch_t *o);
/* Drain: the forwarder cells (split, retired) of a draining worker whose
 * live cells are all gone go to other workers by compare-and-set, as crash
 * recovery would move them. True if it moved any. */
bool ts_split_drain_forwarders(ts_orch_t *o, const ts_orch_view_t *view);

#endif
