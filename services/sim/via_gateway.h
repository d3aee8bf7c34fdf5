/* tessera-sim --via-gateway: real clients through a gateway's TCP listener
 * (or its WebSocket listener, ws://), all on one libuv loop. */
#ifndef TESSERA_SIM_VIA_GATEWAY_H
#define TESSERA_SIM_VIA_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "players.h"
#include "tessera/registry.h"

/* Most clients one run may open (sockets; see also RLIMIT_NOFILE). */
#define TS_VG_MAX_CLIENTS 60000
/* New connections per second while clients join, and most joins in flight
 * at once (the gateway's accept backlog is 511). */
#define TS_VG_CONNECT_RATE 1000
#define TS_VG_MAX_HANDSHAKES 256

typedef struct {
    const char *host; /* numeric IPv4/IPv6 address or a host name */
    int port;
    /* NULL: the raw TCP framing; else every client upgrades to a WebSocket
     * with GET ws_path (e.g. "/ws") and sends and receives the same
     * ClientFrames and ServerFrames as binary messages */
    const char *ws_path;
    size_t clients;
    int64_t rate_hz;    /* Moves per client per second */
    int64_t duration_s; /* play time once every client joined; 0: until signalled */
    double speed;       /* world units per second */
    uint64_t seed;
    ts_world_t world; /* players start anywhere in it */
    /* NULL, or a hotspot a share of the clients walks into (its times from
     * the start of the run) and later leaves, as bus-mode players do */
    const ts_sim_hotspot_t *hotspot;
} ts_vg_opts_t;

#define TS_VG_EXIT_OK 0
#define TS_VG_EXIT_SETUP 1  /* bad address, too few file descriptors, out of memory */
#define TS_VG_EXIT_FAILED 2 /* missing or doubled inputs, a client that failed, a wrong CellChanged */

/* Raises the soft RLIMIT_NOFILE to cover `clients` sockets and a margin, as
 * far as the hard limit allows. False (logged, naming both limits) if the
 * hard limit is too low. ts_vg_run calls it too. */
bool ts_vg_raise_nofile(size_t clients);

/* Connects o->clients clients at up to TS_VG_CONNECT_RATE per second, each
 * sending Hello and Join and then Moves at o->rate_hz; once every client has
 * joined (or given up), plays for o->duration_s, then waits for the last
 * inputs to show up in the clients' own entities and prints the result
 * (one `via-gateway:` line a second while running, a summary and two final
 * machine-readable lines). Each client follows its entity's cell from its
 * frames: a CellChanged naming the cell it already had, or a frame naming a
 * new cell without one, fails the run. Returns a TS_VG_EXIT_ status. */
int ts_vg_run(const ts_vg_opts_t *o);

#endif
