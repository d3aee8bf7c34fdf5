/* `tessera-ctl decode`: turns one bus payload into one readable line.
 *
 * The message type comes from the subject (input -> InputBatch, state ->
 * StateDelta, ghost -> GhostDelta, handover -> Handover, checkpoint ->
 * Checkpoint, tessera.worker.<id>.hb -> Heartbeat, tessera.registry.<world>
 * -> RegistryChange). Printing walks
 * the protobuf-c descriptors, so every field of every schema version is
 * shown without per-message code. Fields at their proto3 default are left
 * out; CellIds print as their key "<world>.<cx>.<cy>.<depth>.<sub>".
 * JSON follows the proto3 mapping for 64-bit integers (quoted) and
 * non-finite doubles ("NaN", "Infinity"). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/proto.h"
#include "tessera/subject.h"

/* Largest payload read from stdin. */
#define MAX_PAYLOAD (64u * 1024 * 1024)

static void print_message(FILE *out, const ProtobufCMessage *m, bool json);

static void print_string(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static void print_double(FILE *out, double v, bool json)
{
    if (json && !isfinite(v))
        fputs(isnan(v) ? "\"NaN\"" : v > 0 ? "\"Infinity\"" : "\"-Infinity\"", out);
    else
        fprintf(out, json ? "%.17g" : "%g", v);
}

static size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/* True if the value at p is the proto3 default (omitted when printing). */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return *(const uint32_t *)p == 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return *(const uint64_t *)p == 0;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p == 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p == 0;
    case PROTOBUF_C_TYPE_BOOL:
        return !*(const protobuf_c_boolean *)p;
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return !s || !*s;
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)p == NULL;
    }
    return true;
}

static void print_value(FILE *out, const ProtobufCFieldDescriptor *f, const void *p, bool json)
{
    const char *q = json ? "\"" : "";
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        fprintf(out, "%d", *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        fprintf(out, "%u", *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        fprintf(out, "%s%lld%s", q, (long long)*(const int64_t *)p, q);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        fprintf(out, "%s%llu%s", q, (unsigned long long)*(const uint64_t *)p, q);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        print_double(out, *(const float *)p, json);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        print_double(out, *(const double *)p, json);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        fputs(*(const protobuf_c_boolean *)p ? "true" : "false", out);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev)
            fprintf(out, "%s%s%s", q, ev->name, q);
        else
            fprintf(out, "%d", v);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        print_string(out, s ? s : "", s ? strlen(s) : 0);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        fputs(json ? "\"" : "0x", out);
        for (size_t i = 0; i < b->len; i++)
            fprintf(out, "%02x", b->data[i]);
        if (json) fputc('"', out);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)p;
        if (m)
            print_message(out, m, json);
        else
            fputs("null", out);
        break;
    }
    }
}

static bool print_cell(FILE *out, const ProtobufCMessage *m, bool json)
{
    if (m->descriptor != &tessera__v1__cell_id__descriptor) return false;
    ts_cell_t c;
    char key[TS_CELL_STR_MAX];
    const Tessera__V1__CellId *pb = (const Tessera__V1__CellId *)m;
    if (ts_proto_cell_get(pb, &c) == TS_OK && ts_cell_format(&c, key, sizeof key) > 0) {
        fprintf(out, json ? "\"%s\"" : "%s", key);
    } else {
        fprintf(out, json ? "\"%u.%d.%d.%u.%llu(invalid)\"" : "%u.%d.%d.%u.%llu(invalid)", pb->world, pb->cx,
                pb->cy, pb->depth, (unsigned long long)pb->sub);
    }
    return true;
}

static void print_message(FILE *out, const ProtobufCMessage *m, bool json)
{
    if (print_cell(out, m, json)) return;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    bool first = true;
    fputc('{', out);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *p = base + f->offset;
        size_t n = 1;
        bool repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
        if (repeated) {
            n = *(const size_t *)(base + f->quantifier_offset);
            if (n == 0) continue;
        } else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)(base + f->quantifier_offset) != f->id) continue;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
                   f->type != PROTOBUF_C_TYPE_STRING) {
            if (!*(const protobuf_c_boolean *)(base + f->quantifier_offset)) continue;
        } else if (is_default(f, p)) {
            continue;
        }
        if (!first) fputs(json ? "," : " ", out);
        first = false;
        fprintf(out, json ? "\"%s\":" : "%s=", f->name);
        if (!repeated) {
            print_value(out, f, p, json);
            continue;
        }
        const char *arr = *(const char *const *)p;
        size_t sz = elem_size(f->type);
        fputc('[', out);
        for (size_t k = 0; k < n; k++) {
            if (k) fputs(json ? "," : " ", out);
            print_value(out, f, arr + k * sz, json);
        }
        fputc(']', out);
    }
    fputc('}', out);
}

