/* The example game (examples/tag, libtag.so) across cell and worker borders,
 * end to end: real nats-server -js and redis-server, tessera-orch (no
 * rebalancing, liveness TTL 1.5 s), workers w1 and w2 loading the module
 * (no bots, ghost band as wide as the tag range), a gateway, and players
 * connected with the C client library.
 *
 * Cell (-1, 0) ([-100, 0) x [0, 100)) starts on w1 and cell (0, 0) on w2:
 * the border x = 0 is a border between workers. Each scenario joins a red
 * tagger at (-3, y) and a blue target at (3, y) and has the tagger tag the
 * target by id (Command 1); the target's owner switches its team and
 * confirms back to the tagger's owner, which scores. Scenarios, in order,
 * on one cluster:
 *   1. plain: the tag crosses the worker border; both players also get
 *      their event ("you tagged", "tagged by");
 *   2. the target's cell is handed over to the other worker right after the
 *      tag is sent;
 *   3. the target's cell is split right after the tag is sent;
 *   4. the worker owning the target's cell is SIGKILLed as soon as the
 *      target's state shows the tag (the new owner replays it from the last
 *      checkpoint), its cells are recovered on the other worker, and the
 *      killed worker is started again;
 *   5. the worker owning the target's cell is SIGKILLed right after the tag
 *      is sent (the new owner applies it first, and answers a tagger it may
 *      not have a ghost of yet); the killed worker is started again.
 * Before each, the target's cell is handed to another worker than the
 * tagger's if they share one.
 * Each must end with exactly one team change (the target's "times tagged"
 * is 1 and its team is the tagger's) and exactly one point for the tagger,
 * read from the entities' state bytes in the players' Snapshots and
 * Deltas; no value seen by any player ever goes above 1 (no double, not
 * even for a moment), and the values stay so for 2 s after.
 *
 * Then two players tag each other: a red one at (-3, y) and a blue one at
 * (3, y) (cells (-1, 1) and (0, 1), on two workers) tag each other at the
 * same time. Both workers are stopped (SIGSTOP, well within the liveness
 * TTL) until both Commands are seen on the cells' input subjects, so each
 * cell applies its player's Command before the other's tag request (stored
 * after it) and both requests are in flight together. Each tag applies once
 * at the other's owner: the players swap teams, each is tagged once and
 * scores once, and a miss (a tag that found no enemy) fails the test. The
 * same, in order:
 *   6. with nothing disturbed (each player also gets both events, once);
 *   7. the east player's cell handed over to the other worker meanwhile;
 *   8. the east player's cell split meanwhile;
 *   9. the west player's owner SIGKILLed as soon as the east player shows
 *      its tag (the west cell applied the west Command; the east tag and its
 *      confirmation may or may not be applied yet), recovered on the other
 *      worker, restarted;
 *  10. the east player's owner SIGKILLed as soon as the west player shows
 *      its tag, likewise.
 *  11. In turn, every tag across the border: red A (west) tags blue B
 *      (east), B joins red; B tags A back: a miss, a tag makes the tagged
 *      one the tagger's teammate (the rules allow no tag back), nothing
 *      changes; blue C next to B tags A, A joins blue; B tags A, A joins red
 *      again. A and B have then tagged each other once each.
 *  12. The cell holding the most of red's points (a target's cell: the
 *      tagged player's cell counts the point) is split and its owner
 *      SIGKILLed right after, then merged and its owner SIGKILLed right
 *      after, then split again and its owner SIGKILLed once the parent
 *      reports its points moved out: the world counters move to child
 *      quadrant 0, back to the parent and to child 0 again (the cells'
 *      heartbeat reports show where they are) while the cells are
 *      recovered on the other worker, and no player ever sees a score
 *      other than the tags made, not even for a moment.
 * Every player's state is checked exactly as above (never above the
 * expected value, stable for 2 s). The team scores (world counters 0 red,
 * 1 blue, in WorldCounters frames from the gateway) must reach, for every
 * player, the tags each team made so far in the run; a player that just
 * joined has them (right after its Snapshot) before its tag, and no player
 * ever sees a score above the tags made (and those in flight).
 * `it_tag --ws`: the same with the players on WebSocket. */
#include <dirent.h>
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
#include "probe.h"
#include "tessera/client.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define CELL_SIZE 100.0
#define WAIT_MS 30000
#define SETTLE_MS 2000
#define HB_TTL_ARG "--orch.hb_ttl_ms=1500"

/* examples/tag */
#define TEAM_RED 1
#define TEAM_BLUE 2
#define CMD_TAG 1
#define EV_YOU_TAGGED 1
#define EV_TAGGED_BY 2
#define EV_MISS 4
#define TAG_COOLDOWN_MS 600 /* the module's default cooldown (0.5 s) and a margin */
/* How long both workers may stay stopped while two tags are stored: well
 * under the orchestrator's liveness TTL (1.5 s). */
#define FREEZE_MAX_MS 800

#define NPLAYERS 24
#define JIGGLE_MS 200
#define JIGGLE_SPEED 2.0

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static ts_bus_t *bus;
static ts_registry_t *reg;
static ts_bus_sub_t *input_sub; /* the world's input subjects, for on_input */

/* ---- players and what they saw ----------------------------------------------------
 * One thread pumps every player's connection: it sends the tags the test
 * asks for and a Ping a second, and folds every Snapshot, Delta and Event
 * into the tables below (under mu). */

typedef struct {
    ts_client_t *c;
    uint64_t id;
    double x, y;
    int team;            /* the team it joined with */
    uint64_t tag_target; /* a tag to send (0: none) */
    int events[8];       /* events received, by type */
    int errors;
    char last_error[160];
    bool closed;
    int64_t red, blue;      /* the latest WorldCounters (0 before any) */
    uint32_t commands_seen; /* its Commands seen on the cells' input subjects */
} player_t;

/* An entity's module state as the players saw it. */
typedef struct {
    bool seen;
    int team;
    uint32_t tags, tagged;         /* latest */
    uint32_t max_tags, max_tagged; /* highest ever seen, by anyone */
    uint32_t nearby;               /* entities its cell knows within aoi.interact_radius */
    uint32_t attempt;              /* its last tag attempt (cooldown stamp, the cell's clock) */
} seen_t;

static struct {
    pthread_mutex_t mu;
    player_t p[NPLAYERS];
    seen_t s[NPLAYERS];
    int n;
    pthread_t thread;
    bool running;
    atomic_bool stop;
    int64_t max_red, max_blue; /* the highest scores any player saw */
    bool watch;                /* from here on, also the lowest: */
    int64_t min_red, min_blue;
} PL = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Tags that landed so far in this run: red's and blue's scores. */
static int64_t red_made, blue_made;

static uint32_t u32_le(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* An entity's state bytes (tag's layout: team, flags, -, -, tags u32,
 * tagged u32, ...) into the table, if it is one of ours. mu held. */
