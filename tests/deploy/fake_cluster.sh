#!/bin/bash
# A stand-in for kubectl (and, inside the "pods", for tunnelctl) for deploy_test.sh uninstall:
# a cluster of two nodes with the set of deploy/kubernetes installed, whose state is files in
# $FAKE_CLUSTER. Linked as .../kubectl and .../tunnelctl; the name it is called by says which.
#
#   $FAKE_CLUSTER/calls           every kubectl call, one a line ("-n NS verb ...")
#   $FAKE_CLUSTER/tunnels/NODE    the tunnels of NODE's agent, one name a line
#   $FAKE_CLUSTER/cleanup-N.json  the Pods created with `create -f -`
#   $FAKE_CLUSTER/violations      what a real cluster would have done wrong (tunnels deleted
#                                 while the controller runs, state cleaned while agents run, ...)
# Environment: FAKE_NAMESPACE (the namespace that exists, default tunnel-system),
# FAKE_FAIL_DELETE (a tunnel whose delete the agent refuses), FAKE_REMADE (a tunnel that is
# there again right after its delete), FAKE_PROFILES (the DaemonSet's
# seccomp-profiles host path; empty: installed without the seccomp component).
# Any call it does not know fails with exit 3, so the test sees calls it did not expect.
set -euo pipefail
state=${FAKE_CLUSTER:?}
namespace=${FAKE_NAMESPACE:-tunnel-system}

violation() { echo "$*" >>"$state/violations"; }

# The node of an agent pod: two pods on node2, as during a rolling update.
node_of() {
  case "$1" in
    tunnel-agent-aaaaa) echo node1 ;;
    tunnel-agent-bbbbb | tunnel-agent-ccccc) echo node2 ;;
    *) return 1 ;;
  esac
}

fake_tunnelctl() {
  local agent='' token='' json=false
  while [ $# -gt 0 ]; do
    case "$1" in
      --agent=*) agent=${1#*=} ;;
      --token_file=*) token=${1#*=} ;;
      -o) [ "$2" = json ] && json=true; shift ;;
      --*) echo "tunnelctl: unknown flag $1" >&2; exit 1 ;;
      *) break ;;
    esac
    shift
  done
  # The recipe of docs/runbooks.md: the node's address and the mounted token.
  [ "$agent" = "$NODE_IP" ] || { echo "tunnelctl: --agent=$agent, not the node's $NODE_IP" >&2; exit 2; }
  [ "$token" = /etc/tunnel-agent/token/token ] || { echo "tunnelctl: wrong token file $token" >&2; exit 2; }
  local file=$state/tunnels/$FAKE_NODE
  case "${1:-}" in
    list)
      $json || { echo "tunnelctl: want -o json" >&2; exit 1; }
      # As protobuf's JSON printer: no "tunnels" key at all when there is none.
      jq -R -s 'split("\n") | map(select(. != "") | {name: ., mode: "TUNNEL_MODE_GRE"})
                | if length == 0 then {} else {tunnels: .} end' "$file"
      ;;
    delete)
      [ $# = 2 ] || { echo "tunnelctl: delete takes one name" >&2; exit 1; }
      [ -e "$state/controller-stopped" ] || violation "tunnel $2 deleted while the controller runs"
      if [ "$2" = "${FAKE_FAIL_DELETE:-}" ]; then
        echo "tunnelctl: DeleteTunnel: INTERNAL: the device is busy" >&2
        exit 2
      fi
      grep -qxF -- "$2" "$file" || { echo "tunnelctl: DeleteTunnel: NOT_FOUND: $2" >&2; exit 2; }
      # Deleted, and made again at once by someone else (another client of the API).
      [ "$2" != "${FAKE_REMADE:-}" ] || { echo "deleted $2"; return 0; }
      grep -vxF -- "$2" "$file" >"$file.new" || true
      mv "$file.new" "$file"
      echo "deleted $2"
      ;;
    *) echo "tunnelctl: unexpected command $*" >&2; exit 1 ;;
  esac
}

