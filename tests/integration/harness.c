/* Integration-test harness: real nats-server (JetStream) and redis-server on
 * free loopback ports, Tessera binaries spawned against them, and a promise
 * that none of them outlives the test:
 *  - every child gets PR_SET_PDEATHSIG=SIGKILL (it dies with the thread that
 *    forked it, so start the harness from the test's main thread);
 *  - every started harness is kept in a global list that an atexit handler
 *    and SIGINT/SIGTERM/SIGABRT/SIGSEGV handlers walk to kill what is left,
 *    so a cmocka assertion that longjmps past ts_h_stop() leaks nothing;
 *  - ts_h_stop() terminates and reaps everything, servers last.
 * Children inherit no file descriptor of the test beyond stdin/out/err, and
 * a spawn returns only once the child has exec'd (until then it holds
 * copies of the test's descriptors).
 * Children are built with execve and an environment prepared before fork,
 * because the test process has nats.c threads running. */
#define _GNU_SOURCE
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tessera/log.h"
#include "tessera/util.h"

#ifndef TS_BIN_DIR
#define TS_BIN_DIR "."
#endif

#define MAX_LIVE 8
#define TAIL_LINES 60
#define TERM_GRACE_MS 3000
#define SERVER_START_MS 10000

extern char **environ;

static ts_h_t *volatile live[MAX_LIVE];
static bool hooks_installed;
/* Processes of every harness of this test binary that ts_h_stop found with
 * a sanitizer report (and not expected): ts_h_run fails when not 0. */
static int sanitizer_failures;

/* ---- kill-everything hooks ------------------------------------------------ */

static void kill_all_children(void)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        ts_h_t *h = live[i];
        if (h == NULL) continue;
        for (int k = 0; k < h->nprocs; k++)
            if (h->procs[k].pid > 0 && !h->procs[k].reaped) kill(h->procs[k].pid, SIGKILL);
    }
}

static void on_fatal_signal(int sig)
{
    kill_all_children();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_exit_cleanup(void)
{
    int before = sanitizer_failures;
    for (int i = 0; i < MAX_LIVE; i++) {
        ts_h_t *h = live[i];
        if (h != NULL) {
            /* never stopped: the test bailed out early */
            h->failed = true;
            ts_h_stop(h);
        }
    }
    if (sanitizer_failures > before) {
        /* found after main returned: its status cannot say so any more */
        fflush(NULL);
        _exit(1);
    }
}

static void install_hooks(void)
{
    if (hooks_installed) return;
    hooks_installed = true;
    atexit(on_exit_cleanup);
    const int sigs[] = {SIGINT, SIGTERM, SIGABRT, SIGSEGV, SIGBUS, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_fatal_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
    /* a child that closes its end early must not kill the test */
    signal(SIGPIPE, SIG_IGN);
}

static void live_add(ts_h_t *h)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (live[i] == h) return;
    }
    for (int i = 0; i < MAX_LIVE; i++) {
        if (live[i] == NULL) {
            live[i] = h;
            return;
        }
    }
    fprintf(stderr, "harness: more than %d harnesses at once\n", MAX_LIVE);
    abort();
}

static void live_remove(ts_h_t *h)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i] == h) live[i] = NULL;
}

/* ---- ports ------------------------------------------------------------------
 * A port the harness hands out is one nobody listens on and that it has not
 * handed out before in this process. A port is only ever used once its
 * listener is known to be a process some live harness started: a server that
 * could not bind, or a port someone else took in the meantime, is refused
 * loudly instead of being talked to. Listeners are found through
 * /proc/net/tcp{,6} (the socket inode) and /proc/<pid>/fd. */

#define MAX_HANDED_PORTS 256
#define MAX_LISTEN_INODES 8

static int handed_ports[MAX_HANDED_PORTS];
static int nhanded_ports;

static bool port_open(int port);

static bool port_handed(int port)
{
    for (int i = 0; i < nhanded_ports; i++)
        if (handed_ports[i] == port) return true;
    return false;
}

int ts_h_free_port(void)
{
    for (int attempt = 0; attempt < 64; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof sa;
        int port = -1;
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
            getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
            port = ntohs(sa.sin_port);
        close(fd);
        if (port <= 0) return -1;
        if (port_handed(port) || port_open(port)) continue;
        if (nhanded_ports < MAX_HANDED_PORTS) handed_ports[nhanded_ports++] = port;
        return port;
    }
    fprintf(stderr, "harness: found no free loopback port in 64 tries\n");
    return -1;
}

/* Socket inodes listening on a TCP port that 127.0.0.1 reaches (127.0.0.1,
 * 0.0.0.0, ::, ::ffff:127.0.0.1). Returns how many (at most cap). */
static int listen_inodes(int port, unsigned long *inodes, int cap)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    int n = 0;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        FILE *fp = fopen(files[f], "r");
        if (fp == NULL) continue;
        char line[512], addr[64];
        unsigned lport, st;
        unsigned long inode;
        while (fgets(line, sizeof line, fp) != NULL) {
            if (sscanf(line, " %*d: %63[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x %*s %*s %*s %*d %*d %lu", addr,
                       &lport, &st, &inode) != 4)
                continue;
            if ((int)lport != port || st != 0x0A /* LISTEN */ || inode == 0) continue;
            bool reaches = strcmp(addr, "0100007F") == 0 || strcmp(addr, "00000000") == 0 ||
                           strcmp(addr, "00000000000000000000000000000000") == 0 ||
                           strcmp(addr, "0000000000000000FFFF00000100007F") == 0;
            if (reaches && n < cap) inodes[n++] = inode;
        }
        fclose(fp);
    }
    return n;
}

/* Whether process pid holds one of the socket inodes. */
static bool pid_holds(pid_t pid, const unsigned long *inodes, int n)
{
    char dirpath[64];
    snprintf(dirpath, sizeof dirpath, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dirpath);
    if (d == NULL) return false;
    bool found = false;
    struct dirent *de;
    while (!found && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[320], target[64];
        snprintf(path, sizeof path, "%s/%s", dirpath, de->d_name);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len <= 0) continue;
        target[len] = '\0';
        unsigned long inode;
        if (sscanf(target, "socket:[%lu]", &inode) != 1) continue;
        for (int i = 0; i < n && !found; i++)
            found = inodes[i] == inode;
    }
    closedir(d);
    return found;
}

typedef enum { LISTENER_NONE, LISTENER_OURS, LISTENER_FOREIGN } listener_t;

/* Who listens on port: nobody, the process pid (or, with pid 0, any
 * process a live harness started), or someone else. */
