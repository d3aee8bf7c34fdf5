/* Worker internals shared by its modules:
 *
 *   inbox.c    the worker's input consumer, demultiplexed by cell, to the tick thread
 *   bindings.c the owned cells (binding table), applying input to them
 *   worker.c   the registry view, I/O results, the tick loop, lifecycle
 *   io.c       the I/O thread (registry reads, binding cells, PreCopy
 *              requests, unsubscribes) and the liveness thread
 *   output.c   what a tick publishes, and the in-flight publish table
 *   publisher.c the thread that makes the publish calls for the tick
 *   handover.c moving cells between workers
 *
 * Threads (see docs/architecture.md):
 *   - the tick thread runs the simulation and owns every zone, binding and
 *     the registry view. It never waits on the network: it publishes
 *     asynchronously, hands slow work to the I/O thread and picks up the
 *     results on a later tick;
 *   - the I/O threads do the round trips (Redis, checkpoint reads, the
 *     worker's input consumer created again, PreCopy requests);
 *   - the liveness thread refreshes the worker's liveness key in Redis on its
 *     own connection, so an overloaded tick never looks like a dead worker;
 *   - nats.c's shared delivery threads run subscription callbacks: input
 *     (one consumer per worker, demultiplexed by cell under dmx.mu, inbox.c)
 *     goes through a bounded lock-free ring, everything else (handover requests,
 *     registry changes, I/O results) through small queues under `mu`. */
#ifndef TS_WORKER_INTERNAL_H
#define TS_WORKER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "tessera/arena.h"
#include "tessera/bus.h"
#include "tessera/cellmap.h"
#include "tessera/celltree.h"
#include "tessera/config.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/ring.h"
#include "worker.h"
#include "zone.h"

#define TS_TICK_SAMPLES 256
/* Slots of the in-flight publish table (transfers, forwards, departures):
 * publish n uses slot n % TS_FLIGHT_SLOTS; a publish whose slot is still
 * pending waits for a later tick. */
#define TS_FLIGHT_SLOTS 65536
#define TS_INSTANCE_MAX 40
#define TS_IO_THREADS 4
/* Extra I/O threads started while jobs queue up (binding a dead worker's
 * cells: each bind is a few blocking round trips, so more of them at once
 * is what makes a recovery fast); each ends after TS_IO_BURST_IDLE_MS idle. */
#define TS_IO_BURST_THREADS 12
#define TS_IO_BURST_IDLE_MS 2000
/* Publishes queued for the publisher thread (state, transfers, departures,
 * checkpoints, heartbeats). */
#define TS_PUB_RING 16384
/* Gateways' liveness signal (GatewayAlive, core NATS, every second). */
#define TS_GW_ALIVE_WILDCARD "tessera.gw.*.alive"

typedef struct ts_players ts_players_t;

/* One input-stream message on its way to the tick thread. */
typedef struct {
    uint64_t gen; /* the subscription it came from */
    ts_bus_held_t msg;
} ts_inbox_msg_t;

typedef struct {
    ts_inbox_msg_t *v;
    size_t n, cap;
} ts_inbox_t;

/* A cell's registration with the worker's input demultiplexer (inbox.c);
 * owned by its binding or pending zone, freed (and unregistered) with
 * ts_worker_free_ctx. */
typedef struct ts_sub_ctx {
    ts_worker_t *w;
    ts_cell_t cell;
    uint64_t gen;
    /* the instance of the input stream it reads (ts_bus_sub_stream_id): the
     * stream its binding's last_applied_seq is a sequence of */
    int64_t stream_id;
    atomic_bool hold;  /* not bound yet: keep messages in `held` (under w->mu) */
    atomic_bool stale; /* the input stream is another instance now: register again */
    ts_inbox_t held;
    bool registered;
    /* under w->dmx.mu */
    uint64_t delivered;           /* stream seq of the last message passed on (at first: the start) */
    bool awaiting;                /* drops everything until the consumer restarts from delivered + 1 */
    struct ts_sub_ctx *next_same; /* another context of the same cell */
    /* set at registration, then the owner's: input of the cell up to gap_to
     * went by after its start before it registered (0: none); see
     * ts_worker_input_rewind */
    uint64_t gap_to;
} ts_sub_ctx_t;

/* The worker's one input consumer and the table that demultiplexes it by
 * cell (inbox.c). */
