/* A crowd crossing a cell border in one tick: a world of two cells, (0,0)
 * owned by w1 and (1,0) by w2 (world.assign), real nats-server -js with its
 * default max_payload (1 MB) and redis-server. The test publishes straight
 * into (0,0)'s input stream: 8,000 Joins at its east border, then Moves
 * that fill every entity's exactly-once window (each of its eight words has
 * its top bit set, the longest encoding), then one InputBatch with every
 * entity's last Move east. So every entity leaves in the same tick, in one
 * Departure batch, and their Transfers into (1,0) — about 1.4 MB — do not
 * fit one NATS message; neither does (0,0)'s checkpoint while they are in
 * its outbox. As soon as the first message of them is published into
 * (1,0)'s input stream, w1 is SIGKILLed (usually before its next one), and
 * one more Move for every entity is published into (0,0), which the
 * recovering owner forwards to (1,0).
 *
 * What users rely on, asserted here:
 *  - w2 recovers (0,0) at one more epoch step;
 *  - afterwards every entity exists exactly once: a keyframe of (1,0) lists
 *    each of the 8,000 once, a keyframe of (0,0) lists none;
 *  - every input JetStream acknowledged is applied exactly once: each
 *    entity has applied its 10 inputs and its newest is the late Move;
 *  - the inputs forwarded after the recovery keep their first publisher's
 *    origin: they reach (1,0) under `….input.s` (the test publishes as the
 *    sim), none under the worker's `w`;
 *  - no service logged a publish rejected for its size ("greater than
 *    maximum" from nats.c, or the worker's own "not published");
 *  - and the crowd did need more than one message: its Transfers reached
 *    (1,0)'s input stream in several InputBatches.
 *
 * A second test fills the workers' input ring (worker.inbox_ring=16): many
 * small InputBatches into (0,0), faster than a tick takes them. Every input
 * is still applied exactly once (a full ring makes the worker's one input
 * consumer start again before the first message that did not fit). */
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define CROWD 8000
#define WAIT_MS 60000
#define HB_TTL_ARG "--orch.hb_ttl_ms=1500"
/* Join seq 1, then Moves 65, 129, ..., 449 (standing), then 513 (east):
 * the window of the newest, 513, has bit 63 of each of its eight words set */
#define SEQ_STEP 64
#define LAST_SEQ 513
/* after the kill: one more Move each, forwarded to the east cell */
#define LATE_SEQ (LAST_SEQ + SEQ_STEP)
#define INPUTS_EACH 10

static const ts_cell_t WEST = {.world = WORLD, .cx = 0, .cy = 0};
static const ts_cell_t EAST = {.world = WORLD, .cx = 1, .cy = 0};

static ts_bus_t *bus;
static ts_registry_t *reg;
static ts_bus_sub_t *state_subs[2];
static ts_bus_sub_t *input_subs[2];

/* ---- the cells' keyframes ------------------------------------------------------
 * Every StateDelta of the two cells. A keyframe (full, possibly in parts)
 * is put together per cell; once complete, what it listed is kept as the
 * cell's latest keyframe: how many entities, how many of them distinct,
 * and how many have applied exactly V.want_applied inputs with
 * V.want_last_seq the newest. */

typedef struct {
    /* the keyframe being put together */
    uint64_t epoch, tick;
    uint32_t parts, seen;
    uint64_t listed, exact;
    uint8_t *ids; /* CROWD + 1 flags */
    uint64_t distinct;
    /* the latest complete one */
    uint64_t kf_epoch, kf_listed, kf_distinct, kf_exact, kf_us;
} cell_view_t;

static struct {
    pthread_mutex_t mu;
    cell_view_t cell[2];
    uint32_t want_applied;
    uint64_t want_last_seq;
} V = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void kf_begin(cell_view_t *c, const Tessera__V1__StateDelta *d)
{
    c->epoch = d->epoch;
    c->tick = d->tick;
    c->parts = d->parts > 1 ? d->parts : 1;
    c->seen = 0;
    c->listed = c->exact = c->distinct = 0;
    memset(c->ids, 0, CROWD + 1);
}

