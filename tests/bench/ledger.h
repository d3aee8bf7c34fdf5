/* Input ledger: an independent witness of "no acknowledged input lost".
 * It sees every Join and Move published on a world's cell input subjects
 * (a core subscription, so a forwarded copy of an input counts once) and
 * the newest state every entity showed on the state subjects. When the
 * sim or a player comes up short, ts_ledger_report names the entities,
 * how many inputs each is short, the client seqs no state acknowledged
 * (candidates: see ledger.c) and where and when those were published.
 * Diagnostics only: it decides nothing. */
#ifndef TS_LEDGER_H
#define TS_LEDGER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/bus.h"
#include "tessera/status.h"

typedef struct ts_ledger ts_ledger_t;

/* Subscribes to cell.<world>.*.*.*.*.input and .state on bus (borrowed;
 * destroy the ledger before the bus). */
ts_status_t ts_ledger_create(ts_ledger_t **out, ts_bus_t *bus, uint32_t world);
void ts_ledger_destroy(ts_ledger_t *l);

/* Writes to out up to max entities whose newest state shows fewer inputs
 * than were published for them, with the missing seqs timed relative to
 * event_us (a ts_mono_us() value, named `event`). Returns how many
 * entities are short. */
size_t ts_ledger_report(ts_ledger_t *l, FILE *out, const char *event, uint64_t event_us, int max);

#endif
