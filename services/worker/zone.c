/* Zone: the simulation state of one owned cell. See zone.h for invariants. */
#include "zone.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/pbw.h"
#include "tessera/resume.h"
#include "tessera/util.h"

typedef struct {
    ts_cell_t to;
    uint64_t incarnation;
    uint64_t hops; /* the entity's hops after it left here */
    uint64_t until_tick;
} departed_t;

static void note_left(ts_zone_t *z, uint64_t id, const ts_cell_t *to);
static void put_entity(ts_zone_t *z, ts_entity_t *e);

static void touch(ts_zone_t *z, ts_entity_t *e)
{
    e->dirty = true;
    e->mod = ++z->mod_counter;
}

void ts_zone_touch(ts_zone_t *z, ts_entity_t *e)
{
    touch(z, e);
    /* a border entity changed after the step collected the band: its
     * ghosts hear of it in this tick's ghost delta (a step starts the list
     * anew, so this is never stale) */
    if (e->ghosted && ts_grow((void **)&z->ghost_changed, &z->cap_ghost_changed, z->nghost_changed + 1,
                              sizeof(*z->ghost_changed)))
        z->ghost_changed[z->nghost_changed++] = e;
}

uint64_t ts_zone_game_seed(const ts_cell_t *cell)
{
    return ts_cell_hash(cell); /* never 0 */
}

uint64_t ts_zone_npc_id(const ts_zone_t *z, uint64_t n)
{
    /* player ids are (gateway id << 48) | ...: gateway id 0x7fff is reserved */
    return (0x7fffULL << 48) | (ts_mix64(ts_cell_hash(&z->cell) ^ ts_mix64(n + 1)) & 0xffffffffffffULL);
}

bool ts_zone_add_event(ts_zone_t *z, const ts_zone_event_t *ev)
{
    if (z->replaying) return true; /* best effort: nobody hears a replay */
    if (z->nevents >= TS_GAME_EVENTS_PER_TICK) return false;
    if (!ts_grow((void **)&z->events, &z->cap_events, z->nevents + 1, sizeof(*z->events))) return false;
    z->events[z->nevents++] = *ev;
    return true;
}

/* ---- the grid ------------------------------------------------------------
 * A counting sort of the owned entities and ghosts by bucket: one array of
 * slots, bucket b at [start[b], start[b + 1]). The step rebuilds it from the
 * positions it just wrote (measured cheaper than keeping per-bucket arrays
 * up to date: the nearby pass then reads a few contiguous spans per entity
 * instead of nine scattered arrays; see docs/benchmarks.md). Anything that
 * adds, removes or moves an entity or a ghost between steps marks it stale,
 * and a query rebuilds it first. */

#define GRID_MAX_SIDE 256 /* buckets along an axis, at most */
#define REF_GHOST ((uintptr_t)1)

/* inv: 1 / bucket side. Truncation is floor here: negatives clamp to 0. */
static inline int32_t grid_coord(double v, double origin, double inv, int32_t n)
{
    double f = (v - origin) * inv;
    if (!(f >= 0)) return 0; /* NaN too */
    if (f >= (double)(n - 1)) return n - 1;
    return (int32_t)f;
}

static inline uint32_t grid_bucket(const ts_grid_t *g, double x, double y)
{
    return (uint32_t)grid_coord(y, g->y0, g->inv, g->ny) * (uint32_t)g->nx +
           (uint32_t)grid_coord(x, g->x0, g->inv, g->nx);
}

static void grid_free(ts_grid_t *g)
{
    free(g->start);
    free(g->slots);
    free(g->tmp);
    free(g->tmp_b);
    free(g->counts);
    memset(g, 0, sizeof(*g));
}

/* Room for n slots in slots and the staging arrays. */
static bool grid_reserve(ts_grid_t *g, size_t n)
{
    if (n <= g->cap) return true;
    size_t ncap = g->cap ? g->cap : 64;
    while (ncap < n)
        ncap *= 2;
    ts_grid_slot_t *s = realloc(g->slots, ncap * sizeof(*s));
    if (s) g->slots = s;
    ts_grid_slot_t *t = realloc(g->tmp, ncap * sizeof(*t));
    if (t) g->tmp = t;
    uint32_t *b = realloc(g->tmp_b, ncap * sizeof(*b));
    if (b) g->tmp_b = b;
    uint32_t *c = realloc(g->counts, ncap * sizeof(*c));
    if (c) g->counts = c;
    if (!s || !t || !b || !c) return false;
    g->cap = ncap;
    return true;
}

/* Stages one slot (the step and grid_build call it for every one). */
static inline void grid_stage(ts_grid_t *g, size_t i, double x, double y, uintptr_t ref)
{
    uint32_t b = grid_bucket(g, x, y);
    g->tmp[i] = (ts_grid_slot_t){.x = x, .y = y, .ref = ref};
    g->tmp_b[i] = b;
    g->start[b + 1]++;
}

/* Sorts the n staged slots into buckets (counts are in start[b + 1]). */
static void grid_sort(ts_grid_t *g, size_t n)
{
    size_t nb = (size_t)g->nx * (size_t)g->ny;
    for (size_t b = 1; b <= nb; b++)
        g->start[b] += g->start[b - 1]; /* start[b]: where bucket b begins */
    for (size_t i = 0; i < n; i++)
        g->slots[g->start[g->tmp_b[i]]++] = g->tmp[i]; /* start[b]: where it ends */
    for (size_t b = nb; b > 0; b--)
        g->start[b] = g->start[b - 1];
    g->start[0] = 0;
    g->n = n;
    g->stale = false;
}

static void grid_clear_counts(ts_grid_t *g)
{
    memset(g->start, 0, ((size_t)g->nx * (size_t)g->ny + 1) * sizeof(*g->start));
}

static void stage_ghosts(ts_zone_t *z, size_t i)
{
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->ghosts, &it, &id, &v);) {
        const ts_ghost_t *h = v;
        grid_stage(&z->grid, i++, h->x, h->y, (uintptr_t)h | REF_GHOST);
    }
}

/* Rebuilds the grid from every entity and ghost (outside a step). */
static void grid_build(ts_zone_t *z)
{
    ts_grid_t *g = &z->grid;
    if (!g->start) return;
    size_t n = z->entities.len + z->ghosts.len, i = 0;
    if (!grid_reserve(g, n)) return; /* stays stale: tried again */
    grid_clear_counts(g);
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
        const ts_entity_t *e = v;
        grid_stage(g, i++, e->x, e->y, (uintptr_t)e);
    }
    stage_ghosts(z, i);
    grid_sort(g, n);
}

static void ghost_out_removed(ts_zone_t *z, uint64_t id)
{
    if (ts_grow((void **)&z->ghost_removed, &z->cap_ghost_removed, z->nghost_removed + 1,
                sizeof(*z->ghost_removed)))
        z->ghost_removed[z->nghost_removed++] = id;
}

/* e leaves the zone's entity map (departure, leave, despawn, reload): out of
 * the grid, out of this tick's ghost list and out of the neighbours' ghosts.
 * The caller frees it. */
static void entity_unindex(ts_zone_t *z, ts_entity_t *e)
{
    z->grid.stale = true;
    if (e->ghosted) {
        ghost_out_removed(z, e->id);
        /* the step may have listed it for this tick's ghost delta (only
         * ghosted entities are listed): an entity that leaves between the
         * step and the pack (a module's despawn in on_tick, a lifecycle
         * despawn) must not be read after it is freed */
        size_t k = 0;
        for (size_t i = 0; i < z->nghost_changed; i++)
            if (z->ghost_changed[i] != e) z->ghost_changed[k++] = z->ghost_changed[i];
        z->nghost_changed = k;
    }
    e->ghosted = false;
}

static void ghost_free(ts_zone_t *z, ts_ghost_t *h)
{
    z->grid.stale = true;
    free(h);
}

ts_status_t ts_zone_create(ts_zone_t **out, const ts_cell_t *cell, uint64_t epoch, const ts_world_t *world,
                           double max_speed)
{
    ts_zone_t *z = calloc(1, sizeof(*z));
    if (!z) return TS_ERR_NOMEM;
    z->cell = *cell;
    ts_cell_format(cell, z->key, sizeof(z->key));
    z->epoch = epoch;
    z->cur_origin = TS_ORIGIN_WORKER;
    z->msg_max = TS_ZONE_MAX_PAYLOAD_DEFAULT - TS_ZONE_MSG_HEADROOM;
    ts_map_init(&z->entities);
    ts_map_init(&z->departed);
    ts_map_init(&z->precopy_ids);
    z->cell_size = world->cell_size;
    z->min_x = (double)world->x0 * world->cell_size;
    z->min_y = (double)world->y0 * world->cell_size;
    z->max_x = (double)(world->x0 + world->width) * world->cell_size;
    z->max_y = (double)(world->y0 + world->height) * world->cell_size;
    z->max_speed = max_speed;
    double x0, y0, x1, y1;
    ts_cell_bounds(cell, world->cell_size, &x0, &y0, &x1, &y1);
    double hair = world->cell_size * 1e-9;
    z->in_x0 = x0 + hair;
    z->in_y0 = y0 + hair;
    z->in_x1 = x1 - hair;
    z->in_y1 = y1 - hair;
    ts_map_init(&z->ghosts);
    z->game.rng = ts_zone_game_seed(cell);
    if (ts_zone_set_space(z, TS_ZONE_INTERACT_RADIUS, TS_ZONE_GHOST_MARGIN) != TS_OK) {
        ts_zone_destroy(z);
        return TS_ERR_NOMEM;
    }
    *out = z;
    return TS_OK;
}

void ts_zone_destroy(ts_zone_t *z)
{
    if (!z) return;
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &k, &v);)
        free(v);
    for (size_t it = 0; ts_map_next(&z->departed, &it, &k, &v);)
        free(v);
    for (size_t it = 0; ts_map_next(&z->ghosts, &it, &k, &v);)
        free(v);
    ts_map_free(&z->ghosts);
    grid_free(&z->grid);
    free(z->ghost_changed);
    free(z->ghost_removed);
    free(z->events);
    ts_map_free(&z->entities);
    ts_map_free(&z->departed);
    ts_map_free(&z->precopy_ids);
    free(z->scratch_ents);
    free(z->scratch_lens);
    free(z->deps);
    for (size_t i = 0; i < z->cap_out; i++) {
        free(z->out[i].transfers);
        free(z->out[i].inputs);
    }
    free(z->out);
    for (size_t i = 0; i < z->nleft; i++)
        free(z->left[i].to);
    free(z->left);
    free(z);
}

size_t ts_zone_entities(const ts_zone_t *z)
{
    return z->entities.len;
}

/* Smaller than this a message could not hold one entity with its headers. */
#define MSG_MAX_FLOOR 4096

void ts_zone_set_max_payload(ts_zone_t *z, size_t max_payload)
{
    z->msg_max = max_payload > TS_ZONE_MSG_HEADROOM + MSG_MAX_FLOOR ? max_payload - TS_ZONE_MSG_HEADROOM
                                                                    : MSG_MAX_FLOOR;
}

/* Shifts the window n bits towards older sequences. */
static void window_shift(uint64_t *w, uint64_t n)
{
    if (n >= TS_WINDOW_BITS) {
        memset(w, 0, TS_WINDOW_WORDS * sizeof(*w));
        return;
    }
    size_t words = (size_t)(n / 64);
    unsigned bits = (unsigned)(n % 64);
    for (size_t i = TS_WINDOW_WORDS; i-- > 0;) {
        uint64_t v = 0;
        if (i >= words) {
            v = w[i - words] << bits;
            if (bits && i >= words + 1) v |= w[i - words - 1] >> (64 - bits);
        }
        w[i] = v;
    }
}

ts_seq_verdict_t ts_entity_accept_seq(ts_entity_t *e, uint64_t seq)
{
    if (seq > e->last_input_seq) {
        uint64_t shift = seq - e->last_input_seq;
        if (e->last_input_seq == 0) {
            memset(e->applied_window, 0, sizeof(e->applied_window));
        } else {
            /* the old last_input_seq becomes bit shift-1 */
            window_shift(e->applied_window, shift);
            if (shift - 1 < TS_WINDOW_BITS) e->applied_window[(shift - 1) / 64] |= 1ULL << ((shift - 1) % 64);
        }
        e->last_input_seq = seq;
        return TS_SEQ_APPLY;
    }
    if (seq == e->last_input_seq) return TS_SEQ_DUPLICATE;
    uint64_t idx = e->last_input_seq - seq - 1;
    if (idx >= TS_WINDOW_BITS) return TS_SEQ_TOO_OLD;
    uint64_t bit = 1ULL << (idx % 64);
    if (e->applied_window[idx / 64] & bit) return TS_SEQ_DUPLICATE;
    e->applied_window[idx / 64] |= bit;
    return TS_SEQ_APPLY;
}

/* The outbox keeps every transfer entry before every forward-only entry, so a
 * tick publishes an entity's Transfer before any input forwarded after it,
 * whatever order they were created in. */
static ts_zone_out_t *outbox_for(ts_zone_t *z, const ts_cell_t *dest, uint64_t marker_seq, ts_origin_t origin)
{
    size_t ntransfer_entries = 0;
    for (size_t i = 0; i < z->nout; i++) {
        if (!z->out[i].id_seq && z->out[i].marker_seq == marker_seq && z->out[i].origin == origin &&
            ts_cell_eq(&z->out[i].dest, dest))
            return &z->out[i];
        if (z->out[i].marker_seq) ntransfer_entries++;
    }
    if (!ts_grow((void **)&z->out, &z->cap_out, z->nout + 1, sizeof(*z->out))) return NULL;
    size_t at = marker_seq ? ntransfer_entries : z->nout;
    /* rotate the spare slot (its buffers) into place */
    ts_zone_out_t spare = z->out[z->nout];
    memmove(&z->out[at + 1], &z->out[at], (z->nout - at) * sizeof(*z->out));
    z->out[at] = spare;
    z->nout++;
    ts_zone_out_t *o = &z->out[at];
    o->dest = *dest;
    o->marker_seq = marker_seq;
    o->origin = origin;
    o->id_seq = 0;
    o->pub_seq = 0;
    o->sent = o->chunk = 0;
    o->ntransfers = 0;
    o->ninputs = 0;
    return o;
}

