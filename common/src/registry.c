/* The cell registry over hiredis (blocking API, one connection per
 * ts_registry_t). Every multi-key change is one Lua script, so Redis applies
 * it atomically: a cell's epoch only ever grows, by exactly one per
 * ownership change, and every change bumps the world's version.
 *
 * A broken connection is re-established once per call. Reads and idempotent
 * writes are then re-sent; the epoch compare-and-set is not (it may already
 * have been applied), it fails with TS_ERR_UNAVAILABLE and the caller re-reads.
 * Unexpected replies never crash: they give TS_ERR_REGISTRY and a log line. */
#include "tessera/registry.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "tessera/log.h"
#include "tessera/util.h"

#define CONNECT_TIMEOUT_MS 2000
#define COMMAND_TIMEOUT_MS 2000
#define KEY_MAX 256

struct ts_registry {
    redisContext *ctx;
    char host[256];
    int port;
    int db;
};

/* KEYS: cell hash, version. ARGV: expected epoch, owner, state.
 * Returns {1, new epoch, version}, {0, current epoch} or {-1}. */
static const char CAS_LUA[] =
    "local e = redis.call('HGET', KEYS[1], 'epoch')\n"
    "if not e then return {-1} end\n"
    "if e ~= ARGV[1] then return {0, tonumber(e)} end\n"
    "redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'state', ARGV[3])\n"
    "local ne = redis.call('HINCRBY', KEYS[1], 'epoch', 1)\n"
    "local v = redis.call('INCR', KEYS[2])\n"
    "return {1, ne, v}\n";

/* KEYS: cell hash, cells set, version. ARGV: owner, state, cell key, parent
 * key ('' for a root cell). Returns {1, version} or {0}. */
static const char CREATE_LUA[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end\n"
    "redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', 1, 'state', ARGV[2])\n"
    "if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'parent', ARGV[4]) end\n"
    "redis.call('SADD', KEYS[2], ARGV[3])\n"
    "local v = redis.call('INCR', KEYS[3])\n"
    "return {1, v}\n";

/* KEYS: alive key, worker hash, workers set. ARGV: ttl ms, capacity, now ms, id. */
static const char ALIVE_LUA[] =
    "redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])\n"
    "redis.call('HSET', KEYS[2], 'capacity', ARGV[2])\n"
    "redis.call('HSETNX', KEYS[2], 'started_ms', ARGV[3])\n"
    "redis.call('SADD', KEYS[3], ARGV[4])\n"
    "return 1\n";

/* KEYS: lock. ARGV: holder, ttl ms. Returns 1 if holder holds it now. */
static const char LOCK_LUA[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end\n"
    "if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end\n"
    "return 0\n";

static const char UNLOCK_LUA[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

static const char *const state_names[] = {"active", "handover", "split", "retired"};

const char *ts_cell_state_str(ts_cell_state_t s)
{
    if ((unsigned)s >= sizeof state_names / sizeof state_names[0])
        return "unknown";
    return state_names[s];
}

ts_status_t ts_cell_state_parse(const char *s, ts_cell_state_t *out)
{
    if (s == NULL || out == NULL)
        return TS_ERR_INVALID;
    for (size_t i = 0; i < sizeof state_names / sizeof state_names[0]; i++) {
        if (strcmp(s, state_names[i]) == 0) {
            *out = (ts_cell_state_t)i;
            return TS_OK;
        }
    }
    return TS_ERR_PARSE;
}

/* ---- connection ---------------------------------------------------------- */

static struct timeval ms_tv(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* Parses redis://host:port[/db] ("redis://" and the port are optional;
 * IPv6 hosts go in brackets). */
static ts_status_t parse_url(ts_registry_t *reg, const char *url)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) == 0)
        p += 8;
    const char *host_end;
    const char *rest;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (host_end == NULL)
            return TS_ERR_PARSE;
        p++;
        rest = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        rest = host_end;
    }
    size_t hlen = (size_t)(host_end - p);
    if (hlen == 0 || hlen >= sizeof reg->host)
        return TS_ERR_PARSE;
    memcpy(reg->host, p, hlen);
    reg->host[hlen] = '\0';

    reg->port = 6379;
    reg->db = 0;
    char num[24];
    if (*rest == ':') {
        rest++;
        size_t n = strcspn(rest, "/");
        int64_t port;
        if (n == 0 || n >= sizeof num)
            return TS_ERR_PARSE;
        memcpy(num, rest, n);
        num[n] = '\0';
        if (ts_parse_i64(num, &port) != TS_OK || port < 1 || port > 65535)
            return TS_ERR_PARSE;
        reg->port = (int)port;
        rest += n;
    }
    if (*rest == '/') {
        rest++;
        int64_t db;
        if (*rest != '\0') {
            if (ts_parse_i64(rest, &db) != TS_OK || db < 0 || db > 1000000)
                return TS_ERR_PARSE;
            reg->db = (int)db;
        }
    } else if (*rest != '\0') {
        return TS_ERR_PARSE;
    }
    return TS_OK;
}

