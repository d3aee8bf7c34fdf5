/* A small game module for the host's tests (tests/unit/worker/test_game.c):
 * built into the test and, by tests/CMakeLists.txt, as shared objects the
 * test loads with dlopen (TESTMOD_ABI set: one of another ABI version).
 *
 * State of an entity: [team, count]. Commands: 1 count (+1, an event to
 * the player), 2 fails, 3 runs 50 ms (past the budget), 4 requests entity
 * <payload: 8 bytes> (+10 at the target), 5 spawns an NPC where the player
 * is, 6 an event at the player's position, 7 crashes (SIGSEGV), 8 like 4 but the target answers
 * with a request of its own to the requester, 9 adds to a world counter
 * (payload: index byte, then an int64 delta). Every tick: NPCs take a random
 * velocity, and the cell state counts ticks and keeps the last random
 * number. */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "tessera/game.h"

#ifndef TESTMOD_ABI
#define TESTMOD_ABI TS_GAME_ABI_VERSION
#endif

static const ts_game_api_t *api;

static int tm_load(const ts_game_api_t *a, const char *config, void **data)
{
    if (strcmp(config, "fail") == 0) return TS_GAME_EINVAL;
    api = a;
    *data = (void *)"testmod-data";
    return 0;
}

static int tm_join(ts_game_ctx_t *ctx, ts_game_entity_t *e, const uint8_t *payload, size_t len)
{
    (void)ctx;
    e->state[0] = len ? payload[0] : 0;
    e->state[1] = 0;
    e->state_len = 2;
    return 0;
}

static int tm_command(ts_game_ctx_t *ctx, ts_game_entity_t *e, uint32_t type, const uint8_t *payload,
                      size_t len)
{
    switch (type) {
    case 1:
        e->state[1]++;
        return api->emit_to(ctx, e->id, 7, e->state, e->state_len);
    case 2:
        return TS_GAME_EINVAL;
    case 3: {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do
            clock_gettime(CLOCK_MONOTONIC, &t);
        while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 50000000L);
        return 0;
    }
    case 4:
    case 8: { /* 8: a request whose target answers (request 10) */
        uint64_t target;
        if (len != sizeof(target)) return TS_GAME_EINVAL;
        memcpy(&target, payload, sizeof(target));
        return api->request(ctx, e->id, target, type == 4 ? 9 : 10, "hi", 2);
    }
    case 5: {
        int64_t id = api->spawn(ctx, e->x, e->y, "bot", "\x02\x00", 2);
        return id > 0 ? 0 : (int)id;
    }
    case 6:
        return api->emit_at(ctx, e->x, e->y, 8, "boom", 4);
    case 7:
        raise(SIGSEGV); /* as a bad pointer would, without undefined behaviour */
        return 0;
    case 9: {
        int64_t delta;
        if (len != 1 + sizeof(delta)) return TS_GAME_EINVAL;
        memcpy(&delta, payload + 1, sizeof(delta));
        return api->counter_add(ctx, payload[0], delta);
    }
    default:
        return TS_GAME_EINVAL;
    }
}

static int tm_request(ts_game_ctx_t *ctx, ts_game_entity_t *target, const ts_game_request_t *req)
{
    if (req->type == 10) /* answer the requester: +10 there */
        return api->request(ctx, target->id, req->from, 9, "hi", 2);
    if (req->type != 9 || req->len != 2 || memcmp(req->payload, "hi", 2) != 0) return TS_GAME_EINVAL;
    target->state[1] += 10;
    if (target->state_len < 2) target->state_len = 2;
    return 0;
}

static void npc_wander(void *ud, ts_game_entity_t *e)
{
    ts_game_ctx_t *ctx = ud;
    if (!(e->flags & TS_GAME_NPC)) return;
    e->vx = api->rng_unit(ctx) * 10 - 5;
    e->vy = api->rng_unit(ctx) * 10 - 5;
    e->state[1]++;
}

static void tm_tick(ts_game_ctx_t *ctx, double dt)
{
    (void)dt;
    api->each(ctx, npc_wander, ctx);
    size_t *len;
    uint8_t *cs = api->cell_state(ctx, &len);
    uint32_t ticks = 0;
    if (*len >= 4) memcpy(&ticks, cs, 4);
    ticks++;
    memcpy(cs, &ticks, 4);
    uint64_t r = api->rng(ctx);
    memcpy(cs + 4, &r, 8);
    *len = 12;
}

static const ts_game_module_t testmod = {
    .abi_version = TESTMOD_ABI,
    .name = "testmod",
    .load = tm_load,
    .on_join = tm_join,
    .on_command = tm_command,
    .on_request = tm_request,
    .on_tick = tm_tick,
};

const ts_game_module_t *tessera_game_module(void)
{
    return &testmod;
}
