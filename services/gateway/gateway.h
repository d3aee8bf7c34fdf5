/* Internal types of tessera-gateway, shared by its modules:
 *
 *   gateway.c  loop handles, bus inbox, registry reloads, shutdown
 *   conn.c     TCP listener, per-connection reads and the write queue
 *   session.c  the client protocol, one state machine per connection
 *   cells.c    the table of known cells (registry view, epochs, cell tree)
 *   router.c   per-cell input batching
 *   aoi.c      areas of interest: ref-counted state subscriptions by radius
 *   view.c     per-cell entity caches, fencing, spliced and filtered frames
 *   fanout.c   encoded blocks, frame heads, keyframe parts (no gw_t)
 *   counters.c world counters: heartbeats summed, WorldCounters to clients
 *   writers.c  a fan-out's writev calls on helper threads (no gw_t)
 *
 * Everything here is touched by the loop thread only, except gw_t's inbox
 * and ack rings and the atomics beside them, which nats.c threads feed, and
 * a fan-out's staged writes, which the writer threads perform while the
 * loop waits for them (writers.h). */
#ifndef TS_GATEWAY_H
#define TS_GATEWAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tessera/bus.h"
#include "tessera/cell.h"
#include "tessera/celltree.h"
#include "tessera/config.h"
#include "tessera/frame.h"
#include "tessera/game.h"
#include "tessera/map.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/resume.h"
#include "tessera/ring.h"
#include "tessera/subject.h"

#include "fanout.h"
#include "flood.h"
#include "writers.h"

#define GW_NAME_MAX 64
/* gateway.max_backlog (default 128 KiB) is the one threshold of a slow
 * reader: above it a client's Deltas (and Events) are withheld and its
 * slow-reader deadline (gateway.slow_close_s) runs; once its output drained
 * to half of it, it gets a fresh full view. Small by default, so a client
 * that reads slower than its view changes gets fewer, fresher frames instead
 * of seconds of queued ones, and one that stopped reading is closed. */
static inline bool gw_conn_backlogged(size_t out_pending, int64_t max_backlog)
{
    return out_pending > (size_t)max_backlog;
}
/* Kernel send buffer of a client socket (fixed, so back-pressure shows in
 * out_pending instead of in megabytes the kernel would queue). */
#define GW_SOCKET_SNDBUF 262144
/* A client that lets this much pile up (non-Delta frames) is disconnected. */
#define GW_MAX_CLIENT_BYTES ((size_t)8 << 20)
/* Payload bytes per Delta/Snapshot frame before the view is split over
 * several frames (clients accept 4 MB). */
#define GW_FRAME_MAX_BYTES ((size_t)256 << 10)
/* Clients in a fan-out from which their writes go to the writer threads
 * (below, the loop writes each as it is built). */
#define GW_WRITERS_MIN_FANOUT 256
/* Inputs per InputBatch bus message. */
#define GW_BATCH_MAX_INPUTS 1024
/* Inputs waiting for one cell before new ones are refused (and reported). */
#define GW_CELL_MAX_PENDING 100000
/* Queued inputs are reported as not stored once their cell has made no
 * progress (no batch of it published or answered) for this long. It is above
 * the bus's retry window for an unanswered publish (15 s: a NATS cluster's
 * leader election takes 4-7.5 s), so an election reports nothing that the
 * stream then stores; a store that stays away still gets every input
 * reported. */
#define GW_INPUT_MAX_WAIT_US 20000000ull
/* Input batches awaiting their JetStream acknowledgement, all cells. */
#define GW_INFLIGHT_MAX 8192
/* A publish the bus had no room for is tried again after this. */
#define GW_BUSY_RETRY_MS 50
/* Bus messages waiting for the loop before new ones are dropped. */
#define GW_INBOX_MAX 65536
/* Fan-out flushes are at least this far apart; state that arrives sooner is
 * coalesced into the next one. */
#define GW_FLUSH_MIN_US 2000
/* How long a connection closed with a fatal error keeps draining input. */
#define GW_LINGER_US 2000000

/* Flood rule (flood.h): more than GW_FLOOD_FACTOR x gateway.rate_limit
 * frames/s over its 2 s window is fatal. */
#define GW_FLOOD_FACTOR 10

/* How often the lifecycle deadlines (hello, idle, slow reader, resume
 * check) are looked at. */
