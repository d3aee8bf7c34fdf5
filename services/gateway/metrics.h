/* The gateway's metrics and its /metrics, /healthz, /readyz listener
 * (gateway.http_listen).
 *
 * Counters and gauges are the gateway's own fields, read at scrape time as
 * untorn loads; the loop pays one histogram observation per fan-out flush
 * and per input acknowledgement, and a timer stores the /healthz heartbeat
 * once a second (unreferenced: it never keeps the loop alive). */
#ifndef TS_GATEWAY_METRICS_H
#define TS_GATEWAY_METRICS_H

#include <stdint.h>

#include <uv.h>

#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/status.h"

typedef struct gw gw_t;

/* Registers the metrics and starts the listener if gateway.http_listen is
 * set; fails only for a listen address that is bad or taken. */
ts_status_t gw_metrics_start(const ts_config_t *cfg);
/* The gateway runs: its fields can be read and its loop beats. */
void gw_metrics_attach(gw_t *gw, uv_loop_t *loop, ts_bus_t *bus);
/* After uv_run returned: closes the heartbeat timer (runs the loop once
 * more for it) and stops the listener. Call before the bus and the gateway
 * are freed. */
void gw_metrics_stop(uv_loop_t *loop);

/* Loop thread: a fan-out flush that began at started_us (ts_mono_us) ended. */
void gw_metrics_flushed(uint64_t started_us);
/* Loop thread: an input batch was acknowledged us after it was published. */
void gw_metrics_input_ack(uint64_t us);

#endif
