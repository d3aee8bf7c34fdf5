/* Crash recovery and fencing end to end: real nats-server -js and
 * redis-server, tessera-orch (no automatic rebalancing, liveness TTL
 * 1.5 s), workers w1 and w2 refreshing their liveness every 250 ms, a
 * gateway and tessera-sim. Every test gets a fresh cluster.
 *
 * What users rely on, asserted here:
 *  - a worker killed with SIGKILL loses its cells to a live worker within
 *    3 s (each at exactly epoch + 1), the new owner reports them in its
 *    heartbeat within 3 s, and no input JetStream acknowledged is lost
 *    (the sim ends with applied == acked == sent);
 *  - a worker that stalls (SIGSTOP) long enough to be declared dead and then
 *    wakes up is fenced: whatever state it still publishes carries an epoch
 *    below the registry's, it stops acting as owner within ~2 s, a player in
 *    one of its cells never sees its input count go backwards and ends with
 *    every input applied exactly once;
 *  - a player walking at constant velocity through the SIGKILL of its
 *    cell's owner goes on from where it was, not from where the cell's last
 *    checkpoint had it: the new owner replays the ticks since then (its
 *    first state is within a tick or two of where the walk had it by then,
 *    never behind the last position the dead owner published). */
#include <inttypes.h>
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
#define WAIT_MS 20000
#define RECOVERY_MAX_US 3000000ULL
#define FENCE_MAX_US 2000000ULL
#define POLL_MS 50
#define MOVE_MS 100
#define HB_TTL_ARG "--orch.hb_ttl_ms=1500"
#define LOAD_INPUTS 3000 /* sim inputs applied before anything is disturbed */
#define SETTLE_DELTAS 20 /* Deltas a settled player watches for a late double */

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
/* `it_recovery --ws`: the players connect over WebSocket (gateway.ws_listen) */
static bool use_ws;
static int ws_port;
static char ws_listen[64];
static ts_bus_t *bus;
static ts_bus_sub_t *state_sub;
static ts_probe_t *probe;
static ts_ledger_t *ledger;
static ts_registry_t *reg;

#define MAX_CELLS TS_PROBE_CELLS

/* ---- one entity's position as published, before and after a recovery ---------- */

static struct {
    pthread_mutex_t mu;
    uint64_t entity;
    uint64_t old_epoch, new_epoch; /* of its cell: before the kill, after the recovery */
    bool have_old, have_new;
    double old_x, new_x;     /* the last position at old_epoch, the first at new_epoch */
    uint64_t old_us, new_us; /* when they arrived (monotonic) */
} WK = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void walker_note(const Tessera__V1__StateDelta *d)
{
    pthread_mutex_lock(&WK.mu);
    for (size_t i = 0; WK.entity && i < d->n_entities; i++) {
        const Tessera__V1__EntityState *e = d->entities[i];
        if (e->id != WK.entity) continue;
        if (d->epoch == WK.old_epoch) {
            WK.have_old = true;
            WK.old_x = e->x;
            WK.old_us = ts_mono_us();
        } else if (WK.new_epoch && d->epoch == WK.new_epoch && !WK.have_new) {
            WK.have_new = true;
            WK.new_x = e->x;
            WK.new_us = ts_mono_us();
        }
    }
    pthread_mutex_unlock(&WK.mu);
}

/* ---- state published on the reassigned cells ---------------------------------- */

