/* TLS to Redis for a hiredis without TLS (Debian's 0.14).
 *
 * hiredis 0.14 reads and writes a plain file descriptor. To speak TLS it is
 * given one end of a socketpair; a thread of this module owns the other end
 * and the TCP connection to Redis, and moves bytes between the two through
 * OpenSSL (SSL_write what hiredis wrote, SSL_read what Redis sent). The
 * handshake (server certificate checked against the CA and the host name or
 * IP, optional client certificate) completes before the descriptor is
 * handed out, so a refused certificate is an error of the connect call.
 *
 * Invariants: the thread ends when either side closes or fails (it then
 * closes its end, so hiredis sees the connection drop as with plain TCP);
 * ts_redis_tls_close() closes hiredis's end first (if still open), joins the
 * thread and frees everything, so nothing outlives the registry connection. */
#include "redis_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tessera/log.h"
#include "tessera/net.h"

#define PUMP_BUF 16384

struct ts_redis_tls {
    SSL_CTX *ctx;
    SSL *ssl;
    int tcp;  /* to Redis */
    int pump; /* our end of the socketpair */
    pthread_t thread;
    bool started;
};

static void ssl_err(char *err, size_t cap, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, cap, "%s%s%s", what, buf[0] ? ": " : "", buf);
    ERR_clear_error();
}

typedef struct {
    char *b;
    size_t off, len;
} pump_buf_t;

/* After a TLS call returned rc <= 0: adds the socket event it waits for
 * to *ev and returns true, or false when the connection is over. */
static bool tls_wants(SSL *ssl, int rc, short *ev)
{
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ) *ev |= POLLIN;
    if (e == SSL_ERROR_WANT_WRITE) *ev |= POLLOUT;
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

/* Moves bytes both ways without ever blocking on one side while the other
 * waits: both descriptors are non-blocking, each direction has its own
 * buffer, and a TLS call that wants to read or write says which event to
 * wait for. (A blocking pump deadlocks: TLS 1.3 session tickets make the
 * socket readable with no application data behind them, and a long
 * pipeline fills one direction while the other is not read.) */
static void *pump_main(void *arg)
{
    ts_redis_tls_t *t = arg;
    pump_buf_t up = {.b = malloc(PUMP_BUF)}, down = {.b = malloc(PUMP_BUF)};
    fcntl(t->pump, F_SETFL, fcntl(t->pump, F_GETFL) | O_NONBLOCK);
    fcntl(t->tcp, F_SETFL, fcntl(t->tcp, F_GETFL) | O_NONBLOCK);
    bool ok = up.b && down.b;
    while (ok) {
        bool progress = false;
        short ev_pump = 0, ev_tcp = 0;
        /* hiredis -> buffer */
        if (up.len == 0) {
            ssize_t n = read(t->pump, up.b, PUMP_BUF);
            if (n > 0) {
                up.off = 0;
                up.len = (size_t)n;
                progress = true;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                break; /* hiredis closed its end */
            } else {
                ev_pump |= POLLIN;
            }
        }
        /* buffer -> Redis */
        if (up.len > up.off) {
            int n = SSL_write(t->ssl, up.b + up.off, (int)(up.len - up.off));
            if (n > 0) {
                up.off += (size_t)n;
                if (up.off == up.len) up.off = up.len = 0;
                progress = true;
            } else if (!tls_wants(t->ssl, n, &ev_tcp)) {
                break;
            }
        }
        /* Redis -> buffer */
        if (down.len == 0) {
            int n = SSL_read(t->ssl, down.b, PUMP_BUF);
            if (n > 0) {
                down.off = 0;
                down.len = (size_t)n;
                progress = true;
            } else if (!tls_wants(t->ssl, n, &ev_tcp)) {
                break; /* Redis closed, or TLS failed */
            }
        }
        /* buffer -> hiredis */
        if (down.len > down.off) {
            ssize_t n = write(t->pump, down.b + down.off, down.len - down.off);
            if (n > 0) {
                down.off += (size_t)n;
                if (down.off == down.len) down.off = down.len = 0;
                progress = true;
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                ev_pump |= POLLOUT;
            } else {
                break;
            }
        }
        if (progress) continue;
        struct pollfd p[2] = {{.fd = t->pump, .events = ev_pump}, {.fd = t->tcp, .events = ev_tcp}};
        if (poll(p, 2, -1) < 0 && errno != EINTR) break;
        if ((p[0].revents & (POLLERR | POLLNVAL | POLLHUP)) || (p[1].revents & (POLLERR | POLLNVAL)))
            break; /* hiredis closed its end (a reply it no longer wants), or a socket failed */
    }
    free(up.b);
    free(down.b);
    /* hiredis sees the connection drop */
    shutdown(t->pump, SHUT_RDWR);
    return NULL;
}

