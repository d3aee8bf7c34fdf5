/* What the gateway knows of the world, and what each client sees of it.
 *
 * Per subscribed cell: the latest state of every entity in it, and the ids
 * changed or removed since the last flush. StateDelta messages are fenced:
 * one whose epoch is below the highest seen for its cell (or the
 * registry's) is dropped, so a deposed owner cannot overwrite the new one.
 * A keyframe (full) may come in parts; entities it does not list are
 * forgotten only once all its parts arrived (gw_kf_t).
 *
 * An entity seen in two cells at once (while it crosses) is shown from the
 * cell with the newer copy (more inputs applied): gw->homes names that cell,
 * and only it puts the entity in its blocks.
 *
 * Players follow their entity: seen in another cell's state, or named in a
 * `left` entry of their cell with a destination, a player is re-bound to the
 * new cell (gw_session_move_cell). Because separate subscriptions deliver in
 * no particular order relative to each other, a player re-bound on sight
 * ignores its old cell (awaiting_left) until that cell's `left` for it
 * arrives, so an older state of the old cell cannot pull it back.
 *
 * Fan-out: state is forwarded as it arrives, coalesced per loop turn (at
 * most one flush per GW_FLUSH_MIN_US). A flush encodes each dirty cell's
 * changed entities once (cell->blk) and visits only the clients that
 * reference a dirty cell (cell->subs) or asked for a flush; each gets its
 * frame(s) spliced from shared blocks plus its own head and removed list,
 * written with one system call. Nothing here allocates per client per flush
 * once the scratch buffers have grown.
 *
 * Radius filter (see aoi.c for the thresholds): each client remembers which
 * entities it was shown (c->shown). A block records where each entity sits
 * and where it is, so a client takes the entities in its view as byte
 * ranges of the shared block, adjacent ones joined into one piece (a cell
 * wholly inside the circle costs a few pieces, not one per entity); nothing
 * is encoded per client. Per flush, a client looks at the changed entities
 * of its cells (plus, after its centre moved, every entity of its cells
 * once, and sends the newly shown ones); an entity shown that leaves the
 * keep circle, or its cells, is reported in `removed`. Its own entity is
 * always shown.
 *
 * Game events (StateDelta.events, part 0 of a tick) wait in their cell
 * until the next flush, each Event encoded once (cell->ev_buf). A targeted
 * one is queued on the client whose own entity it names (gw->players, no
 * scan); a positional one goes to each client of the cell whose show circle
 * (aoi_show around its centre: at least aoi.radius around its entity)
 * holds the point. A client's Event frames follow its Delta of the same
 * flush in the same write, in the cell's order; a client too far behind
 * gets none (events are best effort).
 *
 * First Snapshot: it waits (at most GW_SNAPSHOT_WAIT_US) until the own
 * entity was seen and each live cell of the area of interest delivered a
 * whole keyframe since it was subscribed, so it holds the own entity and
 * everything in the area of interest. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "gateway.h"
#include "metrics.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define LISTED_DONE UINT64_MAX
#define REMOVED_TAG ((void *)(uintptr_t)1)
#define SHOWN ((void *)(uintptr_t)1)

static bool push_id(uint64_t **v, size_t *n, size_t *cap, uint64_t id)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        uint64_t *nv = realloc(*v, c * sizeof *nv);
        if (nv == NULL) return false;
        *v = nv;
        *cap = c;
    }
    (*v)[(*n)++] = id;
    return true;
}

static void mark_dirty(gw_t *gw, gw_cell_t *cell)
{
    cell->ver++;
    gw->ents_ver++;
    if (!cell->dirty) {
        cell->dirty = true;
        cell->next_dirty = gw->dirty_head;
        gw->dirty_head = cell;
        gw_flush_soon(gw);
    }
}

static void mark_changed(gw_t *gw, gw_cell_t *cell, gw_entity_t *e)
{
    if (e->listed != gw->tick + 1) {
        e->listed = gw->tick + 1;
        (void)push_id(&cell->changed, &cell->nchanged, &cell->changed_cap, e->pb.id);
    }
    mark_dirty(gw, cell);
}

static void mark_removed(gw_t *gw, gw_cell_t *cell, uint64_t id)
{
    if (ts_map_get(&gw->homes, id) == cell) ts_map_del(&gw->homes, id);
    (void)push_id(&cell->removed, &cell->nremoved, &cell->removed_cap, id);
    mark_dirty(gw, cell);
}

/* Whether the cell's copy of s is the newest the gateway holds (and makes
 * the cell its home if so). */
static bool take_home(gw_t *gw, gw_cell_t *cell, const Tessera__V1__EntityState *s)
{
    gw_cell_t *h = ts_map_get(&gw->homes, s->id);
    if (h == cell) return true;
    if (h != NULL) {
        gw_entity_t *o = ts_map_get(&h->entities, s->id);
        if (o != NULL && o->pb.inputs_applied > s->inputs_applied) return false;
    }
    return ts_map_put(&gw->homes, s->id, cell) == TS_OK;
}

