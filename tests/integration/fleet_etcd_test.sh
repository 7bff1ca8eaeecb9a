#!/bin/bash
# A fleet on etcd, end to end: a 3-member etcd and two `tunnel-controller run --etcd` replicas in
# a namespace of their own (ctl), agents in theirs registering with their own flags
# (--fleet_etcd ...), a multipoint mesh description stored with `fleet set`.
#  - a malformed description is refused and the stored one kept;
#  - one controller leads; the registered nodes get each other as peers and ping across;
#  - a node joining: every node has its peer, pings cross (time from registration measured);
#  - a node leaving: a member for --grace, then gone everywhere within grace + 2 s;
#  - the leader killed (-9): the standby leads within the lease's TTL + 1 s, a join converges;
#  - one etcd member of three killed: the same leader, a node leaving still removed;
#  - all of etcd stopped: no controller leads, the agents keep their peers and pings pass;
#    etcd back and the description changed: converged within 2 s.
# Every wait is bounded; everything is stopped and removed on exit.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"
source "$SOURCE_DIR/tests/common/etcd/etcd_cluster.sh"

GRACE=3       # --grace (s): short, for the test
TTL=3         # the controllers' --lease_ttl (s)
AGENT_TTL=5   # the agents' --fleet_lease_ttl (s)
FLEET=lab
CTL_ADDR=198.18.0.250
MAX_JOIN_S=${FLEET_ETCD_MAX_JOIN_S:-5}
OUTAGE_S=${FLEET_ETCD_OUTAGE_S:-2}  # how long etcd stays away after no controller leads

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "SKIP: etcd and etcdctl are needed (apt-get install etcd-server etcd-client)" >&2
  exit 77
fi
lab_init
[ -x "$BIN_DIR/tunnel-controller" ] || lab_fail "missing $BIN_DIR/tunnel-controller: build first"
command -v jq >/dev/null || lab_fail "jq is needed"
CTL=$BIN_DIR/tunnel-controller

declare -A CPID=()    # controller -> pid
declare -A CPORT=([c1]=19481 [c2]=19482)
cleanup() {
  local rc=$? c pid _
  set +e
  for c in "${!CPID[@]}"; do kill -TERM "${CPID[$c]}" 2>/dev/null; done
  for c in "${!CPID[@]}"; do
    pid=${CPID[$c]}
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$rc" != 0 ] && [ -n "${ETCD_CLUSTER_DIR:-}" ]; then
    for f in "$ETCD_CLUSTER_DIR"/m*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 5 "$f" >&2; }; done
  fi
  etcd_cluster_stop
  (exit "$rc")
  lab_cleanup
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
# wait_for SECONDS CMD...: until CMD succeeds, every 50 ms; fails after SECONDS.
wait_for() {
  local limit=$1; shift
  local start; start=$(now)
  while ! "$@" >/dev/null 2>&1; do
    le "$(since "$start")" "$limit" || return 1
    sleep 0.05
  done
}

lab_log "a namespace for etcd (3 members) and the controllers; 4 nodes"
lab_add_node ctl "$CTL_ADDR"
for i in 1 2 3 4; do lab_add_node "n$i" "198.18.0.$i"; done
# Kept set: etcdctl_cluster and the members' restarts run there too.
ETCD_CLUSTER_NETNS="$LAB-ctl"
ETCD_CLUSTER_HOST=$CTL_ADDR
etcd_cluster_start 3 || lab_fail "etcd did not start"
ETCD=$ETCD_ENDPOINTS
ctl() { lab_exec ctl timeout 30 "$CTL" "$@" --etcd="$ETCD" --fleet="$FLEET" --timeout=3 --retries=1 \
  --progress=plain; }
key_exists() { [ -n "$(etcdctl_cluster get --keys-only "/tunnel-agent/$FLEET/nodes/$1" 2>/dev/null)" ]; }
key_gone() { ! key_exists "$1"; }

