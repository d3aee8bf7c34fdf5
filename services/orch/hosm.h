/* Live handovers as state machines, many in flight at once, driven by
 * replies and timers instead of blocking requests. One machine moves cell C
 * from its owner A (at epoch E) to worker B with the protocol of
 * docs/handover.md, every step a Handover request on <C>.handover:
 *
 *   PREPARE  PREPARE sent to A; A answers once B has the PreCopy (s1)
 *   FREEZE   FREEZE sent to A; B answers with the Diff loaded (s2)
 *            -> the epoch CAS (owner B, E+1): the single point of no return
 *   COMMIT_TO    COMMIT sent to B; it consumes C from s2+1 at E+1
 *   COMMIT_FROM  COMMIT sent to A; it drops C
 *   ABORTING     ABORT sent to A and B (any failure before the CAS)
 *   DONE
 *
 * A step that gets no answer within the timeout, a refusal, a malformed
 * answer or a failed publish before the CAS ends in ABORTING and leaves the
 * registry untouched; after the CAS the handover counts as done whatever the
 * COMMIT answers say (the workers converge from the registry).
 *
 * Pure logic: the bus, the registry and the clock come in through ts_ho_io_t
 * and the callers' arguments, so the machine is unit-tested without servers.
 * Not thread-safe: one thread (the orchestrator's main loop) drives it. */
#ifndef TESSERA_ORCH_HOSM_H
#define TESSERA_ORCH_HOSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/registry.h"
#include "tessera/status.h"

#define TS_HO_ID_MAX 160

typedef enum {
    TS_HO_CTL = 0, /* tessera.ctl.<world>.handover */
    TS_HO_DRAIN,
    TS_HO_REBALANCE,
    TS_HO_MERGE,  /* gathering four children onto one owner before a merge */
    TS_HO_REASONS /* how many */
} ts_ho_reason_t;

typedef enum {
    TS_HO_PREPARE = 0,
    TS_HO_FREEZE,
    TS_HO_COMMIT_TO,
    TS_HO_COMMIT_FROM,
    TS_HO_ABORTING,
    TS_HO_DONE,
} ts_ho_state_t;

typedef struct {
    /* set by the caller of ts_hos_start */
    ts_cell_t cell;
    char id[TS_HO_ID_MAX];
    uint64_t epoch; /* E */
    char from[TS_WORKER_ID_MAX];
    char to[TS_WORKER_ID_MAX];
    ts_ho_reason_t why;
    void *ctx; /* the caller's, handed back to done() */

    /* kept by the machine */
    char key[TS_CELL_STR_MAX];
    ts_ho_state_t state;
    uint64_t req[2];      /* requests awaiting an answer (0: none) */
    uint64_t deadline_us; /* when the awaited answers time out */
    uint64_t t0_us;
    uint64_t s1, s2;
    uint64_t freeze_at_us, resume_at_us; /* worker wall clocks from the acks */
    uint32_t entities;
    uint64_t new_epoch; /* after the CAS */

    /* the outcome, when DONE */
    bool moved;         /* the CAS went through */
    bool unanswered;    /* a COMMIT or ABORT got no answer */
    uint64_t freeze_us; /* freeze window; 0 if unknown */
    uint64_t total_us;  /* PREPARE to the target's COMMIT answer */
    char reply[512];    /* the ctl reply text */
} ts_ho_t;

typedef struct {
    void *ud;
    /* Publishes a packed Handover request on subject with a reply subject
     * that identifies request number req. TS_OK, or an error (the request
     * then counts as unanswered at once). */
    ts_status_t (*send)(void *ud, const char *subject, uint64_t req, uint64_t epoch, const uint8_t *buf,
                        size_t len);
    /* The epoch CAS of h: owner h->to, epoch h->epoch + 1. TS_OK (*out is
     * the new entry), TS_ERR_CONFLICT (*out is the current entry), anything
     * else: nothing changed, why says what (e.g. "registry unavailable"). */
    ts_status_t (*cas)(void *ud, const ts_ho_t *h, ts_cell_entry_t *out, char *why, size_t cap);
    /* h reached DONE; it is forgotten when this returns. Must not start
     * handovers. */
    void (*done)(void *ud, ts_ho_t *h);
} ts_ho_io_t;

typedef struct {
    ts_ho_io_t io;
    ts_ho_t *slots;
    bool *used;
    size_t cap;
    size_t n;
    uint64_t next_req;
    uint64_t timeout_us;
    uint64_t prepare_timeout_us;
} ts_hos_t;

/* cap: most handovers in flight; timeout_ms: per awaited answer. */
ts_status_t ts_hos_init(ts_hos_t *s, size_t cap, int64_t timeout_ms, const ts_ho_io_t *io);
/* The PREPARE step (the source copies the whole cell to the target) may
 * take longer than the others; by default it has the same timeout. */
void ts_hos_set_prepare_timeout(ts_hos_t *s, int64_t timeout_ms);
void ts_hos_free(ts_hos_t *s);
static inline size_t ts_hos_count(const ts_hos_t *s)
{
    return s->n;
}
static inline bool ts_hos_full(const ts_hos_t *s)
{
    return s->n >= s->cap;
}
/* The handover in flight of cell, or NULL. */
const ts_ho_t *ts_hos_find(const ts_hos_t *s, const ts_cell_t *cell);
/* Starts a handover described by h's caller fields (the caller checked the
 * preconditions); sends PREPARE. TS_ERR_BUSY when cap are in flight,
 * TS_ERR_EXISTS when the cell is already being handed over. A PREPARE that
 * cannot be published aborts at once (done() runs before this returns). */
ts_status_t ts_hos_start(ts_hos_t *s, const ts_ho_t *h, uint64_t now_us);
/* An answer to request req (a packed Handover ACK; an empty payload is
 * NATS's "no responders"). Unknown or late answers are ignored. */
void ts_hos_reply(ts_hos_t *s, uint64_t req, const uint8_t *data, size_t len, uint64_t now_us);
/* Advances every handover whose awaited answers timed out. */
void ts_hos_expire(ts_hos_t *s, uint64_t now_us);
/* Ends every handover in flight at once without another message (the lead
 * was lost): each reaches DONE with reply "error: <why>" (moved tells whether
 * its CAS had gone through). */
void ts_hos_cancel_all(ts_hos_t *s, const char *why);
/* The earliest deadline in flight, or UINT64_MAX. */
uint64_t ts_hos_next_deadline(const ts_hos_t *s);
const char *ts_ho_state_str(ts_ho_state_t st);
const char *ts_ho_reason_str(ts_ho_reason_t why);

#endif