static void note_entity(const Tessera__V1__EntityState *e)
{
    if (e->state.len < 12) return;
    for (int i = 0; i < PL.n; i++) {
        if (PL.p[i].id != e->id) continue;
        seen_t *s = &PL.s[i];
        s->seen = true;
        s->nearby = e->nearby;
        s->team = e->state.data[0];
        s->tags = u32_le(e->state.data + 4);
        s->tagged = u32_le(e->state.data + 8);
        if (e->state.len >= 16) s->attempt = u32_le(e->state.data + 12);
        if (s->tags > s->max_tags) s->max_tags = s->tags;
        if (s->tagged > s->max_tagged) s->max_tagged = s->tagged;
    }
}

static void note_frame(player_t *p, const Tessera__V1__ServerFrame *f)
{
    switch (f->payload_case) {
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME:
        if (f->welcome->entity) p->id = f->welcome->entity;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT:
        if (f->snapshot->entity) p->id = f->snapshot->entity;
        for (size_t i = 0; i < f->snapshot->n_entities; i++)
            note_entity(f->snapshot->entities[i]);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA:
        for (size_t i = 0; i < f->delta->n_entities; i++)
            note_entity(f->delta->entities[i]);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_EVENT:
        if (f->event->type < 8) p->events[f->event->type]++;
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_WORLD_COUNTERS: {
        /* as the client library keeps them */
        int64_t v[TS_CLIENT_COUNTERS];
        if (!ts_client_counters(p->c, v)) break;
        p->red = v[0];
        p->blue = v[1];
        if (p->red > PL.max_red) PL.max_red = p->red;
        if (p->blue > PL.max_blue) PL.max_blue = p->blue;
        if (PL.watch && p->red < PL.min_red) PL.min_red = p->red;
        if (PL.watch && p->blue < PL.min_blue) PL.min_blue = p->blue;
        break;
    }
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR:
        p->errors++;
        snprintf(p->last_error, sizeof p->last_error, "code %d: %s", f->error->code, f->error->message);
        break;
    default:
        break;
    }
}

/* Sends the tags the test asked for, all players first: two tags asked
 * together leave together. */
static void pump_tags(void)
{
    for (int i = 0; i < PL.n; i++) {
        player_t *p = &PL.p[i];
        pthread_mutex_lock(&PL.mu);
        bool closed = p->closed;
        uint64_t target = p->tag_target;
        p->tag_target = 0;
        pthread_mutex_unlock(&PL.mu);
        if (closed || !target) continue;
        uint8_t payload[8];
        for (int k = 0; k < 8; k++)
            payload[k] = (uint8_t)(target >> (8 * k));
        if (ts_client_command(p->c, CMD_TAG, payload, sizeof payload) != TS_OK) {
            pthread_mutex_lock(&PL.mu);
            p->closed = true;
            pthread_mutex_unlock(&PL.mu);
        }
    }
}

/* Folds the frames player p has received so far (at most PUMP_BATCH).
 * Returns how many. */
#define PUMP_BATCH 32
static int pump_frames(player_t *p)
{
    int got = 0;
    while (got < PUMP_BATCH) {
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(p->c, 0, &f);
        if (st == TS_ERR_TIMEOUT) break;
        pthread_mutex_lock(&PL.mu);
        if (st == TS_OK)
            note_frame(p, f);
        else
            p->closed = true;
        pthread_mutex_unlock(&PL.mu);
        if (f) tessera__v1__server_frame__free_unpacked(f, NULL);
        if (st != TS_OK) break;
        got++;
    }
    return got;
}

static void *pump_main(void *arg)
{
    (void)arg;
    uint64_t next_ping = 0, next_jiggle = 0;
    int jiggles = 0;
    while (!atomic_load(&PL.stop)) {
        pump_tags();
        bool ping = ts_mono_us() >= next_ping;
        if (ping) next_ping = ts_mono_us() + 1000000;
        /* players shuffle on the spot (0.4 units back and forth), as players
         * do: their entities change, so every Delta carries them */
        bool jiggle = ts_mono_us() >= next_jiggle;
        if (jiggle) {
            next_jiggle = ts_mono_us() + JIGGLE_MS * 1000ULL;
            jiggles++;
        }
        int got = 0;
        for (int i = 0; i < PL.n; i++) {
            player_t *p = &PL.p[i];
            pthread_mutex_lock(&PL.mu);
            bool closed = p->closed;
            pthread_mutex_unlock(&PL.mu);
            if (closed) continue;
            ts_status_t st = TS_OK;
            if (ping) st = ts_client_ping(p->c, ts_mono_us());
            if (st == TS_OK && jiggle)
                st = ts_client_move(p->c, jiggles % 2 ? JIGGLE_SPEED : -JIGGLE_SPEED, 0);
            if (st != TS_OK) {
                pthread_mutex_lock(&PL.mu);
                p->closed = true;
                pthread_mutex_unlock(&PL.mu);
                continue;
            }
            got += pump_frames(p);
        }
        if (got == 0) ts_sleep_ms(2); /* nothing came: do not spin */
    }
    return NULL;
}

/* Connects a player, joins it at (x, y) on team ("red"/"blue" payload) and
 * waits for its Snapshot; the pump thread takes it over from there.
 * Returns its index. */
