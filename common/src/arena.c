#include "tessera/arena.h"

#include <stdint.h>
#include <stdlib.h>

struct ts_arena_big {
    ts_arena_big_t *next;
    max_align_t data[];
};

#define ARENA_FIRST_BLOCK 65536
#define ARENA_MAX_BLOCK ((size_t)16 << 20)

static void *pc_alloc(void *ud, size_t n)
{
    return ts_arena_alloc(ud, n);
}

static void pc_free(void *ud, void *p)
{
    (void)ud;
    (void)p; /* released by ts_arena_reset */
}

void ts_arena_init(ts_arena_t *a)
{
    *a = (ts_arena_t){0};
    a->pc.alloc = pc_alloc;
    a->pc.free = pc_free;
    a->pc.allocator_data = a;
}

void *ts_arena_alloc(ts_arena_t *a, size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    if (need < n) return NULL;
    if (a->block && a->cap - a->used >= need) {
        void *p = a->block + a->used;
        a->used += need;
        return p;
    }
    if (!a->block) {
        a->block = aligned_alloc(16, ARENA_FIRST_BLOCK);
        if (a->block) {
            a->cap = ARENA_FIRST_BLOCK;
            a->used = 0;
            return ts_arena_alloc(a, n);
        }
    }
    /* does not fit: its own allocation until the next reset */
    if (need > SIZE_MAX - sizeof(ts_arena_big_t)) return NULL;
    ts_arena_big_t *b = malloc(sizeof(*b) + need);
    if (!b) return NULL;
    b->next = a->big;
    a->big = b;
    a->big_bytes += need;
    return b->data;
}

void ts_arena_reset(ts_arena_t *a)
{
    size_t want = a->used + a->big_bytes;
    while (a->big) {
        ts_arena_big_t *n = a->big->next;
        free(a->big);
        a->big = n;
    }
    a->big_bytes = 0;
    a->used = 0;
    if (want > a->cap && want <= ARENA_MAX_BLOCK) {
        /* the block grows to what one message needed, so the next one fits */
        size_t cap = a->cap ? a->cap : ARENA_FIRST_BLOCK;
        while (cap < want)
            cap *= 2;
        unsigned char *nb = aligned_alloc(16, cap);
        if (nb) {
            free(a->block);
            a->block = nb;
            a->cap = cap;
        }
    }
}

void ts_arena_free(ts_arena_t *a)
{
    ts_arena_reset(a);
    free(a->block);
    ts_arena_init(a);
}

ProtobufCAllocator *ts_arena_allocator(ts_arena_t *a)
{
    return &a->pc;
}
