/* Synthetic players.
 *
 * Invariants (all under the mutex): a player's client sequence numbers go
 * 1, 2, 3, ... with no gaps, 1 being its Join; inputs_applied only grows
 * (the highest value any delta showed); the believed cell is the cell of
 * the latest delta that showed the entity, or the destination of the
 * latest `left` entry naming it. */
#include "players.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

/* Most inputs one player sends per flush when it falls behind. */
#define MAX_CATCH_UP 8
/* Heading change per input, radians (uniform in +-TURN/2). */
#define TURN 0.6

typedef struct {
    uint64_t entity;
    uint64_t next_seq;
    ts_cell_t cell;
    uint64_t cell_epoch;
    double x, y; /* best known position, at pos_us */
    double vx, vy;
    double heading;
    uint64_t pos_us;
    uint64_t next_send_us;
    uint64_t inputs_applied;
    bool joined;
    bool seen;
    ts_sim_crowd_t crowd;
} player_t;

struct ts_players {
    pthread_mutex_t mu;
    player_t *p;
    size_t n;
    uint64_t run_bits;
    ts_world_t world;
    double wx0, wy0, wx1, wy1; /* world bounds in world units */
    double speed;
    uint64_t period_us;
    ts_rng_t rng;
    uint64_t deltas, malformed, crossings;
    ts_players_locate_fn locate;
    void *locate_ud;
    bool hot_on;
    ts_sim_hotspot_t hot;
    uint64_t hot_start_us;
};

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Start interval on one axis: [-spread, spread] inside [lo, hi). */
static void start_range(double lo, double hi, double *a, double *b)
{
    double margin = fmin(1.0, (hi - lo) * 0.01);
    *a = fmax(-TS_SIM_START_SPREAD, lo + margin);
    *b = fmin(TS_SIM_START_SPREAD, hi - margin);
    if (*a >= *b) {
        *a = lo + margin;
        *b = hi - margin;
    }
}

ts_status_t ts_players_create(ts_players_t **out, size_t n, uint64_t seed, const ts_world_t *w, double speed,
                              int64_t rate_hz, uint64_t now_us)
{
    *out = NULL;
    if (n == 0 || n > TS_SIM_MAX_PLAYERS || rate_hz <= 0 || !(speed >= 0) || !(w->cell_size > 0))
        return TS_ERR_INVALID;
    ts_players_t *pl = calloc(1, sizeof *pl);
    if (!pl) return TS_ERR_NOMEM;
    pl->p = calloc(n, sizeof *pl->p);
    if (!pl->p) {
        free(pl);
        return TS_ERR_NOMEM;
    }
    pthread_mutex_init(&pl->mu, NULL);
    pl->n = n;
    pl->world = *w;
    pl->wx0 = (double)w->x0 * w->cell_size;
    pl->wy0 = (double)w->y0 * w->cell_size;
    pl->wx1 = ((double)w->x0 + w->width) * w->cell_size;
    pl->wy1 = ((double)w->y0 + w->height) * w->cell_size;
    pl->speed = speed;
    pl->period_us = (uint64_t)(1000000 / rate_hz);
    if (pl->period_us == 0) pl->period_us = 1;
    ts_rng_seed(&pl->rng, seed);
    /* the walk follows the seed, but entity ids are new on every run: an id
     * reused while its previous incarnation may still be in the world would
     * have its inputs taken as duplicates */
    pl->run_bits = (ts_rng_next(&pl->rng) ^ (now_us * 0x9E3779B97F4A7C15ULL)) >> 48;

    double ax, bx, ay, by;
    start_range(pl->wx0, pl->wx1, &ax, &bx);
    start_range(pl->wy0, pl->wy1, &ay, &by);
    for (size_t i = 0; i < n; i++) {
        player_t *p = &pl->p[i];
        p->entity = ts_players_entity(pl, i);
        p->next_seq = 1;
        p->x = ax + ts_rng_unit(&pl->rng) * (bx - ax);
        p->y = ay + ts_rng_unit(&pl->rng) * (by - ay);
        p->heading = ts_rng_unit(&pl->rng) * 2 * M_PI;
        p->next_send_us = now_us + (uint64_t)(ts_rng_unit(&pl->rng) * (double)pl->period_us);
        ts_cell_from_pos(w->id, w->cell_size, 0, p->x, p->y, &p->cell);
    }
    *out = pl;
    return TS_OK;
}

void ts_players_destroy(ts_players_t *pl)
{
    if (!pl) return;
    pthread_mutex_destroy(&pl->mu);
    free(pl->p);
    free(pl);
}

