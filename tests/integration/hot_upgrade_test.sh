#!/bin/bash
# Hot upgrade: a new agent started with --takeover while the old one runs on the same
# --state_dir takes over its devices' queues, underlay sockets and listeners (SCM_RIGHTS over
# <state_dir>/handover.sock); the old one stops reading and exits. A ping flood through a
# tunnel across the takeover loses nothing, and the devices are the same (same ifindex).
# A second agent without --takeover still exits 1. A new agent of another handover protocol is
# refused and falls back to an ordinary restart (devices kept). kill -9 of either agent at
# several points of a handover leaves a working agent with every tunnel (when the new one dies
# after the old one let go, a service manager's restart is what brings it back: emulated here).
# Both io backends.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

lab_init
# A step that fails under set -e says which (a bare exit 1 names nothing).
set -E
trap 'echo "failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2

ifindex() {
  lab_exec "$1" ip -j link show dev "$2" 2>/dev/null | jq -r '.[0].ifindex // empty' || true
}
# PID runs (an exited child of this shell not yet waited for is a zombie, Z, and one being
# reaped is dead, X, for an instant before /proc lets go of it: neither runs).
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:.*[ZX]' "/proc/$1/status" 2>/dev/null; }

# Starts the agent of NODE with --takeover (and more flags) beside the running one; the new pid
# becomes the node's. Does not wait.
start_takeover() {
  local name=$1; shift
  OLD_PID=${LAB_PIDS[$name]}
  _lab_spawn_agent "$name" --takeover "$@"
  NEW_PID=${LAB_PIDS[$name]}
}

# Waits (bounded) for PID, a child of this shell, to exit; its exit status in EXIT_RC.
wait_exit() {
  local pid=$1 _
  for _ in $(seq 200); do alive "$pid" || break; sleep 0.05; done
  if alive "$pid"; then
    local state wchan
    state=$(grep '^State' "/proc/$pid/status" 2>/dev/null || true)
    wchan=$(cat "/proc/$pid/wchan" 2>/dev/null || true)
    # Gone between the two looks: it exited after all.
    if [ -n "$state" ]; then
      EXIT_RC="running ($state, $wchan)"
      return
    fi
  fi
  EXIT_RC=0
  wait "$pid" 2>/dev/null || EXIT_RC=$?
}

# Every tunnel listed UP on NODE, and traffic through each.
check_tunnels() {
  local n=$1 when=$2 json names
  for _ in $(seq 100); do
    json=$(lab_ctl "$n" -o json list 2>/dev/null) && [[ $json != *restoring:* ]] && break
    sleep 0.05
  done
  names=$(jq -r '[.tunnels[] | select(.status.state == "OPER_STATE_UP" and (.multipoint | not))
    | .name] | sort | join(" ")' <<<"$json")
  [ "$names" = "t1 t2 t3" ] || lab_fail "$n: tunnels UP $when: '$names', want 't1 t2 t3': $json"
  lab_ping B 10.1.0.1 3
  lab_ping B 10.2.0.1 3
  lab_ping B 10.3.0.1 3
  lab_ok "$n: t1 t2 t3 UP and carrying traffic $when"
}

# The multipoint tunnel mp0 on A kept its peer b, and carries B's traffic.
check_peers() {
  local peers
  peers=$(lab_ctl A -o json peer list mp0 | jq -r '[.peers[].name] | join(" ")')
  [ "$peers" = b ] || lab_fail "A: mp0's peers $1: '$peers', want 'b'"
  lab_ping B 10.50.0.1 3
  lab_ok "A: mp0 kept its peer b and carries traffic $1"
}

# ping -i 0.002 -c COUNT from B to A through t1 into FILE, in the background.
flood() {
  lab_exec B ping -q -n -i 0.002 -c "$1" -W 2 10.1.0.1 >"$2" 2>&1 &
  FLOOD_PID=$!
}
# Waits for the flood; packets lost in LOSS.
flood_loss() {
  wait "$FLOOD_PID" || true
  local line
  line=$(grep 'packets transmitted' "$1") || lab_fail "no ping summary: $(cat "$1")"
  # "1500 packets transmitted, 1500 received, ..."
  LOSS=$(awk '{ print $1 - $4 }' <<<"$line")
}

