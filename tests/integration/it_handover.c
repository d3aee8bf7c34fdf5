/* Live handover end to end: real nats-server -js and redis-server,
 * tessera-orch (no automatic rebalancing), workers w1 and w2, a gateway,
 * tessera-sim and three gateway clients that keep playing while cells move
 * between the workers through tessera.ctl.<world>.handover.
 *
 * What players rely on, asserted here:
 *  - 200 handovers under load, asked for one after another, all succeed
 *    (no refusal, no "busy", no abort), and the registry ends with exactly
 *    the owners and epochs the replies announced (one epoch step each);
 *  - no acknowledged input is lost or applied twice: the sim ends with
 *    applied == acked == sent, and every gateway client's entity shows
 *    inputs_applied == the inputs it sent and last_input_seq == its last seq;
 *  - a client keeps its one TCP connection, never sees its input count go
 *    backwards, and its entity keeps moving (no stall, no jump back to an
 *    older state) across the handovers of the cells it is in;
 *  - a handover to a target that does not answer (SIGSTOPped) is aborted,
 *    and the reply says why: it names the target as the worker that did
 *    not answer (not the source, which is fine); the orchestrator counts
 *    one abort, the registry keeps the source at the same epoch, and the
 *    cell goes on applying inputs. */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "ledger.h"
#include "probe.h"
#include "tessera/client.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define NPLAYERS 3
#define HANDOVERS 200
#define HANDOVER_PHASE_MS 60000
#define CTL_TIMEOUT_MS 10000
#define WAIT_MS 20000
#define MOVE_MS 100
#define WANDER_SPEED 20.0
#define HOVER_SPEED 3.0
#define MAX_SPEED 50.0
#define JUMP_SLACK 30.0
#define MAX_GAP_US 2000000ULL
/* A walking entity's position changes every tick (20 Hz); while cells move
 * under it a client sees it change at least this often per second. */
#define MIN_MOVES_PER_S 5.0
#define LOAD_INPUTS 3000 /* sim inputs applied before handovers start */
#define SETTLE_DELTAS 20 /* Deltas a settled player watches for a late double */
/* Liveness TTL long enough that a few seconds of SIGSTOP never look like a
 * crash here: this file tests handover, it_recovery.c tests recovery. */
#define HB_TTL_MS 7000
#define HB_TTL_ARG "--orch.hb_ttl_ms=7000"
/* A handover's PREPARE timeout (the source waits 60 % of it for the
 * target's PreCopy answer): short, so that a handover to a stopped target
 * is aborted well within the TTL above (the cells here copy in
 * milliseconds) */
#define PRECOPY_ARG "--orch.precopy_timeout_ms=4000"

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
/* `it_handover --ws`: the players connect over WebSocket (gateway.ws_listen) */
static bool use_ws;
static int ws_port;
static char ws_listen[64];
static const char *const WORKERS[2] = {"w1", "w2"};

/* ---- gateway clients, each on its own thread ------------------------------ */

typedef struct {
    ts_client_t *c;
    pthread_t thread;
    bool running;
    bool hover; /* small back-and-forth moves that keep it in its cell */
    uint64_t seed;
    atomic_bool stop_sending;
    atomic_bool stop;

    pthread_mutex_t mu; /* guards everything below */
    uint64_t entity;
    uint64_t sent; /* inputs sent: the Join and every Move */
    uint64_t last_seq;
    bool closed;
    ts_status_t close_status;
    int errors;
    char last_error[128];
    bool me_seen;
    uint64_t applied, max_applied, last_input_seq;
    uint64_t regressions;
    char regression[128];
    double x, y;
    uint64_t seen_us, moved_us;
    uint64_t position_changes;
    uint64_t watched_changes; /* position changes while watching */
    uint64_t watch_from_us, watch_to_us;
    bool watching;
    uint64_t max_gap_us;
    uint64_t jumps;
    char jump[160];
    ts_cell_t cell;
    uint64_t cell_changes;
    uint64_t deltas;
} player_t;

static player_t P[NPLAYERS];

/* Watching the cluster for the whole group (bus hb_bus). */
static ts_bus_t *hb_bus;
static ts_probe_t *probe;
static ts_ledger_t *ledger;

