/* Open-addressing hash map from a non-zero uint64 key to a pointer.
 * Not thread-safe. Keys 0 and UINT64_MAX are reserved. */
#ifndef TESSERA_MAP_H
#define TESSERA_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

typedef struct {
    uint64_t key;
    void *val;
} ts_map_slot_t;

typedef struct {
    ts_map_slot_t *slots; /* a key beside its value: one cache line per probe */
    size_t cap;           /* power of two */
    size_t len;
    size_t tombs;
} ts_map_t;

void ts_map_init(ts_map_t *m);
void ts_map_free(ts_map_t *m);
/* Value for key, or NULL. */
void *ts_map_get(const ts_map_t *m, uint64_t key);
/* Inserts or replaces. */
ts_status_t ts_map_put(ts_map_t *m, uint64_t key, void *val);
/* Removes and returns the value, or NULL if absent. */
void *ts_map_del(ts_map_t *m, uint64_t key);

/* Iteration: for (size_t i = 0; ts_map_next(m, &i, &k, &v);) ... ; safe to
 * ts_map_del the current key while iterating. */
int ts_map_next(const ts_map_t *m, size_t *iter, uint64_t *key, void **val);

#endif
