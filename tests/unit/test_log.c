/* Unit tests for common/src/log.c: line formats, JSON escaping, level
 * filter, and that concurrent lines never interleave. stderr is redirected
 * to a temporary file while a test logs. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tessera/log.h"
#include "testutil.h"

#define TS_LEN 24 /* "2026-11-22T03:30:00.123Z" */
#define MAX_LINES 8192

typedef struct {
    capture_t fd;
    char *text;
    char *lines[MAX_LINES];
    int nlines;
} log_capture_t;

static void log_capture_start(log_capture_t *c)
{
    memset(c, 0, sizeof *c);
    capture_start(&c->fd, STDERR_FILENO);
}

/* Restores stderr and splits what was logged into lines (the '\n' of each
 * line is checked and removed). */
static void log_capture_end(log_capture_t *c)
{
    c->text = capture_end(&c->fd);
    size_t got = strlen(c->text);
    assert_true(got == 0 || c->text[got - 1] == '\n');
    for (char *p = c->text; *p;) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        *nl = '\0';
        assert_true(c->nlines < MAX_LINES);
        c->lines[c->nlines++] = p;
        p = nl + 1;
    }
}

static void log_capture_free(log_capture_t *c)
{
    free(c->text);
    c->text = NULL;
}

/* Checks "YYYY-MM-DDTHH:MM:SS.mmmZ" at s. */
static void assert_timestamp(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; i < sizeof shape - 1; i++) {
        if (shape[i] == 'd') {
            if (s[i] < '0' || s[i] > '9') fail_msg("timestamp \"%.24s\": position %zu is not a digit", s, i);
        } else if (s[i] != shape[i]) {
            fail_msg("timestamp \"%.24s\": expected '%c' at %zu", s, shape[i], i);
        }
    }
}

static void test_text_format(void **state)
{
    log_capture_t c;
    ts_log_init("gateway", TS_LOG_DEBUG, false);
    log_capture_start(&c);
    ts_debug("tick %d", 1);
    ts_info("listening on %s:%d", "127.0.0.1", 7400);
    ts_warn("slow");
    ts_error("bad\nthing\x01 end\n");
    log_capture_end(&c);

    assert_int_equal(c.nlines, 4);
    for (int i = 0; i < c.nlines; i++)
        assert_timestamp(c.lines[i]);
    assert_string_equal(c.lines[0] + TS_LEN, " DEBUG gateway: tick 1");
    assert_string_equal(c.lines[1] + TS_LEN, " INFO  gateway: listening on 127.0.0.1:7400");
    assert_string_equal(c.lines[2] + TS_LEN, " WARN  gateway: slow");
    /* an embedded newline never splits the event; the trailing one is dropped */
    assert_string_equal(c.lines[3] + TS_LEN, " ERROR gateway: bad\\nthing\\x01 end");
    log_capture_free(&c);
}

/* A URL with credentials never shows its password in a log line; the rest
 * of the line, and URLs without one, are left alone. */
static void test_passwords_masked(void **state)
{
    (void)state;
    log_capture_t c;
    ts_log_init("orch", TS_LOG_DEBUG, false);
    log_capture_start(&c);
    ts_info("started: nats nats://orch:s3cret@127.0.0.1:4222, redis redis://orch:p%%40ss@localhost:6379/0");
    ts_info("plain nats://127.0.0.1:4222 and user:pass@ without a scheme, time 12:30");
    ts_info("token nats://tok3n@h:1 and redis://:only@h/2");
    log_capture_end(&c);
    assert_int_equal(c.nlines, 3);
    assert_string_equal(c.lines[0] + TS_LEN,
                        " INFO  orch: started: nats nats://orch:******@127.0.0.1:4222, redis "
                        "redis://orch:******@localhost:6379/0");
    assert_string_equal(
        c.lines[1] + TS_LEN,
        " INFO  orch: plain nats://127.0.0.1:4222 and user:pass@ without a scheme, time 12:30");
    /* a bare token is a user name to the URL parser: shown; a password is not */
    assert_string_equal(c.lines[2] + TS_LEN, " INFO  orch: token nats://tok3n@h:1 and redis://:****@h/2");
    log_capture_free(&c);
}