uint64_t ts_players_entity(const ts_players_t *pl, size_t i)
{
    return (TS_SIM_ENTITY_TAG << 48) | (pl->run_bits << 32) | (uint64_t)(i & 0xffffffffu);
}

long ts_players_index(const ts_players_t *pl, uint64_t entity)
{
    if ((entity >> 48) != TS_SIM_ENTITY_TAG || ((entity >> 32) & 0xffff) != pl->run_bits) return -1;
    uint64_t i = entity & 0xffffffffu;
    return i < pl->n ? (long)i : -1;
}

size_t ts_players_count(const ts_players_t *pl)
{
    return pl->n;
}

static ts_sim_input_t *push(ts_sim_inputs_t *in)
{
    if (in->len == in->cap) {
        size_t cap = in->cap ? in->cap * 2 : 1024;
        ts_sim_input_t *v = realloc(in->v, cap * sizeof *v);
        if (!v) return NULL;
        in->v = v;
        in->cap = cap;
    }
    ts_sim_input_t *e = &in->v[in->len];
    memset(e, 0, sizeof *e);
    e->order = in->len++;
    return e;
}

void ts_sim_inputs_free(ts_sim_inputs_t *in)
{
    free(in->v);
    memset(in, 0, sizeof *in);
}

void ts_players_set_locate(ts_players_t *pl, ts_players_locate_fn fn, void *ud)
{
    pthread_mutex_lock(&pl->mu);
    pl->locate = fn;
    pl->locate_ud = ud;
    pthread_mutex_unlock(&pl->mu);
}

ts_status_t ts_sim_hotspot_parse(const char *s, ts_sim_hotspot_t *out)
{
    double v[6] = {0, 0, 0, 0.5, 60, 0};
    int n = 0;
    const char *p = s;
    for (;;) {
        char *end = NULL;
        if (n == 6) return TS_ERR_PARSE;
        v[n++] = strtod(p, &end);
        if (end == p) return TS_ERR_PARSE;
        if (*end == '\0') break;
        if (*end != ',') return TS_ERR_PARSE;
        p = end + 1;
    }
    for (int i = 0; i < n; i++)
        if (!isfinite(v[i])) return TS_ERR_PARSE;
    if (n < 3 || !(v[2] > 0) || !(v[3] > 0 && v[3] <= 1) || !(v[4] >= 0) || !(v[5] >= 0) ||
        (v[5] > 0 && v[5] >= v[4]))
        return TS_ERR_PARSE;
    *out = (ts_sim_hotspot_t){.x = v[0], .y = v[1], .r = v[2], .share = v[3], .hold_s = v[4], .from_s = v[5]};
    return TS_OK;
}

void ts_sim_crowd_init(ts_sim_crowd_t *m, const ts_sim_hotspot_t *h, ts_rng_t *rng, double x0, double y0,
                       double x1, double y1)
{
    m->crowd = ts_rng_unit(rng) < h->share;
    m->dispersed = false;
    m->tx = x0 + ts_rng_unit(rng) * (x1 - x0);
    m->ty = y0 + ts_rng_unit(rng) * (y1 - y0);
}

bool ts_sim_crowd_heading(ts_sim_crowd_t *m, const ts_sim_hotspot_t *h, double elapsed_s, double x, double y,
                          double arrive, double turn, ts_rng_t *rng, double *heading)
{
    if (!m->crowd || m->dispersed || elapsed_s < h->from_s) return false;
    double noise = (ts_rng_unit(rng) - 0.5) * turn;
    if (elapsed_s < h->hold_s) {
        double dx = h->x - x, dy = h->y - y;
        if (hypot(dx, dy) < h->r * 0.7) return false; /* inside: wander, turned back at the edge */
        *heading = atan2(dy, dx) + noise;
        return true;
    }
    double dx = m->tx - x, dy = m->ty - y;
    if (hypot(dx, dy) < arrive) {
        m->dispersed = true;
        return false;
    }
    *heading = atan2(dy, dx) + noise;
    return true;
}

void ts_players_set_hotspot(ts_players_t *pl, const ts_sim_hotspot_t *h, uint64_t start_us)
{
    pthread_mutex_lock(&pl->mu);
    pl->hot_on = true;
    pl->hot = *h;
    pl->hot_start_us = start_us;
    for (size_t i = 0; i < pl->n; i++)
        ts_sim_crowd_init(&pl->p[i].crowd, h, &pl->rng, pl->wx0, pl->wy0, pl->wx1, pl->wy1);
    pthread_mutex_unlock(&pl->mu);
}

