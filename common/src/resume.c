/* Resume tokens (HMAC-SHA256, OpenSSL): one implementation for the gateway
 * that signs and checks them and the worker that verifies an Attach.
 * The MAC covers the text "entity.world.cx.cy.depth.sub.exp.player-hex",
 * rebuilt from the fields, so a token and the fields an Attach carries
 * verify the same way. */
#include "tessera/resume.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

ts_status_t ts_resume_key_init(ts_resume_key_t *key, const char *secret)
{
    memset(key, 0, sizeof *key);
    size_t n = secret != NULL ? strlen(secret) : 0;
    if (n == 0) {
        if (RAND_bytes(key->bytes, sizeof key->bytes) != 1) return TS_ERR_IO;
        key->len = sizeof key->bytes;
    } else if (n > sizeof key->bytes) { /* a longer secret is folded in by hashing */
        unsigned int len = 0;
        HMAC(EVP_sha256(), "tessera-resume", 14, (const unsigned char *)secret, n, key->bytes, &len);
        key->len = len;
    } else {
        memcpy(key->bytes, secret, n);
        key->len = n;
    }
    return TS_OK;
}

void ts_resume_key_clear(ts_resume_key_t *key)
{
    OPENSSL_cleanse(key, sizeof *key);
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

static int unhex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The signed text of t's fields; its length, or -1 if it does not fit. */
static int body(const ts_resume_token_t *t, char *out, size_t cap)
{
    char ph[2 * TS_RESUME_PLAYER_MAX + 1];
    hex(ph, (const uint8_t *)t->player, strnlen(t->player, TS_RESUME_PLAYER_MAX));
    int n = snprintf(
        out, cap, "%" PRIu64 ".%" PRIu32 ".%" PRId32 ".%" PRId32 ".%u.%" PRIu64 ".%" PRIu64 ".%s", t->entity,
        t->cell.world, t->cell.cx, t->cell.cy, (unsigned)t->cell.depth, t->cell.sub, t->exp_s, ph);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

static void mac_of(const ts_resume_key_t *key, const ts_resume_token_t *t, uint8_t out[TS_RESUME_MAC_LEN])
{
    char text[TS_RESUME_TOKEN_MAX];
    int n = body(t, text, sizeof text);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (n < 0 || HMAC(EVP_sha256(), key->bytes, (int)key->len, (const unsigned char *)text, (size_t)n, mac,
                      &maclen) == NULL) {
        memset(out, 0, TS_RESUME_MAC_LEN); /* matches no real MAC in practice; verify also fails on n < 0 */
        return;
    }
    memcpy(out, mac, TS_RESUME_MAC_LEN);
    OPENSSL_cleanse(mac, sizeof mac);
}

void ts_resume_token_sign(const ts_resume_key_t *key, ts_resume_token_t *t)
{
    mac_of(key, t, t->mac);
}

/* HMAC-SHA256 of label "\n" msg; false if it does not fit or fails. */
static bool msg_mac(const ts_resume_key_t *key, const char *label, const char *msg, size_t len,
                    uint8_t out[TS_RESUME_MAC_LEN])
{
    char text[TS_RESUME_MSG_MAX + 64];
    size_t ll = strlen(label);
    if (len > TS_RESUME_MSG_MAX || ll > 62) return false;
    memcpy(text, label, ll);
    text[ll] = '\n';
    memcpy(text + ll + 1, msg, len);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    bool ok = HMAC(EVP_sha256(), key->bytes, (int)key->len, (const unsigned char *)text, ll + 1 + len, mac,
                   &maclen) != NULL &&
              maclen >= TS_RESUME_MAC_LEN;
    if (ok) memcpy(out, mac, TS_RESUME_MAC_LEN);
    OPENSSL_cleanse(mac, sizeof mac);
    return ok;
}

ts_status_t ts_resume_msg_sign(const ts_resume_key_t *key, const char *label, const char *msg, size_t len,
                               char out[TS_RESUME_MAC_HEX + 1])
{
    uint8_t mac[TS_RESUME_MAC_LEN];
    if (!msg_mac(key, label, msg, len, mac)) return TS_ERR_RANGE;
    hex(out, mac, sizeof mac);
    return TS_OK;
}

bool ts_resume_msg_verify(const ts_resume_key_t *key, const char *label, const char *msg, size_t len,
                          const char *mac_hex, size_t mac_len)
{
    uint8_t want[TS_RESUME_MAC_LEN], got[TS_RESUME_MAC_LEN];
    if (mac_len != TS_RESUME_MAC_HEX || !msg_mac(key, label, msg, len, want)) return false;
    for (size_t i = 0; i < TS_RESUME_MAC_LEN; i++) {
        int hi = unhex(mac_hex[2 * i]), lo = unhex(mac_hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        got[i] = (uint8_t)(hi << 4 | lo);
    }
    return CRYPTO_memcmp(want, got, sizeof want) == 0;
}

ts_status_t ts_resume_token_verify(const ts_resume_key_t *key, const ts_resume_token_t *t, uint64_t now_s)
{
    char text[TS_RESUME_TOKEN_MAX];
    if (body(t, text, sizeof text) < 0) return TS_ERR_INVALID;
    uint8_t want[TS_RESUME_MAC_LEN];
    mac_of(key, t, want);
    if (CRYPTO_memcmp(want, t->mac, sizeof want) != 0) return TS_ERR_INVALID;
    if (t->exp_s <= now_s) return TS_ERR_TIMEOUT;
    return TS_OK;
}

ts_status_t ts_resume_token_format(const ts_resume_token_t *t, char *out, size_t cap)
{
    int n = body(t, out, cap);
    if (n < 0 || (size_t)n + 1 + TS_RESUME_MAC_HEX + 1 > cap) return TS_ERR_RANGE;
    out[n] = '.';
    hex(out + n + 1, t->mac, TS_RESUME_MAC_LEN);
    return TS_OK;
}

ts_status_t ts_resume_token_parse(const char *text, size_t len, ts_resume_token_t *t)
{
    if (text == NULL || len == 0 || len >= TS_RESUME_TOKEN_MAX || memchr(text, '\0', len) != NULL)
        return TS_ERR_PARSE;
    char buf[TS_RESUME_TOKEN_MAX];
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *dot = strrchr(buf, '.');
    if (dot == NULL || strlen(dot + 1) != TS_RESUME_MAC_HEX) return TS_ERR_PARSE;
    ts_resume_token_t out;
    memset(&out, 0, sizeof out);
    for (size_t i = 0; i < TS_RESUME_MAC_LEN; i++) {
        int hi = unhex(dot[1 + 2 * i]), lo = unhex(dot[2 + 2 * i]);
        if (hi < 0 || lo < 0) return TS_ERR_PARSE;
        out.mac[i] = (uint8_t)(hi << 4 | lo);
    }
    *dot = '\0';
    unsigned long long ent = 0, sub = 0, exp = 0;
    unsigned world = 0, depth = 0;
    int cx = 0, cy = 0, used = 0;
    if (sscanf(buf, "%llu.%u.%d.%d.%u.%llu.%llu.%n", &ent, &world, &cx, &cy, &depth, &sub, &exp, &used) !=
            7 ||
        used == 0 || depth > UINT8_MAX)
        return TS_ERR_PARSE;
    const char *ph = buf + used;
    size_t phl = strlen(ph);
    if (phl % 2 != 0 || phl / 2 > TS_RESUME_PLAYER_MAX) return TS_ERR_PARSE;
    for (size_t i = 0; i < phl / 2; i++) {
        int hi = unhex(ph[2 * i]), lo = unhex(ph[2 * i + 1]);
        if (hi < 0 || lo < 0 || (hi | lo) == 0) return TS_ERR_PARSE; /* no NUL inside a player id */
        out.player[i] = (char)(hi << 4 | lo);
    }
    out.entity = ent;
    out.cell.world = world;
    out.cell.cx = cx;
    out.cell.cy = cy;
    out.cell.depth = (uint8_t)depth;
    out.cell.sub = sub;
    out.exp_s = exp;
    *t = out;
    return TS_OK;
}

ts_status_t ts_resume_token_make(const ts_resume_key_t *key, uint64_t entity, const ts_cell_t *cell,
                                 const char *player, uint64_t exp_s, char *out, size_t cap)
{
    ts_resume_token_t t;
    memset(&t, 0, sizeof t);
    t.entity = entity;
    t.cell = *cell;
    t.exp_s = exp_s;
    size_t plen = strnlen(player, TS_RESUME_PLAYER_MAX);
    memcpy(t.player, player, plen);
    ts_resume_token_sign(key, &t);
    return ts_resume_token_format(&t, out, cap);
}

ts_status_t ts_resume_token_check(const ts_resume_key_t *key, const char *text, ts_resume_token_t *t)
{
    ts_resume_token_t got;
    ts_status_t st = ts_resume_token_parse(text, strnlen(text, TS_RESUME_TOKEN_MAX), &got);
    if (st != TS_OK) return st;
    st = ts_resume_token_verify(key, &got, (uint64_t)time(NULL));
    if (st == TS_ERR_INVALID) return TS_ERR_PARSE;
    if (st != TS_OK) return st;
    *t = got;
    return TS_OK;
}
