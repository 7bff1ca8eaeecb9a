#!/bin/bash
# deploy.*: the files of deploy/ checked offline, without a cluster or a container engine.
#
#   deploy_test.sh yamllint|kubernetes|kustomize|prometheus|grafana|metrics|uninstall|systemd|
#                  systemd_sandbox|seccomp|seccomp_agent|dockerfile
#
# Environment (set by CTest): SOURCE_DIR, the repository; BIN_DIR, the built binaries;
# TOOLS_DIR, the npm packages scripts/install-deps.sh installs (default: BIN_DIR/../tools).
# Exit 0 pass, 1 fail, 77 skipped (a check that needs root, the binaries or a kubectl with
# kustomize components, without them).
set -euo pipefail

SOURCE_DIR=${SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN_DIR=${BIN_DIR:-$SOURCE_DIR/build/bin}
TOOLS_DIR=${TOOLS_DIR:-$(dirname "$BIN_DIR")/tools}
# Absolute: the checks link to the binaries and run them from other directories.
BIN_DIR=$(cd "$BIN_DIR" 2>/dev/null && pwd || echo "$BIN_DIR")
TOOLS_DIR=$(cd "$TOOLS_DIR" 2>/dev/null && pwd || echo "$TOOLS_DIR")
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

# ---- Kubernetes: schemas, unknown fields, references, the components' files -----------------
check_kubernetes() {
  need node
  [ -d "$TOOLS_DIR/node_modules/kubernetes-models" ] || fail "no $TOOLS_DIR/node_modules/kubernetes-models"
  export NODE_PATH=$TOOLS_DIR/node_modules
  # The base, with the Prometheus Operator component's objects beside it (their selectors
  # must find the base's Services).
  node "$HERE/validate_manifests.cjs" "$DEPLOY/kubernetes" \
    "$DEPLOY/kubernetes/components/prometheus-operator/servicemonitor.yaml" \
    "$DEPLOY/kubernetes/components/prometheus-operator/prometheusrule.yaml"
  # The base needs nothing on the nodes (RuntimeDefault, epoll where io_uring is refused); each
  # component is a Component whose files exist and whose patches target the base's objects;
  # the seccomp component's init container writes the generated profile where the agent's
  # Localhost profile names it.
  "$PYTHON" "$HERE/check_components.py" static "$DEPLOY" || fail "the components' files"
  echo "components: base on RuntimeDefault; seccomp, prometheus-operator and grafana components consistent"
  # The fleet file in the controller's ConfigMap is one tunnel-controller accepts: with its
  # token file in place, `plan` fails only on the (unreachable) agents, exit 2, not on the
  # file, exit 1.
  if [ -x "$BIN_DIR/tunnel-controller" ]; then
    write_fleet "$work/fleet.yaml" "$work/token"
    local rc=0
    # In a network namespace of its own with no routes (unshare -n, gone with the process):
    # the agents' addresses are never tried on the host's network.
    unshare --net "$BIN_DIR/tunnel-controller" plan -f "$work/fleet.yaml" --timeout=1 \
      --progress=plain >"$work/plan.log" 2>&1 || rc=$?
    [ "$rc" = 2 ] || { cat "$work/plan.log" >&2; fail "the ConfigMap's fleet file: plan exit $rc, want 2"; }
    echo "controller ConfigMap: tunnel-controller accepts its fleet file"
  fi
}

# The fleet file of the controller's ConfigMap, at FLEET, its token file at TOKEN.
write_fleet() {
  "$PYTHON" - "$DEPLOY/kubernetes/controller.yaml" "$1" "$2" <<'EOF2'
import sys, yaml
manifest, fleet, token = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(manifest)) if d and d.get("kind") == "ConfigMap"]
text = docs[0]["data"]["fleet.yaml"]
assert "tokenFile: /etc/tunnel-agent/token/token" in text, "the fleet file names no token file"
open(fleet, "w").write(text.replace("/etc/tunnel-agent/token/token", token))
open(token, "w").write("test-token\n")
EOF2
}

