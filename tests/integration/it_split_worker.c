/* The worker side of split and merge, end to end: real nats-server -js and
 * redis-server, tessera-worker processes, and this test in the
 * orchestrator's place: it writes split and merge decisions into the
 * registry and broadcasts one RegistryChange per changed cell (parent
 * first), as the orchestrator does, and it plays crash recovery by moving a
 * killed worker's cells to another one (epoch + 1, state kept).
 *
 * The world is two root cells, P = (0,0) and Q = (1,0), 100 units wide.
 * Entities join in P and wander (a new velocity every 100 ms) across P and
 * Q. Their inputs are published to the input stream of the cell the
 * entity's state was last seen in, as a gateway does; while P is split a
 * third of them publish to P instead (a gateway that has not seen the
 * split), and more entities join through P after it split.
 *
 * What users rely on, asserted here:
 *  - after a split every entity is in the live cell (a child of P, or Q)
 *    that contains its position and in no other; P holds none;
 *  - after the merge every entity is in P or Q; the retired children hold
 *    none;
 *  - every input JetStream acknowledged is applied exactly once: each
 *    entity's state ends with inputs_applied == inputs acknowledged for it
 *    and never showed more, including inputs published to P after it split
 *    (forwarded) and Joins published there (moved on to a child);
 *  - a worker SIGKILLed right after a split decision, or in the middle of
 *    a merge (some entities moved, some not): the worker that recovers its
 *    cells completes the split or merge, with the same guarantees. */
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
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define CELL_SIZE 100.0
#define NJOIN 30 /* entities that join before the split */
#define NLATE 6  /* entities that join through P after it split */
#define NENT (NJOIN + NLATE)
#define STALE_EVERY 3 /* while P is split, every third entity publishes to P */
#define MOVE_MS 100
#define SPEED 30.0
#define WAIT_MS 20000
#define MAX_CELLS 8

static ts_bus_t *bus;
static ts_registry_t *reg;
static ts_bus_sub_t *state_sub;
static const ts_cell_t P = {.world = WORLD, .cx = 0, .cy = 0};
static const ts_cell_t Q = {.world = WORLD, .cx = 1, .cy = 0};
static ts_cell_t kids[4];
/* while P is split, every third entity publishes to P (a stale gateway) */
static atomic_bool stale_to_p;

/* ---- what the cells' state says ------------------------------------------------ */

typedef struct {
    uint64_t applied;     /* newest inputs_applied seen */
    uint64_t max_applied; /* highest ever seen */
    ts_cell_t route;      /* where its inputs go: the cell whose state named it last */
    bool seen;
} ent_view_t;

typedef struct {
    ts_cell_t cell;
    uint64_t keyframes; /* full StateDeltas seen */
    uint64_t epoch;
    char owner[TS_WORKER_ID_MAX];
    size_t n; /* the last keyframe's entities */
    uint64_t ids[NENT + 8];
    double x[NENT + 8], y[NENT + 8];
} cell_view_t;

static struct {
    pthread_mutex_t mu;
    ent_view_t e[NENT + 1]; /* by entity id 1..NENT */
    cell_view_t cells[MAX_CELLS];
    size_t ncells;
    uint64_t left_to_p; /* EntityLeft{to = P} seen from P's children */
} SV = {.mu = PTHREAD_MUTEX_INITIALIZER};

static cell_view_t *cell_view(const ts_cell_t *c)
{
    for (size_t i = 0; i < SV.ncells; i++)
        if (ts_cell_eq(&SV.cells[i].cell, c)) return &SV.cells[i];
    if (SV.ncells == MAX_CELLS) return NULL;
    cell_view_t *v = &SV.cells[SV.ncells++];
    memset(v, 0, sizeof *v);
    v->cell = *c;
    return v;
}

