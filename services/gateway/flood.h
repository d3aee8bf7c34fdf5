/* The gateway's flood rule for one connection (session.c), on its own so it
 * is tested alone: time since the connection opened is cut in
 * GW_FLOOD_STEP_US steps; a frame that makes the frames of its step and of
 * the GW_FLOOD_STEPS - 1 steps before it more than `limit` is a flood.
 *
 * With 20 steps of 100 ms: more than `limit` frames within any 1.9 s are
 * always a flood (such an interval touches at most 20 steps), and a flood is
 * never declared for `limit` frames or fewer within 2 s (20 steps span 2 s).
 * O(1) per frame (at most GW_FLOOD_STEPS counters cleared), no allocation. */
#ifndef TS_GW_FLOOD_H
#define TS_GW_FLOOD_H

#include <stdbool.h>
#include <stdint.h>

#define GW_FLOOD_STEPS 20
#define GW_FLOOD_STEP_US 100000ull
/* The window: GW_FLOOD_STEPS x GW_FLOOD_STEP_US. */
#define GW_FLOOD_WINDOW_US (GW_FLOOD_STEPS * GW_FLOOD_STEP_US)

typedef struct {
    uint64_t origin_us; /* steps count from here */
    uint64_t step;      /* the step count[step % GW_FLOOD_STEPS] holds */
    uint32_t count[GW_FLOOD_STEPS];
    uint64_t sum; /* frames in the window */
} gw_flood_t;

/* Starts counting at now_us (monotonic). */
void gw_flood_init(gw_flood_t *f, uint64_t now_us);
/* Counts one frame arriving at now_us (never before the previous one);
 * true if the window now holds more than limit frames. */
bool gw_flood_add(gw_flood_t *f, uint64_t now_us, uint64_t limit);

#endif