# ---- kustomize: what `kubectl apply -k` would send, base and overlays with the components ------
check_kustomize() {
  need node
  need jq
  export NODE_PATH=$TOOLS_DIR/node_modules
  # Components came with kustomize 3.7 (kubectl 1.21); Debian's kubernetes-client is 1.20
  # (kustomize 2, which knows neither components nor the base's labels:), and it cannot be
  # installed beside another kubectl package.
  local version
  version=$(kubectl version --client -o json 2>/dev/null | jq -r '.kustomizeVersion // empty' || true)
  if ! [[ $version =~ ^v([4-9]|[1-9][0-9]) ]]; then
    echo "SKIP: no kubectl with kustomize 4 or later (found: ${version:-none}); the files were checked by deploy.kubernetes"
    exit 77
  fi
  kubectl kustomize "$DEPLOY/kubernetes" >"$work/base.yaml"
  node "$HERE/validate_manifests.cjs" "$work/base.yaml"
  "$PYTHON" "$HERE/check_components.py" rendered "$work/base.yaml" "$DEPLOY" || fail "the base, rendered"
  grep -q '^  namespace: tunnel-system$' "$work/base.yaml" || fail "kustomize: no namespace set"
  # Overlays as users write them: each component alone, all of them, and all with a namespace
  # and a registry of the overlay's own.
  local overlay rel name components
  for components in seccomp prometheus-operator grafana "seccomp prometheus-operator grafana" all-own; do
    name=${components// /+}
    overlay=$work/overlay-$name
    mkdir -p "$overlay"
    rel=$(realpath --relative-to="$overlay" "$DEPLOY")
    {
      printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s/kubernetes\ncomponents:\n' "$rel"
      [ "$components" = all-own ] && components="seccomp prometheus-operator grafana"
      for c in $components; do
        case $c in
          seccomp) echo "  - $rel/seccomp" ;;
          prometheus-operator) echo "  - $rel/kubernetes/components/prometheus-operator" ;;
          grafana) echo "  - $rel/grafana" ;;
        esac
      done
      if [ "$name" = all-own ]; then
        printf 'namespace: net-tunnels\nimages:\n  - name: tunnel-agent\n    newName: registry.example.com/tunnel-agent\n    newTag: 0.2.0\n'
      fi
    } >"$overlay/kustomization.yaml"
    kubectl kustomize "$overlay" >"$work/$name.yaml" || fail "kubectl kustomize of an overlay with $components"
    node "$HERE/validate_manifests.cjs" "$work/$name.yaml"
    # shellcheck disable=SC2086  # the components, one argument each
    "$PYTHON" "$HERE/check_components.py" rendered "$work/$name.yaml" "$DEPLOY" $components ||
      fail "the overlay with $components, rendered"
  done
  grep -q '^  namespace: net-tunnels$' "$work/all-own.yaml" && ! grep -q 'namespace: tunnel-system' "$work/all-own.yaml" ||
    fail "an overlay's namespace: does not move every object"
  grep -q 'image: registry.example.com/tunnel-agent:0.2.0' "$work/all-own.yaml" ||
    fail "an overlay's images: does not reach the containers"
  echo "kubectl kustomize ($version): base and overlays with each component, all, and their own namespace and image: valid"
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
  # Every recorded series the rules read (tunnelagent:...), in expressions and in templates'
  # queries, is one a rule records: promtool takes an unknown name for a series that is
  # simply absent.
  local name
  for name in $(grep -oh 'tunnelagent:[a-z_:]*' "$DEPLOY"/prometheus/rules/*.rules.yml | sort -u); do
    grep -q -- "- record: $name\$" "$DEPLOY"/prometheus/rules/*.rules.yml || fail "rules read $name, which no rule records"
  done
  # The PrometheusRule of the prometheus-operator component is the rules file, as the script
  # makes it: nobody edited one without the other.
  local rule=$DEPLOY/kubernetes/components/prometheus-operator/prometheusrule.yaml
  "$PYTHON" "$DEPLOY/prometheus/make_prometheusrule.py" - >"$work/prometheusrule.yaml"
  diff -u "$rule" "$work/prometheusrule.yaml" >&2 ||
    fail "$rule is not what deploy/prometheus/make_prometheusrule.py makes from the rules: run it"
  "$PYTHON" - "$DEPLOY/prometheus/rules/tunnel-agent.rules.yml" "$rule" <<'EOF2' || fail "the PrometheusRule's rules differ"
import sys, yaml
rules, crd = (yaml.safe_load(open(p)) for p in sys.argv[1:])
assert crd["kind"] == "PrometheusRule" and crd["spec"]["groups"] == rules["groups"]
EOF2
  echo "PrometheusRule: generated from the rules file, and equal to it"
  # The metric names the rules use are checked against a real scrape: deploy.metrics.
}

# ---- Grafana: the dashboard's structure, and every query through promtool --------------------
check_grafana() {
  need promtool
  "$PYTHON" "$HERE/check_dashboard.py" "$DEPLOY/grafana/tunnel-agent.json" "$work/dashboard.rules.yml" ||
    fail "the dashboard"
  promtool check rules "$work/dashboard.rules.yml" ||
    { grep '^# rule' "$work/dashboard.rules.yml" >&2; fail "a dashboard query is not PromQL (rule N: the panel above)"; }
}

# ---- metrics: the names the rules, the dashboard and the docs use are exported ----------------
# From a real scrape of both programs (their names are not all literals in the source: the
# scrape metrics' prefix is an argument): the agent with a point-to-point tunnel with
# keepalive, a multipoint tunnel with a peer and a few API calls, and the controller on the
# fleet file of its ConfigMap. A family with no sample yet still has its # TYPE line.
check_metrics() {
  [ "$(id -u)" = 0 ] || { echo "SKIP: needs root (network namespace)"; exit 77; }
  local b
  for b in tunnel-agent tunnelctl tunnel-controller; do
    [ -x "$BIN_DIR/$b" ] || { echo "SKIP: no $BIN_DIR/$b"; exit 77; }
  done
  need curl
  local dir=$work/metrics
  mkdir -p "$dir/state"
  write_fleet "$dir/fleet.yaml" "$dir/token"
  unshare -n -m bash -c '
    set -e
    dir=$1 bin=$2
    ip link set lo up
    mknod -m 0666 $dir/tun c 10 200
    mount --bind $dir/tun /dev/net/tun
    $bin/tunnel-agent --grpc_listen=unix:$dir/agent.sock --metrics_listen=127.0.0.1:9476 \
      --state_dir=$dir/state >$dir/agent.log 2>&1 &
    agent=$!
    $bin/tunnel-controller run -f $dir/fleet.yaml --interval 1s \
      --metrics_listen 127.0.0.1:9477 >$dir/controller.log 2>&1 &
    controller=$!
    trap "kill $agent $controller 2>/dev/null || true" EXIT
    for _ in $(seq 50); do [ -S $dir/agent.sock ] && break; sleep 0.1; done
    ctl() { $bin/tunnelctl --agent=unix:$dir/agent.sock "$@" >>$dir/ctl.log 2>&1; }
    ctl create gre1 mode gre local 127.0.0.1 remote 127.0.0.2 key 7 keepalive 1
    ctl create mp1 mode gre multipoint local 127.0.0.1 key 9
    ctl peer add mp1 p1 underlay 127.0.0.3 allowed 10.9.0.0/24 keepalive 1
    ctl list
    ! ctl get nosuchtunnel
    sleep 2
    curl -sf --max-time 10 http://127.0.0.1:9476/metrics >/dev/null
    curl -sf --max-time 10 http://127.0.0.1:9476/metrics >$dir/agent.metrics
    curl -sf --max-time 10 http://127.0.0.1:9477/metrics >$dir/controller.metrics
  ' check_metrics "$dir" "$BIN_DIR" ||
    { cat "$dir"/*.log >&2; fail "the agent and controller did not run, or a tunnel was refused"; }
  # Family names (# TYPE), and sample names (histograms' _bucket, _sum, _count).
  sed -n -e 's/^# TYPE \([a-zA-Z_:][a-zA-Z0-9_:]*\) .*/\1/p' -e 's/^\([a-zA-Z_:][a-zA-Z0-9_:]*\)[{ ].*/\1/p' \
    "$dir/agent.metrics" "$dir/controller.metrics" | sort -u >"$dir/exported"
  grep -qx tunnelagent_tunnel_peers "$dir/exported" && grep -qx tunnelcontroller_nodes "$dir/exported" ||
    fail "the scrapes lack the tunnels' or the controller's metrics"
  # Our programs' names wherever they are used (exposer_: the scrape metrics' old names).
  local used missing=0 name
  used=$(grep -ohE '\b(tunnelagent|tunnelcontroller|grpc_server|process|exposer)_[a-z0-9_]+' \
    "$DEPLOY"/prometheus/rules/*.rules.yml "$DEPLOY/grafana/tunnel-agent.json" \
    "$SOURCE_DIR/docs/runbooks.md" "$SOURCE_DIR/docs/deploying.md" | sort -u)
  for name in $used; do
    grep -qx "$name" "$dir/exported" || { echo "FAIL: $name is used but not exported" >&2; missing=1; }
  done
  [ $missing = 0 ] || fail "rules, dashboard or docs use metrics the programs do not export (names: $dir/exported)"
  echo "metrics: $(echo "$used" | wc -w) names used by the rules, the dashboard and the docs, all in a real scrape"
}

# ---- uninstall.sh: syntax, lint, and runs against a fake cluster --------------------------------
check_uninstall() {
  need shellcheck
  need jq
  local script=$DEPLOY/kubernetes/uninstall.sh
  bash -n "$script"
  shellcheck "$script" "$HERE/fake_cluster.sh"
  # A cluster of two nodes (node2 in the middle of a rolling update, two agent pods) whose
  # kubectl and tunnelctl are tests/deploy/fake_cluster.sh: it records every call and runs the
  # script's in-pod commands with a fake tunnelctl, and notes what a real cluster would get
  # wrong (tunnels deleted while the controller runs, nodes cleaned while agents run).
  fake() {
    local d=$work/$1
    rm -rf "$d"
    mkdir -p "$d/bin" "$d/tunnels"
    ln -s "$HERE/fake_cluster.sh" "$d/bin/kubectl"
    ln -s "$HERE/fake_cluster.sh" "$d/bin/tunnelctl"
    printf 'gre1\nmp1\n' >"$d/tunnels/node1"
    printf 'ipip1\n' >"$d/tunnels/node2"
  }
  run_uninstall() {
    local d=$work/$1
    shift
    FAKE_CLUSTER=$d PATH=$d/bin:$PATH "$script" --timeout 4 "$@" >"$d/out" 2>&1
  }
  # Line number of the first call matching a pattern (0: none).
  first() { grep -n -m1 -e "$2" "$work/$1/calls" | cut -d: -f1 || echo 0; }
  last() { { grep -n -e "$2" "$work/$1/calls" || echo 0; } | tail -n1 | cut -d: -f1; }

  # 1. A full run: every tunnel deleted through its node's agent once, after the controller
  # stopped; agents deleted; each node cleaned by a pod of the agent's image; the rest deleted.
  fake full
  run_uninstall full || { cat "$work/full/out" >&2; fail "uninstall.sh failed on the fake cluster"; }
  [ ! -s "$work/full/violations" ] || { cat "$work/full/violations" >&2; fail "uninstall.sh: out of order"; }
  [ ! -s "$work/full/tunnels/node1" ] && [ ! -s "$work/full/tunnels/node2" ] ||
    fail "uninstall.sh left tunnels: $(cat "$work/full/tunnels/"*)"
  grep -q 'delete "$name" || exit; done sh gre1 mp1$' "$work/full/calls" ||
    fail "node1's tunnels were not deleted through its agent"
  [ "$(grep -c ' delete "$name"' "$work/full/calls")" = 2 ] || fail "want one delete exec per node"
  local scale agents_deleted cleanup kustomize
  scale=$(first full 'scale deployment/tunnel-controller --replicas=0')
  agents_deleted=$(first full 'delete daemonset tunnel-agent')
  cleanup=$(first full 'create -f -')
  kustomize=$(first full '^delete -k ')
  [ "$scale" -gt 0 ] && [ "$scale" -lt "$(first full ' delete "$name"')" ] &&
    [ "$(last full ' delete "$name"')" -lt "$agents_deleted" ] && [ "$agents_deleted" -lt "$cleanup" ] &&
    [ "$cleanup" -lt "$kustomize" ] || { cat "$work/full/calls" >&2; fail "uninstall.sh: steps out of order"; }
  grep -v -e '^-n tunnel-system ' -e '^get namespace tunnel-system$' -e '^delete -k ' "$work/full/calls" |
    grep . && fail "calls outside the namespace"
  ls "$work"/full/cleanup-*.json >/dev/null 2>&1 || fail "no cleanup pod"
  NODE_PATH=$TOOLS_DIR/node_modules node "$HERE/validate_manifests.cjs" "$work"/full/cleanup-*.json
  [ "$(jq -r '.spec.nodeName' "$work"/full/cleanup-*.json | sort | tr '\n' ' ')" = "node1 node2 " ] ||
    fail "want one cleanup pod on each node"
  jq -e -s 'all(.[]; .spec.containers[0].image == "registry.example.com/tunnel-agent:0.2.0"
    and .spec.containers[0].securityContext.capabilities.drop == ["ALL"]
    and .spec.securityContext.seccompProfile.type == "RuntimeDefault"
    and ([.spec.volumes[].hostPath.path] == ["/var/lib/tunnel-agent", "/var/lib/kubelet/seccomp/profiles"]))' \
    "$work"/full/cleanup-*.json >/dev/null || fail "the cleanup pods: image, privileges or host paths"
  # What the cleanup pod runs, on directories standing for the node's: the state directory's
  # content goes (dot files and subdirectories too), the directory stays, and so does any
  # other seccomp profile.
  local node=$work/node cmd
  mkdir -p "$node/state/sub" "$node/profiles"
  touch "$node/state/tunnels.state" "$node/state/.hidden" "$node/state/sub/x" \
    "$node/profiles/tunnel-agent.json" "$node/profiles/other.json"
  cmd=$(jq -r '.spec.containers[0].command[2]' "$work/full/cleanup-0.json")
  cmd=$(echo "$cmd" | sed -e "s#/state#$node/state#g" -e "s#/seccomp-profiles#$node/profiles#g")
  # Run here only if every path it names is under the stand-in directory.
  ! grep -oE '(^| )/[^ ]*' <<<"$cmd" | grep -v "^ *$node/" || fail "the cleanup command names other paths: $cmd"
  sh -c "$cmd" || fail "the cleanup command failed: $cmd"
  [ -d "$node/state" ] && [ -z "$(ls -A "$node/state")" ] || fail "the cleanup command left $(ls -A "$node/state")"
  [ ! -e "$node/profiles/tunnel-agent.json" ] && [ -e "$node/profiles/other.json" ] ||
    fail "the cleanup command must remove tunnel-agent.json and only it"
  echo "uninstall: full run on a fake cluster: controller stopped, 3 tunnels deleted, agents deleted, 2 nodes cleaned, the rest deleted"

  # 2. --dry-run changes nothing, and says what it would delete.
  fake dry
  run_uninstall dry --dry-run || { cat "$work/dry/out" >&2; fail "uninstall.sh --dry-run failed"; }
  grep -E ' (scale|create|delete) | delete "\$name"' "$work/dry/calls" && fail "--dry-run changed something"
  [ "$(cat "$work/dry/tunnels/node1" "$work/dry/tunnels/node2" | wc -l)" = 3 ] || fail "--dry-run deleted tunnels"
  grep -q 'dry-run: .* delete "$name" || exit; done sh gre1 mp1' "$work/dry/out" ||
    { cat "$work/dry/out" >&2; fail "--dry-run does not say which tunnels it would delete"; }
  echo "uninstall --dry-run: no change, the deletes printed"

  # 3. An agent refuses a delete: nothing else is removed.
  fake refused
  if FAKE_FAIL_DELETE=ipip1 run_uninstall refused; then fail "uninstall.sh succeeded with a tunnel left"; fi
  grep -E 'delete daemonset|create -f|^delete -k|delete secret' "$work/refused/calls" &&
    fail "uninstall.sh went on after a node's tunnels were not deleted"
  grep -q 'not all deleted' "$work/refused/out" || { cat "$work/refused/out" >&2; fail "no word on the node left"; }
  # A tunnel that is there again after its delete (another client made it) stops it too.
  fake remade
  if FAKE_REMADE=mp1 run_uninstall remade; then fail "uninstall.sh succeeded with a tunnel made again"; fi
  grep -q 'tunnels left after deleting: mp1' "$work/remade/out" && ! grep -q 'delete daemonset' "$work/remade/calls" ||
    { cat "$work/remade/out" >&2; fail "uninstall.sh did not see the tunnel made again"; }
  # ... and with --force it goes on, saying what stays.
  fake forced
  FAKE_FAIL_DELETE=ipip1 run_uninstall forced --force || fail "uninstall.sh --force failed"
  grep -q 'devices stay' "$work/forced/out" && grep -q '^delete -k ' "$work/forced/calls" || fail "--force did not finish"
  echo "uninstall: a refused delete stops it before anything else goes; --force goes on and says so"

  # 4. Another namespace, and an install without the seccomp component: nothing touches
  # tunnel-system nor kubelet's seccomp directory.
  fake other
  FAKE_NAMESPACE=net-tunnels FAKE_PROFILES='' run_uninstall other -n net-tunnels ||
    { cat "$work/other/out" >&2; fail "uninstall.sh -n net-tunnels failed"; }
  grep -q tunnel-system "$work/other/calls" && fail "-n net-tunnels: calls in tunnel-system"
  jq -e -s 'all(.[]; [.spec.volumes[].name] == ["state"] and (.spec.containers[0].command[2] | contains("seccomp") | not))' \
    "$work"/other/cleanup-*.json >/dev/null || fail "without the seccomp component the cleanup touches kubelet's directory"
  # 5. Nothing installed: nothing done.
  fake none
  FAKE_NAMESPACE=elsewhere run_uninstall none || fail "uninstall.sh failed with nothing installed"
  [ "$(wc -l <"$work/none/calls")" = 1 ] || fail "uninstall.sh acted without a namespace"
  echo "uninstall: -n NS and no seccomp component handled; no namespace, nothing done"
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
  # One copy of the profile: the component deploy/seccomp makes its ConfigMap from this file,
  # and no other seccomp profile that allows io_uring lies in the repository.
  local copies
  copies=$(cd "$SOURCE_DIR" && grep -rl --include='*.json' --exclude-dir=build --exclude-dir=.git \
    --exclude-dir=node_modules -e '"io_uring_setup"' . | sort)
  [ "$copies" = "./deploy/seccomp/tunnel-agent.json" ] || fail "profiles allowing io_uring: $copies; want only deploy/seccomp/tunnel-agent.json"
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
  yamllint | kubernetes | kustomize | prometheus | grafana | metrics | uninstall | systemd | \
    systemd_sandbox | seccomp | seccomp_agent | dockerfile)
    "check_$1"
    ;;
  *) fail "usage: $0 yamllint|kubernetes|kustomize|prometheus|grafana|metrics|uninstall|systemd|systemd_sandbox|seccomp|seccomp_agent|dockerfile" ;;
esac
echo "deploy.$1: passed"