static void on_state(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__StateDelta *d =
        tessera__v1__state_delta__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    ts_cell_t c;
    if (!d) return;
    if (!d->cell || ts_proto_cell_get(d->cell, &c) != TS_OK) {
        tessera__v1__state_delta__free_unpacked(d, NULL);
        return;
    }
    pthread_mutex_lock(&SV.mu);
    cell_view_t *cv = cell_view(&c);
    if (cv && d->full && d->parts <= 1) {
        cv->keyframes++;
        cv->epoch = d->epoch;
        ts_strlcpy(cv->owner, d->owner ? d->owner : "", sizeof cv->owner);
        cv->n = 0;
    }
    for (size_t i = 0; i < d->n_entities; i++) {
        const Tessera__V1__EntityState *es = d->entities[i];
        if (es->id >= 1 && es->id <= NENT) {
            ent_view_t *e = &SV.e[es->id];
            e->applied = es->inputs_applied;
            if (es->inputs_applied > e->max_applied) e->max_applied = es->inputs_applied;
            e->route = c;
            e->seen = true;
        }
        if (cv && d->full && d->parts <= 1 && cv->n < NENT + 8) {
            cv->ids[cv->n] = es->id;
            cv->x[cv->n] = es->x;
            cv->y[cv->n] = es->y;
            cv->n++;
        }
    }
    for (size_t i = 0; i < d->n_left; i++) {
        const Tessera__V1__EntityLeft *l = d->left[i];
        ts_cell_t to;
        if (!l->to || ts_proto_cell_get(l->to, &to) != TS_OK) continue;
        if (l->id >= 1 && l->id <= NENT) SV.e[l->id].route = to;
        if (ts_cell_eq(&to, &P) && c.depth == 1) SV.left_to_p++;
    }
    pthread_mutex_unlock(&SV.mu);
    tessera__v1__state_delta__free_unpacked(d, NULL);
}

static uint64_t keyframes_of(const ts_cell_t *c, char *owner, size_t cap)
{
    pthread_mutex_lock(&SV.mu);
    cell_view_t *cv = cell_view(c);
    uint64_t n = cv ? cv->keyframes : 0;
    if (owner) ts_strlcpy(owner, cv ? cv->owner : "", cap);
    pthread_mutex_unlock(&SV.mu);
    return n;
}

/* Waits until every cell of cells[] published two more keyframes (owned by
 * owner when not NULL) than when called. */
static void wait_keyframes(const ts_cell_t *cells, size_t n, const char *owner)
{
    uint64_t base[MAX_CELLS];
    for (size_t i = 0; i < n; i++)
        base[i] = keyframes_of(&cells[i], NULL, 0);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        size_t done = 0;
        char who[TS_WORKER_ID_MAX], key[TS_CELL_STR_MAX] = "-";
        for (size_t i = 0; i < n; i++) {
            uint64_t k = keyframes_of(&cells[i], who, sizeof who);
            if (k >= base[i] + 2 && (!owner || strcmp(who, owner) == 0))
                done++;
            else
                ts_cell_format(&cells[i], key, sizeof key);
        }
        if (done == n) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("cell %s published no fresh keyframes%s%s within %d s", key, owner ? " as " : "",
                     owner ? owner : "", WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
}

/* ---- the registry, written as the orchestrator does -------------------------- */

static void announce(const ts_cell_entry_t *e, uint64_t version)
{
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, &e->cell);
    Tessera__V1__RegistryChange rc = TESSERA__V1__REGISTRY_CHANGE__INIT;
    rc.world = e->cell.world;
    rc.version = version;
    rc.cell = &cell_pb;
    rc.owner = (char *)e->owner;
    rc.epoch = e->epoch;
    rc.state = (Tessera__V1__CellState)e->state;
    uint8_t *buf = NULL;
    size_t len = 0;
    char subject[TS_SUBJECT_MAX];
    ts_subject_registry(subject, sizeof subject, e->cell.world);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_REGISTRY_CHANGE, .epoch = e->epoch, .seq = version};
    assert_int_equal(ts_proto_pack(&rc.base, &buf, &len), TS_OK);
    assert_int_equal(ts_bus_publish(bus, subject, &hdr, buf, len), TS_OK);
    free(buf);
}

static ts_cell_entry_t get_entry(const ts_cell_t *c)
{
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, c, &e), TS_OK);
    return e;
}

/* Sets owner and state of c (epoch + 1) and broadcasts it. */
static ts_cell_entry_t set_cell(const ts_cell_t *c, const char *owner, ts_cell_state_t state)
{
    ts_cell_entry_t cur = get_entry(c), out;
    uint64_t version = 0;
    assert_int_equal(ts_registry_cell_cas(reg, c, cur.epoch, owner, state, &out, &version), TS_OK);
    announce(&out, version);
    return out;
}

