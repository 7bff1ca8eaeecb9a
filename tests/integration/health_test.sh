#!/bin/bash
# Health reflects the dataplane, and probes have a listener of their own: --health_listen
# answers grpc.health.v1.Health in plaintext and nothing else (no API, no reflection); while
# one dataplane worker thread is stopped (ptrace: PTRACE_SEIZE + PTRACE_INTERRUPT on its tid)
# the agent reports NOT_SERVING, overall and for tunnelagent.v1.TunnelService, on the main
# listener and the health listener, and logs it once; released, SERVING again.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"

PY=/usr/bin/python3  # not `python3` on PATH: that may be an interpreter without grpc
if ! "$PY" -c 'import grpc' 2>/dev/null; then
  echo "SKIP: $PY lacks grpc (apt-get install python3-grpcio)" >&2
  exit 77
fi

source "$SOURCE_DIR/scripts/lab.sh"
lab_init
lab_add_node A 198.18.0.1
HEALTH=127.0.0.1:50052  # A's own loopback
MAIN=unix:$RUN/A.sock
SVC=tunnelagent.v1.TunnelService

# want_health WANT TARGET [SERVICE]: Health/Check says WANT within 8 s (the agent looks every
# 0.5 s and calls a worker stalled after 2 s).
want_health() {
  local want=$1 target=$2 service=${3:-} got= _
  for _ in $(seq 80); do
    got=$(lab_health A "$target" "$service")
    [ "$got" = "$want" ] && { lab_ok "$target ${service:-(overall)}: $got"; return 0; }
    sleep 0.1
  done
  lab_fail "$target ${service:-(overall)}: $got, want $want"
}

lab_start_agent A --health_listen="$HEALTH" --dataplane_workers=2
PID=${LAB_PIDS[A]}
grep -q "serving grpc.health.v1.Health alone on $HEALTH (plaintext)" "$RUN/A.log" ||
  lab_fail "no health listener line in the log"

lab_log "the health listener answers health, and nothing else"
for target in "$HEALTH" "$MAIN"; do
  want_health SERVING "$target"
  want_health SERVING "$target" "$SVC"
done
want_health NOT_FOUND "$HEALTH" no.such.Service  # the health protocol's answer to Check
# A call of the API, and server reflection, on the health listener.
cat >"$RUN/call.py" <<'EOF'
import sys
import grpc
call = grpc.insecure_channel(sys.argv[1]).unary_unary(
    sys.argv[2], request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    call(b"", timeout=5)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name)
EOF
for method in /$SVC/ListTunnels /grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo; do
  got=$(lab_exec A "$PY" "$RUN/call.py" "$HEALTH" "$method")
  [ "$got" = UNIMPLEMENTED ] || lab_fail "$method on the health listener: $got, want UNIMPLEMENTED"
  lab_ok "$method on the health listener: UNIMPLEMENTED"
done
got=$(lab_exec A "$PY" "$RUN/call.py" "$MAIN" "/$SVC/ListTunnels")
[ "$got" = OK ] || lab_fail "ListTunnels on the main listener: $got (the control of the above)"
lab_ok "ListTunnels on the main listener: OK"

lab_log "a dataplane worker stopped with ptrace: NOT_SERVING everywhere"
tid=
for task in /proc/"$PID"/task/*; do
  [ "$(cat "$task/comm" 2>/dev/null)" = dataplane-1 ] && tid=${task##*/}
done
[ -n "$tid" ] || lab_fail "no thread named dataplane-1 in $(cat /proc/"$PID"/task/*/comm | tr '\n' ' ')"
# Stops one thread (not the process) until $RUN/release exists, at most 60 s; when the tracer
# ends, for whatever reason, the kernel detaches and the thread runs on.
cat >"$RUN/stop_thread.py" <<'EOF'
import ctypes, os, sys, time
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 17, 0x4206, 0x4207, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
tid, release = int(sys.argv[1]), sys.argv[2]
for request in (PTRACE_SEIZE, PTRACE_INTERRUPT):
    if libc.ptrace(request, tid, None, None) != 0:
        sys.exit(f"ptrace {request:#x}: {os.strerror(ctypes.get_errno())}")
