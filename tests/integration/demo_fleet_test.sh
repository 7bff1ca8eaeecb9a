#!/bin/bash
# `make demo-fleet` must keep working: run its script and check that every step showed what it
# should, with its figure, and that it left nothing behind (namespaces, files, processes).
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root" >&2; exit 77; }
for tool in etcd etcdctl jq curl; do
  command -v "$tool" >/dev/null ||
    { echo "SKIP: $tool not found (apt-get install etcd-server etcd-client jq curl)" >&2; exit 77; }
done

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The demo's own target is about a minute; twice that is a broken demo.
if ! timeout 120 bash "$SOURCE_DIR/scripts/demo_fleet.sh" >"$out" 2>&1; then
  cat "$out"
  echo "FAIL: demo_fleet.sh exited non-zero"
  exit 1
fi
check() {
  if grep -qE "$1" "$out"; then echo "ok: $2"; else cat "$out"; echo "FAIL: $2"; exit 1; fi
}
S='[0-9]+\.[0-9]{2} s'  # a figure in seconds, as the demo prints them
check "^etcd: 3 members healthy in $S$" "etcd: 3 members, and the time they took"
check '^\| +[0-9a-f]+ \| started \| +m2 \| http://198\.18\.0\.250:' "etcdctl member list, on a lab address"
check "^registered: n1 n2 n3 in etcd $S after" "the agents registered, timed"
check '^/tunnel-agent/demo/nodes/n3$' "etcdctl get lists the registrations' keys"
check '^\{"node":"n1","underlay":\["198\.18\.0\.1"\],"advertisePrefixes":\["10\.244\.1\.0/24"\]' \
  "etcdctl get shows a registration's value"
check "^leader: c[12] elected $S after the controllers' start; c[12] stands by$" "one controller leads"
check '^c[12] \(pid [0-9]+\): tunnelcontroller_leader 0$' "the standby's metric says 0"
check '^n3 +198\.18\.0\.3 +- +100\.64\.[0-9.]+/32,10\.244\.3\.0/24 +up ' "n1's peers: n3 with its prefix, up"
check '^  n3 -> n1   10\.244\.3\.1 -> 10\.244\.1\.1   [0-9.]+ ms$' "a ping between prefixes, with its RTT"
check '^  6/6 pairs answered$' "every pair of the three nodes pings"
check "^mesh: n1 n2 n3 each other's peers $S and every pair pinging $S after" "the mesh converged, timed"
check '^fleet demo: led by [^ ]+/[0-9]+$' "status names the leader"
check '^status: 3/3 nodes converged$' "status: every node converged"
check '^  12/12 pairs answered$' "every pair pings once n4 joined"
check "^join: n4 registered $S after its agent started; in every node's peers $S and every pair pinging $S after its registration$" \
  "the fourth node joined, timed"
check '\$ kill -9 [0-9]+' "the leader killed with SIGKILL"
check "^takeover: c[12] leads $S after c[12] was killed \(lease TTL 3 s\)$" "the standby took over, timed"
check '^c[12] started again \(pid [0-9]+\): tunnelcontroller_leader 0, standing by$' \
  "the old leader back as the standby"
check "^n2's registration gone $S after SIGTERM; n1's peers now: n2 n3 n4$" \
  "n2 still a peer when its registration went"
check "^leave: n2 gone from every other node $S after its registration went \(grace 5 s\)$" \
  "n2 left, timed"
check "^  the whole demo: $S;" "the timings summed up"
check 'demo-fleet: OK' "the demo finished"

# Nothing left: its namespaces, its files, and no process of its agents, controllers (both
# name the lab's etcd endpoints) or etcd members (their data directory).
lab=$(sed -n 's/^lab: namespaces \(.*\)-\*, files in \(.*\)$/\1/p' "$out")
run=$(sed -n 's/^lab: namespaces .*-\*, files in \(.*\)$/\1/p' "$out")
endpoints=$(sed -n 's/^etcd: \(http[^ ]*\) (data in .*)$/\1/p' "$out")
data=$(sed -n 's/^etcd: http[^ ]* (data in \(.*\))$/\1/p' "$out")
if [ -z "$lab" ] || [ -z "$run" ] || [ -z "$endpoints" ] || [ -z "$data" ]; then
  cat "$out"
  echo "FAIL: the demo did not name its lab, files and etcd"
  exit 1
fi
if ip netns list | grep -q "^$lab-"; then
  echo "FAIL: the demo left namespaces behind: $(ip netns list | grep "^$lab-" | paste -sd' ')"
  exit 1
fi
for f in "$run" "$data"; do
  [ ! -e "$f" ] || { echo "FAIL: the demo left $f behind"; exit 1; }
done
# shellcheck disable=SC2009  # fixed strings (pgrep takes regular expressions)
left=$(ps -eo pid=,args= | grep -F -e "$endpoints" -e "$data" | grep -v -e grep || true)
[ -z "$left" ] || { echo "FAIL: the demo left processes behind: $left"; exit 1; }
echo "ok: no namespace, file or process left behind"
