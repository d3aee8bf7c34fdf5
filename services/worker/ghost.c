/* Ghosts: what the owners of neighbouring cells see of each other's borders.
 *
 * Out: every tick each live cell this worker owns publishes, on
 * `<cell>.ghost` (core NATS, through the publisher thread), the entities
 * within ghost.margin of its borders that changed and the ids that left the
 * band; every ghost.keyframe_ticks ticks a keyframe with all of them.
 *
 * In: the worker subscribes to the ghost subject of every live neighbour
 * (ts_celltree_neighbors, any depth, any owner: its own cells included, so a
 * border between two cells of this worker works exactly like one between
 * two workers) of every live cell it owns. Messages are unpacked on the
 * nats.c thread and queued (bounded: when full they are dropped and counted,
 * the next keyframe repairs it); the tick thread applies them to the
 * interested zones before the cells step. A message whose epoch is older
 * than the registry's epoch of its cell is ignored; a keyframe replaces
 * what the zone held from that cell; a cell that falls silent for two
 * keyframe periods loses its ghosts; a cell that stops being a live
 * neighbour loses them at once.
 *
 * Subscriptions follow the registry: when the view's version or the set of
 * bound cells changes, the tick thread recomputes the neighbours of its own
 * cells (O(cells owned x neighbours), only on such ticks) and hands the
 * list to the ghost thread, which makes the (possibly blocking) subscribe
 * and unsubscribe calls. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define GHOST_QUEUE 4096 /* ghost messages waiting for the tick thread */

/* A neighbour cell whose ghosts this worker follows. */
typedef struct {
    ts_cell_t cell;
    bool seen;          /* still wanted by the recompute under way */
    uint64_t last_tick; /* tick of the last message applied from it (0: none yet) */
    uint32_t keyframe_ticks;
    ts_cell_t *zones; /* my live cells it neighbours */
    uint64_t *stamps; /* the keyframe stamp of each of those zones */
    size_t nzones, cap;
} source_t;

struct ts_ghosts {
    ts_worker_t *w;
    double radius, margin;
    uint32_t keyframe_ticks;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    /* nats.c threads -> tick thread (under mu) */
    Tessera__V1__GhostDelta **q, **q_spare;
    size_t nq;
    /* tick thread -> ghost thread (under mu): the cells to follow */
    ts_cell_t *want;
    size_t nwant;
    bool want_new, stop;
    pthread_t thread;
    bool started;
    ts_cellmap_t subs; /* ghost thread: cell -> ts_bus_sub_t* */
    /* tick thread */
    ts_cellmap_t sources; /* cell -> source_t* */
    uint64_t view_version;
    uint64_t bindings_changed; /* w->bindings_changed at the last recompute */
    bool computed;
    ts_ghost_stats_t st;
    _Atomic uint64_t msgs_in, bytes_in, dropped_in;
};

/* ---- the ghost thread: subscriptions ----------------------------------- */

static void on_ghost(void *ud, const ts_bus_msg_t *m)
{
    struct ts_ghosts *g = ud;
    size_t len = ts_bus_msg_len(m);
    atomic_fetch_add(&g->msgs_in, 1);
    atomic_fetch_add(&g->bytes_in, len);
    Tessera__V1__GhostDelta *d = tessera__v1__ghost_delta__unpack(NULL, len, ts_bus_msg_data(m));
    if (!d) {
        atomic_fetch_add(&g->dropped_in, 1);
        return;
    }
    pthread_mutex_lock(&g->mu);
    bool queued = g->nq < GHOST_QUEUE && !g->stop;
    if (queued) g->q[g->nq++] = d;
    pthread_mutex_unlock(&g->mu);
    if (!queued) {
        atomic_fetch_add(&g->dropped_in, 1);
        tessera__v1__ghost_delta__free_unpacked(d, NULL);
    }
}

static void sub_destroy(void *v)
{
    ts_bus_sub_destroy(v);
}

