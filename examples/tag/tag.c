/* Tag: the example game module (libtag.so).
 *
 * Two teams, red and blue. A player presses "tag" (Command type 1); if an
 * enemy is within TAG_RANGE, the enemy is tagged and joins the tagger's
 * team, and the tagger scores a point. NPC bots roam the world, can be
 * tagged, and now and then tag a player near them. A team's score is the
 * number of tags its members (players and bots) made, whoever they are now:
 * world counter 0 is red's, counter 1 blue's (api->counter_add, +1 for the
 * tagger's team where the tag applies; gateways send clients the world's
 * sum in WorldCounters).
 *
 * How a tag travels, the same way whether the target is in this cell, in a
 * neighbouring cell of the same worker or owned by another worker:
 *
 *   tagger's cell  on_command TAG: api->query finds the target (owned or a
 *                  ghost), checks team and range, api->request(tagger,
 *                  target, REQ_TAGGED, [tagger's team, tagger's name])
 *   target's owner on_request REQ_TAGGED: if the target is still on the
 *                  other team, it switches team, counts "tagged", adds 1
 *                  to the tagger's team's world counter, emits
 *                  "tagged by" to the target and "tag at x,y" around it,
 *                  and api->request(target, tagger, REQ_TAG_CONFIRMED,
 *                  [new team, target's name])
 *   tagger's owner on_request REQ_TAG_CONFIRMED: "tags made" + 1, emits
 *                  "you tagged" to the tagger.
 *
 * The worker applies each request exactly once at the owner of the target,
 * wherever the target has moved meanwhile, so a tag is neither lost nor
 * counted twice through handovers, splits and crash recovery; the team
 * score moves in the same on_request as the team switch, so it is exact too.
 *
 * Entity state (TAG_STATE_LEN = 16 bytes, little-endian):
 *   [0]      team: 1 red, 2 blue (0: not set yet; then it is id % 2 + 1)
 *   [1]      flags: bit 0 bot
 *   [2..3]   reserved (0)
 *   [4..7]   tags made (u32): the entity's score
 *   [8..11]  times tagged (u32)
 *   [12..15] last tag attempt, milliseconds of the cell's time (u32),
 *            for the cooldown
 *
 * Cell state (8 bytes): [0..3] bots this cell spawned so far (u32, used to
 * pick their team), [4..7] when it may spawn the next one, in milliseconds
 * of the cell's time (u32). Each cell spawns its share of the world's bots
 * by area, at most one a second, once: the bots then roam the whole world
 * and are never despawned, so the world keeps `bots` of them. A split
 * child starts with its parent's count, which is above its own share: it
 * spawns none.
 *
 * Everything here depends only on entity and cell state, the input,
 * api->rng and api->time, so a cell replays to the same result.
 *
 * Configuration (worker.game_config, space or comma separated key=value):
 *   bots=32       bots in the whole world (spread over cells by area)
 *   range=12      tag range in world units
 *   cooldown=0.5  seconds between two tag attempts of one entity
 *   bot_speed=8   bots' speed in world units per second
 *   bot_tag=0.3   tag attempts per second of a bot with a player in range */
#include "tessera/game.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define TAG_CMD_TAG 1 /* Command: tag; payload empty or target id (u64 LE) */

#define REQ_TAGGED 1        /* to the target: payload [team, name...] */
#define REQ_TAG_CONFIRMED 2 /* back to the tagger: payload [new team, name...] */

/* Events. EV_YOU_TAGGED and EV_TAGGED_BY carry [other id u64 LE, team of
 * the tagged one now, other's name...]; EV_TAG_AT (positional) carries
 * [tagger id u64 LE, target id u64 LE, team of the tagged one now];
 * EV_MISS (to the tagger) is empty: no enemy in range. */
#define EV_YOU_TAGGED 1
#define EV_TAGGED_BY 2
#define EV_TAG_AT 3
#define EV_MISS 4

