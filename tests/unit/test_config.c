/* Unit tests for common/src/config.c: defaults, precedence (default < file
 * < env < flag), YAML nesting and sequences, error messages, argv handling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tessera/config.h"
#include "testutil.h"

static char tmp_paths[8][64];
static int ntmp;

static const char *write_yaml(const char *text)
{
    assert_true(ntmp < 8);
    char *path = tmp_paths[ntmp++];
    snprintf(path, 64, "/tmp/ts_test_config_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static void clear_env(void)
{
    static const char *vars[] = {"TESSERA_CONFIG",          "TESSERA_NATS_URL",  "TESSERA_WORLD_ID",
                                 "TESSERA_WORLD_CELL_SIZE", "TESSERA_LOG_LEVEL", "TESSERA_GATEWAY_TICK_HZ",
                                 "TESSERA_NOT_A_KEY"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

static int setup(void **state)
{
    clear_env();
    return 0;
}

static int teardown(void **state)
{
    clear_env();
    for (int i = 0; i < ntmp; i++)
        unlink(tmp_paths[i]);
    ntmp = 0;
    return 0;
}

/* Loads with argv; returns the status, err filled. */
static ts_status_t load(ts_config_t *cfg, int argc, char **argv, char *err, size_t cap)
{
    return ts_config_load(cfg, argc, argv, NULL, NULL, err, cap);
}

static void test_defaults(void **state)
{
    ts_config_t cfg;
    char err[256];
    args_t argv;
    mkargs(&argv, NULL);
    assert_int_equal(load(&cfg, argv.argc, argv.argv, err, sizeof err), TS_OK);
    assert_null(cfg.config_file);
    assert_string_equal(cfg.log_level, "info");
    assert_string_equal(cfg.log_format, "text");
    assert_string_equal(cfg.nats_url, "nats://127.0.0.1:4222");
    assert_string_equal(cfg.redis_url, "redis://127.0.0.1:6379");
    assert_int_equal(cfg.world_id, 0);
    assert_true(cfg.world_cell_size == 100.0);
    assert_int_equal(cfg.world_x0, -2);
    assert_int_equal(cfg.world_y0, -2);
    assert_int_equal(cfg.world_width, 4);
    assert_int_equal(cfg.world_height, 4);
    assert_string_equal(cfg.world_workers, "w1,w2");
    assert_string_equal(cfg.world_assign, "");
    assert_int_equal(cfg.stream_max_age_s, 3600);
    assert_string_equal(cfg.stream_storage, "file");
    assert_int_equal(cfg.stream_replicas, 1);
    assert_string_equal(cfg.gateway_listen, "127.0.0.1:7400");
    assert_int_equal(cfg.gateway_id, 1);
    assert_int_equal(cfg.gateway_max_frame, 65536);
    assert_int_equal(cfg.gateway_max_clients, 10000);
    assert_int_equal(cfg.gateway_rate_limit, 200);
    assert_int_equal(cfg.gateway_tick_hz, 20);
    assert_int_equal(cfg.gateway_aoi_radius, 1);
    assert_string_equal(cfg.worker_id, "w1");
    assert_int_equal(cfg.worker_tick_hz, 20);
    assert_int_equal(cfg.worker_capacity, 5000);
    assert_int_equal(cfg.worker_hb_ms, 250);
    assert_true(cfg.worker_max_speed == 50.0);
    assert_int_equal(cfg.orch_hb_ttl_ms, 1500);
    assert_int_equal(cfg.orch_status_ms, 0);
    assert_int_equal(cfg.orch_lock_ttl_ms, 2000);
    assert_int_equal(cfg.orch_handover_timeout_ms, 1000);
    assert_int_equal(cfg.orch_rebalance, 1);
    assert_int_equal(cfg.orch_rebalance_interval_ms, 2000);
    assert_int_equal(cfg.orch_rebalance_cooldown_ms, 10000);
    assert_true(cfg.orch_rebalance_threshold == 0.25);
    assert_int_equal(cfg.orch_rebalance_hysteresis, 3);
    assert_int_equal(cfg.sim_players, 1000);
    assert_int_equal(cfg.sim_rate_hz, 5);
    assert_int_equal(cfg.sim_duration_s, 0);
    assert_int_equal(cfg.sim_seed, 1);
    assert_true(cfg.sim_speed == 20.0);
    ts_config_free(&cfg);

    /* no argv at all (embedded use) */
    char **rest = NULL;
    int nrest = -1;
    assert_int_equal(ts_config_load(&cfg, 0, NULL, &rest, &nrest, err, sizeof err), TS_OK);
    assert_int_equal(nrest, 0);
    assert_string_equal(cfg.worker_id, "w1");
    ts_config_free(&cfg);
}

