#!/bin/bash
# The agent's gRPC security: who can reach the API. The unix socket (the default listener) is
# 0660: root and --grpc_socket_group may call, other users are refused; plaintext TCP needs a
# bearer token or TLS, loopback included, unless --insecure; off loopback plaintext needs
# --insecure. TLS, mutual TLS, a bearer token (health exempt), bad flags, and a request over
# the 4 MiB limit. Certificates are made for the test with openssl; clients are Debian's
# python3-grpcio (raw protobuf bytes, no generated code) and tunnelctl where it has the flags.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"

PY=/usr/bin/python3  # not `python3` on PATH: that may be an interpreter without grpc
if ! "$PY" -c 'import grpc' 2>/dev/null; then
  echo "SKIP: $PY lacks grpc (apt-get install python3-grpcio)" >&2
  exit 77
fi
command -v openssl >/dev/null || { echo "SKIP: openssl not found (apt-get install openssl)" >&2; exit 77; }

source "$SOURCE_DIR/scripts/lab.sh"
lab_init
lab_add_node A 198.18.0.1
ADDR=198.18.0.1:50051

lab_log "a throwaway CA, server and client certificates"
PKI=$RUN/pki
mkdir -p "$PKI"
(
  cd "$PKI"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  # issue NAME CA SUBJECT EXTENSIONS: NAME.key and NAME.pem signed by CA.pem/CA.key
  issue() {
    openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$3" 2>/dev/null
    printf '%s\n' "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 1 \
      -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  }
  for ca in ca rogue-ca; do
    openssl req -x509 "${ec[@]}" -keyout "$ca.key" -out "$ca.pem" -days 1 \
      -subj "/CN=tunnel-lab $ca" 2>/dev/null
  done
  issue server ca /CN=tunnel-agent \
    "subjectAltName=IP:198.18.0.1,IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
  issue client ca /CN=tunnelctl "extendedKeyUsage=clientAuth"
  issue rogue rogue-ca /CN=intruder "extendedKeyUsage=clientAuth"
)
openssl verify -CAfile "$PKI/ca.pem" "$PKI/server.pem" "$PKI/client.pem" >/dev/null ||
  lab_fail "generated certificates do not verify"
lab_ok "CA, server (IP:198.18.0.1, IP:127.0.0.1, DNS:localhost), client, and a rogue CA's client"
TLS=(--tls_cert="$PKI/server.pem" --tls_key="$PKI/server.key")
printf '  s3cret-token\n\n' >"$RUN/token"

# rpc TARGET METHOD [--ca F] [--cert F --key F] [--token T] [--name-bytes N]
#   METHOD list (ListTunnels), get (GetTunnel of a name N bytes long), health (Health/Check).
#   Prints "OK", "OK SERVING" or "CODE: details"; runs in A's namespace.
cat >"$RUN/rpc.py" <<'EOF'
import argparse, sys
import grpc

p = argparse.ArgumentParser()
p.add_argument("target")
p.add_argument("method", choices=["list", "get", "health"])
p.add_argument("--ca")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--token")
p.add_argument("--name-bytes", type=int, default=8)
a = p.parse_args()
read = lambda f: open(f, "rb").read() if f else None
if a.ca:
    creds = grpc.ssl_channel_credentials(read(a.ca), read(a.key), read(a.cert))
    channel = grpc.secure_channel(a.target, creds)
else:
    channel = grpc.insecure_channel(a.target)
def varint(n):
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out
if a.method == "list":
    path, request = "/tunnelagent.v1.TunnelService/ListTunnels", b""
elif a.method == "get":  # GetTunnelRequest{name: 'x' * n}
    path, request = "/tunnelagent.v1.TunnelService/GetTunnel", b"\x0a" + varint(a.name_bytes) + b"x" * a.name_bytes
else:
    path, request = "/grpc.health.v1.Health/Check", b""
metadata = [("authorization", "Bearer " + a.token)] if a.token is not None else None
call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    response = call(request, timeout=5, metadata=metadata)
except grpc.RpcError as e:
    print(f"{e.code().name}: {e.details()}")
    sys.exit(0)
if a.method == "health":
    print("OK SERVING" if response == b"\x08\x01" else f"OK {response.hex()}")
else:
    print("OK")
EOF
rpc() { lab_exec A "$PY" "$RUN/rpc.py" "$@"; }
# expect WANT RPC-ARGS...: the output of rpc must start with WANT.
expect() {
  local want=$1 out; shift
  # stderr apart: gRPC core logs handshake failures there
  out=$(rpc "$@" 2>"$RUN/rpc.err") || lab_fail "rpc $*: client failed: $(cat "$RUN/rpc.err")"
  case $out in
    "$want"*) ;;
    *) lab_fail "rpc $*: got '$out', want '$want' (stderr: $(cat "$RUN/rpc.err"))" ;;
  esac
  lab_ok "$(printf '%s ' "$@" | sed "s|$PKI/||g; s|$RUN/||g")-> $out"
}
# start_agent FLAGS...: the agent on A in the background; ready when Health/Check answers
# SERVING to the client options in WAIT_ARGS (health needs no token).
WAIT_ARGS=()
start_agent() {
  _lab_spawn_agent A "$@"
  local _
  for _ in $(seq 100); do
    [ "$(rpc "${WAIT_ARGS[@]}" health 2>/dev/null)" = "OK SERVING" ] && return 0
    kill -0 "${LAB_PIDS[A]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$RUN/A.log" >&2
  lab_fail "agent on A did not start with $*"
}
# refused WANT FLAGS...: the agent must exit 1 at once with one line of output containing WANT.
refused() {
  local want=$1 out rc=0; shift
  out=$(lab_run_agent A "$@" 2>&1) || rc=$?
  [ "$rc" = 1 ] || lab_fail "agent with $*: exit $rc, want 1 ($out)"
  grep -qF -- "$want" <<<"$out" || lab_fail "agent with $*: output lacks '$want': $out"
  [ "$(wc -l <<<"$out")" = 1 ] || lab_fail "agent with $*: want one line, got: $out"
  lab_ok "refused ($(sed 's/.* FATAL //' <<<"$out"))"
}

