/* A blocking client connection to a gateway (tessera-client, tests, sim in
 * gateway mode). Frames are sent and received whole; not thread-safe. */
#ifndef TESSERA_CLIENT_H
#define TESSERA_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/frame.h"
#include "tessera/proto.h"
#include "tessera/status.h"

typedef struct ts_client ts_client_t;

/* Connects to host:port (TCP, TCP_NODELAY). timeout_ms bounds the connect. */
ts_status_t ts_client_connect(ts_client_t **out, const char *host, int port, int64_t timeout_ms);
/* The same over WebSocket: connects, upgrades GET /ws (with an Origin
 * header unless origin is NULL), then every frame is one binary message.
 * TS_ERR_UNAVAILABLE: the gateway answered the upgrade with anything but
 * 101. */
ts_status_t ts_client_connect_ws(ts_client_t **out, const char *host, int port, const char *origin,
                                 int64_t timeout_ms);
void ts_client_destroy(ts_client_t *c);

/* Sends a frame. If frame->seq is 0 the client fills the next sequence
 * number: one above the last sent, or above Welcome.last_input_seq once a
 * Welcome{resumed} was received (the entity's applied inputs). */
ts_status_t ts_client_send(ts_client_t *c, Tessera__V1__ClientFrame *frame);
/* Sends raw bytes on the socket (tests: malformed frames). */
ts_status_t ts_client_send_raw(ts_client_t *c, const void *data, size_t len);
/* Sends bytes as one frame of the transport: length-prefixed on TCP, one
 * binary message on WebSocket (tests: payloads that are no ClientFrame). */
ts_status_t ts_client_send_message(ts_client_t *c, const void *data, size_t len);
/* Receives the next frame within timeout_ms. On TS_OK the caller frees *out
 * with tessera__v1__server_frame__free_unpacked(*out, NULL). TS_ERR_TIMEOUT,
 * TS_ERR_CLOSED (peer closed), TS_ERR_MALFORMED otherwise. */
ts_status_t ts_client_recv(ts_client_t *c, int64_t timeout_ms, Tessera__V1__ServerFrame **out);

/* Convenience wrappers that fill a ClientFrame and send it. */
ts_status_t ts_client_hello(ts_client_t *c, const char *name);
ts_status_t ts_client_join(ts_client_t *c, double x, double y, const char *name);
/* Join with a payload for the game module's on_join (at most 256 bytes;
 * the gateway refuses longer ones with ERROR_MALFORMED). */
ts_status_t ts_client_join_payload(ts_client_t *c, double x, double y, const char *name, const void *payload,
                                   size_t len);
ts_status_t ts_client_move(ts_client_t *c, double dx, double dy);
/* A game Command (type, payload of at most 256 bytes) for the module's
 * on_command; numbered like Move (ts_client_last_seq gives its seq, acked
 * by last_input_seq). Events come back as ServerFrames with payload_case
 * TESSERA__V1__SERVER_FRAME__PAYLOAD_EVENT from ts_client_recv. */
ts_status_t ts_client_command(ts_client_t *c, uint32_t type, const void *payload, size_t len);
ts_status_t ts_client_ping(ts_client_t *c, uint64_t client_time_us);
ts_status_t ts_client_leave(ts_client_t *c);
/* Sequence number the last send used. */
uint64_t ts_client_last_seq(const ts_client_t *c);

/* World counters (WorldCounters frames: the game module's counters summed
 * over the world, e.g. tag's team scores). */
#define TS_CLIENT_COUNTERS 8 /* TS_GAME_COUNTERS */
/* The values of the latest WorldCounters ts_client_recv returned (counters
 * it did not carry are 0) into out (may be NULL); false (out all 0) if
 * none arrived yet. */
bool ts_client_counters(const ts_client_t *c, int64_t out[TS_CLIENT_COUNTERS]);

#endif