/* A request's outbox entry: one per request, its marker (bit 63 set,
 * never a stream sequence) derived from the input-stream message being
 * applied (or, in on_tick, the last one and the cell's simulation time)
 * and the request's rank after it, so a new owner replaying the same input
 * publishes the same message id and JetStream stores it once. */
static uint64_t request_marker(ts_zone_t *z, bool in_tick)
{
    uint64_t s = z->cur_stream_seq > z->last_applied_seq ? z->cur_stream_seq : z->last_applied_seq;
    uint64_t key = ts_mix64(s ^ ts_mix64(in_tick ? ts_pbw_double_bits(z->game.time) ^ 0x7469636bULL : 0));
    if (key != z->req_key) {
        z->req_key = key;
        z->req_n = 0;
    }
    return TS_ZONE_REQUEST_MARK | (ts_mix64(key ^ ts_mix64(++z->req_n)) & ~TS_ZONE_REQUEST_MARK);
}

bool ts_zone_send_request(ts_zone_t *z, const ts_cell_t *to, const ts_input_t *in, bool in_tick)
{
    ts_zone_out_t *o = outbox_for(z, to, request_marker(z, in_tick), TS_ORIGIN_WORKER);
    if (!o || !ts_grow((void **)&o->inputs, &o->cap_inputs, o->ninputs + 1, sizeof(*o->inputs))) return false;
    o->inputs[o->ninputs++] = *in;
    return true;
}

/* ---- world counter moves (zone.h: ts_zone_queue_counter_move) ----------- */

/* How many of values[] a message carries: up to the last non-zero one. */
static size_t values_len(const int64_t *values)
{
    size_t n = TS_GAME_COUNTERS;
    while (n > 0 && values[n - 1] == 0)
        n--;
    return n;
}

/* to[i] += from[i] (unsigned: an overflow wraps instead of being undefined). */
static void values_add(int64_t *to, const int64_t *from)
{
    for (size_t i = 0; i < TS_GAME_COUNTERS; i++)
        to[i] = (int64_t)((uint64_t)to[i] + (uint64_t)from[i]);
}

/* The flow record of peer, added if new; NULL if the table is full. */
static ts_zone_flow_t *flow_for(ts_zone_t *z, const ts_cell_t *peer)
{
    for (size_t i = 0; i < z->nflows; i++)
        if (ts_cell_eq(&z->flows[i].peer, peer)) return &z->flows[i];
    if (z->nflows == TS_ZONE_FLOWS) return NULL;
    ts_zone_flow_t *f = &z->flows[z->nflows++];
    memset(f, 0, sizeof(*f));
    f->peer = *peer;
    return f;
}

bool ts_zone_queue_counter_move(ts_zone_t *z, const ts_cell_t *to)
{
    if (z->counter_move_queued) return false;
    /* its id: the cell, its epoch and its input position (an entry loaded
     * from a checkpoint and one queued again there have the same id: stored
     * once); never a stream sequence (bit 63) */
    uint64_t key = ts_mix64(ts_mix64(z->epoch ^ 0x636d6f7665ULL) ^ z->last_applied_seq);
    ts_zone_out_t *o =
        outbox_for(z, &z->cell, TS_ZONE_REQUEST_MARK | (key & ~TS_ZONE_REQUEST_MARK), TS_ORIGIN_WORKER);
    if (!o || !ts_grow((void **)&o->inputs, &o->cap_inputs, o->ninputs + 1, sizeof(*o->inputs))) return false;
    ts_input_t *in = &o->inputs[o->ninputs++];
    memset(in, 0, sizeof(*in));
    in->kind = TS_INPUT_COUNTER_MOVE;
    in->peer = *to;
    z->counter_move_queued = true;
    return true;
}

/* The marker at stream seq `seq`: the counters become 0 here and go to
 * in->peer in an outbox entry of marker seq (a replay decides the same). */
static void apply_counter_move(ts_zone_t *z, const ts_input_t *in, uint64_t seq)
{
    z->counter_move_queued = false;
    if (values_len(z->game.counters) == 0) return; /* nothing (left) to move */
    ts_zone_flow_t *f = flow_for(z, &in->peer);
    ts_zone_out_t *o = f ? outbox_for(z, &in->peer, seq, TS_ORIGIN_WORKER) : NULL;
    if (!o || !ts_grow((void **)&o->inputs, &o->cap_inputs, o->ninputs + 1, sizeof(*o->inputs))) {
        ts_error("cell %s: cannot move its world counters (%s); they stay here", z->key,
                 f ? "out of memory" : "too many peers");
        return;
    }
    ts_input_t *out = &o->inputs[o->ninputs++];
    memset(out, 0, sizeof(*out));
    out->kind = TS_INPUT_COUNTERS;
    out->peer = z->cell;
    out->move_seq = seq;
    memcpy(out->values, z->game.counters, sizeof(out->values));
    values_add(f->out, z->game.counters);
    memset(z->game.counters, 0, sizeof(z->game.counters));
    z->mod_counter++; /* a forwarder writes its next checkpoint */
    char to[TS_CELL_STR_MAX];
    ts_cell_format(&in->peer, to, sizeof(to));
    ts_info("cell %s: world counters move to %s (marker at stream seq %" PRIu64 ")", z->key, to, seq);
}

/* Counters another cell moved here: added once per marker of that cell. */
static void apply_counters(ts_zone_t *z, const ts_input_t *in)
{
    ts_zone_flow_t *f = flow_for(z, &in->peer);
    if (f && in->move_seq <= f->in_seq) {
        z->stats.duplicates++;
        return;
    }
    if (!f) {
        /* not counted as received: a gateway keeps counting it on its way */
        ts_error("cell %s: counters moved here from a cell beyond its %d peers; added anyway", z->key,
                 TS_ZONE_FLOWS);
    } else {
        f->in_seq = in->move_seq;
        values_add(f->in, in->values);
    }
    values_add(z->game.counters, in->values);
    z->mod_counter++;
}

static void apply_counter_input(ts_zone_t *z, const ts_input_t *in, uint64_t seq)
{
    if (in->peer.world != z->cell.world || ts_cell_eq(&in->peer, &z->cell) ||
        (in->kind == TS_INPUT_COUNTER_MOVE && seq == 0)) {
        z->stats.dropped++;
        return;
    }
    if (in->kind == TS_INPUT_COUNTER_MOVE)
        apply_counter_move(z, in, seq);
    else
        apply_counters(z, in);
}

void ts_zone_forget_move_seqs(ts_zone_t *z)
{
    for (size_t i = 0; i < z->nflows; i++)
        z->flows[i].in_seq = 0;
}

static void load_flows(ts_zone_t *z, const Tessera__V1__Checkpoint *cp)
{
    z->nflows = 0;
    for (size_t i = 0; i < cp->n_counter_flows && z->nflows < TS_ZONE_FLOWS; i++) {
        const Tessera__V1__CounterFlow *pb = cp->counter_flows[i];
        ts_cell_t peer;
        if (!pb->peer || ts_proto_cell_get(pb->peer, &peer) != TS_OK) continue;
        ts_zone_flow_t *f = flow_for(z, &peer);
        if (!f) continue;
        f->in_seq = pb->in_seq;
        for (size_t k = 0; k < pb->n_out && k < TS_GAME_COUNTERS; k++)
            f->out[k] = pb->out[k];
        for (size_t k = 0; k < pb->n_in && k < TS_GAME_COUNTERS; k++)
            f->in[k] = pb->in[k];
    }
}

bool ts_zone_locate(const ts_zone_t *z, uint64_t id, ts_cell_t *out)
{
    if (ts_map_get(&z->entities, id)) {
        *out = z->cell;
        return true;
    }
    const ts_ghost_t *h = ts_map_get(&z->ghosts, id);
    if (h) {
        *out = h->src;
        return true;
    }
    const departed_t *d = ts_map_get(&z->departed, id);
    if (d) {
        *out = d->to;
        return true;
    }
    return false;
}

static void forward_input(ts_zone_t *z, const ts_cell_t *to, const ts_input_t *in)
{
    if (in->kind == TS_INPUT_REQUEST) { /* seq 0: its message id must be deterministic */
        if (ts_zone_send_request(z, to, in, false))
            z->stats.forwarded++;
        else
            z->stats.dropped++;
        return;
    }
    ts_zone_out_t *o = outbox_for(z, to, 0, z->cur_origin);
    if (!o || !ts_grow((void **)&o->inputs, &o->cap_inputs, o->ninputs + 1, sizeof(*o->inputs))) {
        z->stats.dropped++;
        ts_error("cell %s: out of memory forwarding input of entity %llu", z->key,
                 (unsigned long long)in->entity);
        return;
    }
    o->inputs[o->ninputs++] = *in;
    z->stats.forwarded++;
}

static double clamp_speed(double v, double max)
{
    if (!isfinite(v)) return 0;
    return v > max ? max : (v < -max ? -max : v);
}

static void put_entity(ts_zone_t *z, ts_entity_t *e)
{
    if (ts_map_put(&z->entities, e->id, e) != TS_OK) {
        ts_error("cell %s: out of memory adding entity %llu", z->key, (unsigned long long)e->id);
        free(e);
        return;
    }
    ts_ghost_t *h = ts_map_del(&z->ghosts, e->id); /* it is ours now, not a copy */
    if (h) ghost_free(z, h);
    e->ghosted = false;
    z->grid.stale = true;
    free(ts_map_del(&z->departed, e->id));
    if (e->gateway != 0 && z->player_hook) z->player_hook(z->player_ud, z, e);
}

bool ts_zone_add_entity(ts_zone_t *z, ts_entity_t *e)
{
    if (ts_map_get(&z->entities, e->id) || ts_map_get(&z->departed, e->id)) {
        free(e);
        return false;
    }
    touch(z, e);
    put_entity(z, e);
    return ts_map_get(&z->entities, e->id) == e;
}

void ts_zone_detach(ts_zone_t *z, ts_entity_t *e, uint64_t at_us)
{
    e->vx = e->vy = 0;
    e->detached_us = at_us ? at_us : 1;
    touch(z, e);
}

void ts_zone_despawn(ts_zone_t *z, ts_entity_t *e)
{
    entity_unindex(z, e);
    ts_map_del(&z->entities, e->id);
    note_left(z, e->id, NULL);
    free(e);
}

/* Detach / Attach: no client seq, idempotent, ordered by the stream. A
 * Detach of a session that no longer owns the entity changes nothing. */
static void apply_session(ts_zone_t *z, ts_entity_t *e, const ts_input_t *in)
{
    if (in->kind == TS_INPUT_DETACH) {
        if (e->session != in->session || e->detached_us != 0) return;
        ts_zone_detach(z, e, in->time_us);
    } else {
        e->gateway = in->gateway;
        e->gateway_instance = in->gateway_instance;
        e->session = in->session;
        e->detached_us = 0;
        touch(z, e);
    }
    if (z->player_hook) z->player_hook(z->player_ud, z, e);
}

void ts_zone_apply_input(ts_zone_t *z, const ts_input_t *in, uint64_t tick)
{
    ts_entity_t *e = ts_map_get(&z->entities, in->entity);
    if (!e) {
        departed_t *d = ts_map_get(&z->departed, in->entity);
        if (d) {
            forward_input(z, &d->to, in);
            return;
        }
        if (in->kind == TS_INPUT_REQUEST) z->requests_ignored++;
        if (in->kind != TS_INPUT_JOIN) {
            z->stats.dropped++;
            ts_debug("cell %s: input seq %llu for unknown entity %llu dropped (stream seq %llu)", z->key,
                     (unsigned long long)in->seq, (unsigned long long)in->entity,
                     (unsigned long long)z->cur_stream_seq);
            return;
        }
        e = calloc(1, sizeof(*e));
        if (!e) {
            z->stats.dropped++;
            return;
        }
        e->id = in->entity;
        e->incarnation = z->cur_stream_seq;
        double x = isfinite(in->a) ? in->a : 0, y = isfinite(in->b) ? in->b : 0;
        /* keep the spawn inside the world; a spawn outside this cell walks out next tick */
        e->x = fmin(fmax(x, z->min_x), nextafter(z->max_x, z->min_x));
        e->y = fmin(fmax(y, z->min_y), nextafter(z->max_y, z->min_y));
        ts_strlcpy(e->name, in->name, sizeof(e->name));
        e->gateway = in->gateway;
        e->gateway_instance = in->gateway_instance;
        e->session = in->session;
        e->flags = TS_GAME_PLAYER;
        ts_entity_accept_seq(e, in->seq);
        e->inputs_applied = 1;
        touch(z, e);
        put_entity(z, e);
        z->stats.applied++;
        if (z->game_hooks && z->game_hooks->on_join && ts_map_get(&z->entities, in->entity) == e)
            z->game_hooks->on_join(z->game_ud, z, e, in);
        return;
    }
    if (in->kind == TS_INPUT_REQUEST) {
        /* seq 0: exactly once comes from the publisher's message id and the
         * stream order, not from the entity's window */
        z->stats.applied++;
        if (z->game_hooks && z->game_hooks->on_request) z->game_hooks->on_request(z->game_ud, z, e, in);
        return;
    }
    if (in->kind == TS_INPUT_DETACH || in->kind == TS_INPUT_ATTACH) {
        apply_session(z, e, in);
        return;
    }
    /* An input older than one already applied (a Move forwarded from a cell
     * the entity left, overtaken by a newer one sent straight here) counts
     * as applied, exactly once, but does not undo the newer velocity. */
    bool latest = in->seq > e->last_input_seq;
    switch (ts_entity_accept_seq(e, in->seq)) {
    case TS_SEQ_APPLY:
        break;
    case TS_SEQ_DUPLICATE:
        z->stats.duplicates++;
        return;
    case TS_SEQ_TOO_OLD:
        z->stats.dropped++;
        ts_warn("cell %s: input seq %llu of entity %llu arrived more than %d inputs late; dropped", z->key,
                (unsigned long long)in->seq, (unsigned long long)e->id, TS_WINDOW_BITS);
        return;
    }
    e->inputs_applied++;
    touch(z, e);
    z->stats.applied++;
    switch (in->kind) {
    case TS_INPUT_JOIN: /* re-join of a live entity: treat as a stop */
        if (latest) e->vx = e->vy = 0;
        break;
    case TS_INPUT_MOVE:
        if (!latest) break;
        e->vx = clamp_speed(in->a, z->max_speed);
        e->vy = clamp_speed(in->b, z->max_speed);
        break;
    case TS_INPUT_LEAVE:
        entity_unindex(z, e);
        ts_map_del(&z->entities, e->id);
        note_left(z, e->id, NULL);
        free(e);
        break;
    case TS_INPUT_COMMAND:
        if (z->game_hooks && z->game_hooks->on_command) z->game_hooks->on_command(z->game_ud, z, e, in);
        break;
    case TS_INPUT_DETACH:
    case TS_INPUT_ATTACH:  /* handled above */
    case TS_INPUT_REQUEST: /* handled above */
    case TS_INPUT_COUNTER_MOVE:
    case TS_INPUT_COUNTERS: /* ts_zone_apply_batch's, never an entity's */
        break;
    }
    (void)tick;
}

