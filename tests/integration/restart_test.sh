#!/bin/bash
# The agent restores its tunnels from <state_dir>/tunnels.json after SIGTERM and after kill -9,
# and refuses to start, leaving the file alone, when the file is corrupt.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_start_agent A
lab_start_agent B

lab_ctl A create tr1 mode gre remote 198.18.0.2 key 7 address 10.2.0.1/30 route 10.202.0.0/24 >/dev/null
lab_ctl B create tr1 mode gre remote 198.18.0.1 key 7 address 10.2.0.2/30 >/dev/null
lab_exec B ip addr add 10.202.0.1/32 dev lo
lab_ping A 10.2.0.2
lab_ping A 10.202.0.1

# NODE: tr1 is back, up, with its address and route (on A), and carries traffic again.
check_restored() {
  local n=$1 json state
  json=$(lab_ctl "$n" -o json get tr1) || lab_fail "$n: tr1 not restored"
  state=$(jq -r .status.state <<<"$json")
  [ "$state" = OPER_STATE_UP ] || lab_fail "$n: restored tr1 is $state, want OPER_STATE_UP"
  [ "$(jq -r .key <<<"$json")" = 7 ] || lab_fail "$n: restored tr1 lost its key: $json"
  lab_exec "$n" ip link show tr1 >/dev/null 2>&1 || lab_fail "$n: no device tr1 after restart"
  lab_ok "$n: tr1 restored, OPER_STATE_UP, device present"
  if [ "$n" = A ]; then
    lab_exec A ip -4 addr show dev tr1 | grep -q 'inet 10.2.0.1/30' || lab_fail "A: tr1 lost its address"
    lab_exec A ip route show 10.202.0.0/24 | grep -q 'dev tr1' || lab_fail "A: tr1 lost its route"
    lab_ok "A: address and route restored"
  fi
  lab_ping A 10.2.0.2 5   # bounded: 5 rounds of ping -c 3 -W 1
  lab_ping B 10.2.0.1
  lab_ping A 10.202.0.1
}

lab_log "SIGTERM the agent on A"
lab_stop_agent A TERM
grep -q 'INFO stopped' "$RUN/A.log" || lab_fail "A: agent did not stop cleanly on SIGTERM"
lab_exec A ip link show tr1 >/dev/null 2>&1 && lab_fail "A: tr1 still exists with the agent stopped"
lab_ok "A: agent stopped cleanly, tr1 device gone"
[ "$(lab_state_names A)" = tr1 ] || lab_fail "A: state file lists '$(lab_state_names A)', want tr1"
lab_ok "A: state file still lists tr1"
lab_no_ping B 10.2.0.1
lab_start_agent A
grep -q 'restored tunnel tr1' "$RUN/A.log" || lab_fail "A: no 'restored tunnel tr1' in the log"
check_restored A

lab_log "kill -9 the agent on B"
lab_stop_agent B KILL
for _ in $(seq 20); do lab_exec B ip link show tr1 >/dev/null 2>&1 || break; sleep 0.1; done
lab_exec B ip link show tr1 >/dev/null 2>&1 && lab_fail "B: tr1 still exists after kill -9"
lab_ok "B: agent killed, tr1 device gone"
lab_start_agent B
check_restored B

lab_log "restore while a foreign device holds the name (B)"
lab_stop_agent B TERM
lab_exec B ip link add tr1 type veth peer name tr1peer
lab_exec B ip addr add 10.7.0.1/24 dev tr1
lab_start_agent B
json=$(lab_ctl B -o json get tr1)
[ "$(jq -r .status.state <<<"$json")" = OPER_STATE_ERROR ] || lab_fail "B: tr1 not in error: $json"
[ -n "$(jq -r '.status.reason // empty' <<<"$json")" ] || lab_fail "B: tr1 in error without a reason"
lab_ok "B: agent starts, tr1 OPER_STATE_ERROR: $(jq -r .status.reason <<<"$json")"
[ "$(lab_metric B 'tunnelagent_tunnels{mode="gre",state="error"}')" = 1 ] || lab_fail "B: /metrics does not count tr1 as error"
lab_ctl B delete tr1
lab_exec B ip -4 addr show dev tr1 | grep -q 'inet 10.7.0.1/24' || lab_fail "B: deleting tr1 touched the foreign device"
lab_ok "B: delete of the failed tunnel leaves the foreign device alone"
[ -z "$(lab_state_names B)" ] || lab_fail "B: state file still lists $(lab_state_names B)"

lab_log "corrupt state file on A"
lab_stop_agent A TERM
state="$RUN/A-state/tunnels.json"
printf '{"formatVersion": 1, "tunnels": [ {"name": "tr1", garbage\n\x01\x02' >"$state"
cp "$state" "$RUN/corrupt.ref"
rc=0
out=$(lab_run_agent A 2>&1) || rc=$?
[ "$rc" != 0 ] || lab_fail "agent started with a corrupt state file"
[ "$rc" != 124 ] || lab_fail "agent kept running with a corrupt state file (killed by timeout)"
grep -qF "$state" <<<"$out" || lab_fail "agent's error does not name $state: $out"
lab_ok "agent exits $rc naming the file: $(grep -F "$state" <<<"$out" | head -n 1)"
cmp -s "$state" "$RUN/corrupt.ref" || lab_fail "the corrupt state file was modified"
lab_ok "state file byte-identical afterwards"
lab_exec A ip link show tr1 >/dev/null 2>&1 && lab_fail "A: tr1 device exists after the refused start"
lab_ok "A: no device left behind"

echo "PASS"
