/* tessera-bench-scale: how big a crowd Tessera holds on this machine.
 *
 * Four phases, each on its own nats-server -js and redis-server on free
 * loopback ports (through the integration-test harness, so every process it
 * starts is reaped whatever happens), each bounded in time:
 *
 *   entities  one worker owns every cell of a 16x16 world; tessera-sim
 *             players (bus mode, 5 inputs/s each, walking across cells at the
 *             sim's default speed) grow in steps until the worker's tick p99
 *             exceeds 25 ms or it misses ticks; the largest count that held.
 *   inputs    1,000 gateway clients (tessera-sim --via-gateway) at growing
 *             input rates: inputs/s applied exactly once, inputs per
 *             JetStream message in the input stream, then a raw nats.c async
 *             JetStream publisher of the same message (payload and headers
 *             taken from the stream) against the same server.
 *   clients   growing numbers of gateway clients at 10 moves/s: the largest
 *             count with input -> own state p99 <= 100 ms and nothing
 *             missing, and the p50 there.
 *   world     a 64x64-cell world on 4 workers with a gateway: threads per
 *             worker and gateway, CPU of the idle orchestrator and gateway,
 *             then 10,000 players and a SIGKILL of the busiest worker (about
 *             a thousand cells) until all its cells are owned and reported
 *             bound elsewhere.
 *
 * Every figure is printed with its target and ok or MISSED; a target missed
 * is never an error. Exit status 0 when every phase ran, 1 otherwise.
 * Knobs are environment variables (see usage()). */
#include <errno.h>
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
#include "hbwatch.h"
#include "probe.h"
#include "procstat.h"
#include "rawjs.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define WORLD 0
#define RAW_WORLD 4242 /* the raw publisher's stream: same config as Tessera's, other subjects */
#define MAX_STEPS 16
#define READY_MS 60000
#define SIM_STOP_MS 30000
#define RAW_MAX_PENDING 16384 /* in flight, as Tessera's bus allows */

/* targets (issue "Scale core", deliverable 8) */
#define TARGET_ENTITIES 20000
#define TARGET_TICK_P99_MS 25.0
#define TARGET_INPUTS_PER_S 250000.0
#define TARGET_INPUTS_PER_MSG 10.0
#define TARGET_CLIENTS 5000
#define TARGET_CLIENT_P99_MS 100.0
#define TARGET_CLIENT_P50_MS 35.0
#define TARGET_RECOVERY_MS 3000.0
#define TARGET_THREADS 16

/* ---- knobs ----------------------------------------------------------------------------- */

typedef struct {
    int steps[MAX_STEPS];
    int n;
} steps_t;

typedef struct {
    char phases[128];
    steps_t entity_steps;
    int entity_window_s;
    int phase_budget_s;
    int input_clients;
    steps_t input_rates;
    int input_s;
    int raw_s;
    steps_t client_steps;
    int client_rate_hz;
    int client_s;
    int world_side;
    int world_workers;
    int world_players;
    int world_ready_s;
    int idle_s;
    char sim_bin[1024];
} knobs_t;

static int env_int(const char *name, int def, int min, int max)
{
    const char *v = getenv(name);
    int64_t x;
    if (v == NULL || v[0] == '\0') return def;
    if (ts_parse_i64(v, &x) != TS_OK || x < min || x > max) {
        fprintf(stderr, "tessera-bench-scale: %s must be %d..%d, got '%s'; using %d\n", name, min, max, v,
                def);
        return def;
    }
    return (int)x;
}

static void env_steps(const char *name, const char *def, steps_t *out)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0') v = def;
    char buf[256];
    ts_strlcpy(buf, v, sizeof buf);
    out->n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, " ,", &save); tok != NULL && out->n < MAX_STEPS;
         tok = strtok_r(NULL, " ,", &save)) {
        int64_t x;
        if (ts_parse_i64(tok, &x) == TS_OK && x > 0 && x <= 1000000) out->steps[out->n++] = (int)x;
    }
}

static void knobs_load(knobs_t *k)
{
    memset(k, 0, sizeof *k);
    const char *ph = getenv("BENCH_PHASES");
    ts_strlcpy(k->phases, ph && ph[0] ? ph : "entities,inputs,clients,world", sizeof k->phases);
    env_steps("BENCH_ENTITY_STEPS", "250 500 1000 2000 5000 10000 20000 30000", &k->entity_steps);
    k->entity_window_s = env_int("BENCH_ENTITY_WINDOW_S", 13, 2, 120);
    k->phase_budget_s = env_int("BENCH_PHASE_BUDGET_S", 200, 30, 3600);
    k->input_clients = env_int("BENCH_INPUT_CLIENTS", 1000, 1, 100000);
    env_steps("BENCH_INPUT_RATES", "10 50 250", &k->input_rates);
    k->input_s = env_int("BENCH_INPUT_S", 15, 6, 600);
    k->raw_s = env_int("BENCH_RAW_S", 5, 1, 60);
    env_steps("BENCH_CLIENT_STEPS", "100 500 1000 1500 2000 3500 5000", &k->client_steps);
    k->client_rate_hz = env_int("BENCH_CLIENT_RATE_HZ", 10, 1, 1000);
    k->client_s = env_int("BENCH_CLIENT_S", 15, 5, 600);
    k->world_side = env_int("BENCH_WORLD_SIDE", 64, 2, 1024);
    k->world_workers = env_int("BENCH_WORLD_WORKERS", 4, 2, 8);
    k->world_players = env_int("BENCH_WORLD_PLAYERS", 10000, 1, 1000000);
    k->world_ready_s = env_int("BENCH_WORLD_READY_S", 120, 10, 1200);
    k->idle_s = env_int("BENCH_IDLE_S", 10, 1, 120);
    const char *sim = getenv("BENCH_SIM_BIN");
    if (sim && sim[0])
        ts_strlcpy(k->sim_bin, sim, sizeof k->sim_bin);
    else
        snprintf(k->sim_bin, sizeof k->sim_bin, "%s/tessera-sim", TS_BIN_DIR);
}

static bool phase_on(const knobs_t *k, const char *name)
{
    char buf[sizeof k->phases];
    ts_strlcpy(buf, k->phases, sizeof buf);
    for (char *save = NULL, *tok = strtok_r(buf, " ,", &save); tok != NULL; tok = strtok_r(NULL, " ,", &save))
        if (strcmp(tok, name) == 0 || strcmp(tok, "all") == 0) return true;
    return false;
}

/* ---- results ------------------------------------------------------------------------------ */

