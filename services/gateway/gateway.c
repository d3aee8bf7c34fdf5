/* The gateway object: its libuv handles, the hand-off from nats.c threads to
 * the loop, the registry view and the orderly stop.
 *
 * Threads: everything runs on the loop thread except bus callbacks, which
 * only hold the message (no copy) and push it into a bounded lock-free ring
 * (full: dropped and counted; a dropped RegistryChange asks for a resync),
 * the ack callback, which pushes (seq, ok) into a second ring sized for
 * every publish the bus allows in flight, both waking the loop (uv_async);
 * and registry reads, which run in libuv's thread pool one at a time, so the
 * blocking Redis calls never stall the loop and gw->reg is never used by two
 * threads at once.
 *
 * Registry: each RegistryChange (cell, owner, epoch, state, version) is
 * applied on arrival in O(1); a version gap, an undecodable or dropped change
 * or a version poll (one GET a second on the pool) that shows a missed change
 * (e.g. across a NATS reconnect) triggers one full read on the pool.
 *
 * Loop turn: the inbox and sockets are read during the poll phase; the check
 * handle then publishes one InputBatch per cell and runs one fan-out flush
 * (gw_view_flush), so state is forwarded as it arrives.
 *
 * Stop order: listener closed, Leave queued for every joined player, inputs
 * flushed and acknowledged, connections closed, subscriptions destroyed
 * (no callback runs after that), then the remaining handles; uv_run returns
 * when the loop is empty. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "gateway.h"
#include "login.h"
#include "tessera/log.h"
#include "tessera/util.h"
#include "ws.h"

#define HOUSEKEEPING_MS 1000
#define STATS_EVERY 10
#define STOP_FLUSH_MS 2000

void gw_inbox_push(gw_t *gw, gw_msg_kind_t kind, gw_cell_t *cell, const ts_bus_msg_t *msg)
{
    gw_msg_t m = {.kind = kind, .cell = cell, .msg = ts_bus_msg_hold(msg)};
    if (m.msg.impl == NULL) return;
    if (!ts_ring_push(gw->inbox, &m)) {
        ts_bus_held_free(m.msg);
        atomic_fetch_add(&gw->inbox_dropped, 1);
        if (kind == GW_MSG_REGISTRY) atomic_store(&gw->registry_lost, true);
    }
    uv_async_send(&gw->inbox_async);
}

/* Applies one RegistryChange: O(depth) for the cell (table and tree), plus
 * the clients whose circles reach it when it became live or stopped being
 * live. A version gap asks for one asynchronous resync. */
static void on_registry_change(gw_t *gw, const uint8_t *data, size_t len)
{
    Tessera__V1__RegistryChange *rc = tessera__v1__registry_change__unpack(NULL, len, data);
    if (rc == NULL) {
        ts_warn("undecodable RegistryChange (%zu bytes): re-reading the registry", len);
        gw_request_reload(gw, true);
        return;
    }
    ts_cell_entry_t e = {.epoch = rc->epoch, .state = (ts_cell_state_t)rc->state};
    if (rc->world != gw->world.id || rc->cell == NULL || ts_proto_cell_get(rc->cell, &e.cell) != TS_OK) {
        tessera__v1__registry_change__free_unpacked(rc, NULL);
        return;
    }
    ts_strlcpy(e.owner, rc->owner ? rc->owner : "", sizeof e.owner);
    uint64_t version = rc->version;
    tessera__v1__registry_change__free_unpacked(rc, NULL);

    gw->reg_changes++;
    gw_ws_registry_change(gw, &e, version);
    if (version > gw->reg_version + 1 && gw->reg_version != 0) {
        ts_debug("registry version %llu after %llu: re-reading", (unsigned long long)version,
                 (unsigned long long)gw->reg_version);
        gw_request_reload(gw, true);
    }
    if (version > gw->reg_version) gw->reg_version = version;
    gw_cell_t *cell;
    if (!gw_cells_apply_change(gw, &e, version, &cell) || cell == NULL) return;
    /* its liveness changed: the clients whose AOI may hold it re-bind */
    gw_aoi_cell_changed(gw, cell);
}

