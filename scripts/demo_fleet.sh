#!/bin/bash
# make demo-fleet: a fleet kept in etcd, in network namespaces on one lab bridge (198.18.0.0/24):
# a 3-member etcd, two `tunnel-controller run --etcd` replicas (one leads), three agents that
# register themselves, and a multipoint mesh description stored with `fleet set`. It shows the
# registrations, the leader, the mesh converging (every pair of nodes pinging between their
# advertised prefixes, through the tunnels), a fourth node joining, the leader killed and the
# standby taking over, and a node leaving (gone from the others after a short grace). Each step
# checks what it shows and stops with FAIL when it is not so; everything is removed on exit.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
: "${BIN_DIR:=$HERE/../build/bin}"
# shellcheck source=scripts/lab.sh
source "$HERE/lab.sh"
# shellcheck source=tests/common/etcd/etcd_cluster.sh
source "$HERE/../tests/common/etcd/etcd_cluster.sh"
# shellcheck source=scripts/fleet_lab.sh
source "$HERE/fleet_lab.sh"

FLEET=demo
GRACE=5       # the controllers' --grace (s): how long a node that left stays the others' peer
CTL_TTL=3     # the controllers' --lease_ttl (s): a standby leads within it of the leader's death
ETCD_ADDR=198.18.0.250
declare -A CTL_ADDR=([c1]=198.18.0.251 [c2]=198.18.0.252)

for tool in etcd etcdctl jq curl; do
  command -v "$tool" >/dev/null ||
    { echo "$tool not found: make test-deps (etcd-server, etcd-client, jq, curl)" >&2; exit 1; }
done
lab_init
CTL=$BIN_DIR/tunnel-controller
[ -x "$CTL" ] || lab_fail "missing $CTL: build first (make build)"
cleanup() {
  local rc=$?
  set +e
  # The agents and controllers first (lab_cleanup): stopped, they revoke their leases in etcd,
  # which must still answer for that to be quick.
  (exit "$rc")
  lab_cleanup
  etcd_cluster_stop
  return "$rc"
}
trap cleanup EXIT