#define GW_LIFE_CHECK_MS 100
/* tessera.gw.<id>.alive (GatewayAlive), core NATS, this often. */
#define GW_ALIVE_MS 1000
/* Longest JWT or resume token taken from a Hello. */
#define GW_TOKEN_MAX 4096
#define GW_PLAYER_MAX 128
/* A client's first Snapshot waits for its own entity and a keyframe of
 * every cell its area of interest newly holds, at most this long. */
#define GW_SNAPSHOT_WAIT_US 1500000ull
/* Game events one cell may hold between two flushes (a StateDelta carries
 * at most TS_GAME_EVENTS_PER_TICK); more are dropped and counted. */
#define GW_CELL_EVENTS_MAX (4 * TS_GAME_EVENTS_PER_TICK)
/* Targeted game events one client may get per flush; more are dropped. */
#define GW_CONN_EVENTS_MAX 256

typedef struct gw gw_t;
typedef struct gw_cell gw_cell_t;
typedef struct gw_conn gw_conn_t;

/* Deadline lists, one per timeout kind: every entry of a list has the same
 * timeout, so appending keeps it in deadline order and a check pops the
 * expired heads only (no pass over every connection). */
typedef enum { GW_TL_HELLO = 0, GW_TL_IDLE, GW_TL_SLOW, GW_TL_COUNT } gw_tl_kind_t;
typedef struct {
    gw_conn_t *prev, *next;
    uint64_t deadline_us; /* monotonic */
    bool on;
} gw_tl_link_t;
typedef struct {
    gw_conn_t *head, *tail;
} gw_tl_t;

/* One client input waiting to be batched to its cell. */
typedef struct {
    uint64_t entity;
    uint64_t seq;
    uint64_t sent_us;
    Tessera__V1__Input__KindCase kind;
    double a, b; /* join: x, y; move: dx, dy */
    char name[GW_NAME_MAX + 1];
    uint64_t session; /* join, detach, attach: the connection's session */
    uint64_t time_us; /* detach: when the connection closed */
    uint32_t type;    /* command: Command.type */
    uint32_t payload_len;
    /* join, command: at most TS_GAME_PAYLOAD_MAX bytes; attach: the
     * player's resume token (text). Borrowed when given to
     * gw_router_queue, which keeps its own copy while the input waits. */
    uint8_t *payload;
} gw_input_t;

/* Which client inputs one in-flight InputBatch carries. */
typedef struct {
    uint64_t entity;
    uint64_t first_seq, last_seq;
} gw_flrec_t;

/* One InputBatch awaiting its acknowledgement: which clients' inputs it
 * carries, so they can be told if JetStream finally refuses it. */
typedef struct {
    gw_cell_t *cell; /* NULL: slot free */
    uint64_t seq;
    size_t count;
    uint64_t published_us;
    gw_flrec_t *recs; /* kept allocated across uses of the slot */
    size_t nrecs, recs_cap;
} gw_flight_t;

/* Latest state of one entity as its cell's owner published it. */
typedef struct {
    Tessera__V1__EntityState pb; /* pb.name points at name */
    uint64_t gen;                /* keyframe generation that last saw it */
    uint64_t listed;             /* flush number it was last put on `changed` */
    char name[GW_NAME_MAX + 1];
    uint8_t state[TS_GAME_STATE_MAX]; /* pb.state.data points here */
} gw_entity_t;

/* One game event of a cell (StateDelta.events) waiting for the next flush:
 * its Event message is encoded once in the cell's ev_buf at [off, off + len)
 * and spliced after the head of each recipient's frame. */
typedef struct {
    uint64_t entity; /* targeted: the player entity it is for */
    double x, y;     /* positional: where it happened */
    bool positional;
    uint32_t off, len;
} gw_event_t;

/* A targeted event queued for one client in this flush. */
typedef struct {
    gw_cell_t *cell;
    uint32_t idx; /* in cell->evs */
} gw_evref_t;

/* A client whose AOI holds the cell; slot indexes the client's aoi array. */
typedef struct {
    gw_conn_t *conn;
    size_t slot;
} gw_subref_t;

/* A cell the gateway knows of, from the registry or from state it saw.
 * Records live until the gateway stops, so connections, queued bus messages
 * and subscription closures may point at them. */
struct gw_cell {
    gw_t *gw;
    ts_cell_t id;
    char key[TS_CELL_STR_MAX];
    char input_subject[TS_SUBJECT_MAX];
    char state_subject[TS_SUBJECT_MAX];

