/* Metrics registry and Prometheus text exposition (see metrics.h).
 *
 * Layout: the registry holds families (name, help, type) in registration
 * order; each family holds its series in registration order. A series
 * keeps its rendered label text ({worker="w1",result="ok"} without the
 * braces), built once at registration, and its value:
 *   counter    _Atomic uint64_t
 *   gauge      _Atomic uint64_t holding the bits of a double
 *   histogram  one _Atomic uint64_t per bucket (not cumulative) and the
 *              sum as double bits; cumulated at render time
 *   callback   fn(ud), read at render time
 * Families and series are only appended, under mu, and freed with the
 * registry; the update paths never touch mu. */
#include "tessera/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/log.h"

typedef enum { FAM_COUNTER = 0, FAM_GAUGE, FAM_HISTOGRAM } fam_type_t;

struct ts_counter {
    _Atomic uint64_t v;
};

struct ts_gauge {
    _Atomic uint64_t bits;
};

struct ts_histogram {
    size_t nbounds;
    double bounds[TS_METRICS_MAX_BUCKETS];
    _Atomic uint64_t counts[TS_METRICS_MAX_BUCKETS + 1]; /* last: above every bound */
    _Atomic uint64_t sum_bits;
};

typedef struct series {
    struct series *next;
    char *labels; /* rendered, no braces; "" for none */
    ts_metrics_read_fn fn;
    void *ud;
    union {
        struct ts_counter counter;
        struct ts_gauge gauge;
        struct ts_histogram hist;
    } u;
} series_t;

typedef struct family {
    struct family *next;
    char *name;
    char *help;
    fam_type_t type;
    series_t *head, *tail;
} family_t;

typedef struct hook {
    struct hook *next;
    ts_metrics_scrape_fn fn;
    void *ud;
} hook_t;

struct ts_metrics {
    pthread_mutex_t mu;
    char *const_labels; /* rendered */
    family_t *head, *tail;
    hook_t *hooks;
};

const double ts_metrics_seconds_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
const size_t ts_metrics_seconds_nbuckets =
    sizeof ts_metrics_seconds_buckets / sizeof ts_metrics_seconds_buckets[0];

static uint64_t dbl_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static double bits_dbl(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

/* ---- growing text buffer -------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} buf_t;

static bool buf_reserve(buf_t *b, size_t more)
{
    if (b->oom) return false;
    if (b->len + more + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void buf_put(buf_t *b, const char *s, size_t n)
{
    if (!buf_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void buf_fmt(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_fmt(buf_t *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        buf_put(b, tmp, (size_t)n);
        return;
    }
    if (!buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* A float as Prometheus reads it: +Inf, -Inf, NaN, else the shortest of
 * %.15g / %.17g that reads back as the same double. */
static void fmt_double(char *out, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
    } else if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, cap, "%.15g", v);
        if (strtod(out, NULL) != v) snprintf(out, cap, "%.17g", v);
    }
}

static void buf_double(buf_t *b, double v)
{
    char tmp[40];
    fmt_double(tmp, sizeof tmp, v);
    buf_str(b, tmp);
}

/* Label value escaping of the text format: backslash, quote, newline. */
static void buf_label_value(buf_t *b, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            buf_put(b, "\\\\", 2);
        else if (*p == '"')
            buf_put(b, "\\\"", 2);
        else if (*p == '\n')
            buf_put(b, "\\n", 2);
        else
            buf_put(b, p, 1);
    }
}

/* HELP text escaping: backslash and newline. */
static void buf_help(buf_t *b, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            buf_put(b, "\\\\", 2);
        else if (*p == '\n')
            buf_put(b, "\\n", 2);
        else
            buf_put(b, p, 1);
    }
}

/* ---- names and labels ----------------------------------------------------- */

