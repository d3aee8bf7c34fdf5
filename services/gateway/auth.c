/* Player JWTs (libjwt) and resume tokens (common/src/resume.c).
 *
 * A JWT is accepted with HS256 under gateway.auth.secret or RS256 under the
 * public key in gateway.auth.public_key, and only with the algorithm its
 * key is for (an HS256 token "signed" with the public key is refused). It
 * must carry `sub` and `exp` in the future; `nbf`, if present, must be past;
 * `iss` and `aud` must match when configured.
 *
 * A resume token (tessera/resume.h) is signed under gateway.resume_secret
 * (the same on every gateway, so a player resumes on any of them, and on
 * every worker, which verifies the token an Attach carries). The token
 * names the cell the entity was last known in; an input sent there reaches
 * the entity wherever it went since (the worker forwards inputs of departed
 * entities). */
#include <errno.h>
#include <inttypes.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

ts_status_t gw_auth_init(gw_t *gw)
{
    const ts_config_t *cfg = gw->cfg;
    if (ts_resume_key_init(&gw->resume_key, cfg->gateway_resume_secret) != TS_OK) return TS_ERR_IO;
    gw->resume_shared = cfg->gateway_resume_secret[0] != '\0';
    if (!gw->resume_shared)
        ts_warn("gateway.resume_secret is not set: resume tokens only work on this gateway process, and "
                "login claims go unsigned (any bus user may close a player's connection)");
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
    ts_resume_key_clear(&gw->resume_key);
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

void gw_resume_token_make(const gw_t *gw, uint64_t entity, const ts_cell_t *cell, const char *player,
                          uint64_t exp_s, char *out, size_t cap)
{
    if (ts_resume_token_make(&gw->resume_key, entity, cell, player, exp_s, out, cap) != TS_OK && cap > 0)
        out[0] = '\0';
}

ts_status_t gw_resume_token_check(const gw_t *gw, const char *token, uint64_t *entity, ts_cell_t *cell,
                                  char *player, size_t playercap)
{
    ts_resume_token_t t;
    ts_status_t st = ts_resume_token_check(&gw->resume_key, token, &t);
    if (st != TS_OK) return st;
    size_t plen = strlen(t.player);
    if (plen >= playercap) return TS_ERR_PARSE;
    memcpy(player, t.player, plen + 1);
    *entity = t.entity;
    *cell = t.cell;
    return TS_OK;
}
