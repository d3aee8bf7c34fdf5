/* Liveness that tells slow from dead, end to end: real nats-server -js and
 * redis-server, tessera-orch (no automatic rebalancing, liveness TTL
 * 1.5 s), workers w1 and w2 (heartbeat every 250 ms), a gateway and
 * tessera-sim. Every test gets a fresh cluster.
 *
 * What users rely on, asserted here:
 *  - Redis stopped (SIGSTOP) for 5 s under load: every worker keeps ticking
 *    at its 20 Hz (counted by the workers' own Heartbeat.ticks against
 *    their own clock) and its heartbeats keep flowing on core NATS; nobody
 *    is declared dead (the orchestrator's recovery count does not move, no
 *    cell changes owner or epoch); no input is lost (the sim ends with
 *    applied == acked == sent);
 *  - nats-server stopped for 1 s under load: ticks go on (the tick counter
 *    once NATS is back), publishes complete afterwards, nothing lost, nobody
 *    declared dead;
 *  - both cores saturated by two busy loops for 10 s under load: nobody is
 *    declared dead and every handover asked for meanwhile (tessera-ctl
 *    handover) succeeds;
 *  - a second tessera-worker started with the id of a live worker exits
 *    non-zero saying that id is already live, and the live worker keeps its
 *    cells (registry and heartbeat unchanged, no recovery).
 *
 * A tick rate "at 20 Hz" means at least TICK_RATE_MIN of it over the window:
 * the worker's tick does not catch up missed ticks, so a tick thread that
 * waits on Redis or NATS for even half a second falls below it. */
#define _GNU_SOURCE
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
#include "ledger.h"
#include "probe.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define NWORKERS 2
#define WAIT_MS 20000
#define TICK_HZ 20
#define TICK_RATE_MIN (0.9 * TICK_HZ)
#define HB_MS 250
#define HB_TTL_MS 1500
#define HB_GAP_MAX_MS 1000 /* heartbeats flow: never a second without one */
#define REDIS_STOP_MS 5000
#define NATS_STOP_MS 1000
#define BURN_S 10
#define BURN_HANDOVER_MS 500 /* one handover asked for every 500 ms of it */
#define LOAD_INPUTS 3000     /* inputs applied before a test disturbs anything */
#define CTL_WAIT_MS 40000
#define MAX_SAMPLES 4096
#define REFUSE_MS 10000 /* a second worker with a live id gives up within */

static const char *const WORKERS[NWORKERS] = {"w1", "w2"};

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static ts_bus_t *bus;
static ts_probe_t *probe;
static ts_ledger_t *ledger;
static ts_registry_t *reg;
static ts_cell_entry_t *t_cells; /* a test's registry snapshot, freed by its teardown */

/* ---- every heartbeat of w1 and w2, with its tick counter -------------------------- */

typedef struct {
    uint64_t rx_us;   /* ts_mono_us() when it arrived */
    uint64_t time_ms; /* the worker's wall clock when it sent it */
    uint64_t ticks;
    uint64_t ticks_missed; /* the worker's own count of periods without a tick */
    double tick_max_ms;    /* its longest tick since the previous heartbeat */
} hb_sample_t;

