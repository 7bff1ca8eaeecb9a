#!/bin/bash
# Fleet figures: N agents (default 50) in N namespaces on one bridge, a full mesh of
# N*(N-1) tunnels applied by tunnel-controller: time to converge (every node applied and every
# tunnel UP), time of a second apply that changes nothing, status, the agents' memory, and
# pings through a few tunnels.
# Usage: tests/bench/fleet_bench.sh [N] [PARALLELISM]   (N <= 250; needs root, a built tree)
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
N=${1:-50}
PARALLELISM=${2:-16}
[ "$N" -ge 2 ] && [ "$N" -le 250 ] || { echo "N must be 2..250" >&2; exit 2; }
source "$SOURCE_DIR/scripts/lab.sh"
lab_init
CTL=$BIN_DIR/tunnel-controller
[ -x "$CTL" ] || lab_fail "missing $CTL: build first"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

lab_log "$N agents"
t0=$(now)
for i in $(seq "$N"); do lab_add_node "n$i" "198.18.0.$i"; done
for i in $(seq "$N"); do lab_start_agent "n$i" --max_tunnels=$((N + 10)); done
echo "namespaces and agents up: $(since "$t0") s"

FLEET=$RUN/fleet.yaml
{
  printf 'defaults:\n  mode: gre\n  key: auto\n  innerPool: 100.64.0.0/16\nnodes:\n'
  for i in $(seq "$N"); do
    printf '  - {name: n%d, agent: "unix:%s/n%d.sock", underlay: 198.18.0.%d}\n' "$i" "$RUN" "$i" "$i"
  done
  printf 'topology:\n  type: mesh\n'
} >"$FLEET"
TUNNELS=$((N * (N - 1)))

lab_log "plan"
t0=$(now)
"$CTL" plan -f "$FLEET" --parallelism="$PARALLELISM" --progress=plain 2>/dev/null | tail -1
echo "plan: $(since "$t0") s"

lab_log "apply: $TUNNELS tunnels, parallelism $PARALLELISM"
t0=$(now)
out=$("$CTL" apply -f "$FLEET" --parallelism="$PARALLELISM" --timeout=60 --progress=plain 2>"$RUN/ctl.err") ||
  { tail -5 "$RUN/ctl.err"; lab_fail "apply failed: $(tail -1 <<<"$out")"; }
converge=$(since "$t0")
tail -1 <<<"$out"
grep -q "^apply: $N/$N nodes converged, $TUNNELS/$TUNNELS tunnels up" <<<"$out" ||
  lab_fail "not converged: $(tail -1 <<<"$out")"
echo "FIGURE: $N agents, $TUNNELS tunnels converged (all UP) in $converge s"

lab_log "second apply (nothing to change)"
t0=$(now)
out=$("$CTL" apply -f "$FLEET" --parallelism="$PARALLELISM" --timeout=60 --progress=plain 2>/dev/null)
noop=$(since "$t0")
grep -cE '^  (CREATE|UPDATE|RECREATE|DELETE) ' <<<"$out" >/dev/null &&
  lab_fail "the second apply changed something"
echo "second apply: $noop s, nothing changed"

t0=$(now)
"$CTL" status -f "$FLEET" --parallelism="$PARALLELISM" --progress=plain 2>/dev/null | tail -1
echo "status: $(since "$t0") s"

rss=0
for n in "${!LAB_PIDS[@]}"; do
  kb=$(awk '/VmRSS/ {print $2}' "/proc/${LAB_PIDS[$n]}/status")
  rss=$((rss + kb))
done
echo "agents' resident memory: $((rss / 1024)) MiB in all, $((rss / 1024 / N)) MiB each"

# Every tunnel device's IPv4 multicast and peer entries go into the kernel's neighbour table,
# and that table is one for all namespaces (net.ipv4.neigh.default.gc_thresh3, 1024 by
# default): thousands of tunnels on one machine overflow it ("neighbor table overflow!", and
# sends fail with ENOBUFS), which separate nodes never would. This script leaves the host's
# settings alone: it only pings when the table can hold the lab.
limit=$(cat /proc/sys/net/ipv4/neigh/default/gc_thresh3)
if [ $((TUNNELS * 2)) -gt "$limit" ]; then
  echo "pings skipped: $TUNNELS tunnel devices on one kernel need more than gc_thresh3=$limit" \
    "neighbour entries (raise net.ipv4.neigh.default.gc_thresh3 to $((TUNNELS * 4)) to ping)"
  exit 0
fi
lab_log "pings"
for p in "1 $N" "2 $((N / 2))" "$((N - 1)) 3"; do
  read -r a b <<<"$p"
  addr=$(lab_ctl "n$a" -o json get "tc-n$b" | jq -r '.addresses[0]')
  addr=${addr%/*}
  lab_ping "n$a" "${addr%.*}.$(( ${addr##*.} ^ 1 ))" 3
done
