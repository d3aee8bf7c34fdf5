/* Configuration loading (wraps libyaml; the only module that includes yaml.h).
 *
 * Every key lives in one static table: dotted name, type, where it is stored
 * in ts_config_t, default text, valid range or choices, help. Every source
 * (default, YAML file, TESSERA_* environment, flags) goes through the same
 * setter, so a value is validated the same way wherever it comes from and an
 * error names the key and the source (file:line, env var or flag).
 *
 * Invariants: after a successful load every key holds a valid value and every
 * string field is a malloc'd copy owned by the struct (config_file may be
 * NULL); ts_config_free releases them and leaves the struct zeroed. Sources
 * apply in the order default < file < env < flag. */
#include "tessera/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <yaml.h>

typedef enum { KEY_STR, KEY_INT, KEY_DBL } key_type_t;

typedef struct {
    const char *name;
    key_type_t type;
    size_t off;
    const char *def;     /* NULL: no default (left NULL) */
    int64_t imin, imax;  /* KEY_INT range */
    double dmin, dmax;   /* KEY_DBL range */
    const char *choices; /* KEY_STR: '|'-separated allowed values, or NULL */
    bool hostport;       /* KEY_STR: must be host:port */
    const char *help;
} key_def_t;

/* clang-format off */
#define OFF(field) offsetof(ts_config_t, field)
#define STR(name, field, def, choices, help) {name, KEY_STR, OFF(field), def, 0, 0, 0, 0, choices, false, help}
#define ADDR(name, field, def, help) {name, KEY_STR, OFF(field), def, 0, 0, 0, 0, NULL, true, help}
#define INT(name, field, def, lo, hi, help) {name, KEY_INT, OFF(field), def, lo, hi, 0, 0, NULL, false, help}
#define DBL(name, field, def, lo, hi, help) {name, KEY_DBL, OFF(field), def, 0, 0, lo, hi, NULL, false, help}

