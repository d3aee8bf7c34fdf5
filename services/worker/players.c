/* Players' entities on the worker: an entity whose connection closed (a
 * Detach from its gateway) is despawned gateway.resume_s after the close
 * unless an Attach (a resume) comes first; the entities of a gateway process
 * that stopped saying it is alive (tessera.gw.<id>.alive, GatewayAlive) are
 * detached as of its last sign of life and go the same way.
 *
 * Threads: the alive subscription runs on a nats.c thread and only updates
 * the gateway table under `mu`. Everything else runs on the tick thread, at
 * most every PLAYERS_PERIOD_US: the gateways (a few) and the detached
 * entities (they grow with disconnections, not with the world). A gateway
 * that dies costs one pass over this worker's entities, once; a cell this
 * worker adopts costs one pass over its entities, once.
 *
 * A gateway instance is known by (gateway id, instance): a restarted
 * gateway is a new instance, and the old one's entities are detached at
 * once. An entity naming an instance never heard of gets
 * PLAYERS_GW_DEAD_US to be vouched for by an alive message.
 *
 * Logins (one entity per player across gateways): a gateway where a player
 * logs in publishes a claim for the player's entity on
 * tessera.player.<world>.claim (one text line, see services/gateway/login.c);
 * the worker holding the entity answers where it is, the highest input seq
 * applied to it and whether it is detached, and the gateway takes it over
 * there. Claims are queued by the subscription (PLAYERS_CLAIMS_MAX, more
 * are dropped: the login then waits for its gateway's answer or spawns)
 * and answered on the tick thread at the next tick, one map lookup per
 * bound cell each.
 *
 * Who may act (ts_players_screen): an input subject ends in its publisher's
 * origin token, and nats-server lets each gateway's user publish only its
 * own (g<id>), the sim's only s, and only workers w. Before a batch is
 * applied, the items a gateway (or the sim, as gateway 0) may not send are
 * dropped and counted (tessera_worker_inputs_refused_total{reason}):
 * transfers, departures, requests and counter moves (workers' only); a Move, Leave,
 * Command, Detach or Join for an entity of this cell whose gateway is
 * another; a Join of a new entity naming another gateway, or whose id does
 * not carry the gateway's id in its top 16 bits (login entities, bit 63 set,
 * are derived from the player and may be spawned by any gateway). An Attach
 * from another gateway than the entity's takes effect only once the entity
 * has no connection: at once if it is detached, else it waits (at most
 * PLAYERS_ATTACH_WAIT_US, PLAYERS_ATTACHES_MAX of them) for the entity's
 * gateway to let go (a Detach, as a login elsewhere or a resume's claim
 * makes it do) or to be declared gone; what the new gateway sends for the
 * entity meanwhile waits with it (PLAYERS_ATTACH_HELD_MAX; the player's
 * first inputs after a resume or a login elsewhere) and is applied right
 * after it, in order. When the worker has gateway.resume_secret, such an
 * Attach must also carry a valid, unexpired resume token for the entity
 * (tessera/resume.h; the player's own, or one its gateway signed for a
 * login), else it is refused (token): a gateway's bus credentials alone do
 * not take over another gateway's player. Without a secret (dev mode) it
 * is not checked. One map lookup per input, the one
 * the zone makes anyway. Inputs for an entity that is not in the cell are
 * left to the zone: dropped, or forwarded by a departed record under the
 * origin they came with (zone.c keeps it per outbox entry), so the cell the
 * entity is in checks them. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "tessera/log.h"
#include "tessera/resume.h"
#include "tessera/subject.h"
#include "tessera/util.h"
#include "worker_internal.h"

#define PLAYERS_PERIOD_US 250000ULL
/* A gateway instance not heard of for this long is gone. */
#define PLAYERS_GW_DEAD_US 3000000ULL
/* A dead instance is remembered this long (entities naming it that show up
 * later, from a checkpoint, are detached at once). */
#define PLAYERS_GW_FORGET_US 600000000ULL
#define PLAYERS_GW_MAX 1024
#define PLAYERS_CLAIMS_MAX 1024
#define PLAYERS_REPLY_MAX 160
/* Attaches waiting for the entity's gateway to let go, and per Attach the
 * inputs its gateway sent for the entity meanwhile (applied after it). */
