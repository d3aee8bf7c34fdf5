/* Bounded lock-free ring: items come out in order and intact, a full ring
 * refuses a push without losing anything, and four producer threads racing
 * one consumer deliver every item exactly once, in order per producer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/ring.h"

typedef struct {
    uint64_t producer;
    uint64_t n;
    char pad[40]; /* items larger than a word */
} item_t;

static void test_fifo_and_full(void **state)
{
    ts_ring_t *r = NULL;
    assert_int_equal(ts_ring_create(&r, 5, sizeof(item_t)), TS_OK);
    assert_int_equal(ts_ring_capacity(r), 8);
    item_t it = {0};
    assert_false(ts_ring_pop(r, &it));
    for (uint64_t i = 0; i < 8; i++) {
        item_t in = {.producer = 1, .n = i};
        memset(in.pad, (int)i, sizeof(in.pad));
        assert_true(ts_ring_push(r, &in));
    }
    item_t extra = {.n = 99};
    assert_false(ts_ring_push(r, &extra)); /* full: refused, nothing lost */
    for (uint64_t i = 0; i < 8; i++) {
        assert_true(ts_ring_pop(r, &it));
        assert_int_equal(it.n, i);
        assert_int_equal(it.pad[39], (char)i);
    }
    assert_false(ts_ring_pop(r, &it));
    /* wraps around */
    for (uint64_t round = 0; round < 100; round++) {
        item_t in = {.n = round};
        assert_true(ts_ring_push(r, &in));
        assert_true(ts_ring_pop(r, &it));
        assert_int_equal(it.n, round);
    }
    ts_ring_destroy(r);
    ts_ring_destroy(NULL);
}

static void test_bad_args(void **state)
{
    ts_ring_t *r = NULL;
    assert_int_equal(ts_ring_create(&r, 0, 8), TS_ERR_INVALID);
    assert_int_equal(ts_ring_create(&r, 8, 0), TS_ERR_INVALID);
    assert_int_equal(ts_ring_create(NULL, 8, 8), TS_ERR_INVALID);
}

enum { PRODUCERS = 4, PER_PRODUCER = 50000 };

typedef struct {
    ts_ring_t *r;
    uint64_t id;
    uint64_t refused;
} producer_t;

static void *produce(void *arg)
{
    producer_t *p = arg;
    for (uint64_t i = 0; i < PER_PRODUCER; i++) {
        item_t in = {.producer = p->id, .n = i};
        while (!ts_ring_push(p->r, &in))
            p->refused++;
    }
    return NULL;
}

static void test_many_producers(void **state)
{
    ts_ring_t *r = NULL;
    assert_int_equal(ts_ring_create(&r, 1024, sizeof(item_t)), TS_OK);
    pthread_t th[PRODUCERS];
    producer_t p[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        p[i] = (producer_t){.r = r, .id = (uint64_t)i};
        assert_int_equal(pthread_create(&th[i], NULL, produce, &p[i]), 0);
    }
    uint64_t next[PRODUCERS] = {0};
    uint64_t total = 0;
    while (total < (uint64_t)PRODUCERS * PER_PRODUCER) {
        item_t it;
        if (!ts_ring_pop(r, &it)) continue;
        assert_true(it.producer < PRODUCERS);
        assert_int_equal(it.n, next[it.producer]); /* in order, none lost or doubled */
        next[it.producer]++;
        total++;
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    item_t it;
    assert_false(ts_ring_pop(r, &it));
    ts_ring_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_and_full),
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_many_producers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
