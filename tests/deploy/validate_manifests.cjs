#!/usr/bin/env node
// Validates Kubernetes manifests offline, without a cluster.
//
//   NODE_PATH=build/tools/node_modules node validate_manifests.cjs FILE.yaml...
//
// Every YAML document (parsed as YAML 1.1, as kubectl does; duplicate keys are errors) must be
// an object this script knows, and must pass:
//   1. the schema of its kind: npm kubernetes-models (the Kubernetes OpenAPI schemas compiled
//      with ajv: types, enums, patterns, required fields), @kubernetes-models/prometheus-operator
//      for ServiceMonitor and PrometheusRule (the CRDs' schemas);
//   2. a strict check: no field the schema does not name. The OpenAPI schemas allow unknown
//      fields (the API server drops or rejects them), so a misspelt `hostNetwrok` would pass (1);
//      the field names are taken from the packages' TypeScript declarations;
//   3. references inside the set: every Service and ServiceMonitor selects something, ports
//      named by probes, Services and ServiceMonitors exist, mounts have volumes, ConfigMaps and
//      ServiceAccounts named exist (Secrets are created by the operator, not shipped).
// Exit 0 when everything passes; else 1, one line per problem.
"use strict";

const fs = require("fs");
const path = require("path");
const YAML = require("yaml");

const MODELS = {
  "v1/Namespace": "kubernetes-models/v1/Namespace",
  "v1/ServiceAccount": "kubernetes-models/v1/ServiceAccount",
  "v1/ConfigMap": "kubernetes-models/v1/ConfigMap",
  "v1/Secret": "kubernetes-models/v1/Secret",
  "v1/Service": "kubernetes-models/v1/Service",
  "apps/v1/DaemonSet": "kubernetes-models/apps/v1/DaemonSet",
  "apps/v1/Deployment": "kubernetes-models/apps/v1/Deployment",
  "rbac.authorization.k8s.io/v1/Role": "kubernetes-models/rbac.authorization.k8s.io/v1/Role",
  "rbac.authorization.k8s.io/v1/RoleBinding":
    "kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
  "v1/Pod": "kubernetes-models/v1/Pod",
};

const problems = [];
function problem(where, message) {
  problems.push(`${where}: ${message}`);
}

// ---- TypeScript declarations: the field names of every type --------------------------------

function tokenize(text) {
  const re = /\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[A-Za-z_$][\w$]*|-?\d+(?:\.\d+)?|\S)/gy;
  const tokens = [];
  let m;
  while ((m = re.exec(text)) !== null && m[1] !== undefined) tokens.push(m[1]);
  return tokens;
}

