/* Plain nats.c JetStream for the bench (see rawjs.h). The async publisher
 * counts acknowledgements in its ack handler, on nats.c's thread. */
#include "rawjs.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "tessera/bus.h"
#include "tessera/util.h"

struct ts_rawjs {
    natsConnection *nc;
    jsCtx *js;
    atomic_uint_fast64_t acked, failed;
    atomic_uint_fast64_t last_ack_us;
};

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    ts_rawjs_t *r = closure;
    if (pa != NULL && pae == NULL)
        atomic_fetch_add(&r->acked, 1);
    else
        atomic_fetch_add(&r->failed, 1);
    atomic_store(&r->last_ack_us, ts_mono_us());
    natsMsg_Destroy(msg);
}

ts_status_t ts_rawjs_connect(ts_rawjs_t **out, const char *url)
{
    ts_rawjs_t *r = calloc(1, sizeof *r);
    if (r == NULL) return TS_ERR_NOMEM;
    natsStatus s = natsConnection_ConnectTo(&r->nc, url);
    jsOptions jo;
    if (s == NATS_OK) s = jsOptions_Init(&jo);
    if (s == NATS_OK) {
        jo.PublishAsync.AckHandler = on_ack;
        jo.PublishAsync.AckHandlerClosure = r;
        s = natsConnection_JetStream(&r->js, r->nc, &jo);
    }
    if (s != NATS_OK) {
        fprintf(stderr, "rawjs: cannot connect to %s: %s\n", url, natsStatus_GetText(s));
        ts_rawjs_destroy(r);
        return TS_ERR_UNAVAILABLE;
    }
    *out = r;
    return TS_OK;
}

void ts_rawjs_destroy(ts_rawjs_t *r)
{
    if (r == NULL) return;
    jsCtx_Destroy(r->js);
    natsConnection_Destroy(r->nc);
    free(r);
}

ts_status_t ts_rawjs_stream_state(ts_rawjs_t *r, const char *stream, ts_rawjs_state_t *out)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, r->js, stream, NULL, &jerr);
    if (s != NATS_OK || si == NULL) return TS_ERR_UNAVAILABLE;
    *out = (ts_rawjs_state_t){.msgs = si->State.Msgs,
                              .bytes = si->State.Bytes,
                              .first_seq = si->State.FirstSeq,
                              .last_seq = si->State.LastSeq};
    jsStreamInfo_Destroy(si);
    return TS_OK;
}

static uint64_t header_u64(natsMsg *m, const char *name)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL) return 0;
    return strtoull(v, NULL, 10);
}

typedef struct {
    size_t len;
    uint64_t seq;
} sized_t;

ts_status_t ts_rawjs_sample(ts_rawjs_t *r, const char *stream, uint64_t first_seq, uint64_t last_seq,
                            size_t want, const char *type, ts_rawjs_sample_t *out)
{
    memset(out, 0, sizeof *out);
    if (last_seq < first_seq || want == 0) return TS_ERR_NOT_FOUND;
    sized_t *seen = calloc(want, sizeof *seen);
    if (seen == NULL) return TS_ERR_NOMEM;
    uint64_t span = last_seq - first_seq + 1, counts = 0;
    size_t n = 0;
    for (size_t i = 0; i < want && i < span; i++) {
        uint64_t seq = first_seq + (span <= want ? i : (uint64_t)((double)i * (double)span / (double)want));
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        if (js_GetMsg(&m, r->js, stream, seq, NULL, &jerr) != NATS_OK || m == NULL) continue;
        out->read++;
        const char *t = NULL;
        if (natsMsgHeader_Get(m, TS_HDR_TYPE, &t) == NATS_OK && t != NULL && strcmp(t, type) == 0) {
            uint64_t c = header_u64(m, TS_HDR_COUNT);
            counts += c > 0 ? c : 1;
            seen[n++] = (sized_t){(size_t)natsMsg_GetDataLength(m), seq};
        }
        natsMsg_Destroy(m);
    }
    out->sampled = n;
    if (n == 0) {
        free(seen);
        return TS_ERR_NOT_FOUND;
    }
    out->mean_count = (double)counts / (double)n;
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += (double)seen[i].len;
    out->mean_len = total / (double)n;
    size_t pick = 0;
    for (size_t i = 1; i < n; i++)
        if (fabs((double)seen[i].len - out->mean_len) < fabs((double)seen[pick].len - out->mean_len))
            pick = i;
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    ts_status_t st = TS_ERR_UNAVAILABLE;
    if (js_GetMsg(&m, r->js, stream, seen[pick].seq, NULL, &jerr) == NATS_OK && m != NULL) {
        out->payload_len = (size_t)natsMsg_GetDataLength(m);
        out->payload = malloc(out->payload_len + 1);
        if (out->payload != NULL) {
            memcpy(out->payload, natsMsg_GetData(m), out->payload_len);
            ts_strlcpy(out->type, type, sizeof out->type);
            out->epoch = header_u64(m, TS_HDR_EPOCH);
            out->seq = header_u64(m, TS_HDR_SEQ);
            out->count = (uint32_t)header_u64(m, TS_HDR_COUNT);
            st = TS_OK;
        }
        natsMsg_Destroy(m);
    }
    free(seen);
    return st;
}

