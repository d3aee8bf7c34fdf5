/* The registry when Redis goes away or forgets, end to end: real
 * nats-server -js and redis-server, tessera-orch (no rebalancing, liveness
 * TTL 1.5 s), workers w1 and w2, a gateway and tessera-sim under load, each
 * with its own NATS user and Redis ACL user. Every test gets a fresh cluster.
 *
 * What users rely on, asserted here:
 *  - Redis restarted from its append-only file under load: the registry
 *    comes back exactly as it was (same cells, owners, epochs), nothing is
 *    rebuilt, and every input the bus acknowledged is applied exactly once
 *    (the sim ends with applied == acked == sent);
 *  - Redis wiped entirely (FLUSHALL) under load: the orchestrator writes the
 *    registry back within seconds, every cell at a higher epoch than before
 *    (never 1 again), owned by a live worker that reports it in its
 *    heartbeat at that epoch, the version past the old one; and still
 *    applied == acked == sent;
 *  - Redis wiped while no orchestrator runs, after a cell was split and
 *    merged back: a fresh orchestrator rebuilds the parent as active (the
 *    owner's heartbeat says so, although its retired children are still
 *    known) and each child it writes back as retired; meanwhile each worker
 *    reports the registry version going back below the one it applied. */
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ledger.h"
#include "probe.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define WAIT_MS 20000
#define REBUILD_MAX_US 10000000ULL
#define HB_TTL_ARG "--orch.hb_ttl_ms=1500"
#define LOAD_INPUTS 3000

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static ts_bus_t *bus;
static ts_probe_t *probe;
static ts_ledger_t *ledger;
static ts_registry_t *reg;
static pid_t redis2 = -1; /* the Redis this test restarted itself */

/* ---- helpers --------------------------------------------------------------------- */

/* redis-cli against the harness's Redis; its output into out (may be NULL). */
static int redis_cli(const char *args, char *out, size_t cap)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "redis-cli -u '%s' --no-auth-warning %s 2>&1", ts_h.redis_url, args);
    FILE *p = popen(cmd, "r");
    if (p == NULL) return -1;
    size_t n = 0;
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) {
        if (out != NULL && n + 1 < cap) {
            size_t take = got < cap - 1 - n ? got : cap - 1 - n;
            memcpy(out + n, buf, take);
            n += take;
        }
    }
    if (out != NULL) out[n] = '\0';
    return pclose(p);
}

static void wait_applied(uint64_t since)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        uint64_t now = ts_probe_inputs_applied(probe);
        if (now >= since + LOAD_INPUTS) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the workers applied %" PRIu64 " inputs in %d s, want %d", now > since ? now - since : 0,
                     WAIT_MS / 1000, LOAD_INPUTS);
        }
        ts_sleep_ms(20);
    }
}

static int sim_start(void)
{
    const char *args[] = {"--sim.players=300", "--sim.seed=5", NULL};
    return ts_h_spawn(&ts_h, "sim", "tessera-sim", args);
}

static void sim_verify(int idx, const char *event, uint64_t event_us)
{
    int rc;
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, idx, ledger, event, event_us, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, want 0 with applied == acked == sent > 0; its verdict: %s", rc, v.line);
    }
}

/* The registry's cells sorted as Redis lists them; caller frees. */
static size_t read_cells(ts_cell_entry_t **out)
{
    size_t n = 0;
    *out = NULL;
    if (ts_registry_cells(reg, WORLD, out, &n) != TS_OK) return 0;
    return n;
}

static const ts_cell_entry_t *find(const ts_cell_entry_t *v, size_t n, const ts_cell_t *cell)
{
    for (size_t i = 0; i < n; i++)
        if (ts_cell_eq(&v[i].cell, cell)) return &v[i];
    return NULL;
}

/* What the orchestrator logs when it wrote a lost registry back (after
 * writing it: wait for the line, never read the log the moment the registry
 * is back). */
#define ORCH_REBUILT "was lost"

/* Every cell in cells listed by its owner's heartbeat at its epoch. */
static bool owners_report(const ts_cell_entry_t *cells, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ts_probe_hb_t hb;
        ts_probe_cell_t want = {cells[i].cell, cells[i].epoch};
        if (!ts_probe_heartbeat(probe, cells[i].owner, &hb) || !ts_probe_hb_lists(&hb, &want, 1))
            return false;
    }
    return true;
}