    bool in_registry;
    bool reg_mark;    /* seen in the registry read being applied */
    uint64_t reg_ver; /* registry version of the newest change applied */
    ts_cell_state_t reg_state;
    uint64_t reg_epoch;
    uint64_t seen_epoch;             /* highest epoch of state accepted (fencing) */
    uint64_t last_round, prev_round; /* the tick rounds of its last two states (gw_state_note) */
    uint64_t stale_dropped;

    /* state subscription, ref-counted across players' AOIs and the map */
    uint32_t aoi_refs;
    bool map_ref; /* one of the references is the world map's (aoi.c) */
    ts_bus_sub_t *sub;
    gw_subref_t *subs; /* the clients referencing the cell */
    size_t nsubs, subs_cap;
    ts_map_t entities; /* id -> gw_entity_t* */
    uint64_t gen;
    gw_kf_t kf;
    bool kf_seen; /* a whole keyframe arrived since the subscription began */
    uint64_t ver; /* bumped by every change of entities */

    /* changes since the last flush */
    uint64_t *changed, *removed;
    size_t nchanged, changed_cap, nremoved, removed_cap;
    bool dirty;
    gw_cell_t *next_dirty;
    /* encoded once per flush, shared by every client */
    gw_blk_t blk;      /* changed entities */
    gw_blk_t full;     /* every entity, built on demand */
    uint64_t full_ver; /* ver the full block was built at, +1 (0: none) */

    /* game events since the last flush (at most GW_CELL_EVENTS_MAX) */
    gw_event_t *evs;
    size_t nevs, evs_cap;
    size_t npos; /* positional ones among them */
    uint8_t *ev_buf;
    size_t ev_len, ev_cap;

    /* inputs waiting for the next flush */
    gw_input_t *inputs;
    size_t ninputs, inputs_cap;
    bool batch_queued;
    gw_cell_t *next_batch;
    /* batches awaiting their acknowledgement */
    uint32_t ninflight;
    uint64_t last_publish_us;
    /* wall clock of the cell's last progress: a batch published or its
     * outcome (the queue's wait for GW_INPUT_MAX_WAIT_US counts from it) */
    uint64_t progress_us;

    gw_cell_t *next_same_root; /* chain in gw->cell_roots */
    gw_cell_t *next_all;
    /* world counters (counters.c): the registry owner, the values of its
     * report the sum holds, that report's epoch (0: none), and since when
     * the sum waits for a report at reg_epoch (0: not waiting) */
    char reg_owner[TS_WORKER_ID_MAX];
    uint32_t ctr_slot; /* the owner's heartbeat slot + 1 (a hint; 0: none) */
    int64_t ctr[TS_GAME_COUNTERS];
    uint64_t ctr_epoch;
    uint64_t ctr_wait_us;
    /* the counter flows of the same report (what the cell moved to and
     * received from other cells; malloc'd, ctr_nflows of them) */
    struct gw_ctr_flow *ctr_flows;
    size_t ctr_nflows;
};

/* A cell's world counter flow with one peer (CellLoad.flows; counters.c). */
#define GW_CTR_FLOWS 6
typedef struct gw_ctr_flow {
    ts_cell_t peer;
    int64_t out[TS_GAME_COUNTERS]; /* moved to peer in total */
    int64_t in[TS_GAME_COUNTERS];  /* received from peer in total */
} gw_ctr_flow_t;

typedef struct {
    gw_cell_t *cell;
    bool fresh;     /* send all its entities in the next Delta */
    size_t sub_idx; /* index in cell->subs */
} gw_aoi_slot_t;

typedef enum { GW_PHASE_NEW = 0, GW_PHASE_JOINED, GW_PHASE_LEFT } gw_phase_t;

struct gw_conn {
    uv_tcp_t tcp;
    gw_t *gw;
    gw_conn_t *prev, *next;
    uint64_t id;
    char peer[64];
    ts_frame_reader_t reader;
    struct gw_ws *ws;   /* WebSocket transport (ws.c); NULL: plain TCP */
    size_t out_pending; /* bytes handed to uv_write, not yet written */

    bool closing;       /* fatal error sent or peer gone: input is ignored */
    bool handle_closed; /* uv_close called */
    uint64_t linger_until_us;

