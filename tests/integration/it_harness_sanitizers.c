/* The integration harness's check of the processes it started: a sanitizer
 * report in a service's log, or a service that died of its sanitizer or of
 * a crash signal nobody sent, fails the test even when the service went on
 * or the test never looked at its exit status. The reports here are
 * provoked on purpose by /bin/sh children that print what ASan, LSan and
 * UBSan print, so the harness is told to expect them. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static int sh(const char *name, const char *script)
{
    const char *args[] = {"-c", script, NULL};
    return ts_h_spawn(&ts_h, name, "/bin/sh", args);
}

/* Every child runs with the sanitizers' exit code set to
 * TS_H_SANITIZER_EXIT, after the options the test itself was given. */
static void test_children_get_sanitizer_exit_code(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    int idx =
        sh("env", "echo \"asan=$ASAN_OPTIONS\"; echo \"lsan=$LSAN_OPTIONS\"; echo \"ubsan=$UBSAN_OPTIONS\"");
    assert_int_equal(ts_h_wait(&ts_h, idx, 5000), 0);
    char want[64];
    snprintf(want, sizeof want, "exitcode=%d\n", TS_H_SANITIZER_EXIT);
    char *log = ts_h_read_log(&ts_h, idx);
    assert_non_null(log);
    const char *vars[] = {"asan", "lsan", "ubsan"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        char prefix[16];
        snprintf(prefix, sizeof prefix, "%s=", vars[i]);
        const char *line = strstr(log, prefix);
        assert_non_null(line);
        const char *nl = strchr(line, '\n');
        assert_non_null(nl);
        /* the harness's exitcode is the last flag of the line: it wins */
        size_t wl = strlen(want);
        if ((size_t)(nl + 1 - line) < wl || strncmp(nl + 1 - wl, want, wl) != 0)
            fail_msg("%.*s does not end with %s", (int)(nl - line), line, want);
    }
    free(log);
    ts_h_stop(&ts_h);
    assert_int_equal(ts_h.sanitizer_reports, 0);
    ts_h_pass();
}

/* Each kind of report counts once per process; clean exits, the test's own
 * signals and ordinary failure statuses do not count. */
static void test_reports_are_found(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    ts_h.sanitizer_reports_expected = true;
    /* UBSan without halt_on_error: prints and goes on, exit 0 */
    int ub = sh("ubsan", "echo starting; echo 'zone.c:12:7: runtime error: signed integer overflow: "
                         "2147483647 + 1 cannot be represented in type int'; echo still running; exit 0");
    /* LSan at exit: a report and the sanitizers' exit code (one process,
     * counted once) */
    int leak = sh("lsan", "echo '==4242==ERROR: LeakSanitizer: detected memory leaks'; echo; "
                          "echo 'Direct leak of 10 byte(s) in 1 object(s) allocated from:'; exit 86");
    /* ASan: a use after free in a process that then stays up until stop */
    sh("asan",
       "echo '==4243==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020'; exec sleep 30");
    /* the sanitizers' exit code with nothing in the log */
    int code = sh("exitcode", "exit 86");
    /* a crash nobody asked for */
    int segv = sh("segv", "kill -SEGV $$");
    /* not reports: a clean exit, a failure status, signals the test sent */
    int clean = sh("clean", "echo all fine; exit 0");
    int status = sh("status", "exit 3");
    int killed = sh("killed", "exec sleep 30");
    int aborted = sh("aborted", "exec sleep 30");
    assert_int_equal(ts_h_wait(&ts_h, ub, 5000), 0);
    assert_int_equal(ts_h_wait(&ts_h, leak, 5000), TS_H_SANITIZER_EXIT);
    assert_int_equal(ts_h_wait(&ts_h, code, 5000), TS_H_SANITIZER_EXIT);
    assert_int_equal(ts_h_wait(&ts_h, segv, 5000), 128 + SIGSEGV);
    assert_int_equal(ts_h_wait(&ts_h, clean, 5000), 0);
    assert_int_equal(ts_h_wait(&ts_h, status, 5000), 3);
    ts_h_signal(&ts_h, killed, SIGKILL);
    ts_h_signal(&ts_h, aborted, SIGABRT);
    assert_int_equal(ts_h_wait(&ts_h, killed, 5000), 128 + SIGKILL);
    assert_int_equal(ts_h_wait(&ts_h, aborted, 5000), 128 + SIGABRT);
    /* a restarted process appends to the same log: its report is one */
    int again = sh("ubsan", "exit 0");
    assert_int_equal(ts_h_wait(&ts_h, again, 5000), 0);
    ts_h_stop(&ts_h);
    /* ubsan, lsan, asan, exitcode, segv */
    assert_int_equal(ts_h.sanitizer_reports, 5);
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TS_H_TEST(test_children_get_sanitizer_exit_code),
        TS_H_TEST(test_reports_are_found),
    };
    return TS_H_RUN("it_harness_sanitizers", tests, NULL, NULL);
}
