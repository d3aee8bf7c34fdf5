/* Fuzz target: `tessera-ctl decode` (services/ctl/decode.c), which prints
 * any bus payload readable, as text or JSON. The first byte picks the
 * subject (so the decoder picks the message type) and the output format;
 * the rest is the payload. */
#include <stdio.h>
#include <stdlib.h>

#include "ctl.h"
#include "fuzz.h"

static const char *const subjects[] = {
    "cell.0.0.0.0.0.input",    "cell.0.0.0.0.0.state", "cell.0.-1.2.1.3.checkpoint",
    "cell.0.0.0.0.0.handover", "tessera.worker.w1.hb", "tessera.registry.0",
    "cell.0.0.0.0.0.ghost",    "tessera.gw.1",         "cell.0.0.0.0.0.checkpoint.2",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *out;
    if (out == NULL) {
        out = fopen("/dev/null", "w");
        if (out == NULL) abort();
    }
    uint8_t b = fuzz_byte(&data, &size);
    const char *subject = subjects[(b >> 1) % (sizeof subjects / sizeof subjects[0])];
    char err[256];
    (void)ts_ctl_decode_payload(subject, data, size, (b & 1) != 0, out, err, sizeof err);
    return 0;
}