struct ts_dmx_feed;
typedef struct {
    bool inited;
    pthread_mutex_t mu;
    /* under mu */
    ts_cellmap_t by_cell;     /* cell -> its slot: contexts, last sequence seen (inbox.c) */
    ts_bus_sub_t *sub;        /* the consumer (created and closed by the I/O thread) */
    struct ts_dmx_feed *feed; /* its callback context */
    uint64_t token;           /* the current consumer's feed token */
    int64_t stream_id;        /* the input stream instance it reads (0: not known yet) */
    uint64_t covered;         /* every message up to this seq was passed on or dropped */
    uint64_t seen_from;       /* the consumer has seen every message from this seq to covered */
    uint64_t rewind_from;     /* 0, or the lowest sequence a restart must start at */
    uint64_t restarts;
    /* the input stream's clock (its store times) as seen from here: the
     * largest (store time - monotonic receipt time) of the messages of
     * this and the last window of CLOCK_WINDOW_US (inbox.c) */
    int64_t clock_off, clock_off_prev;
    bool clock_known, clock_known_prev;
    uint64_t clock_window_us; /* monotonic: the current window's start */
    uint64_t watch_covered;   /* covered at the last progress check (I/O timer thread) */
    uint64_t watch_since_us;  /* monotonic: since when it stayed there with the stream ahead */
    bool stopped;
    atomic_bool want;           /* a restart is due (the tick asks the I/O thread) */
    _Atomic uint64_t overflows; /* messages a full ring turned into a rewind */
    _Atomic uint64_t passed;    /* messages of cells not registered here */
    /* tick thread */
    bool job_queued;
    uint64_t next_try_us; /* monotonic */
    uint64_t overflows_seen;
} ts_demux_t;

typedef enum { TS_BIND_ACTIVE = 0, TS_BIND_FROZEN } ts_bind_state_t;

typedef struct {
    ts_zone_t *zone;
    ts_sub_ctx_t *ctx;
    uint64_t gen;
    ts_bind_state_t state;
    char handover_id[64]; /* while frozen */
    uint64_t frozen_us;   /* monotonic */
    ts_inbox_t held;      /* input received while frozen (after s2), in order */
    uint64_t bound_us;    /* wall clock when this worker took the cell */
    bool restarting;      /* it is being registered again (its input stream is gone) */
    bool resub_needed;    /* it is to be registered again (the input stream restarted) */
    uint64_t resub_at_us; /* monotonic: not before then (a failed try; 0: now) */
    /* bound from a checkpoint with input still to replay: replays it (the
     * input in `backlog`, each message after the ticks due before its
     * store time: ts_worker_replay) but publishes nothing until it caught
     * up with the stream (so nobody sees the cell behind what its last
     * owner showed) */
    bool catching_up;
    ts_inbox_t backlog; /* input received while catching up, [backlog_head, n) not applied yet */
    size_t backlog_head;
    bool replayed;             /* a message came with nothing pending after it */
    uint64_t catchup_seq;      /* caught up once this is applied (and replayed) */
    uint64_t catchup_until_us; /* monotonic: give up waiting (and say so) */
    size_t index;              /* in w->bindings */
    /* split.c: the registry's state of the cell; split and retired cells
     * forward (they move their entities on to the live cells) */
    bool mode_set;
    ts_cell_state_t reg_state;
    bool forwarding;
    bool fwd_scan;               /* look at the entities at the next tick */
    bool fwd_waiting_logged;     /* said once that entities wait for the registry */
    bool fwd_in_place;           /* the split or merge was decided while bound here */
    uint64_t fwd_mod;            /* zone mod_counter at the last look */
    uint64_t fwd_seen_forwarded; /* zone stats.forwarded already counted */
    int fwd_phase;               /* 0 nothing to execute, 1 moving its entities on, 2 done */
    uint64_t fwd_start_us;       /* monotonic: phase 1 began */
    uint64_t fwd_work_ns;        /* tick-boundary time spent queuing departures in phase 1 */
    size_t fwd_moved;            /* entities moved on in phase 1 */
    bool fwd_ckpt_valid;         /* the last checkpoint had nothing in flight, and was written at: */
    uint64_t fwd_ckpt_seq;       /* last_applied_seq */
    uint64_t fwd_ckpt_mod;       /* mod_counter */
    uint32_t keyframe_late;      /* ticks its keyframe waited for Transfers in flight */
    /* marks.c: its last checkpoint here and every tick since are described
     * by this worker's tick marks (cleared and listed in the next mark when
     * that stops being true) */
    bool anchored;
    bool ckpt_soon; /* a checkpoint at its next tick (it came in a handover) */
    /* catching up from a checkpoint: its last owner's ticks after it, to
     * re-run (ts_worker_replay) before the rest of the backlog */
    ts_zone_mark_t *marks;
    size_t nmarks, mark_i;
} ts_binding_t;

