/* TLS to Redis for hiredis 0.14 (see redis_tls.c): a socketpair whose other
 * end a thread moves through OpenSSL to and from Redis. */
#ifndef TS_REDIS_TLS_H
#define TS_REDIS_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "tessera/status.h"

typedef struct {
    const char *ca;   /* PEM CA bundle; NULL or "": the system's */
    const char *cert; /* client certificate (PEM); NULL or "": none */
    const char *key;  /* its private key (PEM); NULL or "": in cert */
} ts_redis_tls_cfg_t;

typedef struct ts_redis_tls ts_redis_tls_t;

/* Initialises OpenSSL without its exit-time cleanup (see redis_tls.c). */
void ts_redis_tls_init(void);

/* Connects to host:port, completes the TLS handshake (the server's
 * certificate must be valid for host) and returns in *fd a descriptor that
 * speaks plain RESP (give it to redisConnectFd). TS_ERR_CONFIG when a
 * certificate or key is refused, TS_ERR_UNAVAILABLE when Redis cannot be
 * reached; err says why. */
ts_status_t ts_redis_tls_open(const char *host, int port, const ts_redis_tls_cfg_t *cfg, int timeout_ms,
                              ts_redis_tls_t **out, int *fd, char *err, size_t errcap);
/* After the descriptor was closed (redisFree): ends the thread, frees all. */
void ts_redis_tls_close(ts_redis_tls_t *t);

#endif
