/* tessera-client: a command-line game client for a tessera-gateway.
 *
 *   tessera-client [--gateway.listen=HOST:PORT] [--at X,Y] [--token JWT] [--resume TOKEN] COMMAND [ARGS]
 *
 * --token sends a JWT in the Hello (gateways with gateway.auth.required);
 * --resume takes an entity back with the resume token a Welcome printed
 * (join and move then use that entity instead of joining). While waiting
 * for frames the client Pings every 5 s, so idle timeouts do not close it.
 *
 * The gateway address is the gateway.listen key, so the config file and
 * TESSERA_GATEWAY_LISTEN work too. Options may appear anywhere; words not
 * starting with "--" are the command and its arguments (so negative numbers
 * are arguments). Exit status: 0 ok, 1 the gateway reported an error or a
 * command failed, 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tessera/config.h"
#include "tessera/service.h"
#include "tessera/util.h"

#define CONNECT_TIMEOUT_MS 5000
#define REPLY_TIMEOUT_MS 3000
#define JOIN_STAY_MS 1000
#define DEFAULT_PINGS 3
#define DEFAULT_MOVE_S 5
#define MAX_ARGS 16
#define STR_(x) #x
#define STR(x) STR_(x)

/* Ctrl-C ends the client at once: no signal handlers. */
static const ts_service_t service = {
    .name = "tessera-client",
    .usage =
        "usage: tessera-client [--gateway.listen=HOST:PORT] [--at X,Y] [--token JWT] [--resume TOKEN]\n"
        "                      COMMAND [ARGS]\n\n"
        "commands:\n"
        "  ping [N]               N round trips (default " STR(
            DEFAULT_PINGS) "), prints each time\n"
                           "  join [X Y]             join at (X, Y) (default 0 0), print frames for 1 s\n"
                           "  move DX DY [SECONDS]   join at --at X,Y (default 0,0), move with velocity\n"
                           "                         (DX, DY) for SECONDS (default " STR(
                               DEFAULT_MOVE_S) "), print positions\n"
                                               "  repl                   read commands from stdin (type "
                                               "help)\n"
                                               "  script FILE            run repl commands from FILE; exit 1 "
                                               "on an Error\n"
                                               "                         unless the line starts with '-'\n\n",
    .no_signals = true,
};

typedef struct {
    char *cfg_argv[2 * MAX_ARGS + 1];
    int cfg_argc;
    char *pos[MAX_ARGS];
    int npos;
    const char *at;
    const char *token, *resume;
    bool help;
} args_t;

static bool split_args(int argc, char **argv, args_t *a)
{
    memset(a, 0, sizeof *a);
    a->cfg_argv[a->cfg_argc++] = argv[0];
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            for (i++; i < argc; i++) {
                if (a->npos >= MAX_ARGS) return false;
                a->pos[a->npos++] = argv[i];
            }
            break;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            a->help = true;
        } else if (strncmp(arg, "--at=", 5) == 0) {
            a->at = arg + 5;
        } else if (strcmp(arg, "--at") == 0) {
            if (i + 1 >= argc) return false;
            a->at = argv[++i];
        } else if (strncmp(arg, "--token=", 8) == 0) {
            a->token = arg + 8;
        } else if (strcmp(arg, "--token") == 0) {
            if (i + 1 >= argc) return false;
            a->token = argv[++i];
        } else if (strncmp(arg, "--resume=", 9) == 0) {
            a->resume = arg + 9;
        } else if (strcmp(arg, "--resume") == 0) {
            if (i + 1 >= argc) return false;
            a->resume = argv[++i];
        } else if (strncmp(arg, "--", 2) == 0) {
            if (a->cfg_argc + 2 >= (int)(sizeof a->cfg_argv / sizeof a->cfg_argv[0])) return false;
            a->cfg_argv[a->cfg_argc++] = arg;
            if (strchr(arg, '=') == NULL && i + 1 < argc) a->cfg_argv[a->cfg_argc++] = argv[++i];
        } else {
            if (a->npos >= MAX_ARGS) return false;
            a->pos[a->npos++] = arg;
        }
    }
    a->cfg_argv[a->cfg_argc] = NULL;
    return true;
}