static int player_join(double x, double y, int team, const char *name)
{
    assert_true(PL.n < NPLAYERS);
    int i = PL.n;
    player_t *p = &PL.p[i];
    memset(p, 0, sizeof *p);
    p->x = x;
    p->y = y;
    p->team = team;
    assert_int_equal(ts_h_client_connect(&p->c, stack.gw_port, 3000), TS_OK);
    const char *payload = team == TEAM_RED ? "red" : "blue";
    uint64_t deadline = ts_mono_us() + 10000000;
    int errors = -1;
    while (p->id == 0 && ts_mono_us() < deadline) {
        if (errors != p->errors) {
            /* a refused Join (the gateway may not know every cell yet) is retried */
            if (errors >= 0) ts_sleep_ms(200);
            errors = p->errors;
            assert_int_equal(ts_client_join_payload(p->c, x, y, name, payload, strlen(payload)), TS_OK);
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(p->c, 200, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        assert_int_equal(st, TS_OK);
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) p->id = f->snapshot->entity;
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR) note_frame(p, f);
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    if (p->id == 0) {
        ts_h.failed = true;
        fail_msg("%s: no Snapshot within 10 s after joining at (%.0f, %.0f); last error: %s", name, x, y,
                 p->errors ? p->last_error : "none");
    }
    p->errors = 0;
    pthread_mutex_lock(&PL.mu);
    PL.n++;
    pthread_mutex_unlock(&PL.mu);
    if (!PL.running) {
        assert_int_equal(pthread_create(&PL.thread, NULL, pump_main, NULL), 0);
        PL.running = true;
    }
    return i;
}

static void players_stop(void)
{
    if (PL.running) {
        atomic_store(&PL.stop, true);
        pthread_join(PL.thread, NULL);
        PL.running = false;
    }
    for (int i = 0; i < PL.n; i++)
        ts_client_destroy(PL.p[i].c);
    PL.n = 0;
}

static seen_t seen(int i)
{
    pthread_mutex_lock(&PL.mu);
    seen_t s = PL.s[i];
    pthread_mutex_unlock(&PL.mu);
    return s;
}

static int events(int i, int type)
{
    pthread_mutex_lock(&PL.mu);
    int n = PL.p[i].events[type];
    pthread_mutex_unlock(&PL.mu);
    return n;
}

/* Fails unless no player ever saw a team score above red_made + red_more,
 * blue_made + blue_more (the tags in flight may add those). */
static void check_max_scores(const char *when, int red_more, int blue_more)
{
    pthread_mutex_lock(&PL.mu);
    int64_t max_red = PL.max_red, max_blue = PL.max_blue;
    pthread_mutex_unlock(&PL.mu);
    if (max_red > red_made + red_more || max_blue > blue_made + blue_more) {
        ts_h.failed = true;
        fail_msg("%s: a player saw red %" PRId64 " blue %" PRId64 " (max), want at most %" PRId64
                 " and %" PRId64,
                 when, max_red, max_blue, red_made + red_more, blue_made + blue_more);
    }
}

/* Counts the players' Commands on the world's input subjects (a plain
 * subscription next to the input stream's; bus thread). */
static void on_input(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__InputBatch *b =
        tessera__v1__input_batch__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (b == NULL) return;
    pthread_mutex_lock(&PL.mu);
    for (size_t k = 0; k < b->n_inputs; k++) {
        if (b->inputs[k]->kind_case != TESSERA__V1__INPUT__KIND_COMMAND) continue;
        for (int i = 0; i < PL.n; i++)
            if (PL.p[i].id == b->inputs[k]->entity) PL.p[i].commands_seen++;
    }
    pthread_mutex_unlock(&PL.mu);
    tessera__v1__input_batch__free_unpacked(b, NULL);
}

static uint32_t commands_seen(int i)
{
    pthread_mutex_lock(&PL.mu);
    uint32_t n = PL.p[i].commands_seen;
    pthread_mutex_unlock(&PL.mu);
    return n;
}

/* Waits until every connected player's team scores are red = red_made,
 * blue = blue_made, and checks none was ever seen above. */
static void expect_scores(const char *when)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        int off = -1;
        pthread_mutex_lock(&PL.mu);
        for (int i = 0; i < PL.n && off < 0; i++)
            if (!PL.p[i].closed && (PL.p[i].red != red_made || PL.p[i].blue != blue_made)) off = i;
        player_t p = off >= 0 ? PL.p[off] : PL.p[0];
        pthread_mutex_unlock(&PL.mu);
        check_max_scores(when, 0, 0);
        if (off < 0) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: after %d s player %d has red %" PRId64 " blue %" PRId64 ", want %" PRId64
                     " and %" PRId64,
                     when, WAIT_MS / 1000, off, p.red, p.blue, red_made, blue_made);
        }
        ts_sleep_ms(20);
    }
}

static void send_tag(int tagger, int target)
{
    pthread_mutex_lock(&PL.mu);
    PL.p[tagger].tag_target = PL.p[target].id;
    pthread_mutex_unlock(&PL.mu);
}

/* ---- the cluster ------------------------------------------------------------------ */

/* The live cell (any depth) holding (x, y), from the registry. */
static ts_cell_entry_t live_cell_at(double x, double y)
{
    for (uint8_t depth = 0; depth <= 4; depth++) {
        ts_cell_t c;
        ts_cell_from_pos(WORLD, CELL_SIZE, depth, x, y, &c);
        ts_cell_entry_t e;
        if (ts_registry_cell_get(reg, &c, &e) != TS_OK) break;
        if (e.state == TS_CELL_ACTIVE) return e;
    }
    ts_h.failed = true;
    fail_msg("no live cell holds (%.1f, %.1f)", x, y);
    return (ts_cell_entry_t){.epoch = 0};
}

/* Hands cell e to worker `to`; with retry_ms > 0, asks again (every
 * 500 ms, for that long) while the answer is not "ok" (a worker that just
 * started is not known to the orchestrator yet). */
static void handover(const ts_cell_entry_t *e, const char *to, int64_t retry_ms)
{
    char key[TS_CELL_STR_MAX], payload[160], reply[512] = "";
    ts_cell_format(&e->cell, key, sizeof key);
    snprintf(payload, sizeof payload, "%s %s", key, to);
    uint64_t deadline = ts_mono_us() + (uint64_t)retry_ms * 1000ULL;
    for (;;) {
        ts_status_t st = ts_probe_ctl(bus, WORLD, "handover", payload, 10000, reply, sizeof reply);
        ts_probe_handover_t r;
        if (st == TS_OK && ts_probe_parse_handover(reply, &r)) return;
        if (ts_mono_us() >= deadline) {
            ts_h.failed = true;
            fail_msg("handover %s: %s", payload, st == TS_OK ? reply : ts_status_str(st));
        }
        ts_sleep_ms(500);
    }
}

static const char *const WORKERS[2] = {"w1", "w2"};

static int worker_index(const char *id)
{
    return strcmp(id, "w1") == 0 ? 0 : 1;
}

/* The workers' flags (after --worker.id), for the stack and restarts. */
static char game_arg[600];
static const char *worker_args[] = {
    "--worker.hb_ms=250",       HB_TTL_ARG, game_arg, "--worker.game_config=bots=0", "--ghost.margin=12",
    "--aoi.interact_radius=12", NULL};

/* Starts worker w (0: w1, 1: w2) again after it was killed. */
static int killed_worker = -1; /* the worker SIGKILLed last and not started again */

static void restart_worker(int w)
{
    char id[32];
    snprintf(id, sizeof id, "--worker.id=%s", WORKERS[w]);
    const char *argv[10] = {id};
    for (int i = 0; worker_args[i]; i++)
        argv[i + 1] = worker_args[i];
    char name[32];
    snprintf(name, sizeof name, "%s-again", WORKERS[w]);
    stack.workers[w] = ts_h_spawn(&ts_h, name, "tessera-worker", argv);
    if (killed_worker == w) killed_worker = -1; /* running again */
}

/* The tagger's cell at (-3, y) and the target's at (3, y) on two different
 * workers: the target's cell is handed to the other one if they share one. */
static void separate(double y)
{
    ts_cell_entry_t tc = live_cell_at(-3, y), vc = live_cell_at(3, y);
    if (strcmp(tc.owner, vc.owner) != 0) return;
    handover(&vc, WORKERS[1 - worker_index(vc.owner)], 30000);
}

/* ---- one tag ------------------------------------------------------------------------ */

typedef enum { NOTHING, HANDOVER, SPLIT, KILL_APPLIED, KILL_SENT, KILL_WEST, KILL_EAST } disturb_t;

static const char *const disturb_name[] = {"plain",      "handover",  "split",    "kill",
                                           "kill-early", "kill-west", "kill-east"};

/* SIGKILLs the worker owning cell (the registry's owner) and reaps it. */
static void kill_owner(const ts_cell_entry_t *cell)
{
    int w = worker_index(cell->owner);
    ts_h_signal(&ts_h, stack.workers[w], SIGKILL);
    assert_true(ts_h_wait(&ts_h, stack.workers[w], 5000) >= 0);
    killed_worker = w;
}

/* Joins a red tagger at (-3, y) on w1's side and a blue target at (3, y)
 * on the other, has the tagger tag the target, disturbs the target's cell
 * or its owner, and checks the tag applied exactly once. */
