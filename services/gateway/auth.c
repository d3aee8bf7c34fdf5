/* Player JWTs (libjwt) and resume tokens (HMAC-SHA256, OpenSSL).
 *
 * A JWT is accepted with HS256 under gateway.auth.secret or RS256 under the
 * public key in gateway.auth.public_key, and only with the algorithm its
 * key is for (an HS256 token "signed" with the public key is refused). It
 * must carry `sub` and `exp` in the future; `nbf`, if present, must be past;
 * `iss` and `aud` must match when configured.
 *
 * A resume token is text: entity.world.cx.cy.depth.sub.exp.player-hex.mac
 * where mac is the hex HMAC-SHA256 of everything before it under
 * gateway.resume_secret (the same on every gateway, so a player resumes on
 * any of them). The token names the cell the entity was last known in; an
 * input sent there reaches the entity wherever it went since (the worker
 * forwards inputs of departed entities). */
#include <errno.h>
#include <inttypes.h>
#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define MAC_HEX (2 * 32)

ts_status_t gw_auth_init(gw_t *gw)
{
    const ts_config_t *cfg = gw->cfg;
    if (cfg->gateway_resume_secret[0] != '\0') {
        size_t n = strlen(cfg->gateway_resume_secret);
        gw->resume_key_len = n < sizeof gw->resume_key ? n : sizeof gw->resume_key;
        /* a longer secret is folded in by hashing */
        if (n > sizeof gw->resume_key) {
            unsigned int len = 0;
            HMAC(EVP_sha256(), "tessera-resume", 14, (const unsigned char *)cfg->gateway_resume_secret, n,
                 gw->resume_key, &len);
            gw->resume_key_len = len;
        } else {
            memcpy(gw->resume_key, cfg->gateway_resume_secret, n);
        }
    } else {
        if (RAND_bytes(gw->resume_key, sizeof gw->resume_key) != 1) return TS_ERR_IO;
        gw->resume_key_len = sizeof gw->resume_key;
        ts_warn("gateway.resume_secret is not set: resume tokens only work on this gateway process");
    }
    if (cfg->gateway_auth_public_key[0] != '\0') {
        char *pem = NULL;
        ts_status_t st = ts_read_file(cfg->gateway_auth_public_key, 1u << 20, &pem, &gw->auth_rs_key_len);
        gw->auth_rs_key = pem;
        if (st != TS_OK) {
            ts_error("gateway.auth.public_key: cannot read %s: %s", cfg->gateway_auth_public_key,
                     ts_status_str(st));
            return TS_ERR_CONFIG;
        }
    }
    if (cfg->gateway_auth_required && cfg->gateway_auth_secret[0] == '\0' && gw->auth_rs_key == NULL) {
        ts_error(
            "gateway.auth.required is set but neither gateway.auth.secret nor gateway.auth.public_key is");
        return TS_ERR_CONFIG;
    }
    return TS_OK;
}

void gw_auth_free(gw_t *gw)
{
    free(gw->auth_rs_key);
    gw->auth_rs_key = NULL;
    OPENSSL_cleanse(gw->resume_key, sizeof gw->resume_key);
}

/* Decodes and verifies with one key, and insists on that key's algorithm. */
static jwt_t *decode_with(const char *token, const void *key, size_t keylen, jwt_alg_t alg)
{
    jwt_t *jwt = NULL;
    if (jwt_decode(&jwt, token, key, (int)keylen) != 0) return NULL;
    if (jwt_get_alg(jwt) != alg) {
        jwt_free(jwt);
        return NULL;
    }
    return jwt;
}

static bool audience_ok(jwt_t *jwt, const char *want)
{
    const char *aud = jwt_get_grant(jwt, "aud");
    if (aud != NULL) return strcmp(aud, want) == 0;
    char *json = jwt_get_grants_json(jwt, "aud"); /* an array of audiences */
    if (json == NULL) return false;
    char quoted[512];
    snprintf(quoted, sizeof quoted, "\"%s\"", want);
    bool ok = json[0] == '[' && strstr(json, quoted) != NULL;
    free(json);
    return ok;
}

