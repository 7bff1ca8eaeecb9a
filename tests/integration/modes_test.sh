#!/bin/bash
# Every tunnel mode between two agents, as `ip link add type gre|gretap|ipip|sit|ip6gre|
# ip6gretap|ip6tnl` would make them: traffic both ways (IPv4 and IPv6 inside, ARP across the tap
# modes), the kernel's automatic MTUs, and the wire checked by tshark on the underlay: protocols,
# keys, GRE checksums (verified by tshark), sequence numbers, TTL and DF.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"
command -v tshark >/dev/null || { echo "tshark missing (make test-deps)"; exit 77; }

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
for n in A B; do
  i=$([ $n = A ] && echo 1 || echo 2)
  lab_exec $n ip -6 addr add "fd00:18::$i/64" dev ul0 nodad
  # No router solicitations or DAD noise on the tunnel devices: only the test's traffic.
  lab_exec $n sysctl -qw net.ipv6.conf.default.dad_transmits=0 net.ipv6.conf.default.accept_dad=0
  # A second IPv4 pair for the ipip-in-UDP tunnel (one ipip tunnel per pair of addresses).
  lab_exec $n ip addr add "198.18.0.1$i/24" dev ul0
done
lab_start_agent A
lab_start_agent B

# name mode underlay-family A-v4 B-v4 A-v6 B-v6 auto-mtu extra-options
TUNNELS=(
  "mgre      gre       4 10.2.0.1/30 10.2.0.2/30 fd02:0::1/64 fd02:0::2/64 1476 -"
  "mgrek     gre       4 10.2.7.1/30 10.2.7.2/30 -            -            1464 key,42,csum,seq"
  "mgretap   gretap    4 10.2.1.1/24 10.2.1.2/24 fd02:1::1/64 fd02:1::2/64 1462 -"
  "mipip     ipip      4 10.2.2.1/30 10.2.2.2/30 -            -            1480 -"
  "msit      sit       4 -           -           fd02:3::1/64 fd02:3::2/64 1480 -"
  "mip6gre   ip6gre    6 10.2.4.1/30 10.2.4.2/30 fd02:4::1/64 fd02:4::2/64 1448 -"
  "mip6tap   ip6gretap 6 10.2.5.1/24 10.2.5.2/24 fd02:5::1/64 fd02:5::2/64 1434 -"
  "mip6tnl   ip6tnl    6 10.2.6.1/30 10.2.6.2/30 fd02:6::1/64 fd02:6::2/64 1452 -"
  "mgreu     gre       4 10.2.8.1/30 10.2.8.2/30 fd02:8::1/64 fd02:8::2/64 1464 key,7,encap,fou"
  "mipipu    ipip      4b 10.2.9.1/30 10.2.9.2/30 -          -            1472 encap,fou,encap-dport,5555"
)

underlay() {  # NODE FAMILY (4, 4b: the second IPv4 pair, 6)
  if [ "$2" = 6 ]; then
    [ "$1" = A ] && echo fd00:18::1 || echo fd00:18::2
  elif [ "$2" = 4b ]; then
    [ "$1" = A ] && echo 198.18.0.11 || echo 198.18.0.12
  else
    [ "$1" = A ] && echo 198.18.0.1 || echo 198.18.0.2
  fi
}

lab_log "create every mode on A and B"
for t in "${TUNNELS[@]}"; do
  read -r name mode fam a4 b4 a6 b6 mtu extra <<<"$t"
  opts=()
  [ "$extra" = - ] || IFS=, read -r -a opts <<<"$extra"
  for n in A B; do
    peer=$([ $n = A ] && echo B || echo A)
    addrs=()
    v4=$([ $n = A ] && echo "$a4" || echo "$b4")
    v6=$([ $n = A ] && echo "$a6" || echo "$b6")
    [ "$v4" = - ] || addrs+=(address "$v4")
    [ "$v6" = - ] || addrs+=(address "$v6")
    lab_ctl $n create "$name" mode "$mode" local "$(underlay $n "$fam")" \
      remote "$(underlay $peer "$fam")" "${opts[@]}" "${addrs[@]}" >/dev/null
  done
  lab_ok "created $name ($mode${extra:+ $extra}) on A and B"
done