static void tag_once(double y, disturb_t disturb)
{
    char tn[32], vn[32];
    snprintf(tn, sizeof tn, "tagger-%s", disturb_name[disturb]);
    snprintf(vn, sizeof vn, "target-%s", disturb_name[disturb]);
    separate(y);
    int t = player_join(-3, y, TEAM_RED, tn);
    int v = player_join(3, y, TEAM_BLUE, vn);

    /* both seen with their teams, by both */
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        seen_t st = seen(t), sv = seen(v);
        if (st.seen && sv.seen && st.team == TEAM_RED && sv.team == TEAM_BLUE && st.tags == 0 &&
            sv.tagged == 0)
            break;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: the players' state bytes never showed their teams (tagger seen %d team %d, "
                     "target seen %d team %d)",
                     disturb_name[disturb], st.seen, st.team, sv.seen, sv.team);
        }
        ts_sleep_ms(20);
    }
    /* each one's cell knows the other (owned or as a ghost): EntityState
     * .nearby counts what a cell knows within aoi.interact_radius (the tag
     * range here), and each pair stands alone */
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        seen_t st = seen(t), sv = seen(v);
        if (st.nearby == 1 && sv.nearby == 1) break;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: the tagger's cell knows %" PRIu32 " entities near it, the target's %" PRIu32
                     ", want 1 and 1",
                     disturb_name[disturb], st.nearby, sv.nearby);
        }
        ts_sleep_ms(20);
    }

    /* the new players got the scores so far right after their Snapshots */
    expect_scores(disturb_name[disturb]);

    ts_cell_entry_t target_cell = live_cell_at(3, y);
    int misses = events(t, EV_MISS);
    send_tag(t, v);
    switch (disturb) {
    case NOTHING:
        break;
    case HANDOVER:
        handover(&target_cell, WORKERS[1 - worker_index(target_cell.owner)], 0);
        break;
    case SPLIT: {
        char reply[512];
        if (!ts_probe_ctl_cell(bus, "split", &target_cell.cell, 10000, reply, sizeof reply)) {
            ts_h.failed = true;
            fail_msg("split: %s", reply);
        }
        break;
    }
    case KILL_SENT:
        kill_owner(&target_cell);
        break;
    case KILL_APPLIED: /* below, once the target's owner applied the tag */
    case KILL_WEST:    /* tag_mutual's */
    case KILL_EAST:
        break;
    }

    /* the tag lands: the target changed team once, the tagger scored once. A
     * miss (the ghost was not there yet) sends nothing: tag again. */
    deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    uint64_t retag_at = 0;
    bool killed = false;
    for (;;) {
        seen_t st = seen(t), sv = seen(v);
        if (disturb == KILL_APPLIED && !killed && sv.tagged == 1) {
            /* its last checkpoint is (most likely) older than the tag: the
             * new owner replays the tag, which must not count twice */
            kill_owner(&target_cell);
            killed = true;
        }
        if (sv.team == TEAM_RED && sv.tagged == 1 && st.tags == 1) break;
        if (events(t, EV_MISS) > misses && retag_at == 0) retag_at = ts_mono_us() + TAG_COOLDOWN_MS * 1000ULL;
        if (retag_at && ts_mono_us() >= retag_at) {
            fprintf(stderr, "it_tag: %s: no enemy in range at the tag, tagging again\n",
                    disturb_name[disturb]);
            misses = events(t, EV_MISS);
            retag_at = 0;
            send_tag(t, v);
        }
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: after %d s the target is team %d tagged %" PRIu32 " times, the tagger has %" PRIu32
                     " points (want team %d, 1, 1)",
                     disturb_name[disturb], WAIT_MS / 1000, sv.team, sv.tagged, st.tags, TEAM_RED);
        }
        ts_sleep_ms(20);
    }

    /* and stays exactly so (after a kill: once the target's cell is live
     * on the other worker) */
    if (disturb == KILL_APPLIED || disturb == KILL_SENT) {
        deadline = ts_mono_us() + WAIT_MS * 1000ULL;
        while (strcmp(live_cell_at(3, y).owner, target_cell.owner) == 0) {
            if (ts_mono_us() > deadline) {
                ts_h.failed = true;
                fail_msg("%s: the target's cell was not recovered in %d s", disturb_name[disturb],
                         WAIT_MS / 1000);
            }
            ts_sleep_ms(50);
        }
    }
    ts_sleep_ms(SETTLE_MS);
    seen_t st = seen(t), sv = seen(v);
    if (st.team != TEAM_RED || st.tags != 1 || st.max_tags != 1 || st.tagged != 0 || sv.team != TEAM_RED ||
        sv.tagged != 1 || sv.max_tagged != 1 || sv.tags != 0) {
        ts_h.failed = true;
        fail_msg("%s: tagger team %d tags %" PRIu32 " (max %" PRIu32 ") tagged %" PRIu32 "; target team %d "
                 "tagged %" PRIu32 " (max %" PRIu32 ") tags %" PRIu32 "; want red 1 (1) 0; red 1 (1) 0",
                 disturb_name[disturb], st.team, st.tags, st.max_tags, st.tagged, sv.team, sv.tagged,
                 sv.max_tagged, sv.tags);
    }
    /* red's score is one more, for every player, and stays so */
    red_made++;
    expect_scores(disturb_name[disturb]);
    ts_sleep_ms(SETTLE_MS);
    expect_scores(disturb_name[disturb]);
    if (disturb == NOTHING) {
        /* events are best effort, but with nothing disturbed both arrive, once */
        deadline = ts_mono_us() + 5000000ULL;
        while ((events(t, EV_YOU_TAGGED) < 1 || events(v, EV_TAGGED_BY) < 1) && ts_mono_us() < deadline)
            ts_sleep_ms(20);
        assert_int_equal(events(t, EV_YOU_TAGGED), 1);
        assert_int_equal(events(v, EV_TAGGED_BY), 1);
    }
}

/* ---- players' state, exactly ----------------------------------------------------- */

/* What a player's entity state must be: team, tags made, times tagged. */
typedef struct {
    int i;
    int team;
    uint32_t tags, tagged;
} want_t;

static bool want_met(const want_t *w)
{
    seen_t s = seen(w->i);
    return s.seen && s.team == w->team && s.tags == w->tags && s.tagged == w->tagged;
}

/* Fails if any player was ever seen with more tags made or more times
 * tagged than it may have now: no double, not even for a moment. */
static void check_max_states(const char *when, const want_t *w, int n)
{
    for (int k = 0; k < n; k++) {
        seen_t s = seen(w[k].i);
        if (s.max_tags > w[k].tags || s.max_tagged > w[k].tagged) {
            ts_h.failed = true;
            fail_msg("%s: player %d was seen with %" PRIu32 " tags made and tagged %" PRIu32 " times (max), "
                     "want at most %" PRIu32 " and %" PRIu32,
                     when, w[k].i, s.max_tags, s.max_tagged, w[k].tags, w[k].tagged);
        }
    }
}

/* Waits until every player of w has its state, checking the maxima. */
static void wait_states(const char *when, const want_t *w, int n)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        check_max_states(when, w, n);
        int off = -1;
        for (int k = 0; k < n && off < 0; k++)
            if (!want_met(&w[k])) off = k;
        if (off < 0) return;
        if (ts_mono_us() > deadline) {
            seen_t s = seen(w[off].i);
            ts_h.failed = true;
            fail_msg("%s: after %d s player %d is team %d with %" PRIu32 " tags made, tagged %" PRIu32
                     " times (seen %d); want team %d, %" PRIu32 ", %" PRIu32,
                     when, WAIT_MS / 1000, w[off].i, s.team, s.tags, s.tagged, s.seen, w[off].team,
                     w[off].tags, w[off].tagged);
        }
        ts_sleep_ms(20);
    }
}

