/* JSON via jansson (see tessera/json.h). */
#include "tessera/json.h"

#include <jansson.h>
#include <string.h>

bool ts_json_number(const char *json, const char *key, double *out)
{
    if (json == NULL || key == NULL || out == NULL) return false;
    json_error_t err;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) return false;
    json_t *v = json_is_object(root) ? json_object_get(root, key) : NULL;
    bool ok = v != NULL && json_is_number(v);
    if (ok) *out = json_number_value(v);
    json_decref(root);
    return ok;
}

int ts_json_object(const ts_json_field_t *fields, size_t n, char *buf, size_t cap)
{
    if (buf == NULL || cap == 0) return -1;
    json_t *obj = json_object();
    if (obj == NULL) return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *v = NULL;
        switch (fields[i].kind) {
        case TS_JSON_STR:
            v = json_string(fields[i].str ? fields[i].str : "");
            break;
        case TS_JSON_U64:
            v = json_integer((json_int_t)fields[i].u64);
            break;
        case TS_JSON_NUM:
            v = json_real(fields[i].num);
            break;
        }
        rc = v ? json_object_set_new(obj, fields[i].name, v) : -1;
    }
    size_t len = rc == 0 ? json_dumpb(obj, buf, cap - 1, JSON_COMPACT | JSON_PRESERVE_ORDER) : 0;
    json_decref(obj);
    if (rc != 0 || len == 0 || len >= cap) {
        buf[0] = '\0';
        return -1;
    }
    buf[len] = '\0';
    return (int)len;
}
