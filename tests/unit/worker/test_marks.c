/* Tick marks (services/worker/marks.c): what each tick publishes, which
 * cells a mark releases, and which marks a recovery follows. The
 * publisher and the input demultiplexer are stubs below. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tessera/proto.h"
#include "worker_internal.h"

/* ---- what marks.c calls of the rest of the worker ------------------------------ */

static struct {
    bool refuse;
    size_t n;
    char subject[160];
    Tessera__V1__TickMark *last;
} pub;
static int64_t stream_now = 77;

bool ts_publisher_push(ts_worker_t *w, const char *subject, const ts_bus_hdr_t *hdr, uint8_t *buf, size_t len,
                       bool js, bool tracked)
{
    (void)w;
    assert_true(js);
    assert_false(tracked);
    assert_string_equal(hdr->type, TS_TYPE_TICK_MARK);
    if (pub.refuse) {
        free(buf);
        return false;
    }
    if (pub.last) tessera__v1__tick_mark__free_unpacked(pub.last, NULL);
    pub.last = tessera__v1__tick_mark__unpack(NULL, len, buf);
    assert_non_null(pub.last);
    assert_int_equal(hdr->seq, pub.last->tick);
    snprintf(pub.subject, sizeof pub.subject, "%s", subject);
    pub.n++;
    free(buf);
    return true;
}

int64_t ts_demux_stream_id(ts_worker_t *w)
{
    (void)w;
    return stream_now;
}

/* ---- fixtures -------------------------------------------------------------------- */

typedef struct {
    ts_worker_t *w;
    ts_binding_t b[2];
    ts_zone_t z[2];
    ts_sub_ctx_t ctx[2];
    ts_binding_t *bp[2];
} fx_t;

static fx_t *fx_new(void)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->w = calloc(1, sizeof(*f->w));
    snprintf(f->w->id, sizeof f->w->id, "w1");
    snprintf(f->w->instance, sizeof f->w->instance, "inst-1");
    f->w->world.id = 3;
    ts_marks_init(f->w);
    f->w->marks.stream = stream_now; /* as after a first mark */
    for (int i = 0; i < 2; i++) {
        f->z[i].cell = (ts_cell_t){.world = 3, .cx = i, .cy = 0};
        atomic_init(&f->ctx[i].stale, false);
        f->b[i].zone = &f->z[i];
        f->b[i].ctx = &f->ctx[i];
        f->b[i].anchored = true; /* checkpointed */
        f->bp[i] = &f->b[i];
    }
    f->w->bindings = f->bp;
    f->w->nbind = 2;
    memset(&pub, 0, sizeof pub);
    return f;
}

static void fx_free(fx_t *f)
{
    ts_marks_free(f->w);
    free(f->w);
    free(f);
    if (pub.last) tessera__v1__tick_mark__free_unpacked(pub.last, NULL);
    pub.last = NULL;
}

static bool released(const Tessera__V1__TickMark *m, int cx)
{
    for (size_t i = 0; i < m->n_released; i++)
        if (m->released[i]->cx == cx) return true;
    return false;
}

