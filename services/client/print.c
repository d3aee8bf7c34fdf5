/* Receiving and printing server frames, one readable line each:
 *
 *   welcome entity=0 cell=- gateway=gateway-1 cell_size=100 protocol=1
 *   snapshot entity=281474976710657 cell=0.-1.0.0.0 epoch=1 n=3
 *   delta tick=812 n=4 me=(12.5,10.0) applied=7
 *   cell_changed 0.-1.0.0.0 -> 0.0.0.0.0
 *   pong rtt=0.214ms
 *   error MALFORMED: frame has no payload (fatal)
 *
 * Invariant: cli_t's view of its own entity only moves forward with frames
 * that name it; nothing is guessed. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "tessera/util.h"

void cli_format_cell(const Tessera__V1__CellId *pb, char *buf, size_t cap)
{
    if (pb == NULL) {
        snprintf(buf, cap, "-");
        return;
    }
    snprintf(buf, cap, "%u.%d.%d.%u.%llu", pb->world, pb->cx, pb->cy, pb->depth, (unsigned long long)pb->sub);
}

static const char *error_name(Tessera__V1__ErrorCode code)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&tessera__v1__error_code__descriptor, (int)code);
    if (v == NULL) return "UNKNOWN";
    return strncmp(v->name, "ERROR_", 6) == 0 ? v->name + 6 : v->name;
}

static void note_me(cli_t *c, Tessera__V1__EntityState *const *ents, size_t n, bool *seen)
{
    *seen = false;
    if (c->entity == 0) return;
    for (size_t i = 0; i < n; i++) {
        if (ents[i] != NULL && ents[i]->id == c->entity) {
            c->me_known = true;
            c->me_x = ents[i]->x;
            c->me_y = ents[i]->y;
            c->me_applied = ents[i]->inputs_applied;
            c->me_last_seq = ents[i]->last_input_seq;
            *seen = true;
        }
    }
}

void cli_print_payload(FILE *out, const uint8_t *p, size_t len)
{
    bool text = true;
    for (size_t i = 0; i < len && text; i++)
        text = p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\';
    if (text) {
        fprintf(out, "\"%.*s\"", (int)len, (const char *)p);
        return;
    }
    fprintf(out, "0x");
    for (size_t i = 0; i < len; i++)
        fprintf(out, "%02x", p[i]);
}

void cli_handle_frame(cli_t *c, const Tessera__V1__ServerFrame *f, cli_print_t mode)
{
    char cell[TS_CELL_STR_MAX], to[TS_CELL_STR_MAX];
    bool seen;
    cli_format_cell(f->cell, cell, sizeof cell);
    switch (f->payload_case) {
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME:
        fprintf(c->out, "welcome entity=%llu cell=%s gateway=%s cell_size=%g protocol=%u",
                (unsigned long long)f->welcome->entity, cell, f->welcome->gateway, f->welcome->cell_size,
                f->welcome->protocol_version);
        if (f->welcome->player != NULL && f->welcome->player[0] != '\0')
            fprintf(c->out, " player=%s", f->welcome->player);
        if (f->welcome->resumed) {
            c->resumed = true;
            if (f->welcome->entity != 0) c->entity = f->welcome->entity;
            fprintf(c->out, " resumed last_input_seq=%llu", (unsigned long long)f->welcome->last_input_seq);
        }
        if (f->welcome->resume_token != NULL && f->welcome->resume_token[0] != '\0')
            fprintf(c->out, " resume_token=%s", f->welcome->resume_token);
        fprintf(c->out, "\n");
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT:
        c->entity = f->snapshot->entity;
        if (f->snapshot->last_input_seq > c->ack) c->ack = f->snapshot->last_input_seq;
        note_me(c, f->snapshot->entities, f->snapshot->n_entities, &seen);
        fprintf(c->out, "snapshot entity=%llu cell=%s epoch=%llu n=%zu\n",
                (unsigned long long)f->snapshot->entity, cell, (unsigned long long)f->epoch,
                f->snapshot->n_entities);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA:
        note_me(c, f->delta->entities, f->delta->n_entities, &seen);
        if (f->delta->last_input_seq > c->ack) c->ack = f->delta->last_input_seq;
        if (mode != CLI_PRINT_ALL) {
            c->deltas_quiet++;
            break;
        }
        fprintf(c->out, "delta tick=%llu n=%zu", (unsigned long long)f->delta->tick, f->delta->n_entities);
        if (seen)
            fprintf(c->out, " me=(%.1f,%.1f) applied=%llu", c->me_x, c->me_y,
                    (unsigned long long)c->me_applied);
        else
            fprintf(c->out, " me=-");
        if (f->delta->n_removed > 0) fprintf(c->out, " removed=%zu", f->delta->n_removed);
        if (f->delta->last_input_seq != 0)
            fprintf(c->out, " ack=%llu", (unsigned long long)f->delta->last_input_seq);
        fprintf(c->out, "\n");
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_CELL_CHANGED:
        cli_format_cell(f->cell_changed->from, cell, sizeof cell);
        cli_format_cell(f->cell_changed->to, to, sizeof to);
        fprintf(c->out, "cell_changed %s -> %s\n", cell, to);
        break;
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG: {
        uint64_t now = ts_now_us(), sent = f->pong->client_time_us;
        c->last_rtt_us = now > sent ? now - sent : 0;
        if (sent != CLI_SYNC_MARK && sent != CLI_KEEPALIVE_MARK)
            fprintf(c->out, "pong rtt=%.3fms\n", (double)c->last_rtt_us / 1000.0);
        break;
    }
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_EVENT: {
        const Tessera__V1__Event *ev = f->event;
        fprintf(c->out, "event type=%u", ev->type);
        if (ev->positional)
            fprintf(c->out, " at=(%.2f, %.2f)", ev->x, ev->y);
        else
            fprintf(c->out, " entity=%llu", (unsigned long long)ev->entity);
        fprintf(c->out, " tick=%llu payload=", (unsigned long long)ev->tick);
        cli_print_payload(c->out, ev->payload.data, ev->payload.len);
        fprintf(c->out, "\n");
        break;
    }
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_WORLD_COUNTERS: {
        const Tessera__V1__WorldCounters *wc = f->world_counters;
        fprintf(c->out, "counters");
        for (size_t i = 0; i < wc->n_values; i++)
            fprintf(c->out, " %zu=%lld", i, (long long)wc->values[i]);
        if (wc->n_values == 0) fprintf(c->out, " (all 0)");
        fprintf(c->out, "\n");
        break;
    }
    case TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR:
        c->errors++;
        fprintf(c->out, "error %s: %s%s\n", error_name(f->error->code), f->error->message,
                f->error->fatal ? " (fatal)" : "");
        break;
    default:
        fprintf(c->out, "frame seq=%llu with no payload\n", (unsigned long long)f->seq);
        break;
    }
    fflush(c->out);
}

bool cli_pump(cli_t *c, int64_t timeout_ms, int until, bool sync, cli_print_t mode)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000;
    while (!c->closed) {
        uint64_t now = ts_mono_us();
        int64_t left = now < deadline ? (int64_t)((deadline - now) / 1000) : 0;
        if (now - c->last_sent_us >= CLI_KEEPALIVE_US) { /* the gateway closes silent connections */
            c->last_sent_us = now;
            if (ts_client_ping(c->conn, CLI_KEEPALIVE_MARK) != TS_OK) c->closed = true;
        }
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(c->conn, left > 1000 ? 1000 : left > 0 ? left : 1, &f);
        if (st == TS_ERR_TIMEOUT) {
            if (ts_mono_us() < deadline) continue;
            return false;
        }
        if (st != TS_OK) {
            c->closed = true;
            fprintf(c->out, "closed: %s\n", ts_status_str(st));
            fflush(c->out);
            return false;
        }
        cli_handle_frame(c, f, mode);
        bool done = false;
        if (until != 0) {
            if ((int)f->payload_case == until)
                done = until != TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG
                           ? true
                           : (sync ? f->pong->client_time_us == CLI_SYNC_MARK
                                   : f->pong->client_time_us != CLI_KEEPALIVE_MARK);
            else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_ERROR)
                done = !sync;
        }
        tessera__v1__server_frame__free_unpacked(f, NULL);
        if (done) return true;
    }
    return false;
}

bool cli_sync(cli_t *c, int64_t timeout_ms)
{
    if (c->closed || ts_client_ping(c->conn, CLI_SYNC_MARK) != TS_OK) return false;
    return cli_pump(c, timeout_ms, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG, true, CLI_PRINT_ALL);
}

ts_status_t cli_hello(cli_t *c)
{
    Tessera__V1__Hello h = TESSERA__V1__HELLO__INIT;
    h.protocol_version = TS_PROTOCOL_VERSION;
    h.client_name = (char *)"tessera-client";
    h.token = (char *)(c->token ? c->token : "");
    h.resume_token = (char *)(c->resume ? c->resume : "");
    Tessera__V1__ClientFrame f = TESSERA__V1__CLIENT_FRAME__INIT;
    f.payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
    f.hello = &h;
    c->last_sent_us = ts_mono_us();
    return ts_client_send(c->conn, &f);
}
