/* Split and merge, the orchestrator's side: the registry scripts with
 * everything around them (preconditions on the local copy, the copy itself,
 * one RegistryChange per changed cell, parent first), the automatic planner
 * (splitplan.c) fed from the registry copy and the heartbeats, and moving
 * the forwarder cells of a draining worker.
 *
 * A split or merge is one Lua script in Redis (ts_registry_cell_split /
 * _merge): it happened entirely or not at all, so a leader that dies around
 * it leaves the registry consistent and the next leader carries on from what
 * it reads. Nothing here asks a worker anything: the owner sees the change
 * in the registry and moves its entities at its next tick boundary. The
 * planner runs every EVAL_US on the main loop, from memory only; each
 * decision costs one Redis round trip (or the handovers that gather four
 * children onto one owner before their merge).
 *
 * Invariants: only the leader writes, and only from a fresh copy; a cell
 * with a handover queued or in flight is neither split nor merged; a split
 * or merge that was refused changes nothing and starts the cell's cooldown
 * all the same (a broken cell is not hammered). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orch.h"
#include "splitplan.h"
#include "tessera/log.h"
#include "tessera/util.h"

#define EVAL_US 250000ULL
#define ACTIONS_MAX 64
/* tessera-ctl merge of children on several owners: the orchestrator hands
 * them to one first and answers once merged; at most this many at once, each
 * for at most GATHER_TIMEOUT_US. */
#define GATHERS_MAX 16
#define GATHER_TIMEOUT_US 30000000ULL

typedef struct {
    ts_cell_t parent;
    char *reply; /* the ctl request's reply subject (owned) */
    char to[TS_WORKER_ID_MAX];
    uint64_t deadline_us;
} ts_gather_t;

struct ts_split {
    ts_splitplan_t plan;
    uint64_t next_eval_us;
    ts_gather_t gathers[GATHERS_MAX];
    size_t ngathers;
};

ts_status_t ts_split_create(ts_split_t **out, ts_orch_t *o)
{
    *out = NULL;
    ts_split_t *s = calloc(1, sizeof *s);
    if (!s) return TS_ERR_NOMEM;
    const ts_config_t *c = o->cfg;
    ts_splitplan_cfg_t pc = {
        .max_entities = (uint32_t)c->split_max_entities,
        .max_tick_share = c->split_max_tick_share,
        .windows = (int)c->split_windows,
        .cooldown_us = (uint64_t)c->split_cooldown_s * 1000000ULL,
        .merge_max_entities = (uint32_t)c->merge_max_entities,
        .merge_windows = (int)c->merge_windows,
        .max_depth = (int)c->world_max_depth,
    };
    ts_splitplan_init(&s->plan, &pc);
    if (c->split_auto && s->plan.cfg.merge_max_entities != (uint32_t)c->merge_max_entities)
        ts_warn("merge.max_entities %lld is not under half of split.max_entities %lld: using %u (hysteresis)",
                (long long)c->merge_max_entities, (long long)c->split_max_entities,
                s->plan.cfg.merge_max_entities);
    *out = s;
    return TS_OK;
}

void ts_split_destroy(ts_split_t *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->ngathers; i++)
        free(s->gathers[i].reply);
    ts_splitplan_free(&s->plan);
    free(s);
}

static void reply_text(ts_orch_t *o, const char *subject, const char *text)
{
    if (!subject) return;
    ts_bus_hdr_t hdr = {.type = "text/plain"};
    ts_status_t st = ts_bus_publish(o->bus, subject, &hdr, text, strlen(text));
    if (st != TS_OK) ts_warn("cannot send ctl reply to %s: %s", subject, ts_status_str(st));
}

