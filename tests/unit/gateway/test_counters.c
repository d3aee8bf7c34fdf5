/* services/gateway/counters.c: the world counters' sum over the cells'
 * heartbeat reports counts a counter move between two cells exactly once,
 * whichever side of the move each report is from: on its way (the source's
 * counters 0, the destination's CountersInput not applied yet), applied,
 * and a new owner's report from before a move its last owner had applied.
 * The gateway's loop and connections are left out (stubs below). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "counters.c" /* the sum itself, unchanged */

/* ---- what counters.c calls of the rest of the gateway ------------------------ */

static gw_t *the_gw;

gw_cell_t *gw_cell_find(gw_t *gw, const ts_cell_t *id)
{
    for (gw_cell_t *c = gw->all_cells; c != NULL; c = c->next_all)
        if (ts_cell_eq(&c->id, id)) return c;
    return NULL;
}

uint64_t gw_cell_epoch(const gw_cell_t *cell)
{
    return cell->reg_epoch;
}

size_t gw_frame_head(uint8_t *out, uint64_t seq, uint64_t epoch, const ts_cell_t *cell, int payload,
                     uint64_t tick, size_t payload_len, size_t *frame_len)
{
    (void)out, (void)seq, (void)epoch, (void)cell, (void)payload, (void)tick;
    *frame_len = payload_len;
    return 0;
}

ts_status_t gw_conn_writev(gw_conn_t *c, const uv_buf_t *bufs, size_t nbufs, size_t total)
{
    (void)c, (void)bufs, (void)nbufs, (void)total;
    return TS_OK;
}

/* ---- fixtures -------------------------------------------------------------------- */

static gw_cell_t cells[5]; /* P, then its children by quadrant */

static int setup(void **state)
{
    (void)state;
    the_gw = calloc(1, sizeof(*the_gw));
    gw_counters_t *k = calloc(1, sizeof(*k));
    pthread_mutex_init(&k->lock, NULL);
    k->gw = the_gw;
    the_gw->counters = k;
    memset(cells, 0, sizeof cells);
    cells[0].id = (ts_cell_t){.world = 0, .cx = 0, .cy = 0};
    ts_cell_t kids[4];
    assert_int_equal(ts_cell_children(&cells[0].id, kids), TS_OK);
    for (int i = 0; i < 5; i++) {
        if (i > 0) cells[i].id = kids[i - 1];
        cells[i].in_registry = true;
        cells[i].reg_epoch = 2;
        ts_strlcpy(cells[i].reg_owner, "w1", sizeof cells[i].reg_owner);
        cells[i].next_all = i < 4 ? &cells[i + 1] : NULL;
    }
    the_gw->all_cells = &cells[0];
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++)
        free(cells[i].ctr_flows);
    gw_counters_free(the_gw);
    free(the_gw);
    return 0;
}

/* One cell's report: red points and at most one flow (peer index, out, in;
 * peer < 0: none). */
typedef struct {
    int cell;
    int64_t red;
    int peer;
    int64_t out, in;
} report_t;

/* w1's heartbeat with these reports (every cell at epoch 2). */
static void heartbeat(const report_t *r, size_t n)
{
    Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
    hb.worker = (char *)"w1";
    Tessera__V1__CellLoad loads[5], *lp[5];
    Tessera__V1__CellId ids[5], peers[5];
    Tessera__V1__CounterFlow flows[5], *fp[5];
    int64_t red[5], out[5], in[5];
    for (size_t i = 0; i < n; i++) {
        tessera__v1__cell_load__init(&loads[i]);
        ts_proto_cell_init(&ids[i], &cells[r[i].cell].id);
        loads[i].cell = &ids[i];
        loads[i].epoch = 2;
        red[i] = r[i].red;
        loads[i].n_counters = r[i].red != 0;
        loads[i].counters = &red[i];
        if (r[i].peer >= 0) {
            tessera__v1__counter_flow__init(&flows[i]);
            ts_proto_cell_init(&peers[i], &cells[r[i].peer].id);
            flows[i].peer = &peers[i];
            out[i] = r[i].out;
            in[i] = r[i].in;
            flows[i].n_out = r[i].out != 0;
            flows[i].out = &out[i];
            flows[i].n_in = r[i].in != 0;
            flows[i].in = &in[i];
            fp[i] = &flows[i];
            loads[i].n_flows = 1;
            loads[i].flows = &fp[i];
        }
        lp[i] = &loads[i];
    }
    hb.n_cells = n;
    hb.cells = lp;
    uint8_t buf[4096];
    size_t len = tessera__v1__heartbeat__pack(&hb, buf);
    take_heartbeat(the_gw->counters, buf, len);
}