size_t ts_players_in_hotspot(ts_players_t *pl, uint64_t now)
{
    size_t n = 0;
    pthread_mutex_lock(&pl->mu);
    for (size_t i = 0; pl->hot_on && i < pl->n; i++) {
        const player_t *p = &pl->p[i];
        double dt = now > p->pos_us ? (double)(now - p->pos_us) / 1e6 : 0;
        double x = p->x + p->vx * dt, y = p->y + p->vy * dt;
        n += p->crowd.crowd && hypot(x - pl->hot.x, y - pl->hot.y) < pl->hot.r;
    }
    pthread_mutex_unlock(&pl->mu);
    return n;
}

/* The heading of a crowd player (see ts_sim_crowd_heading); false when it
 * wanders freely. */
static bool crowd_heading(ts_players_t *pl, player_t *p, uint64_t now_us, double *heading)
{
    if (!pl->hot_on) return false;
    double elapsed = now_us > pl->hot_start_us ? (double)(now_us - pl->hot_start_us) / 1e6 : 0;
    double arrive = pl->speed * 2.0 * (double)pl->period_us / 1e6 + 1.0;
    return ts_sim_crowd_heading(&p->crowd, &pl->hot, elapsed, p->x, p->y, arrive, TURN, &pl->rng, heading);
}

/* Dead-reckons the position to now, turns the heading a little and bounces
 * it off the world's edges (looking two input periods ahead). */
static void steer(ts_players_t *pl, player_t *p, uint64_t now_us)
{
    double dt = now_us > p->pos_us ? (double)(now_us - p->pos_us) / 1e6 : 0;
    p->x = clampd(p->x + p->vx * dt, pl->wx0, pl->wx1);
    p->y = clampd(p->y + p->vy * dt, pl->wy0, pl->wy1);
    p->pos_us = now_us;

    double toward;
    if (crowd_heading(pl, p, now_us, &toward))
        p->heading = toward;
    else
        p->heading += (ts_rng_unit(&pl->rng) - 0.5) * TURN;
    double vx = pl->speed * cos(p->heading), vy = pl->speed * sin(p->heading);
    double ahead = 2.0 * (double)pl->period_us / 1e6;
    if ((p->x + vx * ahead < pl->wx0 && vx < 0) || (p->x + vx * ahead >= pl->wx1 && vx > 0)) vx = -vx;
    if ((p->y + vy * ahead < pl->wy0 && vy < 0) || (p->y + vy * ahead >= pl->wy1 && vy > 0)) vy = -vy;
    p->heading = atan2(vy, vx);
    p->vx = vx;
    p->vy = vy;
}

ts_status_t ts_players_collect(ts_players_t *pl, uint64_t now_us, ts_sim_inputs_t *out)
{
    ts_status_t st = TS_OK;
    pthread_mutex_lock(&pl->mu);
    for (size_t i = 0; i < pl->n && st == TS_OK; i++) {
        player_t *p = &pl->p[i];
        for (int k = 0; k < MAX_CATCH_UP && p->next_send_us <= now_us; k++) {
            ts_sim_input_t *in = push(out);
            if (!in) {
                st = TS_ERR_NOMEM;
                break;
            }
            in->cell = p->cell;
            in->epoch = p->cell_epoch;
            in->entity = p->entity;
            in->seq = p->next_seq++;
            if (!p->joined) {
                ts_cell_t at;
                uint64_t epoch = 0;
                if (pl->locate && pl->locate(pl->locate_ud, p->x, p->y, &at, &epoch)) {
                    p->cell = in->cell = at;
                    p->cell_epoch = in->epoch = epoch;
                }
                in->kind = TS_SIM_JOIN;
                in->a = p->x;
                in->b = p->y;
                p->joined = true;
                p->pos_us = now_us;
            } else {
                steer(pl, p, now_us);
                in->kind = TS_SIM_MOVE;
                in->a = p->vx;
                in->b = p->vy;
            }
            p->next_send_us += pl->period_us;
        }
        if (p->next_send_us <= now_us) p->next_send_us = now_us + pl->period_us;
    }
    pthread_mutex_unlock(&pl->mu);
    return st;
}

