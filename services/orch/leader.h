/* Orchestrator leadership: the Redis lock "orch.<world>", held by
 * "<hostname>-<pid>" with a TTL. A thread of its own (with its own Redis
 * connection) renews it every TTL/3 while held and tries to take it every
 * TTL/4 otherwise, so a long handover on the main loop never lets the lease
 * lapse. Only the holder writes to the registry. */
#ifndef TESSERA_ORCH_LEADER_H
#define TESSERA_ORCH_LEADER_H

#include <stdbool.h>
#include <stdint.h>

#include "tessera/status.h"

typedef struct ts_leader ts_leader_t;

/* Starts the lock thread. Free with ts_leader_stop. */
ts_status_t ts_leader_start(ts_leader_t **out, uint32_t world, const char *redis_url, int64_t ttl_ms);
/* Stops the thread and releases the lock if held. NULL is a no-op. */
void ts_leader_stop(ts_leader_t *l);

/* True while this process may act as the leader: the lock is held and the
 * last successful renewal is recent enough that the lease cannot have
 * expired in Redis. Cheap; call before every registry write. */
bool ts_leader_held(ts_leader_t *l);
/* Whether the last attempt reached Redis (false: Redis unreachable, or no
 * attempt yet). */
bool ts_leader_reached(ts_leader_t *l);
/* Lock name ("orch.<world>") and this process's holder id; static storage
 * of l. */
const char *ts_leader_name(const ts_leader_t *l);
const char *ts_leader_holder(const ts_leader_t *l);
int64_t ts_leader_ttl_ms(const ts_leader_t *l);

#endif
