#!/usr/bin/env bash
# Writes the credentials of a secured Tessera stack into DIR (created mode
# 700; every secret file mode 600):
#
#   nats.conf          nats-server authorization block: one user per service
#                      with subject permissions (and, with --tls, a tls block);
#                      start the server with `nats-server -c DIR/nats.conf ...`
#   redis-users.acl    Redis ACL file: one user per service with only the
#                      commands and key patterns it needs, the default user
#                      off; start with `redis-server --aclfile DIR/redis-users.acl`
#   <user>.nats.pass   NATS password of each user (first line)
#   <user>.redis.pass  Redis password of each user (first line)
#   resume.secret      gateway.resume_secret (first line): the HMAC key of
#                      players' resume tokens, the same for every gateway and
#                      every worker (the workers check the token an Attach
#                      from another gateway carries); pass it in
#                      TESSERA_GATEWAY_RESUME_SECRET
#   ca.pem, server-*.pem, client-*.pem   with --tls: a throw-away CA, the
#                      NATS server certificate (127.0.0.1 and localhost) and
#                      a client certificate
#
# Users and what they may do (a forged publish from anyone else is refused
# by the server). Each service user subscribes only to its own replies,
# _INBOX.<user>.> (Tessera's bus sets that inbox prefix for a named user;
# the orchestrator's handover replies come to _INBOX.tsorch.>):
#   orch       serves tessera.ctl.>, publishes registry broadcasts and
#              handover requests, manages the JetStream streams
#   worker     publishes cell state, ghosts, checkpoints, handover messages, forwarded
#              inputs, transfers (input subjects ending in .w) and heartbeats;
#              consumes the input stream
#   worker-<id>  the same for one worker id (--workers='w1 w2', the default):
#              only that worker's heartbeat and liveness keys
#   gateway-<id>  one per gateway id (gateway.id; --gateways='1 2', default
#              1 to 16): publishes player input only under its own origin
#              token (cell.*.*.*.*.*.input.g<id>), its own liveness
#              (tessera.gw.<id>.>) and player logins (claims, and answers to
#              any gateway's claim); subscribes to state, the registry, worker
#              heartbeats (the browser map shows worker load), claims and the
#              answers to its own claims (tessera.player.*.found.g<id>.*).
#              There is no shared gateway user: a gateway's credentials act
#              only for that gateway's players (the worker checks the origin
#              token against the entity, docs/operations.md)
#   sim        publishes input under its own origin (cell.*.*.*.*.*.input.s),
#              subscribes to state and the registry
#   ctl        tessera-ctl: NATS admin (everything); Redis read-only
#   inspector  NATS read-only: subscribes to anything, reads the streams
#              (JetStream info, message get, ephemeral consumers), publishes
#              nothing else; no Redis access
#   admin      everything on both (tests and operators; no service uses it)
#
# Usage: scripts/gen-secrets.sh [--tls] [--workers='w1 w2'] [--gateways='1 2'] DIR
# Needs: openssl (passwords and, with --tls, certificates).
# shellcheck disable=SC2016 # NATS subjects hold a literal $ (JetStream API)
set -euo pipefail

tls=0
worker_ids="w1 w2"
gateway_ids=$(seq -s ' ' 1 16)
while [[ "${1:-}" == --* ]]; do
    case $1 in
    --tls) tls=1 ;;
    --workers=*) worker_ids=${1#--workers=} ;;
    --gateways=*) gateway_ids=${1#--gateways=} ;;
    *)
        echo "gen-secrets: unknown option $1" >&2
        exit 2
        ;;
    esac
    shift