/* A handover request waiting for the tick thread. */
typedef struct {
    Tessera__V1__Handover *msg;
    char *reply;
} ts_ctl_req_t;

/* A cell this worker is receiving in a handover (target side). From the
 * Diff on it already consumes the cell's input after s2, holding it, so the
 * COMMIT only has to flip ownership. */
typedef struct {
    char id[64];
    ts_zone_t *zone;
    bool diffed;        /* the Diff arrived: the zone is exact as of its last_applied_seq */
    bool committed;     /* COMMIT arrived: the tick thread binds it */
    uint32_t parts_got; /* parts of the PreCopy (then of the Diff) loaded */
    uint64_t new_epoch;
    ts_sub_ctx_t *ctx; /* registered once the PreCopy is in */
    uint64_t created_us;
} ts_pending_t;

typedef struct {
    ts_zone_stats_t zones; /* summed over zones, including unbound ones */
    uint64_t transfers_out_remote;
    uint64_t handovers_out, handovers_in;
    uint64_t recovered;         /* cells bound from a checkpoint + replay */
    uint64_t recovered_marked;  /* of those, replayed by their last owner's tick marks */
    uint64_t inbox_overflows;   /* input messages the full ring turned into a consumer rewind */
    uint64_t publishes_failed;  /* JetStream publishes given up (retried later) */
    uint64_t publishes_delayed; /* publishes put off: too many in flight */
    uint64_t state_dropped;     /* state/heartbeat messages dropped: publish queue full */
    /* split.c */
    uint64_t splits;           /* split cells whose entities all moved into the children */
    uint64_t merges;           /* split cells made active again here (a merge) */
    uint64_t merged_cells;     /* retired cells whose entities all moved into the parent */
    uint64_t fwd_entities;     /* entities a split or retired cell moved on after that */
    uint64_t fwd_inputs;       /* inputs a split or retired cell forwarded */
    uint64_t requests_ignored; /* game requests for unknown entities, of zones unbound since */
    uint64_t requests_refused; /* game requests refused: sent at an epoch the registry moved past */
} ts_worker_stats_t;

/* Outcome of an asynchronous JetStream publish, filled by the ack callback. */
enum { TS_FLIGHT_FREE = 0, TS_FLIGHT_PENDING, TS_FLIGHT_OK, TS_FLIGHT_FAILED };
typedef struct {
    _Atomic uint64_t seq; /* Ts-Seq of the publish using the slot */
    _Atomic int state;
} ts_flight_t;

/* Work for the I/O thread, and its result for the tick thread. */
typedef enum {
    TS_IO_RESYNC = 1,  /* read every cell of the world */
    TS_IO_BIND,        /* zone from the checkpoint, registered for the input after it */
    TS_IO_RESUBSCRIBE, /* registered again after after_seq of stream_id, or from the new stream's start */
    TS_IO_REWIND,      /* the worker's input consumer created again (inbox.c) */
    TS_IO_REQUEST,     /* a request whose reply goes to reply_to (PreCopy) */
    TS_IO_DRAIN,
    TS_IO_STREAM_LOST, /* the input stream was created again (a lost store): stream_id is the new one */
} ts_io_kind_t;

typedef struct ts_io_job {
    ts_io_kind_t kind;
    ts_cell_t cell;
    uint64_t epoch;
    uint64_t after_seq;
    int64_t stream_id; /* the input stream instance after_seq refers to (0: whichever is there) */
    uint64_t old_gen;
    /* results / arguments */
    ts_status_t status;
    bool found;            /* TS_IO_BIND: the cell had a checkpoint */
    ts_zone_mark_t *marks; /* TS_IO_BIND: its last owner's ticks after the checkpoint */
    size_t nmarks;
    bool by_marks;          /* TS_IO_BIND: replayed by them (else by store times) */
    bool stream_restarted;  /* TS_IO_RESUBSCRIBE: stream_id is gone; the consumer reads the new one from 1 */
    uint64_t pending;       /* TS_IO_BIND: input still to replay, its end not known */
    uint64_t caught_up_seq; /* TS_IO_BIND: the cell's last input (maybe not received yet) */
    ts_zone_t *zone;
    ts_sub_ctx_t *ctx;
    ts_cell_entry_t *cells;
    size_t ncells;
    uint64_t version;
    Tessera__V1__Handover *req; /* TS_IO_REQUEST: answered to req_reply */
    char *req_reply;
    uint8_t *buf;
    size_t len;
    char subject[128];
    struct ts_io_job *next;
} ts_io_job_t;