static void payload_from_pb(ts_input_t *in, const ProtobufCBinaryData *b)
{
    size_t n = b->len < TS_GAME_PAYLOAD_MAX ? b->len : TS_GAME_PAYLOAD_MAX;
    if (n) memcpy(in->payload, b->data, n);
    in->payload_len = (uint32_t)n;
}

/* An Attach's resume token, kept for a forward: payload = MAC || player,
 * time_us = expiry, from_cell = its cell (zone.h). */
static void attach_token_from_pb(ts_input_t *in, const Tessera__V1__AttachInput *a)
{
    const ProtobufCBinaryData *mac = &a->resume_mac, *player = &a->resume_player;
    if (mac->len != TS_RESUME_MAC_LEN || player->len > TS_GAME_PAYLOAD_MAX - TS_RESUME_MAC_LEN ||
        !a->resume_cell || ts_proto_cell_get(a->resume_cell, &in->from_cell) != TS_OK)
        return;
    memcpy(in->payload, mac->data, mac->len);
    if (player->len) memcpy(in->payload + mac->len, player->data, player->len);
    in->payload_len = (uint32_t)(mac->len + player->len);
    in->time_us = a->resume_exp;
}

static void input_from_pb(const Tessera__V1__Input *pb, ts_input_t *in)
{
    memset(in, 0, sizeof(*in));
    in->entity = pb->entity;
    in->seq = pb->seq;
    in->sent_us = pb->sent_us;
    switch (pb->kind_case) {
    case TESSERA__V1__INPUT__KIND_JOIN:
        in->kind = TS_INPUT_JOIN;
        in->a = pb->join->x;
        in->b = pb->join->y;
        if (pb->join->name) ts_strlcpy(in->name, pb->join->name, sizeof(in->name));
        in->gateway = pb->join->gateway;
        in->gateway_instance = pb->join->gateway_instance;
        in->session = pb->join->session;
        payload_from_pb(in, &pb->join->payload);
        break;
    case TESSERA__V1__INPUT__KIND_DETACH:
        in->kind = TS_INPUT_DETACH;
        in->session = pb->detach->session;
        in->time_us = pb->detach->time_us;
        break;
    case TESSERA__V1__INPUT__KIND_ATTACH:
        in->kind = TS_INPUT_ATTACH;
        in->gateway = pb->attach->gateway;
        in->gateway_instance = pb->attach->gateway_instance;
        in->session = pb->attach->session;
        attach_token_from_pb(in, pb->attach);
        break;
    case TESSERA__V1__INPUT__KIND_MOVE:
        in->kind = TS_INPUT_MOVE;
        in->a = pb->move->dx;
        in->b = pb->move->dy;
        break;
    case TESSERA__V1__INPUT__KIND_LEAVE:
        in->kind = TS_INPUT_LEAVE;
        break;
    case TESSERA__V1__INPUT__KIND_COMMAND:
        if (pb->command->payload.len > TS_GAME_PAYLOAD_MAX) break; /* refused at the gateway already */
        in->kind = TS_INPUT_COMMAND;
        in->type = pb->command->type;
        payload_from_pb(in, &pb->command->payload);
        break;
    case TESSERA__V1__INPUT__KIND_REQUEST: {
        const Tessera__V1__RequestInput *r = pb->request;
        if (r->payload.len > TS_GAME_PAYLOAD_MAX || !r->from_cell) break;
        if (ts_proto_cell_get(r->from_cell, &in->from_cell) != TS_OK) break;
        in->kind = TS_INPUT_REQUEST;
        in->type = r->type;
        in->from = r->from;
        in->from_x = r->from_x;
        in->from_y = r->from_y;
        in->from_epoch = r->from_epoch;
        payload_from_pb(in, &r->payload);
        break;
    }
    case TESSERA__V1__INPUT__KIND_COUNTER_MOVE:
        if (!pb->counter_move->to || ts_proto_cell_get(pb->counter_move->to, &in->peer) != TS_OK) break;
        in->kind = TS_INPUT_COUNTER_MOVE;
        break;
    case TESSERA__V1__INPUT__KIND_COUNTERS: {
        const Tessera__V1__CountersInput *c = pb->counters;
        if (!c->from || ts_proto_cell_get(c->from, &in->peer) != TS_OK || c->from_seq == 0) break;
        in->kind = TS_INPUT_COUNTERS;
        in->move_seq = c->from_seq;
        for (size_t i = 0; i < c->n_values && i < TS_GAME_COUNTERS; i++)
            in->values[i] = c->values[i];
        break;
    }
    default:
        in->kind = 0;
        break;
    }
}

void ts_zone_input_from_pb(const Tessera__V1__Input *pb, ts_input_t *in)
{
    input_from_pb(pb, in);
}

uint64_t ts_zone_fence_epoch(uint64_t view_epoch, uint64_t learned_ago_us, uint64_t learned_ns,
                             uint64_t stored_ns, uint64_t grace_us)
{
    if (learned_ago_us < grace_us) return 0;
    if (stored_ns != 0 && learned_ns != 0 && stored_ns < learned_ns + grace_us * 1000ULL) return 0;
    return view_epoch;
}

size_t ts_zone_fence_requests(Tessera__V1__InputBatch *ib, ts_zone_epoch_fn epoch_of, void *ud)
{
    size_t keep = 0, refused = 0;
    for (size_t i = 0; i < ib->n_inputs; i++) {
        Tessera__V1__Input *in = ib->inputs[i];
        ts_cell_t from;
        if (in && in->kind_case == TESSERA__V1__INPUT__KIND_REQUEST && in->request->from_cell &&
            ts_proto_cell_get(in->request->from_cell, &from) == TS_OK &&
            in->request->from_epoch < epoch_of(ud, &from)) {
            refused++;
            continue;
        }
        ib->inputs[keep++] = in;
    }
    ib->n_inputs = keep;
    return refused;
}

static void entity_from_pb(const Tessera__V1__EntityState *pb, ts_entity_t *e)
{
    memset(e, 0, sizeof(*e));
    e->id = pb->id;
    e->x = pb->x;
    e->y = pb->y;
    e->vx = pb->vx;
    e->vy = pb->vy;
    e->last_input_seq = pb->last_input_seq;
    e->inputs_applied = pb->inputs_applied;
    e->applied_window[0] = pb->applied_window;
    for (size_t i = 0; i < pb->n_applied_window_ext && i + 1 < TS_WINDOW_WORDS; i++)
        e->applied_window[i + 1] = pb->applied_window_ext[i];
    e->hops = pb->hops;
    e->incarnation = pb->incarnation;
    e->gateway = pb->gateway;
    e->gateway_instance = pb->gateway_instance;
    e->session = pb->session;
    e->detached_us = pb->detached_us;
    e->nearby = pb->nearby;
    if (pb->name) ts_strlcpy(e->name, pb->name, sizeof(e->name));
    e->flags = pb->flags & (TS_GAME_PLAYER | TS_GAME_NPC);
    e->state_len = (uint32_t)(pb->state.len < TS_GAME_STATE_MAX ? pb->state.len : TS_GAME_STATE_MAX);
    if (e->state_len) memcpy(e->state, pb->state.data, e->state_len);
}

/* The entity as gateways see it: no exactly-once window, no incarnation. */
static void entity_to_state_pb(const ts_entity_t *e, Tessera__V1__EntityState *pb)
{
    tessera__v1__entity_state__init(pb);
    pb->id = e->id;
    pb->x = e->x;
    pb->y = e->y;
    pb->vx = e->vx;
    pb->vy = e->vy;
    pb->last_input_seq = e->last_input_seq;
    pb->inputs_applied = e->inputs_applied;
    pb->hops = e->hops;
    pb->name = (char *)e->name;
    pb->nearby = e->nearby;
    pb->state.len = e->state_len;
    pb->state.data = (uint8_t *)e->state;
    pb->flags = e->flags;
}

/* The whole entity (transfers, checkpoints, handover snapshots). */
static void entity_to_pb(const ts_entity_t *e, Tessera__V1__EntityState *pb)
{
    entity_to_state_pb(e, pb);
    pb->applied_window = e->applied_window[0];
    /* only as many extension words as carry bits */
    size_t ext = TS_WINDOW_WORDS - 1;
    while (ext > 0 && e->applied_window[ext] == 0)
        ext--;
    pb->n_applied_window_ext = ext;
    pb->applied_window_ext = (uint64_t *)&e->applied_window[1];
    pb->incarnation = e->incarnation;
    pb->gateway = e->gateway;
    pb->gateway_instance = e->gateway_instance;
    pb->session = e->session;
    pb->detached_us = e->detached_us;
}

/* The same EntityState written straight to the wire (see tessera/pbw.h):
 * whole=false is what state carries (entity_to_state_pb), whole=true the
 * whole entity (entity_to_pb). */
static size_t entity_ext_words(const ts_entity_t *e)
{
    size_t ext = TS_WINDOW_WORDS - 1;
    while (ext > 0 && e->applied_window[ext] == 0)
        ext--;
    return ext;
}

static size_t entity_wire_len(const ts_entity_t *e, bool whole)
{
    size_t n = ts_pbw_u64_len(1, e->id) + ts_pbw_double_len(2, e->x) + ts_pbw_double_len(3, e->y) +
               ts_pbw_double_len(4, e->vx) + ts_pbw_double_len(5, e->vy) +
               ts_pbw_u64_len(6, e->last_input_seq) + ts_pbw_u64_len(7, e->inputs_applied) +
               ts_pbw_bytes_len(9, strnlen(e->name, sizeof(e->name))) + ts_pbw_u64_len(10, e->hops) +
               ts_pbw_u64_len(17, e->nearby) + ts_pbw_bytes_len(18, e->state_len) +
               ts_pbw_u64_len(19, e->flags);
    if (whole) {
        n += ts_pbw_u64_len(8, e->applied_window[0]) + ts_pbw_u64_len(11, e->incarnation);
        size_t ext = entity_ext_words(e), packed = 0;
        for (size_t i = 1; i <= ext; i++)
            packed += ts_pbw_varint_len(e->applied_window[i]);
        if (ext) n += ts_pbw_sub_len(12, packed);
        n += ts_pbw_u64_len(13, e->gateway) + ts_pbw_u64_len(14, e->gateway_instance) +
             ts_pbw_u64_len(15, e->session) + ts_pbw_u64_len(16, e->detached_us);
    }
    return n;
}

static uint8_t *entity_wire_write(uint8_t *p, const ts_entity_t *e, bool whole)
{
    p = ts_pbw_u64(p, 1, e->id);
    p = ts_pbw_double(p, 2, e->x);
    p = ts_pbw_double(p, 3, e->y);
    p = ts_pbw_double(p, 4, e->vx);
    p = ts_pbw_double(p, 5, e->vy);
    p = ts_pbw_u64(p, 6, e->last_input_seq);
    p = ts_pbw_u64(p, 7, e->inputs_applied);
    if (whole) p = ts_pbw_u64(p, 8, e->applied_window[0]);
    p = ts_pbw_bytes(p, 9, e->name, strnlen(e->name, sizeof(e->name)));
    p = ts_pbw_u64(p, 10, e->hops);
    if (whole) {
        p = ts_pbw_u64(p, 11, e->incarnation);
        size_t ext = entity_ext_words(e), packed = 0;
        for (size_t i = 1; i <= ext; i++)
            packed += ts_pbw_varint_len(e->applied_window[i]);
        if (ext) {
            p = ts_pbw_sub_head(p, 12, packed);
            for (size_t i = 1; i <= ext; i++)
                p = ts_pbw_varint(p, e->applied_window[i]);
        }
        p = ts_pbw_u64(p, 13, e->gateway);
        p = ts_pbw_u64(p, 14, e->gateway_instance);
        p = ts_pbw_u64(p, 15, e->session);
        p = ts_pbw_u64(p, 16, e->detached_us);
    }
    p = ts_pbw_u64(p, 17, e->nearby);
    p = ts_pbw_bytes(p, 18, e->state, e->state_len);
    return ts_pbw_u64(p, 19, e->flags);
}

bool ts_zone_entity_wire_check(const ts_entity_t *e, bool whole)
{
    Tessera__V1__EntityState pb;
    if (whole)
        entity_to_pb(e, &pb);
    else
        entity_to_state_pb(e, &pb);
    size_t want = protobuf_c_message_get_packed_size(&pb.base), got = entity_wire_len(e, whole);
    uint8_t *a = malloc(want + 1), *b = malloc(got + 1);
    bool same = a && b && want == got && protobuf_c_message_pack(&pb.base, a) == want &&
                (size_t)(entity_wire_write(b, e, whole) - b) == got && memcmp(a, b, want) == 0;
    free(a);
    free(b);
    return same;
}

/* msg packed by protobuf-c, then each entity appended as field `field`
 * (a repeated EntityState: fields may come in any order on the wire, and
 * repeated elements keep theirs). lens[i] is entity_wire_len(ents[i]). */
static ts_status_t pack_with_entities(const ProtobufCMessage *msg, unsigned field, ts_entity_t *const *ents,
                                      const size_t *lens, size_t n, bool whole, uint8_t **out, size_t *outlen)
{
    size_t head = protobuf_c_message_get_packed_size(msg), total = head;
    for (size_t i = 0; i < n; i++)
        total += ts_pbw_sub_len(field, lens[i]);
    uint8_t *buf = malloc(total ? total : 1);
    if (!buf) return TS_ERR_NOMEM;
    uint8_t *p = buf + protobuf_c_message_pack(msg, buf);
    for (size_t i = 0; i < n; i++) {
        p = ts_pbw_sub_head(p, field, lens[i]);
        p = entity_wire_write(p, ents[i], whole);
    }
    if ((size_t)(p - buf) != total) {
        free(buf);
        return TS_ERR_MALFORMED;
    }
    *out = buf;
    *outlen = total;
    return TS_OK;
}

