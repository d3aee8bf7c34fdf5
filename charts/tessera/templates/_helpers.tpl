{{/* Names ------------------------------------------------------------------ */}}
{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide prefix. Kept short: worker ids are <fullname>-worker-<n> and
     must stay within 63 characters. */}}
{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tessera.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tessera.labels" -}}
helm.sh/chart: {{ include "tessera.chart" . }}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "worker") */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tessera.componentLabels" -}}
{{ include "tessera.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tessera.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}

{{/* Service names */}}
{{- define "tessera.gateway" -}}{{ include "tessera.fullname" . }}-gateway{{- end -}}
{{- define "tessera.worker" -}}{{ include "tessera.fullname" . }}-worker{{- end -}}
{{- define "tessera.orch" -}}{{ include "tessera.fullname" . }}-orch{{- end -}}
{{- define "tessera.nats" -}}{{ include "tessera.fullname" . }}-nats{{- end -}}
{{- define "tessera.redis" -}}{{ include "tessera.fullname" . }}-redis{{- end -}}

{{/* The host other pods reach a Service of this release at: its name, or
     serviceHost on a node without cluster DNS. (dict "ctx" $ "svc" "name") */}}
{{- define "tessera.svcHost" -}}
{{- default .svc .ctx.Values.serviceHost -}}
{{- end -}}

{{/* Bus and registry addresses ------------------------------------------- */}}
{{- define "tessera.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{ ternary "tls" "nats" (.Values.nats.tls.enabled | default false) }}://{{ include "tessera.svcHost" (dict "ctx" . "svc" (include "tessera.nats" .)) }}:{{ .Values.nats.port }}
{{- else -}}
{{- required "nats.url is required when nats.enabled is false" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* redis://host:port[/db] (rediss:// with redis.tls) without credentials */}}
{{- define "tessera.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{ ternary "rediss" "redis" (.Values.redis.tls.enabled | default false) }}://{{ include "tessera.svcHost" (dict "ctx" . "svc" (include "tessera.redis" .)) }}:{{ .Values.redis.port }}
{{- else -}}
{{- $url := required "redis.url is required when redis.enabled is false" .Values.redis.url -}}
{{- if and .Values.redis.tls.enabled (not (hasPrefix "rediss://" $url)) -}}
{{- fail "redis.tls.enabled needs a rediss:// redis.url" -}}
{{- end -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* TLS to NATS and Redis (nats.tls, redis.tls) ----------------------------
     (dict "ctx" $ "t" .Values.nats.tls "builtin" .Values.nats.enabled "what" "nats"):
     the Secret holding the CA the services verify the server with: tls.caSecret
     (key tls.caKey), else ca.crt of tls.secret (the built-in server's own
     kubernetes.io/tls Secret). Services get ca.crt alone, never the server's key. */}}
{{- define "tessera.tlsCaSecret" -}}
{{- $t := .t -}}
{{- if $t.caSecret -}}{{ $t.caSecret }}
{{- else if $t.secret -}}{{ $t.secret }}
{{- else if .builtin -}}{{ fail (printf "%s.tls.enabled needs %s.tls.secret (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt)" .what .what) }}
{{- else -}}{{ fail (printf "%s.tls.enabled with an external server needs %s.tls.caSecret (the CA that signed its certificate)" .what .what) }}
{{- end -}}
{{- end -}}

{{- define "tessera.tlsCaKey" -}}
{{- if .t.caSecret -}}{{ default "ca.crt" .t.caKey }}{{- else -}}ca.crt{{- end -}}
{{- end -}}

{{/* the built-in server's own certificate: required with tls on */}}
{{- define "tessera.tlsServerSecret" -}}
{{- required (printf "%s.tls.enabled needs %s.tls.secret (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt)" .what .what) .t.secret -}}
{{- end -}}

{{- define "tessera.tlsClientSecret" -}}
{{- required (printf "%s.tls.clientCerts.enabled needs %s.tls.clientCerts.secret (a kubernetes.io/tls Secret with the services' client certificate)" .what .what) .t.clientCerts.secret -}}
{{- end -}}

{{- define "tessera.natsMtls" -}}
{{- if and .Values.nats.tls.enabled .Values.nats.tls.clientCerts.enabled -}}true{{- end -}}
{{- end -}}

{{- define "tessera.redisMtls" -}}
{{- if and .Values.redis.tls.enabled .Values.redis.tls.clientCerts.enabled -}}true{{- end -}}
{{- end -}}

{{/* A service's TLS environment: the CA (and client certificate) files of
     tessera.tlsVolumes, for nats.tls_* and redis.tls_*. */}}
{{- define "tessera.tlsEnv" -}}
{{- if .Values.nats.tls.enabled }}
- name: TESSERA_NATS_TLS_CA
  value: /etc/tessera/tls/nats-ca/ca.crt
{{- if include "tessera.natsMtls" . }}
- name: TESSERA_NATS_TLS_CERT
  value: /etc/tessera/tls/nats-client/tls.crt
- name: TESSERA_NATS_TLS_KEY
  value: /etc/tessera/tls/nats-client/tls.key
{{- end }}
{{- end }}
{{- if .Values.redis.tls.enabled }}
- name: TESSERA_REDIS_TLS_CA
  value: /etc/tessera/tls/redis-ca/ca.crt
{{- if include "tessera.redisMtls" . }}
- name: TESSERA_REDIS_TLS_CERT
  value: /etc/tessera/tls/redis-client/tls.crt
- name: TESSERA_REDIS_TLS_KEY
  value: /etc/tessera/tls/redis-client/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "tessera.tlsVolumes" -}}
{{- range $what := list "nats" "redis" }}
{{- $t := (index $.Values $what).tls }}
{{- $a := dict "ctx" $ "t" $t "builtin" (index $.Values $what).enabled "what" $what }}
{{- if $t.enabled }}
- name: tls-{{ $what }}-ca
  secret:
    secretName: {{ include "tessera.tlsCaSecret" $a }}
    defaultMode: 0444
    items: [{key: {{ include "tessera.tlsCaKey" $a }}, path: ca.crt}]
{{- if $t.clientCerts.enabled }}
- name: tls-{{ $what }}-client
  secret:
    secretName: {{ include "tessera.tlsClientSecret" $a }}
    defaultMode: 0440
    items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "tessera.tlsVolumeMounts" -}}
{{- range $what := list "nats" "redis" }}
{{- $t := (index $.Values $what).tls }}
{{- if $t.enabled }}
- {name: tls-{{ $what }}-ca, mountPath: /etc/tessera/tls/{{ $what }}-ca, readOnly: true}
{{- if $t.clientCerts.enabled }}
- {name: tls-{{ $what }}-client, mountPath: /etc/tessera/tls/{{ $what }}-client, readOnly: true}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "tessera.redisSecretName" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- include "tessera.redis" . -}}-auth
{{- end -}}
{{- end -}}

{{- define "tessera.redisAuth" -}}
{{- if or .Values.redis.auth.existingSecret .Values.redis.auth.password -}}true{{- end -}}
{{- end -}}

{{/* credentials for an external NATS (nats.auth); the built-in NATS with
     its own users (nats.users) ignores them */}}
{{- define "tessera.natsAuth" -}}
{{- if and .Values.nats.auth.existingSecret (not (include "tessera.natsUsers" .)) -}}true{{- end -}}
{{- end -}}

{{/* The built-in NATS with per-service users (nats.users): each workload
     connects as its own user, its password alone mounted from the users'
     Secret. (dict "ctx" $ "user" "gateway") for the env and the volume. */}}
{{- define "tessera.natsUsers" -}}
{{- if and .Values.nats.enabled .Values.nats.users.enabled -}}true{{- end -}}
{{- end -}}

{{/* How many gateway ids (and NATS users gateway-1..N) there are: every
     gateway pod takes its StatefulSet ordinal + 1, up to the HPA's
     maxReplicas when autoscaled, else replicas. */}}
{{- define "tessera.gatewayIds" -}}
{{- if .Values.gateway.hpa.enabled -}}{{ int .Values.gateway.hpa.maxReplicas }}{{- else -}}{{ int .Values.gateway.replicas }}{{- end -}}
{{- end -}}

{{/* The built-in NATS's user names: the services', gateway-1..N, the tools'. */}}
{{- define "tessera.natsUserNames" -}}
{{- $users := list "orch" "worker" -}}
{{- range $i := until (int (include "tessera.gatewayIds" .)) }}{{ $users = append $users (printf "gateway-%d" (add1 $i)) }}{{ end -}}
{{- $users = concat $users (list "sim" "ctl" "inspector" "admin") -}}
{{- join " " $users -}}
{{- end -}}

{{- define "tessera.natsUsersSecret" -}}
{{- default (printf "%s-users" (include "tessera.nats" .)) .Values.nats.users.existingSecret -}}
{{- end -}}

{{- define "tessera.natsUserEnv" -}}
{{- if include "tessera.natsUsers" .ctx }}
- name: TESSERA_NATS_USER
  value: {{ .user | quote }}
- name: TESSERA_NATS_PASSWORD_FILE
  value: /etc/tessera/secrets/nats-user/password
{{- end }}
{{- end -}}

{{- define "tessera.natsUserVolume" -}}
{{- if include "tessera.natsUsers" .ctx }}
- name: nats-user
  secret:
    secretName: {{ include "tessera.natsUsersSecret" .ctx }}
    defaultMode: 0440
    items: [{key: {{ .user }}, path: password}]
{{- end }}
{{- end -}}

{{- define "tessera.natsUserMount" -}}
{{- if include "tessera.natsUsers" . }}
- {name: nats-user, mountPath: /etc/tessera/secrets/nats-user, readOnly: true}
{{- end }}
{{- end -}}

{{/* Environment shared by every tessera container: credentials as files
     (mounted from Secrets by tessera.secretMounts), and the extra env. */}}
{{- define "tessera.commonEnv" -}}
{{- if include "tessera.redisAuth" . }}
- name: TESSERA_REDIS_PASSWORD_FILE
  value: /etc/tessera/secrets/redis/password
{{- with .Values.redis.auth.username }}
- name: TESSERA_REDIS_USER
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if include "tessera.natsAuth" . }}
{{- if .Values.nats.auth.user }}
- name: TESSERA_NATS_USER
  value: {{ .Values.nats.auth.user | quote }}
- name: TESSERA_NATS_PASSWORD_FILE
  value: /etc/tessera/secrets/nats/{{ .Values.nats.auth.secretKey }}
{{- else }}
- name: TESSERA_NATS_CREDS
  value: /etc/tessera/secrets/nats/{{ .Values.nats.auth.secretKey }}
{{- end }}
{{- end }}
{{- include "tessera.tlsEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes and mounts every tessera container has: the config, /tmp, the
     credentials. */}}
{{- define "tessera.volumes" -}}
- name: config
  configMap:
    name: {{ include "tessera.fullname" . }}-config
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- if include "tessera.redisAuth" . }}
- name: redis-auth
  secret:
    secretName: {{ include "tessera.redisSecretName" . }}
    defaultMode: 0440
    items: [{key: {{ .Values.redis.auth.secretKey }}, path: password}]
{{- end }}
{{- if include "tessera.natsAuth" . }}
- name: nats-auth
  secret:
    secretName: {{ .Values.nats.auth.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- include "tessera.tlsVolumes" . }}
{{- end -}}

