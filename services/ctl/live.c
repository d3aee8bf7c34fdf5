/* The loop behind `watch` and `top`: heartbeats collected in the background,
 * one frame a second with this second's and last second's counters, the
 * leading orchestrator's stats (asked at most every second, every 5 s while
 * none answers), and a registry connection that is re-opened when it fails.
 * The views only draw. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/util.h"

#define PERIOD_MS 1000
#define STATS_TIMEOUT_MS 300
#define STATS_BACKOFF_US 5000000ULL

const ts_ctl_hb_t *ts_ctl_hb_find(const ts_ctl_hb_t *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].id, id) == 0) return &v[i];
    }
    return NULL;
}

int ts_ctl_live(const ts_config_t *cfg, long count, ts_ctl_draw_fn draw, void *ud)
{
    ts_bus_t *bus = NULL;
    ts_bus_sub_t *sub = NULL;
    ts_ctl_hbs_t *table = NULL;
    ts_ctl_frame_t f = {.cfg = cfg};
    int rc = 1;

    if (ts_ctl_connect_registry(cfg, &f.reg) != TS_OK || ts_ctl_connect_bus(cfg, &bus) != TS_OK) goto cleanup;
    if (ts_ctl_hbs_create(&table) != TS_OK ||
        ts_bus_subscribe(bus, "tessera.worker.*.hb", ts_ctl_hbs_on_msg, table, &sub) != TS_OK) {
        fprintf(stderr, "tessera-ctl: cannot subscribe to heartbeats on %s\n", cfg->nats_url);
        goto cleanup;
    }
    uint64_t last = ts_mono_us(), next = last + PERIOD_MS * 1000ULL, next_stats = 0;
    for (long frames = 0; !ts_ctl_stop && (count <= 0 || frames < count);) {
        uint64_t now = ts_mono_us();
        if (now < next) {
            int64_t ms = (int64_t)((next - now) / 1000);
            ts_sleep_ms(ms < 50 ? (ms > 0 ? ms : 1) : 50);
            continue;
        }
        next += PERIOD_MS * 1000ULL;
        if (next <= now) next = now + PERIOD_MS * 1000ULL;
        f.secs = (double)(now - last) / 1e6;
        f.now_us = now;
        last = now;

        ts_ctl_hb_t *cur = NULL;
        size_t ncur = 0;
        if (ts_ctl_hbs_snapshot(table, &cur, &ncur) != TS_OK) break;
        f.cur = cur;
        f.ncur = ncur;
        char *stats = NULL;
        if (now >= next_stats &&
            ts_ctl_request(bus, (uint32_t)cfg->world_id, "stats", "", STATS_TIMEOUT_MS, &stats) != TS_OK)
            next_stats = ts_mono_us() + STATS_BACKOFF_US;
        f.stats = stats;
        if (!f.reg) {
            ts_registry_t *reg = NULL;
            if (ts_registry_connect(&reg, cfg->redis_url) == TS_OK)
                f.reg = reg;
            else
                ts_registry_destroy(reg);
        }
        if (!draw(&f, ud) && f.reg) {
            fprintf(stderr, "tessera-ctl: cannot read the registry at %s; retrying\n", cfg->redis_url);
            ts_registry_destroy(f.reg);
            f.reg = NULL;
        }
        fflush(stdout);
        free(stats);
        free((void *)f.prev);
        f.prev = cur;
        f.nprev = ncur;
        frames++;
    }
    rc = 0;

cleanup:
    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    ts_ctl_hbs_destroy(table);
    ts_registry_destroy(f.reg);
    free((void *)f.prev);
    return rc;
}
