#!/usr/bin/env bash
# tests/k8s/e2e.sh: Tessera's Helm chart on a real Kubernetes cluster.
#
#   KUBECONFIG=... tests/k8s/e2e.sh
#
# Builds the image (unless E2E_BUILD=0), renders charts/tessera, applies it
# after a server-side dry run, waits for every workload to roll out with its
# real probes, then:
#   - a player joins through the gateway, moves, and gets every input applied
#     once; the chart's `helm test` Pod does the same from inside the cluster;
#   - synthetic players (tessera-sim --via-gateway, a Job) play throughout;
#   - a worker pod is deleted: its preStop hook drains it, and every cell it
#     owned moves to the other worker by live handover (no crash recovery);
#   - the leading orchestrator pod is killed: the standby takes the lead and
#     drives a handover;
#   - the sim Job must end with every input it sent applied (none lost);
#   - /metrics of every service is scraped;
#   - everything is deleted and nothing of the release is left.
#
# Environment:
#   KUBECONFIG        the cluster (required)
#   E2E_VALUES        values file (default tests/k8s/values-kube-local.yaml: a
#                     single node, pods on the node's network, Services at
#                     127.0.0.1; for a cluster with a pod network pass your own)
#   E2E_ACCESS        loopback (services are on this machine's 127.0.0.1, as
#                     with hostNetwork on a local node) or port-forward
#                     (kubectl port-forward); default: loopback when the values
#                     say hostNetwork
#   E2E_NAMESPACE     namespace, created and deleted (default tessera-e2e)
#   E2E_BUILD         1 (default): make image, plus the NATS/Redis test images
#                     when the values use localhost/tessera-{nats,redis}
#   E2E_LOAD          command run after the build with the image names as
#                     arguments, to put them in the cluster (e.g. "kind load
#                     docker-image"); kube-local copies images at `up` instead
#   E2E_STATIC_PV     1: create hostPath PersistentVolumes of storage class
#                     tessera-e2e for the built-in NATS and Redis (a node
#                     without a volume provisioner)
#   E2E_ARTIFACTS     logs and rendered manifests (default build/k8s/e2e)
#   E2E_TLS           1 (default): the built-in NATS and Redis take TLS clients
#                     only (nats.tls, redis.tls) with a CA and a server
#                     certificate made here by openssl; every service, and
#                     tessera-ctl from this machine, verifies them; 0: plain
#   BASE_IMAGE        base of the images (default debian:bookworm-slim)
#   CHART_CHECK       chart-check (default: PATH or ../shared/tools/chart-check)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${KUBECONFIG:?set KUBECONFIG to the cluster to test}"
export KUBECONFIG
NS=${E2E_NAMESPACE:-tessera-e2e}
REL=tessera
VALUES=${E2E_VALUES:-$here/values-kube-local.yaml}
ART=${E2E_ARTIFACTS:-$root/build/k8s/e2e}
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
CT=${CONTAINER_TOOL:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}
K="kubectl -n $NS"
mkdir -p "$ART"
rm -f "$ART"/*.log "$ART"/*.yaml "$ART"/*.txt
exec > >(tee "$ART/e2e.log") 2>&1

t0=$(date +%s)
step() { printf '\n==== [%4ss] %s\n' $(($(date +%s) - t0)) "$*"; }
fail() {
    echo "E2E FAIL: $*"
    exit 1
}
loud() {
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! $*"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
}
# waits up to $1 seconds for the command after it to succeed
wait_for() {
    local secs=$1 end
    shift
    end=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < end)) || return 1
        sleep 1
    done
}

# ---- values this run depends on ---------------------------------------------
val() { python3 -c '
import sys, yaml
v = yaml.safe_load(open(sys.argv[1])) or {}
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else str(v).lower() if isinstance(v, bool) else v)' "$VALUES" "$1"; }
HOSTNET=$(val hostNetwork)
ACCESS=${E2E_ACCESS:-$([[ $HOSTNET == true ]] && echo loopback || echo port-forward)}
IMAGE=$(val image.repository):$(val image.tag)
[[ $IMAGE != : ]] || IMAGE=tessera:dev
NATS_IMAGE=$(val nats.image.repository):$(val nats.image.tag)
REDIS_IMAGE=$(val redis.image.repository):$(val redis.image.tag)
GW_PORT=$(val gateway.service.port)
GW_PORT=${GW_PORT:-7400}
GW_HTTP=$(val gateway.httpPort)
GW_HTTP=${GW_HTTP:-9400}
WK_HTTP=$(val worker.httpPort)
WK_HTTP=${WK_HTTP:-9401}
OR_HTTP=$(val orch.httpPort)
OR_HTTP=${OR_HTTP:-9402}
OR_RANGE=$(val orch.hostPortRange)
OR_RANGE=${OR_RANGE:-32}
NATS_PORT=$(val nats.port)
NATS_PORT=${NATS_PORT:-4222}
REDIS_PORT=$(val redis.port)
REDIS_PORT=${REDIS_PORT:-6379}
W0=$REL-worker-0
W1=$REL-worker-1

cc=${CHART_CHECK:-$(command -v chart-check || echo "$root/../shared/tools/chart-check/chart-check")}
[[ -x $cc ]] || fail "chart-check not found (set CHART_CHECK)"

# ---- cleanup and artifacts --------------------------------------------------
pf_pids=()
collect() {
    $K get all,pvc,cm,secret,pdb,events -o wide >"$ART/objects.txt" 2>&1 || true
    for p in $($K get pods -o name 2>/dev/null | sed 's|pod/||'); do pod_log "$p" >"$ART/pod-$p.log" 2>&1 || true; done
}
cleanup() {
    local rc=$?
    ((${#pf_pids[@]})) && kill "${pf_pids[@]}" 2>/dev/null
    [[ -n ${ctl_pass:-} ]] && rm -f "$ctl_pass"
    if ((rc != 0)); then
        echo "e2e failed (exit $rc): objects, events and pod logs in $ART"
        collect
    fi
    if [[ ${E2E_KEEP:-0} != 1 && ${uninstalled:-0} != 1 ]]; then
        $K delete job,pod,deploy,sts,svc,cm,secret,pdb,pvc --all --wait=false >/dev/null 2>&1 || true
        kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
        kubectl delete pv -l tessera-e2e=1 --wait=false >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# Logs of a pod: kubectl logs, or the kubelet's files when the node has no
# address to reach it at (kube-local).
pod_log() {
    $K logs "$1" --all-containers 2>/dev/null && return 0
    local f
    for f in /var/log/pods/"${NS}_$1"_*/*/*.log; do
        [[ -e $f ]] && sed -E 's/^[^ ]+ (stdout|stderr) [FP] //' "$f"
    done
}

# host:port on this machine for port $2 of service or pod $1
addr() {
    if [[ $ACCESS == loopback ]]; then
        echo "127.0.0.1:$2"
        return
    fi
    local lp
    lp=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    $K port-forward --address 127.0.0.1 "$1" "$lp:$2" >/dev/null 2>&1 &
    pf_pids+=($!)
    wait_for 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$lp" || fail "port-forward to $1:$2"
    echo "127.0.0.1:$lp"
}

# tessera-client / tessera-ctl from the image, on this machine's network
tool() { $CT run --rm --network host --read-only "$IMAGE" "$@"; }

# HTTP GET; prints the body, fails unless the status is 200
http_get() {
    python3 - "$1" <<'PY'
import sys, urllib.request
with urllib.request.urlopen("http://" + sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
PY
}

# ---- 1. images -----------------------------------------------------------------
if [[ ${E2E_BUILD:-1} == 1 ]]; then
    step "build $IMAGE (make image)"
    make -C "$root" --no-print-directory image IMAGE="$IMAGE" BASE_IMAGE="$BASE_IMAGE"
    if [[ $NATS_IMAGE == localhost/tessera-nats:* ]]; then
        $CT build -q -t "$NATS_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" -f "$here/images/nats.Containerfile" "$here/images"
    fi
    if [[ $REDIS_IMAGE == localhost/tessera-redis:* ]]; then
        $CT build -q -t "$REDIS_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" -f "$here/images/redis.Containerfile" "$here/images"
    fi
    [[ -z ${E2E_LOAD:-} ]] || $E2E_LOAD "$IMAGE" "$NATS_IMAGE" "$REDIS_IMAGE"
fi

# ---- 2. render -----------------------------------------------------------------
step "render charts/tessera ($VALUES)"
sets=()
TLS=${E2E_TLS:-1}
TLS_DIR=$ART/tls
if [[ $TLS == 1 ]]; then
    # one CA, one server certificate for both servers: every name a service
    # may dial them by (in-cluster DNS, and 127.0.0.1 with serviceHost)
    rm -rf "$TLS_DIR" && mkdir -p "$TLS_DIR"
    sans="IP:127.0.0.1"
    for svc in "$REL-nats" "$REL-redis"; do
        sans+=",DNS:$svc,DNS:$svc.$NS,DNS:$svc.$NS.svc,DNS:$svc.$NS.svc.cluster.local"
    done
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj /CN=tessera-e2e-ca -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=tessera-e2e \
            -keyout tls.key -out tls.csr 2>/dev/null
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" >ext.cnf
        openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf \
            -out tls.crt 2>/dev/null
        chmod 644 ca.crt # read by the image's own user (tessera-ctl below)
    ) || fail "openssl: cannot make the test certificates"
    sets+=(--set nats.tls.enabled=true --set nats.tls.secret=e2e-tls
        --set redis.tls.enabled=true --set redis.tls.secret=e2e-tls)
    echo "TLS on: NATS and Redis certificates for $sans"
fi
help=$(tool tessera-worker --help 2>&1 || true)
if grep -q 'worker.http_listen' <<<"$help"; then
    HTTP=1
else
    HTTP=0
    loud "this image's services have no <svc>.http_listen (no /healthz, /readyz, /metrics yet): probes OFF, metrics NOT checked"
    sets+=(--set probes.enabled=false)
fi
# chart-check validates (rendering as Kubernetes 1.29); what is applied is
# rendered for the cluster's own version, as `helm install` would
"$cc" "$root/charts/tessera" --name "$REL" -n "$NS" -f "$VALUES" "${sets[@]}" --out "$ART/validated.yaml" \
    2>"$ART/chart-check.log" || {
    cat "$ART/chart-check.log"
    fail "chart-check"
}
tail -1 "$ART/chart-check.log"
kv=$(kubectl version -o json 2>/dev/null | python3 -c 'import sys, json; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
helm=${HELM:-$(command -v helm || echo "${CHART_CHECK_CACHE:-$HOME/.cache/chart-check}/bin/helm-lite")}
[[ -x $helm ]] || fail "no helm (or chart-check's helm-lite) to render with"
apis=$(kubectl api-versions | paste -sd, -)
echo "rendering for the cluster: Kubernetes $kv"
render() { "$helm" template "$REL" "$root/charts/tessera" --namespace "$NS" --kube-version "$kv" \
    --api-versions "$apis" -f "$VALUES" "${sets[@]}" "$@"; }
render >"$ART/rendered.yaml" || fail "render for Kubernetes $kv"
# split: the release, the helm test hook, and the sim Job (rendered on its own)
python3 - "$ART" <<'PY'
import sys, yaml
art = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(art + "/rendered.yaml")) if d]
hook = lambda d: "helm.sh/hook" in (d["metadata"].get("annotations") or {})
yaml.safe_dump_all([d for d in docs if not hook(d)], open(art + "/release.yaml", "w"), sort_keys=False)
yaml.safe_dump_all([d for d in docs if hook(d)], open(art + "/helm-test.yaml", "w"), sort_keys=False)
PY
render --set sim.enabled=true >"$ART/with-sim.yaml" || fail "render with the sim"
python3 - "$ART" <<'PY'
import sys, yaml
art = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(art + "/with-sim.yaml")) if d and d["kind"] == "Job"]
yaml.safe_dump_all(docs, open(art + "/sim.yaml", "w"), sort_keys=False)
PY
grep -c '^kind:' "$ART/release.yaml" | xargs echo "objects in the release:"

# ---- 3. install ----------------------------------------------------------------
step "install into namespace $NS (server-side dry run first)"
kubectl get namespace "$NS" >/dev/null 2>&1 && fail "namespace $NS already exists; delete it first"
kubectl create namespace "$NS"
kubectl label namespace "$NS" tessera-e2e=1 >/dev/null
if [[ ${E2E_STATIC_PV:-0} == 1 ]]; then
    rm -rf "$ART/pv"
    for pv in nats redis; do
        mkdir -p "$ART/pv/$pv" && chmod 0777 "$ART/pv/$pv"
        kubectl apply -f - <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: tessera-e2e-$pv, labels: {tessera-e2e: "1"}}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: tessera-e2e
  persistentVolumeReclaimPolicy: Retain
  claimRef: {namespace: $NS, name: data-$REL-$pv-0}
  hostPath: {path: $ART/pv/$pv, type: Directory}
EOF
    done
fi
if [[ $TLS == 1 ]]; then
    $K create secret generic e2e-tls --type=kubernetes.io/tls --from-file="$TLS_DIR/tls.crt" \
        --from-file="$TLS_DIR/tls.key" --from-file="$TLS_DIR/ca.crt" >/dev/null || fail "the TLS Secret"
fi
$K apply --dry-run=server -f "$ART/release.yaml" >"$ART/dry-run.txt" || fail "server-side dry run"
wc -l <"$ART/dry-run.txt" | xargs echo "dry run accepted; objects:"
$K apply -f "$ART/release.yaml"

step "wait for the rollouts (real probes)"
for w in statefulset/$REL-nats statefulset/$REL-redis statefulset/$REL-worker deployment/$REL-orch statefulset/$REL-gateway; do
    if ! grep -q "name: ${w#*/}$" "$ART/release.yaml"; then continue; fi
    $K rollout status "$w" --timeout=300s || fail "$w did not roll out"
