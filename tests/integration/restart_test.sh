#!/bin/bash
# Restarts. Tunnel devices are persistent TUN devices marked with the alias "tunnel-agent":
# SIGTERM removes them (unless --keep_devices) and the next start makes them again from
# <state_dir>/tunnels.json; after kill -9 they stay, and the next start re-attaches to them (same
# ifindex) and traffic resumes. On start, marked devices no longer desired are deleted; devices
# the agent did not mark (a foreign TUN, a veth) are never touched. A corrupt state file makes
# the agent refuse to start and is left alone.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

PY=/usr/bin/python3  # not `python3` on PATH; only its json module is used
AGENT_ALIAS=tunnel-agent

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2

# Devices of someone else, made before any agent starts, on both nodes: a persistent TUN device
# (the agent's own kind, but without its alias) and a veth pair (this kernel has no dummy).
for n in A B; do
  lab_exec "$n" ip tuntap add mode tun foreign0
  lab_exec "$n" ip addr add 10.77.0.1/24 dev foreign0
  lab_exec "$n" ip link add foreign1 type veth peer name foreign1p
  lab_exec "$n" ip link set foreign1 up
done

# ifindex NODE DEV: the device's interface index, empty when there is no such device.
ifindex() { lab_exec "$1" ip -j link show dev "$2" 2>/dev/null | jq -r '.[0].ifindex // empty'; }
has_dev() { lab_exec "$1" ip link show dev "$2" >/dev/null 2>&1; }

declare -A FOREIGN=()
for n in A B; do
  for d in foreign0 foreign1 foreign1p; do FOREIGN[$n/$d]=$(ifindex "$n" "$d"); done
done
# The foreign devices are all still there, with their ifindex, alias-free, foreign0 with its
# address; WHEN names the moment.
check_foreign() {
  local when=$1 n d
  for n in A B; do
    for d in foreign0 foreign1 foreign1p; do
      [ "$(ifindex "$n" "$d")" = "${FOREIGN[$n/$d]}" ] ||
        lab_fail "$n: foreign device $d gone or re-made $when"
    done
    [ -z "$(lab_exec "$n" ip -j link show dev foreign0 | jq -r '.[0].ifalias // empty')" ] ||
      lab_fail "$n: foreign0 got an alias $when"
    lab_exec "$n" ip -4 addr show dev foreign0 | grep -q 'inet 10.77.0.1/24' ||
      lab_fail "$n: foreign0 lost its address $when"
  done
  lab_ok "foreign TUN foreign0 and veth foreign1 untouched on A and B $when"
}

# The device is one of the agent's: a TUN device with the agent's alias.
check_marked() {
  local n=$1 d=$2 json
  json=$(lab_exec "$n" ip -j -d link show dev "$d") || lab_fail "$n: no device $d"
  [ "$(jq -r '.[0].ifalias // empty' <<<"$json")" = "$AGENT_ALIAS" ] ||
    lab_fail "$n: $d has alias '$(jq -r '.[0].ifalias // empty' <<<"$json")', want $AGENT_ALIAS"
  [ "$(jq -r '.[0].linkinfo.info_kind' <<<"$json")" = tun ] || lab_fail "$n: $d is not a TUN device"
  [ "$(jq -r '.[0].linkinfo.info_data.persist' <<<"$json")" = true ] ||
    lab_fail "$n: $d is not persistent"
}

# NODE pings ADDR once a round, up to 10 rounds of `ping -c 1 -W 1`; prints how long it took.
ping_resumes() {
  local n=$1 addr=$2 t0 i
  t0=$(date +%s%N)
  for i in $(seq 10); do
    if lab_exec "$n" ping -q -n -c 1 -W 1 "$addr" >/dev/null 2>&1; then
      lab_ok "$n pings $addr again after $(( ($(date +%s%N) - t0) / 1000000 )) ms (try $i)"
      return 0
    fi
  done
  lab_fail "$n: traffic to $addr did not resume within 10 tries"
}

lab_start_agent A
lab_start_agent B

lab_ctl A create tr1 mode gre remote 198.18.0.2 key 7 address 10.2.0.1/30 route 10.202.0.0/24 >/dev/null
lab_ctl B create tr1 mode gre remote 198.18.0.1 key 7 address 10.2.0.2/30 >/dev/null
lab_exec B ip addr add 10.202.0.1/32 dev lo
check_marked A tr1
check_marked B tr1
lab_ok "tr1 on A and B: a persistent TUN device with alias $AGENT_ALIAS"
lab_ping A 10.2.0.2
lab_ping A 10.202.0.1

