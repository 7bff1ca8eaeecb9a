#!/bin/bash
# /metrics end to end: a GRE tunnel between two nodes carries a ping; the agent's /metrics
# passes `promtool check metrics`, has every metric of docs/metrics.md's table with its labels and
# type, counts the gRPC calls made, has the process_* metrics of a real process and the
# per-tunnel info, receive time, keepalive RTT and repair series; a device changed behind the
# agent's back is counted as a repair; and a real Prometheus, scraping the agent from inside its
# namespace, sees the target up, the tunnel's received packets and a recent receive time.
set -euo pipefail
: "${SOURCE_DIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${BIN_DIR:=$SOURCE_DIR/build/bin}"
source "$SOURCE_DIR/scripts/lab.sh"

for b in promtool prometheus; do
  command -v "$b" >/dev/null || {
    echo "missing $b: install Debian's prometheus (WITH_TEST_DEPS=1 scripts/install-deps.sh)" >&2
    exit 77
  }
done

PROM_PORT=19090  # Prometheus's own HTTP API, on node A's loopback
SERVICE='grpc_service="tunnelagent.v1.TunnelService"'
CREATE="grpc_method=\"CreateTunnel\",$SERVICE,grpc_type=\"unary\""
GET="grpc_method=\"GetTunnel\",$SERVICE,grpc_type=\"unary\""
DELETE="grpc_method=\"DeleteTunnel\",$SERVICE,grpc_type=\"unary\""

lab_init
lab_add_node A 198.18.0.1
lab_add_node B 198.18.0.2
lab_start_agent A --max_tunnels=64
lab_start_agent B

lab_log "a GRE tunnel and traffic across it"
# A's side sends keepalives (every second: an RTT is known soon), so that their series are
# exported too.
lab_ctl A create gre1 mode gre local 198.18.0.1 remote 198.18.0.2 key 7 address 10.7.0.1/30 \
  keepalive 1 >/dev/null
lab_ctl B create gre1 mode gre local 198.18.0.2 remote 198.18.0.1 key 7 address 10.7.0.2/30 >/dev/null
lab_ping A 10.7.0.2 3
lab_expect_rpc_error A NOT_FOUND get nosuch
# The RTT is exported once a keepalive came back: at most a few intervals.
deadline=$((SECONDS + 15))
until [ -n "$(lab_metric A 'tunnelagent_tunnel_keepalive_rtt_seconds{tunnel="gre1"}')" ]; do
  [ "$SECONDS" -lt "$deadline" ] || lab_fail "no keepalive RTT for gre1 within 15 s"
  sleep 0.5
done

lab_log "/metrics passes promtool"
lab_exec A curl -sf --max-time 5 "http://127.0.0.1:$LAB_METRICS_PORT/metrics" >"$RUN/A.metrics" ||
  lab_fail "cannot fetch A's /metrics"
# promtool exits 0 when the text parses and lint finds nothing, 3 on lint problems, 1 on errors.
rc=0
promtool check metrics <"$RUN/A.metrics" >"$RUN/promtool.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat "$RUN/promtool.out" >&2; lab_fail "promtool check metrics: exit $rc"; }
lab_ok "promtool check metrics: no error, no lint problem"

