/* The orchestrator doing many things at once, against real nats-server -js
 * and redis-server, with the workers played by this test (it keeps their
 * liveness keys and answers — or does not answer — their handover
 * requests), so every case is exact:
 *
 *  - a worker id whose instance token changes while it stays alive (another
 *    process took the id) has the cells it held recovered at a higher epoch;
 *  - the ~1,024 cells of a dead worker in a 64x64 world are re-homed with a
 *    couple of Redis round trips, well under a second of orchestrator time,
 *    and announced once each;
 *  - while two handovers hang on a silent worker, ctl stats answers at once
 *    (showing both in flight), a dead worker's cells are recovered, and the
 *    hanging handovers end with the cause in their replies;
 *  - a storm left all 256 cells of a world on one worker; a second one joins
 *    and the load is even within seconds, with the default cooldown: the
 *    rebalancer plans every move the imbalance needs and several handovers
 *    run at once (here the workers answer at once, so only the
 *    orchestrator's pace shows);
 *  - Redis stopped for longer than the liveness TTL declares nobody dead. */
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
#include <hiredis/hiredis.h>

#include "harness.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WAIT_MS 30000
/* Orchestrator time allowed for re-homing 1,024 cells: well under a second;
 * sanitizer builds (make test's second pass) run several times slower. */
#if defined(__SANITIZE_ADDRESS__)
#define REHOME_MAX_US 3000000
#else
#define REHOME_MAX_US 1000000
#endif
/* The fakes' liveness TTL: long, so a busy machine that starves their
 * refresher does not kill them; deaths and replacements are immediate
 * (DEL, SET). */
#define TTL_MS 5000

/* ---- fake workers: liveness keys refreshed by a thread ------------------------------- */

#define FAKES 8

static struct {
    pthread_mutex_t mu;
    pthread_t thread;
    bool stop, running;
    char id[FAKES][TS_WORKER_ID_MAX];
    char token[FAKES][TS_WORKER_TOKEN_MAX];
    bool on[FAKES];
    int n;
} FK = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void *refresher(void *arg)
{
    ts_registry_t *reg = NULL;
    if (ts_registry_connect(&reg, ts_h.redis_url) != TS_OK) return NULL;
    for (;;) {
        pthread_mutex_lock(&FK.mu);
        bool stop = FK.stop;
        int n = FK.n;
        char id[FAKES][TS_WORKER_ID_MAX], token[FAKES][TS_WORKER_TOKEN_MAX];
        bool on[FAKES];
        memcpy(id, FK.id, sizeof id);
        memcpy(token, FK.token, sizeof token);
        memcpy(on, FK.on, sizeof on);
        pthread_mutex_unlock(&FK.mu);
        if (stop) break;
        for (int i = 0; i < n; i++) {
            if (on[i]) ts_registry_worker_refresh(reg, id[i], token[i], TTL_MS, 100);
        }
        ts_sleep_ms(150);
    }
    ts_registry_destroy(reg);
    return NULL;
}

/* Claims each id with token "<id>-1" and keeps them alive. */
static void fakes_start(const char *const *ids, int n)
{
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    pthread_mutex_lock(&FK.mu);
    FK.n = n;
    FK.stop = false;
    for (int i = 0; i < n; i++) {
        snprintf(FK.id[i], sizeof FK.id[i], "%s", ids[i]);
        snprintf(FK.token[i], sizeof FK.token[i], "%.32s-1", ids[i]);
        FK.on[i] = true;
        assert_int_equal(ts_registry_worker_claim(reg, FK.id[i], FK.token[i], TTL_MS, 100), TS_OK);
    }
    pthread_mutex_unlock(&FK.mu);
    ts_registry_destroy(reg);
    assert_int_equal(pthread_create(&FK.thread, NULL, refresher, NULL), 0);
    FK.running = true;
}

/* Stops refreshing and forgets the fakes, so the next test does not see them. */
static void fakes_stop(void)
{
    if (!FK.running) return;
    pthread_mutex_lock(&FK.mu);
    FK.stop = true;
    pthread_mutex_unlock(&FK.mu);
    pthread_join(FK.thread, NULL);
    FK.running = false;
    ts_registry_t *r = NULL;
    if (ts_registry_connect(&r, ts_h.redis_url) == TS_OK) {
        for (int i = 0; i < FK.n; i++)
            ts_registry_worker_forget(r, FK.id[i]);
        ts_registry_destroy(r);
    }
}

