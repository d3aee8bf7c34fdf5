#!/usr/bin/env bash
# chart-test.sh CASE: renders charts/tessera with one value set through
# chart-check (helm template + lint + every object validated against the
# Kubernetes schemas) and checks what that value set promises.
#
#   default             the chart's own values
#   external            ci/external-values.yaml: external NATS + Redis
#   nats-cluster        ci/nats-cluster-values.yaml: 3-node JetStream
#   hpa-servicemonitor  ci/hpa-servicemonitor-values.yaml
#   kube-local          tests/k8s/values-kube-local.yaml (what e2e.sh installs)
#   bad-values          ci/bad-values.yaml must be rejected by the schema
#
# chart-check is found as $CHART_CHECK, on PATH, or in ../shared/tools/chart-check
# beside the checkout; without it the test is skipped (exit 77).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chart=$root/charts/tessera
case_=${1:?usage: chart-test.sh CASE}

cc=${CHART_CHECK:-}
if [[ -z $cc ]]; then
    if command -v chart-check >/dev/null 2>&1; then
        cc=$(command -v chart-check)
    elif [[ -x $root/../shared/tools/chart-check/chart-check ]]; then
        cc=$root/../shared/tools/chart-check/chart-check
    fi
fi
if [[ -z $cc || ! -x $cc ]]; then
    echo "SKIPPED: chart-check not found (set CHART_CHECK, or put it on PATH); the chart was not checked"
    exit 77
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# the users and permissions `make run` gives NATS, which the chart's must match
bash "$root/scripts/gen-secrets.sh" "$out/gen-secrets" >/dev/null
fail() { echo "FAIL [$case_]: $*" >&2; exit 1; }

# The first run builds chart-check's tools: one at a time.
render() { flock "${TMPDIR:-/tmp}/tessera-chart-check.lock" "$cc" "$chart" --name tessera -n games "$@" --out "$out/all.yaml" 2>"$out/err" || {
    cat "$out/err" >&2; return 1; }; tail -1 "$out/err"; }