static listener_t port_listener(int port, pid_t pid)
{
    unsigned long inodes[MAX_LISTEN_INODES];
    int n = listen_inodes(port, inodes, MAX_LISTEN_INODES);
    if (n == 0) return LISTENER_NONE;
    if (pid > 0) return pid_holds(pid, inodes, n) ? LISTENER_OURS : LISTENER_FOREIGN;
    for (int i = 0; i < MAX_LIVE; i++) {
        ts_h_t *h = live[i];
        for (int k = 0; h != NULL && k < h->nprocs; k++)
            if (h->procs[k].pid > 0 && !h->procs[k].reaped && pid_holds(h->procs[k].pid, inodes, n))
                return LISTENER_OURS;
    }
    return LISTENER_FOREIGN;
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

bool ts_h_port_busy(int port)
{
    return port_listener(port, 0) != LISTENER_NONE;
}

bool ts_h_wait_port(int port, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    do {
        listener_t l = port_listener(port, 0);
        if (l == LISTENER_OURS && port_open(port)) return true;
        if (l == LISTENER_FOREIGN) {
            fprintf(stderr,
                    "harness: port %d is served by a process the harness did not start; refusing to use it "
                    "(did the service fail to bind?)\n",
                    port);
            return false;
        }
        ts_sleep_ms(20);
    } while (ts_mono_us() < deadline);
    fprintf(stderr, "harness: nothing the harness started listens on port %d after %lld ms\n", port,
            (long long)timeout_ms);
    return false;
}

/* ---- processes ------------------------------------------------------------- */

/* environ plus TESSERA_NATS_URL / TESSERA_REDIS_URL (malloc'd array; the
 * two strings live in bufs). */
/* Environment variables the harness sets for a child (and drops from its own). */
#define ENV_COUNT 8
static const char *const env_names[ENV_COUNT] = {
    "TESSERA_NATS_URL=",           "TESSERA_REDIS_URL=",    "TESSERA_NATS_USER=",
    "TESSERA_NATS_PASSWORD_FILE=", "TESSERA_REDIS_USER=",   "TESSERA_REDIS_PASSWORD_FILE=",
    "TESSERA_NATS_TLS_CA=",        "TESSERA_REDIS_TLS_CA=",
};

/* Sanitizer options every child gets with exitcode=TS_H_SANITIZER_EXIT
 * appended (a later flag wins): LSan reports through ASan's exit code, and
 * UBSan may parse the common flags again from its own variable. */
#define SAN_ENV_COUNT 3
static const char *const san_env_names[SAN_ENV_COUNT] = {"ASAN_OPTIONS=", "LSAN_OPTIONS=", "UBSAN_OPTIONS="};

typedef struct {
    char kv[ENV_COUNT][640];
    char san[SAN_ENV_COUNT][1024];
} child_env_buf_t;

/* The secured stack's user for a binary: tessera-<user>, else admin; a
 * worker started with --worker.id=<id> is worker-<id> when gen-secrets made
 * that user (w1 and w2), else the shared worker user; a gateway is
 * gateway-<gateway.id> (1 unless --gateway.id says; gen-secrets makes 1 to
 * 16), there is no shared gateway user. */
static const char *user_for(const ts_h_t *h, const char *path, char *const *argv, char *buf, size_t cap)
{
    static const char *const users[] = {"orch", "worker", "sim", "ctl"};
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strcmp(base, "tessera-gateway") == 0) {
        const char *id = "1";
        for (int i = 1; argv[i] != NULL; i++)
            if (strncmp(argv[i], "--gateway.id=", 13) == 0) id = argv[i] + 13;
        snprintf(buf, cap, "gateway-%s", id);
        return buf;
    }
    if (strcmp(base, "tessera-worker") == 0) {
        for (int i = 1; argv[i] != NULL; i++) {
            if (strncmp(argv[i], "--worker.id=", 12) != 0) continue;
            char pass[600];
            snprintf(buf, cap, "worker-%s", argv[i] + 12);
            snprintf(pass, sizeof pass, "%s/%s.nats.pass", h->secrets, buf);
            if (access(pass, R_OK) == 0) return buf;
        }
        return "worker";
    }
    for (size_t i = 0; i < sizeof users / sizeof users[0]; i++) {
        if (strncmp(base, "tessera-", 8) == 0 && strcmp(base + 8, users[i]) == 0) return users[i];
    }
    return "admin";
}

static char **child_env(ts_h_t *h, const char *path, char *const *argv, child_env_buf_t *b)
{
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **env = calloc(n + ENV_COUNT + SAN_ENV_COUNT + 1, sizeof *env);
    if (env == NULL) return NULL;
    size_t k = 0;
    const char *san_inherited[SAN_ENV_COUNT] = {NULL};
    for (size_t i = 0; i < n; i++) {
        bool ours = false;
        for (int j = 0; j < ENV_COUNT; j++)
            ours = ours || strncmp(environ[i], env_names[j], strlen(env_names[j])) == 0;
        for (int j = 0; j < SAN_ENV_COUNT; j++) {
            size_t len = strlen(san_env_names[j]);
            if (strncmp(environ[i], san_env_names[j], len) == 0) {
                san_inherited[j] = environ[i] + len;
                ours = true;
            }
        }
        if (!ours) env[k++] = environ[i];
    }
    for (int j = 0; j < SAN_ENV_COUNT; j++) {
        const char *old = san_inherited[j] != NULL ? san_inherited[j] : "";
        snprintf(b->san[j], sizeof b->san[j], "%s%s%sexitcode=%d", san_env_names[j], old, old[0] ? ":" : "",
                 TS_H_SANITIZER_EXIT);
        env[k++] = b->san[j];
    }
    if (!h->secure) {
        snprintf(b->kv[0], sizeof b->kv[0], "%s%s", env_names[0], h->nats_urls);
        snprintf(b->kv[1], sizeof b->kv[1], "%s%s", env_names[1], h->redis_url);
        env[k++] = b->kv[0];
        env[k++] = b->kv[1];
        return env;
    }
    char user_buf[96];
    const char *user = user_for(h, path, argv, user_buf, sizeof user_buf);
    snprintf(b->kv[0], sizeof b->kv[0], "%s%s", env_names[0], h->nats_plain_url);
    snprintf(b->kv[1], sizeof b->kv[1], "%s%s", env_names[1], h->redis_plain_url);
    snprintf(b->kv[2], sizeof b->kv[2], "%s%s", env_names[2], user);
    snprintf(b->kv[3], sizeof b->kv[3], "%s%s/%s.nats.pass", env_names[3], h->secrets, user);
    snprintf(b->kv[4], sizeof b->kv[4], "%s%s", env_names[4], user);
    snprintf(b->kv[5], sizeof b->kv[5], "%s%s/%s.redis.pass", env_names[5], h->secrets, user);
    snprintf(b->kv[6], sizeof b->kv[6], "%s%s", env_names[6], "");
    snprintf(b->kv[7], sizeof b->kv[7], "%s%s", env_names[7], "");
    if (h->tls) {
        snprintf(b->kv[6], sizeof b->kv[6], "%s%s/ca.pem", env_names[6], h->secrets);
        snprintf(b->kv[7], sizeof b->kv[7], "%s%s/ca.pem", env_names[7], h->secrets);
    }
    for (int j = 0; j < ENV_COUNT; j++)
        env[k++] = b->kv[j];
    return env;
}

