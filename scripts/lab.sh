# lab.sh: a lab of tunnel-agent nodes in network namespaces, for the demo and the tests.
# Source it; it defines functions and nothing runs. Everything it makes carries a unique prefix
# and is removed by lab_cleanup, which lab_init installs as an EXIT trap.
#
#   lab_init                      unique prefix, run dir, cleanup trap
#   lab_add_node NAME ADDR        namespace $LAB-NAME on the lab bridge, underlay ADDR/24
#   lab_start_agent NAME [flags]  tunnel-agent in that namespace, gRPC on unix:$RUN/NAME.sock
#   lab_start_agent_tcp NAME HOST:PORT [flags]
#                                 the same with gRPC on HOST:PORT inside the namespace
#                                 (lab_ctl then talks to it from inside the namespace); plaintext
#                                 TCP needs --insecure (or a token, or TLS) in the flags
#   lab_run_agent NAME [flags]    the agent in the foreground (bounded by 10 s), for its
#                                 exit status and output when it is expected to refuse to start
#   lab_stop_agent NAME [SIGNAL]  and waits for it to exit
#   lab_ctl NAME ARGS...          tunnelctl against that node's agent
#   lab_exec NAME CMD...          a command inside the node's namespace
#   lab_metric NAME SERIES        one sample value from the node's /metrics (empty if absent)
#   lab_health NAME TARGET [SERVICE]
#                                 grpc.health.v1.Health/Check on TARGET from inside the node's
#                                 namespace (python3-grpcio): SERVING, NOT_SERVING,
#                                 SERVICE_UNKNOWN, or the call's gRPC error code
#   lab_require_python_grpc       sets PY to Debian's python3 with grpc and protobuf, else the
#                                 test is skipped (exit 77); protoc is needed too
#   lab_python_messages DIR       tunnel_pb2 (tunnelagent.v1) and health_pb2 generated into DIR
#
# Underlay addresses come from 198.18.0.0/15 (RFC 2544's benchmark range); nothing here sends
# traffic outside the lab's own namespaces.

: "${BIN_DIR:=build/bin}"
LAB_METRICS_PORT=${LAB_METRICS_PORT:-9476}

lab_require_python_grpc() {
  PY=/usr/bin/python3  # not `python3` on PATH: that may be an interpreter without grpc
  if ! "$PY" -c 'import grpc, google.protobuf' 2>/dev/null; then
    echo "SKIP: $PY lacks grpc or protobuf (apt-get install python3-grpcio python3-protobuf)" >&2
    exit 77
  fi
  command -v protoc >/dev/null || { echo "SKIP: protoc not found" >&2; exit 77; }
}

lab_python_messages() {
  local dir=$1 health_dir
  health_dir=$(mktemp -d)
  mkdir -p "$dir"
  protoc --python_out="$dir" -I"$SOURCE_DIR/proto" -I/usr/include tunnelagent/v1/tunnel.proto
  # health_pb2 as a top-level module: a generated grpc/ package would clash with grpcio's.
  cp "$SOURCE_DIR/proto/grpc/health/v1/health.proto" "$health_dir/"
  protoc --python_out="$dir" -I"$health_dir" health.proto
  rm -rf "$health_dir"
}

lab_log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
lab_fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

lab_init() {
  [ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, TUN devices)" >&2; exit 77; }
  for b in tunnel-agent tunnelctl; do
    [ -x "$BIN_DIR/$b" ] || { echo "missing $BIN_DIR/$b: build first (make build)" >&2; exit 1; }
  done
  BIN_DIR=$(cd "$BIN_DIR" && pwd)
  # Short: namespace-local device names must fit in 15 characters.
  LAB=ta$$$(printf '%04x' $((RANDOM % 65536)))
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-lab.XXXXXX")
  LAB_NODES=()
  declare -gA LAB_PIDS=()
  declare -gA LAB_ADDRS=()
  ip link add "${LAB}br" type bridge
  ip link set "${LAB}br" up
  trap lab_cleanup EXIT
  trap 'exit 130' INT TERM
}