#define PLAYERS_ATTACHES_MAX 256
#define PLAYERS_ATTACH_HELD_MAX 64
#define PLAYERS_ATTACH_WAIT_US 10000000ULL
/* At most one log line per reason this often. */
#define PLAYERS_REFUSED_LOG_US 5000000ULL

typedef struct {
    uint64_t entity;
    uint64_t conn;
    char reply[PLAYERS_REPLY_MAX];
} claim_t;

typedef struct {
    uint32_t id;
    uint64_t instance;
    uint64_t last_mono_us;
    uint64_t last_wall_us;
    bool heard;             /* an alive message came (not only an entity naming it) */
    bool replaced;          /* a newer instance of the same id spoke */
    bool dead;              /* tick thread: its entities were detached */
    bool dup_warned;        /* a replaced instance spoke again: two processes share an id */
    bool revived;           /* it spoke again after it was declared dead */
    uint64_t dead_since_us; /* the detach time its entities got */
} gw_rec_t;

typedef struct {
    ts_cell_t cell;
    uint64_t at_us;
} detached_t;

/* An Attach from another gateway than the entity's, applied once the
 * entity has no connection. */
typedef struct {
    ts_cell_t cell;
    uint64_t entity;
    uint32_t gateway;
    uint64_t gateway_instance;
    uint64_t session;
    uint64_t until_us; /* ts_mono_us */
    ts_input_t *held;  /* PLAYERS_ATTACH_HELD_MAX, allocated with the first */
    size_t nheld;
} attach_wait_t;

struct ts_players {
    ts_worker_t *w;
    ts_bus_sub_t *sub;
    pthread_mutex_t mu;
    gw_rec_t gws[PLAYERS_GW_MAX];
    size_t ngws;
    ts_map_t detached; /* entity id -> detached_t* (tick thread) */
    ts_bus_sub_t *claim_sub;
    claim_t claims[PLAYERS_CLAIMS_MAX]; /* under mu */
    size_t nclaims;
    uint64_t claims_dropped, claims_answered;
    uint64_t grace_us;
    uint64_t next_run_us;
    uint64_t despawned;
    bool bus_was_down; /* tick thread: this worker's own connection was down at the last run */
    /* tick thread */
    attach_wait_t attaches[PLAYERS_ATTACHES_MAX];
    size_t nattaches;
    uint64_t refused[TS_REFUSED_N]; /* since the last log line */
    uint64_t refused_logged_us[TS_REFUSED_N];
    /* gateway.resume_secret: another gateway's Attach must carry a token
     * under it (has_resume_key false: not checked, dev mode) */
    ts_resume_key_t resume_key;
    bool has_resume_key;
    const char *token_why; /* the latest token refusal's cause, for its log line */
};

/* Under mu. */
static gw_rec_t *find_gw(ts_players_t *p, uint32_t id, uint64_t instance)
{
    for (size_t i = 0; i < p->ngws; i++)
        if (p->gws[i].id == id && p->gws[i].instance == instance) return &p->gws[i];
    return NULL;
}

/* Under mu: a record for (id, instance), added as not heard of yet. */
static gw_rec_t *get_gw(ts_players_t *p, uint32_t id, uint64_t instance)
{
    gw_rec_t *g = find_gw(p, id, instance);
    if (g || p->ngws == PLAYERS_GW_MAX) return g;
    g = &p->gws[p->ngws++];
    memset(g, 0, sizeof(*g));
    g->id = id;
    g->instance = instance;
    g->last_mono_us = ts_mono_us();
    g->last_wall_us = ts_now_us();
    return g;
}

static void on_alive(void *ud, const ts_bus_msg_t *m)
{
    ts_players_t *p = ud;
    Tessera__V1__GatewayAlive *a =
        tessera__v1__gateway_alive__unpack(NULL, ts_bus_msg_len(m), ts_bus_msg_data(m));
    if (!a) return;
    if (a->gateway != 0) {
        bool dup = false;
        pthread_mutex_lock(&p->mu);
        gw_rec_t *g = get_gw(p, a->gateway, a->instance);
        if (g && g->replaced && g->heard && !g->dup_warned) dup = g->dup_warned = true;
        if (g && g->dead && !g->replaced) g->revived = true; /* it was only late */
        if (g && (!g->dead || g->revived)) {
            if (!g->heard)
                for (size_t i = 0; i < p->ngws; i++)
                    if (p->gws[i].id == a->gateway && p->gws[i].instance != a->instance)
                        p->gws[i].replaced = true;
            g->heard = true;
            g->last_mono_us = ts_mono_us();
            g->last_wall_us = ts_now_us();
        }
        pthread_mutex_unlock(&p->mu);
        if (dup)
            ts_error(
                "two gateway processes run with gateway.id %u (instances %016" PRIx64
                " and another): each one's players look disconnected to the other's; give every gateway its "
                "own id",
                a->gateway, a->instance);
    }
    tessera__v1__gateway_alive__free_unpacked(a, NULL);
}

