/* services/gateway/auth.c: resume tokens and player JWTs. What a player and
 * an operator rely on: a token the gateway made comes back as it was, any
 * change to it, another secret or its expiry refuses it; a JWT is accepted
 * only when its signature (with the algorithm of the key that checks it),
 * expiry, issuer and audience are right. */
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gateway.h"
#include "tessera/log.h"

static ts_config_t cfg;
static gw_t gw;
static char priv_pem[8192], pub_pem[4096], pub_path[] = "/tmp/test_auth_pub_XXXXXX";

static void set_keys(const char *resume_secret, const char *hs_secret, const char *pub_file, const char *iss,
                     const char *aud)
{
    gw_auth_free(&gw);
    memset(&gw, 0, sizeof gw);
    memset(&cfg, 0, sizeof cfg);
    cfg.gateway_resume_secret = (char *)resume_secret;
    cfg.gateway_auth_secret = (char *)hs_secret;
    cfg.gateway_auth_public_key = (char *)pub_file;
    cfg.gateway_auth_issuer = (char *)iss;
    cfg.gateway_auth_audience = (char *)aud;
    gw.cfg = &cfg;
    assert_int_equal(gw_auth_init(&gw), TS_OK);
}

static int setup(void **state)
{
    (void)state;
    EVP_PKEY *key = EVP_RSA_gen(2048);
    if (key == NULL) return -1;
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
    int n = BIO_read(b, priv_pem, sizeof priv_pem - 1);
    priv_pem[n > 0 ? n : 0] = '\0';
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, key);
    n = BIO_read(b, pub_pem, sizeof pub_pem - 1);
    pub_pem[n > 0 ? n : 0] = '\0';
    BIO_free(b);
    EVP_PKEY_free(key);
    int fd = mkstemp(pub_path);
    if (fd < 0 || write(fd, pub_pem, strlen(pub_pem)) != (ssize_t)strlen(pub_pem)) return -1;
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    gw_auth_free(&gw);
    unlink(pub_path);
    return 0;
}

/* ---- resume tokens ----------------------------------------------------- */

static void test_resume_token_round_trip(void **state)
{
    (void)state;
    set_keys("s3cret", "", "", "", "");
    ts_cell_t cell = {.world = 7, .cx = -3, .cy = 12, .depth = 2, .sub = 9};
    char token[1024];
    gw_resume_token_make(&gw, 0x0001abcdef000042ull, &cell, "ann.o'neil", (uint64_t)time(NULL) + 60, token,
                         sizeof token);
    uint64_t entity = 0;
    ts_cell_t got;
    char player[GW_PLAYER_MAX + 1];
    assert_int_equal(gw_resume_token_check(&gw, token, &entity, &got, player, sizeof player), TS_OK);
    assert_int_equal(entity, 0x0001abcdef000042ull);
    assert_int_equal(got.world, 7);
    assert_int_equal(got.cx, -3);
    assert_int_equal(got.cy, 12);
    assert_int_equal(got.depth, 2);
    assert_int_equal(got.sub, 9);
    assert_string_equal(player, "ann.o'neil");

    /* another gateway with the same secret takes it */
    set_keys("s3cret", "", "", "", "");
    assert_int_equal(gw_resume_token_check(&gw, token, &entity, &got, player, sizeof player), TS_OK);
}

