/* The interactive shell (`repl`) and its batch form (`script FILE`).
 *
 * Every command that expects an answer waits for it (Welcome, Snapshot,
 * Pong); commands without one (move, cmd, leave) end with an internal ping round
 * trip, so any Error the gateway sends about a command is printed — and, in
 * a script, charged — to that command's line. Frames that arrive between
 * commands are printed before the next one runs; Delta frames there are
 * only counted. History holds every command run (`!N` runs entry N again). */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "tessera/game.h"
#include "tessera/util.h"

#define LINE_MAX_LEN 1024
#define REPLY_TIMEOUT_MS 3000
#define MAX_WAIT_S 3600.0

typedef struct {
    char **items;
    size_t n, cap;
} history_t;

static void history_add(history_t *h, const char *line)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 32;
        char **v = realloc(h->items, cap * sizeof *v);
        if (v == NULL) return;
        h->items = v;
        h->cap = cap;
    }
    char *copy = strdup(line);
    if (copy != NULL) h->items[h->n++] = copy;
}

static void history_free(history_t *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->items[i]);
    free(h->items);
}

static void help(FILE *out)
{
    fprintf(out, "commands:\n"
                 "  hello             say hello, print the Welcome\n"
                 "  join X Y [PAYLOAD] spawn the player at (X, Y), PAYLOAD for the game's on_join\n"
                 "  move DX DY        set the player's velocity\n"
                 "  cmd TYPE [PAYLOAD] send a game Command (events it causes print as 'event ...')\n"
                 "                    world counters (tag: 0 red's score, 1 blue's) print as\n"
                 "                    'counters 0=N 1=M' whenever they change\n"
                 "                    PAYLOAD: 0x<hex> for bytes, else the rest of the line as text\n"
                 "  ping              measure the round trip to the gateway\n"
                 "  leave             despawn the player (the connection stays)\n"
                 "  wait SECONDS      print the frames that arrive meanwhile\n"
                 "  history           list the commands run so far\n"
                 "  !N                run history entry N again\n"
                 "  help              this text\n"
                 "  quit              exit\n"
                 "in a script, a line starting with '-' may fail (e.g. expect an error)\n");
}

static bool parse_doubles(char **args, int nargs, double *out, int want)
{
    if (nargs != want) return false;
    for (int i = 0; i < want; i++) {
        if (ts_parse_double(args[i], &out[i]) != TS_OK) return false;
    }
    return true;
}

long cli_parse_payload(const char *arg, uint8_t *out, size_t cap)
{
    size_t n = strlen(arg);
    if (n >= 2 && arg[0] == '0' && (arg[1] == 'x' || arg[1] == 'X')) {
        const char *hex = arg + 2;
        size_t hn = n - 2;
        if (hn % 2 != 0 || hn / 2 > cap) return -1;
        for (size_t i = 0; i < hn / 2; i++) {
            unsigned v;
            if (!isxdigit((unsigned char)hex[2 * i]) || !isxdigit((unsigned char)hex[2 * i + 1]) ||
                sscanf(hex + 2 * i, "%2x", &v) != 1)
                return -1;
            out[i] = (uint8_t)v;
        }
        return (long)(hn / 2);
    }
    if (n > cap) return -1;
    memcpy(out, arg, n);
    return (long)n;
}

