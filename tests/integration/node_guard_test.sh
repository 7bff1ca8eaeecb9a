#!/bin/bash
# One agent per node: a second agent on the same state directory, or on the same unix socket,
# exits 1 with one line naming the first one's pid and touches nothing (the first keeps its
# tunnels and keeps serving); a state directory that cannot be written stops the agent at once;
# a stale socket is replaced, a live one or any other file never; on exit the agent removes its
# socket only if the path is still its own.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"

source "$SOURCE_DIR/scripts/lab.sh"
lab_init
lab_add_node A 198.18.0.1
SOCK=$RUN/A.sock

# refused WANT FLAGS...: an agent on A (lab_run_agent: A's socket and state dir unless FLAGS
# say otherwise) must exit 1 with one line of output containing WANT.
refused() {
  local want=$1 out rc=0; shift
  out=$(lab_run_agent A "$@" 2>&1) || rc=$?
  [ "$rc" = 1 ] || lab_fail "agent with $*: exit $rc, want 1 ($out)"
  grep -qF -- "$want" <<<"$out" || lab_fail "agent with $*: output lacks '$want': $out"
  [ "$(wc -l <<<"$out")" = 1 ] || lab_fail "agent with $*: want one line, got: $out"
  lab_ok "refused: $(sed 's/.* FATAL //' <<<"$out")"
}
inode() { stat -c %i "$1"; }
devices() { lab_exec A ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort | tr '\n' ' '; }

lab_log "a state directory that cannot be written: exit 1 before anything is touched"
refused "--state_dir=/proc/nope: cannot create the directory: No such file or directory" \
  --state_dir=/proc/nope
