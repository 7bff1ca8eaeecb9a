#!/bin/bash
# The agent protects the node it runs on:
# - a route or address that would cover the underlay (a tunnel's remote, its local address, the
#   source or gateway towards a remote) is refused with FAILED_PRECONDITION naming the field and
#   the prefix, and nothing is installed;
# - a loop (someone routes a tunnel's remote into its own device) drops the tunnel's outer
#   packets as `loop` instead of carrying them round, and the tunnel is DOWN until the route goes;
# - what someone changes on a managed device (addresses, routes, MTU, link state) is put back,
#   counted in tunnelagent_tunnel_repairs_total{tunnel,what}, seen in the watch stream and
#   logged; an update repeating the desired values puts back what drifted too; the log has one
#   line per change, refusal and state change, as text or JSON.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_start_agent A
lab_start_agent B --log_format=json

lab_ctl A create gre1 mode gre remote 198.18.0.2 address 10.5.0.1/30 route 10.50.0.0/16 >/dev/null
lab_ctl B create gre1 mode gre remote 198.18.0.1 address 10.5.0.2/30 route 10.40.0.0/16 >/dev/null
lab_ping A 10.5.0.2 5

# ---- Refused prefixes -------------------------------------------------------------------
# refused DESCRIPTION WANT ARGS...: create ARGS fails FAILED_PRECONDITION with WANT in the
# message, and no device appears.
refused() {
  local what=$1 want=$2 name=$4 out rc=0
  shift 2
  out=$(lab_ctl A create "$@" 2>&1 >/dev/null) || rc=$?
  [ "$rc" = 2 ] || lab_fail "$what: exit $rc, want 2 ($out)"
  case $out in
    *FAILED_PRECONDITION*"$want"*) ;;
    *) lab_fail "$what: want FAILED_PRECONDITION with '$want', got: $out" ;;
  esac
  if lab_exec A ip link show dev "$name" >/dev/null 2>&1; then
    lab_fail "$what: device $name exists after the refusal"
  fi
  lab_ok "$what refused: ${out#*FAILED_PRECONDITION: }"
}
refused "a route to its own remote" "tunnel.routes[0] 198.18.0.30/32 covers 198.18.0.30, the remote of this tunnel" \
  x5 mode gre remote 198.18.0.30 route 198.18.0.30/32
refused "half the address space around the remote" "tunnel.routes[0] 128.0.0.0/1 covers 198.18.1.2" \
  evil mode gre remote 198.18.1.2 route 128.0.0.0/1
refused "a route over another tunnel's remote" "covers 198.18.0.2, the remote of tunnel gre1" \
  x3 mode gre remote 198.18.0.9 route 198.18.0.2/32
refused "an address whose network covers the underlay" "tunnel.addresses[0] 198.18.0.99/25 (network 198.18.0.0/25) covers" \
  x4 mode gre remote 198.18.0.9 address 198.18.0.99/25
refused "a route over the source towards the remote" "covers 198.18.0.1, the source address towards the remote" \
  x6 mode ipip remote 198.18.0.2 route 198.18.0.1/32
# The same rule on update: the tunnel keeps what it had.
out=$(lab_ctl A update gre1 route 10.50.0.0/16 route 198.18.0.0/23 2>&1 >/dev/null) && lab_fail "update accepted"
case $out in *FAILED_PRECONDITION*"tunnel.routes[1] 198.18.0.0/23"*) ;; *) lab_fail "update: $out" ;; esac
lab_exec A ip route show dev gre1 | grep -q '^10.50.0.0/16' || lab_fail "update refusal touched gre1's routes"
lab_exec A ip route show dev gre1 | grep -q '198.18.0.0/23' && lab_fail "refused route installed"
lab_ok "update adding 198.18.0.0/23 refused, gre1 unchanged"
lab_ping A 10.5.0.2

# ---- Loops ------------------------------------------------------------------------------
loop_drops() { lab_metric A 'tunnelagent_tunnel_drops_total{direction="tx",reason="loop",tunnel="gre1"}'; }
state_of() { lab_ctl "$1" get "$2" -o json | jq -r '.status.state'; }
wait_state() {
  local node=$1 name=$2 want=$3 _
  for _ in $(seq 50); do
    [ "$(state_of "$node" "$name")" = "$want" ] && return 0
    sleep 0.1
  done
  lab_fail "$node $name: state $(state_of "$node" "$name"), want $want"
}
base=$(loop_drops)
[ -n "$base" ] || lab_fail "no loop drop series for gre1"
tx0=$(lab_ctl A get gre1 -o json | jq -r '.status.counters.txPackets // "0" | tonumber')
lab_exec A ip route add 198.18.0.2/32 dev gre1  # by someone else: the remote into the tunnel
wait_state A gre1 OPER_STATE_DOWN
reason=$(lab_ctl A get gre1 -o json | jq -r '.status.reason')
case $reason in *"loop: the route towards the remote 198.18.0.2 leads into tunnel device gre1"*) ;;
  *) lab_fail "loop reason: $reason" ;; esac
