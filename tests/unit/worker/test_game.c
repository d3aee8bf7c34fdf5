/* Unit tests of services/worker/game.c, the game module host, against real
 * zones (zone.c is compiled in) with the test module of game_testmod.c,
 * compiled in and, for the loader, dlopen'ed from the shared objects
 * tests/CMakeLists.txt builds.
 *
 * The world is 4 x 4 root cells of 100 from (-2, -2); cell (0, 0) is
 * [0, 100) x [0, 100). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "game_host.h"
#include "tessera/util.h"
#include "zone.c" /* the simulation itself, unchanged */

#define tessera_game_module testmod_table
#include "game_testmod.c"
#undef tessera_game_module

static const ts_world_t WORLD = {.id = 0, .cell_size = 100, .x0 = -2, .y0 = -2, .width = 4, .height = 4};

static ts_game_host_t *host(int64_t budget_ms)
{
    ts_game_host_t *h = NULL;
    char err[256];
    assert_int_equal(ts_game_host_open(&h, testmod_table(), "", budget_ms, err, sizeof(err)), TS_OK);
    return h;
}

static ts_zone_t *zone_at(ts_game_host_t *h, int cx, int cy)
{
    ts_cell_t c = {.world = 0, .cx = cx, .cy = cy};
    ts_zone_t *z = NULL;
    assert_int_equal(ts_zone_create(&z, &c, 1, &WORLD, 50), TS_OK);
    ts_game_host_attach(h, z, 50);
    return z;
}

static ts_entity_t *get(ts_zone_t *z, uint64_t id)
{
    return ts_map_get(&z->entities, id);
}

static ts_input_t join_in(uint64_t entity, uint64_t seq, double x, double y, uint8_t team)
{
    ts_input_t in = {.entity = entity, .seq = seq, .kind = TS_INPUT_JOIN, .a = x, .b = y, .gateway = 1};
    in.payload[0] = team;
    in.payload_len = 1;
    return in;
}

static ts_input_t cmd_in(uint64_t entity, uint64_t seq, uint32_t type, const void *payload, size_t len)
{
    ts_input_t in = {.entity = entity, .seq = seq, .kind = TS_INPUT_COMMAND, .type = type};
    if (len) memcpy(in.payload, payload, len);
    in.payload_len = (uint32_t)len;
    return in;
}

/* Inputs as one input-stream message, through the wire like the worker
 * gets them (caller frees with tessera__v1__input_batch__free_unpacked). */
static Tessera__V1__InputBatch *batch_of(const ts_input_t *ins, size_t n)
{
    arena_t a = {0};
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    b.n_inputs = n;
    b.inputs = arena_alloc(&a, n * sizeof(*b.inputs));
    for (size_t i = 0; i < n; i++)
        b.inputs[i] = input_to_pb(&a, &ins[i]);
    assert_false(a.failed);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_proto_pack(&b.base, &buf, &len), TS_OK);
    arena_free(&a);
    Tessera__V1__InputBatch *u = tessera__v1__input_batch__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(u);
    return u;
}

static bool apply(ts_zone_t *z, uint64_t stream_seq, const ts_input_t *ins, size_t n, uint64_t tick)
{
    Tessera__V1__InputBatch *b = batch_of(ins, n);
    bool r = ts_zone_apply_batch(z, stream_seq, b, tick);
    tessera__v1__input_batch__free_unpacked(b, NULL);
    return r;
}

/* This tick's StateDelta (part 0), decoded. */
static Tessera__V1__StateDelta *delta(ts_zone_t *z, uint64_t tick)
{
    uint8_t **bufs;
    size_t *lens, nparts;
    assert_int_equal(ts_zone_pack_delta(z, tick, true, "w1", &bufs, &lens, &nparts), TS_OK);
    assert_true(nparts >= 1);
    Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, lens[0], bufs[0]);
    ts_zone_free_parts(bufs, lens, nparts);
    assert_non_null(d);
    return d;
}

/* ---- loading -------------------------------------------------------------------- */

