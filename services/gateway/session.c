/* The client protocol, one state machine per connection:
 *
 *   NEW --Join / Hello{resume_token}--> JOINED --Leave / disconnect--> LEFT --Join--> JOINED
 *
 * Hello and Ping are answered in any phase; Move and Command need JOINED;
 * Join needs NEW or LEFT (Leave then Join on one connection spawns a new
 * entity). A Command is an input like a Move: numbered by the frame's seq,
 * rate-limited with every other frame, queued to the entity's cell and
 * acknowledged (or reported not stored) the same way; its payload, like a
 * Join's, is at most TS_GAME_PAYLOAD_MAX bytes (longer: ERROR_MALFORMED,
 * not fatal, nothing queued).
 *
 * Lifecycle: a Leave despawns the entity; a connection that goes away
 * without one Detaches it (its entity stops at once, through the cell's
 * input stream like any input, and the worker despawns it gateway.resume_s
 * later unless a Hello{resume_token} on any gateway Attaches it first).
 * With gateway.auth.required, Hello must carry a valid JWT before Join or
 * resume; the player id is its `sub`, which names its entity on every
 * gateway: a second login of a `sub` takes its entity over (login.c).
 *
 * Every frame passes, in order: decoding (a frame that does not decode, or
 * has no payload, is fatal), the flood rule, the rate limit (token bucket of
 * gateway.rate_limit frames/s, burst as large: a frame without a token is
 * dropped, with a non-fatal ERROR_RATE_LIMIT at most once a second), and the
 * sequence check (seq strictly increasing, else the frame is ignored).
 *
 * Flood rule (flood.h): time since the connection opened is cut in 100 ms
 * steps; the frame that makes the frames of its step and of the 19 steps
 * before it more than 10 x gateway.rate_limit x 2 s is fatal, at once.
 * Every frame counts, dropped ones too. So more than 20 x rate_limit frames
 * within any 1.9 s always close the connection, and none is closed for
 * 20 x rate_limit frames or fewer within 2 s.
 *
 * Invariant: a JOINED connection is in gw->players under its entity id and
 * holds AOI references; leaving that phase always goes through release_player. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "login.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define US_PER_S 1000000ull
/* A resume token is good for this long after it was issued (the grace
 * itself is enforced by the worker: gateway.resume_s after the close). */
#define RESUME_TOKEN_TTL_S 86400

ts_status_t gw_session_send(gw_conn_t *c, Tessera__V1__ServerFrame *f)
{
    if (c->handle_closed) return TS_ERR_CLOSED;
    Tessera__V1__CellId cell_pb;
    bool own_cell = false;
    if (f->cell == NULL && c->cell != NULL) {
        ts_proto_cell_init(&cell_pb, &c->cell->id);
        f->cell = &cell_pb;
        f->epoch = gw_cell_epoch(c->cell);
        own_cell = true;
    }
    f->seq = ++c->out_seq;
    size_t len = tessera__v1__server_frame__get_packed_size(f);
    uint8_t stack_buf[2048];
    uint8_t *buf = len + TS_FRAME_HEADER <= sizeof stack_buf ? stack_buf : malloc(len + TS_FRAME_HEADER);
    ts_status_t st = TS_ERR_NOMEM;
    if (buf != NULL) {
        ts_frame_put_header(buf, (uint32_t)len);
        tessera__v1__server_frame__pack(f, buf + TS_FRAME_HEADER);
        st = gw_conn_write(c, buf, len + TS_FRAME_HEADER);
        if (buf != stack_buf) free(buf);
    }
    if (own_cell) f->cell = NULL;
    return st;
}

