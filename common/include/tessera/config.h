/* Configuration: built-in defaults, overridden by one YAML file, overridden
 * by TESSERA_* environment variables, overridden by command-line flags.
 *
 * Every key has a dotted name ("gateway.listen"); its environment variable
 * is TESSERA_ + the name upper-cased with dots as underscores
 * (TESSERA_GATEWAY_LISTEN); its flag is --gateway.listen=VALUE or
 * --gateway.listen VALUE. The YAML file nests the same names:
 *     gateway:
 *       listen: 127.0.0.1:7400
 * A YAML sequence is read as its items joined with ','. */
#ifndef TESSERA_CONFIG_H
#define TESSERA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/status.h"

typedef struct {
    /* common */
    char *config_file; /* --config / TESSERA_CONFIG; NULL: none */
    char *log_level;   /* debug|info|warn|error */
    char *log_format;  /* text|json */
    char *nats_url;
    char *redis_url; /* redis://host:port[/db] */
    int64_t world_id;

    /* security: NATS and Redis credentials and TLS ("" = not used) */
    char *nats_user;           /* NATS user name */
    char *nats_password_file;  /* file holding the NATS password (first line) */
    char *nats_creds;          /* NATS .creds file (JWT + nkey seed) */
    char *nats_tls_ca;         /* CA bundle that signs the NATS server certificate */
    char *nats_tls_cert;       /* client certificate (PEM), with nats_tls_key */
    char *nats_tls_key;        /* client private key (PEM) */
    char *redis_user;          /* Redis ACL user when the URL names none */
    char *redis_tls_ca;        /* rediss://: CA bundle that signs the Redis certificate */
    char *redis_tls_cert;      /* rediss://: client certificate (PEM) */
    char *redis_tls_key;       /* rediss://: client private key (PEM) */
    char *redis_password_file; /* file holding the Redis password (first line) */

    /* world layout (orchestrator) */
    double world_cell_size;
    int64_t world_x0, world_y0;        /* first root cell */
    int64_t world_width, world_height; /* root cells */
    char *world_workers;               /* comma list of worker ids */
    char *world_assign;                /* comma list "cx:cy=worker" overriding the default split */

    /* JetStream */
    int64_t stream_max_age_s; /* input stream retention */
    char *stream_storage;     /* file|memory */
    int64_t stream_replicas;
    int64_t stream_max_bytes; /* input stream retention in bytes; -1: none */

    /* gateway */
    char *gateway_listen; /* host:port */
    int64_t gateway_id;
    int64_t gateway_max_frame;
    int64_t gateway_max_clients;
    int64_t gateway_rate_limit; /* frames per second per client */
    int64_t gateway_tick_hz;    /* unused (Deltas go out as state arrives) */
    int64_t gateway_aoi_radius; /* retired: aoi.radius 0 means (this + 0.5) x world cell size */

    /* worker */
    char *worker_id;
    int64_t worker_tick_hz;
    int64_t worker_capacity;
    int64_t worker_inbox_ring;
    int64_t worker_hb_ms;
    int64_t worker_checkpoint_ms;
    double worker_max_speed;

    /* orchestrator */
    int64_t orch_hb_ttl_ms;
    int64_t orch_status_ms;
    int64_t orch_lock_ttl_ms;         /* leader lock TTL */
    int64_t orch_handover_timeout_ms; /* per handover request */
    int64_t orch_precopy_timeout_ms;  /* the PREPARE step (a whole-cell copy) */
    int64_t orch_recovery_grace_ms; /* never-seen workers keep their cells this long after gaining the lead */
    int64_t orch_rebalance;         /* 1: move cells from hot to cold workers */
    int64_t orch_rebalance_interval_ms;
    int64_t orch_rebalance_cooldown_ms;
    double orch_rebalance_threshold;   /* hottest load above (1+threshold)*mean triggers a move */
    int64_t orch_rebalance_hysteresis; /* consecutive evaluations over the threshold */
    int64_t orch_max_handovers;        /* live handovers in flight at once */

    /* sim */
    int64_t sim_players;
    int64_t sim_rate_hz;    /* inputs per player per second */
    int64_t sim_duration_s; /* 0 = until signalled */
    int64_t sim_seed;
    double sim_speed;

    /* HTTP listener for /metrics, /healthz and /readyz, per service ("" = off) */
    char *gateway_http_listen; /* host:port */
    char *worker_http_listen;
    char *orch_http_listen;
    char *sim_http_listen;

    /* gateway: player connections, resume, auth */
    int64_t gateway_hello_timeout_s;  /* no complete Hello/Join this long: closed */
    int64_t gateway_idle_timeout_s;   /* no frame at all this long: closed */
    int64_t gateway_coalesce_ms;      /* longest wait for a tick's cells before a fan-out */
    int64_t gateway_fanout_threads;   /* writer threads beside the loop (-1: auto) */
    int64_t gateway_max_backlog;      /* unsent output bytes ... */
    int64_t gateway_slow_close_s;     /* ... above for this long: closed */
    int64_t gateway_max_conns_per_ip; /* 0: no limit */
    int64_t gateway_keepalive_s;      /* TCP keepalive idle time */
    int64_t gateway_resume_s;         /* grace of a disconnected player's entity */
    char *gateway_resume_secret;      /* HMAC key of resume tokens ("": per process) */
    int64_t gateway_auth_required;    /* 1: Hello needs a valid JWT */
    char *gateway_auth_secret;        /* HS256 key */
    char *gateway_auth_public_key;    /* RS256: PEM public key file */
    char *gateway_auth_issuer;        /* "" = not checked */
    char *gateway_auth_audience;      /* "" = not checked */

    /* gateway: WebSocket and the browser map */
    char *gateway_ws_listen;      /* host:port of /ws and the map page ("" = off) */
    char *gateway_ws_origins;     /* allowed Origins, comma-separated ("": same host, "*": any) */
    char *gateway_web_dir;        /* serve the map from here ("": the copy built into the binary) */
    int64_t gateway_map_max_dots; /* entity dots per map push (0: none, no state subscriptions) */

    /* ghosts and the spatial query (worker) */
    double aoi_interact_radius; /* EntityState.nearby counts others this close */
    double ghost_margin;        /* entities this close to a border are sent to neighbours */
    int64_t ghost_keyframe_ticks;

    /* cells at depth: automatic split and merge (orchestrator) */
    int64_t world_max_depth;     /* deepest quadtree level a cell may be split to */
    int64_t split_auto;          /* 1: the orchestrator splits and merges by load */
    int64_t split_max_entities;  /* a cell above this many entities is hot */
    double split_max_tick_share; /* ... or above this share of its worker's tick budget */
    int64_t split_windows;       /* consecutive hot load reports before a split */
    int64_t split_cooldown_s;    /* no split or merge of a cell this long after its last one */
    int64_t merge_max_entities;  /* four children below this many entities together are cold */
    int64_t merge_windows;       /* consecutive cold load reports before a merge */

    /* area of interest (gateway) */
    double aoi_radius;     /* world units a client sees around its entity (0: derived, see config.c) */
    double aoi_hysteresis; /* shown entities stay until radius + this (0: 10% of the radius) */

    /* game modules (worker) */
    char *worker_game;             /* module shared object ("" or "move": the built-in movement) */
    char *worker_game_config;      /* given to the module's load() */
    int64_t worker_game_budget_ms; /* a callback longer than this is an overrun */
    char *worker_fault_file;       /* module crashes appended here, counted at start ("": none) */
} ts_config_t;

