/* What the gateway knows of the world, and what each client sees of it.
 *
 * Per subscribed cell: the latest state of every entity in it, and the ids
 * changed or removed since the last gateway tick. StateDelta messages are
 * fenced: one whose epoch is below the highest seen for its cell (or the
 * registry's) is dropped, so a deposed owner cannot overwrite the new one.
 *
 * Players follow their entity: seen in another cell's state, or named in a
 * `left` entry of their cell with a destination, a player is re-bound to the
 * new cell (gw_session_move_cell). Because separate subscriptions deliver in
 * no particular order relative to each other, a player re-bound on sight
 * ignores its old cell (awaiting_left) until that cell's `left` for it
 * arrives, so an older state of the old cell cannot pull it back.
 *
 * Per tick every joined client gets one Delta: changed entities of its AOI
 * cells (each id once), and removed ids that no AOI cell still holds. */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define REMOVED_TAG ((void *)(uintptr_t)1)

static void mark_dirty(gw_t *gw, gw_cell_t *cell)
{
    if (!cell->dirty) {
        cell->dirty = true;
        cell->next_dirty = gw->dirty_head;
        gw->dirty_head = cell;
    }
}

static void mark_changed(gw_t *gw, gw_cell_t *cell, uint64_t id)
{
    ts_map_del(&cell->removed, id);
    (void)ts_map_put(&cell->changed, id, REMOVED_TAG);
    mark_dirty(gw, cell);
}

static void mark_removed(gw_t *gw, gw_cell_t *cell, uint64_t id)
{
    ts_map_del(&cell->changed, id);
    (void)ts_map_put(&cell->removed, id, REMOVED_TAG);
    mark_dirty(gw, cell);
}

static bool same_state(const gw_entity_t *e, const Tessera__V1__EntityState *s)
{
    const Tessera__V1__EntityState *p = &e->pb;
    return p->x == s->x && p->y == s->y && p->vx == s->vx && p->vy == s->vy &&
           p->last_input_seq == s->last_input_seq && p->inputs_applied == s->inputs_applied &&
           p->applied_window == s->applied_window &&
           strncmp(e->name, s->name ? s->name : "", GW_NAME_MAX) == 0;
}

/* Stores s in the cell; true if it is new or differs from what was known. */
static bool upsert(gw_cell_t *cell, const Tessera__V1__EntityState *s, bool *oom)
{
    gw_entity_t *e = ts_map_get(&cell->entities, s->id);
    if (e != NULL && same_state(e, s)) {
        e->gen = cell->gen;
        return false;
    }
    if (e == NULL) {
        e = malloc(sizeof *e);
        if (e == NULL || ts_map_put(&cell->entities, s->id, e) != TS_OK) {
            free(e);
            *oom = true;
            return false;
        }
    }
    e->pb = *s;
    e->pb.base.unknown_fields = NULL;
    e->pb.base.n_unknown_fields = 0;
    /* s is freed after this delta: keep nothing that points into it. Clients
     * get the newest 64 bits of the applied window, not the extension. */
    e->pb.n_applied_window_ext = 0;
    e->pb.applied_window_ext = NULL;
    ts_strlcpy(e->name, s->name ? s->name : "", sizeof e->name);
    e->pb.name = e->name;
    e->gen = cell->gen;
    return true;
}

static void follow_sighting(gw_t *gw, gw_cell_t *cell, uint64_t id)
{
    gw_conn_t *c = ts_map_get(&gw->players, id);
    if (c == NULL || c->cell == cell || c->awaiting_left == cell) return;
    gw_cell_t *old = c->cell;
    gw_session_move_cell(c, cell);
    c->awaiting_left = old;
}

