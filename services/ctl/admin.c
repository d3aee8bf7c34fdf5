/* `tessera-ctl handover|drain|split|merge|stats`: text requests to the leading
 * orchestrator on tessera.ctl.<world>.<verb>, printing its answer. Exit
 * status 0 when it answered "ok ..." (or the stats), 1 for "error: ..." or
 * no answer. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/cell.h"
#include "tessera/log.h"
#include "tessera/registry.h"
#include "tessera/subject.h"
#include "tessera/util.h"

#define HANDOVER_TIMEOUT_MS 30000
#define DRAIN_TIMEOUT_MS 5000
#define STATS_TIMEOUT_MS 2000
#define SPLIT_TIMEOUT_MS 10000
/* a merge may first gather its children on one worker (orchestrator: at most 30 s) */
#define MERGE_TIMEOUT_MS 35000

ts_status_t ts_ctl_request(ts_bus_t *bus, uint32_t world, const char *verb, const char *payload,
                           int64_t timeout_ms, char **reply)
{
    *reply = NULL;
    char subject[96];
    if (ts_subject_ctl(subject, sizeof subject, world, verb) < 0) return TS_ERR_INVALID;
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_bus_msg_t *m = NULL;
    ts_status_t st = ts_bus_request(bus, subject, &hdr, payload, strlen(payload), timeout_ms, &m);
    if (st != TS_OK) return st;
    size_t n = ts_bus_msg_len(m);
    *reply = malloc(n + 1);
    if (!*reply) {
        ts_bus_msg_destroy(m);
        return TS_ERR_NOMEM;
    }
    memcpy(*reply, ts_bus_msg_data(m), n);
    (*reply)[n] = '\0';
    ts_bus_msg_destroy(m);
    return TS_OK;
}

/* Sends one request and prints the answer; the exit status. */
static int ask(const ts_config_t *cfg, const char *verb, const char *payload, int64_t timeout_ms)
{
    ts_bus_t *bus = NULL;
    if (ts_ctl_connect_bus(cfg, &bus) != TS_OK) return 1;
    char *reply = NULL;
    ts_status_t st = ts_ctl_request(bus, (uint32_t)cfg->world_id, verb, payload, timeout_ms, &reply);
    int rc = 1;
    if (st == TS_ERR_TIMEOUT || st == TS_ERR_BUS || st == TS_ERR_UNAVAILABLE) {
        fprintf(stderr,
                "tessera-ctl: no orchestrator answered on tessera.ctl.%lld.%s within %.1f s (%s); "
                "is a tessera-orch leading world %lld?\n",
                (long long)cfg->world_id, verb, (double)timeout_ms / 1000, ts_status_str(st),
                (long long)cfg->world_id);
    } else if (st != TS_OK) {
        fprintf(stderr, "tessera-ctl: %s request failed: %s\n", verb, ts_status_str(st));
    } else {
        bool error = strncmp(reply, "error", 5) == 0;
        fprintf(error ? stderr : stdout, "%s\n", reply);
        rc = error ? 1 : 0;
    }
    free(reply);
    ts_bus_destroy(bus);
    return rc;
}

int ts_ctl_handover(const ts_config_t *cfg, const char *cell, const char *worker)
{
    ts_cell_t c;
    if (ts_cell_parse(cell, &c) != TS_OK) {
        fprintf(stderr,
                "tessera-ctl: bad cell '%s' (want <world>.<cx>.<cy>.<depth>.<sub>, e.g. 0.-1.0.0.0)\n", cell);
        return TS_CTL_EXIT_USAGE;
    }
    if (!ts_worker_id_valid(worker)) {
        fprintf(stderr, "tessera-ctl: bad worker id '%s' (1-%d letters, digits, '-' or '_')\n", worker,
                TS_WORKER_ID_MAX - 1);
        return TS_CTL_EXIT_USAGE;
    }
    char payload[TS_CELL_STR_MAX + TS_WORKER_ID_MAX + 2];
    snprintf(payload, sizeof payload, "%s %s", cell, worker);
    return ask(cfg, "handover", payload, HANDOVER_TIMEOUT_MS);
}

int ts_ctl_drain(const ts_config_t *cfg, const char *worker)
{
    if (!ts_worker_id_valid(worker)) {
        fprintf(stderr, "tessera-ctl: bad worker id '%s' (1-%d letters, digits, '-' or '_')\n", worker,
                TS_WORKER_ID_MAX - 1);
        return TS_CTL_EXIT_USAGE;
    }
    return ask(cfg, "drain", worker, DRAIN_TIMEOUT_MS);
}

int ts_ctl_stats(const ts_config_t *cfg)
{
    return ask(cfg, "stats", "", STATS_TIMEOUT_MS);
}

/* split CELL / merge PARENT. */
static int split_merge(const ts_config_t *cfg, const char *verb, const char *cell, int64_t timeout_ms)
{
    ts_cell_t c;
    if (ts_cell_parse(cell, &c) != TS_OK) {
        fprintf(stderr,
                "tessera-ctl: bad cell '%s' (want <world>.<cx>.<cy>.<depth>.<sub>, e.g. 0.-1.0.0.0)\n", cell);
        return TS_CTL_EXIT_USAGE;
    }
    return ask(cfg, verb, cell, timeout_ms);
}

int ts_ctl_split(const ts_config_t *cfg, const char *cell)
{
    return split_merge(cfg, "split", cell, SPLIT_TIMEOUT_MS);
}

int ts_ctl_merge(const ts_config_t *cfg, const char *parent)
{
    return split_merge(cfg, "merge", parent, MERGE_TIMEOUT_MS);
}