static void raw(const char *fmt, ...)
{
    redisContext *c = redisConnect("127.0.0.1", ts_h.redis_port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    redisFree(c);
}

/* Fake i dies at once: no more refreshes, key deleted. */
static void fake_kill(int i)
{
    pthread_mutex_lock(&FK.mu);
    FK.on[i] = false;
    char key[128];
    snprintf(key, sizeof key, "ts:worker:%s:alive", FK.id[i]);
    pthread_mutex_unlock(&FK.mu);
    raw("DEL %s", key);
}

/* Another process takes fake i's id while it is alive: the key holds a new
 * token at once (no moment without one), and that process refreshes it. */
static void fake_replace(int i)
{
    char key[128], token[TS_WORKER_TOKEN_MAX];
    pthread_mutex_lock(&FK.mu);
    snprintf(token, sizeof token, "%.32s-2", FK.id[i]);
    memcpy(FK.token[i], token, sizeof token);
    snprintf(key, sizeof key, "ts:worker:%s:alive", FK.id[i]);
    pthread_mutex_unlock(&FK.mu);
    raw("SET %s %s PX %d", key, token, TTL_MS);
}

/* ---- bus observers --------------------------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    int changes;       /* RegistryChanges seen */
    int changes_epoch; /* of which at the epoch asked for in want_epoch */
    uint64_t want_epoch;
    int prepares; /* Handover PREPAREs seen by the silent worker */
    char replies[4][512];
    int nreplies;
} OB = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_change(void *ud, const ts_bus_msg_t *m)
{
    Tessera__V1__RegistryChange *rc =
        tessera__v1__registry_change__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (!rc) return;
    pthread_mutex_lock(&OB.mu);
    OB.changes++;
    OB.changes_epoch += rc->epoch == OB.want_epoch;
    pthread_mutex_unlock(&OB.mu);
    tessera__v1__registry_change__free_unpacked(rc, NULL);
}

/* A worker that never answers: it only counts what it is asked. */
static void on_silent(void *ud, const ts_bus_msg_t *m)
{
    Tessera__V1__Handover *h = tessera__v1__handover__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (!h) return;
    pthread_mutex_lock(&OB.mu);
    OB.prepares += h->phase == TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE;
    pthread_mutex_unlock(&OB.mu);
    tessera__v1__handover__free_unpacked(h, NULL);
}

static void on_reply(void *ud, const ts_bus_msg_t *m)
{
    if (ts_bus_msg_len(m) == 0) return;
    pthread_mutex_lock(&OB.mu);
    if (OB.nreplies < 4) {
        size_t n = ts_bus_msg_len(m) < 511 ? ts_bus_msg_len(m) : 511;
        memcpy(OB.replies[OB.nreplies], ts_bus_msg_data(m), n);
        OB.replies[OB.nreplies][n] = '\0';
        OB.nreplies++;
    }
    pthread_mutex_unlock(&OB.mu);
}

static int ob_get(const int *field)
{
    pthread_mutex_lock(&OB.mu);
    int v = *field;
    pthread_mutex_unlock(&OB.mu);
    return v;
}

static void ob_reset(uint64_t want_epoch)
{
    pthread_mutex_lock(&OB.mu);
    OB.changes = OB.changes_epoch = OB.prepares = OB.nreplies = 0;
    OB.want_epoch = want_epoch;
    pthread_mutex_unlock(&OB.mu);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static ts_bus_t *bus;
static ts_registry_t *reg;
static int orch_idx = -1; /* the running test's orchestrator, stopped by the teardown */
static ts_bus_sub_t *changes_sub;

static void connect_all(uint32_t world)
{
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_orch_async"), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    char subject[TS_SUBJECT_MAX];
    ts_subject_registry(subject, sizeof subject, world);
    assert_int_equal(ts_bus_subscribe(bus, subject, on_change, NULL, &changes_sub), TS_OK);
}

static void disconnect_all(void)
{
    fakes_stop();
    ts_bus_sub_destroy(changes_sub);
    changes_sub = NULL;
    ts_bus_destroy(bus);
    bus = NULL;
    ts_registry_destroy(reg);
    reg = NULL;
}

static int teardown(void **state)
{
    if (orch_idx >= 0 && !ts_h.procs[orch_idx].reaped) {
        ts_h_signal(&ts_h, orch_idx, SIGKILL);
        ts_h_wait(&ts_h, orch_idx, 5000);
    }
    orch_idx = -1;
    disconnect_all();
    return ts_h_test_teardown(state);
}

/* Cells a worker owns in the registry, and the lowest and highest epoch among them. */
static size_t owned(uint32_t world, const char *id, uint64_t *min_epoch, uint64_t *max_epoch)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0, k = 0;
    assert_int_equal(ts_registry_cells(reg, world, &cells, &n), TS_OK);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(cells[i].owner, id) != 0) continue;
        k++;
        lo = cells[i].epoch < lo ? cells[i].epoch : lo;
        hi = cells[i].epoch > hi ? cells[i].epoch : hi;
    }
    free(cells);
    if (min_epoch) *min_epoch = lo;
    if (max_epoch) *max_epoch = hi;
    return k;
}

