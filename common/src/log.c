/* Logging to stderr, one line per event, as text
 *     2026-11-22T03:30:00.123Z INFO  gateway: message
 * or as JSON lines
 *     {"ts":"2026-11-22T03:30:00.123Z","level":"info","svc":"gateway","msg":"message"}
 *
 * Invariants: a line is built whole in memory and written with one write(2)
 * while holding a mutex, so lines from concurrent threads never interleave;
 * a line never contains a raw newline or control character (text escapes
 * them as \n, \xNN; JSON escapes them and replaces invalid UTF-8 by U+FFFD),
 * so one event is always exactly one line. */
#include "tessera/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define SERVICE_MAX 64
#define MSG_STACK 1024
#define MSG_MAX (256 * 1024)

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_service[SERVICE_MAX] = "tessera";
static atomic_int log_level = TS_LOG_INFO;
static atomic_bool log_json = false;

static const char *const level_text[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
static const char *const level_json[] = {"debug", "info", "warn", "error"};

void ts_log_init(const char *service, ts_log_level_t level, bool json)
{
    pthread_mutex_lock(&log_lock);
    snprintf(log_service, sizeof log_service, "%s", service ? service : "tessera");
    atomic_store(&log_level, (int)level);
    atomic_store(&log_json, json);
    pthread_mutex_unlock(&log_lock);
}

bool ts_log_level_parse(const char *s, ts_log_level_t *out)
{
    static const struct {
        const char *name;
        ts_log_level_t level;
    } names[] = {{"debug", TS_LOG_DEBUG},
                 {"info", TS_LOG_INFO},
                 {"warn", TS_LOG_WARN},
                 {"warning", TS_LOG_WARN},
                 {"error", TS_LOG_ERROR}};
    if (!s) return false;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            if (out) *out = names[i].level;
            return true;
        }
    }
    return false;
}

bool ts_log_enabled(ts_log_level_t level)
{
    return (int)level >= atomic_load(&log_level);
}

/* Growable line buffer; on allocation failure it keeps what fits. */
typedef struct {
    char *p;
    size_t len, cap;
    char stack[2048];
} line_t;

static void line_init(line_t *l)
{
    l->p = l->stack;
    l->len = 0;
    l->cap = sizeof l->stack;
}

static bool line_reserve(line_t *l, size_t extra)
{
    if (l->len + extra <= l->cap) return true;
    size_t cap = l->cap * 2;
    while (cap < l->len + extra)
        cap *= 2;
    char *p = malloc(cap);
    if (!p) return false;
    memcpy(p, l->p, l->len);
    if (l->p != l->stack) free(l->p);
    l->p = p;
    l->cap = cap;
    return true;
}

static void line_put(line_t *l, const char *s, size_t n)
{
    if (line_reserve(l, n)) {
        memcpy(l->p + l->len, s, n);
        l->len += n;
    }
}

static void line_puts(line_t *l, const char *s)
{
    line_put(l, s, strlen(s));
}

static void line_free(line_t *l)
{
    if (l->p != l->stack) free(l->p);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp;
    if (s[0] < 0x80) return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        len = 2;
        cp = s[0] & 0x1F;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        len = 3;
        cp = s[0] & 0x0F;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static void put_json_string(line_t *l, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    line_put(l, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        char esc[8];
        const char *rep = NULL;
        switch (c) {
        case '"':
            rep = "\\\"";
            break;
        case '\\':
            rep = "\\\\";
            break;
        case '\n':
            rep = "\\n";
            break;
        case '\r':
            rep = "\\r";
            break;
        case '\t':
            rep = "\\t";
            break;
        case '\b':
            rep = "\\b";
            break;
        case '\f':
            rep = "\\f";
            break;
        default:
            break;
        }
        if (rep) {
            line_puts(l, rep);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            line_puts(l, esc);
            i++;
        } else {
            size_t len = utf8_len(u + i, n - i);
            if (len == 0) {
                line_puts(l, "\\ufffd");
                i++;
            } else {
                line_put(l, s + i, len);
                i += len;
            }
        }
    }
    line_put(l, "\"", 1);
}

static void put_text(line_t *l, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') {
            line_puts(l, "\\n");
        } else if ((c < 0x20 && c != '\t') || c == 0x7F) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\x%02x", c);
            line_puts(l, esc);
        } else {
            line_put(l, s + i, 1);
        }
    }
}

static void format_time(char *buf, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Masks the password of every "scheme://user:password@" in msg in place
 * (with '*', same length), so a URL with credentials that a service logs
 * (its NATS or Redis address) never shows them. */
static void redact_passwords(char *msg, size_t len)
{
    for (size_t i = 0; i + 3 <= len; i++) {
        if (msg[i] != ':' || msg[i + 1] != '/' || msg[i + 2] != '/') continue;
        size_t start = i + 3, colon = 0, j = start;
        for (; j < len && msg[j] != '@' && msg[j] != '/' && msg[j] != ' ' && msg[j] != '"' && msg[j] != ',';
             j++)
            if (msg[j] == ':' && !colon) colon = j;
        if (j < len && msg[j] == '@' && colon)
            for (size_t k = colon + 1; k < j; k++)
                msg[k] = '*';
        i = j > i ? j - 1 : i;
    }
}

void ts_log(ts_log_level_t level, const char *fmt, ...)
{
    if ((int)level < (int)TS_LOG_DEBUG || (int)level > (int)TS_LOG_ERROR) level = TS_LOG_ERROR;
    if (!ts_log_enabled(level)) return;

    char stack[MSG_STACK];
    char *msg = stack;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    size_t len = (size_t)n;
    if (len >= sizeof stack) {
        size_t want = len < MSG_MAX ? len : MSG_MAX;
        char *heap = malloc(want + 1);
        if (heap) {
            va_start(ap, fmt);
            vsnprintf(heap, want + 1, fmt, ap);
            va_end(ap);
            msg = heap;
            len = want;
        } else {
            len = sizeof stack - 1;
        }
    }
    while (len > 0 && msg[len - 1] == '\n')
        len--;
    redact_passwords(msg, len);

    char ts[40];
    format_time(ts, sizeof ts);
    line_t line;
    line_init(&line);

    pthread_mutex_lock(&log_lock);
    if (atomic_load(&log_json)) {
        line_puts(&line, "{\"ts\":\"");
        line_puts(&line, ts);
        line_puts(&line, "\",\"level\":\"");
        line_puts(&line, level_json[level]);
        line_puts(&line, "\",\"svc\":");
        put_json_string(&line, log_service, strlen(log_service));
        line_puts(&line, ",\"msg\":");
        put_json_string(&line, msg, len);
        line_puts(&line, "}\n");
    } else {
        line_puts(&line, ts);
        line_puts(&line, " ");
        line_puts(&line, level_text[level]);
        line_puts(&line, " ");
        put_text(&line, log_service, strlen(log_service));
        line_puts(&line, ": ");
        put_text(&line, msg, len);
        line_puts(&line, "\n");
    }
    write_all(line.p, line.len);
    pthread_mutex_unlock(&log_lock);

    line_free(&line);
    if (msg != stack) free(msg);
}