void ts_rawjs_sample_free(ts_rawjs_sample_t *s)
{
    if (s == NULL) return;
    free(s->payload);
    s->payload = NULL;
}

/* One message of the shape; NULL on failure. */
static natsMsg *make_msg(const char *subject, const ts_rawjs_sample_t *shape, uint64_t i, uint64_t run)
{
    natsMsg *m = NULL;
    if (natsMsg_Create(&m, subject, NULL, (const char *)shape->payload, (int)shape->payload_len) != NATS_OK)
        return NULL;
    char epoch[24], seq[24], count[16], id[48];
    snprintf(epoch, sizeof epoch, "%" PRIu64, shape->epoch);
    snprintf(seq, sizeof seq, "%" PRIu64, shape->seq + i);
    snprintf(count, sizeof count, "%" PRIu32, shape->count > 0 ? shape->count : 1);
    snprintf(id, sizeof id, "raw-%" PRIx64 "-%" PRIu64, run, i);
    natsStatus s = natsMsgHeader_Set(m, TS_HDR_TYPE, shape->type);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, TS_HDR_EPOCH, epoch);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, TS_HDR_SEQ, seq);
    if (s == NATS_OK && shape->count > 1) s = natsMsgHeader_Set(m, TS_HDR_COUNT, count);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return NULL;
    }
    return m;
}

ts_status_t ts_rawjs_publish(ts_rawjs_t *r, const char *subject, const ts_rawjs_sample_t *shape,
                             double seconds, int max_pending, ts_rawjs_result_t *out)
{
    memset(out, 0, sizeof *out);
    if (shape->payload == NULL) return TS_ERR_INVALID;
    atomic_store(&r->acked, 0);
    atomic_store(&r->failed, 0);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    uint64_t run = ts_mono_us();
    uint64_t t0 = ts_mono_us(), end = t0 + (uint64_t)(seconds * 1e6);
    for (uint64_t i = 0; ts_mono_us() < end; i++) {
        /* keep at most max_pending outstanding without relying on nats.c's stall */
        while ((int64_t)(out->published - atomic_load(&r->acked) - atomic_load(&r->failed)) >= max_pending &&
               ts_mono_us() < end) {
            out->stalled++;
            ts_sleep_ms(1);
        }
        natsMsg *m = make_msg(subject, shape, i, run);
        if (m == NULL) return TS_ERR_NOMEM;
        if (js_PublishMsgAsync(r->js, &m, &po) == NATS_OK)
            out->published++;
        else
            out->stalled++;
        natsMsg_Destroy(m); /* NULL after a successful publish: the library owns it */
    }
    jsPubOptions done;
    jsPubOptions_Init(&done);
    done.MaxWait = 10000;
    js_PublishAsyncComplete(r->js, &done);
    out->acked = atomic_load(&r->acked);
    out->failed = atomic_load(&r->failed);
    uint64_t last = atomic_load(&r->last_ack_us);
    out->seconds = last > t0 ? (double)(last - t0) / 1e6 : 0;
    out->msgs_per_s = out->seconds > 0 ? (double)out->acked / out->seconds : 0;
    return TS_OK;
}
