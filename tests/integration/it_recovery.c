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
 *    every input applied exactly once. */
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
#include "tessera/client.h"
#include "tessera/log.h"
#include "tessera/map.h"
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

static ts_h_t H;
static bool test_passed;
static int gw_port;
static int w_idx[2] = {-1, -1};
static const char *const WORKERS[2] = {"w1", "w2"};
static ts_bus_t *bus;
static ts_bus_sub_t *hb_sub, *state_sub, *input_sub;
static ts_registry_t *reg;

/* ---- latest heartbeat per worker ------------------------------------------ */

#define HB_WORKERS 4
#define HB_CELLS 32
typedef struct {
    ts_cell_t cell;
    uint64_t epoch;
} cell_epoch_t;
typedef struct {
    char worker[TS_WORKER_ID_MAX];
    uint64_t received_us;
    size_t ncells;
    cell_epoch_t cells[HB_CELLS];
} hb_last_t;

static struct {
    pthread_mutex_t mu;
    size_t n;
    hb_last_t w[HB_WORKERS];
} HBW = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_heartbeat(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (hb == NULL) return;
    pthread_mutex_lock(&HBW.mu);
    size_t i = 0;
    while (i < HBW.n && strcmp(HBW.w[i].worker, hb->worker) != 0)
        i++;
    if (i == HBW.n && HBW.n < HB_WORKERS) ts_strlcpy(HBW.w[HBW.n++].worker, hb->worker, TS_WORKER_ID_MAX);
    if (i < HBW.n) {
        hb_last_t *l = &HBW.w[i];
        l->received_us = ts_mono_us();
        l->ncells = 0;
        for (size_t k = 0; k < hb->n_cells && l->ncells < HB_CELLS; k++) {
            ts_cell_t c;
            if (hb->cells[k]->cell && ts_proto_cell_get(hb->cells[k]->cell, &c) == TS_OK)
                l->cells[l->ncells++] = (cell_epoch_t){c, hb->cells[k]->epoch};
        }
    }
    pthread_mutex_unlock(&HBW.mu);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

static bool hb_get(const char *worker, hb_last_t *out)
{
    bool found = false;
    pthread_mutex_lock(&HBW.mu);
    for (size_t i = 0; i < HBW.n && !found; i++) {
        if (strcmp(HBW.w[i].worker, worker) == 0) {
            *out = HBW.w[i];
            found = true;
        }
    }
    pthread_mutex_unlock(&HBW.mu);
    return found;
}

/* True if the heartbeat lists every cell of want at (at least) its epoch. */
static bool hb_lists(const hb_last_t *l, const cell_epoch_t *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t k = 0; k < l->ncells && !found; k++)
            found = ts_cell_eq(&l->cells[k].cell, &want[i].cell) && l->cells[k].epoch >= want[i].epoch;
        if (!found) return false;
    }
    return true;
}

/* ---- input ledger (diagnostics) ------------------------------------------------
 * Every Join/Move published on a cell input subject, per entity and client seq
 * (seen through a core subscription, so forwarded copies count once), against
 * the newest state the entity showed. When inputs go missing it names the
 * entity, the missing seqs, and where and when they were published. */

typedef struct {
    uint32_t at_ms; /* since the ledger started */
    int16_t cx, cy;
    bool seen;
} ledger_input_t;

typedef struct {
    uint64_t id;
    ledger_input_t *in; /* index: client seq */
    size_t cap;
    uint64_t published, max_seq;
    bool has_state;
    uint64_t applied, last_input_seq, window, epoch;
    ts_cell_t cell;
    char owner[TS_WORKER_ID_MAX];
} ledger_entry_t;

static struct {
    pthread_mutex_t mu;
    ts_map_t entities; /* id -> ledger_entry_t* */
    uint64_t start_us;
    bool on;
} LG = {.mu = PTHREAD_MUTEX_INITIALIZER};