ts_status_t ts_players_collect_leaves(ts_players_t *pl, ts_sim_inputs_t *out)
{
    ts_status_t st = TS_OK;
    pthread_mutex_lock(&pl->mu);
    for (size_t i = 0; i < pl->n; i++) {
        player_t *p = &pl->p[i];
        if (!p->joined) continue;
        ts_sim_input_t *in = push(out);
        if (!in) {
            st = TS_ERR_NOMEM;
            break;
        }
        in->cell = p->cell;
        in->epoch = p->cell_epoch;
        in->entity = p->entity;
        in->seq = p->next_seq++;
        in->kind = TS_SIM_LEAVE;
    }
    pthread_mutex_unlock(&pl->mu);
    return st;
}

ts_status_t ts_players_apply_state(ts_players_t *pl, const uint8_t *data, size_t len)
{
    Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, len, data);
    ts_cell_t cell;
    if (!d || ts_proto_cell_get(d->cell, &cell) != TS_OK) {
        if (d) tessera__v1__state_delta__free_unpacked(d, NULL);
        pthread_mutex_lock(&pl->mu);
        pl->malformed++;
        pthread_mutex_unlock(&pl->mu);
        return TS_ERR_MALFORMED;
    }
    uint64_t now_us = ts_mono_us();
    pthread_mutex_lock(&pl->mu);
    pl->deltas++;
    for (size_t i = 0; i < d->n_entities; i++) {
        const Tessera__V1__EntityState *e = d->entities[i];
        long idx = e ? ts_players_index(pl, e->id) : -1;
        if (idx < 0) continue;
        player_t *p = &pl->p[idx];
        if (!ts_cell_eq(&p->cell, &cell)) {
            pl->crossings++;
            ts_debug("entity %llu: seen in %d,%d (was %d,%d) tick %llu applied %llu",
                     (unsigned long long)p->entity, cell.cx, cell.cy, p->cell.cx, p->cell.cy,
                     (unsigned long long)d->tick, (unsigned long long)e->inputs_applied);
        }
        p->cell = cell;
        p->cell_epoch = d->epoch;
        p->x = e->x;
        p->y = e->y;
        p->pos_us = now_us;
        p->seen = true;
        if (e->inputs_applied > p->inputs_applied) p->inputs_applied = e->inputs_applied;
    }
    for (size_t i = 0; i < d->n_left; i++) {
        const Tessera__V1__EntityLeft *l = d->left[i];
        long idx = l ? ts_players_index(pl, l->id) : -1;
        ts_cell_t to;
        if (idx < 0 || l->despawned || !l->to || ts_proto_cell_get(l->to, &to) != TS_OK) continue;
        if (!ts_cell_eq(&pl->p[idx].cell, &to)) {
            pl->crossings++;
            ts_debug("entity %llu: left %d,%d for %d,%d (believed %d,%d) tick %llu",
                     (unsigned long long)l->id, cell.cx, cell.cy, to.cx, to.cy, pl->p[idx].cell.cx,
                     pl->p[idx].cell.cy, (unsigned long long)d->tick);
        }
        pl->p[idx].cell = to;
        pl->p[idx].cell_epoch = 0;
    }
    pthread_mutex_unlock(&pl->mu);
    tessera__v1__state_delta__free_unpacked(d, NULL);
    return TS_OK;
}

void ts_players_on_state(void *ud, const ts_bus_msg_t *msg)
{
    ts_players_apply_state(ud, ts_bus_msg_data(msg), ts_bus_msg_len(msg));
}

void ts_players_stats(ts_players_t *pl, ts_players_stats_t *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&pl->mu);
    for (size_t i = 0; i < pl->n; i++) {
        out->applied += pl->p[i].inputs_applied;
        out->seen += pl->p[i].seen;
    }
    out->deltas = pl->deltas;
    out->malformed = pl->malformed;
    out->crossings = pl->crossings;
    pthread_mutex_unlock(&pl->mu);
}

size_t ts_players_log_mismatches(ts_players_t *pl, size_t max)
{
    size_t found = 0;
    pthread_mutex_lock(&pl->mu);
    for (size_t i = 0; i < pl->n; i++) {
        const player_t *p = &pl->p[i];
        if (!p->joined || p->inputs_applied == p->next_seq - 1) continue;
        if (found++ < max)
            ts_warn("entity %llu: sent inputs 1..%llu, saw %llu applied; last seen in cell %d,%d",
                    (unsigned long long)p->entity, (unsigned long long)(p->next_seq - 1),
                    (unsigned long long)p->inputs_applied, p->cell.cx, p->cell.cy);
    }
    pthread_mutex_unlock(&pl->mu);
    return found;
}
