/* Fuzz target: what arrives from a client socket at the gateway, and from
 * the gateway at a client: a framed stream of ClientFrame payloads (the
 * gateway's decode, including the cell a frame names) and the ServerFrame
 * decode a client does. The first byte chooses the direction. */
#include "fuzz.h"
#include "tessera/cell.h"
#include "tessera/frame.h"
#include "tessera/proto.h"

static void cell_of(const Tessera__V1__CellId *pb)
{
    ts_cell_t c;
    if (pb != NULL && ts_proto_cell_get(pb, &c) == TS_OK) {
        char text[TS_CELL_STR_MAX];
        ts_cell_format(&c, text, sizeof text);
    }
}

static void client_frame(const uint8_t *p, size_t len)
{
    Tessera__V1__ClientFrame *f = tessera__v1__client_frame__unpack(NULL, len, p);
    if (f == NULL) return;
    cell_of(f->cell);
    switch (f->payload_case) {
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO:
        if (f->hello->client_name == NULL || f->hello->token == NULL) __builtin_trap();
        break;
    case TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN:
        if (f->join->name == NULL) __builtin_trap();
        break;
    default:
        break;
    }
    tessera__v1__client_frame__free_unpacked(f, NULL);
}

static void server_frame(const uint8_t *p, size_t len)
{
    Tessera__V1__ServerFrame *f = tessera__v1__server_frame__unpack(NULL, len, p);
    if (f == NULL) return;
    cell_of(f->cell);
    tessera__v1__server_frame__free_unpacked(f, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool to_gateway = (fuzz_byte(&data, &size) & 1) == 0;
    ts_frame_reader_t r;
    ts_frame_reader_init(&r, TS_FRAME_DEFAULT_MAX);
    if (ts_frame_reader_feed(&r, data, size) == TS_OK) {
        const uint8_t *payload;
        size_t len;
        while (ts_frame_reader_next(&r, &payload, &len) == TS_OK) {
            if (to_gateway)
                client_frame(payload, len);
            else
                server_frame(payload, len);
        }
    }
    ts_frame_reader_free(&r);
    /* the whole input as one payload too (no framing) */
    if (to_gateway)
        client_frame(data, size);
    else
        server_frame(data, size);
    return 0;
}