static ts_status_t open_ctx(ts_registry_t *reg)
{
    redisContext *c = redisConnectWithTimeout(reg->host, reg->port, ms_tv(CONNECT_TIMEOUT_MS));
    if (c == NULL) {
        ts_warn("registry: cannot allocate a connection to %s:%d", reg->host, reg->port);
        return TS_ERR_NOMEM;
    }
    if (c->err) {
        ts_warn("registry: connect to %s:%d failed: %s", reg->host, reg->port, c->errstr);
        redisFree(c);
        return TS_ERR_UNAVAILABLE;
    }
    if (redisSetTimeout(c, ms_tv(COMMAND_TIMEOUT_MS)) != REDIS_OK) {
        ts_warn("registry: cannot set the command timeout: %s", c->errstr);
        redisFree(c);
        return TS_ERR_UNAVAILABLE;
    }
    if (reg->db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", reg->db);
        bool ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        if (!ok)
            ts_warn("registry: SELECT %d failed: %s", reg->db,
                    r == NULL ? c->errstr : (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
        if (r != NULL)
            freeReplyObject(r);
        if (!ok) {
            redisFree(c);
            return TS_ERR_UNAVAILABLE;
        }
    }
    if (reg->ctx != NULL)
        redisFree(reg->ctx);
    reg->ctx = c;
    return TS_OK;
}

ts_status_t ts_registry_connect(ts_registry_t **out, const char *url)
{
    if (out == NULL || url == NULL)
        return TS_ERR_INVALID;
    *out = NULL;
    ts_registry_t *reg = calloc(1, sizeof *reg);
    if (reg == NULL)
        return TS_ERR_NOMEM;
    if (parse_url(reg, url) != TS_OK) {
        ts_error("registry: bad url '%s' (want redis://host:port[/db])", url);
        free(reg);
        return TS_ERR_CONFIG;
    }
    ts_status_t st = open_ctx(reg);
    if (st != TS_OK) {
        free(reg);
        return st;
    }
    *out = reg;
    return TS_OK;
}

void ts_registry_destroy(ts_registry_t *reg)
{
    if (reg == NULL)
        return;
    if (reg->ctx != NULL)
        redisFree(reg->ctx);
    free(reg);
}

/* ---- commands ------------------------------------------------------------ */

/* Runs one command. On TS_OK *out is a reply that is not an error (caller
 * frees). A Redis error reply gives TS_ERR_REGISTRY. An I/O failure
 * reconnects once and, if resend is true, sends the command again. */
static ts_status_t command(ts_registry_t *reg, bool resend, redisReply **out, int argc, const char **argv,
                           const size_t *lens)
{
    *out = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (reg->ctx == NULL || reg->ctx->err) {
            ts_status_t st = open_ctx(reg);
            if (st != TS_OK)
                return st;
        }
        redisReply *r = redisCommandArgv(reg->ctx, argc, argv, lens);
        if (r == NULL) {
            ts_warn("registry: %s: %s", argv[0], reg->ctx->errstr);
            redisFree(reg->ctx);
            reg->ctx = NULL;
            if (!resend) {
                open_ctx(reg);
                return TS_ERR_UNAVAILABLE;
            }
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            ts_warn("registry: %s: %s", argv[0], r->str ? r->str : "error");
            freeReplyObject(r);
            return TS_ERR_REGISTRY;
        }
        *out = r;
        return TS_OK;
    }
    return TS_ERR_UNAVAILABLE;
}

/* Runs a Lua script with nkeys keys followed by nargs arguments. */
static ts_status_t eval(ts_registry_t *reg, bool resend, redisReply **out, const char *script, int nkeys,
                        const char *const *keys, int nargs, const char *const *args)
{
    const char *argv[16];
    char nk[8];
    if (3 + nkeys + nargs > (int)(sizeof argv / sizeof argv[0]))
        return TS_ERR_INVALID;
    snprintf(nk, sizeof nk, "%d", nkeys);
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = script;
    argv[argc++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[argc++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[argc++] = args[i];
    return command(reg, resend, out, argc, argv, NULL);
}

static ts_status_t unexpected(redisReply *r, const char *what)
{
    ts_warn("registry: unexpected reply type %d to %s", r != NULL ? r->type : -1, what);
    if (r != NULL)
        freeReplyObject(r);
    return TS_ERR_REGISTRY;
}

static bool reply_int(const redisReply *r, long long *out)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return true;
    }
    if (r->type == REDIS_REPLY_STRING && r->str != NULL) {
        int64_t v;
        if (ts_parse_i64(r->str, &v) != TS_OK)
            return false;
        *out = v;
        return true;
    }
    return false;
}

static bool valid_id(const char *id)
{
    if (id == NULL || id[0] == '\0' || strlen(id) >= TS_WORKER_ID_MAX)
        return false;
    for (const char *p = id; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

/* ---- keys ------------------------------------------------------------------ */

static void world_key(char *buf, uint32_t world, const char *suffix)
{
    snprintf(buf, KEY_MAX, "ts:{w%" PRIu32 "}:%s", world, suffix);
}

static ts_status_t cell_key(char *buf, char *text, const ts_cell_t *cell)
{
    if (cell == NULL || !ts_cell_valid(cell) || ts_cell_format(cell, text, TS_CELL_STR_MAX) < 0)
        return TS_ERR_INVALID;
    snprintf(buf, KEY_MAX, "ts:{w%" PRIu32 "}:cell:%s", cell->world, text);
    return TS_OK;
}

/* ---- world ------------------------------------------------------------------- */

ts_status_t ts_registry_world_set(ts_registry_t *reg, const ts_world_t *w)
{
    if (reg == NULL || w == NULL || !(w->cell_size > 0) || w->width <= 0 || w->height <= 0)
        return TS_ERR_INVALID;
    char key[KEY_MAX], size[32], x0[16], y0[16], width[16], height[16];
    world_key(key, w->id, "meta");
    snprintf(size, sizeof size, "%.17g", w->cell_size);
    snprintf(x0, sizeof x0, "%" PRId32, w->x0);
    snprintf(y0, sizeof y0, "%" PRId32, w->y0);
    snprintf(width, sizeof width, "%" PRId32, w->width);
    snprintf(height, sizeof height, "%" PRId32, w->height);
    const char *argv[] = {"HSET", key, "cell_size", size, "x0", x0,
                          "y0", y0, "width", width, "height", height};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, (int)(sizeof argv / sizeof argv[0]), argv, NULL);
    if (r != NULL)
        freeReplyObject(r);
    return st;
}

static bool field_i32(const char *v, int32_t *out)
{
    int64_t n;
    if (ts_parse_i64(v, &n) != TS_OK || n < INT32_MIN || n > INT32_MAX)
        return false;
    *out = (int32_t)n;
    return true;
}

ts_status_t ts_registry_world_get(ts_registry_t *reg, uint32_t world, ts_world_t *out)
{
    if (reg == NULL || out == NULL)
        return TS_ERR_INVALID;
    char key[KEY_MAX];
    world_key(key, world, "meta");
    const char *argv[] = {"HGETALL", key};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK)
        return st;
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
        return unexpected(r, "HGETALL meta");
    if (r->elements == 0) {
        freeReplyObject(r);
        return TS_ERR_NOT_FOUND;
    }
    ts_world_t w = {.id = world};
    int seen = 0;
    bool ok = true;
    for (size_t i = 0; ok && i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            ok = false;
        } else if (strcmp(k->str, "cell_size") == 0) {
            ok = ts_parse_double(v->str, &w.cell_size) == TS_OK && w.cell_size > 0;
            seen |= 1;
        } else if (strcmp(k->str, "x0") == 0) {
            ok = field_i32(v->str, &w.x0);
            seen |= 2;
        } else if (strcmp(k->str, "y0") == 0) {
            ok = field_i32(v->str, &w.y0);
            seen |= 4;
        } else if (strcmp(k->str, "width") == 0) {
            ok = field_i32(v->str, &w.width) && w.width > 0;
            seen |= 8;
        } else if (strcmp(k->str, "height") == 0) {
            ok = field_i32(v->str, &w.height) && w.height > 0;
            seen |= 16;
        }
    }
    freeReplyObject(r);
    if (!ok || seen != 31) {
        ts_warn("registry: world %" PRIu32 " metadata is incomplete or malformed", world);
        return TS_ERR_REGISTRY;
    }
    *out = w;
    return TS_OK;
}

