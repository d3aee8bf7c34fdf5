#!/usr/bin/env bash
# docs/game-modules.md followed from an empty directory: Tessera installed
# under a fresh prefix (cmake --install, what `make install` runs), the
# guide's first module (its first ```c block) built out of the tree with the
# guide's pkg-config line and with its CMake lines, each exporting the entry
# point a worker looks up.
#   tests/install/guide_module.sh <build dir> <source dir>
set -euo pipefail
build=$(realpath "$1")
src=$(realpath "$2")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log"
pc=$(find "$tmp/prefix" -name tessera-game.pc)
[[ -n "$pc" ]] || { echo "FAIL: tessera-game.pc not installed"; exit 1; }
[[ -f "$tmp/prefix/include/tessera/game.h" ]] || { echo "FAIL: tessera/game.h not installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc")

mkdir "$tmp/wave"
cd "$tmp/wave"
awk '/^```c$/ && !done {on = 1; next} on && /^```$/ {on = 0; done = 1} on' "$src/docs/game-modules.md" >wave.c
[[ -s wave.c ]] || { echo "FAIL: no C block in docs/game-modules.md"; exit 1; }

check() { # the worker dlopens the module and looks up tessera_game_module
    nm -D --defined-only "$1" | grep -qw tessera_game_module || { echo "FAIL: $1 lacks tessera_game_module"; exit 1; }
}

# the guide's compiler line, with pkg-config
cc -shared -fPIC -O2 -Wall -Werror $(pkg-config --cflags tessera-game) -o libwave.so wave.c
check libwave.so

# the guide's CMake lines
sed -n '/^```cmake$/,/^```$/p' "$src/docs/game-modules.md" | sed '1d;$d' >CMakeLists.txt
[[ -s CMakeLists.txt ]] || { echo "FAIL: no cmake block in docs/game-modules.md"; exit 1; }
cmake -S . -B b >"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log"; exit 1; }
cmake --build b >>"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log"; exit 1; }
check "$(find b -name 'libwave.so')"
echo "OK: the guide's module builds against an installed Tessera (pkg-config and CMake)"
