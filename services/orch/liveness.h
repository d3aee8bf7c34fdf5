/* Worker liveness as the leading orchestrator sees it: per worker id the
 * instance token its liveness key holds ("" when the key expired), the last
 * token seen, whether it was ever seen alive by this process, and how many
 * cells the registry gives it. Fed by one pipelined read per period
 * (ts_registry_liveness_poll); pure bookkeeping, unit-tested.
 *
 * Incarnations: a token that differs from the last non-empty token seen for
 * the id means the process behind the id was replaced (restarted, or another
 * process took the id after the key expired). The cells the id held before
 * belong to the previous incarnation and are recovered like a dead worker's
 * (epoch + 1), even though the id is alive again. Not thread-safe (main
 * loop). */
#ifndef TESSERA_ORCH_LIVENESS_H
#define TESSERA_ORCH_LIVENESS_H

#include <stdbool.h>
#include <stddef.h>

#include "tessera/registry.h"
#include "tessera/status.h"

/* Most worker ids tracked. */
#define TS_LIVENESS_MAX 4096

typedef struct {
    char id[TS_WORKER_ID_MAX];
    char token[TS_WORKER_TOKEN_MAX]; /* as of the last poll; "" = not alive */
    char last[TS_WORKER_TOKEN_MAX];  /* last non-empty token seen */
    bool polled;                     /* token is from a poll (not just added) */
    bool seen;                       /* seen alive since this process started */
    size_t ncells;                   /* cells the registry copy gives it */
} ts_live_t;

typedef struct {
    ts_live_t *v;
    size_t n, cap;
} ts_liveness_t;

void ts_liveness_init(ts_liveness_t *l);
void ts_liveness_free(ts_liveness_t *l);
/* The entry of id, or NULL. */
ts_live_t *ts_liveness_get(ts_liveness_t *l, const char *id);
/* The entry of id, added (not alive, not polled) if new; NULL when the table
 * is full or the id is invalid. */
ts_live_t *ts_liveness_add(ts_liveness_t *l, const char *id);
/* Whether the last poll found id alive. */
bool ts_liveness_alive(const ts_liveness_t *l, const char *id);
/* Applies one poll result (tokens[i] for ids[i]). For every id whose token
 * changed from one non-empty token to another, its index goes into
 * replaced[] (up to cap); returns how many were replaced. */
size_t ts_liveness_apply(ts_liveness_t *l, const char *const *ids, const char (*tokens)[TS_WORKER_TOKEN_MAX],
                         size_t n, size_t *replaced, size_t cap);
/* Forgets every token (a new leader term starts from what it polls). */
void ts_liveness_reset(ts_liveness_t *l);

#endif
