/* Integration: the secured stack (scripts/gen-secrets.sh users on
 * nats-server and redis-server, ts_h_start_secure).
 *  - The whole stack runs with its own users: a player joins through the
 *    gateway and sees each of its inputs applied exactly once.
 *  - Forged traffic is refused by the servers: an anonymous client cannot
 *    connect at all; the gateway, sim and inspector users each try to publish
 *    a forged state, handover, ctl request, registry broadcast and heartbeat
 *    (and the inspector an input) and get a permission violation for every
 *    one; the worker and orch users cannot delete or purge a stream; no subscriber ever sees a forged
 * message, and the registry (version, every cell's owner and epoch) is unchanged.
 *  - A gateway's credentials act only for that gateway's players: gateway-1
 *    cannot publish under gateway 2's origin token (the server refuses it);
 *    what it publishes under its own (a Move, Command, Detach, Leave, Attach,
 *    Joins naming gateway 2, a Transfer and a Request for gateway 2's player)
 *    changes nothing and is counted in
 *    tessera_worker_inputs_refused_total{reason}; the player's next inputs
 *    are all applied.
 *  - Redis ACLs: anonymous commands and wrong passwords are refused; the
 *    gateway user only reads; the worker user cannot change a cell, the world
 *    or the leader lock, but can manage worker liveness keys.
 * `it_auth --ws`: the same with every player on WebSocket. */
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "tessera/bus.h"
#include "tessera/client.h"
#include "tessera/frame.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/resume.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define FORGED "forged-by-it_auth"
#define WAIT_MS 5000
/* gateway.resume_secret of every gateway and worker of the stack */
#define RESUME_SECRET "it-auth-resume-secret"

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static int worker_http[2]; /* the workers' /metrics ports */

/* ---- registry snapshot ---------------------------------------------------- */

typedef struct {
    uint64_t version;
    ts_cell_entry_t *cells;
    size_t n;
} world_snap_t;

static void snap_world(world_snap_t *s)
{
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    assert_int_equal(ts_registry_version(reg, WORLD, &s->version), TS_OK);
    assert_int_equal(ts_registry_cells(reg, WORLD, &s->cells, &s->n), TS_OK);
    ts_registry_destroy(reg);
}

static int cmp_entry(const void *a, const void *b)
{
    const ts_cell_entry_t *x = a, *y = b;
    if (x->cell.cx != y->cell.cx) return x->cell.cx < y->cell.cx ? -1 : 1;
    if (x->cell.cy != y->cell.cy) return x->cell.cy < y->cell.cy ? -1 : 1;
    return 0;
}

/* The world has not changed between a and b. */
static void assert_same_world(world_snap_t *a, world_snap_t *b)
{
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->n, b->n);
    qsort(a->cells, a->n, sizeof *a->cells, cmp_entry);
    qsort(b->cells, b->n, sizeof *b->cells, cmp_entry);
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(cmp_entry(&a->cells[i], &b->cells[i]), 0);
        assert_int_equal(a->cells[i].epoch, b->cells[i].epoch);
        assert_string_equal(a->cells[i].owner, b->cells[i].owner);
        assert_int_equal(a->cells[i].state, b->cells[i].state);
    }
    free(a->cells);
    free(b->cells);
}

/* ---- a forging client (nats.c directly, to see the server's errors) -------- */

#define MAX_ERRORS 32

typedef struct {
    natsConnection *nc;
    pthread_mutex_t mu;
    int nerrors;
    char errors[MAX_ERRORS][256]; /* the server's -ERR texts */
} forger_t;

static void on_forger_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)sub;
    forger_t *f = closure;
    const char *text = NULL;
    natsConnection_GetLastError(nc, &text);
    pthread_mutex_lock(&f->mu);
    if (f->nerrors < MAX_ERRORS)
        snprintf(f->errors[f->nerrors++], sizeof f->errors[0], "%s: %s", natsStatus_GetText(err),
                 text ? text : "");
    pthread_mutex_unlock(&f->mu);
}

/* Connects as user; the connect status comes back (the forger is usable on
 * NATS_OK only). */
static natsStatus forger_connect(forger_t *f, const char *user)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    char url[256];
    ts_h_nats_url_as(&ts_h, user, url, sizeof url);
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK) s = natsOptions_SetURL(o, url);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(o, on_forger_error, f);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(o, 0);
    if (s == NATS_OK) s = natsConnection_Connect(&f->nc, o);
    natsOptions_Destroy(o);
    return s;
}

static void forger_close(forger_t *f)
{
    natsConnection_Destroy(f->nc);
    pthread_mutex_destroy(&f->mu);
}

/* Publishes a forged message on subject (with a reply subject when reply is
 * set, as a request would) and waits until the server reported a publish
 * permission violation naming subject. */
static void forge_refused(forger_t *f, const char *subject, bool reply)
{
    natsStatus s = reply
                       ? natsConnection_PublishRequestString(f->nc, subject, "_INBOX.it_auth.forger", FORGED)
                       : natsConnection_PublishString(f->nc, subject, FORGED);
    assert_int_equal(s, NATS_OK); /* sent; the server answers with -ERR */
    natsConnection_FlushTimeout(f->nc, WAIT_MS);
    char want[200];
    snprintf(want, sizeof want, "Permissions Violation for Publish to \"%s\"", subject);
    bool seen = false;
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ull;
    while (!seen && ts_mono_us() < deadline) {
        pthread_mutex_lock(&f->mu);
        for (int i = 0; i < f->nerrors && !seen; i++)
            seen = strstr(f->errors[i], want) != NULL;
        pthread_mutex_unlock(&f->mu);
        if (!seen) ts_sleep_ms(10);
    }
    if (!seen) fail_msg("no permission violation for a publish to %s", subject);
}

/* ---- observer: counts forged messages anywhere ------------------------------ */

static _Atomic int forged_seen;
static _Atomic int heartbeats_seen;

static void on_observed(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    size_t len = ts_bus_msg_len(m);
    if (len == strlen(FORGED) && memcmp(ts_bus_msg_data(m), FORGED, len) == 0) forged_seen++;
    if (strncmp(ts_bus_msg_subject(m), "tessera.worker.", 15) == 0) heartbeats_seen++;
}

/* ---- tests ---------------------------------------------------------------------- */

/* A player joins at (x, y) through the gateway and moves three times;
 * returns how many of its inputs its own entity shows applied once they
 * stop changing (4 when all went through exactly once). */
