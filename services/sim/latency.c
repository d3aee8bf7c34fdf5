/* Latency histogram and send-time ring; see latency.h.
 *
 * Bucket layout: values below 2 * TS_LAT_SUB are their own bucket; a value
 * whose highest set bit is b >= TS_LAT_SUB_BITS + 1 falls in the group of
 * TS_LAT_SUB buckets for b, each 2^(b - TS_LAT_SUB_BITS) wide. Groups follow
 * each other without gaps, so bucket order is value order. */
#include "latency.h"

#include <string.h>

void ts_lat_hist_reset(ts_lat_hist_t *h)
{
    memset(h, 0, sizeof *h);
}

unsigned ts_lat_bucket(uint64_t us)
{
    if (us < 2 * TS_LAT_SUB) return (unsigned)us;
    unsigned msb = 63u - (unsigned)__builtin_clzll(us);
    if (msb > TS_LAT_MAX_EXP) return TS_LAT_BUCKETS - 1;
    unsigned shift = msb - TS_LAT_SUB_BITS;
    return (shift + 1) * TS_LAT_SUB + (unsigned)((us >> shift) - TS_LAT_SUB);
}

uint64_t ts_lat_bucket_top(unsigned bucket)
{
    if (bucket < 2 * TS_LAT_SUB) return bucket;
    if (bucket >= TS_LAT_BUCKETS - 1) return UINT64_MAX;
    unsigned shift = bucket / TS_LAT_SUB - 1;
    uint64_t base = (uint64_t)(bucket % TS_LAT_SUB + TS_LAT_SUB) << shift;
    return base + ((uint64_t)1 << shift) - 1;
}

void ts_lat_hist_record(ts_lat_hist_t *h, uint64_t us)
{
    h->counts[ts_lat_bucket(us)]++;
    h->n++;
    if (us > h->max_us) h->max_us = us;
}

void ts_lat_hist_merge(ts_lat_hist_t *dst, const ts_lat_hist_t *src)
{
    if (src->n == 0) return;
    for (unsigned i = 0; i < TS_LAT_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->n += src->n;
    if (src->max_us > dst->max_us) dst->max_us = src->max_us;
}

uint64_t ts_lat_hist_quantile(const ts_lat_hist_t *h, double q)
{
    if (h->n == 0) return 0;
    if (!(q > 0)) q = 1e-12;
    if (q > 1) q = 1;
    double want_d = q * (double)h->n;
    uint64_t want = (uint64_t)want_d;
    if ((double)want < want_d) want++;
    if (want == 0) want = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < TS_LAT_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t top = ts_lat_bucket_top(i);
            return top < h->max_us ? top : h->max_us;
        }
    }
    return h->max_us;
}

void ts_seq_ring_init(ts_seq_ring_t *r)
{
    memset(r, 0, sizeof *r);
}

void ts_seq_ring_put(ts_seq_ring_t *r, uint64_t seq, uint64_t sent_us)
{
    unsigned slot = (unsigned)(seq % TS_SEQ_RING_SIZE);
    if (r->seq[slot] != 0) {
        r->lost++;
        r->pending--;
    }
    r->seq[slot] = seq;
    r->sent_us[slot] = sent_us;
    r->tagged[slot] = false;
    r->pending++;
}

static unsigned take(ts_seq_ring_t *r, unsigned slot, uint64_t now_us, ts_lat_hist_t *h,
                     ts_lat_hist_t *h_tagged)
{
    if (r->tagged[slot]) h = h_tagged;
    if (h != NULL) ts_lat_hist_record(h, now_us > r->sent_us[slot] ? now_us - r->sent_us[slot] : 0);
    r->seq[slot] = 0;
    r->pending--;
    return 1;
}

unsigned ts_seq_ring_resolve(ts_seq_ring_t *r, uint64_t applied_seq, uint64_t now_us, ts_lat_hist_t *h)
{
    return ts_seq_ring_resolve_split(r, applied_seq, now_us, h, h);
}

unsigned ts_seq_ring_resolve_split(ts_seq_ring_t *r, uint64_t applied_seq, uint64_t now_us, ts_lat_hist_t *h,
                                   ts_lat_hist_t *h_tagged)
{
    if (applied_seq <= r->resolved) return 0;
    unsigned timed = 0;
    if (r->pending > 0) {
        if (applied_seq - r->resolved <= TS_SEQ_RING_SIZE) {
            for (uint64_t s = r->resolved + 1; s <= applied_seq; s++) {
                unsigned slot = (unsigned)(s % TS_SEQ_RING_SIZE);
                if (r->seq[slot] == s) timed += take(r, slot, now_us, h, h_tagged);
            }
        } else {
            for (unsigned slot = 0; slot < TS_SEQ_RING_SIZE; slot++)
                if (r->seq[slot] > r->resolved && r->seq[slot] <= applied_seq)
                    timed += take(r, slot, now_us, h, h_tagged);
        }
    }
    r->resolved = applied_seq;
    return timed;
}

void ts_seq_ring_tag_pending(ts_seq_ring_t *r)
{
    if (r->pending == 0) return;
    for (unsigned slot = 0; slot < TS_SEQ_RING_SIZE; slot++)
        if (r->seq[slot] > r->resolved) r->tagged[slot] = true;
}

unsigned ts_seq_ring_pending(const ts_seq_ring_t *r)
{
    return r->pending;
}
