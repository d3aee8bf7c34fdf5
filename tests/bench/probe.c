/* Cluster observation for the bench and the failure-mode tests: latest
 * heartbeat per worker (kept under a mutex, filled on nats.c threads),
 * orchestrator control requests, and tessera-sim's verdict line. */
#include "probe.h"

#include "tessera/json.h"
#include "tessera/subject.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/proto.h"
#include "tessera/subject.h"
#include "tessera/util.h"

struct ts_probe {
    ts_bus_sub_t *sub;
    pthread_mutex_t mu;
    size_t n;
    ts_probe_hb_t w[TS_PROBE_WORKERS];
};

static void on_heartbeat(void *ud, const ts_bus_msg_t *m)
{
    ts_probe_t *p = ud;
    Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (hb == NULL) return;
    if (hb->worker == NULL) {
        tessera__v1__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    pthread_mutex_lock(&p->mu);
    size_t i = 0;
    while (i < p->n && strcmp(p->w[i].worker, hb->worker) != 0)
        i++;
    if (i == p->n && p->n < TS_PROBE_WORKERS) ts_strlcpy(p->w[p->n++].worker, hb->worker, TS_WORKER_ID_MAX);
    if (i < p->n) {
        ts_probe_hb_t *l = &p->w[i];
        l->received_us = ts_mono_us();
        l->inputs_applied = hb->inputs_applied;
        l->entities = hb->entities;
        l->tick_p99_ms = hb->tick_p99_ms;
        l->ncells = 0;
        for (size_t k = 0; k < hb->n_cells && l->ncells < TS_PROBE_CELLS; k++) {
            ts_cell_t c;
            if (hb->cells[k]->cell && ts_proto_cell_get(hb->cells[k]->cell, &c) == TS_OK)
                l->cells[l->ncells++] = (ts_probe_cell_t){c, hb->cells[k]->epoch};
        }
    }
    pthread_mutex_unlock(&p->mu);
    tessera__v1__heartbeat__free_unpacked(hb, NULL);
}

ts_status_t ts_probe_create(ts_probe_t **out, ts_bus_t *bus)
{
    ts_probe_t *p = calloc(1, sizeof *p);
    if (p == NULL) return TS_ERR_NOMEM;
    pthread_mutex_init(&p->mu, NULL);
    ts_status_t st = ts_bus_subscribe(bus, "tessera.worker.*.hb", on_heartbeat, p, &p->sub);
    if (st != TS_OK) {
        ts_probe_destroy(p);
        return st;
    }
    *out = p;
    return TS_OK;
}

void ts_probe_destroy(ts_probe_t *p)
{
    if (p == NULL) return;
    ts_bus_sub_destroy(p->sub);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

void ts_probe_reset(ts_probe_t *p)
{
    pthread_mutex_lock(&p->mu);
    p->n = 0;
    pthread_mutex_unlock(&p->mu);
}

bool ts_probe_heartbeat(ts_probe_t *p, const char *worker, ts_probe_hb_t *out)
{
    bool found = false;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n && !found; i++) {
        if (strcmp(p->w[i].worker, worker) == 0) {
            *out = p->w[i];
            found = true;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return found;
}

bool ts_probe_hb_has(const ts_probe_hb_t *hb, const ts_cell_t *cell)
{
    for (size_t i = 0; i < hb->ncells; i++)
        if (ts_cell_eq(&hb->cells[i].cell, cell)) return true;
    return false;
}

bool ts_probe_hb_lists(const ts_probe_hb_t *hb, const ts_probe_cell_t *cells, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t k = 0; k < hb->ncells && !found; k++)
            found = ts_cell_eq(&hb->cells[k].cell, &cells[i].cell) && hb->cells[k].epoch >= cells[i].epoch;
        if (!found) return false;
    }
    return true;
}

uint64_t ts_probe_inputs_applied(ts_probe_t *p)
{
    uint64_t sum = 0;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++)
        sum += p->w[i].inputs_applied;
    pthread_mutex_unlock(&p->mu);
    return sum;
}

ts_status_t ts_probe_ctl(ts_bus_t *bus, uint32_t world, const char *verb, const char *payload,
                         int64_t timeout_ms, char *out, size_t cap)
{
    char subject[96];
    if (ts_subject_ctl(subject, sizeof subject, world, verb) < 0) return TS_ERR_INVALID;
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_bus_msg_t *m = NULL;
    if (cap > 0) out[0] = '\0';
    ts_status_t st = ts_bus_request(bus, subject, &hdr, payload, strlen(payload), timeout_ms, &m);
    if (st != TS_OK || cap == 0) {
        ts_bus_msg_destroy(m);
        return st;
    }
    size_t n = ts_bus_msg_len(m) < cap - 1 ? ts_bus_msg_len(m) : cap - 1;
    memcpy(out, ts_bus_msg_data(m), n);
    out[n] = '\0';
    ts_bus_msg_destroy(m);
    return TS_OK;
}

