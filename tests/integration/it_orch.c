/* tessera-orch against real nats-server -js and redis-server: the default
 * world appears in the registry split by columns at epoch 1 and every cell
 * is announced once; a restart keeps epochs; one orchestrator leads while
 * another stands by and takes over when the first stops; a bad layout is
 * refused with a clear message; worker heartbeats are tracked; and
 * tessera-ctl shows what the registry holds. */
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
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define MAX_CHANGES 64
#define WAIT_MS 15000

/* RegistryChanges seen on tessera.registry.<world>. */
typedef struct {
    pthread_mutex_t mu;
    int n;
    bool bad; /* a message that did not decode or had the wrong Ts-Type */
    Tessera__V1__RegistryChange *changes[MAX_CHANGES];
} changes_t;

static void on_change(void *ud, const ts_bus_msg_t *m)
{
    changes_t *c = ud;
    const char *type = ts_bus_msg_header(m, TS_HDR_TYPE);
    Tessera__V1__RegistryChange *rc =
        tessera__v1__registry_change__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    pthread_mutex_lock(&c->mu);
    if (!rc || !type || strcmp(type, TS_TYPE_REGISTRY_CHANGE) != 0 ||
        (rc && ts_bus_msg_header_u64(m, TS_HDR_EPOCH) != rc->epoch))
        c->bad = true;
    if (rc && c->n < MAX_CHANGES)
        c->changes[c->n++] = rc;
    else if (rc)
        tessera__v1__registry_change__free_unpacked(rc, NULL);
    pthread_mutex_unlock(&c->mu);
}