#define TEAM_RED 1
#define TEAM_BLUE 2
/* World counters: the teams' scores (tags made by each team). */
#define COUNTER_RED 0
#define COUNTER_BLUE 1
#define FLAG_BOT 0x1u

#define TAG_STATE_LEN 16
#define CELL_STATE_LEN 8
#define NAME_MAX_BYTES 32
#define BOT_THINK_S 0.25    /* a cell steers its bots every 0.25 s of its time */
#define BOT_SPAWN_GAP_S 1.0 /* at most one new bot per cell per second */

typedef struct {
    double bots;
    double range;
    double cooldown;
    double bot_speed;
    double bot_tag;
} tag_conf_t;

/* Set once by load(), read-only afterwards. */
static const ts_game_api_t *api;

/* ---- byte helpers -------------------------------------------------------- */

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t ms_of(double t)
{
    return t <= 0 ? 0 : (uint32_t)(uint64_t)(t * 1000.0);
}

/* ---- entity state -------------------------------------------------------- */

static int default_team(uint64_t id)
{
    return (int)(id % 2) + TEAM_RED;
}

static int team_of(const ts_game_entity_t *e)
{
    if (e->state_len >= 1 && (e->state[0] == TEAM_RED || e->state[0] == TEAM_BLUE)) return e->state[0];
    return default_team(e->id);
}

/* Gives e the full state layout, keeping what it already has. */
static void ensure_state(ts_game_entity_t *e)
{
    if (e->state_len >= TAG_STATE_LEN && (e->state[0] == TEAM_RED || e->state[0] == TEAM_BLUE)) return;
    int team = team_of(e);
    if (e->state_len < TAG_STATE_LEN) {
        memset(e->state + e->state_len, 0, TAG_STATE_LEN - e->state_len);
        e->state_len = TAG_STATE_LEN;
    }
    e->state[0] = (uint8_t)team;
}

static int is_bot(const ts_game_entity_t *e)
{
    return e->state_len >= 2 && (e->state[1] & FLAG_BOT);
}

/* May e try a tag at time now? Records the attempt if so. A time earlier
 * than the last attempt means the entity came from a cell with another
 * clock: that counts as cooled down. */
static int cooldown_take(ts_game_entity_t *e, double now, double cooldown)
{
    uint32_t last = get_u32(e->state + 12), t = ms_of(now);
    if (last != 0 && t >= last && (double)(t - last) < cooldown * 1000.0) return 0;
    put_u32(e->state + 12, t == 0 ? 1 : t);
    return 1;
}

/* [team, name...] */
static size_t team_name_payload(uint8_t *buf, int team, const char *name)
{
    size_t n = name ? strnlen(name, NAME_MAX_BYTES) : 0;
    buf[0] = (uint8_t)team;
    if (n) memcpy(buf + 1, name, n);
    return 1 + n;
}

/* [id u64, team, name...] */
static size_t id_team_name_payload(uint8_t *buf, uint64_t id, int team, const uint8_t *name, size_t name_len)
{
    if (name_len > NAME_MAX_BYTES) name_len = NAME_MAX_BYTES;
    put_u64(buf, id);
    buf[8] = (uint8_t)team;
    if (name_len) memcpy(buf + 9, name, name_len);
    return 9 + name_len;
}

/* ---- finding a target ---------------------------------------------------- */

typedef struct {
    uint64_t self;
    int team;
    double x, y;
    int players_only;
    uint64_t want; /* 0: the nearest enemy */
    uint64_t found;
    double best_d2;
} find_t;

static void find_visit(void *ud, const ts_game_entity_t *e)
{
    find_t *f = ud;
    if (e->id == f->self || team_of(e) == f->team) return;
    if (f->players_only && !(e->flags & TS_GAME_PLAYER)) return;
    if (f->want && e->id != f->want) return;
    double dx = e->x - f->x, dy = e->y - f->y, d2 = dx * dx + dy * dy;
    /* nearest first, the lower id on a tie: the same answer whatever order
     * the query visits in */
    if (!f->found || d2 < f->best_d2 || (d2 == f->best_d2 && e->id < f->found)) {
        f->found = e->id;
        f->best_d2 = d2;
    }
}