static bool same_state(const gw_entity_t *e, const Tessera__V1__EntityState *s)
{
    const Tessera__V1__EntityState *p = &e->pb;
    size_t slen = s->state.len < TS_GAME_STATE_MAX ? s->state.len : TS_GAME_STATE_MAX;
    if (p->flags != s->flags || p->state.len != slen ||
        (slen > 0 && memcmp(e->state, s->state.data, slen) != 0))
        return false;
    return p->x == s->x && p->y == s->y && p->vx == s->vx && p->vy == s->vy &&
           p->last_input_seq == s->last_input_seq && p->inputs_applied == s->inputs_applied &&
           p->applied_window == s->applied_window && p->hops == s->hops && p->incarnation == s->incarnation &&
           strncmp(e->name, s->name ? s->name : "", GW_NAME_MAX) == 0;
}

/* Stores s in the cell; returns the record if it is new or differs from
 * what was known, NULL otherwise. */
static gw_entity_t *upsert(gw_cell_t *cell, const Tessera__V1__EntityState *s, bool *oom)
{
    gw_entity_t *e = ts_map_get(&cell->entities, s->id);
    if (e != NULL && same_state(e, s)) {
        e->gen = cell->gen;
        return NULL;
    }
    if (e == NULL) {
        e = calloc(1, sizeof *e);
        if (e == NULL || ts_map_put(&cell->entities, s->id, e) != TS_OK) {
            free(e);
            *oom = true;
            return NULL;
        }
    }
    uint64_t listed = e->listed;
    e->pb = *s;
    e->pb.base.unknown_fields = NULL;
    e->pb.base.n_unknown_fields = 0;
    /* s is freed after this delta: keep nothing that points into it. Clients
     * get the newest 64 bits of the applied window, not the extension. */
    e->pb.n_applied_window_ext = 0;
    e->pb.applied_window_ext = NULL;
    ts_strlcpy(e->name, s->name ? s->name : "", sizeof e->name);
    e->pb.name = e->name;
    /* the module's state bytes (the worker keeps them within the bound) */
    e->pb.state.len = s->state.len < TS_GAME_STATE_MAX ? s->state.len : TS_GAME_STATE_MAX;
    if (e->pb.state.len > 0) memcpy(e->state, s->state.data, e->pb.state.len);
    e->pb.state.data = e->state;
    e->gen = cell->gen;
    e->listed = listed;
    return e;
}

static void remove_entity(gw_t *gw, gw_cell_t *cell, uint64_t id)
{
    gw_entity_t *e = ts_map_del(&cell->entities, id);
    if (e == NULL) return;
    free(e);
    mark_removed(gw, cell, id);
}

static void follow_sighting(gw_t *gw, gw_cell_t *cell, const Tessera__V1__EntityState *s)
{
    gw_conn_t *c = ts_map_get(&gw->players, s->id);
    if (c == NULL) return;
    if (ts_map_get(&gw->homes, s->id) == cell) gw_aoi_moved(gw, c, s->x, s->y);
    if (c->cell == cell || c->awaiting_left == cell) return;
    gw_cell_t *old = c->cell;
    gw_session_move_cell(c, cell);
    c->awaiting_left = old;
}

static void follow_left(gw_t *gw, gw_cell_t *cell, const Tessera__V1__EntityLeft *l)
{
    gw_conn_t *c = ts_map_get(&gw->players, l->id);
    if (c == NULL) return;
    if (l->to == NULL) c->own_gone = true; /* despawned: no cell will list it again */
    if (c->awaiting_left == cell) {
        c->awaiting_left = NULL;
        return;
    }
    if (c->cell != cell || l->to == NULL) return;
    ts_cell_t to;
    if (ts_proto_cell_get(l->to, &to) != TS_OK || to.world != gw->world.id) {
        ts_warn("%s: entity %llu left to an invalid cell", cell->key, (unsigned long long)l->id);
        return;
    }
    gw_cell_t *dest = gw_cell_get(gw, &to);
    if (dest == NULL) return;
    gw_session_move_cell(c, dest);
    if (c->awaiting_left == dest) c->awaiting_left = NULL;
}

/* Puts the cell on this flush's list without changing its entities (its
 * blocks stay valid). */
static void mark_events(gw_t *gw, gw_cell_t *cell)
{
    if (!cell->dirty) {
        cell->dirty = true;
        cell->next_dirty = gw->dirty_head;
        gw->dirty_head = cell;
        gw_flush_soon(gw);
    }
}

