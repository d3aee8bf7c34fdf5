/* tessera-bench: live handover and crash recovery figures under load.
 *
 * Starts its own nats-server -js and redis-server on free loopback ports
 * (through the integration-test harness, so every process it starts is
 * reaped whatever happens), tessera-orch without automatic rebalancing,
 * workers w1 and w2 and tessera-sim, then measures and prints:
 *   1. inputs applied per second (sum of the workers' heartbeat counters)
 *      while the sim's players play;
 *   2. the freeze window and the whole duration of handovers under that load,
 *      as the orchestrator's replies on tessera.ctl.<world>.handover report
 *      them (p50 / p99);
 *   3. the time from SIGKILL of a worker to all its cells reassigned in the
 *      registry, and to all of them reported bound by the surviving worker
 *      (median of several runs; the killed worker is restarted and given its
 *      cells back between runs);
 *   4. the sim's verdict: inputs sent, acknowledged and applied (and, when
 *      they differ, the input ledger's account of which inputs of which
 *      entities went missing, where and when).
 * It is bounded: every phase has a deadline and the whole run stays under
 * three minutes. Exit status 0 when every figure was measured, 1 otherwise
 * (targets missed are reported, not fatal). */
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
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "ledger.h"
#include "probe.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define WAIT_MS 20000
#define CTL_TIMEOUT_MS 10000
#define HANDOVER_PHASE_MS 60000
#define RECOVERY_TIMEOUT_US 10000000ULL
#define FREEZE_P99_TARGET_US 5000.0
#define RECOVERY_TARGET_MS 3000.0
#define MAX_HANDOVERS 1000
#define MAX_KILLS 5

typedef struct {
    int players;
    int rate_hz;
    int handovers;
    int kills;
    int throughput_s;
} options_t;

static ts_h_t H;
static ts_bus_t *bus;
static ts_registry_t *reg;
static ts_probe_t *probe;
static ts_ledger_t *ledger;
static int w1_idx = -1, w2_idx = -1;
static int w2_restarts;
static int sim_idx = -1;

/* ---- control requests -------------------------------------------------------------- */

/* Moves cell to worker `to`; on success fills freeze / total (us) when not
 * NULL. reply receives the orchestrator's answer. */
static bool handover(const ts_cell_t *cell, const char *to, double *freeze_us, double *total_us, char *reply,
                     size_t cap)
{
    char key[TS_CELL_STR_MAX], payload[160];
    ts_cell_format(cell, key, sizeof key);
    snprintf(payload, sizeof payload, "%s %s", key, to);
    if (ts_probe_ctl(bus, WORLD, "handover", payload, CTL_TIMEOUT_MS, reply, cap) != TS_OK) {
        snprintf(reply, cap, "no reply");
        return false;
    }
    ts_probe_handover_t r;
    if (!ts_probe_parse_handover(reply, &r)) return false;
    if (freeze_us) *freeze_us = (double)r.freeze_us;
    if (total_us) *total_us = (double)r.total_us;
    return true;
}

/* ---- cluster ------------------------------------------------------------------------- */

static int spawn_worker(const char *id, const char *name)
{
    char arg[64];
    snprintf(arg, sizeof arg, "--worker.id=%s", id);
    const char *args[] = {arg, "--worker.hb_ms=250", "--orch.hb_ttl_ms=1500", NULL};
    return ts_h_spawn(&H, name, "tessera-worker", args);
}

static bool wait_ready(void)
{
    char reply[1024];
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    bool ctl_ok = false, bound = false;
    while (ts_mono_us() < deadline && !(ctl_ok && bound)) {
        if (!ctl_ok)
            ctl_ok =
                ts_probe_ctl(bus, WORLD, "stats", "", 500, reply, sizeof reply) == TS_OK && reply[0] == '{';
        ts_probe_hb_t a, b;
        bound = ts_probe_heartbeat(probe, "w1", &a) && ts_probe_heartbeat(probe, "w2", &b) &&
                a.ncells + b.ncells == NCELLS;
        ts_sleep_ms(100);
    }
    if (!ctl_ok)
        fprintf(stderr, "tessera-bench: tessera-orch does not answer tessera.ctl.%d.stats\n", WORLD);
    else if (!bound)
        fprintf(stderr, "tessera-bench: workers w1 and w2 did not report all %d cells\n", NCELLS);
    return ctl_ok && bound;
}