# NODE: tr1 is back, up, with its address and route (on A), and carries traffic again.
check_restored() {
  local n=$1 json state
  json=$(lab_ctl "$n" -o json get tr1) || lab_fail "$n: tr1 not restored"
  state=$(jq -r .status.state <<<"$json")
  [ "$state" = OPER_STATE_UP ] || lab_fail "$n: restored tr1 is $state, want OPER_STATE_UP"
  [ "$(jq -r .key <<<"$json")" = 7 ] || lab_fail "$n: restored tr1 lost its key: $json"
  check_marked "$n" tr1
  [ "$(jq -r .status.ifindex <<<"$json")" = "$(ifindex "$n" tr1)" ] ||
    lab_fail "$n: GetTunnel's ifindex $(jq -r .status.ifindex <<<"$json") is not the device's"
  lab_ok "$n: tr1 restored, OPER_STATE_UP, device present and marked"
  if [ "$n" = A ]; then
    lab_exec A ip -4 addr show dev tr1 | grep -q 'inet 10.2.0.1/30' || lab_fail "A: tr1 lost its address"
    lab_exec A ip route show 10.202.0.0/24 | grep -q 'dev tr1' || lab_fail "A: tr1 lost its route"
    lab_ok "A: address and route restored"
  fi
  lab_ping A 10.2.0.2 5   # bounded: 5 rounds of ping -c 3 -W 1
  lab_ping B 10.2.0.1
  lab_ping A 10.202.0.1
}

lab_log "SIGTERM the agent on A: the device goes, and is made anew on start"
before=$(ifindex A tr1)
lab_stop_agent A TERM
grep -q 'INFO stopped' "$RUN/A.log" || lab_fail "A: agent did not stop cleanly on SIGTERM"
has_dev A tr1 && lab_fail "A: tr1 still exists with the agent stopped by SIGTERM"
lab_ok "A: agent stopped cleanly, tr1 device gone"
[ "$(lab_state_names A)" = tr1 ] || lab_fail "A: state file lists '$(lab_state_names A)', want tr1"
lab_ok "A: state file still lists tr1"
lab_no_ping B 10.2.0.1
lab_start_agent A
grep -q 'restored tunnel tr1' "$RUN/A.log" || lab_fail "A: no 'restored tunnel tr1' in the log"
check_restored A
[ "$(ifindex A tr1)" != "$before" ] || lab_fail "A: tr1 kept ifindex $before across a SIGTERM"
lab_ok "A: tr1 is a new device (ifindex $before -> $(ifindex A tr1))"
check_foreign "after SIGTERM and start of A"

lab_log "kill -9 the agent on B: the device stays, and is re-attached on start"
before=$(ifindex B tr1)
lab_stop_agent B KILL
sleep 0.3  # had the device been going with the process, it would be gone by now
[ "$(ifindex B tr1)" = "$before" ] || lab_fail "B: tr1 gone after kill -9 (persistent devices stay)"
check_marked B tr1
lab_ok "B: agent killed, tr1 (ifindex $before) still there, marked"
lab_no_ping A 10.2.0.2
lab_start_agent B
ping_resumes A 10.2.0.2
[ "$(ifindex B tr1)" = "$before" ] ||
  lab_fail "B: tr1 re-made (ifindex $before -> $(ifindex B tr1)), want re-attached"
lab_ok "B: tr1 re-attached, same ifindex $before"
check_restored B
check_foreign "after kill -9 and start of B"

lab_log "--keep_devices: SIGTERM leaves the device, the next start re-attaches"
lab_stop_agent A TERM
lab_start_agent A --keep_devices
before=$(ifindex A tr1)
lab_stop_agent A TERM
grep -q 'INFO stopped' "$RUN/A.log" || lab_fail "A: agent did not stop cleanly on SIGTERM"
[ "$(ifindex A tr1)" = "$before" ] || lab_fail "A: --keep_devices, yet SIGTERM removed tr1"
check_marked A tr1
lab_exec A ip route show 10.202.0.0/24 | grep -q 'dev tr1' || lab_fail "A: kept tr1 lost its route"
lab_ok "A: SIGTERM with --keep_devices left tr1 (ifindex $before) with its route"
lab_start_agent A
ping_resumes A 10.2.0.2
[ "$(ifindex A tr1)" = "$before" ] ||
  lab_fail "A: kept tr1 re-made (ifindex $before -> $(ifindex A tr1))"
lab_ok "A: kept tr1 re-attached, same ifindex $before"
check_restored A
lab_stop_agent A TERM  # this one without --keep_devices
has_dev A tr1 && lab_fail "A: SIGTERM without --keep_devices left tr1"
lab_ok "A: SIGTERM without --keep_devices removed tr1"
lab_start_agent A
check_restored A
check_foreign "after the --keep_devices restarts of A"

