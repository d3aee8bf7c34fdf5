/* Handover state machines (services/orch/hosm.c), driven without servers:
 * the protocol's order (PREPARE, FREEZE, CAS, COMMIT to the target, then the
 * source), an abort to both on every failure before the CAS (timeout,
 * refusal, no responders, a failed publish, a CAS conflict) with the cause in
 * the reply, nothing rolled back after the CAS, late answers ignored, and
 * several handovers in flight at once, bounded, one per cell. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hosm.h"
#include "tessera/proto.h"

#define MAX_SENT 64
#define TIMEOUT_MS 1000
#define MS 1000ULL

typedef struct {
    uint64_t req;
    char id[TS_HO_ID_MAX];
    Tessera__V1__HandoverPhase phase;
    char target[TS_WORKER_ID_MAX];
    char subject[128];
    uint64_t new_epoch;
} sent_t;

typedef struct {
    sent_t sent[MAX_SENT];
    int nsent;
    int fail_sends;     /* the next n sends fail */
    ts_status_t cas_st; /* what the CAS answers */
    uint64_t cas_epoch; /* its epoch (new, or current on a conflict) */
    int ncas;
    ts_ho_t done[16];
    int ndone;
} fake_t;

static ts_status_t fake_send(void *ud, const char *subject, uint64_t req, uint64_t epoch, const uint8_t *buf,
                             size_t len)
{
    fake_t *f = ud;
    if (f->fail_sends > 0) {
        f->fail_sends--;
        return TS_ERR_BUS;
    }
    Tessera__V1__Handover *m = tessera__v1__handover__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_true(f->nsent < MAX_SENT);
    sent_t *s = &f->sent[f->nsent++];
    s->req = req;
    snprintf(s->id, sizeof s->id, "%s", m->id);
    s->phase = m->phase;
    snprintf(s->target, sizeof s->target, "%s", m->target);
    snprintf(s->subject, sizeof s->subject, "%s", subject);
    s->new_epoch = m->new_epoch;
    assert_int_equal(m->epoch, epoch);
    tessera__v1__handover__free_unpacked(m, NULL);
    return TS_OK;
}

static ts_status_t fake_cas(void *ud, const ts_ho_t *h, ts_cell_entry_t *out, char *why, size_t cap)
{
    fake_t *f = ud;
    f->ncas++;
    out->cell = h->cell;
    out->epoch = f->cas_epoch ? f->cas_epoch : h->epoch + 1;
    snprintf(out->owner, sizeof out->owner, "%s", f->cas_st == TS_OK ? h->to : "w9");
    if (f->cas_st == TS_ERR_UNAVAILABLE) snprintf(why, cap, "registry unavailable");
    return f->cas_st;
}

static void fake_done(void *ud, ts_ho_t *h)
{
    fake_t *f = ud;
    assert_true(f->ndone < 16);
    f->done[f->ndone++] = *h;
}

static void setup(ts_hos_t *s, fake_t *f, size_t cap)
{
    memset(f, 0, sizeof *f);
    f->cas_st = TS_OK;
    ts_ho_io_t io = {.ud = f, .send = fake_send, .cas = fake_cas, .done = fake_done};
    assert_int_equal(ts_hos_init(s, cap, TIMEOUT_MS, &io), TS_OK);
}

static ts_ho_t ho(int cx, const char *from, const char *to, uint64_t epoch, const char *id)
{
    ts_ho_t h;
    memset(&h, 0, sizeof h);
    h.cell = (ts_cell_t){.world = 0, .cx = cx, .cy = 0};
    h.epoch = epoch;
    snprintf(h.from, sizeof h.from, "%s", from);
    snprintf(h.to, sizeof h.to, "%s", to);
    snprintf(h.id, sizeof h.id, "%s", id);
    return h;
}

/* A packed ACK for handover id. */
static size_t ack(uint8_t *buf, size_t cap, const char *id, bool ok, uint64_t seq, uint64_t freeze_us,
                  uint64_t resume_us, const char *error)
{
    Tessera__V1__Handover m = TESSERA__V1__HANDOVER__INIT;
    m.id = (char *)id;
    m.phase = TESSERA__V1__HANDOVER_PHASE__HANDOVER_ACK;
    m.ok = ok;
    m.seq = seq;
    m.freeze_us = freeze_us;
    m.resume_us = resume_us;
    m.entities = 7;
    m.error = (char *)(error ? error : "");
    size_t len = tessera__v1__handover__get_packed_size(&m);
    assert_true(len <= cap);
    tessera__v1__handover__pack(&m, buf);
    return len;
}