/* Encodes the delta's game events into the cell's event list. */
static void take_events(gw_t *gw, gw_cell_t *cell, const Tessera__V1__StateDelta *d)
{
    size_t added = 0;
    for (size_t i = 0; i < d->n_events; i++) {
        const Tessera__V1__GameEvent *g = d->events[i];
        if (g == NULL) continue;
        gw->events_in++;
        if (g->payload.len > TS_GAME_PAYLOAD_MAX || (!g->positional && g->entity == 0) ||
            cell->nevs >= GW_CELL_EVENTS_MAX) {
            gw->events_dropped++;
            continue;
        }
        Tessera__V1__Event ev = TESSERA__V1__EVENT__INIT;
        ev.type = g->type;
        ev.payload = g->payload;
        ev.entity = g->entity;
        ev.positional = g->positional;
        ev.x = g->x;
        ev.y = g->y;
        ev.tick = d->tick;
        size_t n = tessera__v1__event__get_packed_size(&ev);
        if (!ts_grow((void **)&cell->ev_buf, &cell->ev_cap, cell->ev_len + n, 1) ||
            !ts_grow((void **)&cell->evs, &cell->evs_cap, cell->nevs + 1, sizeof *cell->evs)) {
            gw->events_dropped++;
            continue;
        }
        tessera__v1__event__pack(&ev, cell->ev_buf + cell->ev_len);
        cell->evs[cell->nevs++] = (gw_event_t){.entity = g->entity,
                                               .x = g->x,
                                               .y = g->y,
                                               .positional = g->positional,
                                               .off = (uint32_t)cell->ev_len,
                                               .len = (uint32_t)n};
        cell->ev_len += n;
        if (g->positional) cell->npos++;
        added++;
    }
    if (added > 0) mark_events(gw, cell);
}

void gw_view_on_state(gw_t *gw, gw_cell_t *cell, const uint8_t *data, size_t len)
{
    static uint64_t warned_us;
    if (cell->aoi_refs == 0) return;
    Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, len, data);
    if (d == NULL) {
        gw->states_bad++;
        uint64_t now = ts_mono_us();
        if (warned_us == 0 || now - warned_us > 5000000) {
            warned_us = now;
            ts_warn("%s: undecodable StateDelta (%zu bytes) dropped", cell->state_subject, len);
        }
        return;
    }
    if (d->epoch < gw_cell_epoch(cell)) {
        cell->stale_dropped++;
        ts_debug("%s: dropped state of epoch %llu from %s, newest is %llu (%llu dropped)", cell->key,
                 (unsigned long long)d->epoch, d->owner, (unsigned long long)gw_cell_epoch(cell),
                 (unsigned long long)cell->stale_dropped);
        goto done;
    }
    cell->seen_epoch = d->epoch;
    int kf = 0;
    if (d->full) {
        kf = gw_kf_note(&cell->kf, d->epoch, d->tick, d->part, d->parts);
        if (kf & GW_KF_BEGIN) cell->gen++;
    }
    bool oom = false;
    for (size_t i = 0; i < d->n_entities; i++) {
        const Tessera__V1__EntityState *s = d->entities[i];
        if (s == NULL || s->id == 0 || s->id == UINT64_MAX) continue;
        gw_entity_t *e = upsert(cell, s, &oom);
        if (e != NULL && take_home(gw, cell, s)) mark_changed(gw, cell, e);
        follow_sighting(gw, cell, s);
    }
    if ((kf & GW_KF_DONE) && !cell->kf_seen) {
        cell->kf_seen = true; /* a first Snapshot may wait for it */
        mark_dirty(gw, cell);
    }
    if ((kf & GW_KF_DONE) && !oom) {
        uint64_t eid;
        void *v;
        for (size_t it = 0; ts_map_next(&cell->entities, &it, &eid, &v);) {
            if (((gw_entity_t *)v)->gen != cell->gen) remove_entity(gw, cell, eid);
        }
    }
    for (size_t i = 0; i < d->n_left; i++) {
        const Tessera__V1__EntityLeft *l = d->left[i];
        if (l == NULL) continue;
        remove_entity(gw, cell, l->id);
        follow_left(gw, cell, l);
    }
    if (d->n_events > 0) take_events(gw, cell, d);
    if (oom) ts_warn("%s: out of memory caching entities", cell->key);
    gw->states_applied++;
    if (cell->nsubs > 0) gw_state_note(gw, cell);
done:
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

void gw_view_want_flush(gw_t *gw, gw_conn_t *c)
{
    if (!c->flush_queued) {
        c->flush_queued = true;
        c->next_flush = gw->flush_head;
        gw->flush_head = c;
        gw->nflush++;
    }
    gw_flush_soon(gw);
}

static void snap_unlist(gw_t *gw, gw_conn_t *c)
{
    if (!c->snap_listed) return;
    if (c->snap_prev != NULL)
        c->snap_prev->snap_next = c->snap_next;
    else
        gw->snap_head = c->snap_next;
    if (c->snap_next != NULL) c->snap_next->snap_prev = c->snap_prev;
    c->snap_prev = c->snap_next = NULL;
    c->snap_listed = false;
}

