/* Orchestrator high availability against real nats-server -js, redis-server
 * and two workers: of two tessera-orch processes exactly one leads (only it
 * answers tessera.ctl.<world>.stats); SIGKILL of the leader hands the lead to
 * the standby within the lock TTL + 1 s, and a live handover through the
 * ctl API works again; a leader whose lock was taken stops serving at once;
 * throughout, no RegistryChange and no registry epoch ever goes backwards and
 * every cell has exactly one owner — in the registry and in the workers'
 * heartbeats. */
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
#include "probe.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define WAIT_MS 20000
#define LOCK_TTL_MS 2000
#define CTL_TIMEOUT_MS 10000

/* ---- bus observers: RegistryChanges and heartbeats -------------------------------- */

typedef struct {
    ts_cell_t cell;
    uint64_t epoch;
} cell_epoch_t;

static struct {
    pthread_mutex_t mu;
    cell_epoch_t last[NCELLS * 2]; /* newest announced epoch per cell */
    size_t nlast;
    int backwards; /* RegistryChanges whose epoch was not above the previous one for the cell */
    char backwards_what[160];
    char replies[8][512]; /* answers collected on a private inbox */
    int nreplies;
} OBS = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_change(void *ud, const ts_bus_msg_t *m)
{
    Tessera__V1__RegistryChange *rc =
        tessera__v1__registry_change__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    ts_cell_t c;
    if (!rc || ts_proto_cell_get(rc->cell, &c) != TS_OK) {
        if (rc) tessera__v1__registry_change__free_unpacked(rc, NULL);
        return;
    }
    pthread_mutex_lock(&OBS.mu);
    size_t i = 0;
    while (i < OBS.nlast && !ts_cell_eq(&OBS.last[i].cell, &c))
        i++;
    if (i == OBS.nlast && OBS.nlast < NCELLS * 2) OBS.last[OBS.nlast++] = (cell_epoch_t){c, 0};
    if (i < OBS.nlast) {
        if (rc->epoch <= OBS.last[i].epoch && OBS.backwards++ == 0)
            snprintf(OBS.backwards_what, sizeof OBS.backwards_what,
                     "cell %d,%d: epoch %" PRIu64 " after %" PRIu64, c.cx, c.cy, rc->epoch,
                     OBS.last[i].epoch);
        if (rc->epoch > OBS.last[i].epoch) OBS.last[i].epoch = rc->epoch;
    }
    pthread_mutex_unlock(&OBS.mu);
    tessera__v1__registry_change__free_unpacked(rc, NULL);
}

static void on_reply(void *ud, const ts_bus_msg_t *m)
{
    if (ts_bus_msg_len(m) == 0) return; /* the server's "no responders" notice, not an answer */
    pthread_mutex_lock(&OBS.mu);
    if (OBS.nreplies < 8) {
        size_t n = ts_bus_msg_len(m) < 511 ? ts_bus_msg_len(m) : 511;
        memcpy(OBS.replies[OBS.nreplies], ts_bus_msg_data(m), n);
        OBS.replies[OBS.nreplies][n] = '\0';
    }
    OBS.nreplies++;
    pthread_mutex_unlock(&OBS.mu);
}

/* ---- helpers ------------------------------------------------------------------------- */

static ts_status_t ctl(ts_bus_t *bus, const char *verb, const char *payload, int64_t timeout_ms, char *out,
                       size_t cap)
{
    return ts_probe_ctl(bus, WORLD, verb, payload, timeout_ms, out, cap);
}

/* The pid in the stats' "leader":"<host>-<pid>", or -1. */
static long stats_leader_pid(const char *json)
{
    const char *p = strstr(json, "\"leader\":\"");
    if (!p) return -1;
    p += strlen("\"leader\":\"");
    const char *end = strchr(p, '"');
    if (!end) return -1;
    /* "<host>-<pid>-<random>": the pid is the next-to-last part */
    const char *dash = end;
    for (int k = 0; k < 2; k++) {
        if (k) dash--;
        while (dash > p && dash[-1] != '-')
            dash--;
    }
    return dash > p ? strtol(dash, NULL, 10) : -1;
}

