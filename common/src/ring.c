/* Bounded MPMC queue after Dmitry Vyukov: every slot has a sequence number
 * that says whether it is free for the producer of position pos (seq == pos)
 * or holds the item for the consumer of position pos (seq == pos + 1). */
#include "tessera/ring.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ts_ring {
    alignas(64) _Atomic size_t enqueue_pos;
    alignas(64) _Atomic size_t dequeue_pos;
    alignas(64) size_t mask;
    size_t item_size;
    _Atomic size_t *seq;
    unsigned char *items;
};

ts_status_t ts_ring_create(ts_ring_t **out, size_t capacity, size_t item_size)
{
    if (!out || item_size == 0 || capacity == 0 || capacity > ((size_t)1 << 30)) return TS_ERR_INVALID;
    size_t cap = 2;
    while (cap < capacity)
        cap <<= 1;
    ts_ring_t *r = aligned_alloc(64, sizeof(*r));
    if (!r) return TS_ERR_NOMEM;
    memset(r, 0, sizeof(*r));
    r->seq = malloc(cap * sizeof(*r->seq));
    r->items = malloc(cap * item_size);
    if (!r->seq || !r->items) {
        free(r->seq);
        free(r->items);
        free(r);
        return TS_ERR_NOMEM;
    }
    for (size_t i = 0; i < cap; i++)
        atomic_init(&r->seq[i], i);
    atomic_init(&r->enqueue_pos, 0);
    atomic_init(&r->dequeue_pos, 0);
    r->mask = cap - 1;
    r->item_size = item_size;
    *out = r;
    return TS_OK;
}

void ts_ring_destroy(ts_ring_t *r)
{
    if (!r) return;
    free(r->seq);
    free(r->items);
    free(r);
}

size_t ts_ring_capacity(const ts_ring_t *r)
{
    return r->mask + 1;
}

bool ts_ring_push(ts_ring_t *r, const void *item)
{
    size_t pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
    for (;;) {
        size_t seq = atomic_load_explicit(&r->seq[pos & r->mask], memory_order_acquire);
        intptr_t diff = (intptr_t)seq - (intptr_t)pos;
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->enqueue_pos, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (diff < 0) {
            return false; /* full */
        } else {
            pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
        }
    }
    memcpy(r->items + (pos & r->mask) * r->item_size, item, r->item_size);
    atomic_store_explicit(&r->seq[pos & r->mask], pos + 1, memory_order_release);
    return true;
}

bool ts_ring_pop(ts_ring_t *r, void *item)
{
    size_t pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
    for (;;) {
        size_t seq = atomic_load_explicit(&r->seq[pos & r->mask], memory_order_acquire);
        intptr_t diff = (intptr_t)seq - (intptr_t)(pos + 1);
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->dequeue_pos, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (diff < 0) {
            return false; /* empty */
        } else {
            pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
        }
    }
    memcpy(item, r->items + (pos & r->mask) * r->item_size, r->item_size);
    atomic_store_explicit(&r->seq[pos & r->mask], pos + r->mask + 1, memory_order_release);
    return true;
}
