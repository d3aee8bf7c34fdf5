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
#include "redis_tls.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "tessera/log.h"
#include "tessera/map.h"
#include "tessera/util.h"

#define CONNECT_TIMEOUT_MS 2000
#define COMMAND_TIMEOUT_MS 2000
#define KEY_MAX 256

/* KEYS[1]: version, KEYS[1+i]: cell hash i. ARGV[3i-2..3i]: expected epoch,
 * owner, state of cell i. Returns five items per cell: outcome (1 set, 0
 * conflict, -1 unknown cell), epoch (new or current), version (after the
 * change, or current), owner and state (current, on a conflict). */
static const char CAS_LUA[] =
    "local out = {}\n"
    "for i = 2, #KEYS do\n"
    "  local a = (i - 2) * 3\n"
    "  local cur = redis.call('HMGET', KEYS[i], 'epoch', 'owner', 'state')\n"
    "  if not cur[1] then\n"
    "    out[#out + 1] = -1; out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = ''; out[#out + 1] = ''\n"
    "  elseif cur[1] ~= ARGV[a + 1] then\n"
    "    out[#out + 1] = 0; out[#out + 1] = tonumber(cur[1])\n"
    "    out[#out + 1] = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "    out[#out + 1] = cur[2] or ''; out[#out + 1] = cur[3] or ''\n"
    "  else\n"
    "    redis.call('HSET', KEYS[i], 'owner', ARGV[a + 2], 'state', ARGV[a + 3])\n"
    "    out[#out + 1] = 1; out[#out + 1] = redis.call('HINCRBY', KEYS[i], 'epoch', 1)\n"
    "    out[#out + 1] = redis.call('INCR', KEYS[1]); out[#out + 1] = ''; out[#out + 1] = ''\n"
    "  end\n"
    "end\n"
    "return out\n";

/* KEYS: cell hash, cells set, version. ARGV: owner, state, cell key, parent
 * key ('' for a root cell). Returns {1, version} or {0}. */
static const char CREATE_LUA[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end\n"
    "redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', 1, 'state', ARGV[2])\n"
    "if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'parent', ARGV[4]) end\n"
    "redis.call('SADD', KEYS[2], ARGV[3])\n"
    "local v = redis.call('INCR', KEYS[3])\n"
    "return {1, v}\n";

/* KEYS: alive key, worker hash, workers set. ARGV: ttl ms, capacity, now ms,
 * id, token, mode. Sets the alive key to token unless it holds another token
 * (returns 0 then, 1 otherwise). Mode "claim" also restarts started_ms;
 * mode "any" sets the key whatever it holds (the token-less refresh). */
static const char ALIVE_LUA[] =
    "if ARGV[6] ~= 'any' then\n"
    "  local cur = redis.call('GET', KEYS[1])\n"
    "  if cur and cur ~= ARGV[5] then return 0 end\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[1])\n"
    "redis.call('HSET', KEYS[2], 'capacity', ARGV[2])\n"
    "if ARGV[6] == 'claim' then redis.call('HSET', KEYS[2], 'started_ms', ARGV[3])\n"
    "else redis.call('HSETNX', KEYS[2], 'started_ms', ARGV[3]) end\n"
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

/* Split of a parent cell into its four children, all at once.
 * KEYS: version, cells set, parent hash, child hashes (quadrants 0..3).
 * ARGV: expected parent epoch, parent key, child keys (quadrants 0..3).
 * The parent must be active at the expected epoch and no child live or
 * split. The parent becomes split at epoch + 1 (same owner, its
 * forwarder); each child becomes active with that owner at
 * max(its previous epoch, parent's new epoch) + 1. One version bump per
 * changed cell, parent first. Returns {1, parent epoch, owner, version,
 * then child epoch and version per child}, {0, epoch, owner, state}
 * (parent differs), {-1} (no parent) or {-2, epoch, owner, state} (a
 * child is live or split). */
static const char SPLIT_LUA[] =
    "local cur = redis.call('HMGET', KEYS[3], 'epoch', 'owner', 'state')\n"
    "if not cur[1] then return {-1} end\n"
    "if cur[1] ~= ARGV[1] or cur[3] ~= 'active' or not cur[2] or cur[2] == '' then\n"
    "  return {0, tonumber(cur[1]), cur[2] or '', cur[3] or ''}\n"
    "end\n"
    "for i = 4, 7 do\n"
    "  local s = redis.call('HGET', KEYS[i], 'state')\n"
    "  if s and s ~= 'retired' then return {-2, tonumber(cur[1]), cur[2], cur[3]} end\n"
    "end\n"
    "local owner = cur[2]\n"
    "local pe = tonumber(cur[1]) + 1\n"
    "redis.call('HSET', KEYS[3], 'state', 'split', 'epoch', pe)\n"
    "local out = {1, pe, owner, redis.call('INCR', KEYS[1])}\n"
    "for i = 4, 7 do\n"
    "  local prev = tonumber(redis.call('HGET', KEYS[i], 'epoch') or '0')\n"
    "  local ce = math.max(prev, pe) + 1\n"
    "  redis.call('HSET', KEYS[i], 'owner', owner, 'epoch', ce, 'state', 'active', 'parent', ARGV[2])\n"
    "  redis.call('SADD', KEYS[2], ARGV[i - 1])\n"
    "  out[#out + 1] = ce; out[#out + 1] = redis.call('INCR', KEYS[1])\n"
    "end\n"
    "return out\n";

/* Merge of four children back into their parent, all at once.
 * KEYS: version, parent hash, child hashes (quadrants 0..3). ARGV: expected
 * parent epoch. The parent must be split at the expected epoch and every
 * child active with one and the same owner W. The parent becomes active at
 * epoch + 1 with owner W; each child retired at epoch + 1, owner W (its
 * forwarder). One version bump per changed cell, parent first. Returns as
 * SPLIT_LUA; {-2, ...} when a child is missing, not active, or the
 * children's owners differ. */
static const char MERGE_LUA[] =
    "local cur = redis.call('HMGET', KEYS[2], 'epoch', 'owner', 'state')\n"
    "if not cur[1] then return {-1} end\n"
    "if cur[1] ~= ARGV[1] or cur[3] ~= 'split' then\n"
    "  return {0, tonumber(cur[1]), cur[2] or '', cur[3] or ''}\n"
    "end\n"
    "local owner = nil\n"
    "local ce = {}\n"
    "for i = 3, 6 do\n"
    "  local c = redis.call('HMGET', KEYS[i], 'epoch', 'owner', 'state')\n"
    "  if not c[1] or c[3] ~= 'active' or not c[2] or c[2] == '' or (owner and c[2] ~= owner) then\n"
    "    return {-2, tonumber(cur[1]), cur[2] or '', cur[3]}\n"
    "  end\n"
    "  owner = c[2]; ce[i] = tonumber(c[1]) + 1\n"
    "end\n"
    "local pe = tonumber(cur[1]) + 1\n"
    "redis.call('HSET', KEYS[2], 'state', 'active', 'owner', owner, 'epoch', pe)\n"
    "local out = {1, pe, owner, redis.call('INCR', KEYS[1])}\n"
    "for i = 3, 6 do\n"
    "  redis.call('HSET', KEYS[i], 'state', 'retired', 'epoch', ce[i])\n"
    "  out[#out + 1] = ce[i]; out[#out + 1] = redis.call('INCR', KEYS[1])\n"
    "end\n"
    "return out\n";

/* Registry rebuild after a loss of its data (ts_registry_rebuild).
 * KEYS[1]: version, KEYS[2]: cells set, KEYS[2+i]: cell hash i. ARGV[1]:
 * version floor; ARGV[2+5(i-1)..]: key text, owner, epoch, state, parent key
 * of cell i. A cell absent or at a lower epoch is written. Returns the
 * version each cell's write produced (0: left alone). */
static const char REBUILD_LUA[] =
    "local v = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "local floor = tonumber(ARGV[1])\n"
    "if v < floor then v = floor end\n"
    "local out = {}\n"
    "for i = 3, #KEYS do\n"
    "  local a = 1 + (i - 3) * 5\n"
    "  local cur = redis.call('HMGET', KEYS[i], 'epoch')[1]\n"
    "  if (not cur) or tonumber(cur) < tonumber(ARGV[a + 3]) then\n"
    "    redis.call('HSET', KEYS[i], 'owner', ARGV[a + 2], 'epoch', ARGV[a + 3], 'state', ARGV[a + 4])\n"
    "    if ARGV[a + 5] ~= '' then redis.call('HSET', KEYS[i], 'parent', ARGV[a + 5]) end\n"
    "    redis.call('SADD', KEYS[2], ARGV[a + 1])\n"
    "    v = v + 1\n"
    "    out[#out + 1] = v\n"
    "  else\n"
    "    out[#out + 1] = 0\n"
    "  end\n"
    "end\n"
    "redis.call('SET', KEYS[1], string.format('%d', v))\n"
    "return out\n";

/* Every script, by index; loaded once per connection (SCRIPT LOAD) and run
 * by EVALSHA. */
typedef enum {
    SCRIPT_CAS = 0,
    SCRIPT_CREATE,
    SCRIPT_ALIVE,
    SCRIPT_LOCK,
    SCRIPT_UNLOCK,
    SCRIPT_SPLIT,
    SCRIPT_MERGE,
    SCRIPT_REBUILD,
    SCRIPT_COUNT
} script_t;
static const char *const SCRIPTS[SCRIPT_COUNT] = {CAS_LUA,    CREATE_LUA, ALIVE_LUA, LOCK_LUA,
                                                  UNLOCK_LUA, SPLIT_LUA,  MERGE_LUA, REBUILD_LUA};

#define AUTH_MAX 256

struct ts_registry {
    redisContext *ctx;
    char user[AUTH_MAX];     /* "": the default user */
    char password[AUTH_MAX]; /* "": no AUTH */
    char host[256];
    int port;
    int db;
    char sha[SCRIPT_COUNT][41]; /* SHA1 of each script loaded on ctx; "" if not loaded */
    uint64_t round_trips;
    uint64_t connects;        /* connections opened (a change means Redis may have restarted) */
    bool tls;                 /* rediss:// */
    ts_redis_tls_t *tls_conn; /* the TLS side of ctx (rediss://) */
};

static const char *const state_names[] = {"active", "handover", "split", "retired"};

const char *ts_cell_state_str(ts_cell_state_t s)
{
    if ((unsigned)s >= sizeof state_names / sizeof state_names[0]) return "unknown";
    return state_names[s];
}

ts_status_t ts_cell_state_parse(const char *s, ts_cell_state_t *out)
{
    if (s == NULL || out == NULL) return TS_ERR_INVALID;
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

/* Default credentials (ts_registry_set_default_auth). */
static char default_user[AUTH_MAX], default_password[AUTH_MAX];

ts_status_t ts_registry_set_default_auth(const char *user, const char *password)
{
    if ((user != NULL && strlen(user) >= AUTH_MAX) || (password != NULL && strlen(password) >= AUTH_MAX))
        return TS_ERR_RANGE;
    snprintf(default_user, sizeof default_user, "%s", user ? user : "");
    snprintf(default_password, sizeof default_password, "%s", password ? password : "");
    return TS_OK;
}

/* Default TLS files (ts_registry_set_default_tls), for rediss:// URLs. */
static char default_tls_ca[512], default_tls_cert[512], default_tls_key[512];

ts_status_t ts_registry_set_default_tls(const char *ca, const char *cert, const char *key)
{
    if ((ca && strlen(ca) >= sizeof default_tls_ca) || (cert && strlen(cert) >= sizeof default_tls_cert) ||
        (key && strlen(key) >= sizeof default_tls_key))
        return TS_ERR_RANGE;
    ts_redis_tls_init();
    snprintf(default_tls_ca, sizeof default_tls_ca, "%s", ca ? ca : "");
    snprintf(default_tls_cert, sizeof default_tls_cert, "%s", cert ? cert : "");
    snprintf(default_tls_key, sizeof default_tls_key, "%s", key ? key : "");
    return TS_OK;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Copies s[0..n) into out (cap bytes) with %XX escapes decoded. */
static ts_status_t unescape(char *out, size_t cap, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return TS_ERR_PARSE;
            int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
            if (hi < 0 || lo < 0) return TS_ERR_PARSE;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0' || k + 1 >= cap) return TS_ERR_PARSE;
        out[k++] = c;
    }
    out[k] = '\0';
    return TS_OK;
}

/* Parses [user[:password]@]: the credentials before the host, if any. */
static ts_status_t parse_userinfo(ts_registry_t *reg, const char **pp)
{
    const char *p = *pp;
    size_t authority = strcspn(p, "/");
    const char *at = NULL;
    for (size_t i = 0; i < authority; i++) {
        if (p[i] == '@') at = p + i; /* the last one: passwords may hold '@' unescaped */
    }
    if (at == NULL) return TS_OK;
    const char *colon = memchr(p, ':', (size_t)(at - p));
    size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
    if (unescape(reg->user, sizeof reg->user, p, ulen) != TS_OK) return TS_ERR_PARSE;
    if (colon != NULL &&
        unescape(reg->password, sizeof reg->password, colon + 1, (size_t)(at - colon - 1)) != TS_OK)
        return TS_ERR_PARSE;
    *pp = at + 1;
    return TS_OK;
}

/* Parses redis://[user[:password]@]host:port[/db] ("redis://" and the port
 * are optional; IPv6 hosts go in brackets). Without credentials in the URL
 * the defaults apply. */
static ts_status_t parse_url(ts_registry_t *reg, const char *url)
{
    const char *p = url;
    if (strncmp(p, "rediss://", 9) == 0) {
        reg->tls = true;
        p += 9;
    } else if (strncmp(p, "redis://", 8) == 0) {
        p += 8;
    }
    snprintf(reg->user, sizeof reg->user, "%s", default_user);
    snprintf(reg->password, sizeof reg->password, "%s", default_password);
    if (parse_userinfo(reg, &p) != TS_OK) return TS_ERR_PARSE;
    const char *host_end;
    const char *rest;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (host_end == NULL) return TS_ERR_PARSE;
        p++;
        rest = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        rest = host_end;
    }
    size_t hlen = (size_t)(host_end - p);
    if (hlen == 0 || hlen >= sizeof reg->host) return TS_ERR_PARSE;
    memcpy(reg->host, p, hlen);
    reg->host[hlen] = '\0';

    reg->port = 6379;
    reg->db = 0;
    char num[24];
    if (*rest == ':') {
        rest++;
        size_t n = strcspn(rest, "/");
        int64_t port;
        if (n == 0 || n >= sizeof num) return TS_ERR_PARSE;
        memcpy(num, rest, n);
        num[n] = '\0';
        if (ts_parse_i64(num, &port) != TS_OK || port < 1 || port > 65535) return TS_ERR_PARSE;
        reg->port = (int)port;
        rest += n;
    }
    if (*rest == '/') {
        rest++;
        int64_t db;
        if (*rest != '\0') {
            if (ts_parse_i64(rest, &db) != TS_OK || db < 0 || db > 1000000) return TS_ERR_PARSE;
            reg->db = (int)db;
        }
    } else if (*rest != '\0') {
        return TS_ERR_PARSE;
    }
    return TS_OK;
}

/* Frees the connection (and its TLS side). */
static void drop_ctx(ts_registry_t *reg)
{
    if (reg->ctx != NULL) redisFree(reg->ctx);
    reg->ctx = NULL;
    ts_redis_tls_close(reg->tls_conn); /* after redisFree closed its end */
    reg->tls_conn = NULL;
}

/* A new hiredis context to reg's server: plain TCP, or (rediss://) through
 * a TLS connection whose side is stored in *tls. */
static ts_status_t connect_ctx(ts_registry_t *reg, redisContext **out, ts_redis_tls_t **tls)
{
    *out = NULL;
    *tls = NULL;
    redisContext *c;
    if (reg->tls) {
        ts_redis_tls_cfg_t tc = {.ca = default_tls_ca, .cert = default_tls_cert, .key = default_tls_key};
        char err[512] = "";
        int fd = -1;
        ts_status_t st =
            ts_redis_tls_open(reg->host, reg->port, &tc, CONNECT_TIMEOUT_MS, tls, &fd, err, sizeof err);
        if (st != TS_OK) {
            if (st == TS_ERR_CONFIG)
                ts_error("registry: TLS to %s:%d refused: %s", reg->host, reg->port, err);
            else
                ts_warn("registry: TLS to %s:%d failed: %s", reg->host, reg->port, err);
            return st;
        }
        c = redisConnectFd(fd);
    } else {
        c = redisConnectWithTimeout(reg->host, reg->port, ms_tv(CONNECT_TIMEOUT_MS));
    }
    if (c == NULL) {
        ts_warn("registry: cannot allocate a connection to %s:%d", reg->host, reg->port);
        ts_redis_tls_close(*tls);
        *tls = NULL;
        return TS_ERR_NOMEM;
    }
    if (c->err) {
        ts_warn("registry: connect to %s:%d failed: %s", reg->host, reg->port, c->errstr);
        redisFree(c);
        ts_redis_tls_close(*tls);
        *tls = NULL;
        return TS_ERR_UNAVAILABLE;
    }
    *out = c;
    return TS_OK;
}

static void free_new(redisContext *c, ts_redis_tls_t *tls)
{
    redisFree(c);
    ts_redis_tls_close(tls);
}

static ts_status_t open_ctx(ts_registry_t *reg)
{
    redisContext *c = NULL;
    ts_redis_tls_t *tls = NULL;
    ts_status_t cst = connect_ctx(reg, &c, &tls);
    if (cst != TS_OK) return cst;
    if (redisSetTimeout(c, ms_tv(COMMAND_TIMEOUT_MS)) != REDIS_OK) {
        ts_warn("registry: cannot set the command timeout: %s", c->errstr);
        free_new(c, tls);
        return TS_ERR_UNAVAILABLE;
    }
    if (reg->password[0] != '\0') {
        const char *argv[] = {"AUTH", reg->user, reg->password};
        redisReply *r = reg->user[0] != '\0' ? redisCommandArgv(c, 3, argv, NULL)
                                             : redisCommand(c, "AUTH %s", reg->password);
        ts_status_t st = TS_OK;
        if (r == NULL) {
            ts_warn("registry: AUTH to %s:%d failed: %s", reg->host, reg->port, c->errstr);
            st = TS_ERR_UNAVAILABLE;
        } else if (r->type == REDIS_REPLY_ERROR) {
            ts_error("registry: %s:%d refused user '%s': %s", reg->host, reg->port,
                     reg->user[0] ? reg->user : "default", r->str ? r->str : "error");
            st = TS_ERR_CONFIG;
        }
        if (r != NULL) freeReplyObject(r);
        if (st != TS_OK) {
            free_new(c, tls);
            return st;
        }
    }
    if (reg->db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", reg->db);
        bool ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        if (!ok)
            ts_warn("registry: SELECT %d failed: %s", reg->db,
                    r == NULL ? c->errstr : (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
        if (r != NULL) freeReplyObject(r);
        if (!ok) {
            free_new(c, tls);
            return TS_ERR_UNAVAILABLE;
        }
    }
    drop_ctx(reg);
    reg->ctx = c;
    reg->tls_conn = tls;
    reg->connects++;
    memset(reg->sha, 0, sizeof reg->sha);
    return TS_OK;
}

ts_status_t ts_registry_connect(ts_registry_t **out, const char *url)
{
    if (out == NULL || url == NULL) return TS_ERR_INVALID;
    *out = NULL;
    ts_registry_t *reg = calloc(1, sizeof *reg);
    if (reg == NULL) return TS_ERR_NOMEM;
    ts_status_t st = parse_url(reg, url);
    if (st != TS_OK) {
        ts_error("registry: bad url (want redis[s]://[user[:password]@]host:port[/db])");
        ts_registry_destroy(reg);
        return TS_ERR_CONFIG;
    }
    st = open_ctx(reg);
    if (st != TS_OK) {
        ts_registry_destroy(reg);
        return st;
    }
    *out = reg;
    return TS_OK;
}

void ts_registry_destroy(ts_registry_t *reg)
{
    if (reg == NULL) return;
    drop_ctx(reg);
    volatile char *pw = reg->password;
    for (size_t i = 0; i < sizeof reg->password; i++)
        pw[i] = '\0';
    free(reg);
}

/* ---- commands ------------------------------------------------------------ */

/* Sends one command and reads its reply: one round trip. NULL on an I/O
 * failure, and the connection is dropped. */
static redisReply *roundtrip(ts_registry_t *reg, int argc, const char **argv, const size_t *lens)
{
    reg->round_trips++;
    redisReply *r = redisCommandArgv(reg->ctx, argc, argv, lens);
    if (r == NULL) {
        ts_warn("registry: %s: %s", argv[0], reg->ctx->errstr);
        drop_ctx(reg);
    }
    return r;
}

/* After an I/O failure: false if the caller must give up (the command may
 * have been applied and must not be re-sent), true to try again. */
static bool may_resend(ts_registry_t *reg, bool resend)
{
    if (!resend) open_ctx(reg);
    return resend;
}

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
            if (st != TS_OK) return st;
        }
        redisReply *r = roundtrip(reg, argc, argv, lens);
        if (r == NULL) {
            if (!may_resend(reg, resend)) return TS_ERR_UNAVAILABLE;
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

/* Loads script s on the current connection unless it is loaded. TS_OK, or
 * TS_ERR_UNAVAILABLE (connection dropped) / TS_ERR_REGISTRY. */
static ts_status_t load_script(ts_registry_t *reg, script_t s)
{
    if (reg->sha[s][0]) return TS_OK;
    const char *argv[] = {"SCRIPT", "LOAD", SCRIPTS[s]};
    redisReply *r = roundtrip(reg, 3, argv, NULL);
    if (r == NULL) return TS_ERR_UNAVAILABLE;
    bool ok = r->type == REDIS_REPLY_STRING && r->len == 40;
    if (ok)
        memcpy(reg->sha[s], r->str, 41);
    else
        ts_warn("registry: SCRIPT LOAD: %s",
                r->type == REDIS_REPLY_ERROR && r->str ? r->str : "unexpected reply");
    freeReplyObject(r);
    return ok ? TS_OK : TS_ERR_REGISTRY;
}

static bool is_noscript(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* argv of a script call: "EVALSHA" sha nkeys keys... args... (argv[0] and
 * argv[1] are set by the caller). Caller frees the array. */
static const char **script_argv(char *nk, size_t nkcap, int nkeys, const char *const *keys, int nargs,
                                const char *const *args, int *argc)
{
    const char **argv = malloc((size_t)(3 + nkeys + nargs) * sizeof *argv);
    if (argv == NULL) return NULL;
    snprintf(nk, nkcap, "%d", nkeys);
    int k = 2;
    argv[k++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[k++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[k++] = args[i];
    *argc = k;
    return argv;
}

/* One script call by EVALSHA: loads the script once per connection; on
 * NOSCRIPT (the server lost it) runs it by EVAL and loads it again next
 * time. Reply and retry rules as for command(). */
static ts_status_t eval_argv(ts_registry_t *reg, bool resend, redisReply **out, script_t s, int argc,
                             const char **argv)
{
    *out = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (reg->ctx == NULL || reg->ctx->err) {
            ts_status_t st = open_ctx(reg);
            if (st != TS_OK) return st;
        }
        ts_status_t st = load_script(reg, s);
        if (st == TS_ERR_UNAVAILABLE) continue; /* nothing was run: safe to try again */
        redisReply *r = NULL;
        if (st == TS_OK) {
            argv[0] = "EVALSHA";
            argv[1] = reg->sha[s];
            r = roundtrip(reg, argc, argv, NULL);
            if (r != NULL && is_noscript(r)) {
                freeReplyObject(r);
                reg->sha[s][0] = '\0';
                r = NULL;
                st = TS_ERR_NOT_FOUND;
            } else if (r == NULL) {
                if (!may_resend(reg, resend)) return TS_ERR_UNAVAILABLE;
                continue;
            }
        }
        if (r == NULL) {
            argv[0] = "EVAL";
            argv[1] = SCRIPTS[s];
            r = roundtrip(reg, argc, argv, NULL);
            if (r == NULL) {
                if (!may_resend(reg, resend)) return TS_ERR_UNAVAILABLE;
                continue;
            }
        }
        if (r->type == REDIS_REPLY_ERROR) {
            ts_warn("registry: script: %s", r->str ? r->str : "error");
            freeReplyObject(r);
            return TS_ERR_REGISTRY;
        }
        *out = r;
        return TS_OK;
    }
    return TS_ERR_UNAVAILABLE;
}

/* Runs script s with nkeys keys followed by nargs arguments. */
static ts_status_t eval(ts_registry_t *reg, bool resend, redisReply **out, script_t s, int nkeys,
                        const char *const *keys, int nargs, const char *const *args)
{
    char nk[16];
    int argc = 0;
    const char **argv = script_argv(nk, sizeof nk, nkeys, keys, nargs, args, &argc);
    if (argv == NULL) return TS_ERR_NOMEM;
    ts_status_t st = eval_argv(reg, resend, out, s, argc, argv);
    free(argv);
    return st;
}

uint64_t ts_registry_connects(const ts_registry_t *reg)
{
    return reg != NULL ? reg->connects : 0;
}

uint64_t ts_registry_round_trips(const ts_registry_t *reg)
{
    return reg != NULL ? reg->round_trips : 0;
}

static ts_status_t unexpected(redisReply *r, const char *what)
{
    ts_warn("registry: unexpected reply type %d to %s", r != NULL ? r->type : -1, what);
    if (r != NULL) freeReplyObject(r);
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
        if (ts_parse_i64(r->str, &v) != TS_OK) return false;
        *out = v;
        return true;
    }
    return false;
}

bool ts_worker_id_valid(const char *id)
{
    if (id == NULL || id[0] == '\0' || strlen(id) >= TS_WORKER_ID_MAX) return false;
    for (const char *p = id; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '-' || ch == '_';
        if (!ok) return false;
    }
    return true;
}

static bool valid_id(const char *id)
{
    return ts_worker_id_valid(id);
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
    snprintf(buf, KEY_MAX, "ts:{w%" PRIu32 "}:cell:%.*s", cell->world, TS_CELL_STR_MAX - 1, text);
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
    const char *argv[] = {"HSET", key, "cell_size", size,  "x0",     x0,
                          "y0",   y0,  "width",     width, "height", height};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, (int)(sizeof argv / sizeof argv[0]), argv, NULL);
    if (r != NULL) freeReplyObject(r);
    return st;
}

static bool field_i32(const char *v, int32_t *out)
{
    int64_t n;
    if (ts_parse_i64(v, &n) != TS_OK || n < INT32_MIN || n > INT32_MAX) return false;
    *out = (int32_t)n;
    return true;
}

ts_status_t ts_registry_world_get(ts_registry_t *reg, uint32_t world, ts_world_t *out)
{
    if (reg == NULL || out == NULL) return TS_ERR_INVALID;
    char key[KEY_MAX];
    world_key(key, world, "meta");
    const char *argv[] = {"HGETALL", key};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK) return st;
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0) return unexpected(r, "HGETALL meta");
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
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0) return TS_ERR_REGISTRY;
    if (r->elements == 0) return TS_ERR_NOT_FOUND;
    memset(e, 0, sizeof *e);
    e->cell = *cell;
    int seen = 0;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) return TS_ERR_REGISTRY;
        if (strcmp(k->str, "owner") == 0) {
            if (v->len >= sizeof e->owner) return TS_ERR_REGISTRY;
            ts_strlcpy(e->owner, v->str, sizeof e->owner);
            seen |= 1;
        } else if (strcmp(k->str, "epoch") == 0) {
            if (ts_parse_u64(v->str, &e->epoch) != TS_OK) return TS_ERR_REGISTRY;
            seen |= 2;
        } else if (strcmp(k->str, "state") == 0) {
            if (ts_cell_state_parse(v->str, &e->state) != TS_OK) return TS_ERR_REGISTRY;
            seen |= 4;
        }
    }
    return seen == 7 ? TS_OK : TS_ERR_REGISTRY;
}

