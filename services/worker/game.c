/* The game module host (see game_host.h and tessera/game.h). Tick thread
 * only, except the fault handler. */
#define _GNU_SOURCE
#include "game_host.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tessera/log.h"
#include "tessera/util.h"

#define LOG_EVERY_NS 1000000000ULL /* rate-limited lines: at most one a second per kind */

struct ts_game_host {
    const ts_game_module_t *m;
    void *dl; /* dlopen handle (NULL: in memory) */
    void *data;
    char name[64];
    char path[256];
    uint64_t budget_ns;
    double max_speed;
    ts_zone_game_hooks_t hooks;
    ts_game_stats_t st;
    /* rate limits: last line (monotonic ns) and lines suppressed since */
    uint64_t last_log_ns[4];
    uint64_t suppressed[4];
    /* ids of api->each (reused: no allocation per tick once grown) */
    uint64_t *ids, *ids_tmp; /* ids_tmp: the radix sort's other half */
    size_t cap_ids;
    int each_depth;
    /* matches of api->query, sorted by id before they are visited */
    struct qhit *hits;
    size_t cap_hits;
    int query_depth;
};

struct qhit {
    uint64_t id;
    const ts_entity_t *e;
    const ts_ghost_t *g;
};

enum { RL_ERROR = 0, RL_OVERRUN, RL_MODULE, RL_NOTE };

static const char *const cb_names[TS_GAME_CB_N] = {"on_join", "on_command", "on_request", "on_tick"};

static ts_game_host_t *g_host;

ts_game_host_t *ts_game_host_global(void)
{
    return g_host;
}

void ts_game_host_set_global(ts_game_host_t *h)
{
    g_host = h;
}

const char *ts_game_host_name(const ts_game_host_t *h)
{
    return h ? h->name : "move";
}

void ts_game_host_stats(const ts_game_host_t *h, ts_game_stats_t *out)
{
    if (h)
        *out = h->st;
    else
        memset(out, 0, sizeof(*out));
}

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* True if a line of kind k may be written now (else it is counted). */
static bool rate_ok(ts_game_host_t *h, int k, uint64_t now, uint64_t *suppressed)
{
    if (h->last_log_ns[k] && now - h->last_log_ns[k] < LOG_EVERY_NS) {
        h->suppressed[k]++;
        return false;
    }
    h->last_log_ns[k] = now;
    *suppressed = h->suppressed[k];
    h->suppressed[k] = 0;
    return true;
}

/* ---- crashes inside a callback -------------------------------------------- */

/* What the tick thread is running: read by the fault handler. */
static __thread volatile sig_atomic_t tl_in_cb;
static __thread const char *volatile tl_cb;
static __thread const char *volatile tl_cell;
static __thread bool tl_altstack;
static __thread void *tl_altstack_mem; /* freed by ts_game_host_close on that thread */
static const char *volatile g_fault_module = "move";
static volatile int g_fault_fd = -1; /* worker.fault_file, opened for appending */

static void put_fd(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

/* async-signal-safe: the crash line to stderr and to the fault file */
static void put(const char *s)
{
    put_fd(STDERR_FILENO, s);
    if (g_fault_fd >= 0) put_fd(g_fault_fd, s);
}

static void on_fault(int sig)
{
    if (tl_in_cb) {
        const char *what = sig == SIGSEGV  ? "SIGSEGV"
                           : sig == SIGBUS ? "SIGBUS"
                           : sig == SIGFPE ? "SIGFPE"
                                           : "SIGILL";
        put_fd(STDERR_FILENO, "ERROR ");
        put("game module ");
        put(g_fault_module);
        put(" crashed (");
        put(what);
        put(") in ");
        put(tl_cb ? tl_cb : "?");
        put(" of cell ");
        put(tl_cell ? tl_cell : "?");
        put("; the worker exits and its cells are recovered elsewhere\n");
        if (g_host) g_host->st.faults++;
    }
    /* the default action: the process dies of the signal */
    signal(sig, SIG_DFL);
    raise(sig);
}

void ts_game_host_install_fault_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
}

