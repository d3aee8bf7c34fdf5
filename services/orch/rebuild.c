/* Registry rebuild after a loss of Redis's data.
 *
 * Redis runs with an append-only file (make run, the chart), so a restart
 * keeps the registry. If it is lost anyway (a restart without the file, a
 * FLUSHALL, a new empty instance), epochs must still never go backwards: a
 * cell recreated at epoch 1 would be fenced off by every gateway and
 * neighbour that saw a higher one, and two owners could act at one epoch.
 *
 * What still knows the registry when Redis forgot it:
 *   - the leader's local copy (if the leader lived through the loss);
 *   - the workers' heartbeats: every owned cell with its epoch (this module
 *     keeps, per cell, the highest epoch any heartbeat listed and who listed
 *     it, from its own subscription, in every orchestrator);
 *   - the checkpoints: each one carries its cell, epoch and owner.
 * The rebuild takes, per cell, the highest epoch of the three, + 1; the owner
 * is the worker whose heartbeat lists the cell at that epoch if it is still
 * beating, else the owner the copy or the checkpoint names (crash recovery
 * moves the cells of owners that are not alive, as for any dead worker);
 * the state comes from the copy, else from the owner's heartbeat (each
 * CellLoad says active, split or retired at its epoch: a parent merged back
 * is active even though its retired children are still listed), else (older
 * workers) a cell with a known child is split and the others active.
 * Root cells nobody knows are created by the usual world write at epoch 1
 * afterwards (nobody can have seen them at another).
 *
 * The registry version jumps to at least the wall clock in milliseconds
 * (and above anything this process saw), far above every version handed out
 * before, so gateways and workers see a gap and read everything again
 * instead of ignoring the changes as old.
 *
 * Invariants: nothing writes the world (ts_orch_write_world creates missing
 * cells at epoch 1) while the metadata is missing and a rebuild may be due;
 * a rebuild only raises epochs (the script leaves a cell present at the same
 * or a higher epoch alone); every cell written is announced. */
#include "rebuild.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "tessera/cellmap.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

/* Streams are checked this often (one request). */
#define STREAM_CHECK_US 1000000ULL

/* What heartbeats said of one cell. */
typedef struct {
    uint64_t epoch; /* highest epoch listed */
    char owner[TS_WORKER_ID_MAX];
    uint64_t seen_us; /* monotonic: last heartbeat listing it at that epoch */
    bool state_known; /* the heartbeat said its state at that epoch */
    ts_cell_state_t state;
} hb_cell_t;

static struct {
    pthread_mutex_t mu;
    bool started;
    ts_cellmap_t cells; /* hb_cell_t *, under mu */
    uint64_t started_us;
    uint64_t hw_version; /* highest registry version seen (main thread) */
    uint64_t next_probe_us;
    uint64_t next_stream_check_us;
    uint64_t waiting_since_us;
    atomic_uint_fast64_t rebuilds;
    atomic_uint_fast64_t stream_resets;
} rb;

uint64_t ts_rebuild_count(void)
{
    return atomic_load(&rb.rebuilds);
}

uint64_t ts_rebuild_stream_resets(void)
{
    return atomic_load(&rb.stream_resets);
}

/* ---- what heartbeats say (nats.c threads) -------------------------------- */

void ts_rebuild_note_heartbeat(const Tessera__V1__Heartbeat *hb, uint64_t now)
{
    pthread_mutex_lock(&rb.mu);
    for (size_t i = 0; i < hb->n_cells; i++) {
        ts_cell_t cell;
        if (hb->cells[i] == NULL || ts_proto_cell_get(hb->cells[i]->cell, &cell) != TS_OK) continue;
        hb_cell_t *c = ts_cellmap_get(&rb.cells, &cell);
        if (c == NULL) {
            c = calloc(1, sizeof *c);
            if (c == NULL || ts_cellmap_put(&rb.cells, &cell, c) != TS_OK) {
                free(c);
                continue;
            }
        }
        if (hb->cells[i]->epoch < c->epoch) continue;
        if (hb->cells[i]->epoch > c->epoch) c->state_known = false;
        c->epoch = hb->cells[i]->epoch;
        ts_strlcpy(c->owner, hb->worker, sizeof c->owner);
        c->seen_us = now;
        if (hb->cells[i]->has_state && hb->cells[i]->state <= TESSERA__V1__CELL_STATE__CELL_RETIRED) {
            c->state_known = true;
            c->state = hb->cells[i]->state == TESSERA__V1__CELL_STATE__CELL_HANDOVER
                           ? TS_CELL_ACTIVE
                           : (ts_cell_state_t)hb->cells[i]->state;
        }
    }
    pthread_mutex_unlock(&rb.mu);
}

