/* Metrics: counters, gauges and histograms, rendered in the Prometheus text
 * exposition format 0.0.4.
 *
 * Updates are lock-free: a counter is one relaxed atomic add, a gauge one
 * atomic store (or compare-and-swap loop for ts_gauge_add), a histogram
 * observation one atomic add on its bucket plus a compare-and-swap loop on
 * its sum. Nothing allocates after registration, so tick threads and event
 * loops call them on their hot paths. Every update function accepts NULL
 * (a metric that failed to register costs nothing and breaks nothing).
 *
 * Registration and rendering take the registry's mutex; they belong at
 * start-up and on the scraping thread. Values that already live in a
 * service's own structures are exported with callbacks (ts_metrics_*_fn)
 * or a scrape hook (ts_metrics_on_scrape) that run on the scraping thread
 * when /metrics is read, so they cost the hot path nothing.
 *
 * Names must start with "tessera_" and use base units (seconds, bytes) with
 * the unit in the name. Labels are given as a NULL-terminated list of
 * name/value pairs, {"result", "ok", NULL}; the registry's constant labels
 * ({worker="w1"}) come first on every series. Several series may share a
 * name (the same family) when they differ by labels and agree on type and
 * help. */
#ifndef TESSERA_METRICS_H
#define TESSERA_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

typedef struct ts_metrics ts_metrics_t;
typedef struct ts_counter ts_counter_t;
typedef struct ts_gauge ts_gauge_t;
typedef struct ts_histogram ts_histogram_t;

/* Reads a value for a callback metric (runs on the scraping thread). */
typedef double (*ts_metrics_read_fn)(void *ud);
/* Runs before each rendering, on the scraping thread, without the
 * registry's mutex: refreshes metrics from the service's own state. Two
 * scrapes may run it at once; it guards what it reads itself. */
typedef void (*ts_metrics_scrape_fn)(void *ud);

/* Most buckets of one histogram (+Inf not counted). */
#define TS_METRICS_MAX_BUCKETS 32

/* Bucket bounds for durations in seconds: 100 us .. 10 s. */
extern const double ts_metrics_seconds_buckets[];
extern const size_t ts_metrics_seconds_nbuckets;

/* const_labels: NULL or name/value pairs (copied) put on every series. */
ts_status_t ts_metrics_create(ts_metrics_t **out, const char *const *const_labels);
void ts_metrics_destroy(ts_metrics_t *m);

/* Registers a series; NULL on a bad name or label, a clash with a family of
 * another type, or no memory (logged). The series lives as long as m. */
ts_counter_t *ts_metrics_counter(ts_metrics_t *m, const char *name, const char *help,
                                 const char *const *labels);
ts_gauge_t *ts_metrics_gauge(ts_metrics_t *m, const char *name, const char *help, const char *const *labels);
/* bounds: ascending upper bounds (copied), at most TS_METRICS_MAX_BUCKETS;
 * the +Inf bucket is implicit. */
ts_histogram_t *ts_metrics_histogram(ts_metrics_t *m, const char *name, const char *help,
                                     const char *const *labels, const double *bounds, size_t nbounds);
/* A counter or gauge whose value fn(ud) returns at scrape time. */
ts_status_t ts_metrics_counter_fn(ts_metrics_t *m, const char *name, const char *help,
                                  const char *const *labels, ts_metrics_read_fn fn, void *ud);
ts_status_t ts_metrics_gauge_fn(ts_metrics_t *m, const char *name, const char *help,
                                const char *const *labels, ts_metrics_read_fn fn, void *ud);
/* fn(ud) runs at the start of every ts_metrics_render. */
ts_status_t ts_metrics_on_scrape(ts_metrics_t *m, ts_metrics_scrape_fn fn, void *ud);

void ts_counter_add(ts_counter_t *c, uint64_t n);
void ts_counter_inc(ts_counter_t *c);
/* Mirrors a monotonic total kept elsewhere (a stats field): the counter
 * takes v unless v is below what it shows (counters never go back). */
void ts_counter_set(ts_counter_t *c, uint64_t v);
uint64_t ts_counter_value(const ts_counter_t *c);

void ts_gauge_set(ts_gauge_t *g, double v);
void ts_gauge_add(ts_gauge_t *g, double delta);
double ts_gauge_value(const ts_gauge_t *g);

/* Counts v in the first bucket whose bound is >= v (and in +Inf), adds it
 * to the sum. NaN is ignored. */
void ts_histogram_observe(ts_histogram_t *h, double v);
/* Observations so far. */
uint64_t ts_histogram_count(const ts_histogram_t *h);

/* Runs the scrape hooks, then renders every family in registration order:
 * "# HELP", "# TYPE", then the series; a histogram as cumulative
 * _bucket{le=".."} lines ending with le="+Inf", then _sum and _count (equal
 * to the +Inf bucket). Label values are escaped (\\, \", \n). *out is
 * NUL-terminated, caller frees. */
ts_status_t ts_metrics_render(ts_metrics_t *m, char **out, size_t *len);

/* Reads a 64-bit field another thread writes without atomics (a stats
 * counter of a loop thread), as one untorn load. For scrape callbacks. */
static inline uint64_t ts_metrics_load_u64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

#endif
