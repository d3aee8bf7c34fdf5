/* Worker: binds the cells the registry gives it and runs the tick loop.
 *
 * Each bound cell has an ordered JetStream consumer on <cell>.input that
 * starts after the zone's last applied stream sequence. Its callback (a
 * nats.c thread) copies the message into the inbox, tagged with the binding's
 * generation so a message of a binding that was dropped or re-subscribed
 * since is ignored. A cell is bound from a handover's pending zone, or from
 * its latest checkpoint plus a replay of the input stream after it (crash
 * recovery is just that). Everything else happens on the tick thread. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tessera/log.h"
#include "tessera/service.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define DRAIN_TIMEOUT_MS 30000

ts_binding_t *ts_worker_find_binding(ts_worker_t *w, const ts_cell_t *c)
{
    for (size_t i = 0; i < w->nbind; i++)
        if (ts_cell_eq(&w->bindings[i].zone->cell, c)) return &w->bindings[i];
    return NULL;
}

const ts_cell_entry_t *ts_worker_find_entry(const ts_worker_t *w, const ts_cell_t *c)
{
    for (size_t i = 0; i < w->ncells; i++)
        if (ts_cell_eq(&w->cells[i].cell, c)) return &w->cells[i];
    return NULL;
}

static bool inbox_push(ts_inbox_t *in, const ts_inbox_msg_t *m)
{
    if (in->n == in->cap) {
        size_t ncap = in->cap ? in->cap * 2 : 256;
        ts_inbox_msg_t *v = realloc(in->v, ncap * sizeof(*v));
        if (!v) return false;
        in->v = v;
        in->cap = ncap;
    }
    in->v[in->n++] = *m;
    return true;
}

void ts_inbox_free(ts_inbox_t *in)
{
    for (size_t i = 0; i < in->n; i++) free(in->v[i].data);
    free(in->v);
    *in = (ts_inbox_t){0};
}

static void on_input(void *ud, const ts_bus_msg_t *m)
{
    ts_sub_ctx_t *ctx = ud;
    ts_worker_t *w = ctx->w;
    size_t len = ts_bus_msg_len(m);
    ts_inbox_msg_t msg = {ctx->cell, 0, ts_bus_msg_stream_seq(m), malloc(len ? len : 1), len};
    if (!msg.data) {
        ts_error("out of memory queueing input for a cell");
        return;
    }
    memcpy(msg.data, ts_bus_msg_data(m), len);
    pthread_mutex_lock(&w->mu);
    msg.gen = ctx->gen;
    bool ok = inbox_push(ctx->hold ? &ctx->held : &w->inbox, &msg);
    pthread_mutex_unlock(&w->mu);
    if (!ok) {
        free(msg.data);
        ts_error("out of memory queueing input for a cell");
    }
}

static void on_registry(void *ud, const ts_bus_msg_t *m)
{
    ts_worker_t *w = ud;
    atomic_store(&w->reg_dirty, true);
    pthread_mutex_lock(&w->mu);
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

static void add_stats(ts_zone_stats_t *dst, const ts_zone_stats_t *s)
{
    dst->applied += s->applied;
    dst->forwarded += s->forwarded;
    dst->duplicates += s->duplicates;
    dst->dropped += s->dropped;
    dst->transfers_in += s->transfers_in;
    dst->transfers_out += s->transfers_out;
}

ts_status_t ts_worker_subscribe_input(ts_worker_t *w, const ts_cell_t *cell, uint64_t after_seq, bool hold,
                                      ts_sub_ctx_t **ctx, ts_bus_sub_t **sub)
{
    ts_sub_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) return TS_ERR_NOMEM;
    pthread_mutex_lock(&w->mu);
    *c = (ts_sub_ctx_t){.w = w, .cell = *cell, .gen = ++w->next_gen, .hold = hold};
    pthread_mutex_unlock(&w->mu);
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), cell, TS_SUBJ_INPUT);
    ts_status_t st = ts_bus_consume(w->bus, w->world.id, subj, after_seq ? after_seq + 1 : 0, on_input, c, sub);
    if (st != TS_OK) {
        ts_error("cannot consume %s: %s", subj, ts_status_str(st));
        free(c);
        return st;
    }
    *ctx = c;
    return TS_OK;
}

void ts_worker_free_ctx(ts_sub_ctx_t *ctx)
{
    if (!ctx) return;
    ts_inbox_free(&ctx->held);
    free(ctx);
}

/* Loads the cell's latest checkpoint into z, if there is one. */
static void load_checkpoint(ts_worker_t *w, ts_zone_t *z)
{
    char stream[64], subj[TS_SUBJECT_MAX];
    ts_bus_ckpt_stream(stream, sizeof(stream), w->world.id);
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_CHECKPOINT);
    ts_bus_msg_t *m = NULL;
    ts_status_t st = ts_bus_last_msg(w->bus, stream, subj, &m);
    if (st != TS_OK) {
        if (st != TS_ERR_NOT_FOUND) ts_warn("cell %s: cannot read checkpoint: %s", z->key, ts_status_str(st));
        return;
    }
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (cp && ts_zone_load_checkpoint(z, cp, false, w->tick) == TS_OK) {
        ts_info("cell %s: loaded checkpoint at seq %" PRIu64 " (%zu entities, epoch %" PRIu64 "); replaying after it",
                z->key, cp->last_applied_seq, cp->n_entities, cp->epoch);
        w->stats.recovered++;
    } else {
        ts_warn("cell %s: undecodable checkpoint ignored; replaying the whole stream", z->key);
    }
    if (cp) tessera__v1__checkpoint__free_unpacked(cp, NULL);
    ts_bus_msg_destroy(m);
}