{{- define "tessera.volumeMounts" -}}
- {name: config, mountPath: /etc/tessera, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- if include "tessera.redisAuth" . }}
- {name: redis-auth, mountPath: /etc/tessera/secrets/redis, readOnly: true}
{{- end }}
{{- if include "tessera.natsAuth" . }}
- {name: nats-auth, mountPath: /etc/tessera/secrets/nats, readOnly: true}
{{- end }}
{{- include "tessera.tlsVolumeMounts" . }}
{{- end -}}

{{/* The tessera YAML config (mounted at /etc/tessera/tessera.yaml). Only keys
     every service knows; per-pod values (worker id, HTTP listen address) are
     set through TESSERA_* environment variables. */}}
{{- define "tessera.config" -}}
{{- $workers := list -}}
{{- range $i := until (int .Values.worker.replicas) -}}
{{- $workers = append $workers (printf "%s-%d" (include "tessera.worker" $) $i) -}}
{{- end -}}
{{- $cfg := dict
  "log" (dict "level" .Values.log.level "format" .Values.log.format)
  "nats" (dict "url" (include "tessera.natsUrl" .))
  "redis" (dict "url" (include "tessera.redisUrl" .))
  "world" (dict "id" .Values.world.id "cell_size" .Values.world.cellSize "x0" .Values.world.x0 "y0" .Values.world.y0 "width" .Values.world.width "height" .Values.world.height "workers" $workers)
  "stream" (dict "storage" .Values.stream.storage "replicas" .Values.stream.replicas "max_age_s" .Values.stream.maxAgeSeconds "max_bytes" (int64 .Values.stream.maxBytes))
  "gateway" (dict "listen" (printf "%s:%d" .Values.listenAddress (int .Values.gateway.port)) "max_clients" .Values.gateway.maxClients "rate_limit" .Values.gateway.rateLimit "aoi_radius" .Values.gateway.aoiRadius)
  "aoi" (dict "radius" (float64 .Values.aoi.radius) "hysteresis" (float64 .Values.aoi.hysteresis))
  "worker" (dict "tick_hz" .Values.worker.tickHz "capacity" .Values.worker.capacity "checkpoint_ms" .Values.worker.checkpointMs)
  "orch" (dict "hb_ttl_ms" .Values.orch.hbTtlMs "lock_ttl_ms" .Values.orch.lockTtlMs "rebalance" (ternary 1 0 .Values.orch.rebalance) "max_handovers" .Values.orch.maxHandovers)
-}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy .Values.config)) -}}
{{- end -}}