int ts_game_host_set_fault_file(ts_game_host_t *h, const char *path)
{
    if (!path || !path[0]) return 0;
    int earlier = 0;
    char last[512] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof(line), f)) {
            if (!strstr(line, "game module ")) continue;
            earlier++;
            line[strcspn(line, "\n")] = 0;
            ts_strlcpy(last, line, sizeof(last));
        }
        fclose(f);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        ts_error("worker.fault_file %s: cannot open: %s (game module crashes are logged only)", path,
                 strerror(errno));
        return -1;
    }
    if (g_fault_fd >= 0) close(g_fault_fd);
    g_fault_fd = fd;
    h->st.faults = (uint64_t)earlier;
    if (earlier > 0)
        ts_warn("worker.fault_file %s: %d earlier crash%s of this worker in a game module; the last: %s",
                path, earlier, earlier == 1 ? "" : "es", last);
    return earlier;
}

/* The thread running callbacks gets a signal stack of its own (a stack
 * overflow in a module still reports). Kept for the thread's life. */
static void ensure_altstack(void)
{
    if (tl_altstack) return;
    tl_altstack = true;
    stack_t ss;
    memset(&ss, 0, sizeof(ss));
    size_t size = 64 * 1024;
    ss.ss_sp = malloc(size);
    if (!ss.ss_sp) return;
    ss.ss_size = size;
    if (sigaltstack(&ss, NULL) != 0)
        free(ss.ss_sp);
    else
        tl_altstack_mem = ss.ss_sp;
}

/* ---- calling the module ---------------------------------------------------- */

typedef struct {
    ts_game_host_t *h;
    ts_zone_t *z;
    ts_game_cb_t cb;
    uint64_t t0;
} call_t;

static void call_begin(call_t *c, ts_game_host_t *h, ts_zone_t *z, ts_game_cb_t cb)
{
    c->h = h;
    c->z = z;
    c->cb = cb;
    ensure_altstack();
    tl_cb = cb_names[cb];
    tl_cell = z->key;
    tl_in_cb = 1;
    c->t0 = mono_ns();
}

/* " (N more not logged)" (tick thread only: one buffer) */
static const char *suppressed_note(uint64_t n)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), " (%llu more not logged)", (unsigned long long)n);
    return buf;
}

static void call_end(call_t *c, int rc)
{
    uint64_t now = mono_ns();
    tl_in_cb = 0;
    ts_game_host_t *h = c->h;
    ts_zone_t *z = c->z;
    if (z->game.state_len > TS_GAME_CELL_STATE_MAX) z->game.state_len = TS_GAME_CELL_STATE_MAX;
    uint64_t took = now - c->t0, sup;
    if (took > h->budget_ns) {
        h->st.overruns++;
        if (rate_ok(h, RL_OVERRUN, now, &sup))
            ts_warn("game module %s: %s of cell %s took %.1f ms (budget %.0f ms)%s", h->name, cb_names[c->cb],
                    z->key, (double)took / 1e6, (double)h->budget_ns / 1e6, sup ? suppressed_note(sup) : "");
    }
    if (rc < 0) {
        h->st.errors[c->cb]++;
        if (rate_ok(h, RL_ERROR, now, &sup))
            ts_warn("game module %s: %s of cell %s returned error %d; the cell goes on%s", h->name,
                    cb_names[c->cb], z->key, rc, sup ? suppressed_note(sup) : "");
    }
}

static double clamp_speed(double v, double max)
{
    if (!isfinite(v)) return 0;
    return v > max ? max : (v < -max ? -max : v);
}

static void view_of(const ts_entity_t *e, ts_game_entity_t *v)
{
    v->id = e->id;
    v->x = e->x;
    v->y = e->y;
    v->vx = e->vx;
    v->vy = e->vy;
    v->flags = e->flags;
    v->state_len = e->state_len;
    memcpy(v->state, e->state, e->state_len);
    /* the rest zeroed: a module growing state_len never copies stack bytes
     * (which would differ on replay) into the entity */
    memset(v->state + e->state_len, 0, TS_GAME_STATE_MAX - e->state_len);
    v->name = e->name;
}

