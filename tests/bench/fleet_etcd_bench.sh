#!/bin/bash
# Fleet on etcd figures: N agents (default 50) in N namespaces on one lab bridge registering
# themselves in a 3-member etcd, two `tunnel-controller run --etcd` replicas (one leads), a
# multipoint mesh description; once the fleet has converged, REPS times each (median and max):
#  a. a node joining: from its registration (the PUT of its key, as an etcd watch sees it) until
#     every other node has it as a peer (their agents' watch streams, timestamped), it has all of
#     them, and it pings three others through the tunnels;
#  b. a node leaving (its agent killed with -9): from its registration going (the lease lapsed)
#     until it is gone from every other node, less the grace;
#  c. the leader killed with -9: until the standby's tunnelcontroller_leader is 1; then a join;
#  d. one etcd member of three (its raft leader) killed: a join and a leave, and the pings lost
#     meanwhile by a ping every 20 ms between two nodes through their tunnels;
#  e. all three etcd members stopped for OUTAGE s: the pings lost meanwhile (every 20 ms), the
#     time until no controller leads, and a description change (tnl0's MTU) stored as soon as
#     etcd is back: until every node has it.
# Not a test: it prints a table (targets PASS/MISS) and exits 0 whatever the figures, 1 when the
# lab itself fails. Every wait is bounded, the whole run by BENCH_TIMEOUT; everything it made is
# removed on exit.
#
# Usage: tests/bench/fleet_etcd_bench.sh [N]      (4 <= N, N + 3 * REPS <= 240; root, a built tree)
#   REPS=3           repetitions of each measurement
#   GRACE=5          the controllers' --grace (s)
#   CTL_TTL=5        the controllers' --lease_ttl (s; 5 s is its default)
#   AGENT_TTL=3      the agents' --fleet_lease_ttl (s): a killed agent's key goes this long after
#   OUTAGE=30        seconds etcd is stopped in e.
#   BENCH_JSON=FILE  also write the figures as JSON
#   BENCH_OUT=DIR    keep the results, the programs' logs and the timestamped streams there
#   BENCH_TIMEOUT=1800  seconds for the whole run; past that it stops and cleans up
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
N=${1:-50}
REPS=${REPS:-3}
GRACE=${GRACE:-5}
CTL_TTL=${CTL_TTL:-5}
AGENT_TTL=${AGENT_TTL:-3}
OUTAGE=${OUTAGE:-30}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
for v in N REPS GRACE CTL_TTL AGENT_TTL OUTAGE BENCH_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number, not '${!v}'" >&2; exit 2; }
done
# One /24 for every node and the joiners (198.18.0.N+1...), .250-.252 for etcd and controllers.
if [ "$N" -lt 4 ] || [ $((N + 3 * REPS)) -gt 240 ]; then
  echo "want 4 <= N and N + 3 * REPS <= 240 (N=$N, REPS=$REPS)" >&2
  exit 2
fi
if [ "$REPS" -lt 1 ] || [ "$CTL_TTL" -lt 2 ] || [ "$AGENT_TTL" -lt 2 ]; then
  echo "want REPS >= 1, CTL_TTL >= 2, AGENT_TTL >= 2" >&2
  exit 2
fi
# shellcheck source=scripts/lab.sh
source "$SOURCE_DIR/scripts/lab.sh"
# shellcheck source=tests/common/etcd/etcd_cluster.sh
source "$SOURCE_DIR/tests/common/etcd/etcd_cluster.sh"
# shellcheck source=scripts/fleet_lab.sh
source "$SOURCE_DIR/scripts/fleet_lab.sh"
for tool in etcd etcdctl jq curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool not found (make test-deps)" >&2; exit 1; }
done

FLEET=bench
ETCD_ADDR=198.18.0.250
declare -A CTL_ADDR=([c1]=198.18.0.251 [c2]=198.18.0.252)
PING_INTERVAL=0.02  # 50 pings a second through the tunnels during d. and e.
PING_RATE=50