/* What a test holds, released by its teardown even when it fails. */
static ts_bus_t *t_bus;
static ts_registry_t *t_reg;
static ts_cell_entry_t *t_cells;

static void note_own_state(player_t *p, const Tessera__V1__EntityState *e)
{
    uint64_t now = ts_mono_us();
    if (p->me_seen) {
        double d = hypot(e->x - p->x, e->y - p->y);
        double dt = (double)(now - p->seen_us) / 1e6;
        if (d > JUMP_SLACK + 1.5 * MAX_SPEED * dt && p->jumps++ == 0)
            snprintf(p->jump, sizeof p->jump, "(%.1f,%.1f) -> (%.1f,%.1f) in %.3f s", p->x, p->y, e->x, e->y,
                     dt);
        if (d > 0) {
            p->position_changes++;
            if (p->watching) p->watched_changes++;
            if (p->watching && now - p->moved_us > p->max_gap_us) p->max_gap_us = now - p->moved_us;
            p->moved_us = now;
        }
        if (e->inputs_applied < p->applied && p->regressions++ == 0)
            snprintf(p->regression, sizeof p->regression, "inputs_applied %" PRIu64 " -> %" PRIu64,
                     p->applied, e->inputs_applied);
    }
    p->me_seen = true;
    p->x = e->x;
    p->y = e->y;
    p->seen_us = now;
    p->applied = e->inputs_applied;
    p->last_input_seq = e->last_input_seq;
    if (e->inputs_applied > p->max_applied) p->max_applied = e->inputs_applied;
}

static void note_frame(player_t *p, const Tessera__V1__ServerFrame *f)
{
    pthread_mutex_lock(&p->mu);
    ts_cell_t cell;
    if (f->cell != NULL && ts_proto_cell_get(f->cell, &cell) == TS_OK) p->cell = cell;
    switch (f->payload_case) {
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT:
        p->entity = f->snapshot->entity;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA:
        p->deltas++;
        for (size_t i = 0; i < f->delta->n_entities; i++)
            if (p->entity != 0 && f->delta->entities[i]->id == p->entity)
                note_own_state(p, f->delta->entities[i]);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_CELL_CHANGED:
        p->cell_changes++;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR:
        p->errors++;
        snprintf(p->last_error, sizeof p->last_error, "code %d: %s", f->error->code, f->error->message);
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&p->mu);
}

static void player_closed(player_t *p, ts_status_t st)
{
    pthread_mutex_lock(&p->mu);
    p->closed = true;
    p->close_status = st;
    pthread_mutex_unlock(&p->mu);
}

