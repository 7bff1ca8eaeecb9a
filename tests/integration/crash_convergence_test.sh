#!/bin/bash
# kill -9 at random points of applies and updates that move addresses and routes between
# tunnels: after each restart the kernel, the API and the state file hold exactly the same
# addresses and routes (the kernel converges to the store: what a crash left half-done is
# removed or put back), and the next change to the other set goes through.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

N=${CRASH_TUNNELS:-40}
KILLS=${CRASH_KILLS:-21}
PY=/usr/bin/python3

lab_init
lab_add_node A 198.18.0.1

# Two desired sets of the same tunnels. In set 1 tunnel i has route 10.200.i.0/24; in set 2 it
# has tunnel i+1's, so an apply from one to the other moves every route to another device, and
# every address changes.
gen() {
  "$PY" - "$1" "$N" <<'EOF'
import json, sys
variant, n = int(sys.argv[1]), int(sys.argv[2])
tunnels = []
for i in range(n):
    j = i if variant == 1 else (i + 1) % n
    tunnels.append({
        "name": f"c{i}", "mode": "TUNNEL_MODE_GRE", "remote": f"198.18.1.{i + 10}",
        "addresses": [f"10.{100 + i}.{variant}.1/24"],
        "routes": [f"10.200.{j}.0/24", f"10.{210 + variant}.{i}.0/24"],
    })
print(json.dumps({"owner": "crash", "tunnels": tunnels}))
EOF
}
gen 1 >"$RUN/set1.json"
gen 2 >"$RUN/set2.json"

# The three views of every tunnel, "name addresses routes" sorted, must be one.
compare() {
  local when=$1
  lab_ctl A list -o json >"$RUN/api.json"
  lab_exec A ip -j addr show >"$RUN/addr.json"
  lab_exec A ip -j route show proto 0x7a >"$RUN/route4.json"
  lab_exec A ip -6 -j route show proto 0x7a >"$RUN/route6.json"
  "$BIN_DIR/tunnel-state" "$RUN/A-state" >"$RUN/store.json" || lab_fail "cannot read A's state $when"
  "$PY" - "$RUN" "$when" <<'EOF' || lab_fail "kernel, API and store differ $when"
import json, sys
run, when = sys.argv[1], sys.argv[2]
def load(name):
    with open(f"{run}/{name}") as f:
        return json.load(f)
api_doc = load("api.json")
api_list = api_doc.get("tunnels", api_doc) if isinstance(api_doc, dict) else api_doc
api = {t["name"]: (sorted(t.get("addresses", [])), sorted(t.get("routes", []))) for t in api_list}
states = {t["name"]: t.get("status", {}).get("state") for t in api_list}
store = {t["name"]: (sorted(t.get("addresses", [])), sorted(t.get("routes", [])))
         for t in load("store.json").get("tunnels", [])}
kernel = {}
for link in load("addr.json"):
    name = link["ifname"]
    if name not in api:
        continue
    addrs = sorted(f'{a["local"]}/{a["prefixlen"]}' for a in link.get("addr_info", [])
                   if not a["local"].startswith("fe80:"))
    kernel[name] = (addrs, [])
for r in load("route4.json") + load("route6.json"):
    dev = r.get("dev")
    if dev in kernel:
        dst = r["dst"] if "/" in r["dst"] else r["dst"] + ("/32" if ":" not in r["dst"] else "/128")
        kernel[dev][1].append(dst)
kernel = {k: (a, sorted(r)) for k, (a, r) in kernel.items()}
bad = [n for n, s in states.items() if s != "OPER_STATE_UP"]
if bad:
    print(f"not UP {when}: {bad[:5]}", file=sys.stderr)
    sys.exit(1)
for name in sorted(set(api) | set(store) | set(kernel)):
    a, s, k = api.get(name), store.get(name), kernel.get(name)
    if not (a == s == k):
        print(f"{name} {when}: api={a} store={s} kernel={k}", file=sys.stderr)
        sys.exit(1)
EOF
}

lab_start_agent A
lab_ctl A apply -f "$RUN/set1.json" >/dev/null
compare "after the first apply"
# How long one apply takes here: the kills land at random points within it.
t0=$(date +%s%N)
lab_ctl A apply -f "$RUN/set2.json" >/dev/null
apply_ms=$((($(date +%s%N) - t0) / 1000000))
compare "after the second apply"
lab_ok "$N tunnels; one apply moving every address and route takes ${apply_ms} ms"

current=2
for k in $(seq "$KILLS"); do
  next=$((3 - current))
  delay_ms=$((RANDOM % (apply_ms + 20)))
  if [ $((k % 3)) = 0 ]; then
    delay_ms=$((RANDOM % (N * 25)))  # one tunnelctl update takes some 25 ms
    # Updates one by one (each its own change), killed somewhere in the middle.
    (
      for i in $(seq 0 $((N - 1))); do
        [ -e "$RUN/killed" ] && break  # not into the next agent's run
        j=$([ "$next" = 1 ] && echo "$i" || echo $(((i + 1) % N)))
        lab_ctl A update "c$i" address "10.$((100 + i)).$next.1/24" \
          route "10.200.$j.0/24" route "10.$((210 + next)).$i.0/24" >/dev/null 2>&1 || true
      done
    ) &
    kind=updates
  else
    lab_ctl A apply -f "$RUN/set$next.json" >/dev/null 2>&1 &
    kind=apply
  fi
  client=$!
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  lab_stop_agent A KILL
  touch "$RUN/killed"
  wait "$client" 2>/dev/null || true
  rm -f "$RUN/killed"
  lab_start_agent A
  compare "after kill $k ($kind, ${delay_ms} ms in)"
  # Whatever the crash left, the next change to either set goes through.
  lab_ctl A apply -f "$RUN/set$next.json" >/dev/null || lab_fail "apply after kill $k refused"
  compare "after the apply that followed kill $k"
  current=$next
done
lab_ok "$KILLS kills -9 during applies and updates: kernel, API and store equal after each restart"
