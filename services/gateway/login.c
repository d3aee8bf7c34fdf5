/* One authenticated player, one entity, on every gateway.
 *
 * A player's entity id is derived from its `sub` (gw_login_entity), so two
 * logins of one player anywhere name the same entity. A Join of an
 * authenticated connection does not spawn at once: the gateway publishes a
 * claim on tessera.player.<world>.claim (core NATS), and
 *
 *   - a gateway holding a connection with that entity answers where the
 *     entity is (the connection's cell and the highest seq it received)
 *     and closes that connection with ERROR_UNAUTHENTICATED ("logged in on
 *     another connection");
 *   - a worker holding the entity answers with its cell and the highest
 *     input seq applied to it, and whether it is detached (no connection).
 *
 * The first answer from a gateway, or from a worker for a detached entity,
 * takes the entity over at once (an Attach into the cell it names, as a
 * resume does: no teleport, Welcome{resumed, last_input_seq}); a worker's
 * answer for an attached entity waits for the connection's gateway until
 * GW_LOGIN_WAIT_MS is over, then is used. No answer by then: the entity
 * is spawned where the Join asked. Two logins of one player at the same
 * time: the later claim wins, the earlier connection is closed.
 *
 * A resume announces itself with the same claim (no answer awaited), so a
 * connection still holding the entity on another gateway lets go.
 *
 * Messages are one text line each:
 *   claim <entity> <gateway> <instance> <conn> <time_us> <answer subject> [<mac>]
 *   found <entity> <conn> <cell> <last_seq> gateway|worker|detached
 *
 * A claim closes a player's connection, so with gateway.resume_secret set
 * (every gateway holds the same one) a claim carries the hex HMAC of the
 * rest of its line under that key (ts_resume_msg_sign, label "claim"), and
 * a claim without a valid one is refused: a gateway's bus credential alone
 * cannot make another gateway close a connection. A signed claim is only
 * taken within CLAIM_FRESH_US of this gateway's clock, and lets go of a
 * connection only if it is later than when that connection got the entity,
 * so a claim read off the bus and replayed closes nothing that logged in
 * since. (Without the secret claims are neither signed nor checked.)
 *
 * Everything runs on the loop; the subscriptions hand their messages over
 * through the gateway's inbox. Waiting logins sit in arrival order (one
 * timeout for all, so the list is in deadline order) and in maps by
 * connection id and by entity (at most one waits per entity);
 * GW_LOGIN_PENDING_MAX bounds them. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "login.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define LOGIN_MSG_MAX (TS_SUBJECT_MAX + 256)
#define CLAIM_LABEL "claim"
#define CLAIM_FRESH_US (30 * 1000000ull) /* clocks of two gateways may differ by less */
#define REFUSED_LOG_US (10 * 1000000ull)

typedef struct pending {
    struct pending *prev, *next;
    gw_conn_t *conn;
    uint64_t entity;
    uint64_t claim_us; /* wall clock, orders concurrent logins */
    uint64_t deadline_us;
    uint64_t seq;
    gw_cell_t *cell; /* where the Join asked */
    double x, y;
    char name[GW_NAME_MAX + 1];
    uint8_t payload[TS_GAME_PAYLOAD_MAX]; /* Join.payload */
    size_t payload_len;
    gw_cell_t *found_cell; /* a worker's answer for an attached entity */
    uint64_t found_seq;
} pending_t;

typedef struct gw_login {
    gw_t *gw;
    ts_bus_sub_t *claim_sub, *found_sub;
    char claim_subject[TS_SUBJECT_MAX];
    char found_subject[TS_SUBJECT_MAX];
    uv_timer_t timer;
    bool timer_open;
    pending_t *head, *tail;
    size_t npending;
    ts_map_t by_conn;   /* conn id -> pending_t* */
    ts_map_t by_entity; /* entity -> pending_t* (one login per entity waits) */
    uint64_t taken_over, spawned, let_go;
    uint64_t refused_logged_us[3]; /* last "claim refused" line, per reason */
} gw_login_t;

uint64_t gw_login_entity(uint32_t world, const char *sub)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the world and the sub */
    for (int i = 0; i < 4; i++)
        h = (h ^ ((world >> (8 * i)) & 0xff)) * 1099511628211ull;
    for (const char *p = sub; *p != '\0'; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    h ^= h >> 31; /* spread the last bytes into the high bits */
    return (1ull << 63) | (h & ~(1ull << 63));
}

static gw_login_t *login_of(gw_t *gw)
{
    return gw->login;
}

static void on_bus_msg(void *ud, const ts_bus_msg_t *msg)
{
    gw_inbox_push(ud, GW_MSG_LOGIN, NULL, msg);
}

