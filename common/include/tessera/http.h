/* The metrics and health HTTP listener every long-running service can turn
 * on (<svc>.http_listen): wraps libmicrohttpd, the only module that
 * includes microhttpd.h.
 *
 *   GET /metrics  200, the registry in the Prometheus text format 0.0.4
 *   GET /healthz  200 "ok" while the service's loop turns: its last
 *                 ts_http_beat is younger than stale_ms (or it has not
 *                 started beating yet: it is still connecting, and the
 *                 connect helpers give up on their own); 503 "stalled ..."
 *                 otherwise
 *   GET /readyz   200 "ready" when the service's ready callback says so and
 *                 ts_http_set_stopping was not called; 503 with the reason
 *                 otherwise
 *   anything else 404; a method other than GET or HEAD 405.
 *
 * Threads: libmicrohttpd runs its own threads (a small pool, so a slow
 * readiness check does not hold /healthz). Requests never touch a tick
 * thread or an event loop: the service hands over a heartbeat timestamp
 * (one atomic store), metrics whose updates are atomics, and a ready
 * callback that reads atomics or does its own round trips on the HTTP
 * thread. Every function accepts a NULL listener (the listener is off). */
#ifndef TESSERA_HTTP_H
#define TESSERA_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/bus.h"
#include "tessera/metrics.h"
#include "tessera/status.h"

typedef struct ts_http ts_http_t;

/* Says whether the service is ready; on false, writes the reason into why.
 * Runs on an HTTP thread, possibly on two at once. */
typedef bool (*ts_http_ready_fn)(void *ud, char *why, size_t cap);

/* /healthz fails once the last heartbeat is older than this by default. */
#define TS_HTTP_STALE_MS 10000

typedef struct {
    const char *listen;    /* host:port; port 0 picks a free one (ts_http_port) */
    ts_metrics_t *metrics; /* borrowed, outlives the listener; NULL: empty /metrics */
    int64_t stale_ms;      /* 0: TS_HTTP_STALE_MS */
    ts_http_ready_fn ready;
    void *ready_ud;
} ts_http_opts_t;

/* Starts listening. *out is NULL (and TS_OK returned) when opts->listen is
 * NULL or empty: the listener is off. TS_ERR_CONFIG for an address that is
 * not host:port or cannot be resolved, TS_ERR_IO when it cannot be bound
 * (both logged). */
ts_status_t ts_http_start(ts_http_t **out, const ts_http_opts_t *opts);
/* Stops the threads (waits for requests being served) and frees h. */
void ts_http_stop(ts_http_t *h);
/* The port it listens on. */
int ts_http_port(const ts_http_t *h);

/* The service's loop turned (one atomic store; call it every turn or tick). */
void ts_http_beat(ts_http_t *h);
/* From now on /readyz answers 503 "stopping" (a drain or shutdown began). */
void ts_http_set_stopping(ts_http_t *h);

/* The answers, without sockets (what the handlers send; for tests):
 * the HTTP status, and the body written into body. now_us: ts_mono_us(). */
int ts_http_healthz(ts_http_t *h, uint64_t now_us, char *body, size_t cap);
int ts_http_readyz(ts_http_t *h, char *body, size_t cap);

/* Readiness helpers for ready callbacks (HTTP thread only).
 * ts_http_check_bus: the NATS connection is up (no round trip).
 * ts_http_check_redis: one round trip to Redis at url on the listener's own
 * connection (made and remade as needed, 1 s timeouts); the answer is
 * reused for a second. On false both write the reason into why. */
bool ts_http_check_bus(ts_bus_t *bus, char *why, size_t cap);
bool ts_http_check_redis(ts_http_t *h, const char *url, char *why, size_t cap);

#endif