static ts_status_t fail(ts_orch_t *o, const char *reply, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static ts_status_t fail(ts_orch_t *o, const char *reply, const char *fmt, ...)
{
    char text[512];
    int n = snprintf(text, sizeof text, "error: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof text - (size_t)n, fmt, ap);
    va_end(ap);
    ts_debug("split/merge refused: %s", text + n);
    reply_text(o, reply, text);
    return TS_ERR_INVALID;
}

/* The preconditions every split or merge shares; NULL (and the reply sent)
 * when one fails, else the parent's entry in the copy. */
static const ts_cell_entry_t *check_common(ts_orch_t *o, const ts_cell_t *cell, const char *reply,
                                           const char *key)
{
    if (!o->leading || !ts_leader_held(o->leader)) return fail(o, reply, "not leader"), NULL;
    if (!o->reg || o->cells_stale) return fail(o, reply, "registry unavailable, try again"), NULL;
    if (cell->world != o->world) return fail(o, reply, "cell %s is not in world %u", key, o->world), NULL;
    long k = ts_orch_cell_index(o, cell);
    if (k < 0) return fail(o, reply, "unknown cell %s", key), NULL;
    if (o->orphan[k])
        return fail(o, reply, "owner %s of %s was replaced (crash recovery moves its cells)",
                    o->cells[k].owner, key),
               NULL;
    if (ts_handovers_has_cell(o->ho, cell)) return fail(o, reply, "cell %s is being handed over", key), NULL;
    return &o->cells[k];
}

/* After a script whose connection broke: whether it ran, from the parent
 * and children as Redis has them now. TS_OK: it ran (out and versions
 * filled, versions are the current one); TS_ERR_UNAVAILABLE: it did not, or
 * Redis cannot tell. */
static ts_status_t reread(ts_orch_t *o, const ts_cell_t *parent, uint64_t epoch, ts_cell_state_t want,
                          ts_cell_entry_t out[5], uint64_t versions[5])
{
    o->cells_stale = true;
    ts_cell_t kids[4];
    ts_cell_children(parent, kids);
    ts_status_t st = ts_registry_cell_get(o->reg, parent, &out[0]);
    for (int q = 0; q < 4 && st == TS_OK; q++)
        st = ts_registry_cell_get(o->reg, &kids[q], &out[1 + q]);
    uint64_t version = 0;
    if (st == TS_OK) st = ts_registry_version(o->reg, o->world, &version);
    if (st != TS_OK && st != TS_ERR_NOT_FOUND) {
        ts_orch_registry_broken(o, st);
        return TS_ERR_UNAVAILABLE;
    }
    if (st != TS_OK || out[0].epoch != epoch + 1 || out[0].state != want) return TS_ERR_UNAVAILABLE;
    for (int i = 0; i < 5; i++)
        versions[i] = version;
    return TS_OK;
}

/* Applies a done split or merge to the copy and announces it, parent first. */
static void publish_change(ts_orch_t *o, const ts_cell_entry_t out[5], const uint64_t versions[5], bool exact)
{
    for (int i = 0; i < 5; i++) {
        ts_orch_note_cell(o, &out[i], exact ? versions[i] : 0);
        ts_orch_announce(o, &out[i], versions[i]);
    }
}

static void format_kids(const ts_cell_entry_t out[5], char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int q = 0; q < 4 && n < cap; q++) {
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&out[1 + q].cell, key, sizeof key);
        int w = snprintf(buf + n, cap - n, "%s%s@%" PRIu64, q ? "," : "", key, out[1 + q].epoch);
        if (w < 0) break;
        n += (size_t)w;
    }
}