static void *player_main(void *arg)
{
    player_t *p = arg;
    ts_rng_t rng;
    ts_rng_seed(&rng, p->seed);
    uint64_t next_move = ts_mono_us();
    double vx = 0, vy = 0;
    for (int k = 0; !atomic_load(&p->stop);) {
        uint64_t now = ts_mono_us();
        if (!atomic_load(&p->stop_sending) && now >= next_move) {
            if (p->hover) {
                vx = k % 2 ? HOVER_SPEED : -HOVER_SPEED;
            } else if (k % 10 == 0) {
                double a = ts_rng_unit(&rng) * 2 * M_PI;
                vx = WANDER_SPEED * cos(a);
                vy = WANDER_SPEED * sin(a);
            }
            k++;
            ts_status_t st = ts_client_move(p->c, vx, vy);
            if (st != TS_OK) {
                player_closed(p, st);
                break;
            }
            pthread_mutex_lock(&p->mu);
            p->sent++;
            p->last_seq = ts_client_last_seq(p->c);
            pthread_mutex_unlock(&p->mu);
            next_move = now + MOVE_MS * 1000;
        }
        int64_t wait_ms = next_move > now ? (int64_t)((next_move - now) / 1000) + 1 : 1;
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(p->c, wait_ms < 50 ? wait_ms : 50, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        if (st != TS_OK) {
            player_closed(p, st);
            break;
        }
        note_frame(p, f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return NULL;
}

/* Connects, joins at (x, y) and starts the player's thread. A refused Join
 * (the gateway may not know every cell in its first second) is retried. */
static void player_start(player_t *p, double x, double y, bool hover, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    p->hover = hover;
    p->seed = seed;
    if (use_ws)
        assert_int_equal(ts_client_connect_ws(&p->c, "127.0.0.1", ws_port, NULL, 3000), TS_OK);
    else
        assert_int_equal(ts_client_connect(&p->c, "127.0.0.1", stack.gw_port, 3000), TS_OK);
    uint64_t deadline = ts_mono_us() + 10000000;
    int errors = -1;
    while (p->entity == 0 && ts_mono_us() < deadline) {
        if (errors != p->errors) {
            if (errors >= 0) ts_sleep_ms(200);
            errors = p->errors;
            assert_int_equal(ts_client_join(p->c, x, y, "it-handover"), TS_OK);
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(p->c, 200, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        assert_int_equal(st, TS_OK);
        note_frame(p, f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    if (p->entity == 0) {
        ts_h.failed = true;
        fail_msg("no Snapshot within 10 s after joining at (%.0f, %.0f); last error: %s", x, y,
                 p->errors ? p->last_error : "none");
    }
    p->errors = 0;
    p->sent = 1;
    p->last_seq = ts_client_last_seq(p->c);
    assert_int_equal(pthread_create(&p->thread, NULL, player_main, p), 0);
    p->running = true;
}

static void player_stop(player_t *p)
{
    if (p->running) {
        atomic_store(&p->stop, true);
        pthread_join(p->thread, NULL);
        p->running = false;
    }
    ts_client_destroy(p->c);
    p->c = NULL;
}

static void players_stop_all(void)
{
    for (int i = 0; i < NPLAYERS; i++) {
        if (P[i].running || P[i].c != NULL) {
            player_stop(&P[i]);
            pthread_mutex_destroy(&P[i].mu);
        }
        memset(&P[i], 0, sizeof P[i]);
    }
}

static void player_copy(player_t *p, player_t *out)
{
    pthread_mutex_lock(&p->mu);
    memcpy(out, p, sizeof *out);
    pthread_mutex_unlock(&p->mu);
}

static void players_watch(bool on)
{
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *p = &P[i];
        if (!p->running) continue;
        pthread_mutex_lock(&p->mu);
        uint64_t now = ts_mono_us();
        if (on) {
            p->moved_us = now;
            p->watch_from_us = now;
        } else {
            if (p->watching && now - p->moved_us > p->max_gap_us) p->max_gap_us = now - p->moved_us;
            p->watch_to_us = now;
        }
        p->watching = on;
        pthread_mutex_unlock(&p->mu);
    }
}

/* Stops sending and waits until the entity shows every input applied, then
 * for SETTLE_DELTAS more Deltas (a second of ticks) so that a late double
 * would show. */
static void player_settle(player_t *p, int64_t timeout_ms)
{
    atomic_store(&p->stop_sending, true);
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    player_t s;
    do {
        ts_sleep_ms(20);
        player_copy(p, &s);
    } while (!s.closed && !(s.applied >= s.sent && s.last_input_seq >= s.last_seq) &&
             ts_mono_us() < deadline);
    uint64_t deltas = s.deltas;
    do {
        ts_sleep_ms(20);
        player_copy(p, &s);
    } while (!s.closed && s.deltas < deltas + SETTLE_DELTAS && ts_mono_us() < deadline);
}

/* What a player relies on after all the moving around. */
static void player_assert_exact(player_t *p, int i)
{
    player_t s;
    player_copy(p, &s);
    fprintf(stderr,
            "player %d: entity %" PRIx64 " sent %" PRIu64 " applied %" PRIu64 " (max %" PRIu64
            ") last_seq %" PRIu64 "/%" PRIu64 " deltas %" PRIu64 " moves seen %" PRIu64 " (%" PRIu64
            " during the handovers) crossings %" PRIu64 " longest stall %.0f ms\n",
            i, s.entity, s.sent, s.applied, s.max_applied, s.last_input_seq, s.last_seq, s.deltas,
            s.position_changes, s.watched_changes, s.cell_changes, (double)s.max_gap_us / 1000);
    if (s.closed) {
        ts_h.failed = true;
        fail_msg("player %d lost its connection: %s", i, ts_status_str(s.close_status));
    }
    if (s.errors != 0) {
        ts_h.failed = true;
        fail_msg("player %d got %d error frames, last: %s", i, s.errors, s.last_error);
    }
    if (s.applied != s.sent || s.max_applied != s.sent || s.last_input_seq != s.last_seq) {
        ts_h.failed = true;
        fail_msg("player %d: sent %" PRIu64 " inputs (last seq %" PRIu64
                 ") but its entity shows inputs_applied %" PRIu64 " (max seen %" PRIu64
                 "), last_input_seq %" PRIu64,
                 i, s.sent, s.last_seq, s.applied, s.max_applied, s.last_input_seq);
    }
    if (s.regressions != 0) {
        ts_h.failed = true;
        fail_msg("player %d saw its input count go backwards %" PRIu64 " times, first: %s", i, s.regressions,
                 s.regression);
    }
}

/* ---- bus and registry helpers ------------------------------------------------- */

static ts_bus_t *bus_connect(void)
{
    assert_int_equal(ts_bus_connect(&t_bus, ts_h.nats_url, "it_handover"), TS_OK);
    return t_bus;
}

static ts_registry_t *registry(void)
{
    assert_int_equal(ts_registry_connect(&t_reg, ts_h.redis_url), TS_OK);
    return t_reg;
}

static ts_cell_entry_t cell_get(ts_registry_t *reg, const ts_cell_t *c)
{
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, c, &e), TS_OK);
    return e;
}

/* Starts the sim (runs until signalled); each run needs its own seed, so
 * that its players are new entities. */
static int sim_start(const char *name, int seed)
{
    char seed_arg[32];
    snprintf(seed_arg, sizeof seed_arg, "--sim.seed=%d", seed);
    const char *args[] = {"--sim.players=300", seed_arg, NULL};
    return ts_h_spawn(&ts_h, name, "tessera-sim", args);
}

/* Waits until the workers applied LOAD_INPUTS more inputs than `since`
 * (a ts_probe_inputs_applied() value): the sim's players are walking. */
static void wait_load(uint64_t since)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (ts_probe_inputs_applied(probe) < since + LOAD_INPUTS) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the workers applied %" PRIu64 " inputs in %d s, want %d",
                     ts_probe_inputs_applied(probe) - since, WAIT_MS / 1000, LOAD_INPUTS);
        }
        ts_sleep_ms(20);
    }
}

