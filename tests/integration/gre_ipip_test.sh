#!/bin/bash
# Keyless GRE, keyed GRE and IPIP between the same two nodes at once, over tunnelctl: traffic,
# auto MTU, counters (GetTunnel and /metrics), key mismatch, error codes, delete.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_start_agent A
lab_start_agent B

# name mode key(-: none) A-inner B-inner prefix-behind-B auto-mtu
TUNNELS=(
  "tgre  gre  -  10.1.0.1/30  10.1.0.2/30  10.101.0 1476"
  "tgrek gre  42 10.1.0.5/30  10.1.0.6/30  10.102.0 1472"
  "tipip ipip -  10.1.0.9/30  10.1.0.10/30 10.103.0 1480"
)

lab_log "create three tunnels between the same two nodes"
for t in "${TUNNELS[@]}"; do
  read -r name mode key a_in b_in prefix mtu <<<"$t"
  keyargs=()
  [ "$key" = - ] || keyargs=(key "$key")
  lab_ctl A create "$name" mode "$mode" local 198.18.0.1 remote 198.18.0.2 "${keyargs[@]}" \
    address "$a_in" route "$prefix.0/24" >/dev/null
  lab_ctl B create "$name" mode "$mode" local 198.18.0.2 remote 198.18.0.1 "${keyargs[@]}" \
    address "$b_in" >/dev/null
  # A host behind B: only needs a route on A.
  lab_exec B ip addr add "$prefix.1/32" dev lo
  lab_ok "created $name ($mode key $key) on A and B"
done

lab_log "state and auto MTU"
for t in "${TUNNELS[@]}"; do
  read -r name mode key a_in b_in prefix mtu <<<"$t"
  for n in A B; do
    json=$(lab_ctl "$n" -o json get "$name")
    state=$(jq -r .status.state <<<"$json")
    [ "$state" = OPER_STATE_UP ] || lab_fail "$n $name state $state, want OPER_STATE_UP"
    got=$(jq -r .status.mtu <<<"$json")
    [ "$got" = "$mtu" ] || lab_fail "$n $name GetTunnel mtu $got, want $mtu"
    got=$(lab_exec "$n" cat "/sys/class/net/$name/mtu")
    [ "$got" = "$mtu" ] || lab_fail "$n $name device mtu $got, want $mtu"
  done
  lab_ok "$name up on both nodes, mtu $mtu (GetTunnel and device)"
done
lab_exec A ip route show "10.101.0.0/24" | grep -q "dev tgre" || lab_fail "A: no route 10.101.0.0/24 dev tgre"
lab_ok "A routes 10.101.0.0/24 into tgre"

lab_log "traffic across each tunnel"
for t in "${TUNNELS[@]}"; do
  read -r name mode key a_in b_in prefix mtu <<<"$t"
  lab_ping A "${b_in%/*}"
  lab_ping B "${a_in%/*}"
  lab_ping A "$prefix.1"   # behind B, via the tunnel's route
  # A full-MTU packet, not fragmented (-M do): ICMP 8 + IP 20 bytes.
  lab_exec A ping -q -n -c 1 -W 2 -M do -s $((mtu - 28)) "${b_in%/*}" >/dev/null ||
    lab_fail "$name: a ${mtu}-byte packet does not cross"
  lab_ok "$name carries a full ${mtu}-byte packet unfragmented"
done
lab_exec A ping -q -n -c 1 -W 2 -s 3000 10.1.0.2 >/dev/null || lab_fail "tgre: a 3028-byte ping does not cross"
lab_ok "tgre carries a 3028-byte ping (inner fragments)"

lab_log "counters: GetTunnel and /metrics agree, and moved"
counter() { jq -r ".status.counters.$2 // \"0\"" <<<"$1"; }
for t in "${TUNNELS[@]}"; do
  read -r name _ <<<"$t"
  for n in A B; do
    ok=
    for _ in 1 2 3 4 5; do  # a stray packet between the two reads: read again
      json=$(lab_ctl "$n" -o json get "$name")
      tp=$(counter "$json" txPackets) tb=$(counter "$json" txBytes)
      rp=$(counter "$json" rxPackets) rb=$(counter "$json" rxBytes)
      m_tp=$(lab_metric "$n" "tunnelagent_tunnel_tx_packets_total{tunnel=\"$name\"}")
      m_tb=$(lab_metric "$n" "tunnelagent_tunnel_tx_bytes_total{tunnel=\"$name\"}")
      m_rp=$(lab_metric "$n" "tunnelagent_tunnel_rx_packets_total{tunnel=\"$name\"}")
      m_rb=$(lab_metric "$n" "tunnelagent_tunnel_rx_bytes_total{tunnel=\"$name\"}")
      if [ "$tp $tb $rp $rb" = "$m_tp $m_tb $m_rp $m_rb" ]; then ok=1; break; fi
      sleep 0.2
    done
    [ -n "$ok" ] || lab_fail "$n $name: GetTunnel tx/rx $tp/$tb $rp/$rb, /metrics $m_tp/$m_tb $m_rp/$m_rb"
    for v in "$tp" "$tb" "$rp" "$rb"; do
      [ "$v" -gt 0 ] || lab_fail "$n $name: a counter is 0 after traffic: tx $tp/$tb rx $rp/$rb"
    done
    up=$(lab_metric "$n" "tunnelagent_tunnel_up{tunnel=\"$name\"}")
    [ "$up" = 1 ] || lab_fail "$n $name: tunnelagent_tunnel_up is '$up', want 1"
  done
  lab_ok "$name: counters > 0 and equal in GetTunnel and /metrics on A and B ($tp pkts tx on B)"
