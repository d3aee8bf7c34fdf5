/* What the orchestrator reports on tessera.ctl.<world>.stats: handover,
 * recovery and rebalancing counters plus the freeze window and total
 * duration of the last TS_STATS_WINDOW handovers. Thread-safe: written by the
 * main loop, read from nats.c threads. */
#ifndef TESSERA_ORCH_STATS_H
#define TESSERA_ORCH_STATS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

#define TS_STATS_WINDOW 4096

typedef struct {
    pthread_mutex_t mu;
    uint64_t handovers;  /* ownership moved (CAS done) */
    uint64_t aborted;    /* stopped before the CAS and rolled back */
    uint64_t failed;     /* a COMMIT or ABORT went unanswered: the workers converge from the registry */
    uint64_t refused;    /* requests that failed a precondition; no worker was asked anything */
    uint64_t recoveries; /* cells of dead workers given to live ones */
    uint64_t recovery_ms_last;
    uint64_t rebalance_moves;
    uint64_t drain_moves;
    uint64_t recovery_batch_cells; /* the last recovery batch: cells moved, */
    uint64_t recovery_batch_us;    /* orchestrator time from the poll to the last announcement, */
    uint64_t recovery_round_trips; /* Redis round trips it took (poll included) */
    uint64_t in_flight;            /* handovers in flight now */
    uint64_t in_flight_max;        /* the most in flight at once so far */
    uint64_t queued;               /* handovers waiting for a free slot */
    uint64_t full_reads;           /* full reads of the registry since start */
    uint64_t splits;               /* cells split into four children */
    uint64_t merges;               /* four children merged back into their parent */
    uint64_t split_us_last;        /* the last split's or merge's registry script, orchestrator side */
    double freeze_us[TS_STATS_WINDOW];
    double total_us[TS_STATS_WINDOW];
    size_t nsamples; /* handovers sampled so far; the ring holds the last TS_STATS_WINDOW */
} ts_stats_t;

typedef enum {
    TS_STAT_HANDOVER = 0,
    TS_STAT_ABORTED,
    TS_STAT_FAILED,
    TS_STAT_REFUSED,
    TS_STAT_REBALANCE_MOVE,
    TS_STAT_DRAIN_MOVE,
    TS_STAT_SPLIT,
    TS_STAT_MERGE,
} ts_stat_counter_t;

void ts_stats_init(ts_stats_t *s);
void ts_stats_free(ts_stats_t *s);
void ts_stats_count(ts_stats_t *s, ts_stat_counter_t which);
/* One completed handover: freeze window and PREPARE-to-commit duration. */
void ts_stats_sample(ts_stats_t *s, uint64_t freeze_us, uint64_t total_us);
/* One recovered cell; recovery_ms is the time since the dead owner's last heartbeat. */
void ts_stats_recovered(ts_stats_t *s, uint64_t recovery_ms);

/* The duration of the last split or merge script (see split_us_last). */
void ts_stats_split_us(ts_stats_t *s, uint64_t us);

/* The last recovery batch (see the fields). */
void ts_stats_recovery_batch(ts_stats_t *s, uint64_t cells, uint64_t us, uint64_t round_trips);
/* Gauges the main loop refreshes. */
void ts_stats_gauges(ts_stats_t *s, uint64_t in_flight, uint64_t queued, uint64_t full_reads);

/* Percentiles (0..100) over the sampled window; 0 without samples. */
double ts_stats_freeze_pct(ts_stats_t *s, double pct);
double ts_stats_total_pct(ts_stats_t *s, double pct);

/* Writes the stats JSON object (one line, no newline) into buf:
 * {"leader":"<holder>","handovers":N,"aborted":N,"failed":N,"refused":N,
 *  "freeze_us_p50":…,"freeze_us_p99":…,"total_us_p50":…,"total_us_p99":…,
 *  "recoveries":N,"recovery_ms_last":N,"rebalance_moves":N,"drain_moves":N,
 *  "recovery_batch_cells":N,"recovery_batch_us":N,"recovery_round_trips":N,
 *  "in_flight":N,"in_flight_max":N,"queued":N,"full_reads":N,"splits":N,"merges":N,
 *  "split_us_last":N}
 * Returns the length, or -1 if cap is too small. */
int ts_stats_json(ts_stats_t *s, const char *leader, char *buf, size_t cap);

#endif
