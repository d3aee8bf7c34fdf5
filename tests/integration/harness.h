/* Integration-test harness: starts real nats-server (JetStream) and
 * redis-server on free loopback ports, spawns Tessera binaries, and always
 * reaps every process it started — at ts_h_stop(), at exit, and when the test
 * process dies (children get PR_SET_PDEATHSIG). Logs of every process go to
 * files under a temporary directory; ts_h_stop() prints their tails when the
 * test failed (ts_h_fail_dump) and deletes the directory otherwise. It also
 * carries what every it_* binary shares: the standard orch + w1 + w2 +
 * gateway stack and the cmocka fixtures around one global harness, ts_h. */
#ifndef TS_HARNESS_H
#define TS_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>

#include "tessera/bus.h"
#include "tessera/client.h"
#include "tessera/registry.h"

#define TS_H_MAX_PROCS 64
/* Indices in procs[] of the two servers ts_h_start() starts. */
#define TS_H_NATS 0
#define TS_H_REDIS 1

typedef struct {
    pid_t pid;
    char name[64];
    char log_path[512];
    bool reaped;           /* exited and waited for; exit_code is valid */
    int exit_code;         /* WEXITSTATUS, or 128+signal */
    bool server;           /* nats-server or redis-server: stopped after everything else */
    unsigned signals_sent; /* bit n: the test sent signal n (ts_h_signal, ts_h_cluster_kill) */
} ts_h_proc_t;

/* The exit status of a spawned process whose sanitizer (ASan, LSan, UBSan)
 * reported an error: ts_h_spawn gives every child ASAN_OPTIONS,
 * LSAN_OPTIONS and UBSAN_OPTIONS with exitcode=<this> appended, so that a
 * sanitizer's exit is never mistaken for a service's own exit status. */
#define TS_H_SANITIZER_EXIT 86

/* Nodes of the JetStream cluster ts_h_start_cluster() starts. */
#define TS_H_CLUSTER_NODES 3

/* One node of a harness cluster: its ports and where it is in procs[]. */
typedef struct {
    int idx;          /* index in procs[] of the node's current process */
    int port;         /* client port */
    int cluster_port; /* route port */
    int http_port;    /* monitoring port (/healthz, /jsz) */
    bool down;        /* killed by ts_h_cluster_kill and not restarted */
} ts_h_node_t;

typedef struct {
    char dir[256]; /* temp dir for data and logs */
    int nats_port;
    int redis_port;
    char nats_url[128];  /* nats://127.0.0.1:<port> (a cluster: node 0) */
    char nats_urls[512]; /* the same, or a cluster's every node, comma-separated: connect with this */
    char redis_url[128]; /* redis://127.0.0.1:<port> */
    ts_h_proc_t procs[TS_H_MAX_PROCS];
    int nprocs;
    bool failed;
    /* secured servers (ts_h_start_secure): nats_url and redis_url above then
     * carry the admin user's credentials */
    bool secure;
    bool tls;                  /* secured with TLS on NATS (ts_h_start_secure_tls) */
    char secrets[300];         /* <dir>/secrets: scripts/gen-secrets.sh output */
    char nats_plain_url[128];  /* nats://127.0.0.1:<port> (or every node), no credentials */
    char redis_plain_url[128]; /* redis://127.0.0.1:<port>, no credentials */
    /* a JetStream cluster (ts_h_start_cluster): nodes, 0 for a single server;
     * procs[TS_H_NATS] is node 0's first process and nats_port its port */
    int nnodes;
    ts_h_node_t node[TS_H_CLUSTER_NODES];
    /* Processes found by the last ts_h_stop with a sanitizer report in
     * their log, or that exited with TS_H_SANITIZER_EXIT or a crash signal
     * the test did not send. */
    int sanitizer_reports;
    /* The test provokes such reports on purpose (the harness's own test):
     * ts_h_stop still counts and prints them, but they do not fail the run.
     * Set after ts_h_start. */
    bool sanitizer_reports_expected;
} ts_h_t;

