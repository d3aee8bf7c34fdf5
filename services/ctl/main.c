/* tessera-ctl: admin CLI. Separates its own options (--count, --subject,
 * --json) from the shared configuration flags, then runs one subcommand.
 * Exit status: 0 ok, 1 failure, 2 usage error. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "tessera/service.h"
#include "tessera/util.h"

volatile sig_atomic_t ts_ctl_stop;

static const ts_service_t service = {
    .name = "tessera-ctl",
    .usage = "usage: tessera-ctl [--key=value ...] <command> [options]\n\n"
             "commands:\n"
             "  cells                    cells of world.id from the registry: owner, epoch, state\n"
             "  workers                  known workers, alive or not, with their latest heartbeat\n"
             "                           (waits 1.5 s for heartbeats)\n"
             "  watch [--count N]        one line per second: cells, owners, entities, inputs/s,\n"
             "                           ticks (per second, all workers), transfers/s, cross-worker\n"
             "                           transfers/s, handovers so far; until SIGINT or N lines\n"
             "  top [--count N]          live table, refreshed every second: per worker cells, entities,\n"
             "                           inputs/s, tick p50/p99, load score, draining; orchestrator\n"
             "                           counters below; until SIGINT or N refreshes\n"
             "  handover CELL WORKER     asks the leading orchestrator to move CELL (e.g. 0.-1.0.0.0)\n"
             "                           to WORKER live; prints its answer\n"
             "  drain WORKER             hands every cell of WORKER to the other workers\n"
             "  split CELL               splits CELL into its four children (depth + 1) on its owner\n"
             "  merge PARENT             merges the four children of PARENT back into it (they must\n"
             "                           be active on one worker)\n"
             "  stats                    the orchestrator's handover/recovery/rebalancing figures (JSON)\n"
             "  tail SUBJECT [--count N] [--json]\n"
             "                           every message on SUBJECT (wildcards allowed) decoded, one\n"
             "                           line each, e.g. tail 'cell.0.*.*.*.*.state'\n"
             "  decode --subject SUBJ [--json]\n"
             "                           reads one message payload from stdin and prints it decoded\n"
             "                           (type chosen from the subject), e.g.\n"
             "                           nats sub 'cell.>' --translate 'tessera-ctl decode --subject "
             "{{Subject}}'\n"
             "  token --sub NAME [--ttl 1h] [--secret S | --key PRIVATE.pem] [--iss I] [--aud A]\n"
             "                           prints a player JWT (HS256 with the secret, default\n"
             "                           $TESSERA_GATEWAY_AUTH_SECRET; RS256 with a PEM private key)\n\n",
    .config_exit = 1,
    .stop = &ts_ctl_stop,
};

ts_status_t ts_ctl_connect_registry(const ts_config_t *cfg, ts_registry_t **out)
{
    return ts_service_connect_registry(cfg, TS_CTL_CONNECT_MS, out);
}

ts_status_t ts_ctl_connect_bus(const ts_config_t *cfg, ts_bus_t **out)
{
    return ts_service_connect_bus(cfg, "tessera-ctl", TS_CTL_CONNECT_MS, out);
}

typedef struct {
    const char *subject;
    const char *count;
    bool json;
} ctl_opts_t;

/* Takes --count/--subject (with "=value" or the next argument) and --json
 * out of argv; the remaining arguments are compacted into kept. */
static bool take_options(int argc, char **argv, char **kept, int *nkept, ctl_opts_t *o)
{
    *nkept = 0;
    kept[(*nkept)++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        size_t n = 0;
        if (strncmp(a, "--count", 7) == 0 && (a[7] == '\0' || a[7] == '=')) {
            slot = &o->count;
            n = 7;
        } else if (strncmp(a, "--subject", 9) == 0 && (a[9] == '\0' || a[9] == '=')) {
            slot = &o->subject;
            n = 9;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        } else if (strcmp(a, "--") == 0) {
            while (i < argc)
                kept[(*nkept)++] = argv[i++];
            break;
        } else {
            kept[(*nkept)++] = argv[i];
            continue;
        }
        if (a[n] == '=') {
            *slot = a + n + 1;
        } else if (i + 1 < argc) {
            *slot = argv[++i];
        } else {
            fprintf(stderr, "tessera-ctl: %s needs a value\n", a);
            return false;
        }
    }
    kept[*nkept] = NULL;
    return true;
}

/* Positional arguments each command takes after its name. */
static int command_args(const char *cmd)
{
    static const struct {
        const char *name;
        int args;
    } cmds[] = {{"cells", 0},    {"workers", 0}, {"watch", 0}, {"top", 0},   {"stats", 0}, {"decode", 0},
                {"handover", 2}, {"drain", 1},   {"tail", 1},  {"split", 1}, {"merge", 1}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(cmds[i].name, cmd) == 0) return cmds[i].args;
    }
    return -1;
}