static bool parse_xy(const char *s, double *x, double *y)
{
    char buf[128];
    ts_strlcpy(buf, s, sizeof buf);
    char *comma = strchr(buf, ',');
    if (comma == NULL) return false;
    *comma = '\0';
    return ts_parse_double(buf, x) == TS_OK && ts_parse_double(comma + 1, y) == TS_OK;
}

static bool arg_double(char **pos, int npos, int i, double def, double *out)
{
    if (i >= npos) {
        *out = def;
        return true;
    }
    return ts_parse_double(pos[i], out) == TS_OK;
}

static int cmd_ping(cli_t *c, char **pos, int npos)
{
    double n = DEFAULT_PINGS;
    if (npos > 1 || !arg_double(pos, npos, 0, DEFAULT_PINGS, &n) || n < 1 || n > 100000) {
        fprintf(stderr, "usage: ping [N]\n");
        return 2;
    }
    double min = 0, max = 0, sum = 0;
    int got = 0;
    for (int i = 0; i < (int)n && !c->closed; i++) {
        if (i > 0) ts_sleep_ms(100);
        if (ts_client_ping(c->conn, ts_now_us()) != TS_OK) break;
        if (!cli_pump(c, REPLY_TIMEOUT_MS, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG, false, CLI_PRINT_ALL))
            continue;
        double ms = (double)c->last_rtt_us / 1000.0;
        min = got == 0 || ms < min ? ms : min;
        max = ms > max ? ms : max;
        sum += ms;
        got++;
    }
    fprintf(c->out, "%d/%d pongs", got, (int)n);
    if (got > 0) fprintf(c->out, ", rtt min/avg/max = %.3f/%.3f/%.3f ms", min, sum / got, max);
    fprintf(c->out, "\n");
    return got == (int)n && c->errors == 0 ? 0 : 1;
}

static bool do_join(cli_t *c, double x, double y)
{
    if (cli_hello(c) != TS_OK ||
        !cli_pump(c, REPLY_TIMEOUT_MS, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, false, CLI_PRINT_ALL))
        return false;
    if (c->resume != NULL) /* the entity is ours again: no Join */
        return c->resumed &&
               cli_pump(c, REPLY_TIMEOUT_MS, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, false,
                        CLI_PRINT_ALL) &&
               c->errors == 0;
    if (ts_client_join(c->conn, x, y, "cli") != TS_OK ||
        !cli_pump(c, REPLY_TIMEOUT_MS, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT, false, CLI_PRINT_ALL))
        return false;
    return c->entity != 0 && c->errors == 0;
}

static void do_leave(cli_t *c)
{
    if (!c->closed && ts_client_leave(c->conn) == TS_OK) cli_sync(c, REPLY_TIMEOUT_MS);
}

static int cmd_join(cli_t *c, char **pos, int npos)
{
    double x, y;
    if ((npos != 0 && npos != 2) || !arg_double(pos, npos, 0, 0, &x) || !arg_double(pos, npos, 1, 0, &y)) {
        fprintf(stderr, "usage: join [X Y]\n");
        return 2;
    }
    if (!do_join(c, x, y)) return 1;
    cli_pump(c, JOIN_STAY_MS, 0, false, CLI_PRINT_ALL);
    do_leave(c);
    return c->errors == 0 && !c->closed ? 0 : 1;
}

