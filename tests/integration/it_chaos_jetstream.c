/* JetStream losing its store under load, end to end: real nats-server -js
 * and redis-server secured (each service its own user and permissions),
 * tessera-orch, workers w1 and w2, a gateway, tessera-sim's 200 players
 * publishing straight into the streams and one player moving through the gateway. nats-server is killed, its
 * store directory wiped and a new nats-server started on the same port.
 *
 * What users rely on, asserted here:
 *  - every input the player sent from the kill on is either applied to its
 *    entity or reported to it (ERROR_INPUT_NOT_STORED with its seq range):
 *    applied + reported >= sent, and never more applied than sent;
 *  - the world's input stream comes back without anyone restarting a
 *    service, and the player's cell is not frozen: its inputs are applied
 *    again within seconds;
 *  - after that, every input is applied exactly once: the player's entity
 *    shows exactly as many new inputs applied as it sent, and no error. */
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
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "tessera/client.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define WAIT_MS 20000
#define MOVE_MS 50
#define HB_TTL_ARG "--orch.hb_ttl_ms=1500"
#define PHASE2_INPUTS 40

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static pid_t nats2 = -1; /* the nats-server this test started itself */

static struct {
    ts_client_t *c;
    pthread_t thread;
    bool running;
    atomic_bool stop_sending, stop;
    atomic_bool send_halt; /* the player thread sends one Move(0, 0), then clears it */
    pthread_mutex_t mu;
    uint64_t entity, sent, last_seq;
    uint64_t send_limit; /* the player sends while sent < send_limit */
    bool closed;
    ts_status_t close_status;
    int errors, other_errors;
    uint64_t not_stored; /* inputs reported not stored (sum of the ranges) */
    char last_error[160];
    uint64_t applied, last_input_seq;
} PL = {.mu = PTHREAD_MUTEX_INITIALIZER, .send_limit = UINT64_MAX};

typedef struct {
    uint64_t sent, last_seq, applied, last_input_seq, not_stored;
    int errors, other_errors;
    bool closed;
} view_t;

static view_t view(void)
{
    pthread_mutex_lock(&PL.mu);
    view_t v = {PL.sent,       PL.last_seq, PL.applied,      PL.last_input_seq,
                PL.not_stored, PL.errors,   PL.other_errors, PL.closed};
    pthread_mutex_unlock(&PL.mu);
    return v;
}

static void note_frame(const Tessera__V1__ServerFrame *f)
{
    pthread_mutex_lock(&PL.mu);
    if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
        PL.entity = f->snapshot->entity;
    } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA) {
        for (size_t i = 0; i < f->delta->n_entities; i++) {
            const Tessera__V1__EntityState *e = f->delta->entities[i];
            if (PL.entity == 0 || e->id != PL.entity) continue;
            PL.applied = e->inputs_applied;
            PL.last_input_seq = e->last_input_seq;
        }
    } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR) {
        PL.errors++;
        const Tessera__V1__Error *e = f->error;
        if (e->code == TESSERA__V1__ERROR_CODE__ERROR_INPUT_NOT_STORED && e->last_seq >= e->first_seq &&
            e->first_seq > 0)
            PL.not_stored += e->last_seq - e->first_seq + 1;
        else
            PL.other_errors++;
        snprintf(PL.last_error, sizeof PL.last_error, "code %d: %s", e->code, e->message);
    }
    pthread_mutex_unlock(&PL.mu);
}