void ts_zone_accept_transfer(ts_zone_t *z, const ts_entity_t *in)
{
    if (ts_map_get(&z->entities, in->id)) return;
    departed_t *d = ts_map_get(&z->departed, in->id);
    if (d &&
        (in->incarnation < d->incarnation || (in->incarnation == d->incarnation && in->hops <= d->hops))) {
        ts_debug("cell %s: stale transfer of entity %llu (hops %llu <= %llu) dropped", z->key,
                 (unsigned long long)in->id, (unsigned long long)in->hops, (unsigned long long)d->hops);
        return;
    }
    ts_entity_t *e = malloc(sizeof(*e));
    if (!e) return;
    *e = *in;
    e->departing = false;
    touch(z, e);
    ts_debug("cell %s: entity %llu arrived (hops %llu, stream seq %llu)", z->key, (unsigned long long)e->id,
             (unsigned long long)e->hops, (unsigned long long)z->cur_stream_seq);
    put_entity(z, e);
    z->stats.transfers_in++;
}

static void note_left(ts_zone_t *z, uint64_t id, const ts_cell_t *to)
{
    if (!ts_grow((void **)&z->left, &z->cap_left, z->nleft + 1, sizeof(*z->left))) return;
    Tessera__V1__EntityLeft *l = &z->left[z->nleft++];
    tessera__v1__entity_left__init(l);
    l->id = id;
    if (to) {
        l->to = malloc(sizeof(*l->to));
        if (l->to) ts_proto_cell_init(l->to, to);
    } else {
        l->despawned = true;
    }
}

/* The Departure at stream sequence marker_seq is consumed: the entity leaves
 * for `to` unless it is gone already or has crossed since (hops differ). */
static void apply_departure(ts_zone_t *z, const ts_departure_t *dep, uint64_t marker_seq, uint64_t tick)
{
    ts_entity_t *e = ts_map_get(&z->entities, dep->entity);
    if (!e || e->hops != dep->hops) return;
    departed_t *d = malloc(sizeof(*d));
    ts_zone_out_t *o = outbox_for(z, &dep->to, marker_seq, TS_ORIGIN_WORKER);
    if (!d || !o ||
        !ts_grow((void **)&o->transfers, &o->cap_transfers, o->ntransfers + 1, sizeof(*o->transfers))) {
        free(d);
        ts_error("cell %s: out of memory transferring entity %llu", z->key, (unsigned long long)e->id);
        return;
    }
    /* it arrives inside its new cell, whatever it did since deciding to go */
    double x0, y0, x1, y1;
    ts_cell_bounds(&dep->to, z->cell_size, &x0, &y0, &x1, &y1);
    e->x = fmin(fmax(e->x, x0), nextafter(x1, x0));
    e->y = fmin(fmax(e->y, y0), nextafter(y1, y0));
    e->hops++;
    e->departing = false;
    o->transfers[o->ntransfers++] = *e;
    d->to = dep->to;
    d->hops = e->hops;
    d->incarnation = e->incarnation;
    d->until_tick = tick + TS_ZONE_DEPARTED_TICKS;
    free(ts_map_del(&z->departed, e->id));
    if (ts_map_put(&z->departed, e->id, d) != TS_OK) free(d);
    entity_unindex(z, e);
    ts_map_del(&z->entities, e->id);
    /* announced (note_left) once the Transfer is stored: ts_zone_outbox_done */
    ts_debug("cell %s: entity %llu departs (hops %llu, departure at stream seq %llu)", z->key,
             (unsigned long long)e->id, (unsigned long long)e->hops, (unsigned long long)marker_seq);
    free(e);
    z->stats.transfers_out++;
}

bool ts_zone_apply_batch(ts_zone_t *z, uint64_t stream_seq, const Tessera__V1__InputBatch *batch,
                         uint64_t tick)
{
    if (stream_seq != 0 && stream_seq <= z->last_applied_seq) return false;
    z->cur_stream_seq = stream_seq;
    /* transfers first: inputs forwarded in the same batch follow their entity */
    for (size_t i = 0; i < batch->n_transfers; i++) {
        const Tessera__V1__Transfer *t = batch->transfers[i];
        if (!t->entity || t->entity->id == 0) {
            z->stats.dropped++;
            continue;
        }
        ts_entity_t e;
        entity_from_pb(t->entity, &e);
        ts_zone_accept_transfer(z, &e);
    }
    for (size_t i = 0; i < batch->n_departures; i++) {
        const Tessera__V1__Departure *pd = batch->departures[i];
        ts_departure_t dep = {.entity = pd->entity, .hops = pd->hops};
        if (ts_proto_cell_get(pd->to, &dep.to) != TS_OK || dep.to.world != z->cell.world) {
            z->stats.dropped++;
            continue;
        }
        apply_departure(z, &dep, stream_seq, tick);
    }
    for (size_t i = 0; i < batch->n_inputs; i++) {
        ts_input_t in;
        input_from_pb(batch->inputs[i], &in);
        if (in.kind == TS_INPUT_COUNTER_MOVE || in.kind == TS_INPUT_COUNTERS) {
            apply_counter_input(z, &in, stream_seq);
            continue;
        }
        if (in.entity == 0 || in.kind == 0) {
            z->stats.dropped++;
            continue;
        }
        ts_zone_apply_input(z, &in, tick);
    }
    if (stream_seq) z->last_applied_seq = stream_seq;
    return true;
}

/* Reflects v into [lo, hi) and flips the velocity on a bounce. */
static void bounce(double *v, double *vel, double lo, double hi)
{
    if (*v < lo) {
        *v = fmin(lo + (lo - *v), nextafter(hi, lo));
        *vel = -*vel;
    } else if (*v >= hi) {
        *v = fmax(hi - (*v - hi), lo);
        if (*v >= hi) *v = nextafter(hi, lo);
        *vel = -*vel;
    }
}

bool ts_zone_queue_departure(ts_zone_t *z, ts_entity_t *e, const ts_cell_t *to)
{
    if (!ts_grow((void **)&z->deps, &z->cap_deps, z->ndeps + 1, sizeof(*z->deps))) return false;
    z->deps[z->ndeps++] = (ts_departure_t){.entity = e->id, .hops = e->hops, .to = *to};
    e->departing = true;
    return true;
}

void ts_zone_step(ts_zone_t *z, double dt, uint64_t tick)
{
    uint64_t id;
    void *v;
    z->nghost_changed = 0; /* what the last step found and nobody packed is stale */
    ts_grid_t *g = &z->grid;
    /* the grid is rebuilt from the positions written here; a cell with no
     * entity of its own has no nearby count to update, so it skips the
     * O(buckets) passes (a query rebuilds the grid if it needs one) */
    bool owns = z->entities.len > 0;
    bool index = owns && g->start && grid_reserve(g, z->entities.len + z->ghosts.len);
    if (index) grid_clear_counts(g);
    size_t staged = 0;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
        ts_entity_t *e = v;
        if (e->vx != 0 || e->vy != 0) {
            e->x += e->vx * dt;
            e->y += e->vy * dt;
            bounce(&e->x, &e->vx, z->min_x, z->max_x);
            bounce(&e->y, &e->vy, z->min_y, z->max_y);
            touch(z, e);
        }
        if (index) grid_stage(g, staged++, e->x, e->y, (uintptr_t)e);
        /* the border band: what the neighbours' owners see as ghosts */
        if (e->x > z->band_x0 && e->x < z->band_x1 && e->y > z->band_y0 && e->y < z->band_y1) {
            if (e->ghosted) {
                ghost_out_removed(z, e->id);
                e->ghosted = false;
            }
        } else if (e->dirty || !e->ghosted) {
            if (ts_grow((void **)&z->ghost_changed, &z->cap_ghost_changed, z->nghost_changed + 1,
                        sizeof(*z->ghost_changed))) {
                z->ghost_changed[z->nghost_changed++] = e;
                e->ghosted = true;
            }
        }
        if (e->departing) continue;
        /* well inside: no need for the exact (slower) test */
        if (e->x > z->in_x0 && e->x < z->in_x1 && e->y > z->in_y0 && e->y < z->in_y1) continue;
        if (ts_cell_has_pos(&z->cell, z->cell_size, e->x, e->y)) continue;
        ts_cell_t to;
        ts_cell_from_pos(z->cell.world, z->cell_size, z->cell.depth, e->x, e->y, &to);
        ts_zone_queue_departure(z, e, &to);
    }
    /* forget old departures */
    if (tick % 100 == 0) {
        for (size_t it = 0; ts_map_next(&z->departed, &it, &id, &v);) {
            departed_t *d = v;
            if (d->until_tick < tick) free(ts_map_del(&z->departed, id));
        }
    }
    if (index) {
        stage_ghosts(z, staged);
        grid_sort(g, z->entities.len + z->ghosts.len);
    } else {
        g->stale = true;
    }
    if (owns) ts_zone_update_nearby(z);
    z->game.time += dt;
    if (z->game_hooks && z->game_hooks->on_tick) z->game_hooks->on_tick(z->game_ud, z, dt, tick);
}

/* ---- replay clock ---------------------------------------------------------- */

/* One replayed step: it costs 1 + the cell's entities (one always runs). */
static void replay_step(ts_zone_t *z, double dt, uint64_t tick, uint32_t *budget, ts_zone_step_fn step,
                        void *ud)
{
    size_t n = ts_zone_entities(z);
    uint32_t cost = n < UINT32_MAX - 1 ? (uint32_t)n + 1 : UINT32_MAX;
    *budget -= cost < *budget ? cost : *budget;
    if (step)
        step(ud, z, dt);
    else
        ts_zone_step(z, dt, tick);
    z->stats.replay_steps++;
}

bool ts_zone_replay_until(ts_zone_t *z, uint64_t t_ns, uint64_t period_ns, double dt, uint64_t tick,
                          uint32_t *budget, ts_zone_step_fn step, void *ud)
{
    if (period_ns == 0 || t_ns == 0) return true;
    if (z->clock_ns == 0) {
        z->clock_ns = t_ns; /* nothing says when it last stepped: from here */
        return true;
    }
    if (t_ns <= z->clock_ns + period_ns) return true;
    /* a longer silence (no owner for a long time) is stepped for its last
     * TS_ZONE_REPLAY_GAP_MAX_NS only */
    if (t_ns - z->clock_ns > TS_ZONE_REPLAY_GAP_MAX_NS + period_ns) {
        uint64_t skip = (t_ns - z->clock_ns - TS_ZONE_REPLAY_GAP_MAX_NS) / period_ns;
        z->clock_ns += skip * period_ns;
        z->stats.replay_skipped += skip;
    }
    while (z->clock_ns + period_ns < t_ns) {
        if (*budget == 0) return false;
        replay_step(z, dt, tick, budget, step, ud);
        z->clock_ns += period_ns;
    }
    return true;
}

bool ts_zone_replay_mark(ts_zone_t *z, const ts_zone_mark_t *m, double dt, uint64_t tick, uint32_t *budget,
                         ts_zone_step_fn step, void *ud)
{
    if (*budget == 0) return false;
    replay_step(z, dt, tick, budget, step, ud);
    z->clock_ns = m->clock_ns;
    return true;
}

void ts_zone_outbox_done(ts_zone_t *z, size_t i)
{
    ts_zone_out_t *o = &z->out[i];
    for (size_t k = 0; k < o->ntransfers; k++)
        note_left(z, o->transfers[k].id, &o->dest);
    o->ntransfers = 0;
    o->ninputs = 0;
    o->id_seq = 0;
    o->pub_seq = 0;
    o->sent = o->chunk = 0;
}

void ts_zone_outbox_clear(ts_zone_t *z)
{
    /* stable: entries still pending keep their relative order */
    size_t keep = 0;
    for (size_t i = 0; i < z->nout; i++) {
        if (z->out[i].ntransfers == 0 && z->out[i].ninputs == 0) continue;
        if (keep != i) {
            ts_zone_out_t tmp = z->out[keep];
            z->out[keep] = z->out[i];
            z->out[i] = tmp;
        }
        keep++;
    }
    z->nout = keep;
}

/* Scratch memory for building protobuf messages: everything is freed at once. */
typedef struct {
    void **ptrs;
    size_t n, cap;
    bool failed;
} arena_t;

static void *arena_alloc(arena_t *a, size_t size)
{
    if (a->failed) return NULL;
    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 32;
        void **v = realloc(a->ptrs, ncap * sizeof(*v));
        if (!v) {
            a->failed = true;
            return NULL;
        }
        a->ptrs = v;
        a->cap = ncap;
    }
    void *p = calloc(1, size ? size : 1);
    if (!p) {
        a->failed = true;
        return NULL;
    }
    a->ptrs[a->n++] = p;
    return p;
}

static void arena_free(arena_t *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->ptrs[i]);
    free(a->ptrs);
}

static Tessera__V1__CellId *cell_to_pb(arena_t *a, const ts_cell_t *c);

/* An Input message and whichever kind it carries, in one piece of memory. */
typedef struct {
    Tessera__V1__Input in;
    union {
        Tessera__V1__JoinInput join;
        Tessera__V1__DetachInput detach;
        Tessera__V1__AttachInput attach;
        Tessera__V1__MoveInput move;
        Tessera__V1__LeaveInput leave;
        Tessera__V1__CommandInput command;
        Tessera__V1__RequestInput request;
        Tessera__V1__CounterMoveInput counter_move;
        Tessera__V1__CountersInput counters;
    } kind;
    Tessera__V1__CellId from_cell;
} input_pb_t;