static int changes_count(changes_t *c)
{
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static void changes_free(changes_t *c)
{
    for (int i = 0; i < c->n; i++)
        tessera__v1__registry_change__free_unpacked(c->changes[i], NULL);
    pthread_mutex_destroy(&c->mu);
}

static void assert_log(int idx, const char *needle, int64_t timeout_ms)
{
    if (!ts_h_wait_log(&ts_h, idx, needle, timeout_ms)) {
        ts_h.failed = true;
        fail_msg("log of %s never showed \"%s\"", ts_h.procs[idx].name, needle);
    }
}

static void stop_ok(int idx)
{
    ts_h_signal(&ts_h, idx, SIGTERM);
    int rc = ts_h_wait(&ts_h, idx, 8000);
    if (rc != 0) {
        ts_h.failed = true;
        fail_msg("%s exited with %d after SIGTERM, want 0", ts_h.procs[idx].name, rc);
    }
}

static ts_registry_t *registry(void)
{
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    return reg;
}

static void test_default_world_written_and_announced(void **state)
{
    ts_registry_t *reg = registry();
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_orch"), TS_OK);
    changes_t ch = {.n = 0};
    pthread_mutex_init(&ch.mu, NULL);
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "tessera.registry.0", on_change, &ch, &sub), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);

    const char *args[] = {"--orch.hb_ttl_ms=900", NULL};
    int orch = ts_h_spawn(&ts_h, "orch-default", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 0, 16, WAIT_MS));

    ts_world_t w;
    assert_int_equal(ts_registry_world_get(reg, 0, &w), TS_OK);
    assert_true(w.cell_size == 100);
    assert_int_equal(w.x0, -2);
    assert_int_equal(w.y0, -2);
    assert_int_equal(w.width, 4);
    assert_int_equal(w.height, 4);

    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, 0, &cells, &n), TS_OK);
    assert_int_equal(n, 16);
    bool seen[4][4] = {{false}};
    for (size_t i = 0; i < n; i++) {
        const ts_cell_entry_t *e = &cells[i];
        assert_true(e->cell.cx >= -2 && e->cell.cx <= 1 && e->cell.cy >= -2 && e->cell.cy <= 1);
        assert_int_equal(e->cell.depth, 0);
        assert_false(seen[e->cell.cx + 2][e->cell.cy + 2]);
        seen[e->cell.cx + 2][e->cell.cy + 2] = true;
        assert_string_equal(e->owner, e->cell.cx < 0 ? "w1" : "w2");
        assert_int_equal(e->epoch, 1);
        assert_int_equal(e->state, TS_CELL_ACTIVE);
    }
    free(cells);

    /* one RegistryChange per created cell, with the version of its creation */
    uint64_t deadline = ts_mono_us() + 5000000;
    while (changes_count(&ch) < 16 && ts_mono_us() < deadline)
        ts_sleep_ms(20);
    ts_sleep_ms(200);
    uint64_t version = 0;
    assert_int_equal(ts_registry_version(reg, 0, &version), TS_OK);
    pthread_mutex_lock(&ch.mu);
    assert_false(ch.bad);
    assert_int_equal(ch.n, 16);
    bool announced[4][4] = {{false}};
    uint64_t max_version = 0;
    for (int i = 0; i < ch.n; i++) {
        const Tessera__V1__RegistryChange *rc = ch.changes[i];
        ts_cell_t c;
        assert_int_equal(ts_proto_cell_get(rc->cell, &c), TS_OK);
        assert_int_equal(rc->world, 0);
        assert_true(c.cx >= -2 && c.cx <= 1 && c.cy >= -2 && c.cy <= 1);
        assert_false(announced[c.cx + 2][c.cy + 2]);
        announced[c.cx + 2][c.cy + 2] = true;
        assert_string_equal(rc->owner, c.cx < 0 ? "w1" : "w2");
        assert_int_equal(rc->epoch, 1);
        assert_int_equal(rc->state, TESSERA__V1__CELL_STATE__CELL_ACTIVE);
        assert_true(rc->version > 0 && rc->version <= version);
        if (rc->version > max_version) max_version = rc->version;
    }
    assert_int_equal(max_version, version);
    pthread_mutex_unlock(&ch.mu);

    /* the streams exist: an input publish is stored */
    uint64_t seq = 0;
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH};
    assert_int_equal(ts_bus_js_publish(bus, "cell.0.0.0.0.0.input.w", &hdr, "", 0, 3000, &seq), TS_OK);
    assert_true(seq > 0);

    /* it holds the leader lock, and releases it on SIGTERM */
    bool held = true;
    assert_int_equal(ts_registry_lock(reg, "orch.0", "it-intruder", 5000, &held), TS_OK);
    assert_false(held);
    assert_log(orch, "leader of world 0", 1000);
    stop_ok(orch);
    assert_int_equal(ts_registry_lock(reg, "orch.0", "it-intruder", 5000, &held), TS_OK);
    assert_true(held);
    assert_int_equal(ts_registry_unlock(reg, "orch.0", "it-intruder"), TS_OK);

    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    changes_free(&ch);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_restart_keeps_epochs(void **state)
{
    ts_registry_t *reg = registry();
    const char *args[] = {"--world.id=3", "--world.workers=a,b,c", "--world.width=3", "--world.height=2",
                          NULL};
    int first = ts_h_spawn(&ts_h, "orch-restart-1", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 3, 6, WAIT_MS));
    ts_cell_t moved = {.world = 3, .cx = 0, .cy = -1};
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, &moved, &e), TS_OK);
    assert_string_equal(e.owner, "c");
    assert_int_equal(e.epoch, 1);
    assert_int_equal(ts_registry_cell_cas(reg, &moved, 1, "a", TS_CELL_ACTIVE, &e, NULL), TS_OK);
    assert_int_equal(e.epoch, 2);
    stop_ok(first);

    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_orch"), TS_OK);
    changes_t ch = {.n = 0};
    pthread_mutex_init(&ch.mu, NULL);
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "tessera.registry.3", on_change, &ch, &sub), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);

    int second = ts_h_spawn(&ts_h, "orch-restart-2", "tessera-orch", args);
    assert_log(second, "(0 created, 6 kept)", WAIT_MS);
    assert_int_equal(ts_registry_cell_get(reg, &moved, &e), TS_OK);
    assert_int_equal(e.epoch, 2);
    assert_string_equal(e.owner, "a");
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, 3, &cells, &n), TS_OK);
    assert_int_equal(n, 6);
    for (size_t i = 0; i < n; i++) {
        if (!ts_cell_eq(&cells[i].cell, &moved)) assert_int_equal(cells[i].epoch, 1);
    }
    free(cells);
    ts_sleep_ms(300);
    assert_int_equal(changes_count(&ch), 0); /* nothing was created, nothing announced */
    stop_ok(second);

    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    changes_free(&ch);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void test_standby_takes_over(void **state)
{
    const char *args[] = {"--world.id=4", "--orch.hb_ttl_ms=600", NULL};
    int a = ts_h_spawn(&ts_h, "orch-leader", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 4, 16, WAIT_MS));
    assert_log(a, "leader of world 4", 2000);
    int b = ts_h_spawn(&ts_h, "orch-standby", "tessera-orch", args);
    assert_log(b, "standby: lock orch.4 is held by another orchestrator", WAIT_MS);
    ts_sleep_ms(1000); /* several renewals: a keeps the lock, b stays standby */
    char *log = ts_h_read_log(&ts_h, b);
    assert_non_null(log);
    assert_null(strstr(log, "leader of world"));
    free(log);
    stop_ok(a);
    assert_log(b, "leader of world 4", 3000);
    assert_log(b, "(0 created, 16 kept)", 3000);
    stop_ok(b);
    ts_h_pass();
}