static bool cluster_start(const options_t *o)
{
    ts_h_start(&H);
    if (ts_bus_connect(&bus, H.nats_url, "tessera-bench") != TS_OK ||
        ts_registry_connect(&reg, H.redis_url) != TS_OK) {
        fprintf(stderr, "tessera-bench: cannot connect to the servers it started\n");
        return false;
    }
    if (ts_probe_create(&probe, bus) != TS_OK || ts_ledger_create(&ledger, bus, WORLD) != TS_OK) return false;
    const char *orch[] = {"--orch.rebalance=0", "--orch.hb_ttl_ms=1500", NULL};
    ts_h_spawn(&H, "orch", "tessera-orch", orch);
    w1_idx = spawn_worker("w1", "w1");
    w2_idx = spawn_worker("w2", "w2");
    if (!ts_h_wait_world(&H, WORLD, NCELLS, WAIT_MS) || !wait_ready()) return false;
    char players[48], rate[48];
    snprintf(players, sizeof players, "--sim.players=%d", o->players);
    snprintf(rate, sizeof rate, "--sim.rate_hz=%d", o->rate_hz);
    const char *sim[] = {players, rate, NULL};
    sim_idx = ts_h_spawn(&H, "sim", "tessera-sim", sim);
    return true;
}

/* ---- phases ------------------------------------------------------------------------- */

static double measure_throughput(int seconds, double *tick_p99_ms)
{
    uint64_t a0 = ts_probe_inputs_applied(probe), t0 = ts_mono_us();
    ts_sleep_ms((int64_t)seconds * 1000);
    uint64_t a1 = ts_probe_inputs_applied(probe), t1 = ts_mono_us();
    *tick_p99_ms = 0;
    ts_probe_hb_t l;
    for (int i = 0; i < 2; i++)
        if (ts_probe_heartbeat(probe, i ? "w2" : "w1", &l) && l.tick_p99_ms > *tick_p99_ms)
            *tick_p99_ms = l.tick_p99_ms;
    return (double)(a1 - a0) / ((double)(t1 - t0) / 1e6);
}

/* Runs n handovers of random cells to the other worker. Returns how many
 * succeeded; their freeze and total times go to freeze[] / total[]. */
static int run_handovers(int n, double *freeze, double *total, int *errors)
{
    ts_rng_t rng;
    ts_rng_seed(&rng, 99);
    int ok = 0;
    *errors = 0;
    uint64_t deadline = ts_mono_us() + HANDOVER_PHASE_MS * 1000ULL;
    for (int i = 0; i < n && ts_mono_us() < deadline; i++) {
        ts_cell_entry_t *cells = NULL;
        size_t ncells = 0;
        if (ts_registry_cells(reg, WORLD, &cells, &ncells) != TS_OK || ncells == 0) {
            free(cells);
            break;
        }
        const ts_cell_entry_t *e = &cells[ts_rng_next(&rng) % ncells];
        const char *to = strcmp(e->owner, "w1") == 0 ? "w2" : "w1";
        char reply[512];
        if (handover(&e->cell, to, &freeze[ok], &total[ok], reply, sizeof reply)) {
            ok++;
        } else if ((*errors)++ < 5) {
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&e->cell, key, sizeof key);
            fprintf(stderr, "tessera-bench: handover of %s to %s: %s\n", key, to, reply);
        }
        free(cells);
    }
    return ok;
}

/* Gives w2 the cells of the default layout (cx >= 0) and w1 the others. */
static bool restore_layout(void)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    if (ts_registry_cells(reg, WORLD, &cells, &n) != TS_OK) return false;
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        const char *want = cells[i].cell.cx < 0 ? "w1" : "w2";
        char reply[512];
        if (strcmp(cells[i].owner, want) != 0 &&
            !handover(&cells[i].cell, want, NULL, NULL, reply, sizeof reply)) {
            fprintf(stderr, "tessera-bench: cannot restore the layout: %s\n", reply);
            ok = false;
        }
    }
    free(cells);
    return ok;
}

/* Kills w2 and measures until its cells are reassigned (registry) and
 * reported bound by w1 (heartbeat); restarts w2. since_us: the reference
 * time the kill is printed against (the ledger uses the same). */
