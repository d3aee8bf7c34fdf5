/* The cell registry in Redis (wraps hiredis). Authoritative for who owns
 * which cell at which epoch. One ts_registry_t per thread.
 *
 * Keys (the {w<world>} hash tag keeps one world on one cluster slot):
 *   ts:{w<world>}:meta            hash  cell_size x0 y0 width height
 *   ts:{w<world>}:cells           set   cell keys
 *   ts:{w<world>}:cell:<key>      hash  owner epoch state parent children
 *   ts:{w<world>}:version         counter, bumped by every change
 *   ts:{w<world>}:draining        set   workers being drained (orchestrator)
 *   ts:worker:<id>                hash  capacity started_ms
 *   ts:worker:<id>:alive          the live process's instance token, with a TTL
 *   ts:workers                    set   known worker ids
 *   ts:lock:<name>                string holder, with a TTL
 * Every ownership change is one Lua compare-and-set on the epoch. Scripts run
 * by EVALSHA (loaded once per connection, EVAL if the server lost them). */
#ifndef TESSERA_REGISTRY_H
#define TESSERA_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/status.h"

#define TS_WORKER_ID_MAX 64

/* The one rule for worker ids, everywhere (config, registry keys, NATS
 * subjects, ctl requests): 1 to TS_WORKER_ID_MAX - 1 characters, each a
 * letter, a digit, '-' or '_' (so it is one NATS token, a Redis key part and
 * a Kubernetes pod name's worth). */
bool ts_worker_id_valid(const char *id);
/* Longest instance token + 1 (what a worker process puts in its liveness key). */
#define TS_WORKER_TOKEN_MAX 64

typedef enum { TS_CELL_ACTIVE = 0, TS_CELL_HANDOVER, TS_CELL_SPLIT, TS_CELL_RETIRED } ts_cell_state_t;

typedef struct {
    ts_cell_t cell;
    char owner[TS_WORKER_ID_MAX];
    uint64_t epoch;
    ts_cell_state_t state;
} ts_cell_entry_t;

typedef struct {
    uint32_t id;
    double cell_size;
    int32_t x0, y0;
    int32_t width, height;
} ts_world_t;

typedef struct ts_registry ts_registry_t;

const char *ts_cell_state_str(ts_cell_state_t s);
ts_status_t ts_cell_state_parse(const char *s, ts_cell_state_t *out);

/* Credentials every later connect uses when its URL carries none (copied;
 * process-wide; NULL or "" user: Redis's "default" user; NULL or ""
 * password: no AUTH). Call before connecting, not concurrently with one. */
ts_status_t ts_registry_set_default_auth(const char *user, const char *password);
/* Files for rediss:// connections made from now on: the CA that signs the
 * server's certificate (NULL or "": the system's), and an optional client
 * certificate and key (Redis asks for one unless tls-auth-clients is no or
 * optional). TS_ERR_RANGE if a path is too long. */
ts_status_t ts_registry_set_default_tls(const char *ca, const char *cert, const char *key);

/* url: redis[s]://[user[:password]@]host[:port][/db] (rediss: TLS, see
 * ts_registry_set_default_tls) (user and password may be
 * %-escaped; ":password@" alone authenticates as the default user). With a
 * password the connection sends AUTH first; a refusal is TS_ERR_CONFIG.
 * rediss:// connects over TLS (a certificate refused is TS_ERR_CONFIG). */
ts_status_t ts_registry_connect(ts_registry_t **out, const char *url);
void ts_registry_destroy(ts_registry_t *reg);

ts_status_t ts_registry_world_set(ts_registry_t *reg, const ts_world_t *w);
/* TS_ERR_NOT_FOUND if the orchestrator has not written the world yet. */
ts_status_t ts_registry_world_get(ts_registry_t *reg, uint32_t world, ts_world_t *out);

/* Creates the cell at epoch 1 if absent (TS_OK, *out filled) or returns
 * TS_ERR_EXISTS with the current entry in *out. Bumps the version on create. */
ts_status_t ts_registry_cell_create(ts_registry_t *reg, const ts_cell_entry_t *want, ts_cell_entry_t *out,
                                    uint64_t *version);
/* Many ts_registry_cell_create in one round trip (pipelined), without
 * reading back the existing ones: results[i] is TS_OK (created at epoch 1,
 * versions[i] the version it produced), TS_ERR_EXISTS, or
 * TS_ERR_UNAVAILABLE (not run: ask again). */
ts_status_t ts_registry_cells_create(ts_registry_t *reg, const ts_cell_entry_t *want, size_t n,
                                     ts_status_t *results, uint64_t *versions);