static void test_load_from_file_and_abi_refusal(void **state)
{
    (void)state;
    ts_game_host_t *h = NULL;
    char err[512] = "";
    assert_int_equal(ts_game_host_load(&h, TS_TESTMOD_SO, "", 10, err, sizeof(err)), TS_OK);
    assert_string_equal(ts_game_host_name(h), "testmod");
    /* the module works through the host */
    ts_zone_t *z = zone_at(h, 0, 0);
    ts_input_t j = join_in(5, 1, 10, 10, 3);
    assert_true(apply(z, 1, &j, 1, 1));
    assert_int_equal(get(z, 5)->state_len, 2);
    assert_int_equal(get(z, 5)->state[0], 3);
    assert_int_equal(get(z, 5)->flags, TS_GAME_PLAYER);
    ts_zone_destroy(z);
    ts_game_host_close(h);

    /* another ABI version (1, before world counters): refused, naming the
     * file and both versions */
    h = NULL;
    assert_int_equal(ts_game_host_load(&h, TS_TESTMOD_BADABI_SO, "", 10, err, sizeof(err)), TS_ERR_CONFIG);
    assert_null(h);
    assert_non_null(strstr(err, TS_TESTMOD_BADABI_SO));
    assert_non_null(strstr(err, "ABI version 1,"));
    assert_non_null(strstr(err, "needs 2"));

    assert_int_equal(ts_game_host_load(&h, "/nonexistent/libnothing.so", "", 10, err, sizeof(err)),
                     TS_ERR_CONFIG);
    assert_non_null(strstr(err, "/nonexistent/libnothing.so"));
    /* load() refusing its configuration */
    assert_int_equal(ts_game_host_load(&h, TS_TESTMOD_SO, "fail", 10, err, sizeof(err)), TS_ERR_CONFIG);
    assert_non_null(strstr(err, "load()"));

    /* the built-in: movement only, no hooks on the zone */
    assert_int_equal(ts_game_host_load(&h, "", "", 10, err, sizeof(err)), TS_OK);
    assert_string_equal(ts_game_host_name(h), "move");
    z = zone_at(h, 0, 0);
    assert_null(z->game_hooks);
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

/* ---- commands ------------------------------------------------------------------- */

static void test_commands_applied_once(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *z = zone_at(h, 0, 0);
    ts_input_t in[] = {join_in(5, 1, 10, 10, 1), cmd_in(5, 2, 1, NULL, 0), cmd_in(5, 3, 1, NULL, 0)};
    assert_true(apply(z, 1, in, 3, 1));
    assert_int_equal(get(z, 5)->state[1], 2);
    /* the same commands again (a gateway resend, a forward overtaken) */
    ts_input_t again[] = {cmd_in(5, 3, 1, NULL, 0), cmd_in(5, 2, 1, NULL, 0)};
    assert_true(apply(z, 2, again, 2, 1));
    assert_int_equal(get(z, 5)->state[1], 2);
    assert_int_equal(z->stats.duplicates, 2);
    /* the stream message itself again: skipped whole */
    assert_false(apply(z, 1, in, 3, 1));
    assert_int_equal(get(z, 5)->state[1], 2);
    ts_game_stats_t st;
    ts_game_host_stats(h, &st);
    assert_int_equal(st.commands, 2);
    assert_int_equal(st.events, 2);

    /* the events ride in the delta's part 0, with the entity's new state */
    Tessera__V1__StateDelta *d = delta(z, 2);
    assert_int_equal(d->n_events, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(d->events[i]->type, 7);
        assert_int_equal(d->events[i]->entity, 5);
        assert_false(d->events[i]->positional);
        assert_int_equal(d->events[i]->payload.len, 2);
        assert_int_equal(d->events[i]->payload.data[1], i + 1);
    }
    assert_int_equal(d->n_entities, 1);
    assert_int_equal(d->entities[0]->state.len, 2);
    assert_int_equal(d->entities[0]->state.data[1], 2);
    assert_int_equal(d->entities[0]->flags, TS_GAME_PLAYER);
    tessera__v1__state_delta__free_unpacked(d, NULL);
    /* said once */
    d = delta(z, 3);
    assert_int_equal(d->n_events, 0);
    tessera__v1__state_delta__free_unpacked(d, NULL);

    /* a positional event */
    ts_input_t boom = cmd_in(5, 4, 6, NULL, 0);
    assert_true(apply(z, 3, &boom, 1, 3));
    d = delta(z, 4);
    assert_int_equal(d->n_events, 1);
    assert_true(d->events[0]->positional);
    assert_int_equal(d->events[0]->entity, 0);
    assert_true(d->events[0]->x == 10 && d->events[0]->y == 10);
    assert_memory_equal(d->events[0]->payload.data, "boom", 4);
    tessera__v1__state_delta__free_unpacked(d, NULL);
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

static void test_events_not_sent_while_replaying(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *z = zone_at(h, 0, 0);
    z->replaying = true; /* bound from a checkpoint, catching up */
    ts_input_t in[] = {join_in(5, 1, 10, 10, 1), cmd_in(5, 2, 1, NULL, 0), cmd_in(5, 3, 6, NULL, 0)};
    assert_true(apply(z, 1, in, 3, 1));
    assert_int_equal(get(z, 5)->state[1], 1); /* the command applied */
    assert_int_equal(z->nevents, 0);          /* its events did not */
    z->replaying = false;
    ts_input_t live = cmd_in(5, 4, 1, NULL, 0);
    assert_true(apply(z, 2, &live, 1, 2));
    Tessera__V1__StateDelta *d = delta(z, 2);
    assert_int_equal(d->n_events, 1);
    assert_int_equal(d->events[0]->payload.data[1], 2);
    tessera__v1__state_delta__free_unpacked(d, NULL);
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

static void test_error_and_overrun_do_not_stop_the_cell(void **state)
{
    (void)state;
    ts_game_host_t *h = host(20); /* command 3 runs 50 ms */
    ts_zone_t *z = zone_at(h, 0, 0);
    ts_input_t in[] = {join_in(5, 1, 10, 10, 1), cmd_in(5, 2, 2, NULL, 0), cmd_in(5, 3, 3, NULL, 0),
                       cmd_in(5, 4, 99, NULL, 0), cmd_in(5, 5, 1, NULL, 0)};
    assert_true(apply(z, 1, in, 5, 1));
    ts_game_stats_t st;
    ts_game_host_stats(h, &st);
    assert_int_equal(st.errors[TS_GAME_CB_COMMAND], 2); /* types 2 and 99 */
    assert_int_equal(st.overruns, 1);
    assert_int_equal(st.commands, 4);
    assert_int_equal(get(z, 5)->state[1], 1); /* the last one applied */
    assert_int_equal(get(z, 5)->inputs_applied, 5);
    ts_zone_step(z, 0.05, 2); /* and the cell ticks on */
    assert_int_equal(z->game.state_len, 12);
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

/* ---- state bytes on the wire --------------------------------------------------------- */

static void test_state_travels(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0);
    ts_input_t in[] = {join_in(5, 1, 99.5, 50, 4), cmd_in(5, 2, 1, NULL, 0), cmd_in(5, 3, 5, NULL, 0)};
    assert_true(apply(a, 1, in, 3, 1));
    assert_int_equal(ts_zone_entities(a), 2);
    uint64_t npc = 0;
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&a->entities, &it, &id, &v);)
        if (id != 5) npc = id;
    assert_int_equal(get(a, npc)->flags, TS_GAME_NPC);

    /* checkpoint (whole, then in parts) into a fresh zone */
    for (int parts = 0; parts < 2; parts++) {
        ts_zone_t *b = zone_at(h, 0, 0);
        uint8_t **bufs;
        size_t *lens, n;
        assert_int_equal(ts_zone_pack_checkpoint_parts(a, 1, "w1", false, 0, &bufs, &lens, &n), TS_OK);
        for (size_t i = 0; i < n; i++) {
            Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, lens[i], bufs[i]);
            assert_non_null(cp);
            assert_int_equal(ts_zone_load_checkpoint(b, cp, false, 1), TS_OK);
            tessera__v1__checkpoint__free_unpacked(cp, NULL);
        }
        ts_zone_free_parts(bufs, lens, n);
        for (size_t it = 0; ts_map_next(&a->entities, &it, &id, &v);) {
            ts_entity_t *ea = v, *eb = get(b, id);
            assert_non_null(eb);
            assert_int_equal(ea->flags, eb->flags);
            assert_int_equal(ea->state_len, eb->state_len);
            assert_memory_equal(ea->state, eb->state, ea->state_len);
        }
        ts_zone_destroy(b);
    }

    /* a diff after a change carries it */
    ts_zone_t *b = zone_at(h, 0, 0);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_checkpoint(a, 1, "w1", false, &buf, &len), TS_OK);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, buf);
    free(buf);
    assert_int_equal(ts_zone_load_checkpoint(b, cp, false, 1), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    ts_zone_mark_precopy(a);
    ts_input_t more = cmd_in(5, 4, 1, NULL, 0);
    assert_true(apply(a, 2, &more, 1, 2));
    assert_int_equal(ts_zone_pack_checkpoint(a, 2, "w1", true, &buf, &len), TS_OK);
    cp = tessera__v1__checkpoint__unpack(NULL, len, buf);
    free(buf);
    assert_int_equal(cp->n_entities, 1);
    assert_int_equal(ts_zone_load_checkpoint(b, cp, true, 2), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    assert_int_equal(get(b, 5)->state[1], 2);

    /* a ghost: the band entity's flags and state reach the neighbour */
    ts_zone_step(a, 0.001, 3);
    uint8_t **gb;
    size_t *gl, gn;
    assert_int_equal(ts_zone_pack_ghost(a, 3, true, 10, "w1", &gb, &gl, &gn), TS_OK);
    assert_int_equal(gn, 1);
    Tessera__V1__GhostDelta *gd = tessera__v1__ghost_delta__unpack(NULL, gl[0], gb[0]);
    ts_zone_free_parts(gb, gl, gn);
    assert_non_null(gd);
    ts_zone_t *east = zone_at(h, 1, 0);
    bool saw = false;
    for (size_t i = 0; i < gd->n_entities; i++) {
        const Tessera__V1__EntityState *es = gd->entities[i];
        if (es->id == 5) {
            saw = true;
            assert_int_equal(es->flags, TS_GAME_PLAYER);
            assert_int_equal(es->state.len, 2);
            assert_int_equal(es->state.data[1], 2);
        }
        ts_zone_ghost_put(east, &a->cell, a->epoch, 0, es->id, es->x, es->y, es->vx, es->vy);
        ts_zone_ghost_set_game(east, &a->cell, es->id, es->flags, es->state.data, es->state.len);
    }
    tessera__v1__ghost_delta__free_unpacked(gd, NULL);
    assert_true(saw);
    ts_game_ctx_t ctx = {.h = h, .z = east};
    ts_game_entity_t g;
    assert_int_equal(api->get(&ctx, 5, &g), TS_GAME_OK);
    assert_int_equal(g.flags, TS_GAME_PLAYER | TS_GAME_GHOST);
    assert_int_equal(g.state[0], 4);
    assert_int_equal(api->set(&ctx, &g), TS_GAME_EPERM); /* read-only */

    /* a transfer: the entity walks east and arrives with its state */
    get(a, 5)->vx = 40;
    ts_zone_step(a, 0.05, 4);
    assert_int_equal(a->ndeps, 1);
    Tessera__V1__InputBatch *deps = NULL;
    uint8_t *db;
    size_t dl;
    assert_int_equal(ts_zone_pack_departures(a, &db, &dl), TS_OK);
    deps = tessera__v1__input_batch__unpack(NULL, dl, db);
    free(db);
    a->deps_in_flight = a->ndeps; /* stored: the Departure comes back through a's stream */
    ts_zone_departures_done(a);
    assert_true(ts_zone_apply_batch(a, 10, deps, 4));
    tessera__v1__input_batch__free_unpacked(deps, NULL);
    assert_null(get(a, 5));
    assert_int_equal(a->nout, 1);
    uint8_t *ob;
    size_t ol;
    assert_int_equal(ts_zone_pack_outbox(a, 0, &ob, &ol), TS_OK);
    Tessera__V1__InputBatch *t = tessera__v1__input_batch__unpack(NULL, ol, ob);
    free(ob);
    assert_true(ts_zone_apply_batch(east, 1, t, 4));
    tessera__v1__input_batch__free_unpacked(t, NULL);
    ts_entity_t *e = get(east, 5);
    assert_non_null(e);
    assert_int_equal(e->flags, TS_GAME_PLAYER);
    assert_int_equal(e->state_len, 2);
    assert_int_equal(e->state[0], 4);
    assert_int_equal(e->state[1], 2);
    ts_zone_destroy(east);
    ts_zone_destroy(b);
    ts_zone_destroy(a);
    ts_game_host_close(h);
}

/* ---- world counters ------------------------------------------------------------------ */

static ts_input_t counter_in(uint64_t entity, uint64_t seq, uint8_t index, int64_t delta)
{
    uint8_t p[9];
    p[0] = index;
    memcpy(p + 1, &delta, sizeof(delta));
    return cmd_in(entity, seq, 9, p, sizeof(p));
}

/* Packs a's checkpoint (in parts when parts) and loads it into b. */
static void copy_checkpoint(ts_zone_t *a, ts_zone_t *b, bool parts)
{
    uint8_t **bufs;
    size_t *lens, n;
    if (parts) {
        assert_int_equal(ts_zone_pack_checkpoint_parts(a, 1, "w1", false, 7, &bufs, &lens, &n), TS_OK);
        assert_true(n >= 2);
    } else {
        n = 1;
        bufs = malloc(sizeof(*bufs));
        lens = malloc(sizeof(*lens));
        assert_non_null(bufs);
        assert_non_null(lens);
        assert_int_equal(ts_zone_pack_checkpoint(a, 1, "w1", false, &bufs[0], &lens[0]), TS_OK);
    }
    for (size_t i = 0; i < n; i++) {
        Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, lens[i], bufs[i]);
        assert_non_null(cp);
        assert_int_equal(ts_zone_load_checkpoint(b, cp, false, 1), TS_OK);
        tessera__v1__checkpoint__free_unpacked(cp, NULL);
    }
    ts_zone_free_parts(bufs, lens, n);
}

static void test_counter_add_bounds(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0);
    ts_input_t in[] = {join_in(5, 1, 10, 10, 1), counter_in(5, 2, 0, 3), counter_in(5, 3, 7, -2),
                       counter_in(5, 4, 0, 1), counter_in(5, 5, TS_GAME_COUNTERS, 100)};
    assert_true(apply(a, 1, in, 5, 1));
    assert_int_equal(a->game.counters[0], 4);
    assert_int_equal(a->game.counters[7], -2);
    for (int i = 1; i < 7; i++)
        assert_int_equal(a->game.counters[i], 0);
    /* the index past the last: EINVAL (the command's error), nothing changed */
    ts_game_stats_t st;
    ts_game_host_stats(h, &st);
    assert_int_equal(st.errors[TS_GAME_CB_COMMAND], 1);
    ts_game_ctx_t ctx = {.h = h, .z = a};
    assert_int_equal(api->counter_add(&ctx, TS_GAME_COUNTERS, 1), TS_GAME_EINVAL);
    assert_int_equal(api->counter_add(&ctx, UINT32_MAX, 1), TS_GAME_EINVAL);
    assert_int_equal(api->counter_add(&ctx, TS_GAME_COUNTERS - 1, 2), TS_GAME_OK);
    assert_int_equal(a->game.counters[7], 0);
    assert_int_equal(ts_zone_counters_len(a), 1);
    /* replayed in another zone from the same input: the same counters */
    ts_zone_t *r = zone_at(h, 0, 0);
    assert_true(apply(r, 1, in, 5, 1));
    assert_int_equal(r->game.counters[0], 4);
    assert_int_equal(r->game.counters[7], -2);
    ts_zone_destroy(r);
    ts_zone_destroy(a);
    ts_game_host_close(h);
}

