/* services/gateway/fanout.c: a client's Delta spliced from per-cell blocks
 * decodes, with a stock protobuf decoder, to exactly the entities and
 * removed ids it should, for several clients sharing the same blocks; large
 * views split at block cuts; keyframe parts complete only when all arrived. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fanout.h"

static void entity(Tessera__V1__EntityState *e, uint64_t id)
{
    tessera__v1__entity_state__init(e);
    e->id = id;
    e->x = (double)id * 1.5;
    e->y = -(double)id;
    e->vx = 0.25;
    e->last_input_seq = id * 10;
    e->inputs_applied = id * 3;
    e->name = (char *)"p";
}

static bool reserve_ok(gw_blk_t *b, size_t more)
{
    if (b->len + more <= b->cap) return true;
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *v = realloc(b->data, cap);
    if (v == NULL) return false;
    b->data = v;
    b->cap = cap;
    return true;
}

static void fill_block(gw_blk_t *b, uint64_t first, size_t n)
{
    gw_blk_reset(b);
    for (size_t i = 0; i < n; i++) {
        Tessera__V1__EntityState e;
        entity(&e, first + i);
        assert_int_equal(gw_blk_add(b, &e), TS_OK);
    }
    assert_int_equal(gw_blk_seal(b), TS_OK);
}

/* Concatenates head + blocks + removed into one frame, checks the length
 * prefix, and decodes the ServerFrame after it (caller frees). */
static Tessera__V1__ServerFrame *splice(uint64_t seq, uint64_t epoch, const ts_cell_t *cell, int payload,
                                        uint64_t field1, const gw_blk_t **blks, size_t nblks,
                                        const uint64_t *rm, size_t nrm)
{
    size_t rest = gw_removed_len(rm, nrm);
    for (size_t i = 0; i < nblks; i++)
        rest += blks[i]->len;
    uint8_t head[GW_FRAME_HEAD_MAX];
    size_t flen = 0;
    size_t hl = gw_frame_head(head, seq, epoch, cell, payload, field1, rest, &flen);
    assert_true(hl <= GW_FRAME_HEAD_MAX);
    assert_int_equal(flen, hl + rest);
    uint8_t *buf = malloc(flen);
    assert_non_null(buf);
    memcpy(buf, head, hl);
    size_t off = hl;
    for (size_t i = 0; i < nblks; i++) {
        memcpy(buf + off, blks[i]->data, blks[i]->len);
        off += blks[i]->len;
    }
    off += gw_removed_put(buf + off, rm, nrm);
    assert_int_equal(off, flen);
    uint32_t prefix = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
    assert_int_equal(prefix, flen - 4);
    Tessera__V1__ServerFrame *f = tessera__v1__server_frame__unpack(NULL, flen - 4, buf + 4);
    free(buf);
    assert_non_null(f);
    return f;
}

static void expect_entities(Tessera__V1__EntityState **got, size_t n, const uint64_t *ids, size_t nids)
{
    assert_int_equal(n, nids);
    for (size_t i = 0; i < n; i++) {
        Tessera__V1__EntityState want;
        entity(&want, ids[i]);
        assert_int_equal(got[i]->id, want.id);
        assert_true(got[i]->x == want.x && got[i]->y == want.y && got[i]->vx == want.vx);
        assert_int_equal(got[i]->last_input_seq, want.last_input_seq);
        assert_int_equal(got[i]->inputs_applied, want.inputs_applied);
        assert_string_equal(got[i]->name, "p");
    }
}

static void test_clients_share_cell_blocks(void **state)
{
    (void)state;
    gw_blk_t a = {0}, b = {0}, c = {0};
    fill_block(&a, 1, 3);   /* cell A: 1 2 3 */
    fill_block(&b, 100, 2); /* cell B: 100 101 */
    fill_block(&c, 500, 1); /* cell C: 500 */
    ts_cell_t cell = {.world = 7, .cx = -3, .cy = 4, .depth = 0, .sub = 0};

    /* client 1 sees A, B and C and lost two entities */
    const gw_blk_t *v1[] = {&a, &b, &c};
    uint64_t rm1[] = {42, 300000000000ull};
    Tessera__V1__ServerFrame *f = splice(9, 12, &cell, GW_PAYLOAD_DELTA, 77, v1, 3, rm1, 2);
    assert_int_equal(f->seq, 9);
    assert_int_equal(f->epoch, 12);
    assert_non_null(f->cell);
    assert_int_equal(f->cell->world, 7);
    assert_int_equal(f->cell->cx, -3);
    assert_int_equal(f->cell->cy, 4);
    assert_int_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA);
    assert_int_equal(f->delta->tick, 77);
    uint64_t want1[] = {1, 2, 3, 100, 101, 500};
    expect_entities(f->delta->entities, f->delta->n_entities, want1, 6);
    assert_int_equal(f->delta->n_removed, 2);
    assert_int_equal(f->delta->removed[0], 42);
    assert_int_equal(f->delta->removed[1], 300000000000ull);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    /* client 2 sees only B and A (other order), nothing removed */
    const gw_blk_t *v2[] = {&b, &a};
    f = splice(1, 1, &cell, GW_PAYLOAD_DELTA, 78, v2, 2, NULL, 0);
    uint64_t want2[] = {100, 101, 1, 2, 3};
    expect_entities(f->delta->entities, f->delta->n_entities, want2, 5);
    assert_int_equal(f->delta->n_removed, 0);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    /* client 3: nothing changed around it but an entity left its view */
    uint64_t rm3[] = {5};
    f = splice(300, 2, &cell, GW_PAYLOAD_DELTA, 79, NULL, 0, rm3, 1);
    assert_int_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA);
    assert_int_equal(f->delta->n_entities, 0);
    assert_int_equal(f->delta->n_removed, 1);
    assert_int_equal(f->delta->removed[0], 5);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    /* the blocks were not changed by being spliced three times */
    assert_int_equal(a.count, 3);
    assert_int_equal(b.count, 2);
    gw_blk_free(&a);
    gw_blk_free(&b);
    gw_blk_free(&c);
}