static uint64_t play(double x, double y)
{
    ts_client_t *c = NULL;
    assert_int_equal(ts_h_client_connect(&c, stack.gw_port, 3000), TS_OK);
    assert_int_equal(ts_client_join(c, x, y, "secured"), TS_OK);
    /* the join is the first input, then three moves: four applied, once each */
    uint64_t entity = 0, applied = 0, settled_us = 0;
    uint64_t deadline = ts_mono_us() + 10000 * 1000ull;
    int moves = 0;
    while (ts_mono_us() < deadline && (applied < 4 || ts_mono_us() < settled_us)) {
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(c, 100, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        assert_int_equal(st, TS_OK);
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
            entity = f->snapshot->entity;
            for (; moves < 3; moves++)
                assert_int_equal(ts_client_move(c, 1, 0), TS_OK);
        } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA) {
            for (size_t i = 0; i < f->delta->n_entities; i++) {
                if (f->delta->entities[i]->id == entity) applied = f->delta->entities[i]->inputs_applied;
            }
            if (applied >= 4 && settled_us == 0)
                settled_us = ts_mono_us() + 1000 * 1000ull; /* no late doubles */
        } else {
            assert_int_not_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR);
        }
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    ts_client_destroy(c);
    assert_true(entity != 0);
    return applied;
}

static void test_stack_runs_secured(void **state)
{
    (void)state;
    assert_int_equal(play(20, 20), 4);

    /* the workers' tick marks are stored under their users' permissions */
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_auth-marks"), TS_OK);
    char stream[64];
    ts_bus_marks_stream(stream, sizeof stream, 0);
    ts_bus_stream_state_t ss = {0};
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ull;
    while ((ts_bus_stream_state(bus, stream, &ss) != TS_OK || ss.msgs == 0) && ts_mono_us() < deadline)
        ts_sleep_ms(50);
    ts_bus_destroy(bus);
    if (ss.msgs == 0) fail_msg("no tick mark stored in %s", stream);

    /* tessera-ctl reads the registry and asks the orchestrator as user ctl */
    const char *args[] = {"cells", NULL};
    int ctl = ts_h_spawn(&ts_h, "ctl-cells", "tessera-ctl", args);
    assert_int_equal(ts_h_wait(&ts_h, ctl, 15000), 0);
    ts_h_pass();
}

static void test_forged_nats_traffic_refused(void **state)
{
    (void)state;
    world_snap_t before, after;
    snap_world(&before);

    ts_bus_t *observer = NULL;
    ts_bus_sub_t *subs[3] = {NULL};
    assert_int_equal(ts_bus_connect(&observer, ts_h.nats_url, "it_auth-observer"), TS_OK);
    assert_int_equal(ts_bus_subscribe(observer, "cell.>", on_observed, NULL, &subs[0]), TS_OK);
    assert_int_equal(ts_bus_subscribe(observer, "tessera.>", on_observed, NULL, &subs[1]), TS_OK);
    assert_int_equal(ts_bus_subscribe(observer, "_INBOX.>", on_observed, NULL, &subs[2]), TS_OK);
    assert_int_equal(ts_bus_flush(observer, WAIT_MS), TS_OK);

    /* anonymous, and a known user with a wrong password: no connection */
    forger_t f;
    natsStatus s = forger_connect(&f, NULL);
    assert_int_not_equal(s, NATS_OK);
    assert_non_null(strstr(nats_GetLastError(NULL), "Authorization Violation"));
    forger_close(&f);
    ts_bus_t *anon = NULL;
    assert_int_equal(ts_bus_connect(&anon, ts_h.nats_plain_url, "it_auth-anon"), TS_ERR_UNAVAILABLE);
    char url[256];
    snprintf(url, sizeof url, "nats://gateway-1:wrong@127.0.0.1:%d", ts_h.nats_port);
    assert_int_equal(ts_bus_connect(&anon, url, "it_auth-wrong"), TS_ERR_UNAVAILABLE);

    static const char *const always_refused[] = {
        "cell.0.0.0.0.0.state",      /* a state delta: gateways would show it */
        "cell.0.0.0.0.0.handover",   /* FREEZE / COMMIT to a worker */
        "cell.0.0.0.0.0.checkpoint", /* a checkpoint a recovering worker loads */
        "tessera.registry.0",        /* an ownership broadcast */
        "tessera.worker.w1.hb",      /* a worker's heartbeat */
        "$JS.API.STREAM.DELETE.TS_INPUT_0",
    };
    static const char *const users[] = {"gateway-1", "sim", "inspector"};
    for (size_t u = 0; u < sizeof users / sizeof users[0]; u++) {
        assert_int_equal(forger_connect(&f, users[u]), NATS_OK);
        for (size_t i = 0; i < sizeof always_refused / sizeof always_refused[0]; i++)
            forge_refused(&f, always_refused[i], false);
        /* a ctl request only the orchestrator serves */
        forge_refused(&f, "tessera.ctl.0.handover", true);
        forge_refused(&f, "tessera.ctl.0.drain", true);
        /* the inspector may not even publish input */
        if (strcmp(users[u], "inspector") == 0) forge_refused(&f, "cell.0.0.0.0.0.input.g1", false);
        /* inputs only under its own origin token: not a worker's (transfers), not another's */
        if (strcmp(users[u], "inspector") != 0) {
            forge_refused(&f, "cell.0.0.0.0.0.input.w", false);
            forge_refused(&f, "cell.0.0.0.0.0.input.g2", false);
            forge_refused(&f, "cell.0.0.0.0.0.input", false);
            forge_refused(&f,
                          strcmp(users[u], "sim") == 0 ? "cell.0.0.0.0.0.input.g1" : "cell.0.0.0.0.0.input.s",
                          false);
        }
        /* still connected: a violation does not cost the connection */
        assert_true(natsConnection_Status(f.nc) == NATS_CONN_STATUS_CONNECTED);
        forger_close(&f);
    }

    /* workers and the orchestrator manage streams but never destroy them */
    static const char *const service_users[] = {"worker", "orch"};
    for (size_t u = 0; u < sizeof service_users / sizeof service_users[0]; u++) {
        assert_int_equal(forger_connect(&f, service_users[u]), NATS_OK);
        forge_refused(&f, "$JS.API.STREAM.DELETE.TS_INPUT_0", true);
        forge_refused(&f, "$JS.API.STREAM.PURGE.TS_INPUT_0", true);
        forge_refused(&f, "$JS.API.STREAM.MSG.DELETE.TS_CKPT_0", true);
        forger_close(&f);
    }
    /* a worker with its own user cannot speak for another worker */
    assert_int_equal(forger_connect(&f, "worker-w1"), NATS_OK);
    forge_refused(&f, "tessera.worker.w2.hb", false);
    forge_refused(&f, "tessera.worker.w2.marks.0.forged", false);
    forger_close(&f);

    /* every forged message was dropped by the server: the observer, which
     * sees everything, got none, while real traffic (heartbeats) flowed */
    assert_int_equal(ts_bus_flush(observer, WAIT_MS), TS_OK);
    int hb = heartbeats_seen;
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ull;
    while (heartbeats_seen < hb + 4 && ts_mono_us() < deadline)
        ts_sleep_ms(20);
    assert_true(heartbeats_seen >= hb + 4);
    assert_int_equal(forged_seen, 0);
    for (int i = 0; i < 3; i++)
        ts_bus_sub_destroy(subs[i]);
    ts_bus_destroy(observer);

    snap_world(&after);
    assert_same_world(&before, &after);
    /* the services never lost their own connections */
    for (int i = 0; i < 2; i++)
        assert_int_equal(ts_h_wait(&ts_h, stack.workers[i], 0), -1);
    assert_int_equal(ts_h_wait(&ts_h, stack.orch, 0), -1);
    assert_int_equal(ts_h_wait(&ts_h, stack.gateway, 0), -1);
    ts_h_pass();
}