void gw_session_error(gw_conn_t *c, Tessera__V1__ErrorCode code, bool fatal, const char *fmt, ...)
{
    if (c->closing) return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    Tessera__V1__Error err = TESSERA__V1__ERROR__INIT;
    err.code = code;
    err.message = msg;
    err.fatal = fatal;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR;
    f.error = &err;
    (void)gw_session_send(c, &f);
    if (fatal) {
        ts_info("conn %llu (%s): %s; closing", (unsigned long long)c->id, c->peer, msg);
        gw_conn_close_after_write(c);
    } else {
        ts_debug("conn %llu (%s): %s", (unsigned long long)c->id, c->peer, msg);
    }
}

void gw_session_not_stored(gw_conn_t *c, uint64_t first_seq, uint64_t last_seq, const char *why)
{
    if (c->closing) return;
    char msg[160];
    snprintf(msg, sizeof msg, "inputs %llu..%llu are not known to be stored: %s",
             (unsigned long long)first_seq, (unsigned long long)last_seq, why);
    Tessera__V1__Error err = TESSERA__V1__ERROR__INIT;
    err.code = TESSERA__V1__ERROR_CODE__ERROR_INPUT_NOT_STORED;
    err.message = msg;
    err.first_seq = first_seq;
    err.last_seq = last_seq;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR;
    f.error = &err;
    (void)gw_session_send(c, &f);
    ts_debug("conn %llu (%s): %s", (unsigned long long)c->id, c->peer, msg);
}

void gw_session_init(gw_conn_t *c)
{
    uint64_t now = ts_mono_us();
    c->tokens = (double)c->gw->cfg->gateway_rate_limit;
    c->refill_us = now;
    gw_flood_init(&c->flood, now);
}

/* True if the frame may be handled; false if it is dropped (or the
 * connection is being closed for flooding). */
static bool rate_allow(gw_conn_t *c, uint64_t now)
{
    double rate = (double)c->gw->cfg->gateway_rate_limit;
    uint64_t limit =
        (uint64_t)GW_FLOOD_FACTOR * (uint64_t)c->gw->cfg->gateway_rate_limit * GW_FLOOD_WINDOW_US / US_PER_S;
    if (gw_flood_add(&c->flood, now, limit)) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT, true,
                         "flooding: more than %llu frames within %llu s (%d x gateway.rate_limit of %.0f/s)",
                         (unsigned long long)limit, (unsigned long long)(GW_FLOOD_WINDOW_US / US_PER_S),
                         GW_FLOOD_FACTOR, rate);
        return false;
    }

    c->tokens += (double)(now - c->refill_us) / US_PER_S * rate;
    if (c->tokens > rate) c->tokens = rate;
    c->refill_us = now;
    if (c->tokens >= 1.0) {
        c->tokens -= 1.0;
        return true;
    }
    if (c->rate_error_us == 0 || now - c->rate_error_us >= US_PER_S) {
        c->rate_error_us = now;
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT, false,
                         "over %.0f frames/s: frames are dropped", rate);
    }
    return false;
}

static uint64_t next_entity_id(gw_t *gw)
{
    if (++gw->entity_counter == 0) gw->entity_counter = 1;
    return ((uint64_t)gw->cfg->gateway_id << 48) | ((uint64_t)gw->entity_rand << 32) | gw->entity_counter;
}

static uint64_t player_key(const char *player)
{
    uint64_t key = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = player; *p != '\0'; p++)
        key = (key ^ (uint8_t)*p) * 1099511628211ull;
    return key ? key : 1;
}

/* leave: the player asked (Leave, client seq `seq`); otherwise its
 * connection went away and the entity is detached (stops, awaits resume). */