static ledger_entry_t *ledger_entry(uint64_t id)
{
    if (id == 0 || id == UINT64_MAX) return NULL;
    ledger_entry_t *e = ts_map_get(&LG.entities, id);
    if (e == NULL && (e = calloc(1, sizeof *e)) != NULL) {
        e->id = id;
        if (ts_map_put(&LG.entities, id, e) != TS_OK) {
            free(e);
            e = NULL;
        }
    }
    return e;
}

static void on_input(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__InputBatch *b =
        tessera__v1__input_batch__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    ts_cell_t cell;
    ts_subject_kind_t kind;
    if (b == NULL || ts_subject_parse(ts_bus_msg_subject(m), &cell, &kind) != TS_OK) {
        if (b != NULL) tessera__v1__input_batch__free_unpacked(b, NULL);
        return;
    }
    pthread_mutex_lock(&LG.mu);
    uint32_t at_ms = (uint32_t)((ts_mono_us() - LG.start_us) / 1000);
    for (size_t i = 0; LG.on && i < b->n_inputs; i++) {
        const Tessera__V1__Input *in = b->inputs[i];
        if (in->kind_case != TESSERA__V1__INPUT__KIND_JOIN && in->kind_case != TESSERA__V1__INPUT__KIND_MOVE)
            continue;
        ledger_entry_t *e = ledger_entry(in->entity);
        if (e == NULL || in->seq == 0 || in->seq > 1000000) continue;
        if (in->seq >= e->cap) {
            size_t ncap = e->cap ? e->cap : 128;
            while (ncap <= in->seq)
                ncap *= 2;
            ledger_input_t *v = realloc(e->in, ncap * sizeof *v);
            if (v == NULL) continue;
            memset(v + e->cap, 0, (ncap - e->cap) * sizeof *v);
            e->in = v;
            e->cap = ncap;
        }
        if (!e->in[in->seq].seen) {
            e->in[in->seq] = (ledger_input_t){at_ms, (int16_t)cell.cx, (int16_t)cell.cy, true};
            e->published++;
            if (in->seq > e->max_seq) e->max_seq = in->seq;
        }
    }
    pthread_mutex_unlock(&LG.mu);
    tessera__v1__input_batch__free_unpacked(b, NULL);
}

static void ledger_state(const Tessera__V1__StateDelta *d)
{
    ts_cell_t cell;
    if (d->cell == NULL || ts_proto_cell_get(d->cell, &cell) != TS_OK) return;
    pthread_mutex_lock(&LG.mu);
    for (size_t i = 0; LG.on && i < d->n_entities; i++) {
        const Tessera__V1__EntityState *s = d->entities[i];
        ledger_entry_t *e = ledger_entry(s->id);
        if (e == NULL || (e->has_state && s->inputs_applied < e->applied)) continue;
        e->has_state = true;
        e->applied = s->inputs_applied;
        e->last_input_seq = s->last_input_seq;
        e->window = s->applied_window;
        e->epoch = d->epoch;
        e->cell = cell;
        ts_strlcpy(e->owner, d->owner ? d->owner : "?", sizeof e->owner);
    }
    pthread_mutex_unlock(&LG.mu);
}

static bool ledger_applied(const ledger_entry_t *e, uint64_t seq)
{
    if (seq == e->last_input_seq) return true;
    if (seq > e->last_input_seq) return false;
    uint64_t back = e->last_input_seq - 1 - seq;
    return back >= 64 || (e->window >> back) & 1;
}

