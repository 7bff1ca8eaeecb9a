#!/usr/bin/python3
"""docs.*: README.md and docs/ checked against the programs, so that they cannot drift apart.

    docs_test.py flags|modes|metrics|drop_reasons|tunnelctl|tests|self_reference|readme|links

  flags           every flag of tunnel-agent, tunnel-controller and tunnel-state (--help) is in
                  its flags table, every flag of those tables exists, and every --flag shown as
                  code in the documents belongs to one of the programs or to a tool they show
  modes           every TunnelMode of the proto is a row of docs/dataplane.md's modes table and
                  named in docs/api.md, and every row is a mode
  metrics         the families of a real scrape (an agent in a network namespace of its own with
                  a tunnel of each mode and a multipoint one; tunnel-controller run against a
                  fleet it cannot reach) are exactly those of docs/metrics.md's tables, with
                  their types and labels
  drop_reasons    the drop counters' reason values of that scrape are exactly the rows of the
                  drop reasons table, which also holds every reason the dataplane's source names;
                  every other reason value exported is in docs/metrics.md
  tunnelctl       every command, argument and option of `tunnelctl help` is shown as code in
                  docs/tunnelctl.md, and every --flag shown there exists
  tests           every CTest test group is a row of docs/testing.md's tables, and every row one
  self_reference  no document speaks of issue numbers, commit hashes or its own making
  readme          README.md is at most 300 lines, opens with `make demo` and `make test`, and
                  links every file of docs/
  links           every relative link of README.md and docs/ leads to a file, and to a heading

Environment (set by CTest): SOURCE_DIR, the repository; BIN_DIR, the built binaries (their
parent is the build directory). Exit 0 pass, 1 fail, 77 skipped (metrics and drop_reasons need
root for their network namespace).
"""

import atexit
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", ".."))
BIN_DIR = os.environ.get("BIN_DIR") or os.path.join(SOURCE_DIR, "build", "bin")
BUILD_DIR = os.path.dirname(os.path.abspath(BIN_DIR))
DOCS = os.path.join(SOURCE_DIR, "docs")
README = os.path.join(SOURCE_DIR, "README.md")

SKIP = 77
README_MAX_LINES = 300

# Documents other engineers own: checked for links and self-reference like every document,
# but their flags and tables are not this script's to demand.
NOT_REFERENCE = {"runbooks.md", "deploying.md"}

# Flags Abseil adds to every program (tunnel-agent parses its flags with Abseil).
ABSEIL_BUILTINS = {"--help", "--helpfull", "--helpshort", "--helppackage", "--version",
                   "--only_check_args", "--flagfile", "--fromenv", "--tryfromenv", "--undefok"}

# Flags of other tools the documents show in their examples (buf curl, grpcurl is single-dash,
# ctest, cmake, kubectl, git, perf, promtool, the test binaries...). A --flag in the documents
# that is neither one of the programs' nor one of these is a flag that does not exist.
EXTERNAL_FLAGS = {
    # buf curl
    "--unix-socket", "--protocol", "--data", "--list-methods", "--reflect-header",
    "--http2-prior-knowledge",
    # ctest, cmake
    "--output-on-failure", "--build", "--show-only",
    # Google Test and Google Benchmark binaries
    "--gtest_filter", "--benchmark_filter",
    # perf report
    "--no-children", "--sort",
    # kubectl, yamllint
    "--from-literal", "--strict",
    # etcd, etcdctl
    "--endpoints", "--client-cert-auth",
}

problems = []


def fail(message):
    problems.append(message)
    print(f"FAIL: {message}", file=sys.stderr)


def ok(message):
    print(f"ok: {message}")


def skip(message):
    print(f"SKIP: {message}", file=sys.stderr)
    sys.exit(SKIP)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def doc_files(include_others=True):
    """README.md and docs/*.md, as (short name, path)."""
    files = [("README.md", README)]
    for name in sorted(os.listdir(DOCS)):
        if name.endswith(".md") and (include_others or name not in NOT_REFERENCE):
            files.append((f"docs/{name}", os.path.join(DOCS, name)))
    return files


def run(args, timeout, check=True, **kwargs):
    """Runs a program to its end (bounded), returning stdout (stderr merged)."""
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, text=True, **kwargs)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"FAIL: {' '.join(args)} did not end within {timeout} s") from None
    except FileNotFoundError:
        raise SystemExit(f"FAIL: {args[0]} not found (build first: make build)") from None
    if check and proc.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}")
    return proc.stdout