static void test_snapshot_head(void **state)
{
    (void)state;
    gw_blk_t a = {0};
    fill_block(&a, 10, 2);
    ts_cell_t cell = {.world = 0, .cx = 0, .cy = 0};
    const gw_blk_t *v[] = {&a};
    Tessera__V1__ServerFrame *f = splice(1, 3, &cell, GW_PAYLOAD_SNAPSHOT, 0x1234567890ull, v, 1, NULL, 0);
    assert_int_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT);
    assert_int_equal(f->snapshot->entity, 0x1234567890ull);
    uint64_t want[] = {10, 11};
    expect_entities(f->snapshot->entities, f->snapshot->n_entities, want, 2);
    tessera__v1__server_frame__free_unpacked(f, NULL);

    /* a Snapshot of an empty area still names the entity */
    f = splice(2, 3, &cell, GW_PAYLOAD_SNAPSHOT, 99, NULL, 0, NULL, 0);
    assert_int_equal(f->snapshot->entity, 99);
    assert_int_equal(f->snapshot->n_entities, 0);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    gw_blk_free(&a);
}

/* A large block is cut at entity boundaries; each piece spliced alone
 * decodes to a run of whole entities, and all pieces to all entities. */
static void test_cuts_split_at_entities(void **state)
{
    (void)state;
    gw_blk_t big = {0};
    size_t n = 2000;
    fill_block(&big, 1, n);
    assert_true(big.ncuts > 2);
    assert_int_equal(big.cuts[big.ncuts - 1], big.len);
    uint64_t next = 1;
    size_t start = 0;
    ts_cell_t cell = {.world = 1};
    for (size_t i = 0; i < big.ncuts; i++) {
        assert_true(big.cuts[i] - start <= GW_BLK_CUT_BYTES + 256);
        gw_blk_t piece = {.data = big.data + start, .len = big.cuts[i] - start};
        const gw_blk_t *v[] = {&piece};
        Tessera__V1__ServerFrame *f = splice(i + 1, 1, &cell, GW_PAYLOAD_DELTA, 5, v, 1, NULL, 0);
        assert_true(f->delta->n_entities > 0);
        for (size_t k = 0; k < f->delta->n_entities; k++)
            assert_int_equal(f->delta->entities[k]->id, next++);
        tessera__v1__server_frame__free_unpacked(f, NULL);
        start = big.cuts[i];
    }
    assert_int_equal(next, n + 1);

    /* reset keeps the memory and starts over */
    uint8_t *mem = big.data;
    fill_block(&big, 7, 1);
    assert_ptr_equal(big.data, mem);
    assert_int_equal(big.count, 1);
    assert_int_equal(big.ncuts, 1);
    gw_blk_free(&big);
}

/* A client whose area of interest cuts a cell takes some entries of the
 * shared block by their recorded byte ranges: the spliced Delta decodes to
 * exactly those entities, with the positions the index recorded. */