lab_log "state, automatic MTU, device kind"
for t in "${TUNNELS[@]}"; do
  read -r name mode fam a4 b4 a6 b6 mtu extra <<<"$t"
  for n in A B; do
    json=$(lab_ctl $n -o json get "$name")
    [ "$(jq -r .status.state <<<"$json")" = OPER_STATE_UP ] ||
      lab_fail "$n $name: $(jq -c .status <<<"$json")"
    got=$(lab_exec $n cat "/sys/class/net/$name/mtu")
    [ "$got" = "$mtu" ] || lab_fail "$n $name: device MTU $got, want $mtu (the kernel's)"
    kind=$(lab_exec $n cat "/sys/class/net/$name/type")  # 1 = Ethernet (TAP), 65534 = none (TUN)
    case $mode in
      gretap | ip6gretap) [ "$kind" = 1 ] || lab_fail "$n $name: link type $kind, want 1 (TAP)" ;;
      *) [ "$kind" = 65534 ] || lab_fail "$n $name: link type $kind, want 65534 (TUN)" ;;
    esac
  done
  lab_ok "$name up on both nodes, MTU $mtu, $([ "$kind" = 1 ] && echo TAP || echo TUN) device"
done

lab_log "traffic across every mode (tshark listening on B's underlay)"
PCAP=$RUN/underlay.pcap
lab_exec B timeout 120 tshark -q -i ul0 -w "$PCAP" -f "ip proto 47 or ip proto 4 or ip proto 41 or ip6 or udp port 4754 or udp port 5555" \
  >/dev/null 2>&1 &
TSHARK=$!
for _ in $(seq 50); do [ -s "$PCAP" ] && break; sleep 0.1; done
sleep 0.5
for t in "${TUNNELS[@]}"; do
  read -r name mode fam a4 b4 a6 b6 mtu extra <<<"$t"
  if [ "$a4" != - ]; then
    lab_ping A "${b4%/*}" 3
    lab_ping B "${a4%/*}" 3
    lab_exec A ping -q -n -c 1 -W 2 -M do -s $((mtu - 28)) "${b4%/*}" >/dev/null ||
      lab_fail "$name: a full ${mtu}-byte IPv4 packet does not cross"
  fi
  if [ "$a6" != - ]; then
    lab_ping A "${b6%/*}" 3
    lab_ping B "${a6%/*}" 3
    lab_exec A ping -6 -q -n -c 1 -W 2 -M do -s $((mtu - 48)) "${b6%/*}" >/dev/null ||
      lab_fail "$name: a full ${mtu}-byte IPv6 packet does not cross"
  fi
  lab_ok "$name carries full-MTU packets"
done
for tap in mgretap mip6tap; do
  mac=$(lab_exec B cat "/sys/class/net/$tap/address")
  neigh=$(lab_exec A ip neigh show dev "$tap")
  grep -qi "$mac" <<<"$neigh" ||
    lab_fail "$tap: A has not learned B's MAC $mac through ARP/ND across the tunnel: $neigh"
  lab_ok "$tap: ARP/ND crossed the tunnel (A knows B's $mac)"
done
sleep 0.5
kill -TERM "$TSHARK" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$TSHARK" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$TSHARK" 2>/dev/null || true  # bounded: never hang on the capture
wait "$TSHARK" 2>/dev/null || true
pkill -f "dumpcap.*$PCAP" 2>/dev/null || true

lab_log "the wire, as tshark decodes it"
fields() {  # FILTER FIELD...: one line per packet, fields separated by |
  local filter=$1; shift
  local args=()
  for f in "$@"; do args+=(-e "$f"); done
  tshark -r "$PCAP" -Y "$filter" -T fields -E separator='|' \
    "${args[@]}" 2>/dev/null
}
expect_packets() {  # DESCRIPTION FILTER
  local n
  n=$(fields "$2" frame.number | wc -l)
  [ "$n" -gt 0 ] || lab_fail "no $1 on the underlay (filter: $2)"
  lab_ok "tshark sees $n packets of $1"
}
expect_packets "GRE with IPv4 inside (gre)" "ip.src == 198.18.0.1 && gre.proto == 0x0800 && !gre.key"
expect_packets "GRE with IPv6 inside (gre)" "ip.src == 198.18.0.1 && gre.proto == 0x86dd && !gre.key"
expect_packets "Ethernet in GRE (gretap)" "ip.src == 198.18.0.1 && gre.proto == 0x6558 && eth"
expect_packets "ARP in GRE (gretap)" "gre.proto == 0x6558 && arp"
expect_packets "IPv4 in IPv4 (ipip)" "ip.src == 198.18.0.1 && ip.proto == 4"
expect_packets "IPv6 in IPv4 (sit)" "ip.src == 198.18.0.1 && ip.proto == 41"
expect_packets "GRE over IPv6 (ip6gre)" "ipv6.src == fd00:18::1 && gre.proto == 0x0800"
expect_packets "Ethernet in GRE over IPv6 (ip6gretap)" "ipv6.src == fd00:18::1 && gre.proto == 0x6558"
expect_packets "GRE in UDP to port 4754 (gre encap fou, RFC 8086)" \
  "ip.src == 198.18.0.1 && udp.dstport == 4754 && !icmp"
