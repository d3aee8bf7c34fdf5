/* Fuzz target: the stream frame decoder (common/src/frame.c), as the
 * gateway feeds it from socket reads. The first byte picks the maximum
 * frame size, the second the read size; the rest is the byte stream, fed in
 * reads of that size, every whole frame taken out after each read, the
 * reader reset when it reports an oversized frame (as the gateway closes the
 * connection). Every frame handed out must lie inside the buffered bytes
 * and respect the maximum. */
#include <stdlib.h>

#include "fuzz.h"
#include "tessera/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t max_frame = 1 + (size_t)fuzz_byte(&data, &size) * 16;
    size_t chunk = 1 + fuzz_byte(&data, &size);
    ts_frame_reader_t r;
    ts_frame_reader_init(&r, max_frame);
    while (size > 0) {
        size_t n = size < chunk ? size : chunk;
        if (ts_frame_reader_feed(&r, data, n) != TS_OK) break;
        data += n;
        size -= n;
        for (;;) {
            const uint8_t *payload = NULL;
            size_t len = 0;
            ts_status_t st = ts_frame_reader_next(&r, &payload, &len);
            if (st == TS_OK) {
                if (len > max_frame) abort();
                volatile uint8_t sink = 0;
                for (size_t i = 0; i < len; i++) /* every byte readable */
                    sink ^= payload[i];
                (void)sink;
                continue;
            }
            if (st == TS_ERR_OVERSIZED) {
                ts_frame_reader_free(&r);
                ts_frame_reader_init(&r, max_frame);
            } else if (st != TS_ERR_AGAIN) {
                abort();
            }
            break;
        }
    }
    ts_frame_reader_free(&r);
    return 0;
}