/* After the settling time: every player of w has exactly its state, and
 * never had more. */
static void expect_states(const char *when, const want_t *w, int n)
{
    check_max_states(when, w, n);
    for (int k = 0; k < n; k++) {
        seen_t s = seen(w[k].i);
        if (!want_met(&w[k]) || s.max_tags != w[k].tags || s.max_tagged != w[k].tagged) {
            ts_h.failed = true;
            fail_msg("%s: player %d is team %d with %" PRIu32 " tags made (max %" PRIu32 "), tagged %" PRIu32
                     " times (max %" PRIu32 "); want team %d, %" PRIu32 ", %" PRIu32,
                     when, w[k].i, s.team, s.tags, s.max_tags, s.tagged, s.max_tagged, w[k].team, w[k].tags,
                     w[k].tagged);
        }
    }
}

/* Waits until each player's cell knows `want` entities within
 * aoi.interact_radius (the tag range here: EntityState.nearby, owned or
 * ghosts): the players of one scenario see each other and no one else. */
static void wait_nearby(const char *when, const int *players, int n, uint32_t want)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        int off = -1;
        for (int k = 0; k < n && off < 0; k++)
            if (seen(players[k]).nearby != want) off = k;
        if (off < 0) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: player %d's cell knows %" PRIu32 " entities near it, want %" PRIu32, when,
                     players[off], seen(players[off]).nearby, want);
        }
        ts_sleep_ms(20);
    }
}

/* ---- two tags in flight together ------------------------------------------------ */

/* Whether every thread of process pid is stopped. */
static bool proc_stopped(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL) return false;
    bool stopped = true;
    struct dirent *de;
    while (stopped && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char stat_path[sizeof path + sizeof de->d_name + 8], buf[512];
        snprintf(stat_path, sizeof stat_path, "%s/%s/stat", path, de->d_name);
        FILE *f = fopen(stat_path, "r");
        if (f == NULL) continue; /* a thread that just ended */
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')'); /* "pid (comm) S ..." */
        stopped = rp != NULL && rp[1] == ' ' && (rp[2] == 'T' || rp[2] == 't');
    }
    closedir(d);
    return stopped;
}

/* Has players a and b tag each other with both tags in flight together:
 * both workers are stopped (SIGSTOP), both Commands are sent and seen in
 * the cells' input, and the workers go on (SIGCONT). Each cell then applies
 * its player's Command before the other's tag request, which JetStream
 * stored after it: both see an enemy and send a request. */
static void tag_each_other(const char *when, int a, int b)
{
    uint32_t ca = commands_seen(a), cb = commands_seen(b);
    for (int w = 0; w < 2; w++)
        ts_h_signal(&ts_h, stack.workers[w], SIGSTOP);
    uint64_t deadline = ts_mono_us() + FREEZE_MAX_MS * 1000ULL;
    bool stopped = false;
    while (!stopped && ts_mono_us() < deadline) {
        stopped =
            proc_stopped(ts_h.procs[stack.workers[0]].pid) && proc_stopped(ts_h.procs[stack.workers[1]].pid);
        if (!stopped) ts_sleep_ms(1);
    }
    bool stored = false;
    if (stopped) {
        pthread_mutex_lock(&PL.mu);
        PL.p[a].tag_target = PL.p[b].id;
        PL.p[b].tag_target = PL.p[a].id;
        pthread_mutex_unlock(&PL.mu);
        while (!(stored = commands_seen(a) > ca && commands_seen(b) > cb) && ts_mono_us() < deadline)
            ts_sleep_ms(1);
    }
    for (int w = 0; w < 2; w++)
        ts_h_signal(&ts_h, stack.workers[w], SIGCONT);
    if (!stored) {
        ts_h.failed = true;
        fail_msg("%s: %s within %d ms (commands seen: %" PRIu32 " -> %" PRIu32 ", %" PRIu32 " -> %" PRIu32
                 ")",
                 when, stopped ? "the two tags were not in the cells' input" : "the workers did not stop",
                 FREEZE_MAX_MS, ca, commands_seen(a), cb, commands_seen(b));
    }
}

/* Joins a red player at (-3, y) and a blue one at (3, y), on two workers,
 * has them tag each other at the same time and disturbs a cell or a worker
 * meanwhile: each must end on the other's former team, tagged once with
 * one point, and each team's score one more. */
static void tag_mutual(double y, disturb_t disturb)
{
    char when[48], an[32], bn[32];
    snprintf(when, sizeof when, "mutual %s", disturb_name[disturb]);
    snprintf(an, sizeof an, "west-%s", disturb_name[disturb]);
    snprintf(bn, sizeof bn, "east-%s", disturb_name[disturb]);
    separate(y);
    int a = player_join(-3, y, TEAM_RED, an);
    int b = player_join(3, y, TEAM_BLUE, bn);
    const want_t start[] = {{a, TEAM_RED, 0, 0}, {b, TEAM_BLUE, 0, 0}};
    wait_states(when, start, 2);
    wait_nearby(when, (const int[]){a, b}, 2, 1);
    expect_scores(when);

    ts_cell_entry_t west = live_cell_at(-3, y), east = live_cell_at(3, y);
    int misses = events(a, EV_MISS) + events(b, EV_MISS);
    tag_each_other(when, a, b);
    switch (disturb) {
    case HANDOVER:
        handover(&east, WORKERS[1 - worker_index(east.owner)], 0);
        break;
    case SPLIT: {
        char reply[512];
        if (!ts_probe_ctl_cell(bus, "split", &east.cell, 10000, reply, sizeof reply)) {
            ts_h.failed = true;
            fail_msg("%s: split: %s", when, reply);
        }
        break;
    }
    default: /* the kills below, once one tag applied */
        break;
    }

    /* both tags land: each player changed team once and scored once. The
     * west player's owner is killed once the east player shows its tag (the
     * west cell applied the west Command, and maybe the east player's tag
     * and its confirmation); the east one's once the west player shows its
     * tag: the new owner replays from the last checkpoint. */
    const want_t end[] = {{a, TEAM_BLUE, 1, 1}, {b, TEAM_RED, 1, 1}};
    const ts_cell_entry_t *killed = NULL;
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        if (disturb == KILL_WEST && !killed && seen(b).tagged == 1) {
            kill_owner(&west);
            killed = &west;
        }
        if (disturb == KILL_EAST && !killed && seen(a).tagged == 1) {
            kill_owner(&east);
            killed = &east;
        }
        check_max_states(when, end, 2);
        check_max_scores(when, 1, 1);
        if (events(a, EV_MISS) + events(b, EV_MISS) != misses) {
            ts_h.failed = true;
            fail_msg("%s: a tag found no enemy in range (west %d, east %d misses): the tags did not cross",
                     when, events(a, EV_MISS), events(b, EV_MISS));
        }
        if (want_met(&end[0]) && want_met(&end[1])) break;
        if (ts_mono_us() > deadline) wait_states(when, end, 2); /* fails with the details */
        ts_sleep_ms(20);
    }
    if (killed) {
        deadline = ts_mono_us() + WAIT_MS * 1000ULL;
        double x = killed == &west ? -3 : 3;
        while (strcmp(live_cell_at(x, y).owner, killed->owner) == 0) {
            if (ts_mono_us() > deadline) {
                ts_h.failed = true;
                fail_msg("%s: the killed worker's cell was not recovered in %d s", when, WAIT_MS / 1000);
            }
            ts_sleep_ms(50);
        }
    }
    ts_sleep_ms(SETTLE_MS);
    expect_states(when, end, 2);
    /* each team's score is one more, for every player, and stays so */
    red_made++;
    blue_made++;
    expect_scores(when);
    ts_sleep_ms(SETTLE_MS);
    expect_scores(when);
    expect_states(when, end, 2);
    if (disturb == NOTHING) {
        /* with nothing disturbed each gets both events, once */
        deadline = ts_mono_us() + 5000000ULL;
        while (ts_mono_us() < deadline && (events(a, EV_YOU_TAGGED) < 1 || events(a, EV_TAGGED_BY) < 1 ||
                                           events(b, EV_YOU_TAGGED) < 1 || events(b, EV_TAGGED_BY) < 1))
            ts_sleep_ms(20);
        assert_int_equal(events(a, EV_YOU_TAGGED), 1);
        assert_int_equal(events(a, EV_TAGGED_BY), 1);
        assert_int_equal(events(b, EV_YOU_TAGGED), 1);
        assert_int_equal(events(b, EV_TAGGED_BY), 1);
    }
}

