/* Where inputs go.
 *
 * Inputs: every client input is queued on its destination cell and leaves,
 * with the inputs of every other client for that cell, in one InputBatch
 * (asynchronous JetStream publish, message id "<gateway id>-<boot
 * nonce>-<publish seq>" so the bus retries without storing a batch twice).
 * A quiet cell publishes at the end of the loop turn; a cell with a batch in
 * flight holds new inputs until that batch is acknowledged or given up, so
 * batches grow with load and a cell's batches are stored in the order they
 * were sent: a batch the bus retries (a JetStream restart, a lost
 * acknowledgement) is never overtaken by a later one, whose inputs the owner
 * would apply first and then drop the earlier ones as duplicates of a seq
 * it has passed. Inputs that wait GW_INPUT_MAX_WAIT_US (20 s, above the
 * bus's 15 s retry window) while their cell makes no progress leave the
 * queue and are reported to their clients. A publish the bus
 * has no room for (TS_ERR_BUSY) keeps its inputs queued and is retried
 * (reported the same way); a queue that is full refuses new
 * inputs. Each batch in flight remembers which clients' seq ranges it
 * carries (gw->flights), so when JetStream finally refuses it each affected
 * client still connected gets ERROR_INPUT_NOT_STORED with its range;
 * nothing is dropped silently. Commands are inputs like Moves; a Join's or
 * Command's payload (at most TS_GAME_PAYLOAD_MAX bytes) is copied when the
 * input is queued and freed when it leaves the queue.
 *
 * Which state the gateway listens to is aoi.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "metrics.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define WARN_EVERY_US 5000000ull

void gw_warn_limited(uint64_t *last_us, const char *what, const char *cell, ts_status_t st)
{
    uint64_t now = ts_mono_us();
    if (*last_us != 0 && now - *last_us < WARN_EVERY_US) return;
    *last_us = now;
    ts_warn("%s %s: %s", what, cell, ts_status_str(st));
}

static void batch_push(gw_t *gw, gw_cell_t *cell)
{
    if (cell->batch_queued) return;
    cell->batch_queued = true;
    cell->next_batch = gw->batch_head;
    gw->batch_head = cell;
    gw_flush_soon(gw);
}

ts_status_t gw_router_queue(gw_t *gw, gw_cell_t *cell, const gw_input_t *in)
{
    static uint64_t warned_us;
    if (cell->ninputs >= GW_CELL_MAX_PENDING) {
        gw->inputs_dropped++;
        gw->inputs_not_stored++;
        gw_warn_limited(&warned_us, "input queue full, refusing inputs for", cell->key, TS_ERR_UNAVAILABLE);
        return TS_ERR_UNAVAILABLE;
    }
    if (cell->ninputs == cell->inputs_cap) {
        size_t cap = cell->inputs_cap ? cell->inputs_cap * 2 : 16;
        gw_input_t *v = realloc(cell->inputs, cap * sizeof *v);
        if (v == NULL) return TS_ERR_NOMEM;
        cell->inputs = v;
        cell->inputs_cap = cap;
    }
    gw_input_t *slot = &cell->inputs[cell->ninputs];
    *slot = *in;
    slot->payload = NULL;
    if (in->payload_len > 0) {
        slot->payload = malloc(in->payload_len);
        if (slot->payload == NULL) return TS_ERR_NOMEM;
        memcpy(slot->payload, in->payload, in->payload_len);
    }
    cell->ninputs++;
    batch_push(gw, cell);
    gw->inputs_queued++;
    return TS_OK;
}

typedef struct {
    Tessera__V1__Input in;
    Tessera__V1__JoinInput join;
    Tessera__V1__MoveInput move;
    Tessera__V1__LeaveInput leave;
    Tessera__V1__DetachInput detach;
    Tessera__V1__AttachInput attach;
    Tessera__V1__CommandInput command;
    /* attach: the resume token's fields (parsed from gw_input_t.payload) */
    ts_resume_token_t token;
    Tessera__V1__CellId token_cell;
} pb_input_t;

