#!/bin/bash
# Control-plane figures: CreateTunnel latency for N tunnels (all of them, and the last 1,000:
# the cost at N), ListTunnels of every tunnel (paged), one ApplyTunnels of 1,000 new tunnels
# until all are UP, the agent's resident memory, then restart time with N+1,000 tunnels (from
# exec to every tunnel UP and to traffic through one of them), with devices removed at stop
# (the default) and kept (--keep_devices).
# Usage: tests/bench/control_plane_bench.sh [N]   (default 1000; needs root, a built tree)
#        APPLY=count of the ApplyTunnels step (1000; 0 skips it), AGENT_FLAGS adds agent flags,
#        BIN_DIR=dir picks other binaries (an older build, for a before/after comparison).
#        tests/bench/control_plane_bench.sh scale N   (start and SIGTERM with N tunnels, below)
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
N=${1:-1000}
PY=/usr/bin/python3
source "$SOURCE_DIR/scripts/lab.sh"

# control_plane_bench.sh scale N: start and stop at scale. The state file is written with N
# tunnels (no API calls, so N may be large), then: seconds from exec until the API answers
# (GetAgentInfo), until all N tunnels are UP, and from SIGTERM until the agent has exited, with
# the devices it leaves behind counted. AGENT=path picks another tunnel-agent binary (an older
# build, for a before/after comparison), AGENT_FLAGS adds flags. Every wait is bounded by
# SCALE_TIMEOUT seconds. Memory: each tunnel costs the agent and the kernel about 4 MiB with
# the defaults (2 workers, 8 reads in flight per device); 10,000 need
# AGENT_FLAGS="--dataplane_workers=1 --device_reads_per_tunnel=1" on a 24 GiB machine.
if [ "${1:-}" = scale ]; then
  N=${2:-1000}
  AGENT=${AGENT:-$BIN_DIR/tunnel-agent}
  SCALE_TIMEOUT=${SCALE_TIMEOUT:-600}
  lab_init
  lab_add_node A 198.18.0.1
  mkdir -p "$RUN/A-state"
  # Keyed GRE tunnels to 198.18.0.2 (on-link: every one comes UP), one /30 each in 10.64/10.
  "$PY" - "$N" >"$RUN/A-state/tunnels.json" <<'PYEOF'
import json, sys
n = int(sys.argv[1])
tunnels = [{"name": f"gre{i}", "mode": "TUNNEL_MODE_GRE", "local": "198.18.0.1",
            "remote": "198.18.0.2", "key": i + 1,
            "addresses": [f"10.{64 + i // 16384}.{(i // 64) % 256}.{(i % 64) * 4 + 1}/30"]}
           for i in range(n)]
print(json.dumps({"formatVersion": 1, "tunnels": tunnels}))
PYEOF
  GEN=$RUN/py
  lab_python_messages "$GEN"
  t0=$(date +%s.%N)
  ip netns exec "$LAB-A" "$AGENT" --grpc_listen="unix:$RUN/A.sock" \
    --metrics_listen=127.0.0.1:$LAB_METRICS_PORT --state_dir="$RUN/A-state" \
    --max_tunnels=$((N + 10)) ${AGENT_FLAGS:-} >>"$RUN/A.log" 2>&1 &
  LAB_PIDS[A]=$!
  # Prints "ready S" when GetAgentInfo first answers, "up S" when all N are UP (seconds
  # since $t0), and the worst GetAgentInfo latency seen while the tunnels came up.
  "$PY" - "$GEN" "$RUN/A.sock" "$N" "$t0" "$SCALE_TIMEOUT" <<'PYEOF'
import sys, time
import grpc
gen, sock, n, t0, bound = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
sys.path.insert(0, gen)
from tunnelagent.v1 import tunnel_pb2 as pb
ch = grpc.insecure_channel(f"unix:{sock}")
svc = "/tunnelagent.v1.TunnelService/"
info = ch.unary_unary(svc + "GetAgentInfo", request_serializer=pb.GetAgentInfoRequest.SerializeToString,
                      response_deserializer=pb.AgentInfo.FromString)
lst = ch.unary_unary(svc + "ListTunnels", request_serializer=pb.ListTunnelsRequest.SerializeToString,
                     response_deserializer=pb.ListTunnelsResponse.FromString)
while True:
    if time.time() - t0 > bound: sys.exit("the API did not answer in time")
    try:
        info(pb.GetAgentInfoRequest(), timeout=0.2)
        break
    except grpc.RpcError:
        time.sleep(0.01)
print(f"ready {time.time() - t0:.2f}", flush=True)
worst = 0.0
while True:
    if time.time() - t0 > bound:
        print("up never (not all UP in time)", flush=True)
        break
    s = time.time()
    try:
        info(pb.GetAgentInfoRequest(), timeout=30)
        worst = max(worst, time.time() - s)
        up, token = 0, ""
        while True:  # pages of at most 1000
            r = lst(pb.ListTunnelsRequest(page_size=1000, page_token=token,
                                          state=pb.OPER_STATE_UP), timeout=30)
            up += len(r.tunnels)
            token = r.next_page_token
            if not token: break
        if up >= n: break
    except grpc.RpcError:
        pass
    # Listing thousands of tunnels costs the agent CPU the restore needs: not too often.
    time.sleep(0.2 if n <= 2000 else 1.0)