/* src as an Input in s (which points into s and src). */
static Tessera__V1__Input *input_fill_pb(input_pb_t *s, const ts_input_t *src)
{
    Tessera__V1__Input *in = &s->in;
    tessera__v1__input__init(in);
    in->entity = src->entity;
    in->seq = src->seq;
    in->sent_us = src->sent_us;
    switch (src->kind) {
    case TS_INPUT_JOIN: {
        Tessera__V1__JoinInput *j = &s->kind.join;
        tessera__v1__join_input__init(j);
        j->x = src->a;
        j->y = src->b;
        j->name = (char *)src->name;
        j->gateway = src->gateway;
        j->gateway_instance = src->gateway_instance;
        j->session = src->session;
        j->payload.len = src->payload_len;
        j->payload.data = (uint8_t *)src->payload;
        in->kind_case = TESSERA__V1__INPUT__KIND_JOIN;
        in->join = j;
        break;
    }
    case TS_INPUT_DETACH: {
        Tessera__V1__DetachInput *d = &s->kind.detach;
        tessera__v1__detach_input__init(d);
        d->session = src->session;
        d->time_us = src->time_us;
        in->kind_case = TESSERA__V1__INPUT__KIND_DETACH;
        in->detach = d;
        break;
    }
    case TS_INPUT_ATTACH: {
        Tessera__V1__AttachInput *t = &s->kind.attach;
        tessera__v1__attach_input__init(t);
        t->gateway = src->gateway;
        t->gateway_instance = src->gateway_instance;
        t->session = src->session;
        if (src->payload_len >= TS_RESUME_MAC_LEN) { /* its resume token, as it came */
            ts_proto_cell_init(&s->from_cell, &src->from_cell);
            t->resume_cell = &s->from_cell;
            t->resume_exp = src->time_us;
            t->resume_mac.data = (uint8_t *)src->payload;
            t->resume_mac.len = TS_RESUME_MAC_LEN;
            t->resume_player.data = (uint8_t *)src->payload + TS_RESUME_MAC_LEN;
            t->resume_player.len = src->payload_len - TS_RESUME_MAC_LEN;
        }
        in->kind_case = TESSERA__V1__INPUT__KIND_ATTACH;
        in->attach = t;
        break;
    }
    case TS_INPUT_MOVE: {
        Tessera__V1__MoveInput *m = &s->kind.move;
        tessera__v1__move_input__init(m);
        m->dx = src->a;
        m->dy = src->b;
        in->kind_case = TESSERA__V1__INPUT__KIND_MOVE;
        in->move = m;
        break;
    }
    case TS_INPUT_LEAVE: {
        Tessera__V1__LeaveInput *l = &s->kind.leave;
        tessera__v1__leave_input__init(l);
        in->kind_case = TESSERA__V1__INPUT__KIND_LEAVE;
        in->leave = l;
        break;
    }
    case TS_INPUT_COMMAND: {
        Tessera__V1__CommandInput *c = &s->kind.command;
        tessera__v1__command_input__init(c);
        c->type = src->type;
        c->payload.len = src->payload_len;
        c->payload.data = (uint8_t *)src->payload;
        in->kind_case = TESSERA__V1__INPUT__KIND_COMMAND;
        in->command = c;
        break;
    }
    case TS_INPUT_REQUEST: {
        Tessera__V1__RequestInput *r = &s->kind.request;
        tessera__v1__request_input__init(r);
        r->from = src->from;
        r->from_x = src->from_x;
        r->from_y = src->from_y;
        r->type = src->type;
        r->payload.len = src->payload_len;
        r->payload.data = (uint8_t *)src->payload;
        ts_proto_cell_init(&s->from_cell, &src->from_cell);
        r->from_cell = &s->from_cell;
        r->from_epoch = src->from_epoch;
        in->kind_case = TESSERA__V1__INPUT__KIND_REQUEST;
        in->request = r;
        break;
    }
    case TS_INPUT_COUNTER_MOVE: {
        Tessera__V1__CounterMoveInput *m = &s->kind.counter_move;
        tessera__v1__counter_move_input__init(m);
        ts_proto_cell_init(&s->from_cell, &src->peer);
        m->to = &s->from_cell;
        in->kind_case = TESSERA__V1__INPUT__KIND_COUNTER_MOVE;
        in->counter_move = m;
        break;
    }
    case TS_INPUT_COUNTERS: {
        Tessera__V1__CountersInput *c = &s->kind.counters;
        tessera__v1__counters_input__init(c);
        ts_proto_cell_init(&s->from_cell, &src->peer);
        c->from = &s->from_cell;
        c->from_seq = src->move_seq;
        c->n_values = values_len(src->values);
        c->values = (int64_t *)src->values;
        in->kind_case = TESSERA__V1__INPUT__KIND_COUNTERS;
        in->counters = c;
        break;
    }
    }
    return in;
}

static Tessera__V1__Input *input_to_pb(arena_t *a, const ts_input_t *src)
{
    input_pb_t *s = arena_alloc(a, sizeof(*s));
    return s ? input_fill_pb(s, src) : NULL;
}

static Tessera__V1__CellId *cell_to_pb(arena_t *a, const ts_cell_t *c)
{
    Tessera__V1__CellId *pb = arena_alloc(a, sizeof(*pb));
    if (pb) ts_proto_cell_init(pb, c);
    return pb;
}

/* n inputs as an array of messages. */
static Tessera__V1__Input **inputs_to_pb(arena_t *a, const ts_input_t *ins, size_t n)
{
    Tessera__V1__Input **v = arena_alloc(a, n * sizeof(*v));
    for (size_t k = 0; v && k < n; k++)
        v[k] = input_to_pb(a, &ins[k]);
    return v;
}

static Tessera__V1__EntityState **entities_to_pb(arena_t *a, const ts_entity_t *es, size_t n)
{
    Tessera__V1__EntityState **v = arena_alloc(a, n * sizeof(*v));
    for (size_t k = 0; v && k < n; k++) {
        v[k] = arena_alloc(a, sizeof(*v[k]));
        if (v[k]) entity_to_pb(&es[k], v[k]);
    }
    return v;
}

/* ---- cutting messages by bytes --------------------------------------------
 * A message is a head (the fields protobuf-c packs) and runs of repeated
 * fields, each element its tag, its length and its bytes. What an element
 * adds to a message is known without packing it, so the runs are cut into
 * parts that fit msg_max before anything is packed. */

/* What item i adds to a part; *capped: it counts towards the part's cap. */
typedef size_t (*item_cost_fn)(const void *ud, size_t i, bool *capped);

/* Cuts items [0, n) into consecutive parts, each costing at most budget
 * bytes (an item costing more alone gets a part of its own, which the
 * caller then finds too large) and holding at most cap capped items.
 * Returns the number of parts (one for n == 0) with *starts (malloc'd,
 * parts + 1 entries: part p holds items [starts[p], starts[p + 1])), or 0
 * if out of memory. */
static size_t plan_parts(size_t n, size_t budget, size_t cap, item_cost_fn cost, const void *ud,
                         size_t **starts)
{
    size_t *st = NULL, nst = 0, cap_st = 0, bytes = 0, ncapped = 0;
    if (!ts_grow((void **)&st, &cap_st, nst + 1, sizeof(*st))) return 0;
    st[nst++] = 0;
    for (size_t i = 0; i < n; i++) {
        bool capped = false;
        size_t c = cost(ud, i, &capped);
        if (i > st[nst - 1] && (c > budget - bytes || (capped && ncapped >= cap))) {
            if (!ts_grow((void **)&st, &cap_st, nst + 1, sizeof(*st))) {
                free(st);
                return 0;
            }
            st[nst++] = i;
            bytes = 0;
            ncapped = 0;
        }
        bytes = c > budget - bytes ? budget : bytes + c;
        if (capped) ncapped++;
    }
    if (!ts_grow((void **)&st, &cap_st, nst + 1, sizeof(*st))) {
        free(st);
        return 0;
    }
    st[nst] = n;
    *starts = st;
    return nst;
}

/* The part [a, b) of a run of items [off, off + n) of a plan: [*r0, *r1)
 * relative to the run. */
static void run_range(size_t a, size_t b, size_t off, size_t n, size_t *r0, size_t *r1)
{
    *r0 = a <= off ? 0 : (a - off < n ? a - off : n);
    *r1 = b <= off ? 0 : (b - off < n ? b - off : n);
}

static size_t cell_wire_len(const ts_cell_t *c)
{
    Tessera__V1__CellId pb;
    ts_proto_cell_init(&pb, c);
    return protobuf_c_message_get_packed_size(&pb.base);
}

/* A uint64 field at its longest: tag and a 10-byte varint. */
#define U64_FIELD_MAX 11

static size_t input_wire_len(const ts_input_t *in)
{
    input_pb_t s;
    return protobuf_c_message_get_packed_size(&input_fill_pb(&s, in)->base);
}

/* What item k of outbox entry o (a transfer, then the inputs) adds to an
 * InputBatch; from_len: the packed size of the sending cell's CellId. A
 * transfer's from_epoch is counted at its longest, so the cut of an entry
 * does not depend on the epoch of whoever publishes it. */
static size_t outbox_item_len(const ts_zone_out_t *o, size_t k, size_t from_len)
{
    if (k < o->ntransfers) {
        size_t t = ts_pbw_sub_len(1, entity_wire_len(&o->transfers[k], true)) + ts_pbw_sub_len(2, from_len) +
                   U64_FIELD_MAX;
        return ts_pbw_sub_len(3, t);
    }
    return ts_pbw_sub_len(2, input_wire_len(&o->inputs[k - o->ntransfers]));
}

/* Items [from, from + n) of outbox entry o as one InputBatch. */
static ts_status_t pack_outbox_items(const ts_zone_t *z, const ts_zone_out_t *o, size_t from, size_t n,
                                     uint8_t **buf, size_t *len)
{
    size_t t0, t1, i0, i1;
    *buf = NULL;
    *len = 0;
    run_range(from, from + n, 0, o->ntransfers, &t0, &t1);
    run_range(from, from + n, o->ntransfers, o->ninputs, &i0, &i1);
    arena_t a = {0};
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    b.cell = cell_to_pb(&a, &o->dest);
    Tessera__V1__CellId *fromc = cell_to_pb(&a, &z->cell);
    b.n_transfers = t1 - t0;
    b.transfers = arena_alloc(&a, b.n_transfers * sizeof(*b.transfers));
    for (size_t k = 0; b.transfers && k < b.n_transfers; k++) {
        Tessera__V1__Transfer *t = arena_alloc(&a, sizeof(*t));
        Tessera__V1__EntityState *es = arena_alloc(&a, sizeof(*es));
        if (!t || !es) break;
        tessera__v1__transfer__init(t);
        entity_to_pb(&o->transfers[t0 + k], es);
        t->entity = es;
        t->from = fromc;
        t->from_epoch = z->epoch;
        b.transfers[k] = t;
    }
    b.n_inputs = i1 - i0;
    b.inputs = inputs_to_pb(&a, b.n_inputs ? o->inputs + i0 : NULL, b.n_inputs);
    ts_status_t st = a.failed ? TS_ERR_NOMEM : ts_proto_pack(&b.base, buf, len);
    arena_free(&a);
    return st;
}

ts_status_t ts_zone_pack_outbox(const ts_zone_t *z, size_t i, uint8_t **buf, size_t *len)
{
    const ts_zone_out_t *o = &z->out[i];
    return pack_outbox_items(z, o, 0, o->ntransfers + o->ninputs, buf, len);
}

ts_status_t ts_zone_pack_outbox_chunk(const ts_zone_t *z, size_t i, size_t from, uint8_t **buf, size_t *len,
                                      size_t *count)
{
    const ts_zone_out_t *o = &z->out[i];
    size_t total = o->ntransfers + o->ninputs;
    *buf = NULL;
    *len = 0;
    *count = 0;
    if (from >= total) return TS_ERR_INVALID;
    size_t head = ts_pbw_sub_len(1, cell_wire_len(&o->dest)), from_len = cell_wire_len(&z->cell);
    size_t budget = z->msg_max > head ? z->msg_max - head : 0, bytes = 0, k = from;
    for (; k < total; k++) {
        size_t c = outbox_item_len(o, k, from_len);
        if (k > from && c > budget - bytes) break;
        bytes = c > budget - bytes ? budget : bytes + c;
    }
    ts_status_t st = pack_outbox_items(z, o, from, k - from, buf, len);
    if (st == TS_OK) *count = k - from;
    return st;
}

/* The items of a StateDelta: the announcements, the events, then the
 * entities (capped). */
typedef struct {
    const ts_zone_t *z;
    const Tessera__V1__GameEvent *evs;
    const size_t *elens;
} delta_items_t;

static size_t delta_item_cost(const void *ud, size_t i, bool *capped)
{
    const delta_items_t *d = ud;
    if (i < d->z->nleft) return ts_pbw_sub_len(6, protobuf_c_message_get_packed_size(&d->z->left[i].base));
    i -= d->z->nleft;
    if (i < d->z->nevents) return ts_pbw_sub_len(11, protobuf_c_message_get_packed_size(&d->evs[i].base));
    i -= d->z->nevents;
    *capped = true;
    return ts_pbw_sub_len(5, d->elens[i]);
}

