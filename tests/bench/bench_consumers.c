/* tessera-bench-consumers: what one JetStream consumer per cell costs
 * nats-server, against a server the harness starts (file storage, like
 * `make run`).
 *
 *   deliver   N ordered consumers (one per cell), each filtered on one
 *             cell's inputs; inputs published at a fixed rate spread over
 *             the N cells. nats-server's CPU per input delivered, for N =
 *             16, 512 and 2,048, with a literal filter (cell.<key>.input)
 *             and with the filter the worker uses (cell.<key>.input.*,
 *             the origin token).
 *   worker    one ordered consumer per worker over the whole stream (4
 *             workers, inputs spread over 4,096 cells), filtered on the
 *             stream's own subject or not filtered at all: what the
 *             worker does now (services/worker/inbox.c); nats-server CPU
 *             per input stored (each is delivered to every worker).
 *   create    creating a consumer on a stream of many inputs: from the
 *             middle of the stream and from near its end, literal vs
 *             wildcard filter (a recovering cell's bind).
 *
 * Side by side in one run; no target (these are the figures behind the
 * design notes in docs/architecture.md and docs/benchmarks.md). Knobs:
 * BENCH_CONSUMERS_RATE (2000 inputs/s), BENCH_CONSUMERS_WINDOW_S (5),
 * BENCH_CONSUMERS_STREAM (200000 messages for the create phase). */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nats/nats.h>

#include "harness.h"
#include "procstat.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define STREAM "BENCH_IN"
#define SIDE 64 /* cells are laid out on a 64-wide grid, as in a 64x64 world */

static ts_h_t H;
static atomic_uint_fast64_t delivered;

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') return def;
    long n = strtol(v, NULL, 10);
    return n < lo ? lo : n > hi ? hi : (int)n;
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    atomic_fetch_add(&delivered, 1);
    natsMsg_Destroy(msg);
}

static void subject(char *buf, size_t cap, int cell, const char *tail)
{
    snprintf(buf, cap, "cell.0.%d.%d.0.0.input%s", cell % SIDE, cell / SIDE, tail);
}

/* A connection and a file-storage stream of the worker's subject shape on a
 * fresh server; false (and a message) on failure. */
static bool open_stream(natsConnection **nc, jsCtx **js)
{
    natsOptions *o = NULL;
    jsErrCode je = 0;
    const char *subjects[] = {"cell.0.*.*.*.*.input.*"};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = STREAM;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    bool ok = natsOptions_Create(&o) == NATS_OK && natsOptions_SetURL(o, H.nats_url) == NATS_OK &&
              natsOptions_UseGlobalMessageDelivery(o, true) == NATS_OK &&
              natsOptions_SetMaxPendingMsgs(o, 1000000) == NATS_OK &&
              natsConnection_Connect(nc, o) == NATS_OK &&
              natsConnection_JetStream(js, *nc, NULL) == NATS_OK &&
              js_AddStream(NULL, *js, &sc, NULL, &je) == NATS_OK;
    natsOptions_Destroy(o);
    if (!ok) fprintf(stderr, "bench-consumers: cannot set up the stream (%s)\n", nats_GetLastError(NULL));
    return ok;
}

