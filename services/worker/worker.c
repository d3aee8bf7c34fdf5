/* Worker: binds the cells the registry gives it, runs the tick loop.
 *
 * Each bound cell has an ordered JetStream consumer on <cell>.input that
 * starts after the zone's last applied stream sequence. Its callback (a
 * nats.c thread) copies the message into the inbox, tagged with the binding's
 * generation so a message of a binding that has since been dropped is
 * ignored. Everything else happens on the tick thread. */
#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tessera/bus.h"
#include "tessera/log.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "zone.h"

#define TICK_SAMPLES 256
#define CONNECT_RETRY_MS 10000

typedef struct {
    ts_worker_t *w;
    ts_cell_t cell;
    uint64_t gen;
} sub_ctx_t;

typedef struct {
    ts_zone_t *zone;
    ts_bus_sub_t *sub;
    sub_ctx_t *ctx;
    uint64_t gen;
} binding_t;

typedef struct {
    ts_cell_t cell;
    uint64_t gen;
    uint64_t stream_seq;
    uint8_t *data;
    size_t len;
} inbox_msg_t;

typedef struct {
    inbox_msg_t *v;
    size_t n, cap;
} inbox_vec_t;

struct ts_worker {
    const ts_config_t *cfg;
    char id[TS_WORKER_ID_MAX];
    ts_bus_t *bus;
    ts_registry_t *reg;
    ts_bus_sub_t *reg_sub;
    ts_world_t world;

    binding_t *bindings;
    size_t nbind, cap_bind;
    uint64_t next_gen;
    ts_cell_entry_t *cells; /* last registry read, for owner look-ups */
    size_t ncells;
    uint64_t reg_version;
    atomic_bool reg_dirty;

    pthread_mutex_t inbox_mu;
    inbox_vec_t inbox;

    uint64_t tick;
    uint64_t seq;
    uint64_t boot_nonce; /* makes message ids unique across restarts */
    double tick_ms[TICK_SAMPLES];
    size_t tick_samples;
    uint64_t overruns;
    ts_zone_stats_t retired_stats; /* counters of zones no longer bound */
    uint64_t transfers_out_remote;
};

static binding_t *find_binding(ts_worker_t *w, const ts_cell_t *c)
{
    for (size_t i = 0; i < w->nbind; i++)
        if (ts_cell_eq(&w->bindings[i].zone->cell, c)) return &w->bindings[i];
    return NULL;
}

static const ts_cell_entry_t *find_entry(const ts_worker_t *w, const ts_cell_t *c)
{
    for (size_t i = 0; i < w->ncells; i++)
        if (ts_cell_eq(&w->cells[i].cell, c)) return &w->cells[i];
    return NULL;
}

static void on_input(void *ud, const ts_bus_msg_t *m)
{
    sub_ctx_t *ctx = ud;
    ts_worker_t *w = ctx->w;
    size_t len = ts_bus_msg_len(m);
    uint8_t *data = malloc(len ? len : 1);
    if (!data) {
        ts_error("out of memory queueing input for a cell");
        return;
    }
    memcpy(data, ts_bus_msg_data(m), len);
    pthread_mutex_lock(&w->inbox_mu);
    if (w->inbox.n == w->inbox.cap) {
        size_t ncap = w->inbox.cap ? w->inbox.cap * 2 : 256;
        inbox_msg_t *v = realloc(w->inbox.v, ncap * sizeof(*v));
        if (!v) {
            pthread_mutex_unlock(&w->inbox_mu);
            free(data);
            ts_error("out of memory queueing input for a cell");
            return;
        }
        w->inbox.v = v;
        w->inbox.cap = ncap;
    }
    w->inbox.v[w->inbox.n++] = (inbox_msg_t){ctx->cell, ctx->gen, ts_bus_msg_stream_seq(m), data, len};
    pthread_mutex_unlock(&w->inbox_mu);
}

