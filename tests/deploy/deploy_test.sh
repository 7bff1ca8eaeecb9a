#!/bin/bash
# deploy.*: the files of deploy/ checked offline, without a cluster or a container engine.
#
#   deploy_test.sh yamllint|kubernetes|prometheus|systemd|systemd_sandbox|seccomp|seccomp_agent|dockerfile
#
# Environment (set by CTest): SOURCE_DIR, the repository; BIN_DIR, the built binaries;
# TOOLS_DIR, the npm packages scripts/install-deps.sh installs (default: BIN_DIR/../tools).
# Exit 0 pass, 1 fail, 77 skipped (a check that needs root or the binaries, without them).
set -euo pipefail

SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
TOOLS_DIR=${TOOLS_DIR:-$(dirname "$BIN_DIR")/tools}
DEPLOY=$SOURCE_DIR/deploy
HERE=$SOURCE_DIR/tests/deploy
PYTHON=/usr/bin/python3  # Debian's, with python3-seccomp (not a pyenv on PATH)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null || fail "$1 is missing (WITH_TEST_DEPS=1 scripts/install-deps.sh installs it)"
}

# ---- yamllint: every YAML file of deploy/ and the lint config ---------------------------------
check_yamllint() {
  need yamllint
  (cd "$SOURCE_DIR" && yamllint --strict -c .yamllint deploy)
  echo "yamllint: $(cd "$SOURCE_DIR" && find deploy -name '*.y*ml' | wc -l) files clean"
}

# ---- Kubernetes: schemas, unknown fields, references; kustomize when kubectl is there --------
check_kubernetes() {
  need node
  [ -d "$TOOLS_DIR/node_modules/kubernetes-models" ] || fail "no $TOOLS_DIR/node_modules/kubernetes-models"
  export NODE_PATH=$TOOLS_DIR/node_modules
  node "$HERE/validate_manifests.cjs" "$DEPLOY/kubernetes"
  # The component must patch something: its patch target is the DaemonSet of the base.
  grep -q 'kind: DaemonSet' "$DEPLOY/kubernetes/components/runtime-default-seccomp/kustomization.yaml"
  # The seccomp profile the DaemonSet names is the one shipped.
  local profile
  profile=$(sed -n 's/^ *localhostProfile: *//p' "$DEPLOY/kubernetes/agent-daemonset.yaml")
  [ "$(basename "$profile")" = "$(basename "$DEPLOY/seccomp/tunnel-agent.json")" ] ||
    fail "agent-daemonset.yaml names seccomp profile $profile, deploy/seccomp has tunnel-agent.json"
  # The fleet file in the controller's ConfigMap is one tunnel-controller accepts: with its
  # token file in place, `plan` fails only on the (unreachable) agents, exit 2, not on the
  # file, exit 1.
  if [ -x "$BIN_DIR/tunnel-controller" ]; then
    "$PYTHON" - "$DEPLOY/kubernetes/controller.yaml" "$work/fleet.yaml" "$work/token" <<'EOF2'
import sys, yaml
manifest, fleet, token = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(manifest)) if d and d.get("kind") == "ConfigMap"]
text = docs[0]["data"]["fleet.yaml"]
assert "tokenFile: /etc/tunnel-agent/token/token" in text, "the fleet file names no token file"
open(fleet, "w").write(text.replace("/etc/tunnel-agent/token/token", token))
open(token, "w").write("test-token\n")
EOF2
    local rc=0
    # In a network namespace of its own with no routes (unshare -n, gone with the process):
    # the agents' addresses are never tried on the host's network.
    unshare --net "$BIN_DIR/tunnel-controller" plan -f "$work/fleet.yaml" --timeout=1 \
      --progress=plain >"$work/plan.log" 2>&1 || rc=$?
    [ "$rc" = 2 ] || { cat "$work/plan.log" >&2; fail "the ConfigMap's fleet file: plan exit $rc, want 2"; }
    echo "controller ConfigMap: tunnel-controller accepts its fleet file"
  fi
  # kubectl is no Debian package: when one is installed, render the kustomization (and an
  # overlay with the component) and validate what `kubectl apply -k` would send.
  if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    kubectl kustomize "$DEPLOY/kubernetes" >"$work/rendered.yaml"
    node "$HERE/validate_manifests.cjs" "$work/rendered.yaml"
    grep -q '^  namespace: tunnel-system$' "$work/rendered.yaml" || fail "kustomize: no namespace set"
    mkdir -p "$work/overlay"
    cp -r "$DEPLOY/kubernetes" "$work/overlay/base"
    printf 'resources:\n  - base\ncomponents:\n  - base/components/runtime-default-seccomp\n' \
      >"$work/overlay/kustomization.yaml"
    kubectl kustomize "$work/overlay" >"$work/overlay.yaml"
    node "$HERE/validate_manifests.cjs" "$work/overlay.yaml"
    grep -q 'type: RuntimeDefault' <(sed -n '/^kind: DaemonSet/,/^---/p' "$work/overlay.yaml") ||
      fail "component runtime-default-seccomp did not set RuntimeDefault on the DaemonSet"
    echo "kubectl kustomize: base and overlay with the component rendered and valid"
  else
    echo "kubectl kustomize: not run (no kubectl); the kustomization's resources were checked"
  fi
}

