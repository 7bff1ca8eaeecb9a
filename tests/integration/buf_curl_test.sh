#!/bin/bash
# A gRPC client nobody here wrote: `buf curl` drives the agents over server reflection alone,
# with no .proto files. GRE (keyed) and IPIP tunnels, traffic, Get/List JSON, Delete, health,
# method listing, an error code.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"

BUF="$BIN_DIR/../tools/node_modules/.bin/buf"
[ -x "$BUF" ] || BUF=$(command -v buf || true)
if [ -z "$BUF" ]; then
  echo "SKIP: buf not found (make test-deps installs it into <build>/tools)" >&2
  exit 77
fi
BUF=$(cd "$(dirname "$BUF")" && pwd)/$(basename "$BUF")

source "$SOURCE_DIR/scripts/lab.sh"
ADDR=127.0.0.1:50051   # each node's own loopback
URL=http://$ADDR

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_start_agent_tcp A "$ADDR" --insecure  # plaintext TCP, in a namespace of its own
lab_start_agent_tcp B "$ADDR" --insecure

# bufcurl NODE METHOD JSON: prints the response; exit status is buf's.
bufcurl() {
  local node=$1 method=$2 data=$3
  lab_exec "$node" "$BUF" curl --protocol grpc --http2-prior-knowledge --data "$data" "$URL/$method"
}
SVC=tunnelagent.v1.TunnelService

lab_log "reflection and health"
methods=$(lab_exec A "$BUF" curl --protocol grpc --http2-prior-knowledge --list-methods "$URL")
for m in CreateTunnel GetTunnel ListTunnels DeleteTunnel; do
  grep -qx "$SVC/$m" <<<"$methods" || lab_fail "--list-methods lacks $SVC/$m: $methods"
done
grep -qx "grpc.health.v1.Health/Check" <<<"$methods" || lab_fail "--list-methods lacks grpc.health.v1.Health/Check"
lab_ok "reflection lists the 4 TunnelService methods and grpc.health.v1.Health/Check"
for n in A B; do
  st=$(bufcurl "$n" grpc.health.v1.Health/Check '{}' | jq -r .status) || true
  [ "$st" = SERVING ] || lab_fail "$n health: '$st', want SERVING"
done
lab_ok "Health/Check: SERVING on A and B"

lab_log "create GRE (key 9) and IPIP on both nodes with buf curl only"
create() {  # NODE NAME MODE REMOTE KEYJSON ADDRESS
  local body
  body=$(jq -cn --arg n "$2" --arg m "$3" --arg r "$4" --argjson k "$5" --arg a "$6" \
    '{tunnel: ({name: $n, mode: $m, remote: $r, addresses: [$a]} + (if $k == null then {} else {key: $k} end))}')
  local out
  out=$(bufcurl "$1" "$SVC/CreateTunnel" "$body") || lab_fail "$1: CreateTunnel $2 failed: $out"
  [ "$(jq -r .status.state <<<"$out")" = OPER_STATE_UP ] || lab_fail "$1: created $2 not up: $out"
  lab_ok "$1: CreateTunnel $2 ($3) -> OPER_STATE_UP"
}
create A bgre TUNNEL_MODE_GRE 198.18.0.2 9 10.3.0.1/30
create B bgre TUNNEL_MODE_GRE 198.18.0.1 9 10.3.0.2/30
create A bipip TUNNEL_MODE_IPIP 198.18.0.2 null 10.3.0.5/30
create B bipip TUNNEL_MODE_IPIP 198.18.0.1 null 10.3.0.6/30
lab_ping A 10.3.0.2
lab_ping B 10.3.0.1
lab_ping A 10.3.0.6
lab_ping B 10.3.0.5

lab_log "GetTunnel and ListTunnels JSON"
json=$(bufcurl A "$SVC/GetTunnel" '{"name":"bgre"}')
jq -e '.name == "bgre" and .mode == "TUNNEL_MODE_GRE" and .key == 9 and .remote == "198.18.0.2"
       and .status.state == "OPER_STATE_UP" and .status.mtu == 1472' <<<"$json" >/dev/null ||
  lab_fail "GetTunnel bgre: unexpected $json"
# camelCase (proto3 JSON), not the .proto's snake_case; uint64 counters as strings.
jq -e '.status.counters | has("txPackets") and has("rxPackets") and (has("tx_packets") | not)
       and (.txPackets | tonumber > 0) and (.rxPackets | tonumber > 0)' <<<"$json" >/dev/null ||
  lab_fail "GetTunnel bgre counters not camelCase or not moving: $json"
lab_ok "GetTunnel bgre: GRE key 9, mtu 1472, OPER_STATE_UP, camelCase counters > 0"
json=$(bufcurl B "$SVC/ListTunnels" '{}')
jq -e '[.tunnels[].name] == ["bgre", "bipip"]
       and all(.tunnels[]; .status.state == "OPER_STATE_UP")
       and (.tunnels[1] | .mode == "TUNNEL_MODE_IPIP" and .status.mtu == 1480 and (has("key") | not))' \
  <<<"$json" >/dev/null || lab_fail "ListTunnels on B: unexpected $json"
lab_ok "ListTunnels on B: bgre, bipip, sorted, both OPER_STATE_UP"
names=$(lab_ctl A -o json list | jq -r '[.tunnels[].name] | join(" ")')
[ "$names" = "bgre bipip" ] || lab_fail "tunnelctl over TCP lists '$names'"
lab_ok "tunnelctl over TCP sees the same tunnels"

lab_log "errors"
expect_code() {  # NODE METHOD JSON CODE(buf's lower-case name) NUMBER
  local out rc=0
  out=$(bufcurl "$1" "$2" "$3" 2>&1) || rc=$?
  [ "$rc" = $(($5 * 8)) ] || lab_fail "$2 $3: buf exit $rc, want $(($5 * 8)) ($4): $out"
  [ "$(jq -r .code <<<"$out")" = "$4" ] || lab_fail "$2 $3: want code $4, got $out"
  lab_ok "$2 $3 -> $4"
}
expect_code A "$SVC/CreateTunnel" '{"tunnel":{"name":"bgre","mode":"TUNNEL_MODE_GRE","remote":"198.18.0.3"}}' already_exists 6
expect_code A "$SVC/CreateTunnel" '{"tunnel":{"name":"bx","mode":"TUNNEL_MODE_GRE","remote":"198.18.0.2","key":9}}' already_exists 6
expect_code A "$SVC/CreateTunnel" '{"tunnel":{"name":"bx","mode":"TUNNEL_MODE_IPIP","remote":"nowhere"}}' invalid_argument 3
expect_code A "$SVC/GetTunnel" '{"name":"bx"}' not_found 5

lab_log "delete"
out=$(bufcurl A "$SVC/DeleteTunnel" '{"name":"bgre"}')
[ "$(jq -c . <<<"$out")" = "{}" ] || lab_fail "DeleteTunnel returned $out, want {}"
lab_exec A ip link show bgre >/dev/null 2>&1 && lab_fail "A: bgre still exists after DeleteTunnel"
lab_ok "DeleteTunnel bgre: {} and the device is gone"
expect_code A "$SVC/DeleteTunnel" '{"name":"bgre"}' not_found 5
lab_no_ping A 10.3.0.2
lab_ping A 10.3.0.6   # IPIP unaffected

echo "PASS"