typedef struct {
    ts_cellmap_t *want;
    ts_cell_t *gone;
    size_t ngone, cap;
} diff_t;

static void collect_gone(void *ud, const ts_cell_t *cell, void *val)
{
    diff_t *d = ud;
    if (ts_cellmap_get(d->want, cell)) return;
    if (d->ngone == d->cap) {
        size_t ncap = d->cap ? d->cap * 2 : 16;
        ts_cell_t *v = realloc(d->gone, ncap * sizeof(*v));
        if (!v) return;
        d->gone = v;
        d->cap = ncap;
    }
    d->gone[d->ngone++] = *cell;
}

/* Brings the subscriptions in line with want[0..n). False if a subscribe
 * failed (tried again a second later). */
static bool follow(struct ts_ghosts *g, const ts_cell_t *want, size_t n)
{
    bool ok = true;
    ts_cellmap_t set;
    ts_cellmap_init(&set);
    for (size_t i = 0; i < n; i++)
        ts_cellmap_put(&set, &want[i], (void *)1);
    diff_t d = {.want = &set};
    ts_cellmap_each(&g->subs, collect_gone, &d);
    for (size_t i = 0; i < d.ngone; i++)
        ts_bus_sub_destroy(ts_cellmap_del(&g->subs, &d.gone[i]));
    free(d.gone);
    ts_cellmap_free(&set);
    for (size_t i = 0; i < n; i++) {
        if (ts_cellmap_get(&g->subs, &want[i])) continue;
        char subj[TS_SUBJECT_MAX];
        ts_subject_cell(subj, sizeof(subj), &want[i], TS_SUBJ_GHOST);
        ts_bus_sub_t *sub = NULL;
        ts_status_t st = ts_bus_subscribe(g->w->bus, subj, on_ghost, g, &sub);
        if (st == TS_OK && ts_cellmap_put(&g->subs, &want[i], sub) == TS_OK) continue;
        if (sub) ts_bus_sub_destroy(sub);
        ts_warn("ghosts: cannot subscribe to %s (%s); trying again in a second", subj, ts_status_str(st));
        ok = false;
    }
    return ok;
}

static void *ghost_main(void *arg)
{
    struct ts_ghosts *g = arg;
    ts_cell_t *want = NULL;
    size_t nwant = 0;
    bool retry = false;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->want_new && !g->stop) {
            struct timespec until;
            ts_mono_deadline(&until, 1000000000ULL);
            if (pthread_cond_timedwait(&g->cond, &g->mu, &until) == ETIMEDOUT && retry) break;
        }
        if (g->stop) break;
        g->want_new = false;
        if (g->want) { /* a newer list: take it */
            free(want);
            want = g->want;
            nwant = g->nwant;
            g->want = NULL;
            g->nwant = 0;
        }
        pthread_mutex_unlock(&g->mu);
        retry = !follow(g, want, nwant);
        pthread_mutex_lock(&g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    free(want);
    ts_cellmap_clear(&g->subs, sub_destroy);
    return NULL;
}

ts_status_t ts_ghost_start(ts_worker_t *w)
{
    struct ts_ghosts *g = calloc(1, sizeof(*g));
    if (!g) return TS_ERR_NOMEM;
    g->w = w;
    g->radius = w->cfg->aoi_interact_radius > 0 ? w->cfg->aoi_interact_radius : TS_ZONE_INTERACT_RADIUS;
    g->margin = w->cfg->ghost_margin > g->radius ? w->cfg->ghost_margin : g->radius;
    g->keyframe_ticks = w->cfg->ghost_keyframe_ticks > 0 ? (uint32_t)w->cfg->ghost_keyframe_ticks : 10;
    g->q = calloc(GHOST_QUEUE, sizeof(*g->q));
    g->q_spare = calloc(GHOST_QUEUE, sizeof(*g->q_spare));
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cond, &ca);
    pthread_condattr_destroy(&ca);
    ts_cellmap_init(&g->subs);
    ts_cellmap_init(&g->sources);
    atomic_init(&g->msgs_in, 0);
    atomic_init(&g->bytes_in, 0);
    atomic_init(&g->dropped_in, 0);
    w->ghosts = g;
    if (!g->q || !g->q_spare) {
        ts_ghost_stop(w);
        return TS_ERR_NOMEM;
    }
    if (pthread_create(&g->thread, NULL, ghost_main, g) != 0) {
        ts_ghost_stop(w);
        return TS_ERR_NOMEM;
    }
    g->started = true;
    return TS_OK;
}