T_START=$(date +%s.%N)
lab_init
CTL=$BIN_DIR/tunnel-controller
[ -x "$CTL" ] || lab_fail "missing $CTL: build first"
RES=$RUN/results.tsv
: >"$RES"
declare -a AUX_PIDS=()    # watch streams and pings: stopped on exit
declare -A WATCH_PID=()   # node -> its agent's `tunnelctl watch`
cleanup() {
  local rc=$? pid
  set +e
  [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null
  for pid in "${AUX_PIDS[@]}" "${WATCH_PID[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  if [ -n "${BENCH_OUT:-}" ]; then
    mkdir -p "$BENCH_OUT" && cp "$RUN"/*.log "$RUN"/*.events "$RUN"/*.tsv "$RUN"/*.txt "$BENCH_OUT"/ 2>/dev/null
    [ -n "${ETCD_CLUSTER_DIR:-}" ] && cp "$ETCD_CLUSTER_DIR"/m*.log "$BENCH_OUT"/ 2>/dev/null
  fi
  # Agents and controllers first (lab_cleanup): stopped, they revoke their leases in etcd,
  # which must still answer for that to be quick.
  (exit "$rc")
  lab_cleanup
  etcd_cluster_stop
  return "$rc"
}
trap cleanup EXIT
# A watchdog bounds the whole run: TERM to this shell, whose trap cleans up.
( trap 'kill $! 2>/dev/null; exit 0' TERM
  sleep "$BENCH_TIMEOUT" & wait $!
  echo "fleet_etcd_bench: stopped after BENCH_TIMEOUT=$BENCH_TIMEOUT s" >&2
  kill -TERM $$ ) &
WATCHDOG=$!

now() { date +%s.%N; }
between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
since() { between "$1" "$(now)"; }
later() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f\n", (a + 0 > b + 0 ? a : b) }'; }
fig() { printf 'fig\t%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; }
meta() { printf 'meta\t%s\t-\t%s\n' "$1" "$2" >>"$RES"; }
note() { printf 'note\t-\t-\t%s\n' "$*" >>"$RES"; echo "note: $*"; }
# stamp: each line of stdin with the time it came, in seconds since the epoch.
stamp() {
  local line
  while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}

echo "fleet_etcd_bench: N=$N REPS=$REPS GRACE=${GRACE}s CTL_TTL=${CTL_TTL}s AGENT_TTL=${AGENT_TTL}s" \
  "OUTAGE=${OUTAGE}s; $(nproc) CPUs, $(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg)"
meta n "$N"
meta reps "$REPS"
meta grace_s "$GRACE"
meta ctl_ttl_s "$CTL_TTL"
meta agent_ttl_s "$AGENT_TTL"
meta outage_s "$OUTAGE"
meta takeover_bound "$((CTL_TTL + 1))"
meta cpus "$(nproc)"

lab_log "etcd (3 members) and two controllers, each in a namespace of its own"
lab_add_node etcd "$ETCD_ADDR"
for c in c1 c2; do lab_add_node "$c" "${CTL_ADDR[$c]}"; done
# shellcheck disable=SC2034  # read by etcd_cluster.sh
ETCD_CLUSTER_NETNS="$LAB-etcd"
# shellcheck disable=SC2034
ETCD_CLUSTER_HOST=$ETCD_ADDR
etcd_cluster_start 3 || lab_fail "etcd did not start"
ETCD=$ETCD_ENDPOINTS
DESC=$RUN/fleet.yaml
write_description() {  # [MTU]
  {
    printf 'defaults:\n  mode: gre\n  key: auto\n  innerPool: 100.64.0.0/16\n  multipoint: true\n'
    [ -z "${1:-}" ] || printf '  mtu: %s\n' "$1"
    printf 'topology:\n  type: mesh\n'
  } >"$DESC"
}
write_description
out=$(ctl fleet set -f "$DESC" 2>&1) || lab_fail "fleet set: exit $? ($out)"

# Every registration's PUT and DELETE, timestamped as a watcher of etcd sees them (the
# controller's watch sees them at the same moment). It outlives etcd's outage: etcdctl's watch
# waits for etcd and resumes from its last revision.
ip netns exec "$LAB-etcd" env ETCDCTL_API=3 etcdctl --endpoints="$ETCD" \
  watch --prefix "/tunnel-agent/$FLEET/nodes/" > >(stamp >"$RUN/etcd-watch.events") \
  2>>"$RUN/etcd-watch.err" &
AUX_PIDS+=($!)
# event_time TYPE NODE AFTER: when the etcd watch saw TYPE (PUT, DELETE) of NODE's key after AFTER.
event_time() {
  awk -v want="$1" -v key="/tunnel-agent/$FLEET/nodes/$2" -v after="$3" '
    $2 == "PUT" || $2 == "DELETE" { type = $2; next }
    type != "" { if ($2 == key && type == want && $1 + 0 > after + 0) { print $1; exit } type = "" }
  ' "$RUN/etcd-watch.events"
}

# Node I: namespace nI at 198.18.0.I advertising 10.244.I.0/24 (10.244.I.1 on its loopback, a
# pod's address).
add_node() {
  local n=$1 i=${1#n}
  lab_add_node "$n" "198.18.0.$i"
  lab_exec "$n" ip addr add "10.244.$i.1/32" dev lo
}
spawn_agent() {
  local n=$1 i=${1#n}
  _lab_spawn_agent "$n" --node_name="$n" --fleet_etcd="$ETCD" --fleet="$FLEET" \
    --fleet_underlay="198.18.0.$i" --advertise_prefixes="10.244.$i.0/24" \
    --fleet_agent_endpoint="unix:$RUN/$n.sock" --fleet_lease_ttl="${AGENT_TTL}s"
}
# The agent's event stream (tunnelctl watch, a JSON object a line), each line timestamped, in
# $RUN/w-NODE.events.
start_watch() {
  local n=$1
  "$BIN_DIR/tunnelctl" --agent="unix:$RUN/$n.sock" -o json watch > >(stamp >"$RUN/w-$n.events") \
    2>>"$RUN/w-$n.err" &
  WATCH_PID[$n]=$!
}
# seen TYPE TEXT AFTER NODE...: "COUNT MIN MAX" of the first time each NODE's stream showed an
# event of TYPE holding TEXT after AFTER (COUNT: how many showed it).
seen() {
  local type="\"type\":\"$1\"" text=$2 after=$3 files=() n
  shift 3
  for n in "$@"; do files+=("$RUN/w-$n.events"); done
  # The times are printed as read: awk's own number format would round them to 6 digits.
  awk -v type="$type" -v text="$text" -v after="$after" '
    index($0, type) && index($0, text) && $1 + 0 > after + 0 && !(FILENAME in first) {
      first[FILENAME] = $1; count++
      if (min == "" || $1 + 0 < min + 0) min = $1
      if (max == "" || $1 + 0 > max + 0) max = $1
    }
    END { print count + 0, (min == "" ? 0 : min), (max == "" ? 0 : max) }
  ' "${files[@]}"
}
# seen_by_all TYPE TEXT AFTER NODE...: every NODE's stream showed it.
seen_by_all() {
  local type=$1 text=$2 after=$3
  shift 3
  [ "$(seen "$type" "$text" "$after" "$@" | cut -d' ' -f1)" = "$#" ]
}
# seen_count TYPE COUNT NODE...: "NODES MAX": how many NODE streams showed COUNT events of TYPE,
# and when the last of those showed its COUNT-th.
seen_count() {
  local type="\"type\":\"$1\"" count=$2 files=() n
  shift 2
  for n in "$@"; do files+=("$RUN/w-$n.events"); done
  awk -v type="$type" -v want="$count" '
    index($0, type) && ++seen[FILENAME] == want {
      nodes++
      if (max == "" || $1 + 0 > max + 0) max = $1
    }
    END { print nodes + 0, (max == "" ? 0 : max) }
  ' "${files[@]}"
}
all_have_peers() { [ "$(seen_count PEER_ADDED $(($# - 1)) "$@" | cut -d' ' -f1)" = "$#" ]; }
# The peer NODE, as an event of the agents' stream names it.
peer_named() { printf '"peer":{"name":"%s",' "$1"; }
peer_count() { lab_ctl "$1" -o json peer list tnl0 2>/dev/null | jq '.peers | length'; }
has_peers() { [ "$(peer_count "$1")" = "$2" ]; }
ping_prefix() {  # FROM TO: one ping from FROM's prefix address to TO's, through the tunnels
  lab_exec "$1" ping -q -n -c 1 -W 1 -I "10.244.${1#n}.1" "10.244.${2#n}.1" >/dev/null 2>&1
}
pings_three() {  # FROM TARGET...: FROM pings each target
  local t
  for t in "${@:2}"; do ping_prefix "$1" "$t" || return 1; done
}

no_leader() {
  local c
  for c in c1 c2; do [ "$(metric "$c" tunnelcontroller_leader)" = 1 ] && return 1; done
  return 0
}

lab_log "$N agents registering"
t0=$(now)
MEMBERS=()
for i in $(seq "$N"); do add_node "n$i"; MEMBERS+=("n$i"); done
t_ns=$(since "$t0")
t0=$(now)
for n in "${MEMBERS[@]}"; do spawn_agent "$n"; done
for n in "${MEMBERS[@]}"; do _lab_wait_agent "$n"; done
registered() {
  [ "$(etcdctl_cluster get --prefix --keys-only "/tunnel-agent/$FLEET/nodes/" | grep -c .)" = "$N" ]
}
wait_for 30 registered || lab_fail "not all $N agents registered within 30 s"
echo "namespaces: ${t_ns} s; agents up and registered: $(since "$t0") s"

# The agents' streams from before the fleet converges: every peer they get is in them.
for n in "${MEMBERS[@]}"; do start_watch "$n"; done
sleep 1  # every stream has sent its (empty) current set

lab_log "two controllers; the fleet converging"
t0=$(now)
start_controller c1
start_controller c2
wait_for 15 one_leader || lab_fail "no single leader 15 s after the controllers' start"
LEADER=$(leader)
wait_for 120 all_have_peers "${MEMBERS[@]}" ||
  lab_fail "not every node has $((N - 1)) peers 120 s after the controllers' start (see $LEADER's log)"
t_converged=$(between "$t0" "$(seen_count PEER_ADDED $((N - 1)) "${MEMBERS[@]}" | cut -d' ' -f2)")
for n in "${MEMBERS[@]}"; do
  has_peers "$n" $((N - 1)) || lab_fail "$n has $(peer_count "$n") peers, want $((N - 1))"
done
pings_three n1 "n$N" "n$((N / 2))" || lab_fail "n1 cannot ping across the mesh"
echo "$LEADER leads; $N nodes, $((N * (N - 1))) peers: every node had its $((N - 1)) peers ${t_converged} s after the controllers' start"
meta initial_convergence_s "$t_converged"

# mem_mib PID...: "PSS RSS" of those processes in all, MiB. PSS shares each page among the
# processes mapping it (the agents' binary and libraries are mapped N times, held once): the
# sum is what they take; RSS counts shared pages in every process.
mem_mib() {
  local pid pss=0 rss=0 p r
  for pid in "$@"; do
    read -r p r < <(awk '/^Pss:/ { p = $2 } /^Rss:/ { r = $2 } END { print p + 0, r + 0 }' \
      "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0 0)
    pss=$((pss + p))
    rss=$((rss + r))
  done
  echo "$((pss / 1024)) $((rss / 1024))"
}
memory() {  # WHEN: the memory of each part of the lab
  local agents=() n a c e w a_rss
  for n in "${MEMBERS[@]}"; do agents+=("${LAB_PIDS[$n]}"); done
  read -r a a_rss <<<"$(mem_mib "${agents[@]}")"
  c=$(mem_mib "${LAB_PIDS[c1]}" "${LAB_PIDS[c2]}" | cut -d' ' -f1)
  e=$(mem_mib "${ETCD_CLUSTER_PIDS[@]}" | cut -d' ' -f1)
  w=$(mem_mib "${WATCH_PID[@]}" | cut -d' ' -f1)
  echo "memory ($1, PSS): ${#agents[@]} agents $a MiB ($((a / ${#agents[@]})) MiB each; RSS $((a_rss / ${#agents[@]})) MiB each)," \
    "2 controllers $c MiB, 3 etcd members $e MiB; the bench's ${#WATCH_PID[@]} watch streams $w MiB"
  meta "memory_$1" "agents $a MiB ($((a / ${#agents[@]})) MiB each), controllers $c MiB, etcd $e MiB, the bench's watch streams $w MiB"
}
memory converged

NEXT=$((N + 1))
JOINED=
# join FIGURE REP: a new node (the next number) joins; its time into FIGURE.
join() {
  local figure=$1 rep=$2 n="n$NEXT" t_start t_reg t_others t_self t_ping others mid last
  NEXT=$((NEXT + 1))
  others=("${MEMBERS[@]}")
  mid=${others[$((${#others[@]} / 2))]}
  last=${others[-1]}
  add_node "$n"
  t_start=$(now)
  spawn_agent "$n"
  _lab_wait_agent "$n"
  reg_seen() { [ -n "$(event_time PUT "$n" "$t_start")" ]; }
  wait_for 10 reg_seen || lab_fail "$n's registration not seen in etcd within 10 s"
  t_reg=$(event_time PUT "$n" "$t_start")
  wait_for 15 seen_by_all PEER_ADDED "$(peer_named "$n")" "$t_start" "${others[@]}" ||
    lab_fail "$n not a peer of every node 15 s after it registered ($(seen PEER_ADDED "$(peer_named "$n")" "$t_start" "${others[@]}" | cut -d' ' -f1) of ${#others[@]})"
  t_others=$(seen PEER_ADDED "$(peer_named "$n")" "$t_start" "${others[@]}" | cut -d' ' -f3)
  wait_for 15 has_peers "$n" "${#others[@]}" || lab_fail "$n has $(peer_count "$n") peers, want ${#others[@]}"
  t_self=$(now)
  wait_for 10 pings_three "$n" "${others[0]}" "$mid" "$last" ||
    lab_fail "$n cannot ping ${others[0]} $mid $last within 10 s"
  t_ping=$(now)
  local done_at join_s
  done_at=$(later "$(later "$t_others" "$t_self")" "$t_ping")
  join_s=$(between "$t_reg" "$done_at")
  fig "$figure" "$rep" "$join_s"
  fig "${figure}_registered" "$rep" "$(between "$t_start" "$t_reg")"
  printf '%s: %s registered %.2f s after its agent started; after its registration: a peer of all %d others %.3f s, its own peers %.3f s, pings to %s %s %s %.3f s -> %.3f s\n' \
    "$figure" "$n" "$(between "$t_start" "$t_reg")" "${#others[@]}" "$(between "$t_reg" "$t_others")" \
    "$(between "$t_reg" "$t_self")" "${others[0]}" "$mid" "$last" "$(between "$t_reg" "$t_ping")" "$join_s"
  MEMBERS+=("$n")
  JOINED=$n
}
# leave FIGURE REP: the node that joined last killed with -9; from its registration going to
# its removal from every other node, less the grace, into FIGURE.
leave() {
  local figure=$1 rep=$2 n=$JOINED t_kill t_del first last stats m rest=()
  for m in "${MEMBERS[@]}"; do [ "$m" = "$n" ] || rest+=("$m"); done
  MEMBERS=("${rest[@]}")
  t_kill=$(now)
  lab_stop_agent "$n" KILL
  del_seen() { [ -n "$(event_time DELETE "$n" "$t_kill")" ]; }
  wait_for $((AGENT_TTL + 10)) del_seen || lab_fail "$n's registration still there $((AGENT_TTL + 10)) s after kill -9"
  t_del=$(event_time DELETE "$n" "$t_kill")
  wait_for $((GRACE + 15)) seen_by_all PEER_DELETED "$(peer_named "$n")" "$t_kill" "${MEMBERS[@]}" ||
    lab_fail "$n still a peer of $(( ${#MEMBERS[@]} - $(seen PEER_DELETED "$(peer_named "$n")" "$t_kill" "${MEMBERS[@]}" | cut -d' ' -f1) )) nodes $((GRACE + 15)) s after kill -9"
  stats=$(seen PEER_DELETED "$(peer_named "$n")" "$t_kill" "${MEMBERS[@]}")
  first=$(cut -d' ' -f2 <<<"$stats")
  last=$(cut -d' ' -f3 <<<"$stats")
  fig "$figure" "$rep" "$(awk -v a="$t_del" -v b="$last" -v g="$GRACE" 'BEGIN { printf "%.3f", b - a - g }')"
  [ "$figure" = leave_after_grace ] && fig leave_after_kill "$rep" "$(between "$t_kill" "$last")"
  printf '%s: %s killed; its registration gone %.2f s later; removed from the %d others %.3f-%.3f s after that (grace %d s)\n' \
    "$figure" "$n" "$(between "$t_kill" "$t_del")" "${#MEMBERS[@]}" "$(between "$t_del" "$first")" \
    "$(between "$t_del" "$last")" "$GRACE"
  awk -v a="$t_del" -v b="$first" -v g="$GRACE" 'BEGIN { exit !(b - a < g - 0.2) }' &&
    note "$n removed from a node $(between "$t_del" "$first") s after its registration went, before the grace of $GRACE s"
  ip netns del "$LAB-$n" 2>/dev/null || true  # its devices, which kill -9 left, with it
}
# ping_start FILE SECONDS: pings from n1's prefix to n2's every 20 ms for SECONDS, in the
# background, each reply timestamped (-D); ping_lost FILE waits for it (bounded by its count)
# and sets SENT, LOST and LOST_AT (when each lost one was sent, estimated from the replies
# around it). (Not in a subshell: only this shell can wait for the ping.)
PING_PID=
ping_start() {
  # Not through lab_exec: $! must be ping's own pid (ip netns exec execs it).
  ip netns exec "$LAB-n1" ping -n -D -i "$PING_INTERVAL" -W 1 -c $(($2 * PING_RATE)) \
    -I 10.244.1.1 10.244.2.1 >"$1" 2>&1 &
  PING_PID=$!
  AUX_PIDS+=("$PING_PID")
}
ping_lost() {
  wait "$PING_PID" || true  # ping exits 1 when a reply is missing: the figure says it
  local rx
  SENT=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$1")
  rx=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$1")
  if [ -z "$SENT" ] || [ -z "$rx" ]; then lab_fail "no ping summary in $1: $(cat "$1")"; fi
  LOST=$((SENT - rx))
  LOST_AT=$(awk -v sent="$SENT" -v gap="$PING_INTERVAL" '
    / bytes from .*icmp_seq=/ {
      seq = $0; sub(/.*icmp_seq=/, "", seq); sub(/ .*/, "", seq)
      ts = $1; gsub(/[][]/, "", ts); at[seq + 0] = ts
    }
    END {
      for (s = 1; s <= sent; s++) {
        if (s in at) { last = s; continue }
        if (last) printf "%.3f\n", at[last] + (s - last) * gap
      }
    }' "$1")
}
# lost_between FROM TO: how many of LOST_AT fall in [FROM, TO).
lost_between() {
  [ -n "$LOST_AT" ] || { echo 0; return; }
  awk -v a="$1" -v b="$2" '$1 + 0 >= a + 0 && $1 + 0 < b + 0 { n++ } END { print n + 0 }' <<<"$LOST_AT"
}
# lost_when REF NAME: the times of LOST_AT relative to REF, for a log line.
lost_when() {
  [ -n "$LOST_AT" ] || return 0
  echo " ($(awk -v r="$1" '{ printf "%s%+.2f s", (NR > 1 ? ", " : ""), $1 - r }' <<<"$LOST_AT") from $2)"
}