ts_status_t ts_zone_pack_delta(ts_zone_t *z, uint64_t tick, bool full, const char *owner, uint8_t ***bufs,
                               size_t **lens, size_t *nparts)
{
    *bufs = NULL;
    *lens = NULL;
    *nparts = 0;
    size_t n = 0;
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);)
        if (full || ((ts_entity_t *)v)->dirty) n++;
    if (n == 0 && z->nleft == 0 && z->nevents == 0 && !full) return TS_OK;

    size_t want = n ? n : 1;
    if (z->scratch_cap < want) {
        ts_entity_t **ne = realloc(z->scratch_ents, want * sizeof(*ne));
        if (ne) z->scratch_ents = ne;
        size_t *nl = realloc(z->scratch_lens, want * sizeof(*nl));
        if (nl) z->scratch_lens = nl;
        if (ne && nl) z->scratch_cap = want;
    }
    ts_entity_t **ents = z->scratch_cap >= want ? z->scratch_ents : NULL;
    size_t *elens = z->scratch_cap >= want ? z->scratch_lens : NULL;
    Tessera__V1__EntityLeft **lp = calloc(z->nleft ? z->nleft : 1, sizeof(*lp));
    Tessera__V1__GameEvent *evs = z->nevents ? calloc(z->nevents, sizeof(*evs)) : NULL;
    Tessera__V1__GameEvent **evp = z->nevents ? calloc(z->nevents, sizeof(*evp)) : NULL;
    size_t *starts = NULL, parts = 0;
    uint8_t **ob = NULL;
    size_t *ol = NULL;
    ts_status_t st = TS_ERR_NOMEM;
    if (!ents || !elens || !lp || (z->nevents && (!evs || !evp))) goto cleanup;
    for (size_t i = 0; i < z->nleft; i++)
        lp[i] = &z->left[i];
    for (size_t i = 0; i < z->nevents; i++) {
        const ts_zone_event_t *ev = &z->events[i];
        tessera__v1__game_event__init(&evs[i]);
        evs[i].type = ev->type;
        evs[i].payload.len = ev->len;
        evs[i].payload.data = (uint8_t *)ev->payload;
        evs[i].entity = ev->entity;
        evs[i].positional = ev->positional;
        evs[i].x = ev->x;
        evs[i].y = ev->y;
        evp[i] = &evs[i];
    }
    size_t k = 0;
    for (size_t it = 0; k < n && ts_map_next(&z->entities, &it, &id, &v);) {
        ts_entity_t *e = v;
        if (!full && !e->dirty) continue;
        ents[k] = e;
        elens[k] = entity_wire_len(e, false);
        k++;
        e->dirty = false;
    }

    Tessera__V1__CellId cell;
    ts_proto_cell_init(&cell, &z->cell);
    Tessera__V1__StateDelta d = TESSERA__V1__STATE_DELTA__INIT;
    d.cell = &cell;
    d.epoch = z->epoch;
    d.tick = tick;
    d.full = full;
    d.last_applied_seq = z->last_applied_seq;
    d.owner = (char *)owner;
    d.part = d.parts = UINT32_MAX; /* the head at its longest */
    size_t head = protobuf_c_message_get_packed_size(&d.base);
    delta_items_t di = {.z = z, .evs = evs, .elens = elens};
    parts = plan_parts(z->nleft + z->nevents + n, z->msg_max > head ? z->msg_max - head : 0,
                       TS_ZONE_STATE_PART_ENTITIES, delta_item_cost, &di, &starts);
    if (!parts) goto cleanup;
    ob = calloc(parts, sizeof(*ob));
    ol = calloc(parts, sizeof(*ol));
    if (!ob || !ol) goto cleanup;
    st = TS_OK;
    for (size_t part = 0; part < parts && st == TS_OK; part++) {
        size_t l0, l1, v0, v1, e0, e1;
        run_range(starts[part], starts[part + 1], 0, z->nleft, &l0, &l1);
        run_range(starts[part], starts[part + 1], z->nleft, z->nevents, &v0, &v1);
        run_range(starts[part], starts[part + 1], z->nleft + z->nevents, n, &e0, &e1);
        d.n_left = l1 - l0;
        d.left = lp + l0;
        d.n_events = v1 - v0;
        d.events = d.n_events ? evp + v0 : NULL;
        d.part = parts > 1 ? (uint32_t)part : 0;
        d.parts = parts > 1 ? (uint32_t)parts : 0;
        st = pack_with_entities(&d.base, 5, ents + e0, elens + e0, e1 - e0, false, &ob[part], &ol[part]);
    }
    if (st == TS_OK) {
        *bufs = ob;
        *lens = ol;
        *nparts = parts;
        ob = NULL;
        ol = NULL;
    }
cleanup:
    for (size_t i = 0; i < z->nleft; i++)
        free(z->left[i].to);
    z->nleft = 0;
    z->nevents = 0;
    if (ob)
        for (size_t i = 0; i < parts; i++)
            free(ob[i]);
    free(ob);
    free(ol);
    free(starts);
    free(lp);
    free(evs);
    free(evp);
    return st;
}

/* What Departure dep adds to an InputBatch. */
static size_t departure_len(const ts_zone_t *z, const ts_departure_t *dep)
{
    Tessera__V1__Departure d = TESSERA__V1__DEPARTURE__INIT;
    Tessera__V1__CellId to;
    ts_proto_cell_init(&to, &dep->to);
    d.entity = dep->entity;
    d.to = &to;
    d.hops = dep->hops;
    d.epoch = z->epoch;
    return ts_pbw_sub_len(4, protobuf_c_message_get_packed_size(&d.base));
}

/* The first n queued Departures as one InputBatch. */
static ts_status_t pack_departures(const ts_zone_t *z, size_t n, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (n == 0) return TS_OK;
    Tessera__V1__Departure *d = calloc(n, sizeof(*d));
    Tessera__V1__Departure **dp = calloc(n, sizeof(*dp));
    Tessera__V1__CellId *to = calloc(n, sizeof(*to));
    ts_status_t st = TS_ERR_NOMEM;
    if (!d || !dp || !to) goto cleanup;
    for (size_t i = 0; i < n; i++) {
        tessera__v1__departure__init(&d[i]);
        ts_proto_cell_init(&to[i], &z->deps[i].to);
        d[i].entity = z->deps[i].entity;
        d[i].to = &to[i];
        d[i].hops = z->deps[i].hops;
        d[i].epoch = z->epoch;
        dp[i] = &d[i];
    }
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    Tessera__V1__CellId cell;
    ts_proto_cell_init(&cell, &z->cell);
    b.cell = &cell;
    b.n_departures = n;
    b.departures = dp;
    st = ts_proto_pack(&b.base, buf, len);
cleanup:
    free(d);
    free(dp);
    free(to);
    return st;
}

ts_status_t ts_zone_pack_departures(const ts_zone_t *z, uint8_t **buf, size_t *len)
{
    return pack_departures(z, z->ndeps, buf, len);
}

ts_status_t ts_zone_pack_departures_chunk(const ts_zone_t *z, uint8_t **buf, size_t *len, size_t *count)
{
    size_t head = ts_pbw_sub_len(1, cell_wire_len(&z->cell));
    size_t budget = z->msg_max > head ? z->msg_max - head : 0, bytes = 0, n = 0;
    for (; n < z->ndeps; n++) {
        size_t c = departure_len(z, &z->deps[n]);
        if (n > 0 && c > budget - bytes) break;
        bytes = c > budget - bytes ? budget : bytes + c;
    }
    *count = 0;
    ts_status_t st = pack_departures(z, n, buf, len);
    if (st == TS_OK) *count = n;
    return st;
}

void ts_zone_departures_done(ts_zone_t *z)
{
    size_t n = z->deps_in_flight <= z->ndeps ? z->deps_in_flight : z->ndeps;
    memmove(z->deps, z->deps + n, (z->ndeps - n) * sizeof(*z->deps));
    z->ndeps -= n;
    z->deps_in_flight = 0;
    z->deps_pub = 0;
}

void ts_zone_mark_precopy(ts_zone_t *z)
{
    ts_map_free(&z->precopy_ids);
    ts_map_init(&z->precopy_ids);
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);)
        ts_map_put(&z->precopy_ids, id, (void *)1);
    z->precopy_mark = z->mod_counter;
}

/* ---- checkpoints ----------------------------------------------------------
 * What a checkpoint holds beside its head, as one run of items in the
 * order its parts carry them: the removed ids (a Diff), the announcements
 * not made yet, the outbox entries' items (transfers, then inputs, entry by
 * entry), the departed records, the entities. */

/* An Outbox's own fields at their longest: its tag and length, dest,
 * marker_seq and origin. */
#define OUTBOX_HEAD_MAX 80
/* Room in every part beside the items: the packed `removed` field's tag and
 * length, and the head of an outbox entry continued from the part before. */
#define CKPT_PART_SLACK (16 + OUTBOX_HEAD_MAX)

typedef struct {
    const ts_zone_t *z;
    uint64_t *removed;
    size_t nremoved, nleft;
    uint32_t *ob_entry, *ob_item; /* each outbox item: its entry and its index there */
    size_t nob;
    uint64_t *dep_ids;
    const departed_t **deps;
    size_t ndep;
    ts_entity_t **ents;
    size_t *elens;
    size_t nents;
    uint64_t tick;
} ckpt_items_t;

static void ckpt_items_free(ckpt_items_t *c)
{
    free(c->removed);
    free(c->ob_entry);
    free(c->ob_item);
    free(c->dep_ids);
    free(c->deps);
    free(c->ents);
    free(c->elens);
}

static ts_status_t ckpt_items_collect(const ts_zone_t *z, bool diff, uint64_t tick, ckpt_items_t *c)
{
    memset(c, 0, sizeof(*c));
    c->z = z;
    c->tick = tick;
    c->nleft = z->nleft;
    uint64_t id;
    void *v;
    size_t nr = 0, nob = 0, ne = 0;
    if (diff)
        for (size_t it = 0; ts_map_next(&z->precopy_ids, &it, &id, &v);)
            if (!ts_map_get(&z->entities, id)) nr++;
    for (size_t i = 0; i < z->nout; i++)
        nob += z->out[i].ntransfers + z->out[i].ninputs;
    for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);)
        if (!diff || ((ts_entity_t *)v)->mod > z->precopy_mark) ne++;
    size_t nd = z->departed.len;
    c->removed = calloc(nr ? nr : 1, sizeof(*c->removed));
    c->ob_entry = calloc(nob ? nob : 1, sizeof(*c->ob_entry));
    c->ob_item = calloc(nob ? nob : 1, sizeof(*c->ob_item));
    c->dep_ids = calloc(nd ? nd : 1, sizeof(*c->dep_ids));
    c->deps = calloc(nd ? nd : 1, sizeof(*c->deps));
    c->ents = calloc(ne ? ne : 1, sizeof(*c->ents));
    c->elens = calloc(ne ? ne : 1, sizeof(*c->elens));
    if (!c->removed || !c->ob_entry || !c->ob_item || !c->dep_ids || !c->deps || !c->ents || !c->elens) {
        ckpt_items_free(c);
        return TS_ERR_NOMEM;
    }
    if (diff)
        for (size_t it = 0; c->nremoved < nr && ts_map_next(&z->precopy_ids, &it, &id, &v);)
            if (!ts_map_get(&z->entities, id)) c->removed[c->nremoved++] = id;
    for (size_t i = 0; i < z->nout; i++)
        for (size_t k = 0; k < z->out[i].ntransfers + z->out[i].ninputs; k++) {
            c->ob_entry[c->nob] = (uint32_t)i;
            c->ob_item[c->nob++] = (uint32_t)k;
        }
    for (size_t it = 0; c->ndep < nd && ts_map_next(&z->departed, &it, &id, &v);) {
        c->dep_ids[c->ndep] = id;
        c->deps[c->ndep++] = v;
    }
    for (size_t it = 0; c->nents < ne && ts_map_next(&z->entities, &it, &id, &v);) {
        ts_entity_t *e = v;
        if (diff && e->mod <= z->precopy_mark) continue;
        c->ents[c->nents] = e;
        c->elens[c->nents++] = entity_wire_len(e, true);
    }
    return TS_OK;
}

static void departed_to_pb(const ckpt_items_t *c, size_t i, Tessera__V1__Departed *pb,
                           Tessera__V1__CellId *to)
{
    const departed_t *d = c->deps[i];
    tessera__v1__departed__init(pb);
    ts_proto_cell_init(to, &d->to);
    pb->id = c->dep_ids[i];
    pb->to = to;
    pb->hops = d->hops;
    pb->incarnation = d->incarnation;
    pb->ttl_ticks = d->until_tick > c->tick ? d->until_tick - c->tick : 0;
}

static size_t ckpt_item_cost(const void *ud, size_t i, bool *capped)
{
    const ckpt_items_t *c = ud;
    if (i < c->nremoved) return 1 + ts_pbw_varint_len(c->removed[i]); /* packed or not */
    i -= c->nremoved;
    if (i < c->nleft) return ts_pbw_sub_len(11, protobuf_c_message_get_packed_size(&c->z->left[i].base));
    i -= c->nleft;
    if (i < c->nob) {
        const ts_zone_out_t *o = &c->z->out[c->ob_entry[i]];
        size_t k = c->ob_item[i];
        size_t n = k < o->ntransfers ? ts_pbw_sub_len(3, entity_wire_len(&o->transfers[k], true))
                                     : ts_pbw_sub_len(4, input_wire_len(&o->inputs[k - o->ntransfers]));
        return k == 0 ? n + OUTBOX_HEAD_MAX : n;
    }
    i -= c->nob;
    if (i < c->ndep) {
        Tessera__V1__Departed pb;
        Tessera__V1__CellId to;
        departed_to_pb(c, i, &pb, &to);
        return ts_pbw_sub_len(6, protobuf_c_message_get_packed_size(&pb.base));
    }
    i -= c->ndep;
    *capped = true;
    return ts_pbw_sub_len(5, c->elens[i]);
}

size_t ts_zone_counters_len(const ts_zone_t *z)
{
    return values_len(z->game.counters);
}

size_t ts_zone_flows_to_pb(const ts_zone_t *z, ts_zone_flows_pb_t *s)
{
    for (size_t i = 0; i < z->nflows; i++) {
        const ts_zone_flow_t *f = &z->flows[i];
        Tessera__V1__CounterFlow *pb = &s->f[i];
        tessera__v1__counter_flow__init(pb);
        ts_proto_cell_init(&s->cell[i], &f->peer);
        pb->peer = &s->cell[i];
        pb->n_out = values_len(f->out);
        pb->out = (int64_t *)f->out;
        pb->n_in = values_len(f->in);
        pb->in = (int64_t *)f->in;
        pb->in_seq = f->in_seq;
        s->p[i] = pb;
    }
    return z->nflows;
}

/* The checkpoint's fields that are not items; part 0 also carries the
 * module's cell state. */
static void ckpt_head(const ts_zone_t *z, uint64_t tick, const char *owner, uint64_t generation, bool first,
                      Tessera__V1__Checkpoint *cp, Tessera__V1__CellId *cell, ts_zone_flows_pb_t *flows)
{
    tessera__v1__checkpoint__init(cp);
    ts_proto_cell_init(cell, &z->cell);
    cp->cell = cell;
    cp->epoch = z->epoch;
    cp->last_applied_seq = z->last_applied_seq;
    cp->tick = tick;
    cp->owner = (char *)owner;
    cp->time_us = ts_now_us();
    cp->generation = generation;
    if (first) {
        cp->game_rng = z->game.rng;
        cp->game_time = z->game.time;
        cp->game_spawned = z->game.spawned;
        cp->clock_ns = z->clock_ns;
        /* a cell still replaying is not where the marks of this tick say */
        cp->instance = (char *)(z->instance && !z->replaying ? z->instance : "");
        cp->game_state.len = z->game.state_len;
        cp->game_state.data = (uint8_t *)z->game.state;
        cp->n_game_counters = ts_zone_counters_len(z);
        cp->game_counters = (int64_t *)z->game.counters;
        cp->n_counter_flows = ts_zone_flows_to_pb(z, flows);
        cp->counter_flows = flows->p;
    }
}

