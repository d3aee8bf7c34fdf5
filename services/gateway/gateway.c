/* The gateway object: its libuv handles, the hand-off from nats.c threads to
 * the loop, registry reloads and the orderly stop.
 *
 * Threads: everything runs on the loop thread except bus callbacks, which
 * only copy the message into the mutex-protected inbox and wake the loop
 * (uv_async), the ack callback (atomic counters), and registry reads, which
 * run in libuv's thread pool one at a time, so the blocking Redis calls never
 * stall the loop and gw->reg is never used by two threads at once.
 *
 * Stop order: listener closed, Leave queued for every joined player, inputs
 * flushed and acknowledged, connections closed, subscriptions destroyed
 * (no callback runs after that), then the remaining handles; uv_run returns
 * when the loop is empty. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define HOUSEKEEPING_MS 1000
#define RETRY_FLUSH_MS 50
#define STATS_EVERY 10
#define STOP_FLUSH_MS 2000

void gw_inbox_push(gw_t *gw, gw_msg_kind_t kind, const ts_bus_msg_t *msg)
{
    const char *subject = ts_bus_msg_subject(msg);
    size_t slen = strlen(subject), len = ts_bus_msg_len(msg);

    pthread_mutex_lock(&gw->inbox_mu);
    bool full = gw->inbox_len >= GW_INBOX_MAX;
    if (full) gw->inbox_dropped++;
    pthread_mutex_unlock(&gw->inbox_mu);
    if (full) return;

    gw_msg_t *m = malloc(sizeof *m + len + slen + 1);
    if (m == NULL) return;
    m->next = NULL;
    m->kind = kind;
    m->len = len;
    if (len > 0) memcpy(m->data, ts_bus_msg_data(msg), len);
    m->subject = (char *)m->data + len;
    memcpy(m->subject, subject, slen + 1);

    pthread_mutex_lock(&gw->inbox_mu);
    if (gw->inbox_tail != NULL)
        gw->inbox_tail->next = m;
    else
        gw->inbox_head = m;
    gw->inbox_tail = m;
    gw->inbox_len++;
    pthread_mutex_unlock(&gw->inbox_mu);
    uv_async_send(&gw->inbox_async);
}

static gw_msg_t *inbox_take(gw_t *gw, uint64_t *dropped)
{
    pthread_mutex_lock(&gw->inbox_mu);
    gw_msg_t *list = gw->inbox_head;
    gw->inbox_head = gw->inbox_tail = NULL;
    gw->inbox_len = 0;
    *dropped = gw->inbox_dropped;
    gw->inbox_dropped = 0;
    pthread_mutex_unlock(&gw->inbox_mu);
    return list;
}

static void on_inbox(uv_async_t *a)
{
    gw_t *gw = a->data;
    uint64_t dropped;
    gw_msg_t *m = inbox_take(gw, &dropped);
    if (dropped > 0) ts_warn("bus inbox full: %llu messages dropped", (unsigned long long)dropped);
    while (m != NULL) {
        gw_msg_t *next = m->next;
        if (!gw->stopping) {
            if (m->kind == GW_MSG_STATE)
                gw_view_on_state(gw, m->subject, m->data, m->len);
            else
                gw_request_reload(gw, true);
        }
        free(m);
        m = next;
    }
}

static void on_registry_msg(void *ud, const ts_bus_msg_t *msg)
{
    gw_inbox_push(ud, GW_MSG_REGISTRY, msg);
}

static void on_ack(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok, uint64_t stream_seq)
{
    gw_t *gw = ud;
    (void)stream_seq;
    if (ok) {
        atomic_fetch_add(&gw->acks_ok, 1);
    } else {
        atomic_fetch_add(&gw->acks_failed, 1);
        ts_warn("input batch of %u inputs to %s was not stored by JetStream", count, subject);
    }
}

/* Thread pool: reads the registry if its version moved (or when forced). */
static void reload_work(uv_work_t *req)
{
    gw_t *gw = req->data;
    uint64_t version = 0;
    gw->reload_changed = false;
    gw->reload_cells = NULL;
    gw->reload_n = 0;
    gw->reload_status = ts_registry_version(gw->reg, gw->world.id, &version);
    if (gw->reload_status != TS_OK || (!gw->reload_job_force && version == gw->reg_version)) return;
    gw->reload_version = version;
    gw->reload_status = ts_registry_cells(gw->reg, gw->world.id, &gw->reload_cells, &gw->reload_n);
    gw->reload_changed = gw->reload_status == TS_OK;
}

