/* Cell-keyed map: a ts_map from the cell's hash to a short chain of nodes
 * (collisions of the 64-bit hash are possible, so every node keeps its
 * cell and look-ups compare it). */
#include "tessera/cellmap.h"

#include <stdlib.h>

typedef struct node {
    ts_cell_t cell;
    void *val;
    struct node *next;
} node_t;

void ts_cellmap_init(ts_cellmap_t *m)
{
    ts_map_init(&m->buckets);
    m->len = 0;
}

void ts_cellmap_free(ts_cellmap_t *m)
{
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&m->buckets, &it, &k, &v);) {
        for (node_t *n = v; n;) {
            node_t *next = n->next;
            free(n);
            n = next;
        }
    }
    ts_map_free(&m->buckets);
    m->len = 0;
}

void ts_cellmap_clear(ts_cellmap_t *m, void (*fn)(void *val))
{
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&m->buckets, &it, &k, &v);)
        for (node_t *n = v; n; n = n->next)
            fn(n->val);
    ts_cellmap_free(m);
    ts_cellmap_init(m);
}

void *ts_cellmap_get(const ts_cellmap_t *m, const ts_cell_t *cell)
{
    for (node_t *n = ts_map_get(&m->buckets, ts_cell_hash(cell)); n; n = n->next)
        if (ts_cell_eq(&n->cell, cell)) return n->val;
    return NULL;
}

ts_status_t ts_cellmap_put(ts_cellmap_t *m, const ts_cell_t *cell, void *val)
{
    if (!val) return TS_ERR_INVALID;
    uint64_t h = ts_cell_hash(cell);
    node_t *head = ts_map_get(&m->buckets, h);
    for (node_t *n = head; n; n = n->next) {
        if (ts_cell_eq(&n->cell, cell)) {
            n->val = val;
            return TS_OK;
        }
    }
    node_t *n = malloc(sizeof(*n));
    if (!n) return TS_ERR_NOMEM;
    *n = (node_t){.cell = *cell, .val = val, .next = head};
    if (ts_map_put(&m->buckets, h, n) != TS_OK) {
        free(n);
        return TS_ERR_NOMEM;
    }
    m->len++;
    return TS_OK;
}

void *ts_cellmap_del(ts_cellmap_t *m, const ts_cell_t *cell)
{
    uint64_t h = ts_cell_hash(cell);
    node_t *head = ts_map_get(&m->buckets, h);
    for (node_t **p = &head; *p; p = &(*p)->next) {
        if (!ts_cell_eq(&(*p)->cell, cell)) continue;
        node_t *n = *p;
        void *val = n->val;
        *p = n->next;
        free(n);
        if (head)
            ts_map_put(&m->buckets, h, head); /* replacing an existing key cannot fail */
        else
            ts_map_del(&m->buckets, h);
        m->len--;
        return val;
    }
    return NULL;
}

void ts_cellmap_each(const ts_cellmap_t *m, void (*fn)(void *ud, const ts_cell_t *cell, void *val), void *ud)
{
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&m->buckets, &it, &k, &v);)
        for (const node_t *n = v; n; n = n->next)
            fn(ud, &n->cell, n->val);
}