/* ---- a gateway acts only for its own players ---------------------------------- */

/* tessera_worker_inputs_refused_total{reason} summed over both workers. */
static uint64_t refused_total(const char *reason)
{
    static char body[1 << 18];
    char want[128];
    snprintf(want, sizeof want, "reason=\"%s\"} ", reason);
    uint64_t sum = 0;
    for (int i = 0; i < 2; i++) {
        if (ts_h_http_get(worker_http[i], "/metrics", body, sizeof body) != 200) continue;
        for (const char *p = body; (p = strstr(p, "tessera_worker_inputs_refused_total{")) != NULL; p++) {
            const char *eol = strchr(p, '\n');
            const char *r = strstr(p, want);
            if (r != NULL && (eol == NULL || r < eol)) sum += strtoull(r + strlen(want), NULL, 10);
        }
    }
    return sum;
}

/* Waits until refused_total(reason) is want (false if it is not within ms). */
static bool refused_reaches(const char *reason, uint64_t want, int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000u;
    uint64_t got = refused_total(reason);
    while (got < want && ts_mono_us() < deadline) {
        ts_sleep_ms(100);
        got = refused_total(reason);
    }
    if (got != want)
        fprintf(stderr, "refused{reason=%s}: %llu, want %llu\n", reason, (unsigned long long)got,
                (unsigned long long)want);
    return got == want;
}

/* Reads frames for ms: fails if one shows entity with another position or
 * another count of applied inputs than (x, y, applied). */
static void assert_unchanged(ts_client_t *c, uint64_t entity, double x, double y, uint64_t applied,
                             int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000u;
    while (ts_mono_us() < deadline) {
        Tessera__V1__ServerFrame *f = NULL;
        if (ts_client_recv(c, 50, &f) != TS_OK) continue;
        const Tessera__V1__EntityState *const *ents = NULL;
        size_t n = 0;
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA) {
            ents = (const Tessera__V1__EntityState *const *)f->delta->entities;
            n = f->delta->n_entities;
            for (size_t i = 0; i < f->delta->n_removed; i++)
                if (f->delta->removed[i] == entity) fail_msg("the player's entity was removed");
        } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
            ents = (const Tessera__V1__EntityState *const *)f->snapshot->entities;
            n = f->snapshot->n_entities;
        }
        assert_int_not_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR);
        for (size_t i = 0; i < n; i++) {
            if (ents[i]->id != entity) continue;
            assert_true(ents[i]->x == x && ents[i]->y == y);
            assert_int_equal(ents[i]->inputs_applied, applied);
        }
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
}

/* Publishes (stored by JetStream) an InputBatch of inputs and transfers
 * into cell as the NATS user gateway-1, under its own origin g1. */
static void forge_batch(const ts_cell_t *cell, Tessera__V1__Input *inputs, size_t n,
                        Tessera__V1__Transfer **xfers, size_t nxfers, const char *msg_id)
{
    char pw_path[400], pw[128] = "";
    ts_h_secret_path(&ts_h, "gateway-1.nats.pass", pw_path, sizeof pw_path);
    FILE *pf = fopen(pw_path, "r");
    assert_non_null(pf);
    assert_non_null(fgets(pw, sizeof pw, pf));
    fclose(pf);
    pw[strcspn(pw, "\n")] = '\0';
    ts_bus_auth_t auth = {.user = "gateway-1", .password = pw};
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect_auth(&bus, ts_h.nats_plain_url, "it_auth-gateway-1", &auth), TS_OK);
    Tessera__V1__Input *ptrs[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &inputs[i];
    Tessera__V1__CellId cell_pb;
    ts_proto_cell_init(&cell_pb, cell);
    Tessera__V1__InputBatch batch = TESSERA__V1__INPUT_BATCH__INIT;
    batch.cell = &cell_pb;
    batch.inputs = ptrs;
    batch.n_inputs = n;
    batch.transfers = xfers;
    batch.n_transfers = nxfers;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_proto_pack(&batch.base, &buf, &len), TS_OK);
    char subj[TS_SUBJECT_MAX];
    assert_true(ts_subject_input(subj, sizeof subj, cell, 1) > 0);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH, .count = (uint32_t)(n + nxfers), .msg_id = msg_id};
    uint64_t seq = 0;
    assert_int_equal(ts_bus_js_publish(bus, subj, &hdr, buf, len, WAIT_MS, &seq), TS_OK); /* stored */
    free(buf);
    ts_bus_destroy(bus);
}

/* Reads c's frames until entity shows want inputs applied and nothing more
 * for a second (or 10 s passed); until its cell changed too if moved. Its
 * last position and cell come back. Returns the inputs applied last seen. */
static uint64_t follow(ts_client_t *c, uint64_t entity, uint64_t want, bool moved, double *x, double *y,
                       ts_cell_t *cell)
{
    ts_cell_t from = *cell;
    uint64_t applied = 0, settled_us = 0, deadline = ts_mono_us() + 10000 * 1000ull;
    while (ts_mono_us() < deadline &&
           (applied < want || ts_mono_us() < settled_us || (moved && ts_cell_eq(cell, &from)))) {
        Tessera__V1__ServerFrame *f = NULL;
        if (ts_client_recv(c, 100, &f) != TS_OK) continue;
        ts_cell_t at;
        if (f->cell != NULL && ts_proto_cell_get(f->cell, &at) == TS_OK) *cell = at;
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA)
            for (size_t i = 0; i < f->delta->n_entities; i++)
                if (f->delta->entities[i]->id == entity) {
                    applied = f->delta->entities[i]->inputs_applied;
                    *x = f->delta->entities[i]->x;
                    *y = f->delta->entities[i]->y;
                }
        if (applied >= want && settled_us == 0) settled_us = ts_mono_us() + 1000 * 1000ull;
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    return applied;
}

/* Puts into att the fields of a resume token for entity in cell, signed
 * under secret, expiring at exp_s (t and cell_pb hold what att points at). */
