/* Liveness table (see liveness.h). Invariants: one entry per id, never more
 * than TS_LIVENESS_MAX; `last` only changes to a non-empty token; an entry is
 * reported replaced once per token change. */
#include "liveness.h"

#include <stdlib.h>
#include <string.h>

#include "tessera/util.h"

void ts_liveness_init(ts_liveness_t *l)
{
    memset(l, 0, sizeof *l);
}

void ts_liveness_free(ts_liveness_t *l)
{
    free(l->v);
    memset(l, 0, sizeof *l);
}

ts_live_t *ts_liveness_get(ts_liveness_t *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->v[i].id, id) == 0) return &l->v[i];
    }
    return NULL;
}

ts_live_t *ts_liveness_add(ts_liveness_t *l, const char *id)
{
    ts_live_t *e = ts_liveness_get(l, id);
    if (e) return e;
    if (!id[0] || strlen(id) >= TS_WORKER_ID_MAX || l->n == TS_LIVENESS_MAX) return NULL;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        ts_live_t *v = realloc(l->v, cap * sizeof *v);
        if (!v) return NULL;
        l->v = v;
        l->cap = cap;
    }
    e = &l->v[l->n++];
    memset(e, 0, sizeof *e);
    ts_strlcpy(e->id, id, sizeof e->id);
    return e;
}

bool ts_liveness_alive(const ts_liveness_t *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->v[i].id, id) == 0) return l->v[i].token[0] != '\0';
    }
    return false;
}

size_t ts_liveness_apply(ts_liveness_t *l, const char *const *ids, const char (*tokens)[TS_WORKER_TOKEN_MAX],
                         size_t n, size_t *replaced, size_t cap)
{
    size_t nrep = 0;
    for (size_t i = 0; i < n; i++) {
        ts_live_t *e = ts_liveness_add(l, ids[i]);
        if (!e) continue;
        ts_strlcpy(e->token, tokens[i], sizeof e->token);
        e->polled = true;
        if (!e->token[0]) continue;
        e->seen = true;
        if (e->last[0] && strcmp(e->last, e->token) != 0 && nrep < cap) replaced[nrep++] = (size_t)(e - l->v);
        ts_strlcpy(e->last, e->token, sizeof e->last);
    }
    return nrep;
}

void ts_liveness_reset(ts_liveness_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        l->v[i].token[0] = '\0';
        l->v[i].last[0] = '\0';
        l->v[i].polled = false;
    }
}
