#!/bin/bash
# Upgrade figures: N tunnels (default 1000) on node A, traffic through eleven of them to node B
# (a ping every millisecond through gre0, 100 a second through each of gre1..gre10), then
#  1. a hot upgrade: a second tunnel-agent started with --takeover, the same flags and
#     --state_dir, while the first runs: the packets lost, and the seconds from the new
#     agent's start until it answers the API (and until the old one has exited);
#  2. kill -9 and an ordinary start: the seconds from the new agent's start until traffic
#     passes through gre0 again, through each of the eleven, and until all N are UP.
# Usage: tests/bench/upgrade_bench.sh [N]   (needs root, a built tree; AGENT_FLAGS adds agent
#        flags; BIN_DIR=dir picks other binaries). Not a test: it prints figures and exits 0
#        unless the lab itself fails. Without --takeover in the agent (tunnel-agent --help)
#        step 1 is skipped. SAVE_LOG=file keeps node A's agent log.
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
N=${1:-1000}
FLOWS=10                 # tunnels with a 100 pps flow, besides gre0's flood
FLOOD_S=${FLOOD_S:-8}    # seconds of traffic around the upgrade
source "$SOURCE_DIR/scripts/lab.sh"
lab_require_python_grpc

ulimit -Hn 1048576 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
GEN=$RUN/py
lab_python_messages "$GEN"
bench() {  # NODE ARGS...
  local node=$1
  shift
  "$PY" "$SOURCE_DIR/tests/bench/control_plane.py" "$GEN" "$RUN/$node.sock" "$@"
}
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b - a}'; }
# Tunnel i's far end (node B's address on it), as control_plane.py numbers them.
peer_of() { echo "10.$((64 + $1 / 16384)).$((($1 / 64) % 256)).$((($1 % 64) * 4 + 2))"; }

# The agent on A, in the background, with the bench's flags and whatever else is given.
A_FLAGS=(--grpc_listen="unix:$RUN/A.sock" --metrics_listen="127.0.0.1:$LAB_METRICS_PORT"
  --state_dir="$RUN/A-state" --max_tunnels=$((N + 10)))
# shellcheck disable=SC2206  # AGENT_FLAGS: several flags
A_FLAGS+=(${AGENT_FLAGS:-})
spawn_a() {
  ip netns exec "$LAB-A" "$BIN_DIR/tunnel-agent" "${A_FLAGS[@]}" "$@" >>"$RUN/A.log" 2>&1 &
  LAB_PIDS[A]=$!
}

echo "agent: $BIN_DIR/tunnel-agent ${AGENT_FLAGS:-}, $(nproc) CPUs, $(date -u +%F), load average $(cut -d" " -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086  # AGENT_FLAGS: several flags
lab_start_agent B ${AGENT_FLAGS:-}
bench B peer $((FLOWS + 1)) 0 bench
rm -f "$RUN/A.sock"
spawn_a
for _ in $(seq 200); do bench A start-time >/dev/null 2>&1 && break; sleep 0.05; done
lab_log "creating $N tunnels on node A (one ApplyTunnels)"
bench A apply "$N" 0 bench
lab_exec A ping -c 1 -W 2 "$(peer_of 0)" >/dev/null || lab_fail "no traffic through gre0"

# Traffic: one ping process per tunnel; each writes its summary to $RUN/ping.<i>. Each stops
# at its count: a deadline reached with a request just sent would count its reply as lost.
start_traffic() {
  local i
  lab_exec A ping -q -i 0.001 -w $((FLOOD_S * 3 + 5)) -c $((FLOOD_S * 1000)) "$(peer_of 0)" \
    >"$RUN/ping.0" 2>&1 &
  PINGS=($!)
  for i in $(seq 1 "$FLOWS"); do
    lab_exec A ping -q -i 0.01 -w $((FLOOD_S * 3 + 5)) -c $((FLOOD_S * 100)) "$(peer_of "$i")" \
      >"$RUN/ping.$i" 2>&1 &
    PINGS+=($!)
  done
}
# Waits for the flows (in this shell: a $(...) subshell cannot wait for them).
wait_traffic() {
  local pid
  for pid in "${PINGS[@]}"; do wait "$pid" || true; done
}
# Sent and lost of the flows: "gre0 (1 ms flood): 8000 sent, 0 lost; gre1..gre10 ...".
traffic_report() {
  local i sent received lost flows_sent=0 flows_lost=0 out=
  for i in $(seq 0 "$FLOWS"); do
    sent=$(sed -n 's/^\([0-9][0-9]*\) packets transmitted.*/\1/p' "$RUN/ping.$i")
    received=$(sed -n 's/.*, \([0-9][0-9]*\) received.*/\1/p' "$RUN/ping.$i")
    if [ -z "$sent" ] || [ -z "$received" ]; then
      echo "flow $i: no ping summary ($(head -c 200 "$RUN/ping.$i"))"
      return
    fi
    lost=$((sent - received))
    if [ "$i" = 0 ]; then
      out="gre0 (1 ms flood): $sent sent, $lost lost"
    else
      flows_sent=$((flows_sent + sent))
      flows_lost=$((flows_lost + lost))
    fi
  done
  echo "$out; gre1..gre$FLOWS (100 pps each): $flows_sent sent, $flows_lost lost"
}