/* Tick marks (marks.c). */
struct ts_marks_cache;
#define TS_MARKS_CACHED 4
typedef struct {
    /* tick thread */
    uint64_t prev_tick;      /* the tick of the last mark (0: none yet) */
    uint64_t through;        /* the highest input-stream sequence taken from the consumer */
    uint64_t marked_through; /* `through` of the last mark */
    int64_t stream;          /* the input stream instance `through` is a sequence of */
    uint64_t overflows_seen; /* dmx.overflows at the last mark */
    bool broken;             /* a release was lost: the next mark breaks the chain */
    ts_cell_t *released;     /* for the next mark */
    size_t nreleased, cap_released;
    _Atomic uint64_t failed; /* marks not queued or not stored */
    /* I/O threads */
    pthread_mutex_t cache_mu;
    struct ts_marks_cache *cache[TS_MARKS_CACHED]; /* the instances read last */
} ts_marks_t;

/* The worker's copy of the registry, kept current from RegistryChange. */
typedef struct {
    ts_cellmap_t by_cell; /* cell -> ts_cell_entry_t* (owned) */
    uint64_t version;
    bool valid;             /* a full read has been applied */
    bool resync_pending;    /* one full read asked of the I/O thread */
    uint64_t last_sync_us;  /* monotonic time of the last full read applied */
    uint64_t last_check_us; /* monotonic time of the last version check */
} ts_regview_t;

struct ts_worker {
    const ts_config_t *cfg;
    char id[TS_WORKER_ID_MAX];
    char instance[TS_INSTANCE_MAX]; /* this process's token */
    ts_bus_t *bus;
    ts_registry_t *reg;      /* I/O thread only */
    ts_registry_t *live_reg; /* liveness thread only */
    ts_bus_sub_t *reg_sub;
    ts_bus_sub_t *ho_sub;
    ts_world_t world;
    uint64_t boot_nonce; /* makes message ids unique across restarts */
    size_t max_payload;  /* the server's max_payload at connect (0: unknown): every zone's msg_max */

    ts_binding_t **bindings;
    size_t nbind, cap_bind;
    ts_map_t by_gen;      /* subscription gen -> ts_binding_t* */
    ts_cellmap_t by_cell; /* cell -> ts_binding_t* */
    ts_cellmap_t binding; /* cell -> (void *)1 while a bind is in progress */
    _Atomic uint64_t next_gen;
    ts_regview_t view;
    _Atomic uint64_t applied_version; /* view.version, for the I/O thread */
    /* the same registry as a cell tree (tick thread): position -> deepest
     * live cell, neighbours at any depth; fed wherever the view changes */
    ts_celltree_t *tree;
    struct ts_ghosts *ghosts;  /* ghost.c */
    uint64_t bindings_changed; /* bumped when a cell is bound, unbound or takes a new epoch in place */

    ts_ring_t *ring; /* input messages for bound cells */
    ts_demux_t dmx;  /* the input consumer, by cell (inbox.c) */

    pthread_mutex_t mu;
    pthread_cond_t cond; /* signalled when something arrives for the tick thread */
    ts_ctl_req_t *ctl;
    size_t nctl, cap_ctl;
    ts_pending_t *pending;
    size_t npending, cap_pending;
    Tessera__V1__RegistryChange **changes; /* registry changes to apply */
    size_t nchanges, cap_changes;
    bool changes_overflow;
    Tessera__V1__RegistryChange **deferred; /* tick thread: kept while a full read is pending */
    size_t ndeferred, cap_deferred;
    ts_io_job_t *done_head, *done_tail; /* I/O results */
    atomic_bool wake;                   /* something above is waiting */

    /* I/O threads (several, so that binding many cells after a crash runs
     * that many round trips at once); the first one also checks the
     * registry version. w->reg is shared under reg_mu. */
    pthread_t io_threads[TS_IO_THREADS];
    struct ts_io_arg {
        ts_worker_t *w;
        bool timer;
        bool burst; /* ends when idle */
    } io_args[TS_IO_THREADS], io_burst_arg;
    size_t io_nthreads;
    bool io_started;
    pthread_mutex_t reg_mu;
    pthread_mutex_t io_mu;
    pthread_cond_t io_cond;
    ts_io_job_t *io_head, *io_tail;
    size_t io_queued;             /* jobs in io_head */
    size_t io_idle;               /* threads waiting for a job */
    size_t io_burst;              /* burst threads running (detached) */
    pthread_cond_t io_burst_done; /* io_burst went to 0 (stop) */
    bool io_stop;

