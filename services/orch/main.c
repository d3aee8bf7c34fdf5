/* tessera-orch: the registry's only writer. Writes the world layout, holds
 * the leader lock, serves the ctl API, drives handovers and drains, recovers
 * the cells of dead workers and rebalances load; standbys watch heartbeats
 * and wait for the lock.
 *
 * One main thread does the leader's work as an event loop: it sleeps on one
 * condition variable until a ctl request or a handover answer arrives (nats.c
 * callbacks queue them, bounded, and wake it) or the next timer is due
 * (liveness poll, handover timeouts, rebalancing), then handles what is
 * there without waiting for any worker. Redis calls stay on this thread and
 * are O(change): one pipelined liveness read per period, one round trip per
 * batch of compare-and-sets.
 *
 * Invariants: only the holder of the leader lock writes to the registry and
 * serves tessera.ctl.<world>.*; the main loop notices a lost lock within one
 * iteration and every registry write re-checks it; a clean shutdown releases
 * the lock and frees everything. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "orch.h"
#include "rebuild.h"
#include "tessera/log.h"
#include "tessera/service.h"
#include "tessera/util.h"

#define LOOP_MS 50

static const ts_service_t service = {
    .name = "tessera-orch",
    .usage = "usage: tessera-orch [--key=value ...]\n"
             "Writes the world layout (world.*) into the Redis registry and, while it holds\n"
             "the leader lock orch.<world.id> (orch.lock_ttl_ms), drives the cells: live\n"
             "handovers, drains, splits and merges requested on\n"
             "tessera.ctl.<world>.{handover,drain,split,merge,stats}, automatic split and\n"
             "merge of cells by load (split.*, merge.*, world.max_depth),\n"
             "crash recovery of the cells of dead workers (liveness TTL orch.hb_ttl_ms) and\n"
             "load rebalancing (orch.rebalance*). Other instances stand by.\n\n",
    .config_exit = 1,
};

/* "tessera.worker.*.hb", any nats.c thread: each heartbeat is decoded once
 * for the liveness and load table and for the registry rebuild's memory. */
