/* tessera-orch: writes the world layout into the registry and watches the
 * workers.
 *
 * Invariants: only the holder of the leader lock writes to the registry;
 * cells that already exist keep their owner and epoch (a restart never
 * resets an epoch); every cell this process creates is announced with one
 * RegistryChange carrying the registry version of its creation. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"
#include "leader.h"
#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "workers.h"

#define CONNECT_TIMEOUT_MS 10000
#define RETRY_MS 500
#define LOOP_MS 50

static bool g_bus_used; /* nats.c was initialised */
static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

typedef struct {
    ts_config_t *cfg;
    ts_layout_t layout;
    ts_bus_t *bus;
    ts_registry_t *reg;
    ts_workers_t *workers;
    ts_bus_sub_t *hb_sub;
    ts_leader_t leader;
    bool world_written;
    uint64_t next_write_us;
    uint64_t next_reconnect_us;
} orch_t;

static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tessera-orch [--key=value ...]\n"
            "Writes the world layout (world.*) into the Redis registry, holds the leader\n"
            "lock orch.<world.id>, announces cells on tessera.registry.<world> and tracks\n"
            "worker heartbeats (dead after orch.hb_ttl_ms).\n\n");
    ts_config_usage(out);
}

static ts_status_t connect_bus(orch_t *o)
{
    uint64_t deadline = ts_mono_us() + CONNECT_TIMEOUT_MS * 1000ULL;
    ts_status_t st;
    g_bus_used = true;
    do {
        st = ts_bus_connect(&o->bus, o->cfg->nats_url, "tessera-orch");
        if (st == TS_OK)
            st = ts_bus_ensure_streams(o->bus, o->layout.world.id, o->cfg->stream_storage, o->cfg->stream_max_age_s,
                                       (int)o->cfg->stream_replicas);
        if (st == TS_OK)
            return TS_OK;
        ts_bus_destroy(o->bus);
        o->bus = NULL;
        ts_debug("nats %s not ready: %s", o->cfg->nats_url, ts_status_str(st));
        ts_sleep_ms(RETRY_MS);
    } while (!g_stop && ts_mono_us() < deadline);
    ts_error("cannot connect to NATS at %s and create the streams of world %u within %d s: %s", o->cfg->nats_url,
             o->layout.world.id, CONNECT_TIMEOUT_MS / 1000, ts_status_str(st));
    return st;
}

static ts_status_t connect_registry(orch_t *o)
{
    uint64_t deadline = ts_mono_us() + CONNECT_TIMEOUT_MS * 1000ULL;
    ts_status_t st;
    do {
        uint64_t version;
        st = ts_registry_connect(&o->reg, o->cfg->redis_url);
        if (st == TS_OK)
            st = ts_registry_version(o->reg, o->layout.world.id, &version);
        if (st == TS_OK)
            return TS_OK;
        ts_registry_destroy(o->reg);
        o->reg = NULL;
        ts_debug("redis %s not ready: %s", o->cfg->redis_url, ts_status_str(st));
        ts_sleep_ms(RETRY_MS);
    } while (!g_stop && ts_mono_us() < deadline);
    ts_error("cannot connect to Redis at %s within %d s: %s", o->cfg->redis_url, CONNECT_TIMEOUT_MS / 1000,
             ts_status_str(st));
    return st;
}

/* Status codes that are answers, not a broken connection. */
static bool is_answer(ts_status_t st)
{
    return st == TS_OK || st == TS_ERR_EXISTS || st == TS_ERR_NOT_FOUND || st == TS_ERR_CONFLICT;
}

static void registry_broken(orch_t *o, ts_status_t st)
{
    ts_warn("registry error (%s); reconnecting to %s", ts_status_str(st), o->cfg->redis_url);
    ts_registry_destroy(o->reg);
    o->reg = NULL;
}

