/* Unit tests for common/src/service.c: --help and bad configuration exit
 * codes and output, logging started as the service, the stop counter the
 * signal handlers bump, and connect retries that give up after their timeout
 * or at a stop signal. No servers: connections go to a closed loopback port. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tessera/log.h"
#include "tessera/service.h"
#include "tessera/util.h"
#include "testutil.h"

#define PREAMBLE "usage: tessera-test [--key=value ...]\nA test service.\n\n"

static const ts_service_t svc = {.name = "tessera-test", .usage = PREAMBLE};

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_help_prints_preamble_and_options(void **state)
{
    args_t a;
    mkargs(&a, "--world.id=3", "--help", NULL);
    ts_config_t cfg;
    int code = -1;
    capture_t cap;
    capture_start(&cap, 1);
    bool run = ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code);
    char *out = capture_end(&cap);
    assert_false(run);
    assert_int_equal(code, 0);
    assert_ptr_equal(strstr(out, PREAMBLE), out);
    assert_non_null(strstr(out, "--log.level="));
    assert_non_null(strstr(out, "TESSERA_NATS_URL"));
    free(out);
    ts_config_free(&cfg);

    mkargs(&a, "-h", NULL);
    capture_start(&cap, 1);
    run = ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code);
    out = capture_end(&cap);
    assert_false(run);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, PREAMBLE));
    free(out);
}

static void test_help_after_double_dash_is_an_argument(void **state)
{
    args_t a;
    mkargs(&a, "--world.id=4", "--", "--help", NULL);
    ts_config_t cfg;
    char **rest = NULL;
    int nrest = 0, code = -1;
    ts_service_t quiet = svc;
    quiet.no_signals = true;
    assert_true(ts_service_init(&quiet, a.argc, a.argv, &cfg, &rest, &nrest, &code));
    assert_int_equal(code, 0);
    assert_int_equal(cfg.world_id, 4);
    assert_int_equal(nrest, 1);
    assert_string_equal(rest[0], "--help");
    ts_config_free(&cfg);
}

static void test_bad_flag_is_one_line_and_exit_2(void **state)
{
    args_t a;
    mkargs(&a, "--no.such.key=1", NULL);
    ts_config_t cfg;
    int code = -1;
    capture_t cap;
    capture_start(&cap, 2);
    bool run = ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code);
    char *err = capture_end(&cap);
    assert_false(run);
    assert_int_equal(code, 2);
    assert_ptr_equal(strstr(err, "tessera-test: "), err);
    assert_non_null(strstr(err, "--no.such.key"));
    assert_non_null(strstr(err, "--help"));
    assert_int_equal(count_lines(err), 1);
    free(err);
    ts_config_free(&cfg); /* already freed: harmless */

    /* a bad value, and a service that wants another exit status */
    ts_service_t one = svc;
    one.config_exit = 1;
    mkargs(&a, "--log.level=loud", NULL);
    capture_start(&cap, 2);
    run = ts_service_init(&one, a.argc, a.argv, &cfg, NULL, NULL, &code);
    err = capture_end(&cap);
    assert_false(run);
    assert_int_equal(code, 1);
    assert_non_null(strstr(err, "log.level"));
    assert_int_equal(count_lines(err), 1);
    free(err);

    /* positional arguments where the service takes none */
    mkargs(&a, "stray", NULL);
    capture_start(&cap, 2);
    run = ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code);
    err = capture_end(&cap);
    assert_false(run);
    assert_int_equal(code, 2);
    assert_non_null(strstr(err, "stray"));
    free(err);
}

static void test_good_config_starts_logging(void **state)
{
    args_t a;
    mkargs(&a, "--log.level=debug", "--world.id=7", NULL);
    ts_config_t cfg;
    int code = -1;
    assert_true(ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code));
    assert_int_equal(code, 0);
    assert_int_equal(cfg.world_id, 7);
    assert_true(ts_log_enabled(TS_LOG_DEBUG));
    capture_t cap;
    capture_start(&cap, 2);
    ts_info("hello from the test");
    char *err = capture_end(&cap);
    assert_non_null(strstr(err, "tessera-test"));
    assert_non_null(strstr(err, "hello from the test"));
    free(err);
    ts_config_free(&cfg);

    mkargs(&a, "--log.level=warn", "--log.format=json", NULL);
    assert_true(ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code));
    assert_false(ts_log_enabled(TS_LOG_INFO));
    capture_start(&cap, 2);
    ts_warn("json line");
    err = capture_end(&cap);
    assert_int_equal(err[0], '{');
    assert_non_null(strstr(err, "\"svc\":\"tessera-test\""));
    free(err);
    ts_config_free(&cfg);
}

static void test_signals_count_up_to_two(void **state)
{
    args_t a;
    mkargs(&a, NULL);
    ts_config_t cfg;
    int code = -1;
    assert_true(ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code));
    volatile sig_atomic_t *stop = ts_service_stop_flag();
    *stop = 0;
    assert_false(ts_service_stopping());
    raise(SIGTERM);
    assert_int_equal(*stop, 1);
    assert_true(ts_service_stopping());
    raise(SIGINT);
    assert_int_equal(*stop, 2);
    raise(SIGTERM);
    assert_int_equal(*stop, 2);
    raise(SIGPIPE); /* ignored: the process lives on */
    *stop = 0;
    ts_config_free(&cfg);

    /* a counter of the service's own */
    static volatile sig_atomic_t mine;
    ts_service_t own = svc;
    own.stop = &mine;
    assert_true(ts_service_init(&own, a.argc, a.argv, &cfg, NULL, NULL, &code));
    assert_ptr_equal(ts_service_stop_flag(), &mine);
    raise(SIGINT);
    assert_int_equal(mine, 1);
    assert_int_equal(*stop, 0);
    mine = 0;
    ts_config_free(&cfg);

    /* no_signals leaves the default action in place */
    signal(SIGTERM, SIG_DFL);
    ts_service_t quiet = svc;
    quiet.no_signals = true;
    assert_true(ts_service_init(&quiet, a.argc, a.argv, &cfg, NULL, NULL, &code));
    struct sigaction sa;
    assert_int_equal(sigaction(SIGTERM, NULL, &sa), 0);
    assert_ptr_equal(sa.sa_handler, SIG_DFL);
    ts_config_free(&cfg);
    assert_true(ts_service_init(&svc, a.argc, a.argv, &cfg, NULL, NULL, &code));
    ts_config_free(&cfg);
}