/* Fills cfg from defaults, file, environment and argv, in that order.
 * argv[0] is skipped; the remaining non-flag arguments are returned through
 * *rest / *nrest (borrowed from argv) when rest is not NULL, else they are
 * an error. On error, a message is written into err. cfg must be freed with
 * ts_config_free even on error.
 *
 * Details:
 *  - cfg is zeroed first (its previous strings are not freed).
 *  - The config file comes from --config FILE, else TESSERA_CONFIG.
 *  - An unknown flag or YAML key is an error; TESSERA_* variables that match
 *    no key are ignored, and so is an empty variable.
 *  - Error messages name the key and the source: "file.yaml:12: ...",
 *    "env TESSERA_WORLD_ID: ...", "flag --world.id: ...".
 *  - "--" ends the flags. Arguments starting with "--" are flags anywhere
 *    else; "-1" and other single-dash words are positional.
 *  - argv is permuted so the positional arguments come first: *rest is
 *    argv + 1.
 *  - --help or -h prints ts_config_usage(stdout) and returns TS_ERR_CONFIG
 *    with err set to "help" (the caller exits 0). */
ts_status_t ts_config_load(ts_config_t *cfg, int argc, char **argv, char ***rest, int *nrest, char *err,
                           size_t errcap);
/* Sets one key from text, as a flag would (same validation). */
ts_status_t ts_config_set(ts_config_t *cfg, const char *key, const char *value, char *err, size_t errcap);
void ts_config_free(ts_config_t *cfg);
/* Prints every key, its environment variable, default and help to out. */
void ts_config_usage(FILE *out);
/* Splits "host:port" (port required). host is written into hostbuf.
 * "[::1]:7400" gives host "::1". TS_ERR_PARSE for a missing host or port
 * or a non-numeric port, TS_ERR_RANGE for a port above 65535 or a host
 * longer than hostcap - 1. */
ts_status_t ts_config_split_hostport(const char *s, char *hostbuf, size_t hostcap, int *port);

#endif
