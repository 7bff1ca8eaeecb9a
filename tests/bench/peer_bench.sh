#!/bin/bash
# Control-plane figures of one multipoint tunnel with N peers (default 10,000, each with
# PREFIXES allowed prefixes, default 10): one ApplyPeers of all of them and its re-apply
# unchanged, the agent's resident memory before and after, then single-peer upserts
# (CreatePeer, then UpdatePeer) one at a time beside them, each durable before it is answered.
# Targets: ApplyPeers of 10,000 < 2 s; an upsert p99 < 2 ms; < 50 MiB more memory.
# Usage: tests/bench/peer_bench.sh [N]   (needs root and a built tree; BIN_DIR, AGENT_FLAGS)
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
N=${1:-10000}
PREFIXES=${PREFIXES:-10}
UPSERTS=${UPSERTS:-1000}
PY=/usr/bin/python3
source "$SOURCE_DIR/scripts/lab.sh"

lab_init
lab_require_python_grpc
GEN=$RUN/py
lab_python_messages "$GEN"
lab_add_node A 198.18.0.1
# shellcheck disable=SC2086
lab_start_agent A --max_peers_per_tunnel=$((N + UPSERTS + 10)) ${AGENT_FLAGS:-}
lab_ctl A create tnl0 mode gre local 198.18.0.1 multipoint address 10.64.255.254/10 >/dev/null
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/${LAB_PIDS[A]}/status"; }
before=$(rss)
"$PY" "$SOURCE_DIR/tests/bench/peer_bench.py" "$GEN" "$RUN/A.sock" apply "$N" "$PREFIXES"
peak=$(rss)
# What the apply built is free once it is answered; the agent gives it back to the system on
# its next rounds (a second or two), and the state store may be compacting its log meanwhile:
# memory is read once it has held still for a second (at most 12 s after the apply).
sleep 2
after=$(rss)
for _ in $(seq 10); do
  sleep 1
  now=$(rss)
  [ "$now" = "$after" ] && break
  after=$now
done
echo "agent resident memory: $before MiB before, $after MiB with $N peers (+$((after - before)) MiB;" \
  "$peak MiB just after the apply)"
"$PY" "$SOURCE_DIR/tests/bench/peer_bench.py" "$GEN" "$RUN/A.sock" upsert "$UPSERTS" "$N"
