/* The message bus over nats.c: core publish/subscribe, request-reply and
 * JetStream (streams, synchronous and asynchronous publishes, ordered
 * consumers, last-message lookups). Nothing outside this file sees a nats.c
 * type or status.
 *
 * Invariants:
 *  - No subscription callback runs after ts_bus_sub_destroy() returns: the
 *    wrapper is freed only once nats.c reports (on-complete callback) that
 *    the subscription is closed and its handler has returned.
 *  - No async-publish ack callback touches a destroyed bus: nats.c gets the
 *    bus's numeric id, not its address, and the handler looks the id up in
 *    a table of live buses; ts_bus_destroy() removes the bus and waits for
 *    handlers that are already running.
 *  - A failed async publish is re-published with its original Nats-Msg-Id
 *    (one is generated when the caller gave none, so JetStream de-duplicates
 *    it) at most TS_BUS_PUB_TRIES times in all; the
 *    user's ack callback fires exactly once per ts_bus_js_publish_async(). */
#include "tessera/bus.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tessera/log.h"
#include "tessera/util.h"

#define TS_BUS_PUB_TRIES 5
#define HDR_TRY "Ts-Try"
#define HDR_MSG_ID "Nats-Msg-Id"
#define ASYNC_ACK_WAIT_MS 5000
/* nats.c's own bound stays above ours, so its stall wait never runs */
#define ASYNC_MAX_PENDING (TS_BUS_MAX_IN_FLIGHT * 2)
#define ASYNC_STALL_WAIT_MS 1
/* threads of nats.c's shared message-delivery pool (whole process) */
#define DELIVERY_POOL_THREADS 2
#define DESTROY_FLUSH_MS 2000
#define SUB_CLOSE_WAIT_MS 5000
#define SUB_PENDING_MSGS (1 << 20)
#define SUB_PENDING_BYTES (256 * 1024 * 1024)
#define DUPLICATE_WINDOW_NS (120LL * 1000000000LL)
#define TS_BUS_MAX_SERVERS 16 /* URLs in a nats.url list */
/* An async publish that no server answered (no stream leader, e.g. during a
 * cluster's leader election after a node died) is sent again every
 * NR_RETRY_MS for up to NR_RETRY_MAX_MS before it counts as a failed try. */
#define NR_RETRY_MS 250
#define NR_RETRY_MAX_MS 15000
#define HDR_WAITS "Ts-Waits"

struct ts_bus {
    natsConnection *nc;
    jsCtx *js;
    uint64_t id;
    _Atomic uint64_t bytes_out;
    char msg_id_prefix[24];       /* unique per connection */
    _Atomic uint64_t next_msg_id; /* ids for async publishes without one */
    _Atomic uint64_t in_flight;   /* async publishes without a final outcome */
    ts_bus_ack_cb ack_cb;
    void *ack_ud;
    /* publishes waiting to be sent again (no responders), oldest first; the
     * retry thread runs once the first one waits. Counted in in_flight, so
     * bounded by TS_BUS_MAX_IN_FLIGHT. */
    pthread_mutex_t retry_mu;
    pthread_cond_t retry_cv;
    struct retry_item *retry_head, *retry_tail;
    size_t retry_n;
    bool retry_started, retry_stop;
    pthread_t retry_thread;
    /* guarded by live_mu */
    int ack_running;
    struct ts_bus *next_live;
    /* the instance (creation time) of the stream consumers were last created
     * on, read at connection generation ss_gen and ts_mono_us ss_at_us: a
     * burst of consumers (a worker binding a thousand cells) asks for the
     * stream's info about once a second, not once per consumer */
    pthread_mutex_t ss_mu;
    char ss_stream[64];
    int64_t ss_created_ns;
    uint64_t ss_last_seq; /* the stream's last sequence when it was read */
    uint64_t ss_gen, ss_at_us;
};

struct ts_bus_sub {
    natsSubscription *nsub;
    ts_bus_msg_cb cb;
    void *ud;
    bool jetstream;
    atomic_bool closing;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool completed;        /* nats.c will not call on_msg again */
    bool free_on_complete; /* destroyed from its own callback */
    /* JetStream consumers: the instance of the stream they read (its
     * creation time, known when they were created); after a reconnect the
     * first message checks that it is still that instance (see on_msg) */
    ts_bus_t *bus;
    char stream[64];
    int64_t stream_created_ns;
    uint64_t verified_gen; /* conn_gen the stream was last checked at (delivery thread) */
    atomic_bool stopped;   /* another instance, or it could not tell: delivers nothing more */
};

/* Bumped by every disconnect of any connection of the process: a consumer
 * whose verified_gen is older checks its stream before delivering. */
static _Atomic uint64_t conn_gen = 1;

/* Subscriptions of the process whose completion callback has not run yet.
 * nats.c's delivery pool runs a subscription's completion after every
 * message queued for it before it was closed, so when this is 0 the pool
 * holds no message any more: ts_bus_shutdown_library waits for that, since
 * messages still queued when the library shuts the pool down are never
 * freed. */
static pthread_mutex_t subs_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t subs_cv = PTHREAD_COND_INITIALIZER;
static size_t subs_open;

struct ts_bus_msg {
    natsMsg *msg;
    uint64_t stream_seq;
    uint64_t pending;
    uint64_t time_ns; /* JetStream: when the server stored it (its clock) */
};

static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_cv = PTHREAD_COND_INITIALIZER;
static ts_bus_t *live_head;
static uint64_t live_next_id = 1;

static _Thread_local ts_bus_sub_t *tls_delivering;

/* ---- status mapping ---------------------------------------------------- */

static ts_status_t map_status(natsStatus s, jsErrCode jerr)
{
    if (s == NATS_OK) return TS_OK;
    if (s == NATS_TIMEOUT) return TS_ERR_TIMEOUT;
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr || jerr == JSStreamNotFoundErr)
        return TS_ERR_NOT_FOUND;
    if (s == NATS_NO_RESPONDERS) return TS_ERR_UNAVAILABLE;
    if (s == NATS_NO_MEMORY) return TS_ERR_NOMEM;
    if (s == NATS_INVALID_ARG || s == NATS_INVALID_SUBJECT) return TS_ERR_INVALID;
    return TS_ERR_BUS;
}

/* Logs the failure with nats.c's own error text and returns the mapped status. */
static ts_status_t fail(const char *what, const char *subject, natsStatus s, jsErrCode jerr)
{
    ts_status_t st = map_status(s, jerr);
    const char *detail = nats_GetLastError(NULL);
    if (detail == NULL || detail[0] == '\0') detail = natsStatus_GetText(s);
    if (st == TS_ERR_NOT_FOUND)
        ts_debug("bus: %s %s: %s", what, subject ? subject : "", detail);
    else
        ts_warn("bus: %s %s failed: %s (js error %d)", what, subject ? subject : "", detail, (int)jerr);
    return st;
}

/* ---- messages ---------------------------------------------------------- */

static natsStatus set_u64(natsMsg *m, const char *key, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return natsMsgHeader_Set(m, key, buf);
}

/* Builds a message with the Tessera headers; hdr may be NULL (no headers). */
static ts_status_t make_msg(natsMsg **out, const char *subject, const char *reply, const ts_bus_hdr_t *hdr,
                            const void *data, size_t len)
{
    *out = NULL;
    if (subject == NULL || subject[0] == '\0' || (data == NULL && len > 0) || len > INT32_MAX)
        return TS_ERR_INVALID;
    if (hdr != NULL && hdr->type == NULL) return TS_ERR_INVALID;
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, subject, reply, (const char *)data, (int)len);
    if (s == NATS_OK && hdr != NULL) {
        s = natsMsgHeader_Set(m, TS_HDR_TYPE, hdr->type);
        if (s == NATS_OK) s = set_u64(m, TS_HDR_EPOCH, hdr->epoch);
        if (s == NATS_OK) s = set_u64(m, TS_HDR_SEQ, hdr->seq);
        if (s == NATS_OK) s = set_u64(m, TS_HDR_COUNT, hdr->count ? hdr->count : 1);
        if (s == NATS_OK && hdr->msg_id != NULL) s = natsMsgHeader_Set(m, HDR_MSG_ID, hdr->msg_id);
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return fail("create message", subject, s, 0);
    }
    *out = m;
    return TS_OK;
}

