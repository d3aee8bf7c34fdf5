/* Raw nats.c JetStream, beside Tessera's bus: what the server's input stream
 * holds (message count, bytes, sequences), what Tessera's input messages look
 * like (payload size and headers of a sample), and how fast plain nats.c
 * async publishes of that same message go (the yardstick Tessera's input path
 * is compared against). One connection of its own, default nats.c options. */
#ifndef TS_RAWJS_H
#define TS_RAWJS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

typedef struct ts_rawjs ts_rawjs_t;

typedef struct {
    uint64_t msgs, bytes, first_seq, last_seq;
} ts_rawjs_state_t;

/* A message shape taken from a stream: among the sampled messages of one
 * Ts-Type, the one whose payload is closest to their mean size, with its
 * headers. */
typedef struct {
    size_t sampled;     /* messages of the wanted type among those read */
    size_t read;        /* messages read */
    double mean_count;  /* mean Ts-Count (items per message) of the sampled ones */
    double mean_len;    /* mean payload of the sampled ones */
    size_t payload_len; /* the chosen message's payload */
    uint8_t *payload;   /* that message's payload (owned, free with ts_rawjs_sample_free) */
    char type[64];
    uint64_t epoch, seq;
    uint32_t count;
} ts_rawjs_sample_t;

typedef struct {
    uint64_t published, acked, failed, stalled;
    double seconds;    /* first publish to last ack */
    double msgs_per_s; /* acked / seconds */
} ts_rawjs_result_t;

ts_status_t ts_rawjs_connect(ts_rawjs_t **out, const char *url);
void ts_rawjs_destroy(ts_rawjs_t *r);

ts_status_t ts_rawjs_stream_state(ts_rawjs_t *r, const char *stream, ts_rawjs_state_t *out);
/* Reads up to want messages spread evenly over stream sequences
 * [first_seq, last_seq] and keeps those whose Ts-Type is type. */
ts_status_t ts_rawjs_sample(ts_rawjs_t *r, const char *stream, uint64_t first_seq, uint64_t last_seq,
                            size_t want, const char *type, ts_rawjs_sample_t *out);
void ts_rawjs_sample_free(ts_rawjs_sample_t *s);
/* Publishes copies of shape (payload, Ts-Type/Ts-Epoch/Ts-Seq/Ts-Count, a
 * unique Nats-Msg-Id each) to subject with js_PublishMsgAsync for `seconds`,
 * max_pending in flight, then waits (at most 10 s) for the outstanding acks. */
ts_status_t ts_rawjs_publish(ts_rawjs_t *r, const char *subject, const ts_rawjs_sample_t *shape,
                             double seconds, int max_pending, ts_rawjs_result_t *out);

#endif