void ts_rebuild_start(void)
{
    pthread_mutex_init(&rb.mu, NULL);
    ts_cellmap_init(&rb.cells);
    rb.started = true;
    rb.started_us = ts_mono_us();
}

void ts_rebuild_stop(void)
{
    if (!rb.started) return;
    ts_cellmap_clear(&rb.cells, free);
    pthread_mutex_destroy(&rb.mu);
    rb.started = false;
}

/* ---- gathering --------------------------------------------------------- */

typedef struct {
    ts_cell_entry_t e;  /* epoch: the highest seen (not yet + 1) */
    bool state_known;   /* from the local copy */
    bool owner_beating; /* a heartbeat within the TTL lists it at e.epoch */
    const char *source; /* what the epoch came from, for the log */
} found_t;

typedef struct {
    found_t *v;
    size_t n, cap;
    ts_cellmap_t index; /* cell -> index + 1 */
} found_set_t;

static found_t *found_get(found_set_t *s, const ts_cell_t *cell)
{
    uintptr_t k = (uintptr_t)ts_cellmap_get(&s->index, cell);
    if (k != 0) return &s->v[k - 1];
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        found_t *v = realloc(s->v, cap * sizeof *v);
        if (v == NULL) return NULL;
        s->v = v;
        s->cap = cap;
    }
    if (ts_cellmap_put(&s->index, cell, (void *)(uintptr_t)(s->n + 1)) != TS_OK) return NULL;
    found_t *f = &s->v[s->n++];
    memset(f, 0, sizeof *f);
    f->e.cell = *cell;
    return f;
}

/* Takes what one source says of a cell if its epoch is the highest so far. */
static void found_note(found_set_t *s, const ts_cell_t *cell, uint64_t epoch, const char *owner,
                       const char *source)
{
    found_t *f = found_get(s, cell);
    if (f == NULL || epoch < f->e.epoch || epoch == 0) return;
    if (epoch > f->e.epoch) f->state_known = false; /* said of an older epoch */
    if (epoch > f->e.epoch || !f->e.owner[0]) {
        if (owner != NULL && ts_worker_id_valid(owner)) ts_strlcpy(f->e.owner, owner, sizeof f->e.owner);
        f->e.epoch = epoch;
        f->source = source;
    }
}

typedef struct {
    found_set_t *s;
    uint64_t now, ttl_us;
} hb_walk_t;

static void hb_each(void *ud, const ts_cell_t *cell, void *val)
{
    hb_walk_t *walk = ud;
    const hb_cell_t *c = val;
    found_note(walk->s, cell, c->epoch, c->owner, "heartbeat");
    found_t *f = found_get(walk->s, cell);
    if (f != NULL && f->e.epoch == c->epoch && walk->now - c->seen_us <= walk->ttl_us) {
        ts_strlcpy(f->e.owner, c->owner, sizeof f->e.owner);
        f->owner_beating = true;
    }
    /* the owner's word on its state (split, retired after a merge, active)
     * instead of a guess from which children exist */
    if (f != NULL && f->e.epoch == c->epoch && c->state_known && !f->state_known) {
        f->e.state = c->state;
        f->state_known = true;
    }
}

/* Every cell a heartbeat listed (runs under rb.mu: the callbacks only touch s). */
static void from_heartbeats(ts_orch_t *o, found_set_t *s, uint64_t now)
{
    hb_walk_t walk = {.s = s, .now = now, .ttl_us = (uint64_t)o->cfg->orch_hb_ttl_ms * 1000};
    pthread_mutex_lock(&rb.mu);
    ts_cellmap_each(&rb.cells, hb_each, &walk);
    pthread_mutex_unlock(&rb.mu);
}

/* The local copy, if this process still holds one. */
static void from_copy(ts_orch_t *o, found_set_t *s)
{
    for (size_t i = 0; i < o->ncells; i++) {
        const ts_cell_entry_t *e = &o->cells[i];
        found_note(s, &e->cell, e->epoch, e->owner, "copy");
        found_t *f = found_get(s, &e->cell);
        if (f != NULL && f->e.epoch == e->epoch) {
            /* a handover in flight fails its compare-and-set and aborts */
            f->e.state = e->state == TS_CELL_HANDOVER ? TS_CELL_ACTIVE : e->state;
            f->state_known = true;
        }
    }
}

/* Every checkpoint (one request for the list, one per cell). Returns how
 * many were read; -1 if the list could not be read. */
