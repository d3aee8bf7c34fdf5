#!/usr/bin/env bash
# Side by side with Colyseus: the same Node load client shape drives a
# Tessera stack and a Colyseus 0.16 room (bench/peers/) in interleaved runs,
# and one table row per N compares them:
#
#   N  tessera p50/p99  colyseus p50/p99  cpu ratio  bytes ratio  verdict
#
# Each run: one bulk process joins N-16 players, then 16 latency probes join,
# every player sends a Move at 10 Hz from the same seeded positions spread
# over the same square world (bench/peers/client/walk.js: PEERS_WORLD x
# PEERS_WORLD cells of 100 units for Tessera, whose clients see the 3x3 cells
# around them; one room holding all of it for Colyseus); after a warm-up the probes measure for
# PEERS_SECONDS input->own-state latency (Move seq s sent -> first state whose
# own entity shows last_input_seq >= s), bytes received per client (all N
# clients) and server CPU from /proc/<pid>/stat: gateway + both workers +
# nats-server for Tessera, the node process for Colyseus. cpu and bytes
# ratios are Tessera / Colyseus. Verdict `ok` when Tessera's p99 <= Colyseus's
# and its server CPU <= 0.5x Colyseus's (and no probe move went missing, no
# client got an Error or was disconnected), else `MISSED`. Figures only,
# never asserted.
#
# Starts on free loopback ports: nats-server -js, redis-server, tessera-orch,
# two tessera-workers, one tessera-gateway (from a Release build) and the
# Colyseus server; runs `npm ci` in bench/peers/{colyseus,client} when
# node_modules is missing. The Colyseus server stays up (idle, it costs
# nothing); every Tessera run gets a fresh stack that is stopped before the
# next run (idle, it ticks every cell). Everything it starts is stopped on
# exit.
#
# Environment: PEERS_N (list of N, "100 250 500 750"), PEERS_SECONDS
# (measured seconds per run, 15), PEERS_WARMUP (seconds before measuring, 5),
# PEERS_WORLD (root cells per side, 16), PEERS_BUDGET (seconds for the whole
# script, 360: an N that would not fit any more is skipped and says so),
# BUILD_DIR (Release build with the tessera binaries, build-release),
# KEEP=1 (keep the temp dir with logs and JSON results).
# shellcheck disable=SC2317 # cleanup and its helpers run from traps
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-build-release}
PEERS_N=${PEERS_N:-100 250 500 750}
PEERS_SECONDS=${PEERS_SECONDS:-15}
PEERS_WARMUP=${PEERS_WARMUP:-5}
PEERS_WORLD=${PEERS_WORLD:-16}
PEERS_BUDGET=${PEERS_BUDGET:-360}
KEEP=${KEEP:-0}
PROBES=16
PEERS=$ROOT/bench/peers
LOAD=$PEERS/client/load.js
REPORT=$PEERS/client/report.js

die() {
    echo "bench-peers: $*" >&2
    exit 1
}

for tool in node npm nats-server redis-server; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run: make deps)"
done
for bin in tessera-orch tessera-worker tessera-gateway; do
    [[ -x "$BUILD_DIR/$bin" ]] ||
        die "$BUILD_DIR/$bin not built (cmake -S . -B $BUILD_DIR -DCMAKE_BUILD_TYPE=Release && cmake --build $BUILD_DIR)"