/* A free TCP port on 127.0.0.1: bound and released, nobody listening on it,
 * and never handed out before by this process; -1 if none was found. */
int ts_h_free_port(void);
/* Whether anything listens on 127.0.0.1:port. */
bool ts_h_port_busy(int port);
/* Polls until 127.0.0.1:port accepts TCP connections from a process that a
 * live harness started. False after timeout_ms, and false at once (with a
 * message on stderr) when a process the harness did not start listens
 * there: a service that could not bind is never mistaken for a server
 * someone else runs. */
bool ts_h_wait_port(int port, int64_t timeout_ms);

/* Creates the temp dir and starts nats-server -js and redis-server, each on
 * a free port, and waits until each listens there itself (a port another
 * process holds is refused and another one tried, three times). Fails the
 * cmocka test (fail_msg) on error. */
void ts_h_start(ts_h_t *h);
/* nats-server's max_payload (bytes) for the single server of every later
 * ts_h_start (0, the default: nats-server's own, 1 MB); through a config
 * file in the harness's directory. Not for secured servers or clusters. */
void ts_h_set_nats_max_payload(int64_t bytes);
/* ts_h_start with both servers secured by scripts/gen-secrets.sh (into
 * h->secrets): nats-server with per-service users and subject permissions,
 * redis-server with per-service ACL users and the default user off.
 * h->nats_url / h->redis_url carry the admin user (so every helper and
 * existing test code works unchanged); services started by ts_h_spawn get
 * their own user (tessera-orch: orch, tessera-worker: worker-w1 / worker-w2
 * for --worker.id=w1 / w2, else worker, tessera-gateway: gateway,
 * tessera-sim: sim, tessera-ctl: ctl, anything else: admin) through
 * TESSERA_{NATS,REDIS}_USER and *_PASSWORD_FILE. */
void ts_h_start_secure(ts_h_t *h);
/* ts_h_start_secure with TLS required by nats-server (gen-secrets --tls: a
 * throw-away CA, h->secrets/ca.pem). The test process's own connects trust
 * that CA (ts_bus_set_default_auth); services get TESSERA_NATS_TLS_CA. */
void ts_h_start_secure_tls(ts_h_t *h);
/* How the servers of ts_h_start_cluster are secured. */
typedef enum {
    TS_H_OPEN,       /* as ts_h_start */
    TS_H_SECURE,     /* as ts_h_start_secure */
    TS_H_SECURE_TLS, /* as ts_h_start_secure_tls */
} ts_h_security_t;
/* Starts a 3-node JetStream cluster (nats-server nodes n0, n1, n2 on free
 * loopback ports: client, route and monitoring port each, a store dir each
 * under h->dir, routes between all three, cluster name "tessera-it") and
 * redis-server, secured as sec says; waits until every node answers its
 * /healthz (JetStream has a meta leader). h->nats_urls and every spawned
 * service's TESSERA_NATS_URL list all three nodes, so clients move to
 * another node when theirs dies (h->nats_url is node 0 alone). Streams are R1 unless the services are
 * given --stream.replicas=3. Fails the cmocka test on error. */
void ts_h_start_cluster(ts_h_t *h, ts_h_security_t sec);
/* SIGKILLs node (0..TS_H_CLUSTER_NODES-1) of the cluster and reaps it; its
 * store stays. */
void ts_h_cluster_kill(ts_h_t *h, int node);
/* Starts node again on the same ports and store (after ts_h_cluster_kill)
 * and waits up to timeout_ms until it listens and its /healthz says ok
 * (it rejoined, and the streams it holds replicas of caught up). False on
 * timeout (with a message on stderr). */
bool ts_h_cluster_restart(ts_h_t *h, int node, int64_t timeout_ms);
/* Polls until every running node's /healthz says ok; false after
 * timeout_ms. */
