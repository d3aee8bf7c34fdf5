/* tessera-sim: synthetic players publishing straight into cell input
 * subjects, checking that every input JetStream acknowledged is applied
 * exactly once (as witnessed by inputs_applied in the workers' state); or,
 * with --via-gateway ADDR, real clients through a gateway (via_gateway.c),
 * over TCP or, with a ws:// address, WebSocket (ws_client.c).
 *
 * Invariants: inputs go out in batches every FLUSH_MS; the counted totals
 * cover Joins and Moves only (the closing Leaves are not counted); with a
 * duration the exit status says whether applied == acked == sent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cells.h"
#include "metrics.h"
#include "players.h"
#include "sender.h"
#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/log.h"
#include "tessera/registry.h"
#include "tessera/service.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "via_gateway.h"

#define FLUSH_MS 50
#define REPORT_MS 1000
#define SETTLE_MS 10000
#define LEAVE_FLUSH_MS 5000

#define EXIT_MISMATCH 2

static const ts_service_t service = {
    .name = "tessera-sim",
    .usage = "usage: tessera-sim [--via-gateway HOST:PORT|ws://HOST:PORT[/PATH]]\n"
             "                   [--hotspot X,Y,R[,SHARE[,HOLD_S[,FROM_S]]]] [--key=value ...]\n"
             "Runs sim.players synthetic players that publish InputBatches straight into\n"
             "the cell input subjects of world.id (sim.rate_hz inputs per player per second,\n"
             "speed sim.speed), follows their cells through the workers' state and reports\n"
             "inputs sent, acknowledged by JetStream and applied (inputs/s: applied per\n"
             "second), once a second.\n"
             "With sim.duration_s > 0 it stops by itself and exits 0 if applied == acked ==\n"
             "sent, 2 otherwise; on SIGINT/SIGTERM it stops and exits 0.\n\n"
             "--via-gateway HOST:PORT instead connects sim.players real clients to that gateway\n"
             "(TCP, one event loop, up to 1000 new connections/s): each sends Hello and Join, then\n"
             "Moves at sim.rate_hz, and reads its Deltas. With ws://HOST:PORT (the gateway's\n"
             "gateway.ws_listen; PATH defaults to /ws) every client first upgrades to a WebSocket\n"
             "and then sends and receives the same frames as binary messages (latency measured\n"
             "the same way; bytes/s counts the WebSocket framing; each client holds about 4 KB\n"
             "more, wslay's input buffer). Once all joined it plays sim.duration_s (0: until\n"
             "signalled), waits up to 20 s for the last inputs to show in each client's own\n"
             "entity and prints input->own state latency (p50/p99/p999 over the Moves sent\n"
             "while playing), Deltas/s and bytes/s per client, and inputs sent/applied/missing,\n"
             "ending with two lines\n"
             "  via-gateway: clients=N connected=C sent=S applied=A missing=M errors=E lat_p50_ms=..\n"
             "  lat_p99_ms=.. lat_p999_ms=.. deltas_per_s_per_client=.. bytes_per_s_per_client=..\n"
             "  via-gateway: cells: dropped=D cell_changed=C same_cell=V unannounced=U\n"
             "  clients_depth1=K1 clients_depth2=K2 max_depth=M\n"
             "(each client follows its entity's cell from the cell its frames name: C CellChanged\n"
             "received, V of them naming the cell the client already had, U frames naming a new\n"
             "cell without a CellChanged first; K1/K2 clients were at some point in a cell of depth\n"
             ">= 1/>= 2). It exits 0 if every client joined, stayed and got Deltas, every input was\n"
             "applied exactly once and V = U = 0, 2 otherwise, 1 if it could not start (address,\n"
             "open-file limit). Players start anywhere in the world (read from the registry as in\n"
             "bus mode), so each client's area of interest holds its share of the crowd.\n\n"
             "--hotspot X,Y,R[,SHARE[,HOLD_S[,FROM_S]]]: SHARE of the players (default 0.5) wander\n"
             "until FROM_S seconds after the start (default 0), then walk into the circle of radius\n"
             "R around (X, Y) and stay in it until HOLD_S seconds after the start (default 60), then\n"
             "spread over the world. Once a second it prints, in bus mode\n"
             "  sim: hotspot in=K live_cells=N max_depth=D\n"
             "and with --via-gateway (the clients' cells as their frames name them)\n"
             "  via-gateway: hotspot in=K clients in cells at depth 0/1/>=2: A/B/C\n"
             "Joins go to the deepest live cell at the player's position (the registry, kept\n"
             "current from RegistryChange); later inputs follow the entity's cell as the\n"
             "workers' state shows it.\n\n",
    .config_exit = 1,
};

typedef struct {
    ts_config_t *cfg;
    ts_world_t world;
    ts_bus_t *bus;
    ts_players_t *players;
    ts_sender_t *sender;
    ts_bus_sub_t *state_sub;
    ts_sim_inputs_t pending;
    uint64_t last_applied; /* for inputs/s */
    ts_sim_cells_t *cells;
    bool hotspot_on;
    ts_sim_hotspot_t hotspot;
} sim_t;

