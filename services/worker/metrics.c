/* Worker metrics (see metrics.h). Every series carries {worker="<id>"}.
 *
 * The totals live where they always did (zone stats, w->stats, the tick
 * counters); ts_worker_metrics_snapshot copies them, on the tick thread,
 * into the registry's atomics once per heartbeat, the same moment the
 * heartbeat sums them. The HTTP thread reads only atomics, the bus
 * connection state and its own Redis connection. */
#include "metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "game_host.h"
#include "tessera/http.h"
#include "tessera/log.h"
#include "tessera/metrics.h"
#include "tessera/util.h"
#include "worker_internal.h"

typedef struct {
    ts_metrics_t *reg;
    ts_http_t *http;
    char *redis_url;
    /* readiness, written by the tick thread */
    _Atomic(ts_bus_t *) bus;
    atomic_bool view_read;    /* the registry was read once */
    _Atomic uint64_t binding; /* cells being bound */
    _Atomic uint64_t owned;   /* cells bound */
    ts_histogram_t *tick, *input_latency;
    ts_counter_t *ticks, *ticks_missed;
    ts_counter_t *applied, *duplicate, *lost, *forwarded;
    ts_counter_t *transfers_in, *transfers_out, *transfers_remote;
    ts_counter_t *handovers_in, *handovers_out, *recoveries, *replay_ticks, *replay_ticks_skipped;
    ts_counter_t *replays_marked, *replays_unmarked, *marks_failed;
    ts_counter_t *publishes_failed, *state_dropped, *inbox_overflows, *oversized;
    ts_counter_t *stream_restarts;
    ts_counter_t *refused[TS_REFUSED_N];
    ts_gauge_t *entities, *cells, *cells_binding, *draining;
    /* ghosts (ghost.c) */
    ts_counter_t *ghost_msgs_out, *ghost_msgs_in, *ghost_bytes_out, *ghost_bytes_in;
    ts_counter_t *ghost_dropped, *ghost_stale, *ghost_expired;
    ts_gauge_t *ghosts, *ghost_sources;
    /* split and merge (split.c) */
    ts_counter_t *splits, *cells_merged, *fwd_inputs, *fwd_entities;
    ts_histogram_t *split_s, *merge_s, *split_work_s, *merge_work_s;
    /* the game module (game.c), labelled {module} */
    ts_counter_t *game_commands, *game_requests_sent, *game_requests, *game_requests_ignored, *game_events;
    ts_counter_t *game_requests_refused;
    ts_counter_t *game_errors[TS_GAME_CB_N], *game_overruns, *game_faults;
} wm_t;

static wm_t wm;

static double bytes_out(void *ud)
{
    return (double)ts_bus_bytes_out(atomic_load(&wm.bus));
}

static double publishes_in_flight(void *ud)
{
    return (double)ts_bus_in_flight(atomic_load(&wm.bus));
}

static bool ready(void *ud, char *why, size_t cap)
{
    if (!ts_http_check_bus(atomic_load(&wm.bus), why, cap)) return false;
    if (!ts_http_check_redis(wm.http, wm.redis_url, why, cap)) return false;
    if (!atomic_load(&wm.view_read)) {
        snprintf(why, cap, "registry not read yet");
        return false;
    }
    uint64_t binding = atomic_load(&wm.binding);
    if (binding > 0) {
        snprintf(why, cap, "binding %llu cells", (unsigned long long)binding);
        return false;
    }
    return true;
}

#define COUNTER(field, name, help, ...)                                                                      \
    wm.field = ts_metrics_counter(wm.reg, name, help, (const char *const[]){__VA_ARGS__ NULL})
#define GAUGE(field, name, help) wm.field = ts_metrics_gauge(wm.reg, name, help, NULL)