    /* liveness thread */
    pthread_t live_thread;
    bool live_started;
    atomic_bool live_stop;
    atomic_bool fenced; /* another process holds our worker id now */
    pthread_mutex_t live_mu;
    pthread_cond_t live_cond;

    ts_flight_t flights[TS_FLIGHT_SLOTS];

    /* publisher thread (publisher.c) */
    ts_ring_t *pub_ring;
    pthread_t pub_thread;
    bool pub_started;
    pthread_mutex_t pub_mu;
    pthread_cond_t pub_cond;
    bool pub_kicked, pub_stop;
    _Atomic uint64_t pub_errors; /* publishes the bus refused */
    ts_arena_t in_arena;         /* input batches unpack into it (tick thread) */
    ts_bus_held_t *reap;         /* applied this tick, freed by the publisher */
    size_t nreap, cap_reap;

    uint64_t tick;
    uint64_t period_ns; /* of a tick (ts_worker_run) */
    double dt;          /* seconds a step simulates: period_ns / 1e9 */
    uint64_t seq;
    uint64_t last_hb_us;
    uint64_t stalled_us; /* a stall was seen: act again after the next full read */
    double tick_ms[TS_TICK_SAMPLES];
    size_t tick_samples;
    double tick_max_ms; /* since the last heartbeat */
    uint64_t ticks_missed;
    uint64_t overruns;
    ts_worker_stats_t stats;
    bool draining;
    int drain_state;       /* 0 none, 1 asked, 2 accepted, 3 refused */
    ts_players_t *players; /* players.c */
    ts_marks_t marks;      /* marks.c */
};

/* The modules form layers; each calls only those above it:
 *   inbox.c, publisher.c -> io.c -> bindings.c -> output.c, handover.c -> worker.c */

/* inbox.c */
bool ts_inbox_push(ts_inbox_t *in, const ts_inbox_msg_t *m);
void ts_inbox_free(ts_inbox_t *in);
/* Registers a context for cell's input after after_seq of whichever input
 * stream instance the worker's consumer reads (no round trip: any thread
 * not holding w->mu). With hold its messages are kept in ctx->held until
 * the owner takes them. ctx->gap_to != 0 if messages of the cell after
 * after_seq (up to gap_to) went by already, or may have: the owner rewinds
 * (ts_worker_input_rewind) unless it knows it needs none of them. TS_ERR_UNAVAILABLE while the stream's
 * instance is not known. */
ts_status_t ts_worker_subscribe_input(ts_worker_t *w, const ts_cell_t *cell, uint64_t after_seq, bool hold,
                                      ts_sub_ctx_t **ctx);
/* The same after after_seq of the stream instance stream_id (0: whichever is
 * there); TS_ERR_STALE if the stream is another instance now. */
ts_status_t ts_worker_subscribe_input_at(ts_worker_t *w, const ts_cell_t *cell, int64_t stream_id,
                                         uint64_t after_seq, bool hold, ts_sub_ctx_t **ctx);
/* ctx (still holding: not adopted yet) is to get its cell's messages after
 * after_seq again: what it held is dropped, and if the consumer is past
 * after_seq the context waits for it to restart from after_seq + 1 (the
 * tick thread asks the I/O thread). Any thread not holding w->mu. */
void ts_worker_input_rewind(ts_worker_t *w, ts_sub_ctx_t *ctx, uint64_t after_seq);
/* Unregisters and frees ctx (NULL: no-op); no callback touches it after.
 * Any thread not holding w->mu. */
void ts_worker_free_ctx(ts_sub_ctx_t *ctx);
ts_status_t ts_demux_init(ts_worker_t *w);
/* Creates the worker's input consumer again from the lowest start asked
 * for (or from where it was; the first time from the stream's end).
 * Blocking: an I/O thread (or the worker's start). */
ts_status_t ts_demux_restart(ts_worker_t *w);
/* Whether a restart is due (asked for, or the consumer stopped). */
bool ts_demux_wanted(ts_worker_t *w);
/* Once a second (the I/O timer thread, with the stream's state): a consumer
 * that has not moved for a few checks while the stream has more is created
 * again from where it is. */