/* A login's claim (nats.c thread): queued for the tick thread. */
static void on_claim(void *ud, const ts_bus_msg_t *m)
{
    ts_players_t *p = ud;
    char line[PLAYERS_REPLY_MAX + 128];
    size_t len = ts_bus_msg_len(m);
    if (len == 0 || len >= sizeof line) return;
    memcpy(line, ts_bus_msg_data(m), len);
    line[len] = '\0';
    claim_t c;
    unsigned long long gateway, instance, claim_us;
    if (sscanf(line, "claim %" SCNu64 " %llu %llu %" SCNu64 " %llu %159s", &c.entity, &gateway, &instance,
               &c.conn, &claim_us, c.reply) != 6)
        return;
    pthread_mutex_lock(&p->mu);
    if (p->nclaims < PLAYERS_CLAIMS_MAX)
        p->claims[p->nclaims++] = c;
    else
        p->claims_dropped++;
    pthread_mutex_unlock(&p->mu);
}

/* Tick thread: answers the claims for entities bound here. */
static void answer_claims(ts_players_t *p)
{
    ts_worker_t *w = p->w;
    claim_t batch[64];
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&p->mu);
        if (p->nclaims > 0) {
            n = p->nclaims < 64 ? p->nclaims : 64;
            p->nclaims -= n;
            memcpy(batch, p->claims + p->nclaims, n * sizeof batch[0]);
        }
        pthread_mutex_unlock(&p->mu);
        if (n == 0) return;
        for (size_t i = 0; i < n; i++) {
            for (size_t b = 0; b < w->nbind; b++) {
                ts_zone_t *z = w->bindings[b]->zone;
                ts_entity_t *e = ts_map_get(&z->entities, batch[i].entity);
                if (e == NULL) continue;
                char msg[PLAYERS_REPLY_MAX + 64];
                int len = snprintf(msg, sizeof msg, "found %" PRIu64 " %" PRIu64 " %s %" PRIu64 " %s", e->id,
                                   batch[i].conn, z->key, e->last_input_seq,
                                   e->detached_us != 0 ? "detached" : "worker");
                /* through the publisher thread: the tick never makes a bus call */
                uint8_t *buf = len > 0 ? malloc((size_t)len) : NULL;
                if (buf) memcpy(buf, msg, (size_t)len);
                if (!buf || !ts_publisher_push(w, batch[i].reply, NULL, buf, (size_t)len, false, false))
                    ts_warn("entity %" PRIu64 ": login answer not published (publish queue full)", e->id);
                p->claims_answered++;
                break;
            }
        }
    }
}

static void note_detached(ts_players_t *p, ts_zone_t *z, ts_entity_t *e)
{
    detached_t *d = ts_map_get(&p->detached, e->id);
    if (!d) {
        d = malloc(sizeof(*d));
        if (!d || ts_map_put(&p->detached, e->id, d) != TS_OK) {
            free(d);
            ts_error("entity %" PRIu64 ": out of memory noting its detachment", e->id);
            return;
        }
    }
    d->cell = z->cell;
    d->at_us = e->detached_us;
}

/* Zone hook (tick thread): a player's entity arrived, joined, detached or
 * was attached again. */
static void on_player(void *ud, void *zone, ts_entity_t *e)
{
    ts_players_t *p = ud;
    ts_zone_t *z = zone;
    if (e->detached_us == 0) {
        free(ts_map_del(&p->detached, e->id));
        pthread_mutex_lock(&p->mu);
        gw_rec_t *g = get_gw(p, e->gateway, e->gateway_instance);
        bool gone = g && g->dead;
        uint64_t since = g ? g->last_wall_us : 0;
        pthread_mutex_unlock(&p->mu);
        if (!gone) return;
        ts_zone_detach(z, e, since);
        ts_info("entity %" PRIu64 ": its gateway %u is gone; despawned after the grace", e->id, e->gateway);
    }
    note_detached(p, z, e);
}