/* Each source overrides the one before, for a string, an int and a double. */
static void test_precedence(void **state)
{
    const char *file = write_yaml("nats:\n  url: nats://file:1\n"
                                  "world:\n  id: 7\n  cell_size: 50.5\n"
                                  "log:\n  level: warn\n");
    ts_config_t cfg;
    char err[256];

    /* file over default */
    args_t a1;
    mkargs(&a1, "--config", file, NULL);
    assert_int_equal(load(&cfg, a1.argc, a1.argv, err, sizeof err), TS_OK);
    assert_string_equal(cfg.config_file, file);
    assert_string_equal(cfg.nats_url, "nats://file:1");
    assert_int_equal(cfg.world_id, 7);
    assert_true(cfg.world_cell_size == 50.5);
    assert_string_equal(cfg.log_level, "warn");
    ts_config_free(&cfg);

    /* env over file (file found through TESSERA_CONFIG) */
    setenv("TESSERA_CONFIG", file, 1);
    setenv("TESSERA_NATS_URL", "nats://env:2", 1);
    setenv("TESSERA_WORLD_ID", "8", 1);
    setenv("TESSERA_WORLD_CELL_SIZE", "25.25", 1);
    args_t a2;
    mkargs(&a2, NULL);
    assert_int_equal(load(&cfg, a2.argc, a2.argv, err, sizeof err), TS_OK);
    assert_string_equal(cfg.nats_url, "nats://env:2");
    assert_int_equal(cfg.world_id, 8);
    assert_true(cfg.world_cell_size == 25.25);
    assert_string_equal(cfg.log_level, "warn"); /* only in the file */
    ts_config_free(&cfg);

    /* flag over env */
    args_t a3;
    mkargs(&a3, "--nats.url=nats://flag:3", "--world.id", "9", "--world.cell_size=12.5", NULL);
    assert_int_equal(load(&cfg, a3.argc, a3.argv, err, sizeof err), TS_OK);
    assert_string_equal(cfg.nats_url, "nats://flag:3");
    assert_int_equal(cfg.world_id, 9);
    assert_true(cfg.world_cell_size == 12.5);
    assert_string_equal(cfg.log_level, "warn");
    ts_config_free(&cfg);
}

static void test_config_flag_beats_env(void **state)
{
    const char *f1 = write_yaml("world:\n  id: 1\n");
    const char *f2 = write_yaml("world:\n  id: 2\n");
    setenv("TESSERA_CONFIG", f1, 1);
    ts_config_t cfg;
    char err[256];
    args_t argv;
    char flag[128];
    snprintf(flag, sizeof flag, "--config=%s", f2);
    mkargs(&argv, flag, NULL);
    assert_int_equal(load(&cfg, argv.argc, argv.argv, err, sizeof err), TS_OK);
    assert_int_equal(cfg.world_id, 2);
    ts_config_free(&cfg);
}

static void test_yaml_nesting_and_sequences(void **state)
{
    const char *file = write_yaml("# comment\n"
                                  "gateway: {listen: '127.0.0.1:9000', tick_hz: 30}\n"
                                  "world:\n"
                                  "  workers: [a, b, c]\n"
                                  "  assign:\n"
                                  "    - '-2:-2=a'\n"
                                  "    - '1:1=c'\n"
                                  "worker.id: w9\n"
                                  "sim: {}\n");
    ts_config_t cfg;
    char err[256];
    args_t argv;
    mkargs(&argv, "--config", file, NULL);
    assert_int_equal(load(&cfg, argv.argc, argv.argv, err, sizeof err), TS_OK);
    assert_string_equal(cfg.gateway_listen, "127.0.0.1:9000");
    assert_int_equal(cfg.gateway_tick_hz, 30);
    assert_string_equal(cfg.world_workers, "a,b,c");
    assert_string_equal(cfg.world_assign, "-2:-2=a,1:1=c");
    assert_string_equal(cfg.worker_id, "w9");
    assert_int_equal(cfg.sim_players, 1000);
    ts_config_free(&cfg);
}