/* Tags the nearest enemy of tagger (or `want`) within range: sends
 * REQ_TAGGED to it. Returns 1 if a request went out, 0 if no enemy is in
 * range, or a negative TS_GAME_E* code. */
static int try_tag(ts_game_ctx_t *ctx, const tag_conf_t *conf, const ts_game_entity_t *tagger, uint64_t want,
                   int players_only)
{
    find_t f = {.self = tagger->id,
                .team = team_of(tagger),
                .x = tagger->x,
                .y = tagger->y,
                .players_only = players_only,
                .want = want};
    api->query(ctx, tagger->x, tagger->y, conf->range, find_visit, &f);
    if (!f.found || f.best_d2 > conf->range * conf->range) return 0;
    uint8_t buf[1 + NAME_MAX_BYTES];
    size_t n = team_name_payload(buf, f.team, tagger->name);
    int rc = api->request(ctx, tagger->id, f.found, REQ_TAGGED, buf, n);
    return rc < 0 ? rc : 1;
}

/* ---- callbacks ------------------------------------------------------------ */

static int parse_conf(tag_conf_t *c, const char *config)
{
    *c = (tag_conf_t){.bots = 32, .range = 12, .cooldown = 0.5, .bot_speed = 8, .bot_tag = 0.3};
    const char *p = config ? config : "";
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (!*p) break;
        const char *eq = strchr(p, '=');
        if (!eq) return TS_GAME_EINVAL;
        size_t klen = (size_t)(eq - p);
        char *end;
        double v = strtod(eq + 1, &end);
        if (end == eq + 1 || v < 0 || !isfinite(v)) return TS_GAME_EINVAL;
        if (klen == 4 && !memcmp(p, "bots", 4))
            c->bots = v;
        else if (klen == 5 && !memcmp(p, "range", 5))
            c->range = v;
        else if (klen == 8 && !memcmp(p, "cooldown", 8))
            c->cooldown = v;
        else if (klen == 9 && !memcmp(p, "bot_speed", 9))
            c->bot_speed = v;
        else if (klen == 7 && !memcmp(p, "bot_tag", 7))
            c->bot_tag = v;
        else
            return TS_GAME_EINVAL;
        p = end;
        if (*p && *p != ' ' && *p != ',' && *p != '\t') return TS_GAME_EINVAL;
    }
    return TS_GAME_OK;
}

static int tag_load(const ts_game_api_t *worker_api, const char *config, void **module_data)
{
    tag_conf_t *c = malloc(sizeof *c);
    if (!c) return TS_GAME_ENOSPC;
    if (parse_conf(c, config) != TS_GAME_OK) {
        free(c);
        return TS_GAME_EINVAL;
    }
    api = worker_api;
    *module_data = c;
    return TS_GAME_OK;
}

static void tag_unload(void *module_data)
{
    free(module_data);
}

/* Join payload: "red" or "blue" (or the byte 1 or 2) picks the team;
 * anything else balances teams by id. */
static int tag_on_join(ts_game_ctx_t *ctx, ts_game_entity_t *e, const uint8_t *payload, size_t len)
{
    int team = 0;
    if (len == 1 && (payload[0] == TEAM_RED || payload[0] == TEAM_BLUE))
        team = payload[0];
    else if (len == 3 && !memcmp(payload, "red", 3))
        team = TEAM_RED;
    else if (len == 4 && !memcmp(payload, "blue", 4))
        team = TEAM_BLUE;
    int had = e->state_len >= TAG_STATE_LEN && (e->state[0] == TEAM_RED || e->state[0] == TEAM_BLUE);
    ensure_state(e);
    if (!had && team) e->state[0] = (uint8_t)team;
    return TS_GAME_OK;
}