/* A number field of the orchestrator's stats, or -1. */
static double stat(uint32_t world, const char *name)
{
    char subject[96], pattern[64];
    ts_subject_ctl(subject, sizeof subject, world, "stats");
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_bus_msg_t *m = NULL;
    if (ts_bus_request(bus, subject, &hdr, "", 0, 2000, &m) != TS_OK) return -1;
    char json[2048];
    size_t n = ts_bus_msg_len(m) < sizeof json - 1 ? ts_bus_msg_len(m) : sizeof json - 1;
    memcpy(json, ts_bus_msg_data(m), n);
    json[n] = '\0';
    ts_bus_msg_destroy(m);
    snprintf(pattern, sizeof pattern, "\"%s\":", name);
    const char *p = strstr(json, pattern);
    return p ? strtod(p + strlen(pattern), NULL) : -1;
}

/* The orchestrator polls liveness every 250 ms; three polls see every
 * fake (nothing it does shows that it has). */
static void let_it_see_the_fakes(void)
{
    ts_sleep_ms(800);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_replaced_incarnation_is_recovered(void **state)
{
    const char *ids[] = {"fa", "fb"};
    connect_all(11);
    fakes_start(ids, 2);
    const char *args[] = {"--world.id=11",    "--world.workers=fa,fb", "--world.width=4",
                          "--world.height=2", "--orch.rebalance=0",    NULL};
    int orch = orch_idx = ts_h_spawn(&ts_h, "orch-replaced", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 11, 8, WAIT_MS));
    let_it_see_the_fakes();
    uint64_t lo, hi;
    assert_int_equal(owned(11, "fa", &lo, &hi), 4);
    assert_int_equal(hi, 1);
    ob_reset(2);

    /* fa stays alive throughout, but another process is fa now */
    uint64_t t0 = ts_mono_us();
    fake_replace(0);
    while (ts_mono_us() - t0 < 5000000ULL && owned(11, "fa", NULL, NULL) > 0)
        ts_sleep_ms(50);
    double took_ms = (double)(ts_mono_us() - t0) / 1000;
    fprintf(stderr, "cells of the replaced incarnation recovered %.0f ms after the token changed\n", took_ms);
    if (owned(11, "fa", NULL, NULL) != 0) {
        ts_h.failed = true;
        fail_msg("fa's cells were not recovered 5 s after its instance token changed");
    }
    assert_int_equal(owned(11, "fb", &lo, &hi), 8);
    assert_int_equal(lo, 1); /* fb's own cells untouched */
    assert_int_equal(hi, 2); /* fa's at a higher epoch */
    assert_true(ts_h_wait_log(&ts_h, orch,
                              "worker fa was replaced by another process (instance fa-1 -> fa-2)", 1000));
    uint64_t deadline = ts_mono_us() + 2000000;
    while (ob_get(&OB.changes_epoch) < 4 && ts_mono_us() < deadline)
        ts_sleep_ms(20);
    assert_int_equal(ob_get(&OB.changes_epoch), 4);

    /* the new incarnation is an ordinary live worker: nothing else moves */
    ts_sleep_ms(800);
    assert_int_equal(owned(11, "fb", &lo, &hi), 8);
    assert_int_equal(hi, 2);
    assert_int_equal(ob_get(&OB.changes), 4);
    assert_true(stat(11, "recoveries") == 4);
    ts_h_signal(&ts_h, orch, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, orch, 8000), 0);
    ts_h_pass();
}