done
[[ $# -eq 1 ]] || {
    echo "usage: $0 [--tls] [--workers='w1 w2'] [--gateways='1 2'] DIR" >&2
    exit 2
}
read -ra workers <<<"$worker_ids"
for id in "${workers[@]}"; do
    [[ "$id" =~ ^[A-Za-z0-9_-]{1,63}$ ]] || {
        echo "gen-secrets: bad worker id '$id'" >&2
        exit 2
    }
done
read -ra gateways <<<"$gateway_ids"
for id in "${gateways[@]}"; do
    # gateway.id: the top 16 bits of its players' entity ids (0 is "no gateway")
    if ! [[ "$id" =~ ^[1-9][0-9]{0,4}$ ]] || ((id > 32766)); then
        echo "gen-secrets: bad gateway id '$id' (1..32766)" >&2
        exit 2
    fi
done
dir=$1
command -v openssl >/dev/null 2>&1 || {
    echo "gen-secrets: openssl not found" >&2
    exit 1
}
mkdir -p "$dir"
chmod 700 "$dir"
dir=$(cd "$dir" && pwd)
umask 077

users=(orch worker sim ctl inspector admin)
for id in "${workers[@]}"; do
    users+=("worker-$id")
done
for id in "${gateways[@]}"; do
    users+=("gateway-$id")
done
declare -A nats_pw redis_pw
# every password from one openssl call (48 hex digits each): a process per
# password made a secured start seconds slower with many gateways
mapfile -t pws < <(openssl rand -hex $((24 * 2 * ${#users[@]})) | fold -w 48)
((${#pws[@]} == 2 * ${#users[@]})) || {
    echo "gen-secrets: openssl rand gave ${#pws[@]} passwords, not $((2 * ${#users[@]}))" >&2
    exit 1
}
i=0
for u in "${users[@]}"; do
    nats_pw[$u]=${pws[i]}
    redis_pw[$u]=${pws[i + 1]}
    i=$((i + 2))
    printf '%s\n' "${nats_pw[$u]}" >"$dir/$u.nats.pass"
    [[ $u == inspector ]] || printf '%s\n' "${redis_pw[$u]}" >"$dir/$u.redis.pass"
done
openssl rand -hex 32 >"$dir/resume.secret"

# ---- NATS ------------------------------------------------------------------

# JetStream API subjects a reader needs (nothing that changes a stream).
js_read='"$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
                "$JS.API.STREAM.MSG.GET.>", "$JS.API.DIRECT.GET.>", "$JS.API.CONSUMER.CREATE.>",
                "$JS.API.CONSUMER.INFO.>", "$JS.API.CONSUMER.MSG.NEXT.>", "$JS.FC.>"'

user_block() { # user publish-allow subscribe-allow [publish-deny]
    local deny=""
    [[ -n "${4:-}" ]] && deny=", deny: [$4]"
    cat <<EOF
    {
      user: "$1", password: "${nats_pw[$1]}"
      permissions: {
        publish: { allow: [$2]$deny }
        subscribe: { allow: [$3] }
      }
    }
EOF
}

{
    echo "# Generated by scripts/gen-secrets.sh: Tessera's NATS users and permissions."
    echo "authorization {"
    echo "  timeout: 2"
    echo "  users: ["
    # no service ever deletes or purges a stream or a stored message
    js_destroy='"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>"'
    user_block orch \
        '"cell.*.*.*.*.*.handover", "tessera.registry.*", "_INBOX.>", "$JS.API.>", "$JS.FC.>"' \
        '"tessera.worker.*.hb", "tessera.ctl.>", "tessera.gw.>", "_INBOX.orch.>", "_INBOX.tsorch.>"' "$js_destroy"
    user_block worker \
        '"cell.>", "tessera.worker.*.hb", "tessera.worker.*.marks.>", "tessera.ctl.*.drain", "tessera.player.*.found.>", "_INBOX.>", "$JS.API.>", "$JS.FC.>"' \
        '"cell.*.*.*.*.*.handover", "cell.*.*.*.*.*.ghost", "tessera.registry.*", "tessera.gw.>", "tessera.player.*.claim", "_INBOX.worker.>"' "$js_destroy"
    # one user per known worker id: only its own heartbeat and replies
    for id in "${workers[@]}"; do
        user_block "worker-$id" \
            '"cell.>", "tessera.worker.'"$id"'.hb", "tessera.worker.'"$id"'.marks.>", "tessera.ctl.*.drain", "tessera.player.*.found.>", "_INBOX.>", "$JS.API.>", "$JS.FC.>"' \
            '"cell.*.*.*.*.*.handover", "cell.*.*.*.*.*.ghost", "tessera.registry.*", "tessera.gw.>", "tessera.player.*.claim", "_INBOX.worker-'"$id"'.>"' \
            "$js_destroy"
    done
    # one user per gateway id: its own input origin, liveness and login answers
    for id in "${gateways[@]}"; do
        user_block "gateway-$id" \
            '"cell.*.*.*.*.*.input.g'"$id"'", "tessera.gw.'"$id"'.>", "tessera.player.*.claim", "tessera.player.*.found.>"' \
            '"cell.*.*.*.*.*.state", "tessera.registry.*", "tessera.worker.*.hb", "tessera.player.*.claim", "tessera.player.*.found.g'"$id"'.*", "_INBOX.gateway-'"$id"'.>"'
    done
    user_block sim \
        '"cell.*.*.*.*.*.input.s"' \
        '"cell.*.*.*.*.*.state", "tessera.registry.*", "_INBOX.sim.>"'
    user_block ctl '">"' '">"'
    user_block inspector "$js_read" '">"' '"cell.>", "tessera.>", "_INBOX.>"'
    user_block admin '">"' '">"'
    echo "  ]"
    echo "}"
} >"$dir/nats.conf"

# ---- Redis -----------------------------------------------------------------
# Keys: ts:{w<world>}:* (world, cells, version, draining), ts:worker:<id>[:alive],
# ts:workers, ts:lock:<name>. Commands inside the registry's Lua scripts are
# checked against the caller's ACL too, so they are listed.

conn='+ping +select +auth +hello +client|setname +script|load +evalsha +eval'
{
    echo "user default off"
    echo "user orch on >${redis_pw[orch]} resetkeys ~ts:* resetchannels -@all $conn" \
        "+get +set +del +unlink +exists +scan +hgetall +hget +hmget +hset +hsetnx +hincrby +incr +pexpire" \
        "+smembers +sadd +srem"
    echo "user worker on >${redis_pw[worker]} resetkeys ~ts:worker:* ~ts:workers %R~ts:{w*}:* resetchannels" \
        "-@all $conn +get +set +del +exists +hgetall +hset +hsetnx +smembers +sadd +srem"
    for id in "${workers[@]}"; do
        echo "user worker-$id on >${redis_pw[worker-$id]} resetkeys ~ts:worker:$id ~ts:worker:$id:* ~ts:workers" \
            "%R~ts:{w*}:* resetchannels -@all $conn +get +set +del +exists +hgetall +hset +hsetnx +smembers +sadd" \
            "+srem"
    done
    for u in "${gateways[@]/#/gateway-}" sim ctl; do
        echo "user $u on >${redis_pw[$u]} resetkeys %R~ts:* resetchannels -@all $conn" \
            "+get +exists +hgetall +smembers"
    done
    echo "user admin on >${redis_pw[admin]} ~* &* +@all"
} >"$dir/redis-users.acl"

# ---- TLS -------------------------------------------------------------------

if ((tls)); then
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Tessera test CA" \
            -keyout ca-key.pem -out ca.pem 2>/dev/null
        for who in server client; do
            openssl req -newkey rsa:2048 -nodes -subj "/CN=tessera-$who" \
                -keyout "$who-key.pem" -out "$who.csr" 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$who.ext"
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
                -extfile "$who.ext" -out "$who-cert.pem" 2>/dev/null
            rm -f "$who.csr" "$who.ext"
        done
    )
    cat >>"$dir/nats.conf" <<EOF
tls {
  cert_file: "$dir/server-cert.pem"
  key_file: "$dir/server-key.pem"
  ca_file: "$dir/ca.pem"
  timeout: 2
}
EOF
fi
