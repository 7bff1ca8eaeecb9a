#!/bin/bash
# Control-plane figures: CreateTunnel latency for N tunnels, then restart time with N tunnels
# (from exec to every tunnel UP and to traffic through one of them), with devices removed at
# stop (the default) and kept (--keep_devices), and the agent's resident memory.
# Usage: tests/bench/control_plane_bench.sh [N]   (default 1000; needs root, a built tree)
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
N=${1:-1000}
PY=/usr/bin/python3
source "$SOURCE_DIR/scripts/lab.sh"
lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
GEN=$RUN/py
mkdir -p "$GEN"
protoc --python_out="$GEN" -I"$SOURCE_DIR/proto" -I/usr/include tunnelagent/v1/tunnel.proto
bench() { "$PY" "$SOURCE_DIR/tests/bench/control_plane.py" "$GEN" "$RUN/A.sock" "$@"; }

lab_start_agent A --max_tunnels=$((N + 10))
lab_start_agent B
lab_ctl B create gre0 mode gre local 198.18.0.2 remote 198.18.0.1 key 1 address 10.64.0.2/30 >/dev/null
lab_log "creating $N tunnels on node A"
bench create "$N"
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/${LAB_PIDS[A]}/status"; }
echo "agent resident memory with $N tunnels: $(rss)"
lab_exec A ping -c 1 -W 2 10.64.0.2 >/dev/null && echo "traffic through gre0: ok"

KEPT=no  # whether the running agent keeps its devices when stopped
restart() {  # flags...
  local previous=$KEPT
  lab_stop_agent A TERM
  case " $* " in *" --keep_devices "*) KEPT=yes ;; *) KEPT=no ;; esac
  local t0 up ping_at
  t0=$(date +%s.%N)
  rm -f "$RUN/A.sock"
  ip netns exec "$LAB-A" "$BIN_DIR/tunnel-agent" --grpc_listen="unix:$RUN/A.sock" \
    --metrics_listen=127.0.0.1:$LAB_METRICS_PORT --state_dir="$RUN/A-state" \
    --max_tunnels=$((N + 10)) "$@" >>"$RUN/A.log" 2>&1 &
  LAB_PIDS[A]=$!
  bench wait-up "$N" >/dev/null
  up=$(date +%s.%N)
  for _ in $(seq 500); do
    lab_exec A ping -c 1 -W 0.2 10.64.0.2 >/dev/null 2>&1 && break
  done
  ping_at=$(date +%s.%N)
  echo "restart (devices kept by the previous stop: $previous): all $N tunnels UP $(awk -v a="$t0" -v b="$up" 'BEGIN{printf "%.2f", b - a}') s after start, traffic through gre0 after $(awk -v a="$t0" -v b="$ping_at" 'BEGIN{printf "%.2f", b - a}') s"
}
lab_log "restart: devices removed at stop and made again at start"
restart --keep_devices
lab_log "restart: devices kept at stop (--keep_devices) and re-attached at start"
restart --keep_devices
