/* Fan-out writers (see writers.h).
 *
 * The staged writes are kept in batches of GW_WRITERS_BATCH. A full batch
 * is sealed: its pointer goes on the list under the mutex and a helper is
 * woken; from then on the loop thread no longer changes it. A helper claims
 * the next sealed batch under the mutex, writes it without the mutex and
 * counts it done. gw_writers_run seals the last batch, takes unclaimed ones
 * itself, and waits until every sealed batch is done (not until every
 * helper woke up: one scheduled late finds nothing left). Copied pieces
 * live in fixed-size arena chunks that never move. */
#include "writers.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tessera/util.h"

/* Pieces per writev (Linux's IOV_MAX). */
#define WRITEV_MAX 1024
/* Arena chunk size; a longer copy gets a chunk of its own. */
#define ARENA_CHUNK 65536
/* Arena chunks and batches kept between fan-outs (more are freed). */
#define KEEP 64

typedef struct achunk {
    struct achunk *next;
    size_t cap, len;
    uint8_t data[];
} achunk_t;

typedef struct batch {
    struct batch *next_free;
    size_t njobs;
    gw_wjob_t jobs[GW_WRITERS_BATCH];
    struct iovec *pieces;
    size_t npieces, pieces_cap;
} batch_t;

struct gw_writers {
    int nthreads;
    pthread_t threads[GW_WRITERS_MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t go;   /* a batch was sealed, or stop */
    pthread_cond_t done; /* a batch was written */
    bool stop;

    /* under mu: this fan-out's batches in staging order; [0, sealed) are
     * sealed, [0, claimed) were claimed, `finished` of them are written */
    batch_t **batches;
    size_t nbatches, batches_cap;
    size_t sealed, claimed, finished;

    /* the loop thread's: [0, closed) take no more writes */
    size_t closed;
    size_t njobs;
    batch_t *free_batches;
    size_t nfree_batches;
    achunk_t *arena; /* current chunk first */
    achunk_t *spare; /* emptied chunks */
    size_t nspare;
};

ssize_t gw_writers_write(int fd, const struct iovec *pieces, size_t n)
{
    size_t done = 0, took = 0;
    while (done < n) {
        size_t k = n - done > WRITEV_MAX ? WRITEV_MAX : n - done;
        size_t want = 0;
        for (size_t i = 0; i < k; i++)
            want += pieces[done + i].iov_len;
        ssize_t w;
        do
            w = writev(fd, pieces + done, (int)k);
        while (w < 0 && errno == EINTR);
        if (w < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? (ssize_t)took : -errno;
        took += (size_t)w;
        if ((size_t)w < want) break;
        done += k;
    }
    return (ssize_t)took;
}

static void write_batch(batch_t *b)
{
    for (size_t i = 0; i < b->njobs; i++) {
        gw_wjob_t *j = &b->jobs[i];
        if (j->fd >= 0) j->taken = gw_writers_write(j->fd, j->pieces, j->npieces);
    }
}

/* Claims and writes sealed batches until none is left; called with mu
 * held, returns with it held. */
static void work(gw_writers_t *w)
{
    while (w->claimed < w->sealed) {
        batch_t *b = w->batches[w->claimed++];
        pthread_mutex_unlock(&w->mu);
        write_batch(b);
        pthread_mutex_lock(&w->mu);
        if (++w->finished == w->sealed) pthread_cond_signal(&w->done);
    }
}

static void *helper_main(void *arg)
{
    gw_writers_t *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        work(w);
        if (!w->stop) pthread_cond_wait(&w->go, &w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

gw_writers_t *gw_writers_new(int threads)
{
    if (threads < 0) threads = 0;
    if (threads > GW_WRITERS_MAX_THREADS) threads = GW_WRITERS_MAX_THREADS;
    gw_writers_t *w = calloc(1, sizeof *w);
    if (w == NULL) return NULL;
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        return NULL;
    }
    pthread_cond_init(&w->go, NULL);
    pthread_cond_init(&w->done, NULL);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&w->threads[i], NULL, helper_main, w) != 0) {
            gw_writers_free(w);
            return NULL;
        }
        w->nthreads++;
    }
    return w;
}

static void free_batch(batch_t *b)
{
    free(b->pieces);
    free(b);
}

void gw_writers_free(gw_writers_t *w)
{
    if (w == NULL) return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->go);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->nthreads; i++)
        pthread_join(w->threads[i], NULL);
    pthread_cond_destroy(&w->go);
    pthread_cond_destroy(&w->done);
    pthread_mutex_destroy(&w->mu);
    gw_writers_reset(w);
    while (w->free_batches != NULL) {
        batch_t *b = w->free_batches;
        w->free_batches = b->next_free;
        free_batch(b);
    }
    while (w->spare != NULL) {
        achunk_t *c = w->spare;
        w->spare = c->next;
        free(c);
    }
    free(w->batches);
    free(w);
}

/* len bytes of arena that stay where they are until the next reset. */
static uint8_t *arena_alloc(gw_writers_t *w, size_t len)
{
    achunk_t *c = w->arena;
    if (c != NULL && c->cap - c->len >= len) {
        uint8_t *p = c->data + c->len;
        c->len += len;
        return p;
    }
    if (len <= ARENA_CHUNK && w->spare != NULL) {
        c = w->spare;
        w->spare = c->next;
        w->nspare--;
    } else {
        size_t cap = len > ARENA_CHUNK ? len : ARENA_CHUNK;
        c = malloc(sizeof *c + cap);
        if (c == NULL) return NULL;
        c->cap = cap;
    }
    c->len = len;
    c->next = w->arena;
    w->arena = c;
    return c->data;
}