/* Part [a, b) of the items as one Checkpoint message. */
static ts_status_t pack_ckpt_part(const ckpt_items_t *c, uint64_t tick, const char *owner,
                                  uint64_t generation, size_t a, size_t b, uint32_t part, uint32_t parts,
                                  uint8_t **buf, size_t *len)
{
    const ts_zone_t *z = c->z;
    size_t r0, r1, l0, l1, o0, o1, d0, d1, e0, e1, off = 0;
    run_range(a, b, off, c->nremoved, &r0, &r1);
    run_range(a, b, off += c->nremoved, c->nleft, &l0, &l1);
    run_range(a, b, off += c->nleft, c->nob, &o0, &o1);
    run_range(a, b, off += c->nob, c->ndep, &d0, &d1);
    run_range(a, b, off += c->ndep, c->nents, &e0, &e1);
    Tessera__V1__Checkpoint cp;
    Tessera__V1__CellId cell;
    ts_zone_flows_pb_t flows;
    ckpt_head(z, tick, owner, generation, part == 0, &cp, &cell, &flows);
    if (parts > 1) {
        cp.part = part;
        cp.parts = parts;
    }
    arena_t ar = {0};
    cp.n_removed = r1 - r0;
    cp.removed = cp.n_removed ? c->removed + r0 : NULL;
    cp.n_left = l1 - l0;
    cp.left = arena_alloc(&ar, cp.n_left * sizeof(*cp.left));
    for (size_t i = 0; cp.left && i < cp.n_left; i++)
        cp.left[i] = &z->left[l0 + i];
    /* the outbox items, one Outbox per run of one entry's items (what this
     * zone decided but has not had stored yet goes with it: its input is at
     * or below last_applied_seq and is not replayed, so whoever loads this
     * publishes them, transfers under the same message ids) */
    size_t nentries = 0;
    for (size_t j = o0; j < o1; j++)
        if (j == o0 || c->ob_entry[j] != c->ob_entry[j - 1]) nentries++;
    cp.outbox = arena_alloc(&ar, nentries * sizeof(*cp.outbox));
    for (size_t j = o0; cp.outbox && j < o1;) {
        const ts_zone_out_t *o = &z->out[c->ob_entry[j]];
        size_t k0 = c->ob_item[j], k1 = k0;
        while (j < o1 && &z->out[c->ob_entry[j]] == o) {
            k1 = c->ob_item[j] + 1;
            j++;
        }
        size_t t0, t1, i0, i1;
        run_range(k0, k1, 0, o->ntransfers, &t0, &t1);
        run_range(k0, k1, o->ntransfers, o->ninputs, &i0, &i1);
        Tessera__V1__Outbox *ob = arena_alloc(&ar, sizeof(*ob));
        if (!ob) break;
        tessera__v1__outbox__init(ob);
        ob->dest = cell_to_pb(&ar, &o->dest);
        ob->marker_seq = o->marker_seq;
        char *origin = arena_alloc(&ar, TS_ORIGIN_TOKEN_MAX);
        if (origin) {
            if (ts_subject_origin_format(origin, TS_ORIGIN_TOKEN_MAX, o->origin) < 0)
                ts_subject_origin_format(origin, TS_ORIGIN_TOKEN_MAX, TS_ORIGIN_WORKER);
            ob->origin = origin;
        }
        ob->n_transfers = t1 - t0;
        ob->transfers = entities_to_pb(&ar, ob->n_transfers ? o->transfers + t0 : NULL, ob->n_transfers);
        ob->n_inputs = i1 - i0;
        ob->inputs = inputs_to_pb(&ar, ob->n_inputs ? o->inputs + i0 : NULL, ob->n_inputs);
        cp.outbox[cp.n_outbox++] = ob;
    }
    cp.n_departed = d1 - d0;
    cp.departed = arena_alloc(&ar, cp.n_departed * sizeof(*cp.departed));
    Tessera__V1__Departed *dd = arena_alloc(&ar, cp.n_departed * sizeof(*dd));
    Tessera__V1__CellId *dto = arena_alloc(&ar, cp.n_departed * sizeof(*dto));
    for (size_t i = 0; cp.departed && dd && dto && i < cp.n_departed; i++) {
        departed_to_pb(c, d0 + i, &dd[i], &dto[i]);
        cp.departed[i] = &dd[i];
    }
    ts_status_t st =
        ar.failed ? TS_ERR_NOMEM
                  : pack_with_entities(&cp.base, 5, c->ents + e0, c->elens + e0, e1 - e0, true, buf, len);
    arena_free(&ar);
    return st;
}

/* The checkpoint as parts of at most msg_max bytes (cut) or as one message. */
static ts_status_t pack_checkpoint(const ts_zone_t *z, uint64_t tick, const char *owner, bool diff,
                                   uint64_t generation, bool cut, uint8_t ***bufs, size_t **lens,
                                   size_t *nparts)
{
    *bufs = NULL;
    *lens = NULL;
    *nparts = 0;
    ckpt_items_t c;
    ts_status_t st = ckpt_items_collect(z, diff, tick, &c);
    if (st != TS_OK) return st;
    Tessera__V1__Checkpoint cp;
    Tessera__V1__CellId cell;
    ts_zone_flows_pb_t flows;
    ckpt_head(z, tick, owner, generation, true, &cp, &cell, &flows);
    cp.time_us = UINT64_MAX; /* the head at its longest */
    cp.part = cp.parts = UINT32_MAX;
    size_t head = protobuf_c_message_get_packed_size(&cp.base) + CKPT_PART_SLACK;
    size_t budget = !cut ? SIZE_MAX : z->msg_max > head ? z->msg_max - head : 0;
    size_t n = c.nremoved + c.nleft + c.nob + c.ndep + c.nents, *starts = NULL;
    size_t parts =
        plan_parts(n, budget, cut ? TS_ZONE_CKPT_PART_ENTITIES : SIZE_MAX, ckpt_item_cost, &c, &starts);
    uint8_t **ob = parts ? calloc(parts, sizeof(*ob)) : NULL;
    size_t *ol = parts ? calloc(parts, sizeof(*ol)) : NULL;
    st = ob && ol ? TS_OK : TS_ERR_NOMEM;
    for (size_t p = 0; p < parts && st == TS_OK; p++)
        st = pack_ckpt_part(&c, tick, owner, generation, starts[p], starts[p + 1], (uint32_t)p,
                            (uint32_t)parts, &ob[p], &ol[p]);
    free(starts);
    ckpt_items_free(&c);
    if (st != TS_OK) {
        ts_zone_free_parts(ob, ol, parts);
        return st;
    }
    *bufs = ob;
    *lens = ol;
    *nparts = parts;
    return TS_OK;
}

ts_status_t ts_zone_pack_checkpoint(const ts_zone_t *z, uint64_t tick, const char *owner, bool diff,
                                    uint8_t **buf, size_t *len)
{
    uint8_t **bufs;
    size_t *lens, nparts;
    *buf = NULL;
    *len = 0;
    ts_status_t st = pack_checkpoint(z, tick, owner, diff, 0, false, &bufs, &lens, &nparts);
    if (st != TS_OK) return st;
    *buf = bufs[0];
    *len = lens[0];
    bufs[0] = NULL;
    ts_zone_free_parts(bufs, lens, nparts);
    return TS_OK;
}

void ts_zone_free_parts(uint8_t **bufs, size_t *lens, size_t nparts)
{
    if (bufs)
        for (size_t i = 0; i < nparts; i++)
            free(bufs[i]);
    free(bufs);
    free(lens);
}

ts_status_t ts_zone_pack_checkpoint_parts(const ts_zone_t *z, uint64_t tick, const char *owner, bool diff,
                                          uint64_t generation, uint8_t ***bufs, size_t **lens, size_t *nparts)
{
    return pack_checkpoint(z, tick, owner, diff, generation, true, bufs, lens, nparts);
}

/* A loaded Outbox's origin: a checkpoint or Diff written before it had one
 * ("") and anything unreadable go as the worker's. */
static ts_origin_t outbox_origin(const Tessera__V1__Outbox *ob)
{
    ts_origin_t origin;
    if (!ob->origin || !ob->origin[0] || ts_subject_origin_parse(ob->origin, &origin) != TS_OK)
        return TS_ORIGIN_WORKER;
    return origin;
}

/* The entry a loaded Outbox goes into: the one loaded last if it has the
 * same dest, marker_seq and origin (an entry a part boundary cut continues
 * in the next part, and two such entries side by side join without
 * changing the order of anything), otherwise a new one after it. A piece
 * never joins an entry further back, so entries to one cell keep their
 * order and each keeps its origin. */
static ts_zone_out_t *outbox_load(ts_zone_t *z, const ts_cell_t *dest, uint64_t marker_seq,
                                  ts_origin_t origin)
{
    ts_zone_out_t *last = z->nout ? &z->out[z->nout - 1] : NULL;
    if (last && !last->id_seq && last->marker_seq == marker_seq && last->origin == origin &&
        ts_cell_eq(&last->dest, dest))
        return last;
    if (!ts_grow((void **)&z->out, &z->cap_out, z->nout + 1, sizeof(*z->out))) return NULL;
    ts_zone_out_t *o = &z->out[z->nout++]; /* its buffers are the spare slot's */
    o->dest = *dest;
    o->marker_seq = marker_seq;
    o->origin = origin;
    o->id_seq = o->pub_seq = 0;
    o->sent = o->chunk = 0;
    o->ntransfers = o->ninputs = 0;
    return o;
}

ts_status_t ts_zone_load_checkpoint(ts_zone_t *z, const Tessera__V1__Checkpoint *cp, bool diff, uint64_t tick)
{
    ts_cell_t c;
    if (ts_proto_cell_get(cp->cell, &c) != TS_OK || !ts_cell_eq(&c, &z->cell)) return TS_ERR_INVALID;
    uint64_t id;
    void *v;
    bool first = cp->part == 0; /* later parts only add entities and departed records */
    if (!diff && first)
        for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
            entity_unindex(z, v);
            free(ts_map_del(&z->entities, id));
        }
    if (first) {
        for (size_t it = 0; ts_map_next(&z->departed, &it, &id, &v);)
            free(ts_map_del(&z->departed, id));
        /* the loaded outbox and announcements replace what was there (a
         * Diff's are the source's complete ones as of its last_applied_seq) */
        for (size_t i = 0; i < z->nout; i++) {
            z->out[i].ntransfers = z->out[i].ninputs = 0;
            z->out[i].id_seq = z->out[i].pub_seq = 0;
            z->out[i].sent = z->out[i].chunk = 0;
        }
        z->nout = 0;
        for (size_t i = 0; i < z->nleft; i++)
            free(z->left[i].to);
        z->nleft = 0;
        z->clock_ns = cp->clock_ns; /* 0 from an older writer: anchored at the first replayed input */
        /* the module's cell state (a checkpoint from before modules has
         * none: the zone keeps its seed) */
        if (cp->game_rng) {
            z->game.rng = cp->game_rng;
            z->game.time = cp->game_time;
            z->game.spawned = cp->game_spawned;
            z->game.state_len =
                cp->game_state.len < TS_GAME_CELL_STATE_MAX ? cp->game_state.len : TS_GAME_CELL_STATE_MAX;
            if (z->game.state_len) memcpy(z->game.state, cp->game_state.data, z->game.state_len);
            memset(z->game.counters, 0, sizeof(z->game.counters));
            for (size_t i = 0; i < cp->n_game_counters && i < TS_GAME_COUNTERS; i++)
                z->game.counters[i] = cp->game_counters[i];
            load_flows(z, cp);
        }
        z->counter_move_queued = false; /* a marker in the loaded outbox goes again */
    }
    for (size_t i = 0; i < cp->n_removed; i++) {
        ts_entity_t *old = ts_map_del(&z->entities, cp->removed[i]);
        if (old) entity_unindex(z, old);
        free(old);
    }
    for (size_t i = 0; i < cp->n_entities; i++) {
        if (cp->entities[i]->id == 0) continue;
        ts_entity_t *e = malloc(sizeof(*e));
        if (!e) return TS_ERR_NOMEM;
        entity_from_pb(cp->entities[i], e);
        touch(z, e);
        ts_entity_t *old = ts_map_del(&z->entities, e->id);
        if (old) entity_unindex(z, old);
        free(old);
        if (ts_map_put(&z->entities, e->id, e) != TS_OK) {
            free(e);
            return TS_ERR_NOMEM;
        }
        ts_ghost_t *h = ts_map_del(&z->ghosts, e->id);
        if (h) ghost_free(z, h);
        z->grid.stale = true;
    }
    for (size_t i = 0; i < cp->n_departed; i++) {
        const Tessera__V1__Departed *pd = cp->departed[i];
        departed_t *d = malloc(sizeof(*d));
        if (!d) return TS_ERR_NOMEM;
        if (pd->id == 0 || ts_proto_cell_get(pd->to, &d->to) != TS_OK) {
            free(d);
            continue;
        }
        d->hops = pd->hops;
        d->incarnation = pd->incarnation;
        d->until_tick = tick + pd->ttl_ticks;
        if (ts_map_put(&z->departed, pd->id, d) != TS_OK) free(d);
    }
    for (size_t i = 0; i < cp->n_outbox; i++) {
        const Tessera__V1__Outbox *ob = cp->outbox[i];
        ts_cell_t dest;
        if (ts_proto_cell_get(ob->dest, &dest) != TS_OK) continue;
        ts_zone_out_t *o = outbox_load(z, &dest, ob->marker_seq, outbox_origin(ob));
        if (!o) return TS_ERR_NOMEM;
        for (size_t k = 0; k < ob->n_transfers; k++) {
            if (!ts_grow((void **)&o->transfers, &o->cap_transfers, o->ntransfers + 1, sizeof(*o->transfers)))
                return TS_ERR_NOMEM;
            entity_from_pb(ob->transfers[k], &o->transfers[o->ntransfers++]);
        }
        for (size_t k = 0; k < ob->n_inputs; k++) {
            if (!ts_grow((void **)&o->inputs, &o->cap_inputs, o->ninputs + 1, sizeof(*o->inputs)))
                return TS_ERR_NOMEM;
            input_from_pb(ob->inputs[k], &o->inputs[o->ninputs++]);
        }
    }
    for (size_t i = 0; i < cp->n_left; i++) {
        ts_cell_t to;
        bool has_to = cp->left[i]->to && ts_proto_cell_get(cp->left[i]->to, &to) == TS_OK;
        note_left(z, cp->left[i]->id, has_to ? &to : NULL);
    }
    z->last_applied_seq = cp->last_applied_seq;
    return TS_OK;
}