void ts_demux_check_progress(ts_worker_t *w, int64_t stream_id, uint64_t stream_last_seq);
/* Asks for a restart from where the consumer is (e.g. a new stream instance). */
void ts_demux_want_restart(ts_worker_t *w);
int64_t ts_demux_stream_id(ts_worker_t *w);
/* Closes the consumer (no callback runs after); ts_demux_free frees the rest. */
void ts_demux_stop(ts_worker_t *w);
void ts_demux_free(ts_worker_t *w);
/* Wakes the tick thread between ticks (something is waiting for it). */
void ts_worker_wake(ts_worker_t *w);
/* The input stream's clock now (ns since the Unix epoch, as JetStream
 * stamps the messages it stores), estimated from the messages received:
 * their store time plus the time since they arrived, the least delayed of
 * the last few seconds; never ahead of the server's clock by more than
 * clock drift. 0 while no message has been seen. Any thread. */
uint64_t ts_demux_server_now_ns(ts_worker_t *w);

/* publisher.c: the thread that makes the tick's publish calls */
ts_status_t ts_publisher_start(ts_worker_t *w);
/* Publishes what is queued, then stops the thread. */
void ts_publisher_stop(ts_worker_t *w);
/* Queues one publish (takes buf over, also when it fails). js: a JetStream
 * async publish; tracked: its outcome goes to the flight slot of hdr->seq;
 * hdr NULL: a plain message without headers.
 * False if the queue is full (nothing queued). */
bool ts_publisher_push(ts_worker_t *w, const char *subject, const ts_bus_hdr_t *hdr, uint8_t *buf, size_t len,
                       bool js, bool tracked);
/* Wakes the publisher thread (once per tick). */
void ts_publisher_kick(ts_worker_t *w);
/* Hands n applied bus messages (a malloc'd array, taken over) to the
 * publisher thread to free: nats.c frees a message through its garbage
 * collector thread, a lock and often a wake-up per message, which the tick
 * thread should not pay. False if the queue is full (the caller frees). */
bool ts_publisher_reap(ts_worker_t *w, ts_bus_held_t *msgs, size_t n);

/* io.c */
ts_status_t ts_io_start(ts_worker_t *w);
void ts_io_stop(ts_worker_t *w);
/* Queues a job for the I/O thread (takes ownership of job). */
void ts_io_submit(ts_worker_t *w, ts_io_job_t *job);
ts_io_job_t *ts_io_job_new(ts_io_kind_t kind);
void ts_io_job_free(ts_io_job_t *job);
/* Takes the finished jobs (oldest first) for the tick thread. */
ts_io_job_t *ts_io_take_done(ts_worker_t *w);
/* Creates the world's streams if missing (worker start, and again when the
 * I/O thread finds them gone). Blocking. */
ts_status_t ts_io_ensure_streams(ts_worker_t *w);
/* Tick thread: a TS_IO_STREAM_LOST job: every cell whose consumer reads
 * another instance than the new stream gets a new consumer (from its
 * position if that stream is still there, else from the new one's start). */
void ts_io_stream_done(ts_worker_t *w, ts_io_job_t *job);
/* Asks the I/O thread for one full registry read (once; no-op if pending). */
void ts_worker_request_resync(ts_worker_t *w);
/* Claims the worker id (refuses to start when another live process has it)
 * and starts the liveness thread. */
ts_status_t ts_live_start(ts_worker_t *w);
void ts_live_stop(ts_worker_t *w);

/* bindings.c */
ts_binding_t *ts_worker_find_binding(ts_worker_t *w, const ts_cell_t *c);
const ts_cell_entry_t *ts_worker_find_entry(const ts_worker_t *w, const ts_cell_t *c);
/* worker.c: the epoch below which a game request sent from cell `from` and
 * stored at stored_ns (0: not known) is refused (RequestInput.from_epoch):
 * the registry's epoch of the cell when the request was stored more than a
 * grace period after the view learned it, else 0 (none). */
uint64_t ts_worker_request_fence(ts_worker_t *w, const ts_cell_t *from, uint64_t stored_ns);
/* Binds a zone whose input context is registered with hold set (a handover
 * target or an I/O-thread bind): takes ownership of zone and ctx and
 * applies what ctx held (or rewinds ctx if it has a gap the zone needs). */
/* catchup_seq / pending (a bind from a checkpoint): the cell replays (see
 * ts_worker_replay) and publishes nothing until it has applied stream
 * sequence catchup_seq and, if the server had more pending, a message sent
 * with nothing pending after it. recovered: zone was loaded from a
 * checkpoint; if it has a clock, the ticks from there to now are replayed
 * even when no input follows it. */
ts_status_t ts_worker_adopt(ts_worker_t *w, ts_zone_t *zone, uint64_t epoch, ts_sub_ctx_t *ctx,
                            uint64_t catchup_seq, bool pending, bool recovered);