/* Forks and execs path with argv (argv[0] included); returns the index or -1. */
static int launch(ts_h_t *h, const char *name, const char *path, char *const *argv)
{
    if (h->nprocs >= TS_H_MAX_PROCS) {
        fprintf(stderr, "harness: too many processes (max %d)\n", TS_H_MAX_PROCS);
        return -1;
    }
    ts_h_proc_t *p = &h->procs[h->nprocs];
    memset(p, 0, sizeof *p);
    ts_strlcpy(p->name, name, sizeof p->name);
    char log_path[sizeof p->log_path];
    snprintf(log_path, sizeof log_path, "%s/%s.log", h->dir, name);
    ts_strlcpy(p->log_path, log_path, sizeof p->log_path);

    child_env_buf_t env_buf;
    char **env = child_env(h, path, argv, &env_buf);
    int logfd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (env == NULL || logfd < 0 || nullfd < 0) {
        fprintf(stderr, "harness: cannot prepare %s: %s\n", name, strerror(errno));
        free(env);
        if (logfd >= 0) close(logfd);
        if (nullfd >= 0) close(nullfd);
        return -1;
    }
    /* closed (EOF) when the child has exec'd: until then it still holds
     * copies of the test's descriptors */
    int exec_pipe[2];
    if (pipe2(exec_pipe, O_CLOEXEC) != 0) {
        fprintf(stderr, "harness: cannot prepare %s: %s\n", name, strerror(errno));
        free(env);
        close(logfd);
        close(nullfd);
        return -1;
    }
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* child: async-signal-safe calls only */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        setpgid(0, 0);
        dup2(nullfd, STDIN_FILENO);
        dup2(logfd, STDOUT_FILENO);
        dup2(logfd, STDERR_FILENO);
        /* nothing of the test's own (its sockets, its listeners) leaks into
         * the child: a listener the test holds must stay foreign */
        unsigned keep = (unsigned)exec_pipe[1];
        if (keep > 3) close_range(3, keep - 1, 0);
        close_range(keep + 1, ~0U, 0);
        execve(path, argv, env);
        int exec_errno = errno;
        ssize_t w = write(exec_pipe[1], &exec_errno, sizeof exec_errno);
        static const char msg[] = "harness: exec failed\n";
        w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    int err = errno;
    free(env);
    close(logfd);
    close(nullfd);
    close(exec_pipe[1]);
    if (pid < 0) {
        close(exec_pipe[0]);
        fprintf(stderr, "harness: fork for %s failed: %s\n", name, strerror(err));
        return -1;
    }
    int exec_errno = 0;
    ssize_t got;
    do
        got = read(exec_pipe[0], &exec_errno, sizeof exec_errno);
    while (got < 0 && errno == EINTR);
    close(exec_pipe[0]);
    if (got > 0) fprintf(stderr, "harness: cannot exec %s (%s): %s\n", path, name, strerror(exec_errno));
    p->pid = pid;
    p->exit_code = -1;
    return h->nprocs++;
}

static bool reap(ts_h_proc_t *p, bool block)
{
    if (p->pid <= 0 || p->reaped) return true;
    int status = 0;
    pid_t r;
    do
        r = waitpid(p->pid, &status, block ? 0 : WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) return false;
    p->reaped = true;
    if (r < 0)
        p->exit_code = -1;
    else if (WIFEXITED(status))
        p->exit_code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        p->exit_code = 128 + WTERMSIG(status);
    return true;
}

int ts_h_spawn(ts_h_t *h, const char *name, const char *bin, const char *const *argv)
{
    /* A test's cells change only as the test says: the load-driven split and
     * merge planner is off unless a test asks for it (--split.auto=1, a flag,
     * beats the environment). */
    setenv("TESSERA_SPLIT_AUTO", "0", 0);
    char path[1024];
    if (strchr(bin, '/') != NULL)
        ts_strlcpy(path, bin, sizeof path);
    else
        snprintf(path, sizeof path, "%s/%s", TS_BIN_DIR, bin);
    if (access(path, X_OK) != 0) {
        h->failed = true;
        fail_msg("harness: %s is not an executable: %s", path, strerror(errno));
    }
    char *args[64];
    int n = 0;
    args[n++] = path;
    for (int i = 0; argv != NULL && argv[i] != NULL; i++) {
        if (n >= 63) {
            h->failed = true;
            fail_msg("harness: too many arguments for %s", name);
        }
        args[n++] = (char *)argv[i];
    }
    args[n] = NULL;
    int idx = launch(h, name, path, args);
    if (idx < 0) {
        h->failed = true;
        fail_msg("harness: cannot start %s", name);
    }
    return idx;
}

void ts_h_signal(ts_h_t *h, int idx, int sig)
{
    if (idx < 0 || idx >= h->nprocs) return;
    ts_h_proc_t *p = &h->procs[idx];
    if (p->pid > 0 && !p->reaped) {
        if (sig > 0 && sig < 32) p->signals_sent |= 1u << sig;
        kill(p->pid, sig);
    }
}

int ts_h_wait(ts_h_t *h, int idx, int64_t timeout_ms)
{
    if (idx < 0 || idx >= h->nprocs) return -1;
    ts_h_proc_t *p = &h->procs[idx];
    uint64_t deadline = ts_mono_us() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000;
    for (;;) {
        if (reap(p, false)) return p->exit_code;
        if (ts_mono_us() >= deadline) return -1;
        ts_sleep_ms(10);
    }
}

/* Sends SIGTERM to the servers (servers) or to everything else, waits,
 * then SIGKILLs the stragglers. */
static void terminate_group(ts_h_t *h, bool servers)
{
    for (int i = 0; i < h->nprocs; i++)
        if (h->procs[i].server == servers) ts_h_signal(h, i, SIGTERM);
    uint64_t deadline = ts_mono_us() + TERM_GRACE_MS * 1000ull;
    for (;;) {
        bool all = true;
        for (int i = 0; i < h->nprocs; i++)
            if (h->procs[i].server == servers) all = reap(&h->procs[i], false) && all;
        if (all) return;
        if (ts_mono_us() >= deadline) break;
        ts_sleep_ms(10);
    }
    for (int i = 0; i < h->nprocs; i++) {
        if (h->procs[i].server == servers && !h->procs[i].reaped) {
            fprintf(stderr, "harness: %s did not stop within %d ms, killing it\n", h->procs[i].name,
                    TERM_GRACE_MS);
            kill(h->procs[i].pid, SIGKILL);
            reap(&h->procs[i], true);
        }
    }
}