static void create_cell(const ts_cell_t *c, const char *owner)
{
    ts_cell_entry_t want = {.cell = *c, .state = TS_CELL_ACTIVE}, out;
    ts_strlcpy(want.owner, owner, sizeof want.owner);
    uint64_t version = 0;
    ts_status_t st = ts_registry_cell_create(reg, &want, &out, &version);
    if (st == TS_ERR_EXISTS) {
        set_cell(c, owner, TS_CELL_ACTIVE); /* a child retired by an earlier merge */
        return;
    }
    assert_int_equal(st, TS_OK);
    announce(&out, version);
}

/* The split of P owned by owner: P split first, then its children active. */
static void split_p(const char *owner)
{
    set_cell(&P, owner, TS_CELL_SPLIT);
    for (int q = 0; q < 4; q++)
        create_cell(&kids[q], owner);
    atomic_store(&stale_to_p, true);
}

/* The merge of P: P active first, then its children retired. */
static void merge_p(const char *owner)
{
    atomic_store(&stale_to_p, false);
    set_cell(&P, owner, TS_CELL_ACTIVE);
    for (int q = 0; q < 4; q++)
        set_cell(&kids[q], owner, TS_CELL_RETIRED);
}

/* Crash recovery: every cell `from` owned goes to `to`, state kept. */
static void recover(const char *from, const char *to)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
    for (size_t i = 0; i < n; i++)
        if (strcmp(cells[i].owner, from) == 0) set_cell(&cells[i].cell, to, cells[i].state);
    free(cells);
}

/* ---- entities and their inputs ---------------------------------------------------- */

static struct {
    pthread_t thread;
    bool running;
    atomic_bool stop;
    atomic_int joined; /* entities 1..joined play */
    pthread_mutex_t mu;
    uint64_t acked[NENT + 1]; /* inputs acknowledged per entity (its Join included) */
    uint64_t seq[NENT + 1];
    uint64_t batch;
    int failures;
    char failure[TS_SUBJECT_MAX + 96];
} DR = {.mu = PTHREAD_MUTEX_INITIALIZER};

static ts_rng_t rng;

/* Publishes one InputBatch to cell's input stream, waiting for JetStream's
 * acknowledgement (retried under the same message id). */
static bool publish_batch(const ts_cell_t *cell, Tessera__V1__Input **inputs, size_t n)
{
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, cell);
    Tessera__V1__InputBatch ib = TESSERA__V1__INPUT_BATCH__INIT;
    ib.cell = &cell_pb;
    ib.inputs = inputs;
    ib.n_inputs = n;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_proto_pack(&ib.base, &buf, &len) != TS_OK) return false;
    char subj[TS_SUBJECT_MAX], msg_id[64];
    ts_subject_input(subj, sizeof subj, cell, TS_ORIGIN_WORKER);
    snprintf(msg_id, sizeof msg_id, "it-split-%" PRIu64, ++DR.batch);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .seq = DR.batch, .count = (uint32_t)n, .msg_id = msg_id};
    ts_status_t st = TS_ERR_TIMEOUT;
    for (int attempt = 0; attempt < 10 && st != TS_OK; attempt++)
        st = ts_bus_js_publish(bus, subj, &hdr, buf, len, 2000, NULL);
    free(buf);
    if (st != TS_OK) {
        pthread_mutex_lock(&DR.mu);
        if (DR.failures++ == 0)
            snprintf(DR.failure, sizeof DR.failure, "publish to %s: %s", subj, ts_status_str(st));
        pthread_mutex_unlock(&DR.mu);
    }
    return st == TS_OK;
}

