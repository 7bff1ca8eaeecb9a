#!/bin/bash
# Removes tunnel-agent from a cluster, devices and node state included.
#
#   deploy/kubernetes/uninstall.sh [--namespace NS] [--kustomization DIR] [--dry-run] [--force]
#
# `kubectl delete -k` alone leaves the agents' work on the nodes: the agent makes its TUN/TAP
# devices persistent (TUNSETPERSIST) and runs with --keep_devices, so that a restart or an
# upgrade finds them again, and keeps its state (the tunnels it restores at start) in the
# host directory /var/lib/tunnel-agent. So, in this order:
#   1. the controller is scaled to 0 and waited for: it would make the tunnels again on its
#      next pass;
#   2. on each node, through that node's agent pod, every tunnel is deleted with the agent's
#      own API (`tunnelctl delete`, which removes the device, its addresses and routes; a
#      multipoint tunnel's peers go with it), then the agent is asked again that none is left;
#   3. the DaemonSet is deleted and its pods waited for (a running agent holds its state
#      directory's lock and writes to it);
#   4. on each of those nodes a short-lived pod (the agent's image, RuntimeDefault, no
#      capabilities) empties the state directory and removes the seccomp profile that the
#      component deploy/seccomp installed, if the DaemonSet used it;
#   5. `kubectl delete -k` deletes the rest (the namespace with it when it is the kustomization's),
#      and the token Secret, which no kustomization holds.
# A node whose tunnels could not all be deleted stops the script before step 3 (nothing is
# deleted yet: fix it and run the script again); with --force it goes on and prints what stays
# on that node. Running it again after a partial run is safe: what is gone is skipped.
#
# Options:
#   -n, --namespace NS       the set's namespace (default: tunnel-system)
#   -k, --kustomization DIR  what `kubectl apply -k` installed (default: this directory; give
#                            your overlay if you installed one)
#   --dry-run                change nothing: list what would be deleted (it still lists each
#                            agent's tunnels through kubectl exec, which changes nothing)
#   --force                  go on past nodes whose tunnels could not be deleted
#   --tunnelctl-args ARGS    how tunnelctl reaches the agent inside its pod (default:
#                            --agent="$NODE_IP" --token_file=/etc/tunnel-agent/token/token,
#                            expanded by the pod's shell; add --tls_ca=... for an agent on TLS)
#   --timeout SECONDS        how long to wait for pods to go or cleanups to finish (default: 180)
# Environment: KUBECTL (default kubectl), e.g. "kubectl --context prod".
# Needs bash 4 or later, kubectl and jq where it runs; the agent's image on the nodes.
set -euo pipefail

namespace=tunnel-system
kustomization=$(cd "$(dirname "$0")" && pwd)
dry_run=false
force=false
# Expanded by the shell in the agent's pod, where NODE_IP is the node's address.
# shellcheck disable=SC2016
tunnelctl_args='--agent="$NODE_IP" --token_file=/etc/tunnel-agent/token/token'
timeout=180
read -r -a kubectl <<<"${KUBECTL:-kubectl}"

