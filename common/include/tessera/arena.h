/* A bump allocator that protobuf-c can unpack into.
 *
 * protobuf-c's unpack calls malloc for every message, string and repeated
 * field it decodes: an InputBatch of 50 moves is over a hundred mallocs, and
 * the matching frees. A worker decodes one batch at a time and throws it
 * away before the next, so the allocations can come from one reusable block:
 * unpack with ts_arena_allocator(), use the message, ts_arena_reset(). Never
 * call free_unpacked on a message unpacked this way (it would be a no-op).
 *
 * Not thread-safe: one arena per thread that decodes. */
#ifndef TS_ARENA_H
#define TS_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct ts_arena_big ts_arena_big_t;

typedef struct {
    unsigned char *block; /* the reusable block */
    size_t cap, used;
    ts_arena_big_t *big; /* what did not fit, freed at reset */
    size_t big_bytes;    /* how much that was: the block grows to it */
    ProtobufCAllocator pc;
} ts_arena_t;

void ts_arena_init(ts_arena_t *a);
/* Frees everything taken since the last reset; keeps (and grows) the block. */
void ts_arena_reset(ts_arena_t *a);
void ts_arena_free(ts_arena_t *a);
/* 16-byte aligned; NULL when out of memory. */
void *ts_arena_alloc(ts_arena_t *a, size_t n);
/* For protobuf-c's unpack. */
ProtobufCAllocator *ts_arena_allocator(ts_arena_t *a);

#endif
