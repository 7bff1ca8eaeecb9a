#!/usr/bin/python3
"""What the kustomize components of deploy/ must do, checked on their files and on what
`kubectl kustomize` renders from them. Used by deploy_test.sh (kubernetes, kustomize).

  check_components.py static DEPLOY_DIR
      the base and the components' files, without kustomize
  check_components.py rendered FILE DEPLOY_DIR [seccomp] [prometheus-operator] [grafana]
      a rendered set: the base, plus exactly the components named

Prints one line per problem and exits 1 when there is any.
"""
import json
import pathlib
import re
import sys

import yaml

problems = []


def problem(message):
    problems.append(message)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def only(docs, kind, name=None):
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        problem(f"want one {kind} {name or ''}, found {len(found)}")
        return {}
    return found[0]


def container(pod_spec, name, init=False):
    for c in pod_spec.get("initContainers" if init else "containers", []) or []:
        if c.get("name") == name:
            return c
    return None


def volume(pod_spec, name):
    for v in pod_spec.get("volumes", []) or []:
        if v.get("name") == name:
            return v
    return None


# ---- the seccomp component, as its files say ----------------------------------------------------

PROFILE_DIR_SUFFIX = "/seccomp/profiles"  # <kubelet root>/seccomp/profiles


def seccomp_install(deploy, pod_spec, where):
    """The profile install of a pod spec (the patch, or the rendered DaemonSet's): the init
    container writes the generated ConfigMap's file into kubelet's seccomp directory under the
    name the agent container's Localhost profile names, and nothing more than it needs."""
    profile = deploy / "seccomp" / "tunnel-agent.json"
    agent = container(pod_spec, "tunnel-agent")
    init = container(pod_spec, "install-seccomp-profile", init=True)
    if agent is None or init is None:
        problem(f"{where}: no agent container tunnel-agent or init container install-seccomp-profile")
        return
    sp = (agent.get("securityContext") or {}).get("seccompProfile") or {}
    if sp.get("type") != "Localhost":
        problem(f"{where}: the agent container's seccompProfile is {sp.get('type')}, want Localhost")
        return
    local = sp.get("localhostProfile", "")
    # The profile on the container, never on the pod: the init container would get it too and
    # be created before the file exists.
    pod_sp = (pod_spec.get("securityContext") or {}).get("seccompProfile") or {}
    if pod_sp.get("type") == "Localhost":
        problem(f"{where}: a pod-level Localhost profile applies to the init container that installs it")
    init_sc = init.get("securityContext") or {}
    if (init_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problem(f"{where}: the init container must run under RuntimeDefault (the profile is not there yet)")
    if init_sc.get("privileged") or init_sc.get("allowPrivilegeEscalation") is not False:
        problem(f"{where}: the init container must not be privileged nor escalate")
    if init_sc.get("readOnlyRootFilesystem") is not True:
        problem(f"{where}: the init container's root file system must be read-only")
    if (init_sc.get("capabilities") or {}).get("drop") != ["ALL"] or (init_sc.get("capabilities") or {}).get("add"):
        problem(f"{where}: the init container must drop every capability and add none")
    mounts = {m["mountPath"]: m for m in init.get("volumeMounts", [])}
    host_mount = None
    config_mount = None
    for path, m in mounts.items():
        v = volume(pod_spec, m["name"]) or {}
        if "hostPath" in v:
            if host_mount:
                problem(f"{where}: the init container mounts more than one host path")
            host_mount = (path, v["hostPath"])
        if "configMap" in v:
            config_mount = (path, v["configMap"])
            if not m.get("readOnly"):
                problem(f"{where}: the profile's ConfigMap must be mounted read-only")
    if not host_mount or not config_mount:
        problem(f"{where}: the init container needs the ConfigMap and the host's profile directory")
        return
    host_dir = host_mount[1]["path"]
    if not host_dir.endswith(PROFILE_DIR_SUFFIX):
        problem(f"{where}: host path {host_dir} is not <kubelet root>{PROFILE_DIR_SUFFIX}")
    # localhostProfile is relative to <kubelet root>/seccomp: profiles/NAME is host_dir/NAME.
    if not local.startswith("profiles/") or "/" in local[len("profiles/"):]:
        problem(f"{where}: localhostProfile {local} is not profiles/NAME")
    name = local[len("profiles/"):]
    script = " ".join(init.get("command", []) + init.get("args", []))
    src = f"{config_mount[0]}/{profile.name}"
    dst = f"{host_mount[0]}/{name}"
    if src not in script:
        problem(f"{where}: the init container does not read {src} (the ConfigMap's key)")
    if not re.search(r"mv -f \S+ " + re.escape(dst) + r"(\s|$)", script):
        problem(f"{where}: the init container does not rename the profile onto {dst}, the file the "
                f"agent's localhostProfile {local} names")
    return config_mount[1]["name"]


def static(deploy):
    base = deploy / "kubernetes"
    docs = load_all(base / "agent-daemonset.yaml")
    ds = only(docs, "DaemonSet", "tunnel-agent")
    spec = ds["spec"]["template"]["spec"]
    agent = container(spec, "tunnel-agent")
    sp = agent["securityContext"]["seccompProfile"]
    # The default install needs nothing on the nodes.
    if sp != {"type": "RuntimeDefault"}:
        problem(f"agent-daemonset.yaml: the agent's seccompProfile is {sp}, want RuntimeDefault")
    if "--io_backend=auto" not in agent.get("args", []):
        problem("agent-daemonset.yaml: the agent must run --io_backend=auto (epoll where io_uring is refused)")
    if spec.get("initContainers"):
        problem("agent-daemonset.yaml: the base has no init container")
    k = load(base / "kustomization.yaml")
    if k.get("components"):
        problem("deploy/kubernetes/kustomization.yaml: the base enables no component")
    for r in k.get("resources", []):
        for d in load_all(base / r):
            if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                problem(f"{r}: {d['kind']} needs the operator's CRDs: it belongs in components/prometheus-operator")

    # Every component: a Component whose files exist, whose patches target the base's objects.
    base_objects = {(d["kind"], d["metadata"]["name"]) for r in k["resources"] for d in load_all(base / r)}
    components = {
        "seccomp": deploy / "seccomp",
        "prometheus-operator": base / "components" / "prometheus-operator",
        "grafana": deploy / "grafana",
    }
    for name, path in components.items():
        kf = path / "kustomization.yaml"
        if not kf.exists():
            problem(f"component {name}: no {kf}")
            continue
        c = load(kf)
        if c.get("kind") != "Component" or c.get("apiVersion") != "kustomize.config.k8s.io/v1alpha1":
            problem(f"{kf}: not a kustomize Component")
        for r in c.get("resources", []):
            if not (path / r).exists():
                problem(f"{kf}: resource {r} does not exist")
        for g in c.get("configMapGenerator", []):
            for f in g.get("files", []):
                f = f.split("=", 1)[-1]
                # kustomize refuses files outside the component's directory.
                if ".." in pathlib.PurePath(f).parts or f.startswith("/"):
                    problem(f"{kf}: generator file {f} is outside the component (kustomize refuses it)")
                elif not (path / f).exists():
                    problem(f"{kf}: generator file {f} does not exist")
        for p in c.get("patches", []):
            target = None
            if "path" in p:
                if not (path / p["path"]).exists():
                    problem(f"{kf}: patch {p['path']} does not exist")
                    continue
                pd = load(path / p["path"])
                target = (pd.get("kind"), pd.get("metadata", {}).get("name"))
            if "target" in p:
                target = (p["target"].get("kind"), p["target"].get("name"))
            if target not in base_objects:
                problem(f"{kf}: patch target {target} is no object of the base")

    # The seccomp component installs the one profile file, under the name the agent loads.
    sk = load(deploy / "seccomp" / "kustomization.yaml")
    gens = sk.get("configMapGenerator", [])
    if [g.get("files") for g in gens] != [["tunnel-agent.json"]]:
        problem("deploy/seccomp: its ConfigMap must be generated from tunnel-agent.json, the one profile")
    patch = load(deploy / "seccomp" / "install-profile.yaml")
    cm = seccomp_install(deploy, patch["spec"]["template"]["spec"], "deploy/seccomp/install-profile.yaml")
    if gens and cm and cm != gens[0]["name"]:
        problem(f"deploy/seccomp: the patch mounts ConfigMap {cm}, the generator makes {gens[0]['name']}")
    if not any(t["fieldPaths"] == ["spec.template.spec.initContainers.[name=install-seccomp-profile].image"]
               for r in sk.get("replacements", []) for t in r.get("targets", [])):
        problem("deploy/seccomp: the init container's image must be copied from the agent's (replacements)")

    # The dashboard component: the one JSON, labelled for the sidecar.
    gk = load(deploy / "grafana" / "kustomization.yaml")
    g = (gk.get("configMapGenerator") or [{}])[0]
    if g.get("files") != ["tunnel-agent.json"]:
        problem("deploy/grafana: its ConfigMap must be generated from tunnel-agent.json")
    if (g.get("options") or {}).get("labels", {}).get("grafana_dashboard") != "1":
        problem('deploy/grafana: the ConfigMap needs the label grafana_dashboard: "1" (a string)')


# ---- a rendered set ---------------------------------------------------------------------------

def rendered(path, deploy, enabled):
    docs = load_all(path)
    ds = only(docs, "DaemonSet", "tunnel-agent")
    if not ds:
        return
    spec = ds["spec"]["template"]["spec"]
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if len(namespaces) != 1 or None in namespaces:
        problem(f"objects are spread over namespaces {sorted(map(str, namespaces))}: one for all")
    ns_objects = [d for d in docs if d["kind"] == "Namespace"]
    if ns_objects and ns_objects[0]["metadata"]["name"] not in namespaces:
        problem("the Namespace object is not the objects' namespace")
    images = {c["image"] for s in [spec, docs and only(docs, "Deployment", "tunnel-controller")["spec"]["template"]["spec"]]
              for c in (s.get("initContainers") or []) + s["containers"]}
    if len(images) != 1:
        problem(f"the containers run different images {sorted(images)}: the set is one image")

    agent = container(spec, "tunnel-agent")
    if "seccomp" in enabled:
        cm_name = seccomp_install(deploy, spec, "rendered DaemonSet")
        cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name]
        if len(cms) != 1:
            problem(f"the init container mounts ConfigMap {cm_name}, which the set does not hold")
        else:
            want = (deploy / "seccomp" / "tunnel-agent.json").read_text()
            if cms[0].get("data", {}).get("tunnel-agent.json") != want:
                problem("the generated ConfigMap's tunnel-agent.json is not deploy/seccomp/tunnel-agent.json")
            json.loads(cms[0]["data"]["tunnel-agent.json"])
            # A hash in its name: a new profile rolls the DaemonSet out.
            if not re.fullmatch(r"tunnel-agent-seccomp-[a-z0-9]{10}", cm_name):
                problem(f"ConfigMap {cm_name} has no content hash in its name")
    else:
        if agent["securityContext"]["seccompProfile"] != {"type": "RuntimeDefault"}:
            problem("without the seccomp component the agent runs RuntimeDefault")
        if spec.get("initContainers"):
            problem("without the seccomp component the agent's pod has no init container")

    operator_kinds = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    if "prometheus-operator" in enabled:
        rule = only(docs, "PrometheusRule", "tunnel-agent")
        source = load(deploy / "prometheus" / "rules" / "tunnel-agent.rules.yml")
        if rule and rule["spec"]["groups"] != source["groups"]:
            problem("the PrometheusRule's groups are not deploy/prometheus/rules/tunnel-agent.rules.yml's")
        only(docs, "ServiceMonitor", "tunnel-agent")
    elif operator_kinds:
        problem(f"without the prometheus-operator component the set holds {[d['kind'] for d in operator_kinds]}")

    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and
                  (d["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    if "grafana" in enabled:
        if len(dashboards) != 1:
            problem(f"want one ConfigMap labelled grafana_dashboard, found {len(dashboards)}")
        elif dashboards[0].get("data", {}).get("tunnel-agent.json") != (deploy / "grafana" / "tunnel-agent.json").read_text():
            problem("the dashboard ConfigMap's tunnel-agent.json is not deploy/grafana/tunnel-agent.json")
    elif dashboards:
        problem("without the grafana component the set holds a dashboard")


def main(argv):
    if len(argv) >= 2 and argv[0] == "static":
        static(pathlib.Path(argv[1]))
    elif len(argv) >= 3 and argv[0] == "rendered":
        unknown = set(argv[3:]) - {"seccomp", "prometheus-operator", "grafana"}
        if unknown:
            sys.exit(f"unknown components {sorted(unknown)}")
        rendered(argv[1], pathlib.Path(argv[2]), set(argv[3:]))
    else:
        sys.exit(__doc__)
    for p in problems:
        print(f"FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