/* Waits up to WAIT_MS until each worker's heartbeat, received after
 * since_us, lists exactly the cells the registry gives it (cells). */
static void wait_heartbeats_agree(const ts_cell_entry_t *cells, size_t n, uint64_t since_us)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (int w = 0; w < 2; w++) {
        for (;;) {
            ts_probe_hb_t l;
            size_t want = 0, listed = 0;
            char missing[TS_CELL_STR_MAX] = "-";
            bool fresh = ts_probe_heartbeat(probe, WORKERS[w], &l) && l.received_us > since_us;
            for (size_t k = 0; fresh && k < n; k++) {
                if (strcmp(cells[k].owner, WORKERS[w]) != 0) continue;
                want++;
                ts_probe_cell_t c = {cells[k].cell, cells[k].epoch};
                if (ts_probe_hb_lists(&l, &c, 1))
                    listed++;
                else
                    ts_cell_format(&c.cell, missing, sizeof missing);
            }
            if (fresh && listed == want && l.ncells == want) break;
            if (ts_mono_us() > deadline) {
                ts_h.failed = true;
                fail_msg("%s's heartbeat %s (lists %zu cells; the registry gives it %zu, e.g. %s)",
                         WORKERS[w], fresh ? "does not agree with the registry" : "did not come",
                         fresh ? l.ncells : 0, want, missing);
            }
            ts_sleep_ms(20);
        }
    }
}

/* Stops the sim and checks its verdict: every input it sent was
 * acknowledged and applied exactly once. On a mismatch the ledger names
 * what went missing. */
static void sim_verify(int idx, uint64_t event_us, const char *event)
{
    int rc;
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, idx, ledger, event, event_us, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, want 0 with applied == acked == sent > 0; its verdict: %s", rc, v.line);
    }
}

/* Position of the last (or, with first, the first) whole-word worker id
 * in [from, to), and which one it is; -1 if none. */