static const key_def_t keys[] = {
    STR("config", config_file, NULL, NULL, "YAML configuration file"),
    STR("log.level", log_level, "info", "debug|info|warn|error", "lowest level logged"),
    STR("log.format", log_format, "text", "text|json", "log line format"),
    STR("nats.url", nats_url, "nats://127.0.0.1:4222", NULL, "NATS server URL, or a comma-separated list (a cluster's nodes)"),
    STR("redis.url", redis_url, "redis://127.0.0.1:6379", NULL,
        "Redis registry URL (redis://[user[:password]@]host:port[/db])"),
    STR("nats.user", nats_user, "", NULL, "NATS user name (password from nats.password_file)"),
    STR("nats.password_file", nats_password_file, "", NULL, "file whose first line is the NATS password"),
    STR("nats.creds", nats_creds, "", NULL, "NATS credentials file (JWT and nkey seed) instead of a user"),
    STR("nats.tls_ca", nats_tls_ca, "", NULL, "CA certificates (PEM) to verify the NATS server; set: TLS on"),
    STR("nats.tls_cert", nats_tls_cert, "", NULL, "client certificate (PEM) for NATS TLS, with nats.tls_key"),
    STR("nats.tls_key", nats_tls_key, "", NULL, "client private key (PEM) for NATS TLS"),
    STR("redis.user", redis_user, "", NULL, "Redis ACL user (password from redis.password_file)"),
    STR("redis.password_file", redis_password_file, "", NULL, "file whose first line is the Redis password"),
    STR("redis.tls_ca", redis_tls_ca, "", NULL, "CA certificates (PEM) to verify Redis for rediss:// URLs (default: the system's)"),
    STR("redis.tls_cert", redis_tls_cert, "", NULL, "client certificate (PEM) for rediss://, with redis.tls_key"),
    STR("redis.tls_key", redis_tls_key, "", NULL, "client private key (PEM) for rediss://"),
    INT("world.id", world_id, "0", 0, UINT32_MAX, "world id"),
    DBL("world.cell_size", world_cell_size, "100", 1, 1e7, "side of a root cell in world units"),
    INT("world.x0", world_x0, "-2", -1000000, 1000000, "x of the first root cell"),
    INT("world.y0", world_y0, "-2", -1000000, 1000000, "y of the first root cell"),
    INT("world.width", world_width, "4", 1, 4096, "root cells along x"),
    INT("world.height", world_height, "4", 1, 4096, "root cells along y"),
    STR("world.workers", world_workers, "w1,w2", NULL, "comma list of worker ids the cells are split between"),
    STR("world.assign", world_assign, "", NULL, "comma list of cx:cy=worker overriding the default split"),
    INT("stream.max_age_s", stream_max_age_s, "3600", 0, INT32_MAX, "input stream retention in seconds"),
    STR("stream.storage", stream_storage, "file", "file|memory", "JetStream storage"),
    INT("stream.replicas", stream_replicas, "1", 1, 5, "replicas of the input and checkpoint streams (3 on a 3-node cluster)"),
    INT("stream.max_bytes", stream_max_bytes, "1073741824", -1, INT64_MAX,
        "input stream retention in bytes (oldest inputs go first; -1: no limit)"),
    ADDR("gateway.listen", gateway_listen, "127.0.0.1:7400", "client TCP listen address host:port"),
    INT("gateway.id", gateway_id, "1", 0, UINT32_MAX, "gateway id"),
    INT("gateway.max_frame", gateway_max_frame, "65536", 64, 16 * 1024 * 1024, "largest client frame in bytes"),
    INT("gateway.max_clients", gateway_max_clients, "10000", 1, 1000000, "most concurrent clients"),
    INT("gateway.rate_limit", gateway_rate_limit, "200", 1, 1000000, "frames per second per client"),
    INT("gateway.tick_hz", gateway_tick_hz, "20", 1, 1000,
        "unused: kept so existing configs load; Deltas now go out as state arrives"),
    INT("gateway.aoi_radius", gateway_aoi_radius, "1", 0, 8,
        "retired: with aoi.radius 0, the radius is (this + 0.5) x world.cell_size"),
    STR("worker.id", worker_id, "w1", NULL, "worker id"),
    INT("worker.tick_hz", worker_tick_hz, "20", 1, 1000, "simulation ticks per second"),
    INT("worker.capacity", worker_capacity, "5000", 1, 10000000, "entities the worker is sized for"),
    INT("worker.hb_ms", worker_hb_ms, "250", 10, 60000, "heartbeat interval in milliseconds"),
    INT("worker.checkpoint_ms", worker_checkpoint_ms, "1000", 10, 3600000,
        "how often each cell's checkpoint is written, in milliseconds"),
    INT("worker.inbox_ring", worker_inbox_ring, "65536", 16, 16777216,
        "input messages waiting for the tick thread, all cells together (rounded up to a power of two); "
        "when full, the input consumer starts again before the first message that did not fit"),
    DBL("worker.max_speed", worker_max_speed, "50", 0, 1e6, "entity speed limit in world units per second"),
    INT("orch.hb_ttl_ms", orch_hb_ttl_ms, "1500", 100, 600000, "worker liveness TTL in milliseconds"),
    INT("orch.status_ms", orch_status_ms, "0", 0, 3600000, "status log interval in milliseconds (0: off)"),
    INT("orch.lock_ttl_ms", orch_lock_ttl_ms, "2000", 100, 600000, "orchestrator leader lock TTL in milliseconds"),
    INT("orch.handover_timeout_ms", orch_handover_timeout_ms, "1000", 10, 600000,
        "timeout of each handover request to a worker, in milliseconds"),
    INT("orch.precopy_timeout_ms", orch_precopy_timeout_ms, "10000", 10, 600000,
        "timeout of a handover's PREPARE (the source copies the whole cell to the target; large cells take "
        "longer), in milliseconds"),
    INT("orch.recovery_grace_ms", orch_recovery_grace_ms, "5000", 0, 3600000,
        "after gaining the lead, cells of workers never seen alive are left alone this long"),
    INT("orch.rebalance", orch_rebalance, "1", 0, 1, "1: move cells from hot to cold workers, 0: never"),
    INT("orch.rebalance_interval_ms", orch_rebalance_interval_ms, "2000", 10, 3600000,
        "how often worker loads are evaluated, in milliseconds"),
    INT("orch.rebalance_cooldown_ms", orch_rebalance_cooldown_ms, "10000", 0, 86400000,
        "least time between two rebalancing plans (each moves cells in proportion to the imbalance), in milliseconds"),
    DBL("orch.rebalance_threshold", orch_rebalance_threshold, "0.25", 0, 100,
        "a worker whose load exceeds (1+threshold) x the mean is hot"),
    INT("orch.rebalance_hysteresis", orch_rebalance_hysteresis, "3", 1, 1000,
        "consecutive evaluations a worker must be hot before a cell moves"),
    INT("orch.max_handovers", orch_max_handovers, "8", 1, 256,
        "live handovers the orchestrator drives at once (ctl, drains and rebalancing share them)"),
    INT("sim.players", sim_players, "1000", 0, 1000000, "synthetic players"),
    INT("sim.rate_hz", sim_rate_hz, "5", 1, 1000, "inputs per player per second"),
    INT("sim.duration_s", sim_duration_s, "0", 0, INT32_MAX, "run time in seconds (0: until signalled)"),
    INT("sim.seed", sim_seed, "1", 0, INT64_MAX, "random seed"),
    DBL("sim.speed", sim_speed, "20", 0, 1e6, "player speed in world units per second"),
    /* HTTP listeners: /metrics, /healthz, /readyz ("" = off) */
    STR("gateway.http_listen", gateway_http_listen, "", NULL, "metrics and health HTTP listen address host:port"),
    STR("worker.http_listen", worker_http_listen, "", NULL, "metrics and health HTTP listen address host:port"),
    STR("orch.http_listen", orch_http_listen, "", NULL, "metrics and health HTTP listen address host:port"),
    STR("sim.http_listen", sim_http_listen, "", NULL, "metrics and health HTTP listen address host:port"),
    /* gateway: player connections, resume, auth */
    INT("gateway.hello_timeout_s", gateway_hello_timeout_s, "5", 1, 3600,
        "a connection without a complete Hello or Join this long is closed"),
    INT("gateway.idle_timeout_s", gateway_idle_timeout_s, "15", 1, 86400,
        "a connection that sends no frame (a Ping counts) this long is closed"),
    INT("gateway.max_backlog", gateway_max_backlog, "131072", 1024, 1073741824,
        "unsent output bytes above which a client's Deltas are withheld and it counts as a slow reader"),
    INT("gateway.coalesce_ms", gateway_coalesce_ms, "0", 0, 1000,
        "a fan-out waits this long at most for the cells that sent state in the last two ticks to send it in "
        "this one, so a client gets one Delta per tick (0: forward state as it arrives)"),
    INT("gateway.fanout_threads", gateway_fanout_threads, "-1", -1, 8,
        "threads that write a fan-out's frames to the clients beside the loop (-1: one per CPU it may use "
        "after the first, a container's CPU limit included, at most 2; 0: the loop writes alone)"),
    INT("gateway.slow_close_s", gateway_slow_close_s, "5", 1, 3600,
        "a slow reader above gateway.max_backlog this long is closed"),
    INT("gateway.max_conns_per_ip", gateway_max_conns_per_ip, "0", 0, 1000000,
        "connections per client IP address (0: no limit)"),
    INT("gateway.keepalive_s", gateway_keepalive_s, "10", 1, 7200, "TCP keepalive idle time of client sockets"),
    INT("gateway.resume_s", gateway_resume_s, "30", 1, 86400,
        "a disconnected player's entity is despawned this long after unless resumed"),
    STR("gateway.resume_secret", gateway_resume_secret, "", NULL,
        "HMAC-SHA256 key of resume tokens, the same on every gateway and worker (\"\": random per gateway "
        "process; workers then let any gateway take over a detached player)"),
    INT("gateway.auth.required", gateway_auth_required, "0", 0, 1, "1: Hello must carry a valid JWT"),
    STR("gateway.auth.secret", gateway_auth_secret, "", NULL, "HS256 key of player JWTs"),
    STR("gateway.auth.public_key", gateway_auth_public_key, "", NULL, "PEM public key file for RS256 player JWTs"),
    STR("gateway.auth.issuer", gateway_auth_issuer, "", NULL, "required JWT iss (\"\": not checked)"),
    STR("gateway.auth.audience", gateway_auth_audience, "", NULL, "required JWT aud (\"\": not checked)"),
    /* gateway: WebSocket and the browser map */
    STR("gateway.ws_listen", gateway_ws_listen, "", NULL,
        "WebSocket (/ws) and world map (/) listen address host:port (\"\": off)"),
    STR("gateway.ws_origins", gateway_ws_origins, "", NULL,
        "allowed WebSocket Origins, comma-separated (\"\": same host only, \"*\": any)"),
    STR("gateway.web_dir", gateway_web_dir, "", NULL,
        "directory to serve the map page from (\"\": the copy built into the binary)"),
    INT("gateway.map_max_dots", gateway_map_max_dots, "2000", 0, 20000,
        "entities the world map draws as dots at most (0: none; while a map is open the gateway "
        "subscribes to every live cell's state)"),
    /* ghosts and the spatial query (worker) */
    DBL("aoi.interact_radius", aoi_interact_radius, "2", 0.001, 1e6,
        "EntityState.nearby counts the other entities within this distance, owned or ghost (world units)"),
    DBL("ghost.margin", ghost_margin, "4", 0, 1e6,
        "entities within this distance of a cell's border are published to its neighbours' owners as ghosts "
        "(world units; at least aoi.interact_radius is used)"),
    INT("ghost.keyframe_ticks", ghost_keyframe_ticks, "10", 1, 100000,
        "ticks between two ghost keyframes (every border entity); deltas go in between"),
    /* cells at depth: automatic split and merge (orchestrator) */
    INT("world.max_depth", world_max_depth, "4", 0, 16, "deepest quadtree level a cell may be split to"),
    INT("split.auto", split_auto, "1", 0, 1, "1: the orchestrator splits hot cells and merges cold ones by load"),
    INT("split.max_entities", split_max_entities, "400", 1, 100000000,
        "a cell holding more entities than this is hot"),
    DBL("split.max_tick_share", split_max_tick_share, "0.5", 0, 100,
        "a cell whose share of its worker's tick budget exceeds this is hot (0: not used)"),
    INT("split.windows", split_windows, "8", 1, 1000, "consecutive hot load reports (heartbeats) before a cell splits"),
    INT("split.cooldown_s", split_cooldown_s, "10", 0, 86400,
        "a cell is not split or merged again this long after its last split or merge"),
    INT("merge.max_entities", merge_max_entities, "100", 0, 100000000,
        "four children holding fewer entities than this together are cold"),
    INT("merge.windows", merge_windows, "20", 1, 1000, "consecutive cold load reports (heartbeats) before children merge"),
    /* area of interest (gateway) */
    DBL("aoi.radius", aoi_radius, "0", 0, 1e9,
        "world units a client sees around its entity (0: (gateway.aoi_radius + 0.5) x world.cell_size)"),
    DBL("aoi.hysteresis", aoi_hysteresis, "0", 0, 1e9,
        "an entity shown to a client stays until it is this far beyond aoi.radius (0: 10% of the radius)"),
    /* game modules (worker) */
    STR("worker.game", worker_game, "", NULL,
        "game module shared object to load (\"\" or \"move\": the built-in movement; see docs/game-modules.md)"),
    STR("worker.game_config", worker_game_config, "", NULL, "configuration string given to the game module's load()"),
    INT("worker.game_budget_ms", worker_game_budget_ms, "10", 1, 60000,
        "a game module callback running longer than this is counted and logged as an overrun"),
    STR("worker.fault_file", worker_fault_file, "", NULL,
        "a game module crash is also appended here; kept across restarts, it carries "
        "tessera_worker_game_faults_total on (\"\": none)"),
};

