/* `tessera-ctl top`: a live table of the workers, refreshed every second.
 *
 *   WORKER  ALIVE  CELLS  ENTITIES  INPUTS/S  TICK_P50  TICK_P99  LOAD  DRAINING
 *
 * cells from the registry, the rest from the heartbeats: inputs/s is the
 * counter delta since the previous refresh; the load score is the
 * orchestrator's formula (0.5 x entities / mean + 0.3 x inputs/s / mean +
 * 0.2 x tick p99 / tick budget, means over live workers that are not
 * draining); draining comes from the worker's heartbeat or the registry's
 * draining set. The footer line is the leading orchestrator's `stats`
 * (omitted while none answers). On a terminal the screen is redrawn;
 * otherwise tables follow each other separated by a blank line. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "tessera/json.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define LIVE_MS 3000

typedef struct {
    char id[TS_WORKER_ID_MAX];
    size_t cells;
    const ts_ctl_hb_t *hb;
    bool live, draining;
    double inputs_per_s, load;
} top_row_t;

static top_row_t *row(top_row_t *rows, size_t *n, const char *id)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(rows[i].id, id) == 0) return &rows[i];
    }
    top_row_t *r = &rows[(*n)++];
    memset(r, 0, sizeof *r);
    ts_strlcpy(r->id, id, sizeof r->id);
    return r;
}

static int cmp_row(const void *a, const void *b)
{
    return strcmp(((const top_row_t *)a)->id, ((const top_row_t *)b)->id);
}

static void score(top_row_t *rows, size_t n, double budget_ms)
{
    double sum_e = 0, sum_i = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!rows[i].live || rows[i].draining) continue;
        sum_e += rows[i].hb->entities;
        sum_i += rows[i].inputs_per_s;
        k++;
    }
    double mean_e = k ? sum_e / (double)k : 0, mean_i = k ? sum_i / (double)k : 0;
    for (size_t i = 0; i < n; i++) {
        top_row_t *r = &rows[i];
        if (!r->live) continue;
        r->load = (mean_e > 0 ? 0.5 * r->hb->entities / mean_e : 0) +
                  (mean_i > 0 ? 0.3 * r->inputs_per_s / mean_i : 0) +
                  (budget_ms > 0 ? 0.2 * r->hb->tick_p99_ms / budget_ms : 0);
    }
}

static void print_footer(const char *stats)
{
    double handovers = 0, aborted = 0, p50 = 0, p99 = 0, recoveries = 0, moves = 0;
    if (!stats || stats[0] != '{' || !ts_json_number(stats, "handovers", &handovers)) {
        printf("(no orchestrator answered tessera.ctl stats)\n");
        return;
    }
    ts_json_number(stats, "aborted", &aborted);
    ts_json_number(stats, "freeze_us_p50", &p50);
    ts_json_number(stats, "freeze_us_p99", &p99);
    ts_json_number(stats, "recoveries", &recoveries);
    ts_json_number(stats, "rebalance_moves", &moves);
    printf("handovers=%.0f aborted=%.0f freeze_p50=%.0fus freeze_p99=%.0fus recoveries=%.0f "
           "rebalance_moves=%.0f\n",
           handovers, aborted, p50, p99, recoveries, moves);
}

/* One table. Returns false when the registry could not be read. */
static bool draw(const ts_ctl_frame_t *f, void *ud)
{
    (void)ud;
    const ts_config_t *cfg = f->cfg;
    ts_registry_t *reg = f->reg;
    const ts_ctl_hb_t *cur = f->cur;
    size_t ncur = f->ncur;
    double secs = f->secs;
    uint64_t now = f->now_us;
    if (!reg) return false;
    ts_cell_entry_t *cells = NULL;
    size_t ncells = 0, ndrain = 0, n = 0;
    char **drain = NULL;
    ts_status_t st = ts_registry_cells(reg, (uint32_t)cfg->world_id, &cells, &ncells);
    if (st == TS_ERR_NOT_FOUND) st = TS_OK;
    if (st == TS_OK) st = ts_registry_draining(reg, (uint32_t)cfg->world_id, &drain, &ndrain);
    top_row_t *rows = st == TS_OK ? calloc(ncur + ncells + ndrain + 1, sizeof *rows) : NULL;
    if (!rows) {
        free(cells);
        ts_registry_free_list(drain, ndrain);
        return false;
    }
    for (size_t i = 0; i < ncells; i++)
        row(rows, &n, cells[i].owner[0] ? cells[i].owner : "-")->cells++;
    for (size_t i = 0; i < ncur; i++) {
        top_row_t *r = row(rows, &n, cur[i].id);
        r->hb = &cur[i];
        r->live = now - cur[i].seen_us <= LIVE_MS * 1000ULL;
        r->draining = cur[i].draining;
        const ts_ctl_hb_t *p = ts_ctl_hb_find(f->prev, f->nprev, cur[i].id);
        if (p && cur[i].inputs_applied >= p->inputs_applied && secs > 0)
            r->inputs_per_s = (double)(cur[i].inputs_applied - p->inputs_applied) / secs;
    }
    for (size_t i = 0; i < ndrain; i++)
        row(rows, &n, drain[i])->draining = true;
    double hz = (double)(cfg->worker_tick_hz > 0 ? cfg->worker_tick_hz : 20);
    score(rows, n, 1000.0 / hz);
    if (n > 1) qsort(rows, n, sizeof *rows, cmp_row);

    if (isatty(STDOUT_FILENO)) printf("\033[H\033[2J");
    printf("%-16s %-5s %6s %9s %9s %9s %9s %6s  %s\n", "WORKER", "ALIVE", "CELLS", "ENTITIES", "INPUTS/S",
           "TICK_P50", "TICK_P99", "LOAD", "DRAINING");
    for (size_t i = 0; i < n; i++) {
        const top_row_t *r = &rows[i];
        if (!r->live) {
            printf("%-16s %-5s %6zu %9s %9s %9s %9s %6s  %s\n", r->id, "no", r->cells, "-", "-", "-", "-",
                   "-", r->draining ? "yes" : "no");
            continue;
        }
        printf("%-16s %-5s %6zu %9u %9.0f %7.2fms %7.2fms %6.2f  %s\n", r->id, "yes", r->cells,
               r->hb->entities, r->inputs_per_s, r->hb->tick_p50_ms, r->hb->tick_p99_ms, r->load,
               r->draining ? "yes" : "no");
    }
    print_footer(f->stats);
    if (!isatty(STDOUT_FILENO)) printf("\n");
    fflush(stdout);
    free(rows);
    free(cells);
    ts_registry_free_list(drain, ndrain);
    return true;
}

int ts_ctl_top(const ts_config_t *cfg, long count)
{
    return ts_ctl_live(cfg, count, draw, NULL);
}