ts_status_t ts_registry_cell_get(ts_registry_t *reg, const ts_cell_t *cell, ts_cell_entry_t *out)
{
    if (reg == NULL || out == NULL) return TS_ERR_INVALID;
    char key[KEY_MAX], text[TS_CELL_STR_MAX];
    if (cell_key(key, text, cell) != TS_OK) return TS_ERR_INVALID;
    const char *argv[] = {"HGETALL", key};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK) return st;
    st = parse_entry(r, cell, out);
    freeReplyObject(r);
    if (st == TS_ERR_REGISTRY) ts_warn("registry: cell %s has a malformed entry", text);
    return st;
}

ts_status_t ts_registry_version(ts_registry_t *reg, uint32_t world, uint64_t *version)
{
    if (reg == NULL || version == NULL) return TS_ERR_INVALID;
    char key[KEY_MAX];
    world_key(key, world, "version");
    const char *argv[] = {"GET", key};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK) return st;
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
    if (cell_key(key, text, &want->cell) != TS_OK) return TS_ERR_INVALID;
    ts_cell_t up;
    if (want->cell.depth > 0 && ts_cell_parent(&want->cell, &up) == TS_OK)
        ts_cell_format(&up, parent, sizeof parent);
    world_key(cells, want->cell.world, "cells");
    world_key(vkey, want->cell.world, "version");
    const char *keys[] = {key, cells, vkey};
    const char *args[] = {want->owner, ts_cell_state_str(want->state), text, parent};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, SCRIPT_CREATE, 3, keys, 4, args);
    if (st != TS_OK) return st;
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
        if (version != NULL) *version = (uint64_t)v;
        return TS_OK;
    }
    st = ts_registry_cell_get(reg, &want->cell, out);
    if (st == TS_OK && version != NULL) st = ts_registry_version(reg, want->cell.world, version);
    return st == TS_OK ? TS_ERR_EXISTS : st;
}