/* clang-format on */

#define NKEYS (sizeof keys / sizeof keys[0])
#define CONFIG_KEY 0 /* index of "config" in keys[] */
#define ENV_PREFIX "TESSERA_"
#define YAML_MAX_DEPTH 4

static void seterr(char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errcap, const char *fmt, ...)
{
    if (!err || errcap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

static const key_def_t *find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strlen(keys[i].name) == len && memcmp(keys[i].name, name, len) == 0) return &keys[i];
    }
    return NULL;
}

/* True if name is a section ("gateway") of some key. */
static bool is_section(const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < NKEYS; i++) {
        if (strncmp(keys[i].name, name, len) == 0 && keys[i].name[len] == '.') return true;
    }
    return false;
}

static void env_name(const key_def_t *k, char *buf, size_t cap)
{
    size_t n = snprintf(buf, cap, "%s", ENV_PREFIX);
    for (const char *p = k->name; *p && n + 1 < cap; p++)
        buf[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    buf[n < cap ? n : cap - 1] = '\0';
}

static bool trimmed_number(const char *s, char *buf, size_t cap)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    if (n == 0 || n >= cap) return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return true;
}

/* Validates text for key k and stores it. src names where the value came
 * from ("flag --x", "env X", "file:line"), or is NULL. */
static ts_status_t set_value(ts_config_t *cfg, const key_def_t *k, const char *text, const char *src,
                             char *err, size_t errcap)
{
    char num[64];
    const char *pre = src ? src : "";
    const char *sep = src ? ": " : "";
    char *field = (char *)cfg + k->off;

    switch (k->type) {
    case KEY_STR: {
        const char *store = text;
        if (k->choices) {
            store = NULL;
            const char *c = k->choices;
            while (*c) {
                size_t n = strcspn(c, "|");
                if (strlen(text) == n && strncasecmp(c, text, n) == 0) {
                    store = c;
                    break;
                }
                c += n + (c[n] == '|');
            }
            if (!store) {
                seterr(err, errcap, "%s%s%s: \"%.64s\" is not one of %s", pre, sep, k->name, text,
                       k->choices);
                return TS_ERR_CONFIG;
            }
        }
        if (k->hostport) {
            char host[256];
            int port;
            if (ts_config_split_hostport(text, host, sizeof host, &port) != TS_OK) {
                seterr(err, errcap, "%s%s%s: \"%.64s\" is not host:port", pre, sep, k->name, text);
                return TS_ERR_CONFIG;
            }
        }
        size_t n = k->choices ? strcspn(store, "|") : strlen(store);
        char *copy = malloc(n + 1);
        if (!copy) {
            seterr(err, errcap, "%s: out of memory", k->name);
            return TS_ERR_NOMEM;
        }
        memcpy(copy, store, n);
        copy[n] = '\0';
        char **slot = (char **)(void *)field;
        free(*slot);
        *slot = copy;
        return TS_OK;
    }
    case KEY_INT: {
        char *end = NULL;
        long long v = 0;
        bool ok = trimmed_number(text, num, sizeof num);
        if (ok) {
            errno = 0;
            v = strtoll(num, &end, 10);
            ok = end != num && *end == '\0';
        }
        if (!ok) {
            seterr(err, errcap, "%s%s%s: \"%.64s\" is not an integer", pre, sep, k->name, text);
            return TS_ERR_CONFIG;
        }
        if (errno == ERANGE || v < k->imin || v > k->imax) {
            seterr(err, errcap, "%s%s%s: %.64s is out of range (%lld..%lld)", pre, sep, k->name, num,
                   (long long)k->imin, (long long)k->imax);
            return TS_ERR_CONFIG;
        }
        *(int64_t *)(void *)field = (int64_t)v;
        return TS_OK;
    }
    case KEY_DBL: {
        char *end = NULL;
        double v = 0;
        bool ok = trimmed_number(text, num, sizeof num);
        if (ok) {
            errno = 0;
            v = strtod(num, &end);
            ok = end != num && *end == '\0' && !isnan(v);
        }
        if (!ok) {
            seterr(err, errcap, "%s%s%s: \"%.64s\" is not a number", pre, sep, k->name, text);
            return TS_ERR_CONFIG;
        }
        if (errno == ERANGE || !isfinite(v) || v < k->dmin || v > k->dmax) {
            seterr(err, errcap, "%s%s%s: %.64s is out of range (%g..%g)", pre, sep, k->name, num, k->dmin,
                   k->dmax);
            return TS_ERR_CONFIG;
        }
        *(double *)(void *)field = v;
        return TS_OK;
    }
    }
    return TS_ERR_INVALID;
}

