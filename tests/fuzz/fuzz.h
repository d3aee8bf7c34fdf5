/* Shared by the fuzz targets: the libFuzzer entry point every target
 * defines, and small helpers to take bytes off the front of an input. */
#ifndef TS_FUZZ_H
#define TS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Takes one byte off the front of the input (0 when empty). */
static inline uint8_t fuzz_byte(const uint8_t **data, size_t *size)
{
    if (*size == 0) return 0;
    uint8_t b = **data;
    (*data)++;
    (*size)--;
    return b;
}

#endif