// A recursive-descent parser for the type syntax the declarations use: object literals,
// Array<T>, unions, names (with ["key"] access), string and number literals.
class TypeParser {
  constructor(tokens) {
    this.t = tokens;
    this.i = 0;
  }
  peek() {
    return this.t[this.i];
  }
  next() {
    return this.t[this.i++];
  }
  expect(tok) {
    const got = this.next();
    if (got !== tok) throw new Error(`expected ${tok}, got ${got}`);
  }
  type() {
    const types = [this.primary()];
    while (this.peek() === "|") {
      this.next();
      types.push(this.primary());
    }
    return types.length === 1 ? types[0] : { kind: "union", types };
  }
  primary() {
    let tok = this.next();
    let result;
    if (tok === "{") {
      result = this.members();
    } else if (tok === "(") {
      result = this.type();
      this.expect(")");
    } else if (tok === "Array" && this.peek() === "<") {
      this.next();
      result = { kind: "array", elem: this.type() };
      this.expect(">");
    } else if (/^[A-Za-z_$]/.test(tok)) {
      result = { kind: "ref", name: tok };
      while (this.peek() === "[" && this.t[this.i + 1] !== "]") {  // IFoo["kind"]
        this.next();
        this.next();
        this.expect("]");
        result = { kind: "other" };
      }
    } else {
      result = { kind: "other" };  // a literal
    }
    while (this.peek() === "[" && this.t[this.i + 1] === "]") {
      this.next();
      this.next();
      result = { kind: "array", elem: result };
    }
    return result;
  }
  // After "{": members up to the matching "}".
  members() {
    const fields = new Map();
    let index = null;
    while (this.peek() !== "}") {
      if (this.peek() === "[") {  // [key: string]: T
        this.next();
        this.next();
        this.expect(":");
        this.next();
        this.expect("]");
        this.expect(":");
        index = this.type();
      } else {
        const name = this.next().replace(/^["']|["']$/g, "");
        if (this.peek() === "?") this.next();
        this.expect(":");
        fields.set(name, this.type());
      }
      if (this.peek() === ";" || this.peek() === ",") this.next();
    }
    this.next();
    return { kind: "object", fields, index };
  }
}

const declarationFiles = new Map();

// The interfaces, aliases and imports of one .d.ts file.
function loadDeclarations(file) {
  if (declarationFiles.has(file)) return declarationFiles.get(file);
  const text = fs
    .readFileSync(file, "utf8")
    .replace(/\/\*[\s\S]*?\*\//g, "")
    .replace(/^\s*\/\/.*$/gm, "");
  const decl = { file, interfaces: new Map(), aliases: new Map(), imports: new Map() };
  for (const m of text.matchAll(/^import \{([^}]*)\} from "([^"]+)";/gm)) {
    for (const part of m[1].split(",")) {
      const [orig, alias] = part.trim().split(/\s+as\s+/);
      if (orig) decl.imports.set((alias || orig).trim(), { module: m[2], name: orig.trim() });
    }
  }
  for (const m of text.matchAll(/^export \{([^}]*)\};/gm)) {
    for (const part of m[1].split(",")) {
      const [orig, alias] = part.trim().split(/\s+as\s+/);
      if (alias) decl.aliases.set(alias.trim(), orig.trim());
    }
  }
  const re = /^export (?:declare )?interface (\w+)(?: extends [\w, ]+)? \{/gm;
  let m;
  while ((m = re.exec(text)) !== null) {
    const tokens = tokenize(text.slice(m.index + m[0].length));
    const parser = new TypeParser(tokens);
    decl.interfaces.set(m[1], parser.members());
  }
  declarationFiles.set(file, decl);
  return decl;
}

function declarationFileOf(module, fromFile) {
  if (module.startsWith(".")) return path.resolve(path.dirname(fromFile), module + ".d.ts");
  return require.resolve(module).replace(/\.js$/, ".d.ts");
}

// The object type a name stands for in `decl`, or null (a primitive, Quantity, IntOrString...).
function resolveRef(name, decl, depth = 0) {
  if (depth > 8) return null;
  const local = decl.aliases.get(name) || name;
  if (decl.interfaces.has(local)) return { type: decl.interfaces.get(local), decl };
  const imported = decl.imports.get(name);
  if (imported) {
    const file = declarationFileOf(imported.module, decl.file);
    if (!fs.existsSync(file)) return null;
    return resolveRef(imported.name, loadDeclarations(file), depth + 1);
  }
  return null;
}

function checkFields(value, type, decl, where) {
  if (value === null || value === undefined || type === null) return;
  switch (type.kind) {
    case "ref": {
      const resolved = resolveRef(type.name, decl);
      if (resolved) checkFields(value, resolved.type, resolved.decl, where);
      return;
    }
    case "array":
      if (Array.isArray(value)) {
        value.forEach((v, i) => checkFields(v, type.elem, decl, `${where}[${i}]`));
      }
      return;
    case "union": {
      const structured = type.types.filter((t) => t.kind !== "other");
      if (structured.length === 1) checkFields(value, structured[0], decl, where);
      return;
    }
    case "object":
      if (typeof value !== "object" || Array.isArray(value)) return;
      for (const [key, v] of Object.entries(value)) {
        if (type.fields.has(key)) {
          checkFields(v, type.fields.get(key), decl, `${where}.${key}`);
        } else if (type.index) {
          checkFields(v, type.index, decl, `${where}.${key}`);
        } else {
          problem(where, `unknown field "${key}" (known: ${[...type.fields.keys()].join(", ")})`);
        }
      }
      return;
    default:
      return;
  }
}

// ---- references inside the set ---------------------------------------------------------------

function podSpecOf(obj) {
  if (obj.kind === "Pod") return obj.spec;
  return ["DaemonSet", "Deployment"].includes(obj.kind) ? obj.spec?.template?.spec : null;
}

// A bare Pod is its own template.
function templateOf(obj) {
  return obj.kind === "Pod" ? obj : obj.spec.template;
}

function matches(selector, labels) {
  return Object.entries(selector || {}).every(([k, v]) => (labels || {})[k] === v);
}

function checkReferences(docs) {
  const named = (kind) => new Set(docs.filter((d) => d.obj.kind === kind).map((d) => d.obj.metadata?.name));
  const configMaps = named("ConfigMap");
  const serviceAccounts = named("ServiceAccount");
  const workloads = docs.filter((d) => podSpecOf(d.obj));
  const services = docs.filter((d) => d.obj.kind === "Service");

  for (const { obj, where } of workloads) {
    const spec = podSpecOf(obj);
    const podLabels = templateOf(obj).metadata?.labels;
    if (obj.kind !== "Pod" && !matches(obj.spec.selector?.matchLabels, podLabels)) {
      problem(where, "spec.selector does not match the pod template's labels");
    }
    if (spec.serviceAccountName && !serviceAccounts.has(spec.serviceAccountName)) {
      problem(where, `serviceAccountName ${spec.serviceAccountName}: no such ServiceAccount here`);
    }
    const volumes = new Map((spec.volumes || []).map((v) => [v.name, v]));
    for (const v of volumes.values()) {
      if (v.configMap && !configMaps.has(v.configMap.name)) {
        problem(where, `volume ${v.name}: no ConfigMap ${v.configMap.name} here`);
      }
    }
    // The ports the pod listens on, for the scrape annotation: its app containers' (an init
    // container has exited before anyone scrapes).
    const podPorts = new Set();
    for (const c of [...(spec.initContainers || []), ...spec.containers]) {
      const ports = new Map((c.ports || []).map((p) => [p.name, p.containerPort]));
      const portNumbers = new Set((c.ports || []).map((p) => p.containerPort));
      // On host network a declared port is a host port (it keeps a surge pod off the node):
      // a port the container's arguments listen on (":50052") counts as its own.
      if (spec.hostNetwork) {
        for (const arg of c.args || []) {
          const m = /:(\d+)$/.exec(String(arg));
          if (m) portNumbers.add(Number(m[1]));
        }
      }
      for (const m of c.volumeMounts || []) {
        if (!volumes.has(m.name)) problem(where, `container ${c.name}: mount ${m.name} has no volume`);
      }
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        const p = c[probe];
        if (!p) continue;
        const port = p.grpc?.port ?? p.httpGet?.port ?? p.tcpSocket?.port;
        if (typeof port === "string" ? !ports.has(port) : !portNumbers.has(port)) {
          problem(where, `container ${c.name}: ${probe} port ${port} is not a port of the container`);
        }
      }
      if (spec.containers.includes(c)) for (const p of portNumbers) podPorts.add(p);
    }
    const annotations = templateOf(obj).metadata?.annotations || {};
    if (annotations["prometheus.io/scrape"] === "true") {
      const port = Number(annotations["prometheus.io/port"]);
      if (!podPorts.has(port)) {
        problem(where, `annotation prometheus.io/port ${port} is not a port of its containers`);
      }
    }
  }