typedef struct {
    /* entities */
    bool entities_ran;
    int entities_held;       /* largest count that held, 0: none */
    char entities_note[256]; /* what the first count that did not hold showed */
    /* inputs */
    bool inputs_ran, inputs_via_gateway;
    double inputs_per_s;     /* best exactly-once rate */
    int inputs_rate_hz;      /* the per-client rate of that step */
    double inputs_per_msg;   /* at the first (lowest) rate: the hardest case for batching */
    double batch_count_mean; /* mean Ts-Count of sampled InputBatch messages, same step */
    int inputs_msg_rate_hz;  /* that step's per-client rate */
    char inputs_note[256];
    bool raw_ran;
    double raw_msgs_per_s, tessera_msgs_per_s;
    size_t raw_payload;
    /* clients */
    bool clients_ran;
    int clients_held;
    double clients_p50, clients_p99;
    char clients_note[256];
    /* world */
    bool world_ran, world_bound;
    double world_bind_s;
    int worker_threads, gateway_threads;
    int worker_threads_binding; /* right after binding: extra I/O threads still running */
    int gateway_threads_loaded, gateway_threads_clients; /* most seen while clients played, and how many */
    double orch_idle_pct, gateway_idle_pct;
    size_t recovery_cells;
    double recovery_registry_ms, recovery_bound_ms;
    double loaded_nats_pct, loaded_workers_pct; /* the players' load, before the kill (-1: not measured) */
    double loaded_cpu_s;
    char world_note[256];
} results_t;

/* ---- cluster plumbing -------------------------------------------------------------------- */

static ts_h_t H;
static ts_bus_t *bus;
static ts_registry_t *reg;
static ts_hbwatch_t *hbw;
static ts_rawjs_t *raw;

/* A NULL-terminated argv built from printf formats. */
typedef struct {
    char buf[24][160];
    const char *argv[25];
    int n;
} args_t;

static void args_add(args_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void args_add(args_t *a, const char *fmt, ...)
{
    if (a->n >= 24) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->buf[a->n], sizeof a->buf[a->n], fmt, ap);
    va_end(ap);
    a->argv[a->n] = a->buf[a->n];
    a->n++;
    a->argv[a->n] = NULL;
}

static bool servers_start(void)
{
    ts_h_start(&H);
    if (ts_bus_connect(&bus, H.nats_url, "tessera-bench-scale") != TS_OK ||
        ts_registry_connect(&reg, H.redis_url) != TS_OK || ts_hbwatch_create(&hbw, bus) != TS_OK ||
        ts_rawjs_connect(&raw, H.nats_url) != TS_OK) {
        fprintf(stderr, "tessera-bench-scale: cannot connect to the servers it started\n");
        return false;
    }
    return true;
}

static void servers_stop(void)
{
    ts_hbwatch_destroy(hbw);
    hbw = NULL;
    ts_rawjs_destroy(raw);
    raw = NULL;
    ts_bus_destroy(bus);
    bus = NULL;
    ts_registry_destroy(reg);
    reg = NULL;
    ts_h_stop(&H);
}

static int spawn(const char *name, const char *bin, const args_t *a)
{
    return ts_h_spawn(&H, name, bin, a->argv);
}

static int spawn_worker(const char *id)
{
    args_t a = {0};
    args_add(&a, "--worker.id=%s", id);
    args_add(&a, "--worker.hb_ms=250");
    args_add(&a, "--orch.hb_ttl_ms=1500");
    return spawn(id, "tessera-worker", &a);
}

/* Cells of the world whose registry owner's latest heartbeat lists them at
 * their registry epoch. */
static size_t cells_bound(size_t *ncells)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0, bound = 0;
    if (ts_registry_cells(reg, WORLD, &cells, &n) == TS_OK)
        for (size_t i = 0; i < n; i++)
            bound += cells[i].owner[0] &&
                     ts_hbwatch_lists(hbw, cells[i].owner, &cells[i].cell, cells[i].epoch, 0, NULL);
    free(cells);
    if (ncells) *ncells = n;
    return bound;
}

/* Waits until all total cells of the world are owned and reported bound by
 * their owners; *bound_out gets how many were. */
static bool wait_bound(size_t total, int64_t timeout_ms, size_t *bound_out)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000;
    size_t bound = 0, n = 0;
    for (;;) {
        bound = cells_bound(&n);
        if ((n >= total && bound >= n) || ts_mono_us() >= deadline) break;
        ts_sleep_ms(200);
    }
    if (bound_out) *bound_out = bound;
    return n >= total && bound >= n;
}

/* Stops a sim: SIGINT, then SIGKILL if it does not exit in time. Returns its log (caller frees). */
static char *sim_stop(int idx, int64_t timeout_ms)
{
    ts_h_signal(&H, idx, SIGINT);
    if (ts_h_wait(&H, idx, timeout_ms) < 0) {
        fprintf(stderr, "tessera-bench-scale: %s did not stop in %lld ms, killing it\n", H.procs[idx].name,
                (long long)timeout_ms);
        ts_h_signal(&H, idx, SIGKILL);
        ts_h_wait(&H, idx, 5000);
    }
    return ts_h_read_log(&H, idx);
}

static bool sim_has_via_gateway(const char *sim)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' --help 2>&1", sim);
    FILE *p = popen(cmd, "r");
    if (p == NULL) return false;
    char line[512];
    bool found = false;
    while (fgets(line, sizeof line, p))
        if (strstr(line, "via-gateway")) found = true;
    pclose(p);
    return found;
}

/* The final line of tessera-sim --via-gateway. */
typedef struct {
    bool parsed;
    double clients, connected, sent, applied, missing, errors, p50, p99, p999, deltas, bytes;
    char line[512];
} via_t;

static bool kv(const char *line, const char *key, double *out)
{
    char pat[48];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    if (p == NULL) return false;
    char *end;
    errno = 0;
    *out = strtod(p + strlen(pat), &end);
    return end != p + strlen(pat) && errno == 0;
}

static void via_parse(const char *log, via_t *v)
{
    memset(v, 0, sizeof *v);
    ts_strlcpy(v->line, "no via-gateway line", sizeof v->line);
    const char *line = NULL;
    for (const char *p = log; p != NULL && (p = strstr(p, "via-gateway: clients=")) != NULL; p++)
        line = p;
    if (line == NULL) return;
    size_t len = strcspn(line, "\n");
    if (len >= sizeof v->line) len = sizeof v->line - 1;
    memcpy(v->line, line, len);
    v->line[len] = '\0';
    /* kv() wants a space before each key: the first key follows "via-gateway:" */
    v->parsed = kv(v->line, "clients", &v->clients) && kv(v->line, "connected", &v->connected) &&
                kv(v->line, "sent", &v->sent) && kv(v->line, "applied", &v->applied) &&
                kv(v->line, "missing", &v->missing) && kv(v->line, "errors", &v->errors) &&
                kv(v->line, "lat_p50_ms", &v->p50) && kv(v->line, "lat_p99_ms", &v->p99);
    kv(v->line, "lat_p999_ms", &v->p999);
    kv(v->line, "deltas_per_s_per_client", &v->deltas);
    kv(v->line, "bytes_per_s_per_client", &v->bytes);
}