/* Takes "<flag> VALUE" / "<flag>=VALUE" out of argv (before the first
 * "--"), so the configuration never sees it. Returns the value (borrowed
 * from argv), NULL if absent; *bad if the flag has no value. */
static const char *take_flag(int *argc, char **argv, const char *flag, bool *bad)
{
    size_t flen = strlen(flag);
    const char *addr = NULL;
    int out = 1;
    bool done = false;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (!done && strcmp(a, "--") == 0) done = true;
        if (!done && strcmp(a, flag) == 0) {
            if (i + 1 >= *argc) {
                *bad = true;
                continue;
            }
            addr = argv[++i];
            continue;
        }
        if (!done && strncmp(a, flag, flen) == 0 && a[flen] == '=') {
            addr = a + flen + 1;
            continue;
        }
        argv[out++] = argv[i];
    }
    *argc = out;
    argv[out] = NULL;
    if (addr != NULL && *addr == '\0') *bad = true;
    return addr;
}

#define WS_PATH_MAX 256

/* "ws://HOST:PORT[/PATH]": HOST:PORT into hostport, the path (default
 * "/ws") into *path; false (logged) if it is not that. */
static bool split_ws_addr(const char *addr, char *hostport, size_t cap, const char **path)
{
    const char *rest = addr + strlen("ws://");
    const char *slash = strchr(rest, '/');
    size_t hl = slash != NULL ? (size_t)(slash - rest) : strlen(rest);
    *path = slash != NULL ? slash : "/ws";
    bool path_ok = strlen(*path) <= WS_PATH_MAX;
    for (const char *p = *path; path_ok && *p != '\0'; p++)
        path_ok = *p > ' ' && *p != 0x7f;
    if (hl == 0 || hl >= cap || !path_ok) {
        ts_error("--via-gateway: '%s' is not ws://HOST:PORT[/PATH] (a path of at most %d printable "
                 "characters)",
                 addr, WS_PATH_MAX);
        return false;
    }
    memcpy(hostport, rest, hl);
    hostport[hl] = '\0';
    return true;
}

/* Gateway mode: the world from the registry, then ts_vg_run (with the
 * hotspot, if any). addr is HOST:PORT (TCP) or ws://HOST:PORT[/PATH]. */
static int run_via_gateway(const ts_config_t *cfg, const char *addr, const ts_sim_hotspot_t *hotspot)
{
    ts_vg_opts_t o = {.hotspot = hotspot,
                      .clients = (size_t)cfg->sim_players,
                      .rate_hz = cfg->sim_rate_hz,
                      .duration_s = cfg->sim_duration_s,
                      .speed = cfg->sim_speed,
                      .seed = (uint64_t)cfg->sim_seed};
    char host[256], hostport[300];
    const char *hp = addr;
    if (strncmp(addr, "wss://", 6) == 0) {
        ts_error("--via-gateway: '%s': wss:// is not supported; give the gateway's plain gateway.ws_listen "
                 "as ws://HOST:PORT",
                 addr);
        return TS_VG_EXIT_SETUP;
    }
    if (strncmp(addr, "ws://", 5) == 0) {
        if (!split_ws_addr(addr, hostport, sizeof hostport, &o.ws_path)) return TS_VG_EXIT_SETUP;
        hp = hostport;
    } else if (strstr(addr, "://") != NULL) {
        ts_error("--via-gateway: '%s': want HOST:PORT (TCP) or ws://HOST:PORT[/PATH] (WebSocket)", addr);
        return TS_VG_EXIT_SETUP;
    }
    if (ts_config_split_hostport(hp, host, sizeof host, &o.port) != TS_OK) {
        ts_error("--via-gateway: '%s' is not host:port or ws://host:port[/path]", addr);
        return TS_VG_EXIT_SETUP;
    }
    o.host = host;
    if (cfg->sim_players > TS_VG_MAX_CLIENTS) {
        ts_error("--via-gateway: sim.players must be at most %d, got %lld", TS_VG_MAX_CLIENTS,
                 (long long)cfg->sim_players);
        return TS_VG_EXIT_SETUP;
    }
    if (!ts_vg_raise_nofile(o.clients)) return TS_VG_EXIT_SETUP; /* before any wait */
    ts_registry_t *reg = NULL;
    ts_status_t st = ts_service_connect_registry(cfg, TS_SERVICE_CONNECT_MS, &reg);
    if (st == TS_OK) st = ts_service_wait_world(cfg, reg, TS_SERVICE_CONNECT_MS, &o.world);
    ts_registry_destroy(reg);
    if (st != TS_OK) return ts_service_stopping() ? TS_VG_EXIT_OK : TS_VG_EXIT_SETUP;
    return ts_vg_run(&o);
}