static void release_player(gw_conn_t *c, bool leave, uint64_t seq)
{
    gw_t *gw = c->gw;
    if (c->phase != GW_PHASE_JOINED) return;
    if (c->cell != NULL) {
        uint64_t now = ts_now_us();
        gw_input_t in = {
            .entity = c->entity, .seq = seq, .sent_us = now, .kind = TESSERA__V1__INPUT__KIND_LEAVE};
        if (!leave) {
            in.seq = 0;
            in.kind = TESSERA__V1__INPUT__KIND_DETACH;
            in.session = c->id;
            in.time_us = now;
        }
        if (gw_router_queue(gw, c->cell, &in) != TS_OK)
            ts_warn("entity %llu: %s could not be queued", (unsigned long long)c->entity,
                    leave ? "Leave" : "Detach");
    }
    if (ts_map_get(&gw->players, c->entity) == c) ts_map_del(&gw->players, c->entity);
    if (c->authed && ts_map_get(&gw->subs, player_key(c->player)) == c)
        ts_map_del(&gw->subs, player_key(c->player));
    c->resuming = false;
    c->phase = GW_PHASE_LEFT;
    gw_aoi_update(gw, c);
    gw_view_release(gw, c);
    c->cell = NULL;
    c->awaiting_left = NULL;
    c->ngone = 0;
}

void gw_session_release(gw_conn_t *c)
{
    gw_login_forget(c);
    release_player(c, false, 0);
}

/* The own entity's highest applied client seq, as the newest state seen
 * says (0: not seen yet). */
static uint64_t own_last_input_seq(gw_t *gw, const gw_conn_t *c)
{
    gw_cell_t *home = ts_map_get(&gw->homes, c->entity);
    gw_entity_t *e = home != NULL ? ts_map_get(&home->entities, c->entity) : NULL;
    return e != NULL ? e->pb.last_input_seq : 0;
}

static void make_token(gw_conn_t *c, char *out, size_t cap)
{
    out[0] = '\0';
    if (c->phase != GW_PHASE_JOINED || c->cell == NULL) return;
    uint64_t exp = ts_now_us() / 1000000 + RESUME_TOKEN_TTL_S;
    gw_resume_token_make(c->gw, c->entity, &c->cell->id, c->player, exp, out, cap);
}

static void send_welcome(gw_conn_t *c, bool resumed, uint64_t ack_floor)
{
    char token[1024];
    make_token(c, token, sizeof token);
    Tessera__V1__Welcome w = TESSERA__V1__WELCOME__INIT;
    w.protocol_version = TS_PROTOCOL_VERSION;
    w.entity = c->phase == GW_PHASE_JOINED ? c->entity : 0;
    w.cell_size = c->gw->world.cell_size;
    w.gateway = c->gw->name;
    w.resume_token = token;
    w.resumed = resumed;
    w.last_input_seq = resumed ? own_last_input_seq(c->gw, c) : 0;
    if (w.last_input_seq < ack_floor) w.last_input_seq = ack_floor;
    w.player = c->player;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME;
    f.welcome = &w;
    (void)gw_session_send(c, &f);
}

static void greeted(gw_conn_t *c)
{
    c->greeted = true;
    if (!c->resuming) gw_tl_del(c->gw, c, GW_TL_HELLO);
}

static bool room_for_player(gw_conn_t *c)
{
    gw_t *gw = c->gw;
    if (gw->players.len < (size_t)gw->cfg->gateway_max_clients) return true;
    gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true, "gateway is full (%lld players)",
                     (long long)gw->cfg->gateway_max_clients);
    return false;
}

static bool take_entity(gw_conn_t *c, uint64_t entity, gw_cell_t *cell, uint64_t ack_floor, bool login,
                        const char *token);