print(f"up {time.time() - t0:.2f}", flush=True)
print(f"worst_info {worst * 1000:.0f}", flush=True)
PYEOF
  devices() { ip -n "$LAB-A" -o link show | grep -c ': gre[0-9]*[:@]' || true; }
  echo "devices before SIGTERM: $(devices)"
  pid=${LAB_PIDS[A]}
  t1=$(date +%s.%N)
  kill -TERM "$pid"
  for _ in $(seq $((SCALE_TIMEOUT * 20))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  t2=$(date +%s.%N)
  if kill -0 "$pid" 2>/dev/null; then echo "still running after ${SCALE_TIMEOUT} s: killed"; kill -KILL "$pid"; fi
  wait "$pid" 2>/dev/null || true
  unset "LAB_PIDS[A]"
  echo "sigterm $(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.2f", b - a}')"
  echo "devices after exit: $(devices)"
  echo "agent's log, last lines:"
  tail -n 4 "$RUN/A.log"
  exit 0
fi

APPLY=${APPLY:-1000}
TOTAL=$((N + APPLY))  # tunnels on node A after the ApplyTunnels step
# Each tunnel holds descriptors (its device, and the agent's reads of it): 10,000 need more
# than the usual 1,024 or 20,000 open files.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
GEN=$RUN/py
lab_python_messages "$GEN"
bench() { "$PY" "$SOURCE_DIR/tests/bench/control_plane.py" "$GEN" "$RUN/A.sock" "$@"; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/${LAB_PIDS[A]}/status"; }

echo "agent: $BIN_DIR/tunnel-agent ${AGENT_FLAGS:-}, $(nproc) CPUs, $(date -u +%F), load average $(cut -d" " -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086  # AGENT_FLAGS: several flags
lab_start_agent A --max_tunnels=$((TOTAL + 10)) ${AGENT_FLAGS:-}
# shellcheck disable=SC2086
lab_start_agent B ${AGENT_FLAGS:-}
lab_ctl B create gre0 mode gre local 198.18.0.2 remote 198.18.0.1 key 1 address 10.64.0.2/30 >/dev/null
lab_log "creating $N tunnels on node A"
bench create "$N"
echo "agent resident memory with $N tunnels: $(rss)"
lab_exec A ping -c 1 -W 2 10.64.0.2 >/dev/null && echo "traffic through gre0: ok"
lab_log "listing $N tunnels"
bench list 5
if [ "$APPLY" -gt 0 ]; then
  lab_log "one ApplyTunnels of $APPLY new tunnels"
  bench apply "$APPLY" "$N" bench
  echo "agent resident memory with $TOTAL tunnels: $(rss)"
  bench list 5
fi

# Node A's agent again, in the background, with the bench's flags and those given.
start_agent_a() {
  rm -f "$RUN/A.sock"
  ip netns exec "$LAB-A" "$BIN_DIR/tunnel-agent" --grpc_listen="unix:$RUN/A.sock" \
    --metrics_listen=127.0.0.1:$LAB_METRICS_PORT --state_dir="$RUN/A-state" \
    --max_tunnels=$((TOTAL + 10)) ${AGENT_FLAGS:-} "$@" >>"$RUN/A.log" 2>&1 &
  LAB_PIDS[A]=$!
}

KEPT=no  # whether the running agent keeps its devices when stopped
restart() {  # flags...
  local previous=$KEPT
  lab_stop_agent A TERM
  case " $* " in *" --keep_devices "*) KEPT=yes ;; *) KEPT=no ;; esac
  local t0 up ping_at
  t0=$(date +%s.%N)
  start_agent_a "$@"
  bench wait-up "$TOTAL" 600 >/dev/null
  up=$(date +%s.%N)
  for _ in $(seq 500); do
    lab_exec A ping -c 1 -W 0.2 10.64.0.2 >/dev/null 2>&1 && break
  done
  ping_at=$(date +%s.%N)
  echo "restart (devices kept by the previous stop: $previous): all $TOTAL tunnels UP $(awk -v a="$t0" -v b="$up" 'BEGIN{printf "%.2f", b - a}') s after start, traffic through gre0 after $(awk -v a="$t0" -v b="$ping_at" 'BEGIN{printf "%.2f", b - a}') s"
}
lab_log "restart: devices removed at stop and made again at start"
restart --keep_devices
lab_log "restart: devices kept at stop (--keep_devices) and re-attached at start"
restart --keep_devices

# kill -9: the devices stay with everything on them, and the new agent forwards on them before
# it re-checks them; traffic through gre0 is timed from the start, not after all are UP.
crash_restart() {  # flags...
  lab_stop_agent A KILL
  local t0 up ping_at
  t0=$(date +%s.%N)
  start_agent_a "$@"
  for _ in $(seq 1000); do
    lab_exec A ping -c 1 -W 0.05 10.64.0.2 >/dev/null 2>&1 && break
  done
  ping_at=$(date +%s.%N)
  bench wait-up "$TOTAL" 600 >/dev/null
  up=$(date +%s.%N)
  echo "restart after kill -9: traffic through gre0 after $(awk -v a="$t0" -v b="$ping_at" 'BEGIN{printf "%.2f", b - a}') s, all $TOTAL tunnels UP $(awk -v a="$t0" -v b="$up" 'BEGIN{printf "%.2f", b - a}') s after start"
}
lab_log "restart after kill -9: the devices the crash left are re-attached, forwarding first"
crash_restart --keep_devices
echo "load average at the end: $(cut -d" " -f1-3 /proc/loadavg)"