ts_status_t ts_registry_cells_create(ts_registry_t *reg, const ts_cell_entry_t *want, size_t n,
                                     ts_status_t *results, uint64_t *versions)
{
    if (reg == NULL || (n > 0 && (want == NULL || results == NULL || versions == NULL)))
        return TS_ERR_INVALID;
    for (size_t i = 0; i < n; i++) {
        char key[KEY_MAX], text[TS_CELL_STR_MAX];
        if (!valid_id(want[i].owner) || (unsigned)want[i].state > TS_CELL_RETIRED ||
            cell_key(key, text, &want[i].cell) != TS_OK)
            return TS_ERR_INVALID;
        results[i] = TS_ERR_UNAVAILABLE;
        versions[i] = 0;
    }
    if (n == 0) return TS_OK;
    if (reg->ctx == NULL || reg->ctx->err) {
        ts_status_t st = open_ctx(reg);
        if (st != TS_OK) return st;
    }
    ts_status_t st = load_script(reg, SCRIPT_CREATE);
    if (st != TS_OK) return st;
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        char key[KEY_MAX], text[TS_CELL_STR_MAX], cells[KEY_MAX], vkey[KEY_MAX], parent[TS_CELL_STR_MAX] = "";
        cell_key(key, text, &want[i].cell);
        ts_cell_t up;
        if (want[i].cell.depth > 0 && ts_cell_parent(&want[i].cell, &up) == TS_OK)
            ts_cell_format(&up, parent, sizeof parent);
        world_key(cells, want[i].cell.world, "cells");
        world_key(vkey, want[i].cell.world, "version");
        const char *argv[] = {"EVALSHA",     reg->sha[SCRIPT_CREATE],          "3",  key,   cells, vkey,
                              want[i].owner, ts_cell_state_str(want[i].state), text, parent};
        if (redisAppendCommandArgv(reg->ctx, 10, argv, NULL) != REDIS_OK) {
            st = TS_ERR_NOMEM;
            break;
        }
        sent++;
    }
    reg->round_trips++;
    for (size_t i = 0; i < sent; i++) {
        redisReply *r = NULL;
        if (redisGetReply(reg->ctx, (void **)&r) != REDIS_OK || r == NULL) {
            ts_warn("registry: creating cells: %s", reg->ctx->errstr);
            drop_ctx(reg);
            open_ctx(reg);
            return TS_ERR_UNAVAILABLE;
        }
        long long created = 0, v = 0;
        if (is_noscript(r)) {
            /* not run (the server lost the script): the caller asks again */
            reg->sha[SCRIPT_CREATE][0] = '\0';
        } else if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || !reply_int(r->element[0], &created) ||
                   (created == 1 && (r->elements < 2 || !reply_int(r->element[1], &v)))) {
            if (st == TS_OK) st = TS_ERR_REGISTRY;
        } else {
            results[i] = created == 1 ? TS_OK : TS_ERR_EXISTS;
            versions[i] = (uint64_t)v;
        }
        freeReplyObject(r);
    }
    return st;
}