void gw_router_drop_inputs(gw_cell_t *cell, size_t n)
{
    if (n > cell->ninputs) n = cell->ninputs;
    if (n == 0) return;
    for (size_t i = 0; i < n; i++)
        free(cell->inputs[i].payload);
    memmove(cell->inputs, cell->inputs + n, (cell->ninputs - n) * sizeof *cell->inputs);
    cell->ninputs -= n;
}

static void fill_input(const gw_t *gw, pb_input_t *p, gw_input_t *in)
{
    const int64_t gateway_id = gw->cfg->gateway_id;
    const uint64_t instance = gw->instance;
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
        p->join.gateway = (uint32_t)gateway_id;
        p->join.gateway_instance = instance;
        p->join.session = in->session;
        p->join.payload.data = in->payload;
        p->join.payload.len = in->payload_len;
        p->in.join = &p->join;
        break;
    case TESSERA__V1__INPUT__KIND_DETACH:
        tessera__v1__detach_input__init(&p->detach);
        p->detach.session = in->session;
        p->detach.time_us = in->time_us;
        p->in.detach = &p->detach;
        break;
    case TESSERA__V1__INPUT__KIND_ATTACH:
        tessera__v1__attach_input__init(&p->attach);
        p->attach.gateway = (uint32_t)gateway_id;
        p->attach.gateway_instance = instance;
        p->attach.session = in->session;
        if (ts_resume_token_parse((const char *)in->payload, in->payload_len, &p->token) == TS_OK) {
            ts_proto_cell_init(&p->token_cell, &p->token.cell);
            p->attach.resume_cell = &p->token_cell;
            p->attach.resume_exp = p->token.exp_s;
            p->attach.resume_player.data = (uint8_t *)p->token.player;
            p->attach.resume_player.len = strlen(p->token.player);
            p->attach.resume_mac.data = p->token.mac;
            p->attach.resume_mac.len = sizeof p->token.mac;
        }
        p->in.attach = &p->attach;
        break;
    case TESSERA__V1__INPUT__KIND_MOVE:
        tessera__v1__move_input__init(&p->move);
        p->move.dx = in->a;
        p->move.dy = in->b;
        p->in.move = &p->move;
        break;
    case TESSERA__V1__INPUT__KIND_COMMAND:
        tessera__v1__command_input__init(&p->command);
        p->command.type = in->type;
        p->command.payload.data = in->payload;
        p->command.payload.len = in->payload_len;
        p->in.command = &p->command;
        break;
    default:
        tessera__v1__leave_input__init(&p->leave);
        p->in.kind_case = TESSERA__V1__INPUT__KIND_LEAVE;
        p->in.leave = &p->leave;
        break;
    }
}

void gw_router_wake(gw_t *gw, gw_cell_t *cell)
{
    batch_push(gw, cell);
}

ts_status_t gw_router_init(gw_t *gw)
{
    gw->flights = calloc(GW_INFLIGHT_MAX, sizeof *gw->flights);
    gw->free_flights = malloc(GW_INFLIGHT_MAX * sizeof *gw->free_flights);
    if (gw->flights == NULL || gw->free_flights == NULL) {
        gw_router_free(gw);
        return TS_ERR_NOMEM;
    }
    for (size_t i = 0; i < GW_INFLIGHT_MAX; i++)
        gw->free_flights[i] = (uint32_t)(GW_INFLIGHT_MAX - 1 - i);
    gw->nfree_flights = GW_INFLIGHT_MAX;
    return TS_OK;
}

void gw_router_free(gw_t *gw)
{
    if (gw->flights != NULL) {
        for (size_t i = 0; i < GW_INFLIGHT_MAX; i++)
            free(gw->flights[i].recs);
    }
    free(gw->flights);
    free(gw->free_flights);
    free(gw->tmp_recs);
    free(gw->pack_buf);
    free(gw->pb_inputs);
    free(gw->pb_ptrs);
    ts_map_free(&gw->inflight);
    gw->flights = NULL;
    gw->free_flights = NULL;
    gw->tmp_recs = NULL;
    gw->pack_buf = NULL;
    gw->pb_inputs = NULL;
    gw->pb_ptrs = NULL;
}

