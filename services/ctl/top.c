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
#include "tessera/log.h"
#include "tessera/util.h"

#define PERIOD_MS 1000
#define LIVE_MS 3000
#define STATS_TIMEOUT_MS 300
#define STATS_BACKOFF_US 5000000ULL

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
        if (strcmp(rows[i].id, id) == 0)
            return &rows[i];
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

static const ts_ctl_hb_t *find_prev(const ts_ctl_hb_t *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].id, id) == 0)
            return &v[i];
    }
    return NULL;
}

static void score(top_row_t *rows, size_t n, double budget_ms)
{
    double sum_e = 0, sum_i = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!rows[i].live || rows[i].draining)
            continue;
        sum_e += rows[i].hb->entities;
        sum_i += rows[i].inputs_per_s;
        k++;
    }
    double mean_e = k ? sum_e / (double)k : 0, mean_i = k ? sum_i / (double)k : 0;
    for (size_t i = 0; i < n; i++) {
        top_row_t *r = &rows[i];
        if (!r->live)
            continue;
        r->load = (mean_e > 0 ? 0.5 * r->hb->entities / mean_e : 0) +
                  (mean_i > 0 ? 0.3 * r->inputs_per_s / mean_i : 0) +
                  (budget_ms > 0 ? 0.2 * r->hb->tick_p99_ms / budget_ms : 0);
    }
}

static void print_footer(const char *stats)
{
    double handovers = 0, aborted = 0, p50 = 0, p99 = 0, recoveries = 0, moves = 0;
    if (!stats || stats[0] != '{' || !ts_ctl_json_number(stats, "handovers", &handovers)) {
        printf("(no orchestrator answered tessera.ctl stats)\n");
        return;
    }
    ts_ctl_json_number(stats, "aborted", &aborted);
    ts_ctl_json_number(stats, "freeze_us_p50", &p50);
    ts_ctl_json_number(stats, "freeze_us_p99", &p99);
    ts_ctl_json_number(stats, "recoveries", &recoveries);
    ts_ctl_json_number(stats, "rebalance_moves", &moves);
    printf("handovers=%.0f aborted=%.0f freeze_p50=%.0fus freeze_p99=%.0fus recoveries=%.0f "
           "rebalance_moves=%.0f\n",
           handovers, aborted, p50, p99, recoveries, moves);
}

/* One table. Returns false when the registry could not be read. */
static bool draw(const ts_config_t *cfg, ts_registry_t *reg, const ts_ctl_hb_t *cur, size_t ncur,
                 const ts_ctl_hb_t *prev, size_t nprev, double secs, const char *stats, uint64_t now)
{
    ts_cell_entry_t *cells = NULL;
    size_t ncells = 0, ndrain = 0, n = 0;
    char **drain = NULL;
    ts_status_t st = ts_registry_cells(reg, (uint32_t)cfg->world_id, &cells, &ncells);
    if (st == TS_ERR_NOT_FOUND)
        st = TS_OK;
    if (st == TS_OK)
        st = ts_registry_draining(reg, (uint32_t)cfg->world_id, &drain, &ndrain);
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
        const ts_ctl_hb_t *p = find_prev(prev, nprev, cur[i].id);
        if (p && cur[i].inputs_applied >= p->inputs_applied && secs > 0)
            r->inputs_per_s = (double)(cur[i].inputs_applied - p->inputs_applied) / secs;
    }
    for (size_t i = 0; i < ndrain; i++)
        row(rows, &n, drain[i])->draining = true;
    double hz = (double)(cfg->worker_tick_hz > 0 ? cfg->worker_tick_hz : 20);
    score(rows, n, 1000.0 / hz);
    if (n > 1)
        qsort(rows, n, sizeof *rows, cmp_row);

    if (isatty(STDOUT_FILENO))
        printf("\033[H\033[2J");
    printf("%-16s %-5s %6s %9s %9s %9s %9s %6s  %s\n", "WORKER", "ALIVE", "CELLS", "ENTITIES", "INPUTS/S",
           "TICK_P50", "TICK_P99", "LOAD", "DRAINING");
    for (size_t i = 0; i < n; i++) {
        const top_row_t *r = &rows[i];
        if (!r->live) {
            printf("%-16s %-5s %6zu %9s %9s %9s %9s %6s  %s\n", r->id, "no", r->cells, "-", "-", "-", "-", "-",
                   r->draining ? "yes" : "no");
            continue;
        }
        printf("%-16s %-5s %6zu %9u %9.0f %7.2fms %7.2fms %6.2f  %s\n", r->id, "yes", r->cells, r->hb->entities,
               r->inputs_per_s, r->hb->tick_p50_ms, r->hb->tick_p99_ms, r->load, r->draining ? "yes" : "no");
    }
    print_footer(stats);
    if (!isatty(STDOUT_FILENO))
        printf("\n");
    fflush(stdout);
    free(rows);
    free(cells);
    ts_registry_free_list(drain, ndrain);
    return true;
}

int ts_ctl_top(const ts_config_t *cfg, long count)
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
    for (long shown = 0; !ts_ctl_stop && (count <= 0 || shown < count);) {
        uint64_t now = ts_mono_us();
        if (now < next) {
            ts_sleep_ms(50);
            continue;
        }
        next = now + PERIOD_MS * 1000ULL;
        double secs = (double)(now - last) / 1e6;
        last = now;
        ts_ctl_hb_t *cur = NULL;
        size_t ncur = 0;
        if (ts_ctl_hbs_snapshot(table, &cur, &ncur) != TS_OK)
            break;
        char *stats = NULL;
        if (now >= next_stats &&
            ts_ctl_request(bus, (uint32_t)cfg->world_id, "stats", "", STATS_TIMEOUT_MS, &stats) != TS_OK)
            next_stats = now + STATS_BACKOFF_US;
        if (!draw(cfg, reg, cur, ncur, prev, nprev, secs, stats, now)) {
            fprintf(stderr, "tessera-ctl: cannot read the registry at %s; retrying\n", cfg->redis_url);
            ts_registry_destroy(reg);
            reg = NULL;
            if (ts_ctl_connect_registry(cfg, &reg) != TS_OK) {
                free(stats);
                free(cur);
                goto cleanup;
            }
        }
        free(stats);
        free(prev);
        prev = cur;
        nprev = ncur;
        shown++;
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