/* Cells per script call of ts_registry_cells_cas (each call is atomic and
 * keeps Redis busy for a bounded time). */
#define CAS_CHUNK 256

/* Fills op's outcome from the five reply items at e. */
static ts_status_t cas_result(ts_registry_cas_t *op, redisReply *const *e)
{
    long long outcome, epoch, version;
    if (!reply_int(e[0], &outcome) || !reply_int(e[1], &epoch) || !reply_int(e[2], &version) ||
        e[3]->type != REDIS_REPLY_STRING || e[4]->type != REDIS_REPLY_STRING || epoch < 0 || version < 0)
        return TS_ERR_REGISTRY;
    memset(&op->entry, 0, sizeof op->entry);
    op->entry.cell = op->cell;
    op->version = (uint64_t)version;
    if (outcome == -1) {
        op->result = TS_ERR_NOT_FOUND;
        return TS_OK;
    }
    if (outcome == 1) {
        if (epoch < 1) return TS_ERR_REGISTRY;
        op->result = TS_OK;
        ts_strlcpy(op->entry.owner, op->new_owner, sizeof op->entry.owner);
        op->entry.epoch = (uint64_t)epoch;
        op->entry.state = op->new_state;
        return TS_OK;
    }
    if (e[3]->len >= sizeof op->entry.owner || ts_cell_state_parse(e[4]->str, &op->entry.state) != TS_OK)
        return TS_ERR_REGISTRY;
    op->result = TS_ERR_CONFLICT;
    ts_strlcpy(op->entry.owner, e[3]->str, sizeof op->entry.owner);
    op->entry.epoch = (uint64_t)epoch;
    return TS_OK;
}

/* Builds the argv of one script call over ops[0..n) (argv[0..1] left for
 * eval_argv). Keys and arguments live in *strings (caller frees both). */
static const char **cas_argv(const ts_registry_cas_t *ops, size_t n, char nk[16], char **strings, int *argc)
{
    enum { KEY = KEY_MAX, NUM = 24 };
    size_t per = KEY + NUM;
    *strings = malloc(KEY + n * per);
    const char **argv = malloc((3 + 1 + 4 * n) * sizeof *argv);
    if (*strings == NULL || argv == NULL) {
        free(argv);
        return NULL;
    }
    char *vkey = *strings;
    world_key(vkey, ops[0].cell.world, "version");
    snprintf(nk, 16, "%zu", n + 1);
    int k = 2;
    argv[k++] = nk;
    argv[k++] = vkey;
    for (size_t i = 0; i < n; i++) {
        char *key = *strings + KEY + i * per, text[TS_CELL_STR_MAX];
        if (cell_key(key, text, &ops[i].cell) != TS_OK) {
            free(argv);
            return NULL;
        }
        argv[k++] = key;
    }
    for (size_t i = 0; i < n; i++) {
        char *num = *strings + KEY + i * per + KEY;
        snprintf(num, NUM, "%" PRIu64, ops[i].expected_epoch);
        argv[k++] = num;
        argv[k++] = ops[i].new_owner;
        argv[k++] = ts_cell_state_str(ops[i].new_state);
    }
    *argc = k;
    return argv;
}