/* Which clients' inputs inputs[0..n) are, one record per entity (its lowest
 * and highest seq in them), into *recs (grown as needed). */
static size_t build_recs(gw_t *gw, const gw_input_t *inputs, size_t n, gw_flrec_t **recs, size_t *cap)
{
    size_t nrecs = 0;
    for (size_t i = 0; i < n; i++) {
        const gw_input_t *in = &inputs[i];
        void *v = ts_map_get(&gw->scratch, in->entity);
        if (v != NULL) {
            gw_flrec_t *r = &(*recs)[(uintptr_t)v - 2];
            if (in->seq < r->first_seq) r->first_seq = in->seq;
            if (in->seq > r->last_seq) r->last_seq = in->seq;
            continue;
        }
        if (nrecs == *cap) {
            size_t c = *cap ? *cap * 2 : 16;
            gw_flrec_t *nv = realloc(*recs, c * sizeof *nv);
            if (nv == NULL) break;
            *recs = nv;
            *cap = c;
        }
        if (ts_map_put(&gw->scratch, in->entity, (void *)(uintptr_t)(nrecs + 2)) != TS_OK) break;
        (*recs)[nrecs++] = (gw_flrec_t){.entity = in->entity, .first_seq = in->seq, .last_seq = in->seq};
    }
    for (size_t i = 0; i < nrecs; i++)
        ts_map_del(&gw->scratch, (*recs)[i].entity);
    return nrecs;
}

/* Tells every still-connected client of recs its inputs are lost. */
static void report_not_stored(gw_t *gw, const gw_flrec_t *recs, size_t nrecs, const char *why)
{
    for (size_t i = 0; i < nrecs; i++) {
        gw_conn_t *c = ts_map_get(&gw->players, recs[i].entity);
        if (c != NULL && c->entity == recs[i].entity)
            gw_session_not_stored(c, recs[i].first_seq, recs[i].last_seq, why);
    }
}

/* Reports inputs[0..n) of a batch that never left. */
static void refuse(gw_t *gw, const gw_input_t *inputs, size_t n, const char *why)
{
    size_t nrecs = build_recs(gw, inputs, n, &gw->tmp_recs, &gw->tmp_recs_cap);
    report_not_stored(gw, gw->tmp_recs, nrecs, why);
    gw->inputs_not_stored += n;
}

/* Packs inputs[0..n) as one InputBatch into gw's reusable buffer. */
static ts_status_t pack_batch(gw_t *gw, gw_cell_t *cell, gw_input_t *inputs, size_t n, pb_input_t *pb,
                              Tessera__V1__Input **ptrs, size_t *len)
{
    for (size_t i = 0; i < n; i++) {
        fill_input(gw, &pb[i], &inputs[i]);
        ptrs[i] = &pb[i].in;
    }
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &cell->id);
    Tessera__V1__InputBatch batch = TESSERA__V1__INPUT_BATCH__INIT;
    batch.cell = &cell_pb;
    batch.n_inputs = n;
    batch.inputs = ptrs;
    *len = tessera__v1__input_batch__get_packed_size(&batch);
    if (*len > gw->pack_cap) {
        uint8_t *v = realloc(gw->pack_buf, *len);
        if (v == NULL) return TS_ERR_NOMEM;
        gw->pack_buf = v;
        gw->pack_cap = *len;
    }
    tessera__v1__input_batch__pack(&batch, gw->pack_buf);
    return TS_OK;
}

/* Remembers a batch that left, for its acknowledgement. */
static void track(gw_t *gw, gw_cell_t *cell, uint64_t seq, const gw_input_t *inputs, size_t n, uint64_t now)
{
    if (gw->nfree_flights == 0) return;
    gw_flight_t *f = &gw->flights[gw->free_flights[gw->nfree_flights - 1]];
    if (ts_map_put(&gw->inflight, seq, f) != TS_OK) return; /* outcome cannot be matched: untracked */
    gw->nfree_flights--;
    f->cell = cell;
    f->seq = seq;
    f->count = n;
    f->published_us = now;
    f->nrecs = build_recs(gw, inputs, n, &f->recs, &f->recs_cap);
    cell->ninflight++;
    gw->ninflight++;
}