/* TS_ERR_NOT_FOUND for an unknown cell. */
ts_status_t ts_registry_cell_get(ts_registry_t *reg, const ts_cell_t *cell, ts_cell_entry_t *out);
/* All cells of a world; caller frees *out with free(). */
ts_status_t ts_registry_cells(ts_registry_t *reg, uint32_t world, ts_cell_entry_t **out, size_t *n);
/* Atomic compare-and-set: if the cell's epoch is expected_epoch, set owner
 * and state, epoch+1, bump the world version. TS_ERR_CONFLICT (and *out =
 * current entry) otherwise. On TS_OK *out is the new entry. */
ts_status_t ts_registry_cell_cas(ts_registry_t *reg, const ts_cell_t *cell, uint64_t expected_epoch,
                                 const char *new_owner, ts_cell_state_t new_state, ts_cell_entry_t *out,
                                 uint64_t *version);
ts_status_t ts_registry_version(ts_registry_t *reg, uint32_t world, uint64_t *version);

/* One compare-and-set of ts_registry_cells_cas: in are cell, expected_epoch,
 * new_owner, new_state; out are result (TS_OK: set; TS_ERR_CONFLICT: the
 * epoch differed; TS_ERR_NOT_FOUND: unknown cell), entry (the new entry, or
 * the current one on a conflict) and version (the registry version the change
 * produced, or the current one on a conflict). */
typedef struct {
    ts_cell_t cell;
    uint64_t expected_epoch;
    char new_owner[TS_WORKER_ID_MAX];
    ts_cell_state_t new_state;
    ts_status_t result;
    ts_cell_entry_t entry;
    uint64_t version;
} ts_registry_cas_t;
/* Many compare-and-sets of cells of one world in one round trip (pipelined
 * script calls, each atomic over up to 256 cells). TS_OK: every op's result
 * is set. TS_ERR_UNAVAILABLE: the connection broke and nothing is re-sent
 * (some changes may have been applied: re-read). */
ts_status_t ts_registry_cells_cas(ts_registry_t *reg, ts_registry_cas_t *ops, size_t n);

/* Split and merge (one Lua script each, atomic; DESIGN.md "Split and
 * merge"). out[0] is the parent, out[1 + q] the child in quadrant q;
 * versions[i] the registry version the change of out[i] produced (the
 * parent's first), for the RegistryChange of each.
 *
 * split: the parent must be active at expected_epoch and no child live or
 * split. The parent becomes split at epoch + 1 keeping its owner (its
 * forwarder); each child becomes active, same owner, at epoch
 * max(its previous epoch, the parent's new one) + 1 (created if absent).
 * merge: the parent must be split at expected_epoch and its four children
 * active with one owner W. Each child becomes retired at its epoch + 1
 * (owner W, its forwarder); the parent active at epoch + 1, owner W.
 * TS_ERR_CONFLICT: the parent's epoch or state differs (out[0] is the
 * parent as it is); TS_ERR_STALE: the children do not allow it (out[0] as
 * it is); TS_ERR_NOT_FOUND: no such parent; TS_ERR_RANGE: a cell at
 * TS_CELL_MAX_DEPTH has no children; TS_ERR_UNAVAILABLE: the connection
 * broke and the script is not re-sent (it may have run: re-read). A
 * refused call changes nothing. */
ts_status_t ts_registry_cell_split(ts_registry_t *reg, const ts_cell_t *parent, uint64_t expected_epoch,
                                   ts_cell_entry_t out[5], uint64_t versions[5]);
ts_status_t ts_registry_cell_merge(ts_registry_t *reg, const ts_cell_t *parent, uint64_t expected_epoch,
                                   ts_cell_entry_t out[5], uint64_t versions[5]);

/* Checks a whole registry of one world (no I/O): no cell of another world
 * or listed twice; every live cell (active, handover) lies under split
 * cells only (so live cells never overlap); every point of the world's
 * root cells is served by a live cell. False with the first problem
 * written into why (may be NULL). */
bool ts_registry_cells_check(const ts_world_t *w, const ts_cell_entry_t *cells, size_t n, char *why,
                             size_t cap);

/* Marks a worker alive for ttl_ms and records its capacity, whatever process
 * held the id before (the liveness key holds the token "1"). Superseded by
 * claim/refresh. */