static bool cas_op_ok(const ts_registry_cas_t *op, uint32_t world)
{
    return valid_id(op->new_owner) && (unsigned)op->new_state <= TS_CELL_RETIRED && op->cell.world == world &&
           ts_cell_valid(&op->cell);
}

ts_status_t ts_registry_cells_cas(ts_registry_t *reg, ts_registry_cas_t *ops, size_t n)
{
    if (reg == NULL || (ops == NULL && n > 0)) return TS_ERR_INVALID;
    for (size_t i = 0; i < n; i++) {
        if (!cas_op_ok(&ops[i], ops[0].cell.world)) return TS_ERR_INVALID;
        ops[i].result = TS_ERR_UNAVAILABLE;
    }
    if (n == 0) return TS_OK;
    size_t nchunks = (n + CAS_CHUNK - 1) / CAS_CHUNK;
    const char ***argvs = calloc(nchunks, sizeof *argvs);
    char **strings = calloc(nchunks, sizeof *strings);
    int *argcs = calloc(nchunks, sizeof *argcs);
    char(*nks)[16] = calloc(nchunks, sizeof *nks);
    ts_status_t st = argvs && strings && argcs && nks ? TS_OK : TS_ERR_NOMEM;
    for (size_t c = 0; st == TS_OK && c < nchunks; c++) {
        size_t from = c * CAS_CHUNK, len = n - from < CAS_CHUNK ? n - from : CAS_CHUNK;
        argvs[c] = cas_argv(ops + from, len, nks[c], &strings[c], &argcs[c]);
        if (argvs[c] == NULL) st = TS_ERR_NOMEM;
    }
    if (st != TS_OK) goto cleanup;
    if (nchunks == 1) {
        /* one call: EVALSHA with its NOSCRIPT fallback */
        redisReply *r = NULL;
        st = eval_argv(reg, false, &r, SCRIPT_CAS, argcs[0], argvs[0]);
        if (st == TS_OK) {
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 5 * n) {
                st = unexpected(r, "cell CAS");
                goto cleanup;
            }
            for (size_t i = 0; i < n && st == TS_OK; i++)
                st = cas_result(&ops[i], r->element + 5 * i);
            freeReplyObject(r);
        }
        goto cleanup;
    }
    /* several calls pipelined: one round trip */
    if (reg->ctx == NULL || reg->ctx->err) {
        if ((st = open_ctx(reg)) != TS_OK) goto cleanup;
    }
    if ((st = load_script(reg, SCRIPT_CAS)) != TS_OK) goto cleanup;
    for (size_t c = 0; c < nchunks; c++) {
        argvs[c][0] = "EVALSHA";
        argvs[c][1] = reg->sha[SCRIPT_CAS];
        if (redisAppendCommandArgv(reg->ctx, argcs[c], argvs[c], NULL) != REDIS_OK) {
            st = TS_ERR_NOMEM;
            break;
        }
    }
    reg->round_trips++;
    size_t queued = st == TS_OK ? nchunks : 0;
    bool *rerun = calloc(nchunks, sizeof *rerun);
    for (size_t c = 0; c < queued; c++) {
        redisReply *r = NULL;
        if (redisGetReply(reg->ctx, (void **)&r) != REDIS_OK || r == NULL) {
            ts_warn("registry: cell CAS: %s", reg->ctx->errstr);
            drop_ctx(reg);
            open_ctx(reg);
            st = TS_ERR_UNAVAILABLE;
            break;
        }
        size_t from = c * CAS_CHUNK, len = n - from < CAS_CHUNK ? n - from : CAS_CHUNK;
        if (is_noscript(r) && rerun != NULL) {
            rerun[c] = true; /* not run: by EVAL once the pipeline is read */
            reg->sha[SCRIPT_CAS][0] = '\0';
            freeReplyObject(r);
            continue;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 5 * len) {
            if (st == TS_OK) st = TS_ERR_REGISTRY;
            ts_warn("registry: unexpected reply type %d to cell CAS", r->type);
            freeReplyObject(r);
            continue; /* keep reading: the connection stays in step */
        }
        for (size_t i = 0; i < len; i++) {
            ts_status_t rs = cas_result(&ops[from + i], r->element + 5 * i);
            if (rs != TS_OK && st == TS_OK) st = rs;
        }
        freeReplyObject(r);
    }
    for (size_t c = 0; st == TS_OK && rerun != NULL && c < nchunks; c++) {
        if (!rerun[c]) continue;
        size_t from = c * CAS_CHUNK, len = n - from < CAS_CHUNK ? n - from : CAS_CHUNK;
        redisReply *r = NULL;
        st = eval_argv(reg, false, &r, SCRIPT_CAS, argcs[c], argvs[c]);
        if (st != TS_OK) break;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 5 * len) {
            st = unexpected(r, "cell CAS");
            break;
        }
        for (size_t i = 0; i < len && st == TS_OK; i++)
            st = cas_result(&ops[from + i], r->element + 5 * i);
        freeReplyObject(r);
    }
    if (rerun == NULL && st == TS_OK) st = TS_ERR_NOMEM;
    free(rerun);
cleanup:
    for (size_t c = 0; argvs && strings && c < nchunks; c++) {
        free(argvs[c]);
        free(strings[c]);
    }
    free(argvs);
    free(strings);
    free(argcs);
    free(nks);
    return st;
}

ts_status_t ts_registry_cell_cas(ts_registry_t *reg, const ts_cell_t *cell, uint64_t expected_epoch,
                                 const char *new_owner, ts_cell_state_t new_state, ts_cell_entry_t *out,
                                 uint64_t *version)
{
    if (reg == NULL || cell == NULL || out == NULL || !valid_id(new_owner) ||
        (unsigned)new_state > TS_CELL_RETIRED)
        return TS_ERR_INVALID;
    ts_registry_cas_t op = {.cell = *cell, .expected_epoch = expected_epoch, .new_state = new_state};
    ts_strlcpy(op.new_owner, new_owner, sizeof op.new_owner);
    ts_status_t st = ts_registry_cells_cas(reg, &op, 1);
    if (st != TS_OK) return st;
    *out = op.entry;
    if (version != NULL) *version = op.version;
    return op.result;
}