ts_status_t gw_login_start(gw_t *gw)
{
    gw_login_t *l = calloc(1, sizeof(*l));
    if (l == NULL) return TS_ERR_NOMEM;
    l->gw = gw;
    ts_map_init(&l->by_conn);
    ts_map_init(&l->by_entity);
    snprintf(l->claim_subject, sizeof l->claim_subject, GW_LOGIN_CLAIM_FMT, gw->world.id);
    /* the answers to this gateway's claims: only its own NATS user may read them */
    snprintf(l->found_subject, sizeof l->found_subject, "tessera.player.%u.found.g%lld.%016" PRIx64,
             gw->world.id, (long long)gw->cfg->gateway_id, gw->instance);
    uv_timer_init(gw->loop, &l->timer);
    l->timer.data = l;
    l->timer_open = true;
    gw->login = l;
    ts_status_t st = ts_bus_subscribe(gw->bus, l->claim_subject, on_bus_msg, gw, &l->claim_sub);
    if (st == TS_OK) st = ts_bus_subscribe(gw->bus, l->found_subject, on_bus_msg, gw, &l->found_sub);
    if (st != TS_OK) ts_error("cannot subscribe to the players' claims: %s", ts_status_str(st));
    return st;
}

void gw_login_stop(gw_t *gw)
{
    gw_login_t *l = login_of(gw);
    if (l == NULL) return;
    ts_bus_sub_close(l->claim_sub);
    ts_bus_sub_close(l->found_sub);
    l->claim_sub = l->found_sub = NULL;
    if (l->timer_open && !uv_is_closing((uv_handle_t *)&l->timer)) uv_close((uv_handle_t *)&l->timer, NULL);
    if (l->taken_over + l->spawned + l->let_go > 0)
        ts_info("logins: %llu took an entity over, %llu spawned one, %llu connections let go of theirs",
                (unsigned long long)l->taken_over, (unsigned long long)l->spawned,
                (unsigned long long)l->let_go);
}

void gw_login_free(gw_t *gw)
{
    gw_login_t *l = login_of(gw);
    if (l == NULL) return;
    for (pending_t *p = l->head, *n; p != NULL; p = n) {
        n = p->next;
        free(p);
    }
    ts_map_free(&l->by_conn);
    ts_map_free(&l->by_entity);
    free(l);
    gw->login = NULL;
}

static void unlink_pending(gw_login_t *l, pending_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        l->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        l->tail = p->prev;
    ts_map_del(&l->by_conn, p->conn->id);
    ts_map_del(&l->by_entity, p->entity);
    l->npending--;
}

static void publish_claim(gw_login_t *l, const gw_conn_t *c, uint64_t entity, uint64_t claim_us)
{
    gw_t *gw = l->gw;
    char msg[LOGIN_MSG_MAX];
    int n = snprintf(msg, sizeof msg, "claim %" PRIu64 " %lld %" PRIu64 " %" PRIu64 " %" PRIu64 " %s", entity,
                     (long long)gw->cfg->gateway_id, gw->instance, c->id, claim_us, l->found_subject);
    if (n < 0 || (size_t)n + 2 + TS_RESUME_MAC_HEX > sizeof msg) return; /* cannot happen: bounded fields */
    if (gw->resume_shared) {
        msg[n] = ' ';
        if (ts_resume_msg_sign(&gw->resume_key, CLAIM_LABEL, msg, (size_t)n, msg + n + 1) != TS_OK) return;
        n += 1 + TS_RESUME_MAC_HEX;
    }
    ts_status_t st = ts_bus_publish(gw->bus, l->claim_subject, NULL, msg, (size_t)n);
    if (st != TS_OK) ts_warn("entity %" PRIu64 ": claim not published: %s", entity, ts_status_str(st));
}

static void on_timer(uv_timer_t *t);

static void arm_timer(gw_login_t *l)
{
    if (l->head == NULL || !l->timer_open || uv_is_closing((uv_handle_t *)&l->timer)) return;
    uint64_t now = ts_mono_us();
    uint64_t wait_ms = l->head->deadline_us > now ? (l->head->deadline_us - now + 999) / 1000 : 0;
    uv_timer_start(&l->timer, on_timer, wait_ms, 0);
}

static void finish(gw_login_t *l, pending_t *p, gw_cell_t *cell, uint64_t last_seq, const char *how)
{
    gw_conn_t *c = p->conn;
    unlink_pending(l, p);
    if (cell != NULL) {
        l->taken_over++;
        ts_info("conn %llu (%s): player %s logs in again: entity %" PRIu64 " taken over in %s (%s)",
                (unsigned long long)c->id, c->peer, c->player, p->entity, cell->key, how);
        gw_session_take_over(c, p->entity, cell, last_seq);
    } else {
        l->spawned++;
        gw_session_join_as(c, p->seq, p->entity, p->cell, p->x, p->y, p->name, p->payload, p->payload_len);
    }
    free(p);
}

