/* Client TCP connections: accept, per-connection frame reader, write queue.
 *
 * Invariants: a connection is on gw->conns from accept until its close
 * callback frees it; out_pending counts bytes handed to uv_write and not yet
 * written, so output memory per client is bounded (Delta frames stop above
 * gateway.max_backlog, the connection is dropped at GW_MAX_CLIENT_BYTES).
 * A connection that got a fatal error (`closing`) reads and discards input
 * until the peer closes or its linger time ends, so the peer receives the
 * Error instead of a reset.
 *
 * Lifecycle deadlines (gw_tl_*): a connection is on the hello list from
 * accept until it greets (Hello or Join), on the idle list from accept on
 * (moved to the tail on every read that brings a frame), and on the slow
 * list while its unsent output is above gateway.max_backlog, which is also
 * exactly while its Deltas are withheld (view.c): a client that stopped
 * reading is closed gateway.slow_close_s later, never just starved. A check every
 * GW_LIFE_CHECK_MS pops the expired heads, so its cost is the connections
 * it closes, not the connections open. */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "tessera/config.h"
#include "tessera/log.h"
#include "tessera/util.h"
#include "ws.h"

#define READ_CHUNK 65536

typedef struct {
    uv_write_t req;
    gw_conn_t *conn;
    size_t len;
    uint8_t data[];
} write_req_t;

void gw_tl_del(gw_t *gw, gw_conn_t *c, gw_tl_kind_t kind)
{
    gw_tl_link_t *l = &c->tl[kind];
    if (!l->on) return;
    gw_tl_t *list = &gw->tl[kind];
    if (l->prev != NULL)
        l->prev->tl[kind].next = l->next;
    else
        list->head = l->next;
    if (l->next != NULL)
        l->next->tl[kind].prev = l->prev;
    else
        list->tail = l->prev;
    l->prev = l->next = NULL;
    l->on = false;
}

void gw_tl_put(gw_t *gw, gw_conn_t *c, gw_tl_kind_t kind, uint64_t deadline_us)
{
    gw_tl_del(gw, c, kind);
    gw_tl_t *list = &gw->tl[kind];
    gw_tl_link_t *l = &c->tl[kind];
    l->deadline_us = deadline_us;
    l->on = true;
    l->prev = list->tail;
    l->next = NULL;
    if (list->tail != NULL)
        list->tail->tl[kind].next = c;
    else
        list->head = c;
    list->tail = c;
}

/* Counts the connection against its IP address; false if over the limit. */
static bool ip_count(gw_t *gw, gw_conn_t *c, const char *ip)
{
    uint64_t key = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = ip; *p != '\0'; p++)
        key = (key ^ (uint8_t)*p) * 1099511628211ull;
    if (key == 0) key = 1;
    uintptr_t n = (uintptr_t)ts_map_get(&gw->per_ip, key);
    if (gw->cfg->gateway_max_conns_per_ip > 0 && n >= (uintptr_t)gw->cfg->gateway_max_conns_per_ip)
        return false;
    if (ts_map_put(&gw->per_ip, key, (void *)(n + 1)) != TS_OK) return true;
    c->ip_key = key;
    return true;
}

static void ip_uncount(gw_t *gw, gw_conn_t *c)
{
    if (c->ip_key == 0) return;
    uintptr_t n = (uintptr_t)ts_map_get(&gw->per_ip, c->ip_key);
    if (n <= 1)
        ts_map_del(&gw->per_ip, c->ip_key);
    else
        (void)ts_map_put(&gw->per_ip, c->ip_key, (void *)(n - 1));
    c->ip_key = 0;
}

static void on_close(uv_handle_t *h)
{
    gw_conn_t *c = h->data;
    gw_t *gw = c->gw;
    for (int k = 0; k < GW_TL_COUNT; k++)
        gw_tl_del(gw, c, (gw_tl_kind_t)k);
    ip_uncount(gw, c);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        gw->conns = c->next;
    if (c->next != NULL) c->next->prev = c->prev;
    gw->nconns--;
    if (c->flush_queued) {
        gw_conn_t **pp = &gw->flush_head;
        while (*pp != NULL && *pp != c)
            pp = &(*pp)->next_flush;
        if (*pp == c) {
            *pp = c->next_flush;
            gw->nflush--;
        }
    }
    ts_frame_reader_free(&c->reader);
    gw_ws_free(c);
    free(c->aoi);
    free(c->evq);
    free(c->gone);
    free(c);
}

