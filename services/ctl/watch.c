/* `tessera-ctl watch`: one summary line per second,
 *   cells=16 owners=w1:8,w2:8 entities=… inputs/s=… ticks=… transfers/s=… cross-worker=…
 * cells/owners come from the registry (re-read every second), the rest from
 * the workers' heartbeats: entities is the sum over workers heard from in
 * the last LIVE_MS; the rates are per-worker counter deltas since the
 * previous line (a worker seen for the first time, or whose counters went
 * back after a restart, contributes nothing for that second). ticks= is
 * ticks per second over all workers; cross-worker= transfers per second
 * into cells owned by another worker; handovers= the leading orchestrator's
 * handover count (tessera.ctl.<world>.stats, omitted while none answers;
 * after a miss it is asked again STATS_BACKOFF_US later). */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define LIVE_MS 3000
#define PERIOD_MS 1000
#define MAX_OWNERS_SHOWN 32
#define STATS_TIMEOUT_MS 300
#define STATS_BACKOFF_US 5000000ULL

typedef struct {
    char owner[TS_WORKER_ID_MAX];
    size_t cells;
} owner_count_t;

static int cmp_owner(const void *a, const void *b)
{
    return strcmp(((const owner_count_t *)a)->owner, ((const owner_count_t *)b)->owner);
}

/* Writes "cells=N owners=a:n,b:m" into buf; reconnects the registry when it
 * has failed. */
static void describe_cells(const ts_config_t *cfg, ts_registry_t **reg, char *buf, size_t cap)
{
    if (!*reg && ts_registry_connect(reg, cfg->redis_url) != TS_OK) {
        ts_registry_destroy(*reg);
        *reg = NULL;
    }
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    ts_status_t st = *reg ? ts_registry_cells(*reg, (uint32_t)cfg->world_id, &cells, &n) : TS_ERR_UNAVAILABLE;
    if (st == TS_ERR_NOT_FOUND) {
        st = TS_OK;
        n = 0;
    }
    if (st != TS_OK) {
        snprintf(buf, cap, "cells=? owners=?");
        if (*reg)
            ts_warn("registry at %s: %s", cfg->redis_url, ts_status_str(st));
        ts_registry_destroy(*reg);
        *reg = NULL;
        free(cells);
        return;
    }
    owner_count_t *owners = calloc(n + 1, sizeof *owners);
    size_t nowners = 0;
    for (size_t i = 0; owners && i < n; i++) {
        const char *o = cells[i].owner[0] ? cells[i].owner : "-";
        size_t k = 0;
        while (k < nowners && strcmp(owners[k].owner, o) != 0)
            k++;
        if (k == nowners)
            ts_strlcpy(owners[nowners++].owner, o, sizeof owners[k].owner);
        owners[k].cells++;
    }
    if (nowners > 1)
        qsort(owners, nowners, sizeof *owners, cmp_owner);
    int len = snprintf(buf, cap, "cells=%zu owners=", n);
    for (size_t k = 0; k < nowners && k < MAX_OWNERS_SHOWN && len > 0 && (size_t)len < cap; k++)
        len += snprintf(buf + len, cap - (size_t)len, "%s%s:%zu", k ? "," : "", owners[k].owner, owners[k].cells);
    if (nowners == 0 && len > 0 && (size_t)len < cap)
        snprintf(buf + len, cap - (size_t)len, "-");
    else if (nowners > MAX_OWNERS_SHOWN && len > 0 && (size_t)len < cap)
        snprintf(buf + len, cap - (size_t)len, ",...");
    free(owners);
    free(cells);
}

static const ts_ctl_hb_t *find_hb(const ts_ctl_hb_t *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].id, id) == 0)
            return &v[i];
    }
    return NULL;
}

static uint64_t delta(uint64_t cur, uint64_t prev)
{
    return cur >= prev ? cur - prev : 0;
}

int ts_ctl_watch(const ts_config_t *cfg, long count)
{
    ts_registry_t *reg = NULL;
    ts_bus_t *bus = NULL;
    ts_bus_sub_t *sub = NULL;
    ts_ctl_hbs_t *table = NULL;
    ts_ctl_hb_t *prev = NULL;
    size_t nprev = 0;
    int rc = 1;

    if (ts_ctl_connect_registry(cfg, &reg) != TS_OK || ts_ctl_connect_bus(cfg, &bus) != TS_OK)
        goto cleanup;
    if (ts_ctl_hbs_create(&table) != TS_OK ||
        ts_bus_subscribe(bus, "tessera.worker.*.hb", ts_ctl_hbs_on_msg, table, &sub) != TS_OK) {
        fprintf(stderr, "tessera-ctl: cannot subscribe to heartbeats on %s\n", cfg->nats_url);
        goto cleanup;
    }
    uint64_t last = ts_mono_us(), next = last + PERIOD_MS * 1000ULL, next_stats = 0;
    for (long lines = 0; !ts_ctl_stop && (count <= 0 || lines < count);) {
        uint64_t now = ts_mono_us();
        if (now < next) {
            int64_t ms = (int64_t)((next - now) / 1000);
            ts_sleep_ms(ms < 50 ? (ms > 0 ? ms : 1) : 50);
            continue;
        }
        next += PERIOD_MS * 1000ULL;
        if (next <= now)
            next = now + PERIOD_MS * 1000ULL;
        double secs = (double)(now - last) / 1e6;
        last = now;

        ts_ctl_hb_t *cur = NULL;
        size_t ncur = 0;
        if (ts_ctl_hbs_snapshot(table, &cur, &ncur) != TS_OK)
            break;
        uint64_t entities = 0, inputs = 0, ticks = 0, transfers = 0, remote = 0;
        for (size_t i = 0; i < ncur; i++) {
            const ts_ctl_hb_t *c = &cur[i];
            if (now - c->seen_us <= LIVE_MS * 1000ULL)
                entities += c->entities;
            const ts_ctl_hb_t *p = find_hb(prev, nprev, c->id);
            if (!p)
                continue;
            inputs += delta(c->inputs_applied, p->inputs_applied);
            ticks += delta(c->ticks, p->ticks);
            transfers += delta(c->transfers_out, p->transfers_out);
            remote += delta(c->transfers_out_remote, p->transfers_out_remote);
        }
        free(prev);
        prev = cur;
        nprev = ncur;

        char cells[1024], handovers[48] = "";
        describe_cells(cfg, &reg, cells, sizeof cells);
        char *stats = NULL;
        double n_handovers = 0;
        if (now >= next_stats) {
            if (ts_ctl_request(bus, (uint32_t)cfg->world_id, "stats", "", STATS_TIMEOUT_MS, &stats) == TS_OK &&
                ts_ctl_json_number(stats, "handovers", &n_handovers))
                snprintf(handovers, sizeof handovers, " handovers=%.0f", n_handovers);
            else
                next_stats = ts_mono_us() + STATS_BACKOFF_US;
        }
        free(stats);
        printf("%s entities=%llu inputs/s=%.0f ticks=%.0f transfers/s=%.1f cross-worker=%.1f%s\n", cells,
               (unsigned long long)entities, (double)inputs / secs, (double)ticks / secs, (double)transfers / secs,
               (double)remote / secs, handovers);
        fflush(stdout);
        lines++;
    }
    rc = 0;

cleanup:
    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    ts_ctl_hbs_destroy(table);
    ts_registry_destroy(reg);
    free(prev);
    return rc;
}
