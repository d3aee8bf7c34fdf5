/* The message bus: wraps nats.c (core NATS and JetStream). The rest of
 * Tessera only sees these types.
 *
 * Every message Tessera publishes carries headers:
 *   Ts-Type   protobuf message name, e.g. "tessera.v1.InputBatch"
 *   Ts-Epoch  epoch of the cell the message is about (0 if none)
 *   Ts-Seq    publisher's sequence number
 *   Ts-Count  number of items batched in the message (inputs), if > 1
 *
 * Threading: the connection is thread-safe. Subscription callbacks run on
 * nats.c's shared delivery thread pool (a handful of threads for the whole
 * process, not one per subscription), never on the caller's thread; the message passed
 * to a callback is borrowed and freed when the callback returns. */
#ifndef TESSERA_BUS_H
#define TESSERA_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/status.h"

typedef struct ts_bus ts_bus_t;
typedef struct ts_bus_sub ts_bus_sub_t;
typedef struct ts_bus_msg ts_bus_msg_t;

#define TS_HDR_TYPE "Ts-Type"
#define TS_HDR_EPOCH "Ts-Epoch"
#define TS_HDR_SEQ "Ts-Seq"
#define TS_HDR_COUNT "Ts-Count"

/* What a publish puts in the headers. type must not be NULL. */
typedef struct {
    const char *type;
    uint64_t epoch;
    uint64_t seq;
    uint32_t count;     /* items in the message; 0 is treated as 1 */
    const char *msg_id; /* JetStream de-duplication id (Nats-Msg-Id); NULL: none */
} ts_bus_hdr_t;

/* Called for every message of a subscription (on a nats.c thread). */
typedef void (*ts_bus_msg_cb)(void *ud, const ts_bus_msg_t *msg);

/* Called once per asynchronous JetStream publish when it is finally
 * acknowledged (ok, stream_seq set) or given up after retries (!ok). seq and
 * count are the Ts-Seq and Ts-Count the publisher set, so it can find which
 * of its in-flight messages completed. Runs on a nats.c thread. */
typedef void (*ts_bus_ack_cb)(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok,
                              uint64_t stream_seq);

/* Asynchronous JetStream publishes in flight (published, outcome not yet
 * reported) per connection before ts_bus_js_publish_async says TS_ERR_BUSY. */
#define TS_BUS_MAX_IN_FLIGHT 16384

/* Credentials and TLS of a connection; every field may be NULL or "" (not
 * used). A user and password in the URL (nats://user:pass@host:port) work
 * too, and win over user/password here. */
typedef struct {
    const char *user;       /* with password */
    const char *password;   /* the secret itself (read from a file by the caller); without a user: a token */
    const char *creds_file; /* .creds file: user JWT and nkey seed */
    const char *tls_ca;     /* CA file verifying the server; set (or a tls:// URL): TLS required */
    const char *tls_cert;   /* client certificate file, with tls_key */
    const char *tls_key;
} ts_bus_auth_t;

/* Sets the credentials and TLS every later ts_bus_connect() uses (copied;
 * process-wide; NULL clears them). Call before connecting, not concurrently
 * with a connect. */
ts_status_t ts_bus_set_default_auth(const ts_bus_auth_t *auth);

/* Connects with unlimited reconnects, with the default credentials
 * (ts_bus_set_default_auth). name shows in the server's connz. A server
 * that refuses the credentials gives TS_ERR_UNAVAILABLE. With auth->user
 * set (not from the URL) the connection's reply subjects live under
 * "_INBOX.<user>." instead of "_INBOX.", so subject permissions can give
 * each user its own replies only. */
ts_status_t ts_bus_connect(ts_bus_t **out, const char *url, const char *name);
/* A URL as it may be logged: "scheme://user:password@host" becomes
 * "scheme://user:***@host" (any scheme; NATS and Redis URLs alike). */
void ts_bus_redact_url(char *buf, size_t cap, const char *url);
/* Same with explicit credentials and TLS (NULL: none, not the defaults). */
ts_status_t ts_bus_connect_auth(ts_bus_t **out, const char *url, const char *name, const ts_bus_auth_t *auth);
/* Drains nothing: waits up to 2 s for outstanding async publishes, then closes.
 * NULL is a no-op. */
void ts_bus_destroy(ts_bus_t *bus);