/* The text after the first `skip` words of line ("" if none). */
static const char *after_words(const char *line, int skip)
{
    const char *p = line;
    for (int i = 0; i < skip; i++) {
        while (*p == ' ' || *p == '\t')
            p++;
        while (*p != '\0' && *p != ' ' && *p != '\t')
            p++;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* Runs one command; false if it failed. *quit is set by "quit". */
static bool run(cli_t *c, history_t *h, char *line, bool *quit)
{
    char raw[LINE_MAX_LEN];
    ts_strlcpy(raw, line, sizeof raw);
    uint8_t payload[TS_GAME_PAYLOAD_MAX];
    long plen = 0;
    char *args[8];
    int nargs = 0;
    for (char *tok = strtok(line, " \t"); tok != NULL && nargs < 8; tok = strtok(NULL, " \t"))
        args[nargs++] = tok;
    if (nargs == 0) return true;
    const char *cmd = args[0];
    char **rest = args + 1;
    int nrest = nargs - 1;
    double v[2];

    if (strcmp(cmd, "quit") == 0 || strcmp(cmd, "exit") == 0) {
        *quit = true;
        return true;
    }
    if (strcmp(cmd, "help") == 0) {
        help(c->out);
        return true;
    }
    if (strcmp(cmd, "history") == 0) {
        for (size_t i = 0; i < h->n; i++)
            fprintf(c->out, "%5zu  %s\n", i + 1, h->items[i]);
        return true;
    }
    if (strcmp(cmd, "wait") == 0) {
        if (!parse_doubles(rest, nrest, v, 1) || !(v[0] >= 0) || v[0] > MAX_WAIT_S) {
            fprintf(c->out, "usage: wait SECONDS\n");
            return false;
        }
        cli_pump(c, (int64_t)(v[0] * 1000.0), 0, false, CLI_PRINT_ALL);
        return !c->closed;
    }
    if (c->closed) {
        fprintf(c->out, "not connected\n");
        return false;
    }
    ts_status_t st;
    if (strcmp(cmd, "hello") == 0 && nrest == 0) {
        st = cli_hello(c);
        return st == TS_OK && cli_pump(c, REPLY_TIMEOUT_MS, TESSERA__V1__SERVER_FRAME__PAYLOAD_WELCOME, false,
                                       CLI_PRINT_ALL);
    }
    if (strcmp(cmd, "join") == 0) {
        if (nrest > 2) plen = cli_parse_payload(after_words(raw, 3), payload, sizeof payload);
        if (!parse_doubles(rest, nrest > 2 ? 2 : nrest, v, 2) || plen < 0) {
            fprintf(c->out, "usage: join X Y [PAYLOAD] (PAYLOAD at most %d bytes)\n", TS_GAME_PAYLOAD_MAX);
            return false;
        }
        st = ts_client_join_payload(c->conn, v[0], v[1], "cli", payload, (size_t)plen);
        return st == TS_OK && cli_pump(c, REPLY_TIMEOUT_MS, TESSERA__V1__SERVER_FRAME__PAYLOAD_SNAPSHOT,
                                       false, CLI_PRINT_ALL);
    }
    if (strcmp(cmd, "move") == 0) {
        if (!parse_doubles(rest, nrest, v, 2)) {
            fprintf(c->out, "usage: move DX DY\n");
            return false;
        }
        st = ts_client_move(c->conn, v[0], v[1]);
        return st == TS_OK && cli_sync(c, REPLY_TIMEOUT_MS);
    }
    if (strcmp(cmd, "cmd") == 0) {
        uint64_t type = 0;
        if (nrest > 1) plen = cli_parse_payload(after_words(raw, 2), payload, sizeof payload);
        if (nrest < 1 || ts_parse_u64(rest[0], &type) != TS_OK || type > UINT32_MAX || plen < 0) {
            fprintf(c->out, "usage: cmd TYPE [PAYLOAD] (PAYLOAD at most %d bytes)\n", TS_GAME_PAYLOAD_MAX);
            return false;
        }
        st = ts_client_command(c->conn, (uint32_t)type, payload, (size_t)plen);
        if (st == TS_OK) fprintf(c->out, "cmd seq=%llu\n", (unsigned long long)ts_client_last_seq(c->conn));
        return st == TS_OK && cli_sync(c, REPLY_TIMEOUT_MS);
    }
    if (strcmp(cmd, "ping") == 0 && nrest == 0) {
        st = ts_client_ping(c->conn, ts_now_us());
        return st == TS_OK &&
               cli_pump(c, REPLY_TIMEOUT_MS, TESSERA__V1__SERVER_FRAME__PAYLOAD_PONG, false, CLI_PRINT_ALL);
    }
    if (strcmp(cmd, "leave") == 0 && nrest == 0) {
        st = ts_client_leave(c->conn);
        if (st == TS_OK && cli_sync(c, REPLY_TIMEOUT_MS)) {
            c->entity = 0;
            c->me_known = false;
            return true;
        }
        return false;
    }
    fprintf(c->out, "unknown command or wrong arguments: %s (try help)\n", cmd);
    return false;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Replaces "!N" by history entry N; false (with a message) if there is none. */
static bool expand(cli_t *c, const history_t *h, char *line, size_t cap, bool echo)
{
    if (line[0] != '!') return true;
    uint64_t n;
    if (ts_parse_u64(line + 1, &n) != TS_OK || n == 0 || n > h->n) {
        fprintf(c->out, "no history entry %s\n", line + 1);
        return false;
    }
    ts_strlcpy(line, h->items[n - 1], cap);
    if (echo) fprintf(c->out, "%s\n", line);
    return true;
}

int cli_repl(cli_t *c, FILE *in, bool script)
{
    history_t h = {0};
    char buf[LINE_MAX_LEN];
    bool prompt = !script && isatty(fileno(in));
    bool quit = false;
    int rc = 0;
    size_t lineno = 0;
    while (!quit) {
        if (prompt) {
            fprintf(c->out, "> ");
            fflush(c->out);
        }
        /* at a terminal, keep the connection alive while the user thinks */
        if (isatty(fileno(in))) {
            struct pollfd pfd = {.fd = fileno(in), .events = POLLIN};
            while (!c->closed && poll(&pfd, 1, 1000) == 0)
                cli_pump(c, 0, 0, false, CLI_QUIET_DELTAS);
        }
        if (fgets(buf, sizeof buf, in) == NULL) break;
        lineno++;
        char *line = trim(buf);
        bool may_fail = false;
        if (script && line[0] == '-') {
            may_fail = true;
            line = trim(line + 1);
        }
        if (line[0] == '\0' || line[0] == '#') continue;

        /* what arrived since the last command */
        if (!c->closed) {
            c->deltas_quiet = 0;
            cli_pump(c, 0, 0, false, CLI_QUIET_DELTAS);
            if (c->deltas_quiet > 0 && !script)
                fprintf(c->out, "(%llu deltas)\n", (unsigned long long)c->deltas_quiet);
        }
        char cmd[LINE_MAX_LEN];
        ts_strlcpy(cmd, line, sizeof cmd);
        if (!expand(c, &h, cmd, sizeof cmd, !script)) {
            if (script && !may_fail) {
                rc = 1;
                break;
            }
            continue;
        }
        if (strcmp(cmd, "history") != 0) history_add(&h, cmd);
        if (script) fprintf(c->out, "%s %s\n", may_fail ? "-" : ">", cmd);
        uint64_t errors_before = c->errors;
        char work[LINE_MAX_LEN];
        ts_strlcpy(work, cmd, sizeof work);
        bool ok = run(c, &h, work, &quit);
        bool failed = !ok || c->errors != errors_before;
        if (script && failed && !may_fail) {
            fprintf(c->out, "script: line %zu failed: %s\n", lineno, cmd);
            rc = 1;
            break;
        }
    }
    if (!script && prompt) fprintf(c->out, "\n");
    history_free(&h);
    return rc;
}
