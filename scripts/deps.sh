#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Tessera builds and tests with.
# A no-op when everything is present; `apt-get update` runs only when
# something is missing; sudo is used only when not running as root.
set -euo pipefail

packages=(
    build-essential cmake pkg-config clang-format
    libnats-dev nats-server
    libprotobuf-c-dev protobuf-c-compiler
    libyaml-dev libhiredis-dev redis-server
    libcmocka-dev libuv1-dev libjansson-dev
    libmicrohttpd-dev libjwt-dev libwslay-dev libssl-dev
    clang chromium
    # the JS SDK, the browser map's bundle and their tests (clients/js)
    nodejs
    libclang-rt-dev openssl
    # the chart checks and the Kubernetes e2e (tests/k8s) read YAML in Python
    python3-yaml
)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
# Debian packages npm on its own; other nodejs builds bring their own npm
# (and conflict with Debian's), so npm is installed only when it is absent
if ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps: all ${#packages[@]} packages installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: missing ${missing[*]} and apt-get is not available; install them by hand" >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "deps: missing ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
    sudo=(sudo)
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