static void test_counters_in_checkpoints(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0);
    /* enough entities for a checkpoint in parts: the counters are in part 0 */
    const uint64_t n = TS_ZONE_CKPT_PART_ENTITIES + 100;
    for (uint64_t i = 1; i <= n; i++) {
        ts_input_t j = join_in(i, 1, (double)(i % 97), (double)(i % 89), 1);
        ts_zone_apply_input(a, &j, 1);
    }
    ts_input_t in[] = {counter_in(1, 2, 0, 41), counter_in(1, 3, 1, -7), counter_in(1, 4, 5, INT64_MAX)};
    assert_true(apply(a, 1, in, 3, 1));
    for (int parts = 0; parts < 2; parts++) {
        ts_zone_t *b = zone_at(h, 0, 0);
        b->game.counters[6] = 9; /* not in the checkpoint: 0 after loading it */
        copy_checkpoint(a, b, parts);
        assert_int_equal(ts_zone_entities(b), n);
        assert_memory_equal(a->game.counters, b->game.counters, sizeof(a->game.counters));
        assert_int_equal(b->game.counters[5], INT64_MAX);
        assert_int_equal(b->game.counters[6], 0);
        ts_zone_destroy(b);
    }
    /* a handover Diff carries a change of the counters */
    ts_zone_t *b = zone_at(h, 0, 0);
    copy_checkpoint(a, b, false);
    ts_zone_mark_precopy(a);
    ts_input_t more = counter_in(1, 5, 0, 1);
    assert_true(apply(a, 2, &more, 1, 2));
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_checkpoint(a, 2, "w1", true, &buf, &len), TS_OK);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(cp);
    assert_int_equal(ts_zone_load_checkpoint(b, cp, true, 2), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    assert_int_equal(b->game.counters[0], 42);
    assert_memory_equal(a->game.counters, b->game.counters, sizeof(a->game.counters));
    ts_zone_destroy(b);
    ts_zone_destroy(a);
    ts_game_host_close(h);
}

/* A checkpoint of a big cell in parts: every part's entities keep their state. */
static void test_state_in_checkpoint_parts(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0);
    const uint64_t n = TS_ZONE_CKPT_PART_ENTITIES + 100;
    for (uint64_t i = 1; i <= n; i++) {
        ts_input_t j = join_in(i, 1, (double)(i % 97), (double)(i % 89), (uint8_t)i);
        ts_zone_apply_input(a, &j, 1);
    }
    uint8_t **bufs;
    size_t *lens, parts;
    assert_int_equal(ts_zone_pack_checkpoint_parts(a, 1, "w1", false, 7, &bufs, &lens, &parts), TS_OK);
    assert_int_equal(parts, 2);
    ts_zone_t *b = zone_at(h, 0, 0);
    for (size_t i = 0; i < parts; i++) {
        Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, lens[i], bufs[i]);
        assert_non_null(cp);
        assert_int_equal(ts_zone_load_checkpoint(b, cp, false, 1), TS_OK);
        tessera__v1__checkpoint__free_unpacked(cp, NULL);
    }
    ts_zone_free_parts(bufs, lens, parts);
    assert_int_equal(ts_zone_entities(b), n);
    for (uint64_t i = 1; i <= n; i++) {
        const ts_entity_t *e = get(b, i);
        assert_non_null(e);
        assert_int_equal(e->flags, TS_GAME_PLAYER);
        assert_int_equal(e->state_len, 2);
        assert_int_equal(e->state[0], (uint8_t)i);
    }
    ts_zone_destroy(a);
    ts_zone_destroy(b);
    ts_game_host_close(h);
}

/* ---- determinism -------------------------------------------------------------------------- */

static void test_rng_deterministic(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0), *b = zone_at(h, 0, 0), *c = zone_at(h, 1, 0);
    ts_game_ctx_t ca = {.h = h, .z = a}, cb = {.h = h, .z = b}, cc = {.h = h, .z = c};
    bool differs = false;
    for (int i = 0; i < 100; i++) {
        uint64_t x = api->rng(&ca);
        assert_int_equal(x, api->rng(&cb));
        if (x != api->rng(&cc)) differs = true;
        double u = api->rng_unit(&ca);
        assert_true(u >= 0 && u < 1);
        assert_true(u == api->rng_unit(&cb));
    }
    assert_true(differs);
    /* the state is the checkpointed word: a zone loaded from a checkpoint goes on the same */
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_checkpoint(a, 1, "w1", false, &buf, &len), TS_OK);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, buf);
    free(buf);
    ts_zone_t *d = zone_at(h, 0, 0);
    assert_int_equal(ts_zone_load_checkpoint(d, cp, false, 1), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    ts_game_ctx_t cd = {.h = h, .z = d};
    for (int i = 0; i < 10; i++)
        assert_int_equal(api->rng(&ca), api->rng(&cd));
    /* a split: each child a copy of the cell state and its own RNG, the same every time */
    ts_zone_game_t kids[4], again;
    for (unsigned q = 0; q < 4; q++) {
        ts_game_split_state(&a->game, q, &kids[q]);
        ts_game_split_state(&a->game, q, &again);
        assert_int_equal(kids[q].rng, again.rng);
        assert_int_equal(kids[q].state_len, a->game.state_len);
        for (unsigned p = 0; p < q; p++)
            assert_true(kids[p].rng != kids[q].rng);
    }
    ts_zone_destroy(a);
    ts_zone_destroy(b);
    ts_zone_destroy(c);
    ts_zone_destroy(d);
    ts_game_host_close(h);
}

/* One scripted game: the inputs of message k of the stream. */
static size_t script_inputs(int k, ts_input_t *in)
{
    size_t n = 0;
    uint64_t p = (uint64_t)(k / 3 + 1);
    if (k % 3 == 0) in[n++] = join_in(p, 1, 10 + 3.0 * k, 20 + 2.0 * k, (uint8_t)k);
    if (k % 3 == 1) in[n++] = cmd_in(p, 2, 5, NULL, 0); /* spawns a bot */
    if (k % 3 == 2) {
        in[n++] = cmd_in(p, 3, 1, NULL, 0);
        ts_input_t mv = {.entity = p, .seq = 4, .kind = TS_INPUT_MOVE, .a = 3, .b = -2};
        in[n++] = mv;
        uint64_t target = p > 1 ? p - 1 : p;
        in[n++] = cmd_in(p, 5, 4, &target, sizeof(target));
    }
    return n;
}

static void assert_same_game(ts_zone_t *a, ts_zone_t *b)
{
    assert_int_equal(a->game.rng, b->game.rng);
    assert_true(a->game.time == b->game.time);
    assert_int_equal(a->game.spawned, b->game.spawned);
    assert_int_equal(a->game.state_len, b->game.state_len);
    assert_memory_equal(a->game.state, b->game.state, a->game.state_len);
    assert_int_equal(ts_zone_entities(a), ts_zone_entities(b));
    uint64_t id;
    void *v;
    for (size_t it = 0; ts_map_next(&a->entities, &it, &id, &v);) {
        const ts_entity_t *ea = v, *eb = get(b, id);
        assert_non_null(eb);
        assert_int_equal(ea->flags, eb->flags);
        assert_int_equal(ea->state_len, eb->state_len);
        assert_memory_equal(ea->state, eb->state, ea->state_len);
        assert_true(ea->x == eb->x && ea->y == eb->y && ea->vx == eb->vx && ea->vy == eb->vy);
    }
    /* the requests decided: the same outbox entries, so the same message ids */
    assert_int_equal(a->nout, b->nout);
    for (size_t i = 0; i < a->nout; i++) {
        assert_int_equal(a->out[i].marker_seq, b->out[i].marker_seq);
        assert_int_equal(a->out[i].ninputs, b->out[i].ninputs);
    }
}

/* The recovery model: the input stream's clock (JetStream store times), a
 * tick every PERIOD_NS, and the delivery latency of a stored message to its
 * owner. */
#define PERIOD_NS 50000000ULL
#define DT 0.05
#define CLOCK0 1800000000000000000ULL
#define LATENCY_NS 3000000ULL
#define MSGS 24

/* When message k was stored: two messages in one tick's interval, then
 * two ticks without input; after message 15 a silence of 40 ticks. Each
 * 10 or 30 ms into its interval: not within the latency of a boundary. */
static uint64_t stored_at(int k)
{
    uint64_t tick = (uint64_t)(k / 2) * 3 + (k >= 15 ? 40 : 0);
    return CLOCK0 + tick * PERIOD_NS + (k % 2 ? 30000000ULL : 10000000ULL);
}

/* The original owner, live: at each tick it applies what has arrived
 * (stored + latency) and steps, its clock the tick's time; a tick period
 * with missed[j] set passes without its tick (an overloaded tick thread).
 * Stops after period `ticks`; *ckpt gets a checkpoint packed after tick
 * ckpt_tick; marks (may be NULL) get the tick marks of the ticks after it
 * (marks.c: the input applied before each, its time). */