# ---- Markdown -------------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")


def split_code(md):
    """(prose lines, code block lines): lines inside fenced blocks apart from the others."""
    prose, code = [], []
    inside = False
    for line in md.split("\n"):
        if FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append(line)
    return prose, code


def code_text(md):
    """Everything shown as code: fenced blocks and inline `spans`."""
    prose, code = split_code(md)
    spans = re.findall(r"`([^`\n]+)`", "\n".join(prose))
    return "\n".join(code + spans)


def headings(md):
    """The headings outside code blocks, as (level, text)."""
    prose, _ = split_code(md)
    out = []
    for line in prose:
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            out.append((len(m.group(1)), m.group(2)))
    return out


def slug(text):
    """GitHub's anchor of a heading: lower case, punctuation gone, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md):
    seen, out = {}, set()
    for _, text in headings(md):
        s = slug(text)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def section(md, title_pattern):
    """The text under the first heading matching title_pattern, up to the next heading of the
    same or a higher level (code blocks included)."""
    lines = md.split("\n")
    inside_code, start, level = False, None, None
    for i, line in enumerate(lines):
        if FENCE.match(line):
            inside_code = not inside_code
            continue
        if inside_code:
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if not m:
            continue
        if start is None:
            if re.search(title_pattern, m.group(2)):
                start, level = i + 1, len(m.group(1))
        elif len(m.group(1)) <= level:
            return "\n".join(lines[start:i])
    return "\n".join(lines[start:]) if start is not None else ""


def split_row(line):
    """The cells of a table row; `\\|` inside a cell is not a separator."""
    cells = re.split(r"(?<!\\)\|", line.strip())
    if cells and cells[0] == "":
        cells = cells[1:]
    if cells and cells[-1] == "":
        cells = cells[:-1]
    return [c.strip() for c in cells]


def tables(md):
    """Every table outside code blocks, as (header cells in lower case, rows of cells)."""
    prose, _ = split_code(md)
    out, block = [], []
    for line in prose + [""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and re.match(r"^\s*\|?\s*:?-{3,}", block[1]):
            header = [c.lower().strip("`* ") for c in split_row(block[0])]
            out.append((header, [split_row(r) for r in block[2:]]))
        block = []
    return out


def tables_headed(md, first_header):
    return [(h, rows) for h, rows in tables(md) if h and h[0] == first_header]


def codes(cell):
    return re.findall(r"`([^`]+)`", cell)


def flags_in(text):
    """--flags (and -f) in a piece of text: `--x=VALUE` gives --x."""
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def dash_equal(flag):
    """The programs whose help says '_' and '-' are the same: compare them alike."""
    return flag[:2] + flag[2:].replace("_", "-") if flag.startswith("--") else flag


# ---- the programs -----------------------------------------------------------------------------

def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"FAIL: missing {path}: build first (make build)")
    return path


def agent_flags():
    # Abseil's --help exits 1 after listing the flags.
    out = run([binary("tunnel-agent"), "--help"], timeout=30, check=False)
    flags = set(re.findall(r"^\s+(--[A-Za-z0-9_]+) \(", out, re.M))
    if len(flags) < 10:
        raise SystemExit(f"FAIL: found {len(flags)} flags in tunnel-agent --help:\n{out}")
    return flags


def usage_flags(program):
    """Flags of a hand-written help text: on its indented lines, in the part before the
    description (which follows a gap of two spaces or more)."""
    out = run([binary(program), "--help"], timeout=30)
    flags = set()
    for line in out.split("\n"):
        # Flag lines ("  --prune   ...") and command lines ("  plan -f FILE [--prune]  ...").
        if line.startswith("  "):
            term = re.split(r"\s{2,}", line.strip())[0]
            flags |= flags_in(term)
    if not flags:
        raise SystemExit(f"FAIL: found no flag in {program} --help:\n{out}")
    return flags


def tunnelctl_keywords():
    """Commands, arguments and options of `tunnelctl help`: the first word of each line indented
    by exactly two spaces (each of `a, b` when a line names several) in the sections whose
    heading speaks of commands, arguments or options; for `peer add` lines, both words."""
    out = run([binary("tunnelctl"), "help"], timeout=30)
    keywords, heading, in_heading = set(), "", False
    for line in out.split("\n"):
        if not line.strip():
            in_heading = False
            continue
        if not line.startswith(" "):
            heading = (heading + " " + line) if in_heading else line
            in_heading = True
            continue
        in_heading = False
        if not re.search(r"command|argument|option", heading, re.I):
            continue
        m = re.match(r"^  (\S.*)$", line)
        if not m:
            continue
        term = re.split(r"\s{2,}", m.group(1))[0]
        for piece in re.split(r",\s+", term):
            words = piece.split()
            if not words:
                continue
            word = re.sub(r"=.*$", "", words[0])
            keywords.add(word)
            if word == "peer" and len(words) > 1 and words[1].islower():
                keywords.add(f"peer {words[1]}")
    keywords.discard("")
    if len(keywords) < 20:
        raise SystemExit(f"FAIL: found only {sorted(keywords)} in tunnelctl help:\n{out}")
    return keywords, out


# ---- checks -------------------------------------------------------------------------------------

def table_flags(md, heading_pattern, what):
    text = section(md, heading_pattern)
    found = set()
    for header, rows in tables_headed(text, "flag"):
        for row in rows:
            for code in codes(row[0]):
                found |= {f for f in flags_in(code) if f.startswith("-")}
    if not found:
        fail(f"{what}: no flags table (first column 'flag') under a heading matching "
             f"/{heading_pattern}/")
    return found


def compare(what, actual, documented, where):
    missing = sorted(actual - documented)
    extra = sorted(documented - actual)
    for name in missing:
        fail(f"{what}: {name} is not documented in {where}")
    for name in extra:
        fail(f"{what}: {where} documents {name}, which does not exist")
    if not missing and not extra:
        ok(f"{what}: {len(actual)} documented in {where}, nothing else")


def check_flags():
    agent_md = read(os.path.join(DOCS, "agent.md"))
    fleet_md = read(os.path.join(DOCS, "fleet.md"))

    agent = agent_flags()
    documented = table_flags(agent_md, r"^Flags$", "tunnel-agent")
    compare("tunnel-agent flags", agent, documented - ABSEIL_BUILTINS, "docs/agent.md#flags")
    for builtin in sorted(documented & ABSEIL_BUILTINS):
        out = run([binary("tunnel-agent"), builtin], timeout=30, check=False)
        if "Unknown command line flag" in out:
            fail(f"tunnel-agent: docs/agent.md documents {builtin}, which it refuses")

    controller = {dash_equal(f) for f in usage_flags("tunnel-controller")}
    documented = {dash_equal(f) for f in table_flags(fleet_md, r"^Commands$", "tunnel-controller")}
    compare("tunnel-controller flags", controller, documented, "docs/fleet.md#commands")

    state = usage_flags("tunnel-state")
    documented = table_flags(agent_md, r"tunnel-state", "tunnel-state")
    compare("tunnel-state flags", state, documented, "docs/agent.md (tunnel-state)")

    # Any --flag shown as code anywhere must exist somewhere.
    _, help_text = tunnelctl_keywords()
    # The project's scripts that operators run say their flags in --help too.
    uninstall = run(["bash", os.path.join(SOURCE_DIR, "deploy", "kubernetes", "uninstall.sh"),
                     "--help"], timeout=30, check=False)
    roles = run(["bash", os.path.join(SOURCE_DIR, "deploy", "etcd", "roles.sh"), "--help"],
                timeout=30, check=False)
    known = ({dash_equal(f) for f in agent | ABSEIL_BUILTINS | controller | state}
             | {dash_equal(f) for f in flags_in(help_text)}
             | {dash_equal(f) for f in flags_in(uninstall)}
             | {dash_equal(f) for f in flags_in(roles)}
             | {dash_equal(f) for f in EXTERNAL_FLAGS})
    unknown = 0
    for short, path in doc_files(include_others=False):
        for flag in sorted(f for f in flags_in(code_text(read(path))) if f.startswith("--")):
            if dash_equal(flag) not in known:
                unknown += 1
                fail(f"{short} shows {flag}, a flag of none of the programs (nor of a tool "
                     f"listed in EXTERNAL_FLAGS of {os.path.relpath(__file__, SOURCE_DIR)})")
    if not unknown:
        ok("every --flag shown as code in README.md and docs/ exists")


def proto_modes():
    proto = read(os.path.join(SOURCE_DIR, "proto", "tunnelagent", "v1", "tunnel.proto"))
    m = re.search(r"enum\s+TunnelMode\s*\{(.*?)\}", proto, re.S)
    if not m:
        raise SystemExit("FAIL: no enum TunnelMode in proto/tunnelagent/v1/tunnel.proto")
    modes = [v for v in re.findall(r"\bTUNNEL_MODE_(\w+)\s*=", m.group(1)) if v != "UNSPECIFIED"]
    if not modes:
        raise SystemExit("FAIL: enum TunnelMode has no mode")
    return modes


def check_modes():
    modes = {m.lower() for m in proto_modes()}
    dataplane_md = read(os.path.join(DOCS, "dataplane.md"))
    documented = set()
    found = tables_headed(dataplane_md, "mode")
    if not found:
        fail("docs/dataplane.md has no modes table (first column 'mode')")
    for _, rows in found:
        for row in rows:
            documented |= set(codes(row[0]))
    compare("tunnel modes", modes, documented, "docs/dataplane.md's modes table")
    api_md = read(os.path.join(DOCS, "api.md"))
    for mode in sorted(modes):
        if f"TUNNEL_MODE_{mode.upper()}" not in api_md:
            fail(f"docs/api.md does not name TUNNEL_MODE_{mode.upper()}")


# ---- a real scrape ------------------------------------------------------------------------------

class Lab:
    """A network namespace of its own with an agent and a controller in it; everything it made
    is removed by close(), which runs on any exit (atexit, and SIGTERM/SIGINT/SIGHUP turned
    into an exit). The programs also run under `timeout`, so they end even if this script is
    killed without a chance to clean up."""

    def __init__(self):
        self.ns = f"docs{os.getpid()}-{random.randrange(1 << 16):04x}"
        self.dir = tempfile.mkdtemp(prefix="docs-test.")
        self.procs = []
        self.ns_made = False
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))

    def ip(self, *args):
        run(["ip", "-n", self.ns, *args], timeout=10)

    def start(self):
        run(["ip", "netns", "add", self.ns], timeout=10)
        self.ns_made = True
        self.ip("link", "set", "lo", "up")
        # The underlay: one end of a veth pair whose other end is in the same namespace, so
        # nothing sent can leave it. Addresses from the benchmarking ranges (RFC 2544's
        # 198.18.0.0/15, RFC 5180's 2001:2::/48), for the IPv6 modes too.
        self.ip("link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
        self.ip("addr", "add", "198.18.0.1/24", "dev", "ul0")
        self.ip("-6", "addr", "add", "2001:2::1/64", "dev", "ul0", "nodad")
        self.ip("link", "set", "ul0", "up")
        self.ip("link", "set", "ul1", "up")

    def spawn(self, name, args):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "timeout", "100", *args],
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    def log(self, name):
        try:
            return read(os.path.join(self.dir, f"{name}.log"))[-3000:]
        except OSError:
            return ""

    def stop(self, proc):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def close(self):
        for _, proc in self.procs:
            try:
                self.stop(proc)
            except Exception:  # cleanup goes on whatever one step did
                pass
        self.procs = []
        if self.ns_made:
            subprocess.run(["ip", "netns", "del", self.ns], timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.ns_made = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def scrape(self, port):
        return run(["ip", "netns", "exec", self.ns, "curl", "-sf", "--max-time", "5",
                    f"http://127.0.0.1:{port}/metrics"], timeout=10, check=False)


def parse_exposition(text):
    """{family: type}, {family: set of label names}, {family: set of reason values}."""
    types, labels, reasons = {}, {}, {}
    for line in text.split("\n"):
        m = re.match(r"^# TYPE (\S+) (\S+)", line)
        if m:
            types[m.group(1)] = m.group(2)
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][\w:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        name = m.group(1)
        family = name
        if name not in types:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in types:
                    family = name[: -len(suffix)]
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or "")
        labels.setdefault(family, set()).update(k for k, _ in pairs if k not in ("le", "quantile"))
        for k, v in pairs:
            if k == "reason":
                reasons.setdefault(family, set()).add(v)
    return types, labels, reasons


def real_scrape():
    """The agent's and the controller's exposition, from real processes."""
    if os.geteuid() != 0:
        skip("needs root (a network namespace, TUN devices)")
    for tool in ("ip", "curl", "timeout"):
        if shutil.which(tool) is None:
            skip(f"{tool} is missing")
    agent, tunnelctl, controller = (binary("tunnel-agent"), binary("tunnelctl"),
                                    binary("tunnel-controller"))
    lab = Lab()
    lab.start()
    sock = os.path.join(lab.dir, "agent.sock")
    proc = lab.spawn("agent", [agent, f"--state_dir={lab.dir}/state", f"--grpc_listen=unix:{sock}",
                               "--metrics_listen=127.0.0.1:9476"])
    ctl = [tunnelctl, f"--agent=unix:{sock}", "--timeout=5"]
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"FAIL: tunnel-agent exited {proc.returncode}:\n{lab.log('agent')}")
        if subprocess.run(ctl + ["list"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=10).returncode == 0:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: tunnel-agent did not answer in 15 s:\n{lab.log('agent')}")
        time.sleep(0.1)

    # One tunnel of each mode the proto has, and a multipoint one (its peers' drop reasons).
    for i, mode in enumerate(m.lower() for m in proto_modes()):
        if mode.startswith("ip6"):
            ends = ["local", "2001:2::1", "remote", f"2001:2::{i + 2:x}"]
        else:
            ends = ["local", "198.18.0.1", "remote", f"198.18.0.{i + 2}"]
        run(ctl + ["create", f"d-{mode}", "mode", mode, *ends], timeout=15)
    run(ctl + ["create", "d-mp", "mode", "gre", "local", "198.18.0.1", "multipoint"], timeout=15)
    agent_text = lab.scrape(9476)
    if "# TYPE" not in agent_text:
        raise SystemExit(f"FAIL: no metrics from the agent:\n{agent_text}\n{lab.log('agent')}")

    # The controller against a fleet whose agents are unix sockets that do not exist: it runs
    # its passes and serves its metrics, and sends nothing anywhere.
    fleet = os.path.join(lab.dir, "fleet.yaml")
    with open(fleet, "w") as f:
        f.write(f"""defaults: {{mode: gre, key: auto, innerPool: 198.19.0.0/24}}