static bool valid_metric_name(const char *s)
{
    if (!s || strncmp(s, "tessera_", 8) != 0) return false;
    for (const char *p = s; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == ':' ||
                  (p != s && *p >= '0' && *p <= '9');
        if (!ok) return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    if (!s || !*s || strncmp(s, "__", 2) == 0) return false;
    for (const char *p = s; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
                  (p != s && *p >= '0' && *p <= '9');
        if (!ok) return false;
    }
    return true;
}

/* Appends name="value" pairs to b (comma-separated, after what b holds).
 * False on a bad label name ("le" is reserved for buckets). */
static bool render_labels(buf_t *b, const char *const *labels)
{
    for (size_t i = 0; labels && labels[i]; i += 2) {
        if (!labels[i + 1] || !valid_label_name(labels[i]) || strcmp(labels[i], "le") == 0) return false;
        if (b->len) buf_put(b, ",", 1);
        buf_str(b, labels[i]);
        buf_put(b, "=\"", 2);
        buf_label_value(b, labels[i + 1]);
        buf_put(b, "\"", 1);
    }
    return true;
}

ts_status_t ts_metrics_create(ts_metrics_t **out, const char *const *const_labels)
{
    *out = NULL;
    buf_t b = {0};
    buf_reserve(&b, 0);
    if (b.oom) return TS_ERR_NOMEM;
    b.p[0] = '\0';
    if (!render_labels(&b, const_labels)) {
        free(b.p);
        return TS_ERR_INVALID;
    }
    if (b.oom) {
        free(b.p);
        return TS_ERR_NOMEM;
    }
    ts_metrics_t *m = calloc(1, sizeof *m);
    if (!m) {
        free(b.p);
        return TS_ERR_NOMEM;
    }
    pthread_mutex_init(&m->mu, NULL);
    m->const_labels = b.p;
    *out = m;
    return TS_OK;
}

void ts_metrics_destroy(ts_metrics_t *m)
{
    if (!m) return;
    for (family_t *f = m->head; f;) {
        family_t *fn = f->next;
        for (series_t *s = f->head; s;) {
            series_t *sn = s->next;
            free(s->labels);
            free(s);
            s = sn;
        }
        free(f->name);
        free(f->help);
        free(f);
        f = fn;
    }
    for (hook_t *h = m->hooks; h;) {
        hook_t *hn = h->next;
        free(h);
        h = hn;
    }
    free(m->const_labels);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static const char *type_name(fam_type_t t)
{
    return t == FAM_COUNTER ? "counter" : t == FAM_GAUGE ? "gauge" : "histogram";
}

/* Adds a series to the family `name` (created if new). NULL on error. */
static series_t *add_series(ts_metrics_t *m, const char *name, const char *help, fam_type_t type,
                            const char *const *labels)
{
    if (!m) return NULL;
    if (!valid_metric_name(name) || !help) {
        ts_error("metrics: bad metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    buf_t b = {0};
    buf_str(&b, m->const_labels);
    if (!b.oom && !render_labels(&b, labels)) {
        ts_error("metrics: %s: bad label", name);
        free(b.p);
        return NULL;
    }
    series_t *s = b.oom ? NULL : calloc(1, sizeof *s);
    if (!s) {
        free(b.p);
        return NULL;
    }
    s->labels = b.p;
    pthread_mutex_lock(&m->mu);
    family_t *f = m->head;
    while (f && strcmp(f->name, name) != 0)
        f = f->next;
    if (f && f->type != type) {
        pthread_mutex_unlock(&m->mu);
        ts_error("metrics: %s is a %s, not a %s", name, type_name(f->type), type_name(type));
        free(s->labels);
        free(s);
        return NULL;
    }
    if (!f) {
        f = calloc(1, sizeof *f);
        if (f) {
            f->name = strdup(name);
            f->help = strdup(help);
            f->type = type;
        }
        if (!f || !f->name || !f->help) {
            pthread_mutex_unlock(&m->mu);
            if (f) {
                free(f->name);
                free(f->help);
                free(f);
            }
            free(s->labels);
            free(s);
            return NULL;
        }
        if (m->tail)
            m->tail->next = f;
        else
            m->head = f;
        m->tail = f;
    }
    if (f->tail)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
    pthread_mutex_unlock(&m->mu);
    return s;
}

ts_counter_t *ts_metrics_counter(ts_metrics_t *m, const char *name, const char *help,
                                 const char *const *labels)
{
    series_t *s = add_series(m, name, help, FAM_COUNTER, labels);
    if (!s) return NULL;
    atomic_init(&s->u.counter.v, 0);
    return &s->u.counter;
}

ts_gauge_t *ts_metrics_gauge(ts_metrics_t *m, const char *name, const char *help, const char *const *labels)
{
    series_t *s = add_series(m, name, help, FAM_GAUGE, labels);
    if (!s) return NULL;
    atomic_init(&s->u.gauge.bits, dbl_bits(0));
    return &s->u.gauge;
}

ts_histogram_t *ts_metrics_histogram(ts_metrics_t *m, const char *name, const char *help,
                                     const char *const *labels, const double *bounds, size_t nbounds)
{
    if (!bounds || nbounds == 0 || nbounds > TS_METRICS_MAX_BUCKETS) return NULL;
    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
            ts_error("metrics: %s: bucket bounds must be finite and ascending", name ? name : "(null)");
            return NULL;
        }
    }
    series_t *s = add_series(m, name, help, FAM_HISTOGRAM, labels);
    if (!s) return NULL;
    ts_histogram_t *h = &s->u.hist;
    h->nbounds = nbounds;
    memcpy(h->bounds, bounds, nbounds * sizeof *bounds);
    for (size_t i = 0; i <= nbounds; i++)
        atomic_init(&h->counts[i], 0);
    atomic_init(&h->sum_bits, dbl_bits(0));
    return h;
}

static ts_status_t add_fn(ts_metrics_t *m, const char *name, const char *help, fam_type_t type,
                          const char *const *labels, ts_metrics_read_fn fn, void *ud)
{
    if (!fn) return TS_ERR_INVALID;
    series_t *s = add_series(m, name, help, type, labels);
    if (!s) return TS_ERR_INVALID;
    /* published by the mutex add_series released; read under it at render */
    pthread_mutex_lock(&m->mu);
    s->fn = fn;
    s->ud = ud;
    pthread_mutex_unlock(&m->mu);
    return TS_OK;
}

ts_status_t ts_metrics_counter_fn(ts_metrics_t *m, const char *name, const char *help,
                                  const char *const *labels, ts_metrics_read_fn fn, void *ud)
{
    return add_fn(m, name, help, FAM_COUNTER, labels, fn, ud);
}

ts_status_t ts_metrics_gauge_fn(ts_metrics_t *m, const char *name, const char *help,
                                const char *const *labels, ts_metrics_read_fn fn, void *ud)
{
    return add_fn(m, name, help, FAM_GAUGE, labels, fn, ud);
}

ts_status_t ts_metrics_on_scrape(ts_metrics_t *m, ts_metrics_scrape_fn fn, void *ud)
{
    if (!m || !fn) return TS_ERR_INVALID;
    hook_t *h = calloc(1, sizeof *h);
    if (!h) return TS_ERR_NOMEM;
    h->fn = fn;
    h->ud = ud;
    pthread_mutex_lock(&m->mu);
    hook_t **pp = &m->hooks;
    while (*pp)
        pp = &(*pp)->next;
    *pp = h;
    pthread_mutex_unlock(&m->mu);
    return TS_OK;
}

/* ---- updates (lock-free) -------------------------------------------------- */

void ts_counter_add(ts_counter_t *c, uint64_t n)
{
    if (c) atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

void ts_counter_inc(ts_counter_t *c)
{
    ts_counter_add(c, 1);
}

void ts_counter_set(ts_counter_t *c, uint64_t v)
{
    if (!c) return;
    uint64_t cur = atomic_load_explicit(&c->v, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(&c->v, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed)) {
    }
}

uint64_t ts_counter_value(const ts_counter_t *c)
{
    return c ? atomic_load_explicit(&((ts_counter_t *)c)->v, memory_order_relaxed) : 0;
}

void ts_gauge_set(ts_gauge_t *g, double v)
{
    if (g) atomic_store_explicit(&g->bits, dbl_bits(v), memory_order_relaxed);
}

void ts_gauge_add(ts_gauge_t *g, double delta)
{
    if (!g) return;
    uint64_t cur = atomic_load_explicit(&g->bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&g->bits, &cur, dbl_bits(bits_dbl(cur) + delta),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

double ts_gauge_value(const ts_gauge_t *g)
{
    return g ? bits_dbl(atomic_load_explicit(&((ts_gauge_t *)g)->bits, memory_order_relaxed)) : 0;
}

void ts_histogram_observe(ts_histogram_t *h, double v)
{
    if (!h || isnan(v)) return;
    /* binary search: the first bound >= v, or nbounds (+Inf only) */
    size_t lo = 0, hi = h->nbounds;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->counts[lo], 1, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&h->sum_bits, &cur, dbl_bits(bits_dbl(cur) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

uint64_t ts_histogram_count(const ts_histogram_t *h)
{
    if (!h) return 0;
    uint64_t n = 0;
    for (size_t i = 0; i <= h->nbounds; i++)
        n += atomic_load_explicit(&((ts_histogram_t *)h)->counts[i], memory_order_relaxed);
    return n;
}

/* ---- rendering ------------------------------------------------------------ */

/* name{labels} or name{labels,extra} (extra already rendered), or bare name. */
static void series_name(buf_t *b, const char *name, const char *suffix, const char *labels, const char *extra)
{
    buf_str(b, name);
    buf_str(b, suffix);
    bool any = labels[0] || (extra && extra[0]);
    if (!any) return;
    buf_put(b, "{", 1);
    buf_str(b, labels);
    if (extra && extra[0]) {
        if (labels[0]) buf_put(b, ",", 1);
        buf_str(b, extra);
    }
    buf_put(b, "}", 1);
}

static void render_histogram(buf_t *b, const family_t *f, const series_t *s)
{
    const ts_histogram_t *h = &s->u.hist;
    uint64_t cum = 0;
    char le[64], bound[40];
    for (size_t i = 0; i <= h->nbounds; i++) {
        cum += atomic_load_explicit(&((ts_histogram_t *)h)->counts[i], memory_order_relaxed);
        if (i < h->nbounds)
            fmt_double(bound, sizeof bound, h->bounds[i]);
        else
            snprintf(bound, sizeof bound, "+Inf");
        snprintf(le, sizeof le, "le=\"%s\"", bound);
        series_name(b, f->name, "_bucket", s->labels, le);
        buf_fmt(b, " %" PRIu64 "\n", cum);
    }
    series_name(b, f->name, "_sum", s->labels, NULL);
    buf_put(b, " ", 1);
    buf_double(b, bits_dbl(atomic_load_explicit(&((ts_histogram_t *)h)->sum_bits, memory_order_relaxed)));
    buf_put(b, "\n", 1);
    series_name(b, f->name, "_count", s->labels, NULL);
    buf_fmt(b, " %" PRIu64 "\n", cum);
}

ts_status_t ts_metrics_render(ts_metrics_t *m, char **out, size_t *len)
{
    *out = NULL;
    if (len) *len = 0;
    if (!m) return TS_ERR_INVALID;
    /* hooks are only appended: walk them without the mutex, which they may
     * need themselves (they update metrics of this registry) */
    pthread_mutex_lock(&m->mu);
    hook_t *hooks = m->hooks;
    pthread_mutex_unlock(&m->mu);
    for (hook_t *h = hooks; h; h = h->next)
        h->fn(h->ud);

    buf_t b = {0};
    buf_reserve(&b, 4096);
    pthread_mutex_lock(&m->mu);
    for (const family_t *f = m->head; f; f = f->next) {
        buf_str(&b, "# HELP ");
        buf_str(&b, f->name);
        buf_put(&b, " ", 1);
        buf_help(&b, f->help);
        buf_str(&b, "\n# TYPE ");
        buf_str(&b, f->name);
        buf_put(&b, " ", 1);
        buf_str(&b, type_name(f->type));
        buf_put(&b, "\n", 1);
        for (const series_t *s = f->head; s; s = s->next) {
            if (f->type == FAM_HISTOGRAM) {
                render_histogram(&b, f, s);
                continue;
            }
            series_name(&b, f->name, "", s->labels, NULL);
            buf_put(&b, " ", 1);
            if (s->fn)
                buf_double(&b, s->fn(s->ud));
            else if (f->type == FAM_COUNTER)
                buf_fmt(&b, "%" PRIu64, ts_counter_value(&s->u.counter));
            else
                buf_double(&b, ts_gauge_value(&s->u.gauge));
            buf_put(&b, "\n", 1);
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (b.oom) {
        free(b.p);
        return TS_ERR_NOMEM;
    }
    *out = b.p;
    if (len) *len = b.len;
    return TS_OK;
}