static struct {
    pthread_mutex_t mu;
    bool armed;
    const char *zombie;               /* worker id whose state is watched */
    ts_probe_cell_t cells[MAX_CELLS]; /* reassigned cells and their new epochs */
    size_t n;
    uint64_t zombie_msgs, zombie_bad, hdr_mismatch, new_owner_msgs;
    uint64_t last_zombie_us;
    char bad[192];
} SW = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_state(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__StateDelta *d =
        tessera__v1__state_delta__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (d == NULL) return;
    walker_note(d);
    ts_cell_t c;
    uint64_t hdr_epoch = ts_bus_msg_header_u64(m, TS_HDR_EPOCH);
    pthread_mutex_lock(&SW.mu);
    if (SW.armed && d->cell && ts_proto_cell_get(d->cell, &c) == TS_OK) {
        for (size_t i = 0; i < SW.n; i++) {
            if (!ts_cell_eq(&c, &SW.cells[i].cell)) continue;
            if (hdr_epoch != d->epoch) SW.hdr_mismatch++;
            if (d->owner && strcmp(d->owner, SW.zombie) == 0) {
                SW.zombie_msgs++;
                SW.last_zombie_us = ts_mono_us();
                if (d->epoch >= SW.cells[i].epoch && SW.zombie_bad++ == 0)
                    snprintf(SW.bad, sizeof SW.bad,
                             "%s published state of %s at epoch %" PRIu64 " (registry: %" PRIu64 ")",
                             d->owner, ts_bus_msg_subject(m), d->epoch, SW.cells[i].epoch);
            } else if (d->epoch == SW.cells[i].epoch) {
                SW.new_owner_msgs++;
            }
        }
    }
    pthread_mutex_unlock(&SW.mu);
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

/* ---- checkpoints written, per cell ----------------------------------------------
 * Every message on cell.0.*.*.*.*.checkpoint (and .checkpoint.<part>, the
 * parts of a chunked one) as published: when each cell last had one. */

static struct {
    pthread_mutex_t mu;
    ts_cell_t cells[MAX_CELLS];
    uint64_t last_us[MAX_CELLS];
    size_t n;
} CKW = {.mu = PTHREAD_MUTEX_INITIALIZER};
static ts_bus_sub_t *ckpt_subs[2];

static void on_checkpoint(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    ts_cell_t c;
    char key[TS_SUBJECT_MAX];
    /* cell.<w>.<cx>.<cy>.<depth>.<sub>.checkpoint[.<part>] */
    const char *subj = ts_bus_msg_subject(m);
    if (strncmp(subj, "cell.", 5) != 0) return;
    ts_strlcpy(key, subj + 5, sizeof key);
    char *end = strstr(key, ".checkpoint");
    if (end == NULL) return;
    *end = '\0';
    if (ts_cell_parse(key, &c) != TS_OK) return;
    pthread_mutex_lock(&CKW.mu);
    size_t i = 0;
    while (i < CKW.n && !ts_cell_eq(&CKW.cells[i], &c))
        i++;
    if (i == CKW.n && CKW.n < MAX_CELLS) CKW.cells[CKW.n++] = c;
    if (i < CKW.n) CKW.last_us[i] = ts_mono_us();
    pthread_mutex_unlock(&CKW.mu);
}

/* Waits until every cell in cells had a checkpoint written after since_us. */
static void wait_checkpoints(const ts_probe_cell_t *cells, size_t n, uint64_t since_us)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        size_t done = 0;
        char missing[TS_CELL_STR_MAX] = "-";
        pthread_mutex_lock(&CKW.mu);
        for (size_t k = 0; k < n; k++) {
            bool fresh = false;
            for (size_t i = 0; i < CKW.n && !fresh; i++)
                fresh = ts_cell_eq(&CKW.cells[i], &cells[k].cell) && CKW.last_us[i] > since_us;
            if (fresh)
                done++;
            else
                ts_cell_format(&cells[k].cell, missing, sizeof missing);
        }
        pthread_mutex_unlock(&CKW.mu);
        if (done == n) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%zu of %zu cells had no checkpoint written in %d s under load (e.g. %s)", n - done, n,
                     WAIT_MS / 1000, missing);
        }
        ts_sleep_ms(20);
    }
}

/* Waits until the workers applied LOAD_INPUTS inputs more than since (a
 * ts_probe_inputs_applied() value, or one worker's with worker set). */
static void wait_applied(const char *worker, uint64_t since)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        ts_probe_hb_t hb = {.inputs_applied = 0};
        uint64_t now = worker ? (ts_probe_heartbeat(probe, worker, &hb) ? hb.inputs_applied : 0)
                              : ts_probe_inputs_applied(probe);
        if (now >= since + LOAD_INPUTS) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s applied %" PRIu64 " inputs in %d s, want %d", worker ? worker : "the workers",
                     now > since ? now - since : 0, WAIT_MS / 1000, LOAD_INPUTS);
        }
        ts_sleep_ms(20);
    }
}

/* ---- one gateway client hovering in its cell, on its own thread ----------------- */

static struct {
    ts_client_t *c;
    pthread_t thread;
    bool running;
    atomic_bool stop_sending, stop;
    double walk_vx; /* not 0: one Move at this velocity, then only reading */
    pthread_mutex_t mu;
    uint64_t entity, sent, last_seq;
    bool closed;
    ts_status_t close_status;
    int errors;
    char last_error[128];
    uint64_t applied, max_applied, last_input_seq, regressions, deltas;
    char regression[128];
} PL = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
    uint64_t sent, last_seq, applied, max_applied, last_input_seq, regressions, deltas;
    bool closed;
    int errors;
} player_view_t;

static player_view_t player_view(void)
{
    pthread_mutex_lock(&PL.mu);
    player_view_t v = {PL.sent,        PL.last_seq, PL.applied, PL.max_applied, PL.last_input_seq,
                       PL.regressions, PL.deltas,   PL.closed,  PL.errors};
    pthread_mutex_unlock(&PL.mu);
    return v;
}