static void test_block_index_picks_entities(void **state)
{
    (void)state;
    gw_blk_t b = {0};
    fill_block(&b, 1, 200);
    assert_int_equal(b.count, 200);
    size_t covered = 0;
    for (size_t i = 0; i < b.count; i++) {
        Tessera__V1__EntityState want;
        entity(&want, 1 + i);
        assert_int_equal(b.ents[i].id, want.id);
        assert_true(b.ents[i].x == want.x && b.ents[i].y == want.y);
        assert_int_equal(b.ents[i].off, covered); /* entries tile the block in order */
        covered += b.ents[i].len;
    }
    assert_int_equal(covered, b.len);

    /* every third entity, adjacent ones joined as the gateway does */
    gw_blk_t pick = {0};
    uint64_t ids[80];
    size_t nids = 0;
    for (size_t i = 0; i < b.count; i++) {
        if (i % 3 == 1) continue;
        assert_true(reserve_ok(&pick, b.ents[i].len));
        memcpy(pick.data + pick.len, b.data + b.ents[i].off, b.ents[i].len);
        pick.len += b.ents[i].len;
        if (nids < 80 && i < 120) ids[nids++] = b.ents[i].id;
        if (i >= 119) break;
    }
    const gw_blk_t *blks[] = {&pick};
    const ts_cell_t cell = {.world = 0, .cx = 1, .cy = 2, .depth = 2, .sub = 9};
    Tessera__V1__ServerFrame *f = splice(7, 3, &cell, GW_PAYLOAD_DELTA, 42, blks, 1, NULL, 0);
    assert_int_equal(f->payload_case, TESSERA__V1__SERVER_FRAME__PAYLOAD_DELTA);
    expect_entities(f->delta->entities, f->delta->n_entities, ids, nids);
    tessera__v1__server_frame__free_unpacked(f, NULL);
    free(pick.data);
    gw_blk_free(&b);
}

static void test_varints(void **state)
{
    (void)state;
    uint64_t vals[] = {0, 1, 127, 128, 16383, 16384, UINT32_MAX, UINT64_MAX};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        uint8_t buf[10];
        size_t n = gw_pb_varint(buf, vals[i]);
        assert_int_equal(n, gw_pb_varint_len(vals[i]));
        uint64_t v = 0;
        for (size_t k = 0; k < n; k++)
            v |= (uint64_t)(buf[k] & 0x7f) << (7 * k);
        assert_true(v == vals[i]);
    }
    assert_int_equal(gw_removed_len(NULL, 0), 0);
}

static void test_keyframe_unchunked(void **state)
{
    (void)state;
    gw_kf_t kf = {0};
    assert_int_equal(gw_kf_note(&kf, 3, 100, 0, 0), GW_KF_BEGIN | GW_KF_DONE);
    assert_int_equal(gw_kf_note(&kf, 3, 120, 0, 1), GW_KF_BEGIN | GW_KF_DONE);
}

static void test_keyframe_parts(void **state)
{
    (void)state;
    gw_kf_t kf = {0};
    /* three parts of tick 200: complete only with the last */
    assert_int_equal(gw_kf_note(&kf, 5, 200, 0, 3), GW_KF_BEGIN);
    assert_int_equal(gw_kf_note(&kf, 5, 200, 1, 3), GW_KF_PART);
    assert_int_equal(gw_kf_note(&kf, 5, 200, 1, 3), GW_KF_PART); /* repeated: not counted */
    assert_int_equal(gw_kf_note(&kf, 5, 200, 2, 3), GW_KF_DONE);

    /* a part missing: the next keyframe starts over, never completes the old */
    assert_int_equal(gw_kf_note(&kf, 5, 220, 0, 2), GW_KF_BEGIN);
    assert_int_equal(gw_kf_note(&kf, 5, 240, 1, 2), GW_KF_BEGIN);
    assert_int_equal(gw_kf_note(&kf, 5, 240, 0, 2), GW_KF_DONE);

    /* same tick at a new epoch (new owner) is a different keyframe */
    assert_int_equal(gw_kf_note(&kf, 5, 260, 0, 2), GW_KF_BEGIN);
    assert_int_equal(gw_kf_note(&kf, 6, 260, 1, 2), GW_KF_BEGIN);
    assert_int_equal(gw_kf_note(&kf, 6, 260, 0, 2), GW_KF_DONE);

    /* out-of-order parts complete too; a part index past parts is ignored */
    assert_int_equal(gw_kf_note(&kf, 6, 280, 2, 3), GW_KF_BEGIN);
    assert_int_equal(gw_kf_note(&kf, 6, 280, 7, 3), GW_KF_PART);
    assert_int_equal(gw_kf_note(&kf, 6, 280, 0, 3), GW_KF_PART);
    assert_int_equal(gw_kf_note(&kf, 6, 280, 1, 3), GW_KF_DONE);

    /* many parts */
    int r = 0;
    for (uint32_t p = 0; p < 100; p++) {
        r = gw_kf_note(&kf, 6, 300, p, 100);
        assert_int_equal(r & GW_KF_BEGIN, p == 0 ? GW_KF_BEGIN : 0);
        assert_int_equal(r & GW_KF_DONE, p == 99 ? GW_KF_DONE : 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clients_share_cell_blocks),  cmocka_unit_test(test_snapshot_head),
        cmocka_unit_test(test_cuts_split_at_entities),     cmocka_unit_test(test_varints),
        cmocka_unit_test(test_keyframe_unchunked),         cmocka_unit_test(test_keyframe_parts),
        cmocka_unit_test(test_block_index_picks_entities),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