/* Entities first..last join at random positions in P, through P. */
static void join(int first, int last)
{
    Tessera__V1__Input in[NENT], *ip[NENT];
    Tessera__V1__JoinInput jn[NENT];
    size_t n = 0;
    for (int id = first; id <= last; id++, n++) {
        tessera__v1__input__init(&in[n]);
        tessera__v1__join_input__init(&jn[n]);
        jn[n].x = 5 + 90 * ts_rng_unit(&rng);
        jn[n].y = 5 + 90 * ts_rng_unit(&rng);
        jn[n].name = (char *)"it-split";
        in[n].entity = (uint64_t)id;
        in[n].seq = 1;
        in[n].sent_us = ts_now_us();
        in[n].kind_case = TESSERA__V1__INPUT__KIND_JOIN;
        in[n].join = &jn[n];
        ip[n] = &in[n];
    }
    assert_true(publish_batch(&P, ip, n));
    pthread_mutex_lock(&DR.mu);
    for (int id = first; id <= last; id++) {
        DR.acked[id] = 1;
        DR.seq[id] = 1;
    }
    pthread_mutex_unlock(&DR.mu);
    atomic_store(&DR.joined, last);
}

/* One Move per playing entity, grouped by destination cell. still: a
 * velocity of zero. */
static void move_all(bool still)
{
    int joined = atomic_load(&DR.joined);
    ts_cell_t dest[MAX_CELLS];
    size_t ndest = 0;
    static Tessera__V1__Input in[NENT];
    static Tessera__V1__MoveInput mv[NENT];
    Tessera__V1__Input *by[MAX_CELLS][NENT];
    size_t nby[MAX_CELLS] = {0};
    int ids[MAX_CELLS][NENT];
    for (int id = 1; id <= joined; id++) {
        ts_cell_t to = P;
        pthread_mutex_lock(&SV.mu);
        if (!(atomic_load(&stale_to_p) && id % STALE_EVERY == 0) && SV.e[id].seen) to = SV.e[id].route;
        pthread_mutex_unlock(&SV.mu);
        size_t d = 0;
        while (d < ndest && !ts_cell_eq(&dest[d], &to))
            d++;
        if (d == ndest) {
            if (ndest == MAX_CELLS) continue;
            dest[ndest++] = to;
        }
        Tessera__V1__Input *x = &in[id - 1];
        tessera__v1__input__init(x);
        tessera__v1__move_input__init(&mv[id - 1]);
        double a = 2 * M_PI * ts_rng_unit(&rng);
        mv[id - 1].dx = still ? 0 : SPEED * cos(a);
        mv[id - 1].dy = still ? 0 : SPEED * sin(a);
        x->entity = (uint64_t)id;
        pthread_mutex_lock(&DR.mu);
        x->seq = DR.seq[id] + 1;
        pthread_mutex_unlock(&DR.mu);
        x->sent_us = ts_now_us();
        x->kind_case = TESSERA__V1__INPUT__KIND_MOVE;
        x->move = &mv[id - 1];
        ids[d][nby[d]] = id;
        by[d][nby[d]++] = x;
    }
    for (size_t d = 0; d < ndest; d++) {
        if (!publish_batch(&dest[d], by[d], nby[d])) continue;
        pthread_mutex_lock(&DR.mu);
        for (size_t k = 0; k < nby[d]; k++) {
            DR.acked[ids[d][k]]++;
            DR.seq[ids[d][k]]++;
        }
        pthread_mutex_unlock(&DR.mu);
    }
}

static void *driver_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&DR.stop)) {
        move_all(false);
        ts_sleep_ms(MOVE_MS);
    }
    return NULL;
}

static void driver_start(void)
{
    atomic_store(&DR.stop, false);
    assert_int_equal(pthread_create(&DR.thread, NULL, driver_main, NULL), 0);
    DR.running = true;
}

static void driver_stop(void)
{
    if (!DR.running) return;
    atomic_store(&DR.stop, true);
    pthread_join(DR.thread, NULL);
    DR.running = false;
}

/* Waits until every playing entity applied `more` inputs beyond what it
 * had (the world is moving and inputs flow). */