lab_log "plaintext off loopback is refused unless --insecure"
for listen in "$ADDR" 0.0.0.0:50051 "[::]:50051"; do
  refused "refusing to serve plaintext gRPC on $listen, which is not a loopback address or a unix socket: pass --tls_cert and --tls_key to serve TLS, or --insecure to allow plaintext" \
    --grpc_listen="$listen"
done
lab_exec A ip -o link show | grep -qv -e ' lo:' -e ' ul0@' && lab_fail "a refused start left a device behind"
lab_ok "no device left behind"

lab_log "plaintext on loopback is refused without a token, TLS or --insecure"
for listen in 127.0.0.1:50051 "[::1]:50051" localhost:50051; do
  refused "refusing to serve plaintext gRPC on $listen without a bearer token, as every local user could call it: pass --auth_token_file, or --tls_cert and --tls_key, or --insecure to allow it (or listen on a unix: socket)" \
    --grpc_listen="$listen"
done

lab_log "bad security flags"
refused "--tls_cert without --tls_key: pass both" --grpc_listen="$ADDR" --tls_cert="$PKI/server.pem"
refused "--tls_key without --tls_cert: pass both" --grpc_listen="$ADDR" --tls_key="$PKI/server.key"
refused "--tls_client_ca needs TLS: pass --tls_cert and --tls_key too" --tls_client_ca="$PKI/ca.pem"
refused "--tls_cert: cannot read $RUN/nosuch.pem: No such file or directory" \
  --grpc_listen="$ADDR" --tls_cert="$RUN/nosuch.pem" --tls_key="$PKI/server.key"
refused "--tls_cert: $RUN/token holds no PEM certificate" \
  --grpc_listen="$ADDR" --tls_cert="$RUN/token" --tls_key="$PKI/server.key"
refused "--tls_key: $PKI/server.pem holds no unencrypted PEM private key" \
  --grpc_listen="$ADDR" --tls_cert="$PKI/server.pem" --tls_key="$PKI/server.pem"