static void note_frame(const Tessera__V1__ServerFrame *f)
{
    pthread_mutex_lock(&PL.mu);
    if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
        PL.entity = f->snapshot->entity;
    } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA) {
        PL.deltas++;
        for (size_t i = 0; i < f->delta->n_entities; i++) {
            const Tessera__V1__EntityState *e = f->delta->entities[i];
            if (PL.entity == 0 || e->id != PL.entity) continue;
            if (e->inputs_applied < PL.applied && PL.regressions++ == 0)
                snprintf(PL.regression, sizeof PL.regression, "inputs_applied %" PRIu64 " -> %" PRIu64,
                         PL.applied, e->inputs_applied);
            PL.applied = e->inputs_applied;
            PL.last_input_seq = e->last_input_seq;
            if (e->inputs_applied > PL.max_applied) PL.max_applied = e->inputs_applied;
        }
    } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR) {
        PL.errors++;
        snprintf(PL.last_error, sizeof PL.last_error, "code %d: %s", f->error->code, f->error->message);
    }
    pthread_mutex_unlock(&PL.mu);
}

static void player_closed(ts_status_t st)
{
    pthread_mutex_lock(&PL.mu);
    PL.closed = true;
    PL.close_status = st;
    pthread_mutex_unlock(&PL.mu);
}

