/* tessera-bench-cluster: what NATS security and replication cost.
 *
 * Four set-ups of the same stack (tessera-orch, workers w1 and w2, a bus-mode
 * tessera-sim), each on fresh servers started through the integration-test
 * harness (so every process is reaped whatever happens):
 *   open     one nats-server, no auth, no TLS, R1 streams
 *   secure   one nats-server with per-service users and permissions and
 *            TLS (what `make run` runs, plus TLS), R1 streams
 *   R1       a 3-node JetStream cluster, open, streams with one replica
 *   R3       the same cluster, streams replicated three times
 * In each it measures:
 *   - the freeze window of live handovers (the orchestrator's replies), p50,
 *     under a load every set-up sustains (a sim of 500 players x 10
 *     inputs/s), and that sim's verdict (applied == acked == sent);
 *   - then, with a second sim offering more than this machine may sustain
 *     (2,000 x 20 inputs/s), inputs applied per second (the workers'
 *     heartbeat counters) over a window and the NATS servers' CPU time per
 *     1,000 inputs applied: the throughput each set-up reaches.
 * The pairs open/secure and R1/R3 run side by side: every round runs all
 * four, in an order that alternates (ABBA), and the figures are medians over
 * the rounds; the ratios compare the medians. Printed, never asserted.
 * Knobs (environment): BENCH_CLUSTER_ROUNDS (3), BENCH_CLUSTER_PLAYERS
 * (2000), BENCH_CLUSTER_RATE (20 inputs/s per player), BENCH_CLUSTER_WINDOW_S
 * (5), BENCH_CLUSTER_HANDOVERS (10), BENCH_CLUSTER_HANDOVER_PLAYERS (500 at
 * 10 inputs/s). */
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "probe.h"
#include "procstat.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define READY_MS 60000
#define WARMUP_MS 3000
#define CTL_TIMEOUT_MS 10000
#define MAX_ROUNDS 9
#define MAX_HANDOVERS 50
#define NSETUPS 4

typedef enum { SETUP_OPEN, SETUP_SECURE, SETUP_R1, SETUP_R3 } setup_t;

static const char *const setup_name[NSETUPS] = {"open", "auth+TLS", "cluster R1", "cluster R3"};

typedef struct {
    int rounds, players, rate, window_s, handovers, handover_players;
} knobs_t;

typedef struct {
    bool ok;
    double inputs_per_s;
    double nats_cpu_ms_per_k; /* NATS servers' CPU ms per 1,000 inputs applied */
    double freeze_p50_ms;
    int handovers_ok;
    bool exact;
    char verdict[256];
} trial_t;

static ts_h_t H;

static int env_int(const char *name, int def, int min, int max)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0') return def;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end != '\0' || n < min || n > max) {
        fprintf(stderr, "tessera-bench-cluster: %s must be %d..%d, using %d\n", name, min, max, def);
        return def;
    }
    return (int)n;
}

/* CPU time (us) of every NATS server process the harness started. */
static uint64_t nats_cpu_us(void)
{
    uint64_t sum = 0;
    for (int i = 0; i < H.nprocs; i++) {
        uint64_t us;
        if (H.procs[i].server && strncmp(H.procs[i].name, "nats", 4) == 0 && !H.procs[i].reaped &&
            ts_proc_cpu_us(H.procs[i].pid, &us))
            sum += us;
    }
    return sum;
}

static bool start_servers(setup_t s)
{
    switch (s) {
    case SETUP_OPEN:
        ts_h_start(&H);
        break;
    case SETUP_SECURE:
        ts_h_start_secure_tls(&H);
        break;
    case SETUP_R1:
    case SETUP_R3:
        ts_h_start_cluster(&H, TS_H_OPEN);
        break;
    }
    return H.nnodes == 0 || ts_h_cluster_wait_healthy(&H, READY_MS);
}

/* Moves n random cells to the other worker, one after the other; the
 * freeze windows of those that succeeded go to freeze_ms[]. */
static int run_handovers(ts_bus_t *bus, ts_registry_t *reg, int n, double *freeze_ms)
{
    ts_rng_t rng;
    ts_rng_seed(&rng, 7);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        ts_cell_entry_t *cells = NULL;
        size_t ncells = 0;
        if (ts_registry_cells(reg, WORLD, &cells, &ncells) != TS_OK || ncells == 0) {
            free(cells);
            break;
        }
        const ts_cell_entry_t *e = &cells[ts_rng_next(&rng) % ncells];
        char key[TS_CELL_STR_MAX], payload[160], reply[512];
        ts_cell_format(&e->cell, key, sizeof key);
        snprintf(payload, sizeof payload, "%s %s", key, strcmp(e->owner, "w1") == 0 ? "w2" : "w1");
        free(cells);
        ts_probe_handover_t r;
        if (ts_probe_ctl(bus, WORLD, "handover", payload, CTL_TIMEOUT_MS, reply, sizeof reply) == TS_OK &&
            ts_probe_parse_handover(reply, &r))
            freeze_ms[ok++] = (double)r.freeze_us / 1000.0;
    }
    return ok;
}

