#!/bin/sh
# make bench: builds an optimised (Release) tree and runs tessera-bench, which
# starts its own nats-server, redis-server, tessera-orch, two workers and
# tessera-sim on free loopback ports and prints handover freeze/duration
# percentiles, crash-recovery time and applied inputs per second.
#
#   BENCH_BUILD_DIR  build directory (default: ${BUILD_DIR:-build}-release)
#   JOBS             parallel build jobs (default 2)
#   BENCH_RUNS       how many times to run the bench (default 1)
# Extra arguments go to tessera-bench (see tessera-bench --help).
set -eu
cd "$(dirname "$0")/.."

dir=${BENCH_BUILD_DIR:-${BUILD_DIR:-build}-release}
jobs=${JOBS:-2}
runs=${BENCH_RUNS:-1}

cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DTS_WERROR=ON >/dev/null
cmake --build "$dir" -j"$jobs" --target tessera-bench
if [ ! -x "$dir/tessera-bench" ]; then
    echo "bench.sh: $dir/tessera-bench was not built (is cmocka installed? make deps)" >&2
    exit 1
fi

i=1
while [ "$i" -le "$runs" ]; do
    [ "$runs" -gt 1 ] && echo "== run $i of $runs =="
    # bounded: the bench itself stays under 3 minutes
    timeout -k 10 200 "$dir/tessera-bench" "$@"
    i=$((i + 1))
done
