/* When to split a hot cell and when to merge four cold children back: the
 * policy only, pure computation on snapshots (no I/O), so it can be
 * unit-tested; split.c feeds it the registry copy and the heartbeats and
 * carries its decisions out.
 *
 * A cell's load is its owner's latest heartbeat for it: entities, and its
 * share of the owner's tick budget (the cell's share of the worker's
 * entities times the worker's median tick over the tick budget). Only a new
 * report counts as a window, so the decision follows the heartbeats, not how
 * often the planner runs.
 *
 *   split a live cell after `windows` consecutive reports over
 *   max_entities (or over max_tick_share, when that is > 0), if its depth is
 *   below max_depth and it is out of its cooldown;
 *   merge a split parent after `merge_windows` consecutive reports in which
 *   its four children are all active and together under merge_max_entities
 *   (and under max_tick_share / 2), if the parent and its children are out
 *   of their cooldown.
 *
 * Hysteresis: merge_max_entities is kept under max_entities / 2 (a merged
 * cell is far from splitting again); one report that is not hot (cold)
 * restarts the count. Cooldown: a cell and its children are left alone for
 * cooldown_us after a split or merge of it (ts_splitplan_done). So a load
 * oscillating around the split threshold never splits unless it stays over
 * it for `windows` reports, and never flaps between split and merged. */
#ifndef TESSERA_ORCH_SPLITPLAN_H
#define TESSERA_ORCH_SPLITPLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/map.h"
#include "tessera/registry.h"

typedef struct {
    uint32_t max_entities;
    double max_tick_share; /* 0: not used */
    int windows;
    uint64_t cooldown_us;
    uint32_t merge_max_entities;
    int merge_windows;
    int max_depth;
} ts_splitplan_cfg_t;

/* One cell of the snapshot: the registry copy's entry and its load. */
typedef struct {
    ts_cell_entry_t entry;
    bool has_load;      /* a heartbeat listed it recently */
    uint64_t report_us; /* when that heartbeat arrived (a new value is a new report) */
    uint32_t entities;
    double tick_share;
} ts_splitplan_cell_t;

typedef enum { TS_SPLITPLAN_SPLIT = 1, TS_SPLITPLAN_MERGE } ts_splitplan_kind_t;

typedef struct {
    ts_splitplan_kind_t kind;
    size_t cell; /* index into the snapshot: the cell to split, or the parent to merge */
    /* merge: whether the four children share one owner already; if not, the
     * owner to bring them onto first (the one holding most of their entities) */
    bool same_owner;
    char gather_to[TS_WORKER_ID_MAX];
    uint32_t entities; /* the cell's, or the children's together */
    char why[160];
} ts_splitplan_action_t;

typedef struct {
    ts_cell_t cell;
    uint64_t last_report_us; /* the last report counted */
    int hot;                 /* consecutive hot reports */
    int cold;                /* consecutive cold reports (as a split parent) */
    uint64_t cooldown_until_us;
    uint64_t gen; /* evaluation that last saw it */
} ts_splitplan_track_t;

typedef struct {
    ts_splitplan_cfg_t cfg;
    ts_splitplan_track_t *v;
    size_t n, cap;
    ts_map_t index; /* cell hash -> index + 1 */
    uint64_t gen;
} ts_splitplan_t;

/* Clamps the configuration as described above (merge under split / 2,
 * windows >= 1, max_depth within TS_CELL_MAX_DEPTH - 1). */
void ts_splitplan_init(ts_splitplan_t *p, const ts_splitplan_cfg_t *cfg);
void ts_splitplan_free(ts_splitplan_t *p);

/* One evaluation of a snapshot at now_us (monotonic): counts the new
 * reports and fills out[0..max) with the splits and merges that are due.
 * Returns how many. An action is proposed again at the next evaluation
 * until ts_splitplan_done records it (or the counts restart). */
size_t ts_splitplan_eval(ts_splitplan_t *p, const ts_splitplan_cell_t *cells, size_t n, uint64_t now_us,
                         ts_splitplan_action_t *out, size_t max);

/* A split or merge of `cell` happened (or was attempted) at now_us: it and
 * its children start their cooldown and their counts restart. */
void ts_splitplan_done(ts_splitplan_t *p, const ts_cell_t *cell, uint64_t now_us);

/* Whether cell is in its cooldown at now_us. */
bool ts_splitplan_cooling(const ts_splitplan_t *p, const ts_cell_t *cell, uint64_t now_us);

#endif
