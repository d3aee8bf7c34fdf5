#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, ASan and UBSan
# (TS_FUZZ=ON) and runs each one for FUZZ_S seconds from its committed
# corpus (what `make fuzz` and `make fuzz-ci` run). New inputs go to
# <build>/tests/fuzz/corpus/<target>, never into the committed corpus; a
# crash leaves its input in <build>/tests/fuzz/artifacts/ and fails the run:
# copy it to tests/fuzz/regressions/<target>/ with the fix, so every build
# replays it from then on (unit.<target>_corpus).
#
# Environment: FUZZ_S (seconds per target, 20), FUZZ_JOBS (targets run at once,
# 2: each is one process on one core), FUZZ_BUILD_DIR (build-fuzz),
# FUZZ_TARGETS (space-separated subset; default all).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_S=${FUZZ_S:-20}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
[[ "$FUZZ_S" =~ ^[0-9]+$ ]] || {
    echo "fuzz: FUZZ_S must be a number of seconds, got '$FUZZ_S'" >&2
    exit 2
}
command -v clang >/dev/null 2>&1 || {
    echo "fuzz: clang not found (make deps installs it)" >&2
    exit 1
}
targets=${FUZZ_TARGETS:-$(sed -n 's/^set(TS_FUZZ_TARGETS \(.*\))$/\1/p' tests/fuzz/CMakeLists.txt)}
CC=clang cmake -S . -B "$BUILD" -DTS_FUZZ=ON -DTS_JS_TESTS=OFF -DTS_SANITIZE=address,undefined -DTS_FUZZ_SECONDS="$FUZZ_S" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
read -ra target_list <<<"$targets"
cmake --build "$BUILD" -j2 --target "${target_list[@]}"
regex=$(printf '%s|' "${target_list[@]}")
ctest --test-dir "$BUILD" -j"${FUZZ_JOBS:-2}" -L fuzz -R "^fuzz\.(${regex%|})\$" --output-on-failure