static ts_status_t check_config(const ts_config_t *cfg, char *err, size_t cap)
{
    if (cfg->sim_players < 1 || cfg->sim_players > TS_SIM_MAX_PLAYERS)
        snprintf(err, cap, "sim.players: must be 1..%d, got %lld", TS_SIM_MAX_PLAYERS,
                 (long long)cfg->sim_players);
    else if (cfg->sim_rate_hz < 1 || cfg->sim_rate_hz > 1000)
        snprintf(err, cap, "sim.rate_hz: must be 1..1000, got %lld", (long long)cfg->sim_rate_hz);
    else if (cfg->sim_duration_s < 0)
        snprintf(err, cap, "sim.duration_s: must be >= 0 (0 = until signalled), got %lld",
                 (long long)cfg->sim_duration_s);
    else if (!(cfg->sim_speed >= 0 && cfg->sim_speed < 1e9))
        snprintf(err, cap, "sim.speed: must be a number >= 0, got %g", cfg->sim_speed);
    else if (cfg->world_id < 0 || cfg->world_id > (int64_t)UINT32_MAX)
        snprintf(err, cap, "world.id: %lld is out of range", (long long)cfg->world_id);
    else
        return TS_OK;
    return TS_ERR_CONFIG;
}

/* Reads the world from the registry (waiting for the orchestrator),
 * connects to NATS, then loads the cells (kept current from RegistryChange). */
static ts_status_t connect_all(sim_t *s)
{
    ts_registry_t *reg = NULL;
    ts_status_t st = ts_service_connect_registry(s->cfg, TS_SERVICE_CONNECT_MS, &reg);
    if (st == TS_OK) st = ts_service_wait_world(s->cfg, reg, TS_SERVICE_CONNECT_MS, &s->world);
    if (st == TS_OK) st = ts_service_connect_bus(s->cfg, "tessera-sim", TS_SERVICE_CONNECT_MS, &s->bus);
    if (st == TS_OK) {
        st = ts_sim_cells_create(&s->cells, s->bus, reg, &s->world);
        if (st != TS_OK) ts_error("cannot load the cells of world %u: %s", s->world.id, ts_status_str(st));
    }
    ts_registry_destroy(reg);
    return st;
}

static bool locate(void *ud, double x, double y, ts_cell_t *cell, uint64_t *epoch)
{
    return ts_sim_cells_locate(ud, x, y, cell, epoch);
}

static void report(sim_t *s, double secs)
{
    ts_sender_stats_t ss;
    ts_players_stats_t ps;
    ts_sender_stats(s->sender, &ss);
    ts_players_stats(s->players, &ps);
    double rate = secs > 0 ? (double)(ps.applied - s->last_applied) / secs : 0;
    s->last_applied = ps.applied;
    printf("sim: players=%zu sent=%llu acked=%llu applied=%llu inputs/s=%.0f failed=%llu\n",
           ts_players_count(s->players), (unsigned long long)ss.sent, (unsigned long long)ss.acked,
           (unsigned long long)ps.applied, rate, (unsigned long long)ss.failed);
    if (s->hotspot_on) {
        size_t live = 0;
        unsigned depth = 0;
        ts_sim_cells_counts(s->cells, &live, &depth);
        printf("sim: hotspot in=%zu live_cells=%zu max_depth=%u\n",
               ts_players_in_hotspot(s->players, ts_mono_us()), live, depth);
    }
    fflush(stdout);
}