static void announce(orch_t *o, const ts_cell_entry_t *e, uint64_t version)
{
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &e->cell);
    Tessera__V1__RegistryChange rc = TESSERA__V1__REGISTRY_CHANGE__INIT;
    rc.world = e->cell.world;
    rc.version = version;
    rc.cell = &cell_pb;
    rc.owner = (char *)e->owner;
    rc.epoch = e->epoch;
    rc.state = (Tessera__V1__CellState)e->state;

    uint8_t *buf = NULL;
    size_t len = 0;
    char subject[TS_SUBJECT_MAX];
    ts_subject_registry(subject, sizeof subject, e->cell.world);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_REGISTRY_CHANGE, .epoch = e->epoch, .seq = version};
    ts_status_t st = ts_proto_pack(&rc.base, &buf, &len);
    if (st == TS_OK)
        st = ts_bus_publish(o->bus, subject, &hdr, buf, len);
    free(buf);
    if (st != TS_OK)
        ts_warn("cannot publish RegistryChange on %s: %s", subject, ts_status_str(st));
}

static void warn_if_world_differs(orch_t *o)
{
    ts_world_t cur;
    const ts_world_t *want = &o->layout.world;
    if (ts_registry_world_get(o->reg, want->id, &cur) != TS_OK)
        return;
    if (cur.cell_size != want->cell_size || cur.x0 != want->x0 || cur.y0 != want->y0 || cur.width != want->width ||
        cur.height != want->height)
        ts_warn("world %u in the registry (size %g, origin %d,%d, %dx%d) differs from the configuration "
                "(size %g, origin %d,%d, %dx%d); writing the configured geometry, existing cells keep their owners",
                want->id, cur.cell_size, cur.x0, cur.y0, cur.width, cur.height, want->cell_size, want->x0, want->y0,
                want->width, want->height);
}

/* Writes the world and creates missing cells. Returns false on a registry
 * error (retried later). */
static bool write_world(orch_t *o)
{
    warn_if_world_differs(o);
    ts_status_t st = ts_registry_world_set(o->reg, &o->layout.world);
    if (st != TS_OK) {
        registry_broken(o, st);
        return false;
    }
    size_t created = 0, kept = 0;
    uint64_t version = 0;
    for (size_t i = 0; i < o->layout.ncells; i++) {
        const ts_cell_entry_t *want = &o->layout.cells[i];
        ts_cell_entry_t cur;
        uint64_t v = 0;
        st = ts_registry_cell_create(o->reg, want, &cur, &v);
        if (st == TS_OK) {
            created++;
            version = v;
            announce(o, &cur, v);
        } else if (st == TS_ERR_EXISTS) {
            kept++;
            if (strcmp(cur.owner, want->owner) != 0) {
                char key[TS_CELL_STR_MAX];
                ts_cell_format(&cur.cell, key, sizeof key);
                ts_info("cell %s keeps owner %s at epoch %llu (layout says %s)", key, cur.owner,
                        (unsigned long long)cur.epoch, want->owner);
            }
        } else {
            registry_broken(o, st);
            return false;
        }
    }
    if (created == 0)
        ts_registry_version(o->reg, o->layout.world.id, &version);
    ts_bus_flush(o->bus, 2000);
    ts_info("world %u: %zu root cells (%zu created, %zu kept), registry version %llu", o->layout.world.id,
            o->layout.ncells, created, kept, (unsigned long long)version);
    return true;
}

static void on_leader_event(orch_t *o, ts_leader_event_t ev)
{
    if (ev == TS_LEADER_GAINED) {
        ts_info("leader of world %u (lock %s, holder %s)", o->layout.world.id, o->leader.name, o->leader.holder);
        o->world_written = false;
        o->next_write_us = 0;
    } else if (ev == TS_LEADER_LOST) {
        ts_warn("lost the leader lock %s; standing by", o->leader.name);
    }
}

