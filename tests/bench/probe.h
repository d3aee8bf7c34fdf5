/* What tessera-bench and the failure-mode integration tests (it_handover,
 * it_recovery) observe of a running cluster: the latest heartbeat of every
 * worker, the orchestrator's tessera.ctl.<world>.* requests and their
 * replies, and tessera-sim's final verdict. No cmocka here: callers decide
 * what a failure means. */
#ifndef TS_PROBE_H
#define TS_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "harness.h"
#include "ledger.h"
#include "tessera/bus.h"
#include "tessera/cell.h"
#include "tessera/registry.h"
#include "tessera/status.h"

#define TS_PROBE_CELLS 64
#define TS_PROBE_WORKERS 8

typedef struct {
    ts_cell_t cell;
    uint64_t epoch;
} ts_probe_cell_t;

/* A worker's latest heartbeat. */
typedef struct {
    char worker[TS_WORKER_ID_MAX];
    uint64_t received_us; /* ts_mono_us() when it arrived */
    uint64_t inputs_applied;
    uint32_t entities;
    double tick_p99_ms;
    size_t ncells;
    ts_probe_cell_t cells[TS_PROBE_CELLS];
} ts_probe_hb_t;

typedef struct ts_probe ts_probe_t;

/* Subscribes to tessera.worker.*.hb on bus (borrowed; destroy the probe
 * before the bus). */
ts_status_t ts_probe_create(ts_probe_t **out, ts_bus_t *bus);
void ts_probe_destroy(ts_probe_t *p);
/* Forgets every heartbeat seen so far. */
void ts_probe_reset(ts_probe_t *p);
/* The latest heartbeat of worker; false if none arrived yet. */
bool ts_probe_heartbeat(ts_probe_t *p, const char *worker, ts_probe_hb_t *out);
/* True if hb lists every one of cells at its epoch or a later one. */
bool ts_probe_hb_lists(const ts_probe_hb_t *hb, const ts_probe_cell_t *cells, size_t n);
/* True if hb lists cell (any epoch). */
bool ts_probe_hb_has(const ts_probe_hb_t *hb, const ts_cell_t *cell);
/* Sum of inputs_applied over the latest heartbeats of every worker. */
uint64_t ts_probe_inputs_applied(ts_probe_t *p);

/* Request to tessera.ctl.<world>.<verb> with a text payload; the reply
 * text (NUL-terminated, truncated to cap) goes into out. */
ts_status_t ts_probe_ctl(ts_bus_t *bus, uint32_t world, const char *verb, const char *payload,
                         int64_t timeout_ms, char *out, size_t cap);

/* tessera-ctl's split or merge (verb) of cell, through ts_probe_ctl with
 * timeout_ms each try, tried again (up to 50 times, 200 ms apart) while
 * there is no answer or the orchestrator answers it cannot now ("not
 * leader", "busy", "registry unavailable", "being handed over"). True if
 * the answer starts with "ok"; reply gets the last answer, or the status
 * when there was none. */
bool ts_probe_ctl_cell(ts_bus_t *bus, const char *verb, const ts_cell_t *cell, int64_t timeout_ms,
                       char *reply, size_t cap);

/* Which orchestrator leads world: the pid in the stats' leader holder
 * "<host>-<pid>-<random>"; -1 if no orchestrator answers within
 * timeout_ms or the holder names none. */
long ts_probe_leader_pid(ts_bus_t *bus, uint32_t world, int64_t timeout_ms);

/* The epoch of every cell seen by earlier ts_probe_registry_read calls. */
#define TS_PROBE_EPOCHS_MAX 4096
typedef struct {
    ts_cell_t cell[TS_PROBE_EPOCHS_MAX];
    uint64_t epoch[TS_PROBE_EPOCHS_MAX];
    size_t n;
} ts_probe_epochs_t;

/* Reads the whole registry of world into *cells and *n (caller frees
 * *cells) as a snapshot (read again while the registry version moved during
 * the read: the cells are read one by one) and checks what must hold at
 * every moment: the live cells
 * neither overlap nor leave a hole (ts_registry_cells_check), and no cell's
 * epoch is lower than at an earlier read through seen (which it updates).
 * False, with why filled, when the registry cannot be read (*cells NULL,
 * *n 0) or a check fails. */
