/* The orchestrator's side of the registry: creating the world, the local
 * copy of the cells the other modules decide from, and every ownership
 * change.
 *
 * The orchestrator is the registry's only writer, so the copy follows its
 * own compare-and-sets: each returns the registry version it produced, and
 * as long as that is the next one, nobody else wrote. The copy is read in
 * full only when the lead is gained, after a Redis reconnect, or when a
 * version shows a change this process did not make (the liveness poll reads
 * the version every period in the same round trip).
 *
 * Invariants: cells that already exist keep their owner and epoch (a restart
 * never resets an epoch); every write goes through a compare-and-set on the
 * epoch and happens only while the leader lock is held, so epochs never go
 * backwards and no cell has two owners; every change this process makes is
 * announced with one RegistryChange carrying the registry version it
 * produced; an entry of the copy only ever moves to a higher epoch. */
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

bool ts_orch_is_answer(ts_status_t st)
{
    return st == TS_OK || st == TS_ERR_EXISTS || st == TS_ERR_NOT_FOUND || st == TS_ERR_CONFLICT;
}

void ts_orch_registry_broken(ts_orch_t *o, ts_status_t st)
{
    if (!o->reg) return;
    ts_warn("registry error (%s); reconnecting to %s", ts_status_str(st), o->cfg->redis_url);
    ts_registry_destroy(o->reg);
    o->reg = NULL;
    o->reg_connects = 0;
    o->healthy_since_us = 0; /* nobody is declared dead on what a lost Redis says */
    o->cells_stale = true;
}

void ts_orch_announce(ts_orch_t *o, const ts_cell_entry_t *e, uint64_t version)
{
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &e->cell);
    Tessera__V1__RegistryChange rc = TESSERA__V1__REGISTRY_CHANGE__INIT;
    rc.world = e->cell.world;
    rc.version = version;
    rc.cell = &cell_pb;
    rc.owner = (char *)e->owner;
    rc.epoch = e->epoch;
    rc.state = (Tessera__V1__CellState)e->state;

    uint8_t *buf = NULL;
    size_t len = 0;
    char subject[TS_SUBJECT_MAX];
    ts_subject_registry(subject, sizeof subject, e->cell.world);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_REGISTRY_CHANGE, .epoch = e->epoch, .seq = version};
    ts_status_t st = ts_proto_pack(&rc.base, &buf, &len);
    if (st == TS_OK) st = ts_bus_publish(o->bus, subject, &hdr, buf, len);
    free(buf);
    if (st != TS_OK) ts_warn("cannot publish RegistryChange on %s: %s", subject, ts_status_str(st));
}

static void warn_if_world_differs(ts_orch_t *o)
{
    ts_world_t cur;
    const ts_world_t *want = &o->layout.world;
    if (ts_registry_world_get(o->reg, want->id, &cur) != TS_OK) return;
    if (cur.cell_size != want->cell_size || cur.x0 != want->x0 || cur.y0 != want->y0 ||
        cur.width != want->width || cur.height != want->height)
        ts_warn("world %u in the registry (size %g, origin %d,%d, %dx%d) differs from the configuration "
                "(size %g, origin %d,%d, %dx%d); writing the configured geometry, existing cells keep their "
                "owners",
                want->id, cur.cell_size, cur.x0, cur.y0, cur.width, cur.height, want->cell_size, want->x0,
                want->y0, want->width, want->height);
}

bool ts_orch_write_world(ts_orch_t *o)
{
    if (!o->reg || !ts_leader_held(o->leader)) return false;
    warn_if_world_differs(o);
    ts_status_t st = ts_registry_world_set(o->reg, &o->layout.world);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return false;
    }
    /* what exists is read once (one pipelined round trip); the missing cells
     * are created in one more, so a new leader of a big world starts at once */
    if (!ts_orch_refresh_cells(o)) return false;
    size_t kept = 0, nmissing = 0;
    ts_cell_entry_t *missing = calloc(o->layout.ncells + 1, sizeof *missing);
    ts_status_t *results = calloc(o->layout.ncells + 1, sizeof *results);
    uint64_t *versions = calloc(o->layout.ncells + 1, sizeof *versions);
    if (!missing || !results || !versions) {
        free(missing);
        free(results);
        free(versions);
        return false;
    }
    for (size_t i = 0; i < o->layout.ncells; i++) {
        const ts_cell_entry_t *want = &o->layout.cells[i];
        long k = ts_orch_cell_index(o, &want->cell);
        if (k < 0) {
            missing[nmissing++] = *want;
            continue;
        }
        kept++;
        const ts_cell_entry_t *cur = &o->cells[k];
        if (strcmp(cur->owner, want->owner) != 0) {
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&cur->cell, key, sizeof key);
            ts_info("cell %s keeps owner %s at epoch %llu (layout says %s)", key, cur->owner,
                    (unsigned long long)cur->epoch, want->owner);
        }
    }
    st = ts_registry_cells_create(o->reg, missing, nmissing, results, versions);
    size_t created = 0;
    uint64_t version = o->version;
    for (size_t i = 0; st == TS_OK && i < nmissing; i++) {
        if (results[i] == TS_OK) {
            ts_cell_entry_t e = missing[i];
            e.epoch = 1;
            created++;
            version = versions[i] > version ? versions[i] : version;
            ts_orch_announce(o, &e, versions[i]);
        } else if (results[i] == TS_ERR_EXISTS) {
            kept++; /* created by someone else meanwhile: the next read shows it */
        } else {
            st = TS_ERR_UNAVAILABLE;
        }
    }
    free(missing);
    free(results);
    free(versions);
    if (nmissing > 0) o->cells_stale = true;
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return false;
    }
    ts_info("world %u: %zu root cells (%zu created, %zu kept), registry version %llu", o->layout.world.id,
            o->layout.ncells, created, kept, (unsigned long long)version);
    return true;
}