  for (const { obj, where } of services) {
    const selected = workloads.filter((w) => w.obj.kind !== "Pod" && matches(obj.spec?.selector, templateOf(w.obj).metadata?.labels));
    if (selected.length === 0) problem(where, "its selector matches no workload here");
    for (const port of obj.spec?.ports || []) {
      if (typeof port.targetPort !== "string") continue;
      const found = selected.some((w) =>
        podSpecOf(w.obj).containers.some((c) => (c.ports || []).some((p) => p.name === port.targetPort)));
      if (!found) problem(where, `port ${port.name}: targetPort ${port.targetPort} is no container port`);
    }
  }

  for (const { obj, where } of docs.filter((d) => d.obj.kind === "ServiceMonitor")) {
    const selected = services.filter((s) => matches(obj.spec?.selector?.matchLabels, s.obj.metadata?.labels));
    if (selected.length === 0) problem(where, "its selector matches no Service here");
    for (const endpoint of obj.spec?.endpoints || []) {
      for (const s of selected) {
        if (!(s.obj.spec.ports || []).some((p) => p.name === endpoint.port)) {
          problem(where, `endpoint port ${endpoint.port}: Service ${s.obj.metadata.name} has no such port`);
        }
      }
    }
  }

  // The fleet files of ConfigMaps must at least be YAML with nodes.
  for (const { obj, where } of docs.filter((d) => d.obj.kind === "ConfigMap")) {
    for (const [key, value] of Object.entries(obj.data || {})) {
      if (!/\.ya?ml$/.test(key)) continue;
      const doc = YAML.parseDocument(value, { version: "1.1", uniqueKeys: true });
      if (doc.errors.length) problem(`${where} data.${key}`, doc.errors[0].message);
      else if (key === "fleet.yaml" && !Array.isArray(doc.toJS()?.nodes)) {
        problem(`${where} data.${key}`, "no list of nodes");
      }
    }
  }
}