static void test_many_cells_recovered_in_few_round_trips(void **state)
{
    const char *ids[] = {"f1", "f2", "f3", "f4"};
    connect_all(12);
    fakes_start(ids, 4);
    const char *args[] = {"--world.id=12",      "--world.workers=f1,f2,f3,f4",
                          "--world.width=64",   "--world.height=64",
                          "--world.x0=-32",     "--world.y0=-32",
                          "--orch.rebalance=0", NULL};
    int orch = orch_idx = ts_h_spawn(&ts_h, "orch-many", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 12, 4096, WAIT_MS));
    let_it_see_the_fakes();
    assert_int_equal(owned(12, "f2", NULL, NULL), 1024);
    ob_reset(2);

    double reads_before = stat(12, "full_reads");
    assert_true(reads_before >= 1);
    uint64_t t0 = ts_mono_us();
    fake_kill(1);
    while (ts_mono_us() - t0 < 5000000ULL && owned(12, "f2", NULL, NULL) > 0)
        ts_sleep_ms(50);
    double took_ms = (double)(ts_mono_us() - t0) / 1000;
    size_t left = owned(12, "f2", NULL, NULL);
    /* the registry shows the moves before the orchestrator records the batch */
    uint64_t deadline = ts_mono_us() + 2000000;
    while (stat(12, "recovery_batch_cells") <= 0 && ts_mono_us() < deadline)
        ts_sleep_ms(20);
    double cells = stat(12, "recovery_batch_cells"), us = stat(12, "recovery_batch_us"),
           rts = stat(12, "recovery_round_trips");
    fprintf(stderr,
            "1024 cells of a dead worker re-homed %.0f ms after its key went: one batch of %.0f cells, "
            "%.1f ms of orchestrator time, %.0f registry round trips\n",
            took_ms, cells, us / 1000, rts);
    if (left != 0 || cells != 1024 || rts < 1 || rts > 3 || us <= 0 || us >= REHOME_MAX_US ||
        took_ms > 3000) {
        ts_h.failed = true;
        fail_msg(
            "%zu cells left on f2 after %.0f ms; batch %.0f cells in %.0f us with %.0f round trips (want "
            "1024 cells, < 1 s, <= 3 round trips, all moved within 3 s)",
            left, took_ms, cells, us, rts);
    }
    /* spread over the three live workers, each announced once at epoch 2 */
    size_t n1 = owned(12, "f1", NULL, NULL), n3 = owned(12, "f3", NULL, NULL),
           n4 = owned(12, "f4", NULL, NULL);
    assert_int_equal(n1 + n3 + n4, 4096);
    assert_true(n1 > 1024 && n3 > 1024 && n4 > 1024);
    deadline = ts_mono_us() + 3000000;
    while (ob_get(&OB.changes_epoch) < 1024 && ts_mono_us() < deadline)
        ts_sleep_ms(20);
    assert_int_equal(ob_get(&OB.changes_epoch), 1024);
    assert_int_equal(ob_get(&OB.changes), 1024);
    assert_true(stat(12, "full_reads") == reads_before); /* its own writes need no re-read */
    ts_h_signal(&ts_h, orch, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, orch, 8000), 0);
    ts_h_pass();
}

static void ask_handover(const char *payload, const char *inbox)
{
    char subject[96];
    ts_subject_ctl(subject, sizeof subject, 13, "handover");
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    assert_int_equal(ts_bus_publish_reply(bus, subject, inbox, &hdr, payload, strlen(payload)), TS_OK);
}

