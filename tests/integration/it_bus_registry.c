/* The bus and registry wrappers against a real nats-server -js and
 * redis-server: what services rely on — headers survive the trip, JetStream
 * sequences order inputs, an ordered consumer replays exactly the messages
 * from a sequence on, every async publish is reported once, checkpoints keep
 * only the latest, and the registry's epoch CAS, locks and liveness hold. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define MAX_GOT 256

/* Messages a subscription saw, copied out of the callback. */
typedef struct {
    pthread_mutex_t mu;
    int n;
    char subject[MAX_GOT][96];
    char data[MAX_GOT][64];
    char type[MAX_GOT][48];
    uint64_t epoch[MAX_GOT], seq[MAX_GOT], count[MAX_GOT], stream_seq[MAX_GOT];
    int sleep_ms;
} got_t;

static void got_init(got_t *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
}

static void got_free(got_t *g)
{
    pthread_mutex_destroy(&g->mu);
}

static void on_got(void *ud, const ts_bus_msg_t *m)
{
    got_t *g = ud;
    if (g->sleep_ms > 0) ts_sleep_ms(g->sleep_ms);
    pthread_mutex_lock(&g->mu);
    if (g->n < MAX_GOT) {
        int i = g->n++;
        ts_strlcpy(g->subject[i], ts_bus_msg_subject(m), sizeof g->subject[i]);
        size_t len = ts_bus_msg_len(m);
        if (len >= sizeof g->data[i]) len = sizeof g->data[i] - 1;
        memcpy(g->data[i], ts_bus_msg_data(m), len);
        g->data[i][len] = '\0';
        const char *type = ts_bus_msg_header(m, TS_HDR_TYPE);
        ts_strlcpy(g->type[i], type ? type : "", sizeof g->type[i]);
        g->epoch[i] = ts_bus_msg_header_u64(m, TS_HDR_EPOCH);
        g->seq[i] = ts_bus_msg_header_u64(m, TS_HDR_SEQ);
        g->count[i] = ts_bus_msg_header_u64(m, TS_HDR_COUNT);
        g->stream_seq[i] = ts_bus_msg_stream_seq(m);
    }
    pthread_mutex_unlock(&g->mu);
}

static int got_count(got_t *g)
{
    pthread_mutex_lock(&g->mu);
    int n = g->n;
    pthread_mutex_unlock(&g->mu);
    return n;
}

static bool wait_count(got_t *g, int n, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    while (got_count(g) < n) {
        if (ts_mono_us() > deadline) return false;
        ts_sleep_ms(5);
    }
    return true;
}

/* A loopback port that refuses connections for as long as *fd stays open
 * (bound, never listening), so no other process can take it meanwhile. */
static int refusing_port(int *fd)
{
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(*fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    assert_int_equal(bind(*fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(*fd, (struct sockaddr *)&sa, &len), 0);
    return ntohs(sa.sin_port);
}

static ts_bus_t *bus_connect(void)
{
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_bus_registry"), TS_OK);
    return bus;
}

static ts_registry_t *reg_connect(void)
{
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    return reg;
}

/* ---- bus ------------------------------------------------------------------ */

static void on_echo(void *ud, const ts_bus_msg_t *m)
{
    ts_bus_t *bus = ud;
    char reply[128];
    snprintf(reply, sizeof reply, "echo:%.*s", (int)ts_bus_msg_len(m), (const char *)ts_bus_msg_data(m));
    ts_bus_hdr_t hdr = {.type = "tessera.v1.Echo", .epoch = ts_bus_msg_header_u64(m, TS_HDR_EPOCH) + 1};
    ts_bus_respond(bus, m, &hdr, reply, strlen(reply));
}

static void test_core_pubsub_headers(void **state)
{
    ts_bus_t *bus = bus_connect();
    got_t g;
    got_init(&g);
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "it.core.>", on_got, &g, &sub), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);

    uint64_t before = ts_bus_bytes_out(bus);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HEARTBEAT, .epoch = 7, .seq = 42, .count = 3};
    assert_int_equal(ts_bus_publish(bus, "it.core.a", &hdr, "hello", 5), TS_OK);
    ts_bus_hdr_t one = {.type = TS_TYPE_STATE_DELTA, .epoch = UINT64_MAX, .seq = 1};
    assert_int_equal(ts_bus_publish(bus, "it.core.b", &one, "", 0), TS_OK);
    assert_true(wait_count(&g, 2, 5000));
    assert_true(ts_bus_bytes_out(bus) >= before + 5);

    assert_string_equal(g.subject[0], "it.core.a");
    assert_string_equal(g.data[0], "hello");
    assert_string_equal(g.type[0], TS_TYPE_HEARTBEAT);
    assert_int_equal(g.epoch[0], 7);
    assert_int_equal(g.seq[0], 42);
    assert_int_equal(g.count[0], 3);
    assert_int_equal(g.stream_seq[0], 0);
    assert_string_equal(g.subject[1], "it.core.b");
    assert_string_equal(g.data[1], "");
    assert_true(g.epoch[1] == UINT64_MAX);
    assert_int_equal(g.count[1], 1); /* count 0 means one item */

    /* a header without a type is refused, nothing is sent */
    ts_bus_hdr_t bad = {.type = NULL};
    assert_int_equal(ts_bus_publish(bus, "it.core.c", &bad, "x", 1), TS_ERR_INVALID);
    assert_int_equal(ts_bus_publish(bus, "", &hdr, "x", 1), TS_ERR_INVALID);

    /* request-reply, headers both ways */
    ts_bus_sub_t *echo = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "it.echo", on_echo, bus, &echo), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    ts_bus_msg_t *reply = NULL;
    assert_int_equal(ts_bus_request(bus, "it.echo", &hdr, "ping", 4, 2000, &reply), TS_OK);
    assert_int_equal(ts_bus_msg_len(reply), 9);
    assert_memory_equal(ts_bus_msg_data(reply), "echo:ping", 9);
    assert_string_equal(ts_bus_msg_header(reply, TS_HDR_TYPE), "tessera.v1.Echo");
    assert_int_equal(ts_bus_msg_header_u64(reply, TS_HDR_EPOCH), 8);
    assert_null(ts_bus_msg_header(reply, "No-Such-Header"));
    ts_bus_msg_destroy(reply);

    /* nobody listening: a clear error, quickly */
    reply = NULL;
    ts_status_t st = ts_bus_request(bus, "it.nobody", &hdr, "x", 1, 500, &reply);
    assert_true(st == TS_ERR_UNAVAILABLE || st == TS_ERR_TIMEOUT);
    assert_null(reply);

    ts_bus_sub_destroy(echo);
    ts_bus_sub_destroy(sub);
    ts_bus_sub_destroy(NULL);
    ts_bus_destroy(bus);
    got_free(&g);
    ts_h_pass();
}

