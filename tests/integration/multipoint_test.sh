#!/bin/bash
# Multipoint tunnels end to end: a hub with one multipoint device and two plain point-to-point
# spokes (spoke to spoke through the hub), IPv4 and IPv6 inside; peers added, changed and
# removed without touching the device or the other peer's traffic; packets to no peer answered
# and counted; an inner source a peer may not send from, and an outer source that is no peer,
# dropped and counted; overlapping prefixes refused; one peer's keepalive taking that peer alone
# DOWN; a restart keeping every peer. Then three agents in a multipoint mesh, and a multipoint
# hub over GRE-in-UDP (encap fou) with point-to-point fou spokes.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

lab_init
lab_add_node H 198.18.0.1
lab_add_node S1 198.18.0.2
lab_add_node S2 198.18.0.3
lab_add_node X 198.18.0.4
for n in H S1 S2 X; do lab_start_agent "$n"; done
# The hub forwards spoke to spoke: in through its device, out through it again.
lab_exec H sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

drops() {  # drops NODE TUNNEL DIRECTION REASON
  local v
  v=$(lab_metric "$1" "tunnelagent_tunnel_drops_total{direction=\"$3\",reason=\"$4\",tunnel=\"$2\"}")
  echo "${v:-0}"
}
ifindex() { lab_ctl "$1" -o json get "$2" | jq -r .status.ifindex; }
peer_state() { lab_ctl "$1" -o json peer get "$2" "$3" | jq -r .status.state; }

lab_log "a multipoint hub and two point-to-point spokes"
lab_ctl H create tnl0 mode gre local 198.18.0.1 multipoint \
  address 100.64.0.1/24 address fd00:64::1/64 >/dev/null
for i in 1 2; do
  lab_ctl "S$i" create gre1 mode gre local "198.18.0.$((i + 1))" remote 198.18.0.1 \
    address "100.64.0.$((i + 1))/24" address "fd00:64::$((i + 1))/64" >/dev/null
  lab_ctl H peer add tnl0 "s$i" underlay "198.18.0.$((i + 1))" \
    allowed "100.64.0.$((i + 1))/32,fd00:64::$((i + 1))/128" >/dev/null
done
[ "$(lab_ctl H -o json peer list tnl0 | jq -r '[.peers[].name] | join(" ")')" = "s1 s2" ] ||
  lab_fail "H: peers are not s1 s2"
lab_ok "hub tnl0 with peers s1, s2"
lab_exec H ip -o link show | grep -c ': tnl0' | grep -qx 1 || lab_fail "H: not one tnl0 device"
[ "$(lab_exec H ip -o link show type tun | wc -l)" = 1 ] || lab_fail "H: more than one device"
lab_ok "one device on the hub for both peers"

lab_log "traffic: hub to each spoke, spoke to spoke through the hub, IPv4 and IPv6"
lab_ping H 100.64.0.2 3
lab_ping H 100.64.0.3 3
lab_ping S1 100.64.0.1
lab_ping S1 100.64.0.3
lab_ping S2 100.64.0.2
lab_ping H fd00:64::2 3
lab_ping S1 fd00:64::3 3

lab_log "a packet to no peer: ICMP unreachable back, counted"
before=$(drops H tnl0 tx no_peer)
out=$(lab_exec H ping -n -c 1 -W 2 100.64.0.77 2>&1 || true)
case $out in
  *"Unreachable"*) lab_ok "ping 100.64.0.77 from H: $(grep -m1 -o '[A-Za-z ]*Unreachable' <<<"$out")" ;;
  *) lab_fail "ping to no peer: want an unreachable answer, got: $out" ;;
esac
after=$(drops H tnl0 tx no_peer)
[ "$after" -gt "$before" ] || lab_fail "tx no_peer drops $before -> $after"
lab_ok "tx no_peer drops $before -> $after"

lab_log "peers change, the device and the other peer's traffic do not"
idx=$(ifindex H tnl0)
lab_exec H ping -q -n -c 40 -i 0.05 -W 1 100.64.0.3 >"$RUN/s2-ping.out" 2>&1 &
pinger=$!
lab_ctl H peer update tnl0 s1 allowed 100.64.0.2/32,100.64.9.0/24,fd00:64::2/128 >/dev/null
lab_ctl H peer delete tnl0 s1 >/dev/null
lab_no_ping H 100.64.0.2
lab_ctl H peer add tnl0 s1 underlay 198.18.0.2 allowed 100.64.0.2/32,fd00:64::2/128 >/dev/null
wait "$pinger" || true
grep -q ' 0% packet loss' "$RUN/s2-ping.out" ||
  lab_fail "H to s2 lost packets while s1 changed: $(grep loss "$RUN/s2-ping.out")"