/* Adds one to the cell count of an owner in the liveness table. */
static void count_owner(ts_orch_t *o, const char *owner, int delta)
{
    if (!owner[0]) return;
    ts_live_t *l = ts_liveness_add(&o->live, owner);
    if (!l) return;
    if (delta > 0)
        l->ncells++;
    else if (l->ncells > 0)
        l->ncells--;
}

long ts_orch_cell_index(const ts_orch_t *o, const ts_cell_t *cell)
{
    uintptr_t k = (uintptr_t)ts_map_get((ts_map_t *)&o->index, ts_cell_hash(cell));
    if (k == 0 || k > o->ncells || !ts_cell_eq(&o->cells[k - 1].cell, cell)) return -1;
    return (long)(k - 1);
}

bool ts_orch_refresh_cells(ts_orch_t *o)
{
    if (!o->reg) return false;
    /* the version first: a change after it makes the next poll read again */
    uint64_t version = 0;
    ts_status_t st = ts_registry_version(o->reg, o->world, &version);
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    if (st == TS_OK) st = ts_registry_cells(o->reg, o->world, &cells, &n);
    if (st == TS_ERR_NOT_FOUND) {
        st = TS_OK;
        n = 0;
    }
    bool *orphan = st == TS_OK ? calloc(n + 1, sizeof *orphan) : NULL;
    ts_map_t index;
    ts_map_init(&index);
    if (st == TS_OK && !orphan) st = TS_ERR_NOMEM;
    for (size_t i = 0; st == TS_OK && i < n; i++) {
        if (ts_map_put(&index, ts_cell_hash(&cells[i].cell), (void *)(uintptr_t)(i + 1)) != TS_OK)
            st = TS_ERR_NOMEM;
        /* a cell still held by a replaced incarnation stays marked */
        long k = ts_orch_cell_index(o, &cells[i].cell);
        if (k >= 0 && o->orphan[k] && o->cells[k].epoch == cells[i].epoch &&
            strcmp(o->cells[k].owner, cells[i].owner) == 0)
            orphan[i] = true;
    }
    if (st != TS_OK) {
        free(cells);
        free(orphan);
        ts_map_free(&index);
        if (st == TS_ERR_NOMEM)
            ts_warn("registry copy: out of memory");
        else
            ts_orch_registry_broken(o, st);
        return false;
    }
    ts_orch_cells_free(o);
    o->cells = cells;
    o->orphan = orphan;
    o->ncells = n;
    o->index = index;
    o->version = version;
    o->cells_stale = false;
    o->cells_dirty = true;
    o->full_reads++;
    for (size_t i = 0; i < o->live.n; i++)
        o->live.v[i].ncells = 0;
    for (size_t i = 0; i < n; i++)
        count_owner(o, cells[i].owner, 1);
    ts_debug("registry copy: %zu cells at version %llu (full read %llu)", n, (unsigned long long)version,
             (unsigned long long)o->full_reads);
    return true;
}

/* Appends a cell the copy does not hold yet (the children a split
 * created); -1 when out of memory. */
static long add_cell(ts_orch_t *o, const ts_cell_entry_t *e)
{
    ts_cell_entry_t *cells = realloc(o->cells, (o->ncells + 1) * sizeof *cells);
    if (!cells) return -1;
    o->cells = cells;
    bool *orphan = realloc(o->orphan, (o->ncells + 1) * sizeof *orphan);
    if (!orphan) return -1;
    o->orphan = orphan;
    if (ts_map_put(&o->index, ts_cell_hash(&e->cell), (void *)(uintptr_t)(o->ncells + 1)) != TS_OK) return -1;
    o->cells[o->ncells] = *e;
    o->orphan[o->ncells] = false;
    count_owner(o, e->owner, 1);
    o->cells_dirty = true;
    return (long)o->ncells++;
}

