/* Internal interface of tessera-client: one gateway connection plus what the
 * user's commands learned from it (the player's entity and its last state). */
#ifndef TS_CLI_H
#define TS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/client.h"
#include "tessera/proto.h"

/* Ping payload that marks an internal round trip (not printed). */
#define CLI_SYNC_MARK 1
/* Ping payload of the keepalive (gateway.idle_timeout_s), not printed. */
#define CLI_KEEPALIVE_MARK 2
/* A keepalive Ping goes out when nothing was sent for this long. */
#define CLI_KEEPALIVE_US 5000000ull

typedef struct {
    ts_client_t *conn;
    FILE *out;
    uint64_t entity; /* 0 until a Snapshot named it */
    uint64_t errors; /* Error frames received */
    bool closed;     /* the gateway closed the connection */
    bool me_known;
    double me_x, me_y;
    uint64_t me_applied, me_last_seq;
    uint64_t last_rtt_us;
    uint64_t deltas_quiet; /* Delta frames received while not printing them */
    const char *token;     /* JWT for the Hello (--token), or NULL */
    const char *resume;    /* resume token for the Hello (--resume), or NULL */
    uint64_t last_sent_us; /* monotonic: last Hello or keepalive */
    uint64_t ack;          /* newest last_input_seq from a Delta or Snapshot */
    bool resumed;          /* the Welcome said the entity is ours again */
} cli_t;

/* How cli_pump prints Delta frames. */
typedef enum { CLI_PRINT_ALL = 0, CLI_QUIET_DELTAS } cli_print_t;

/* "<world>.<cx>.<cy>.<depth>.<sub>" or "-" for NULL. */
void cli_format_cell(const Tessera__V1__CellId *pb, char *buf, size_t cap);
/* Prints a game payload: "text" if it is printable ASCII, else 0x<hex>. */
void cli_print_payload(FILE *out, const uint8_t *p, size_t len);
/* Parses a payload argument: 0x<hex> gives those bytes, anything else its
 * text. Returns the length, or -1 if it does not fit in cap (or bad hex). */
long cli_parse_payload(const char *arg, uint8_t *out, size_t cap);
/* Prints one frame as one line (Delta frames only with CLI_PRINT_ALL) and
 * updates what the client knows about its entity. */
void cli_handle_frame(cli_t *c, const Tessera__V1__ServerFrame *f, cli_print_t mode);
/* Receives and handles frames for up to timeout_ms; returns early, with
 * true, once a frame whose payload is `until` arrives (an Error counts too
 * when until != 0), or a Pong carrying CLI_SYNC_MARK when until is PONG and
 * sync is true. False on timeout or when the connection closed. */
bool cli_pump(cli_t *c, int64_t timeout_ms, int until, bool sync, cli_print_t mode);
/* Sends an internal Ping and waits for its Pong: every frame the gateway
 * sent in reply to earlier frames has been handled after it. */
bool cli_sync(cli_t *c, int64_t timeout_ms);
/* Sends Hello with the token and resume token, if any. */
ts_status_t cli_hello(cli_t *c);

/* Runs commands from `in`. script: stop at the first failing line (an Error
 * frame or a failed command, unless the line starts with '-'), returning 1.
 * Otherwise returns 0 at "quit" or end of input. */
int cli_repl(cli_t *c, FILE *in, bool script);

#endif