static void source_free(void *v)
{
    source_t *s = v;
    free(s->zones);
    free(s->stamps);
    free(s);
}

void ts_ghost_stop(ts_worker_t *w)
{
    struct ts_ghosts *g = w->ghosts;
    if (!g) return;
    if (g->started) {
        pthread_mutex_lock(&g->mu);
        g->stop = true;
        pthread_cond_signal(&g->cond);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL); /* unsubscribes everything */
    }
    for (size_t i = 0; i < g->nq; i++)
        tessera__v1__ghost_delta__free_unpacked(g->q[i], NULL);
    free(g->q);
    free(g->q_spare);
    free(g->want);
    ts_cellmap_free(&g->subs);
    ts_cellmap_clear(&g->sources, source_free);
    ts_cellmap_free(&g->sources);
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->mu);
    free(g);
    w->ghosts = NULL;
}

/* ---- tick thread: which neighbours, and what they sent ----------------- */

/* b's cell is live and ours (a split or retired cell, or one that is
 * leaving, neither publishes nor keeps ghosts). */
static const ts_cell_entry_t *live_mine(const ts_worker_t *w, const ts_zone_t *z)
{
    const ts_cell_entry_t *e = ts_celltree_get(w->tree, &z->cell);
    if (!e || !ts_celltree_state_live(e->state) || strcmp(e->owner, w->id) != 0) return NULL;
    return e;
}

typedef struct {
    struct ts_ghosts *g;
    const ts_cell_t *zone;
} add_ctx_t;

static void add_neighbor(void *ud, const ts_cell_entry_t *e)
{
    add_ctx_t *c = ud;
    source_t *s = ts_cellmap_get(&c->g->sources, &e->cell);
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) return;
        s->cell = e->cell;
        if (ts_cellmap_put(&c->g->sources, &e->cell, s) != TS_OK) {
            free(s);
            return;
        }
    }
    if (!s->seen) {
        s->seen = true;
        s->nzones = 0;
    }
    if (s->nzones == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 4;
        ts_cell_t *z = realloc(s->zones, ncap * sizeof(*z));
        if (z) s->zones = z;
        uint64_t *st = realloc(s->stamps, ncap * sizeof(*st));
        if (st) s->stamps = st;
        if (!z || !st) return;
        s->cap = ncap;
    }
    s->zones[s->nzones] = *c->zone;
    s->stamps[s->nzones] = 0;
    s->nzones++;
}

static bool source_lists(const source_t *s, const ts_cell_t *zone)
{
    for (size_t i = 0; s && i < s->nzones; i++)
        if (ts_cell_eq(&s->zones[i], zone)) return true;
    return false;
}

typedef struct {
    struct ts_ghosts *g;
    ts_cell_t *gone;
    size_t ngone, cap;
    ts_cell_t *want;
    size_t nwant;
} sweep_ctx_t;

static void sweep_source(void *ud, const ts_cell_t *cell, void *val)
{
    sweep_ctx_t *c = ud;
    source_t *s = val;
    if (s->seen) {
        c->want[c->nwant++] = *cell;
        return;
    }
    if (c->ngone == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 16;
        ts_cell_t *v = realloc(c->gone, ncap * sizeof(*v));
        if (!v) return;
        c->gone = v;
        c->cap = ncap;
    }
    c->gone[c->ngone++] = *cell;
}