static void flush_inputs(sim_t *s, uint64_t now_us, bool *warned)
{
    s->pending.len = 0;
    ts_status_t st = ts_players_collect(s->players, now_us, &s->pending);
    if (st == TS_OK) st = ts_sender_send(s->sender, &s->pending);
    if (st != TS_OK && !*warned) {
        ts_warn("publishing inputs failed: %s (counted as failed; further failures are only counted)",
                ts_status_str(st));
        *warned = true;
    }
}

/* Sends until signalled or the duration is over. Returns true if it ran
 * the full duration. */
static bool run(sim_t *s)
{
    uint64_t start = ts_mono_us();
    uint64_t end =
        s->cfg->sim_duration_s > 0 ? start + (uint64_t)s->cfg->sim_duration_s * 1000000 : UINT64_MAX;
    uint64_t next_flush = start, next_report = start + REPORT_MS * 1000, last_report = start;
    bool warned = false;
    while (!ts_service_stopping()) {
        uint64_t now = ts_mono_us();
        ts_sim_metrics_beat();
        if (now >= end) return true;
        if (now >= next_flush) {
            flush_inputs(s, now, &warned);
            next_flush += FLUSH_MS * 1000;
            if (next_flush <= now) next_flush = now + FLUSH_MS * 1000;
        }
        if (now >= next_report) {
            report(s, (double)(now - last_report) / 1e6);
            last_report = now;
            next_report += REPORT_MS * 1000;
        }
        uint64_t wake = next_flush < next_report ? next_flush : next_report;
        if (wake > end) wake = end;
        now = ts_mono_us();
        if (wake > now) ts_sleep_ms((int64_t)((wake - now + 999) / 1000));
    }
    return false;
}

/* Waits for the outstanding acks, then for the state to show every acked
 * input applied; returns the final counters. */
static void settle(sim_t *s, ts_sender_stats_t *ss, ts_players_stats_t *ps)
{
    uint64_t deadline = ts_mono_us() + SETTLE_MS * 1000ULL;
    volatile sig_atomic_t *stop = ts_service_stop_flag();
    sig_atomic_t signals = *stop;
    ts_bus_js_flush(s->bus, SETTLE_MS);
    for (;;) {
        ts_sim_metrics_beat();
        ts_sender_stats(s->sender, ss);
        ts_players_stats(s->players, ps);
        if (ss->acked + ss->failed >= ss->sent && ps->applied >= ss->acked) break;
        if (ts_mono_us() >= deadline || *stop > signals) break;
        ts_sleep_ms(50);
    }
}

static void send_leaves(sim_t *s)
{
    ts_sender_set_counting(s->sender, false);
    s->pending.len = 0;
    if (ts_players_collect_leaves(s->players, &s->pending) == TS_OK &&
        ts_sender_send(s->sender, &s->pending) == TS_OK)
        ts_bus_js_flush(s->bus, LEAVE_FLUSH_MS);
    else
        ts_warn("could not publish every Leave input");
}