static trial_t run_trial(setup_t s, const knobs_t *k)
{
    trial_t t = {.ok = false};
    snprintf(t.verdict, sizeof t.verdict, "none");
    ts_bus_t *bus = NULL;
    ts_registry_t *reg = NULL;
    ts_probe_t *probe = NULL;
    if (!start_servers(s)) goto out;
    if (ts_bus_connect(&bus, H.nats_urls, "tessera-bench-cluster") != TS_OK ||
        ts_registry_connect(&reg, H.redis_url) != TS_OK || ts_probe_create(&probe, bus) != TS_OK) {
        fprintf(stderr, "tessera-bench-cluster: %s: cannot connect to the servers it started\n",
                setup_name[s]);
        goto out;
    }
    const char *replicas = s == SETUP_R3 ? "--stream.replicas=3" : "--stream.replicas=1";
    const char *orch[] = {"--orch.rebalance=0", replicas, NULL};
    const char *worker[] = {replicas, NULL};
    ts_h_spawn(&H, "orch", "tessera-orch", orch);
    const char *ids[2] = {"--worker.id=w1", "--worker.id=w2"};
    for (int i = 0; i < 2; i++) {
        const char *args[] = {ids[i], worker[0], NULL};
        ts_h_spawn(&H, i ? "w2" : "w1", "tessera-worker", args);
    }
    bool ctl_ok, bound;
    if (!ts_h_wait_world(&H, WORLD, NCELLS, READY_MS) ||
        !ts_probe_wait_ready(probe, bus, WORLD, NCELLS / 2, READY_MS, &ctl_ok, &bound)) {
        fprintf(stderr, "tessera-bench-cluster: %s: the stack did not become ready\n", setup_name[s]);
        goto out;
    }
    /* handovers under a load every set-up sustains */
    char players[48], rate[48];
    snprintf(players, sizeof players, "--sim.players=%d", k->handover_players);
    const char *sim_args[] = {players, "--sim.rate_hz=10", "--sim.seed=11", NULL};
    int sim = ts_h_spawn(&H, "sim", "tessera-sim", sim_args);
    ts_sleep_ms(WARMUP_MS);
    static double freeze[MAX_HANDOVERS];
    t.handovers_ok = run_handovers(bus, reg, k->handovers, freeze);
    t.freeze_p50_ms = t.handovers_ok ? ts_percentile(freeze, (size_t)t.handovers_ok, 50) : 0;
    ts_h_signal(&H, sim, SIGINT);
    int rc = ts_h_wait(&H, sim, 30000);
    char *log = ts_h_read_log(&H, sim);
    ts_probe_verdict_t v;
    ts_probe_sim_verdict(log, &v);
    free(log);
    t.exact = rc == 0 && ts_probe_verdict_exact(&v);
    ts_strlcpy(t.verdict, v.line, sizeof t.verdict);

    /* then the throughput it reaches under more than this machine may sustain */
    snprintf(players, sizeof players, "--sim.players=%d", k->players);
    snprintf(rate, sizeof rate, "--sim.rate_hz=%d", k->rate);
    const char *load_args[] = {players, rate, "--sim.seed=12", NULL};
    sim = ts_h_spawn(&H, "sim-load", "tessera-sim", load_args);
    ts_sleep_ms(WARMUP_MS);
    uint64_t a0 = ts_probe_inputs_applied(probe), c0 = nats_cpu_us(), t0 = ts_mono_us();
    ts_sleep_ms((int64_t)k->window_s * 1000);
    uint64_t a1 = ts_probe_inputs_applied(probe), c1 = nats_cpu_us(), t1 = ts_mono_us();
    t.inputs_per_s = (double)(a1 - a0) / ((double)(t1 - t0) / 1e6);
    t.nats_cpu_ms_per_k = a1 > a0 ? (double)(c1 - c0) / 1000.0 / ((double)(a1 - a0) / 1000.0) : 0;
    t.ok = t.handovers_ok > 0 && a1 > a0;
out:
    if (!t.ok) H.failed = true;
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    ts_h_stop(&H);
    return t;
}

/* Median of the measured trials' field at offset off (a double). */
static double median(const trial_t *t, int n, size_t off)
{
    double v[MAX_ROUNDS];
    int k = 0;
    for (int i = 0; i < n; i++)
        if (t[i].ok) v[k++] = *(const double *)((const char *)&t[i] + off);
    return k ? ts_percentile(v, (size_t)k, 50) : 0;
}

static void print_row(setup_t s, const trial_t *t, int n)
{
    int ok = 0, exact = 0;
    for (int i = 0; i < n; i++) {
        ok += t[i].ok;
        exact += t[i].exact;
    }
    printf("  %-11s %12.0f %18.2f %20.2f   %d of %d runs, handover load exact in %d\n", setup_name[s],
           median(t, n, offsetof(trial_t, inputs_per_s)), median(t, n, offsetof(trial_t, nats_cpu_ms_per_k)),
           median(t, n, offsetof(trial_t, freeze_p50_ms)), ok, n, exact);
}

