/* Small helpers: clocks, random numbers, growable byte buffer. */
#ifndef TESSERA_UTIL_H
#define TESSERA_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

/* Wall clock, microseconds since the epoch. */
uint64_t ts_now_us(void);
/* Monotonic clock, microseconds / nanoseconds. */
uint64_t ts_mono_us(void);
uint64_t ts_mono_ns(void);
void ts_sleep_ms(int64_t ms);

/* Grows the array *v of elem-byte items (capacity *cap) to hold at least
 * need items, doubling (from 16), the new items zeroed. False when out of
 * memory or on overflow (then *v and *cap are unchanged). */
bool ts_grow(void **v, size_t *cap, size_t need, size_t elem);
/* Reads a whole file into a malloc'd, NUL-terminated buffer (*len bytes
 * before the NUL). TS_ERR_IO if it cannot be opened or read,
 * TS_ERR_OVERSIZED if it holds more than max bytes. */
ts_status_t ts_read_file(const char *path, size_t max, char **out, size_t *len);
/* Nanoseconds from realtime_ns (wall clock) to the next multiple of
 * period_ns, in (0, period_ns]: ticks scheduled this way happen at the same
 * instants in every process of the cluster. */
static inline uint64_t ts_tick_wait_ns(uint64_t realtime_ns, uint64_t period_ns)
{
    return period_ns - realtime_ns % period_ns;
}
struct timespec;
/* The CLOCK_MONOTONIC time ns from now, for pthread_cond_timedwait on a
 * condition variable created with that clock. */
void ts_mono_deadline(struct timespec *out, uint64_t ns);

/* splitmix64's finalizer: scrambles x into an unrelated 64-bit value (the
 * one mixing function of hashes, seeds and derived ids). */
static inline uint64_t ts_mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
/* splitmix64: advances *state and returns the next number; any state,
 * 0 included, is valid (one word to checkpoint). */
static inline uint64_t ts_splitmix64(uint64_t *state)
{
    return ts_mix64(*state += 0x9e3779b97f4a7c15ull);
}

/* xorshift64* generator; state must be non-zero (seed 0 is replaced). */
typedef struct {
    uint64_t s;
} ts_rng_t;
void ts_rng_seed(ts_rng_t *r, uint64_t seed);
uint64_t ts_rng_next(ts_rng_t *r);
/* Uniform in [0, 1). */
double ts_rng_unit(ts_rng_t *r);

/* Parses a whole string as a signed / unsigned integer or a double. */
ts_status_t ts_parse_i64(const char *s, int64_t *out);
ts_status_t ts_parse_u64(const char *s, uint64_t *out);
ts_status_t ts_parse_double(const char *s, double *out);

/* Copies src into dst (cap bytes), always NUL-terminated; returns strlen(src). */
size_t ts_strlcpy(char *dst, const char *src, size_t cap);

/* Percentile (0..100) of n samples; sorts the array in place. 0 if n == 0. */
double ts_percentile(double *v, size_t n, double pct);

#endif
