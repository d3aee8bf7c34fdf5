/* Blocking sockets with deadlines: a TCP connect and a wait for one event,
 * shared by the client library and the Redis TLS connection. */
#ifndef TS_NET_H
#define TS_NET_H

#include <stdint.h>

#include "tessera/status.h"

/* The ts_mono_us deadline timeout_ms from now; UINT64_MAX when
 * timeout_ms < 0 (no deadline). */
uint64_t ts_net_deadline(int64_t timeout_ms);

/* Waits for `events` (poll) on fd until deadline_us: TS_OK when ready,
 * TS_ERR_TIMEOUT, or TS_ERR_IO. */
ts_status_t ts_net_wait(int fd, short events, uint64_t deadline_us);

/* A blocking TCP connection to host:port (each address it resolves to in
 * turn) made before deadline_us, with TCP_NODELAY. Returns the descriptor,
 * or -1 with *st TS_ERR_TIMEOUT (the deadline passed) or
 * TS_ERR_UNAVAILABLE (no address, refused, unreachable). */
int ts_net_connect(const char *host, int port, uint64_t deadline_us, ts_status_t *st);

#endif