done
$K get pods -o wide
$K get pods -o jsonpath='{range .items[*]}{.metadata.name}{" ready="}{.status.containerStatuses[0].ready}{" restarts="}{.status.containerStatuses[0].restartCount}{"\n"}{end}'

GW=$(addr svc/$REL-gateway "$GW_PORT")
NATS=$(addr svc/$REL-nats "$NATS_PORT")
REDIS=$(addr svc/$REL-redis "$REDIS_PORT")
# tessera-ctl is the built-in NATS's ctl user (nats.users) when the release
# made one: its password from the release's Secret, as a file, never an argument
ctl_auth=()
if ctl_pw=$($K get secret "$REL-nats-users" -o jsonpath='{.data.ctl}' 2>/dev/null) && [[ -n $ctl_pw ]]; then
    ctl_pass=$(mktemp)
    base64 -d <<<"$ctl_pw" >"$ctl_pass"
    chmod 644 "$ctl_pass" # read by the image's own user
    ctl_auth=(-e TESSERA_NATS_USER=ctl -e TESSERA_NATS_PASSWORD_FILE=/run/ctl.nats.pass -v "$ctl_pass:/run/ctl.nats.pass:ro")
fi
ctl_urls=(--nats.url="nats://$NATS" --redis.url="redis://$REDIS")
if [[ $TLS == 1 ]]; then
    ctl_auth+=(-v "$TLS_DIR/ca.crt:/run/tessera-ca.crt:ro")
    ctl_urls=(--nats.url="tls://$NATS" --nats.tls_ca=/run/tessera-ca.crt
        --redis.url="rediss://$REDIS" --redis.tls_ca=/run/tessera-ca.crt)
