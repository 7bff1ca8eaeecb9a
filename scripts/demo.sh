#!/bin/bash
# make demo: two nodes in network namespaces, a tunnel-agent on each, a GRE tunnel created on
# both over gRPC, traffic through it, and the agents' metrics. Cleans up after itself.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
: "${BIN_DIR:=$HERE/../build/bin}"
source "$HERE/lab.sh"

run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

lab_init
lab_log "Two nodes on one underlay bridge: node-a 198.18.0.1, node-b 198.18.0.2"
lab_add_node a 198.18.0.1
lab_add_node b 198.18.0.2
lab_start_agent a
lab_start_agent b
echo "tunnel-agent runs in each namespace (gRPC on unix:$RUN/<node>.sock, metrics on :$LAB_METRICS_PORT)"

lab_log "Creating gre1 on both nodes over gRPC (key 42, 10.10.0.0/30 inside)"
run lab_ctl a create gre1 mode gre local 198.18.0.1 remote 198.18.0.2 key 42 \
  address 10.10.0.1/30 route 10.20.2.0/24 >/dev/null
run lab_ctl b create gre1 mode gre local 198.18.0.2 remote 198.18.0.1 key 42 \
  address 10.10.0.2/30 route 10.20.1.0/24 >/dev/null
# A host network behind each node: reached through the tunnel by its route alone.
lab_exec a ip addr add 10.20.1.1/24 dev lo
lab_exec b ip addr add 10.20.2.1/24 dev lo
run lab_ctl a list

lab_log "Traffic through the tunnel"
run lab_exec a ping -c 3 -i 0.2 -W 1 10.10.0.2
run lab_exec a ping -c 3 -i 0.2 -W 1 -I 10.20.1.1 10.20.2.1
if command -v iperf3 >/dev/null; then
  lab_exec b timeout 30 iperf3 -s -1 -B 10.10.0.2 >/dev/null 2>&1 &
  iperf_server=$!
  # The server listens once it has started: a client sooner finds no one.
  for _ in $(seq 50); do
    lab_exec b ss -Htln 'sport = :5201' | grep -q . && break
    sleep 0.1
  done
  echo "iperf3, 3 s of TCP from node-a to node-b through gre1:"
  iperf_out=$(lab_exec a timeout 20 iperf3 -c 10.10.0.2 -t 3 -f g 2>&1) ||
    lab_fail "iperf3 through gre1 failed: $iperf_out"
  figures=$(awk '/ sender$| receiver$/' <<<"$iperf_out")
  [ -n "$figures" ] || lab_fail "iperf3 printed no figure: $iperf_out"
  echo "$figures"
  wait "$iperf_server" || true
fi

lab_log "The tunnel as node-a's agent reports it"
run lab_ctl a get gre1
lab_log "Metrics (curl http://127.0.0.1:$LAB_METRICS_PORT/metrics inside node-a)"
metrics=$(lab_exec a curl -sf "http://127.0.0.1:$LAB_METRICS_PORT/metrics") ||
  lab_fail "the metrics of node-a's agent cannot be read"
shown=$(grep -E '^tunnelagent_(tunnel_|tunnels\{mode="gre",state="up"\}|build)' <<<"$metrics") ||
  lab_fail "node-a's metrics have no tunnel series"
echo "$shown"

lab_log "Deleting gre1 on node-a removes its device"
run lab_ctl a delete gre1
if lab_exec a ip link show gre1 >/dev/null 2>&1; then lab_fail "gre1 still exists"; fi
echo "gre1 is gone from node-a; the lab is removed on exit"
lab_log "demo: OK"