static void mark_closing(gw_conn_t *c)
{
    if (!c->closing) {
        c->closing = true;
        c->gw->nopen--;
    }
}

void gw_conn_close(gw_conn_t *c)
{
    if (c->handle_closed) return;
    if (c->staged) {
        /* a writer thread may be writing to its descriptor: not closed (and
         * reused) under it; the fan-out closes it when its writes are done */
        c->close_staged = true;
        return;
    }
    gw_session_release(c);
    mark_closing(c);
    c->handle_closed = true;
    ts_debug("conn %llu (%s) closed", (unsigned long long)c->id, c->peer);
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    gw_conn_t *c = req->data;
    free(req);
    if (status < 0 && !c->handle_closed) gw_conn_close(c);
}

void gw_conn_close_after_write(gw_conn_t *c)
{
    if (c->closing || c->handle_closed) return;
    gw_session_release(c);
    mark_closing(c);
    c->linger_until_us = ts_mono_us() + GW_LINGER_US;
    if (c->ws != NULL) gw_ws_closing(c);
    if (c->handle_closed) return;
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req == NULL) {
        gw_conn_close(c);
        return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(req);
        gw_conn_close(c);
    }
}

void gw_conns_expire(gw_t *gw)
{
    uint64_t now = ts_mono_us();
    gw_conn_t *c;
    while ((c = gw->tl[GW_TL_HELLO].head) != NULL && c->tl[GW_TL_HELLO].deadline_us <= now) {
        gw_tl_del(gw, c, GW_TL_HELLO);
        gw_session_hello_expired(c);
    }
    while ((c = gw->tl[GW_TL_IDLE].head) != NULL && c->tl[GW_TL_IDLE].deadline_us <= now) {
        gw_tl_del(gw, c, GW_TL_IDLE);
        if (c->closing) continue;
        gw->closed_idle++;
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_TIMEOUT, true,
                         "no frame for %lld s (gateway.idle_timeout_s; a Ping keeps the connection)",
                         (long long)gw->cfg->gateway_idle_timeout_s);
    }
    while ((c = gw->tl[GW_TL_SLOW].head) != NULL && c->tl[GW_TL_SLOW].deadline_us <= now) {
        gw_tl_del(gw, c, GW_TL_SLOW);
        if (c->handle_closed) continue;
        gw->closed_slow++;
        ts_info("conn %llu (%s): %zu bytes of output unsent for %lld s (slow reader); closing",
                (unsigned long long)c->id, c->peer, c->out_pending, (long long)gw->cfg->gateway_slow_close_s);
        gw_conn_close(c);
    }
}

void gw_conns_sweep(gw_t *gw)
{
    uint64_t now = ts_mono_us();
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next) {
        if (c->closing && !c->handle_closed && now >= c->linger_until_us) gw_conn_close(c);
    }
}

static void on_write(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)req;
    gw_conn_t *c = w->conn;
    c->out_pending -= w->len;
    free(w);
    int64_t backlog = c->gw->cfg->gateway_max_backlog;
    if (c->tl[GW_TL_SLOW].on && !gw_conn_backlogged(c->out_pending, backlog)) gw_tl_del(c->gw, c, GW_TL_SLOW);
    if (status < 0 && status != UV_ECANCELED && !c->handle_closed) {
        ts_debug("conn %llu (%s): write failed: %s", (unsigned long long)c->id, c->peer, uv_strerror(status));
        gw_conn_close(c);
        return;
    }
    if (c->behind && c->out_pending <= (size_t)backlog / 2 && !c->handle_closed) gw_view_caught_up(c->gw, c);
}