void gw_view_send_snapshot(gw_t *gw, gw_conn_t *c)
{
    c->need_snapshot = true;
    c->snapshot_due_us = ts_mono_us() + GW_SNAPSHOT_WAIT_US;
    for (size_t i = 0; i < c->naoi; i++)
        c->aoi[i].fresh = true;
    if (!c->snap_listed) {
        c->snap_prev = NULL;
        c->snap_next = gw->snap_head;
        if (gw->snap_head != NULL) gw->snap_head->snap_prev = c;
        gw->snap_head = c;
        c->snap_listed = true;
    }
    gw_view_want_flush(gw, c);
}

void gw_view_snapshot_deadlines(gw_t *gw)
{
    uint64_t now = ts_mono_us();
    for (gw_conn_t *c = gw->snap_head; c != NULL; c = c->snap_next) {
        if (now >= c->snapshot_due_us) gw_view_want_flush(gw, c);
    }
}

void gw_view_release(gw_t *gw, gw_conn_t *c)
{
    snap_unlist(gw, c);
    c->need_snapshot = false;
    c->pos_known = false;
    ts_map_free(&c->shown);
    ts_map_init(&c->shown);
}

void gw_view_caught_up(gw_t *gw, gw_conn_t *c)
{
    if (c->behind && c->phase == GW_PHASE_JOINED && !c->closing) gw_view_want_flush(gw, c);
}

void gw_view_forget_cell(gw_t *gw, gw_cell_t *cell)
{
    gw_cell_clear_entities(gw, cell);
}

/* Every entity the cell is home of, encoded; rebuilt only when the cell
 * changed since. NULL when out of memory. */
static const gw_blk_t *full_block(gw_t *gw, gw_cell_t *cell)
{
    if (cell->full_ver == cell->ver + 1) return &cell->full;
    gw_blk_reset(&cell->full);
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&cell->entities, &it, &id, &v);) {
        gw_cell_t *h = ts_map_get(&gw->homes, id);
        if (h != NULL && h != cell) continue;
        if (gw_blk_add(&cell->full, &((gw_entity_t *)v)->pb) != TS_OK) return NULL;
    }
    if (gw_blk_seal(&cell->full) != TS_OK) return NULL;
    cell->full_ver = cell->ver + 1;
    return &cell->full;
}

static void encode_changes(gw_t *gw, gw_cell_t *cell)
{
    gw_blk_reset(&cell->blk);
    for (size_t i = 0; i < cell->nchanged; i++) {
        uint64_t id = cell->changed[i];
        gw_entity_t *e = ts_map_get(&cell->entities, id);
        if (e == NULL || e->listed == LISTED_DONE) continue;
        e->listed = LISTED_DONE;
        if (ts_map_get(&gw->homes, id) != cell) continue;
        if (gw_blk_add(&cell->blk, &e->pb) != TS_OK) break;
    }
    if (gw_blk_seal(&cell->blk) != TS_OK) gw_blk_reset(&cell->blk);
}

static bool held_in_aoi(const gw_conn_t *c, uint64_t id)
{
    for (size_t i = 0; i < c->naoi; i++) {
        if (ts_map_get(&c->aoi[i].cell->entities, id) != NULL) return true;
    }
    return false;
}

static bool aoi_has(const gw_conn_t *c, const gw_cell_t *cell)
{
    for (size_t i = 0; i < c->naoi; i++) {
        if (c->aoi[i].cell == cell) return true;
    }
    return false;
}

/* Puts id on this flush's removed list of the client (once). */
static void push_removed(gw_t *gw, size_t *n, uint64_t id)
{
    if (ts_map_get(&gw->scratch, id) != NULL) return;
    if (!ts_grow((void **)&gw->tmp_removed, &gw->tmp_removed_cap, *n + 1, sizeof *gw->tmp_removed) ||
        ts_map_put(&gw->scratch, id, REMOVED_TAG) != TS_OK)
        return;
    gw->tmp_removed[(*n)++] = id;
}

/* An entity a cell no longer holds: removed for the client if it was shown
 * and no other cell of its area of interest holds it. The client's own
 * entity only when it was despawned: one that crossed into a cell that does
 * not list it yet (its Transfer not consumed there, that cell's owner still
 * reconnecting) keeps its last state until it shows up there. */
static void drop_if_gone(gw_t *gw, gw_conn_t *c, size_t *n, uint64_t id)
{
    if (id == c->entity && !c->own_gone) return;
    if (ts_map_get(&c->shown, id) == NULL || held_in_aoi(c, id)) return;
    ts_map_del(&c->shown, id);
    push_removed(gw, n, id);
}

