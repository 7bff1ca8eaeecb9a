"""Control-plane checks of tunnel-agent over gRPC, for control_plane_test.sh.

Runs under Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf), with the message
classes protoc generated into GEN_DIR, as python_client.py does (whose Client it extends).
Where the kernel must agree with an answer it looks with `ip -n NAMESPACE -j ...`.

Usage: control_plane_client.py GEN_DIR SOCKET COMMAND [ARGS]
  info NODE_NAME MAX_TUNNELS         GetAgentInfo: version, node name, GRE/IPIP, io_uring, ...
  idempotent REMOTE                  request_id: retries answer the same, a reused id with
                                     another body is INVALID_ARGUMENT
  update-inplace NS NAME ROUTE MTU   add ROUTE and set MTU on NAME: same device
  update-recreate NS NAME            NAME from GRE to IPIP: a new device, same addresses
  etag REMOTE                        stale etag: ABORTED on UpdateTunnel and DeleteTunnel
  watch NS REMOTE                    WatchTunnels: snapshot, changes, REPAIRED on
                                     `ip link set down`, STATE_CHANGED on a loop, resume
                                     with since_revision, RESYNC
  apply NS REMOTE                    ApplyTunnels of owner "fleet": dry run, create, no-op,
                                     update, recreate, prune; other tunnels untouched
  limit MAX REMOTE                   --max_tunnels=MAX: the next create is RESOURCE_EXHAUSTED
  overlap NAME                       addresses and routes overlapping NAME's are refused
  rollback NS PREFIX NAME            PREFIX is routed by another device: the kernel refuses
                                     it, and a create, an update of NAME and an apply that
                                     need it leave nothing behind
  list NS REMOTE                     ListTunnels: pages and filters
  names                              print the agent's tunnel names, sorted, one line
Prints one line per check; exits 1 on the first failed check.
"""

import json
import queue
import re
import subprocess
import sys
import threading
import time

import grpc

import python_client
from python_client import fail, ok

TIMEOUT = python_client.TIMEOUT
STATE_POLL = 3.0  # seconds: the agent looks at its devices every second


def ip(ns, *args, check=True):
    """`ip -n NS -j ARGS`, parsed; None when the command fails and check is False."""
    r = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        if check:
            fail(f"ip -n {ns} {' '.join(args)}: {r.stderr.strip()}")
        return None
    return json.loads(r.stdout or "[]")


def ip_do(ns, *args):
    r = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        fail(f"ip -n {ns} {' '.join(args)}: {r.stderr.strip()}")


def link(ns, name):
    """The device's `ip -d link` object, or None."""
    links = ip(ns, "-d", "link", "show", "dev", name, check=False)
    return links[0] if links else None


def route_devs(ns, prefix):
    """The devices of the main table's routes of exactly PREFIX."""
    return sorted(r.get("dev", "") for r in ip(ns, "route", "show", prefix))


def addresses(ns):
    """Every IPv4 address of the namespace, as 'dev address/len'."""
    return {f"{a['ifname']} {i['local']}/{i['prefixlen']}"
            for a in ip(ns, "-4", "addr", "show") for i in a.get("addr_info", [])}


