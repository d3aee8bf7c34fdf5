/* Wire-level building blocks of the gateway's fan-out, free of sockets and
 * of the gateway object so they can be tested alone.
 *
 * A client's Delta is spliced, not packed: protobuf concatenates repeated
 * fields, so
 *
 *   frame = [4-byte length][ServerFrame seq, epoch, cell][tag 12, len]
 *           [Delta.tick][block of cell A][block of cell B]...[removed]
 *
 * decodes as one Delta whose entities are the blocks' entities in order.
 * A block (gw_blk_t) holds encoded `entities` entries (field 2 of both Delta
 * and Snapshot), built once per cell per flush and shared by every client
 * that sees the cell; only the small head and the removed list are per
 * client. A block records cut points at entity boundaries so a very large
 * view can be split over several frames.
 *
 * gw_kf_t follows a keyframe that a worker split into parts: the entities a
 * keyframe does not list may be forgotten only once every part of it (same
 * epoch, same tick) arrived. */
#ifndef TS_GATEWAY_FANOUT_H
#define TS_GATEWAY_FANOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/proto.h"
#include "tessera/status.h"

/* Blocks are cut at an entity boundary about every this many bytes. */
#define GW_BLK_CUT_BYTES 16384
/* Largest frame head gw_frame_head writes. */
#define GW_FRAME_HEAD_MAX 128
/* ServerFrame payload field numbers the head can announce. */
#define GW_PAYLOAD_SNAPSHOT 11
#define GW_PAYLOAD_DELTA 12
#define GW_PAYLOAD_EVENT 16
#define GW_PAYLOAD_WORLD_COUNTERS 17

/* Where one entity sits in a block, and where it is in the world: lets a
 * client whose area of interest cuts the cell take some entities of the
 * shared block without encoding them again. */
typedef struct {
    uint64_t id;
    double x, y;
    uint32_t off, len; /* its `entities` entry: data[off, off + len) */
} gw_blk_ent_t;

typedef struct {
    uint8_t *data;
    size_t len, cap;
    size_t *cuts; /* offsets of entity boundaries, ascending, ending with len */
    size_t ncuts, cuts_cap;
    size_t count;       /* entities in the block */
    gw_blk_ent_t *ents; /* count entries, in block order */
    size_t ents_cap;
} gw_blk_t;

/* Empties the block, keeping its memory. */
void gw_blk_reset(gw_blk_t *b);
void gw_blk_free(gw_blk_t *b);
/* Appends one `entities` entry (field 2). */
ts_status_t gw_blk_add(gw_blk_t *b, const Tessera__V1__EntityState *s);
/* Closes the last cut (call after the last gw_blk_add of a flush). */
ts_status_t gw_blk_seal(gw_blk_t *b);

/* Writes a protobuf varint; returns its length (at most 10). */
size_t gw_pb_varint(uint8_t *out, uint64_t v);
size_t gw_pb_varint_len(uint64_t v);

/* Encoded length of a `removed` field (3, packed) holding ids; 0 if n == 0. */
size_t gw_removed_len(const uint64_t *ids, size_t n);
/* Writes it (gw_removed_len bytes) and returns the length. */
size_t gw_removed_put(uint8_t *out, const uint64_t *ids, size_t n);

/* Writes the frame head: the 4-byte frame length, ServerFrame.seq, .epoch,
 * .cell (if cell != NULL), the payload tag (GW_PAYLOAD_*) and length, and the
 * payload's field 1 (Delta.tick / Snapshot.entity, if nonzero). rest_len is
 * the number of payload bytes that follow the head (blocks + removed).
 * Returns the head's length (<= GW_FRAME_HEAD_MAX); *frame_len receives the
 * length of the whole frame including the 4-byte prefix. */
size_t gw_frame_head(uint8_t *out, uint64_t seq, uint64_t epoch, const ts_cell_t *cell, int payload,
                     uint64_t field1, size_t rest_len, size_t *frame_len);

/* Keyframe assembly for one cell. */
typedef struct {
    uint64_t epoch, tick;
    uint32_t parts; /* parts of the keyframe being assembled; 0: none */
    uint32_t seen;  /* distinct parts received */
    uint64_t mask;  /* parts 0..63 received */
} gw_kf_t;

typedef enum {
    GW_KF_PART = 0,  /* a part of the keyframe already being assembled */
    GW_KF_BEGIN = 1, /* first part seen of a new keyframe */
    GW_KF_DONE = 2,  /* flag: every part has now arrived */
} gw_kf_step_t;

/* Notes a keyframe part (part counts from 0; parts 0 or 1: not chunked).
 * Returns GW_KF_BEGIN if this starts a new keyframe (the caller starts a new
 * generation before applying its entities), ORed with GW_KF_DONE when the
 * keyframe is complete (the caller then forgets entities the generation did
 * not see). A repeated part is not counted twice. */
int gw_kf_note(gw_kf_t *kf, uint64_t epoch, uint64_t tick, uint32_t part, uint32_t parts);

#endif