static void test_json_format_and_escaping(void **state)
{
    log_capture_t c;
    ts_log_init("wor\"ker", TS_LOG_INFO, true);
    log_capture_start(&c);
    ts_info("plain");
    ts_warn("quote \" backslash \\ nl \n tab \t cr \r ctl \x01\x1f del \x7f");
    ts_error("utf8 caf\xc3\xa9 \xe2\x82\xac bad \xff \xc3 end");
    log_capture_end(&c);

    assert_int_equal(c.nlines, 3);
    const char *pre = "{\"ts\":\"";
    for (int i = 0; i < c.nlines; i++) {
        assert_memory_equal(c.lines[i], pre, strlen(pre));
        assert_timestamp(c.lines[i] + strlen(pre));
    }
    size_t off = strlen(pre) + TS_LEN;
    assert_string_equal(c.lines[0] + off, "\",\"level\":\"info\",\"svc\":\"wor\\\"ker\",\"msg\":\"plain\"}");
    assert_string_equal(
        c.lines[1] + off,
        "\",\"level\":\"warn\",\"svc\":\"wor\\\"ker\",\"msg\":"
        "\"quote \\\" backslash \\\\ nl \\n tab \\t cr \\r ctl \\u0001\\u001f del \\u007f\"}");
    /* valid UTF-8 passes through; invalid bytes become U+FFFD */
    assert_string_equal(c.lines[2] + off, "\",\"level\":\"error\",\"svc\":\"wor\\\"ker\",\"msg\":"
                                          "\"utf8 caf\xc3\xa9 \xe2\x82\xac bad \\ufffd \\ufffd end\"}");
    log_capture_free(&c);
}

static void test_level_filter(void **state)
{
    log_capture_t c;
    ts_log_init("orch", TS_LOG_WARN, false);
    assert_false(ts_log_enabled(TS_LOG_DEBUG));
    assert_false(ts_log_enabled(TS_LOG_INFO));
    assert_true(ts_log_enabled(TS_LOG_WARN));
    assert_true(ts_log_enabled(TS_LOG_ERROR));
    log_capture_start(&c);
    ts_debug("d");
    ts_info("i");
    ts_warn("w");
    ts_error("e");
    log_capture_end(&c);
    assert_int_equal(c.nlines, 2);
    assert_string_equal(c.lines[0] + TS_LEN, " WARN  orch: w");
    assert_string_equal(c.lines[1] + TS_LEN, " ERROR orch: e");
    log_capture_free(&c);
}

static void test_level_parse(void **state)
{
    ts_log_level_t l = TS_LOG_ERROR;
    assert_true(ts_log_level_parse("debug", &l));
    assert_int_equal(l, TS_LOG_DEBUG);
    assert_true(ts_log_level_parse("INFO", &l));
    assert_int_equal(l, TS_LOG_INFO);
    assert_true(ts_log_level_parse("warn", &l));
    assert_int_equal(l, TS_LOG_WARN);
    assert_true(ts_log_level_parse("error", &l));
    assert_int_equal(l, TS_LOG_ERROR);
    l = TS_LOG_INFO;
    assert_false(ts_log_level_parse("verbose", &l));
    assert_false(ts_log_level_parse("", &l));
    assert_false(ts_log_level_parse(NULL, &l));
    assert_int_equal(l, TS_LOG_INFO);
}

static void test_long_message(void **state)
{
    size_t n = 100000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    big[n / 2] = '"';
    log_capture_t c;
    ts_log_init("sim", TS_LOG_INFO, true);
    log_capture_start(&c);
    ts_info("%s", big);
    log_capture_end(&c);
    assert_int_equal(c.nlines, 1);
    const char *msg = strstr(c.lines[0], "\"msg\":\"");
    assert_non_null(msg);
    msg += strlen("\"msg\":\"");
    assert_int_equal(strlen(msg), n + 1 /* escape */ + 2 /* "} */);
    assert_memory_equal(msg + n / 2, "\\\"", 2);
    log_capture_free(&c);
    free(big);
}

#define THREADS 4
#define PER_THREAD 500

static void *log_many(void *arg)
{
    long id = (long)arg;
    for (int i = 0; i < PER_THREAD; i++)
        ts_info("thread %ld line %d %s", id, i,
                "padding padding padding padding padding padding padding padding padding padding");
    return NULL;
}

/* Lines logged by concurrent threads come out whole, none lost. */
static void test_threads_do_not_interleave(void **state)
{
    log_capture_t c;
    ts_log_init("worker", TS_LOG_INFO, false);
    log_capture_start(&c);
    pthread_t th[THREADS];
    for (long i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, log_many, (void *)i), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    log_capture_end(&c);

    assert_int_equal(c.nlines, THREADS * PER_THREAD);
    int next[THREADS] = {0};
    for (int i = 0; i < c.nlines; i++) {
        assert_timestamp(c.lines[i]);
        long id;
        int seq, used = 0;
        if (sscanf(c.lines[i] + TS_LEN, " INFO  worker: thread %ld line %d padding%n", &id, &seq, &used) !=
                2 ||
            used == 0)
            fail_msg("mangled line: %s", c.lines[i]);
        assert_true(id >= 0 && id < THREADS);
        assert_int_equal(seq, next[id]); /* each thread's lines in order */
        next[id]++;
    }
    log_capture_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_format),      cmocka_unit_test(test_json_format_and_escaping),
        cmocka_unit_test(test_level_filter),     cmocka_unit_test(test_level_parse),
        cmocka_unit_test(test_long_message),     cmocka_unit_test(test_threads_do_not_interleave),
        cmocka_unit_test(test_passwords_masked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