static void on_state(void *ud, const ts_bus_msg_t *m)
{
    cell_view_t *c = ud;
    Tessera__V1__StateDelta *d =
        tessera__v1__state_delta__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (d == NULL) return;
    pthread_mutex_lock(&V.mu);
    if (d->full) {
        uint32_t parts = d->parts > 1 ? d->parts : 1, part = d->parts > 1 ? d->part : 0;
        if (part == 0 || d->epoch != c->epoch || d->tick != c->tick || parts != c->parts) kf_begin(c, d);
        if (part == c->seen) { /* parts in order; a gap drops the keyframe */
            for (size_t i = 0; i < d->n_entities; i++) {
                const Tessera__V1__EntityState *e = d->entities[i];
                c->listed++;
                if (e->id >= 1 && e->id <= CROWD && !c->ids[e->id]) {
                    c->ids[e->id] = 1;
                    c->distinct++;
                }
                if (e->inputs_applied == V.want_applied && e->last_input_seq == V.want_last_seq) c->exact++;
            }
            if (++c->seen == c->parts) {
                c->kf_epoch = c->epoch;
                c->kf_listed = c->listed;
                c->kf_distinct = c->distinct;
                c->kf_exact = c->exact;
                c->kf_us = ts_mono_us();
            }
        } else {
            c->seen = UINT32_MAX;
        }
    }
    pthread_mutex_unlock(&V.mu);
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

/* ---- the east cell's input: messages that carry transfers, and forwarded
 * inputs by the origin token of their subject ---------------------------------- */

static struct {
    pthread_mutex_t mu;
    uint64_t msgs, transfers, max_len;
    uint64_t fwd_sim, fwd_other; /* inputs under ….input.s, under any other token */
} IN = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_east_input(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__InputBatch *b =
        tessera__v1__input_batch__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (b == NULL) return;
    pthread_mutex_lock(&IN.mu);
    if (b->n_transfers > 0) {
        IN.msgs++;
        IN.transfers += b->n_transfers;
        if (ts_bus_msg_len(m) > IN.max_len) IN.max_len = ts_bus_msg_len(m);
    }
    ts_origin_t origin;
    if (b->n_inputs > 0 && ts_subject_input_origin(ts_bus_msg_subject(m), &origin) == TS_OK &&
        origin == TS_ORIGIN_SIM)
        IN.fwd_sim += b->n_inputs;
    else
        IN.fwd_other += b->n_inputs;
    pthread_mutex_unlock(&IN.mu);
    tessera__v1__input_batch__free_unpacked(b, NULL);
}

/* ---- publishing inputs -------------------------------------------------------- */

static void input_subject(char *buf, size_t cap, const ts_cell_t *c)
{
#ifdef TS_ORIGIN_SIM
    ts_subject_input(buf, cap, c, TS_ORIGIN_SIM);
#else
    ts_subject_cell(buf, cap, c, TS_SUBJ_INPUT);
#endif
}

/* Publishes inputs for entities [first, first + n) into the west cell's
 * stream and waits for JetStream's acknowledgement: a Join at seq 1, or a
 * Move at seq with velocity (dx, 0). */
static void publish_batch(uint64_t first, size_t n, uint64_t seq, double dx)
{
    Tessera__V1__Input *in = calloc(n, sizeof(*in));
    Tessera__V1__Input **inp = calloc(n, sizeof(*inp));
    Tessera__V1__JoinInput *joins = calloc(n, sizeof(*joins));
    Tessera__V1__MoveInput *moves = calloc(n, sizeof(*moves));
    char(*names)[32] = calloc(n, sizeof(*names));
    assert_true(in && inp && joins && moves && names);
    for (size_t i = 0; i < n; i++) {
        uint64_t id = first + i;
        tessera__v1__input__init(&in[i]);
        in[i].entity = id;
        in[i].seq = seq;
        if (seq == 1) {
            tessera__v1__join_input__init(&joins[i]);
            /* along the east border, 0.1 inside, spread over its length */
            joins[i].x = 99.9;
            joins[i].y = 0.5 + 99.0 * (double)(id % CROWD) / CROWD;
            snprintf(names[i], sizeof(names[i]), "crowd-%024" PRIu64, id); /* the longest name */
            joins[i].name = names[i];
            in[i].kind_case = TESSERA__V1__INPUT__KIND_JOIN;
            in[i].join = &joins[i];
        } else {
            tessera__v1__move_input__init(&moves[i]);
            moves[i].dx = dx;
            in[i].kind_case = TESSERA__V1__INPUT__KIND_MOVE;
            in[i].move = &moves[i];
        }
        inp[i] = &in[i];
    }
    Tessera__V1__CellId cell;
    ts_proto_cell_init(&cell, &WEST);
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    b.cell = &cell;
    b.n_inputs = n;
    b.inputs = inp;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_proto_pack(&b.base, &buf, &len), TS_OK);
    char subj[TS_SUBJECT_MAX], msg_id[64];
    input_subject(subj, sizeof subj, &WEST);
    snprintf(msg_id, sizeof msg_id, "it-crowd-%" PRIu64 "-%" PRIu64, first, seq);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .count = (uint32_t)n, .msg_id = msg_id};
    ts_status_t st = TS_ERR_TIMEOUT;
    for (int attempt = 0; attempt < 5 && st != TS_OK; attempt++)
        st = ts_bus_js_publish(bus, subj, &hdr, buf, len, 5000, NULL);
    assert_int_equal(st, TS_OK);
    free(buf);
    free(in);
    free(inp);
    free(joins);
    free(moves);
    free(names);
}