static ts_binding_t *new_binding(ts_worker_t *w)
{
    if (w->nbind == w->cap_bind) {
        size_t ncap = w->cap_bind ? w->cap_bind * 2 : 16;
        ts_binding_t *v = realloc(w->bindings, ncap * sizeof(*v));
        if (!v) return NULL;
        w->bindings = v;
        w->cap_bind = ncap;
    }
    ts_binding_t *b = &w->bindings[w->nbind];
    memset(b, 0, sizeof(*b));
    return b;
}

ts_status_t ts_worker_adopt(ts_worker_t *w, ts_zone_t *zone, uint64_t epoch, ts_bus_sub_t *sub, ts_sub_ctx_t *ctx)
{
    ts_binding_t *b = new_binding(w);
    if (!b) {
        ts_bus_sub_destroy(sub);
        ts_worker_free_ctx(ctx);
        ts_zone_destroy(zone);
        return TS_ERR_NOMEM;
    }
    zone->epoch = epoch;
    b->zone = zone;
    b->sub = sub;
    b->ctx = ctx;
    b->bound_us = ts_now_us();
    pthread_mutex_lock(&w->mu);
    b->gen = ctx->gen;
    ts_inbox_t held = ctx->held;
    ctx->held = (ts_inbox_t){0};
    ctx->hold = false;
    pthread_mutex_unlock(&w->mu);
    w->nbind++;
    ts_worker_apply_msgs(w, zone, &held);
    return TS_OK;
}

ts_status_t ts_worker_bind(ts_worker_t *w, const ts_cell_t *cell, uint64_t epoch)
{
    ts_zone_t *zone = NULL;
    ts_status_t st = ts_zone_create(&zone, cell, epoch, &w->world, w->cfg->worker_max_speed);
    if (st != TS_OK) return st;
    load_checkpoint(w, zone);
    ts_sub_ctx_t *ctx = NULL;
    ts_bus_sub_t *sub = NULL;
    st = ts_worker_subscribe_input(w, cell, zone->last_applied_seq, false, &ctx, &sub);
    if (st != TS_OK) {
        ts_zone_destroy(zone);
        return st;
    }
    ts_info("cell %s: bound at epoch %" PRIu64 " from checkpoint/replay, consuming after seq %" PRIu64, zone->key,
            epoch, zone->last_applied_seq);
    return ts_worker_adopt(w, zone, epoch, sub, ctx);
}