void ts_redis_tls_init(void)
{
    /* No OPENSSL_cleanup at exit: run from an atexit handler while libnats
     * and this module both used TLS from their own threads, OpenSSL 3.0
     * crashed freeing its per-thread handler lists. The process is ending;
     * its memory goes with it. This must be the process's first OpenSSL
     * initialisation to count (service start, before any connection). */
    OPENSSL_init_ssl(OPENSSL_INIT_NO_ATEXIT, NULL);
}

ts_status_t ts_redis_tls_open(const char *host, int port, const ts_redis_tls_cfg_t *cfg, int timeout_ms,
                              ts_redis_tls_t **out, int *fd, char *err, size_t errcap)
{
    *out = NULL;
    *fd = -1;
    ts_redis_tls_t *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errcap, "out of memory");
        return TS_ERR_NOMEM;
    }
    t->tcp = t->pump = -1;
    int pair[2] = {-1, -1};
    ts_status_t st = TS_ERR_CONFIG;
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx) {
        ssl_err(err, errcap, "cannot create a TLS context");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    if (cfg && cfg->ca && cfg->ca[0]) {
        if (SSL_CTX_load_verify_locations(t->ctx, cfg->ca, NULL) != 1) {
            ssl_err(err, errcap, "cannot load redis.tls_ca");
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        ssl_err(err, errcap, "cannot load the system's CA certificates");
        goto fail;
    }
    if (cfg && cfg->cert && cfg->cert[0]) {
        if (SSL_CTX_use_certificate_chain_file(t->ctx, cfg->cert) != 1) {
            ssl_err(err, errcap, "cannot load redis.tls_cert");
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(t->ctx, cfg->key && cfg->key[0] ? cfg->key : cfg->cert,
                                        SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(t->ctx) != 1) {
            ssl_err(err, errcap, "cannot load redis.tls_key (or it does not match redis.tls_cert)");
            goto fail;
        }
    }
    st = TS_ERR_UNAVAILABLE;
    ts_status_t cst;
    t->tcp = ts_net_connect(host, port, ts_net_deadline(timeout_ms), &cst);
    if (t->tcp < 0) {
        snprintf(err, errcap, "connect to %s:%d failed: %s", host, port,
                 cst == TS_ERR_TIMEOUT ? "timed out" : "unreachable or refused");
        goto fail;
    }
    /* the handshake blocks, within the same time */
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(t->tcp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(t->tcp, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    t->ssl = SSL_new(t->ctx);
    if (!t->ssl) {
        ssl_err(err, errcap, "cannot create a TLS session");
        goto fail;
    }
    SSL_set_fd(t->ssl, t->tcp);
    /* the certificate must name the host we asked for: an IP or a DNS name */
    X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(vp, host);
    } else {
        SSL_set_tlsext_host_name(t->ssl, host);
        X509_VERIFY_PARAM_set1_host(vp, host, 0);
    }
    if (SSL_connect(t->ssl) != 1) {
        long v = SSL_get_verify_result(t->ssl);
        /* a certificate was checked and refused (not: no TLS at all) */
        if (v != X509_V_OK && v != X509_V_ERR_UNSPECIFIED) {
            snprintf(err, errcap, "TLS handshake with %s:%d failed: certificate %s", host, port,
                     X509_verify_cert_error_string(v));
            ERR_clear_error();
            st = TS_ERR_CONFIG;
        } else {
            ssl_err(err, errcap, "TLS handshake failed");
        }
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        snprintf(err, errcap, "socketpair: %s", strerror(errno));
        goto fail;
    }
    t->pump = pair[0];
    if (pthread_create(&t->thread, NULL, pump_main, t) != 0) {
        snprintf(err, errcap, "cannot start the TLS thread");
        goto fail;
    }
    t->started = true;
    *out = t;
    *fd = pair[1];
    return TS_OK;

fail:
    if (pair[1] >= 0) close(pair[1]);
    ts_redis_tls_close(t);
    return st;
}

void ts_redis_tls_close(ts_redis_tls_t *t)
{
    if (!t) return;
    if (t->started) {
        /* wakes the thread if hiredis's end is still open somewhere, or if
         * it waits for the rest of a record from a stalled Redis */
        shutdown(t->pump, SHUT_RDWR);
        shutdown(t->tcp, SHUT_RD);
        pthread_join(t->thread, NULL);
    }
    if (t->ssl) {
        if (t->started) SSL_shutdown(t->ssl);
        SSL_free(t->ssl);
    }
    if (t->ctx) SSL_CTX_free(t->ctx);
    if (t->tcp >= 0) close(t->tcp);
    if (t->pump >= 0) close(t->pump);
    free(t);
}
