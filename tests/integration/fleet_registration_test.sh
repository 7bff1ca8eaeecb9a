#!/bin/bash
# The agent's fleet registration against a real etcd, in a namespace of its own on the lab's
# bridge: the registration appears with its fields and a lease of --fleet_lease_ttl; etcd down
# for longer than the TTL changes nothing for the agent (a ping through an existing tunnel, the
# API) and, etcd back, the registration lives on under a renewed lease; kill -9 removes the key
# within TTL + 1 s, SIGTERM at once (the lease revoked); bad fleet flags stop the agent before
# anything is touched; with etcd's auth on and deploy/etcd/roles.sh's roles, an agent whose user
# may write only its own key registers, and that user is refused another node's key.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

for tool in etcd etcdctl jq; do
  command -v "$tool" >/dev/null ||
    { echo "SKIP: $tool not found (apt-get install etcd-server etcd-client jq)" >&2; exit 77; }
done

TTL=3
FLEET=f
ETCD_ADDR=198.18.0.100
ETCD=http://$ETCD_ADDR:2379

lab_init  # its EXIT trap stops the agents and etcd (in LAB_PIDS) and deletes the namespaces
lab_add_node etcd "$ETCD_ADDR"
lab_add_node n1 198.18.0.1
lab_add_node n2 198.18.0.2