static void answer(ts_hos_t *s, const sent_t *to, bool ok, uint64_t seq, uint64_t freeze_us,
                   uint64_t resume_us, uint64_t now)
{
    uint8_t buf[256];
    size_t len = ack(buf, sizeof buf, to->id, ok, seq, freeze_us, resume_us, ok ? NULL : "busy");
    ts_hos_reply(s, to->req, buf, len, now);
}

static const sent_t *last(const fake_t *f)
{
    assert_true(f->nsent > 0);
    return &f->sent[f->nsent - 1];
}

static void assert_sent(const sent_t *s, Tessera__V1__HandoverPhase phase, const char *target)
{
    assert_int_equal(s->phase, phase);
    assert_string_equal(s->target, target);
}

static void test_protocol_order_and_outcome(void **state)
{
    ts_hos_t s;
    fake_t f;
    setup(&s, &f, 4);
    ts_ho_t h = ho(3, "w1", "w2", 5, "h-1");
    assert_int_equal(ts_hos_start(&s, &h, 0), TS_OK);
    assert_int_equal(ts_hos_count(&s), 1);
    assert_sent(last(&f), TESSERA__V1__HANDOVER_PHASE__HANDOVER_PREPARE, "w1");
    assert_string_equal(last(&f)->subject, "cell.0.3.0.0.0.handover");
    assert_int_equal(ts_hos_next_deadline(&s), TIMEOUT_MS * MS);

    answer(&s, last(&f), true, 10, 0, 0, 1 * MS);
    assert_sent(last(&f), TESSERA__V1__HANDOVER_PHASE__HANDOVER_FREEZE, "w1");
    assert_int_equal(f.ncas, 0); /* nothing written before the FREEZE answer */
    answer(&s, last(&f), true, 20, 1000000, 0, 2 * MS);
    assert_int_equal(f.ncas, 1);
    assert_sent(last(&f), TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT, "w2");
    assert_int_equal(last(&f)->new_epoch, 6);
    answer(&s, last(&f), true, 0, 0, 1000700, 3 * MS);
    assert_sent(last(&f), TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT, "w1");
    assert_int_equal(f.ndone, 0);
    answer(&s, last(&f), true, 0, 0, 0, 4 * MS);

    assert_int_equal(f.ndone, 1);
    assert_int_equal(ts_hos_count(&s), 0);
    const ts_ho_t *d = &f.done[0];
    assert_true(d->moved);
    assert_false(d->unanswered);
    assert_int_equal(d->s1, 10);
    assert_int_equal(d->s2, 20);
    assert_int_equal(d->new_epoch, 6);
    assert_int_equal(d->freeze_us, 700);
    assert_int_equal(d->total_us, 3 * MS);
    assert_string_equal(d->reply, "ok w1->w2 epoch 5->6 freeze_us=700 total_us=3000");
    assert_int_equal(f.nsent, 4);
    ts_hos_free(&s);
}

/* Every failure before the CAS ends in ABORT to both and leaves the
 * registry alone; the reply names the cause. */