static void test_resume_token_refused(void **state)
{
    (void)state;
    set_keys("s3cret", "", "", "", "");
    ts_cell_t cell = {.world = 0, .cx = 1, .cy = 1};
    char token[1024], bad[1024];
    gw_resume_token_make(&gw, 42, &cell, "", (uint64_t)time(NULL) + 60, token, sizeof token);
    uint64_t entity = 0;
    ts_cell_t got;
    char player[GW_PLAYER_MAX + 1];
    /* every single-character change is refused */
    for (size_t i = 0; token[i] != '\0'; i++) {
        memcpy(bad, token, sizeof bad);
        bad[i] = bad[i] == '1' ? '2' : '1';
        assert_int_not_equal(gw_resume_token_check(&gw, bad, &entity, &got, player, sizeof player), TS_OK);
    }
    /* another entity under the same MAC */
    memcpy(bad, token, sizeof bad);
    bad[0] = '4', bad[1] = '3';
    assert_int_equal(gw_resume_token_check(&gw, bad, &entity, &got, player, sizeof player), TS_ERR_PARSE);
    assert_int_equal(gw_resume_token_check(&gw, "", &entity, &got, player, sizeof player), TS_ERR_PARSE);
    assert_int_equal(gw_resume_token_check(&gw, "1.2.3", &entity, &got, player, sizeof player), TS_ERR_PARSE);
    /* another secret */
    set_keys("other", "", "", "", "");
    assert_int_equal(gw_resume_token_check(&gw, token, &entity, &got, player, sizeof player), TS_ERR_PARSE);
    /* expired, with the right secret */
    set_keys("s3cret", "", "", "", "");
    gw_resume_token_make(&gw, 42, &cell, "", (uint64_t)time(NULL) - 1, token, sizeof token);
    assert_int_equal(gw_resume_token_check(&gw, token, &entity, &got, player, sizeof player), TS_ERR_TIMEOUT);
    /* without a configured secret each process has its own */
    set_keys("", "", "", "", "");
    gw_resume_token_make(&gw, 42, &cell, "", (uint64_t)time(NULL) + 60, token, sizeof token);
    assert_int_equal(gw_resume_token_check(&gw, token, &entity, &got, player, sizeof player), TS_OK);
    set_keys("", "", "", "", "");
    assert_int_equal(gw_resume_token_check(&gw, token, &entity, &got, player, sizeof player), TS_ERR_PARSE);
}

/* ---- JWTs ------------------------------------------------------------------ */

typedef struct {
    const char *sub, *iss, *aud_json;
    long exp_in, nbf_in; /* seconds from now; 0: claim left out */
    jwt_alg_t alg;
    const char *key; /* HS secret or PEM private key */
} claims_t;

static char *mint(const claims_t *c)
{
    jwt_t *jwt = NULL;
    assert_int_equal(jwt_new(&jwt), 0);
    long now = (long)time(NULL);
    if (c->sub) jwt_add_grant(jwt, "sub", c->sub);
    if (c->iss) jwt_add_grant(jwt, "iss", c->iss);
    if (c->aud_json) {
        char json[256];
        snprintf(json, sizeof json, "{\"aud\": %s}", c->aud_json);
        assert_int_equal(jwt_add_grants_json(jwt, json), 0);
    }
    if (c->exp_in) jwt_add_grant_int(jwt, "exp", now + c->exp_in);
    if (c->nbf_in) jwt_add_grant_int(jwt, "nbf", now + c->nbf_in);
    assert_int_equal(jwt_set_alg(jwt, c->alg, (const unsigned char *)c->key, (int)strlen(c->key)), 0);
    char *out = jwt_encode_str(jwt);
    jwt_free(jwt);
    assert_non_null(out);
    return out;
}

static ts_status_t check(const claims_t *c, char *sub)
{
    char *token = mint(c);
    char why[160];
    ts_status_t st = gw_auth_check_jwt(&gw, token, sub, GW_PLAYER_MAX + 1, why, sizeof why);
    if (st != TS_OK) assert_true(strlen(why) > 0);
    free(token);
    return st;
}

static void test_jwt_accepted(void **state)
{
    (void)state;
    set_keys("", "hs-secret", pub_path, "login.example", "my-game");
    char sub[GW_PLAYER_MAX + 1];
    claims_t hs = {"alice", "login.example", "\"my-game\"", 3600, 0, JWT_ALG_HS256, "hs-secret"};
    assert_int_equal(check(&hs, sub), TS_OK);
    assert_string_equal(sub, "alice");
    claims_t rs = {"bob", "login.example", "[\"other\", \"my-game\"]", 60, -5, JWT_ALG_RS256, priv_pem};
    assert_int_equal(check(&rs, sub), TS_OK);
    assert_string_equal(sub, "bob");
}

