/* tessera-ctl internals: one function per subcommand plus the helpers they
 * share. Subcommands return the process exit status. */
#ifndef TESSERA_CTL_H
#define TESSERA_CTL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/registry.h"
#include "tessera/status.h"

#define TS_CTL_EXIT_USAGE 2
/* How long the CLI keeps trying to reach NATS / Redis. */
#define TS_CTL_CONNECT_MS 5000

/* Latest heartbeat of one worker, as the CLI saw it. */
typedef struct {
    char id[TS_WORKER_ID_MAX];
    uint64_t seen_us; /* monotonic arrival time */
    uint64_t ticks;
    uint64_t inputs_applied;
    uint64_t inputs_dropped;
    uint64_t inputs_duplicate;
    uint64_t transfers_out;
    uint64_t transfers_out_remote;
    uint32_t entities;
    uint32_t capacity;
    uint32_t cells;
    double tick_p50_ms;
    double tick_p99_ms;
    uint64_t ticks_missed;     /* tick periods that passed without a tick, ever */
    uint64_t publishes_failed; /* JetStream publishes the worker had to send again */
    uint64_t cells_binding;    /* cells given to it that it has not bound yet */
    bool draining;
} ts_ctl_hb_t;

/* Heartbeats collected from "tessera.worker.*.hb" (thread-safe). */
typedef struct ts_ctl_hbs ts_ctl_hbs_t;
ts_status_t ts_ctl_hbs_create(ts_ctl_hbs_t **out);
void ts_ctl_hbs_destroy(ts_ctl_hbs_t *h);
/* ts_bus_msg_cb; ud is the ts_ctl_hbs_t. Malformed heartbeats are ignored. */
void ts_ctl_hbs_on_msg(void *ud, const ts_bus_msg_t *msg);
/* Copies the table; caller frees *out. */
ts_status_t ts_ctl_hbs_snapshot(ts_ctl_hbs_t *h, ts_ctl_hb_t **out, size_t *n);

/* One frame of a live view (watch, top). */
typedef struct {
    const ts_config_t *cfg;
    ts_registry_t *reg;     /* NULL while Redis cannot be reached */
    const ts_ctl_hb_t *cur; /* latest heartbeat per worker */
    size_t ncur;
    const ts_ctl_hb_t *prev; /* the same, one frame earlier (NULL at first) */
    size_t nprev;
    double secs;       /* since the previous frame */
    const char *stats; /* the orchestrator's stats JSON, or NULL */
    uint64_t now_us;   /* monotonic */
} ts_ctl_frame_t;
/* Draws one frame; false when the registry could not be read (the loop
 * re-opens it). */
typedef bool (*ts_ctl_draw_fn)(const ts_ctl_frame_t *f, void *ud);
/* Runs a live view, one frame a second; count 0 = until signalled. */
int ts_ctl_live(const ts_config_t *cfg, long count, ts_ctl_draw_fn draw, void *ud);
const ts_ctl_hb_t *ts_ctl_hb_find(const ts_ctl_hb_t *v, size_t n, const char *id);

/* Set by SIGINT/SIGTERM. */
extern volatile sig_atomic_t ts_ctl_stop;

/* Connect with retries for TS_CTL_CONNECT_MS; log a clear error on failure. */
ts_status_t ts_ctl_connect_registry(const ts_config_t *cfg, ts_registry_t **out);
ts_status_t ts_ctl_connect_bus(const ts_config_t *cfg, ts_bus_t **out);

int ts_ctl_cells(const ts_config_t *cfg);
int ts_ctl_workers(const ts_config_t *cfg);
/* token.c: `tessera-ctl token ...` (argv[0] is "token"); mints a dev JWT, no
 * configuration or connection needed. Returns the exit status. */
int ts_ctl_token(int argc, char **argv);
/* Prints one summary line per second; count 0 = until signalled. */
int ts_ctl_watch(const ts_config_t *cfg, long count);
/* Administration through the leading orchestrator (tessera.ctl.<world>.*). */
int ts_ctl_handover(const ts_config_t *cfg, const char *cell, const char *worker);
int ts_ctl_drain(const ts_config_t *cfg, const char *worker);
/* Asks the leading orchestrator to split CELL into its four children /
 * merge the four children of PARENT back into it; prints its answer. */
int ts_ctl_split(const ts_config_t *cfg, const char *cell);
int ts_ctl_merge(const ts_config_t *cfg, const char *parent);
int ts_ctl_stats(const ts_config_t *cfg);
/* Live per-worker table, refreshed every second; count 0 = until signalled. */
int ts_ctl_top(const ts_config_t *cfg, long count);
/* Sends a text request to tessera.ctl.<world>.<verb>. On TS_OK *reply is the
 * NUL-terminated answer (caller frees). TS_ERR_TIMEOUT / TS_ERR_UNAVAILABLE:
 * no orchestrator answered. */
ts_status_t ts_ctl_request(ts_bus_t *bus, uint32_t world, const char *verb, const char *payload,
                           int64_t timeout_ms, char **reply);

/* Prints every message on subject (wildcards allowed) decoded, one line
 * each; count 0 = until signalled. */
int ts_ctl_tail(const ts_config_t *cfg, const char *subject, bool json, long count);

/* Reads one payload from in and prints it decoded to out. */
int ts_ctl_decode(const char *subject, bool json, FILE *in, FILE *out);

/* Decodes one payload of the message type that subject carries and prints it
 * as one line (text, or JSON if json) followed by '\n'. TS_ERR_INVALID for a
 * subject with no known message type, TS_ERR_MALFORMED if the payload does
 * not decode; err says why. */
ts_status_t ts_ctl_decode_payload(const char *subject, const uint8_t *data, size_t len, bool json, FILE *out,
                                  char *err, size_t errcap);

#endif
