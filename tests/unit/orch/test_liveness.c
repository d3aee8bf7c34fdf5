/* Worker liveness as the orchestrator sees it (services/orch/liveness.c):
 * a token read from the liveness key means alive, an empty one dead; a token
 * that changes from one non-empty value to another is a replaced
 * incarnation — reported once, also when the id stays alive throughout; a
 * worker that dies and comes back with a new token is reported as well (the
 * cells it held may still carry its old epoch); "seen" survives a reset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "liveness.h"

static size_t poll1(ts_liveness_t *l, const char *id, const char *token, size_t *rep)
{
    const char *ids[] = {id};
    char tokens[1][TS_WORKER_TOKEN_MAX];
    snprintf(tokens[0], sizeof tokens[0], "%s", token);
    return ts_liveness_apply(l, ids, (const char(*)[TS_WORKER_TOKEN_MAX])tokens, 1, rep, 1);
}

static void test_alive_dead_and_replaced(void **state)
{
    ts_liveness_t l;
    ts_liveness_init(&l);
    size_t rep[1];
    assert_false(ts_liveness_alive(&l, "w1"));
    ts_live_t *e = ts_liveness_add(&l, "w1");
    assert_non_null(e);
    assert_false(e->polled);
    assert_false(e->seen);

    assert_int_equal(poll1(&l, "w1", "a", rep), 0); /* first token: nothing replaced */
    assert_true(ts_liveness_alive(&l, "w1"));
    assert_true(ts_liveness_get(&l, "w1")->seen);
    assert_int_equal(poll1(&l, "w1", "a", rep), 0); /* same process */

    /* a new process behind the same id, never seen dead in between */
    assert_int_equal(poll1(&l, "w1", "b", rep), 1);
    assert_string_equal(l.v[rep[0]].id, "w1");
    assert_int_equal(poll1(&l, "w1", "b", rep), 0); /* reported once */

    /* dead, then back with another token: replaced too */
    assert_int_equal(poll1(&l, "w1", "", rep), 0);
    assert_false(ts_liveness_alive(&l, "w1"));
    assert_true(ts_liveness_get(&l, "w1")->polled);
    assert_int_equal(poll1(&l, "w1", "c", rep), 1);
    /* back with the same token (a late refresh): not replaced */
    assert_int_equal(poll1(&l, "w1", "", rep), 0);
    assert_int_equal(poll1(&l, "w1", "c", rep), 0);

    /* a new leader term starts from what it polls; seen stays */
    ts_liveness_reset(&l);
    assert_false(ts_liveness_alive(&l, "w1"));
    assert_true(ts_liveness_get(&l, "w1")->seen);
    assert_int_equal(poll1(&l, "w1", "d", rep), 0);

    assert_null(ts_liveness_add(&l, ""));
    ts_liveness_free(&l);
}

static void test_many_workers_one_poll(void **state)
{
    ts_liveness_t l;
    ts_liveness_init(&l);
    const char *ids[] = {"w1", "w2", "w3"};
    char tokens[3][TS_WORKER_TOKEN_MAX] = {"a", "b", ""};
    size_t rep[3];
    assert_int_equal(ts_liveness_apply(&l, ids, (const char(*)[TS_WORKER_TOKEN_MAX])tokens, 3, rep, 3), 0);
    snprintf(tokens[0], sizeof tokens[0], "a2");
    snprintf(tokens[2], sizeof tokens[2], "c");
    assert_int_equal(ts_liveness_apply(&l, ids, (const char(*)[TS_WORKER_TOKEN_MAX])tokens, 3, rep, 3), 1);
    assert_string_equal(l.v[rep[0]].id, "w1");
    assert_true(ts_liveness_alive(&l, "w2"));
    assert_true(ts_liveness_alive(&l, "w3"));
    assert_int_equal(l.n, 3);
    ts_liveness_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alive_dead_and_replaced),
        cmocka_unit_test(test_many_workers_one_poll),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
