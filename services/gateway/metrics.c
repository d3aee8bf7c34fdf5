/* Gateway metrics (see metrics.h). Every series carries {gateway="<id>"}. */
#include "metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "gateway.h"
#include "tessera/http.h"
#include "tessera/metrics.h"
#include "tessera/util.h"

#define BEAT_MS 1000

typedef struct {
    ts_metrics_t *reg;
    ts_http_t *http;
    char redis_url[512];
    _Atomic(gw_t *) gw;
    ts_bus_t *bus;
    uv_timer_t beat;
    bool beat_started;
    ts_histogram_t *flush, *ack;
} gm_t;

static gm_t gm;

/* A loop-thread field read from the HTTP thread as one untorn load. */
#define FIELD_FN(fn, field)                                                                                  \
    static double fn(void *ud)                                                                               \
    {                                                                                                        \
        gw_t *gw = atomic_load(&gm.gw);                                                                      \
        return gw ? (double)__atomic_load_n(&gw->field, __ATOMIC_RELAXED) : 0;                               \
    }

FIELD_FN(clients, nopen)
FIELD_FN(connections, nconns)
FIELD_FN(cells, ncells)
FIELD_FN(subscribed_cells, nsubscribed)
FIELD_FN(map_viewers, map_viewers)
FIELD_FN(inputs_queued, inputs_queued)
FIELD_FN(inputs_dropped, inputs_dropped)
FIELD_FN(inputs_not_stored, inputs_not_stored)
FIELD_FN(inputs_published, inputs_published)
FIELD_FN(batches_published, batches_published)
FIELD_FN(publish_errors, publish_errors)
FIELD_FN(batches_in_flight, ninflight)
FIELD_FN(states_applied, states_applied)
FIELD_FN(states_bad, states_bad)
FIELD_FN(frames_sent, frames_sent)
FIELD_FN(bytes_sent, bytes_sent)
FIELD_FN(deltas_skipped, deltas_skipped)
FIELD_FN(threaded_writes, threaded_writes)
FIELD_FN(inbox_dropped, inbox_dropped_total)
FIELD_FN(commands_queued, commands_queued)
FIELD_FN(events_in, events_in)
FIELD_FN(events_sent, events_sent)
FIELD_FN(events_dropped, events_dropped)
FIELD_FN(reg_resyncs, reg_resyncs)
FIELD_FN(claims_refused, claims_refused)

static double acks_failed(void *ud)
{
    gw_t *gw = atomic_load(&gm.gw);
    return gw ? (double)atomic_load(&gw->acks_failed) : 0;
}

static bool ready(void *ud, char *why, size_t cap)
{
    gw_t *gw = atomic_load(&gm.gw);
    if (!gw) {
        snprintf(why, cap, "connecting");
        return false;
    }
    if (__atomic_load_n(&gw->stopping, __ATOMIC_RELAXED)) {
        snprintf(why, cap, "stopping");
        return false;
    }
    if (!ts_http_check_bus(gm.bus, why, cap)) return false;
    return ts_http_check_redis(gm.http, gm.redis_url, why, cap);
}

static void fn(const char *name, const char *help, bool counter, ts_metrics_read_fn read)
{
    if (counter)
        ts_metrics_counter_fn(gm.reg, name, help, NULL, read, NULL);
    else
        ts_metrics_gauge_fn(gm.reg, name, help, NULL, read, NULL);
}

