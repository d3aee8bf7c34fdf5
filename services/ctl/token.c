/* tessera-ctl token: mints a player JWT for development and tests.
 *
 *   tessera-ctl token --sub NAME [--ttl 1h] [--secret S | --key PRIVATE.pem]
 *                     [--iss ISSUER] [--aud AUDIENCE]
 *
 * HS256 with --secret (default: $TESSERA_GATEWAY_AUTH_SECRET, the key the
 * gateway checks with), RS256 with --key (a PEM private key; the gateway
 * holds the public half in gateway.auth.public_key). --ttl takes seconds or
 * a number with s, m, h or d, and may be negative (an expired token). The
 * token goes to stdout. Production tokens come from the game's own login
 * service; this is for `make run` and tests. */
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "tessera/util.h"

static bool parse_ttl(const char *s, long *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s) return false;
    long mult = 1;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mult = 60, end++;
    else if (*end == 'h')
        mult = 3600, end++;
    else if (*end == 'd')
        mult = 86400, end++;
    if (*end != '\0') return false;
    *out = v * mult;
    return true;
}

int ts_ctl_token(int argc, char **argv)
{
    const char *sub = NULL, *ttl_s = "1h", *secret = getenv("TESSERA_GATEWAY_AUTH_SECRET"), *key = NULL;
    const char *iss = NULL, *aud = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], **slot = NULL;
        if (strcmp(a, "--sub") == 0)
            slot = &sub;
        else if (strcmp(a, "--ttl") == 0)
            slot = &ttl_s;
        else if (strcmp(a, "--secret") == 0)
            slot = &secret;
        else if (strcmp(a, "--key") == 0)
            slot = &key;
        else if (strcmp(a, "--iss") == 0)
            slot = &iss;
        else if (strcmp(a, "--aud") == 0)
            slot = &aud;
        if (slot == NULL || i + 1 >= argc) {
            fprintf(stderr, "usage: tessera-ctl token --sub NAME [--ttl 1h] [--secret S | --key PRIVATE.pem] "
                            "[--iss ISSUER] [--aud AUDIENCE]\n");
            return TS_CTL_EXIT_USAGE;
        }
        *slot = argv[++i];
    }
    long ttl = 0;
    if (sub == NULL || *sub == '\0') {
        fprintf(stderr, "tessera-ctl token: --sub NAME is required\n");
        return TS_CTL_EXIT_USAGE;
    }
    if (!parse_ttl(ttl_s, &ttl)) {
        fprintf(stderr, "tessera-ctl token: --ttl '%s' is not a duration (e.g. 3600, 30m, 1h, 7d)\n", ttl_s);
        return TS_CTL_EXIT_USAGE;
    }
    if (key == NULL && (secret == NULL || *secret == '\0')) {
        fprintf(stderr, "tessera-ctl token: give --secret (or TESSERA_GATEWAY_AUTH_SECRET) or --key\n");
        return TS_CTL_EXIT_USAGE;
    }
    jwt_t *jwt = NULL;
    char *pem = NULL, *out = NULL;
    int rc = 1;
    if (jwt_new(&jwt) != 0) goto done;
    time_t now = time(NULL);
    if (jwt_add_grant(jwt, "sub", sub) != 0 || jwt_add_grant_int(jwt, "iat", (long)now) != 0 ||
        jwt_add_grant_int(jwt, "exp", (long)now + ttl) != 0 || (iss && jwt_add_grant(jwt, "iss", iss) != 0) ||
        (aud && jwt_add_grant(jwt, "aud", aud) != 0))
        goto done;
    if (key != NULL) {
        size_t len = 0;
        ts_status_t st = ts_read_file(key, 1u << 20, &pem, &len);
        if (st != TS_OK) {
            fprintf(stderr, "tessera-ctl token: cannot read %s: %s\n", key, ts_status_str(st));
            goto done;
        }
        if (jwt_set_alg(jwt, JWT_ALG_RS256, (const unsigned char *)pem, (int)len) != 0) goto done;
    } else if (jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)) != 0) {
        goto done;
    }
    out = jwt_encode_str(jwt);
    if (out == NULL) {
        fprintf(stderr, "tessera-ctl token: signing failed (is %s a private key?)\n",
                key ? key : "the secret");
        goto done;
    }
    printf("%s\n", out);
    rc = 0;
done:
    if (rc != 0 && out == NULL && jwt == NULL) fprintf(stderr, "tessera-ctl token: out of memory\n");
    free(out);
    free(pem);
    jwt_free(jwt);
    return rc;
}
