/* Where inputs go and which state the gateway listens to.
 *
 * Inputs: every client input is queued on its destination cell; once per
 * loop iteration each cell's queue leaves as InputBatch messages (at most
 * GW_BATCH_MAX_INPUTS inputs each) through an asynchronous JetStream publish
 * whose message id "<gateway id>-<boot nonce>-<publish seq>" lets the bus
 * retry without storing a batch twice. A queue keeps its order; inputs stay
 * queued when a publish cannot even be started, and are retried.
 *
 * AOI: a joined player references its own cell and the live cells whose
 * roots lie within gateway.aoi_radius of it. A cell's state subscription
 * exists while at least one player references it (aoi_refs > 0); dropping
 * the last reference unsubscribes and forgets the cell's entities. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define WARN_EVERY_US 5000000ull

static void warn_limited(uint64_t *last_us, const char *what, const char *cell, ts_status_t st)
{
    uint64_t now = ts_mono_us();
    if (*last_us != 0 && now - *last_us < WARN_EVERY_US) return;
    *last_us = now;
    ts_warn("%s %s: %s", what, cell, ts_status_str(st));
}

ts_status_t gw_router_queue(gw_t *gw, gw_cell_t *cell, const gw_input_t *in)
{
    static uint64_t warned_us;
    if (cell->ninputs >= GW_CELL_MAX_PENDING) {
        gw->inputs_dropped++;
        warn_limited(&warned_us, "input queue full, dropping inputs for", cell->key, TS_ERR_UNAVAILABLE);
        return TS_ERR_UNAVAILABLE;
    }
    if (cell->ninputs == cell->inputs_cap) {
        size_t cap = cell->inputs_cap ? cell->inputs_cap * 2 : 16;
        gw_input_t *v = realloc(cell->inputs, cap * sizeof *v);
        if (v == NULL) return TS_ERR_NOMEM;
        cell->inputs = v;
        cell->inputs_cap = cap;
    }
    cell->inputs[cell->ninputs++] = *in;
    if (!cell->batch_queued) {
        cell->batch_queued = true;
        cell->next_batch = gw->batch_head;
        gw->batch_head = cell;
    }
    gw->inputs_queued++;
    return TS_OK;
}

typedef struct {
    Tessera__V1__Input in;
    Tessera__V1__JoinInput join;
    Tessera__V1__MoveInput move;
    Tessera__V1__LeaveInput leave;
} pb_input_t;

static void fill_input(pb_input_t *p, gw_input_t *in)
{
    tessera__v1__input__init(&p->in);
    p->in.entity = in->entity;
    p->in.seq = in->seq;
    p->in.sent_us = in->sent_us;
    p->in.kind_case = in->kind;
    switch (in->kind) {
    case TESSERA__V1__INPUT__KIND_JOIN:
        tessera__v1__join_input__init(&p->join);
        p->join.x = in->a;
        p->join.y = in->b;
        p->join.name = in->name;
        p->in.join = &p->join;
        break;
    case TESSERA__V1__INPUT__KIND_MOVE:
        tessera__v1__move_input__init(&p->move);
        p->move.dx = in->a;
        p->move.dy = in->b;
        p->in.move = &p->move;
        break;
    default:
        tessera__v1__leave_input__init(&p->leave);
        p->in.kind_case = TESSERA__V1__INPUT__KIND_LEAVE;
        p->in.leave = &p->leave;
        break;
    }
}

/* Publishes the cell's queued inputs; returns how many left the queue. */
static size_t publish_cell(gw_t *gw, gw_cell_t *cell, pb_input_t *pb, Tessera__V1__Input **ptrs)
{
    static uint64_t warned_us;
    size_t done = 0;
    while (done < cell->ninputs) {
        size_t n = cell->ninputs - done;
        if (n > GW_BATCH_MAX_INPUTS) n = GW_BATCH_MAX_INPUTS;
        for (size_t i = 0; i < n; i++) {
            fill_input(&pb[i], &cell->inputs[done + i]);
            ptrs[i] = &pb[i].in;
        }
        Tessera__V1__CellId cell_pb;
        ts_proto_cell_init(&cell_pb, &cell->id);
        Tessera__V1__InputBatch batch = TESSERA__V1__INPUT_BATCH__INIT;
        batch.cell = &cell_pb;
        batch.n_inputs = n;
        batch.inputs = ptrs;
        uint8_t *buf = NULL;
        size_t len = 0;
        ts_status_t st = ts_proto_pack(&batch.base, &buf, &len);
        if (st == TS_OK) {
            uint64_t seq = gw->publish_seq + 1;
            char msg_id[96];
            snprintf(msg_id, sizeof msg_id, "%lld-%s-%llu", (long long)gw->cfg->gateway_id, gw->boot_nonce,
                     (unsigned long long)seq);
            ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH,
                                .epoch = gw_cell_epoch(cell),
                                .seq = seq,
                                .count = (uint32_t)n,
                                .msg_id = msg_id};
            st = ts_bus_js_publish_async(gw->bus, cell->input_subject, &hdr, buf, len);
            free(buf);
            if (st == TS_OK) gw->publish_seq = seq;
        }
        if (st != TS_OK) {
            gw->publish_errors++;
            warn_limited(&warned_us, "cannot publish inputs to", cell->input_subject, st);
            break;
        }
        gw->batches_published++;
        done += n;
    }
    return done;
}

