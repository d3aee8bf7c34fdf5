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
#   tls                 ci/tls-values.yaml: built-in NATS (3 nodes) and Redis over
#                       mutual TLS; also: rendering refuses TLS without its Secrets
#   tls-external        ci/tls-external-values.yaml: external NATS and Redis over
#                       TLS, their CAs alone mounted
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
def vols(kind, name): return {v["name"]: v for v in pod(kind, name).get("volumes", [])}
def mounts(kind, name, c=0): return {m["name"]: m["mountPath"] for m in pod(kind, name)["containers"][c].get("volumeMounts", [])}
def natsconf(): return obj("ConfigMap", "tessera-nats-config")["data"]["nats.conf"]
SVCS = [("StatefulSet","tessera-gateway"),("StatefulSet","tessera-worker"),("Deployment","tessera-orch")] + ([("Job","tessera-sim")] if has("Job/tessera-sim") else [])
def tls_mounted(kind, name, vol, path, secret, items):
    # volume vol is Secret secret with exactly these items (key -> path), mounted read-only at path
    v = vols(kind, name)[vol]["secret"]
    m = [x for x in pod(kind, name)["containers"][0]["volumeMounts"] if x["name"] == vol]
    return v["secretName"] == secret and {i["key"]: i["path"] for i in v["items"]} == items and len(m) == 1 and m[0]["mountPath"] == path and m[0].get("readOnly")
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
    check '(lambda g, w: len(g) == 1 and g == w and g[0]["name"] == "tessera-resume" and g[0]["key"] in obj("Secret","tessera-resume")["data"])(*[[e["valueFrom"]["secretKeyRef"] for e in pod("StatefulSet", n)["containers"][0]["env"] if e["name"] == "TESSERA_GATEWAY_RESUME_SECRET"] for n in ("tessera-gateway","tessera-worker")])' \
        'gateways and workers get the same resume secret (gateway.resume_secret) from the Secret the chart keeps'
    check 'all("TESSERA_GATEWAY_RESUME_SECRET" not in env(k, n) for k, n in SVCS if n not in ("tessera-gateway","tessera-worker"))' 'no other service gets the resume secret'
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

