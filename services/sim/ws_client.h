/* tessera-sim --via-gateway ws://...: one client's WebSocket, without I/O.
 *
 * The caller owns the socket: it writes what ts_simws_request and
 * ts_simws_encode put into its buffers and hands what it reads to
 * ts_simws_upgrade (until the 101 answer is complete) and then to
 * ts_simws_feed. Frames are built and parsed by wslay's frame layer; the
 * upgrade request and answer are small text. Memory per client: wslay's
 * frame context (about 4 KB, its input buffer), the upgrade answer while it
 * is read (at most TS_SIMWS_MAX_HEAD bytes) and a message that arrived in
 * pieces (at most the max_msg given to ts_simws_new). */
#ifndef TESSERA_SIM_WS_CLIENT_H
#define TESSERA_SIM_WS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

/* Longest upgrade answer head (status line and headers) accepted. */
#define TS_SIMWS_MAX_HEAD 2048
/* Most bytes a client frame adds to its payload: 2 + 8 (length) + 4 (mask). */
#define TS_SIMWS_FRAME_OVERHEAD 14
/* Control frame payloads are at most this long (RFC 6455 5.5). */
#define TS_SIMWS_MAX_CONTROL 125

#define TS_SIMWS_BINARY 0x2
#define TS_SIMWS_CLOSE 0x8
#define TS_SIMWS_PING 0x9
#define TS_SIMWS_PONG 0xA

typedef struct ts_simws ts_simws_t;

/* What ts_simws_feed found: a whole binary message, a ping (to be answered
 * with a pong carrying the same bytes) or a close (payload: the code and
 * reason). Pongs are consumed silently. Returns false to stop the feed
 * (the client is gone); the rest of the bytes are then ignored. */
typedef bool (*ts_simws_on_msg_fn)(void *ud, uint8_t opcode, const uint8_t *payload, size_t len);

/* A new WebSocket; seed drives its key and its frames' masks. Messages
 * longer than max_msg are refused. NULL when out of memory. */
ts_simws_t *ts_simws_new(uint64_t seed, size_t max_msg);
void ts_simws_free(ts_simws_t *w);

/* Writes the upgrade request (GET path on host:port, a fresh
 * Sec-WebSocket-Key) into out; returns its length, 0 if it does not fit
 * cap (or the head buffer cannot be allocated). */
size_t ts_simws_request(ts_simws_t *w, const char *host, int port, const char *path, char *out, size_t cap);

/* Reads the answer to the upgrade request. TS_ERR_AGAIN: its head is not
 * complete yet (all n bytes taken); TS_OK: upgraded, *used bytes of data
 * were the head (the rest are already frames); TS_ERR_UNAVAILABLE: the
 * gateway answered something else than 101 with the right
 * Sec-WebSocket-Accept; TS_ERR_MALFORMED: a head longer than
 * TS_SIMWS_MAX_HEAD. On an error why (cap bytes) says what came. */
ts_status_t ts_simws_upgrade(ts_simws_t *w, const uint8_t *data, size_t n, size_t *used, char *why,
                             size_t cap);
bool ts_simws_upgraded(const ts_simws_t *w);

/* Parses frames from data[0..n): calls on_msg for each whole binary
 * message (handed straight from wslay's buffer when it arrived in one
 * piece), ping and close. Partial frames are kept for the next call.
 * TS_ERR_MALFORMED: a frame RFC 6455 forbids from a server (masked,
 * reserved bits, unknown opcode, a text message, a continuation without a
 * start, an oversized control frame); TS_ERR_OVERSIZED: a message longer
 * than max_msg; TS_ERR_NOMEM. */
ts_status_t ts_simws_feed(ts_simws_t *w, const uint8_t *data, size_t n, ts_simws_on_msg_fn on_msg, void *ud);

/* Builds one masked, final frame of opcode carrying p[0..len) into out;
 * returns its length, 0 if it does not fit cap (len +
 * TS_SIMWS_FRAME_OVERHEAD always does). */
size_t ts_simws_encode(ts_simws_t *w, uint8_t opcode, const uint8_t *p, size_t len, uint8_t *out, size_t cap);

#endif
