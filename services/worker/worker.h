/* The worker: owns cells (zones) as the registry says, feeds each from its
 * JetStream input subject, ticks them, publishes transfers, state deltas and
 * heartbeats.
 *
 * Threads: one tick thread runs everything in ts_worker_run; nats.c threads
 * only append received input messages to a locked inbox and set flags. */
#ifndef TS_WORKER_H
#define TS_WORKER_H

#include <signal.h>

#include "tessera/config.h"
#include "tessera/status.h"

typedef struct ts_worker ts_worker_t;

/* Connects to NATS and Redis (retrying ~10 s each, or until a stop signal) and waits for
 * the world. */
ts_status_t ts_worker_create(ts_worker_t **out, const ts_config_t *cfg);
/* Ticks until *stop becomes non-zero, then drains: asks the orchestrator to
 * move its cells away and goes on ticking until it owns none (at most 30 s;
 * *stop >= 2 — a second signal — cuts it short). */
ts_status_t ts_worker_run(ts_worker_t *w, volatile sig_atomic_t *stop);
void ts_worker_destroy(ts_worker_t *w);

#endif