static void test_js_publish_sequence(void **state)
{
    ts_bus_t *bus = bus_connect();
    assert_int_equal(ts_bus_ensure_streams(bus, 7, "memory", 60, 1), TS_OK);
    /* ensuring twice is harmless (every service does it at start) */
    assert_int_equal(ts_bus_ensure_streams(bus, 7, "memory", 60, 1), TS_OK);
    assert_int_equal(ts_bus_ensure_streams(bus, 7, "tape", 60, 1), TS_ERR_INVALID);

    uint64_t prev = 0;
    for (int i = 0; i < 5; i++) {
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .seq = (uint64_t)i};
        uint64_t seq = 0;
        assert_int_equal(ts_bus_js_publish(bus, "cell.7.0.0.0.0.input.w", &hdr, "in", 2, 2000, &seq), TS_OK);
        assert_true(seq > prev);
        prev = seq;
    }
    assert_int_equal(prev, 5);

    /* the same msg id is stored once: a retried publish gets the first sequence */
    ts_bus_hdr_t dup = {.type = TS_TYPE_INPUT_BATCH, .msg_id = "it-dup-1"};
    uint64_t s1 = 0, s2 = 0;
    assert_int_equal(ts_bus_js_publish(bus, "cell.7.0.0.0.0.input.w", &dup, "d", 1, 2000, &s1), TS_OK);
    assert_int_equal(ts_bus_js_publish(bus, "cell.7.0.0.0.0.input.w", &dup, "d", 1, 2000, &s2), TS_OK);
    assert_int_equal(s1, 6);
    assert_int_equal(s2, s1);

    /* a subject no stream captures is not acknowledged */
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH};
    assert_int_not_equal(ts_bus_js_publish(bus, "it.nostream", &hdr, "x", 1, 1000, NULL), TS_OK);

    char name[64];
    ts_bus_input_stream(name, sizeof name, 7);
    assert_string_equal(name, "TS_INPUT_7");
    ts_bus_ckpt_stream(name, sizeof name, 7);
    assert_string_equal(name, "TS_CKPT_7");

    /* a worker process's tick marks go to their own stream */
    ts_bus_marks_stream(name, sizeof name, 7);
    assert_string_equal(name, "TS_MARKS_7");
    char marks[128];
    ts_bus_marks_subject(marks, sizeof marks, "w1", 7, "0123-42");
    assert_string_equal(marks, "tessera.worker.w1.marks.7.0123-42");
    ts_bus_hdr_t mh = {.type = TS_TYPE_TICK_MARK, .seq = 1};
    uint64_t mseq = 0;
    assert_int_equal(ts_bus_js_publish(bus, marks, &mh, "m", 1, 2000, &mseq), TS_OK);
    assert_int_equal(mseq, 1);
    ts_bus_stream_state_t ss;
    assert_int_equal(ts_bus_stream_state(bus, name, &ss), TS_OK);
    assert_int_equal(ss.msgs, 1);
    ts_bus_destroy(bus);
    ts_h_pass();
}

static void test_ordered_consumer_from_seq(void **state)
{
    ts_bus_t *bus = bus_connect();
    assert_int_equal(ts_bus_ensure_streams(bus, 8, "file", 60, 1), TS_OK);
    const char *subj = "cell.8.-1.0.0.0.input.w";
    uint64_t seqs[10];
    for (int i = 0; i < 10; i++) {
        char data[16];
        snprintf(data, sizeof data, "m%d", i);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .seq = (uint64_t)i, .count = 1};
        assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, data, strlen(data), 2000, &seqs[i]), TS_OK);
        /* interleave another cell of the same stream: must not be delivered */
        assert_int_equal(ts_bus_js_publish(bus, "cell.8.0.0.0.0.input.w", &hdr, "other", 5, 2000, NULL),
                         TS_OK);
    }

    got_t g;
    got_init(&g);
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_consume(bus, 8, subj, seqs[4], on_got, &g, &sub), TS_OK);
    assert_true(wait_count(&g, 6, 5000));
    ts_sleep_ms(200);
    assert_int_equal(got_count(&g), 6);
    for (int i = 0; i < 6; i++) {
        char want[16];
        snprintf(want, sizeof want, "m%d", i + 4);
        assert_string_equal(g.data[i], want);
        assert_string_equal(g.subject[i], subj);
        assert_int_equal(g.stream_seq[i], seqs[i + 4]);
        assert_int_equal(g.seq[i], (uint64_t)(i + 4));
    }

    /* live messages follow, in order, after the replay */
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .seq = 10};
    uint64_t live_seq = 0;
    assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, "m10", 3, 2000, &live_seq), TS_OK);
    assert_true(wait_count(&g, 7, 5000));
    assert_string_equal(g.data[6], "m10");
    assert_int_equal(g.stream_seq[6], live_seq);
    ts_bus_sub_destroy(sub);

    /* a consumer starting after the last stored message (a worker that has
     * applied everything) sees only what is published from then on */
    got_t next;
    got_init(&next);
    assert_int_equal(ts_bus_consume(bus, 8, subj, live_seq + 1, on_got, &next, &sub), TS_OK);
    ts_sleep_ms(200);
    assert_int_equal(got_count(&next), 0);
    uint64_t next_seq = 0;
    assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, "m11", 3, 2000, &next_seq), TS_OK);
    assert_int_equal(next_seq, live_seq + 1);
    assert_true(wait_count(&next, 1, 5000));
    assert_string_equal(next.data[0], "m11");
    assert_int_equal(next.stream_seq[0], next_seq);
    ts_bus_sub_destroy(sub);
    got_free(&next);

    /* start 0: everything still in the stream */
    got_t all;
    got_init(&all);
    assert_int_equal(ts_bus_consume(bus, 8, subj, 0, on_got, &all, &sub), TS_OK);
    assert_true(wait_count(&all, 12, 5000));
    for (int i = 1; i < 12; i++)
        assert_true(all.stream_seq[i] > all.stream_seq[i - 1]);
    assert_string_equal(all.data[0], "m0");
    ts_bus_sub_destroy(sub);

    /* a subject outside every stream is an error, not a hang */
    sub = NULL;
    assert_int_not_equal(ts_bus_consume(bus, 99, "cell.99.0.0.0.0.input.*", 0, on_got, &all, &sub), TS_OK);
    assert_null(sub);

    ts_bus_destroy(bus);
    got_free(&g);
    got_free(&all);
    ts_h_pass();
}