/* ---- cells ------------------------------------------------------------------- */

/* Fills e from an HGETALL reply of a cell hash (not freed here). */
static ts_status_t parse_entry(const redisReply *r, const ts_cell_t *cell, ts_cell_entry_t *e)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
        return TS_ERR_REGISTRY;
    if (r->elements == 0)
        return TS_ERR_NOT_FOUND;
    memset(e, 0, sizeof *e);
    e->cell = *cell;
    int seen = 0;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            return TS_ERR_REGISTRY;
        if (strcmp(k->str, "owner") == 0) {
            if (v->len >= sizeof e->owner)
                return TS_ERR_REGISTRY;
            ts_strlcpy(e->owner, v->str, sizeof e->owner);
            seen |= 1;
        } else if (strcmp(k->str, "epoch") == 0) {
            if (ts_parse_u64(v->str, &e->epoch) != TS_OK)
                return TS_ERR_REGISTRY;
            seen |= 2;
        } else if (strcmp(k->str, "state") == 0) {
            if (ts_cell_state_parse(v->str, &e->state) != TS_OK)
                return TS_ERR_REGISTRY;
            seen |= 4;
        }
    }
    return seen == 7 ? TS_OK : TS_ERR_REGISTRY;
}

ts_status_t ts_registry_cell_get(ts_registry_t *reg, const ts_cell_t *cell, ts_cell_entry_t *out)
{
    if (reg == NULL || out == NULL)
        return TS_ERR_INVALID;
    char key[KEY_MAX], text[TS_CELL_STR_MAX];
    if (cell_key(key, text, cell) != TS_OK)
        return TS_ERR_INVALID;
    const char *argv[] = {"HGETALL", key};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK)
        return st;
    st = parse_entry(r, cell, out);
    freeReplyObject(r);
    if (st == TS_ERR_REGISTRY)
        ts_warn("registry: cell %s has a malformed entry", text);
    return st;
}