/* Queues what the socket did not take: bufs from byte `skip` on. */
ts_status_t gw_conn_queue_rest(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t skip, size_t rest)
{
    if (c->out_pending + rest > GW_MAX_CLIENT_BYTES) {
        /* a slow reader too: it gets here before gateway.slow_close_s when
         * what it does not read piles up fast */
        ts_warn("conn %llu (%s): over %zu bytes of unsent output (slow reader); closing",
                (unsigned long long)c->id, c->peer, (size_t)GW_MAX_CLIENT_BYTES);
        gw_conn_close(c);
        return TS_ERR_UNAVAILABLE;
    }
    write_req_t *w = malloc(sizeof *w + rest);
    if (w == NULL) {
        gw_conn_close(c);
        return TS_ERR_NOMEM;
    }
    w->conn = c;
    w->len = rest;
    size_t off = 0;
    for (size_t i = 0; i < nbufs; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(w->data + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)rest);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc != 0) {
        free(w);
        gw_conn_close(c);
        return TS_ERR_IO;
    }
    c->out_pending += rest;
    if (!c->tl[GW_TL_SLOW].on && gw_conn_backlogged(c->out_pending, c->gw->cfg->gateway_max_backlog))
        gw_tl_put(c->gw, c, GW_TL_SLOW,
                  ts_mono_us() + (uint64_t)c->gw->cfg->gateway_slow_close_s * 1000000ull);
    return TS_OK;
}

ts_status_t gw_conn_writev(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t total)
{
    if (c->ws != NULL) return gw_ws_writev(c, bufs, nbufs, total);
    return gw_conn_writev_raw(c, bufs, nbufs, total);
}

ts_status_t gw_conn_writev_raw(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t total)
{
    if (c->handle_closed) return TS_ERR_CLOSED;
    /* not before the frames a fan-out staged for it: those go first */
    if (c->staged) gw_view_write_staged(c->gw);
    if (c->handle_closed) return TS_ERR_CLOSED;
    size_t off = 0;
    if (c->out_pending == 0) {
        /* writev takes at most IOV_MAX pieces; uv_try_write passes them on */
        size_t done = 0;
        while (done < nbufs) {
            size_t n = nbufs - done > 1024 ? 1024 : nbufs - done;
            size_t want = 0;
            for (size_t i = 0; i < n; i++)
                want += bufs[done + i].len;
            int w = uv_try_write((uv_stream_t *)&c->tcp, bufs + done, (unsigned)n);
            if (w < 0 && w != UV_EAGAIN) {
                gw_conn_close(c);
                return TS_ERR_IO;
            }
            if (w > 0) off += (size_t)w;
            if (w < 0 || (size_t)w < want) break;
            done += n;
        }
    }
    if (off == total) return TS_OK;
    return gw_conn_queue_rest(c, bufs, nbufs, off, total - off);
}

ts_status_t gw_conn_write(gw_conn_t *c, const uint8_t *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    return gw_conn_writev(c, &b, 1, len);
}

ts_status_t gw_conn_write_raw(gw_conn_t *c, const uint8_t *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    return gw_conn_writev_raw(c, &b, 1, len);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char chunk[READ_CHUNK];
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(chunk, sizeof chunk);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_conn_t *c = s->data;
    if (nread < 0) {
        if (nread != UV_EOF)
            ts_debug("conn %llu (%s): read: %s", (unsigned long long)c->id, c->peer, uv_strerror((int)nread));
        gw_conn_close(c);
        return;
    }
    if (nread == 0 || c->closing) return;
    size_t frames_before = c->frames_in;
    if (c->ws != NULL) {
        c->frames_in += gw_ws_on_read(c, (const uint8_t *)buf->base, (size_t)nread);
    } else if (ts_frame_reader_feed(&c->reader, buf->base, (size_t)nread) != TS_OK) {
        ts_warn("conn %llu (%s): out of memory buffering input", (unsigned long long)c->id, c->peer);
        gw_conn_close(c);
        return;
    }
    while (!c->closing) {
        const uint8_t *payload;
        size_t len;
        ts_status_t st = ts_frame_reader_next(&c->reader, &payload, &len);
        if (st == TS_ERR_AGAIN) break;
        if (st == TS_ERR_OVERSIZED) {
            gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_OVERSIZED, true,
                             "frame larger than the maximum of %zu bytes", c->reader.max_frame);
            break;
        }
        if (st != TS_OK) {
            gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_MALFORMED, true, "unreadable frame: %s",
                             ts_status_str(st));
            break;
        }
        c->frames_in++;
        gw_session_on_frame(c, payload, len);
    }
    if (c->frames_in != frames_before && !c->closing)
        gw_tl_put(c->gw, c, GW_TL_IDLE,
                  ts_mono_us() + (uint64_t)c->gw->cfg->gateway_idle_timeout_s * 1000000ull);
}