static struct {
    pthread_mutex_t mu;
    ts_bus_sub_t *sub;
    hb_sample_t s[NWORKERS][MAX_SAMPLES];
    size_t n[NWORKERS];
} HB = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_heartbeat(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (hb == NULL) return;
    pthread_mutex_lock(&HB.mu);
    for (int w = 0; w < NWORKERS; w++) {
        if (hb->worker == NULL || strcmp(hb->worker, WORKERS[w]) != 0 || HB.n[w] >= MAX_SAMPLES) continue;
        HB.s[w][HB.n[w]++] =
            (hb_sample_t){ts_mono_us(), hb->time_ms, hb->ticks, hb->ticks_missed, hb->tick_max_ms};
    }
    pthread_mutex_unlock(&HB.mu);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

typedef struct {
    bool complete;        /* heartbeats on both sides of the window arrived */
    uint64_t ticks;       /* ticks between them */
    double span_ms;       /* by the worker's clock */
    double rate;          /* ticks per second */
    double max_gap_ms;    /* longest time between two heartbeats in the window, worker clock */
    double max_rx_gap_ms; /* the same, as received */
    uint64_t missed;      /* the worker's own count of missed ticks over it */
    double tick_max_ms;   /* its longest tick in it */
} tick_window_t;

/* Ticks of WORKERS[w] over the wall-clock window [from_ms, to_ms], from the
 * last heartbeat it sent at or before from_ms to the first it sent at or
 * after to_ms. */
static tick_window_t tick_window(int w, uint64_t from_ms, uint64_t to_ms)
{
    tick_window_t t = {0};
    pthread_mutex_lock(&HB.mu);
    const hb_sample_t *s = HB.s[w];
    size_t n = HB.n[w], a = SIZE_MAX, b = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (s[i].time_ms <= from_ms && (a == SIZE_MAX || s[i].time_ms >= s[a].time_ms)) a = i;
        if (s[i].time_ms >= to_ms && (b == SIZE_MAX || s[i].time_ms < s[b].time_ms)) b = i;
    }
    if (a != SIZE_MAX && b != SIZE_MAX && s[b].ticks >= s[a].ticks) {
        t.complete = true;
        t.ticks = s[b].ticks - s[a].ticks;
        t.missed = s[b].ticks_missed >= s[a].ticks_missed ? s[b].ticks_missed - s[a].ticks_missed : 0;
        t.span_ms = (double)(s[b].time_ms - s[a].time_ms);
        t.rate = t.span_ms > 0 ? (double)t.ticks * 1000.0 / t.span_ms : 0;
        /* heartbeats arrive in the order sent (one connection) */
        for (size_t i = a + 1; i <= b && i < n; i++) {
            double gap = (double)(s[i].time_ms - s[i - 1].time_ms);
            double rx_gap = (double)(s[i].rx_us - s[i - 1].rx_us) / 1000.0;
            if (gap > t.max_gap_ms) t.max_gap_ms = gap;
            if (rx_gap > t.max_rx_gap_ms) t.max_rx_gap_ms = rx_gap;
            if (s[i].tick_max_ms > t.tick_max_ms) t.tick_max_ms = s[i].tick_max_ms;
        }
    }
    pthread_mutex_unlock(&HB.mu);
    return t;
}

/* Waits until every worker's heartbeats cover [from_ms, to_ms] and checks
 * each ticked at TICK_RATE_MIN or more; with flowing, that its heartbeats
 * never paused HB_GAP_MAX_MS (as sent and as received). */
static void assert_ticking(uint64_t from_ms, uint64_t to_ms, bool flowing, const char *what)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (int w = 0; w < NWORKERS; w++) {
        tick_window_t t;
        while (!(t = tick_window(w, from_ms, to_ms)).complete && ts_mono_us() < deadline)
            ts_sleep_ms(50);
        fprintf(stderr,
                "%s: %s ticked %" PRIu64 " times in %.0f ms (%.1f/s; it counts %" PRIu64
                " missed, longest tick %.1f ms); longest heartbeat gap %.0f ms sent, %.0f ms received\n",
                what, WORKERS[w], t.ticks, t.span_ms, t.rate, t.missed, t.tick_max_ms, t.max_gap_ms,
                t.max_rx_gap_ms);
        if (!t.complete) {
            ts_h.failed = true;
            fail_msg("%s: no heartbeat of %s covers the window (its heartbeats stopped)", what, WORKERS[w]);
        }
        if (t.rate < TICK_RATE_MIN) {
            ts_h.failed = true;
            fail_msg("%s: %s ticked at %.1f/s (%" PRIu64 " ticks in %.0f ms), want >= %.0f/s", what,
                     WORKERS[w], t.rate, t.ticks, t.span_ms, TICK_RATE_MIN);
        }
        if (flowing && (t.max_gap_ms > HB_GAP_MAX_MS || t.max_rx_gap_ms > HB_GAP_MAX_MS)) {
            ts_h.failed = true;
            fail_msg("%s: %s's heartbeats paused for %.0f ms (sent) / %.0f ms (received), want <= %d ms",
                     what, WORKERS[w], t.max_gap_ms, t.max_rx_gap_ms, HB_GAP_MAX_MS);
        }
    }
}

