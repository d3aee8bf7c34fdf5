/* World layout from configuration.
 *
 * Invariants of a built layout: 1 <= width, height <= TS_LAYOUT_MAX_SIDE;
 * cell_size is finite and > 0; every root coordinate fits in int32; there
 * is at least one worker, ids are unique and safe as subject tokens and
 * Redis key parts; every cell has exactly one owner from the worker list. */
#include "layout.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "tessera/util.h"

static ts_status_t fail(char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static ts_status_t fail(char *err, size_t errcap, const char *fmt, ...)
{
    if (err && errcap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errcap, fmt, ap);
        va_end(ap);
    }
    return TS_ERR_CONFIG;
}

/* Trims ASCII whitespace in place; returns the start of the trimmed text. */
static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static ssize_t worker_index(const ts_layout_t *l, const char *id)
{
    for (size_t i = 0; i < l->nworkers; i++) {
        if (strcmp(l->workers[i], id) == 0) return (ssize_t)i;
    }
    return -1;
}

static ts_status_t parse_workers(ts_layout_t *l, const char *list, char *err, size_t errcap)
{
    if (!list) list = "";
    char *copy = strdup(list);
    if (!copy) return TS_ERR_NOMEM;
    size_t cap = 1;
    for (const char *p = list; *p; p++)
        cap += (*p == ',');
    l->workers = calloc(cap, sizeof *l->workers);
    if (!l->workers) {
        free(copy);
        return TS_ERR_NOMEM;
    }
    ts_status_t st = TS_OK;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *id = trim(tok);
        if (*id == '\0') continue;
        if (!ts_worker_id_valid(id)) {
            st = fail(err, errcap,
                      "world.workers: bad worker id '%s' (1-%d characters of letters, digits, '-', '_')", id,
                      TS_WORKER_ID_MAX - 1);
            break;
        }
        if (worker_index(l, id) >= 0) {
            st = fail(err, errcap, "world.workers: worker '%s' is listed twice", id);
            break;
        }
        ts_strlcpy(l->workers[l->nworkers++], id, TS_WORKER_ID_MAX);
    }
    free(copy);
    if (st == TS_OK && l->nworkers == 0)
        st = fail(err, errcap, "world.workers: at least one worker id is required");
    return st;
}

/* One "cx:cy=worker" item. */
static ts_status_t apply_assign(ts_layout_t *l, char *item, char *err, size_t errcap)
{
    char *eq = strchr(item, '=');
    char *colon = strchr(item, ':');
    if (!eq || !colon || colon > eq)
        return fail(err, errcap, "world.assign: '%s' is not of the form cx:cy=worker", item);
    *eq = '\0';
    *colon = '\0';
    char *sx = trim(item), *sy = trim(colon + 1), *worker = trim(eq + 1);
    int64_t cx, cy;
    if (ts_parse_i64(sx, &cx) != TS_OK || ts_parse_i64(sy, &cy) != TS_OK)
        return fail(err, errcap, "world.assign: cell '%s:%s' is not two integers", sx, sy);
    const ts_world_t *w = &l->world;
    if (cx < w->x0 || cx >= (int64_t)w->x0 + w->width || cy < w->y0 || cy >= (int64_t)w->y0 + w->height)
        return fail(err, errcap, "world.assign: cell %lld:%lld is outside the world (cx %d..%d, cy %d..%d)",
                    (long long)cx, (long long)cy, w->x0, w->x0 + w->width - 1, w->y0, w->y0 + w->height - 1);
    if (worker_index(l, worker) < 0)
        return fail(err, errcap, "world.assign: worker '%s' for cell %lld:%lld is not in world.workers",
                    worker, (long long)cx, (long long)cy);
    ts_cell_entry_t *e = &l->cells[(size_t)(cy - w->y0) * (size_t)w->width + (size_t)(cx - w->x0)];
    ts_strlcpy(e->owner, worker, sizeof e->owner);
    return TS_OK;
}

static ts_status_t parse_assign(ts_layout_t *l, const char *list, char *err, size_t errcap)
{
    if (!list || !*list) return TS_OK;
    char *copy = strdup(list);
    if (!copy) return TS_ERR_NOMEM;
    ts_status_t st = TS_OK;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && st == TS_OK; tok = strtok_r(NULL, ",", &save)) {
        char *item = trim(tok);
        if (*item) st = apply_assign(l, item, err, errcap);
    }
    free(copy);
    return st;
}

