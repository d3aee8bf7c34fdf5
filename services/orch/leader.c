/* Leader lock bookkeeping. Invariant: l->held is true only while the last
 * successful acquire/renew is less than one TTL old, so a leader cut off
 * from Redis stops acting as leader before another process can take the
 * lock over. */
#include "leader.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void ts_leader_init(ts_leader_t *l, uint32_t world, int64_t ttl_ms)
{
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "orch.%u", world);
    char host[64] = "localhost";
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(l->holder, sizeof l->holder, "%s-%ld", host, (long)getpid());
    l->ttl_ms = ttl_ms > 0 ? ttl_ms : 3000;
}

ts_leader_event_t ts_leader_poll(ts_leader_t *l, ts_registry_t *reg, uint64_t now_us)
{
    l->attempted = now_us >= l->next_try_us;
    if (!l->attempted)
        return TS_LEADER_SAME;
    uint64_t period_us = (uint64_t)l->ttl_ms * 1000 / 3;
    l->next_try_us = now_us + (period_us > 0 ? period_us : 1000);

    bool held = false;
    l->last_error = reg ? ts_registry_lock(reg, l->name, l->holder, l->ttl_ms, &held) : TS_ERR_UNAVAILABLE;
    if (l->last_error != TS_OK) {
        if (l->held && now_us - l->renewed_us >= (uint64_t)l->ttl_ms * 1000) {
            l->held = false;
            return TS_LEADER_LOST;
        }
        return TS_LEADER_SAME;
    }
    if (held)
        l->renewed_us = now_us;
    if (held == l->held)
        return TS_LEADER_SAME;
    l->held = held;
    return held ? TS_LEADER_GAINED : TS_LEADER_LOST;
}

void ts_leader_release(ts_leader_t *l, ts_registry_t *reg)
{
    if (l->held && reg)
        ts_registry_unlock(reg, l->name, l->holder);
    l->held = false;
}
