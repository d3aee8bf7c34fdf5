/* Fan-out writers: the system calls of one fan-out, spread over threads.
 *
 * A fan-out ends with one writev per client, and on a loaded gateway those
 * calls are most of its CPU (the kernel's TCP send path and the wake-up of
 * each reader). The loop stages each client's write here as it builds it
 * (its socket and its pieces: shared encoded blocks referenced, the
 * per-client heads copied). Every GW_WRITERS_BATCH staged writes form a
 * batch that the helper threads (gateway.fanout_threads) start writing at
 * once, while the loop builds the next clients' frames; gw_writers_run,
 * at the end of the fan-out, writes what is left on the calling thread,
 * helps with what is not taken yet, and returns when every write is done.
 * The loop then handles what a socket did not take (queued with uv_write,
 * as a write that did not go whole always was).
 *
 * The sockets are non-blocking, so no write waits; gw_writers_run waits
 * only for the other threads' share of the same work. A helper touches a
 * batch only once it is sealed and only until the run returns; everything
 * else stays the loop thread's. No gw_t here, so it can be tested alone. */
#ifndef TS_GATEWAY_WRITERS_H
#define TS_GATEWAY_WRITERS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "tessera/status.h"

/* Staged writes per batch: a fan-out with fewer is written by the calling
 * thread alone (waking a helper would cost more than it saves). */
#define GW_WRITERS_BATCH 32
/* Most helper threads (gateway.fanout_threads). */
#define GW_WRITERS_MAX_THREADS 8

typedef struct gw_writers gw_writers_t;

typedef struct {
    void *owner;                /* the caller's: the connection */
    int fd;                     /* -1: skipped by gw_writers_run (taken stays 0) */
    const struct iovec *pieces; /* its pieces (valid until the reset) */
    size_t npieces;             /* how many */
    size_t total;               /* bytes in its pieces */
    ssize_t taken;              /* after a run: bytes the socket took, or -errno (never -EAGAIN: 0) */
} gw_wjob_t;

/* threads: helper threads (0: every write on the calling thread). NULL when
 * out of memory or a thread could not start. */
gw_writers_t *gw_writers_new(int threads);
void gw_writers_free(gw_writers_t *w);

/* Stages one write of `total` bytes in n pieces. A piece inside one of the
 * nscratch `scratch` ranges (the caller's buffers it reuses for the next
 * client) is copied; any other is referenced and must stay valid and
 * unchanged until gw_writers_run returns. The write may start at once (on
 * a helper), so the caller must not write to the socket otherwise until
 * then. */
ts_status_t gw_writers_stage(gw_writers_t *w, void *owner, int fd, const struct iovec *pieces, size_t n,
                             size_t total, const struct iovec *scratch, size_t nscratch);

/* Performs every staged write; returns when all are done. */
void gw_writers_run(gw_writers_t *w);

/* Helper threads running. */
int gw_writers_threads(const gw_writers_t *w);

/* The staged writes, in staging order (results valid after gw_writers_run). */
size_t gw_writers_count(const gw_writers_t *w);
gw_wjob_t *gw_writers_job(gw_writers_t *w, size_t i);

/* Forgets the staged writes (keeps the memory for the next fan-out). */
void gw_writers_reset(gw_writers_t *w);

/* Writes one job's pieces to its socket: bytes taken or -errno (EAGAIN: 0).
 * What gw_writers_run does per job; exposed for tests. */
ssize_t gw_writers_write(int fd, const struct iovec *pieces, size_t n);

#endif
