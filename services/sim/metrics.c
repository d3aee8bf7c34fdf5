/* Sim metrics (see metrics.h). The counters are read at scrape time from
 * the sender's atomics and the players' table (under its own mutex). */
#include "metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "tessera/http.h"
#include "tessera/metrics.h"

typedef struct {
    ts_metrics_t *reg;
    ts_http_t *http;
    _Atomic(ts_players_t *) players;
    ts_sender_t *sender;
    ts_bus_t *bus;
    atomic_bool ready_no_bus;
    ts_counter_t *sent, *acked, *failed, *batches, *applied, *deltas, *crossings;
    ts_gauge_t *nplayers, *seen, *unacked;
} sm_t;

static sm_t sm;

static void scrape(void *ud)
{
    ts_players_t *pl = atomic_load(&sm.players);
    if (!pl) return;
    ts_sender_stats_t ss;
    ts_players_stats_t ps;
    ts_sender_stats(sm.sender, &ss);
    ts_players_stats(pl, &ps);
    ts_counter_set(sm.sent, ss.sent);
    ts_counter_set(sm.acked, ss.acked);
    ts_counter_set(sm.failed, ss.failed);
    ts_counter_set(sm.batches, ss.batches);
    ts_counter_set(sm.applied, ps.applied);
    ts_counter_set(sm.deltas, ps.deltas);
    ts_counter_set(sm.crossings, ps.crossings);
    ts_gauge_set(sm.nplayers, (double)ts_players_count(pl));
    ts_gauge_set(sm.seen, (double)ps.seen);
    ts_gauge_set(sm.unacked, ss.sent > ss.acked + ss.failed ? (double)(ss.sent - ss.acked - ss.failed) : 0);
}

static bool ready(void *ud, char *why, size_t cap)
{
    if (atomic_load(&sm.ready_no_bus)) return true;
    if (!atomic_load(&sm.players)) {
        snprintf(why, cap, "setting up");
        return false;
    }
    return ts_http_check_bus(sm.bus, why, cap);
}

static ts_counter_t *counter(const char *name, const char *help)
{
    return ts_metrics_counter(sm.reg, name, help, NULL);
}

ts_status_t ts_sim_metrics_start(const ts_config_t *cfg)
{
    memset(&sm, 0, sizeof sm);
    ts_status_t st = ts_metrics_create(&sm.reg, NULL);
    if (st != TS_OK) return st;
    sm.sent = counter("tessera_sim_inputs_sent_total", "Inputs published.");
    sm.acked = counter("tessera_sim_inputs_acked_total", "Inputs JetStream acknowledged.");
    sm.failed = counter("tessera_sim_inputs_failed_total", "Inputs whose publish failed.");
    sm.applied = counter("tessera_sim_inputs_applied_total",
                         "Inputs applied, as the players' entities in the workers' state show it.");
    sm.batches = counter("tessera_sim_batches_total", "Input batches published.");
    sm.deltas = counter("tessera_sim_state_deltas_total", "State deltas decoded.");
    sm.crossings = counter("tessera_sim_crossings_total", "Times a player's cell changed.");
    sm.nplayers = ts_metrics_gauge(sm.reg, "tessera_sim_players", "Synthetic players.", NULL);
    sm.seen =
        ts_metrics_gauge(sm.reg, "tessera_sim_players_seen", "Players seen in some cell's state.", NULL);
    sm.unacked =
        ts_metrics_gauge(sm.reg, "tessera_sim_inputs_unacked",
                         "Inputs published and neither acknowledged nor failed yet (backlog).", NULL);
    ts_metrics_on_scrape(sm.reg, scrape, NULL);
    ts_http_opts_t o = {.listen = cfg->sim_http_listen, .metrics = sm.reg, .ready = ready};
    st = ts_http_start(&sm.http, &o);
    if (st != TS_OK) ts_sim_metrics_stop();
    return st;
}

void ts_sim_metrics_attach(ts_players_t *players, ts_sender_t *sender, ts_bus_t *bus)
{
    sm.sender = sender;
    sm.bus = bus;
    atomic_store(&sm.players, players);
}

void ts_sim_metrics_ready(void)
{
    atomic_store(&sm.ready_no_bus, true);
}

void ts_sim_metrics_beat(void)
{
    ts_http_beat(sm.http);
}

void ts_sim_metrics_stop(void)
{
    ts_http_stop(sm.http);
    ts_metrics_destroy(sm.reg);
    memset(&sm, 0, sizeof sm);
}