static void untrack(gw_t *gw, gw_flight_t *f)
{
    f->cell->ninflight--;
    f->cell = NULL;
    f->nrecs = 0;
    gw->ninflight--;
    gw->free_flights[gw->nfree_flights++] = (uint32_t)(f - gw->flights);
}

/* Publishes the cell's queued inputs as InputBatches of at most
 * GW_BATCH_MAX_INPUTS. Returns how many left the queue; inputs a publish
 * refused for good are reported to their clients and leave the queue too.
 * *busy: the bus (or the in-flight table) had no room. */
static size_t publish_cell(gw_t *gw, gw_cell_t *cell, bool force, bool *busy, pb_input_t *pb,
                           Tessera__V1__Input **ptrs)
{
    static uint64_t warned_us;
    size_t done = 0;
    uint64_t now = ts_mono_us();
    while (done < cell->ninputs) {
        if (!force && (gw->nfree_flights == 0 || ts_bus_in_flight(gw->bus) >= TS_BUS_MAX_IN_FLIGHT)) {
            *busy = true;
            break;
        }
        size_t n = cell->ninputs - done;
        if (n > GW_BATCH_MAX_INPUTS) n = GW_BATCH_MAX_INPUTS;
        size_t len = 0;
        ts_status_t st = pack_batch(gw, cell, cell->inputs + done, n, pb, ptrs, &len);
        uint64_t seq = gw->publish_seq + 1;
        /* the cell's input subject with this gateway's origin token, the
         * only one its NATS user may publish to */
        char subject[TS_SUBJECT_MAX + TS_ORIGIN_TOKEN_MAX];
        if (st == TS_OK && (gw->cfg->gateway_id > TS_ORIGIN_GATEWAY_MAX ||
                            snprintf(subject, sizeof subject, "%s.g%lld", cell->input_subject,
                                     (long long)gw->cfg->gateway_id) >= (int)sizeof subject))
            st = TS_ERR_INVALID;
        bool packed = st == TS_OK;
        if (packed) {
            char msg_id[96];
            snprintf(msg_id, sizeof msg_id, "%lld-%s-%llu", (long long)gw->cfg->gateway_id, gw->boot_nonce,
                     (unsigned long long)seq);
            ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH,
                                .epoch = gw_cell_epoch(cell),
                                .seq = seq,
                                .count = (uint32_t)n,
                                .msg_id = msg_id};
            st = ts_bus_js_publish_async(gw->bus, subject, &hdr, gw->pack_buf, len);
        }
        if (st == TS_ERR_BUSY) {
            *busy = true;
            break;
        }
        if (packed && st != TS_OK && st != TS_ERR_INVALID && st != TS_ERR_NOMEM) {
            /* The connection broke under the publish (a node died): the
             * inputs stay queued and go again on the retry timer, under a new
             * Msg-Id since this one may have reached the stream (the worker
             * drops inputs it already applied, by entity and seq). Inputs
             * that wait too long are reported by expire_waiting. */
            gw->publish_seq = seq;
            gw->publish_errors++;
            gw_warn_limited(&warned_us, "will retry inputs to", cell->input_subject, st);
            *busy = true;
            break;
        }
        if (st != TS_OK) {
            gw->publish_errors++;
            gw_warn_limited(&warned_us, "cannot publish inputs to", cell->input_subject, st);
            refuse(gw, cell->inputs + done, n, "the gateway could not publish them");
            done += n;
            continue;
        }
        gw->publish_seq = seq;
        gw->batches_published++;
        gw->inputs_published += n;
        cell->last_publish_us = now;
        cell->progress_us = ts_now_us();
        done += n;
        if (!force) {
            track(gw, cell, seq, cell->inputs + done - n, n, now);
            break; /* one batch in flight per cell: the next leaves with its outcome */
        }
    }
    return done;
}

/* Inputs that waited GW_INPUT_MAX_WAIT_US while their cell made no progress
 * (no batch published or answered: the bus had no room, or the batch in
 * flight got no outcome) leave the queue and are reported to their clients,
 * so nobody waits forever. Counting from the cell's last progress rather
 * than from when each input arrived keeps a slow but moving cell (a leader
 * election the bus rides out) from reporting inputs the stream would store. */