static void run_original_marked(ts_zone_t *a, const uint64_t *stored, int nmsgs, uint64_t ticks,
                                const bool *missed, uint64_t ckpt_tick, uint8_t **ckpt, size_t *ckpt_len,
                                ts_zone_mark_t *marks, size_t *nmarks)
{
    int next = 0;
    if (nmarks) *nmarks = 0;
    for (uint64_t j = 1; j <= ticks; j++) {
        if (missed && missed[j]) continue;
        uint64_t now = CLOCK0 + j * PERIOD_NS;
        for (; next < nmsgs && stored[next] + LATENCY_NS <= now; next++) {
            ts_input_t in[3];
            size_t n = script_inputs(next, in);
            assert_true(apply(a, (uint64_t)next + 1, in, n, j));
        }
        if (marks && j > ckpt_tick) marks[(*nmarks)++] = (ts_zone_mark_t){j, (uint64_t)next, now};
        ts_zone_step(a, DT, j);
        a->clock_ns = now;
        if (j == ckpt_tick)
            assert_int_equal(ts_zone_pack_checkpoint(a, j, "w1", false, ckpt, ckpt_len), TS_OK);
    }
    assert_int_equal(next, nmsgs);
}

static void run_original(ts_zone_t *a, const uint64_t *stored, int nmsgs, uint64_t ticks, uint64_t ckpt_tick,
                         uint8_t **ckpt, size_t *ckpt_len)
{
    run_original_marked(a, stored, nmsgs, ticks, NULL, ckpt_tick, ckpt, ckpt_len, NULL, NULL);
}

/* A new owner as the worker recovers a cell (bindings.c, ts_worker_replay):
 * the checkpoint, then the backlog (every message, the ones it covers
 * skipped), each message after the ticks due before its store time, then
 * the ticks up to now, within `budget` entity steps per tick; then its first
 * live tick at now. Returns the ticks the catch-up took. */
static int recover(ts_zone_t *b, const uint8_t *ckpt, size_t ckpt_len, const uint64_t *stored, int nmsgs,
                   uint64_t now, uint32_t budget)
{
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, ckpt_len, ckpt);
    assert_non_null(cp);
    assert_int_equal(ts_zone_load_checkpoint(b, cp, false, 1), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    b->replaying = true;
    int next = 0, ticks = 0;
    for (;;) {
        ticks++;
        assert_true(ticks < 10000);
        uint32_t left = budget;
        for (; next < nmsgs; next++) {
            if ((uint64_t)next + 1 <= b->last_applied_seq) {
                ts_input_t none = cmd_in(1, 99, 1, NULL, 0);
                assert_false(apply(b, (uint64_t)next + 1, &none, 1, 0)); /* covered: skipped */
                continue;
            }
            if (!ts_zone_replay_until(b, stored[next], PERIOD_NS, DT, 0, &left, NULL, NULL)) break;
            ts_input_t in[3];
            size_t n = script_inputs(next, in);
            assert_true(apply(b, (uint64_t)next + 1, in, n, 0));
        }
        if (next == nmsgs && ts_zone_replay_until(b, now, PERIOD_NS, DT, 0, &left, NULL, NULL)) break;
    }
    b->replaying = false;
    ts_zone_step(b, DT, 0); /* live */
    b->clock_ns = now;
    return ticks;
}

/* A new owner as the worker recovers a cell from the last owner's tick
 * marks (bindings.c, replay_marks): the checkpoint, then per mark the
 * messages up to its sequence (the ones the checkpoint covers skipped) and
 * one step, within `budget` entity steps per tick. Returns the ticks the
 * catch-up took. */
static int recover_marked(ts_zone_t *b, const uint8_t *ckpt, size_t ckpt_len, int nmsgs,
                          const ts_zone_mark_t *marks, size_t nmarks, uint32_t budget)
{
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, ckpt_len, ckpt);
    assert_non_null(cp);
    assert_int_equal(ts_zone_load_checkpoint(b, cp, false, 1), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    b->replaying = true;
    int next = 0, ticks = 0;
    size_t mi = 0;
    while (mi < nmarks) {
        ticks++;
        assert_true(ticks < 10000);
        uint32_t left = budget;
        for (; mi < nmarks; mi++) {
            for (; next < nmsgs && (uint64_t)next + 1 <= marks[mi].through_seq; next++) {
                ts_input_t in[3];
                size_t n = script_inputs(next, in);
                bool fresh = (uint64_t)next + 1 > b->last_applied_seq; /* else covered: skipped */
                assert_int_equal(apply(b, (uint64_t)next + 1, in, n, 0), fresh);
            }
            if (!ts_zone_replay_mark(b, &marks[mi], DT, 0, &left, NULL, NULL)) break;
        }
    }
    b->replaying = false;
    return ticks;
}

static void test_recovery_replays_the_ticks(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    uint64_t stored[MSGS];
    for (int k = 0; k < MSGS; k++)
        stored[k] = stored_at(k);
    const uint64_t ckpt_tick = 14, ticks = 90; /* the crash after tick 90 */
    ts_zone_t *a = zone_at(h, 0, 0);
    uint8_t *ckpt = NULL;
    size_t ckpt_len = 0, nmarks = 0;
    ts_zone_mark_t marks[100];
    run_original_marked(a, stored, MSGS, ticks, NULL, ckpt_tick, &ckpt, &ckpt_len, marks, &nmarks);
    assert_int_equal(nmarks, ticks - ckpt_tick);
    assert_true(a->game.spawned > 0);

    /* recovered at the time of the original's last tick: everything as the
     * original had it, positions included; with room for every step in one
     * tick, and with a budget of 7 entity steps a tick (the rest on the next
     * ticks: a step of this cell, with its entities, takes a tick each) */
    uint32_t budgets[] = {UINT32_MAX, 7};
    for (size_t i = 0; i < 2; i++) {
        ts_zone_t *b = zone_at(h, 0, 0);
        int took = recover(b, ckpt, ckpt_len, stored, MSGS, CLOCK0 + ticks * PERIOD_NS, budgets[i]);
        assert_int_equal(b->stats.replay_steps, ticks - ckpt_tick - 1);
        assert_true(ts_zone_entities(b) >= 7);
        assert_int_equal(took, i == 0 ? 1 : (int)(ticks - ckpt_tick - 1));
        assert_int_equal(b->clock_ns, a->clock_ns);
        assert_same_game(a, b);
        ts_zone_destroy(b);
    }

    /* by the last owner's tick marks: every tick it ran after the
     * checkpoint, each after the input it had applied by then */
    for (size_t i = 0; i < 2; i++) {
        ts_zone_t *b = zone_at(h, 0, 0);
        int took = recover_marked(b, ckpt, ckpt_len, MSGS, marks, nmarks, budgets[i]);
        assert_int_equal(b->stats.replay_steps, nmarks);
        assert_int_equal(took, i == 0 ? 1 : (int)nmarks);
        assert_int_equal(b->clock_ns, a->clock_ns);
        assert_same_game(a, b);
        ts_zone_destroy(b);
    }

    /* what the replay's ticks are for: the entities moved after the
     * checkpoint, so a replay that only applied the input would differ */
    ts_zone_t *c = zone_at(h, 0, 0);
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, ckpt_len, ckpt);
    assert_int_equal(ts_zone_load_checkpoint(c, cp, false, 1), TS_OK);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
    for (int k = 0; k < MSGS; k++) {
        ts_input_t in[3];
        size_t n = script_inputs(k, in);
        apply(c, (uint64_t)k + 1, in, n, 0);
    }
    assert_true(c->game.time < a->game.time);
    const ts_entity_t *ea = get(a, 1), *ec = get(c, 1);
    assert_true(ea->vx != 0 && (ea->x != ec->x || ea->y != ec->y));
    ts_zone_destroy(c);
    free(ckpt);
    ts_zone_destroy(a);
    ts_game_host_close(h);
}

/* The store-time replay's limit (the fallback when tick marks are
 * missing): an input stored within the delivery latency before a tick
 * boundary reached the original after that tick; the replay applies it
 * before. Only that input's effect moves by one tick. */
static void test_replay_boundary_within_latency(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    uint64_t stored[MSGS];
    for (int k = 0; k < MSGS; k++)
        stored[k] = stored_at(k);
    /* message 20: just before the boundary of tick 70 */
    stored[20] = CLOCK0 + 70 * PERIOD_NS - LATENCY_NS / 2;
    assert_true(stored[20] > stored[19] && stored[20] < stored[21]);
    ts_zone_t *a = zone_at(h, 0, 0);
    uint8_t *ckpt = NULL;
    size_t ckpt_len = 0;
    run_original(a, stored, MSGS, 90, 14, &ckpt, &ckpt_len);
    ts_zone_t *b = zone_at(h, 0, 0);
    recover(b, ckpt, ckpt_len, stored, MSGS, CLOCK0 + 90 * PERIOD_NS, UINT32_MAX);
    /* message 20 (k % 3 == 2) moves entity 7 by (3, -2) / s: one tick more of it */
    const ts_entity_t *ea = get(a, 7), *eb = get(b, 7);
    assert_true(fabs((eb->x - ea->x) - 3 * DT) < 1e-9 && fabs((eb->y - ea->y) + 2 * DT) < 1e-9);
    /* the cell's clock, time, RNG and the ticks' work are the same */
    assert_int_equal(b->clock_ns, a->clock_ns);
    assert_true(a->game.time == b->game.time);
    assert_int_equal(a->game.rng, b->game.rng);
    assert_memory_equal(a->game.state, b->game.state, a->game.state_len);
    free(ckpt);
    ts_zone_destroy(a);
    ts_zone_destroy(b);
    ts_game_host_close(h);
}