refused "--tls_client_ca: cannot read $RUN/nosuch.pem" "${TLS[@]}" --tls_client_ca="$RUN/nosuch.pem"
: >"$RUN/empty-token"
refused "--auth_token_file: $RUN/empty-token is empty" --auth_token_file="$RUN/empty-token"
printf ' \n\t\n' >"$RUN/blank-token"
refused "--auth_token_file: $RUN/blank-token is empty" --auth_token_file="$RUN/blank-token"
refused "--auth_token_file: cannot read $RUN/nosuch" --auth_token_file="$RUN/nosuch"
refused "--tls_key: $PKI/client.key is not the private key of the certificate in $PKI/server.pem" \
  --grpc_listen="$ADDR" --tls_cert="$PKI/server.pem" --tls_key="$PKI/client.key"

lab_log "--insecure: plaintext on $ADDR"
lab_start_agent_tcp A "$ADDR" --insecure
expect OK "$ADDR" list
lab_ctl A list >/dev/null || lab_fail "tunnelctl (plaintext) cannot list"
lab_ok "tunnelctl over plaintext TCP lists"
lab_stop_agent A
unset "LAB_ADDRS[A]"

lab_log "--insecure: plaintext on 127.0.0.1 starts"
lab_start_agent_tcp A 127.0.0.1:50051 --insecure
expect OK 127.0.0.1:50051 list
lab_stop_agent A
unset "LAB_ADDRS[A]"

lab_log "a bearer token on 127.0.0.1: plaintext allowed, every call but health needs the token"
WAIT_ARGS=(127.0.0.1:50051)
start_agent --grpc_listen=127.0.0.1:50051 --auth_token_file="$RUN/token"
expect "UNAUTHENTICATED: missing or invalid bearer token" 127.0.0.1:50051 list
expect OK 127.0.0.1:50051 --token s3cret-token list
lab_stop_agent A

lab_log "the unix socket: root and the socket's group may call, other users may not"
# The lab's directory lets every user through, so that the socket's own mode decides.
chmod 0711 "$RUN"
as_user() {  # as_user GID CMD...: as nobody with that group alone
  local gid=$1; shift
  setpriv --reuid=nobody --regid="$gid" --clear-groups "$@"
}
connect_errno() {  # connect_errno GID: what connect(2) to the socket says, as that user
  as_user "$1" "$PY" -c '
import errno, socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(errno.errorcode[e.errno])' "$RUN/A.sock"
}
lab_start_agent A
[ "$(stat -c '%F %a %U:%G' "$RUN/A.sock")" = "socket 660 root:root" ] ||
  lab_fail "socket: $(stat -c '%F %a %U:%G' "$RUN/A.sock")"
lab_ok "socket 660 root:root"
[ "$(connect_errno nogroup)" = EACCES ] || lab_fail "nobody: connect says $(connect_errno nogroup), want EACCES"
rc=0
out=$(as_user nogroup "$BIN_DIR/tunnelctl" --agent="unix:$RUN/A.sock" create evil mode gre \
  remote 198.18.1.2 route 0.0.0.0/1 2>&1) || rc=$?
[ "$rc" != 0 ] && grep -q "Permission denied" <<<"$out" ||
  lab_fail "nobody's tunnelctl create: exit $rc: $out"
lab_ok "nobody is refused: connect EACCES, tunnelctl exit $rc ($(tail -n 1 <<<"$out"))"
lab_ctl A list >/dev/null || lab_fail "root cannot list"
[ -z "$(lab_ctl A list -o json | jq -r '.tunnels[]?.name')" ] || lab_fail "a tunnel was created"
lab_ok "root lists, and nothing was created"
# Control: the mode is what refused nobody (made 0666 by hand, nobody gets in).
chmod 0666 "$RUN/A.sock"
as_user nogroup "$BIN_DIR/tunnelctl" --agent="unix:$RUN/A.sock" list >/dev/null ||
  lab_fail "nobody cannot list even on a 0666 socket: the refusal above proves nothing"
lab_ok "control: with the socket made 0666 by hand, nobody lists"
lab_stop_agent A

lab_log "--grpc_socket_group lets that group in, and only it"
lab_start_agent A --grpc_socket_group=nogroup
[ "$(stat -c '%a %U:%G' "$RUN/A.sock")" = "660 root:nogroup" ] ||
  lab_fail "socket: $(stat -c '%a %U:%G' "$RUN/A.sock")"
