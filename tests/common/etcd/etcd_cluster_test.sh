#!/bin/bash
# etcd_cluster.sh as the integration tests use it: 3 members, a key through all of them, one
# member killed and the others still answering, the member started again with the key on it,
# everything gone after etcd_cluster_stop; then (as root) 1 member inside a network namespace,
# reachable there and not here.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../../.." && pwd)}"
source "$SOURCE_DIR/tests/common/etcd/etcd_cluster.sh"

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "SKIP: etcd or etcdctl not found (apt-get install etcd-server etcd-client)" >&2
  exit 77
fi
command -v curl >/dev/null || { echo "SKIP: curl not found" >&2; exit 77; }

NETNS=
cleanup() {
  etcd_cluster_stop
  [ -z "$NETNS" ] || ip netns del "$NETNS" 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

etcd_cluster_start 3
[ "$(tr ',' '\n' <<<"$ETCD_ENDPOINTS" | wc -l)" = 3 ] || fail "ETCD_ENDPOINTS=$ETCD_ENDPOINTS"
etcdctl_cluster put /k v >/dev/null
dir=$ETCD_CLUSTER_DIR
pids=("${ETCD_CLUSTER_PIDS[@]}")

etcd_member_kill 0
kill -0 "${pids[0]}" 2>/dev/null && fail "member 0 still runs"
etcd_cluster_wait_healthy
# The two others, alone (etcdctl would otherwise wait for the dead one too).
survivors=$(cut -d, -f2- <<<"$ETCD_ENDPOINTS")
ETCD_ENDPOINTS=$survivors etcdctl_cluster put /k w >/dev/null || fail "no quorum with 2 of 3"

etcd_member_start 0
first=$(cut -d, -f1 <<<"$ETCD_ENDPOINTS")
got=$(ETCD_ENDPOINTS=$first etcdctl_cluster get --print-value-only /k)
[ "$got" = w ] || fail "member 0 after its restart has /k=$got, want w"

etcd_cluster_stop
[ ! -d "$dir" ] || fail "$dir left behind"
for pid in "${pids[@]}" "${ETCD_CLUSTER_PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null && fail "etcd $pid left running"
done

if [ "$(id -u)" = 0 ]; then
  NETNS=etcdcl$$$(printf '%04x' $((RANDOM % 65536)))
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ETCD_CLUSTER_NETNS=$NETNS
  etcd_cluster_start 1
  etcdctl_cluster put /in-ns yes >/dev/null
  if timeout 5 env ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" --dial-timeout=1s \
    --command-timeout=2s get /in-ns >/dev/null 2>&1; then
    fail "the member in $NETNS answers from outside it"
  fi
  etcd_cluster_stop
  unset ETCD_CLUSTER_NETNS
fi
echo "PASS"
