/* NATS subjects. Cell subjects are "cell.<world>.<cx>.<cy>.<depth>.<sub>.<kind>";
 * an input subject names its publisher in one more token,
 * "cell.<key>.input.<origin>" (g<gateway id>, s for tessera-sim's bus mode,
 * w for a worker), so nats-server permissions can hold each gateway to its
 * own token and the worker can tell whose input it applies. Service subjects
 * live under "tessera.". */
#ifndef TESSERA_SUBJECT_H
#define TESSERA_SUBJECT_H

#include <stddef.h>
#include <stdint.h>

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

/* Who published an input-stream message: a gateway (its gateway.id,
 * 0..TS_ORIGIN_GATEWAY_MAX), tessera-sim in bus mode, or a worker
 * (transfers, departures, game requests, forwarded inputs). */
typedef int32_t ts_origin_t;
#define TS_ORIGIN_WORKER ((ts_origin_t)-1)
#define TS_ORIGIN_SIM ((ts_origin_t)-2)
#define TS_ORIGIN_GATEWAY_MAX 65535
#define TS_ORIGIN_TOKEN_MAX 8

/* "input", "state", ... ; NULL for an out-of-range kind. */
const char *ts_subject_kind_str(ts_subject_kind_t kind);

/* Writes "cell.<key>.<kind>" (for inputs the prefix of every origin's
 * subject: logs, not publishing). Returns length, or -1 if cap is too small. */
int ts_subject_cell(char *buf, size_t cap, const ts_cell_t *c, ts_subject_kind_t kind);
/* Parses a cell subject (an input's with or without its origin token, which
 * is not returned: see ts_subject_input_origin). TS_ERR_PARSE on anything
 * else (wrong prefix, bad numbers, unknown kind, bad origin, trailing
 * tokens). */
ts_status_t ts_subject_parse(const char *subject, ts_cell_t *cell, ts_subject_kind_t *kind);

/* The origin's subject token ("g7", "s", "w") into buf (at least
 * TS_ORIGIN_TOKEN_MAX bytes). Returns its length, or -1 for an origin that
 * is none of these. */
int ts_subject_origin_format(char *buf, size_t cap, ts_origin_t origin);
/* Parses one origin token (the whole string). TS_ERR_PARSE otherwise. */
ts_status_t ts_subject_origin_parse(const char *token, ts_origin_t *origin);
/* "cell.<key>.input.<origin>": where origin publishes the cell's inputs.
 * Returns length, or -1 (cap too small, bad cell or origin). */
int ts_subject_input(char *buf, size_t cap, const ts_cell_t *c, ts_origin_t origin);
/* "cell.<key>.input.*": every input of the cell (a consumer's filter, the
 * subject of "the cell's last input"). */
int ts_subject_input_filter(char *buf, size_t cap, const ts_cell_t *c);
/* The origin of an input subject "cell.<key>.input.<origin>": TS_OK with
 * *origin; TS_ERR_PARSE if the subject does not end in ".input.<origin>"
 * (the cell is not parsed: it is the consumer's). */
ts_status_t ts_subject_input_origin(const char *subject, ts_origin_t *origin);

/* Wildcard for one kind across a world: "cell.<world>.*.*.*.*.<kind>"
 * ("...input.*" for inputs: every origin). */
int ts_subject_world_wildcard(char *buf, size_t cap, uint32_t world, ts_subject_kind_t kind);
/* "tessera.worker.<id>.hb" */
int ts_subject_heartbeat(char *buf, size_t cap, const char *worker_id);
/* "tessera.registry.<world>" */
int ts_subject_registry(char *buf, size_t cap, uint32_t world);
/* "tessera.ctl.<world>.<verb>" (handover, drain, stats): requests the leading
 * orchestrator serves. */
int ts_subject_ctl(char *buf, size_t cap, uint32_t world, const char *verb);

#endif