lab_ok "40 pings to s2 during s1's update, delete and add: none lost"
[ "$(ifindex H tnl0)" = "$idx" ] || lab_fail "tnl0 ifindex changed ($idx -> $(ifindex H tnl0))"
lab_ok "tnl0 kept ifindex $idx"
lab_ping H 100.64.0.2 3

lab_log "overlapping prefixes are refused"
lab_expect_rpc_error H ALREADY_EXISTS peer add tnl0 s3 underlay 198.18.0.9 allowed 100.64.0.2/32
lab_expect_rpc_error H ALREADY_EXISTS peer add tnl0 s3 underlay 198.18.0.2
lab_ctl H peer add tnl0 s3 underlay 198.18.0.9 allowed 100.64.0.0/28 >/dev/null
lab_ok "a nested prefix is accepted (the longest match wins)"
lab_ping H 100.64.0.2
lab_ctl H peer delete tnl0 s3 >/dev/null

lab_log "a spoofed inner source and an unknown outer source are dropped and counted"
before=$(drops H tnl0 rx spoofed_source)
lab_exec S1 ip addr add 100.64.0.99/32 dev lo
lab_exec S1 ping -n -c 2 -W 1 -I 100.64.0.99 100.64.0.1 >/dev/null 2>&1 &&
  lab_fail "H answered a packet from 100.64.0.99, which s1 may not send from"
after=$(drops H tnl0 rx spoofed_source)
[ "$after" -ge $((before + 2)) ] || lab_fail "rx spoofed_source drops $before -> $after"
lab_ok "rx spoofed_source drops $before -> $after"
lab_ctl X create gre1 mode gre local 198.18.0.4 remote 198.18.0.1 address 100.64.0.4/24 \
  >/dev/null
before=$(drops H tnl0 rx unknown_peer)
lab_exec X ping -n -c 2 -W 1 100.64.0.1 >/dev/null 2>&1 &&
  lab_fail "H answered X, which is no peer"
after=$(drops H tnl0 rx unknown_peer)
[ "$after" -ge $((before + 2)) ] || lab_fail "rx unknown_peer drops $before -> $after"
lab_ok "rx unknown_peer drops $before -> $after"

lab_log "keepalive per peer: a silent peer goes DOWN alone"
for i in 1 2; do lab_ctl H peer update tnl0 "s$i" keepalive 200ms,2 >/dev/null; done
deadline=$((SECONDS + 10))
until [ "$(lab_ctl H -o json peer get tnl0 s2 | jq -r '.status.keepalive.replies // 0')" -gt 0 ]; do
  [ "$SECONDS" -lt "$deadline" ] || lab_fail "no keepalive reply from s2 within 10 s"
  sleep 0.2
done
lab_stop_agent S2
deadline=$((SECONDS + 15))
until [ "$(peer_state H tnl0 s2)" = OPER_STATE_DOWN ]; do
  [ "$SECONDS" -lt "$deadline" ] || lab_fail "s2 not DOWN within 15 s of its agent stopping"
  sleep 0.2
done
[ "$(peer_state H tnl0 s1)" = OPER_STATE_UP ] || lab_fail "s1 is $(peer_state H tnl0 s1)"
lab_ping H 100.64.0.2
down=$(lab_metric H 'tunnelagent_tunnel_peers{state="down",tunnel="tnl0"}')
[ "$down" = 1 ] || lab_fail "tunnelagent_tunnel_peers{down} = '$down', want 1"
lab_ok "s2 DOWN, s1 UP and forwarding; tunnelagent_tunnel_peers{down} = 1"
lab_start_agent S2
deadline=$((SECONDS + 15))
until [ "$(peer_state H tnl0 s2)" = OPER_STATE_UP ]; do
  [ "$SECONDS" -lt "$deadline" ] || lab_fail "s2 not UP again within 15 s"
  sleep 0.2
done
lab_ok "s2 UP again once its agent answers"

lab_log "a restart of the hub's agent keeps every peer"
lab_stop_agent H
lab_start_agent H
[ "$(lab_ctl H -o json peer list tnl0 | jq -r '[.peers[].name] | join(" ")')" = "s1 s2" ] ||
  lab_fail "H after restart: peers are not s1 s2"
lab_ping H 100.64.0.2 3
lab_ping S1 100.64.0.3 3
lab_ok "after a restart: peers s1, s2 back, traffic through"

