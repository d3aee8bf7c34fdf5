/* NATS subjects. Cell subjects are "cell.<world>.<cx>.<cy>.<depth>.<sub>.<kind>";
 * service subjects live under "tessera.". */
#ifndef TESSERA_SUBJECT_H
#define TESSERA_SUBJECT_H

#include <stddef.h>

#include "tessera/cell.h"
#include "tessera/status.h"

typedef enum {
    TS_SUBJ_INPUT = 0,
    TS_SUBJ_STATE,
    TS_SUBJ_GHOST,
    TS_SUBJ_HANDOVER,
    TS_SUBJ_CHECKPOINT,
    TS_SUBJ_KIND_COUNT
} ts_subject_kind_t;

#define TS_SUBJECT_MAX 160

/* "input", "state", ... ; NULL for an out-of-range kind. */
const char *ts_subject_kind_str(ts_subject_kind_t kind);

/* Writes "cell.<key>.<kind>". Returns length, or -1 if cap is too small. */
int ts_subject_cell(char *buf, size_t cap, const ts_cell_t *c, ts_subject_kind_t kind);
/* Parses a cell subject. TS_ERR_PARSE on anything else (wrong prefix, bad
 * numbers, unknown kind, trailing tokens). */
ts_status_t ts_subject_parse(const char *subject, ts_cell_t *cell, ts_subject_kind_t *kind);

/* Wildcard for one kind across a world: "cell.<world>.*.*.*.*.<kind>". */
int ts_subject_world_wildcard(char *buf, size_t cap, uint32_t world, ts_subject_kind_t kind);
/* "tessera.worker.<id>.hb" */
int ts_subject_heartbeat(char *buf, size_t cap, const char *worker_id);
/* "tessera.registry.<world>" */
int ts_subject_registry(char *buf, size_t cap, uint32_t world);
/* "tessera.ctl.<world>.<verb>" (handover, drain, stats): requests the leading
 * orchestrator serves. */
int ts_subject_ctl(char *buf, size_t cap, uint32_t world, const char *verb);

#endif