static void view_of_ghost(const ts_ghost_t *g, ts_game_entity_t *v)
{
    v->id = g->id;
    v->x = g->x;
    v->y = g->y;
    v->vx = g->vx;
    v->vy = g->vy;
    v->flags = g->flags | TS_GAME_GHOST;
    v->state_len = g->state_len;
    memcpy(v->state, g->state, g->state_len);
    memset(v->state + g->state_len, 0, TS_GAME_STATE_MAX - g->state_len);
    v->name = "";
}

/* Writes what the module changed in view v (against orig, the copy it was
 * given) into the entity, if it is still here. */
static void write_back(ts_game_host_t *h, ts_zone_t *z, const ts_game_entity_t *orig,
                       const ts_game_entity_t *v)
{
    ts_entity_t *e = ts_map_get(&z->entities, orig->id);
    if (!e) return; /* despawned or gone meanwhile */
    bool changed = false;
    if (v->vx != orig->vx || v->vy != orig->vy) {
        double vx = clamp_speed(v->vx, h->max_speed), vy = clamp_speed(v->vy, h->max_speed);
        if (vx != e->vx || vy != e->vy) {
            e->vx = vx;
            e->vy = vy;
            changed = true;
        }
    }
    uint32_t len = v->state_len < TS_GAME_STATE_MAX ? v->state_len : TS_GAME_STATE_MAX;
    if (len != orig->state_len || memcmp(v->state, orig->state, len) != 0) {
        if (len != e->state_len || memcmp(e->state, v->state, len) != 0) {
            memcpy(e->state, v->state, len);
            e->state_len = len;
            changed = true;
        }
    }
    if (changed) ts_zone_touch(z, e);
}

/* A per-tick bound: the counts since the cell's last on_tick. */
static void counts_reset(ts_zone_t *z)
{
    z->game_spawns = 0;
    z->game_requests = 0;
}

/* ---- hooks (the zone calls these) ----------------------------------------------- */

/* Runs one entity callback (join, command or request) for input in: the
 * module gets a writable copy of e, and what it changed is written back. */
static void entity_cb(ts_game_host_t *h, ts_zone_t *z, ts_entity_t *e, const ts_input_t *in, ts_game_cb_t cb)
{
    ts_game_ctx_t ctx = {.h = h, .z = z, .req = cb == TS_GAME_CB_REQUEST ? in : NULL};
    ts_game_entity_t orig, v;
    view_of(e, &orig);
    v = orig;
    call_t c;
    call_begin(&c, h, z, cb);
    int rc;
    if (cb == TS_GAME_CB_JOIN) {
        rc = h->m->on_join(&ctx, &v, in->payload, in->payload_len);
    } else if (cb == TS_GAME_CB_COMMAND) {
        h->st.commands++;
        rc = h->m->on_command(&ctx, &v, in->type, in->payload, in->payload_len);
    } else {
        ts_game_request_t req = {.from = in->from,
                                 .from_x = in->from_x,
                                 .from_y = in->from_y,
                                 .type = in->type,
                                 .payload = in->payload,
                                 .len = in->payload_len};
        h->st.requests++;
        rc = h->m->on_request(&ctx, &v, &req);
    }
    call_end(&c, rc);
    write_back(h, z, &orig, &v);
}

static void hook_join(void *ud, ts_zone_t *z, ts_entity_t *e, const ts_input_t *in)
{
    entity_cb(ud, z, e, in, TS_GAME_CB_JOIN);
}

static void hook_command(void *ud, ts_zone_t *z, ts_entity_t *e, const ts_input_t *in)
{
    entity_cb(ud, z, e, in, TS_GAME_CB_COMMAND);
}

static void hook_request(void *ud, ts_zone_t *z, ts_entity_t *e, const ts_input_t *in)
{
    entity_cb(ud, z, e, in, TS_GAME_CB_REQUEST);
}

static void hook_tick(void *ud, ts_zone_t *z, double dt, uint64_t tick)
{
    (void)tick;
    ts_game_host_t *h = ud;
    ts_game_ctx_t ctx = {.h = h, .z = z, .in_tick = true};
    call_t c;
    call_begin(&c, h, z, TS_GAME_CB_TICK);
    h->m->on_tick(&ctx, dt);
    call_end(&c, 0);
    counts_reset(z);
}

