# shellcheck shell=bash
# etcd_cluster.sh: a real etcd of 1 or 3 members for bash tests, as tests/common/etcd/
# etcd_cluster.h is for C++ ones. Source it; it defines functions and nothing runs.
#
#   etcd_cluster_start N     N (1 or 3) members on free ports of $ETCD_CLUSTER_HOST, a data
#                            directory under a new temporary directory; waits (10 s at most)
#                            until every member says it is healthy; exports ETCD_ENDPOINTS
#                            ("http://H:P1,http://H:P2,...") and ETCD_CLUSTER_DIR
#   etcd_member_kill I       SIGKILL to member I (0-based), waiting for it to be gone
#   etcd_member_start I      member I again on its data and ports, waiting until healthy
#   etcd_cluster_wait_healthy
#                            waits until every running member is healthy (has a raft leader):
#                            after the leader died etcd holds writes for an election timeout
#   etcd_cluster_stop        kills every member and removes the directory (safe to call twice,
#                            and from an EXIT trap: etcd_cluster_start does not set one)
#   etcdctl_cluster ARGS...  etcdctl (API v3) against the cluster
#
# Settings, read by etcd_cluster_start:
#   ETCD_CLUSTER_HOST   the address the members listen on (default 127.0.0.1)
#   ETCD_CLUSTER_NETNS  a network namespace to run them in (ip netns exec; default: this one),
#                       e.g. a lab node's "$LAB-n1", so that agents in the lab reach them
#   ETCD_CLUSTER_ARGS   more etcd flags for every member (word-split)
# Member I's log is $ETCD_CLUSTER_DIR/mI.log; etcd_cluster_start prints its end on failure.
#
#   source "$SOURCE_DIR/tests/common/etcd/etcd_cluster.sh"
#   trap etcd_cluster_stop EXIT     # or call it from the test's own cleanup
#   etcd_cluster_start 3
#   tunnel-agent --fleet_etcd="$ETCD_ENDPOINTS" ...
#   etcd_member_kill 0

ETCD_CLUSTER_PIDS=()

# Runs a command in ETCD_CLUSTER_NETNS, or here.
_etcd_cluster_exec() {
  if [ -n "${ETCD_CLUSTER_NETNS:-}" ]; then
    ip netns exec "$ETCD_CLUSTER_NETNS" "$@"
  else
    "$@"
  fi
}

# N free TCP ports on the host, one a line (bound together so that they differ).
_etcd_cluster_free_ports() {
  _etcd_cluster_exec python3 - "$1" "$ETCD_CLUSTER_HOST" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET)
    s.bind((sys.argv[2], 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

_etcd_url_host() {
  case $ETCD_CLUSTER_HOST in *:*) echo "[$ETCD_CLUSTER_HOST]" ;; *) echo "$ETCD_CLUSTER_HOST" ;; esac
}

_etcd_member_spawn() {
  local i=$1 host prefix=() unset=()
  host=$(_etcd_url_host)
  local client="http://$host:${ETCD_CLUSTER_CLIENT_PORTS[$i]}"
  local peer="http://$host:${ETCD_CLUSTER_PEER_PORTS[$i]}"
  # Not through _etcd_cluster_exec: a function sent to the background is a subshell, and $!
  # would not be etcd. ip netns exec and env exec what they run, so $! is etcd's pid.
  [ -z "${ETCD_CLUSTER_NETNS:-}" ] || prefix=(ip netns exec "$ETCD_CLUSTER_NETNS")
  # etcd takes ETCD_* variables as flags: ETCD_ENDPOINTS and the like must not reach it.
  mapfile -t unset < <(env | sed -n 's/^\(ETCD\(CTL\)\?_[A-Za-z0-9_]*\)=.*/--unset=\1/p')
  # shellcheck disable=SC2086 # ETCD_CLUSTER_ARGS is a list of flags
  "${prefix[@]}" env "${unset[@]}" \
    etcd --name "m$i" --data-dir "$ETCD_CLUSTER_DIR/m$i.data" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --listen-metrics-urls "http://$host:${ETCD_CLUSTER_METRICS_PORTS[$i]}" \
    --initial-cluster "$ETCD_CLUSTER_INITIAL" --initial-cluster-state new \
    --initial-cluster-token "$(basename "$ETCD_CLUSTER_DIR")" \
    --heartbeat-interval 50 --election-timeout 500 --logger zap --log-outputs stderr \
    ${ETCD_CLUSTER_ARGS:-} >>"$ETCD_CLUSTER_DIR/m$i.log" 2>&1 &
  ETCD_CLUSTER_PIDS[i]=$!
}

