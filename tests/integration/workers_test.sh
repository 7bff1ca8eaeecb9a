#!/bin/bash
# Dataplane workers pinned to CPUs (--dataplane_cpus): each worker thread is named
# dataplane-N and runs only on its CPU, the workers gauge and GetAgentInfo (tunnelctl info)
# follow the list, a tunnel between a pinned agent and a pinned pool carries traffic both ways,
# and a bad list is refused at start.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

# cpus_of PID THREAD: the Cpus_allowed_list of the process's thread named THREAD (empty if none).
cpus_of() {
  local t
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ]; then
      awk '/^Cpus_allowed_list:/ {print $2}' "$t/status"
      return
    fi
  done
}

# The CPUs this script may run on, as a list of numbers.
read -r -a CPUS < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')
FIRST=${CPUS[0]}
LAST=${CPUS[${#CPUS[@]} - 1]}
ALL=$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2

# B's list: the last CPU, then the first (the one CPU twice would be refused).
B_CPUS=$LAST
[ "$FIRST" = "$LAST" ] || B_CPUS="$LAST,$FIRST"

lab_log "A: one worker on CPU $LAST; B: three workers round CPUs $B_CPUS"
lab_start_agent A --dataplane_cpus="$LAST"
lab_start_agent B --dataplane_cpus="$B_CPUS" --dataplane_workers=3
grep -q "1 worker(s), pinned to CPUs $LAST" "$RUN/A.log" ||
  lab_fail "A's log does not say where its worker runs: $(grep dataplane: "$RUN/A.log")"
lab_ok "A logs: $(grep -o '1 worker(s), pinned.*' "$RUN/A.log")"
[ "$(lab_metric A tunnelagent_dataplane_workers)" = 1 ] ||
  lab_fail "A's workers gauge: $(lab_metric A tunnelagent_dataplane_workers), want 1"
[ "$(lab_metric B tunnelagent_dataplane_workers)" = 3 ] ||
  lab_fail "B's workers gauge: $(lab_metric B tunnelagent_dataplane_workers), want 3"
lab_ok "workers gauges 1 and 3"
[ "$(cpus_of "${LAB_PIDS[A]}" dataplane-0)" = "$LAST" ] ||
  lab_fail "A's dataplane-0 may run on '$(cpus_of "${LAB_PIDS[A]}" dataplane-0)', want $LAST"
for w in "0 $LAST" "1 $FIRST" "2 $LAST"; do
  read -r n cpu <<<"$w"
  got=$(cpus_of "${LAB_PIDS[B]}" "dataplane-$n")
  [ "$got" = "$cpu" ] || lab_fail "B's dataplane-$n may run on '$got', want $cpu"
done
lab_ok "every worker thread runs only on its CPU"
info=$(lab_ctl B info)
grep -qx "dataplane_workers: 3" <<<"$info" && grep -qx "dataplane_cpus: $B_CPUS" <<<"$info" ||
  lab_fail "tunnelctl info on B: $(grep dataplane <<<"$info")"
lab_ok "GetAgentInfo on B: $(grep dataplane <<<"$info" | tr '\n' ' ')"

lab_log "a GRE tunnel between them carries traffic"
lab_ctl A create gre1 mode gre local 198.18.0.1 remote 198.18.0.2 address 10.30.0.1/30 >/dev/null
lab_ctl B create gre1 mode gre local 198.18.0.2 remote 198.18.0.1 address 10.30.0.2/30 >/dev/null
lab_ping A 10.30.0.2 5
lab_ping B 10.30.0.1 2
lab_stop_agent A
lab_stop_agent B

lab_log "without the flag the workers are not pinned"
lab_start_agent A --dataplane_workers=1
[ "$(cpus_of "${LAB_PIDS[A]}" dataplane-0)" = "$ALL" ] ||
  lab_fail "unpinned dataplane-0 may run on '$(cpus_of "${LAB_PIDS[A]}" dataplane-0)', want $ALL"
lab_ok "dataplane-0 may run on $ALL, as the agent may"
info=$(lab_ctl A info)
grep -qx "dataplane_workers: 1" <<<"$info" && grep -qx "dataplane_cpus: -" <<<"$info" ||
  lab_fail "tunnelctl info unpinned: $(grep dataplane <<<"$info")"
lab_ok "GetAgentInfo unpinned: $(grep dataplane <<<"$info" | tr '\n' ' ')"
lab_stop_agent A

lab_log "a bad CPU list is refused before anything starts"
# refused WANT LIST: the agent must exit 1 at once with one line that contains WANT.
refused() {
  local want=$1 list=$2 out rc=0
  out=$(lab_run_agent A --dataplane_cpus="$list" 2>&1) || rc=$?
  [ "$rc" = 1 ] || lab_fail "--dataplane_cpus=$list: exit $rc, want 1 ($out)"
  grep -qF -- "$want" <<<"$out" || lab_fail "--dataplane_cpus=$list: output lacks '$want': $out"
  [ "$(wc -l <<<"$out")" = 1 ] || lab_fail "--dataplane_cpus=$list: want one line, got: $out"
  lab_ok "--dataplane_cpus=$list refused ($(sed 's/.* FATAL //' <<<"$out"))"
}
refused "runs backwards" "3-1"
refused "is not a CPU number" "0,x"
refused "appears twice" "0,0"
refused "is not one this process may run on" "1023"
[ ! -e "$RUN/A-state/tunnels.json" ] || [ "$(lab_state_names A)" = "gre1" ] ||
  lab_fail "a refused start changed A's state"

lab_log "in a cgroup with a CPU limit of one, the default is one worker"
# A cgroup of our own under the cpu controller, v1 (as on this kind of machine) or v2, with
# a quota of one CPU per period; removed on exit (after the agent in it has stopped).
# `ip netns exec` mounts a fresh /sys, without the cgroup file systems, so the agent's shell
# mounts its hierarchy again there (in the mount namespace of that one command), as a
# container runtime does for a container.
CG=
if [ -w /sys/fs/cgroup/cpu ] && [ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
  CG=/sys/fs/cgroup/cpu/tunnel-agent-test-$$
  mkdir "$CG" && echo 100000 >"$CG/cpu.cfs_period_us" && echo 100000 >"$CG/cpu.cfs_quota_us" ||
    CG=
  MOUNT_CGROUP='mount -t tmpfs none /sys/fs/cgroup && mkdir /sys/fs/cgroup/cpu &&
    mount -t cgroup -o cpu none /sys/fs/cgroup/cpu'
elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
  CG=/sys/fs/cgroup/tunnel-agent-test-$$
  mkdir "$CG" && echo "100000 100000" >"$CG/cpu.max" || CG=
  MOUNT_CGROUP='mount -t cgroup2 none /sys/fs/cgroup'
fi
workers_cleanup() {
  local rc=$?
  lab_cleanup
  [ -n "$CG" ] && [ -d "$CG" ] && rmdir "$CG" 2>/dev/null
  return "$rc"
}
trap workers_cleanup EXIT
if [ -z "$CG" ]; then
  lab_ok "no cgroup with a CPU quota can be made here: that step left out"
elif [ "${#CPUS[@]}" -lt 2 ]; then
  lab_ok "one CPU: a limit of one changes nothing here, that step left out"
else
  ( echo "$BASHPID" >"$CG/cgroup.procs" &&
    exec ip netns exec "$LAB-A" sh -c "$MOUNT_CGROUP && exec \"\$0\" \"\$@\"" \
      "$BIN_DIR/tunnel-agent" --grpc_listen="unix:$RUN/A.sock" \
      --metrics_listen="127.0.0.1:$LAB_METRICS_PORT" --state_dir="$RUN/A-state" ) \
    >>"$RUN/A.log" 2>&1 &
  LAB_PIDS[A]=$!
  _lab_wait_agent A
  grep -q ":/${CG##*/}\$" /proc/"${LAB_PIDS[A]}"/cgroup ||
    lab_fail "the agent is not in $CG: $(cat /proc/"${LAB_PIDS[A]}"/cgroup)"
  [ "$(lab_metric A tunnelagent_dataplane_workers)" = 1 ] ||
    lab_fail "workers under a 1-CPU limit: $(lab_metric A tunnelagent_dataplane_workers), want 1"
  lab_ok "with ${#CPUS[@]} CPUs allowed and a 1-CPU quota: $(grep -o '[0-9]* worker(s)' "$RUN/A.log" | tail -1)"
  lab_stop_agent A
fi
lab_ok "workers test passed"