static void run(orch_t *o)
{
    bool standby_logged = false;
    uint64_t status_us = o->cfg->orch_status_ms > 0 ? (uint64_t)o->cfg->orch_status_ms * 1000 : 0;
    uint64_t next_status_us = ts_mono_us() + status_us;

    while (!g_stop) {
        uint64_t now = ts_mono_us();
        if (!o->reg && now >= o->next_reconnect_us) {
            o->next_reconnect_us = now + 1000000;
            if (ts_registry_connect(&o->reg, o->cfg->redis_url) != TS_OK) {
                ts_registry_destroy(o->reg);
                o->reg = NULL;
            }
        }
        ts_leader_event_t ev = ts_leader_poll(&o->leader, o->reg, now);
        if (o->leader.attempted && o->reg && !is_answer(o->leader.last_error))
            registry_broken(o, o->leader.last_error);
        on_leader_event(o, ev);
        if (o->leader.held) {
            standby_logged = false;
            if (!o->world_written && o->reg && now >= o->next_write_us) {
                o->world_written = write_world(o);
                o->next_write_us = now + 1000000;
            }
        } else if (!standby_logged && o->leader.last_error == TS_OK) {
            ts_info("standby: lock %s is held by another orchestrator; retrying every %lld ms", o->leader.name,
                    (long long)o->leader.ttl_ms / 3);
            standby_logged = true;
        }
        ts_workers_check(o->workers, now);
        if (status_us && now >= next_status_us) {
            ts_workers_log_status(o->workers, now);
            next_status_us = now + status_us;
        }
        ts_sleep_ms(LOOP_MS);
    }
}

int main(int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    ts_config_t cfg;
    char err[512] = "";
    int rc = 1;
    orch_t o = {.cfg = &cfg};

    if (ts_config_load(&cfg, argc, argv, NULL, NULL, err, sizeof err) != TS_OK) {
        fprintf(stderr, "tessera-orch: %s (see --help)\n", err[0] ? err : "bad configuration");
        ts_config_free(&cfg);
        return 1;
    }
    ts_log_level_t level;
    if (!ts_log_level_parse(cfg.log_level, &level)) {
        fprintf(stderr, "tessera-orch: log.level: unknown level '%s' (debug|info|warn|error)\n", cfg.log_level);
        goto cleanup;
    }
    if (strcmp(cfg.log_format, "text") != 0 && strcmp(cfg.log_format, "json") != 0) {
        fprintf(stderr, "tessera-orch: log.format: must be text or json, got '%s'\n", cfg.log_format);
        goto cleanup;
    }
    ts_log_init("tessera-orch", level, strcmp(cfg.log_format, "json") == 0);
    install_signals();

    if (ts_layout_build(&o.layout, &cfg, err, sizeof err) != TS_OK) {
        ts_error("bad world layout: %s", err);
        goto cleanup;
    }
    for (size_t i = 0; i < o.layout.nworkers; i++) {
        if (ts_layout_count_owned(&o.layout, o.layout.workers[i]) == 0)
            ts_warn("worker %s owns no cell in the layout (more workers than columns?)", o.layout.workers[i]);
    }
    if (cfg.orch_hb_ttl_ms <= 0) {
        ts_error("orch.hb_ttl_ms: must be > 0, got %lld", (long long)cfg.orch_hb_ttl_ms);
        goto cleanup;
    }
    if (connect_registry(&o) != TS_OK || connect_bus(&o) != TS_OK) {
        rc = g_stop ? 0 : 1;
        goto cleanup;
    }
    if (ts_workers_create(&o.workers, cfg.orch_hb_ttl_ms) != TS_OK ||
        ts_bus_subscribe(o.bus, "tessera.worker.*.hb", ts_workers_on_heartbeat, o.workers, &o.hb_sub) != TS_OK) {
        ts_error("cannot subscribe to worker heartbeats on %s", cfg.nats_url);
        goto cleanup;
    }
    ts_leader_init(&o.leader, o.layout.world.id, cfg.orch_hb_ttl_ms);
    ts_info("started: nats %s, redis %s, world %u (%dx%d root cells of %g from %d,%d, workers %s), lock %s as %s",
            cfg.nats_url, cfg.redis_url, o.layout.world.id, o.layout.world.width, o.layout.world.height,
            o.layout.world.cell_size, o.layout.world.x0, o.layout.world.y0, cfg.world_workers, o.leader.name,
            o.leader.holder);

    run(&o);
    ts_info("shutting down");
    rc = 0;

cleanup:
    ts_bus_sub_destroy(o.hb_sub);
    ts_leader_release(&o.leader, o.reg);
    ts_bus_destroy(o.bus);
    ts_registry_destroy(o.reg);
    ts_workers_destroy(o.workers);
    ts_layout_free(&o.layout);
    ts_config_free(&cfg);
    if (g_bus_used)
        ts_bus_shutdown_library();
    return rc;
}