/* Message type carried by a subject, or NULL (err says why). */
static const ProtobufCMessageDescriptor *type_of(const char *subject, char *err, size_t errcap)
{
    ts_cell_t cell;
    ts_subject_kind_t kind;
    if (ts_subject_parse(subject, &cell, &kind) == TS_OK) {
        switch (kind) {
        case TS_SUBJ_INPUT:
            return &tessera__v1__input_batch__descriptor;
        case TS_SUBJ_STATE:
            return &tessera__v1__state_delta__descriptor;
        case TS_SUBJ_CHECKPOINT:
            return &tessera__v1__checkpoint__descriptor;
        case TS_SUBJ_GHOST:
            return &tessera__v1__ghost_delta__descriptor;
        case TS_SUBJ_HANDOVER:
            return &tessera__v1__handover__descriptor;
        default:
            snprintf(err, errcap, "no decoder for '%s' messages (subject %s)", ts_subject_kind_str(kind),
                     subject);
            return NULL;
        }
    }
    static const char worker_prefix[] = "tessera.worker.", registry_prefix[] = "tessera.registry.";
    size_t n = strlen(subject);
    if (strncmp(subject, worker_prefix, sizeof worker_prefix - 1) == 0 && n > sizeof worker_prefix - 1 + 3 &&
        strcmp(subject + n - 3, ".hb") == 0) {
        const char *id = subject + sizeof worker_prefix - 1;
        if (memchr(id, '.', (size_t)(subject + n - 3 - id)) == NULL)
            return &tessera__v1__heartbeat__descriptor;
    }
    if (strncmp(subject, registry_prefix, sizeof registry_prefix - 1) == 0 &&
        n > sizeof registry_prefix - 1 && strchr(subject + sizeof registry_prefix - 1, '.') == NULL)
        return &tessera__v1__registry_change__descriptor;
    snprintf(err, errcap,
             "subject '%s' carries no known message type (expected cell.<w>.<cx>.<cy>.<d>.<sub>."
             "{input,state,checkpoint}, tessera.worker.<id>.hb or tessera.registry.<world>)",
             subject);
    return NULL;
}

ts_status_t ts_ctl_decode_payload(const char *subject, const uint8_t *data, size_t len, bool json, FILE *out,
                                  char *err, size_t errcap)
{
    const ProtobufCMessageDescriptor *d = type_of(subject, err, errcap);
    if (!d) return TS_ERR_INVALID;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, data);
    if (!m) {
        snprintf(err, errcap, "payload (%zu bytes) on %s is not a valid %s", len, subject, d->name);
        return TS_ERR_MALFORMED;
    }
    if (json) {
        fprintf(out, "{\"subject\":");
        print_string(out, subject, strlen(subject));
        fprintf(out, ",\"type\":\"%s\",\"message\":", d->name);
        print_message(out, m, true);
        fputs("}\n", out);
    } else {
        fprintf(out, "%s %s ", subject, d->name);
        print_message(out, m, false);
        fputc('\n', out);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return TS_OK;
}

int ts_ctl_decode(const char *subject, bool json, FILE *in, FILE *out)
{
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        fprintf(stderr, "tessera-ctl decode: out of memory\n");
        return 1;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_PAYLOAD) {
                fprintf(stderr, "tessera-ctl decode: payload larger than %u bytes\n", MAX_PAYLOAD);
                free(buf);
                return 1;
            }
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                fprintf(stderr, "tessera-ctl decode: out of memory\n");
                free(buf);
                return 1;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, in);
        len += n;
        if (n == 0) break;
    }
    int rc = 0;
    if (ferror(in)) {
        fprintf(stderr, "tessera-ctl decode: cannot read stdin\n");
        rc = 1;
    } else {
        char err[512];
        if (ts_ctl_decode_payload(subject, buf, len, json, out, err, sizeof err) != TS_OK) {
            fprintf(stderr, "tessera-ctl decode: %s\n", err);
            rc = 1;
        }
    }
    free(buf);
    fflush(out);
    return rc;
}
