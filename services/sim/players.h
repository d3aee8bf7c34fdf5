/* The sim's synthetic players: who they are, what they send next, and what
 * the workers' state deltas say about them (their cell and how many of
 * their inputs were applied). Thread-safe: state arrives on nats.c threads
 * while the main thread generates inputs. */
#ifndef TESSERA_SIM_PLAYERS_H
#define TESSERA_SIM_PLAYERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/bus.h"
#include "tessera/cell.h"
#include "tessera/registry.h"
#include "tessera/status.h"
#include "tessera/util.h"

#define TS_SIM_ENTITY_TAG 0x5150ULL
#define TS_SIM_MAX_PLAYERS 1000000
/* Players start within this distance (per axis) of the origin, so that some
 * of them walk across cell and worker borders. */
#define TS_SIM_START_SPREAD 150.0

typedef enum { TS_SIM_JOIN = 0, TS_SIM_MOVE, TS_SIM_LEAVE } ts_sim_kind_t;

/* One input to publish, addressed to the cell its player is believed in. */
typedef struct {
    ts_cell_t cell;
    uint64_t epoch; /* newest epoch seen for the player's cell, 0 if none */
    uint64_t entity;
    uint64_t seq;
    ts_sim_kind_t kind;
    double a, b;  /* join: x, y; move: dx, dy */
    size_t order; /* generation order, keeps a player's inputs in sequence */
} ts_sim_input_t;

/* Growable list of inputs (reused between flushes). */
typedef struct {
    ts_sim_input_t *v;
    size_t len, cap;
} ts_sim_inputs_t;

typedef struct ts_players ts_players_t;

typedef struct {
    uint64_t applied;   /* sum over players of the highest inputs_applied seen */
    size_t seen;        /* players seen in any state delta */
    uint64_t deltas;    /* state deltas decoded */
    uint64_t malformed; /* state messages that did not decode */
    uint64_t crossings; /* times a player's believed cell changed */
} ts_players_stats_t;

/* n players in world w, seeded by seed; rate_hz inputs per player per
 * second at speed units per second. Join times are spread over the first
 * input period after now_us (monotonic). */
ts_status_t ts_players_create(ts_players_t **out, size_t n, uint64_t seed, const ts_world_t *w, double speed,
                              int64_t rate_hz, uint64_t now_us);
void ts_players_destroy(ts_players_t *pl);

/* Entity id of player i: tag << 48 | (16 seeded random bits) << 32 | i. */
uint64_t ts_players_entity(const ts_players_t *pl, size_t i);
/* Player index of an entity id, or -1 if it is not one of ours. */
long ts_players_index(const ts_players_t *pl, uint64_t entity);
size_t ts_players_count(const ts_players_t *pl);

/* Appends the inputs due at now_us: a Join first, then Moves at rate_hz. */
ts_status_t ts_players_collect(ts_players_t *pl, uint64_t now_us, ts_sim_inputs_t *out);
/* Appends one Leave per player that joined. */
ts_status_t ts_players_collect_leaves(ts_players_t *pl, ts_sim_inputs_t *out);

/* ts_bus_msg_cb for cell state subjects (ud is the ts_players_t). */
void ts_players_on_state(void *ud, const ts_bus_msg_t *msg);
/* Applies one encoded StateDelta. TS_ERR_MALFORMED if it does not decode. */
ts_status_t ts_players_apply_state(ts_players_t *pl, const uint8_t *data, size_t len);

void ts_players_stats(ts_players_t *pl, ts_players_stats_t *out);
/* Logs (up to max) players whose applied count differs from what they sent;
 * returns how many differ. Call once sending has stopped. */
size_t ts_players_log_mismatches(ts_players_t *pl, size_t max);

void ts_sim_inputs_free(ts_sim_inputs_t *in);

/* Where a Join goes: the deepest live cell at (x, y) and its epoch; false
 * if unknown (the Join then goes to the root cell there). */
typedef bool (*ts_players_locate_fn)(void *ud, double x, double y, ts_cell_t *cell, uint64_t *epoch);
/* Called before the first collect. */
void ts_players_set_locate(ts_players_t *pl, ts_players_locate_fn fn, void *ud);

/* A hotspot: a share of the players (chosen by the seed) wanders freely
 * until from_s seconds after the start, then walks into the circle of
 * radius r around (x, y) and stays in it until hold_s seconds after the
 * start; then each walks to its own spot anywhere in the world (so the
 * crowd spreads evenly) and wanders freely again. */
typedef struct {
    double x, y, r;
    double share;  /* 0..1 */
    double hold_s; /* from the start of the run */
    double from_s; /* from the start of the run; below hold_s (or 0) */
} ts_sim_hotspot_t;
/* Parses "X,Y,R[,share[,hold_s[,from_s]]]" (defaults: share 0.5, hold_s
 * 60, from_s 0). */
ts_status_t ts_sim_hotspot_parse(const char *s, ts_sim_hotspot_t *out);

/* One walker's part in a hotspot (bus-mode players and gateway clients). */
typedef struct {
    bool crowd;     /* one of the hotspot's share */
    bool dispersed; /* reached its spot after the crowd broke up */
    double tx, ty;  /* that spot */
} ts_sim_crowd_t;
/* Draws m's membership (h->share) and its spot in [x0, x1) x [y0, y1). */
void ts_sim_crowd_init(ts_sim_crowd_t *m, const ts_sim_hotspot_t *h, ts_rng_t *rng, double x0, double y0,
                       double x1, double y1);
/* The heading of a walker at (x, y) `elapsed_s` after the start: false while
 * it wanders freely (not of the crowd, before from_s, inside the circle
 * while the crowd holds, or dispersed); else *heading (radians, turned by up
 * to +-turn/2 at random) points into the circle or, after hold_s, to its
 * spot, which counts as reached within `arrive` units. */
bool ts_sim_crowd_heading(ts_sim_crowd_t *m, const ts_sim_hotspot_t *h, double elapsed_s, double x, double y,
                          double arrive, double turn, ts_rng_t *rng, double *heading);

/* Called before the first collect. */
void ts_players_set_hotspot(ts_players_t *pl, const ts_sim_hotspot_t *h, uint64_t start_us);
/* Players of the hotspot's share inside its circle at now_us (dead-reckoned). */
size_t ts_players_in_hotspot(ts_players_t *pl, uint64_t now_us);

#endif