# With TLS off (the default, and kube-local): plain URLs, no TLS key in any
# service's environment, no tls block in nats.conf, Redis on its plain port.
tls_off_checks() {
    check 'not any(k.startswith(("TESSERA_NATS_TLS", "TESSERA_REDIS_TLS")) for s in SVCS for k in env(*s)) and not any("tls" in v for s in SVCS for v in vols(*s))' 'TLS off: no TLS env or volume in the services'
    check '"tls {" not in natsconf() and "--tls-port" not in pod("StatefulSet","tessera-redis")["containers"][0]["command"] and "--tls" not in pod("StatefulSet","tessera-redis")["containers"][0]["readinessProbe"]["exec"]["command"]' 'TLS off: no tls block in nats.conf, Redis on its plain port'
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
    tls_off_checks
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
    tls_off_checks
    ;;
tls)
    # rendering refuses TLS without the Secrets it needs, and a plain URL
    # for an external Redis over TLS
    for bad in nats.tls.secret nats.tls.clientCerts.secret redis.tls.secret redis.tls.clientCerts.secret; do
        if render -f "$chart/ci/tls-values.yaml" --set "$bad=" >"$out/bad" 2>&1; then fail "rendered with an empty $bad"; fi
        grep -q -F "$bad" "$out/bad" "$out/err" || { cat "$out/bad" >&2; fail "an empty $bad refused, but not for it"; }
    done
    if render -f "$chart/ci/tls-external-values.yaml" --set redis.url=redis://redis-master.data:6379 >"$out/bad" 2>&1; then
        fail "rendered redis.tls with a redis:// (not rediss://) url"
    fi
    grep -q 'needs a rediss:// redis.url' "$out/bad" "$out/err" || { cat "$out/bad" >&2; fail "redis:// refused, but not for redis.tls"; }
    echo "refused as they must be: empty TLS Secrets, redis.tls with a redis:// url"
    render -f "$chart/ci/tls-values.yaml"
    common_checks
    nats_users_checks
    nats_stop_checks
    has Job/tessera-sim
    check 'config()["nats"]["url"] == "tls://tessera-nats:4222" and config()["redis"]["url"] == "rediss://tessera-redis:6379"' 'tls:// and rediss:// URLs to the built-in servers'
    # NATS: clients over mutual TLS, routes over TLS, the server's Secret mounted
    check 'all(l in natsconf().split("cluster {")[0] for l in ["tls {", "cert_file: /etc/nats/tls/tls.crt", "key_file: /etc/nats/tls/tls.key", "ca_file: /etc/nats/tls/ca.crt", "verify: true"])' 'nats.conf: a client tls block with verify: true'
    check 'all(l in natsconf().split("cluster {")[1] for l in ["tls {", "cert_file: /etc/nats/tls/tls.crt", "ca_file: /etc/nats/tls/ca.crt", "advertise: $TS_ROUTE_ADVERTISE"]) and natsconf().count("nats://tessera-nats-") == 3' 'nats.conf: routes over TLS, advertised by DNS name'
    check 'tls_mounted("StatefulSet","tessera-nats","tls","/etc/nats/tls","tessera-nats-tls",{"tls.crt":"tls.crt","tls.key":"tls.key","ca.crt":"ca.crt"})' 'nats-server mounts nats.tls.secret at /etc/nats/tls'
    check 'env("StatefulSet","tessera-nats")["TS_ROUTE_ADVERTISE"] == "$(POD_NAME).tessera-nats-headless.games.svc.cluster.local:6222"' 'each NATS pod advertises its route by its DNS name'
    # Redis: TLS port alone, clients must present a certificate, probes over TLS
    check 'pod("StatefulSet","tessera-redis")["containers"][0]["command"][3:15] == ["--port","0","--tls-port","6379","--tls-cert-file","/etc/tessera/redis-server/tls.crt","--tls-key-file","/etc/tessera/redis-server/tls.key","--tls-ca-cert-file","/etc/tessera/redis-server/ca.crt","--tls-auth-clients","yes"]' 'redis-server: --port 0, --tls-port, its certificate, client certificates required'
    check 'tls_mounted("StatefulSet","tessera-redis","tls","/etc/tessera/redis-server","tessera-redis-tls",{"tls.crt":"tls.crt","tls.key":"tls.key","ca.crt":"ca.crt"}) and tls_mounted("StatefulSet","tessera-redis","tls-client","/etc/tessera/redis-server-client","tessera-client-tls",{"tls.crt":"tls.crt","tls.key":"tls.key"})' 'redis-server mounts redis.tls.secret, and the client certificate for its probes'
    check 'all(pod("StatefulSet","tessera-redis")["containers"][0][p]["exec"]["command"] == ["redis-cli","-p","6379","--tls","--cacert","/etc/tessera/redis-server/ca.crt","--cert","/etc/tessera/redis-server-client/tls.crt","--key","/etc/tessera/redis-server-client/tls.key","ping"] for p in ["startupProbe","livenessProbe","readinessProbe"])' 'the redis-cli probes speak TLS with the client certificate'
    # every service: the CAs alone (never a server key) and the client certificate
    check 'len(SVCS) == 4 and all(env(*s)["TESSERA_NATS_TLS_CA"] == "/etc/tessera/tls/nats-ca/ca.crt" and tls_mounted(*s, "tls-nats-ca", "/etc/tessera/tls/nats-ca", "tessera-nats-tls", {"ca.crt": "ca.crt"}) for s in SVCS)' 'every service (gateway, worker, orch, sim) mounts the NATS CA alone and sets nats.tls_ca'
    check 'all(env(*s)["TESSERA_NATS_TLS_CERT"] == "/etc/tessera/tls/nats-client/tls.crt" and env(*s)["TESSERA_NATS_TLS_KEY"] == "/etc/tessera/tls/nats-client/tls.key" and tls_mounted(*s, "tls-nats-client", "/etc/tessera/tls/nats-client", "tessera-client-tls", {"tls.crt": "tls.crt", "tls.key": "tls.key"}) for s in SVCS)' 'every service presents the client certificate to NATS'
    check 'all(env(*s)["TESSERA_REDIS_TLS_CA"] == "/etc/tessera/tls/redis-ca/ca.crt" and tls_mounted(*s, "tls-redis-ca", "/etc/tessera/tls/redis-ca", "tessera-redis-tls", {"ca.crt": "ca.crt"}) and env(*s)["TESSERA_REDIS_TLS_CERT"] == "/etc/tessera/tls/redis-client/tls.crt" and env(*s)["TESSERA_REDIS_TLS_KEY"] == "/etc/tessera/tls/redis-client/tls.key" and tls_mounted(*s, "tls-redis-client", "/etc/tessera/tls/redis-client", "tessera-client-tls", {"tls.crt": "tls.crt", "tls.key": "tls.key"}) for s in SVCS)' 'every service mounts the Redis CA and client certificate and sets redis.tls_*'
    check 'not any(i["key"] == "tls.key" for s in SVCS for v in vols(*s).values() if v.get("secret", {}).get("secretName") in ("tessera-nats-tls", "tessera-redis-tls") for i in v["secret"]["items"])' 'no service mounts a server key'
    check 'all(e["TESSERA_REDIS_PASSWORD_FILE"] and e["TESSERA_NATS_PASSWORD_FILE"] for e in [env(*s) for s in SVCS])' 'passwords still used over TLS'
    ;;
tls-external)
    render -f "$chart/ci/tls-external-values.yaml"
    common_checks
    hasnt StatefulSet/tessera-nats
    hasnt StatefulSet/tessera-redis
    check 'config()["nats"]["url"] == "tls://nats.messaging.svc.cluster.local:4222" and config()["redis"]["url"] == "rediss://redis-master.data.svc.cluster.local:6380/2"' 'external tls:// and rediss:// URLs'
    check 'all(env(*s)["TESSERA_NATS_TLS_CA"] == "/etc/tessera/tls/nats-ca/ca.crt" and tls_mounted(*s, "tls-nats-ca", "/etc/tessera/tls/nats-ca", "messaging-ca", {"ca.pem": "ca.crt"}) for s in SVCS)' 'the NATS CA from nats.tls.caSecret (key caKey) in every service'
    check 'all(env(*s)["TESSERA_REDIS_TLS_CA"] == "/etc/tessera/tls/redis-ca/ca.crt" and tls_mounted(*s, "tls-redis-ca", "/etc/tessera/tls/redis-ca", "data-ca", {"ca.crt": "ca.crt"}) for s in SVCS)' 'the Redis CA from redis.tls.caSecret in every service'
    check 'not any(k in env(*s) for s in SVCS for k in ["TESSERA_NATS_TLS_CERT", "TESSERA_NATS_TLS_KEY", "TESSERA_REDIS_TLS_CERT", "TESSERA_REDIS_TLS_KEY"]) and not any(n.startswith("tls-") and n.endswith("-client") for s in SVCS for n in vols(*s))' 'no client certificate without clientCerts'
    check 'env("StatefulSet","tessera-gateway")["TESSERA_NATS_CREDS"] == "/etc/tessera/secrets/nats/tessera.creds"' 'NATS credentials still mounted'
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