static void wait_progress(uint64_t more)
{
    int joined = atomic_load(&DR.joined);
    uint64_t base[NENT + 1];
    pthread_mutex_lock(&SV.mu);
    for (int id = 1; id <= joined; id++)
        base[id] = SV.e[id].applied;
    pthread_mutex_unlock(&SV.mu);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        int behind = 0;
        pthread_mutex_lock(&SV.mu);
        for (int id = 1; id <= joined; id++)
            if (SV.e[id].applied < base[id] + more) behind = id;
        pthread_mutex_unlock(&SV.mu);
        if (!behind) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("entity %d applied fewer than %" PRIu64 " more inputs in %d s", behind, more,
                     WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
}

/* Waits until a child of P announced that an entity went back to P. */
static void wait_left_to_p(void)
{
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        pthread_mutex_lock(&SV.mu);
        uint64_t n = SV.left_to_p;
        pthread_mutex_unlock(&SV.mu);
        if (n > 0) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("no child of P announced an entity back in P within %d s of the merge", WAIT_MS / 1000);
        }
        ts_sleep_ms(1);
    }
}

/* Every acknowledged input applied exactly once: each entity's state shows
 * as many inputs as were acknowledged for it, and never showed more. */
static void check_exactly_once(const char *when)
{
    int joined = atomic_load(&DR.joined);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        int short_id = 0, double_id = 0;
        uint64_t got = 0, want = 0;
        pthread_mutex_lock(&DR.mu);
        pthread_mutex_lock(&SV.mu);
        for (int id = 1; id <= joined; id++) {
            if (SV.e[id].max_applied > DR.acked[id]) {
                double_id = id;
                got = SV.e[id].max_applied;
                want = DR.acked[id];
            } else if (SV.e[id].applied != DR.acked[id] && !double_id) {
                short_id = id;
                got = SV.e[id].applied;
                want = DR.acked[id];
            }
        }
        pthread_mutex_unlock(&SV.mu);
        pthread_mutex_unlock(&DR.mu);
        if (double_id) {
            ts_h.failed = true;
            fail_msg("%s: entity %d shows %" PRIu64 " inputs applied, only %" PRIu64 " were sent", when,
                     double_id, got, want);
        }
        if (!short_id) return;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: entity %d shows %" PRIu64 " inputs applied of %" PRIu64 " acknowledged after %d s",
                     when, short_id, got, want, WAIT_MS / 1000);
        }
        ts_sleep_ms(20);
    }
}

/* Whether the latest keyframes of `live` and `dead` show each playing
 * entity in exactly one live cell, the one containing its position, and
 * none in a dead cell; if not, why. */
static bool placement_ok(const ts_cell_t *live, size_t nlive, const ts_cell_t *dead, size_t ndead, char *why,
                         size_t cap)
{
    int joined = atomic_load(&DR.joined);
    int where[NENT + 1] = {0};
    char key[TS_CELL_STR_MAX];
    bool ok = true;
    pthread_mutex_lock(&SV.mu);
    for (size_t i = 0; i < ndead && ok; i++) {
        const cell_view_t *cv = cell_view(&dead[i]);
        if (cv && cv->n > 0) {
            ts_cell_format(&dead[i], key, sizeof key);
            snprintf(why, cap, "cell %s (no longer live) still holds %zu entities, e.g. %" PRIu64, key, cv->n,
                     cv->ids[0]);
            ok = false;
        }
    }
    for (size_t i = 0; i < nlive && ok; i++) {
        const cell_view_t *cv = cell_view(&live[i]);
        for (size_t k = 0; cv && k < cv->n && ok; k++) {
            uint64_t id = cv->ids[k];
            bool inside = ts_cell_has_pos(&live[i], CELL_SIZE, cv->x[k], cv->y[k]);
            if (id < 1 || id > (uint64_t)joined || where[id] || !inside) {
                ts_cell_format(&live[i], key, sizeof key);
                snprintf(why, cap, "entity %" PRIu64 " in cell %s at (%.2f, %.2f): %s", id, key, cv->x[k],
                         cv->y[k], !inside ? "outside the cell" : "listed twice or unknown");
                ok = false;
            } else {
                where[id] = (int)i + 1;
            }
        }
    }
    pthread_mutex_unlock(&SV.mu);
    for (int id = 1; id <= joined && ok; id++)
        if (!where[id]) {
            snprintf(why, cap, "entity %d is in no live cell", id);
            ok = false;
        }
    return ok;
}

/* Once everyone stopped: until fresh keyframes of every cell of `live` and
 * `dead` say each playing entity is in exactly one live cell, the one
 * containing its position, and no dead cell holds any (keyframes from
 * before the last crossings settled may say otherwise for a moment). */
