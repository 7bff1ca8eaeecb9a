#!/bin/bash
# `make demo` must keep working: run its script and check what it shows, and that it leaves
# no namespace behind.
set -euo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 77; }

before=$(ip netns list | wc -l)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! timeout 120 bash "$SOURCE_DIR/scripts/demo.sh" >"$out" 2>&1; then
  cat "$out"
  echo "FAIL: demo exited non-zero"
  exit 1
fi
check() {
  if grep -qE "$1" "$out"; then echo "ok: $2"; else cat "$out"; echo "FAIL: $2"; exit 1; fi
}
check '3 packets transmitted, 3 received' "ping crosses the tunnel"
check 'from 10\.20\.1\.1 .*' "ping between host networks behind the nodes"
check '^state: up' "the agent reports the tunnel up"
check '^tunnelagent_tunnel_rx_packets_total\{tunnel="gre1"\} [1-9]' "metrics count received packets"
check '^tunnelagent_tunnel_tx_packets_total\{tunnel="gre1"\} [1-9]' "metrics count sent packets"
if command -v iperf3 >/dev/null; then
  check '^\[ *[0-9]+\].* [0-9.]+ Gbits/sec.* receiver$' "iperf3's figure under its heading"
fi
check 'demo: OK' "the demo finished"
after=$(ip netns list | wc -l)
[ "$before" = "$after" ] || { echo "FAIL: demo left namespaces behind"; exit 1; }
echo "ok: no namespace left behind"