/* Whether the client sees entity id at (x, y): its own entity always;
 * another within aoi_show of the centre, or aoi_keep if it is shown
 * already. */
static bool in_view(const gw_t *gw, const gw_conn_t *c, uint64_t id, double x, double y, bool shown)
{
    if (id == c->entity) return true;
    double dx = x - c->aoi_x, dy = y - c->aoi_y;
    double lim = shown ? gw->aoi_keep : gw->aoi_show;
    return dx * dx + dy * dy <= lim * lim;
}

/* Appends a block entry to the client's pieces, joined to the previous
 * piece when it follows it in the same block. */
static bool add_piece(gw_t *gw, size_t *nseg, const gw_blk_t *b, const gw_blk_ent_t *e)
{
    char *p = (char *)b->data + e->off;
    if (*nseg > 0) {
        uv_buf_t *last = &gw->segs[*nseg - 1];
        if (last->base + last->len == p && last->len + e->len <= GW_BLK_CUT_BYTES) {
            last->len += e->len;
            return true;
        }
    }
    if (!ts_grow((void **)&gw->segs, &gw->segs_cap, *nseg + 1, sizeof *gw->segs)) return false;
    gw->segs[(*nseg)++] = uv_buf_init(p, e->len);
    return true;
}

typedef enum {
    PASS_ALL,   /* send every entry in view (new cell, Snapshot, full view) */
    PASS_SWEEP, /* send only entries newly in view (the centre moved) */
} pass_t;

/* Filters one block for the client: entries in view become pieces (per
 * mode), shown entries out of view go to removed. False when out of memory. */
static bool filter_block(gw_t *gw, gw_conn_t *c, const gw_blk_t *b, pass_t mode, size_t *nseg,
                         size_t *nremoved)
{
    if (b == NULL) return true;
    for (size_t k = 0; k < b->count; k++) {
        const gw_blk_ent_t *e = &b->ents[k];
        bool shown = ts_map_get(&c->shown, e->id) != NULL;
        if (in_view(gw, c, e->id, e->x, e->y, shown)) {
            if (!shown && ts_map_put(&c->shown, e->id, SHOWN) != TS_OK) return false;
            if ((mode == PASS_ALL || !shown) && !add_piece(gw, nseg, b, e)) return false;
        } else if (shown) {
            ts_map_del(&c->shown, e->id);
            push_removed(gw, nremoved, e->id);
        }
    }
    return true;
}

/* Whether sweeping the cell (PASS_SWEEP) would do anything for the client:
 * an entity the cell is home of enters its view or a shown one leaves it.
 * Decided on the cell's records, so after a small move of the centre the
 * cell's whole block is not encoded again for nothing; true when that block
 * is current anyway (filtering it is cheaper). */
static bool sweep_changes(gw_t *gw, const gw_conn_t *c, gw_cell_t *cell)
{
    if (cell->full_ver == cell->ver + 1) return true;
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&cell->entities, &it, &id, &v);) {
        gw_cell_t *h = ts_map_get(&gw->homes, id);
        if (h != NULL && h != cell) continue;
        const gw_entity_t *e = v;
        bool shown = ts_map_get(&c->shown, id) != NULL;
        if (in_view(gw, c, id, e->pb.x, e->pb.y, shown) != shown) return true;
    }
    return false;
}

static void finish_client(gw_t *gw, gw_conn_t *c, size_t nremoved)
{
    for (size_t i = 0; i < nremoved; i++)
        ts_map_del(&gw->scratch, gw->tmp_removed[i]);
    for (size_t i = 0; i < c->naoi; i++)
        c->aoi[i].fresh = false;
    c->ngone = 0;
    if (c->need_snapshot) snap_unlist(gw, c);
    c->need_snapshot = false;
    c->behind = false;
    c->resweep = false;
}

/* The first Snapshot may go: the own entity was seen and every live cell of
 * the area of interest sent a whole keyframe, or the wait is over. */
static bool snapshot_ready(gw_t *gw, const gw_conn_t *c)
{
    if (ts_mono_us() >= c->snapshot_due_us) return true;
    if (ts_map_get(&gw->homes, c->entity) == NULL) return false;
    for (size_t i = 0; i < c->naoi; i++) {
        const gw_cell_t *cell = c->aoi[i].cell;
        if (gw_cell_live(cell) && !cell->kf_seen) return false;
    }
    return true;
}

