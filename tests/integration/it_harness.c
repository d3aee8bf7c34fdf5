/* The integration harness itself: what every other it_* test relies on
 * about its ports. A port the harness hands out is free and never handed
 * out twice; a port some other process listens on is refused loudly, at
 * once: a service that could not bind is never mistaken for someone else's
 * server, and the harness never talks to a server it did not start. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "tessera/util.h"

#define PORTS 200

/* A socket of this test listening on 127.0.0.1:<port>; -1 on failure. */
static int listen_on(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

static void test_free_ports_are_free_and_distinct(void **state)
{
    (void)state;
    static int seen[PORTS];
    for (int i = 0; i < PORTS; i++) {
        seen[i] = ts_h_free_port();
        assert_true(seen[i] > 0);
        assert_false(ts_h_port_busy(seen[i]));
        for (int k = 0; k < i; k++)
            if (seen[k] == seen[i]) fail_msg("port %d handed out twice", seen[i]);
    }
    ts_h_pass();
}

static void test_foreign_listener_refused(void **state)
{
    (void)state;
    int port = 0;
    int fd = listen_on(&port);
    assert_true(fd >= 0);
    assert_true(ts_h_port_busy(port));
    uint64_t t0 = ts_mono_us();
    bool ok = ts_h_wait_port(port, 5000);
    double took_ms = (double)(ts_mono_us() - t0) / 1000;
    close(fd);
    if (ok)
        fail_msg("ts_h_wait_port accepted port %d, which a process the harness did not start listens on",
                 port);
    if (took_ms > 1000)
        fail_msg("ts_h_wait_port took %.0f ms to refuse a foreign listener, want at once", took_ms);
    ts_h_pass();
}

/* A service told to listen on a port someone else holds cannot bind: the
 * harness says so instead of handing the test the other server. */
static void test_service_on_busy_port_refused(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    assert_true(ts_h_wait_port(ts_h.nats_port, 1000));
    assert_true(ts_h_wait_port(ts_h.redis_port, 1000));
    int port = 0;
    int fd = listen_on(&port);
    assert_true(fd >= 0);
    char listen_arg[64];
    snprintf(listen_arg, sizeof listen_arg, "--gateway.listen=127.0.0.1:%d", port);
    const char *orch[] = {NULL};
    const char *gw[] = {listen_arg, NULL};
    ts_h_spawn(&ts_h, "orch", "tessera-orch", orch);
    ts_h_spawn(&ts_h, "gateway", "tessera-gateway", gw);
    bool ok = ts_h_wait_port(port, 5000);
    close(fd);
    ts_h_stop(&ts_h);
    if (ok) fail_msg("ts_h_wait_port accepted port %d although the gateway could not have bound it", port);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_free_ports_are_free_and_distinct),
        TS_H_TEST(test_foreign_listener_refused),
        TS_H_TEST(test_service_on_busy_port_refused),
    };
    return TS_H_RUN("it_harness", tests, NULL, NULL);
}