static const char *verdict(bool met)
{
    return met ? "ok" : "MISSED";
}

/* The targets of the input figures are for gateway clients. */
static const char *gw_verdict(bool via_gateway, bool met)
{
    return via_gateway ? verdict(met) : "MISSED (bus mode: not the target's setup)";
}

static void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("  ", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

/* ---- phase: entities per worker -------------------------------------------------------------- */

static void phase_entities(const knobs_t *k, results_t *r)
{
    printf("entities per worker: 1 worker, 16x16 cells, bus-mode sim at 5 inputs/s per player, steps of "
           "%d s\n",
           k->entity_window_s);
    fflush(stdout);
    r->entities_ran = true;
    if (!servers_start()) return;
    args_t o = {0};
    args_add(&o, "--world.width=16");
    args_add(&o, "--world.height=16");
    args_add(&o, "--world.x0=-8");
    args_add(&o, "--world.y0=-8");
    args_add(&o, "--world.workers=w1");
    args_add(&o, "--orch.rebalance=0");
    spawn("orch", "tessera-orch", &o);
    int w1 = spawn_worker("w1");
    size_t bound = 0;
    if (!ts_h_wait_world(&H, WORLD, 256, READY_MS) || !wait_bound(256, READY_MS, &bound)) {
        snprintf(r->entities_note, sizeof r->entities_note, "the worker bound %zu of 256 cells in %d s",
                 bound, READY_MS / 1000);
        H.failed = true;
        servers_stop();
        return;
    }
    uint64_t budget_end = ts_mono_us() + (uint64_t)k->phase_budget_s * 1000000;
    for (int s = 0; s < k->entity_steps.n; s++) {
        int n = k->entity_steps.steps[s];
        if (ts_mono_us() >= budget_end) {
            snprintf(r->entities_note, sizeof r->entities_note,
                     "stopped before %d: phase budget of %d s spent", n, k->phase_budget_s);
            break;
        }
        char name[32];
        snprintf(name, sizeof name, "sim-%d", n);
        args_t a = {0};
        args_add(&a, "--sim.players=%d", n);
        args_add(&a, "--sim.rate_hz=5");
        int sim = spawn(name, k->sim_bin, &a);
        /* warm-up: every player joined (the worker holds them), then one tick window */
        uint64_t t_spawn = ts_mono_us(), reach_deadline = t_spawn + 30000000ULL;
        ts_hbwatch_hb_t hb = {0};
        bool reached = false;
        while (ts_mono_us() < reach_deadline) {
            if (ts_hbwatch_get(hbw, "w1", &hb) && hb.received_us > t_spawn &&
                hb.entities >= (uint32_t)(n * 98 / 100)) {
                reached = true;
                break;
            }
            ts_sleep_ms(100);
        }
        ts_sleep_ms(1000);
        ts_hbwatch_hb_t h0 = {0}, h1 = {0};
        ts_hbwatch_mark(hbw);
        ts_hbwatch_get(hbw, "w1", &h0);
        ts_sleep_ms((int64_t)k->entity_window_s * 1000);
        ts_hbwatch_get(hbw, "w1", &h1);
        double secs = (double)(h1.received_us - h0.received_us) / 1e6;
        double tick_hz = secs > 0 ? (double)(h1.ticks - h0.ticks) / secs : 0;
        int64_t missed =
            h1.ticks_missed >= 0 && h0.ticks_missed >= 0 ? h1.ticks_missed - h0.ticks_missed : -1;
        bool held = reached && h1.tick_p99_ms <= TARGET_TICK_P99_MS && tick_hz >= 19.0;
        char extra[96] = "";
        if (h1.tick_max_since_mark_ms >= 0)
            snprintf(extra, sizeof extra, ", tick max %.1f ms", h1.tick_max_since_mark_ms);
        if (missed >= 0)
            snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", %" PRId64 " ticks missed",
                     missed);
        progress("%6d players: worker holds %u entities, tick p99 %.1f ms, %.1f ticks/s%s -> %s", n,
                 h1.entities, h1.tick_p99_ms, tick_hz, extra, held ? "held" : "did not hold");
        char *log = sim_stop(sim, SIM_STOP_MS);
        free(log);
        if (held) {
            r->entities_held = n;
        } else {
            snprintf(r->entities_note, sizeof r->entities_note, "%d: %s tick p99 %.1f ms, %.1f ticks/s%s", n,
                     reached ? "" : "never held them all;", h1.tick_p99_ms, tick_hz, extra);
            break;
        }
        /* let the players' leaves drain before the next step */
        uint64_t drain_deadline = ts_mono_us() + 15000000ULL;
        while (ts_mono_us() < drain_deadline && !(ts_hbwatch_get(hbw, "w1", &hb) &&
                                                  hb.received_us > ts_mono_us() - 300000 && hb.entities < 10))
            ts_sleep_ms(100);
    }
    ts_h_signal(&H, w1, SIGKILL); /* no drain: nobody could take its cells */
    servers_stop();
}

/* ---- the gateway stack ------------------------------------------------------------------------ */

static int gw_port, gw_idx = -1;

/* Remembers the gateway's thread count while clients play. */
static void sample_gateway_threads(results_t *r, int clients)
{
    int t = gw_idx >= 0 ? ts_proc_threads(H.procs[gw_idx].pid) : -1;
    if (t > r->gateway_threads_loaded) {
        r->gateway_threads_loaded = t;
        r->gateway_threads_clients = clients;
    }
}

static size_t gw_cells = 16;

/* orch + w1 + w2 (a BENCH_GW_WORLD_SIDE² world, 16x16 by default, so a
 * client's 3x3 view is a small share of the crowd as in a real open world;
 * no rebalancing) + a gateway. */