int main(int argc, char **argv)
{
    ts_config_t cfg;
    char err[512] = "";
    int rc;
    setvbuf(stdout, NULL, _IOLBF, 0); /* its lines show as they come in a container's log too */
    bool bad_flag = false;
    const char *via_gateway = take_flag(&argc, argv, "--via-gateway", &bad_flag);
    bool bad_hotspot = false;
    const char *hotspot = take_flag(&argc, argv, "--hotspot", &bad_hotspot);
    if (!ts_service_init(&service, argc, argv, &cfg, NULL, NULL, &rc)) return rc;
    rc = 1;
    sim_t s = {.cfg = &cfg};

    if (bad_flag) {
        ts_error("--via-gateway needs an address (host:port or ws://host:port[/path])");
        goto cleanup;
    }
    if (bad_hotspot || (hotspot && ts_sim_hotspot_parse(hotspot, &s.hotspot) != TS_OK)) {
        ts_error("--hotspot: want X,Y,R[,SHARE[,HOLD_S[,FROM_S]]] (R > 0, 0 < SHARE <= 1, HOLD_S >= 0, "
                 "0 <= FROM_S < HOLD_S), got '%s'",
                 hotspot ? hotspot : "");
        goto cleanup;
    }
    s.hotspot_on = hotspot != NULL;
    if (check_config(&cfg, err, sizeof err) != TS_OK) {
        ts_error("%s", err);
        goto cleanup;
    }
    if (ts_sim_metrics_start(&cfg) != TS_OK) {
        rc = TS_SERVICE_EXIT_CONFIG;
        goto cleanup;
    }
    if (via_gateway != NULL) {
        ts_sim_metrics_ready();
        rc = run_via_gateway(&cfg, via_gateway, s.hotspot_on ? &s.hotspot : NULL);
        goto cleanup;
    }
    if (connect_all(&s) != TS_OK) {
        rc = ts_service_stopping() ? 0 : 1;
        goto cleanup;
    }
    char id_prefix[96], host[48] = "host", subject[TS_SUBJECT_MAX];
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    snprintf(id_prefix, sizeof id_prefix, "sim-%s-%ld-%llu", host, (long)getpid(),
             (unsigned long long)ts_now_us());
    ts_subject_world_wildcard(subject, sizeof subject, s.world.id, TS_SUBJ_STATE);
    if (ts_players_create(&s.players, (size_t)cfg.sim_players, (uint64_t)cfg.sim_seed, &s.world,
                          cfg.sim_speed, cfg.sim_rate_hz, ts_mono_us()) != TS_OK ||
        ts_sender_create(&s.sender, s.bus, id_prefix) != TS_OK) {
        ts_error("cannot set up %lld players: out of memory", (long long)cfg.sim_players);
        goto cleanup;
    }
    if (ts_bus_subscribe(s.bus, subject, ts_players_on_state, s.players, &s.state_sub) != TS_OK) {
        ts_error("cannot subscribe to %s on %s", subject, cfg.nats_url);
        goto cleanup;
    }
    ts_players_set_locate(s.players, locate, s.cells);
    if (s.hotspot_on) {
        ts_players_set_hotspot(s.players, &s.hotspot, ts_mono_us());
        ts_info("hotspot: %.0f%% of the players gather within %g of (%g, %g) from %g s to %g s after the "
                "start, then disperse",
                s.hotspot.share * 100, s.hotspot.r, s.hotspot.x, s.hotspot.y, s.hotspot.from_s,
                s.hotspot.hold_s);
    }
    ts_sim_metrics_attach(s.players, s.sender, s.bus);
    ts_info("started: nats %s, redis %s, world %u (%dx%d cells of %g), %lld players at %lld inputs/s each, "
            "speed %g, duration %lld s, entity ids %016llx..",
            cfg.nats_url, cfg.redis_url, s.world.id, s.world.width, s.world.height, s.world.cell_size,
            (long long)cfg.sim_players, (long long)cfg.sim_rate_hz, cfg.sim_speed,
            (long long)cfg.sim_duration_s, (unsigned long long)ts_players_entity(s.players, 0));

    bool full_run = run(&s);
    ts_info(full_run ? "duration over; waiting for acks and state" : "signalled; waiting for acks and state");
    ts_sender_stats_t ss;
    ts_players_stats_t ps;
    settle(&s, &ss, &ps);
    printf("sim: done sent=%llu acked=%llu applied=%llu lost=%lld\n", (unsigned long long)ss.sent,
           (unsigned long long)ss.acked, (unsigned long long)ps.applied, (long long)(ss.acked - ps.applied));
    fflush(stdout);
    ts_info("%llu cell crossings seen, %llu state deltas decoded (%llu malformed), %zu of %zu players seen",
            (unsigned long long)ps.crossings, (unsigned long long)ps.deltas, (unsigned long long)ps.malformed,
            ps.seen, ts_players_count(s.players));
    if (ps.seen < ts_players_count(s.players))
        ts_warn("%zu of %zu players never showed up in a state delta", ts_players_count(s.players) - ps.seen,
                ts_players_count(s.players));
    rc = 0;
    if (full_run && !(ps.applied == ss.acked && ss.acked == ss.sent)) {
        ts_error("mismatch: sent=%llu acked=%llu failed=%llu applied=%llu", (unsigned long long)ss.sent,
                 (unsigned long long)ss.acked, (unsigned long long)ss.failed, (unsigned long long)ps.applied);
        ts_players_log_mismatches(s.players, 10);
        rc = EXIT_MISMATCH;
    }
    send_leaves(&s);

cleanup:
    ts_sim_metrics_stop(); /* it reads the players, the sender and the bus */
    ts_bus_sub_destroy(s.state_sub);
    ts_sim_cells_destroy(s.cells);
    ts_bus_destroy(s.bus);
    ts_sender_destroy(s.sender);
    ts_players_destroy(s.players);
    ts_sim_inputs_free(&s.pending);
    ts_config_free(&cfg);
    ts_service_shutdown();
    return rc;
}