static void attach_token(Tessera__V1__AttachInput *att, ts_resume_token_t *t, Tessera__V1__CellId *cell_pb,
                         const char *secret, uint64_t entity, const ts_cell_t *cell, uint64_t exp_s)
{
    ts_resume_key_t key;
    assert_int_equal(ts_resume_key_init(&key, secret), TS_OK);
    memset(t, 0, sizeof *t);
    t->entity = entity;
    t->cell = *cell;
    t->exp_s = exp_s;
    ts_resume_token_sign(&key, t);
    ts_resume_key_clear(&key);
    ts_proto_cell_init(cell_pb, cell);
    att->resume_cell = cell_pb;
    att->resume_exp = t->exp_s;
    att->resume_mac.data = t->mac;
    att->resume_mac.len = sizeof t->mac;
}

static void test_gateway_acts_only_for_its_players(void **state)
{
    (void)state;
    /* gateway 2 (NATS user gateway-2) and its player, standing still */
    int port2 = ts_h_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", port2);
    char ws_listen[64];
    const char *gw2_args[] = {listen, "--gateway.id=2", "--gateway.resume_secret=" RESUME_SECRET,
                              ts_h_ws_listen(port2, ws_listen, sizeof ws_listen), NULL};
    int gw2 = ts_h_spawn(&ts_h, "gateway2", "tessera-gateway", gw2_args);
    assert_true(ts_h_wait_port(port2, 15000));
    assert_true(ts_h_wait_port(ts_h_player_port(port2), 15000));
    ts_client_t *c = NULL;
    assert_int_equal(ts_h_client_connect(&c, port2, 3000), TS_OK);
    assert_int_equal(ts_client_join(c, -20, 20, "victim"), TS_OK);
    uint64_t entity = 0;
    double x = 0, y = 0;
    ts_cell_t cell = {0};
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ull;
    while (entity == 0 && ts_mono_us() < deadline) {
        Tessera__V1__ServerFrame *f = NULL;
        if (ts_client_recv(c, 100, &f) != TS_OK) continue;
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
            assert_int_equal(ts_proto_cell_get(f->cell, &cell), TS_OK);
            for (size_t i = 0; i < f->snapshot->n_entities; i++) {
                if (f->snapshot->entities[i]->id != f->snapshot->entity) continue;
                x = f->snapshot->entities[i]->x;
                y = f->snapshot->entities[i]->y;
                entity = f->snapshot->entity;
            }
        }
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    assert_true(entity != 0);
    assert_int_equal(entity >> 48, 2); /* gateway 2's entity */

    /* gateway-1 may not publish under gateway 2's origin: the server refuses */
    char subj[TS_SUBJECT_MAX];
    forger_t f;
    assert_int_equal(forger_connect(&f, "gateway-1"), NATS_OK);
    assert_true(ts_subject_input(subj, sizeof subj, &cell, 2) > 0);
    forge_refused(&f, subj, false);
    forge_refused(&f, "tessera.gw.2.alive", false); /* nor say gateway 2 is alive */
    forger_close(&f);

    /* under its own origin it acts for the victim: every item is refused */

    Tessera__V1__MoveInput mv = TESSERA__V1__MOVE_INPUT__INIT;
    mv.dx = 40;
    Tessera__V1__CommandInput cmd = TESSERA__V1__COMMAND_INPUT__INIT;
    cmd.type = 1;
    Tessera__V1__DetachInput det = TESSERA__V1__DETACH_INPUT__INIT;
    det.session = 1;
    Tessera__V1__LeaveInput leave = TESSERA__V1__LEAVE_INPUT__INIT;
    Tessera__V1__AttachInput att = TESSERA__V1__ATTACH_INPUT__INIT;
    att.gateway = 1;
    att.gateway_instance = 77;
    att.session = 1;
    /* the same Attach with a token for another entity, and with the
     * victim's own (as a gateway holding the resume secret could sign) */
    Tessera__V1__AttachInput att_other = att, att_valid = att;
    ts_resume_token_t tok_other, tok_valid;
    Tessera__V1__CellId tok_cell_other, tok_cell_valid;
    uint64_t exp_s = (uint64_t)time(NULL) + 600;
    attach_token(&att_other, &tok_other, &tok_cell_other, RESUME_SECRET, entity + 1, &cell, exp_s);
    attach_token(&att_valid, &tok_valid, &tok_cell_valid, RESUME_SECRET, entity, &cell, exp_s);
    Tessera__V1__JoinInput join_as2 = TESSERA__V1__JOIN_INPUT__INIT; /* says gateway 2 */
    join_as2.gateway = 2;
    Tessera__V1__JoinInput join_id2 = TESSERA__V1__JOIN_INPUT__INIT; /* an id of gateway 2 */
    join_id2.gateway = 1;
    Tessera__V1__RequestInput req = TESSERA__V1__REQUEST_INPUT__INIT;
    /* world counter moves: a marker to a neighbour, counters from it */
    ts_cell_t east = {.world = cell.world, .cx = cell.cx + 1, .cy = cell.cy};
    Tessera__V1__CellId east_pb;
    ts_proto_cell_init(&east_pb, &east);
    Tessera__V1__CounterMoveInput cmove = TESSERA__V1__COUNTER_MOVE_INPUT__INIT;
    cmove.to = &east_pb;
    int64_t forged_points[1] = {1000};
    Tessera__V1__CountersInput cin = TESSERA__V1__COUNTERS_INPUT__INIT;
    cin.from = &east_pb;
    cin.from_seq = 1;
    cin.n_values = 1;
    cin.values = forged_points;
    Tessera__V1__Input in[12];
    for (int i = 0; i < 12; i++) {
        tessera__v1__input__init(&in[i]);
        in[i].entity = entity;
        in[i].seq = 1000 + (uint64_t)i; /* far ahead: would push the real inputs out of the window */
    }
    in[0].kind_case = TESSERA__V1__INPUT__KIND_MOVE, in[0].move = &mv;
    in[1].kind_case = TESSERA__V1__INPUT__KIND_COMMAND, in[1].command = &cmd;
    in[2].kind_case = TESSERA__V1__INPUT__KIND_DETACH, in[2].detach = &det;
    in[3].kind_case = TESSERA__V1__INPUT__KIND_LEAVE, in[3].leave = &leave;
    in[4].kind_case = TESSERA__V1__INPUT__KIND_ATTACH, in[4].attach = &att, in[4].seq = 0;
    in[5].kind_case = TESSERA__V1__INPUT__KIND_JOIN, in[5].join = &join_as2;
    in[5].entity = (1ull << 48) | 0x4242;
    in[6].kind_case = TESSERA__V1__INPUT__KIND_JOIN, in[6].join = &join_id2;
    in[6].entity = (2ull << 48) | 0x4243;
    in[7].kind_case = TESSERA__V1__INPUT__KIND_REQUEST, in[7].request = &req, in[7].seq = 0;
    in[8].kind_case = TESSERA__V1__INPUT__KIND_ATTACH, in[8].attach = &att_other, in[8].seq = 0;
    in[9].kind_case = TESSERA__V1__INPUT__KIND_ATTACH, in[9].attach = &att_valid, in[9].seq = 0;
    in[10].kind_case = TESSERA__V1__INPUT__KIND_COUNTER_MOVE, in[10].counter_move = &cmove;
    in[10].entity = 0, in[10].seq = 0;
    in[11].kind_case = TESSERA__V1__INPUT__KIND_COUNTERS, in[11].counters = &cin;
    in[11].entity = 0, in[11].seq = 0;
    Tessera__V1__EntityState es = TESSERA__V1__ENTITY_STATE__INIT;
    es.id = (2ull << 48) | 0x4244;
    Tessera__V1__Transfer xfer = TESSERA__V1__TRANSFER__INIT;
    xfer.entity = &es;
    Tessera__V1__Transfer *xfers[1] = {&xfer};
    forge_batch(&cell, in, 12, xfers, 1, "it_auth-forged-g1");

    /* the owner refused every item: Move, Command, Detach, Leave (another
     * gateway's entity), both Joins, the Transfer, the Request and the
     * counter moves, the Attaches without a token and with another
     * entity's; the Attach with
     * a valid token waits for the victim's gateway to let go, which it
     * never does */
    assert_true(refused_reaches("gateway", 4, 15000));
    assert_true(refused_reaches("entity", 2, 5000));
    assert_true(refused_reaches("kind", 4, 5000));
    assert_true(refused_reaches("token", 2, 5000));
    assert_unchanged(c, entity, x, y, 1, 1000);
    assert_true(refused_reaches("attach", 1, 15000));
    assert_int_equal(refused_total("origin"), 0);

    /* the victim's own next inputs are all applied, once each */
    for (int i = 0; i < 3; i++)
        assert_int_equal(ts_client_move(c, 1, 0), TS_OK);
    assert_int_equal(follow(c, entity, 4, false, &x, &y, &cell), 4);

    /* the cell the victim leaves forwards what still arrives there under
     * its first publisher's origin: the victim's cell refuses it too */
    ts_cell_t old_cell = cell;
    assert_int_equal(ts_client_move(c, 50, 0), TS_OK); /* east, into the next cell */
    assert_int_equal(follow(c, entity, 5, true, &x, &y, &cell), 5);
    assert_false(ts_cell_eq(&cell, &old_cell));
    assert_int_equal(ts_client_move(c, 0, 0), TS_OK); /* and stand still */
    assert_int_equal(follow(c, entity, 6, false, &x, &y, &cell), 6);
    forge_batch(&old_cell, &in[0], 1, NULL, 0, "it_auth-forged-g1-fwd"); /* the Move again */
    assert_true(refused_reaches("gateway", 5, 15000));
    assert_unchanged(c, entity, x, y, 6, 1000);
    assert_int_equal(ts_client_move(c, 0, 0), TS_OK);
    assert_int_equal(follow(c, entity, 7, false, &x, &y, &cell), 7);
    assert_int_equal(ts_client_leave(c), TS_OK); /* the world as it was */
    ts_client_destroy(c);
    ts_h_signal(&ts_h, gw2, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, gw2, 15000), 0);
    ts_h_pass();
}