fake_kubectl() {
  echo "$*" >>"$state/calls"
  local ns=''
  if [ "${1:-}" = -n ]; then
    ns=$2
    shift 2
  fi
  if [ -n "$ns" ] && [ "$ns" != "$namespace" ]; then
    echo "Error from server (NotFound): namespaces \"$ns\" not found" >&2
    exit 1
  fi
  case "$*" in
    "get namespace $namespace")
      echo "namespace/$namespace"
      ;;
    "get namespace "*)
      exit 1
      ;;
    "get deployment tunnel-controller --ignore-not-found -o name")
      echo deployment.apps/tunnel-controller
      ;;
    "scale deployment/tunnel-controller --replicas=0")
      touch "$state/controller-stopped"
      echo "deployment.apps/tunnel-controller scaled"
      ;;
    "get pods -l app.kubernetes.io/name=tunnel-controller -o name")
      [ -e "$state/controller-stopped" ] || echo pod/tunnel-controller-xyz
      ;;
    "get pods -l app.kubernetes.io/name=tunnel-agent,app.kubernetes.io/component=agent -o name")
      [ -e "$state/agents-deleted" ] || printf 'pod/tunnel-agent-%s\n' aaaaa bbbbb ccccc
      ;;
    "get pods -l app.kubernetes.io/name=tunnel-agent,app.kubernetes.io/component=agent -o jsonpath="*)
      [ -e "$state/agents-deleted" ] ||
        printf '%s\n' "tunnel-agent-aaaaa node1 Running" "tunnel-agent-bbbbb node2 Running" \
          "tunnel-agent-ccccc node2 Running"
      ;;
    "exec "*" -c tunnel-agent -- "*)
      local pod=$2 node
      node=$(node_of "$pod") || { echo "Error from server (NotFound): pods \"$pod\" not found" >&2; exit 1; }
      [ ! -e "$state/agents-deleted" ] || { echo "pod $pod is gone" >&2; exit 1; }
      shift 5
      # The command as the pod's shell runs it, with tunnelctl this script again.
      (cd "$state" && NODE_IP=198.18.0.${node#node} FAKE_NODE=$node PATH=$state/bin:/usr/bin:/bin "$@")
      ;;
    "get daemonset tunnel-agent --ignore-not-found -o name")
      [ -e "$state/agents-deleted" ] || echo daemonset.apps/tunnel-agent
      ;;
    "get daemonset tunnel-agent -o jsonpath="*"containers"*".image}")
      echo registry.example.com/tunnel-agent:0.2.0
      ;;
    "get daemonset tunnel-agent -o jsonpath="*'volumes[?(@.name=="state")].hostPath.path}')
      echo /var/lib/tunnel-agent
      ;;
    "get daemonset tunnel-agent -o jsonpath="*'volumes[?(@.name=="seccomp-profiles")].hostPath.path}')
      echo "${FAKE_PROFILES-/var/lib/kubelet/seccomp/profiles}"
      ;;
    "delete daemonset tunnel-agent --wait=true")
      [ -e "$state/controller-stopped" ] || violation "agents deleted while the controller runs"
      cat "$state"/tunnels/* | grep -q . && violation "agents deleted with tunnels left: $(cat "$state"/tunnels/*)"
      touch "$state/agents-deleted"
      echo 'daemonset.apps "tunnel-agent" deleted'
      ;;
    "create -f - -o name")
      [ -e "$state/agents-deleted" ] || violation "a cleanup pod created while the agents run"
      local n
      n=$(find "$state" -maxdepth 1 -name 'cleanup-*.json' | wc -l)
      cat >"$state/cleanup-$n.json"
      jq -e '.kind == "Pod"' "$state/cleanup-$n.json" >/dev/null || exit 1
      echo "pod/tunnel-agent-cleanup-$n"
      ;;
    "get pod tunnel-agent-cleanup-"*" -o jsonpath={.status.phase}")
      echo Succeeded
      ;;
    "delete pod tunnel-agent-cleanup-"*" --wait=false")
      echo "pod deleted"
      ;;
    "delete secret tunnel-agent-token --ignore-not-found")
      echo 'secret "tunnel-agent-token" deleted'
      ;;
    "delete -k "*" --ignore-not-found")
      [ -e "$state/agents-deleted" ] || violation "the kustomization deleted before the agents"
      find "$state" -maxdepth 1 -name 'cleanup-*.json' | grep -q . ||
        violation "the kustomization (and namespace) deleted before the nodes were cleaned"
      touch "$state/kustomization-deleted"
      ;;
    *)
      echo "fake kubectl: unexpected call: kubectl $ns $*" >&2
      exit 3
      ;;
  esac
}

case "$(basename "$0")" in
  tunnelctl) fake_tunnelctl "$@" ;;
  *) fake_kubectl "$@" ;;
esac