static void print_ratio(const char *what, setup_t a, setup_t b, trial_t t[NSETUPS][MAX_ROUNDS], int n)
{
    double in_a = median(t[a], n, offsetof(trial_t, inputs_per_s)),
           in_b = median(t[b], n, offsetof(trial_t, inputs_per_s));
    double cpu_a = median(t[a], n, offsetof(trial_t, nats_cpu_ms_per_k)),
           cpu_b = median(t[b], n, offsetof(trial_t, nats_cpu_ms_per_k));
    double fr_a = median(t[a], n, offsetof(trial_t, freeze_p50_ms)),
           fr_b = median(t[b], n, offsetof(trial_t, freeze_p50_ms));
    printf("  %-11s %12.2f %18.2f %20.2f   (%s / %s)\n", what, in_a > 0 ? in_b / in_a : 0,
           cpu_a > 0 ? cpu_b / cpu_a : 0, fr_a > 0 ? fr_b / fr_a : 0, setup_name[b], setup_name[a]);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr,
                "usage: tessera-bench-cluster\n"
                "Input throughput, NATS CPU per input and handover freeze with NATS auth+TLS on vs off\n"
                "and with R3 vs R1 streams on a 3-node JetStream cluster, interleaved rounds, medians.\n"
                "Environment: BENCH_CLUSTER_ROUNDS (3), BENCH_CLUSTER_PLAYERS (2000),\n"
                "BENCH_CLUSTER_RATE (20), BENCH_CLUSTER_WINDOW_S (5), BENCH_CLUSTER_HANDOVERS (10),\n"
                "BENCH_CLUSTER_HANDOVER_PLAYERS (500).\n");
        return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    ts_log_init("tessera-bench-cluster", TS_LOG_ERROR, false);
    knobs_t k = {
        .rounds = env_int("BENCH_CLUSTER_ROUNDS", 3, 1, MAX_ROUNDS),
        .players = env_int("BENCH_CLUSTER_PLAYERS", 2000, 1, 100000),
        .rate = env_int("BENCH_CLUSTER_RATE", 20, 1, 1000),
        .window_s = env_int("BENCH_CLUSTER_WINDOW_S", 5, 1, 60),
        .handovers = env_int("BENCH_CLUSTER_HANDOVERS", 10, 1, MAX_HANDOVERS),
        .handover_players = env_int("BENCH_CLUSTER_HANDOVER_PLAYERS", 500, 1, 100000),
    };
    printf("tessera-bench-cluster: %d rounds of open / auth+TLS / cluster R1 / cluster R3 (ABBA order); "
           "%d handovers each under %d players x 10 inputs/s, then inputs/s over %d s with %d players x %d "
           "inputs/s offered (%d/s)\n",
           k.rounds, k.handovers, k.handover_players, k.window_s, k.players, k.rate, k.players * k.rate);
    fflush(stdout);
    static trial_t t[NSETUPS][MAX_ROUNDS];
    bool all_ok = true;
    for (int r = 0; r < k.rounds; r++) {
        /* ABBA: each pair's order alternates, so a drifting machine favours neither */
        setup_t order[NSETUPS] = {SETUP_OPEN, SETUP_SECURE, SETUP_R1, SETUP_R3};
        if (r % 2) {
            order[0] = SETUP_SECURE;
            order[1] = SETUP_OPEN;
            order[2] = SETUP_R3;
            order[3] = SETUP_R1;
        }
        for (int i = 0; i < NSETUPS; i++) {
            setup_t s = order[i];
            trial_t *tr = &t[s][r];
            *tr = run_trial(s, &k);
            all_ok = all_ok && tr->ok;
            printf("  round %d %-11s inputs/s %8.0f  NATS CPU ms/1k inputs %6.2f  freeze p50 %6.2f ms (%d "
                   "handovers; their load: %s)\n",
                   r + 1, setup_name[s], tr->inputs_per_s, tr->nats_cpu_ms_per_k, tr->freeze_p50_ms,
                   tr->handovers_ok, tr->verdict);
            fflush(stdout);
        }
    }
    printf("\n  %-11s %12s %18s %20s\n", "medians", "inputs/s", "NATS CPU ms/1k in", "handover freeze ms");
    for (int s = 0; s < NSETUPS; s++)
        print_row((setup_t)s, t[s], k.rounds);
    printf("  %-11s %12s %18s %20s\n", "ratios", "inputs/s", "NATS CPU", "freeze");
    print_ratio("security", SETUP_OPEN, SETUP_SECURE, t, k.rounds);
    print_ratio("replicas", SETUP_R1, SETUP_R3, t, k.rounds);
    ts_bus_shutdown_library();
    return all_ok ? 0 : 1;
}
