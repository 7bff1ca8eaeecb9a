#!/bin/bash
# tunnel-controller and 12 agents as a multipoint mesh: each node one device (tnl0) whose peers
# are the 11 other nodes, each node's pod prefix (10.244.I.0/24) allowed on its peer everywhere
# and routed into tnl0; a plan, an apply, a second apply that changes nothing, status; a node
# leaving the file kept without --prune and its peer removed everywhere with it; the node
# joining again costs one peer created on each other node; pings across the mesh.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

N=${FLEET_NODES:-12}
MAX_CONVERGE_S=${FLEET_MAX_CONVERGE_S:-10}

lab_init  # its EXIT trap stops the agents and deletes the namespaces, whatever happens
[ -x "$BIN_DIR/tunnel-controller" ] || lab_fail "missing $BIN_DIR/tunnel-controller: build first"
command -v jq >/dev/null || lab_fail "jq is needed"
CTL=$BIN_DIR/tunnel-controller
# Every controller call is bounded: a hung agent fails the test instead of holding it.
ctl() { timeout 60 "$CTL" "$@" --progress=plain --timeout=5 --retries=2; }

NODES=()
for i in $(seq "$N"); do NODES+=("n$i"); done
PEERS=$((N * (N - 1)))

lab_log "$N agents in $N namespaces"
for i in $(seq "$N"); do lab_add_node "n$i" "198.18.0.$i"; done
for n in "${NODES[@]}"; do lab_start_agent "$n"; done
lab_ctl n1 -o json info | jq -e '.features | index("multipoint")' >/dev/null ||
  lab_fail "the agent lacks the multipoint feature"

