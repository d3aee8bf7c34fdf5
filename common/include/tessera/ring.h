/* A bounded lock-free queue of fixed-size items (Vyukov's bounded MPMC
 * queue): any thread pushes, any thread pops, no lock and no allocation per
 * item. Used to hand bus messages from nats.c's delivery threads to a tick
 * thread. A push into a full ring fails at once: the caller decides the
 * policy (drop and recover, count, report). */
#ifndef TESSERA_RING_H
#define TESSERA_RING_H

#include <stdbool.h>
#include <stddef.h>

#include "tessera/status.h"

typedef struct ts_ring ts_ring_t;

/* capacity is rounded up to a power of two (at least 2). */
ts_status_t ts_ring_create(ts_ring_t **out, size_t capacity, size_t item_size);
/* Frees the ring (not what its items point to). NULL is a no-op. */
void ts_ring_destroy(ts_ring_t *r);
/* Copies item in; false if the ring is full. */
bool ts_ring_push(ts_ring_t *r, const void *item);
/* Copies the oldest item out; false if the ring is empty. */
bool ts_ring_pop(ts_ring_t *r, void *item);
size_t ts_ring_capacity(const ts_ring_t *r);

#endif