/* One InputBatch of an input for every entity: applied in one tick. */
static void publish_all(uint64_t seq, double dx)
{
    publish_batch(1, CROWD, seq, dx);
}

/* ---- cluster ------------------------------------------------------------------- */

/* worker_arg: one more option for both workers, or NULL. */
static void cluster_start(const char *worker_arg)
{
    ts_h_start(&ts_h);
    pthread_mutex_lock(&V.mu);
    V.want_applied = INPUTS_EACH;
    V.want_last_seq = LATE_SEQ;
    for (int i = 0; i < 2; i++) {
        free(V.cell[i].ids);
        memset(&V.cell[i], 0, sizeof(V.cell[i]));
        V.cell[i].ids = calloc(CROWD + 1, 1);
        assert_non_null(V.cell[i].ids);
    }
    pthread_mutex_unlock(&V.mu);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_crowd_crossing"), TS_OK);
    const ts_cell_t *cells[2] = {&WEST, &EAST};
    for (int i = 0; i < 2; i++) {
        char subj[TS_SUBJECT_MAX];
        ts_subject_cell(subj, sizeof subj, cells[i], TS_SUBJ_STATE);
        assert_int_equal(ts_bus_subscribe(bus, subj, on_state, &V.cell[i], &state_subs[i]), TS_OK);
    }
    char in_subj[TS_SUBJECT_MAX + 8];
    ts_subject_cell(in_subj, TS_SUBJECT_MAX, &EAST, TS_SUBJ_INPUT);
    assert_int_equal(ts_bus_subscribe(bus, in_subj, on_east_input, NULL, &input_subs[0]), TS_OK);
    strcat(in_subj, ".>"); /* an input subject with its publisher's token */
    assert_int_equal(ts_bus_subscribe(bus, in_subj, on_east_input, NULL, &input_subs[1]), TS_OK);
    pthread_mutex_lock(&IN.mu);
    IN.msgs = IN.transfers = IN.max_len = IN.fwd_sim = IN.fwd_other = 0;
    pthread_mutex_unlock(&IN.mu);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    const char *orch[] = {"--orch.rebalance=0",
                          HB_TTL_ARG,
                          "--world.x0=0",
                          "--world.y0=0",
                          "--world.width=2",
                          "--world.height=1",
                          "--world.assign=0:0=w1,1:0=w2",
                          NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, worker_arg, NULL};
    ts_h_stack_t stack;
    ts_h_spawn_stack(&ts_h, orch, worker, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, 2, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the two-cell world did not come up");
    }
}

static void cluster_stop(void)
{
    for (int i = 0; i < 2; i++) {
        ts_bus_sub_destroy(state_subs[i]);
        state_subs[i] = NULL;
        ts_bus_sub_destroy(input_subs[i]);
        input_subs[i] = NULL;
    }
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    bus = NULL;
    reg = NULL;
    ts_h_stop(&ts_h);
    pthread_mutex_lock(&V.mu);
    for (int i = 0; i < 2; i++) {
        free(V.cell[i].ids);
        V.cell[i].ids = NULL;
    }
    pthread_mutex_unlock(&V.mu);
}

static ts_cell_entry_t cell_entry(const ts_cell_t *c)
{
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, c, &e), TS_OK);
    return e;
}

/* The index in ts_h.procs of the process named name. */
static int proc_named(const char *name)
{
    for (int i = 0; i < ts_h.nprocs; i++)
        if (strcmp(ts_h.procs[i].name, name) == 0) return i;
    fail_msg("no process named %s", name);
    return -1;
}

/* ---- the test ------------------------------------------------------------------- */