static void test_empty_file_and_null_values(void **state)
{
    const char *empty = write_yaml("");
    const char *nulls = write_yaml("world:\n  assign: ~\n  workers: []\n");
    ts_config_t cfg;
    char err[256];
    args_t a1;
    mkargs(&a1, "--config", empty, NULL);
    assert_int_equal(load(&cfg, a1.argc, a1.argv, err, sizeof err), TS_OK);
    assert_string_equal(cfg.world_workers, "w1,w2");
    ts_config_free(&cfg);
    args_t a2;
    mkargs(&a2, "--config", nulls, NULL);
    assert_int_equal(load(&cfg, a2.argc, a2.argv, err, sizeof err), TS_OK);
    assert_string_equal(cfg.world_assign, "");
    assert_string_equal(cfg.world_workers, "");
    ts_config_free(&cfg);
}

static void test_unknown_yaml_key(void **state)
{
    const char *file = write_yaml("gateway:\n  listen: 127.0.0.1:1\n  tick_hzz: 5\n");
    ts_config_t cfg;
    char err[256];
    args_t argv;
    mkargs(&argv, "--config", file, NULL);
    assert_int_equal(load(&cfg, argv.argc, argv.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "gateway.tick_hzz"));
    assert_non_null(strstr(err, file));
    assert_non_null(strstr(err, ":3")); /* line of the bad key */
    ts_config_free(&cfg);

    const char *section = write_yaml("bogus:\n  x: 1\n");
    args_t a2;
    mkargs(&a2, "--config", section, NULL);
    assert_int_equal(load(&cfg, a2.argc, a2.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "bogus"));
    ts_config_free(&cfg);
}

