#!/bin/sh
# make bench: builds an optimised (Release) tree and prints Tessera's
# performance figures, each with its target and `ok` or `MISSED`:
#
#   1. tessera-bench: handover freeze window and duration, crash recovery,
#      applied inputs per second (orch + w1 + w2 + tessera-sim);
#   2. tessera-bench-scale: entities per worker at 20 Hz, inputs/s applied
#      exactly once and inputs per JetStream message beside a raw nats.c
#      publisher, clients through one gateway, and a 64x64 world's crash
#      recovery, threads and idle CPU;
#   3. scripts/bench-peers.sh, when it exists: side by side with Colyseus;
#   4. tessera-bench-cluster: input throughput, NATS CPU per input and
#      handover freeze with NATS auth+TLS on vs off, and with R3 vs R1
#      streams on a 3-node JetStream cluster (interleaved rounds, medians);
#   5. scripts/bench-split.sh: split and merge duration and the freeze they
#      cause, and the ghost traffic of one border;
#   6. scripts/bench-aoi.sh: bytes and Deltas per client with the default
#      aoi.radius against a circle of the old 3x3 root cells' area;
#   7. tessera-bench-consumers: nats-server CPU per input delivered with one
#      consumer per cell (16 / 512 / 2,048; literal vs wildcard filter) and
#      the cost of a consumer create on a long stream.
#
# Each starts its own nats-server and redis-server on free loopback ports and
# reaps everything it started. The whole run stays under about 20 minutes.
#
#   BENCH_BUILD_DIR  build directory (default: ${BUILD_DIR:-build}-release)
#   JOBS             parallel build jobs (default 2)
#   BENCH_RUNS       how many times to run tessera-bench (default 1)
#   BENCH_HANDOVER=0 skip tessera-bench
#   BENCH_SCALE=0    skip tessera-bench-scale (its knobs: tessera-bench-scale --help)
#   BENCH_PEERS=0    skip scripts/bench-peers.sh
#   BENCH_CLUSTER=0  skip tessera-bench-cluster (its knobs: tessera-bench-cluster --help)
#   BENCH_SPLIT=0    skip scripts/bench-split.sh
#   BENCH_AOI=0      skip scripts/bench-aoi.sh (its knobs: its header)
#   BENCH_CONSUMERS=0  skip tessera-bench-consumers (its knobs: --help)
#   BENCH_BUILD_ONLY=1  build the Release tree and stop (CI)
# Extra arguments go to tessera-bench (see tessera-bench --help).
set -eu
cd "$(dirname "$0")/.."

dir=${BENCH_BUILD_DIR:-${BUILD_DIR:-build}-release}
jobs=${JOBS:-2}
runs=${BENCH_RUNS:-1}

cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DTS_WERROR=ON -DTS_JS_TESTS=OFF >/dev/null
cmake --build "$dir" -j"$jobs" --target tessera-bench tessera-bench-scale tessera-bench-cluster tessera-bench-consumers tessera-orch tessera-worker \
    tessera-gateway tessera-sim tessera-ctl it_split it_ghost
for bin in tessera-bench tessera-bench-scale; do
    if [ ! -x "$dir/$bin" ]; then
        echo "bench.sh: $dir/$bin was not built (is cmocka installed? make deps)" >&2
        exit 1
    fi
done
# CI builds the bench (Release, -Werror) without running it
if [ "${BENCH_BUILD_ONLY:-0}" != 0 ]; then exit 0; fi

echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0

if [ "${BENCH_HANDOVER:-1}" != 0 ]; then
    i=1
    while [ "$i" -le "$runs" ]; do
        [ "$runs" -gt 1 ] && echo "== run $i of $runs =="
        # bounded: the bench itself stays under 3 minutes
        timeout -k 10 200 "$dir/tessera-bench" "$@" || status=1
        i=$((i + 1))
    done
fi

if [ "${BENCH_SCALE:-1}" != 0 ]; then
    echo
    # bounded: each phase has its own budget; the four together stay under 13 minutes
    timeout -k 10 780 "$dir/tessera-bench-scale" || status=1
fi

if [ "${BENCH_PEERS:-1}" != 0 ] && [ -x scripts/bench-peers.sh ]; then
    echo
    BUILD_DIR="$dir" scripts/bench-peers.sh || status=1
fi

if [ "${BENCH_CLUSTER:-1}" != 0 ]; then
    echo
    # bounded: 3 rounds of 4 set-ups take about 4 minutes
    timeout -k 10 600 "$dir/tessera-bench-cluster" || status=1
fi

if [ "${BENCH_SPLIT:-1}" != 0 ]; then
    echo
    BUILD_DIR="$dir" scripts/bench-split.sh || status=1
fi

if [ "${BENCH_AOI:-1}" != 0 ]; then
    echo
    BUILD_DIR="$dir" scripts/bench-aoi.sh || status=1
fi

if [ "${BENCH_CONSUMERS:-1}" != 0 ]; then
    echo
    # bounded: 6 delivery windows and the create phase take about 2 minutes
    timeout -k 10 300 "$dir/tessera-bench-consumers" || status=1
fi
exit "$status"