# Checks are collected, then evaluated in one pass (run_checks): has KIND/NAME,
# hasnt KIND/NAME, check PYTHON-EXPRESSION MESSAGE, where the expression sees
# `docs` (the rendered objects), obj(kind, name), pod(kind, name),
# env(kind, name) and config() (the tessera.yaml the chart renders).
: >"$out/checks"
check() { printf '%s\t%s\n' "$1" "$2" >>"$out/checks"; }
has() { check "has('$1')" "no $1 rendered"; }
hasnt() { check "not has('$1')" "$1 rendered but must not be"; }
run_checks() {
    python3 - "$out/all.yaml" "$out/checks" "$case_" "$out/gen-secrets/nats.conf" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
def has(kn): return any("%s/%s" % (d["kind"], d["metadata"]["name"]) == kn for d in docs)
def obj(kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name: return d
    raise KeyError("no %s/%s" % (kind, name))
def pod(kind, name): return obj(kind, name)["spec"]["template"]["spec"]
def env(kind, name, c=0): return {e["name"]: e.get("value") for e in pod(kind, name)["containers"][c].get("env", [])}
def config(): return yaml.safe_load(obj("ConfigMap", "tessera-config")["data"]["tessera.yaml"])
import re
def perms(conf):
    # nats.conf authorization users -> {user: (publish allow, publish deny, subscribe allow)}
    out = {}
    for m in re.finditer(r'user: "([^"]+)".*?publish: \{ allow: \[(.*?)\](?:, deny: \[(.*?)\])? \}\s*subscribe: \{ allow: \[(.*?)\] \}', conf, re.S):
        q = lambda t: sorted(re.findall(r'"([^"]*)"', t or ""))
        out[m.group(1)] = (q(m.group(2)), q(m.group(3)), q(m.group(4)))
    return out
def gen_secrets_perms(): return perms(open(sys.argv[4]).read())
def ngateways():
    # gateway ids (and NATS users gateway-1..N): up to the HPA's maxReplicas, else replicas
    if has("HorizontalPodAutoscaler/tessera-gateway"): return obj("HorizontalPodAutoscaler","tessera-gateway")["spec"]["maxReplicas"]
    return obj("StatefulSet","tessera-gateway")["spec"]["replicas"]
def nats_users(): return ["orch","worker","sim","ctl","inspector","admin"] + ["gateway-%d" % i for i in range(1, ngateways() + 1)]
failed = 0
n = 0
for line in open(sys.argv[2]):
    expr, msg = line.rstrip("\n").split("\t", 1)
    n += 1
    try:
        ok = eval(expr)
    except Exception as e:
        ok, msg = False, "%s (%s: %s)" % (msg, type(e).__name__, e)
    if not ok:
        failed += 1
        print("FAIL [%s]: %s\n    %s" % (sys.argv[3], msg, expr), file=sys.stderr)
print("%d checks, %d failed" % (n, failed))
sys.exit(1 if failed else 0)
PY
}

common_checks() {
    has StatefulSet/tessera-gateway
    has Service/tessera-gateway
    has StatefulSet/tessera-worker
    has Service/tessera-worker
    has Deployment/tessera-orch
    has ConfigMap/tessera-config
    has Pod/tessera-test-join
    check 'all(p["containers"][0]["securityContext"]["readOnlyRootFilesystem"] and p["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"] and not p["containers"][0]["securityContext"]["allowPrivilegeEscalation"] and p["securityContext"]["runAsNonRoot"] for p in [pod(k, n) for k, n in [("StatefulSet","tessera-gateway"),("StatefulSet","tessera-worker"),("Deployment","tessera-orch")]])' \
        'every tessera pod is non-root, drops ALL, no privilege escalation, read-only root'
    check 'env("StatefulSet","tessera-worker")["TESSERA_WORKER_ID"] == "$(POD_NAME)"' 'worker id = pod name'
    check 'obj("StatefulSet","tessera-gateway")["spec"]["podManagementPolicy"] == "Parallel" and "TESSERA_GATEWAY_ID=$id" in pod("StatefulSet","tessera-gateway")["containers"][0]["command"][2]' 'every gateway pod has its own gateway.id (StatefulSet ordinal + 1)'
    check 'all(ps.get("automountServiceAccountToken") is False for ps in [pod(k, n) for k, n in [("StatefulSet","tessera-gateway"),("StatefulSet","tessera-worker"),("Deployment","tessera-orch")]])' 'no API token in the pods'
    check 'pod("StatefulSet","tessera-worker")["terminationGracePeriodSeconds"] > 30' 'worker grace period above the 30 s drain'
    check '"lifecycle" not in pod("StatefulSet","tessera-worker")["containers"][0]' 'worker stops (and drains) on the kubelet SIGTERM alone: no hook sends a second one'
    check 'obj("Deployment","tessera-orch")["spec"]["replicas"] == 2' 'orchestrator: 2 replicas'
    check 'len({obj(k,n)["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for k,n in [("StatefulSet","tessera-gateway"),("StatefulSet","tessera-worker"),("Deployment","tessera-orch")]}) == 1' 'config checksum annotation on every pod'
    check 'config()["world"]["workers"] == ["tessera-worker-%d" % i for i in range(obj("StatefulSet","tessera-worker")["spec"]["replicas"])]' 'world.workers are the worker pod names'
    if [[ ${1:-} != hostnet ]]; then
        check 'pod("StatefulSet","tessera-gateway")["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz" and pod("StatefulSet","tessera-gateway")["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"' 'gateway probes on /readyz and /healthz'
    fi
    check '"TESSERA_GATEWAY_HTTP_LISTEN" in env("StatefulSet","tessera-gateway")' 'gateway.http_listen set'
    check 'obj("PodDisruptionBudget","tessera-worker")["apiVersion"] == "policy/v1"' 'PDB policy/v1 on Kubernetes >= 1.21'
}

# The built-in NATS runs with make run's users and permissions: every
# service its own user with its password alone mounted, the server's
# passwords from the users' Secret.
# A stopped NATS server's lame duck mode ends before the kubelet kills it.
nats_stop_checks() {
    check '30 <= int(obj("ConfigMap","tessera-nats-config")["data"]["nats.conf"].split("lame_duck_duration: \"")[1].split("s\"")[0]) < pod("StatefulSet","tessera-nats")["terminationGracePeriodSeconds"]' 'NATS lame duck duration set, and below the pod grace period'
}

nats_users_checks() {
    has Secret/tessera-nats-users
    check 'sorted(obj("Secret","tessera-nats-users")["data"]) == sorted(nats_users())' 'a password per NATS user in the Secret (gateway-1..N for N gateway ids)'
    check 'perms(obj("ConfigMap","tessera-nats-config")["data"]["nats.conf"]) == {u: p for u, p in gen_secrets_perms().items() if u in nats_users()}' 'NATS users and permissions are those of scripts/gen-secrets.sh'
    check 'all("$TS_NATS_PW_%s" % u.upper().replace("-", "_") in obj("ConfigMap","tessera-nats-config")["data"]["nats.conf"] and any(e["name"] == "TS_NATS_PW_%s" % u.upper().replace("-", "_") and e["valueFrom"]["secretKeyRef"] == {"name": "tessera-nats-users", "key": u} for e in pod("StatefulSet","tessera-nats")["containers"][0]["env"]) for u in nats_users())' 'nats-server reads each password from the Secret'
    check 'all(env(k, n)["TESSERA_NATS_USER"] == u and env(k, n)["TESSERA_NATS_PASSWORD_FILE"] == "/etc/tessera/secrets/nats-user/password" and [v["secret"]["items"] for v in pod(k, n)["volumes"] if v["name"] == "nats-user"] == [[{"key": u, "path": "password"}]] for k, n, u in [("StatefulSet","tessera-worker","worker"),("Deployment","tessera-orch","orch")])' 'each service connects as its own NATS user, its own password alone mounted'
    # a gateway pod is gateway <ordinal + 1> and user gateway-<id>; its init
    # container copies that user's password alone into the gateway's volume
    check '"TESSERA_GATEWAY_ID=$id TESSERA_NATS_USER=gateway-$id" in pod("StatefulSet","tessera-gateway")["containers"][0]["command"][2] and "id=$(( ${POD_NAME##*-} + 1 ))" in pod("StatefulSet","tessera-gateway")["containers"][0]["command"][2] and env("StatefulSet","tessera-gateway")["TESSERA_NATS_PASSWORD_FILE"] == "/etc/tessera/secrets/nats-user/password"' 'gateway id = ordinal + 1, NATS user gateway-<id>'
    check '[m["name"] for m in pod("StatefulSet","tessera-gateway")["containers"][0]["volumeMounts"] if m["name"].startswith("nats")] == ["nats-user"] and [v for v in pod("StatefulSet","tessera-gateway")["volumes"] if v["name"] == "nats-user"][0]["emptyDir"]["medium"] == "Memory"' 'the gateway container sees only its own password (an in-memory volume)'
    check '[v["secret"]["items"] for v in pod("StatefulSet","tessera-gateway")["volumes"] if v["name"] == "nats-gateways"] == [[{"key": "gateway-%d" % i, "path": "gateway-%d" % i} for i in range(1, ngateways() + 1)]] and "gateway-$id" in pod("StatefulSet","tessera-gateway")["initContainers"][0]["command"][2]' 'the init container picks gateway-<id> of gateway-1..N'
}

case $case_ in
default)
    render
    common_checks
    has StatefulSet/tessera-nats
    has StatefulSet/tessera-redis
    has PodDisruptionBudget/tessera-orch
    hasnt HorizontalPodAutoscaler/tessera-gateway
    hasnt ServiceMonitor/tessera
    check 'config()["nats"]["url"] == "nats://tessera-nats:4222" and config()["redis"]["url"] == "redis://tessera-redis:6379"' 'built-in NATS and Redis URLs'
    nats_stop_checks
    check '"--appendonly" in pod("StatefulSet","tessera-redis")["containers"][0]["command"] and obj("StatefulSet","tessera-redis")["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"' 'Redis with AOF on a PVC'
    check '"jetstream" in obj("ConfigMap","tessera-nats-config")["data"]["nats.conf"] and "cluster" not in obj("ConfigMap","tessera-nats-config")["data"]["nats.conf"] and obj("StatefulSet","tessera-nats")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"' 'single JetStream server on a PVC'
    nats_users_checks
    ;;
