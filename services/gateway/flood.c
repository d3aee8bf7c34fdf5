/* See flood.h. */
#include "flood.h"

#include <string.h>

void gw_flood_init(gw_flood_t *f, uint64_t now_us)
{
    memset(f, 0, sizeof *f);
    f->origin_us = now_us;
}

bool gw_flood_add(gw_flood_t *f, uint64_t now_us, uint64_t limit)
{
    uint64_t step = now_us > f->origin_us ? (now_us - f->origin_us) / GW_FLOOD_STEP_US : 0;
    if (step < f->step) step = f->step;     /* a clock that went back counts in the newest step */
    if (step - f->step >= GW_FLOOD_STEPS) { /* the whole window passed */
        memset(f->count, 0, sizeof f->count);
        f->sum = 0;
    } else {
        for (uint64_t s = f->step + 1; s <= step; s++) { /* steps leaving the window */
            f->sum -= f->count[s % GW_FLOOD_STEPS];
            f->count[s % GW_FLOOD_STEPS] = 0;
        }
    }
    f->step = step;
    if (f->count[step % GW_FLOOD_STEPS] < UINT32_MAX) {
        f->count[step % GW_FLOOD_STEPS]++;
        f->sum++;
    }
    return f->sum > limit;
}