lab_log "a. and b.: a node joining, then leaving (kill -9), $REPS times"
for rep in $(seq "$REPS"); do
  join join "$rep"
  leave leave_after_grace "$rep"
done

lab_log "c.: the leader killed with -9, $REPS times; a join under the new leader"
for rep in $(seq "$REPS"); do
  LEADER=$(leader) || lab_fail "no single leader"
  t_kill=$(now)
  lab_stop_agent "$LEADER" KILL
  other=c1
  [ "$LEADER" = c1 ] && other=c2
  wait_for $((CTL_TTL + 5)) one_leader || lab_fail "no controller leads $((CTL_TTL + 5)) s after the leader's kill -9"
  t=$(since "$t_kill")
  [ "$(leader)" = "$other" ] || lab_fail "the leader is '$(leader)', want $other"
  fig takeover "$rep" "$t"
  echo "takeover: $LEADER killed, $other leads $t s later (lease TTL ${CTL_TTL} s)"
  start_controller "$LEADER"
  wait_for 10 stands_by "$LEADER" || lab_fail "$LEADER, started again, does not stand by"
  join join_new_leader "$rep"
  leave leave_after_grace "$((REPS + rep))"
done

lab_log "d.: one etcd member of three (the raft leader) killed, $REPS times; a join and a leave"
for rep in $(seq "$REPS"); do
  raft_leader=$(etcdctl_cluster endpoint status -w simple | awk -F', ' '$5 == "true" { print $1 }')
  member=
  for i in 0 1 2; do
    [ "$raft_leader" = "http://$ETCD_ADDR:${ETCD_CLUSTER_CLIENT_PORTS[$i]}" ] && member=$i
  done
  [ -n "$member" ] || lab_fail "no raft leader among the members: '$raft_leader'"
  window=$((AGENT_TTL + GRACE + 12))  # the join and the leave fit in it
  ping_start "$RUN/ping-d$rep.txt" "$window"
  sleep 0.5
  t_member=$(now)
  etcd_member_kill "$member"
  echo "etcd member m$member (the raft leader) killed"
  join join_member_down "$rep"
  leave leave_member_down "$rep"
  ping_lost "$RUN/ping-d$rep.txt"
  fig lost_member_down "$rep" "$LOST"
  echo "pings n1 -> n2 meanwhile: $LOST lost of $SENT$(lost_when "$t_member" "the member's kill")"
  etcd_member_start "$member" || lab_fail "etcd member m$member did not come back"