typedef struct {
    pthread_mutex_t mu;
    int ok, failed;
    uint64_t items, max_seq;
} acks_t;

static void on_ack(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok, uint64_t stream_seq)
{
    acks_t *a = ud;
    pthread_mutex_lock(&a->mu);
    if (ok) {
        a->ok++;
        a->items += count;
        if (stream_seq > a->max_seq) a->max_seq = stream_seq;
    } else {
        a->failed++;
    }
    pthread_mutex_unlock(&a->mu);
}

static void test_async_publish_acks(void **state)
{
    ts_bus_t *bus = bus_connect();
    assert_int_equal(ts_bus_ensure_streams(bus, 10, "memory", 60, 1), TS_OK);
    acks_t a = {.ok = 0};
    pthread_mutex_init(&a.mu, NULL);
    ts_bus_set_ack_handler(bus, on_ack, &a);

    const int n = 500;
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "it-async-%d", i);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .seq = (uint64_t)i, .count = 3, .msg_id = id};
        const char *subj = (i % 2) ? "cell.10.0.0.0.0.input.w" : "cell.10.1.0.0.0.input.w";
        assert_int_equal(ts_bus_js_publish_async(bus, subj, &hdr, "abc", 3), TS_OK);
    }
    assert_int_equal(ts_bus_js_flush(bus, 10000), TS_OK);
    pthread_mutex_lock(&a.mu);
    assert_int_equal(a.ok, n);
    assert_int_equal(a.failed, 0);
    assert_int_equal(a.items, 3 * n);
    assert_int_equal(a.max_seq, n);
    pthread_mutex_unlock(&a.mu);

    /* no stream for the subject: retried, then reported failed exactly once each */
    acks_t b = {.ok = 0};
    pthread_mutex_init(&b.mu, NULL);
    ts_bus_set_ack_handler(bus, on_ack, &b);
    for (int i = 0; i < 3; i++) {
        ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .count = 2};
        assert_int_equal(ts_bus_js_publish_async(bus, "it.nostream.async", &hdr, "x", 1), TS_OK);
    }
    assert_int_equal(ts_bus_js_flush(bus, 20000), TS_OK);
    pthread_mutex_lock(&b.mu);
    assert_int_equal(b.failed, 3);
    assert_int_equal(b.ok, 0);
    pthread_mutex_unlock(&b.mu);

    ts_bus_destroy(bus);
    pthread_mutex_destroy(&a.mu);
    pthread_mutex_destroy(&b.mu);
    ts_h_pass();
}

static void test_last_msg_checkpoint(void **state)
{
    ts_bus_t *bus = bus_connect();
    assert_int_equal(ts_bus_ensure_streams(bus, 9, "memory", 60, 1), TS_OK);
    char stream[64];
    ts_bus_ckpt_stream(stream, sizeof stream, 9);
    const char *subj = "cell.9.1.1.0.0.checkpoint";
    uint64_t last_seq = 0;
    for (int i = 1; i <= 3; i++) {
        char data[16];
        snprintf(data, sizeof data, "ckpt%d", i);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_CHECKPOINT, .epoch = (uint64_t)i};
        assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, data, strlen(data), 2000, &last_seq), TS_OK);
    }
    ts_bus_msg_t *m = NULL;
    assert_int_equal(ts_bus_last_msg(bus, stream, subj, &m), TS_OK);
    assert_int_equal(ts_bus_msg_len(m), 5);
    assert_memory_equal(ts_bus_msg_data(m), "ckpt3", 5);
    assert_int_equal(ts_bus_msg_stream_seq(m), last_seq);
    assert_string_equal(ts_bus_msg_header(m, TS_HDR_TYPE), TS_TYPE_CHECKPOINT);
    assert_int_equal(ts_bus_msg_header_u64(m, TS_HDR_EPOCH), 3);
    ts_bus_msg_destroy(m);

    /* the stream keeps only the latest checkpoint per cell */
    got_t g;
    got_init(&g);
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_consume(bus, 9, subj, 0, on_got, &g, &sub), TS_OK);
    assert_true(wait_count(&g, 1, 5000));
    ts_sleep_ms(200);
    assert_int_equal(got_count(&g), 1);
    assert_string_equal(g.data[0], "ckpt3");
    ts_bus_sub_destroy(sub);
    got_free(&g);

    m = NULL;
    assert_int_equal(ts_bus_last_msg(bus, stream, "cell.9.0.0.0.0.checkpoint", &m), TS_ERR_NOT_FOUND);
    assert_null(m);
    assert_int_equal(ts_bus_last_msg(bus, "TS_CKPT_404", subj, &m), TS_ERR_NOT_FOUND);
    ts_bus_destroy(bus);
    ts_h_pass();
}

typedef struct {
    got_t g;
    ts_bus_sub_t *sub;
    bool self_destroyed;
} self_t;

static void on_self_destroy(void *ud, const ts_bus_msg_t *m)
{
    self_t *s = ud;
    on_got(&s->g, m);
    if (!s->self_destroyed) {
        s->self_destroyed = true;
        ts_bus_sub_destroy(s->sub);
    }
}