fi
ctl() { $CT run --rm --network host --read-only "${ctl_auth[@]}" "$IMAGE" tessera-ctl "${ctl_urls[@]}" "$@"; }
owned_by() { ctl cells | awk -v w="$1" '$2 == w' | wc -l; }
stats() { ctl stats; }
json() { python3 -c 'import sys, json; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# Both workers own cells. (A worker that came up after the orchestrator's
# recovery grace may have none, and rebalancing is off in these values: hand
# it a quarter of the world.)
all_owned() {
    local t n
    t=$(ctl cells) || return 1
    n=$(sed -nE 's/^world [0-9]+: ([0-9]+) cells.*/\1/p' <<<"$t")
    ((n > 0 && $(awk '$2 ~ /-worker-[0-9]+$/' <<<"$t" | wc -l) == n))
}
wait_for 60 all_owned || fail "not every cell has an owner"
if (($(owned_by "$W1") == 0)); then
    for c in $(ctl cells | awk -v w="$W0" '$2 == w {print $1}' | head -4); do
        ctl handover "$c" "$W1" || fail "handover of $c to $W1"
    done
fi
ctl cells | tee "$ART/cells-before.txt"
n_w1=$(awk -v w="$W1" '$2 == w' "$ART/cells-before.txt" | wc -l)
n_all=$(awk '$2 ~ /-worker-/' "$ART/cells-before.txt" | wc -l)
((n_w1 > 0)) || fail "$W1 owns no cell"

# ---- 4. players ----------------------------------------------------------------
step "a player through the gateway ($GW)"
out=$(tool tessera-client --gateway.listen="$GW" --at 10,10 move 5 0 3) || {
    echo "$out"
    fail "tessera-client move"
}
echo "$out" | tail -2
[[ $out =~ final\ me=.*\ applied=([0-9]+) ]] || fail "the player never saw its own entity"
# `move` sends two inputs (the move and the stop): each applied once
((BASH_REMATCH[1] == 2)) || fail "player: ${BASH_REMATCH[1]} inputs applied, sent 2"
echo "player: both inputs applied once"

step "helm test: a player joins from inside the cluster"
$K apply -f "$ART/helm-test.yaml"
test_done() { [[ $($K get pod $REL-test-join -o jsonpath='{.status.phase}') =~ Succeeded|Failed ]]; }
wait_for 120 test_done || fail "helm test pod did not finish"
pod_log $REL-test-join | tail -3
[[ $($K get pod $REL-test-join -o jsonpath='{.status.phase}') == Succeeded ]] || fail "helm test failed"
$K delete pod $REL-test-join --wait=false >/dev/null

step "synthetic players through the gateway (tessera-sim Job)"
$K apply -f "$ART/sim.yaml"
# (the sim prints its figures when it ends: count its clients at the gateway)
players=$(grep -o -E -- '--sim.players=[0-9]+' "$ART/sim.yaml" | cut -d= -f2)
((HTTP == 0)) || GWM=$(addr svc/$REL-gateway "$GW_HTTP")
gw_clients() { http_get "$GWM/metrics" 2>/dev/null |
    awk '/^tessera_gateway_clients[{ ]/ {n += $NF} END {print n + 0}'; }
sim_playing() {
    if ((HTTP == 1)); then
        (($(gw_clients) >= players))
    else
        [[ $($K get pods -l app.kubernetes.io/component=sim -o jsonpath='{.items[0].status.phase}') == Running ]]
    fi
}
wait_for 90 sim_playing || fail "the sim's $players players never all joined"
echo "the sim's $players players are playing"

# ---- 5. a worker pod deleted: drain by live handover ------------------------
step "delete pod $W1 ($n_w1 cells): on SIGTERM it drains by live handover"
s_before=$(stats)
echo "orchestrator before: $s_before"
td=$(date +%s%N)
$K delete pod "$W1" --wait=true --timeout=120s
echo "$W1 deleted in $((($(date +%s%N) - td) / 1000000)) ms (drain included)"
s_after=$(stats)
echo "orchestrator after:  $s_after"
drained=$(($(json drain_moves <<<"$s_after") - $(json drain_moves <<<"$s_before")))
recovered=$(($(json recoveries <<<"$s_after") - $(json recoveries <<<"$s_before")))
echo "cells handed away by the drain: $drained, recovered from checkpoints: $recovered"
((recovered == 0)) || fail "$recovered cells were recovered (crash path), not handed over"
((drained >= n_w1)) || fail "only $drained of $n_w1 cells of $W1 moved by drain handover"
# the orchestrator pod holding the lock: it logged "lock orch.<world> as <holder>"
pod_of_holder() {
    local p
    for p in $($K get pods -l app.kubernetes.io/component=orch -o name | sed 's|pod/||'); do
        # (grep reads all of it: grep -q would end the pipe early, a failure under pipefail)
        if pod_log "$p" | grep -E "lock orch\.[0-9]+ as $1\$" >/dev/null; then echo "$p"; fi
    done
    return 0
}
old_leader=$(json leader <<<"$s_after")
lead_pod=$(pod_of_holder "$old_leader")
[[ -n $lead_pod && $lead_pod != *$'\n'* ]] || fail "no single orchestrator pod holds the lock as $old_leader: '$lead_pod'"
pod_log "$lead_pod" | grep -E "\(drain\): cell .* from $W1 to" | tee "$ART/drain-handovers.txt" | tail -3
(($(wc -l <"$ART/drain-handovers.txt") >= n_w1)) || fail "the leader logged fewer drain handovers than $n_w1"
$K rollout status statefulset/$REL-worker --timeout=180s || fail "$W1 did not come back"
ctl cells | tee "$ART/cells-after-drain.txt" | tail -1
(($(awk '$2 ~ /-worker-/' "$ART/cells-after-drain.txt" | wc -l) == n_all)) || fail "a cell has no owner after the drain"

# ---- 6. the leading orchestrator killed --------------------------------------
step "kill the leading orchestrator pod ($lead_pod)"
echo "leader: $old_leader ($lead_pod)"
standby=$($K get pods -l app.kubernetes.io/component=orch -o name | sed 's|pod/||' | grep -v -x "$lead_pod" | head -1)
[[ -n $standby ]] || fail "no standby orchestrator pod"
tk=$(date +%s%N)
$K delete pod "$lead_pod" --grace-period=0 --force --wait=false 2>&1 | grep -v -i warning || true
new_leads() {
    local l
    l=$(stats 2>/dev/null | json leader 2>/dev/null) || return 1
    [[ -n $l && $l != "$old_leader" ]]
}
wait_for 60 new_leads || fail "no standby took the lead"
new_leader=$(stats | json leader)
echo "new leader $new_leader after $((($(date +%s%N) - tk) / 1000000)) ms"
[[ $(pod_of_holder "$new_leader") == "$standby" ]] || fail "the new leader $new_leader is not the standby $standby"
echo "the standby $standby leads"
cell=$(awk -v w="$W0" '$2 == w {print $1; exit}' "$ART/cells-after-drain.txt")
ctl handover "$cell" "$W1" || fail "the new leader could not hand $cell to $W1"
moved() { ctl cells | awk -v c="$cell" -v w="$W1" '$1 == c && $2 == w {found = 1} END {exit !found}'; }
wait_for 20 moved || fail "$cell did not move to $W1"
echo "the new leader handed $cell to $W1"
$K rollout status deployment/$REL-orch --timeout=120s || fail "the orchestrator Deployment did not recover"

# ---- 7. nothing lost -----------------------------------------------------------
step "the sim's players: every input applied"
# the players must have played through all of the above: a sim that ended
# before it proves nothing about the drain and the failover
[[ -z $($K get job $REL-sim -o jsonpath='{.status.succeeded}{.status.failed}') ]] ||
    fail "the sim Job ended before the drain and the failover were over: raise sim.durationSeconds in tests/k8s/values-kube-local.yaml"
sim_done() { [[ $($K get job $REL-sim -o jsonpath='{.status.succeeded}{.status.failed}') =~ 1 ]]; }
wait_for 240 sim_done || fail "the sim Job did not finish"
simpod=$($K get pods -l app.kubernetes.io/component=sim -o name | head -1 | sed 's|pod/||')
pod_log "$simpod" >"$ART/sim.log"
grep via-gateway "$ART/sim.log" | tail -2
[[ $($K get job $REL-sim -o jsonpath='{.status.succeeded}') == 1 ]] || fail "the sim reports inputs lost or clients dropped"

# ---- 8. metrics ------------------------------------------------------------------
step "scrape /metrics of every service"
scrape() { # name host:port
    local body
    body=$(http_get "$2/metrics") || fail "$1: GET /metrics at $2"
    http_get "$2/healthz" >/dev/null || fail "$1: /healthz"
    http_get "$2/readyz" >/dev/null || fail "$1: /readyz"
    local n
    n=$(grep -c '^tessera_' <<<"$body" || true)
    ((n > 0)) || fail "$1: no tessera_ metric at $2"
    echo "$1 ($2): $n tessera_ samples, e.g. $(grep -m1 -E '^tessera_[a-z_]+(_total)? ' <<<"$body" || grep -m1 '^tessera_' <<<"$body")"
}
if ((HTTP == 0)); then
    loud "/metrics NOT CHECKED: the services have no HTTP listener yet"
elif [[ $ACCESS == loopback ]]; then
    scrape gateway "127.0.0.1:$GW_HTTP"
    scrape "$W0" "127.0.0.1:$WK_HTTP"
    scrape "$W1" "127.0.0.1:$((WK_HTTP + 1))"
    n_orch=0
    for ((i = 0; i < OR_RANGE; i++)); do
        # (a closed port is refused at once: no HTTP client started for it)
        if (exec 3<>"/dev/tcp/127.0.0.1/$((OR_HTTP + i))") 2>/dev/null &&
            http_get "127.0.0.1:$((OR_HTTP + i))/metrics" >/dev/null 2>&1; then
            scrape "orch" "127.0.0.1:$((OR_HTTP + i))"
            n_orch=$((n_orch + 1))
        fi
    done
    ((n_orch == 2)) || fail "found $n_orch orchestrators serving /metrics, want 2"
else
    scrape gateway "$(addr svc/$REL-gateway "$GW_HTTP")"
    for p in $($K get pods -l 'app.kubernetes.io/component in (worker,orch)' -o name); do
        port=$WK_HTTP
        [[ $p == *orch* ]] && port=$OR_HTTP
        scrape "${p#pod/}" "$(addr "$p" "$port")"
    done
fi

# ---- 9. uninstall ---------------------------------------------------------------
step "uninstall"
$K delete -f "$ART/sim.yaml" --wait=true --timeout=60s
tu=$(date +%s)
$K delete -f "$ART/release.yaml" --wait=true --timeout=180s
# The controllers delete the pods after their owners are gone, and a pod holds
# its volume claim (finalizer kubernetes.io/pvc-protection) until it has
# stopped: NATS only when its lame duck period (nats.lameDuck) is over. A claim
# deleted before its pod is gone stays Terminating: wait for the pods first,
# within their longest terminationGracePeriodSeconds and some.
pods_gone() {
    local p
    p=$($K get pods -o name) && [[ -z $p ]]
}
if ! wait_for 120 pods_gone; then
    $K get pods -o wide
    fail "pods still there 120 s after the release was deleted"
fi
echo "every pod gone $(($(date +%s) - tu)) s after the release was deleted"
# a StatefulSet's volume claims outlive it (as with helm uninstall): delete them
$K delete pvc -l app.kubernetes.io/instance=$REL --wait=true --timeout=60s
kubectl delete namespace "$NS" --wait=true --timeout=180s
kubectl delete pv -l tessera-e2e=1 --wait=true --timeout=60s 2>/dev/null || true
uninstalled=1
left=$(kubectl get pv -l tessera-e2e=1 -o name 2>/dev/null; kubectl get namespace "$NS" -o name 2>/dev/null || true)
[[ -z $left ]] || fail "left behind: $left"
if [[ $ACCESS == loopback ]]; then
    for port in "$GW_PORT" "$GW_HTTP" "$NATS_PORT" "$REDIS_PORT" "$WK_HTTP"; do
        ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null || fail "something still listens on 127.0.0.1:$port"
    done
fi
step "PASS: installed, rolled out, played, drained $W1 by handover, failed the orchestrator over, scraped, uninstalled"
