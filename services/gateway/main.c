/* tessera-gateway: client TCP sockets in, cell input batches out, merged
 * cell state back to each client. Reads its configuration, connects to NATS
 * and Redis (retrying for TS_SERVICE_CONNECT_MS), waits for the world the
 * orchestrator writes, then runs one libuv loop until SIGINT/SIGTERM. */
#include <stdio.h>
#include <stdlib.h>

#include "gateway.h"
#include "metrics.h"
#include "tessera/log.h"
#include "tessera/service.h"
#include "tessera/util.h"

static const ts_service_t service = {
    .name = "tessera-gateway",
    .usage = "usage: tessera-gateway [--key=value ...]\n\n"
             "Accepts game clients on gateway.listen, batches their inputs into the cells'\n"
             "JetStream input subjects and sends each client the merged state around it.\n\n",
};

static bool check_range(const char *key, int64_t v, int64_t lo, int64_t hi)
{
    if (v >= lo && v <= hi) return true;
    ts_error("%s = %lld is out of range [%lld, %lld]", key, (long long)v, (long long)lo, (long long)hi);
    return false;
}

static bool check_config(const ts_config_t *cfg)
{
    return check_range("world.id", cfg->world_id, 0, UINT32_MAX) &&
           /* 32767 and above: entity ids with that prefix are NPCs (0x7fff << 48) */
           check_range("gateway.id", cfg->gateway_id, 0, 32766) &&
           check_range("gateway.max_frame", cfg->gateway_max_frame, 16, 16 << 20) &&
           check_range("gateway.max_clients", cfg->gateway_max_clients, 1, 1000000) &&
           check_range("gateway.rate_limit", cfg->gateway_rate_limit, 1, 1000000) &&
           check_range("gateway.tick_hz", cfg->gateway_tick_hz, 1, 1000) &&
           check_range("gateway.aoi_radius", cfg->gateway_aoi_radius, 0, 8);
}

/* Connects and reads the world and its cells. Returns 0 on success, 1 on
 * failure, -1 if a signal asked to stop meanwhile. */
static int connect_all(const ts_config_t *cfg, ts_bus_t **bus, ts_registry_t **reg, ts_world_t *world,
                       ts_cell_entry_t **cells, size_t *ncells)
{
    uint32_t world_id = (uint32_t)cfg->world_id;
    char name[64];
    snprintf(name, sizeof name, "tessera-gateway-%lld", (long long)cfg->gateway_id);
    ts_status_t st = ts_service_connect_bus(cfg, name, TS_SERVICE_CONNECT_MS, bus);
    if (st == TS_OK) st = ts_service_connect_registry(cfg, TS_SERVICE_CONNECT_MS, reg);
    if (st == TS_OK) st = ts_service_wait_world(cfg, *reg, TS_SERVICE_CONNECT_MS, world);
    if (st != TS_OK) return ts_service_stopping() ? -1 : 1;
    if (!(world->cell_size > 0) || world->width <= 0 || world->height <= 0) {
        ts_error("world %u in the registry is invalid (cell_size %g, %d x %d cells)", world_id,
                 world->cell_size, world->width, world->height);
        return 1;
    }
    uint64_t deadline = ts_mono_us() + TS_SERVICE_CONNECT_MS * 1000ull;
    while ((st = ts_registry_cells(*reg, world_id, cells, ncells)) != TS_OK) {
        if (ts_service_retry_wait(deadline)) continue;
        if (ts_service_stopping()) return -1;
        ts_error("cannot read the cells of world %u from Redis at %s: %s", world_id, cfg->redis_url,
                 ts_status_str(st));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    ts_config_t cfg;
    int exit_code;
    if (!ts_service_init(&service, argc, argv, &cfg, NULL, NULL, &exit_code)) return exit_code;
    if (!check_config(&cfg) || gw_metrics_start(&cfg) != TS_OK) {
        ts_config_free(&cfg);
        return 2;
    }

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
    gw_metrics_attach(gw, &loop, bus);
    rc = gw_start(gw) == TS_OK ? 0 : 1;
    if (rc != 0 || ts_service_stopping()) gw_stop(gw);
    uv_run(&loop, UV_RUN_DEFAULT);

cleanup:
    gw_metrics_stop(loop_ok ? &loop : NULL); /* it reads the gateway and the bus */
    /* the bus goes first: its callbacks may still reference the gateway */
    ts_bus_destroy(bus);
    gw_destroy(gw);
    if (loop_ok && uv_loop_close(&loop) != 0) ts_warn("event loop closed with handles still open");
    ts_registry_destroy(reg);
    free(cells);
    ts_config_free(&cfg);
    ts_service_shutdown();
    return rc;
}
