/* A player whose entity walks across a cell border while JetStream cannot
 * store anything, end to end: real nats-server -js and redis-server secured,
 * tessera-orch, workers w1 and w2 (w1 owns x < 0, w2 x >= 0) and a gateway.
 * The player's entity keeps walking at 3 units a second (its last Move) while
 * the player sends nothing.
 *  - test_crossings_to_other_and_within_worker: two players in w1's cell
 *    (-1, 0); nats-server is killed, its store wiped and a nats-server
 *    without JetStream started on the same port; about 20 s into this one
 *    entity crosses into w2's cell (0, 0), the other into w1's own cell
 *    (-2, 0) (one outage for both crossings, each player checked on its
 *    own); 30 s after the kill JetStream comes back with an empty store.
 *  - test_bus_outage_crossing_and_kept: nothing listens for 7 s (longer
 *    than a worker waits for a gateway's sign of life, 3 s, so both workers
 *    take the gateway for gone meanwhile, and longer than the workers'
 *    gateway.resume_s, 4 s); one player's entity crosses into w2's cell
 *    early in it, another one's walks inside its cell; a nats-server with
 *    an empty JetStream comes back.
 *  In the bus outage the gateway may create the input stream again and
 *  store inputs in it before a worker notices that the stream is new: each
 *  cell must read the new stream exactly once from its start (the player's
 *  Attach, Detach and Moves applied once, its entity never removed).
 *
 * What users rely on, asserted here:
 *  - the player stays connected and keeps its entity: the entity is never
 *    despawned while its player is connected (never removed from the
 *    player's view, no worker despawning it);
 *  - every input sent while nothing can be stored is reported to the player
 *    (ERROR_INPUT_NOT_STORED with its seq range) and none is applied;
 *  - once the store is back, the player's inputs are applied again within
 *    seconds, to the entity on the far side of the border: each one sent
 *    meanwhile applied or reported, never more applied than sent; from then
 *    on exactly once, with no error. */
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
/* the player's speed along x: its entity keeps walking at it while the
 * player sends nothing */
#define SPEED 3.0
#define JOIN_Y 50.0

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static pid_t nats2 = -1; /* the nats-server this test started itself */

/* A player on its own thread; the crossings without a store have two. */
typedef struct {
    double vx; /* its Move: (vx, 0) */
    ts_client_t *c;
    pthread_t thread;
    bool running;
    atomic_bool stop_sending, stop;
    pthread_mutex_t mu;
    uint64_t entity, sent, last_seq;
    uint64_t send_limit; /* the player sends while sent < send_limit */
    bool closed;
    ts_status_t close_status;
    int errors, other_errors;
    uint64_t not_stored; /* inputs reported not stored (sum of the ranges) */
    char last_error[160];
    uint64_t applied, last_input_seq;
    double x;             /* the entity's last known x */
    uint64_t entity_lost; /* Deltas removing the player's own entity */
    uint64_t lost_us;     /* monotonic: the first of them */
    double lost_x;        /* the entity's last known x then */
} player_t;

#define NPLAYERS 2
static player_t PLS[NPLAYERS] = {{.mu = PTHREAD_MUTEX_INITIALIZER, .send_limit = UINT64_MAX},
                                 {.mu = PTHREAD_MUTEX_INITIALIZER, .send_limit = UINT64_MAX}};

typedef struct {
    uint64_t sent, last_seq, applied, last_input_seq, not_stored;
    int errors, other_errors;
    bool closed;
    uint64_t entity, entity_lost;
    double x;
} view_t;

static view_t view(player_t *pl)
{
    pthread_mutex_lock(&pl->mu);
    view_t v = {pl->sent,         pl->last_seq, pl->applied, pl->last_input_seq, pl->not_stored, pl->errors,
                pl->other_errors, pl->closed,   pl->entity,  pl->entity_lost,    pl->x};
    pthread_mutex_unlock(&pl->mu);
    return v;
}