static void on_timer(uv_timer_t *t)
{
    gw_login_t *l = t->data;
    uint64_t now = ts_mono_us();
    while (l->head != NULL && l->head->deadline_us <= now) {
        pending_t *p = l->head;
        finish(l, p, p->found_cell, p->found_seq, "its worker answered");
    }
    arm_timer(l);
}

void gw_login_join(gw_conn_t *c, uint64_t seq, gw_cell_t *cell, double x, double y, const char *name,
                   const uint8_t *payload, size_t payload_len)
{
    gw_t *gw = c->gw;
    gw_login_t *l = login_of(gw);
    uint64_t entity = gw_login_entity(gw->world.id, c->player);
    if (l == NULL) {
        gw_session_join_as(c, seq, entity, cell, x, y, name, payload, payload_len);
        return;
    }
    if (ts_map_get(&l->by_conn, c->id) != NULL) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "a Join is already under way");
        return;
    }
    /* a connection of this gateway plays it: take it from there */
    gw_conn_t *old = ts_map_get(&gw->players, entity);
    if (old != NULL && old != c && old->phase == GW_PHASE_JOINED && old->cell != NULL) {
        l->taken_over++;
        gw_session_take_over(c, entity, old->cell, old->last_seq);
        if (c->phase == GW_PHASE_JOINED) publish_claim(l, c, entity, ts_now_us());
        return;
    }
    /* another login of the same player waiting here: the later one wins */
    pending_t *waiting = ts_map_get(&l->by_entity, entity);
    if (waiting != NULL) {
        gw_conn_t *earlier = waiting->conn;
        unlink_pending(l, waiting);
        free(waiting);
        gw_session_error(earlier, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                         "player %s logged in on another connection", earlier->player);
    }
    if (l->npending >= GW_LOGIN_PENDING_MAX) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, false,
                         "too many logins under way: try again");
        return;
    }
    pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL || ts_map_put(&l->by_conn, c->id, p) != TS_OK) {
        free(p);
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true, "out of memory");
        return;
    }
    if (ts_map_put(&l->by_entity, entity, p) != TS_OK) {
        ts_map_del(&l->by_conn, c->id);
        free(p);
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true, "out of memory");
        return;
    }
    p->conn = c;
    p->entity = entity;
    p->claim_us = ts_now_us();
    p->deadline_us = ts_mono_us() + GW_LOGIN_WAIT_MS * 1000ull;
    p->seq = seq;
    p->cell = cell;
    p->x = x;
    p->y = y;
    ts_strlcpy(p->name, name, sizeof p->name);
    if (payload_len > sizeof p->payload) payload_len = sizeof p->payload; /* session.c refused longer */
    if (payload_len > 0) memcpy(p->payload, payload, payload_len);
    p->payload_len = payload_len;
    p->prev = l->tail;
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
    l->npending++;
    publish_claim(l, c, entity, p->claim_us);
    if (l->head == p) arm_timer(l);
}

void gw_login_announce(gw_conn_t *c)
{
    gw_login_t *l = login_of(c->gw);
    if (l != NULL && c->phase == GW_PHASE_JOINED) publish_claim(l, c, c->entity, ts_now_us());
}

void gw_login_forget(gw_conn_t *c)
{
    gw_login_t *l = login_of(c->gw);
    pending_t *p = l != NULL ? ts_map_get(&l->by_conn, c->id) : NULL;
    if (p == NULL) return;
    unlink_pending(l, p);
    free(p);
}

typedef enum { REFUSED_SIGNATURE = 0, REFUSED_STALE, REFUSED_OLDER } refused_t;

static void refuse_claim(gw_login_t *l, const char *line, refused_t why)
{
    static const char *const text[] = {
        "no valid signature: not from a gateway holding gateway.resume_secret",
        "more than 30 s off this gateway's clock",
        "older than the connection holding the entity here (replayed?)",
    };
    gw_t *gw = l->gw;
    gw->claims_refused++;
    uint64_t now = ts_mono_us();
    if (l->refused_logged_us[why] != 0 && now - l->refused_logged_us[why] < REFUSED_LOG_US) return;
    l->refused_logged_us[why] = now;
    ts_warn("login claim refused (%s): %.120s (%llu refused so far; no more such lines for 10 s)", text[why],
            line, (unsigned long long)gw->claims_refused);
}

/* With the shared secret: the MAC at the end of the line is right, and the
 * claim is from about now. Cuts the MAC off the line. */
