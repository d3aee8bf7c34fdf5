/* tessera-worker: owns cells and simulates them. The first SIGINT/SIGTERM
 * drains the worker (its cells are handed away) and stops it; a second one
 * cuts the drain short. */
#include "game_host.h"
#include "metrics.h"
#include "tessera/log.h"
#include "tessera/service.h"
#include "worker.h"

static const ts_service_t service = {
    .name = "tessera-worker",
    .usage = "usage: tessera-worker [--key=value ...]\n"
             "Owns the cells the registry gives worker.id, consumes their JetStream input,\n"
             "ticks them (worker.tick_hz) and publishes their state, transfers, checkpoints\n"
             "and heartbeats. SIGINT/SIGTERM hands its cells away first; a second signal\n"
             "stops at once.\n\n",
};

int main(int argc, char **argv)
{
    ts_config_t cfg;
    int rc;
    if (!ts_service_init(&service, argc, argv, &cfg, NULL, NULL, &rc)) return rc;

    /* the game module first: its name labels the game metrics */
    ts_game_host_t *game = NULL;
    char err[512];
    if (ts_game_host_load(&game, cfg.worker_game, cfg.worker_game_config, cfg.worker_game_budget_ms, err,
                          sizeof(err)) != TS_OK) {
        ts_error("%s", err);
        ts_config_free(&cfg);
        ts_service_shutdown();
        return TS_SERVICE_EXIT_CONFIG;
    }
    ts_game_host_set_global(game);
    ts_game_host_set_fault_file(game, cfg.worker_fault_file);
    ts_info("game module %s loaded%s%s", ts_game_host_name(game), cfg.worker_game[0] ? " from " : "",
            cfg.worker_game);

    if (ts_worker_metrics_start(&cfg) != TS_OK) {
        ts_config_free(&cfg);
        return TS_SERVICE_EXIT_CONFIG;
    }
    volatile sig_atomic_t *stop = ts_service_stop_flag();
    ts_worker_t *w = NULL;
    if (ts_worker_create(&w, &cfg) == TS_OK)
        rc = ts_worker_run(w, stop) == TS_OK ? 0 : 1;
    else
        rc = *stop ? 0 : 1;
    ts_worker_metrics_stop(); /* before the bus it reads goes */
    ts_worker_destroy(w);
    ts_game_host_close(game);
    ts_config_free(&cfg);
    ts_service_shutdown();
    return rc;
}
