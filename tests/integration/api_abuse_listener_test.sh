#!/bin/bash
# The API holds under abuse of its listener:
#  (a) with a low descriptor limit, tunnels are created until one is RESOURCE_EXHAUSTED saying
#      descriptors are short; the API still answers, new clients connect, and once 20 are
#      deleted creates work again;
#  (b) thousands of idle unix-socket connections, and TCP connections sending only the HTTP/2
#      preface, from another peer: a normal client's calls keep answering, the refusals are
#      counted, and new clients connect once the flood is gone;
#  (c) gRPC's own listener (a bearer token on TCP) stops accepting after running out of
#      descriptors: the self-check turns health NOT_SERVING, rebuilds the server, and health
#      and the API come back without a restart.
# During (a) and (b) a normal client's GetAgentInfo is probed every 50 ms and each answer must
# come within 200 ms; p50 and p99 are printed.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"

PY=/usr/bin/python3  # not `python3` on PATH: that may be an interpreter without grpc
if ! "$PY" -c 'import grpc' 2>/dev/null; then
  echo "SKIP: $PY lacks grpc (apt-get install python3-grpcio)" >&2
  exit 77
fi
getent passwd nobody >/dev/null || { echo "SKIP: no user nobody" >&2; exit 77; }
NOGROUP=$(id -gn nobody)

source "$SOURCE_DIR/scripts/lab.sh"
lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_add_node C 198.18.0.3
chmod o+x "$RUN"  # the flood's user reaches the socket through its group only

# probe.py TARGET SECONDS [TOKEN]: GetAgentInfo every 50 ms on one channel for SECONDS (and a
# new channel every 10th time: new clients connect too); prints "n= p50= p99= max=" in ms and
# fails when a call fails or takes more than 200 ms.
cat >"$RUN/probe.py" <<'PYEOF'
import sys, time, grpc
target, seconds = sys.argv[1], float(sys.argv[2])
metadata = [("authorization", "Bearer " + sys.argv[3])] if len(sys.argv) > 3 else None
def stub(channel):
    return channel.unary_unary("/tunnelagent.v1.TunnelService/GetAgentInfo",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
channel = grpc.insecure_channel(target)
call = stub(channel)
call(b"", timeout=5, metadata=metadata)  # connected before the clock starts
took, bad, end, i = [], [], time.monotonic() + seconds, 0
while time.monotonic() < end:
    i += 1
    fresh = i % 10 == 0
    c = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) if fresh else None
    t = time.monotonic()
    try:
        (stub(c) if fresh else call)(b"", timeout=2, metadata=metadata)
        ms = (time.monotonic() - t) * 1000
        # A new channel also connects (and, on TCP, handshakes): allowed twice as long.
        if ms > (400 if fresh else 200):
            bad.append("%s call took %.0f ms" % ("new-channel" if fresh else "", ms))
        if not fresh:
            took.append(ms)
    except grpc.RpcError as e:
        bad.append("%s: %s" % (e.code().name, e.details()))
    if c is not None:
        c.close()
    time.sleep(0.05)
took.sort()
pct = lambda p: took[min(len(took) - 1, int(len(took) * p))] if took else float("nan")
print("n=%d p50=%.1fms p99=%.1fms max=%.1fms" % (len(took), pct(0.5), pct(0.99), took[-1] if took else float("nan")))
if bad or len(took) < seconds * 5:
    print("FAILED probes: %s" % bad[:5])
    sys.exit(1)
PYEOF

# flood.py KIND TARGET COUNT HOLD [SOURCE]: opens COUNT connections (unix path, or host:port
# from SOURCE), sends the HTTP/2 preface on every second one (all of them for tcp) and
# nothing on the rest, holds them HOLD seconds, then closes them; prints how many connected
# and how many the server closed meanwhile.
cat >"$RUN/flood.py" <<'PYEOF'
import os, resource, select, socket, sys, time
kind, target, count, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, count + 100))
if kind == "unix" and os.getuid() == 0:
    os.setgid(65534); os.setuid(65534)  # another peer than the normal client (root)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