static void test_bad_layout_exits_with_message(void **state)
{
    struct {
        const char *flag, *message;
    } cases[] = {
        {"--world.width=0", "world.width"},
        {"--world.width=2000", "world.width: must be 1..1024"},
        {"--world.assign=5:5=w1", "world.assign: cell 5:5 is outside the world"},
        {"--world.assign=0:0=w9", "worker 'w9'"},
        {"--world.workers=w1,w1", "listed twice"},
        {"--world.workers=", "at least one worker"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[] = {"--world.id=9", cases[i].flag, NULL};
        char name[32];
        snprintf(name, sizeof name, "orch-bad-%zu", i);
        int idx = ts_h_spawn(&ts_h, name, "tessera-orch", args);
        int rc = ts_h_wait(&ts_h, idx, 8000);
        if (rc != 1) {
            ts_h.failed = true;
            fail_msg("%s: exit status %d, want 1", cases[i].flag, rc);
        }
        assert_log(idx, cases[i].message, 100);
    }
    ts_registry_t *reg = registry();
    ts_world_t w;
    assert_int_equal(ts_registry_world_get(reg, 9, &w), TS_ERR_NOT_FOUND);
    ts_registry_destroy(reg);
    ts_h_pass();
}

static void publish_heartbeat(ts_bus_t *bus, const char *worker)
{
    Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
    hb.worker = (char *)worker;
    hb.capacity = 77;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_proto_pack(&hb.base, &buf, &len), TS_OK);
    char subject[TS_SUBJECT_MAX];
    ts_subject_heartbeat(subject, sizeof subject, worker);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HEARTBEAT};
    assert_int_equal(ts_bus_publish(bus, subject, &hdr, buf, len), TS_OK);
    free(buf);
}

static void test_heartbeats_tracked(void **state)
{
    const char *args[] = {"--world.id=5", "--orch.hb_ttl_ms=500", NULL};
    int orch = ts_h_spawn(&ts_h, "orch-hb", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 5, 16, WAIT_MS));
    assert_log(orch, "leader of world 5", 2000);
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_orch"), TS_OK);
    for (int i = 0; i < 4; i++) {
        publish_heartbeat(bus, "hb-worker");
        ts_bus_flush(bus, 1000);
        ts_sleep_ms(100);
    }
    /* garbage on a heartbeat subject is ignored, not fatal */
    ts_bus_hdr_t hdr = {.type = TS_TYPE_HEARTBEAT};
    assert_int_equal(ts_bus_publish(bus, "tessera.worker.junk.hb", &hdr, "\xff\xff\xff", 3), TS_OK);
    assert_log(orch, "worker hb-worker appeared", 3000);
    assert_log(orch, "capacity 77", 100);
    assert_log(orch, "ignoring malformed heartbeat on tessera.worker.junk.hb", 3000);
    char *log = ts_h_read_log(&ts_h, orch);
    assert_null(strstr(log, "hb-worker is dead"));
    free(log);
    assert_log(orch, "worker hb-worker is dead", 3000);
    publish_heartbeat(bus, "hb-worker");
    ts_bus_flush(bus, 1000);
    assert_log(orch, "worker hb-worker is back", 3000);
    stop_ok(orch);
    ts_bus_destroy(bus);
    ts_h_pass();
}

static void test_ctl_cells_and_usage(void **state)
{
    const char *args[] = {"--world.id=6", "--world.width=2", "--world.height=1", NULL};
    int orch = ts_h_spawn(&ts_h, "orch-ctl", "tessera-orch", args);
    assert_true(ts_h_wait_world(&ts_h, 6, 2, WAIT_MS));
    const char *cells_args[] = {"--world.id=6", "cells", NULL};
    int ctl = ts_h_spawn(&ts_h, "ctl-cells", "tessera-ctl", cells_args);
    assert_int_equal(ts_h_wait(&ts_h, ctl, 10000), 0);
    char *out = ts_h_read_log(&ts_h, ctl);
    assert_non_null(out);
    if (!strstr(out, "6.-2.-2.0.0") || !strstr(out, "6.-1.-2.0.0") || !strstr(out, "world 6: 2 cells")) {
        ts_h.failed = true;
        fail_msg("unexpected `tessera-ctl cells` output:\n%s", out);
    }
    const char *line = strstr(out, "6.-2.-2.0.0");
    char owner[16] = "", st[16] = "";
    unsigned long long epoch = 0;
    assert_int_equal(sscanf(line, "6.-2.-2.0.0 %15s %llu %15s", owner, &epoch, st), 3);
    assert_string_equal(owner, "w1");
    assert_int_equal(epoch, 1);
    assert_string_equal(st, "active");
    free(out);

    const char *bogus[] = {"frobnicate", NULL};
    ctl = ts_h_spawn(&ts_h, "ctl-bogus", "tessera-ctl", bogus);
    assert_int_equal(ts_h_wait(&ts_h, ctl, 5000), 2);
    assert_log(ctl, "unknown command 'frobnicate'", 100);
    const char *missing[] = {"--world.id=77", "cells", NULL};
    ctl = ts_h_spawn(&ts_h, "ctl-missing", "tessera-ctl", missing);
    assert_int_equal(ts_h_wait(&ts_h, ctl, 10000), 1);
    assert_log(ctl, "world 77 is not in the registry", 100);
    stop_ok(orch);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_default_world_written_and_announced),
        TS_H_TEST(test_restart_keeps_epochs),
        TS_H_TEST(test_standby_takes_over),
        TS_H_TEST(test_bad_layout_exits_with_message),
        TS_H_TEST(test_heartbeats_tracked),
        TS_H_TEST(test_ctl_cells_and_usage),
    };
    return TS_H_RUN("it_orch", tests, ts_h_group_setup, ts_h_group_teardown);
}