/* ---- YAML file ------------------------------------------------------------ */

typedef struct {
    ts_config_t *cfg;
    yaml_document_t *doc;
    const char *path;
    bool seen[NKEYS];
    char *err;
    size_t errcap;
} yaml_ctx_t;

static const char *scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* A plain empty, "~" or "null" scalar is YAML's null. */
static bool scalar_is_null(const yaml_node_t *n)
{
    const char *s = scalar(n);
    return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0);
}

/* Joins the scalar items of a sequence with ','. Caller frees *out. */
static ts_status_t join_sequence(yaml_ctx_t *y, const char *key, yaml_node_t *seq, char **out)
{
    size_t len = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
        yaml_node_t *item = yaml_document_get_node(y->doc, *it);
        if (!item || item->type != YAML_SCALAR_NODE) {
            seterr(y->err, y->errcap, "%s:%zu: %s: sequence items must be plain values", y->path,
                   (item ? item->start_mark.line : seq->start_mark.line) + 1, key);
            return TS_ERR_CONFIG;
        }
        len += strlen(scalar(item)) + 1;
    }
    char *s = malloc(len + 1);
    if (!s) return TS_ERR_NOMEM;
    size_t n = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
        const char *v = scalar(yaml_document_get_node(y->doc, *it));
        if (n > 0) s[n++] = ',';
        memcpy(s + n, v, strlen(v));
        n += strlen(v);
    }
    s[n] = '\0';
    *out = s;
    return TS_OK;
}