static int tag_on_command(ts_game_ctx_t *ctx, ts_game_entity_t *e, uint32_t type, const uint8_t *payload,
                          size_t len)
{
    const tag_conf_t *conf = api->module_data(ctx);
    if (type != TAG_CMD_TAG || (len != 0 && len != 8)) return TS_GAME_EINVAL;
    ensure_state(e);
    if (!cooldown_take(e, api->time(ctx), conf->cooldown))
        return TS_GAME_OK; /* a held key: ignored until the cooldown passes */
    int rc = try_tag(ctx, conf, e, len == 8 ? get_u64(payload) : 0, 0);
    if (rc == 0) api->emit_to(ctx, e->id, EV_MISS, NULL, 0);
    return rc < 0 ? rc : TS_GAME_OK;
}

static int tag_on_request(ts_game_ctx_t *ctx, ts_game_entity_t *target, const ts_game_request_t *req)
{
    if (req->len < 1 || (req->payload[0] != TEAM_RED && req->payload[0] != TEAM_BLUE)) return TS_GAME_EINVAL;
    ensure_state(target);
    int team = req->payload[0];
    const uint8_t *name = req->payload + 1;
    size_t name_len = req->len - 1;
    uint8_t ev[9 + NAME_MAX_BYTES];

    if (req->type == REQ_TAGGED) {
        /* payload[0]: the tagger's team when it tagged */
        if (team_of(target) == team) return TS_GAME_OK; /* tagged by someone else meanwhile: nothing to do */
        target->state[0] = (uint8_t)team;
        put_u32(target->state + 8, get_u32(target->state + 8) + 1);
        int rc = api->counter_add(ctx, team == TEAM_RED ? COUNTER_RED : COUNTER_BLUE, 1);
        if (rc < 0) return rc;
        if (target->flags & TS_GAME_PLAYER)
            api->emit_to(ctx, target->id, EV_TAGGED_BY, ev,
                         id_team_name_payload(ev, req->from, team, name, name_len));
        uint8_t at[17];
        put_u64(at, req->from);
        put_u64(at + 8, target->id);
        at[16] = (uint8_t)team;
        api->emit_at(ctx, target->x, target->y, EV_TAG_AT, at, sizeof at);
        uint8_t back[1 + NAME_MAX_BYTES];
        return api->request(ctx, target->id, req->from, REQ_TAG_CONFIRMED, back,
                            team_name_payload(back, team, target->name));
    }
    if (req->type == REQ_TAG_CONFIRMED) {
        /* payload[0]: the tagged one's team now; target is the tagger */
        put_u32(target->state + 4, get_u32(target->state + 4) + 1);
        char who[NAME_MAX_BYTES + 24], whom[NAME_MAX_BYTES + 24];
        if (target->name && target->name[0])
            snprintf(who, sizeof who, "%s", target->name);
        else
            snprintf(who, sizeof who, "#%llu", (unsigned long long)target->id);
        if (name_len)
            snprintf(whom, sizeof whom, "%.*s", (int)name_len, (const char *)name);
        else
            snprintf(whom, sizeof whom, "#%llu", (unsigned long long)req->from);
        api->log(ctx, 1, "tag: %s %s tagged %s (%u tags made)", team_of(target) == TEAM_RED ? "red" : "blue",
                 who, whom, (unsigned)get_u32(target->state + 4));
        if (target->flags & TS_GAME_PLAYER)
            api->emit_to(ctx, target->id, EV_YOU_TAGGED, ev,
                         id_team_name_payload(ev, req->from, team, name, name_len));
        return TS_GAME_OK;
    }
    return TS_GAME_EINVAL;
}

/* ---- bots ------------------------------------------------------------------ */

typedef struct {
    ts_game_ctx_t *ctx;
    const tag_conf_t *conf;
    double now, dt;
    double wx0, wy0, wx1, wy1;
} think_t;