static void *player_main(void *arg)
{
    (void)arg;
    uint64_t next_move = ts_mono_us();
    for (int k = 0; !atomic_load(&PL.stop);) {
        uint64_t now = ts_mono_us();
        if (atomic_load(&PL.send_halt)) {
            ts_status_t st = ts_client_move(PL.c, 0, 0);
            pthread_mutex_lock(&PL.mu);
            if (st != TS_OK) {
                PL.closed = true;
                PL.close_status = st;
            } else {
                PL.sent++;
                PL.last_seq = ts_client_last_seq(PL.c);
            }
            pthread_mutex_unlock(&PL.mu);
            atomic_store(&PL.send_halt, false);
            if (st != TS_OK) break;
        }
        pthread_mutex_lock(&PL.mu);
        bool room = PL.sent < PL.send_limit;
        pthread_mutex_unlock(&PL.mu);
        if (room && !atomic_load(&PL.stop_sending) && now >= next_move) {
            ts_status_t st = ts_client_move(PL.c, k++ % 2 ? 3 : -3, 0);
            pthread_mutex_lock(&PL.mu);
            if (st != TS_OK) {
                PL.closed = true;
                PL.close_status = st;
            } else {
                PL.sent++;
                PL.last_seq = ts_client_last_seq(PL.c);
            }
            pthread_mutex_unlock(&PL.mu);
            if (st != TS_OK) break;
            next_move = now + MOVE_MS * 1000;
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(PL.c, 20, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        if (st != TS_OK) {
            pthread_mutex_lock(&PL.mu);
            PL.closed = true;
            PL.close_status = st;
            pthread_mutex_unlock(&PL.mu);
            break;
        }
        note_frame(f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return NULL;
}

static void player_start(double x, double y)
{
    pthread_mutex_lock(&PL.mu);
    PL.entity = PL.sent = PL.last_seq = PL.applied = PL.last_input_seq = PL.not_stored = 0;
    PL.closed = false;
    PL.send_limit = UINT64_MAX;
    PL.errors = PL.other_errors = 0;
    PL.last_error[0] = '\0';
    pthread_mutex_unlock(&PL.mu);
    assert_int_equal(ts_client_connect(&PL.c, "127.0.0.1", stack.gw_port, 3000), TS_OK);
    uint64_t deadline = ts_mono_us() + 10000000;
    int errors = -1;
    while (PL.entity == 0 && ts_mono_us() < deadline) {
        if (errors != PL.errors) {
            if (errors >= 0) ts_sleep_ms(200);
            errors = PL.errors;
            assert_int_equal(ts_client_join(PL.c, x, y, "it-chaos-js"), TS_OK);
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(PL.c, 200, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        assert_int_equal(st, TS_OK);
        note_frame(f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    if (PL.entity == 0) fail_msg("no Snapshot within 10 s after joining; last error: %s", PL.last_error);
    PL.errors = PL.other_errors = 0;
    PL.not_stored = 0;
    PL.sent = 1;
    PL.last_seq = ts_client_last_seq(PL.c);
    atomic_store(&PL.stop, false);
    atomic_store(&PL.stop_sending, false);
    atomic_store(&PL.send_halt, false);
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

/* Stops sending and waits until the last input sent shows in the entity;
 * false after timeout_ms. */
static bool settle(int64_t timeout_ms)
{
    atomic_store(&PL.stop_sending, true);
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    for (;;) {
        view_t v = view();
        if (v.last_input_seq >= v.last_seq) return true;
        if (ts_mono_us() > deadline || v.closed) return false;
        ts_sleep_ms(20);
    }
}

/* Stops sending and brings the player's entity to rest: one Move(0, 0)
 * after the last input, applied. Its last Move's velocity would otherwise
 * carry it on for as long as the test keeps the player quiet (3 units a
 * second: across a cell border within half a minute). false after
 * timeout_ms. */
static bool halt(int64_t timeout_ms)
{
    atomic_store(&PL.stop_sending, true);
    atomic_store(&PL.send_halt, true);
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    while (atomic_load(&PL.send_halt)) {
        if (ts_mono_us() > deadline || view().closed) return false;
        ts_sleep_ms(5);
    }
    return settle(timeout_ms);
}

/* ---- the test ------------------------------------------------------------------- */

/* Starts a nats-server of this test's own on the harness's NATS port, with
 * the harness's users, JetStream on store (or no JetStream at all), after
 * killing the previous one this test started. */
static void nats_restart(bool jetstream, const char *store)
{
    if (nats2 > 0) {
        kill(nats2, SIGKILL);
        waitpid(nats2, NULL, 0);
        nats2 = -1;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", ts_h.nats_port);
    nats2 = fork();
    assert_true(nats2 >= 0);
    if (nats2 == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        char logp[400];
        snprintf(logp, sizeof logp, "%s/nats2.log", ts_h.dir);
        FILE *l = freopen(logp, "a", stdout);
        (void)l;
        dup2(1, 2);
        const char *bin =
            access("/usr/sbin/nats-server", X_OK) == 0 ? "/usr/sbin/nats-server" : "/usr/bin/nats-server";
        char conf[400];
        snprintf(conf, sizeof conf, "%s/nats.conf", ts_h.secrets);
        if (jetstream)
            execl(bin, "nats-server", "-js", "-a", "127.0.0.1", "-p", port, "-sd", store, "-c", conf,
                  (char *)NULL);
        else
            execl(bin, "nats-server", "-a", "127.0.0.1", "-p", port, "-c", conf, (char *)NULL);
        _exit(127);
    }
}

static void test_store_wiped_under_load(void **state)
{
    (void)state;
    ts_h_start_secure(&ts_h); /* the services recreate streams with their own permissions */
    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS))
        fail_msg("the world or the gateway did not come up");
    /* load: the sim's players publish straight into the cells' streams, so
     * the old stream is far ahead of the new one when the store is lost */
    const char *sim_args[] = {"--sim.players=200", "--sim.seed=7", NULL};
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", sim_args);
    player_start(-50, 50);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (view().applied < 20) {
        if (ts_mono_us() > deadline)
            fail_msg("the player's inputs are not applied (%" PRIu64 ")", view().applied);
        ts_sleep_ms(20);
    }
    /* everything sent so far is applied: what follows is what the loss
     * does to inputs sent from the kill on */
    if (!settle(WAIT_MS)) fail_msg("the player's last input was not applied before the kill");
    view_t v0 = view();

    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, TS_H_NATS, SIGKILL);
    ts_h_wait(&ts_h, TS_H_NATS, 5000);
    atomic_store(&PL.stop_sending, false);
    char store[300], cmd[400];
    snprintf(store, sizeof store, "%s/js", ts_h.dir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", store);
    assert_int_equal(system(cmd), 0);
    ts_sleep_ms(500); /* the world runs without its bus for a while */
    nats_restart(true, store);
    uint64_t t_up = ts_mono_us();

    /* not frozen: the player's inputs are applied again */
    view_t v1 = view();
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (view().applied <= v1.applied) {
        if (ts_mono_us() > deadline || view().closed)
            fail_msg("%d s after the new nats-server started the player's cell applies nothing (%" PRIu64
                     " applied, closed %d, last error %s)",
                     WAIT_MS / 1000, view().applied, view().closed, PL.last_error);
        ts_sleep_ms(20);
    }
    uint64_t resumed_us = ts_mono_us() - t_up;
    if (!settle(WAIT_MS)) fail_msg("the player's inputs do not settle after the restart");
    view_t v2 = view();
    uint64_t sent = v2.sent - v0.sent, applied = v2.applied - v0.applied;
    fprintf(stderr,
            "store wiped: player sent %" PRIu64 " inputs from the kill on: %" PRIu64 " applied, %" PRIu64
            " reported not stored (%d other errors); applying again %.0f ms after the new server started "
            "(%.0f ms after the kill)\n",
            sent, applied, v2.not_stored - v0.not_stored, v2.other_errors, (double)resumed_us / 1000,
            (double)(ts_mono_us() - t_kill) / 1000);
    assert_false(v2.closed);
    assert_true(applied <= sent);
    assert_true(applied + (v2.not_stored - v0.not_stored) >= sent);

    /* afterwards: exactly once, no error */
    atomic_store(&PL.stop_sending, false);
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (view().sent < v2.sent + PHASE2_INPUTS) {
        if (ts_mono_us() > deadline) fail_msg("the player could not send");
        ts_sleep_ms(5);
    }
    if (!settle(WAIT_MS)) fail_msg("inputs sent after the restart are not all applied");
    view_t v3 = view();
    assert_int_equal(v3.applied - v2.applied, v3.sent - v2.sent);
    assert_int_equal(v3.errors, v2.errors);
    player_stop();
    /* the sim's own count includes what the lost store had acknowledged
     * and not delivered yet: shown, not checked */
    ts_h_signal(&ts_h, sim, SIGINT);
    ts_h_wait(&ts_h, sim, 30000);
    char *log = ts_h_read_log(&ts_h, sim);
    const char *done = log ? strstr(log, "sim: done") : NULL;
    if (done) fprintf(stderr, "%.*s\n", (int)strcspn(done, "\n"), done);
    free(log);
    ts_h_pass();
}

/* A store that cannot take inputs for a while (JetStream off, then back with
 * an empty store): every input the player sends meanwhile is reported to it
 * with its seq; once the stream is back its inputs are applied again. */
static void test_unstored_inputs_reported(void **state)
{
    (void)state;
    ts_h_start_secure(&ts_h);
    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, NULL};
    /* the player sends nothing while its inputs wait for their outcome (the
     * bus's tries, up to about a minute): its connection stays open */
    const char *gateway[] = {"--gateway.idle_timeout_s=300", NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, gateway, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS))
        fail_msg("the world or the gateway did not come up");
    player_start(-50, 50);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (view().applied < 10) {
        if (ts_mono_us() > deadline)
            fail_msg("the player's inputs are not applied (%" PRIu64 ")", view().applied);
        ts_sleep_ms(20);
    }
    /* at rest: the outage below lasts about 30 s, and the player must stay in
     * its cell (a crossing meanwhile is not what this test is about) */
    if (!halt(WAIT_MS)) fail_msg("the player's last input was not applied before the kill");
    view_t v0 = view();

    /* NATS comes back without JetStream: no input can be stored */
    char store[300], cmd[400];
    snprintf(store, sizeof store, "%s/js", ts_h.dir);
    ts_h_signal(&ts_h, TS_H_NATS, SIGKILL);
    ts_h_wait(&ts_h, TS_H_NATS, 5000);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", store);
    assert_int_equal(system(cmd), 0);
    nats_restart(false, store);
    if (!ts_h_wait_log(&ts_h, stack.gateway, "bus: reconnected", WAIT_MS))
        fail_msg("the gateway did not reconnect to the NATS without JetStream");
    /* exactly `lost` inputs: the player thread stops at the limit itself (a
     * stop flag set once the count is seen may come after one more send) */
    const uint64_t lost = 10;
    pthread_mutex_lock(&PL.mu);
    PL.send_limit = v0.sent + lost;
    pthread_mutex_unlock(&PL.mu);
    atomic_store(&PL.stop_sending, false);
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (view().sent < v0.sent + lost) {
        if (ts_mono_us() > deadline || view().closed)
            fail_msg("the player could not send %" PRIu64 " inputs (closed %d)", lost, view().closed);
        ts_sleep_ms(2);
    }
    atomic_store(&PL.stop_sending, true);
    pthread_mutex_lock(&PL.mu);
    PL.send_limit = UINT64_MAX;
    pthread_mutex_unlock(&PL.mu);
    view_t v1 = view();
    assert_int_equal(v1.sent - v0.sent, lost);
    /* the bus retries for 15 s, then the gateway reports them */
    uint64_t t_sent = ts_mono_us();
    deadline = t_sent + 120000000ULL;
    while (view().not_stored < v0.not_stored + lost) {
        if (ts_mono_us() > deadline || view().closed)
            fail_msg("%" PRIu64 " inputs sent without a store: %" PRIu64
                     " reported not stored after 120 s (last "
                     "error %s)",
                     lost, view().not_stored - v0.not_stored, PL.last_error);
        ts_sleep_ms(50);
    }
    view_t v2 = view();
    fprintf(stderr, "%" PRIu64 " inputs sent without a store: all %" PRIu64 " reported %.1f s later\n", lost,
            v2.not_stored - v0.not_stored, (double)(ts_mono_us() - t_sent) / 1e6);
    assert_int_equal(v2.not_stored - v0.not_stored, lost);
    assert_int_equal(v2.applied, v0.applied);
    assert_int_equal(v2.other_errors, v0.other_errors);

    /* JetStream back, empty: the streams are created again and inputs are
     * applied again, exactly once */
    nats_restart(true, store);
    atomic_store(&PL.stop_sending, false);
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (view().applied <= v2.applied) {
        if (ts_mono_us() > deadline) fail_msg("the player's cell applies nothing once JetStream is back");
        ts_sleep_ms(20);
    }
    if (!settle(WAIT_MS)) fail_msg("inputs after JetStream came back are not all applied");
    view_t v3 = view();
    /* what was sent before the stream existed again may have been reported */
    if (v3.applied < v2.applied)
        fail_msg("the entity's count of applied inputs went back from %" PRIu64 " to %" PRIu64, v2.applied,
                 v3.applied);
    uint64_t sent = v3.sent - v2.sent, applied = v3.applied - v2.applied,
             reported = v3.not_stored - v2.not_stored;
    fprintf(stderr,
            "JetStream back: %" PRIu64 " inputs sent, %" PRIu64 " applied, %" PRIu64 " reported not stored\n",
            sent, applied, reported);
    if (applied > sent || applied + reported < sent)
        fail_msg("JetStream back: %" PRIu64 " inputs sent (seq %" PRIu64 "), %" PRIu64
                 " applied (last seq %" PRIu64 "), %" PRIu64 " reported not stored",
                 sent, v3.last_seq, applied, v3.last_input_seq, reported);
    atomic_store(&PL.stop_sending, false);
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (view().sent < v3.sent + PHASE2_INPUTS) {
        if (ts_mono_us() > deadline) fail_msg("the player could not send");
        ts_sleep_ms(5);
    }
    if (!settle(WAIT_MS))
        fail_msg("inputs sent after the restart are not all applied: last seq %" PRIu64 " sent, %" PRIu64
                 " applied; %" PRIu64 " sent, %" PRIu64 " applied since",
                 view().last_seq, view().last_input_seq, view().sent - v3.sent, view().applied - v3.applied);
    view_t v4 = view();
    assert_int_equal(v4.applied - v3.applied, v4.sent - v3.sent);
    assert_int_equal(v4.errors, v3.errors);
    player_stop();
    ts_h_pass();
}

static int test_teardown(void **state)
{
    ts_h_test_teardown(state);
    player_stop();
    ts_h_stop(&ts_h);
    if (nats2 > 0) {
        kill(nats2, SIGKILL);
        waitpid(nats2, NULL, 0);
        nats2 = -1;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_wiped_under_load, ts_h_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_unstored_inputs_reported, ts_h_test_setup, test_teardown),
    };
    return TS_H_RUN("it_chaos_jetstream", tests, NULL, NULL);
}