ts_status_t ts_players_start(ts_worker_t *w)
{
    ts_players_t *p = calloc(1, sizeof(*p));
    if (!p) return TS_ERR_NOMEM;
    p->w = w;
    pthread_mutex_init(&p->mu, NULL);
    ts_map_init(&p->detached);
    p->grace_us = (uint64_t)w->cfg->gateway_resume_s * 1000000ULL;
    w->players = p;
    const char *secret = w->cfg->gateway_resume_secret;
    if (secret != NULL && secret[0] != '\0') {
        if (ts_resume_key_init(&p->resume_key, secret) != TS_OK) return TS_ERR_IO;
        p->has_resume_key = true;
    } else {
        ts_warn("gateway.resume_secret is not set: any gateway may take over another gateway's detached "
                "player with an Attach (resume tokens are not checked)");
    }
    ts_status_t st = ts_bus_subscribe(w->bus, TS_GW_ALIVE_WILDCARD, on_alive, p, &p->sub);
    if (st != TS_OK) {
        ts_error("cannot subscribe to %s: %s", TS_GW_ALIVE_WILDCARD, ts_status_str(st));
        return st;
    }
    char subject[TS_SUBJECT_MAX];
    snprintf(subject, sizeof subject, "tessera.player.%u.claim", w->world.id);
    st = ts_bus_subscribe(w->bus, subject, on_claim, p, &p->claim_sub);
    if (st != TS_OK) ts_error("cannot subscribe to %s: %s", subject, ts_status_str(st));
    return st;
}

void ts_players_stop(ts_worker_t *w)
{
    ts_players_t *p = w->players;
    if (!p) return;
    ts_bus_sub_destroy(p->sub); /* no callback runs after this */
    ts_bus_sub_destroy(p->claim_sub);
    if (p->claims_dropped > 0)
        ts_warn("%llu login claims dropped (queue full)", (unsigned long long)p->claims_dropped);
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&p->detached, &it, &k, &v);)
        free(v);
    ts_map_free(&p->detached);
    for (size_t i = 0; i < p->nattaches; i++)
        free(p->attaches[i].held);
    ts_resume_key_clear(&p->resume_key);
    pthread_mutex_destroy(&p->mu);
    free(p);
    w->players = NULL;
}

static bool binding_settled(const ts_binding_t *b)
{
    return b->state == TS_BIND_ACTIVE && !b->catching_up;
}

/* ---- who may act --------------------------------------------------------- */

static void refuse(ts_players_t *p, const ts_zone_t *z, ts_refused_reason_t why, const char *subject,
                   uint64_t entity, uint64_t n)
{
    ts_worker_metrics_refused(why, n);
    p->refused[why] += n;
    uint64_t now = ts_mono_us();
    if (p->refused_logged_us[why] != 0 && now - p->refused_logged_us[why] < PLAYERS_REFUSED_LOG_US) return;
    p->refused_logged_us[why] = now;
    ts_warn("cell %s: refused %" PRIu64
            " input item(s) (%s) since the last report; latest on %s, entity %" PRIu64 "%s%s",
            z ? z->key : "?", p->refused[why], ts_worker_refused_str(why), subject ? subject : "?", entity,
            why == TS_REFUSED_TOKEN && p->token_why ? ": " : "",
            why == TS_REFUSED_TOKEN && p->token_why ? p->token_why : "");
    p->refused[why] = 0;
}

/* An Attach from another gateway than the entity's: waits for the entity to
 * be let go. False: no room. */
static bool attach_wait(ts_players_t *p, const ts_zone_t *z, const Tessera__V1__Input *in)
{
    if (p->nattaches == PLAYERS_ATTACHES_MAX) return false;
    attach_wait_t *a = &p->attaches[p->nattaches++];
    a->cell = z->cell;
    a->entity = in->entity;
    a->gateway = in->attach->gateway;
    a->gateway_instance = in->attach->gateway_instance;
    a->session = in->attach->session;
    a->until_us = ts_mono_us() + PLAYERS_ATTACH_WAIT_US;
    a->held = NULL;
    a->nheld = 0;
    return true;
}

/* An input from gateway gw for an entity another gateway holds: kept with
 * gw's Attach of that entity if one waits (true), else false. Costs a pass
 * over the waiting Attaches (at most PLAYERS_ATTACHES_MAX), on this path
 * only. */
