/* World counters: the sum over the world's cells of the game module's
 * per-cell counters (api->counter_add), sent to every joined client as a
 * WorldCounters ServerFrame (schemas/client.proto).
 *
 * Every gateway subscribes to the workers' heartbeats (tessera.worker.*.hb),
 * whatever else it serves: a nats.c thread decodes each one and keeps, under
 * `lock`, the worker's latest list of cells (cell, epoch, counters), sorted
 * by cell hash. A timer on the loop (every GW_COUNTERS_EVAL_MS) sums, for
 * each cell of the registry view, the latest report of its registry owner
 * at its registry epoch. Every state counts, split and retired cells too: a
 * split cell moves its counters to child quadrant 0 and a retired one to
 * its parent, through the input streams, so a forwarding cell holds only
 * what it applied since its last move, which must count as well.
 *
 * A move on its way: the source's counters are 0 from its marker on, the
 * destination has not applied the CountersInput yet. Each report carries
 * the cell's flows (CellLoad.flows: per peer, what it moved there and
 * received from there in total, as of the same input position as its
 * counters), and a cell counts as its counters plus, for each flow whose
 * peer is in the registry view, what it moved there less what it received
 * from there. A move takes values from one cell's counters into its out
 * total and adds them to the other's counters and in total, so neither
 * cell's count changes: the sum is exact whichever side of a move each
 * report is from (a move on its way, a new owner's report from before a
 * move its last owner had applied, a held report), and only counter_add
 * changes it.
 *
 * A cell with no such report yet (just handed
 * over, split, merged or recovered: its owner has not sent a heartbeat
 * since), or whose owner reports a newer epoch than this gateway's view,
 * holds the value of its last report and puts the change off for up to
 * GW_COUNTERS_WAIT_US, so the sum does not jump while a change settles.
 *
 * When the sum changes it is encoded once and the same bytes go to every
 * joined client that has had its first Snapshot, each after a frame head of
 * its own (seq, epoch, cell). A client above gateway.max_backlog is skipped
 * and gets the values at a later evaluation once it is below; a new client
 * gets them right after its first Snapshot (gw_counters_after_snapshot). A
 * client that never got WorldCounters has every counter at 0. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define GW_COUNTERS_EVAL_MS 250
#define GW_COUNTERS_WAIT_US 1500000ull
#define GW_COUNTERS_WORKERS 256
#define GW_COUNTERS_WORKER_CELLS 4096
/* A worker's slot is given to another only after it was silent this long. */
#define GW_COUNTERS_STALE_MS 60000

typedef struct {
    uint64_t hash;
    ts_cell_t cell;
    uint64_t epoch;
    int64_t v[TS_GAME_COUNTERS];
    uint32_t flow0, nflows; /* its flows: the worker's fl[flow0 .. flow0 + nflows) */
} ctr_report_t;

typedef struct {
    char id[TS_WORKER_ID_MAX];
    uint64_t seen_ms;
    ctr_report_t *r; /* sorted by hash */
    size_t n;
    gw_ctr_flow_t *fl; /* the flows of its reports */
} ctr_worker_t;

struct gw_counters {
    gw_t *gw;
    pthread_mutex_t lock; /* workers, nworkers */
    ctr_worker_t workers[GW_COUNTERS_WORKERS];
    size_t nworkers;
    /* loop thread */
    ts_bus_sub_t *sub;
    uv_timer_t timer;
    bool timer_open;
    int64_t values[TS_GAME_COUNTERS];
    uint64_t version; /* bumped at every change of values (0: all 0, never changed) */
    uint8_t enc[TS_GAME_COUNTERS * 10 + 8];
    size_t enc_len;
    bool due; /* some joined client has not got `version` yet */
};