class Client(python_client.Client):
    def __init__(self, socket):
        super().__init__(socket)
        from tunnelagent.v1 import tunnel_pb2 as pb

        def method(name, request_cls, response_cls):
            call = self.channel.unary_unary(
                "/tunnelagent.v1.TunnelService/" + name,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            return lambda request: call(request, timeout=TIMEOUT)

        self.update = method("UpdateTunnel", pb.UpdateTunnelRequest, pb.UpdateTunnelResponse)
        self.apply = method("ApplyTunnels", pb.ApplyTunnelsRequest, pb.ApplyTunnelsResponse)
        self.info = method("GetAgentInfo", pb.GetAgentInfoRequest, pb.AgentInfo)
        self.watch_call = self.channel.unary_stream(
            "/tunnelagent.v1.TunnelService/WatchTunnels",
            request_serializer=pb.WatchTunnelsRequest.SerializeToString,
            response_deserializer=pb.TunnelEvent.FromString,
        )

    def tunnel(self, name, mode, remote, addresses=(), routes=(), key=None, mtu=0, labels=None):
        pb = self.pb
        t = pb.Tunnel(name=name, mode=pb.TunnelMode.Value("TUNNEL_MODE_" + mode.upper()),
                      remote=remote, addresses=list(addresses), routes=list(routes), mtu=mtu,
                      labels=labels or {})
        if key is not None:
            t.key = key
        return t

    def names(self, **filters):
        return [t.name for t in self.list(self.pb.ListTunnelsRequest(**filters)).tunnels]

    def revision(self):
        return self.info(self.pb.GetAgentInfoRequest()).revision

    def expect_code(self, what, call, request, code):
        """As python_client's, but returns the error's details."""
        try:
            response = call(request)
        except grpc.RpcError as e:
            if e.code() != code:
                fail(f"{what}: got {e.code().name} ({e.details()}), want {code.name}")
            ok(f"{what} -> {code.name}: {e.details()}")
            return e.details()
        fail(f"{what}: succeeded ({response}), want {code.name}")


class Watcher:
    """One WatchTunnels stream, read by a thread into a queue."""

    def __init__(self, client, since=0):
        self.pb = client.pb
        self.call = client.watch_call(client.pb.WatchTunnelsRequest(since_revision=since),
                                      timeout=60)
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for event in self.call:
                self.events.put(event)
        except grpc.RpcError as e:
            self.events.put(e)

    def type_name(self, event):
        return self.pb.TunnelEvent.Type.Name(event.type)

    def next(self, want, timeout=TIMEOUT):
        """The next event, which must be of type WANT, within TIMEOUT seconds."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            fail(f"WatchTunnels: no event within {timeout} s, want {want}")
        if isinstance(event, grpc.RpcError):
            fail(f"WatchTunnels ended: {event.code().name}: {event.details()}; want {want}")
        if self.type_name(event) != want:
            fail(f"WatchTunnels: got {self.type_name(event)} {event.tunnel.name} "
                 f"(revision {event.revision}), want {want}")
        return event

    def quiet(self, seconds):
        """Nothing more arrives within SECONDS."""
        try:
            event = self.events.get(timeout=seconds)
        except queue.Empty:
            return
        if isinstance(event, grpc.RpcError):
            fail(f"WatchTunnels ended: {event.code().name}: {event.details()}")
        fail(f"WatchTunnels: unexpected {self.type_name(event)} {event.tunnel.name} "
             f"(revision {event.revision})")

    def close(self):
        self.call.cancel()


def cmd_info(c, node_name, max_tunnels):
    pb = c.pb
    info = c.info(pb.GetAgentInfoRequest())
    if not re.fullmatch(r"\d+\.\d+\.\d+\S*", info.version):
        fail(f"GetAgentInfo: version {info.version!r} is not a version number")
    if info.node_name != node_name:
        fail(f"GetAgentInfo: node_name {info.node_name!r}, want {node_name!r} (--node_name)")
    modes = sorted(pb.TunnelMode.Name(m) for m in info.supported_modes)
    every = sorted(pb.TunnelMode.Name(m) for m in pb.TunnelMode.values()
                   if m != pb.TUNNEL_MODE_UNSPECIFIED)
    if modes != every:
        fail(f"GetAgentInfo: supported_modes {modes}, want every mode {every}")
    if info.io_backend != "io_uring":
        fail(f"GetAgentInfo: io_backend {info.io_backend!r}, want io_uring")
    if info.max_tunnels != int(max_tunnels):
        fail(f"GetAgentInfo: max_tunnels {info.max_tunnels}, want {max_tunnels}")
    missing = {"request_id", "etag", "watch", "apply"} - set(info.features)
    if missing:
        fail(f"GetAgentInfo: features {list(info.features)} lack {sorted(missing)}")
    count = len(c.names())
    if info.tunnel_count != count:
        fail(f"GetAgentInfo: tunnel_count {info.tunnel_count}, ListTunnels has {count}")
    age = time.time() - info.start_time.ToSeconds()
    if not 0 <= age < 600:
        fail(f"GetAgentInfo: start_time {info.start_time.ToJsonString()} is {age:.0f} s ago")
    ok(f"GetAgentInfo: version {info.version}, node {info.node_name}, modes GRE IPIP, "
       f"io_backend {info.io_backend}, max_tunnels {info.max_tunnels}, "
       f"{info.tunnel_count} tunnels, revision {info.revision}, features {' '.join(info.features)}")


def cmd_idempotent(c, remote):
    pb = c.pb
    code = grpc.StatusCode
    rev = c.revision()
    t = c.tunnel("idem1", "gre", remote, key=11, addresses=["10.31.0.1/30"])
    first = c.create(pb.CreateTunnelRequest(tunnel=t, request_id="create-idem1"))
    again = c.create(pb.CreateTunnelRequest(tunnel=t, request_id="create-idem1"))
    if again.SerializeToString(deterministic=True) != first.SerializeToString(deterministic=True):
        fail(f"CreateTunnel retried: answer differs:\n{first}\nvs\n{again}")
    ok(f"CreateTunnel idem1 twice with request_id create-idem1 -> the same answer "
       f"(ifindex {again.status.ifindex}, etag {again.etag})")
    if c.names().count("idem1") != 1 or c.revision() != rev + 1:
        fail(f"after the retried create: {c.names()}, revision {c.revision()}, want {rev + 1}")
    ok("one tunnel idem1, revision moved by one")
    c.expect_code("CreateTunnel with request_id create-idem1 and another body", c.create,
                  pb.CreateTunnelRequest(tunnel=c.tunnel("idem2", "gre", remote, key=12),
                                         request_id="create-idem1"),
                  code.INVALID_ARGUMENT)
    if "idem2" in c.names():
        fail("the refused retry created idem2")
    c.expect_code("CreateTunnel with a 129-character request_id", c.create,
                  pb.CreateTunnelRequest(tunnel=c.tunnel("idem2", "gre", remote, key=12),
                                         request_id="r" * 129), code.INVALID_ARGUMENT)

    update = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(name="idem1", labels={"try": "1"}),
                                    request_id="update-idem1")
    update.update_mask.paths.append("labels")
    first = c.update(update)
    rev = c.revision()
    again = c.update(update)
    if again.SerializeToString(deterministic=True) != first.SerializeToString(deterministic=True):
        fail(f"UpdateTunnel retried: answer differs:\n{first}\nvs\n{again}")
    if list(first.changed_fields) != ["labels"] or c.revision() != rev:
        fail(f"UpdateTunnel retried: changed_fields {list(first.changed_fields)}, revision "
             f"{c.revision()} (want {rev})")
    ok("UpdateTunnel retried with request_id update-idem1 -> the same answer, no second change")

    delete = pb.DeleteTunnelRequest(name="idem1", request_id="delete-idem1")
    c.delete(delete)
    rev = c.revision()
    c.delete(delete)  # a retry of a delete that took effect: OK, not NOT_FOUND
    if c.revision() != rev or "idem1" in c.names():
        fail(f"DeleteTunnel retried: revision {c.revision()} (want {rev}), {c.names()}")
    ok("DeleteTunnel retried with request_id delete-idem1 -> OK again, nothing more happened")
    c.expect_code("DeleteTunnel idem1 again without request_id", c.delete,
                  pb.DeleteTunnelRequest(name="idem1"), code.NOT_FOUND)


def cmd_update_inplace(c, ns, name, route, mtu):
    pb = c.pb
    mtu = int(mtu)
    before = c.get(pb.GetTunnelRequest(name=name))
    kernel = link(ns, name)
    if kernel is None or kernel["ifindex"] != before.status.ifindex:
        fail(f"{name}: device {kernel} does not match GetTunnel's ifindex {before.status.ifindex}")
    request = pb.UpdateTunnelRequest(
        tunnel=pb.Tunnel(name=name, routes=list(before.routes) + [route], mtu=mtu,
                         etag=before.etag))
    request.update_mask.paths.extend(["routes", "mtu"])
    r = c.update(request)
    if r.recreated or sorted(r.changed_fields) != ["mtu", "routes"]:
        fail(f"UpdateTunnel {name} routes+mtu: recreated {r.recreated}, changed_fields "
             f"{list(r.changed_fields)}, want false and [mtu, routes]")
    t = r.tunnel
    if t.status.ifindex != before.status.ifindex or t.status.mtu != mtu or t.mtu != mtu:
        fail(f"UpdateTunnel {name}: ifindex {t.status.ifindex} mtu {t.status.mtu}/{t.mtu}, want "
             f"{before.status.ifindex} and {mtu}")
    if route not in t.routes or t.etag == before.etag or t.status.state != pb.OPER_STATE_UP:
        fail(f"UpdateTunnel {name}: answer {t}")
    ok(f"UpdateTunnel {name} add route {route}, mtu {mtu} -> recreated=false, changed_fields "
       f"{list(r.changed_fields)}, new etag, UP")
    kernel = link(ns, name)
    if kernel is None or kernel["ifindex"] != before.status.ifindex or kernel["mtu"] != mtu:
        fail(f"{name} in the kernel: {kernel}; want ifindex {before.status.ifindex}, mtu {mtu}")
    ok(f"ip link: {name} is the same device (ifindex {kernel['ifindex']}), mtu {kernel['mtu']}")
    if route_devs(ns, route) != [name]:
        fail(f"ip route: {route} goes via {route_devs(ns, route)}, want [{name}]")
    ok(f"ip route: {route} dev {name}")

    same = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(name=name, mtu=mtu))
    same.update_mask.paths.append("mtu")
    r = c.update(same)
    if r.recreated or r.changed_fields or r.tunnel.etag != t.etag:
        fail(f"UpdateTunnel {name} to what it is: {r}")
    ok(f"UpdateTunnel {name} to its current mtu -> changed_fields [], etag unchanged")
    bad = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(name=name, mtu=mtu))
    bad.update_mask.paths.append("status")
    c.expect_code(f"UpdateTunnel {name} update_mask [status]", c.update, bad,
                  grpc.StatusCode.INVALID_ARGUMENT)


def cmd_update_recreate(c, ns, name):
    pb = c.pb
    before = c.get(pb.GetTunnelRequest(name=name))
    if before.mode != pb.TUNNEL_MODE_GRE:
        fail(f"{name} is {pb.TunnelMode.Name(before.mode)}, want GRE to start with")
    # IPIP takes no key: the mask names it too, and the patch has none.
    request = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(name=name, mode=pb.TUNNEL_MODE_IPIP))
    request.update_mask.paths.extend(["mode", "key"])
    r = c.update(request)
    want_fields = ["key", "mode"] if before.HasField("key") else ["mode"]
    if not r.recreated or sorted(r.changed_fields) != want_fields:
        fail(f"UpdateTunnel {name} to IPIP: recreated {r.recreated}, changed_fields "
             f"{list(r.changed_fields)}, want true and {want_fields}")
    t = r.tunnel
    if (t.mode != pb.TUNNEL_MODE_IPIP or t.HasField("key") or t.status.state != pb.OPER_STATE_UP
            or t.status.ifindex == before.status.ifindex or t.status.ifindex == 0):
        fail(f"UpdateTunnel {name} to IPIP: answer {t}")
    if list(t.addresses) != list(before.addresses) or list(t.routes) != list(before.routes):
        fail(f"UpdateTunnel {name} to IPIP lost addresses or routes: {t}")
    ok(f"UpdateTunnel {name} GRE -> IPIP: recreated=true, changed_fields "
       f"{list(r.changed_fields)}, ifindex {before.status.ifindex} -> {t.status.ifindex}")
    kernel = link(ns, name)
    if kernel is None or kernel["ifindex"] != t.status.ifindex:
        fail(f"{name} in the kernel: {kernel}, want ifindex {t.status.ifindex}")
    for a in t.addresses:
        if f"{name} {a}" not in addresses(ns):
            fail(f"ip addr: {name} lacks {a} after the recreate")
    for p in t.routes:
        if route_devs(ns, p) != [name]:
            fail(f"ip route: {p} goes via {route_devs(ns, p)} after the recreate, want [{name}]")
    ok(f"ip link/addr/route: new device {name} (ifindex {kernel['ifindex']}) with "
       f"{len(t.addresses)} address(es) and {len(t.routes)} route(s)")


def cmd_etag(c, remote):
    pb = c.pb
    code = grpc.StatusCode
    t0 = c.create(pb.CreateTunnelRequest(tunnel=c.tunnel("etag1", "gre", remote, key=21)))
    request = pb.UpdateTunnelRequest(
        tunnel=pb.Tunnel(name="etag1", labels={"v": "1"}, etag=t0.etag))
    request.update_mask.paths.append("labels")
    t1 = c.update(request).tunnel
    if not t1.etag or t1.etag == t0.etag:
        fail(f"UpdateTunnel etag1 labels: etag {t0.etag} -> {t1.etag}, want a new one")
    ok(f"UpdateTunnel etag1 with the current etag -> OK, etag {t0.etag} -> {t1.etag}")
    stale = pb.UpdateTunnelRequest(
        tunnel=pb.Tunnel(name="etag1", labels={"v": "2"}, etag=t0.etag))
    stale.update_mask.paths.append("labels")
    c.expect_code("UpdateTunnel etag1 with a stale etag", c.update, stale, code.ABORTED)
    c.expect_code("DeleteTunnel etag1 with a stale etag", c.delete,
                  pb.DeleteTunnelRequest(name="etag1", etag=t0.etag), code.ABORTED)
    t = c.get(pb.GetTunnelRequest(name="etag1"))
    if t.etag != t1.etag or dict(t.labels) != {"v": "1"}:
        fail(f"after the refused calls etag1 is {t}")
    ok("etag1 unchanged by the refused calls")
    c.delete(pb.DeleteTunnelRequest(name="etag1", etag=t1.etag))
    ok("DeleteTunnel etag1 with the current etag -> OK")


def cmd_watch(c, ns, remote):
    pb = c.pb
    w = Watcher(c)
    existing = []
    while True:
        event = w.events.get(timeout=TIMEOUT)
        if isinstance(event, grpc.RpcError):
            fail(f"WatchTunnels: {event.code().name}: {event.details()}")
        if w.type_name(event) != "EXISTING":
            break
        existing.append(event)
    if w.type_name(event) != "SYNCED":
        fail(f"WatchTunnels: after {len(existing)} EXISTING got {w.type_name(event)}, want SYNCED")
    synced = event.revision
    names = [e.tunnel.name for e in existing]
    if names != c.names() or any(e.revision != synced for e in existing):
        fail(f"WatchTunnels: EXISTING {names} at {[e.revision for e in existing]}, SYNCED at "
             f"{synced}; ListTunnels {c.names()}")
    ok(f"WatchTunnels: EXISTING {' '.join(names)}, SYNCED at revision {synced}")

    seen = []  # (type, revision) after SYNCED
    # A remote of w1's own (never sent to: w1 carries no traffic), so that the loop made below
    # is w1's alone: a tunnel to the same remote would be looped through w1 as well.
    w1_remote = remote.rsplit(".", 1)[0] + ".99"

    def expect(want, what, timeout=TIMEOUT, state=None):
        t0 = time.monotonic()
        e = w.next(want, timeout)
        if e.tunnel.name != "w1":
            fail(f"WatchTunnels: {want} of {e.tunnel.name}, want w1")
        last = seen[-1][1] if seen else synced
        if e.revision != last + 1:
            fail(f"WatchTunnels: {want} at revision {e.revision}, want {last + 1}")
        if state is not None and e.tunnel.status.state != state:
            fail(f"WatchTunnels: {want} with state {pb.OperState.Name(e.tunnel.status.state)}")
        seen.append((want, e.revision))
        ok(f"WatchTunnels: {want} w1 at revision {e.revision} ({what}, "
           f"{time.monotonic() - t0:.1f} s)")
        return e

    c.create(pb.CreateTunnelRequest(
        tunnel=c.tunnel("w1", "gre", w1_remote, key=31, addresses=["10.41.0.1/30"])))
    expect("ADDED", "CreateTunnel")
    request = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(name="w1", mtu=1400))
    request.update_mask.paths.append("mtu")
    c.update(request)
    e = expect("UPDATED", "UpdateTunnel mtu 1400")
    if e.tunnel.mtu != 1400:
        fail(f"WatchTunnels: UPDATED carries mtu {e.tunnel.mtu}, want 1400")
    # Set down behind the agent's back: put back up, one REPAIRED event saying so.
    ip_do(ns, "link", "set", "dev", "w1", "down")
    e = expect("REPAIRED", "ip link set w1 down", STATE_POLL, pb.OPER_STATE_UP)
    if "set up again" not in e.detail:
        fail(f"WatchTunnels: REPAIRED detail {e.detail!r}")
    # A route of someone else's taking the remote into w1 itself: a loop, DOWN until it goes.
    ip_do(ns, "route", "add", f"{w1_remote}/32", "dev", "w1")
    e = expect("STATE_CHANGED", "route to the remote into w1", STATE_POLL, pb.OPER_STATE_DOWN)
    t = c.get(pb.GetTunnelRequest(name="w1"))
    if t.status.state != pb.OPER_STATE_DOWN or "loop" not in t.status.reason:
        fail(f"GetTunnel w1 with a loop: {t.status}")
    ok(f"GetTunnel w1: OPER_STATE_DOWN ({t.status.reason})")
    if c.names(state=pb.OPER_STATE_DOWN) != ["w1"]:
        fail(f"ListTunnels state DOWN: {c.names(state=pb.OPER_STATE_DOWN)}, want [w1]")
    ok("ListTunnels state=DOWN -> [w1]")
    ip_do(ns, "route", "del", f"{w1_remote}/32", "dev", "w1")
    expect("STATE_CHANGED", "the route gone", STATE_POLL, pb.OPER_STATE_UP)
    c.delete(pb.DeleteTunnelRequest(name="w1"))
    e = expect("DELETED", "DeleteTunnel")
    if e.tunnel.mtu != 1400 or list(e.tunnel.addresses) != ["10.41.0.1/30"]:
        fail(f"WatchTunnels: DELETED does not carry w1 as it was: {e.tunnel}")
    w.quiet(1.5)
    ok("WatchTunnels: nothing else in 1.5 s")
    w.close()

    # A watcher that saw ADDED and went away gets exactly what it missed, and no snapshot.
    after = seen[0][1]
    r = Watcher(c, since=after)
    for want, revision in seen[1:]:
        e = r.next(want)
        if e.revision != revision:
            fail(f"resumed WatchTunnels: {want} at {e.revision}, want {revision}")
    r.quiet(1.5)
    r.close()
    ok(f"WatchTunnels since_revision {after}: exactly "
       f"{' '.join(f'{t}@{rev}' for t, rev in seen[1:])}, then nothing")

    last = seen[-1][1]
    r = Watcher(c, since=last)
    r.quiet(1.5)
    c.create(pb.CreateTunnelRequest(tunnel=c.tunnel("w2", "gre", remote, key=32)))
    e = r.next("ADDED")
    if e.revision != last + 1 or e.tunnel.name != "w2":
        fail(f"WatchTunnels since_revision {last}: ADDED {e.tunnel.name} at {e.revision}")
    r.close()
    ok(f"WatchTunnels since_revision {last} (up to date): quiet, then ADDED w2 at {e.revision}")

    ahead = last + 1000
    r = Watcher(c, since=ahead)
    e = r.next("RESYNC")
    names = []
    while True:
        e = r.events.get(timeout=TIMEOUT)
        if isinstance(e, grpc.RpcError) or r.type_name(e) != "EXISTING":
            break
        names.append(e.tunnel.name)
    if isinstance(e, grpc.RpcError) or r.type_name(e) != "SYNCED" or names != c.names():
        fail(f"WatchTunnels after RESYNC: EXISTING {names} then {e}; ListTunnels {c.names()}")
    r.close()
    ok(f"WatchTunnels since_revision {ahead} (ahead of the agent): RESYNC, EXISTING "
       f"{' '.join(names)}, SYNCED at {e.revision}")
    c.delete(pb.DeleteTunnelRequest(name="w2"))


def cmd_apply(c, ns, remote):
    pb = c.pb
    code = grpc.StatusCode
    action = pb.TunnelChange.Action.Name

    def fleet(*tunnels, prune=False, dry_run=False, owner="fleet"):
        return pb.ApplyTunnelsRequest(owner=owner, tunnels=list(tunnels), prune=prune,
                                      dry_run=dry_run)

    def plan(response):
        return {ch.name: (action(ch.action), sorted(ch.changed_fields))
                for ch in response.changes}

    def expect_plan(response, want, what):
        got = plan(response)
        if got != want or [ch.name for ch in response.changes] != sorted(got):
            fail(f"ApplyTunnels {what}: changes {got}, want {want} (sorted by name)")
        ok(f"ApplyTunnels {what} -> " + ", ".join(
            f"{n} {a}" + (f" {f}" if f else "") for n, (a, f) in sorted(got.items())))

    f1 = c.tunnel("f1", "gre", remote, key=41, addresses=["10.51.0.1/30"],
                  routes=["10.151.0.0/24"])
    f2 = c.tunnel("f2", "gre", remote, key=42, addresses=["10.51.0.5/30"])
    # A tunnel of nobody's, made directly: apply and prune never touch it.
    d1 = c.create(pb.CreateTunnelRequest(
        tunnel=c.tunnel("d1", "gre", remote, key=43, addresses=["10.51.0.9/30"])))
    ok(f"CreateTunnel d1 directly, labels {dict(d1.labels)}")

    before, rev = c.names(), c.revision()
    r = c.apply(fleet(f1, f2, dry_run=True))
    expect_plan(r, {"f1": ("CREATE", []), "f2": ("CREATE", [])}, "f1 f2 dry_run")
    if not r.dry_run or r.revision != rev or c.names() != before or c.revision() != rev:
        fail(f"dry run changed something: {r}; tunnels {c.names()}, revision {c.revision()}")
    if link(ns, "f1") or link(ns, "f2"):
        fail("dry run made a device")
    ok(f"dry run: nothing created, revision still {rev}, no device")

    r = c.apply(fleet(f1, f2))
    expect_plan(r, {"f1": ("CREATE", []), "f2": ("CREATE", [])}, "f1 f2")
    if r.dry_run or r.revision != rev + 2 or c.revision() != rev + 2:
        fail(f"apply: revision {r.revision}, agent {c.revision()}, want {rev + 2}")
    for name in ("f1", "f2"):
        t = c.get(pb.GetTunnelRequest(name=name))
        if dict(t.labels) != {"owner": "fleet"} or t.status.state != pb.OPER_STATE_UP:
            fail(f"{name} after apply: labels {dict(t.labels)}, {t.status}")
        if link(ns, name) is None or link(ns, name)["ifindex"] != t.status.ifindex:
            fail(f"{name}: no device of ifindex {t.status.ifindex}")
    if route_devs(ns, "10.151.0.0/24") != ["f1"]:
        fail(f"ip route: 10.151.0.0/24 via {route_devs(ns, '10.151.0.0/24')}, want [f1]")
    ok(f"f1 and f2 UP with label owner=fleet, devices and f1's route there, revision {r.revision}")
    ifindex = {n: c.get(pb.GetTunnelRequest(name=n)).status.ifindex for n in ("f1", "f2")}

    r = c.apply(fleet(f1, f2))
    expect_plan(r, {"f1": ("UNCHANGED", []), "f2": ("UNCHANGED", [])}, "f1 f2 again")
    if r.revision != rev + 2 or c.revision() != rev + 2:
        fail(f"the identical apply moved the revision to {c.revision()}")
    ok(f"identical apply: revision still {rev + 2}")

    f1.mtu = 1300
    r = c.apply(fleet(f1, f2))
    expect_plan(r, {"f1": ("UPDATE", ["mtu"]), "f2": ("UNCHANGED", [])}, "f1 mtu 1300")
    k = link(ns, "f1")
    if k["ifindex"] != ifindex["f1"] or k["mtu"] != 1300:
        fail(f"f1 after the in-place apply: {k}, want ifindex {ifindex['f1']}, mtu 1300")
    ok(f"ip link: f1 same device (ifindex {k['ifindex']}), mtu 1300")

    # Another remote: the lab's IPIP tunnel to REMOTE already carries keyless IPIP there.
    f2 = c.tunnel("f2", "ipip", "198.18.0.204", addresses=["10.51.0.5/30"])
    r = c.apply(fleet(f1, f2))
    expect_plan(r, {"f1": ("UNCHANGED", []), "f2": ("RECREATE", ["key", "mode", "remote"])},
                "f2 GRE -> IPIP")
    k = link(ns, "f2")
    if k is None or k["ifindex"] == ifindex["f2"]:
        fail(f"f2 after RECREATE: {k}, want a new device (was ifindex {ifindex['f2']})")
    ok(f"ip link: f2 is a new device (ifindex {ifindex['f2']} -> {k['ifindex']})")

    r = c.apply(fleet(f1, prune=True, dry_run=True))
    expect_plan(r, {"f1": ("UNCHANGED", []), "f2": ("DELETE", [])}, "f1 prune dry_run")
    if "f2" not in c.names() or link(ns, "f2") is None:
        fail("the prune dry run deleted f2")
    ok("prune dry run: f2 still there")

    d1_etag = c.get(pb.GetTunnelRequest(name="d1")).etag
    r = c.apply(fleet(f1, prune=True))
    expect_plan(r, {"f1": ("UNCHANGED", []), "f2": ("DELETE", [])}, "f1 prune")
    if "f2" in c.names() or link(ns, "f2") is not None:
        fail(f"prune left f2: {c.names()}, device {link(ns, 'f2')}")
    ok("f2 deleted, its device gone")
    d1 = c.get(pb.GetTunnelRequest(name="d1"))
    if d1.etag != d1_etag or link(ns, "d1") is None:
        fail(f"prune touched d1: {d1}")
    ok("d1 (no owner) untouched by the prune: same etag, device there")

    d1_spec = c.tunnel("d1", "gre", remote, key=43, addresses=["10.51.0.9/30"])
    f3 = c.tunnel("f3", "gre", remote, key=44, addresses=["10.51.0.13/30"])
    rev = c.revision()
    c.expect_code("ApplyTunnels naming d1 (no owner) and a new f3", c.apply,
                  fleet(f1, d1_spec, f3), code.FAILED_PRECONDITION)
    if "f3" in c.names() or link(ns, "f3") or c.revision() != rev:
        fail("the refused apply created f3 or changed something")
    ok("all or nothing: f3 not created, revision unchanged")
    c.expect_code("ApplyTunnels f1 as owner other", c.apply, fleet(f1, owner="other"),
                  code.FAILED_PRECONDITION)
    c.expect_code("ApplyTunnels without owner", c.apply, fleet(f1, owner=""),
                  code.INVALID_ARGUMENT)
    c.expect_code("ApplyTunnels naming f1 twice", c.apply, fleet(f1, f1),
                  code.INVALID_ARGUMENT)

    r = c.apply(fleet(prune=True))
    expect_plan(r, {"f1": ("DELETE", [])}, "empty set prune")
    if [n for n in c.names() if n.startswith("f")] or link(ns, "f1"):
        fail(f"after pruning everything: {c.names()}")
    if route_devs(ns, "10.151.0.0/24"):
        fail(f"f1's route is still there: {route_devs(ns, '10.151.0.0/24')}")
    if c.get(pb.GetTunnelRequest(name="d1")).etag != d1_etag:
        fail("pruning everything touched d1")
    ok("fleet pruned to nothing, f1's device and route gone, d1 untouched")
    c.delete(pb.DeleteTunnelRequest(name="d1"))


def cmd_limit(c, max_tunnels, remote):
    pb = c.pb
    max_tunnels = int(max_tunnels)
    have = len(c.names())
    for i in range(have, max_tunnels):
        c.create(pb.CreateTunnelRequest(tunnel=c.tunnel(f"m{i}", "gre", remote, key=100 + i)))
    ok(f"{max_tunnels} tunnels: {' '.join(c.names())}")
    rev = c.revision()
    c.expect_code(f"CreateTunnel number {max_tunnels + 1}", c.create,
                  pb.CreateTunnelRequest(tunnel=c.tunnel("mx", "gre", remote, key=199)),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    c.expect_code("ApplyTunnels adding one more", c.apply,
                  pb.ApplyTunnelsRequest(owner="fleet",
                                         tunnels=[c.tunnel("mx", "gre", remote, key=199)]),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    info = c.info(pb.GetAgentInfoRequest())
    if "mx" in c.names() or c.revision() != rev or info.tunnel_count != max_tunnels:
        fail(f"after the refused creates: {c.names()}, {info}")
    ok(f"nothing created; GetAgentInfo tunnel_count {info.tunnel_count} of {info.max_tunnels}")
    c.delete(pb.DeleteTunnelRequest(name=c.names()[0]))
    c.create(pb.CreateTunnelRequest(tunnel=c.tunnel("mx", "gre", remote, key=199)))
    ok("after a delete the next create fits again")


def cmd_overlap(c, name):
    pb = c.pb
    code = grpc.StatusCode
    t = c.get(pb.GetTunnelRequest(name=name))
    if not t.addresses or not t.routes:
        fail(f"{name} needs an address and a route: {t}")
    rev = c.revision()
    addr, route = t.addresses[0], t.routes[0]
    net = route.split("/")[0]
    other = lambda **kw: pb.CreateTunnelRequest(tunnel=c.tunnel(
        "ov1", "gre", "198.18.0.200", key=51, **kw))
    # Another host of the same /30 subnet as NAME's address; the /16 around NAME's route.
    host = addr.split("/")[0].rsplit(".", 1)
    same_subnet = f"{host[0]}.{int(host[1]) ^ 3}/{addr.split('/')[1]}"
    wide = ".".join(net.split(".")[:2]) + ".0.0/16"
    c.expect_code(f"CreateTunnel with address {same_subnet} (in {name}'s {addr})", c.create,
                  other(addresses=[same_subnet]), code.FAILED_PRECONDITION)
    c.expect_code(f"CreateTunnel with route {wide} (around {name}'s route {route})", c.create,
                  other(routes=[wide]), code.FAILED_PRECONDITION)
    c.expect_code(f"CreateTunnel with route {route} (as {name}'s)", c.create,
                  other(routes=[route]), code.FAILED_PRECONDITION)
    c.create(other(addresses=["10.61.0.1/30"]))
    request = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(name="ov1", routes=[route]))
    request.update_mask.paths.append("routes")
    c.expect_code(f"UpdateTunnel ov1 routes [{route}] (as {name}'s)", c.update, request,
                  code.FAILED_PRECONDITION)
    if c.get(pb.GetTunnelRequest(name="ov1")).routes or c.revision() != rev + 1:
        fail("the refused update changed ov1")
    c.delete(pb.DeleteTunnelRequest(name="ov1"))
    ok("only the non-overlapping ov1 was made (and is deleted again)")


def cmd_rollback(c, ns, prefix, name):
    pb = c.pb
    holder = route_devs(ns, prefix)
    if len(holder) != 1 or holder[0] == name:
        fail(f"{prefix} should be routed via one foreign device, is via {holder}")
    addrs_before = addresses(ns)
    rev = c.revision()
    try:
        c.create(pb.CreateTunnelRequest(tunnel=c.tunnel(
            "rb1", "gre", "198.18.0.201", key=61, addresses=["10.71.0.1/30"], routes=[prefix])))
        fail(f"CreateTunnel rb1 with route {prefix} (held by {holder[0]}) succeeded")
    except grpc.RpcError as e:
        ok(f"CreateTunnel rb1 with route {prefix} (held by {holder[0]}) -> {e.code().name}: "
           f"{e.details()}")
    c.expect_code("GetTunnel rb1", c.get, pb.GetTunnelRequest(name="rb1"),
                  grpc.StatusCode.NOT_FOUND)
    if link(ns, "rb1") is not None:
        fail(f"the failed create left device rb1: {link(ns, 'rb1')}")
    if addresses(ns) != addrs_before:
        fail(f"the failed create changed addresses: {addresses(ns) ^ addrs_before}")
    if route_devs(ns, prefix) != holder or c.revision() != rev:
        fail(f"after the failed create: {prefix} via {route_devs(ns, prefix)}, revision "
             f"{c.revision()} (was {rev})")
    ok(f"rolled back: no rb1, no device, no 10.71.0.1, {prefix} still via {holder[0]}, "
       f"revision {rev}")

    t = c.get(pb.GetTunnelRequest(name=name))
    routes_before = {p: route_devs(ns, p) for p in t.routes}
    request = pb.UpdateTunnelRequest(tunnel=pb.Tunnel(
        name=name, addresses=list(t.addresses) + ["10.71.0.5/30"],
        routes=list(t.routes) + [prefix], mtu=1280))
    request.update_mask.paths.extend(["addresses", "routes", "mtu"])
    try:
        c.update(request)
        fail(f"UpdateTunnel {name} adding route {prefix} succeeded")
    except grpc.RpcError as e:
        ok(f"UpdateTunnel {name} adding 10.71.0.5/30, route {prefix}, mtu 1280 -> "
           f"{e.code().name}: {e.details()}")
    after = c.get(pb.GetTunnelRequest(name=name))
    k = link(ns, name)
    if (after.etag != t.etag or after.status.ifindex != t.status.ifindex
            or after.status.state != pb.OPER_STATE_UP or k["ifindex"] != t.status.ifindex
            or k["mtu"] != t.status.mtu):
        fail(f"{name} after the failed update: {after}, kernel {k}")
    if addresses(ns) != addrs_before or route_devs(ns, prefix) != holder:
        fail(f"the failed update left addresses {addresses(ns) ^ addrs_before} or {prefix} via "
             f"{route_devs(ns, prefix)}")
    if {p: route_devs(ns, p) for p in t.routes} != routes_before:
        fail(f"the failed update changed {name}'s routes")
    ok(f"rolled back: {name} same etag, ifindex {k['ifindex']}, mtu {k['mtu']}, addresses and "
       f"routes as before")

    g1 = c.tunnel("g1", "gre", "198.18.0.202", key=62, addresses=["10.71.0.9/30"])
    g2 = c.tunnel("g2", "gre", "198.18.0.203", key=63, addresses=["10.71.0.13/30"],
                  routes=[prefix])
    try:
        c.apply(pb.ApplyTunnelsRequest(owner="fleet", tunnels=[g1, g2]))
        fail("ApplyTunnels g1 g2 (g2 with the held route) succeeded")
    except grpc.RpcError as e:
        ok(f"ApplyTunnels g1 g2 (g2 routes {prefix}) -> {e.code().name}: {e.details()}")
    if ({"g1", "g2"} & set(c.names()) or link(ns, "g1") or link(ns, "g2")
            or addresses(ns) != addrs_before or c.revision() != rev):
        fail(f"the failed apply left something: {c.names()}, revision {c.revision()}")
    ok("rolled back: neither g1 nor g2, no device, no address, revision unchanged")


def cmd_list(c, ns, remote):
    pb = c.pb
    code = grpc.StatusCode
    made = []
    for i in range(5):
        team = "red" if i % 2 == 0 else "blue"
        mode = "ipip" if i == 4 else "gre"
        t = c.tunnel(f"p{i}", mode, f"198.18.1.{10 + i}", key=None if mode == "ipip" else 70 + i,
                     labels={"team": team})
        c.create(pb.CreateTunnelRequest(tunnel=t))
        made.append(t.name)
    everything = c.names()
    if everything != sorted(everything) or not set(made) <= set(everything):
        fail(f"ListTunnels: {everything}")
    ok(f"ListTunnels: {' '.join(everything)} (sorted)")

    def pages(size, **filters):
        out, token, sizes = [], "", []
        for _ in range(100):
            r = c.list(pb.ListTunnelsRequest(page_size=size, page_token=token, **filters))
            if len(r.tunnels) > size:
                fail(f"page of {len(r.tunnels)} with page_size {size}")
            out += [t.name for t in r.tunnels]
            sizes.append(len(r.tunnels))
            token = r.next_page_token
            if not token:
                return out, sizes
        fail("ListTunnels: more than 100 pages")

    for size in (1, 2, len(everything)):
        got, sizes = pages(size)
        if got != everything:
            fail(f"ListTunnels page_size {size}: {got}, want {everything}")
        ok(f"ListTunnels page_size {size}: pages of {sizes}, all {len(got)} in order")
    red, sizes = pages(2, labels={"team": "red"})
    if red != ["p0", "p2", "p4"]:
        fail(f"ListTunnels labels team=red: {red}")
    ok(f"ListTunnels labels team=red, page_size 2: {' '.join(red)} in pages of {sizes}")
    ipip = c.names(mode=pb.TUNNEL_MODE_IPIP, labels={"team": "red"})
    if ipip != ["p4"]:
        fail(f"ListTunnels mode IPIP team=red: {ipip}")
    ok("ListTunnels mode=IPIP labels team=red: p4")
    none = c.names(labels={"team": "red", "nosuch": "x"})
    if none:
        fail(f"ListTunnels with a label nobody has: {none}")
    ok("ListTunnels labels team=red nosuch=x: none")
    c.expect_code("ListTunnels page_token garbage", c.list,
                  pb.ListTunnelsRequest(page_token="not a token!"), code.INVALID_ARGUMENT)
    c.expect_code("ListTunnels page_size -1", c.list, pb.ListTunnelsRequest(page_size=-1),
                  code.INVALID_ARGUMENT)
    for name in made:
        c.delete(pb.DeleteTunnelRequest(name=name))


def cmd_names(c):
    print(" ".join(c.names()))


COMMANDS = {
    "info": cmd_info,
    "idempotent": cmd_idempotent,
    "update-inplace": cmd_update_inplace,
    "update-recreate": cmd_update_recreate,
    "etag": cmd_etag,
    "watch": cmd_watch,
    "apply": cmd_apply,
    "limit": cmd_limit,
    "overlap": cmd_overlap,
    "rollback": cmd_rollback,
    "list": cmd_list,
    "names": cmd_names,
}


if __name__ == "__main__":
    sys.exit(python_client.run(sys.argv, COMMANDS, Client, __doc__))