# What a service manager does: SIGUSR2 (systemd's ExecReload) starts the binary with
# --takeover, which tells $NOTIFY_SOCKET its pid once it serves; --after_handover=wait keeps the
# old agent idle until SIGTERM (a DaemonSet's old pod), and that SIGTERM removes nothing.
service_manager_steps() {
  local before new listener
  lab_log "SIGUSR2: the agent starts its binary with --takeover, which notifies systemd"
  lab_stop_agent A TERM
  /usr/bin/python3 - "$RUN/notify.sock" "$RUN/notify.txt" <<'EOF' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(30)
with open(sys.argv[2], "a") as out:
    try:
        while True:
            out.write(s.recv(4096).decode() + "\n")
            out.flush()
    except socket.timeout:
        pass
EOF
  listener=$!
  for _ in $(seq 50); do [ -S "$RUN/notify.sock" ] && break; sleep 0.05; done
  NOTIFY_SOCKET="$RUN/notify.sock" lab_start_agent A --io_backend=uring --keep_devices
  before=$(ifindex A t1)
  OLD_PID=${LAB_PIDS[A]}
  kill -USR2 "$OLD_PID"
  wait_exit "$OLD_PID"
  [ "$EXIT_RC" = 0 ] || lab_fail "the agent upgraded by SIGUSR2 exited $EXIT_RC, want 0"
  new=""
  for _ in $(seq 50); do
    new=$(tr -d '\n' <"$RUN/A-state/agent.lock" 2>/dev/null || true)
    # The node's agent from here on (stopped by the cleanup whatever happens next).
    [ -n "$new" ] && [ "$new" != "$OLD_PID" ] && alive "$new" && LAB_PIDS[A]=$new && break
    sleep 0.05
  done
  alive "$new" || lab_fail "no agent after SIGUSR2 (lock names pid '$new')"
  LAB_PIDS[A]=$new
  _lab_wait_agent A
  for _ in $(seq 50); do grep -q "MAINPID=$new" "$RUN/notify.txt" 2>/dev/null && break; sleep 0.05; done
  grep -q "MAINPID=$new" "$RUN/notify.txt" || lab_fail "no MAINPID=$new: $(cat "$RUN/notify.txt")"
  grep -q "READY=1" "$RUN/notify.txt" || lab_fail "no READY=1 notified"
  [ "$(ifindex A t1)" = "$before" ] || lab_fail "t1 re-made by the SIGUSR2 upgrade"
  check_tunnels A "after the SIGUSR2 upgrade"
  lab_ok "SIGUSR2 upgrade: pid $OLD_PID -> $new, MAINPID and READY=1 notified"
  kill "$listener" 2>/dev/null || true
  wait "$listener" 2>/dev/null || true

  lab_log "--after_handover=wait: the old agent idles until SIGTERM, which removes nothing"
  lab_stop_agent A TERM  # not a child of this shell: stopped by pid
  for _ in $(seq 100); do alive "$new" || break; sleep 0.05; done
  lab_start_agent A --io_backend=uring --after_handover=wait
  start_takeover A --io_backend=uring
  for _ in $(seq 100); do grep -q "idle until SIGTERM" "$RUN/A.log" && break; sleep 0.05; done
  grep -q "idle until SIGTERM" "$RUN/A.log" || lab_fail "the old agent does not say it idles"
  before=$(ifindex A t1)
  sleep 0.5
  alive "$OLD_PID" || lab_fail "the old agent exited with --after_handover=wait"
  kill -TERM "$OLD_PID"
  wait_exit "$OLD_PID"
  [ "$EXIT_RC" = 0 ] || lab_fail "the idle old agent exited $EXIT_RC on SIGTERM, want 0"
  [ "$(ifindex A t1)" = "$before" ] || lab_fail "the idle old agent's SIGTERM removed t1"
  check_tunnels A "after the idle old agent stopped"
  lab_ok "--after_handover=wait: idle until SIGTERM, devices stay"
}