socks, failed = [], 0
for i in range(count):
    try:
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(target)
        else:
            host, port = target.rsplit(":", 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((sys.argv[5], 0))
            s.connect((host, int(port)))
        if kind == "tcp" or i % 2 == 0:
            s.send(PREFACE)
        socks.append(s)
    except OSError:
        failed += 1
end = time.monotonic() + hold
closed = set()
while time.monotonic() < end:
    live = [s for s in socks if s.fileno() not in closed]
    if not live:
        time.sleep(0.1); continue
    poller, by_fd = select.poll(), {}
    for s in live:
        poller.register(s.fileno(), select.POLLIN)
        by_fd[s.fileno()] = s
    for fd, _ in poller.poll(0):
        try:
            if not by_fd[fd].recv(65536, socket.MSG_DONTWAIT):
                closed.add(fd)
        except BlockingIOError:
            pass
        except OSError:
            closed.add(fd)
    time.sleep(0.2)
for s in socks:
    s.close()
print("connected=%d failed=%d closed_by_server=%d" % (len(socks), failed, len(closed)))
PYEOF

metric() { lab_metric "$1" "$2"; }

# The agent under a hard limit of 256 descriptors: a wrapper in a BIN_DIR of its own (the
# test's shell keeps its limit).
mkdir "$RUN/lowfd"
printf '#!/bin/bash\nulimit -n 256 || exit 1\nexec %q "$@"\n' "$BIN_DIR/tunnel-agent" \
  >"$RUN/lowfd/tunnel-agent"
chmod +x "$RUN/lowfd/tunnel-agent"
ln -s "$BIN_DIR/tunnelctl" "$RUN/lowfd/tunnelctl"
# with_low_limit CMD...: CMD (lab_start_agent...) starts the agent through the wrapper.
with_low_limit() {
  local bin=$BIN_DIR
  BIN_DIR=$RUN/lowfd
  "$@"
  BIN_DIR=$bin
}

# ---- (a) a low descriptor limit ---------------------------------------------------------
lab_log "(a) descriptors: 256 at most, 2 workers; tunnels until RESOURCE_EXHAUSTED"
with_low_limit lab_start_agent A --dataplane_workers=2 --grpc_socket_group="$NOGROUP"
grep -q "descriptors: limit 256" "$RUN/A.log" || lab_fail "no descriptor limit line in the log"
lab_exec A "$PY" "$RUN/probe.py" "unix:$RUN/A.sock" 12 >"$RUN/probe-a.out" 2>&1 &
probe=$!
created=0 out=
for i in $(seq 1 200); do
  if out=$(lab_ctl A create "t$i" mode gre remote 198.18.0.2 key "$i" 2>&1 >/dev/null); then
    created=$i
  else
    break
  fi
done
[ "$created" -ge 10 ] && [ "$created" -lt 200 ] || lab_fail "created $created tunnels: $out"
echo "$out" | grep -q "RESOURCE_EXHAUSTED" || lab_fail "tunnel $((created + 1)): $out"
echo "$out" | grep -q "file descriptors are short" || lab_fail "tunnel $((created + 1)): $out"
lab_ok "$created tunnels created, then: $out"
wait "$probe" || { cat "$RUN/probe-a.out"; lab_fail "GetAgentInfo slow or failing while creating"; }
lab_ok "(a) GetAgentInfo while creating tunnels: $(cat "$RUN/probe-a.out")"
for i in $(seq 1 20); do lab_ctl A delete "t$i" >/dev/null; done
lab_ctl A info >/dev/null || lab_fail "a new client cannot call after the deletes"
for i in $(seq 1 5); do
  lab_ctl A create "u$i" mode gre remote 198.18.0.2 key "$((1000 + i))" >/dev/null ||
    lab_fail "create u$i after 20 deletes failed"
done
lab_ok "after 20 deletes: new clients connect and create"
! grep -q "has no ifindex" "$RUN/A.log" || lab_fail "the log blames the device, not descriptors"

# ---- (b) floods of idle connections ------------------------------------------------------
lab_log "(b) 3000 idle unix-socket connections from another uid (half sent the preface)"
lab_exec A "$PY" "$RUN/probe.py" "unix:$RUN/A.sock" 8 >"$RUN/probe-b1.out" 2>&1 &
probe=$!
"$PY" "$RUN/flood.py" unix "$RUN/A.sock" 3000 7 >"$RUN/flood-b1.out"
wait "$probe" || { cat "$RUN/probe-b1.out"; lab_fail "GetAgentInfo slow or failing during the unix flood"; }
lab_ok "(b) unix flood: $(cat "$RUN/flood-b1.out"); GetAgentInfo: $(cat "$RUN/probe-b1.out")"
refused=$(metric A 'tunnelagent_api_connections_refused_total{listener="grpc",reason="peer_limit"}')
silent=$(metric A 'tunnelagent_api_connections_refused_total{listener="grpc",reason="silent"}')
[ "${refused%.*}" -gt 0 ] || lab_fail "no refusal counted: $refused"
grep -q "the most one peer may have" "$RUN/A.log" || lab_fail "no refusal logged"
lab_ok "refused for the peer's share: $refused, closed silent: $silent"
for _ in $(seq 50); do
  [ "$(metric A 'tunnelagent_api_connections{listener="grpc"}')" = 0 ] && break
  sleep 0.1
done
lab_ctl A info >/dev/null || lab_fail "a new client cannot call after the unix flood"
lab_ok "after the unix flood a new client connects"

lab_log "(b) 3000 TCP connections sending only the HTTP/2 preface, from another address"
lab_start_agent_tcp B 127.0.0.1:50051 --insecure --grpc_max_connections_per_peer=64 \
  --grpc_idle_timeout=3s
lab_exec B "$PY" "$RUN/probe.py" 127.0.0.1:50051 8 >"$RUN/probe-b2.out" 2>&1 &
probe=$!
lab_exec B "$PY" "$RUN/flood.py" tcp 127.0.0.1:50051 3000 7 127.0.0.2 >"$RUN/flood-b2.out"
wait "$probe" || { cat "$RUN/probe-b2.out"; lab_fail "GetAgentInfo slow or failing during the TCP flood"; }
lab_ok "(b) TCP preface flood: $(cat "$RUN/flood-b2.out"); GetAgentInfo: $(cat "$RUN/probe-b2.out")"
closed=$(sed -n 's/.*closed_by_server=\([0-9]*\).*/\1/p' "$RUN/flood-b2.out")
[ "$closed" -gt 2000 ] || lab_fail "only $closed of the flood's connections were closed by the agent"
refused=$(lab_metric B 'tunnelagent_api_connections_refused_total{listener="grpc",reason="peer_limit"}')
[ "${refused%.*}" -gt 0 ] || lab_fail "no refusal counted on TCP: $refused"
lab_ctl B info >/dev/null || lab_fail "a new TCP client cannot call after the flood"
lab_ok "after the TCP flood a new client connects (refused for the address's share: $refused)"

# ---- (c) gRPC's own listener dies; the self-check brings it back -------------------------
lab_log "(c) bearer token on TCP (gRPC's listener), 256 descriptors: exhausted by a flood"
echo "s3cret-token" >"$RUN/token"
export TUNNELCTL_TOKEN=s3cret-token
with_low_limit lab_start_agent_tcp C 127.0.0.1:50061 --auth_token_file="$RUN/token" \
  --health_listen=127.0.0.1:50062 --api_self_check_interval=1s --api_self_check_failures=2 \
  --api_self_check_timeout=500ms
lab_ctl C info >/dev/null || lab_fail "C does not answer with the token"
[ "$(lab_health C 127.0.0.1:50062)" = SERVING ] || lab_fail "C not SERVING at start"
# 400 connections held 3 s: gRPC accepts until the descriptors run out, then its listener
# stops for good (accept4: Too many open files).
# Health is watched on a stream opened before the flood (it needs no new descriptor): every
# status the agent sends, for 20 s.
cat >"$RUN/watch.py" <<'PYEOF'
import sys, time, grpc
watch = grpc.insecure_channel(sys.argv[1]).unary_stream(
    "/grpc.health.v1.Health/Watch", request_serializer=lambda b: b,
    response_deserializer=lambda b: b)
end = time.monotonic() + float(sys.argv[2])
try:
    for response in watch(b"", timeout=float(sys.argv[2])):
        status = response[1] if len(response) >= 2 and response[0] == 0x08 else 0
        print({1: "SERVING", 2: "NOT_SERVING"}.get(status, "UNKNOWN"), flush=True)
except grpc.RpcError:
    pass
PYEOF
lab_exec C "$PY" "$RUN/watch.py" 127.0.0.1:50062 20 >"$RUN/watch-c.out" &
watcher=$!
sleep 1
lab_exec C "$PY" "$RUN/flood.py" tcp 127.0.0.1:50061 400 3 127.0.0.2 >"$RUN/flood-c.out"
lab_ok "flood: $(cat "$RUN/flood-c.out")"
grep -q "Failed accept4: Too many open files" "$RUN/C.log" ||
  lab_fail "gRPC's listener did not run out of descriptors: the test proves nothing"
for _ in $(seq 100); do grep -q "health: the API answers its own calls" "$RUN/C.log" && break; sleep 0.2; done
grep -q "health: NOT_SERVING: the API does not answer its own calls" "$RUN/C.log" ||
  lab_fail "no NOT_SERVING line in C's log"
grep -q "grpc: server rebuilt" "$RUN/C.log" || lab_fail "no rebuild in C's log"
grep -q "health: the API answers its own calls .* again" "$RUN/C.log" ||
  lab_fail "the self-check did not pass again"
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
statuses=$(tr '\n' ' ' <"$RUN/watch-c.out")
[[ "$statuses" == SERVING*NOT_SERVING*SERVING* ]] ||
  lab_fail "health on the health listener went: $statuses (want SERVING NOT_SERVING SERVING)"
lab_ok "health NOT_SERVING, server rebuilt, SERVING again: $statuses"
for _ in $(seq 50); do lab_ctl C info >/dev/null 2>&1 && break; sleep 0.2; done
lab_ctl C info >/dev/null || lab_fail "C's API does not answer after the flood"
lab_ok "(c) C answers new clients again without a restart"