static bool gateway_stack_start(void)
{
    if (!servers_start()) return false;
    int side = env_int("BENCH_GW_WORLD_SIDE", 16, 2, 256);
    gw_cells = (size_t)side * (size_t)side;
    args_t o = {0};
    args_add(&o, "--orch.rebalance=0");
    args_add(&o, "--world.width=%d", side);
    args_add(&o, "--world.height=%d", side);
    args_add(&o, "--world.x0=%d", -side / 2);
    args_add(&o, "--world.y0=%d", -side / 2);
    spawn("orch", "tessera-orch", &o);
    spawn_worker("w1");
    spawn_worker("w2");
    gw_port = ts_h_free_port();
    args_t g = {0};
    args_add(&g, "--gateway.listen=127.0.0.1:%d", gw_port);
    args_add(&g, "--gateway.rate_limit=100000");
    args_add(&g, "--gateway.max_clients=100000");
    gw_idx = spawn("gateway", "tessera-gateway", &g);
    size_t bound = 0;
    bool ok = ts_h_wait_world(&H, WORLD, (int)gw_cells, READY_MS) && wait_bound(gw_cells, READY_MS, &bound) &&
              ts_h_wait_port(gw_port, READY_MS);
    if (!ok) {
        fprintf(stderr, "tessera-bench-scale: the gateway stack did not come up (%zu of %zu cells bound)\n",
                bound, gw_cells);
        H.failed = true;
    }
    return ok;
}

/* Spawns tessera-sim with n players at rate_hz for seconds, through the
 * gateway when via is set. */
static int spawn_load(const knobs_t *k, const char *name, bool via, int n, int rate_hz, int seconds)
{
    args_t a = {0};
    if (via) {
        args_add(&a, "--via-gateway");
        args_add(&a, "127.0.0.1:%d", gw_port);
    }
    args_add(&a, "--sim.players=%d", n);
    args_add(&a, "--sim.rate_hz=%d", rate_hz);
    args_add(&a, "--sim.duration_s=%d", seconds);
    return spawn(name, k->sim_bin, &a);
}

/* Waits until the log of process idx holds what (true) or timeout_ms passes. */
static bool wait_log(int idx, const char *what, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    for (;;) {
        char *log = ts_h_read_log(&H, idx);
        bool found = log != NULL && strstr(log, what) != NULL;
        free(log);
        if (found) return true;
        if (ts_mono_us() >= deadline || ts_h_wait(&H, idx, 0) >= 0) return false;
        ts_sleep_ms(200);
    }
}

/* Bound on how long n clients take to connect and join (the sim opens at
 * most 1,000 connections a second; a slow gateway takes longer). */
static int64_t join_ms(int n)
{
    return 15000 + (int64_t)n * 4;
}

/* Waits for a sim started with a duration to finish on its own (then
 * stops it); returns its log. */
static char *load_finish(int idx, int n, int seconds, uint64_t t_spawn)
{
    int64_t left = join_ms(n) + (int64_t)seconds * 1000 + 30000 - (int64_t)((ts_mono_us() - t_spawn) / 1000);
    if (left < 1000) left = 1000;
    if (ts_h_wait(&H, idx, left) >= 0) return ts_h_read_log(&H, idx);
    return sim_stop(idx, SIM_STOP_MS);
}

/* ---- phase: inputs/s and inputs per message --------------------------------------------------- */

static void phase_inputs(const knobs_t *k, bool via, results_t *r)
{
    printf("inputs: %d %s at %d..%d inputs/s each, %d s per step\n", k->input_clients,
           via ? "gateway clients (tessera-sim --via-gateway)"
               : "bus-mode sim players (no --via-gateway in this sim)",
           k->input_rates.n ? k->input_rates.steps[0] : 0,
           k->input_rates.n ? k->input_rates.steps[k->input_rates.n - 1] : 0, k->input_s);
    fflush(stdout);
    r->inputs_ran = true;
    r->inputs_via_gateway = via;
    if (!gateway_stack_start()) {
        snprintf(r->inputs_note, sizeof r->inputs_note, "the stack did not come up");
        servers_stop();
        return;
    }
    char stream[64];
    ts_bus_input_stream(stream, sizeof stream, WORLD);
    ts_rawjs_sample_t shape = {0};
    uint64_t budget_end = ts_mono_us() + (uint64_t)k->phase_budget_s * 1000000;
    for (int s = 0; s < k->input_rates.n; s++) {
        int rate = k->input_rates.steps[s];
        if (ts_mono_us() >= budget_end) {
            snprintf(r->inputs_note, sizeof r->inputs_note, "stopped before %d/s: phase budget of %d s spent",
                     rate, k->phase_budget_s);
            break;
        }
        char name[32];
        snprintf(name, sizeof name, "load-%dhz", rate);
        uint64_t t_spawn = ts_mono_us();
        int idx = spawn_load(k, name, via, k->input_clients, rate, k->input_s);
        /* the window: from 2 s after every client joined (bus mode: 3 s in) to 2 s before the end */
        if (via)
            wait_log(idx, "joined in", join_ms(k->input_clients));
        else
            ts_sleep_ms(1000);
        ts_sleep_ms(2000);
        ts_rawjs_state_t s0 = {0}, s1 = {0};
        uint64_t a0 = ts_hbwatch_inputs_applied(hbw), t0 = ts_mono_us();
        ts_rawjs_stream_state(raw, stream, &s0);
        ts_sleep_ms((int64_t)(k->input_s - 4) * 500);
        if (via) sample_gateway_threads(r, k->input_clients);
        ts_sleep_ms((int64_t)(k->input_s - 4) * 500);
        uint64_t a1 = ts_hbwatch_inputs_applied(hbw), t1 = ts_mono_us();
        ts_rawjs_stream_state(raw, stream, &s1);
        double secs = (double)(t1 - t0) / 1e6;
        double applied_per_s = (double)(a1 - a0) / secs;
        double msgs = (double)(s1.msgs - s0.msgs);
        double per_msg = msgs > 0 ? (double)(a1 - a0) / msgs : 0;
        ts_rawjs_sample_t sample = {0};
        ts_rawjs_sample(raw, stream, s0.last_seq + 1, s1.last_seq, 300, TS_TYPE_INPUT_BATCH, &sample);
        char *log = load_finish(idx, k->input_clients, k->input_s, t_spawn);
        bool exact;
        char line[512];
        if (via) {
            via_t v;
            via_parse(log, &v);
            exact = v.parsed && v.missing == 0 && v.errors == 0 && v.sent > 0 && v.applied == v.sent &&
                    v.connected == v.clients;
            ts_strlcpy(line, v.line, sizeof line);
        } else {
            ts_probe_verdict_t v;
            ts_probe_sim_verdict(log, &v);
            exact = ts_probe_verdict_exact(&v);
            ts_strlcpy(line, v.line, sizeof line);
        }
        free(log);
        double offered = (double)k->input_clients * rate;
        progress(
            "%4d inputs/s per client (offered %.0f/s): applied %.0f/s, %.0f input-stream msgs/s, %.2f inputs "
            "per msg, sampled InputBatch Ts-Count mean %.2f (%zu of %zu), %s",
            rate, offered, applied_per_s, msgs / secs, per_msg, sample.mean_count, sample.sampled,
            sample.read, exact ? "exactly once" : "NOT exactly once");
        progress("      %s", line);
        bool best = exact && applied_per_s > r->inputs_per_s;
        if (best) {
            r->inputs_per_s = applied_per_s;
            r->inputs_rate_hz = rate;
            r->tessera_msgs_per_s = msgs / secs;
        }
        if (s == 0) {
            r->inputs_per_msg = per_msg;
            r->batch_count_mean = sample.mean_count;
            r->inputs_msg_rate_hz = rate;
        }
        /* the raw publisher sends the message shape of the best step */
        if (sample.payload != NULL && (best || shape.payload == NULL)) {
            ts_rawjs_sample_free(&shape);
            shape = sample;
        } else {
            ts_rawjs_sample_free(&sample);
        }
        /* a step that lost or doubled an input ends the phase; one that
         * merely fell behind the offered rate does not (the load generator
         * itself may be what fell behind) */
        if (!exact) {
            snprintf(r->inputs_note, sizeof r->inputs_note,
                     "at %d/s per client: not exactly once, applied %.0f/s of %.0f offered", rate,
                     applied_per_s, offered);
            break;
        }
    }

    /* the yardstick: raw nats.c async JetStream publishes of that message, same server */
    if (shape.payload != NULL) {
        ts_status_t st = ts_bus_ensure_streams(bus, RAW_WORLD, "file", 3600, 1);
        char subj[96];
        snprintf(subj, sizeof subj, "cell.%d.0.0.0.0.input.w", RAW_WORLD);
        ts_rawjs_result_t res;
        if (st == TS_OK && ts_rawjs_publish(raw, subj, &shape, k->raw_s, RAW_MAX_PENDING, &res) == TS_OK) {
            r->raw_ran = true;
            r->raw_msgs_per_s = res.msgs_per_s;
            r->raw_payload = shape.payload_len;
            progress("raw nats.c js_PublishMsgAsync of a %zu B InputBatch (sampled mean %.0f B) with its "
                     "Ts-Type/Ts-Epoch/Ts-Seq/Ts-Count and a Nats-Msg-Id: %.0f msgs/s (%" PRIu64
                     " acked, %" PRIu64 " failed in %.1f s)",
                     shape.payload_len, shape.mean_len, res.msgs_per_s, res.acked, res.failed, res.seconds);
        } else {
            progress("raw publisher could not run: %s", ts_status_str(st));
        }
    } else {
        progress("raw publisher not run: no InputBatch message found in %s", stream);
    }
    ts_rawjs_sample_free(&shape);
    servers_stop();
}