/* ---- logs and the temp dir --------------------------------------------------- */

static char *read_file(const char *path)
{
    char *text = NULL;
    size_t len;
    return ts_read_file(path, SIZE_MAX - 1, &text, &len) == TS_OK ? text : NULL;
}

char *ts_h_read_log(ts_h_t *h, int idx)
{
    if (idx < 0 || idx >= h->nprocs) return NULL;
    return read_file(h->procs[idx].log_path);
}

bool ts_h_log_has(ts_h_t *h, int idx, const char *needle)
{
    char *log = ts_h_read_log(h, idx);
    bool has = log != NULL && strstr(log, needle) != NULL;
    free(log);
    return has;
}

bool ts_h_wait_log(ts_h_t *h, int idx, const char *needle, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000;
    while (!ts_h_log_has(h, idx, needle)) {
        if (ts_mono_us() >= deadline) return false;
        ts_sleep_ms(20);
    }
    return true;
}

static void print_tail(const ts_h_proc_t *p)
{
    char *text = read_file(p->log_path);
    fprintf(stderr, "----- %s (%s, exit %d) last %d lines -----\n", p->name, p->log_path, p->exit_code,
            TAIL_LINES);
    if (text != NULL) {
        size_t len = strlen(text);
        size_t start = len;
        int lines = 0;
        while (start > 0) {
            if (text[start - 1] == '\n' && start != len && ++lines >= TAIL_LINES) break;
            start--;
        }
        fputs(text + start, stderr);
        if (len > 0 && text[len - 1] != '\n') fputc('\n', stderr);
        free(text);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

void ts_h_fail_dump(ts_h_t *h)
{
    h->failed = true;
}

/* ---- sanitizer reports -----------------------------------------------------------
 * A sanitizer in a service prints its report to stderr (the service's log)
 * and, for UBSan without halt_on_error, goes on: the test would pass. At stop
 * every log is read once and searched for the first line of any report. */

#define SAN_REPORT_LINES 40

static const char *const san_markers[] = {
    "ERROR: AddressSanitizer",  "ERROR: LeakSanitizer",      "ERROR: UndefinedBehaviorSanitizer",
    ": runtime error: ",        "WARNING: ThreadSanitizer",  "ERROR: ThreadSanitizer",
    "WARNING: MemorySanitizer", "ERROR: HWAddressSanitizer", "Sanitizer:DEADLYSIGNAL",
};

/* The start of the line of the first sanitizer report in text, or NULL.
 * (Not inlined: gcc 12 at -O2 then takes the result for a dangling pointer.) */
__attribute__((noinline)) static const char *find_sanitizer_report(const char *text)
{
    const char *first = NULL;
    for (size_t i = 0; i < sizeof san_markers / sizeof san_markers[0]; i++) {
        const char *at = strstr(text, san_markers[i]);
        if (at != NULL && (first == NULL || at < first)) first = at;
    }
    if (first == NULL) return NULL;
    while (first > text && first[-1] != '\n')
        first--;
    return first;
}

/* Why p's exit says it crashed or its sanitizer fired (a static string), or
 * NULL: TS_H_SANITIZER_EXIT, or a crash signal the test did not send. */
static const char *crash_exit(const ts_h_proc_t *p)
{
    static const int crash_sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    if (!p->reaped) return NULL;
    if (p->exit_code == TS_H_SANITIZER_EXIT) return "exited with the sanitizers' exit code";
    for (size_t i = 0; i < sizeof crash_sigs / sizeof crash_sigs[0]; i++)
        if (p->exit_code == 128 + crash_sigs[i] && !(p->signals_sent & (1u << crash_sigs[i])))
            return strsignal(crash_sigs[i]);
    return NULL;
}

/* Checks every process but the servers (each log once: a restarted process
 * appends to the log of its name); prints what it finds. Returns how many
 * processes had a report or crashed. */
static int check_sanitizers(ts_h_t *h)
{
    int bad = 0;
    for (int i = 0; i < h->nprocs; i++) {
        const ts_h_proc_t *p = &h->procs[i];
        if (p->server || p->pid <= 0) continue;
        bool log_seen = false;
        for (int k = 0; k < i && !log_seen; k++)
            log_seen = !h->procs[k].server && strcmp(h->procs[k].log_path, p->log_path) == 0;
        const char *why = crash_exit(p);
        char *text = log_seen ? NULL : read_file(p->log_path);
        const char *report = text != NULL ? find_sanitizer_report(text) : NULL;
        if (report != NULL || why != NULL) {
            bad++;
            fprintf(stderr, "===== harness: %s (pid %d, exit %d): %s; log %s =====\n", p->name, (int)p->pid,
                    p->exit_code, report != NULL ? "sanitizer report" : why, p->log_path);
            const char *end = report;
            for (int lines = 0; end != NULL && *end != '\0' && lines < SAN_REPORT_LINES; lines++) {
                const char *nl = strchr(end, '\n');
                end = nl != NULL ? nl + 1 : end + strlen(end);
            }
            if (report != NULL) {
                fwrite(report, 1, (size_t)(end - report), stderr);
                if (end > report && end[-1] != '\n') fputc('\n', stderr);
            }
            fprintf(stderr, "===== harness: end of %s's report =====\n", p->name);
        }
        free(text);
    }
    return bad;
}

void ts_h_stop(ts_h_t *h)
{
    if (h == NULL) return;
    if (h->tls) { /* the next harness may run without TLS */
        ts_bus_set_default_auth(NULL);
        ts_registry_set_default_tls(NULL, NULL, NULL);
    }
    terminate_group(h, false);
    terminate_group(h, true);
    live_remove(h);

    int bad = check_sanitizers(h);
    h->sanitizer_reports += bad;
    if (bad > 0 && !h->sanitizer_reports_expected) {
        h->failed = true;
        sanitizer_failures += bad;
    }

    bool keep = getenv("TS_KEEP_LOGS") != NULL;
    if (h->failed || keep) {
        for (int i = 0; i < h->nprocs; i++)
            print_tail(&h->procs[i]);
    }
    if (h->dir[0] != '\0') {
        if (h->failed || keep)
            fprintf(stderr, "harness: logs kept in %s\n", h->dir);
        else
            nftw(h->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    h->nprocs = 0;
    h->dir[0] = '\0';
}

/* ---- servers ------------------------------------------------------------------ */

/* Starts one server on a fresh port and waits until that very process
 * listens on it. A port someone else listens on is never used: when the
 * server cannot bind (it exits) or another process answers on its port, the
 * attempt is reported and retried on another port, three times at most. */
static int64_t nats_max_payload; /* ts_h_set_nats_max_payload */

void ts_h_set_nats_max_payload(int64_t bytes)
{
    nats_max_payload = bytes > 0 ? bytes : 0;
}

/* A config file with the limits of ts_h_set_nats_max_payload into path;
 * false if there are none (or it could not be written). */
static bool write_nats_limits(ts_h_t *h, char *path, size_t cap)
{
    if (nats_max_payload <= 0 || h->secure) return false;
    snprintf(path, cap, "%s/nats-limits.conf", h->dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) return false;
    fprintf(f, "max_payload: %lld\n", (long long)nats_max_payload);
    return fclose(f) == 0;
}

static bool start_server(ts_h_t *h, int slot, const char *name, int *port_out)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        int port = ts_h_free_port();
        if (port <= 0) return false;
        char portbuf[16], dirbuf[300];
        snprintf(portbuf, sizeof portbuf, "%d", port);
        h->nprocs = slot;
        int idx;
        if (slot == 0) {
            snprintf(dirbuf, sizeof dirbuf, "%s/js", h->dir);
            char conf[340];
            snprintf(conf, sizeof conf, "%s/nats.conf", h->secrets);
            bool limits = write_nats_limits(h, conf, sizeof conf);
            char *argv[] = {(char *)"nats-server",
                            (char *)"-js",
                            (char *)"-a",
                            (char *)"127.0.0.1",
                            (char *)"-p",
                            portbuf,
                            (char *)"-sd",
                            dirbuf,
                            h->secure || limits ? (char *)"-c" : NULL,
                            conf,
                            NULL};
            const char *bin =
                access("/usr/sbin/nats-server", X_OK) == 0 ? "/usr/sbin/nats-server" : "/usr/bin/nats-server";
            idx = launch(h, name, bin, argv);
        } else {
            snprintf(dirbuf, sizeof dirbuf, "%s", h->dir);
            char acl[340], cert[340], key[340], ca[340];
            snprintf(acl, sizeof acl, "%s/redis-users.acl", h->secrets);
            snprintf(cert, sizeof cert, "%s/server-cert.pem", h->secrets);
            snprintf(key, sizeof key, "%s/server-key.pem", h->secrets);
            snprintf(ca, sizeof ca, "%s/ca.pem", h->secrets);
            /* with TLS, Redis listens on TLS only (clients need no
             * certificate of their own: tls-auth-clients optional) */
            char *argv[32] = {(char *)"redis-server", (char *)"--bind", (char *)"127.0.0.1",
                              (char *)"--save",       (char *)"",       (char *)"--appendonly",
                              (char *)"no",           (char *)"--dir",  dirbuf};
            int argc = 9;
            if (h->secure) {
                argv[argc++] = (char *)"--aclfile";
                argv[argc++] = acl;
            }
            if (h->tls) {
                char *tls[] = {(char *)"--port",
                               (char *)"0",
                               (char *)"--tls-port",
                               portbuf,
                               (char *)"--tls-cert-file",
                               cert,
                               (char *)"--tls-key-file",
                               key,
                               (char *)"--tls-ca-cert-file",
                               ca,
                               (char *)"--tls-auth-clients",
                               (char *)"optional"};
                for (size_t i = 0; i < sizeof tls / sizeof tls[0]; i++)
                    argv[argc++] = tls[i];
            } else {
                argv[argc++] = (char *)"--port";
                argv[argc++] = portbuf;
            }
            argv[argc] = NULL;
            idx = launch(h, name, "/usr/bin/redis-server", argv);
        }
        if (idx < 0) return false;
        ts_h_proc_t *p = &h->procs[idx];
        p->server = true;
        const char *why = "did not listen in time";
        uint64_t deadline = ts_mono_us() + SERVER_START_MS * 1000ull;
        while (ts_mono_us() < deadline) {
            listener_t l = port_listener(port, p->pid);
            if (reap(p, false)) {
                why = "exited (could it not bind?)";
                break;
            }
            if (l == LISTENER_OURS && port_open(port)) {
                *port_out = port;
                return true;
            }
            if (l == LISTENER_FOREIGN) {
                why = "found its port taken by another process";
                break;
            }
            ts_sleep_ms(20);
        }
        if (!p->reaped) {
            kill(p->pid, SIGKILL);
            reap(p, true);
        }
        fprintf(stderr, "harness: %s on port %d %s (attempt %d of 3)\n", name, port, why, attempt + 1);
        print_tail(p);
    }
    return false;
}

#ifndef TS_SOURCE_DIR
/* this file is <source>/tests/integration/harness.c */
static void source_dir(char *buf, size_t cap)
{
    ts_strlcpy(buf, __FILE__, cap);
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(buf, '/');
        if (slash == NULL) {
            ts_strlcpy(buf, ".", cap);
            return;
        }
        *slash = '\0';
    }
}
#else
static void source_dir(char *buf, size_t cap)
{
    ts_strlcpy(buf, TS_SOURCE_DIR, cap);
}
#endif

/* Runs scripts/gen-secrets.sh into h->secrets; false on failure. */
static bool gen_secrets(ts_h_t *h)
{
    char src[512], script[600], log[400];
    source_dir(src, sizeof src);
    snprintf(script, sizeof script, "%s/scripts/gen-secrets.sh", src);
    snprintf(h->secrets, sizeof h->secrets, "%s/secrets", h->dir);
    snprintf(log, sizeof log, "%s/gen-secrets.log", h->dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        char *argv[] = {(char *)"bash", script, h->tls ? (char *)"--tls" : h->secrets,
                        h->tls ? h->secrets : NULL, NULL};
        execve("/bin/bash", argv, environ);
        _exit(127);
    }
    if (pid < 0) return false;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
    char *text = read_file(log);
    fprintf(stderr, "harness: %s failed:\n%s\n", script, text ? text : "");
    free(text);
    return false;
}

/* Reads the first line of a gen-secrets file into buf ("" on failure). */
static void read_secret(const ts_h_t *h, const char *file, char *buf, size_t cap)
{
    char path[512];
    ts_h_secret_path(h, file, path, sizeof path);
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    if (fgets(buf, (int)cap, f) == NULL) buf[0] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    fclose(f);
}

void ts_h_secret_path(const ts_h_t *h, const char *file, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", h->secrets, file);
}

static void url_as(const ts_h_t *h, const char *scheme, int port, const char *user, const char *kind,
                   char *buf, size_t cap)
{
    if (!h->secure || user == NULL) {
        snprintf(buf, cap, "%s://127.0.0.1:%d", scheme, port);
        return;
    }
    char file[128], pw[256];
    snprintf(file, sizeof file, "%s.%s.pass", user, kind);
    read_secret(h, file, pw, sizeof pw);
    snprintf(buf, cap, "%s://%s:%s@127.0.0.1:%d", scheme, user, pw, port);
}

void ts_h_nats_url_as(const ts_h_t *h, const char *user, char *buf, size_t cap)
{
    if (h->nnodes == 0) {
        url_as(h, "nats", h->nats_port, user, "nats", buf, cap);
        return;
    }
    /* a cluster: every node, comma-separated (nats.c's server list) */
    size_t len = 0;
    buf[0] = '\0';
    for (int k = 0; k < h->nnodes && len < cap; k++) {
        char one[256];
        url_as(h, "nats", h->node[k].port, user, "nats", one, sizeof one);
        int n = snprintf(buf + len, cap - len, "%s%s", k ? "," : "", one);
        if (n < 0) break;
        len += (size_t)n;
    }
}

void ts_h_redis_url_as(const ts_h_t *h, const char *user, char *buf, size_t cap)
{
    url_as(h, h->tls ? "rediss" : "redis", h->redis_port, user, "redis", buf, cap);
}

static void start_servers(ts_h_t *h, bool secure, bool tls, int nodes);

void ts_h_start(ts_h_t *h)
{
    start_servers(h, false, false, 0);
}

void ts_h_start_secure(ts_h_t *h)
{
    start_servers(h, true, false, 0);
}

void ts_h_start_secure_tls(ts_h_t *h)
{
    start_servers(h, true, true, 0);
}

void ts_h_start_cluster(ts_h_t *h, ts_h_security_t sec)
{
    start_servers(h, sec != TS_H_OPEN, sec == TS_H_SECURE_TLS, TS_H_CLUSTER_NODES);
}

/* ---- a JetStream cluster ---------------------------------------------------------
 * Three nats-server nodes n0..n2, each with its client, route and monitoring
 * port and its store dir <dir>/js-n<k>, routes to all three (a node skips
 * the route to itself), secured by the same nats.conf as a single server.
 * A killed node restarts on the same ports and store. */

#define CLUSTER_NAME "tessera-it"
#define HEALTH_POLL_MS 50

double ts_h_metric(int port, const char *name)
{
    static char body[65536];
    if (ts_h_http_get(port, "/metrics", body, sizeof body) != 200) return -1;
    char key[160];
    snprintf(key, sizeof key, "\n%s{", name);
    const char *p = strstr(body, key);
    if (p == NULL || (p = strchr(p, '}')) == NULL) return -1;
    return strtod(p + 1, NULL);
}

int ts_h_http_get(int port, const char *path, char *buf, size_t cap)
{
    if (cap == 0) return -1;
    buf[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || n < 0 || (size_t)n >= sizeof req ||
        write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    /* the whole response (HTTP/1.0: until the server closes), then the body */
    size_t cap_all = cap + 4096, len = 0;
    char *all = malloc(cap_all);
    if (all == NULL) {
        close(fd);
        return -1;
    }
    for (;;) {
        if (len + 1 >= cap_all) break;
        ssize_t got = read(fd, all + len, cap_all - 1 - len);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        len += (size_t)got;
    }
    close(fd);
    all[len] = '\0';
    int status = -1;
    if (sscanf(all, "HTTP/%*s %d", &status) != 1) status = -1;
    const char *body = strstr(all, "\r\n\r\n");
    if (body != NULL) ts_strlcpy(buf, body + 4, cap);
    free(all);
    return status;
}

/* Starts node k's nats-server (no wait); false if it could not be spawned. */
static bool launch_node(ts_h_t *h, int k)
{
    char name[16], sname[8], port[16], cluster[64], http[16], store[300], conf[340], routes[256];
    snprintf(name, sizeof name, "nats-n%d", k);
    snprintf(sname, sizeof sname, "n%d", k);
    snprintf(port, sizeof port, "%d", h->node[k].port);
    snprintf(cluster, sizeof cluster, "nats://127.0.0.1:%d", h->node[k].cluster_port);
    snprintf(http, sizeof http, "%d", h->node[k].http_port);
    snprintf(store, sizeof store, "%s/js-n%d", h->dir, k);
    snprintf(conf, sizeof conf, "%s/nats.conf", h->secrets);
    size_t len = 0;
    for (int i = 0; i < h->nnodes; i++)
        len += (size_t)snprintf(routes + len, sizeof routes - len, "%snats://127.0.0.1:%d", i ? "," : "",
                                h->node[i].cluster_port);
    char *argv[] = {(char *)"nats-server",
                    (char *)"-js",
                    (char *)"-a",
                    (char *)"127.0.0.1",
                    (char *)"-p",
                    port,
                    (char *)"-m",
                    http,
                    (char *)"-sd",
                    store,
                    (char *)"-n",
                    sname,
                    (char *)"--cluster_name",
                    (char *)CLUSTER_NAME,
                    (char *)"--cluster",
                    cluster,
                    (char *)"--routes",
                    routes,
                    h->secure ? (char *)"-c" : NULL,
                    conf,
                    NULL};
    const char *bin =
        access("/usr/sbin/nats-server", X_OK) == 0 ? "/usr/sbin/nats-server" : "/usr/bin/nats-server";
    int idx = launch(h, name, bin, argv);
    if (idx < 0) return false;
    h->procs[idx].server = true;
    h->node[k].idx = idx;
    h->node[k].down = false;
    return true;
}

/* Waits until node k's own process listens on its client port. */
static bool wait_node_listens(ts_h_t *h, int k, int64_t timeout_ms)
{
    ts_h_proc_t *p = &h->procs[h->node[k].idx];
    uint64_t deadline = ts_mono_us() + (uint64_t)timeout_ms * 1000;
    while (ts_mono_us() < deadline) {
        if (reap(p, false)) {
            fprintf(stderr, "harness: %s exited with %d before it listened on %d\n", p->name, p->exit_code,
                    h->node[k].port);
            print_tail(p);
            return false;
        }
        listener_t l = port_listener(h->node[k].port, p->pid);
        if (l == LISTENER_OURS && port_open(h->node[k].port)) return true;
        if (l == LISTENER_FOREIGN) {
            fprintf(stderr, "harness: %s found its port %d taken by another process\n", p->name,
                    h->node[k].port);
            return false;
        }
        ts_sleep_ms(20);
    }
    fprintf(stderr, "harness: %s did not listen on %d within %lld ms\n", p->name, h->node[k].port,
            (long long)timeout_ms);
    return false;
}

static bool node_healthy(const ts_h_t *h, int k)
{
    char body[512];
    return ts_h_http_get(h->node[k].http_port, "/healthz", body, sizeof body) == 200 &&
           strstr(body, "ok") != NULL;
}

bool ts_h_cluster_wait_healthy(ts_h_t *h, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000;
    for (;;) {
        int sick = -1;
        for (int k = 0; k < h->nnodes && sick < 0; k++)
            if (!h->node[k].down && !node_healthy(h, k)) sick = k;
        if (sick < 0) return true;
        if (ts_mono_us() >= deadline) {
            char body[512];
            int status = ts_h_http_get(h->node[sick].http_port, "/healthz", body, sizeof body);
            fprintf(stderr, "harness: nats node n%d not healthy after %lld ms: HTTP %d %s\n", sick,
                    (long long)timeout_ms, status, body);
            return false;
        }
        ts_sleep_ms(HEALTH_POLL_MS);
    }
}

/* Allocates the ports and starts the three nodes; false (after a message)
 * when one of them does not come up. */
static bool start_cluster_nodes(ts_h_t *h)
{
    h->nnodes = TS_H_CLUSTER_NODES;
    for (int k = 0; k < h->nnodes; k++) {
        h->node[k].port = ts_h_free_port();
        h->node[k].cluster_port = ts_h_free_port();
        h->node[k].http_port = ts_h_free_port();
        if (h->node[k].port <= 0 || h->node[k].cluster_port <= 0 || h->node[k].http_port <= 0) return false;
        char store[300];
        snprintf(store, sizeof store, "%s/js-n%d", h->dir, k);
        mkdir(store, 0755);
    }
    h->nats_port = h->node[0].port;
    /* node 0 is procs[TS_H_NATS]; redis-server comes next, as in ts_h_start */
    h->nprocs = 0;
    return launch_node(h, 0);
}

void ts_h_cluster_kill(ts_h_t *h, int node)
{
    if (node < 0 || node >= h->nnodes || h->node[node].down) return;
    ts_h_proc_t *p = &h->procs[h->node[node].idx];
    if (p->pid > 0 && !p->reaped) {
        kill(p->pid, SIGKILL);
        reap(p, true);
    }
    h->node[node].down = true;
}

bool ts_h_cluster_restart(ts_h_t *h, int node, int64_t timeout_ms)
{
    if (node < 0 || node >= h->nnodes) return false;
    if (!h->node[node].down) ts_h_cluster_kill(h, node);
    uint64_t start = ts_mono_us();
    if (!launch_node(h, node) || !wait_node_listens(h, node, timeout_ms)) return false;
    int64_t left = timeout_ms - (int64_t)((ts_mono_us() - start) / 1000);
    return ts_h_cluster_wait_healthy(h, left > 0 ? left : 0);
}

/* The value after "key": from p on (skipping spaces), as a string without
 * quotes into out; the position after it, or NULL if key is not found
 * before end. */
static const char *json_after(const char *p, const char *end, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *k = strstr(p, pat);
    if (k == NULL || (end != NULL && k >= end)) return NULL;
    k += strlen(pat);
    while (*k == ' ' || *k == ':' || *k == '\n' || *k == '\t' || *k == '\r')
        k++;
    bool quoted = *k == '"';
    if (quoted) k++;
    size_t n = 0;
    while (*k && (quoted ? *k != '"' : (*k != ',' && *k != '}' && *k != '\n' && *k != ' ')) && n + 1 < cap)
        out[n++] = *k++;
    out[n] = '\0';
    return k;
}

/* Node k's view of stream: its leader (or -1) and, when counted from the
 * leader itself (only the leader tracks its followers), the current
 * replicas. */
static int stream_view(ts_h_t *h, int k, const char *stream, char *body, size_t cap, int *current)
{
    *current = 0;
    if (h->node[k].down ||
        ts_h_http_get(h->node[k].http_port, "/jsz?accounts=true&streams=true", body, cap) != 200)
        return -1;
    /* "stream_detail": [ { "name": "<stream>", ..., "cluster": { "leader": "n1",
     *   "replicas": [ { "name": "n0", "current": true, ... }, ... ] }, ... } ] */
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\"", stream);
    const char *at = strstr(body, pat);
    const char *cl = at ? strstr(at, "\"cluster\"") : NULL;
    if (cl == NULL) return -1;
    const char *end = strstr(cl, "\"state\""); /* the stream's fields after its cluster */
    char val[64];
    if (json_after(cl, end, "leader", val, sizeof val) == NULL || val[0] != 'n') return -1;
    int leader = atoi(val + 1);
    if (leader < 0 || leader >= h->nnodes) return -1;
    int n = 1;
    for (const char *p = cl; (p = json_after(p, end, "current", val, sizeof val)) != NULL;)
        n += strcmp(val, "true") == 0;
    *current = n;
    return leader;
}

int ts_h_cluster_stream_leader(ts_h_t *h, const char *stream, int *current)
{
    int dummy;
    if (current == NULL) current = &dummy;
    *current = 0;
    size_t cap = 1 << 20;
    char *body = malloc(cap);
    if (body == NULL) return -1;
    int leader = -1;
    for (int k = 0; k < h->nnodes && leader < 0; k++) {
        int seen_current;
        int seen = stream_view(h, k, stream, body, cap, &seen_current);
        if (seen < 0) continue;
        /* ask the leader itself: it knows whether its followers are current */
        if (seen == k || stream_view(h, seen, stream, body, cap, current) == seen) leader = seen;
        if (seen == k) *current = seen_current;
    }
    free(body);
    return leader;
}

static void start_servers(ts_h_t *h, bool secure, bool tls, int nodes)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (live[i] == h) ts_h_stop(h); /* started twice: do not lose the first servers */
    }
    memset(h, 0, sizeof *h);
    install_hooks();
    const char *tmp = getenv("TMPDIR");
    snprintf(h->dir, sizeof h->dir, "%s/tessera-it-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(h->dir) == NULL) {
        int err = errno;
        h->dir[0] = '\0';
        fail_msg("harness: mkdtemp failed: %s", strerror(err));
    }
    char js[300];
    snprintf(js, sizeof js, "%s/js", h->dir);
    mkdir(js, 0755);
    live_add(h);
    if (secure) {
        h->secure = true;
        h->tls = tls;
        if (!gen_secrets(h)) {
            h->failed = true;
            ts_h_stop(h);
            fail_msg("harness: cannot generate the secured servers' configuration");
        }
        char ca[400];
        ts_h_secret_path(h, "ca.pem", ca, sizeof ca);
        ts_bus_auth_t auth = {.tls_ca = tls ? ca : NULL};
        ts_bus_set_default_auth(&auth);
        if (tls) ts_registry_set_default_tls(ca, NULL, NULL);
    }

    if (nodes > 0 ? !start_cluster_nodes(h) : !start_server(h, 0, "nats", &h->nats_port)) {
        h->failed = true;
        ts_h_stop(h);
        fail_msg("harness: nats-server -js did not start");
    }
    ts_h_nats_url_as(h, NULL, h->nats_plain_url, sizeof h->nats_plain_url);
    ts_h_nats_url_as(h, "admin", h->nats_urls, sizeof h->nats_urls);
    url_as(h, "nats", h->nats_port, "admin", "nats", h->nats_url, sizeof h->nats_url);
    if (!start_server(h, 1, "redis", &h->redis_port)) {
        h->failed = true;
        ts_h_stop(h);
        fail_msg("harness: redis-server did not start");
    }
    if (nodes > 0) {
        bool up = true;
        for (int k = 1; k < h->nnodes && up; k++)
            up = launch_node(h, k);
        for (int k = 0; k < h->nnodes && up; k++)
            up = wait_node_listens(h, k, SERVER_START_MS);
        if (!up || !ts_h_cluster_wait_healthy(h, SERVER_START_MS * 3)) {
            h->failed = true;
            ts_h_stop(h);
            fail_msg("harness: the %d-node JetStream cluster did not come up", nodes);
        }
    }
    snprintf(h->redis_plain_url, sizeof h->redis_plain_url, "%s://127.0.0.1:%d", h->tls ? "rediss" : "redis",
             h->redis_port);
    ts_h_redis_url_as(h, "admin", h->redis_url, sizeof h->redis_url);
}

