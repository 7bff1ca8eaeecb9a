#!/usr/bin/python3
"""The Grafana dashboard deploy/grafana/tunnel-agent.json, checked without a Grafana:

  check_dashboard.py DASHBOARD.json RULES_OUT.yml

- its structure: a uid and title, a Prometheus data source variable that every panel and
  query uses, unique panel ids, panels within the 24-column grid and not on top of each other,
  every query with an expression and a refId of its own;
- its PromQL: every panel query and every variable's label_values() selector is written to
  RULES_OUT.yml as a recording rule (Grafana's variables replaced by values of their kind:
  $__rate_interval by 5m, $instance by .*), for `promtool check rules` to parse. A variable
  the dashboard does not define fails here, before promtool would take it for text.

Prints one line per problem and exits 1 when there is any.
"""
import json
import re
import sys

import yaml

# Grafana's own variables that may appear in a Prometheus query, with a value of their kind.
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}
KNOWN_PANELS = {"row", "timeseries", "stat", "table", "state-timeline", "bargauge", "gauge", "text"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

problems = []


def problem(message):
    problems.append(message)


def substitute(expr, variables, where):
    def value(m):
        name = m.group(1) or m.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in variables:
            return variables[name]
        problem(f"{where}: ${name} is no variable of the dashboard")
        return "x"
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def main(path, out):
    with open(path) as f:
        dash = json.load(f)
    for key in ("uid", "title"):
        if not dash.get(key):
            problem(f"no {key}")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problem("schemaVersion below 36 (Grafana 9): panels and data source references would be migrated")
    templating = dash.get("templating", {}).get("list", [])
    names = [v["name"] for v in templating]
    if len(names) != len(set(names)):
        problem(f"variables defined twice: {names}")
    ds = [v for v in templating if v.get("type") == "datasource"]
    if len(ds) != 1 or ds[0]["name"] != "datasource" or ds[0].get("query") != "prometheus":
        problem("want one variable 'datasource' of type datasource for Prometheus (picked at import)")
    # Multi-value variables stand for a regex alternation: '.*' is a value of that kind.
    variables = {v["name"]: ".*" for v in templating if v.get("type") == "query"}
    exprs = []
    for v in templating:
        if v.get("type") != "query":
            continue
        if v.get("datasource") != DATASOURCE:
            problem(f"variable {v['name']}: data source is not ${{datasource}}")
        q = v.get("query", {})
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q or "")
        if not m:
            problem(f"variable {v['name']}: query {q!r} is not label_values(SELECTOR, LABEL)")
            continue
        exprs.append((f"variable {v['name']}", substitute(m.group(1), variables, f"variable {v['name']}")))

    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        problem("panel ids missing or not unique")
    cells = {}
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("type") not in KNOWN_PANELS:
            problem(f"{where}: unknown type {p.get('type')}")
        if not p.get("title"):
            problem(f"{where}: no title")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["w"] <= 0 or g["h"] <= 0 or g["x"] + g["w"] > 24:
            problem(f"{where}: gridPos {g} is not within the 24 columns")
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problem(f"{where}: lies on panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = p.get("id")
            else:
                continue
            break
        if p.get("type") == "row":
            if p.get("collapsed") or p.get("panels"):
                problem(f"{where}: a collapsed row hides its panels from this check")
            continue
        if p.get("datasource") != DATASOURCE:
            problem(f"{where}: data source is not ${{datasource}}")
        targets = p.get("targets", [])
        if not targets:
            problem(f"{where}: no query")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)) or None in refs:
            problem(f"{where}: refIds missing or not unique")
        for t in targets:
            if t.get("datasource") != DATASOURCE:
                problem(f"{where} {t.get('refId')}: data source is not ${{datasource}}")
            if not t.get("expr", "").strip():
                problem(f"{where} {t.get('refId')}: no expression")
                continue
            exprs.append((f"{where} {t.get('refId')}", substitute(t["expr"], variables, where)))

    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
    with open(out, "w") as f:
        # Which panel each rule is: promtool names the rule's index in its errors.
        for i, (where, _) in enumerate(exprs):
            f.write(f"# rule {i}: {where}\n")
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, width=1000)
    for p in problems:
        print(f"FAIL {p}")
    print(f"dashboard: {len(panels)} panels, {len(exprs)} expressions written for promtool")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
