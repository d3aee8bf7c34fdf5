/* Input ledger: per entity, every published Join/Move client seq (with the
 * cell and time of its first publication), every client seq some state
 * acknowledged (its last_input_seq or a bit of its 64-entry window), the
 * first state that showed the entity and the newest one (the one with the
 * highest inputs_applied, so a stale delta never hides a later one). An
 * input normally shows in a state's window within a tick of being applied;
 * one applied in a burst of more than 64 inputs of its entity within one
 * tick (a replay after a crash) never does, so the seqs reported are
 * candidates and the count short (published - applied) is the fact.
 * All under one mutex; callbacks run on nats.c threads. */
#include "ledger.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/map.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define MAX_SEQ 10000000u
#define MISSING_LISTED 12

typedef struct {
    uint32_t at_ms; /* since the ledger started */
    int32_t cx, cy;
    bool seen;  /* published */
    bool acked; /* acknowledged by some state */
} published_t;

typedef struct {
    uint64_t id;
    published_t *in; /* index: client seq */
    size_t cap;
    uint64_t published, max_seq;
    bool has_state;
    uint64_t applied, last_input_seq, window, epoch;
    ts_cell_t cell;
    char owner[TS_WORKER_ID_MAX];
    /* the first state that showed the entity */
    uint64_t first_applied, first_last_input_seq;
    uint32_t first_ms;
    ts_cell_t first_cell;
    char first_owner[TS_WORKER_ID_MAX];
} entry_t;

struct ts_ledger {
    ts_bus_sub_t *input_sub, *state_sub;
    pthread_mutex_t mu;
    ts_map_t entities; /* id -> entry_t* */
    uint64_t start_us;
};

static entry_t *entry(ts_ledger_t *l, uint64_t id)
{
    if (id == 0 || id == UINT64_MAX) return NULL;
    entry_t *e = ts_map_get(&l->entities, id);
    if (e == NULL && (e = calloc(1, sizeof *e)) != NULL) {
        e->id = id;
        if (ts_map_put(&l->entities, id, e) != TS_OK) {
            free(e);
            e = NULL;
        }
    }
    return e;
}

static bool reserve(entry_t *e, uint64_t seq)
{
    if (seq < e->cap) return true;
    size_t ncap = e->cap ? e->cap : 128;
    while (ncap <= seq)
        ncap *= 2;
    published_t *v = realloc(e->in, ncap * sizeof *v);
    if (v == NULL) return false;
    memset(v + e->cap, 0, (ncap - e->cap) * sizeof *v);
    e->in = v;
    e->cap = ncap;
    return true;
}

static void on_input(void *ud, const ts_bus_msg_t *m)
{
    ts_ledger_t *l = ud;
    ts_cell_t cell;
    ts_subject_kind_t kind;
    if (ts_subject_parse(ts_bus_msg_subject(m), &cell, &kind) != TS_OK) return;
    Tessera__V1__InputBatch *b =
        tessera__v1__input_batch__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (b == NULL) return;
    pthread_mutex_lock(&l->mu);
    uint32_t at_ms = (uint32_t)((ts_mono_us() - l->start_us) / 1000);
    for (size_t i = 0; i < b->n_inputs; i++) {
        const Tessera__V1__Input *in = b->inputs[i];
        if (in->kind_case != TESSERA__V1__INPUT__KIND_JOIN && in->kind_case != TESSERA__V1__INPUT__KIND_MOVE)
            continue;
        entry_t *e = entry(l, in->entity);
        if (e == NULL || in->seq == 0 || in->seq > MAX_SEQ || !reserve(e, in->seq) || e->in[in->seq].seen)
            continue;
        e->in[in->seq] = (published_t){at_ms, cell.cx, cell.cy, true, e->in[in->seq].acked};
        e->published++;
        if (in->seq > e->max_seq) e->max_seq = in->seq;
    }
    pthread_mutex_unlock(&l->mu);
    tessera__v1__input_batch__free_unpacked(b, NULL);
}