/* One attempt at reading every cell; pipelined HGETALLs. */
static ts_status_t cells_once(ts_registry_t *reg, uint32_t world, ts_cell_entry_t **out, size_t *n)
{
    char key[KEY_MAX];
    world_key(key, world, "cells");
    const char *argv[] = {"SMEMBERS", key};
    redisReply *members = NULL;
    ts_status_t st = command(reg, true, &members, 2, argv, NULL);
    if (st != TS_OK) return st;
    if (members->type != REDIS_REPLY_ARRAY) return unexpected(members, "SMEMBERS cells");

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
    reg->round_trips++;
    /* read every reply that was queued, even after an error, so the
     * connection stays in step */
    size_t got = 0;
    for (size_t i = 0; i < sent; i++) {
        redisReply *r = NULL;
        if (redisGetReply(reg->ctx, (void **)&r) != REDIS_OK || r == NULL) {
            ts_warn("registry: reading cells: %s", reg->ctx->errstr);
            drop_ctx(reg);
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
    if (reg == NULL || out == NULL || n == NULL) return TS_ERR_INVALID;
    *out = NULL;
    *n = 0;
    ts_status_t st = cells_once(reg, world, out, n);
    if (st == TS_ERR_UNAVAILABLE) st = cells_once(reg, world, out, n);
    return st;
}

/* ---- split and merge --------------------------------------------------------- */

/* Fills out[0..5) and versions[0..5) from a SPLIT_LUA / MERGE_LUA reply
 * (freed here). */
static ts_status_t split_merge_result(redisReply *r, const ts_cell_t *parent, const ts_cell_t kids[4],
                                      bool split, ts_cell_entry_t out[5], uint64_t versions[5])
{
    long long code = 0, epoch = 0, version = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || !reply_int(r->element[0], &code))
        return unexpected(r, split ? "cell split" : "cell merge");
    memset(out, 0, 5 * sizeof *out);
    memset(versions, 0, 5 * sizeof *versions);
    out[0].cell = *parent;
    for (int i = 0; i < 4; i++)
        out[1 + i].cell = kids[i];
    if (code == -1) {
        freeReplyObject(r);
        return TS_ERR_NOT_FOUND;
    }
    bool done = code == 1;
    if ((!done && code != 0 && code != -2) || r->elements < (done ? 12u : 4u) ||
        !reply_int(r->element[1], &epoch) || epoch < 0 || r->element[2]->type != REDIS_REPLY_STRING ||
        r->element[2]->len >= sizeof out[0].owner)
        return unexpected(r, split ? "cell split" : "cell merge");
    out[0].epoch = (uint64_t)epoch;
    ts_strlcpy(out[0].owner, r->element[2]->str, sizeof out[0].owner);
    if (!done) {
        const redisReply *st = r->element[3];
        if (st->type != REDIS_REPLY_STRING || ts_cell_state_parse(st->str, &out[0].state) != TS_OK) {
            freeReplyObject(r);
            return TS_ERR_REGISTRY;
        }
        freeReplyObject(r);
        return code == 0 ? TS_ERR_CONFLICT : TS_ERR_STALE;
    }
    if (!reply_int(r->element[3], &version) || version < 0) return unexpected(r, "cell split/merge version");
    out[0].state = split ? TS_CELL_SPLIT : TS_CELL_ACTIVE;
    versions[0] = (uint64_t)version;
    for (int i = 0; i < 4; i++) {
        if (!reply_int(r->element[4 + 2 * i], &epoch) || !reply_int(r->element[5 + 2 * i], &version) ||
            epoch < 1 || version < 0)
            return unexpected(r, "cell split/merge child");
        ts_strlcpy(out[1 + i].owner, out[0].owner, sizeof out[1 + i].owner);
        out[1 + i].epoch = (uint64_t)epoch;
        out[1 + i].state = split ? TS_CELL_ACTIVE : TS_CELL_RETIRED;
        versions[1 + i] = (uint64_t)version;
    }
    freeReplyObject(r);
    return TS_OK;
}

ts_status_t ts_registry_cell_split(ts_registry_t *reg, const ts_cell_t *parent, uint64_t expected_epoch,
                                   ts_cell_entry_t out[5], uint64_t versions[5])
{
    if (reg == NULL || parent == NULL || out == NULL || versions == NULL) return TS_ERR_INVALID;
    char pkey[KEY_MAX], ptext[TS_CELL_STR_MAX], ckey[4][KEY_MAX], ctext[4][TS_CELL_STR_MAX];
    char cells[KEY_MAX], vkey[KEY_MAX], epoch[24];
    if (cell_key(pkey, ptext, parent) != TS_OK) return TS_ERR_INVALID;
    ts_cell_t kids[4];
    if (ts_cell_children(parent, kids) != TS_OK) return TS_ERR_RANGE;
    for (int i = 0; i < 4; i++)
        if (cell_key(ckey[i], ctext[i], &kids[i]) != TS_OK) return TS_ERR_INVALID;
    world_key(cells, parent->world, "cells");
    world_key(vkey, parent->world, "version");
    snprintf(epoch, sizeof epoch, "%" PRIu64, expected_epoch);
    const char *keys[] = {vkey, cells, pkey, ckey[0], ckey[1], ckey[2], ckey[3]};
    const char *args[] = {epoch, ptext, ctext[0], ctext[1], ctext[2], ctext[3]};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, false, &r, SCRIPT_SPLIT, 7, keys, 6, args);
    if (st != TS_OK) return st;
    return split_merge_result(r, parent, kids, true, out, versions);
}

ts_status_t ts_registry_cell_merge(ts_registry_t *reg, const ts_cell_t *parent, uint64_t expected_epoch,
                                   ts_cell_entry_t out[5], uint64_t versions[5])
{
    if (reg == NULL || parent == NULL || out == NULL || versions == NULL) return TS_ERR_INVALID;
    char pkey[KEY_MAX], ptext[TS_CELL_STR_MAX], ckey[4][KEY_MAX], ctext[4][TS_CELL_STR_MAX];
    char vkey[KEY_MAX], epoch[24];
    if (cell_key(pkey, ptext, parent) != TS_OK) return TS_ERR_INVALID;
    ts_cell_t kids[4];
    if (ts_cell_children(parent, kids) != TS_OK) return TS_ERR_RANGE;
    for (int i = 0; i < 4; i++)
        if (cell_key(ckey[i], ctext[i], &kids[i]) != TS_OK) return TS_ERR_INVALID;
    world_key(vkey, parent->world, "version");
    snprintf(epoch, sizeof epoch, "%" PRIu64, expected_epoch);
    const char *keys[] = {vkey, pkey, ckey[0], ckey[1], ckey[2], ckey[3]};
    const char *args[] = {epoch};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, false, &r, SCRIPT_MERGE, 6, keys, 1, args);
    if (st != TS_OK) return st;
    return split_merge_result(r, parent, kids, false, out, versions);
}

/* Whether a live cell (active or handover). */
static bool entry_live(const ts_cell_entry_t *e)
{
    return e->state == TS_CELL_ACTIVE || e->state == TS_CELL_HANDOVER;
}

static const ts_cell_entry_t *check_find(const ts_map_t *m, const ts_cell_entry_t *cells, const ts_cell_t *c)
{
    uintptr_t k = (uintptr_t)ts_map_get(m, ts_cell_hash(c));
    if (k == 0 || !ts_cell_eq(&cells[k - 1].cell, c)) return NULL;
    return &cells[k - 1];
}

/* Whether every point of c is served by exactly one live cell at or below c. */
static bool check_covered(const ts_map_t *m, const ts_cell_entry_t *cells, const ts_cell_t *c, char *why,
                          size_t cap)
{
    const ts_cell_entry_t *e = check_find(m, cells, c);
    char key[TS_CELL_STR_MAX];
    if (e != NULL && entry_live(e)) return true;
    ts_cell_t kids[4];
    if (e == NULL || e->state != TS_CELL_SPLIT || ts_cell_children(c, kids) != TS_OK) {
        ts_cell_format(c, key, sizeof key);
        snprintf(why, cap, "the area of cell %s has no live cell (%s)", key,
                 e == NULL ? "unknown" : ts_cell_state_str(e->state));
        return false;
    }
    for (int i = 0; i < 4; i++)
        if (!check_covered(m, cells, &kids[i], why, cap)) return false;
    return true;
}

bool ts_registry_cells_check(const ts_world_t *w, const ts_cell_entry_t *cells, size_t n, char *why,
                             size_t cap)
{
    char scratch[8];
    if (why == NULL || cap == 0) {
        why = scratch;
        cap = sizeof scratch;
    }
    why[0] = '\0';
    ts_map_t m;
    ts_map_init(&m);
    bool ok = true;
    for (size_t i = 0; ok && i < n; i++) {
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&cells[i].cell, key, sizeof key);
        if (cells[i].cell.world != w->id || !ts_cell_valid(&cells[i].cell)) {
            snprintf(why, cap, "cell %s is not a cell of world %" PRIu32, key, w->id);
            ok = false;
        } else if (check_find(&m, cells, &cells[i].cell) != NULL) {
            snprintf(why, cap, "cell %s is listed twice", key);
            ok = false;
        } else if (ts_map_put(&m, ts_cell_hash(&cells[i].cell), (void *)(uintptr_t)(i + 1)) != TS_OK) {
            snprintf(why, cap, "out of memory");
            ok = false;
        }
    }
    /* a live cell lies under split ancestors only: no live ancestor (overlap)
     * and none retired or missing (unreachable) */
    for (size_t i = 0; ok && i < n; i++) {
        if (!entry_live(&cells[i])) continue;
        ts_cell_t c = cells[i].cell, up;
        while (ok && c.depth > 0 && ts_cell_parent(&c, &up) == TS_OK) {
            const ts_cell_entry_t *a = check_find(&m, cells, &up);
            if (a == NULL || a->state != TS_CELL_SPLIT) {
                char key[TS_CELL_STR_MAX], akey[TS_CELL_STR_MAX];
                ts_cell_format(&cells[i].cell, key, sizeof key);
                ts_cell_format(&up, akey, sizeof akey);
                snprintf(why, cap, "live cell %s lies under %s, which is %s", key, akey,
                         a == NULL ? "unknown" : ts_cell_state_str(a->state));
                ok = false;
            }
            c = up;
        }
    }
    for (int32_t y = 0; ok && y < w->height; y++) {
        for (int32_t x = 0; ok && x < w->width; x++) {
            ts_cell_t root = {.world = w->id, .cx = w->x0 + x, .cy = w->y0 + y};
            ok = check_covered(&m, cells, &root, why, cap);
        }
    }
    ts_map_free(&m);
    return ok;
}

/* ---- workers ------------------------------------------------------------------ */

static void worker_keys(const char *id, char *alive, char *hash)
{
    snprintf(alive, KEY_MAX, "ts:worker:%s:alive", id);
    snprintf(hash, KEY_MAX, "ts:worker:%s", id);
}

static bool valid_token(const char *token)
{
    return valid_id(token) && strlen(token) < TS_WORKER_TOKEN_MAX;
}

