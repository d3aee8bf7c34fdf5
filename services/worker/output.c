/* What a worker tick publishes: Departures into the cell's own input stream,
 * transfers and forwarded inputs into neighbours' input streams, state
 * deltas, checkpoints and heartbeats. Nothing here waits for the network:
 * every message goes to the publisher thread's queue (publisher.c).
 *
 * JetStream publishes are asynchronous. Each one takes a slot of the
 * in-flight table, keyed by its Ts-Seq; the ack callback (a nats.c thread)
 * writes the outcome into the slot and the tick thread reads it on its next
 * tick (ts_worker_collect_publishes). A failed publish is sent again with
 * the same bytes and message id, so JetStream stores it once. Per
 * destination cell at most one outbox message is in flight and they go in
 * outbox order, so an entity's Transfer is always stored before the inputs
 * forwarded after it; a transfer is announced to gateways (`left`) only once
 * it is stored.
 *
 * No message is larger than the zone's msg_max (NATS max_payload less room
 * for headers): an outbox entry too large for one message goes as several,
 * one after the other, and is done when the last one is stored; each has
 * its own message id, the entry's id plus the range of items it carries,
 * so a new owner that publishes the same entry again from a checkpoint cuts
 * it the same way and JetStream stores each range once. Queued Departures go
 * as many per message as fit, the rest in the next one. A message that
 * still does not fit (a bug) is not published: it is logged with its cell
 * and counted (zone stats.oversized, publishes_failed), never dropped
 * silently. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

static ts_flight_t *slot_of(ts_worker_t *w, uint64_t seq)
{
    return &w->flights[seq % TS_FLIGHT_SLOTS];
}

void ts_worker_on_publish_outcome(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok,
                                  uint64_t stream_seq)
{
    ts_worker_t *w = ud;
    ts_origin_t origin;
    if (ts_subject_input_origin(subject, &origin) != TS_OK) return; /* checkpoints: nothing waits for them */
    ts_flight_t *f = slot_of(w, seq);
    if (atomic_load(&f->seq) != seq) return;
    atomic_store(&f->state, ok ? TS_FLIGHT_OK : TS_FLIGHT_FAILED);
}

/* Returns the outcome of publish seq and frees its slot when it is final. A
 * slot taken over by a later publish means the outcome is unknown: it is
 * reported as failed, so the message goes again (de-duplicated). */
static int outcome(ts_worker_t *w, uint64_t seq)
{
    ts_flight_t *f = slot_of(w, seq);
    if (atomic_load(&f->seq) != seq) return TS_FLIGHT_FAILED;
    int st = atomic_load(&f->state);
    if (st != TS_FLIGHT_PENDING) atomic_store(&f->state, TS_FLIGHT_FREE);
    return st == TS_FLIGHT_FREE ? TS_FLIGHT_FAILED : st;
}

/* False (and logged, counted) if a message of len bytes is larger than the
 * zone's messages may be. */
static bool fits(ts_worker_t *w, ts_zone_t *z, const char *what, size_t len)
{
    if (len <= z->msg_max) return true;
    w->stats.publishes_failed++;
    uint64_t n = ++z->stats.oversized;
    if ((n & (n - 1)) == 0) /* the 1st, 2nd, 4th, ... time: loud, not a flood */
        ts_error("cell %s: %s of %zu bytes is larger than the %zu bytes a message may have; not published "
                 "(%" PRIu64 " such messages so far)",
                 z->key, what, len, z->msg_max, n);
    return false;
}

/* Queues buf (taken over, freed in any case) for an asynchronous JetStream
 * publish as Ts-Seq hdr->seq, tracked in its flight slot. TS_ERR_BUSY:
 * nothing sent, try again next tick. */
static ts_status_t publish_tracked(ts_worker_t *w, const char *subj, ts_bus_hdr_t *hdr, uint8_t *buf,
                                   size_t len)
{
    ts_flight_t *f = slot_of(w, hdr->seq);
    if (atomic_load(&f->state) == TS_FLIGHT_PENDING) {
        free(buf);
        return TS_ERR_BUSY;
    }
    atomic_store(&f->seq, hdr->seq);
    atomic_store(&f->state, TS_FLIGHT_PENDING);
    if (!ts_publisher_push(w, subj, hdr, buf, len, true, true)) {
        atomic_store(&f->state, TS_FLIGHT_FREE);
        w->stats.publishes_delayed++;
        return TS_ERR_BUSY;
    }
    return TS_OK;
}

