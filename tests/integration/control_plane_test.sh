#!/bin/bash
# The control plane end to end, over Debian's python3-grpcio (control_plane_client.py) against
# real agents in a lab: GetAgentInfo; request_id retries; UpdateTunnel in place and recreating
# (with traffic between two nodes before and after); etags; WatchTunnels with resume and
# REPAIRED on `ip link set down` and STATE_CHANGED on a loop; ApplyTunnels (dry run, prune, ownership); --max_tunnels;
# overlapping prefixes; rollback when the kernel refuses a route; ListTunnels pages and filters.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"

source "$SOURCE_DIR/scripts/lab.sh"
lab_require_python_grpc
MAX=3  # --max_tunnels of node C

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_add_node C 198.18.0.3
lab_start_agent A --node_name=lab-a
lab_start_agent B --node_name=lab-b
lab_start_agent C --node_name=lab-c --max_tunnels=$MAX

GEN=$RUN/py
lab_python_messages "$GEN"

cpc() {  # NODE COMMAND ARGS...
  local n=$1; shift
  "$PY" "$SOURCE_DIR/tests/integration/control_plane_client.py" "$GEN" "$RUN/$n.sock" "$@"
}
# The agent's tunnels and its state file's agree.
check_state_file() {
  local n=$1 agent file
  agent=$(cpc "$n" names)
  file=$(lab_state_names "$n")
  [ "$agent" = "$file" ] || lab_fail "$n: the agent has '$agent', its state file '$file'"
  lab_ok "$n: state file lists the agent's tunnels: ${file:-none}"
}

lab_log "GetAgentInfo"
cpc A info lab-a 4096
cpc C info lab-c $MAX

lab_log "a GRE tunnel between A and B"
lab_ctl A create t1 mode gre remote 198.18.0.2 key 5 address 10.3.0.1/30 >/dev/null
lab_ctl B create t1 mode gre remote 198.18.0.1 key 5 address 10.3.0.2/30 >/dev/null
lab_exec B ip addr add 10.230.0.1/32 dev lo
lab_ping A 10.3.0.2 3
lab_no_ping A 10.230.0.1

lab_log "UpdateTunnel in place: a route and the MTU"
cpc A update-inplace "$LAB-A" t1 10.230.0.0/24 1400
lab_ping A 10.230.0.1
# The new MTU holds for real packets: 1372 bytes of ICMP data + 28 of headers fit in 1400.
lab_exec A ping -q -n -c 1 -W 1 -M "do" -s 1372 10.3.0.2 >/dev/null ||
  lab_fail "A: 1400-byte ping over t1 fails"
lab_exec A ping -q -n -c 1 -W 1 -M "do" -s 1373 10.3.0.2 >/dev/null 2>&1 &&
  lab_fail "A: 1401-byte ping over t1 with DF went out"
lab_ok "A: a 1400-byte packet crosses t1, a 1401-byte one with DF does not leave"
check_state_file A

lab_log "UpdateTunnel recreating: GRE -> IPIP on A, then on B"
cpc A update-recreate "$LAB-A" t1
lab_no_ping A 10.3.0.2  # A speaks IPIP, B still GRE
cpc B update-recreate "$LAB-B" t1
lab_ping A 10.3.0.2 3
lab_ping A 10.230.0.1
lab_ping B 10.3.0.1
[ "$(lab_ctl A -o json get t1 | jq -r .mode)" = TUNNEL_MODE_IPIP ] ||
  lab_fail "A: tunnelctl does not see t1 as IPIP"
lab_ok "A: tunnelctl sees t1 as IPIP"
check_state_file A

lab_log "request_id"
cpc A idempotent 198.18.0.2

lab_log "etag"
cpc A etag 198.18.0.2

lab_log "WatchTunnels"
cpc A watch "$LAB-A" 198.18.0.2

lab_log "ApplyTunnels, owner fleet"
cpc A apply "$LAB-A" 198.18.0.2
check_state_file A

lab_log "--max_tunnels=$MAX on C"
cpc C limit $MAX 198.18.0.2
lab_exec C ip link show mx >/dev/null 2>&1 || lab_fail "C: no device mx"
check_state_file C

lab_log "overlapping prefixes"
lab_ctl A update t1 route 10.230.0.0/24 route 10.231.0.0/24 >/dev/null
cpc A overlap t1

lab_log "rollback when the kernel refuses a route"
# A veth (this kernel has no dummy) holding a route: the agent's route add (NLM_F_EXCL) fails.
lab_exec A ip link add blk0 type veth peer name blk0p
lab_exec A ip link set blk0 up
lab_exec A ip link set blk0p up
lab_exec A ip route add 10.240.0.0/24 dev blk0
cpc A rollback "$LAB-A" 10.240.0.0/24 t1
check_state_file A
lab_ping A 10.230.0.1  # t1 still carries its routes' traffic

lab_log "ListTunnels"
cpc A list "$LAB-A" 198.18.0.2
check_state_file A
[ "$(cpc A names)" = t1 ] || lab_fail "A: left over: $(cpc A names)"
lab_ok "A: only t1 left"

lab_log "ApplyTunnels pruning many: their devices go in one batch; someone else's link stays"
# bulk_apply COUNT: tunnels b1..bCOUNT for owner "bulk" (keyed GRE to B), or none (prune).
bulk_apply() {
  jq -n --argjson n "$1" '{owner: "bulk", tunnels: [range(1; $n + 1) |
    {name: "b\(.)", mode: "TUNNEL_MODE_GRE", local: "198.18.0.1", remote: "198.18.0.2",
     key: (1000 + .)}]}' >"$RUN/bulk.json"
  lab_ctl A apply --prune -f "$RUN/bulk.json" >/dev/null
}
bulk_devices() { lab_exec A ip -o link show | grep -c ': b[0-9]*:' || true; }
bulk_apply 40
[ "$(bulk_devices)" = 40 ] || lab_fail "A: $(bulk_devices) of 40 bulk devices"
# A link of someone else's in the group the batch deletes (the agent's group + 1): the batch
# would take it along, so the devices go one by one and the veth stays.
lab_exec A ip link add bystander0 type veth peer name bystander1
lab_exec A ip link set bystander0 group 2054847099
bulk_apply 0
[ "$(bulk_devices)" = 0 ] || lab_fail "A: $(bulk_devices) bulk devices left after the prune"
lab_exec A ip link show bystander0 >/dev/null || lab_fail "A: the prune removed someone else's link"
grep -q "link bystander0 is in link group 2054847099" "$RUN/A.log" ||
  lab_fail "A: no warning about the link in the removal group"
lab_ok "A: 40 devices removed one by one beside someone else's link in the removal group"
lab_exec A ip link del bystander0
bulk_apply 40
bulk_apply 0
[ "$(bulk_devices)" = 0 ] || lab_fail "A: $(bulk_devices) bulk devices left after the prune"
[ "$(grep -c "is in link group 2054847099" "$RUN/A.log")" = 1 ] &&
  grep -q "removed 40 devices in one batch" "$RUN/A.log" ||
  lab_fail "A: the second prune did not go in one batch"
[ "$(cpc A names)" = t1 ] || lab_fail "A: left over after the prunes: $(cpc A names)"
lab_ok "A: 40 devices removed in one batch"

echo "PASS"