lab_log "tunnel-state prints the peers too, and the agent starts from that document"
lab_stop_agent H KILL
"$BIN_DIR/tunnel-state" "$RUN/H-state" >"$RUN/H-state.json" || lab_fail "H: cannot read the state"
[ "$(jq -r '[.peers[] | "\(.tunnel)/\(.peer.name)"] | join(" ")' "$RUN/H-state.json")" = \
  "tnl0/s1 tnl0/s2" ] || lab_fail "tunnel-state: peers $(jq -c .peers "$RUN/H-state.json")"
# The document alone as the state (the log beside it is then ignored), as an operator would
# put back an edited dump.
cp "$RUN/H-state.json" "$RUN/H-state/tunnels.json"
lab_start_agent H
[ "$(lab_ctl H -o json peer list tnl0 | jq -r '[.peers[].name] | join(" ")')" = "s1 s2" ] ||
  lab_fail "H started from tunnel-state's document: peers are not s1 s2"
lab_ping H 100.64.0.2 3
lab_ok "tunnel-state lists tnl0/s1 and tnl0/s2; an agent started from it has both, traffic through"

lab_log "three agents in a multipoint mesh"
for n in S1 S2 X; do lab_ctl "$n" delete gre1 >/dev/null 2>&1 || true; done
lab_ctl H delete tnl0 >/dev/null
nodes=(H S1 S2)
for i in 0 1 2; do
  lab_ctl "${nodes[$i]}" create mesh0 mode gre local "198.18.0.$((i + 1))" multipoint \
    address "100.65.0.$((i + 1))/24" address "fd00:65::$((i + 1))/64" >/dev/null
done
for i in 0 1 2; do
  for j in 0 1 2; do
    [ "$i" = "$j" ] && continue
    lab_ctl "${nodes[$i]}" peer add mesh0 "n$j" underlay "198.18.0.$((j + 1))" \
      allowed "100.65.0.$((j + 1))/32,fd00:65::$((j + 1))/128" >/dev/null
  done
done
for i in 0 1 2; do
  for j in 0 1 2; do
    [ "$i" = "$j" ] && continue
    lab_ping "${nodes[$i]}" "100.65.0.$((j + 1))" 3
    lab_ping "${nodes[$i]}" "fd00:65::$((j + 1))" 3
  done
done
lab_ok "every pair of the mesh, IPv4 and IPv6"

lab_log "a multipoint hub over GRE-in-UDP (encap fou) and two point-to-point fou spokes"
for n in H S1 S2; do lab_ctl "$n" delete mesh0 >/dev/null; done
lab_ctl H create tnlu mode gre local 198.18.0.1 multipoint encap fou encap-dport 4754 \
  address 100.66.0.1/24 >/dev/null
for i in 1 2; do
  lab_ctl "S$i" create fou1 mode gre local "198.18.0.$((i + 1))" remote 198.18.0.1 \
    encap fou encap-dport 4754 address "100.66.0.$((i + 1))/24" >/dev/null
  lab_ctl H peer add tnlu "u$i" underlay "198.18.0.$((i + 1))" allowed "100.66.0.$((i + 1))/32" \
    >/dev/null
done
# A spoke's tunnel also takes plain GRE: only its UDP counter tells that the hub sent in UDP.
udp_in() { lab_exec "$1" awk '/^Udp:/ && $2 ~ /^[0-9]+$/ { print $2 }' /proc/net/snmp; }
before=$(udp_in S1)
lab_ping H 100.66.0.2 3
after=$(udp_in S1)
[ "$after" -ge $((before + 3)) ] ||
  lab_fail "S1 took $((after - before)) UDP datagrams during 3 pings from the fou hub"
lab_ok "the hub's pings reached S1 in UDP ($((after - before)) datagrams)"
lab_ping H 100.66.0.3 3
lab_ping S1 100.66.0.1
lab_ping S2 100.66.0.1
lab_ping S1 100.66.0.3
lab_ctl X create fou1 mode gre local 198.18.0.4 remote 198.18.0.1 encap fou encap-dport 4754 \
  address 100.66.0.4/24 >/dev/null
before=$(drops H tnlu rx unknown_peer)
lab_exec X ping -n -c 2 -W 1 100.66.0.1 >/dev/null 2>&1 &&
  lab_fail "H answered X over fou, which is no peer"
after=$(drops H tnlu rx unknown_peer)
[ "$after" -ge $((before + 2)) ] || lab_fail "tnlu rx unknown_peer drops $before -> $after"
lab_ok "fou: hub to each spoke and back, spoke to spoke; X (no peer) dropped as unknown_peer"