static bool in_scratch(const struct iovec *p, const struct iovec *scratch, size_t nscratch)
{
    const uint8_t *b = p->iov_base;
    for (size_t i = 0; i < nscratch; i++) {
        const uint8_t *s = scratch[i].iov_base;
        if (s != NULL && b >= s && b < s + scratch[i].iov_len) return true;
    }
    return false;
}

/* The open batch (the last, not closed), a new one if there is none. */
static batch_t *open_batch(gw_writers_t *w)
{
    if (w->nbatches > w->closed) return w->batches[w->nbatches - 1];
    batch_t *b = w->free_batches;
    if (b != NULL) {
        w->free_batches = b->next_free;
        w->nfree_batches--;
    } else if ((b = calloc(1, sizeof *b)) == NULL) {
        return NULL;
    }
    b->njobs = b->npieces = 0;
    pthread_mutex_lock(&w->mu); /* helpers read the list */
    bool ok = ts_grow((void **)&w->batches, &w->batches_cap, w->nbatches + 1, sizeof *w->batches);
    if (ok) w->batches[w->nbatches++] = b;
    pthread_mutex_unlock(&w->mu);
    if (!ok) {
        free_batch(b);
        return NULL;
    }
    return b;
}

/* No more writes go into the open batch: its jobs' pieces become pointers
 * (b->pieces moves no more); with helpers, it is theirs to take. */
static void close_batch(gw_writers_t *w)
{
    if (w->nbatches == w->closed) return;
    batch_t *b = w->batches[w->nbatches - 1];
    for (size_t i = 0; i < b->njobs; i++)
        b->jobs[i].pieces = b->pieces + (size_t)(uintptr_t)b->jobs[i].pieces;
    w->closed = w->nbatches;
}

static void seal(gw_writers_t *w)
{
    pthread_mutex_lock(&w->mu);
    w->sealed = w->closed;
    pthread_cond_signal(&w->go);
    pthread_mutex_unlock(&w->mu);
}

ts_status_t gw_writers_stage(gw_writers_t *w, void *owner, int fd, const struct iovec *pieces, size_t n,
                             size_t total, const struct iovec *scratch, size_t nscratch)
{
    batch_t *b = open_batch(w);
    if (b == NULL || !ts_grow((void **)&b->pieces, &b->pieces_cap, b->npieces + n, sizeof *b->pieces))
        return TS_ERR_NOMEM;
    size_t first = b->npieces;
    for (size_t i = 0; i < n; i++) {
        struct iovec p = pieces[i];
        if (p.iov_len > 0 && in_scratch(&p, scratch, nscratch)) {
            uint8_t *copy = arena_alloc(w, p.iov_len);
            if (copy == NULL) {
                b->npieces = first;
                return TS_ERR_NOMEM;
            }
            memcpy(copy, p.iov_base, p.iov_len);
            p.iov_base = copy;
        }
        b->pieces[b->npieces++] = p;
    }
    /* pieces holds the index until the batch is closed (b->pieces may move) */
    b->jobs[b->njobs++] = (gw_wjob_t){.owner = owner,
                                      .fd = fd,
                                      .pieces = (const struct iovec *)(uintptr_t)first,
                                      .npieces = n,
                                      .total = total,
                                      .taken = 0};
    w->njobs++;
    if (b->njobs == GW_WRITERS_BATCH) {
        close_batch(w);
        if (w->nthreads > 0) seal(w);
    }
    return TS_OK;
}

void gw_writers_run(gw_writers_t *w)
{
    if (w->njobs == 0) return;
    close_batch(w);
    /* first help with the sealed batches (staged first), then the rest:
     * the last, partial batch, or every batch when there is no helper */
    if (w->sealed > 0) {
        pthread_mutex_lock(&w->mu);
        work(w);
        pthread_mutex_unlock(&w->mu);
    }
    for (size_t i = w->sealed; i < w->nbatches; i++)
        write_batch(w->batches[i]);
    if (w->sealed > 0) {
        pthread_mutex_lock(&w->mu);
        while (w->finished < w->sealed)
            pthread_cond_wait(&w->done, &w->mu);
        pthread_mutex_unlock(&w->mu);
    }
}

int gw_writers_threads(const gw_writers_t *w)
{
    return w->nthreads;
}

size_t gw_writers_count(const gw_writers_t *w)
{
    return w->njobs;
}

gw_wjob_t *gw_writers_job(gw_writers_t *w, size_t i)
{
    /* every batch but the last is full */
    if (i >= w->njobs) return NULL;
    return &w->batches[i / GW_WRITERS_BATCH]->jobs[i % GW_WRITERS_BATCH];
}

void gw_writers_reset(gw_writers_t *w)
{
    pthread_mutex_lock(&w->mu); /* the helpers are idle: every sealed batch is done */
    for (size_t i = 0; i < w->nbatches; i++) {
        batch_t *b = w->batches[i];
        if (w->nfree_batches < KEEP) {
            b->next_free = w->free_batches;
            w->free_batches = b;
            w->nfree_batches++;
        } else {
            free_batch(b);
        }
    }
    w->nbatches = w->closed = w->sealed = w->claimed = w->finished = 0;
    pthread_mutex_unlock(&w->mu);
    w->njobs = 0;
    while (w->arena != NULL) {
        achunk_t *c = w->arena;
        w->arena = c->next;
        if (c->cap == ARENA_CHUNK && w->nspare < KEEP) {
            c->next = w->spare;
            w->spare = c;
            w->nspare++;
        } else {
            free(c);
        }
    }
}