void ts_game_host_attach(ts_game_host_t *h, ts_zone_t *z, double max_speed)
{
    if (!h) return;
    h->max_speed = max_speed;
    bool any = h->hooks.on_join || h->hooks.on_command || h->hooks.on_request || h->hooks.on_tick;
    z->game_hooks = any ? &h->hooks : NULL;
    z->game_ud = h;
}

/* ---- the api ----------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* each and query visit in id order: the zone's hash map iterates in an
 * order that depends on its history, which a replaying owner does not share
 * (a module drawing random numbers per entity would diverge). */
/* Sorts v[0..n) with tmp (n items) as scratch: LSD radix, a byte a pass,
 * skipping the bytes every id shares (most of a player id's top bytes). */
static void radix_sort(uint64_t *v, uint64_t *tmp, size_t n)
{
    uint64_t *src = v, *dst = tmp;
    for (unsigned shift = 0; shift < 64; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; i++)
            count[((src[i] >> shift) & 0xff) + 1]++;
        if (count[((src[0] >> shift) & 0xff) + 1] == n) continue; /* one digit for all */
        for (size_t b = 1; b <= 256; b++)
            count[b] += count[b - 1];
        for (size_t i = 0; i < n; i++)
            dst[count[(src[i] >> shift) & 0xff]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != v) memcpy(v, src, n * sizeof(*v));
}

static size_t api_each(ts_game_ctx_t *ctx, ts_game_each_fn fn, void *ud)
{
    ts_game_host_t *h = ctx->h;
    ts_zone_t *z = ctx->z;
    size_t n = z->entities.len;
    uint64_t *ids, *tmp;
    /* the ids first: fn may spawn or despawn */
    if (h->each_depth == 0) {
        if (h->cap_ids < n) {
            size_t cap = n < 64 ? 64 : n * 2;
            uint64_t *p = realloc(h->ids, cap * sizeof(*p));
            if (p) h->ids = p;
            uint64_t *q = realloc(h->ids_tmp, cap * sizeof(*q));
            if (q) h->ids_tmp = q;
            if (!p || !q) return 0;
            h->cap_ids = cap;
        }
        ids = h->ids;
        tmp = h->ids_tmp;
    } else {
        ids = malloc((n ? n : 1) * 2 * sizeof(*ids));
        if (!ids) return 0;
        tmp = ids + (n ? n : 1);
    }
    size_t k = 0;
    uint64_t id;
    void *v;
    for (size_t it = 0; k < n && ts_map_next(&z->entities, &it, &id, &v);)
        ids[k++] = id;
    if (k > 1) radix_sort(ids, tmp, k);
    h->each_depth++;
    size_t done = 0;
    for (size_t i = 0; i < k; i++) {
        ts_entity_t *e = ts_map_get(&z->entities, ids[i]);
        if (!e) continue;
        ts_game_entity_t orig, view;
        view_of(e, &orig);
        view = orig;
        fn(ud, &view);
        write_back(h, z, &orig, &view);
        done++;
    }
    h->each_depth--;
    if (ids != h->ids) free(ids);
    return done;
}

typedef struct {
    struct qhit *v;
    size_t n, cap;
    bool failed;
} hits_t;

static void query_collect(void *ud, const ts_entity_t *e, const ts_ghost_t *g)
{
    hits_t *q = ud;
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        struct qhit *p = realloc(q->v, cap * sizeof(*p));
        if (!p) {
            q->failed = true;
            return;
        }
        q->v = p;
        q->cap = cap;
    }
    q->v[q->n++] = (struct qhit){.id = e ? e->id : g->id, .e = e, .g = g};
}

static int cmp_hit(const void *a, const void *b)
{
    return cmp_u64(&((const struct qhit *)a)->id, &((const struct qhit *)b)->id);
}

