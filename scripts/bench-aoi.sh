#!/bin/bash
# AOI figures: what a client receives with the gateway's area of interest
# (a circle of aoi.radius around its entity, with hysteresis) against what
# the old scheme sent it (every entity of the 3x3 root cells around the
# client's cell).
#
# Two runs of the same stack on loopback (nats-server, redis-server, an
# orchestrator with a 16x16 world of 100-unit cells, two workers, one
# gateway), each driven by `tessera-sim --via-gateway` with $AOI_CLIENTS
# clients (1,000) sending $AOI_RATE_HZ inputs/s (2) for $AOI_SECONDS (15):
#
#   default  aoi.radius at its default (0: 1.5 x world.cell_size = 150)
#   3x3      aoi.radius $AOI_WIDE_RADIUS (169.3): the circle with the area
#            of the 3x3 root cells (300 x 300 = 90,000 units^2), so on
#            average it shows as many entities as the old cells did; the
#            ratio below is then the saving of the default radius over the
#            old coverage, not an artefact of comparing different areas.
#
# Prints per run: bytes per client per second, Deltas/s per client, the
# input->own state latency p50/p99, and the default/3x3 ratio of each.
#
#   BUILD_DIR        build directory with the binaries (default: build)
#   AOI_CLIENTS, AOI_RATE_HZ, AOI_SECONDS, AOI_WIDE_RADIUS  as above
set -u
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
clients=${AOI_CLIENTS:-1000}
rate=${AOI_RATE_HZ:-2}
secs=${AOI_SECONDS:-15}
wide=${AOI_WIDE_RADIUS:-169.3}
for bin in tessera-orch tessera-worker tessera-gateway tessera-sim; do
    if [ ! -x "$dir/$bin" ]; then
        echo "bench-aoi.sh: $dir/$bin was not built" >&2
        exit 1
    fi
done
for bin in nats-server redis-server python3; do
    command -v "$bin" >/dev/null || {
        echo "bench-aoi.sh: $bin not found (make deps)" >&2
        exit 1
    }
done

tmp=$(mktemp -d /tmp/tessera-bench-aoi-XXXXXX)
pids=()
reap() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null; done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do wait "${pids[$i]}" 2>/dev/null; done
    pids=()
}
trap 'reap; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# waits up to 15 s for 127.0.0.1:$1 to accept connections
wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# run LABEL [gateway args...]: prints the sim's final line, or fails
run() {
    local label=$1
    shift
    local d="$tmp/$label" np rp gp
    mkdir -p "$d"
    np=$(free_port)
    rp=$(free_port)
    gp=$(free_port)
    nats-server -js -a 127.0.0.1 -p "$np" -sd "$d/js" >"$d/nats.log" 2>&1 &
    pids+=($!)
    redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no >"$d/redis.log" 2>&1 &
    pids+=($!)
    wait_port "$np" && wait_port "$rp" || {
        echo "bench-aoi.sh: nats-server or redis-server did not start ($d)" >&2
        return 1
    }
    local c=(--nats.url="nats://127.0.0.1:$np" --redis.url="redis://127.0.0.1:$rp")
    "$dir/tessera-orch" "${c[@]}" --world.width=16 --world.height=16 --world.x0=-8 --world.y0=-8 \
        --orch.rebalance=0 >"$d/orch.log" 2>&1 &
    pids+=($!)
    "$dir/tessera-worker" "${c[@]}" --worker.id=w1 >"$d/w1.log" 2>&1 &
    pids+=($!)
    "$dir/tessera-worker" "${c[@]}" --worker.id=w2 >"$d/w2.log" 2>&1 &
    pids+=($!)
    "$dir/tessera-gateway" "${c[@]}" --gateway.listen="127.0.0.1:$gp" --gateway.idle_timeout_s=120 "$@" \
        >"$d/gw.log" 2>&1 &
    pids+=($!)
    wait_port "$gp" || {
        echo "bench-aoi.sh: the gateway did not start ($d/gw.log)" >&2
        return 1
    }
    # bounded: joining, $secs of play, the settle window
    timeout -k 5 $((secs + 90)) "$dir/tessera-sim" "${c[@]}" --via-gateway "127.0.0.1:$gp" \
        --sim.players="$clients" --sim.rate_hz="$rate" --sim.duration_s="$secs" >"$d/sim.log" 2>&1
    local line
    line=$(grep '^via-gateway: clients=' "$d/sim.log" | tail -n 1)
    reap
    if [ -z "$line" ]; then
        tail -n 20 "$d/sim.log" >&2
        echo "bench-aoi.sh: $label: the sim printed no final line" >&2
        return 1
    fi
    echo "$line"
}

field() { # field LINE KEY
    echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

echo "== AOI: aoi.radius default vs a circle of the old 3x3 cells' area ($clients clients, $rate inputs/s, $secs s) =="
a=$(run default) || exit 1
b=$(run 3x3 --aoi.radius="$wide") || exit 1
for pair in "default (aoi.radius 150)|$a" "3x3 area (aoi.radius $wide)|$b"; do
    l=${pair%%|*}
    v=${pair#*|}
    printf '%-30s bytes/s per client %8s  Deltas/s per client %6s  p50 %6s ms  p99 %7s ms  (connected %s of %s, missing %s)\n' \
        "$l" "$(field "$v" bytes_per_s_per_client)" "$(field "$v" deltas_per_s_per_client)" \
        "$(field "$v" lat_p50_ms)" "$(field "$v" lat_p99_ms)" "$(field "$v" connected)" "$(field "$v" clients)" \
        "$(field "$v" missing)"
done
awk -v ab="$(field "$a" bytes_per_s_per_client)" -v bb="$(field "$b" bytes_per_s_per_client)" \
    -v ad="$(field "$a" deltas_per_s_per_client)" -v bd="$(field "$b" deltas_per_s_per_client)" 'BEGIN {
    printf "ratio default/3x3: bytes %.2f, Deltas %.2f\n", (bb > 0 ? ab / bb : 0), (bd > 0 ? ad / bd : 0) }'