/* ---- tags in turn ----------------------------------------------------------------- */

/* Has tagger tag target (by id) and waits until the players of w have
 * their states. A miss (the tagger's cell saw the target on its own team:
 * a ghost a tick or two old) or a command the cooldown ignored (the
 * tagger's attempt stamp did not move) is sent again. */
static void tag_until(const char *when, int tagger, int target, const want_t *w, int n)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    int misses = events(tagger, EV_MISS);
    uint32_t stamp = seen(tagger).attempt;
    uint64_t sent_at = ts_mono_us(), retag_at = 0;
    send_tag(tagger, target);
    for (;;) {
        check_max_states(when, w, n);
        int off = -1;
        for (int k = 0; k < n && off < 0; k++)
            if (!want_met(&w[k])) off = k;
        if (off < 0) return;
        if (events(tagger, EV_MISS) > misses && retag_at == 0)
            retag_at = ts_mono_us() + TAG_COOLDOWN_MS * 1000ULL;
        if (retag_at == 0 && seen(tagger).attempt == stamp &&
            ts_mono_us() > sent_at + 2 * TAG_COOLDOWN_MS * 1000ULL)
            retag_at = ts_mono_us();
        if (retag_at && ts_mono_us() >= retag_at) {
            fprintf(stderr, "it_tag: %s: the tag missed or was ignored, tagging again\n", when);
            misses = events(tagger, EV_MISS);
            stamp = seen(tagger).attempt;
            sent_at = ts_mono_us();
            retag_at = 0;
            send_tag(tagger, target);
        }
        if (ts_mono_us() > deadline) wait_states(when, w, n); /* fails with the details */
        ts_sleep_ms(20);
    }
}

/* A red west player A, a blue east player B and a blue east player C next
 * to B take turns, every tag across the border:
 *   1. A tags B: B joins red;
 *   2. B tags A back: a miss, they are teammates now (the rule: a tag turns
 *      the tagged one into the tagger's teammate), nothing changes;
 *   3. C tags A: A joins blue, so B and A are enemies again;
 *   4. B tags A: A joins red again.
 * A and B have then tagged each other once each, in turn. */