// ---- main ------------------------------------------------------------------------------------

// A directory stands for its kustomization.yaml's resources, which must all exist and be all
// the YAML files of the directory (a file left out would silently not be installed).
function expandKustomization(dir) {
  const where = path.join(dir, "kustomization.yaml");
  const k = YAML.parse(fs.readFileSync(where, "utf8"), { version: "1.1", uniqueKeys: true });
  const resources = k.resources || [];
  for (const r of resources) {
    if (!fs.existsSync(path.join(dir, r))) problem(where, `resource ${r} does not exist`);
  }
  for (const f of fs.readdirSync(dir)) {
    if (/\.ya?ml$/.test(f) && f !== "kustomization.yaml" && !resources.includes(f)) {
      problem(where, `${f} is not in resources`);
    }
  }
  for (const c of k.components || []) {
    if (!fs.existsSync(path.join(dir, c, "kustomization.yaml"))) problem(where, `component ${c} does not exist`);
  }
  return resources.map((r) => path.join(dir, r)).filter((f) => fs.existsSync(f));
}

function main(args) {
  if (args.length === 0) {
    console.error("usage: validate_manifests.cjs FILE.yaml|KUSTOMIZATION-DIR...");
    process.exit(2);
  }
  const files = args.flatMap((a) => (fs.statSync(a).isDirectory() ? expandKustomization(a) : [a]));
  const docs = [];
  for (const file of files) {
    const parsed = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"), {
      version: "1.1",
      uniqueKeys: true,
      prettyErrors: true,
    });
    parsed.forEach((doc, n) => {
      const where = `${path.basename(file)}#${n + 1}`;
      for (const e of [...doc.errors, ...doc.warnings]) problem(where, e.message.split("\n")[0]);
      const obj = doc.toJS({ maxAliasCount: 0 });
      if (obj === null || obj === undefined) return;  // an empty document
      const key = `${obj.apiVersion}/${obj.kind}`;
      const module = MODELS[key];
      if (!module) {
        problem(where, `no validator for ${key}: add it to MODELS`);
        return;
      }
      const Model = Object.values(require(module)).find((v) => typeof v === "function" && v.kind === obj.kind);
      try {
        new Model(obj).validate();
      } catch (e) {
        problem(`${where} ${obj.kind}/${obj.metadata?.name}`, `schema: ${e.message}`);
      }
      const decl = loadDeclarations(require.resolve(module).replace(/\.js$/, ".d.ts"));
      checkFields(obj, { kind: "ref", name: `I${obj.kind}` }, decl, `${where} ${obj.kind}/${obj.metadata?.name}`);
      docs.push({ obj, where: `${where} ${obj.kind}/${obj.metadata?.name}` });
    });
  }
  checkReferences(docs);
  for (const p of problems) console.log(`FAIL ${p}`);
  const kinds = docs.map((d) => d.obj.kind).join(", ");
  console.log(`${docs.length} objects (${kinds}): ${problems.length ? `${problems.length} problems` : "valid"}`);
  process.exit(problems.length ? 1 : 0);
}

main(process.argv.slice(2));