/* Creates (or updates) the world's JetStream streams:
 *   TS_INPUT_<world>  subjects cell.<world>.*.*.*.*.input.<origin>, limits retention, max_age
 *   TS_CKPT_<world>   subjects cell.<world>.*.*.*.*.checkpoint and .checkpoint.> (parts of
 *                     chunked checkpoints), 1 message per subject
 *   TS_MARKS_<world>  subjects tessera.worker.*.marks.<world>.* (workers' tick marks),
 *                     the last TS_BUS_MARKS_KEPT per subject, for TS_BUS_MARKS_MAX_AGE_S
 * storage is "file" or "memory". */
ts_status_t ts_bus_ensure_streams(ts_bus_t *bus, uint32_t world, const char *storage, int64_t max_age_s,
                                  int replicas);

/* The world's streams as ts_bus_streams_ensure creates them. */
typedef struct {
    const char *storage; /* "file" (NULL too) or "memory" */
    int64_t max_age_s;   /* input stream retention by age; 0: none */
    int64_t max_bytes;   /* input stream retention by size (oldest first); <= 0: none */
    int replicas;        /* < 1: 1 */
} ts_bus_streams_t;

/* Creates the world's input and checkpoint streams if missing, or updates
 * their limits (as ts_bus_ensure_streams, plus the input stream's byte
 * limit). Every service that publishes into or consumes from them calls it
 * when it starts and again whenever it finds them gone (a lost JetStream
 * store): nobody depends on the orchestrator having created them. A
 * request: not for a hot path. */
ts_status_t ts_bus_streams_ensure(ts_bus_t *bus, uint32_t world, const ts_bus_streams_t *opts);

/* What a stream is now. created_ns tells two streams of one name apart: a
 * stream created again after its store was lost has another creation time
 * and starts its sequences at 1 again. */
typedef struct {
    int64_t created_ns; /* creation time, ns since the Unix epoch */
    uint64_t first_seq; /* oldest message still stored */
    uint64_t last_seq;  /* newest message ever stored (0: none yet) */
    uint64_t msgs;
    uint64_t bytes;
} ts_bus_stream_state_t;
/* One request. TS_ERR_NOT_FOUND if the stream does not exist (or JetStream
 * has no such stream after a restart); TS_ERR_UNAVAILABLE and the like
 * when it could not be asked. */
ts_status_t ts_bus_stream_state(ts_bus_t *bus, const char *stream, ts_bus_stream_state_t *out);
/* The subjects of a stream that hold messages, matching filter (a subject
 * with wildcards), into *out (caller frees with ts_bus_free_subjects). One
 * request; TS_ERR_NOT_FOUND if the stream does not exist. */
ts_status_t ts_bus_stream_subjects(ts_bus_t *bus, const char *stream, const char *filter, char ***out,
                                   size_t *n);
void ts_bus_free_subjects(char **subjects, size_t n);

/* Core NATS publish (fire and forget). */
ts_status_t ts_bus_publish(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr, const void *data,
                           size_t len);
/* Core NATS publish with a reply subject. */
ts_status_t ts_bus_publish_reply(ts_bus_t *bus, const char *subject, const char *reply,
                                 const ts_bus_hdr_t *hdr, const void *data, size_t len);
/* Request-reply. On TS_OK *reply is a message the caller frees with ts_bus_msg_destroy. */
ts_status_t ts_bus_request(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr, const void *data,
                           size_t len, int64_t timeout_ms, ts_bus_msg_t **reply);
/* Replies to a received message (uses its reply subject). */
ts_status_t ts_bus_respond(ts_bus_t *bus, const ts_bus_msg_t *to, const ts_bus_hdr_t *hdr, const void *data,
                           size_t len);

/* JetStream publish, waiting for the acknowledgement; *stream_seq (may be
 * NULL) receives the stream sequence. */
ts_status_t ts_bus_js_publish(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr, const void *data,
                              size_t len, int64_t timeout_ms, uint64_t *stream_seq);
/* JetStream publish without waiting, ever. Failed publishes are retried
 * (same msg id, so the stream stores them once) up to 5 times before the ack
 * callback reports !ok; one that no server answered (no stream leader, e.g.
 * a cluster electing one after a node died) is first sent again every
 * 250 ms for up to 15 s, off the caller's thread. Without hdr->msg_id a unique id is generated. With
 * TS_BUS_MAX_IN_FLIGHT publishes outstanding it returns TS_ERR_BUSY at once
 * (nothing was sent; the caller keeps the data and tries again later). */
ts_status_t ts_bus_js_publish_async(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr,
                                    const void *data, size_t len);