ts_status_t ts_registry_version(ts_registry_t *reg, uint32_t world, uint64_t *version)
{
    if (reg == NULL || version == NULL)
        return TS_ERR_INVALID;
    char key[KEY_MAX];
    world_key(key, world, "version");
    const char *argv[] = {"GET", key};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK)
        return st;
    long long v = 0;
    if (r->type == REDIS_REPLY_NIL)
        v = 0;
    else if (!reply_int(r, &v) || v < 0)
        return unexpected(r, "GET version");
    freeReplyObject(r);
    *version = (uint64_t)v;
    return TS_OK;
}

ts_status_t ts_registry_cell_create(ts_registry_t *reg, const ts_cell_entry_t *want, ts_cell_entry_t *out,
                                    uint64_t *version)
{
    if (reg == NULL || want == NULL || out == NULL || !valid_id(want->owner) ||
        (unsigned)want->state > TS_CELL_RETIRED)
        return TS_ERR_INVALID;
    char key[KEY_MAX], text[TS_CELL_STR_MAX], cells[KEY_MAX], vkey[KEY_MAX], parent[TS_CELL_STR_MAX] = "";
    if (cell_key(key, text, &want->cell) != TS_OK)
        return TS_ERR_INVALID;
    ts_cell_t up;
    if (want->cell.depth > 0 && ts_cell_parent(&want->cell, &up) == TS_OK)
        ts_cell_format(&up, parent, sizeof parent);
    world_key(cells, want->cell.world, "cells");
    world_key(vkey, want->cell.world, "version");
    const char *keys[] = {key, cells, vkey};
    const char *args[] = {want->owner, ts_cell_state_str(want->state), text, parent};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, CREATE_LUA, 3, keys, 4, args);
    if (st != TS_OK)
        return st;
    long long created, v = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || !reply_int(r->element[0], &created) ||
        (created == 1 && (r->elements < 2 || !reply_int(r->element[1], &v))))
        return unexpected(r, "cell create");
    freeReplyObject(r);
    if (created == 1) {
        memset(out, 0, sizeof *out);
        out->cell = want->cell;
        ts_strlcpy(out->owner, want->owner, sizeof out->owner);
        out->epoch = 1;
        out->state = want->state;
        if (version != NULL)
            *version = (uint64_t)v;
        return TS_OK;
    }
    st = ts_registry_cell_get(reg, &want->cell, out);
    if (st == TS_OK && version != NULL)
        st = ts_registry_version(reg, want->cell.world, version);
    return st == TS_OK ? TS_ERR_EXISTS : st;
}

