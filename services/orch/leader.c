/* Leader lock thread. Invariant: ts_leader_held() is true only while the
 * last successful acquire/renew started less than SAFE_PCT of a TTL ago.
 * The clock reading is taken before the request is sent, so Redis's own
 * expiry is always later: a leader cut off from Redis, or whose lock was
 * taken over, stops acting before another process can hold the lock. */
#include "leader.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tessera/log.h"
#include "tessera/registry.h"
#include "tessera/util.h"

#define SAFE_PCT 90

struct ts_leader {
    char name[64];
    char holder[128];
    char redis_url[512];
    int64_t ttl_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stop;
    atomic_bool held;
    atomic_uint_fast64_t valid_until_us; /* monotonic */
    atomic_bool reached;
};

static void wait_ms(ts_leader_t *l, int64_t ms)
{
    struct timespec until;
    ts_mono_deadline(&until, ms > 0 ? (uint64_t)ms * 1000000ULL : 0);
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        if (pthread_cond_timedwait(&l->cond, &l->mu, &until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&l->mu);
}

static bool stopping(ts_leader_t *l)
{
    pthread_mutex_lock(&l->mu);
    bool s = l->stop;
    pthread_mutex_unlock(&l->mu);
    return s;
}

static void *run(void *arg)
{
    ts_leader_t *l = arg;
    ts_registry_t *reg = NULL;
    uint64_t safe_us = (uint64_t)l->ttl_ms * 1000 * SAFE_PCT / 100;
    while (!stopping(l)) {
        uint64_t t0 = ts_mono_us();
        bool held = false;
        ts_status_t st = reg ? TS_OK : ts_registry_connect(&reg, l->redis_url);
        if (st == TS_OK) st = ts_registry_lock(reg, l->name, l->holder, l->ttl_ms, &held);
        if (st == TS_OK) {
            if (held) atomic_store(&l->valid_until_us, t0 + safe_us);
            atomic_store(&l->held, held);
        } else {
            ts_registry_destroy(reg);
            reg = NULL;
        }
        atomic_store(&l->reached, st == TS_OK);
        int64_t period = atomic_load(&l->held) ? l->ttl_ms / 3 : l->ttl_ms / 4;
        wait_ms(l, period > 0 ? period : 1);
    }
    if (reg && atomic_load(&l->held)) ts_registry_unlock(reg, l->name, l->holder);
    atomic_store(&l->held, false);
    ts_registry_destroy(reg);
    return NULL;
}

ts_status_t ts_leader_start(ts_leader_t **out, uint32_t world, const char *redis_url, int64_t ttl_ms)
{
    *out = NULL;
    ts_leader_t *l = calloc(1, sizeof *l);
    if (!l) return TS_ERR_NOMEM;
    snprintf(l->name, sizeof l->name, "orch.%u", world);
    char host[64] = "localhost";
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    /* host and pid name it for people; the random part keeps two processes
     * apart where both are pid 1 of the same host name (containers on a
     * node's network) */
    ts_rng_t rng;
    ts_rng_seed(&rng, ts_now_us() ^ ts_mono_ns() ^ ((uint64_t)getpid() << 32));
    snprintf(l->holder, sizeof l->holder, "%s-%ld-%06llx", host, (long)getpid(),
             (unsigned long long)(ts_rng_next(&rng) & 0xffffff));
    ts_strlcpy(l->redis_url, redis_url, sizeof l->redis_url);
    l->ttl_ms = ttl_ms > 0 ? ttl_ms : 2000;
    atomic_init(&l->held, false);
    atomic_init(&l->valid_until_us, 0);
    atomic_init(&l->reached, false);
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&l->thread, NULL, run, l) != 0) {
        pthread_cond_destroy(&l->cond);
        pthread_mutex_destroy(&l->mu);
        free(l);
        return TS_ERR_NOMEM;
    }
    *out = l;
    return TS_OK;
}

void ts_leader_stop(ts_leader_t *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    pthread_cond_destroy(&l->cond);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

bool ts_leader_held(ts_leader_t *l)
{
    return atomic_load(&l->held) && ts_mono_us() < atomic_load(&l->valid_until_us);
}

bool ts_leader_reached(ts_leader_t *l)
{
    return atomic_load(&l->reached);
}

const char *ts_leader_name(const ts_leader_t *l)
{
    return l->name;
}

const char *ts_leader_holder(const ts_leader_t *l)
{
    return l->holder;
}

int64_t ts_leader_ttl_ms(const ts_leader_t *l)
{
    return l->ttl_ms;
}
