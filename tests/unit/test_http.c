/* The metrics and health listener: what a probe or a scraper gets over a
 * real loopback socket. /healthz follows the heartbeat (starting, ok,
 * stalled), /readyz the ready callback and the stopping flag, /metrics the
 * registry, other paths 404, other methods 405; an empty listen address
 * turns the listener off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tessera/http.h"
#include "tessera/log.h"
#include "tessera/util.h"

/* One request; returns the status code and copies the body into body. */
static int request(int port, const char *method, const char *path, char *body, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                     method, path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    static char resp[1 << 16];
    size_t got = 0;
    ssize_t r;
    while (got + 1 < sizeof resp && (r = read(fd, resp + got, sizeof resp - 1 - got)) > 0)
        got += (size_t)r;
    resp[got] = '\0';
    close(fd);
    int status = 0;
    assert_int_equal(sscanf(resp, "HTTP/1.1 %d", &status), 1);
    const char *b = strstr(resp, "\r\n\r\n");
    snprintf(body, cap, "%s", b ? b + 4 : "");
    return status;
}

typedef struct {
    atomic_bool ready;
} svc_t;

static bool svc_ready(void *ud, char *why, size_t cap)
{
    svc_t *s = ud;
    if (atomic_load(&s->ready)) return true;
    snprintf(why, cap, "cells not bound yet");
    return false;
}

static void test_endpoints(void **state)
{
    ts_metrics_t *m = NULL;
    const char *cl[] = {"worker", "w1", NULL};
    assert_int_equal(ts_metrics_create(&m, cl), TS_OK);
    ts_counter_t *c = ts_metrics_counter(m, "tessera_things_total", "Things.", NULL);
    ts_counter_add(c, 3);
    svc_t svc;
    atomic_init(&svc.ready, false);
    ts_http_t *h = NULL;
    ts_http_opts_t o = {
        .listen = "127.0.0.1:0", .metrics = m, .stale_ms = 300, .ready = svc_ready, .ready_ud = &svc};
    assert_int_equal(ts_http_start(&h, &o), TS_OK);
    assert_non_null(h);
    int port = ts_http_port(h);
    assert_true(port > 0);
    char body[8192];

    /* before the first beat the process is starting: alive, not ready */
    assert_int_equal(request(port, "GET", "/healthz", body, sizeof body), 200);
    assert_int_equal(request(port, "GET", "/readyz", body, sizeof body), 503);
    assert_non_null(strstr(body, "cells not bound yet"));

    ts_http_beat(h);
    atomic_store(&svc.ready, true);
    assert_int_equal(request(port, "GET", "/healthz", body, sizeof body), 200);
    assert_string_equal(body, "ok\n");
    assert_int_equal(request(port, "GET", "/readyz", body, sizeof body), 200);
    assert_string_equal(body, "ready\n");

    assert_int_equal(request(port, "GET", "/metrics", body, sizeof body), 200);
    assert_non_null(strstr(body, "# TYPE tessera_things_total counter\n"));
    assert_non_null(strstr(body, "tessera_things_total{worker=\"w1\"} 3\n"));

    assert_int_equal(request(port, "GET", "/", body, sizeof body), 404);
    assert_int_equal(request(port, "GET", "/metricsx", body, sizeof body), 404);
    assert_int_equal(request(port, "POST", "/metrics", body, sizeof body), 405);

    /* the loop stops turning: /healthz fails once the beat is stale_ms old */
    uint64_t deadline = ts_mono_us() + 5000000ULL;
    while (request(port, "GET", "/healthz", body, sizeof body) == 200) {
        assert_true(ts_mono_us() < deadline);
        ts_sleep_ms(50);
    }
    assert_non_null(strstr(body, "stalled"));
    ts_http_beat(h);
    assert_int_equal(request(port, "GET", "/healthz", body, sizeof body), 200);

    /* a drain or shutdown began: not ready any more, still alive */
    ts_http_set_stopping(h);
    assert_int_equal(request(port, "GET", "/readyz", body, sizeof body), 503);
    assert_non_null(strstr(body, "stopping"));
    assert_int_equal(request(port, "GET", "/healthz", body, sizeof body), 200);

    ts_http_stop(h);
    ts_metrics_destroy(m);
}

static void test_health_states_without_sockets(void **state)
{
    ts_http_t *h = NULL;
    ts_http_opts_t o = {.listen = "127.0.0.1:0", .stale_ms = 1000};
    assert_int_equal(ts_http_start(&h, &o), TS_OK);
    char body[256];
    uint64_t now = ts_mono_us();
    assert_int_equal(ts_http_healthz(h, now, body, sizeof body), 200);
    ts_http_beat(h);
    now = ts_mono_us();
    assert_int_equal(ts_http_healthz(h, now + 900000ULL, body, sizeof body), 200);
    assert_int_equal(ts_http_healthz(h, now + 1100000ULL, body, sizeof body), 503);
    assert_non_null(strstr(body, "stalled"));
    /* no ready callback: ready unless stopping */
    assert_int_equal(ts_http_readyz(h, body, sizeof body), 200);
    ts_http_set_stopping(h);
    assert_int_equal(ts_http_readyz(h, body, sizeof body), 503);
    ts_http_stop(h);
}

static void test_off_and_bad_addresses(void **state)
{
    ts_http_t *h = (ts_http_t *)1;
    ts_http_opts_t off = {.listen = ""};
    assert_int_equal(ts_http_start(&h, &off), TS_OK);
    assert_null(h);
    /* every call takes the NULL listener */
    ts_http_beat(NULL);
    ts_http_set_stopping(NULL);
    ts_http_stop(NULL);
    ts_http_opts_t bad = {.listen = "no-port"};
    assert_int_equal(ts_http_start(&h, &bad), TS_ERR_CONFIG);
    assert_null(h);
    /* a port someone holds */
    ts_http_t *first = NULL;
    ts_http_opts_t any = {.listen = "127.0.0.1:0"};
    assert_int_equal(ts_http_start(&first, &any), TS_OK);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ts_http_port(first));
    ts_http_opts_t busy = {.listen = addr};
    assert_int_equal(ts_http_start(&h, &busy), TS_ERR_IO);
    assert_null(h);
    ts_http_stop(first);
}

int main(void)
{
    ts_log_init("test_http", TS_LOG_ERROR, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_health_states_without_sockets),
        cmocka_unit_test(test_off_and_bad_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