bool ts_h_wait_world(ts_h_t *h, uint32_t world, int ncells, int64_t timeout_ms)
{
    uint64_t deadline = ts_mono_us() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000;
    ts_registry_t *reg = NULL;
    bool ready = false;
    while (!ready) {
        if (reg == NULL && ts_registry_connect(&reg, h->redis_url) != TS_OK) reg = NULL;
        if (reg != NULL) {
            ts_world_t w;
            ts_cell_entry_t *cells = NULL;
            size_t n = 0;
            if (ts_registry_world_get(reg, world, &w) == TS_OK &&
                ts_registry_cells(reg, world, &cells, &n) == TS_OK && (int)n >= ncells) {
                ready = true;
                for (size_t i = 0; i < n; i++)
                    if (cells[i].owner[0] == '\0') ready = false;
            }
            free(cells);
        }
        if (ready || ts_mono_us() >= deadline) break;
        ts_sleep_ms(50);
    }
    ts_registry_destroy(reg);
    return ready;
}

void ts_h_spawn_stack(ts_h_t *h, const char *const *orch_args, const char *const *worker_args,
                      const char *const *gateway_args, ts_h_stack_t *out)
{
    static const char *const ids[2] = {"w1", "w2"};
    const char *args[32];
    size_t n;
    out->orch = ts_h_spawn(h, "orch", "tessera-orch", orch_args);
    for (int i = 0; i < 2; i++) {
        char id[32];
        snprintf(id, sizeof id, "--worker.id=%s", ids[i]);
        n = 0;
        args[n++] = id;
        for (size_t k = 0; worker_args != NULL && worker_args[k] != NULL && n < 31; k++)
            args[n++] = worker_args[k];
        args[n] = NULL;
        out->workers[i] = ts_h_spawn(h, ids[i], "tessera-worker", args);
    }
    out->gw_port = ts_h_free_port();
    char listen[64], ws_listen[64];
    snprintf(listen, sizeof listen, "--gateway.listen=127.0.0.1:%d", out->gw_port);
    n = 0;
    args[n++] = listen;
    if (ts_h_ws_listen(out->gw_port, ws_listen, sizeof ws_listen) != NULL) args[n++] = ws_listen;
    for (size_t k = 0; gateway_args != NULL && gateway_args[k] != NULL && n < 31; k++)
        args[n++] = gateway_args[k];
    args[n] = NULL;
    out->gateway = ts_h_spawn(h, "gateway", "tessera-gateway", args);
}