bool ts_h_cluster_wait_healthy(ts_h_t *h, int64_t timeout_ms);
/* The node that leads stream (its JetStream Raft group), from the
 * monitoring endpoint of a running node; -1 if none is known. When current is
 * not NULL, *current gets the number of the stream's replicas that are current
 * (the leader included). */
int ts_h_cluster_stream_leader(ts_h_t *h, const char *stream, int *current);
/* GET http://127.0.0.1:port/path into buf (body, NUL-terminated, truncated
 * to cap); returns the HTTP status, or -1 if it could not be fetched. */
int ts_h_http_get(int port, const char *path, char *buf, size_t cap);
/* The value of the first sample of metric `name` (labels ignored) on the
 * /metrics of http://127.0.0.1:port; -1 when it cannot be read. */
double ts_h_metric(int port, const char *name);

/* URL of the harness's NATS / Redis as user (a gen-secrets user; NULL: no
 * credentials) into buf. Without secured servers the user is ignored. A
 * cluster's URL lists every node, comma-separated. */
void ts_h_nats_url_as(const ts_h_t *h, const char *user, char *buf, size_t cap);
void ts_h_redis_url_as(const ts_h_t *h, const char *user, char *buf, size_t cap);
/* Path of a gen-secrets file (e.g. "gateway.nats.pass") into buf. */
void ts_h_secret_path(const ts_h_t *h, const char *file, char *buf, size_t cap);

/* Spawns TS_BIN_DIR/<bin> with argv (NULL-terminated, without argv[0]) and
 * TESSERA_NATS_URL / TESSERA_REDIS_URL set to the harness servers (and, with
 * secured servers, the credentials of the binary's user); stdout and stderr
 * go to <dir>/<name>.log. Returns the index in h->procs. */
int ts_h_spawn(ts_h_t *h, const char *name, const char *bin, const char *const *argv);
/* Sends sig to a spawned process (by index). */
void ts_h_signal(ts_h_t *h, int idx, int sig);
/* Waits up to timeout_ms for the process to exit; returns its exit status
 * (WEXITSTATUS, or 128+signal) or -1 on timeout. */
int ts_h_wait(ts_h_t *h, int idx, int64_t timeout_ms);
/* Kills (SIGTERM, then SIGKILL after 3 s) and reaps everything, the servers
 * last. Then checks every process that is not a server: a sanitizer report
 * in its log (ASan, LSan, UBSan "runtime error:", TSan, MSan), an exit with
 * TS_H_SANITIZER_EXIT, or a death by SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT
 * the test did not send prints the start of the report (with the log's
 * path), marks the run failed and makes ts_h_run fail. Prints log tails if
 * h->failed. Safe to call twice. */
void ts_h_stop(ts_h_t *h);
/* Marks the run failed so ts_h_stop prints logs. */
void ts_h_fail_dump(ts_h_t *h);
/* Reads the whole log of a process (caller frees). */
char *ts_h_read_log(ts_h_t *h, int idx);
/* Whether the log of a process contains needle. */
bool ts_h_log_has(ts_h_t *h, int idx, const char *needle);
/* Polls the log of a process until it contains needle: a line a process
 * writes after what the test saw happen (wait for it, never read the log
 * once); false after timeout_ms. */
bool ts_h_wait_log(ts_h_t *h, int idx, const char *needle, int64_t timeout_ms);

/* Waits until the orchestrator wrote the world and every cell of it has an
 * owner (polls Redis); false after timeout_ms. */
bool ts_h_wait_world(ts_h_t *h, uint32_t world, int ncells, int64_t timeout_ms);

/* Spawns the standard stack against h: tessera-orch ("orch"), tessera-worker
 * w1 and w2 ("w1", "w2", each given --worker.id=<id> first) and
 * tessera-gateway ("gateway", given --gateway.listen=127.0.0.1:<free port>
 * first, and with ts_h_ws a gateway.ws_listen of its own), in that order. Each *_args list (NULL-terminated,
 * may be NULL) is appended to that process's own flags. Does not wait for anything. */
