/* The protobuf-c arena: messages unpacked into it come out intact, large
 * ones that do not fit the block still decode (and the block grows for the
 * next), and a reset makes the memory reusable; ASan checks every byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.pb-c.h"
#include "tessera/arena.h"

/* an InputBatch of n moves and one join, packed */
static uint8_t *batch(size_t n, size_t *len)
{
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    Tessera__V1__Input *in = calloc(n + 1, sizeof(*in));
    Tessera__V1__Input **inp = calloc(n + 1, sizeof(*inp));
    Tessera__V1__MoveInput mv = TESSERA__V1__MOVE_INPUT__INIT;
    Tessera__V1__JoinInput jn = TESSERA__V1__JOIN_INPUT__INIT;
    assert_non_null(in);
    assert_non_null(inp);
    mv.dx = 1.5;
    mv.dy = -2.5;
    char name[] = "a player with a name";
    jn.name = name;
    for (size_t i = 0; i <= n; i++) {
        tessera__v1__input__init(&in[i]);
        in[i].entity = 1000 + i;
        in[i].seq = i + 1;
        if (i == n) {
            in[i].kind_case = TESSERA__V1__INPUT__KIND_JOIN;
            in[i].join = &jn;
        } else {
            in[i].kind_case = TESSERA__V1__INPUT__KIND_MOVE;
            in[i].move = &mv;
        }
        inp[i] = &in[i];
    }
    b.n_inputs = n + 1;
    b.inputs = inp;
    *len = protobuf_c_message_get_packed_size(&b.base);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    assert_int_equal(protobuf_c_message_pack(&b.base, buf), *len);
    free(in);
    free(inp);
    return buf;
}

static void check(const Tessera__V1__InputBatch *b, size_t n)
{
    assert_non_null(b);
    assert_int_equal(b->n_inputs, n + 1);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(b->inputs[i]->entity, 1000 + i);
        assert_int_equal(b->inputs[i]->seq, i + 1);
        assert_int_equal(b->inputs[i]->kind_case, TESSERA__V1__INPUT__KIND_MOVE);
        assert_true(b->inputs[i]->move->dx == 1.5 && b->inputs[i]->move->dy == -2.5);
    }
    assert_string_equal(b->inputs[n]->join->name, "a player with a name");
}

static void test_unpack_reset_reuse(void **state)
{
    (void)state;
    ts_arena_t a;
    ts_arena_init(&a);
    size_t sizes[] = {1, 50, 20000, 3, 20000, 0};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t len;
        uint8_t *buf = batch(sizes[k], &len);
        Tessera__V1__InputBatch *b = tessera__v1__input_batch__unpack(ts_arena_allocator(&a), len, buf);
        check(b, sizes[k]);
        ts_arena_reset(&a);
        free(buf);
    }
    /* the block grew to what the 20,000-input batch needed */
    assert_true(a.cap >= 20000 * sizeof(Tessera__V1__Input));
    assert_null(a.big);
    ts_arena_free(&a);
}

static void test_alignment_and_garbage(void **state)
{
    (void)state;
    ts_arena_t a;
    ts_arena_init(&a);
    for (size_t n = 1; n < 300; n += 7) {
        void *p = ts_arena_alloc(&a, n);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xab, n);
    }
    ts_arena_reset(&a);
    /* a truncated message fails to decode and leaks nothing */
    size_t len;
    uint8_t *buf = batch(100, &len);
    assert_null(tessera__v1__input_batch__unpack(ts_arena_allocator(&a), len / 2, buf));
    ts_arena_reset(&a);
    free(buf);
    ts_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unpack_reset_reuse),
        cmocka_unit_test(test_alignment_and_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