static ts_status_t apply_yaml_value(yaml_ctx_t *y, const char *name, yaml_node_t *key_node, yaml_node_t *val)
{
    size_t line = key_node->start_mark.line + 1;
    const key_def_t *k = find_key(name, strlen(name));
    if (!k) {
        if (is_section(name))
            seterr(y->err, y->errcap, "%s:%zu: \"%s\" is a section; expected a mapping of its keys", y->path,
                   line, name);
        else
            seterr(y->err, y->errcap, "%s:%zu: unknown key \"%s\"", y->path, line, name);
        return TS_ERR_CONFIG;
    }
    if (k == &keys[CONFIG_KEY]) {
        seterr(y->err, y->errcap, "%s:%zu: \"config\" cannot be set inside a config file", y->path, line);
        return TS_ERR_CONFIG;
    }
    size_t idx = (size_t)(k - keys);
    if (y->seen[idx]) {
        seterr(y->err, y->errcap, "%s:%zu: duplicate key \"%s\"", y->path, line, name);
        return TS_ERR_CONFIG;
    }
    y->seen[idx] = true;

    char src[512];
    snprintf(src, sizeof src, "%s:%zu", y->path, line);
    if (val->type == YAML_MAPPING_NODE) {
        seterr(y->err, y->errcap, "%s: %s: expected a value, got a mapping", src, name);
        return TS_ERR_CONFIG;
    }
    if (val->type == YAML_SEQUENCE_NODE) {
        char *joined = NULL;
        ts_status_t st = join_sequence(y, name, val, &joined);
        if (st == TS_OK) st = set_value(y->cfg, k, joined, src, y->err, y->errcap);
        free(joined);
        return st;
    }
    return set_value(y->cfg, k, scalar_is_null(val) ? "" : scalar(val), src, y->err, y->errcap);
}