ts_status_t ts_registry_cell_cas(ts_registry_t *reg, const ts_cell_t *cell, uint64_t expected_epoch,
                                 const char *new_owner, ts_cell_state_t new_state, ts_cell_entry_t *out,
                                 uint64_t *version)
{
    if (reg == NULL || out == NULL || !valid_id(new_owner) || (unsigned)new_state > TS_CELL_RETIRED)
        return TS_ERR_INVALID;
    char key[KEY_MAX], text[TS_CELL_STR_MAX], vkey[KEY_MAX], expected[24];
    if (cell_key(key, text, cell) != TS_OK)
        return TS_ERR_INVALID;
    world_key(vkey, cell->world, "version");
    snprintf(expected, sizeof expected, "%" PRIu64, expected_epoch);
    const char *keys[] = {key, vkey};
    const char *args[] = {expected, new_owner, ts_cell_state_str(new_state)};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, false, &r, CAS_LUA, 2, keys, 3, args);
    if (st != TS_OK)
        return st;
    long long outcome, epoch = 0, v = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || !reply_int(r->element[0], &outcome))
        return unexpected(r, "cell CAS");
    if (outcome == 1 && (r->elements < 3 || !reply_int(r->element[1], &epoch) ||
                         !reply_int(r->element[2], &v) || epoch < 1))
        return unexpected(r, "cell CAS");
    freeReplyObject(r);
    if (outcome == -1)
        return TS_ERR_NOT_FOUND;
    if (outcome == 1) {
        memset(out, 0, sizeof *out);
        out->cell = *cell;
        ts_strlcpy(out->owner, new_owner, sizeof out->owner);
        out->epoch = (uint64_t)epoch;
        out->state = new_state;
        if (version != NULL)
            *version = (uint64_t)v;
        return TS_OK;
    }
    st = ts_registry_cell_get(reg, cell, out);
    if (st == TS_OK && version != NULL)
        st = ts_registry_version(reg, cell->world, version);
    return st == TS_OK ? TS_ERR_CONFLICT : st;
}