static int worker_in(const char *from, const char *to, bool first, const char **at)
{
    int found = -1;
    for (const char *p = from; p < to; p++) {
        for (int w = 0; w < 2; w++) {
            size_t wl = strlen(WORKERS[w]);
            if (p + wl > to || strncmp(p, WORKERS[w], wl) != 0) continue;
            if ((p > from && isalnum((unsigned char)p[-1])) || isalnum((unsigned char)p[wl])) continue;
            found = w;
            *at = p;
            if (first) return found;
        }
    }
    return found;
}

/* Whether an abort reason says that worker did not answer: some "no
 * answer", "did not answer", "timed out" or "timeout" in it is about that
 * worker — the nearest worker id before it in the same clause (between
 * semicolons), or else the nearest after it. */
static bool blames_unanswered(const char *reason, const char *worker)
{
    static const char *const phrases[] = {"no answer", "did not answer", "not answering", "timed out",
                                          "timeout"};
    for (size_t k = 0; k < sizeof phrases / sizeof phrases[0]; k++) {
        for (const char *hit = reason; (hit = strstr(hit, phrases[k])) != NULL; hit++) {
            const char *clause = hit;
            while (clause > reason && clause[-1] != ';')
                clause--;
            const char *end = hit + strcspn(hit, ";"), *at = NULL;
            int w = worker_in(clause, hit, false, &at);
            if (w < 0) w = worker_in(hit, end, true, &at);
            if (w >= 0 && strcmp(WORKERS[w], worker) == 0) return true;
        }
    }
    return false;
}

/* ---- tests ---------------------------------------------------------------------- */

static int worker_index(const char *id)
{
    return strcmp(id, WORKERS[0]) == 0 ? 0 : 1;
}