static void cluster_start(void)
{
    ts_h_start_secure(&ts_h); /* every service with its own NATS user and Redis ACL user */
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_chaos_registry"), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    assert_int_equal(ts_ledger_create(&ledger, bus, WORLD), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the world or the gateway did not come up");
    }
    bool ctl_ok, bound;
    ts_probe_wait_ready(probe, bus, WORLD, NCELLS / 2, WAIT_MS, &ctl_ok, &bound);
    if (!ctl_ok || !bound) {
        ts_h.failed = true;
        fail_msg("the orchestrator or the workers are not ready (ctl %d, bound %d)", ctl_ok, bound);
    }
}

static void cluster_stop(void)
{
    ts_ledger_destroy(ledger);
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    ledger = NULL;
    probe = NULL;
    bus = NULL;
    reg = NULL;
    ts_h_stop(&ts_h);
    if (redis2 > 0) {
        kill(redis2, SIGKILL);
        waitpid(redis2, NULL, 0);
        redis2 = -1;
    }
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_restart_with_aof_keeps_registry(void **state)
{
    (void)state;
    cluster_start();
    /* the harness's Redis runs without persistence: turn the append-only
     * file on (as make run and the chart run it) and wait for its rewrite */
    char out[4096];
    assert_int_equal(redis_cli("CONFIG SET appendonly yes", out, sizeof out), 0);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        redis_cli("INFO persistence", out, sizeof out);
        if (strstr(out, "aof_enabled:1") && strstr(out, "aof_rewrite_in_progress:0") &&
            strstr(out, "aof_rewrite_scheduled:0"))
            break;
        if (ts_mono_us() > deadline) fail_msg("Redis did not write its append-only file: %s", out);
        ts_sleep_ms(50);
    }
    int sim = sim_start();
    wait_applied(0);
    ts_cell_entry_t *before = NULL;
    size_t nbefore = read_cells(&before);
    assert_int_equal(nbefore, NCELLS);
    uint64_t version_before = 0;
    assert_int_equal(ts_registry_version(reg, WORLD, &version_before), TS_OK);
    ts_sleep_ms(1100); /* appendfsync everysec: what was written is on disk */

    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, TS_H_REDIS, SIGKILL);
    ts_h_wait(&ts_h, TS_H_REDIS, 5000);
    char port[16], dir[300];
    snprintf(port, sizeof port, "%d", ts_h.redis_port);
    snprintf(dir, sizeof dir, "%s", ts_h.dir);
    char secrets[300];
    snprintf(secrets, sizeof secrets, "%s", ts_h.secrets);
    redis2 = fork();
    assert_true(redis2 >= 0);
    if (redis2 == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        char logp[400];
        snprintf(logp, sizeof logp, "%s/redis2.log", dir);
        FILE *l = freopen(logp, "w", stdout);
        (void)l;
        dup2(1, 2);
        char acl[400];
        snprintf(acl, sizeof acl, "%s/redis-users.acl", secrets);
        execl("/usr/bin/redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "yes", "--appendfsync", "everysec", "--dir", dir, "--aclfile", acl,
              (char *)NULL);
        _exit(127);
    }
    ts_registry_destroy(reg);
    reg = NULL;
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (ts_registry_connect(&reg, ts_h.redis_url) != TS_OK) {
        if (ts_mono_us() > deadline) fail_msg("the restarted Redis does not answer");
        ts_sleep_ms(50);
    }
    ts_cell_entry_t *after = NULL;
    size_t nafter = 0;
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while ((nafter = read_cells(&after)) == 0 && ts_mono_us() < deadline) {
        ts_sleep_ms(50); /* loading the file */
    }
    fprintf(stderr, "Redis restarted from its append-only file in %.0f ms: %zu cells\n",
            (double)(ts_mono_us() - t_kill) / 1000, nafter);
    assert_int_equal(nafter, NCELLS);
    for (size_t i = 0; i < nbefore; i++) {
        const ts_cell_entry_t *a = find(after, nafter, &before[i].cell);
        assert_non_null(a);
        assert_string_equal(a->owner, before[i].owner);
        assert_int_equal(a->epoch, before[i].epoch);
        assert_int_equal(a->state, before[i].state);
    }
    uint64_t version_after = 0;
    assert_int_equal(ts_registry_version(reg, WORLD, &version_after), TS_OK);
    assert_true(version_after >= version_before);
    free(before);
    free(after);
    /* the load goes on over the restarted Redis */
    wait_applied(ts_probe_inputs_applied(probe));
    assert_false(ts_h_log_has(&ts_h, stack.orch, ORCH_REBUILT));
    sim_verify(sim, "the Redis restart", t_kill);
    cluster_stop();
    ts_h_pass();
}