/* Runs ALIVE_LUA; *set tells whether the key now holds token. */
static ts_status_t alive_script(ts_registry_t *reg, const char *id, const char *token, int64_t ttl_ms,
                                uint32_t capacity, const char *mode, bool *set)
{
    char alive[KEY_MAX], hash[KEY_MAX], ttl[24], cap[16], now[24];
    worker_keys(id, alive, hash);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    snprintf(cap, sizeof cap, "%" PRIu32, capacity);
    snprintf(now, sizeof now, "%" PRIu64, ts_now_us() / 1000);
    const char *keys[] = {alive, hash, "ts:workers"};
    const char *args[] = {ttl, cap, now, id, token, mode};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, SCRIPT_ALIVE, 3, keys, 6, args);
    if (st != TS_OK) return st;
    long long v;
    if (!reply_int(r, &v)) return unexpected(r, "worker liveness");
    freeReplyObject(r);
    *set = v == 1;
    return TS_OK;
}

ts_status_t ts_registry_worker_alive(ts_registry_t *reg, const char *id, int64_t ttl_ms, uint32_t capacity)
{
    if (reg == NULL || !valid_id(id) || ttl_ms <= 0) return TS_ERR_INVALID;
    bool set;
    return alive_script(reg, id, "1", ttl_ms, capacity, "any", &set);
}

ts_status_t ts_registry_worker_claim(ts_registry_t *reg, const char *id, const char *token, int64_t ttl_ms,
                                     uint32_t capacity)
{
    if (reg == NULL || !valid_id(id) || !valid_token(token) || ttl_ms <= 0) return TS_ERR_INVALID;
    bool set = false;
    ts_status_t st = alive_script(reg, id, token, ttl_ms, capacity, "claim", &set);
    return st != TS_OK ? st : set ? TS_OK : TS_ERR_EXISTS;
}

ts_status_t ts_registry_worker_refresh(ts_registry_t *reg, const char *id, const char *token, int64_t ttl_ms,
                                       uint32_t capacity)
{
    if (reg == NULL || !valid_id(id) || !valid_token(token) || ttl_ms <= 0) return TS_ERR_INVALID;
    bool set = false;
    ts_status_t st = alive_script(reg, id, token, ttl_ms, capacity, "refresh", &set);
    return st != TS_OK ? st : set ? TS_OK : TS_ERR_CONFLICT;
}

/* One pipelined round trip: GET of every alive key, then (with_world) the
 * world's version and the known worker ids. The connection is re-opened and
 * the pipeline re-sent once after an I/O failure (it only reads). */
static ts_status_t liveness_once(ts_registry_t *reg, const char *const *ids, size_t n,
                                 char (*tokens)[TS_WORKER_TOKEN_MAX], bool with_world, uint32_t world,
                                 uint64_t *version, char ***known, size_t *nknown)
{
    if (reg->ctx == NULL || reg->ctx->err) {
        ts_status_t st = open_ctx(reg);
        if (st != TS_OK) return st;
    }
    size_t sent = 0;
    ts_status_t st = TS_OK;
    for (size_t i = 0; i < n; i++) {
        char alive[KEY_MAX], hash[KEY_MAX];
        worker_keys(ids[i], alive, hash);
        const char *argv[] = {"GET", alive};
        if (redisAppendCommandArgv(reg->ctx, 2, argv, NULL) != REDIS_OK) {
            st = TS_ERR_NOMEM;
            break;
        }
        sent++;
    }
    if (st == TS_OK && with_world) {
        char vkey[KEY_MAX];
        world_key(vkey, world, "version");
        const char *get[] = {"GET", vkey};
        const char *members[] = {"SMEMBERS", "ts:workers"};
        if (redisAppendCommandArgv(reg->ctx, 2, get, NULL) != REDIS_OK ||
            redisAppendCommandArgv(reg->ctx, 2, members, NULL) != REDIS_OK)
            st = TS_ERR_NOMEM;
        else
            sent += 2;
    }
    reg->round_trips++;
    for (size_t i = 0; i < sent; i++) {
        redisReply *r = NULL;
        if (redisGetReply(reg->ctx, (void **)&r) != REDIS_OK || r == NULL) {
            ts_warn("registry: reading liveness: %s", reg->ctx->errstr);
            drop_ctx(reg);
            return TS_ERR_UNAVAILABLE;
        }
        if (i < n) {
            tokens[i][0] = '\0';
            if (r->type == REDIS_REPLY_STRING)
                ts_strlcpy(tokens[i], r->str, TS_WORKER_TOKEN_MAX);
            else if (r->type != REDIS_REPLY_NIL && st == TS_OK)
                st = TS_ERR_REGISTRY;
        } else if (i == n) {
            long long v = 0;
            if (r->type != REDIS_REPLY_NIL && (!reply_int(r, &v) || v < 0) && st == TS_OK)
                st = TS_ERR_REGISTRY;
            *version = (uint64_t)v;
        } else if (r->type != REDIS_REPLY_ARRAY) {
            if (st == TS_OK) st = TS_ERR_REGISTRY;
        } else if (st == TS_OK) {
            char **list = calloc(r->elements ? r->elements : 1, sizeof *list);
            size_t k = 0;
            for (size_t e = 0; list != NULL && e < r->elements; e++) {
                if (r->element[e]->type != REDIS_REPLY_STRING) continue;
                if ((list[k] = strdup(r->element[e]->str)) == NULL) {
                    ts_registry_free_list(list, k);
                    list = NULL;
                    break;
                }
                k++;
            }
            if (list == NULL) st = TS_ERR_NOMEM;
            *known = list;
            *nknown = list ? k : 0;
        }
        freeReplyObject(r);
    }
    if (st == TS_ERR_REGISTRY) ts_warn("registry: unexpected reply reading worker liveness");
    return st;
}

ts_status_t ts_registry_workers_liveness(ts_registry_t *reg, const char *const *ids, size_t n,
                                         char (*tokens)[TS_WORKER_TOKEN_MAX])
{
    if (reg == NULL || (n > 0 && (ids == NULL || tokens == NULL))) return TS_ERR_INVALID;
    for (size_t i = 0; i < n; i++) {
        if (!valid_id(ids[i])) return TS_ERR_INVALID;
    }
    ts_status_t st = liveness_once(reg, ids, n, tokens, false, 0, NULL, NULL, NULL);
    if (st == TS_ERR_UNAVAILABLE) st = liveness_once(reg, ids, n, tokens, false, 0, NULL, NULL, NULL);
    return st;
}

ts_status_t ts_registry_liveness_poll(ts_registry_t *reg, uint32_t world, const char *const *ids, size_t n,
                                      char (*tokens)[TS_WORKER_TOKEN_MAX], uint64_t *version, char ***known,
                                      size_t *nknown)
{
    if (reg == NULL || version == NULL || known == NULL || nknown == NULL ||
        (n > 0 && (ids == NULL || tokens == NULL)))
        return TS_ERR_INVALID;
    *known = NULL;
    *nknown = 0;
    for (size_t i = 0; i < n; i++) {
        if (!valid_id(ids[i])) return TS_ERR_INVALID;
    }
    ts_status_t st = liveness_once(reg, ids, n, tokens, true, world, version, known, nknown);
    if (st == TS_ERR_UNAVAILABLE)
        st = liveness_once(reg, ids, n, tokens, true, world, version, known, nknown);
    if (st != TS_OK) {
        ts_registry_free_list(*known, *nknown);
        *known = NULL;
        *nknown = 0;
    }
    return st;
}

ts_status_t ts_registry_worker_is_alive(ts_registry_t *reg, const char *id, bool *alive)
{
    if (reg == NULL || !valid_id(id) || alive == NULL) return TS_ERR_INVALID;
    char akey[KEY_MAX], hash[KEY_MAX];
    worker_keys(id, akey, hash);
    const char *argv[] = {"EXISTS", akey};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 2, argv, NULL);
    if (st != TS_OK) return st;
    long long v;
    if (!reply_int(r, &v)) return unexpected(r, "EXISTS alive");
    freeReplyObject(r);
    *alive = v > 0;
    return TS_OK;
}

void ts_registry_free_list(char **ids, size_t n)
{
    if (ids == NULL) return;
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
    if (st != TS_OK) return st;
    if (r->type != REDIS_REPLY_ARRAY) return unexpected(r, "SMEMBERS");
    char **list = calloc(r->elements ? r->elements : 1, sizeof *list);
    if (list == NULL) {
        freeReplyObject(r);
        return TS_ERR_NOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
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
    if (reg == NULL || ids == NULL || n == NULL) return TS_ERR_INVALID;
    return smembers(reg, "ts:workers", ids, n);
}

ts_status_t ts_registry_worker_forget(ts_registry_t *reg, const char *id)
{
    if (reg == NULL || !valid_id(id)) return TS_ERR_INVALID;
    char alive[KEY_MAX], hash[KEY_MAX];
    worker_keys(id, alive, hash);
    const char *del[] = {"DEL", alive, hash};
    const char *srem[] = {"SREM", "ts:workers", id};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 3, del, NULL);
    if (r != NULL) freeReplyObject(r);
    if (st != TS_OK) return st;
    st = command(reg, true, &r, 3, srem, NULL);
    if (r != NULL) freeReplyObject(r);
    return st;
}