/* Whether a ctl reply says the orchestrator cannot do it now, not never. */
static bool ctl_transient(const char *reply)
{
    return strstr(reply, "not leader") || strstr(reply, "busy") || strstr(reply, "registry unavailable") ||
           strstr(reply, "being handed over");
}

bool ts_probe_ctl_cell(ts_bus_t *bus, const char *verb, const ts_cell_t *cell, int64_t timeout_ms,
                       char *reply, size_t cap)
{
    char key[TS_CELL_STR_MAX];
    ts_cell_format(cell, key, sizeof key);
    for (int attempt = 0; attempt < 50; attempt++) {
        ts_status_t st = ts_probe_ctl(bus, cell->world, verb, key, timeout_ms, reply, cap);
        if (st != TS_OK) {
            ts_strlcpy(reply, ts_status_str(st), cap);
        } else {
            if (strncmp(reply, "ok", 2) == 0) return true;
            if (!ctl_transient(reply)) return false;
        }
        ts_sleep_ms(200);
    }
    return false;
}

long ts_probe_leader_pid(ts_bus_t *bus, uint32_t world, int64_t timeout_ms)
{
    char json[1024];
    if (ts_probe_ctl(bus, world, "stats", "", timeout_ms, json, sizeof json) != TS_OK) return -1;
    const char *p = strstr(json, "\"leader\":\"");
    if (!p) return -1;
    p += strlen("\"leader\":\"");
    const char *end = strchr(p, '"'), *dash = end;
    if (!end) return -1;
    /* the pid sits between the last two dashes (the host may have some) */
    for (int k = 0; k < 2; k++) {
        if (k) dash--;
        while (dash > p && dash[-1] != '-')
            dash--;
    }
    return dash > p ? strtol(dash, NULL, 10) : -1;
}

const ts_cell_entry_t *ts_probe_cell_find(const ts_cell_entry_t *cells, size_t n, const ts_cell_t *c)
{
    for (size_t i = 0; i < n; i++)
        if (ts_cell_eq(&cells[i].cell, c)) return &cells[i];
    return NULL;
}

bool ts_probe_registry_read(ts_registry_t *reg, uint32_t world, ts_probe_epochs_t *seen,
                            ts_cell_entry_t **cells, size_t *n, char *why, size_t cap)
{
    *cells = NULL;
    *n = 0;
    ts_world_t w;
    ts_status_t st = ts_registry_world_get(reg, world, &w);
    /* the cells are read one by one: a read is a snapshot only if the
     * registry version (bumped by every change) is the same before and after
     * it; read again while a change slipped in between */
    for (int tries = 0; st == TS_OK; tries++) {
        uint64_t v0 = 0, v1 = 0;
        st = ts_registry_version(reg, world, &v0);
        if (st == TS_OK) st = ts_registry_cells(reg, world, cells, n);
        if (st == TS_OK) st = ts_registry_version(reg, world, &v1);
        if (st != TS_OK || v0 == v1 || tries == 50) break;
        free(*cells);
        *cells = NULL;
        *n = 0;
    }
    if (st != TS_OK) {
        snprintf(why, cap, "registry read: %s", ts_status_str(st));
        return false;
    }
    char what[256];
    if (!ts_registry_cells_check(&w, *cells, *n, what, sizeof what)) {
        snprintf(why, cap, "registry inconsistent: %s", what);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < *n; i++) {
        const ts_cell_entry_t *e = &(*cells)[i];
        size_t k = 0;
        while (k < seen->n && !ts_cell_eq(&seen->cell[k], &e->cell))
            k++;
        if (k == seen->n) {
            if (seen->n == TS_PROBE_EPOCHS_MAX) continue;
            seen->cell[seen->n] = e->cell;
            seen->epoch[seen->n++] = 0;
        }
        if (e->epoch < seen->epoch[k] && ok) {
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&e->cell, key, sizeof key);
            snprintf(why, cap, "cell %s: epoch %" PRIu64 " after %" PRIu64, key, e->epoch, seen->epoch[k]);
            ok = false;
        }
        seen->epoch[k] = e->epoch;
    }
    return ok;
}

bool ts_probe_parse_handover(const char *reply, ts_probe_handover_t *out)
{
    return sscanf(reply,
                  "ok %63[^-]->%63s epoch %" SCNu64 "->%" SCNu64 " freeze_us=%" SCNu64 " total_us=%" SCNu64,
                  out->from, out->to, &out->epoch_from, &out->epoch_to, &out->freeze_us, &out->total_us) == 6;
}

bool ts_probe_json_number(const char *json, const char *key, double *out)
{
    return ts_json_number(json, key, out);
}