    /* protocol */
    uint64_t last_seq;
    uint64_t out_seq;
    gw_phase_t phase;
    uint64_t entity_since_us; /* wall clock: when this connection got its entity */
    uint64_t entity;
    gw_cell_t *cell;          /* the cell the player's inputs go to */
    gw_cell_t *awaiting_left; /* cell left on sight of the entity elsewhere, until its `left` arrives */
    bool own_gone;            /* its entity was despawned (a `left` without destination) */
    gw_aoi_slot_t *aoi;
    size_t naoi;
    /* area of interest by radius (aoi.c): the circle is evaluated around
     * (aoi_x, aoi_y), the own entity's position when it was last evaluated */
    double pos_x, pos_y; /* own entity, newest state seen (join position until then) */
    bool pos_known;      /* else the centre of its cell is used */
    double aoi_x, aoi_y;
    double sub_x, sub_y; /* where its cells were last looked up */
    bool resweep;        /* centre moved: the next flush re-checks every shown entity */
    bool aoi_marked;     /* on gw->aoi_head */
    gw_conn_t *next_aoi;
    bool watching; /* on the watch lists of roots [wx0, wx1] x [wy0, wy1] */
    int32_t wx0, wy0, wx1, wy1;
    ts_map_t shown; /* entity ids the client was sent and not told removed */
    uint64_t snapshot_due_us;
    gw_conn_t *snap_prev, *snap_next; /* on gw->snap_head while its Snapshot waits */
    bool snap_listed;
    uint64_t *gone; /* ids to report removed: their cells left the AOI */
    size_t ngone, gone_cap;
    uint64_t deltas_skipped;

    /* fan-out */
    bool flush_queued; /* on gw->flush_head */
    bool staged;       /* a write of this fan-out waits in gw->writers */
    bool close_staged; /* closed while staged: closed once the write is done */
    gw_conn_t *next_flush;
    gw_evref_t *evq; /* targeted events for this client in this flush */
    size_t nevq, evq_cap;
    bool need_snapshot;    /* joined: the next flush sends a Snapshot */
    bool snapshot_sent;    /* a Snapshot went: WorldCounters may follow */
    uint64_t counters_ver; /* the WorldCounters version it was sent (0: none) */
    bool behind;           /* Deltas were skipped: a full view once output drained */

    /* rate limit: token bucket plus the flood rule (session.c) */
    double tokens;
    uint64_t refill_us;
    uint64_t rate_error_us;
    gw_flood_t flood;

    /* lifecycle */
    gw_tl_link_t tl[GW_TL_COUNT];
    bool greeted;                   /* a complete Hello or a Join arrived */
    bool resuming;                  /* resumed: waiting to see the entity's state */
    uint64_t ip_key;                /* per-IP connection count key (0: none) */
    char player[GW_PLAYER_MAX + 1]; /* JWT sub, or empty */
    bool authed;                    /* a valid JWT came with the Hello */
    size_t frames_in;
};

/* A bus message handed from a nats.c thread to the loop (held, not copied). */
typedef enum { GW_MSG_STATE = 0, GW_MSG_REGISTRY, GW_MSG_LOGIN } gw_msg_kind_t;
typedef struct {
    gw_msg_kind_t kind;
    gw_cell_t *cell; /* GW_MSG_STATE: the subscription's cell */
    ts_bus_held_t msg;
} gw_msg_t;

/* An asynchronous publish's outcome, handed from nats.c to the loop. */
typedef struct {
    uint64_t seq;
    bool ok;
} gw_ack_t;

struct gw {
    uv_loop_t *loop;
    const ts_config_t *cfg;
    ts_bus_t *bus;
    ts_registry_t *reg;
    ts_world_t world;
    char name[GW_NAME_MAX];
    char boot_nonce[24];
    uint16_t entity_rand;
    uint32_t entity_counter;
    uint64_t publish_seq;
    bool stopping;
    int exit_code;

    uv_tcp_t server;
    bool server_open;
    int port;
    struct gw_ws_server *ws_server; /* gateway.ws_listen (ws.c); NULL: off */
    struct gw_counters *counters;   /* world counters (counters.c) */
    uv_signal_t sigint, sigterm;
    uv_timer_t house_timer;
    uv_check_t flush_check;
    uv_idle_t flush_idle;   /* active while a flush is due this turn */
    uv_timer_t flush_timer; /* a flush held back by GW_FLUSH_MIN_US */
    uv_timer_t retry_timer; /* inputs held back, or a busy bus (router.c) */
    uv_async_t inbox_async;

