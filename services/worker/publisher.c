/* The publisher thread: the only worker thread that writes the tick's
 * messages to the NATS connection.
 *
 * nats.c writes a publish to the socket on the caller's thread (or holds the
 * connection lock while its flusher does), so a stalled nats-server whose
 * socket buffers are full would stop whoever publishes. The tick thread
 * therefore only queues what it publishes — state, transfers, departures,
 * checkpoints, heartbeats — in a bounded lock-free ring and wakes this
 * thread once per tick; this thread makes the calls.
 *
 * When the ring is full: state and heartbeats are dropped and counted (the
 * next delta or keyframe replaces them); a tracked JetStream publish is not
 * queued and its flight slot is freed, so the tick sends it again next tick;
 * a checkpoint waits for the next period. A tracked publish that the bus
 * refuses is marked failed in its flight slot, which the tick reads like a
 * failed acknowledgement. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tessera/log.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define PUB_WAIT_MS 20

typedef struct {
    char subject[TS_SUBJECT_MAX + 48];
    char msg_id[192];
    const char *type; /* static string */
    uint64_t epoch, seq;
    uint32_t count;
    bool has_msg_id;
    bool js;
    bool tracked;
    bool reap; /* buf is an array of len held bus messages to free */
    uint8_t *buf;
    size_t len;
} pub_t;

static void reap(pub_t *p)
{
    ts_bus_held_t *v = (ts_bus_held_t *)(void *)p->buf;
    for (size_t i = 0; i < p->len; i++)
        ts_bus_held_free(v[i]);
    free(p->buf);
}

static void publish(ts_worker_t *w, pub_t *p)
{
    if (p->reap) {
        reap(p);
        return;
    }
    ts_bus_hdr_t hdr = {.type = p->type,
                        .epoch = p->epoch,
                        .seq = p->seq,
                        .count = p->count,
                        .msg_id = p->has_msg_id ? p->msg_id : NULL};
    const ts_bus_hdr_t *h = p->type ? &hdr : NULL; /* no type: a plain message without headers */
    ts_status_t st = p->js ? ts_bus_js_publish_async(w->bus, p->subject, h, p->buf, p->len)
                           : ts_bus_publish(w->bus, p->subject, h, p->buf, p->len);
    if (st != TS_OK) {
        atomic_fetch_add(&w->pub_errors, 1);
        /* the zones cut every message well below NATS's max_payload: one
         * this large was refused for its size, and will be every time */
        if (p->len > TS_ZONE_MAX_PAYLOAD_DEFAULT - 1024 && st != TS_ERR_BUSY)
            ts_error("publish to %s of %zu bytes refused (%s): too large for a NATS message", p->subject,
                     p->len, ts_status_str(st));
        if (p->tracked) {
            /* the tick reads this like a failed acknowledgement and sends it again */
            ts_flight_t *f = &w->flights[p->seq % TS_FLIGHT_SLOTS];
            if (atomic_load(&f->seq) == p->seq) atomic_store(&f->state, TS_FLIGHT_FAILED);
        } else if (st != TS_ERR_BUSY) {
            ts_debug("publish to %s failed: %s", p->subject, ts_status_str(st));
        }
    }
    free(p->buf);
}

static void *pub_main(void *arg)
{
    ts_worker_t *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->pub_mu);
        if (!w->pub_kicked && !w->pub_stop) {
            struct timespec until;
            ts_mono_deadline(&until, PUB_WAIT_MS * 1000000ULL);
            pthread_cond_timedwait(&w->pub_cond, &w->pub_mu, &until);
        }
        w->pub_kicked = false;
        bool stop = w->pub_stop;
        pthread_mutex_unlock(&w->pub_mu);
        pub_t p;
        while (ts_ring_pop(w->pub_ring, &p))
            publish(w, &p);
        if (stop) break; /* the ring was drained after the stop was asked */
    }
    return NULL;
}

ts_status_t ts_publisher_start(ts_worker_t *w)
{
    ts_status_t st = ts_ring_create(&w->pub_ring, TS_PUB_RING, sizeof(pub_t));
    if (st != TS_OK) return st;
    pthread_mutex_init(&w->pub_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->pub_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->pub_thread, NULL, pub_main, w) != 0) {
        pthread_cond_destroy(&w->pub_cond);
        pthread_mutex_destroy(&w->pub_mu);
        ts_ring_destroy(w->pub_ring);
        w->pub_ring = NULL;
        return TS_ERR_NOMEM;
    }
    w->pub_started = true;
    return TS_OK;
}

void ts_publisher_stop(ts_worker_t *w)
{
    if (w->pub_started) {
        pthread_mutex_lock(&w->pub_mu);
        w->pub_stop = true;
        pthread_cond_signal(&w->pub_cond);
        pthread_mutex_unlock(&w->pub_mu);
        pthread_join(w->pub_thread, NULL);
        w->pub_started = false;
        pthread_cond_destroy(&w->pub_cond);
        pthread_mutex_destroy(&w->pub_mu);
    }
    if (w->pub_ring) {
        pub_t p;
        while (ts_ring_pop(w->pub_ring, &p))
            if (p.reap)
                reap(&p);
            else
                free(p.buf);
        ts_ring_destroy(w->pub_ring);
        w->pub_ring = NULL;
    }
}

void ts_publisher_kick(ts_worker_t *w)
{
    if (!w->pub_started) return;
    pthread_mutex_lock(&w->pub_mu);
    w->pub_kicked = true;
    pthread_cond_signal(&w->pub_cond);
    pthread_mutex_unlock(&w->pub_mu);
}

bool ts_publisher_push(ts_worker_t *w, const char *subject, const ts_bus_hdr_t *hdr, uint8_t *buf, size_t len,
                       bool js, bool tracked)
{
    static const ts_bus_hdr_t none = {0};
    if (hdr == NULL) hdr = &none;
    pub_t p = {.type = hdr->type,
               .epoch = hdr->epoch,
               .seq = hdr->seq,
               .count = hdr->count,
               .has_msg_id = hdr->msg_id != NULL,
               .js = js,
               .tracked = tracked,
               .buf = buf,
               .len = len};
    bool ok = w->pub_ring && ts_strlcpy(p.subject, subject, sizeof(p.subject)) < sizeof(p.subject) &&
              (!hdr->msg_id || ts_strlcpy(p.msg_id, hdr->msg_id, sizeof(p.msg_id)) < sizeof(p.msg_id)) &&
              ts_ring_push(w->pub_ring, &p);
    if (!ok) free(buf);
    return ok;
}

bool ts_publisher_reap(ts_worker_t *w, ts_bus_held_t *msgs, size_t n)
{
    pub_t p = {.reap = true, .buf = (uint8_t *)(void *)msgs, .len = n};
    return w->pub_ring && w->pub_started && ts_ring_push(w->pub_ring, &p);
}