static bool run_recovery(uint64_t since_us, double *registry_ms, double *bound_ms)
{
    ts_cell_entry_t *cells = NULL, lost[NCELLS];
    size_t n = 0, nlost = 0;
    if (ts_registry_cells(reg, WORLD, &cells, &n) != TS_OK) return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(cells[i].owner, "w2") == 0 && nlost < NCELLS) lost[nlost++] = cells[i];
    free(cells);
    if (nlost == 0) return false;

    uint64_t t_kill = ts_mono_us();
    printf("  SIGKILL w2 (%zu cells) at %+.2f s from the first handover\n", nlost,
           (double)(t_kill - since_us) / 1e6);
    fflush(stdout);
    ts_h_signal(&H, w2_idx, SIGKILL);
    ts_probe_cell_t moved[NCELLS];
    *registry_ms = *bound_ms = -1;
    while (ts_mono_us() - t_kill < RECOVERY_TIMEOUT_US && (*registry_ms < 0 || *bound_ms < 0)) {
        if (*registry_ms < 0) {
            size_t done = 0;
            for (size_t i = 0; i < nlost; i++) {
                ts_cell_entry_t e;
                if (ts_registry_cell_get(reg, &lost[i].cell, &e) == TS_OK && strcmp(e.owner, "w2") != 0 &&
                    e.epoch > lost[i].epoch) {
                    moved[i] = (ts_probe_cell_t){e.cell, e.epoch};
                    done++;
                }
            }
            if (done == nlost) *registry_ms = (double)(ts_mono_us() - t_kill) / 1000;
        } else {
            ts_probe_hb_t l;
            if (ts_probe_heartbeat(probe, "w1", &l) && l.received_us > t_kill &&
                ts_probe_hb_lists(&l, moved, nlost))
                *bound_ms = (double)(l.received_us - t_kill) / 1000;
        }
        ts_sleep_ms(10);
    }
    ts_h_wait(&H, w2_idx, 2000);
    char name[32];
    snprintf(name, sizeof name, "w2-restart-%d", ++w2_restarts);
    w2_idx = spawn_worker("w2", name);
    /* wait for the new w2 to be alive before handing it cells */
    uint64_t t_spawn = ts_mono_us();
    ts_probe_hb_t l;
    while (!(ts_probe_heartbeat(probe, "w2", &l) && l.received_us > t_spawn) &&
           ts_mono_us() - t_spawn < WAIT_MS * 1000ULL)
        ts_sleep_ms(50);
    return *registry_ms >= 0 && *bound_ms >= 0;
}

static void cpu_model(char *out, size_t cap)
{
    ts_strlcpy(out, "unknown CPU", cap);
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            const char *v = strchr(line, ':');
            if (v != NULL) {
                v++;
                while (*v == ' ')
                    v++;
                ts_strlcpy(out, v, cap);
                out[strcspn(out, "\n")] = '\0';
            }
            break;
        }
    }
    fclose(f);
}

/* Stops the sim and reads its verdict; on a mismatch the ledger says which
 * inputs went missing, timed from since_us. */
static void sim_verdict(int idx, uint64_t since_us, ts_probe_verdict_t *v)
{
    ts_h_signal(&H, idx, SIGINT);
    ts_h_wait(&H, idx, 30000);
    char *log = ts_h_read_log(&H, idx);
    ts_probe_sim_verdict(log, v);
    free(log);
    if (!ts_probe_verdict_exact(v)) {
        ts_sleep_ms(500);
        ts_ledger_report(ledger, stderr, "the first handover", since_us, 5);
    }
}

/* Stops both workers: a first SIGTERM asks for a drain, a second one cuts
 * it short (there is nobody left to take the cells). */
static void stop_workers(void)
{
    for (int round = 0; round < 2; round++) {
        ts_h_signal(&H, w1_idx, SIGTERM);
        ts_h_signal(&H, w2_idx, SIGTERM);
        ts_sleep_ms(100);
    }
    ts_h_wait(&H, w1_idx, 3000);
    ts_h_wait(&H, w2_idx, 3000);
}