static uint64_t header_u64(natsMsg *m, const char *key, uint64_t dflt)
{
    const char *v = NULL;
    uint64_t n = 0;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || v == NULL || ts_parse_u64(v, &n) != TS_OK) return dflt;
    return n;
}

static ts_status_t wrap_msg(natsMsg *m, uint64_t stream_seq, ts_bus_msg_t **out)
{
    ts_bus_msg_t *w = malloc(sizeof *w);
    if (w == NULL) {
        natsMsg_Destroy(m);
        return TS_ERR_NOMEM;
    }
    w->msg = m;
    w->stream_seq = stream_seq;
    w->pending = 0;
    w->time_ns = 0;
    *out = w;
    return TS_OK;
}

const char *ts_bus_msg_subject(const ts_bus_msg_t *m)
{
    return natsMsg_GetSubject(m->msg);
}

const char *ts_bus_msg_reply(const ts_bus_msg_t *m)
{
    return natsMsg_GetReply(m->msg);
}

const uint8_t *ts_bus_msg_data(const ts_bus_msg_t *m)
{
    return (const uint8_t *)natsMsg_GetData(m->msg);
}

size_t ts_bus_msg_len(const ts_bus_msg_t *m)
{
    int n = natsMsg_GetDataLength(m->msg);
    return n > 0 ? (size_t)n : 0;
}

const char *ts_bus_msg_header(const ts_bus_msg_t *m, const char *name)
{
    const char *v = NULL;
    if (name == NULL || natsMsgHeader_Get(m->msg, name, &v) != NATS_OK) return NULL;
    return v;
}

uint64_t ts_bus_msg_header_u64(const ts_bus_msg_t *m, const char *name)
{
    if (name == NULL) return 0;
    return header_u64(m->msg, name, 0);
}

uint64_t ts_bus_msg_stream_seq(const ts_bus_msg_t *m)
{
    return m->stream_seq;
}

uint64_t ts_bus_msg_time_ns(const ts_bus_msg_t *m)
{
    return m->time_ns;
}

ts_bus_held_t ts_bus_msg_hold(const ts_bus_msg_t *m)
{
    ts_bus_msg_t *mm = (ts_bus_msg_t *)m;
    ts_bus_held_t h = {
        .impl = mm->msg, .stream_seq = mm->stream_seq, .pending = mm->pending, .time_ns = mm->time_ns};
    mm->msg = NULL; /* on_msg no longer frees it */
    return h;
}

ts_bus_held_t ts_bus_msg_copy(const ts_bus_msg_t *m)
{
    natsMsg *nm = NULL;
    if (m == NULL || m->msg == NULL ||
        natsMsg_Create(&nm, natsMsg_GetSubject(m->msg), NULL, natsMsg_GetData(m->msg),
                       natsMsg_GetDataLength(m->msg)) != NATS_OK)
        return (ts_bus_held_t){0};
    return (ts_bus_held_t){
        .impl = nm, .stream_seq = m->stream_seq, .pending = m->pending, .time_ns = m->time_ns};
}

const uint8_t *ts_bus_held_data(ts_bus_held_t h)
{
    return h.impl ? (const uint8_t *)natsMsg_GetData(h.impl) : NULL;
}

const char *ts_bus_held_subject(ts_bus_held_t h)
{
    return h.impl ? natsMsg_GetSubject(h.impl) : NULL;
}

size_t ts_bus_held_len(ts_bus_held_t h)
{
    int n = h.impl ? natsMsg_GetDataLength(h.impl) : 0;
    return n > 0 ? (size_t)n : 0;
}

void ts_bus_held_free(ts_bus_held_t h)
{
    natsMsg_Destroy(h.impl);
}

void ts_bus_msg_destroy(ts_bus_msg_t *m)
{
    if (m == NULL) return;
    natsMsg_Destroy(m->msg);
    free(m);
}

/* ---- live-bus table (async ack handler lifetime) ------------------------ */

static ts_bus_t *live_enter(uint64_t id)
{
    pthread_mutex_lock(&live_mu);
    ts_bus_t *b = live_head;
    while (b != NULL && b->id != id)
        b = b->next_live;
    if (b != NULL) b->ack_running++;
    pthread_mutex_unlock(&live_mu);
    return b;
}

static void live_leave(ts_bus_t *b)
{
    pthread_mutex_lock(&live_mu);
    if (--b->ack_running == 0) pthread_cond_broadcast(&live_cv);
    pthread_mutex_unlock(&live_mu);
}

static void live_add(ts_bus_t *b)
{
    pthread_mutex_lock(&live_mu);
    b->id = live_next_id++;
    b->next_live = live_head;
    live_head = b;
    pthread_mutex_unlock(&live_mu);
}

/* Unlinks b and waits until no ack handler uses it any more. */
static void live_remove(ts_bus_t *b)
{
    pthread_mutex_lock(&live_mu);
    for (ts_bus_t **p = &live_head; *p != NULL; p = &(*p)->next_live) {
        if (*p == b) {
            *p = b->next_live;
            break;
        }
    }
    while (b->ack_running > 0)
        pthread_cond_wait(&live_cv, &live_mu);
    pthread_mutex_unlock(&live_mu);
}

/* ---- connection ---------------------------------------------------------- */

static void retry_stop(ts_bus_t *bus);
static bool retry_later(ts_bus_t *bus, natsMsg **msg);
static void give_up(ts_bus_t *bus, natsMsg *msg, uint64_t tries, const char *why);

static void on_disconnected(natsConnection *nc, void *closure)
{
    if (natsConnection_IsClosed(nc)) return; /* our own close, not an outage */
    atomic_fetch_add(&conn_gen, 1);
    ts_warn("bus: disconnected from NATS, reconnecting");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    char url[256] = "";
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    ts_info("bus: reconnected to %s", url);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    const char *subj = sub != NULL ? natsSubscription_GetSubject(sub) : NULL;
    /* a refused publish or subscribe: the server's text names the subject
     * (a permission this user lacks) */
    const char *text = NULL;
    if (err == NATS_NOT_PERMITTED) natsConnection_GetLastError(nc, &text);
    ts_warn("bus: asynchronous error on %s: %s%s%s", subj ? subj : "connection", natsStatus_GetText(err),
            text ? ": " : "", text ? text : "");
}

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);

static void set_delivery_pool(void)
{
    natsStatus s = nats_SetMessageDeliveryPoolSize(DELIVERY_POOL_THREADS);
    if (s != NATS_OK) ts_warn("bus: cannot size nats.c's delivery pool: %s", natsStatus_GetText(s));
}

/* ---- credentials and TLS ------------------------------------------------- */

/* The process-wide default of ts_bus_set_default_auth: owned copies. */
static struct {
    pthread_mutex_t mu;
    char *user, *password, *creds_file, *tls_ca, *tls_cert, *tls_key;
} default_auth = {.mu = PTHREAD_MUTEX_INITIALIZER};

static bool nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

static void wipe_free(char *s)
{
    if (s == NULL) return;
    volatile char *p = s;
    while (*p)
        *p++ = '\0';
    free(s);
}

static char *dup_or_null(const char *s, bool *nomem)
{
    if (!nonempty(s)) return NULL;
    char *d = strdup(s);
    if (d == NULL) *nomem = true;
    return d;
}