void ts_worker_unbind(ts_worker_t *w, ts_binding_t *b)
{
    ts_info("cell %s: unbound (epoch %" PRIu64 ", last applied seq %" PRIu64 ")", b->zone->key, b->zone->epoch,
            b->zone->last_applied_seq);
    ts_bus_sub_destroy(b->sub);
    add_stats(&w->stats.zones, &b->zone->stats);
    ts_zone_destroy(b->zone);
    ts_worker_free_ctx(b->ctx);
    ts_inbox_free(&b->held);
    *b = w->bindings[--w->nbind];
}

void ts_worker_sync_registry(ts_worker_t *w)
{
    ts_cell_entry_t *cells = NULL;
    size_t n = 0;
    uint64_t version = 0;
    if (ts_registry_version(w->reg, w->world.id, &version) != TS_OK ||
        ts_registry_cells(w->reg, w->world.id, &cells, &n) != TS_OK) {
        ts_warn("registry unreachable; keeping the cells I have");
        return;
    }
    free(w->cells);
    w->cells = cells;
    w->ncells = n;
    w->reg_version = version;

    for (size_t i = 0; i < w->nbind;) {
        ts_binding_t *b = &w->bindings[i];
        const ts_cell_entry_t *e = ts_worker_find_entry(w, &b->zone->cell);
        if (!e || strcmp(e->owner, w->id) != 0 || e->state == TS_CELL_RETIRED || e->epoch < b->zone->epoch) {
            if (e && strcmp(e->owner, w->id) != 0)
                ts_info("cell %s: the registry gives it to %s at epoch %" PRIu64 "; letting go", b->zone->key,
                        e->owner, e->epoch);
            ts_worker_unbind(w, b);
            continue;
        }
        if (e->epoch > b->zone->epoch) {
            /* someone else owned it in between: what we hold is stale */
            ts_warn("cell %s: epoch moved from %" PRIu64 " to %" PRIu64 " behind my back; rebinding", b->zone->key,
                    b->zone->epoch, e->epoch);
            ts_worker_unbind(w, b);
            continue;
        }
        i++;
    }
    if (w->draining) return;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(cells[i].owner, w->id) != 0 || cells[i].state != TS_CELL_ACTIVE) continue;
        if (ts_worker_find_binding(w, &cells[i].cell)) continue;
        if (!ts_handover_bind_pending(w, &cells[i].cell, cells[i].epoch))
            ts_worker_bind(w, &cells[i].cell, cells[i].epoch);
    }
}

/* Re-reads the registry when a RegistryChange said so or when force is set;
 * with check_version (once a second) asks Redis for the version first, which
 * catches a missed RegistryChange without reading every cell. Otherwise it
 * costs nothing: no Redis round trip on an ordinary tick. */
static void maybe_sync_registry(ts_worker_t *w, bool force, bool check_version)
{
    if (atomic_exchange(&w->reg_dirty, false)) force = true;
    if (!force && check_version) {
        uint64_t version = 0;
        force = ts_registry_version(w->reg, w->world.id, &version) == TS_OK && version != w->reg_version;
    }
    if (force) ts_worker_sync_registry(w);
}

static void apply_msg(ts_worker_t *w, ts_zone_t *z, ts_inbox_msg_t *m)
{
    Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, m->len, m->data);
    if (ib) {
        ts_zone_apply_batch(z, m->stream_seq, ib, w->tick);
        tessera__v1__input_batch__free_unpacked(ib, NULL);
    } else if (m->stream_seq > z->last_applied_seq) {
        ts_warn("cell %s: undecodable input message at stream seq %" PRIu64 " skipped", z->key, m->stream_seq);
        z->last_applied_seq = m->stream_seq;
        z->stats.dropped++;
    }
}

void ts_worker_apply_msgs(ts_worker_t *w, ts_zone_t *z, ts_inbox_t *msgs)
{
    for (size_t i = 0; i < msgs->n; i++) apply_msg(w, z, &msgs->v[i]);
    ts_inbox_free(msgs);
}

