#!/bin/bash
# Least privilege for a fleet's agents in etcd: each node's agent may read and write its own
# registration key and nothing else.
#
#   deploy/etcd/roles.sh [--password-dir DIR] [--enable-auth ROOT_PASSWORD_FILE] FLEET NODE...
#
# For each NODE, a role node-NODE with readwrite on exactly /tunnel-agent/FLEET/nodes/NODE (the
# key alone, not a prefix: node n1 must not write n10's key), and a user node-NODE holding that
# role: the agent's --fleet_etcd_user, or the CN of its client certificate with etcd's
# --client-cert-auth. Leases need no permission; revoking one needs write on its keys, which the
# role gives.
#
# And for the fleet's controllers, a role and user tunnel-controller-FLEET (tunnel-controller's
# --etcd_user): read on the fleet's keys (/tunnel-agent/FLEET/, the registrations among them),
# readwrite on the description (fleet set) and on the election's keys
# (/tunnel-agent/FLEET/controller/), nothing on any other fleet's.
#
# Options:
#   --password-dir DIR   users get a password, DIR/NODE.password (the agent's
#                        --fleet_etcd_password_file) and DIR/tunnel-controller-FLEET.password
#                        (the controller's --etcd_password_file): read when the file exists,
#                        else made (random, mode 0600). Without it users have no password:
#                        they authenticate by client certificate only.
#   --enable-auth FILE   also enable etcd's auth: a user root holding role root, its password
#                        read from FILE, then `etcdctl auth enable`. Off by default: enabling
#                        auth locks every client without credentials out of the whole cluster,
#                        so it is never done implicitly.
#
# etcdctl reaches etcd and authenticates as it always does, from its environment:
# ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY, and ETCDCTL_USER=root:PASSWORD
# once auth is on. Idempotent: what exists is kept (a user's existing password is never changed),
# permissions and roles granted again are no change; every change is printed before it is made.
# Two fleets on one etcd share user and role names: give their nodes different names.
#
# Exit status: 0 done, 1 bad arguments, 2 etcdctl failed.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 1
}
die() { echo "roles.sh: $*" >&2; exit 1; }

PASSWORD_DIR=
ROOT_PASSWORD_FILE=
while [ $# -gt 0 ]; do
  case $1 in
    --password-dir) [ $# -ge 2 ] || die "--password-dir needs a directory"; PASSWORD_DIR=$2; shift 2 ;;
    --password-dir=*) PASSWORD_DIR=${1#*=}; shift ;;
    --enable-auth) [ $# -ge 2 ] || die "--enable-auth needs the root password file"; ROOT_PASSWORD_FILE=$2; shift 2 ;;
    --enable-auth=*) ROOT_PASSWORD_FILE=${1#*=}; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) die "unknown option $1 (--help lists them)" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "want FLEET NODE... (--help says more)"
FLEET=$1; shift
NODES=("$@")

# The agent's own rules for the key's segments (agent/fleet_registration.h).
[[ $FLEET =~ ^[a-z0-9._-]{1,63}$ && $FLEET != . && $FLEET != .. ]] ||
  die "fleet name '$FLEET': want 1-63 of [a-z0-9-_.]"
for node in "${NODES[@]}"; do
  [[ $node =~ ^[A-Za-z0-9._-]{1,253}$ && $node != . && $node != .. ]] ||
    die "node name '$node': want 1-253 of [A-Za-z0-9-_.]"
done
if [ -n "$ROOT_PASSWORD_FILE" ]; then
  if [ ! -r "$ROOT_PASSWORD_FILE" ] || [ ! -s "$ROOT_PASSWORD_FILE" ]; then
    die "--enable-auth $ROOT_PASSWORD_FILE: cannot be read, or empty"
  fi
fi
if [ -n "$PASSWORD_DIR" ]; then
  (umask 077 && mkdir -p "$PASSWORD_DIR") || die "--password-dir $PASSWORD_DIR: cannot be made"
fi
command -v etcdctl >/dev/null || die "etcdctl not found (Debian: apt-get install etcd-client)"
export ETCDCTL_API=3

# failed COMMAND OUTPUT: says why etcdctl failed (its warning lines left out), and exits 2.
failed() {
  local hint=
  grep -q "user name is empty" <<<"$2" &&
    hint=" (etcd's auth is on: give the root user's credentials, ETCDCTL_USER=root:PASSWORD)"
  echo "roles.sh: etcdctl $1: $(grep -v '"level":"warn"' <<<"$2")$hint" >&2
  exit 2
}
# run ARGS...: prints the etcdctl command (never a password: those go on stdin), runs it.
run() {
  echo "+ etcdctl $*"
  local out
  out=$(etcdctl "$@" 2>&1) || failed "$*" "$out"
}
# exists KIND NAME: whether the role or user exists (anything but "not found" is a failure).
exists() {
  local out
  if out=$(etcdctl "$1" get "$2" 2>&1 </dev/null); then return 0; fi
  grep -q "not found" <<<"$out" && return 1
  failed "$1 get $2" "$out"
}
# add_user NAME [PASSWORD_FILE]: the user, with that password or none, unless it exists.
add_user() {
  local name=$1 file=${2:-}
  if exists user "$name"; then
    echo "= user $name exists (its password is left as it is)"
  elif [ -n "$file" ]; then
    run user add "$name" --interactive=false <"$file"
  else
    run user add "$name" --no-password </dev/null
  fi
}

# password_of NAME: DIR/NAME.password, made (random, mode 0600) when missing; "" without a DIR.
password_of() {
  [ -n "$PASSWORD_DIR" ] || return 0
  local file=$PASSWORD_DIR/$1.password
  if [ ! -s "$file" ]; then
    echo "+ a random password into $file" >&2
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$file")
  fi
  echo "$file"
}

for node in "${NODES[@]}"; do
  name=node-$node
  key=/tunnel-agent/$FLEET/nodes/$node
  if exists role "$name"; then
    echo "= role $name exists"
  else
    run role add "$name" </dev/null
  fi
  run role grant-permission "$name" readwrite "$key" </dev/null
  add_user "$name" "$(password_of "$node")"
  run user grant-role "$name" "$name" </dev/null
done

controller=tunnel-controller-$FLEET
prefix=/tunnel-agent/$FLEET/
if exists role "$controller"; then
  echo "= role $controller exists"
else
  run role add "$controller" </dev/null
fi
run role grant-permission "$controller" read "$prefix" --prefix=true </dev/null
run role grant-permission "$controller" readwrite "${prefix}description" </dev/null
run role grant-permission "$controller" readwrite "${prefix}controller/" --prefix=true </dev/null
add_user "$controller" "$(password_of "$controller")"
run user grant-role "$controller" "$controller" </dev/null

if [ -n "$ROOT_PASSWORD_FILE" ]; then
  add_user root "$ROOT_PASSWORD_FILE"
  run user grant-role root root </dev/null
  run auth enable </dev/null
else
  echo "note: etcd enforces these roles only once its auth is enabled (--enable-auth FILE, or" \
    "etcdctl auth enable with a root user)"
fi