static void *player_main(void *arg)
{
    (void)arg;
    uint64_t next_move = ts_mono_us();
    for (int k = 0; !atomic_load(&PL.stop);) {
        uint64_t now = ts_mono_us();
        if (!atomic_load(&PL.stop_sending) && now >= next_move) {
            /* small moves back and forth: the entity stays in its cell */
            double vx = PL.walk_vx != 0 ? PL.walk_vx : k % 2 ? 3 : -3;
            k++;
            if (PL.walk_vx != 0) atomic_store(&PL.stop_sending, true);
            ts_status_t st = ts_client_move(PL.c, vx, 0);
            if (st != TS_OK) {
                player_closed(st);
                break;
            }
            pthread_mutex_lock(&PL.mu);
            PL.sent++;
            PL.last_seq = ts_client_last_seq(PL.c);
            pthread_mutex_unlock(&PL.mu);
            next_move = now + MOVE_MS * 1000;
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(PL.c, 20, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        if (st != TS_OK) {
            player_closed(st);
            break;
        }
        note_frame(f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return NULL;
}

/* Connects, joins at (x, y) and starts the player's thread. A refused Join
 * (the gateway may not know every cell in its first second) is retried. */
static void player_start(double x, double y)
{
    if (use_ws)
        assert_int_equal(ts_client_connect_ws(&PL.c, "127.0.0.1", ws_port, NULL, 3000), TS_OK);
    else
        assert_int_equal(ts_client_connect(&PL.c, "127.0.0.1", stack.gw_port, 3000), TS_OK);
    uint64_t deadline = ts_mono_us() + 10000000;
    int errors = -1;
    while (PL.entity == 0 && ts_mono_us() < deadline) {
        if (errors != PL.errors) {
            if (errors >= 0) ts_sleep_ms(200);
            errors = PL.errors;
            assert_int_equal(ts_client_join(PL.c, x, y, "it-recovery"), TS_OK);
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(PL.c, 200, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        assert_int_equal(st, TS_OK);
        note_frame(f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    if (PL.entity == 0) {
        ts_h.failed = true;
        fail_msg("no Snapshot within 10 s after joining at (%.0f, %.0f); last error: %s", x, y,
                 PL.errors ? PL.last_error : "none");
    }
    PL.errors = 0;
    PL.sent = 1;
    PL.last_seq = ts_client_last_seq(PL.c);
    assert_int_equal(pthread_create(&PL.thread, NULL, player_main, NULL), 0);
    PL.running = true;
}

static void player_stop(void)
{
    if (PL.running) {
        atomic_store(&PL.stop, true);
        pthread_join(PL.thread, NULL);
        PL.running = false;
    }
    ts_client_destroy(PL.c);
    PL.c = NULL;
}

/* Stops sending, waits until every input shows applied, and checks it
 * stays exactly so for SETTLE_DELTAS more Deltas (a second of ticks). */
static void player_assert_exact(void)
{
    atomic_store(&PL.stop_sending, true);
    uint64_t deadline = ts_mono_us() + 15000000;
    player_view_t v;
    do {
        ts_sleep_ms(20);
        v = player_view();
    } while (!v.closed && !(v.applied >= v.sent && v.last_input_seq >= v.last_seq) &&
             ts_mono_us() < deadline);
    uint64_t deltas = v.deltas;
    do {
        ts_sleep_ms(20);
        v = player_view();
    } while (!v.closed && v.deltas < deltas + SETTLE_DELTAS && ts_mono_us() < deadline);
    fprintf(stderr,
            "player: sent %" PRIu64 " applied %" PRIu64 " (max %" PRIu64 ") last_seq %" PRIu64 "/%" PRIu64
            "\n",
            v.sent, v.applied, v.max_applied, v.last_input_seq, v.last_seq);
    if (v.closed) {
        ts_h.failed = true;
        fail_msg("the player lost its connection: %s", ts_status_str(PL.close_status));
    }
    if (v.errors) {
        ts_h.failed = true;
        fail_msg("the player got %d error frames, last: %s", v.errors, PL.last_error);
    }
    if (v.regressions) {
        ts_h.failed = true;
        fail_msg("the player saw its input count go backwards %" PRIu64 " times, first: %s", v.regressions,
                 PL.regression);
    }
    if (v.applied != v.sent || v.max_applied != v.sent || v.last_input_seq != v.last_seq) {
        ts_h.failed = true;
        fail_msg("the player sent %" PRIu64 " inputs (last seq %" PRIu64 ") but its entity shows %" PRIu64
                 " applied (max %" PRIu64 "), last_input_seq %" PRIu64,
                 v.sent, v.last_seq, v.applied, v.max_applied, v.last_input_seq);
    }
}

/* ---- cluster ------------------------------------------------------------------------ */

static void print_stats(void)
{
    char reply[1024];
    if (ts_probe_ctl(bus, WORLD, "stats", "", 2000, reply, sizeof reply) == TS_OK)
        fprintf(stderr, "orchestrator stats: %s\n", reply);
}

static void cluster_start(void)
{
    ts_h_start(&ts_h);
    memset(&SW.cells, 0, sizeof SW.cells);
    SW.armed = false;
    SW.n = 0;
    SW.zombie_msgs = SW.zombie_bad = SW.hdr_mismatch = SW.new_owner_msgs = SW.last_zombie_us = 0;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_recovery"), TS_OK);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    assert_int_equal(ts_ledger_create(&ledger, bus, WORLD), TS_OK);
    char subject[TS_SUBJECT_MAX];
    ts_subject_world_wildcard(subject, sizeof subject, WORLD, TS_SUBJ_STATE);
    assert_int_equal(ts_bus_subscribe(bus, subject, on_state, NULL, &state_sub), TS_OK);
    pthread_mutex_lock(&CKW.mu);
    CKW.n = 0;
    pthread_mutex_unlock(&CKW.mu);
    ts_subject_world_wildcard(subject, sizeof subject, WORLD, TS_SUBJ_CHECKPOINT);
    assert_int_equal(ts_bus_subscribe(bus, subject, on_checkpoint, NULL, &ckpt_subs[0]), TS_OK);
    strcat(subject, ".>");
    assert_int_equal(ts_bus_subscribe(bus, subject, on_checkpoint, NULL, &ckpt_subs[1]), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);

    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, NULL};
    ws_port = ts_h_free_port();
    snprintf(ws_listen, sizeof ws_listen, "--gateway.ws_listen=127.0.0.1:%d", ws_port);
    const char *gw[] = {use_ws ? ws_listen : NULL, NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, gw, &stack);

    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS) ||
        (use_ws && !ts_h_wait_port(ws_port, WAIT_MS))) {
        ts_h.failed = true;
        fail_msg("the world or the gateway did not come up");
    }
    bool ctl_ok, bound;
    ts_probe_wait_ready(probe, bus, WORLD, NCELLS / 2, WAIT_MS, &ctl_ok, &bound);
    if (!ctl_ok) {
        ts_h.failed = true;
        fail_msg("tessera-orch does not answer tessera.ctl.%d.stats", WORLD);
    }
    if (!bound) {
        ts_h.failed = true;
        fail_msg("workers w1 and w2 did not report %d cells each in their heartbeats", NCELLS / 2);
    }
}

static void cluster_stop(void)
{
    player_stop();
    for (int i = 0; i < 2; i++) {
        ts_bus_sub_destroy(ckpt_subs[i]);
        ckpt_subs[i] = NULL;
    }
    ts_bus_sub_destroy(state_sub);
    ts_ledger_destroy(ledger);
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    state_sub = NULL;
    ledger = NULL;
    probe = NULL;
    bus = NULL;
    reg = NULL;
    ts_h_stop(&ts_h);
}

static int sim_start(void)
{
    const char *args[] = {"--sim.players=300", "--sim.seed=3", NULL};
    return ts_h_spawn(&ts_h, "sim", "tessera-sim", args);
}

/* Stops the sim and checks its verdict: applied == acked == sent. On a
 * mismatch the ledger names what went missing, timed from event_us. */
static void sim_verify(int idx, const char *event, uint64_t event_us)
{
    int rc;
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, idx, ledger, event, event_us, &rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, want 0 with applied == acked == sent > 0; its verdict: %s", rc, v.line);
    }
}

/* The cells the registry gives to worker, with their epochs. */
static size_t owned_cells(const char *worker, ts_probe_cell_t *out, size_t cap)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0, k = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
    for (size_t i = 0; i < n && k < cap; i++)
        if (strcmp(cells[i].owner, worker) == 0) out[k++] = (ts_probe_cell_t){cells[i].cell, cells[i].epoch};
    free(cells);
    return k;
}

/* Polls the registry every POLL_MS until every cell in lost has another
 * owner at epoch + 1; fills moved with the new entries. Returns the time it
 * took from since_us, or UINT64_MAX after timeout_us. */
static uint64_t wait_reassigned(const char *from, const ts_probe_cell_t *lost, size_t n,
                                ts_probe_cell_t *moved, char owners[][TS_WORKER_ID_MAX], uint64_t since_us,
                                uint64_t timeout_us)
{
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++) {
            ts_cell_entry_t e;
            if (ts_registry_cell_get(reg, &lost[i].cell, &e) != TS_OK || strcmp(e.owner, from) == 0) continue;
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&e.cell, key, sizeof key);
            if (e.epoch != lost[i].epoch + 1) {
                ts_h.failed = true;
                fail_msg("cell %s went from %s epoch %" PRIu64 " to %s epoch %" PRIu64
                         "; want exactly one epoch step",
                         key, from, lost[i].epoch, e.owner, e.epoch);
            }
            moved[i] = (ts_probe_cell_t){e.cell, e.epoch};
            ts_strlcpy(owners[i], e.owner, TS_WORKER_ID_MAX);
            done++;
        }
        uint64_t now = ts_mono_us();
        if (done == n) return now - since_us;
        if (now - since_us > timeout_us) return UINT64_MAX;
        ts_sleep_ms(POLL_MS);
    }
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_killed_worker_cells_recovered(void **state)
{
    (void)state;
    cluster_start();
    int sim = sim_start();
    ts_probe_cell_t lost[MAX_CELLS], moved[MAX_CELLS];
    char owners[MAX_CELLS][TS_WORKER_ID_MAX];
    size_t n = owned_cells("w2", lost, MAX_CELLS);
    assert_int_equal(n, NCELLS / 2);
    /* load, and a checkpoint of every cell of w2 written under it */
    wait_applied(NULL, 0);
    wait_checkpoints(lost, n, ts_mono_us());

    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, stack.workers[1], SIGKILL);
    uint64_t reg_us = wait_reassigned("w2", lost, n, moved, owners, t_kill, 10000000);
    if (reg_us == UINT64_MAX) {
        ts_h.failed = true;
        fail_msg("10 s after SIGKILL of w2 not all of its %zu cells have a new owner", n);
    }
    for (size_t i = 0; i < n; i++)
        assert_string_equal(owners[i], "w1");

    uint64_t hb_us = UINT64_MAX;
    while (ts_mono_us() - t_kill < 10000000) {
        ts_probe_hb_t l;
        if (ts_probe_heartbeat(probe, "w1", &l) && l.received_us > t_kill &&
            ts_probe_hb_lists(&l, moved, n)) {
            hb_us = l.received_us - t_kill;
            break;
        }
        ts_sleep_ms(10);
    }
    fprintf(stderr, "recovery after SIGKILL of w2: %zu cells reassigned in %.0f ms, bound by w1 in %.0f ms\n",
            n, (double)reg_us / 1000, hb_us == UINT64_MAX ? -1.0 : (double)hb_us / 1000);
    print_stats();
    if (reg_us > RECOVERY_MAX_US || hb_us > RECOVERY_MAX_US) {
        ts_h.failed = true;
        fail_msg("recovery too slow: registry %.0f ms, heartbeat %.0f ms after the kill (limit %llu ms)",
                 (double)reg_us / 1000, hb_us == UINT64_MAX ? -1.0 : (double)hb_us / 1000,
                 RECOVERY_MAX_US / 1000);
    }

    /* the sim goes on against the recovered cells */
    ts_probe_hb_t w1_hb;
    assert_true(ts_probe_heartbeat(probe, "w1", &w1_hb));
    wait_applied("w1", w1_hb.inputs_applied);
    sim_verify(sim, "the kill", t_kill);
    cluster_stop();
    ts_h_pass();
}