/* ---- main ---------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tessera-bench [--players N] [--rate-hz N] [--handovers N] [--kills N] [--throughput-s N]\n"
        "Starts nats-server, redis-server, tessera-orch, workers w1 and w2 and tessera-sim on free\n"
        "loopback ports and prints handover freeze/duration percentiles, crash recovery time and\n"
        "the inputs applied per second. Defaults: 1000 players, 5 inputs/s each, 150 handovers,\n"
        "3 kills, 10 s of throughput. Binaries come from %s.\n",
        TS_BIN_DIR);
}

static bool parse_options(int argc, char **argv, options_t *o)
{
    *o = (options_t){.players = 1000, .rate_hz = 5, .handovers = 150, .kills = 3, .throughput_s = 10};
    for (int i = 1; i < argc; i++) {
        struct {
            const char *name;
            int *val;
            int min, max;
        } opts[] = {{"--players", &o->players, 1, 100000},
                    {"--rate-hz", &o->rate_hz, 1, 1000},
                    {"--handovers", &o->handovers, 1, MAX_HANDOVERS},
                    {"--kills", &o->kills, 0, MAX_KILLS},
                    {"--throughput-s", &o->throughput_s, 1, 60}};
        size_t k = 0;
        while (k < sizeof opts / sizeof opts[0] && strcmp(argv[i], opts[k].name) != 0)
            k++;
        if (k == sizeof opts / sizeof opts[0] || i + 1 >= argc) {
            fprintf(stderr, "tessera-bench: %s '%s'\n",
                    i + 1 >= argc && k < sizeof opts / sizeof opts[0] ? "missing value for"
                                                                      : "unknown option",
                    argv[i]);
            return false;
        }
        int64_t v;
        if (ts_parse_i64(argv[++i], &v) != TS_OK || v < opts[k].min || v > opts[k].max) {
            fprintf(stderr, "tessera-bench: %s must be %d..%d, got '%s'\n", opts[k].name, opts[k].min,
                    opts[k].max, argv[i]);
            return false;
        }
        *opts[k].val = (int)v;
    }
    return true;
}

static const char *verdict(bool met)
{
    return met ? "ok" : "MISSED";
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    }
    options_t o;
    if (!parse_options(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    ts_log_init("tessera-bench", TS_LOG_ERROR, false);
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t t_start = ts_mono_us();
    int rc = 1;
    static double freeze[MAX_HANDOVERS], total[MAX_HANDOVERS];
    double reg_ms[MAX_KILLS], bound_ms[MAX_KILLS];
    int kills_done = 0, handovers_ok = 0, handover_errors = 0;
    double throughput = 0, tick_p99 = 0;
    ts_probe_verdict_t sim = {.line = "not run"};
    uint64_t t_handovers = 0;

    printf("tessera-bench: %ld CPUs (%s); %d sim players at %d inputs/s each\n", ncpu, cpu, o.players,
           o.rate_hz);
    fflush(stdout);
    if (!cluster_start(&o)) {
        H.failed = true;
        goto done;
    }
    ts_sleep_ms(3000);

    printf("measuring throughput for %d s...\n", o.throughput_s);
    fflush(stdout);
    throughput = measure_throughput(o.throughput_s, &tick_p99);

    printf("running %d handovers under load...\n", o.handovers);
    fflush(stdout);
    t_handovers = ts_mono_us();
    handovers_ok = run_handovers(o.handovers, freeze, total, &handover_errors);

    for (int k = 0; k < o.kills; k++) {
        printf("recovery run %d/%d: SIGKILL w2...\n", k + 1, o.kills);
        fflush(stdout);
        if (!restore_layout() || !run_recovery(t_handovers, &reg_ms[kills_done], &bound_ms[kills_done]))
            break;
        kills_done++;
    }
    sim_verdict(sim_idx, t_handovers, &sim);
    stop_workers();

    double fr50 = ts_percentile(freeze, (size_t)handovers_ok, 50);
    double fr99 = ts_percentile(freeze, (size_t)handovers_ok, 99);
    double to50 = ts_percentile(total, (size_t)handovers_ok, 50);
    double to99 = ts_percentile(total, (size_t)handovers_ok, 99);
    double reg_runs[MAX_KILLS], bound_runs[MAX_KILLS];
    memcpy(reg_runs, reg_ms, sizeof reg_runs);
    memcpy(bound_runs, bound_ms, sizeof bound_runs);
    double reg_med = ts_percentile(reg_ms, (size_t)kills_done, 50);
    double bound_med = ts_percentile(bound_ms, (size_t)kills_done, 50);

    printf("\n== tessera-bench results (%ld CPUs, %s) ==\n", ncpu, cpu);
    printf("handover freeze window    p50 %8.2f ms  p99 %8.2f ms   target p99 <= %.0f ms: %s  (%d ok, %d "
           "failed)\n",
           fr50 / 1000, fr99 / 1000, FREEZE_P99_TARGET_US / 1000,
           verdict(handovers_ok > 0 && fr99 <= FREEZE_P99_TARGET_US), handovers_ok, handover_errors);
    printf("handover whole duration   p50 %8.2f ms  p99 %8.2f ms\n", to50 / 1000, to99 / 1000);
    printf("SIGKILL -> cells reassigned   median %6.0f ms  runs:", reg_med);
    for (int k = 0; k < kills_done; k++)
        printf(" %.0f", reg_runs[k]);
    printf("\nSIGKILL -> bound elsewhere    median %6.0f ms  runs:", bound_med);
    for (int k = 0; k < kills_done; k++)
        printf(" %.0f", bound_runs[k]);
    printf("   target <= %.0f ms: %s\n", RECOVERY_TARGET_MS,
           verdict(kills_done > 0 && bound_med <= RECOVERY_TARGET_MS));
    printf("inputs applied            %8.0f /s sustained over %d s (offered %d/s), worker tick p99 %.2f ms\n",
           throughput, o.throughput_s, o.players * o.rate_hz, tick_p99);
    printf("sim verdict               %s (%s)\n", sim.line,
           ts_probe_verdict_exact(&sim) ? "no input lost or doubled" : "MISMATCH");
    printf("bench took %.0f s\n", (double)(ts_mono_us() - t_start) / 1e6);
    rc = handovers_ok > 0 && kills_done == o.kills ? 0 : 1;
    if (!ts_probe_verdict_exact(&sim)) H.failed = true;

done:
    fflush(stdout);
    if (rc != 0) H.failed = true;
    ts_ledger_destroy(ledger);
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    ts_h_stop(&H);
    ts_bus_shutdown_library();
    return rc;
}