static void mark_unseen(void *ud, const ts_cell_t *cell, void *val)
{
    ((source_t *)val)->seen = false;
}

/* Which neighbours my live cells have now; drops the ghosts that no longer
 * belong (a cell no longer a live neighbour, an epoch the registry moved
 * past) and hands the new subject list to the ghost thread. */
static void recompute(ts_worker_t *w, struct ts_ghosts *g)
{
    ts_cellmap_each(&g->sources, mark_unseen, NULL);
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i]->zone;
        if (!live_mine(w, z)) {
            g->st.ghosts_expired += ts_zone_ghost_drop(z, NULL, UINT64_MAX);
            continue;
        }
        if (ts_zone_set_space(z, g->radius, g->margin) != TS_OK) continue;
        add_ctx_t c = {.g = g, .zone = &z->cell};
        ts_celltree_neighbors(w->tree, &z->cell, g->margin, add_neighbor, &c);
    }
    sweep_ctx_t c = {.g = g, .want = calloc(g->sources.len ? g->sources.len : 1, sizeof(ts_cell_t))};
    if (!c.want) return; /* tried again next tick */
    ts_cellmap_each(&g->sources, sweep_source, &c);
    for (size_t i = 0; i < c.ngone; i++)
        source_free(ts_cellmap_del(&g->sources, &c.gone[i]));
    free(c.gone);
    /* ghosts from a cell that is no longer a live neighbour of their zone,
     * or from an epoch older than the registry's: gone */
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i]->zone;
        uint64_t id;
        void *v;
        for (size_t it = 0; ts_map_next(&z->ghosts, &it, &id, &v);) {
            const ts_ghost_t *h = v;
            const ts_cell_entry_t *e = ts_celltree_get(w->tree, &h->src);
            if (source_lists(ts_cellmap_get(&g->sources, &h->src), &z->cell) && e && h->epoch >= e->epoch)
                continue;
            ts_zone_ghost_remove(z, &h->src, id); /* only the current key: the walk goes on */
            g->st.ghosts_expired++;
        }
    }
    pthread_mutex_lock(&g->mu);
    free(g->want);
    g->want = c.want;
    g->nwant = c.nwant;
    g->want_new = true;
    pthread_cond_signal(&g->cond);
    pthread_mutex_unlock(&g->mu);
    g->computed = true;
}

static void apply(ts_worker_t *w, struct ts_ghosts *g, const Tessera__V1__GhostDelta *d)
{
    ts_cell_t src;
    if (ts_proto_cell_get(d->cell, &src) != TS_OK) return;
    source_t *s = ts_cellmap_get(&g->sources, &src);
    if (!s) return; /* not (or no longer) a neighbour of mine */
    const ts_cell_entry_t *e = ts_celltree_get(w->tree, &src);
    if (!e || !ts_celltree_state_live(e->state) || d->epoch < e->epoch) {
        g->st.stale++;
        return;
    }
    s->last_tick = w->tick;
    s->keyframe_ticks = d->keyframe_ticks;
    bool first = d->parts <= 1 || d->part == 0, last = d->parts <= 1 || d->part + 1 == d->parts;
    for (size_t k = 0; k < s->nzones; k++) {
        ts_binding_t *b = ts_worker_find_binding(w, &s->zones[k]);
        if (!b) continue;
        ts_zone_t *z = b->zone;
        if (d->full && first) s->stamps[k] = ts_zone_ghost_keyframe(z);
        uint64_t stamp = d->full ? s->stamps[k] : 0;
        for (size_t i = 0; i < d->n_entities; i++) {
            const Tessera__V1__EntityState *es = d->entities[i];
            ts_zone_ghost_put(z, &src, d->epoch, stamp, es->id, es->x, es->y, es->vx, es->vy);
            ts_zone_ghost_set_game(z, &src, es->id, es->flags, es->state.data, es->state.len);
        }
        for (size_t i = 0; i < d->n_removed; i++)
            ts_zone_ghost_remove(z, &src, d->removed[i]);
        if (d->full && last && s->stamps[k]) ts_zone_ghost_sweep(z, &src, s->stamps[k]);
    }
}