# ---- Prometheus: config, rules, rule unit tests ----------------------------------------------
check_prometheus() {
  need promtool
  local config=$DEPLOY/prometheus/prometheus.yml
  if promtool check config "$config" >"$work/check.log" 2>&1; then
    cat "$work/check.log"
  elif grep -q 'field kubernetes_sd_configs not found' "$work/check.log"; then
    # Debian's Prometheus is built without Kubernetes discovery: check the rest of the file
    # with each kubernetes_sd_configs block replaced by a static target, and the blocks'
    # own fields here.
    echo "promtool: this build has no kubernetes_sd_configs; checking the file without them"
    NODE_PATH=$TOOLS_DIR/node_modules node - "$config" "$work/prometheus.yml" <<'EOF'
const fs = require("fs");
const YAML = require("yaml");
const [src, dst] = process.argv.slice(2);
const config = YAML.parse(fs.readFileSync(src, "utf8"), { uniqueKeys: true });
let blocks = 0;
for (const job of config.scrape_configs) {
  if (!job.kubernetes_sd_configs) continue;
  for (const sd of job.kubernetes_sd_configs) {
    blocks++;
    const known = new Set(["role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"]);
    for (const key of Object.keys(sd)) if (!known.has(key)) throw new Error(`${job.job_name}: kubernetes_sd_configs: unknown field ${key}`);
    if (!["node", "service", "pod", "endpoints", "endpointslice", "ingress"].includes(sd.role)) throw new Error(`${job.job_name}: role ${sd.role}`);
    if (sd.namespaces && !Array.isArray(sd.namespaces.names)) throw new Error(`${job.job_name}: namespaces.names must be a list`);
  }
  delete job.kubernetes_sd_configs;
  job.static_configs = [{ targets: ["127.0.0.1:9"] }];
}
if (blocks === 0) throw new Error("no kubernetes_sd_configs found");
fs.writeFileSync(dst, YAML.stringify(config));
EOF
    cp -r "$DEPLOY/prometheus/rules" "$work/rules"
    promtool check config "$work/prometheus.yml"
  else
    cat "$work/check.log"
    fail "promtool check config"
  fi
  promtool check rules "$DEPLOY"/prometheus/rules/*.rules.yml
  promtool test rules "$DEPLOY"/prometheus/rules/*.rules.test.yml
  # Every alert of the rules has a unit test, and a runbook: its runbook_url names the section
  # of docs/runbooks.md headed with the alert's name (the anchor is that name in lower case).
  local alert runbooks=$SOURCE_DIR/docs/runbooks.md
  for alert in $(sed -n 's/^ *- alert: *//p' "$DEPLOY"/prometheus/rules/*.rules.yml); do
    grep -q "alertname: $alert\$" "$DEPLOY"/prometheus/rules/*.rules.test.yml ||
      fail "alert $alert has no promtool test"
    awk -v a="$alert" '$0 ~ "- alert: " a "$" {on = 1; next} /- alert:/ {on = 0}
                       on && /runbook_url:/' "$DEPLOY"/prometheus/rules/*.rules.yml |
      grep -q "runbook_url: \"docs/runbooks.md#${alert,,}\"" ||
      fail "alert $alert has no runbook_url docs/runbooks.md#${alert,,}"
    grep -qx "## $alert" "$runbooks" || fail "docs/runbooks.md has no section ## $alert"
  done
  # And no section is left for an alert that is gone.
  for alert in $(sed -n 's/^## //p' "$runbooks"); do
    grep -q -- "- alert: $alert\$" "$DEPLOY"/prometheus/rules/*.rules.yml ||
      fail "docs/runbooks.md has a section for $alert, which no rule defines"
  done
  # The metric names the rules use are the ones the agent exports (agent/*.cc, and the tunnel
  # counters' list).
  local metric
  for metric in $(grep -oh 'tunnelagent_[a-z_]*' "$DEPLOY"/prometheus/rules/*.rules.yml | sort -u); do
    grep -q "\"${metric%_total}" "$SOURCE_DIR"/agent/metrics.cc "$SOURCE_DIR"/agent/grpc_metrics.cc \
      "$SOURCE_DIR"/dataplane/tunnel_counters.h ||
      fail "rules use $metric, which the agent does not export"
  done
}

# ---- systemd: units verified and scored ------------------------------------------------------
# The units with /usr/local/bin/ replaced by a directory holding the built binaries (or
# stand-ins), since systemd-analyze verify checks that ExecStart= is executable.
units_with_binaries() {
  mkdir -p "$work/bin" "$work/units"
  local b
  for b in tunnel-agent tunnel-controller; do
    if [ -x "$BIN_DIR/$b" ]; then ln -sf "$BIN_DIR/$b" "$work/bin/$b"; else ln -sf /bin/true "$work/bin/$b"; fi
  done
  for unit in "$DEPLOY"/systemd/*.service; do
    sed "s#/usr/local/bin/#$work/bin/#g" "$unit" >"$work/units/$(basename "$unit")"
  done
}

check_systemd() {
  need systemd-analyze
  units_with_binaries
  # verify prints unknown keys and bad values but still exits 0: any output fails.
  systemd-analyze verify --man=no "$work"/units/*.service >"$work/verify.log" 2>&1 || true
  if [ -s "$work/verify.log" ]; then
    cat "$work/verify.log"
    fail "systemd-analyze verify"
  fi
  echo "systemd-analyze verify: $(ls "$work/units" | tr '\n' ' ')clean"
  # The sandbox, scored by systemd (0 = fully confined, 10 = none): at most 3.0.
  local unit
  for unit in "$work"/units/*.service; do
    systemd-analyze security --offline=yes --threshold=30 "$unit" >"$work/security.log" 2>&1 ||
      { tail -n 5 "$work/security.log"; fail "systemd-analyze security $(basename "$unit") above 3.0"; }
    grep 'Overall exposure' "$work/security.log" | sed "s/^→ /$(basename "$unit"): /"
  done
  # The directives the agent depends on are there.
  local unit=$DEPLOY/systemd/tunnel-agent.service
  for directive in 'AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW' \
    'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW' 'DeviceAllow=/dev/net/tun rw' \
    'StateDirectory=tunnel-agent' 'ProtectSystem=strict' 'PrivateDevices=no' \
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK'; do
    grep -qx "$directive" "$unit" || fail "tunnel-agent.service lacks $directive"
  done
  grep -q '^SystemCallFilter=.*io_uring_setup io_uring_enter io_uring_register' "$unit" ||
    fail "tunnel-agent.service's SystemCallFilter= does not allow io_uring"
}

# ---- root and the agent: the sandbox and the seccomp profile tried on the real agent --------
need_agent() {
  [ "$(id -u)" = 0 ] || { echo "SKIP: needs root (network namespace)"; exit 77; }
  [ -x "$BIN_DIR/tunnel-agent" ] && [ -x "$BIN_DIR/tunnelctl" ] ||
    { echo "SKIP: no $BIN_DIR/tunnel-agent"; exit 77; }
  "$PYTHON" -c 'import seccomp' 2>/dev/null || fail "python3-seccomp is missing"
}

# Runs the agent in a new network namespace under PROFILE (OCI seccomp JSON), with PREFIX
# (e.g. setpriv ...) before it, creates a GRE tunnel through it, and prints the metrics.
# run_agent NAME PROFILE IO_BACKEND [PREFIX...]
run_agent() {
  local name=$1 profile=$2 backend=$3
  shift 3
  local dir=$work/$name
  mkdir -p "$dir/state"
  chmod 0777 "$dir" "$dir/state"
  unshare -n -m bash -c '
    set -e
    dir=$1 profile=$2 backend=$3; shift 3
    ip link set lo up
    # /dev/net/tun as udev and systemd-tmpfiles make it on a host (0666), in this mount
    # namespace only: some machines (containers, VMs without udev) have it 0600.
    mknod -m 0666 $dir/tun c 10 200
    mount --bind $dir/tun /dev/net/tun
    "$@" '"$PYTHON"' '"$HERE"'/run_with_seccomp.py "$profile" '"$BIN_DIR"'/tunnel-agent \
      --grpc_listen=unix:$dir/agent.sock --metrics_listen=127.0.0.1:9476 \
      --state_dir=$dir/state --io_backend=$backend >$dir/agent.log 2>&1 &
    pid=$!
    for _ in $(seq 50); do [ -S $dir/agent.sock ] && break; sleep 0.1; done
    ok=0
    '"$BIN_DIR"'/tunnelctl --agent=unix:$dir/agent.sock create gre1 mode gre \
      local 127.0.0.1 remote 127.0.0.2 key 7 >$dir/create.log 2>&1 || ok=1
    curl -sf --max-time 10 http://127.0.0.1:9476/metrics >$dir/metrics || ok=1
    # SIGTERM must stop it within 10 s.
    kill $pid
    for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    if kill -0 $pid 2>/dev/null; then
      echo "the agent did not stop within 10 s of SIGTERM" >>$dir/agent.log
      kill -9 $pid
      ok=1
    fi
    wait $pid || ok=1
    exit $ok' run_agent "$dir" "$profile" "$backend" "$@" ||
    { cat "$dir/agent.log" "$dir/create.log" >&2; fail "$name: the agent did not run"; }
  grep -q '^tunnelagent_tunnel_up{tunnel="gre1"} 1' "$dir/metrics" ||
    { cat "$dir/agent.log" >&2; fail "$name: tunnel gre1 is not up"; }
}

check_seccomp() {
  need jq
  local profile=$DEPLOY/seccomp/tunnel-agent.json
  jq -e . "$profile" >/dev/null || fail "$profile is not JSON"
  jq -e '.defaultAction == "SCMP_ACT_ERRNO"' "$profile" >/dev/null ||
    fail "the profile must refuse what it does not name (defaultAction SCMP_ACT_ERRNO)"
  local call
  for call in io_uring_setup io_uring_enter io_uring_register; do
    jq -e --arg c "$call" '[.syscalls[] | select(.action == "SCMP_ACT_ALLOW") | .names[]] | index($c)' \
      "$profile" >/dev/null || fail "the profile does not allow $call"
  done
  # What the runtime default refuses without CAP_SYS_ADMIN stays refused.
  for call in mount unshare setns bpf kexec_load init_module open_by_handle_at reboot; do
    if jq -e --arg c "$call" '[.syscalls[] | select(.action == "SCMP_ACT_ALLOW" and (.args // [] | length) == 0) | .names[]] | index($c)' \
      "$profile" >/dev/null; then
      fail "the profile allows $call, which the runtime default refuses"
    fi
  done
  jq -e '.syscalls[] | select(.names == ["clone3"]) | .errnoRet == 38' "$profile" >/dev/null ||
    fail "clone3 must fail with ENOSYS (38) so that glibc falls back to clone"
  echo "seccomp profile: JSON, default refuses, io_uring allowed, privileged calls refused"
}

check_seccomp_agent() {
  need jq
  local profile=$DEPLOY/seccomp/tunnel-agent.json
  need_agent
  # The profile on the real agent: io_uring works (threads, netlink, TUN, raw sockets too).
  run_agent uring "$profile" uring
  grep -q 'tunnelagent_build_info{io_backend="io_uring"' "$work/uring/metrics" ||
    fail "under the profile the agent is not on io_uring"
  echo "agent under deploy/seccomp/tunnel-agent.json: io_uring backend, tunnel up"
  # The same profile without io_uring, as a runtime default that refuses it: auto falls back.
  jq '.syscalls |= map(.names -= ["io_uring_setup", "io_uring_enter", "io_uring_register"] | select(.names != []))' \
    "$profile" >"$work/no-uring.json"
  run_agent fallback "$work/no-uring.json" auto
  grep -q '^tunnelagent_dataplane_io_uring_fallback 1' "$work/fallback/metrics" ||
    fail "without io_uring the agent did not report the fallback"
  echo "agent under the profile without io_uring: epoll fallback reported, tunnel up"
  # io_uring_setup allowed but io_uring_enter refused: the first submission fails, and auto
  # falls back rather than waiting forever on a ring that never moves.
  jq '.syscalls |= map(.names -= ["io_uring_enter"] | select(.names != []))' \
    "$profile" >"$work/no-enter.json"
  run_agent no_enter "$work/no-enter.json" auto
  grep -q '^tunnelagent_dataplane_io_uring_fallback 1' "$work/no_enter/metrics" ||
    fail "with io_uring_enter refused the agent did not fall back"
  echo "agent under the profile without io_uring_enter: epoll fallback reported, tunnel up"
}

# The unit's SystemCallFilter= as an OCI seccomp profile: systemd's groups expanded with
# systemd-analyze, allow-list first, then the ~ lines taken out.
unit_filter_profile() {
  local unit=$1 out=$2
  "$PYTHON" - "$unit" "$out" <<'EOF'
import json, subprocess, sys
unit, out = sys.argv[1:]
def expand(item, seen=None):
    if not item.startswith("@"):
        return {item}
    lines = subprocess.run(["systemd-analyze", "syscall-filter", item], check=True,
                           capture_output=True, text=True).stdout.splitlines()
    names = set()
    for line in lines[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        names |= expand(line)
    return names
allowed = None
for line in open(unit):
    if not line.startswith("SystemCallFilter="):
        continue
    value = line.split("=", 1)[1].split()
    if value[0].startswith("~"):
        value[0] = value[0][1:]
        for item in value:
            allowed -= expand(item)
    else:
        allowed = (allowed or set()).union(*(expand(i) for i in value))
json.dump({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
           "syscalls": [{"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"}]}, open(out, "w"))
EOF
}

check_systemd_sandbox() {
  need_agent
  need setpriv
  need systemd-analyze
  # What tunnel-agent.service gives the agent, but for the file-system sandbox: its system
  # call filter, an unprivileged user with only the ambient capabilities CAP_NET_ADMIN and
  # CAP_NET_RAW, no new privileges.
  chmod 0755 "$work"  # the agent runs as nobody here
  unit_filter_profile "$DEPLOY/systemd/tunnel-agent.service" "$work/unit-filter.json"
  run_agent unit-sandbox "$work/unit-filter.json" uring \
    setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
    --inh-caps=-all,+net_admin,+net_raw --ambient-caps=-all,+net_admin,+net_raw \
    --bounding-set=-all,+net_admin,+net_raw
  grep -q 'tunnelagent_build_info{io_backend="io_uring"' "$work/unit-sandbox/metrics" ||
    fail "under the unit's filter the agent is not on io_uring"
  echo "agent as nobody with CAP_NET_ADMIN/CAP_NET_RAW under the unit's SystemCallFilter=: io_uring, tunnel up"
}

# ---- Dockerfile: lint, files it copies, the runtime packages cover the binaries' libraries ---
check_dockerfile() {
  local dockerfile=$DEPLOY/Dockerfile
  need node
  export NODE_PATH=$TOOLS_DIR/node_modules
  # hadolint is neither a Debian nor an npm package: dockerfile-utils (the linter of the
  # Docker language server) instead.
  node - "$dockerfile" <<'EOF'
const fs = require("fs");
const { validate } = require("dockerfile-utils");
const text = fs.readFileSync(process.argv[2], "utf8");
const diagnostics = validate(text, { deprecatedMaintainer: 1, emptyContinuationLine: 1, instructionCasing: 1, instructionCmdMultiple: 1, instructionEntrypointMultiple: 1, instructionHealthcheckMultiple: 1, instructionJSONInSingleQuotes: 1, instructionWorkdirRelative: 1 });
for (const d of diagnostics) console.log(`FAIL Dockerfile:${d.range.start.line + 1}: ${d.message}`);
if (diagnostics.length) process.exit(1);
console.log("dockerfile-utils: no problems");
EOF
  # Every COPY source from the build context exists (COPY --from copies from a stage).
  local src
  while read -r src; do
    [ -e "$SOURCE_DIR/$src" ] || fail "Dockerfile copies $src, which does not exist"
  done < <(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | awk '$1 == "COPY" && $2 !~ /^--from/ {for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i}')
  # The context keeps what the build stage needs.
  for src in CMakeLists.txt scripts/install-deps.sh proto agent dataplane clients; do
    if grep -qx "$src" "$SOURCE_DIR/.dockerignore"; then fail ".dockerignore leaves out $src"; fi
  done
  grep -qx '.git' "$SOURCE_DIR/.dockerignore" && grep -qx 'build' "$SOURCE_DIR/.dockerignore" ||
    fail ".dockerignore must leave out .git and build"
  # The image runs as a non-root user by default.
  grep -q '^USER [1-9]' "$dockerfile" || fail "the runtime stage has no non-root USER"
  # The runtime stage's packages: each exists in Debian, and together with their dependencies
  # they hold every shared library the built binaries load.
  local packages
  packages=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | sed -n '/AS runtime/,$p' |
    grep -o 'apt-get install [^&]*' | tr ' ' '\n' | grep -v -e '^-' -e '^apt-get$' -e '^install$' -e '^$')
  [ -n "$packages" ] || fail "no apt-get install in the runtime stage"
  local p
  for p in $packages; do
    apt-cache show "$p" >/dev/null 2>&1 || fail "Debian has no package $p (apt-get update?)"
  done
  echo "runtime packages: $(echo $packages)"
  if [ ! -x "$BIN_DIR/tunnel-agent" ]; then
    echo "libraries: not checked (no binaries in $BIN_DIR)"
    return
  fi
  # The packages the runtime stage would hold: the list, its dependencies, and what
  # debian:bookworm-slim has (the essential set, with libc6 and libgcc-s1).
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances $packages 2>/dev/null | grep -v '^ ' | grep -v '^<' |
    sed 's/:.*//' | sort -u >"$work/closure"
  dpkg-query -W -f='${Package} ${Essential}\n' | awk '$2 == "yes" {print $1}' >>"$work/closure"
  local binaries=() b lib pkg missing=0
  for b in tunnel-agent tunnelctl tunnel-controller; do
    [ -x "$BIN_DIR/$b" ] && binaries+=("$BIN_DIR/$b")
  done
  for lib in $(ldd "${binaries[@]}" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
    pkg=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "$(readlink -f "$lib")" 2>/dev/null ||
      dpkg-query -S "${lib#/usr}" 2>/dev/null || dpkg-query -S "/usr${lib}" 2>/dev/null) ||
      { echo "FAIL: $lib belongs to no package"; missing=1; continue; }
    pkg=${pkg%%:*}
    pkg=${pkg%%,*}
    grep -qx "$pkg" "$work/closure" || { echo "FAIL: $lib ($pkg) is not in the runtime stage"; missing=1; }
  done
  [ $missing = 0 ] || fail "the runtime stage lacks libraries the binaries load"
  echo "libraries of ${binaries[*]##*/}: all from the runtime stage's packages"
}

case "${1:-}" in
  yamllint | kubernetes | prometheus | systemd | systemd_sandbox | seccomp | seccomp_agent | dockerfile)
    "check_$1"
    ;;
  *) fail "usage: $0 yamllint|kubernetes|prometheus|systemd|systemd_sandbox|seccomp|seccomp_agent|dockerfile" ;;
esac
echo "deploy.$1: passed"