static ts_status_t check_geometry(const ts_config_t *cfg, char *err, size_t errcap)
{
    if (cfg->world_id < 0 || cfg->world_id > (int64_t)UINT32_MAX)
        return fail(err, errcap, "world.id: %lld is out of range (0..%u)", (long long)cfg->world_id,
                    UINT32_MAX);
    if (!(cfg->world_cell_size > 0) || !isfinite(cfg->world_cell_size))
        return fail(err, errcap, "world.cell_size: must be a positive number, got %g", cfg->world_cell_size);
    if (cfg->world_width < 1 || cfg->world_width > TS_LAYOUT_MAX_SIDE)
        return fail(err, errcap, "world.width: must be 1..%d root cells, got %lld", TS_LAYOUT_MAX_SIDE,
                    (long long)cfg->world_width);
    if (cfg->world_height < 1 || cfg->world_height > TS_LAYOUT_MAX_SIDE)
        return fail(err, errcap, "world.height: must be 1..%d root cells, got %lld", TS_LAYOUT_MAX_SIDE,
                    (long long)cfg->world_height);
    if (cfg->world_x0 < INT32_MIN || cfg->world_x0 + cfg->world_width - 1 > INT32_MAX)
        return fail(err, errcap, "world.x0: %lld puts the world outside the 32-bit cell range",
                    (long long)cfg->world_x0);
    if (cfg->world_y0 < INT32_MIN || cfg->world_y0 + cfg->world_height - 1 > INT32_MAX)
        return fail(err, errcap, "world.y0: %lld puts the world outside the 32-bit cell range",
                    (long long)cfg->world_y0);
    return TS_OK;
}

ts_status_t ts_layout_build(ts_layout_t *out, const ts_config_t *cfg, char *err, size_t errcap)
{
    memset(out, 0, sizeof *out);
    if (err && errcap) err[0] = '\0';
    ts_status_t st = check_geometry(cfg, err, errcap);
    if (st != TS_OK) return st;

    ts_layout_t l = {0};
    l.world.id = (uint32_t)cfg->world_id;
    l.world.cell_size = cfg->world_cell_size;
    l.world.x0 = (int32_t)cfg->world_x0;
    l.world.y0 = (int32_t)cfg->world_y0;
    l.world.width = (int32_t)cfg->world_width;
    l.world.height = (int32_t)cfg->world_height;

    st = parse_workers(&l, cfg->world_workers, err, errcap);
    if (st != TS_OK) goto cleanup;

    l.ncells = (size_t)l.world.width * (size_t)l.world.height;
    l.cells = calloc(l.ncells, sizeof *l.cells);
    if (!l.cells) {
        st = TS_ERR_NOMEM;
        goto cleanup;
    }
    for (int32_t row = 0; row < l.world.height; row++) {
        for (int32_t col = 0; col < l.world.width; col++) {
            ts_cell_entry_t *e = &l.cells[(size_t)row * (size_t)l.world.width + (size_t)col];
            e->cell = (ts_cell_t){.world = l.world.id, .cx = l.world.x0 + col, .cy = l.world.y0 + row};
            e->epoch = 1;
            e->state = TS_CELL_ACTIVE;
            size_t owner = (size_t)col * l.nworkers / (size_t)l.world.width;
            ts_strlcpy(e->owner, l.workers[owner], sizeof e->owner);
        }
    }
    st = parse_assign(&l, cfg->world_assign, err, errcap);

cleanup:
    if (st != TS_OK) {
        if (st == TS_ERR_NOMEM && err && errcap && !err[0])
            snprintf(err, errcap, "out of memory building the world layout");
        ts_layout_free(&l);
        return st;
    }
    *out = l;
    return TS_OK;
}

void ts_layout_free(ts_layout_t *l)
{
    if (!l) return;
    free(l->workers);
    free(l->cells);
    memset(l, 0, sizeof *l);
}

const ts_cell_entry_t *ts_layout_cell(const ts_layout_t *l, int32_t cx, int32_t cy)
{
    const ts_world_t *w = &l->world;
    if (!l->cells || cx < w->x0 || (int64_t)cx >= (int64_t)w->x0 + w->width || cy < w->y0 ||
        (int64_t)cy >= (int64_t)w->y0 + w->height)
        return NULL;
    return &l->cells[(size_t)(cy - w->y0) * (size_t)w->width + (size_t)(cx - w->x0)];
}

size_t ts_layout_count_owned(const ts_layout_t *l, const char *worker)
{
    size_t n = 0;
    for (size_t i = 0; i < l->ncells; i++)
        n += strcmp(l->cells[i].owner, worker) == 0;
    return n;
}