external)
    render -f "$chart/ci/external-values.yaml"
    common_checks
    hasnt StatefulSet/tessera-nats
    hasnt StatefulSet/tessera-redis
    hasnt Secret/tessera-redis-auth
    hasnt Secret/tessera-nats-users
    check 'config()["nats"]["url"] == "nats://nats.messaging.svc.cluster.local:4222"' 'external NATS URL'
    check 'config()["redis"]["url"] == "redis://redis-master.data.svc.cluster.local:6379/2" and env("StatefulSet","tessera-worker")["TESSERA_REDIS_USER"] == "tessera" and env("StatefulSet","tessera-worker")["TESSERA_REDIS_PASSWORD_FILE"] == "/etc/tessera/secrets/redis/password"' 'Redis user, password from a file'
    check 'any(v.get("secret", {}).get("secretName") == "tessera-redis" and v["secret"]["items"] == [{"key": "password", "path": "password"}] for v in pod("Deployment","tessera-orch")["volumes"])' 'Redis password mounted from the existing Secret'
    check 'env("StatefulSet","tessera-gateway")["TESSERA_NATS_CREDS"] == "/etc/tessera/secrets/nats/tessera.creds" and any(v.get("secret", {}).get("secretName") == "tessera-nats" for v in pod("StatefulSet","tessera-gateway")["volumes"])' 'NATS credentials file from the existing Secret'
    ;;
