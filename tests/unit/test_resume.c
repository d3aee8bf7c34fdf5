/* common/src/resume.c: resume tokens as the gateway signs and checks them
 * and as the worker verifies the fields an Attach carries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tessera/resume.h"

/* Tokens from before the module moved to common/ (and from any gateway
 * version since) still verify: the signed text and the key derivation are
 * pinned (HMAC-SHA256 computed independently). */
static void test_known_tokens(void **state)
{
    (void)state;
    ts_resume_key_t key;
    ts_resume_token_t t;
    assert_int_equal(ts_resume_key_init(&key, "s3cret"), TS_OK);
    const char *tok = "42.0.1.-2.0.0.2000000000.616e6e."
                      "a859c444d323ca2b3838eae1e65b4549f67f32a99dff9278627ff857bc29d91a";
    assert_int_equal(ts_resume_token_parse(tok, strlen(tok), &t), TS_OK);
    assert_int_equal(t.entity, 42);
    assert_int_equal(t.cell.cx, 1);
    assert_int_equal(t.cell.cy, -2);
    assert_int_equal(t.exp_s, 2000000000u);
    assert_string_equal(t.player, "ann");
    assert_int_equal(ts_resume_token_verify(&key, &t, 1700000000u), TS_OK);
    assert_int_equal(ts_resume_token_verify(&key, &t, 2000000000u), TS_ERR_TIMEOUT);
    char out[TS_RESUME_TOKEN_MAX];
    assert_int_equal(ts_resume_token_format(&t, out, sizeof out), TS_OK);
    assert_string_equal(out, tok);

    /* a secret longer than 32 bytes is folded: HMAC("tessera-resume", secret) */
    char longsecret[41];
    memset(longsecret, 'x', 40);
    longsecret[40] = '\0';
    assert_int_equal(ts_resume_key_init(&key, longsecret), TS_OK);
    const char *tok2 = "42.0.1.-2.0.0.2000000000.616e6e."
                       "8f0916d093bc801e0d28d32e627bfe6d463a2de8603ba054b8b3737dab680d05";
    assert_int_equal(ts_resume_token_parse(tok2, strlen(tok2), &t), TS_OK);
    assert_int_equal(ts_resume_token_verify(&key, &t, 1700000000u), TS_OK);
    ts_resume_key_clear(&key);
}

/* What the worker does with an Attach: the fields it carries, with its
 * entity, verify only under the same secret, for that entity, unexpired. */
static void test_verify_fields(void **state)
{
    (void)state;
    ts_resume_key_t key, other;
    assert_int_equal(ts_resume_key_init(&key, "shared"), TS_OK);
    assert_int_equal(ts_resume_key_init(&other, "stolen-gateway-guess"), TS_OK);
    uint64_t now = (uint64_t)time(NULL);
    ts_cell_t cell = {.world = 3, .cx = -1, .cy = 4, .depth = 1, .sub = 2};
    char text[TS_RESUME_TOKEN_MAX];
    assert_int_equal(
        ts_resume_token_make(&key, 0x8000000000000007ull, &cell, "alice", now + 60, text, sizeof text),
        TS_OK);
    ts_resume_token_t t;
    assert_int_equal(ts_resume_token_check(&key, text, &t), TS_OK);
    assert_true(ts_cell_eq(&t.cell, &cell));

    /* as a worker rebuilds it from the Attach */
    ts_resume_token_t a = t;
    assert_int_equal(ts_resume_token_verify(&key, &a, now), TS_OK);
    a.entity = 0x8000000000000008ull; /* another entity */
    assert_int_equal(ts_resume_token_verify(&key, &a, now), TS_ERR_INVALID);
    a = t;
    a.exp_s += 3600; /* a longer life */
    assert_int_equal(ts_resume_token_verify(&key, &a, now), TS_ERR_INVALID);
    a = t;
    a.player[0] = 'b';
    assert_int_equal(ts_resume_token_verify(&key, &a, now), TS_ERR_INVALID);
    a = t;
    a.cell.cx = 0;
    assert_int_equal(ts_resume_token_verify(&key, &a, now), TS_ERR_INVALID);
    a = t;
    memset(a.mac, 0, sizeof a.mac); /* no token */
    assert_int_equal(ts_resume_token_verify(&key, &a, now), TS_ERR_INVALID);
    assert_int_equal(ts_resume_token_verify(&other, &t, now), TS_ERR_INVALID);
    /* signed under another key: refused under ours */
    a = t;
    ts_resume_token_sign(&other, &a);
    assert_int_equal(ts_resume_token_verify(&key, &a, now), TS_ERR_INVALID);
    assert_int_equal(ts_resume_token_verify(&key, &t, now + 60), TS_ERR_TIMEOUT);
    /* expired, signed right */
    assert_int_equal(ts_resume_token_make(&key, 7, &cell, "", now - 1, text, sizeof text), TS_OK);
    assert_int_equal(ts_resume_token_check(&key, text, &t), TS_ERR_TIMEOUT);

    /* no secret: a random key per process */
    ts_resume_key_t r1, r2;
    assert_int_equal(ts_resume_key_init(&r1, ""), TS_OK);
    assert_int_equal(ts_resume_key_init(&r2, NULL), TS_OK);
    assert_int_equal(ts_resume_token_make(&r1, 7, &cell, "", now + 60, text, sizeof text), TS_OK);
    assert_int_equal(ts_resume_token_check(&r1, text, &t), TS_OK);
    assert_int_equal(ts_resume_token_check(&r2, text, &t), TS_ERR_PARSE);
}