    uint64_t instance; /* this process, in GatewayAlive and players' entities */
    gw_tl_t tl[GW_TL_COUNT];
    uv_timer_t life_timer;
    uv_timer_t alive_timer;
    ts_map_t per_ip; /* ip key -> connection count */
    ts_map_t subs;   /* hash of an authenticated player id -> its joined gw_conn_t* */
    ts_resume_key_t resume_key;
    bool resume_shared;      /* gateway.resume_secret is set: login claims are signed and checked */
    uint64_t claims_refused; /* login claims with no valid signature, stale or replayed */
    void *auth_rs_key;       /* RS256 public key (PEM bytes), NUL-terminated */
    size_t auth_rs_key_len;
    struct gw_login *login; /* one entity per player across gateways (login.c) */
    uint64_t closed_idle, closed_hello, closed_slow, refused_auth, resumes;

    gw_conn_t *conns;
    size_t nconns; /* on the list, closing or not */
    size_t nopen;  /* not closing */
    uint64_t next_conn_id;
    ts_map_t players; /* entity id -> gw_conn_t* */

    ts_map_t cell_roots; /* root hash -> gw_cell_t* chain */
    ts_celltree_t *tree; /* the registry's cells, for position -> live cell */
    /* area of interest (aoi.c): entities within aoi_show of a client's
     * centre are shown, shown ones stay while within aoi_keep; the centre
     * follows the entity once it moved aoi_move. Then every entity within
     * aoi.radius of the entity is shown, none beyond radius + hysteresis. */
    double aoi_show, aoi_keep, aoi_move;
    double aoi_slack;    /* cells are looked up for radius aoi_keep + this */
    ts_map_t watch;      /* root hash -> gw_watch_t*: clients whose circle reaches the root */
    gw_conn_t *aoi_head; /* clients whose area of interest is re-evaluated before the next flush */
    bool map_hold;       /* the world map references every live cell (gw_aoi_map_hold) */
    size_t nsubscribed;  /* cells with aoi_refs > 0 (their state is subscribed) */
    size_t map_viewers;  /* /api/events streams open (ws.c) */
    uint64_t ents_ver;   /* bumped by every change of a cached entity (the map's dots) */
    gw_conn_t *snap_head;
    gw_cell_t *all_cells;
    size_t ncells;
    gw_cell_t *batch_head;
    gw_cell_t *dirty_head;
    gw_conn_t *flush_head;
    size_t nflush;     /* clients on flush_head */
    bool stage_writes; /* this fan-out's writes go to gw->writers */
    uint64_t tick;     /* flushes so far */
    uint64_t last_flush_us;
    /* tick rounds (one period of the wall clock; gw_state_note): cells
     * expected this round, those of them in, and this round's cells that
     * were in the last one too (expected next round) */
    uint64_t round_ns, round, round_first_us;
    uint32_t round_expected, round_arrived, round_steady;
    ts_map_t homes;   /* entity id -> gw_cell_t* holding its newest state */
    ts_map_t scratch; /* per-client removed de-duplication */
    uint64_t *tmp_removed;
    size_t tmp_removed_cap;
    gw_writers_t *writers; /* a fan-out's writes, spread over threads (NULL: written one by one) */
    uv_buf_t *iov;         /* one client's frames: heads, block pieces, removed */
    size_t iov_cap;
    uv_buf_t *segs; /* one client's block pieces */
    size_t segs_cap;
    uint8_t *heads; /* frame heads of one client's flush */
    size_t heads_cap;
    uint8_t *rmbuf;
    size_t rmbuf_cap;
    gw_evref_t *evsel; /* one client's events of a flush */
    size_t evsel_cap;

    /* hand-off from nats.c threads: bounded lock-free rings */
    ts_ring_t *inbox; /* gw_msg_t, GW_INBOX_MAX */
    ts_ring_t *acks;  /* gw_ack_t, TS_BUS_MAX_IN_FLIGHT */
    atomic_uint_fast64_t inbox_dropped, acks_dropped;
    atomic_bool registry_lost; /* a RegistryChange was dropped: resync */
    uint64_t inbox_dropped_total;

    ts_map_t inflight;    /* publish seq -> gw_flight_t* */
    gw_flight_t *flights; /* GW_INFLIGHT_MAX slots */
    uint32_t *free_flights;
    size_t nfree_flights;
    size_t ninflight;
    gw_flrec_t *tmp_recs; /* records of a batch refused before it left */
    size_t tmp_recs_cap;
    bool batch_busy;   /* cells wait on the bus: retry timer */
    uint8_t *pack_buf; /* one InputBatch, reused */
    size_t pack_cap;
    void *pb_inputs; /* GW_BATCH_MAX_INPUTS protobuf inputs, reused */
    Tessera__V1__Input **pb_ptrs;

