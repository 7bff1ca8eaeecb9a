#!/usr/bin/python3
"""The table of tests/bench/fleet_etcd_bench.sh: median and max of each figure, its target.

Reads the results file the script writes, one record per line, tab-separated:
  fig   NAME REP VALUE   one repetition's figure (seconds, or packets for the *_lost ones)
  meta  KEY  -   VALUE   the machine, the parameters, what the run measured besides
  note  -    -   TEXT    something the run saw that the figures do not say
Usage: fleet_etcd_report.py RESULTS.tsv [--json FILE]
"""
import json
import statistics
import sys

# name, label, unit, target as (comparison, bound or the meta key holding it), what the
# target says. Targets in seconds compare the max of the repetitions, as the bench promises
# each repetition, not their median.
FIGURES = [
    ("join", "a. join: registration -> peer on every node, pings cross", "s",
     ("<", 2.0), "< 2 s"),
    ("join_registered", "   agent start -> its registration seen in etcd", "s", None, ""),
    ("leave_after_grace", "b. leave (kill -9): registration gone -> gone everywhere, less grace",
     "s", ("<=", 2.0), "<= 2 s"),
    ("leave_after_kill", "   the same from kill -9 (agent lease TTL + grace + that)", "s",
     None, ""),
    ("takeover", "c. leader kill -9 -> the standby leads", "s",
     ("<=", "takeover_bound"), "<= TTL + 1 s"),
    ("join_new_leader", "c. join under the new leader", "s", ("<", 2.0), "< 2 s"),
    ("join_member_down", "d. join, one etcd member of three killed", "s", ("<", 2.0), "< 2 s"),
    ("join_member_down_registered", "   agent start -> registration, the raft leader just killed",
     "s", None, ""),
    ("leave_member_down", "d. leave, one etcd member down, less grace", "s", ("<=", 2.0),
     "<= 2 s"),
    ("lost_member_down", "d. pings lost meanwhile (50 a second)", "packets", ("<=", 0), "0"),
    ("lost_outage", "e. pings lost, all of etcd stopped (50 a second)", "packets", ("<=", 0),
     "0"),
    ("lost_after_return", "   the same once etcd is back, the change applied", "packets",
     ("<=", 0), "0"),
    ("stepdown", "e. etcd stopped -> no controller leads", "s", None, ""),
    ("converged_after_return", "e. etcd back -> a description change on every node", "s",
     ("<=", 2.0), "<= 2 s"),
    ("converged_after_set", "   the same from fleet set's start", "s", None, ""),
    ("leader_after_return", "   etcd back -> a controller leads again", "s", None, ""),
]


def load(path):
    runs, meta, notes = {}, {}, []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            kind, name, _rep, value = parts
            if kind == "fig" and value:
                runs.setdefault(name, []).append(float(value))
            elif kind == "meta":
                meta[name] = value
            elif kind == "note":
                notes.append(value)
    return runs, meta, notes


def fmt(value, unit):
    return f"{value:.0f}" if unit == "packets" else f"{value:.2f}"


def main():
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and sys.argv[2] != "--json"):
        raise SystemExit("usage: fleet_etcd_report.py RESULTS.tsv [--json FILE]")
    runs, meta, notes = load(sys.argv[1])
    rows, report = [], {"meta": meta, "figures": {}, "notes": notes}
    for name, label, unit, target, target_text in FIGURES:
        values = runs.get(name, [])
        if not values:
            rows.append((label, "0", "n/a", "n/a", target_text, "not measured"))
            continue
        median, worst = statistics.median(values), max(values)
        verdict = ""
        if target is not None:
            op, bound = target
            bound = float(meta.get(bound, "nan")) if isinstance(bound, str) else bound
            met = worst < bound if op == "<" else worst <= bound
            verdict = "PASS" if met else "MISS"
            target_text = target_text.replace("TTL + 1 s", f"{bound:g} s")
        rows.append((label, str(len(values)), fmt(median, unit), fmt(worst, unit),
                     target_text, verdict))
        report["figures"][name] = {"unit": unit, "values": values, "median": median,
                                   "max": worst, "target": target_text or None,
                                   "verdict": verdict or None}
    head = ("figure", "reps", "median", "max", "target", "")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for row in [head] + rows:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                        if i in (1, 2, 3) else cell.ljust(widths[i])
                        for i, cell in enumerate(row)).rstrip())
    for note in notes:
        print(f"note: {note}")
    if len(sys.argv) == 4:
        with open(sys.argv[3], "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
