/* JSON through jansson: the few things Tessera reads and writes as JSON (the
 * orchestrator's stats reply, tessera-ctl and the tests reading it). The rest
 * of the code sees no jansson type. */
#ifndef TESSERA_JSON_H
#define TESSERA_JSON_H

#include <stdbool.h>
#include <stddef.h>

/* Reads number `key` of the JSON object `json` into *out. False if json is
 * not an object, or key is missing or not a number. */
bool ts_json_number(const char *json, const char *key, double *out);

/* Builds a JSON object from name/value pairs and writes it compactly into
 * buf (NUL-terminated). Each pair is a ts_json_field_t; returns the length,
 * or -1 if it does not fit or cannot be built. */
typedef enum { TS_JSON_STR, TS_JSON_U64, TS_JSON_NUM } ts_json_kind_t;
typedef struct {
    const char *name;
    ts_json_kind_t kind;
    const char *str;
    unsigned long long u64;
    double num;
} ts_json_field_t;
int ts_json_object(const ts_json_field_t *fields, size_t n, char *buf, size_t cap);

#endif