# etcd in its own namespace, reached by the agents over the lab's bridge; the same data
# directory on every start. Its pid sits with the agents', so the lab's cleanup stops it too.
start_etcd() {
  # Not through lab_exec: $! must be etcd's own pid (ip netns exec execs it), not a subshell's.
  ip netns exec "$LAB-etcd" etcd --name e1 --data-dir "$RUN/etcd-data" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster e1=http://127.0.0.1:2380 >>"$RUN/etcd.log" 2>&1 &
  LAB_PIDS[etcd]=$!
  local _
  for _ in $(seq 100); do
    ectl endpoint health >/dev/null 2>&1 && return 0
    kill -0 "${LAB_PIDS[etcd]}" 2>/dev/null || break
    sleep 0.1
  done
  lab_fail "etcd did not start (see $RUN/etcd.log)"
}
# etcdctl from the etcd namespace, as $ETCDCTL_USER when set; every call bounded.
ectl() {
  lab_exec etcd env ETCDCTL_API=3 ${ETCDCTL_USER:+"ETCDCTL_USER=$ETCDCTL_USER"} \
    timeout 10 etcdctl --endpoints="$ETCD" "$@"
}
key_of() { echo "/tunnel-agent/$FLEET/nodes/$1"; }
value_of() { ectl get "$(key_of "$1")" --print-value-only; }
# The lease the key is bound to, in hex as etcdctl takes it; 0 when none. (Read from the text:
# jq's numbers are doubles, too short for a lease ID.)
lease_of() {
  local id
  id=$(ectl get "$(key_of "$1")" -w fields | awk '$1 == "\"Lease\"" { print $3 }')
  printf '%x\n' "${id:-0}"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# wait_key NODE present|absent SECONDS: polls every 0.1 s; fails the test at the deadline.
wait_key() {
  local node=$1 want=$2 limit=$3 t0 value
  t0=$(now)
  while :; do
    value=$(value_of "$node")
    if [ "$want" = present ] && [ -n "$value" ]; then return 0; fi
    if [ "$want" = absent ] && [ -z "$value" ]; then return 0; fi
    awk -v s="$(since "$t0")" -v l="$limit" 'BEGIN { exit !(s > l) }' &&
      lab_fail "$(key_of "$node") still not $want after ${limit}s"
    sleep 0.1
  done
}
fleet_flags() {
  local n=$1 i=${1#n}
  echo --fleet_etcd="$ETCD" --fleet="$FLEET" --node_name="$n" --fleet_underlay="198.18.0.$i" \
    --advertise_prefixes="10.244.$i.0/24,fd00:$i::/64" --fleet_agent_endpoint="unix:$RUN/$n.sock" \
    --fleet_lease_ttl="${TTL}s"
}

lab_log "bad fleet flags: the agent refuses to start, naming the flag"
# check_refused PATTERN FLAGS...: exit status 1 and PATTERN in the output.
check_refused() {
  local pattern=$1 rc=0 out; shift
  out=$(lab_run_agent n1 "$@" 2>&1) || rc=$?
  [ "$rc" = 1 ] || lab_fail "tunnel-agent $*: exit $rc, want 1 ($out)"
  grep -q -- "$pattern" <<<"$out" || lab_fail "tunnel-agent $*: want '$pattern' in: $out"
  lab_ok "refused: $pattern"
}
check_refused "--fleet is required" --fleet_etcd="$ETCD" --fleet_underlay=198.18.0.1
check_refused "--fleet=Prod: fleet name" --fleet_etcd="$ETCD" --fleet=Prod
check_refused "--fleet_underlay is required" --fleet_etcd="$ETCD" --fleet=f
check_refused "--fleet_underlay=198.18.0.300" --fleet_etcd="$ETCD" --fleet=f \
  --fleet_underlay=198.18.0.300
check_refused "--advertise_prefixes=10.244.1.1/24: 10.244.1.1/24 has host bits set" \
  --fleet_etcd="$ETCD" --fleet=f --fleet_underlay=198.18.0.1 --advertise_prefixes=10.244.1.1/24
check_refused "--fleet_agent_endpoint is required with --fleet_etcd: --grpc_listen=unix:" \
  --fleet_etcd="$ETCD" --fleet=f --fleet_underlay=198.18.0.1
check_refused "--fleet_lease_ttl=1s: want 2s to 1h" --fleet_etcd="$ETCD" --fleet=f \
  --fleet_underlay=198.18.0.1 --fleet_agent_endpoint=198.18.0.1:50051 --fleet_lease_ttl=1s
check_refused "--fleet_etcd=:2379" --fleet_etcd=:2379 --fleet=f
check_refused "--fleet needs --fleet_etcd" --fleet=f
[ -z "$(lab_exec n1 ip -o link show group 2054847098)" ] || lab_fail "a refused agent made devices"

lab_log "etcd, and two agents registering"
start_etcd
t0=$(now)
# shellcheck disable=SC2046  # the flags are words
lab_start_agent n1 $(fleet_flags n1)
# shellcheck disable=SC2046
lab_start_agent n2 $(fleet_flags n2)
wait_key n1 present 5
wait_key n2 present 5
lab_ok "both registered $(since "$t0")s after the first agent's start"
[ "$(ectl get --prefix /tunnel-agent/ --keys-only | sed '/^$/d' | paste -sd' ')" = \
  "$(key_of n1) $(key_of n2)" ] || lab_fail "keys: $(ectl get --prefix /tunnel-agent/ --keys-only)"
lab_ok "etcdctl get --prefix /tunnel-agent/: the two nodes' keys, nothing else"

json=$(value_of n1)
version=$("$BIN_DIR/tunnel-agent" --version | awk '{print $2}')
check() {  # check JQ_EXPR: true of n1's registration
  jq -e "$1" <<<"$json" >/dev/null || lab_fail "registration: want $1 in $json"
}
check '.node == "n1"'
check '.underlay == ["198.18.0.1"]'
check '.advertisePrefixes == ["10.244.1.0/24", "fd00:1::/64"]'
check ".agentEndpoint == \"unix:$RUN/n1.sock\""
check ".version == \"$version\""
check '.capabilities.modes | index("gre") and index("ipip") and index("ip6gre")'
check '.capabilities.features | index("multipoint") and index("fou")'
info=$(lab_ctl n1 -o json info)
check ".capabilities.maxPeersPerTunnel == $(jq .maxPeersPerTunnel <<<"$info")"
check ".capabilities.maxTunnels == $(jq .maxTunnels <<<"$info")"
check '.registeredAt | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T")'
lab_ok "n1's registration: node, underlay, prefixes, endpoint, version $version, capabilities"
lease=$(lease_of n1)
[ "$lease" != 0 ] || lab_fail "n1's key has no lease"
ttl=$(ectl lease timetolive "$lease")
grep -q "granted with TTL(${TTL}s)" <<<"$ttl" || lab_fail "n1's lease: $ttl"
lab_ok "bound to lease $lease, TTL ${TTL}s"
[ "$(lab_metric n1 tunnelagent_fleet_registered)" = 1 ] || lab_fail "tunnelagent_fleet_registered not 1"
[ "$(lab_metric n1 tunnelagent_fleet_registrations_total)" = 1 ] ||
  lab_fail "tunnelagent_fleet_registrations_total: $(lab_metric n1 tunnelagent_fleet_registrations_total)"
lab_ok "metrics: registered 1, registrations 1"

lab_log "a GRE tunnel between n1 and n2"
lab_ctl n1 create t1 mode gre local 198.18.0.1 remote 198.18.0.2 address 10.5.0.1/30 >/dev/null
lab_ctl n2 create t1 mode gre local 198.18.0.2 remote 198.18.0.1 address 10.5.0.2/30 >/dev/null
lab_ping n1 10.5.0.2 3

lab_log "etcd down for more than the TTL: the agents forward and answer as before"
errors_before=$(lab_metric n1 tunnelagent_fleet_etcd_errors_total)
lab_stop_agent etcd
t_down=$(now)
lab_ping n1 10.5.0.2
lab_ctl n1 info >/dev/null || lab_fail "n1's API does not answer while etcd is down"
lab_ok "n1's API answers while etcd is down"
sleep "$(awk -v t="$TTL" -v s="$(since "$t_down")" 'BEGIN { d = t + 1.5 - s; print (d > 0 ? d : 0) }')"
lab_ping n1 10.5.0.2
lab_ctl n1 -o json list | jq -e '.tunnels[0].status.state == "OPER_STATE_UP"' >/dev/null ||
  lab_fail "t1 not UP on n1 while etcd is down"
[ "$(lab_metric n1 tunnelagent_fleet_registered)" = 0 ] ||
  lab_fail "tunnelagent_fleet_registered not 0 with etcd down for $(since "$t_down")s"
errors=$(lab_metric n1 tunnelagent_fleet_etcd_errors_total)
awk -v a="$errors" -v b="$errors_before" 'BEGIN { exit !(a > b) }' ||
  lab_fail "tunnelagent_fleet_etcd_errors_total did not grow: $errors_before -> $errors"
grep -q "fleet: .*renewing the lease" "$RUN/n1.log" || lab_fail "n1 did not log the failure"
lab_ok "etcd down $(since "$t_down")s: t1 UP, pings, registered 0, $errors etcd errors, logged"

lab_log "etcd back (same data): the registrations live on"
start_etcd
t_up=$(now)
wait_key n1 present 10
wait_key n2 present 10
# The restored lease expires a TTL after etcd's start unless the agent renews it: past twice
# that, a key still there is one the agent renews (or wrote again).
until [ "$(lab_metric n1 tunnelagent_fleet_registered)" = 1 ]; do
  awk -v s="$(since "$t_up")" 'BEGIN { exit !(s > 10) }' && lab_fail "n1 not registered 10 s after etcd came back"
  sleep 0.1
done
lab_ok "n1 registered again $(since "$t_up")s after etcd came back"
sleep $((2 * TTL))
for n in n1 n2; do
  [ -n "$(value_of "$n")" ] || lab_fail "$n's key went $((2 * TTL))s after etcd came back"
  l=$(lease_of "$n")
  ectl lease timetolive "$l" | grep -q "remaining" || lab_fail "$n's lease $l is not alive"
done
grep -q "fleet: .*etcd answers again" "$RUN/n1.log" || lab_fail "n1 did not log etcd's return"
lab_ok "both keys there $((2 * TTL))s later, on live leases"

lab_log "kill -9: the key goes within the TTL + 1 s"
t_kill=$(now)
lab_stop_agent n1 KILL
wait_key n1 absent $((TTL + 1))
lab_ok "n1's key gone $(since "$t_kill")s after kill -9 (TTL ${TTL}s)"
[ -n "$(value_of n2)" ] || lab_fail "n2's key went with n1's"
lab_ok "n2's key stays"

lab_log "the agent started again registers again"
# shellcheck disable=SC2046
lab_start_agent n1 $(fleet_flags n1)
wait_key n1 present 5
lab_ping n1 10.5.0.2 3
lab_ok "n1 registered again after its restart"

lab_log "hot upgrade: the new agent registers the key under its own lease, which never goes"
old_lease=$(lease_of n1)
# Every change of the key from here on, to prove it is never deleted (bounded by timeout).
ip netns exec "$LAB-etcd" env ETCDCTL_API=3 timeout 60 etcdctl --endpoints="$ETCD" \
  watch "$(key_of n1)" >"$RUN/watch.txt" 2>&1 &
watcher=$!
sleep 0.5  # the watch is set up
old_pid=${LAB_PIDS[n1]}
# shellcheck disable=SC2046
_lab_spawn_agent n1 --takeover $(fleet_flags n1)
# Exited (a zombie until waited for: this shell is its parent).
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:.*[ZX]' "/proc/$1/status" 2>/dev/null; }
for _ in $(seq 200); do alive "$old_pid" || break; sleep 0.05; done
alive "$old_pid" && lab_fail "the old agent did not exit after the handover"
wait "$old_pid" 2>/dev/null || true
t_upgrade=$(now)
until [ "$(lease_of n1)" != "$old_lease" ]; do
  awk -v s="$(since "$t_upgrade")" 'BEGIN { exit !(s > 5) }' && lab_fail "the new agent did not register"
  sleep 0.1
done
new_lease=$(lease_of n1)
sleep $((TTL + 1))  # the old lease lapses meanwhile
[ "$(lease_of n1)" = "$new_lease" ] || lab_fail "n1's key: lease $(lease_of n1), want $new_lease"
ectl lease timetolive "$old_lease" | grep -q "already expired" ||
  lab_fail "the old agent's lease $old_lease still lives: $(ectl lease timetolive "$old_lease")"
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
grep -q "^PUT" "$RUN/watch.txt" || lab_fail "the watch saw no PUT: $(cat "$RUN/watch.txt")"
! grep -q "^DELETE" "$RUN/watch.txt" || lab_fail "the key was deleted across the upgrade"
grep -q "fleet: .*revoked" "$RUN/n1.log" && lab_fail "the old agent revoked its lease on handover"
lab_ping n1 10.5.0.2 3
lab_ok "lease $old_lease -> $new_lease, the old one lapsed, the key never deleted"

lab_log "SIGTERM revokes at once"
lab_stop_agent n1
[ -z "$(value_of n1)" ] || lab_fail "n1's key still there once the agent stopped on SIGTERM"
grep -q "fleet: .*revoked" "$RUN/n1.log" || lab_fail "n1 did not log the revoke"
lab_ok "SIGTERM: n1's key gone by the time the agent exited"

lab_log "least privilege: etcd auth, roles.sh's role per node"
echo "root-secret-$$" >"$RUN/root.password"
roles() {
  lab_exec etcd env ETCDCTL_ENDPOINTS="$ETCD" ${ETCDCTL_USER:+"ETCDCTL_USER=$ETCDCTL_USER"} \
    timeout 60 bash "$SOURCE_DIR/deploy/etcd/roles.sh" --password-dir "$RUN/passwords" \
    --enable-auth "$RUN/root.password" "$FLEET" n1 n2
}
out=$(roles) || lab_fail "roles.sh: exit $? ($out)"
echo "$out"
grep -qx "+ etcdctl role grant-permission node-n1 readwrite $(key_of n1)" <<<"$out" ||
  lab_fail "roles.sh did not grant node-n1 its key"
grep -qx "+ etcdctl auth enable" <<<"$out" || lab_fail "roles.sh did not enable auth"
ETCDCTL_USER="root:$(cat "$RUN/root.password")"
export ETCDCTL_USER
out=$(roles) || lab_fail "roles.sh a second time: exit $? ($out)"
grep -q "^+ etcdctl role add\|^+ etcdctl user add" <<<"$out" &&
  lab_fail "roles.sh a second time added again: $out"
grep -qx "= role node-n1 exists" <<<"$out" || lab_fail "roles.sh a second time: $out"
lab_ok "roles.sh: role and user per node, auth on; a second run changes nothing"
# shellcheck disable=SC2046
lab_start_agent n1 $(fleet_flags n1) --fleet_etcd_user=node-n1 \
  --fleet_etcd_password_file="$RUN/passwords/n1.password"
wait_key n1 present 5
json=$(value_of n1)
check '.node == "n1"'
lab_ok "n1 registers as etcd user node-n1"
n1_user="node-n1:$(cat "$RUN/passwords/n1.password")"
# refused_as_n1 KEY: node-n1 may not write KEY.
refused_as_n1() {
  local rc=0 out
  out=$(ETCDCTL_USER=$n1_user ectl put "$1" stolen 2>&1) || rc=$?
  if [ "$rc" = 0 ] || ! grep -q "permission denied" <<<"$out"; then
    lab_fail "node-n1 writing $1: exit $rc, want permission denied ($out)"
  fi
}
refused_as_n1 "$(key_of n2)"
refused_as_n1 "$(key_of n10)"
[ "$(value_of n2)" != stolen ] || lab_fail "n2's key was overwritten"
lab_ok "node-n1 is refused n2's and n10's keys (permission denied)"

# The controllers' user: the fleet's keys read, its description written, another fleet's not.
printf 'defaults: {mode: gre, key: auto, innerPool: 100.64.0.0/16, multipoint: true}\ntopology: {type: mesh}\n' \
  >"$RUN/description.yaml"
# as_controller FLEET ARGS...: tunnel-controller in the etcd namespace as the fleet's controller.
as_controller() {
  local fleet=$1; shift
  lab_exec etcd timeout 20 "$BIN_DIR/tunnel-controller" "$@" --etcd="$ETCD" --fleet="$fleet" \
    --etcd_user="tunnel-controller-$FLEET" \
    --etcd_password_file="$RUN/passwords/tunnel-controller-$FLEET.password"
}
out=$(as_controller "$FLEET" fleet set -f "$RUN/description.yaml" 2>&1) ||
  lab_fail "fleet set as tunnel-controller-$FLEET: exit $? ($out)"
out=$(as_controller "$FLEET" status 2>&1) || true
grep -q "n1" <<<"$out" || lab_fail "status as tunnel-controller-$FLEET does not list n1: $out"
# run --etcd as that user: it campaigns (the election's keys), lists and watches, and leads.
as_controller "$FLEET" run --interval 1m --metrics_listen= >"$RUN/controller-run.log" 2>&1 &
run_pid=$!
for _ in $(seq 100); do
  grep -q "leading fleet $FLEET" "$RUN/controller-run.log" && break
  sleep 0.1
done
kill "$run_pid" 2>/dev/null || true
wait "$run_pid" 2>/dev/null || true
grep -q "leading fleet $FLEET" "$RUN/controller-run.log" ||
  lab_fail "run --etcd as tunnel-controller-$FLEET did not lead within 10 s: $(tail -5 "$RUN/controller-run.log")"
rc=0
out=$(as_controller other fleet set -f "$RUN/description.yaml" 2>&1) || rc=$?
if [ "$rc" = 0 ] || ! grep -qi "permission" <<<"$out"; then
  lab_fail "tunnel-controller-$FLEET writing fleet other's description: exit $rc ($out)"
fi
rc=0
out=$(lab_exec etcd env -u ETCDCTL_USER ETCDCTL_API=3 timeout 10 etcdctl --endpoints="$ETCD" \
  --user="tunnel-controller-$FLEET:$(cat "$RUN/passwords/tunnel-controller-$FLEET.password")" \
  put "$(key_of n2)" stolen 2>&1) || rc=$?
if [ "$rc" = 0 ] || ! grep -q "permission denied" <<<"$out"; then
  lab_fail "tunnel-controller-$FLEET writing n2's key: exit $rc, want permission denied ($out)"
fi
lab_ok "tunnel-controller-$FLEET stores the description, reads the members and leads; refused another fleet's description and a node's key"
lab_stop_agent n1
[ -z "$(value_of n1)" ] || lab_fail "n1's key still there after SIGTERM (revoke as node-n1)"
lab_ok "as node-n1, SIGTERM still revokes its lease: the key is gone"
