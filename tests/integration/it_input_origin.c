/* Integration: input subjects carry their publisher's origin token
 * ("cell.<key>.input.<origin>", common/src/subject.c) against a real
 * nats-server -js.
 *  - An input stream made before origin tokens (subject
 *    "cell.<world>.*.*.*.*.input") is updated in place by the streams'
 *    ensure: same stream (its messages kept), new subject; inputs under
 *    every origin are stored, a publish without an origin is not.
 *  - A cell's consumer (filter "cell.<key>.input.*") gets the cell's inputs
 *    of every origin, in stream order, and nothing of another cell. */
#include <nats/nats.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "tessera/bus.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 41
#define WAIT_MS 5000

/* Creates the world's input stream as it was before origin tokens. */
static void create_old_stream(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    assert_int_equal(natsConnection_ConnectTo(&nc, ts_h.nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    char name[64], subj[96];
    ts_bus_input_stream(name, sizeof name, WORLD);
    snprintf(subj, sizeof subj, "cell.%d.*.*.*.*.input", WORLD);
    const char *subjects[1] = {subj};
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_MemoryStorage;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    assert_int_equal(js_AddStream(&si, js, &cfg, NULL, &jerr), NATS_OK);
    jsStreamInfo_Destroy(si);
    jsPubAck *ack = NULL;
    char old[96];
    snprintf(old, sizeof old, "cell.%d.0.0.0.0.input", WORLD);
    assert_int_equal(js_Publish(&ack, js, old, "old", 3, NULL, &jerr), NATS_OK);
    assert_int_equal(ack->Sequence, 1);
    jsPubAck_Destroy(ack);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static void test_old_stream_updated_in_place(void **state)
{
    (void)state;
    create_old_stream();
    char stream[64];
    ts_bus_input_stream(stream, sizeof stream, WORLD);
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_input_origin"), TS_OK);
    ts_bus_stream_state_t before, after;
    assert_int_equal(ts_bus_stream_state(bus, stream, &before), TS_OK);
    assert_int_equal(ts_bus_ensure_streams(bus, WORLD, "memory", 60, 1), TS_OK);
    assert_int_equal(ts_bus_stream_state(bus, stream, &after), TS_OK);
    /* the same stream, its message kept */
    assert_true(after.created_ns == before.created_ns);
    assert_int_equal(after.msgs, 1);
    assert_int_equal(after.last_seq, 1);

    ts_cell_t cell = {.world = WORLD};
    char subj[TS_SUBJECT_MAX];
    const ts_origin_t origins[] = {7, TS_ORIGIN_SIM, TS_ORIGIN_WORKER};
    for (size_t i = 0; i < 3; i++) {
        assert_true(ts_subject_input(subj, sizeof subj, &cell, origins[i]) > 0);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .count = 1};
        uint64_t seq = 0;
        assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, "new", 3, WAIT_MS, &seq), TS_OK);
        assert_int_equal(seq, 2 + i);
    }
    /* no origin: no stream takes it */
    ts_subject_cell(subj, sizeof subj, &cell, TS_SUBJ_INPUT);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .count = 1};
    assert_int_not_equal(ts_bus_js_publish(bus, subj, &hdr, "bare", 4, 1000, NULL), TS_OK);
    assert_int_equal(ts_bus_stream_state(bus, stream, &after), TS_OK);
    assert_int_equal(after.msgs, 4);
    ts_bus_destroy(bus);
    ts_h_pass();
}

typedef struct {
    pthread_mutex_t mu;
    char subjects[8][TS_SUBJECT_MAX];
    uint64_t seqs[8];
    int n;
} got_t;

static void on_got(void *ud, const ts_bus_msg_t *m)
{
    got_t *g = ud;
    pthread_mutex_lock(&g->mu);
    if (g->n < 8) {
        ts_strlcpy(g->subjects[g->n], ts_bus_msg_subject(m), sizeof g->subjects[0]);
        g->seqs[g->n++] = ts_bus_msg_stream_seq(m);
    }
    pthread_mutex_unlock(&g->mu);
}

static void test_cell_consumer_takes_every_origin(void **state)
{
    (void)state;
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_input_origin-consumer"), TS_OK);
    assert_int_equal(ts_bus_ensure_streams(bus, WORLD + 1, "memory", 60, 1), TS_OK);
    ts_cell_t cell = {.world = WORLD + 1, .cx = -1, .cy = 2}, other = {.world = WORLD + 1, .cx = 0, .cy = 2};
    const ts_origin_t origins[] = {1, 32766, TS_ORIGIN_SIM, TS_ORIGIN_WORKER};
    char subj[TS_SUBJECT_MAX];
    for (size_t i = 0; i < 4; i++) {
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .count = 1};
        assert_true(ts_subject_input(subj, sizeof subj, &cell, origins[i]) > 0);
        assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, "in", 2, WAIT_MS, NULL), TS_OK);
        assert_true(ts_subject_input(subj, sizeof subj, &other, origins[i]) > 0);
        assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, "other", 5, WAIT_MS, NULL), TS_OK);
    }
    got_t g = {.n = 0};
    pthread_mutex_init(&g.mu, NULL);
    char filter[TS_SUBJECT_MAX];
    assert_true(ts_subject_input_filter(filter, sizeof filter, &cell) > 0);
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_consume(bus, WORLD + 1, filter, 0, on_got, &g, &sub), TS_OK);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ull;
    int n = 0;
    while (n < 4 && ts_mono_us() < deadline) {
        ts_sleep_ms(20);
        pthread_mutex_lock(&g.mu);
        n = g.n;
        pthread_mutex_unlock(&g.mu);
    }
    ts_sleep_ms(200); /* nothing of the other cell follows */
    ts_bus_sub_destroy(sub);
    assert_int_equal(g.n, 4);
    for (int i = 0; i < 4; i++) {
        ts_origin_t o = 0;
        assert_int_equal(ts_subject_input_origin(g.subjects[i], &o), TS_OK);
        assert_int_equal(o, origins[i]);
        assert_int_equal(g.seqs[i], 1 + 2 * (uint64_t)i);
    }
    pthread_mutex_destroy(&g.mu);
    ts_bus_destroy(bus);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_old_stream_updated_in_place),
        TS_H_TEST(test_cell_consumer_takes_every_origin),
    };
    return TS_H_RUN("it_input_origin", tests, ts_h_group_setup, ts_h_group_teardown);
}
