#!/bin/bash
# Dataplane benchmark: the same traffic, in one run, over
#   veth           the plain underlay between two namespaces: the ceiling on this machine
#   naive          ../shared/bench/naive-gre.c, one packet per system call: the floor
#                  (left out, and said so, when that directory is absent)
#   agent-gre      two tunnel-agents, a keyless GRE tunnel made with tunnelctl
#   agent-ipip     the same in IPIP
#   agent-gre-udp  GRE-in-UDP (encap fou, port 4754) with UDP GSO/GRO
# and for each: iperf3 TCP with 1 and 4 streams (Gbit/s), UDP with 64 B and 1400 B payloads at
# `-b 0` (packets/s the receiver got, from its own JSON), ping RTT p50/p99 (PINGS pings 10 ms
# apart, per repetition, pooled), and the tunnel processes' CPU seconds per gigabit moved
# during TCP x1 (utime + stime from /proc/PID/stat, both ends summed). Then 1,000 more keyed
# GRE tunnels on both agents, TCP x1 and UDP 64 B again through the measured one, and each
# agent's resident memory. Then agent-gre-mp: a multipoint GRE tunnel on both agents, each the
# other's one peer, TCP x1 and UDP 64 B through it with that one peer and beside 9,999 more
# of 10 allowed prefixes each. A table gives every figure and its ratio to veth and to naive,
# then the targets with PASS/MISS: informational, the exit status is 0 either way.
#
# Usage: tests/bench/dataplane_bench.sh    (root, a built tree: make build; or `make bench`)
# Environment:
#   REPS=3 DUR=5        runs per figure (the median is reported) and seconds per iperf3 run
#   PINGS=200           pings per repetition for the latency figures
#   EXTRA_TUNNELS=1000  keyed GRE tunnels added for the scale step (0 skips it)
#   MULTIPOINT_PEERS=10000  peers of the multipoint step's tunnel, the measured one included
#                       (0 skips it; at most 16,000)
#   PEERS="veth naive agent-gre agent-ipip agent-gre-mp agent-gre-udp"
#   SHARED_BENCH=DIR    where naive-gre.c is (default: ../shared/bench beside the repository)
#   BENCH_JSON=FILE     also write the results as JSON
#   BENCH_OUT=DIR       keep the raw iperf3 JSON, ping output and logs there
#   BENCH_TIMEOUT=2400  seconds for the whole run; past that it stops and cleans up
#   AGENT_FLAGS=        more tunnel-agent flags, e.g. --dataplane_workers=1
set -uo pipefail
SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
REPS=${REPS:-3}
DUR=${DUR:-5}
PINGS=${PINGS:-200}
EXTRA_TUNNELS=${EXTRA_TUNNELS:-1000}
MULTIPOINT_PEERS=${MULTIPOINT_PEERS:-10000}
PEERS=${PEERS:-"veth naive agent-gre agent-ipip agent-gre-mp agent-gre-udp"}
SHARED_BENCH=${SHARED_BENCH:-$SOURCE_DIR/../shared/bench}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-2400}
AGENT_FLAGS=${AGENT_FLAGS:-}
PY=/usr/bin/python3
PORT=5201
UL_A=198.18.0.1
UL_B=198.18.0.2

for v in REPS DUR PINGS EXTRA_TUNNELS MULTIPOINT_PEERS BENCH_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number, not '${!v}'" >&2; exit 2; }
done
# Below the agent's default --max_peers_per_tunnel (16,384); the generated underlays and
# prefixes (mp_peers_file) would have room for about 26,000.
[ "$MULTIPOINT_PEERS" -le 16000 ] || { echo "MULTIPOINT_PEERS <= 16000" >&2; exit 2; }
[ "$REPS" -ge 1 ] && [ "$DUR" -ge 1 ] && [ "$PINGS" -ge 1 ] || { echo "REPS, DUR, PINGS >= 1" >&2; exit 2; }
for c in iperf3 jq ping ss "$PY"; do
  command -v "$c" >/dev/null || { echo "missing $c: make bench-deps" >&2; exit 1; }