void ts_worker_publish_departures(ts_worker_t *w, ts_zone_t *z)
{
    if (z->ndeps == 0 || z->deps_pub) return; /* none, or one already in flight */
    uint8_t *buf = NULL;
    size_t len = 0, count = 0;
    if (ts_zone_pack_departures_chunk(z, &buf, &len, &count) != TS_OK) return;
    if (!fits(w, z, "a Departure batch", len)) {
        free(buf);
        return;
    }
    char subj[TS_SUBJECT_MAX], msg_id[128];
    ts_subject_input(subj, sizeof(subj), &z->cell, TS_ORIGIN_WORKER);
    uint64_t pub_seq = ++w->seq;
    snprintf(msg_id, sizeof(msg_id), "dep-%s-%016" PRIx64 "-%" PRIu64, w->id, w->boot_nonce, pub_seq);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH,
                        .epoch = z->epoch,
                        .seq = pub_seq,
                        .count = (uint32_t)count,
                        .msg_id = msg_id};
    if (publish_tracked(w, subj, &hdr, buf, len) == TS_OK) {
        z->deps_in_flight = count;
        z->deps_pub = pub_seq;
    }
}

/* True if an entry before i goes to the same cell and is not stored yet. */
static bool waits_for_earlier(const ts_zone_t *z, size_t i)
{
    for (size_t j = 0; j < i; j++) {
        const ts_zone_out_t *o = &z->out[j];
        if ((o->ntransfers || o->ninputs) && ts_cell_eq(&o->dest, &z->out[i].dest)) return true;
    }
    return false;
}

void ts_worker_publish_outboxes(ts_worker_t *w, ts_zone_t *z)
{
    for (size_t i = 0; i < z->nout; i++) {
        ts_zone_out_t *o = &z->out[i];
        if ((o->ntransfers == 0 && o->ninputs == 0) || o->pub_seq || waits_for_earlier(z, i)) continue;
        const ts_cell_entry_t *de = ts_worker_find_entry(w, &o->dest);
        if (!de) continue; /* not in the registry view (yet): keep it */
        uint8_t *buf = NULL;
        size_t len = 0, count = 0, total = o->ntransfers + o->ninputs;
        if (ts_zone_pack_outbox_chunk(z, i, o->sent, &buf, &len, &count) != TS_OK) continue;
        if (!fits(w, z, o->ntransfers ? "a Transfer batch" : "a batch of forwarded inputs", len)) {
            free(buf);
            continue;
        }
        char subj[TS_SUBJECT_MAX], dest[TS_CELL_STR_MAX], msg_id[512];
        /* forwarded inputs under their first publisher's origin: the cell
         * the entity is in checks what that publisher may do to it */
        ts_subject_input(subj, sizeof(subj), &o->dest, o->origin);
        ts_cell_format(&o->dest, dest, sizeof(dest));
        if (!o->id_seq) o->id_seq = ++w->seq; /* sealed from here on */
        int n;
        if (o->marker_seq) /* the same Departure replayed by a later owner publishes the same id */
            n = snprintf(msg_id, sizeof(msg_id), "xfer-%s-m%" PRIu64 "-%s", z->key, o->marker_seq, dest);
        else
            /* forwarded inputs are de-duplicated by (entity, seq) at the destination */
            n = snprintf(msg_id, sizeof(msg_id), "fwd-%s-%016" PRIx64 "-%" PRIu64, w->id, w->boot_nonce,
                         o->id_seq);
        if (count < total && n > 0 && (size_t)n < sizeof(msg_id)) /* one of several: which items */
            snprintf(msg_id + n, sizeof(msg_id) - (size_t)n, "-%zu+%zu", o->sent, count);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH,
                            .epoch = de->epoch,
                            .seq = ++w->seq,
                            .count = (uint32_t)count,
                            .msg_id = msg_id};
        ts_status_t st = publish_tracked(w, subj, &hdr, buf, len);
        if (st == TS_OK) {
            o->pub_seq = hdr.seq;
            o->chunk = count;
        } else if (st == TS_ERR_BUSY)
            break; /* the bus is full: the rest waits for the next tick */
    }
}