/* One attempt at reading every cell; pipelined HGETALLs. */
static ts_status_t cells_once(ts_registry_t *reg, uint32_t world, ts_cell_entry_t **out, size_t *n)
{
    char key[KEY_MAX];
    world_key(key, world, "cells");
    const char *argv[] = {"SMEMBERS", key};
    redisReply *members = NULL;
    ts_status_t st = command(reg, true, &members, 2, argv, NULL);
    if (st != TS_OK)
        return st;
    if (members->type != REDIS_REPLY_ARRAY)
        return unexpected(members, "SMEMBERS cells");

    size_t count = members->elements;
    ts_cell_t *ids = calloc(count ? count : 1, sizeof *ids);
    ts_cell_entry_t *entries = calloc(count ? count : 1, sizeof *entries);
    if (ids == NULL || entries == NULL) {
        st = TS_ERR_NOMEM;
        goto cleanup;
    }
    size_t sent = 0;
    for (size_t i = 0; i < count; i++) {
        const redisReply *m = members->element[i];
        char ckey[KEY_MAX], text[TS_CELL_STR_MAX];
        if (m->type != REDIS_REPLY_STRING || ts_cell_parse(m->str, &ids[i]) != TS_OK ||
            ids[i].world != world || cell_key(ckey, text, &ids[i]) != TS_OK) {
            ts_warn("registry: world %" PRIu32 " lists a malformed cell key", world);
            st = TS_ERR_REGISTRY;
            break;
        }
        const char *hargv[] = {"HGETALL", ckey};
        if (redisAppendCommandArgv(reg->ctx, 2, hargv, NULL) != REDIS_OK) {
            st = TS_ERR_NOMEM;
            break;
        }
        sent++;
    }
    /* read every reply that was queued, even after an error, so the
     * connection stays in step */
    size_t got = 0;
    for (size_t i = 0; i < sent; i++) {
        redisReply *r = NULL;
        if (redisGetReply(reg->ctx, (void **)&r) != REDIS_OK || r == NULL) {
            ts_warn("registry: reading cells: %s", reg->ctx->errstr);
            redisFree(reg->ctx);
            reg->ctx = NULL;
            st = TS_ERR_UNAVAILABLE;
            break;
        }
        ts_status_t est = parse_entry(r, &ids[i], &entries[got]);
        freeReplyObject(r);
        if (est == TS_OK) {
            got++;
        } else if (est != TS_ERR_NOT_FOUND && st == TS_OK) {
            ts_warn("registry: a cell of world %" PRIu32 " has a malformed entry", world);
            st = TS_ERR_REGISTRY;
        }
    }
    if (st == TS_OK) {
        *out = entries;
        *n = got;
        entries = NULL;
    }
cleanup:
    free(ids);
    free(entries);
    freeReplyObject(members);
    return st;
}

ts_status_t ts_registry_cells(ts_registry_t *reg, uint32_t world, ts_cell_entry_t **out, size_t *n)
{
    if (reg == NULL || out == NULL || n == NULL)
        return TS_ERR_INVALID;
    *out = NULL;
    *n = 0;
    ts_status_t st = cells_once(reg, world, out, n);
    if (st == TS_ERR_UNAVAILABLE)
        st = cells_once(reg, world, out, n);
    return st;
}