/* One entity as its cell's owner checkpoints it (every second, with the
 * gateway and connection that hold it). */
typedef struct {
    pthread_mutex_t mu;
    uint64_t entity;
    uint64_t seen; /* states of it received */
    uint32_t gateway;
    uint64_t detached_us;
    uint64_t applied;
} owner_view_t;

static void on_state(void *ud, const ts_bus_msg_t *m)
{
    owner_view_t *v = ud;
    Tessera__V1__Checkpoint *d = tessera__v1__checkpoint__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (d == NULL) return;
    pthread_mutex_lock(&v->mu);
    for (size_t i = 0; i < d->n_entities; i++) {
        const Tessera__V1__EntityState *e = d->entities[i];
        if (e->id != v->entity) continue;
        v->seen++;
        v->gateway = e->gateway;
        v->detached_us = e->detached_us;
        v->applied = e->inputs_applied;
    }
    pthread_mutex_unlock(&v->mu);
    tessera__v1__checkpoint__free_unpacked(d, NULL);
}

/* Waits until the owner checkpointed the entity as held by gateway gw,
 * detached or not, with at least `applied` inputs applied. */
static bool owner_shows(owner_view_t *v, uint32_t gw, bool detached, uint64_t applied, int64_t ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)ms * 1000u;
    for (;;) {
        pthread_mutex_lock(&v->mu);
        bool ok =
            v->seen > 0 && v->gateway == gw && (v->detached_us != 0) == detached && v->applied >= applied;
        uint32_t got_gw = v->gateway;
        uint64_t got_det = v->detached_us, got_applied = v->applied;
        pthread_mutex_unlock(&v->mu);
        if (ok) return true;
        if (ts_mono_us() >= deadline) {
            fprintf(stderr,
                    "entity %llu: gateway %u detached_us %llu applied %llu; want gateway %u %s %llu\n",
                    (unsigned long long)v->entity, got_gw, (unsigned long long)got_det,
                    (unsigned long long)got_applied, gw, detached ? "detached" : "attached",
                    (unsigned long long)applied);
            return false;
        }
        ts_sleep_ms(50);
    }
}

/* Reads c's frames until its Welcome (resumed as said) and a Snapshot
 * with its entity came; the Welcome's resume token into token. */
static uint64_t welcomed(ts_client_t *c, bool resumed, char *token, size_t cap, ts_cell_t *cell)
{
    uint64_t entity = 0, deadline = ts_mono_us() + WAIT_MS * 1000ull;
    bool got_welcome = false;
    while ((!got_welcome || entity == 0) && ts_mono_us() < deadline) {
        Tessera__V1__ServerFrame *f = NULL;
        if (ts_client_recv(c, 100, &f) != TS_OK) continue;
        assert_int_not_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR);
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME) {
            got_welcome = true;
            assert_int_equal(f->welcome->resumed, resumed);
            assert_non_null(f->welcome->resume_token);
            snprintf(token, cap, "%s", f->welcome->resume_token);
        }
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
            assert_int_equal(ts_proto_cell_get(f->cell, cell), TS_OK);
            entity = f->snapshot->entity;
        }
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    assert_true(got_welcome);
    assert_true(token[0] != '\0');
    return entity;
}

/* A new connection to port that resumes with token (Hello{resume_token}). */
static ts_client_t *resume_on(int port, const char *token)
{
    ts_client_t *c = NULL;
    assert_int_equal(ts_h_client_connect(&c, port, 3000), TS_OK);
    Tessera__V1__Hello h = TESSERA__V1__HELLO__INIT;
    h.protocol_version = TS_PROTOCOL_VERSION;
    h.client_name = (char *)"it_auth";
    h.token = (char *)"";
    h.resume_token = (char *)token;
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
    f.hello = &h;
    assert_int_equal(ts_client_send(c, &f), TS_OK);
    return c;
}