static void test_sub_destroy_waits_for_callbacks(void **state)
{
    ts_bus_t *bus = bus_connect();
    got_t g;
    got_init(&g);
    g.sleep_ms = 20;
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "it.slow", on_got, &g, &sub), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    ts_bus_hdr_t hdr = {.type = "it"};
    for (int i = 0; i < 50; i++)
        assert_int_equal(ts_bus_publish(bus, "it.slow", &hdr, "x", 1), TS_OK);
    assert_true(wait_count(&g, 1, 5000));
    ts_bus_sub_destroy(sub);
    int after = got_count(&g);
    ts_sleep_ms(200);
    /* nothing ran after destroy returned, and destroy did not wait for the backlog */
    assert_int_equal(got_count(&g), after);
    assert_true(after < 50);
    got_free(&g);

    /* destroying a subscription from its own callback neither deadlocks nor leaks */
    self_t s;
    memset(&s, 0, sizeof s);
    got_init(&s.g);
    assert_int_equal(ts_bus_subscribe(bus, "it.self", on_self_destroy, &s, &s.sub), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ts_bus_publish(bus, "it.self", &hdr, "y", 1), TS_OK);
    assert_true(wait_count(&s.g, 1, 5000));
    ts_sleep_ms(200);
    assert_int_equal(got_count(&s.g), 1);
    got_free(&s.g);
    ts_bus_destroy(bus);
    ts_h_pass();
}

static void test_bus_connect_errors(void **state)
{
    ts_bus_t *bus = NULL;
    char url[64];
    int fd;
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", refusing_port(&fd));
    assert_int_not_equal(ts_bus_connect(&bus, url, "it"), TS_OK);
    close(fd);
    assert_null(bus);
    assert_int_equal(ts_bus_connect(&bus, NULL, "it"), TS_ERR_INVALID);
    ts_bus_destroy(NULL);
    ts_h_pass();
}

/* ---- registry ------------------------------------------------------------- */

static void test_registry_world(void **state)
{
    ts_registry_t *reg = reg_connect();
    ts_world_t w;
    assert_int_equal(ts_registry_world_get(reg, 21, &w), TS_ERR_NOT_FOUND);
    ts_world_t want = {.id = 21, .cell_size = 12.5, .x0 = -3, .y0 = -2, .width = 6, .height = 4};
    assert_int_equal(ts_registry_world_set(reg, &want), TS_OK);
    assert_int_equal(ts_registry_world_get(reg, 21, &w), TS_OK);
    assert_int_equal(w.id, 21);
    assert_true(w.cell_size == 12.5);
    assert_int_equal(w.x0, -3);
    assert_int_equal(w.y0, -2);
    assert_int_equal(w.width, 6);
    assert_int_equal(w.height, 4);
    ts_world_t bad = want;
    bad.width = 0;
    assert_int_equal(ts_registry_world_set(reg, &bad), TS_ERR_INVALID);

    ts_cell_entry_t e = {.cell = {.world = 21}, .owner = "w1"};
    ts_cell_entry_t out;
    assert_int_equal(ts_registry_cell_create(reg, &e, &out, NULL), TS_OK);
    assert_int_equal(ts_registry_world_reset(reg, 21), TS_OK);
    assert_int_equal(ts_registry_world_get(reg, 21, &w), TS_ERR_NOT_FOUND);
    assert_int_equal(ts_registry_cell_get(reg, &e.cell, &out), TS_ERR_NOT_FOUND);
    uint64_t v = 99;
    assert_int_equal(ts_registry_version(reg, 21, &v), TS_OK);
    assert_int_equal(v, 0);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_registry_cell_create(void **state)
{
    ts_registry_t *reg = reg_connect();
    ts_cell_entry_t want = {.cell = {.world = 22, .cx = -2, .cy = 1}, .owner = "w1", .state = TS_CELL_ACTIVE};
    ts_cell_entry_t out;
    uint64_t v1 = 0, v2 = 0;
    assert_int_equal(ts_registry_cell_create(reg, &want, &out, &v1), TS_OK);
    assert_int_equal(v1, 1);
    assert_int_equal(out.epoch, 1);
    assert_string_equal(out.owner, "w1");

    ts_cell_entry_t other = want;
    ts_strlcpy(other.owner, "w2", sizeof other.owner);
    assert_int_equal(ts_registry_cell_create(reg, &other, &out, &v2), TS_ERR_EXISTS);
    assert_string_equal(out.owner, "w1");
    assert_int_equal(out.epoch, 1);
    assert_int_equal(v2, v1); /* a refused create changes nothing */

    ts_cell_entry_t second = {.cell = {.world = 22, .cx = 0, .cy = 0}, .owner = "w2"};
    assert_int_equal(ts_registry_cell_create(reg, &second, &out, &v2), TS_OK);
    assert_int_equal(v2, 2);
    /* a child cell (depth 1) is depth-aware and listed too */
    ts_cell_entry_t child = {.cell = {.world = 22, .cx = 0, .cy = 0, .depth = 1, .sub = 3}, .owner = "w2"};
    assert_int_equal(ts_registry_cell_create(reg, &child, &out, NULL), TS_OK);

    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, 22, &cells, &n), TS_OK);
    assert_int_equal(n, 3);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (ts_cell_eq(&cells[i].cell, &want.cell) && strcmp(cells[i].owner, "w1") == 0) found |= 1;
        if (ts_cell_eq(&cells[i].cell, &second.cell) && strcmp(cells[i].owner, "w2") == 0) found |= 2;
        if (ts_cell_eq(&cells[i].cell, &child.cell) && cells[i].epoch == 1) found |= 4;
    }
    free(cells);
    assert_int_equal(found, 7);

    ts_cell_t unknown = {.world = 22, .cx = 5, .cy = 5};
    assert_int_equal(ts_registry_cell_get(reg, &unknown, &out), TS_ERR_NOT_FOUND);
    ts_cell_entry_t noowner = {.cell = {.world = 22, .cx = 7}};
    assert_int_equal(ts_registry_cell_create(reg, &noowner, &out, NULL), TS_ERR_INVALID);
    ts_cell_entry_t badcell = {.cell = {.world = 22, .depth = 1, .sub = 9}, .owner = "w1"};
    assert_int_equal(ts_registry_cell_create(reg, &badcell, &out, NULL), TS_ERR_INVALID);
    assert_int_equal(ts_registry_cells(reg, 23, &cells, &n), TS_OK);
    assert_int_equal(n, 0);
    free(cells);
    ts_registry_destroy(reg);
    ts_h_pass();
}

