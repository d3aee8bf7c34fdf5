/* `tessera-ctl decode`: the subject picks the message type, the output is
 * one readable line (or one JSON object) with the fields that are set, and
 * anything else is a clear error rather than a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ctl.h"
#include "tessera/proto.h"

typedef struct {
    char *text;
    ts_status_t st;
    char err[512];
} out_t;

static out_t decode(const char *subject, const ProtobufCMessage *msg, const uint8_t *raw, size_t rawlen,
                    bool json)
{
    out_t o = {0};
    uint8_t *buf = NULL;
    size_t len = rawlen;
    if (msg) assert_int_equal(ts_proto_pack(msg, &buf, &len), TS_OK);
    size_t size = 0;
    FILE *f = open_memstream(&o.text, &size);
    assert_non_null(f);
    o.st = ts_ctl_decode_payload(subject, msg ? buf : raw, len, json, f, o.err, sizeof o.err);
    fclose(f);
    free(buf);
    return o;
}

static void contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle)) fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

static void test_input_batch_text(void **state)
{
    ts_cell_t c = {.world = 0, .cx = -1, .cy = 0};
    Tessera__V1__CellId cell;
    ts_proto_cell_init(&cell, &c);
    Tessera__V1__JoinInput join = TESSERA__V1__JOIN_INPUT__INIT;
    join.x = 1.5;
    join.y = -2;
    join.name = (char *)"ann \"a\"";
    Tessera__V1__MoveInput move = TESSERA__V1__MOVE_INPUT__INIT;
    move.dx = 3;
    Tessera__V1__Input in[2] = {TESSERA__V1__INPUT__INIT, TESSERA__V1__INPUT__INIT};
    in[0].entity = 0x5150000100000002ULL;
    in[0].seq = 1;
    in[0].kind_case = TESSERA__V1__INPUT__KIND_JOIN;
    in[0].join = &join;
    in[1].entity = 7;
    in[1].seq = 2;
    in[1].kind_case = TESSERA__V1__INPUT__KIND_MOVE;
    in[1].move = &move;
    Tessera__V1__Input *inp[2] = {&in[0], &in[1]};
    Tessera__V1__InputBatch b = TESSERA__V1__INPUT_BATCH__INIT;
    b.cell = &cell;
    b.n_inputs = 2;
    b.inputs = inp;

    out_t o = decode("cell.0.-1.0.0.0.input", &b.base, NULL, 0, false);
    assert_int_equal(o.st, TS_OK);
    contains(o.text, "cell.0.-1.0.0.0.input tessera.v1.InputBatch {");
    contains(o.text, "cell=0.-1.0.0.0");
    contains(o.text, "inputs=[{entity=5859183119503982594 seq=1 join={x=1.5 y=-2 name=\"ann \\\"a\\\"\"}}");
    contains(o.text, "{entity=7 seq=2 move={dx=3}}]");
    assert_null(strstr(o.text, "transfers")); /* empty fields are left out */
    assert_null(strstr(o.text, "dy="));
    assert_int_equal(strchr(o.text, '\n') - o.text, (long)strlen(o.text) - 1); /* one line */
    free(o.text);
}

static void test_heartbeat_json(void **state)
{
    Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
    hb.worker = (char *)"w1";
    hb.ticks = 42;
    hb.entities = 3;
    hb.tick_p99_ms = 0.25;
    ts_cell_t c = {.world = 0, .cx = 1, .cy = -2};
    Tessera__V1__CellId cell;
    ts_proto_cell_init(&cell, &c);
    Tessera__V1__CellLoad load = TESSERA__V1__CELL_LOAD__INIT, *loadp = &load;
    load.cell = &cell;
    load.entities = 3;
    hb.n_cells = 1;
    hb.cells = &loadp;

    out_t o = decode("tessera.worker.w1.hb", &hb.base, NULL, 0, true);
    assert_int_equal(o.st, TS_OK);
    contains(o.text, "{\"subject\":\"tessera.worker.w1.hb\",\"type\":\"tessera.v1.Heartbeat\",\"message\":{");
    contains(o.text, "\"worker\":\"w1\"");
    contains(o.text, "\"ticks\":\"42\""); /* 64-bit integers are strings in proto3 JSON */
    contains(o.text, "\"entities\":3");
    contains(o.text, "\"tick_p99_ms\":0.25");
    contains(o.text, "\"cells\":[{\"cell\":\"0.1.-2.0.0\",\"entities\":3}]");
    assert_string_equal(o.text + strlen(o.text) - 3, "}}\n");
    free(o.text);
}

