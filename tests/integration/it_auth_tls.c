/* Integration: the secured stack with TLS to NATS and to Redis
 * (gen-secrets --tls, a throw-away CA; Redis listens on TLS only). Every
 * service connects over TLS as its own user (nats.tls_ca, rediss:// with
 * redis.tls_ca); a player joins through the gateway and sees its inputs
 * applied exactly once; a client without TLS, or that does not trust the
 * server's certificate, is refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tessera/bus.h"
#include "tessera/client.h"
#include "tessera/registry.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};

static void test_stack_runs_over_tls(void **state)
{
    (void)state;
    ts_client_t *c = NULL;
    assert_int_equal(ts_h_client_connect(&c, stack.gw_port, 3000), TS_OK);
    assert_int_equal(ts_client_join(c, -20, 20, "tls"), TS_OK);
    /* the join is the first input, then two moves */
    uint64_t entity = 0, applied = 0, settled_us = 0;
    uint64_t deadline = ts_mono_us() + 10000 * 1000ull;
    while (ts_mono_us() < deadline && (applied < 3 || ts_mono_us() < settled_us)) {
        Tessera__V1__ServerFrame *f = NULL;
        ts_status_t st = ts_client_recv(c, 100, &f);
        if (st == TS_ERR_TIMEOUT) continue;
        assert_int_equal(st, TS_OK);
        if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT) {
            entity = f->snapshot->entity;
            assert_int_equal(ts_client_move(c, 0, 1), TS_OK);
            assert_int_equal(ts_client_move(c, 0, 1), TS_OK);
        } else if (f->payload_case == TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA) {
            for (size_t i = 0; i < f->delta->n_entities; i++) {
                if (f->delta->entities[i]->id == entity) applied = f->delta->entities[i]->inputs_applied;
            }
            if (applied >= 3 && settled_us == 0) settled_us = ts_mono_us() + 1000 * 1000ull;
        }
        tessera__v1__server_frame__free_unpacked(f, NULL);
    }
    ts_client_destroy(c);
    assert_true(entity != 0);
    assert_int_equal(applied, 3);
    ts_h_pass();
}

static void test_plain_connection_refused(void **state)
{
    (void)state;
    /* right user and password, no TLS: refused */
    ts_bus_set_default_auth(NULL);
    ts_bus_t *bus = NULL;
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, "it_auth_tls-plain"), TS_ERR_UNAVAILABLE);
    /* with the CA: accepted */
    char ca[400];
    ts_h_secret_path(&ts_h, "ca.pem", ca, sizeof ca);
    ts_bus_auth_t auth = {.tls_ca = ca};
    assert_int_equal(ts_bus_connect_auth(&bus, ts_h.nats_url, "it_auth_tls", &auth), TS_OK);
    assert_int_equal(ts_bus_flush(bus, 2000), TS_OK);
    ts_bus_destroy(bus);
    /* a client certificate is accepted too (the server does not demand one) */
    char cert[400], key[400];
    ts_h_secret_path(&ts_h, "client-cert.pem", cert, sizeof cert);
    ts_h_secret_path(&ts_h, "client-key.pem", key, sizeof key);
    auth.tls_cert = cert;
    auth.tls_key = key;
    assert_int_equal(ts_bus_connect_auth(&bus, ts_h.nats_url, "it_auth_tls-cert", &auth), TS_OK);
    ts_bus_destroy(bus);
    ts_bus_set_default_auth(&(ts_bus_auth_t){.tls_ca = ca});
    ts_h_pass();
}

static void test_redis_over_tls_only(void **state)
{
    (void)state;
    char ca[400], url[512];
    ts_h_secret_path(&ts_h, "ca.pem", ca, sizeof ca);
    ts_h_redis_url_as(&ts_h, "admin", url, sizeof url);
    assert_true(strncmp(url, "rediss://", 9) == 0);
    /* over TLS with the CA: the registry answers (as every service's does) */
    ts_registry_t *reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, url), TS_OK);
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    assert_int_equal(ts_registry_cells(reg, WORLD, &cells, &n), TS_OK);
    assert_int_equal(n, NCELLS);
    free(cells);
    ts_registry_destroy(reg);
    /* a server certificate nobody vouches for: refused before any command
     * (the client's own certificate is signed by the same CA but is no CA) */
    char other[400];
    ts_h_secret_path(&ts_h, "client-cert.pem", other, sizeof other);
    assert_int_equal(ts_registry_set_default_tls(other, NULL, NULL), TS_OK);
    reg = NULL;
    assert_int_equal(ts_registry_connect(&reg, url), TS_ERR_CONFIG);
    assert_null(reg);
    /* plain Redis protocol to the TLS port: no answer */
    assert_int_equal(ts_registry_set_default_tls(ca, NULL, NULL), TS_OK);
    char plain[512];
    snprintf(plain, sizeof plain, "redis://%s", url + strlen("rediss://"));
    reg = NULL;
    assert_int_not_equal(ts_registry_connect(&reg, plain), TS_OK);
    assert_null(reg);
    /* with a client certificate: accepted too */
    char cert[400], key[400];
    ts_h_secret_path(&ts_h, "client-cert.pem", cert, sizeof cert);
    ts_h_secret_path(&ts_h, "client-key.pem", key, sizeof key);
    assert_int_equal(ts_registry_set_default_tls(ca, cert, key), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, url), TS_OK);
    uint64_t version = 0;
    assert_int_equal(ts_registry_version(reg, WORLD, &version), TS_OK);
    assert_true(version >= NCELLS);
    ts_registry_destroy(reg);
    assert_int_equal(ts_registry_set_default_tls(ca, NULL, NULL), TS_OK);
    ts_h_pass();
}

static int group_setup(void **state)
{
    (void)state;
    ts_h_start_secure_tls(&ts_h);
    ts_h_spawn_stack(&ts_h, NULL, NULL, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, NCELLS, 30000) || !ts_h_wait_port(stack.gw_port, 15000) ||
        !ts_h_wait_port(ts_h_player_port(stack.gw_port), 15000)) {
        ts_h_fail_dump(&ts_h);
        ts_h_stop(&ts_h);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    ts_h_ws_main(argc, argv); /* --ws: the player on WebSocket */
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_stack_runs_over_tls),
        TS_H_TEST(test_plain_connection_refused),
        TS_H_TEST(test_redis_over_tls_only),
    };
    return TS_H_RUN(ts_h_ws ? "it_auth_tls_ws" : "it_auth_tls", tests, group_setup, ts_h_group_teardown);
}