static void bot_think(void *ud, ts_game_entity_t *e)
{
    think_t *t = ud;
    if (!(e->flags & TS_GAME_NPC) || !is_bot(e)) return;
    double speed = t->conf->bot_speed;
    /* a new heading now and then, or when it stands still */
    if ((e->vx == 0 && e->vy == 0) || api->rng_unit(t->ctx) < 0.15) {
        double a = api->rng_unit(t->ctx) * 2 * M_PI;
        e->vx = speed * cos(a);
        e->vy = speed * sin(a);
    }
    /* turn back before the world's edge */
    double margin = 2 * speed * BOT_THINK_S + 1;
    if ((e->x < t->wx0 + margin && e->vx < 0) || (e->x > t->wx1 - margin && e->vx > 0)) e->vx = -e->vx;
    if ((e->y < t->wy0 + margin && e->vy < 0) || (e->y > t->wy1 - margin && e->vy > 0)) e->vy = -e->vy;
    /* now and then, tag a player in range */
    if (t->conf->bot_tag > 0 && api->rng_unit(t->ctx) < t->conf->bot_tag * t->dt) {
        ensure_state(e);
        uint32_t before = get_u32(e->state + 12);
        if (cooldown_take(e, t->now, t->conf->cooldown) && try_tag(t->ctx, t->conf, e, 0, 1) <= 0)
            put_u32(e->state + 12, before); /* nobody there: not an attempt */
    }
}

static void tag_on_tick(ts_game_ctx_t *ctx, double dt)
{
    const tag_conf_t *conf = api->module_data(ctx);
    size_t *len;
    uint8_t *cs = api->cell_state(ctx, &len);
    if (*len < CELL_STATE_LEN) {
        memset(cs + *len, 0, CELL_STATE_LEN - *len);
        *len = CELL_STATE_LEN;
    }
    double now = api->time(ctx);
    /* think every BOT_THINK_S of the cell's time, not every tick: the bots
     * keep their heading in between */
    uint32_t think_slot = (uint32_t)(now / BOT_THINK_S), prev_slot = (uint32_t)((now - dt) / BOT_THINK_S);
    if (now >= dt && think_slot == prev_slot) return;

    think_t t = {.ctx = ctx, .conf = conf, .now = now, .dt = BOT_THINK_S};
    api->world_bounds(ctx, &t.wx0, &t.wy0, &t.wx1, &t.wy1);
    api->each(ctx, bot_think, &t);

    /* this cell's share of the world's bots, by area */
    double cx0, cy0, cx1, cy1;
    api->cell_bounds(ctx, &cx0, &cy0, &cx1, &cy1);
    double world_area = (t.wx1 - t.wx0) * (t.wy1 - t.wy0);
    double share = world_area > 0 ? conf->bots * (cx1 - cx0) * (cy1 - cy0) / world_area : 0;
    size_t want = (size_t)floor(share + 0.5);
    uint32_t spawned = get_u32(cs), next_at = get_u32(cs + 4);
    if (spawned >= want || ms_of(now) < next_at) return;
    double x = cx0 + 1 + api->rng_unit(ctx) * (cx1 - cx0 - 2);
    double y = cy0 + 1 + api->rng_unit(ctx) * (cy1 - cy0 - 2);
    uint8_t st[TAG_STATE_LEN] = {0};
    st[0] = (uint8_t)(spawned % 2 + TEAM_RED);
    st[1] = FLAG_BOT;
    char name[NAME_MAX_BYTES];
    snprintf(name, sizeof name, "bot-%u", (unsigned)(api->rng(ctx) % 10000));
    if (api->spawn(ctx, x, y, name, st, sizeof st) > 0) put_u32(cs, spawned + 1);
    put_u32(cs + 4, ms_of(now + BOT_SPAWN_GAP_S));
}

static const ts_game_module_t tag_module = {
    .abi_version = TS_GAME_ABI_VERSION,
    .name = "tag",
    .load = tag_load,
    .unload = tag_unload,
    .on_join = tag_on_join,
    .on_command = tag_on_command,
    .on_request = tag_on_request,
    .on_tick = tag_on_tick,
};

const ts_game_module_t *tessera_game_module(void)
{
    return &tag_module;
}
