/* Input batching and publishing for the sim.
 *
 * Invariants: inputs of one cell are published in generation order, so a
 * player's Join precedes its Moves in the stream; every bus message has a
 * message id unique to this run (JetStream de-duplicates retries by it);
 * counters are atomics because acks arrive on nats.c threads. */
#include "sender.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

struct ts_sender {
    ts_bus_t *bus;
    char id_prefix[96];
    uint64_t next_batch;
    atomic_bool counting;
    atomic_uint_fast64_t sent, acked, failed, batches;
    /* reused per batch */
    Tessera__V1__Input *inputs;
    Tessera__V1__Input **input_ptrs;
    Tessera__V1__JoinInput *joins;
    Tessera__V1__MoveInput *moves;
};

static Tessera__V1__LeaveInput leave_input = TESSERA__V1__LEAVE_INPUT__INIT;

static void on_ack(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok, uint64_t stream_seq)
{
    ts_sender_t *s = ud;
    if (!atomic_load(&s->counting)) return;
    uint64_t n = count ? count : 1;
    if (ok) {
        atomic_fetch_add(&s->acked, n);
    } else {
        atomic_fetch_add(&s->failed, n);
        ts_warn("publish of %llu inputs to %s failed after retries", (unsigned long long)n, subject);
    }
}

ts_status_t ts_sender_create(ts_sender_t **out, ts_bus_t *bus, const char *id_prefix)
{
    *out = NULL;
    ts_sender_t *s = calloc(1, sizeof *s);
    if (!s) return TS_ERR_NOMEM;
    s->inputs = calloc(TS_SIM_BATCH_MAX, sizeof *s->inputs);
    s->input_ptrs = calloc(TS_SIM_BATCH_MAX, sizeof *s->input_ptrs);
    s->joins = calloc(TS_SIM_BATCH_MAX, sizeof *s->joins);
    s->moves = calloc(TS_SIM_BATCH_MAX, sizeof *s->moves);
    if (!s->inputs || !s->input_ptrs || !s->joins || !s->moves) {
        ts_sender_destroy(s);
        return TS_ERR_NOMEM;
    }
    s->bus = bus;
    ts_strlcpy(s->id_prefix, id_prefix, sizeof s->id_prefix);
    s->next_batch = 1;
    atomic_init(&s->counting, true);
    atomic_init(&s->sent, 0);
    atomic_init(&s->acked, 0);
    atomic_init(&s->failed, 0);
    atomic_init(&s->batches, 0);
    ts_bus_set_ack_handler(bus, on_ack, s);
    *out = s;
    return TS_OK;
}

void ts_sender_destroy(ts_sender_t *s)
{
    if (!s) return;
    free(s->inputs);
    free(s->input_ptrs);
    free(s->joins);
    free(s->moves);
    free(s);
}

static int cmp_input(const void *pa, const void *pb)
{
    const ts_sim_input_t *a = pa, *b = pb;
    int c = ts_cell_cmp(&a->cell, &b->cell);
    if (c) return c;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Publishes in[0..n) (all for one cell, n <= TS_SIM_BATCH_MAX). */
static ts_status_t publish_chunk(ts_sender_t *s, const ts_sim_input_t *in, size_t n)
{
    uint64_t now_us = ts_now_us(), epoch = 0;
    for (size_t i = 0; i < n; i++) {
        Tessera__V1__Input *pb = &s->inputs[i];
        tessera__v1__input__init(pb);
        pb->entity = in[i].entity;
        pb->seq = in[i].seq;
        pb->sent_us = now_us;
        switch (in[i].kind) {
        case TS_SIM_JOIN:
            tessera__v1__join_input__init(&s->joins[i]);
            s->joins[i].x = in[i].a;
            s->joins[i].y = in[i].b;
            pb->kind_case = TESSERA__V1__INPUT__KIND_JOIN;
            pb->join = &s->joins[i];
            break;
        case TS_SIM_MOVE:
            tessera__v1__move_input__init(&s->moves[i]);
            s->moves[i].dx = in[i].a;
            s->moves[i].dy = in[i].b;
            pb->kind_case = TESSERA__V1__INPUT__KIND_MOVE;
            pb->move = &s->moves[i];
            break;
        case TS_SIM_LEAVE:
            pb->kind_case = TESSERA__V1__INPUT__KIND_LEAVE;
            pb->leave = &leave_input;
            break;
        }
        s->input_ptrs[i] = pb;
        if (in[i].epoch > epoch) epoch = in[i].epoch;
    }
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &in[0].cell);
    Tessera__V1__InputBatch batch = TESSERA__V1__INPUT_BATCH__INIT;
    batch.cell = &cell_pb;
    batch.n_inputs = n;
    batch.inputs = s->input_ptrs;

    char subject[TS_SUBJECT_MAX], msg_id[128];
    ts_subject_input(subject, sizeof subject, &in[0].cell, TS_ORIGIN_SIM);
    uint64_t seq = s->next_batch++;
    snprintf(msg_id, sizeof msg_id, "%s-%llu", s->id_prefix, (unsigned long long)seq);
    ts_bus_hdr_t hdr = {
        .type = TS_TYPE_INPUT_BATCH, .epoch = epoch, .seq = seq, .count = (uint32_t)n, .msg_id = msg_id};

    uint8_t *buf = NULL;
    size_t len = 0;
    ts_status_t st = ts_proto_pack(&batch.base, &buf, &len);
    if (st == TS_OK) st = ts_bus_js_publish_async(s->bus, subject, &hdr, buf, len);
    free(buf);
    if (atomic_load(&s->counting)) {
        atomic_fetch_add(&s->sent, n);
        if (st == TS_OK)
            atomic_fetch_add(&s->batches, 1);
        else
            atomic_fetch_add(&s->failed, n);
    }
    return st;
}

ts_status_t ts_sender_send(ts_sender_t *s, ts_sim_inputs_t *in)
{
    if (in->len == 0) return TS_OK;
    qsort(in->v, in->len, sizeof *in->v, cmp_input);
    ts_status_t first = TS_OK;
    size_t start = 0;
    while (start < in->len) {
        size_t end = start + 1;
        while (end < in->len && end - start < TS_SIM_BATCH_MAX &&
               ts_cell_cmp(&in->v[end].cell, &in->v[start].cell) == 0)
            end++;
        ts_status_t st = publish_chunk(s, &in->v[start], end - start);
        if (st != TS_OK && first == TS_OK) first = st;
        start = end;
    }
    return first;
}

void ts_sender_stats(ts_sender_t *s, ts_sender_stats_t *out)
{
    out->sent = atomic_load(&s->sent);
    out->acked = atomic_load(&s->acked);
    out->failed = atomic_load(&s->failed);
    out->batches = atomic_load(&s->batches);
}

void ts_sender_set_counting(ts_sender_t *s, bool counting)
{
    atomic_store(&s->counting, counting);
}
