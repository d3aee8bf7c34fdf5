/* Orchestrator metrics (see metrics.h). Handover durations come from the
 * sample ring of ts_stats_t: each scrape feeds the samples taken since the
 * previous one into the histograms (the ring holds the last
 * TS_STATS_WINDOW; a scrape interval with more handovers than that counts
 * only the newest). */
#include "metrics.h"
#include "rebuild.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/http.h"
#include "tessera/log.h"
#include "tessera/metrics.h"

typedef struct {
    ts_orch_t *o;
    ts_metrics_t *reg;
    ts_http_t *http;
    atomic_bool running;
    size_t seen_samples; /* scrape thread: samples fed into the histograms */
    ts_histogram_t *freeze, *total;
    ts_counter_t *ok, *aborted, *failed, *refused, *recoveries, *moves_rebalance, *moves_drain, *full_reads,
        *splits, *merges, *rebuilds, *stream_resets;
    ts_gauge_t *in_flight, *queued, *leader, *workers_live, *workers_draining, *cells_unserved;
} om_t;

static om_t om;

static void scrape(void *ud)
{
    ts_stats_t *s = &om.o->stats;
    pthread_mutex_lock(&s->mu);
    ts_counter_set(om.ok, s->handovers);
    ts_counter_set(om.aborted, s->aborted);
    ts_counter_set(om.failed, s->failed);
    ts_counter_set(om.refused, s->refused);
    ts_counter_set(om.recoveries, s->recoveries);
    ts_counter_set(om.moves_rebalance, s->rebalance_moves);
    ts_counter_set(om.moves_drain, s->drain_moves);
    ts_counter_set(om.full_reads, s->full_reads);
    ts_counter_set(om.splits, s->splits);
    ts_counter_set(om.merges, s->merges);
    ts_gauge_set(om.in_flight, (double)s->in_flight);
    ts_gauge_set(om.queued, (double)s->queued);
    size_t from = om.seen_samples;
    if (s->nsamples > from + TS_STATS_WINDOW) from = s->nsamples - TS_STATS_WINDOW;
    for (size_t i = from; i < s->nsamples; i++) {
        ts_histogram_observe(om.freeze, s->freeze_us[i % TS_STATS_WINDOW] / 1e6);
        ts_histogram_observe(om.total, s->total_us[i % TS_STATS_WINDOW] / 1e6);
    }
    om.seen_samples = s->nsamples;
    pthread_mutex_unlock(&s->mu);

    ts_counter_set(om.rebuilds, ts_rebuild_count());
    ts_counter_set(om.stream_resets, ts_rebuild_stream_resets());
    if (!atomic_load(&om.running)) return;
    ts_gauge_set(om.leader, ts_leader_held(om.o->leader) ? 1 : 0);
    size_t n = ts_workers_snapshot(om.o->workers, NULL, 0);
    ts_worker_info_t *list = malloc((n ? n : 1) * sizeof *list);
    if (!list) return;
    size_t m = ts_workers_snapshot(om.o->workers, list, n);
    n = m < n ? m : n;
    /* cells whose owner is not alive: per worker, not per cell (the counts
     * per owner are those of the leader's registry copy) */
    size_t live = 0, draining = 0, unserved = 0;
    for (size_t i = 0; i < n; i++) {
        live += list[i].alive;
        draining += list[i].alive && list[i].draining;
        if (!list[i].alive) unserved += ts_draining_owned(om.o->drain, list[i].id);
    }
    free(list);
    ts_gauge_set(om.workers_live, (double)live);
    ts_gauge_set(om.workers_draining, (double)draining);
    ts_gauge_set(om.cells_unserved, ts_leader_held(om.o->leader) ? (double)unserved : 0);
}

static bool ready(void *ud, char *why, size_t cap)
{
    if (!atomic_load(&om.running)) {
        snprintf(why, cap, "connecting");
        return false;
    }
    if (!ts_http_check_bus(om.o->bus, why, cap)) return false;
    return ts_http_check_redis(om.http, om.o->cfg->redis_url, why, cap);
}

static ts_counter_t *counter(const char *name, const char *help, const char *k, const char *v)
{
    const char *labels[] = {k, v, NULL};
    return ts_metrics_counter(om.reg, name, help, k ? labels : NULL);
}

