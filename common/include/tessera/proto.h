/* Glue between Tessera types and the protobuf-c generated code
 * (schemas/<name>.proto, generated at build time). */
#ifndef TESSERA_PROTO_H
#define TESSERA_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "client.pb-c.h"
#include "common.pb-c.h"
#include "internal.pb-c.h"
#include "tessera/cell.h"
#include "tessera/status.h"

#define TS_PROTOCOL_VERSION 1

/* Message names used in the Ts-Type header. */
#define TS_TYPE_INPUT_BATCH "tessera.v1.InputBatch"
#define TS_TYPE_STATE_DELTA "tessera.v1.StateDelta"
#define TS_TYPE_CHECKPOINT "tessera.v1.Checkpoint"
#define TS_TYPE_GHOST_DELTA "tessera.v1.GhostDelta"
#define TS_TYPE_HANDOVER "tessera.v1.Handover"
#define TS_TYPE_HEARTBEAT "tessera.v1.Heartbeat"
#define TS_TYPE_TICK_MARK "tessera.v1.TickMark"
#define TS_TYPE_REGISTRY_CHANGE "tessera.v1.RegistryChange"

/* Converts between ts_cell_t and the wire CellId. ts_proto_cell_init fills a
 * caller-owned CellId (no allocation). */
void ts_proto_cell_init(Tessera__V1__CellId *pb, const ts_cell_t *c);
/* NULL pb gives TS_ERR_MALFORMED; an invalid id TS_ERR_UNKNOWN_CELL. */
ts_status_t ts_proto_cell_get(const Tessera__V1__CellId *pb, ts_cell_t *out);

/* Packs any protobuf-c message into a malloc'd buffer (caller frees). */
ts_status_t ts_proto_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len);

#endif