lab_ok "gre1 DOWN: $reason"
lab_exec A ping -q -n -c 3 -i 0.2 -W 1 10.5.0.2 >/dev/null 2>&1 && lab_fail "pings cross a loop"
tx1=$(lab_ctl A get gre1 -o json | jq -r '.status.counters.txPackets // "0" | tonumber')
drops=$(loop_drops)
[ "$drops" -ge $((base + 3)) ] || lab_fail "loop drops $base -> $drops, want +3 (one per ping)"
# Each ping is sent once (tx) and its copy that comes back is dropped: never round and round.
[ $((tx1 - tx0)) -le 3 ] || lab_fail "tx grew by $((tx1 - tx0)) for 3 pings: carried round the loop"
lab_ok "3 pings into the loop: sent once each, $((drops - base)) dropped as loop"
lab_exec A ip route del 198.18.0.2/32 dev gre1
wait_state A gre1 OPER_STATE_UP
lab_ping A 10.5.0.2 3
lab_ok "the route gone: gre1 UP and carrying traffic"

# ---- Drift ------------------------------------------------------------------------------
repairs() { lab_metric A "tunnelagent_tunnel_repairs_total{tunnel=\"gre1\",what=\"$1\"}"; }
lab_ctl A watch --since="$(lab_ctl A info -o json | jq -r '.revision')" >"$RUN/watch.txt" 2>&1 &
watch_pid=$!
sleep 0.3
for what in address route mtu link; do
  [ "$(repairs "$what")" = 0 ] || lab_fail "repairs{what=$what} is $(repairs "$what") before any drift"
done
# drift WHAT COMMAND... CHECK: the change is made, then CHECK must hold again within 3 s.
drift() {
  local what=$1 check=$2 _
  shift 2
  lab_exec A "$@"
  for _ in $(seq 30); do
    if eval "$check" && [ "$(repairs "$what")" -ge 1 ]; then
      lab_ok "$* put back (repairs{what=$what}=$(repairs "$what"))"
      return 0
    fi
    sleep 0.1
  done
  lab_fail "$* was not put back / counted"
}
drift address "lab_exec A ip -4 addr show dev gre1 | grep -q 'inet 10.5.0.1/30'" \
  ip addr del 10.5.0.1/30 dev gre1
drift route "lab_exec A ip route show dev gre1 | grep -q '^10.50.0.0/16'" \
  ip route del 10.50.0.0/16 dev gre1
drift mtu "[ \"\$(lab_exec A cat /sys/class/net/gre1/mtu)\" = 1476 ]" \
  ip link set gre1 mtu 1300
drift link "lab_exec A ip link show dev gre1 | grep -q ',UP'" \
  ip link set gre1 down
lab_ping A 10.5.0.2 3
sleep 0.5
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
for d in "address 10.5.0.1/30 added back" "route 10.50.0.0/16 added back" \
  "mtu was 1300; set back to 1476" "link was set down; set up again"; do
  grep -q "REPAIRED gre1 .*$d" "$RUN/watch.txt" || { cat "$RUN/watch.txt" >&2; lab_fail "watch: no REPAIRED '$d'"; }
done
lab_ok "each repair seen in the watch stream"
grep -q 'tunnel.repair tunnel=gre1 what=address' "$RUN/A.log" || lab_fail "no repair log line"
lab_ok "repairs logged"

# An update that changes nothing checks the device all the same.
lab_exec A ip addr add 10.99.0.1/24 dev gre1
lab_exec A ip addr del 10.5.0.1/30 dev gre1
lab_ctl A update gre1 address 10.5.0.1/30 >/dev/null
lab_exec A ip -4 addr show dev gre1 | grep -q 'inet 10.5.0.1/30' || lab_fail "update did not put the address back"
lab_exec A ip -4 addr show dev gre1 | grep -q '10.99.0.1' && lab_fail "update left the extra address"
lab_ok "an update with the desired values put the device back at once"

# ---- The log: one line per change with the caller, and for refusals -----------------------
grep -q 'tunnel.create tunnel=gre1 caller=.* result=OK' "$RUN/A.log" || lab_fail "no create line"
grep -q 'tunnel.create tunnel=x5 caller=.* result=FAILED_PRECONDITION' "$RUN/A.log" ||
  lab_fail "no line for a refused create"
grep -q 'tunnel.state tunnel=gre1 state=DOWN was=UP reason="loop:' "$RUN/A.log" ||
  lab_fail "no state change line"
lab_ok "changes, refusals and state changes logged"
# B logs JSON: every line one object, its create among them.
jq -e -s 'all(.[]; has("time") and has("level") and has("msg"))' "$RUN/B.log" >/dev/null ||
  lab_fail "B's log is not one JSON object a line"
jq -e -s 'any(.[]; .msg == "tunnel.create" and .tunnel == "gre1" and .result == "OK")' \
  "$RUN/B.log" >/dev/null || lab_fail "B's JSON log has no tunnel.create of gre1"
lab_ok "--log_format=json: one object a line, the create among them"