done
for m in gre ipip; do
  want=$([ $m = gre ] && echo 2 || echo 1)
  got=$(lab_metric A "tunnelagent_tunnels{mode=\"$m\",state=\"up\"}")
  [ "$got" = "$want" ] || lab_fail "A tunnelagent_tunnels{mode=$m,state=up} = $got, want $want"
done
lab_ok "tunnelagent_tunnels counts 2 gre + 1 ipip up"

lab_log "GRE key mismatch: A sends key 100, B expects 101"
lab_ctl A create tbad mode gre local 198.18.0.1 remote 198.18.0.2 key 100 address 10.1.0.13/30 >/dev/null
lab_ctl B create tbad mode gre local 198.18.0.2 remote 198.18.0.1 key 101 address 10.1.0.14/30 >/dev/null
drops0=$(lab_metric B 'tunnelagent_dataplane_drops_total{reason="no_tunnel"}')
lab_no_ping A 10.1.0.14
drops1=$(lab_metric B 'tunnelagent_dataplane_drops_total{reason="no_tunnel"}')
[ "$drops1" -ge $((drops0 + 3)) ] || lab_fail "B no_tunnel drops $drops0 -> $drops1, want +3 or more"
lab_ok "B dropped the wrong-key packets as no_tunnel ($drops0 -> $drops1)"
rx=$(counter "$(lab_ctl B -o json get tbad)" rxPackets)
[ "$rx" = 0 ] || lab_fail "B tbad rx_packets $rx, want 0"
lab_ok "B tbad received nothing"
lab_ctl A delete tbad && lab_ctl B delete tbad

lab_log "errors through tunnelctl"
lab_expect_rpc_error A ALREADY_EXISTS create tgre mode gre remote 198.18.0.9
lab_expect_rpc_error A ALREADY_EXISTS create tdup mode gre local 198.18.0.1 remote 198.18.0.2 key 42
# A malformed address is bad input, refused by tunnelctl itself (exit 1) before any call.
for bad in "remote 1.2.3" "remote 198.18.0.9 address 10.9.0.1/33"; do
  rc=0
  out=$(lab_ctl A create tx mode gre $bad 2>&1 >/dev/null) || rc=$?
  [ "$rc" = 1 ] && grep -q "invalid" <<<"$out" || lab_fail "create tx $bad: exit $rc, want 1 ($out)"
  lab_ok "tunnelctl create tx mode gre $bad -> exit 1: $out"
done
lab_expect_rpc_error A NOT_FOUND get nosuch
lab_expect_rpc_error A NOT_FOUND delete nosuch
lab_expect_rpc_error A INVALID_ARGUMENT create tx mode ipip remote 198.18.0.9 csum
lab_expect_rpc_error A INVALID_ARGUMENT create tx mode gre remote 198.18.0.9 ttl 64 nopmtudisc
lab_expect_rpc_error A INVALID_ARGUMENT create tx mode ip6gre remote 198.18.0.9
lab_expect_rpc_error A ALREADY_EXISTS create ul0 mode gre remote 198.18.0.9
lab_exec A ip -4 addr show dev ul0 | grep -q 'inet 198.18.0.1/24' || lab_fail "ul0 lost its address"
lab_exec A ip link show dev ul0 | grep -q 'state UP' || lab_fail "ul0 is no longer up"
lab_ping A 198.18.0.2
names=$(lab_ctl A -o json list | jq -r '[.tunnels[].name] | join(" ")')
[ "$names" = "tgre tgrek tipip" ] || lab_fail "A lists '$names' after the errors, want 'tgre tgrek tipip'"
names=$(lab_state_names A)
[ "$names" = "tgre tgrek tipip" ] || lab_fail "A state file lists '$names', want 'tgre tgrek tipip'"
lab_exec A ip link show tx >/dev/null 2>&1 && lab_fail "a device tx was left behind"
lab_ok "nothing left behind: ul0 intact, list and state file unchanged"
rc=0
lab_ctl A create tx mode gre >/dev/null 2>&1 || rc=$?
[ "$rc" = 1 ] || lab_fail "usage error: exit $rc, want 1"
lab_ok "usage error (create without remote) -> exit 1"

lab_log "delete"
lab_ctl A delete tgre
lab_exec A ip link show tgre >/dev/null 2>&1 && lab_fail "A: tgre still exists after delete"
lab_exec A ip route | grep -q '10.101.0.0/24' && lab_fail "A: route 10.101.0.0/24 left after delete"
names=$(lab_state_names A)
[ "$names" = "tgrek tipip" ] || lab_fail "A: state file lists '$names' after the delete, want 'tgrek tipip'"
lab_expect_rpc_error A NOT_FOUND get tgre
lab_ok "tgre gone: device, route, state file"
[ -z "$(lab_metric A 'tunnelagent_tunnel_up{tunnel="tgre"}')" ] || lab_fail "A /metrics still has tgre series"
got=$(lab_metric A 'tunnelagent_tunnels{mode="gre",state="up"}')
[ "$got" = 1 ] || lab_fail "A tunnelagent_tunnels{mode=gre,state=up} = $got after the delete, want 1"
lab_ok "tgre gone from /metrics"
lab_ping A 10.103.0.1   # the others still carry traffic
lab_ping A 10.102.0.1

echo "PASS"