os.waitpid(tid, WALL)  # the thread is stopped
print("stopped", flush=True)
deadline = time.time() + 60
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.05)
libc.ptrace(PTRACE_DETACH, tid, None, None)
print("released", flush=True)
EOF
rm -f "$RUN/release"
"$PY" "$RUN/stop_thread.py" "$tid" "$RUN/release" >"$RUN/tracer.out" 2>&1 &
TRACER=$!
# On any exit: release the thread first, then the lab's own cleanup (with the script's status).
trap 'rc=$?; set +e; touch "$RUN/release"; kill "$TRACER" 2>/dev/null; (exit "$rc"); lab_cleanup' EXIT
for _ in $(seq 50); do grep -q stopped "$RUN/tracer.out" && break; sleep 0.1; done
grep -q stopped "$RUN/tracer.out" || lab_fail "the tracer did not stop thread $tid: $(cat "$RUN/tracer.out")"
[ "$(awk '{print $3}' /proc/"$PID"/task/"$tid"/stat)" = t ] || lab_fail "thread $tid is not stopped"
lab_ok "thread $tid (dataplane-1) stopped"
for target in "$HEALTH" "$MAIN"; do
  want_health NOT_SERVING "$target"
  want_health NOT_SERVING "$target" "$SVC"
done
grep -q 'ERROR health: NOT_SERVING: dataplane: .*dataplane-1' "$RUN/A.log" ||
  lab_fail "no ERROR line naming dataplane-1: $(grep health: "$RUN/A.log")"
[ "$(grep -c 'health: NOT_SERVING' "$RUN/A.log")" = 1 ] || lab_fail "NOT_SERVING logged more than once"
lab_ok "logged once: $(grep -o 'health: NOT_SERVING.*' "$RUN/A.log")"
lab_ctl A list >/dev/null || lab_fail "the API stopped answering"
lab_ok "the API still answers"

lab_log "released: SERVING again"
touch "$RUN/release"
wait "$TRACER" || lab_fail "the tracer failed: $(cat "$RUN/tracer.out")"
for target in "$HEALTH" "$MAIN"; do
  want_health SERVING "$target"
  want_health SERVING "$target" "$SVC"
done
grep -q 'INFO health: SERVING' "$RUN/A.log" || lab_fail "no INFO line for the recovery"
lab_ok "logged: $(grep -o 'health: SERVING.*' "$RUN/A.log")"

lab_stop_agent A
grep -q 'INFO stopped' "$RUN/A.log" || lab_fail "the agent did not stop cleanly"

lab_log "the DaemonSet's flags: kubelet's probes (no token, no TLS) get SERVING on their port"
# The container's args and probe ports from deploy/kubernetes/agent-daemonset.yaml, with the
# node's IP, the token's and the state's paths made the lab's.
printf 'daemonset-token\n' >"$RUN/token"
mapfile -t lines < <("$PY" - "$SOURCE_DIR/deploy/kubernetes/agent-daemonset.yaml" <<'EOF'
import sys
import yaml
ds = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "DaemonSet")
container = ds["spec"]["template"]["spec"]["containers"][0]
print("ports", *sorted({container[p]["grpc"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}))
for arg in container["args"]:
    print("arg", arg)
EOF
)
args=()
probe_ports=
for line in "${lines[@]}"; do
  case $line in
    "ports "*) probe_ports=${line#ports } ;;
    "arg --auth_token_file="*) args+=(--auth_token_file="$RUN/token") ;;
    "arg --state_dir="*) args+=(--state_dir="$RUN/A-state") ;;
    "arg "*) a=${line#arg }; a=${a//\$(NODE_IP)/198.18.0.1}; args+=("${a//\$(NODE_NAME)/lab-a}") ;;
  esac
done
[[ $probe_ports =~ ^[0-9]+$ ]] || lab_fail "the probes use more than one port, or none: '$probe_ports'"
_lab_spawn_agent A "${args[@]}"
want_health SERVING "198.18.0.1:$probe_ports"
want_health SERVING "198.18.0.1:$probe_ports" "$SVC"
got=$(lab_exec A "$PY" "$RUN/call.py" "198.18.0.1:$probe_ports" "/$SVC/ListTunnels")
[ "$got" = UNIMPLEMENTED ] || lab_fail "ListTunnels on the probes' port: $got"
got=$(lab_exec A "$PY" "$RUN/call.py" 198.18.0.1:50051 "/$SVC/ListTunnels")
[ "$got" = UNAUTHENTICATED ] || lab_fail "ListTunnels on the API port without the token: $got"
lab_ok "the API port wants the token, the probes' port $probe_ports answers health alone"
lab_stop_agent A
echo "PASS"