static void follow_left(gw_t *gw, gw_cell_t *cell, const Tessera__V1__EntityLeft *l)
{
    gw_conn_t *c = ts_map_get(&gw->players, l->id);
    if (c == NULL) return;
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

void gw_view_on_state(gw_t *gw, const char *subject, const uint8_t *data, size_t len)
{
    static uint64_t warned_us;
    ts_cell_t id;
    ts_subject_kind_t kind;
    if (ts_subject_parse(subject, &id, &kind) != TS_OK || kind != TS_SUBJ_STATE) return;
    gw_cell_t *cell = gw_cell_find(gw, &id);
    if (cell == NULL || cell->aoi_refs == 0) return;
    Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, len, data);
    if (d == NULL) {
        gw->states_bad++;
        uint64_t now = ts_mono_us();
        if (warned_us == 0 || now - warned_us > 5000000) {
            warned_us = now;
            ts_warn("%s: undecodable StateDelta (%zu bytes) dropped", subject, len);
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
    cell->gen++;
    bool oom = false;
    for (size_t i = 0; i < d->n_entities; i++) {
        const Tessera__V1__EntityState *s = d->entities[i];
        if (s == NULL || s->id == 0 || s->id == UINT64_MAX) continue;
        if (upsert(cell, s, &oom)) mark_changed(gw, cell, s->id);
        follow_sighting(gw, cell, s->id);
    }
    if (d->full && !oom) {
        uint64_t eid;
        void *v;
        for (size_t it = 0; ts_map_next(&cell->entities, &it, &eid, &v);) {
            gw_entity_t *e = v;
            if (e->gen != cell->gen) {
                free(ts_map_del(&cell->entities, eid));
                mark_removed(gw, cell, eid);
            }
        }
    }
    for (size_t i = 0; i < d->n_left; i++) {
        const Tessera__V1__EntityLeft *l = d->left[i];
        if (l == NULL) continue;
        gw_entity_t *e = ts_map_del(&cell->entities, l->id);
        if (e != NULL) {
            free(e);
            mark_removed(gw, cell, l->id);
        }
        follow_left(gw, cell, l);
    }
    if (oom) ts_warn("%s: out of memory caching entities", cell->key);
    gw->states_applied++;
done:
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

static bool grow_ents(gw_t *gw, size_t need)
{
    if (need <= gw->tmp_ents_cap) return true;
    size_t cap = gw->tmp_ents_cap ? gw->tmp_ents_cap * 2 : 256;
    while (cap < need)
        cap *= 2;
    Tessera__V1__EntityState **v = realloc(gw->tmp_ents, cap * sizeof *v);
    if (v == NULL) return false;
    gw->tmp_ents = v;
    gw->tmp_ents_cap = cap;
    return true;
}

static bool grow_removed(gw_t *gw, size_t need)
{
    if (need <= gw->tmp_removed_cap) return true;
    size_t cap = gw->tmp_removed_cap ? gw->tmp_removed_cap * 2 : 256;
    while (cap < need)
        cap *= 2;
    uint64_t *v = realloc(gw->tmp_removed, cap * sizeof *v);
    if (v == NULL) return false;
    gw->tmp_removed = v;
    gw->tmp_removed_cap = cap;
    return true;
}

/* Adds an entity to the merge; a second copy of the same id (an entity seen
 * in two cells during a crossing) keeps the one with more inputs applied. */
static void merge_add(gw_t *gw, size_t *n, Tessera__V1__EntityState *s)
{
    void *v = ts_map_get(&gw->scratch, s->id);
    if (v != NULL && v != REMOVED_TAG) {
        size_t idx = (size_t)(uintptr_t)v - 2;
        if (s->inputs_applied > gw->tmp_ents[idx]->inputs_applied) gw->tmp_ents[idx] = s;
        return;
    }
    if (!grow_ents(gw, *n + 1) || ts_map_put(&gw->scratch, s->id, (void *)(uintptr_t)(*n + 2)) != TS_OK)
        return;
    gw->tmp_ents[(*n)++] = s;
}

static bool in_aoi(const gw_conn_t *c, uint64_t id)
{
    for (size_t i = 0; i < c->naoi; i++) {
        if (ts_map_get(&c->aoi[i].cell->entities, id) != NULL) return true;
    }
    return false;
}

static void merge_remove(gw_t *gw, const gw_conn_t *c, size_t *n, uint64_t id)
{
    if (ts_map_get(&gw->scratch, id) != NULL || in_aoi(c, id)) return;
    if (!grow_removed(gw, *n + 1) || ts_map_put(&gw->scratch, id, REMOVED_TAG) != TS_OK) return;
    gw->tmp_removed[(*n)++] = id;
}

static void add_all(gw_t *gw, size_t *n, gw_cell_t *cell)
{
    void *v;
    for (size_t it = 0; ts_map_next(&cell->entities, &it, NULL, &v);)
        merge_add(gw, n, &((gw_entity_t *)v)->pb);
}

static void scratch_reset(gw_t *gw, size_t nents, size_t nremoved)
{
    for (size_t i = 0; i < nents; i++)
        ts_map_del(&gw->scratch, gw->tmp_ents[i]->id);
    for (size_t i = 0; i < nremoved; i++)
        ts_map_del(&gw->scratch, gw->tmp_removed[i]);
}

static void send_delta(gw_t *gw, gw_conn_t *c)
{
    if (c->out_pending > GW_SLOW_CLIENT_BYTES) {
        c->deltas_skipped++;
        for (size_t i = 0; i < c->naoi; i++)
            c->aoi[i].fresh = true;
        return;
    }
    size_t nents = 0, nremoved = 0;
    for (size_t i = 0; i < c->naoi; i++) {
        gw_cell_t *cell = c->aoi[i].cell;
        if (c->aoi[i].fresh) {
            add_all(gw, &nents, cell);
            continue;
        }
        uint64_t id;
        for (size_t it = 0; ts_map_next(&cell->changed, &it, &id, NULL);) {
            gw_entity_t *e = ts_map_get(&cell->entities, id);
            if (e != NULL) merge_add(gw, &nents, &e->pb);
        }
    }
    for (size_t i = 0; i < c->naoi; i++) {
        uint64_t id;
        for (size_t it = 0; ts_map_next(&c->aoi[i].cell->removed, &it, &id, NULL);)
            merge_remove(gw, c, &nremoved, id);
    }
    for (size_t i = 0; i < c->ngone; i++)
        merge_remove(gw, c, &nremoved, c->gone[i]);

    size_t sent = 0;
    do {
        if (nents == 0 && nremoved == 0) break;
        size_t chunk = nents - sent > GW_FRAME_MAX_ENTITIES ? GW_FRAME_MAX_ENTITIES : nents - sent;
        bool last = sent + chunk == nents;
        Tessera__V1__Delta delta = TESSERA__V1__DELTA__INIT;
        delta.tick = gw->tick;
        delta.n_entities = chunk;
        delta.entities = chunk ? gw->tmp_ents + sent : NULL;
        delta.n_removed = last ? nremoved : 0;
        delta.removed = last && nremoved ? gw->tmp_removed : NULL;
        Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
        f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA;
        f.delta = &delta;
        if (gw_session_send(c, &f) != TS_OK) break;
        sent += chunk;
    } while (sent < nents);

    scratch_reset(gw, nents, nremoved);
    for (size_t i = 0; i < c->naoi; i++)
        c->aoi[i].fresh = false;
    c->ngone = 0;
}

void gw_view_tick(gw_t *gw)
{
    gw->tick++;
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next) {
        if (c->phase == GW_PHASE_JOINED && !c->closing) send_delta(gw, c);
    }
    gw_cell_t *cell = gw->dirty_head;
    gw->dirty_head = NULL;
    while (cell != NULL) {
        gw_cell_t *next = cell->next_dirty;
        ts_map_free(&cell->changed);
        ts_map_free(&cell->removed);
        cell->dirty = false;
        cell->next_dirty = NULL;
        cell = next;
    }
}

void gw_view_send_snapshot(gw_t *gw, gw_conn_t *c)
{
    size_t nents = 0;
    for (size_t i = 0; i < c->naoi; i++)
        add_all(gw, &nents, c->aoi[i].cell);
    size_t n = nents > GW_FRAME_MAX_ENTITIES ? GW_FRAME_MAX_ENTITIES : nents;
    Tessera__V1__Snapshot snap = TESSERA__V1__SNAPSHOT__INIT;
    snap.entity = c->entity;
    snap.n_entities = n;
    snap.entities = n ? gw->tmp_ents : NULL;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT;
    f.snapshot = &snap;
    (void)gw_session_send(c, &f);
    scratch_reset(gw, nents, 0);
    /* what did not fit goes out with the next Delta */
    for (size_t i = 0; i < c->naoi; i++)
        c->aoi[i].fresh = nents > n;
}