nodes:
  - {{name: n1, agent: "unix:{lab.dir}/absent1.sock", underlay: 198.18.0.1}}
  - {{name: n2, agent: "unix:{lab.dir}/absent2.sock", underlay: 198.18.0.2}}
topology: {{type: mesh}}
""")
    cproc = lab.spawn("controller", [controller, "run", "-f", fleet, "--interval", "30s",
                                     "--metrics_listen", "127.0.0.1:9477", "--timeout", "1",
                                     "--retries", "0", "--progress", "plain"])
    deadline = time.monotonic() + 15
    while True:
        controller_text = lab.scrape(9477)
        # After its first pass: every family has its series.
        if re.search(r"^tunnelcontroller_last_apply_timestamp_seconds [1-9]", controller_text, re.M):
            break
        if cproc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("FAIL: tunnel-controller run served no metrics after a pass:\n"
                             + lab.log("controller"))
        time.sleep(0.2)
    lab.close()
    return agent_text, controller_text


def documented_metrics(md):
    """{name: (type, set of labels)} from the tables whose first column is 'metric'."""
    out = {}
    for header, rows in tables_headed(md, "metric"):
        col = {name: i for i, name in enumerate(header)}
        for row in rows:
            names = codes(row[0])
            mtype = row[col["type"]].strip("` ") if "type" in col and col["type"] < len(row) else ""
            labels = set()
            if "labels" in col and col["labels"] < len(row):
                labels = set(codes(row[col["labels"]]))
            for name in names:
                out[name] = (mtype, labels)
    return out


def check_metrics():
    agent_text, controller_text = real_scrape()
    types, labels, _ = parse_exposition(agent_text)
    ctypes, clabels, _ = parse_exposition(controller_text)
    types.update(ctypes)
    labels.update(clabels)
    metrics_md = read(os.path.join(DOCS, "metrics.md"))
    documented = documented_metrics(metrics_md)
    compare("metric families", set(types), set(documented), "docs/metrics.md")
    for name in sorted(set(types) & set(documented)):
        dtype, dlabels = documented[name]
        if dtype != types[name]:
            fail(f"{name} is a {types[name]}, docs/metrics.md says {dtype or 'nothing'}")
        seen = labels.get(name, set())
        # A family without a sample (keepalive ones, with no tunnel that has keepalive) shows
        # no labels: nothing to compare.
        if seen and seen != dlabels:
            fail(f"{name} has labels {sorted(seen)}, docs/metrics.md says {sorted(dlabels)}")


def check_drop_reasons():
    agent_text, controller_text = real_scrape()
    _, _, reasons = parse_exposition(agent_text)
    _, _, creasons = parse_exposition(controller_text)
    for family, values in creasons.items():
        reasons.setdefault(family, set()).update(values)
    drops = set()
    for family, values in reasons.items():
        if family.endswith("drops_total"):
            drops |= values
    if not drops:
        fail("the scrape has no drop counter with a reason label")
    metrics_md = read(os.path.join(DOCS, "metrics.md"))
    table = set()
    found = tables_headed(section(metrics_md, r"^Drop reasons$"), "reason")
    if not found:
        fail("docs/metrics.md has no drop reasons table (a section 'Drop reasons', first "
             "column 'reason')")
    for _, rows in found:
        for row in rows:
            table |= set(codes(row[0]))
    compare("drop reasons", drops, table, "docs/metrics.md#drop-reasons")

    # Every reason the dataplane can name, exported yet or not.
    source = read(os.path.join(SOURCE_DIR, "dataplane", "packet", "encap.cc"))
    m = re.search(r"DropReasonName\(DropReason reason\)\s*\{(.*?)\n\}", source, re.S)
    named = set(re.findall(r'return "(\w+)";', m.group(1))) - {"unknown"} if m else set()
    if not named:
        fail("cannot find DropReasonName's names in dataplane/packet/encap.cc")
    for reason in sorted(named - table):
        fail(f"drop reason {reason} (dataplane/packet/encap.cc) is not in the drop reasons table")

    # Other reason labels (the API listener's refusals) are documented too.
    documented_code = set(re.findall(r"`([^`]+)`", metrics_md))
    for family, values in sorted(reasons.items()):
        if family.endswith("drops_total"):
            continue
        for value in sorted(values - documented_code):
            fail(f"{family} exports reason=\"{value}\", which docs/metrics.md does not name")
    if not problems:
        ok("every other reason value exported is named in docs/metrics.md")


def check_tunnelctl():
    keywords, help_text = tunnelctl_keywords()
    md = read(os.path.join(DOCS, "tunnelctl.md"))
    code = code_text(md)
    tokens = set()
    for piece in re.split(r"\n", code):
        words = [w for w in re.split(r"[\s\[\]|,=()'\"{}<>]+", piece) if w]
        tokens |= {dash_equal(w) for w in words}
        tokens |= {f"{a} {b}" for a, b in zip(words, words[1:])}
    missing = sorted(k for k in keywords if dash_equal(k) not in tokens)
    for k in missing:
        fail(f"tunnelctl help names `{k}`, which docs/tunnelctl.md does not show as code")
    if not missing:
        ok(f"docs/tunnelctl.md shows all {len(keywords)} commands, arguments and options of "
           "tunnelctl help")
    known = {dash_equal(f) for f in flags_in(help_text)}
    for flag in sorted(f for f in flags_in(code) if f.startswith("--")):
        if dash_equal(flag) not in known and dash_equal(flag) not in EXTERNAL_FLAGS:
            fail(f"docs/tunnelctl.md shows {flag}, which tunnelctl help does not have")


def test_groups():
    """CTest's tests as groups: a Google Test binary (many tests, one command) is one group;
    any other test is a group of its own (integration.workers_test, deploy.seccomp, ...)."""
    if not os.path.exists(os.path.join(BUILD_DIR, "CTestTestfile.cmake")):
        raise SystemExit(f"FAIL: {BUILD_DIR} is not a CTest build directory")
    out = run(["ctest", "--show-only=json-v1"], timeout=60, cwd=BUILD_DIR)
    tests = json.loads(out).get("tests", [])
    if not tests:
        raise SystemExit("FAIL: ctest lists no test")
    by_program = {}
    for t in tests:
        command = t.get("command") or [""]
        by_program.setdefault(command[0], []).append(t["name"])
    groups = set()
    for program, names in by_program.items():
        base = os.path.basename(program)
        # Scripts run by an interpreter, or a program with one test: the test names itself.
        if base in ("bash", "sh", "python3") or len(names) == 1 and "." in names[0] \
                and names[0].split(".")[0].islower():
            groups |= set(names)
        else:
            groups.add(base)
    return groups


def check_tests():
    groups = test_groups()
    md = read(os.path.join(DOCS, "testing.md"))
    documented = set()
    for _, rows in tables_headed(md, "test"):
        for row in rows:
            documented |= set(codes(row[0]))
    compare("test groups", groups, documented, "docs/testing.md's tables")


SELF_REFERENCE = [
    (re.compile(r"(?<![\w&/#])#\d+\b"), "an issue or pull request number"),
    (re.compile(r"\b(issues?|pull request|pr|bug)\s*#?\d+\b", re.I), "an issue number"),
    (re.compile(r"\bsessions?\b", re.I), "a work session"),
    (re.compile(r"\bthis round\b|\bin this (change|patch|pr)\b", re.I),
     "the work of its own making"),
    (re.compile(r"\bcommit\s+[0-9a-f]{7,40}\b", re.I), "a commit hash"),
    # A bare hexadecimal word of 7 to 40 characters with both letters and digits (a full stop
    # may end the sentence after it); not part of 0x..., an address, a name or a path.
    (re.compile(r"(?<![\w.:/-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}"
                r"(?![\w:/-]|\.\w)"),
     "a commit hash"),
]


def check_self_reference():
    hits = 0
    for short, path in doc_files():
        for number, line in enumerate(read(path).split("\n"), 1):
            for pattern, what in SELF_REFERENCE:
                m = pattern.search(line)
                if m:
                    hits += 1
                    fail(f"{short}:{number}: {what} ({m.group(0)!r}): {line.strip()[:120]}")
    if not hits:
        ok(f"{len(doc_files())} documents speak of the project only")


def check_readme():
    text = read(README)
    lines = text.split("\n")
    count = len(lines) - (1 if text.endswith("\n") else 0)
    if count > README_MAX_LINES:
        fail(f"README.md has {count} lines, more than {README_MAX_LINES}: move detail to docs/")
    else:
        ok(f"README.md has {count} lines")
    # The opening: the title, then a code block of exactly `make demo` and `make test`.
    body = [l for l in lines if l.strip()]
    if not body or not body[0].startswith("# "):
        fail("README.md does not start with its title")
    elif len(body) < 2 or not FENCE.match(body[1]):
        fail("README.md does not open with a code block right after its title")
    else:
        commands = []
        for line in body[2:]:
            if FENCE.match(line):
                break
            command = line.split("#", 1)[0].strip()
            if command:
                commands.append(command)
        if commands != ["make demo", "make test"]:
            fail(f"README.md opens with {commands}, not exactly ['make demo', 'make test']")
        else:
            ok("README.md opens with make demo and make test")
    # The rest is in docs/: the README leads to every document.
    for name in sorted(os.listdir(DOCS)):
        if name.endswith(".md") and not re.search(rf"\]\(docs/{re.escape(name)}(#[^)]*)?\)", text):
            fail(f"README.md does not link docs/{name}")


def check_links():
    bad = 0
    count = 0
    cache = {}
    for short, path in doc_files():
        prose, _ = split_code(read(path))
        text = "\n".join(re.sub(r"`[^`]*`", "", l) for l in prose)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            count += 1
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
                if file_part else path
            if not os.path.exists(dest):
                bad += 1
                fail(f"{short}: link {target}: {os.path.relpath(dest, SOURCE_DIR)} does not exist")
                continue
            if anchor and dest.endswith(".md"):
                if dest not in cache:
                    cache[dest] = anchors(read(dest))
                if anchor not in cache[dest]:
                    bad += 1
                    fail(f"{short}: link {target}: no heading #{anchor} in "
                         f"{os.path.relpath(dest, SOURCE_DIR)}")
    if not bad:
        ok(f"{count} relative links lead somewhere")


CHECKS = {
    "flags": check_flags,
    "modes": check_modes,
    "metrics": check_metrics,
    "drop_reasons": check_drop_reasons,
    "tunnelctl": check_tunnelctl,
    "tests": check_tests,
    "self_reference": check_self_reference,
    "readme": check_readme,
    "links": check_links,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        print(f"usage: {sys.argv[0]} {'|'.join(CHECKS)}", file=sys.stderr)
        return 1
    CHECKS[sys.argv[1]]()
    if problems:
        print(f"docs.{sys.argv[1]}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