static bool attach_hold(ts_players_t *p, const ts_zone_t *z, uint32_t gw, const Tessera__V1__Input *in)
{
    for (size_t i = 0; i < p->nattaches; i++) {
        attach_wait_t *a = &p->attaches[i];
        if (a->entity != in->entity || a->gateway != gw || !ts_cell_eq(&a->cell, &z->cell)) continue;
        if (!a->held && !(a->held = malloc(PLAYERS_ATTACH_HELD_MAX * sizeof(*a->held)))) return false;
        if (a->nheld == PLAYERS_ATTACH_HELD_MAX) return false;
        ts_zone_input_from_pb(in, &a->held[a->nheld++]);
        return true;
    }
    return false;
}

/* Whether an Attach from another gateway than the entity's carries a valid
 * resume token for its entity (always, without a key). */
static bool attach_token_ok(ts_players_t *p, const Tessera__V1__Input *in)
{
    if (!p->has_resume_key) return true;
    const Tessera__V1__AttachInput *a = in->attach;
    ts_resume_token_t t;
    memset(&t, 0, sizeof t);
    if (a->resume_mac.len != TS_RESUME_MAC_LEN || !a->resume_cell) {
        p->token_why = "no resume token";
        return false;
    }
    if (a->resume_player.len > TS_RESUME_PLAYER_MAX ||
        (a->resume_player.len && memchr(a->resume_player.data, '\0', a->resume_player.len)) ||
        ts_proto_cell_get(a->resume_cell, &t.cell) != TS_OK) {
        p->token_why = "malformed resume token";
        return false;
    }
    t.entity = in->entity;
    t.exp_s = a->resume_exp;
    if (a->resume_player.len) memcpy(t.player, a->resume_player.data, a->resume_player.len);
    memcpy(t.mac, a->resume_mac.data, TS_RESUME_MAC_LEN);
    ts_status_t st = ts_resume_token_verify(&p->resume_key, &t, ts_now_us() / 1000000);
    if (st == TS_OK) return true;
    p->token_why = st == TS_ERR_TIMEOUT ? "resume token expired" : "resume token not valid for this entity";
    return false;
}

/* -1: in may be applied; 0: it waits (an Attach); else 1 + the reason. */
static int screen_one(ts_players_t *p, const ts_zone_t *z, ts_origin_t origin, uint32_t gw,
                      const Tessera__V1__Input *in)
{
    const ts_entity_t *e = ts_map_get(&z->entities, in->entity);
    switch (in->kind_case) {
    case TESSERA__V1__INPUT__KIND_REQUEST:
    case TESSERA__V1__INPUT__KIND_COUNTER_MOVE:
    case TESSERA__V1__INPUT__KIND_COUNTERS:
        return 1 + TS_REFUSED_KIND;
    case TESSERA__V1__INPUT__KIND_JOIN:
        if (e) return e->gateway == gw ? -1 : 1 + TS_REFUSED_GATEWAY;
        if (!in->join || in->join->gateway != gw) return 1 + TS_REFUSED_ENTITY;
        /* the sim's entity ids carry its own tag; a login's is derived from the player */
        if (origin != TS_ORIGIN_SIM && !(in->entity >> 63) && (in->entity >> 48) != gw)
            return 1 + TS_REFUSED_ENTITY;
        return -1;
    case TESSERA__V1__INPUT__KIND_ATTACH:
        if (!in->attach || in->attach->gateway != gw) return 1 + TS_REFUSED_ENTITY;
        if (!e || e->gateway == gw) return -1; /* not here (forwarded, checked there), or its own */
        if (!attach_token_ok(p, in)) return 1 + TS_REFUSED_TOKEN;
        if (e->detached_us != 0) return -1;
        return attach_wait(p, z, in) ? 0 : 1 + TS_REFUSED_ATTACH;
    default:
        if (!e || e->gateway == gw) return -1;
        return attach_hold(p, z, gw, in) ? 0 : 1 + TS_REFUSED_GATEWAY;
    }
}