/* What the tick marks make exact where store times cannot: an input stored
 * within the delivery latency before a tick boundary (it reached the
 * original after that tick), and tick periods the original missed. */
static void test_replay_by_marks_is_exact(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    uint64_t stored[MSGS];
    for (int k = 0; k < MSGS; k++)
        stored[k] = stored_at(k);
    /* message 20 (it moves entity 7): just before the boundary of tick 70 */
    stored[20] = CLOCK0 + 70 * PERIOD_NS - LATENCY_NS / 2;
    bool missed[91] = {false};
    missed[40] = missed[41] = missed[75] = true; /* the tick thread overran them */
    ts_zone_t *a = zone_at(h, 0, 0);
    uint8_t *ckpt = NULL;
    size_t ckpt_len = 0, nmarks = 0;
    ts_zone_mark_t marks[100];
    run_original_marked(a, stored, MSGS, 90, missed, 14, &ckpt, &ckpt_len, marks, &nmarks);
    assert_int_equal(nmarks, 90 - 14 - 3);

    uint32_t budgets[] = {UINT32_MAX, 7};
    for (size_t i = 0; i < 2; i++) {
        ts_zone_t *b = zone_at(h, 0, 0);
        recover_marked(b, ckpt, ckpt_len, MSGS, marks, nmarks, budgets[i]);
        assert_int_equal(b->stats.replay_steps, nmarks);
        assert_int_equal(b->clock_ns, a->clock_ns);
        assert_same_game(a, b); /* positions, api->time, the RNG, entity and cell bytes */
        ts_zone_destroy(b);
    }

    /* by store times (the fallback when marks are missing) both show: the
     * missed ticks are re-run, message 20 applies a tick early */
    ts_zone_t *c = zone_at(h, 0, 0);
    recover(c, ckpt, ckpt_len, stored, MSGS, CLOCK0 + 90 * PERIOD_NS, UINT32_MAX);
    assert_true(c->game.time > a->game.time);
    const ts_entity_t *ea = get(a, 7), *ec = get(c, 7);
    assert_true(ea->x != ec->x || ea->y != ec->y);
    ts_zone_destroy(c);
    free(ckpt);
    ts_zone_destroy(a);
    ts_game_host_close(h);
}

static void test_replay_clock_rules(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *z = zone_at(h, 0, 0);
    uint32_t budget = 100;
    /* no clock (an older checkpoint, or none): anchored at the first input */
    assert_true(ts_zone_replay_until(z, CLOCK0, PERIOD_NS, DT, 0, &budget, NULL, NULL));
    assert_int_equal(z->clock_ns, CLOCK0);
    assert_int_equal(z->stats.replay_steps, 0);
    /* within the next tick: nothing due; then a step per tick passed */
    assert_true(ts_zone_replay_until(z, CLOCK0 + PERIOD_NS, PERIOD_NS, DT, 0, &budget, NULL, NULL));
    assert_int_equal(z->stats.replay_steps, 0);
    assert_true(ts_zone_replay_until(z, CLOCK0 + 3 * PERIOD_NS + 1, PERIOD_NS, DT, 0, &budget, NULL, NULL));
    assert_int_equal(z->stats.replay_steps, 3);
    assert_int_equal(z->clock_ns, CLOCK0 + 3 * PERIOD_NS);
    assert_int_equal(budget, 97);
    assert_true(z->game.time == 3 * DT);
    /* an input stored earlier than the clock: nothing */
    assert_true(ts_zone_replay_until(z, CLOCK0, PERIOD_NS, DT, 0, &budget, NULL, NULL));
    assert_int_equal(z->stats.replay_steps, 3);
    /* the budget: false when it runs out, the rest at the next call */
    budget = 2;
    assert_false(ts_zone_replay_until(z, CLOCK0 + 9 * PERIOD_NS, PERIOD_NS, DT, 0, &budget, NULL, NULL));
    assert_int_equal(z->stats.replay_steps, 5);
    budget = 100;
    assert_true(ts_zone_replay_until(z, CLOCK0 + 9 * PERIOD_NS, PERIOD_NS, DT, 0, &budget, NULL, NULL));
    assert_int_equal(z->stats.replay_steps, 8);
    /* a silence longer than TS_ZONE_REPLAY_GAP_MAX_NS: its last part only */
    uint64_t ticks_max = TS_ZONE_REPLAY_GAP_MAX_NS / PERIOD_NS;
    uint64_t from = z->clock_ns, t = from + 100 * TS_ZONE_REPLAY_GAP_MAX_NS;
    budget = UINT32_MAX;
    assert_true(ts_zone_replay_until(z, t, PERIOD_NS, DT, 0, &budget, NULL, NULL));
    assert_true(z->stats.replay_steps - 8 <= ticks_max && z->stats.replay_steps - 8 >= ticks_max - 1);
    assert_true(z->clock_ns < t && z->clock_ns + PERIOD_NS >= t);
    assert_int_equal(z->stats.replay_skipped + z->stats.replay_steps - 8, (t - from - 1) / PERIOD_NS);
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

/* ---- spawn, despawn ------------------------------------------------------------------------- */

static void test_spawn_ids(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0), *b = zone_at(h, 0, 0), *c = zone_at(h, 1, 0);
    ts_game_ctx_t ca = {.h = h, .z = a}, cb = {.h = h, .z = b}, cc = {.h = h, .z = c};
    int64_t ids[TS_GAME_SPAWNS_PER_TICK];
    for (int i = 0; i < TS_GAME_SPAWNS_PER_TICK; i++) {
        ids[i] = api->spawn(&ca, 50, 50, "bot", "s", 1);
        assert_true(ids[i] > 0);
        /* never a player's: those start with their gateway id, and 0x7fff is reserved */
        assert_int_equal((uint64_t)ids[i] >> 48, 0x7fff);
        assert_int_equal(api->spawn(&cb, 50, 50, "bot", NULL, 0), ids[i]); /* same cell, same ids */
        assert_true(api->spawn(&cc, 150, 50, "bot", NULL, 0) != ids[i]);
        for (int k = 0; k < i; k++)
            assert_true(ids[k] != ids[i]);
        ts_entity_t *e = get(a, (uint64_t)ids[i]);
        assert_non_null(e);
        assert_int_equal(e->flags, TS_GAME_NPC);
        assert_int_equal(e->gateway, 0);
        assert_string_equal(e->name, "bot");
        assert_true(e->dirty);
    }
    /* bounded per tick */
    assert_int_equal(api->spawn(&ca, 50, 50, "bot", NULL, 0), TS_GAME_ENOSPC);
    ts_zone_step(a, 0.05, 1); /* on_tick: a new tick's budget */
    assert_true(api->spawn(&ca, 50, 50, "bot", NULL, 0) > 0);
    /* only inside the cell, state bounded */
    assert_int_equal(api->spawn(&ca, 150, 50, "bot", NULL, 0), TS_GAME_ERANGE);
    uint8_t big[TS_GAME_STATE_MAX + 1] = {0};
    assert_int_equal(api->spawn(&ca, 50, 50, "bot", big, sizeof(big)), TS_GAME_EINVAL);
    /* despawn: NPCs only */
    ts_input_t j = join_in(5, 1, 10, 10, 1);
    assert_true(apply(a, 1, &j, 1, 1));
    assert_int_equal(api->despawn(&ca, 5), TS_GAME_EPERM);
    assert_int_equal(api->despawn(&ca, 12345), TS_GAME_ENOENT);
    assert_int_equal(api->despawn(&ca, (uint64_t)ids[0]), TS_GAME_OK);
    assert_null(get(a, (uint64_t)ids[0]));
    assert_int_equal(a->nleft, 1);
    assert_true(a->left[0].despawned);
    /* an NPC in the border band despawned between the step and the ghost
     * pack (as on_tick does): the ghost delta says it is gone and reads
     * nothing freed */
    ts_zone_step(a, 0.05, 2);
    int64_t edge = api->spawn(&ca, 1, 50, "edge", NULL, 0);
    assert_true(edge > 0);
    ts_zone_step(a, 0.05, 3);
    assert_true(get(a, (uint64_t)edge)->ghosted);
    assert_int_equal(api->despawn(&ca, (uint64_t)edge), TS_GAME_OK);
    uint8_t **bufs = NULL;
    size_t *lens = NULL, np = 0;
    assert_int_equal(ts_zone_pack_ghost(a, 3, false, 20, "w1", &bufs, &lens, &np), TS_OK);
    assert_true(np >= 1);
    Tessera__V1__GhostDelta *gd = tessera__v1__ghost_delta__unpack(NULL, lens[0], bufs[0]);
    assert_non_null(gd);
    bool removed = false;
    for (size_t i = 0; i < gd->n_removed; i++)
        removed = removed || gd->removed[i] == (uint64_t)edge;
    for (size_t i = 0; i < gd->n_entities; i++)
        assert_true(gd->entities[i]->id != (uint64_t)edge);
    assert_true(removed);
    tessera__v1__ghost_delta__free_unpacked(gd, NULL);
    ts_zone_free_parts(bufs, lens, np);
    ts_zone_destroy(a);
    ts_zone_destroy(b);
    ts_zone_destroy(c);
    ts_game_host_close(h);
}

/* ---- requests --------------------------------------------------------------------------- */

static Tessera__V1__InputBatch *outbox_batch(ts_zone_t *z, size_t i)
{
    uint8_t *buf;
    size_t len;
    assert_int_equal(ts_zone_pack_outbox(z, i, &buf, &len), TS_OK);
    Tessera__V1__InputBatch *b = tessera__v1__input_batch__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(b);
    return b;
}

/* Sum of the counters of zones zs plus what is on its way between them
 * (each flow's out less its peer's in). */