static int report_cmp(const void *a, const void *b)
{
    const ctr_report_t *x = a, *y = b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

/* One worker's heartbeat (packed): its reports replace the worker's last. */
static void take_heartbeat(gw_counters_t *k, const uint8_t *data, size_t len)
{
    Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, len, data);
    if (hb == NULL || hb->worker == NULL || hb->worker[0] == '\0' || strlen(hb->worker) >= TS_WORKER_ID_MAX) {
        if (hb != NULL) tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    uint32_t world = k->gw->world.id; /* set before the subscription: read-only */
    size_t n = hb->n_cells < GW_COUNTERS_WORKER_CELLS ? hb->n_cells : GW_COUNTERS_WORKER_CELLS;
    ctr_report_t *r = n ? calloc(n, sizeof *r) : NULL;
    if (n > 0 && r == NULL) {
        tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    size_t nfl = 0, mfl = 0;
    for (size_t i = 0; i < n; i++)
        nfl += hb->cells[i]->n_flows < GW_CTR_FLOWS ? hb->cells[i]->n_flows : GW_CTR_FLOWS;
    gw_ctr_flow_t *fl = nfl ? calloc(nfl, sizeof *fl) : NULL;
    if (nfl > 0 && fl == NULL) {
        free(r);
        tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const Tessera__V1__CellLoad *cl = hb->cells[i];
        ts_cell_t id;
        if (cl->cell == NULL || ts_proto_cell_get(cl->cell, &id) != TS_OK || id.world != world) continue;
        ctr_report_t *p = &r[m++];
        p->cell = id;
        p->hash = ts_cell_hash(&id);
        p->epoch = cl->epoch;
        for (size_t c = 0; c < cl->n_counters && c < TS_GAME_COUNTERS; c++)
            p->v[c] = cl->counters[c];
        p->flow0 = (uint32_t)mfl;
        for (size_t f = 0; f < cl->n_flows && p->nflows < GW_CTR_FLOWS; f++) {
            const Tessera__V1__CounterFlow *cf = cl->flows[f];
            gw_ctr_flow_t *g = &fl[mfl];
            if (cf->peer == NULL || ts_proto_cell_get(cf->peer, &g->peer) != TS_OK) continue;
            for (size_t c = 0; c < cf->n_out && c < TS_GAME_COUNTERS; c++)
                g->out[c] = cf->out[c];
            for (size_t c = 0; c < cf->n_in && c < TS_GAME_COUNTERS; c++)
                g->in[c] = cf->in[c];
            mfl++;
            p->nflows++;
        }
    }
    if (m > 1) qsort(r, m, sizeof *r, report_cmp);
    uint64_t now_ms = ts_now_us() / 1000;
    pthread_mutex_lock(&k->lock);
    ctr_worker_t *w = NULL;
    for (size_t i = 0; i < k->nworkers && w == NULL; i++)
        if (strcmp(k->workers[i].id, hb->worker) == 0) w = &k->workers[i];
    if (w == NULL) {
        if (k->nworkers < GW_COUNTERS_WORKERS) {
            w = &k->workers[k->nworkers++];
        } else {
            for (size_t i = 0; i < k->nworkers && w == NULL; i++)
                if (now_ms - k->workers[i].seen_ms > GW_COUNTERS_STALE_MS) w = &k->workers[i];
        }
        if (w != NULL) {
            free(w->r);
            free(w->fl);
            memset(w, 0, sizeof *w);
            ts_strlcpy(w->id, hb->worker, sizeof w->id);
        }
    }
    if (w != NULL) {
        ctr_report_t *old = w->r;
        gw_ctr_flow_t *old_fl = w->fl;
        w->r = r;
        w->n = m;
        w->fl = fl;
        w->seen_ms = now_ms;
        r = old;
        fl = old_fl;
    }
    pthread_mutex_unlock(&k->lock);
    free(r);
    free(fl);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

/* nats.c thread: one worker's heartbeat. */
static void on_heartbeat(void *ud, const ts_bus_msg_t *msg)
{
    take_heartbeat(ud, ts_bus_msg_data(msg), ts_bus_msg_len(msg));
}

/* Under lock: the latest report of the cell's registry owner on it. The
 * owner's slot is remembered in the cell (slots keep their worker until it
 * was silent for GW_COUNTERS_STALE_MS), so a sum costs O(cells log n). */
static const ctr_report_t *find_report(const gw_counters_t *k, gw_cell_t *cell, const ctr_worker_t **wout)
{
    const char *owner = cell->reg_owner;
    if (owner[0] == '\0') return NULL;
    const ctr_worker_t *w = NULL;
    if (cell->ctr_slot > 0 && cell->ctr_slot <= k->nworkers &&
        strcmp(k->workers[cell->ctr_slot - 1].id, owner) == 0)
        w = &k->workers[cell->ctr_slot - 1];
    for (size_t i = 0; w == NULL && i < k->nworkers; i++)
        if (strcmp(k->workers[i].id, owner) == 0) {
            w = &k->workers[i];
            cell->ctr_slot = (uint32_t)i + 1;
        }
    if (w == NULL) return NULL;
    uint64_t h = ts_cell_hash(&cell->id);
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (w->r[mid].hash < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    *wout = w;
    for (; lo < w->n && w->r[lo].hash == h; lo++)
        if (ts_cell_eq(&w->r[lo].cell, &cell->id)) return &w->r[lo];
    return NULL;
}

/* Under lock: the cell holds report r's values and flows (of worker w). */
static void hold_report(gw_cell_t *cell, const ctr_worker_t *w, const ctr_report_t *r)
{
    memcpy(cell->ctr, r->v, sizeof cell->ctr);
    cell->ctr_epoch = r->epoch;
    cell->ctr_wait_us = 0;
    if (r->nflows == 0) {
        cell->ctr_nflows = 0;
        return;
    }
    if (cell->ctr_flows == NULL) cell->ctr_flows = malloc(GW_CTR_FLOWS * sizeof *cell->ctr_flows);
    if (cell->ctr_flows == NULL) { /* keeps the flows it held, if any */
        cell->ctr_nflows = 0;
        return;
    }
    memcpy(cell->ctr_flows, &w->fl[r->flow0], r->nflows * sizeof *cell->ctr_flows);
    cell->ctr_nflows = r->nflows;
}

/* What cell's held flows add to its count: per peer in the registry view,
 * what it moved there less what it received from there. */
static void add_flows(gw_t *gw, const gw_cell_t *cell, int64_t *sum)
{
    for (size_t f = 0; f < cell->ctr_nflows; f++) {
        const gw_ctr_flow_t *fl = &cell->ctr_flows[f];
        const gw_cell_t *peer = gw_cell_find(gw, &fl->peer);
        if (peer == NULL || !peer->in_registry) continue;
        for (size_t i = 0; i < TS_GAME_COUNTERS; i++)
            sum[i] = (int64_t)((uint64_t)sum[i] + (uint64_t)fl->out[i] - (uint64_t)fl->in[i]);
    }
}

/* One WorldCounters frame to c: its own head, the shared payload. */
static void send_to(gw_t *gw, gw_counters_t *k, gw_conn_t *c)
{
    uint8_t head[GW_FRAME_HEAD_MAX];
    size_t flen;
    size_t hl = gw_frame_head(head, ++c->out_seq, gw_cell_epoch(c->cell), &c->cell->id,
                              GW_PAYLOAD_WORLD_COUNTERS, 0, k->enc_len, &flen);
    uv_buf_t iov[2] = {uv_buf_init((char *)head, (unsigned)hl),
                       uv_buf_init((char *)k->enc, (unsigned)k->enc_len)};
    if (gw_conn_writev(c, iov, k->enc_len ? 2 : 1, flen) == TS_OK) {
        gw->frames_sent++;
        gw->bytes_sent += flen;
    }
    c->counters_ver = k->version;
}

/* Whether c may get WorldCounters now: joined, its first Snapshot sent. */
static bool ready(const gw_t *gw, const gw_conn_t *c)
{
    return c->phase == GW_PHASE_JOINED && !c->closing && !c->handle_closed && c->cell != NULL &&
           c->snapshot_sent;
}

/* Sends the current values to every client that lacks them and can take
 * them now; remembers whether any is left. */
static void send_due(gw_t *gw, gw_counters_t *k)
{
    bool left = false;
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next) {
        if (c->counters_ver == k->version || !ready(gw, c)) continue;
        if (gw_conn_backlogged(c->out_pending, gw->cfg->gateway_max_backlog)) {
            left = true;
            continue;
        }
        send_to(gw, k, c);
    }
    k->due = left;
}

static void on_eval(uv_timer_t *t)
{
    gw_t *gw = t->data;
    gw_counters_t *k = gw->counters;
    uint64_t now = ts_mono_us();
    int64_t sum[TS_GAME_COUNTERS] = {0};
    bool wait = false;
    pthread_mutex_lock(&k->lock);
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        if (!cell->in_registry) {
            if (cell->ctr_epoch != 0) memset(cell->ctr, 0, sizeof cell->ctr);
            cell->ctr_epoch = 0;
            cell->ctr_wait_us = 0;
            cell->ctr_nflows = 0;
            continue;
        }
        const ctr_worker_t *w = NULL;
        const ctr_report_t *r = find_report(k, cell, &w);
        if (r != NULL && r->epoch == cell->reg_epoch) {
            hold_report(cell, w, r);
        } else if (cell->ctr_epoch != cell->reg_epoch || (r != NULL && r->epoch > cell->reg_epoch)) {
            /* no report at this epoch yet, or the owner is ahead of the
             * registry view (a split or merge this gateway only half
             * knows): the change waits */
            if (cell->ctr_wait_us == 0) cell->ctr_wait_us = now;
            if (now - cell->ctr_wait_us < GW_COUNTERS_WAIT_US) wait = true;
        }
        for (size_t i = 0; i < TS_GAME_COUNTERS; i++)
            sum[i] = (int64_t)((uint64_t)sum[i] + (uint64_t)cell->ctr[i]);
    }
    /* the moves, once every cell holds its report */
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all)
        if (cell->in_registry) add_flows(gw, cell, sum);
    pthread_mutex_unlock(&k->lock);
    if (!wait && memcmp(sum, k->values, sizeof sum) != 0) {
        memcpy(k->values, sum, sizeof sum);
        size_t n = TS_GAME_COUNTERS;
        while (n > 0 && sum[n - 1] == 0)
            n--;
        Tessera__V1__WorldCounters wc = TESSERA__V1__WORLD_COUNTERS__INIT;
        wc.n_values = n;
        wc.values = sum;
        k->enc_len = tessera__v1__world_counters__pack(&wc, k->enc);
        k->version++;
        k->due = true;
    }
    if (k->due) send_due(gw, k);
}

ts_status_t gw_counters_start(gw_t *gw)
{
    gw_counters_t *k = calloc(1, sizeof *k);
    if (k == NULL) return TS_ERR_NOMEM;
    k->gw = gw;
    pthread_mutex_init(&k->lock, NULL);
    gw->counters = k;
    uv_timer_init(gw->loop, &k->timer);
    k->timer.data = gw;
    k->timer_open = true;
    ts_status_t st = ts_bus_subscribe(gw->bus, "tessera.worker.*.hb", on_heartbeat, k, &k->sub);
    if (st != TS_OK) {
        ts_error("cannot subscribe to worker heartbeats (world counters): %s", ts_status_str(st));
        return st;
    }
    uv_timer_start(&k->timer, on_eval, GW_COUNTERS_EVAL_MS, GW_COUNTERS_EVAL_MS);
    return TS_OK;
}

void gw_counters_stop(gw_t *gw)
{
    gw_counters_t *k = gw->counters;
    if (k == NULL) return;
    ts_bus_sub_destroy(k->sub); /* waits for a heartbeat being decoded: no callback after this */
    k->sub = NULL;
    if (k->timer_open) {
        k->timer_open = false;
        uv_close((uv_handle_t *)&k->timer, NULL);
    }
}

void gw_counters_free(gw_t *gw)
{
    gw_counters_t *k = gw->counters;
    if (k == NULL) return;
    ts_bus_sub_destroy(k->sub); /* stopped without gw_counters_stop */
    for (size_t i = 0; i < k->nworkers; i++) {
        free(k->workers[i].r);
        free(k->workers[i].fl);
    }
    pthread_mutex_destroy(&k->lock);
    free(k);
    gw->counters = NULL;
}

void gw_counters_after_snapshot(gw_t *gw, gw_conn_t *c)
{
    gw_counters_t *k = gw->counters;
    c->snapshot_sent = true;
    if (k == NULL || c->counters_ver == k->version) return;
    if (!ready(gw, c) || gw_conn_backlogged(c->out_pending, gw->cfg->gateway_max_backlog)) {
        k->due = true; /* the next evaluation */
        return;
    }
    send_to(gw, k, c);
}

uint64_t gw_counters_get(const gw_t *gw, int64_t values[TS_GAME_COUNTERS])
{
    const gw_counters_t *k = gw->counters;
    if (k == NULL) {
        memset(values, 0, TS_GAME_COUNTERS * sizeof(*values));
        return 0;
    }
    memcpy(values, k->values, sizeof k->values);
    return k->version;
}
