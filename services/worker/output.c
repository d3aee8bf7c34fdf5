/* What a worker tick publishes: Departures into the cell's own input stream,
 * transfers and forwarded inputs into neighbours' input streams (both
 * acknowledged by JetStream before the tick goes on), state deltas,
 * checkpoints and heartbeats. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define JS_TIMEOUT_MS 500
#define JS_ATTEMPTS 3

static ts_status_t js_publish_retry(ts_worker_t *w, const char *subj, const ts_bus_hdr_t *hdr, const uint8_t *buf,
                                    size_t len)
{
    ts_status_t st = TS_ERR_BUS;
    uint64_t seq = 0;
    for (int attempt = 0; attempt < JS_ATTEMPTS; attempt++) {
        st = ts_bus_js_publish(w->bus, subj, hdr, buf, len, JS_TIMEOUT_MS, &seq);
        if (st == TS_OK) break;
    }
    ts_debug("published %u items to %s as stream seq %llu (id %s): %s", hdr->count, subj, (unsigned long long)seq,
             hdr->msg_id ? hdr->msg_id : "-", ts_status_str(st));
    return st;
}

void ts_worker_publish_departures(ts_worker_t *w, ts_zone_t *z)
{
    if (z->ndeps == 0) return;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_zone_pack_departures(z, &buf, &len) != TS_OK) return;
    char subj[TS_SUBJECT_MAX], msg_id[256];
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_INPUT);
    /* unique per publish (a tick may publish a zone's departures twice: at the
     * tick and at a handover freeze); retries below reuse it */
    uint64_t pub_seq = ++w->seq;
    snprintf(msg_id, sizeof(msg_id), "dep-%s-%016" PRIx64 "-%" PRIu64, w->id, w->boot_nonce, pub_seq);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH,
                        .epoch = z->epoch,
                        .seq = pub_seq,
                        .count = (uint32_t)z->ndeps,
                        .msg_id = msg_id};
    ts_status_t st = js_publish_retry(w, subj, &hdr, buf, len);
    free(buf);
    if (st == TS_OK)
        ts_zone_departures_sent(z);
    else
        ts_warn("cell %s: cannot publish %zu departures (%s); retrying next tick", z->key, z->ndeps,
                ts_status_str(st));
}

void ts_worker_publish_outboxes(ts_worker_t *w, ts_zone_t *z)
{
    for (size_t i = 0; i < z->nout; i++) {
        ts_zone_out_t *o = &z->out[i];
        if (o->ntransfers == 0 && o->ninputs == 0) continue;
        uint8_t *buf = NULL;
        size_t len = 0;
        char subj[TS_SUBJECT_MAX], dest[TS_CELL_STR_MAX], msg_id[512];
        ts_subject_cell(subj, sizeof(subj), &o->dest, TS_SUBJ_INPUT);
        ts_cell_format(&o->dest, dest, sizeof(dest));
        uint64_t pub_seq = ++w->seq;
        if (o->marker_seq)
            /* the same Departure replayed by a later owner publishes the same id */
            snprintf(msg_id, sizeof(msg_id), "xfer-%s-m%" PRIu64 "-%s", z->key, o->marker_seq, dest);
        else
            /* unique per publish: forwarded inputs are de-duplicated by (entity, seq) */
            snprintf(msg_id, sizeof(msg_id), "fwd-%s-%016" PRIx64 "-%" PRIu64, w->id, w->boot_nonce, pub_seq);
        const ts_cell_entry_t *de = ts_worker_find_entry(w, &o->dest);
        ts_status_t st = de ? ts_zone_pack_outbox(z, i, &buf, &len) : TS_ERR_UNKNOWN_CELL;
        if (st == TS_OK) {
            ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH,
                                .epoch = de->epoch,
                                .seq = pub_seq,
                                .count = (uint32_t)(o->ninputs + o->ntransfers),
                                .msg_id = msg_id};
            st = js_publish_retry(w, subj, &hdr, buf, len);
        }
        free(buf);
        if (st != TS_OK) {
            ts_warn("cell %s: cannot hand %zu entities / %zu inputs to %s (%s); retrying next tick", z->key,
                    o->ntransfers, o->ninputs, dest, ts_status_str(st));
            ts_zone_outbox_failed(z, i);
            continue;
        }
        if (strcmp(de->owner, w->id) != 0) w->stats.transfers_out_remote += o->ntransfers;
        o->ntransfers = 0;
        o->ninputs = 0;
    }
    ts_zone_outbox_clear(z);
}

void ts_worker_publish_state(ts_worker_t *w, ts_zone_t *z, bool full)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_zone_pack_delta(z, w->tick, full, w->id, &buf, &len) != TS_OK || !buf) return;
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_STATE);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_STATE_DELTA, .epoch = z->epoch, .seq = w->tick};
    ts_status_t st = ts_bus_publish(w->bus, subj, &hdr, buf, len);
    if (st != TS_OK) ts_debug("cell %s: state publish failed: %s", z->key, ts_status_str(st));
    free(buf);
}

void ts_worker_publish_checkpoint(ts_worker_t *w, ts_zone_t *z)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_zone_pack_checkpoint(z, w->tick, w->id, false, &buf, &len) != TS_OK) return;
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_CHECKPOINT);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_CHECKPOINT, .epoch = z->epoch, .seq = z->last_applied_seq};
    ts_status_t st = ts_bus_js_publish_async(w->bus, subj, &hdr, buf, len);
    if (st != TS_OK) ts_warn("cell %s: checkpoint publish failed: %s", z->key, ts_status_str(st));
    free(buf);
}

void ts_worker_heartbeat(ts_worker_t *w)
{
    w->last_hb_us = ts_mono_us();
    ts_status_t st = ts_registry_worker_alive(w->reg, w->id, w->cfg->orch_hb_ttl_ms, (uint32_t)w->cfg->worker_capacity);
    if (st != TS_OK) ts_warn("cannot refresh liveness in the registry: %s", ts_status_str(st));

    size_t n = w->nbind ? w->nbind : 1;
    Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
    Tessera__V1__CellLoad *loads = calloc(n, sizeof(*loads));
    Tessera__V1__CellLoad **lp = calloc(n, sizeof(*lp));
    Tessera__V1__CellId *ids = calloc(n, sizeof(*ids));
    if (!loads || !lp || !ids) goto cleanup;
    ts_zone_stats_t total = w->stats.zones;
    uint32_t entities = 0;
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i].zone;
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
        lp[i] = &loads[i];
    }
    double samples[TS_TICK_SAMPLES];
    size_t ns = w->tick_samples < TS_TICK_SAMPLES ? w->tick_samples : TS_TICK_SAMPLES;
    memcpy(samples, w->tick_ms, ns * sizeof(double));
    hb.worker = w->id;
    hb.time_ms = ts_now_us() / 1000;
    hb.ticks = w->tick;
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

    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_proto_pack(&hb.base, &buf, &len) == TS_OK) {
        char subj[TS_SUBJECT_MAX];
        ts_subject_heartbeat(subj, sizeof(subj), w->id);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_HEARTBEAT, .seq = w->tick};
        ts_bus_publish(w->bus, subj, &hdr, buf, len);
        free(buf);
    }
cleanup:
    free(loads);
    free(lp);
    free(ids);
}