static void world_sum(ts_zone_t **zs, size_t n, int64_t *sum)
{
    memset(sum, 0, TS_GAME_COUNTERS * sizeof(*sum));
    for (size_t i = 0; i < n; i++) {
        for (size_t c = 0; c < TS_GAME_COUNTERS; c++)
            sum[c] += zs[i]->game.counters[c];
        for (size_t f = 0; f < zs[i]->nflows; f++) {
            const ts_zone_flow_t *fl = &zs[i]->flows[f];
            const ts_zone_flow_t *back = NULL;
            for (size_t j = 0; j < n; j++)
                if (ts_cell_eq(&zs[j]->cell, &fl->peer))
                    for (size_t g = 0; g < zs[j]->nflows; g++)
                        if (ts_cell_eq(&zs[j]->flows[g].peer, &zs[i]->cell)) back = &zs[j]->flows[g];
            for (size_t c = 0; c < TS_GAME_COUNTERS; c++)
                sum[c] += fl->out[c] - (back ? back->in[c] : 0);
        }
    }
}

/* The one outbox entry of z going to `to`. */
static size_t outbox_to(const ts_zone_t *z, const ts_cell_t *to)
{
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < z->nout; i++)
        if (ts_cell_eq(&z->out[i].dest, to) && z->out[i].ninputs > 0) {
            assert_int_equal(found, SIZE_MAX);
            found = i;
        }
    assert_int_not_equal(found, SIZE_MAX);
    return found;
}

/* Applies z's own outbox entry (its counter move marker) at stream seq. */
static void consume_marker(ts_zone_t *z, uint64_t seq)
{
    size_t i = outbox_to(z, &z->cell);
    Tessera__V1__InputBatch *b = outbox_batch(z, i);
    assert_int_equal(b->n_inputs, 1);
    assert_int_equal(b->inputs[0]->kind_case, TESSERA__V1__INPUT__KIND_COUNTER_MOVE);
    assert_int_equal(b->inputs[0]->entity, 0);
    ts_zone_outbox_done(z, i);
    ts_zone_outbox_clear(z);
    assert_true(ts_zone_apply_batch(z, seq, b, 1));
    tessera__v1__input_batch__free_unpacked(b, NULL);
}

/* A split: children start at 0, the parent's counters go to child 0 by a
 * marker in the parent's stream and a CountersInput in the child's, applied
 * once however often either message is applied or replayed; a merge: each
 * child's go to the parent the same way. The sum of the counters plus what
 * is on its way is the same at every step. */
static void test_counter_moves_exactly_once(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *p = zone_at(h, 0, 0);
    ts_zone_t *kz[4];
    ts_cell_t kids[4];
    assert_int_equal(ts_cell_children(&p->cell, kids), TS_OK);
    int64_t want[TS_GAME_COUNTERS], sum[TS_GAME_COUNTERS];
    for (int i = 0; i < TS_GAME_COUNTERS; i++)
        want[i] = p->game.counters[i] = (i + 1) * (i % 2 ? -3 : 5);
    for (int q = 0; q < 4; q++) {
        assert_int_equal(ts_zone_create(&kz[q], &kids[q], 2, &WORLD, 50), TS_OK);
        ts_game_host_attach(h, kz[q], 50);
        ts_game_split_state(&p->game, (unsigned)q, &kz[q]->game);
        for (int i = 0; i < TS_GAME_COUNTERS; i++)
            assert_int_equal(kz[q]->game.counters[i], 0);
    }
    ts_zone_t *all[5] = {p, kz[0], kz[1], kz[2], kz[3]};

    /* the marker: into the parent's own stream, queued once */
    p->last_applied_seq = 9;
    assert_true(ts_zone_queue_counter_move(p, &kids[0]));
    assert_false(ts_zone_queue_counter_move(p, &kids[0]));
    assert_int_equal(p->nout, 1);
    assert_true(p->out[0].marker_seq & TS_ZONE_REQUEST_MARK);
    world_sum(all, 5, sum);
    assert_memory_equal(sum, want, sizeof(sum));
    /* a new owner replaying later starts from this checkpoint */
    ts_zone_t *p2 = zone_at(h, 0, 0);
    copy_checkpoint(p, p2, false);
    assert_int_equal(p2->nout, 1); /* the marker not stored yet goes again... */
    assert_int_equal(p2->out[0].marker_seq, p->out[0].marker_seq); /* ...under the same id */

    /* applied at seq 10: the parent's counters are 0 and on their way */
    consume_marker(p, 10);
    assert_int_equal(ts_zone_counters_len(p), 0);
    assert_false(p->counter_move_queued);
    assert_int_equal(p->nflows, 1);
    assert_memory_equal(p->flows[0].out, want, sizeof(want));
    world_sum(all, 5, sum);
    assert_memory_equal(sum, want, sizeof(sum));
    size_t oi = outbox_to(p, &kids[0]);
    assert_int_equal(p->out[oi].marker_seq, 10); /* message id xfer-<parent>-m10-<child 0> */
    uint8_t *buf1, *buf2;
    size_t len1, len2;
    assert_int_equal(ts_zone_pack_outbox(p, oi, &buf1, &len1), TS_OK);
    Tessera__V1__InputBatch *move = outbox_batch(p, oi);
    assert_int_equal(move->n_inputs, 1);
    assert_int_equal(move->inputs[0]->kind_case, TESSERA__V1__INPUT__KIND_COUNTERS);
    assert_int_equal(move->inputs[0]->counters->from_seq, 10);

    /* the replaying owner decides the same move, byte for byte */
    consume_marker(p2, 10);
    assert_int_equal(ts_zone_counters_len(p2), 0);
    assert_int_equal(ts_zone_pack_outbox(p2, outbox_to(p2, &kids[0]), &buf2, &len2), TS_OK);
    assert_int_equal(len1, len2);
    assert_memory_equal(buf1, buf2, len1);
    free(buf1);
    free(buf2);
    ts_zone_destroy(p2);

    /* child 0 adds them once: a second copy (stored again after the dedup
     * window) and a replay of the same stream seq change nothing */
    assert_true(ts_zone_apply_batch(kz[0], 5, move, 1));
    assert_memory_equal(kz[0]->game.counters, want, sizeof(want));
    assert_false(ts_zone_apply_batch(kz[0], 5, move, 1));
    uint64_t dup = kz[0]->stats.duplicates;
    assert_true(ts_zone_apply_batch(kz[0], 6, move, 1));
    assert_int_equal(kz[0]->stats.duplicates, dup + 1);
    assert_memory_equal(kz[0]->game.counters, want, sizeof(want));
    tessera__v1__input_batch__free_unpacked(move, NULL);
    ts_zone_outbox_done(p, oi);
    ts_zone_outbox_clear(p);
    world_sum(all, 5, sum);
    assert_memory_equal(sum, want, sizeof(sum));
    /* a second copy of the marker moves what the parent has by then: nothing */
    assert_true(ts_zone_queue_counter_move(p, &kids[0]));
    consume_marker(p, 11);
    assert_int_equal(p->nout, 0);

    /* the checkpoint carries the flows: a new owner of child 0 still tells
     * the copy */
    ts_zone_t *k2;
    assert_int_equal(ts_zone_create(&k2, &kids[0], 2, &WORLD, 50), TS_OK);
    ts_game_host_attach(h, k2, 50);
    copy_checkpoint(kz[0], k2, false);
    assert_int_equal(k2->nflows, 1);
    assert_int_equal(k2->flows[0].in_seq, 10);
    assert_memory_equal(k2->flows[0].in, want, sizeof(want));
    ts_zone_destroy(k2);

    /* the children play on, the forwarding parent applies a late one, then
     * they merge back: each child's counters go to the parent */
    p->game.counters[2] += 1;
    want[2] += 1;
    for (int q = 0; q < 4; q++) {
        kz[q]->game.counters[0] += q;
        kz[q]->game.counters[3] -= 2 * q;
        want[0] += q;
        want[3] -= 2 * q;
    }
    for (int q = 0; q < 4; q++) {
        assert_true(ts_zone_queue_counter_move(kz[q], &p->cell));
        consume_marker(kz[q], 20);
        world_sum(all, 5, sum);
        assert_memory_equal(sum, want, sizeof(sum));
    }
    uint64_t seq = 30;
    for (int q = 0; q < 4; q++) {
        assert_int_equal(ts_zone_counters_len(kz[q]), 0);
        Tessera__V1__InputBatch *b = outbox_batch(kz[q], outbox_to(kz[q], &p->cell));
        assert_true(ts_zone_apply_batch(p, seq++, b, 1));
        assert_true(ts_zone_apply_batch(p, seq++, b, 1)); /* a copy */
        tessera__v1__input_batch__free_unpacked(b, NULL);
        ts_zone_outbox_done(kz[q], 0);
        ts_zone_outbox_clear(kz[q]);
        world_sum(all, 5, sum);
        assert_memory_equal(sum, want, sizeof(sum));
    }
    assert_memory_equal(p->game.counters, want, sizeof(want));
    for (int q = 0; q < 4; q++)
        ts_zone_destroy(kz[q]);
    ts_zone_destroy(p);
    ts_game_host_close(h);
}

/* A gateway's input may not move counters (workers' only: players.c), and
 * a marker naming the cell itself, another world or applied without a
 * stream seq is dropped. */