{{- define "tessera.configChecksum" -}}
{{- include "tessera.config" . | sha256sum -}}
{{- end -}}

{{/* Pod-level settings shared by every workload: (dict "ctx" $ "w" .Values.worker) */}}
{{- define "tessera.podCommon" -}}
{{- $ := .ctx -}}
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
automountServiceAccountToken: false
{{- if $.Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with $.Values.podSecurityContext }}
securityContext:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .w.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .w.tolerations }}
tolerations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .w.affinity }}
affinity:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .w.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* A probe on /healthz or /readyz. In a pod network an httpGet. On the
     node's network an exec probe speaking HTTP to 127.0.0.1 over bash's
     /dev/tcp (the image carries no HTTP client, and a node without an
     address of its own cannot be probed from outside); the port is fixed, or
     read from the file the entrypoint wrote it to (portFile).
     (dict "ctx" $ "path" "/readyz" "port" 9400 "portFile" "" "p" .Values.probes.readiness) */}}
{{- define "tessera.probe" -}}
{{- if .ctx.Values.hostNetwork }}
exec:
  command:
    - bash
    - -c
    - >-
      {{ if .portFile }}p=$(cat {{ .portFile }}){{ else }}p={{ .port }}{{ end }} && exec 3<>/dev/tcp/127.0.0.1/$p &&
      printf 'GET {{ .path }} HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 &&
      read -r -t {{ .p.timeoutSeconds }} _ code _ <&3 && [ "$code" = 200 ]
{{- else }}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- end }}
initialDelaySeconds: {{ .p.initialDelaySeconds }}
periodSeconds: {{ .p.periodSeconds }}
timeoutSeconds: {{ .p.timeoutSeconds }}
failureThreshold: {{ .p.failureThreshold }}
{{- end -}}