/* Prints the entities whose state shows fewer inputs than were published. */
static void ledger_report(const char *what, uint64_t event_us)
{
    pthread_mutex_lock(&LG.mu);
    int shown = 0;
    size_t short_entities = 0;
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&LG.entities, &it, &k, &v);) {
        ledger_entry_t *e = v;
        if (e->has_state && e->applied >= e->published) continue;
        short_entities++;
        if (shown++ >= 5) continue;
        char key[TS_CELL_STR_MAX] = "-";
        if (e->has_state) ts_cell_format(&e->cell, key, sizeof key);
        fprintf(stderr,
                "ledger: entity %" PRIx64 " (%" PRIu64 "): %" PRIu64 " inputs published (max seq %" PRIu64
                "), newest state shows %" PRIu64 " applied, last_input_seq %" PRIu64
                " (cell %s, owner %s, epoch %" PRIu64 "); missing:",
                e->id, e->id, e->published, e->max_seq, e->applied, e->last_input_seq, key, e->owner,
                e->epoch);
        int listed = 0;
        for (uint64_t s = 1; s <= e->max_seq && listed < 12; s++) {
            if (!e->in[s].seen || ledger_applied(e, s)) continue;
            listed++;
            fprintf(stderr, " seq %" PRIu64 " (cell %d,%d at %+.2f s from %s)", s, e->in[s].cx, e->in[s].cy,
                    ((double)e->in[s].at_ms * 1000 - (double)(event_us - LG.start_us)) / 1e6, what);
        }
        fputc('\n', stderr);
    }
    fprintf(stderr, "ledger: %zu entities tracked, %zu short of inputs\n", LG.entities.len, short_entities);
    pthread_mutex_unlock(&LG.mu);
}

static void ledger_start(void)
{
    pthread_mutex_lock(&LG.mu);
    ts_map_init(&LG.entities);
    LG.start_us = ts_mono_us();
    LG.on = true;
    pthread_mutex_unlock(&LG.mu);
}

static void ledger_free(void)
{
    pthread_mutex_lock(&LG.mu);
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&LG.entities, &it, &k, &v);) {
        ledger_entry_t *e = v;
        free(e->in);
        free(e);
    }
    ts_map_free(&LG.entities);
    LG.on = false;
    pthread_mutex_unlock(&LG.mu);
}

/* ---- state published on the reassigned cells ---------------------------------- */

static struct {
    pthread_mutex_t mu;
    bool armed;
    const char *zombie;           /* worker id whose state is watched */
    cell_epoch_t cells[HB_CELLS]; /* reassigned cells and their new epochs */
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
    ledger_state(d);
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

/* ---- one gateway client hovering in its cell, on its own thread ----------------- */

static struct {
    ts_client_t *c;
    pthread_t thread;
    bool running;
    atomic_bool stop_sending, stop;
    pthread_mutex_t mu;
    uint64_t entity, sent, last_seq;
    bool closed;
    ts_status_t close_status;
    int errors;
    char last_error[128];
    uint64_t applied, max_applied, last_input_seq, regressions;
    char regression[128];
} PL = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
    uint64_t sent, last_seq, applied, max_applied, last_input_seq, regressions;
    bool closed;
    int errors;
} player_view_t;

