/* One crowded cell end to end: a world of a single cell (1x1, so every sim
 * player is in it and stays in it: entities bounce off the world's edges),
 * 20,000 sim players in it at 1 input/s each, real nats-server -js and
 * redis-server, tessera-orch (no automatic rebalancing, liveness TTL 1.5 s)
 * and workers w1 and w2. A cell this size does not fit one NATS message
 * (max_payload 1 MB), so its state, checkpoint and handover snapshots must
 * be chunked.
 *
 * What users rely on, asserted here:
 *  - the cell is checkpointed: a whole checkpoint of its 20,000 entities
 *    appears on its checkpoint subjects (every part of a chunked one), by
 *    its first owner and again by the owner it was handed to;
 *  - it is handed over live (tessera-ctl handover): the reply is ok at
 *    exactly one epoch step, and the new owner reports all 20,000 entities;
 *  - after SIGKILL of its owner it is recovered by the other worker at
 *    exactly one more epoch step, which again reports all 20,000 entities
 *    and goes on applying inputs;
 *  - nothing is lost: the sim saw every one of its 20,000 players in the
 *    cell's state and ends with applied == acked == sent.
 *
 * Built a second time as it_bigcell_64k (tests/CMakeLists.txt): 3,000
 * players against a nats-server with max_payload 64 KB, which the workers
 * read when they connect and cut every message to, checkpoint parts and
 * handover snapshots included (each checkpoint message is checked to fit). */
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "ledger.h"
#include "probe.h"
#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define WORLD 0
#ifndef BIGCELL_PLAYERS
#define BIGCELL_PLAYERS 20000
#endif
/* nats-server's max_payload: 0 for its default (1 MB) */
#ifndef BIGCELL_MAX_PAYLOAD
#define BIGCELL_MAX_PAYLOAD 0
#endif
#ifndef BIGCELL_NAME
#define BIGCELL_NAME "it_bigcell"
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define PLAYERS BIGCELL_PLAYERS
#define PLAYERS_ARG "--sim.players=" STR(BIGCELL_PLAYERS)
#define WAIT_MS 60000
#define CKPT_WAIT_MS 15000 /* checkpoints are written every second */
#define CTL_WAIT_MS 40000
#define HB_TTL_ARG "--orch.hb_ttl_ms=1500"

static const ts_cell_t CELL = {.world = WORLD, .cx = 0, .cy = 0};

static ts_h_stack_t stack = {-1, {-1, -1}, -1, 0};
static ts_bus_t *bus;
static ts_probe_t *probe;
static ts_registry_t *reg;
static ts_bus_sub_t *ckpt_subs[2];

/* ---- the cell's checkpoints ----------------------------------------------------------
 * Every message on cell.0.0.0.0.0.checkpoint and cell.0.0.0.0.0.checkpoint.>
 * (where the parts of a chunked checkpoint go) as published: a core
 * subscription sees JetStream publishes too. Each message is a Checkpoint;
 * one that is not chunked counts alone, the parts of a chunked one (same
 * epoch, tick and last_applied_seq, part = 0..parts-1) count once every part
 * arrived. What the test reads, per cell epoch: the entities in the newest
 * whole checkpoint and when it was complete. */

#define MAX_EPOCH 16
#define MAX_PARTS 64

static struct {
    pthread_mutex_t mu;
    uint64_t msgs, bytes, malformed, largest;
    /* the chunked checkpoint being put together */
    uint64_t epoch, tick, seq;
    uint32_t parts;
    uint64_t seen; /* bit per part */
    uint64_t entities;
    uint64_t last_entities[MAX_EPOCH]; /* newest whole checkpoint, by epoch */
    uint64_t last_us[MAX_EPOCH];       /* ts_mono_us() when it was complete */
} CK = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void whole_checkpoint(uint64_t epoch, uint64_t entities)
{
    if (epoch >= MAX_EPOCH) return;
    CK.last_entities[epoch] = entities;
    CK.last_us[epoch] = ts_mono_us();
}

