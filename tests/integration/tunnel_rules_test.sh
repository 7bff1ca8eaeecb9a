#!/bin/bash
# The kernel's receive rules on crafted packets (bad checksum, missing checksum, wrong key, old
# sequence number, GRE version 1, truncated: each dropped and counted by reason), keepalive
# (DOWN when the far agent stops, UP when it is back; the far agent answers without being
# configured for it), and path MTU discovery through the tunnel (`ping -M do` above the path's
# MTU gets "frag needed" / "packet too big" with the right MTU).
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"
PY=/usr/bin/python3

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_start_agent A
lab_start_agent B

both() {  # NAME ARGS... (A's side; B gets local/remote swapped and the .2 address)
  local name=$1; shift
  lab_ctl A create "$name" local 198.18.0.1 remote 198.18.0.2 "$@" "${A_ADDR[@]}" >/dev/null
  lab_ctl B create "$name" local 198.18.0.2 remote 198.18.0.1 "$@" "${B_ADDR[@]}" >/dev/null
}

lab_log "crafted packets against B's gre key 77 csum seq tunnel"
A_ADDR=(address 10.3.0.1/30) B_ADDR=(address 10.3.0.2/30)
both mchk mode gre key 77 csum seq
lab_ping A 10.3.0.2 3

dp_drop() { lab_metric B "tunnelagent_dataplane_drops_total{reason=\"$1\"}"; }
tun_drop() {
  lab_metric B "tunnelagent_tunnel_drops_total{direction=\"rx\",reason=\"$1\",tunnel=\"mchk\"}"
}
# craft KIND...: sends from A to B, over a raw socket, GRE packets built by hand.
craft() {
  lab_exec A "$PY" - "$@" <<'EOF'
import socket, struct, sys

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def ip(payload, proto, src, dst):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x4242, 0x4000, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload

def icmp_echo(seq):
    b = struct.pack("!BBHHH", 8, 0, 0, 0x77, seq) + b"crafted!"
    return b[:2] + struct.pack("!H", csum(b)) + b[4:]

def gre(key=77, seq=None, with_csum=True, bad_csum=False, version=0):
    inner = ip(icmp_echo((seq or 1) & 0xFFFF), 1, "10.3.0.1", "10.3.0.2")
    flags = version | (0x8000 if with_csum else 0) | 0x2000 | (0x1000 if seq is not None else 0)
    opts = (b"\0\0\0\0" if with_csum else b"") + struct.pack("!I", key)
    if seq is not None: opts += struct.pack("!I", seq)
    p = struct.pack("!HH", flags, 0x0800) + opts + inner
    if with_csum:
        c = csum(p) ^ (1 if bad_csum else 0)
        p = p[:4] + struct.pack("!H", c) + p[6:]
    return p

s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for kind in sys.argv[1:]:
    name, _, arg = kind.partition("=")
    if name == "good": g = gre(seq=int(arg))
    elif name == "bad_csum": g = gre(seq=int(arg), bad_csum=True)
    elif name == "no_csum": g = gre(seq=int(arg), with_csum=False)
    elif name == "no_seq": g = gre()
    elif name == "wrong_key": g = gre(key=78, seq=int(arg))
    elif name == "version1": g = gre(seq=int(arg), version=1)
    elif name == "truncated": g = gre(seq=int(arg))[:6]
    else: sys.exit("unknown kind " + kind)
    s.sendto(ip(g, 47, "198.18.0.1", "198.18.0.2"), ("198.18.0.2", 0))
EOF
}
wait_metric() {  # DESCRIPTION COMMAND... : until the command prints a number >= WANT
  local what=$1 want=$2; shift 2
  local got
  for _ in $(seq 50); do
    got=$("$@")
    [ "${got:-0}" -ge "$want" ] && { lab_ok "$what: $got"; return 0; }
    sleep 0.1
  done
  lab_fail "$what: ${got:-absent}, want >= $want"
}

rx_of_mchk() { lab_ctl B -o json get mchk | jq -r '.status.counters.rxPackets // "0"'; }
rx0=$(rx_of_mchk)
base_csum=$(dp_drop gre_checksum) base_key=$(dp_drop no_tunnel) base_ver=$(dp_drop gre_version)
base_trunc=$(dp_drop truncated)
craft good=100000
wait_metric "a valid crafted packet is delivered (rx_packets)" $((rx0 + 1)) rx_of_mchk
craft bad_csum=100001 wrong_key=100002 version1=100003 truncated=100004
wait_metric "bad checksum -> dataplane drop gre_checksum" $((base_csum + 1)) dp_drop gre_checksum
wait_metric "wrong key -> dataplane drop no_tunnel" $((base_key + 1)) dp_drop no_tunnel
wait_metric "GRE version 1 -> dataplane drop gre_version" $((base_ver + 1)) dp_drop gre_version
wait_metric "truncated -> dataplane drop truncated" $((base_trunc + 1)) dp_drop truncated
craft no_csum=100010
wait_metric "checksum missing where required -> mchk rx drop gre_checksum" 1 tun_drop gre_checksum
craft good=100020 good=100019 no_seq
wait_metric "sequence behind, and missing -> mchk rx drop gre_sequence" 2 tun_drop gre_sequence
# (A's own packets are now far behind the crafted numbers: B drops them too, as the kernel
# would. iseq is for links that do not reorder, and a restart of the sender resets nothing.)

