/* Metrics and health listener on libmicrohttpd (see http.h).
 *
 * libmicrohttpd polls in its own threads (a pool of HTTP_THREADS); each
 * request is answered from state the service published atomically (the
 * heartbeat, the stopping flag, the metrics) or by the service's ready
 * callback. The Redis probe of ts_http_check_redis has its own connection,
 * guarded by redis_mu, so two readiness requests never share it. */
#include "tessera/http.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "tessera/config.h"
#include "tessera/log.h"
#include "tessera/registry.h"
#include "tessera/util.h"

#define HTTP_THREADS 2
#define HTTP_CONN_LIMIT 64
#define HTTP_CONN_TIMEOUT_S 10
#define REDIS_CHECK_EVERY_US 1000000ULL

struct ts_http {
    struct MHD_Daemon *daemon;
    int port;
    ts_metrics_t *metrics;
    int64_t stale_ms;
    ts_http_ready_fn ready;
    void *ready_ud;
    _Atomic uint64_t beat_us; /* ts_mono_us of the last beat; 0: none yet */
    atomic_bool stopping;

    pthread_mutex_t redis_mu;
    ts_registry_t *redis;
    uint64_t redis_checked_us;
    bool redis_ok;
    char redis_why[128];
};

void ts_http_beat(ts_http_t *h)
{
    if (h) atomic_store_explicit(&h->beat_us, ts_mono_us(), memory_order_relaxed);
}

void ts_http_set_stopping(ts_http_t *h)
{
    if (h) atomic_store(&h->stopping, true);
}

int ts_http_port(const ts_http_t *h)
{
    return h ? h->port : 0;
}

int ts_http_healthz(ts_http_t *h, uint64_t now_us, char *body, size_t cap)
{
    uint64_t beat = h ? atomic_load_explicit(&h->beat_us, memory_order_relaxed) : 0;
    if (beat == 0) {
        snprintf(body, cap, "ok: starting\n");
        return 200;
    }
    uint64_t age_ms = now_us > beat ? (now_us - beat) / 1000 : 0;
    if (age_ms > (uint64_t)h->stale_ms) {
        snprintf(body, cap, "stalled: the loop last turned %" PRIu64 " ms ago\n", age_ms);
        return 503;
    }
    snprintf(body, cap, "ok\n");
    return 200;
}

int ts_http_readyz(ts_http_t *h, char *body, size_t cap)
{
    if (!h) {
        snprintf(body, cap, "not ready: no listener\n");
        return 503;
    }
    if (atomic_load(&h->stopping)) {
        snprintf(body, cap, "not ready: stopping\n");
        return 503;
    }
    char why[256] = "";
    if (h->ready && !h->ready(h->ready_ud, why, sizeof why)) {
        snprintf(body, cap, "not ready: %s\n", why[0] ? why : "starting");
        return 503;
    }
    snprintf(body, cap, "ready\n");
    return 200;
}

bool ts_http_check_bus(ts_bus_t *bus, char *why, size_t cap)
{
    if (bus && ts_bus_connected(bus)) return true;
    snprintf(why, cap, "%s", bus ? "NATS connection down" : "not connected to NATS yet");
    return false;
}

bool ts_http_check_redis(ts_http_t *h, const char *url, char *why, size_t cap)
{
    if (!h || !url) {
        snprintf(why, cap, "no Redis URL");
        return false;
    }
    pthread_mutex_lock(&h->redis_mu);
    uint64_t now = ts_mono_us();
    if (h->redis_checked_us == 0 || now - h->redis_checked_us >= REDIS_CHECK_EVERY_US) {
        ts_status_t st = TS_OK;
        if (!h->redis) st = ts_registry_connect(&h->redis, url);
        uint64_t version = 0;
        if (st == TS_OK) st = ts_registry_version(h->redis, 0, &version);
        if (st != TS_OK) {
            ts_registry_destroy(h->redis);
            h->redis = NULL;
        }
        h->redis_ok = st == TS_OK;
        snprintf(h->redis_why, sizeof h->redis_why, "Redis unreachable (%s)", ts_status_str(st));
        h->redis_checked_us = ts_mono_us();
    }
    bool ok = h->redis_ok;
    if (!ok) snprintf(why, cap, "%s", h->redis_why);
    pthread_mutex_unlock(&h->redis_mu);
    return ok;
}

