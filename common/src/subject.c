/* NATS subject names. Cell subjects are "cell.<cell key>.<kind>" with the
 * canonical key from ts_cell_format, so building and parsing round-trip and
 * one cell has exactly one subject per kind (per origin for inputs:
 * "cell.<key>.input.<origin>"). Builders return -1 (and leave
 * an empty string) when the buffer is too small or a token would not be a
 * single valid NATS token. */
#include "tessera/subject.h"

#include "tessera/registry.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char *const kind_names[TS_SUBJ_KIND_COUNT] = {
    [TS_SUBJ_INPUT] = "input",       [TS_SUBJ_STATE] = "state",           [TS_SUBJ_GHOST] = "ghost",
    [TS_SUBJ_HANDOVER] = "handover", [TS_SUBJ_CHECKPOINT] = "checkpoint",
};

const char *ts_subject_kind_str(ts_subject_kind_t kind)
{
    if ((unsigned)kind >= TS_SUBJ_KIND_COUNT) return NULL;
    return kind_names[kind];
}

static int finish(char *buf, size_t cap, int n)
{
    if (n < 0 || (size_t)n >= cap) {
        if (cap > 0) buf[0] = '\0';
        return -1;
    }
    return n;
}

int ts_subject_cell(char *buf, size_t cap, const ts_cell_t *c, ts_subject_kind_t kind)
{
    const char *k = ts_subject_kind_str(kind);
    char key[TS_CELL_STR_MAX];
    if (buf == NULL || cap == 0) return -1;
    if (k == NULL || c == NULL || !ts_cell_valid(c) || ts_cell_format(c, key, sizeof key) < 0)
        return finish(buf, cap, -1);
    return finish(buf, cap, snprintf(buf, cap, "cell.%s.%s", key, k));
}

ts_status_t ts_subject_parse(const char *subject, ts_cell_t *cell, ts_subject_kind_t *kind)
{
    static const char prefix[] = "cell.";
    if (subject == NULL || cell == NULL || kind == NULL) return TS_ERR_INVALID;
    if (strncmp(subject, prefix, sizeof prefix - 1) != 0) return TS_ERR_PARSE;
    ts_cell_t c;
    const char *p = NULL;
    if (ts_cell_parse_prefix(subject + sizeof prefix - 1, &c, &p) != TS_OK || *p != '.') return TS_ERR_PARSE;
    p++;
    static const char input_dot[] = "input.";
    ts_origin_t origin;
    if (strncmp(p, input_dot, sizeof input_dot - 1) == 0) {
        if (ts_subject_origin_parse(p + sizeof input_dot - 1, &origin) != TS_OK) return TS_ERR_PARSE;
        *cell = c;
        *kind = TS_SUBJ_INPUT;
        return TS_OK;
    }
    for (int k = 0; k < TS_SUBJ_KIND_COUNT; k++) {
        if (strcmp(p, kind_names[k]) == 0) {
            *cell = c;
            *kind = (ts_subject_kind_t)k;
            return TS_OK;
        }
    }
    return TS_ERR_PARSE;
}

int ts_subject_origin_format(char *buf, size_t cap, ts_origin_t origin)
{
    if (buf == NULL || cap == 0) return -1;
    if (origin == TS_ORIGIN_WORKER) return finish(buf, cap, snprintf(buf, cap, "w"));
    if (origin == TS_ORIGIN_SIM) return finish(buf, cap, snprintf(buf, cap, "s"));
    if (origin < 0 || origin > TS_ORIGIN_GATEWAY_MAX) return finish(buf, cap, -1);
    return finish(buf, cap, snprintf(buf, cap, "g%" PRId32, origin));
}