T_START=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# show NODE CMD...: prints the command as typed inside NODE's namespace (the lab's directory
# as $RUN, the binaries by name), then runs it there.
show() {
  local n=$1 text
  shift
  text="$*"
  text=${text//$BIN_DIR\//}
  text=${text//$RUN/\$RUN}
  printf '\033[2m[%s] $ %s\033[0m\n' "$n" "$text"
  lab_exec "$n" "$@"
}
FIGURES=()
figure() { FIGURES+=("$*"); echo "$*"; }

lab_log "The lab: a bridge, a namespace for etcd ($ETCD_ADDR), one per controller and per node"
echo "lab: namespaces $LAB-*, files in $RUN"
lab_add_node etcd "$ETCD_ADDR"
for c in c1 c2; do lab_add_node "$c" "${CTL_ADDR[$c]}"; done
for i in 1 2 3; do lab_add_node "n$i" "198.18.0.$i"; done

lab_log "etcd: 3 members in namespace etcd"
t0=$(now)
# shellcheck disable=SC2034  # read by etcd_cluster.sh, here and at each etcdctl_cluster
ETCD_CLUSTER_NETNS="$LAB-etcd"
# shellcheck disable=SC2034
ETCD_CLUSTER_HOST=$ETCD_ADDR
etcd_cluster_start 3 || lab_fail "etcd did not start"
ETCD=$ETCD_ENDPOINTS
etcdctl_cluster member list -w table
echo "etcd: $ETCD (data in $ETCD_CLUSTER_DIR)"
figure "etcd: 3 members healthy in $(since "$t0") s"
ectl() { etcdctl_cluster "$@"; }

# Each node advertises 10.244.I.0/24, as a pod network would be: 10.244.I.1 stands for a pod.
start_agent() {  # NODE
  local n=$1 i=${1#n}
  lab_start_agent "$n" --node_name="$n" --fleet_etcd="$ETCD" --fleet="$FLEET" \
    --fleet_underlay="198.18.0.$i" --advertise_prefixes="10.244.$i.0/24" \
    --fleet_agent_endpoint="unix:$RUN/$n.sock"
  lab_exec "$n" ip addr add "10.244.$i.1/32" dev lo
}
key_exists() { [ -n "$(ectl get --keys-only "/tunnel-agent/$FLEET/nodes/$1" 2>/dev/null)" ]; }
key_gone() { ! key_exists "$1"; }

lab_log "Three agents register themselves in etcd"
# shellcheck disable=SC2016  # $RUN shown as it is, the lab's directory
printf '\033[2m[n1] $ tunnel-agent --node_name=n1 --fleet_etcd=%s --fleet=%s --fleet_underlay=198.18.0.1 --advertise_prefixes=10.244.1.0/24 --fleet_agent_endpoint=unix:$RUN/n1.sock ...\033[0m\n' \
  "$ETCD" "$FLEET"
t0=$(now)
for n in n1 n2 n3; do start_agent "$n"; done
for n in n1 n2 n3; do wait_for 10 key_exists "$n" || lab_fail "$n did not register in etcd"; done
figure "registered: n1 n2 n3 in etcd $(since "$t0") s after the first agent's start"
printf '\033[2m[etcd] $ etcdctl get --prefix /tunnel-agent/%s/nodes/\033[0m\n' "$FLEET"
registrations=$(ectl get --prefix "/tunnel-agent/$FLEET/nodes/") || lab_fail "etcdctl get failed"
echo "$registrations"
[ "$(grep -c "^/tunnel-agent/$FLEET/nodes/n[123]$" <<<"$registrations")" = 3 ] ||
  lab_fail "etcd does not hold the three registrations"
jq -s -e 'map({(.node): .advertisePrefixes}) | add ==
  {n1: ["10.244.1.0/24"], n2: ["10.244.2.0/24"], n3: ["10.244.3.0/24"]}' \
  <<<"$(grep '^{' <<<"$registrations")" >/dev/null ||
  lab_fail "the registrations do not hold each node's advertised prefix"

lab_log "Two controllers: one leads, the other stands by"
printf '\033[2m[c1] $ tunnel-controller run --etcd=%s --fleet=%s --grace=%ss --lease_ttl=%ss\033[0m\n' \
  "$ETCD" "$FLEET" "$GRACE" "$CTL_TTL"
t0=$(now)
start_controller c1
start_controller c2
wait_for 10 one_leader || lab_fail "no single leader: c1 says $(metric c1 tunnelcontroller_leader), c2 $(metric c2 tunnelcontroller_leader)"
LEADER=$(leader)
STANDBY=c1
[ "$LEADER" = c1 ] && STANDBY=c2
for c in c1 c2; do echo "$c (pid ${LAB_PIDS[$c]}): tunnelcontroller_leader $(metric "$c" tunnelcontroller_leader)"; done
figure "leader: $LEADER elected $(since "$t0") s after the controllers' start; $STANDBY stands by"

lab_log "The fleet's description: a multipoint mesh, its members the registered nodes"
DESC=$RUN/fleet.yaml
cat >"$DESC" <<'EOF'
defaults:
  mode: gre
  key: auto
  innerPool: 100.64.0.0/16
  multipoint: true
topology:
  type: mesh
EOF
cat "$DESC"
printf '\033[2m$ tunnel-controller fleet set -f fleet.yaml --etcd=... --fleet=%s\033[0m\n' "$FLEET"
out=$(ctl fleet set -f "$DESC" 2>&1) || lab_fail "fleet set: exit $? ($out)"
t_set=$(now)  # stored: the leader's watch sees it from here
[ "$(ctl fleet get)" = "$(cat "$DESC")" ] || lab_fail "fleet get does not give back the description"

peer_names() { lab_ctl "$1" -o json peer list tnl0 2>/dev/null | jq -r '[.peers[]?.name] | sort | join(" ")'; }
# mesh NODE...: each node has exactly the others as its peers.
mesh() {
  local n want
  for n in "$@"; do
    want=$(printf '%s\n' "$@" | grep -vx "$n" | sort | paste -sd' ')
    [ "$(peer_names "$n")" = "$want" ] || return 1
  done
}
# ping_pair A B: one ping from A's prefix address to B's, through the tunnels; prints the RTT.
ping_pair() {
  local out
  out=$(lab_exec "$1" ping -n -c 1 -W 1 -I "10.244.${1#n}.1" "10.244.${2#n}.1" 2>&1) || return 1
  sed -n 's|^rtt min/avg/max/mdev = \([0-9.]*\)/.*|\1 ms|p' <<<"$out"
}
all_pairs_ping() {  # NODE...
  local a b
  for a in "$@"; do
    for b in "$@"; do [ "$a" = "$b" ] || ping_pair "$a" "$b" >/dev/null || return 1; done
  done
}
# ping_table NODE...: every ordered pair once, as a table; fails on a pair that does not answer.
ping_table() {
  local a b rtt pairs=0
  for a in "$@"; do
    for b in "$@"; do
      [ "$a" = "$b" ] && continue
      rtt=$(ping_pair "$a" "$b") || lab_fail "$a (10.244.${a#n}.1) cannot ping $b (10.244.${b#n}.1)"
      printf '  %s -> %s   10.244.%s.1 -> 10.244.%s.1   %s\n' "$a" "$b" "${a#n}" "${b#n}" "$rtt"
      pairs=$((pairs + 1))
    done
  done
  echo "  $pairs/$pairs pairs answered"
}
wait_for 10 mesh n1 n2 n3 || lab_fail "no mesh 10 s after fleet set: n1's peers are '$(peer_names n1)'"
t_peers=$(since "$t_set")
wait_for 10 all_pairs_ping n1 n2 n3 || lab_fail "not every pair pings 10 s after fleet set"
t_ping=$(since "$t_set")
show n1 "$BIN_DIR/tunnelctl" --agent="unix:$RUN/n1.sock" peer list tnl0
echo "Pings between the nodes' prefixes, through their tnl0 devices:"
ping_table n1 n2 n3
figure "mesh: n1 n2 n3 each other's peers $t_peers s and every pair pinging $t_ping s after the description was stored"
printf '\033[2m$ tunnel-controller status --etcd=... --fleet=%s\033[0m\n' "$FLEET"
# The table on stdout; each node's progress line goes to stderr, kept for a failure.
status=$(ctl status 2>"$RUN/status.err") || lab_fail "status: exit $? ($status $(cat "$RUN/status.err"))"
echo "$status"
grep -q "^fleet $FLEET: led by .*/${LAB_PIDS[$LEADER]}$" <<<"$status" ||
  lab_fail "status does not name $LEADER (pid ${LAB_PIDS[$LEADER]}) as the leader"
grep -q "^status: 3/3 nodes converged$" <<<"$status" || lab_fail "status: not 3/3 converged"

lab_log "A fourth node joins: its agent registers, the leader adds it everywhere"
lab_add_node n4 198.18.0.4
t0=$(now)
start_agent n4
wait_for 10 key_exists n4 || lab_fail "n4 did not register"
t_reg=$(now)
wait_for 10 mesh n1 n2 n3 n4 || lab_fail "n4 not in the mesh 10 s after registering: n1's peers are '$(peer_names n1)'"
t_peers=$(since "$t_reg")
wait_for 10 all_pairs_ping n1 n2 n3 n4 || lab_fail "not every pair with n4 pings 10 s after it registered"
t_ping=$(since "$t_reg")
ping_table n1 n2 n3 n4
figure "join: n4 registered $(between "$t0" "$t_reg") s after its agent started; in every node's peers $t_peers s and every pair pinging $t_ping s after its registration"

lab_log "The leader ($LEADER) killed with SIGKILL: the standby leads once its lease lapses"
printf '\033[2m$ kill -9 %s\033[0m\n' "${LAB_PIDS[$LEADER]}"
t_kill=$(now)
lab_stop_agent "$LEADER" KILL
wait_for $((CTL_TTL + 2)) one_leader || lab_fail "$STANDBY did not lead within $((CTL_TTL + 2)) s of the leader's death"
[ "$(leader)" = "$STANDBY" ] || lab_fail "the leader is '$(leader)', want $STANDBY"
t_takeover=$(since "$t_kill")
echo "$STANDBY (pid ${LAB_PIDS[$STANDBY]}): tunnelcontroller_leader $(metric "$STANDBY" tunnelcontroller_leader)"
figure "takeover: $STANDBY leads $t_takeover s after $LEADER was killed (lease TTL $CTL_TTL s)"
start_controller "$LEADER"  # back, as the standby
wait_for 5 stands_by "$LEADER" ||
  lab_fail "$LEADER, started again, does not stand by"
echo "$LEADER started again (pid ${LAB_PIDS[$LEADER]}): tunnelcontroller_leader 0, standing by"
read -r LEADER STANDBY <<<"$STANDBY $LEADER"
status=$(ctl status 2>"$RUN/status.err") ||
  lab_fail "status after the takeover: exit $? ($status $(cat "$RUN/status.err"))"
head -1 <<<"$status"
grep -q "^fleet $FLEET: led by .*/${LAB_PIDS[$LEADER]}$" <<<"$status" ||
  lab_fail "status does not name $LEADER as the leader: $(head -1 <<<"$status")"
all_pairs_ping n1 n2 n3 n4 || lab_fail "pings fail after the takeover"
echo "every pair of n1..n4 still pings"

lab_log "n2 leaves (its agent stopped): a peer of the others for the grace ($GRACE s), then gone"
nobody_has() {  # PEER NODE...
  local n
  for n in "${@:2}"; do [[ " $(peer_names "$n") " != *" $1 "* ]] || return 1; done
}
# SIGTERM: the agent revokes its lease as it stops, and its registration goes at once.
printf '\033[2m[n2] $ kill %s\033[0m\n' "${LAB_PIDS[n2]}"
t_stop=$(now)
kill -TERM "${LAB_PIDS[n2]}"
wait_for 5 key_gone n2 || lab_fail "n2's registration stayed in etcd"
t_leave=$(now)
lab_stop_agent n2
printf '\033[2m[etcd] $ etcdctl get --prefix --keys-only /tunnel-agent/%s/nodes/\033[0m\n' "$FLEET"
ectl get --prefix --keys-only "/tunnel-agent/$FLEET/nodes/" | sed '/^$/d'
echo "n2's registration gone $(between "$t_stop" "$t_leave") s after SIGTERM; n1's peers now: $(peer_names n1)"
[[ " $(peer_names n1) " == *" n2 "* ]] || lab_fail "n2 left n1's peers before its grace was over"
wait_for $((GRACE + 5)) nobody_has n2 n1 n3 n4 ||
  lab_fail "n2 still a peer $((GRACE + 5)) s after leaving: n1's peers are '$(peer_names n1)'"
t_gone=$(since "$t_leave")
# Seen gone here up to a poll later than the leader saw it: half a second of slack.
awk -v t="$t_gone" -v g="$GRACE" 'BEGIN { exit !(t >= g - 0.5) }' ||
  lab_fail "n2 removed after $t_gone s, before its grace of $GRACE s"
mesh n1 n3 n4 || lab_fail "n1 n3 n4 are no longer a mesh"
ping_table n1 n3 n4
figure "leave: n2 gone from every other node $t_gone s after its registration went (grace $GRACE s)"

lab_log "Timings"
printf '  %s\n' "${FIGURES[@]}"
echo "  the whole demo: $(since "$T_START") s; the lab is removed on exit"
lab_log "demo-fleet: OK"