/* ---- workers ------------------------------------------------------------------ */

static void worker_keys(const char *id, char *alive, char *hash)
{
    snprintf(alive, KEY_MAX, "ts:worker:%s:alive", id);
    snprintf(hash, KEY_MAX, "ts:worker:%s", id);
}

ts_status_t ts_registry_worker_alive(ts_registry_t *reg, const char *id, int64_t ttl_ms, uint32_t capacity)
{
    if (reg == NULL || !valid_id(id) || ttl_ms <= 0)
        return TS_ERR_INVALID;
    char alive[KEY_MAX], hash[KEY_MAX], ttl[24], cap[16], now[24];
    worker_keys(id, alive, hash);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    snprintf(cap, sizeof cap, "%" PRIu32, capacity);
    snprintf(now, sizeof now, "%" PRIu64, ts_now_us() / 1000);
    const char *keys[] = {alive, hash, "ts:workers"};
    const char *args[] = {ttl, cap, now, id};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, ALIVE_LUA, 3, keys, 4, args);
    if (r != NULL)
        freeReplyObject(r);
    return st;
}

ts_status_t ts_registry_worker_is_alive(ts_registry_t *reg, const char *id, bool *alive)
{
    if (reg == NULL || !valid_id(id) || alive == NULL)
        return TS_ERR_INVALID;
    char akey[KEY_MAX], hash[KEY_MAX];
    worker_keys(id, akey, hash);
    const char *argv[] = {"EXISTS", akey};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK)
        return st;
    long long v;
    if (!reply_int(r, &v))
        return unexpected(r, "EXISTS alive");
    freeReplyObject(r);
    *alive = v > 0;
    return TS_OK;
}

void ts_registry_free_list(char **ids, size_t n)
{
    if (ids == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

/* Members of a set of worker ids; caller frees with ts_registry_free_list. */
static ts_status_t smembers(ts_registry_t *reg, const char *key, char ***ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    const char *argv[] = {"SMEMBERS", key};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK)
        return st;
    if (r->type != REDIS_REPLY_ARRAY)
        return unexpected(r, "SMEMBERS");
    char **list = calloc(r->elements ? r->elements : 1, sizeof *list);
    if (list == NULL) {
        freeReplyObject(r);
        return TS_ERR_NOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        if ((list[k] = strdup(e->str)) == NULL) {
            ts_registry_free_list(list, k);
            freeReplyObject(r);
            return TS_ERR_NOMEM;
        }
        k++;
    }
    freeReplyObject(r);
    *ids = list;
    *n = k;
    return TS_OK;
}

ts_status_t ts_registry_workers(ts_registry_t *reg, char ***ids, size_t *n)
{
    if (reg == NULL || ids == NULL || n == NULL)
        return TS_ERR_INVALID;
    return smembers(reg, "ts:workers", ids, n);
}

ts_status_t ts_registry_worker_forget(ts_registry_t *reg, const char *id)
{
    if (reg == NULL || !valid_id(id))
        return TS_ERR_INVALID;
    char alive[KEY_MAX], hash[KEY_MAX];
    worker_keys(id, alive, hash);
    const char *del[] = {"DEL", alive, hash};
    const char *srem[] = {"SREM", "ts:workers", id};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 3, del, NULL);
    if (r != NULL)
        freeReplyObject(r);
    if (st != TS_OK)
        return st;
    st = command(reg, true, &r, 3, srem, NULL);
    if (r != NULL)
        freeReplyObject(r);
    return st;
}

/* ---- draining workers -------------------------------------------------------- */

static ts_status_t draining_change(ts_registry_t *reg, uint32_t world, const char *id, const char *op)
{
    if (reg == NULL || !valid_id(id))
        return TS_ERR_INVALID;
    char key[KEY_MAX];
    world_key(key, world, "draining");
    const char *argv[] = {op, key, id};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 3, argv, NULL);
    if (r != NULL)
        freeReplyObject(r);
    return st;
}