static void note_frame(player_t *pl, const Tessera__V1__ServerFrame *f)
{
    pthread_mutex_lock(&pl->mu);
    if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
        pl->entity = f->snapshot->entity;
    } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA) {
        for (size_t i = 0; i < f->delta->n_entities; i++) {
            const Tessera__V1__EntityState *e = f->delta->entities[i];
            if (pl->entity == 0 || e->id != pl->entity) continue;
            pl->applied = e->inputs_applied;
            pl->last_input_seq = e->last_input_seq;
            pl->x = e->x;
        }
        for (size_t i = 0; i < f->delta->n_removed; i++)
            if (pl->entity != 0 && f->delta->removed[i] == pl->entity && pl->entity_lost++ == 0) {
                pl->lost_us = ts_mono_us();
                pl->lost_x = pl->x;
            }
    } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR) {
        pl->errors++;
        const Tessera__V1__Error *e = f->error;
        if (e->code == TESSERA__V1__ERROR_CODE__ERROR_INPUT_NOT_STORED && e->last_seq >= e->first_seq &&
            e->first_seq > 0)
            pl->not_stored += e->last_seq - e->first_seq + 1;
        else
            pl->other_errors++;
        snprintf(pl->last_error, sizeof pl->last_error, "code %d: %s", e->code, e->message);
    }
    pthread_mutex_unlock(&pl->mu);
}

