/* Latency bookkeeping for the sim's gateway mode, with no I/O:
 *
 *   ts_lat_hist_t  a log-linear histogram of microsecond values: exact below
 *                  128 us, within 1/64 (1.6 %) of the value above; fixed
 *                  size, no allocation, so recording costs a few instructions.
 *   ts_seq_ring_t  when each client sequence number was sent, so the first
 *                  state that shows the input applied can be timed; a ring of
 *                  TS_SEQ_RING_SIZE entries, the oldest overwritten (and
 *                  counted lost) when more are outstanding. */
#ifndef TESSERA_SIM_LATENCY_H
#define TESSERA_SIM_LATENCY_H

#include <stdbool.h>
#include <stdint.h>

#define TS_LAT_SUB_BITS 6
#define TS_LAT_SUB (1u << TS_LAT_SUB_BITS)
/* Values up to 2^40 us (12 days) have their own bucket; larger ones share
 * the last. */
#define TS_LAT_MAX_EXP 40
#define TS_LAT_BUCKETS ((TS_LAT_MAX_EXP - TS_LAT_SUB_BITS + 2) * TS_LAT_SUB)

typedef struct {
    uint64_t counts[TS_LAT_BUCKETS];
    uint64_t n;
    uint64_t max_us;
} ts_lat_hist_t;

void ts_lat_hist_reset(ts_lat_hist_t *h);
void ts_lat_hist_record(ts_lat_hist_t *h, uint64_t us);
/* Adds every sample of src to dst. */
void ts_lat_hist_merge(ts_lat_hist_t *dst, const ts_lat_hist_t *src);
/* The q-quantile (0 < q <= 1) in microseconds: the smallest recorded value
 * v such that at least ceil(q * n) samples are <= v, reported as the upper
 * end of v's bucket (never above the largest sample). 0 when empty. */
uint64_t ts_lat_hist_quantile(const ts_lat_hist_t *h, double q);

/* Bucket of a value and the largest value of a bucket (exposed for tests). */
unsigned ts_lat_bucket(uint64_t us);
uint64_t ts_lat_bucket_top(unsigned bucket);

#define TS_SEQ_RING_SIZE 256u

typedef struct {
    uint64_t seq[TS_SEQ_RING_SIZE]; /* 0: empty slot */
    uint64_t sent_us[TS_SEQ_RING_SIZE];
    bool tagged[TS_SEQ_RING_SIZE]; /* pending when ts_seq_ring_tag_pending ran */
    uint64_t resolved;             /* every seq <= resolved was timed or given up */
    uint64_t lost;                 /* entries overwritten before they were timed */
    unsigned pending;              /* slots holding a seq not timed yet */
} ts_seq_ring_t;

void ts_seq_ring_init(ts_seq_ring_t *r);
/* Remembers that seq (> 0, increasing from call to call) was sent at
 * sent_us. A slot still holding an untimed older seq is overwritten and
 * counted in r->lost. */
void ts_seq_ring_put(ts_seq_ring_t *r, uint64_t seq, uint64_t sent_us);
/* The state now shows every seq <= applied_seq applied: records now_us -
 * sent_us of each remembered seq in (r->resolved, applied_seq] into h (h may
 * be NULL: nothing is recorded) and forgets them. Returns how many were
 * timed. A seq that is not above r->resolved is ignored (states that repeat
 * an older value change nothing). */
unsigned ts_seq_ring_resolve(ts_seq_ring_t *r, uint64_t applied_seq, uint64_t now_us, ts_lat_hist_t *h);
/* As ts_seq_ring_resolve, but a seq tagged by ts_seq_ring_tag_pending is
 * recorded into h_tagged instead of h (either may be NULL). */
unsigned ts_seq_ring_resolve_split(ts_seq_ring_t *r, uint64_t applied_seq, uint64_t now_us, ts_lat_hist_t *h,
                                   ts_lat_hist_t *h_tagged);
/* Tags every seq put and not resolved yet (e.g. the inputs in flight when
 * the client's entity changed cells). */
void ts_seq_ring_tag_pending(ts_seq_ring_t *r);
/* Seqs put and not resolved yet. */
unsigned ts_seq_ring_pending(const ts_seq_ring_t *r);

#endif