static void on_checkpoint(void *ud, const ts_bus_msg_t *m)
{
    (void)ud;
    Tessera__V1__Checkpoint *c = tessera__v1__checkpoint__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    ts_cell_t cell;
    pthread_mutex_lock(&CK.mu);
    CK.msgs++;
    CK.bytes += ts_bus_msg_len(m);
    if (ts_bus_msg_len(m) > CK.largest) CK.largest = ts_bus_msg_len(m);
    if (c == NULL || c->cell == NULL || ts_proto_cell_get(c->cell, &cell) != TS_OK ||
        !ts_cell_eq(&cell, &CELL) || c->parts > MAX_PARTS || (c->parts > 1 && c->part >= c->parts)) {
        CK.malformed++;
    } else if (c->parts <= 1) {
        whole_checkpoint(c->epoch, c->n_entities);
    } else {
        if (c->epoch != CK.epoch || c->tick != CK.tick || c->last_applied_seq != CK.seq ||
            c->parts != CK.parts) {
            CK.epoch = c->epoch;
            CK.tick = c->tick;
            CK.seq = c->last_applied_seq;
            CK.parts = c->parts;
            CK.seen = 0;
            CK.entities = 0;
        }
        if (!(CK.seen & (1ULL << c->part))) {
            CK.seen |= 1ULL << c->part;
            CK.entities += c->n_entities;
        }
        if (CK.seen == (CK.parts == 64 ? ~0ULL : (1ULL << CK.parts) - 1))
            whole_checkpoint(CK.epoch, CK.entities);
    }
    pthread_mutex_unlock(&CK.mu);
    if (c != NULL) tessera__v1__checkpoint__free_unpacked(c, NULL);
}

/* ---- cluster ------------------------------------------------------------------------- */

static void cluster_start(void)
{
    ts_h_set_nats_max_payload(BIGCELL_MAX_PAYLOAD);
    ts_h_start(&ts_h);
    pthread_mutex_lock(&CK.mu);
    CK.msgs = CK.bytes = CK.malformed = CK.largest = CK.epoch = CK.tick = CK.seq = CK.seen = CK.entities = 0;
    CK.parts = 0;
    memset(CK.last_entities, 0, sizeof CK.last_entities);
    memset(CK.last_us, 0, sizeof CK.last_us);
    pthread_mutex_unlock(&CK.mu);
    assert_int_equal(ts_bus_connect(&bus, ts_h.nats_url, BIGCELL_NAME), TS_OK);
    if (BIGCELL_MAX_PAYLOAD) assert_int_equal(ts_bus_max_payload(bus), BIGCELL_MAX_PAYLOAD);
    assert_int_equal(ts_probe_create(&probe, bus), TS_OK);
    char subject[TS_SUBJECT_MAX + 8];
    ts_subject_cell(subject, TS_SUBJECT_MAX, &CELL, TS_SUBJ_CHECKPOINT);
    assert_int_equal(ts_bus_subscribe(bus, subject, on_checkpoint, NULL, &ckpt_subs[0]), TS_OK);
    strcat(subject, ".>");
    assert_int_equal(ts_bus_subscribe(bus, subject, on_checkpoint, NULL, &ckpt_subs[1]), TS_OK);
    assert_int_equal(ts_registry_connect(&reg, ts_h.redis_url), TS_OK);

    const char *orch[] = {"--orch.rebalance=0", HB_TTL_ARG, "--world.x0=0", "--world.y0=0", "--world.width=1",
                          "--world.height=1",   NULL};
    const char *worker[] = {"--worker.hb_ms=250", HB_TTL_ARG, NULL};
    ts_h_spawn_stack(&ts_h, orch, worker, NULL, &stack);
    if (!ts_h_wait_world(&ts_h, WORLD, 1, WAIT_MS)) {
        ts_h.failed = true;
        fail_msg("the one-cell world did not come up");
    }
}

static void cluster_stop(void)
{
    for (int i = 0; i < 2; i++) {
        ts_bus_sub_destroy(ckpt_subs[i]);
        ckpt_subs[i] = NULL;
    }
    ts_probe_destroy(probe);
    ts_bus_destroy(bus);
    ts_registry_destroy(reg);
    probe = NULL;
    bus = NULL;
    reg = NULL;
    ts_h_stop(&ts_h);
}

static ts_cell_entry_t cell_entry(void)
{
    ts_cell_entry_t e;
    assert_int_equal(ts_registry_cell_get(reg, &CELL, &e), TS_OK);
    return e;
}

static int worker_idx(const char *id)
{
    return strcmp(id, "w1") == 0 ? 0 : 1;
}

/* Waits until worker's heartbeat, received after since_us, lists the cell
 * at epoch with all PLAYERS entities; with min_applied, also until it
 * applied that many inputs in all. Returns the heartbeat. */
static ts_probe_hb_t wait_holding(const char *worker, uint64_t epoch, uint64_t since_us, uint64_t min_applied,
                                  const char *what)
{
    ts_probe_cell_t want = {CELL, epoch};
    ts_probe_hb_t hb = {.ncells = 0};
    uint64_t deadline = ts_mono_us() + WAIT_MS * 1000ULL;
    for (;;) {
        bool have = ts_probe_heartbeat(probe, worker, &hb);
        if (have && hb.received_us > since_us && ts_probe_hb_lists(&hb, &want, 1) && hb.ncells == 1 &&
            hb.entities == PLAYERS && hb.inputs_applied >= min_applied)
            return hb;
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: %s's latest heartbeat (%s) lists %zu cells, %" PRIu32 " entities, %" PRIu64
                     " inputs applied; want the cell at epoch %" PRIu64 " with %d entities and %" PRIu64
                     " inputs applied",
                     what, worker, have ? "seen" : "none yet", hb.ncells, hb.entities, hb.inputs_applied,
                     epoch, PLAYERS, min_applied);
        }
        ts_sleep_ms(50);
    }
}