/* Hello{resume_token}: the entity becomes this connection's (Attach). */
static void on_resume(gw_conn_t *c, const char *token)
{
    gw_t *gw = c->gw;
    if (c->phase == GW_PHASE_JOINED) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false,
                         "resume on a connection that already has an entity");
        return;
    }
    uint64_t entity = 0;
    ts_cell_t id;
    char player[GW_PLAYER_MAX + 1];
    ts_status_t st = gw_resume_token_check(gw, token, &entity, &id, player, sizeof player);
    if (st != TS_OK) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_RESUME_REFUSED, true, "resume token %s",
                         st == TS_ERR_TIMEOUT ? "expired" : "is not valid");
        return;
    }
    if (c->authed ? strcmp(player, c->player) != 0 : player[0] != '\0' && gw->cfg->gateway_auth_required) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                         "the resume token belongs to another player");
        return;
    }
    gw_cell_t *cell = gw_cell_find(gw, &id);
    /* a split or retired cell still has an owner, which forwards the Attach */
    if (cell == NULL || !cell->in_registry || id.world != gw->world.id) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_RESUME_REFUSED, true,
                         "the resume token's cell is not in the registry");
        return;
    }
    memcpy(c->player, player, strlen(player) + 1);
    if (take_entity(c, entity, cell, 0, false, token)) gw_login_announce(c); /* other gateways let go of it */
}

/* The entity becomes this connection's (Attach) in `cell` (or where a
 * connection of this gateway holding it has it); ack_floor: the player's
 * inputs known applied. A login (not a resume) closes an older connection
 * as logged in elsewhere. token: the player's resume token, which the
 * Attach carries (the entity's worker checks it before another gateway
 * takes the entity over); NULL (a login, its JWT checked): one signed
 * here. Returns whether the entity was taken. */
static bool take_entity(gw_conn_t *c, uint64_t entity, gw_cell_t *cell, uint64_t ack_floor, bool login,
                        const char *token)
{
    gw_t *gw = c->gw;
    gw_conn_t *old = ts_map_get(&gw->players, entity);
    if (old == NULL && !room_for_player(c)) return false;
    if (old != NULL && old != c && old->cell != NULL) cell = old->cell; /* newer than the token's */
    if (old != NULL &&
        old != c) { /* a half-open or older connection: it lets go first (Detach, then Attach) */
        if (ack_floor < old->last_seq) ack_floor = old->last_seq;
        if (login)
            gw_session_error(old, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                             "player %s logged in on another connection", old->player);
        else
            gw_session_error(old, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, true,
                             "resumed on another connection");
    }
    char signed_here[TS_RESUME_TOKEN_MAX];
    if (token == NULL) {
        gw_resume_token_make(gw, entity, &cell->id, c->player, ts_now_us() / 1000000 + RESUME_TOKEN_TTL_S,
                             signed_here, sizeof signed_here);
        token = signed_here;
    }
    gw_input_t in = {.entity = entity,
                     .seq = 0,
                     .sent_us = ts_now_us(),
                     .kind = TESSERA__V1__INPUT__KIND_ATTACH,
                     .session = c->id,
                     .payload_len = (uint32_t)strlen(token),
                     .payload = (uint8_t *)token};
    if (gw_router_queue(gw, cell, &in) != TS_OK) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, false, "cell %s is not taking inputs",
                         cell->key);
        return false;
    }
    if (ts_map_put(&gw->players, entity, c) != TS_OK) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true, "out of memory");
        return false;
    }
    if (c->authed) (void)ts_map_put(&gw->subs, player_key(c->player), c);
    c->entity = entity;
    c->own_gone = false;
    c->cell = cell;
    c->phase = GW_PHASE_JOINED;
    c->entity_since_us = ts_now_us();
    /* refused if its state does not show up within gateway.hello_timeout_s */
    c->resuming = true;
    gw_tl_put(gw, c, GW_TL_HELLO, ts_mono_us() + (uint64_t)gw->cfg->gateway_hello_timeout_s * 1000000ull);
    gw->resumes++;
    gw_aoi_update(gw, c);
    send_welcome(c, true, ack_floor);
    gw_view_send_snapshot(gw, c);
    ts_info("conn %llu (%s): entity %llu %s in %s", (unsigned long long)c->id, c->peer,
            (unsigned long long)entity, login ? "taken over by a new login" : "resumed", cell->key);
    return true;
}

void gw_session_take_over(gw_conn_t *c, uint64_t entity, gw_cell_t *cell, uint64_t ack_floor)
{
    (void)take_entity(c, entity, cell, ack_floor, true, NULL);
}