/* Sets the callback for async publish outcomes (set before publishing). */
void ts_bus_set_ack_handler(ts_bus_t *bus, ts_bus_ack_cb cb, void *ud);
/* Waits until every async publish so far is acknowledged (or failed). */
ts_status_t ts_bus_js_flush(ts_bus_t *bus, int64_t timeout_ms);
/* Round trip to the server: everything published before is processed. */
ts_status_t ts_bus_flush(ts_bus_t *bus, int64_t timeout_ms);

/* Core subscription. */
ts_status_t ts_bus_subscribe(ts_bus_t *bus, const char *subject, ts_bus_msg_cb cb, void *ud,
                             ts_bus_sub_t **out);
/* Ordered JetStream consumer of one subject, starting at stream sequence
 * start_seq (0: from the first message still in the stream). Messages arrive
 * in stream order, without gaps, exactly once per consumer; the consumer is
 * ephemeral (no acks). ts_bus_msg_stream_seq() gives each one's sequence.
 *
 * A consumer reads one instance of its stream: the one there when it was
 * created (ts_bus_sub_stream_id). A stream created again after JetStream
 * lost its store is another instance, with sequences from 1 again. After a
 * reconnect the consumer checks its instance before it delivers again (one
 * request, on the delivery thread); if the stream is another instance now,
 * or if it cannot tell, it stops: it delivers nothing more and
 * ts_bus_sub_stopped() says so. So a message delivered always belongs to the
 * consumer's instance; the owner of a stopped consumer consumes again from
 * its own position with ts_bus_consume_at. A request or two: not for a hot
 * path. TS_ERR_NOT_FOUND if the stream does not exist. */
ts_status_t ts_bus_consume(ts_bus_t *bus, uint32_t world, const char *subject, uint64_t start_seq,
                           ts_bus_msg_cb cb, void *ud, ts_bus_sub_t **out);
/* ts_bus_consume, from start_seq of the stream instance stream_id (a
 * ts_bus_stream_state_t created_ns; 0: whichever instance is there). If the
 * stream is another instance now it consumes nothing and returns
 * TS_ERR_STALE: start_seq is a position in a stream that is gone. */
ts_status_t ts_bus_consume_at(ts_bus_t *bus, uint32_t world, const char *subject, int64_t stream_id,
                              uint64_t start_seq, ts_bus_msg_cb cb, void *ud, ts_bus_sub_t **out);
/* The world's input stream's instance (created_ns) and a last sequence it
 * had no later than now: read at most a second ago (one request about once
 * a second per connection, shared with the consumers created meanwhile).
 * Whatever is published after this call has a higher sequence, so a
 * consumer that knows its subject has nothing at or below it (and nothing
 * it has not applied) can start after it, and nats-server does not scan
 * the stream from an old position for a wildcard filter. */
ts_status_t ts_bus_input_floor(ts_bus_t *bus, uint32_t world, int64_t *stream_id, uint64_t *last_seq);
/* The instance of its stream a JetStream consumer reads (created_ns); 0 for
 * core subscriptions and NULL. */
int64_t ts_bus_sub_stream_id(const ts_bus_sub_t *sub);
/* Whether a JetStream consumer stopped because its stream is (or may be)
 * another instance now (see ts_bus_consume). No round trip; any thread. */
bool ts_bus_sub_stopped(ts_bus_sub_t *sub);
/* Unsubscribes and frees; waits until no callback of this subscription is
 * running. NULL is a no-op. */
void ts_bus_sub_destroy(ts_bus_sub_t *sub);

/* Unsubscribes without waiting (safe on an event loop or a tick thread): no
 * callback starts after it returns, though one already running on another
 * thread may finish; the wrapper frees itself once nats.c has closed the
 * subscription. NULL is a no-op. */
void ts_bus_sub_close(ts_bus_sub_t *sub);
/* Where a JetStream consumer (ts_bus_consume) stands, as the server counts
 * it now: messages it has still to deliver, and the stream sequence of the
 * last one it delivered (which may still be on its way to us). A request:
 * not for a hot path. */
ts_status_t ts_bus_consumer_pending(ts_bus_sub_t *sub, uint64_t *pending, uint64_t *delivered_seq);
/* Async publishes in flight on this connection (see TS_BUS_MAX_IN_FLIGHT). */
uint64_t ts_bus_in_flight(const ts_bus_t *bus);