void ts_zone_cancel_departures(ts_zone_t *z)
{
    for (size_t i = 0; i < z->ndeps; i++) {
        ts_entity_t *e = ts_map_get(&z->entities, z->deps[i].entity);
        if (e) e->departing = false;
    }
    z->ndeps = 0;
    z->deps_in_flight = 0;
    z->deps_pub = 0;
}

/* ---- space: grid, nearby, ghosts ----------------------------------------- */

ts_status_t ts_zone_set_space(ts_zone_t *z, double interact_radius, double ghost_margin)
{
    if (!(interact_radius > 0) || !isfinite(interact_radius)) interact_radius = TS_ZONE_INTERACT_RADIUS;
    if (!(ghost_margin >= interact_radius) || !isfinite(ghost_margin)) ghost_margin = interact_radius;
    if (z->grid.start && z->interact_radius == interact_radius && z->ghost_margin == ghost_margin)
        return TS_OK;
    double x0, y0, x1, y1, m = ghost_margin;
    ts_cell_bounds(&z->cell, z->cell_size, &x0, &y0, &x1, &y1);
    double ex = x1 - x0 + 2 * m, ey = y1 - y0 + 2 * m;
    double size = fmax(interact_radius, fmax(ex, ey) / GRID_MAX_SIDE);
    ts_grid_t g = {.x0 = x0 - m, .y0 = y0 - m, .size = size, .inv = 1 / size, .stale = true};
    g.nx = (int32_t)fmin(ceil(ex / size), GRID_MAX_SIDE);
    g.ny = (int32_t)fmin(ceil(ey / size), GRID_MAX_SIDE);
    if (g.nx < 1) g.nx = 1;
    if (g.ny < 1) g.ny = 1;
    g.start = calloc((size_t)g.nx * (size_t)g.ny + 1, sizeof(*g.start));
    if (!g.start) return TS_ERR_NOMEM;
    grid_free(&z->grid);
    z->grid = g;
    z->interact_radius = interact_radius;
    z->ghost_margin = m;
    z->band_x0 = x0 + m;
    z->band_y0 = y0 + m;
    z->band_x1 = x1 - m;
    z->band_y1 = y1 - m;
    z->ghost_x0 = x0 - m;
    z->ghost_y0 = y0 - m;
    z->ghost_x1 = x1 + m;
    z->ghost_y1 = y1 + m;
    return TS_OK;
}

size_t ts_zone_query_radius(ts_zone_t *z, double x, double y, double r, ts_zone_visit_fn fn, void *ud)
{
    ts_grid_t *g = &z->grid;
    if (g->stale) grid_build(z);
    if (!g->start || g->stale || !(r >= 0) || !isfinite(x) || !isfinite(y)) return 0;
    int32_t bx0 = grid_coord(x - r, g->x0, g->inv, g->nx), bx1 = grid_coord(x + r, g->x0, g->inv, g->nx);
    int32_t by0 = grid_coord(y - r, g->y0, g->inv, g->ny), by1 = grid_coord(y + r, g->y0, g->inv, g->ny);
    double r2 = r * r;
    size_t n = 0;
    for (int32_t by = by0; by <= by1; by++) {
        /* the buckets bx0..bx1 of a row are one span of the array */
        size_t row = (size_t)by * (size_t)g->nx;
        for (uint32_t i = g->start[row + (size_t)bx0]; i < g->start[row + (size_t)bx1 + 1]; i++) {
            const ts_grid_slot_t *sl = &g->slots[i];
            double dx = sl->x - x, dy = sl->y - y;
            if (dx * dx + dy * dy > r2) continue;
            n++;
            if (!fn) continue;
            if (sl->ref & REF_GHOST)
                fn(ud, NULL, (const ts_ghost_t *)(sl->ref & ~REF_GHOST));
            else
                fn(ud, (const ts_entity_t *)sl->ref, NULL);
        }
    }
    return n;
}

/* Adds the pairs within r2 between slots [i0, i1) and [j0, j1) to both
 * sides' counts (ghost-ghost pairs count for nobody and are skipped). */
static inline void count_pairs(const ts_grid_slot_t *sl, uint32_t *cnt, uint32_t i0, uint32_t i1, uint32_t j0,
                               uint32_t j1, double r2)
{
    for (uint32_t i = i0; i < i1; i++) {
        const double px = sl[i].x, py = sl[i].y;
        const bool ghost = sl[i].ref & REF_GHOST;
        uint32_t n = 0;
        for (uint32_t j = j0 > i ? j0 : i + 1; j < j1; j++) {
            double dx = sl[j].x - px, dy = sl[j].y - py;
            if (dx * dx + dy * dy > r2 || (ghost && (sl[j].ref & REF_GHOST))) continue;
            n++;
            cnt[j]++;
        }
        cnt[i] += n;
    }
}

void ts_zone_update_nearby(ts_zone_t *z)
{
    ts_grid_t *g = &z->grid;
    if (g->stale) grid_build(z);
    if (!g->start || g->stale) return;
    const double r2 = z->interact_radius * z->interact_radius;
    const int32_t k = (int32_t)ceil(z->interact_radius / g->size);
    const ts_grid_slot_t *sl = g->slots;
    uint32_t *cnt = g->counts;
    if (g->n) memset(cnt, 0, g->n * sizeof(*cnt));
    /* every pair once: a bucket with itself, the rest of its row up to k
     * buckets east, and the k rows north of it (k buckets either side),
     * each of those one contiguous span of the sorted slots */
    for (int32_t by = 0; by < g->ny; by++) {
        for (int32_t bx = 0; bx < g->nx; bx++) {
            size_t b = (size_t)by * (size_t)g->nx + (size_t)bx;
            uint32_t i0 = g->start[b], i1 = g->start[b + 1];
            if (i0 == i1) continue;
            int32_t xe = bx + k >= g->nx ? g->nx - 1 : bx + k;
            /* the bucket itself and the rest of its row: slots after i0 up to xe's end */
            count_pairs(sl, cnt, i0, i1, i0, g->start[(size_t)by * (size_t)g->nx + (size_t)xe + 1], r2);
            int32_t x0 = bx - k < 0 ? 0 : bx - k;
            for (int32_t yy = by + 1; yy <= by + k && yy < g->ny; yy++) {
                size_t row = (size_t)yy * (size_t)g->nx;
                count_pairs(sl, cnt, i0, i1, g->start[row + (size_t)x0], g->start[row + (size_t)xe + 1], r2);
            }
        }
    }
    for (size_t i = 0; i < g->n; i++) {
        if (sl[i].ref & REF_GHOST) continue;
        ts_entity_t *e = (ts_entity_t *)sl[i].ref;
        if (e->nearby != cnt[i]) {
            e->nearby = cnt[i];
            touch(z, e);
        }
    }
}

size_t ts_zone_ghosts(const ts_zone_t *z)
{
    return z->ghosts.len;
}

void ts_zone_ghost_put(ts_zone_t *z, const ts_cell_t *src, uint64_t epoch, uint64_t stamp, uint64_t id,
                       double x, double y, double vx, double vy)
{
    if (id == 0 || ts_map_get(&z->entities, id)) return; /* ours: the copy is late */
    ts_ghost_t *h = ts_map_get(&z->ghosts, id);
    if (!(x >= z->ghost_x0 && x < z->ghost_x1 && y >= z->ghost_y0 && y < z->ghost_y1)) {
        /* too far from this cell to matter here */
        if (h && ts_cell_eq(&h->src, src)) ghost_free(z, ts_map_del(&z->ghosts, id));
        return;
    }
    if (!h) {
        h = calloc(1, sizeof(*h));
        if (!h) return;
        h->id = id;
        if (ts_map_put(&z->ghosts, id, h) != TS_OK) {
            free(h);
            return;
        }
    }
    h->x = x;
    h->y = y;
    h->vx = vx;
    h->vy = vy;
    h->src = *src;
    h->epoch = epoch;
    if (stamp) h->stamp = stamp;
    z->grid.stale = true;
}

void ts_zone_ghost_remove(ts_zone_t *z, const ts_cell_t *src, uint64_t id)
{
    ts_ghost_t *h = ts_map_get(&z->ghosts, id);
    if (h && ts_cell_eq(&h->src, src)) ghost_free(z, ts_map_del(&z->ghosts, id));
}

uint64_t ts_zone_ghost_keyframe(ts_zone_t *z)
{
    return ++z->ghost_stamp;
}

void ts_zone_ghost_sweep(ts_zone_t *z, const ts_cell_t *src, uint64_t stamp)
{
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->ghosts, &it, &id, &v);) {
        ts_ghost_t *h = v;
        if (h->stamp != stamp && ts_cell_eq(&h->src, src)) ghost_free(z, ts_map_del(&z->ghosts, id));
    }
}

size_t ts_zone_ghost_drop(ts_zone_t *z, const ts_cell_t *src, uint64_t min_epoch)
{
    size_t n = 0;
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&z->ghosts, &it, &id, &v);) {
        ts_ghost_t *h = v;
        if ((src && !ts_cell_eq(&h->src, src)) || h->epoch >= min_epoch) continue;
        ghost_free(z, ts_map_del(&z->ghosts, id));
        n++;
    }
    return n;
}

/* An entity as a ghost carries its id, motion, flags and module state. */
static size_t ghost_wire_len(const ts_entity_t *e)
{
    return ts_pbw_u64_len(1, e->id) + ts_pbw_double_len(2, e->x) + ts_pbw_double_len(3, e->y) +
           ts_pbw_double_len(4, e->vx) + ts_pbw_double_len(5, e->vy) + ts_pbw_bytes_len(18, e->state_len) +
           ts_pbw_u64_len(19, e->flags);
}

static uint8_t *ghost_wire_write(uint8_t *p, const ts_entity_t *e)
{
    p = ts_pbw_u64(p, 1, e->id);
    p = ts_pbw_double(p, 2, e->x);
    p = ts_pbw_double(p, 3, e->y);
    p = ts_pbw_double(p, 4, e->vx);
    p = ts_pbw_double(p, 5, e->vy);
    p = ts_pbw_bytes(p, 18, e->state, e->state_len);
    return ts_pbw_u64(p, 19, e->flags);
}

void ts_zone_ghost_set_game(ts_zone_t *z, const ts_cell_t *src, uint64_t id, uint32_t flags,
                            const void *state, size_t len)
{
    ts_ghost_t *h = ts_map_get(&z->ghosts, id);
    if (!h || !ts_cell_eq(&h->src, src)) return;
    h->flags = flags & (TS_GAME_PLAYER | TS_GAME_NPC);
    h->state_len = (uint32_t)(len < TS_GAME_STATE_MAX ? len : TS_GAME_STATE_MAX);
    if (h->state_len) memcpy(h->state, state, h->state_len);
}

ts_status_t ts_zone_pack_ghost(ts_zone_t *z, uint64_t tick, bool full, uint32_t keyframe_ticks,
                               const char *owner, uint8_t ***bufs, size_t **lens, size_t *nparts)
{
    *bufs = NULL;
    *lens = NULL;
    *nparts = 0;
    if (full) { /* every entity of the band, whatever the step found */
        z->nghost_changed = 0;
        uint64_t id;
        void *v;
        for (size_t it = 0; ts_map_next(&z->entities, &it, &id, &v);) {
            ts_entity_t *e = v;
            if (!e->ghosted) continue;
            if (!ts_grow((void **)&z->ghost_changed, &z->cap_ghost_changed, z->nghost_changed + 1,
                         sizeof(*z->ghost_changed)))
                return TS_ERR_NOMEM;
            z->ghost_changed[z->nghost_changed++] = e;
        }
    }
    size_t n = z->nghost_changed;
    if (!full && n == 0 && z->nghost_removed == 0) return TS_OK;
    /* an empty band is said once; while it stays empty the cell is silent
     * (a receiver holding anything of it drops it when it hears nothing) */
    bool quiet = full && n == 0 && z->nghost_removed == 0;
    if (quiet && z->ghost_quiet) return TS_OK;
    z->ghost_quiet = quiet;
    const size_t per = TS_ZONE_GHOST_PART_ENTITIES;
    size_t parts = n ? (n + per - 1) / per : 1;
    uint8_t **ob = calloc(parts, sizeof(*ob));
    size_t *ol = calloc(parts, sizeof(*ol));
    ts_status_t st = ob && ol ? TS_OK : TS_ERR_NOMEM;
    Tessera__V1__CellId cell;
    ts_proto_cell_init(&cell, &z->cell);
    for (size_t part = 0; part < parts && st == TS_OK; part++) {
        Tessera__V1__GhostDelta d = TESSERA__V1__GHOST_DELTA__INIT;
        d.cell = &cell;
        d.epoch = z->epoch;
        d.tick = tick;
        d.full = full;
        d.keyframe_ticks = keyframe_ticks;
        d.owner = (char *)owner;
        if (part == 0 && !full) { /* a keyframe says it all */
            d.n_removed = z->nghost_removed;
            d.removed = z->ghost_removed;
        }
        if (parts > 1) {
            d.part = (uint32_t)part;
            d.parts = (uint32_t)parts;
        }
        size_t e0 = part * per, e1 = e0 + per < n ? e0 + per : n;
        size_t head = protobuf_c_message_get_packed_size(&d.base), total = head;
        for (size_t i = e0; i < e1; i++)
            total += ts_pbw_sub_len(5, ghost_wire_len(z->ghost_changed[i]));
        uint8_t *buf = malloc(total ? total : 1);
        if (!buf) {
            st = TS_ERR_NOMEM;
            break;
        }
        uint8_t *p = buf + protobuf_c_message_pack(&d.base, buf);
        for (size_t i = e0; i < e1; i++) {
            const ts_entity_t *e = z->ghost_changed[i];
            p = ts_pbw_sub_head(p, 5, ghost_wire_len(e));
            p = ghost_wire_write(p, e);
        }
        ob[part] = buf;
        ol[part] = total;
        if ((size_t)(p - buf) != total) st = TS_ERR_MALFORMED;
    }
    z->nghost_changed = 0;
    z->nghost_removed = 0;
    if (st != TS_OK) {
        ts_zone_free_parts(ob, ol, parts);
        return st;
    }
    *bufs = ob;
    *lens = ol;
    *nparts = parts;
    return TS_OK;
}
