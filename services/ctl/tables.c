/* `tessera-ctl cells` and `tessera-ctl workers`: tables from the registry,
 * the second completed with the heartbeats that arrive within HB_WAIT_MS. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define HB_WAIT_MS 1500

static int cmp_entry(const void *pa, const void *pb)
{
    const ts_cell_t *a = &((const ts_cell_entry_t *)pa)->cell, *b = &((const ts_cell_entry_t *)pb)->cell;
    if (a->cx != b->cx) return a->cx < b->cx ? -1 : 1;
    if (a->cy != b->cy) return a->cy < b->cy ? -1 : 1;
    if (a->depth != b->depth) return a->depth < b->depth ? -1 : 1;
    return a->sub < b->sub ? -1 : a->sub > b->sub;
}

typedef struct {
    char id[TS_WORKER_ID_MAX];
    bool alive;
} owner_t;

/* Whether each distinct owner of cells is alive (its liveness key, as
 * `tessera-ctl workers` reads it): all owners in one pipelined read.
 * Returns the table (caller frees; NULL when out of memory). */
static owner_t *owners_alive(ts_registry_t *reg, const ts_cell_entry_t *cells, size_t n, size_t *nowners)
{
    owner_t *v = calloc(n + 1, sizeof *v);
    const char **ids = calloc(n + 1, sizeof *ids);
    char(*tokens)[TS_WORKER_TOKEN_MAX] = calloc(n + 1, sizeof *tokens);
    *nowners = 0;
    if (!v || !ids || !tokens) {
        free(v);
        free(ids);
        free(tokens);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!cells[i].owner[0]) continue;
        size_t k = 0;
        while (k < *nowners && strcmp(v[k].id, cells[i].owner) != 0)
            k++;
        if (k < *nowners) continue;
        ts_strlcpy(v[k].id, cells[i].owner, sizeof v[k].id);
        ids[k] = v[k].id;
        (*nowners)++;
    }
    if (ts_registry_workers_liveness(reg, ids, *nowners, tokens) == TS_OK) {
        for (size_t k = 0; k < *nowners; k++)
            v[k].alive = tokens[k][0] != '\0';
    }
    free(ids);
    free(tokens);
    return v;
}

static bool owner_alive(const owner_t *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i].id, id) == 0) return v[i].alive;
    }
    return false;
}

int ts_ctl_cells(const ts_config_t *cfg)
{
    uint32_t world = (uint32_t)cfg->world_id;
    ts_registry_t *reg = NULL;
    if (ts_ctl_connect_registry(cfg, &reg) != TS_OK) return 1;
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    uint64_t version = 0;
    ts_world_t w;
    owner_t *owners = NULL;
    size_t nowners = 0;
    int rc = 1;
    ts_status_t st = ts_registry_world_get(reg, world, &w);
    if (st == TS_ERR_NOT_FOUND) {
        fprintf(stderr, "tessera-ctl: world %u is not in the registry at %s (is tessera-orch running?)\n",
                world, cfg->redis_url);
        goto cleanup;
    }
    if (st == TS_OK) st = ts_registry_cells(reg, world, &cells, &n);
    if (st == TS_OK) st = ts_registry_version(reg, world, &version);
    if (st != TS_OK) {
        fprintf(stderr, "tessera-ctl: cannot read the cells of world %u: %s\n", world, ts_status_str(st));
        goto cleanup;
    }
    if (n > 1) qsort(cells, n, sizeof *cells, cmp_entry);
    owners = owners_alive(reg, cells, n, &nowners);
    if (!owners) {
        fprintf(stderr, "tessera-ctl: out of memory\n");
        goto cleanup;
    }
    /* parents sort before their children (same root, lower depth) */
    printf("%-24s %-16s %8s  %-8s %5s  %s\n", "CELL", "OWNER", "EPOCH", "STATE", "DEPTH", "PARENT");
    size_t live = 0, unserved = 0;
    unsigned deepest = 0;
    for (size_t i = 0; i < n; i++) {
        const ts_cell_entry_t *e = &cells[i];
        char key[TS_CELL_STR_MAX], parent[TS_CELL_STR_MAX] = "-";
        ts_cell_t p;
        ts_cell_format(&e->cell, key, sizeof key);
        if (e->cell.depth > 0 && ts_cell_parent(&e->cell, &p) == TS_OK)
            ts_cell_format(&p, parent, sizeof parent);
        bool served = e->state != TS_CELL_ACTIVE && e->state != TS_CELL_HANDOVER;
        if (!served && e->owner[0]) served = owner_alive(owners, nowners, e->owner);
        printf("%-24s %-16s %8llu  %-8s %5u  %s%s\n", key, e->owner[0] ? e->owner : "-",
               (unsigned long long)e->epoch, ts_cell_state_str(e->state), (unsigned)e->cell.depth, parent,
               served ? "" : "  NOT SERVED (owner not alive)");
        if (e->state == TS_CELL_ACTIVE || e->state == TS_CELL_HANDOVER) {
            live++;
            unserved += !served;
            if (e->cell.depth > deepest) deepest = e->cell.depth;
        }
    }
    printf("world %u: %zu cells, %zu live (deepest at depth %u), %dx%d root cells of %g from %d,%d, registry "
           "version %llu\n",
           world, n, live, deepest, w.width, w.height, w.cell_size, w.x0, w.y0, (unsigned long long)version);
    printf("%zu live cells not served (owner not alive)\n", unserved);
    rc = 0;

cleanup:
    free(owners);
    free(cells);
    ts_registry_destroy(reg);
    return rc;
}