static int evref_cmp(const void *a, const void *b)
{
    const gw_evref_t *x = a, *y = b;
    uintptr_t cx = (uintptr_t)x->cell, cy = (uintptr_t)y->cell;
    if (cx != cy) return cx < cy ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* The game events of this flush for the client, into gw->evsel (targeted
 * ones were queued on it; positional ones whose point its show circle
 * holds), in each cell's order. Returns how many. */
static size_t select_events(gw_t *gw, gw_conn_t *c)
{
    size_t n = 0;
    if (c->nevq > 0) {
        if (!ts_grow((void **)&gw->evsel, &gw->evsel_cap, c->nevq, sizeof *gw->evsel)) return 0;
        memcpy(gw->evsel, c->evq, c->nevq * sizeof *c->evq);
        n = c->nevq;
    }
    double lim = gw->aoi_show * gw->aoi_show;
    for (size_t i = 0; i < c->naoi; i++) {
        gw_cell_t *cell = c->aoi[i].cell;
        if (cell->npos == 0) continue;
        for (size_t k = 0; k < cell->nevs; k++) {
            const gw_event_t *ev = &cell->evs[k];
            if (!ev->positional) continue;
            double dx = ev->x - c->aoi_x, dy = ev->y - c->aoi_y;
            if (dx * dx + dy * dy > lim) continue;
            if (n >= GW_CONN_EVENTS_MAX ||
                !ts_grow((void **)&gw->evsel, &gw->evsel_cap, n + 1, sizeof *gw->evsel)) {
                gw->events_dropped++;
                continue;
            }
            gw->evsel[n++] = (gw_evref_t){.cell = cell, .idx = (uint32_t)k};
        }
    }
    if (c->nevq > 0 && n > c->nevq) qsort(gw->evsel, n, sizeof *gw->evsel, evref_cmp);
    return n;
}

/* uv_buf_t is struct iovec's layout on Unix (libuv documents it): the
 * staged pieces are handed to writev as they are. */
_Static_assert(sizeof(uv_buf_t) == sizeof(struct iovec) &&
                   offsetof(uv_buf_t, base) == offsetof(struct iovec, iov_base) &&
                   offsetof(uv_buf_t, len) == offsetof(struct iovec, iov_len),
               "uv_buf_t is not an iovec");

/* Writes the client's frames (gw->iov), or stages them for the writer
 * threads when nothing is queued for it already (a queued write must go
 * first) and nothing else goes to it in this flush (a Snapshot is followed
 * by the world counters: it is written now). WebSocket clients are framed
 * and written by ws.c, now. */
static ts_status_t write_view(gw_t *gw, gw_conn_t *c, size_t niov, size_t total, bool stage)
{
    int fd = -1;
    if (stage && gw->stage_writes && c->ws == NULL && c->out_pending == 0 && !c->staged &&
        !c->handle_closed && uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0) {
        const struct iovec scratch[] = {{gw->heads, gw->heads_cap}, {gw->rmbuf, gw->rmbuf_cap}};
        if (gw_writers_stage(gw->writers, c, fd, (const struct iovec *)gw->iov, niov, total, scratch, 2) ==
            TS_OK) {
            c->staged = true;
            gw->threaded_writes++;
            return TS_OK;
        }
    }
    return gw_conn_writev(c, gw->iov, niov, total);
}

/* Performs the staged writes (on the writer threads) and queues what a
 * socket did not take, as gw_conn_writev does. Also called before any
 * other write to a client with a staged one, so nothing overtakes it. */
void gw_view_write_staged(gw_t *gw)
{
    gw_writers_t *w = gw->writers;
    size_t n = w != NULL ? gw_writers_count(w) : 0;
    if (n == 0) return;
    gw_writers_run(w);
    for (size_t i = 0; i < n; i++) {
        gw_wjob_t *j = gw_writers_job(w, i);
        gw_conn_t *c = j->owner;
        c->staged = false;
        if (c->close_staged) {
            /* closed meanwhile: its descriptor stayed open until now */
            c->close_staged = false;
            gw_conn_close(c);
            continue;
        }
        if (c->handle_closed) continue;
        if (j->taken < 0) {
            ts_debug("conn %llu (%s): write failed: %s", (unsigned long long)c->id, c->peer,
                     strerror((int)-j->taken));
            gw_conn_close(c);
        } else if ((size_t)j->taken < j->total) {
            (void)gw_conn_queue_rest(c, (const uv_buf_t *)j->pieces, j->npieces, (size_t)j->taken,
                                     j->total - (size_t)j->taken);
        }
    }
    gw_writers_reset(w);
}

/* One client's frames of this flush: its Snapshot (just joined) or Delta,
 * split in GW_FRAME_MAX_BYTES frames if the view is large, then its Event
 * frames; all in one write. */
static void send_view(gw_t *gw, gw_conn_t *c)
{
    size_t nev = select_events(gw, c);
    if (gw_conn_backlogged(c->out_pending, gw->cfg->gateway_max_backlog)) {
        /* its slow-reader deadline runs meanwhile (conn.c) */
        c->deltas_skipped++;
        gw->deltas_skipped++;
        gw->events_dropped += nev;
        /* the full view it gets later lists what is in view and reports
         * what it was shown that is no longer there */
        c->behind = true;
        for (size_t i = 0; i < c->naoi; i++)
            c->aoi[i].fresh = true;
        return;
    }
    /* a first Snapshot not ready yet: only the events go now */
    bool view = !c->need_snapshot || snapshot_ready(gw, c);
    bool snap = view && c->need_snapshot;
    bool sweep = view && !snap && (c->resweep || c->behind);
    size_t nseg = 0, nremoved = 0;
    if (snap) {
        ts_map_free(&c->shown);
        ts_map_init(&c->shown);
        c->ngone = 0;
    }
    if (view && !snap && c->behind) {
        /* shown entities no cell of the area of interest holds any more: a
         * client that was behind missed the cells' removed lists (otherwise
         * those, and c->gone for cells that left its area, report each) */
        uint64_t id;
        for (size_t it = 0; ts_map_next(&c->shown, &it, &id, NULL);) {
            gw_cell_t *home = ts_map_get(&gw->homes, id); /* usually one of its cells: no more look-ups */
            if ((home == NULL || !aoi_has(c, home)) && !held_in_aoi(c, id)) push_removed(gw, &nremoved, id);
        }
        for (size_t i = 0; i < nremoved; i++)
            ts_map_del(&c->shown, gw->tmp_removed[i]);
    }
    for (size_t i = 0; view && i < c->naoi; i++) {
        gw_cell_t *cell = c->aoi[i].cell;
        bool ok = true;
        if (snap || c->aoi[i].fresh) {
            ok = filter_block(gw, c, full_block(gw, cell), PASS_ALL, &nseg, &nremoved);
        } else {
            if (cell->dirty) ok = filter_block(gw, c, &cell->blk, PASS_ALL, &nseg, &nremoved);
            if (ok && sweep && sweep_changes(gw, c, cell))
                ok = filter_block(gw, c, full_block(gw, cell), PASS_SWEEP, &nseg, &nremoved);
        }
        if (!ok) goto oom;
    }
    if (view && !snap) {
        for (size_t i = 0; i < c->naoi; i++) {
            gw_cell_t *cell = c->aoi[i].cell;
            if (!cell->dirty) continue;
            for (size_t k = 0; k < cell->nremoved; k++)
                drop_if_gone(gw, c, &nremoved, cell->removed[k]);
        }
        for (size_t i = 0; i < c->ngone; i++)
            drop_if_gone(gw, c, &nremoved, c->gone[i]);
    }
    bool frames = snap || nseg > 0 || nremoved > 0; /* a Snapshot or Delta goes */
    if (!frames && nev == 0) {
        if (view) finish_client(gw, c, 0);
        return;
    }
    size_t rmlen = gw_removed_len(gw->tmp_removed, nremoved);
    if (!ts_grow((void **)&gw->rmbuf, &gw->rmbuf_cap, rmlen + 1, 1) ||
        !ts_grow((void **)&gw->heads, &gw->heads_cap, (nseg + 1 + nev) * GW_FRAME_HEAD_MAX, 1) ||
        !ts_grow((void **)&gw->iov, &gw->iov_cap, 2 * (nseg + 1) + 1 + 2 * nev, sizeof *gw->iov))
        goto oom;
    gw_removed_put(gw->rmbuf, gw->tmp_removed, nremoved);

    uint64_t epoch = gw_cell_epoch(c->cell);
    size_t niov = 0, total = 0, nframes = 0, i = 0;
    if (frames) {
        /* the ack: the own entity's highest applied client seq (Delta field
         * 4, Snapshot field 3), written after the head as part of the payload */
        uint64_t ack = 0;
        if (c->entity != 0) {
            gw_cell_t *home = ts_map_get(&gw->homes, c->entity);
            gw_entity_t *own = home != NULL ? ts_map_get(&home->entities, c->entity) : NULL;
            if (own != NULL) ack = own->pb.last_input_seq;
        }
        size_t ack_len = ack != 0 ? 1 + gw_pb_varint_len(ack) : 0;
        do {
            size_t start = i, bytes = 0;
            while (i < nseg && (i == start || bytes + gw->segs[i].len <= GW_FRAME_MAX_BYTES))
                bytes += gw->segs[i++].len;
            size_t rm = i == nseg ? rmlen : 0;
            bool snap_frame = snap && nframes == 0;
            uint8_t *head = gw->heads + nframes * GW_FRAME_HEAD_MAX;
            size_t flen;
            size_t hl = gw_frame_head(head, ++c->out_seq, epoch, &c->cell->id,
                                      snap_frame ? GW_PAYLOAD_SNAPSHOT : GW_PAYLOAD_DELTA,
                                      snap_frame ? c->entity : gw->tick, bytes + rm + ack_len, &flen);
            if (ack_len != 0) {
                head[hl] = (uint8_t)((snap_frame ? 3 : 4) << 3); /* varint field */
                hl += 1 + gw_pb_varint(head + hl + 1, ack);
            }
            gw->iov[niov++] = uv_buf_init((char *)head, (unsigned)hl);
            for (size_t k = start; k < i; k++)
                gw->iov[niov++] = gw->segs[k];
            if (rm > 0) gw->iov[niov++] = uv_buf_init((char *)gw->rmbuf, (unsigned)rm);
            total += flen;
            nframes++;
        } while (i < nseg);
    }
    /* Event frames: a head of the client's own, the shared encoded Event */
    size_t nheads = nframes;
    for (size_t k = 0; k < nev; k++) {
        const gw_cell_t *cell = gw->evsel[k].cell;
        const gw_event_t *ev = &cell->evs[gw->evsel[k].idx];
        uint8_t *head = gw->heads + nheads++ * GW_FRAME_HEAD_MAX;
        size_t flen;
        size_t hl =
            gw_frame_head(head, ++c->out_seq, epoch, &c->cell->id, GW_PAYLOAD_EVENT, 0, ev->len, &flen);
        gw->iov[niov++] = uv_buf_init((char *)head, (unsigned)hl);
        gw->iov[niov++] = uv_buf_init((char *)cell->ev_buf + ev->off, ev->len);
        total += flen;
    }
    if (write_view(gw, c, niov, total, !snap) == TS_OK) {
        gw->frames_sent += nframes + nev;
        gw->bytes_sent += total;
        gw->events_sent += nev;
    } else {
        gw->events_dropped += nev;
    }
    if (view) finish_client(gw, c, nremoved);
    if (snap) gw_counters_after_snapshot(gw, c); /* the world counters right after */
    return;
oom:
    ts_warn("conn %llu: out of memory building its view", (unsigned long long)c->id);
    gw->events_dropped += nev;
    finish_client(gw, c, nremoved);
}

/* Queues the cells' targeted events on the clients they are for. */
static void route_events(gw_t *gw, gw_cell_t *cell)
{
    for (size_t k = 0; k < cell->nevs; k++) {
        const gw_event_t *ev = &cell->evs[k];
        if (ev->positional) continue;
        gw_conn_t *c = ts_map_get(&gw->players, ev->entity);
        if (c == NULL || c->entity != ev->entity || c->phase != GW_PHASE_JOINED) continue;
        if (c->nevq >= GW_CONN_EVENTS_MAX ||
            !ts_grow((void **)&c->evq, &c->evq_cap, c->nevq + 1, sizeof *c->evq)) {
            gw->events_dropped++;
            continue;
        }
        c->evq[c->nevq++] = (gw_evref_t){.cell = cell, .idx = (uint32_t)k};
        gw_view_want_flush(gw, c);
    }
}

void gw_view_flush(gw_t *gw)
{
    gw_aoi_run(gw);
    gw->tick++;
    gw->last_flush_us = ts_mono_us();
    for (gw_cell_t *cell = gw->dirty_head; cell != NULL; cell = cell->next_dirty) {
        /* a cell only the map holds has no client to read its block */
        if (cell->nsubs > 0) encode_changes(gw, cell);
        if (cell->nevs > cell->npos) route_events(gw, cell);
        for (size_t i = 0; i < cell->nsubs; i++)
            gw_view_want_flush(gw, cell->subs[i].conn);
    }
    /* a small fan-out is written as it is built: waking a writer thread
     * would cost more than it saves */
    gw->stage_writes =
        gw->writers != NULL && gw_writers_threads(gw->writers) > 0 && gw->nflush >= GW_WRITERS_MIN_FANOUT;
    while (gw->flush_head != NULL) {
        gw_conn_t *c = gw->flush_head;
        gw->flush_head = c->next_flush;
        gw->nflush--;
        c->flush_queued = false;
        c->next_flush = NULL;
        if (c->phase == GW_PHASE_JOINED && !c->closing && !c->handle_closed && c->cell != NULL)
            send_view(gw, c);
        c->nevq = 0;
    }
    gw_view_write_staged(gw); /* while the cells' blocks are as encoded */
    gw_cell_t *cell = gw->dirty_head;
    gw->dirty_head = NULL;
    while (cell != NULL) {
        gw_cell_t *next = cell->next_dirty;
        cell->nchanged = cell->nremoved = 0;
        cell->nevs = cell->npos = 0;
        cell->ev_len = 0;
        cell->dirty = false;
        cell->next_dirty = NULL;
        cell = next;
    }
    gw_metrics_flushed(gw->last_flush_us);
}

void gw_view_free(gw_t *gw)
{
    free(gw->tmp_removed);
    free(gw->iov);
    free(gw->segs);
    free(gw->heads);
    free(gw->rmbuf);
    free(gw->evsel);
    ts_map_free(&gw->scratch);
    ts_map_free(&gw->homes);
}