static void test_failures_before_the_cas_abort_both(void **state)
{
    struct {
        const char *name;
        int fail_at_step; /* 0: PREPARE, 1: FREEZE */
        int how;          /* 0 timeout, 1 refusal, 2 no responders, 3 publish fails, 4 CAS conflict */
        const char *cause;
    } cases[] = {
        {"prepare timeout", 0, 0, "error: PREPARE to w1: no answer; aborted, w1 keeps 0.3.0.0.0 at epoch 5"},
        {"freeze refused", 1, 1, "error: FREEZE refused by w1: busy; aborted, w1 keeps 0.3.0.0.0 at epoch 5"},
        {"no responders", 0, 2, "error: PREPARE to w1: no answer (no responders); aborted"},
        {"publish fails", 0, 3, "error: PREPARE to w1: message bus error; aborted"},
        {"cas conflict", 1, 4,
         "error: the registry changed under the handover (now w9 at epoch 9); aborted, w1 keeps 0.3.0.0.0 at "
         "epoch 5"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ts_hos_t s;
        fake_t f;
        setup(&s, &f, 4);
        ts_ho_t h = ho(3, "w1", "w2", 5, "h-2");
        if (cases[k].how == 3) f.fail_sends = 1;
        if (cases[k].how == 4) {
            f.cas_st = TS_ERR_CONFLICT;
            f.cas_epoch = 9;
        }
        assert_int_equal(ts_hos_start(&s, &h, 0), TS_OK);
        if (cases[k].fail_at_step == 1) answer(&s, last(&f), true, 10, 0, 0, 1 * MS);
        if (cases[k].how == 0)
            ts_hos_expire(&s, TIMEOUT_MS * MS);
        else if (cases[k].how == 1)
            answer(&s, last(&f), false, 0, 0, 0, 2 * MS);
        else if (cases[k].how == 2)
            ts_hos_reply(&s, last(&f)->req, NULL, 0, 2 * MS);
        else if (cases[k].how == 4)
            answer(&s, last(&f), true, 20, 0, 0, 2 * MS);
        /* ABORT to both, then their answers */
        assert_true(f.nsent >= 2);
        const sent_t *a0 = &f.sent[f.nsent - 2], *a1 = &f.sent[f.nsent - 1];
        assert_sent(a0, TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT, "w1");
        assert_sent(a1, TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT, "w2");
        assert_int_equal(f.ndone, 0);
        answer(&s, a1, true, 0, 0, 0, 3 * MS);
        answer(&s, a0, true, 0, 0, 0, 3 * MS);
        assert_int_equal(f.ndone, 1);
        const ts_ho_t *d = &f.done[0];
        assert_false(d->moved);
        assert_false(d->unanswered);
        if (strncmp(d->reply, cases[k].cause, strlen(cases[k].cause)) != 0)
            fail_msg("%s: reply \"%s\", want it to start with \"%s\"", cases[k].name, d->reply,
                     cases[k].cause);
        assert_int_equal(f.ncas, cases[k].how == 4 ? 1 : 0);
        ts_hos_free(&s);
    }
}

static void test_after_the_cas_nothing_rolls_back(void **state)
{
    ts_hos_t s;
    fake_t f;
    setup(&s, &f, 4);
    ts_ho_t h = ho(1, "w1", "w2", 2, "h-3");
    assert_int_equal(ts_hos_start(&s, &h, 0), TS_OK);
    answer(&s, last(&f), true, 1, 0, 0, 1 * MS);
    answer(&s, last(&f), true, 2, 0, 0, 2 * MS);
    /* neither COMMIT is answered: still moved, flagged unanswered, no ABORT */
    ts_hos_expire(&s, 2 * MS + TIMEOUT_MS * MS);
    assert_sent(last(&f), TESSERA__V1__HANDOVER_PHASE__HANDOVER_COMMIT, "w1");
    ts_hos_expire(&s, 3 * MS + 2 * TIMEOUT_MS * MS);
    assert_int_equal(f.ndone, 1);
    assert_true(f.done[0].moved);
    assert_true(f.done[0].unanswered);
    assert_int_equal(f.done[0].freeze_us, 0);
    assert_non_null(strstr(f.done[0].reply, "ok w1->w2 epoch 2->3"));
    for (int i = 0; i < f.nsent; i++)
        assert_int_not_equal(f.sent[i].phase, TESSERA__V1__HANDOVER_PHASE__HANDOVER_ABORT);
    ts_hos_free(&s);
}

static void test_late_and_unknown_answers_are_ignored(void **state)
{
    ts_hos_t s;
    fake_t f;
    setup(&s, &f, 4);
    ts_ho_t h = ho(1, "w1", "w2", 2, "h-4");
    assert_int_equal(ts_hos_start(&s, &h, 0), TS_OK);
    sent_t prepare = *last(&f);
    ts_hos_expire(&s, TIMEOUT_MS * MS); /* PREPARE timed out: aborting */
    int nsent = f.nsent;
    answer(&s, &prepare, true, 1, 0, 0, TIMEOUT_MS * MS + 1); /* too late */
    assert_int_equal(f.nsent, nsent);
    assert_int_equal(f.ncas, 0);
    ts_hos_reply(&s, 999999, NULL, 0, 0); /* nobody asked */
    /* an answer on the right request but for another handover id is malformed */
    uint8_t buf[256];
    size_t len = ack(buf, sizeof buf, "someone-else", true, 0, 0, 0, NULL);
    ts_hos_reply(&s, f.sent[f.nsent - 2].req, buf, len, TIMEOUT_MS * MS + 2);
    answer(&s, last(&f), true, 0, 0, 0, TIMEOUT_MS * MS + 3);
    assert_int_equal(f.ndone, 1);
    assert_true(f.done[0].unanswered); /* the source's ABORT answer was not a valid one */
    ts_hos_free(&s);
}

static void test_several_in_flight_bounded_one_per_cell(void **state)
{
    ts_hos_t s;
    fake_t f;
    setup(&s, &f, 2);
    ts_ho_t a = ho(1, "w1", "w2", 1, "a"), b = ho(2, "w1", "w3", 1, "b"), c = ho(3, "w2", "w1", 1, "c");
    ts_ho_t a2 = ho(1, "w1", "w3", 1, "a2");
    assert_int_equal(ts_hos_start(&s, &a, 0), TS_OK);
    assert_int_equal(ts_hos_start(&s, &a2, 0), TS_ERR_EXISTS);
    assert_int_equal(ts_hos_start(&s, &b, 0), TS_OK);
    assert_int_equal(ts_hos_start(&s, &c, 0), TS_ERR_BUSY);
    assert_true(ts_hos_full(&s));
    assert_non_null(ts_hos_find(&s, &b.cell));
    assert_null(ts_hos_find(&s, &c.cell));
    sent_t pa = f.sent[0], pb = f.sent[1];
    assert_string_equal(pa.id, "a");
    assert_string_equal(pb.id, "b");
    /* b advances while a waits; a's timeout does not touch b */
    answer(&s, &pb, true, 5, 0, 0, 1 * MS);
    assert_sent(last(&f), TESSERA__V1__HANDOVER_PHASE__HANDOVER_FREEZE, "w1");
    sent_t fb = *last(&f);
    ts_hos_expire(&s, TIMEOUT_MS * MS); /* a's PREPARE expires; b's FREEZE is not due */
    const ts_ho_t *hb = ts_hos_find(&s, &b.cell);
    assert_non_null(hb);
    assert_int_equal(hb->state, TS_HO_FREEZE);
    assert_int_equal(ts_hos_find(&s, &a.cell)->state, TS_HO_ABORTING);
    answer(&s, &fb, true, 6, 0, 0, TIMEOUT_MS * MS + 1);
    assert_int_equal(ts_hos_find(&s, &b.cell)->state, TS_HO_COMMIT_TO);
    ts_hos_cancel_all(&s, "lost the leader lock");
    assert_int_equal(ts_hos_count(&s), 0);
    assert_int_equal(f.ndone, 2);
    for (int i = 0; i < 2; i++) {
        if (strcmp(f.done[i].id, "a") == 0)
            assert_string_equal(f.done[i].reply, "error: lost the leader lock");
        else
            assert_true(f.done[i].moved); /* b's CAS had gone through */
    }
    /* a free slot takes the next one */
    assert_int_equal(ts_hos_start(&s, &c, 5 * TIMEOUT_MS * MS), TS_OK);
    ts_hos_free(&s);
}

static void test_failed_abort_publishes_still_finish(void **state)
{
    ts_hos_t s;
    fake_t f;
    setup(&s, &f, 1);
    ts_ho_t h = ho(1, "w1", "w2", 1, "h-5");
    f.fail_sends = 3; /* PREPARE and both ABORTs */
    assert_int_equal(ts_hos_start(&s, &h, 0), TS_OK);
    assert_int_equal(f.ndone, 1);
    assert_true(f.done[0].unanswered);
    assert_false(f.done[0].moved);
    assert_int_equal(ts_hos_count(&s), 0);
    ts_hos_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol_order_and_outcome),
        cmocka_unit_test(test_failures_before_the_cas_abort_both),
        cmocka_unit_test(test_after_the_cas_nothing_rolls_back),
        cmocka_unit_test(test_late_and_unknown_answers_are_ignored),
        cmocka_unit_test(test_several_in_flight_bounded_one_per_cell),
        cmocka_unit_test(test_failed_abort_publishes_still_finish),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
