/* tessera-worker: owns cells and simulates them. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "tessera/bus.h"
#include "tessera/config.h"
#include "tessera/log.h"
#include "worker.h"

static volatile sig_atomic_t stop_flag;

/* First signal: drain and stop; second: stop now. */
static void on_signal(int sig)
{
    (void)sig;
    if (stop_flag < 2) stop_flag++;
}

int main(int argc, char **argv)
{
    ts_config_t cfg;
    char err[512] = "";
    ts_status_t st = ts_config_load(&cfg, argc, argv, NULL, NULL, err, sizeof(err));
    if (st != TS_OK) {
        int help = strcmp(err, "help") == 0;
        if (!help) fprintf(stderr, "tessera-worker: %s\n", err);
        ts_config_free(&cfg);
        return help ? 0 : 2;
    }
    ts_log_level_t level = TS_LOG_INFO;
    ts_log_level_parse(cfg.log_level, &level);
    ts_log_init("tessera-worker", level, strcmp(cfg.log_format, "json") == 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    ts_worker_t *w = NULL;
    int rc = 1;
    if (ts_worker_create(&w, &cfg, &stop_flag) == TS_OK) rc = ts_worker_run(w, &stop_flag) == TS_OK ? 0 : 1;
    ts_worker_destroy(w);
    ts_config_free(&cfg);
    ts_bus_shutdown_library();
    return rc;
}
