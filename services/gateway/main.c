/* tessera-gateway: client TCP sockets in, cell input batches out, merged
 * cell state back to each client. Reads its configuration, connects to NATS
 * and Redis (retrying for STARTUP_WAIT_MS), waits for the world the
 * orchestrator writes, then runs one libuv loop until SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define STARTUP_WAIT_MS 10000
#define RETRY_MS 500

static volatile sig_atomic_t startup_signal;

static void on_startup_signal(int sig)
{
    startup_signal = sig;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: tessera-gateway [--key=value ...]\n\n"
                 "Accepts game clients on gateway.listen, batches their inputs into the cells'\n"
                 "JetStream input subjects and sends each client the merged state around it.\n\n");
    ts_config_usage(out);
}

static bool check_range(const char *key, int64_t v, int64_t lo, int64_t hi)
{
    if (v >= lo && v <= hi) return true;
    ts_error("%s = %lld is out of range [%lld, %lld]", key, (long long)v, (long long)lo, (long long)hi);
    return false;
}

static bool check_config(const ts_config_t *cfg)
{
    return check_range("world.id", cfg->world_id, 0, UINT32_MAX) &&
           check_range("gateway.id", cfg->gateway_id, 0, 65535) &&
           check_range("gateway.max_frame", cfg->gateway_max_frame, 16, 16 << 20) &&
           check_range("gateway.max_clients", cfg->gateway_max_clients, 1, 1000000) &&
           check_range("gateway.rate_limit", cfg->gateway_rate_limit, 1, 1000000) &&
           check_range("gateway.tick_hz", cfg->gateway_tick_hz, 1, 1000) &&
           check_range("gateway.aoi_radius", cfg->gateway_aoi_radius, 0, 8);
}

static bool keep_trying(uint64_t deadline_us)
{
    if (startup_signal || ts_mono_us() >= deadline_us) return false;
    ts_sleep_ms(RETRY_MS);
    return !startup_signal;
}

/* Connects and reads the world. Returns 0 on success, 1 on failure, -1 if
 * a signal asked to stop meanwhile. */
static int connect_all(const ts_config_t *cfg, ts_bus_t **bus, ts_registry_t **reg, ts_world_t *world,
                       ts_cell_entry_t **cells, size_t *ncells)
{
    uint64_t deadline = ts_mono_us() + STARTUP_WAIT_MS * 1000ull;
    uint32_t world_id = (uint32_t)cfg->world_id;
    char name[64];
    snprintf(name, sizeof name, "tessera-gateway-%lld", (long long)cfg->gateway_id);
    ts_status_t st;

    while ((st = ts_bus_connect(bus, cfg->nats_url, name)) != TS_OK) {
        if (!keep_trying(deadline)) goto fail_nats;
    }
    while ((st = ts_registry_connect(reg, cfg->redis_url)) != TS_OK) {
        if (!keep_trying(deadline)) goto fail_redis;
    }
    bool told = false;
    while ((st = ts_registry_world_get(*reg, world_id, world)) != TS_OK) {
        if (st == TS_ERR_NOT_FOUND && !told) {
            ts_info("waiting for the orchestrator to write world %u", world_id);
            told = true;
        }
        if (!keep_trying(deadline)) goto fail_world;
    }
    if (!(world->cell_size > 0) || world->width <= 0 || world->height <= 0) {
        ts_error("world %u in the registry is invalid (cell_size %g, %d x %d cells)", world_id,
                 world->cell_size, world->width, world->height);
        return 1;
    }
    while ((st = ts_registry_cells(*reg, world_id, cells, ncells)) != TS_OK) {
        if (!keep_trying(deadline)) goto fail_world;
    }
    return 0;

fail_nats:
    if (startup_signal) return -1;
    ts_error("cannot connect to NATS at %s: %s", cfg->nats_url, ts_status_str(st));
    return 1;
fail_redis:
    if (startup_signal) return -1;
    ts_error("cannot connect to Redis at %s: %s", cfg->redis_url, ts_status_str(st));
    return 1;
fail_world:
    if (startup_signal) return -1;
    ts_error("cannot read world %u from Redis at %s: %s (is tessera-orch running?)", world_id, cfg->redis_url,
             ts_status_str(st));
    return 1;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    }
    ts_config_t cfg;
    char err[512] = "";
    if (ts_config_load(&cfg, argc, argv, NULL, NULL, err, sizeof err) != TS_OK) {
        fprintf(stderr, "tessera-gateway: %s (try --help)\n", err);
        ts_config_free(&cfg);
        return 2;
    }
    ts_log_level_t level;
    if (!ts_log_level_parse(cfg.log_level, &level)) {
        fprintf(stderr, "tessera-gateway: log.level '%s' is not debug|info|warn|error\n", cfg.log_level);
        ts_config_free(&cfg);
        return 2;
    }
    ts_log_init("tessera-gateway", level, cfg.log_format != NULL && strcmp(cfg.log_format, "json") == 0);
    if (!check_config(&cfg)) {
        ts_config_free(&cfg);
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_startup_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    ts_bus_t *bus = NULL;
    ts_registry_t *reg = NULL;
    ts_cell_entry_t *cells = NULL;
    size_t ncells = 0;
    ts_world_t world;
    gw_t *gw = NULL;
    uv_loop_t loop;
    bool loop_ok = false;

    int c = connect_all(&cfg, &bus, &reg, &world, &cells, &ncells);
    if (c != 0) {
        rc = c < 0 ? 0 : 1;
        goto cleanup;
    }
    ts_info("connected to nats %s and redis %s; world %u: %dx%d root cells of %g from (%d,%d), %zu in the "
            "registry",
            cfg.nats_url, cfg.redis_url, world.id, world.width, world.height, world.cell_size, world.x0,
            world.y0, ncells);
    if (uv_loop_init(&loop) != 0) {
        ts_error("cannot create the event loop");
        goto cleanup;
    }
    loop_ok = true;
    if (gw_create(&gw, &loop, &cfg, bus, reg, &world, cells, ncells) != TS_OK) {
        ts_error("out of memory");
        goto cleanup;
    }
    free(cells);
    cells = NULL;
    rc = gw_start(gw) == TS_OK ? 0 : 1;
    if (rc != 0 || startup_signal) gw_stop(gw);
    uv_run(&loop, UV_RUN_DEFAULT);

cleanup:
    /* the bus goes first: its callbacks may still reference the gateway */
    ts_bus_destroy(bus);
    gw_destroy(gw);
    if (loop_ok && uv_loop_close(&loop) != 0) ts_warn("event loop closed with handles still open");
    ts_registry_destroy(reg);
    free(cells);
    ts_config_free(&cfg);
    ts_bus_shutdown_library();
    return rc;
}
