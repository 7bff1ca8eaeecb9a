#!/bin/bash
# tunnel-controller against 12 agents in 12 namespaces on one bridge: a full mesh (132 tunnels,
# one link IPIP with its own MTU) converged within 10 s, pings through random tunnels, a second
# apply that changes nothing, status and drift, --prune and a foreign owner's tunnel left alone,
# an agent killed in the middle of an apply reported by name while the others converge, and
# `run`: its /metrics, a killed agent brought back, and the file re-read when it changes.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

N=${FLEET_NODES:-12}
MAX_CONVERGE_S=${FLEET_MAX_CONVERGE_S:-10}

lab_init
[ -x "$BIN_DIR/tunnel-controller" ] || lab_fail "missing $BIN_DIR/tunnel-controller: build first"
CTL=$BIN_DIR/tunnel-controller
RUN_PID=
stop_run() {
  if [ -n "$RUN_PID" ]; then
    kill -TERM "$RUN_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RUN_PID" 2>/dev/null || true
    RUN_PID=
  fi
}
trap 'rc=$?; stop_run; (exit $rc); lab_cleanup' EXIT

NODES=()
for i in $(seq "$N"); do NODES+=("n$i"); done

lab_log "$N agents in $N namespaces"
for i in $(seq "$N"); do lab_add_node "n$i" "198.18.0.$i"; done
for n in "${NODES[@]}"; do lab_start_agent "$n"; done