static void test_handovers_under_load(void **state)
{
    (void)state;
    ts_bus_t *bus = bus_connect();
    ts_registry_t *reg = registry();
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &t_cells, &n), TS_OK);
    ts_cell_entry_t *cells = t_cells;
    assert_int_equal(n, NCELLS);

    player_start(&P[0], -150, -150, false, 11);
    player_start(&P[1], 50, 50, false, 12);
    player_start(&P[2], -50, 150, false, 13);
    uint64_t applied0 = ts_probe_inputs_applied(probe);
    int sim = sim_start("sim-load", 7);
    wait_load(applied0);

    ts_rng_t rng;
    ts_rng_seed(&rng, 2024);
    int ok = 0;
    double freeze[HANDOVERS], total[HANDOVERS];
    uint64_t moved[NCELLS] = {0};
    char reply[512];
    players_watch(true);
    uint64_t t_first = ts_mono_us();
    uint64_t phase_end = ts_mono_us() + HANDOVER_PHASE_MS * 1000ULL;
    for (int i = 0; i < HANDOVERS; i++) {
        if (ts_mono_us() > phase_end) {
            ts_h.failed = true;
            fail_msg("only %d of %d handovers done in %d s", i, HANDOVERS, HANDOVER_PHASE_MS / 1000);
        }
        /* every other handover moves a cell a player stands in */
        size_t k = (size_t)(ts_rng_next(&rng) % n);
        if (i % 2 == 1) {
            player_t s;
            player_copy(&P[(i / 2) % NPLAYERS], &s);
            for (size_t j = 0; j < n; j++)
                if (ts_cell_eq(&cells[j].cell, &s.cell)) k = j;
        }
        ts_cell_entry_t *e = &cells[k];
        const char *to = WORKERS[1 - worker_index(e->owner)];
        char key[TS_CELL_STR_MAX], payload[160];
        ts_cell_format(&e->cell, key, sizeof key);
        snprintf(payload, sizeof payload, "%s %s", key, to);
        ts_status_t st = ts_probe_ctl(bus, WORLD, "handover", payload, CTL_TIMEOUT_MS, reply, sizeof reply);
        if (st != TS_OK) {
            ts_h.failed = true;
            fail_msg("handover %d (%s): no reply from the orchestrator: %s", i, payload, ts_status_str(st));
        }
        ts_probe_handover_t r;
        if (!ts_probe_parse_handover(reply, &r)) {
            ts_h.failed = true;
            fail_msg("handover %d (%s, registry says %s at epoch %" PRIu64 "): reply \"%s\"", i, payload,
                     e->owner, e->epoch, reply);
        }
        if (strcmp(r.from, e->owner) != 0 || strcmp(r.to, to) != 0 || r.epoch_from != e->epoch ||
            r.epoch_to != e->epoch + 1) {
            ts_h.failed = true;
            fail_msg("handover %d (%s): reply \"%s\", want %s->%s epoch %" PRIu64 "->%" PRIu64, i, payload,
                     reply, e->owner, to, e->epoch, e->epoch + 1);
        }
        ts_strlcpy(e->owner, to, sizeof e->owner);
        e->epoch = r.epoch_to;
        freeze[ok] = (double)r.freeze_us;
        total[ok] = (double)r.total_us;
        moved[k]++;
        ok++;
    }
    players_watch(false);
    uint64_t t_last = ts_mono_us();
    fprintf(stderr, "handovers: %d ok; freeze p50 %.0f us p99 %.0f us, total p50 %.0f us p99 %.0f us\n", ok,
            ts_percentile(freeze, (size_t)ok, 50), ts_percentile(freeze, (size_t)ok, 99),
            ts_percentile(total, (size_t)ok, 50), ts_percentile(total, (size_t)ok, 99));
    assert_int_equal(ok, HANDOVERS);

    /* the registry agrees with every reply: owner and exactly one epoch step per move */
    for (size_t k = 0; k < n; k++) {
        ts_cell_entry_t now = cell_get(reg, &cells[k].cell);
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&cells[k].cell, key, sizeof key);
        if (strcmp(now.owner, cells[k].owner) != 0 || now.epoch != cells[k].epoch ||
            now.epoch != 1 + moved[k] || now.state != TS_CELL_ACTIVE) {
            ts_h.failed = true;
            fail_msg("cell %s: registry says %s epoch %" PRIu64 " (%s); the replies said %s epoch %" PRIu64
                     " after %" PRIu64 " moves",
                     key, now.owner, now.epoch, ts_cell_state_str(now.state), cells[k].owner, cells[k].epoch,
                     moved[k]);
        }
    }

    /* each worker's heartbeat lists exactly the cells the registry gives it */
    wait_heartbeats_agree(cells, n, t_last);

    assert_int_equal(ts_probe_ctl(bus, WORLD, "stats", "", CTL_TIMEOUT_MS, reply, sizeof reply), TS_OK);
    {
        double handovers = 0, p50 = 0, p99 = 0;
        ts_probe_json_number(reply, "freeze_us_p50", &p50);
        ts_probe_json_number(reply, "freeze_us_p99", &p99);
        fprintf(stderr, "orchestrator stats: freeze p50 %.0f us, p99 %.0f us (%s)\n", p50, p99, reply);
        assert_true(ts_probe_json_number(reply, "handovers", &handovers));
        assert_true(handovers >= ok);
        double aborted = -1, failed = -1, refused = -1;
        assert_true(ts_probe_json_number(reply, "aborted", &aborted));
        assert_true(ts_probe_json_number(reply, "failed", &failed));
        assert_true(ts_probe_json_number(reply, "refused", &refused));
        if (aborted != 0 || failed != 0 || refused != 0) {
            ts_h.failed = true;
            fail_msg("every handover replied ok, yet the orchestrator counts %.0f aborted, %.0f failed, %.0f "
                     "refused",
                     aborted, failed, refused);
        }
    }

    for (int i = 0; i < NPLAYERS; i++)
        player_settle(&P[i], 15000);
    for (int i = 0; i < NPLAYERS; i++) {
        player_t s;
        player_assert_exact(&P[i], i);
        player_copy(&P[i], &s);
        double watched_s = (double)(s.watch_to_us - s.watch_from_us) / 1e6;
        if (s.max_gap_us > MAX_GAP_US || s.jumps != 0 ||
            (double)s.watched_changes < MIN_MOVES_PER_S * watched_s) {
            ts_h.failed = true;
            fail_msg("player %d: entity stood still for %.0f ms during the handovers, %" PRIu64
                     " jumps (first: %s), %" PRIu64
                     " position changes in the %.1f s of handovers (want >= %.0f/s)",
                     i, (double)s.max_gap_us / 1000, s.jumps, s.jumps ? s.jump : "-", s.watched_changes,
                     watched_s, MIN_MOVES_PER_S);
        }
    }
    sim_verify(sim, t_first, "the first handover");

    ts_h_pass();
}

