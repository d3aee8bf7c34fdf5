/* Worker liveness and load as the orchestrator sees it: the last Heartbeat
 * of every worker and when it arrived, input rates derived from consecutive
 * heartbeats, and the latest load of every cell a heartbeat listed. Fed from
 * a bus subscription (any thread), read from the main loop. */
#ifndef TESSERA_ORCH_WORKERS_H
#define TESSERA_ORCH_WORKERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/bus.h"
#include "tessera/cell.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/status.h"

/* Most workers tracked; heartbeats from further ids are ignored. */
#define TS_WORKERS_MAX 4096

typedef struct ts_workers ts_workers_t;

typedef struct {
    char id[TS_WORKER_ID_MAX];
    bool alive;
    uint64_t last_hb_us; /* monotonic time the last heartbeat arrived */
    uint64_t ticks;
    uint32_t entities;
    uint32_t cells;
    uint32_t capacity;
    uint64_t inputs_applied;
    uint64_t transfers_out;
    double tick_p50_ms;
    double tick_p99_ms;
    double inputs_per_s; /* over the last second or so; 0 until two heartbeats a second apart */
    bool draining;       /* the worker says it is stopping */
    char instance[TS_WORKER_TOKEN_MAX]; /* the process's instance token ("" from older workers) */
    uint64_t ticks_missed;              /* tick periods that passed without a tick, since it started */
    uint64_t missed_recent;             /* of which since its previous heartbeat */
    double tick_max_ms;                 /* longest tick since its previous heartbeat */
} ts_worker_info_t;

/* Latest load of one cell, from the heartbeat of its owner. */
typedef struct {
    ts_cell_t cell;
    char worker[TS_WORKER_ID_MAX];
    uint64_t epoch;
    uint32_t entities;
    double inputs_per_s;
    bool rate_known;  /* inputs_per_s was measured at least once */
    uint64_t seen_us; /* monotonic arrival of the heartbeat */
} ts_cell_load_t;

/* ttl_ms: a worker whose last heartbeat is older than this is dead. */
ts_status_t ts_workers_create(ts_workers_t **out, int64_t ttl_ms);
void ts_workers_destroy(ts_workers_t *w);

/* Records one decoded Heartbeat received on subject at now_us (monotonic);
 * logs when a worker appears or comes back. Thread-safe (the heartbeat
 * subscription's callback). TS_ERR_MALFORMED, counted and logged, if hb is
 * NULL (it did not decode) or names no valid worker. Borrows hb. */
ts_status_t ts_workers_record(ts_workers_t *w, const Tessera__V1__Heartbeat *hb, const char *subject,
                              uint64_t now_us);
/* Marks workers whose heartbeat is older than the TTL dead, logging each
 * once. Returns how many are alive. */
size_t ts_workers_check(ts_workers_t *w, uint64_t now_us);
/* Copies up to cap entries into out; returns the number of workers known. */
size_t ts_workers_snapshot(ts_workers_t *w, ts_worker_info_t *out, size_t cap);
/* The entry of one worker; false if it never sent a heartbeat. */
bool ts_workers_get(ts_workers_t *w, const char *id, ts_worker_info_t *out);
/* Latest load of a cell if a heartbeat listed it within the TTL before
 * now_us; false otherwise. With two workers listing it (around a handover)
 * the higher epoch wins. */
bool ts_workers_cell_load(ts_workers_t *w, const ts_cell_t *cell, uint64_t now_us, ts_cell_load_t *out);
/* Logs one status line per known worker. */
void ts_workers_log_status(ts_workers_t *w, uint64_t now_us);

#endif
