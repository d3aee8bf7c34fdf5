/* services/gateway/writers.c: a fan-out's staged writes, performed by the
 * calling thread and helper threads, arrive whole and in order on every
 * socket; a piece in the caller's scratch is copied at staging (the caller
 * overwrites it for the next client), a shared one is referenced; a socket
 * that takes only part reports exactly how much; a closed peer reports an
 * error; a skipped write touches nothing. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "writers.h"

#define NSOCK 200

static int pairs[NSOCK][2];

static void open_pairs(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, pairs[i]), 0);
        int fl = fcntl(pairs[i][0], F_GETFL);
        assert_int_equal(fcntl(pairs[i][0], F_SETFL, fl | O_NONBLOCK), 0);
    }
}

static void close_pairs(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pairs[i][0] >= 0) close(pairs[i][0]);
        if (pairs[i][1] >= 0) close(pairs[i][1]);
    }
}

/* What socket i must receive in round r: head, shared block, own tail. */
static size_t expected(size_t i, int r, const uint8_t *shared, size_t shared_len, uint8_t *out)
{
    size_t n = 0;
    for (size_t k = 0; k < 24; k++)
        out[n++] = (uint8_t)(i * 7 + k + (size_t)r);
    memcpy(out + n, shared, shared_len);
    n += shared_len;
    for (size_t k = 0; k < 5 + i % 11; k++)
        out[n++] = (uint8_t)(0xA0 + i + (size_t)r);
    return n;
}

static void read_exactly(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        assert_true(n > 0);
        got += (size_t)n;
    }
}

static void rounds(int threads, size_t nsock, int nrounds)
{
    gw_writers_t *w = gw_writers_new(threads);
    assert_non_null(w);
    open_pairs(nsock);
    static uint8_t shared[3000], scratch[64], tails[NSOCK][32], want[4096], got[4096];
    for (size_t k = 0; k < sizeof shared; k++)
        shared[k] = (uint8_t)(k * 31);
    for (int r = 0; r < nrounds; r++) {
        size_t shared_len = 1 + (size_t)r * 97 % sizeof shared;
        for (size_t i = 0; i < nsock; i++) {
            /* the head is built in scratch, which the next client reuses */
            for (size_t k = 0; k < 24; k++)
                scratch[k] = (uint8_t)(i * 7 + k + (size_t)r);
            size_t tl = 5 + i % 11;
            memset(tails[i], 0xA0 + (int)i + r, tl);
            struct iovec p[3] = {{scratch, 24}, {shared, shared_len}, {tails[i], tl}};
            struct iovec s = {scratch, sizeof scratch};
            assert_int_equal(gw_writers_stage(w, &pairs[i], pairs[i][0], p, 3, 24 + shared_len + tl, &s, 1),
                             TS_OK);
            memset(scratch, 0xEE, sizeof scratch);
        }
        assert_int_equal(gw_writers_count(w), nsock);
        gw_writers_run(w);
        for (size_t i = 0; i < nsock; i++) {
            gw_wjob_t *j = gw_writers_job(w, i);
            assert_ptr_equal(j->owner, &pairs[i]);
            assert_int_equal(j->taken, (ssize_t)j->total);
            size_t n = expected(i, r, shared, shared_len, want);
            assert_int_equal(j->total, n);
            read_exactly(pairs[i][1], got, n);
            assert_memory_equal(got, want, n);
        }
        gw_writers_reset(w);
        assert_int_equal(gw_writers_count(w), 0);
    }
    close_pairs(nsock);
    gw_writers_free(w);
}

static void test_every_write_arrives_whole_with_helpers(void **state)
{
    (void)state;
    rounds(2, NSOCK, 50);
}

static void test_every_write_arrives_whole_alone(void **state)
{
    (void)state;
    rounds(0, NSOCK, 5);
}

static void test_few_writes_stay_on_the_caller(void **state)
{
    (void)state;
    rounds(3, GW_WRITERS_BATCH - 1, 5);
}

static void test_a_full_socket_reports_what_it_took(void **state)
{
    (void)state;
    gw_writers_t *w = gw_writers_new(1);
    assert_non_null(w);
    open_pairs(GW_WRITERS_BATCH);
    size_t big = (size_t)8 << 20;
    uint8_t *data = malloc(big);
    assert_non_null(data);
    for (size_t k = 0; k < big; k++)
        data[k] = (uint8_t)(k * 13 + 1);
    for (size_t i = 0; i < GW_WRITERS_BATCH; i++) {
        struct iovec p = {data, i == 0 ? big : 100};
        assert_int_equal(gw_writers_stage(w, NULL, pairs[i][0], &p, 1, p.iov_len, NULL, 0), TS_OK);
    }
    gw_writers_run(w);
    gw_wjob_t *j = gw_writers_job(w, 0);
    /* the peer reads nothing meanwhile: the socket takes part, no error */
    assert_true(j->taken > 0 && (size_t)j->taken < big);
    for (size_t i = 1; i < GW_WRITERS_BATCH; i++)
        assert_int_equal(gw_writers_job(w, i)->taken, 100);
    /* what it took is exactly the first bytes; the rest follows it */
    size_t took = (size_t)j->taken;
    uint8_t *back = malloc(big);
    assert_non_null(back);
    read_exactly(pairs[0][1], back, took);
    assert_memory_equal(back, data, took);
    size_t off = took;
    while (off < big) {
        struct iovec rest = {data + off, big - off};
        ssize_t n = gw_writers_write(pairs[0][0], &rest, 1);
        assert_true(n >= 0);
        size_t r = (size_t)n;
        read_exactly(pairs[0][1], back + off, r);
        off += r;
    }
    assert_memory_equal(back, data, big);
    free(back);
    free(data);
    close_pairs(GW_WRITERS_BATCH);
    gw_writers_free(w);
}

static void test_a_closed_peer_is_an_error_and_a_skipped_write_nothing(void **state)
{
    (void)state;
    gw_writers_t *w = gw_writers_new(2);
    assert_non_null(w);
    open_pairs(GW_WRITERS_BATCH * 2);
    uint8_t b[10] = {0};
    for (size_t i = 0; i < GW_WRITERS_BATCH * 2; i++) {
        if (i % 2 == 1) {
            close(pairs[i][1]);
            pairs[i][1] = -1;
        }
        struct iovec p = {b, sizeof b};
        assert_int_equal(gw_writers_stage(w, NULL, i == 4 ? -1 : pairs[i][0], &p, 1, sizeof b, NULL, 0),
                         TS_OK);
    }
    gw_writers_run(w);
    for (size_t i = 0; i < GW_WRITERS_BATCH * 2; i++) {
        ssize_t t = gw_writers_job(w, i)->taken;
        if (i == 4)
            assert_int_equal(t, 0);
        else if (i % 2 == 1)
            assert_true(t == -EPIPE || t == -ECONNRESET);
        else
            assert_int_equal(t, (ssize_t)sizeof b);
    }
    close_pairs(GW_WRITERS_BATCH * 2);
    gw_writers_free(w);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the services do */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_write_arrives_whole_with_helpers),
        cmocka_unit_test(test_every_write_arrives_whole_alone),
        cmocka_unit_test(test_few_writes_stay_on_the_caller),
        cmocka_unit_test(test_a_full_socket_reports_what_it_took),
        cmocka_unit_test(test_a_closed_peer_is_an_error_and_a_skipped_write_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