ts_status_t ts_registry_draining_add(ts_registry_t *reg, uint32_t world, const char *id)
{
    return draining_change(reg, world, id, "SADD");
}

ts_status_t ts_registry_draining_remove(ts_registry_t *reg, uint32_t world, const char *id)
{
    return draining_change(reg, world, id, "SREM");
}

ts_status_t ts_registry_draining(ts_registry_t *reg, uint32_t world, char ***ids, size_t *n)
{
    if (reg == NULL || ids == NULL || n == NULL)
        return TS_ERR_INVALID;
    char key[KEY_MAX];
    world_key(key, world, "draining");
    return smembers(reg, key, ids, n);
}

/* ---- leader lock ------------------------------------------------------------ */

static bool valid_lock(const char *name, const char *holder)
{
    return name != NULL && name[0] != '\0' && strlen(name) < 128 && holder != NULL && holder[0] != '\0' &&
           strlen(holder) < 128;
}

ts_status_t ts_registry_lock(ts_registry_t *reg, const char *name, const char *holder, int64_t ttl_ms,
                             bool *held)
{
    if (reg == NULL || held == NULL || !valid_lock(name, holder) || ttl_ms <= 0)
        return TS_ERR_INVALID;
    *held = false;
    char key[KEY_MAX], ttl[24];
    snprintf(key, sizeof key, "ts:lock:%s", name);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *keys[] = {key};
    const char *args[] = {holder, ttl};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, LOCK_LUA, 1, keys, 2, args);
    if (st != TS_OK)
        return st;
    long long v;
    if (!reply_int(r, &v))
        return unexpected(r, "lock");
    freeReplyObject(r);
    *held = v == 1;
    return TS_OK;
}

ts_status_t ts_registry_unlock(ts_registry_t *reg, const char *name, const char *holder)
{
    if (reg == NULL || !valid_lock(name, holder))
        return TS_ERR_INVALID;
    char key[KEY_MAX];
    snprintf(key, sizeof key, "ts:lock:%s", name);
    const char *keys[] = {key};
    const char *args[] = {holder};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, UNLOCK_LUA, 1, keys, 1, args);
    if (r != NULL)
        freeReplyObject(r);
    return st;
}

/* ---- reset ------------------------------------------------------------------- */

ts_status_t ts_registry_world_reset(ts_registry_t *reg, uint32_t world)
{
    if (reg == NULL)
        return TS_ERR_INVALID;
    char pattern[KEY_MAX], cursor[32] = "0";
    world_key(pattern, world, "*");
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
        redisReply *r = NULL;
        ts_status_t st = command(reg, true, &r, 6, argv, NULL);
        if (st != TS_OK)
            return st;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= sizeof cursor)
            return unexpected(r, "SCAN");
        ts_strlcpy(cursor, r->element[0]->str, sizeof cursor);
        const redisReply *keys = r->element[1];
        if (keys->elements > 0) {
            const char **del = calloc(keys->elements + 1, sizeof *del);
            if (del == NULL) {
                freeReplyObject(r);
                return TS_ERR_NOMEM;
            }
            int argc = 0;
            del[argc++] = "UNLINK";
            for (size_t i = 0; i < keys->elements; i++)
                if (keys->element[i]->type == REDIS_REPLY_STRING)
                    del[argc++] = keys->element[i]->str;
            redisReply *dr = NULL;
            st = argc > 1 ? command(reg, true, &dr, argc, del, NULL) : TS_OK;
            if (dr != NULL)
                freeReplyObject(dr);
            free(del);
        }
        freeReplyObject(r);
        if (st != TS_OK)
            return st;
    } while (strcmp(cursor, "0") != 0);
    return TS_OK;
}