static player_view_t player_view(void)
{
    pthread_mutex_lock(&PL.mu);
    player_view_t v = {PL.sent,           PL.last_seq,    PL.applied, PL.max_applied,
                       PL.last_input_seq, PL.regressions, PL.closed,  PL.errors};
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
            ts_status_t st = ts_client_move(PL.c, k++ % 2 ? 3 : -3, 0);
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
    assert_int_equal(ts_client_connect(&PL.c, "127.0.0.1", gw_port, 3000), TS_OK);
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
        H.failed = true;
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
 * stays exactly so. */
static void player_assert_exact(void)
{
    atomic_store(&PL.stop_sending, true);
    uint64_t deadline = ts_mono_us() + 15000000;
    player_view_t v;
    do {
        ts_sleep_ms(100);
        v = player_view();
    } while (!v.closed && !(v.applied >= v.sent && v.last_input_seq >= v.last_seq) &&
             ts_mono_us() < deadline);
    ts_sleep_ms(1000);
    v = player_view();
    fprintf(stderr,
            "player: sent %" PRIu64 " applied %" PRIu64 " (max %" PRIu64 ") last_seq %" PRIu64 "/%" PRIu64
            "\n",
            v.sent, v.applied, v.max_applied, v.last_input_seq, v.last_seq);
    if (v.closed) {
        H.failed = true;
        fail_msg("the player lost its connection: %s", ts_status_str(PL.close_status));
    }
    if (v.errors) {
        H.failed = true;
        fail_msg("the player got %d error frames, last: %s", v.errors, PL.last_error);
    }
    if (v.regressions) {
        H.failed = true;
        fail_msg("the player saw its input count go backwards %" PRIu64 " times, first: %s", v.regressions,
                 PL.regression);
    }
    if (v.applied != v.sent || v.max_applied != v.sent || v.last_input_seq != v.last_seq) {
        H.failed = true;
        fail_msg("the player sent %" PRIu64 " inputs (last seq %" PRIu64 ") but its entity shows %" PRIu64
                 " applied (max %" PRIu64 "), last_input_seq %" PRIu64,
                 v.sent, v.last_seq, v.applied, v.max_applied, v.last_input_seq);
    }
}

/* ---- cluster ------------------------------------------------------------------------ */

static bool ctl_answers(void)
{
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_bus_msg_t *m = NULL;
    char subject[64];
    snprintf(subject, sizeof subject, "tessera.ctl.%d.stats", WORLD);
    if (ts_bus_request(bus, subject, &hdr, "", 0, 500, &m) != TS_OK) return false;
    ts_bus_msg_destroy(m);
    return true;
}

static void print_stats(void)
{
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_bus_msg_t *m = NULL;
    char subject[64];
    snprintf(subject, sizeof subject, "tessera.ctl.%d.stats", WORLD);
    if (ts_bus_request(bus, subject, &hdr, "", 0, 2000, &m) != TS_OK) return;
    fprintf(stderr, "orchestrator stats: %.*s\n", (int)ts_bus_msg_len(m), (const char *)ts_bus_msg_data(m));
    ts_bus_msg_destroy(m);
}

static void cluster_start(void)
{
    ts_h_start(&H);
    HBW.n = 0;
    memset(&SW.cells, 0, sizeof SW.cells);
    SW.armed = false;
    SW.n = 0;
    SW.zombie_msgs = SW.zombie_bad = SW.hdr_mismatch = SW.new_owner_msgs = SW.last_zombie_us = 0;
    assert_int_equal(ts_bus_connect(&bus, H.nats_url, "it_recovery"), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, "tessera.worker.*.hb", on_heartbeat, NULL, &hb_sub), TS_OK);
    ledger_start();
    char subject[TS_SUBJECT_MAX];
    ts_subject_world_wildcard(subject, sizeof subject, WORLD, TS_SUBJ_STATE);
    assert_int_equal(ts_bus_subscribe(bus, subject, on_state, NULL, &state_sub), TS_OK);
    ts_subject_world_wildcard(subject, sizeof subject, WORLD, TS_SUBJ_INPUT);
    assert_int_equal(ts_bus_subscribe(bus, subject, on_input, NULL, &input_sub), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, H.redis_url), TS_OK);

    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, NULL};
    ts_h_spawn(&H, "orch", "tessera-orch", orch);
    for (int i = 0; i < 2; i++) {
        char id[32];
        snprintf(id, sizeof id, "--worker.id=%s", WORKERS[i]);
        const char *args[] = {id, "--worker.hb_ms=250", HB_TTL_ARG, NULL};
        w_idx[i] = ts_h_spawn(&H, WORKERS[i], "tessera-worker", args);
    }
    gw_port = ts_h_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", gw_port);
    const char *gw[] = {listen, NULL};
    ts_h_spawn(&H, "gateway", "tessera-gateway", gw);

    if (!ts_h_wait_world(&H, WORLD, NCELLS, WAIT_MS) || !ts_h_wait_port(gw_port, WAIT_MS)) {
        H.failed = true;
        fail_msg("the world or the gateway did not come up");
    }
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    bool ctl_ok = false, bound = false;
    while (ts_mono_us() < deadline && !(ctl_ok && bound)) {
        ctl_ok = ctl_ok || ctl_answers();
        hb_last_t a, b;
        bound = hb_get("w1", &a) && hb_get("w2", &b) && a.ncells == NCELLS / 2 && b.ncells == NCELLS / 2;
        ts_sleep_ms(100);
    }
    if (!ctl_ok) {
        H.failed = true;
        fail_msg("tessera-orch does not answer tessera.ctl.%d.stats", WORLD);
    }
    if (!bound) {
        H.failed = true;
        fail_msg("workers w1 and w2 did not report %d cells each in their heartbeats", NCELLS / 2);
    }
}