ts_status_t ts_orch_split(ts_orch_t *o, const ts_cell_t *cell, const char *reply, const char *why)
{
    char key[TS_CELL_STR_MAX];
    if (ts_cell_format(cell, key, sizeof key) < 0) return fail(o, reply, "bad cell");
    const ts_cell_entry_t *e = check_common(o, cell, reply, key);
    if (!e) return TS_ERR_INVALID;
    if (e->state != TS_CELL_ACTIVE)
        return fail(o, reply, "cell %s is %s, not active", key, ts_cell_state_str(e->state));
    if (cell->depth >= o->cfg->world_max_depth)
        return fail(o, reply, "cell %s is at depth %u, world.max_depth is %lld", key, cell->depth,
                    (long long)o->cfg->world_max_depth);
    ts_cell_t kids[4];
    if (ts_cell_children(cell, kids) != TS_OK) return fail(o, reply, "cell %s has no children", key);
    for (int q = 0; q < 4; q++) {
        if (ts_handovers_has_cell(o->ho, &kids[q]))
            return fail(o, reply, "a child of %s is being handed over", key);
    }
    uint64_t epoch = e->epoch;
    char owner[TS_WORKER_ID_MAX];
    ts_strlcpy(owner, e->owner, sizeof owner);
    ts_cell_entry_t out[5];
    uint64_t versions[5];
    uint64_t t0 = ts_mono_us();
    ts_status_t st = ts_registry_cell_split(o->reg, cell, epoch, out, versions);
    uint64_t took = ts_mono_us() - t0;
    bool exact = true;
    if (st == TS_ERR_UNAVAILABLE || st == TS_ERR_IO) {
        exact = false;
        st = reread(o, cell, epoch, TS_CELL_SPLIT, out, versions);
        if (st != TS_OK) return fail(o, reply, "registry unavailable; cell %s was not split", key);
    }
    ts_splitplan_done(&o->split->plan, cell, ts_mono_us());
    if (st == TS_ERR_CONFLICT || st == TS_ERR_STALE || st == TS_ERR_NOT_FOUND) {
        if (st != TS_ERR_NOT_FOUND) ts_orch_note_cell(o, &out[0], 0);
        o->cells_stale = true;
        return fail(o, reply, "cell %s changed meanwhile (%s%s, epoch %" PRIu64 ")", key,
                    st == TS_ERR_STALE ? "a child is live; parent " : "", ts_cell_state_str(out[0].state),
                    out[0].epoch);
    }
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return fail(o, reply, "registry error: %s", ts_status_str(st));
    }
    publish_change(o, out, versions, exact);
    ts_stats_count(&o->stats, TS_STAT_SPLIT);
    ts_stats_split_us(&o->stats, took);
    char kidtext[4 * (TS_CELL_STR_MAX + 24)];
    format_kids(out, kidtext, sizeof kidtext);
    ts_info("split cell %s of %s (epoch %" PRIu64 " -> %" PRIu64 "; %s) into %s in %.1f ms", key, owner,
            epoch, out[0].epoch, why, kidtext, (double)took / 1000);
    char text[1024];
    snprintf(text, sizeof text, "ok split %s owner %s epoch %" PRIu64 "->%" PRIu64 " children %s", key, owner,
             epoch, out[0].epoch, kidtext);
    reply_text(o, reply, text);
    return TS_OK;
}

static void gather(ts_orch_t *o, const ts_cell_t *parent, const char *to);

/* tessera-ctl merge of children on several owners: hands them to the owner
 * of the most children (handovers, as the planner's merge does) and keeps
 * the request; gathers_poll merges and answers once they are on one owner. */
static ts_status_t gather_then_merge(ts_orch_t *o, const ts_cell_t *parent, const char *reply,
                                     const char *key)
{
    ts_split_t *s = o->split;
    for (size_t i = 0; s && i < s->ngathers; i++)
        if (ts_cell_eq(&s->gathers[i].parent, parent))
            return fail(o, reply, "busy, try again: the children of %s are being gathered for a merge", key);
    if (!s || s->ngathers == GATHERS_MAX)
        return fail(o, reply, "busy, try again: %d merges are gathering children", GATHERS_MAX);
    ts_cell_t kids[4];
    if (ts_cell_children(parent, kids) != TS_OK) return fail(o, reply, "cell %s has no children", key);
    int best = 0, best_n = 0;
    for (int q = 0; q < 4; q++) {
        const ts_cell_entry_t *a = &o->cells[ts_orch_cell_index(o, &kids[q])];
        int n = 0;
        for (int r = 0; r < 4; r++)
            n += strcmp(o->cells[ts_orch_cell_index(o, &kids[r])].owner, a->owner) == 0;
        if (n > best_n) {
            best = q;
            best_n = n;
        }
    }
    ts_gather_t *g = &s->gathers[s->ngathers];
    g->reply = strdup(reply);
    if (!g->reply) return fail(o, reply, "out of memory");
    g->parent = *parent;
    ts_strlcpy(g->to, o->cells[ts_orch_cell_index(o, &kids[best])].owner, sizeof g->to);
    g->deadline_us = ts_mono_us() + GATHER_TIMEOUT_US;
    s->ngathers++;
    ts_info("merge of %s asked by tessera-ctl: gathering its children on %s first", key, g->to);
    gather(o, parent, g->to);
    return TS_OK;
}

