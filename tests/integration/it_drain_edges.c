/* Drains that cannot hand cells away must not hold a stopping worker for
 * its whole drain timeout (30 s; Kubernetes would kill it first):
 *
 *   - the last worker: its drain was accepted while another worker still
 *     looked alive, then that one died. Once the orchestrator answers that
 *     no other worker is live, the draining worker stops at once and says
 *     why;
 *   - a worker whose NATS is already gone stops on SIGTERM within a few
 *     seconds and says why.
 *
 * Real nats-server, redis-server, orchestrator and two workers. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tessera/util.h"

#define WORLD 0
#define NCELLS 16
#define DRAIN_TIMEOUT_MS 30000 /* the worker's own limit (worker.c) */

static void wait_log(int idx, const char *text, int64_t timeout_ms)
{
    if (!ts_h_wait_log(&ts_h, idx, text, timeout_ms)) {
        ts_h.failed = true;
        fail_msg("%s did not log \"%s\" within %lld ms", ts_h.procs[idx].name, text, (long long)timeout_ms);
    }
}

static void test_last_worker_stops_when_no_other_is_live(void **state)
{
    ts_h_stack_t st;
    const char *orch[] = {"--orch.rebalance=0", NULL};
    ts_h_spawn_stack(&ts_h, orch, NULL, NULL, &st);
    assert_true(ts_h_wait_world(&ts_h, WORLD, NCELLS, 15000));
    int w1 = st.workers[0], w2 = st.workers[1];
    wait_log(w1, "bound at epoch", 15000);
    wait_log(w2, "bound at epoch", 15000);

    /* w1 hangs: the orchestrator still counts it live for its liveness TTL,
     * so it accepts w2's drain and tries to hand w2's cells to w1 */
    ts_h_signal(&ts_h, w1, SIGSTOP);
    uint64_t t0 = ts_mono_us();
    ts_h_signal(&ts_h, w2, SIGTERM);
    wait_log(w2, "orchestrator says: ok draining", 5000);
    /* then w1 is gone for good: nobody can take w2's cells any more */
    ts_h_signal(&ts_h, w1, SIGKILL);
    assert_int_equal(ts_h_wait(&ts_h, w1, 5000), 128 + SIGKILL);

    int rc = ts_h_wait(&ts_h, w2, DRAIN_TIMEOUT_MS + 10000);
    uint64_t took_ms = (ts_mono_us() - t0) / 1000;
    if (rc != 0 || took_ms >= DRAIN_TIMEOUT_MS / 3) {
        ts_h.failed = true;
        fail_msg("w2 exited with %d after %llu ms; want 0, well before its %d ms drain timeout", rc,
                 (unsigned long long)took_ms, DRAIN_TIMEOUT_MS);
    }
    /* and both say why */
    assert_true(ts_h_log_has(&ts_h, w2, "orchestrator says: error: no other live worker"));
    assert_true(ts_h_log_has(&ts_h, w2, "the orchestrator cannot hand my"));
    wait_log(st.orch, "no other live worker can take its", 5000); /* it still runs */
    ts_h_pass();
}

static void test_sigterm_without_nats_exits_quickly(void **state)
{
    ts_h_stack_t st;
    const char *orch[] = {"--orch.rebalance=0", NULL};
    ts_h_spawn_stack(&ts_h, orch, NULL, NULL, &st);
    assert_true(ts_h_wait_world(&ts_h, WORLD, NCELLS, 15000));
    int w1 = st.workers[0];
    wait_log(w1, "bound at epoch", 15000);

    /* NATS goes away for good, and the worker notices */
    ts_h_signal(&ts_h, TS_H_NATS, SIGKILL);
    assert_true(ts_h_wait(&ts_h, TS_H_NATS, 5000) >= 0);
    wait_log(w1, "disconnected from NATS", 5000);

    uint64_t t0 = ts_mono_us();
    ts_h_signal(&ts_h, w1, SIGTERM);
    int rc = ts_h_wait(&ts_h, w1, 20000);
    uint64_t took_ms = (ts_mono_us() - t0) / 1000;
    if (rc != 0 || took_ms > 5000) {
        ts_h.failed = true;
        fail_msg("w1 exited with %d after %llu ms of SIGTERM without NATS; want 0 within 5 s", rc,
                 (unsigned long long)took_ms);
    }
    assert_true(ts_h_log_has(&ts_h, w1, "NATS is unreachable"));
    ts_h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_last_worker_stops_when_no_other_is_live, ts_h_test_start,
                                        ts_h_test_stop),
        cmocka_unit_test_setup_teardown(test_sigterm_without_nats_exits_quickly, ts_h_test_start,
                                        ts_h_test_stop),
    };
    return TS_H_RUN("it_drain_edges", tests, NULL, NULL);
}