static void test_counter_move_bad_input(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *z = zone_at(h, 0, 0);
    z->game.counters[0] = 7;
    ts_cell_t other_world = {.world = 9, .cx = 1, .cy = 0};
    ts_input_t bad[] = {
        {.kind = TS_INPUT_COUNTER_MOVE, .peer = z->cell},
        {.kind = TS_INPUT_COUNTER_MOVE, .peer = other_world},
        {.kind = TS_INPUT_COUNTERS, .peer = other_world, .move_seq = 1, .values = {5}},
    };
    uint64_t dropped = z->stats.dropped;
    assert_true(apply(z, 3, bad, 3, 1));
    assert_int_equal(z->stats.dropped, dropped + 3);
    ts_cell_t east = {.world = 0, .cx = 1, .cy = 0};
    ts_input_t mark = {.kind = TS_INPUT_COUNTER_MOVE, .peer = east};
    assert_true(apply(z, 0, &mark, 1, 1));
    assert_int_equal(z->stats.dropped, dropped + 4);
    assert_int_equal(z->game.counters[0], 7);
    assert_int_equal(z->nout, 0);
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

static void test_requests_go_through_the_target_cell(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0), *east = zone_at(h, 1, 0);
    ts_input_t in[] = {join_in(5, 1, 95, 50, 1), join_in(6, 1, 90, 50, 2)};
    assert_true(apply(a, 1, in, 2, 1));
    ts_input_t ein = join_in(7, 1, 102, 50, 3);
    assert_true(apply(east, 1, &ein, 1, 1));
    /* 7 is a ghost in a */
    const ts_entity_t *e7 = get(east, 7);
    ts_zone_ghost_put(a, &east->cell, east->epoch, 0, 7, e7->x, e7->y, 0, 0);

    /* to an entity of the same cell: through the own input stream, never a direct write */
    uint64_t target = 6;
    ts_input_t c1 = cmd_in(5, 2, 4, &target, sizeof(target));
    target = 7;
    ts_input_t c2 = cmd_in(5, 3, 4, &target, sizeof(target));
    target = 424242;
    ts_input_t c3 = cmd_in(5, 4, 4, &target, sizeof(target));
    ts_input_t cs[] = {c1, c2, c3};
    assert_true(apply(a, 2, cs, 3, 2));
    assert_int_equal(get(a, 6)->state[1], 0);
    ts_game_stats_t st;
    ts_game_host_stats(h, &st);
    assert_int_equal(st.requests_sent, 2);
    assert_int_equal(st.errors[TS_GAME_CB_COMMAND], 1); /* the unknown target: ENOENT */
    assert_int_equal(a->nout, 2);
    ts_zone_out_t *own = NULL, *other = NULL;
    for (size_t i = 0; i < a->nout; i++) {
        assert_true(a->out[i].marker_seq & TS_ZONE_REQUEST_MARK);
        assert_int_equal(a->out[i].ninputs, 1);
        if (ts_cell_eq(&a->out[i].dest, &a->cell)) own = &a->out[i];
        if (ts_cell_eq(&a->out[i].dest, &east->cell)) other = &a->out[i];
    }
    assert_non_null(own);
    assert_non_null(other);
    assert_true(own->marker_seq != other->marker_seq);
    assert_int_equal(own->inputs[0].entity, 6);
    assert_int_equal(other->inputs[0].entity, 7);

    /* the target's owner applies it once, in stream order */
    size_t oi = (size_t)(other - a->out);
    Tessera__V1__InputBatch *b = outbox_batch(a, oi);
    assert_int_equal(b->n_inputs, 1);
    const Tessera__V1__Input *pin = b->inputs[0];
    assert_int_equal(pin->kind_case, TESSERA__V1__INPUT__KIND_REQUEST);
    assert_int_equal(pin->seq, 0);
    assert_int_equal(pin->request->from, 5);
    assert_true(pin->request->from_x == 95);
    assert_int_equal(pin->request->from_epoch, a->epoch);
    assert_true(ts_zone_apply_batch(east, 2, b, 2));
    assert_false(ts_zone_apply_batch(east, 2, b, 2)); /* redelivered: skipped */
    tessera__v1__input_batch__free_unpacked(b, NULL);
    assert_int_equal(get(east, 7)->state[1], 10);
    assert_true(get(east, 7)->dirty);
    ts_game_host_stats(h, &st);
    assert_int_equal(st.requests, 1);

    /* the own cell's request comes back through a's stream */
    b = outbox_batch(a, (size_t)(own - a->out));
    assert_true(ts_zone_apply_batch(a, 3, b, 3));
    tessera__v1__input_batch__free_unpacked(b, NULL);
    assert_int_equal(get(a, 6)->state[1], 10);

    /* an answer from the target's cell goes back to the cell the request
     * came from, though that cell has no ghost of the requester */
    assert_null(ts_map_get(&east->ghosts, 5));
    target = 7;
    ts_input_t ask = cmd_in(5, 5, 8, &target, sizeof(target));
    size_t before = a->nout;
    assert_true(apply(a, 4, &ask, 1, 4));
    assert_int_equal(a->nout, before + 1);
    b = outbox_batch(a, a->nout - 1);
    assert_true(ts_zone_apply_batch(east, 3, b, 4));
    tessera__v1__input_batch__free_unpacked(b, NULL);
    ts_zone_out_t *answer = &east->out[east->nout - 1];
    assert_true(ts_cell_eq(&answer->dest, &a->cell));
    assert_int_equal(answer->inputs[0].entity, 5);
    b = outbox_batch(east, east->nout - 1);
    assert_true(ts_zone_apply_batch(a, 5, b, 5));
    tessera__v1__input_batch__free_unpacked(b, NULL);
    assert_int_equal(get(a, 5)->state[1], 10);

    /* a request for an entity that left follows it (forwarded, its id still deterministic);
     * one for an entity nobody knows is counted and dropped */
    ts_input_t r = {.entity = 999, .kind = TS_INPUT_REQUEST, .type = 9, .payload_len = 2, .from = 5};
    memcpy(r.payload, "hi", 2);
    r.from_cell = a->cell;
    assert_true(apply(east, 4, &r, 1, 3));
    assert_int_equal(east->requests_ignored, 1);
    ts_zone_destroy(a);
    ts_zone_destroy(east);
    ts_game_host_close(h);
}

typedef struct {
    uint64_t ids[16];
    size_t n;
} seen_t;

static void see(void *ud, const ts_game_entity_t *e)
{
    seen_t *s = ud;
    if (s->n < 16) s->ids[s->n++] = e->id;
}

static void see_w(void *ud, ts_game_entity_t *e)
{
    see(ud, e);
}

/* each and query visit in id order, whatever the zone's map did before (a
 * replaying owner's map has another history). */