ts_status_t ts_worker_metrics_start(const ts_config_t *cfg)
{
    memset(&wm, 0, sizeof wm);
    const char *labels[] = {"worker", cfg->worker_id, NULL};
    ts_status_t st = ts_metrics_create(&wm.reg, labels);
    if (st != TS_OK) return st;
    wm.redis_url = strdup(cfg->redis_url);
    wm.tick = ts_metrics_histogram(wm.reg, "tessera_worker_tick_seconds", "Duration of one simulation tick.",
                                   NULL, ts_metrics_seconds_buckets, ts_metrics_seconds_nbuckets);
    wm.input_latency = ts_metrics_histogram(
        wm.reg, "tessera_worker_input_latency_seconds",
        "From an input's send time at its gateway or sim (wall clock) to its application in a tick.", NULL,
        ts_metrics_seconds_buckets, ts_metrics_seconds_nbuckets);
    COUNTER(ticks, "tessera_worker_ticks_total", "Simulation ticks run.", );
    COUNTER(ticks_missed, "tessera_worker_ticks_missed_total",
            "Tick periods that passed without their tick.", );
    COUNTER(applied, "tessera_worker_inputs_applied_total", "Inputs applied to an entity.", );
    COUNTER(duplicate, "tessera_worker_inputs_duplicate_total", "Inputs dropped as already applied.", );
    COUNTER(lost, "tessera_worker_inputs_lost_total",
            "Inputs dropped: unknown entity, too old, or an undecodable message.", );
    COUNTER(forwarded, "tessera_worker_inputs_forwarded_total",
            "Inputs sent on to the cell the entity moved to.", );
    COUNTER(transfers_in, "tessera_worker_transfers_total", "Entities that crossed a cell border.",
            "direction", "in", );
    COUNTER(transfers_out, "tessera_worker_transfers_total", "Entities that crossed a cell border.",
            "direction", "out", );
    COUNTER(transfers_remote, "tessera_worker_transfers_remote_total",
            "Entities that crossed into a cell another worker owns.", );
    COUNTER(handovers_in, "tessera_worker_handovers_total", "Cells handed over live to or from this worker.",
            "direction", "in", );
    COUNTER(handovers_out, "tessera_worker_handovers_total", "Cells handed over live to or from this worker.",
            "direction", "out", );
    COUNTER(recoveries, "tessera_worker_recoveries_total",
            "Cells bound from a checkpoint and input replay.", );
    COUNTER(replay_ticks, "tessera_worker_replay_ticks_total",
            "Ticks re-run by recovered cells between their replayed inputs and up to the present.", );
    COUNTER(
        replay_ticks_skipped, "tessera_worker_replay_ticks_skipped_total",
        "Ticks of silences longer than 30 s in a recovered cell's input that its replay did not re-run.", );
    COUNTER(replays_marked, "tessera_worker_recovery_replays_total",
            "Cells bound from a checkpoint, by how their ticks after it were replayed: by the last owner's "
            "tick marks (exact) or by the inputs' store times (its marks were missing).",
            "by", "tick_marks", );
    COUNTER(replays_unmarked, "tessera_worker_recovery_replays_total",
            "Cells bound from a checkpoint, by how their ticks after it were replayed: by the last owner's "
            "tick marks (exact) or by the inputs' store times (its marks were missing).",
            "by", "store_times", );
    COUNTER(marks_failed, "tessera_worker_tick_marks_failed_total",
            "Tick marks not published (queue full) or not stored: a replay from a checkpoint before one goes "
            "by store times.", );
    COUNTER(publishes_failed, "tessera_worker_publishes_failed_total",
            "JetStream publishes that failed (each retried later).", );
    COUNTER(state_dropped, "tessera_worker_state_dropped_total",
            "State and heartbeat messages dropped because the publish queue was full.", );
    COUNTER(oversized, "tessera_worker_messages_oversized_total",
            "Messages not published because they were larger than the server's max_payload allows (a bug: "
            "every message is cut to fit; each is logged with its cell).", );
    COUNTER(inbox_overflows, "tessera_worker_inbox_overflows_total",
            "Input messages that did not fit the inbox ring; the input consumer starts again "
            "before the first of them (nothing lost).", );
    COUNTER(stream_restarts, "tessera_worker_stream_restarts_total",
            "Times the world's input stream was found gone or replaced (JetStream lost its store): inputs it "
            "had acknowledged and this worker had not applied are lost.", );
    for (int r = 0; r < TS_REFUSED_N; r++)
        wm.refused[r] = ts_metrics_counter(
            wm.reg, "tessera_worker_inputs_refused_total",
            "Input-stream items dropped because their publisher may not send them: a gateway acting for "
            "another gateway's entity, or sending transfers or requests.",
            (const char *const[]){"reason", ts_worker_refused_str((ts_refused_reason_t)r), NULL});
    GAUGE(entities, "tessera_worker_entities", "Entities in the cells this worker owns.");
    GAUGE(cells, "tessera_worker_cells", "Cells this worker owns.");
    GAUGE(cells_binding, "tessera_worker_cells_binding", "Cells being bound (checkpoint read, consumer).");
    GAUGE(draining, "tessera_worker_draining", "1 while the worker hands its cells away before stopping.");
    COUNTER(ghost_msgs_out, "tessera_worker_ghost_messages_total",
            "GhostDelta messages (border entities for the owners of neighbour cells).", "direction", "out", );
    COUNTER(ghost_msgs_in, "tessera_worker_ghost_messages_total",
            "GhostDelta messages (border entities for the owners of neighbour cells).", "direction", "in", );
    COUNTER(ghost_bytes_out, "tessera_worker_ghost_bytes_total", "Bytes of GhostDelta messages.", "direction",
            "out", );
    COUNTER(ghost_bytes_in, "tessera_worker_ghost_bytes_total", "Bytes of GhostDelta messages.", "direction",
            "in", );
    COUNTER(ghost_dropped, "tessera_worker_ghost_dropped_total",
            "GhostDelta messages dropped on arrival: undecodable, or the queue to the tick was full.", );
    COUNTER(ghost_stale, "tessera_worker_ghost_stale_total",
            "GhostDelta messages ignored: an epoch older than the registry's, or a cell not live.", );
    COUNTER(ghost_expired, "tessera_worker_ghosts_expired_total",
            "Ghosts dropped: their cell fell silent, stopped being a live neighbour or moved to a newer "
            "epoch.", );
    GAUGE(ghosts, "tessera_worker_ghosts",
          "Ghosts (neighbours' border entities) held in this worker's cells.");
    GAUGE(ghost_sources, "tessera_worker_ghost_sources", "Neighbour cells whose ghosts this worker follows.");
    COUNTER(splits, "tessera_worker_splits_total",
            "Splits executed: a split cell's entities all moved into its children.", );
    COUNTER(cells_merged, "tessera_worker_cells_merged_total",
            "Retired cells whose entities all moved back into their parent (four per merge).", );
    COUNTER(fwd_inputs, "tessera_worker_split_forwarded_total",
            "What split and retired cells passed on to the live cells after their split or merge.", "what",
            "inputs", );
    COUNTER(fwd_entities, "tessera_worker_split_forwarded_total",
            "What split and retired cells passed on to the live cells after their split or merge.", "what",
            "entities", );
    static const char *const split_kind[] = {"kind", "split", NULL};
    static const char *const merge_kind[] = {"kind", "merge", NULL};
    const char *took = "From seeing a split or merge in the registry to the last Transfer stored.";
    const char *work = "Tick-boundary time a split or merge took (queuing departures).";
    const double *sb = ts_metrics_seconds_buckets;
    const size_t nsb = ts_metrics_seconds_nbuckets;
    wm.split_s = ts_metrics_histogram(wm.reg, "tessera_worker_split_seconds", took, split_kind, sb, nsb);
    wm.merge_s = ts_metrics_histogram(wm.reg, "tessera_worker_split_seconds", took, merge_kind, sb, nsb);
    wm.split_work_s =
        ts_metrics_histogram(wm.reg, "tessera_worker_split_tick_work_seconds", work, split_kind, sb, nsb);
    wm.merge_work_s =
        ts_metrics_histogram(wm.reg, "tessera_worker_split_tick_work_seconds", work, merge_kind, sb, nsb);
    const char *mod = ts_game_host_name(ts_game_host_global());
    COUNTER(game_commands, "tessera_worker_game_commands_total",
            "Client commands given to the game module's on_command.", "module", mod, );
    COUNTER(game_requests_sent, "tessera_worker_game_requests_total",
            "Game module requests: sent (api->request) and applied (on_request at the target's owner).",
            "module", mod, "direction", "sent", );
    COUNTER(game_requests, "tessera_worker_game_requests_total",
            "Game module requests: sent (api->request) and applied (on_request at the target's owner).",
            "module", mod, "direction", "applied", );
    COUNTER(
        game_requests_ignored, "tessera_worker_game_requests_ignored_total",
        "Game module requests dropped at their target cell: an entity it never knew (gone, or a forged id).",
        "module", mod, );
    COUNTER(game_requests_refused, "tessera_worker_game_requests_refused_total",
            "Game module requests refused at their target cell: sent from a cell at an epoch the registry "
            "had moved past (an owner that lost the cell).",
            "module", mod, "reason", "epoch", );
    COUNTER(game_events, "tessera_worker_game_events_total",
            "Events the game module emitted (to one player or to a position).", "module", mod, );
    static const char *const cb_label[TS_GAME_CB_N] = {"on_join", "on_command", "on_request", "on_tick"};
    for (int i = 0; i < TS_GAME_CB_N; i++)
        COUNTER(game_errors[i], "tessera_worker_game_errors_total",
                "Game module callbacks that returned an error (the cell goes on).", "module", mod, "callback",
                cb_label[i], );
    COUNTER(game_overruns, "tessera_worker_game_overruns_total",
            "Game module callbacks that ran longer than worker.game_budget_ms.", "module", mod, );
    COUNTER(game_faults, "tessera_worker_game_faults_total",
            "Crashes inside a game module callback (the worker exits; its cells are recovered elsewhere).",
            "module", mod, );
    ts_metrics_counter_fn(wm.reg, "tessera_worker_bus_sent_bytes_total", "Bytes published to NATS.", NULL,
                          bytes_out, NULL);
    ts_metrics_gauge_fn(wm.reg, "tessera_worker_publish_backlog",
                        "JetStream publishes waiting for their acknowledgement.", NULL, publishes_in_flight,
                        NULL);
    ts_http_opts_t o = {.listen = cfg->worker_http_listen, .metrics = wm.reg, .ready = ready};
    st = ts_http_start(&wm.http, &o);
    if (st != TS_OK) ts_worker_metrics_stop();
    return st;
}