static void cluster_stop(void)
{
    player_stop();
    ts_bus_sub_destroy(input_sub);
    ts_bus_sub_destroy(state_sub);
    ts_bus_sub_destroy(hb_sub);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    input_sub = state_sub = hb_sub = NULL;
    ledger_free();
    bus = NULL;
    reg = NULL;
    ts_h_stop(&H);
}

static int sim_start(void)
{
    const char *args[] = {"--sim.players=300", "--sim.seed=3", NULL};
    return ts_h_spawn(&H, "sim", "tessera-sim", args);
}

/* Stops the sim and checks its verdict: applied == acked == sent. On a
 * mismatch the ledger shows what went missing, timed from event_us. */
static void sim_verify(int idx, const char *event, uint64_t event_us)
{
    ts_h_signal(&H, idx, SIGINT);
    int rc = ts_h_wait(&H, idx, 30000);
    char *log = ts_h_read_log(&H, idx);
    assert_non_null(log);
    char verdict[256] = "none";
    const char *line = strstr(log, "sim: done ");
    if (line != NULL) sscanf(line, "%255[^\n]", verdict);
    unsigned long long sent = 0, acked = 0, applied = 0;
    bool parsed =
        line && sscanf(line, "sim: done sent=%llu acked=%llu applied=%llu", &sent, &acked, &applied) == 3;
    free(log);
    if (rc != 0 || !parsed || sent == 0 || sent != acked || acked != applied) {
        ts_sleep_ms(500);
        ledger_report(event, event_us);
        H.failed = true;
        fail_msg("sim: exit %d, want 0 with applied == acked == sent > 0; its verdict: %s", rc, verdict);
    }
    fprintf(stderr, "%s\n", verdict);
}

/* The cells the registry gives to worker, with their epochs. */
static size_t owned_cells(const char *worker, cell_epoch_t *out, size_t cap)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0, k = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
    for (size_t i = 0; i < n && k < cap; i++)
        if (strcmp(cells[i].owner, worker) == 0) out[k++] = (cell_epoch_t){cells[i].cell, cells[i].epoch};
    free(cells);
    return k;
}

/* Polls the registry every POLL_MS until every cell in lost has another
 * owner at epoch + 1; fills moved with the new entries. Returns the time it
 * took from since_us, or UINT64_MAX after timeout_us. */
static uint64_t wait_reassigned(const char *from, const cell_epoch_t *lost, size_t n, cell_epoch_t *moved,
                                char owners[][TS_WORKER_ID_MAX], uint64_t since_us, uint64_t timeout_us)
{
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++) {
            ts_cell_entry_t e;
            if (ts_registry_cell_get(reg, &lost[i].cell, &e) != TS_OK || strcmp(e.owner, from) == 0) continue;
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&e.cell, key, sizeof key);
            if (e.epoch != lost[i].epoch + 1) {
                H.failed = true;
                fail_msg("cell %s went from %s epoch %" PRIu64 " to %s epoch %" PRIu64
                         "; want exactly one epoch step",
                         key, from, lost[i].epoch, e.owner, e.epoch);
            }
            moved[i] = (cell_epoch_t){e.cell, e.epoch};
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
    ts_sleep_ms(3000); /* load, and checkpoints of every cell */

    cell_epoch_t lost[HB_CELLS], moved[HB_CELLS];
    char owners[HB_CELLS][TS_WORKER_ID_MAX];
    size_t n = owned_cells("w2", lost, HB_CELLS);
    assert_int_equal(n, NCELLS / 2);

    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&H, w_idx[1], SIGKILL);
    uint64_t reg_us = wait_reassigned("w2", lost, n, moved, owners, t_kill, 10000000);
    if (reg_us == UINT64_MAX) {
        H.failed = true;
        fail_msg("10 s after SIGKILL of w2 not all of its %zu cells have a new owner", n);
    }
    for (size_t i = 0; i < n; i++)
        assert_string_equal(owners[i], "w1");

    uint64_t hb_us = UINT64_MAX;
    while (ts_mono_us() - t_kill < 10000000) {
        hb_last_t l;
        if (hb_get("w1", &l) && l.received_us > t_kill && hb_lists(&l, moved, n)) {
            hb_us = l.received_us - t_kill;
            break;
        }
        ts_sleep_ms(10);
    }
    fprintf(stderr, "recovery after SIGKILL of w2: %zu cells reassigned in %.0f ms, bound by w1 in %.0f ms\n",
            n, (double)reg_us / 1000, hb_us == UINT64_MAX ? -1.0 : (double)hb_us / 1000);
    print_stats();
    if (reg_us > RECOVERY_MAX_US || hb_us > RECOVERY_MAX_US) {
        H.failed = true;
        fail_msg("recovery too slow: registry %.0f ms, heartbeat %.0f ms after the kill (limit %llu ms)",
                 (double)reg_us / 1000, hb_us == UINT64_MAX ? -1.0 : (double)hb_us / 1000,
                 RECOVERY_MAX_US / 1000);
    }

    ts_sleep_ms(3000); /* the sim goes on against the recovered cells */
    sim_verify(sim, "the kill", t_kill);
    cluster_stop();
    test_passed = true;
}