static void test_stalled_worker_is_fenced(void **state)
{
    (void)state;
    cluster_start();
    int sim = sim_start();
    player_start(-50, 50); /* cell 0.-1.0.0.0, w1's */
    wait_applied(NULL, 0);

    ts_probe_cell_t lost[MAX_CELLS], moved[MAX_CELLS];
    char owners[MAX_CELLS][TS_WORKER_ID_MAX];
    size_t n = owned_cells("w1", lost, MAX_CELLS);
    assert_int_equal(n, NCELLS / 2);

    uint64_t t_stop = ts_mono_us();
    ts_h_signal(&ts_h, stack.workers[0], SIGSTOP);
    uint64_t reg_us = wait_reassigned("w1", lost, n, moved, owners, t_stop, 10000000);
    if (reg_us == UINT64_MAX) {
        ts_h_signal(&ts_h, stack.workers[0], SIGCONT);
        ts_h.failed = true;
        fail_msg("10 s after SIGSTOP of w1 not all of its %zu cells have a new owner", n);
    }
    for (size_t i = 0; i < n; i++)
        assert_string_equal(owners[i], "w2");
    player_view_t at_stop = player_view();

    pthread_mutex_lock(&SW.mu);
    SW.zombie = "w1";
    memcpy(SW.cells, moved, n * sizeof moved[0]);
    SW.n = n;
    SW.armed = true;
    pthread_mutex_unlock(&SW.mu);
    uint64_t t_cont = ts_mono_us();
    ts_h_signal(&ts_h, stack.workers[0], SIGCONT);
    fprintf(stderr, "w1 stopped: cells reassigned to w2 in %.0f ms; SIGCONT\n", (double)reg_us / 1000);

    /* a heartbeat from w1 sent 2 s after it woke up shows it owns nothing;
     * state it publishes is watched until it has heartbeated a second more */
    ts_probe_hb_t l = {.ncells = 0};
    bool fresh = false;
    while (!fresh && ts_mono_us() - t_cont < 10000000) {
        ts_sleep_ms(20);
        fresh = ts_probe_heartbeat(probe, "w1", &l) && l.received_us > t_cont + FENCE_MAX_US;
    }
    ts_probe_hb_t later = l;
    while (fresh && later.received_us < l.received_us + 1000000ULL && ts_mono_us() - t_cont < 10000000) {
        ts_sleep_ms(20);
        ts_probe_heartbeat(probe, "w1", &later);
    }

    pthread_mutex_lock(&SW.mu);
    SW.armed = false;
    uint64_t zombie_msgs = SW.zombie_msgs, zombie_bad = SW.zombie_bad, last_zombie = SW.last_zombie_us;
    uint64_t new_owner_msgs = SW.new_owner_msgs, hdr_mismatch = SW.hdr_mismatch;
    char bad[sizeof SW.bad];
    memcpy(bad, SW.bad, sizeof bad);
    pthread_mutex_unlock(&SW.mu);
    fprintf(stderr,
            "after SIGCONT: %" PRIu64
            " state messages from w1 on its former cells (last %.0f ms after SIGCONT), %" PRIu64
            " from w2 at the new epochs\n",
            zombie_msgs, last_zombie ? (double)(last_zombie - t_cont) / 1000 : 0.0, new_owner_msgs);
    if (zombie_bad) {
        ts_h.failed = true;
        fail_msg("not fenced: %s", bad);
    }
    assert_int_equal(hdr_mismatch, 0);
    if (last_zombie && last_zombie > t_cont + FENCE_MAX_US) {
        ts_h.failed = true;
        fail_msg("w1 still published state of its former cells %.0f ms after SIGCONT",
                 (double)(last_zombie - t_cont) / 1000);
    }
    if (!fresh || l.ncells != 0) {
        ts_h.failed = true;
        fail_msg("w1 %s", fresh ? "still lists cells in its heartbeat 2 s after SIGCONT"
                                : "sent no heartbeat after SIGCONT");
    }
    assert_true(new_owner_msgs > 0);

    /* w1 did not take anything back */
    for (size_t i = 0; i < n; i++) {
        ts_cell_entry_t e;
        assert_int_equal(ts_registry_cell_get(reg, &moved[i].cell, &e), TS_OK);
        assert_string_equal(e.owner, "w2");
        assert_int_equal(e.epoch, moved[i].epoch);
    }

    player_view_t now = player_view();
    assert_true(now.applied > at_stop.applied);
    player_assert_exact();
    sim_verify(sim, "SIGSTOP", t_stop);
    print_stats();
    cluster_stop();
    ts_h_pass();
}

