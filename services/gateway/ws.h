/* WebSocket transport and the world map's HTTP listener (ws.c).
 *
 * `gateway.ws_listen` accepts connections that speak HTTP/1.1 first:
 *
 *   GET /ws          upgraded to a WebSocket; every binary message carries
 *                    one ClientFrame / ServerFrame protobuf (no length
 *                    prefix); the connection is a gw_conn_t like a TCP one
 *   GET /api/world   JSON: the world, the cells the gateway knows and the
 *                    workers' latest heartbeats
 *   GET /api/events  the same pushed as server-sent events: the world once,
 *                    then registry changes and heartbeats as they come (the
 *                    map's feed)
 *   GET /, /<file>   the world map page and its assets
 *
 * conn.c calls the gw_ws_* connection hooks for connections whose `ws` is
 * set; everything runs on the gateway's loop thread except the heartbeat
 * subscription's callback, which only updates a small table under a mutex;
 * registry changes come from the gateway's own subscription
 * (gw_ws_registry_change). */
#ifndef TS_GATEWAY_WS_H
#define TS_GATEWAY_WS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "gateway.h"

/* Largest HTTP request head (request line + headers) accepted. */
#define GW_WS_MAX_HEAD 8192
/* Output queued for a WebSocket before its upgrade finished. */
#define GW_WS_MAX_EARLY ((size_t)64 << 10)

/* Starts the listener on gateway.ws_listen, loads the map's assets and
 * subscribes to the workers' heartbeats. */
ts_status_t gw_ws_listen(gw_t *gw);
/* Stops accepting (idempotent) and unsubscribes. */
void gw_ws_listen_close(gw_t *gw);
/* Frees what gw_ws_listen set up (after the loop ended). */
void gw_ws_server_free(gw_t *gw);
/* A RegistryChange the gateway applied (loop thread): kept for the map's
 * push feed while viewers are connected. */
void gw_ws_registry_change(gw_t *gw, const ts_cell_entry_t *e, uint64_t version);
/* Whether `server` is the WebSocket listener. */
bool gw_ws_is_server(gw_t *gw, const uv_stream_t *server);

/* A connection accepted on the WebSocket listener: sets c->ws. False when
 * out of memory (the caller closes the connection). */
bool gw_ws_attach(gw_conn_t *c);
/* Bytes read from the peer (handshake, then WebSocket frames); returns
 * how many ClientFrame messages it handed to the session. */
size_t gw_ws_on_read(gw_conn_t *c, const uint8_t *data, size_t len);
/* Sends the pieces, a sequence of length-prefixed ServerFrames (as the TCP
 * transport would write them), as one binary message per frame. */
ts_status_t gw_ws_writev(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t total);
/* The connection is about to shut down its write side: a close frame. */
void gw_ws_closing(gw_conn_t *c);
/* Frees c->ws (the connection's close callback). */
void gw_ws_free(gw_conn_t *c);

#endif