/* ts_worker_adopt of a zone loaded from a checkpoint whose last owner's
 * ticks after it are marks[0, nmarks) (taken over; NULL: replayed by
 * store times). */
ts_status_t ts_worker_adopt_marked(ts_worker_t *w, ts_zone_t *zone, uint64_t epoch, ts_sub_ctx_t *ctx,
                                   uint64_t catchup_seq, bool pending, bool recovered, ts_zone_mark_t *marks,
                                   size_t nmarks);
/* A new zone of cell at epoch whose messages fit the server's max_payload
 * (ts_zone_create + ts_zone_set_max_payload). Any thread. */
ts_status_t ts_worker_zone_create(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch, ts_zone_t **out);
void ts_worker_unbind(ts_worker_t *w, ts_binding_t *b);
/* Unregisters an input context and frees it (ts_worker_free_ctx). */
void ts_worker_release_sub(ts_worker_t *w, ts_sub_ctx_t *ctx);
/* A new registration of b's cell (job->ctx) replaces the old one (which
 * the caller already took out of w->by_gen): what the new one held while
 * it started is applied, or kept while b is frozen. */
void ts_worker_take_consumer(ts_worker_t *w, ts_binding_t *b, ts_io_job_t *job);
/* Applies queued input messages to z in order (and frees them). */
void ts_worker_apply_msgs(ts_worker_t *w, ts_zone_t *z, ts_inbox_t *msgs);
/* Applies what the ring holds to the bound zones. */
void ts_worker_apply_inbox(ts_worker_t *w);
/* Applies msgs to b in order (kept in its backlog while it catches up)
 * and frees the list. */
void ts_worker_apply_held(ts_worker_t *w, ts_binding_t *b, ts_inbox_t *msgs);
/* Tick thread, at each tick of a catching-up binding, with the stream's
 * clock now: applies its backlog in order, before each message the ticks
 * due before its store time (ts_zone_replay_until), then, once it caught
 * up with the stream, the ticks up to now_ns, while *budget lasts (the
 * tick's, shared by its cells, in entity steps: ts_zone_replay_until; the
 * rest at the next tick). True when it is live. */
bool ts_worker_replay(ts_worker_t *w, ts_binding_t *b, uint64_t now_ns, uint32_t *budget);
/* Applies b's whole backlog now (with its ticks), e.g. before a freeze. */
void ts_worker_replay_flush(ts_worker_t *w, ts_binding_t *b);

/* output.c */
void ts_worker_publish_departures(ts_worker_t *w, ts_zone_t *z);
void ts_worker_publish_outboxes(ts_worker_t *w, ts_zone_t *z);
/* Takes in the outcomes of this zone's publishes that finished. */
void ts_worker_collect_publishes(ts_worker_t *w, ts_zone_t *z);
void ts_worker_publish_state(ts_worker_t *w, ts_zone_t *z, bool full);
void ts_worker_publish_checkpoint(ts_worker_t *w, ts_zone_t *z);
void ts_worker_heartbeat(ts_worker_t *w);
void ts_worker_on_publish_outcome(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok,
                                  uint64_t stream_seq);

/* handover.c */
ts_status_t ts_handover_subscribe(ts_worker_t *w);
/* Runs queued control requests and handover timeouts (tick thread). */
void ts_handover_poll(ts_worker_t *w);
/* Binds the pending zone for cell if its Diff arrived (the registry gave us
 * the cell before the COMMIT did). Returns false if there is none. */
bool ts_handover_bind_pending(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch);
void ts_handover_free_all(ts_worker_t *w);

/* marks.c: tick marks */
void ts_marks_init(ts_worker_t *w);
void ts_marks_free(ts_worker_t *w);
/* Tick thread, at each acting tick before anything it publishes: the mark
 * of this tick (cells not ticking are released first). now_ns: the tick's
 * time in the input stream's clock. */
void ts_marks_tick(ts_worker_t *w, uint64_t now_ns);
/* Tick thread: b's ticks are no longer described by the marks (the next
 * mark lists it; no-op unless it is anchored). */
