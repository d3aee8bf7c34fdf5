/* The sim's metrics and its /metrics, /healthz, /readyz listener
 * (sim.http_listen). In direct mode it exports what the sim counts (sent,
 * acknowledged, applied as the workers' state shows it); in --via-gateway
 * mode it serves /healthz and /readyz only (its figures are in its log, and
 * the gateway's and workers' metrics show the same traffic). */
#ifndef TS_SIM_METRICS_H
#define TS_SIM_METRICS_H

#include "players.h"
#include "sender.h"
#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/status.h"

/* Starts the listener if sim.http_listen is set; fails only for a listen
 * address that is bad or taken. */
ts_status_t ts_sim_metrics_start(const ts_config_t *cfg);
/* Direct mode is set up: its counters can be read and it is ready. players,
 * sender and bus must outlive ts_sim_metrics_stop. */
void ts_sim_metrics_attach(ts_players_t *players, ts_sender_t *sender, ts_bus_t *bus);
/* Via-gateway mode: ready (no bus of its own). */
void ts_sim_metrics_ready(void);
/* The main loop turned (/healthz). */
void ts_sim_metrics_beat(void);
void ts_sim_metrics_stop(void);

#endif