static void test_crowd_crosses_in_one_tick_and_owner_killed(void **state)
{
    (void)state;
    cluster_start(NULL);
    ts_cell_entry_t w0 = cell_entry(&WEST), e0 = cell_entry(&EAST);
    assert_string_equal(w0.owner, "w1");
    assert_string_equal(e0.owner, "w2");

    /* the crowd joins at the west cell's east border and fills its windows
     * standing still */
    uint64_t t0 = ts_mono_us();
    publish_all(1, 0);
    for (uint64_t seq = 1 + SEQ_STEP; seq < LAST_SEQ; seq += SEQ_STEP)
        publish_all(seq, 0);
    /* everyone steps east in the same tick */
    publish_all(LAST_SEQ, 50);
    uint64_t t_last = ts_mono_us();
    fprintf(stderr, "%d entities x %d inputs published and acknowledged in %.1f s\n", CROWD, INPUTS_EACH,
            (double)(ts_mono_us() - t0) / 1e6);

    /* the first of their Transfers go into the east cell's stream: kill
     * the west cell's owner */
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        pthread_mutex_lock(&IN.mu);
        uint64_t seen = IN.msgs;
        pthread_mutex_unlock(&IN.mu);
        if (seen) break;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("no Transfer was published into the east cell in %d s", WAIT_MS / 1000);
        }
        ts_sleep_ms(1);
    }
    pthread_mutex_lock(&IN.mu);
    uint64_t msgs_at_kill = IN.msgs;
    pthread_mutex_unlock(&IN.mu);
    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, proc_named("w1"), SIGKILL);
    fprintf(stderr,
            "w1 killed %.0f ms after the last Moves were stored, %" PRIu64 " Transfer messages seen\n",
            (double)(t_kill - t_last) / 1000, msgs_at_kill);
    /* a Move each for the crowd that left: whoever owns the west cell now
     * forwards it, under the origin it came with */
    publish_all(LATE_SEQ, 50);

    /* w2 recovers the west cell at one more epoch step */
    ts_cell_entry_t w1;
    for (;;) {
        w1 = cell_entry(&WEST);
        if (strcmp(w1.owner, "w1") != 0) break;
        if (ts_mono_us() - t_kill > WAIT_MS * 1000ULL) {
            ts_h.failed = true;
            fail_msg("%d s after SIGKILL of w1 the west cell still belongs to it", WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
    assert_string_equal(w1.owner, "w2");
    assert_int_equal(w1.epoch, w0.epoch + 1);

    /* every entity exactly once, in the east cell, every input applied once */
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    cell_view_t west, east;
    for (;;) {
        pthread_mutex_lock(&V.mu);
        west = V.cell[0];
        east = V.cell[1];
        pthread_mutex_unlock(&V.mu);
        bool west_done = west.kf_us > t_kill && west.kf_epoch == w1.epoch && west.kf_listed == 0;
        bool east_done = east.kf_us > t_kill && east.kf_listed == CROWD && east.kf_distinct == CROWD &&
                         east.kf_exact == CROWD;
        if (west_done && east_done) break;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%d s after the kill: the west cell's latest keyframe (epoch %" PRIu64 ") lists %" PRIu64
                     " entities, want 0; the east cell's lists %" PRIu64 " (%" PRIu64 " distinct, %" PRIu64
                     " with exactly their %d inputs applied), want %d",
                     WAIT_MS / 1000, west.kf_epoch, west.kf_listed, east.kf_listed, east.kf_distinct,
                     east.kf_exact, INPUTS_EACH, CROWD);
        }
        ts_sleep_ms(50);
    }
    fprintf(stderr,
            "after the kill: the east cell lists all %d entities once, each with its %d inputs applied "
            "(%.1f s after the kill)\n",
            CROWD, INPUTS_EACH, (double)(east.kf_us - t_kill) / 1e6);

    /* the crowd took several messages, each one NATS took */
    pthread_mutex_lock(&IN.mu);
    uint64_t msgs = IN.msgs, transfers = IN.transfers, max_len = IN.max_len;
    pthread_mutex_unlock(&IN.mu);
    fprintf(stderr,
            "the east cell's input: %" PRIu64 " messages with %" PRIu64 " transfers, the largest %" PRIu64
            " bytes\n",
            msgs, transfers, max_len);
    if (msgs < 2 || transfers < CROWD || max_len > 1024 * 1024) {
        ts_h.failed = true;
        fail_msg("the crowd's %d transfers reached the east cell in %" PRIu64 " messages (largest %" PRIu64
                 " bytes), want 2 or more of at most 1 MB",
                 CROWD, msgs, max_len);
    }

    /* the forwarded Moves went to the east cell under the sim's origin only
     * (the core subscription sees a publish JetStream de-duplicated too) */
    pthread_mutex_lock(&IN.mu);
    uint64_t fwd_sim = IN.fwd_sim, fwd_other = IN.fwd_other;
    pthread_mutex_unlock(&IN.mu);
    fprintf(stderr,
            "forwarded into the east cell: %" PRIu64 " inputs under .input.s, %" PRIu64 " under others\n",
            fwd_sim, fwd_other);
    if (fwd_sim < CROWD || fwd_other != 0) {
        ts_h.failed = true;
        fail_msg("the crowd's late Moves reached the east cell %" PRIu64
                 " times under the sim's origin and %" PRIu64 " under another, want %d or more and 0",
                 fwd_sim, fwd_other, CROWD);
    }

    /* no message was too large for NATS anywhere */
    for (int i = 0; i < ts_h.nprocs; i++) {
        if (ts_h.procs[i].server) continue;
        if (ts_h_log_has(&ts_h, i, "greater than maximum") || ts_h_log_has(&ts_h, i, "not published")) {
            ts_h.failed = true;
            fail_msg("%s logged a message too large to publish", ts_h.procs[i].name);
        }
    }
    ts_h_pass();
}