ts_status_t ts_bus_set_default_auth(const ts_bus_auth_t *auth)
{
    bool nomem = false;
    ts_bus_auth_t none = {0};
    if (auth == NULL) auth = &none;
    char *user = dup_or_null(auth->user, &nomem), *password = dup_or_null(auth->password, &nomem),
         *creds = dup_or_null(auth->creds_file, &nomem), *ca = dup_or_null(auth->tls_ca, &nomem),
         *cert = dup_or_null(auth->tls_cert, &nomem), *key = dup_or_null(auth->tls_key, &nomem);
    pthread_mutex_lock(&default_auth.mu);
    char *old[] = {default_auth.user,   default_auth.password, default_auth.creds_file,
                   default_auth.tls_ca, default_auth.tls_cert, default_auth.tls_key};
    if (!nomem) {
        default_auth.user = user;
        default_auth.password = password;
        default_auth.creds_file = creds;
        default_auth.tls_ca = ca;
        default_auth.tls_cert = cert;
        default_auth.tls_key = key;
    }
    pthread_mutex_unlock(&default_auth.mu);
    char **drop = nomem ? (char *[]){user, password, creds, ca, cert, key} : old;
    for (int i = 0; i < 6; i++)
        wipe_free(drop[i]);
    return nomem ? TS_ERR_NOMEM : TS_OK;
}

/* A user name that can be one subject token (letters, digits, '-', '_'). */
static bool inbox_user_ok(const char *user)
{
    size_t n = strlen(user);
    if (n == 0 || n > 64) return false;
    for (const char *p = user; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_'))
            return false;
    }
    return true;
}

/* Applies credentials and TLS to the connect options. */
static natsStatus apply_auth(natsOptions *opts, const char *url, const ts_bus_auth_t *auth)
{
    natsStatus s = NATS_OK;
    if (auth == NULL) return s;
    if (nonempty(auth->creds_file)) s = natsOptions_SetUserCredentialsFromFiles(opts, auth->creds_file, NULL);
    /* a user in the URL wins; nats.c would otherwise send ours instead */
    bool url_has_user = strchr(url, '@') != NULL;
    if (s == NATS_OK && nonempty(auth->user) && !url_has_user) {
        s = natsOptions_SetUserInfo(opts, auth->user, auth->password ? auth->password : "");
        /* replies to this user's requests, JetStream acks and consumer
         * deliveries arrive under _INBOX.<user>.>, so its permissions can
         * keep every other user's replies from it */
        char prefix[160];
        if (s == NATS_OK && inbox_user_ok(auth->user)) {
            snprintf(prefix, sizeof prefix, "_INBOX.%s", auth->user);
            s = natsOptions_SetCustomInboxPrefix(opts, prefix);
        }
    } else if (s == NATS_OK && nonempty(auth->password) && !url_has_user)
        s = natsOptions_SetToken(opts, auth->password); /* a password without a user: token auth */
    if (s == NATS_OK && (nonempty(auth->tls_ca) || nonempty(auth->tls_cert)))
        s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK && nonempty(auth->tls_ca)) s = natsOptions_LoadCATrustedCertificates(opts, auth->tls_ca);
    if (s == NATS_OK && nonempty(auth->tls_cert))
        s = natsOptions_LoadCertificatesChain(opts, auth->tls_cert,
                                              nonempty(auth->tls_key) ? auth->tls_key : NULL);
    return s;
}

void ts_bus_redact_url(char *buf, size_t cap, const char *url)
{
    const char *at = strrchr(url, '@');
    const char *scheme = strstr(url, "://");
    const char *user = scheme != NULL && (at == NULL || scheme < at) ? scheme + 3 : url;
    const char *colon = at != NULL && user <= at ? memchr(user, ':', (size_t)(at - user)) : NULL;
    if (colon == NULL) {
        snprintf(buf, cap, "%s", url);
        return;
    }
    snprintf(buf, cap, "%.*s:***%s", (int)(colon - url), url, at);
}

/* The server URL, or a comma-separated list of them (the nodes of a
 * cluster): nats.c tries them in random order and reconnects to another one
 * when its server goes away. */
static natsStatus set_servers(natsOptions *opts, const char *url)
{
    if (strchr(url, ',') == NULL) return natsOptions_SetURL(opts, url);
    char *copy = strdup(url);
    const char *servers[TS_BUS_MAX_SERVERS];
    int n = 0;
    if (copy == NULL) return NATS_NO_MEMORY;
    for (char *save = NULL, *tok = strtok_r(copy, ", ", &save); tok != NULL && n < TS_BUS_MAX_SERVERS;
         tok = strtok_r(NULL, ", ", &save))
        servers[n++] = tok;
    natsStatus s = n > 0 ? natsOptions_SetServers(opts, servers, n) : NATS_INVALID_ARG;
    wipe_free(copy); /* the URLs may carry passwords */
    return s;
}

ts_status_t ts_bus_connect(ts_bus_t **out, const char *url, const char *name)
{
    /* copies, so the lock is not held while connecting */
    bool nomem = false;
    pthread_mutex_lock(&default_auth.mu);
    char *user = dup_or_null(default_auth.user, &nomem),
         *password = dup_or_null(default_auth.password, &nomem),
         *creds = dup_or_null(default_auth.creds_file, &nomem),
         *ca = dup_or_null(default_auth.tls_ca, &nomem), *cert = dup_or_null(default_auth.tls_cert, &nomem),
         *key = dup_or_null(default_auth.tls_key, &nomem);
    pthread_mutex_unlock(&default_auth.mu);
    ts_bus_auth_t auth = {.user = user,
                          .password = password,
                          .creds_file = creds,
                          .tls_ca = ca,
                          .tls_cert = cert,
                          .tls_key = key};
    ts_status_t st = nomem ? TS_ERR_NOMEM : ts_bus_connect_auth(out, url, name, &auth);
    char *copies[] = {user, password, creds, ca, cert, key};
    for (int i = 0; i < 6; i++)
        wipe_free(copies[i]);
    return st;
}

ts_status_t ts_bus_connect_auth(ts_bus_t **out, const char *url, const char *name, const ts_bus_auth_t *auth)
{
    if (out == NULL || url == NULL || url[0] == '\0') return TS_ERR_INVALID;
    *out = NULL;
    ts_bus_t *bus = calloc(1, sizeof *bus);
    if (bus == NULL) return TS_ERR_NOMEM;
    atomic_init(&bus->bytes_out, 0);
    atomic_init(&bus->next_msg_id, 1);
    atomic_init(&bus->in_flight, 0);
    pthread_mutex_init(&bus->retry_mu, NULL);
    pthread_mutex_init(&bus->ss_mu, NULL);
    pthread_condattr_t retry_ca;
    pthread_condattr_init(&retry_ca);
    pthread_condattr_setclock(&retry_ca, CLOCK_MONOTONIC);
    pthread_cond_init(&bus->retry_cv, &retry_ca);
    pthread_condattr_destroy(&retry_ca);
    live_add(bus);
    static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
    pthread_once(&pool_once, set_delivery_pool);
    ts_rng_t rng;
    ts_rng_seed(&rng, ts_now_us() ^ ((uint64_t)getpid() << 32) ^ (bus->id * 0x9e3779b97f4a7c15ull));
    snprintf(bus->msg_id_prefix, sizeof bus->msg_id_prefix, "%016" PRIx64, ts_rng_next(&rng));

    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = set_servers(opts, url);
    if (s == NATS_OK && name != NULL) s = natsOptions_SetName(opts, name);
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(opts, true);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 2000);
    /* Tessera batches before it publishes (one message per cell per tick or
     * loop iteration), so every publish is worth sending at once: no wait for
     * nats.c's flusher thread on the handover and input paths. */
    if (s == NATS_OK) s = natsOptions_SetSendAsap(opts, true);
    /* a few shared delivery threads instead of one per subscription */
    if (s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(opts, true);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, on_disconnected, NULL);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, on_reconnected, NULL);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts, on_async_error, NULL);
    if (s == NATS_OK) s = apply_auth(opts, url, auth);
    if (s == NATS_OK) s = natsConnection_Connect(&bus->nc, opts);
    natsOptions_Destroy(opts);
    char shown[256];
    ts_bus_redact_url(shown, sizeof shown, url);
    if (s != NATS_OK) {
        ts_status_t st = fail("connect", shown, s, 0);
        ts_bus_destroy(bus);
        return st == TS_ERR_BUS ? TS_ERR_UNAVAILABLE : st;
    }

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    jo.PublishAsync.MaxPending = ASYNC_MAX_PENDING;
    jo.PublishAsync.StallWait = ASYNC_STALL_WAIT_MS;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = (void *)(uintptr_t)bus->id;
    s = natsConnection_JetStream(&bus->js, bus->nc, &jo);
    if (s != NATS_OK) {
        ts_status_t st = fail("jetstream context", shown, s, 0);
        ts_bus_destroy(bus);
        return st;
    }
    ts_debug("bus: connected to %s as %s", shown, name ? name : "(unnamed)");
    *out = bus;
    return TS_OK;
}