static void on_hello(gw_conn_t *c, const Tessera__V1__Hello *h)
{
    gw_t *gw = c->gw;
    if (h->protocol_version != 0 && h->protocol_version != TS_PROTOCOL_VERSION) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false,
                         "protocol version %u is not supported (this gateway speaks %u)", h->protocol_version,
                         TS_PROTOCOL_VERSION);
        return;
    }
    bool has_token = h->token != NULL && h->token[0] != '\0';
    bool resume = h->resume_token != NULL && h->resume_token[0] != '\0';
    if (has_token || (gw->cfg->gateway_auth_required && !c->authed)) {
        char sub[GW_PLAYER_MAX + 1], why[160];
        if (gw_auth_check_jwt(gw, h->token, sub, sizeof sub, why, sizeof why) != TS_OK) {
            gw->refused_auth++;
            gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true, "not authenticated: %s",
                             why);
            return;
        }
        if (c->authed && strcmp(sub, c->player) != 0) {
            gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                             "a connection stays with one player");
            return;
        }
        memcpy(c->player, sub, strlen(sub) + 1);
        c->authed = true;
    }
    greeted(c);
    if (resume) {
        on_resume(c, h->resume_token);
        return;
    }
    send_welcome(c, false, 0);
}

static bool inside_world(const gw_t *gw, double x, double y)
{
    const ts_world_t *w = &gw->world;
    double x0 = (double)w->x0 * w->cell_size, y0 = (double)w->y0 * w->cell_size;
    double x1 = x0 + (double)w->width * w->cell_size, y1 = y0 + (double)w->height * w->cell_size;
    return x >= x0 && x < x1 && y >= y0 && y < y1;
}

static void on_join(gw_conn_t *c, uint64_t seq, const Tessera__V1__Join *j)
{
    gw_t *gw = c->gw;
    if (c->phase == GW_PHASE_JOINED) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "already joined: Leave first");
        return;
    }
    if (gw->cfg->gateway_auth_required && !c->authed) {
        gw->refused_auth++;
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, true,
                         "not authenticated: Join needs a Hello with a valid token first");
        return;
    }
    if (!isfinite(j->x) || !isfinite(j->y)) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "join position must be finite");
        return;
    }
    if (j->payload.len > TS_GAME_PAYLOAD_MAX) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, false,
                         "join payload is %zu bytes, the limit is %d", j->payload.len, TS_GAME_PAYLOAD_MAX);
        return;
    }
    size_t name_len = strlen(j->name);
    if (name_len > GW_NAME_MAX) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false,
                         "name is %zu bytes, the limit is %d", name_len, GW_NAME_MAX);
        return;
    }
    if (!inside_world(gw, j->x, j->y)) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNKNOWN_CELL, false,
                         "(%g, %g) is outside world %u", j->x, j->y, gw->world.id);
        return;
    }
    /* the deepest live cell holding the position, at any depth; while a
     * split or merge is under way (the cell tree has no live cell there
     * yet), the deepest split or retired cell there: its owner forwards the
     * Join by position */
    const ts_cell_entry_t *at = ts_celltree_locate(gw->tree, j->x, j->y);
    for (int d = TS_CELL_MAX_DEPTH; at == NULL && d >= 0; d--) {
        ts_cell_t id;
        ts_cell_from_pos(gw->world.id, gw->world.cell_size, (uint8_t)d, j->x, j->y, &id);
        at = ts_celltree_get(gw->tree, &id);
        if (at != NULL && at->state != TS_CELL_SPLIT && at->state != TS_CELL_RETIRED) at = NULL;
    }
    gw_cell_t *cell = at != NULL ? gw_cell_get(gw, &at->cell) : NULL;
    if (cell == NULL) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNKNOWN_CELL, false,
                         "no live cell at (%g, %g) in the registry", j->x, j->y);
        return;
    }
    if (!room_for_player(c)) return;
    char name[GW_NAME_MAX + 1];
    if (name_len == 0 && c->authed) name_len = strnlen(c->player, GW_NAME_MAX);
    memcpy(name, name_len && j->name[0] == '\0' ? c->player : j->name, name_len);
    name[name_len] = '\0';
    if (c->authed) /* one entity per player on every gateway: a second login takes it over (login.c) */
        gw_login_join(c, seq, cell, j->x, j->y, name, j->payload.data, j->payload.len);
    else
        gw_session_join_as(c, seq, next_entity_id(gw), cell, j->x, j->y, name, j->payload.data,
                           j->payload.len);
}