/* ---- libmicrohttpd -------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, int status, const char *type, char *body,
                             size_t len, bool owned)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (!r) {
        if (owned) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    ts_http_t *h = cls;
    static const char text[] = "text/plain; charset=utf-8";
    char body[384];
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        snprintf(body, sizeof body, "method not allowed\n");
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text, body, strlen(body), false);
    }
    if (strcmp(url, "/metrics") == 0) {
        char *out = NULL;
        size_t len = 0;
        if (h->metrics) {
            if (ts_metrics_render(h->metrics, &out, &len) != TS_OK) {
                snprintf(body, sizeof body, "out of memory\n");
                return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, text, body, strlen(body), false);
            }
        } else {
            out = calloc(1, 1);
            if (!out) return MHD_NO;
        }
        return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", out, len, true);
    }
    if (strcmp(url, "/healthz") == 0) {
        int status = ts_http_healthz(h, ts_mono_us(), body, sizeof body);
        return reply(conn, status, text, body, strlen(body), false);
    }
    if (strcmp(url, "/readyz") == 0) {
        int status = ts_http_readyz(h, body, sizeof body);
        return reply(conn, status, text, body, strlen(body), false);
    }
    snprintf(body, sizeof body, "not found: /metrics, /healthz and /readyz are served here\n");
    return reply(conn, MHD_HTTP_NOT_FOUND, text, body, strlen(body), false);
}

static void on_mhd_error(void *cls, const char *fmt, va_list ap)
{
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    ts_debug("http: %s", msg);
}

ts_status_t ts_http_start(ts_http_t **out, const ts_http_opts_t *opts)
{
    *out = NULL;
    if (!opts->listen || !opts->listen[0]) return TS_OK;
    char host[256];
    int port = 0;
    if (ts_config_split_hostport(opts->listen, host, sizeof host, &port) != TS_OK) {
        ts_error("http: listen address '%s' is not host:port", opts->listen);
        return TS_ERR_CONFIG;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host[0] ? host : NULL, portstr, &hints, &ai);
    if (gai != 0 || !ai) {
        ts_error("http: cannot resolve '%s': %s", host, gai_strerror(gai));
        return TS_ERR_CONFIG;
    }
    ts_http_t *h = calloc(1, sizeof *h);
    if (!h) {
        freeaddrinfo(ai);
        return TS_ERR_NOMEM;
    }
    h->metrics = opts->metrics;
    h->stale_ms = opts->stale_ms > 0 ? opts->stale_ms : TS_HTTP_STALE_MS;
    h->ready = opts->ready;
    h->ready_ud = opts->ready_ud;
    atomic_init(&h->beat_us, 0);
    atomic_init(&h->stopping, false);
    pthread_mutex_init(&h->redis_mu, NULL);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
                                 ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)HTTP_THREADS,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONN_LIMIT,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_CONN_TIMEOUT_S,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_mhd_error, NULL, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->daemon) {
        ts_error("http: cannot listen on %s", opts->listen);
        ts_http_stop(h);
        return TS_ERR_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : port;
    ts_info("http: /metrics, /healthz and /readyz on %s:%d", host, h->port);
    *out = h;
    return TS_OK;
}

void ts_http_stop(ts_http_t *h)
{
    if (!h) return;
    if (h->daemon) MHD_stop_daemon(h->daemon);
    ts_registry_destroy(h->redis);
    pthread_mutex_destroy(&h->redis_mu);
    free(h);
}
