/* One authenticated player, one entity, on every gateway (login.c), and the
 * session.c entry points it finishes a login with. */
#ifndef TS_GW_LOGIN_H
#define TS_GW_LOGIN_H

#include "gateway.h"

/* How long a login waits for the answers to its claim before it spawns a
 * new entity. */
#define GW_LOGIN_WAIT_MS 500
/* Logins waiting for answers at once (more: ERROR_UNAVAILABLE). */
#define GW_LOGIN_PENDING_MAX 4096

/* The claim subject every gateway and worker of a world listens on. */
#define GW_LOGIN_CLAIM_FMT "tessera.player.%u.claim"

/* The entity id of player `sub` in `world`: the same on every gateway, top
 * bit set (gateway-numbered ids of anonymous players have it clear). */
uint64_t gw_login_entity(uint32_t world, const char *sub);

/* Subscribes to the world's claims and to this process's answers. */
ts_status_t gw_login_start(gw_t *gw);
/* Drops the subscriptions and the timer (gw_stop); no callback runs after. */
void gw_login_stop(gw_t *gw);
void gw_login_free(gw_t *gw);
/* A claim or an answer, on the loop (from the inbox). */
void gw_login_on_msg(gw_t *gw, const uint8_t *data, size_t len);

/* Join of an authenticated connection: its player's entity is taken over
 * where it lives (a connection holding it, here or on another gateway, is
 * closed) or, if no gateway or worker answers within GW_LOGIN_WAIT_MS,
 * spawned at (x, y) in `cell`. payload: Join.payload (borrowed, at most
 * TS_GAME_PAYLOAD_MAX bytes), for the game module's on_join. */
void gw_login_join(gw_conn_t *c, uint64_t seq, gw_cell_t *cell, double x, double y, const char *name,
                   const uint8_t *payload, size_t payload_len);
/* A resume took the connection's entity: other gateways let go of it. */
void gw_login_announce(gw_conn_t *c);
/* The connection is closing: a login it waits for is dropped. */
void gw_login_forget(gw_conn_t *c);

/* session.c: spawn `entity` for the connection (Join), or take `entity`
 * over in `cell` (Attach; Welcome{resumed} with last_input_seq at least
 * ack_floor). */
void gw_session_join_as(gw_conn_t *c, uint64_t seq, uint64_t entity, gw_cell_t *cell, double x, double y,
                        const char *name, const uint8_t *payload, size_t payload_len);
void gw_session_take_over(gw_conn_t *c, uint64_t entity, gw_cell_t *cell, uint64_t ack_floor);

#endif