void ts_worker_collect_publishes(ts_worker_t *w, ts_zone_t *z)
{
    if (z->deps_pub) {
        int st = outcome(w, z->deps_pub);
        if (st == TS_FLIGHT_OK) {
            ts_zone_departures_done(z);
        } else if (st == TS_FLIGHT_FAILED) {
            ts_warn("cell %s: %zu departures not stored; sending them again", z->key, z->deps_in_flight);
            w->stats.publishes_failed++;
            z->deps_in_flight = 0;
            z->deps_pub = 0;
        }
    }
    bool done = false;
    for (size_t i = 0; i < z->nout; i++) {
        ts_zone_out_t *o = &z->out[i];
        if (!o->pub_seq) continue;
        int st = outcome(w, o->pub_seq);
        if (st == TS_FLIGHT_OK) {
            o->pub_seq = 0;
            o->sent += o->chunk;
            o->chunk = 0;
            if (o->sent < o->ntransfers + o->ninputs) continue; /* the next message goes next tick */
            const ts_cell_entry_t *de = ts_worker_find_entry(w, &o->dest);
            if (de && strcmp(de->owner, w->id) != 0) w->stats.transfers_out_remote += o->ntransfers;
            ts_zone_outbox_done(z, i);
            done = true;
        } else if (st == TS_FLIGHT_FAILED) {
            char dest[TS_CELL_STR_MAX];
            ts_cell_format(&o->dest, dest, sizeof(dest));
            ts_warn("cell %s: %zu of %zu entities / %zu inputs for %s not stored; sending them again", z->key,
                    o->chunk, o->ntransfers, o->ninputs, dest);
            w->stats.publishes_failed++;
            o->pub_seq = 0; /* sealed: the same bytes and id go again */
            o->chunk = 0;
        }
    }
    if (done) ts_zone_outbox_clear(z);
}

void ts_worker_publish_state(ts_worker_t *w, ts_zone_t *z, bool full)
{
    ts_ghost_publish(w, z); /* the border band first: neighbours see it as early as clients */
    uint8_t **bufs = NULL;
    size_t *lens = NULL, nparts = 0;
    if (ts_zone_pack_delta(z, w->tick, full, w->id, &bufs, &lens, &nparts) != TS_OK || nparts == 0) return;
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_STATE);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_STATE_DELTA, .epoch = z->epoch, .seq = w->tick};
    for (size_t i = 0; i < nparts; i++)
        if (!fits(w, z, "a state delta part", lens[i]))
            free(bufs[i]);
        else if (!ts_publisher_push(w, subj, &hdr, bufs[i], lens[i], false, false))
            w->stats.state_dropped++;
    free(bufs);
    free(lens);
}

/* A checkpoint larger than one message is written part 1..n-1 first, on
 * subjects of its generation's parity, and part 0 (the head the loader reads
 * first) last, so a loader that sees a head finds its parts; the previous
 * generation's parts stay intact meanwhile. */
void ts_worker_publish_checkpoint(ts_worker_t *w, ts_zone_t *z)
{
    uint8_t **bufs = NULL;
    size_t *lens = NULL, nparts = 0;
    uint64_t gen = ++z->ckpt_generation;
    if (ts_zone_pack_checkpoint_parts(z, w->tick, w->id, false, gen, &bufs, &lens, &nparts) != TS_OK) return;
    for (size_t i = 0; i < nparts; i++)
        if (!fits(w, z, "a checkpoint part", lens[i])) {
            ts_zone_free_parts(bufs, lens, nparts);
            return;
        }
    char head[TS_SUBJECT_MAX], subj[TS_SUBJECT_MAX + 48];
    ts_subject_cell(head, sizeof(head), &z->cell, TS_SUBJ_CHECKPOINT);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_CHECKPOINT, .epoch = z->epoch, .seq = z->last_applied_seq};
    bool queued = true;
    for (size_t i = nparts; i-- > 0;) {
        if (i > 0)
            snprintf(subj, sizeof(subj), "%s.%" PRIu64 ".%zu", head, gen % 2, i);
        else
            snprintf(subj, sizeof(subj), "%s", head);
        /* the queue takes each buffer over; the head goes only after all its parts */
        if (queued)
            queued = ts_publisher_push(w, subj, &hdr, bufs[i], lens[i], true, false);
        else
            free(bufs[i]);
        bufs[i] = NULL;
    }
    if (!queued) ts_debug("cell %s: checkpoint put off, the publish queue is full", z->key);
    ts_zone_free_parts(bufs, lens, nparts);
    /* it names this worker's tick marks (unless the cell still replays):
     * whatever stops them describing the cell from here on is listed */
    ts_binding_t *b = ts_worker_find_binding(w, &z->cell);
    if (b && b->zone == z && !z->replaying) b->anchored = true;
}