/* ---- players over WebSocket ------------------------------------------------------ */

bool ts_h_ws;
static struct {
    int tcp, ws;
} ws_ports[32];
static size_t nws_ports;

bool ts_h_ws_main(int argc, char **argv)
{
    ts_h_ws = argc > 1 && strcmp(argv[1], "--ws") == 0;
    return ts_h_ws;
}

const char *ts_h_ws_listen(int tcp_port, char *buf, size_t cap)
{
    if (!ts_h_ws) return NULL;
    if (nws_ports == sizeof ws_ports / sizeof ws_ports[0])
        fail_msg("harness: more than 32 WebSocket gateways");
    int ws = ts_h_free_port();
    ws_ports[nws_ports].tcp = tcp_port;
    ws_ports[nws_ports++].ws = ws;
    snprintf(buf, cap, "--gateway.ws_listen=127.0.0.1:%d", ws);
    return buf;
}

int ts_h_player_port(int tcp_port)
{
    for (size_t i = nws_ports; ts_h_ws && i > 0; i--) /* the newest gateway on that port */
        if (ws_ports[i - 1].tcp == tcp_port) return ws_ports[i - 1].ws;
    return tcp_port;
}

ts_status_t ts_h_client_connect(ts_client_t **out, int tcp_port, int64_t timeout_ms)
{
    if (!ts_h_ws) return ts_client_connect(out, "127.0.0.1", tcp_port, timeout_ms);
    int port = ts_h_player_port(tcp_port);
    if (port == tcp_port) fail_msg("harness: the gateway on port %d has no WebSocket listener", tcp_port);
    return ts_client_connect_ws(out, "127.0.0.1", port, NULL, timeout_ms);
}