void ts_bus_destroy(ts_bus_t *bus)
{
    if (bus == NULL) return;
    retry_stop(bus);
    if (bus->js != NULL) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = DESTROY_FLUSH_MS;
        natsStatus s = js_PublishAsyncComplete(bus->js, &po);
        if (s != NATS_OK)
            ts_warn("bus: closing with unacknowledged async publishes (%s)", natsStatus_GetText(s));
    }
    live_remove(bus);
    if (bus->nc != NULL) natsConnection_Close(bus->nc);
    jsCtx_Destroy(bus->js);
    natsConnection_Destroy(bus->nc);
    pthread_cond_destroy(&bus->retry_cv);
    pthread_mutex_destroy(&bus->retry_mu);
    pthread_mutex_destroy(&bus->ss_mu);
    free(bus);
}

#define SUBS_COMPLETE_WAIT_MS 2000

void ts_bus_shutdown_library(void)
{
    /* every connection is closed by now: their subscriptions complete as the
     * delivery pool gets through what was queued for them */
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += SUBS_COMPLETE_WAIT_MS / 1000;
    pthread_mutex_lock(&subs_mu);
    while (subs_open > 0 && pthread_cond_timedwait(&subs_cv, &subs_mu, &deadline) != ETIMEDOUT) {
    }
    size_t open = subs_open;
    pthread_mutex_unlock(&subs_mu);
    if (open > 0) ts_debug("bus: %zu subscriptions still open at library shutdown", open);
    natsStatus s = nats_CloseAndWait(2000);
    if (s != NATS_OK) ts_warn("bus: nats library shutdown: %s", natsStatus_GetText(s));
}

uint64_t ts_bus_bytes_out(const ts_bus_t *bus)
{
    if (bus == NULL) return 0;
    return atomic_load(&((ts_bus_t *)bus)->bytes_out);
}

size_t ts_bus_max_payload(ts_bus_t *bus)
{
    if (bus == NULL || bus->nc == NULL) return 0;
    int64_t n = natsConnection_GetMaxPayload(bus->nc);
    return n > 0 ? (size_t)n : 0;
}

void ts_bus_close(ts_bus_t *bus)
{
    if (bus != NULL && bus->nc != NULL) natsConnection_Close(bus->nc);
}

bool ts_bus_connected(ts_bus_t *bus)
{
    return bus != NULL && natsConnection_Status(bus->nc) == NATS_CONN_STATUS_CONNECTED;
}

static void count_out(ts_bus_t *bus, size_t len)
{
    atomic_fetch_add_explicit(&bus->bytes_out, (uint64_t)len, memory_order_relaxed);
}

void ts_bus_input_stream(char *buf, size_t cap, uint32_t world)
{
    snprintf(buf, cap, "TS_INPUT_%" PRIu32, world);
}

void ts_bus_ckpt_stream(char *buf, size_t cap, uint32_t world)
{
    snprintf(buf, cap, "TS_CKPT_%" PRIu32, world);
}

void ts_bus_marks_stream(char *buf, size_t cap, uint32_t world)
{
    snprintf(buf, cap, "TS_MARKS_%" PRIu32, world);
}

void ts_bus_marks_subject(char *buf, size_t cap, const char *worker, uint32_t world, const char *instance)
{
    snprintf(buf, cap, "tessera.worker.%s.marks.%" PRIu32 ".%s", worker, world, instance);
}

static bool is_marks_subject(const char *subject)
{
    return strncmp(subject, "tessera.worker.", 15) == 0 && strstr(subject, ".marks.") != NULL;
}

/* ---- streams ----------------------------------------------------------- */

static ts_status_t ensure_stream(ts_bus_t *bus, jsStreamConfig *cfg)
{
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus s = js_AddStream(&si, bus->js, cfg, NULL, &jerr);
    if (s != NATS_OK && jerr == JSStreamNameExistErr) {
        jerr = 0;
        s = js_UpdateStream(&si, bus->js, cfg, NULL, &jerr);
    }
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) return fail("ensure stream", cfg->Name, s, jerr);
    return TS_OK;
}

/* A limits-retention stream over one subject. */
static void stream_config(jsStreamConfig *cfg, const char *name, const char **subjects, jsStorageType storage,
                          int replicas)
{
    jsStreamConfig_Init(cfg);
    cfg->Name = name;
    cfg->Subjects = subjects;
    cfg->SubjectsLen = 1;
    cfg->Retention = js_LimitsPolicy;
    cfg->Storage = storage;
    cfg->Replicas = replicas;
}

ts_status_t ts_bus_ensure_streams(ts_bus_t *bus, uint32_t world, const char *storage, int64_t max_age_s,
                                  int replicas)
{
    ts_bus_streams_t opts = {
        .storage = storage, .max_age_s = max_age_s, .max_bytes = -1, .replicas = replicas};
    return ts_bus_streams_ensure(bus, world, &opts);
}

ts_status_t ts_bus_streams_ensure(ts_bus_t *bus, uint32_t world, const ts_bus_streams_t *opts)
{
    if (bus == NULL || opts == NULL || opts->max_age_s < 0) return TS_ERR_INVALID;
    const char *storage = opts->storage;
    int64_t max_age_s = opts->max_age_s;
    int replicas = opts->replicas;
    jsStorageType st_type;
    if (storage == NULL || strcmp(storage, "file") == 0)
        st_type = js_FileStorage;
    else if (strcmp(storage, "memory") == 0)
        st_type = js_MemoryStorage;
    else {
        ts_error("bus: stream storage must be file or memory, not '%s'", storage);
        return TS_ERR_INVALID;
    }
    if (replicas < 1) replicas = 1;

    char name[64], subj[96];
    const char *subjects[1] = {subj};
    jsStreamConfig cfg;

    /* inputs: everything, for max_age, de-duplicated by message id. The
     * subjects end in the publisher's origin token; a stream made before
     * that (subject "....input") is updated in place by ensure_stream. */
    ts_bus_input_stream(name, sizeof name, world);
    snprintf(subj, sizeof subj, "cell.%" PRIu32 ".*.*.*.*.input.*", world);
    stream_config(&cfg, name, subjects, st_type, replicas);
    cfg.MaxAge = max_age_s * 1000000000LL;
    cfg.Duplicates = DUPLICATE_WINDOW_NS;
    if (cfg.MaxAge > 0 && cfg.Duplicates > cfg.MaxAge) cfg.Duplicates = cfg.MaxAge;
    cfg.MaxBytes = opts->max_bytes > 0 ? opts->max_bytes : -1;
    ts_status_t st = ensure_stream(bus, &cfg);
    if (st != TS_OK) return st;

    /* checkpoints: the latest per cell (and per part subject of chunked ones) */
    char parts[96];
    const char *ckpt_subjects[2] = {subj, parts};
    ts_bus_ckpt_stream(name, sizeof name, world);
    snprintf(subj, sizeof subj, "cell.%" PRIu32 ".*.*.*.*.checkpoint", world);
    snprintf(parts, sizeof parts, "cell.%" PRIu32 ".*.*.*.*.checkpoint.>", world);
    stream_config(&cfg, name, ckpt_subjects, st_type, replicas);
    cfg.SubjectsLen = 2;
    cfg.MaxMsgsPerSubject = 1;
    st = ensure_stream(bus, &cfg);
    if (st != TS_OK) return st;

    /* tick marks: each worker instance's recent ones */
    ts_bus_marks_stream(name, sizeof name, world);
    snprintf(subj, sizeof subj, "tessera.worker.*.marks.%" PRIu32 ".*", world);
    stream_config(&cfg, name, subjects, st_type, replicas);
    cfg.MaxMsgsPerSubject = TS_BUS_MARKS_KEPT;
    cfg.MaxAge = TS_BUS_MARKS_MAX_AGE_S * 1000000000LL;
    return ensure_stream(bus, &cfg);
}