/* Each gathering merge: merged (and answered) once its children are active
 * on one owner with no handover left; the gather asked again while a child
 * is elsewhere with none running (one aborted); refused after its deadline. */
static void gathers_poll(ts_orch_t *o, uint64_t now)
{
    ts_split_t *s = o->split;
    for (size_t i = 0; i < s->ngathers;) {
        ts_gather_t *g = &s->gathers[i];
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&g->parent, key, sizeof key);
        ts_cell_t kids[4];
        bool moving = false, apart = false;
        if (ts_cell_children(&g->parent, kids) == TS_OK) {
            for (int q = 0; q < 4; q++) {
                long k = ts_orch_cell_index(o, &kids[q]);
                if (ts_handovers_has_cell(o->ho, &kids[q]))
                    moving = true;
                else if (k >= 0 && strcmp(o->cells[k].owner, g->to) != 0)
                    apart = true;
            }
        }
        if (!moving && !apart) {
            ts_gather_t done = *g;
            s->gathers[i] = s->gathers[--s->ngathers];
            ts_orch_merge(o, &done.parent, done.reply, "asked by tessera-ctl");
            free(done.reply);
            continue;
        }
        if (now >= g->deadline_us) {
            fail(o, g->reply, "the children of %s were not gathered on %s within %llu s; not merged", key,
                 g->to, (unsigned long long)(GATHER_TIMEOUT_US / 1000000ULL));
            free(g->reply);
            s->gathers[i] = s->gathers[--s->ngathers];
            continue;
        }
        if (!moving) gather(o, &g->parent, g->to);
        i++;
    }
}

