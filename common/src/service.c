/* Service bootstrap: configuration, --help, logging, stop signals and
 * connection retries, so every main does them the same way.
 *
 * Invariants: the signal handler only bumps the stop counter (capped at 2);
 * every retry loop checks that counter before each attempt and while it
 * sleeps, so a signal ends it within SLICE_MS; a loop that gives up logs
 * exactly one error naming what it could not reach, retries are logged at
 * debug only. */
#include "tessera/service.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "tessera/log.h"
#include "tessera/util.h"

#define SLICE_MS 50
#define STOP_MAX 2

static volatile sig_atomic_t own_stop;
static volatile sig_atomic_t *stop_counter = &own_stop;
static bool bus_used; /* nats.c was initialised */

static void on_signal(int sig)
{
    (void)sig;
    if (*stop_counter < STOP_MAX) (*stop_counter)++;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc && argv[i] && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return true;
    }
    return false;
}

/* Reads the first line of a secret file (a password) into buf. Warns when
 * others may read the file. */
static bool read_secret(const char *key, const char *path, char *buf, size_t cap, char *err, size_t errcap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errcap, "%s: cannot open %s: %s", key, path, strerror(errno));
        return false;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & S_IROTH))
        fprintf(stderr, "warning: %s: %s is readable by every user (chmod 600 it)\n", key, path);
    bool ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    if (ok) buf[strcspn(buf, "\r\n")] = '\0';
    if (!ok || buf[0] == '\0') {
        snprintf(err, errcap, "%s: %s holds no password on its first line", key, path);
        return false;
    }
    return true;
}

/* Hands the NATS and Redis credentials and TLS files of cfg to the bus and
 * the registry (their connects use them from then on). False with err set
 * when a password file cannot be read. */
static bool apply_credentials(const ts_config_t *cfg, char *err, size_t errcap)
{
    char password[256] = "";
    bool ok = true;
    if (cfg->nats_password_file && cfg->nats_password_file[0])
        ok = read_secret("nats.password_file", cfg->nats_password_file, password, sizeof password, err,
                         errcap);
    if (ok) {
        ts_bus_auth_t auth = {
            .user = cfg->nats_user,
            .password = password,
            .creds_file = cfg->nats_creds,
            .tls_ca = cfg->nats_tls_ca,
            .tls_cert = cfg->nats_tls_cert,
            .tls_key = cfg->nats_tls_key,
        };
        if (ts_bus_set_default_auth(&auth) != TS_OK) {
            snprintf(err, errcap, "out of memory");
            ok = false;
        }
    }
    memset(password, 0, sizeof password);
    if (ok && cfg->redis_password_file && cfg->redis_password_file[0])
        ok = read_secret("redis.password_file", cfg->redis_password_file, password, sizeof password, err,
                         errcap);
    if (ok && ts_registry_set_default_auth(cfg->redis_user, password) != TS_OK) {
        snprintf(err, errcap, "redis.password_file: password too long");
        ok = false;
    }
    if (ok &&
        ts_registry_set_default_tls(cfg->redis_tls_ca, cfg->redis_tls_cert, cfg->redis_tls_key) != TS_OK) {
        snprintf(err, errcap, "redis.tls_*: path too long");
        ok = false;
    }
    memset(password, 0, sizeof password);
    return ok;
}

void ts_service_usage(const ts_service_t *svc, FILE *out)
{
    if (svc->usage) fputs(svc->usage, out);
    ts_config_usage(out);
}

bool ts_service_init(const ts_service_t *svc, int argc, char **argv, ts_config_t *cfg, char ***rest,
                     int *nrest, int *exit_code)
{
    const char *name = svc->name ? svc->name : "tessera";
    if (wants_help(argc, argv)) {
        memset(cfg, 0, sizeof *cfg);
        ts_service_usage(svc, stdout);
        fflush(stdout);
        *exit_code = 0;
        return false;
    }
    char err[512] = "";
    if (ts_config_load(cfg, argc, argv, rest, nrest, err, sizeof err) != TS_OK) {
        ts_config_free(cfg);
        if (strcmp(err, "help") == 0) {
            *exit_code = 0;
            return false;
        }
        fprintf(stderr, "%s: %s%s\n", name, err[0] ? err : "bad configuration",
                strstr(err, "--help") ? "" : " (see --help)");
        *exit_code = svc->config_exit ? svc->config_exit : TS_SERVICE_EXIT_CONFIG;
        return false;
    }
    if (!apply_credentials(cfg, err, sizeof err)) {
        ts_config_free(cfg);
        fprintf(stderr, "%s: %s\n", name, err);
        *exit_code = svc->config_exit ? svc->config_exit : TS_SERVICE_EXIT_CONFIG;
        return false;
    }
    ts_log_level_t level = TS_LOG_INFO;
    ts_log_level_parse(cfg->log_level, &level);
    ts_log_init(name, level, cfg->log_format && strcmp(cfg->log_format, "json") == 0);
    if (!svc->no_signals) {
        stop_counter = svc->stop ? svc->stop : &own_stop;
        install_signals();
    }
    *exit_code = 0;
    return true;
}