static size_t api_query(ts_game_ctx_t *ctx, double x, double y, double r, ts_game_visit_fn fn, void *ud)
{
    ts_game_host_t *h = ctx->h;
    if (!fn) return ts_zone_query_radius(ctx->z, x, y, r, NULL, NULL);
    /* the outermost query reuses the host's array (no allocation per tick once grown) */
    hits_t q = {0};
    if (h->query_depth == 0) {
        q.v = h->hits;
        q.cap = h->cap_hits;
    }
    ts_zone_query_radius(ctx->z, x, y, r, query_collect, &q);
    if (h->query_depth == 0) {
        h->hits = q.v;
        h->cap_hits = q.cap;
    }
    qsort(q.v, q.n, sizeof(*q.v), cmp_hit);
    h->query_depth++;
    ctx->in_query++; /* no spawn or despawn: the hits point into the zone */
    for (size_t i = 0; i < q.n; i++) {
        ts_game_entity_t v;
        if (q.v[i].e)
            view_of(q.v[i].e, &v);
        else
            view_of_ghost(q.v[i].g, &v);
        fn(ud, &v);
    }
    ctx->in_query--;
    h->query_depth--;
    if (q.v != h->hits) free(q.v);
    return q.n;
}

static int api_get(ts_game_ctx_t *ctx, uint64_t id, ts_game_entity_t *out)
{
    const ts_entity_t *e = ts_map_get(&ctx->z->entities, id);
    if (e) {
        view_of(e, out);
        return TS_GAME_OK;
    }
    const ts_ghost_t *g = ts_map_get(&ctx->z->ghosts, id);
    if (g) {
        view_of_ghost(g, out);
        return TS_GAME_OK;
    }
    return TS_GAME_ENOENT;
}

static int api_set(ts_game_ctx_t *ctx, const ts_game_entity_t *v)
{
    ts_zone_t *z = ctx->z;
    ts_entity_t *e = ts_map_get(&z->entities, v->id);
    if (!e) return ts_map_get(&z->ghosts, v->id) ? TS_GAME_EPERM : TS_GAME_ENOENT;
    if (v->state_len > TS_GAME_STATE_MAX) return TS_GAME_EINVAL;
    double vx = clamp_speed(v->vx, ctx->h->max_speed), vy = clamp_speed(v->vy, ctx->h->max_speed);
    if (vx != e->vx || vy != e->vy || v->state_len != e->state_len ||
        memcmp(v->state, e->state, v->state_len) != 0) {
        e->vx = vx;
        e->vy = vy;
        memcpy(e->state, v->state, v->state_len);
        e->state_len = v->state_len;
        ts_zone_touch(z, e);
    }
    return TS_GAME_OK;
}

static int64_t api_spawn(ts_game_ctx_t *ctx, double x, double y, const char *name, const void *state,
                         size_t state_len)
{
    ts_zone_t *z = ctx->z;
    if (ctx->in_query) return TS_GAME_EPERM; /* the grid is being read */
    if (state_len > TS_GAME_STATE_MAX || (state_len && !state)) return TS_GAME_EINVAL;
    if (!isfinite(x) || !isfinite(y) || !ts_cell_has_pos(&z->cell, z->cell_size, x, y)) return TS_GAME_ERANGE;
    if (z->game_spawns >= TS_GAME_SPAWNS_PER_TICK) return TS_GAME_ENOSPC;
    ts_entity_t *e = calloc(1, sizeof(*e));
    if (!e) return TS_GAME_ENOSPC;
    /* an id nobody here has (a clash of the 48-bit mix is tried past) */
    uint64_t id;
    int tries = 0;
    do {
        id = ts_zone_npc_id(z, z->game.spawned++);
    } while ((ts_map_get(&z->entities, id) || ts_map_get(&z->ghosts, id)) && ++tries < 8);
    if (tries == 8) {
        free(e);
        return TS_GAME_ENOSPC;
    }
    e->id = id;
    e->x = x;
    e->y = y;
    e->flags = TS_GAME_NPC;
    e->incarnation = z->cur_stream_seq > z->last_applied_seq ? z->cur_stream_seq : z->last_applied_seq;
    if (name) ts_strlcpy(e->name, name, sizeof(e->name));
    if (state_len) memcpy(e->state, state, state_len);
    e->state_len = (uint32_t)state_len;
    if (!ts_zone_add_entity(z, e)) return TS_GAME_ENOSPC;
    z->game_spawns++;
    return (int64_t)id;
}

