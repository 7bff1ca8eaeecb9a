#!/bin/bash
# The clients' exit status, end to end with the real binaries: 0 ok, 1 bad input of any kind
# (nothing sent), 2 the agent (a node) refused, failed or could not be reached. Also --version
# and --help of tunnelctl and tunnel-controller, and tunnelctl's default agent address (the
# agent's unix socket), reached through a private mount namespace so that the host's /run is
# never touched.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
command -v jq >/dev/null || { echo "SKIP: jq not found (apt-get install jq)" >&2; exit 77; }

source "$SOURCE_DIR/scripts/lab.sh"
[ -x "$BIN_DIR/tunnel-controller" ] || lab_fail "missing $BIN_DIR/tunnel-controller: build first"

lab_init
lab_add_node A 198.18.0.1
lab_start_agent A
CTL=$BIN_DIR/tunnelctl
CONTROLLER=$BIN_DIR/tunnel-controller
SOCK=unix:$RUN/A.sock
NOWHERE=unix:$RUN/nosuch.sock  # no agent: nothing listens, no network is used

# check_exit WANT_RC STDERR_PATTERN CMD...: runs CMD, checks its exit status and that stderr
# matches the pattern (empty: stderr is empty; "-": not checked, for progress lines).
check_exit() {
  local want=$1 pattern=$2 rc=0; shift 2
  "$@" >"$RUN/out" 2>"$RUN/err" </dev/null || rc=$?
  [ "$rc" = "$want" ] || lab_fail "${*#"$BIN_DIR/"}: exit $rc, want $want ($(cat "$RUN/err"))"
  if [ "$pattern" = - ]; then
    :
  elif [ -z "$pattern" ]; then
    [ ! -s "$RUN/err" ] || lab_fail "${*#"$BIN_DIR/"}: stderr not empty: $(cat "$RUN/err")"
  else
    grep -qE "$pattern" "$RUN/err" || lab_fail "${*#"$BIN_DIR/"}: stderr '$(cat "$RUN/err")', want /$pattern/"
  fi
  lab_ok "${*#"$BIN_DIR/"} -> $want"
}

lab_log "--version and --help"
for prog in tunnelctl tunnel-controller; do
  check_exit 0 "" "$BIN_DIR/$prog" --version
  grep -qxE "$prog [0-9]+\.[0-9]+\.[0-9]+" "$RUN/out" || lab_fail "$prog --version: $(cat "$RUN/out")"
  version=$(cut -d' ' -f2 "$RUN/out")
  for h in --help -h help; do
    check_exit 0 "" "$BIN_DIR/$prog" "$h"
    grep -qi "^exit status" "$RUN/out" || lab_fail "$prog $h: no exit status in the help"
    grep -q -- "--version" "$RUN/out" || lab_fail "$prog $h: --version not listed"
  done
done
# The clients report the version the agent does.
agent_version=$("$CTL" --agent="$SOCK" -o json info | jq -r .version)
[ "$agent_version" = "$version" ] || lab_fail "agent version '$agent_version', clients '$version'"
lab_ok "agent and clients are version $version"

lab_log "tunnelctl: 1 for bad input, nothing sent"
check_exit 1 "unknown flag '--bogus'" "$CTL" --agent="$SOCK" --bogus list
check_exit 1 "unknown command 'bogus'" "$CTL" --agent="$SOCK" bogus
check_exit 1 "invalid remote '300.1.1.1'" "$CTL" --agent="$SOCK" create t1 mode gre remote 300.1.1.1
check_exit 1 "invalid route '10.2.0.0/33'" \
  "$CTL" --agent="$SOCK" create t1 mode gre remote 198.18.0.9 route 10.2.0.0/33
printf '{"owner": "o", "tunnels": [' >"$RUN/broken.json"
check_exit 1 "apply: .*broken.json" "$CTL" --agent="$SOCK" apply -f "$RUN/broken.json"
check_exit 1 "cannot read" "$CTL" --agent="$SOCK" apply -f "$RUN/missing.json" --owner o
[ "$("$CTL" --agent="$SOCK" -o json list | jq '.tunnels | length')" = 0 ] ||
  lab_fail "a tunnel was made from bad input"
lab_ok "no tunnel made from bad input"