void ts_worker_metrics_stop(void)
{
    ts_http_stop(wm.http);
    ts_metrics_destroy(wm.reg);
    free(wm.redis_url);
    memset(&wm, 0, sizeof wm);
}

void ts_worker_metrics_tick(ts_worker_t *w, double seconds)
{
    ts_histogram_observe(wm.tick, seconds);
    ts_http_beat(wm.http);
}

void ts_worker_metrics_snapshot(ts_worker_t *w)
{
    if (!wm.reg) return;
    ts_zone_stats_t t = w->stats.zones;
    uint64_t entities = 0;
    for (size_t i = 0; i < w->nbind; i++) {
        const ts_zone_t *z = w->bindings[i]->zone;
        t.applied += z->stats.applied;
        t.forwarded += z->stats.forwarded;
        t.duplicates += z->stats.duplicates;
        t.dropped += z->stats.dropped;
        t.transfers_in += z->stats.transfers_in;
        t.transfers_out += z->stats.transfers_out;
        t.oversized += z->stats.oversized;
        t.replay_steps += z->stats.replay_steps;
        t.replay_skipped += z->stats.replay_skipped;
        entities += ts_zone_entities(z);
    }
    ts_counter_set(wm.ticks, w->tick);
    ts_counter_set(wm.ticks_missed, w->ticks_missed);
    ts_counter_set(wm.applied, t.applied);
    ts_counter_set(wm.duplicate, t.duplicates);
    ts_counter_set(wm.lost, t.dropped);
    ts_counter_set(wm.forwarded, t.forwarded);
    ts_counter_set(wm.transfers_in, t.transfers_in);
    ts_counter_set(wm.transfers_out, t.transfers_out);
    ts_counter_set(wm.transfers_remote, w->stats.transfers_out_remote);
    ts_counter_set(wm.handovers_in, w->stats.handovers_in);
    ts_counter_set(wm.handovers_out, w->stats.handovers_out);
    ts_counter_set(wm.recoveries, w->stats.recovered);
    ts_counter_set(wm.replay_ticks, t.replay_steps);
    ts_counter_set(wm.replay_ticks_skipped, t.replay_skipped);
    ts_counter_set(wm.replays_marked, w->stats.recovered_marked);
    ts_counter_set(wm.replays_unmarked, w->stats.recovered - w->stats.recovered_marked);
    ts_counter_set(wm.marks_failed, atomic_load(&w->marks.failed));
    ts_counter_set(wm.publishes_failed, w->stats.publishes_failed);
    ts_counter_set(wm.state_dropped, w->stats.state_dropped);
    ts_counter_set(wm.inbox_overflows, w->stats.inbox_overflows);
    ts_counter_set(wm.oversized, t.oversized);
    ts_gauge_set(wm.entities, (double)entities);
    ts_gauge_set(wm.cells, (double)w->nbind);
    ts_gauge_set(wm.cells_binding, (double)w->binding.len);
    ts_gauge_set(wm.draining, w->draining ? 1 : 0);
    ts_ghost_stats_t gs;
    ts_ghost_stats(w, &gs);
    ts_counter_set(wm.ghost_msgs_out, gs.msgs_out);
    ts_counter_set(wm.ghost_msgs_in, gs.msgs_in);
    ts_counter_set(wm.ghost_bytes_out, gs.bytes_out);
    ts_counter_set(wm.ghost_bytes_in, gs.bytes_in);
    ts_counter_set(wm.ghost_dropped, gs.dropped_in);
    ts_counter_set(wm.ghost_stale, gs.stale);
    ts_counter_set(wm.ghost_expired, gs.ghosts_expired);
    ts_gauge_set(wm.ghosts, (double)gs.held);
    ts_gauge_set(wm.ghost_sources, (double)gs.sources);
    ts_counter_set(wm.splits, w->stats.splits);
    ts_counter_set(wm.cells_merged, w->stats.merged_cells);
    ts_counter_set(wm.fwd_inputs, w->stats.fwd_inputs);
    ts_counter_set(wm.fwd_entities, w->stats.fwd_entities);
    ts_game_stats_t game;
    ts_game_host_stats(ts_game_host_global(), &game);
    ts_counter_set(wm.game_commands, game.commands);
    ts_counter_set(wm.game_requests_sent, game.requests_sent);
    ts_counter_set(wm.game_requests, game.requests);
    uint64_t ignored = w->stats.requests_ignored;
    for (size_t i = 0; i < w->nbind; i++)
        ignored += w->bindings[i]->zone->requests_ignored;
    ts_counter_set(wm.game_requests_ignored, ignored);
    ts_counter_set(wm.game_requests_refused, w->stats.requests_refused);
    ts_counter_set(wm.game_events, game.events);
    for (int i = 0; i < TS_GAME_CB_N; i++)
        ts_counter_set(wm.game_errors[i], game.errors[i]);
    ts_counter_set(wm.game_overruns, game.overruns);
    ts_counter_set(wm.game_faults, game.faults);
    atomic_store(&wm.bus, w->bus);
    atomic_store(&wm.view_read, w->view.valid);
    atomic_store(&wm.binding, (uint64_t)w->binding.len);
    atomic_store(&wm.owned, (uint64_t)w->nbind);
}