expect_packets "IPv4 in UDP to port 5555 (ipip encap fou)" "ip.src == 198.18.0.11 && udp.dstport == 5555"
expect_packets "IPv4 in IPv6 (ip6tnl)" "ipv6.src == fd00:18::1 && ipv6.opt.tel == 4 && ip.proto == 1"
expect_packets "IPv6 in IPv6 (ip6tnl)" "ipv6.src == fd00:18::1 && ipv6.opt.tel == 4 && icmpv6 && !gre"

# The keyed tunnel: key 42, a checksum tshark verifies, sequence numbers that increase.
bad=$(fields "ip.src == 198.18.0.1 && gre.key == 42 && gre.checksum.status != 1" frame.number | wc -l)
[ "$bad" = 0 ] || lab_fail "$bad GRE packets with a checksum tshark finds wrong"
good=$(fields "ip.src == 198.18.0.1 && gre.key == 42 && gre.checksum.status == 1" frame.number | wc -l)
[ "$good" -gt 0 ] || lab_fail "no keyed GRE packets with a good checksum"
mapfile -t seqs < <(fields "ip.src == 198.18.0.1 && gre.key == 42" gre.sequence_number)
prev=0
for s in "${seqs[@]}"; do
  [ "$s" -gt "$prev" ] || lab_fail "GRE sequence numbers do not increase: $prev then $s"
  prev=$s
done
# (The first numbers went out before the capture started: the device's own IPv6 router
# solicitations. That numbering starts at 1 is checked by the engine tests.)
[ "${#seqs[@]}" -ge 4 ] || lab_fail "only ${#seqs[@]} keyed GRE packets captured"
lab_ok "mgrek: key 42, ${good} checksums good per tshark, sequence ${seqs[0]}..$prev increasing"

# Outer header: TTL inherited from the inner packet (ping sends 64) and DF set (pmtudisc).
mapfile -t hdr < <(fields "ip.src == 198.18.0.1 && gre.proto == 0x0800 && icmp && !gre.key" \
  ip.ttl ip.flags.df)
for h in "${hdr[@]}"; do
  IFS='|' read -r ttls dfs <<<"$h"
  [ "${dfs%%,*}" = 1 ] || [ "${dfs%%,*}" = True ] || lab_fail "outer DF not set: $h"
  [ "${ttls%%,*}" = "${ttls##*,}" ] || lab_fail "outer TTL ${ttls%%,*} is not the inner ${ttls##*,}"
done
lab_ok "gre: outer DF set, outer TTL = inner TTL (inherit) on ${#hdr[@]} packets"
# ip6 tunnels: hop limit 64 and the encapsulation limit option, as ip6_tunnel sends.
hl=$(fields "ipv6.src == fd00:18::1 && ipv6.opt.tel == 4" ipv6.hlim | cut -d, -f1 | sort -u)
[ "$hl" = 64 ] || lab_fail "ip6 tunnels' outer hop limit '$hl', want 64"
lab_ok "ip6 modes: hop limit 64, encapsulation limit 4"

lab_log "counters moved in every mode"
for t in "${TUNNELS[@]}"; do
  read -r name _ <<<"$t"
  json=$(lab_ctl B -o json get "$name")
  rx=$(jq -r '.status.counters.rxPackets // "0"' <<<"$json")
  tx=$(jq -r '.status.counters.txPackets // "0"' <<<"$json")
  [ "$rx" -gt 0 ] && [ "$tx" -gt 0 ] || lab_fail "B $name: rx $rx tx $tx"
done
lab_ok "every tunnel on B sent and received"

echo "PASS"
