/* The orchestrator's metrics and its /metrics, /healthz, /readyz listener
 * (orch.http_listen).
 *
 * Everything is read at scrape time on the HTTP thread: the counters and
 * handover samples of ts_stats_t (under its own mutex, as the stats reply
 * reads them), the heartbeat table (thread-safe) and the leader flag
 * (atomic). The main loop only stores a heartbeat timestamp per turn. */
#ifndef TS_ORCH_METRICS_H
#define TS_ORCH_METRICS_H

#include "orch.h"

/* Registers the metrics and starts the listener if orch.http_listen is set;
 * fails only for a listen address that is bad or taken. o must outlive
 * ts_orch_metrics_stop. */
ts_status_t ts_orch_metrics_start(ts_orch_t *o);
/* Connected, subscribed and the leader lock thread started: o->bus,
 * o->workers and o->leader are set. Ready (leader or standby) from now on
 * while NATS and Redis answer. */
void ts_orch_metrics_running(void);
/* Main loop, every turn (/healthz). */
void ts_orch_metrics_beat(void);
void ts_orch_metrics_stop(void);

#endif