ts_status_t ts_orch_merge(ts_orch_t *o, const ts_cell_t *parent, const char *reply, const char *why)
{
    char key[TS_CELL_STR_MAX];
    if (ts_cell_format(parent, key, sizeof key) < 0) return fail(o, reply, "bad cell");
    const ts_cell_entry_t *e = check_common(o, parent, reply, key);
    if (!e) return TS_ERR_INVALID;
    if (e->state != TS_CELL_SPLIT)
        return fail(o, reply, "cell %s is %s, not split", key, ts_cell_state_str(e->state));
    uint64_t epoch = e->epoch;
    ts_cell_t kids[4];
    if (ts_cell_children(parent, kids) != TS_OK) return fail(o, reply, "cell %s has no children", key);
    char owner[TS_WORKER_ID_MAX] = "", other[TS_WORKER_ID_MAX] = "";
    for (int q = 0; q < 4; q++) {
        char ck[TS_CELL_STR_MAX];
        ts_cell_format(&kids[q], ck, sizeof ck);
        long k = ts_orch_cell_index(o, &kids[q]);
        if (k < 0) return fail(o, reply, "child %s is unknown", ck);
        const ts_cell_entry_t *c = &o->cells[k];
        if (c->state != TS_CELL_ACTIVE)
            return fail(o, reply, "child %s is %s (merge its children first)", ck,
                        ts_cell_state_str(c->state));
        if (ts_handovers_has_cell(o->ho, &kids[q]))
            return fail(o, reply, "child %s is being handed over", ck);
        if (o->orphan[k]) return fail(o, reply, "owner %s of child %s was replaced", c->owner, ck);
        if (q == 0)
            ts_strlcpy(owner, c->owner, sizeof owner);
        else if (strcmp(c->owner, owner) != 0)
            ts_strlcpy(other, c->owner, sizeof other);
    }
    if (other[0]) {
        /* asked by tessera-ctl: gathered first, merged and answered later */
        if (reply) return gather_then_merge(o, parent, reply, key);
        return fail(o, reply, "children of %s have different owners (%s, %s): hand them to one first", key,
                    owner, other);
    }
    ts_cell_entry_t out[5];
    uint64_t versions[5];
    uint64_t t0 = ts_mono_us();
    ts_status_t st = ts_registry_cell_merge(o->reg, parent, epoch, out, versions);
    uint64_t took = ts_mono_us() - t0;
    bool exact = true;
    if (st == TS_ERR_UNAVAILABLE || st == TS_ERR_IO) {
        exact = false;
        st = reread(o, parent, epoch, TS_CELL_ACTIVE, out, versions);
        if (st != TS_OK) return fail(o, reply, "registry unavailable; cell %s was not merged", key);
    }
    ts_splitplan_done(&o->split->plan, parent, ts_mono_us());
    if (st == TS_ERR_CONFLICT || st == TS_ERR_STALE || st == TS_ERR_NOT_FOUND) {
        if (st != TS_ERR_NOT_FOUND) ts_orch_note_cell(o, &out[0], 0);
        o->cells_stale = true;
        return fail(o, reply, "cell %s or its children changed meanwhile (parent %s, epoch %" PRIu64 ")", key,
                    ts_cell_state_str(out[0].state), out[0].epoch);
    }
    if (st != TS_OK) {
        ts_orch_registry_broken(o, st);
        return fail(o, reply, "registry error: %s", ts_status_str(st));
    }
    publish_change(o, out, versions, exact);
    ts_stats_count(&o->stats, TS_STAT_MERGE);
    ts_stats_split_us(&o->stats, took);
    ts_info("merged the children of %s back into it on %s (epoch %" PRIu64 " -> %" PRIu64 "; %s) in %.1f ms",
            key, owner, epoch, out[0].epoch, why, (double)took / 1000);
    char text[512];
    snprintf(text, sizeof text, "ok merge %s owner %s epoch %" PRIu64 "->%" PRIu64, key, owner, epoch,
             out[0].epoch);
    reply_text(o, reply, text);
    return TS_OK;
}

/* Hands the children of parent that `to` does not own to it (one handover
 * each, unless one is already queued or running). */
static void gather(ts_orch_t *o, const ts_cell_t *parent, const char *to)
{
    ts_cell_t kids[4];
    if (ts_cell_children(parent, kids) != TS_OK) return;
    for (int q = 0; q < 4; q++) {
        long k = ts_orch_cell_index(o, &kids[q]);
        if (k < 0 || strcmp(o->cells[k].owner, to) == 0 || ts_handovers_has_cell(o->ho, &kids[q])) continue;
        char key[TS_CELL_STR_MAX];
        ts_cell_format(&kids[q], key, sizeof key);
        ts_info("merge: handing child %s of %s to %s first", key, o->cells[k].owner, to);
        ts_orch_handover(o, &kids[q], to, TS_HO_MERGE, NULL);
    }
}

/* The cell's share of its owner's tick budget: its share of the worker's
 * entities times the worker's median tick over the budget. */
static double tick_share(ts_orch_t *o, const ts_cell_load_t *load)
{
    ts_worker_info_t info;
    if (!ts_workers_get(o->workers, load->worker, &info) || !info.alive || info.entities == 0) return 0;
    double budget = 1000.0 / (double)(o->cfg->worker_tick_hz > 0 ? o->cfg->worker_tick_hz : 20);
    return (double)load->entities / (double)info.entities * info.tick_p50_ms / budget;
}

