/* Internal types of tessera-gateway, shared by its modules:
 *
 *   gateway.c  loop handles, bus inbox, registry reloads, shutdown
 *   conn.c     TCP listener, per-connection reads and the write queue
 *   session.c  the client protocol, one state machine per connection
 *   cells.c    the table of known cells (registry view, epochs)
 *   router.c   per-cell input batching and ref-counted AOI subscriptions
 *   view.c     per-cell entity caches, fencing, merged Delta frames
 *
 * Everything here is touched by the loop thread only, except gw_t's inbox
 * (mutex) and ack counters (atomics), which nats.c threads feed. */
#ifndef TS_GATEWAY_H
#define TS_GATEWAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tessera/bus.h"
#include "tessera/cell.h"
#include "tessera/config.h"
#include "tessera/frame.h"
#include "tessera/map.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/subject.h"

#define GW_NAME_MAX 64
/* Delta frames are skipped for a client with more unsent output than this. */
#define GW_SLOW_CLIENT_BYTES ((size_t)1 << 20)
/* A client that lets this much pile up (non-Delta frames) is disconnected. */
#define GW_MAX_CLIENT_BYTES ((size_t)8 << 20)
/* Entities per Delta/Snapshot frame; larger updates are split. */
#define GW_FRAME_MAX_ENTITIES 512
/* Inputs per InputBatch bus message. */
#define GW_BATCH_MAX_INPUTS 1024
/* Inputs waiting for one cell before new ones are dropped. */
#define GW_CELL_MAX_PENDING 100000
/* Bus messages waiting for the loop before new ones are dropped. */
#define GW_INBOX_MAX 100000
/* How long a connection closed with a fatal error keeps draining input. */
#define GW_LINGER_US 2000000

typedef struct gw gw_t;
typedef struct gw_cell gw_cell_t;
typedef struct gw_conn gw_conn_t;

/* One client input waiting to be batched to its cell. */
typedef struct {
    uint64_t entity;
    uint64_t seq;
    uint64_t sent_us;
    Tessera__V1__Input__KindCase kind;
    double a, b; /* join: x, y; move: dx, dy */
    char name[GW_NAME_MAX + 1];
} gw_input_t;

/* Latest state of one entity as its cell's owner published it. */
typedef struct {
    Tessera__V1__EntityState pb; /* pb.name points at name */
    uint64_t gen;                /* keyframe generation that last saw it */
    char name[GW_NAME_MAX + 1];
} gw_entity_t;

/* A cell the gateway knows of, from the registry or from state it saw.
 * Records live until the gateway stops, so connections may point at them. */
struct gw_cell {
    ts_cell_t id;
    char key[TS_CELL_STR_MAX];
    char input_subject[TS_SUBJECT_MAX];
    char state_subject[TS_SUBJECT_MAX];

    bool in_registry;
    bool reg_mark; /* seen in the registry read being applied */
    ts_cell_state_t reg_state;
    uint64_t reg_epoch;
    uint64_t seen_epoch; /* highest epoch of state accepted (fencing) */
    uint64_t stale_dropped;

    /* state subscription, ref-counted across players' AOIs */
    uint32_t aoi_refs;
    ts_bus_sub_t *sub;
    ts_map_t entities; /* id -> gw_entity_t* */
    uint64_t gen;

    /* changes since the last gateway tick */
    ts_map_t changed; /* id -> (void *)1 */
    ts_map_t removed; /* id -> (void *)1 */
    bool dirty;
    gw_cell_t *next_dirty;

    /* inputs waiting for the next flush */
    gw_input_t *inputs;
    size_t ninputs, inputs_cap;
    bool batch_queued;
    gw_cell_t *next_batch;

    gw_cell_t *next_same_root; /* chain in gw->cell_roots */
    gw_cell_t *next_all;
};

typedef struct {
    gw_cell_t *cell;
    bool fresh; /* send all its entities in the next Delta */
} gw_aoi_slot_t;

typedef enum { GW_PHASE_NEW = 0, GW_PHASE_JOINED, GW_PHASE_LEFT } gw_phase_t;

struct gw_conn {
    uv_tcp_t tcp;
    gw_t *gw;
    gw_conn_t *prev, *next;
    uint64_t id;
    char peer[64];
    ts_frame_reader_t reader;
    size_t out_pending; /* bytes handed to uv_write, not yet written */

    bool closing;       /* fatal error sent or peer gone: input is ignored */
    bool handle_closed; /* uv_close called */
    uint64_t linger_until_us;

    /* protocol */
    uint64_t last_seq;
    uint64_t out_seq;
    gw_phase_t phase;
    uint64_t entity;
    gw_cell_t *cell;          /* the cell the player's inputs go to */
    gw_cell_t *awaiting_left; /* cell left on sight of the entity elsewhere, until its `left` arrives */
    gw_aoi_slot_t *aoi;
    size_t naoi, aoi_cap;
    uint64_t *gone; /* ids to report removed: their cells left the AOI */
    size_t ngone, gone_cap;
    uint64_t deltas_skipped;

    /* rate limit: token bucket plus flood detection in 1 s windows */
    double tokens;
    uint64_t refill_us;
    uint64_t rate_error_us;
    uint64_t window_start_us;
    uint64_t window_frames;
    int flood_windows;
};