static ts_status_t walk_mapping(yaml_ctx_t *y, yaml_node_t *map, const char *prefix, int depth)
{
    if (depth > YAML_MAX_DEPTH) {
        seterr(y->err, y->errcap, "%s:%zu: mappings nested too deeply", y->path, map->start_mark.line + 1);
        return TS_ERR_CONFIG;
    }
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(y->doc, p->value);
        if (!kn || !vn) continue;
        if (kn->type != YAML_SCALAR_NODE) {
            seterr(y->err, y->errcap, "%s:%zu: keys must be plain names", y->path, kn->start_mark.line + 1);
            return TS_ERR_CONFIG;
        }
        char name[256];
        int n = snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", scalar(kn));
        if (n < 0 || (size_t)n >= sizeof name) {
            seterr(y->err, y->errcap, "%s:%zu: key too long", y->path, kn->start_mark.line + 1);
            return TS_ERR_CONFIG;
        }
        ts_status_t st;
        if (vn->type == YAML_MAPPING_NODE && !find_key(name, strlen(name))) {
            if (!is_section(name)) {
                seterr(y->err, y->errcap, "%s:%zu: unknown section \"%s\"", y->path, kn->start_mark.line + 1,
                       name);
                return TS_ERR_CONFIG;
            }
            st = walk_mapping(y, vn, name, depth + 1);
        } else {
            st = apply_yaml_value(y, name, kn, vn);
        }
        if (st != TS_OK) return st;
    }
    return TS_OK;
}

static ts_status_t load_file(ts_config_t *cfg, const char *path, const char *src, char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        seterr(err, errcap, "%s: cannot open config file \"%s\": %s", src, path, strerror(errno));
        return TS_ERR_CONFIG;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        seterr(err, errcap, "%s: config file \"%s\" is a directory", src, path);
        return TS_ERR_CONFIG;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    ts_status_t st = TS_OK;
    bool have_doc = false;

    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        seterr(err, errcap, "%s: out of memory", path);
        return TS_ERR_NOMEM;
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        seterr(err, errcap, "%s:%zu:%zu: invalid YAML: %s%s%s", path, parser.problem_mark.line + 1,
               parser.problem_mark.column + 1, parser.problem ? parser.problem : "parse error",
               parser.context ? " " : "", parser.context ? parser.context : "");
        st = TS_ERR_CONFIG;
        goto cleanup;
    }
    have_doc = true;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) goto cleanup; /* empty file */
    if (root->type == YAML_SCALAR_NODE && scalar_is_null(root)) goto cleanup;
    if (root->type != YAML_MAPPING_NODE) {
        seterr(err, errcap, "%s:%zu: the top level must be a mapping of keys", path,
               root->start_mark.line + 1);
        st = TS_ERR_CONFIG;
        goto cleanup;
    }
    yaml_ctx_t y = {.cfg = cfg, .doc = &doc, .path = path, .err = err, .errcap = errcap};
    st = walk_mapping(&y, root, "", 0);
    if (st == TS_OK) {
        yaml_document_t extra;
        if (!yaml_parser_load(&parser, &extra)) {
            seterr(err, errcap, "%s:%zu: invalid YAML after the first document", path,
                   parser.problem_mark.line + 1);
            st = TS_ERR_CONFIG;
        } else {
            if (yaml_document_get_root_node(&extra)) {
                seterr(err, errcap, "%s: expected one YAML document, found several", path);
                st = TS_ERR_CONFIG;
            }
            yaml_document_delete(&extra);
        }
    }