static void test_visits_in_id_order(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *z = zone_at(h, 0, 0);
    const uint64_t ids[] = {90, 3, 700000, 7, 1, 65, 12};
    for (size_t i = 0; i < 7; i++) {
        ts_input_t j = join_in(ids[i], 1, 10 + (double)i * 0.1, 10, 0);
        ts_zone_apply_input(z, &j, 1);
    }
    ts_input_t bye = {.entity = 65, .seq = 2, .kind = TS_INPUT_LEAVE};
    ts_zone_apply_input(z, &bye, 1);
    ts_zone_ghost_put(z, &(ts_cell_t){.world = 0, .cx = -1, .cy = 0}, 1, 0, 5, 10.2, 10, 0, 0);
    ts_game_ctx_t ctx = {.h = h, .z = z};
    const uint64_t want_each[] = {1, 3, 7, 12, 90, 700000}, want_query[] = {1, 3, 5, 7, 12, 90, 700000};
    seen_t s = {0};
    assert_int_equal(api->each(&ctx, see_w, &s), 6);
    assert_int_equal(s.n, 6);
    assert_memory_equal(s.ids, want_each, sizeof(want_each));
    memset(&s, 0, sizeof(s));
    assert_int_equal(api->query(&ctx, 10, 10, 5, see, &s), 7);
    assert_memory_equal(s.ids, want_query, sizeof(want_query));
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

/* Writable views: velocities clamped, state bounded, changes mark the entity. */
/* The registry's epochs as the receiving worker knows them (the test's). */
static uint64_t fence_epoch_east = 0;
static uint64_t fence_epoch(void *ud, const ts_cell_t *cell)
{
    (void)ud;
    return cell->cx == 1 && cell->cy == 0 ? fence_epoch_east : 0;
}

/* The fence by store time: a request stored before its sender's cell moved
 * on (as this worker learned it, plus the grace) goes through however late
 * it is applied; one stored after is a replaced owner's. */
static void test_request_fence_by_store_time(void **state)
{
    (void)state;
    const uint64_t grace = 2000000, s = 1000000000ULL; /* 2 s; 1 s in ns */
    const uint64_t learned = 1000 * s;
    /* learned just now: nothing refused yet */
    assert_int_equal(ts_zone_fence_epoch(7, grace - 1, learned, learned + 10 * s, grace), 0);
    /* learned 10 s ago; stored before the move: applied */
    assert_int_equal(ts_zone_fence_epoch(7, 10000000, learned, learned - s, grace), 0);
    /* stored just after it was learned, within the grace: applied */
    assert_int_equal(ts_zone_fence_epoch(7, 10000000, learned, learned + 2 * s - 1, grace), 0);
    /* stored later than that: a replaced owner's, refused */
    assert_int_equal(ts_zone_fence_epoch(7, 10000000, learned, learned + 2 * s, grace), 7);
    assert_int_equal(ts_zone_fence_epoch(7, 10000000, learned, learned + 9 * s, grace), 7);
    /* store time or the stream's clock not known: the grace alone */
    assert_int_equal(ts_zone_fence_epoch(7, 10000000, learned, 0, grace), 7);
    assert_int_equal(ts_zone_fence_epoch(7, 10000000, 0, learned - s, grace), 7);
}

static void test_requests_fenced_by_epoch(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *a = zone_at(h, 0, 0), *east = zone_at(h, 1, 0);
    ts_input_t j = join_in(6, 1, 98, 50, 2);
    assert_true(apply(a, 1, &j, 1, 1));
    ts_input_t ej = join_in(7, 1, 102, 50, 3);
    assert_true(apply(east, 1, &ej, 1, 1));
    ts_zone_ghost_put(east, &a->cell, a->epoch, 0, 6, 98, 50, 0, 0); /* 6 is a ghost in east */
    /* a request from east's owner at epoch 3 */
    east->epoch = 3;
    uint64_t target = 6;
    ts_input_t ask = cmd_in(7, 2, 4, &target, sizeof(target));
    assert_true(apply(east, 2, &ask, 1, 2));
    assert_int_equal(east->nout, 1);
    Tessera__V1__InputBatch *b = outbox_batch(east, 0);
    assert_int_equal(b->inputs[0]->request->from_epoch, 3);
    /* the registry has east at epoch 4 now: its epoch-3 owner lost it */
    fence_epoch_east = 4;
    assert_int_equal(ts_zone_fence_requests(b, fence_epoch, NULL), 1);
    assert_int_equal(b->n_inputs, 0);
    assert_true(ts_zone_apply_batch(a, 2, b, 2)); /* the position moves on, nothing applied */
    assert_int_equal(get(a, 6)->state[1], 0);
    b->n_inputs = 1; /* dropped in place (the worker's batches live in an arena): freed here */
    tessera__v1__input_batch__free_unpacked(b, NULL);
    /* at the current epoch, and with other inputs in the batch: only the stale one goes */
    b = outbox_batch(east, 0);
    fence_epoch_east = 3;
    assert_int_equal(ts_zone_fence_requests(b, fence_epoch, NULL), 0);
    assert_int_equal(b->n_inputs, 1);
    assert_true(ts_zone_apply_batch(a, 3, b, 3));
    assert_int_equal(get(a, 6)->state[1], 10);
    tessera__v1__input_batch__free_unpacked(b, NULL);
    ts_input_t mixed[] = {cmd_in(6, 2, 1, NULL, 0), join_in(8, 1, 40, 40, 1)};
    b = batch_of(mixed, 2);
    Tessera__V1__InputBatch *stale = outbox_batch(east, 0);
    Tessera__V1__Input *all[] = {b->inputs[0], stale->inputs[0], b->inputs[1]};
    Tessera__V1__Input **orig = b->inputs;
    size_t orig_n = b->n_inputs;
    b->inputs = all;
    b->n_inputs = 3;
    fence_epoch_east = 5;
    assert_int_equal(ts_zone_fence_requests(b, fence_epoch, NULL), 1);
    assert_int_equal(b->n_inputs, 2);
    assert_ptr_equal(b->inputs[0], orig[0]);
    assert_ptr_equal(b->inputs[1], orig[1]);
    b->inputs = orig;
    b->n_inputs = orig_n;
    tessera__v1__input_batch__free_unpacked(b, NULL);
    tessera__v1__input_batch__free_unpacked(stale, NULL);
    fence_epoch_east = 0;
    ts_zone_destroy(a);
    ts_zone_destroy(east);
    ts_game_host_close(h);
}

static void test_views_write_back(void **state)
{
    (void)state;
    ts_game_host_t *h = host(1000);
    ts_zone_t *z = zone_at(h, 0, 0);
    ts_input_t j = join_in(5, 1, 10, 10, 1);
    assert_true(apply(z, 1, &j, 1, 1));
    ts_game_ctx_t ctx = {.h = h, .z = z};
    ts_game_entity_t v;
    assert_int_equal(api->get(&ctx, 5, &v), TS_GAME_OK);
    get(z, 5)->dirty = false;
    v.vx = 1e9;
    v.vy = NAN;
    v.state[2] = 42;
    v.state_len = 3;
    assert_int_equal(api->set(&ctx, &v), TS_GAME_OK);
    ts_entity_t *e = get(z, 5);
    assert_true(e->vx == 50 && e->vy == 0);
    assert_int_equal(e->state_len, 3);
    assert_true(e->dirty);
    v.state_len = TS_GAME_STATE_MAX + 1;
    assert_int_equal(api->set(&ctx, &v), TS_GAME_EINVAL);
    assert_int_equal(api->get(&ctx, 77, &v), TS_GAME_ENOENT);
    /* query sees the owned entity within the radius only */
    assert_int_equal(api->query(&ctx, 10, 10, 1, NULL, NULL), 1);
    assert_int_equal(api->query(&ctx, 50, 50, 1, NULL, NULL), 0);
    /* emit_to: a player of this cell only */
    assert_int_equal(api->emit_to(&ctx, 77, 1, NULL, 0), TS_GAME_ENOENT);
    uint8_t big[TS_GAME_PAYLOAD_MAX + 1] = {0};
    assert_int_equal(api->emit_to(&ctx, 5, 1, big, sizeof(big)), TS_GAME_EINVAL);
    for (int i = 0; i < TS_GAME_EVENTS_PER_TICK; i++)
        assert_int_equal(api->emit_at(&ctx, 10, 10, 1, NULL, 0), TS_GAME_OK);
    assert_int_equal(api->emit_at(&ctx, 10, 10, 1, NULL, 0), TS_GAME_ENOSPC);
    assert_int_equal(api->emit_at(&ctx, 1e9, 10, 1, NULL, 0), TS_GAME_ERANGE);
    assert_string_equal(api->module_data(&ctx), "testmod-data");
    double x0, y0, x1, y1;
    api->cell_bounds(&ctx, &x0, &y0, &x1, &y1);
    assert_true(x0 == 0 && y0 == 0 && x1 == 100 && y1 == 100);
    api->world_bounds(&ctx, &x0, &y0, &x1, &y1);
    assert_true(x0 == -200 && y0 == -200 && x1 == 200 && y1 == 200);
    ts_zone_destroy(z);
    ts_game_host_close(h);
}

/* A crash inside a callback: one ERROR line naming the module, the callback
 * and the cell, and the process dies of the signal (in a child here). The
 * line also goes to worker.fault_file, which the next start counts into the
 * faults counter. */
static void test_crash_is_reported_with_the_module_name(void **state)
{
    (void)state;
    char fault_file[] = "/tmp/test_game_faults_XXXXXX";
    int ffd = mkstemp(fault_file);
    assert_true(ffd >= 0);
    close(ffd);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        ts_game_host_t *h = NULL;
        char err[256];
        if (ts_game_host_load(&h, TS_TESTMOD_SO, "", 1000, err, sizeof(err)) != TS_OK) _exit(3);
        if (ts_game_host_set_fault_file(h, fault_file) != 0) _exit(3);
        ts_zone_t *z = NULL;
        ts_cell_t c = {.world = 0, .cx = 0, .cy = 0};
        if (ts_zone_create(&z, &c, 1, &WORLD, 50) != TS_OK) _exit(3);
        ts_game_host_attach(h, z, 50);
        ts_input_t in[] = {join_in(5, 1, 10, 10, 1), cmd_in(5, 2, 7, NULL, 0)};
        Tessera__V1__InputBatch *b = batch_of(in, 2);
        ts_zone_apply_batch(z, 1, b, 1);
        _exit(4); /* not reached */
    }
    close(fds[1]);
    char out[4096] = "";
    size_t n = 0;
    ssize_t r;
    while (n < sizeof(out) - 1 && (r = read(fds[0], out + n, sizeof(out) - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = 0;
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    assert_non_null(
        strstr(out, "ERROR game module testmod crashed (SIGSEGV) in on_command of cell 0.0.0.0.0"));

    /* the next start finds it: the counter carries on from 1 */
    ts_game_host_t *h = NULL;
    char err[256];
    assert_int_equal(ts_game_host_load(&h, TS_TESTMOD_SO, "", 1000, err, sizeof(err)), TS_OK);
    assert_int_equal(ts_game_host_set_fault_file(h, fault_file), 1);
    ts_game_stats_t st;
    ts_game_host_stats(h, &st);
    assert_int_equal(st.faults, 1);
    ts_game_host_close(h);
    FILE *f = fopen(fault_file, "r");
    assert_non_null(f);
    char line[512] = "";
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    assert_non_null(strstr(line, "game module testmod crashed (SIGSEGV) in on_command of cell 0.0.0.0.0"));
    unlink(fault_file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_from_file_and_abi_refusal),
        cmocka_unit_test(test_commands_applied_once),
        cmocka_unit_test(test_events_not_sent_while_replaying),
        cmocka_unit_test(test_error_and_overrun_do_not_stop_the_cell),
        cmocka_unit_test(test_state_travels),
        cmocka_unit_test(test_state_in_checkpoint_parts),
        cmocka_unit_test(test_counter_add_bounds),
        cmocka_unit_test(test_counters_in_checkpoints),
        cmocka_unit_test(test_counter_moves_exactly_once),
        cmocka_unit_test(test_counter_move_bad_input),
        cmocka_unit_test(test_rng_deterministic),
        cmocka_unit_test(test_recovery_replays_the_ticks),
        cmocka_unit_test(test_replay_by_marks_is_exact),
        cmocka_unit_test(test_replay_boundary_within_latency),
        cmocka_unit_test(test_replay_clock_rules),
        cmocka_unit_test(test_spawn_ids),
        cmocka_unit_test(test_requests_go_through_the_target_cell),
        cmocka_unit_test(test_requests_fenced_by_epoch),
        cmocka_unit_test(test_request_fence_by_store_time),
        cmocka_unit_test(test_views_write_back),
        cmocka_unit_test(test_visits_in_id_order),
        cmocka_unit_test(test_crash_is_reported_with_the_module_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