void ts_players_screen(ts_worker_t *w, ts_zone_t *z, const char *subject, Tessera__V1__InputBatch *ib)
{
    ts_players_t *p = w->players;
    ts_origin_t origin;
    z->cur_origin = TS_ORIGIN_WORKER;
    if (subject == NULL || ts_subject_input_origin(subject, &origin) != TS_OK) {
        size_t n = ib->n_inputs + ib->n_transfers + ib->n_departures;
        if (p && n) refuse(p, z, TS_REFUSED_ORIGIN, subject, 0, n);
        ib->n_inputs = ib->n_transfers = ib->n_departures = 0;
        return;
    }
    z->cur_origin = origin; /* what the inputs it forwards keep */
    if (origin == TS_ORIGIN_WORKER || !p) return;
    uint32_t gw = origin == TS_ORIGIN_SIM ? 0 : (uint32_t)origin;
    if (ib->n_transfers + ib->n_departures > 0) {
        refuse(p, z, TS_REFUSED_KIND, subject, 0, ib->n_transfers + ib->n_departures);
        ib->n_transfers = ib->n_departures = 0;
    }
    size_t keep = 0;
    for (size_t i = 0; i < ib->n_inputs; i++) {
        Tessera__V1__Input *in = ib->inputs[i];
        int verdict = screen_one(p, z, origin, gw, in);
        if (verdict < 0)
            ib->inputs[keep++] = in;
        else if (verdict > 0)
            refuse(p, z, (ts_refused_reason_t)(verdict - 1), subject, in->entity, 1);
    }
    ib->n_inputs = keep;
}

/* Tick thread: the waiting Attaches whose entity was let go. */
static void attach_waiting(ts_players_t *p)
{
    ts_worker_t *w = p->w;
    uint64_t now = ts_mono_us();
    for (size_t i = 0; i < p->nattaches;) {
        attach_wait_t *a = &p->attaches[i];
        ts_binding_t *b = ts_cellmap_get(&w->by_cell, &a->cell);
        ts_entity_t *e = b ? ts_map_get(&b->zone->entities, a->entity) : NULL;
        bool let_go = e && (e->gateway == a->gateway || e->detached_us != 0);
        if (b && !binding_settled(b)) { /* frozen for a handover or replaying: later, never into it */
            if (now < a->until_us) {
                i++;
                continue;
            }
            let_go = false;
        }
        if (let_go) {
            ts_input_t in = {.entity = a->entity,
                             .kind = TS_INPUT_ATTACH,
                             .gateway = a->gateway,
                             .gateway_instance = a->gateway_instance,
                             .session = a->session};
            ts_origin_t was = b->zone->cur_origin;
            b->zone->cur_origin = (ts_origin_t)a->gateway; /* what a forward of them keeps */
            ts_zone_apply_input(b->zone, &in, w->tick);
            for (size_t k = 0; k < a->nheld; k++)
                ts_zone_apply_input(b->zone, &a->held[k], w->tick);
            b->zone->cur_origin = was;
        } else if (e && now < a->until_us) {
            i++;
            continue;
        } else {
            /* timed out, or the entity left the cell or the game meanwhile */
            refuse(p, b ? b->zone : NULL, TS_REFUSED_ATTACH, NULL, a->entity, 1 + a->nheld);
        }
        free(a->held);
        p->attaches[i] = p->attaches[--p->nattaches];
    }
}

/* A gateway instance that was declared dead spoke again (its messages were
 * late, not lost): the entities its death detached are attached again. */
static void revive_gateway(ts_players_t *p, uint32_t id, uint64_t instance, uint64_t since_us)
{
    ts_worker_t *w = p->w;
    size_t n = 0;
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i]->zone;
        uint64_t k;
        void *v;
        for (size_t it = 0; ts_map_next(&z->entities, &it, &k, &v);) {
            ts_entity_t *e = v;
            if (e->gateway != id || e->gateway_instance != instance || e->detached_us != since_us) continue;
            e->detached_us = 0;
            e->dirty = true; /* as the zone's own changes do: in the next delta and checkpoint */
            e->mod = ++z->mod_counter;
            free(ts_map_del(&p->detached, e->id));
            n++;
        }
    }
    ts_warn("gateway %u (instance %016" PRIx64 ") speaks again after being declared gone: %zu entities kept",
            id, instance, n);
}

/* A gateway instance is gone: its connected entities here are detached as
 * of its last sign of life. */
static void detach_gateway(ts_players_t *p, uint32_t id, uint64_t instance, uint64_t since_us)
{
    ts_worker_t *w = p->w;
    size_t n = 0;
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i]->zone;
        if (!z->players_scanned) continue; /* the adoption scan will see them */
        uint64_t k;
        void *v;
        for (size_t it = 0; ts_map_next(&z->entities, &it, &k, &v);) {
            ts_entity_t *e = v;
            if (e->gateway != id || e->gateway_instance != instance || e->detached_us != 0) continue;
            ts_zone_detach(z, e, since_us);
            note_detached(p, z, e);
            n++;
        }
    }
    ts_info("gateway %u (instance %016" PRIx64 ") is gone: %zu of its players' entities here stop and are "
            "despawned %" PRIu64 " s after its last sign of life",
            id, instance, n, (uint64_t)(p->grace_us / 1000000U));
}