static void close_stream(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* Publishes n inputs spread over ncells at rate per second; false if a
 * publish failed. */
static bool publish(jsCtx *js, int n, int ncells, int rate, const char *origin)
{
    char subj[96], payload[128];
    memset(payload, 'x', sizeof payload);
    uint64_t t0 = ts_mono_us();
    for (int i = 0; i < n; i++) {
        subject(subj, sizeof subj, i % ncells, origin);
        if (js_PublishAsync(js, subj, payload, sizeof payload, NULL) != NATS_OK) return false;
        /* pace: the i-th input is due at t0 + i/rate */
        uint64_t due = t0 + (uint64_t)i * 1000000ULL / (uint64_t)rate;
        uint64_t now = ts_mono_us();
        if (due > now + 2000) ts_sleep_ms((int)((due - now) / 1000));
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    return js_PublishAsyncComplete(js, &po) == NATS_OK;
}

/* nats-server CPU per input delivered (microseconds), -1 on failure. */
static double deliver_cost(int ncons, bool wildcard, int rate, int window_s)
{
    ts_h_start(&H);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    double cost = -1;
    natsSubscription **subs = calloc((size_t)ncons, sizeof *subs);
    if (subs == NULL || !open_stream(&nc, &js)) goto out;
    for (int c = 0; c < ncons; c++) {
        char subj[96];
        subject(subj, sizeof subj, c, wildcard ? ".*" : ".g1");
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = STREAM;
        so.Ordered = true;
        jsErrCode je = 0;
        if (js_Subscribe(&subs[c], js, subj, on_msg, NULL, NULL, &so, &je) != NATS_OK) {
            fprintf(stderr, "bench-consumers: consumer %d: %s\n", c, nats_GetLastError(NULL));
            goto out;
        }
    }
    int n = rate * window_s;
    atomic_store(&delivered, 0);
    uint64_t cpu0 = 0, cpu1 = 0;
    pid_t pid = H.procs[TS_H_NATS].pid;
    ts_proc_cpu_us(pid, &cpu0);
    if (!publish(js, n, ncons, rate, ".g1")) goto out;
    uint64_t until = ts_mono_us() + 30000000ULL;
    while (atomic_load(&delivered) < (uint64_t)n && ts_mono_us() < until)
        ts_sleep_ms(10);
    ts_proc_cpu_us(pid, &cpu1);
    if (atomic_load(&delivered) == (uint64_t)n) cost = (double)(cpu1 - cpu0) / n;
out:
    for (int c = 0; subs != NULL && c < ncons; c++)
        natsSubscription_Destroy(subs[c]);
    free(subs);
    if (js != NULL) close_stream(nc, js);
    ts_h_stop(&H);
    return cost;
}

/* nats-server CPU per input stored (microseconds) with nworkers ordered
 * consumers over the whole stream (filter: a subject, or "" for none), the
 * inputs spread over ncells; -1 on failure, -2 if the client library cannot
 * create such a consumer. */
static double worker_cost(int nworkers, const char *filter, int ncells, int rate, int window_s)
{
    ts_h_start(&H);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    double cost = -1;
    natsSubscription **subs = calloc((size_t)nworkers, sizeof *subs);
    if (subs == NULL || !open_stream(&nc, &js)) goto out;
    for (int c = 0; c < nworkers; c++) {
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = STREAM;
        so.Ordered = true;
        jsErrCode je = 0;
        if (js_Subscribe(&subs[c], js, filter, on_msg, NULL, NULL, &so, &je) != NATS_OK) {
            fprintf(stderr, "bench-consumers: worker consumer (filter '%s'): %s\n", filter,
                    nats_GetLastError(NULL));
            cost = -2;
            goto out;
        }
    }
    int n = rate * window_s;
    atomic_store(&delivered, 0);
    uint64_t cpu0 = 0, cpu1 = 0;
    pid_t pid = H.procs[TS_H_NATS].pid;
    ts_proc_cpu_us(pid, &cpu0);
    if (!publish(js, n, ncells, rate, ".g1")) goto out;
    uint64_t until = ts_mono_us() + 30000000ULL;
    uint64_t want = (uint64_t)n * (uint64_t)nworkers;
    while (atomic_load(&delivered) < want && ts_mono_us() < until)
        ts_sleep_ms(10);
    ts_proc_cpu_us(pid, &cpu1);
    if (atomic_load(&delivered) == want) cost = (double)(cpu1 - cpu0) / n;
out:
    for (int c = 0; subs != NULL && c < nworkers; c++)
        natsSubscription_Destroy(subs[c]);
    free(subs);
    if (js != NULL) close_stream(nc, js);
    ts_h_stop(&H);
    return cost;
}

/* Milliseconds per consumer create, 4 cases, into ms[]; false on failure. */
static bool create_cost(int nmsg, double ms[4])
{
    ts_h_start(&H);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    bool ok = open_stream(&nc, &js) && publish(js, nmsg, SIDE * SIDE / 2, 1000000, ".g1");
    const int creates = 50;
    for (int m = 0; ok && m < 4; m++) {
        bool wildcard = m % 2 == 1, recent = m >= 2;
        uint64_t t0 = ts_mono_us();
        for (int k = 0; ok && k < creates; k++) {
            char subj[96], name[32];
            subject(subj, sizeof subj, k * 7, wildcard ? ".*" : ".g1");
            snprintf(name, sizeof name, "c%d_%d", m, k);
            jsConsumerConfig cc;
            jsConsumerConfig_Init(&cc);
            cc.Name = name;
            cc.AckPolicy = js_AckNone;
            cc.MemoryStorage = true; /* what an ordered consumer asks for */
            cc.DeliverPolicy = js_DeliverByStartSequence;
            cc.OptStartSeq = recent ? (uint64_t)nmsg - 2000 : (uint64_t)nmsg / 2;
            cc.FilterSubject = subj;
            jsConsumerInfo *ci = NULL;
            jsErrCode je = 0;
            ok = js_AddConsumer(&ci, js, STREAM, &cc, NULL, &je) == NATS_OK;
            jsConsumerInfo_Destroy(ci);
        }
        ms[m] = (double)(ts_mono_us() - t0) / 1000.0 / creates;
    }
    if (js != NULL) close_stream(nc, js);
    ts_h_stop(&H);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        fprintf(argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr,
                "usage: tessera-bench-consumers\n"
                "nats-server CPU per input delivered with one ordered consumer per cell (16, 512, 2048\n"
                "cells; literal vs wildcard filter), per input stored with one consumer per worker (4,\n"
                "over the whole stream), and the cost of creating a consumer on a long stream.\n"
                "Environment: BENCH_CONSUMERS_RATE (2000), BENCH_CONSUMERS_WINDOW_S (5),\n"
                "BENCH_CONSUMERS_STREAM (200000).\n");
        return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    ts_log_init("tessera-bench-consumers", TS_LOG_ERROR, false);
    int rate = env_int("BENCH_CONSUMERS_RATE", 2000, 10, 100000);
    int window_s = env_int("BENCH_CONSUMERS_WINDOW_S", 5, 1, 60);
    int nmsg = env_int("BENCH_CONSUMERS_STREAM", 200000, 10000, 5000000);
    bool all_ok = true;
    printf("tessera-bench-consumers: %d inputs/s for %d s over N ordered consumers (one per cell)\n", rate,
           window_s);
    printf("%-44s %14s %14s %8s\n", "nats-server CPU per input delivered", "literal", "wildcard", "ratio");
    const int counts[] = {16, 512, 2048};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        double lit = deliver_cost(counts[i], false, rate, window_s);
        double wc = deliver_cost(counts[i], true, rate, window_s);
        char label[64];
        snprintf(label, sizeof label, "  %d consumers", counts[i]);
        if (lit < 0 || wc < 0) {
            printf("%-44s %14s %14s\n", label, lit < 0 ? "failed" : "", wc < 0 ? "failed" : "");
            all_ok = false;
            continue;
        }
        printf("%-44s %11.1f us %11.1f us %7.2fx\n", label, lit, wc, wc / lit);
    }
    printf("%-44s %14s %14s\n", "one consumer per worker (4), 4,096 cells", "stream subject", "no filter");
    double ws = worker_cost(4, "cell.0.*.*.*.*.input.*", SIDE * SIDE, rate, window_s);
    double wn = worker_cost(4, "", SIDE * SIDE, rate, window_s);
    if (ws < 0) all_ok = false;
    char wsb[32] = "failed", wnb[32] = "failed";
    if (ws >= 0) snprintf(wsb, sizeof wsb, "%.1f us", ws);
    if (wn >= 0) snprintf(wnb, sizeof wnb, "%.1f us", wn);
    if (wn == -2) snprintf(wnb, sizeof wnb, "unsupported");
    printf("%-44s %14s %14s\n", "  nats-server CPU per input stored", wsb, wnb);
    double ms[4];
    printf("consumer create on a stream of %d inputs (%d cells), ms each:\n", nmsg, SIDE * SIDE / 2);
    if (create_cost(nmsg, ms)) {
        printf("%-44s %11.2f ms %11.2f ms %7.2fx\n", "  from the middle of the stream", ms[0], ms[1],
               ms[1] / ms[0]);
        printf("%-44s %11.2f ms %11.2f ms %7.2fx\n", "  from 2,000 inputs before its end", ms[2], ms[3],
               ms[3] / ms[2]);
    } else {
        printf("  failed\n");
        all_ok = false;
    }
    return all_ok ? 0 : 1;
}