static void *player_main(void *arg)
{
    player_t *pl = arg;
    uint64_t next_move = ts_mono_us();
    while (!atomic_load(&pl->stop)) {
        uint64_t now = ts_mono_us();
        pthread_mutex_lock(&pl->mu);
        bool room = pl->sent < pl->send_limit;
        pthread_mutex_unlock(&pl->mu);
        if (room && !atomic_load(&pl->stop_sending) && now >= next_move) {
            ts_status_t st = ts_client_move(pl->c, pl->vx, 0);
            pthread_mutex_lock(&pl->mu);
            if (st != TS_OK) {
                pl->closed = true;
                pl->close_status = st;
            } else {
                pl->sent++;
                pl->last_seq = ts_client_last_seq(pl->c);
            }
            pthread_mutex_unlock(&pl->mu);
            if (st != TS_OK) break;
            next_move = now + MOVE_MS * 1000;
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(pl->c, 20, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        if (st != TS_OK) {
            pthread_mutex_lock(&pl->mu);
            pl->closed = true;
            pl->close_status = st;
            pthread_mutex_unlock(&pl->mu);
            break;
        }
        note_frame(pl, f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return NULL;
}

static void player_start(player_t *pl, double vx, double x, double y)
{
    pthread_mutex_lock(&pl->mu);
    pl->vx = vx;
    pl->entity = pl->sent = pl->last_seq = pl->applied = pl->last_input_seq = pl->not_stored = 0;
    pl->entity_lost = pl->lost_us = 0;
    pl->closed = false;
    pl->send_limit = UINT64_MAX;
    pl->errors = pl->other_errors = 0;
    pl->last_error[0] = '\0';
    pthread_mutex_unlock(&pl->mu);
    assert_int_equal(ts_client_connect(&pl->c, "127.0.0.1", stack.gw_port, 3000), TS_OK);
    uint64_t deadline = ts_mono_us() + 10000000;
    int errors = -1;
    while (pl->entity == 0 && ts_mono_us() < deadline) {
        if (errors != pl->errors) {
            if (errors >= 0) ts_sleep_ms(200);
            errors = pl->errors;
            assert_int_equal(ts_client_join(pl->c, x, y, "it-chaos-crossing"), TS_OK);
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(pl->c, 200, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        assert_int_equal(st, TS_OK);
        note_frame(pl, f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    if (pl->entity == 0) fail_msg("no Snapshot within 10 s after joining; last error: %s", pl->last_error);
    pl->errors = pl->other_errors = 0;
    pl->not_stored = 0;
    pl->sent = 1;
    pl->last_seq = ts_client_last_seq(pl->c);
    atomic_store(&pl->stop, false);
    atomic_store(&pl->stop_sending, false);
    assert_int_equal(pthread_create(&pl->thread, NULL, player_main, pl), 0);
    pl->running = true;
}

static void player_stop(player_t *pl)
{
    if (pl->running) {
        atomic_store(&pl->stop, true);
        pthread_join(pl->thread, NULL);
        pl->running = false;
    }
    ts_client_destroy(pl->c);
    pl->c = NULL;
}

/* Stops sending and waits until the last input sent shows in the entity;
 * false after timeout_ms. */
static bool settle(player_t *pl, int64_t timeout_ms)
{
    atomic_store(&pl->stop_sending, true);
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    for (;;) {
        view_t v = view(pl);
        if (v.last_input_seq >= v.last_seq) return true;
        if (ts_mono_us() > deadline || v.closed) return false;
        ts_sleep_ms(20);
    }
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

/* Fails if a worker despawned the player's entity. */
static void assert_entity_kept(player_t *pl, const char *when)
{
    view_t v = view(pl);
    if (v.entity_lost != 0) {
        pthread_mutex_lock(&pl->mu);
        uint64_t lost_us = pl->lost_us;
        double lost_x = pl->lost_x;
        pthread_mutex_unlock(&pl->mu);
        fail_msg("%s: the player's entity %" PRIu64 " was removed from its view (%" PRIu64
                 " times; first %.1f s ago, at x %.1f)",
                 when, v.entity, v.entity_lost, (double)(ts_mono_us() - lost_us) / 1e6, lost_x);
    }
    for (int i = 0; i < 2; i++) {
        char *log = ts_h_read_log(&ts_h, stack.workers[i]);
        char needle[64];
        snprintf(needle, sizeof needle, "entity %" PRIu64 " ", v.entity);
        for (const char *p = log ? strstr(log, needle) : NULL; p; p = strstr(p + 1, needle)) {
            size_t n = strcspn(p, "\n");
            const char *d = strstr(p, "despawned");
            if (d && (size_t)(d - p) < n) {
                char line[300];
                snprintf(line, sizeof line, "%.*s", (int)(n < 299 ? n : 299), p);
                free(log);
                fail_msg("%s: w%d: %s", when, i + 1, line);
            }
        }
        free(log);
    }
}

/* Two players join at (join_x[i], JOIN_Y) in cell (-1, 0) of w1, each
 * walking at vx[i] along x: each crosses x = border[i] while JetStream is
 * away. Both go through the same outage; everything is asserted for each. */
static void crossing_without_store(const double join_x[NPLAYERS], const double vx[NPLAYERS],
                                   const double border[NPLAYERS])
{
    ts_h_start_secure(&ts_h);
    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, NULL};
    /* the players send nothing while their inputs wait for their outcome
     * (the bus's tries, up to about a minute): their connections stay open */
    const char *gateway[] = {"--gateway.idle_timeout_s=300", NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, gateway, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS))
        fail_msg("the world or the gateway did not come up");
    view_t v0[NPLAYERS], v1[NPLAYERS], v2[NPLAYERS];
    for (int i = 0; i < NPLAYERS; i++)
        player_start(&PLS[i], vx[i], join_x[i], JOIN_Y);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (int i = 0; i < NPLAYERS; i++)
        while (view(&PLS[i]).applied < 5) {
            if (ts_mono_us() > deadline)
                fail_msg("player %d: its inputs are not applied (%" PRIu64 ")", i, view(&PLS[i]).applied);
            ts_sleep_ms(20);
        }
    /* the last input applied: each entity walks at its vx from here on */
    for (int i = 0; i < NPLAYERS; i++)
        atomic_store(&PLS[i].stop_sending, true);
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        if (!settle(pl, WAIT_MS)) fail_msg("player %d: its last input was not applied before the kill", i);
        v0[i] = view(pl);
        if (fabs(v0[i].x - border[i]) < 3)
            fail_msg("player %d: the entity is at x %.1f already: too close to the border for the outage to "
                     "come first",
                     i, v0[i].x);
    }

    /* NATS comes back without JetStream: no input, Departure or Transfer
     * can be stored */
    char store[300], cmd[400];
    snprintf(store, sizeof store, "%s/js", ts_h.dir);
    ts_h_signal(&ts_h, TS_H_NATS, SIGKILL);
    ts_h_wait(&ts_h, TS_H_NATS, 5000);
    uint64_t t_kill = ts_mono_us();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", store);
    assert_int_equal(system(cmd), 0);
    nats_restart(false, store);
    if (!ts_h_wait_log(&ts_h, stack.gateway, "bus: reconnected", WAIT_MS))
        fail_msg("the gateway did not reconnect to the NATS without JetStream");
    const uint64_t lost = 10;
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        pthread_mutex_lock(&pl->mu);
        pl->send_limit = v0[i].sent + lost;
        pthread_mutex_unlock(&pl->mu);
        atomic_store(&pl->stop_sending, false);
    }
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        while (view(pl).sent < v0[i].sent + lost) {
            if (ts_mono_us() > deadline || view(pl).closed)
                fail_msg("player %d could not send %" PRIu64 " inputs (closed %d)", i, lost, view(pl).closed);
            ts_sleep_ms(2);
        }
        atomic_store(&pl->stop_sending, true);
        pthread_mutex_lock(&pl->mu);
        pl->send_limit = UINT64_MAX;
        pthread_mutex_unlock(&pl->mu);
        assert_int_equal(view(pl).sent - v0[i].sent, lost);
    }
    uint64_t t_sent = ts_mono_us();
    deadline = t_sent + 120000000ULL;
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        while (view(pl).not_stored < v0[i].not_stored + lost) {
            if (ts_mono_us() > deadline || view(pl).closed)
                fail_msg("player %d: %" PRIu64 " inputs sent without a store: %" PRIu64
                         " reported not stored after 120 s (closed %d, last error %s)",
                         i, lost, view(pl).not_stored - v0[i].not_stored, view(pl).closed, pl->last_error);
            ts_sleep_ms(50);
        }
    }
    uint64_t crossed_us = 0;
    for (int i = 0; i < NPLAYERS; i++) {
        v1[i] = view(&PLS[i]);
        assert_int_equal(v1[i].not_stored - v0[i].not_stored, lost);
        assert_int_equal(v1[i].applied, v0[i].applied);
        assert_int_equal(v1[i].other_errors, v0[i].other_errors);
        /* the entity has crossed by now (it walks SPEED units a second from
         * v0.x) */
        uint64_t us = (uint64_t)(fabs(border[i] - v0[i].x) / SPEED * 1e6);
        if (us > crossed_us) crossed_us = us;
    }
    /* at least two more seconds on the other side without a store, each */
    while (ts_mono_us() < t_kill + crossed_us + 2000000ULL)
        ts_sleep_ms(50);
    for (int i = 0; i < NPLAYERS; i++) {
        fprintf(
            stderr,
            "player %d: entity %" PRIu64 " at x %.1f when nats-server was killed; %" PRIu64
            " inputs reported not stored %.1f s after they were sent; JetStream back %.1f s after the kill\n",
            i, v0[i].entity, v0[i].x, lost, (double)(v1[i].last_seq ? ts_mono_us() - t_sent : 0) / 1e6,
            (double)(ts_mono_us() - t_kill) / 1e6);
        assert_false(view(&PLS[i]).closed);
        assert_entity_kept(&PLS[i], "without JetStream");
    }

    /* JetStream back, empty: the players' inputs are applied again, by the
     * cells on the far side of their borders */
    nats_restart(true, store);
    uint64_t t_up = ts_mono_us();
    for (int i = 0; i < NPLAYERS; i++)
        atomic_store(&PLS[i].stop_sending, false);
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    double resumed_s[NPLAYERS] = {0};
    for (bool all = false; !all;) {
        all = true;
        for (int i = 0; i < NPLAYERS; i++) {
            player_t *pl = &PLS[i];
            view_t v = view(pl);
            if (v.applied > v1[i].applied) {
                if (resumed_s[i] == 0) {
                    resumed_s[i] = (double)(ts_mono_us() - t_up) / 1e6;
                    atomic_store(&pl->stop_sending, true);
                }
                continue;
            }
            all = false;
            if (ts_mono_us() > deadline || v.closed)
                fail_msg("player %d: %d s after JetStream came back its inputs are not applied (%" PRIu64
                         " applied, entity at x %.1f, closed %d, last error %s)",
                         i, WAIT_MS / 1000, v.applied, v.x, v.closed, pl->last_error);
        }
        if (!all) ts_sleep_ms(20);
    }
    /* inputs sent before the streams existed again are stored late (the
     * bus's tries) or reported: wait for every one's outcome */
    deadline = ts_mono_us() + 120000000ULL;
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        atomic_store(&pl->stop_sending, true);
        for (;;) {
            view_t v = view(pl);
            if (v.last_input_seq >= v.last_seq &&
                v.applied - v1[i].applied + (v.not_stored - v1[i].not_stored) >= v.sent - v1[i].sent)
                break;
            if (ts_mono_us() > deadline || v.closed)
                fail_msg("player %d, JetStream back: %" PRIu64 " inputs sent (last seq %" PRIu64 "), %" PRIu64
                         " applied (last seq %" PRIu64 "), %" PRIu64
                         " reported not stored after 120 s (closed %d)",
                         i, v.sent - v1[i].sent, v.last_seq, v.applied - v1[i].applied, v.last_input_seq,
                         v.not_stored - v1[i].not_stored, v.closed);
            ts_sleep_ms(20);
        }
    }
    for (int i = 0; i < NPLAYERS; i++) {
        v2[i] = view(&PLS[i]);
        uint64_t sent = v2[i].sent - v1[i].sent, applied = v2[i].applied - v1[i].applied,
                 reported = v2[i].not_stored - v1[i].not_stored;
        fprintf(stderr,
                "player %d, JetStream back: applying again after %.1f s; %" PRIu64 " inputs sent, %" PRIu64
                " applied, %" PRIu64 " reported not stored; entity at x %.1f\n",
                i, resumed_s[i], sent, applied, reported, v2[i].x);
        if (applied > sent)
            fail_msg("player %d, JetStream back: %" PRIu64 " inputs sent, %" PRIu64 " applied", i, sent,
                     applied);
        if ((v0[i].x < border[i]) != (v2[i].x >= border[i]))
            fail_msg("player %d: the entity is at x %.1f: it did not cross x = %.0f", i, v2[i].x, border[i]);
    }

    /* afterwards: exactly once, no error, the same entity */
    for (int i = 0; i < NPLAYERS; i++)
        atomic_store(&PLS[i].stop_sending, false);
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (int i = 0; i < NPLAYERS; i++) {
        while (view(&PLS[i]).sent < v2[i].sent + PHASE2_INPUTS) {
            if (ts_mono_us() > deadline) fail_msg("player %d could not send", i);
            ts_sleep_ms(5);
        }
        atomic_store(&PLS[i].stop_sending, true);
    }
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        if (!settle(pl, WAIT_MS))
            fail_msg("player %d: inputs sent after JetStream came back are not all applied: last seq %" PRIu64
                     " sent, %" PRIu64 " applied",
                     i, view(pl).last_seq, view(pl).last_input_seq);
        view_t v3 = view(pl);
        assert_int_equal(v3.applied - v2[i].applied, v3.sent - v2[i].sent);
        assert_int_equal(v3.errors, v2[i].errors);
        assert_int_equal(v3.entity, v0[i].entity);
        assert_false(v3.closed);
        assert_entity_kept(pl, "after JetStream came back");
    }
    for (int i = 0; i < NPLAYERS; i++)
        player_stop(&PLS[i]);
    ts_h_pass();
}

/* Both crossings through one outage, about 20 s into it: player 0 east
 * across x = 0 into w2's cell (0, 0), player 1 west across x = -100 into
 * w1's own cell (-2, 0). */
static void test_crossings_to_other_and_within_worker(void **state)
{
    (void)state;
    const double join_x[NPLAYERS] = {-60, -40}, vx[NPLAYERS] = {SPEED, -SPEED}, border[NPLAYERS] = {0, -100};
    crossing_without_store(join_x, vx, border);
}

/* nats-server killed with its store and nothing listening for outage_ms,
 * longer than a worker waits for a gateway's sign of life (3 s) and than
 * the workers' gateway.resume_s (extra_arg). Two players walk east
 * meanwhile, sending nothing: player 0 joins at join_x[0], a few units
 * west of x = 0, and crosses from w1's cell (-1, 0) into w2's cell (0, 0)
 * early in the outage; player 1 joins at join_x[1] and walks inside cell
 * (-1, 0). Then a nats-server with an empty JetStream comes back. */
static void bus_outage(int outage_ms, const char *extra_arg, const double join_x[NPLAYERS])
{
    ts_h_start_secure(&ts_h);
    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, extra_arg, NULL};
    const char *gateway[] = {"--gateway.idle_timeout_s=300", NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, gateway, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS))
        fail_msg("the world or the gateway did not come up");
    /* the one that crosses joins last, so it is still a few units west of
     * x = 0 at the kill */
    view_t v0[NPLAYERS], v1[NPLAYERS];
    for (int i = NPLAYERS - 1; i >= 0; i--) {
        player_t *pl = &PLS[i];
        player_start(pl, SPEED, join_x[i], JOIN_Y);
        uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
        while (view(pl).applied < 3) {
            if (ts_mono_us() > deadline)
                fail_msg("player %d: its inputs are not applied (%" PRIu64 ")", i, view(pl).applied);
            ts_sleep_ms(20);
        }
    }
    for (int i = 0; i < NPLAYERS; i++)
        atomic_store(&PLS[i].stop_sending, true);
    for (int i = 0; i < NPLAYERS; i++) {
        if (!settle(&PLS[i], WAIT_MS))
            fail_msg("player %d: its last input was not applied before the kill", i);
        v0[i] = view(&PLS[i]);
    }
    if (v0[0].x > -3 || v0[0].x < -9)
        fail_msg("player 0: the entity is at x %.1f, not a few units west of x = 0", v0[0].x);
    char store[300], cmd[400];
    snprintf(store, sizeof store, "%s/js", ts_h.dir);
    ts_h_signal(&ts_h, TS_H_NATS, SIGKILL);
    ts_h_wait(&ts_h, TS_H_NATS, 5000);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", store);
    assert_int_equal(system(cmd), 0);
    ts_sleep_ms(outage_ms); /* the outage itself: nothing to wait for */
    nats_restart(true, store);
    uint64_t t_up = ts_mono_us();
    for (int i = 0; i < NPLAYERS; i++)
        atomic_store(&PLS[i].stop_sending, false);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    double resumed_s[NPLAYERS] = {0};
    for (bool all = false; !all;) {
        all = true;
        for (int i = 0; i < NPLAYERS; i++) {
            player_t *pl = &PLS[i];
            view_t v = view(pl);
            if (v.applied > v0[i].applied) {
                if (resumed_s[i] == 0) {
                    resumed_s[i] = (double)(ts_mono_us() - t_up) / 1e6;
                    atomic_store(&pl->stop_sending, true);
                }
                continue;
            }
            all = false;
            if (ts_mono_us() > deadline || v.closed)
                fail_msg("player %d: %d s after the bus came back its inputs are not applied (%" PRIu64
                         " applied, entity at x %.1f, closed %d, last error %s)",
                         i, WAIT_MS / 1000, v.applied, v.x, v.closed, pl->last_error);
        }
        if (!all) ts_sleep_ms(20);
    }
    deadline = ts_mono_us() + 120000000ULL;
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        atomic_store(&pl->stop_sending, true);
        for (;;) {
            view_t v = view(pl);
            if (v.last_input_seq >= v.last_seq &&
                v.applied - v0[i].applied + (v.not_stored - v0[i].not_stored) >= v.sent - v0[i].sent)
                break;
            if (ts_mono_us() > deadline || v.closed)
                fail_msg("player %d, bus back: %" PRIu64 " inputs sent, %" PRIu64 " applied, %" PRIu64
                         " reported not stored after 120 s (closed %d)",
                         i, v.sent - v0[i].sent, v.applied - v0[i].applied, v.not_stored - v0[i].not_stored,
                         v.closed);
            ts_sleep_ms(20);
        }
    }
    for (int i = 0; i < NPLAYERS; i++) {
        v1[i] = view(&PLS[i]);
        fprintf(stderr,
                "player %d, bus back after %d ms: applying again after %.1f s; %" PRIu64
                " inputs sent, %" PRIu64 " applied, %" PRIu64
                " reported not stored; entity at x %.1f (x %.1f at the kill)\n",
                i, outage_ms, resumed_s[i], v1[i].sent - v0[i].sent, v1[i].applied - v0[i].applied,
                v1[i].not_stored - v0[i].not_stored, v1[i].x, v0[i].x);
        if (v1[i].applied - v0[i].applied > v1[i].sent - v0[i].sent)
            fail_msg("player %d: more inputs applied than sent", i);
    }
    if (v1[0].x < 0) fail_msg("player 0: the entity is at x %.1f: it did not cross x = 0", v1[0].x);
    for (int i = 0; i < NPLAYERS; i++)
        atomic_store(&PLS[i].stop_sending, false);
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (int i = 0; i < NPLAYERS; i++) {
        while (view(&PLS[i]).sent < v1[i].sent + PHASE2_INPUTS) {
            if (ts_mono_us() > deadline) fail_msg("player %d could not send", i);
            ts_sleep_ms(5);
        }
        atomic_store(&PLS[i].stop_sending, true);
    }
    for (int i = 0; i < NPLAYERS; i++) {
        player_t *pl = &PLS[i];
        if (!settle(pl, WAIT_MS))
            fail_msg("player %d: inputs sent after the bus came back are not all applied", i);
        view_t v2 = view(pl);
        assert_int_equal(v2.applied - v1[i].applied, v2.sent - v1[i].sent);
        assert_int_equal(v2.errors, v1[i].errors);
        assert_int_equal(v2.entity, v0[i].entity);
        assert_false(v2.closed);
        assert_entity_kept(pl, "after the bus came back");
    }
    for (int i = 0; i < NPLAYERS; i++)
        player_stop(&PLS[i]);
    ts_h_pass();
}

