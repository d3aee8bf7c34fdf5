/* The tag module against a fake host: a few cells, each with its owned
 * entities, ghosts and a request queue standing in for the input streams.
 * It loads libtag.so with dlopen, as a worker does, and checks the game's
 * rules: joins pick teams, a tag switches the target's team once and scores
 * the tagger once (and its team's world counter once), the cooldown, misses, bad commands, bots spawning to
 * their share and replaying identically from the same RNG seed. */
#include "tessera/game.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                             \
    do {                                                                                                     \
        if (!(c)) {                                                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                            \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

#define MAX_ENT 256
#define MAX_Q 256

typedef struct {
    ts_game_entity_t e;
    char name[32];
    int cell; /* index of the owning cell */
} fake_ent_t;

typedef struct {
    uint64_t from, target;
    double fx, fy;
    uint32_t type;
    uint8_t payload[TS_GAME_PAYLOAD_MAX];
    size_t len;
} fake_req_t;

typedef struct {
    uint64_t entity;
    int positional;
    uint32_t type;
    uint8_t payload[TS_GAME_PAYLOAD_MAX];
    size_t len;
} fake_ev_t;

struct ts_game_ctx {
    int cell;
    double x0, y0, x1, y1;
    double time;
    uint64_t rng;
    uint8_t cell_state[TS_GAME_CELL_STATE_MAX];
    size_t cell_state_len;
    uint64_t next_id;
    int64_t counters[TS_GAME_COUNTERS];
};

static fake_ent_t ents[MAX_ENT];
static size_t n_ents;
static fake_req_t reqs[MAX_Q];
static size_t n_reqs;
static fake_ev_t evs[MAX_Q];
static size_t n_evs;
static void *mod_data;
static const ts_game_module_t *mod;

static fake_ent_t *find(uint64_t id)
{
    for (size_t i = 0; i < n_ents; i++)
        if (ents[i].e.id == id) return &ents[i];
    return NULL;
}

static void copy_out(const fake_ent_t *f, ts_game_entity_t *out, int ghost)
{
    *out = f->e;
    out->name = f->name;
    if (ghost) out->flags |= TS_GAME_GHOST;
}

static size_t f_each(ts_game_ctx_t *ctx, ts_game_each_fn fn, void *ud)
{
    size_t n = 0, count = n_ents;
    for (size_t i = 0; i < count; i++) {
        if (ents[i].cell != ctx->cell) continue;
        ts_game_entity_t e;
        copy_out(&ents[i], &e, 0);
        fn(ud, &e);
        ents[i].e.vx = e.vx;
        ents[i].e.vy = e.vy;
        ents[i].e.state_len = e.state_len;
        memcpy(ents[i].e.state, e.state, sizeof e.state);
        n++;
    }
    return n;
}

/* Every entity within r: other cells' are ghosts (the fake world has no
 * ghost band limit). */
static size_t f_query(ts_game_ctx_t *ctx, double x, double y, double r, ts_game_visit_fn fn, void *ud)
{
    size_t n = 0;
    for (size_t i = 0; i < n_ents; i++) {
        double dx = ents[i].e.x - x, dy = ents[i].e.y - y;
        if (dx * dx + dy * dy > r * r) continue;
        ts_game_entity_t e;
        copy_out(&ents[i], &e, ents[i].cell != ctx->cell);
        fn(ud, &e);
        n++;
    }
    return n;
}

static int f_get(ts_game_ctx_t *ctx, uint64_t id, ts_game_entity_t *out)
{
    fake_ent_t *f = find(id);
    if (!f) return TS_GAME_ENOENT;
    copy_out(f, out, f->cell != ctx->cell);
    return 0;
}

static int f_set(ts_game_ctx_t *ctx, const ts_game_entity_t *e)
{
    fake_ent_t *f = find(e->id);
    if (!f) return TS_GAME_ENOENT;
    if (f->cell != ctx->cell) return TS_GAME_EPERM;
    f->e.vx = e->vx;
    f->e.vy = e->vy;
    f->e.state_len = e->state_len;
    memcpy(f->e.state, e->state, sizeof e->state);
    return 0;
}

static int64_t f_spawn(ts_game_ctx_t *ctx, double x, double y, const char *name, const void *state,
                       size_t state_len)
{
    if (x < ctx->x0 || x >= ctx->x1 || y < ctx->y0 || y >= ctx->y1) return TS_GAME_ERANGE;
    CHECK(n_ents < MAX_ENT && state_len <= TS_GAME_STATE_MAX);
    fake_ent_t *f = &ents[n_ents++];
    memset(f, 0, sizeof *f);
    f->e.id = ctx->next_id++;
    f->e.x = x;
    f->e.y = y;
    f->e.flags = TS_GAME_NPC;
    f->e.state_len = (uint32_t)state_len;
    memcpy(f->e.state, state, state_len);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->cell = ctx->cell;
    return (int64_t)f->e.id;
}

static int f_despawn(ts_game_ctx_t *ctx, uint64_t id)
{
    fake_ent_t *f = find(id);
    if (!f || f->cell != ctx->cell) return TS_GAME_ENOENT;
    if (!(f->e.flags & TS_GAME_NPC)) return TS_GAME_EPERM;
    *f = ents[--n_ents];
    return 0;
}

static int f_emit(uint64_t entity, int positional, uint32_t type, const void *payload, size_t len)
{
    if (len > TS_GAME_PAYLOAD_MAX) return TS_GAME_EINVAL;
    CHECK(n_evs < MAX_Q);
    fake_ev_t *ev = &evs[n_evs++];
    ev->entity = entity;
    ev->positional = positional;
    ev->type = type;
    ev->len = len;
    if (len) memcpy(ev->payload, payload, len);
    return 0;
}

static int f_emit_to(ts_game_ctx_t *ctx, uint64_t entity, uint32_t type, const void *payload, size_t len)
{
    fake_ent_t *f = find(entity);
    if (!f || f->cell != ctx->cell || !(f->e.flags & TS_GAME_PLAYER)) return TS_GAME_ENOENT;
    return f_emit(entity, 0, type, payload, len);
}

static int f_emit_at(ts_game_ctx_t *ctx, double x, double y, uint32_t type, const void *payload, size_t len)
{
    return f_emit(0, 1, type, payload, len);
}

static int f_request(ts_game_ctx_t *ctx, uint64_t from, uint64_t target, uint32_t type, const void *payload,
                     size_t len)
{
    if (len > TS_GAME_PAYLOAD_MAX) return TS_GAME_EINVAL;
    if (!find(target)) return TS_GAME_ENOENT;
    CHECK(n_reqs < MAX_Q);
    fake_req_t *r = &reqs[n_reqs++];
    fake_ent_t *f = find(from);
    r->from = from;
    r->target = target;
    r->fx = f ? f->e.x : 0;
    r->fy = f ? f->e.y : 0;
    r->type = type;
    r->len = len;
    if (len) memcpy(r->payload, payload, len);
    return 0;
}

static uint64_t f_rng(ts_game_ctx_t *ctx)
{
    /* splitmix64 */
    uint64_t z = (ctx->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double f_rng_unit(ts_game_ctx_t *ctx)
{
    return (double)(f_rng(ctx) >> 11) * 0x1.0p-53;
}

static double f_time(ts_game_ctx_t *ctx)
{
    return ctx->time;
}

static uint8_t *f_cell_state(ts_game_ctx_t *ctx, size_t **len)
{
    *len = &ctx->cell_state_len;
    return ctx->cell_state;
}

static void f_cell_bounds(ts_game_ctx_t *ctx, double *x0, double *y0, double *x1, double *y1)
{
    *x0 = ctx->x0;
    *y0 = ctx->y0;
    *x1 = ctx->x1;
    *y1 = ctx->y1;
}

/* two cells side by side: [-100, 0) and [0, 100), y in [-50, 50) */
static void f_world_bounds(ts_game_ctx_t *ctx, double *x0, double *y0, double *x1, double *y1)
{
    *x0 = -100;
    *y0 = -50;
    *x1 = 100;
    *y1 = 50;
}

static void *f_module_data(ts_game_ctx_t *ctx)
{
    return mod_data;
}

static void f_log(ts_game_ctx_t *ctx, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[tag] cell %d: ", ctx->cell);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int f_counter_add(ts_game_ctx_t *ctx, uint32_t index, int64_t delta)
{
    if (index >= TS_GAME_COUNTERS) return TS_GAME_EINVAL;
    ctx->counters[index] += delta;
    return TS_GAME_OK;
}

static const ts_game_api_t fake_api = {
    .abi_version = TS_GAME_ABI_VERSION,
    .each = f_each,
    .query = f_query,
    .get = f_get,
    .set = f_set,
    .spawn = f_spawn,
    .despawn = f_despawn,
    .emit_to = f_emit_to,
    .emit_at = f_emit_at,
    .request = f_request,
    .rng = f_rng,
    .rng_unit = f_rng_unit,
    .time = f_time,
    .cell_state = f_cell_state,
    .cell_bounds = f_cell_bounds,
    .world_bounds = f_world_bounds,
    .module_data = f_module_data,
    .log = f_log,
    .counter_add = f_counter_add,
};

static ts_game_ctx_t cells[2];

/* World counter i summed over the cells (what a gateway sends clients). */
static int64_t world_counter(int i)
{
    return cells[0].counters[i] + cells[1].counters[i];
}

static void reset_world(void)
{
    n_ents = n_reqs = n_evs = 0;
    for (int i = 0; i < 2; i++) {
        memset(&cells[i], 0, sizeof cells[i]);
        cells[i].cell = i;
        cells[i].x0 = i == 0 ? -100 : 0;
        cells[i].x1 = i == 0 ? 0 : 100;
        cells[i].y0 = -50;
        cells[i].y1 = 50;
        cells[i].rng = 42 + (uint64_t)i;
        cells[i].next_id = 1000000u * (uint64_t)(i + 1);
    }
}

/* A player joins cell `cell` at (x, y) with a join payload. */
static fake_ent_t *join(uint64_t id, int cell, double x, double y, const char *payload)
{
    fake_ent_t *f = &ents[n_ents++];
    memset(f, 0, sizeof *f);
    f->e.id = id;
    f->e.x = x;
    f->e.y = y;
    f->e.flags = TS_GAME_PLAYER;
    snprintf(f->name, sizeof f->name, "p%llu", (unsigned long long)id);
    f->cell = cell;
    ts_game_entity_t e;
    copy_out(f, &e, 0);
    CHECK(mod->on_join(&cells[cell], &e, (const uint8_t *)payload, payload ? strlen(payload) : 0) == 0);
    f->e.state_len = e.state_len;
    memcpy(f->e.state, e.state, sizeof e.state);
    return f;
}

static int command(fake_ent_t *f, uint32_t type, const uint8_t *payload, size_t len)
{
    ts_game_entity_t e;
    copy_out(f, &e, 0);
    int rc = mod->on_command(&cells[f->cell], &e, type, payload, len);
    f->e.state_len = e.state_len;
    memcpy(f->e.state, e.state, sizeof e.state);
    return rc;
}

/* Delivers queued requests at their targets' owners until none is left
 * (the owners' input streams). Returns how many were delivered. */
static size_t deliver_all(void)
{
    size_t delivered = 0;
    while (n_reqs) {
        fake_req_t r = reqs[0];
        memmove(reqs, reqs + 1, (n_reqs - 1) * sizeof reqs[0]);
        n_reqs--;
        fake_ent_t *f = find(r.target);
        CHECK(f);
        ts_game_entity_t e;
        copy_out(f, &e, 0);
        ts_game_request_t req = {.from = r.from,
                                 .from_x = r.fx,
                                 .from_y = r.fy,
                                 .type = r.type,
                                 .payload = r.payload,
                                 .len = r.len};
        CHECK(mod->on_request(&cells[f->cell], &e, &req) == 0);
        f->e.state_len = e.state_len;
        memcpy(f->e.state, e.state, sizeof e.state);
        delivered++;
    }
    return delivered;
}

static unsigned team(const fake_ent_t *f)
{
    return f->e.state[0];
}

static unsigned u32_at(const fake_ent_t *f, int off)
{
    const uint8_t *p = f->e.state + off;
    return (unsigned)(p[0] | p[1] << 8 | p[2] << 16 | (unsigned)p[3] << 24);
}

static size_t count_events(uint64_t entity, uint32_t type)
{
    size_t n = 0;
    for (size_t i = 0; i < n_evs; i++)
        if (evs[i].type == type && evs[i].entity == entity) n++;
    return n;
}

static void test_join_teams(void)
{
    reset_world();
    fake_ent_t *r = join(7, 0, -10, 0, "red");
    fake_ent_t *b = join(8, 0, -10, 5, "blue");
    fake_ent_t *d1 = join(10, 0, -20, 0, NULL);
    fake_ent_t *d2 = join(11, 0, -20, 0, "");
    CHECK(team(r) == 1 && team(b) == 2);
    CHECK(team(d1) == 1 && team(d2) == 2); /* by id: even red, odd blue */
    CHECK(r->e.state_len == 16 && u32_at(r, 4) == 0 && u32_at(r, 8) == 0);
}

/* A tag across the border: the tagger in cell 0, the target a ghost there,
 * owned by cell 1. */
static void test_tag_across_border(void)
{
    reset_world();
    fake_ent_t *a = join(1, 0, -3, 0, "red");
    fake_ent_t *b = join(2, 1, 4, 0, "blue");
    cells[0].time = cells[1].time = 10;
    CHECK(command(a, 1, NULL, 0) == 0);
    CHECK(n_reqs == 1 && reqs[0].target == 2 && reqs[0].type == 1);
    CHECK(team(b) == 2); /* nothing written to the ghost */
    CHECK(deliver_all() == 2);
    CHECK(team(b) == 1 && u32_at(b, 8) == 1 && u32_at(b, 4) == 0);
    CHECK(team(a) == 1 && u32_at(a, 4) == 1 && u32_at(a, 8) == 0);
    /* red's score + 1, in the target's cell (where the tag applied) */
    CHECK(cells[1].counters[0] == 1 && cells[0].counters[0] == 0);
    CHECK(world_counter(0) == 1 && world_counter(1) == 0);
    CHECK(count_events(1, 1) == 1); /* you tagged */
    CHECK(count_events(2, 2) == 1); /* tagged by */
    CHECK(count_events(0, 3) == 1); /* tag at */
    /* the event to the tagger names the target and its new team */
    for (size_t i = 0; i < n_evs; i++)
        if (evs[i].type == 1) {
            CHECK(evs[i].len == 9 + 2 && evs[i].payload[0] == 2 && evs[i].payload[8] == 1);
            CHECK(memcmp(evs[i].payload + 9, "p2", 2) == 0);
        }

    /* same team now: a second tag finds no enemy */
    cells[0].time = 20;
    n_evs = 0;
    CHECK(command(a, 1, NULL, 0) == 0 && n_reqs == 0 && count_events(1, 4) == 1);
    CHECK(world_counter(0) == 1 && world_counter(1) == 0);

    /* b, red now, is tagged back by a blue: blue's score + 1, red's stays
     * (points made are not taken back when a tagger changes team) */
    fake_ent_t *c = join(3, 1, 6, 0, "blue");
    cells[1].time = 30;
    CHECK(command(c, 1, (const uint8_t[8]){2}, 8) == 0);
    CHECK(deliver_all() == 2);
    CHECK(team(b) == 2 && world_counter(0) == 1 && world_counter(1) == 1);
}

/* Two taggers of one team tag the same target before either request is
 * applied: the target changes team once, only the first tagger scores. */
static void test_tag_race(void)
{
    reset_world();
    fake_ent_t *a = join(1, 0, -3, 0, "red");
    fake_ent_t *c = join(3, 0, -2, 2, "red");
    fake_ent_t *b = join(2, 1, 4, 0, "blue");
    cells[0].time = 5;
    uint8_t id2[8] = {2};
    CHECK(command(a, 1, id2, 8) == 0);
    CHECK(command(c, 1, id2, 8) == 0);
    CHECK(n_reqs == 2);
    CHECK(deliver_all() == 3); /* two tags, one confirmation */
    CHECK(team(b) == 1 && u32_at(b, 8) == 1);
    CHECK(u32_at(a, 4) == 1 && u32_at(c, 4) == 0);
    CHECK(world_counter(0) == 1 && world_counter(1) == 0); /* one tag, one point */
}

/* Two players on either side of the border tag each other before either
 * request is applied: each is still an enemy when the other's tag arrives,
 * so both tags apply, once each: they swap teams, each is tagged once and
 * scores once, and each team scores once. */
static void test_tag_each_other(void)
{
    reset_world();
    fake_ent_t *a = join(1, 0, -3, 0, "red");
    fake_ent_t *b = join(2, 1, 4, 0, "blue");
    cells[0].time = cells[1].time = 5;
    CHECK(command(a, 1, NULL, 0) == 0);
    CHECK(command(b, 1, NULL, 0) == 0);
    CHECK(n_reqs == 2 && reqs[0].target == 2 && reqs[1].target == 1);
    CHECK(deliver_all() == 4); /* two tags, two confirmations */
    CHECK(team(a) == 2 && u32_at(a, 4) == 1 && u32_at(a, 8) == 1);
    CHECK(team(b) == 1 && u32_at(b, 4) == 1 && u32_at(b, 8) == 1);
    /* each score where its tag applied: red's in b's cell, blue's in a's */
    CHECK(cells[1].counters[0] == 1 && cells[0].counters[1] == 1);
    CHECK(world_counter(0) == 1 && world_counter(1) == 1);
    CHECK(count_events(1, 1) == 1 && count_events(1, 2) == 1);
    CHECK(count_events(2, 1) == 1 && count_events(2, 2) == 1);
    CHECK(count_events(1, 4) == 0 && count_events(2, 4) == 0);
}

static void test_cooldown_miss_errors(void)
{
    reset_world();
    fake_ent_t *a = join(1, 0, -3, 0, "red");
    join(2, 1, 40, 0, "blue"); /* out of range */
    cells[0].time = 3;
    CHECK(command(a, 1, NULL, 0) == 0 && n_reqs == 0 && count_events(1, 4) == 1);
    /* a held key: within the cooldown nothing happens, not even a miss */
    cells[0].time = 3.2;
    CHECK(command(a, 1, NULL, 0) == 0 && count_events(1, 4) == 1);
    cells[0].time = 3.6;
    CHECK(command(a, 1, NULL, 0) == 0 && count_events(1, 4) == 2);
    /* an id out of range is a miss too */
    cells[0].time = 5;
    uint8_t id2[8] = {2};
    CHECK(command(a, 1, id2, 8) == 0 && n_reqs == 0);
    /* errors: unknown command, bad payload */
    CHECK(command(a, 9, NULL, 0) == TS_GAME_EINVAL);
    CHECK(command(a, 1, id2, 3) == TS_GAME_EINVAL);
}

/* Runs both cells' on_tick for `seconds` at 20 Hz with bots moving. */
static void run_ticks(double seconds)
{
    double dt = 0.05;
    for (int t = 0; t < (int)(seconds / dt + 0.5); t++)
        for (int c = 0; c < 2; c++) {
            cells[c].time += dt;
            mod->on_tick(&cells[c], dt);
            for (size_t i = 0; i < n_ents; i++)
                if (ents[i].cell == c && (ents[i].e.flags & TS_GAME_NPC)) {
                    ents[i].e.x += ents[i].e.vx * dt;
                    ents[i].e.y += ents[i].e.vy * dt;
                }
        }
}

static void test_bots(void)
{
    reset_world();
    run_ticks(10);
    /* bots=32 over two cells of equal area: 16 each, at most one a second */
    size_t per_cell[2] = {0, 0};
    for (size_t i = 0; i < n_ents; i++) {
        CHECK(ents[i].e.flags & TS_GAME_NPC);
        CHECK(ents[i].e.state_len == 16 && (ents[i].e.state[1] & 1));
        CHECK(ents[i].e.vx != 0 || ents[i].e.vy != 0);
        CHECK(ents[i].e.x > -100 && ents[i].e.x < 100 && ents[i].e.y > -50 && ents[i].e.y < 50);
        per_cell[ents[i].cell]++;
    }
    CHECK(per_cell[0] == 10 && per_cell[1] == 10);
    run_ticks(20);
    per_cell[0] = per_cell[1] = 0;
    for (size_t i = 0; i < n_ents; i++)
        per_cell[ents[i].cell]++;
    CHECK(per_cell[0] == 16 && per_cell[1] == 16);

    /* eight of cell 1's bots roam into cell 0: each cell spawned its share
     * once, nobody spawns or despawns again (the world keeps 32) */
    int moved = 0;
    for (size_t i = 0; i < n_ents && moved < 8; i++)
        if (ents[i].cell == 1) {
            ents[i].cell = 0;
            moved++;
        }
    run_ticks(10);
    per_cell[0] = per_cell[1] = 0;
    for (size_t i = 0; i < n_ents; i++)
        per_cell[ents[i].cell]++;
    CHECK(per_cell[0] == 24 && per_cell[1] == 8);

    /* a player among bots gets tagged by one of them, now and then */
    fake_ent_t *p = join(5, 0, -50, 0, "red");
    unsigned tagged = 0;
    for (int round = 0; round < 600 && !tagged; round++) {
        /* keep the player in the middle of the bots */
        for (size_t i = 0; i < n_ents; i++)
            if (ents[i].e.flags & TS_GAME_NPC && ents[i].cell == 0 && ents[i].e.state[0] == 2) {
                p->e.x = ents[i].e.x + 1;
                p->e.y = ents[i].e.y;
                break;
            }
        run_ticks(0.25);
        deliver_all();
        tagged = u32_at(p, 8);
    }
    CHECK(tagged == 1 && team(p) == 2);
    CHECK(world_counter(1) == 1 && world_counter(0) == 0); /* a bot's tag scores for its team too */
}

/* The same seed and inputs give the same world: every entity's state,
 * position and velocity, and the cell state. */
static void test_replay(void)
{
    static fake_ent_t first[MAX_ENT];
    size_t n_first = 0;
    uint8_t cs_first[2][TS_GAME_CELL_STATE_MAX];
    for (int pass = 0; pass < 2; pass++) {
        reset_world();
        run_ticks(8);
        if (pass == 0) {
            memcpy(first, ents, sizeof ents);
            n_first = n_ents;
            for (int c = 0; c < 2; c++)
                memcpy(cs_first[c], cells[c].cell_state, sizeof cs_first[c]);
        } else {
            CHECK(n_ents == n_first && n_ents > 0);
            for (size_t i = 0; i < n_ents; i++) {
                CHECK(ents[i].e.id == first[i].e.id && ents[i].e.x == first[i].e.x);
                CHECK(ents[i].e.vx == first[i].e.vx && ents[i].e.vy == first[i].e.vy);
                CHECK(memcmp(ents[i].e.state, first[i].e.state, TS_GAME_STATE_MAX) == 0);
                CHECK(strcmp(ents[i].name, first[i].name) == 0);
            }
            for (int c = 0; c < 2; c++)
                CHECK(memcmp(cells[c].cell_state, cs_first[c], sizeof cs_first[c]) == 0);
        }
    }
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "./libtag.so";
    void *so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    ts_game_module_fn fn = (ts_game_module_fn)dlsym(so, TS_GAME_MODULE_SYMBOL);
    CHECK(fn);
    mod = fn();
    CHECK(mod && mod->abi_version == TS_GAME_ABI_VERSION && strcmp(mod->name, "tag") == 0);
    void *bad = NULL;
    CHECK(mod->load(&fake_api, "bots=x", &bad) == TS_GAME_EINVAL);
    CHECK(mod->load(&fake_api, "nope=1", &bad) == TS_GAME_EINVAL);
    CHECK(mod->load(&fake_api, "bots=32 range=12, cooldown=0.5", &mod_data) == 0);

    test_join_teams();
    test_tag_across_border();
    test_tag_race();
    test_tag_each_other();
    test_cooldown_miss_errors();
    test_bots();
    test_replay();

    mod->unload(mod_data);
    dlclose(so);
    printf("test_tag: 7 passed, 0 failed\n");
    return 0;
}