cleanup:
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return st;
}

/* ---- flags ---------------------------------------------------------------- */

typedef enum { ARG_FLAG, ARG_POSITIONAL, ARG_END, ARG_DONE } arg_kind_t;

/* Classifies argv[*i] and advances *i past it (and past its value). For a
 * flag, *name and *namelen give the key and *value its text (NULL if missing). */
static arg_kind_t next_arg(int argc, char **argv, int *i, const char **name, size_t *namelen,
                           const char **value)
{
    if (*i >= argc) return ARG_DONE;
    const char *a = argv[(*i)++];
    if (strcmp(a, "--") == 0) return ARG_END;
    if (strncmp(a, "--", 2) != 0) return ARG_POSITIONAL;
    *name = a + 2;
    const char *eq = strchr(*name, '=');
    if (eq) {
        *namelen = (size_t)(eq - *name);
        *value = eq + 1;
    } else {
        *namelen = strlen(*name);
        *value = *i < argc ? argv[(*i)++] : NULL;
    }
    return ARG_FLAG;
}

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* First pass: syntax of every flag and the config file flag. */
static ts_status_t check_flags(int argc, char **argv, const char **config_flag, char *err, size_t errcap)
{
    int i = 1;
    const char *name = NULL, *value = NULL;
    size_t len = 0;
    arg_kind_t kind;
    while ((kind = next_arg(argc, argv, &i, &name, &len, &value)) != ARG_DONE && kind != ARG_END) {
        if (kind != ARG_FLAG) continue;
        const key_def_t *k = find_key(name, len);
        if (!k) {
            seterr(err, errcap, "unknown flag --%.*s (see --help)", (int)len, name);
            return TS_ERR_CONFIG;
        }
        if (!value) {
            seterr(err, errcap, "flag --%s needs a value", k->name);
            return TS_ERR_CONFIG;
        }
        if (k == &keys[CONFIG_KEY]) *config_flag = value;
    }
    return TS_OK;
}

/* Second pass: applies flags and moves positional arguments to argv[1..]. */
static ts_status_t apply_flags(ts_config_t *cfg, int argc, char **argv, char ***rest, int *nrest, char *err,
                               size_t errcap)
{
    int i = 1, npos = 0;
    const char *name = NULL, *value = NULL;
    size_t len = 0;
    arg_kind_t kind;
    char src[160];
    while ((kind = next_arg(argc, argv, &i, &name, &len, &value)) != ARG_DONE) {
        if (kind == ARG_END) {
            while (i < argc)
                argv[1 + npos++] = argv[i++];
            break;
        }
        if (kind == ARG_POSITIONAL) {
            if (!rest) {
                seterr(err, errcap, "unexpected argument \"%.64s\" (see --help)", argv[i - 1]);
                return TS_ERR_CONFIG;
            }
            argv[1 + npos++] = argv[i - 1];
            continue;
        }
        const key_def_t *k = find_key(name, len);
        snprintf(src, sizeof src, "flag --%s", k->name);
        ts_status_t st = set_value(cfg, k, value, src, err, errcap);
        if (st != TS_OK) return st;
    }
    if (rest) {
        *rest = argv + (argc > 0);
        if (nrest) *nrest = npos;
    }
    return TS_OK;
}

/* ---- public --------------------------------------------------------------- */

