/* One status enum for the whole project. TS_OK == 0; every other value is a
 * failure whose text comes from ts_status_str(). */
#ifndef TESSERA_STATUS_H
#define TESSERA_STATUS_H

#define TS_STATUS_MAP(X)                                                                                     \
    X(OK, "ok")                                                                                              \
    X(ERR_NOMEM, "out of memory")                                                                            \
    X(ERR_INVALID, "invalid argument")                                                                       \
    X(ERR_PARSE, "parse error")                                                                              \
    X(ERR_RANGE, "value out of range")                                                                       \
    X(ERR_OVERSIZED, "frame larger than the maximum size")                                                   \
    X(ERR_MALFORMED, "malformed message")                                                                    \
    X(ERR_AGAIN, "incomplete, need more data")                                                               \
    X(ERR_IO, "i/o error")                                                                                   \
    X(ERR_CLOSED, "connection closed")                                                                       \
    X(ERR_TIMEOUT, "timed out")                                                                              \
    X(ERR_NOT_FOUND, "not found")                                                                            \
    X(ERR_EXISTS, "already exists")                                                                          \
    X(ERR_CONFLICT, "compare-and-set conflict (stale epoch)")                                                \
    X(ERR_STALE, "stale epoch")                                                                              \
    X(ERR_UNKNOWN_CELL, "unknown cell")                                                                      \
    X(ERR_BUS, "message bus error")                                                                          \
    X(ERR_REGISTRY, "registry error")                                                                        \
    X(ERR_CONFIG, "configuration error")                                                                     \
    X(ERR_UNAVAILABLE, "service unavailable")                                                                \
    X(ERR_BUSY, "too many requests in flight")

typedef enum {
#define TS_STATUS_ENUM(name, text) TS_##name,
    TS_STATUS_MAP(TS_STATUS_ENUM)
#undef TS_STATUS_ENUM
        TS_STATUS_COUNT
} ts_status_t;

/* Human-readable text for a status; never NULL, static storage. */
const char *ts_status_str(ts_status_t st);

#endif