void ts_worker_metrics_batch(const Tessera__V1__InputBatch *ib)
{
    if (!wm.input_latency || ib->n_inputs == 0) return;
    uint64_t now = ts_now_us();
    for (size_t i = 0; i < ib->n_inputs; i++) {
        uint64_t sent = ib->inputs[i]->sent_us;
        if (sent) ts_histogram_observe(wm.input_latency, now > sent ? (double)(now - sent) / 1e6 : 0);
    }
}

void ts_worker_metrics_split(bool split, double seconds, double work_seconds)
{
    ts_histogram_observe(split ? wm.split_s : wm.merge_s, seconds);
    ts_histogram_observe(split ? wm.split_work_s : wm.merge_work_s, work_seconds);
}

const char *ts_worker_refused_str(ts_refused_reason_t reason)
{
    static const char *const names[TS_REFUSED_N] = {"origin", "kind", "gateway", "entity", "attach", "token"};
    return (unsigned)reason < TS_REFUSED_N ? names[reason] : "?";
}

void ts_worker_metrics_refused(ts_refused_reason_t reason, uint64_t n)
{
    if ((unsigned)reason < TS_REFUSED_N) ts_counter_add(wm.refused[reason], n);
}

void ts_worker_metrics_stream_restart(void)
{
    ts_counter_inc(wm.stream_restarts);
}

void ts_worker_metrics_stopping(void)
{
    ts_http_set_stopping(wm.http);
}