/* Waits until a whole checkpoint of the cell at epoch, complete after
 * since_us, was published, and checks it holds all PLAYERS entities. */
static void wait_checkpointed(uint64_t epoch, uint64_t since_us, const char *what)
{
    assert_true(epoch < MAX_EPOCH);
    uint64_t deadline = ts_mono_us() + CKPT_WAIT_MS * 1000ULL;
    for (;;) {
        pthread_mutex_lock(&CK.mu);
        uint64_t entities = CK.last_entities[epoch], at = CK.last_us[epoch];
        uint64_t msgs = CK.msgs, bytes = CK.bytes, malformed = CK.malformed, largest = CK.largest;
        pthread_mutex_unlock(&CK.mu);
        if (at > since_us) {
            fprintf(stderr,
                    "%s: a whole checkpoint of %" PRIu64 " entities at epoch %" PRIu64 " (%" PRIu64
                    " messages, %" PRIu64 " bytes on the checkpoint subjects so far, the largest %" PRIu64
                    ")\n",
                    what, entities, epoch, msgs, bytes, largest);
            if (BIGCELL_MAX_PAYLOAD && largest > BIGCELL_MAX_PAYLOAD) {
                ts_h.failed = true;
                fail_msg("%s: a checkpoint message of %" PRIu64 " bytes, larger than max_payload %d", what,
                         largest, BIGCELL_MAX_PAYLOAD);
            }
            if (entities != PLAYERS) {
                ts_h.failed = true;
                fail_msg("%s: a checkpoint of the cell holds %" PRIu64 " entities, want %d", what, entities,
                         PLAYERS);
            }
            return;
        }
        if (ts_mono_us() > deadline) {
            ts_h.failed = true;
            fail_msg("%s: no whole checkpoint of the cell at epoch %" PRIu64 " in %d s (%" PRIu64
                     " messages, %" PRIu64 " bytes, %" PRIu64
                     " not a Checkpoint of the cell, on its checkpoint subjects)",
                     what, epoch, CKPT_WAIT_MS / 1000, msgs, bytes, malformed);
        }
        ts_sleep_ms(50);
    }
}

/* ---- the test ---------------------------------------------------------------------------- */