static void tag_in_turn(double y)
{
    const char *when = "in turn";
    separate(y);
    int a = player_join(-3, y, TEAM_RED, "west-turn");
    int b = player_join(3, y, TEAM_BLUE, "east-turn");
    int c = player_join(3, y + 4, TEAM_BLUE, "east2-turn");
    const want_t start[] = {{a, TEAM_RED, 0, 0}, {b, TEAM_BLUE, 0, 0}, {c, TEAM_BLUE, 0, 0}};
    wait_states(when, start, 3);
    wait_nearby(when, (const int[]){a, b, c}, 3, 2);
    expect_scores(when);

    /* 1. */
    const want_t one[] = {{a, TEAM_RED, 1, 0}, {b, TEAM_RED, 0, 1}, {c, TEAM_BLUE, 0, 0}};
    tag_until("in turn, A tags B", a, b, one, 3);
    red_made++;
    expect_scores("in turn, A tags B");

    /* 2. */
    int misses = events(b, EV_MISS);
    uint64_t b_tagged_at = ts_mono_us();
    send_tag(b, a);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (events(b, EV_MISS) == misses) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("in turn: B's tag on its teammate A did not miss within %d s", WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
    expect_states("in turn, B tags its teammate A", one, 3);

    /* 3. */
    const want_t three[] = {{a, TEAM_BLUE, 1, 1}, {b, TEAM_RED, 0, 1}, {c, TEAM_BLUE, 1, 0}};
    tag_until("in turn, C tags A", c, a, three, 3);
    blue_made++;
    expect_scores("in turn, C tags A");

    /* 4. once B's cooldown from 2. has passed */
    while (ts_mono_us() < b_tagged_at + TAG_COOLDOWN_MS * 1000ULL)
        ts_sleep_ms(20);
    const want_t four[] = {{a, TEAM_RED, 1, 2}, {b, TEAM_RED, 1, 1}, {c, TEAM_BLUE, 1, 0}};
    tag_until("in turn, B tags A", b, a, four, 3);
    red_made++;

    ts_sleep_ms(SETTLE_MS);
    expect_states(when, four, 3);
    expect_scores(when);
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_tag_across_workers(void **state)
{
    (void)state;
    tag_once(10, NOTHING);
    ts_h_pass();
}

static void test_tag_through_handover(void **state)
{
    (void)state;
    tag_once(30, HANDOVER);
    ts_h_pass();
}

static void test_tag_through_split(void **state)
{
    (void)state;
    tag_once(55, SPLIT);
    ts_h_pass();
}

/* The target's owner applied the tag (the target's state shows it) and is
 * SIGKILLed at once: its cells are recovered on the other worker, which
 * replays the tag from the last checkpoint; neither the team change nor the
 * point counts twice. */
static void test_tag_through_owner_crash(void **state)
{
    (void)state;
    tag_once(75, KILL_APPLIED);
    /* the killed worker comes back (with no cells) for the next test */
    restart_worker(killed_worker);
    ts_h_pass();
}

/* The target's owner is SIGKILLed right after the tag is sent: the
 * recovered cell applies the tag and must send its confirmation back to
 * the tagger, whose ghost it may not have yet. */
static void test_tag_owner_crash_before_apply(void **state)
{
    (void)state;
    tag_once(95, KILL_SENT);
    restart_worker(killed_worker);
    ts_h_pass();
}

/* Two players on either side of the worker border tag each other at the
 * same time: both tags in flight together, each applies once. */
static void test_tag_each_other(void **state)
{
    (void)state;
    tag_mutual(115, NOTHING);
    ts_h_pass();
}

/* The same, the east player's cell handed over meanwhile. */
static void test_tag_each_other_through_handover(void **state)
{
    (void)state;
    tag_mutual(135, HANDOVER);
    ts_h_pass();
}

/* The same, the east player's cell split meanwhile. */
static void test_tag_each_other_through_split(void **state)
{
    (void)state;
    tag_mutual(155, SPLIT);
    ts_h_pass();
}

/* The same, the west player's owner SIGKILLed mid-game (once the east
 * player's tag applied), its cells recovered on the other worker. */
static void test_tag_each_other_west_owner_crash(void **state)
{
    (void)state;
    tag_mutual(175, KILL_WEST);
    restart_worker(killed_worker);
    ts_h_pass();
}

/* The same, the east player's owner SIGKILLed mid-game. */
static void test_tag_each_other_east_owner_crash(void **state)
{
    (void)state;
    tag_mutual(195, KILL_EAST);
    restart_worker(killed_worker);
    ts_h_pass();
}

/* Tags in turn across the border, with the team rule in between. */
static void test_tag_in_turn(void **state)
{
    (void)state;
    tag_in_turn(-50);
    ts_h_pass();
}

/* ---- a scores' cell through a split, a merge and crashes -------------------------
 * Every worker heartbeat's report of each cell: the latest per cell (its
 * worker, epoch and red), to tell where the points are. */

#define HB_CELLS 128

typedef struct {
    ts_cell_t cell;
    char worker[TS_WORKER_ID_MAX];
    uint64_t epoch;
    int64_t red;
} hb_report_t;

static struct {
    pthread_mutex_t mu;
    hb_report_t r[HB_CELLS];
    int n;
} HB = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_heartbeat(void *ud, const ts_bus_msg_t *msg)
{
    (void)ud;
    Tessera__V1__Heartbeat *hb =
        tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(msg), ts_bus_msg_data(msg));
    if (!hb) return;
    pthread_mutex_lock(&HB.mu);
    for (size_t i = 0; i < hb->n_cells; i++) {
        ts_cell_t c;
        if (!hb->cells[i]->cell || ts_proto_cell_get(hb->cells[i]->cell, &c) != TS_OK) continue;
        int k = 0;
        while (k < HB.n && !ts_cell_eq(&c, &HB.r[k].cell))
            k++;
        if (k == HB.n && HB.n == HB_CELLS) continue;
        if (k == HB.n) HB.n++;
        hb_report_t *r = &HB.r[k];
        r->cell = c;
        ts_strlcpy(r->worker, hb->worker ? hb->worker : "", sizeof r->worker);
        r->epoch = hb->cells[i]->epoch;
        r->red = hb->cells[i]->n_counters > 0 ? hb->cells[i]->counters[0] : 0;
    }
    pthread_mutex_unlock(&HB.mu);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

/* The latest report of cell c (false: none yet). */
static bool hb_report(const ts_cell_t *c, hb_report_t *out)
{
    pthread_mutex_lock(&HB.mu);
    bool found = false;
    for (int k = 0; k < HB.n && !found; k++)
        if (ts_cell_eq(c, &HB.r[k].cell)) {
            *out = HB.r[k];
            found = true;
        }
    pthread_mutex_unlock(&HB.mu);
    return found;
}

/* Waits until cell c is in the registry in `state`, owned by another
 * worker than `dead`, and its owner reports it at its registry epoch with
 * red = `red`. */
static void expect_report(const ts_cell_t *c, ts_cell_state_t state, const char *dead, int64_t red,
                          const char *when)
{
    char key[TS_CELL_STR_MAX];
    ts_cell_format(c, key, sizeof key);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        ts_cell_entry_t e;
        hb_report_t r = {.red = -1};
        bool found = ts_registry_cell_get(reg, c, &e) == TS_OK;
        bool have = hb_report(c, &r);
        if (found && have && e.state == state && strcmp(e.owner, dead) != 0 &&
            strcmp(r.worker, e.owner) == 0 && r.epoch == e.epoch && r.red == red)
            return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: cell %s is %s owned by %s at epoch %" PRIu64
                     ", its last report (%s at epoch %" PRIu64 ") says red %" PRId64 "; want %s, red %" PRId64
                     ", not on %s",
                     when, key, found ? ts_cell_state_str(e.state) : "?", found ? e.owner : "?",
                     found ? e.epoch : 0, r.worker, r.epoch, r.red, ts_cell_state_str(state), red, dead);
        }
        ts_sleep_ms(50);
    }
}

/* The active cell whose owner reports the most red points in it at its
 * registry epoch (a target's cell: the tagged player's cell counts the
 * point). */
static ts_cell_entry_t scores_cell(void)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        ts_cell_entry_t best = {.epoch = 0};
        int64_t most = 0;
        static hb_report_t v[HB_CELLS];
        pthread_mutex_lock(&HB.mu);
        int n = HB.n;
        memcpy(v, HB.r, (size_t)n * sizeof *v);
        pthread_mutex_unlock(&HB.mu);
        for (int k = 0; k < n; k++) {
            ts_cell_entry_t e;
            if (v[k].red <= most || ts_registry_cell_get(reg, &v[k].cell, &e) != TS_OK ||
                e.state != TS_CELL_ACTIVE || e.epoch != v[k].epoch || strcmp(e.owner, v[k].worker) != 0)
                continue;
            best = e;
            most = v[k].red;
        }
        if (most > 0) return best;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("no active cell reports red points");
        }
        ts_sleep_ms(50);
    }
}

/* No player saw a score other than the tags made since the watch began
 * (a gateway sends WorldCounters only when the sum changes: none since,
 * INT64_MAX, is no change). */
static void expect_exact_since_watch(const char *when)
{
    pthread_mutex_lock(&PL.mu);
    int64_t min_red = PL.min_red, min_blue = PL.min_blue, max_red = PL.max_red, max_blue = PL.max_blue;
    pthread_mutex_unlock(&PL.mu);
    if ((min_red != red_made && min_red != INT64_MAX) || max_red != red_made ||
        (min_blue != blue_made && min_blue != INT64_MAX) || max_blue != blue_made) {
        ts_h.failed = true;
        fail_msg("%s: players saw red from %" PRId64 " to %" PRId64 ", blue from %" PRId64 " to %" PRId64
                 "; want red %" PRId64 " and blue %" PRId64 " throughout",
                 when, min_red, max_red, min_blue, max_blue, red_made, blue_made);
    }
}

/* Splits (verb "split") or merges ("merge") cell e through the
 * orchestrator and SIGKILLs `owner` as soon as the orchestrator answers;
 * returns the killed worker's id. */
static const char *change_and_kill(const char *verb, const ts_cell_entry_t *e, const char *owner)
{
    char reply[512];
    if (!ts_probe_ctl_cell(bus, verb, &e->cell, 10000, reply, sizeof reply)) {
        ts_h.failed = true;
        fail_msg("%s: %s", verb, reply);
    }
    ts_cell_entry_t o = *e;
    ts_strlcpy(o.owner, owner, sizeof o.owner);
    kill_owner(&o);
    return WORKERS[killed_worker];
}