typedef struct {
    const char *url;
    const char *owner;
    ts_status_t st;
} cas_race_t;

static void *cas_racer(void *arg)
{
    cas_race_t *r = arg;
    ts_registry_t *reg = NULL;
    r->st = ts_registry_connect(&reg, r->url);
    if (r->st == TS_OK) {
        ts_cell_t c = {.world = 24, .cx = 1, .cy = 1};
        ts_cell_entry_t out;
        r->st = ts_registry_cell_cas(reg, &c, 2, r->owner, TS_CELL_ACTIVE, &out, NULL);
    }
    ts_registry_destroy(reg);
    return NULL;
}

static void test_registry_cas(void **state)
{
    ts_registry_t *reg = reg_connect();
    ts_cell_entry_t want = {.cell = {.world = 24, .cx = 1, .cy = 1}, .owner = "w1"};
    ts_cell_entry_t out;
    uint64_t v = 0, v_before = 0;
    assert_int_equal(ts_registry_cell_create(reg, &want, &out, &v_before), TS_OK);

    assert_int_equal(ts_registry_cell_cas(reg, &want.cell, 1, "w2", TS_CELL_HANDOVER, &out, &v), TS_OK);
    assert_int_equal(out.epoch, 2);
    assert_string_equal(out.owner, "w2");
    assert_int_equal(out.state, TS_CELL_HANDOVER);
    assert_int_equal(v, v_before + 1);
    ts_cell_entry_t now;
    assert_int_equal(ts_registry_cell_get(reg, &want.cell, &now), TS_OK);
    assert_int_equal(now.epoch, 2);
    assert_string_equal(now.owner, "w2");
    assert_int_equal(now.state, TS_CELL_HANDOVER);

    /* a stale epoch loses and learns the current entry; nothing changes */
    uint64_t v2 = 0;
    assert_int_equal(ts_registry_cell_cas(reg, &want.cell, 1, "w3", TS_CELL_ACTIVE, &out, &v2),
                     TS_ERR_CONFLICT);
    assert_int_equal(out.epoch, 2);
    assert_string_equal(out.owner, "w2");
    assert_int_equal(v2, v);
    /* an epoch from the future loses too */
    assert_int_equal(ts_registry_cell_cas(reg, &want.cell, 5, "w3", TS_CELL_ACTIVE, &out, NULL),
                     TS_ERR_CONFLICT);

    /* two writers with the same expected epoch: exactly one wins */
    cas_race_t r1 = {.url = ts_h.redis_url, .owner = "wa"}, r2 = {.url = ts_h.redis_url, .owner = "wb"};
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, cas_racer, &r1), 0);
    assert_int_equal(pthread_create(&t2, NULL, cas_racer, &r2), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    assert_true((r1.st == TS_OK && r2.st == TS_ERR_CONFLICT) || (r1.st == TS_ERR_CONFLICT && r2.st == TS_OK));
    assert_int_equal(ts_registry_cell_get(reg, &want.cell, &now), TS_OK);
    assert_int_equal(now.epoch, 3);
    assert_string_equal(now.owner, r1.st == TS_OK ? "wa" : "wb");

    /* the epoch only ever grows, by one per change */
    uint64_t epoch = now.epoch;
    for (int i = 0; i < 10; i++) {
        ts_status_t st = ts_registry_cell_cas(reg, &want.cell, epoch - (uint64_t)(i % 2),
                                              (i % 2) ? "w1" : "w2", TS_CELL_ACTIVE, &out, NULL);
        if (i % 2)
            assert_int_equal(st, TS_ERR_CONFLICT);
        else
            assert_int_equal(st, TS_OK);
        assert_true(out.epoch >= epoch);
        epoch = out.epoch;
    }
    assert_int_equal(epoch, 3 + 5);

    ts_cell_t unknown = {.world = 24, .cx = 9, .cy = 9};
    assert_int_equal(ts_registry_cell_cas(reg, &unknown, 1, "w1", TS_CELL_ACTIVE, &out, NULL),
                     TS_ERR_NOT_FOUND);
    assert_int_equal(ts_registry_cell_cas(reg, &want.cell, epoch, "has space", TS_CELL_ACTIVE, &out, NULL),
                     TS_ERR_INVALID);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_registry_lock(void **state)
{
    ts_registry_t *reg = reg_connect();
    bool held = false;
    assert_int_equal(ts_registry_lock(reg, "it-leader", "orch-a", 5000, &held), TS_OK);
    assert_true(held);
    assert_int_equal(ts_registry_lock(reg, "it-leader", "orch-b", 5000, &held), TS_OK);
    assert_false(held);
    assert_int_equal(ts_registry_lock(reg, "it-leader", "orch-a", 5000, &held), TS_OK);
    assert_true(held); /* renewal */
    /* only the holder can release */
    assert_int_equal(ts_registry_unlock(reg, "it-leader", "orch-b"), TS_OK);
    assert_int_equal(ts_registry_lock(reg, "it-leader", "orch-b", 5000, &held), TS_OK);
    assert_false(held);
    assert_int_equal(ts_registry_unlock(reg, "it-leader", "orch-a"), TS_OK);
    assert_int_equal(ts_registry_lock(reg, "it-leader", "orch-b", 300, &held), TS_OK);
    assert_true(held);

    /* a holder that stops renewing loses the lock after its TTL */
    ts_sleep_ms(500);
    assert_int_equal(ts_registry_lock(reg, "it-leader", "orch-a", 5000, &held), TS_OK);
    assert_true(held);
    assert_int_equal(ts_registry_lock(reg, "it-leader", "orch-a", 0, &held), TS_ERR_INVALID);
    assert_int_equal(ts_registry_unlock(reg, "it-leader", "orch-a"), TS_OK);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_registry_worker_alive(void **state)
{
    ts_registry_t *reg = reg_connect();
    bool alive = true;
    assert_int_equal(ts_registry_worker_is_alive(reg, "it-w9", &alive), TS_OK);
    assert_false(alive);
    assert_int_equal(ts_registry_worker_alive(reg, "it-w9", 300, 5000), TS_OK);
    assert_int_equal(ts_registry_worker_is_alive(reg, "it-w9", &alive), TS_OK);
    assert_true(alive);

    char **ids = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_workers(reg, &ids, &n), TS_OK);
    bool listed = false;
    for (size_t i = 0; i < n; i++)
        listed |= strcmp(ids[i], "it-w9") == 0;
    ts_registry_free_list(ids, n);
    assert_true(listed);

    ts_sleep_ms(600);
    assert_int_equal(ts_registry_worker_is_alive(reg, "it-w9", &alive), TS_OK);
    assert_false(alive);
    /* known but dead until it beats again */
    assert_int_equal(ts_registry_worker_alive(reg, "it-w9", 300, 5000), TS_OK);
    assert_int_equal(ts_registry_worker_is_alive(reg, "it-w9", &alive), TS_OK);
    assert_true(alive);

    assert_int_equal(ts_registry_worker_forget(reg, "it-w9"), TS_OK);
    assert_int_equal(ts_registry_worker_is_alive(reg, "it-w9", &alive), TS_OK);
    assert_false(alive);
    assert_int_equal(ts_registry_workers(reg, &ids, &n), TS_OK);
    for (size_t i = 0; i < n; i++)
        assert_string_not_equal(ids[i], "it-w9");
    ts_registry_free_list(ids, n);
    assert_int_equal(ts_registry_worker_alive(reg, "", 300, 1), TS_ERR_INVALID);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void raw(redisContext *c, const char *cmd)
{
    redisReply *r = redisCommand(c, cmd);
    assert_non_null(r);
    freeReplyObject(r);
}

static void test_registry_worker_claim_refresh(void **state)
{
    ts_registry_t *reg = reg_connect();
    const char *ids[] = {"it-w7", "it-w8"};
    char tokens[2][TS_WORKER_TOKEN_MAX];

    /* the first process claims the id; a second one with another token is refused */
    assert_int_equal(ts_registry_worker_claim(reg, "it-w7", "tok-a", 300, 10), TS_OK);
    assert_int_equal(ts_registry_worker_claim(reg, "it-w7", "tok-b", 300, 10), TS_ERR_EXISTS);
    assert_int_equal(ts_registry_workers_liveness(reg, ids, 2, tokens), TS_OK);
    assert_string_equal(tokens[0], "tok-a");
    assert_string_equal(tokens[1], "");
    /* the holder refreshes; the other one learns it is not the id */
    assert_int_equal(ts_registry_worker_refresh(reg, "it-w7", "tok-a", 300, 10), TS_OK);
    assert_int_equal(ts_registry_worker_refresh(reg, "it-w7", "tok-b", 300, 10), TS_ERR_CONFLICT);
    bool alive = false;
    assert_int_equal(ts_registry_worker_is_alive(reg, "it-w7", &alive), TS_OK);
    assert_true(alive);

    /* expired: nobody holds it; a late refresh of the same process takes it back */
    ts_sleep_ms(450);
    assert_int_equal(ts_registry_workers_liveness(reg, ids, 1, tokens), TS_OK);
    assert_string_equal(tokens[0], "");
    assert_int_equal(ts_registry_worker_refresh(reg, "it-w7", "tok-a", 300, 10), TS_OK);
    assert_int_equal(ts_registry_workers_liveness(reg, ids, 1, tokens), TS_OK);
    assert_string_equal(tokens[0], "tok-a");

    /* a new incarnation claims the id once the old one's key expired; the old
     * one's refresh then fails: two processes never both hold it */
    ts_sleep_ms(450);
    assert_int_equal(ts_registry_worker_claim(reg, "it-w7", "tok-b", 300, 10), TS_OK);
    assert_int_equal(ts_registry_worker_refresh(reg, "it-w7", "tok-a", 300, 10), TS_ERR_CONFLICT);
    assert_int_equal(ts_registry_workers_liveness(reg, ids, 1, tokens), TS_OK);
    assert_string_equal(tokens[0], "tok-b");
    /* claiming again with its own token is fine (a retried start) */
    assert_int_equal(ts_registry_worker_claim(reg, "it-w7", "tok-b", 300, 10), TS_OK);

    /* one round trip for the liveness of many workers, the version and the known ids */
    assert_int_equal(ts_registry_worker_claim(reg, "it-w8", "tok-c", 5000, 10), TS_OK);
    uint64_t rt = ts_registry_round_trips(reg), version = 1;
    char **known = NULL;
    size_t nknown = 0;
    assert_int_equal(ts_registry_liveness_poll(reg, 29, ids, 2, tokens, &version, &known, &nknown), TS_OK);
    assert_int_equal(ts_registry_round_trips(reg) - rt, 1);
    assert_string_equal(tokens[0], "tok-b");
    assert_string_equal(tokens[1], "tok-c");
    assert_int_equal(version, 0); /* world 29 has no registry */
    int listed = 0;
    for (size_t i = 0; i < nknown; i++)
        listed += strcmp(known[i], "it-w7") == 0 || strcmp(known[i], "it-w8") == 0;
    assert_int_equal(listed, 2);
    ts_registry_free_list(known, nknown);

    assert_int_equal(ts_registry_worker_claim(reg, "it-w7", "", 300, 1), TS_ERR_INVALID);
    assert_int_equal(ts_registry_worker_claim(reg, "it-w7", "has space", 300, 1), TS_ERR_INVALID);
    assert_int_equal(ts_registry_worker_refresh(reg, "it-w7", "tok-b", 0, 1), TS_ERR_INVALID);
    assert_int_equal(ts_registry_worker_forget(reg, "it-w7"), TS_OK);
    assert_int_equal(ts_registry_worker_forget(reg, "it-w8"), TS_OK);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_registry_cells_create_batch(void **state)
{
    enum { N = 300 };
    ts_registry_t *reg = reg_connect();
    ts_cell_entry_t want[N], out;
    ts_status_t results[N];
    uint64_t versions[N];
    memset(want, 0, sizeof want);
    for (int i = 0; i < N; i++) {
        want[i].cell = (ts_cell_t){.world = 31, .cx = i % 20, .cy = i / 20};
        snprintf(want[i].owner, sizeof want[i].owner, "w%d", 1 + i % 2);
    }
    /* one of them exists already, at another epoch: it is left alone */
    assert_int_equal(ts_registry_cell_create(reg, &want[7], &out, NULL), TS_OK);
    assert_int_equal(ts_registry_cell_cas(reg, &want[7].cell, 1, "w9", TS_CELL_ACTIVE, &out, NULL), TS_OK);
    uint64_t v0 = 0;
    assert_int_equal(ts_registry_version(reg, 31, &v0), TS_OK);
    uint64_t rt = ts_registry_round_trips(reg);
    assert_int_equal(ts_registry_cells_create(reg, want, N, results, versions), TS_OK);
    assert_true(ts_registry_round_trips(reg) - rt <= 2); /* the script once, then one round trip */
    uint64_t v = v0;
    for (int i = 0; i < N; i++) {
        if (i == 7) {
            assert_int_equal(results[i], TS_ERR_EXISTS);
            continue;
        }
        assert_int_equal(results[i], TS_OK);
        assert_int_equal(versions[i], ++v);
    }
    assert_int_equal(ts_registry_cell_get(reg, &want[7].cell, &out), TS_OK);
    assert_int_equal(out.epoch, 2);
    assert_string_equal(out.owner, "w9");
    assert_int_equal(ts_registry_cell_get(reg, &want[8].cell, &out), TS_OK);
    assert_int_equal(out.epoch, 1);
    assert_string_equal(out.owner, "w1");
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, 31, &cells, &n), TS_OK);
    assert_int_equal(n, N);
    free(cells);
    assert_int_equal(ts_registry_world_reset(reg, 31), TS_OK);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_registry_cells_cas_batch(void **state)
{
    enum { N = 600 };
    ts_registry_t *reg = reg_connect();
    ts_registry_cas_t *ops = calloc(N + 1, sizeof *ops);
    assert_non_null(ops);
    uint64_t v0 = 0;
    for (int i = 0; i < N; i++) {
        ts_cell_entry_t want = {.cell = {.world = 28, .cx = i % 40, .cy = i / 40}, .owner = "w1"}, out;
        assert_int_equal(ts_registry_cell_create(reg, &want, &out, &v0), TS_OK);
        ops[i].cell = want.cell;
        ops[i].expected_epoch = i % 10 == 3 ? 7 : 1; /* every tenth is stale */
        snprintf(ops[i].new_owner, sizeof ops[i].new_owner, "w%d", 2 + i % 3);
        ops[i].new_state = TS_CELL_ACTIVE;
    }
    ops[N].cell = (ts_cell_t){.world = 28, .cx = 99, .cy = 99}; /* unknown */
    ops[N].expected_epoch = 1;
    snprintf(ops[N].new_owner, sizeof ops[N].new_owner, "w2");

    /* 601 compare-and-sets: the script is loaded once, then one round trip */
    uint64_t rt = ts_registry_round_trips(reg);
    assert_int_equal(ts_registry_cells_cas(reg, ops, N + 1), TS_OK);
    assert_true(ts_registry_round_trips(reg) - rt <= 2);
    uint64_t v = v0;
    for (int i = 0; i < N; i++) {
        if (i % 10 == 3) {
            assert_int_equal(ops[i].result, TS_ERR_CONFLICT);
            assert_int_equal(ops[i].entry.epoch, 1);
            assert_string_equal(ops[i].entry.owner, "w1");
            continue;
        }
        assert_int_equal(ops[i].result, TS_OK);
        assert_int_equal(ops[i].entry.epoch, 2);
        assert_string_equal(ops[i].entry.owner, ops[i].new_owner);
        assert_int_equal(ops[i].version, ++v); /* one version per change, in order */
        ts_cell_entry_t now;
        assert_int_equal(ts_registry_cell_get(reg, &ops[i].cell, &now), TS_OK);
        assert_int_equal(now.epoch, 2);
        assert_string_equal(now.owner, ops[i].new_owner);
    }
    assert_int_equal(ops[N].result, TS_ERR_NOT_FOUND);
    uint64_t version = 0;
    assert_int_equal(ts_registry_version(reg, 28, &version), TS_OK);
    assert_int_equal(version, v);

    /* scripts flushed behind our back: the calls fall back to EVAL and work */
    redisContext *c = redisConnect("127.0.0.1", ts_h.redis_port);
    assert_non_null(c);
    raw(c, "SCRIPT FLUSH");
    for (int i = 0; i < N; i++)
        ops[i].expected_epoch = 2;
    assert_int_equal(ts_registry_cells_cas(reg, ops, N), TS_OK);
    assert_int_equal(ops[0].result, TS_OK);
    assert_int_equal(ops[0].entry.epoch, 3);
    raw(c, "SCRIPT FLUSH");
    ts_cell_entry_t out;
    assert_int_equal(ts_registry_cell_cas(reg, &ops[0].cell, 3, "w9", TS_CELL_ACTIVE, &out, NULL), TS_OK);
    assert_int_equal(out.epoch, 4);
    raw(c, "SCRIPT FLUSH");
    assert_int_equal(ts_registry_worker_claim(reg, "it-w6", "tok", 300, 1), TS_OK);
    assert_int_equal(ts_registry_worker_forget(reg, "it-w6"), TS_OK);
    redisFree(c);

    /* the same cell in two worlds cannot be batched */
    ops[1].cell.world = 27;
    assert_int_equal(ts_registry_cells_cas(reg, ops, 2), TS_ERR_INVALID);
    free(ops);
    assert_int_equal(ts_registry_world_reset(reg, 28), TS_OK);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_registry_bad_data_and_urls(void **state)
{
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, "http://nope"), TS_ERR_CONFIG);
    assert_int_equal(ts_registry_connect(&reg, "redis://127.0.0.1:99999"), TS_ERR_CONFIG);
    assert_int_equal(ts_registry_connect(&reg, "redis://127.0.0.1:6379/x"), TS_ERR_CONFIG);
    char url[64];
    int fd;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", refusing_port(&fd));
    assert_int_equal(ts_registry_connect(&reg, url), TS_ERR_UNAVAILABLE);
    close(fd);
    assert_null(reg);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/3", ts_h.redis_port);
    assert_int_equal(ts_registry_connect(&reg, url), TS_OK);
    ts_registry_destroy(reg);
    ts_registry_destroy(NULL);

    /* garbage written behind the registry's back gives an error, not a crash */
    redisContext *c = redisConnect("127.0.0.1", ts_h.redis_port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    raw(c, "HSET ts:{w25}:cell:25.0.0.0.0 owner w1 epoch notanumber state active");
    raw(c, "SET ts:{w25}:meta oops");
    raw(c, "SADD ts:{w25}:cells 25.0.0.0.0 not-a-cell");
    redisFree(c);

    reg = reg_connect();
    ts_cell_t cell = {.world = 25};
    ts_cell_entry_t out;
    ts_world_t w;
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cell_get(reg, &cell, &out), TS_ERR_REGISTRY);
    assert_int_equal(ts_registry_world_get(reg, 25, &w), TS_ERR_REGISTRY);
    assert_int_equal(ts_registry_cells(reg, 25, &cells, &n), TS_ERR_REGISTRY);
    assert_null(cells);
    /* the connection is still usable afterwards */
    assert_int_equal(ts_registry_world_reset(reg, 25), TS_OK);
    assert_int_equal(ts_registry_world_get(reg, 25, &w), TS_ERR_NOT_FOUND);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_registry_reconnects(void **state)
{
    ts_registry_t *reg = reg_connect();
    ts_world_t want = {.id = 27, .cell_size = 100, .x0 = -2, .y0 = -2, .width = 4, .height = 4}, w;
    assert_int_equal(ts_registry_world_set(reg, &want), TS_OK);
    ts_cell_entry_t e = {.cell = {.world = 27}, .owner = "w1"}, out;
    assert_int_equal(ts_registry_cell_create(reg, &e, &out, NULL), TS_OK);

    redisContext *c = redisConnect("127.0.0.1", ts_h.redis_port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    /* drop every other client connection (ours included) */
    raw(c, "CLIENT KILL TYPE normal SKIPME yes");

    /* a read is re-sent on a fresh connection */
    assert_int_equal(ts_registry_world_get(reg, 27, &w), TS_OK);
    assert_int_equal(w.width, 4);

    /* a CAS is not re-sent (it may have been applied): it fails clearly,
     * changes nothing, and the next call works (a stale CAS first loads the
     * script on the connection, so the kill hits the CAS itself) */
    assert_int_equal(ts_registry_cell_cas(reg, &e.cell, 9, "w2", TS_CELL_ACTIVE, &out, NULL),
                     TS_ERR_CONFLICT);
    raw(c, "CLIENT KILL TYPE normal SKIPME yes");
    assert_int_equal(ts_registry_cell_cas(reg, &e.cell, 1, "w2", TS_CELL_ACTIVE, &out, NULL),
                     TS_ERR_UNAVAILABLE);
    assert_int_equal(ts_registry_cell_get(reg, &e.cell, &out), TS_OK);
    assert_int_equal(out.epoch, 1);
    assert_int_equal(ts_registry_cell_cas(reg, &e.cell, 1, "w2", TS_CELL_ACTIVE, &out, NULL), TS_OK);
    assert_int_equal(out.epoch, 2);

    raw(c, "CLIENT KILL TYPE normal SKIPME yes");
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, 27, &cells, &n), TS_OK);
    assert_int_equal(n, 1);
    free(cells);
    redisFree(c);
    ts_registry_destroy(reg);
    ts_h_pass();
}

/* ---- harness itself --------------------------------------------------------- */

static void test_harness_spawn_and_wait(void **state)
{
    const char *args[] = {"-c", "echo started; exit 3", NULL};
    int idx = ts_h_spawn(&ts_h, "sh-exit", "/bin/sh", args);
    assert_int_equal(ts_h_wait(&ts_h, idx, 5000), 3);
    char *log = ts_h_read_log(&ts_h, idx);
    assert_non_null(log);
    assert_non_null(strstr(log, "started"));
    free(log);

    const char *env_args[] = {"-c", "echo \"$TESSERA_NATS_URL $TESSERA_REDIS_URL\"", NULL};
    idx = ts_h_spawn(&ts_h, "sh-env", "/bin/sh", env_args);
    assert_int_equal(ts_h_wait(&ts_h, idx, 5000), 0);
    log = ts_h_read_log(&ts_h, idx);
    char want[300];
    snprintf(want, sizeof want, "%s %s", ts_h.nats_url, ts_h.redis_url);
    assert_non_null(strstr(log, want));
    free(log);

    const char *sleep_args[] = {"-c", "exec sleep 30", NULL};
    idx = ts_h_spawn(&ts_h, "sh-sleep", "/bin/sh", sleep_args);
    assert_int_equal(ts_h_wait(&ts_h, idx, 100), -1);
    ts_h_signal(&ts_h, idx, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, idx, 5000), 128 + SIGTERM);

    /* the world is not there: waiting for it times out */
    assert_false(ts_h_wait_world(&ts_h, 26, 1, 200));
    ts_h_pass();
}

/* ---- fixtures ------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_core_pubsub_headers),
        TS_H_TEST(test_js_publish_sequence),
        TS_H_TEST(test_ordered_consumer_from_seq),
        TS_H_TEST(test_async_publish_acks),
        TS_H_TEST(test_last_msg_checkpoint),
        TS_H_TEST(test_sub_destroy_waits_for_callbacks),
        TS_H_TEST(test_bus_connect_errors),
        TS_H_TEST(test_registry_world),
        TS_H_TEST(test_registry_cell_create),
        TS_H_TEST(test_registry_cas),
        TS_H_TEST(test_registry_lock),
        TS_H_TEST(test_registry_worker_alive),
        TS_H_TEST(test_registry_worker_claim_refresh),
        TS_H_TEST(test_registry_cells_cas_batch),
        TS_H_TEST(test_registry_cells_create_batch),
        TS_H_TEST(test_registry_bad_data_and_urls),
        TS_H_TEST(test_registry_reconnects),
        TS_H_TEST(test_harness_spawn_and_wait),
    };
    return TS_H_RUN("it_bus_registry", tests, ts_h_group_setup, ts_h_group_teardown);
}