/* ---- draining workers -------------------------------------------------------- */

static ts_status_t draining_change(ts_registry_t *reg, uint32_t world, const char *id, const char *op)
{
    if (reg == NULL || !valid_id(id)) return TS_ERR_INVALID;
    char key[KEY_MAX];
    world_key(key, world, "draining");
    const char *argv[] = {op, key, id};
    redisReply *r = NULL;
    ts_status_t st = command(reg, true, &r, 3, argv, NULL);
    if (r != NULL) freeReplyObject(r);
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
    if (reg == NULL || ids == NULL || n == NULL) return TS_ERR_INVALID;
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
    if (reg == NULL || held == NULL || !valid_lock(name, holder) || ttl_ms <= 0) return TS_ERR_INVALID;
    *held = false;
    char key[KEY_MAX], ttl[24];
    snprintf(key, sizeof key, "ts:lock:%s", name);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *keys[] = {key};
    const char *args[] = {holder, ttl};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, SCRIPT_LOCK, 1, keys, 2, args);
    if (st != TS_OK) return st;
    long long v;
    if (!reply_int(r, &v)) return unexpected(r, "lock");
    freeReplyObject(r);
    *held = v == 1;
    return TS_OK;
}

ts_status_t ts_registry_unlock(ts_registry_t *reg, const char *name, const char *holder)
{
    if (reg == NULL || !valid_lock(name, holder)) return TS_ERR_INVALID;
    char key[KEY_MAX];
    snprintf(key, sizeof key, "ts:lock:%s", name);
    const char *keys[] = {key};
    const char *args[] = {holder};
    redisReply *r = NULL;
    ts_status_t st = eval(reg, true, &r, SCRIPT_UNLOCK, 1, keys, 1, args);
    if (r != NULL) freeReplyObject(r);
    return st;
}

/* ---- reset ------------------------------------------------------------------- */

ts_status_t ts_registry_world_reset(ts_registry_t *reg, uint32_t world)
{
    if (reg == NULL) return TS_ERR_INVALID;
    char pattern[KEY_MAX], cursor[32] = "0";
    world_key(pattern, world, "*");
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
        redisReply *r = NULL;
        ts_status_t st = command(reg, true, &r, 6, argv, NULL);
        if (st != TS_OK) return st;
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
                if (keys->element[i]->type == REDIS_REPLY_STRING) del[argc++] = keys->element[i]->str;
            redisReply *dr = NULL;
            st = argc > 1 ? command(reg, true, &dr, argc, del, NULL) : TS_OK;
            if (dr != NULL) freeReplyObject(dr);
            free(del);
        }
        freeReplyObject(r);
        if (st != TS_OK) return st;
    } while (strcmp(cursor, "0") != 0);
    return TS_OK;
}

/* ---- loss of the registry ---------------------------------------------------- */

ts_status_t ts_registry_world_probe(ts_registry_t *reg, uint32_t world, bool *has_meta, uint64_t *version)
{
    if (reg == NULL || has_meta == NULL || version == NULL) return TS_ERR_INVALID;
    char meta[KEY_MAX], vkey[KEY_MAX];
    world_key(meta, world, "meta");
    world_key(vkey, world, "version");
    for (int attempt = 0; attempt < 2; attempt++) {
        if (reg->ctx == NULL || reg->ctx->err) {
            ts_status_t st = open_ctx(reg);
            if (st != TS_OK) return st;
        }
        const char *exists[] = {"EXISTS", meta};
        const char *get[] = {"GET", vkey};
        if (redisAppendCommandArgv(reg->ctx, 2, exists, NULL) != REDIS_OK ||
            redisAppendCommandArgv(reg->ctx, 2, get, NULL) != REDIS_OK)
            return TS_ERR_NOMEM;
        reg->round_trips++;
        redisReply *r[2] = {NULL, NULL};
        bool io_ok = true;
        for (int i = 0; i < 2; i++) {
            if (redisGetReply(reg->ctx, (void **)&r[i]) != REDIS_OK || r[i] == NULL) {
                io_ok = false;
                break;
            }
        }
        if (!io_ok) {
            ts_warn("registry: probing world %" PRIu32 ": %s", world, reg->ctx->errstr);
            if (r[0] != NULL) freeReplyObject(r[0]);
            drop_ctx(reg);
            continue; /* reads only: safe to send again */
        }
        long long m = 0, v = 0;
        bool ok = reply_int(r[0], &m) && (r[1]->type == REDIS_REPLY_NIL || (reply_int(r[1], &v) && v >= 0));
        freeReplyObject(r[0]);
        freeReplyObject(r[1]);
        if (!ok) {
            ts_warn("registry: unexpected reply probing world %" PRIu32, world);
            return TS_ERR_REGISTRY;
        }
        *has_meta = m > 0;
        *version = (uint64_t)v;
        return TS_OK;
    }
    return TS_ERR_UNAVAILABLE;
}

#define REBUILD_CHUNK 256

/* One script call over cells[0..n) (n <= REBUILD_CHUNK). */
static ts_status_t rebuild_chunk(ts_registry_t *reg, const ts_cell_entry_t *cells, size_t n, uint64_t floor,
                                 uint64_t *versions)
{
    enum { NUM = 24 };
    size_t argc = 3 + 2 + n + 1 + 5 * n;
    const char **argv = calloc(argc, sizeof *argv);
    char *keys = calloc(n + 1, KEY_MAX);
    char *texts = calloc(n + 1, 2 * TS_CELL_STR_MAX + NUM);
    char vkey[KEY_MAX], ckey[KEY_MAX], nk[16], fl[NUM];
    ts_status_t st = argv && keys && texts ? TS_OK : TS_ERR_NOMEM;
    if (st != TS_OK) goto cleanup;
    world_key(vkey, cells[0].cell.world, "version");
    world_key(ckey, cells[0].cell.world, "cells");
    snprintf(nk, sizeof nk, "%zu", n + 2);
    snprintf(fl, sizeof fl, "%" PRIu64, floor);
    size_t k = 2; /* argv[0..1]: EVALSHA and the sha, set by eval_argv */
    argv[k++] = nk;
    argv[k++] = vkey;
    argv[k++] = ckey;
    for (size_t i = 0; i < n; i++) {
        char *text = texts + i * (2 * TS_CELL_STR_MAX + NUM);
        if (cell_key(keys + i * KEY_MAX, text, &cells[i].cell) != TS_OK || !valid_id(cells[i].owner) ||
            (unsigned)cells[i].state > TS_CELL_RETIRED || cells[i].epoch == 0 ||
            cells[i].cell.world != cells[0].cell.world) {
            st = TS_ERR_INVALID;
            goto cleanup;
        }
        argv[k++] = keys + i * KEY_MAX;
    }
    argv[k++] = fl;
    for (size_t i = 0; i < n; i++) {
        char *text = texts + i * (2 * TS_CELL_STR_MAX + NUM);
        char *parent = text + TS_CELL_STR_MAX, *epoch = text + 2 * TS_CELL_STR_MAX;
        parent[0] = '\0';
        ts_cell_t up;
        if (cells[i].cell.depth > 0 && ts_cell_parent(&cells[i].cell, &up) == TS_OK)
            ts_cell_format(&up, parent, TS_CELL_STR_MAX);
        snprintf(epoch, NUM, "%" PRIu64, cells[i].epoch);
        argv[k++] = text;
        argv[k++] = cells[i].owner;
        argv[k++] = epoch;
        argv[k++] = ts_cell_state_str(cells[i].state);
        argv[k++] = parent;
    }
    redisReply *r = NULL;
    st = eval_argv(reg, false, &r, SCRIPT_REBUILD, (int)k, argv);
    if (st != TS_OK) goto cleanup;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        st = unexpected(r, "registry rebuild");
        goto cleanup;
    }
    for (size_t i = 0; i < n && st == TS_OK; i++) {
        long long v = 0;
        if (!reply_int(r->element[i], &v) || v < 0)
            st = TS_ERR_REGISTRY;
        else
            versions[i] = (uint64_t)v;
    }
    freeReplyObject(r);
cleanup:
    free(argv);
    free(keys);
    free(texts);
    return st;
}

ts_status_t ts_registry_rebuild(ts_registry_t *reg, const ts_world_t *w, const ts_cell_entry_t *cells,
                                size_t n, uint64_t version_floor, uint64_t *versions)
{
    if (reg == NULL || w == NULL || (n > 0 && (cells == NULL || versions == NULL))) return TS_ERR_INVALID;
    for (size_t i = 0; i < n; i++) {
        if (cells[i].cell.world != w->id) return TS_ERR_INVALID;
        versions[i] = 0;
    }
    for (size_t from = 0; from < n; from += REBUILD_CHUNK) {
        size_t len = n - from < REBUILD_CHUNK ? n - from : REBUILD_CHUNK;
        ts_status_t st = rebuild_chunk(reg, cells + from, len, version_floor, versions + from);
        if (st != TS_OK) return st;
    }
    return ts_registry_world_set(reg, w);
}