bool ts_probe_registry_read(ts_registry_t *reg, uint32_t world, ts_probe_epochs_t *seen,
                            ts_cell_entry_t **cells, size_t *n, char *why, size_t cap);
/* The entry of cell c among cells[0..n) (a registry read); NULL if absent. */
const ts_cell_entry_t *ts_probe_cell_find(const ts_cell_entry_t *cells, size_t n, const ts_cell_t *c);

/* A successful handover reply:
 * "ok <from>-><to> epoch <E>-><E+1> freeze_us=<n> total_us=<n>". */
typedef struct {
    char from[TS_WORKER_ID_MAX], to[TS_WORKER_ID_MAX];
    uint64_t epoch_from, epoch_to;
    uint64_t freeze_us, total_us;
} ts_probe_handover_t;

bool ts_probe_parse_handover(const char *reply, ts_probe_handover_t *out);
/* The number after "key": in a flat JSON object; false if absent. */
bool ts_probe_json_number(const char *json, const char *key, double *out);

/* tessera-sim's final line: "sim: done sent=N acked=N applied=N ...". */
typedef struct {
    bool parsed;
    uint64_t sent, acked, applied;
    char line[256]; /* the line itself, or "none" */
} ts_probe_verdict_t;

/* Parses the last "sim: done" line of a sim's log. exact: parsed and
 * applied == acked == sent > 0. */
void ts_probe_sim_verdict(const char *log, ts_probe_verdict_t *out);
bool ts_probe_verdict_exact(const ts_probe_verdict_t *v);
/* tessera-sim --via-gateway's final lines: "via-gateway: clients=N
 * connected=N sent=N applied=N missing=N errors=N lat_p50_ms=..
 * lat_p99_ms=.. lat_p999_ms=.. deltas_per_s_per_client=..
 * bytes_per_s_per_client=..", and in its summary "applied more than sent N
 * on N clients", "(inputs reported not stored N" and "clients without a
 * Delta N", and "via-gateway: cells: dropped=N cell_changed=N same_cell=N
 * unannounced=N clients_depth1=N clients_depth2=N max_depth=N". Each
 * have_ flag says whether its part was found. */
typedef struct {
    unsigned long long clients, connected, sent, applied, missing, errors;
    double p50, p99, p999, deltas_pc, bytes_pc;
    unsigned long long doubled, clients_over, not_stored, no_delta;
    unsigned long long dropped, cell_changed, same_cell, unannounced, clients_depth1, clients_depth2;
    unsigned max_depth;
    bool have_final;   /* clients .. errors */
    bool have_latency; /* lat_p50_ms .. bytes_per_s_per_client */
    bool have_over, have_not_stored, have_no_delta;
    bool have_cells; /* dropped .. max_depth */
} ts_probe_gw_verdict_t;

void ts_probe_gw_verdict(const char *log, ts_probe_gw_verdict_t *out);
/* Stops a tessera-sim started through h (SIGINT, waits up to 30 s), prints
 * its verdict line to stderr; *rc and *v get its exit status and verdict.
 * True if it exited 0 with an exact verdict. Otherwise, if ledger is not
 * NULL, waits 500 ms and lets the ledger name what went missing, timed from
 * event_us (named event). */
bool ts_probe_sim_check(ts_h_t *h, int idx, ts_ledger_t *ledger, const char *event, uint64_t event_us,
                        int *rc, ts_probe_verdict_t *v);

/* Polls every 100 ms until the orchestrator answers tessera.ctl.<world>.stats
 * with a JSON object and workers w1 and w2 both report per_worker cells in
 * their heartbeats, or timeout_ms passes. *ctl_ok and *bound say which of
 * the two came true; returns both. */
bool ts_probe_wait_ready(ts_probe_t *p, ts_bus_t *bus, uint32_t world, size_t per_worker, int64_t timeout_ms,
                         bool *ctl_ok, bool *bound);

#endif