static void test_ctl_and_recovery_while_handovers_hang(void **state)
{
    const char *ids[] = {"ha", "hb", "hc"};
    connect_all(13);
    fakes_start(ids, 3);
    ts_bus_sub_t *silent = NULL, *replies = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "cell.13.*.*.*.*.handover", on_silent, NULL, &silent), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, "it_orch_async.replies", on_reply, NULL, &replies), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    const char *args[] = {"--world.id=13",
                          "--world.workers=ha,hb,hc",
                          "--world.width=6",
                          "--world.height=1",
                          "--world.x0=0",
                          "--world.y0=0",
                          "--orch.rebalance=0",
                          "--orch.handover_timeout_ms=4000",
                          "--orch.precopy_timeout_ms=4000",
                          NULL};
    int orch = orch_idx = ts_h_spawn(&ts_h, "orch-hang", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 13, 6, WAIT_MS));
    let_it_see_the_fakes();
    ts_cell_entry_t e;
    ts_cell_t c0 = {.world = 13, .cx = 0, .cy = 0}, c1 = {.world = 13, .cx = 1, .cy = 0};
    assert_int_equal(ts_registry_cell_get(reg, &c0, &e), TS_OK);
    assert_string_equal(e.owner, "ha");
    assert_int_equal(owned(13, "hc", NULL, NULL), 2);
    ob_reset(2);

    /* two handovers from ha, which never answers */
    uint64_t t0 = ts_mono_us();
    ask_handover("13.0.0.0.0 hb", "it_orch_async.replies");
    ask_handover("13.1.0.0.0 hb", "it_orch_async.replies");
    uint64_t deadline = t0 + 3000000;
    while (ob_get(&OB.prepares) < 2 && ts_mono_us() < deadline)
        ts_sleep_ms(10);
    assert_int_equal(ob_get(&OB.prepares), 2);

    /* ctl answers at once, and shows both in flight */
    uint64_t t_stats = ts_mono_us();
    double in_flight = stat(13, "in_flight");
    double stats_ms = (double)(ts_mono_us() - t_stats) / 1000;
    fprintf(stderr, "stats answered in %.1f ms with %.0f handovers in flight\n", stats_ms, in_flight);
    assert_true(in_flight == 2);
    assert_true(stats_ms < 2000); /* not behind the 4 s the handovers hang (loose: the box may be busy) */

    /* a worker dies meanwhile: its cells are recovered without waiting */
    uint64_t t_kill = ts_mono_us();
    fake_kill(2);
    while (ts_mono_us() - t_kill < 3000000ULL && owned(13, "hc", NULL, NULL) > 0)
        ts_sleep_ms(20);
    double rec_ms = (double)(ts_mono_us() - t_kill) / 1000;
    fprintf(stderr, "dead worker's cells recovered %.0f ms after its key went, handovers still in flight\n",
            rec_ms);
    assert_int_equal(owned(13, "hc", NULL, NULL), 0);
    assert_true(stat(13, "in_flight") == 2);
    assert_int_equal(ob_get(&OB.nreplies), 0);

    /* the hanging handovers time out (PREPARE, then the ABORTs nobody
     * answers either: 2 x 4 s), abort, and say why */
    deadline = t0 + 30000000;
    while (ob_get(&OB.nreplies) < 2 && ts_mono_us() < deadline)
        ts_sleep_ms(20);
    assert_int_equal(ob_get(&OB.nreplies), 2);
    pthread_mutex_lock(&OB.mu);
    for (int i = 0; i < 2; i++) {
        if (strncmp(OB.replies[i], "error: PREPARE to ha: no answer; aborted, ha keeps 13.", 53) != 0) {
            ts_h.failed = true;
            pthread_mutex_unlock(&OB.mu);
            fail_msg("reply %d: \"%s\"", i, OB.replies[i]);
        }
    }
    pthread_mutex_unlock(&OB.mu);
    assert_int_equal(ts_registry_cell_get(reg, &c0, &e), TS_OK);
    assert_string_equal(e.owner, "ha");
    assert_int_equal(e.epoch, 1);
    assert_int_equal(ts_registry_cell_get(reg, &c1, &e), TS_OK);
    assert_int_equal(e.epoch, 1);
    assert_true(stat(13, "in_flight") == 0);
    assert_true(stat(13, "aborted") == 2);
    assert_true(stat(13, "failed") == 2); /* their ABORTs went unanswered */
    ts_bus_sub_destroy(silent);
    ts_bus_sub_destroy(replies);
    ts_h_signal(&ts_h, orch, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, orch, 8000), 0);
    ts_h_pass();
}

/* ---- fake workers that answer handovers and send heartbeats ----------------------------- */