/* Waits until every worker sent a heartbeat at or after wall-clock ms. */
static void wait_heartbeats_after(uint64_t ms, const char *what)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (int w = 0; w < NWORKERS; w++) {
        for (;;) {
            pthread_mutex_lock(&HB.mu);
            bool seen = HB.n[w] > 0 && HB.s[w][HB.n[w] - 1].time_ms >= ms;
            pthread_mutex_unlock(&HB.mu);
            if (seen) break;
            if (ts_mono_us() > deadline) {
                ts_h.failed = true;
                fail_msg("%s: no heartbeat of %s for %d s", what, WORKERS[w], WAIT_MS / 1000);
            }
            ts_sleep_ms(50);
        }
    }
}

/* ---- cluster --------------------------------------------------------------------- */

static void cluster_start(void)
{
    ts_h_start(&ts_h);
    pthread_mutex_lock(&HB.mu);
    memset(HB.n, 0, sizeof HB.n);
    pthread_mutex_unlock(&HB.mu);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_liveness"), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    assert_int_equal(ts_ledger_create(&ledger, bus, WORLD), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, "tessera.worker.*.hb", on_heartbeat, NULL, &HB.sub), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);

    char ttl[48], hb[48];
    snprintf(ttl, sizeof ttl, "--orch.hb_ttl_ms=%d", HB_TTL_MS);
    snprintf(hb, sizeof hb, "--worker.hb_ms=%d", HB_MS);
    const char *orch[] = {"--orch.rebalance=0", ttl, NULL};
    const char *worker[] = {hb, ttl, NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the world or the gateway did not come up");
    }
    bool ctl_ok, bound;
    ts_probe_wait_ready(probe, bus, WORLD, NCELLS / NWORKERS, WAIT_MS, &ctl_ok, &bound);
    if (!ctl_ok || !bound) {
        ts_h.failed = true;
        fail_msg("%s", !ctl_ok ? "tessera-orch does not answer tessera.ctl.0.stats"
                               : "workers w1 and w2 did not report 8 cells each in their heartbeats");
    }
}

static void cluster_stop(void)
{
    ts_bus_sub_destroy(HB.sub);
    ts_ledger_destroy(ledger);
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    HB.sub = NULL;
    ledger = NULL;
    probe = NULL;
    bus = NULL;
    reg = NULL;
    ts_h_stop(&ts_h);
}

/* Starts 300 sim players and waits until the workers applied LOAD_INPUTS
 * of their inputs. */
static int sim_start_loaded(int seed)
{
    char seed_arg[32];
    snprintf(seed_arg, sizeof seed_arg, "--sim.seed=%d", seed);
    const char *args[] = {"--sim.players=300", seed_arg, NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", args);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (ts_probe_inputs_applied(probe) < LOAD_INPUTS) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the workers applied %" PRIu64 " sim inputs in %d s, want %d",
                     ts_probe_inputs_applied(probe), WAIT_MS / 1000, LOAD_INPUTS);
        }
        ts_sleep_ms(50);
    }
    return sim;
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

/* The orchestrator's recovery count (stats JSON). */
static double recoveries(void)
{
    char reply[1024];
    double n = -1;
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (!(ts_probe_ctl(bus, WORLD, "stats", "", 2000, reply, sizeof reply) == TS_OK &&
             ts_probe_json_number(reply, "recoveries", &n))) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("tessera-orch does not answer tessera.ctl.0.stats (last reply \"%s\")", reply);
        }
        ts_sleep_ms(100);
    }
    return n;
}