typedef struct {
    int orch;       /* index in h->procs */
    int workers[2]; /* w1, w2 */
    int gateway;
    int gw_port; /* where the gateway listens */
} ts_h_stack_t;

void ts_h_spawn_stack(ts_h_t *h, const char *const *orch_args, const char *const *worker_args,
                      const char *const *gateway_args, ts_h_stack_t *out);

/* ---- players over WebSocket (`<test> --ws`) -----------------------------------
 * A test binary whose players go through ts_h_client_connect runs them all
 * over WebSocket when ts_h_ws is set (ts_h_ws_main in main): every gateway
 * ts_h_spawn_stack starts then also listens on gateway.ws_listen, a gateway
 * the test starts itself gets it from ts_h_ws_listen, and a player of the
 * gateway on TCP port P connects to that gateway's WebSocket port. */
extern bool ts_h_ws;
/* Sets ts_h_ws when argv[1] is "--ws"; returns it. */
bool ts_h_ws_main(int argc, char **argv);
/* With ts_h_ws: "--gateway.ws_listen=127.0.0.1:<free port>" into buf (the
 * pair remembered for the gateway on TCP port tcp_port), returned; without:
 * NULL (the end of an argument list either way). */
const char *ts_h_ws_listen(int tcp_port, char *buf, size_t cap);
/* The port players of the gateway on TCP port tcp_port connect to: its
 * WebSocket port with ts_h_ws, tcp_port itself otherwise. */
int ts_h_player_port(int tcp_port);
/* Connects a player to the gateway on TCP port tcp_port (ts_client_connect,
 * or ts_client_connect_ws to its WebSocket port with ts_h_ws). */
ts_status_t ts_h_client_connect(ts_client_t **out, int tcp_port, int64_t timeout_ms);

/* ---- shared cmocka fixtures -----------------------------------------------------
 * One harness per test binary, ts_h. A test calls ts_h_pass() as its last
 * statement; a teardown that sees it was not called marks the run failed so
 * ts_h_stop() prints every process's log tail. */
extern ts_h_t ts_h;

/* Marks the running test passed. */
void ts_h_pass(void);
/* Whether the running test called ts_h_pass(). */
bool ts_h_passed(void);

/* Group fixtures for binaries that share one set of servers:
 * ts_h_start(&ts_h) / ts_h_stop(&ts_h). */
int ts_h_group_setup(void **state);
int ts_h_group_teardown(void **state);
/* Per-test fixtures: clears the passed flag / dumps logs unless passed. */
int ts_h_test_setup(void **state);
int ts_h_test_teardown(void **state);
/* Per-test fixtures for binaries whose tests need fresh servers each:
 * ts_h_test_setup, then ts_h_start(&ts_h) / ts_h_test_teardown, then
 * ts_h_stop(&ts_h). */
int ts_h_test_start(void **state);
/* Per-test teardown for binaries whose tests start their own servers:
 * ts_h_test_teardown, then ts_h_stop(&ts_h). */
int ts_h_test_stop(void **state);

/* A test with the per-test fixtures above. */
#define TS_H_TEST(fn) cmocka_unit_test_setup_teardown(fn, ts_h_test_setup, ts_h_test_teardown)

/* The whole main() of a test binary: ts_log_init(name) at error level, runs
 * the group, shuts the NATS library down; returns the failed-test count, and
 * at least 1 when a ts_h_stop found a sanitizer report in a process it
 * started (see ts_h_stop). */
int ts_h_run(const char *name, const struct CMUnitTest *tests, size_t n, CMFixtureFunction group_setup,
             CMFixtureFunction group_teardown);
#define TS_H_RUN(name, tests, group_setup, group_teardown)                                                   \
    ts_h_run(name, tests, sizeof(tests) / sizeof((tests)[0]), group_setup, group_teardown)

#endif