ts_status_t gw_metrics_start(const ts_config_t *cfg)
{
    memset(&gm, 0, sizeof gm);
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)cfg->gateway_id);
    const char *labels[] = {"gateway", id, NULL};
    ts_status_t st = ts_metrics_create(&gm.reg, labels);
    if (st != TS_OK) return st;
    ts_strlcpy(gm.redis_url, cfg->redis_url, sizeof gm.redis_url);
    gm.flush =
        ts_metrics_histogram(gm.reg, "tessera_gateway_send_seconds",
                             "One fan-out: every changed cell encoded once and written to every client "
                             "that sees it (state waits at most 2 ms more to be coalesced).",
                             NULL, ts_metrics_seconds_buckets, ts_metrics_seconds_nbuckets);
    gm.ack = ts_metrics_histogram(gm.reg, "tessera_gateway_input_ack_seconds",
                                  "From publishing an input batch to JetStream's acknowledgement.", NULL,
                                  ts_metrics_seconds_buckets, ts_metrics_seconds_nbuckets);
    fn("tessera_gateway_clients", "Clients connected (not closing).", false, clients);
    fn("tessera_gateway_connections", "Connections, closing ones included.", false, connections);
    fn("tessera_gateway_cells", "Cells the gateway knows (state subscriptions follow its clients).", false,
       cells);
    fn("tessera_gateway_subscribed_cells",
       "Cells whose state the gateway subscribes to: those its clients see, and every live cell while a "
       "world map viewer is connected (gateway.map_max_dots > 0).",
       false, subscribed_cells);
    fn("tessera_gateway_map_viewers", "World map feeds (/api/events) open.", false, map_viewers);
    fn("tessera_gateway_input_backlog", "Input batches published and not acknowledged yet.", false,
       batches_in_flight);
    fn("tessera_gateway_inputs_queued_total", "Client inputs accepted for batching.", true, inputs_queued);
    fn("tessera_gateway_inputs_published_total", "Client inputs published to their cell's input stream.",
       true, inputs_published);
    fn("tessera_gateway_inputs_not_stored_total",
       "Client inputs JetStream did not store; each client was told (ERROR_INPUT_NOT_STORED).", true,
       inputs_not_stored);
    fn("tessera_gateway_inputs_dropped_total", "Client inputs dropped (rate limit, no live cell).", true,
       inputs_dropped);
    fn("tessera_gateway_batches_published_total", "Input batches published.", true, batches_published);
    fn("tessera_gateway_publish_errors_total", "Publishes the bus refused.", true, publish_errors);
    fn("tessera_gateway_acks_failed_total", "Input batches JetStream finally refused.", true, acks_failed);
    fn("tessera_gateway_states_applied_total", "Cell state messages applied.", true, states_applied);
    fn("tessera_gateway_states_bad_total", "Cell state messages dropped as undecodable.", true, states_bad);
    fn("tessera_gateway_frames_sent_total", "Frames written to clients.", true, frames_sent);
    fn("tessera_gateway_sent_bytes_total", "Bytes written to clients.", true, bytes_sent);
    fn("tessera_gateway_deltas_skipped_total",
       "Deltas withheld from a client whose unsent output was above gateway.max_backlog.", true,
       deltas_skipped);
    fn("tessera_gateway_fanout_threaded_writes_total",
       "Client writes of large fan-outs made on the writer threads (gateway.fanout_threads).", true,
       threaded_writes);
    fn("tessera_gateway_inbox_dropped_total", "Bus messages dropped because the loop's inbox was full.", true,
       inbox_dropped);
    fn("tessera_gateway_commands_queued_total",
       "Client Commands accepted for batching (counted in inputs too).", true, commands_queued);
    fn("tessera_gateway_events_received_total",
       "Game events received in the state of cells (StateDelta.events).", true, events_in);
    fn("tessera_gateway_events_sent_total", "Event frames written to clients.", true, events_sent);
    fn("tessera_gateway_events_dropped_total",
       "Game events not delivered: a client too far behind, or more than a flush holds.", true,
       events_dropped);
    fn("tessera_gateway_registry_resyncs_total", "Full registry reads applied.", true, reg_resyncs);
    fn("tessera_gateway_login_claims_refused_total",
       "Login claims from the bus refused: unsigned or wrongly signed, stale, or older than the connection "
       "they would close.",
       true, claims_refused);
    ts_http_opts_t o = {.listen = cfg->gateway_http_listen, .metrics = gm.reg, .ready = ready};
    st = ts_http_start(&gm.http, &o);
    if (st != TS_OK) {
        ts_metrics_destroy(gm.reg);
        gm.reg = NULL;
    }
    return st;
}

static void on_beat(uv_timer_t *t)
{
    ts_http_beat(gm.http);
}

void gw_metrics_attach(gw_t *gw, uv_loop_t *loop, ts_bus_t *bus)
{
    gm.bus = bus;
    atomic_store(&gm.gw, gw);
    if (!gm.http) return;
    ts_http_beat(gm.http);
    if (uv_timer_init(loop, &gm.beat) != 0) return;
    gm.beat_started = true;
    uv_timer_start(&gm.beat, on_beat, BEAT_MS, BEAT_MS);
    uv_unref((uv_handle_t *)&gm.beat);
}

void gw_metrics_stop(uv_loop_t *loop)
{
    if (gm.beat_started) {
        uv_close((uv_handle_t *)&gm.beat, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        gm.beat_started = false;
    }
    ts_http_stop(gm.http);
    ts_metrics_destroy(gm.reg);
    memset(&gm, 0, sizeof gm);
}

void gw_metrics_flushed(uint64_t started_us)
{
    if (gm.flush) ts_histogram_observe(gm.flush, (double)(ts_mono_us() - started_us) / 1e6);
}

void gw_metrics_input_ack(uint64_t us)
{
    ts_histogram_observe(gm.ack, (double)us / 1e6);
}