/* Every cell of the world, sorted as the registry returns them (caller frees). */
static ts_cell_entry_t *cells_now(size_t *n)
{
    ts_cell_entry_t *cells = NULL;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, n), TS_OK);
    if (*n != NCELLS) {
        free(cells);
        ts_h.failed = true;
        fail_msg("the registry lists %zu cells, want %d", *n, NCELLS);
    }
    return cells;
}

/* Every cell still has the owner and epoch of want. */
static void assert_cells_unchanged(const ts_cell_entry_t *want, size_t n, const char *what)
{
    size_t m = 0;
    ts_cell_entry_t *now = cells_now(&m);
    for (size_t i = 0; i < n; i++) {
        const ts_cell_entry_t *e = NULL;
        for (size_t k = 0; k < m && e == NULL; k++)
            if (ts_cell_eq(&now[k].cell, &want[i].cell)) e = &now[k];
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&want[i].cell, key, sizeof key);
        if (e == NULL || strcmp(e->owner, want[i].owner) != 0 || e->epoch != want[i].epoch ||
            e->state != TS_CELL_ACTIVE) {
            char got[128];
            snprintf(got, sizeof got, "%s epoch %" PRIu64 " (%s)", e ? e->owner : "nothing", e ? e->epoch : 0,
                     e ? ts_cell_state_str(e->state) : "-");
            free(now);
            ts_h.failed = true;
            fail_msg("%s: cell %s is %s, want %s epoch %" PRIu64 " active", what, key, got, want[i].owner,
                     want[i].epoch);
        }
    }
    free(now);
}

/* Each worker's newest heartbeat, sent at or after since_ms, lists exactly
 * the cells the registry gives it. */
static void assert_heartbeats_list(const ts_cell_entry_t *cells, size_t n, uint64_t since_ms,
                                   const char *what)
{
    wait_heartbeats_after(since_ms, what);
    for (int w = 0; w < NWORKERS; w++) {
        ts_probe_hb_t hb;
        assert_true(ts_probe_heartbeat(probe, WORKERS[w], &hb));
        size_t want = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(cells[i].owner, WORKERS[w]) != 0) continue;
            want++;
            ts_probe_cell_t c = {cells[i].cell, cells[i].epoch};
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&c.cell, key, sizeof key);
            if (!ts_probe_hb_lists(&hb, &c, 1)) {
                ts_h.failed = true;
                fail_msg("%s: %s owns %s at epoch %" PRIu64 " but its heartbeat does not list it", what,
                         WORKERS[w], key, c.epoch);
            }
        }
        if (hb.ncells != want) {
            ts_h.failed = true;
            fail_msg("%s: %s's heartbeat lists %zu cells, the registry gives it %zu", what, WORKERS[w],
                     hb.ncells, want);
        }
    }
}

/* Nobody was declared dead: the recovery count is still recoveries_before,
 * every cell has its owner and epoch of want, and the workers' heartbeats
 * agree. Waits first until the workers sent heartbeats for a liveness TTL
 * and a second after wall-clock after_ms, so that a late verdict shows. */
static void assert_nobody_dead(const ts_cell_entry_t *want, size_t n, double recoveries_before,
                               uint64_t after_ms, const char *what)
{
    wait_heartbeats_after(after_ms + HB_TTL_MS + 1000, what);
    double r = recoveries();
    if (r != recoveries_before) {
        ts_h.failed = true;
        fail_msg(
            "%s: the orchestrator recovered cells (recoveries %.0f -> %.0f): a live worker was declared dead",
            what, recoveries_before, r);
    }
    assert_cells_unchanged(want, n, what);
    assert_heartbeats_list(want, n, after_ms + HB_TTL_MS + 1000, what);
}

/* ---- tests ------------------------------------------------------------------------ */

static void stop_server(int idx, int64_t ms, const char *name, uint64_t *stop_wall_ms, uint64_t *cont_wall_ms)
{
    *stop_wall_ms = ts_now_us() / 1000;
    ts_h_signal(&ts_h, idx, SIGSTOP);
    fprintf(stderr, "%s stopped for %lld ms\n", name, (long long)ms);
    ts_sleep_ms(ms); /* the outage itself */
    ts_h_signal(&ts_h, idx, SIGCONT);
    *cont_wall_ms = ts_now_us() / 1000;
}

