/* Every worker's latest heartbeat, with its whole cell list (a worker of a
 * 64x64 world owns a thousand cells and more; ts_probe keeps 64). Fields the
 * running schema may not have yet (tick_max_ms, ticks_missed) are looked up
 * by name in the message descriptor and reported as absent (< 0) when they
 * are not there, so the bench reads old and new workers alike. */
#ifndef TS_HBWATCH_H
#define TS_HBWATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/bus.h"
#include "tessera/cell.h"
#include "tessera/registry.h"
#include "tessera/status.h"

#define TS_HBWATCH_WORKERS 16

typedef struct {
    char worker[TS_WORKER_ID_MAX];
    uint64_t received_us; /* ts_mono_us() when it arrived */
    uint64_t ticks;
    uint64_t inputs_applied;
    uint32_t entities;
    double tick_p99_ms;
    double tick_max_ms;            /* longest tick since the previous heartbeat; < 0: not in this schema */
    double tick_max_since_mark_ms; /* the largest tick_max_ms since ts_hbwatch_mark() */
    int64_t ticks_missed;          /* < 0: not in this schema */
    size_t ncells;
} ts_hbwatch_hb_t;

typedef struct ts_hbwatch ts_hbwatch_t;

/* Subscribes to tessera.worker.*.hb on bus (borrowed; destroy the watcher
 * before the bus). */
ts_status_t ts_hbwatch_create(ts_hbwatch_t **out, ts_bus_t *bus);
void ts_hbwatch_destroy(ts_hbwatch_t *w);
/* Forgets every heartbeat seen so far. */
void ts_hbwatch_reset(ts_hbwatch_t *w);
/* Starts a new window for tick_max_since_mark_ms of every worker. */
void ts_hbwatch_mark(ts_hbwatch_t *w);
/* The latest heartbeat of worker; false if none arrived yet. */
bool ts_hbwatch_get(ts_hbwatch_t *w, const char *worker, ts_hbwatch_hb_t *out);
/* Sum of inputs_applied / entities over the latest heartbeats of every worker. */
uint64_t ts_hbwatch_inputs_applied(ts_hbwatch_t *w);
uint64_t ts_hbwatch_entities(ts_hbwatch_t *w);
/* True if the latest heartbeat of worker arrived after after_us and lists
 * cell at min_epoch or later; *received_us (may be NULL) gets its arrival. */
bool ts_hbwatch_lists(ts_hbwatch_t *w, const char *worker, const ts_cell_t *cell, uint64_t min_epoch,
                      uint64_t after_us, uint64_t *received_us);

#endif
