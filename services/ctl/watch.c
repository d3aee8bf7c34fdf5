/* `tessera-ctl watch`: one summary line per second,
 *   cells=16 owners=w1:8,w2:8 entities=… inputs/s=… ticks=… transfers/s=… cross-worker=…
 * cells/owners are the live cells (active, handover) of the registry
 * (re-read every second; split and retired forwarders are not counted), the rest from
 * the workers' heartbeats: entities is the sum over workers heard from in
 * the last LIVE_MS; the rates are per-worker counter deltas since the
 * previous line (a worker seen for the first time, or whose counters went
 * back after a restart, contributes nothing for that second). ticks= is
 * ticks per second over all workers; cross-worker= transfers per second
 * into cells owned by another worker; handovers= the leading orchestrator's
 * handover count (tessera.ctl.<world>.stats, omitted while none answers;
 * after a miss it is asked again STATS_BACKOFF_US later), then its split
 * and merge counts, and depth= the deepest live cell once a cell is split. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/json.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define LIVE_MS 3000
#define MAX_OWNERS_SHOWN 32

typedef struct {
    char owner[TS_WORKER_ID_MAX];
    size_t cells;
} owner_count_t;

static int cmp_owner(const void *a, const void *b)
{
    return strcmp(((const owner_count_t *)a)->owner, ((const owner_count_t *)b)->owner);
}

/* Writes "cells=N owners=a:n,b:m" (live cells) into buf and the deepest
 * live cell's depth into *depth; false if the registry failed. */
static bool describe_cells(const ts_config_t *cfg, ts_registry_t *reg, char *buf, size_t cap, unsigned *depth)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    ts_status_t st = reg ? ts_registry_cells(reg, (uint32_t)cfg->world_id, &cells, &n) : TS_ERR_UNAVAILABLE;
    if (st == TS_ERR_NOT_FOUND) {
        st = TS_OK;
        n = 0;
    }
    if (st != TS_OK) {
        snprintf(buf, cap, "cells=? owners=?");
        free(cells);
        return false;
    }
    owner_count_t *owners = calloc(n + 1, sizeof *owners);
    size_t nowners = 0, nlive = 0;
    *depth = 0;
    for (size_t i = 0; owners && i < n; i++) {
        if (cells[i].state != TS_CELL_ACTIVE && cells[i].state != TS_CELL_HANDOVER) continue;
        nlive++;
        if (cells[i].cell.depth > *depth) *depth = cells[i].cell.depth;
        const char *o = cells[i].owner[0] ? cells[i].owner : "-";
        size_t k = 0;
        while (k < nowners && strcmp(owners[k].owner, o) != 0)
            k++;
        if (k == nowners) ts_strlcpy(owners[nowners++].owner, o, sizeof owners[k].owner);
        owners[k].cells++;
    }
    if (nowners > 1) qsort(owners, nowners, sizeof *owners, cmp_owner);
    int len = snprintf(buf, cap, "cells=%zu owners=", nlive);
    for (size_t k = 0; k < nowners && k < MAX_OWNERS_SHOWN && len > 0 && (size_t)len < cap; k++)
        len += snprintf(buf + len, cap - (size_t)len, "%s%s:%zu", k ? "," : "", owners[k].owner,
                        owners[k].cells);
    if (nowners == 0 && len > 0 && (size_t)len < cap)
        snprintf(buf + len, cap - (size_t)len, "-");
    else if (nowners > MAX_OWNERS_SHOWN && len > 0 && (size_t)len < cap)
        snprintf(buf + len, cap - (size_t)len, ",...");
    free(owners);
    free(cells);
    return true;
}

static uint64_t delta(uint64_t cur, uint64_t prev)
{
    return cur >= prev ? cur - prev : 0;
}

static bool draw_line(const ts_ctl_frame_t *f, void *ud)
{
    (void)ud;
    uint64_t entities = 0, inputs = 0, ticks = 0, transfers = 0, remote = 0;
    for (size_t i = 0; i < f->ncur; i++) {
        const ts_ctl_hb_t *c = &f->cur[i];
        if (f->now_us - c->seen_us <= LIVE_MS * 1000ULL) entities += c->entities;
        const ts_ctl_hb_t *p = ts_ctl_hb_find(f->prev, f->nprev, c->id);
        if (!p) continue;
        inputs += delta(c->inputs_applied, p->inputs_applied);
        ticks += delta(c->ticks, p->ticks);
        transfers += delta(c->transfers_out, p->transfers_out);
        remote += delta(c->transfers_out_remote, p->transfers_out_remote);
    }
    char cells[1024], handovers[128] = "";
    unsigned depth = 0;
    bool ok = describe_cells(f->cfg, f->reg, cells, sizeof cells, &depth);
    double n_handovers = 0, splits = 0, merges = 0;
    if (f->stats && ts_json_number(f->stats, "handovers", &n_handovers)) {
        int len = snprintf(handovers, sizeof handovers, " handovers=%.0f", n_handovers);
        if (ts_json_number(f->stats, "splits", &splits) && ts_json_number(f->stats, "merges", &merges) &&
            len > 0 && (size_t)len < sizeof handovers)
            len += snprintf(handovers + len, sizeof handovers - (size_t)len, " splits=%.0f merges=%.0f",
                            splits, merges);
        if (depth > 0 && len > 0 && (size_t)len < sizeof handovers)
            snprintf(handovers + len, sizeof handovers - (size_t)len, " depth=%u", depth);
    }
    printf("%s entities=%llu inputs/s=%.0f ticks=%.0f transfers/s=%.1f cross-worker=%.1f%s\n", cells,
           (unsigned long long)entities, (double)inputs / f->secs, (double)ticks / f->secs,
           (double)transfers / f->secs, (double)remote / f->secs, handovers);
    return ok;
}

int ts_ctl_watch(const ts_config_t *cfg, long count)
{
    return ts_ctl_live(cfg, count, draw_line, NULL);
}
