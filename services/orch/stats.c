/* Orchestrator statistics. Invariants: every field is read and written under
 * the mutex; the rings hold the most recent min(nsamples, TS_STATS_WINDOW)
 * handovers, the oldest overwritten first. */
#include "stats.h"

#include "tessera/json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/util.h"

void ts_stats_init(ts_stats_t *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
}

void ts_stats_free(ts_stats_t *s)
{
    pthread_mutex_destroy(&s->mu);
}

void ts_stats_count(ts_stats_t *s, ts_stat_counter_t which)
{
    pthread_mutex_lock(&s->mu);
    switch (which) {
    case TS_STAT_HANDOVER:
        s->handovers++;
        break;
    case TS_STAT_ABORTED:
        s->aborted++;
        break;
    case TS_STAT_FAILED:
        s->failed++;
        break;
    case TS_STAT_REFUSED:
        s->refused++;
        break;
    case TS_STAT_REBALANCE_MOVE:
        s->rebalance_moves++;
        break;
    case TS_STAT_DRAIN_MOVE:
        s->drain_moves++;
        break;
    case TS_STAT_SPLIT:
        s->splits++;
        break;
    case TS_STAT_MERGE:
        s->merges++;
        break;
    }
    pthread_mutex_unlock(&s->mu);
}

void ts_stats_sample(ts_stats_t *s, uint64_t freeze_us, uint64_t total_us)
{
    pthread_mutex_lock(&s->mu);
    size_t i = s->nsamples++ % TS_STATS_WINDOW;
    s->freeze_us[i] = (double)freeze_us;
    s->total_us[i] = (double)total_us;
    pthread_mutex_unlock(&s->mu);
}

void ts_stats_recovered(ts_stats_t *s, uint64_t recovery_ms)
{
    pthread_mutex_lock(&s->mu);
    s->recoveries++;
    s->recovery_ms_last = recovery_ms;
    pthread_mutex_unlock(&s->mu);
}

void ts_stats_split_us(ts_stats_t *s, uint64_t us)
{
    pthread_mutex_lock(&s->mu);
    s->split_us_last = us;
    pthread_mutex_unlock(&s->mu);
}

void ts_stats_recovery_batch(ts_stats_t *s, uint64_t cells, uint64_t us, uint64_t round_trips)
{
    pthread_mutex_lock(&s->mu);
    s->recovery_batch_cells = cells;
    s->recovery_batch_us = us;
    s->recovery_round_trips = round_trips;
    pthread_mutex_unlock(&s->mu);
}

void ts_stats_gauges(ts_stats_t *s, uint64_t in_flight, uint64_t queued, uint64_t full_reads)
{
    pthread_mutex_lock(&s->mu);
    s->in_flight = in_flight;
    if (in_flight > s->in_flight_max) s->in_flight_max = in_flight;
    s->queued = queued;
    s->full_reads = full_reads;
    pthread_mutex_unlock(&s->mu);
}

/* Holds mu. ts_percentile sorts, so it works on a copy. */
static double pct_locked(const ts_stats_t *s, const double *ring, double pct)
{
    size_t n = s->nsamples < TS_STATS_WINDOW ? s->nsamples : TS_STATS_WINDOW;
    if (n == 0) return 0;
    double *copy = malloc(n * sizeof *copy);
    if (!copy) return 0;
    memcpy(copy, ring, n * sizeof *copy);
    double v = ts_percentile(copy, n, pct);
    free(copy);
    return v;
}

double ts_stats_freeze_pct(ts_stats_t *s, double pct)
{
    pthread_mutex_lock(&s->mu);
    double v = pct_locked(s, s->freeze_us, pct);
    pthread_mutex_unlock(&s->mu);
    return v;
}

double ts_stats_total_pct(ts_stats_t *s, double pct)
{
    pthread_mutex_lock(&s->mu);
    double v = pct_locked(s, s->total_us, pct);
    pthread_mutex_unlock(&s->mu);
    return v;
}

static ts_json_field_t u64(const char *name, uint64_t v)
{
    return (ts_json_field_t){.name = name, .kind = TS_JSON_U64, .u64 = v};
}

int ts_stats_json(ts_stats_t *s, const char *leader, char *buf, size_t cap)
{
    pthread_mutex_lock(&s->mu);
    ts_json_field_t f[] = {
        {.name = "leader", .kind = TS_JSON_STR, .str = leader},
        u64("handovers", s->handovers),
        u64("aborted", s->aborted),
        u64("failed", s->failed),
        u64("refused", s->refused),
        u64("freeze_us_p50", (uint64_t)llround(pct_locked(s, s->freeze_us, 50))),
        u64("freeze_us_p99", (uint64_t)llround(pct_locked(s, s->freeze_us, 99))),
        u64("total_us_p50", (uint64_t)llround(pct_locked(s, s->total_us, 50))),
        u64("total_us_p99", (uint64_t)llround(pct_locked(s, s->total_us, 99))),
        u64("recoveries", s->recoveries),
        u64("recovery_ms_last", s->recovery_ms_last),
        u64("rebalance_moves", s->rebalance_moves),
        u64("drain_moves", s->drain_moves),
        u64("recovery_batch_cells", s->recovery_batch_cells),
        u64("recovery_batch_us", s->recovery_batch_us),
        u64("recovery_round_trips", s->recovery_round_trips),
        u64("in_flight", s->in_flight),
        u64("in_flight_max", s->in_flight_max),
        u64("queued", s->queued),
        u64("full_reads", s->full_reads),
        u64("splits", s->splits),
        u64("merges", s->merges),
        u64("split_us_last", s->split_us_last),
    };
    pthread_mutex_unlock(&s->mu);
    return ts_json_object(f, sizeof f / sizeof f[0], buf, cap);
}
