#!/bin/bash
# A tunnel's path MTU cannot be forged down. A third node on the underlay (R, off the tunnel's
# path) sends node A "fragmentation needed" errors quoting A's GRE packets to B:
# - with a quote that cannot be one of A's packets (another source, another key, no key, the
#   wrong GRE flags, no DF) or an MTU below IPv4's floor (552), or about another remote: the
#   path MTU stays 1472, and each is counted (tunnelagent_tunnel_drops_total{direction="rx",
#   reason="icmp_rejected"}, or tunnelagent_dataplane_drops_total{reason="icmp_rejected"} when
#   it names no tunnel);
# - with a quote that could be A's packet: the path MTU drops to what it reports (never below
#   552), for gre1 only (not the IPIP tunnel to the same remote), and a larger packet into gre1
#   is answered "fragmentation needed" by the tunnel.
# Both backends. The lowered value's expiry is the engine test's (IcmpEngineTest): it is 10
# minutes here.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_add_node R 198.18.0.3

# forge QUOTED_SRC QUOTED_DST PROTOCOL KEY MTU [FLAGS]: from R to A, an ICMP "fragmentation
# needed" reporting MTU about a 1500-byte packet QUOTED_SRC -> QUOTED_DST of PROTOCOL (47: GRE
# with KEY, or none when KEY is -; 4: IPIP), DF set unless FLAGS is nodf.
forge() {
  lab_exec R python3 - "$@" <<'PY'
import socket, struct, sys
qsrc, qdst, proto, key, mtu = sys.argv[1:6]
flags = sys.argv[6] if len(sys.argv) > 6 else ""
proto, mtu = int(proto), int(mtu)

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def ipv4(src, dst, protocol, payload, total=None, df=True):
    total = total or 20 + len(payload)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000 if df else 0, 64, protocol, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload

inner = ipv4("10.5.0.1", "10.5.0.2", 17, b"\0" * 8)
if proto == 47:
    gre = struct.pack("!HH", 0x2000, 0x0800) + struct.pack("!I", int(key)) if key != "-" \
        else struct.pack("!HH", 0, 0x0800)
    body = gre + inner
else:
    body = inner
quote = ipv4(qsrc, qdst, proto, body, total=1500, df=flags != "nodf")
icmp = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ipv4("198.18.0.3", "198.18.0.1", 1, icmp), ("198.18.0.1", 0))
PY
}

metric() { lab_metric A "$1"; }
path_mtu() { metric "tunnelagent_tunnel_path_mtu_bytes{tunnel=\"$1\"}"; }
rejected() { metric 'tunnelagent_tunnel_drops_total{direction="rx",reason="icmp_rejected",tunnel="gre1"}'; }
engine_rejected() { local v; v=$(metric 'tunnelagent_dataplane_drops_total{reason="icmp_rejected"}'); echo "${v:-0}"; }

# wait_for WHAT WANT COMMAND...: COMMAND prints WANT within 3 s.
wait_for() {
  local what=$1 want=$2 got _
  shift 2
  for _ in $(seq 30); do
    got=$("$@")
    [ "$got" = "$want" ] && return 0
    sleep 0.1
  done
  lab_fail "$what: got '$got', want '$want'"
}

lab_start_agent B
lab_ctl B create gre1 mode gre local 198.18.0.2 remote 198.18.0.1 key 42 address 10.5.0.2/30 >/dev/null

