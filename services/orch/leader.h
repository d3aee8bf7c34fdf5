/* Orchestrator leadership: the Redis lock "orch.<world>", held by
 * "<hostname>-<pid>" with a TTL and renewed every TTL/3. Only the holder
 * writes to the registry. */
#ifndef TESSERA_ORCH_LEADER_H
#define TESSERA_ORCH_LEADER_H

#include <stdbool.h>
#include <stdint.h>

#include "tessera/registry.h"

typedef enum {
    TS_LEADER_SAME = 0, /* nothing changed (or nothing was due) */
    TS_LEADER_GAINED,   /* this process just became the leader */
    TS_LEADER_LOST,     /* this process was the leader and is not any more */
} ts_leader_event_t;

typedef struct {
    char name[64];
    char holder[128];
    int64_t ttl_ms;
    bool held;
    uint64_t next_try_us;   /* monotonic time of the next acquire/renew */
    uint64_t renewed_us;    /* monotonic time of the last successful acquire/renew */
    ts_status_t last_error; /* of the last attempt, TS_OK if it reached Redis */
    bool attempted;         /* the last ts_leader_poll call made an attempt */
} ts_leader_t;

void ts_leader_init(ts_leader_t *l, uint32_t world, int64_t ttl_ms);
/* Acquires or renews the lock when due (immediately after init, then every
 * TTL/3). A Redis error keeps the current state until the lease could have
 * expired (TTL since the last renewal), then reports LOST; l->last_error
 * tells the caller to reconnect. */
ts_leader_event_t ts_leader_poll(ts_leader_t *l, ts_registry_t *reg, uint64_t now_us);
/* Releases the lock if held (best effort). */
void ts_leader_release(ts_leader_t *l, ts_registry_t *reg);

#endif