static void test_wipe_rebuilds_with_higher_epochs(void **state)
{
    (void)state;
    cluster_start();
    int sim = sim_start();
    wait_applied(0);
    ts_cell_entry_t *before = NULL;
    size_t nbefore = read_cells(&before);
    assert_int_equal(nbefore, NCELLS);
    uint64_t version_before = 0;
    assert_int_equal(ts_registry_version(reg, WORLD, &version_before), TS_OK);

    uint64_t t_wipe = ts_mono_us();
    char out[256];
    assert_int_equal(redis_cli("FLUSHALL", out, sizeof out), 0);
    assert_non_null(strstr(out, "OK"));

    /* written back: every cell, each at a higher epoch, owned by a live
     * worker that holds it at that epoch */
    ts_cell_entry_t *after = NULL;
    size_t nafter = 0;
    uint64_t rebuilt_us = 0, served_us = 0;
    for (;;) {
        free(after);
        after = NULL;
        nafter = read_cells(&after);
        bool complete = nafter == NCELLS;
        for (size_t i = 0; complete && i < nbefore; i++) {
            const ts_cell_entry_t *a = find(after, nafter, &before[i].cell);
            complete = a != NULL && a->epoch > before[i].epoch;
        }
        uint64_t now = ts_mono_us();
        if (complete && rebuilt_us == 0) rebuilt_us = now - t_wipe;
        if (complete && owners_report(after, nafter)) {
            served_us = now - t_wipe;
            break;
        }
        if (now - t_wipe > REBUILD_MAX_US) {
            ts_h.failed = true;
            fail_msg("%.1f s after FLUSHALL: %zu cells in the registry (want %d, each above its old epoch, "
                     "reported by its owner at that epoch); rebuilt after %.0f ms",
                     (double)(now - t_wipe) / 1e6, nafter, NCELLS, (double)rebuilt_us / 1000);
        }
        ts_sleep_ms(50);
    }
    for (size_t i = 0; i < nafter; i++) {
        const ts_cell_entry_t *b = find(before, nbefore, &after[i].cell);
        assert_non_null(b);
        assert_true(after[i].epoch >= b->epoch + 1);
        assert_true(strcmp(after[i].owner, "w1") == 0 || strcmp(after[i].owner, "w2") == 0);
        assert_int_equal(after[i].state, TS_CELL_ACTIVE);
    }
    uint64_t version_after = 0;
    assert_int_equal(ts_registry_version(reg, WORLD, &version_after), TS_OK);
    assert_true(version_after > version_before);
    assert_true(ts_h_wait_log(&ts_h, stack.orch, ORCH_REBUILT, WAIT_MS));
    fprintf(stderr,
            "FLUSHALL under load: registry rebuilt in %.0f ms, every cell served at its new epoch in "
            "%.0f ms (version %" PRIu64 " -> %" PRIu64 ")\n",
            (double)rebuilt_us / 1000, (double)served_us / 1000, version_before, version_after);
    free(before);
    free(after);
    wait_applied(ts_probe_inputs_applied(probe));
    sim_verify(sim, "FLUSHALL", t_wipe);
    cluster_stop();
    ts_h_pass();
}

/* ctl verb on cell, retried while the orchestrator is busy; fails unless "ok". */
static void ctl_ok(const char *verb, const ts_cell_t *cell)
{
    char reply[512];
    if (!ts_probe_ctl_cell(bus, verb, cell, 10000, reply, sizeof reply)) {
        char key[TS_CELL_STR_MAX];
        ts_cell_format(cell, key, sizeof key);
        ts_h.failed = true;
        fail_msg("ctl %s %s: %s", verb, key, reply);
    }
}

