/* Publishes the sim's inputs: one InputBatch per destination cell (split
 * into chunks of at most TS_SIM_BATCH_MAX inputs) through asynchronous
 * JetStream publishes, and counts what JetStream acknowledged. */
#ifndef TESSERA_SIM_SENDER_H
#define TESSERA_SIM_SENDER_H

#include <stdbool.h>
#include <stdint.h>

#include "players.h"
#include "tessera/bus.h"
#include "tessera/status.h"

#define TS_SIM_BATCH_MAX 1000

typedef struct ts_sender ts_sender_t;

typedef struct {
    uint64_t sent;    /* inputs handed to the bus */
    uint64_t acked;   /* inputs JetStream acknowledged */
    uint64_t failed;  /* inputs whose publish failed (immediately or after retries) */
    uint64_t batches; /* bus messages published */
} ts_sender_stats_t;

/* Installs the bus's ack handler; id_prefix makes message ids unique to this
 * run (copied). */
ts_status_t ts_sender_create(ts_sender_t **out, ts_bus_t *bus, const char *id_prefix);
void ts_sender_destroy(ts_sender_t *s);

/* Groups the inputs by cell (keeping each player's order) and publishes
 * them. Reorders in->v. Returns the first publish error, after trying every
 * batch. */
ts_status_t ts_sender_send(ts_sender_t *s, ts_sim_inputs_t *in);
/* Counters so far. From here on, ts_sender_send no longer changes them if
 * counting is false (the closing Leaves are not counted). */
void ts_sender_stats(ts_sender_t *s, ts_sender_stats_t *out);
void ts_sender_set_counting(ts_sender_t *s, bool counting);

#endif
