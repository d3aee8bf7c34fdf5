/* Length-prefixed frame reader.
 *
 * Invariants: buf[off..len) holds the stream bytes not yet handed out,
 * starting at a frame header. ts_frame_reader_next only advances off and never
 * moves memory, so a borrowed payload stays valid until the next feed, which
 * compacts. Bytes after a header that announces more than max_frame are never
 * kept (the stream is dead at that point), so one frame never costs more than
 * max_frame + TS_FRAME_HEADER bytes of buffer; an idle reader whose buffer
 * grew for a large frame gives the memory back. */
#include "tessera/frame.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void ts_frame_reader_init(ts_frame_reader_t *r, size_t max_frame)
{
    r->buf = NULL;
    r->len = 0;
    r->cap = 0;
    r->max_frame = max_frame ? max_frame : TS_FRAME_DEFAULT_MAX;
    r->off = 0;
}

void ts_frame_reader_free(ts_frame_reader_t *r)
{
    if (r == NULL) return;
    free(r->buf);
    r->buf = NULL;
    r->len = 0;
    r->cap = 0;
    r->off = 0;
}

/* Buffers larger than this are released once they are empty. */
#define FRAME_KEEP_CAP (64 * 1024)

uint32_t ts_frame_get_header(const uint8_t in[TS_FRAME_HEADER])
{
    return ((uint32_t)in[0] << 24) | ((uint32_t)in[1] << 16) | ((uint32_t)in[2] << 8) | (uint32_t)in[3];
}

void ts_frame_put_header(uint8_t out[TS_FRAME_HEADER], uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
}

static void compact(ts_frame_reader_t *r)
{
    if (r->off == 0) return;
    if (r->off < r->len) memmove(r->buf, r->buf + r->off, r->len - r->off);
    r->len -= r->off;
    r->off = 0;
    if (r->len == 0 && r->cap > FRAME_KEEP_CAP) {
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
}

/* True if an unread frame announces more than max_frame; everything after
 * that header is cut off, since the stream cannot be read past it. */
static bool cut_oversized(ts_frame_reader_t *r)
{
    size_t pos = r->off;
    while (r->len - pos >= TS_FRAME_HEADER) {
        uint32_t flen = ts_frame_get_header(r->buf + pos);
        if (flen > r->max_frame) {
            r->len = pos + TS_FRAME_HEADER;
            return true;
        }
        if (r->len - pos - TS_FRAME_HEADER < flen) return false;
        pos += TS_FRAME_HEADER + flen;
    }
    return false;
}

ts_status_t ts_frame_reader_feed(ts_frame_reader_t *r, const void *data, size_t n)
{
    if (r == NULL || (data == NULL && n > 0)) return TS_ERR_INVALID;
    compact(r);
    if (n == 0 || cut_oversized(r)) return TS_OK;
    if (n > SIZE_MAX - r->len) return TS_ERR_NOMEM;
    size_t need = r->len + n;
    if (need > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        uint8_t *nb = realloc(r->buf, cap);
        if (nb == NULL) return TS_ERR_NOMEM;
        r->buf = nb;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len = need;
    cut_oversized(r);
    return TS_OK;
}

ts_status_t ts_frame_reader_next(ts_frame_reader_t *r, const uint8_t **payload, size_t *len)
{
    if (r == NULL || payload == NULL || len == NULL) return TS_ERR_INVALID;
    size_t avail = r->len - r->off;
    if (avail < TS_FRAME_HEADER) return TS_ERR_AGAIN;
    uint32_t flen = ts_frame_get_header(r->buf + r->off);
    if (flen > r->max_frame) return TS_ERR_OVERSIZED;
    if (avail - TS_FRAME_HEADER < flen) return TS_ERR_AGAIN;
    *payload = r->buf + r->off + TS_FRAME_HEADER;
    *len = flen;
    r->off += TS_FRAME_HEADER + flen;
    return TS_OK;
}