static void test_bad_yaml_values(void **state)
{
    struct {
        const char *yaml;
        const char *want; /* substring of err */
    } cases[] = {
        {"world:\n  id: seven\n", "world.id"},
        {"world:\n  id: -1\n", "out of range"},
        {"world:\n  cell_size: fast\n", "world.cell_size"},
        {"gateway:\n  tick_hz: 0\n", "gateway.tick_hz"},
        {"log:\n  format: xml\n", "text|json"},
        {"gateway:\n  listen: nowhere\n", "host:port"},
        {"world:\n  id: 1\n  id: 2\n", "duplicate"},
        {"world: [1, 2]\n", "world"},
        {"world:\n  workers: [[a]]\n", "world.workers"},
        {"config: /etc/x.yaml\n", "config"},
        {"- a\n- b\n", "mapping"},
        {"world: {id: 1\n", "invalid YAML"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *file = write_yaml(cases[i].yaml);
        ts_config_t cfg;
        char err[256] = "";
        args_t argv;
        mkargs(&argv, "--config", file, NULL);
        ts_status_t st = load(&cfg, argv.argc, argv.argv, err, sizeof err);
        if (st != TS_ERR_CONFIG || !strstr(err, cases[i].want) || !strstr(err, file))
            fail_msg("case %zu (%s): status %d err \"%s\", want \"%s\"", i, cases[i].yaml, st, err,
                     cases[i].want);
        ts_config_free(&cfg);
        unlink(file);
        ntmp--;
    }
}

static void test_missing_file(void **state)
{
    ts_config_t cfg;
    char err[256];
    args_t argv;
    mkargs(&argv, "--config", "/nonexistent/tessera.yaml", NULL);
    assert_int_equal(load(&cfg, argv.argc, argv.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "/nonexistent/tessera.yaml"));
    assert_non_null(strstr(err, "--config"));
    ts_config_free(&cfg);

    setenv("TESSERA_CONFIG", "/nonexistent/env.yaml", 1);
    args_t a2;
    mkargs(&a2, NULL);
    assert_int_equal(load(&cfg, a2.argc, a2.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "TESSERA_CONFIG"));
    ts_config_free(&cfg);
}

static void test_bad_env_and_flag_values(void **state)
{
    ts_config_t cfg;
    char err[256];
    setenv("TESSERA_WORLD_ID", "12abc", 1);
    args_t a1;
    mkargs(&a1, NULL);
    assert_int_equal(load(&cfg, a1.argc, a1.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "TESSERA_WORLD_ID"));
    assert_non_null(strstr(err, "world.id"));
    ts_config_free(&cfg);
    unsetenv("TESSERA_WORLD_ID");

    args_t a2;
    mkargs(&a2, "--gateway.tick_hz=99999999999999999999", NULL);
    assert_int_equal(load(&cfg, a2.argc, a2.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "--gateway.tick_hz"));
    assert_non_null(strstr(err, "out of range"));
    ts_config_free(&cfg);

    args_t a3;
    mkargs(&a3, "--world.cell_size", "inf", NULL);
    assert_int_equal(load(&cfg, a3.argc, a3.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "world.cell_size"));
    ts_config_free(&cfg);

    args_t a4;
    mkargs(&a4, "--world.cell_size", "", NULL);
    assert_int_equal(load(&cfg, a4.argc, a4.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "not a number"));
    ts_config_free(&cfg);
}

static void test_unknown_flag_and_env(void **state)
{
    ts_config_t cfg;
    char err[256];
    args_t a1;
    mkargs(&a1, "--gateway.lisen=1.2.3.4:5", NULL);
    assert_int_equal(load(&cfg, a1.argc, a1.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "--gateway.lisen"));
    ts_config_free(&cfg);

    args_t a2;
    mkargs(&a2, "--world.id", NULL);
    assert_int_equal(load(&cfg, a2.argc, a2.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "needs a value"));
    ts_config_free(&cfg);

    /* unknown TESSERA_* variables are ignored, empty ones too */
    setenv("TESSERA_NOT_A_KEY", "x", 1);
    setenv("TESSERA_WORLD_ID", "", 1);
    args_t a3;
    mkargs(&a3, NULL);
    assert_int_equal(load(&cfg, a3.argc, a3.argv, err, sizeof err), TS_OK);
    assert_int_equal(cfg.world_id, 0);
    ts_config_free(&cfg);
}

static void test_flag_forms_and_rest(void **state)
{
    ts_config_t cfg;
    char err[256];
    char **rest = NULL;
    int nrest = -1;
    args_t argv;
    mkargs(&argv, "move", "--world.x0", "-5", "-1", "--worker.id=w7", "0.5", "--", "--not-a-flag", NULL);
    assert_int_equal(ts_config_load(&cfg, argv.argc, argv.argv, &rest, &nrest, err, sizeof err), TS_OK);
    assert_int_equal(cfg.world_x0, -5);
    assert_string_equal(cfg.worker_id, "w7");
    assert_int_equal(nrest, 4);
    assert_string_equal(rest[0], "move");
    assert_string_equal(rest[1], "-1");
    assert_string_equal(rest[2], "0.5");
    assert_string_equal(rest[3], "--not-a-flag");
    ts_config_free(&cfg);

    /* positional arguments are an error when the caller takes none */
    args_t a2;
    mkargs(&a2, "stray", NULL);
    assert_int_equal(load(&cfg, a2.argc, a2.argv, err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "stray"));
    ts_config_free(&cfg);

    /* no arguments: empty rest */
    args_t a3;
    mkargs(&a3, NULL);
    assert_int_equal(ts_config_load(&cfg, a3.argc, a3.argv, &rest, &nrest, err, sizeof err), TS_OK);
    assert_int_equal(nrest, 0);
    ts_config_free(&cfg);
}

static void test_choices_normalised(void **state)
{
    ts_config_t cfg;
    char err[256];
    setenv("TESSERA_LOG_LEVEL", "DEBUG", 1);
    args_t argv;
    mkargs(&argv, "--log.format=JSON", "--stream.storage", "memory", NULL);
    assert_int_equal(load(&cfg, argv.argc, argv.argv, err, sizeof err), TS_OK);
    assert_string_equal(cfg.log_level, "debug");
    assert_string_equal(cfg.log_format, "json");
    assert_string_equal(cfg.stream_storage, "memory");
    ts_config_free(&cfg);
}

static void test_help(void **state)
{
    ts_config_t cfg;
    char err[256];
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    FILE *cap = tmpfile();
    assert_non_null(cap);
    dup2(fileno(cap), STDOUT_FILENO);
    args_t argv;
    mkargs(&argv, "--world.id=3", "--help", NULL);
    ts_status_t st = load(&cfg, argv.argc, argv.argv, err, sizeof err);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    assert_int_equal(st, TS_ERR_CONFIG);
    assert_string_equal(err, "help");
    ts_config_free(&cfg);

    char out[16384];
    rewind(cap);
    size_t n = fread(out, 1, sizeof out - 1, cap);
    out[n] = '\0';
    fclose(cap);
    assert_non_null(strstr(out, "--gateway.listen"));
    assert_non_null(strstr(out, "TESSERA_GATEWAY_LISTEN"));
    assert_non_null(strstr(out, "127.0.0.1:7400"));
    assert_non_null(strstr(out, "TESSERA_WORLD_CELL_SIZE"));
}

static void test_set_and_free(void **state)
{
    ts_config_t cfg;
    char err[256];
    args_t argv;
    mkargs(&argv, NULL);
    assert_int_equal(load(&cfg, argv.argc, argv.argv, err, sizeof err), TS_OK);
    assert_int_equal(ts_config_set(&cfg, "worker.id", "w42", err, sizeof err), TS_OK);
    assert_string_equal(cfg.worker_id, "w42");
    assert_int_equal(ts_config_set(&cfg, "worker.hb_ms", "300", err, sizeof err), TS_OK);
    assert_int_equal(cfg.worker_hb_ms, 300);
    assert_int_equal(ts_config_set(&cfg, "worker.hb_ms", "soon", err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "worker.hb_ms"));
    assert_int_equal(cfg.worker_hb_ms, 300); /* unchanged on error */
    assert_int_equal(ts_config_set(&cfg, "nope", "1", err, sizeof err), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "nope"));
    ts_config_free(&cfg);
    assert_null(cfg.worker_id);
    ts_config_free(&cfg); /* twice is fine */
    ts_config_free(NULL);

    ts_config_t zero;
    memset(&zero, 0, sizeof zero);
    ts_config_free(&zero);
}