void ts_split_poll(ts_orch_t *o)
{
    ts_split_t *s = o->split;
    if (!s) return;
    uint64_t now = ts_mono_us();
    if (now < s->next_eval_us) return;
    s->next_eval_us = now + EVAL_US;
    if (!o->reg || o->cells_stale || !ts_leader_held(o->leader)) return;
    if (s->ngathers > 0) gathers_poll(o, now);
    if (!o->cfg->split_auto || ts_draining_any(o->drain) || o->cells_stale || !o->reg) return;
    ts_splitplan_cell_t *cells = calloc(o->ncells + 1, sizeof *cells);
    ts_splitplan_action_t *acts = calloc(ACTIONS_MAX, sizeof *acts);
    if (!cells || !acts) {
        free(cells);
        free(acts);
        return;
    }
    for (size_t i = 0; i < o->ncells; i++) {
        cells[i].entry = o->cells[i];
        ts_cell_load_t load;
        if (ts_workers_cell_load(o->workers, &o->cells[i].cell, now, &load) &&
            strcmp(load.worker, o->cells[i].owner) == 0 && load.epoch == o->cells[i].epoch) {
            cells[i].has_load = true;
            cells[i].report_us = load.seen_us;
            cells[i].entities = load.entities;
            cells[i].tick_share = tick_share(o, &load);
        }
    }
    size_t n = ts_splitplan_eval(&s->plan, cells, o->ncells, now, acts, ACTIONS_MAX);
    /* act on copies: a split grows o->cells */
    for (size_t k = 0; k < n; k++) {
        ts_cell_entry_t e = cells[acts[k].cell].entry;
        if (acts[k].kind == TS_SPLITPLAN_SPLIT) {
            if (ts_handovers_has_cell(o->ho, &e.cell)) continue;
            ts_orch_split(o, &e.cell, NULL, acts[k].why);
        } else if (acts[k].same_owner) {
            ts_orch_merge(o, &e.cell, NULL, acts[k].why);
        } else {
            gather(o, &e.cell, acts[k].gather_to);
        }
        if (o->cells_stale || !o->reg) break;
    }
    free(cells);
    free(acts);
}

bool ts_split_drain_forwarders(ts_orch_t *o, const ts_orch_view_t *view)
{
    ts_registry_cas_t *ops = NULL;
    size_t nops = 0;
    for (size_t i = 0; i < o->ncells && i < view->nc; i++) {
        const ts_cell_entry_t *e = &o->cells[i];
        if (e->state != TS_CELL_SPLIT && e->state != TS_CELL_RETIRED) continue;
        int owner = ts_orch_view_worker(view, e->owner);
        if (owner < 0 || !ts_draining_has(o->drain, e->owner) || !view->alive[owner]) continue;
        if (view->w[owner].ncells > 0) continue; /* its live cells go first, by handover */
        int target = ts_balance_target(&view->v, i, owner);
        if (target < 0) continue;
        if (!ops && !(ops = calloc(o->ncells, sizeof *ops))) return false;
        ts_registry_cas_t *op = &ops[nops++];
        op->cell = e->cell;
        op->expected_epoch = e->epoch;
        op->new_state = e->state;
        ts_strlcpy(op->new_owner, view->w[target].id, sizeof op->new_owner);
    }
    if (nops == 0) {
        free(ops);
        return false;
    }
    if (ts_orch_cas_many(o, ops, nops) == TS_OK) {
        for (size_t k = 0; k < nops; k++) {
            if (ops[k].result != TS_OK) continue;
            char key[TS_CELL_STR_MAX];
            ts_cell_format(&ops[k].cell, key, sizeof key);
            ts_info("drain: forwarder cell %s (%s) to %s at epoch %" PRIu64, key,
                    ts_cell_state_str(ops[k].new_state), ops[k].new_owner, ops[k].entry.epoch);
            ts_stats_count(&o->stats, TS_STAT_DRAIN_MOVE);
        }
    }
    free(ops);
    return true;
}