volatile sig_atomic_t *ts_service_stop_flag(void)
{
    return stop_counter;
}

bool ts_service_stopping(void)
{
    return *stop_counter != 0;
}

bool ts_service_retry_wait(uint64_t deadline_us)
{
    uint64_t now = ts_mono_us();
    if (ts_service_stopping() || now >= deadline_us) return false;
    uint64_t until = now + TS_SERVICE_RETRY_MS * 1000ULL;
    if (until > deadline_us) until = deadline_us;
    while (!ts_service_stopping() && (now = ts_mono_us()) < until) {
        uint64_t left_ms = (until - now + 999) / 1000;
        ts_sleep_ms(left_ms < SLICE_MS ? (int64_t)left_ms : SLICE_MS);
    }
    return !ts_service_stopping();
}

static uint64_t deadline_after(int64_t timeout_ms)
{
    return ts_mono_us() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000ULL;
}

/* The one line a connect loop logs when it ends without success (a
 * password in the URL is not shown). */
static void give_up(const char *what, const char *raw_url, int64_t timeout_ms, ts_status_t st)
{
    char url[256];
    ts_bus_redact_url(url, sizeof url, raw_url);
    if (ts_service_stopping())
        ts_debug("stopped while connecting to %s at %s", what, url);
    else
        ts_error("cannot connect to %s at %s within %g s: %s", what, url, (double)timeout_ms / 1000.0,
                 ts_status_str(st));
}

ts_status_t ts_service_connect_bus(const ts_config_t *cfg, const char *conn_name, int64_t timeout_ms,
                                   ts_bus_t **out)
{
    uint64_t deadline = deadline_after(timeout_ms);
    ts_status_t st = TS_ERR_UNAVAILABLE;
    *out = NULL;
    while (!ts_service_stopping()) {
        bus_used = true;
        st = ts_bus_connect(out, cfg->nats_url, conn_name);
        if (st == TS_OK) return TS_OK;
        *out = NULL;
        ts_debug("nats not ready: %s", ts_status_str(st));
        if (!ts_service_retry_wait(deadline)) break;
    }
    give_up("NATS", cfg->nats_url, timeout_ms, st);
    return st;
}

ts_status_t ts_service_connect_registry(const ts_config_t *cfg, int64_t timeout_ms, ts_registry_t **out)
{
    uint64_t deadline = deadline_after(timeout_ms);
    ts_status_t st = TS_ERR_UNAVAILABLE;
    *out = NULL;
    while (!ts_service_stopping()) {
        st = ts_registry_connect(out, cfg->redis_url);
        if (st == TS_OK) return TS_OK;
        *out = NULL;
        ts_debug("redis not ready: %s", ts_status_str(st));
        if (st == TS_ERR_CONFIG || !ts_service_retry_wait(deadline)) break;
    }
    give_up("Redis", cfg->redis_url, timeout_ms, st);
    return st;
}

ts_status_t ts_service_wait_world(const ts_config_t *cfg, ts_registry_t *reg, int64_t timeout_ms,
                                  ts_world_t *out)
{
    uint64_t deadline = deadline_after(timeout_ms);
    uint32_t id = (uint32_t)cfg->world_id;
    ts_status_t st = TS_ERR_UNAVAILABLE;
    bool told = false;
    while (!ts_service_stopping()) {
        st = ts_registry_world_get(reg, id, out);
        if (st == TS_OK) return TS_OK;
        if (st == TS_ERR_NOT_FOUND && !told) {
            ts_info("waiting for the orchestrator to write world %u", id);
            told = true;
        } else {
            ts_debug("world %u not readable yet: %s", id, ts_status_str(st));
        }
        if (!ts_service_retry_wait(deadline)) break;
    }
    char url[256];
    ts_bus_redact_url(url, sizeof url, cfg->redis_url);
    if (ts_service_stopping())
        ts_debug("stopped while waiting for world %u", id);
    else if (st == TS_ERR_NOT_FOUND)
        ts_error("world %u is not in the registry at %s after %g s (is tessera-orch running?)", id, url,
                 (double)timeout_ms / 1000.0);
    else
        ts_error("cannot read world %u from Redis at %s within %g s: %s", id, url,
                 (double)timeout_ms / 1000.0, ts_status_str(st));
    return st;
}

void ts_service_shutdown(void)
{
    if (!bus_used) return;
    ts_bus_shutdown_library();
    bus_used = false;
}