ts_status_t ts_registry_worker_alive(ts_registry_t *reg, const char *id, int64_t ttl_ms, uint32_t capacity);
/* Instance tokens: a worker process picks a token unique to itself (1-63
 * printable characters) and keeps it for its life.
 * claim (at start): atomically, if ts:worker:<id>:alive holds another token
 * -> TS_ERR_EXISTS (another live process is this id: refuse to start); else
 * the key holds token for ttl_ms and the capacity is recorded.
 * refresh (periodically): if the key holds another token -> TS_ERR_CONFLICT
 * (another process is this id now: stop acting as it); else (same token, or
 * expired) the key holds token for ttl_ms again. */
ts_status_t ts_registry_worker_claim(ts_registry_t *reg, const char *id, const char *token, int64_t ttl_ms,
                                     uint32_t capacity);
ts_status_t ts_registry_worker_refresh(ts_registry_t *reg, const char *id, const char *token, int64_t ttl_ms,
                                       uint32_t capacity);
/* The current token of each of n workers in one round trip (pipelined);
 * tokens[i] is "" if ids[i] is not alive. */
ts_status_t ts_registry_workers_liveness(ts_registry_t *reg, const char *const *ids, size_t n,
                                         char (*tokens)[TS_WORKER_TOKEN_MAX]);
/* The same, plus the world's registry version and the known worker ids
 * (caller frees *known with ts_registry_free_list), in one round trip. */
ts_status_t ts_registry_liveness_poll(ts_registry_t *reg, uint32_t world, const char *const *ids, size_t n,
                                      char (*tokens)[TS_WORKER_TOKEN_MAX], uint64_t *version, char ***known,
                                      size_t *nknown);
ts_status_t ts_registry_worker_is_alive(ts_registry_t *reg, const char *id, bool *alive);
/* Known worker ids (alive or not); caller frees with ts_registry_free_list. */
ts_status_t ts_registry_workers(ts_registry_t *reg, char ***ids, size_t *n);
ts_status_t ts_registry_worker_forget(ts_registry_t *reg, const char *id);
void ts_registry_free_list(char **ids, size_t n);

/* Leader lock: acquires the lock if free, or renews it if holder holds it.
 * *held tells whether holder holds it now. */
ts_status_t ts_registry_lock(ts_registry_t *reg, const char *name, const char *holder, int64_t ttl_ms,
                             bool *held);
/* Releases only if holder holds it. */
ts_status_t ts_registry_unlock(ts_registry_t *reg, const char *name, const char *holder);

/* Workers of a world that are being drained (their cells handed away), so a
 * new orchestrator leader carries on. */
ts_status_t ts_registry_draining_add(ts_registry_t *reg, uint32_t world, const char *id);
ts_status_t ts_registry_draining_remove(ts_registry_t *reg, uint32_t world, const char *id);
/* Caller frees with ts_registry_free_list. */
ts_status_t ts_registry_draining(ts_registry_t *reg, uint32_t world, char ***ids, size_t *n);

/* Round trips to Redis this connection made so far (a pipeline counts one). */
uint64_t ts_registry_round_trips(const ts_registry_t *reg);
/* Connections opened so far: a change between two calls means the
 * connection dropped (Redis may have restarted and lost recent writes). */
uint64_t ts_registry_connects(const ts_registry_t *reg);

/* Deletes every key of a world (tests, make run). */
ts_status_t ts_registry_world_reset(ts_registry_t *reg, uint32_t world);

/* ---- loss of the registry ----
 * Redis may come back empty (restarted without its append-only file, or
 * flushed). The orchestrator notices with ts_registry_world_probe and
 * writes the registry back with ts_registry_rebuild from what the workers
 * and the checkpoints still know, so epochs and the version only go up. */

/* Whether the world's metadata exists and the registry version (0 if
 * none), in one round trip. */
ts_status_t ts_registry_world_probe(ts_registry_t *reg, uint32_t world, bool *has_meta, uint64_t *version);
/* Writes cells[0..n) (one world) back: a cell absent from the registry, or
 * present at a lower epoch, takes the given owner, epoch and state; a cell
 * present at the same or a higher epoch is left alone (epochs never go
 * backwards). The version becomes at least version_floor, then goes up by
 * one per cell written; versions[i] is the version cell i's write produced
 * (0: left alone). The world's metadata w is written last, so metadata
 * present means the cells are back. Each call of the script is atomic over
 * at most 256 cells. TS_ERR_UNAVAILABLE: the connection broke (some may
 * have been written: probe again). */
ts_status_t ts_registry_rebuild(ts_registry_t *reg, const ts_world_t *w, const ts_cell_entry_t *cells,
                                size_t n, uint64_t version_floor, uint64_t *versions);

#endif
