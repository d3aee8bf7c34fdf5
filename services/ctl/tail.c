/* tessera-ctl tail: live traffic on a subject (NATS wildcards allowed),
 * one decoded line per message — what `nats sub` with `--translate` shows,
 * with nothing but this binary. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/util.h"

typedef struct {
    pthread_mutex_t mu;
    bool json;
    long count; /* 0: until signalled */
    long seen;
} tail_t;

static void on_msg(void *ud, const ts_bus_msg_t *m)
{
    tail_t *t = ud;
    pthread_mutex_lock(&t->mu);
    if (t->count > 0 && t->seen >= t->count) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    const char *subject = ts_bus_msg_subject(m);
    char err[256] = "";
    if (ts_ctl_decode_payload(subject, ts_bus_msg_data(m), ts_bus_msg_len(m), t->json, stdout, err,
                              sizeof err) != TS_OK) {
        if (t->json)
            printf("{\"subject\":\"%s\",\"bytes\":%zu,\"error\":\"undecodable\"}\n", subject,
                   ts_bus_msg_len(m));
        else
            printf("%s %zu bytes, not decoded: %s\n", subject, ts_bus_msg_len(m), err);
    }
    fflush(stdout);
    t->seen++;
    pthread_mutex_unlock(&t->mu);
}

int ts_ctl_tail(const ts_config_t *cfg, const char *subject, bool json, long count)
{
    ts_bus_t *bus = NULL;
    if (ts_ctl_connect_bus(cfg, &bus) != TS_OK) return 1;
    tail_t t = {.json = json, .count = count};
    pthread_mutex_init(&t.mu, NULL);
    ts_bus_sub_t *sub = NULL;
    ts_status_t st = ts_bus_subscribe(bus, subject, on_msg, &t, &sub);
    if (st != TS_OK) {
        fprintf(stderr, "tessera-ctl: cannot subscribe to '%s': %s\n", subject, ts_status_str(st));
    } else {
        for (;;) {
            pthread_mutex_lock(&t.mu);
            bool done = count > 0 && t.seen >= count;
            pthread_mutex_unlock(&t.mu);
            if (done || ts_ctl_stop) break;
            ts_sleep_ms(50);
        }
    }
    ts_bus_sub_destroy(sub);
    ts_bus_destroy(bus);
    pthread_mutex_destroy(&t.mu);
    return st == TS_OK ? 0 : 1;
}