static void test_detached_player_needs_its_resume_token(void **state)
{
    (void)state;
    int port2 = ts_h_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", port2);
    char ws_listen[64];
    const char *gw2_args[] = {listen, "--gateway.id=2", "--gateway.resume_secret=" RESUME_SECRET,
                              ts_h_ws_listen(port2, ws_listen, sizeof ws_listen), NULL};
    int gw2 = ts_h_spawn(&ts_h, "gateway2-resume", "tessera-gateway", gw2_args);
    assert_true(ts_h_wait_port(port2, 15000));
    assert_true(ts_h_wait_port(ts_h_player_port(port2), 15000));

    /* a player of gateway 2, standing still; the test watches its owner */
    ts_client_t *c = NULL;
    assert_int_equal(ts_h_client_connect(&c, port2, 3000), TS_OK);
    assert_int_equal(ts_client_join(c, -20, -20, "resumer"), TS_OK);
    char token[TS_RESUME_TOKEN_MAX] = "";
    ts_cell_t cell = {0};
    uint64_t entity = welcomed(c, false, token, sizeof token, &cell);
    assert_int_equal(entity >> 48, 2);
    owner_view_t view = {.mu = PTHREAD_MUTEX_INITIALIZER, .entity = entity};
    ts_bus_t *bus = NULL;
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_auth-owner-view"), TS_OK);
    char subj[TS_SUBJECT_MAX];
    assert_true(ts_subject_cell(subj, sizeof subj, &cell, TS_SUBJ_CHECKPOINT) > 0);
    assert_int_equal(ts_bus_subscribe(bus, subj, on_state, &view, &sub), TS_OK);
    assert_true(owner_shows(&view, 2, false, 1, 10000));

    /* its connection drops: the entity waits, detached, for a resume */
    ts_client_destroy(c);
    assert_true(owner_shows(&view, 2, true, 1, 10000));

    /* gateway-1's credentials alone: Attaches without a token, with one
     * under another secret, with another entity's, with an expired one */
    uint64_t token_refused = refused_total("token"), gateway_refused = refused_total("gateway");
    uint64_t now_s = (uint64_t)time(NULL);
    Tessera__V1__AttachInput att[4];
    ts_resume_token_t toks[4];
    Tessera__V1__CellId tok_cells[4];
    Tessera__V1__Input in[5];
    for (int i = 0; i < 4; i++) {
        tessera__v1__attach_input__init(&att[i]);
        att[i].gateway = 1;
        att[i].gateway_instance = 78;
        att[i].session = 2;
        tessera__v1__input__init(&in[i]);
        in[i].entity = entity;
        in[i].kind_case = TESSERA__V1__INPUT__KIND_ATTACH;
        in[i].attach = &att[i];
    }
    attach_token(&att[1], &toks[1], &tok_cells[1], "a-guessed-secret", entity, &cell, now_s + 600);
    /* another entity's token, sent for this one */
    attach_token(&att[2], &toks[2], &tok_cells[2], RESUME_SECRET, (1ull << 48) | 0x77, &cell, now_s + 600);
    attach_token(&att[3], &toks[3], &tok_cells[3], RESUME_SECRET, entity, &cell, now_s - 1);
    forge_batch(&cell, in, 4, NULL, 0, "it_auth-forged-attach-detached");
    assert_true(refused_reaches("token", token_refused + 4, 15000));
    /* the entity is still gateway 2's: gateway-1's Move for it is refused */
    Tessera__V1__MoveInput mv = TESSERA__V1__MOVE_INPUT__INIT;
    mv.dx = 40;
    tessera__v1__input__init(&in[4]);
    in[4].entity = entity;
    in[4].seq = 500;
    in[4].kind_case = TESSERA__V1__INPUT__KIND_MOVE;
    in[4].move = &mv;
    forge_batch(&cell, &in[4], 1, NULL, 0, "it_auth-forged-move-detached");
    assert_true(refused_reaches("gateway", gateway_refused + 1, 15000));
    ts_sleep_ms(1500); /* another checkpoint */
    assert_true(owner_shows(&view, 2, true, 1, 1000));

    /* the player keeps control: it resumes on its gateway and plays */
    c = resume_on(port2, token);
    assert_int_equal(welcomed(c, true, token, sizeof token, &cell), entity);
    assert_int_equal(ts_client_move(c, 0, 0), TS_OK);
    assert_true(owner_shows(&view, 2, false, 2, 10000));
    ts_client_destroy(c);
    assert_true(owner_shows(&view, 2, true, 2, 10000));

    /* and with its token it resumes on another gateway (gateway 1) */
    c = resume_on(stack.gw_port, token);
    assert_int_equal(welcomed(c, true, token, sizeof token, &cell), entity);
    assert_true(owner_shows(&view, 1, false, 2, 10000));
    /* numbered above what was applied (this gateway's Welcome may not
     * know the entity's latest seq yet) */
    Tessera__V1__Move stop = TESSERA__V1__MOVE__INIT;
    Tessera__V1__ClientFrame mf = TESSERA__V1__CLIENT_FRAME__INIT;
    mf.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE;
    mf.move = &stop;
    mf.seq = 100;
    assert_int_equal(ts_client_send(c, &mf), TS_OK);
    assert_true(owner_shows(&view, 1, false, 3, 10000));
    assert_int_equal(refused_total("token"), token_refused + 4);
    assert_int_equal(refused_total("attach"), 1); /* the earlier test's only */

    assert_int_equal(ts_client_leave(c), TS_OK);
    ts_client_destroy(c);
    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    ts_h_signal(&ts_h, gw2, SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, gw2, 15000), 0);
    ts_h_pass();
}

static void on_inspected(void *ud, const ts_bus_msg_t *m)
{
    (void)m;
    atomic_int *n = ud;
    (*n)++;
}

static void test_inspector_reads(void **state)
{
    (void)state;
    char url[256];
    ts_h_nats_url_as(&ts_h, "inspector", url, sizeof url);
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, url, "it_auth-inspector"), TS_OK);
    /* live traffic */
    atomic_int seen = 0;
    ts_bus_sub_t *sub = NULL;
    assert_int_equal(ts_bus_subscribe(bus, "tessera.worker.*.hb", on_inspected, &seen, &sub), TS_OK);
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ull;
    while (seen < 2 && ts_mono_us() < deadline)
        ts_sleep_ms(20);
    assert_true(seen >= 2);
    ts_bus_sub_destroy(sub);
    /* the streams: the checkpoint of the player's cell (test 1 played in it) */
    char stream[64];
    ts_bus_ckpt_stream(stream, sizeof stream, WORLD);
    ts_bus_msg_t *m = NULL;
    ts_status_t st = TS_ERR_NOT_FOUND;
    deadline = ts_mono_us() + WAIT_MS * 1000ull;
    while ((st = ts_bus_last_msg(bus, stream, "cell.0.0.0.0.0.checkpoint", &m)) == TS_ERR_NOT_FOUND &&
           ts_mono_us() < deadline)
        ts_sleep_ms(100);
    assert_int_equal(st, TS_OK);
    assert_true(ts_bus_msg_len(m) > 0);
    ts_bus_msg_destroy(m);
    ts_bus_destroy(bus);
    ts_h_pass();
}

