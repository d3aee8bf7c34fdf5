/* Fuzz target: every protobuf message a worker, the gateway or the
 * orchestrator decodes from the bus (anyone who can publish on a subject
 * can send these bytes). The first byte picks the message type; the rest is
 * the payload. Each decoded message is walked the way its readers walk it:
 * every CellId through ts_proto_cell_get, a Handover's snapshot decoded as
 * the Checkpoint it carries, every repeated field read. */
#include "fuzz.h"
#include "tessera/cell.h"
#include "tessera/proto.h"

static void cell_of(const Tessera__V1__CellId *pb)
{
    ts_cell_t c;
    if (pb != NULL) (void)ts_proto_cell_get(pb, &c);
}

static void entities(Tessera__V1__EntityState *const *e, size_t n)
{
    volatile double sink = 0;
    for (size_t i = 0; i < n; i++)
        sink += e[i]->x + e[i]->y + (double)e[i]->id;
    (void)sink;
}

static void checkpoint(const uint8_t *p, size_t len)
{
    Tessera__V1__Checkpoint *cp = tessera__v1__checkpoint__unpack(NULL, len, p);
    if (cp == NULL) return;
    cell_of(cp->cell);
    entities(cp->entities, cp->n_entities);
    for (size_t i = 0; i < cp->n_departed; i++)
        cell_of(cp->departed[i]->to);
    for (size_t i = 0; i < cp->n_outbox; i++) {
        cell_of(cp->outbox[i]->dest);
        entities(cp->outbox[i]->transfers, cp->outbox[i]->n_transfers);
    }
    for (size_t i = 0; i < cp->n_left; i++)
        cell_of(cp->left[i]->to);
    tessera__v1__checkpoint__free_unpacked(cp, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t which = fuzz_byte(&data, &size);
    switch (which % 8) {
    case 0: { /* worker: the input stream */
        Tessera__V1__InputBatch *b = tessera__v1__input_batch__unpack(NULL, size, data);
        if (b == NULL) break;
        cell_of(b->cell);
        for (size_t i = 0; i < b->n_inputs; i++) {
            const Tessera__V1__Input *in = b->inputs[i];
            if (in->kind_case == TESSERA__V1__INPUT__KIND_JOIN && in->join->name == NULL) __builtin_trap();
        }
        for (size_t i = 0; i < b->n_transfers; i++) {
            cell_of(b->transfers[i]->from);
            if (b->transfers[i]->entity != NULL) entities(&b->transfers[i]->entity, 1);
        }
        for (size_t i = 0; i < b->n_departures; i++)
            cell_of(b->departures[i]->to);
        tessera__v1__input_batch__free_unpacked(b, NULL);
        break;
    }
    case 1: { /* gateway and sim: cell state */
        Tessera__V1__StateDelta *d = tessera__v1__state_delta__unpack(NULL, size, data);
        if (d == NULL) break;
        cell_of(d->cell);
        entities(d->entities, d->n_entities);
        for (size_t i = 0; i < d->n_left; i++)
            cell_of(d->left[i]->to);
        tessera__v1__state_delta__free_unpacked(d, NULL);
        break;
    }
    case 2: /* worker: a checkpoint it recovers from */
        checkpoint(data, size);
        break;
    case 3: { /* orchestrator, tessera-ctl: heartbeats */
        Tessera__V1__Heartbeat *hb = tessera__v1__heartbeat__unpack(NULL, size, data);
        if (hb == NULL) break;
        for (size_t i = 0; i < hb->n_cells; i++)
            cell_of(hb->cells[i]->cell);
        tessera__v1__heartbeat__free_unpacked(hb, NULL);
        break;
    }
    case 4: { /* worker and gateway: registry broadcasts */
        Tessera__V1__RegistryChange *rc = tessera__v1__registry_change__unpack(NULL, size, data);
        if (rc == NULL) break;
        cell_of(rc->cell);
        tessera__v1__registry_change__free_unpacked(rc, NULL);
        break;
    }
    case 5: { /* worker and orchestrator: handover messages */
        Tessera__V1__Handover *h = tessera__v1__handover__unpack(NULL, size, data);
        if (h == NULL) break;
        cell_of(h->cell);
        if (h->snapshot.len > 0) checkpoint(h->snapshot.data, h->snapshot.len);
        tessera__v1__handover__free_unpacked(h, NULL);
        break;
    }
    case 6: { /* worker: a neighbour's border entities */
        Tessera__V1__GhostDelta *g = tessera__v1__ghost_delta__unpack(NULL, size, data);
        if (g == NULL) break;
        cell_of(g->cell);
        entities(g->entities, g->n_entities);
        volatile uint64_t sink = 0;
        for (size_t i = 0; i < g->n_removed; i++)
            sink += g->removed[i];
        (void)sink;
        tessera__v1__ghost_delta__free_unpacked(g, NULL);
        break;
    }
    default: { /* worker: gateway liveness */
        Tessera__V1__GatewayAlive *a = tessera__v1__gateway_alive__unpack(NULL, size, data);
        if (a != NULL) tessera__v1__gateway_alive__free_unpacked(a, NULL);
        break;
    }
    }
    return 0;
}