static int api_despawn(ts_game_ctx_t *ctx, uint64_t id)
{
    ts_zone_t *z = ctx->z;
    ts_entity_t *e = ts_map_get(&z->entities, id);
    if (!e) return ts_map_get(&z->ghosts, id) ? TS_GAME_EPERM : TS_GAME_ENOENT;
    if (!(e->flags & TS_GAME_NPC) || ctx->in_query) return TS_GAME_EPERM;
    ts_zone_despawn(z, e);
    return TS_GAME_OK;
}

static int emit(ts_game_ctx_t *ctx, const ts_zone_event_t *ev, const void *payload)
{
    ts_zone_event_t e = *ev;
    if (e.len) memcpy(e.payload, payload, e.len);
    if (!ts_zone_add_event(ctx->z, &e)) return TS_GAME_ENOSPC;
    ctx->h->st.events++;
    return TS_GAME_OK;
}

static int api_emit_to(ts_game_ctx_t *ctx, uint64_t entity, uint32_t type, const void *payload, size_t len)
{
    if (len > TS_GAME_PAYLOAD_MAX || (len && !payload)) return TS_GAME_EINVAL;
    const ts_entity_t *e = ts_map_get(&ctx->z->entities, entity);
    if (!e || !(e->flags & TS_GAME_PLAYER)) return TS_GAME_ENOENT;
    ts_zone_event_t ev = {.type = type, .entity = entity, .x = e->x, .y = e->y, .len = (uint32_t)len};
    return emit(ctx, &ev, payload);
}

static int api_emit_at(ts_game_ctx_t *ctx, double x, double y, uint32_t type, const void *payload, size_t len)
{
    ts_zone_t *z = ctx->z;
    if (len > TS_GAME_PAYLOAD_MAX || (len && !payload)) return TS_GAME_EINVAL;
    if (!(x >= z->min_x && x < z->max_x && y >= z->min_y && y < z->max_y)) return TS_GAME_ERANGE;
    ts_zone_event_t ev = {.type = type, .positional = true, .x = x, .y = y, .len = (uint32_t)len};
    return emit(ctx, &ev, payload);
}

static int api_request(ts_game_ctx_t *ctx, uint64_t from, uint64_t target, uint32_t type, const void *payload,
                       size_t len)
{
    ts_zone_t *z = ctx->z;
    if (len > TS_GAME_PAYLOAD_MAX || (len && !payload) || target == 0) return TS_GAME_EINVAL;
    ts_cell_t to;
    if (ctx->req && target == ctx->req->from && !ts_map_get(&z->entities, target))
        /* an answer to the requester goes to the cell it asked from (its
         * departed record there forwards it if it moved on): known from the
         * input, so a replay routes it the same, ghost or not */
        to = ctx->req->from_cell;
    else if (!ts_zone_locate(z, target, &to))
        return TS_GAME_ENOENT;
    if (z->game_requests >= TS_GAME_REQUESTS_PER_TICK) return TS_GAME_ENOSPC;
    ts_input_t in;
    memset(&in, 0, sizeof(in));
    in.entity = target;
    in.kind = TS_INPUT_REQUEST;
    in.type = type;
    in.payload_len = (uint32_t)len;
    if (len) memcpy(in.payload, payload, len);
    in.from = from;
    const ts_entity_t *fe = ts_map_get(&z->entities, from);
    const ts_ghost_t *fg = fe ? NULL : ts_map_get(&z->ghosts, from);
    in.from_x = fe ? fe->x : fg ? fg->x : 0;
    in.from_y = fe ? fe->y : fg ? fg->y : 0;
    in.from_cell = z->cell;
    in.from_epoch = z->epoch;
    in.sent_us = 0; /* deterministic bytes: a replay publishes the same message */
    if (!ts_zone_send_request(z, &to, &in, ctx->in_tick)) return TS_GAME_ENOSPC;
    z->game_requests++;
    ctx->h->st.requests_sent++;
    return TS_GAME_OK;
}

