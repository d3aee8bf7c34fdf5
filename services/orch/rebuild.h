/* Registry rebuild after Redis lost its data (restarted without its
 * append-only file, flushed, replaced). See rebuild.c. */
#ifndef TESSERA_ORCH_REBUILD_H
#define TESSERA_ORCH_REBUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/proto.h"
#include "tessera/status.h"

typedef struct ts_orch ts_orch_t;

/* Starts remembering what worker heartbeats list (every orchestrator,
 * leader or not, so a standby that takes over knows what the workers
 * hold); before the heartbeat subscription. */
void ts_rebuild_start(void);
/* Frees what it remembers (no-op if not started); after the subscription
 * is gone. */
void ts_rebuild_stop(void);
/* One heartbeat with a valid worker id, received at now_us (monotonic):
 * the highest epoch of each cell it lists. Any thread; borrows hb. */
void ts_rebuild_note_heartbeat(const Tessera__V1__Heartbeat *hb, uint64_t now_us);
/* The leader's check, first thing of each iteration of its work: at most
 * every TS_REBUILD_PROBE_MS (and always before the world is written) one
 * pipelined probe of the world's metadata and version. Metadata missing
 * with traces of an earlier life (heartbeats listing cells, checkpoints,
 * inputs in the stream), or a version below the highest this process saw,
 * means the registry was lost: it is written back from the local copy, the
 * heartbeats and the checkpoints, each cell at the highest epoch seen + 1,
 * and the version jumps past every version handed out before, so every
 * gateway and worker sees a gap and reads it all again. Returns true while
 * the leader must do nothing else (waiting for heartbeats to arrive). */
bool ts_rebuild_poll(ts_orch_t *o, uint64_t now_us);

#define TS_REBUILD_PROBE_MS 500

/* Counters for metrics and tests (any thread). */
uint64_t ts_rebuild_count(void);         /* registry rebuilds so far */
uint64_t ts_rebuild_stream_resets(void); /* world streams found missing and created again */

#endif