static void on_inbox(uv_async_t *a)
{
    gw_t *gw = a->data;
    uint64_t dropped = atomic_exchange(&gw->inbox_dropped, 0);
    if (dropped > 0) {
        gw->inbox_dropped_total += dropped;
        ts_warn("bus inbox full: %llu messages dropped", (unsigned long long)dropped);
    }
    if (atomic_exchange(&gw->registry_lost, false)) gw_request_reload(gw, true);
    uint64_t acks_lost = atomic_exchange(&gw->acks_dropped, 0);
    if (acks_lost > 0) {
        /* cannot happen while the ring holds every publish the bus allows
         * in flight; if it did, no cell may wait forever for its ack */
        ts_warn("%llu publish outcomes lost: input batches in flight are no longer tracked",
                (unsigned long long)acks_lost);
        gw_router_forget_flights(gw);
    }
    gw_ack_t ack;
    while (ts_ring_pop(gw->acks, &ack)) {
        if (!gw->stopping) gw_router_on_ack(gw, ack.seq, ack.ok);
    }
    /* at most one ring's worth per turn, so sockets get their turn too */
    size_t budget = GW_INBOX_MAX;
    gw_msg_t m;
    while (budget-- > 0 && ts_ring_pop(gw->inbox, &m)) {
        if (!gw->stopping) {
            const uint8_t *data = ts_bus_held_data(m.msg);
            size_t len = ts_bus_held_len(m.msg);
            if (m.kind == GW_MSG_STATE)
                gw_view_on_state(gw, m.cell, data, len);
            else if (m.kind == GW_MSG_LOGIN)
                gw_login_on_msg(gw, data, len);
            else
                on_registry_change(gw, data, len);
        }
        ts_bus_held_free(m.msg);
    }
    if (budget == (size_t)-1) uv_async_send(&gw->inbox_async);
}

static void on_registry_msg(void *ud, const ts_bus_msg_t *msg)
{
    gw_inbox_push(ud, GW_MSG_REGISTRY, NULL, msg);
}

static void on_ack(void *ud, const char *subject, uint64_t seq, uint32_t count, bool ok, uint64_t stream_seq)
{
    gw_t *gw = ud;
    (void)stream_seq;
    if (ok) {
        atomic_fetch_add(&gw->acks_ok, 1);
    } else {
        atomic_fetch_add(&gw->acks_failed, 1);
        ts_warn("input batch %llu of %u inputs to %s: JetStream refused it or did not confirm it",
                (unsigned long long)seq, count, subject);
    }
    gw_ack_t a = {.seq = seq, .ok = ok};
    if (!ts_ring_push(gw->acks, &a)) atomic_fetch_add(&gw->acks_dropped, 1);
    uv_async_send(&gw->inbox_async);
}

/* Thread pool: reads the registry version, and every cell if it moved past
 * the newest change the loop had applied when the job was queued (or when
 * forced). */
static void reload_work(uv_work_t *req)
{
    gw_t *gw = req->data;
    uint64_t version = 0;
    gw->reload_changed = false;
    gw->reload_cells = NULL;
    gw->reload_n = 0;
    gw->reload_status = ts_registry_version(gw->reg, gw->world.id, &version);
    /* a version below the known one: the registry was lost and written again */
    if (gw->reload_status != TS_OK || (!gw->reload_job_force && version == gw->reload_known)) return;
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
        } else if (gw->reload_changed && gw->reload_version < gw->reload_known && gw->reload_n == 0) {
            /* the registry lost everything and is not written back yet: keep the cells we have */
        } else if (gw->reload_changed) {
            gw->reg_resyncs++;
            /* reload_known was applied before the version was read: the
             * registry is behind it only if it lost what it had */
            if (gw->reload_version < gw->reload_known) {
                ts_error("registry version %llu is below the %llu applied here (the registry was lost?): "
                         "taking it whole",
                         (unsigned long long)gw->reload_version, (unsigned long long)gw->reload_known);
                for (gw_cell_t *c = gw->all_cells; c != NULL; c = c->next_all)
                    c->reg_ver = 0; /* versions from the lost registry say nothing any more */
                gw->reg_version = gw->reload_version;
            }
            if (gw->reload_version > gw->reg_version) gw->reg_version = gw->reload_version;
            /* the clients whose circles reach a cell that became live or
             * stopped being live are re-evaluated before the next flush */
            if (gw_cells_apply_registry(gw, gw->reload_cells, gw->reload_n, gw->reload_version))
                ts_info("registry version %llu: %zu cells", (unsigned long long)gw->reload_version,
                        gw->reload_n);
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
    gw->reload_known = gw->reg_version;
    gw->reload_req.data = gw;
    if (uv_queue_work(gw->loop, &gw->reload_req, reload_work, reload_done) == 0) gw->reload_running = true;
}