static void check_placement(const char *when, const ts_cell_t *live, size_t nlive, const ts_cell_t *dead,
                            size_t ndead)
{
    ts_cell_t all[MAX_CELLS];
    for (size_t i = 0; i < nlive; i++)
        all[i] = live[i];
    for (size_t i = 0; i < ndead; i++)
        all[nlive + i] = dead[i];
    char why[256] = "";
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    do {
        wait_keyframes(all, nlive + ndead, NULL);
        if (placement_ok(live, nlive, dead, ndead, why, sizeof why)) return;
    } while (ts_mono_us() < deadline);
    ts_h.failed = true;
    fail_msg("%s: after %d s: %s", when, WAIT_MS / 1000, why);
}

/* The worker log line of a finished split or merge: "... done: N entities
 * moved to ... in X ms (tick boundary work Y ms)". Prints it; returns the
 * number of such lines. */
static int report_done(int proc, const char *what)
{
    char *log = ts_h_read_log(&ts_h, proc);
    int n = 0;
    char pat[32];
    snprintf(pat, sizeof pat, "%s done", what);
    for (char *p = log ? strstr(log, pat) : NULL; p; p = strstr(p + 1, pat)) {
        char *eol = strchr(p, '\n');
        fprintf(stderr, "it_split_worker: %s: %.*s\n", ts_h.procs[proc].name,
                eol ? (int)(eol - p) : (int)strlen(p), p);
        n++;
    }
    free(log);
    return n;
}

/* ---- set-up ----------------------------------------------------------------------- */

/* http_port > 0: the worker serves /metrics there. */
static int spawn_worker(const char *id, int http_port)
{
    char idarg[64], http[64];
    snprintf(idarg, sizeof idarg, "--worker.id=%s", id);
    snprintf(http, sizeof http, "--worker.http_listen=127.0.0.1:%d", http_port);
    const char *args[] = {idarg, "--worker.checkpoint_ms=500", http_port > 0 ? http : NULL, NULL};
    return ts_h_spawn(&ts_h, id, "tessera-worker", args);
}

/* Waits until the worker's /metrics has the line `series value` (the
 * totals are copied at heartbeat cadence); prints the split and merge
 * series. */
static void wait_metric(int port, const char *series, const char *value)
{
    static char body[1 << 17];
    char line[256];
    snprintf(line, sizeof line, "\n%s %s\n", series, value);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    while (ts_h_http_get(port, "/metrics", body, sizeof body) != 200 || !strstr(body, line)) {
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("/metrics never said %s %s", series, value);
        }
        ts_sleep_ms(50);
    }
    for (char *p = body; p && *p;) {
        char *eol = strchr(p, '\n');
        int len = eol ? (int)(eol - p) : (int)strlen(p);
        char one[256];
        snprintf(one, sizeof one, "%.*s", len, p);
        bool ours = strncmp(one, "tessera_worker_split", 20) == 0 ||
                    strncmp(one, "tessera_worker_cells_merged", 27) == 0;
        if (ours && !strstr(one, "_bucket")) fprintf(stderr, "it_split_worker: %s\n", one);
        p = eol ? eol + 1 : NULL;
    }
}

static void start_world(const char *owner)
{
    ts_h_start(&ts_h);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it-split-worker"), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    ts_world_t w = {.id = WORLD, .cell_size = CELL_SIZE, .x0 = 0, .y0 = 0, .width = 2, .height = 1};
    assert_int_equal(ts_registry_world_set(reg, &w), TS_OK);
    assert_int_equal(ts_bus_subscribe(bus, "cell.0.*.*.*.*.state", on_state, NULL, &state_sub), TS_OK);
    assert_int_equal(ts_cell_children(&P, kids), TS_OK);
    create_cell(&P, owner);
    create_cell(&Q, owner);
    ts_rng_seed(&rng, 7);
    memset(SV.e, 0, sizeof SV.e);
    SV.ncells = 0;
    SV.left_to_p = 0;
    memset(DR.acked, 0, sizeof DR.acked);
    memset(DR.seq, 0, sizeof DR.seq);
    atomic_store(&DR.joined, 0);
    atomic_store(&stale_to_p, false);
    DR.failures = 0;
}