ts_status_t ts_bus_stream_state(ts_bus_t *bus, const char *stream, ts_bus_stream_state_t *out)
{
    if (bus == NULL || stream == NULL || out == NULL) return TS_ERR_INVALID;
    memset(out, 0, sizeof *out);
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, bus->js, stream, NULL, &jerr);
    if (s != NATS_OK) return fail("stream info", stream, s, jerr);
    out->created_ns = si->Created;
    out->first_seq = si->State.FirstSeq;
    out->last_seq = si->State.LastSeq;
    out->msgs = si->State.Msgs;
    out->bytes = si->State.Bytes;
    jsStreamInfo_Destroy(si);
    return TS_OK;
}

void ts_bus_free_subjects(char **subjects, size_t n)
{
    if (subjects == NULL) return;
    for (size_t i = 0; i < n; i++)
        free(subjects[i]);
    free(subjects);
}

ts_status_t ts_bus_stream_subjects(ts_bus_t *bus, const char *stream, const char *filter, char ***out,
                                   size_t *n)
{
    if (bus == NULL || stream == NULL || filter == NULL || out == NULL || n == NULL) return TS_ERR_INVALID;
    *out = NULL;
    *n = 0;
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = filter;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, bus->js, stream, &o, &jerr);
    if (s != NATS_OK) return fail("stream subjects", stream, s, jerr);
    const jsStreamStateSubjects *subj = si->State.Subjects;
    size_t count = subj != NULL && subj->Count > 0 ? (size_t)subj->Count : 0;
    char **list = calloc(count ? count : 1, sizeof *list);
    ts_status_t st = list != NULL ? TS_OK : TS_ERR_NOMEM;
    size_t k = 0;
    for (size_t i = 0; st == TS_OK && i < count; i++) {
        if (subj->List[i].Subject == NULL) continue;
        if ((list[k] = strdup(subj->List[i].Subject)) == NULL)
            st = TS_ERR_NOMEM;
        else
            k++;
    }
    jsStreamInfo_Destroy(si);
    if (st != TS_OK) {
        ts_bus_free_subjects(list, k);
        return st;
    }
    *out = list;
    *n = k;
    return TS_OK;
}

/* ---- core publish / request -------------------------------------------- */

ts_status_t ts_bus_publish(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr, const void *data,
                           size_t len)
{
    return ts_bus_publish_reply(bus, subject, NULL, hdr, data, len);
}

ts_status_t ts_bus_publish_reply(ts_bus_t *bus, const char *subject, const char *reply,
                                 const ts_bus_hdr_t *hdr, const void *data, size_t len)
{
    if (bus == NULL) return TS_ERR_INVALID;
    natsMsg *m = NULL;
    ts_status_t st = make_msg(&m, subject, reply, hdr, data, len);
    if (st != TS_OK) return st;
    natsStatus s = natsConnection_PublishMsg(bus->nc, m);
    natsMsg_Destroy(m);
    if (s != NATS_OK) return fail("publish", subject, s, 0);
    count_out(bus, len);
    return TS_OK;
}

ts_status_t ts_bus_request(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr, const void *data,
                           size_t len, int64_t timeout_ms, ts_bus_msg_t **reply)
{
    if (bus == NULL || reply == NULL || timeout_ms <= 0) return TS_ERR_INVALID;
    *reply = NULL;
    natsMsg *m = NULL, *r = NULL;
    ts_status_t st = make_msg(&m, subject, NULL, hdr, data, len);
    if (st != TS_OK) return st;
    natsStatus s = natsConnection_RequestMsg(&r, bus->nc, m, timeout_ms);
    natsMsg_Destroy(m);
    if (s != NATS_OK) return fail("request", subject, s, 0);
    count_out(bus, len);
    return wrap_msg(r, 0, reply);
}

ts_status_t ts_bus_respond(ts_bus_t *bus, const ts_bus_msg_t *to, const ts_bus_hdr_t *hdr, const void *data,
                           size_t len)
{
    if (to == NULL) return TS_ERR_INVALID;
    const char *reply = ts_bus_msg_reply(to);
    if (reply == NULL || reply[0] == '\0') {
        ts_warn("bus: cannot respond to a message on %s without a reply subject", ts_bus_msg_subject(to));
        return TS_ERR_INVALID;
    }
    return ts_bus_publish_reply(bus, reply, NULL, hdr, data, len);
}

ts_status_t ts_bus_flush(ts_bus_t *bus, int64_t timeout_ms)
{
    if (bus == NULL || timeout_ms <= 0) return TS_ERR_INVALID;
    natsStatus s = natsConnection_FlushTimeout(bus->nc, timeout_ms);
    if (s != NATS_OK) return fail("flush", NULL, s, 0);
    return TS_OK;
}

/* ---- JetStream publish --------------------------------------------------- */

ts_status_t ts_bus_js_publish(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr, const void *data,
                              size_t len, int64_t timeout_ms, uint64_t *stream_seq)
{
    if (bus == NULL || timeout_ms <= 0) return TS_ERR_INVALID;
    natsMsg *m = NULL;
    ts_status_t st = make_msg(&m, subject, NULL, hdr, data, len);
    if (st != TS_OK) return st;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_PublishMsg(&pa, bus->js, m, &po, &jerr);
    natsMsg_Destroy(m);
    if (s != NATS_OK) {
        jsPubAck_Destroy(pa);
        return fail("js publish", subject, s, jerr);
    }
    count_out(bus, len);
    if (stream_seq != NULL) *stream_seq = pa != NULL ? pa->Sequence : 0;
    jsPubAck_Destroy(pa);
    return TS_OK;
}

void ts_bus_set_ack_handler(ts_bus_t *bus, ts_bus_ack_cb cb, void *ud)
{
    if (bus == NULL) return;
    bus->ack_ud = ud;
    bus->ack_cb = cb;
}

static natsStatus publish_async(jsCtx *js, natsMsg **m)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ASYNC_ACK_WAIT_MS;
    return js_PublishMsgAsync(js, m, &po);
}

ts_status_t ts_bus_js_publish_async(ts_bus_t *bus, const char *subject, const ts_bus_hdr_t *hdr,
                                    const void *data, size_t len)
{
    if (bus == NULL) return TS_ERR_INVALID;
    if (atomic_load(&bus->in_flight) >= TS_BUS_MAX_IN_FLIGHT) return TS_ERR_BUSY;
    natsMsg *m = NULL;
    ts_status_t st = make_msg(&m, subject, NULL, hdr, data, len);
    if (st != TS_OK) return st;
    natsStatus s = NATS_OK;
    if (hdr == NULL || hdr->msg_id == NULL) {
        /* retries must be recognisable as the same message */
        char id[48];
        snprintf(id, sizeof id, "%s-%" PRIu64, bus->msg_id_prefix, atomic_fetch_add(&bus->next_msg_id, 1));
        s = natsMsgHeader_Set(m, HDR_MSG_ID, id);
    }
    atomic_fetch_add(&bus->in_flight, 1);
    if (s == NATS_OK) s = publish_async(bus->js, &m);
    if (s != NATS_OK) {
        atomic_fetch_sub(&bus->in_flight, 1);
        natsMsg_Destroy(m);
        return fail("js publish async", subject, s, 0);
    }
    count_out(bus, len);
    return TS_OK;
}

uint64_t ts_bus_in_flight(const ts_bus_t *bus)
{
    return bus ? atomic_load(&((ts_bus_t *)bus)->in_flight) : 0;
}

/* Runs on the JetStream context's reply thread for every async publish
 * outcome (including nats.c's own ack timeouts). We own msg. */