void gw_state_note(gw_t *gw, gw_cell_t *cell)
{
    uint64_t r = gw->round_ns ? ts_now_us() * 1000ULL / gw->round_ns : 0;
    if (r != gw->round) {
        gw->round_expected = r == gw->round + 1 ? gw->round_steady : 0;
        gw->round_steady = gw->round_arrived = 0;
        gw->round = r;
        gw->round_first_us = ts_mono_us();
    }
    if (cell->last_round == r) return;
    if (cell->last_round + 1 == r) {
        if (cell->prev_round + 2 == r) gw->round_arrived++; /* expected this round */
        gw->round_steady++;                                 /* expected next round */
    }
    cell->prev_round = cell->last_round;
    cell->last_round = r;
}

/* How long the fan-out still waits for this tick's state. Workers tick on
 * the wall clock's multiples of the period and publish every cell right
 * after, so a round (one period of the wall clock) brings each busy cell's
 * state once. A cell that sent state in each of the last two rounds is
 * expected in this one: the fan-out waits until every expected cell is in,
 * at most gateway.coalesce_ms after the round's first state, so a client
 * whose cells are on several workers gets one Delta per tick instead of
 * one per worker or per part of a burst. 0: flush now. */
static uint64_t round_wait_us(const gw_t *gw, uint64_t now)
{
    uint64_t hold = (uint64_t)gw->cfg->gateway_coalesce_ms * 1000ULL;
    if (hold == 0 || gw->dirty_head == NULL || gw->round_arrived >= gw->round_expected) return 0;
    if (gw->round_ns && ts_now_us() * 1000ULL / gw->round_ns != gw->round) return 0; /* the round is over */
    uint64_t waited = now - gw->round_first_us;
    return waited < hold ? hold - waited : 0;
}

static void on_flush_timer(uv_timer_t *t);

/* Flushes now, or when this tick's state is in (round_wait_us) and
 * GW_FLUSH_MIN_US since the last flush have passed. */
static void flush_view(gw_t *gw)
{
    if (gw->dirty_head == NULL && gw->flush_head == NULL) return;
    uint64_t now = ts_mono_us();
    uint64_t wait_us = round_wait_us(gw, now);
    if (gw->last_flush_us != 0 && now - gw->last_flush_us < GW_FLUSH_MIN_US &&
        GW_FLUSH_MIN_US - (now - gw->last_flush_us) > wait_us)
        wait_us = GW_FLUSH_MIN_US - (now - gw->last_flush_us);
    if (wait_us > 0) {
        if (!uv_is_active((uv_handle_t *)&gw->flush_timer))
            uv_timer_start(&gw->flush_timer, on_flush_timer, (wait_us + 999) / 1000, 0);
        return;
    }
    if (uv_is_active((uv_handle_t *)&gw->flush_timer)) uv_timer_stop(&gw->flush_timer);
    gw_view_flush(gw);
}

static void on_flush_timer(uv_timer_t *t)
{
    gw_t *gw = t->data;
    if (!gw->stopping) flush_view(gw);
}

static void on_idle(uv_idle_t *h)
{
    (void)h; /* only keeps the loop from blocking before the check runs */
}

void gw_flush_soon(gw_t *gw)
{
    /* the check handle flushes at the end of this loop turn; when the need
     * arose in a timer callback, the active idle handle makes the poll not
     * block so that turn ends now */
    if (!gw->stopping && !uv_is_active((uv_handle_t *)&gw->flush_idle))
        uv_idle_start(&gw->flush_idle, on_idle);
}