static void expire_waiting(gw_t *gw, gw_cell_t *cell)
{
    uint64_t now = ts_now_us();
    size_t k = 0;
    while (k < cell->ninputs) {
        uint64_t since = cell->inputs[k].sent_us;
        if (cell->progress_us > since) since = cell->progress_us;
        if (now <= since + GW_INPUT_MAX_WAIT_US) break;
        k++;
    }
    if (k == 0) return;
    refuse(gw, cell->inputs, k, "the bus had no room for them");
    gw_router_drop_inputs(cell, k);
}

/* A hold ended or the bus may have room again. */
static void on_retry_timer(uv_timer_t *t)
{
    gw_router_flush(t->data, false);
}

void gw_router_flush(gw_t *gw, bool force)
{
    if (force) {
        for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
            if (cell->ninputs > 0) batch_push(gw, cell);
        }
    }
    if (gw->batch_head == NULL) return;
    if (gw->pb_inputs == NULL) gw->pb_inputs = malloc(GW_BATCH_MAX_INPUTS * sizeof(pb_input_t));
    if (gw->pb_ptrs == NULL) gw->pb_ptrs = malloc(GW_BATCH_MAX_INPUTS * sizeof *gw->pb_ptrs);
    if (gw->pb_inputs == NULL || gw->pb_ptrs == NULL) return;
    gw_cell_t *list = gw->batch_head;
    gw->batch_head = NULL;
    gw_cell_t *keep = NULL;
    bool busy_any = false, held_any = false;
    while (list != NULL) {
        gw_cell_t *cell = list;
        list = cell->next_batch;
        cell->next_batch = NULL;
        if (!force && cell->ninflight > 0) {
            /* held: leaves with the outcome of the batch in flight */
            expire_waiting(gw, cell);
            if (cell->ninputs > 0) {
                held_any = true;
                cell->next_batch = keep;
                keep = cell;
            } else {
                cell->batch_queued = false;
            }
            continue;
        }
        bool busy = false;
        size_t done = publish_cell(gw, cell, force, &busy, gw->pb_inputs, gw->pb_ptrs);
        if (done > 0) gw_router_drop_inputs(cell, done);
        if (busy) expire_waiting(gw, cell);
        if (busy && cell->ninputs > 0) {
            busy_any = true;
            cell->next_batch = keep;
            keep = cell;
        } else {
            cell->batch_queued = false;
        }
    }
    gw->batch_head = keep;
    gw->batch_busy = busy_any;
    if (gw->stopping) return;
    /* busy: the bus may have room again; held: inputs waiting too long are
     * reported even if the batch in flight takes long */
    if (busy_any || held_any) uv_timer_start(&gw->retry_timer, on_retry_timer, GW_BUSY_RETRY_MS, 0);
}

void gw_router_on_ack(gw_t *gw, uint64_t seq, bool ok)
{
    gw_flight_t *f = ts_map_del(&gw->inflight, seq);
    if (f == NULL) return;
    gw->batch_busy = false; /* the bus has room again */
    uint64_t us = ts_mono_us() - f->published_us;
    gw->ack_us_sum += us;
    gw_metrics_input_ack(us);
    gw->ack_n++;
    if (us > gw->ack_us_max) gw->ack_us_max = us;
    gw_cell_t *cell = f->cell;
    cell->progress_us = ts_now_us();
    if (!ok) {
        gw->inputs_not_stored += f->count;
        report_not_stored(gw, f->recs, f->nrecs, "JetStream refused them or did not confirm them");
    }
    untrack(gw, f);
    if (cell->ninputs > 0) batch_push(gw, cell);
}

void gw_router_forget_flights(gw_t *gw)
{
    for (size_t i = 0; i < GW_INFLIGHT_MAX; i++) {
        gw_flight_t *f = &gw->flights[i];
        if (f->cell == NULL) continue;
        ts_map_del(&gw->inflight, f->seq);
        gw_cell_t *cell = f->cell;
        untrack(gw, f);
        if (cell->ninputs > 0) batch_push(gw, cell);
    }
}
