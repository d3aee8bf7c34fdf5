/* Small helpers shared by every service: clocks, a fast non-cryptographic
 * random generator, strict whole-string number parsers and percentiles.
 * Parsers accept the whole string or nothing: leading/trailing garbage,
 * empty strings and overflow are errors, never silently truncated. */
#include "tessera/util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t ts_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t ts_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ts_mono_us(void)
{
    return ts_mono_ns() / 1000u;
}

void ts_sleep_ms(int64_t ms)
{
    if (ms <= 0) return;
    struct timespec req = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    struct timespec rem;
    while (nanosleep(&req, &rem) != 0 && errno == EINTR)
        req = rem;
}

ts_status_t ts_read_file(const char *path, size_t max, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) return TS_ERR_IO;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    ts_status_t st = buf ? TS_OK : TS_ERR_NOMEM;
    while (st == TS_OK) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n > max) {
            st = TS_ERR_OVERSIZED;
        } else if (got == 0) {
            if (ferror(f)) st = TS_ERR_IO;
            break;
        } else if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (nb == NULL) {
                st = TS_ERR_NOMEM;
            } else {
                buf = nb;
                cap *= 2;
            }
        }
    }
    fclose(f);
    if (st != TS_OK) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return TS_OK;
}

void ts_mono_deadline(struct timespec *out, uint64_t ns)
{
    clock_gettime(CLOCK_MONOTONIC, out);
    out->tv_sec += (time_t)(ns / 1000000000ULL);
    out->tv_nsec += (long)(ns % 1000000000ULL);
    if (out->tv_nsec >= 1000000000L) {
        out->tv_sec++;
        out->tv_nsec -= 1000000000L;
    }
}

void ts_rng_seed(ts_rng_t *r, uint64_t seed)
{
    /* splitmix64 scrambles nearby seeds into unrelated states */
    uint64_t z = ts_splitmix64(&seed);
    r->s = z ? z : 0x2545f4914f6cdd1dull;
}

uint64_t ts_rng_next(ts_rng_t *r)
{
    if (r->s == 0) r->s = 0x2545f4914f6cdd1dull;
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545f4914f6cdd1dull;
}

double ts_rng_unit(ts_rng_t *r)
{
    return (double)(ts_rng_next(r) >> 11) * 0x1.0p-53;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

ts_status_t ts_parse_i64(const char *s, int64_t *out)
{
    if (s == NULL || out == NULL) return TS_ERR_INVALID;
    if (*s == '\0' || is_space(*s)) return TS_ERR_PARSE;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0') return TS_ERR_PARSE;
    if (errno == ERANGE) return TS_ERR_RANGE;
    *out = (int64_t)v;
    return TS_OK;
}

ts_status_t ts_parse_u64(const char *s, uint64_t *out)
{
    if (s == NULL || out == NULL) return TS_ERR_INVALID;
    /* strtoull accepts "-1" and wraps it; reject any sign up front */
    if (*s < '0' || *s > '9') {
        if (*s == '+' && s[1] >= '0' && s[1] <= '9')
            s++;
        else
            return TS_ERR_PARSE;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end != '\0') return TS_ERR_PARSE;
    if (errno == ERANGE) return TS_ERR_RANGE;
    *out = (uint64_t)v;
    return TS_OK;
}

ts_status_t ts_parse_double(const char *s, double *out)
{
    if (s == NULL || out == NULL) return TS_ERR_INVALID;
    if (*s == '\0' || is_space(*s)) return TS_ERR_PARSE;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0') return TS_ERR_PARSE;
    if (!isfinite(v)) return errno == ERANGE ? TS_ERR_RANGE : TS_ERR_PARSE;
    /* a finite result with ERANGE is an underflow: the nearest double is fine */
    *out = v;
    return TS_OK;
}

size_t ts_strlcpy(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);
    if (cap > 0) {
        size_t k = n < cap - 1 ? n : cap - 1;
        memcpy(dst, src, k);
        dst[k] = '\0';
    }
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ts_percentile(double *v, size_t n, double pct)
{
    if (v == NULL || n == 0) return 0.0;
    qsort(v, n, sizeof *v, cmp_double);
    if (!(pct > 0.0)) return v[0];
    if (pct >= 100.0) return v[n - 1];
    /* linear interpolation between closest ranks */
    double rank = pct / 100.0 * (double)(n - 1);
    size_t lo = (size_t)rank;
    double frac = rank - (double)lo;
    if (lo + 1 >= n) return v[n - 1];
    return v[lo] + (v[lo + 1] - v[lo]) * frac;
}

bool ts_grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2) return false;
        c *= 2;
    }
    if (elem == 0 || c > SIZE_MAX / elem) return false;
    uint8_t *nv = realloc(*v, c * elem);
    if (nv == NULL) return false;
    memset(nv + *cap * elem, 0, (c - *cap) * elem);
    *v = nv;
    *cap = c;
    return true;
}