/* One outage of 7 s, longer than a worker waits for a gateway's sign of
 * life (both workers take the gateway for gone meanwhile) and than
 * gateway.resume_s (4 s here): player 0's entity crosses into w2's cell
 * early in it, player 1's walks inside its cell. Both players are
 * connected all along, so their entities are kept and their inputs are
 * applied once the bus is back (the worker does not count the time its own
 * connection is down as the gateways' silence), each exactly once, and
 * they never leave their players' views. */
static void test_bus_outage_crossing_and_kept(void **state)
{
    (void)state;
    const double join_x[NPLAYERS] = {-8, -60};
    bus_outage(7000, "--gateway.resume_s=4", join_x);
}

static int test_teardown(void **state)
{
    ts_h_test_teardown(state);
    for (int i = 0; i < NPLAYERS; i++)
        player_stop(&PLS[i]);
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
        cmocka_unit_test_setup_teardown(test_crossings_to_other_and_within_worker, ts_h_test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_bus_outage_crossing_and_kept, ts_h_test_setup, test_teardown),
    };
    const char *only = getenv("TS_IT_ONLY"); /* e.g. TS_IT_ONLY='*bus_outage*' */
    if (only != NULL && only[0] != '\0') cmocka_set_test_filter(only);
    return TS_H_RUN("it_chaos_crossing", tests, NULL, NULL);
}