typedef struct {
    char id[TS_WORKER_ID_MAX];
    bool alive;   /* liveness key present (TTL not expired) */
    size_t owned; /* cells owned in the registry */
    const ts_ctl_hb_t *hb;
} row_t;

static row_t *row_for(row_t *rows, size_t *n, const char *id)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(rows[i].id, id) == 0) return &rows[i];
    }
    row_t *r = &rows[(*n)++];
    memset(r, 0, sizeof *r);
    ts_strlcpy(r->id, id, sizeof r->id);
    return r;
}

static int cmp_row(const void *a, const void *b)
{
    return strcmp(((const row_t *)a)->id, ((const row_t *)b)->id);
}

/* Collects heartbeats for HB_WAIT_MS; a NATS failure leaves *hbs empty. */
static void collect_heartbeats(const ts_config_t *cfg, ts_ctl_hb_t **hbs, size_t *nhb)
{
    *hbs = NULL;
    *nhb = 0;
    ts_bus_t *bus = NULL;
    ts_ctl_hbs_t *table = NULL;
    ts_bus_sub_t *sub = NULL;
    if (ts_ctl_hbs_create(&table) != TS_OK || ts_ctl_connect_bus(cfg, &bus) != TS_OK ||
        ts_bus_subscribe(bus, "tessera.worker.*.hb", ts_ctl_hbs_on_msg, table, &sub) != TS_OK) {
        fprintf(stderr, "tessera-ctl: no heartbeats (NATS at %s unavailable); showing the registry only\n",
                cfg->nats_url);
    } else {
        uint64_t end = ts_mono_us() + HB_WAIT_MS * 1000ULL;
        while (!ts_ctl_stop && ts_mono_us() < end)
            ts_sleep_ms(50);
    }
    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    if (table && ts_ctl_hbs_snapshot(table, hbs, nhb) != TS_OK) *nhb = 0;
    ts_ctl_hbs_destroy(table);
}

int ts_ctl_workers(const ts_config_t *cfg)
{
    ts_registry_t *reg = NULL;
    if (ts_ctl_connect_registry(cfg, &reg) != TS_OK) return 1;
    char **ids = NULL;
    size_t nids = 0, ncells = 0, nhb = 0, nrows = 0;
    ts_cell_entry_t *cells = NULL;
    ts_ctl_hb_t *hbs = NULL;
    row_t *rows = NULL;
    int rc = 1;
    ts_status_t st = ts_registry_workers(reg, &ids, &nids);
    if (st == TS_OK) {
        st = ts_registry_cells(reg, (uint32_t)cfg->world_id, &cells, &ncells);
        if (st == TS_ERR_NOT_FOUND) st = TS_OK;
    }
    if (st != TS_OK) {
        fprintf(stderr, "tessera-ctl: cannot read workers from %s: %s\n", cfg->redis_url, ts_status_str(st));
        goto cleanup;
    }
    collect_heartbeats(cfg, &hbs, &nhb);

    rows = calloc(nids + nhb + ncells + 1, sizeof *rows);
    if (!rows) {
        fprintf(stderr, "tessera-ctl: out of memory\n");
        goto cleanup;
    }
    for (size_t i = 0; i < nids; i++)
        row_for(rows, &nrows, ids[i]);
    for (size_t i = 0; i < ncells; i++) {
        if (cells[i].owner[0]) row_for(rows, &nrows, cells[i].owner)->owned++;
    }
    for (size_t i = 0; i < nhb; i++)
        row_for(rows, &nrows, hbs[i].id)->hb = &hbs[i];
    for (size_t i = 0; i < nrows; i++) {
        if (ts_registry_worker_is_alive(reg, rows[i].id, &rows[i].alive) != TS_OK) rows[i].alive = false;
    }
    if (nrows > 1) qsort(rows, nrows, sizeof *rows, cmp_row);

    printf("%-16s %-9s %6s %9s %9s %10s %15s %8s %10s %10s %9s %8s %8s %9s\n", "WORKER", "ALIVE", "CELLS",
           "ENTITIES", "CAPACITY", "TICKS", "INPUTS_APPLIED", "DROPPED", "DUPLICATE", "TRANSFERS", "TICK_P99",
           "MISSED", "BINDING", "PUB_RETRY");
    for (size_t i = 0; i < nrows; i++) {
        const row_t *r = &rows[i];
        const char *alive = r->alive ? "yes" : "no";
        if (!r->hb) {
            printf("%-16s %-9s %6zu %9s %9s %10s %15s %8s %10s %10s %9s %8s %8s %9s\n", r->id, alive,
                   r->owned, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-");
            continue;
        }
        printf("%-16s %-9s %6zu %9u %9u %10llu %15llu %8llu %10llu %10llu %7.2fms %8llu %8llu %9llu\n", r->id,
               alive, r->owned, r->hb->entities, r->hb->capacity, (unsigned long long)r->hb->ticks,
               (unsigned long long)r->hb->inputs_applied, (unsigned long long)r->hb->inputs_dropped,
               (unsigned long long)r->hb->inputs_duplicate, (unsigned long long)r->hb->transfers_out,
               r->hb->tick_p99_ms, (unsigned long long)r->hb->ticks_missed,
               (unsigned long long)r->hb->cells_binding, (unsigned long long)r->hb->publishes_failed);
    }
    printf("%zu workers known, %zu sent a heartbeat within %.1f s\n", nrows, nhb, HB_WAIT_MS / 1000.0);
    rc = 0;

cleanup:
    free(rows);
    free(hbs);
    free(cells);
    ts_registry_free_list(ids, nids);
    ts_registry_destroy(reg);
    return rc;
}
