/* Open-addressing hash map (linear probing) from uint64 keys to pointers.
 *
 * Invariants: cap is 0 or a power of two; a slot holds EMPTY (0), TOMB
 * (UINT64_MAX) or a live key; len + tombs stays below 3/4 of cap so every
 * probe sequence reaches an EMPTY slot. Deleting leaves a tombstone and never
 * moves other entries, which is what makes deletion during iteration safe;
 * tables are only rebuilt on insertion. */
#include "tessera/map.h"
#include "tessera/util.h"

#include <stdlib.h>

#define MAP_EMPTY 0ull
#define MAP_TOMB UINT64_MAX
#define MAP_MIN_CAP 16

void ts_map_init(ts_map_t *m)
{
    m->slots = NULL;
    m->cap = 0;
    m->len = 0;
    m->tombs = 0;
}

void ts_map_free(ts_map_t *m)
{
    if (m == NULL) return;
    free(m->slots);
    ts_map_init(m);
}

static size_t find_slot(const ts_map_t *m, uint64_t key)
{
    size_t mask = m->cap - 1;
    for (size_t i = ts_mix64(key) & mask;; i = (i + 1) & mask) {
        if (m->slots[i].key == key || m->slots[i].key == MAP_EMPTY) return i;
    }
}

void *ts_map_get(const ts_map_t *m, uint64_t key)
{
    if (m == NULL || m->cap == 0 || key == MAP_EMPTY || key == MAP_TOMB) return NULL;
    size_t i = find_slot(m, key);
    return m->slots[i].key == key ? m->slots[i].val : NULL;
}

static ts_status_t rebuild(ts_map_t *m, size_t cap)
{
    ts_map_slot_t *slots = calloc(cap, sizeof *slots);
    if (slots == NULL) return TS_ERR_NOMEM;
    size_t mask = cap - 1;
    for (size_t j = 0; j < m->cap; j++) {
        uint64_t k = m->slots[j].key;
        if (k == MAP_EMPTY || k == MAP_TOMB) continue;
        size_t i = ts_mix64(k) & mask;
        while (slots[i].key != MAP_EMPTY)
            i = (i + 1) & mask;
        slots[i] = m->slots[j];
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    m->tombs = 0;
    return TS_OK;
}

ts_status_t ts_map_put(ts_map_t *m, uint64_t key, void *val)
{
    if (m == NULL || key == MAP_EMPTY || key == MAP_TOMB) return TS_ERR_INVALID;
    if (m->cap > 0) {
        size_t i = find_slot(m, key);
        if (m->slots[i].key == key) {
            m->slots[i].val = val;
            return TS_OK;
        }
    }
    if ((m->len + m->tombs + 1) * 4 >= m->cap * 3) {
        size_t cap = m->cap ? m->cap : MAP_MIN_CAP;
        while ((m->len + 1) * 2 >= cap)
            cap *= 2;
        ts_status_t st = rebuild(m, cap);
        if (st != TS_OK) return st;
    }
    /* reuse the first tombstone on the probe path, else the empty slot */
    size_t mask = m->cap - 1;
    size_t i = ts_mix64(key) & mask;
    while (m->slots[i].key != MAP_EMPTY && m->slots[i].key != MAP_TOMB)
        i = (i + 1) & mask;
    if (m->slots[i].key == MAP_TOMB) m->tombs--;
    m->slots[i].key = key;
    m->slots[i].val = val;
    m->len++;
    return TS_OK;
}

void *ts_map_del(ts_map_t *m, uint64_t key)
{
    if (m == NULL || m->cap == 0 || key == MAP_EMPTY || key == MAP_TOMB) return NULL;
    size_t i = find_slot(m, key);
    if (m->slots[i].key != key) return NULL;
    void *val = m->slots[i].val;
    m->slots[i].key = MAP_TOMB;
    m->slots[i].val = NULL;
    m->len--;
    m->tombs++;
    return val;
}

int ts_map_next(const ts_map_t *m, size_t *iter, uint64_t *key, void **val)
{
    if (m == NULL || iter == NULL) return 0;
    for (size_t i = *iter; i < m->cap; i++) {
        uint64_t k = m->slots[i].key;
        if (k == MAP_EMPTY || k == MAP_TOMB) continue;
        if (key) *key = k;
        if (val) *val = m->slots[i].val;
        *iter = i + 1;
        return 1;
    }
    *iter = m->cap;
    return 0;
}