lab_log "the metric table: names, types, labels"
# has_metric NAME TYPE LABELS: a "# TYPE NAME TYPE" line, and a sample of NAME (or of NAME_bucket
# for a histogram) whose label names, sorted and comma-joined, are LABELS.
has_metric() {
  local name=$1 type=$2 labels=$3 series=$1
  grep -qx "# TYPE $name $type" "$RUN/A.metrics" || lab_fail "no '# TYPE $name $type'"
  [ "$type" = histogram ] && series=${name}_bucket
  # Label names of each sample of the series, sorted: `a="x",b="y"` -> `a,b`.
  awk -v s="$series" '
    index($0, s) == 1 {
      rest = substr($0, length(s) + 1)
      if (rest ~ /^ /) { print ""; next }
      if (rest !~ /^\{/) next
      rest = substr(rest, 2, index(rest, "}") - 2)
      n = 0
      while (match(rest, /^[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?/)) {
        names[++n] = substr(rest, 1, index(rest, "=") - 1)
        rest = substr(rest, RLENGTH + 1)
      }
      for (i = 2; i <= n; i++) for (j = i; j > 1 && names[j - 1] > names[j]; j--) {
        t = names[j]; names[j] = names[j - 1]; names[j - 1] = t
      }
      out = ""
      for (i = 1; i <= n; i++) out = out (i > 1 ? "," : "") names[i]
      print out
    }' "$RUN/A.metrics" | sort -u >"$RUN/labels"
  [ -s "$RUN/labels" ] || lab_fail "no sample of $series"
  [ "$(cat "$RUN/labels")" = "$labels" ] ||
    lab_fail "$series has labels '$(paste -sd' ' "$RUN/labels")', want '$labels'"
}
while read -r name type labels; do
  [ "$labels" = - ] && labels=
  has_metric "$name" "$type" "$labels"
done <<'EOF'
tunnelagent_build_info gauge io_backend,version
tunnelagent_dataplane_io_uring_fallback gauge -
tunnelagent_dataplane_workers gauge -
tunnelagent_max_tunnels gauge -
tunnelagent_tunnels_verifying gauge -
tunnelagent_tunnels gauge mode,state
tunnelagent_tunnel_up gauge tunnel
tunnelagent_tunnel_info gauge key,local,mode,remote,tunnel
tunnelagent_tunnel_state_changes_total counter tunnel
tunnelagent_tunnel_last_receive_timestamp_seconds gauge tunnel
tunnelagent_tunnel_repairs_total counter tunnel,what
tunnelagent_tunnel_tx_packets_total counter tunnel
tunnelagent_tunnel_tx_bytes_total counter tunnel
tunnelagent_tunnel_rx_packets_total counter tunnel
tunnelagent_tunnel_rx_bytes_total counter tunnel
tunnelagent_tunnel_drops_total counter direction,reason,tunnel
tunnelagent_tunnel_path_mtu_bytes gauge tunnel
tunnelagent_tunnel_icmp_too_big_total counter tunnel
tunnelagent_tunnel_tx_fragmented_total counter tunnel
tunnelagent_tunnel_tx_super_packets_total counter tunnel
tunnelagent_tunnel_rx_coalesced_packets_total counter tunnel
tunnelagent_tunnel_keepalive_sent_total counter tunnel
tunnelagent_tunnel_keepalive_replies_total counter tunnel
tunnelagent_tunnel_keepalive_answered_total counter tunnel
tunnelagent_tunnel_peer_alive gauge tunnel
tunnelagent_tunnel_keepalive_rtt_seconds gauge tunnel
tunnelagent_dataplane_rx_packets_total counter -
tunnelagent_dataplane_drops_total counter reason
grpc_server_started_total counter grpc_method,grpc_service,grpc_type
grpc_server_handled_total counter grpc_code,grpc_method,grpc_service,grpc_type
grpc_server_handling_seconds histogram grpc_method,grpc_service,grpc_type,le
tunnelagent_grpc_streams_active gauge grpc_method,grpc_service
tunnelagent_metrics_scrapes_total counter -
tunnelagent_metrics_scrape_duration_seconds histogram le
process_cpu_seconds_total counter -
process_open_fds gauge -
process_max_fds gauge -
process_virtual_memory_bytes gauge -
process_virtual_memory_max_bytes gauge -
process_resident_memory_bytes gauge -
process_start_time_seconds gauge -
process_threads gauge -
EOF
lab_ok "all 39 metrics of the table, with their types and labels"

m() { awk -v s="$1" '$1 == s && !found { print $2; found = 1 }' "$RUN/A.metrics"; }
for series in \
  "tunnelagent_tunnel_tx_packets_total{tunnel=\"gre1\"}" \
  "tunnelagent_tunnel_rx_packets_total{tunnel=\"gre1\"}" \
  "tunnelagent_tunnel_rx_bytes_total{tunnel=\"gre1\"}"; do
  v=$(m "$series")
  if [ -z "$v" ] || [ "$v" -le 0 ]; then lab_fail "$series is '$v', want > 0"; fi
done
v=$(m 'tunnelagent_tunnel_up{tunnel="gre1"}')
[ "$v" = 1 ] || lab_fail "tunnelagent_tunnel_up{tunnel=gre1} is '$v', want 1"
v=$(m 'tunnelagent_tunnel_drops_total{direction="tx",reason="too_big",tunnel="gre1"}')
[ "$v" = 0 ] || lab_fail "gre1's tx too_big drops is '$v', want an existing 0"
v=$(m 'tunnelagent_dataplane_drops_total{reason="no_tunnel"}')
[ -n "$v" ] || lab_fail "tunnelagent_dataplane_drops_total{reason=no_tunnel} is missing"
v=$(m tunnelagent_dataplane_io_uring_fallback)
[ "$v" = 0 ] || lab_fail "tunnelagent_dataplane_io_uring_fallback is '$v', want 0 (io_uring works here)"
lab_ok "gre1 moved packets, is up, its drop series exist at 0"

# gt A B: A > B, as numbers in any notation ("1.5e+09"); false when A is empty.
gt() { [ -n "$1" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 > b + 0) }'; }
now=$(date +%s)
for series in process_open_fds process_max_fds process_resident_memory_bytes \
  process_virtual_memory_bytes process_threads process_start_time_seconds; do
  v=$(m "$series")
  gt "$v" 0 || lab_fail "$series is '$v', want > 0"
done
gt "$(m process_max_fds)" "$(m process_open_fds)" ||
  lab_fail "process_max_fds $(m process_max_fds) is not above process_open_fds $(m process_open_fds)"
# The agent runs a gRPC server, the exposer and its dataplane workers: more than one thread.
gt "$(m process_threads)" 1 || lab_fail "process_threads is '$(m process_threads)', want > 1"
v=$(m process_start_time_seconds)
{ gt "$v" $((now - 120)) && ! gt "$v" $((now + 1)); } ||
  lab_fail "process_start_time_seconds is '$v', want within the last 2 minutes (now $now)"
v=$(m process_cpu_seconds_total)
{ [ -n "$v" ] && ! gt 0 "$v"; } || lab_fail "process_cpu_seconds_total is '$v', want >= 0"
lab_ok "process_*: $(m process_open_fds) of $(m process_max_fds) fds, $(m process_resident_memory_bytes) bytes resident"

v=$(m 'tunnelagent_tunnel_info{key="7",local="198.18.0.1",mode="gre",remote="198.18.0.2",tunnel="gre1"}')
[ "$v" = 1 ] || {
  grep '^tunnelagent_tunnel_info' "$RUN/A.metrics" >&2
  lab_fail "gre1's info series is '$v', want 1"
}
v=$(m tunnelagent_max_tunnels)
[ "$v" = 64 ] || lab_fail "tunnelagent_max_tunnels is '$v', want 64 (--max_tunnels)"
for what in address route mtu link; do
  v=$(m "tunnelagent_tunnel_repairs_total{tunnel=\"gre1\",what=\"$what\"}")
  [ "$v" = 0 ] || lab_fail "gre1's $what repairs are '$v', want an existing 0"
done
v=$(m 'tunnelagent_tunnel_state_changes_total{tunnel="gre1"}')
[ -n "$v" ] || lab_fail "tunnelagent_tunnel_state_changes_total{tunnel=gre1} is missing"
# The ping came back through gre1 moments ago: its last receive is a recent Unix time.
received=$(m 'tunnelagent_tunnel_last_receive_timestamp_seconds{tunnel="gre1"}')
{ gt "$received" $((now - 60)) && ! gt "$received" $((now + 1)); } ||
  lab_fail "gre1's last receive is '$received', want within the last minute (now $now)"
rtt=$(m 'tunnelagent_tunnel_keepalive_rtt_seconds{tunnel="gre1"}')
{ gt "$rtt" 0 && gt 1 "$rtt"; } || lab_fail "gre1's keepalive RTT is '$rtt' s, want between 0 and 1 s"
lab_ok "gre1: info labels, max_tunnels 64, repairs at 0, last receive $received, RTT $rtt s"

lab_log "an MTU changed behind the agent's back is put back and counted"
mtu=$(lab_exec A cat /sys/class/net/gre1/mtu)
lab_exec A ip link set gre1 mtu $((mtu - 100))
mtu_repairs() { lab_metric A 'tunnelagent_tunnel_repairs_total{tunnel="gre1",what="mtu"}'; }
deadline=$((SECONDS + 10))
until [ "$(mtu_repairs)" = 1 ]; do
  [ "$SECONDS" -lt "$deadline" ] || lab_fail "gre1's mtu repairs are '$(mtu_repairs)' 10 s after the change, want 1"
  sleep 0.2
done
[ "$(lab_exec A cat /sys/class/net/gre1/mtu)" = "$mtu" ] || lab_fail "gre1's MTU was not put back to $mtu"
v=$(lab_metric A 'tunnelagent_tunnel_repairs_total{tunnel="gre1",what="address"}')
[ "$v" = 0 ] || lab_fail "gre1's address repairs are '$v' after an MTU change, want 0"
lab_ok "gre1's MTU put back to $mtu, counted once under what=mtu"

v=$(m "grpc_server_handled_total{grpc_code=\"OK\",$CREATE}")
[ "$v" = 1 ] || lab_fail "CreateTunnel OK count is '$v', want 1"
v=$(m "grpc_server_started_total{$CREATE}")
[ "$v" = 1 ] || lab_fail "CreateTunnel started count is '$v', want 1"
v=$(m "grpc_server_handled_total{grpc_code=\"NotFound\",$GET}")
[ "$v" = 1 ] || lab_fail "GetTunnel NotFound count is '$v', want 1"
v=$(m "grpc_server_handled_total{grpc_code=\"OK\",$DELETE}")
[ "$v" = 0 ] || lab_fail "DeleteTunnel OK count is '$v', want an existing 0"
v=$(m "grpc_server_handling_seconds_count{$CREATE}")
[ "$v" = 1 ] || lab_fail "CreateTunnel handling count is '$v', want 1"
v=$(m "tunnelagent_grpc_streams_active{grpc_method=\"WatchTunnels\",$SERVICE}")
[ "$v" = 0 ] || lab_fail "WatchTunnels streams_active is '$v', want 0"
lab_ok "gRPC calls counted by method and code: CreateTunnel OK 1, GetTunnel NotFound 1"

# Scrapes are counted from the first: this fetch is at least the second (promtool's was one).
v=$(m tunnelagent_metrics_scrapes_total)
gt "$v" 0 || lab_fail "tunnelagent_metrics_scrapes_total is '$v', want > 0"
grep -q '^exposer_' "$RUN/A.metrics" && lab_fail "prometheus-cpp's exposer_* metrics are still served"
lab_ok "/metrics counts its own scrapes ($v), in seconds, and serves no exposer_* metrics"

lab_log "a real Prometheus scrapes the agent"
mkdir -p "$RUN/prometheus-data"
cat >"$RUN/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tunnel-agent
    static_configs:
      - targets: ['127.0.0.1:$LAB_METRICS_PORT']
EOF
promtool check config "$RUN/prometheus.yml" >/dev/null || lab_fail "promtool check config"
# Not through lab_exec: a function run with & is a subshell, and $! would be its PID, not
# Prometheus's (ip netns exec execs the command: same PID).
ip netns exec "$LAB-A" prometheus --config.file="$RUN/prometheus.yml" \
  --storage.tsdb.path="$RUN/prometheus-data" --web.listen-address="127.0.0.1:$PROM_PORT" \
  >>"$RUN/prometheus.log" 2>&1 &
LAB_PIDS["prometheus"]=$!  # lab_cleanup stops it with the agents, and waits for it

# prom_wait QUERY: until QUERY returns at least one series, for at most 30 s.
prom_wait() {
  local query=$1 out deadline=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "${LAB_PIDS["prometheus"]}" 2>/dev/null || lab_fail "prometheus exited (see its log)"
    out=$(lab_exec A curl -sf --max-time 2 "http://127.0.0.1:$PROM_PORT/api/v1/query" \
      --data-urlencode "query=$query" 2>/dev/null) || out=
    if [ -n "$out" ] && [ "$(jq -r '.data.result | length' <<<"$out")" -gt 0 ]; then
      lab_ok "prometheus: $query -> $(jq -c '[.data.result[].value[1]]' <<<"$out")"
      return 0
    fi
    sleep 0.5
  done
  tail -n 20 "$RUN/prometheus.log" >&2
  lab_fail "prometheus: no result for $query within 30 s"
}
prom_wait 'up{job="tunnel-agent"} == 1'
prom_wait 'tunnelagent_tunnel_rx_packets_total{job="tunnel-agent",tunnel="gre1"} > 0'
# In the units the alert rules take them: Unix seconds, and descriptors over their limit.
prom_wait 'time() - tunnelagent_tunnel_last_receive_timestamp_seconds{job="tunnel-agent",tunnel="gre1"} < 120'
prom_wait 'process_open_fds{job="tunnel-agent"} / process_max_fds{job="tunnel-agent"} < 0.8'
prom_wait "grpc_server_handled_total{$CREATE,grpc_code=\"OK\"} == 1"
prom_wait "grpc_server_handling_seconds_bucket{$CREATE,le=\"+Inf\"} == 1"

echo "PASS"
