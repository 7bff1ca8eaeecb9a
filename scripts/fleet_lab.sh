#!/bin/bash
# The controllers of a fleet-on-etcd lab, for scripts/demo_fleet.sh and
# tests/bench/fleet_etcd_bench.sh: sourced after scripts/lab.sh. The caller sets CTL (the
# tunnel-controller binary), ETCD (etcd's endpoints), FLEET, GRACE and CTL_TTL (seconds), and
# adds the lab nodes c1 and c2 the two controllers run in; each serves /metrics on
# 127.0.0.1:9477 (the default) of its own namespace.

# wait_for SECONDS CMD...: runs CMD (quietly) every 20 ms until it succeeds (0), or until
# SECONDS have passed (1).
wait_for() {
  local limit=$1 start
  shift
  start=$(date +%s.%N)
  until "$@" >/dev/null 2>&1; do
    awk -v a="$start" -v b="$(date +%s.%N)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' &&
      return 1
    sleep 0.02
  done
}

# start_controller NAME: `run --etcd` in NAME's namespace, logging to $RUN/NAME.log; its pid
# sits with the agents', so the lab's cleanup stops it.
start_controller() {
  local c=$1
  ip netns exec "$LAB-$c" "$CTL" run --etcd="$ETCD" --fleet="$FLEET" --grace="${GRACE}s" \
    --lease_ttl="${CTL_TTL}s" --progress=plain >>"$RUN/$c.log" 2>&1 &
  # shellcheck disable=SC2004  # LAB_PIDS is lab.sh's associative array, keyed by name
  LAB_PIDS[$c]=$!
}
# ctl ARGS...: tunnel-controller on the fleet, from c1's namespace.
ctl() { lab_exec c1 timeout 30 "$CTL" "$@" --etcd="$ETCD" --fleet="$FLEET" --progress=plain; }
# metric CONTROLLER SERIES: the series' value on that controller's /metrics.
metric() {
  lab_exec "$1" curl -sf --max-time 1 "http://127.0.0.1:9477/metrics" |
    awk -v s="$2" '$1 == s && !found { print $2; found = 1 }'
}
# leader: the controller whose tunnelcontroller_leader is 1, when exactly one is.
leader() {
  local c found=()
  for c in c1 c2; do
    [ -n "${LAB_PIDS[$c]:-}" ] && [ "$(metric "$c" tunnelcontroller_leader)" = 1 ] && found+=("$c")
  done
  [ "${#found[@]}" = 1 ] && echo "${found[0]}"
}
one_leader() { [ -n "$(leader)" ]; }
stands_by() { [ "$(metric "$1" tunnelcontroller_leader)" = 0 ]; }