static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    ts_bus_t *bus = live_enter((uint64_t)(uintptr_t)closure);
    if (bus == NULL) {
        natsMsg_Destroy(msg);
        return;
    }
    const char *subject = natsMsg_GetSubject(msg);
    uint32_t count = (uint32_t)header_u64(msg, TS_HDR_COUNT, 1);
    uint64_t seq = header_u64(msg, TS_HDR_SEQ, 0);
    if (pa != NULL) {
        atomic_fetch_sub(&bus->in_flight, 1);
        if (bus->ack_cb != NULL) bus->ack_cb(bus->ack_ud, subject, seq, count, true, pa->Sequence);
        goto done;
    }

    uint64_t tries = header_u64(msg, HDR_TRY, 1);
    const char *why = pae != NULL && pae->ErrText != NULL ? pae->ErrText : "unknown error";
    if (pae != NULL && pae->Err == NATS_NO_RESPONDERS && retry_later(bus, &msg)) goto done;
    if (tries < TS_BUS_PUB_TRIES) {
        ts_debug("bus: async publish to %s failed (%s), retry %" PRIu64, subject, why, tries);
        natsStatus s = set_u64(msg, HDR_TRY, tries + 1);
        if (s == NATS_OK) s = publish_async(js, &msg);
        if (s == NATS_OK) goto done; /* nats.c owns msg again; msg is NULL */
        why = natsStatus_GetText(s);
    }
    give_up(bus, msg, tries, why);
done:
    natsMsg_Destroy(msg);
    live_leave(bus);
}

/* ---- publishes nobody answered -------------------------------------------
 * Without a stream leader (a cluster electing one after a node died) the
 * server answers an async publish with "no responders" at once, so the
 * usual tries would be spent in a millisecond. Such a publish waits
 * NR_RETRY_MS on the retry thread and goes again (same message id: stored
 * once), for NR_RETRY_MAX_MS in all; then it is a failed try as any other.
 * Nothing here runs on a caller's thread: the publish call itself never
 * waits. */

struct retry_item {
    natsMsg *msg;
    uint64_t due_us;
    struct retry_item *next;
};

/* Reports msg's publish failed for good (ack callback !ok); the caller frees msg. */
static void give_up(ts_bus_t *bus, natsMsg *msg, uint64_t tries, const char *why)
{
    const char *subject = natsMsg_GetSubject(msg);
    ts_warn("bus: async publish to %s given up after %" PRIu64 " tries: %s", subject, tries, why);
    atomic_fetch_sub(&bus->in_flight, 1);
    if (bus->ack_cb != NULL)
        bus->ack_cb(bus->ack_ud, subject, header_u64(msg, TS_HDR_SEQ, 0),
                    (uint32_t)header_u64(msg, TS_HDR_COUNT, 1), false, 0);
}

/* The retry_cv deadline (CLOCK_MONOTONIC) in_us from now. */
static struct timespec retry_deadline(uint64_t in_us)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + in_us * 1000;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    return ts;
}

static void *retry_main(void *arg)
{
    ts_bus_t *bus = arg;
    pthread_mutex_lock(&bus->retry_mu);
    while (!bus->retry_stop) {
        struct retry_item *it = bus->retry_head;
        if (it == NULL) {
            pthread_cond_wait(&bus->retry_cv, &bus->retry_mu);
            continue;
        }
        uint64_t now = ts_mono_us();
        if (it->due_us > now) {
            struct timespec ts = retry_deadline(it->due_us - now);
            pthread_cond_timedwait(&bus->retry_cv, &bus->retry_mu, &ts);
            continue;
        }
        bus->retry_head = it->next;
        if (bus->retry_head == NULL) bus->retry_tail = NULL;
        pthread_mutex_unlock(&bus->retry_mu);
        natsMsg *msg = it->msg;
        free(it);
        natsStatus s = publish_async(bus->js, &msg);
        if (s != NATS_OK) {
            give_up(bus, msg, header_u64(msg, HDR_TRY, 1), natsStatus_GetText(s));
            natsMsg_Destroy(msg);
        }
        pthread_mutex_lock(&bus->retry_mu);
        bus->retry_n--;
        pthread_cond_broadcast(&bus->retry_cv);
    }
    pthread_mutex_unlock(&bus->retry_mu);
    return NULL;
}

/* Queues *msg to be sent again in NR_RETRY_MS (taking it: *msg becomes
 * NULL). False, leaving *msg, when it waited long enough already, the bus is
 * closing or the retry thread cannot start. */
static bool retry_later(ts_bus_t *bus, natsMsg **msg)
{
    uint64_t waits = header_u64(*msg, HDR_WAITS, 0);
    if (waits * NR_RETRY_MS >= NR_RETRY_MAX_MS || set_u64(*msg, HDR_WAITS, waits + 1) != NATS_OK)
        return false;
    struct retry_item *it = malloc(sizeof *it);
    if (it == NULL) return false;
    if (waits == 0)
        ts_debug("bus: nobody answered a publish to %s (no stream leader?): sending it again",
                 natsMsg_GetSubject(*msg));
    it->msg = *msg;
    it->due_us = ts_mono_us() + NR_RETRY_MS * 1000;
    it->next = NULL;
    pthread_mutex_lock(&bus->retry_mu);
    bool ok = !bus->retry_stop;
    if (ok && !bus->retry_started) {
        ok = pthread_create(&bus->retry_thread, NULL, retry_main, bus) == 0;
        bus->retry_started = ok;
    }
    if (ok) {
        if (bus->retry_tail != NULL)
            bus->retry_tail->next = it;
        else
            bus->retry_head = it;
        bus->retry_tail = it;
        bus->retry_n++;
        pthread_cond_broadcast(&bus->retry_cv);
    }
    pthread_mutex_unlock(&bus->retry_mu);
    if (!ok) {
        free(it);
        return false;
    }
    *msg = NULL;
    return true;
}