static void test_jwt_refused(void **state)
{
    (void)state;
    set_keys("", "hs-secret", pub_path, "login.example", "my-game");
    char sub[GW_PLAYER_MAX + 1], why[160];
    const claims_t bad[] = {
        {"eve", "login.example", "\"my-game\"", -1, 0, JWT_ALG_HS256, "hs-secret"},     /* expired */
        {"eve", "login.example", "\"my-game\"", 0, 0, JWT_ALG_HS256, "hs-secret"},      /* no exp */
        {"eve", "login.example", "\"my-game\"", 60, 0, JWT_ALG_HS256, "other-secret"},  /* signature */
        {"eve", "login.example", "\"your-game\"", 60, 0, JWT_ALG_HS256, "hs-secret"},   /* audience */
        {"eve", "login.example", "[\"your-game\"]", 60, 0, JWT_ALG_HS256, "hs-secret"}, /* audience */
        {"eve", NULL, "\"my-game\"", 60, 0, JWT_ALG_HS256, "hs-secret"},                /* no issuer */
        {"eve", "evil.example", "\"my-game\"", 60, 0, JWT_ALG_HS256, "hs-secret"},      /* issuer */
        {NULL, "login.example", "\"my-game\"", 60, 0, JWT_ALG_HS256, "hs-secret"},      /* no sub */
        {"eve", "login.example", "\"my-game\"", 60, 30, JWT_ALG_HS256, "hs-secret"},    /* not yet */
        {"eve", "login.example", "\"my-game\"", 60, 0, JWT_ALG_HS256, pub_pem}, /* HS256 with the RS key */
        {"eve", "login.example", "\"my-game\"", 60, 0, JWT_ALG_HS384, "hs-secret"}, /* another algorithm */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        print_message("refused token %zu\n", i);
        assert_int_not_equal(check(&bad[i], sub), TS_OK);
    }
    assert_int_not_equal(gw_auth_check_jwt(&gw, "", sub, sizeof sub, why, sizeof why), TS_OK);
    assert_int_not_equal(gw_auth_check_jwt(&gw, NULL, sub, sizeof sub, why, sizeof why), TS_OK);
    assert_int_not_equal(gw_auth_check_jwt(&gw, "a.b.c", sub, sizeof sub, why, sizeof why), TS_OK);
    /* "none" */
    jwt_t *jwt = NULL;
    assert_int_equal(jwt_new(&jwt), 0);
    jwt_add_grant(jwt, "sub", "eve");
    jwt_add_grant_int(jwt, "exp", (long)time(NULL) + 60);
    char *none = jwt_encode_str(jwt);
    jwt_free(jwt);
    assert_non_null(none);
    assert_int_not_equal(gw_auth_check_jwt(&gw, none, sub, sizeof sub, why, sizeof why), TS_OK);
    free(none);
}

static void test_required_without_keys_is_a_config_error(void **state)
{
    (void)state;
    gw_auth_free(&gw);
    memset(&gw, 0, sizeof gw);
    memset(&cfg, 0, sizeof cfg);
    cfg.gateway_resume_secret = cfg.gateway_auth_secret = cfg.gateway_auth_public_key = (char *)"";
    cfg.gateway_auth_required = 1;
    gw.cfg = &cfg;
    assert_int_equal(gw_auth_init(&gw), TS_ERR_CONFIG);
    cfg.gateway_auth_public_key = (char *)"/nonexistent/key.pem";
    assert_int_equal(gw_auth_init(&gw), TS_ERR_CONFIG);
}

int main(void)
{
    ts_log_init("test_auth", TS_LOG_ERROR, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_token_round_trip),
        cmocka_unit_test(test_resume_token_refused),
        cmocka_unit_test(test_jwt_accepted),
        cmocka_unit_test(test_jwt_refused),
        cmocka_unit_test(test_required_without_keys_is_a_config_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