static void test_redis_stopped_workers_tick(void **state)
{
    (void)state;
    cluster_start();
    int sim = sim_start_loaded(31);
    size_t n = 0;
    ts_cell_entry_t *before = t_cells = cells_now(&n);
    double rec = recoveries();

    uint64_t t_stop = ts_mono_us(), stop_ms, cont_ms;
    stop_server(TS_H_REDIS, REDIS_STOP_MS, "redis-server", &stop_ms, &cont_ms);
    assert_ticking(stop_ms, cont_ms, true, "redis stopped");
    assert_nobody_dead(before, n, rec, cont_ms, "after redis came back");
    sim_verify(sim, "SIGSTOP of redis-server", t_stop);
    ts_h_pass();
}

static void test_nats_stopped_workers_tick(void **state)
{
    (void)state;
    cluster_start();
    int sim = sim_start_loaded(32);
    size_t n = 0;
    ts_cell_entry_t *before = t_cells = cells_now(&n);
    double rec = recoveries();

    uint64_t t_stop = ts_mono_us(), stop_ms, cont_ms;
    stop_server(TS_H_NATS, NATS_STOP_MS, "nats-server", &stop_ms, &cont_ms);
    /* heartbeats sent while NATS was stopped may be lost or late: count by
     * the workers' own counter over the second before, the outage and two
     * seconds after (a tick thread that waited out the outage would have
     * lost at least a quarter of it) */
    assert_ticking(stop_ms - 1000, cont_ms + 2000, false, "nats stopped");
    assert_nobody_dead(before, n, rec, cont_ms, "after nats came back");
    sim_verify(sim, "SIGSTOP of nats-server", t_stop);
    ts_h_pass();
}

static void test_cores_saturated_nobody_dead(void **state)
{
    (void)state;
    cluster_start();
    int sim = sim_start_loaded(33);
    size_t n = 0;
    ts_cell_entry_t *cells = t_cells = cells_now(&n);
    double rec = recoveries();

    /* two busy loops, one per core, that end by themselves after BURN_S */
    char loop[96];
    snprintf(loop, sizeof loop, "while [ $SECONDS -lt %d ]; do :; done", BURN_S);
    const char *burn[] = {"-c", loop, NULL};
    int burners[2];
    uint64_t t_burn = ts_mono_us();
    burners[0] = ts_h_spawn(&ts_h, "burn1", "/bin/bash", burn);
    burners[1] = ts_h_spawn(&ts_h, "burn2", "/bin/bash", burn);

    /* handovers, one after another, paced every BURN_HANDOVER_MS, for as
     * long as the cores are busy */
    int asked = 0;
    while (ts_h_wait(&ts_h, burners[0], 0) < 0 || ts_h_wait(&ts_h, burners[1], 0) < 0) {
        if (ts_mono_us() < t_burn + (uint64_t)asked * BURN_HANDOVER_MS * 1000ULL) {
            ts_sleep_ms(10);
            continue;
        }
        ts_cell_entry_t *e = &cells[(size_t)(asked * 5) % n];
        const char *to = strcmp(e->owner, "w1") == 0 ? "w2" : "w1";
        char key[TS_CELL_STR_MAX], name[32];
        ts_cell_format(&e->cell, key, sizeof key);
        snprintf(name, sizeof name, "ctl-%d", ++asked);
        const char *args[] = {"handover", key, to, NULL};
        uint64_t t0 = ts_mono_us();
        int ctl = ts_h_spawn(&ts_h, name, "tessera-ctl", args);
        int rc = ts_h_wait(&ts_h, ctl, CTL_WAIT_MS);
        char *out = ts_h_read_log(&ts_h, ctl);
        ts_probe_handover_t r;
        bool parsed = out != NULL && ts_probe_parse_handover(out, &r);
        fprintf(stderr, "handover %d (%s to %s) under saturated cores: exit %d after %.0f ms: %s", asked, key,
                to, rc, (double)(ts_mono_us() - t0) / 1000, out ? out : "(no output)\n");
        if (rc != 0 || !parsed || strcmp(r.from, e->owner) != 0 || strcmp(r.to, to) != 0 ||
            r.epoch_from != e->epoch || r.epoch_to != e->epoch + 1) {
            free(out);
            ts_h.failed = true;
            fail_msg("handover %d of %s from %s (epoch %" PRIu64
                     ") to %s under saturated cores failed: exit %d",
                     asked, key, e->owner, e->epoch, to, rc);
        }
        free(out);
        ts_strlcpy(e->owner, to, sizeof e->owner);
        e->epoch = r.epoch_to;
    }
    uint64_t burn_end_ms = ts_now_us() / 1000;
    double burnt_s = (double)(ts_mono_us() - t_burn) / 1e6;
    fprintf(stderr, "cores saturated for %.1f s; %d handovers asked for meanwhile, all ok\n", burnt_s, asked);
    assert_int_equal(ts_h_wait(&ts_h, burners[0], 0), 0);
    assert_int_equal(ts_h_wait(&ts_h, burners[1], 0), 0);
    assert_true(burnt_s >= BURN_S - 1);
    if (asked < 3) {
        ts_h.failed = true;
        fail_msg("only %d handovers were asked for in %d s of saturated cores, want >= 3", asked, BURN_S);
    }
    assert_nobody_dead(cells, n, rec, burn_end_ms, "after the busy loops");
    sim_verify(sim, "the busy loops", t_burn);
    ts_h_pass();
}