/* Waits up to timeout_ms until no publish waits to be sent again. */
static bool retry_drained(ts_bus_t *bus, int64_t timeout_ms)
{
    struct timespec deadline = retry_deadline((uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000);
    pthread_mutex_lock(&bus->retry_mu);
    /* the retry thread broadcasts retry_cv after each publish it sent again */
    while (bus->retry_n > 0) {
        if (pthread_cond_timedwait(&bus->retry_cv, &bus->retry_mu, &deadline) == ETIMEDOUT) break;
    }
    bool drained = bus->retry_n == 0;
    pthread_mutex_unlock(&bus->retry_mu);
    return drained;
}

/* Stops the retry thread; what still waits is reported failed. */
static void retry_stop(ts_bus_t *bus)
{
    pthread_mutex_lock(&bus->retry_mu);
    bus->retry_stop = true;
    bool started = bus->retry_started;
    pthread_cond_broadcast(&bus->retry_cv);
    pthread_mutex_unlock(&bus->retry_mu);
    if (started) pthread_join(bus->retry_thread, NULL);
    for (struct retry_item *it = bus->retry_head, *next; it != NULL; it = next) {
        next = it->next;
        give_up(bus, it->msg, header_u64(it->msg, HDR_TRY, 1),
                "connection closed while waiting for a stream leader");
        natsMsg_Destroy(it->msg);
        free(it);
    }
    bus->retry_head = bus->retry_tail = NULL;
    bus->retry_n = 0;
}

ts_status_t ts_bus_js_flush(ts_bus_t *bus, int64_t timeout_ms)
{
    if (bus == NULL || timeout_ms <= 0) return TS_ERR_INVALID;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms;
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    natsStatus s;
    /* what waits for a stream leader is sent again, and then acknowledged */
    for (;;) {
        int64_t left = (int64_t)(deadline - ts_mono_us()) / 1000;
        po.MaxWait = left > 0 ? left : 1;
        s = js_PublishAsyncComplete(bus->js, &po);
        if (s != NATS_OK || retry_drained(bus, 0)) break;
        if (!retry_drained(bus, (int64_t)(deadline - ts_mono_us()) / 1000)) {
            s = NATS_TIMEOUT;
            break;
        }
    }
    if (s != NATS_OK) return fail("js flush", NULL, s, 0);
    return TS_OK;
}

/* ---- subscriptions -------------------------------------------------------- */

/* A JetStream consumer's first message after a reconnect: is its stream
 * still the instance it was created on? A server that lost its store has a
 * new stream of the same name whose sequences start at 1 again; the ordered
 * consumer would go on from the old instance's sequence and deliver the new
 * one's later messages, skipping its first ones, to an owner whose position
 * is a sequence of the old one. So a consumer delivers messages of its own
 * instance only: if the stream is another one now, or if it cannot tell (no
 * answer), it stops for good and delivers nothing more; its owner sees it
 * (ts_bus_sub_stopped) and consumes again from its own position, on the
 * instance that position refers to (ts_bus_consume_at). One request, on the
 * delivery thread, once per reconnect and consumer. */
static bool stream_still_same(ts_bus_sub_t *sub)
{
    if (atomic_load(&sub->stopped)) return false;
    uint64_t gen = atomic_load(&conn_gen);
    if (sub->verified_gen == gen) return true;
    ts_bus_stream_state_t ss;
    ts_status_t st = TS_ERR_UNAVAILABLE;
    for (int attempt = 0; attempt < 3 && st != TS_OK && st != TS_ERR_NOT_FOUND; attempt++)
        st = ts_bus_stream_state(sub->bus, sub->stream, &ss);
    if (st == TS_OK && ss.created_ns == sub->stream_created_ns) {
        sub->verified_gen = gen;
        return true;
    }
    atomic_store(&sub->stopped, true);
    if (st == TS_OK || st == TS_ERR_NOT_FOUND)
        ts_warn("bus: stream %s is not the one its consumer of %s was created on (JetStream lost its "
                "store?): the consumer stops delivering",
                sub->stream, natsSubscription_GetSubject(sub->nsub));
    else
        ts_warn("bus: cannot tell whether stream %s is still the one its consumer of %s was created on "
                "(%s): the consumer stops delivering",
                sub->stream, natsSubscription_GetSubject(sub->nsub), ts_status_str(st));
    return false;
}

/* A decimal token of a reply subject (up to the next '.' or the end). */
static bool reply_number(const char *p, uint64_t *out)
{
    uint64_t v = 0;
    size_t digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++)
        v = v * 10 + (uint64_t)(*p - '0');
    if (digits == 0 || digits > 19 || (*p != '.' && *p != '\0')) return false;
    *out = v;
    return true;
}

/* A JetStream message's stream sequence, store time (ns since the epoch,
 * the server's clock) and pending count from its reply subject,
 * "$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>" (or with
 * "<domain>.<account hash>." before the stream and maybe one token after): no allocation, where
 * natsMsg_GetMetaData makes four per message, which a worker's one
 * consumer over the whole input stream pays for every input of the world.
 * False if the subject has neither form. */
static bool js_reply_meta(const char *reply, uint64_t *stream_seq, uint64_t *time_ns, uint64_t *pending)
{
    static const char prefix[] = "$JS.ACK.";
    if (reply == NULL || strncmp(reply, prefix, sizeof prefix - 1) != 0) return false;
    const char *tok[11];
    size_t n = 0;
    const char *p = reply + sizeof prefix - 1;
    tok[n++] = p;
    for (; *p; p++) {
        if (*p != '.') continue;
        if (n == sizeof tok / sizeof tok[0]) return false;
        tok[n++] = p + 1;
    }
    size_t base = n == 7 ? 0 : n == 9 || n == 10 ? 2 : SIZE_MAX;
    if (base == SIZE_MAX) return false;
    uint64_t seq = 0, at = 0, left = 0;
    if (!reply_number(tok[base + 3], &seq) || !reply_number(tok[base + 5], &at) ||
        !reply_number(tok[base + 6], &left))
        return false;
    *stream_seq = seq;
    *time_ns = at;
    *pending = left;
    return true;
}

static void on_msg(natsConnection *nc, natsSubscription *nsub, natsMsg *m, void *closure)
{
    ts_bus_sub_t *sub = closure;
    if (!atomic_load(&sub->closing) && (!sub->jetstream || stream_still_same(sub))) {
        ts_bus_msg_t bm = {.msg = m, .stream_seq = 0, .pending = 0, .time_ns = 0};
        if (sub->jetstream && !js_reply_meta(natsMsg_GetReply(m), &bm.stream_seq, &bm.time_ns, &bm.pending)) {
            jsMsgMetaData *meta = NULL;
            if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
                bm.stream_seq = meta->Sequence.Stream;
                bm.pending = meta->NumPending;
                bm.time_ns = meta->Timestamp > 0 ? (uint64_t)meta->Timestamp : 0;
            }
            jsMsgMetaData_Destroy(meta);
        }
        tls_delivering = sub;
        sub->cb(sub->ud, &bm);
        tls_delivering = NULL;
        m = bm.msg; /* NULL if the callback held it */
    }
    natsMsg_Destroy(m);
}

static void free_sub(ts_bus_sub_t *sub)
{
    pthread_cond_destroy(&sub->cv);
    pthread_mutex_destroy(&sub->mu);
    free(sub);
}

/* nats.c calls this once the subscription is closed and on_msg has returned
 * for the last time. */
static void on_sub_complete(void *closure)
{
    ts_bus_sub_t *sub = closure;
    pthread_mutex_lock(&subs_mu);
    subs_open--;
    pthread_cond_broadcast(&subs_cv);
    pthread_mutex_unlock(&subs_mu);
    pthread_mutex_lock(&sub->mu);
    sub->completed = true;
    bool self_free = sub->free_on_complete;
    pthread_cond_broadcast(&sub->cv);
    pthread_mutex_unlock(&sub->mu);
    if (self_free) free_sub(sub);
}