ts_status_t gw_auth_check_jwt(gw_t *gw, const char *token, char *sub, size_t subcap, char *why, size_t whycap)
{
    const ts_config_t *cfg = gw->cfg;
    if (token == NULL || token[0] == '\0') {
        snprintf(why, whycap, "no token");
        return TS_ERR_INVALID;
    }
    if (strlen(token) > GW_TOKEN_MAX) {
        snprintf(why, whycap, "token longer than %d bytes", GW_TOKEN_MAX);
        return TS_ERR_INVALID;
    }
    jwt_t *jwt = NULL;
    if (cfg->gateway_auth_secret[0] != '\0')
        jwt = decode_with(token, cfg->gateway_auth_secret, strlen(cfg->gateway_auth_secret), JWT_ALG_HS256);
    if (jwt == NULL && gw->auth_rs_key != NULL)
        jwt = decode_with(token, gw->auth_rs_key, gw->auth_rs_key_len, JWT_ALG_RS256);
    if (jwt == NULL) {
        snprintf(why, whycap, "token signature or format is not valid");
        return TS_ERR_INVALID;
    }
    ts_status_t st = TS_ERR_INVALID;
    time_t now = time(NULL);
    errno = 0;
    long exp = jwt_get_grant_int(jwt, "exp");
    if (errno != 0 || exp <= 0) {
        snprintf(why, whycap, "token has no exp");
        goto done;
    }
    if ((time_t)exp <= now) {
        snprintf(why, whycap, "token expired %lld s ago", (long long)(now - (time_t)exp));
        goto done;
    }
    errno = 0;
    long nbf = jwt_get_grant_int(jwt, "nbf");
    if (errno == 0 && (time_t)nbf > now) {
        snprintf(why, whycap, "token not valid before %ld", nbf);
        goto done;
    }
    if (cfg->gateway_auth_issuer[0] != '\0') {
        const char *iss = jwt_get_grant(jwt, "iss");
        if (iss == NULL || strcmp(iss, cfg->gateway_auth_issuer) != 0) {
            snprintf(why, whycap, "token issuer is not %s", cfg->gateway_auth_issuer);
            goto done;
        }
    }
    if (cfg->gateway_auth_audience[0] != '\0' && !audience_ok(jwt, cfg->gateway_auth_audience)) {
        snprintf(why, whycap, "token audience is not %s", cfg->gateway_auth_audience);
        goto done;
    }
    const char *s = jwt_get_grant(jwt, "sub");
    if (s == NULL || s[0] == '\0' || strlen(s) >= subcap || strlen(s) > GW_PLAYER_MAX) {
        snprintf(why, whycap, "token has no usable sub");
        goto done;
    }
    memcpy(sub, s, strlen(s) + 1);
    st = TS_OK;
done:
    jwt_free(jwt);
    return st;
}

static void hex(char *out, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static void mac_hex(const gw_t *gw, const char *msg, size_t len, char out[MAC_HEX + 1])
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), gw->resume_key, (int)gw->resume_key_len, (const unsigned char *)msg, len, mac,
         &maclen);
    hex(out, mac, 32);
}

void gw_resume_token_make(const gw_t *gw, uint64_t entity, const ts_cell_t *cell, const char *player,
                          uint64_t exp_s, char *out, size_t cap)
{
    char body[512], ph[2 * GW_PLAYER_MAX + 1];
    size_t plen = strnlen(player, GW_PLAYER_MAX);
    hex(ph, (const uint8_t *)player, plen);
    int n = snprintf(body, sizeof body, "%" PRIu64 ".%u.%d.%d.%u.%" PRIu64 ".%" PRIu64 ".%s", entity,
                     cell->world, cell->cx, cell->cy, cell->depth, cell->sub, exp_s, ph);
    char mac[MAC_HEX + 1];
    mac_hex(gw, body, (size_t)n, mac);
    snprintf(out, cap, "%s.%s", body, mac);
}

static int unhex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

ts_status_t gw_resume_token_check(const gw_t *gw, const char *token, uint64_t *entity, ts_cell_t *cell,
                                  char *player, size_t playercap)
{
    size_t len = strnlen(token, 600);
    const char *dot = len < 600 ? strrchr(token, '.') : NULL;
    if (dot == NULL || strlen(dot + 1) != MAC_HEX) return TS_ERR_PARSE;
    char want[MAC_HEX + 1];
    mac_hex(gw, token, (size_t)(dot - token), want);
    if (CRYPTO_memcmp(want, dot + 1, MAC_HEX) != 0) return TS_ERR_PARSE;

    char body[600];
    memcpy(body, token, (size_t)(dot - token));
    body[dot - token] = '\0';
    unsigned long long ent = 0, sub = 0, exp = 0;
    unsigned world = 0, depth = 0;
    int cx = 0, cy = 0, used = 0;
    if (sscanf(body, "%llu.%u.%d.%d.%u.%llu.%llu.%n", &ent, &world, &cx, &cy, &depth, &sub, &exp, &used) !=
            7 ||
        used == 0)
        return TS_ERR_PARSE;
    const char *ph = body + used;
    size_t phl = strlen(ph);
    if (phl % 2 != 0 || phl / 2 >= playercap) return TS_ERR_PARSE;
    for (size_t i = 0; i < phl / 2; i++) {
        int hi = unhex(ph[2 * i]), lo = unhex(ph[2 * i + 1]);
        if (hi < 0 || lo < 0) return TS_ERR_PARSE;
        player[i] = (char)(hi << 4 | lo);
    }
    player[phl / 2] = '\0';
    if ((uint64_t)exp <= (uint64_t)time(NULL)) return TS_ERR_TIMEOUT;
    *entity = ent;
    memset(cell, 0, sizeof *cell);
    cell->world = world;
    cell->cx = cx;
    cell->cy = cy;
    cell->depth = depth;
    cell->sub = sub;
    return TS_OK;
}