static void format_peer(uv_tcp_t *tcp, char *buf, size_t cap, char *ipbuf, size_t ipcap)
{
    struct sockaddr_storage ss;
    int n = sizeof ss;
    char host[64] = "?";
    int port = 0;
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &n) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, host, sizeof host);
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, host, sizeof host);
            port = ntohs(a->sin6_port);
        }
    }
    snprintf(buf, cap, "%s:%d", host, port);
    snprintf(ipbuf, ipcap, "%s", host);
}

void gw_conn_on_connection(uv_stream_t *server, int status)
{
    gw_t *gw = server->data;
    if (status < 0) {
        ts_warn("accept: %s", uv_strerror(status));
        return;
    }
    gw_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        ts_error("accept: out of memory");
        return;
    }
    if (uv_tcp_init(gw->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->gw = gw;
    c->id = ++gw->next_conn_id;
    if (gw_ws_is_server(gw, server) && !gw_ws_attach(c)) {
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    ts_frame_reader_init(&c->reader, (size_t)gw->cfg->gateway_max_frame);
    gw_session_init(c);
    c->next = gw->conns;
    if (gw->conns != NULL) gw->conns->prev = c;
    gw->conns = c;
    gw->nconns++;
    gw->nopen++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        gw_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, (unsigned)gw->cfg->gateway_keepalive_s);
    int sndbuf = GW_SOCKET_SNDBUF;
    uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf);
    char ip[64];
    format_peer(&c->tcp, c->peer, sizeof c->peer, ip, sizeof ip);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        gw_conn_close(c);
        return;
    }
    uint64_t now = ts_mono_us();
    gw_tl_put(gw, c, GW_TL_HELLO, now + (uint64_t)gw->cfg->gateway_hello_timeout_s * 1000000ull);
    gw_tl_put(gw, c, GW_TL_IDLE, now + (uint64_t)gw->cfg->gateway_idle_timeout_s * 1000000ull);
    if (gw->stopping) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true, "gateway is shutting down");
        return;
    }
    /* only joined players count against gateway.max_clients (session.c) */
    if (!ip_count(gw, c, ip)) {
        gw_session_error(c, TESSERA__V1__ERROR_CODE__ERROR_UNAVAILABLE, true,
                         "too many connections from %s (gateway.max_conns_per_ip = %lld)", ip,
                         (long long)gw->cfg->gateway_max_conns_per_ip);
        return;
    }
    ts_debug("conn %llu from %s", (unsigned long long)c->id, c->peer);
}

ts_status_t gw_listen(gw_t *gw, const char *hostport)
{
    char host[256];
    int port = 0;
    if (ts_config_split_hostport(hostport, host, sizeof host, &port) != TS_OK || port < 0 || port > 65535) {
        ts_error("gateway.listen: '%s' is not host:port", hostport);
        return TS_ERR_CONFIG;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        ts_error("gateway.listen: '%s' is not a numeric IPv4/IPv6 address", host);
        return TS_ERR_CONFIG;
    }
    if (uv_tcp_init(gw->loop, &gw->server) != 0) return TS_ERR_IO;
    gw->server.data = gw;
    gw->server_open = true;
    int rc = uv_tcp_bind(&gw->server, (const struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&gw->server, 511, gw_conn_on_connection);
    if (rc != 0) {
        ts_error("cannot listen on %s: %s", hostport, uv_strerror(rc));
        return TS_ERR_IO;
    }
    struct sockaddr_storage bound;
    int n = sizeof bound;
    if (uv_tcp_getsockname(&gw->server, (struct sockaddr *)&bound, &n) == 0) {
        if (bound.ss_family == AF_INET)
            gw->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        else if (bound.ss_family == AF_INET6)
            gw->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    }
    ts_info("listening on %s:%d", host, gw->port);
    return TS_OK;
}

void gw_listen_close(gw_t *gw)
{
    if (!gw->server_open) return;
    gw->server_open = false;
    uv_close((uv_handle_t *)&gw->server, NULL);
}
