#!/bin/bash
# Fleet figures: N agents (default 50) in N namespaces on one bridge, a full mesh of
# N*(N-1) tunnels applied by tunnel-controller: time to converge (every node applied and every
# tunnel UP), time of a second apply that changes nothing, status, the agents' memory, and
# pings through a few tunnels.
# MULTIPOINT=1: a multipoint mesh instead, one device per agent with the N-1 others as peers
# (N*(N-1) peers), each node advertising a /24: time to converge, a second apply, and the time
# for one node joining to reach every node (it leaves with --prune first, then comes back).
# Usage: [MULTIPOINT=1] tests/bench/fleet_bench.sh [N] [PARALLELISM]
#        (N <= 250; needs root, a built tree)
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
N=${1:-50}
PARALLELISM=${2:-16}
MULTIPOINT=${MULTIPOINT:-0}
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

# write_fleet FILE COUNT: a mesh of the agents n1..nCOUNT.
write_fleet() {
  local i
  {
    printf 'defaults:\n  mode: gre\n  key: auto\n  innerPool: 100.64.0.0/16\n'
    [ "$MULTIPOINT" = 1 ] && printf '  multipoint: true\n'
    printf 'nodes:\n'
    for i in $(seq "$2"); do
      printf '  - {name: n%d, agent: "unix:%s/n%d.sock", underlay: 198.18.0.%d' "$i" "$RUN" "$i" "$i"
      if [ "$MULTIPOINT" = 1 ]; then
        printf ', prefixes: [10.%d.%d.0/24]}\n' $((i / 256 + 16)) $((i % 256))
      else
        printf '}\n'
      fi
    done
    printf 'topology:\n  type: mesh\n'
  } >"$1"
}
FLEET=$RUN/fleet.yaml
write_fleet "$FLEET" "$N"
if [ "$MULTIPOINT" = 1 ]; then
  TUNNELS=$N
  PEERS=$((N * (N - 1)))
  UP="$TUNNELS/$TUNNELS tunnels up, $PEERS/$PEERS peers up"
  WHAT="$TUNNELS multipoint devices and $PEERS peers"
else
  TUNNELS=$((N * (N - 1)))
  UP="$TUNNELS/$TUNNELS tunnels up"
  WHAT="$TUNNELS tunnels"
fi

lab_log "plan"
t0=$(now)
"$CTL" plan -f "$FLEET" --parallelism="$PARALLELISM" --progress=plain 2>/dev/null | tail -1
echo "plan: $(since "$t0") s"

lab_log "apply: $WHAT, parallelism $PARALLELISM"
t0=$(now)
out=$("$CTL" apply -f "$FLEET" --parallelism="$PARALLELISM" --timeout=60 --progress=plain 2>"$RUN/ctl.err") ||
  { tail -5 "$RUN/ctl.err"; lab_fail "apply failed: $(tail -1 <<<"$out")"; }
converge=$(since "$t0")
tail -1 <<<"$out"
grep -q "^apply: $N/$N nodes converged, $UP" <<<"$out" ||
  lab_fail "not converged: $(tail -1 <<<"$out")"
echo "FIGURE: $N agents, $WHAT converged (all UP) in $converge s"

lab_log "second apply (nothing to change)"
t0=$(now)
out=$("$CTL" apply -f "$FLEET" --parallelism="$PARALLELISM" --timeout=60 --progress=plain 2>/dev/null)
noop=$(since "$t0")
grep -cE '^  (CREATE|UPDATE|RECREATE|DELETE) ' <<<"$out" >/dev/null &&
  lab_fail "the second apply changed something"
echo "second apply: $noop s, nothing changed"

if [ "$MULTIPOINT" = 1 ]; then
  # n$N leaves (its peer pruned everywhere), then joins again: the second apply's time is what
  # a node joining costs, every other node creating one peer (and one route to its prefix).
  lab_log "one node joining"
  write_fleet "$RUN/fleet-less.yaml" $((N - 1))
  t0=$(now)
  out=$("$CTL" apply -f "$RUN/fleet-less.yaml" --prune --parallelism="$PARALLELISM" --timeout=60 \
    --progress=plain 2>/dev/null) || lab_fail "apply without n$N failed: $(tail -1 <<<"$out")"
  echo "n$N leaving (--prune, its peer deleted on $((N - 1)) nodes): $(since "$t0") s"
  t0=$(now)
  out=$("$CTL" apply -f "$FLEET" --prune --parallelism="$PARALLELISM" --timeout=60 \
    --progress=plain 2>/dev/null) || lab_fail "apply with n$N back failed: $(tail -1 <<<"$out")"
  join=$(since "$t0")
  grep -q "^apply: $N/$N nodes converged, $UP" <<<"$out" ||
    lab_fail "not converged after the join: $(tail -1 <<<"$out")"
  created=$(grep -c "^  CREATE   tnl0/n$N$" <<<"$out" || true)
  [ "$created" = $((N - 1)) ] || lab_fail "the join created the peer n$N on $created nodes"
  echo "FIGURE: n$N joining reached all $((N - 1)) other nodes (one peer each) in $join s"
fi

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
if [ "$MULTIPOINT" = 1 ]; then
  lab_log "pings"
  for p in "1 $N" "2 $((N / 2))" "$((N - 1)) 3"; do
    read -r a b <<<"$p"
    addr=$(lab_ctl "n$b" -o json get tnl0 | jq -r '.addresses[0]')
    lab_ping "n$a" "${addr%/*}" 3
  done
  exit 0
fi
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