/* ---- phase: clients through one gateway --------------------------------------------------------- */

/* CPU time (us) the servers of the gateway stack used so far: the gateway,
 * the workers together and nats-server. */
typedef struct {
    uint64_t gateway, workers, nats;
} stack_cpu_t;

static stack_cpu_t stack_cpu(void)
{
    stack_cpu_t c = {0};
    for (int i = 0; i < H.nprocs; i++) {
        uint64_t us = 0;
        if (H.procs[i].pid <= 0 || !ts_proc_cpu_us(H.procs[i].pid, &us)) continue;
        const char *name = H.procs[i].name;
        if (strcmp(name, "gateway") == 0)
            c.gateway += us;
        else if (strcmp(name, "nats") == 0)
            c.nats += us;
        else if (name[0] == 'w' && name[1] >= '0' && name[1] <= '9')
            c.workers += us;
    }
    return c;
}

static void phase_clients(const knobs_t *k, results_t *r)
{
    printf("clients: tessera-sim --via-gateway, %d moves/s per client, %d s per step\n", k->client_rate_hz,
           k->client_s);
    fflush(stdout);
    r->clients_ran = true;
    if (!gateway_stack_start()) {
        snprintf(r->clients_note, sizeof r->clients_note, "the stack did not come up");
        servers_stop();
        return;
    }
    r->clients_p50 = r->clients_p99 = -1;
    uint64_t budget_end = ts_mono_us() + (uint64_t)k->phase_budget_s * 1000000;
    for (int s = 0; s < k->client_steps.n; s++) {
        int n = k->client_steps.steps[s];
        if (ts_mono_us() >= budget_end) {
            snprintf(r->clients_note, sizeof r->clients_note, "stopped before %d: phase budget of %d s spent",
                     n, k->phase_budget_s);
            break;
        }
        char name[32];
        snprintf(name, sizeof name, "clients-%d", n);
        uint64_t t_spawn = ts_mono_us();
        int idx = spawn_load(k, name, true, n, k->client_rate_hz, k->client_s);
        wait_log(idx, "joined in", join_ms(n));
        stack_cpu_t c0 = stack_cpu();
        uint64_t t0 = ts_mono_us();
        ts_sleep_ms((int64_t)k->client_s * 1000 / 2);
        sample_gateway_threads(r, n);
        stack_cpu_t c1 = stack_cpu();
        double span_us = (double)(ts_mono_us() - t0);
        char *log = load_finish(idx, n, k->client_s, t_spawn);
        via_t v;
        via_parse(log, &v);
        free(log);
        bool held =
            v.parsed && v.connected == n && v.missing == 0 && v.errors == 0 && v.p99 <= TARGET_CLIENT_P99_MS;
        progress("%5d clients: %s -> %s", n, v.line, held ? "held" : "did not hold");
        if (span_us > 0)
            progress(
                "%5d clients: CPU while playing (%% of a core): gateway %.0f, workers %.0f, nats-server %.0f",
                n, 100.0 * (double)(c1.gateway - c0.gateway) / span_us,
                100.0 * (double)(c1.workers - c0.workers) / span_us,
                100.0 * (double)(c1.nats - c0.nats) / span_us);
        if (held || r->clients_p50 < 0) {
            r->clients_p50 = v.parsed ? v.p50 : -1;
            r->clients_p99 = v.parsed ? v.p99 : -1;
        }
        if (held) {
            r->clients_held = n;
        } else {
            if (v.parsed)
                snprintf(r->clients_note, sizeof r->clients_note,
                         "%d: connected %.0f, p99 %.0f ms, missing %.0f, errors %.0f", n, v.connected, v.p99,
                         v.missing, v.errors);
            else
                snprintf(r->clients_note, sizeof r->clients_note, "%d: the sim printed no result", n);
            break;
        }
    }
    servers_stop();
}

/* ---- phase: a big world, threads, idle CPU, SIGKILL ----------------------------------------------- */

/* Occurrences of what in the log of process idx. */
static int count_in_log(int idx, const char *what)
{
    char *log = ts_h_read_log(&H, idx);
    int n = 0;
    for (const char *p = log; p != NULL && (p = strstr(p, what)) != NULL; p += strlen(what))
        n++;
    free(log);
    return n;
}