static void test_registry_change_and_state(void **state)
{
    Tessera__V1__RegistryChange rc = TESSERA__V1__REGISTRY_CHANGE__INIT;
    rc.world = 0;
    rc.version = 17;
    rc.owner = (char *)"w2";
    rc.epoch = 2;
    rc.state = TESSERA__V1__CELL_STATE__CELL_HANDOVER;
    out_t o = decode("tessera.registry.0", &rc.base, NULL, 0, false);
    assert_int_equal(o.st, TS_OK);
    contains(o.text, "tessera.v1.RegistryChange {version=17 owner=\"w2\" epoch=2 state=CELL_HANDOVER}");
    free(o.text);

    /* an empty payload is a valid (all-default) message */
    o = decode("cell.0.0.0.0.0.state", NULL, (const uint8_t *)"", 0, false);
    assert_int_equal(o.st, TS_OK);
    assert_string_equal(o.text, "cell.0.0.0.0.0.state tessera.v1.StateDelta {}\n");
    free(o.text);

    o = decode("cell.0.0.0.0.0.checkpoint", NULL, (const uint8_t *)"", 0, true);
    assert_int_equal(o.st, TS_OK);
    contains(o.text, "\"type\":\"tessera.v1.Checkpoint\"");
    free(o.text);
}

static void test_bad_subjects_and_payloads(void **state)
{
    const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f};
    const char *bad_subjects[] = {"foo.bar",
                                  "cell.0.0.0",
                                  "tessera.worker..hb",
                                  "tessera.worker.a.b.hb",
                                  "tessera.registry.",
                                  "tessera.registry.0.x",
                                  ""};
    for (size_t i = 0; i < sizeof bad_subjects / sizeof bad_subjects[0]; i++) {
        out_t o = decode(bad_subjects[i], NULL, junk, sizeof junk, false);
        assert_int_equal(o.st, TS_ERR_INVALID);
        contains(o.err, "no known message type");
        assert_string_equal(o.text, "");
        free(o.text);
    }
    out_t o = decode("cell.0.0.0.0.0.ghost", NULL, junk, sizeof junk, false);
    assert_int_equal(o.st, TS_ERR_MALFORMED);
    contains(o.err, "not a valid tessera.v1.GhostDelta");
    free(o.text);
    o = decode("cell.0.0.0.0.0.handover", NULL, junk, sizeof junk, false);
    assert_int_equal(o.st, TS_ERR_MALFORMED);
    contains(o.err, "not a valid tessera.v1.Handover");
    free(o.text);

    o = decode("cell.0.0.0.0.0.input", NULL, junk, sizeof junk, false);
    assert_int_equal(o.st, TS_ERR_MALFORMED);
    contains(o.err, "not a valid tessera.v1.InputBatch");
    assert_string_equal(o.text, "");
    free(o.text);
}

static void test_decode_reads_stdin_stream(void **state)
{
    Tessera__V1__RegistryChange rc = TESSERA__V1__REGISTRY_CHANGE__INIT;
    rc.version = 3;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(ts_proto_pack(&rc.base, &buf, &len), TS_OK);
    FILE *in = fmemopen(buf, len, "r");
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    assert_int_equal(ts_ctl_decode("tessera.registry.9", false, in, out), 0);
    fclose(in);
    fclose(out);
    assert_string_equal(text, "tessera.registry.9 tessera.v1.RegistryChange {version=3}\n");
    free(text);
    free(buf);

    in = fmemopen((void *)"\xff\xff", 2, "r");
    text = NULL;
    out = open_memstream(&text, &size);
    assert_int_equal(ts_ctl_decode("tessera.registry.9", false, in, out), 1);
    fclose(in);
    fclose(out);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_input_batch_text),          cmocka_unit_test(test_heartbeat_json),
        cmocka_unit_test(test_registry_change_and_state), cmocka_unit_test(test_bad_subjects_and_payloads),
        cmocka_unit_test(test_decode_reads_stdin_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