static void on_heartbeat(void *ud, const ts_bus_msg_t *msg)
{
    ts_orch_t *o = ud;
    Tessera__V1__Heartbeat *hb =
        tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    uint64_t now = ts_mono_us();
    if (ts_workers_record(o->workers, hb, ts_bus_msg_subject(msg), now) == TS_OK)
        ts_rebuild_note_heartbeat(hb, now);
    if (hb) tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

ts_status_t ts_orch_streams_ensure(ts_orch_t *o)
{
    const ts_config_t *cfg = o->cfg;
    ts_bus_streams_t opts = {.storage = cfg->stream_storage,
                             .max_age_s = cfg->stream_max_age_s,
                             .max_bytes = cfg->stream_max_bytes,
                             .replicas = (int)cfg->stream_replicas};
    return ts_bus_streams_ensure(o->bus, o->world, &opts);
}

/* Connects to NATS and creates the world's streams, retrying both. */
static ts_status_t connect_bus(ts_orch_t *o)
{
    const ts_config_t *cfg = o->cfg;
    uint64_t deadline = ts_mono_us() + TS_SERVICE_CONNECT_MS * 1000ULL;
    ts_status_t st = ts_service_connect_bus(cfg, "tessera-orch", TS_SERVICE_CONNECT_MS, &o->bus);
    if (st != TS_OK) return st;
    for (;;) {
        st = ts_orch_streams_ensure(o);
        if (st == TS_OK) return TS_OK;
        ts_debug("streams of world %u not created yet: %s", o->world, ts_status_str(st));
        if (!ts_service_retry_wait(deadline)) break;
    }
    if (!ts_service_stopping())
        ts_error("cannot create the streams of world %u on NATS at %s: %s", o->world, cfg->nats_url,
                 ts_status_str(st));
    return st;
}

static void gain_lead(ts_orch_t *o, uint64_t now)
{
    ts_info("leader of world %u (lock %s, holder %s, ttl %lld ms)", o->world, ts_leader_name(o->leader),
            ts_leader_holder(o->leader), (long long)ts_leader_ttl_ms(o->leader));
    o->leading = true;
    o->leading_since_us = now;
    o->world_written = false;
    o->next_write_us = 0;
    o->next_sweep_us = 0;
    o->cells_stale = true;
    o->healthy_since_us = 0;
    ts_liveness_reset(&o->live);
    ts_rebalance_init(o);
}

static void lose_lead(ts_orch_t *o)
{
    ts_warn("lost the leader lock %s; standing by", ts_leader_name(o->leader));
    o->leading = false;
    ts_handovers_reset(o->ho, "lost the leader lock");
    ts_ctl_serve(o->ctl, false);
}

/* One iteration of the leader's work; true if more is waiting. */
static bool lead(ts_orch_t *o, uint64_t now)
{
    if (ts_rebuild_poll(o, now)) return false; /* the registry was lost: written back first */
    if (!o->world_written) {
        if (!o->reg || now < o->next_write_us) return false;
        o->next_write_us = now + 1000000;
        if (!ts_orch_write_world(o) || (o->cells_stale && !ts_orch_refresh_cells(o))) return false;
        ts_draining_load(o);
        if (ts_ctl_serve(o->ctl, true) != TS_OK) return false;
        o->world_written = true;
    }
    bool busy = false;
    if (o->reg && o->cells_stale) ts_orch_refresh_cells(o);
    if (o->reg) ts_recovery_poll(o);
    busy |= ts_handovers_poll(o->ho);
    if (ts_leader_held(o->leader)) busy |= ts_ctl_poll(o->ctl);
    if (o->reg && ts_leader_held(o->leader)) ts_rebalance_poll(o);
    if (o->reg && ts_leader_held(o->leader)) ts_split_poll(o);
    busy |= ts_handovers_poll(o->ho);
    if (o->cells_dirty) {
        ts_draining_note_cells(o->drain, o->cells, o->ncells);
        o->cells_dirty = false;
    }
    return busy;
}

/* How long the loop may sleep: until the next timer, at most LOOP_MS. */
static int64_t sleep_ms(ts_orch_t *o, uint64_t now)
{
    int64_t ms = LOOP_MS;
    if (o->leading) {
        uint64_t next = ts_handovers_next_deadline(o->ho);
        if (o->next_sweep_us < next) next = o->next_sweep_us;
        if (next <= now) return 0;
        if ((next - now) / 1000 + 1 < (uint64_t)ms) ms = (int64_t)((next - now) / 1000) + 1;
    }
    return ms;
}

static void run(ts_orch_t *o)
{
    bool standby_logged = false;
    uint64_t status_us = o->cfg->orch_status_ms > 0 ? (uint64_t)o->cfg->orch_status_ms * 1000 : 0;
    uint64_t next_status_us = ts_mono_us() + status_us, next_reconnect_us = 0;

    while (!ts_service_stopping()) {
        uint64_t now = ts_mono_us();
        ts_orch_metrics_beat();
        if (!o->reg && now >= next_reconnect_us) {
            next_reconnect_us = now + 1000000;
            if (ts_registry_connect(&o->reg, o->cfg->redis_url) != TS_OK) {
                ts_registry_destroy(o->reg);
                o->reg = NULL;
            }
        }
        bool held = ts_leader_held(o->leader);
        if (held && !o->leading)
            gain_lead(o, now);
        else if (!held && o->leading)
            lose_lead(o);
        bool busy = false;
        if (o->leading) {
            standby_logged = false;
            busy = lead(o, now);
        } else if (!standby_logged && ts_leader_reached(o->leader)) {
            ts_info("standby: lock %s is held by another orchestrator; retrying every %lld ms",
                    ts_leader_name(o->leader), (long long)ts_leader_ttl_ms(o->leader) / 4);
            standby_logged = true;
        }
        ts_workers_check(o->workers, now);
        ts_stats_gauges(&o->stats, o->leading ? ts_hos_count_of(o->ho) : 0,
                        o->leading ? ts_handovers_busy(o->ho) - ts_hos_count_of(o->ho) : 0, o->full_reads);
        if (status_us && now >= next_status_us) {
            ts_workers_log_status(o->workers, now);
            next_status_us = now + status_us;
        }
        if (!busy) {
            int64_t ms = sleep_ms(o, ts_mono_us());
            if (ms > 0) ts_orch_wait(o, ms);
        }
    }
}

static bool check_config(const ts_config_t *cfg)
{
    if (cfg->orch_hb_ttl_ms <= 0) {
        ts_error("orch.hb_ttl_ms: must be > 0, got %lld", (long long)cfg->orch_hb_ttl_ms);
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    ts_config_t cfg;
    char err[512] = "";
    int rc;
    if (!ts_service_init(&service, argc, argv, &cfg, NULL, NULL, &rc)) return rc;
    rc = 1;
    ts_orch_t o = {.cfg = &cfg, .stop = ts_service_stop_flag()};
    ts_orch_wake_init(&o);
    ts_stats_init(&o.stats);
    if (ts_orch_metrics_start(&o) != TS_OK) {
        rc = TS_SERVICE_EXIT_CONFIG;
        goto cleanup;
    }

    if (ts_layout_build(&o.layout, &cfg, err, sizeof err) != TS_OK) {
        ts_error("bad world layout: %s", err);
        goto cleanup;
    }
    o.world = o.layout.world.id;
    for (size_t i = 0; i < o.layout.nworkers; i++) {
        if (ts_layout_count_owned(&o.layout, o.layout.workers[i]) == 0)
            ts_warn("worker %s owns no cell in the layout (more workers than columns?)", o.layout.workers[i]);
    }
    if (!check_config(&cfg)) goto cleanup;
    if (ts_service_connect_registry(&cfg, TS_SERVICE_CONNECT_MS, &o.reg) != TS_OK ||
        connect_bus(&o) != TS_OK) {
        rc = ts_service_stopping() ? 0 : 1;
        goto cleanup;
    }
    ts_liveness_init(&o.live);
    ts_map_init(&o.index);
    if (ts_workers_create(&o.workers, cfg.orch_hb_ttl_ms) != TS_OK || ts_draining_create(&o.drain) != TS_OK ||
        ts_ctl_create(&o.ctl, &o) != TS_OK || ts_handovers_create(&o.ho, &o) != TS_OK ||
        ts_split_create(&o.split, &o) != TS_OK) {
        ts_error("cannot set up the orchestrator's modules");
        goto cleanup;
    }
    ts_rebuild_start();
    if (ts_bus_subscribe(o.bus, "tessera.worker.*.hb", on_heartbeat, &o, &o.hb_sub) != TS_OK) {
        ts_error("cannot subscribe to worker heartbeats on %s", cfg.nats_url);
        goto cleanup;
    }
    if (ts_leader_start(&o.leader, o.world, cfg.redis_url, cfg.orch_lock_ttl_ms) != TS_OK) {
        ts_error("cannot start the leader lock thread");
        goto cleanup;
    }
    ts_info(
        "started: nats %s, redis %s, world %u (%dx%d root cells of %g from %d,%d, workers %s), lock %s as %s",
        cfg.nats_url, cfg.redis_url, o.world, o.layout.world.width, o.layout.world.height,
        o.layout.world.cell_size, o.layout.world.x0, o.layout.world.y0, cfg.world_workers,
        ts_leader_name(o.leader), ts_leader_holder(o.leader));

    ts_orch_metrics_running();
    run(&o);
    ts_info("shutting down");
    rc = 0;

cleanup:
    ts_orch_metrics_stop();     /* first: it reads what is freed below */
    ts_handovers_destroy(o.ho); /* answers what is queued or in flight */
    ts_ctl_destroy(o.ctl);      /* unsubscribes; answers what is queued */
    ts_split_destroy(o.split);
    ts_draining_destroy(o.drain);
    ts_bus_sub_destroy(o.hb_sub);
    ts_rebuild_stop();
    ts_leader_stop(o.leader); /* releases the lock */
    ts_bus_destroy(o.bus);
    ts_registry_destroy(o.reg);
    ts_workers_destroy(o.workers);
    ts_orch_cells_free(&o);
    ts_liveness_free(&o.live);
    ts_layout_free(&o.layout);
    ts_orch_wake_destroy(&o);
    ts_config_free(&cfg);
    ts_stats_free(&o.stats);
    ts_service_shutdown();
    return rc;
}