void ts_players_tick(ts_worker_t *w)
{
    ts_players_t *p = w->players;
    if (!p) return;
    answer_claims(p); /* every tick: a login waits for it */
    if (p->nattaches) attach_waiting(p);
    uint64_t now = ts_mono_us();
    if (now < p->next_run_us) return;
    p->next_run_us = now + PLAYERS_PERIOD_US;

    /* cells adopted since the last run: hook them up, note their players */
    for (size_t i = 0; i < w->nbind; i++) {
        ts_zone_t *z = w->bindings[i]->zone;
        if (z->players_scanned) continue;
        z->players_scanned = true;
        z->player_hook = on_player;
        z->player_ud = p;
        uint64_t k;
        void *v;
        for (size_t it = 0; ts_map_next(&z->entities, &it, &k, &v);) {
            ts_entity_t *e = v;
            if (e->gateway != 0) on_player(p, z, e);
        }
    }

    /* While this worker's own connection is down it hears no gateway: that
     * silence is its own, not theirs. Every gateway not taken for gone
     * meanwhile gets the whole liveness wait from the reconnect to be heard
     * again; one that is gone is then detached as of its last sign of life. */
    bool bus_up = ts_bus_connected(w->bus);
    if (!bus_up || p->bus_was_down) {
        pthread_mutex_lock(&p->mu);
        for (size_t i = 0; i < p->ngws; i++)
            if (!p->gws[i].dead && p->gws[i].last_mono_us < now) p->gws[i].last_mono_us = now;
        pthread_mutex_unlock(&p->mu);
        p->bus_was_down = !bus_up;
    }

    /* gateway instances that went quiet or were replaced */
    for (;;) {
        uint32_t id = 0;
        uint64_t instance = 0, since = 0;
        bool found = false, revived = false;
        pthread_mutex_lock(&p->mu);
        for (size_t i = 0; i < p->ngws && !found; i++) {
            gw_rec_t *g = &p->gws[i];
            if (g->revived) {
                g->revived = g->dead = false;
                id = g->id;
                instance = g->instance;
                since = g->dead_since_us;
                found = revived = true;
                break;
            }
            /* last_mono_us may be later than now: a record made after now was
             * read (an entity naming it, above, or an alive message) */
            uint64_t quiet_us = now > g->last_mono_us ? now - g->last_mono_us : 0;
            if (g->dead) {
                if (quiet_us > PLAYERS_GW_FORGET_US) p->gws[i--] = p->gws[--p->ngws];
                continue;
            }
            if (!g->replaced && quiet_us < PLAYERS_GW_DEAD_US) continue;
            g->dead = true;
            id = g->id;
            instance = g->instance;
            since = g->dead_since_us = g->last_wall_us;
            found = true;
        }
        pthread_mutex_unlock(&p->mu);
        if (!found) break;
        if (revived)
            revive_gateway(p, id, instance, since);
        else
            detach_gateway(p, id, instance, since);
    }

    /* detached entities whose grace is over */
    uint64_t wall = ts_now_us();
    uint64_t k;
    void *v;
    for (size_t it = 0; ts_map_next(&p->detached, &it, &k, &v);) {
        detached_t *d = v;
        if (wall < d->at_us + p->grace_us) continue;
        ts_binding_t *b = ts_cellmap_get(&w->by_cell, &d->cell);
        if (b && !binding_settled(b)) continue; /* frozen for a handover: later */
        ts_entity_t *e = b ? ts_map_get(&b->zone->entities, k) : NULL;
        if (e && e->departing) continue; /* leaving: despawned here or where it arrives */
        if (e && e->detached_us != 0) {
            ts_info("entity %" PRIu64 " (%s): not resumed within %" PRIu64 " s; despawned", k, e->name,
                    (uint64_t)(p->grace_us / 1000000U));
            ts_zone_despawn(b->zone, e);
            p->despawned++;
        }
        /* gone, moved on (its new cell notes it) or despawned */
        free(ts_map_del(&p->detached, k));
    }
}