lab_log "reconcile on start: a marked device no longer desired is deleted"
lab_ctl B create tr2 mode ipip remote 198.18.0.1 address 10.2.0.5/30 route 10.203.0.0/24 >/dev/null
lab_ctl A create tr2 mode ipip remote 198.18.0.2 address 10.2.0.6/30 >/dev/null
lab_ping B 10.2.0.6
kept=$(ifindex B tr1)
lab_stop_agent B KILL
has_dev B tr2 || lab_fail "B: tr2 gone after kill -9"
# tunnel-state prints the whole state as one format_version 1 document, which the agent
# loads as it finds it in tunnels.json (the log beside it is then ignored).
"$BIN_DIR/tunnel-state" "$RUN/B-state" >"$RUN/B-state.json" || lab_fail "B: cannot read the state"
"$PY" - "$RUN/B-state.json" "$RUN/B-state/tunnels.json" <<'EOF'
import json, sys
with open(sys.argv[1]) as f:
    state = json.load(f)
state["tunnels"] = [t for t in state["tunnels"] if t["name"] != "tr2"]
with open(sys.argv[2], "w") as f:
    json.dump(state, f)
EOF
[ "$(lab_state_names B)" = tr1 ] || lab_fail "B: edited state file lists '$(lab_state_names B)'"
lab_ok "B: killed with tr1 and tr2 up; tr2 removed from tunnels.json"
lab_start_agent B
has_dev B tr2 && lab_fail "B: tr2 (marked, no longer desired) still exists after start"
lab_exec B ip route show 10.203.0.0/24 | grep -q . && lab_fail "B: tr2's route is still there"
lab_ctl B get tr2 >/dev/null 2>&1 && lab_fail "B: the agent still knows tr2"
lab_ok "B: tr2's device and route deleted on start"
[ "$(ifindex B tr1)" = "$kept" ] || lab_fail "B: tr1 re-made (ifindex $kept -> $(ifindex B tr1))"
lab_ok "B: tr1 re-attached, same ifindex $kept"
check_restored B
check_foreign "after the reconciling start of B"
lab_ctl A delete tr2

lab_log "restore while a foreign TUN device holds the name (B)"
lab_stop_agent B TERM
lab_exec B ip tuntap add mode tun tr1
lab_exec B ip addr add 10.7.0.1/24 dev tr1
foreign=$(ifindex B tr1)
lab_start_agent B
json=$(lab_ctl B -o json get tr1)
[ "$(jq -r .status.state <<<"$json")" = OPER_STATE_ERROR ] || lab_fail "B: tr1 not in error: $json"
[ -n "$(jq -r '.status.reason // empty' <<<"$json")" ] || lab_fail "B: tr1 in error without a reason"
lab_ok "B: agent starts, tr1 OPER_STATE_ERROR: $(jq -r .status.reason <<<"$json")"
[ "$(lab_metric B 'tunnelagent_tunnels{mode="gre",state="error"}')" = 1 ] || lab_fail "B: /metrics does not count tr1 as error"
[ -z "$(lab_exec B ip -j link show dev tr1 | jq -r '.[0].ifalias // empty')" ] ||
  lab_fail "B: the agent marked the foreign tr1 as its own"
lab_ctl B delete tr1
[ "$(ifindex B tr1)" = "$foreign" ] || lab_fail "B: deleting tr1 removed the foreign device"
lab_exec B ip -4 addr show dev tr1 | grep -q 'inet 10.7.0.1/24' || lab_fail "B: deleting tr1 touched the foreign device"
lab_ok "B: delete of the failed tunnel leaves the foreign device alone"
[ -z "$(lab_state_names B)" ] || lab_fail "B: state file still lists $(lab_state_names B)"
lab_stop_agent B TERM
[ "$(ifindex B tr1)" = "$foreign" ] || lab_fail "B: SIGTERM removed the foreign tr1"
lab_ok "B: SIGTERM leaves the foreign tr1 alone"
check_foreign "after the foreign-name restarts of B"

lab_log "corrupt state file on A (killed, so tr1's device is still there)"
before=$(ifindex A tr1)
lab_stop_agent A KILL
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
[ "$(ifindex A tr1)" = "$before" ] || lab_fail "A: the refused start removed or re-made tr1"
lab_exec A ip route show 10.202.0.0/24 | grep -q 'dev tr1' ||
  lab_fail "A: the refused start touched tr1"
lab_ok "A: the refused start touched no device (tr1 still ifindex $before, with its route)"
check_foreign "at the end"

echo "PASS"