usage() {
  sed -n '/^#   deploy/p; /^# Options:/,/^# Needs/p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    -n | --namespace) namespace=${2:?}; shift 2 ;;
    --namespace=*) namespace=${1#*=}; shift ;;
    -k | --kustomization) kustomization=${2:?}; shift 2 ;;
    --kustomization=*) kustomization=${1#*=}; shift ;;
    --dry-run) dry_run=true; shift ;;
    --force) force=true; shift ;;
    --tunnelctl-args) tunnelctl_args=${2:?}; shift 2 ;;
    --tunnelctl-args=*) tunnelctl_args=${1#*=}; shift ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --timeout=*) timeout=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "uninstall: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $timeout =~ ^[0-9]+$ ]] || { echo "uninstall: --timeout takes seconds" >&2; exit 2; }

log() { echo "uninstall: $*"; }
die() { echo "uninstall: $*" >&2; exit 1; }

# kubectl in the set's namespace.
k() { "${kubectl[@]}" -n "$namespace" "$@"; }
# A change: printed, and made unless --dry-run.
change() {
  if $dry_run; then
    echo "dry-run: ${kubectl[*]} -n $namespace $*"
  else
    k "$@"
  fi
}

# Waits until no pod matches the selector (kubectl wait --for=delete fails when none is left
# to wait for, as after a scale to 0 that was quick).
wait_gone() {
  local waited
  for ((waited = 0; waited < timeout; waited += 2)); do
    [ -z "$(k get pods -l "$1" -o name)" ] && return 0
    sleep 2
  done
  die "pods $1 still there after ${timeout}s"
}

command -v "${kubectl[0]}" >/dev/null || die "${kubectl[0]} not found"
command -v jq >/dev/null || die "jq not found (it reads tunnelctl's JSON)"
[ -f "$kustomization/kustomization.yaml" ] || die "$kustomization has no kustomization.yaml"

if ! "${kubectl[@]}" get namespace "$namespace" >/dev/null 2>&1; then
  log "namespace $namespace does not exist: nothing to remove"
  exit 0
fi
$dry_run && log "dry run: nothing is changed"

# ---- 1. the controller ----------------------------------------------------------------------
controller_selector=app.kubernetes.io/name=tunnel-controller
if [ -n "$(k get deployment tunnel-controller --ignore-not-found -o name)" ]; then
  log "stopping the controller, so that it does not make the tunnels again"
  change scale deployment/tunnel-controller --replicas=0
  $dry_run || wait_gone "$controller_selector"
fi

# ---- 2. every tunnel, through each node's agent ----------------------------------------------
# One running agent pod per node: during a rolling update a node has two, which both reach
# the same agent (the one that holds the node's API socket).
agent_selector=app.kubernetes.io/name=tunnel-agent,app.kubernetes.io/component=agent
declare -A pod_of=()
nodes=()
while read -r pod node phase; do
  [ -n "$pod" ] || continue
  [ "$phase" = Running ] || { log "pod $pod on $node is $phase: its node is not cleaned through it"; continue; }
  [ -z "${pod_of[$node]:-}" ] || continue
  pod_of[$node]=$pod
  nodes+=("$node")
done < <(k get pods -l "$agent_selector" \
  -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.nodeName}{" "}{.status.phase}{"\n"}{end}')

# The names of the tunnels of the agent behind POD, one a line.
list_tunnels() {
  k exec "$1" -c tunnel-agent -- sh -c "exec tunnelctl $tunnelctl_args -o json list" |
    jq -r '.tunnels[]?.name'
}

failed=()
for node in "${nodes[@]}"; do
  pod=${pod_of[$node]}
  if ! names=$(list_tunnels "$pod"); then
    log "node $node: cannot list the tunnels through $pod"
    failed+=("$node")
    continue
  fi
  if [ -z "$names" ]; then
    log "node $node: no tunnels"
    continue
  fi
  mapfile -t tunnels <<<"$names"
  log "node $node: deleting ${#tunnels[@]} tunnels: ${tunnels[*]}"
  # One exec for the node's tunnels; the names are the shell's arguments, never its text.
  if ! change exec "$pod" -c tunnel-agent -- sh -c \
    "for name do tunnelctl $tunnelctl_args delete \"\$name\" || exit; done" sh "${tunnels[@]}"; then
    log "node $node: deleting the tunnels failed"
    failed+=("$node")
    continue
  fi
  if ! $dry_run; then
    left=$(list_tunnels "$pod") || left="(cannot list)"
    if [ -n "$left" ]; then
      log "node $node: tunnels left after deleting: ${left//$'\n'/ }"
      failed+=("$node")
    fi
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  if ! $force; then
    die "the tunnels of ${failed[*]} are not all deleted; nothing else was removed (the" \
      "controller is stopped: scale it back to 1 to keep the set). Fix that and run this again," \
      "or pass --force to remove the rest and leave their devices"
  fi
  log "--force: going on; on ${failed[*]} the devices stay: on the node," \
    "ip -d link show | grep -B2 'alias tunnel-agent' names them, ip link delete NAME removes one"
fi

# ---- 3. the agents ---------------------------------------------------------------------------
# What the cleanup needs from the DaemonSet, read before it goes: the image and the host
# directories of its volumes.
image='' state_dir='' profiles_dir=''
if [ -n "$(k get daemonset tunnel-agent --ignore-not-found -o name)" ]; then
  image=$(k get daemonset tunnel-agent -o jsonpath='{.spec.template.spec.containers[?(@.name=="tunnel-agent")].image}')
  state_dir=$(k get daemonset tunnel-agent -o jsonpath='{.spec.template.spec.volumes[?(@.name=="state")].hostPath.path}')
  profiles_dir=$(k get daemonset tunnel-agent -o jsonpath='{.spec.template.spec.volumes[?(@.name=="seccomp-profiles")].hostPath.path}')
  log "deleting the agents (DaemonSet tunnel-agent)"
  change delete daemonset tunnel-agent --wait=true
  $dry_run || wait_gone "$agent_selector"
else
  log "no DaemonSet tunnel-agent: the agents are gone already; state directories are not cleaned"
fi

# ---- 4. the nodes' state --------------------------------------------------------------------
# A pod on the node, as the agent's own (the namespace allows host paths), that deletes what
# the agent left: the state directory's content and the seccomp profile file.
cleanup_pod() {
  local node=$1
  local script='find /state -mindepth 1 -delete'
  local mounts='[{"name": "state", "mountPath": "/state"}]'
  local volumes
  volumes=$(jq -cn --arg p "$state_dir" '[{name: "state", hostPath: {path: $p, type: "Directory"}}]')
  if [ -n "$profiles_dir" ]; then
    script+=' && rm -f /seccomp-profiles/tunnel-agent.json'
    mounts='[{"name": "state", "mountPath": "/state"}, {"name": "seccomp-profiles", "mountPath": "/seccomp-profiles"}]'
    volumes=$(jq -cn --arg p "$state_dir" --arg s "$profiles_dir" \
      '[{name: "state", hostPath: {path: $p, type: "Directory"}},
        {name: "seccomp-profiles", hostPath: {path: $s, type: "Directory"}}]')
  fi
  jq -n --arg node "$node" --arg image "$image" --arg script "$script" \
    --argjson mounts "$mounts" --argjson volumes "$volumes" '{
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      generateName: "tunnel-agent-cleanup-",
      labels: {"app.kubernetes.io/name": "tunnel-agent-cleanup", "app.kubernetes.io/part-of": "tunnel-agent"}
    },
    spec: {
      nodeName: $node,
      restartPolicy: "Never",
      automountServiceAccountToken: false,
      tolerations: [{operator: "Exists"}],
      securityContext: {seccompProfile: {type: "RuntimeDefault"}},
      containers: [{
        name: "cleanup",
        image: $image,
        command: ["/bin/sh", "-c", $script],
        resources: {requests: {cpu: "10m", memory: "16Mi"}, limits: {cpu: "100m", memory: "32Mi"}},
        securityContext: {
          runAsUser: 0, runAsGroup: 0, runAsNonRoot: false, privileged: false,
          allowPrivilegeEscalation: false, readOnlyRootFilesystem: true,
          capabilities: {drop: ["ALL"]}
        },
        volumeMounts: $mounts
      }],
      volumes: $volumes
    }
  }'
}

