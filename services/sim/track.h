/* What one gateway client learns from its ServerFrames, with no I/O: its
 * own entity (named by the Snapshot that answers its Join), the highest
 * last_input_seq and inputs_applied any Delta or Snapshot showed for it, and
 * counts of frames by kind; and the own entity's cell: the cell every
 * ServerFrame names (its field `cell`, the player's cell) from the Snapshot
 * on, and the `to` of each CellChanged. A CellChanged naming the cell the
 * client already had, or a frame naming another cell without a CellChanged
 * before it, is counted: a client is told of a cell change exactly when its
 * entity's cell id changed.
 *
 * Frames are read with a small protobuf wire scanner instead of a full
 * unpack: a Delta may carry hundreds of entities and thousands of clients
 * each get 20 a second, so only the id of each entity is read and every
 * other entity is skipped by its length. Unknown fields are skipped by wire
 * type, so the scanner only relies on EntityState's id (1), last_input_seq
 * (6) and inputs_applied (7), CellId's fields, ServerFrame's cell (3) and
 * payload numbers and CellChanged's to (2). */
#ifndef TESSERA_SIM_TRACK_H
#define TESSERA_SIM_TRACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/cell.h"
#include "tessera/status.h"

typedef enum {
    TS_TRACK_OTHER = 0, /* no payload, or one the sim does not use */
    TS_TRACK_WELCOME,
    TS_TRACK_SNAPSHOT,
    TS_TRACK_DELTA,
    TS_TRACK_CELL_CHANGED,
    TS_TRACK_PONG,
    TS_TRACK_ERROR,
} ts_track_kind_t;

typedef struct {
    uint64_t entity;         /* own entity id; 0 until a Snapshot named it */
    bool seen;               /* own entity shown in a Delta or Snapshot */
    uint64_t last_input_seq; /* highest shown for the own entity */
    uint64_t inputs_applied; /* highest shown for the own entity */
    uint64_t welcomes, snapshots, deltas, cell_changes, errors;
    /* the own entity's cell, known from the first frame naming one once the
     * entity is known (the Snapshot), then from every frame */
    bool has_cell;
    ts_cell_t cell;
    uint8_t max_depth;                 /* deepest cell the entity was in */
    uint64_t cell_changed_same;        /* CellChanged whose `to` is the cell it had */
    uint64_t cell_changed_unannounced; /* frames naming a new cell with no CellChanged first */
} ts_track_t;

/* One frame, as far as the caller needs it. */
typedef struct {
    ts_track_kind_t kind;
    bool own_shown; /* the frame showed the own entity */
    /* TS_TRACK_CELL_CHANGED: its `to` equals the cell the client had */
    bool cell_same;
    /* another frame named a cell other than the known one */
    bool cell_unannounced;
    /* TS_TRACK_ERROR: the Error's fields; message borrowed from the payload,
     * not NUL-terminated */
    int error_code;
    bool error_fatal;
    const char *error_msg;
    size_t error_msg_len;
    /* the client seq range an Error names (ERROR_INPUT_NOT_STORED), else 0 */
    uint64_t error_first_seq, error_last_seq;
} ts_track_frame_t;

/* ErrorCode value of ERROR_INPUT_NOT_STORED (schemas/client.proto). */
#define TS_TRACK_ERROR_INPUT_NOT_STORED 7

void ts_track_init(ts_track_t *t);
/* Reads one ServerFrame payload (without the length header) and updates t.
 * TS_ERR_MALFORMED if it is not valid protobuf wire format (t may then
 * have counted part of it). */
ts_status_t ts_track_frame(ts_track_t *t, const uint8_t *payload, size_t len, ts_track_frame_t *out);

#endif