lab_log "tunnelctl: 2 when the agent refuses or cannot be reached"
"$CTL" --agent="$SOCK" create t1 mode gre remote 198.18.0.9 >/dev/null
check_exit 2 ": ALREADY_EXISTS: " "$CTL" --agent="$SOCK" create t1 mode gre remote 198.18.0.9
check_exit 2 ": NOT_FOUND: " "$CTL" --agent="$SOCK" get nosuch
check_exit 2 ": INVALID_ARGUMENT: " "$CTL" --agent="$SOCK" create t2 mode ip6gre remote 198.18.0.9
check_exit 2 ": UNAVAILABLE: " "$CTL" --agent="$NOWHERE" --timeout=2 list

lab_log "tunnelctl's default agent is unix:/run/tunnel-agent/agent.sock, \$TUNNELCTL_AGENT overrides it"
check_exit 0 "" env TUNNELCTL_AGENT="$SOCK" "$CTL" get t1
check_exit 2 "unix:$RUN/nosuch.sock" env TUNNELCTL_AGENT="$NOWHERE" "$CTL" --timeout=2 list
# A /run of its own in a private mount namespace, whose tunnel-agent/agent.sock leads to A's.
mkdir -p "$RUN/fake-run/tunnel-agent"
ln -s "$RUN/A.sock" "$RUN/fake-run/tunnel-agent/agent.sock"
names=$(env -u TUNNELCTL_AGENT unshare --mount --propagation private \
  sh -c 'mount --bind "$1" /run && "$2" -o json list' sh "$RUN/fake-run" "$CTL" |
  jq -r '[.tunnels[].name] | join(" ")')
[ "$names" = t1 ] || lab_fail "tunnelctl without --agent listed '$names', want 't1'"
lab_ok "tunnelctl without --agent reaches the agent on /run/tunnel-agent/agent.sock"

lab_log "tunnel-controller: 1 for bad input, 2 when a node fails"
fleet() {  # FILE NODE_LINES...: a mesh of the given nodes
  local file=$1; shift
  { echo "defaults: {innerPool: 10.99.0.0/24}"; echo "nodes:"; printf '  %s\n' "$@"
    echo "topology: {type: mesh}"; } >"$file"
}
fleet "$RUN/one.yaml" "- {name: a, agent: \"$SOCK\", underlay: 198.18.0.1}"
fleet "$RUN/two.yaml" "- {name: a, agent: \"$SOCK\", underlay: 198.18.0.1}" \
  "- {name: b, agent: \"$NOWHERE\", underlay: 198.18.0.2}"
fleet "$RUN/badaddr.yaml" "- {name: a, agent: \"$SOCK\", underlay: 300.1.1.1}"
printf 'nodes: [\n' >"$RUN/bad.yaml"
check_exit 0 - "$CONTROLLER" plan -f "$RUN/one.yaml" --progress=plain
check_exit 1 "unknown flag --bogus" "$CONTROLLER" plan -f "$RUN/one.yaml" --bogus
check_exit 1 "unknown command" "$CONTROLLER" deploy -f "$RUN/one.yaml"
check_exit 1 "bad.yaml" "$CONTROLLER" plan -f "$RUN/bad.yaml"
check_exit 1 "300.1.1.1" "$CONTROLLER" plan -f "$RUN/badaddr.yaml"
check_exit 1 "cannot read" "$CONTROLLER" plan -f "$RUN/missing.yaml"
rc=0
"$CONTROLLER" plan -f "$RUN/two.yaml" --progress=plain --retries=0 --timeout=2 \
  >"$RUN/plan.out" 2>/dev/null || rc=$?
[ "$rc" = 2 ] || lab_fail "plan with node b unreachable: exit $rc, want 2 ($(cat "$RUN/plan.out"))"
grep -q "^b: FAILED: applying the node's tunnels failed.*: the agent cannot be reached (ApplyTunnels: UNAVAILABLE" "$RUN/plan.out" || lab_fail "plan: $(cat "$RUN/plan.out")"
lab_ok "tunnel-controller plan with an unreachable node -> 2"
[ "$("$CTL" --agent="$SOCK" -o json list | jq -r '[.tunnels[].name] | join(" ")')" = t1 ] ||
  lab_fail "plan changed node a"
lab_ok "plan changed nothing"
