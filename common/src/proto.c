/* Glue between Tessera types and protobuf-c: CellId conversion (validating
 * ids that come off the wire) and packing any message into a fresh buffer. */
#include "tessera/proto.h"

#include <stdlib.h>

void ts_proto_cell_init(Tessera__V1__CellId *pb, const ts_cell_t *c)
{
    tessera__v1__cell_id__init(pb);
    pb->world = c->world;
    pb->cx = c->cx;
    pb->cy = c->cy;
    pb->depth = c->depth;
    pb->sub = c->sub;
}

ts_status_t ts_proto_cell_get(const Tessera__V1__CellId *pb, ts_cell_t *out)
{
    if (pb == NULL) return TS_ERR_MALFORMED;
    if (out == NULL) return TS_ERR_INVALID;
    if (pb->depth > TS_CELL_MAX_DEPTH) return TS_ERR_UNKNOWN_CELL;
    ts_cell_t c = {
        .world = pb->world, .cx = pb->cx, .cy = pb->cy, .depth = (uint8_t)pb->depth, .sub = pb->sub};
    if (!ts_cell_valid(&c)) return TS_ERR_UNKNOWN_CELL;
    *out = c;
    return TS_OK;
}

ts_status_t ts_proto_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len)
{
    if (msg == NULL || out == NULL || len == NULL) return TS_ERR_INVALID;
    size_t size = protobuf_c_message_get_packed_size(msg);
    /* an empty message packs to zero bytes; still hand back a freeable buffer */
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL) return TS_ERR_NOMEM;
    size_t written = protobuf_c_message_pack(msg, buf);
    if (written != size) {
        free(buf);
        return TS_ERR_MALFORMED;
    }
    *out = buf;
    *len = size;
    return TS_OK;
}
