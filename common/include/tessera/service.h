/* The bootstrap every Tessera binary shares: configuration and --help,
 * logging, SIGINT/SIGTERM handling, and connecting to NATS, Redis and the
 * world in the registry with retries.
 *
 * Signals: after ts_service_init, SIGINT and SIGTERM bump a stop counter
 * (0 running, 1 after the first signal: stop gracefully, 2 after the second:
 * stop now) and SIGPIPE is ignored. The connect helpers give up early once
 * the counter is non-zero. */
#ifndef TESSERA_SERVICE_H
#define TESSERA_SERVICE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/registry.h"
#include "tessera/status.h"

/* How long services keep trying to reach NATS, Redis and the world. */
#define TS_SERVICE_CONNECT_MS 10000
/* Pause between two connection attempts. */
#define TS_SERVICE_RETRY_MS 500
/* Exit status for a bad configuration unless ts_service_t says otherwise. */
#define TS_SERVICE_EXIT_CONFIG 2

typedef struct {
    const char *name;            /* "tessera-worker": log service name and prefix of error lines */
    const char *usage;           /* printed by --help before the list of options; NULL: none */
    int config_exit;             /* exit status for a bad configuration; 0: TS_SERVICE_EXIT_CONFIG */
    bool no_signals;             /* leave SIGINT, SIGTERM and SIGPIPE alone (interactive tools) */
    volatile sig_atomic_t *stop; /* counter the signal handler bumps; NULL: the module's own */
} ts_service_t;

/* Loads the configuration (ts_config_load; rest/nrest as there), answers
 * --help / -h before the first "--" (usage on stdout, *exit_code 0), rejects
 * a bad configuration with one line "<name>: <error>" on stderr
 * (*exit_code svc->config_exit), starts logging as svc->name at log.level /
 * log.format and installs the signal handlers. Returns true when the service
 * should run; false when main should return *exit_code, cfg then being
 * freed already (freeing it again is harmless). */
bool ts_service_init(const ts_service_t *svc, int argc, char **argv, ts_config_t *cfg, char ***rest,
                     int *nrest, int *exit_code);
/* svc->usage followed by every configuration option. */
void ts_service_usage(const ts_service_t *svc, FILE *out);
/* The stop counter the signal handlers bump (svc->stop if one was given). */
volatile sig_atomic_t *ts_service_stop_flag(void);
/* True once a stop signal arrived. */
bool ts_service_stopping(void);

/* Between two attempts of a retry loop: returns false at once if deadline_us
 * (ts_mono_us clock) has passed or a stop signal arrived, else sleeps up to
 * TS_SERVICE_RETRY_MS (not past the deadline) and returns true unless a stop
 * signal arrived meanwhile. */
bool ts_service_retry_wait(uint64_t deadline_us);

/* Connects to cfg->nats_url as conn_name, retrying every TS_SERVICE_RETRY_MS
 * for timeout_ms or until a stop signal. On failure logs one error naming the
 * URL (nothing if stopped) and returns the last connect status, or
 * TS_ERR_UNAVAILABLE if a stop signal came before the first attempt. */
ts_status_t ts_service_connect_bus(const ts_config_t *cfg, const char *conn_name, int64_t timeout_ms,
                                   ts_bus_t **out);
/* Same for Redis at cfg->redis_url. */
ts_status_t ts_service_connect_registry(const ts_config_t *cfg, int64_t timeout_ms, ts_registry_t **out);
/* Reads world cfg->world_id from the registry, waiting up to timeout_ms for
 * the orchestrator to write it (logged once at info). On failure logs one
 * error and returns the last status: TS_ERR_NOT_FOUND if the world never
 * appeared, TS_ERR_UNAVAILABLE if stopped before the first attempt. */
ts_status_t ts_service_wait_world(const ts_config_t *cfg, ts_registry_t *reg, int64_t timeout_ms,
                                  ts_world_t *out);

/* End of main: releases the NATS library if ts_service_connect_bus ran.
 * Call after every bus and subscription is destroyed. */
void ts_service_shutdown(void);

#endif