static struct {
    pthread_mutex_t mu;
    uint32_t world;
    int answered;
    uint64_t inputs; /* grows, so every cell's input rate is measured */
} FW = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Answers every Handover request at once with an ok ACK. */
static void on_handover_answer(void *ud, const ts_bus_msg_t *m)
{
    Tessera__V1__Handover *h = tessera__v1__handover__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (!h) return;
    if (h->phase != TESSERA__V1__HANDOVER_PHASE__HANDOVER_ACK && ts_bus_msg_reply(m) &&
        *ts_bus_msg_reply(m)) {
        Tessera__V1__Handover a = TESSERA__V1__HANDOVER__INIT;
        a.id = h->id;
        a.phase = TESSERA__V1__HANDOVER_PHASE__HANDOVER_ACK;
        a.ok = true;
        a.seq = 1;
        a.freeze_us = ts_now_us();
        a.resume_us = ts_now_us();
        uint8_t buf[512];
        size_t len = tessera__v1__handover__get_packed_size(&a);
        if (len <= sizeof buf) {
            tessera__v1__handover__pack(&a, buf);
            ts_bus_hdr_t hdr = {.type = "tessera.v1.Handover"};
            ts_bus_respond(bus, m, &hdr, buf, len);
            pthread_mutex_lock(&FW.mu);
            FW.answered++;
            pthread_mutex_unlock(&FW.mu);
        }
    }
    tessera__v1__handover__free_unpacked(h, NULL);
}

/* One heartbeat per fake worker, listing the cells the registry gives it
 * (10 entities each, inputs growing). */
static void send_heartbeats(const char *const *ids, int n)
{
    ts_cell_entry_t *cells = NULL;
    size_t nc = 0;
    if (ts_registry_cells(reg, FW.world, &cells, &nc) != TS_OK) return;
    pthread_mutex_lock(&FW.mu);
    FW.inputs += 10;
    uint64_t inputs = FW.inputs;
    pthread_mutex_unlock(&FW.mu);
    Tessera__V1__CellLoad *loads = calloc(nc + 1, sizeof *loads);
    Tessera__V1__CellLoad **ptrs = calloc(nc + 1, sizeof *ptrs);
    Tessera__V1__CellId *ids_pb = calloc(nc + 1, sizeof *ids_pb);
    assert_true(loads && ptrs && ids_pb);
    for (int w = 0; w < n; w++) {
        size_t k = 0;
        for (size_t i = 0; i < nc; i++) {
            if (strcmp(cells[i].owner, ids[w]) != 0) continue;
            Tessera__V1__CellLoad l = TESSERA__V1__CELL_LOAD__INIT;
            ts_proto_cell_init(&ids_pb[k], &cells[i].cell);
            l.cell = &ids_pb[k];
            l.epoch = cells[i].epoch;
            l.entities = 10;
            l.inputs_applied = inputs;
            loads[k] = l;
            ptrs[k] = &loads[k];
            k++;
        }
        Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
        hb.worker = (char *)ids[w];
        hb.cells = ptrs;
        hb.n_cells = k;
        hb.entities = (uint32_t)(10 * k);
        hb.tick_p99_ms = 1;
        hb.capacity = 100;
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(ts_proto_pack(&hb.base, &buf, &len), TS_OK);
        char subject[TS_SUBJECT_MAX];
        ts_subject_heartbeat(subject, sizeof subject, ids[w]);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_HEARTBEAT};
        ts_bus_publish(bus, subject, &hdr, buf, len);
        free(buf);
    }
    free(loads);
    free(ptrs);
    free(ids_pb);
    free(cells);
}

static void heartbeats_for(const char *const *ids, int n, int64_t ms)
{
    uint64_t until = ts_mono_us() + (uint64_t)ms * 1000;
    while (ts_mono_us() < until) {
        send_heartbeats(ids, n);
        ts_sleep_ms(200);
    }
}