static int run_command(char **args, int nargs, const ts_config_t *cfg, const ctl_opts_t *o)
{
    const char *cmd = args[0];
    long count = 0;
    int want = command_args(cmd);
    if (want < 0) {
        fprintf(stderr, "tessera-ctl: unknown command '%s'\n\n", cmd);
        ts_service_usage(&service, stderr);
        return TS_CTL_EXIT_USAGE;
    }
    if (nargs - 1 != want) {
        if (nargs - 1 > want)
            fprintf(stderr, "tessera-ctl: unexpected argument '%s' after '%s'\n", args[want + 1], cmd);
        else
            fprintf(stderr, "tessera-ctl: %s needs %s\n", cmd,
                    strcmp(cmd, "handover") == 0 ? "CELL WORKER"
                    : strcmp(cmd, "tail") == 0   ? "SUBJECT"
                    : strcmp(cmd, "split") == 0  ? "CELL"
                    : strcmp(cmd, "merge") == 0  ? "PARENT"
                                                 : "WORKER");
        return TS_CTL_EXIT_USAGE;
    }
    bool tail = strcmp(cmd, "tail") == 0;
    bool counted = strcmp(cmd, "watch") == 0 || strcmp(cmd, "top") == 0 || tail;
    if (o->count && !counted) {
        fprintf(stderr, "tessera-ctl: --count only applies to watch, top and tail\n");
        return TS_CTL_EXIT_USAGE;
    }
    if (o->subject && strcmp(cmd, "decode") != 0) {
        fprintf(stderr, "tessera-ctl: --subject only applies to decode\n");
        return TS_CTL_EXIT_USAGE;
    }
    if (o->json && strcmp(cmd, "decode") != 0 && !tail) {
        fprintf(stderr, "tessera-ctl: --json only applies to decode and tail\n");
        return TS_CTL_EXIT_USAGE;
    }
    if (strcmp(cmd, "cells") == 0) return ts_ctl_cells(cfg);
    if (counted) {
        int64_t v = 0;
        if (o->count && (ts_parse_i64(o->count, &v) != TS_OK || v < 1)) {
            fprintf(stderr, "tessera-ctl: --count must be a positive integer, got '%s'\n", o->count);
            return TS_CTL_EXIT_USAGE;
        }
        count = (long)v;
        if (tail) return ts_ctl_tail(cfg, args[1], o->json, count);
        return strcmp(cmd, "top") == 0 ? ts_ctl_top(cfg, count) : ts_ctl_watch(cfg, count);
    }
    if (strcmp(cmd, "handover") == 0) return ts_ctl_handover(cfg, args[1], args[2]);
    if (strcmp(cmd, "drain") == 0) return ts_ctl_drain(cfg, args[1]);
    if (strcmp(cmd, "split") == 0) return ts_ctl_split(cfg, args[1]);
    if (strcmp(cmd, "merge") == 0) return ts_ctl_merge(cfg, args[1]);
    if (strcmp(cmd, "stats") == 0) return ts_ctl_stats(cfg);
    if (strcmp(cmd, "decode") == 0) {
        if (!o->subject || !*o->subject) {
            fprintf(stderr, "tessera-ctl: decode needs --subject SUBJECT\n");
            return TS_CTL_EXIT_USAGE;
        }
        return ts_ctl_decode(o->subject, o->json, stdin, stdout);
    }
    return ts_ctl_workers(cfg); /* the only command left */
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "token") == 0) return ts_ctl_token(argc - 1, argv + 1);
    char **kept = calloc((size_t)argc + 1, sizeof *kept);
    if (!kept) {
        fprintf(stderr, "tessera-ctl: out of memory\n");
        return 1;
    }
    ctl_opts_t opts = {0};
    int nkept = 0, nrest = 0, rc = TS_CTL_EXIT_USAGE;
    char **rest = NULL;
    ts_config_t cfg;
    if (!take_options(argc, argv, kept, &nkept, &opts)) {
        free(kept);
        return TS_CTL_EXIT_USAGE;
    }
    if (!ts_service_init(&service, nkept, kept, &cfg, &rest, &nrest, &rc)) {
        free(kept);
        return rc;
    }
    if (nrest < 1) {
        ts_service_usage(&service, stderr);
        rc = TS_CTL_EXIT_USAGE;
    } else {
        rc = run_command(rest, nrest, &cfg, &opts);
    }
    ts_config_free(&cfg);
    free(kept);
    ts_service_shutdown();
    return rc;
}