ts_status_t ts_config_load(ts_config_t *cfg, int argc, char **argv, char ***rest, int *nrest, char *err,
                           size_t errcap)
{
    ts_status_t st;
    char src[160];

    if (!cfg) {
        seterr(err, errcap, "ts_config_load: NULL config");
        return TS_ERR_INVALID;
    }
    memset(cfg, 0, sizeof *cfg);
    seterr(err, errcap, "%s", "");
    if (!argv || argc < 0) argc = 0;
    if (rest) *rest = argv ? argv + (argc > 0) : NULL;
    if (nrest) *nrest = 0;

    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (is_help(argv[i])) {
            ts_config_usage(stdout);
            seterr(err, errcap, "help");
            return TS_ERR_CONFIG;
        }
    }

    const char *config_flag = NULL;
    st = check_flags(argc, argv, &config_flag, err, errcap);
    if (st != TS_OK) return st;

    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].def && (st = set_value(cfg, &keys[i], keys[i].def, "default", err, errcap)) != TS_OK)
            return st;
    }

    const char *env_config = getenv(ENV_PREFIX "CONFIG");
    if (config_flag && *config_flag) {
        if ((st = load_file(cfg, config_flag, "flag --config", err, errcap)) != TS_OK) return st;
    } else if (!config_flag && env_config && *env_config) {
        if ((st = load_file(cfg, env_config, "env " ENV_PREFIX "CONFIG", err, errcap)) != TS_OK) return st;
    }

    for (size_t i = 0; i < NKEYS; i++) {
        char var[96];
        env_name(&keys[i], var, sizeof var);
        const char *v = getenv(var);
        if (!v || !*v) continue;
        snprintf(src, sizeof src, "env %s", var);
        if ((st = set_value(cfg, &keys[i], v, src, err, errcap)) != TS_OK) return st;
    }

    return apply_flags(cfg, argc, argv, rest, nrest, err, errcap);
}

ts_status_t ts_config_set(ts_config_t *cfg, const char *key, const char *value, char *err, size_t errcap)
{
    if (!cfg || !key || !value) {
        seterr(err, errcap, "ts_config_set: NULL argument");
        return TS_ERR_INVALID;
    }
    const key_def_t *k = find_key(key, strlen(key));
    if (!k) {
        seterr(err, errcap, "unknown key \"%.64s\"", key);
        return TS_ERR_CONFIG;
    }
    return set_value(cfg, k, value, NULL, err, errcap);
}

void ts_config_free(ts_config_t *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type == KEY_STR) {
            char **slot = (char **)(void *)((char *)cfg + keys[i].off);
            free(*slot);
            *slot = NULL;
        }
    }
    memset(cfg, 0, sizeof *cfg);
}

void ts_config_usage(FILE *out)
{
    fprintf(out, "Options (flag --name=VALUE or --name VALUE; environment variable; default):\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const key_def_t *k = &keys[i];
        char var[96], flag[96];
        env_name(k, var, sizeof var);
        const char *meta = k->type == KEY_INT ? "INT" : k->type == KEY_DBL ? "NUM" : "STR";
        if (k->choices) meta = k->choices;
        if (k == &keys[CONFIG_KEY]) meta = "FILE";
        snprintf(flag, sizeof flag, "--%s=%s", k->name, meta);
        fprintf(out, "  %-34s %-28s %s", flag, var, k->help);
        if (k->def) fprintf(out, " (default \"%s\")", k->def);
        fputc('\n', out);
    }
    fprintf(out, "Precedence: default < config file < environment < flags. --help prints this.\n");
}

ts_status_t ts_config_split_hostport(const char *s, char *hostbuf, size_t hostcap, int *port)
{
    if (!s || !hostbuf || hostcap == 0 || !port) return TS_ERR_INVALID;
    const char *host = s, *colon;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return TS_ERR_PARSE;
        host = s + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return TS_ERR_PARSE;
        hostlen = (size_t)(colon - s);
        if (memchr(s, ':', hostlen)) return TS_ERR_PARSE; /* bare IPv6 needs brackets */
    }
    if (hostlen == 0) return TS_ERR_PARSE;
    if (hostlen >= hostcap) return TS_ERR_RANGE;
    const char *p = colon + 1;
    if (*p == '\0') return TS_ERR_PARSE;
    long v = 0;
    for (; *p; p++) {
        if (!isdigit((unsigned char)*p)) return TS_ERR_PARSE;
        v = v * 10 + (*p - '0');
        if (v > 65535) return TS_ERR_RANGE;
    }
    memcpy(hostbuf, host, hostlen);
    hostbuf[hostlen] = '\0';
    *port = (int)v;
    return TS_OK;
}