static void on_registry(void *ud, const ts_bus_msg_t *m)
{
    ts_worker_t *w = ud;
    atomic_store(&w->reg_dirty, true);
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

static ts_status_t bind_cell(ts_worker_t *w, const ts_cell_entry_t *e)
{
    if (w->nbind == w->cap_bind) {
        size_t ncap = w->cap_bind ? w->cap_bind * 2 : 16;
        binding_t *v = realloc(w->bindings, ncap * sizeof(*v));
        if (!v) return TS_ERR_NOMEM;
        w->bindings = v;
        w->cap_bind = ncap;
    }
    binding_t b = {0};
    ts_status_t st = ts_zone_create(&b.zone, &e->cell, e->epoch, &w->world, w->cfg->worker_max_speed);
    if (st != TS_OK) return st;
    b.gen = ++w->next_gen;
    b.ctx = malloc(sizeof(*b.ctx));
    if (!b.ctx) {
        ts_zone_destroy(b.zone);
        return TS_ERR_NOMEM;
    }
    *b.ctx = (sub_ctx_t){w, e->cell, b.gen};
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), &e->cell, TS_SUBJ_INPUT);
    uint64_t start = b.zone->last_applied_seq + 1;
    st = ts_bus_consume(w->bus, w->world.id, subj, b.zone->last_applied_seq ? start : 0, on_input, b.ctx, &b.sub);
    if (st != TS_OK) {
        ts_error("cell %s: cannot consume %s: %s", b.zone->key, subj, ts_status_str(st));
        free(b.ctx);
        ts_zone_destroy(b.zone);
        return st;
    }
    w->bindings[w->nbind++] = b;
    ts_info("cell %s: bound at epoch %" PRIu64 ", consuming %s", b.zone->key, e->epoch, subj);
    return TS_OK;
}

static void unbind_at(ts_worker_t *w, size_t i)
{
    binding_t *b = &w->bindings[i];
    ts_info("cell %s: unbound (epoch %" PRIu64 ", last applied seq %" PRIu64 ")", b->zone->key, b->zone->epoch,
            b->zone->last_applied_seq);
    ts_bus_sub_destroy(b->sub);
    add_stats(&w->retired_stats, &b->zone->stats);
    ts_zone_destroy(b->zone);
    free(b->ctx);
    w->bindings[i] = w->bindings[--w->nbind];
}

/* Reads the registry and binds / unbinds cells to match it. */
static void sync_registry(ts_worker_t *w)
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
        const ts_cell_entry_t *e = find_entry(w, &w->bindings[i].zone->cell);
        if (!e || strcmp(e->owner, w->id) != 0 || e->state == TS_CELL_RETIRED) {
            unbind_at(w, i);
            continue;
        }
        if (e->epoch > w->bindings[i].zone->epoch) w->bindings[i].zone->epoch = e->epoch;
        i++;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(cells[i].owner, w->id) != 0 || cells[i].state != TS_CELL_ACTIVE) continue;
        if (find_binding(w, &cells[i].cell)) continue;
        bind_cell(w, &cells[i]);
    }
}

static void maybe_sync_registry(ts_worker_t *w, bool force)
{
    if (atomic_exchange(&w->reg_dirty, false)) force = true;
    if (!force) {
        uint64_t version = 0;
        if (ts_registry_version(w->reg, w->world.id, &version) != TS_OK || version == w->reg_version) return;
    }
    sync_registry(w);
}

static void apply_inbox(ts_worker_t *w)
{
    pthread_mutex_lock(&w->inbox_mu);
    inbox_vec_t batch = w->inbox;
    w->inbox = (inbox_vec_t){0};
    pthread_mutex_unlock(&w->inbox_mu);

    for (size_t i = 0; i < batch.n; i++) {
        inbox_msg_t *m = &batch.v[i];
        binding_t *b = find_binding(w, &m->cell);
        if (b && b->gen == m->gen) {
            Tessera__V1__InputBatch *ib = tessera__v1__input_batch__unpack(NULL, m->len, m->data);
            if (ib) {
                ts_zone_apply_batch(b->zone, m->stream_seq, ib, w->tick);
                tessera__v1__input_batch__free_unpacked(ib, NULL);
            } else {
                ts_warn("cell %s: undecodable input message at stream seq %" PRIu64 " skipped", b->zone->key,
                        m->stream_seq);
                if (m->stream_seq > b->zone->last_applied_seq) b->zone->last_applied_seq = m->stream_seq;
                b->zone->stats.dropped++;
            }
        }
        free(m->data);
    }
    free(batch.v);
}