static uint64_t api_rng(ts_game_ctx_t *ctx)
{
    return ts_splitmix64(&ctx->z->game.rng); /* one word of state: Checkpoint.game_rng */
}

static double api_rng_unit(ts_game_ctx_t *ctx)
{
    return (double)(api_rng(ctx) >> 11) * 0x1p-53;
}

static double api_time(ts_game_ctx_t *ctx)
{
    return ctx->z->game.time;
}

static uint8_t *api_cell_state(ts_game_ctx_t *ctx, size_t **len)
{
    if (len) *len = &ctx->z->game.state_len;
    return ctx->z->game.state;
}

static void api_cell_bounds(ts_game_ctx_t *ctx, double *x0, double *y0, double *x1, double *y1)
{
    ts_cell_bounds(&ctx->z->cell, ctx->z->cell_size, x0, y0, x1, y1);
}

static void api_world_bounds(ts_game_ctx_t *ctx, double *x0, double *y0, double *x1, double *y1)
{
    *x0 = ctx->z->min_x;
    *y0 = ctx->z->min_y;
    *x1 = ctx->z->max_x;
    *y1 = ctx->z->max_y;
}

static void *api_module_data(ts_game_ctx_t *ctx)
{
    return ctx->h->data;
}

static void api_log(ts_game_ctx_t *ctx, int level, const char *fmt, ...)
{
    ts_game_host_t *h = ctx->h;
    uint64_t sup = 0;
    if (level < 0) level = 0;
    if (level > 3) level = 3;
    if (!ts_log_enabled((ts_log_level_t)level)) return;
    if (level >= 1 && !rate_ok(h, RL_MODULE, mono_ns(), &sup)) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (sup)
        ts_log((ts_log_level_t)level, "game module %s: cell %s: %s (%llu lines not logged)", h->name,
               ctx->z->key, msg, (unsigned long long)sup);
    else
        ts_log((ts_log_level_t)level, "game module %s: cell %s: %s", h->name, ctx->z->key, msg);
}

static int api_counter_add(ts_game_ctx_t *ctx, uint32_t index, int64_t delta)
{
    if (index >= TS_GAME_COUNTERS) return TS_GAME_EINVAL;
    /* unsigned arithmetic: an overflow wraps instead of being undefined */
    ctx->z->game.counters[index] = (int64_t)((uint64_t)ctx->z->game.counters[index] + (uint64_t)delta);
    return TS_GAME_OK;
}

static const ts_game_api_t api = {
    .abi_version = TS_GAME_ABI_VERSION,
    .each = api_each,
    .query = api_query,
    .get = api_get,
    .set = api_set,
    .spawn = api_spawn,
    .despawn = api_despawn,
    .emit_to = api_emit_to,
    .emit_at = api_emit_at,
    .request = api_request,
    .rng = api_rng,
    .rng_unit = api_rng_unit,
    .time = api_time,
    .cell_state = api_cell_state,
    .cell_bounds = api_cell_bounds,
    .world_bounds = api_world_bounds,
    .module_data = api_module_data,
    .log = api_log,
    .counter_add = api_counter_add,
};

/* ---- loading ------------------------------------------------------------------- */

void ts_game_split_state(const ts_zone_game_t *parent, unsigned quadrant, ts_zone_game_t *child)
{
    *child = *parent;
    /* the world counters stay with the parent, which moves them to child
     * quadrant 0 through the input streams (zone.h: ts_zone_queue_counter_move) */
    memset(child->counters, 0, sizeof(child->counters));
    uint64_t x = ts_mix64(parent->rng ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(quadrant + 1)));
    child->rng = x ? x : 1;
}