static long from_checkpoints(ts_orch_t *o, found_set_t *s)
{
    char stream[64], filter[96];
    ts_bus_ckpt_stream(stream, sizeof stream, o->world);
    snprintf(filter, sizeof filter, "cell.%" PRIu32 ".*.*.*.*.checkpoint", o->world);
    char **subjects = NULL;
    size_t n = 0;
    ts_status_t st = ts_bus_stream_subjects(o->bus, stream, filter, &subjects, &n);
    if (st == TS_ERR_NOT_FOUND) return 0;
    if (st != TS_OK) return -1;
    long read = 0;
    for (size_t i = 0; i < n; i++) {
        ts_bus_msg_t *m = NULL;
        if (ts_bus_last_msg(o->bus, stream, subjects[i], &m) != TS_OK) continue;
        Tessera__V1__Checkpoint *cp =
            tessera__v1__checkpoint__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
        ts_bus_msg_destroy(m);
        ts_cell_t cell;
        if (cp != NULL && ts_proto_cell_get(cp->cell, &cell) == TS_OK && cell.world == o->world) {
            found_note(s, &cell, cp->epoch, cp->owner, "checkpoint");
            read++;
        }
        if (cp != NULL) tessera__v1__checkpoint__free_unpacked(cp, NULL);
    }
    ts_bus_free_subjects(subjects, n);
    return read;
}

/* Whether the world left traces of an earlier life: heartbeats listing
 * cells, checkpoints or inputs. */
static bool world_has_history(ts_orch_t *o)
{
    pthread_mutex_lock(&rb.mu);
    bool listed = rb.cells.len > 0;
    pthread_mutex_unlock(&rb.mu);
    if (listed || o->ncells > 0) return true;
    char stream[64];
    ts_bus_stream_state_t ss;
    ts_bus_input_stream(stream, sizeof stream, o->world);
    if (ts_bus_stream_state(o->bus, stream, &ss) == TS_OK && ss.last_seq > 0) return true;
    ts_bus_ckpt_stream(stream, sizeof stream, o->world);
    if (ts_bus_stream_state(o->bus, stream, &ss) == TS_OK && ss.last_seq > 0) return true;
    return false;
}

/* Fills in what the sources left open: owners (the layout's for roots, the
 * parent's or the first worker otherwise), states, and epoch + 1. */
static void settle(ts_orch_t *o, found_set_t *s)
{
    for (size_t i = 0; i < s->n; i++) {
        found_t *f = &s->v[i];
        if (!f->e.owner[0]) {
            ts_cell_t root = f->e.cell;
            root.depth = 0;
            root.sub = 0;
            const ts_cell_entry_t *l = ts_layout_cell(&o->layout, root.cx, root.cy);
            if (l != NULL)
                ts_strlcpy(f->e.owner, l->owner, sizeof f->e.owner);
            else if (o->layout.nworkers > 0)
                ts_strlcpy(f->e.owner, o->layout.workers[0], sizeof f->e.owner);
        }
        if (!f->state_known) {
            f->e.state = TS_CELL_ACTIVE;
            ts_cell_t kids[4];
            if (ts_cell_children(&f->e.cell, kids) == TS_OK) {
                for (int k = 0; k < 4; k++) {
                    if (ts_cellmap_get(&s->index, &kids[k]) != NULL) f->e.state = TS_CELL_SPLIT;
                }
            }
        }
        f->e.epoch++;
    }
}

