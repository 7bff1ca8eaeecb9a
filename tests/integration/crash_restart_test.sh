#!/bin/bash
# kill -9 and restart, data plane first: the new agent attaches every device the dead one left
# and forwards on it before it checks their addresses, routes, MTU and link state (in bulk),
# and the check then puts back what changed while no agent ran. Proven with a ping flood
# through the first tunnel: its first reply after the restart comes before the first repair
# is logged, and the repairs (an MTU and a route changed on the last tunnel, an address added
# to the first) are all made, counted and reported.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

# Enough tunnels that attaching them all takes a while (0.1 to 0.5 ms each): the ping through the
# first one must answer within that while to show that forwarding does not wait for the check.
N=${CRASH_RESTART_TUNNELS:-800}
PY=/usr/bin/python3
LAST=t$((N - 1))

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2

# Keyed GRE tunnels t0..t(N-1) from A to B, a /30 each in 10.64.0.0/10; the last one also
# routes 10.250.0.0/24.
"$PY" - "$N" >"$RUN/set.json" <<'PYEOF'
import json, sys
n = int(sys.argv[1])
tunnels = [{"name": f"t{i}", "mode": "TUNNEL_MODE_GRE", "local": "198.18.0.1",
            "remote": "198.18.0.2", "key": i + 1,
            "addresses": [f"10.{64 + i // 16384}.{(i // 64) % 256}.{(i % 64) * 4 + 1}/30"]}
           for i in range(n)]
tunnels[-1]["routes"] = ["10.250.0.0/24"]
print(json.dumps({"owner": "crash", "tunnels": tunnels}))
PYEOF

up_count() {
  lab_ctl A list -o json 2>/dev/null | grep -c '"OPER_STATE_UP"' || true
}
wait_all_up() {
  local _
  for _ in $(seq 240); do
    [ "$(up_count)" -ge "$N" ] && return 0
    sleep 0.25
  done
  lab_fail "not all $N tunnels UP on A within 60 s ($(up_count) are)"
}

lab_start_agent A --max_tunnels=$((N + 10))
lab_start_agent B --metrics_listen=127.0.0.1:$((LAB_METRICS_PORT + 1))
lab_ctl A apply -f "$RUN/set.json" >/dev/null
wait_all_up
lab_ctl B create t0 mode gre local 198.18.0.2 remote 198.18.0.1 key 1 address 10.64.0.2/30 >/dev/null
lab_ping B 10.64.0.1 3

# A ping every 10 ms through t0 from B, for the whole crash and restart (bounded: 40 s).
# Not through lab_exec: $! must be ping itself (ip netns exec becomes it), to be stopped by INT.
ip netns exec "$LAB-B" ping -n -D -i 0.01 -W 0.05 -w 40 10.64.0.1 >"$RUN/ping.txt" 2>&1 &
PINGER=$!
sleep 0.3
lab_stop_agent A KILL

# While no agent runs, someone changes the kernel behind its back.
lab_exec A ip link set "$LAST" mtu 1300
lab_exec A ip route del 10.250.0.0/24 dev "$LAST"
lab_exec A ip addr add 10.251.0.1/32 dev t0
t0=$(date +%s.%N)
_lab_spawn_agent A --max_tunnels=$((N + 10))
for _ in $(seq 300); do
  grep -q "kept tunnels verified" "$RUN/A.log" && break
  kill -0 "${LAB_PIDS[A]}" 2>/dev/null || lab_fail "the agent on A exited"
  sleep 0.1
done
grep -q "kept tunnels verified" "$RUN/A.log" || lab_fail "the restart did not verify within 30 s"
_lab_wait_agent A
sleep 0.3
kill -INT "$PINGER" 2>/dev/null || true
wait "$PINGER" 2>/dev/null || true

grep -q "restore: $N tunnels forwarding on the devices kept from the last run" "$RUN/A.log" ||
  lab_fail "not all $N devices were taken over forwarding first: $(grep 'restore:' "$RUN/A.log")"
# The first reply through t0 after the new agent's start, and the first repair it logged.
"$PY" - "$RUN/ping.txt" "$RUN/A.log" "$t0" <<'PYEOF' || lab_fail "traffic did not come back before the re-check"
import datetime, re, sys
ping, log, t0 = open(sys.argv[1]).read(), open(sys.argv[2]).read(), float(sys.argv[3])
replies = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", ping, re.M)]
after = [t for t in replies if t > t0]
repairs = []
for line in log.splitlines():
    if "tunnel.repair" in line:
        stamp = line.split()[0].rstrip("Z")
        when = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc)
        repairs.append(when.timestamp())
repairs = [t for t in repairs if t > t0]
if not after:
    sys.exit("no reply through t0 after the restart")
if not repairs:
    sys.exit("no repair logged after the restart")
print(f"ok: first reply through t0 {after[0] - t0:.3f} s after the start, "
      f"first repair {repairs[0] - t0:.3f} s after it")
if after[0] >= repairs[0]:
    sys.exit("the first reply came after the first repair")
PYEOF

# Every change made behind its back was put back.
[ "$(lab_exec A cat "/sys/class/net/$LAST/mtu")" = 1472 ] ||
  lab_fail "$LAST has mtu $(lab_exec A cat "/sys/class/net/$LAST/mtu"), want 1472 back"
lab_exec A ip route show 10.250.0.0/24 proto 0x7a | grep -q "dev $LAST" ||
  lab_fail "route 10.250.0.0/24 not back on $LAST"
if lab_exec A ip -4 addr show dev t0 | grep -q 10.251.0.1; then
  lab_fail "the address added to t0 while no agent ran is still there"
fi
lab_ok "mtu and route of $LAST, and the stray address of t0, put back"
for what in mtu route; do
  grep "tunnel.repair" "$RUN/A.log" | grep "$LAST" | grep -q "$what" ||
    lab_fail "no $what repair of $LAST logged"
done
grep "tunnel.repair" "$RUN/A.log" | grep -q "10.251.0.1/32 removed (not desired)" ||
  lab_fail "the removal of 10.251.0.1/32 is not logged"
# The API: every tunnel UP, none still verifying, and the repairs counted.
lab_ctl A list -o json >"$RUN/list.json"
"$PY" - "$RUN/list.json" "$N" "$LAST" <<'PYEOF' || lab_fail "the API does not show the restart's outcome"
import json, sys
doc = json.load(open(sys.argv[1]))
tunnels = doc.get("tunnels", doc) if isinstance(doc, dict) else doc
n, last = int(sys.argv[2]), sys.argv[3]
states = [t.get("status", {}) for t in tunnels]
up = [s for s in states if s.get("state") == "OPER_STATE_UP" and not s.get("reason")]
if len(up) != n:
    sys.exit(f"{len(up)} of {n} UP without a reason: {[s.get('reason') for s in states][:3]}")
by_name = {t["name"]: t.get("status", {}) for t in tunnels}
if int(by_name[last].get("repairs", 0)) < 2 or int(by_name["t0"].get("repairs", 0)) < 1:
    sys.exit(f"repairs not counted: {last} {by_name[last].get('repairs')} t0 {by_name['t0'].get('repairs')}")
PYEOF
[ "$(lab_metric A tunnelagent_tunnels_verifying)" = 0 ] ||
  lab_fail "tunnelagent_tunnels_verifying is '$(lab_metric A tunnelagent_tunnels_verifying)' after the check"
lab_ok "kill -9 with $N tunnels: forwarding before the re-check, every change put back"
