/* Logging: one line per event to stderr, as text or JSON.
 * Thread-safe; a line is written with one write(2). */
#ifndef TESSERA_LOG_H
#define TESSERA_LOG_H

#include <stdbool.h>

typedef enum { TS_LOG_DEBUG = 0, TS_LOG_INFO, TS_LOG_WARN, TS_LOG_ERROR } ts_log_level_t;

/* service: name printed on every line (copied). json: JSON lines instead of text. */
void ts_log_init(const char *service, ts_log_level_t level, bool json);
/* Parses "debug|info|warn|error"; returns false if unknown. */
bool ts_log_level_parse(const char *s, ts_log_level_t *out);
bool ts_log_enabled(ts_log_level_t level);
void ts_log(ts_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ts_debug(...)                                                                                        \
    do {                                                                                                     \
        if (ts_log_enabled(TS_LOG_DEBUG)) ts_log(TS_LOG_DEBUG, __VA_ARGS__);                                 \
    } while (0)
#define ts_info(...) ts_log(TS_LOG_INFO, __VA_ARGS__)
#define ts_warn(...) ts_log(TS_LOG_WARN, __VA_ARGS__)
#define ts_error(...) ts_log(TS_LOG_ERROR, __VA_ARGS__)

#endif