# Waits until member I's /health (on its plain-HTTP metrics port) says true, 10 s at most.
_etcd_member_wait() {
  local i=$1 n host
  host=$(_etcd_url_host)
  for n in $(seq 100); do
    if ! kill -0 "${ETCD_CLUSTER_PIDS[$i]}" 2>/dev/null; then
      echo "etcd member m$i exited; its log ends:" >&2
      tail -n 20 "$ETCD_CLUSTER_DIR/m$i.log" >&2
      return 1
    fi
    if _etcd_cluster_exec curl -s --max-time 1 \
      "http://$host:${ETCD_CLUSTER_METRICS_PORTS[$i]}/health" 2>/dev/null |
      grep -q '"health":"true"'; then
      return 0
    fi
    sleep 0.1
  done
  echo "etcd member m$i not healthy within 10 s (tried $n times); its log ends:" >&2
  tail -n 20 "$ETCD_CLUSTER_DIR/m$i.log" >&2
  return 1
}

etcd_cluster_start() {
  local n=${1:-1} i host ports peers=() endpoints=()
  case $n in 1 | 3) ;; *) echo "etcd_cluster_start: 1 or 3 members, not $n" >&2; return 1 ;; esac
  command -v etcd >/dev/null || { echo "etcd not found (apt-get install etcd-server)" >&2; return 1; }
  : "${ETCD_CLUSTER_HOST:=127.0.0.1}"
  host=$(_etcd_url_host)
  ETCD_CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/etcd-cluster.XXXXXX")
  export ETCD_CLUSTER_DIR
  mapfile -t ports < <(_etcd_cluster_free_ports $((3 * n)))
  [ "${#ports[@]}" = $((3 * n)) ] || { echo "etcd_cluster_start: no free ports" >&2; return 1; }
  ETCD_CLUSTER_CLIENT_PORTS=()
  ETCD_CLUSTER_PEER_PORTS=()
  ETCD_CLUSTER_METRICS_PORTS=()
  ETCD_CLUSTER_PIDS=()
  for i in $(seq 0 $((n - 1))); do
    ETCD_CLUSTER_CLIENT_PORTS[i]=${ports[$((3 * i))]}
    ETCD_CLUSTER_PEER_PORTS[i]=${ports[$((3 * i + 1))]}
    ETCD_CLUSTER_METRICS_PORTS[i]=${ports[$((3 * i + 2))]}
    peers+=("m$i=http://$host:${ETCD_CLUSTER_PEER_PORTS[$i]}")
    endpoints+=("http://$host:${ETCD_CLUSTER_CLIENT_PORTS[$i]}")
  done
  ETCD_CLUSTER_INITIAL=$(IFS=,; echo "${peers[*]}")
  ETCD_ENDPOINTS=$(IFS=,; echo "${endpoints[*]}")
  export ETCD_ENDPOINTS
  # All members first: one of three is healthy only once a quorum runs.
  for i in $(seq 0 $((n - 1))); do _etcd_member_spawn "$i"; done
  for i in $(seq 0 $((n - 1))); do _etcd_member_wait "$i" || return 1; done
}

etcd_member_kill() {
  local i=$1 pid=${ETCD_CLUSTER_PIDS[$1]:-}
  [ -n "$pid" ] || { echo "etcd_member_kill: member $i is not running" >&2; return 1; }
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  ETCD_CLUSTER_PIDS[i]=
}

etcd_member_start() {
  local i=$1
  [ -z "${ETCD_CLUSTER_PIDS[$i]:-}" ] || { echo "etcd_member_start: member $i runs" >&2; return 1; }
  _etcd_member_spawn "$i"
  _etcd_member_wait "$i"
}

etcd_cluster_wait_healthy() {
  local i
  for i in "${!ETCD_CLUSTER_PIDS[@]}"; do
    [ -z "${ETCD_CLUSTER_PIDS[$i]}" ] || _etcd_member_wait "$i" || return 1
  done
}

etcd_cluster_stop() {
  local i
  for i in "${!ETCD_CLUSTER_PIDS[@]}"; do
    [ -n "${ETCD_CLUSTER_PIDS[$i]}" ] && etcd_member_kill "$i"
  done
  ETCD_CLUSTER_PIDS=()
  if [ -n "${ETCD_CLUSTER_DIR:-}" ] && [ -d "$ETCD_CLUSTER_DIR" ]; then
    rm -rf "$ETCD_CLUSTER_DIR"
  fi
  ETCD_CLUSTER_DIR=
  return 0
}

etcdctl_cluster() {
  _etcd_cluster_exec env ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" \
    --dial-timeout=3s --command-timeout=10s "$@"
}