static void test_stalled_worker_is_fenced(void **state)
{
    (void)state;
    cluster_start();
    int sim = sim_start();
    player_start(-50, 50); /* cell 0.-1.0.0.0, w1's */
    ts_sleep_ms(2000);

    cell_epoch_t lost[HB_CELLS], moved[HB_CELLS];
    char owners[HB_CELLS][TS_WORKER_ID_MAX];
    size_t n = owned_cells("w1", lost, HB_CELLS);
    assert_int_equal(n, NCELLS / 2);

    uint64_t t_stop = ts_mono_us();
    ts_h_signal(&H, w_idx[0], SIGSTOP);
    uint64_t reg_us = wait_reassigned("w1", lost, n, moved, owners, t_stop, 10000000);
    if (reg_us == UINT64_MAX) {
        ts_h_signal(&H, w_idx[0], SIGCONT);
        H.failed = true;
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
    ts_h_signal(&H, w_idx[0], SIGCONT);
    fprintf(stderr, "w1 stopped: cells reassigned to w2 in %.0f ms; SIGCONT\n", (double)reg_us / 1000);

    /* a heartbeat from w1 sent 2 s after it woke up shows it owns nothing */
    hb_last_t l = {.ncells = 0};
    bool fresh = false;
    while (!fresh && ts_mono_us() - t_cont < 10000000) {
        ts_sleep_ms(50);
        fresh = hb_get("w1", &l) && l.received_us > t_cont + FENCE_MAX_US;
    }
    ts_sleep_ms(2000);

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
        H.failed = true;
        fail_msg("not fenced: %s", bad);
    }
    assert_int_equal(hdr_mismatch, 0);
    if (last_zombie && last_zombie > t_cont + FENCE_MAX_US) {
        H.failed = true;
        fail_msg("w1 still published state of its former cells %.0f ms after SIGCONT",
                 (double)(last_zombie - t_cont) / 1000);
    }
    if (!fresh || l.ncells != 0) {
        H.failed = true;
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
    test_passed = true;
}

static int test_setup(void **state)
{
    (void)state;
    test_passed = false;
    atomic_store(&PL.stop, false);
    atomic_store(&PL.stop_sending, false);
    PL.entity = PL.sent = PL.last_seq = PL.applied = PL.max_applied = PL.last_input_seq = PL.regressions = 0;
    PL.closed = false;
    PL.errors = 0;
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    if (!test_passed) ts_h_fail_dump(&H);
    for (int i = 0; i < 2; i++)
        ts_h_signal(&H, w_idx[i], SIGCONT);
    cluster_stop();
    return 0;
}

int main(void)
{
    ts_log_init("it_recovery", TS_LOG_ERROR, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_killed_worker_cells_recovered, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_stalled_worker_is_fenced, test_setup, test_teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ts_bus_shutdown_library();
    return failed;
}