/* Starts the worker killed last again and waits until the orchestrator
 * knows it (a root cell away from `away` is handed to it). */
static void bring_back(const ts_cell_t *away)
{
    int back = killed_worker;
    restart_worker(back);
    killed_worker = -1;
    double x0, y0, x1, y1;
    ts_cell_bounds(away, CELL_SIZE, &x0, &y0, &x1, &y1);
    ts_cell_entry_t other = live_cell_at(x0 < -100 ? 150 : -150, -150);
    if (strcmp(other.owner, WORKERS[back]) != 0) handover(&other, WORKERS[back], 30000);
}

/* The world counters are the teams' points, each in the cell where the
 * tagged player was: a split moves a cell's to its child quadrant 0, a
 * merge the children's back to the parent, each while the owner that
 * executes it is SIGKILLed right after the orchestrator decided it, and a
 * second split's owner once the parent moved its points out (the move is
 * completed, or replayed, by the worker that recovers the cells, from
 * their checkpoints and input streams). The cells' heartbeat reports show the
 * points where they belong after each step, and the sum every player sees
 * never leaves the tags made, not even for a moment, through the moves,
 * the kills and the recoveries. */
static void test_scores_through_split_merge_and_crash(void **state)
{
    (void)state;
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "tessera.worker.*.hb", on_heartbeat, NULL, &sub), TS_OK);
    if (red_made == 0) tag_once(10, NOTHING); /* run alone: some points to move */
    ts_cell_entry_t r = scores_cell();
    if (killed_worker >= 0) bring_back(&r.cell);
    r = scores_cell();
    hb_report_t rr = {.red = 0};
    assert_true(hb_report(&r.cell, &rr));
    int64_t points = rr.red;
    ts_cell_t kids[4];
    assert_int_equal(ts_cell_children(&r.cell, kids), TS_OK);
    expect_scores("before the split");
    pthread_mutex_lock(&PL.mu);
    PL.watch = true;
    PL.min_red = INT64_MAX;
    PL.min_blue = INT64_MAX;
    pthread_mutex_unlock(&PL.mu);

    /* split, owner killed: the points end in child 0, the parent has none */
    const char *dead = change_and_kill("split", &r, r.owner);
    expect_report(&kids[0], TS_CELL_ACTIVE, dead, points, "after the split");
    expect_report(&r.cell, TS_CELL_SPLIT, dead, 0, "after the split");
    for (int q = 1; q < 4; q++)
        expect_report(&kids[q], TS_CELL_ACTIVE, dead, 0, "after the split");
    expect_scores("after the split");
    expect_exact_since_watch("through the split and the crash");

    /* merge, owner (the children's, the parent's from then on) killed: the
     * points end in the parent again */
    bring_back(&r.cell);
    ts_cell_entry_t parent, kid0;
    assert_int_equal(ts_registry_cell_get(reg, &r.cell, &parent), TS_OK);
    assert_int_equal(ts_registry_cell_get(reg, &kids[0], &kid0), TS_OK);
    dead = change_and_kill("merge", &parent, kid0.owner);
    expect_report(&r.cell, TS_CELL_ACTIVE, dead, points, "after the merge");
    for (int q = 0; q < 4; q++)
        expect_report(&kids[q], TS_CELL_RETIRED, dead, 0, "after the merge");
    expect_scores("after the merge");
    ts_sleep_ms(SETTLE_MS);
    expect_scores("after the merge");
    expect_exact_since_watch("through the merge and the crash");

    /* split again, the owner killed once the parent reports its points
     * moved out (its last checkpoint most likely from before that, child
     * 0's from before or after it applied them): the new owner replays the
     * move, child 0 holds them once */
    bring_back(&r.cell);
    char reply[512];
    if (!ts_probe_ctl_cell(bus, "split", &r.cell, 10000, reply, sizeof reply)) {
        ts_h.failed = true;
        fail_msg("split again: %s", reply);
    }
    expect_report(&r.cell, TS_CELL_SPLIT, "", 0, "split again");
    assert_int_equal(ts_registry_cell_get(reg, &r.cell, &parent), TS_OK);
    kill_owner(&parent);
    dead = WORKERS[killed_worker];
    expect_report(&kids[0], TS_CELL_ACTIVE, dead, points, "after the second split");
    expect_report(&r.cell, TS_CELL_SPLIT, dead, 0, "after the second split");
    expect_scores("after the second split");
    ts_sleep_ms(SETTLE_MS);
    expect_scores("after the second split");
    expect_exact_since_watch("through the second split and the crash");
    ts_bus_sub_destroy(sub);
    bring_back(&r.cell);
    ts_h_pass();
}

/* ---- fixtures ----------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    if (ts_bus_connect(&bus, ts_h.nats_url, "it_tag") != TS_OK ||
        ts_registry_connect(&reg, ts_h.redis_url) != TS_OK)
        goto fail;
    char inputs[TS_SUBJECT_MAX];
    ts_subject_world_wildcard(inputs, sizeof inputs, WORLD, TS_SUBJ_INPUT);
    if (ts_bus_subscribe(bus, inputs, on_input, NULL, &input_sub) != TS_OK) goto fail;
    snprintf(game_arg, sizeof game_arg, "--worker.game=%s/libtag.so", TS_BIN_DIR);
    /* no automatic split or merge: the tests split and merge */
    const char *orch[] = {"--orch.rebalance=0", "--split.auto=0", HB_TTL_ARG, "--world.assign=-1:0=w1,0:0=w2",
                          NULL};
    ts_h_spawn_stack(&ts_h, orch, worker_args, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(stack.gw_port, WAIT_MS) ||
        !ts_h_wait_port(ts_h_player_port(stack.gw_port), WAIT_MS))
        goto fail;
    return 0;
fail:
    ts_h_fail_dump(&ts_h);
    ts_bus_sub_destroy(input_sub);
    input_sub = NULL;
    ts_registry_destroy(reg);
    ts_bus_destroy(bus);
    reg = NULL;
    bus = NULL;
    ts_h_stop(&ts_h);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    players_stop();
    ts_bus_sub_destroy(input_sub);
    ts_registry_destroy(reg);
    ts_bus_destroy(bus);
    ts_h_stop(&ts_h);
    return 0;
}

int main(int argc, char **argv)
{
    ts_h_ws_main(argc, argv); /* --ws: the players on WebSocket */
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_tag_across_workers),
        TS_H_TEST(test_tag_through_handover),
        TS_H_TEST(test_tag_through_split),
        TS_H_TEST(test_tag_through_owner_crash),
        TS_H_TEST(test_tag_owner_crash_before_apply),
        TS_H_TEST(test_tag_each_other),
        TS_H_TEST(test_tag_each_other_through_handover),
        TS_H_TEST(test_tag_each_other_through_split),
        TS_H_TEST(test_tag_each_other_west_owner_crash),
        TS_H_TEST(test_tag_each_other_east_owner_crash),
        TS_H_TEST(test_tag_in_turn),
        TS_H_TEST(test_scores_through_split_merge_and_crash),
    };
    return TS_H_RUN(ts_h_ws ? "it_tag_ws" : "it_tag", tests, group_setup, group_teardown);
}