static void test_storm_is_evened_out_in_seconds(void **state)
{
    const char *ids[] = {"sa", "sb"};
    connect_all(14);
    FW.world = 14;
    ts_bus_sub_t *answers = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "cell.14.*.*.*.*.handover", on_handover_answer, NULL, &answers),
                     TS_OK);
    fakes_start(ids, 1); /* sa only */
    const char *args[] = {"--world.id=14",
                          "--world.workers=sa",
                          "--world.width=16",
                          "--world.height=16",
                          "--world.x0=0",
                          "--world.y0=0",
                          "--orch.rebalance_interval_ms=500",
                          NULL};
    int orch = orch_idx = ts_h_spawn(&ts_h, "orch-storm", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 14, 256, WAIT_MS));
    heartbeats_for(ids, 1, 1500); /* rates measured; one worker: nothing to balance */
    assert_int_equal(owned(14, "sa", NULL, NULL), 256);

    /* sb joins */
    ts_registry_t *r = NULL;
    assert_int_equal(ts_registry_connect(&r, ts_h.redis_url), TS_OK);
    pthread_mutex_lock(&FK.mu);
    snprintf(FK.id[1], sizeof FK.id[1], "sb");
    snprintf(FK.token[1], sizeof FK.token[1], "sb-1");
    assert_int_equal(ts_registry_worker_claim(r, "sb", "sb-1", TTL_MS, 100), TS_OK);
    FK.on[1] = true;
    FK.n = 2;
    pthread_mutex_unlock(&FK.mu);
    ts_registry_destroy(r);
    uint64_t t_join = ts_mono_us();
    size_t on_b = 0;
    while (ts_mono_us() - t_join < 20000000ULL) {
        send_heartbeats(ids, 2);
        on_b = owned(14, "sb", NULL, NULL);
        if (on_b >= 100 && stat(14, "in_flight") == 0 && stat(14, "queued") == 0) break;
        ts_sleep_ms(200);
    }
    double even_s = (double)(ts_mono_us() - t_join) / 1e6;
    double moves = stat(14, "rebalance_moves"), peak = stat(14, "in_flight_max");
    fprintf(stderr,
            "storm: sb owns %zu of 256 cells %.1f s after it joined (%.0f rebalancing handovers, up to %.0f "
            "at once)\n",
            on_b, even_s, moves, peak);
    if (on_b < 100 || on_b > 156 || even_s > 10 || peak < 2) {
        ts_h.failed = true;
        fail_msg(
            "%.1f s after sb joined it owns %zu cells with %.0f handovers at most in flight (want 100..156 "
            "within 10 s, several at once)",
            even_s, on_b, peak);
    }
    assert_true(stat(14, "aborted") == 0);

    /* and then it stays still */
    double before = stat(14, "handovers");
    heartbeats_for(ids, 2, 3000);
    assert_true(stat(14, "handovers") == before);
    ts_bus_sub_destroy(answers);
    ts_h_signal(&ts_h, orch, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, orch, 8000), 0);
    ts_h_pass();
}

/* Redis stops for longer than the liveness TTL: every key expires by
 * Redis's clock, but the workers were never dead — nobody is recovered.
 * Afterwards a real death is still noticed. */
static void test_redis_stall_declares_nobody_dead(void **state)
{
    const char *ids[] = {"ra", "rb"};
    connect_all(15);
    fakes_start(ids, 2);
    /* a long lock TTL keeps the orchestrator leading through the stall, so
     * its first poll afterwards can race the workers' first refreshes */
    const char *args[] = {"--world.id=15",
                          "--world.workers=ra,rb",
                          "--world.width=4",
                          "--world.height=1",
                          "--orch.rebalance=0",
                          "--orch.lock_ttl_ms=20000",
                          NULL};
    int orch = orch_idx = ts_h_spawn(&ts_h, "orch-stall", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 15, 4, WAIT_MS));
    let_it_see_the_fakes();
    ob_reset(2);

    ts_h_signal(&ts_h, TS_H_REDIS, SIGSTOP);
    ts_sleep_ms(TTL_MS + 1000); /* every key expires */
    ts_h_signal(&ts_h, TS_H_REDIS, SIGCONT);
    ts_sleep_ms(3000); /* a TTL of polls and more: time to (wrongly) recover */
    uint64_t lo, hi;
    assert_int_equal(owned(15, "ra", &lo, &hi), 2);
    assert_int_equal(hi, 1);
    assert_int_equal(owned(15, "rb", &lo, &hi), 2);
    assert_int_equal(hi, 1);
    assert_int_equal(ob_get(&OB.changes), 0);

    /* a real death after the stall */
    uint64_t t0 = ts_mono_us();
    fake_kill(0);
    while (ts_mono_us() - t0 < 5000000ULL && owned(15, "ra", NULL, NULL) > 0)
        ts_sleep_ms(50);
    assert_int_equal(owned(15, "ra", NULL, NULL), 0);
    assert_int_equal(owned(15, "rb", &lo, &hi), 4);
    assert_int_equal(hi, 2);
    ts_h_signal(&ts_h, orch, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, orch, 8000), 0);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replaced_incarnation_is_recovered, ts_h_test_setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_cells_recovered_in_few_round_trips, ts_h_test_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ctl_and_recovery_while_handovers_hang, ts_h_test_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_storm_is_evened_out_in_seconds, ts_h_test_setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_stall_declares_nobody_dead, ts_h_test_setup, teardown),
    };
    return TS_H_RUN("it_orch_async", tests, ts_h_group_setup, ts_h_group_teardown);
}