static void test_parse_refused(void **state)
{
    (void)state;
    ts_resume_key_t key;
    assert_int_equal(ts_resume_key_init(&key, "k"), TS_OK);
    ts_cell_t cell = {.cx = 1};
    char player[TS_RESUME_PLAYER_MAX + 1];
    memset(player, 'p', TS_RESUME_PLAYER_MAX);
    player[TS_RESUME_PLAYER_MAX] = '\0';
    char text[TS_RESUME_TOKEN_MAX];
    uint64_t big = UINT64_MAX;
    ts_cell_t far = {.world = UINT32_MAX, .cx = INT32_MIN, .cy = INT32_MIN, .depth = 255, .sub = UINT64_MAX};
    /* the longest token fits */
    assert_int_equal(ts_resume_token_make(&key, big, &far, player, big, text, sizeof text), TS_OK);
    ts_resume_token_t t;
    assert_int_equal(ts_resume_token_parse(text, strlen(text), &t), TS_OK);
    assert_string_equal(t.player, player);
    assert_int_equal(ts_resume_token_make(&key, 1, &cell, "x", 9, text, 20), TS_ERR_RANGE);

    assert_int_equal(ts_resume_token_make(&key, 1, &cell, "x", 2000000000u, text, sizeof text), TS_OK);
    const char *bad[] = {"", ".", "1.2.3", "not a token at all", "1.0.0.0.0.0.5.zz.00"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ts_resume_token_parse(bad[i], strlen(bad[i]), &t), TS_ERR_PARSE);
    char copy[TS_RESUME_TOKEN_MAX];
    memcpy(copy, text, sizeof copy);
    copy[strlen(copy) - 1] = 'G'; /* not hex */
    assert_int_equal(ts_resume_token_parse(copy, strlen(copy), &t), TS_ERR_PARSE);
    /* a NUL inside is refused, the length counts (no NUL needed) */
    assert_int_equal(ts_resume_token_parse(text, strlen(text) + 1, &t), TS_ERR_PARSE);
    memcpy(copy, text, strlen(text));
    copy[strlen(text)] = '!';
    assert_int_equal(ts_resume_token_parse(copy, strlen(text), &t), TS_OK);
    /* a player id with a NUL byte (hex 00) */
    const char *nul = "1.0.1.0.0.0.2000000000.6100."
                      "0000000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(ts_resume_token_parse(nul, strlen(nul), &t), TS_ERR_PARSE);
}

/* Login claims: the MAC is HMAC-SHA256 of label "\n" message (pinned, so
 * gateways of different versions agree), and one made for another key,
 * label or message, or cut short, does not verify. */
static void test_message_mac(void **state)
{
    (void)state;
    ts_resume_key_t key, other;
    assert_int_equal(ts_resume_key_init(&key, "s3cret"), TS_OK);
    assert_int_equal(ts_resume_key_init(&other, "s3creT"), TS_OK);
    const char *msg = "claim 1 7 2 3 4 x";
    size_t len = strlen(msg);
    char mac[TS_RESUME_MAC_HEX + 1];
    assert_int_equal(ts_resume_msg_sign(&key, "claim", msg, len, mac), TS_OK);
    assert_string_equal(mac, "7e5e2e71d6c51082d1b2e41fa3862897675f20fce43396c4fd528dfa8445787c");
    assert_true(ts_resume_msg_verify(&key, "claim", msg, len, mac, strlen(mac)));
    assert_false(ts_resume_msg_verify(&other, "claim", msg, len, mac, strlen(mac)));
    assert_false(ts_resume_msg_verify(&key, "found", msg, len, mac, strlen(mac)));
    assert_false(ts_resume_msg_verify(&key, "claim", msg, len - 1, mac, strlen(mac)));
    assert_false(ts_resume_msg_verify(&key, "claim", msg, len, mac, strlen(mac) - 1));
    char bad[TS_RESUME_MAC_HEX + 1];
    memcpy(bad, mac, sizeof bad);
    bad[5] = bad[5] == 'a' ? 'b' : 'a';
    assert_false(ts_resume_msg_verify(&key, "claim", msg, len, bad, strlen(bad)));
    bad[5] = 'G'; /* not hex */
    assert_false(ts_resume_msg_verify(&key, "claim", msg, len, bad, strlen(bad)));
    /* too long to sign: refused, not cut */
    static char big[TS_RESUME_MSG_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    assert_int_equal(ts_resume_msg_sign(&key, "claim", big, strlen(big), mac), TS_ERR_RANGE);
    ts_resume_key_clear(&key);
    ts_resume_key_clear(&other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_tokens),
        cmocka_unit_test(test_verify_fields),
        cmocka_unit_test(test_parse_refused),
        cmocka_unit_test(test_message_mac),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
