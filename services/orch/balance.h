/* Load balancing policy: worker load scores, where a cell of a dead or
 * draining worker should go, and which single cell to move from the hottest
 * to the coldest worker. Pure computation on a snapshot (no I/O), so it can be
 * unit-tested; the orchestrator builds the snapshot from the registry and the
 * heartbeats.
 *
 * Load of a worker, over the eligible (live, not draining) workers:
 *   0.5 * entities / mean_entities + 0.3 * inputs_per_s / mean_inputs_per_s
 *   + 0.2 * tick_p99_ms / tick_budget_ms
 * where a term whose mean is 0 counts 0. A worker's entities and inputs/s are
 * the sums over the cells the registry gives it (so a move shows at once); a
 * cell's share of the tick term is its share of its owner's entities. */
#ifndef TESSERA_ORCH_BALANCE_H
#define TESSERA_ORCH_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/map.h"
#include "tessera/registry.h"
#include "tessera/status.h"

/* The hottest worker must be this much above the mean as well (absolute),
 * so that noise on an idle cluster never moves anything. */
#define TS_BALANCE_MIN_GAP 0.05
/* Targets whose loads differ by less than this are equally loaded. */
#define TS_BALANCE_TIE 0.05

typedef struct {
    char id[TS_WORKER_ID_MAX];
    bool eligible;      /* live and not draining: may give and receive cells */
    double tick_p99_ms; /* from its heartbeat */
    bool overloaded;    /* its heartbeat shows ticks over budget (p99 or missed ticks):
                         * it sheds cells without waiting for the hysteresis */
    /* computed by ts_balance_view_init from the cells it owns */
    size_t ncells;
    double entities, inputs_per_s, load;
} ts_balance_worker_t;

typedef struct {
    ts_cell_t cell;
    int owner; /* index into the workers, -1 if none of them */
    double entities, inputs_per_s;
} ts_balance_cell_t;

typedef struct {
    ts_balance_worker_t *w;
    size_t nw;
    ts_balance_cell_t *c;
    size_t nc;
    double budget_ms; /* 1000 / worker.tick_hz */
    size_t neligible;
    double mean_entities, mean_inputs, mean_load; /* over eligible workers */
    ts_map_t index;                               /* cell hash -> cell index + 1 */
} ts_balance_view_t;

/* Computes every worker's load and indexes the cells; borrows w and c (the
 * view updates them in ts_balance_assign). Free with ts_balance_view_free. */
ts_status_t ts_balance_view_init(ts_balance_view_t *v, ts_balance_worker_t *w, size_t nw,
                                 ts_balance_cell_t *c, size_t nc, double budget_ms);
void ts_balance_view_free(ts_balance_view_t *v);
/* Estimated share of the owner's load that moves with cell i. */
double ts_balance_cell_load(const ts_balance_view_t *v, size_t i);
/* Index of the cell with this id, or -1. */
long ts_balance_find(const ts_balance_view_t *v, const ts_cell_t *cell);
/* Where cell i should go: the least-loaded eligible worker other than
 * exclude; among equally loaded ones (TS_BALANCE_TIE) one owning a
 * neighbouring cell, then the one with fewer cells, then the lower load, then
 * the smaller id. -1 if there is no eligible worker. */
int ts_balance_target(const ts_balance_view_t *v, size_t i, int exclude);
/* Records that cell i now belongs to worker `to` (loads and counts follow,
 * means stay), so several cells can be placed one after another. */
void ts_balance_assign(ts_balance_view_t *v, size_t i, int to);

typedef struct {
    double threshold;     /* orch.rebalance_threshold */
    int hysteresis;       /* orch.rebalance_hysteresis */
    uint64_t cooldown_us; /* orch.rebalance_cooldown_ms */
} ts_balance_cfg_t;

/* Rebalancer state across evaluations. A worker is hot when its load exceeds
 * (1 + threshold) x mean; after `hysteresis` consecutive hot evaluations the
 * rebalancer is active and moves one cell per cooldown until the hottest load
 * is back under (1 + threshold / 2) x mean, so it settles inside the band
 * rather than on its edge. */
typedef struct {
    ts_balance_cfg_t cfg;
    int over;
    bool active;
    uint64_t last_move_us; /* 0: never moved */
} ts_balance_t;

typedef enum {
    TS_BALANCE_NONE = 0,
    TS_BALANCE_EMPTY, /* a live worker owns no cell: it gets one */
    TS_BALANCE_LOAD,  /* hottest to coldest */
} ts_balance_kind_t;

typedef struct {
    ts_balance_kind_t kind;
    size_t cell;   /* index into the view's cells */
    int from, to;  /* worker indexes */
    bool adjacent; /* the cell touches a cell `to` owns */
    double from_load, to_load, cell_load, mean_load;
    char why[192]; /* for NONE: why nothing moves */
} ts_balance_move_t;

void ts_balance_init(ts_balance_t *b, const ts_balance_cfg_t *cfg);
/* One evaluation at now_us (monotonic). Fills *out; the caller performs a
 * move and then calls ts_balance_moved. Never proposes a worker's last cell,
 * nor a move that does not strictly lower max(load_from, load_to) (except
 * the first cell of an empty worker). */
void ts_balance_eval(ts_balance_t *b, ts_balance_view_t *v, uint64_t now_us, ts_balance_move_t *out);
void ts_balance_moved(ts_balance_t *b, uint64_t now_us);

/* Several moves at once, in proportion to the imbalance: one evaluation as
 * ts_balance_eval, and when it proposes a move, further ones in the same
 * plan — each applied to v (ts_balance_assign) before the next is chosen,
 * hottest to coldest, each strictly lowering max(load_from, load_to) — until
 * the hottest worker is back under (1 + threshold / 2) x mean or max_moves
 * are planned. A worker that owns no cell gets one first; the load moves
 * then follow in the same plan if the cluster is over the threshold (a
 * worker joining is an event, not noise: no hysteresis). An overloaded
 * worker (see ts_balance_worker_t) counts as hot at once. Idle and balanced
 * clusters get no move, exactly as with ts_balance_eval. Fills moves[0..n)
 * and returns n; with n = 0, *none says why. The caller performs the moves
 * and calls ts_balance_moved. */
size_t ts_balance_plan(ts_balance_t *b, ts_balance_view_t *v, uint64_t now_us, ts_balance_move_t *moves,
                       size_t max_moves, ts_balance_move_t *none);

#endif