agent_help=$("$BIN_DIR/tunnel-agent" --help 2>&1 || true)  # --help exits 1
if grep -q -- '--takeover' <<<"$agent_help"; then
  lab_log "hot upgrade under traffic: tunnel-agent --takeover"
  old_pid=${LAB_PIDS[A]}
  old_start=$(bench A start-time)
  start_traffic
  sleep 2
  # The watcher is warm before the new agent starts: its own start is not timed.
  bench A wait-new "$old_start" 30 >"$RUN/wait-new" 2>&1 &
  watcher=$!
  for _ in $(seq 500); do grep -q watching "$RUN/wait-new" && break; sleep 0.01; done
  t0=$(date +%s.%N)
  spawn_a --takeover
  if wait "$watcher"; then
    serving=$(awk -v a="$t0" 'NR == 2 {printf "%.3f", $1 - a}' "$RUN/wait-new")
  else
    serving="never (30 s)"
  fi
  for _ in $(seq 600); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$old_pid" 2>/dev/null; then
    old_exit="still running after 30 s"
    kill -TERM "$old_pid" 2>/dev/null || true
  else
    old_exit="$(since "$t0") s"
  fi
  echo "hot upgrade with $N tunnels: new agent serving $serving s after its start, old agent" \
    "gone after $old_exit"
  wait_traffic
  echo "hot upgrade, traffic: $(traffic_report)"
  # Where a lost packet went, if the agents counted it: every drop counter above zero.
  for n in A B; do
    lab_exec "$n" curl -sf "http://127.0.0.1:$LAB_METRICS_PORT/metrics" 2>/dev/null |
      grep -E '^tunnelagent_(tunnel|dataplane)_drops_total' | grep -v ' 0$' |
      sed "s/^/  drops on $n: /" || true
  done
  echo "  new agent's account: $(grep -o 'takeover: serving.*' "$RUN/A.log" | tail -n 1)"
  lab_exec A ping -c 1 -W 2 "$(peer_of 0)" >/dev/null && echo "after the upgrade: gre0 passes traffic"
else
  echo "hot upgrade: not measured ($BIN_DIR/tunnel-agent has no --takeover)"
fi

lab_log "kill -9 and an ordinary start"
# Across the crash, a ping every 10 ms through each of gre0..gre10, each reply with its time
# (-D): a tunnel forwards again at its first reply after the new agent's start.
PINGS=()
for i in $(seq 0 "$FLOWS"); do
  lab_exec A ping -D -i 0.01 -W 0.05 -w 8 "$(peer_of "$i")" >"$RUN/crash.$i" 2>&1 &
  PINGS+=($!)
done
sleep 1
pid=${LAB_PIDS[A]}
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
t0=$(date +%s.%N)
spawn_a
up=$(bench A wait-up "$N" 600) && up="$(since "$t0") s" || up="never (600 s)"
wait_traffic
first_reply() {  # FILE: seconds from t0 to the first reply after t0
  awk -v t="$t0" -F'[][]' '/bytes from/ && $2 > t {printf "%.3f", $2 - t; found = 1; exit}
    END {if (!found) print "never"}' "$1"
}
first=$(first_reply "$RUN/crash.0")
all_flows=0
for i in $(seq 0 "$FLOWS"); do
  at=$(first_reply "$RUN/crash.$i")
  if [ "$at" = never ]; then all_flows="never (gre$i)"; break; fi
  all_flows=$(awk -v a="$all_flows" -v b="$at" 'BEGIN {print (b > a ? b : a)}')
done
# Every tunnel forwards once it is in the engine: the agent logs when the last one is.
in_engine=never
if line=$(grep 'restore: .* forwarding on the devices kept' "$RUN/A.log" | tail -n 1); then
  in_engine=$(awk -v a="$t0" -v b="$(date -d "${line%% *}" +%s.%N)" 'BEGIN {printf "%.3f", b - a}')
fi
echo "kill -9 restart with $N tunnels: traffic through gre0 after $first s, through every one of" \
  "gre0..gre$FLOWS after $all_flows s, all $N in the engine after $in_engine s, all $N UP in" \
  "the API after $up (from the new agent's start)"
echo "  new agent's account: ${line#* }"
echo "load average at the end: $(cut -d" " -f1-3 /proc/loadavg)"
[ -z "${SAVE_LOG:-}" ] || cp "$RUN/A.log" "$SAVE_LOG"  # node A's agents, for a closer look