void gw_session_join_as(gw_conn_t *c, uint64_t seq, uint64_t entity, gw_cell_t *cell, double x, double y,
                        const char *name, const uint8_t *payload, size_t payload_len)
{
    gw_t *gw = c->gw;
    if (!room_for_player(c)) return;
    gw_input_t in = {.entity = entity,
                     .seq = seq,
                     .sent_us = ts_now_us(),
                     .kind = TESSERA__V1__INPUT__KIND_JOIN,
                     .a = x,
                     .b = y,
                     .session = c->id,
                     .payload_len = (uint32_t)payload_len,
                     .payload = (uint8_t *)payload};
    ts_strlcpy(in.name, name, sizeof in.name);
    if (gw_router_queue(gw, cell, &in) != TS_OK) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, false, "cell %s is not taking inputs",
                         cell->key);
        return;
    }
    if (ts_map_put(&gw->players, entity, c) != TS_OK) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true, "out of memory");
        return;
    }
    if (c->authed) (void)ts_map_put(&gw->subs, player_key(c->player), c);
    c->entity = entity;
    c->own_gone = false;
    c->cell = cell;
    c->phase = GW_PHASE_JOINED;
    c->entity_since_us = ts_now_us();
    c->pos_x = x;
    c->pos_y = y;
    c->pos_known = true;
    greeted(c);
    gw_aoi_update(gw, c);
    send_welcome(c, false, 0); /* the entity and its resume token */
    gw_view_send_snapshot(gw, c);
    ts_debug("conn %llu: entity %llu joined in %s", (unsigned long long)c->id, (unsigned long long)entity,
             cell->key);
}

static void on_move(gw_conn_t *c, uint64_t seq, const Tessera__V1__Move *m)
{
    if (c->phase != GW_PHASE_JOINED) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "Move before Join");
        return;
    }
    if (!isfinite(m->dx) || !isfinite(m->dy)) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "move velocity must be finite");
        return;
    }
    gw_input_t in = {.entity = c->entity,
                     .seq = seq,
                     .sent_us = ts_now_us(),
                     .kind = TESSERA__V1__INPUT__KIND_MOVE,
                     .a = m->dx,
                     .b = m->dy};
    if (gw_router_queue(c->gw, c->cell, &in) != TS_OK)
        gw_session_not_stored(c, seq, seq, "the gateway's queue for the cell is full");
}

static void on_command(gw_conn_t *c, uint64_t seq, const Tessera__V1__Command *m)
{
    if (c->phase != GW_PHASE_JOINED) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "Command before Join");
        return;
    }
    if (m->payload.len > TS_GAME_PAYLOAD_MAX) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, false,
                         "command payload is %zu bytes, the limit is %d", m->payload.len,
                         TS_GAME_PAYLOAD_MAX);
        return;
    }
    gw_input_t in = {.entity = c->entity,
                     .seq = seq,
                     .sent_us = ts_now_us(),
                     .kind = TESSERA__V1__INPUT__KIND_COMMAND,
                     .type = m->type,
                     .payload_len = (uint32_t)m->payload.len,
                     .payload = m->payload.data};
    if (gw_router_queue(c->gw, c->cell, &in) != TS_OK)
        gw_session_not_stored(c, seq, seq, "the gateway's queue for the cell is full");
    else
        c->gw->commands_queued++;
}