static void reload_done(uv_work_t *req, int status)
{
    gw_t *gw = req->data;
    gw->reload_running = false;
    if (status == 0 && !gw->stopping) {
        if (gw->reload_status != TS_OK) {
            uint64_t now = ts_mono_us();
            if (gw->reload_warn_us == 0 || now - gw->reload_warn_us > 10000000) {
                gw->reload_warn_us = now;
                ts_warn("registry read failed: %s (keeping the last known cells)",
                        ts_status_str(gw->reload_status));
            }
        } else if (gw->reload_changed) {
            gw->reg_version = gw->reload_version;
            if (gw_cells_apply_registry(gw, gw->reload_cells, gw->reload_n)) {
                ts_info("registry version %llu: %zu cells", (unsigned long long)gw->reg_version,
                        gw->reload_n);
                for (gw_conn_t *c = gw->conns; c != NULL; c = c->next)
                    gw_aoi_update(gw, c);
            }
        }
    }
    free(gw->reload_cells);
    gw->reload_cells = NULL;
    if (gw->reload_again) gw_request_reload(gw, false);
}

void gw_request_reload(gw_t *gw, bool force)
{
    if (gw->stopping) return;
    if (force) gw->reload_force = true;
    if (gw->reload_running) {
        gw->reload_again = true;
        return;
    }
    gw->reload_again = false;
    gw->reload_job_force = gw->reload_force;
    gw->reload_force = false;
    gw->reload_req.data = gw;
    if (uv_queue_work(gw->loop, &gw->reload_req, reload_work, reload_done) == 0) gw->reload_running = true;
}

static void on_tick(uv_timer_t *t)
{
    gw_view_tick(t->data);
}

static void on_retry_flush(uv_timer_t *t)
{
    gw_router_flush(t->data);
}

static void on_check(uv_check_t *h)
{
    gw_t *gw = h->data;
    if (gw->batch_head == NULL) return;
    gw_router_flush(gw);
    if (gw->batch_head != NULL && !uv_is_active((uv_handle_t *)&gw->retry_timer))
        uv_timer_start(&gw->retry_timer, on_retry_flush, RETRY_FLUSH_MS, 0);
}

static void log_stats(gw_t *gw)
{
    size_t joined = 0;
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next)
        joined += c->phase == GW_PHASE_JOINED;
    uint64_t stale = 0;
    size_t subscribed = 0;
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        stale += cell->stale_dropped;
        subscribed += cell->aoi_refs > 0;
    }
    ts_debug(
        "clients=%zu joined=%zu cells=%zu subscribed=%zu inputs=%llu dropped=%llu batches=%llu acked=%llu "
        "failed=%llu states=%llu stale=%llu",
        gw->nopen, joined, gw->ncells, subscribed, (unsigned long long)gw->inputs_queued,
        (unsigned long long)gw->inputs_dropped, (unsigned long long)gw->batches_published,
        (unsigned long long)atomic_load(&gw->acks_ok), (unsigned long long)atomic_load(&gw->acks_failed),
        (unsigned long long)gw->states_applied, (unsigned long long)stale);
}

static void on_housekeeping(uv_timer_t *t)
{
    static unsigned rounds;
    gw_t *gw = t->data;
    gw_request_reload(gw, false);
    gw_conns_sweep(gw);
    gw_aoi_resubscribe(gw);
    if (++rounds % STATS_EVERY == 0) log_stats(gw);
}

static void on_signal(uv_signal_t *s, int signum)
{
    gw_t *gw = s->data;
    ts_info("signal %d: stopping", signum);
    gw_stop(gw);
}

static void random_bytes(void *buf, size_t n)
{
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f != NULL ? fread(buf, 1, n, f) : 0;
    if (f != NULL) fclose(f);
    if (got < n) {
        ts_rng_t rng;
        ts_rng_seed(&rng, ts_now_us() ^ ((uint64_t)getpid() << 32) ^ ts_mono_ns());
        for (size_t i = got; i < n; i++)
            ((uint8_t *)buf)[i] = (uint8_t)ts_rng_next(&rng);
    }
}