static void test_split_hostport(void **state)
{
    char host[64];
    int port = 0;
    assert_int_equal(ts_config_split_hostport("127.0.0.1:7400", host, sizeof host, &port), TS_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 7400);
    assert_int_equal(ts_config_split_hostport("localhost:1", host, sizeof host, &port), TS_OK);
    assert_string_equal(host, "localhost");
    assert_int_equal(port, 1);
    assert_int_equal(ts_config_split_hostport("[::1]:65535", host, sizeof host, &port), TS_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 65535);

    assert_int_equal(ts_config_split_hostport("127.0.0.1", host, sizeof host, &port), TS_ERR_PARSE);
    assert_int_equal(ts_config_split_hostport("127.0.0.1:", host, sizeof host, &port), TS_ERR_PARSE);
    assert_int_equal(ts_config_split_hostport(":80", host, sizeof host, &port), TS_ERR_PARSE);
    assert_int_equal(ts_config_split_hostport("h:8x", host, sizeof host, &port), TS_ERR_PARSE);
    assert_int_equal(ts_config_split_hostport("h:-1", host, sizeof host, &port), TS_ERR_PARSE);
    assert_int_equal(ts_config_split_hostport("::1:80", host, sizeof host, &port), TS_ERR_PARSE);
    assert_int_equal(ts_config_split_hostport("h:65536", host, sizeof host, &port), TS_ERR_RANGE);
    assert_int_equal(ts_config_split_hostport("averyveryverylonghostname:1", host, 8, &port), TS_ERR_RANGE);
    assert_int_equal(ts_config_split_hostport(NULL, host, sizeof host, &port), TS_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_flag_beats_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_nesting_and_sequences, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_file_and_null_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_yaml_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_yaml_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_env_and_flag_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_flag_and_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_forms_and_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_choices_normalised, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_and_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_hostport, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