DESC=$RUN/fleet.yaml
write_description() {  # [MTU]
  {
    echo "defaults:"
    echo "  mode: gre"
    echo "  key: auto"
    echo "  innerPool: 100.64.0.0/16"
    echo "  multipoint: true"
    [ -z "${1:-}" ] || echo "  mtu: $1"
    echo "topology:"
    echo "  type: mesh"
  } >"$DESC"
}
write_description
out=$(ctl fleet set -f "$DESC") || lab_fail "fleet set: exit $? ($out)"
[ "$(ctl fleet get)" = "$(cat "$DESC")" ] || lab_fail "fleet get differs from the file"
printf 'defaults: {innerPool: 100.64.0.0/16}\ntopology: {type: mush}\n' >"$RUN/bad.yaml"
rc=0
err=$(ctl fleet set -f "$RUN/bad.yaml" 2>&1) || rc=$?
[ "$rc" = 1 ] || lab_fail "a malformed description: exit $rc, want 1"
grep -q "bad.yaml:2:18: topology.type" <<<"$err" || lab_fail "malformed: $err"
[ "$(ctl fleet get)" = "$(cat "$DESC")" ] || lab_fail "the malformed description replaced the stored one"
lab_ok "fleet set/get round trip; a malformed description refused (line 2, column 18), the stored one kept"

