#!/usr/bin/env bash
# Runs a whole Tessera cluster on this machine (what `make run` runs):
# nats-server (JetStream) and redis-server on loopback ports, the
# orchestrator, two workers, a gateway and the load simulator, then
# `tessera-ctl watch` in the foreground until Ctrl-C or DURATION seconds.
#
# Every process it starts is stopped on exit (SIGTERM, SIGKILL after 5 s)
# and the temp dir is removed. If a service dies, the tail of its log is
# printed and the script exits 1.
#
# Environment: PLAYERS (sim players, 1000), DURATION (seconds; default until
# Ctrl-C), HANDOVERS (live handovers to show after start, 4), BUILD_DIR
# (build), KEEP=1 (keep the temp dir with the logs), VIA_GATEWAY=1 (the sim
# plays through the gateway instead of publishing straight onto the bus:
# `tessera-sim --via-gateway 127.0.0.1:<gateway port>` connects PLAYERS real
# TCP clients that join and move; its per-second line, with input->own state
# latency, is in sim.log, and `tail -f` on it shows the run live;
# VIA_GATEWAY=ws: the same clients over WebSocket, `--via-gateway
# ws://127.0.0.1:<ws port>`).
# HOTSPOT (default 125,125,20,0.5,60,20; "" or 0: none): the sim's --hotspot
# X,Y,R,share,hold_s,from_s (bus mode and VIA_GATEWAY=1/ws alike): from from_s
# seconds after the start, once the demo handovers are done, a share of the
# players gathers in the circle; with the orchestrator's automatic split
# (split.auto=1) the crowded cell splits to depth 2, the rebalancer moves
# children to the other worker, and once the crowd disperses (after hold_s)
# the cells merge back; the live line counts splits= and merges= and shows
# depth=, and a line per change (from the orchestrator's log) names the
# cell split or merged and each child the rebalancer moves.
# SECURE=1 (default) runs NATS and Redis with the users, permissions and
# ACLs of scripts/gen-secrets.sh, every service as its own user (passwords
# in files, never on a command line), and prints the read-only inspector's
# URL for watching traffic; SECURE=0 runs both open, as before.
# GAME (default: none, plain movement): a game module the workers load
# (--worker.game): "tag" is the example game built as $BUILD_DIR/libtag.so
# (examples/tag), anything else a path to a module's .so; GAME_CONFIG is
# its worker.game_config. With a game, PLAYERS defaults to 100 and HOTSPOT
# to none, the map's Play mode joins the game from the browser, and the
# game's log lines (for tag: each tag, with the tagger's score) are shown
# under the live line. GHOST_MARGIN (tag: 12, its tag range; else the
# default) is the workers' ghost.margin: a module sees a neighbour cell's
# entities only this far past its border.
# shellcheck disable=SC2317 # cleanup and its helpers run from traps
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
GAME=${GAME:-}
GAME_CONFIG=${GAME_CONFIG:-}
GAME_SO=
GAME_NAME=
if [[ -n "$GAME" ]]; then
    case "$GAME" in
    */* | *.so) GAME_SO=$GAME ;;
    *) GAME_SO=$BUILD_DIR/lib$GAME.so ;;
    esac
    if [[ ! -f "$GAME_SO" ]]; then
        echo "run-local: game module $GAME_SO not found (GAME=tag: make build builds examples/tag)" >&2
        exit 1
    fi
    GAME_SO=$(cd "$(dirname "$GAME_SO")" && pwd)/$(basename "$GAME_SO")
    GAME_NAME=$(basename "$GAME_SO" .so)
    GAME_NAME=${GAME_NAME#lib}
    PLAYERS=${PLAYERS:-100}
    HOTSPOT=${HOTSPOT-0}
    [[ "$GAME_NAME" == tag ]] && GHOST_MARGIN=${GHOST_MARGIN:-12}
fi
GHOST_MARGIN=${GHOST_MARGIN:-}
PLAYERS=${PLAYERS:-1000}
DURATION=${DURATION:-}
KEEP=${KEEP:-0}
VIA_GATEWAY=${VIA_GATEWAY:-0}
SECURE=${SECURE:-1}
HOTSPOT=${HOTSPOT-125,125,20,0.5,60,20}
[[ "$HOTSPOT" == 0 ]] && HOTSPOT=

die() {
    echo "run-local: $*" >&2
    exit 1
}

for tool in nats-server redis-server; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run: make deps)"
done
for bin in tessera-orch tessera-worker tessera-gateway tessera-sim; do
    [[ -x "$BUILD_DIR/$bin" ]] || die "$BUILD_DIR/$bin not built (run: make build)"
done
if [[ -n "$DURATION" && ! "$DURATION" =~ ^[0-9]+$ ]]; then
    die "DURATION must be a number of seconds, got '$DURATION'"
fi
if [[ "$VIA_GATEWAY" != 0 && "$VIA_GATEWAY" != 1 && "$VIA_GATEWAY" != ws ]]; then
    die "VIA_GATEWAY must be 0, 1 or ws, got '$VIA_GATEWAY'"
fi
if [[ "$SECURE" != 0 && "$SECURE" != 1 ]]; then
    die "SECURE must be 0 or 1, got '$SECURE'"
fi

# ---- ports -----------------------------------------------------------------

used_ports=()

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

port_taken() {
    local p
    for p in "${used_ports[@]}"; do
        [[ "$p" == "$1" ]] && return 0
    done
    port_busy "$1"
}

# pick_port VAR DEFAULT: sets VAR to DEFAULT if free, else to a free port in
# 20000..59999 not picked before.
pick_port() {
    local port=$2 tries=0
    while port_taken "$port"; do
        ((++tries > 200)) && die "no free loopback port found"
        port=$((20000 + RANDOM % 40000))
    done
    used_ports+=("$port")
    printf -v "$1" '%s' "$port"
}

# ---- processes -------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tessera-run.XXXXXX")
names=()
pids=()
watch_pid=

# Stops pids (SIGTERM, then SIGKILL after 5 s) and reaps them.
stop_pids() {
    local pid deadline
    (($# == 0)) && return 0
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 5))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && ! is_zombie "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null && ! is_zombie "$pid"; then
            echo "run-local: $(ps -o args= -p "$pid" | cut -c1-60) (pid $pid) did not stop in 5 s, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

is_zombie() {
    local stat
    stat=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$stat" == Z ]]
}

cleanup() {
    trap - EXIT INT TERM
    set +e
    [[ -n "$watch_pid" ]] && stop_pids "$watch_pid"
    [[ -n "${demo_pid:-}" ]] && stop_pids "$demo_pid"
    [[ -n "${game_log_pid:-}" ]] && stop_pids "$game_log_pid"
    [[ -n "${cells_log_pid:-}" ]] && stop_pids "$cells_log_pid"
    # The orchestrator first, so stopping workers do not wait for a drain;
    # then reverse start order: clients of the bus first, the servers last.
    local i
    for i in "${!names[@]}"; do
        [[ "${names[$i]}" == orch ]] && stop_pids "${pids[$i]}"
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_pids "${pids[$i]}"
    done
    # the sim's verdict: every input it sent, acknowledged and applied (and
    # through the gateway: no client dropped, CellChanged exactly when due)
    if [[ -f "$TMP/sim.log" ]]; then
        grep -h '^sim: done\|^via-gateway: summary: inputs' "$TMP/sim.log" | tail -n 1
        grep -h '^via-gateway: cells:' "$TMP/sim.log" | tail -n 1
    fi
    if [[ "$KEEP" == 1 ]]; then
        echo "run-local: logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'echo; echo "run-local: stopping"; exit 0' INT TERM

show_log() {
    echo "---- last lines of $TMP/$1.log" >&2
    tail -n 30 "$TMP/$1.log" >&2 || true
    echo "----" >&2
}

# start NAME CMD...: runs CMD in its own session (so Ctrl-C reaches only this
# script, which then stops everything in order), output to $TMP/NAME.log.
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

# wait_port NAME PORT SECONDS: until PORT accepts connections; fails if the
# process NAME (the last one started under that name) exits first.
wait_port() {
    local name=$1 port=$2 deadline=$((SECONDS + $3)) i pid=
    for i in "${!names[@]}"; do
        [[ "${names[$i]}" == "$name" ]] && pid=${pids[$i]}
    done
    until port_busy "$port"; do
        if ! kill -0 "$pid" 2>/dev/null || is_zombie "$pid"; then
            show_log "$name"
            die "$name exited during startup"
        fi
        ((SECONDS >= deadline)) && { show_log "$name"; die "$name is not listening on port $port after $3 s"; }
        sleep 0.1
    done
}

pick_port NATS_PORT 4222
pick_port REDIS_PORT 6379
pick_port GATEWAY_PORT 7400
pick_port MAP_PORT 7480 # WebSocket (/ws) and the world map (/)
export TESSERA_NATS_URL="nats://127.0.0.1:$NATS_PORT"
export TESSERA_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# ---- credentials (SECURE=1) ---------------------------------------------------
SECRETS="$TMP/secrets"
nats_secure=()
redis_secure=()
if [[ "$SECURE" == 1 ]]; then
    scripts/gen-secrets.sh "$SECRETS" || die "cannot generate credentials (scripts/gen-secrets.sh)"
    nats_secure=(-c "$SECRETS/nats.conf")
    redis_secure=(--aclfile "$SECRETS/redis-users.acl")
    INSPECTOR_URL="nats://inspector:$(cat "$SECRETS/inspector.nats.pass")@127.0.0.1:$NATS_PORT"
    # what tessera-ctl in another terminal needs (TESSERA_CONFIG=ctl.yaml)
    cat >"$SECRETS/ctl.yaml" <<YAML
nats: {url: "$TESSERA_NATS_URL", user: ctl, password_file: "$SECRETS/ctl.nats.pass"}
redis: {url: "$TESSERA_REDIS_URL", user: ctl, password_file: "$SECRETS/ctl.redis.pass"}
YAML
    EXPORTS="export TESSERA_CONFIG=$SECRETS/ctl.yaml INSPECTOR='$INSPECTOR_URL'"
    # tessera-ctl (watch, handovers and the lines printed below) runs as ctl
    export TESSERA_NATS_USER=ctl TESSERA_NATS_PASSWORD_FILE="$SECRETS/ctl.nats.pass"
    export TESSERA_REDIS_USER=ctl TESSERA_REDIS_PASSWORD_FILE="$SECRETS/ctl.redis.pass"
else
    INSPECTOR_URL=$TESSERA_NATS_URL
    EXPORTS="export INSPECTOR='$INSPECTOR_URL'"
fi
# gateway.resume_secret for the gateway and the workers only (they check the
# resume token of an Attach from another gateway); open (SECURE=0): none,
# the workers do not check
RESUME_SECRET=""
[[ "$SECURE" == 1 ]] && RESUME_SECRET=$(head -n 1 "$SECRETS/resume.secret")

# as USER: sets CREDS to the flags that make a service USER on NATS and
# Redis (the password files' paths go on the command line, not passwords).
CREDS=()
as() {
    CREDS=()
    [[ "$SECURE" == 1 ]] || return 0
    CREDS=(--nats.user="$1" --nats.password_file="$SECRETS/$1.nats.pass"
        --redis.user="$1" --redis.password_file="$SECRETS/$1.redis.pass")
}

start nats nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/js" "${nats_secure[@]}"
# append-only file, fsync'd every second: a restart keeps the registry (its
# epochs); losing it anyway costs a rebuild (docs/operations.md, Persistence)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync everysec --dir "$TMP" "${redis_secure[@]}"
wait_port nats "$NATS_PORT" 10
wait_port redis "$REDIS_PORT" 10

as orch
start orch "$BUILD_DIR/tessera-orch" --split.auto=1 "${CREDS[@]}"
game_flags=()
[[ -n "$GAME_SO" ]] && game_flags=(--worker.game="$GAME_SO" --worker.game_config="$GAME_CONFIG")
[[ -n "$GHOST_MARGIN" ]] && game_flags+=(--ghost.margin="$GHOST_MARGIN")
as worker-w1
TESSERA_GATEWAY_RESUME_SECRET=$RESUME_SECRET start worker-w1 "$BUILD_DIR/tessera-worker" --worker.id=w1 \
    "${game_flags[@]}" "${CREDS[@]}"
as worker-w2
TESSERA_GATEWAY_RESUME_SECRET=$RESUME_SECRET start worker-w2 "$BUILD_DIR/tessera-worker" --worker.id=w2 \
    "${game_flags[@]}" "${CREDS[@]}"
# gateway 1 with its own user: it may publish inputs only as g1 (origin token)
as gateway-1
TESSERA_GATEWAY_RESUME_SECRET=$RESUME_SECRET start gateway "$BUILD_DIR/tessera-gateway" --gateway.id=1 \
    --gateway.listen="127.0.0.1:$GATEWAY_PORT" --gateway.ws_listen="127.0.0.1:$MAP_PORT" "${CREDS[@]}"
as sim
if [[ "$VIA_GATEWAY" != 0 ]]; then
    # real clients need the gateway listening first
    wait_port gateway "$GATEWAY_PORT" 20
    via="127.0.0.1:$GATEWAY_PORT"
    if [[ "$VIA_GATEWAY" == ws ]]; then
        wait_port gateway "$MAP_PORT" 20
        via="ws://127.0.0.1:$MAP_PORT/ws"
    fi
    start sim "$BUILD_DIR/tessera-sim" --via-gateway "$via" --sim.players="$PLAYERS" \
        ${HOTSPOT:+--hotspot="$HOTSPOT"} "${CREDS[@]}"
else
    start sim "$BUILD_DIR/tessera-sim" --sim.players="$PLAYERS" ${HOTSPOT:+--hotspot="$HOTSPOT"} "${CREDS[@]}"
    wait_port gateway "$GATEWAY_PORT" 20
fi

cat <<EOF
Tessera is running ($([[ -n "$GAME" ]] && echo "GAME=$GAME, ")PLAYERS=$PLAYERS$([[ "$VIA_GATEWAY" == 1 ]] && echo " through the gateway")$([[ "$VIA_GATEWAY" == ws ]] && echo " through the gateway on WebSocket")${DURATION:+, DURATION=${DURATION}s}$([[ -n "$HOTSPOT" ]] && echo ", a crowd at $HOTSPOT (x,y,r,share,hold_s,from_s)")):
  NATS     $TESSERA_NATS_URL  (JetStream store $TMP/js)
  Redis    $TESSERA_REDIS_URL
  security $([[ "$SECURE" == 1 ]] && echo "users, permissions and ACLs from $SECRETS (SECURE=0: none)" || echo "none (SECURE=0)")
  gateway  127.0.0.1:$GATEWAY_PORT
  map      http://127.0.0.1:$MAP_PORT/  (world map; WebSocket clients: ws://127.0.0.1:$MAP_PORT/ws)
EOF
if [[ -n "$GAME" ]]; then
    cat <<EOF
  game     $GAME_SO${GAME_CONFIG:+ ($GAME_CONFIG)}
  play     http://127.0.0.1:$MAP_PORT/#play  (the map's Play mode: arrows or WASD move, space tags)
EOF
fi
cat <<EOF
  logs     $TMP/{nats,redis,orch,worker-w1,worker-w2,gateway,sim}.log$([[ "$KEEP" == 1 ]] || echo " (removed on exit; KEEP=1 keeps them)")
In another terminal, first$([[ "$SECURE" == 1 ]] && echo " (tessera-ctl as user ctl; INSPECTOR: read-only, publishes nothing)"):
  $EXPORTS
Watch traffic:
  nats --server "\$INSPECTOR" sub 'cell.0.>'
  $BUILD_DIR/tessera-ctl --nats.url="\$INSPECTOR" tail 'cell.0.*.*.*.*.state'
  $BUILD_DIR/tessera-client --gateway.listen=127.0.0.1:$GATEWAY_PORT repl
Ctrl-C stops everything.
EOF

# The foreground watcher: tessera-ctl watch, for DURATION seconds if set.
watch_cmd=()
if [[ -x "$BUILD_DIR/tessera-ctl" ]]; then
    watch_cmd=("$BUILD_DIR/tessera-ctl" watch)
else
    echo "run-local: $BUILD_DIR/tessera-ctl not built; not showing live stats" >&2
    watch_cmd=(sleep infinity)
fi
if [[ -n "$DURATION" ]]; then
    timeout "$DURATION" "${watch_cmd[@]}" &
else
    "${watch_cmd[@]}" &
fi
watch_pid=$!

# A few live handovers while players play, so the live line shows cells
# moving between workers (HANDOVERS=0 turns this off).
demo_handovers() {
    set +e
    trap 'kill $nap 2>/dev/null; exit 0' TERM
    local cells=(0.-1.0.0.0 0.0.0.0.0 0.-1.-1.0.0 0.0.-1.0.0 0.-2.1.0.0 0.1.-2.0.0) cell out nap
    sleep 5 & nap=$!; wait $nap
    for cell in "${cells[@]:0:$HANDOVERS}"; do
        # hand it to whichever worker does not own it
        out=$("$BUILD_DIR/tessera-ctl" handover "$cell" w2 2>&1 | tail -n 1)
        [[ "$out" == *"already owns"* ]] && out=$("$BUILD_DIR/tessera-ctl" handover "$cell" w1 2>&1 | tail -n 1)
        echo "handover $cell: $out"
        sleep 3 & nap=$!; wait $nap
    done
}
# With a game: the workers' lines that name the module, as they come (tail
# ends by itself once this script has exited).
game_log_pid=
if [[ -n "$GAME" ]]; then
    { tail -n 0 -F --pid=$$ "$TMP/worker-w1.log" "$TMP/worker-w2.log" 2>/dev/null |
        grep --line-buffered -w -F "$GAME_NAME"; } &
    game_log_pid=$!
fi

# The orchestrator's splits and merges and the moves of cells below a root
# (depth >= 1), one short line each, as they come (tail ends by itself once
# this script has exited).
{ tail -n 0 -F --pid=$$ "$TMP/orch.log" 2>/dev/null | sed -un -E \
    -e 's/^.* tessera-orch: split cell ([^ ]+) of ([^ ]+) \(epoch [^;]*; ([0-9]+ entities).*$/split \1 on \2 (\3)/p' \
    -e 't' \
    -e 's/^.* tessera-orch: split cell ([^ ]+) of ([^ ]+) .*$/split \1 on \2/p' \
    -e 't' \
    -e 's/^.* tessera-orch: merged the children of ([^ ]+) back into it on ([^ ]+) \(epoch [^;]*; children hold ([0-9]+ entities).*$/merge into \1 on \2 (\3)/p' \
    -e 't' \
    -e 's/^.* tessera-orch: merged the children of ([^ ]+) back into it on ([^ ]+) .*$/merge into \1 on \2/p' \
    -e 't' \
    -e 's/^.* tessera-orch: handover [^ ]+ \(rebalance\): cell ([^ .]+\.[^ .]+\.[^ .]+\.[1-9][0-9]*\.[0-9]+) from ([^ ]+) to ([^ ,]+),.* ([0-9]+ entities),.*$/moved \1 from \2 to \3 (\4)/p'; } &
cells_log_pid=$!

HANDOVERS=${HANDOVERS:-4}
demo_pid=
if [[ "$HANDOVERS" =~ ^[0-9]+$ && "$HANDOVERS" -gt 0 && -x "$BUILD_DIR/tessera-ctl" ]]; then
    demo_handovers &
    demo_pid=$!
fi

# Whichever ends first: the watcher (normal end) or a service (failure).
finished=
status=0
wait -n -p finished "$watch_pid" "${pids[@]}" || status=$?
if [[ "$finished" == "$watch_pid" ]]; then
    watch_pid=
    # 124: timeout ended it after DURATION seconds
    if [[ $status -ne 0 && $status -ne 124 ]]; then
        die "${watch_cmd[*]} exited with status $status"
    fi
    exit 0
fi
for i in "${!pids[@]}"; do
    if [[ "${pids[$i]}" == "$finished" ]]; then
        show_log "${names[$i]}"
        die "${names[$i]} exited unexpectedly (status $status)"
    fi
done
die "unexpected wait result (status $status)"