static int entry_order(const void *a, const void *b)
{
    return ts_cell_cmp(&((const ts_cell_entry_t *)a)->cell, &((const ts_cell_entry_t *)b)->cell);
}

static double cpu_pct(uint64_t us0, uint64_t us1, uint64_t wall_us)
{
    return wall_us > 0 ? 100.0 * (double)(us1 - us0) / (double)wall_us : 0;
}

/* How long the world phase reads CPU under the players' load. */
#define WORLD_CPU_WINDOW_MS 5000

static void phase_world(const knobs_t *k, results_t *r)
{
    int side = k->world_side, nw = k->world_workers;
    size_t ncells = (size_t)side * (size_t)side;
    printf("world: %dx%d cells on %d workers, a gateway, %d players\n", side, side, nw, k->world_players);
    fflush(stdout);
    r->world_ran = true;
    r->recovery_registry_ms = r->recovery_bound_ms = -1;
    r->loaded_nats_pct = r->loaded_workers_pct = -1;
    r->orch_idle_pct = r->gateway_idle_pct = -1;
    r->worker_threads = r->gateway_threads = -1;
    if (!servers_start()) return;

    char ids[8][16], list[160] = "";
    for (int i = 0; i < nw; i++) {
        snprintf(ids[i], sizeof ids[i], "w%d", i + 1);
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? "," : "", ids[i]);
    }
    args_t o = {0};
    args_add(&o, "--world.width=%d", side);
    args_add(&o, "--world.height=%d", side);
    args_add(&o, "--world.x0=%d", -side / 2);
    args_add(&o, "--world.y0=%d", -side / 2);
    args_add(&o, "--world.workers=%s", list);
    args_add(&o, "--orch.rebalance=0");
    int orch = spawn("orch", "tessera-orch", &o);
    int widx[8];
    for (int i = 0; i < nw; i++)
        widx[i] = spawn_worker(ids[i]);
    gw_port = ts_h_free_port();
    args_t g = {0};
    args_add(&g, "--gateway.listen=127.0.0.1:%d", gw_port);
    int gw = spawn("gateway", "tessera-gateway", &g);

    uint64_t t0 = ts_mono_us();
    size_t bound = 0;
    bool world_ok = ts_h_wait_world(&H, WORLD, (int)ncells, (int64_t)k->world_ready_s * 1000);
    int64_t left_ms = (int64_t)k->world_ready_s * 1000 - (int64_t)((ts_mono_us() - t0) / 1000);
    r->world_bound = world_ok && wait_bound(ncells, left_ms, &bound);
    r->world_bind_s = (double)(ts_mono_us() - t0) / 1e6;
    progress("%zu of %zu cells reported bound after %.1f s", bound, ncells, r->world_bind_s);

    /* threads, with every cell bound (or as many as made it): a worker
     * still runs the extra I/O threads binding started */
    r->worker_threads_binding = -1;
    for (int i = 0; i < nw; i++) {
        int t = ts_proc_threads(H.procs[widx[i]].pid);
        if (t > r->worker_threads_binding) r->worker_threads_binding = t;
    }

    /* idle CPU: the world is up, nobody plays, nothing moves */
    uint64_t o0 = 0, o1 = 0, g0 = 0, g1 = 0, w0 = ts_mono_us();
    bool cpu_ok = ts_proc_cpu_us(H.procs[orch].pid, &o0) && ts_proc_cpu_us(H.procs[gw].pid, &g0);
    ts_sleep_ms((int64_t)k->idle_s * 1000);
    cpu_ok = cpu_ok && ts_proc_cpu_us(H.procs[orch].pid, &o1) && ts_proc_cpu_us(H.procs[gw].pid, &g1);
    uint64_t wall = ts_mono_us() - w0;
    if (cpu_ok) {
        r->orch_idle_pct = cpu_pct(o0, o1, wall);
        r->gateway_idle_pct = cpu_pct(g0, g1, wall);
    }
    progress("idle over %d s: orchestrator %.1f %%, gateway %.1f %% of one core", k->idle_s, r->orch_idle_pct,
             r->gateway_idle_pct);
    /* and once the world has been idle: what a worker runs for good */
    for (int i = 0; i < nw; i++) {
        int t = ts_proc_threads(H.procs[widx[i]].pid);
        if (t > r->worker_threads) r->worker_threads = t;
    }
    r->gateway_threads = ts_proc_threads(H.procs[gw].pid);
    progress("threads: worker (max of %d) %d idle, %d right after binding; gateway %d, orchestrator %d", nw,
             r->worker_threads, r->worker_threads_binding, r->gateway_threads,
             ts_proc_threads(H.procs[orch].pid));
    if (!r->world_bound) {
        snprintf(
            r->world_note, sizeof r->world_note,
            "not measured: only %zu of %zu cells bound in %d s (the orchestrator declared workers dead %d "
            "times)",
            bound, ncells, k->world_ready_s, count_in_log(orch, "is dead"));
        H.failed = true;
        servers_stop();
        return;
    }

    /* players */
    args_t a = {0};
    args_add(&a, "--sim.players=%d", k->world_players);
    int sim = spawn("sim", k->sim_bin, &a);
    uint64_t t_sim = ts_mono_us(), deadline = t_sim + 30000000ULL;
    while (ts_mono_us() < deadline && ts_hbwatch_entities(hbw) < (uint64_t)k->world_players * 98 / 100)
        ts_sleep_ms(200);
    ts_sleep_ms(3000);
    progress("%" PRIu64 " entities in the world %.1f s after the sim started", ts_hbwatch_entities(hbw),
             (double)(ts_mono_us() - t_sim) / 1e6);

    /* CPU under the players' load, before the kill: nats-server, and the
     * workers together */
    {
        uint64_t n0 = 0, n1 = 0, w0 = 0, w1 = 0, us = 0;
        pid_t npid = H.procs[TS_H_NATS].pid;
        bool ok = ts_proc_cpu_us(npid, &n0);
        for (int i = 0; i < nw && ok; i++)
            if ((ok = ts_proc_cpu_us(H.procs[widx[i]].pid, &us))) w0 += us;
        uint64_t t0 = ts_mono_us();
        ts_sleep_ms(WORLD_CPU_WINDOW_MS);
        double secs = (double)(ts_mono_us() - t0) / 1e6;
        ok = ok && ts_proc_cpu_us(npid, &n1);
        for (int i = 0; i < nw && ok; i++)
            if ((ok = ts_proc_cpu_us(H.procs[widx[i]].pid, &us))) w1 += us;
        r->loaded_nats_pct = ok ? (double)(n1 - n0) / 1e4 / secs : -1;
        r->loaded_workers_pct = ok ? (double)(w1 - w0) / 1e4 / secs : -1;
        r->loaded_cpu_s = secs;
        progress(
            "CPU over %.1f s with the players: nats-server %.1f %%, %d workers together %.1f %% of one core",
            secs, r->loaded_nats_pct, nw, r->loaded_workers_pct);
    }

    /* the victim: the worker holding the most entities */
    int victim = 0;
    uint32_t most = 0;
    for (int i = 0; i < nw; i++) {
        ts_hbwatch_hb_t hb;
        if (ts_hbwatch_get(hbw, ids[i], &hb) && hb.entities >= most) {
            most = hb.entities;
            victim = i;
        }
    }
    ts_cell_entry_t *cells = NULL, *lost = NULL;
    size_t n = 0, nlost = 0;
    if (ts_registry_cells(reg, WORLD, &cells, &n) == TS_OK) lost = calloc(n + 1, sizeof *lost);
    for (size_t i = 0; lost != NULL && i < n; i++)
        if (strcmp(cells[i].owner, ids[victim]) == 0) lost[nlost++] = cells[i];
    free(cells);
    r->recovery_cells = nlost;
    if (nlost == 0) {
        snprintf(r->world_note, sizeof r->world_note, "%s owned no cell when it was to be killed",
                 ids[victim]);
        free(lost);
        lost = NULL;
    }
    ts_cell_entry_t *now = calloc(nlost + 1, sizeof *now);

    uint64_t t_kill = ts_mono_us();
    progress("SIGKILL %s (%zu cells, %u entities)", ids[victim], nlost, most);
    ts_h_signal(&H, widx[victim], SIGKILL);
    size_t done = 0, listed = 0;
    uint64_t last_listed_us = 0;
    while (lost != NULL && ts_mono_us() - t_kill < 30000000ULL &&
           (r->recovery_registry_ms < 0 || r->recovery_bound_ms < 0)) {
        if (r->recovery_registry_ms < 0) {
            ts_cell_entry_t *all = NULL;
            size_t na = 0;
            /* one read of the whole registry (4,096 cells) every 100 ms: often
             * enough for a 3 s target, rare enough not to slow Redis down */
            if (ts_registry_cells(reg, WORLD, &all, &na) == TS_OK) {
                qsort(all, na, sizeof *all, entry_order);
                done = 0;
                for (size_t i = 0; i < nlost; i++) {
                    const ts_cell_entry_t *e = bsearch(&lost[i], all, na, sizeof *all, entry_order);
                    if (e != NULL && strcmp(e->owner, ids[victim]) != 0 && e->epoch > lost[i].epoch) {
                        now[i] = *e;
                        done++;
                    }
                }
                if (done == nlost) r->recovery_registry_ms = (double)(ts_mono_us() - t_kill) / 1000;
            }
            free(all);
            if (r->recovery_registry_ms < 0) ts_sleep_ms(80);
        } else {
            listed = 0;
            last_listed_us = 0;
            for (size_t i = 0; i < nlost; i++) {
                uint64_t at = 0;
                if (ts_hbwatch_lists(hbw, now[i].owner, &now[i].cell, now[i].epoch, t_kill, &at)) {
                    listed++;
                    if (at > last_listed_us) last_listed_us = at;
                }
            }
            if (listed == nlost) r->recovery_bound_ms = (double)(last_listed_us - t_kill) / 1000;
        }
        ts_sleep_ms(20);
    }
    if (nlost > 0 && r->recovery_bound_ms < 0)
        snprintf(r->world_note, sizeof r->world_note,
                 "after 30 s: %zu of %zu cells reassigned, %zu listed by their new owners", done, nlost,
                 listed);
    progress("registry: all %zu reassigned after %.0f ms; new owners' heartbeats list them after %.0f ms",
             nlost, r->recovery_registry_ms, r->recovery_bound_ms);
    free(lost);
    free(now);

    char *log = sim_stop(sim, SIM_STOP_MS);
    ts_probe_verdict_t v;
    ts_probe_sim_verdict(log, &v);
    free(log);
    progress("%s", v.line);
    for (int i = 0; i < nw; i++)
        ts_h_signal(&H, widx[i], SIGKILL);
    servers_stop();
}