    ts_bus_sub_t *registry_sub;
    uv_work_t reload_req;
    bool reload_running, reload_again, reload_force;
    uint64_t reg_version;
    ts_status_t reload_status;
    ts_cell_entry_t *reload_cells;
    size_t reload_n;
    uint64_t reload_known; /* reg_version when the read was queued */
    uint64_t reload_version;
    bool reload_job_force;
    bool reload_changed;
    uint64_t reload_warn_us;
    uint64_t reg_changes, reg_resyncs;

    /* counters */
    uint64_t inputs_queued, inputs_dropped, inputs_not_stored, inputs_published, batches_published;
    uint64_t publish_errors;
    uint64_t states_applied, states_bad;
    uint64_t frames_sent, bytes_sent, deltas_skipped;
    uint64_t threaded_writes; /* staged in gw->writers */
    uint64_t commands_queued, events_in, events_sent, events_dropped;
    uint64_t ack_us_sum, ack_n, ack_us_max; /* publish -> acknowledgement on the loop */
    atomic_uint_fast64_t acks_ok, acks_failed;
};

/* gateway.c */
ts_status_t gw_create(gw_t **out, uv_loop_t *loop, const ts_config_t *cfg, ts_bus_t *bus, ts_registry_t *reg,
                      const ts_world_t *world, const ts_cell_entry_t *cells, size_t ncells);
/* Starts accepting, timers and subscriptions. */
ts_status_t gw_start(gw_t *gw);
/* Graceful stop: Detach for joined players, bus flush, every handle closed;
 * uv_run returns once the loop is empty. Idempotent. */
void gw_stop(gw_t *gw);
void gw_destroy(gw_t *gw);
/* Queues one registry read on the thread pool (coalesced with one running):
 * force reads every cell, otherwise only if the registry version moved past
 * the newest change applied. */
void gw_request_reload(gw_t *gw, bool force);
/* Hands a bus message to the loop thread (called in a subscription
 * callback on a nats.c thread); cell is the subscription's cell for
 * GW_MSG_STATE. */
void gw_inbox_push(gw_t *gw, gw_msg_kind_t kind, gw_cell_t *cell, const ts_bus_msg_t *msg);
/* Asks for a fan-out flush at the end of this loop turn. */
void gw_flush_soon(gw_t *gw);
/* A state of a cell with clients was applied: counts it in its tick round
 * (the fan-out waits for the round's expected cells, gateway.coalesce_ms). */
void gw_state_note(gw_t *gw, gw_cell_t *cell);

/* conn.c */
ts_status_t gw_listen(gw_t *gw, const char *hostport);
void gw_listen_close(gw_t *gw);
/* Queues one ServerFrame (header + payload) for the connection. */
ts_status_t gw_conn_write(gw_conn_t *c, const uint8_t *data, size_t len);
/* Writes the pieces (borrowed: only read during the call) in order with one
 * system call when the connection has nothing queued; what the socket does
 * not take at once is copied to the connection's queue. */
ts_status_t gw_conn_writev(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t total);
/* The same, straight to the socket: bytes the transport already framed
 * (ws.c). gw_conn_write_raw: one piece. */
ts_status_t gw_conn_writev_raw(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t total);
/* What a write left: bufs from byte skip on (rest bytes) go to the write
 * queue (or the client is closed when that is over its bound). */
ts_status_t gw_conn_queue_rest(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t skip, size_t rest);
ts_status_t gw_conn_write_raw(gw_conn_t *c, const uint8_t *data, size_t len);
/* Accepts on a listener (TCP, or the WebSocket one of ws.c). */
void gw_conn_on_connection(uv_stream_t *server, int status);
/* Stops reading input, lets queued output drain, then closes. */
void gw_conn_close_after_write(gw_conn_t *c);
/* Closes now, dropping unsent output. */
void gw_conn_close(gw_conn_t *c);
/* Closes connections whose linger time is over. */
void gw_conns_sweep(gw_t *gw);
/* Puts the connection on the deadline list `kind` at now + timeout (moving
 * it to the tail if it was on it). */
void gw_tl_put(gw_t *gw, gw_conn_t *c, gw_tl_kind_t kind, uint64_t deadline_us);
void gw_tl_del(gw_t *gw, gw_conn_t *c, gw_tl_kind_t kind);
/* Closes the connections whose lifecycle deadlines passed. */
void gw_conns_expire(gw_t *gw);

