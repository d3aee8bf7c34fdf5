/* Worker internals shared by worker.c (lifecycle, bindings, tick loop),
 * output.c (what a tick publishes) and handover.c (moving cells between
 * workers). Everything here is touched by the tick thread only, except the
 * inbox, the control queue and the pending zones, which nats.c threads fill
 * under `mu`. */
#ifndef TS_WORKER_INTERNAL_H
#define TS_WORKER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "worker.h"
#include "zone.h"

#define TS_TICK_SAMPLES 256

typedef struct {
    ts_cell_t cell;
    uint64_t gen;
    uint64_t stream_seq;
    uint8_t *data;
    size_t len;
} ts_inbox_msg_t;

typedef struct {
    ts_inbox_msg_t *v;
    size_t n, cap;
} ts_inbox_t;

/* Context of one input subscription (owned by its binding or pending zone). */
typedef struct {
    ts_worker_t *w;
    ts_cell_t cell;
    uint64_t gen;
    bool hold;       /* a handover target not committed yet: keep, don't apply */
    ts_inbox_t held; /* under w->mu */
} ts_sub_ctx_t;

typedef enum { TS_BIND_ACTIVE = 0, TS_BIND_FROZEN } ts_bind_state_t;

typedef struct {
    ts_zone_t *zone;
    ts_bus_sub_t *sub;
    ts_sub_ctx_t *ctx;
    uint64_t gen;
    ts_bind_state_t state;
    char handover_id[64]; /* while frozen */
    uint64_t frozen_us;   /* monotonic */
    ts_inbox_t held;      /* input received while frozen (after s2), in order */
    uint64_t bound_us;    /* wall clock when this worker took the cell */
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
    bool diffed;    /* the Diff arrived: the zone is exact as of its last_applied_seq */
    bool committed; /* COMMIT arrived: the tick thread binds it */
    uint64_t new_epoch;
    ts_sub_ctx_t *ctx;
    ts_bus_sub_t *sub;
    uint64_t created_us;
} ts_pending_t;

typedef struct {
    ts_zone_stats_t zones; /* summed over zones, including unbound ones */
    uint64_t transfers_out_remote;
    uint64_t handovers_out, handovers_in;
    uint64_t recovered; /* cells bound from a checkpoint + replay */
} ts_worker_stats_t;

struct ts_worker {
    const ts_config_t *cfg;
    char id[TS_WORKER_ID_MAX];
    ts_bus_t *bus;
    ts_registry_t *reg;
    ts_bus_sub_t *reg_sub;
    ts_bus_sub_t *ho_sub;
    ts_world_t world;
    uint64_t boot_nonce; /* makes message ids unique across restarts */

    ts_binding_t *bindings;
    size_t nbind, cap_bind;
    uint64_t next_gen;
    ts_cell_entry_t *cells; /* last registry read, for owner look-ups */
    size_t ncells;
    uint64_t reg_version;
    atomic_bool reg_dirty;

    pthread_mutex_t mu;
    pthread_cond_t cond; /* signalled when a control request arrives */
    ts_inbox_t inbox;
    ts_ctl_req_t *ctl;
    size_t nctl, cap_ctl;
    ts_pending_t *pending;
    size_t npending, cap_pending;

    uint64_t tick;
    uint64_t seq;
    uint64_t last_hb_us;
    double tick_ms[TS_TICK_SAMPLES];
    size_t tick_samples;
    uint64_t overruns;
    ts_worker_stats_t stats;
    bool draining;
};

/* worker.c */
ts_binding_t *ts_worker_find_binding(ts_worker_t *w, const ts_cell_t *c);
const ts_cell_entry_t *ts_worker_find_entry(const ts_worker_t *w, const ts_cell_t *c);
/* Binds a cell from its checkpoint and a replay of its input after it. */
ts_status_t ts_worker_bind(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch);
/* Binds a zone whose consumer already runs (a handover target): takes
 * ownership of zone, sub and ctx, applies what ctx held. */
ts_status_t ts_worker_adopt(ts_worker_t *w, ts_zone_t *zone, uint64_t epoch, ts_bus_sub_t *sub, ts_sub_ctx_t *ctx);
/* Allocates a subscription context and starts consuming cell's input after
 * after_seq. */
ts_status_t ts_worker_subscribe_input(ts_worker_t *w, const ts_cell_t *cell, uint64_t after_seq, bool hold,
                                      ts_sub_ctx_t **ctx, ts_bus_sub_t **sub);
void ts_worker_free_ctx(ts_sub_ctx_t *ctx);
void ts_inbox_free(ts_inbox_t *in);
/* Applies queued input messages to z in order (and frees them). */
void ts_worker_apply_msgs(ts_worker_t *w, ts_zone_t *z, ts_inbox_t *msgs);
void ts_worker_unbind(ts_worker_t *w, ts_binding_t *b);
void ts_worker_apply_inbox(ts_worker_t *w);
void ts_worker_sync_registry(ts_worker_t *w);

/* output.c */
void ts_worker_publish_departures(ts_worker_t *w, ts_zone_t *z);
void ts_worker_publish_outboxes(ts_worker_t *w, ts_zone_t *z);
void ts_worker_publish_state(ts_worker_t *w, ts_zone_t *z, bool full);
void ts_worker_publish_checkpoint(ts_worker_t *w, ts_zone_t *z);
void ts_worker_heartbeat(ts_worker_t *w);

/* handover.c */
ts_status_t ts_handover_subscribe(ts_worker_t *w);
/* Runs queued control requests and handover timeouts (tick thread). */
void ts_handover_poll(ts_worker_t *w);
/* Binds the pending zone for cell if its Diff arrived (the registry gave us
 * the cell before the COMMIT did). Returns false if there is none. */
bool ts_handover_bind_pending(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch);
void ts_handover_free_all(ts_worker_t *w);

#endif