/* Writes the registry back. False if Redis failed (tried again later). */
static bool rebuild(ts_orch_t *o, const char *why, uint64_t now)
{
    found_set_t s = {0};
    ts_cellmap_init(&s.index);
    from_copy(o, &s);
    from_heartbeats(o, &s, now);
    long ncheckpoints = from_checkpoints(o, &s);
    if (ncheckpoints < 0)
        ts_warn("registry rebuild: cannot list the checkpoints (NATS unreachable?); using the copy and the "
                "heartbeats only");
    settle(o, &s);
    size_t beating = 0, written = 0;
    uint64_t max_epoch = 0;
    ts_cell_entry_t *entries = calloc(s.n + 1, sizeof *entries);
    uint64_t *versions = calloc(s.n + 1, sizeof *versions);
    size_t n = 0;
    for (size_t i = 0; entries && versions && i < s.n; i++) {
        if (!s.v[i].e.owner[0]) continue; /* no worker configured at all */
        entries[n++] = s.v[i].e;
        beating += s.v[i].owner_beating;
        if (s.v[i].e.epoch > max_epoch) max_epoch = s.v[i].e.epoch;
    }
    /* past every version anyone was handed: a gap for every listener */
    uint64_t floor = ts_now_us() / 1000;
    if (rb.hw_version >= floor) floor = rb.hw_version + 1;
    ts_status_t st = entries && versions ? TS_OK : TS_ERR_NOMEM;
    if (st == TS_OK && ts_leader_held(o->leader))
        st = ts_registry_rebuild(o->reg, &o->layout.world, entries, n, floor, versions);
    else if (st == TS_OK)
        st = TS_ERR_UNAVAILABLE;
    if (st == TS_OK) {
        for (size_t i = 0; i < n; i++) {
            if (versions[i] == 0) continue;
            written++;
            ts_orch_announce(o, &entries[i], versions[i]);
            if (versions[i] > rb.hw_version) rb.hw_version = versions[i];
        }
        atomic_fetch_add(&rb.rebuilds, 1);
        ts_error("registry of world %" PRIu32
                 " was lost (%s): rebuilt %zu cells (%zu held by beating workers, "
                 "%ld checkpoints read), epochs continue upward (highest now %" PRIu64
                 "), registry version %" PRIu64,
                 o->world, why, written, beating, ncheckpoints, max_epoch, rb.hw_version);
        o->world_written = false; /* the metadata and any root cell nobody knew, then a full read */
        o->cells_stale = true;
    } else if (st != TS_ERR_UNAVAILABLE || o->reg) {
        ts_warn("registry rebuild of world %" PRIu32 " failed: %s; trying again", o->world,
                ts_status_str(st));
        if (st != TS_ERR_NOMEM && st != TS_ERR_UNAVAILABLE) ts_orch_registry_broken(o, st);
    }
    free(entries);
    free(versions);
    free(s.v);
    ts_cellmap_free(&s.index);
    return st == TS_OK;
}

/* Creates the world's streams again if they are gone (a lost JetStream
 * store), so inputs are stored again even if no worker is there to do it. */
static void check_streams(ts_orch_t *o, uint64_t now)
{
    if (now < rb.next_stream_check_us || !ts_bus_connected(o->bus)) return;
    rb.next_stream_check_us = now + STREAM_CHECK_US;
    char stream[64];
    ts_bus_stream_state_t ss;
    ts_bus_input_stream(stream, sizeof stream, o->world);
    ts_status_t st = ts_bus_stream_state(o->bus, stream, &ss);
    if (st != TS_ERR_NOT_FOUND) {
        ts_bus_ckpt_stream(stream, sizeof stream, o->world);
        st = ts_bus_stream_state(o->bus, stream, &ss);
        if (st != TS_ERR_NOT_FOUND) return;
    }
    if (ts_orch_streams_ensure(o) == TS_OK) {
        atomic_fetch_add(&rb.stream_resets, 1);
        ts_error("stream %s of world %" PRIu32 " was gone (JetStream lost its store?); created the world's "
                 "streams again: inputs stored before are lost, owners resume on the new stream",
                 stream, o->world);
    }
}

bool ts_rebuild_poll(ts_orch_t *o, uint64_t now)
{
    if (o->version > rb.hw_version) rb.hw_version = o->version;
    check_streams(o, now);
    if (!o->reg || (o->world_written && now < rb.next_probe_us)) return false;
    rb.next_probe_us = now + TS_REBUILD_PROBE_MS * 1000ULL;
    bool has_meta = false;
    uint64_t version = 0;
    ts_status_t st = ts_registry_world_probe(o->reg, o->world, &has_meta, &version);
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return true;
    }
    if (version > rb.hw_version && has_meta) rb.hw_version = version;
    char why[128];
    if (!has_meta) {
        if (!world_has_history(o)) return false; /* a new world: written at epoch 1 */
        snprintf(why, sizeof why, "world metadata missing");
    } else if (version < rb.hw_version) {
        snprintf(why, sizeof why, "registry version %" PRIu64 " after %" PRIu64, version, rb.hw_version);
    } else {
        rb.waiting_since_us = 0;
        return false;
    }
    /* the workers' heartbeats are the best source: give them one TTL to
     * arrive after this process started */
    uint64_t ttl_us = (uint64_t)o->cfg->orch_hb_ttl_ms * 1000;
    if (now - rb.started_us < ttl_us) {
        if (rb.waiting_since_us == 0) {
            rb.waiting_since_us = now;
            ts_warn("registry of world %" PRIu32
                    " looks lost (%s); listening to worker heartbeats for %lld ms "
                    "before rebuilding it",
                    o->world, why, (long long)o->cfg->orch_hb_ttl_ms);
        }
        rb.next_probe_us = 0;
        return true;
    }
    rebuild(o, why, now);
    rb.waiting_since_us = 0;
    return true;
}