start_agent() {  # NODE
  local n=$1 i=${1#n}
  lab_start_agent "$n" --node_name="$n" --fleet_etcd="$ETCD" --fleet="$FLEET" \
    --fleet_underlay="198.18.0.$i" --advertise_prefixes="10.244.$i.0/24" \
    --fleet_agent_endpoint="unix:$RUN/$n.sock" --fleet_lease_ttl="${AGENT_TTL}s"
  lab_exec "$n" ip addr replace "10.244.$i.1/32" dev lo  # an address of its pod prefix
}
start_controller() {  # NAME
  local c=$1
  ip netns exec "$LAB-ctl" "$CTL" run --etcd="$ETCD" --fleet="$FLEET" --grace="${GRACE}s" \
    --lease_ttl="${TTL}s" --interval=10s --metrics_listen="127.0.0.1:${CPORT[$c]}" \
    --timeout=2 --retries=1 --progress=plain >>"$RUN/$c.log" 2>&1 &
  CPID[$c]=$!
}
metric() {  # CONTROLLER SERIES
  lab_exec ctl curl -sf --max-time 1 "http://127.0.0.1:${CPORT[$1]}/metrics" |
    awk -v s="$2" '$1 == s && !found { print $2; found = 1 }'
}
leader() {  # the one controller whose tunnelcontroller_leader is 1, if exactly one
  local c found=()
  for c in "${!CPID[@]}"; do [ "$(metric "$c" tunnelcontroller_leader)" = 1 ] && found+=("$c"); done
  [ "${#found[@]}" = 1 ] && echo "${found[0]}"
}
one_leader() { [ -n "$(leader)" ]; }
no_leader() {
  local c
  for c in "${!CPID[@]}"; do [ "$(metric "$c" tunnelcontroller_leader)" = 0 ] || return 1; done
}
peer_names() { lab_ctl "$1" -o json peer list tnl0 2>/dev/null | jq -r '[.peers[]?.name] | sort | join(" ")'; }
# has_peers NODE PEER...: NODE's peers are exactly those.
has_peers() {
  local n=$1; shift
  [ "$(peer_names "$n")" = "$(printf '%s\n' "$@" | sort | paste -sd' ')" ]
}
# mesh NODE...: every node of the list has every other as its peer.
mesh() {
  local n others
  for n in "$@"; do
    mapfile -t others < <(printf '%s\n' "$@" | grep -vx "$n")
    has_peers "$n" "${others[@]}" || return 1
  done
}
# nobody_has PEER NODE...
nobody_has() {
  local n
  for n in "${@:2}"; do [[ " $(peer_names "$n") " != *" $1 "* ]] || return 1; done
}
pings() { lab_exec "$1" ping -q -n -c 1 -W 1 "$2"; }

lab_log "3 agents registering, 2 controllers"
for n in n1 n2 n3; do start_agent "$n"; done
start_controller c1
start_controller c2
wait_for 10 one_leader || lab_fail "no single leader: c1 $(metric c1 tunnelcontroller_leader), c2 $(metric c2 tunnelcontroller_leader)"
LEADER=$(leader)
wait_for 10 mesh n1 n2 n3 || lab_fail "no mesh of n1 n2 n3: n1 has '$(peer_names n1)'"
wait_for 5 pings n1 10.244.2.1 || lab_fail "n1 cannot ping 10.244.2.1 (n2)"
wait_for 5 pings n3 10.244.1.1 || lab_fail "n3 cannot ping 10.244.1.1 (n1)"
[ "$(metric "$LEADER" tunnelcontroller_nodes_registered)" = 3 ] ||
  lab_fail "nodes_registered: $(metric "$LEADER" tunnelcontroller_nodes_registered)"
fleet_converged() { [ "$(metric "$LEADER" tunnelcontroller_fleet_converged)" = 1 ]; }
wait_for 5 fleet_converged ||
  lab_fail "fleet_converged: $(metric "$LEADER" tunnelcontroller_fleet_converged)"
out=$(ctl status 2>&1) || lab_fail "status: exit $? ($out)"
grep -q "^fleet $FLEET: led by " <<<"$out" || lab_fail "status names no leader: $out"
grep -qE '^n2 +registered +[0-9hms.]+ +198\.18\.0\.2 ' <<<"$out" || lab_fail "status: no n2 row: $out"
grep -q "^status: 3/3 nodes converged$" <<<"$out" || lab_fail "status: $out"
lab_ok "$LEADER leads; n1 n2 n3 a mesh, pinging across; status shows the leader and 3 converged"

lab_log "n4 joins"
start_agent n4
t0=$(now)
wait_for 10 key_exists n4 || lab_fail "n4 did not register"
t_reg=$(now)
wait_for "$MAX_JOIN_S" mesh n1 n2 n3 n4 || lab_fail "n4 not in the mesh within ${MAX_JOIN_S}s: n1 has '$(peer_names n1)'"
t_peers=$(since "$t_reg")
wait_for "$MAX_JOIN_S" pings n1 10.244.4.1 || lab_fail "n1 cannot ping n4's 10.244.4.1"
t_ping=$(since "$t_reg")
wait_for 3 pings n4 10.244.2.1 || lab_fail "n4 cannot ping n2's 10.244.2.1"
JOIN1="registered $(awk -v a="$t0" -v b="$t_reg" 'BEGIN { printf "%.2f", b - a }')s after the agent started; peers everywhere ${t_peers}s and n1 pings n4 ${t_ping}s after its registration"
lab_ok "n4 joined: $JOIN1"

lab_log "n4 leaves (its agent stopped: its registration goes)"
# From the stop: the registration goes after it, so what is measured from here is an upper bound.
t_stop=$(now)
lab_stop_agent n4
wait_for 10 key_gone n4 || lab_fail "n4's registration stayed"
seen=$(since "$t_stop")
le "$seen" $((GRACE - 1)) || lab_fail "n4's registration seen gone only ${seen}s after the stop"
got=$(peer_names n1)
[[ " $got " == *" n4 "* ]] || lab_fail "n4 left n1's peers before its grace was over: n1 has '$got'"
wait_for $((GRACE + 2)) nobody_has n4 n1 n2 n3 ||
  lab_fail "n4 still a peer $((GRACE + 2))s after leaving: n1 has '$(peer_names n1)'"
LEAVE1=$(since "$t_stop")
le "$LEAVE1" "$GRACE" && lab_fail "n4 gone after ${LEAVE1}s, before its grace of ${GRACE}s"
wait_for 5 pings n1 10.244.3.1 || lab_fail "n1 cannot ping n3 after n4 left"
lab_ok "n4 still a peer when its registration was seen gone (${seen}s after the stop), gone from every node ${LEAVE1}s after the stop (grace ${GRACE}s)"

lab_log "the leader ($LEADER) killed with SIGKILL"
kill -KILL "${CPID[$LEADER]}"
wait "${CPID[$LEADER]}" 2>/dev/null || true
t_kill=$(now)
unset "CPID[$LEADER]"
OLD=$LEADER
wait_for $((TTL + 1)) one_leader || lab_fail "no standby led within $((TTL + 1))s of the leader's death"
TAKEOVER=$(since "$t_kill")
LEADER=$(leader)
lab_ok "$LEADER leads ${TAKEOVER}s after $OLD was killed (TTL ${TTL}s)"
start_agent n4
wait_for 10 key_exists n4 || lab_fail "n4 did not register again"
t_reg=$(now)
wait_for "$MAX_JOIN_S" mesh n1 n2 n3 n4 || lab_fail "after the takeover, n4 not in the mesh: n1 has '$(peer_names n1)'"
wait_for "$MAX_JOIN_S" pings n2 10.244.4.1 || lab_fail "n2 cannot ping n4 after the takeover"
JOIN2=$(since "$t_reg")
lab_ok "under the new leader n4 joined again, pings from n2 ${JOIN2}s after its registration"
start_controller "$OLD"  # a standby again

lab_log "one etcd member of three killed"
etcd_member_kill 0
for _ in $(seq 6); do
  sleep 0.5
  [ "$(leader)" = "$LEADER" ] || lab_fail "the leader changed with one etcd member down: '$(leader)'"
done
t_stop=$(now)
lab_stop_agent n4
wait_for 10 key_gone n4 || lab_fail "n4's registration stayed with one etcd member down"
wait_for $((GRACE + 2)) nobody_has n4 n1 n2 n3 || lab_fail "n4 still a peer with one etcd member down"
LEAVE2=$(since "$t_stop")
[ "$(leader)" = "$LEADER" ] || lab_fail "the leader changed with one etcd member down"
pings n1 10.244.3.1 >/dev/null || lab_fail "n1 cannot ping n3 with one etcd member down"
etcd_member_start 0 || lab_fail "etcd member 0 did not come back"
lab_ok "one member down: $LEADER still leads, n4 gone everywhere ${LEAVE2}s after its agent was stopped"

lab_log "all of etcd stopped"
for i in 0 1 2; do etcd_member_kill "$i"; done
t_down=$(now)
wait_for $((TTL + 2)) no_leader || lab_fail "a controller still leads $((TTL + 2))s after etcd went away"
STEPDOWN=$(since "$t_down")
sleep "$OUTAGE_S"
mesh n1 n2 n3 || lab_fail "the peers changed while etcd was away: n1 has '$(peer_names n1)'"
pings n1 10.244.2.1 >/dev/null || lab_fail "n1 cannot ping n2 while etcd is away"
pings n3 10.244.1.1 >/dev/null || lab_fail "n3 cannot ping n1 while etcd is away"
lab_ok "etcd away: no leader after ${STEPDOWN}s; the agents keep their peers, pings pass"

lab_log "etcd back; the description changed (mtu 1400)"
# All three at once: one alone is no quorum, and would never say it is healthy.
for i in 0 1 2; do _etcd_member_spawn "$i"; done
for i in 0 1 2; do _etcd_member_wait "$i" || lab_fail "etcd member $i did not come back"; done
t_back=$(now)
write_description 1400
out=$(ctl fleet set -f "$DESC") || lab_fail "fleet set after etcd came back: exit $? ($out)"
t_set=$(now)
mtus() {
  local n
  for n in n1 n2 n3; do [ "$(lab_ctl "$n" -o json get tnl0 | jq -r .mtu)" = 1400 ] || return 1; done
}
wait_for 10 mtus || lab_fail "the mtu change did not reach every node in 10 s"
CHANGE=$(since "$t_set")
wait_for 5 one_leader || lab_fail "no single leader after etcd came back"
mesh n1 n2 n3 || lab_fail "the mesh changed after etcd came back: n1 has '$(peer_names n1)'"
pings n2 10.244.3.1 >/dev/null || lab_fail "n2 cannot ping n3 after etcd came back"
lab_ok "etcd back: the description change on every node ${CHANGE}s after fleet set ($(awk -v a="$t_back" -v b="$t_set" 'BEGIN { printf "%.2f", b - a }')s for fleet set), $(leader) leads"
le "$CHANGE" 2 || lab_fail "converged ${CHANGE}s after the change, want <= 2s"

echo "figures: join: $JOIN1; join after the takeover: ${JOIN2}s; leave: ${LEAVE1}s (grace ${GRACE}s), with one etcd member down ${LEAVE2}s; takeover after kill -9: ${TAKEOVER}s (TTL ${TTL}s); step-down with etcd away: ${STEPDOWN}s; change after etcd came back: ${CHANGE}s"