static void test_abort_when_target_stalls(void **state)
{
    (void)state;
    ts_bus_t *bus = bus_connect();
    ts_registry_t *reg = registry();
    const ts_cell_t cell = {.world = WORLD, .cx = -1, .cy = 0};
    char key[TS_CELL_STR_MAX], payload[160], reply[512];
    ts_cell_format(&cell, key, sizeof key);

    /* the cell belongs to w1 (the previous test may have moved it) */
    ts_cell_entry_t before = cell_get(reg, &cell);
    if (strcmp(before.owner, "w1") != 0) {
        snprintf(payload, sizeof payload, "%s w1", key);
        assert_int_equal(ts_probe_ctl(bus, WORLD, "handover", payload, CTL_TIMEOUT_MS, reply, sizeof reply),
                         TS_OK);
        if (strncmp(reply, "ok ", 3) != 0) {
            ts_h.failed = true;
            fail_msg("handover of %s back to w1: %s", key, reply);
        }
        before = cell_get(reg, &cell);
    }
    assert_string_equal(before.owner, "w1");

    player_start(&P[0], -50, 50, true, 21);
    uint64_t applied0 = ts_probe_inputs_applied(probe);
    int sim = sim_start("sim-abort", 8);
    wait_load(applied0);
    double aborted_before = 0;
    assert_int_equal(ts_probe_ctl(bus, WORLD, "stats", "", CTL_TIMEOUT_MS, reply, sizeof reply), TS_OK);
    assert_true(ts_probe_json_number(reply, "aborted", &aborted_before));

    ts_h_signal(&ts_h, stack.workers[1], SIGSTOP);
    snprintf(payload, sizeof payload, "%s w2", key);
    uint64_t t0 = ts_mono_us();
    ts_status_t st = ts_probe_ctl(bus, WORLD, "handover", payload, 30000, reply, sizeof reply);
    double took_ms = (double)(ts_mono_us() - t0) / 1000;
    fprintf(stderr, "handover to a stopped w2: \"%s\" after %.0f ms\n", reply, took_ms);
    if (st != TS_OK || strncmp(reply, "error:", 6) != 0) {
        ts_h_signal(&ts_h, stack.workers[1], SIGCONT);
        ts_h.failed = true;
        fail_msg("handover of %s to a stopped w2: %s, reply \"%s\"; want an error", key, ts_status_str(st),
                 reply);
    }
    /* the cause it gives is the one provoked: the target w2 did not answer
     * (w1, the source, answers everything) */
    if (!blames_unanswered(reply, "w2") || blames_unanswered(reply, "w1")) {
        ts_h_signal(&ts_h, stack.workers[1], SIGCONT);
        ts_h.failed = true;
        fail_msg(
            "the abort of %s's handover to a stopped w2 gives the wrong cause: \"%s\"; want it to say that "
            "the target w2 did not answer (and not blame the source w1)",
            key, reply);
    }
    ts_cell_entry_t after = cell_get(reg, &cell);
    if (strcmp(after.owner, "w1") != 0 || after.epoch != before.epoch || after.state != TS_CELL_ACTIVE) {
        ts_h_signal(&ts_h, stack.workers[1], SIGCONT);
        ts_h.failed = true;
        fail_msg("after the aborted handover the registry says %s epoch %" PRIu64
                 " (%s), want w1 epoch %" PRIu64 " active",
                 after.owner, after.epoch, ts_cell_state_str(after.state), before.epoch);
    }

    /* w2 still stopped: the cell is back in w1's hands and applies new inputs */
    player_t s;
    player_copy(&P[0], &s);
    uint64_t target = s.sent + 5;
    uint64_t deadline = ts_mono_us() + 5000000;
    while (ts_mono_us() < deadline) {
        player_copy(&P[0], &s);
        if (s.applied >= target) break;
        ts_sleep_ms(50);
    }
    ts_h_signal(&ts_h, stack.workers[1], SIGCONT);
    if (s.applied < target) {
        ts_h.failed = true;
        fail_msg("after the abort the cell %s stopped applying inputs: %" PRIu64 " applied, %" PRIu64 " sent",
                 key, s.applied, s.sent);
    }

    /* nothing commits late once the target wakes up: w2 works through what
     * queued up while it was stopped (the PreCopy, the ABORT) and goes on
     * heartbeating for a liveness TTL without taking the cell */
    uint64_t t_cont = ts_mono_us();
    ts_probe_hb_t l;
    uint64_t deadline_hb = t_cont + WAIT_MS * 1000ULL;
    while (!(ts_probe_heartbeat(probe, "w2", &l) && l.received_us > t_cont + HB_TTL_MS * 1000ULL)) {
        if (ts_mono_us() > deadline_hb) {
            ts_h.failed = true;
            fail_msg("w2 sent no heartbeat in the %d s after SIGCONT", WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
    after = cell_get(reg, &cell);
    assert_string_equal(after.owner, "w1");
    assert_int_equal(after.epoch, before.epoch);
    assert_false(ts_probe_hb_has(&l, &cell));
    assert_true(ts_probe_heartbeat(probe, "w1", &l));
    assert_true(ts_probe_hb_has(&l, &cell));
    double aborted_after = 0;
    assert_int_equal(ts_probe_ctl(bus, WORLD, "stats", "", CTL_TIMEOUT_MS, reply, sizeof reply), TS_OK);
    assert_true(ts_probe_json_number(reply, "aborted", &aborted_after));
    if (aborted_after != aborted_before + 1) {
        ts_h.failed = true;
        fail_msg(
            "the orchestrator counts %.0f aborted handovers, %.0f before this one; want exactly one more",
            aborted_after, aborted_before);
    }

    player_settle(&P[0], 15000);
    player_assert_exact(&P[0], 0);
    sim_verify(sim, t0, "the handover request");

    ts_h_pass();
}

/* ---- fixtures ---------------------------------------------------------------------- */

static void unwatch(void)
{
    ts_ledger_destroy(ledger);
    ts_probe_destroy(probe);
    ts_bus_destroy(hb_bus);
    ledger = NULL;
    probe = NULL;
    hb_bus = NULL;
}

static bool wait_ready(void)
{
    bool ctl_ok, bound;
    ts_probe_wait_ready(probe, hb_bus, WORLD, NCELLS / 2, WAIT_MS, &ctl_ok, &bound);
    if (!ctl_ok) fprintf(stderr, "tessera-orch does not answer tessera.ctl.%d.stats\n", WORLD);
    if (!bound)
        fprintf(stderr, "workers w1 and w2 did not report %d cells each in their heartbeats\n", NCELLS / 2);
    return ctl_ok && bound;
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    if (ts_bus_connect(&hb_bus, ts_h.nats_url, "it_handover-watch") != TS_OK ||
        ts_probe_create(&probe, hb_bus) != TS_OK || ts_ledger_create(&ledger, hb_bus, WORLD) != TS_OK)
        goto fail;
    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, PRECOPY_ARG, NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, PRECOPY_ARG, NULL};
    ws_port = ts_h_free_port();
    snprintf(ws_listen, sizeof ws_listen, "--gateway.ws_listen=127.0.0.1:%d", ws_port);
    const char *gw[] = {use_ws ? ws_listen : NULL, NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, gw, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS) ||
        (use_ws && !ts_h_wait_port(ws_port, WAIT_MS)) || !wait_ready())
        goto fail;
    return 0;
fail:
    ts_h_fail_dump(&ts_h);
    unwatch();
    ts_h_stop(&ts_h);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    players_stop_all();
    unwatch();
    ts_h_stop(&ts_h);
    return 0;
}

static int test_teardown(void **state)
{
    players_stop_all();
    free(t_cells);
    ts_registry_destroy(t_reg);
    ts_bus_destroy(t_bus);
    t_cells = NULL;
    t_reg = NULL;
    t_bus = NULL;
    ts_h_signal(&ts_h, stack.workers[1], SIGCONT);
    ts_h_test_teardown(state);
    return 0;
}

int main(int argc, char **argv)
{
    use_ws = argc > 1 && strcmp(argv[1], "--ws") == 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_handovers_under_load, ts_h_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_abort_when_target_stalls, ts_h_test_setup, test_teardown),
    };
    return TS_H_RUN(use_ws ? "it_handover_ws" : "it_handover", tests, group_setup, group_teardown);
}