ts_status_t ts_game_host_open(ts_game_host_t **out, const ts_game_module_t *m, const char *config,
                              int64_t budget_ms, char *err, size_t errcap)
{
    *out = NULL;
    if (!m) {
        snprintf(err, errcap, "no module table");
        return TS_ERR_CONFIG;
    }
    if (m->abi_version != TS_GAME_ABI_VERSION) {
        snprintf(err, errcap, "game module %s has ABI version %u, this worker needs %u",
                 m->name ? m->name : "(unnamed)", (unsigned)m->abi_version, (unsigned)TS_GAME_ABI_VERSION);
        return TS_ERR_CONFIG;
    }
    ts_game_host_t *h = calloc(1, sizeof(*h));
    if (!h) return TS_ERR_NOMEM;
    h->m = m;
    ts_strlcpy(h->name, m->name && m->name[0] ? m->name : "unnamed", sizeof(h->name));
    h->budget_ns = (uint64_t)(budget_ms > 0 ? budget_ms : 10) * 1000000ULL;
    h->max_speed = INFINITY;
    h->hooks.on_join = m->on_join ? hook_join : NULL;
    h->hooks.on_command = m->on_command ? hook_command : NULL;
    h->hooks.on_request = m->on_request ? hook_request : NULL;
    h->hooks.on_tick = m->on_tick ? hook_tick : NULL;
    if (m->load) {
        int rc = m->load(&api, config ? config : "", &h->data);
        if (rc != 0) {
            snprintf(err, errcap, "game module %s: load() failed with %d (worker.game_config \"%s\")",
                     h->name, rc, config ? config : "");
            free(h);
            return TS_ERR_CONFIG;
        }
    }
    g_fault_module = h->name;
    *out = h;
    return TS_OK;
}

static const ts_game_module_t move_module = {.abi_version = TS_GAME_ABI_VERSION, .name = "move"};

ts_status_t ts_game_host_load(ts_game_host_t **out, const char *path, const char *config, int64_t budget_ms,
                              char *err, size_t errcap)
{
    *out = NULL;
    if (!path || !path[0] || strcmp(path, "move") == 0)
        return ts_game_host_open(out, &move_module, config, budget_ms, err, errcap);
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(err, errcap, "worker.game %s: cannot load: %s", path, dlerror());
        return TS_ERR_CONFIG;
    }
    ts_game_module_fn fn;
    *(void **)&fn = dlsym(dl, TS_GAME_MODULE_SYMBOL);
    const ts_game_module_t *m = fn ? fn() : NULL;
    if (!m) {
        snprintf(err, errcap, "worker.game %s: no %s() returning a module table", path,
                 TS_GAME_MODULE_SYMBOL);
        dlclose(dl);
        return TS_ERR_CONFIG;
    }
    if (m->abi_version != TS_GAME_ABI_VERSION) {
        snprintf(err, errcap,
                 "worker.game %s: module %s has ABI version %u, this worker needs %u (rebuild it "
                 "against this tessera/game.h)",
                 path, m->name ? m->name : "(unnamed)", (unsigned)m->abi_version,
                 (unsigned)TS_GAME_ABI_VERSION);
        dlclose(dl);
        return TS_ERR_CONFIG;
    }
    ts_status_t st = ts_game_host_open(out, m, config, budget_ms, err, errcap);
    if (st != TS_OK) {
        dlclose(dl);
        return st;
    }
    (*out)->dl = dl;
    ts_strlcpy((*out)->path, path, sizeof((*out)->path));
    ts_game_host_install_fault_handlers();
    return TS_OK;
}

void ts_game_host_close(ts_game_host_t *h)
{
    if (!h) return;
    if (tl_altstack_mem) { /* the thread closing it is the one that ran the callbacks */
        stack_t ss;
        memset(&ss, 0, sizeof(ss));
        ss.ss_flags = SS_DISABLE;
        if (sigaltstack(&ss, NULL) == 0) {
            free(tl_altstack_mem);
            tl_altstack_mem = NULL;
            tl_altstack = false;
        }
    }
    if (h->m->unload) h->m->unload(h->data);
    if (g_host == h) g_host = NULL;
    g_fault_module = "move";
    if (g_fault_fd >= 0) {
        close(g_fault_fd);
        g_fault_fd = -1;
    }
    if (h->dl) dlclose(h->dl);
    free(h->ids);
    free(h->ids_tmp);
    free(h->hits);
    free(h);
}