static void on_ping(gw_conn_t *c, const Tessera__V1__Ping *p)
{
    Tessera__V1__Pong pong = TESSERA__V1__PONG__INIT;
    pong.client_time_us = p->client_time_us;
    pong.server_time_us = ts_now_us();
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG;
    f.pong = &pong;
    (void)gw_session_send(c, &f);
}

static void on_leave(gw_conn_t *c, uint64_t seq)
{
    if (c->phase != GW_PHASE_JOINED) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "Leave without Join");
        return;
    }
    ts_debug("conn %llu: entity %llu leaves", (unsigned long long)c->id, (unsigned long long)c->entity);
    release_player(c, true, seq);
}

void gw_session_on_frame(gw_conn_t *c, const uint8_t *payload, size_t len)
{
    Tessera__V1__ClientFrame *f = tessera__v1__client_frame__unpack(NULL, len, payload);
    if (f == NULL) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, true,
                         "%zu-byte frame does not decode as a ClientFrame", len);
        return;
    }
    if (f->payload_case == TESSERA__V1__CLIENT_FRAME__PAYLOAD__NOT_SET) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, true, "frame has no payload");
        goto done;
    }
    if (!rate_allow(c, ts_mono_us())) goto done;
    if (f->seq <= c->last_seq) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false,
                         "seq %llu is not above the previous %llu: frame ignored", (unsigned long long)f->seq,
                         (unsigned long long)c->last_seq);
        goto done;
    }
    c->last_seq = f->seq;
    switch (f->payload_case) {
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO:
        on_hello(c, f->hello);
        break;
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN:
        on_join(c, f->seq, f->join);
        break;
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE:
        on_move(c, f->seq, f->move);
        break;
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_COMMAND:
        on_command(c, f->seq, f->command);
        break;
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING:
        on_ping(c, f->ping);
        break;
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_LEAVE:
        on_leave(c, f->seq);
        break;
    default:
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, true, "unknown payload %d",
                         (int)f->payload_case);
        break;
    }
done:
    tessera__v1__client_frame__free_unpacked(f, NULL);
}

void gw_session_move_cell(gw_conn_t *c, gw_cell_t *to)
{
    gw_cell_t *from = c->cell;
    if (to == NULL || to == from || c->phase != GW_PHASE_JOINED) return;
    c->cell = to;
    gw_aoi_update(c->gw, c);

    Tessera__V1__CellId from_pb, to_pb;
    ts_proto_cell_init(&to_pb, &to->id);
    Tessera__V1__CellChanged cc = TESSERA__V1__CELL_CHANGED__INIT;
    if (from != NULL) {
        ts_proto_cell_init(&from_pb, &from->id);
        cc.from = &from_pb;
    }
    cc.to = &to_pb;
    cc.entity = c->entity;
    char token[1024];
    make_token(c, token, sizeof token);
    cc.resume_token = token;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_CELL_CHANGED;
    f.cell_changed = &cc;
    (void)gw_session_send(c, &f);
    ts_debug("entity %llu: %s -> %s", (unsigned long long)c->entity, from ? from->key : "-", to->key);
}

void gw_session_hello_expired(gw_conn_t *c)
{
    gw_t *gw = c->gw;
    if (c->closing) return;
    if (c->resuming) {
        if (ts_map_get(&gw->homes, c->entity) != NULL) {
            c->resuming = false;
            return;
        }
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_RESUME_REFUSED, true,
                         "entity %llu was not seen within %lld s: it is gone", (unsigned long long)c->entity,
                         (long long)gw->cfg->gateway_hello_timeout_s);
        return;
    }
    if (c->greeted) return;
    gw->closed_hello++;
    gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_TIMEOUT, true, "no Hello or Join within %lld s",
                     (long long)gw->cfg->gateway_hello_timeout_s);
}
