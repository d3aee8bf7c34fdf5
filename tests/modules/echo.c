/* A tiny game module for the gateway's command and event tests (built as
 * libts_game_echo.so; only tessera/game.h is included).
 *
 * Entity state: bytes 0..3 count the commands applied to the entity (little
 * endian), the rest is the Join payload, or the payload of the last type-3
 * command (at most TS_GAME_STATE_MAX - 4 bytes).
 *
 * Commands:
 *   1  an Event of type 1 with the same payload to the sender's client
 *   2  an Event of type 2 with the same payload at the sender's position
 *   3  the payload becomes the rest of the sender's state
 *   4  returns an error (counted by the worker, the cell goes on)
 * Every command, the failing one too, counts in bytes 0..3. */
#include <stdint.h>
#include <string.h>

#include "tessera/game.h"

static const ts_game_api_t *api;

static int load(const ts_game_api_t *a, const char *config, void **module_data)
{
    (void)config;
    api = a;
    *module_data = NULL;
    return TS_GAME_OK;
}

static void set_rest(ts_game_entity_t *e, const uint8_t *p, size_t len)
{
    if (len > TS_GAME_STATE_MAX - 4) len = TS_GAME_STATE_MAX - 4;
    if (e->state_len < 4) memset(e->state, 0, 4);
    if (len > 0) memcpy(e->state + 4, p, len);
    e->state_len = (uint32_t)(4 + len);
}

static int on_join(ts_game_ctx_t *ctx, ts_game_entity_t *e, const uint8_t *payload, size_t len)
{
    (void)ctx;
    memset(e->state, 0, 4);
    e->state_len = 4;
    set_rest(e, payload, len);
    return TS_GAME_OK;
}

static int on_command(ts_game_ctx_t *ctx, ts_game_entity_t *e, uint32_t type, const uint8_t *payload,
                      size_t len)
{
    if (e->state_len < 4) {
        memset(e->state, 0, 4);
        e->state_len = 4;
    }
    uint32_t n = (uint32_t)e->state[0] | (uint32_t)e->state[1] << 8 | (uint32_t)e->state[2] << 16 |
                 (uint32_t)e->state[3] << 24;
    n++;
    for (int i = 0; i < 4; i++)
        e->state[i] = (uint8_t)(n >> (8 * i));
    switch (type) {
    case 1:
        return api->emit_to(ctx, e->id, 1, payload, len);
    case 2:
        return api->emit_at(ctx, e->x, e->y, 2, payload, len);
    case 3:
        set_rest(e, payload, len);
        return TS_GAME_OK;
    default:
        return TS_GAME_EINVAL;
    }
}

static const ts_game_module_t module = {
    .abi_version = TS_GAME_ABI_VERSION,
    .name = "echo",
    .load = load,
    .on_join = on_join,
    .on_command = on_command,
};

const ts_game_module_t *tessera_game_module(void)
{
    return &module;
}
