#!/usr/bin/python3
"""The table of tests/bench/dataplane_bench.sh: medians, ratios to veth and naive, targets.

Reads the results file the script writes, one record per line, tab-separated:
  fig   PEER FIGURE REP VALUE   one run's figure (tcp1, tcp4 Gbit/s; udp64, udp1400 kpps;
                                cpu_s_per_gbit); for PEER A or B (an agent): rss_mib and
                                apply_seconds of the scale step; mpA, mpB: the same of the
                                multipoint step
  rtt   PEER ms REP VALUE       one ping's round trip
  meta  -    KEY  -   VALUE     the machine, the parameters, what the run saw
  note  PEER -    -   TEXT      a peer left out or a run that failed
Usage: dataplane_report.py RESULTS.tsv [--json FILE]
"""
import json
import statistics
import sys

PEERS = ["veth", "naive", "agent-gre", "agent-ipip", "agent-gre-udp"]
SCALED = "agent-gre+scale"  # gre1 with the extra tunnels
ONE = "agent-gre+1"  # gre1 alone, paired with it
MP_MANY = "agent-gre-mp+peers"  # the multipoint tunnel beside MULTIPOINT_PEERS - 1 more peers
MP_ONE = "agent-gre-mp+1"  # the same tunnel with its one peer, paired with it
FIGURES = [  # key, label, higher is better
    ("tcp1", "TCP x1 Gbit/s", True),
    ("tcp4", "TCP x4 Gbit/s", True),
    ("udp64", "UDP 64 B kpps rx", True),
    ("udp1400", "UDP 1400 B kpps rx", True),
    ("rtt_p50", "ping RTT p50 ms", False),
    ("rtt_p99", "ping RTT p99 ms", False),
    ("cpu_s_per_gbit", "CPU s per Gbit", False),
]


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    rank = max(1, -(-len(s) * q // 100))  # ceil
    return s[int(rank) - 1]


def load(path):
    runs, rtts, meta, notes = {}, {}, {}, []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            kind, peer, name, _rep, value = parts
            if kind == "fig" and value:
                runs.setdefault(peer, {}).setdefault(name, []).append(float(value))
            elif kind == "rtt" and value:
                rtts.setdefault(peer, []).append(float(value))
            elif kind == "meta":
                if name == "peer":
                    meta.setdefault("peers", []).append(value)
                else:
                    meta[name] = value
            elif kind == "note":
                notes.append((peer, value))
    return runs, rtts, meta, notes


def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    if v >= 1:
        return "%.2f" % v
    return "%.3f" % v


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    json_path = argv[argv.index("--json") + 1] if "--json" in argv else None
    runs, rtts, meta, notes = load(argv[1])

    medians = {}
    for peer, figs in runs.items():
        medians[peer] = {k: statistics.median(v) for k, v in figs.items()}
    for peer, values in rtts.items():
        medians.setdefault(peer, {})["rtt_p50"] = percentile(values, 50)
        medians[peer]["rtt_p99"] = percentile(values, 99)

    def med(peer, fig):
        return medians.get(peer, {}).get(fig)

    def ratio(peer, fig, base):
        v, b = med(peer, fig), med(base, fig)
        return v / b if v is not None and b else None

    measured = [p for p in PEERS if p in meta.get("peers", [])]
    unavailable = {p: t for p, t in notes if p in PEERS and p not in medians}

    print()
    print("dataplane benchmark: median of %s runs of %s s; ping: %s x %s pings, 10 ms apart" %
          (meta.get("reps"), meta.get("dur"), meta.get("reps"), meta.get("pings")))
    print("machine: %s CPUs, %s, kernel %s; load average %s at start, %s at end" %
          (meta.get("nproc"), meta.get("cpu"), meta.get("kernel"), meta.get("loadavg_start"),
           meta.get("loadavg_end")))
    print("agent: %s, io backend %s, commit %s; underlay veth offloads: %s; %s" %
          (meta.get("agent_version", "-"), meta.get("io_backend", "-"), meta.get("commit"),
           meta.get("offloads", "-"), meta.get("date")))
    print("CPU s per Gbit: the tunnel processes' (both ends) CPU seconds per gigabit during TCP x1")
    print()
    width = 15
    print("%-20s" % "figure" + "".join("%*s" % (width, p) for p in measured))
    for fig, label, _ in FIGURES:
        print("%-20s" % label + "".join(
            "%*s" % (width, "n/a" if p in unavailable else fmt(med(p, fig))) for p in measured))
        for base in ("veth", "naive"):
            if base not in medians:
                continue
            cells = []
            for p in measured:
                r = ratio(p, fig, base)
                cells.append("%*s" % (width, "" if r is None else fmt(r)))
            if not "".join(cells).strip():
                continue
            print("%-20s" % ("  x " + base) + "".join(cells))
    if "naive" not in medians:
        print("(no ratios to naive: the naive forwarder was not measured)")

    scale = {}
    if SCALED in medians:
        n_a, n_b = meta.get("tunnels_a", "?"), meta.get("tunnels_b", "?")
        print()
        print("scale: gre1 with %s tunnels on agent A and %s on B, paired with gre1 alone in each"
              " round (%d rounds)" % (n_a, n_b, len(runs.get(SCALED, {}).get("tcp1", []))))
        print("  apply of the extra tunnels until all UP: median %s s on A, %s s on B" %
              (fmt(med("A", "apply_seconds")), fmt(med("B", "apply_seconds"))))
        for fig, label in (("tcp1", "TCP x1 Gbit/s"), ("udp64", "UDP 64 B kpps rx")):
            v, one = med(SCALED, fig), med(ONE, fig)
            r = v / one if v is not None and one else None
            scale[fig] = {"median": v, "one_tunnel_median": one, "x_one_tunnel": r}
            print("  %-18s %8s with them, %8s alone: %s x" % (label, fmt(v), fmt(one), fmt(r)))
        # The agents' CPU per Gbit of the TCP runs: a per-packet cost, which the throughput of
        # a run on a shared machine shows only through the noise of everything else running.
        v, one = med(SCALED, "cpu_s_per_gbit"), med(ONE, "cpu_s_per_gbit")
        r = one / v if v and one is not None else None
        scale["cpu_s_per_gbit"] = {"median": v, "one_tunnel_median": one, "x_one_tunnel": r}
        print("  %-18s %8s with them, %8s alone: %s x as efficient" %
              ("CPU s per Gbit", fmt(v), fmt(one), fmt(r)))
        for node in ("A", "B"):
            rss = runs.get(node, {}).get("rss_mib")
            scale["rss_mib_" + node] = max(rss) if rss else None
            print("  agent %s VmRSS: %s MiB with one tunnel, at most %s MiB with %s" %
                  (node, meta.get("rss_%s_1" % node.lower(), "?"), fmt(scale["rss_mib_" + node]),
                   meta.get("tunnels_" + node.lower(), "?")))
        scale.update({k: meta.get(k) for k in ("tunnels_a", "tunnels_b", "rss_a_1", "rss_b_1")})
        scale["apply_seconds_A"], scale["apply_seconds_B"] = (med("A", "apply_seconds"),
                                                              med("B", "apply_seconds"))

    # The multipoint step: the same tunnel with one peer and with many, paired in each round.
    multipoint = {}
    if MP_MANY in medians:
        peers, prefixes = meta.get("mp_peers", "?"), meta.get("mp_prefixes", "?")
        print()
        print("multipoint: mp1 with %s peers (%s allowed prefixes) on each agent, paired with mp1"
              " and its one peer in each round (%d rounds)" %
              (peers, prefixes, len(runs.get(MP_MANY, {}).get("tcp1", []))))
        print("  peer apply of the other peers until all listed: median %s s on A, %s s on B" %
              (fmt(med("mpA", "apply_seconds")), fmt(med("mpB", "apply_seconds"))))
        for fig, label in (("tcp1", "TCP x1 Gbit/s"), ("udp64", "UDP 64 B kpps rx")):
            v, one = med(MP_MANY, fig), med(MP_ONE, fig)
            r = v / one if v is not None and one else None
            multipoint[fig] = {"median": v, "one_peer_median": one, "x_one_peer": r}
            print("  %-18s %8s with them, %8s one peer: %s x" % (label, fmt(v), fmt(one), fmt(r)))
        v, one = med(MP_MANY, "cpu_s_per_gbit"), med(MP_ONE, "cpu_s_per_gbit")
        r = one / v if v and one is not None else None
        multipoint["cpu_s_per_gbit"] = {"median": v, "one_peer_median": one, "x_one_peer": r}
        print("  %-18s %8s with them, %8s one peer: %s x as efficient" %
              ("CPU s per Gbit", fmt(v), fmt(one), fmt(r)))
        for node in ("A", "B"):
            rss = runs.get("mp" + node, {}).get("rss_mib")
            multipoint["rss_mib_" + node] = max(rss) if rss else None
            print("  agent %s VmRSS: %s MiB with one peer, at most %s MiB with %s" %
                  (node, meta.get("rss_%s_mp1" % node.lower(), "?"),
                   fmt(multipoint["rss_mib_" + node]), peers))
        multipoint.update({k: meta.get(k) for k in ("mp_peers", "mp_prefixes", "rss_a_mp1",
                                                    "rss_b_mp1")})
        multipoint["apply_seconds_A"], multipoint["apply_seconds_B"] = (
            med("mpA", "apply_seconds"), med("mpB", "apply_seconds"))

    # The project's targets, as ratios inside this run.
    targets = []

    def target(name, value, limit, ok_if_at_least, missing=None):
        if value is None:
            result, shown = "n/a", missing or "not measured"
        else:
            ok = value >= limit if ok_if_at_least else value <= limit
            result, shown = ("PASS" if ok else "MISS"), fmt(value)
        targets.append({"target": name, "value": value, "limit": limit, "result": result})
        print("  %-4s  %-66s %s" % (result, name, shown))

    print()
    print("targets (informational; ratios inside this run):")
    target("GRE TCP x1 >= 3x naive", ratio("agent-gre", "tcp1", "naive"), 3, True)
    target("GRE TCP x4 >= 3x naive", ratio("agent-gre", "tcp4", "naive"), 3, True)
    target("GRE UDP 64 B received pps >= 0.7x veth", ratio("agent-gre", "udp64", "veth"), 0.7,
           True)
    gre_udp = ratio("agent-gre-udp", "tcp1", "veth")
    target("GRE-in-UDP TCP x1 >= 0.4x veth", gre_udp, 0.4, True,
           unavailable.get("agent-gre-udp", "not measured"))
    added, limit = None, None
    if med("agent-gre", "rtt_p99") is not None and med("veth", "rtt_p99"):
        added = med("agent-gre", "rtt_p99") - med("veth", "rtt_p99")
        limit = 2 * med("veth", "rtt_p99")
    target("GRE added RTT p99 ms: p99 GRE - p99 veth <= 2 x p99 veth" +
           ("" if limit is None else " = %s" % fmt(limit)), added, limit, False)
    for fig, label in (("tcp1", "TCP x1"), ("udp64", "UDP 64 B"),
                       ("cpu_s_per_gbit", "TCP x1 CPU per Gbit")):
        target("%s tunnels: GRE %s >= 0.9x one tunnel (no slow-down)" %
               (meta.get("tunnels_a", "1,001"), label),
               scale.get(fig, {}).get("x_one_tunnel"), 0.9, True)
    for fig, label in (("tcp1", "TCP x1"), ("udp64", "UDP 64 B")):
        target("multipoint, %s peers: GRE %s >= 0.9x one peer" %
               (meta.get("mp_peers", "10,000"), label),
               multipoint.get(fig, {}).get("x_one_peer"), 0.9, True,
               dict(notes).get("agent-gre-mp", "not measured"))
    for node in ("A", "B"):
        # 100 MiB beside 1,001 tunnels, 256 MiB beside 10,001.
        tunnels = meta.get("tunnels_" + node.lower(), "1,001")
        limit = 256 if str(tunnels).isdigit() and int(tunnels) > 1001 else 100
        target("%s tunnels: agent %s VmRSS < %d MiB" % (tunnels, node, limit),
               scale.get("rss_mib_" + node), limit, False)

    if notes:
        print()
        print("notes:")
        for peer, text in notes:
            print("  %s: %s" % (peer, text))
    print()

    if json_path:
        out = {
            "machine": {k: meta.get(k) for k in ("nproc", "cpu", "kernel", "loadavg_start",
                                                 "loadavg_end", "offloads")},
            "run": {k: meta.get(k) for k in ("reps", "dur", "pings", "date", "commit",
                                             "agent_version", "io_backend")},
            "peers": {},
            "scale": scale,
            "multipoint": multipoint,
            "targets": targets,
            "notes": [{"peer": p, "text": t} for p, t in notes],
        }
        for p in measured + [p for p in (ONE, SCALED, MP_ONE, MP_MANY) if p in medians]:
            figs = {}
            for fig, _, _ in FIGURES:
                if med(p, fig) is None:
                    continue
                figs[fig] = {"median": med(p, fig), "runs": runs.get(p, {}).get(fig),
                             "x_veth": ratio(p, fig, "veth"), "x_naive": ratio(p, fig, "naive")}
            out["peers"][p] = figs if figs else {"unavailable": unavailable.get(p)}
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print("results written to %s" % json_path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