ts_status_t ts_orch_metrics_start(ts_orch_t *o)
{
    memset(&om, 0, sizeof om);
    om.o = o;
    char world[16];
    snprintf(world, sizeof world, "%lld", (long long)o->cfg->world_id);
    const char *labels[] = {"world", world, NULL};
    ts_status_t st = ts_metrics_create(&om.reg, labels);
    if (st != TS_OK) return st;
    static const char ho_help[] =
        "Live handovers by outcome (failed: a COMMIT or ABORT went unanswered; refused: "
        "a precondition failed before any worker was asked).";
    om.ok = counter("tessera_orch_handovers_total", ho_help, "result", "ok");
    om.aborted = counter("tessera_orch_handovers_total", ho_help, "result", "aborted");
    om.failed = counter("tessera_orch_handovers_total", ho_help, "result", "failed");
    om.refused = counter("tessera_orch_handovers_total", ho_help, "result", "refused");
    om.freeze = ts_metrics_histogram(om.reg, "tessera_orch_handover_freeze_seconds",
                                     "Time a handed-over cell stood still (FREEZE to COMMIT).", NULL,
                                     ts_metrics_seconds_buckets, ts_metrics_seconds_nbuckets);
    om.total =
        ts_metrics_histogram(om.reg, "tessera_orch_handover_seconds", "Whole handover, PREPARE to COMMIT.",
                             NULL, ts_metrics_seconds_buckets, ts_metrics_seconds_nbuckets);
    om.recoveries = counter("tessera_orch_recoveries_total",
                            "Cells of dead workers given to live ones (crash recovery).", NULL, NULL);
    static const char mv_help[] = "Cells moved by the rebalancer or by drains.";
    om.moves_rebalance = counter("tessera_orch_moves_total", mv_help, "reason", "rebalance");
    om.moves_drain = counter("tessera_orch_moves_total", mv_help, "reason", "drain");
    om.full_reads =
        counter("tessera_orch_registry_full_reads_total", "Full reads of the registry.", NULL, NULL);
    om.splits = counter("tessera_orch_splits_total", "Cells split into their four children.", NULL, NULL);
    om.merges = counter("tessera_orch_merges_total", "Sets of four children merged back into their parent.",
                        NULL, NULL);
    om.in_flight =
        ts_metrics_gauge(om.reg, "tessera_orch_handovers_in_flight", "Handovers running now.", NULL);
    om.queued = ts_metrics_gauge(om.reg, "tessera_orch_handovers_queued",
                                 "Handovers waiting for a free slot (backlog).", NULL);
    om.leader = ts_metrics_gauge(om.reg, "tessera_orch_leader",
                                 "1 while this orchestrator holds the leader lock.", NULL);
    om.workers_live = ts_metrics_gauge(om.reg, "tessera_orch_workers_live",
                                       "Workers whose heartbeat arrived within orch.hb_ttl_ms.", NULL);
    om.workers_draining = ts_metrics_gauge(om.reg, "tessera_orch_workers_draining",
                                           "Live workers that say they are stopping.", NULL);
    om.cells_unserved = ts_metrics_gauge(
        om.reg, "tessera_orch_cells_unserved",
        "Cells the registry gives to a worker whose heartbeat stopped (not served until recovered; "
        "leader only).",
        NULL);
    om.rebuilds = counter("tessera_orch_registry_rebuilds_total",
                          "Registry rebuilds after Redis lost the world (from the local copy, heartbeats "
                          "and checkpoints).",
                          NULL, NULL);
    om.stream_resets =
        counter("tessera_orch_stream_resets_total",
                "World input streams found missing in JetStream and created again.", NULL, NULL);
    ts_metrics_on_scrape(om.reg, scrape, NULL);
    ts_http_opts_t opts = {.listen = o->cfg->orch_http_listen, .metrics = om.reg, .ready = ready};
    st = ts_http_start(&om.http, &opts);
    if (st != TS_OK) ts_orch_metrics_stop();
    return st;
}

void ts_orch_metrics_running(void)
{
    atomic_store(&om.running, true);
}

void ts_orch_metrics_beat(void)
{
    ts_http_beat(om.http);
}

void ts_orch_metrics_stop(void)
{
    ts_http_stop(om.http);
    ts_metrics_destroy(om.reg);
    memset(&om, 0, sizeof om);
}
