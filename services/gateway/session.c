/* The client protocol, one state machine per connection:
 *
 *   NEW --Join--> JOINED --Leave / disconnect--> LEFT
 *
 * Hello and Ping are answered in any phase; Move needs JOINED; Join is
 * accepted once per connection. Every frame passes, in order: decoding (a
 * frame that does not decode, or has no payload, is fatal), the rate limit
 * (token bucket of gateway.rate_limit frames/s, burst as large; sustained
 * flooding above 10x the limit for 2 s is fatal), and the sequence check
 * (seq strictly increasing, else the frame is ignored).
 *
 * Invariant: a JOINED connection is in gw->players under its entity id and
 * holds AOI references; leaving that phase always goes through release_player. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define US_PER_S 1000000ull
#define FLOOD_FACTOR 10
#define FLOOD_WINDOWS 2

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
    c->window_start_us = now;
}

/* True if the frame may be handled; false if it is dropped (or the
 * connection is being closed for flooding). */
static bool rate_allow(gw_conn_t *c, uint64_t now)
{
    double rate = (double)c->gw->cfg->gateway_rate_limit;

    uint64_t window = now - c->window_start_us;
    if (window >= US_PER_S) {
        bool flooded = (double)c->window_frames > FLOOD_FACTOR * rate * ((double)window / US_PER_S);
        c->flood_windows = (flooded && window < 2 * US_PER_S) ? c->flood_windows + 1 : 0;
        c->window_start_us = now;
        c->window_frames = 0;
        if (c->flood_windows >= FLOOD_WINDOWS) {
            gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_RATE_LIMIT, true,
                             "flooding: more than %d x %.0f frames/s for %d s", FLOOD_FACTOR, rate,
                             FLOOD_WINDOWS);
            return false;
        }
    }
    c->window_frames++;

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

static void release_player(gw_conn_t *c, bool queue_leave, uint64_t seq)
{
    gw_t *gw = c->gw;
    if (c->phase != GW_PHASE_JOINED) return;
    if (queue_leave && c->cell != NULL) {
        gw_input_t in = {
            .entity = c->entity, .seq = seq, .sent_us = ts_now_us(), .kind = TESSERA__V1__INPUT__KIND_LEAVE};
        if (gw_router_queue(gw, c->cell, &in) != TS_OK)
            ts_warn("entity %llu: Leave could not be queued", (unsigned long long)c->entity);
    }
    if (ts_map_get(&gw->players, c->entity) == c) ts_map_del(&gw->players, c->entity);
    c->phase = GW_PHASE_LEFT;
    gw_aoi_update(gw, c);
    c->cell = NULL;
    c->awaiting_left = NULL;
    c->ngone = 0;
}

void gw_session_release(gw_conn_t *c)
{
    release_player(c, true, c->last_seq + 1);
}

static void on_hello(gw_conn_t *c, const Tessera__V1__Hello *h)
{
    if (h->protocol_version != 0 && h->protocol_version != TS_PROTOCOL_VERSION) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false,
                         "protocol version %u is not supported (this gateway speaks %u)", h->protocol_version,
                         TS_PROTOCOL_VERSION);
        return;
    }
    Tessera__V1__Welcome w = TESSERA__V1__WELCOME__INIT;
    w.protocol_version = TS_PROTOCOL_VERSION;
    w.entity = c->phase == GW_PHASE_JOINED ? c->entity : 0;
    w.cell_size = c->gw->world.cell_size;
    w.gateway = c->gw->name;
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME;
    f.welcome = &w;
    (void)gw_session_send(c, &f);
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
    if (c->phase != GW_PHASE_NEW) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false,
                         "already joined: one Join per connection");
        return;
    }
    if (!isfinite(j->x) || !isfinite(j->y)) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_PROTOCOL, false, "join position must be finite");
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
    ts_cell_t id;
    ts_cell_from_pos(gw->world.id, gw->world.cell_size, 0, j->x, j->y, &id);
    gw_cell_t *cell = gw_cell_find(gw, &id);
    if (cell == NULL || !gw_cell_live(cell)) {
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&id, key, sizeof key);
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNKNOWN_CELL, false,
                         "cell %s at (%g, %g) is not in the registry", key, j->x, j->y);
        return;
    }
    uint64_t entity = next_entity_id(gw);
    gw_input_t in = {.entity = entity,
                     .seq = seq,
                     .sent_us = ts_now_us(),
                     .kind = TESSERA__V1__INPUT__KIND_JOIN,
                     .a = j->x,
                     .b = j->y};
    memcpy(in.name, j->name, name_len + 1);
    if (gw_router_queue(gw, cell, &in) != TS_OK) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, false, "cell %s is not taking inputs",
                         cell->key);
        return;
    }
    if (ts_map_put(&gw->players, entity, c) != TS_OK) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true, "out of memory");
        return;
    }
    c->entity = entity;
    c->cell = cell;
    c->phase = GW_PHASE_JOINED;
    gw_aoi_update(gw, c);
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
    Tessera__V1__ServerFrame f = TESSERA__V1__SERVER_FRAME__INIT;
    f.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_CELL_CHANGED;
    f.cell_changed = &cc;
    (void)gw_session_send(c, &f);
    ts_debug("entity %llu: %s -> %s", (unsigned long long)c->entity, from ? from->key : "-", to->key);
}