static void test_second_worker_with_live_id_refused(void **state)
{
    (void)state;
    cluster_start();
    size_t n = 0;
    ts_cell_entry_t *before = t_cells = cells_now(&n);
    double rec = recoveries();

    char hb[48], ttl[48];
    snprintf(hb, sizeof hb, "--worker.hb_ms=%d", HB_MS);
    snprintf(ttl, sizeof ttl, "--orch.hb_ttl_ms=%d", HB_TTL_MS);
    const char *args[] = {"--worker.id=w1", hb, ttl, NULL};
    int dup = ts_h_spawn(&ts_h, "w1-again", "tessera-worker", args);
    int rc = ts_h_wait(&ts_h, dup, REFUSE_MS);
    uint64_t exit_ms = ts_now_us() / 1000;
    char *log = ts_h_read_log(&ts_h, dup);
    fprintf(stderr, "second w1: exit %d; its log:\n%s", rc, log ? log : "(none)\n");
    bool says = log != NULL && strstr(log, "w1") != NULL && strcasestr(log, "already") != NULL &&
                strcasestr(log, "live") != NULL;
    free(log);
    if (rc < 0 || rc == 0 || !says) {
        ts_h.failed = true;
        fail_msg("a second tessera-worker with the live id w1 %s%s",
                 rc < 0 ? "still runs after 10 s" : "exited ",
                 rc < 0    ? ""
                 : rc == 0 ? "0"
                           : "without saying that w1 is already live");
    }
    assert_int_equal(ts_h_wait(&ts_h, stack.workers[0], 0), -1);
    assert_nobody_dead(before, n, rec, exit_ms, "after the second w1 exited");
    ts_h_pass();
}

/* ---- fixtures ------------------------------------------------------------------------ */

static int test_teardown(void **state)
{
    ts_h_test_teardown(state);
    free(t_cells);
    t_cells = NULL;
    /* whatever a failed test left stopped must be able to exit */
    for (int i = 0; i < ts_h.nprocs; i++)
        ts_h_signal(&ts_h, i, SIGCONT);
    cluster_stop();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_redis_stopped_workers_tick, ts_h_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_nats_stopped_workers_tick, ts_h_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_cores_saturated_nobody_dead, ts_h_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_second_worker_with_live_id_refused, ts_h_test_setup,
                                        test_teardown),
    };
    return TS_H_RUN("it_liveness", tests, NULL, NULL);
}