run_backend() {
  local backend=$1 before after old new rc
  lab_log "[$backend] agents up, three tunnels"
  lab_start_agent A --io_backend="$backend"
  lab_start_agent B --io_backend="$backend"
  lab_ctl A create t1 mode gre remote 198.18.0.2 key 1 address 10.1.0.1/30 >/dev/null
  lab_ctl B create t1 mode gre remote 198.18.0.1 key 1 address 10.1.0.2/30 >/dev/null
  lab_ctl A create t2 mode gre remote 198.18.0.2 key 2 address 10.2.0.1/30 >/dev/null
  lab_ctl B create t2 mode gre remote 198.18.0.1 key 2 address 10.2.0.2/30 >/dev/null
  lab_ctl A create t3 mode gre remote 198.18.0.2 key 3 address 10.3.0.1/30 >/dev/null
  lab_ctl B create t3 mode gre remote 198.18.0.1 key 3 address 10.3.0.2/30 >/dev/null
  check_tunnels A "at start"
  # A multipoint tunnel on A whose peer is B's point-to-point one: its peer is handed over too.
  lab_ctl A create mp0 mode gre local 198.18.0.1 key 50 multipoint address 10.50.0.1/24 >/dev/null
  lab_ctl A peer add mp0 b underlay 198.18.0.2 allowed 10.50.0.2/32 >/dev/null
  lab_ctl B create mp0 mode gre local 198.18.0.2 remote 198.18.0.1 key 50 \
    address 10.50.0.2/24 >/dev/null
  check_peers "at start"

  lab_log "[$backend] a second agent without --takeover exits 1"
  rc=0
  lab_run_agent A --io_backend="$backend" >"$RUN/second.log" 2>&1 || rc=$?
  [ "$rc" = 1 ] || lab_fail "a second agent exited $rc, want 1: $(cat "$RUN/second.log")"
  lab_ok "second agent refused (exit 1)"

  lab_log "[$backend] takeover under a 2 ms ping flood through t1: no packet lost"
  before=$(ifindex A t1)
  flood 1500 "$RUN/flood.txt"
  sleep 0.7
  start_takeover A --io_backend="$backend"
  old=$OLD_PID new=$NEW_PID
  wait_exit "$old"
  [ "$EXIT_RC" = 0 ] || lab_fail "the old agent's exit: $EXIT_RC, want 0"
  alive "$new" || lab_fail "the new agent is gone: $(tail -5 "$RUN/A.log")"
  flood_loss "$RUN/flood.txt"
  [ "$LOSS" = 0 ] || lab_fail "$LOSS packets lost across the takeover: $(cat "$RUN/flood.txt")"
  lab_ok "takeover under the flood: 0 of 1500 lost"
  grep -q 'handover: done' "$RUN/A.log" || lab_fail "the old agent did not log its handover"
  after=$(ifindex A t1)
  [ "$before" = "$after" ] || lab_fail "t1 re-made across the takeover ($before -> $after)"
  [ -S "$RUN/A.sock" ] || lab_fail "the API socket is gone after the takeover"
  check_tunnels A "after the takeover"
  check_peers "after the takeover"
  lab_ctl A create t9 mode gre remote 198.18.0.2 key 9 address 10.9.0.1/30 >/dev/null ||
    lab_fail "the new agent takes no change"
  lab_ctl A delete t9 >/dev/null
  lab_ok "the new agent takes changes"
  # /metrics: the old agent's exposer went with it; the new one binds the port once free.
  local workers=""
  for _ in $(seq 100); do
    workers=$(lab_metric A tunnelagent_dataplane_workers 2>/dev/null || true)
    [ -n "$workers" ] && break
    sleep 0.1
  done
  [ -n "$workers" ] || lab_fail "no /metrics from the new agent: $(grep metrics: "$RUN/A.log" | tail -3)"
  lab_ok "the new agent serves /metrics (dataplane workers: $workers)"

  lab_log "[$backend] a mismatched handover protocol falls back to an ordinary restart"
  before=$(ifindex A t1)
  start_takeover A --io_backend="$backend" --test_only_handover_protocol_version=99
  wait_exit "$OLD_PID"
  [ "$EXIT_RC" = 0 ] || lab_fail "the refusing agent's exit: $EXIT_RC, want 0"
  _lab_wait_agent A
  grep -q 'handover refused:.*falling back to an ordinary restart' "$RUN/A.log" ||
    lab_fail "no 'handover refused ... falling back' in the log"
  check_tunnels A "after the refused handover"
  [ "$(ifindex A t1)" = "$before" ] || lab_fail "t1 re-made by the fallback, want kept"
  lab_ok "refused handover: ordinary restart, devices kept"
  # The agent running now speaks the test-only protocol: back to the real one.
  lab_stop_agent A TERM
  lab_start_agent A --io_backend="$backend"

  if [ "$backend" = uring ]; then
    service_manager_steps
  fi

  lab_log "[$backend] kill -9 of the new agent during a handover: the old one goes on"
  local lines
  for delay in 0 0.02 0.05 0.1; do
    lines=$(wc -l <"$RUN/A.log")
    start_takeover A --io_backend="$backend"
    sleep "$delay"
    kill -KILL "$NEW_PID" 2>/dev/null || true
    wait "$NEW_PID" 2>/dev/null || true
    LAB_PIDS[A]=$OLD_PID
    sleep 0.2
    if tail -n "+$((lines + 1))" "$RUN/A.log" | grep -q "handover: pid $NEW_PID serves"; then
      wait_exit "$OLD_PID"  # it let go: it exits
      [ "$EXIT_RC" = 0 ] || lab_fail "the old agent that let go exited $EXIT_RC, want 0"
    fi
    if ! alive "$OLD_PID"; then
      # The new one served and the old one let go before the kill: a service manager restarts.
      lab_log "killed after the old agent let go (after ${delay}s): restarting as a service would"
      lab_start_agent A --io_backend="$backend"
    fi
    check_tunnels A "after kill -9 of the new agent at ${delay}s"
    lab_ctl A create t9 mode gre remote 198.18.0.2 key 9 address 10.9.0.1/30 >/dev/null ||
      lab_fail "the agent still refuses changes after the new one died"
    lab_ctl A delete t9 >/dev/null
  done

  lab_log "[$backend] kill -9 of the old agent during a handover: the new one serves"
  for delay in 0 0.01 0.03 0.1; do
    start_takeover A --io_backend="$backend"
    sleep "$delay"
    kill -KILL "$OLD_PID" 2>/dev/null || true
    wait "$OLD_PID" 2>/dev/null || true
    _lab_wait_agent A
    check_tunnels A "after kill -9 of the old agent at ${delay}s"
  done

  lab_stop_agent A TERM
  lab_stop_agent B TERM
  rm -rf "$RUN/A-state" "$RUN/B-state"
}

for backend in ${HOT_UPGRADE_BACKENDS:-uring epoll}; do
  run_backend "$backend"
done
lab_ok "hot upgrade: zero loss, fallback and kill -9 safety"