void ts_marks_release(ts_worker_t *w, ts_binding_t *b);
/* Tick thread: a message at stream_seq was taken from the consumer. */
void ts_marks_took(ts_worker_t *w, uint64_t stream_seq);
/* Tick thread: b is about to apply the message at stream_seq. */
void ts_marks_applying(ts_worker_t *w, ts_binding_t *b, uint64_t stream_seq);
/* A mark's publish outcome (nats.c thread). */
void ts_marks_on_outcome(ts_worker_t *w, bool ok);
/* I/O thread: the ticks of cell after tick after_tick of instance `instance`
 * of worker `owner` (a checkpoint's owner, instance and tick), for a replay
 * of input stream instance stream_id: *out (malloc'd, *n of them; NULL and
 * 0 if it did not tick after it) and NULL, or a reason why the replay goes
 * by store times (nothing in *out). Blocking (a read of the instance's
 * marks, cached for the binds that follow). */
const char *ts_marks_for_cell(ts_worker_t *w, const char *owner, const char *instance, uint64_t after_tick,
                              int64_t stream_id, const ts_cell_t *cell, ts_zone_mark_t **out, size_t *n);
/* One stored mark, as read (TickMark). */
typedef struct {
    uint64_t tick, prev_tick, through_seq, clock_ns;
    int64_t input_stream;
    ts_cell_t *released;
    size_t nreleased;
} ts_tick_mark_t;
/* What ts_marks_for_cell decides from an instance's marks v[0, nv) in tick
 * order: the ones after tick `after`, if their prev_tick chain from `after`
 * has no hole, they are all of input stream stream_id and none lists cell;
 * else a reason (and nothing in *out). */
const char *ts_marks_select(const ts_tick_mark_t *v, size_t nv, uint64_t after, int64_t stream_id,
                            const ts_cell_t *cell, ts_zone_mark_t **out, size_t *n);

/* split.c: cells at depth (split, merge, forwarding) */
/* States in which the owner keeps a cell bound: active, split, retired. */
bool ts_split_holds(ts_cell_state_t s);
/* Sets b's mode from its registry entry e (forwarding for split and
 * retired). in_place: the state changed while b stayed bound here. */
void ts_split_set_mode(ts_worker_t *w, ts_binding_t *b, const ts_cell_entry_t *e, bool in_place);
/* The registry moved b's cell from or to split/retired at exactly epoch + 1,
 * still ours: takes the new epoch and mode in place (the zone is exact).
 * False if that is not the case (the caller rebinds as usual). */
bool ts_split_take_epoch(ts_worker_t *w, ts_binding_t *b, const ts_cell_entry_t *e);
/* One tick of a bound cell: a live cell steps (its border crossings go to
 * the deepest live cell at the entity's position); a forwarding cell moves
 * its entities on to the live cells at their positions. */
void ts_split_step(ts_worker_t *w, ts_binding_t *b, double dt);
/* Whether b's periodic checkpoint is worth writing: always for a live cell;
 * for a forwarding cell only if something arrived since its last one. */
bool ts_split_checkpoint_due(ts_binding_t *b);

/* ghost.c: border entities to and from the owners of neighbour cells */
typedef struct {
    uint64_t msgs_out, bytes_out; /* GhostDelta messages published */
    uint64_t msgs_in, bytes_in;   /* received (any followed cell, mine too) */
    uint64_t dropped_in;          /* undecodable, or the queue to the tick was full */
    uint64_t stale;               /* ignored: epoch older than the registry's, or cell not live */
    uint64_t ghosts_expired;      /* dropped: silent source, no longer a neighbour, stale epoch */
    uint64_t held;                /* ghosts in my cells now */
    uint64_t sources;             /* neighbour cells followed */
} ts_ghost_stats_t;
ts_status_t ts_ghost_start(ts_worker_t *w);
/* Tick thread, before the cells step: follows the registry's neighbours
 * (subscriptions), applies the ghost messages that came, expires silent
 * sources. */
void ts_ghost_tick(ts_worker_t *w);
/* Tick thread, after z stepped: publishes its border band on <cell>.ghost. */
void ts_ghost_publish(ts_worker_t *w, ts_zone_t *z);
void ts_ghost_stats(const ts_worker_t *w, ts_ghost_stats_t *out);
/* Unsubscribes and frees (NULL ghosts: no-op). */
void ts_ghost_stop(ts_worker_t *w);

/* players.c: disconnected players' entities and gateway liveness */
ts_status_t ts_players_start(ts_worker_t *w);
/* Tick thread, every tick (acts a few times a second). */
void ts_players_tick(ts_worker_t *w);
void ts_players_stop(ts_worker_t *w);
/* Tick thread, before ib (published on subject) is applied to z: drops, in
 * place, what its publisher may not do (players.c, "who may act"). O(1) per
 * input. */
void ts_players_screen(ts_worker_t *w, ts_zone_t *z, const char *subject, Tessera__V1__InputBatch *ib);

#endif