/* Sends one stats request to a private inbox and counts the answers that
 * arrive within wait_ms: a standby must not answer. */
static int stats_answers(ts_bus_t *bus, int64_t wait_ms, char *first, size_t cap)
{
    static int n_inbox;
    char inbox[64], subject[64];
    snprintf(inbox, sizeof inbox, "it_orch_ha.inbox.%d", ++n_inbox);
    ts_subject_ctl(subject, sizeof subject, WORLD, "stats");
    pthread_mutex_lock(&OBS.mu);
    OBS.nreplies = 0;
    pthread_mutex_unlock(&OBS.mu);
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_subscribe(bus, inbox, on_reply, NULL, &sub), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    assert_int_equal(ts_bus_publish_reply(bus, subject, inbox, &hdr, "", 0), TS_OK);
    ts_sleep_ms(wait_ms);
    ts_bus_sub_destroy(sub);
    pthread_mutex_lock(&OBS.mu);
    int n = OBS.nreplies;
    snprintf(first, cap, "%s", n > 0 ? OBS.replies[0] : "");
    pthread_mutex_unlock(&OBS.mu);
    return n;
}

static cell_epoch_t *registry_snapshot(ts_registry_t *reg, size_t *n)
{
    ts_cell_entry_t *cells = NULL;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, n), TS_OK);
    cell_epoch_t *out = calloc(*n + 1, sizeof *out);
    assert_non_null(out);
    for (size_t i = 0; i < *n; i++) {
        out[i] = (cell_epoch_t){cells[i].cell, cells[i].epoch};
        if (strcmp(cells[i].owner, "w1") != 0 && strcmp(cells[i].owner, "w2") != 0) {
            ts_h.failed = true;
            fail_msg("cell %d,%d has owner '%s'", cells[i].cell.cx, cells[i].cell.cy, cells[i].owner);
        }
    }
    free(cells);
    return out;
}

static const char *const WORKERS[] = {"w1", "w2"};

/* Every cell in the registry is listed by exactly the heartbeat of its owner. */
static void assert_one_owner_each(ts_probe_t *probe, ts_registry_t *reg)
{
    ts_sleep_ms(1200); /* fresh heartbeats after the last change */
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
    assert_int_equal(n, NCELLS);
    ts_probe_hb_t hb[2];
    bool seen[2];
    for (size_t w = 0; w < 2; w++)
        seen[w] = ts_probe_heartbeat(probe, WORKERS[w], &hb[w]);
    for (size_t i = 0; i < n; i++) {
        int listed = 0;
        const char *by = "";
        for (size_t w = 0; w < 2; w++) {
            if (seen[w] && ts_probe_hb_has(&hb[w], &cells[i].cell)) {
                listed++;
                by = WORKERS[w];
            }
        }
        if (listed != 1 || strcmp(by, cells[i].owner) != 0) {
            ts_h.failed = true;
            fail_msg("cell %d,%d: registry owner %s, listed by %d worker heartbeats (last: %s)",
                     cells[i].cell.cx, cells[i].cell.cy, cells[i].owner, listed, by);
        }
    }
    free(cells);
}

static bool workers_bound(ts_probe_t *probe, int per_worker)
{
    int ok = 0;
    for (size_t w = 0; w < 2; w++) {
        ts_probe_hb_t hb;
        ok += ts_probe_heartbeat(probe, WORKERS[w], &hb) && (int)hb.ncells == per_worker;
    }
    return ok == 2;
}

static bool parse_ok(const char *reply, uint64_t *from_epoch, uint64_t *to_epoch)
{
    char from[64], to[64];
    unsigned long long fe, te, fz, tot;
    if (sscanf(reply, "ok %63[^-]->%63s epoch %llu->%llu freeze_us=%llu total_us=%llu", from, to, &fe, &te,
               &fz, &tot) != 6)
        return false;
    *from_epoch = fe;
    *to_epoch = te;
    return true;
}

