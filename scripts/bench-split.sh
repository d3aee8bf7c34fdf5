#!/bin/sh
# Split and merge figures: runs it_split's ctl scenario (orchestrators, two
# workers and 200 players on real nats-server and redis-server; splits and
# merges by tessera-ctl, SIGKILLs of the leader and of an owner in between)
# and prints its measure lines:
#
#   measure: split of <cell>: duration_ms=.. entities=.. moved=.. freeze_ms p50=.. p99=.. max=..
#            handoff_ms p50=.. p99=.. max=..   (one line)
#
# duration: from the ctl request to the last entity of the cell showing in
# the new layout's state; freeze: per entity, its longest gap between two
# states in the 2 s after the request minus one tick (50 ms at 20 Hz), over
# the entities that were in the cell; handoff: per entity that moved, the
# gap from its last state in the old layout to its first in the new one
# minus one tick (the move itself; freeze also counts any other stall in
# the window); "nothing (baseline)" is the same window with no change.
# Target: p99 <= one tick (50 ms) for the freeze a split or merge causes:
# the verdict is on the handoff (the window's freeze is printed next to the
# baseline's, which on a busy box reaches a tick by itself).
#
# Then the ghost traffic of one border: it_ghost's crowd of 240 entities
# walking along a border between two workers' cells (4-unit ghost margin,
# 20 Hz, a keyframe every 10 ticks), messages and bytes per second, both
# directions.
#
#   BUILD_DIR  build directory with it_split and it_ghost (default: build)
set -eu
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
bin="$dir/tests/it_split"
if [ ! -x "$bin" ]; then
    echo "bench-split.sh: $bin was not built (is cmocka installed? make deps)" >&2
    exit 1
fi
out=$(IT_SPLIT_ONLY=test_ctl_split_merge_with_kills timeout -k 10 240 "$bin" 2>&1) || {
    echo "$out" | tail -n 40 >&2
    echo "bench-split.sh: it_split failed" >&2
    exit 1
}
echo "== split and merge: duration and freeze =="
echo "$out" | grep '^measure:'
echo "$out" | grep '^measure: ' | awk '
    # the p99= after freeze_ms and after handoff_ms
    { what = ""; for (i = 1; i <= NF; i++) {
        if ($i == "freeze_ms" || $i == "handoff_ms") what = $i
        if ($i ~ /^p99=/) {
            v = substr($i, 5) + 0
            if ($2 == "nothing") { if (what == "freeze_ms" && v > base) base = v }
            else if (what == "handoff_ms") { if (v > hand) hand = v }
            else if (v > win) win = v
        } } }
    END {
        printf "handoff p99 worst %.1f ms (target <= 50 ms, one tick): %s\n", hand, hand <= 50 ? "ok" : "MISSED"
        printf "freeze p99 worst %.1f ms over the windows (baseline with no change: %.1f ms)\n", win, base
    }'

ghost="$dir/tests/it_ghost"
if [ -x "$ghost" ]; then
    gout=$(timeout -k 10 120 "$ghost" 2>&1) || {
        echo "$gout" | tail -n 40 >&2
        echo "bench-split.sh: it_ghost failed" >&2
        exit 1
    }
    echo "== ghosts: traffic per border =="
    echo "$gout" | grep '^ghost traffic'
fi