/* session.c */
void gw_session_init(gw_conn_t *c);
void gw_session_on_frame(gw_conn_t *c, const uint8_t *payload, size_t len);
/* The connection goes away: Detach for a joined player (its entity stops
 * and waits gateway.resume_s for a resume), AOI released. */
void gw_session_release(gw_conn_t *c);
/* Sends a frame; fills seq, and cell/epoch from the player's cell unless set. */
ts_status_t gw_session_send(gw_conn_t *c, Tessera__V1__ServerFrame *f);
void gw_session_error(gw_conn_t *c, Tessera__V1__ErrorCode code, bool fatal, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Tells the client its inputs first_seq..last_seq will never be applied. */
void gw_session_not_stored(gw_conn_t *c, uint64_t first_seq, uint64_t last_seq, const char *why);
/* The player's entity is now owned by `to`: re-bind inputs and AOI, tell the client. */
void gw_session_move_cell(gw_conn_t *c, gw_cell_t *to);
/* The hello deadline passed: closes a connection that never greeted, or
 * refuses a resume whose entity was not seen. */
void gw_session_hello_expired(gw_conn_t *c);

/* auth.c: player JWTs and resume tokens */
/* Loads keys from the configuration (RS256 public key file, resume
 * secret or a random one). */
ts_status_t gw_auth_init(gw_t *gw);
void gw_auth_free(gw_t *gw);
/* Verifies a JWT (HS256 with gateway.auth.secret, RS256 with the public
 * key; exp, nbf, iss and aud). TS_OK: sub is written to `sub`; otherwise
 * why says what was wrong. */
ts_status_t gw_auth_check_jwt(gw_t *gw, const char *token, char *sub, size_t subcap, char *why,
                              size_t whycap);
/* A signed resume token for the entity in `cell`, valid until exp_s (unix
 * seconds). */
void gw_resume_token_make(const gw_t *gw, uint64_t entity, const ts_cell_t *cell, const char *player,
                          uint64_t exp_s, char *out, size_t cap);
/* TS_OK and the token's content if its signature is right and it has not
 * expired; TS_ERR_PARSE if it is malformed or forged, TS_ERR_TIMEOUT if it
 * expired. */
ts_status_t gw_resume_token_check(const gw_t *gw, const char *token, uint64_t *entity, ts_cell_t *cell,
                                  char *player, size_t playercap);

/* cells.c */
gw_cell_t *gw_cell_find(gw_t *gw, const ts_cell_t *id);
/* Finds or creates the record; NULL only when out of memory. */
gw_cell_t *gw_cell_get(gw_t *gw, const ts_cell_t *id);
/* Epoch to stamp messages about the cell with. */
uint64_t gw_cell_epoch(const gw_cell_t *cell);
/* True if the registry says the cell exists and takes inputs. */
bool gw_cell_live(const gw_cell_t *cell);
/* Applies a whole registry read taken at `version` (cells changed by a
 * newer RegistryChange keep what it said); true if the set of live cells
 * changed (the clients near each cell that changed are queued, as
 * gw_aoi_cell_changed does). */
bool gw_cells_apply_registry(gw_t *gw, const ts_cell_entry_t *entries, size_t n, uint64_t version);
/* Applies one RegistryChange; true if the cell became live or stopped being
 * live. *cell_out receives the cell's record (NULL if ignored). */
bool gw_cells_apply_change(gw_t *gw, const ts_cell_entry_t *e, uint64_t version, gw_cell_t **cell_out);
/* Hash key of root cell (cx, cy) of the gateway's world (never 0). */
uint64_t gw_root_key(uint32_t world, int32_t cx, int32_t cy);
void gw_cells_free_all(gw_t *gw);
void gw_cell_clear_entities(gw_t *gw, gw_cell_t *cell);

/* router.c */
/* Queues an input for the cell's next InputBatch. TS_ERR_UNAVAILABLE: the
 * cell's queue is full (the input is not taken). */
ts_status_t gw_router_queue(gw_t *gw, gw_cell_t *cell, const gw_input_t *in);
/* Takes the first n queued inputs off the cell's queue (freeing their
 * payloads). */
void gw_router_drop_inputs(gw_cell_t *cell, size_t n);
/* Publishes queued inputs, one InputBatch per cell for the inputs of every
 * client (a cell with a batch in flight holds its next one until that batch's
 * outcome; inputs waiting GW_INPUT_MAX_WAIT_US without progress are reported).
 * force (stopping): publishes everything now. */
void gw_router_flush(gw_t *gw, bool force);
/* Puts a cell with queued inputs on the next flush. */
void gw_router_wake(gw_t *gw, gw_cell_t *cell);
/* A publish's outcome (loop thread). */
void gw_router_on_ack(gw_t *gw, uint64_t seq, bool ok);
/* Forgets every batch in flight (their outcomes were lost). */
void gw_router_forget_flights(gw_t *gw);
/* Sets up / frees the in-flight table. */
ts_status_t gw_router_init(gw_t *gw);
void gw_router_free(gw_t *gw);
/* Logs "<what> <cell>: <status>" at most once per 5 s per *last_us. */
void gw_warn_limited(uint64_t *last_us, const char *what, const char *cell, ts_status_t st);

/* aoi.c */
/* Derives the radius, hysteresis and thresholds from the configuration. */
ts_status_t gw_aoi_init(gw_t *gw);
void gw_aoi_free(gw_t *gw);
/* Recomputes the connection's AOI around its entity's position now: its
 * own cell plus every live cell the circle touches (empty unless joined). */
void gw_aoi_update(gw_t *gw, gw_conn_t *c);
/* Queues the connection for gw_aoi_run. */
void gw_aoi_mark(gw_t *gw, gw_conn_t *c);
/* Re-evaluates the queued connections (before a flush). */
void gw_aoi_run(gw_t *gw);
/* The player's own entity is at (x, y): re-evaluates once it moved far enough. */
void gw_aoi_moved(gw_t *gw, gw_conn_t *c, double x, double y);
/* A cell became live or stopped being live: queues the clients whose
 * circles reach its root (and takes or drops the map's reference). */
void gw_aoi_cell_changed(gw_t *gw, gw_cell_t *cell);
/* on: references every live cell (its state subscribed) for the world map,
 * and each cell that becomes live while on; off: releases them. */
void gw_aoi_map_hold(gw_t *gw, bool on);
/* Takes the connection off every watch list and the re-evaluation queue
 * (it leaves or closes). */
void gw_aoi_unwatch(gw_t *gw, gw_conn_t *c);
/* Retries subscriptions that failed. */
void gw_aoi_resubscribe(gw_t *gw);
/* Closes every state subscription (stopping). */
void gw_aoi_close_all(gw_t *gw);

/* counters.c: world counters, summed over the live cells from the
 * workers' heartbeats, sent to joined clients as WorldCounters. */
typedef struct gw_counters gw_counters_t;
/* Subscribes to the workers' heartbeats and starts the evaluation timer. */
ts_status_t gw_counters_start(gw_t *gw);
/* Unsubscribes (waiting for a callback running) and closes the timer. */
void gw_counters_stop(gw_t *gw);
void gw_counters_free(gw_t *gw);
/* c's Snapshot went out: the current values follow if it lacks them. */
void gw_counters_after_snapshot(gw_t *gw, gw_conn_t *c);
/* The current values; returns their version (bumped at every change, 0:
 * all 0 so far). */
uint64_t gw_counters_get(const gw_t *gw, int64_t values[TS_GAME_COUNTERS]);

/* view.c */
void gw_view_on_state(gw_t *gw, gw_cell_t *cell, const uint8_t *data, size_t len);
/* One fan-out: every client whose view changed gets its frame(s). */
void gw_view_flush(gw_t *gw);
/* Queues the client for the next flush. */
/* Writes the fan-out's staged writes now (writers.h). */
void gw_view_write_staged(gw_t *gw);
void gw_view_want_flush(gw_t *gw, gw_conn_t *c);
/* The player just joined: the next flush sends its Snapshot. */
void gw_view_send_snapshot(gw_t *gw, gw_conn_t *c);
/* The client's output drained after it was behind: send it a full view. */
void gw_view_caught_up(gw_t *gw, gw_conn_t *c);
/* The cell's entities are forgotten (unsubscribed). */
void gw_view_forget_cell(gw_t *gw, gw_cell_t *cell);
/* Forgets what the client was shown and takes it off the Snapshot wait
 * list (it leaves or closes). */
void gw_view_release(gw_t *gw, gw_conn_t *c);
/* Flushes clients whose first Snapshot waited GW_SNAPSHOT_WAIT_US. */
void gw_view_snapshot_deadlines(gw_t *gw);
void gw_view_free(gw_t *gw);

#endif