{{/* policy/v1 from Kubernetes 1.21, autoscaling/v2 from 1.23 */}}
{{- define "tessera.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{- define "tessera.hpaApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "autoscaling/v2/HorizontalPodAutoscaler") (semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version) -}}
autoscaling/v2
{{- else -}}
autoscaling/v2beta2
{{- end -}}
{{- end -}}

{{/* The built-in NATS's authorization block: the users and permissions of
     scripts/gen-secrets.sh (the shared worker user: worker ids are pod
     names; gateway-<id> for each gateway id, tessera.gatewayIds), each
     password read from the environment ($TS_NATS_PW_<USER>, '-' as '_',
     from the users' Secret). tests/k8s/chart-test.sh checks it grants what
     gen-secrets.sh grants. */}}
{{- define "tessera.natsAuthorization" -}}
{{- $destroy := `"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>"` -}}
{{- $jsRead := `"$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.STREAM.MSG.GET.>", "$JS.API.DIRECT.GET.>", "$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.INFO.>", "$JS.API.CONSUMER.MSG.NEXT.>", "$JS.FC.>"` -}}
{{- $users := list
  (list "orch" `"cell.*.*.*.*.*.handover", "tessera.registry.*", "_INBOX.>", "$JS.API.>", "$JS.FC.>"` `"tessera.worker.*.hb", "tessera.ctl.>", "tessera.gw.>", "_INBOX.orch.>", "_INBOX.tsorch.>"` $destroy)
  (list "worker" `"cell.>", "tessera.worker.*.hb", "tessera.worker.*.marks.>", "tessera.ctl.*.drain", "tessera.player.*.found.>", "_INBOX.>", "$JS.API.>", "$JS.FC.>"` `"cell.*.*.*.*.*.handover", "cell.*.*.*.*.*.ghost", "tessera.registry.*", "tessera.gw.>", "tessera.player.*.claim", "_INBOX.worker.>"` $destroy)
-}}
{{- /* a gateway publishes input only under its own origin token */ -}}
{{- range $i := until (int (include "tessera.gatewayIds" .)) }}
{{- $id := add1 $i }}
{{- $users = append $users (list (printf "gateway-%d" $id) (printf `"cell.*.*.*.*.*.input.g%d", "tessera.gw.%d.>", "tessera.player.*.claim", "tessera.player.*.found.>"` $id $id) (printf `"cell.*.*.*.*.*.state", "tessera.registry.*", "tessera.worker.*.hb", "tessera.player.*.claim", "tessera.player.*.found.g%d.*", "_INBOX.gateway-%d.>"` $id $id) "") }}
{{- end }}
{{- $users = concat $users (list
  (list "sim" `"cell.*.*.*.*.*.input.s"` `"cell.*.*.*.*.*.state", "tessera.registry.*", "_INBOX.sim.>"` "")
  (list "ctl" `">"` `">"` "")
  (list "inspector" $jsRead `">"` `"cell.>", "tessera.>", "_INBOX.>"`)
  (list "admin" `">"` `">"` "")
) -}}
authorization {
  timeout: 2
  users: [
    {{- range $u := $users }}
    {
      user: "{{ index $u 0 }}", password: $TS_NATS_PW_{{ upper (index $u 0) | replace "-" "_" }}
      permissions: {
        publish: { allow: [{{ index $u 1 }}]{{ if index $u 3 }}, deny: [{{ index $u 3 }}]{{ end }} }
        subscribe: { allow: [{{ index $u 2 }}] }
      }
    }
    {{- end }}
  ]
}
{{- end -}}