refused "--state_dir=/proc: cannot open /proc/agent.lock" --state_dir=/proc
# A read-only file system, in a mount namespace of its own (gone with the process).
rc=0
out=$(unshare -m --propagation private bash -c '
  mkdir -p "$1" && mount -t tmpfs -o size=1m tmpfs "$1" && mount -o remount,ro "$1" &&
  exec ip netns exec "$2" timeout 10 "$3" --grpc_listen="unix:$4" --metrics_listen= \
    --state_dir="$1/state"' ro "$RUN/ro" "$LAB-A" "$BIN_DIR/tunnel-agent" "$SOCK" 2>&1) || rc=$?
[ "$rc" = 1 ] && [ "$(wc -l <<<"$out")" = 1 ] &&
  grep -qF -- "--state_dir=$RUN/ro/state: cannot create the directory: Read-only file system" <<<"$out" ||
  lab_fail "read-only state dir: exit $rc: $out"
lab_ok "refused: $(sed 's/.* FATAL //' <<<"$out")"
: >"$RUN/a-file"
refused "--state_dir=$RUN/a-file: not a directory" --state_dir="$RUN/a-file"
[ ! -e "$SOCK" ] || lab_fail "a refused start left $SOCK behind"
[ "$(devices)" = "lo ul0 " ] || lab_fail "a refused start left devices: $(devices)"
lab_ok "no socket, no device left behind"

lab_log "the state directory is created 0700, the socket 0660, its directory 0755"
NEW_SOCK=$RUN/run/tunnel-agent/agent.sock
_lab_spawn_agent A --state_dir="$RUN/new/state" --grpc_listen="unix:$NEW_SOCK"
for _ in $(seq 100); do
  "$BIN_DIR/tunnelctl" --agent="unix:$NEW_SOCK" list >/dev/null 2>&1 && break
  kill -0 "${LAB_PIDS[A]}" 2>/dev/null || lab_fail "the agent exited: $(cat "$RUN/A.log")"
  sleep 0.05
done
[ "$(stat -c %a "$RUN/new/state")" = 700 ] || lab_fail "state dir mode $(stat -c %a "$RUN/new/state")"
[ "$(stat -c %a "$RUN/run/tunnel-agent")" = 755 ] || lab_fail "socket dir mode $(stat -c %a "$RUN/run/tunnel-agent")"
[ "$(stat -c '%F %a %U:%G' "$NEW_SOCK")" = "socket 660 root:root" ] ||
  lab_fail "socket: $(stat -c '%F %a %U:%G' "$NEW_SOCK")"
"$BIN_DIR/tunnelctl" --agent="unix:$NEW_SOCK" list >/dev/null || lab_fail "tunnelctl cannot list on $NEW_SOCK"
[ "$(cat "$RUN/new/state/agent.lock")" = "${LAB_PIDS[A]}" ] ||
  lab_fail "agent.lock holds '$(cat "$RUN/new/state/agent.lock")', want ${LAB_PIDS[A]}"
[ -z "$(find "$RUN/new/state" -name '.probe*')" ] || lab_fail "the write probe was left behind"
lab_ok "state dir 700, socket dir 755, socket 660 root:root, agent.lock holds the pid, no probe left"
lab_stop_agent A
[ ! -e "$NEW_SOCK" ] || lab_fail "the agent left its socket behind on SIGTERM"
lab_ok "SIGTERM: the agent removed its socket"

lab_log "a second agent on the same state directory: exit 1 naming the first, nothing touched"
lab_start_agent A
FIRST=${LAB_PIDS[A]}
lab_ctl A create gre1 mode gre local 198.18.0.1 remote 198.18.0.2 key 7 address 10.9.0.1/30 >/dev/null
before_ifindex=$(lab_exec A cat /sys/class/net/gre1/ifindex)
before_sock=$(inode "$SOCK")
refused "--state_dir=$RUN/A-state: another tunnel-agent (pid $FIRST) holds $RUN/A-state/agent.lock"
refused "another tunnel-agent (pid $FIRST) holds $RUN/A-state/agent.lock" \
  --grpc_listen="unix:$RUN/A2.sock"
[ ! -e "$RUN/A2.sock" ] || lab_fail "the refused agent created $RUN/A2.sock"

lab_log "a second agent on another state directory and another socket: exit 1 naming the first"
refused "another tunnel-agent (pid $FIRST) runs in this network namespace" \
  --state_dir="$RUN/third-state" --grpc_listen="unix:$RUN/A3.sock"
[ ! -e "$RUN/A3.sock" ] || lab_fail "the refused agent left $RUN/A3.sock behind"

lab_log "a second agent on another state directory but the same socket: exit 1, the first serves on"
refused "unix socket $SOCK is in use: pid $FIRST accepts connections on it; refusing to take it over" \
  --state_dir="$RUN/other-state"
# The same with a bearer token: gRPC's own listener, staged and linked into place.
printf 'tok\n' >"$RUN/token"
refused "unix socket $SOCK is in use: pid $FIRST" --state_dir="$RUN/other-state" \
  --auth_token_file="$RUN/token"
[ "$(inode "$SOCK")" = "$before_sock" ] || lab_fail "the socket was replaced"
kill -0 "$FIRST" || lab_fail "the first agent died"
[ "$(lab_ctl A list -o json | jq -r '.tunnels[].name')" = gre1 ] || lab_fail "the first agent no longer lists gre1"
[ "$(lab_exec A cat /sys/class/net/gre1/ifindex)" = "$before_ifindex" ] ||
  lab_fail "gre1 was removed or re-made by a refused agent"
[ -z "$(ls -A "$RUN/other-state" | grep -v '^agent.lock$' || true)" ] ||
  lab_fail "the refused agent wrote state: $(ls -A "$RUN/other-state")"
[ -z "$(find "$RUN" -maxdepth 1 -name '.tunnel-agent.*')" ] || lab_fail "a staging directory was left behind"
lab_ok "the first agent still serves, gre1 untouched (ifindex $before_ifindex), socket inode unchanged"

lab_log "kill -9: the lock dies with the agent, the stale socket is replaced"
lab_stop_agent A KILL
[ -S "$SOCK" ] || lab_fail "no stale socket after kill -9 (the test needs one)"
refuses=$(/usr/bin/python3 -c '
import errno, socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print("connected")
except OSError as e:
    print(errno.errorcode[e.errno])' "$SOCK")
[ "$refuses" = ECONNREFUSED ] || lab_fail "the socket left by kill -9: connect says $refuses"
_lab_spawn_agent A   # unlike lab_start_agent, does not remove the old socket first
_lab_wait_agent A    # tunnelctl lists on the path: a new socket serves there
[ "$(cat "$RUN/A-state/agent.lock")" = "${LAB_PIDS[A]}" ] || lab_fail "agent.lock does not hold the new pid"
lab_ok "restarted after kill -9 on the stale socket and the released lock"

lab_log "on exit the socket is removed only if the path is still the agent's"
mv "$SOCK" "$RUN/moved.sock"
/usr/bin/python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$SOCK"
someone_else=$(inode "$SOCK")
lab_stop_agent A
[ -S "$SOCK" ] && [ "$(inode "$SOCK")" = "$someone_else" ] || lab_fail "the agent removed a socket not its own"
lab_ok "someone else's socket at the path stays"
rm -f "$RUN/moved.sock"

lab_log "a file that is not a socket is never replaced"
rm -f "$SOCK"
echo precious >"$SOCK"
refused "$SOCK exists and is not a socket: refusing to replace it"
[ "$(cat "$SOCK")" = precious ] || lab_fail "the file at the socket path was changed"
rm -f "$SOCK"

echo "PASS"
