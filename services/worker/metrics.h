/* The worker's metrics and its /metrics, /healthz, /readyz listener
 * (worker.http_listen). One worker per process: the state is the module's.
 *
 * Hot-path cost: the tick thread observes its tick duration (one histogram
 * observation, one heartbeat store) every tick, each applied input batch
 * adds its inputs' latencies, and at heartbeat cadence (worker.hb_ms) the
 * totals the heartbeat already sums are copied into atomics. Nothing here
 * locks, allocates after start or waits on the HTTP thread. */
#ifndef TS_WORKER_METRICS_H
#define TS_WORKER_METRICS_H

#include <stdbool.h>

#include "tessera/config.h"
#include "tessera/proto.h"
#include "tessera/status.h"

typedef struct ts_worker ts_worker_t;

/* Registers the metrics and starts the listener if worker.http_listen is
 * set. Fails only for a listen address that is bad or taken. */
ts_status_t ts_worker_metrics_start(const ts_config_t *cfg);
/* Stops the listener and frees the metrics (before the worker is freed). */
void ts_worker_metrics_stop(void);

/* Tick thread, every tick: its duration; also the /healthz heartbeat. */
void ts_worker_metrics_tick(ts_worker_t *w, double seconds);
/* Tick thread, at heartbeat cadence: totals, gauges and readiness. */
void ts_worker_metrics_snapshot(ts_worker_t *w);
/* Tick thread: an input batch was applied (input -> applied latency of
 * each input that carries its send time). */
void ts_worker_metrics_batch(const Tessera__V1__InputBatch *ib);
/* Tick thread: a split (split) or a retired cell's merge finished here:
 * decision seen -> last Transfer stored, and its tick-boundary work. */
void ts_worker_metrics_split(bool split, double seconds, double work_seconds);
/* Why a worker refused an input-stream item its publisher may not send
 * (tessera_worker_inputs_refused_total{reason}). */
typedef enum {
    TS_REFUSED_ORIGIN = 0, /* the subject names no known origin */
    TS_REFUSED_KIND,       /* a gateway sent what only workers send */
    TS_REFUSED_GATEWAY,    /* the entity belongs to another gateway */
    TS_REFUSED_ENTITY,     /* a Join or Attach naming another gateway */
    TS_REFUSED_ATTACH,     /* an Attach the entity was not let go for in time */
    TS_REFUSED_TOKEN,      /* another gateway's Attach without a valid resume token */
    TS_REFUSED_N
} ts_refused_reason_t;
/* Tick thread: n items refused for reason. */
void ts_worker_metrics_refused(ts_refused_reason_t reason, uint64_t n);
/* "origin", "kind", ... */
const char *ts_worker_refused_str(ts_refused_reason_t reason);
/* Timer thread: the world's input stream was found gone or replaced. */
void ts_worker_metrics_stream_restart(void);
/* The worker is draining or stopping: /readyz answers 503 from now on. */
void ts_worker_metrics_stopping(void);

#endif