static void test_redis_acl(void **state)
{
    (void)state;
    world_snap_t before, after;
    snap_world(&before);
    ts_cell_t cell = before.cells[0].cell;
    uint64_t epoch = before.cells[0].epoch, version = 0;
    ts_world_t world = {.id = WORLD, .cell_size = 1, .x0 = 0, .y0 = 0, .width = 1, .height = 1};
    ts_cell_entry_t out;
    bool held = false;
    char url[1024];

    /* anonymous: connected, but every command refused (NOAUTH) */
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_plain_url), TS_OK);
    assert_int_equal(ts_registry_version(reg, WORLD, &version), TS_ERR_REGISTRY);
    assert_int_equal(ts_registry_world_set(reg, &world), TS_ERR_REGISTRY);
    ts_registry_destroy(reg);

    /* a wrong password is a configuration error, not something to retry */
    snprintf(url, sizeof url, "redis://worker:wrong@127.0.0.1:%d", ts_h.redis_port);
    assert_int_equal(ts_registry_connect(&reg, url), TS_ERR_CONFIG);
    /* TLS to a Redis that speaks plain RESP: no handshake, no connection */
    snprintf(url, sizeof url, "rediss://127.0.0.1:%d", ts_h.redis_port);
    assert_int_equal(ts_registry_connect(&reg, url), TS_ERR_UNAVAILABLE);
    assert_null(reg);
    /* %-escaped user and password; the password from the defaults when the
     * URL has none */
    char pw[256], escaped[800];
    FILE *pf = NULL;
    ts_h_secret_path(&ts_h, "gateway-1.redis.pass", pw, sizeof pw);
    assert_non_null(pf = fopen(pw, "r"));
    assert_non_null(fgets(pw, sizeof pw, pf));
    fclose(pf);
    pw[strcspn(pw, "\n")] = '\0';
    size_t k = 0;
    for (const char *p = pw; *p; p++)
        k += (size_t)snprintf(escaped + k, sizeof escaped - k, "%%%02X", (unsigned char)*p);
    snprintf(url, sizeof url, "redis://%%67ateway-1:%s@127.0.0.1:%d/0", escaped, ts_h.redis_port);
    assert_int_equal(ts_registry_connect(&reg, url), TS_OK);
    assert_int_equal(ts_registry_version(reg, WORLD, &version), TS_OK);
    ts_registry_destroy(reg);
    assert_int_equal(ts_registry_set_default_auth("gateway-1", pw), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_plain_url), TS_OK);
    assert_int_equal(ts_registry_version(reg, WORLD, &version), TS_OK);
    ts_registry_destroy(reg);
    assert_int_equal(ts_registry_set_default_auth(NULL, NULL), TS_OK);

    /* the gateway and the sim read the world, change nothing */
    static const char *const readers[] = {"gateway-1", "sim", "ctl"};
    for (size_t i = 0; i < sizeof readers / sizeof readers[0]; i++) {
        ts_h_redis_url_as(&ts_h, readers[i], url, sizeof url);
        assert_int_equal(ts_registry_connect(&reg, url), TS_OK);
        ts_cell_entry_t *cells = NULL;
        size_t n = 0;
        assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
        assert_int_equal(n, NCELLS);
        free(cells);
        assert_int_equal(ts_registry_version(reg, WORLD, &version), TS_OK);
        assert_int_not_equal(ts_registry_cell_cas(reg, &cell, epoch, "w2", TS_CELL_ACTIVE, &out, &version),
                             TS_OK);
        assert_int_not_equal(ts_registry_world_set(reg, &world), TS_OK);
        assert_int_not_equal(ts_registry_worker_claim(reg, "wx", "t1", 1000, 10), TS_OK);
        assert_int_not_equal(ts_registry_worker_forget(reg, "w1"), TS_OK);
        assert_int_not_equal(ts_registry_lock(reg, "orch", "x", 1000, &held), TS_OK);
        assert_int_not_equal(ts_registry_draining_add(reg, WORLD, "w1"), TS_OK);
        assert_int_not_equal(ts_registry_world_reset(reg, WORLD), TS_OK);
        ts_registry_destroy(reg);
    }

    /* a worker manages worker liveness, never cells, the world or the lock */
    ts_h_redis_url_as(&ts_h, "worker", url, sizeof url);
    assert_int_equal(ts_registry_connect(&reg, url), TS_OK);
    assert_int_equal(ts_registry_worker_claim(reg, "wx", "t1", 1000, 10), TS_OK);
    assert_int_equal(ts_registry_worker_forget(reg, "wx"), TS_OK);
    assert_int_not_equal(ts_registry_cell_cas(reg, &cell, epoch, "wx", TS_CELL_ACTIVE, &out, &version),
                         TS_OK);
    assert_int_not_equal(ts_registry_world_set(reg, &world), TS_OK);
    assert_int_not_equal(ts_registry_lock(reg, "orch", "x", 1000, &held), TS_OK);
    assert_int_not_equal(ts_registry_draining_add(reg, WORLD, "w1"), TS_OK);
    assert_int_not_equal(ts_registry_world_reset(reg, WORLD), TS_OK);
    ts_registry_destroy(reg);
    /* worker-w1 keeps only w1's liveness: it cannot claim or forget w2 */
    ts_h_redis_url_as(&ts_h, "worker-w1", url, sizeof url);
    assert_int_equal(ts_registry_connect(&reg, url), TS_OK);
    assert_int_not_equal(ts_registry_worker_claim(reg, "w2", "t1", 1000, 10), TS_OK);
    assert_int_not_equal(ts_registry_worker_forget(reg, "w2"), TS_OK);
    ts_registry_destroy(reg);

    snap_world(&after);
    assert_same_world(&before, &after);
    ts_h_pass();
}

/* Hostile clients at the gateway: 40 connections each send a stream of
 * valid ClientFrames (hello, join, moves, pings) with bytes flipped, lengths
 * changed and frames cut short, from a fixed seed. The gateway refuses or
 * closes them as it sees fit, and keeps serving: a player who comes after
 * has every input applied exactly once. */