static void on_state(void *ud, const ts_bus_msg_t *m)
{
    ts_ledger_t *l = ud;
    Tessera__V1__StateDelta *d =
        tessera__v1__state_delta__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    ts_cell_t cell;
    if (d == NULL || d->cell == NULL || ts_proto_cell_get(d->cell, &cell) != TS_OK) {
        if (d != NULL) tessera__v1__state_delta__free_unpacked(d, NULL);
        return;
    }
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < d->n_entities; i++) {
        const Tessera__V1__EntityState *s = d->entities[i];
        entry_t *e = entry(l, s->id);
        if (e == NULL || s->last_input_seq == 0 || s->last_input_seq > MAX_SEQ ||
            !reserve(e, s->last_input_seq))
            continue;
        e->in[s->last_input_seq].acked = true;
        for (uint64_t b = 0; b < 64 && b + 1 < s->last_input_seq; b++)
            if ((s->applied_window >> b) & 1) e->in[s->last_input_seq - 1 - b].acked = true;
        if (!e->has_state) {
            e->first_applied = s->inputs_applied;
            e->first_last_input_seq = s->last_input_seq;
            e->first_ms = (uint32_t)((ts_mono_us() - l->start_us) / 1000);
            e->first_cell = cell;
            ts_strlcpy(e->first_owner, d->owner ? d->owner : "?", sizeof e->first_owner);
        }
        if (e->has_state && s->inputs_applied < e->applied) continue;
        e->has_state = true;
        e->applied = s->inputs_applied;
        e->last_input_seq = s->last_input_seq;
        e->window = s->applied_window;
        e->epoch = d->epoch;
        e->cell = cell;
        ts_strlcpy(e->owner, d->owner ? d->owner : "?", sizeof e->owner);
    }
    pthread_mutex_unlock(&l->mu);
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

ts_status_t ts_ledger_create(ts_ledger_t **out, ts_bus_t *bus, uint32_t world)
{
    ts_ledger_t *l = calloc(1, sizeof *l);
    if (l == NULL) return TS_ERR_NOMEM;
    pthread_mutex_init(&l->mu, NULL);
    ts_map_init(&l->entities);
    l->start_us = ts_mono_us();
    char subject[TS_SUBJECT_MAX];
    ts_subject_world_wildcard(subject, sizeof subject, world, TS_SUBJ_INPUT);
    ts_status_t st = ts_bus_subscribe(bus, subject, on_input, l, &l->input_sub);
    if (st == TS_OK) {
        ts_subject_world_wildcard(subject, sizeof subject, world, TS_SUBJ_STATE);
        st = ts_bus_subscribe(bus, subject, on_state, l, &l->state_sub);
    }
    if (st != TS_OK) {
        ts_ledger_destroy(l);
        return st;
    }
    *out = l;
    return TS_OK;
}

void ts_ledger_destroy(ts_ledger_t *l)
{
    if (l == NULL) return;
    ts_bus_sub_destroy(l->input_sub);
    ts_bus_sub_destroy(l->state_sub);
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&l->entities, &it, &k, &v);) {
        entry_t *e = v;
        free(e->in);
        free(e);
    }
    ts_map_free(&l->entities);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static void report_entry(const ts_ledger_t *l, const entry_t *e, FILE *out, const char *event,
                         uint64_t event_us)
{
    char key[TS_CELL_STR_MAX] = "-";
    if (e->has_state) ts_cell_format(&e->cell, key, sizeof key);
    fprintf(out,
            "ledger: entity %" PRIu64 " (0x%" PRIx64 "): %" PRIu64 " inputs published (max seq %" PRIu64
            "), newest state: %" PRIu64 " applied (%" PRIu64 " short), last_input_seq %" PRIu64
            " in %s (owner %s, epoch %" PRIu64 "); seqs no state acknowledged:",
            e->id, e->id, e->published, e->max_seq, e->applied,
            e->applied < e->published ? e->published - e->applied : 0, e->last_input_seq, key,
            e->has_state ? e->owner : "-", e->epoch);
    int listed = 0;
    double event_s = (double)(event_us - l->start_us) / 1e6;
    for (uint64_t s = 1; s <= e->max_seq && listed < MISSING_LISTED; s++) {
        if (!e->in[s].seen || e->in[s].acked) continue;
        listed++;
        fprintf(out, " seq %" PRIu64 " (to cell %d,%d at %+.2f s from %s)", s, e->in[s].cx, e->in[s].cy,
                (double)e->in[s].at_ms / 1000 - event_s, event);
    }
    if (listed == 0) fprintf(out, " none: every published seq showed in some state, yet the count is short");
    if (e->has_state) {
        char first[TS_CELL_STR_MAX];
        ts_cell_format(&e->first_cell, first, sizeof first);
        fprintf(out,
                "; first seen at %+.2f s in %s (owner %s) with %" PRIu64 " applied, last_input_seq %" PRIu64,
                (double)e->first_ms / 1000 - event_s, first, e->first_owner, e->first_applied,
                e->first_last_input_seq);
    }
    fputc('\n', out);
}

size_t ts_ledger_report(ts_ledger_t *l, FILE *out, const char *event, uint64_t event_us, int max)
{
    pthread_mutex_lock(&l->mu);
    size_t short_entities = 0;
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&l->entities, &it, &k, &v);) {
        entry_t *e = v;
        if (e->has_state && e->applied >= e->published) continue;
        if ((int)short_entities++ < max) report_entry(l, e, out, event, event_us);
    }
    fprintf(out, "ledger: %zu entities tracked, %zu short of inputs\n", l->entities.len, short_entities);
    pthread_mutex_unlock(&l->mu);
    return short_entities;
}