# write_fleet FILE [NODE...]: a mesh of the nodes given (default all); n1-n2 is IPIP, MTU 1400.
write_fleet() {
  local file=$1; shift
  local nodes=("$@") n
  [ ${#nodes[@]} -gt 0 ] || nodes=("${NODES[@]}")
  {
    echo "defaults:"
    echo "  mode: gre"
    echo "  key: auto"
    echo "  innerPool: 100.64.0.0/16"
    echo "nodes:"
    for n in "${nodes[@]}"; do
      echo "  - name: $n"
      echo "    agent: unix:$RUN/$n.sock"
      echo "    underlay: 198.18.0.${n#n}"
    done
    echo "topology:"
    echo "  type: mesh"
    echo "  overrides:"
    echo "    - {nodes: [n1, n2], mode: ipip, mtu: 1400}"
    echo "    - {nodes: [n9, n10], checksum: true, keepalive: {interval: 0.5s, retries: 3}}"
  } >"$file"
}
FLEET=$RUN/fleet.yaml
write_fleet "$FLEET"
LINKS=$((N * (N - 1) / 2))
TUNNELS=$((N * (N - 1)))

# tunnel_json NODE NAME
tunnel_json() { lab_ctl "$1" -o json get "$2"; }
# peer_inner NODE PEER: PEER's end of the link's /31, as NODE's tunnel has it.
peer_inner() {
  local a
  a=$(tunnel_json "$1" "tc-$2" | jq -r '.addresses[0]')
  a=${a%/*}
  echo "${a%.*}.$(( ${a##*.} ^ 1 ))"
}

lab_log "plan: everything to create"
out=$("$CTL" plan -f "$FLEET" --progress=plain 2>"$RUN/ctl.err") || lab_fail "plan: exit $? ($out)"
grep -q "^plan: $TUNNELS changes on $N/$N nodes$" <<<"$out" || lab_fail "plan: $(tail -1 <<<"$out")"
lab_ok "plan: $TUNNELS changes on $N nodes"
[ "$(lab_ctl n1 list | wc -l)" -le 1 ] || lab_fail "plan changed something on n1"
lab_ok "plan changed nothing"

lab_log "apply: full mesh, $LINKS links, $TUNNELS tunnels"
t0=$(date +%s.%N)
out=$("$CTL" apply -f "$FLEET" --progress=plain 2>"$RUN/ctl.err") || {
  cat "$RUN/ctl.err" >&2
  lab_fail "apply: exit $? ($out)"
}
t1=$(date +%s.%N)
elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
summary=$(tail -1 <<<"$out")
echo "$summary"
grep -q "^apply: $N/$N nodes converged, $TUNNELS/$TUNNELS tunnels up" <<<"$summary" ||
  lab_fail "apply: $summary"
awk -v e="$elapsed" -v m="$MAX_CONVERGE_S" 'BEGIN { exit !(e <= m) }' ||
  lab_fail "converged in ${elapsed}s, want <= ${MAX_CONVERGE_S}s"
lab_ok "$N nodes, $TUNNELS tunnels converged and up in ${elapsed}s (<= ${MAX_CONVERGE_S}s)"

json=$(tunnel_json n1 tc-n2)
[ "$(jq -r .mode <<<"$json")" = TUNNEL_MODE_IPIP ] || lab_fail "n1 tc-n2 is not IPIP: $json"
[ "$(jq -r .mtu <<<"$json")" = 1400 ] || lab_fail "n1 tc-n2 mtu is not 1400: $json"
[ "$(jq -r '.key // "none"' <<<"$json")" = none ] || lab_fail "n1 tc-n2 (ipip) has a key"
json=$(tunnel_json n3 tc-n4)
[ "$(jq -r .mode <<<"$json")" = TUNNEL_MODE_GRE ] || lab_fail "n3 tc-n4 is not GRE"
k34=$(jq -r .key <<<"$json")
k43=$(tunnel_json n4 tc-n3 | jq -r .key)
[ "$k34" = "$k43" ] && [ "$k34" != null ] || lab_fail "n3-n4 keys differ or are missing: $k34 $k43"
[ "$(jq -r .labels.owner <<<"$json")" = tunnel-controller ] || lab_fail "owner label: $json"
[ "$(jq -r .local <<<"$json")" = 198.18.0.3 ] && [ "$(jq -r .remote <<<"$json")" = 198.18.0.4 ] ||
  lab_fail "n3 tc-n4 local/remote: $json"
lab_ok "n1-n2 IPIP mtu 1400 without key; n3-n4 GRE with the same key ($k34) at both ends"
json=$(tunnel_json n9 tc-n10)
[ "$(jq -r .checksum <<<"$json")" = true ] || lab_fail "n9 tc-n10 has no checksum: $json"
[ "$(jq -r .keepalive.interval <<<"$json")" = 0.500s ] || lab_fail "n9 tc-n10 keepalive: $json"
for _ in $(seq 30); do
  replies=$(tunnel_json n9 tc-n10 | jq -r '.status.keepalive.replies // "0"')
  [ "$replies" -ge 1 ] && break
  sleep 0.1
done
[ "$replies" -ge 1 ] || lab_fail "n9 tc-n10: no keepalive reply from n10: $(tunnel_json n9 tc-n10 | jq -c .status)"
lab_ok "n9-n10 override: GRE checksums and keepalive (replies coming back)"

lab_log "pings through random tunnels"
seed=${FLEET_SEED:-$RANDOM}
echo "random pairs from seed $seed (FLEET_SEED=$seed to repeat)"
RANDOM=$seed
pairs=("n1 n2")  # the IPIP link, always
for _ in 1 2 3 4 5 6; do
  a=$((RANDOM % N + 1)) b=$((RANDOM % N + 1))
  [ "$a" = "$b" ] && b=$((a % N + 1))
  pairs+=("n$a n$b")
done
for p in "${pairs[@]}"; do
  read -r a b <<<"$p"
  lab_ping "$a" "$(peer_inner "$a" "$b")" 3
done
rx=$(tunnel_json n2 tc-n1 | jq -r '.status.counters.rxPackets // "0"')
[ "$rx" -gt 0 ] || lab_fail "n2 tc-n1 received nothing"
lab_ok "n2 tc-n1 counted $rx packets received"

lab_log "a second apply changes nothing"
out=$("$CTL" apply -f "$FLEET" --progress=plain 2>"$RUN/ctl.err") || lab_fail "apply again: exit $?"
for n in "${NODES[@]}"; do
  grep -q "^$n: $((N - 1)) unchanged; $((N - 1))/$((N - 1)) up$" <<<"$out" ||
    lab_fail "second apply on $n: $(grep "^$n:" <<<"$out")"
done
! grep -qE '^  (CREATE|UPDATE|RECREATE|DELETE) ' <<<"$out" || lab_fail "second apply changed: $out"
lab_ok "every node: $((N - 1)) unchanged"

lab_log "status, and drift"
out=$("$CTL" status -f "$FLEET" --progress=plain 2>/dev/null) || lab_fail "status: exit $? ($out)"
grep -q "^status: $N/$N nodes converged$" <<<"$out" || lab_fail "status: $out"
lab_ok "status: all converged (exit 0)"
lab_ctl n3 delete tc-n5
rc=0
out=$("$CTL" status -f "$FLEET" --progress=plain 2>/dev/null) || rc=$?
[ "$rc" = 2 ] || lab_fail "status with drift: exit $rc, want 2"
grep -q "^n3: drift (what apply --prune would do): CREATE tc-n5$" <<<"$out" || lab_fail "status drift: $out"
grep -q "^status: $((N - 1))/$N nodes converged; not converged: n3$" <<<"$out" || lab_fail "status: $out"
lab_ok "status: n3 drifts (CREATE tc-n5), exit 2"
out=$("$CTL" apply -f "$FLEET" --progress=plain 2>/dev/null) || lab_fail "apply to repair: exit $?"
grep -q "^  CREATE   tc-n5$" <<<"$out" || lab_fail "apply did not recreate n3 tc-n5: $out"
lab_ok "apply made n3 tc-n5 again"

lab_log "--prune: a node leaves the file; a foreign owner's tunnel stays"
lab_ctl n1 create foreign1 mode gre local 198.18.0.1 remote 198.18.0.$N key 7 \
  address 10.99.0.1/30 label owner=someone-else >/dev/null
lab_ctl n1 create unowned1 mode ipip local 198.18.0.1 remote 198.18.0.$N address 10.99.0.5/30 >/dev/null
SMALL=$RUN/fleet-small.yaml
write_fleet "$SMALL" "${NODES[@]:0:$((N - 1))}"
out=$("$CTL" apply -f "$SMALL" --progress=plain 2>/dev/null) || lab_fail "apply without n$N: exit $?"
grep -q "not in the file (kept; --prune deletes): tc-n$N" <<<"$out" || lab_fail "no hint of tc-n$N: $out"
lab_ctl n1 get "tc-n$N" >/dev/null || lab_fail "apply without --prune deleted n1 tc-n$N"
lab_ok "without --prune: tc-n$N kept and reported"
out=$("$CTL" plan -f "$SMALL" --prune --progress=plain 2>/dev/null) || lab_fail "plan --prune: exit $?"
grep -q "^  DELETE   tc-n$N$" <<<"$out" || lab_fail "plan --prune: $out"
out=$("$CTL" apply -f "$SMALL" --prune --progress=plain 2>/dev/null) || lab_fail "apply --prune: exit $?"
for n in "${NODES[@]:0:$((N - 1))}"; do
  grep -q "^$n: 1 deleted, $((N - 2)) unchanged" <<<"$out" || lab_fail "prune on $n: $out"
done
names=$(lab_ctl n1 -o json list | jq -r '[.tunnels[].name] | sort | join(" ")')
case " $names " in *" tc-n$N "*) lab_fail "n1 still has tc-n$N: $names" ;; esac
case " $names " in *" foreign1 "*) ;; *) lab_fail "n1 lost foreign1 (owner someone-else): $names" ;; esac
case " $names " in *" unowned1 "*) ;; *) lab_fail "n1 lost unowned1 (no owner): $names" ;; esac
lab_ok "--prune deleted tc-n$N on the $((N - 1)) nodes; foreign1 and unowned1 untouched"
lab_ctl n1 delete foreign1
lab_ctl n1 delete unowned1

lab_log "an agent killed in the middle of an apply"
# n5 is frozen, so its ApplyTunnels is surely in flight, then killed while the others finish.
kill -STOP "${LAB_PIDS[n5]}"
"$CTL" apply -f "$FLEET" --progress=plain --timeout=3 --retries=2 >"$RUN/apply.out" 2>"$RUN/apply.err" &
apply_pid=$!
sleep 1
lab_stop_agent n5 KILL
rc=0
wait "$apply_pid" || rc=$?
out=$(cat "$RUN/apply.out")
[ "$rc" = 2 ] || lab_fail "apply with n5 killed: exit $rc, want 2 ($out)"
grep -q "^n5: FAILED: applying the node's tunnels failed.*(ApplyTunnels: " <<<"$out" || lab_fail "n5 not reported by name: $out"
grep -q "^apply: $((N - 1))/$N nodes converged, .*; failed: n5$" <<<"$out" || lab_fail "apply: $out"
lab_ok "n5 reported ($(grep '^n5:' <<<"$out" | cut -c1-90)...), the other $((N - 1)) converged, exit 1"
lab_start_agent n5
out=$("$CTL" apply -f "$FLEET" --progress=plain 2>/dev/null) || lab_fail "apply after n5 is back: exit $? ($out)"
grep -q "^apply: $N/$N nodes converged, $TUNNELS/$TUNNELS tunnels up" <<<"$out" || lab_fail "apply: $out"
lab_ping n5 "$(peer_inner n5 n6)" 3
lab_ok "n5 back: all $N converged"

lab_log "run: metrics, an agent down and back, the file re-read"
# Inside n1's namespace, so that its metrics port is private to the lab.
# Not through lab_exec (a function: $! would be the subshell's pid, not the controller's).
ip netns exec "$LAB-n1" "$CTL" run -f "$FLEET" --interval=1s --prune \
  --metrics_listen=127.0.0.1:9477 --timeout=2 --retries=1 >"$RUN/run.out" 2>"$RUN/run.err" &
RUN_PID=$!
cmetric() {
  lab_exec n1 curl -sf "http://127.0.0.1:9477/metrics" |
    awk -v s="$1" '$1 == s && !found { print $2; found = 1 }'
}
# wait_metric SERIES VALUE [TRIES]: polls every 0.2 s.
wait_metric() {
  local got= _
  for _ in $(seq "${3:-100}"); do
    got=$(cmetric "$1" || true)
    [ "$got" = "$2" ] && return 0
    sleep 0.2
  done
  cat "$RUN/run.out" "$RUN/run.err" >&2
  lab_fail "$1 = ${got:-absent}, want $2"
}
wait_metric tunnelcontroller_converged 1
[ "$(cmetric tunnelcontroller_nodes)" = "$N" ] || lab_fail "tunnelcontroller_nodes"
[ "$(cmetric tunnelcontroller_nodes_reachable)" = "$N" ] || lab_fail "tunnelcontroller_nodes_reachable"
[ "$(cmetric tunnelcontroller_tunnels_desired)" = "$TUNNELS" ] || lab_fail "tunnels_desired"
[ "$(cmetric tunnelcontroller_tunnels_actual)" = "$TUNNELS" ] || lab_fail "tunnels_actual"
[ "$(cmetric tunnelcontroller_tunnels_up)" = "$TUNNELS" ] || lab_fail "tunnels_up"
[ "$(cmetric 'tunnelcontroller_node_reachable{node="n7"}')" = 1 ] || lab_fail "node_reachable n7"
[ "$(cmetric 'tunnelcontroller_apply_errors_total{node="n7"}')" = 0 ] || lab_fail "apply_errors n7"
ts=$(cmetric tunnelcontroller_last_apply_timestamp_seconds)
awk -v t="$ts" -v now="$(date +%s)" 'BEGIN { exit !(t > now - 60 && t <= now + 1) }' ||
  lab_fail "last_apply_timestamp $ts"
count=$(cmetric tunnelcontroller_reconcile_duration_seconds_count)
[ "${count:-0}" -ge 1 ] || lab_fail "reconcile_duration_seconds_count ${count:-absent}"
lab_ok "run converged: every metric as expected ($count passes so far)"
if command -v promtool >/dev/null; then
  lab_exec n1 curl -sf http://127.0.0.1:9477/metrics | promtool check metrics ||
    lab_fail "promtool check metrics"
  lab_ok "promtool check metrics: clean"
fi

lab_stop_agent n7 KILL
wait_metric 'tunnelcontroller_node_reachable{node="n7"}' 0
wait_metric tunnelcontroller_converged 0
errors=$(cmetric 'tunnelcontroller_apply_errors_total{node="n7"}')
[ "${errors%.*}" -ge 1 ] || lab_fail "apply_errors_total{n7} = $errors"
grep -q "n7: FAILED: " "$RUN/run.out" || lab_fail "run did not report n7: $(cat "$RUN/run.out")"
lab_ok "n7 killed: reachable 0, converged 0, apply_errors_total $errors, reported by name"
lab_start_agent n7
wait_metric 'tunnelcontroller_node_reachable{node="n7"}' 1
wait_metric tunnelcontroller_converged 1
lab_ok "n7 back: converged 1"

# A broken file is reported and the previous fleet kept.
cp "$FLEET" "$RUN/fleet.good"
printf 'nodes: [\n' >"$FLEET"
for _ in $(seq 50); do grep -q "keeping the previous fleet" "$RUN/run.err" && break; sleep 0.2; done
grep -q "changed but is not usable; keeping the previous fleet: $FLEET:2:1: bad YAML" "$RUN/run.err" ||
  lab_fail "run did not report the broken file: $(tail -3 "$RUN/run.err")"
sleep 1.5  # at least one more pass with the previous fleet
[ "$(cmetric tunnelcontroller_converged)" = 1 ] || lab_fail "converged after a broken file"
[ "$(cmetric tunnelcontroller_nodes)" = "$N" ] || lab_fail "nodes after a broken file"
lab_ok "a broken file is reported and the previous fleet kept"

# The file changes: n3-n4 becomes IPIP; run picks it up without a restart.
write_fleet "$FLEET"
sed -i 's/^    - {nodes: \[n1, n2\], mode: ipip, mtu: 1400}$/&\n    - {nodes: [n3, n4], mode: ipip}/' "$FLEET"
for _ in $(seq 50); do
  [ "$(tunnel_json n3 tc-n4 | jq -r .mode)" = TUNNEL_MODE_IPIP ] && break
  sleep 0.2
done
[ "$(tunnel_json n3 tc-n4 | jq -r .mode)" = TUNNEL_MODE_IPIP ] ||
  lab_fail "run did not apply the changed file: $(tail -5 "$RUN/run.err")"
[ "$(tunnel_json n4 tc-n3 | jq -r .mode)" = TUNNEL_MODE_IPIP ] || lab_fail "n4 tc-n3 not IPIP"
wait_metric tunnelcontroller_converged 1
lab_ping n3 "$(peer_inner n3 n4)" 3
grep -q "changed: $N nodes" "$RUN/run.err" || lab_fail "run did not log the change"
lab_ok "the changed file applied by run: n3-n4 now IPIP, pings"

pid=$RUN_PID
kill -TERM "$pid"
rc=0
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && lab_fail "run did not stop on SIGTERM"
wait "$pid" || rc=$?
RUN_PID=
[ "$rc" = 0 ] || lab_fail "run exited $rc after SIGTERM with everything converged, want 0"
grep -q "tunnel-controller: stopped" "$RUN/run.err" || lab_fail "run did not say it stopped"
lab_ok "run stopped on SIGTERM, exit 0"