/* Publishes each zone's transfers and forwarded inputs, waiting for the
 * JetStream acknowledgement, so they are in the stream before the state that
 * announces the move. A destination that cannot be reached keeps its entities
 * in the old cell and its inputs queued; they go out next tick. */
static void publish_outboxes(ts_worker_t *w, ts_zone_t *z)
{
    for (size_t i = 0; i < z->nout; i++) {
        ts_zone_out_t *o = &z->out[i];
        if (o->ntransfers == 0 && o->ninputs == 0) continue;
        uint8_t *buf = NULL;
        size_t len = 0;
        char subj[TS_SUBJECT_MAX], dest[TS_CELL_STR_MAX], msg_id[512];
        ts_subject_cell(subj, sizeof(subj), &o->dest, TS_SUBJ_INPUT);
        ts_cell_format(&o->dest, dest, sizeof(dest));
        snprintf(msg_id, sizeof(msg_id), "%s-%016" PRIx64 "-%s-e%" PRIu64 "-t%" PRIu64 "-%s", w->id, w->boot_nonce,
                 z->key, z->epoch, w->tick, dest);
        const ts_cell_entry_t *de = find_entry(w, &o->dest);
        ts_status_t st = de ? ts_zone_pack_outbox(z, i, &buf, &len) : TS_ERR_UNKNOWN_CELL;
        if (st == TS_OK) {
            ts_bus_hdr_t hdr = {.type = TS_TYPE_INPUT_BATCH,
                                .epoch = de->epoch,
                                .seq = ++w->seq,
                                .count = (uint32_t)(o->ninputs + o->ntransfers),
                                .msg_id = msg_id};
            for (int attempt = 0; attempt < 3; attempt++) {
                st = ts_bus_js_publish(w->bus, subj, &hdr, buf, len, 500, NULL);
                if (st == TS_OK) break;
            }
        }
        free(buf);
        if (st != TS_OK) {
            ts_warn("cell %s: cannot hand %zu entities / %zu inputs to %s (%s); retrying next tick", z->key,
                    o->ntransfers, o->ninputs, dest, ts_status_str(st));
            ts_zone_outbox_failed(z, i);
            continue;
        }
        if (strcmp(de->owner, w->id) != 0) w->transfers_out_remote += o->ntransfers;
        o->ntransfers = 0;
        o->ninputs = 0;
    }
    ts_zone_outbox_clear(z);
}

static void publish_state(ts_worker_t *w, ts_zone_t *z, bool full)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_zone_pack_delta(z, w->tick, full, w->id, &buf, &len) != TS_OK || !buf) return;
    char subj[TS_SUBJECT_MAX];
    ts_subject_cell(subj, sizeof(subj), &z->cell, TS_SUBJ_STATE);
    ts_bus_hdr_t hdr = {.type = TS_TYPE_STATE_DELTA, .epoch = z->epoch, .seq = w->tick};
    ts_status_t st = ts_bus_publish(w->bus, subj, &hdr, buf, len);
    if (st != TS_OK) ts_debug("cell %s: state publish failed: %s", z->key, ts_status_str(st));
    free(buf);
}

