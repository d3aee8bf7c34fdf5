/* Writes the seed corpora of the fuzz targets into DIR/<target>/ (what is
 * committed under tests/fuzz/corpus): real messages the services produce,
 * packed by the same code, so fuzzing starts from valid inputs and mutates
 * from there. Usage: fuzz_gen_seeds DIR */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tessera/frame.h"
#include "tessera/proto.h"
#include "tessera/registry.h"
#include "zone.h"

static const char *root;

static void put(const char *target, const char *name, uint8_t prefix, bool with_prefix, const void *data,
                size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", root, target, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        exit(1);
    }
    if (with_prefix) fputc(prefix, f);
    fwrite(data, 1, len, f);
    fclose(f);
}

static void pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len)
{
    if (ts_proto_pack(m, buf, len) != TS_OK) exit(1);
}

/* A zone-record for fuzz_worker_zone: kind, 16-bit length, payload. */
static size_t record(uint8_t *out, uint8_t kind, const uint8_t *p, size_t len)
{
    out[0] = kind;
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)len;
    if (len > 0) memcpy(out + 3, p, len);
    return len + 3;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    root = argv[1];
    mkdir(root, 0755);
    ts_cell_t c0 = {.world = 0, .cx = 0, .cy = 0};
    Tessera__V1__CellId cid;
    ts_proto_cell_init(&cid, &c0);

    /* an input batch: a join, a move, a leave */
    Tessera__V1__JoinInput join = TESSERA__V1__JOIN_INPUT__INIT;
    join.x = 10;
    join.y = 20;
    join.name = (char *)"p1";
    Tessera__V1__MoveInput move = TESSERA__V1__MOVE_INPUT__INIT;
    move.dx = 1;
    move.dy = -1;
    Tessera__V1__LeaveInput leave = TESSERA__V1__LEAVE_INPUT__INIT;
    Tessera__V1__Input in[3] = {TESSERA__V1__INPUT__INIT, TESSERA__V1__INPUT__INIT, TESSERA__V1__INPUT__INIT};
    for (int i = 0; i < 3; i++) {
        in[i].entity = 7;
        in[i].seq = (uint64_t)i + 1;
    }
    in[0].kind_case = TESSERA__V1__INPUT__KIND_JOIN;
    in[0].join = &join;
    in[1].kind_case = TESSERA__V1__INPUT__KIND_MOVE;
    in[1].move = &move;
    in[2].kind_case = TESSERA__V1__INPUT__KIND_LEAVE;
    in[2].leave = &leave;
    Tessera__V1__Input *inputs[3] = {&in[0], &in[1], &in[2]};
    Tessera__V1__InputBatch batch = TESSERA__V1__INPUT_BATCH__INIT;
    batch.cell = &cid;
    batch.n_inputs = 2;
    batch.inputs = inputs;
    uint8_t *b_join = NULL, *b_leave = NULL;
    size_t n_join = 0, n_leave = 0;
    pack(&batch.base, &b_join, &n_join);
    batch.n_inputs = 1;
    batch.inputs = &inputs[2];
    pack(&batch.base, &b_leave, &n_leave);

    /* a zone with players, for real deltas and checkpoints */
    ts_world_t world = {.id = 0, .cell_size = 100, .x0 = -2, .y0 = -2, .width = 4, .height = 4};
    ts_zone_t *z = NULL;
    if (ts_zone_create(&z, &c0, 1, &world, 50) != TS_OK) return 1;
    Tessera__V1__InputBatch *decoded = tessera__v1__input_batch__unpack(NULL, n_join, b_join);
    ts_zone_apply_batch(z, 1, decoded, 1);
    tessera__v1__input_batch__free_unpacked(decoded, NULL);
    ts_zone_step(z, 0.05, 2);
    uint8_t **parts = NULL;
    size_t *lens = NULL, nparts = 0;
    if (ts_zone_pack_delta(z, 2, true, "w1", &parts, &lens, &nparts) != TS_OK || nparts == 0) return 1;
    uint8_t *delta = parts[0];
    size_t n_delta = lens[0];
    uint8_t **cparts = NULL;
    size_t *clens = NULL, ncparts = 0;
    if (ts_zone_pack_checkpoint_parts(z, 2, "w1", false, 1, &cparts, &clens, &ncparts) != TS_OK) return 1;
    uint8_t *ckpt = cparts[0];
    size_t n_ckpt = clens[0];

    Tessera__V1__Heartbeat hb = TESSERA__V1__HEARTBEAT__INIT;
    Tessera__V1__CellLoad load = TESSERA__V1__CELL_LOAD__INIT;
    Tessera__V1__CellLoad *loads[1] = {&load};
    load.cell = &cid;
    load.epoch = 3;
    load.entities = 1;
    hb.worker = (char *)"w1";
    hb.ticks = 100;
    hb.n_cells = 1;
    hb.cells = loads;
    hb.instance = (char *)"abc";
    uint8_t *b_hb = NULL;
    size_t n_hb = 0;
    pack(&hb.base, &b_hb, &n_hb);

    Tessera__V1__RegistryChange rc = TESSERA__V1__REGISTRY_CHANGE__INIT;
    rc.world = 0;
    rc.version = 9;
    rc.cell = &cid;
    rc.owner = (char *)"w2";
    rc.epoch = 4;
    uint8_t *b_rc = NULL;
    size_t n_rc = 0;
    pack(&rc.base, &b_rc, &n_rc);

    Tessera__V1__Handover ho = TESSERA__V1__HANDOVER__INIT;
    ho.id = (char *)"h1";
    ho.phase = TESSERA__V1__HANDOVER_PHASE__HANDOVER_PRECOPY;
    ho.cell = &cid;
    ho.epoch = 1;
    ho.from = (char *)"w1";
    ho.to = (char *)"w2";
    ho.snapshot.data = ckpt;
    ho.snapshot.len = n_ckpt;
    ho.seq = 1;
    uint8_t *b_ho = NULL;
    size_t n_ho = 0;
    pack(&ho.base, &b_ho, &n_ho);

    Tessera__V1__GatewayAlive ga = TESSERA__V1__GATEWAY_ALIVE__INIT;
    ga.gateway = 1;
    ga.instance = 42;
    ga.name = (char *)"gw1";
    uint8_t *b_ga = NULL;
    size_t n_ga = 0;
    pack(&ga.base, &b_ga, &n_ga);

    Tessera__V1__GhostDelta gd = TESSERA__V1__GHOST_DELTA__INIT;
    gd.cell = &cid;
    gd.epoch = 3;
    gd.tick = 40;
    gd.full = true;
    Tessera__V1__EntityState ge[2] = {TESSERA__V1__ENTITY_STATE__INIT, TESSERA__V1__ENTITY_STATE__INIT};
    ge[0].id = 7;
    ge[0].x = 63.5;
    ge[0].y = 10;
    ge[0].vx = 1;
    ge[1].id = 8;
    ge[1].x = 0.5;
    ge[1].y = 62;
    ge[1].vy = -1;
    Tessera__V1__EntityState *gep[2] = {&ge[0], &ge[1]};
    gd.n_entities = 2;
    gd.entities = gep;
    uint64_t gone[] = {9, 10};
    gd.n_removed = 2;
    gd.removed = gone;
    gd.keyframe_ticks = 10;
    gd.owner = (char *)"w1";
    uint8_t *b_gd = NULL;
    size_t n_gd = 0;
    pack(&gd.base, &b_gd, &n_gd);

    /* fuzz_bus_proto: type byte + payload */
    put("fuzz_bus_proto", "input_batch", 0, true, b_join, n_join);
    put("fuzz_bus_proto", "input_leave", 0, true, b_leave, n_leave);
    put("fuzz_bus_proto", "state_delta", 1, true, delta, n_delta);
    put("fuzz_bus_proto", "checkpoint", 2, true, ckpt, n_ckpt);
    put("fuzz_bus_proto", "heartbeat", 3, true, b_hb, n_hb);
    put("fuzz_bus_proto", "registry_change", 4, true, b_rc, n_rc);
    put("fuzz_bus_proto", "handover_precopy", 5, true, b_ho, n_ho);
    put("fuzz_bus_proto", "ghost_delta", 6, true, b_gd, n_gd);
    put("fuzz_bus_proto", "gateway_alive", 7, true, b_ga, n_ga);

    /* fuzz_ctl_decode: subject byte (index << 1 | json) + payload */
    put("fuzz_ctl_decode", "input", 0 << 1, true, b_join, n_join);
    put("fuzz_ctl_decode", "state_json", 1 << 1 | 1, true, delta, n_delta);
    put("fuzz_ctl_decode", "checkpoint", 2 << 1, true, ckpt, n_ckpt);
    put("fuzz_ctl_decode", "handover", 3 << 1, true, b_ho, n_ho);
    put("fuzz_ctl_decode", "heartbeat_json", 4 << 1 | 1, true, b_hb, n_hb);
    put("fuzz_ctl_decode", "registry", 5 << 1, true, b_rc, n_rc);

    /* fuzz_worker_zone: records */
    uint8_t zbuf[65536];
    size_t zn = 0;
    zn += record(zbuf + zn, 1, ckpt, n_ckpt);
    zn += record(zbuf + zn, 0, b_join, n_join);
    zn += record(zbuf + zn, 3, NULL, 0);
    zn += record(zbuf + zn, 0, b_leave, n_leave);
    zn += record(zbuf + zn, 3, NULL, 0);
    put("fuzz_worker_zone", "ckpt_join_step_leave", 0, false, zbuf, zn);
    zn = record(zbuf, 0, b_join, n_join);
    zn += record(zbuf + zn, 2, ckpt, n_ckpt);
    zn += record(zbuf + zn, 3, NULL, 0);
    put("fuzz_worker_zone", "join_diff_step", 0, false, zbuf, zn);

    /* fuzz_client_frame: direction byte + framed ClientFrames / ServerFrames */
    Tessera__V1__Hello hello = TESSERA__V1__HELLO__INIT;
    hello.protocol_version = 1;
    hello.client_name = (char *)"fuzz";
    Tessera__V1__Join cjoin = TESSERA__V1__JOIN__INIT;
    cjoin.x = 5;
    cjoin.y = 5;
    cjoin.name = (char *)"me";
    Tessera__V1__Move cmove = TESSERA__V1__MOVE__INIT;
    cmove.dx = 1;
    Tessera__V1__Ping ping = TESSERA__V1__PING__INIT;
    ping.client_time_us = 123;
    Tessera__V1__ClientFrame cf[4] = {TESSERA__V1__CLIENT_FRAME__INIT, TESSERA__V1__CLIENT_FRAME__INIT,
                                      TESSERA__V1__CLIENT_FRAME__INIT, TESSERA__V1__CLIENT_FRAME__INIT};
    cf[0].payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_HELLO;
    cf[0].hello = &hello;
    cf[1].payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_JOIN;
    cf[1].join = &cjoin;
    cf[2].payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_MOVE;
    cf[2].move = &cmove;
    cf[2].cell = &cid;
    cf[3].payload_case = TESSERA__V1__CLIENT_FRAME__PAYLOAD_PING;
    cf[3].ping = &ping;
    uint8_t stream[4096];
    size_t sn = 0;
    for (int i = 0; i < 4; i++) {
        cf[i].seq = (uint64_t)i + 1;
        uint8_t *p = NULL;
        size_t n = 0;
        pack(&cf[i].base, &p, &n);
        ts_frame_put_header(stream + sn, (uint32_t)n);
        memcpy(stream + sn + TS_FRAME_HEADER, p, n);
        sn += TS_FRAME_HEADER + n;
        free(p);
    }
    put("fuzz_client_frame", "hello_join_move_ping", 0, true, stream, sn);
    Tessera__V1__Welcome wel = TESSERA__V1__WELCOME__INIT;
    wel.protocol_version = 1;
    wel.entity = 7;
    wel.cell_size = 100;
    wel.gateway = (char *)"gw";
    Tessera__V1__ServerFrame sf = TESSERA__V1__SERVER_FRAME__INIT;
    sf.seq = 1;
    sf.payload_case = TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME;
    sf.welcome = &wel;
    sf.cell = &cid;
    uint8_t *b_sf = NULL;
    size_t n_sf = 0;
    pack(&sf.base, &b_sf, &n_sf);
    ts_frame_put_header(stream, (uint32_t)n_sf);
    memcpy(stream + TS_FRAME_HEADER, b_sf, n_sf);
    put("fuzz_client_frame", "welcome", 1, true, stream, TS_FRAME_HEADER + n_sf);

    /* fuzz_frame: max-size byte, chunk byte, stream */
    {
        uint8_t fb[4200];
        fb[0] = 255; /* max 4081 */
        fb[1] = 7;   /* 8-byte reads */
        memcpy(fb + 2, stream, TS_FRAME_HEADER + n_sf);
        put("fuzz_frame", "one_frame", 0, false, fb, 2 + TS_FRAME_HEADER + n_sf);
        fb[0] = 0; /* max 1: oversized */
        put("fuzz_frame", "oversized", 0, false, fb, 2 + TS_FRAME_HEADER + n_sf);
    }

    /* fuzz_config: YAML */
    static const char yaml_full[] = "log:\n  level: debug\n  format: json\n"
                                    "nats:\n  url: nats://127.0.0.1:4222\n  user: worker\n"
                                    "  password_file: /run/secrets/nats\n"
                                    "redis:\n  url: redis://127.0.0.1:6379/0\n"
                                    "world:\n  id: 3\n  width: 8\n  height: 8\n  workers: [w1, w2, w3]\n"
                                    "worker:\n  id: w1\n  tick_hz: 30\n  max_speed: 12.5\n"
                                    "gateway:\n  listen: \"[::1]:7400\"\n";
    static const char yaml_flow[] =
        "{world: {assign: \"0:0=w1,1:0=w2\", cell_size: 50.0}, sim: {players: 10}}\n";
    static const char yaml_bad[] = "world:\n  id: -1\n  nope: [a, {b: c}]\n&x y: *x\n";
    put("fuzz_config", "full.yaml", 0, false, yaml_full, sizeof yaml_full - 1);
    put("fuzz_config", "flow.yaml", 0, false, yaml_flow, sizeof yaml_flow - 1);
    put("fuzz_config", "bad.yaml", 0, false, yaml_bad, sizeof yaml_bad - 1);

    free(b_join);
    free(b_leave);
    free(b_hb);
    free(b_rc);
    free(b_ho);
    free(b_ga);
    free(b_gd);
    free(b_sf);
    ts_zone_free_parts(parts, lens, nparts);
    ts_zone_free_parts(cparts, clens, ncparts);
    ts_zone_destroy(z);
    return 0;
}