static void test_big_cell_checkpoint_handover_recovery(void **state)
{
    (void)state;
    cluster_start();
    ts_cell_entry_t e0 = cell_entry();
    if (strcmp(e0.owner, "w1") != 0 && strcmp(e0.owner, "w2") != 0) {
        ts_h.failed = true;
        fail_msg("the cell belongs to '%s', want w1 or w2", e0.owner);
    }
    const char *first = strcmp(e0.owner, "w1") == 0 ? "w1" : "w2";
    const char *second = strcmp(first, "w1") == 0 ? "w2" : "w1";
    if (BIGCELL_MAX_PAYLOAD) { /* the workers cut their messages to the server's limit */
        char seen[64];
        snprintf(seen, sizeof seen, "(max_payload %d)", BIGCELL_MAX_PAYLOAD);
        for (int i = 0; i < 2; i++)
            if (!ts_h_wait_log(&ts_h, stack.workers[i], seen, WAIT_MS)) {
                ts_h.failed = true;
                fail_msg("worker %d did not say it read \"%s\"", i + 1, seen);
            }
    }

    const char *sim_args[] = {PLAYERS_ARG, "--sim.rate_hz=1", "--sim.seed=41", NULL};
    uint64_t t_sim = ts_mono_us();
    int sim = ts_h_spawn(&ts_h, "sim", "tessera-sim", sim_args);
    /* every player joined and sent a few moves: each entity's exactly-once
     * window has grown */
    ts_probe_hb_t hb = wait_holding(first, e0.epoch, t_sim, 3 * PLAYERS, "all players joined");
    fprintf(stderr, "%s holds the cell with %" PRIu32 " entities after %.1f s (tick p99 %.1f ms)\n", first,
            hb.entities, (double)(hb.received_us - t_sim) / 1e6, hb.tick_p99_ms);

    /* checkpointed */
    wait_checkpointed(e0.epoch, hb.received_us, "before the handover");

    /* handed over live */
    char key[TS_CELL_STR_MAX];
    ts_cell_format(&CELL, key, sizeof key);
    const char *ctl_args[] = {"handover", key, second, NULL};
    uint64_t t_ho = ts_mono_us();
    int ctl = ts_h_spawn(&ts_h, "ctl-handover", "tessera-ctl", ctl_args);
    int rc = ts_h_wait(&ts_h, ctl, CTL_WAIT_MS);
    char *out = ts_h_read_log(&ts_h, ctl);
    ts_probe_handover_t r;
    bool parsed = out != NULL && ts_probe_parse_handover(out, &r);
    fprintf(stderr, "tessera-ctl handover %s %s: exit %d after %.0f ms: %s", key, second, rc,
            (double)(ts_mono_us() - t_ho) / 1000, out ? out : "(no output)\n");
    free(out);
    if (rc != 0 || !parsed || strcmp(r.from, first) != 0 || strcmp(r.to, second) != 0 ||
        r.epoch_from != e0.epoch || r.epoch_to != e0.epoch + 1) {
        ts_h.failed = true;
        fail_msg("handover of the %d-entity cell from %s to %s failed (exit %d)", PLAYERS, first, second, rc);
    }
    ts_cell_entry_t e1 = cell_entry();
    assert_string_equal(e1.owner, second);
    assert_int_equal(e1.epoch, e0.epoch + 1);
    /* the new owner has every entity and applies inputs: a second of them */
    ts_probe_hb_t at = wait_holding(second, e1.epoch, t_ho, 0, "after the handover");
    hb = wait_holding(second, e1.epoch, t_ho, at.inputs_applied + PLAYERS, "after the handover");
    ts_probe_hb_t old;
    if (ts_probe_heartbeat(probe, first, &old) && old.received_us > hb.received_us && old.ncells != 0) {
        ts_h.failed = true;
        fail_msg("%s still lists %zu cells after handing its only cell over", first, old.ncells);
    }
    fprintf(stderr,
            "%s holds the cell at epoch %" PRIu64 " with %" PRIu32 " entities %.1f s after the request\n",
            second, e1.epoch, hb.entities, (double)(hb.received_us - t_ho) / 1e6);

    /* recovered after SIGKILL of its owner, from a checkpoint the new owner wrote */
    wait_checkpointed(e1.epoch, hb.received_us, "after the handover");
    uint64_t t_kill = ts_mono_us();
    ts_h_signal(&ts_h, stack.workers[worker_idx(second)], SIGKILL);
    ts_cell_entry_t e2;
    for (;;) {
        e2 = cell_entry();
        if (strcmp(e2.owner, second) != 0) break;
        if (ts_mono_us() - t_kill > WAIT_MS * 1000ULL) {
            ts_h.failed = true;
            fail_msg("%d s after SIGKILL of %s the cell still belongs to it", WAIT_MS / 1000, second);
        }
        ts_sleep_ms(20);
    }
    uint64_t reg_us = ts_mono_us() - t_kill;
    assert_string_equal(e2.owner, first);
    assert_int_equal(e2.epoch, e1.epoch + 1);
    at = wait_holding(first, e2.epoch, t_kill, 0, "after the recovery");
    uint64_t bound_us = at.received_us - t_kill;
    hb = wait_holding(first, e2.epoch, t_kill, at.inputs_applied + PLAYERS, "after the recovery");
    fprintf(stderr,
            "recovery after SIGKILL of %s: reassigned in %.0f ms, %s lists %" PRIu32
            " entities at epoch %" PRIu64 " after %.0f ms\n",
            second, (double)reg_us / 1000, first, at.entities, e2.epoch, (double)bound_us / 1000);

    /* nothing lost, for every player */
    int sim_rc;
    ts_probe_verdict_t v;
    if (!ts_probe_sim_check(&ts_h, sim, NULL, "the kill", t_kill, &sim_rc, &v)) {
        ts_h.failed = true;
        fail_msg("sim: exit %d, want 0 with applied == acked == sent > 0; its verdict: %s", sim_rc, v.line);
    }
    char *log = ts_h_read_log(&ts_h, sim);
    char seen[64];
    snprintf(seen, sizeof seen, "%d of %d players seen", PLAYERS, PLAYERS);
    bool all_seen = log != NULL && strstr(log, seen) != NULL;
    free(log);
    if (!all_seen) {
        ts_h.failed = true;
        fail_msg("the sim did not see all %d players in the cell's state (no \"%s\" in its log)", PLAYERS,
                 seen);
    }
    ts_h_pass();
}

static int test_teardown(void **state)
{
    ts_h_test_teardown(state);
    cluster_stop();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_big_cell_checkpoint_handover_recovery, ts_h_test_setup,
                                        test_teardown),
    };
    return TS_H_RUN(BIGCELL_NAME, tests, NULL, NULL);
}
