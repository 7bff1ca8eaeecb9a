#!/bin/bash
# The state store with a real agent: a tunnels.json of format_version 1 (as earlier agents wrote
# it) is migrated on the first start; 8 clients creating tunnels at once are all saved, and 8
# clients changing labels at once (no kernel work: the flush is what they wait for) share
# flushes (tunnelagent_state_syncs_total below tunnelagent_state_commits_total); every answered
# change survives kill -9; a log cut in the middle of its last record (a crash in the middle of
# a commit) is dropped with one warning; damage in the middle of the log stops the agent naming
# the file and the offset, the files untouched.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"
lab_require_python_grpc
CLIENTS=8
EACH=10

lab_init
lab_add_node A 198.18.0.1
[ -x "$BIN_DIR/tunnel-state" ] || lab_fail "missing $BIN_DIR/tunnel-state: build first"
STATE=$RUN/A-state

api_names() {
  lab_ctl A list -o json |
    jq -r '[(if type == "array" then . else (.tunnels // []) end)[].name] | sort | join(" ")'
}
check_agree() {  # WHEN
  local api file
  api=$(api_names)
  file=$(lab_state_names A)
  [ "$api" = "$file" ] || lab_fail "$1: the agent has '$api', the store '$file'"
  lab_ok "$1: the store holds the agent's $(wc -w <<<"$api") tunnels"
}

lab_log "a tunnels.json of format_version 1 is migrated on the first start"
mkdir -p "$STATE"
chmod 700 "$STATE"
cat >"$STATE/tunnels.json" <<'EOF'
{
 "formatVersion": 1,
 "tunnels": [
  {"name": "old1", "mode": "TUNNEL_MODE_GRE", "remote": "198.18.0.2", "key": 1,
   "addresses": ["10.50.0.1/30"], "etag": "0000000000000000"},
  {"name": "old2", "mode": "TUNNEL_MODE_IPIP", "remote": "198.18.0.3",
   "addresses": ["10.50.0.5/30"], "routes": ["10.51.0.0/24"], "etag": "0000000000000000"}
 ]
}
EOF
lab_start_agent A
[ "$(api_names)" = "old1 old2" ] || lab_fail "A: restored '$(api_names)', want 'old1 old2'"
[ "$(jq -r .formatVersion "$STATE/tunnels.json")" = 2 ] ||
  lab_fail "tunnels.json not rewritten as format_version 2"
[ "$(grep -c 'was of format_version 1' "$RUN/A.log")" = 1 ] ||
  lab_fail "the migration was not logged once"
lab_ok "A: old1 and old2 restored, tunnels.json rewritten as format_version 2, logged once"
check_agree "after the migration"

lab_log "$CLIENTS clients creating $EACH tunnels each, at once"
commits0=$(lab_metric A tunnelagent_state_commits_total)
pids=()
for c in $(seq 0 $((CLIENTS - 1))); do
  (
    for i in $(seq 0 $((EACH - 1))); do
      n=$((c * EACH + i))
      lab_ctl A create "c$n" mode gre remote 198.18.0.2 key $((100 + n)) \
        address "10.60.$n.1/30" >/dev/null || exit 1
    done
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || lab_fail "a client's create failed"; done
commits=$(($(lab_metric A tunnelagent_state_commits_total) - commits0))
[ "$commits" = $((CLIENTS * EACH)) ] || lab_fail "$commits commits, want $((CLIENTS * EACH))"
lab_ok "$commits creates answered, each a commit"
check_agree "after the concurrent creates"

lab_log "$CLIENTS clients changing labels at once share flushes"
GEN=$RUN/py
lab_python_messages "$GEN"
commits0=$(lab_metric A tunnelagent_state_commits_total)
syncs0=$(lab_metric A tunnelagent_state_syncs_total)
"$PY" - "$GEN" "$RUN/A.sock" "$CLIENTS" 25 <<'PYEOF' || lab_fail "concurrent label updates failed"
import sys, threading
import grpc
sys.path.insert(0, sys.argv[1])
from tunnelagent.v1 import tunnel_pb2 as pb
sock, clients, rounds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
channel = grpc.insecure_channel(f"unix:{sock}")
update = channel.unary_unary("/tunnelagent.v1.TunnelService/UpdateTunnel",
                             request_serializer=pb.UpdateTunnelRequest.SerializeToString,
                             response_deserializer=pb.UpdateTunnelResponse.FromString)
errors = []
def client(c):
    try:
        for r in range(rounds):
            req = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(name=f"c{c}", labels={"round": str(r)}))
            req.update_mask.paths.append("labels")
            update(req, timeout=10)
    except grpc.RpcError as e:
        errors.append(f"c{c}: {e.code().name}: {e.details()}")
threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    print("\n".join(errors[:5]), file=sys.stderr)
    sys.exit(1)
PYEOF
commits=$(($(lab_metric A tunnelagent_state_commits_total) - commits0))
syncs=$(($(lab_metric A tunnelagent_state_syncs_total) - syncs0))
[ "$commits" = $((CLIENTS * 25)) ] || lab_fail "$commits commits, want $((CLIENTS * 25))"
if [ "$(stat -f -c %T "$STATE")" = tmpfs ]; then
  # A flush that costs nothing is rarely shared: only the count is checked there.
  [ "$syncs" -le "$commits" ] || lab_fail "$syncs flushes for $commits commits"
else
  [ "$syncs" -ge 1 ] && [ "$syncs" -lt "$commits" ] ||
    lab_fail "$syncs flushes for $commits commits: none shared"
fi
lab_ok "$commits label changes answered with $syncs flushes of the log"
[ "$(lab_ctl A -o json get c7 | jq -r .labels.round)" = 24 ] || lab_fail "c7's last label lost"

lab_log "kill -9: every answered change is there at the next start"
before=$(api_names)
lab_stop_agent A KILL
[ "$(lab_state_names A)" = "$before" ] || lab_fail "the store lost changes at kill -9"
lab_start_agent A
[ "$(api_names)" = "$before" ] || lab_fail "restored '$(api_names)' after kill -9"
lab_ok "all $(wc -w <<<"$before") tunnels back after kill -9"

lab_log "a commit cut short by a crash: the partial last record is dropped"
before=$(api_names)
size=$(stat -c %s "$STATE/tunnels.log")
lab_ctl A delete c0 >/dev/null
end=$(stat -c %s "$STATE/tunnels.log")
lab_stop_agent A KILL
# As if the crash came in the middle of writing the delete's record: half of it is there.
truncate -s $(((size + end) / 2)) "$STATE/tunnels.log"
lab_start_agent A
[ "$(api_names)" = "$before" ] || lab_fail "restored '$(api_names)' after a torn record"
[ "$(stat -c %s "$STATE/tunnels.log")" = "$size" ] || lab_fail "the torn record was not cut off"
[ "$(grep -c 'WARNING state: .*dropping the last record' "$RUN/A.log")" = 1 ] ||
  lab_fail "no single warning about the dropped record"
lab_ok "the torn record dropped with one warning, the log cut back to $size bytes"
lab_ctl A create after mode gre remote 198.18.0.2 key 999 address 10.61.0.1/30 >/dev/null
check_agree "after a change that follows the cut"

lab_log "damage in the middle of the log stops the agent, naming the file and the offset"
lab_stop_agent A TERM
# The byte after the log header and the first record's 12-byte header: that record's payload.
printf '\xff' | dd of="$STATE/tunnels.log" bs=1 seek=33 conv=notrunc status=none
cp "$STATE/tunnels.log" "$RUN/damaged.ref"
rc=0
out=$(lab_run_agent A 2>&1) || rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] || lab_fail "the agent did not refuse a damaged log (exit $rc)"
grep -q "FAILED_PRECONDITION: state file $STATE/tunnels.log .*offset 20: " <<<"$out" ||
  lab_fail "the refusal does not name the log and the offset: $out"
cmp -s "$STATE/tunnels.log" "$RUN/damaged.ref" || lab_fail "the damaged log was modified"
lab_ok "the agent exits $rc: $(grep -o 'state file .*' <<<"$out" | head -n 1)"

echo "PASS"