ts_status_t gw_create(gw_t **out, uv_loop_t *loop, const ts_config_t *cfg, ts_bus_t *bus, ts_registry_t *reg,
                      const ts_world_t *world, const ts_cell_entry_t *cells, size_t ncells)
{
    *out = NULL;
    gw_t *gw = calloc(1, sizeof *gw);
    if (gw == NULL) return TS_ERR_NOMEM;
    gw->loop = loop;
    gw->cfg = cfg;
    gw->bus = bus;
    gw->reg = reg;
    gw->world = *world;
    snprintf(gw->name, sizeof gw->name, "gateway-%lld", (long long)cfg->gateway_id);
    uint8_t rnd[8];
    random_bytes(rnd, sizeof rnd);
    gw->entity_rand = (uint16_t)(rnd[0] | rnd[1] << 8);
    snprintf(gw->boot_nonce, sizeof gw->boot_nonce, "%02x%02x%02x%02x%02x%02x", rnd[2], rnd[3], rnd[4],
             rnd[5], rnd[6], rnd[7]);
    atomic_init(&gw->acks_ok, 0);
    atomic_init(&gw->acks_failed, 0);
    pthread_mutex_init(&gw->inbox_mu, NULL);
    ts_map_init(&gw->players);
    ts_map_init(&gw->cell_roots);
    ts_map_init(&gw->scratch);

    uv_async_init(loop, &gw->inbox_async, on_inbox);
    uv_check_init(loop, &gw->flush_check);
    uv_timer_init(loop, &gw->tick_timer);
    uv_timer_init(loop, &gw->house_timer);
    uv_timer_init(loop, &gw->retry_timer);
    uv_signal_init(loop, &gw->sigint);
    uv_signal_init(loop, &gw->sigterm);
    gw->inbox_async.data = gw->flush_check.data = gw;
    gw->tick_timer.data = gw->house_timer.data = gw->retry_timer.data = gw;
    gw->sigint.data = gw->sigterm.data = gw;

    gw_cells_apply_registry(gw, cells, ncells);
    *out = gw;
    return TS_OK;
}

ts_status_t gw_start(gw_t *gw)
{
    uv_signal_start(&gw->sigint, on_signal, SIGINT);
    uv_signal_start(&gw->sigterm, on_signal, SIGTERM);
    ts_bus_set_ack_handler(gw->bus, on_ack, gw);

    char subject[TS_SUBJECT_MAX];
    ts_subject_registry(subject, sizeof subject, gw->world.id);
    ts_status_t st = ts_bus_subscribe(gw->bus, subject, on_registry_msg, gw, &gw->registry_sub);
    if (st != TS_OK) {
        ts_error("cannot subscribe to %s: %s", subject, ts_status_str(st));
        return st;
    }
    st = gw_listen(gw, gw->cfg->gateway_listen);
    if (st != TS_OK) return st;
    uint64_t tick_ms = (uint64_t)(1000 / gw->cfg->gateway_tick_hz);
    uv_timer_start(&gw->tick_timer, on_tick, tick_ms ? tick_ms : 1, tick_ms ? tick_ms : 1);
    uv_timer_start(&gw->house_timer, on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    uv_check_start(&gw->flush_check, on_check);
    return TS_OK;
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

void gw_stop(gw_t *gw)
{
    if (gw->stopping) return;
    size_t joined = 0;
    gw_listen_close(gw);
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next) {
        joined += c->phase == GW_PHASE_JOINED;
        gw_session_release(c);
    }
    gw->stopping = true;
    gw_router_flush(gw);
    if (gw->batch_head != NULL) ts_warn("stopping with inputs the bus did not take");
    ts_status_t st = ts_bus_js_flush(gw->bus, STOP_FLUSH_MS);
    if (st != TS_OK) ts_warn("bus flush on stop: %s", ts_status_str(st));
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next)
        gw_conn_close(c);

    ts_bus_sub_destroy(gw->registry_sub);
    gw->registry_sub = NULL;
    for (gw_cell_t *cell = gw->all_cells; cell != NULL; cell = cell->next_all) {
        ts_bus_sub_destroy(cell->sub);
        cell->sub = NULL;
    }
    close_handle((uv_handle_t *)&gw->inbox_async);
    close_handle((uv_handle_t *)&gw->flush_check);
    close_handle((uv_handle_t *)&gw->tick_timer);
    close_handle((uv_handle_t *)&gw->house_timer);
    close_handle((uv_handle_t *)&gw->retry_timer);
    close_handle((uv_handle_t *)&gw->sigint);
    close_handle((uv_handle_t *)&gw->sigterm);
    log_stats(gw);
    ts_info("stopped: %zu players left, %llu inputs in %llu batches (%llu acknowledged, %llu failed)", joined,
            (unsigned long long)gw->inputs_queued, (unsigned long long)gw->batches_published,
            (unsigned long long)atomic_load(&gw->acks_ok), (unsigned long long)atomic_load(&gw->acks_failed));
}

void gw_destroy(gw_t *gw)
{
    if (gw == NULL) return;
    uint64_t dropped;
    gw_msg_t *m = inbox_take(gw, &dropped);
    while (m != NULL) {
        gw_msg_t *next = m->next;
        free(m);
        m = next;
    }
    gw_cells_free_all(gw);
    ts_map_free(&gw->players);
    ts_map_free(&gw->scratch);
    free(gw->tmp_ents);
    free(gw->tmp_removed);
    free(gw->reload_cells);
    pthread_mutex_destroy(&gw->inbox_mu);
    free(gw);
}