/* End of every loop turn, after the inbox and the sockets were read: one
 * InputBatch per cell for everything that arrived, then one fan-out. */
static void on_check(uv_check_t *h)
{
    gw_t *gw = h->data;
    if (gw->stopping) return;
    if (gw->batch_head != NULL && !gw->batch_busy) gw_router_flush(gw, false);
    flush_view(gw);
    uv_idle_stop(&gw->flush_idle);
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
        "clients=%zu joined=%zu cells=%zu subscribed=%zu inputs=%llu published=%llu batches=%llu "
        "(%.1f inputs/batch) ack_ms_avg=%.2f ack_ms_max=%.1f in_flight=%zu acked=%llu failed=%llu "
        "not_stored=%llu states=%llu stale=%llu "
        "inbox_dropped=%llu flushes=%llu frames=%llu bytes=%llu deltas_skipped=%llu registry_changes=%llu "
        "resyncs=%llu closed_hello=%llu closed_idle=%llu closed_slow=%llu refused_auth=%llu resumes=%llu",
        gw->nopen, joined, gw->ncells, subscribed, (unsigned long long)gw->inputs_queued,
        (unsigned long long)gw->inputs_published, (unsigned long long)gw->batches_published,
        gw->batches_published ? (double)gw->inputs_published / (double)gw->batches_published : 0.0,
        gw->ack_n ? (double)gw->ack_us_sum / (double)gw->ack_n / 1000.0 : 0.0,
        (double)gw->ack_us_max / 1000.0, gw->ninflight, (unsigned long long)atomic_load(&gw->acks_ok),
        (unsigned long long)atomic_load(&gw->acks_failed), (unsigned long long)gw->inputs_not_stored,
        (unsigned long long)gw->states_applied, (unsigned long long)stale,
        (unsigned long long)gw->inbox_dropped_total, (unsigned long long)gw->tick,
        (unsigned long long)gw->frames_sent, (unsigned long long)gw->bytes_sent,
        (unsigned long long)gw->deltas_skipped, (unsigned long long)gw->reg_changes,
        (unsigned long long)gw->reg_resyncs, (unsigned long long)gw->closed_hello,
        (unsigned long long)gw->closed_idle, (unsigned long long)gw->closed_slow,
        (unsigned long long)gw->refused_auth, (unsigned long long)gw->resumes);
}

static void on_housekeeping(uv_timer_t *t)
{
    static unsigned rounds;
    gw_t *gw = t->data;
    /* one GET of the version; every cell is read only if a change was missed */
    gw_request_reload(gw, false);
    gw_conns_sweep(gw);
    gw_aoi_resubscribe(gw);
    if (++rounds % STATS_EVERY == 0) log_stats(gw);
}

static void on_life(uv_timer_t *t)
{
    gw_conns_expire(t->data);
    gw_view_snapshot_deadlines(t->data);
}

/* Liveness for the workers: they despawn this gateway's players' entities
 * gateway.resume_s after it stops. A core publish only buffers. */
static void on_alive(uv_timer_t *t)
{
    gw_t *gw = t->data;
    Tessera__V1__GatewayAlive a = TESSERA__V1__GATEWAY_ALIVE__INIT;
    a.gateway = (uint32_t)gw->cfg->gateway_id;
    a.instance = gw->instance;
    a.name = gw->name;
    a.time_ms = ts_now_us() / 1000;
    uint8_t buf[128];
    size_t len = tessera__v1__gateway_alive__get_packed_size(&a);
    if (len > sizeof buf) return;
    tessera__v1__gateway_alive__pack(&a, buf);
    char subject[TS_SUBJECT_MAX];
    snprintf(subject, sizeof subject, "tessera.gw.%u.alive", a.gateway);
    ts_bus_hdr_t hdr = {.type = "tessera.v1.GatewayAlive"};
    (void)ts_bus_publish(gw->bus, subject, &hdr, buf, len);
}

/* Every client is a descriptor: take all the process may have, so idle
 * sockets run into gateway.hello_timeout_s before they run into the limit. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        ts_info("open files limit raised from %llu to %llu", (unsigned long long)was,
                (unsigned long long)rl.rlim_max);
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

/* CPUs this process may use: its affinity mask, lowered to a cgroup v2
 * CPU quota when there is one (a container's CPU limit), at least 1. */