static void heartbeat(ts_worker_t *w)
{
    ts_status_t st = ts_registry_worker_alive(w->reg, w->id, w->cfg->orch_hb_ttl_ms, (uint32_t)w->cfg->worker_capacity);
    if (st != TS_OK) ts_warn("cannot refresh liveness in the registry: %s", ts_status_str(st));

    Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
    Tessera__V1__CellLoad *loads = calloc(w->nbind ? w->nbind : 1, sizeof(*loads));
    Tessera__V1__CellLoad **lp = calloc(w->nbind ? w->nbind : 1, sizeof(*lp));
    Tessera__V1__CellId *ids = calloc(w->nbind ? w->nbind : 1, sizeof(*ids));
    if (!loads || !lp || !ids) goto cleanup;
    ts_zone_stats_t total = w->retired_stats;
    uint32_t entities = 0;
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i].zone;
        add_stats(&total, &z->stats);
        entities += (uint32_t)ts_zone_entities(z);
        tessera__v1__cell_load__init(&loads[i]);
        ts_proto_cell_init(&ids[i], &z->cell);
        loads[i].cell = &ids[i];
        loads[i].epoch = z->epoch;
        loads[i].entities = (uint32_t)ts_zone_entities(z);
        loads[i].inputs_applied = z->stats.applied;
        loads[i].last_applied_seq = z->last_applied_seq;
        lp[i] = &loads[i];
    }
    double samples[TICK_SAMPLES];
    size_t ns = w->tick_samples < TICK_SAMPLES ? w->tick_samples : TICK_SAMPLES;
    memcpy(samples, w->tick_ms, ns * sizeof(double));
    hb.worker = w->id;
    hb.time_ms = ts_now_us() / 1000;
    hb.ticks = w->tick;
    hb.entities = entities;
    hb.inputs_applied = total.applied;
    hb.inputs_forwarded = total.forwarded;
    hb.inputs_dropped = total.dropped;
    hb.inputs_duplicate = total.duplicates;
    hb.transfers_out = total.transfers_out;
    hb.transfers_in = total.transfers_in;
    hb.transfers_out_remote = w->transfers_out_remote;
    hb.tick_p50_ms = ts_percentile(samples, ns, 50);
    hb.tick_p99_ms = ts_percentile(samples, ns, 99);
    hb.overrun_pct = w->tick ? 100.0 * (double)w->overruns / (double)w->tick : 0;
    hb.bytes_out = ts_bus_bytes_out(w->bus);
    hb.capacity = (uint32_t)w->cfg->worker_capacity;
    hb.n_cells = w->nbind;
    hb.cells = lp;

    uint8_t *buf = NULL;
    size_t len = 0;
    if (ts_proto_pack(&hb.base, &buf, &len) == TS_OK) {
        char subj[TS_SUBJECT_MAX];
        ts_subject_heartbeat(subj, sizeof(subj), w->id);
        ts_bus_hdr_t hdr = {.type = TS_TYPE_HEARTBEAT, .seq = w->tick};
        ts_bus_publish(w->bus, subj, &hdr, buf, len);
        free(buf);
    }
cleanup:
    free(loads);
    free(lp);
    free(ids);
}