static int cmd_move(cli_t *c, char **pos, int npos, const char *at)
{
    double dx, dy, secs, x = 0, y = 0;
    if (npos < 2 || npos > 3 || !arg_double(pos, npos, 0, 0, &dx) || !arg_double(pos, npos, 1, 0, &dy) ||
        !arg_double(pos, npos, 2, DEFAULT_MOVE_S, &secs) || !(secs >= 0) || secs > 3600) {
        fprintf(stderr, "usage: move DX DY [SECONDS]\n");
        return 2;
    }
    if (at != NULL && !parse_xy(at, &x, &y)) {
        fprintf(stderr, "--at wants X,Y, got '%s'\n", at);
        return 2;
    }
    if (!do_join(c, x, y)) return 1;
    if (ts_client_move(c->conn, dx, dy) != TS_OK) return 1;
    cli_pump(c, (int64_t)(secs * 1000.0), 0, false, CLI_PRINT_ALL);
    if (!c->closed && ts_client_move(c->conn, 0, 0) == TS_OK) cli_sync(c, REPLY_TIMEOUT_MS);
    if (c->me_known)
        fprintf(c->out, "final me=(%.1f,%.1f) applied=%llu last_seq=%llu\n", c->me_x, c->me_y,
                (unsigned long long)c->me_applied, (unsigned long long)c->me_last_seq);
    do_leave(c);
    return c->errors == 0 && !c->closed ? 0 : 1;
}

static int run_command(cli_t *c, args_t *a)
{
    const char *cmd = a->pos[0];
    char **rest = a->pos + 1;
    int nrest = a->npos - 1;
    if (strcmp(cmd, "ping") == 0) return cmd_ping(c, rest, nrest);
    if (strcmp(cmd, "join") == 0) return cmd_join(c, rest, nrest);
    if (strcmp(cmd, "move") == 0) return cmd_move(c, rest, nrest, a->at);
    if (strcmp(cmd, "repl") == 0 && nrest == 0) return cli_repl(c, stdin, false);
    if (strcmp(cmd, "script") == 0 && nrest == 1) {
        FILE *f = fopen(rest[0], "r");
        if (f == NULL) {
            fprintf(stderr, "tessera-client: cannot open %s\n", rest[0]);
            return 2;
        }
        int rc = cli_repl(c, f, true);
        fclose(f);
        return rc;
    }
    fprintf(stderr, "tessera-client: unknown command '%s' (try --help)\n", cmd);
    return 2;
}

static bool known_command(const char *cmd)
{
    static const char *const cmds[] = {"ping", "join", "move", "repl", "script"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(cmd, cmds[i]) == 0) return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    args_t a;
    if (!split_args(argc, argv, &a)) {
        fprintf(stderr, "tessera-client: bad arguments (try --help)\n");
        return 2;
    }
    if (a.help) {
        ts_service_usage(&service, stdout);
        return 0;
    }
    if (a.npos == 0 || !known_command(a.pos[0])) {
        ts_service_usage(&service, stderr);
        return 2;
    }
    ts_config_t cfg;
    int rc;
    if (!ts_service_init(&service, a.cfg_argc, a.cfg_argv, &cfg, NULL, NULL, &rc)) return rc;

    char host[256];
    int port = 0;
    if (ts_config_split_hostport(cfg.gateway_listen, host, sizeof host, &port) != TS_OK || port <= 0 ||
        port > 65535) {
        fprintf(stderr, "tessera-client: gateway.listen '%s' is not host:port\n", cfg.gateway_listen);
        ts_config_free(&cfg);
        return 2;
    }
    cli_t c = {.out = stdout, .token = a.token, .resume = a.resume};
    ts_status_t st = ts_client_connect(&c.conn, host, port, CONNECT_TIMEOUT_MS);
    c.last_sent_us = ts_mono_us();
    if (st != TS_OK) {
        fprintf(stderr, "tessera-client: cannot connect to the gateway at %s:%d: %s\n", host, port,
                ts_status_str(st));
        ts_config_free(&cfg);
        return 1;
    }
    rc = run_command(&c, &a);
    ts_client_destroy(c.conn);
    ts_config_free(&cfg);
    return rc;
}