as_user nogroup "$BIN_DIR/tunnelctl" --agent="unix:$RUN/A.sock" list >/dev/null ||
  lab_fail "a member of nogroup cannot list"
lab_ok "a member of the socket group lists"
[ "$(connect_errno 12345)" = EACCES ] || lab_fail "gid 12345: connect says $(connect_errno 12345)"
lab_ok "a user of another group is refused (EACCES)"
lab_stop_agent A
refused "--grpc_socket_group=no-such-group-here: no group named \"no-such-group-here\"" \
  --grpc_socket_group=no-such-group-here
refused "--grpc_socket_group needs a unix:/path --grpc_listen, not $ADDR" \
  --grpc_listen="$ADDR" --insecure --grpc_socket_group=nogroup

lab_log "TLS on $ADDR"
WAIT_ARGS=("$ADDR" --ca "$PKI/ca.pem")
start_agent --grpc_listen="$ADDR" "${TLS[@]}"
grep -q "grpc: serving .* on $ADDR (TLS, no bearer token)" "$RUN/A.log" || lab_fail "no TLS line in the log"
expect OK "$ADDR" --ca "$PKI/ca.pem" list
expect OK "$ADDR" --ca "$PKI/ca.pem" --cert "$PKI/client.pem" --key "$PKI/client.key" list
expect UNAVAILABLE "$ADDR" list                                 # plaintext client
expect UNAVAILABLE "$ADDR" --ca "$PKI/rogue-ca.pem" list        # server cert from another CA
lab_stop_agent A

lab_log "mutual TLS: client certificates signed by the CA are required"
WAIT_ARGS=("$ADDR" --ca "$PKI/ca.pem" --cert "$PKI/client.pem" --key "$PKI/client.key")
start_agent --grpc_listen="$ADDR" "${TLS[@]}" --tls_client_ca="$PKI/ca.pem"
grep -q "(TLS, client certificates required, no bearer token)" "$RUN/A.log" || lab_fail "no mTLS line in the log"
expect UNAVAILABLE "$ADDR" --ca "$PKI/ca.pem" list              # no client certificate
expect UNAVAILABLE "$ADDR" --ca "$PKI/ca.pem" --cert "$PKI/rogue.pem" --key "$PKI/rogue.key" list
expect UNAVAILABLE "$ADDR" list
expect OK "$ADDR" --ca "$PKI/ca.pem" --cert "$PKI/client.pem" --key "$PKI/client.key" list
if "$BIN_DIR/tunnelctl" help 2>&1 | grep -q -- --tls_ca; then
  mtls=(--tls_ca="$PKI/ca.pem" --tls_cert="$PKI/client.pem" --tls_key="$PKI/client.key")
  lab_exec A "$BIN_DIR/tunnelctl" --agent="$ADDR" "${mtls[@]}" list >/dev/null ||
    lab_fail "tunnelctl with a client certificate cannot list"
  lab_ok "tunnelctl --tls_ca --tls_cert --tls_key lists"
  rc=0
  out=$(lab_exec A "$BIN_DIR/tunnelctl" --agent="$ADDR" --tls_ca="$PKI/ca.pem" list 2>&1) || rc=$?
  [ "$rc" = 2 ] || lab_fail "tunnelctl without a client certificate: exit $rc, want 2 ($out)"
  lab_ok "tunnelctl without a client certificate -> exit 2: $out"
else
  lab_log "(tunnelctl has no --tls_ca yet: TLS checked with python3-grpcio only)"
fi
lab_stop_agent A

lab_log "bearer token on a unix socket (plaintext)"
SOCK=unix:$RUN/A.sock
WAIT_ARGS=("$SOCK")
rm -f "$RUN/A.sock"
start_agent --auth_token_file="$RUN/token"   # ready: health answers without a token
grep -q "(plaintext, bearer token required (health exempt))" "$RUN/A.log" || lab_fail "no token line in the log"
# gRPC's own listener here (it enforces the token): the socket is restricted all the same.
[ "$(stat -c '%F %a %U:%G' "$RUN/A.sock")" = "socket 660 root:root" ] ||
  lab_fail "socket with a token: $(stat -c '%F %a %U:%G' "$RUN/A.sock")"