void ts_worker_apply_inbox(ts_worker_t *w)
{
    pthread_mutex_lock(&w->mu);
    ts_inbox_t batch = w->inbox;
    w->inbox = (ts_inbox_t){0};
    pthread_mutex_unlock(&w->mu);

    for (size_t i = 0; i < batch.n; i++) {
        ts_inbox_msg_t *m = &batch.v[i];
        ts_binding_t *b = ts_worker_find_binding(w, &m->cell);
        if (b && b->gen == m->gen) {
            if (b->state == TS_BIND_FROZEN) {
                /* after s2: the target applies it, unless the handover aborts */
                if (inbox_push(&b->held, m)) continue;
                ts_error("cell %s: out of memory holding input during a handover", b->zone->key);
            } else {
                apply_msg(w, b->zone, m);
            }
        }
        free(m->data);
    }
    free(batch.v);
}

ts_status_t ts_worker_create(ts_worker_t **out, const ts_config_t *cfg)
{
    ts_worker_t *w = calloc(1, sizeof(*w));
    if (!w) return TS_ERR_NOMEM;
    w->cfg = cfg;
    ts_strlcpy(w->id, cfg->worker_id, sizeof(w->id));
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&w->reg_dirty, true);
    ts_rng_t rng;
    ts_rng_seed(&rng, ts_now_us() ^ ((uint64_t)getpid() << 32));
    w->boot_nonce = ts_rng_next(&rng);

    char name[128];
    snprintf(name, sizeof(name), "tessera-worker-%s", w->id);
    ts_status_t st = ts_service_connect_bus(cfg, name, TS_SERVICE_CONNECT_MS, &w->bus);
    if (st == TS_OK) st = ts_service_connect_registry(cfg, TS_SERVICE_CONNECT_MS, &w->reg);
    if (st == TS_OK) st = ts_service_wait_world(cfg, w->reg, TS_SERVICE_CONNECT_MS, &w->world);
    if (st != TS_OK) goto fail;
    st = ts_bus_ensure_streams(w->bus, w->world.id, cfg->stream_storage, cfg->stream_max_age_s,
                               (int)cfg->stream_replicas);
    if (st != TS_OK) {
        ts_error("cannot set up JetStream streams: %s", ts_status_str(st));
        goto fail;
    }
    char subj[TS_SUBJECT_MAX];
    ts_subject_registry(subj, sizeof(subj), w->world.id);
    if ((st = ts_bus_subscribe(w->bus, subj, on_registry, w, &w->reg_sub)) != TS_OK) goto fail;
    if ((st = ts_handover_subscribe(w)) != TS_OK) goto fail;
    ts_info("worker %s: nats %s, redis %s, world %u (%dx%d cells of %.0f)", w->id, cfg->nats_url, cfg->redis_url,
            w->world.id, w->world.width, w->world.height, w->world.cell_size);
    *out = w;
    return TS_OK;
fail:
    ts_worker_destroy(w);
    return st;
}

/* Sleeps until the absolute monotonic time `until`, waking early for
 * control requests and registry changes. */