/* The checkpoint period (worker.checkpoint_ms, the default) and how far
 * into it the owner is killed: a recovery that did not replay the ticks
 * after the checkpoint would put the walker back by this much of its walk. */
#define CKPT_PERIOD_US 1000000ULL
#define KILL_INTO_PERIOD_US 600000ULL
#define WALK_VX 5.0

static void test_walker_keeps_walking_through_recovery(void **state)
{
    (void)state;
    cluster_start();
    ts_probe_cell_t lost[MAX_CELLS], moved[MAX_CELLS];
    char owners[MAX_CELLS][TS_WORKER_ID_MAX];
    size_t n = owned_cells("w2", lost, MAX_CELLS);
    assert_int_equal(n, NCELLS / 2);
    /* in w2's first cell, 10 units from its west border, walking east */
    const ts_probe_cell_t *cell = &lost[0];
    PL.walk_vx = WALK_VX;
    player_start(cell->cell.cx * 100.0 + 10, cell->cell.cy * 100.0 + 50);
    pthread_mutex_lock(&WK.mu);
    WK.entity = PL.entity;
    WK.old_epoch = cell->epoch;
    pthread_mutex_unlock(&WK.mu);

    /* walking (its position published), then a checkpoint written after that */
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    double x0 = 0;
    for (bool walking = false; !walking;) {
        pthread_mutex_lock(&WK.mu);
        walking = WK.have_old && x0 != 0 && WK.old_x > x0;
        if (WK.have_old && x0 == 0) x0 = WK.old_x;
        pthread_mutex_unlock(&WK.mu);
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("the walker's entity %" PRIu64 " was not seen walking in %d s", PL.entity,
                     WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
    wait_checkpoints(cell, 1, ts_mono_us());
    uint64_t ckpt_us = 0;
    pthread_mutex_lock(&CKW.mu);
    for (size_t i = 0; i < CKW.n; i++)
        if (ts_cell_eq(&CKW.cells[i], &cell->cell)) ckpt_us = CKW.last_us[i];
    pthread_mutex_unlock(&CKW.mu);
    /* killed well into the checkpoint period (the next one not written yet) */
    while (ts_mono_us() < ckpt_us + KILL_INTO_PERIOD_US)
        ts_sleep_ms(5);
    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, stack.workers[1], SIGKILL);
    pthread_mutex_lock(&WK.mu);
    double before_x = WK.old_x;
    uint64_t before_us = WK.old_us;
    pthread_mutex_unlock(&WK.mu);
    if (t_kill - ckpt_us >= CKPT_PERIOD_US) {
        ts_h.failed = true;
        fail_msg("the kill came %.0f ms after the checkpoint, not within its period (a slow machine?)",
                 (double)(t_kill - ckpt_us) / 1000);
    }

    if (wait_reassigned("w2", lost, n, moved, owners, t_kill, 10000000) == UINT64_MAX) {
        ts_h.failed = true;
        fail_msg("10 s after SIGKILL of w2 not all of its %zu cells have a new owner", n);
    }
    pthread_mutex_lock(&WK.mu);
    WK.new_epoch = moved[0].epoch;
    pthread_mutex_unlock(&WK.mu);
    bool seen = false;
    while (!seen && ts_mono_us() - t_kill < 10000000ULL) {
        ts_sleep_ms(20);
        pthread_mutex_lock(&WK.mu);
        seen = WK.have_new;
        pthread_mutex_unlock(&WK.mu);
    }
    if (!seen) {
        ts_h.failed = true;
        fail_msg("no state of the walker from the new owner (epoch %" PRIu64 ") within 10 s", moved[0].epoch);
    }
    pthread_mutex_lock(&WK.mu);
    double after_x = WK.new_x;
    uint64_t after_us = WK.new_us;
    pthread_mutex_unlock(&WK.mu);
    /* where the walk had it when that state arrived, from the last position
     * the dead owner published (both timed at arrival: the same delays) */
    double expect_x = before_x + WALK_VX * (double)(after_us - before_us) / 1e6;
    fprintf(stderr,
            "walker: x %.2f at the kill (%.0f ms after the checkpoint), %.2f in the new owner's first state "
            "%.0f ms later; the walk had it at %.2f\n",
            before_x, (double)(t_kill - ckpt_us) / 1000, after_x, (double)(after_us - before_us) / 1000,
            expect_x);
    /* a tick of motion, plus how much later one of the two states could
     * arrive than the other on a loaded machine (behind: also the new
     * owner's conservative estimate of the present) */
    double slack = WALK_VX * 0.3;
    if (after_x < before_x - WALK_VX * 0.1) {
        ts_h.failed = true;
        fail_msg("the recovered walker went back from x %.2f to %.2f (the checkpoint's position: the ticks "
                 "after it were not replayed)",
                 before_x, after_x);
    }
    if (after_x < expect_x - 2 * slack || after_x > expect_x + slack) {
        ts_h.failed = true;
        fail_msg("the recovered walker is at x %.2f, want %.2f (-%.2f, +%.2f): where its walk had it",
                 after_x, expect_x, 2 * slack, slack);
    }
    /* the ticks between the checkpoint and the kill re-run as the dead
     * owner ran them: by its tick marks, not by the inputs' store times */
    char key[TS_CELL_STR_MAX], needle[TS_CELL_STR_MAX + 128];
    ts_cell_format(&cell->cell, key, sizeof key);
    snprintf(needle, sizeof needle,
             "cell %s: bound at epoch %" PRIu64 " from checkpoint/replay by its last owner's tick marks", key,
             moved[0].epoch);
    if (!ts_h_log_has(&ts_h, stack.workers[0], needle)) {
        ts_h.failed = true;
        fail_msg("w1 did not replay cell %s by w2's tick marks (its log has no \"%s\")", key, needle);
    }
    cluster_stop();
    ts_h_pass();
}

/* A cell handed over, then lost with its new owner: the new owner writes
 * its checkpoint of the cell at once, so the recovery follows the new
 * owner's tick marks from there, not the inputs' store times. */
static void test_handed_over_cell_replayed_by_its_marks(void **state)
{
    (void)state;
    cluster_start();
    ts_probe_cell_t mine[MAX_CELLS];
    assert_true(owned_cells("w1", mine, MAX_CELLS) > 0);
    ts_probe_cell_t cell = mine[0];
    char key[TS_CELL_STR_MAX], payload[160], reply[512] = "";
    ts_cell_format(&cell.cell, key, sizeof key);
    snprintf(payload, sizeof payload, "%s w2", key);
    ts_status_t st = ts_probe_ctl(bus, WORLD, "handover", payload, 10000, reply, sizeof reply);
    ts_probe_handover_t r;
    if (st != TS_OK || !ts_probe_parse_handover(reply, &r)) {
        ts_h.failed = true;
        fail_msg("handover %s: %s", payload, st == TS_OK ? reply : ts_status_str(st));
    }
    /* committed: w1 (frozen since) writes no checkpoint of it any more, so
     * the next one is w2's */
    wait_checkpoints(&cell, 1, ts_mono_us());
    ts_probe_cell_t at_w2 = {cell.cell, r.epoch_to}, moved = {0};
    char owner[1][TS_WORKER_ID_MAX];
    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, stack.workers[1], SIGKILL);
    if (wait_reassigned("w2", &at_w2, 1, &moved, owner, t_kill, 10000000) == UINT64_MAX) {
        ts_h.failed = true;
        fail_msg("10 s after SIGKILL of w2 cell %s has no new owner", key);
    }
    char needle[TS_CELL_STR_MAX + 128];
    snprintf(needle, sizeof needle,
             "cell %s: bound at epoch %" PRIu64 " from checkpoint/replay by its last owner's tick marks", key,
             moved.epoch);
    if (!ts_h_wait_log(&ts_h, stack.workers[0], needle, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("w1 did not replay cell %s by w2's tick marks (its log has no \"%s\")", key, needle);
    }
    cluster_stop();
    ts_h_pass();
}

/* The tick marks' stream deleted on its own: the workers create it again
 * (their once-a-second stream check) and their marks are stored again. */
static void test_marks_stream_created_again(void **state)
{
    (void)state;
    cluster_start();
    char stream[64], api[128];
    ts_bus_marks_stream(stream, sizeof stream, WORLD);
    snprintf(api, sizeof api, "$JS.API.STREAM.DELETE.%s", stream);
    ts_bus_msg_t *rep = NULL;
    assert_int_equal(ts_bus_request(bus, api, NULL, "", 0, 5000, &rep), TS_OK);
    assert_non_null(strstr((const char *)ts_bus_msg_data(rep), "\"success\":true"));
    ts_bus_msg_destroy(rep);
    ts_bus_stream_state_t ss = {0};
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while ((ts_bus_stream_state(bus, stream, &ss) != TS_OK || ss.msgs == 0) && ts_mono_us() < deadline)
        ts_sleep_ms(50);
    if (ss.msgs == 0) {
        ts_h.failed = true;
        fail_msg("%s not created again with marks in it within %d s", stream, WAIT_MS / 1000);
    }
    cluster_stop();
    ts_h_pass();
}

static int test_setup(void **state)
{
    ts_h_test_setup(state);
    atomic_store(&PL.stop, false);
    atomic_store(&PL.stop_sending, false);
    PL.walk_vx = 0;
    pthread_mutex_lock(&WK.mu);
    WK.entity = WK.old_epoch = WK.new_epoch = 0;
    WK.have_old = WK.have_new = false;
    pthread_mutex_unlock(&WK.mu);
    PL.entity = PL.sent = PL.last_seq = PL.applied = PL.max_applied = PL.last_input_seq = PL.regressions =
        PL.deltas = 0;
    PL.closed = false;
    PL.errors = 0;
    return 0;
}

static int test_teardown(void **state)
{
    ts_h_test_teardown(state);
    for (int i = 0; i < 2; i++)
        ts_h_signal(&ts_h, stack.workers[i], SIGCONT);
    cluster_stop();
    return 0;
}

int main(int argc, char **argv)
{
    use_ws = argc > 1 && strcmp(argv[1], "--ws") == 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_killed_worker_cells_recovered, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_stalled_worker_is_fenced, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_handed_over_cell_replayed_by_its_marks, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_marks_stream_created_again, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_walker_keeps_walking_through_recovery, test_setup,
                                        test_teardown),
    };
    return TS_H_RUN(use_ws ? "it_recovery_ws" : "it_recovery", tests, NULL, NULL);
}