# write_fleet FILE [NODE...]: a multipoint mesh of the nodes given (default all).
write_fleet() {
  local file=$1; shift
  local nodes=("$@") n
  [ ${#nodes[@]} -gt 0 ] || nodes=("${NODES[@]}")
  {
    echo "defaults:"
    echo "  mode: gre"
    echo "  key: auto"
    echo "  innerPool: 100.64.0.0/16"
    echo "  multipoint: true"
    echo "nodes:"
    for n in "${nodes[@]}"; do
      echo "  - name: $n"
      echo "    agent: unix:$RUN/$n.sock"
      echo "    underlay: 198.18.0.${n#n}"
      echo "    prefixes: [10.244.${n#n}.0/24]"
    done
    echo "topology:"
    echo "  type: mesh"
  } >"$file"
}
FLEET=$RUN/fleet.yaml
write_fleet "$FLEET"

# peer_names NODE: the names of NODE's peers on tnl0, sorted, on one line.
peer_names() { lab_ctl "$1" -o json peer list tnl0 | jq -r '[.peers[]?.name] | sort | join(" ")'; }
# others NODE [NODE...]: every node of the list but the first argument, sorted as peer_names.
others() {
  local self=$1; shift
  printf '%s\n' "$@" | grep -vx "$self" | sort | paste -sd' '
}
overlay() { lab_ctl "$1" -o json get tnl0 | jq -r '.addresses[0]' | cut -d/ -f1; }

lab_log "plan: a device and $((N - 1)) peers on every node"
out=$(ctl plan -f "$FLEET" 2>"$RUN/ctl.err") || lab_fail "plan: exit $? ($out)"
grep -q "^plan: $N tunnel and $PEERS peer changes on $N/$N nodes$" <<<"$out" ||
  lab_fail "plan: $(tail -1 <<<"$out")"
[ "$(lab_ctl n1 -o json list | jq '.tunnels | length')" = 0 ] || lab_fail "plan changed n1"
lab_ok "plan: $N devices and $PEERS peers to create, nothing changed"

lab_log "apply: $N multipoint devices, $PEERS peers"
t0=$(date +%s.%N)
out=$(ctl apply -f "$FLEET" 2>"$RUN/ctl.err") || {
  cat "$RUN/ctl.err" >&2
  lab_fail "apply: exit $? ($out)"
}
elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
summary=$(tail -1 <<<"$out")
echo "$summary"
grep -q "^apply: $N/$N nodes converged, $N/$N tunnels up, $PEERS/$PEERS peers up" <<<"$summary" ||
  lab_fail "apply: $summary"
awk -v e="$elapsed" -v m="$MAX_CONVERGE_S" 'BEGIN { exit !(e <= m) }' ||
  lab_fail "converged in ${elapsed}s, want <= ${MAX_CONVERGE_S}s"
lab_ok "$N nodes, $PEERS peers converged in ${elapsed}s (<= ${MAX_CONVERGE_S}s)"

lab_log "every node: $((N - 1)) peers, as the agents' API has them"
declare -A ADDR=()
for n in "${NODES[@]}"; do ADDR[$n]=$(overlay "$n"); done
[ "$(printf '%s\n' "${ADDR[@]}" | sort -u | wc -l)" = "$N" ] || lab_fail "overlay addresses not distinct"
for n in "${NODES[@]}"; do
  got=$(peer_names "$n")
  [ "$got" = "$(others "$n" "${NODES[@]}")" ] || lab_fail "$n's peers: $got"
done
json=$(lab_ctl n1 -o json get tnl0)
[ "$(jq -r .multipoint <<<"$json")" = true ] || lab_fail "n1 tnl0 is not multipoint: $json"
[ "$(jq -r '.remote // ""' <<<"$json")" = "" ] || lab_fail "n1 tnl0 has a remote: $json"
[ "$(jq -r .labels.owner <<<"$json")" = tunnel-controller ] || lab_fail "n1 tnl0 owner: $json"
[ "$(jq -r .local <<<"$json")" = 198.18.0.1 ] || lab_fail "n1 tnl0 local: $json"
jq -e '.routes | index("100.64.0.0/16") and index("10.244.2.0/24") and (index("10.244.1.0/24") | not)' \
  <<<"$json" >/dev/null || lab_fail "n1 tnl0 routes: $(jq -c .routes <<<"$json")"
key1=$(jq -r .key <<<"$json")
[ "$key1" != null ] && [ "$(lab_ctl "n$N" -o json get tnl0 | jq -r .key)" = "$key1" ] ||
  lab_fail "the devices' keys differ or are missing"
peer=$(lab_ctl n1 -o json peer get tnl0 n2)
[ "$(jq -r .underlay <<<"$peer")" = 198.18.0.2 ] || lab_fail "n1's peer n2 underlay: $peer"
[ "$(jq -r '.allowedPrefixes | join(" ")' <<<"$peer")" = "${ADDR[n2]}/32 10.244.2.0/24" ] ||
  lab_fail "n1's peer n2 allowed prefixes: $(jq -c .allowedPrefixes <<<"$peer")"
[ "$(jq -r .labels.owner <<<"$peer")" = tunnel-controller ] || lab_fail "n1's peer n2 owner: $peer"
lab_exec n1 ip route show 10.244.2.0/24 | grep -q 'dev tnl0' ||
  lab_fail "n1 has no route to 10.244.2.0/24 into tnl0: $(lab_exec n1 ip route)"
lab_ok "each node has its $((N - 1)) peers; n1's peer n2 allows ${ADDR[n2]}/32 and 10.244.2.0/24"

lab_log "pings across the mesh"
# An address of each node's pod prefix, on its loopback: reached through the peer's prefix.
for i in 2 7 "$N"; do lab_exec "n$i" ip addr add "10.244.$i.1/32" dev lo; done
lab_ping n1 "${ADDR[n2]}" 3
lab_ping n5 "${ADDR[n$N]}" 3
lab_ping n3 "10.244.7.1" 3
lab_ping "n$N" "10.244.2.1" 3
rx=$(lab_ctl n2 -o json peer get tnl0 n1 | jq -r '.status.counters.rxPackets // "0"')
[ "$rx" -gt 0 ] || lab_fail "n2's peer n1 counted nothing received"
lab_ok "pings through the mesh, n2's peer n1 counted $rx packets received"

lab_log "a second apply changes nothing"
out=$(ctl apply -f "$FLEET" 2>"$RUN/ctl.err") || lab_fail "apply again: exit $? ($out)"
for n in "${NODES[@]}"; do
  grep -q "^$n: 1 unchanged; peers: $((N - 1)) unchanged; 1/1 up, $((N - 1))/$((N - 1)) peers up$" \
    <<<"$out" || lab_fail "second apply on $n: $(grep "^$n:" <<<"$out")"
done
! grep -qE '^  (CREATE|UPDATE|RECREATE|DELETE) ' <<<"$out" || lab_fail "second apply changed: $out"
lab_ok "every node: the device and its $((N - 1)) peers unchanged"

out=$(ctl status -f "$FLEET" 2>/dev/null) || lab_fail "status: exit $? ($out)"
grep -q "^status: $N/$N nodes converged$" <<<"$out" || lab_fail "status: $out"
lab_ctl n3 peer delete tnl0 n5
rc=0
out=$(ctl status -f "$FLEET" 2>/dev/null) || rc=$?
[ "$rc" = 2 ] || lab_fail "status with a peer gone: exit $rc, want 2"
grep -q "^n3: drift (what apply --prune would do): CREATE tnl0/n5$" <<<"$out" ||
  lab_fail "status drift: $out"
out=$(ctl apply -f "$FLEET" 2>/dev/null) || lab_fail "apply to repair: exit $?"
grep -q "^  CREATE   tnl0/n5$" <<<"$out" || lab_fail "apply did not make n3's peer n5 again: $out"
lab_ok "status: all converged; a peer deleted behind its back is drift, and apply puts it back"

LEAVER=n$N
lab_log "--prune: $LEAVER leaves the file"
SMALL=$RUN/fleet-small.yaml
write_fleet "$SMALL" "${NODES[@]:0:$((N - 1))}"
out=$(ctl apply -f "$SMALL" 2>/dev/null) || lab_fail "apply without $LEAVER: exit $? ($out)"
grep -q "peers not in the file (kept; --prune deletes): $LEAVER" <<<"$out" ||
  lab_fail "no hint of $LEAVER: $out"
[ "$(peer_names n1)" = "$(others n1 "${NODES[@]}")" ] || lab_fail "apply without --prune took a peer"
lab_ok "without --prune: the peer $LEAVER kept and reported"
out=$(ctl plan -f "$SMALL" --prune 2>/dev/null) || lab_fail "plan --prune: exit $?"
grep -q "^  DELETE   tnl0/$LEAVER$" <<<"$out" || lab_fail "plan --prune: $out"
out=$(ctl apply -f "$SMALL" --prune 2>/dev/null) || lab_fail "apply --prune: exit $? ($out)"
for n in "${NODES[@]:0:$((N - 1))}"; do
  grep -q "^$n: 1 unchanged; peers: 1 deleted, $((N - 2)) unchanged; 1/1 up, $((N - 2))/$((N - 2)) peers up$" \
    <<<"$out" || lab_fail "prune on $n: $(grep "^$n:" <<<"$out")"
  got=$(peer_names "$n")
  [ "$got" = "$(others "$n" "${NODES[@]:0:$((N - 1))}")" ] || lab_fail "$n's peers after prune: $got"
done
grep -q "^apply: $((N - 1))/$((N - 1)) nodes converged" <<<"$out" || lab_fail "apply --prune: $out"
lab_ok "--prune removed the peer $LEAVER on the $((N - 1)) other nodes"

lab_log "$LEAVER joins again: one peer created on each other node"
out=$(ctl apply -f "$FLEET" --prune 2>/dev/null) || lab_fail "apply with $LEAVER back: exit $? ($out)"
# The device is updated too: one route more, to the joiner's prefix.
for n in "${NODES[@]:0:$((N - 1))}"; do
  grep -q "^$n: 1 updated; peers: 1 created, $((N - 2)) unchanged; " <<<"$out" ||
    lab_fail "join on $n: $(grep "^$n:" <<<"$out")"
done
grep -q "^$LEAVER: 1 unchanged; peers: $((N - 1)) unchanged; " <<<"$out" ||
  lab_fail "join on $LEAVER: $(grep "^$LEAVER:" <<<"$out")"
grep -q "^apply: $N/$N nodes converged, $N/$N tunnels up, $PEERS/$PEERS peers up" <<<"$out" ||
  lab_fail "apply: $(tail -1 <<<"$out")"
lab_ping n1 "${ADDR[$LEAVER]}" 3
lab_ok "$LEAVER back: each other node created one peer and left $((N - 2)) unchanged"

lab_log "the same nodes as hub-spoke (hub n1): spoke to spoke through the hub"
sed -i 's/^  type: mesh$/  type: hub-spoke\n  hub: n1/' "$FLEET"
lab_exec n1 sysctl -qw net.ipv4.ip_forward=1  # the hub routes between its peers
out=$(ctl apply -f "$FLEET" --prune 2>/dev/null) || lab_fail "apply hub-spoke: exit $? ($out)"
grep -q "^apply: $N/$N nodes converged, $N/$N tunnels up, $((2 * (N - 1)))/$((2 * (N - 1))) peers up" \
  <<<"$out" || lab_fail "apply hub-spoke: $(tail -1 <<<"$out")"
[ "$(peer_names n1)" = "$(others n1 "${NODES[@]}")" ] || lab_fail "the hub's peers: $(peer_names n1)"
[ "$(peer_names n2)" = n1 ] || lab_fail "spoke n2's peers: $(peer_names n2)"
allowed=$(lab_ctl n2 -o json peer get tnl0 n1 | jq -r '.allowedPrefixes[0]')
[ "$allowed" = 100.64.0.0/16 ] || lab_fail "spoke n2's hub peer allows $allowed first, want the pool"
lab_ping n2 "${ADDR[n3]}" 3
lab_ping "n$N" "10.244.7.1" 3
lab_ok "hub-spoke: the hub has $((N - 1)) peers, each spoke the hub (the pool); spokes ping spokes"
