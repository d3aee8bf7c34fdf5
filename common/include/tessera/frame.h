/* Stream framing: every frame is a 4-byte big-endian payload length followed
 * by the payload (one protobuf message). The reader accumulates bytes from
 * partial reads and hands out whole frames; a length above the configured
 * maximum is rejected before any payload is buffered. */
#ifndef TESSERA_FRAME_H
#define TESSERA_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

#define TS_FRAME_HEADER 4
#define TS_FRAME_DEFAULT_MAX (64 * 1024)

typedef struct {
    uint8_t *buf;
    size_t len; /* bytes buffered */
    size_t cap;
    size_t max_frame; /* largest accepted payload */
    size_t off;       /* buf[off..len) not yet handed out by ts_frame_reader_next */
} ts_frame_reader_t;

void ts_frame_reader_init(ts_frame_reader_t *r, size_t max_frame);
void ts_frame_reader_free(ts_frame_reader_t *r);

/* Appends n bytes read from the peer. TS_ERR_NOMEM on allocation failure. */
ts_status_t ts_frame_reader_feed(ts_frame_reader_t *r, const void *data, size_t n);

/* Takes the next whole frame. On TS_OK *payload and *len point into the reader
 * (borrowed, valid until the next feed/next call). TS_ERR_AGAIN: need more
 * bytes. TS_ERR_OVERSIZED: the announced length exceeds max_frame (the
 * stream cannot be resynchronised; close it). */
ts_status_t ts_frame_reader_next(ts_frame_reader_t *r, const uint8_t **payload, size_t *len);

/* Writes the 4-byte header for a payload of len bytes. */
void ts_frame_put_header(uint8_t out[TS_FRAME_HEADER], uint32_t len);
/* Reads a 4-byte big-endian length. */
uint32_t ts_frame_get_header(const uint8_t in[TS_FRAME_HEADER]);

#endif