/* The sum of red an evaluation makes now. */
static int64_t red_sum(void)
{
    uv_timer_t t = {.data = the_gw};
    on_eval(&t);
    return the_gw->counters->values[0];
}

/* ---- tests ------------------------------------------------------------------------- */

/* A split: P's 5 points go to child 0. */
static void test_split_move_counts_once(void **state)
{
    (void)state;
    const int none = -1;
    report_t before[] = {
        {0, 5, none, 0, 0}, {1, 0, none, 0, 0}, {2, 0, none, 0, 0}, {3, 0, none, 0, 0}, {4, 0, none, 0, 0}};
    heartbeat(before, 5);
    assert_int_equal(red_sum(), 5);
    /* P applied its marker, child 0 has not applied the CountersInput yet */
    report_t on_its_way[] = {{0, 0, 1, 5, 0}, {1, 0, none, 0, 0}};
    heartbeat(on_its_way, 2);
    assert_int_equal(red_sum(), 5);
    /* applied */
    report_t applied[] = {{0, 0, 1, 5, 0}, {1, 5, 0, 0, 5}};
    heartbeat(applied, 2);
    assert_int_equal(red_sum(), 5);
    /* P's new owner replays from a checkpoint older than its marker, child
     * 0's last report is after the move: still once */
    report_t replaying[] = {{0, 5, none, 0, 0}, {1, 5, 0, 0, 5}};
    heartbeat(replaying, 2);
    assert_int_equal(red_sum(), 5);
    /* and child 0's from before it, with P's after it */
    report_t child_behind[] = {{0, 0, 1, 5, 0}, {1, 0, none, 0, 0}};
    heartbeat(child_behind, 2);
    assert_int_equal(red_sum(), 5);
    /* a point scored in child 0 counts */
    report_t scored[] = {{0, 0, 1, 5, 0}, {1, 6, 0, 0, 5}};
    heartbeat(scored, 2);
    assert_int_equal(red_sum(), 6);
}

/* A merge: child 0's points (moved there at the split) go back to P; a
 * report of both directions of one pair adds up. */
static void test_merge_move_counts_once(void **state)
{
    (void)state;
    const int none = -1;
    report_t split_done[] = {
        {0, 0, 1, 5, 0}, {1, 5, 0, 0, 5}, {2, 0, none, 0, 0}, {3, 0, none, 0, 0}, {4, 0, none, 0, 0}};
    heartbeat(split_done, 5);
    assert_int_equal(red_sum(), 5);
    /* child 0 applied its marker: 0 points, 5 out to P (and 5 in from it) */
    report_t on_its_way[] = {{0, 0, 1, 5, 0}, {1, 0, 0, 5, 5}};
    heartbeat(on_its_way, 2);
    assert_int_equal(red_sum(), 5);
    report_t applied[] = {{0, 5, 1, 5, 5}, {1, 0, 0, 5, 5}};
    heartbeat(applied, 2);
    assert_int_equal(red_sum(), 5);
    /* a peer this gateway's registry view does not have counts nothing of
     * the pair (nor its own counters) */
    cells[1].in_registry = false;
    assert_int_equal(red_sum(), 5);
    cells[1].in_registry = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_split_move_counts_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_move_counts_once, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