/* Latest message on a JetStream subject (e.g. a checkpoint). TS_ERR_NOT_FOUND
 * if none. On TS_OK the caller frees *out with ts_bus_msg_destroy. */
ts_status_t ts_bus_last_msg(ts_bus_t *bus, const char *stream, const char *subject, ts_bus_msg_t **out);
/* Name of the input / checkpoint / tick mark stream of a world, into buf. */
void ts_bus_input_stream(char *buf, size_t cap, uint32_t world);
void ts_bus_ckpt_stream(char *buf, size_t cap, uint32_t world);
void ts_bus_marks_stream(char *buf, size_t cap, uint32_t world);
/* The subject of a worker instance's tick marks:
 * tessera.worker.<worker>.marks.<world>.<instance>. */
void ts_bus_marks_subject(char *buf, size_t cap, const char *worker, uint32_t world, const char *instance);
/* Tick marks kept per worker instance (a checkpoint older than that many
 * ticks is replayed without marks), and for how long at most. */
#define TS_BUS_MARKS_KEPT 4096
#define TS_BUS_MARKS_MAX_AGE_S 600

/* Message accessors (borrowed pointers, valid while the message lives). */
const char *ts_bus_msg_subject(const ts_bus_msg_t *m);
const char *ts_bus_msg_reply(const ts_bus_msg_t *m);
const uint8_t *ts_bus_msg_data(const ts_bus_msg_t *m);
size_t ts_bus_msg_len(const ts_bus_msg_t *m);
/* Header value or NULL. */
const char *ts_bus_msg_header(const ts_bus_msg_t *m, const char *name);
/* Header parsed as an unsigned number, or 0. */
uint64_t ts_bus_msg_header_u64(const ts_bus_msg_t *m, const char *name);
/* JetStream stream sequence, or 0 for core messages. */
uint64_t ts_bus_msg_stream_seq(const ts_bus_msg_t *m);
/* JetStream (a consumer's delivery): when the server stored the message, in
 * ns since the Unix epoch by the server's clock; 0 for core messages. */
uint64_t ts_bus_msg_time_ns(const ts_bus_msg_t *m);
void ts_bus_msg_destroy(ts_bus_msg_t *m);

/* A message kept beyond its callback without a copy or an allocation: inside
 * a subscription callback, ts_bus_msg_hold() takes the message over (the
 * bus then does not free it when the callback returns). Free it with
 * ts_bus_held_free(); a zero ts_bus_held_t is empty. */
typedef struct {
    void *impl;
    uint64_t stream_seq;
    uint64_t pending; /* JetStream: messages the consumer still had after it */
    uint64_t time_ns; /* JetStream: its store time (ts_bus_msg_time_ns) */
} ts_bus_held_t;
ts_bus_held_t ts_bus_msg_hold(const ts_bus_msg_t *m);
/* A held copy of m (its subject, data and stream position; no headers) for
 * a second keeper, leaving m as it is. An allocation: not for every message.
 * A zero ts_bus_held_t if out of memory. */
ts_bus_held_t ts_bus_msg_copy(const ts_bus_msg_t *m);
const uint8_t *ts_bus_held_data(ts_bus_held_t h);
size_t ts_bus_held_len(ts_bus_held_t h);
/* The subject it was published to (borrowed, lives as long as h). */
const char *ts_bus_held_subject(ts_bus_held_t h);
void ts_bus_held_free(ts_bus_held_t h);

/* Totals since connect. */
uint64_t ts_bus_bytes_out(const ts_bus_t *bus);
/* The largest message payload the connected server accepts (its
 * max_payload, 1 MB unless configured otherwise), in bytes; 0 if unknown
 * (NULL, or not connected yet). Cheap: no round trip. */
size_t ts_bus_max_payload(ts_bus_t *bus);
/* Counts the disconnects of every connection of this process: a change means
 * the server may be another one now (e.g. one that lost its store). No
 * round trip; any thread. */
uint64_t ts_bus_conn_gen(void);
/* Whether the connection to the server is up now (no round trip; any thread). */
bool ts_bus_connected(ts_bus_t *bus);
/* Closes the connection now (no flush): later calls on it fail at once
 * instead of waiting for a server that is gone. ts_bus_destroy still frees it. */
void ts_bus_close(ts_bus_t *bus);

/* Releases nats.c's process-wide state (threads, timers, caches) so leak
 * checkers stay quiet. Call once at the very end of main, after every bus and
 * subscription is destroyed and never from a bus callback. */
void ts_bus_shutdown_library(void);

#endif