done

# deletions: the peers and tunnels the members' agents have deleted since their streams began.
deletions() {
  local n
  for n in "${MEMBERS[@]}"; do cat "$RUN/w-$n.events"; done |
    grep -c -e '"type":"PEER_DELETED"' -e '"type":"DELETED"' || true
}
lab_log "e.: all of etcd stopped for $OUTAGE s, $REPS times; a description change once it is back"
for rep in $(seq "$REPS"); do
  ping_start "$RUN/ping-e$rep.txt" $((OUTAGE + 6))
  sleep 1
  t_down=$(now)
  for i in 0 1 2; do etcd_member_kill "$i"; done
  wait_for $((CTL_TTL + 5)) no_leader || lab_fail "a controller still leads $((CTL_TTL + 5)) s after etcd went"
  stepdown=$(since "$t_down")
  fig stepdown "$rep" "$stepdown"
  sleep "$(awk -v o="$OUTAGE" -v s="$(since "$t_down")" 'BEGIN { d = o - s; print (d > 0 ? d : 0) }')"
  removed=$(deletions)
  # All three at once: one alone is no quorum, and never says it is healthy.
  for i in 0 1 2; do _etcd_member_spawn "$i"; done
  etcd_cluster_wait_healthy || lab_fail "etcd did not come back"
  t_back=$(now)
  # When a controller leads again, seen from the background (bounded, 20 s).
  ( for _ in $(seq 400); do one_leader && { now >"$RUN/leader-back-$rep"; exit 0; }; sleep 0.05; done ) &
  lead_poller=$!
  mtu=$((rep % 2 == 1 ? 1400 : 1380))
  write_description "$mtu"
  t_set0=$(now)
  out=$(ctl fleet set -f "$DESC" 2>&1) || lab_fail "fleet set after etcd's return: exit $? ($out)"
  t_set=$(now)
  wait_for 20 seen_by_all UPDATED "\"mtu\":$mtu," "$t_back" "${MEMBERS[@]}" ||
    lab_fail "mtu $mtu not on every node 20 s after etcd came back"
  t_conv=$(seen UPDATED "\"mtu\":$mtu," "$t_back" "${MEMBERS[@]}" | cut -d' ' -f3)
  fig converged_after_return "$rep" "$(between "$t_back" "$t_conv")"
  fig converged_after_set "$rep" "$(between "$t_set0" "$t_conv")"
  wait "$lead_poller" || true
  [ -s "$RUN/leader-back-$rep" ] || lab_fail "no controller leads 20 s after etcd came back"
  fig leader_after_return "$rep" "$(between "$t_back" "$(cat "$RUN/leader-back-$rep")")"
  for n in n1 "${MEMBERS[-1]}"; do
    got=$(lab_ctl "$n" -o json get tnl0 | jq -r .mtu)
    [ "$got" = "$mtu" ] || lab_fail "$n's tnl0 has mtu $got, want $mtu"
  done
  ping_lost "$RUN/ping-e$rep.txt"
  # Up to etcd's return (from a second before it went), and after: the change applied.
  fig lost_outage "$rep" "$(lost_between 0 "$t_back")"
  fig lost_after_return "$rep" "$(lost_between "$t_back" 9999999999)"
  after=$(deletions)
  [ "$after" = "$removed" ] || note "etcd's outage $rep: $((after - removed)) peers or tunnels deleted on the agents"
  echo "outage $rep: no leader $stepdown s after etcd went; etcd back: a controller leads" \
    "$(between "$t_back" "$(cat "$RUN/leader-back-$rep")") s later; fleet set of mtu $mtu from" \
    "$(between "$t_back" "$t_set0") s to $(between "$t_back" "$t_set") s, on all ${#MEMBERS[@]} nodes" \
    "$(between "$t_back" "$t_conv") s after etcd's return; pings n1 -> n2: $LOST lost of $SENT$(lost_when "$t_back" "etcd's return")"
done

memory end
lab_log "fleet_etcd_bench: N=$N, REPS=$REPS, $(since "$T_START" | cut -d. -f1) s in all"
meta wall_s "$(since "$T_START")"
/usr/bin/python3 "$SOURCE_DIR/tests/bench/fleet_etcd_report.py" "$RES" ${BENCH_JSON:+--json "$BENCH_JSON"}