static bool claim_trusted(gw_login_t *l, char *line, uint64_t claim_us_hint)
{
    gw_t *gw = l->gw;
    if (!gw->resume_shared) return true;
    char *sp = strrchr(line, ' ');
    if (sp == NULL || !ts_resume_msg_verify(&gw->resume_key, CLAIM_LABEL, line, (size_t)(sp - line), sp + 1,
                                            strlen(sp + 1))) {
        refuse_claim(l, line, REFUSED_SIGNATURE);
        return false;
    }
    *sp = '\0';
    uint64_t now = ts_now_us();
    if (claim_us_hint + CLAIM_FRESH_US < now || claim_us_hint > now + CLAIM_FRESH_US) {
        refuse_claim(l, line, REFUSED_STALE);
        return false;
    }
    return true;
}

/* Another process's claim: a connection here with the entity lets go
 * (answering where the entity is), a login here waiting for the same
 * entity gives way to a later one. */
static void on_claim(gw_login_t *l, char *line)
{
    gw_t *gw = l->gw;
    uint64_t entity, instance, conn_id, claim_us;
    long long gateway;
    char reply[TS_SUBJECT_MAX];
    if (sscanf(line, "claim %" SCNu64 " %lld %" SCNu64 " %" SCNu64 " %" SCNu64 " %159s", &entity, &gateway,
               &instance, &conn_id, &claim_us, reply) != 6)
        return;
    if (instance == gw->instance) return; /* this gateway's own logins are settled on the spot */
    if (!claim_trusted(l, line, claim_us)) return;
    gw_conn_t *c = ts_map_get(&gw->players, entity);
    if (c != NULL && c->phase == GW_PHASE_JOINED && !c->closing && c->cell != NULL && gw->resume_shared &&
        claim_us <= c->entity_since_us) {
        refuse_claim(l, line, REFUSED_OLDER);
        c = NULL;
    }
    if (c != NULL && c->phase == GW_PHASE_JOINED && !c->closing && c->cell != NULL) {
        char msg[LOGIN_MSG_MAX];
        int n = snprintf(msg, sizeof msg, "found %" PRIu64 " %" PRIu64 " %s %" PRIu64 " gateway", entity,
                         conn_id, c->cell->key, c->last_seq);
        (void)ts_bus_publish(gw->bus, reply, NULL, msg, (size_t)n);
        l->let_go++;
        if (c->player[0] != '\0')
            gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                             "player %s logged in on another connection", c->player);
        else
            gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                             "the entity was resumed on another connection");
    }
    pending_t *p = ts_map_get(&l->by_entity, entity);
    bool later = p != NULL && (claim_us > p->claim_us || (claim_us == p->claim_us &&
                                                          (uint64_t)gateway > (uint64_t)gw->cfg->gateway_id));
    if (later) {
        gw_conn_t *earlier = p->conn;
        unlink_pending(l, p);
        free(p);
        gw_session_error(earlier, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                         "player %s logged in on another connection", earlier->player);
    }
}

static void on_found(gw_login_t *l, const char *line)
{
    uint64_t entity, conn_id, last_seq;
    char key[TS_CELL_STR_MAX], by[16];
    if (sscanf(line, "found %" SCNu64 " %" SCNu64 " %95s %" SCNu64 " %15s", &entity, &conn_id, key, &last_seq,
               by) != 5)
        return;
    pending_t *p = ts_map_get(&l->by_conn, conn_id);
    if (p == NULL || p->entity != entity) return; /* settled already */
    ts_cell_t id;
    if (ts_cell_parse(key, &id) != TS_OK) return;
    gw_cell_t *cell = gw_cell_find(l->gw, &id);
    if (cell == NULL) return;
    if (strcmp(by, "worker") == 0) { /* attached: its gateway knows better, if it answers in time */
        if (p->found_cell == NULL || last_seq > p->found_seq) {
            p->found_cell = cell;
            p->found_seq = last_seq;
        }
        return;
    }
    if (last_seq < p->found_seq) last_seq = p->found_seq;
    finish(l, p, cell, last_seq, strcmp(by, "gateway") == 0 ? "its gateway answered" : "it was detached");
    arm_timer(l);
}

void gw_login_on_msg(gw_t *gw, const uint8_t *data, size_t len)
{
    gw_login_t *l = login_of(gw);
    if (l == NULL || len == 0 || len >= LOGIN_MSG_MAX) return;
    char line[LOGIN_MSG_MAX];
    memcpy(line, data, len);
    line[len] = '\0';
    if (strncmp(line, "claim ", 6) == 0)
        on_claim(l, line);
    else if (strncmp(line, "found ", 6) == 0)
        on_found(l, line);
}