void ts_probe_sim_verdict(const char *log, ts_probe_verdict_t *out)
{
    memset(out, 0, sizeof *out);
    ts_strlcpy(out->line, "none", sizeof out->line);
    const char *line = NULL;
    for (const char *p = log; p != NULL && (p = strstr(p, "sim: done ")) != NULL; p++)
        line = p;
    if (line == NULL) return;
    size_t len = strcspn(line, "\n");
    if (len >= sizeof out->line) len = sizeof out->line - 1;
    memcpy(out->line, line, len);
    out->line[len] = '\0';
    unsigned long long sent, acked, applied;
    if (sscanf(line, "sim: done sent=%llu acked=%llu applied=%llu", &sent, &acked, &applied) == 3) {
        out->parsed = true;
        out->sent = sent;
        out->acked = acked;
        out->applied = applied;
    }
}

void ts_probe_gw_verdict(const char *log, ts_probe_gw_verdict_t *r)
{
    memset(r, 0, sizeof *r);
    if (log == NULL) return;
    const char *p = strstr(log, "via-gateway: clients=");
    if (p != NULL) {
        int n =
            sscanf(p,
                   "via-gateway: clients=%llu connected=%llu sent=%llu applied=%llu missing=%llu errors=%llu "
                   "lat_p50_ms=%lf lat_p99_ms=%lf lat_p999_ms=%lf deltas_per_s_per_client=%lf "
                   "bytes_per_s_per_client=%lf",
                   &r->clients, &r->connected, &r->sent, &r->applied, &r->missing, &r->errors, &r->p50,
                   &r->p99, &r->p999, &r->deltas_pc, &r->bytes_pc);
        r->have_final = n >= 6;
        r->have_latency = n == 11;
    }
    p = strstr(log, "applied more than sent ");
    if (p != NULL)
        r->have_over =
            sscanf(p, "applied more than sent %llu on %llu clients", &r->doubled, &r->clients_over) == 2;
    p = strstr(log, "(inputs reported not stored ");
    if (p != NULL) r->have_not_stored = sscanf(p, "(inputs reported not stored %llu", &r->not_stored) == 1;
    p = strstr(log, "clients without a Delta ");
    if (p != NULL) r->have_no_delta = sscanf(p, "clients without a Delta %llu", &r->no_delta) == 1;
    p = strstr(log, "via-gateway: cells: ");
    if (p != NULL)
        r->have_cells =
            sscanf(p,
                   "via-gateway: cells: dropped=%llu cell_changed=%llu same_cell=%llu unannounced=%llu "
                   "clients_depth1=%llu clients_depth2=%llu max_depth=%u",
                   &r->dropped, &r->cell_changed, &r->same_cell, &r->unannounced, &r->clients_depth1,
                   &r->clients_depth2, &r->max_depth) == 7;
}

bool ts_probe_verdict_exact(const ts_probe_verdict_t *v)
{
    return v->parsed && v->sent > 0 && v->sent == v->acked && v->acked == v->applied;
}

bool ts_probe_sim_check(ts_h_t *h, int idx, ts_ledger_t *ledger, const char *event, uint64_t event_us,
                        int *rc, ts_probe_verdict_t *v)
{
    ts_h_signal(h, idx, SIGINT);
    *rc = ts_h_wait(h, idx, 30000);
    char *log = ts_h_read_log(h, idx);
    ts_probe_sim_verdict(log, v);
    free(log);
    fprintf(stderr, "%s\n", v->line);
    if (*rc == 0 && ts_probe_verdict_exact(v)) return true;
    if (ledger != NULL) {
        ts_sleep_ms(500);
        ts_ledger_report(ledger, stderr, event, event_us, 5);
    }
    return false;
}

bool ts_probe_wait_ready(ts_probe_t *p, ts_bus_t *bus, uint32_t world, size_t per_worker, int64_t timeout_ms,
                         bool *ctl_ok, bool *bound)
{
    char reply[1024];
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000ULL;
    *ctl_ok = *bound = false;
    while (ts_mono_us() < deadline && !(*ctl_ok && *bound)) {
        if (!*ctl_ok)
            *ctl_ok =
                ts_probe_ctl(bus, world, "stats", "", 500, reply, sizeof reply) == TS_OK && reply[0] == '{';
        ts_probe_hb_t a, b;
        *bound = ts_probe_heartbeat(p, "w1", &a) && ts_probe_heartbeat(p, "w2", &b) &&
                 a.ncells == per_worker && b.ncells == per_worker;
        ts_sleep_ms(100);
    }
    if (!*bound) {
        /* say what was seen, so a failure shows which worker lagged */
        ts_probe_hb_t hb[2];
        static const char *const ids[2] = {"w1", "w2"};
        for (int i = 0; i < 2; i++) {
            if (ts_probe_heartbeat(p, ids[i], &hb[i]))
                fprintf(stderr, "probe: %s holds %zu cells (want %zu)\n", ids[i], hb[i].ncells, per_worker);
            else
                fprintf(stderr, "probe: no heartbeat from %s\n", ids[i]);
        }
    }
    return *ctl_ok && *bound;
}