/* A config whose NATS and Redis URLs point at a closed loopback port. */
static void closed_config(ts_config_t *cfg)
{
    char nats[64], redis[64];
    int port = closed_port();
    snprintf(nats, sizeof nats, "--nats.url=nats://127.0.0.1:%d", port);
    snprintf(redis, sizeof redis, "--redis.url=redis://127.0.0.1:%d", port);
    args_t a;
    mkargs(&a, nats, redis, "--log.level=error", NULL);
    int code = -1;
    assert_true(ts_service_init(&svc, a.argc, a.argv, cfg, NULL, NULL, &code));
    *ts_service_stop_flag() = 0;
}

static void test_connect_gives_up_after_timeout(void **state)
{
    ts_config_t cfg;
    closed_config(&cfg);

    ts_bus_t *bus = (ts_bus_t *)&cfg; /* must be reset to NULL */
    uint64_t t0 = ts_mono_us();
    assert_int_not_equal(ts_service_connect_bus(&cfg, "test", 600, &bus), TS_OK);
    uint64_t ms = (ts_mono_us() - t0) / 1000;
    assert_null(bus);
    assert_in_range(ms, 550, 3000);

    ts_registry_t *reg = (ts_registry_t *)&cfg;
    t0 = ts_mono_us();
    assert_int_not_equal(ts_service_connect_registry(&cfg, 600, &reg), TS_OK);
    ms = (ts_mono_us() - t0) / 1000;
    assert_null(reg);
    assert_in_range(ms, 550, 3000);
    ts_config_free(&cfg);
}

static void test_connect_returns_early_when_stopping(void **state)
{
    ts_config_t cfg;
    closed_config(&cfg);
    *ts_service_stop_flag() = 1;

    ts_bus_t *bus = NULL;
    ts_registry_t *reg = NULL;
    ts_world_t world;
    uint64_t t0 = ts_mono_us();
    assert_int_equal(ts_service_connect_bus(&cfg, "test", 10000, &bus), TS_ERR_UNAVAILABLE);
    assert_int_equal(ts_service_connect_registry(&cfg, 10000, &reg), TS_ERR_UNAVAILABLE);
    assert_int_equal(ts_service_wait_world(&cfg, reg, 10000, &world), TS_ERR_UNAVAILABLE);
    assert_false(ts_service_retry_wait(ts_mono_us() + 10000000));
    assert_true((ts_mono_us() - t0) / 1000 < 200);
    assert_null(bus);
    assert_null(reg);

    *ts_service_stop_flag() = 0;
    assert_false(ts_service_retry_wait(ts_mono_us())); /* deadline passed */
    t0 = ts_mono_us();
    assert_true(ts_service_retry_wait(ts_mono_us() + 10000000));
    assert_in_range((ts_mono_us() - t0) / 1000, TS_SERVICE_RETRY_MS - 20, TS_SERVICE_RETRY_MS + 300);
    ts_config_free(&cfg);
}

static void *signal_later(void *arg)
{
    ts_sleep_ms(*(const int64_t *)arg);
    kill(getpid(), SIGTERM);
    return NULL;
}

static void test_signal_ends_connect_retries(void **state)
{
    ts_config_t cfg;
    closed_config(&cfg);
    static const int64_t delay_ms = 300;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, signal_later, (void *)&delay_ms), 0);
    ts_registry_t *reg = NULL;
    uint64_t t0 = ts_mono_us();
    assert_int_not_equal(ts_service_connect_registry(&cfg, 20000, &reg), TS_OK);
    uint64_t ms = (ts_mono_us() - t0) / 1000;
    pthread_join(t, NULL);
    assert_null(reg);
    assert_int_equal(*ts_service_stop_flag(), 1);
    assert_in_range(ms, 250, 2000);
    *ts_service_stop_flag() = 0;
    ts_config_free(&cfg);
}

static void test_signal_cuts_the_pause_short(void **state)
{
    ts_config_t cfg;
    closed_config(&cfg);
    static const int64_t delay_ms = 100;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, signal_later, (void *)&delay_ms), 0);
    uint64_t t0 = ts_mono_us();
    assert_false(ts_service_retry_wait(t0 + 10000000));
    uint64_t ms = (ts_mono_us() - t0) / 1000;
    pthread_join(t, NULL);
    assert_in_range(ms, 50, TS_SERVICE_RETRY_MS - 100);
    *ts_service_stop_flag() = 0;
    ts_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_prints_preamble_and_options),
        cmocka_unit_test(test_help_after_double_dash_is_an_argument),
        cmocka_unit_test(test_bad_flag_is_one_line_and_exit_2),
        cmocka_unit_test(test_good_config_starts_logging),
        cmocka_unit_test(test_signals_count_up_to_two),
        cmocka_unit_test(test_connect_gives_up_after_timeout),
        cmocka_unit_test(test_connect_returns_early_when_stopping),
        cmocka_unit_test(test_signal_ends_connect_retries),
        cmocka_unit_test(test_signal_cuts_the_pause_short),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ts_service_shutdown();
    return failed;
}
