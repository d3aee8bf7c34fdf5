#!/usr/bin/env bash
# tests/k8s/ci.sh (make k8s-test): brings up a real single-node Kubernetes on
# this machine with kube-local (../shared/tools/kube-local: kube-apiserver,
# controller-manager, scheduler, kubelet and containerd on 127.0.0.1), builds
# the images, runs tests/k8s/e2e.sh against it, and always tears it down.
#
#   KUBE_LOCAL      kube-local (default: PATH or ../shared/tools/kube-local/kube-local)
#   K8S_DIR         the cluster's state (default build/k8s/cluster; removed at the end)
#   E2E_ARTIFACTS   logs (default build/k8s/e2e)
# The first run on a machine builds Kubernetes (15-20 minutes on 2 cores,
# cached in ~/.cache/kube-local/bin) and a Debian base image (~1 minute).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
kl=${KUBE_LOCAL:-$(command -v kube-local || echo "$root/../shared/tools/kube-local/kube-local")}
if [[ ! -x $kl ]]; then
    echo "k8s-test: SKIPPED: kube-local not found (set KUBE_LOCAL); no cluster to test on"
    exit 77
fi
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(dirname "$kl")/containers.conf}
D=${K8S_DIR:-$root/build/k8s/cluster}
export E2E_ARTIFACTS=${E2E_ARTIFACTS:-$root/build/k8s/e2e}
BASE=localhost/debian-base:bookworm
IMAGES=(localhost/tessera:dev localhost/tessera-nats:dev localhost/tessera-redis:dev)
t0=$(date +%s)
say() { printf '==== [%4ss] k8s-test: %s\n' $(($(date +%s) - t0)) "$*"; }

say "kube-local install + build (cached after the first run)"
"$kl" install
"$kl" build
podman image exists "$BASE" || "$kl" base-image "$BASE"

say "images (the node copies them at start: nothing is pulled)"
make -C "$root" --no-print-directory image IMAGE="${IMAGES[0]}" BASE_IMAGE="$BASE"
podman build -q -t "${IMAGES[1]}" --build-arg BASE_IMAGE="$BASE" -f "$here/images/nats.Containerfile" "$here/images"
podman build -q -t "${IMAGES[2]}" --build-arg BASE_IMAGE="$BASE" -f "$here/images/redis.Containerfile" "$here/images"

if [[ -e $D ]]; then
    say "a previous cluster's state is in $D: tearing it down"
    "$kl" down "$D" || true
fi
mkdir -p "$(dirname "$D")"
down() {
    local rc=$?
    say "tear down the cluster"
    "$kl" down "$D" || true
    exit "$rc"
}
trap down EXIT
say "kube-local up"
"$kl" up "$D" "${IMAGES[@]}"
export KUBECONFIG=$D/kubeconfig
node_ready() { kubectl get nodes 2>/dev/null | grep -q ' Ready'; }
for _ in $(seq 120); do node_ready && break; sleep 1; done
kubectl get nodes -o wide

say "e2e"
E2E_BUILD=0 E2E_STATIC_PV=1 CONTAINER_TOOL=podman "$here/e2e.sh"
say "done"