done
source "$SOURCE_DIR/scripts/lab.sh"
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, TUN devices)" >&2; exit 1; }
for b in tunnel-agent tunnelctl; do
  [ -x "$BIN_DIR/$b" ] || { echo "missing $BIN_DIR/$b: build first (make build)" >&2; exit 1; }
done
BIN_DIR=$(cd "$BIN_DIR" && pwd)

# lab.sh's state, without its bridge: two namespaces joined directly by one veth pair, as
# ../shared/bench/netns-topo.sh has them. lab_cleanup removes agents, namespaces and $RUN.
LAB=tb$$$(printf '%04x' $((RANDOM % 65536)))
RUN=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-bench.XXXXXX")
LAB_NODES=()
declare -A LAB_PIDS=()
declare -A LAB_ADDRS=()
OUT=${BENCH_OUT:-$RUN/out}
mkdir -p "$OUT"
RES=$OUT/results.tsv  # kind <tab> peer <tab> name <tab> rep <tab> value
: >"$RES"
BG_PIDS=()     # iperf3 servers, naive forwarders: ended on exit
TUN_PIDS=()    # the processes of the tunnel being measured (for CPU per gigabit)
WATCHDOG=

bench_cleanup() {
  local rc=$? p
  set +e
  [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
  for p in "${BG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${BG_PIDS[@]}"; do
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  # Only these: the agents are children too, and lab_cleanup ends them.
  wait "${BG_PIDS[@]}" ${WATCHDOG:+"$WATCHDOG"} 2>/dev/null
  (exit "$rc")
  lab_cleanup 2>/dev/null
  return "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
# A watchdog bounds the whole run: TERM to this shell, whose trap cleans up.
( trap 'kill $! 2>/dev/null; exit 0' TERM
  sleep "$BENCH_TIMEOUT" & wait $!
  echo "dataplane_bench: stopped after BENCH_TIMEOUT=$BENCH_TIMEOUT s" >&2
  kill -TERM $$ ) &
WATCHDOG=$!

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RES"; }
note() { record note "$1" - - "$2"; log "$1: $2"; }
meta() { record meta - "$1" - "$2"; }
ns() { echo "$LAB-$1"; }

# ---- topology ------------------------------------------------------------------------------
ip netns add "$(ns A)" && LAB_NODES+=(A)
ip netns add "$(ns B)" && LAB_NODES+=(B)
ip link add ul0 netns "$(ns A)" type veth peer name ul0 netns "$(ns B)" ||
  lab_fail "cannot make the veth pair"
for n in A B; do
  ip -n "$(ns $n)" link set lo up
  ip netns exec "$(ns $n)" sysctl -qw net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.default.rp_filter=0
done
ip -n "$(ns A)" addr add $UL_A/24 dev ul0
ip -n "$(ns B)" addr add $UL_B/24 dev ul0
ip -n "$(ns A)" link set ul0 up
ip -n "$(ns B)" link set ul0 up
lab_exec A ping -c 1 -W 2 $UL_B >/dev/null || lab_fail "underlay ping failed"

meta nproc "$(nproc)"
meta cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
meta kernel "$(uname -r)"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta reps "$REPS"
meta dur "$DUR"
meta pings "$PINGS"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta commit "$(git -C "$SOURCE_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
meta offloads "$(lab_exec A ethtool -k ul0 2>/dev/null |
  awk '/^(tcp-segmentation-offload|generic-receive-offload):/ {printf "%s%s %s", sep, $1, $2; sep=", "}')"

# ---- measurements --------------------------------------------------------------------------
clk_tck=$(getconf CLK_TCK)
proc_ticks() {  # utime + stime of the given processes, summed
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

server_start() {  # iperf3 server in B for one test; its JSON to $1
  timeout $((DUR + 40)) ip netns exec "$(ns B)" iperf3 -s -1 -J -p $PORT >"$1" 2>/dev/null &
  SERVER=$!
  BG_PIDS+=("$SERVER")
  local _
  for _ in $(seq 60); do
    lab_exec B ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && return 0
    sleep 0.05
  done
  return 1
}
server_wait() {
  local _
  for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
  kill "$SERVER" 2>/dev/null
  wait "$SERVER" 2>/dev/null
}

# iperf_test PEER DST TEST IPERF_ARGS...: REPS runs; records each run's figure.
iperf_test() {
  local peer=$1 dst=$2 test=$3 rep
  shift 3
  for rep in $(seq $((${REP_OFFSET:-0} + 1)) $((${REP_OFFSET:-0} + REPS))); do
    local base=$OUT/$peer-$test-$rep value= t0 t1
    if ! server_start "$base.server.json"; then
      note "$peer" "$test run $rep: the iperf3 server did not start"
      server_wait
      continue
    fi
    t0=$(proc_ticks "${TUN_PIDS[@]}")
    timeout $((DUR + 25)) ip netns exec "$(ns A)" iperf3 -c "$dst" -p $PORT -t "$DUR" -J "$@" \
      >"$base.client.json" 2>"$base.client.err"
    t1=$(proc_ticks "${TUN_PIDS[@]}")
    server_wait
    case $test in
      tcp*)
        value=$(jq -r '.end.sum_received.bits_per_second // empty | . / 1e9' \
          "$base.client.json" 2>/dev/null)
        if [ "$test" = tcp1 ] && [ ${#TUN_PIDS[@]} -gt 0 ] && [ -n "$value" ]; then
          local bits
          bits=$(jq -r '.end.sum_received.bytes * 8' "$base.client.json")
          record fig "$peer" cpu_s_per_gbit "$rep" \
            "$(awk -v t=$((t1 - t0)) -v hz="$clk_tck" -v b="$bits" \
              'BEGIN { if (b > 0) printf "%.3f", (t / hz) / (b / 1e9) }')"
        fi ;;
      udp*)
        # The receiver's own count: what it got, not what the sender sent.
        value=$(jq -r '.end.sum | select(.seconds > 0) |
            (.packets - .lost_packets) / .seconds / 1000' "$base.server.json" 2>/dev/null)
        [ -n "$value" ] || value=$(jq -r '.end.sum | select(.seconds > 0) |
            (.packets - .lost_packets) / .seconds / 1000' "$base.client.json" 2>/dev/null) ;;
    esac
    if [ -z "$value" ]; then
      note "$peer" "$test run $rep failed: $(jq -r '.error // empty' "$base.client.json" 2>/dev/null) $(tail -c 200 "$base.client.err")"
      continue
    fi
    record fig "$peer" "$test" "$rep" "$value"
    printf '  %-14s %-8s run %s: %s\n' "$peer" "$test" "$rep" "$value" >&2
    sleep 0.3
  done
}

# ping_test PEER DST: PINGS pings per repetition; every RTT recorded (ms).
ping_test() {
  local peer=$1 dst=$2 rep
  for rep in $(seq "$REPS"); do
    timeout $((PINGS / 50 + 20)) ip netns exec "$(ns A)" ping -n -c "$PINGS" -i 0.01 -W 1 "$dst" \
      >"$OUT/$peer-ping-$rep.txt" 2>&1
    awk -v p="$peer" -v r="$rep" -F'time=' 'NF > 1 { split($2, a, " "); printf "rtt\t%s\tms\t%s\t%s\n", p, r, a[1] }' \
      "$OUT/$peer-ping-$rep.txt" >>"$RES"
  done
}

reachable() {  # NODE ADDR: a few tries, for tunnels just made
  local _
  for _ in $(seq 5); do
    lab_exec "$1" ping -q -n -c 2 -i 0.2 -W 1 "$2" >/dev/null 2>&1 && return 0
  done
  return 1
}

suite() {  # PEER DST
  log "$1: TCP x1, TCP x4, UDP 64 B, UDP 1400 B (${REPS} x ${DUR} s each), ping"
  iperf_test "$1" "$2" tcp1
  iperf_test "$1" "$2" tcp4 -P 4
  iperf_test "$1" "$2" udp64 -u -b 0 -l 64
  iperf_test "$1" "$2" udp1400 -u -b 0 -l 1400
  ping_test "$1" "$2"
}

rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null; }

# ---- peers ---------------------------------------------------------------------------------
peer_veth() {
  suite veth $UL_B
}

peer_naive() {
  local src=$SHARED_BENCH/naive-gre.c
  if [ ! -r "$src" ]; then
    note naive "left out: $src not found (set SHARED_BENCH); ratios to naive are not available"
    return
  fi
  command -v gcc >/dev/null || { note naive "left out: no gcc (make bench-deps)"; return; }
  gcc -O2 -pthread -o "$RUN/naive-gre" "$src" 2>"$OUT/naive-build.log" ||
    { note naive "left out: naive-gre.c did not compile ($(tail -1 "$OUT/naive-build.log"))"; return; }
  local n peer_of ip_of
  TUN_PIDS=()
  for n in A B; do
    if [ $n = A ]; then ip_of=$UL_A peer_of=$UL_B; else ip_of=$UL_B peer_of=$UL_A; fi
    ip netns exec "$(ns $n)" "$RUN/naive-gre" nv0 $ip_of $peer_of >"$OUT/naive-$n.log" 2>&1 &
    BG_PIDS+=($!)
    TUN_PIDS+=($!)
  done
  for _ in $(seq 50); do
    ip -n "$(ns A)" link show nv0 >/dev/null 2>&1 && ip -n "$(ns B)" link show nv0 >/dev/null 2>&1 &&
      break
    sleep 0.1
  done
  ip -n "$(ns A)" addr add 10.97.0.1/24 dev nv0 && ip -n "$(ns A)" link set nv0 mtu 1476 up
  ip -n "$(ns B)" addr add 10.97.0.2/24 dev nv0 && ip -n "$(ns B)" link set nv0 mtu 1476 up
  if reachable A 10.97.0.2; then
    suite naive 10.97.0.2
  else
    note naive "no ping through the naive forwarder: left out"
  fi
  local p
  for p in "${TUN_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${TUN_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  TUN_PIDS=()
  ip -n "$(ns A)" link del nv0 2>/dev/null
  ip -n "$(ns B)" link del nv0 2>/dev/null
}

AGENTS_UP=
agents_up() {
  [ -n "$AGENTS_UP" ] && return 0
  log "starting two tunnel-agents"
  # shellcheck disable=SC2086  # AGENT_FLAGS is a list of flags
  lab_start_agent A --max_tunnels=$((EXTRA_TUNNELS + 16)) $AGENT_FLAGS
  # shellcheck disable=SC2086
  lab_start_agent B --max_tunnels=$((EXTRA_TUNNELS + 16)) $AGENT_FLAGS
  AGENTS_UP=1
  meta agent_flags "${AGENT_FLAGS:-(defaults)}"
  meta io_backend "$(lab_ctl A -o json info | jq -r '.ioBackend // "unknown"')"
  meta agent_version "$(lab_ctl A -o json info | jq -r '.version // "unknown"')"
  TUN_PIDS=("${LAB_PIDS[A]}" "${LAB_PIDS[B]}")
}

# agent_tunnel PEER NAME MODE INNER_PREFIX [OPTION...]: a tunnel NAME on both agents, A = .1,
# B = .2, with tunnelctl's OPTIONs.
agent_tunnel() {
  local peer=$1 name=$2 mode=$3 inner=$4
  shift 4
  agents_up
  lab_ctl A create "$name" mode "$mode" local $UL_A remote $UL_B address "$inner.1/30" "$@" \
    >/dev/null || { note "$peer" "create on A failed"; return 1; }
  lab_ctl B create "$name" mode "$mode" local $UL_B remote $UL_A address "$inner.2/30" "$@" \
    >/dev/null || { note "$peer" "create on B failed"; return 1; }
  reachable A "$inner.2" || { note "$peer" "no ping through $name"; return 1; }
}

peer_agent_ipip() {
  if agent_tunnel agent-ipip ipip1 ipip 10.11.0; then
    suite agent-ipip 10.11.0.2
  fi
  lab_ctl A delete ipip1 >/dev/null 2>&1
  lab_ctl B delete ipip1 >/dev/null 2>&1
}

peer_agent_gre() {
  agent_tunnel agent-gre gre1 gre 10.10.0 || return
  suite agent-gre 10.10.0.2
  meta rss_a_1 "$(rss_mib "${LAB_PIDS[A]}")"
  meta rss_b_1 "$(rss_mib "${LAB_PIDS[B]}")"
  scale_step
  # Gone before agent-gre-mp: a tunnel with a remote takes the packets of one without.
  lab_ctl A delete gre1 >/dev/null 2>&1
  lab_ctl B delete gre1 >/dev/null 2>&1
}

# EXTRA_TUNNELS keyed GRE tunnels between the same two addresses (keys 1..N: each its own
# receive-table entry and TUN device) on both agents, and the per-packet figures through gre1
# (keyless) with and without them. The machine is shared, so the two are paired: each of the
# REPS rounds measures TCP x1 and UDP 64 B with gre1 alone (agent-gre+1), adds the tunnels,
# measures again (agent-gre+scale) and the agents' memory, and removes them (apply --prune).
scale_apply() {  # NODE FILE: apply, then wait until every tunnel the file leaves is UP
  local n=$1 file=$2 want up=0 _
  want=$(($(jq '.tunnels | length' "$file") + 1))
  lab_ctl "$n" --timeout=600 apply --prune -f "$file" >"$OUT/apply-$n.txt" 2>&1 ||
    { note agent-gre+scale "apply on $n failed: $(tail -1 "$OUT/apply-$n.txt")"; return 1; }
  for _ in $(seq 600); do
    up=$(lab_ctl "$n" -o json list state up | jq '.tunnels // [] | length')
    [ "${up:-0}" -ge "$want" ] && return 0
    sleep 0.2
  done
  note agent-gre+scale "$n: only $up of $want tunnels UP"
  return 1
}

scale_step() {
  [ "$EXTRA_TUNNELS" -gt 0 ] || return 0
  local n r t0
  for n in A B; do
    local local_ip=$UL_A remote_ip=$UL_B
    [ $n = B ] && local_ip=$UL_B remote_ip=$UL_A
    jq -n --argjson n "$EXTRA_TUNNELS" --arg l $local_ip --arg r $remote_ip '
      {owner: "bench", tunnels: [range(1; $n + 1) |
        {name: "bk\(.)", mode: "TUNNEL_MODE_GRE", local: $l, remote: $r, key: .}]}' \
      >"$RUN/extra-$n.json"
    echo '{"owner": "bench", "tunnels": []}' >"$RUN/none.json"
  done
  log "scale: $REPS rounds of gre1 alone, then with $EXTRA_TUNNELS more keyed GRE tunnels"
  for r in $(seq "$REPS"); do
    REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre+1 10.10.0.2 tcp1
    REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre+1 10.10.0.2 udp64 -u -b 0 -l 64
    for n in A B; do
      t0=$(date +%s.%N)
      scale_apply $n "$RUN/extra-$n.json" || return
      record fig "$n" apply_seconds "$r" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
    done
    if [ "$r" = 1 ]; then
      meta tunnels_a "$(lab_ctl A -o json info | jq -r '.tunnelCount')"
      meta tunnels_b "$(lab_ctl B -o json info | jq -r '.tunnelCount')"
    fi
    reachable A 10.10.0.2 || { note agent-gre+scale "no ping through gre1 with the extra tunnels"; return; }
    REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre+scale 10.10.0.2 tcp1
    REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre+scale 10.10.0.2 udp64 -u -b 0 -l 64
    record fig A rss_mib "$r" "$(rss_mib "${LAB_PIDS[A]}")"
    record fig B rss_mib "$r" "$(rss_mib "${LAB_PIDS[B]}")"
    for n in A B; do scale_apply $n "$RUN/none.json" || return; done
    reachable A 10.10.0.2 || { note agent-gre+scale "no ping through gre1 after removing the extra tunnels"; return; }
  done
}

# agent-gre-mp: the path of agent-gre as a multipoint GRE tunnel (mp1) on both agents, each
# the other's peer (underlay its address, allowed its inner /32), alone and beside
# MULTIPOINT_PEERS - 1 peers that exist nowhere (underlays 198.18.1.0 + i, which no route
# reaches and nothing is sent to; 10 allowed prefixes each, the layout of the micro-benchmark's
# BM_PeerLookup: the /26s of 10.128.0.0/9 and the /27s of 100.64.0.0/10), so that every packet's
# peer is found in a trie of 10 x that many prefixes: on send by inner destination, on receive
# by outer source and then the inner source's longest match. Paired rounds as in the scale
# step: TCP x1 and UDP 64 B with the one peer (agent-gre-mp+1), the others added on both sides
# by one `peer apply` each, the same again (agent-gre-mp+peers) and the agents' memory, then
# the others removed (`peer apply --prune` of none; the measured peer has no owner label, so
# the prune leaves it).
MP_INNER=10.13.0
mp_peers_file() {  # FILE: the MULTIPOINT_PEERS - 1 other peers, owner "bench"
  "$PY" - "$((MULTIPOINT_PEERS - 1))" "$1" <<'EOF'
import ipaddress, json, sys
n, path = int(sys.argv[1]), sys.argv[2]
underlay = int(ipaddress.IPv4Address("198.18.1.0"))
ten, cgnat = int(ipaddress.IPv4Address("10.128.0.0")), int(ipaddress.IPv4Address("100.64.0.0"))
def prefix(k):
    if k % 2 == 0:
        return "%s/26" % ipaddress.IPv4Address(ten + (k // 2) * 64)
    return "%s/27" % ipaddress.IPv4Address(cgnat + (k // 2) * 32)
peers = [{"name": "mp%d" % i, "underlay": str(ipaddress.IPv4Address(underlay + i)),
          "allowedPrefixes": [prefix(10 * i + j) for j in range(10)]} for i in range(n)]
with open(path, "w") as f:
    json.dump({"owner": "bench", "peers": peers}, f)
EOF
}

mp_apply() {  # NODE FILE WANT: peer apply --prune, then wait until the tunnel lists WANT peers
  local n=$1 file=$2 want=$3 have=0 _
  lab_ctl "$n" --timeout=600 peer apply mp1 --prune -f "$file" >"$OUT/mp-apply-$n.txt" 2>&1 ||
    { note agent-gre-mp "peer apply on $n failed: $(tail -1 "$OUT/mp-apply-$n.txt")"; return 1; }
  for _ in $(seq 300); do
    have=$(lab_ctl "$n" --timeout=60 -o json peer list mp1 --page-size=1000 |
      jq '.peers // [] | length')
    [ "${have:-0}" -eq "$want" ] && return 0
    sleep 0.2
  done
  note agent-gre-mp "$n: $have peers listed, not $want"
  return 1
}

peer_agent_gre_mp() {
  if [ "$MULTIPOINT_PEERS" -eq 0 ]; then
    note agent-gre-mp "left out (MULTIPOINT_PEERS=0)"
    return
  fi
  agents_up
  local n r t0 local_ip remote_ip me other ok=1
  for n in A B; do
    if [ $n = A ]; then
      local_ip=$UL_A remote_ip=$UL_B me=1 other=2
    else
      local_ip=$UL_B remote_ip=$UL_A me=2 other=1
    fi
    if ! lab_ctl $n create mp1 mode gre local $local_ip multipoint address "$MP_INNER.$me/24" \
        >"$OUT/mp-create-$n.txt" 2>&1 ||
       ! lab_ctl $n peer add mp1 far underlay $remote_ip allowed "$MP_INNER.$other/32" \
        >>"$OUT/mp-create-$n.txt" 2>&1; then
      note agent-gre-mp "n/a: mp1 on $n: $(tail -1 "$OUT/mp-create-$n.txt")"
      ok=
      break
    fi
  done
  if [ -n "$ok" ] && ! reachable A "$MP_INNER.2"; then
    note agent-gre-mp "no ping through mp1"
    ok=
  fi
  if [ -n "$ok" ]; then
    mp_peers_file "$RUN/mp-peers.json"
    echo '{"owner": "bench", "peers": []}' >"$RUN/mp-none.json"
    meta mp_peers "$MULTIPOINT_PEERS"
    meta mp_prefixes "$(((MULTIPOINT_PEERS - 1) * 10 + 1))"
    meta rss_a_mp1 "$(rss_mib "${LAB_PIDS[A]}")"
    meta rss_b_mp1 "$(rss_mib "${LAB_PIDS[B]}")"
    log "multipoint: $REPS rounds of mp1 with one peer, then with $MULTIPOINT_PEERS"
    for r in $(seq "$REPS"); do
      REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre-mp+1 "$MP_INNER.2" tcp1
      REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre-mp+1 "$MP_INNER.2" udp64 -u -b 0 -l 64
      for n in A B; do
        t0=$(date +%s.%N)
        mp_apply $n "$RUN/mp-peers.json" "$MULTIPOINT_PEERS" || { ok=; break; }
        record fig "mp$n" apply_seconds "$r" \
          "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
      done
      [ -n "$ok" ] || break
      if ! reachable A "$MP_INNER.2"; then
        note agent-gre-mp "no ping through mp1 beside the other peers"
        break
      fi
      REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre-mp+peers "$MP_INNER.2" tcp1
      REPS=1 REP_OFFSET=$((r - 1)) iperf_test agent-gre-mp+peers "$MP_INNER.2" udp64 -u -b 0 -l 64
      record fig mpA rss_mib "$r" "$(rss_mib "${LAB_PIDS[A]}")"
      record fig mpB rss_mib "$r" "$(rss_mib "${LAB_PIDS[B]}")"
      for n in A B; do mp_apply $n "$RUN/mp-none.json" 1 || { ok=; break; }; done
      [ -n "$ok" ] || break
      if ! reachable A "$MP_INNER.2"; then
        note agent-gre-mp "no ping through mp1 after removing the other peers"
        break
      fi
    done
  fi
  lab_ctl A delete mp1 >/dev/null 2>&1
  lab_ctl B delete mp1 >/dev/null 2>&1
}

gre_udp_feature() {  # a GetAgentInfo feature naming GRE-in-UDP (FOU/GUE), if any
  lab_ctl A -o json info 2>/dev/null |
    jq -r '(.features // [])[] | select(test("udp|fou|gue"; "i"))' | head -1
}

# GRE-in-UDP (encap fou, RFC 8086, port 4754): a keyed GRE tunnel (key 4754, so it does not
# take gre1's receive match) whose packets travel in UDP, with UDP GSO and GRO.
peer_agent_gre_udp() {
  agents_up
  local feature
  feature=$(gre_udp_feature)
  if [ -z "$feature" ]; then
    note agent-gre-udp "n/a (GRE-in-UDP not implemented yet)"
    return
  fi
  if agent_tunnel agent-gre-udp greu1 gre 10.12.0 key 4754 encap fou; then
    suite agent-gre-udp 10.12.0.2
  fi
  lab_ctl A delete greu1 >/dev/null 2>&1
  lab_ctl B delete greu1 >/dev/null 2>&1
}

# The agents come last: their raw sockets would see the naive forwarder's GRE packets.
order=()
for p in veth naive agent-ipip agent-gre agent-gre-mp agent-gre-udp; do
  case " $PEERS " in *" $p "*) order+=("$p") ;; esac
done
for p in "${order[@]}"; do
  log "peer $p"
  meta peer "$p"
  case $p in
    veth) peer_veth ;;
    naive) peer_naive ;;
    agent-ipip) peer_agent_ipip ;;
    agent-gre) peer_agent_gre ;;
    agent-gre-mp) peer_agent_gre_mp ;;
    agent-gre-udp) peer_agent_gre_udp ;;
  esac
done
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" "$SOURCE_DIR/tests/bench/dataplane_report.py" "$RES" ${BENCH_JSON:+--json "$BENCH_JSON"}
[ -n "${BENCH_OUT:-}" ] && echo "raw results: $OUT" >&2
exit 0