/* A bus message copied off a nats.c thread. */
typedef enum { GW_MSG_STATE = 0, GW_MSG_REGISTRY } gw_msg_kind_t;
typedef struct gw_msg {
    struct gw_msg *next;
    gw_msg_kind_t kind;
    size_t len;
    char *subject; /* points into the same allocation */
    uint8_t data[];
} gw_msg_t;

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
    uv_signal_t sigint, sigterm;
    uv_timer_t tick_timer;
    uv_timer_t house_timer;
    uv_check_t flush_check;
    uv_timer_t retry_timer; /* re-flushes inputs a publish could not take */
    uv_async_t inbox_async;

    gw_conn_t *conns;
    size_t nconns; /* on the list, closing or not */
    size_t nopen;  /* not closing */
    uint64_t next_conn_id;
    ts_map_t players; /* entity id -> gw_conn_t* */

    ts_map_t cell_roots; /* root hash -> gw_cell_t* chain */
    gw_cell_t *all_cells;
    size_t ncells;
    gw_cell_t *batch_head;
    gw_cell_t *dirty_head;
    uint64_t tick;
    ts_map_t scratch; /* per-client merge de-duplication */
    Tessera__V1__EntityState **tmp_ents;
    size_t tmp_ents_cap;
    uint64_t *tmp_removed;
    size_t tmp_removed_cap;

    pthread_mutex_t inbox_mu;
    gw_msg_t *inbox_head, *inbox_tail;
    size_t inbox_len;
    uint64_t inbox_dropped;

    ts_bus_sub_t *registry_sub;
    uv_work_t reload_req;
    bool reload_running, reload_again, reload_force;
    uint64_t reg_version;
    ts_status_t reload_status;
    ts_cell_entry_t *reload_cells;
    size_t reload_n;
    uint64_t reload_version;
    bool reload_job_force;
    bool reload_changed;
    uint64_t reload_warn_us;

    /* counters */
    uint64_t inputs_queued, inputs_dropped, batches_published, publish_errors;
    uint64_t states_applied, states_bad;
    atomic_uint_fast64_t acks_ok, acks_failed;
};

/* gateway.c */
ts_status_t gw_create(gw_t **out, uv_loop_t *loop, const ts_config_t *cfg, ts_bus_t *bus, ts_registry_t *reg,
                      const ts_world_t *world, const ts_cell_entry_t *cells, size_t ncells);
/* Starts accepting, timers and subscriptions. */
ts_status_t gw_start(gw_t *gw);
/* Graceful stop: Leave for joined players, bus flush, every handle closed;
 * uv_run returns once the loop is empty. Idempotent. */
void gw_stop(gw_t *gw);
void gw_destroy(gw_t *gw);
void gw_request_reload(gw_t *gw, bool force);
/* Copies a bus message for the loop thread (called on nats.c threads). */
void gw_inbox_push(gw_t *gw, gw_msg_kind_t kind, const ts_bus_msg_t *msg);

/* conn.c */
ts_status_t gw_listen(gw_t *gw, const char *hostport);
void gw_listen_close(gw_t *gw);
/* Queues one ServerFrame (header + payload) for the connection. */
ts_status_t gw_conn_write(gw_conn_t *c, const uint8_t *data, size_t len);
/* Stops reading input, lets queued output drain, then closes. */
void gw_conn_close_after_write(gw_conn_t *c);
/* Closes now, dropping unsent output. */
void gw_conn_close(gw_conn_t *c);
/* Closes connections whose linger time is over. */
void gw_conns_sweep(gw_t *gw);

/* session.c */
void gw_session_init(gw_conn_t *c);
void gw_session_on_frame(gw_conn_t *c, const uint8_t *payload, size_t len);
/* The connection goes away: Leave for a joined player, AOI released. */
void gw_session_release(gw_conn_t *c);
/* Sends a frame; fills seq, and cell/epoch from the player's cell unless set. */
ts_status_t gw_session_send(gw_conn_t *c, Tessera__V1__ServerFrame *f);
void gw_session_error(gw_conn_t *c, Tessera__V1__ErrorCode code, bool fatal, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The player's entity is now owned by `to`: re-bind inputs and AOI, tell the client. */
void gw_session_move_cell(gw_conn_t *c, gw_cell_t *to);

/* cells.c */
gw_cell_t *gw_cell_find(gw_t *gw, const ts_cell_t *id);
/* Finds or creates the record; NULL only when out of memory. */
gw_cell_t *gw_cell_get(gw_t *gw, const ts_cell_t *id);
/* Epoch to stamp messages about the cell with. */
uint64_t gw_cell_epoch(const gw_cell_t *cell);
/* True if the registry says the cell exists and takes inputs. */
bool gw_cell_live(const gw_cell_t *cell);
/* Replaces the registry view; true if the set of live cells changed. */
bool gw_cells_apply_registry(gw_t *gw, const ts_cell_entry_t *entries, size_t n);
/* Calls fn for every live cell whose root is (cx, cy). */
void gw_cells_under_root(gw_t *gw, int32_t cx, int32_t cy, void (*fn)(void *ud, gw_cell_t *cell), void *ud);
void gw_cells_free_all(gw_t *gw);
void gw_cell_clear_entities(gw_t *gw, gw_cell_t *cell);

/* router.c */
/* Queues an input for the cell's next InputBatch. */
ts_status_t gw_router_queue(gw_t *gw, gw_cell_t *cell, const gw_input_t *in);
/* Publishes every queued batch. */
void gw_router_flush(gw_t *gw);
/* Recomputes the connection's AOI from its cell (empty unless joined). */
void gw_aoi_update(gw_t *gw, gw_conn_t *c);
/* Retries subscriptions that failed. */
void gw_aoi_resubscribe(gw_t *gw);

/* view.c */
void gw_view_on_state(gw_t *gw, const char *subject, const uint8_t *data, size_t len);
/* One gateway tick: a merged Delta to every joined client. */
void gw_view_tick(gw_t *gw);
/* Sends the Snapshot for a player who just joined. */
void gw_view_send_snapshot(gw_t *gw, gw_conn_t *c);

#endif