void ts_worker_heartbeat(ts_worker_t *w)
{
    w->last_hb_us = ts_mono_us();
    size_t n = w->nbind ? w->nbind : 1;
    Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
    Tessera__V1__CellLoad *loads = calloc(n, sizeof(*loads));
    Tessera__V1__CellLoad **lp = calloc(n, sizeof(*lp));
    Tessera__V1__CellId *ids = calloc(n, sizeof(*ids));
    /* the counter flows of the cells that have any (few: split and merged ones) */
    size_t nfl = 0, fl_used = 0;
    for (size_t i = 0; i < w->nbind; i++)
        nfl += w->bindings[i]->zone->nflows > 0;
    ts_zone_flows_pb_t *fl = nfl ? calloc(nfl, sizeof(*fl)) : NULL;
    if (!loads || !lp || !ids || (nfl && !fl)) goto cleanup;
    ts_zone_stats_t total = w->stats.zones;
    uint32_t entities = 0;
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i]->zone;
        total.applied += z->stats.applied;
        total.forwarded += z->stats.forwarded;
        total.duplicates += z->stats.duplicates;
        total.dropped += z->stats.dropped;
        total.transfers_in += z->stats.transfers_in;
        total.transfers_out += z->stats.transfers_out;
        entities += (uint32_t)ts_zone_entities(z);
        tessera__v1__cell_load__init(&loads[i]);
        ts_proto_cell_init(&ids[i], &z->cell);
        loads[i].cell = &ids[i];
        loads[i].epoch = z->epoch;
        loads[i].entities = (uint32_t)ts_zone_entities(z);
        loads[i].inputs_applied = z->stats.applied;
        loads[i].last_applied_seq = z->last_applied_seq;
        loads[i].n_counters = ts_zone_counters_len(z); /* 0 when all are 0 */
        loads[i].counters = z->game.counters;
        if (z->nflows > 0) {
            ts_zone_flows_pb_t *f = &fl[fl_used++];
            loads[i].n_flows = ts_zone_flows_to_pb(z, f);
            loads[i].flows = f->p;
        }
        const ts_cell_entry_t *e = ts_worker_find_entry(w, &z->cell);
        if (e && e->epoch == z->epoch) {
            loads[i].has_state = true;
            loads[i].state = e->state == TS_CELL_HANDOVER ? TESSERA__V1__CELL_STATE__CELL_ACTIVE
                                                          : (Tessera__V1__CellState)e->state;
        }
        lp[i] = &loads[i];
    }
    double samples[TS_TICK_SAMPLES];
    size_t ns = w->tick_samples < TS_TICK_SAMPLES ? w->tick_samples : TS_TICK_SAMPLES;
    memcpy(samples, w->tick_ms, ns * sizeof(double));
    hb.worker = w->id;
    hb.instance = w->instance;
    hb.time_ms = ts_now_us() / 1000;
    hb.ticks = w->tick;
    hb.ticks_missed = w->ticks_missed;
    hb.tick_max_ms = w->tick_max_ms;
    w->tick_max_ms = 0;
    hb.entities = entities;
    hb.inputs_applied = total.applied;
    hb.inputs_forwarded = total.forwarded;
    hb.inputs_dropped = total.dropped;
    hb.inputs_duplicate = total.duplicates;
    hb.transfers_out = total.transfers_out;
    hb.transfers_in = total.transfers_in;
    hb.transfers_out_remote = w->stats.transfers_out_remote;
    hb.tick_p50_ms = ts_percentile(samples, ns, 50);
    hb.tick_p99_ms = ts_percentile(samples, ns, 99);
    hb.overrun_pct = w->tick ? 100.0 * (double)w->overruns / (double)w->tick : 0;
    hb.bytes_out = ts_bus_bytes_out(w->bus);
    hb.capacity = (uint32_t)w->cfg->worker_capacity;
    hb.n_cells = w->nbind;
    hb.cells = lp;
    hb.handovers_out = w->stats.handovers_out;
    hb.handovers_in = w->stats.handovers_in;
    hb.recovered = w->stats.recovered;
    hb.draining = w->draining;
    hb.publishes_failed = w->stats.publishes_failed;
    hb.cells_binding = w->binding.len;

    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_proto_pack(&hb.base, &buf, &len) == TS_OK) {
        char subj[TS_SUBJECT_MAX];
        ts_subject_heartbeat(subj, sizeof(subj), w->id);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_HEARTBEAT, .seq = w->tick};
        if (!ts_publisher_push(w, subj, &hdr, buf, len, false, false)) w->stats.state_dropped++;
    }
cleanup:
    free(fl);
    free(loads);
    free(lp);
    free(ids);
}