void ts_orch_note_cell(ts_orch_t *o, const ts_cell_entry_t *e, uint64_t version)
{
    long k = ts_orch_cell_index(o, &e->cell);
    /* a new cell joins the copy only with the next version (nobody else wrote) */
    if (k < 0 && version != 0 && version == o->version + 1) k = add_cell(o, e);
    if (k < 0) {
        o->cells_stale = true; /* not in the copy: read it again */
        return;
    }
    if (e->epoch > o->cells[k].epoch || (e->epoch == o->cells[k].epoch && e->state != o->cells[k].state)) {
        count_owner(o, o->cells[k].owner, -1);
        count_owner(o, e->owner, 1);
        o->cells[k] = *e;
        o->orphan[k] = false;
        o->cells_dirty = true;
    }
    if (version == 0) return;
    if (version == o->version + 1)
        o->version = version;
    else if (version > o->version)
        o->cells_stale = true; /* a change this process did not make */
}

size_t ts_orch_owned(ts_orch_t *o, const char *id)
{
    ts_live_t *l = ts_liveness_get(&o->live, id);
    return l ? l->ncells : 0;
}

ts_status_t ts_orch_cas(ts_orch_t *o, const ts_cell_t *cell, uint64_t epoch, const char *owner,
                        ts_cell_entry_t *out)
{
    if (!o->reg || !ts_leader_held(o->leader)) return TS_ERR_UNAVAILABLE;
    uint64_t version = 0;
    /* a split or retired cell keeps its state with its new owner (its forwarder) */
    long k = ts_orch_cell_index(o, cell);
    ts_cell_state_t state =
        k >= 0 && o->cells[k].epoch == epoch &&
                (o->cells[k].state == TS_CELL_SPLIT || o->cells[k].state == TS_CELL_RETIRED)
            ? o->cells[k].state
            : TS_CELL_ACTIVE;
    ts_status_t st = ts_registry_cell_cas(o->reg, cell, epoch, owner, state, out, &version);
    if (st == TS_ERR_UNAVAILABLE || st == TS_ERR_IO) {
        /* the script may or may not have run: ask */
        ts_cell_entry_t cur;
        ts_status_t rs = ts_registry_cell_get(o->reg, cell, &cur);
        if (rs != TS_OK) {
            ts_orch_registry_broken(o, rs);
            return TS_ERR_UNAVAILABLE;
        }
        o->cells_stale = true; /* the version is unknown: read everything again */
        if (cur.epoch == epoch) return TS_ERR_UNAVAILABLE;
        *out = cur;
        if (cur.epoch != epoch + 1 || strcmp(cur.owner, owner) != 0) {
            ts_orch_note_cell(o, &cur, 0);
            return TS_ERR_CONFLICT;
        }
        ts_registry_version(o->reg, o->world, &version); /* best effort: the broadcast carries it */
        ts_orch_note_cell(o, out, 0);
        ts_orch_announce(o, out, version);
        return TS_OK;
    }
    if (st == TS_OK) {
        ts_orch_note_cell(o, out, version);
        ts_orch_announce(o, out, version);
        return TS_OK;
    }
    if (st == TS_ERR_CONFLICT) {
        ts_orch_note_cell(o, out, 0);
        o->cells_stale = true;
        return st;
    }
    if (st == TS_ERR_NOT_FOUND) {
        memset(out, 0, sizeof *out);
        out->cell = *cell;
        o->cells_stale = true;
        return TS_ERR_CONFLICT;
    }
    ts_orch_registry_broken(o, st);
    return TS_ERR_UNAVAILABLE;
}

ts_status_t ts_orch_cas_many(ts_orch_t *o, ts_registry_cas_t *ops, size_t n)
{
    if (!o->reg || !ts_leader_held(o->leader)) return TS_ERR_UNAVAILABLE;
    ts_status_t st = ts_registry_cells_cas(o->reg, ops, n);
    if (st != TS_OK) {
        /* some may have been applied: the copy is read again first */
        if (st == TS_ERR_UNAVAILABLE || st == TS_ERR_IO)
            o->cells_stale = true;
        else
            ts_orch_registry_broken(o, st);
        return TS_ERR_UNAVAILABLE;
    }
    for (size_t i = 0; i < n; i++) {
        if (ops[i].result == TS_OK) {
            ts_orch_note_cell(o, &ops[i].entry, ops[i].version);
            ts_orch_announce(o, &ops[i].entry, ops[i].version);
        } else if (ops[i].result == TS_ERR_CONFLICT) {
            ts_orch_note_cell(o, &ops[i].entry, 0);
            o->cells_stale = true;
        } else {
            o->cells_stale = true;
        }
    }
    return TS_OK;
}

void ts_orch_cells_free(ts_orch_t *o)
{
    free(o->cells);
    free(o->orphan);
    ts_map_free(&o->index);
    o->cells = NULL;
    o->orphan = NULL;
    o->ncells = 0;
}