/* One tick of the worker: the input it took, then its mark. */
static void tick(fx_t *f, uint64_t took_seq)
{
    f->w->tick++;
    if (took_seq) ts_marks_took(f->w, took_seq);
    ts_marks_tick(f->w, 1000 * f->w->tick);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_a_mark_per_tick(void **state)
{
    (void)state;
    fx_t *f = fx_new();
    tick(f, 5);
    assert_int_equal(pub.n, 1);
    assert_string_equal(pub.subject, "tessera.worker.w1.marks.3.inst-1");
    assert_int_equal(pub.last->tick, 1);
    assert_int_equal(pub.last->prev_tick, 0);
    assert_int_equal(pub.last->through_seq, 5);
    assert_int_equal(pub.last->clock_ns, 1000);
    assert_int_equal(pub.last->input_stream, 77);
    assert_int_equal(pub.last->n_released, 0);
    /* the highest sequence taken, whatever order the cells took them in */
    ts_marks_took(f->w, 9);
    tick(f, 7);
    assert_int_equal(pub.last->tick, 2);
    assert_int_equal(pub.last->prev_tick, 1);
    assert_int_equal(pub.last->through_seq, 9);
    /* nothing bound and nothing to release: no mark, and the next one
     * chains to the last one published */
    f->w->nbind = 0;
    tick(f, 0);
    assert_int_equal(pub.n, 2);
    f->w->nbind = 2;
    tick(f, 0);
    assert_int_equal(pub.last->tick, 4);
    assert_int_equal(pub.last->prev_tick, 2);
    fx_free(f);
}

static void test_cells_released(void **state)
{
    (void)state;
    fx_t *f = fx_new();
    tick(f, 5);
    /* frozen for a handover: released once, at the next mark */
    f->b[0].state = TS_BIND_FROZEN;
    tick(f, 6);
    assert_int_equal(pub.last->n_released, 1);
    assert_true(released(pub.last, 0));
    assert_false(f->b[0].anchored);
    tick(f, 6);
    assert_int_equal(pub.last->n_released, 0);
    /* an input at or below the last mark's sequence reaching a cell late */
    f->z[1].last_applied_seq = 3;
    ts_marks_applying(f->w, &f->b[1], 7);
    assert_true(f->b[1].anchored); /* above the last mark: in time */
    ts_marks_applying(f->w, &f->b[1], 6);
    assert_false(f->b[1].anchored);
    tick(f, 7);
    assert_int_equal(pub.last->n_released, 1);
    assert_true(released(pub.last, 1));
    /* a full ring dropped input of some cell: every anchored cell */
    f->b[0].state = TS_BIND_ACTIVE;
    f->b[0].anchored = f->b[1].anchored = true;
    atomic_store(&f->w->dmx.overflows, 1);
    tick(f, 8);
    assert_int_equal(pub.last->n_released, 2);
    /* re-registered with the input stream, and unbound */
    f->b[0].anchored = f->b[1].anchored = true;
    f->b[0].resub_needed = true;
    ts_marks_release(f->w, &f->b[1]); /* (as ts_worker_unbind does) */
    f->w->nbind = 1;
    tick(f, 8);
    assert_int_equal(pub.last->n_released, 2);
    assert_true(released(pub.last, 0) && released(pub.last, 1));
    fx_free(f);
}

static void test_lost_mark_breaks_the_chain(void **state)
{
    (void)state;
    fx_t *f = fx_new();
    tick(f, 5);
    pub.refuse = true; /* the publish queue is full */
    tick(f, 6);
    assert_int_equal(atomic_load(&f->w->marks.failed), 1);
    pub.refuse = false;
    tick(f, 7);
    assert_int_equal(pub.last->tick, 3);
    assert_int_equal(pub.last->prev_tick, 2); /* a mark no replay finds */
    ts_marks_on_outcome(f->w, false);         /* not stored */
    assert_int_equal(atomic_load(&f->w->marks.failed), 2);
    fx_free(f);
}

/* ---- which marks a recovery follows ------------------------------------------------ */

static const ts_cell_t CELL = {.world = 3, .cx = 1, .cy = 0}, OTHER = {.world = 3, .cx = 2, .cy = 0};

static ts_tick_mark_t mk(uint64_t tick, uint64_t prev, uint64_t through)
{
    return (ts_tick_mark_t){
        .tick = tick, .prev_tick = prev, .through_seq = through, .clock_ns = tick * 10, .input_stream = 77};
}

static void test_select(void **state)
{
    (void)state;
    ts_zone_mark_t *out = NULL;
    size_t n = 0;
    /* tick 7 missed (no mark): 6 and 8 follow the checkpoint at 5 */
    ts_tick_mark_t v[] = {mk(4, 3, 1), mk(5, 4, 2), mk(6, 5, 2), mk(8, 6, 9)};
    assert_null(ts_marks_select(v, 4, 5, 77, &CELL, &out, &n));
    assert_int_equal(n, 2);
    assert_int_equal(out[0].tick, 6);
    assert_int_equal(out[1].tick, 8);
    assert_int_equal(out[1].through_seq, 9);
    assert_int_equal(out[1].clock_ns, 80);
    free(out);
    /* the checkpoint's own tick had no mark stored: the next one chains
     * from before it */
    assert_null(ts_marks_select(v, 4, 7, 77, &CELL, &out, &n));
    assert_int_equal(n, 1);
    free(out);
    /* nothing after the checkpoint: nothing to re-run, by marks */
    assert_null(ts_marks_select(v, 4, 8, 77, &CELL, &out, &n));
    assert_int_equal(n, 0);
    assert_null(out);
    /* a mark stored twice counts once */
    ts_tick_mark_t d[] = {mk(5, 4, 2), mk(6, 5, 2), mk(6, 5, 2), mk(7, 6, 3)};
    assert_null(ts_marks_select(d, 4, 5, 77, &CELL, &out, &n));
    assert_int_equal(n, 2);
    free(out);

    /* by store times: */
    assert_non_null(ts_marks_select(v, 0, 5, 77, &CELL, &out, &n)); /* none stored */
    ts_tick_mark_t hole[] = {mk(6, 5, 2), mk(8, 7, 3)};             /* 7 was lost */
    assert_non_null(ts_marks_select(hole, 2, 5, 77, &CELL, &out, &n));
    assert_null(out);
    assert_int_equal(n, 0);
    ts_tick_mark_t old[] = {mk(9, 8, 2), mk(10, 9, 3)}; /* the ones after 5 are gone */
    assert_non_null(ts_marks_select(old, 2, 5, 77, &CELL, &out, &n));
    assert_non_null(ts_marks_select(v, 4, 5, 78, &CELL, &out, &n)); /* another input stream */
    ts_cell_t rel[] = {CELL};
    ts_tick_mark_t r[] = {mk(6, 5, 2), mk(7, 6, 3)};
    r[1].released = rel;
    r[1].nreleased = 1;
    assert_non_null(ts_marks_select(r, 2, 5, 77, &CELL, &out, &n));
    assert_null(ts_marks_select(r, 2, 5, 77, &OTHER, &out, &n)); /* another cell's release */
    assert_int_equal(n, 2);
    free(out);
    assert_null(ts_marks_select(r, 2, 7, 77, &CELL, &out, &n)); /* a checkpoint after the release */
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_mark_per_tick),
        cmocka_unit_test(test_cells_released),
        cmocka_unit_test(test_lost_mark_breaks_the_chain),
        cmocka_unit_test(test_select),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