static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_gateway_survives_garbage(void **state)
{
    (void)state;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    Tessera__V1__Hello hello = TESSERA__V1__HELLO__INIT;
    hello.protocol_version = 1;
    hello.client_name = (char *)"garbage";
    Tessera__V1__Join join = TESSERA__V1__JOIN__INIT;
    join.x = 30;
    join.y = -30;
    join.name = (char *)"g";
    Tessera__V1__Move move = TESSERA__V1__MOVE__INIT;
    move.dx = 1;
    Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
    for (int conn = 0; conn < 40; conn++) {
        ts_client_t *c = NULL;
        assert_int_equal(ts_h_client_connect(&c, stack.gw_port, 3000), TS_OK);
        uint8_t stream[4096];
        size_t n = 0;
        for (uint64_t seq = 1; seq <= 12; seq++) {
            Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
            f.seq = seq;
            switch (seq) {
            case 1:
                f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
                f.hello = &hello;
                break;
            case 2:
                f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN;
                f.join = &join;
                break;
            default:
                f.payload_case = seq % 3 ? TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE
                                         : TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
                f.move = &move;
                f.ping = &ping;
                break;
            }
            if (f.payload_case == TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING)
                f.move = NULL;
            else
                f.ping = NULL;
            size_t len = tessera__v1__client_frame__get_packed_size(&f);
            if (n + 4 + len > sizeof stream) break;
            ts_frame_put_header(stream + n, (uint32_t)len);
            tessera__v1__client_frame__pack(&f, stream + n + 4);
            n += 4 + len;
        }
        /* damage: flip bytes, sometimes a length, sometimes cut the end */
        int flips = 1 + (int)(xorshift(&rng) % 8);
        for (int i = 0; i < flips; i++)
            stream[xorshift(&rng) % n] ^= (uint8_t)(1 + xorshift(&rng) % 255);
        if (xorshift(&rng) % 4 == 0) ts_frame_put_header(stream, (uint32_t)(xorshift(&rng) % 0x7fffffff));
        if (xorshift(&rng) % 3 == 0) n -= xorshift(&rng) % n;
        /* as it is on TCP; over WebSocket (--ws) the same bytes hit the
         * WebSocket frame parser instead */
        (void)ts_client_send_raw(c, stream, n); /* the gateway may already have closed it */
        Tessera__V1__ServerFrame *reply = NULL;
        while (ts_client_recv(c, 50, &reply) == TS_OK)
            tessera__v1__server_frame__free_unpacked(reply, NULL);
        ts_client_destroy(c);
    }
    assert_int_equal(ts_h_wait(&ts_h, stack.gateway, 0), -1);
    assert_int_equal(play(-30, -30), 4);
    ts_h_pass();
}

/* A drain under permissions: w2 stops (SIGTERM), asks the orchestrator to
 * take its cells (a request whose reply comes to _INBOX.worker.>), the
 * orchestrator hands each to w1 (handover requests, replies to
 * _INBOX.tsorch.>, worker-to-worker copies), and w2 exits cleanly with w1
 * owning the whole world. */
static void test_drain_secured(void **state)
{
    (void)state;
    ts_h_signal(&ts_h, stack.workers[1], SIGTERM);
    assert_int_equal(ts_h_wait(&ts_h, stack.workers[1], 60000), 0);
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
    assert_int_equal(n, NCELLS);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(cells[i].owner, "w1");
    free(cells);
    ts_registry_destroy(reg);
    char *log = ts_h_read_log(&ts_h, stack.workers[1]);
    assert_non_null(log);
    assert_null(strstr(log, "Permissions Violation"));
    assert_non_null(strstr(log, "drain: orchestrator says:")); /* the reply reached _INBOX.worker.> */
    assert_null(strstr(log, "recovered from checkpoints"));    /* handed over, not recovered */
    free(log);
    assert_int_equal(play(25, -25), 4);
    ts_h_pass();
}

static void test_urls_masked(void **state)
{
    (void)state;
    char buf[128];
    ts_bus_redact_url(buf, sizeof buf, "nats://gateway:s3cret@127.0.0.1:4222");
    assert_string_equal(buf, "nats://gateway:***@127.0.0.1:4222");
    ts_bus_redact_url(buf, sizeof buf, "redis://:s3cret@host:6379/2");
    assert_string_equal(buf, "redis://:***@host:6379/2");
    ts_bus_redact_url(buf, sizeof buf, "redis://user@host:6379");
    assert_string_equal(buf, "redis://user@host:6379");
    ts_bus_redact_url(buf, sizeof buf, "nats://127.0.0.1:4222");
    assert_string_equal(buf, "nats://127.0.0.1:4222");
    ts_bus_redact_url(buf, sizeof buf, "@x:y://z"); /* odd, not a crash */
    assert_string_equal(buf, "@x:y://z");
    /* a server list: no password of any server shows */
    ts_bus_redact_url(buf, sizeof buf, "nats://u:p1@h1:4222,nats://u:p2@h2:4222");
    assert_null(strstr(buf, "p1"));
    assert_null(strstr(buf, "p2"));
    ts_h_pass();
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start_secure(&ts_h);
    /* ts_h_spawn_stack's, with each worker's /metrics on its own port; the
     * world keeps its owners unless a test changes them (the forgery tests
     * compare the registry before and after) */
    static const char *const ids[2] = {"w1", "w2"};
    const char *orch_args[] = {"--orch.rebalance=0", NULL};
    stack.orch = ts_h_spawn(&ts_h, "orch", "tessera-orch", orch_args);
    for (int i = 0; i < 2; i++) {
        char id[32], http[64];
        worker_http[i] = ts_h_free_port();
        snprintf(id, sizeof id, "--worker.id=%s", ids[i]);
        snprintf(http, sizeof http, "--worker.http_listen=127.0.0.1:%d", worker_http[i]);
        const char *args[] = {id, http, "--gateway.resume_secret=" RESUME_SECRET, NULL};
        stack.workers[i] = ts_h_spawn(&ts_h, ids[i], "tessera-worker", args);
    }
    stack.gw_port = ts_h_free_port();
    char listen[64], ws_listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", stack.gw_port);
    const char *gw_args[] = {listen, "--gateway.resume_secret=" RESUME_SECRET,
                             ts_h_ws_listen(stack.gw_port, ws_listen, sizeof ws_listen), NULL};
    stack.gateway = ts_h_spawn(&ts_h, "gateway", "tessera-gateway", gw_args);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, 30000) || !ts_h_wait_port(stack.gw_port, 15000) ||
        !ts_h_wait_port(ts_h_player_port(stack.gw_port), 15000)) {
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    ts_h_ws_main(argc, argv);
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_stack_runs_secured),
        TS_H_TEST(test_forged_nats_traffic_refused),
        TS_H_TEST(test_gateway_acts_only_for_its_players),
        TS_H_TEST(test_detached_player_needs_its_resume_token),
        TS_H_TEST(test_inspector_reads),
        TS_H_TEST(test_redis_acl),
        TS_H_TEST(test_gateway_survives_garbage),
        TS_H_TEST(test_drain_secured),
        TS_H_TEST(test_urls_masked),
    };
    return TS_H_RUN(ts_h_ws ? "it_auth_ws" : "it_auth", tests, group_setup, ts_h_group_teardown);
}