/* Entities in the ring test, published RING_BATCH to an InputBatch, each
 * with RING_INPUTS inputs (a Join, then Moves standing still). */
#define RING_ENTITIES 400
#define RING_BATCH 4
#define RING_INPUTS 4

static void test_inputs_past_a_full_inbox_ring_applied_once(void **state)
{
    (void)state;
    cluster_start("--worker.inbox_ring=16");
    assert_string_equal(cell_entry(&WEST).owner, "w1");
    pthread_mutex_lock(&V.mu);
    V.want_applied = RING_INPUTS;
    V.want_last_seq = 1 + (RING_INPUTS - 1) * SEQ_STEP;
    pthread_mutex_unlock(&V.mu);
    /* 400 messages, one after the other as fast as JetStream acknowledges
     * them: far more than 16 between two ticks */
    uint64_t t0 = ts_mono_us();
    for (uint64_t seq = 1; seq <= V.want_last_seq; seq += SEQ_STEP)
        for (uint64_t first = 1; first <= RING_ENTITIES; first += RING_BATCH)
            publish_batch(first, RING_BATCH, seq, 0);
    fprintf(stderr, "%d entities x %d inputs in %d messages published in %.1f s\n", RING_ENTITIES,
            RING_INPUTS, RING_ENTITIES / RING_BATCH * RING_INPUTS, (double)(ts_mono_us() - t0) / 1e6);

    /* a keyframe of (0,0) lists every entity once, each with all its inputs
     * applied once and its newest one last */
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL, t_after = ts_mono_us();
    bool done = false;
    uint64_t listed = 0, distinct = 0, exact = 0;
    while (!done && ts_mono_us() < deadline) {
        pthread_mutex_lock(&V.mu);
        const cell_view_t *c = &V.cell[0];
        listed = c->kf_listed;
        distinct = c->kf_distinct;
        exact = c->kf_exact;
        done = c->kf_us > t_after && listed == RING_ENTITIES && distinct == RING_ENTITIES &&
               exact == RING_ENTITIES;
        pthread_mutex_unlock(&V.mu);
        if (!done) ts_sleep_ms(50);
    }
    if (!done) {
        ts_h.failed = true;
        fail_msg("(0,0)'s last keyframe: %" PRIu64 " entities listed, %" PRIu64 " distinct, %" PRIu64
                 " with exactly their %d inputs applied (want %d each)",
                 listed, distinct, exact, RING_INPUTS, RING_ENTITIES);
    }
    /* and the ring did fill up */
    if (!ts_h_log_has(&ts_h, proc_named("w1"), "did not fit the ring")) {
        ts_h.failed = true;
        fail_msg("w1 never found its input ring full: the test did not test the overflow");
    }
    fprintf(stderr, "(0,0) lists all %d entities once, each with its %d inputs applied once\n", RING_ENTITIES,
            RING_INPUTS);
    ts_h_pass();
}

static int test_teardown(void **state)
{
    ts_h_test_teardown(state);
    cluster_stop();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_crowd_crosses_in_one_tick_and_owner_killed, ts_h_test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_inputs_past_a_full_inbox_ring_applied_once, ts_h_test_setup,
                                        test_teardown),
    };
    return TS_H_RUN("it_crowd_crossing", tests, NULL, NULL);
}