/* Polls the registry until cell is in state; its entry. */
static ts_cell_entry_t wait_state(const ts_cell_t *cell, ts_cell_state_t state, uint64_t min_epoch)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    ts_cell_entry_t e = {0};
    for (;;) {
        ts_status_t st = ts_registry_cell_get(reg, cell, &e);
        if (st == TS_OK && e.state == state && e.epoch >= min_epoch) return e;
        if (ts_mono_us() > deadline) {
            char key[TS_CELL_STR_MAX];
            ts_cell_format(cell, key, sizeof key);
            ts_h.failed = true;
            fail_msg("cell %s: %s, state %s epoch %" PRIu64 "; want state %s at epoch >= %" PRIu64, key,
                     ts_status_str(st), ts_cell_state_str(e.state), e.epoch, ts_cell_state_str(state),
                     min_epoch);
        }
        ts_sleep_ms(50);
    }
}

static void test_wipe_after_merge_rebuilds_states(void **state)
{
    (void)state;
    cluster_start();
    ts_cell_t root, kids[4];
    assert_int_equal(ts_cell_parse("0.-1.0.0.0", &root), TS_OK);
    assert_int_equal(ts_cell_children(&root, kids), TS_OK);
    ctl_ok("split", &root);
    wait_state(&root, TS_CELL_SPLIT, 0);
    ctl_ok("merge", &root);
    ts_cell_entry_t merged = wait_state(&root, TS_CELL_ACTIVE, 2);
    ts_cell_entry_t kid_before[4];
    for (int k = 0; k < 4; k++)
        kid_before[k] = wait_state(&kids[k], TS_CELL_RETIRED, 0);
    /* the parent's owner reports it at its epoch (its heartbeat says active) */
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (!owners_report(&merged, 1)) {
        if (ts_mono_us() > deadline) fail_msg("%s never reports the merged parent", merged.owner);
        ts_sleep_ms(50);
    }

    /* no orchestrator, Redis forgets, a fresh orchestrator rebuilds */
    ts_h_signal(&ts_h, stack.orch, SIGKILL);
    assert_true(ts_h_wait(&ts_h, stack.orch, 5000) >= 0);
    char out[256];
    assert_int_equal(redis_cli("FLUSHALL", out, sizeof out), 0);
    assert_non_null(strstr(out, "OK"));
    /* the workers see the version go back (0 < what they applied) and say so */
    for (int i = 0; i < 2; i++) {
        if (!ts_h_wait_log(&ts_h, stack.workers[i], "registry version 0 is below the", WAIT_MS)) {
            ts_h.failed = true;
            fail_msg("worker %d never reported the registry version going back", i + 1);
        }
    }
    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    stack.orch = ts_h_spawn(&ts_h, "orch", "tessera-orch", orch);
    ts_cell_entry_t after = wait_state(&root, TS_CELL_ACTIVE, merged.epoch + 1);
    assert_true(ts_h_wait_log(&ts_h, stack.orch, ORCH_REBUILT, WAIT_MS));
    for (int k = 0; k < 4; k++) {
        ts_cell_entry_t e;
        ts_status_t st = ts_registry_cell_get(reg, &kids[k], &e);
        if (st == TS_ERR_NOT_FOUND) continue; /* nobody knew it: never written back */
        assert_int_equal(st, TS_OK);
        assert_int_equal(e.state, TS_CELL_RETIRED);
        assert_true(e.epoch > kid_before[k].epoch);
    }
    fprintf(stderr, "merged parent rebuilt active at epoch %" PRIu64 " (was %" PRIu64 ")\n", after.epoch,
            merged.epoch);
    cluster_stop();
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
        cmocka_unit_test_setup_teardown(test_restart_with_aof_keeps_registry, ts_h_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_wipe_rebuilds_with_higher_epochs, ts_h_test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_wipe_after_merge_rebuilds_states, ts_h_test_setup,
                                        test_teardown),
    };
    return TS_H_RUN("it_chaos_registry", tests, NULL, NULL);
}