static long usable_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) n = CPU_COUNT(&set);
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f != NULL) {
        long long quota = 0, period = 0;
        char q[32] = "";
        if (fscanf(f, "%31s %lld", q, &period) == 2 && strcmp(q, "max") != 0 &&
            (quota = strtoll(q, NULL, 10)) > 0 && period > 0) {
            long lim = (long)((quota + period - 1) / period);
            if (lim < n) n = lim;
        }
        fclose(f);
    }
    return n < 1 ? 1 : n;
}

/* gateway.fanout_threads, -1 resolved: one per CPU after the loop's, at
 * most 2 (the loop builds every client's frames, so more writers would
 * mostly wait for it; and the gateway stays within 16 threads). */
static int fanout_threads(const ts_config_t *cfg)
{
    if (cfg->gateway_fanout_threads >= 0) return (int)cfg->gateway_fanout_threads;
    long n = usable_cpus();
    return n <= 1 ? 0 : n - 1 > 2 ? 2 : (int)(n - 1);
}

ts_status_t gw_create(gw_t **out, uv_loop_t *loop, const ts_config_t *cfg, ts_bus_t *bus, ts_registry_t *reg,
                      const ts_world_t *world, const ts_cell_entry_t *cells, size_t ncells)
{
    *out = NULL;
    gw_t *gw = calloc(1, sizeof *gw);
    if (gw == NULL) return TS_ERR_NOMEM;
    if (ts_ring_create(&gw->inbox, GW_INBOX_MAX, sizeof(gw_msg_t)) != TS_OK ||
        ts_ring_create(&gw->acks, TS_BUS_MAX_IN_FLIGHT, sizeof(gw_ack_t)) != TS_OK) {
        ts_ring_destroy(gw->inbox);
        free(gw);
        return TS_ERR_NOMEM;
    }
    raise_fd_limit();
    gw->loop = loop;
    gw->cfg = cfg;
    gw->round_ns = 1000000000ULL / (uint64_t)(cfg->worker_tick_hz > 0 ? cfg->worker_tick_hz : 20);
    gw->bus = bus;
    gw->reg = reg;
    gw->world = *world;
    snprintf(gw->name, sizeof gw->name, "gateway-%lld", (long long)cfg->gateway_id);
    uint8_t rnd[8];
    random_bytes(rnd, sizeof rnd);
    gw->entity_rand = (uint16_t)(rnd[0] | rnd[1] << 8);
    random_bytes(&gw->instance, sizeof gw->instance);
    if (gw->instance == 0) gw->instance = 1;
    snprintf(gw->boot_nonce, sizeof gw->boot_nonce, "%02x%02x%02x%02x%02x%02x", rnd[2], rnd[3], rnd[4],
             rnd[5], rnd[6], rnd[7]);
    atomic_init(&gw->acks_ok, 0);
    atomic_init(&gw->acks_failed, 0);
    atomic_init(&gw->inbox_dropped, 0);
    atomic_init(&gw->acks_dropped, 0);
    atomic_init(&gw->registry_lost, false);
    ts_map_init(&gw->players);
    ts_map_init(&gw->cell_roots);
    ts_map_init(&gw->scratch);
    ts_map_init(&gw->homes);
    ts_map_init(&gw->inflight);
    ts_map_init(&gw->per_ip);
    ts_map_init(&gw->subs);
    if (gw_auth_init(gw) != TS_OK) {
        gw_auth_free(gw);
        ts_ring_destroy(gw->inbox);
        ts_ring_destroy(gw->acks);
        free(gw);
        return TS_ERR_CONFIG;
    }
    if (gw_router_init(gw) != TS_OK) {
        ts_ring_destroy(gw->inbox);
        ts_ring_destroy(gw->acks);
        free(gw);
        return TS_ERR_NOMEM;
    }

    if (ts_celltree_new(&gw->tree, world->id, world->cell_size) != TS_OK || gw_aoi_init(gw) != TS_OK) {
        ts_celltree_free(gw->tree);
        gw_router_free(gw);
        gw_auth_free(gw);
        ts_ring_destroy(gw->inbox);
        ts_ring_destroy(gw->acks);
        free(gw);
        return TS_ERR_NOMEM;
    }

    int nwriters = fanout_threads(cfg);
    gw->writers = nwriters > 0 ? gw_writers_new(nwriters) : NULL;
    if (nwriters > 0 && gw->writers == NULL)
        ts_warn("cannot start the fan-out's writer threads: the loop writes to every client itself");

    uv_async_init(loop, &gw->inbox_async, on_inbox);
    uv_check_init(loop, &gw->flush_check);
    uv_idle_init(loop, &gw->flush_idle);
    uv_timer_init(loop, &gw->flush_timer);
    uv_timer_init(loop, &gw->house_timer);
    uv_timer_init(loop, &gw->retry_timer);
    uv_timer_init(loop, &gw->life_timer);
    uv_timer_init(loop, &gw->alive_timer);
    gw->life_timer.data = gw->alive_timer.data = gw;
    uv_signal_init(loop, &gw->sigint);
    uv_signal_init(loop, &gw->sigterm);
    gw->inbox_async.data = gw->flush_check.data = gw;
    gw->flush_timer.data = gw->house_timer.data = gw->retry_timer.data = gw;
    gw->sigint.data = gw->sigterm.data = gw;

    gw_cells_apply_registry(gw, cells, ncells, 0);
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
    st = gw_ws_listen(gw);
    if (st != TS_OK) return st;
    st = gw_login_start(gw);
    if (st != TS_OK) return st;
    st = gw_counters_start(gw);
    if (st != TS_OK) return st;
    /* learn the registry version the startup read corresponds to */
    gw_request_reload(gw, true);
    uv_timer_start(&gw->house_timer, on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    uv_timer_start(&gw->life_timer, on_life, GW_LIFE_CHECK_MS, GW_LIFE_CHECK_MS);
    on_alive(&gw->alive_timer);
    uv_timer_start(&gw->alive_timer, on_alive, GW_ALIVE_MS, GW_ALIVE_MS);
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
    gw_ws_listen_close(gw);
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next) {
        joined += c->phase == GW_PHASE_JOINED;
        gw_session_release(c);
    }
    gw->stopping = true;
    gw_router_flush(gw, true);
    if (gw->batch_head != NULL) ts_warn("stopping with inputs the bus did not take");
    /* the one wait on the loop: the players' Detach inputs, at stop only */
    ts_status_t st = ts_bus_js_flush(gw->bus, STOP_FLUSH_MS);
    if (st != TS_OK) ts_warn("bus flush on stop: %s", ts_status_str(st));
    for (gw_conn_t *c = gw->conns; c != NULL; c = c->next)
        gw_conn_close(c);

    ts_bus_sub_close(gw->registry_sub);
    gw->registry_sub = NULL;
    gw_login_stop(gw);
    gw_counters_stop(gw);
    gw_aoi_close_all(gw);
    close_handle((uv_handle_t *)&gw->inbox_async);
    close_handle((uv_handle_t *)&gw->flush_check);
    close_handle((uv_handle_t *)&gw->flush_idle);
    close_handle((uv_handle_t *)&gw->flush_timer);
    close_handle((uv_handle_t *)&gw->house_timer);
    close_handle((uv_handle_t *)&gw->retry_timer);
    close_handle((uv_handle_t *)&gw->life_timer);
    close_handle((uv_handle_t *)&gw->alive_timer);
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
    gw_msg_t m;
    while (ts_ring_pop(gw->inbox, &m))
        ts_bus_held_free(m.msg);
    ts_ring_destroy(gw->inbox);
    ts_ring_destroy(gw->acks);
    gw_cells_free_all(gw);
    ts_celltree_free(gw->tree);
    gw_aoi_free(gw);
    gw_view_free(gw);
    gw_writers_free(gw->writers);
    ts_map_free(&gw->players);
    ts_map_free(&gw->per_ip);
    ts_map_free(&gw->subs);
    gw_auth_free(gw);
    gw_login_free(gw);
    gw_router_free(gw);
    gw_ws_server_free(gw);
    gw_counters_free(gw);
    free(gw->reload_cells);
    free(gw);
}