lab_log "keepalive: B is not configured for it and answers anyway"
A_ADDR=(address 10.3.1.1/30) B_ADDR=(address 10.3.1.2/30)
lab_ctl A create mka local 198.18.0.1 remote 198.18.0.2 mode gre key 5 keepalive 0.2,3 \
  "${A_ADDR[@]}" >/dev/null
lab_ctl B create mka local 198.18.0.2 remote 198.18.0.1 mode gre key 5 "${B_ADDR[@]}" >/dev/null
state() { lab_ctl A -o json get mka | jq -r .status.state; }
wait_state() {  # WANT WITHIN-TENTHS
  local s
  for _ in $(seq "$2"); do
    s=$(state)
    [ "$s" = "$1" ] && return 0
    sleep 0.1
  done
  lab_fail "A mka: state $s, want $1 ($(lab_ctl A -o json get mka | jq -c .status))"
}
sleep 1
wait_state OPER_STATE_UP 10
replies=$(lab_ctl A -o json get mka | jq -r '.status.keepalive.replies // "0"')
[ "$replies" -ge 3 ] || lab_fail "A mka: $replies keepalive replies in 1 s, want >= 3"
answered=$(lab_ctl B -o json get mka | jq -r '.status.keepalive.answered // "0"')
[ "$answered" = 0 ] || lab_fail "B reports keepalive status for a tunnel without keepalive"
alive=$(lab_metric A 'tunnelagent_tunnel_peer_alive{tunnel="mka"}')
[ "$alive" = 1 ] || lab_fail "A tunnelagent_tunnel_peer_alive{mka} = '$alive', want 1"
lab_ok "A mka UP with $replies keepalive replies; peer_alive 1"

lab_stop_agent B
t0=$(date +%s%N)
wait_state OPER_STATE_DOWN 30
t1=$(date +%s%N)
reason=$(lab_ctl A -o json get mka | jq -r .status.reason)
case $reason in *keepalive*) ;; *) lab_fail "A mka DOWN for '$reason', want a keepalive reason" ;; esac
alive=$(lab_metric A 'tunnelagent_tunnel_peer_alive{tunnel="mka"}')
[ "$alive" = 0 ] || lab_fail "A tunnelagent_tunnel_peer_alive{mka} = '$alive', want 0"
lab_ok "B stopped: A mka DOWN after $(((t1 - t0) / 1000000)) ms ($reason)"
lab_start_agent B
wait_state OPER_STATE_UP 30
lab_ok "B back: A mka UP again"
lab_ping A 10.3.1.2

lab_log "path MTU: the underlay shrinks to 1400 under a tunnel of MTU 1476"
A_ADDR=(address 10.3.2.1/30 address fd03:2::1/64) B_ADDR=(address 10.3.2.2/30 address fd03:2::2/64)
both mpmtu mode gre key 9 mtu 1476
lab_ping A 10.3.2.2 3
lab_exec A ip link set ul0 mtu 1400
lab_exec B ip link set ul0 mtu 1400  # both ends: a veth drops what exceeds its own MTU
want=$((1400 - 28))  # less GRE with a key and the outer IPv4 header
out=$(lab_exec A ping -n -c 3 -i 0.3 -W 1 -M do -s 1440 10.3.2.2 2>&1 || true)
grep -q "mtu = $want" <<<"$out" || lab_fail "ping -M do -s 1440: no 'frag needed' with mtu $want: $out"
lab_ok "ping -M do above the path gets 'Frag needed and DF set (mtu = $want)'"
got=$(lab_ctl A -o json get mpmtu | jq -r '.status.pathMtu // "0"')
[ "$got" = "$want" ] || lab_fail "A mpmtu status.pathMtu $got, want $want"
lab_ok "GetTunnel reports path MTU $want"
lab_exec A ping -q -n -c 1 -W 2 -M do -s $((want - 28)) 10.3.2.2 >/dev/null ||
  lab_fail "a packet of the path MTU ($want) does not cross"
lab_ok "a $want-byte packet crosses"
out=$(lab_exec A ping -6 -n -c 3 -i 0.3 -W 1 -M do -s 1400 fd03:2::2 2>&1 || true)
grep -qi "mtu[= ]*$want" <<<"$out" || lab_fail "ping -6 -M do -s 1400: no 'packet too big' with mtu $want: $out"
lab_ok "IPv6 inside: 'Packet too big' with mtu $want"
lab_exec A ping -q -n -c 1 -W 2 -s 3000 10.3.2.2 >/dev/null || lab_fail "a 3028-byte ping without DF does not cross"
lab_ok "without DF a 3028-byte ping still crosses"

echo "PASS"