static void stop_world(void)
{
    driver_stop();
    ts_bus_sub_destroy(state_sub);
    state_sub = NULL;
    ts_bus_destroy(bus);
    bus = NULL;
    ts_registry_destroy(reg);
    reg = NULL;
}

static void check_driver(void)
{
    if (DR.failures) {
        ts_h.failed = true;
        fail_msg("%d input batches were never acknowledged: %s", DR.failures, DR.failure);
    }
}

/* Joins NJOIN entities and lets them wander until each applied a few inputs. */
static void populate(const char *owner)
{
    const ts_cell_t roots[2] = {P, Q};
    wait_keyframes(roots, 2, owner);
    join(1, NJOIN);
    driver_start();
    wait_progress(5);
}

/* After the split: NLATE more entities join through P (a gateway that has
 * not seen the split), and everyone plays on a while. */
static void late_joins(void)
{
    join(NJOIN + 1, NENT);
    wait_progress(5);
}

/* Everyone stops; then every input is applied exactly once and every
 * entity is where it belongs. Stopping takes two rounds of still Moves: a
 * Move forwarded from a cell the entity left may be applied after a newer
 * one sent straight to its new cell (each once, the older last), so the
 * second round goes out only once everything sent before it was applied. */
static void settle(const char *when, const ts_cell_t *live, size_t nlive, const ts_cell_t *dead, size_t ndead)
{
    driver_stop();
    move_all(true);
    check_exactly_once(when);
    move_all(true);
    check_driver();
    check_exactly_once(when);
    check_placement(when, live, nlive, dead, ndead);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_split_then_merge(void **state)
{
    (void)state;
    start_world("w1");
    int http = ts_h_free_port();
    int w1 = spawn_worker("w1", http);
    populate("w1");

    split_p("w1");
    late_joins();
    const ts_cell_t split_live[5] = {kids[0], kids[1], kids[2], kids[3], Q};
    settle("after the split", split_live, 5, &P, 1);
    assert_int_equal(report_done(w1, "split"), 1);
    wait_metric(http, "tessera_worker_splits_total{worker=\"w1\"}", "1");

    driver_start();
    wait_progress(5);
    merge_p("w1");
    wait_progress(5);
    const ts_cell_t merge_live[2] = {P, Q};
    settle("after the merge", merge_live, 2, kids, 4);
    assert_int_equal(report_done(w1, "merge"), 4);
    wait_metric(http, "tessera_worker_cells_merged_total{worker=\"w1\"}", "4");
    stop_world();
    ts_h_pass();
}

static void test_split_and_merge_survive_sigkill(void **state)
{
    (void)state;
    start_world("w1");
    int w1 = spawn_worker("w1", 0);
    int w2 = spawn_worker("w2", 0);
    int w3 = spawn_worker("w3", 0);
    populate("w1");

    /* the owner dies the moment the split is decided */
    split_p("w1");
    ts_h_signal(&ts_h, w1, SIGKILL);
    ts_h_wait(&ts_h, w1, 5000);
    recover("w1", "w2");
    late_joins();
    const ts_cell_t split_live[5] = {kids[0], kids[1], kids[2], kids[3], Q};
    settle("after a split whose owner was killed", split_live, 5, &P, 1);
    report_done(w2, "split");

    driver_start();
    wait_progress(5);
    /* and the next owner dies in the middle of the merge: some entities
     * are back in P (their Transfers stored), others not yet */
    merge_p("w2");
    wait_left_to_p();
    ts_h_signal(&ts_h, w2, SIGKILL);
    ts_h_wait(&ts_h, w2, 5000);
    recover("w2", "w3");
    wait_progress(5);
    const ts_cell_t merge_live[2] = {P, Q};
    settle("after a merge whose owner was killed", merge_live, 2, kids, 4);
    report_done(w3, "merge");
    stop_world();
    ts_h_pass();
}

static int teardown(void **state)
{
    stop_world();
    return ts_h_test_stop(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_split_then_merge, ts_h_test_setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_and_merge_survive_sigkill, ts_h_test_setup, teardown),
    };
    return TS_H_RUN("it_split_worker", tests, NULL, NULL);
}
