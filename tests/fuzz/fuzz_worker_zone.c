/* Fuzz target: a worker's cell (services/worker/zone.c) fed what the bus
 * delivers. Each input is a sequence of records: one byte picks the kind
 * (input batch from the stream, full checkpoint, diff checkpoint, a tick),
 * two bytes the length, then the payload. Decoded batches and checkpoints
 * are applied to one zone, which then steps and packs its state delta and
 * checkpoint: nothing a publisher sends may crash a worker or make it write
 * out of bounds, whatever positions, ids or counts it names. */
#include <stdlib.h>

#include "fuzz.h"
#include "tessera/arena.h"
#include "tessera/cell.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "zone.h"

static const ts_world_t WORLD = {.id = 0, .cell_size = 100, .x0 = -2, .y0 = -2, .width = 4, .height = 4};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ts_cell_t cell = {.world = 0, .cx = 0, .cy = 0, .depth = 0, .sub = 0};
    ts_zone_t *z = NULL;
    static ts_arena_t arena;
    static bool arena_ready;
    if (!arena_ready) {
        ts_arena_init(&arena);
        arena_ready = true;
    }
    if (ts_zone_create(&z, &cell, 1, &WORLD, 50) != TS_OK) return 0;
    uint64_t seq = 0, tick = 0;
    while (size >= 3) {
        uint8_t kind = fuzz_byte(&data, &size);
        size_t len = fuzz_byte(&data, &size);
        len = len << 8 | fuzz_byte(&data, &size);
        if (len > size) len = size;
        switch (kind % 4) {
        case 0: {
            /* into an arena, as the worker's tick thread decodes them */
            Tessera__V1__InputBatch *b =
                tessera__v1__input_batch__unpack(ts_arena_allocator(&arena), len, data);
            if (b != NULL) ts_zone_apply_batch(z, ++seq, b, tick);
            ts_arena_reset(&arena);
            break;
        }
        case 1:
        case 2: {
            Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, data);
            if (cp != NULL) {
                (void)ts_zone_load_checkpoint(z, cp, kind % 4 == 2, tick);
                tessera__v1__checkpoint__free_unpacked(cp, NULL);
            }
            break;
        }
        default:
            ts_zone_step(z, 0.05, ++tick);
            break;
        }
        data += len;
        size -= len;
    }
    ts_zone_step(z, 0.05, ++tick);
    uint8_t **bufs = NULL;
    size_t *lens = NULL, nparts = 0;
    if (ts_zone_pack_delta(z, tick, true, "w1", &bufs, &lens, &nparts) == TS_OK)
        ts_zone_free_parts(bufs, lens, nparts);
    if (ts_zone_pack_checkpoint_parts(z, tick, "w1", false, 1, &bufs, &lens, &nparts) == TS_OK)
        ts_zone_free_parts(bufs, lens, nparts);
    ts_zone_destroy(z);
    return 0;
}