typedef struct {
    ts_worker_t *w;
    struct ts_ghosts *g;
} expire_ctx_t;

static void expire_source(void *ud, const ts_cell_t *cell, void *val)
{
    expire_ctx_t *c = ud;
    source_t *s = val;
    uint64_t kf = s->keyframe_ticks ? s->keyframe_ticks : c->g->keyframe_ticks;
    if (!s->last_tick || c->w->tick - s->last_tick <= 2 * kf + 3) return;
    for (size_t k = 0; k < s->nzones; k++) {
        ts_binding_t *b = ts_worker_find_binding(c->w, &s->zones[k]);
        if (b) c->g->st.ghosts_expired += ts_zone_ghost_drop(b->zone, cell, UINT64_MAX);
    }
    s->last_tick = 0;
}

void ts_ghost_tick(ts_worker_t *w)
{
    struct ts_ghosts *g = w->ghosts;
    if (!g || !w->view.valid) return;
    if (!g->computed || w->bindings_changed != g->bindings_changed || w->view.version != g->view_version) {
        g->bindings_changed = w->bindings_changed;
        g->view_version = w->view.version;
        recompute(w, g);
    }
    pthread_mutex_lock(&g->mu);
    Tessera__V1__GhostDelta **q = g->q;
    size_t n = g->nq;
    g->q = g->q_spare;
    g->q_spare = q;
    g->nq = 0;
    pthread_mutex_unlock(&g->mu);
    for (size_t i = 0; i < n; i++) {
        apply(w, g, q[i]);
        tessera__v1__ghost_delta__free_unpacked(q[i], NULL);
    }
    expire_ctx_t c = {.w = w, .g = g};
    ts_cellmap_each(&g->sources, expire_source, &c);
}

void ts_ghost_publish(ts_worker_t *w, ts_zone_t *z)
{
    struct ts_ghosts *g = w->ghosts;
    if (!g || !live_mine(w, z)) {
        /* nobody follows this cell's band now (neighbours drop its ghosts
         * when it stops being live): the ids that left it would pile up
         * for as long as it forwards */
        z->nghost_removed = 0;
        return;
    }
    if (ts_zone_set_space(z, g->radius, g->margin) != TS_OK) return;
    /* keyframes of different cells fall on different ticks */
    bool full = (w->tick + ts_cell_hash(&z->cell)) % g->keyframe_ticks == 0;
    uint8_t **bufs = NULL;
    size_t *lens = NULL, nparts = 0;
    if (ts_zone_pack_ghost(z, w->tick, full, g->keyframe_ticks, w->id, &bufs, &lens, &nparts) != TS_OK ||
        nparts == 0)
        return;
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_GHOST);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_GHOST_DELTA, .epoch = z->epoch, .seq = w->tick};
    for (size_t i = 0; i < nparts; i++) {
        size_t len = lens[i];
        if (ts_publisher_push(w, subj, &hdr, bufs[i], len, false, false)) {
            g->st.msgs_out++;
            g->st.bytes_out += len;
        } else {
            w->stats.state_dropped++;
        }
    }
    free(bufs);
    free(lens);
}

void ts_ghost_stats(const ts_worker_t *w, ts_ghost_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    const struct ts_ghosts *g = w->ghosts;
    if (!g) return;
    *out = g->st;
    out->msgs_in = atomic_load(&((struct ts_ghosts *)g)->msgs_in);
    out->bytes_in = atomic_load(&((struct ts_ghosts *)g)->bytes_in);
    out->dropped_in = atomic_load(&((struct ts_ghosts *)g)->dropped_in);
    out->sources = g->sources.len;
    for (size_t i = 0; i < w->nbind; i++)
        out->held += ts_zone_ghosts(w->bindings[i]->zone);
}