ts_status_t ts_subject_origin_parse(const char *token, ts_origin_t *origin)
{
    if (token == NULL || origin == NULL) return TS_ERR_INVALID;
    if (strcmp(token, "w") == 0) {
        *origin = TS_ORIGIN_WORKER;
        return TS_OK;
    }
    if (strcmp(token, "s") == 0) {
        *origin = TS_ORIGIN_SIM;
        return TS_OK;
    }
    /* g<decimal>, no sign, no leading zero, at most TS_ORIGIN_GATEWAY_MAX */
    if (token[0] != 'g' || token[1] < '0' || token[1] > '9' || (token[1] == '0' && token[2] != '\0'))
        return TS_ERR_PARSE;
    int32_t id = 0;
    for (const char *p = token + 1; *p; p++) {
        if (*p < '0' || *p > '9' || p - token > 5) return TS_ERR_PARSE;
        id = id * 10 + (*p - '0');
    }
    if (id > TS_ORIGIN_GATEWAY_MAX) return TS_ERR_PARSE;
    *origin = id;
    return TS_OK;
}

int ts_subject_input(char *buf, size_t cap, const ts_cell_t *c, ts_origin_t origin)
{
    char key[TS_CELL_STR_MAX], tok[TS_ORIGIN_TOKEN_MAX];
    if (buf == NULL || cap == 0) return -1;
    if (c == NULL || !ts_cell_valid(c) || ts_cell_format(c, key, sizeof key) < 0 ||
        ts_subject_origin_format(tok, sizeof tok, origin) < 0)
        return finish(buf, cap, -1);
    return finish(buf, cap, snprintf(buf, cap, "cell.%s.input.%s", key, tok));
}

int ts_subject_input_filter(char *buf, size_t cap, const ts_cell_t *c)
{
    char key[TS_CELL_STR_MAX];
    if (buf == NULL || cap == 0) return -1;
    if (c == NULL || !ts_cell_valid(c) || ts_cell_format(c, key, sizeof key) < 0) return finish(buf, cap, -1);
    return finish(buf, cap, snprintf(buf, cap, "cell.%s.input.*", key));
}

ts_status_t ts_subject_input_origin(const char *subject, ts_origin_t *origin)
{
    if (subject == NULL || origin == NULL) return TS_ERR_INVALID;
    const char *dot = strrchr(subject, '.');
    static const char input[] = ".input";
    size_t pre = (size_t)(dot - subject);
    if (dot == NULL || pre < sizeof input - 1 ||
        memcmp(dot - (sizeof input - 1), input, sizeof input - 1) != 0)
        return TS_ERR_PARSE;
    return ts_subject_origin_parse(dot + 1, origin);
}

int ts_subject_world_wildcard(char *buf, size_t cap, uint32_t world, ts_subject_kind_t kind)
{
    const char *k = ts_subject_kind_str(kind);
    if (buf == NULL || cap == 0) return -1;
    if (k == NULL) return finish(buf, cap, -1);
    return finish(
        buf, cap,
        snprintf(buf, cap, "cell.%" PRIu32 ".*.*.*.*.%s%s", world, k, kind == TS_SUBJ_INPUT ? ".*" : ""));
}

/* One non-empty NATS token without wildcards. */
static bool valid_token(const char *s)
{
    if (s == NULL || *s == '\0') return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch <= ' ' || ch == '.' || ch == '*' || ch == '>' || ch == 0x7f) return false;
    }
    return true;
}

int ts_subject_heartbeat(char *buf, size_t cap, const char *worker_id)
{
    if (buf == NULL || cap == 0) return -1;
    if (!ts_worker_id_valid(worker_id)) return finish(buf, cap, -1);
    return finish(buf, cap, snprintf(buf, cap, "tessera.worker.%s.hb", worker_id));
}

int ts_subject_registry(char *buf, size_t cap, uint32_t world)
{
    if (buf == NULL || cap == 0) return -1;
    return finish(buf, cap, snprintf(buf, cap, "tessera.registry.%" PRIu32, world));
}

int ts_subject_ctl(char *buf, size_t cap, uint32_t world, const char *verb)
{
    if (buf == NULL || cap == 0) return -1;
    if (!valid_token(verb)) return finish(buf, cap, -1);
    return finish(buf, cap, snprintf(buf, cap, "tessera.ctl.%" PRIu32 ".%s", world, verb));
}
