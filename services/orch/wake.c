/* The main loop's wake-up: it sleeps until the next timer is due or another
 * thread has work for it (a ctl request queued, a handover answer arrived). */
#include <time.h>

#include "orch.h"
#include "tessera/util.h"

void ts_orch_wake_init(ts_orch_t *o)
{
    pthread_mutex_init(&o->wake_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&o->wake_cond, &ca);
    pthread_condattr_destroy(&ca);
    o->woken = false;
}

void ts_orch_wake_destroy(ts_orch_t *o)
{
    pthread_mutex_destroy(&o->wake_mu);
    pthread_cond_destroy(&o->wake_cond);
}

void ts_orch_wake(ts_orch_t *o)
{
    pthread_mutex_lock(&o->wake_mu);
    o->woken = true;
    pthread_cond_signal(&o->wake_cond);
    pthread_mutex_unlock(&o->wake_mu);
}

void ts_orch_wait(ts_orch_t *o, int64_t timeout_ms)
{
    struct timespec until;
    ts_mono_deadline(&until, timeout_ms > 0 ? (uint64_t)timeout_ms * 1000000ULL : 0);
    pthread_mutex_lock(&o->wake_mu);
    while (!o->woken && !*o->stop) {
        if (pthread_cond_timedwait(&o->wake_cond, &o->wake_mu, &until) != 0) break;
    }
    o->woken = false;
    pthread_mutex_unlock(&o->wake_mu);
}