ts_status_t ts_worker_create(ts_worker_t **out, const ts_config_t *cfg)
{
    ts_worker_t *w = calloc(1, sizeof(*w));
    if (!w) return TS_ERR_NOMEM;
    w->cfg = cfg;
    ts_strlcpy(w->id, cfg->worker_id, sizeof(w->id));
    pthread_mutex_init(&w->inbox_mu, NULL);
    ts_rng_t rng;
    ts_rng_seed(&rng, ts_now_us() ^ ((uint64_t)getpid() << 32));
    w->boot_nonce = ts_rng_next(&rng);
    atomic_init(&w->reg_dirty, true);

    ts_status_t st;
    uint64_t deadline = ts_mono_us() + CONNECT_RETRY_MS * 1000ULL;
    char name[128];
    snprintf(name, sizeof(name), "tessera-worker-%s", w->id);
    while ((st = ts_bus_connect(&w->bus, cfg->nats_url, name)) != TS_OK && ts_mono_us() < deadline)
        ts_sleep_ms(250);
    if (st != TS_OK) {
        ts_error("cannot connect to NATS at %s: %s", cfg->nats_url, ts_status_str(st));
        goto fail;
    }
    while ((st = ts_registry_connect(&w->reg, cfg->redis_url)) != TS_OK && ts_mono_us() < deadline)
        ts_sleep_ms(250);
    if (st != TS_OK) {
        ts_error("cannot connect to Redis at %s: %s", cfg->redis_url, ts_status_str(st));
        goto fail;
    }
    while ((st = ts_registry_world_get(w->reg, (uint32_t)cfg->world_id, &w->world)) != TS_OK &&
           ts_mono_us() < deadline)
        ts_sleep_ms(250);
    if (st != TS_OK) {
        ts_error("world %" PRId64 " is not in the registry (is tessera-orch running?): %s", cfg->world_id,
                 ts_status_str(st));
        goto fail;
    }
    st = ts_bus_ensure_streams(w->bus, w->world.id, cfg->stream_storage, cfg->stream_max_age_s,
                               (int)cfg->stream_replicas);
    if (st != TS_OK) {
        ts_error("cannot set up JetStream streams: %s", ts_status_str(st));
        goto fail;
    }
    char subj[TS_SUBJECT_MAX];
    ts_subject_registry(subj, sizeof(subj), w->world.id);
    st = ts_bus_subscribe(w->bus, subj, on_registry, w, &w->reg_sub);
    if (st != TS_OK) goto fail;
    ts_info("worker %s: nats %s, redis %s, world %u (%dx%d cells of %.0f)", w->id, cfg->nats_url, cfg->redis_url,
            w->world.id, w->world.width, w->world.height, w->world.cell_size);
    *out = w;
    return TS_OK;
fail:
    ts_worker_destroy(w);
    return st;
}

ts_status_t ts_worker_run(ts_worker_t *w, volatile sig_atomic_t *stop)
{
    const uint64_t period_ns = 1000000000ULL / (uint64_t)(w->cfg->worker_tick_hz > 0 ? w->cfg->worker_tick_hz : 20);
    const double dt = (double)period_ns / 1e9;
    const uint64_t hb_every = (uint64_t)w->cfg->worker_hb_ms * 1000000ULL / period_ns;
    const uint64_t full_every = (uint64_t)(w->cfg->worker_tick_hz > 0 ? w->cfg->worker_tick_hz : 20);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    heartbeat(w);
    while (!*stop) {
        uint64_t t0 = ts_mono_ns();
        w->tick++;
        maybe_sync_registry(w, w->tick % full_every == 0);
        apply_inbox(w);
        for (size_t i = 0; i < w->nbind; i++) ts_zone_step(w->bindings[i].zone, dt, w->tick);
        for (size_t i = 0; i < w->nbind; i++) publish_outboxes(w, w->bindings[i].zone);
        for (size_t i = 0; i < w->nbind; i++)
            publish_state(w, w->bindings[i].zone, (w->tick + i) % full_every == 0);
        if (hb_every == 0 || w->tick % hb_every == 0) heartbeat(w);

        uint64_t spent = ts_mono_ns() - t0;
        w->tick_ms[w->tick_samples++ % TICK_SAMPLES] = (double)spent / 1e6;
        next.tv_nsec += (long)period_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec)) {
            w->overruns++;
            next = now; /* do not try to catch up with a burst of ticks */
            continue;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR && !*stop) {
        }
    }
    ts_info("worker %s: stopping after %" PRIu64 " ticks", w->id, w->tick);
    return TS_OK;
}

void ts_worker_destroy(ts_worker_t *w)
{
    if (!w) return;
    ts_bus_sub_destroy(w->reg_sub);
    while (w->nbind) unbind_at(w, w->nbind - 1);
    free(w->bindings);
    free(w->cells);
    for (size_t i = 0; i < w->inbox.n; i++) free(w->inbox.v[i].data);
    free(w->inbox.v);
    pthread_mutex_destroy(&w->inbox_mu);
    ts_bus_destroy(w->bus);
    ts_registry_destroy(w->reg);
    free(w);
}