/* ---- shared cmocka fixtures ------------------------------------------------------- */

ts_h_t ts_h;
static bool test_passed;

void ts_h_pass(void)
{
    test_passed = true;
}

bool ts_h_passed(void)
{
    return test_passed;
}

int ts_h_group_setup(void **state)
{
    (void)state;
    ts_h_start(&ts_h);
    return 0;
}

int ts_h_group_teardown(void **state)
{
    (void)state;
    ts_h_stop(&ts_h);
    return 0;
}

int ts_h_test_setup(void **state)
{
    (void)state;
    test_passed = false;
    return 0;
}

int ts_h_test_teardown(void **state)
{
    (void)state;
    if (!test_passed) ts_h_fail_dump(&ts_h);
    return 0;
}

int ts_h_test_start(void **state)
{
    ts_h_test_setup(state);
    ts_h_start(&ts_h);
    return 0;
}

int ts_h_test_stop(void **state)
{
    ts_h_test_teardown(state);
    ts_h_stop(&ts_h);
    return 0;
}

int ts_h_run(const char *name, const struct CMUnitTest *tests, size_t n, CMFixtureFunction group_setup,
             CMFixtureFunction group_teardown)
{
    ts_log_init(name, TS_LOG_ERROR, false);
    /* TS_H_FILTER=test_auth runs one test of the group (a cmocka pattern) */
    const char *filter = getenv("TS_H_FILTER");
    if (filter != NULL && filter[0] != '\0') cmocka_set_test_filter(filter);
    int failed = _cmocka_run_group_tests(name, tests, n, group_setup, group_teardown);
    ts_bus_shutdown_library();
    if (sanitizer_failures > 0) {
        fprintf(stderr,
                "harness: %d process(es) started by %s had a sanitizer report or crashed (see the "
                "\"===== harness:\" reports above): failing\n",
                sanitizer_failures, name);
        if (failed == 0) failed = 1;
    }
    return failed;
}