/* ---- main ------------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tessera-bench-scale\n"
        "Starts its own nats-server, redis-server and Tessera services on free loopback ports and prints\n"
        "the scale figures with their targets. Environment:\n"
        "  BENCH_PHASES           entities,inputs,clients,world (default: all four)\n"
        "  BENCH_ENTITY_STEPS     players per step (250 500 1000 2000 5000 10000 20000 30000)\n"
        "  BENCH_ENTITY_WINDOW_S  seconds measured per step (13: 256 ticks at 20 Hz)\n"
        "  BENCH_PHASE_BUDGET_S   a phase starts no new step after this many seconds (200)\n"
        "  BENCH_INPUT_CLIENTS    gateway clients for the input rate (1000)\n"
        "  BENCH_INPUT_RATES      inputs/s per client per step (10 50 250); inputs per message are taken at "
        "the\n"
        "                         first (lowest) rate, the hardest case for batching\n"
        "  BENCH_INPUT_S          seconds per input step (15); BENCH_RAW_S raw publish seconds (5)\n"
        "  BENCH_CLIENT_STEPS     gateway clients per step (100 500 1000 1500 2000 3500 5000)\n"
        "  BENCH_CLIENT_RATE_HZ   moves/s per client (10); BENCH_CLIENT_S seconds per step (15)\n"
        "  BENCH_WORLD_SIDE       cells per side (64); BENCH_WORLD_WORKERS (4); BENCH_WORLD_PLAYERS (10000)\n"
        "  BENCH_WORLD_READY_S    wait for every cell bound (120); BENCH_IDLE_S idle CPU window (10)\n"
        "  BENCH_SIM_BIN          the tessera-sim to drive the load with (default %s/tessera-sim)\n",
        TS_BIN_DIR);
}

static void print_entities(const knobs_t *k, const results_t *r)
{
    if (r->entities_ran)
        printf("entities per worker at 20 Hz, players crossing   %8d          target >= %d: %s\n",
               r->entities_held, TARGET_ENTITIES, verdict(r->entities_held >= TARGET_ENTITIES));
    if (r->entities_ran && r->entities_note[0]) printf("  beyond that: %s\n", r->entities_note);
}

static void print_inputs(const knobs_t *k, const results_t *r)
{
    if (r->inputs_ran) {
        const char *how = r->inputs_via_gateway ? "gateway clients" : "bus-mode sim players";
        printf("inputs/s applied exactly once (%d %s)  %8.0f /s       target >= %.0f: %s  (at %d/s per "
               "client)\n",
               k->input_clients, how, r->inputs_per_s, TARGET_INPUTS_PER_S,
               gw_verdict(r->inputs_via_gateway, r->inputs_per_s >= TARGET_INPUTS_PER_S), r->inputs_rate_hz);
        printf("inputs per JetStream message (input stream, %d/s per client) %8.2f   target >= %.0f: %s  "
               "(sampled InputBatch Ts-Count mean %.2f)\n",
               r->inputs_msg_rate_hz, r->inputs_per_msg, TARGET_INPUTS_PER_MSG,
               gw_verdict(r->inputs_via_gateway, r->inputs_per_msg >= TARGET_INPUTS_PER_MSG),
               r->batch_count_mean);
        if (r->inputs_note[0]) printf("  inputs stopped: %s\n", r->inputs_note);
        if (r->raw_ran && r->raw_msgs_per_s > 0)
            printf(
                "raw nats.c async JetStream publish (%zu B + headers) %8.0f msgs/s; Tessera inputs/s / raw "
                "msgs/s = %.2f, Tessera input-stream msgs/s / raw msgs/s = %.2f\n",
                r->raw_payload, r->raw_msgs_per_s, r->inputs_per_s / r->raw_msgs_per_s,
                r->tessera_msgs_per_s / r->raw_msgs_per_s);
    }
}

static void print_clients(const knobs_t *k, const results_t *r)
{
    if (r->clients_ran) {
        printf("clients through one gateway, p99 <= 100 ms, 0 missing %5d        target >= %d: %s\n",
               r->clients_held, TARGET_CLIENTS, verdict(r->clients_held >= TARGET_CLIENTS));
        if (r->clients_note[0]) printf("  beyond that: %s\n", r->clients_note);
        printf("input -> own state p50 (at %d clients)           %8.1f ms       target <= %.0f ms: %s  (p99 "
               "%.1f ms)\n",
               r->clients_held ? r->clients_held : (k->client_steps.n ? k->client_steps.steps[0] : 0),
               r->clients_p50, TARGET_CLIENT_P50_MS,
               verdict(r->clients_p50 >= 0 && r->clients_p50 <= TARGET_CLIENT_P50_MS), r->clients_p99);
    }
    if (r->gateway_threads_loaded > 0)
        printf("threads per gateway (%d clients playing)         %8d          target <= %d: %s\n",
               r->gateway_threads_clients, r->gateway_threads_loaded, TARGET_THREADS,
               verdict(r->gateway_threads_loaded <= TARGET_THREADS));
}

static void print_world(const knobs_t *k, const results_t *r)
{
    if (r->world_ran) {
        char bound[32] = "not reached", registry[32] = "not reached";
        if (r->recovery_bound_ms >= 0) snprintf(bound, sizeof bound, "%.0f ms", r->recovery_bound_ms);
        if (r->recovery_registry_ms >= 0)
            snprintf(registry, sizeof registry, "%.0f ms", r->recovery_registry_ms);
        printf("%dx%d world, %d workers, %d players: SIGKILL a worker (%zu cells) -> all bound elsewhere %s  "
               "target <= %.0f ms: %s  (registry: %s)%s%s\n",
               k->world_side, k->world_side, k->world_workers, k->world_players, r->recovery_cells, bound,
               TARGET_RECOVERY_MS,
               verdict(r->recovery_bound_ms >= 0 && r->recovery_bound_ms <= TARGET_RECOVERY_MS), registry,
               r->world_note[0] ? "  " : "", r->world_note);
        printf("threads per worker (max, idle)                    %8d          target <= %d: %s  (%d while "
               "binding)\n",
               r->worker_threads, TARGET_THREADS,
               verdict(r->worker_threads > 0 && r->worker_threads <= TARGET_THREADS),
               r->worker_threads_binding);
        printf("threads per gateway (no clients)                  %8d          target <= %d: %s\n",
               r->gateway_threads, TARGET_THREADS,
               verdict(r->gateway_threads > 0 && r->gateway_threads <= TARGET_THREADS));
        printf("idle orchestrator CPU (%d cells, %d s)           %8.1f %% of one core\n",
               k->world_side * k->world_side, k->idle_s, r->orch_idle_pct);
        printf("idle gateway CPU (no clients, %d s)                %8.1f %% of one core\n", k->idle_s,
               r->gateway_idle_pct);
        printf("time to bind all %d cells on %d workers           %8.1f s\n", k->world_side * k->world_side,
               k->world_workers, r->world_bind_s);
        if (r->loaded_nats_pct >= 0)
            printf("CPU with %d players (%.0f s): nats-server %.1f %%, %d workers together %.1f %% of one "
                   "core\n",
                   k->world_players, r->loaded_cpu_s, r->loaded_nats_pct, k->world_workers,
                   r->loaded_workers_pct);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        fprintf(stderr, "tessera-bench-scale: unknown argument '%s' (knobs are environment variables)\n",
                argv[i]);
        usage(stderr);
        return 2;
    }
    ts_log_init("tessera-bench-scale", TS_LOG_ERROR, false);
    knobs_t k;
    knobs_load(&k);
    results_t r;
    memset(&r, 0, sizeof r);
    uint64_t t_start = ts_mono_us();
    bool via = sim_has_via_gateway(k.sim_bin);
    printf("tessera-bench-scale: %ld CPUs; phases %s; load from %s%s\n", sysconf(_SC_NPROCESSORS_ONLN),
           k.phases, k.sim_bin, via ? "" : " (no --via-gateway: gateway client figures cannot be measured)");
    fflush(stdout);

    /* each phase's figures print as soon as it ends (a run cut short keeps
     * them), and all of them again at the end */
    if (phase_on(&k, "entities")) {
        phase_entities(&k, &r);
        print_entities(&k, &r);
    }
    if (phase_on(&k, "inputs")) {
        phase_inputs(&k, via, &r);
        print_inputs(&k, &r);
    }
    if (phase_on(&k, "clients")) {
        if (via)
            phase_clients(&k, &r);
        else {
            r.clients_ran = true;
            r.clients_p50 = r.clients_p99 = -1;
            snprintf(r.clients_note, sizeof r.clients_note,
                     "not measured: this tessera-sim has no --via-gateway");
        }
        print_clients(&k, &r);
    }
    if (phase_on(&k, "world")) {
        phase_world(&k, &r);
        print_world(&k, &r);
    }

    printf("\n== tessera-bench-scale results ==\n");
    print_entities(&k, &r);
    print_inputs(&k, &r);
    print_clients(&k, &r);
    print_world(&k, &r);
    printf("bench took %.0f s\n", (double)(ts_mono_us() - t_start) / 1e6);
    fflush(stdout);
    ts_bus_shutdown_library();
    return 0;
}