static ts_status_t new_sub(ts_bus_msg_cb cb, void *ud, bool jetstream, ts_bus_sub_t **out)
{
    ts_bus_sub_t *sub = calloc(1, sizeof *sub);
    if (sub == NULL) return TS_ERR_NOMEM;
    sub->cb = cb;
    sub->ud = ud;
    sub->jetstream = jetstream;
    atomic_init(&sub->closing, false);
    atomic_init(&sub->stopped, false);
    pthread_mutex_init(&sub->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sub->cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = sub;
    return TS_OK;
}

/* Hooks the completion callback; if that fails the subscription is already
 * closed and nothing will be delivered. */
static void arm_sub(ts_bus_sub_t *sub)
{
    pthread_mutex_lock(&subs_mu); /* before: the completion may run at once */
    subs_open++;
    pthread_mutex_unlock(&subs_mu);
    if (natsSubscription_SetOnCompleteCB(sub->nsub, on_sub_complete, sub) != NATS_OK) {
        sub->completed = true;
        pthread_mutex_lock(&subs_mu);
        subs_open--;
        pthread_mutex_unlock(&subs_mu);
    }
    natsSubscription_SetPendingLimits(sub->nsub, SUB_PENDING_MSGS, SUB_PENDING_BYTES);
}

ts_status_t ts_bus_subscribe(ts_bus_t *bus, const char *subject, ts_bus_msg_cb cb, void *ud,
                             ts_bus_sub_t **out)
{
    if (bus == NULL || subject == NULL || subject[0] == '\0' || cb == NULL || out == NULL)
        return TS_ERR_INVALID;
    *out = NULL;
    ts_bus_sub_t *sub = NULL;
    ts_status_t st = new_sub(cb, ud, false, &sub);
    if (st != TS_OK) return st;
    natsStatus s = natsConnection_Subscribe(&sub->nsub, bus->nc, subject, on_msg, sub);
    if (s != NATS_OK) {
        free_sub(sub);
        return fail("subscribe", subject, s, 0);
    }
    arm_sub(sub);
    *out = sub;
    return TS_OK;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

uint64_t ts_bus_conn_gen(void)
{
    return atomic_load(&conn_gen);
}

ts_status_t ts_bus_consume(ts_bus_t *bus, uint32_t world, const char *subject, uint64_t start_seq,
                           ts_bus_msg_cb cb, void *ud, ts_bus_sub_t **out)
{
    return ts_bus_consume_at(bus, world, subject, 0, start_seq, cb, ud, out);
}

/* How long a stream's instance read for one consumer serves the next ones
 * on the same connection. Only a reconnect makes the stream another instance
 * under a live connection's consumers (JetStream lost its store when the
 * server restarted); a stream deleted and created again by hand meanwhile is
 * what the worker's once-a-second stream check finds. */
#define STREAM_ID_FRESH_US 1000000ULL

/* The instance of stream now (as of connection generation gen), and its
 * last sequence when that was read (at most STREAM_ID_FRESH_US ago). */
static ts_status_t stream_instance(ts_bus_t *bus, const char *stream, uint64_t gen, int64_t *created_ns,
                                   uint64_t *last_seq)
{
    uint64_t now = ts_mono_us();
    pthread_mutex_lock(&bus->ss_mu);
    bool fresh = bus->ss_at_us != 0 && bus->ss_gen == gen && now - bus->ss_at_us < STREAM_ID_FRESH_US &&
                 strcmp(bus->ss_stream, stream) == 0;
    *created_ns = bus->ss_created_ns;
    *last_seq = bus->ss_last_seq;
    pthread_mutex_unlock(&bus->ss_mu);
    if (fresh) return TS_OK;
    ts_bus_stream_state_t ss;
    ts_status_t st = ts_bus_stream_state(bus, stream, &ss);
    if (st != TS_OK) return st;
    *created_ns = ss.created_ns;
    *last_seq = ss.last_seq;
    pthread_mutex_lock(&bus->ss_mu);
    ts_strlcpy(bus->ss_stream, stream, sizeof bus->ss_stream);
    bus->ss_created_ns = ss.created_ns;
    bus->ss_last_seq = ss.last_seq;
    bus->ss_gen = gen;
    bus->ss_at_us = now;
    pthread_mutex_unlock(&bus->ss_mu);
    return TS_OK;
}

ts_status_t ts_bus_input_floor(ts_bus_t *bus, uint32_t world, int64_t *stream_id, uint64_t *last_seq)
{
    if (bus == NULL || stream_id == NULL || last_seq == NULL) return TS_ERR_INVALID;
    char stream[64];
    ts_bus_input_stream(stream, sizeof stream, world);
    return stream_instance(bus, stream, atomic_load(&conn_gen), stream_id, last_seq);
}

ts_status_t ts_bus_consume_at(ts_bus_t *bus, uint32_t world, const char *subject, int64_t stream_id,
                              uint64_t start_seq, ts_bus_msg_cb cb, void *ud, ts_bus_sub_t **out)
{
    if (bus == NULL || subject == NULL || subject[0] == '\0' || cb == NULL || out == NULL)
        return TS_ERR_INVALID;
    *out = NULL;
    char stream[64];
    if (has_suffix(subject, ".checkpoint") || strstr(subject, ".checkpoint.") != NULL)
        ts_bus_ckpt_stream(stream, sizeof stream, world);
    else if (is_marks_subject(subject))
        ts_bus_marks_stream(stream, sizeof stream, world);
    else
        ts_bus_input_stream(stream, sizeof stream, world);

    /* the instance it starts on. The generation is read first: a reconnect
     * after it (the only way the stream becomes another instance under a
     * consumer) has the first message check the instance again. */
    uint64_t gen = atomic_load(&conn_gen);
    int64_t created_ns = 0;
    uint64_t last_seq = 0;
    ts_status_t st = stream_instance(bus, stream, gen, &created_ns, &last_seq);
    if (st != TS_OK) return st;
    if (stream_id != 0 && created_ns != stream_id) return TS_ERR_STALE;

    ts_bus_sub_t *sub = NULL;
    st = new_sub(cb, ud, true, &sub);
    if (st != TS_OK) return st;
    sub->bus = bus;
    ts_strlcpy(sub->stream, stream, sizeof sub->stream);
    sub->verified_gen = gen;
    sub->stream_created_ns = created_ns;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Ordered = true;
    if (start_seq == 0) {
        so.Config.DeliverPolicy = js_DeliverAll;
    } else {
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = start_seq;
    }
    jsErrCode jerr = 0;
    natsStatus s = js_Subscribe(&sub->nsub, bus->js, subject, on_msg, sub, NULL, &so, &jerr);
    if (s != NATS_OK) {
        free_sub(sub);
        return fail("consume", subject, s, jerr);
    }
    arm_sub(sub);
    *out = sub;
    return TS_OK;
}

int64_t ts_bus_sub_stream_id(const ts_bus_sub_t *sub)
{
    return sub != NULL && sub->jetstream ? sub->stream_created_ns : 0;
}

bool ts_bus_sub_stopped(ts_bus_sub_t *sub)
{
    return sub != NULL && atomic_load(&sub->stopped);
}

void ts_bus_sub_destroy(ts_bus_sub_t *sub)
{
    if (sub == NULL) return;
    atomic_store(&sub->closing, true);

    if (tls_delivering == sub) {
        /* Called from its own callback: waiting would deadlock, so the
         * completion callback frees the wrapper once this handler returns. */
        pthread_mutex_lock(&sub->mu);
        bool completed = sub->completed;
        sub->free_on_complete = !completed;
        pthread_mutex_unlock(&sub->mu);
        natsSubscription_Unsubscribe(sub->nsub);
        natsSubscription_Destroy(sub->nsub);
        if (completed) free_sub(sub);
        return;
    }

    natsSubscription_Unsubscribe(sub->nsub);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += SUB_CLOSE_WAIT_MS / 1000;
    pthread_mutex_lock(&sub->mu);
    int rc = 0;
    while (!sub->completed && rc == 0)
        rc = pthread_cond_timedwait(&sub->cv, &sub->mu, &deadline);
    bool completed = sub->completed;
    if (!completed) sub->free_on_complete = true;
    pthread_mutex_unlock(&sub->mu);
    natsSubscription_Destroy(sub->nsub);
    if (completed)
        free_sub(sub);
    else
        ts_warn("bus: subscription did not close within %d ms; freeing it when it does", SUB_CLOSE_WAIT_MS);
}

ts_status_t ts_bus_consumer_pending(ts_bus_sub_t *sub, uint64_t *pending, uint64_t *delivered_seq)
{
    if (sub == NULL || pending == NULL || delivered_seq == NULL || !sub->jetstream) return TS_ERR_INVALID;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = natsSubscription_GetConsumerInfo(&ci, sub->nsub, NULL, &jerr);
    if (s != NATS_OK) return fail("consumer info", natsSubscription_GetSubject(sub->nsub), s, jerr);
    *pending = ci->NumPending;
    *delivered_seq = ci->Delivered.Stream;
    jsConsumerInfo_Destroy(ci);
    return TS_OK;
}

void ts_bus_sub_close(ts_bus_sub_t *sub)
{
    if (sub == NULL) return;
    atomic_store(&sub->closing, true);
    natsSubscription *nsub = sub->nsub; /* sub may be freed once unsubscribed */
    pthread_mutex_lock(&sub->mu);
    bool completed = sub->completed;
    sub->free_on_complete = !completed;
    pthread_mutex_unlock(&sub->mu);
    natsSubscription_Unsubscribe(nsub);
    natsSubscription_Destroy(nsub);
    if (completed) free_sub(sub);
}

/* ---- last message ------------------------------------------------------- */

ts_status_t ts_bus_last_msg(ts_bus_t *bus, const char *stream, const char *subject, ts_bus_msg_t **out)
{
    if (bus == NULL || stream == NULL || subject == NULL || out == NULL) return TS_ERR_INVALID;
    *out = NULL;
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetLastMsg(&m, bus->js, stream, subject, NULL, &jerr);
    if (s != NATS_OK) return fail("last message", subject, s, jerr);
    return wrap_msg(m, natsMsg_GetSequence(m), out);
}