if [ -n "$image" ] && [ -n "$state_dir" ]; then
  declare -A cleanup_of=()
  for node in "${nodes[@]}"; do
    log "node $node: emptying $state_dir${profiles_dir:+, removing $profiles_dir/tunnel-agent.json}"
    if $dry_run; then
      echo "dry-run: ${kubectl[*]} -n $namespace create -f - <<< a Pod on $node"
      continue
    fi
    name=$(cleanup_pod "$node" | k create -f - -o name)
    cleanup_of[$node]=${name#pod/}
  done
  cleanup_failed=()
  for node in "${!cleanup_of[@]}"; do
    pod=${cleanup_of[$node]}
    phase=
    for ((waited = 0; waited < timeout; waited += 2)); do
      phase=$(k get pod "$pod" -o jsonpath='{.status.phase}')
      if [ "$phase" = Succeeded ] || [ "$phase" = Failed ]; then break; fi
      sleep 2
    done
    if [ "$phase" = Succeeded ]; then
      k delete pod "$pod" --wait=false >/dev/null
    else
      log "node $node: the cleanup pod $pod is $phase (kept for kubectl logs/describe)"
      k logs "$pod" 2>/dev/null || true
      cleanup_failed+=("$node")
    fi
  done
  [ ${#cleanup_failed[@]} = 0 ] ||
    die "cleaning ${cleanup_failed[*]} failed: on each node, remove the content of $state_dir by hand" \
      "(the agents and their tunnels are gone already)"
fi

# ---- 5. the rest ------------------------------------------------------------------------------
log "deleting the kustomization $kustomization and the Secret tunnel-agent-token"
change delete secret tunnel-agent-token --ignore-not-found
if $dry_run; then
  echo "dry-run: ${kubectl[*]} delete -k $kustomization --ignore-not-found"
else
  "${kubectl[@]}" delete -k "$kustomization" --ignore-not-found
fi
if $dry_run; then log "dry run done: nothing was changed"; else log "done"; fi