for backend in uring epoll; do
  lab_log "backend $backend"
  lab_start_agent A --io_backend=$backend
  # Restored from the state file after the first round: the path starts from the route again.
  if ! lab_ctl A get gre1 >/dev/null 2>&1; then
    lab_ctl A create gre1 mode gre local 198.18.0.1 remote 198.18.0.2 key 42 address 10.5.0.1/30 >/dev/null
    lab_ctl A create ip1 mode ipip local 198.18.0.1 remote 198.18.0.2 >/dev/null
  fi
  wait_for "gre1's path MTU from the route" 1472 path_mtu gre1
  wait_for "ip1's path MTU from the route" 1480 path_mtu ip1
  lab_ping A 10.5.0.2 3

  n=0
  for wrong in "198.18.0.9 198.18.0.2 47 42 1000 (another source)" \
               "198.18.0.1 198.18.0.2 47 43 1000 (another key)" \
               "198.18.0.1 198.18.0.2 47 - 1000 (no key)" \
               "198.18.0.1 198.18.0.2 47 42 1000 nodf (no DF)" \
               "198.18.0.1 198.18.0.2 47 42 300 (below the floor)"; do
    read -r qsrc qdst proto key mtu rest <<<"$wrong"
    flags=""
    case $rest in nodf*) flags=nodf ;; esac
    forge "$qsrc" "$qdst" "$proto" "$key" "$mtu" $flags
    n=$((n + 1))
    wait_for "icmp_rejected after ${rest#nodf }" "$n" rejected
    [ "$(path_mtu gre1)" = 1472 ] || lab_fail "a forged error (${rest#nodf }) lowered gre1 to $(path_mtu gre1)"
    lab_ok "forged ${rest#nodf }: counted, gre1 still 1472"
  done
  forge 198.18.0.1 198.18.0.7 47 42 1000
  wait_for "icmp_rejected of an error about another remote" 1 engine_rejected
  [ "$(path_mtu gre1)" = 1472 ] || lab_fail "an error about another remote lowered gre1"
  lab_ok "an error about another remote: counted by the engine, gre1 unchanged"
  # The kernel's own cache for the remote stays clean too: the agent's raw sockets opt out of
  # it (a GRE module of the host's kernel would still fill it; the agent never reads it).
  if lab_exec A ip route get 198.18.0.2 | grep -q ' mtu '; then
    echo "note: A's kernel cached a PMTU for 198.18.0.2: $(lab_exec A ip route get 198.18.0.2 | tr '\n' ' ')"
  fi

  # What a router on the path would send: believed, gre1 only.
  forge 198.18.0.1 198.18.0.2 47 42 1400
  wait_for "gre1 after a right quote of 1400" $((1400 - 28)) path_mtu gre1
  [ "$(path_mtu ip1)" = 1480 ] || lab_fail "gre1's error lowered ip1 to $(path_mtu ip1)"
  [ "$(rejected)" = "$n" ] || lab_fail "a right quote was counted as rejected"
  lab_ok "right quote: gre1 1372, ip1 still 1480"
  before=$(metric 'tunnelagent_tunnel_icmp_too_big_total{tunnel="gre1"}')
  lab_exec A ping -c 1 -W 1 -M do -s 1400 10.5.0.2 >/dev/null 2>&1 || true
  wait_for "the tunnel's own frag-needed for a 1428-byte packet" $((before + 1)) \
    metric 'tunnelagent_tunnel_icmp_too_big_total{tunnel="gre1"}'
  forge 198.18.0.1 198.18.0.2 47 42 200
  wait_for "icmp_rejected after a right quote below the floor" $((n + 1)) rejected
  [ "$(path_mtu gre1)" = 1372 ] || lab_fail "an MTU of 200 moved gre1 to $(path_mtu gre1)"
  forge 198.18.0.1 198.18.0.2 47 42 552
  wait_for "gre1 at the floor" $((552 - 28)) path_mtu gre1
  forge 198.18.0.1 198.18.0.2 4 - 1000
  wait_for "ip1 after its own right quote" $((1000 - 20)) path_mtu ip1
  [ "$(path_mtu gre1)" = 524 ] || lab_fail "ip1's error moved gre1 to $(path_mtu gre1)"
  lab_ok "right quotes: gre1 down to the floor (524), ip1 to 980, each by its own errors"
  lab_stop_agent A
done
lab_ok "icmp_pmtu: forged errors counted and ignored, right ones believed, on both backends"