static void wait_until(ts_worker_t *w, const struct timespec *until)
{
    pthread_mutex_lock(&w->mu);
    while (w->nctl == 0 && !atomic_load(&w->reg_dirty)) {
        if (pthread_cond_timedwait(&w->cond, &w->mu, until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&w->mu);
}

static bool past(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

/* Asks the orchestrator to move every cell away (Kubernetes preStop, SIGTERM).
 * Returns false if no orchestrator answered. */
static bool request_drain(ts_worker_t *w)
{
    char subj[TS_SUBJECT_MAX];
    ts_subject_ctl(subj, sizeof(subj), w->world.id, "drain");
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_bus_msg_t *reply = NULL;
    ts_status_t st = ts_bus_request(w->bus, subj, &hdr, w->id, strlen(w->id), 2000, &reply);
    if (st != TS_OK) {
        ts_warn("drain: no orchestrator answered (%s); my cells will be recovered from checkpoints",
                ts_status_str(st));
        return false;
    }
    ts_info("drain: orchestrator says: %.*s", (int)ts_bus_msg_len(reply), (const char *)ts_bus_msg_data(reply));
    ts_bus_msg_destroy(reply);
    return true;
}

static void tick_once(ts_worker_t *w, double dt, uint64_t full_every, uint64_t hb_every, uint64_t ckpt_every)
{
    w->tick++;
    /* after a stall (SIGSTOP, a long GC-like pause) check ownership before acting */
    bool stalled = w->last_hb_us && ts_mono_us() - w->last_hb_us > (uint64_t)w->cfg->orch_hb_ttl_ms * 500ULL;
    maybe_sync_registry(w, stalled, w->tick % full_every == 0);
    ts_handover_poll(w);
    ts_worker_apply_inbox(w);
    for (size_t i = 0; i < w->nbind; i++) {
        ts_binding_t *b = &w->bindings[i];
        if (b->state != TS_BIND_ACTIVE) continue;
        ts_zone_step(b->zone, dt, w->tick);
        ts_worker_publish_departures(w, b->zone);
        ts_worker_publish_outboxes(w, b->zone);
        ts_worker_publish_state(w, b->zone, (w->tick + i) % full_every == 0);
        if ((w->tick + i) % ckpt_every == 0) ts_worker_publish_checkpoint(w, b->zone);
    }
    if (hb_every == 0 || w->tick % hb_every == 0 || stalled) ts_worker_heartbeat(w);
}

ts_status_t ts_worker_run(ts_worker_t *w, volatile sig_atomic_t *stop)
{
    const uint64_t hz = (uint64_t)(w->cfg->worker_tick_hz > 0 ? w->cfg->worker_tick_hz : 20);
    const uint64_t period_ns = 1000000000ULL / hz;
    const double dt = (double)period_ns / 1e9;
    const uint64_t hb_every = (uint64_t)w->cfg->worker_hb_ms * 1000000ULL / period_ns;
    const uint64_t ckpt_ms = w->cfg->worker_checkpoint_ms > 0 ? (uint64_t)w->cfg->worker_checkpoint_ms : 1000;
    const uint64_t ckpt_every = ckpt_ms * 1000000ULL / period_ns ? ckpt_ms * 1000000ULL / period_ns : 1;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    ts_worker_heartbeat(w);
    uint64_t drain_deadline = 0;
    for (;;) {
        if (*stop && !w->draining) {
            w->draining = true;
            if (w->nbind > 0 && request_drain(w)) {
                drain_deadline = ts_mono_us() + DRAIN_TIMEOUT_MS * 1000ULL;
                ts_info("draining %zu cells before exit", w->nbind);
            }
        }
        if (w->draining &&
            (w->nbind == 0 || drain_deadline == 0 || ts_mono_us() > drain_deadline || *stop >= 2))
            break;

        uint64_t t0 = ts_mono_ns();
        tick_once(w, dt, hz, hb_every, ckpt_every);
        w->tick_ms[w->tick_samples++ % TS_TICK_SAMPLES] = (double)(ts_mono_ns() - t0) / 1e6;

        next.tv_nsec += (long)period_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        if (past(&next)) {
            w->overruns++;
            clock_gettime(CLOCK_MONOTONIC, &next); /* no burst of catch-up ticks */
            continue;
        }
        /* between ticks, serve handover requests as soon as they arrive */
        while (!past(&next) && !(*stop && !w->draining)) {
            wait_until(w, &next);
            ts_handover_poll(w);
            if (atomic_load(&w->reg_dirty)) maybe_sync_registry(w, true, false);
        }
    }
    /* last words: checkpoints of whatever is still here, and no liveness */
    for (size_t i = 0; i < w->nbind; i++)
        if (w->bindings[i].state == TS_BIND_ACTIVE) ts_worker_publish_checkpoint(w, w->bindings[i].zone);
    ts_bus_js_flush(w->bus, 2000);
    ts_registry_worker_forget(w->reg, w->id);
    ts_info("worker %s: stopping after %" PRIu64 " ticks", w->id, w->tick);
    return TS_OK;
}

void ts_worker_destroy(ts_worker_t *w)
{
    if (!w) return;
    ts_bus_sub_destroy(w->reg_sub);
    ts_bus_sub_destroy(w->ho_sub);
    while (w->nbind) ts_worker_unbind(w, &w->bindings[w->nbind - 1]);
    ts_handover_free_all(w);
    free(w->bindings);
    free(w->cells);
    ts_inbox_free(&w->inbox);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cond);
    ts_bus_destroy(w->bus);
    ts_registry_destroy(w->reg);
    free(w);
}