static void handover_ok(ts_bus_t *bus, ts_registry_t *reg, const ts_cell_t *cell)
{
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, cell, &e), TS_OK);
    char key[TS_CELL_STR_MAX], payload[128], reply[512];
    ts_cell_format(cell, key, sizeof key);
    snprintf(payload, sizeof payload, "%s %s", key, strcmp(e.owner, "w1") == 0 ? "w2" : "w1");
    assert_int_equal(ctl(bus, "handover", payload, CTL_TIMEOUT_MS, reply, sizeof reply), TS_OK);
    uint64_t fe = 0, te = 0;
    if (!parse_ok(reply, &fe, &te) || fe != e.epoch || te != e.epoch + 1) {
        ts_h.failed = true;
        fail_msg("handover %s (epoch %" PRIu64 "): reply \"%s\"", payload, e.epoch, reply);
    }
}

/* ---- the test -------------------------------------------------------------------------- */

static void test_standby_takes_over_after_sigkill(void **state)
{
    ts_bus_t *bus = NULL;
    ts_registry_t *reg = NULL;
    ts_bus_sub_t *changes = NULL;
    ts_probe_t *probe = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_orch_ha"), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, "tessera.registry.0", on_change, NULL, &changes), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);

    const char *orch_args[] = {"--orch.rebalance=0", "--orch.lock_ttl_ms=2000", NULL};
    int orch[2];
    orch[0] = ts_h_spawn(&ts_h, "orch-a", "tessera-orch", orch_args);
    assert_true(ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS));
    orch[1] = ts_h_spawn(&ts_h, "orch-b", "tessera-orch", orch_args);
    const char *w1[] = {"--worker.id=w1", NULL}, *w2[] = {"--worker.id=w2", NULL};
    ts_h_spawn(&ts_h, "w1", "tessera-worker", w1);
    ts_h_spawn(&ts_h, "w2", "tessera-worker", w2);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (!workers_bound(probe, NCELLS / 2) && ts_mono_us() < deadline)
        ts_sleep_ms(100);
    if (!workers_bound(probe, NCELLS / 2)) {
        ts_h.failed = true;
        fail_msg("w1 and w2 did not report %d cells each", NCELLS / 2);
    }

    /* exactly one leads: one answer to stats, from orch-a (it started first) */
    char json[512];
    int answers = stats_answers(bus, 700, json, sizeof json);
    if (answers != 1 || stats_leader_pid(json) != ts_h.procs[orch[0]].pid) {
        ts_h.failed = true;
        fail_msg("%d answers to stats, first \"%s\"; want exactly one, from orch-a (pid %d)", answers, json,
                 (int)ts_h.procs[orch[0]].pid);
    }
    size_t nbefore = 0;
    cell_epoch_t *before = registry_snapshot(reg, &nbefore);
    assert_int_equal(nbefore, NCELLS);
    const ts_cell_t first = {.world = WORLD, .cx = -1, .cy = 0}, second = {.world = WORLD, .cx = 0, .cy = 1};
    handover_ok(bus, reg, &first);

    /* SIGKILL the leader: the standby leads within the lock TTL + 1 s */
    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, orch[0], SIGKILL);
    assert_int_equal(ts_h_wait(&ts_h, orch[0], 2000), 128 + SIGKILL);
    long leader = -1;
    char reply[512];
    while (ts_mono_us() - t_kill < (LOCK_TTL_MS + 3000) * 1000ULL) {
        if (ctl(bus, "stats", "", 200, reply, sizeof reply) == TS_OK &&
            (leader = stats_leader_pid(reply)) == ts_h.procs[orch[1]].pid)
            break;
        ts_sleep_ms(50);
    }
    double took_ms = (double)(ts_mono_us() - t_kill) / 1000;
    fprintf(stderr, "standby leads %.0f ms after SIGKILL of the leader (lock ttl %d ms)\n", took_ms,
            LOCK_TTL_MS);
    if (leader != ts_h.procs[orch[1]].pid || took_ms > LOCK_TTL_MS + 1000) {
        ts_h.failed = true;
        fail_msg(
            "after SIGKILL of orch-a the leader is pid %ld after %.0f ms; want orch-b (pid %d) within %d ms",
            leader, took_ms, (int)ts_h.procs[orch[1]].pid, LOCK_TTL_MS + 1000);
    }
    answers = stats_answers(bus, 500, json, sizeof json);
    assert_int_equal(answers, 1);

    /* the new leader drives handovers; it recovered nothing (the workers are alive) */
    handover_ok(bus, reg, &second);
    handover_ok(bus, reg, &first);
    assert_int_equal(ctl(bus, "stats", "", 2000, reply, sizeof reply), TS_OK);
    assert_non_null(strstr(reply, "\"recoveries\":0,"));

    /* epochs only went up: by one per handover, nothing else moved */
    size_t nafter = 0;
    cell_epoch_t *after = registry_snapshot(reg, &nafter);
    assert_int_equal(nafter, NCELLS);
    for (size_t i = 0; i < nbefore; i++) {
        size_t k = 0;
        while (k < nafter && !ts_cell_eq(&after[k].cell, &before[i].cell))
            k++;
        assert_true(k < nafter);
        uint64_t want = before[i].epoch + (ts_cell_eq(&before[i].cell, &first)    ? 2
                                           : ts_cell_eq(&before[i].cell, &second) ? 1
                                                                                  : 0);
        if (after[k].epoch != want) {
            ts_h.failed = true;
            fail_msg("cell %d,%d: epoch %" PRIu64 " -> %" PRIu64 ", want %" PRIu64, before[i].cell.cx,
                     before[i].cell.cy, before[i].epoch, after[k].epoch, want);
        }
    }
    free(before);
    free(after);
    assert_one_owner_each(probe, reg);

    /* a leader whose lock is taken stops serving at once; nobody leads while
     * an intruder holds it, and the lead comes back when it lets go */
    char holder[128];
    assert_int_equal(ctl(bus, "stats", "", 2000, reply, sizeof reply), TS_OK);
    const char *p = strstr(reply, "\"leader\":\"") + strlen("\"leader\":\"");
    snprintf(holder, sizeof holder, "%.*s", (int)(strchr(p, '"') - p), p);
    assert_int_equal(ts_registry_unlock(reg, "orch.0", holder), TS_OK);
    bool held = false;
    assert_int_equal(ts_registry_lock(reg, "orch.0", "it-intruder", 4000, &held), TS_OK);
    assert_true(held);
    ts_sleep_ms(LOCK_TTL_MS / 3 + 500);
    answers = stats_answers(bus, 500, json, sizeof json);
    if (answers != 0) {
        ts_h.failed = true;
        fail_msg("%d answers to stats while an intruder holds the lock (first: %s)", answers, json);
    }
    assert_int_equal(ts_registry_unlock(reg, "orch.0", "it-intruder"), TS_OK);
    deadline = ts_mono_us() + 3000000ULL;
    while (ts_mono_us() < deadline && ctl(bus, "stats", "", 200, reply, sizeof reply) != TS_OK)
        ts_sleep_ms(50);
    assert_int_equal(stats_leader_pid(reply), ts_h.procs[orch[1]].pid);
    handover_ok(bus, reg, &second);

    pthread_mutex_lock(&OBS.mu);
    int backwards = OBS.backwards;
    pthread_mutex_unlock(&OBS.mu);
    if (backwards) {
        ts_h.failed = true;
        fail_msg("%d RegistryChanges went backwards, first: %s", backwards, OBS.backwards_what);
    }
    assert_one_owner_each(probe, reg);

    ts_h_signal(&ts_h, orch[1], SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, orch[1], 8000), 0);
    ts_bus_sub_destroy(changes);
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_standby_takes_over_after_sigkill, ts_h_test_start,
                                        ts_h_test_stop),
    };
    return TS_H_RUN("it_orch_ha", tests, NULL, NULL);
}