void gw_router_flush(gw_t *gw)
{
    if (gw->batch_head == NULL) return;
    pb_input_t *pb = malloc(GW_BATCH_MAX_INPUTS * sizeof *pb);
    Tessera__V1__Input **ptrs = malloc(GW_BATCH_MAX_INPUTS * sizeof *ptrs);
    if (pb == NULL || ptrs == NULL) {
        free(pb);
        free(ptrs);
        return;
    }
    gw_cell_t *list = gw->batch_head;
    gw->batch_head = NULL;
    gw_cell_t *retry = NULL;
    while (list != NULL) {
        gw_cell_t *cell = list;
        list = cell->next_batch;
        size_t done = publish_cell(gw, cell, pb, ptrs);
        if (done < cell->ninputs) {
            memmove(cell->inputs, cell->inputs + done, (cell->ninputs - done) * sizeof *cell->inputs);
            cell->ninputs -= done;
            cell->next_batch = retry;
            retry = cell;
        } else {
            cell->ninputs = 0;
            cell->batch_queued = false;
            cell->next_batch = NULL;
        }
    }
    gw->batch_head = retry;
    free(pb);
    free(ptrs);
}

static void on_state_msg(void *ud, const ts_bus_msg_t *msg)
{
    gw_inbox_push(ud, GW_MSG_STATE, msg);
}

static void subscribe(gw_t *gw, gw_cell_t *cell)
{
    static uint64_t warned_us;
    ts_status_t st = ts_bus_subscribe(gw->bus, cell->state_subject, on_state_msg, gw, &cell->sub);
    if (st != TS_OK) {
        cell->sub = NULL;
        warn_limited(&warned_us, "cannot subscribe to", cell->state_subject, st);
    }
}

static void cell_ref(gw_t *gw, gw_cell_t *cell)
{
    if (cell->aoi_refs++ == 0 && !gw->stopping) subscribe(gw, cell);
}

static void cell_unref(gw_t *gw, gw_cell_t *cell)
{
    if (cell->aoi_refs == 0 || --cell->aoi_refs > 0) return;
    ts_bus_sub_destroy(cell->sub);
    cell->sub = NULL;
    gw_cell_clear_entities(gw, cell);
}

void gw_aoi_resubscribe(gw_t *gw)
{
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        if (cell->aoi_refs > 0 && cell->sub == NULL && !gw->stopping) subscribe(gw, cell);
    }
}

typedef struct {
    gw_cell_t **v;
    size_t n, cap;
    bool oom;
} cell_vec_t;

static void vec_add(void *ud, gw_cell_t *cell)
{
    cell_vec_t *vec = ud;
    for (size_t i = 0; i < vec->n; i++) {
        if (vec->v[i] == cell) return;
    }
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 16;
        gw_cell_t **v = realloc(vec->v, cap * sizeof *v);
        if (v == NULL) {
            vec->oom = true;
            return;
        }
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->n++] = cell;
}

static void collect_gone(gw_conn_t *c, gw_cell_t *cell)
{
    uint64_t id;
    for (size_t it = 0; ts_map_next(&cell->entities, &it, &id, NULL);) {
        if (c->ngone == c->gone_cap) {
            size_t cap = c->gone_cap ? c->gone_cap * 2 : 64;
            uint64_t *v = realloc(c->gone, cap * sizeof *v);
            if (v == NULL) return;
            c->gone = v;
            c->gone_cap = cap;
        }
        c->gone[c->ngone++] = id;
    }
}

void gw_aoi_update(gw_t *gw, gw_conn_t *c)
{
    cell_vec_t want = {0};
    if (c->phase == GW_PHASE_JOINED && c->cell != NULL) {
        vec_add(&want, c->cell);
        int64_t r = gw->cfg->gateway_aoi_radius;
        for (int64_t dy = -r; dy <= r; dy++) {
            for (int64_t dx = -r; dx <= r; dx++) {
                int64_t cx = (int64_t)c->cell->id.cx + dx, cy = (int64_t)c->cell->id.cy + dy;
                if (cx < INT32_MIN || cx > INT32_MAX || cy < INT32_MIN || cy > INT32_MAX) continue;
                gw_cells_under_root(gw, (int32_t)cx, (int32_t)cy, vec_add, &want);
            }
        }
    }
    gw_aoi_slot_t *slots = NULL;
    if (want.n > 0) slots = malloc(want.n * sizeof *slots);
    if (want.oom || (want.n > 0 && slots == NULL)) {
        ts_warn("conn %llu: out of memory updating the area of interest", (unsigned long long)c->id);
        free(want.v);
        free(slots);
        return;
    }
    for (size_t i = 0; i < want.n; i++) {
        bool kept = false;
        slots[i].cell = want.v[i];
        slots[i].fresh = true;
        for (size_t j = 0; j < c->naoi; j++) {
            if (c->aoi[j].cell == want.v[i]) {
                slots[i].fresh = c->aoi[j].fresh;
                c->aoi[j].cell = NULL;
                kept = true;
                break;
            }
        }
        if (!kept) cell_ref(gw, want.v[i]);
    }
    for (size_t j = 0; j < c->naoi; j++) {
        if (c->aoi[j].cell == NULL) continue;
        collect_gone(c, c->aoi[j].cell);
        cell_unref(gw, c->aoi[j].cell);
    }
    free(c->aoi);
    free(want.v);
    c->aoi = slots;
    c->naoi = want.n;
    c->aoi_cap = want.n;
}
