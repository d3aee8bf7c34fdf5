/* Resume tokens: a player's proof that it may take its entity back, on any
 * gateway, after its connection dropped (HMAC-SHA256 under
 * gateway.resume_secret).
 *
 * Text form: entity.world.cx.cy.depth.sub.exp.player-hex.mac, where mac is
 * the hex HMAC-SHA256 of everything before it. The gateway that welcomes a
 * player signs one (ts_resume_token_make); a gateway where the player comes
 * back checks it (ts_resume_token_check) and sends the token's fields with
 * its Attach; the worker that owns the entity verifies them again
 * (ts_resume_token_verify) before another gateway may take the entity over,
 * so a gateway's bus credentials alone cannot. Every gateway and every
 * worker must hold the same secret. */
#ifndef TESSERA_RESUME_H
#define TESSERA_RESUME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/status.h"

#define TS_RESUME_PLAYER_MAX 128 /* bytes of a player id (a JWT sub) */
#define TS_RESUME_MAC_LEN 32
#define TS_RESUME_MAC_HEX (2 * TS_RESUME_MAC_LEN)
/* Longest message ts_resume_msg_sign takes. */
#define TS_RESUME_MSG_MAX 1024
/* Longest text form (with its NUL). */
#define TS_RESUME_TOKEN_MAX 600

typedef struct {
    uint8_t bytes[32];
    size_t len;
} ts_resume_key_t;

/* A token's fields. player is NUL-terminated ("" for an anonymous player). */
typedef struct {
    uint64_t entity;
    ts_cell_t cell; /* where the entity was last known */
    uint64_t exp_s; /* unix seconds */
    char player[TS_RESUME_PLAYER_MAX + 1];
    uint8_t mac[TS_RESUME_MAC_LEN];
} ts_resume_token_t;

/* The key from a secret (a longer one is folded in by hashing). An empty
 * secret gives a random key: tokens then work only in this process.
 * Returns TS_ERR_IO if no random bytes could be had. */
ts_status_t ts_resume_key_init(ts_resume_key_t *key, const char *secret);
/* Wipes the key. */
void ts_resume_key_clear(ts_resume_key_t *key);

/* Signs t's entity, cell, exp_s and player into t->mac. */
void ts_resume_token_sign(const ts_resume_key_t *key, ts_resume_token_t *t);
/* TS_OK: t->mac is the MAC of its fields and t->exp_s is after now_s.
 * TS_ERR_INVALID: the MAC does not match (another key, another entity, a
 * changed field); TS_ERR_TIMEOUT: the token expired. Constant time in the
 * MAC comparison. */
ts_status_t ts_resume_token_verify(const ts_resume_key_t *key, const ts_resume_token_t *t, uint64_t now_s);

/* The text form of t into out (TS_RESUME_TOKEN_MAX is always enough);
 * TS_ERR_RANGE if cap is too small. */
ts_status_t ts_resume_token_format(const ts_resume_token_t *t, char *out, size_t cap);
/* Parses the text form (len bytes, no NUL needed) without checking the
 * MAC. TS_ERR_PARSE if it is not one. */
ts_status_t ts_resume_token_parse(const char *text, size_t len, ts_resume_token_t *t);

/* Any other message between gateways (a login claim): the hex HMAC-SHA256
 * of label "\n" msg under the same key, so a MAC made for one kind of
 * message (one label) is no MAC of another kind, nor of a token. Sign:
 * TS_ERR_RANGE if len > TS_RESUME_MSG_MAX. Verify: constant time in the
 * comparison; false for a MAC of another key, label or message. */
ts_status_t ts_resume_msg_sign(const ts_resume_key_t *key, const char *label, const char *msg, size_t len,
                               char out[TS_RESUME_MAC_HEX + 1]);
bool ts_resume_msg_verify(const ts_resume_key_t *key, const char *label, const char *msg, size_t len,
                          const char *mac_hex, size_t mac_len);

/* Make: fills and signs a token and writes its text form. */
ts_status_t ts_resume_token_make(const ts_resume_key_t *key, uint64_t entity, const ts_cell_t *cell,
                                 const char *player, uint64_t exp_s, char *out, size_t cap);
/* Check: parse + verify against now (wall clock). TS_ERR_PARSE for a text
 * that is not a token or whose MAC does not match, TS_ERR_TIMEOUT for an
 * expired one; t is filled only on TS_OK. */
ts_status_t ts_resume_token_check(const ts_resume_key_t *key, const char *text, ts_resume_token_t *t);

#endif