[ "$(connect_errno nogroup)" = EACCES ] || lab_fail "nobody: connect says $(connect_errno nogroup)"
lab_ok "with a token too, the socket is 660 root:root and nobody is refused"
expect "UNAUTHENTICATED: missing or invalid bearer token" "$SOCK" list
expect "UNAUTHENTICATED: missing or invalid bearer token" "$SOCK" --token wrong list
expect "UNAUTHENTICATED: missing or invalid bearer token" "$SOCK" --token s3cret-toke list
expect "UNAUTHENTICATED: missing or invalid bearer token" "$SOCK" --token "s3cret-token " get
expect OK "$SOCK" --token s3cret-token list
expect "NOT_FOUND" "$SOCK" --token s3cret-token get
expect "OK SERVING" "$SOCK" health
expect "OK SERVING" "$SOCK" --token wrong health
if "$BIN_DIR/tunnelctl" help 2>&1 | grep -q -- --token_file; then
  rc=0
  out=$("$BIN_DIR/tunnelctl" --agent="$SOCK" list 2>&1) || rc=$?
  [ "$rc" = 2 ] && grep -q UNAUTHENTICATED <<<"$out" || lab_fail "tunnelctl without token: exit $rc: $out"
  lab_ok "tunnelctl without a token -> exit 2: $out"
  "$BIN_DIR/tunnelctl" --agent="$SOCK" --token_file="$RUN/token" list >/dev/null ||
    lab_fail "tunnelctl --token_file cannot list"
  TUNNELCTL_TOKEN=s3cret-token "$BIN_DIR/tunnelctl" --agent="$SOCK" list >/dev/null ||
    lab_fail "tunnelctl with TUNNELCTL_TOKEN cannot list"
  lab_ok "tunnelctl --token_file and TUNNELCTL_TOKEN list"
else
  lab_log "(tunnelctl has no --token_file yet: the token checked with python3-grpcio only)"
fi

BUF="$BIN_DIR/../tools/node_modules/.bin/buf"
[ -x "$BUF" ] || BUF=$(command -v buf || true)
if [ -n "$BUF" ]; then  # server reflection is behind the token too
  bufl() { "$BUF" curl --protocol grpc --http2-prior-knowledge --unix-socket "$RUN/A.sock" \
    --list-methods "$@" http://localhost 2>&1; }
  out=$(bufl) && lab_fail "reflection without a token answered: $out"
  lab_ok "reflection without a token is refused"
  out=$(bufl --reflect-header "Authorization: Bearer s3cret-token") ||
    lab_fail "reflection with the token failed: $out"
  grep -qx tunnelagent.v1.TunnelService/ListTunnels <<<"$out" ||
    lab_fail "reflection with the token lacks ListTunnels: $out"
  lab_ok "reflection with the token lists the methods"
fi

lab_log "a request over 4 MiB is refused, and the agent keeps serving"
expect RESOURCE_EXHAUSTED "$SOCK" --token s3cret-token --name-bytes $((5 << 20)) get
kill -0 "${LAB_PIDS[A]}" 2>/dev/null || lab_fail "the agent died"
expect OK "$SOCK" --token s3cret-token list
expect "OK SERVING" "$SOCK" health
lab_stop_agent A

lab_log "bearer token over mutual TLS"
WAIT_ARGS=("$ADDR" --ca "$PKI/ca.pem" --cert "$PKI/client.pem" --key "$PKI/client.key")
start_agent --grpc_listen="$ADDR" "${TLS[@]}" --tls_client_ca="$PKI/ca.pem" \
  --auth_token_file="$RUN/token"
expect "UNAUTHENTICATED: missing or invalid bearer token" "${WAIT_ARGS[@]}" list
expect "UNAUTHENTICATED: missing or invalid bearer token" "${WAIT_ARGS[@]}" --token wrong list
expect OK "${WAIT_ARGS[@]}" --token s3cret-token list
expect "OK SERVING" "${WAIT_ARGS[@]}" health
lab_stop_agent A
grep -q 'INFO stopped' "$RUN/A.log" || lab_fail "the agent did not stop cleanly"

echo "PASS"