done
# check_uint NAME VALUE MIN MAX
check_uint() {
    if [[ ! "$2" =~ ^[0-9]+$ ]] || (($2 < $3 || $2 > $4)); then
        die "$1 must be $3..$4, got '$2'"
    fi
}
check_uint PEERS_SECONDS "$PEERS_SECONDS" 1 120
check_uint PEERS_WARMUP "$PEERS_WARMUP" 0 60
check_uint PEERS_WORLD "$PEERS_WORLD" 1 64
check_uint PEERS_BUDGET "$PEERS_BUDGET" 30 7200
read -r -a NS <<<"$PEERS_N"
((${#NS[@]} >= 1 && ${#NS[@]} <= 16)) || die "PEERS_N must list 1..16 values"
for n in "${NS[@]}"; do
    check_uint "a PEERS_N value" "$n" 1 5000
done
CLK_TCK=$(getconf CLK_TCK)

# ---- npm ------------------------------------------------------------------------

for dir in "$PEERS/colyseus" "$PEERS/client"; do
    if [[ ! -d "$dir/node_modules" ]]; then
        echo "bench-peers: npm ci in ${dir#"$ROOT"/}"
        (cd "$dir" && timeout -k 10 300 npm ci --no-audit --no-fund --loglevel=error) ||
            die "npm ci failed in $dir"
    fi
done

# the time budget counts from here: a first `npm ci` is setup, not bench
budget_start=$SECONDS

# ---- ports ------------------------------------------------------------------------

used_ports=()

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# port_used PORT: something listens on PORT, or any TCP socket uses it as
# its local port (ss sees those; a connect probe sees listeners only).
port_used() {
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]] && return 0
    fi
    port_busy "$1"
}

port_taken() {
    local p
    for p in "${used_ports[@]}"; do
        [[ "$p" == "$1" ]] && return 0
    done
    port_used "$1"
}

# pick_port VAR: sets VAR to a free loopback port not picked before, below
# the kernel's ephemeral range (so no outgoing connection takes it meanwhile).
pick_port() {
    local port tries=0 lo=10000 hi=32768
    read -r hi _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    ((hi > lo + 1000)) || hi=32768
    port=$((lo + RANDOM % (hi - lo)))
    while port_taken "$port"; do
        ((++tries > 200)) && die "no free loopback port found"
        port=$((lo + RANDOM % (hi - lo)))
    done
    used_ports+=("$port")
    printf -v "$1" '%s' "$port"
}

# ---- processes ------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tessera-peers.XXXXXX")
names=()
pids=()
run_pids=() # load clients of the current run

is_zombie() {
    local stat
    stat=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$stat" == Z ]]
}

alive() {
    kill -0 "$1" 2>/dev/null && ! is_zombie "$1"
}

# Stops pids (SIGTERM, then SIGKILL after 5 s) and reaps them.
stop_pids() {
    local pid deadline
    (($# == 0)) && return 0
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 5))
    for pid in "$@"; do
        while alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if alive "$pid"; then
            echo "bench-peers: $(ps -o args= -p "$pid" | cut -c1-60) (pid $pid) did not stop in 5 s, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    trap - EXIT INT TERM
    set +e
    ((${#run_pids[@]})) && stop_pids "${run_pids[@]}"
    # the orchestrator first, so stopping workers do not wait for a drain;
    # then reverse start order, the servers last
    local i idx
    for i in "${!names[@]}"; do
        [[ "${names[$i]}" == */orch ]] && stop_pids "${pids[$i]}"
    done
    idx=("${!pids[@]}")
    for ((i = ${#idx[@]} - 1; i >= 0; i--)); do
        stop_pids "${pids[${idx[$i]}]}"
    done
    if [[ "$KEEP" == 1 ]]; then
        echo "bench-peers: logs and results kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'echo; echo "bench-peers: stopping"; exit 130' INT TERM

show_log() {
    echo "---- last lines of $1" >&2
    tail -n 20 "$1" >&2 || true
    echo "----" >&2
}

# start NAME CMD...: runs CMD in its own session, output to $TMP/NAME.log.
start() {
    local name=$1
    shift
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    else
        "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    fi
    names+=("$name")
    pids+=("$!")
}

# forget NAME...: stops the processes started as NAMEs (together) and drops
# them from the lists.
forget() {
    local i name stop=() idx=()
    for name in "$@"; do
        for i in "${!names[@]}"; do
            [[ "${names[$i]}" == "$name" ]] && stop+=("${pids[$i]}") idx+=("$i")
        done
    done
    stop_pids "${stop[@]}"
    for i in "${idx[@]}"; do
        unset "names[$i]" "pids[$i]"
    done
}

# pid_of NAME: the pid of the process started as NAME.
pid_of() {
    local i
    for i in "${!names[@]}"; do
        [[ "${names[$i]}" == "$1" ]] && { echo "${pids[$i]}"; return 0; }
    done
    die "no process named $1"
}

# wait_port NAME PORT SECONDS: until PORT accepts connections; fails if NAME exits first.
wait_port() {
    local name=$1 port=$2 deadline=$((SECONDS + $3)) pid
    pid=$(pid_of "$name")
    until port_busy "$port"; do
        alive "$pid" || { show_log "$TMP/$name.log"; die "$name exited during startup"; }
        ((SECONDS >= deadline)) && { show_log "$TMP/$name.log"; die "$name is not listening on port $port after $3 s"; }
        sleep 0.1
    done
}

check_alive() {
    local i
    for i in "${!names[@]}"; do
        alive "${pids[$i]}" || { show_log "$TMP/${names[$i]}.log"; die "${names[$i]} exited unexpectedly"; }
    done
}

# the world, for every Tessera service: PEERS_WORLD^2 root cells of 100 units
# around (0, 0); the Colyseus room and the load clients get its bounds
CELL=100
WORLD_X0=$((-PEERS_WORLD / 2))
WORLD_MIN=$((WORLD_X0 * CELL))
WORLD_MAX=$(((WORLD_X0 + PEERS_WORLD) * CELL))
export TESSERA_WORLD_CELL_SIZE=$CELL TESSERA_WORLD_X0=$WORLD_X0 TESSERA_WORLD_Y0=$WORLD_X0
export TESSERA_WORLD_WIDTH=$PEERS_WORLD TESSERA_WORLD_HEIGHT=$PEERS_WORLD
WORLD_ARGS=(--world-min "$WORLD_MIN" --world-max "$WORLD_MAX")

addr_of() {
    if [[ $1 == tessera ]]; then echo "127.0.0.1:$GATEWAY_PORT"; else echo "127.0.0.1:$COLYSEUS_PORT"; fi
}

# Until one client joins and sees its own Move applied (cells bound, room up).
wait_ready() {
    local system=$1 deadline=$((SECONDS + 40))
    until timeout -k 2 20 node "$LOAD" --system "$system" --addr "$(addr_of "$system")" --role probe "${WORLD_ARGS[@]}" \
        --first 0 --count 1 --warmup 0 --seconds 1 --tail 1 --join-timeout 5 \
        >"$TMP/ready-$system.json" 2>"$TMP/ready-$system.err" &&
        grep -q '"missing":0' "$TMP/ready-$system.json" && ! grep -q '"acked":0' "$TMP/ready-$system.json"; do
        check_alive
        ((SECONDS >= deadline)) && { show_log "$TMP/ready-$system.err"; die "$system did not take a client in 40 s"; }
        sleep 1
    done
}

# A fresh Tessera stack for every Tessera run, stopped before the next run:
# an idle stack is not idle (its workers tick every cell at 20 Hz), so it
# must not share the box with a Colyseus run, and a run that overloads it
# must not decide the rows after it. Logs of stack G are in $TMP/tG/.
stack_gen=0
T=

start_tessera() {
    stack_gen=$((stack_gen + 1))
    T=t$stack_gen
    mkdir -p "$TMP/$T"
    pick_port NATS_PORT
    pick_port REDIS_PORT
    pick_port GATEWAY_PORT
    export TESSERA_NATS_URL="nats://127.0.0.1:$NATS_PORT"
    export TESSERA_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    start "$T/nats" nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/$T/js"
    start "$T/redis" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP/$T"
    wait_port "$T/nats" "$NATS_PORT" 10
    wait_port "$T/redis" "$REDIS_PORT" 10
    start "$T/orch" "$BUILD_DIR/tessera-orch"
    start "$T/worker-w1" "$BUILD_DIR/tessera-worker" --worker.id=w1
    start "$T/worker-w2" "$BUILD_DIR/tessera-worker" --worker.id=w2
    start "$T/gateway" "$BUILD_DIR/tessera-gateway" --gateway.listen="127.0.0.1:$GATEWAY_PORT"
    wait_port "$T/gateway" "$GATEWAY_PORT" 20
    # gateway, workers, nats-server (the target's sum), then orch and redis
    TESSERA_CPU_PIDS=$(pid_of "$T/gateway"),$(pid_of "$T/worker-w1"),$(pid_of "$T/worker-w2"),$(pid_of "$T/nats")
    TESSERA_CPU_PIDS+=,$(pid_of "$T/orch"),$(pid_of "$T/redis")
    wait_ready tessera
}

# The orchestrator first (so stopping workers do not wait for a drain), the
# servers last.
stop_tessera() {
    [[ -n "$T" ]] || return 0
    forget "$T/orch"
    forget "$T/gateway" "$T/worker-w1" "$T/worker-w2"
    forget "$T/redis" "$T/nats"
    T=
}

pick_port COLYSEUS_PORT
start colyseus node "$PEERS/colyseus/server.js" "$COLYSEUS_PORT" "$WORLD_MIN" "$WORLD_MAX"
COLYSEUS_CPU_PIDS=$(pid_of colyseus)
wait_port colyseus "$COLYSEUS_PORT" 20
wait_ready colyseus

# run_one SYSTEM N: one measured run; results in $TMP/N-SYSTEM-{probe,bulk}.json.
run_one() {
    local system=$1 n=$2 addr bulk=$(($2 - PROBES)) probes=$PROBES bulk_pid=0 deadline cpu
    addr=$(addr_of "$system")
    ((bulk < 0)) && bulk=0 probes=$n
    [[ $system == tessera ]] && cpu=$TESSERA_CPU_PIDS || cpu=$COLYSEUS_CPU_PIDS
    local base="$TMP/$n-$system" budget=$((PEERS_WARMUP + PEERS_SECONDS + 60 + n / 10))
    rm -f "$base.ready"
    if ((bulk > 0)); then
        node "$LOAD" --system "$system" --addr "$addr" --role bulk "${WORLD_ARGS[@]}" --first "$probes" --count "$bulk" \
            --ready-file "$base.ready" --max-seconds "$budget" >"$base-bulk.json" 2>"$base-bulk.err" </dev/null &
        bulk_pid=$!
        run_pids=("$bulk_pid")
        deadline=$((SECONDS + 30 + n / 10))
        until [[ -s "$base.ready" ]]; do
            if ! alive "$bulk_pid" || ((SECONDS >= deadline)); then
                show_log "$base-bulk.err"
                echo "bench-peers: $system N=$n: the bulk process did not join its $bulk players" >&2
                stop_pids "$bulk_pid"
                run_pids=()
                return 0
            fi
            sleep 0.2
        done
    fi
    if ! timeout -k 5 "$budget" node "$LOAD" --system "$system" --addr "$addr" --role probe "${WORLD_ARGS[@]}" --first 0 \
        --count "$probes" --warmup "$PEERS_WARMUP" --seconds "$PEERS_SECONDS" --bulk-pid "$bulk_pid" \
        --cpu-pids "$cpu" --clk-tck "$CLK_TCK" --max-seconds "$budget" >"$base-probe.json" 2>"$base-probe.err" </dev/null; then
        show_log "$base-probe.err"
        echo "bench-peers: $system N=$n: the probes failed" >&2
    fi
    if ((bulk_pid > 0)); then
        # SIGUSR2: the bulk process reports and exits
        kill -USR2 "$bulk_pid" 2>/dev/null || true
        deadline=$((SECONDS + 15))
        while alive "$bulk_pid" && ((SECONDS < deadline)); do sleep 0.1; done
        stop_pids "$bulk_pid"
        run_pids=()
    fi
    # let the Colyseus room see its clients go before the next run
    [[ $system == colyseus ]] && sleep 1
    return 0
}

echo "side by side with Colyseus 0.16 (one room, 20 Hz, 50 ms patches): $PROBES latency probes + one bulk process," \
    "Moves at 10 Hz in ${PEERS_WORLD}x${PEERS_WORLD} cells, ${PEERS_SECONDS} s measured per run after ${PEERS_WARMUP} s"
echo "target: Tessera p99 <= Colyseus p99 and server CPU (gateway + workers + nats-server) <= 0.5x Colyseus's;" \
    "ratios are Tessera / Colyseus"
node "$REPORT" header
run_tessera() {
    start_tessera
    run_one tessera "$1"
    stop_tessera
}

i=0
for n in "${NS[@]}"; do
    alive "$COLYSEUS_CPU_PIDS" || { show_log "$TMP/colyseus.log"; die "the Colyseus server exited"; }
    # two runs: warm-up, window, joining (~1 s per 25 players), teardown, and
    # a Tessera stack to start and stop
    need=$((2 * (PEERS_WARMUP + PEERS_SECONDS + 10 + n / 25) + 10))
    used=$((SECONDS - budget_start))
    if ((used + need > PEERS_BUDGET)); then
        printf '%5s  skipped: %d s of PEERS_BUDGET=%d left, a pair of runs needs ~%d s\n' \
            "$n" $((PEERS_BUDGET - used)) "$PEERS_BUDGET" "$need"
        continue
    fi
    # alternate which system goes first
    if ((i % 2 == 0)); then
        run_tessera "$n"
        run_one colyseus "$n"
    else
        run_one colyseus "$n"
        run_tessera "$n"
    fi
    node "$REPORT" row "$TMP" "$n"
    i=$((i + 1))
done
echo "details:"
node "$REPORT" details "$TMP" "${NS[@]}"