nats-cluster)
    render -f "$chart/ci/nats-cluster-values.yaml"
    common_checks
    has PodDisruptionBudget/tessera-nats
    check 'obj("StatefulSet","tessera-nats")["spec"]["replicas"] == 3' '3 NATS servers'
    check 'obj("ConfigMap","tessera-nats-config")["data"]["nats.conf"].count("nats://tessera-nats-") == 3' 'routes to all 3 servers'
    check 'obj("StatefulSet","tessera-nats")["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"' 'storage class'
    check 'config()["stream"]["replicas"] == 3 and len(config()["world"]["workers"]) == 4' 'streams replicated 3 times, 4 workers'
    nats_users_checks
    ;;
hpa-servicemonitor)
    render -f "$chart/ci/hpa-servicemonitor-values.yaml"
    common_checks
    has HorizontalPodAutoscaler/tessera-gateway
    has ServiceMonitor/tessera
    has Secret/tessera-redis-auth
    check 'obj("HorizontalPodAutoscaler","tessera-gateway")["apiVersion"] == "autoscaling/v2" and "replicas" not in obj("StatefulSet","tessera-gateway")["spec"] and obj("HorizontalPodAutoscaler","tessera-gateway")["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "tessera-gateway"}' 'HPA autoscaling/v2 owns the gateway StatefulSet replica count'
    check 'obj("PodDisruptionBudget","tessera-gateway")["spec"]["selector"]["matchLabels"] == obj("StatefulSet","tessera-gateway")["spec"]["selector"]["matchLabels"]' 'the gateway PDB selects the gateway pods'
    nats_users_checks
    check 'obj("Service","tessera-gateway")["spec"]["type"] == "LoadBalancer"' 'LoadBalancer Service'
    check 'obj("ServiceMonitor","tessera")["spec"]["endpoints"][0]["path"] == "/metrics" and obj("ServiceMonitor","tessera")["metadata"]["labels"]["release"] == "prometheus"' 'ServiceMonitor scrapes /metrics'
    check '"TESSERA_REDIS_PASSWORD_FILE" in env("StatefulSet","tessera-worker") and "TESSERA_REDIS_USER" not in env("StatefulSet","tessera-worker") and "--requirepass" in pod("StatefulSet","tessera-redis")["containers"][0]["command"]' 'built-in Redis with a password'
    if ls "$chart"/dashboards/*.json >/dev/null 2>&1; then
        has ConfigMap/tessera-dashboards
    else
        echo "note: charts/tessera/dashboards/ has no dashboard yet: no dashboard ConfigMap"
    fi
    ;;
kube-local)
    render -f "$here/values-kube-local.yaml"
    common_checks hostnet
    check 'all("/readyz" in " ".join(pod(k, n)["containers"][0]["readinessProbe"]["exec"]["command"]) for k, n in [("StatefulSet","tessera-gateway"),("StatefulSet","tessera-worker"),("Deployment","tessera-orch")])' 'exec probes on /readyz'
    check 'config()["nats"]["url"] == "nats://127.0.0.1:14222" and config()["redis"]["url"] == "redis://127.0.0.1:16379"' 'Services reached at 127.0.0.1'
    check 'all(pod(k, n).get("hostNetwork") for k, n in [("StatefulSet","tessera-gateway"),("StatefulSet","tessera-worker"),("Deployment","tessera-orch"),("StatefulSet","tessera-nats"),("StatefulSet","tessera-redis")])' 'hostNetwork everywhere'
    check '"exec" in pod("StatefulSet","tessera-worker")["containers"][0]["readinessProbe"]' 'per-pod ports probed by exec'
    nats_stop_checks
    ;;
bad-values)
    if render -f "$chart/ci/bad-values.yaml" 2>"$out/bad"; then
        fail "the schema accepted ci/bad-values.yaml"
    fi
    cat "$out/bad" "$out/err" 2>/dev/null | grep -i -E 'nats.replicas|replicas.*must be one of' >/dev/null ||
        { cat "$out/bad" "$out/err" >&2; fail "rejected, but not for nats.replicas"; }
    cat "$out/bad" "$out/err" 2>/dev/null | grep -i 'gateway.service.type' >/dev/null ||
        { cat "$out/bad" "$out/err" >&2; fail "rejected, but not for gateway.service.type"; }
    echo "rejected as it must be:"; grep -i -E 'replicas|service.type' "$out/err" | head -4
    ;;
*) echo "unknown case $case_" >&2; exit 2 ;;
esac
[[ $case_ == bad-values ]] || run_checks
echo "ok [$case_]"
