/* The orchestrator's side of the registry: creating the world, the cell
 * snapshot the other modules decide from, and every ownership change.
 *
 * Invariants: cells that already exist keep their owner and epoch (a restart
 * never resets an epoch); every write goes through a compare-and-set on the
 * epoch and happens only while the leader lock is held, so epochs never go
 * backwards and no cell has two owners; every change this process makes is
 * announced with one RegistryChange carrying the registry version it
 * produced; the snapshot is never newer than Redis, only older. */
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
    if (!o->reg)
        return;
    ts_warn("registry error (%s); reconnecting to %s", ts_status_str(st), o->cfg->redis_url);
    ts_registry_destroy(o->reg);
    o->reg = NULL;
    o->cells_us = 0;
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
    if (st == TS_OK)
        st = ts_bus_publish(o->bus, subject, &hdr, buf, len);
    free(buf);
    if (st != TS_OK)
        ts_warn("cannot publish RegistryChange on %s: %s", subject, ts_status_str(st));
}

static void warn_if_world_differs(ts_orch_t *o)
{
    ts_world_t cur;
    const ts_world_t *want = &o->layout.world;
    if (ts_registry_world_get(o->reg, want->id, &cur) != TS_OK)
        return;
    if (cur.cell_size != want->cell_size || cur.x0 != want->x0 || cur.y0 != want->y0 || cur.width != want->width ||
        cur.height != want->height)
        ts_warn("world %u in the registry (size %g, origin %d,%d, %dx%d) differs from the configuration "
                "(size %g, origin %d,%d, %dx%d); writing the configured geometry, existing cells keep their "
                "owners",
                want->id, cur.cell_size, cur.x0, cur.y0, cur.width, cur.height, want->cell_size, want->x0, want->y0,
                want->width, want->height);
}

bool ts_orch_write_world(ts_orch_t *o)
{
    if (!o->reg || !ts_leader_held(o->leader))
        return false;
    warn_if_world_differs(o);
    ts_status_t st = ts_registry_world_set(o->reg, &o->layout.world);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return false;
    }
    size_t created = 0, kept = 0;
    uint64_t version = 0;
    for (size_t i = 0; i < o->layout.ncells; i++) {
        const ts_cell_entry_t *want = &o->layout.cells[i];
        ts_cell_entry_t cur;
        uint64_t v = 0;
        st = ts_registry_cell_create(o->reg, want, &cur, &v);
        if (st == TS_OK) {
            created++;
            version = v;
            ts_orch_announce(o, &cur, v);
        } else if (st == TS_ERR_EXISTS) {
            kept++;
            if (strcmp(cur.owner, want->owner) != 0) {
                char key[TS_CELL_STR_MAX];
                ts_cell_format(&cur.cell, key, sizeof key);
                ts_info("cell %s keeps owner %s at epoch %llu (layout says %s)", key, cur.owner,
                        (unsigned long long)cur.epoch, want->owner);
            }
        } else {
            ts_orch_registry_broken(o, st);
            return false;
        }
    }
    if (created == 0)
        ts_registry_version(o->reg, o->layout.world.id, &version);
    ts_bus_flush(o->bus, 2000);
    ts_info("world %u: %zu root cells (%zu created, %zu kept), registry version %llu", o->layout.world.id,
            o->layout.ncells, created, kept, (unsigned long long)version);
    o->cells_us = 0;
    return true;
}

bool ts_orch_refresh_cells(ts_orch_t *o)
{
    if (!o->reg)
        return false;
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    ts_status_t st = ts_registry_cells(o->reg, o->world, &cells, &n);
    if (st == TS_ERR_NOT_FOUND) {
        st = TS_OK;
        n = 0;
    }
    if (st != TS_OK) {
        free(cells);
        ts_orch_registry_broken(o, st);
        return false;
    }
    free(o->cells);
    o->cells = cells;
    o->ncells = n;
    o->cells_us = ts_mono_us();
    ts_ctl_note_cells(o->ctl);
    return true;
}

void ts_orch_note_cell(ts_orch_t *o, const ts_cell_entry_t *e)
{
    for (size_t i = 0; i < o->ncells; i++) {
        if (ts_cell_eq(&o->cells[i].cell, &e->cell)) {
            if (e->epoch >= o->cells[i].epoch)
                o->cells[i] = *e;
            ts_ctl_note_cells(o->ctl);
            return;
        }
    }
    o->cells_us = 0; /* not in the snapshot: re-read it */
}

size_t ts_orch_owned(const ts_orch_t *o, const char *id)
{
    size_t n = 0;
    for (size_t i = 0; i < o->ncells; i++)
        n += strcmp(o->cells[i].owner, id) == 0;
    return n;
}

ts_status_t ts_orch_cas(ts_orch_t *o, const ts_cell_t *cell, uint64_t epoch, const char *owner,
                        ts_cell_entry_t *out)
{
    if (!o->reg || !ts_leader_held(o->leader))
        return TS_ERR_UNAVAILABLE;
    uint64_t version = 0;
    ts_status_t st = ts_registry_cell_cas(o->reg, cell, epoch, owner, TS_CELL_ACTIVE, out, &version);
    if (st == TS_ERR_UNAVAILABLE || st == TS_ERR_IO) {
        /* the script may or may not have run: ask */
        ts_cell_entry_t cur;
        ts_status_t rs = ts_registry_cell_get(o->reg, cell, &cur);
        if (rs != TS_OK) {
            ts_orch_registry_broken(o, rs);
            return TS_ERR_UNAVAILABLE;
        }
        if (cur.epoch == epoch)
            return TS_ERR_UNAVAILABLE;
        *out = cur;
        if (cur.epoch != epoch + 1 || strcmp(cur.owner, owner) != 0) {
            ts_orch_note_cell(o, &cur);
            return TS_ERR_CONFLICT;
        }
        ts_registry_version(o->reg, o->world, &version); /* best effort: the broadcast carries it */
        st = TS_OK;
    }
    if (st == TS_OK) {
        ts_orch_note_cell(o, out);
        ts_orch_announce(o, out, version);
        return TS_OK;
    }
    if (st == TS_ERR_CONFLICT) {
        ts_orch_note_cell(o, out);
        return st;
    }
    if (st == TS_ERR_NOT_FOUND) {
        memset(out, 0, sizeof *out);
        out->cell = *cell;
        o->cells_us = 0;
        return TS_ERR_CONFLICT;
    }
    ts_orch_registry_broken(o, st);
    return TS_ERR_UNAVAILABLE;
}

void ts_orch_cells_free(ts_orch_t *o)
{
    free(o->cells);
    o->cells = NULL;
    o->ncells = 0;
}