lab_cleanup() {
  local rc=$?
  # Runs as an EXIT trap, often under `set -e`: one failed step must not skip the rest.
  set +e
  local n pid
  for n in "${!LAB_PIDS[@]}"; do
    pid=${LAB_PIDS[$n]}
    kill -TERM "$pid" 2>/dev/null
  done
  for n in "${!LAB_PIDS[@]}"; do
    pid=${LAB_PIDS[$n]}
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ "$rc" != 0 ] && [ -n "${RUN:-}" ]; then
    for f in "$RUN"/*.log; do
      [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  for n in "${LAB_NODES[@]}"; do ip netns del "$LAB-$n" 2>/dev/null; done
  ip link del "${LAB}br" 2>/dev/null
  [ -n "${RUN:-}" ] && rm -rf "$RUN"
  return "$rc"
}

lab_add_node() {
  local name=$1 addr=$2 ns="$LAB-$1" i=${#LAB_NODES[@]}
  ip netns add "$ns"
  LAB_NODES+=("$name")
  ip link add "${LAB}v$i" type veth peer name ul0 netns "$ns"
  ip link set "${LAB}v$i" master "${LAB}br" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev ul0
  ip -n "$ns" link set ul0 up
  # Inner packets arrive on the tunnel device, not the underlay: no strict reverse-path check.
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}

lab_exec() { local n=$1; shift; ip netns exec "$LAB-$n" "$@"; }

lab_start_agent() {
  local name=$1; shift
  rm -f "$RUN/$name.sock"
  unset "LAB_ADDRS[$name]"
  _lab_spawn_agent "$name" --grpc_listen="unix:$RUN/$name.sock" "$@"
  _lab_wait_agent "$name"
}

# The agent listens on a TCP address of the node's own namespace (each has its own loopback).
lab_start_agent_tcp() {
  local name=$1 addr=$2; shift 2
  LAB_ADDRS[$name]=$addr
  _lab_spawn_agent "$name" --grpc_listen="$addr" "$@"
  _lab_wait_agent "$name"
}

# Runs the agent in the foreground with the lab's usual flags; returns its exit status.
lab_run_agent() {
  local name=$1; shift
  ip netns exec "$LAB-$name" timeout 10 "$BIN_DIR/tunnel-agent" \
    --grpc_listen="unix:$RUN/$name.sock" \
    --metrics_listen="127.0.0.1:$LAB_METRICS_PORT" \
    --state_dir="$RUN/$name-state" "$@"
}

_lab_spawn_agent() {
  local name=$1; shift
  ip netns exec "$LAB-$name" "$BIN_DIR/tunnel-agent" \
    --grpc_listen="unix:$RUN/$name.sock" \
    --metrics_listen="127.0.0.1:$LAB_METRICS_PORT" \
    --state_dir="$RUN/$name-state" "$@" >>"$RUN/$name.log" 2>&1 &
  LAB_PIDS[$name]=$!
}

_lab_wait_agent() {
  local name=$1 _
  local out
  for _ in $(seq 200); do
    # Answering, and done bringing back the saved tunnels (listed as "restoring: ..." until then,
    # and as "verifying: ..." while the devices a crash left are checked).
    if out=$(lab_ctl "$name" list -o json 2>/dev/null); then
      [[ $out == *restoring:* || $out == *verifying:* ]] || return 0
    fi
    kill -0 "${LAB_PIDS[$name]}" 2>/dev/null || break
    sleep 0.05
  done
  cat "$RUN/$name.log" >&2
  lab_fail "agent on $name did not start"
}

lab_stop_agent() {
  local name=$1 sig=${2:-TERM} pid=${LAB_PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  local _
  {  # quiet: no "Killed" notice from the shell when the agent dies of the signal
    kill "-$sig" "$pid" || true
    for _ in $(seq 100); do kill -0 "$pid" || break; sleep 0.05; done
    kill -KILL "$pid" || true  # still there after 5 s: bounded, never hang in wait
    wait "$pid" || true        # killed by the signal: not a failure of the caller
  } 2>/dev/null
  unset "LAB_PIDS[$name]"
}

lab_ctl() {
  local n=$1; shift
  if [ -n "${LAB_ADDRS[$n]:-}" ]; then
    lab_exec "$n" "$BIN_DIR/tunnelctl" --agent="${LAB_ADDRS[$n]}" "$@"
  else
    "$BIN_DIR/tunnelctl" --agent="unix:$RUN/$n.sock" "$@"
  fi
}

lab_metric() {
  lab_exec "$1" curl -sf "http://127.0.0.1:$LAB_METRICS_PORT/metrics" |
    awk -v s="$2" '$1 == s && !found { print $2; found = 1 }'  # reads all: no SIGPIPE for curl
}

lab_health() {
  local node=$1 target=$2 service=${3:-}
  lab_exec "$node" /usr/bin/python3 - "$target" "$service" <<'EOF'
import sys
import grpc
target, service = sys.argv[1], sys.argv[2].encode()
check = grpc.insecure_channel(target).unary_unary(
    "/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
    response_deserializer=lambda b: b)
try:  # HealthCheckRequest{service}, by hand: no generated code needed
    response = check(b"\x0a" + bytes([len(service)]) + service if service else b"", timeout=5)
except grpc.RpcError as e:
    print(e.code().name)
    sys.exit(0)
status = response[1] if len(response) >= 2 and response[0] == 0x08 else 0
print({1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, "UNKNOWN"))
EOF
}

# Test helpers: one short line per check, and a failure names what was expected.
#   lab_ok MSG                    prints "ok: MSG"
#   lab_ping NODE ADDR [TRIES]    ping until one answer, at most TRIES (default 1) rounds of
#                                 `ping -c 3 -W 1`; fails the test otherwise
#   lab_no_ping NODE ADDR         fails the test if ADDR answers `ping -c 3 -W 1`
#   lab_expect_rpc_error NODE CODE ARGS...
#                                 tunnelctl ARGS must exit 2 with CODE (a gRPC code name) in
#                                 its error line
lab_ok() { printf 'ok: %s\n' "$*"; }

lab_ping() {
  local node=$1 addr=$2 tries=${3:-1} _
  for _ in $(seq "$tries"); do
    if lab_exec "$node" ping -q -n -c 3 -i 0.2 -W 1 "$addr" >/dev/null 2>&1; then
      lab_ok "$node pings $addr"
      return 0
    fi
  done
  lab_fail "$node cannot ping $addr"
}

lab_no_ping() {
  local node=$1 addr=$2
  if lab_exec "$node" ping -q -n -c 3 -i 0.2 -W 1 "$addr" >/dev/null 2>&1; then
    lab_fail "$node pings $addr but should not"
  fi
  lab_ok "$node cannot ping $addr (as expected)"
}

lab_expect_rpc_error() {
  local node=$1 code=$2; shift 2
  local out rc=0
  out=$(lab_ctl "$node" "$@" 2>&1 >/dev/null) || rc=$?
  [ "$rc" = 2 ] || lab_fail "tunnelctl $*: exit $rc, want 2 ($out)"
  case $out in
    *": $code: "*) ;;
    *) lab_fail "tunnelctl $*: want $code, got: $out" ;;
  esac
  lab_ok "tunnelctl $* -> $code"
}

# The tunnel names in NODE's saved state (snapshot and log, read by tunnel-state), sorted,
# space-separated; fails if the state cannot be read.
lab_state_names() {
  local json
  json=$("$BIN_DIR/tunnel-state" "$RUN/$1-state") || lab_fail "$1: cannot read $RUN/$1-state"
  jq -r '[(.tunnels // [])[].name] | sort | join(" ")' <<<"$json" ||
    lab_fail "$1: cannot read $RUN/$1-state"
}
