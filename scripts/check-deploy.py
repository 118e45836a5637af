#!/usr/bin/env python3
"""Offline checks of deploy/: the Kubernetes manifests (deploy/k8s/base and every overlay) render
(`kubectl kustomize`) and every rendered object passes the Kubernetes API schema (strict: unknown
fields refused), every container runs a valid `gati serve` invocation of a role the cluster config
has, container and Service ports and probes agree with that config, Services are named as its
advertise host names, a GPU base worker requests a GPU, online learning's version volume is mounted
where the config puts it, and compose runs the same commands on the same config with Prometheus
scraping the same metrics ports.

    .venv/bin/python scripts/check-deploy.py --gati target/debug/gati
Needs kubectl, PyYAML and kubernetes-validate (scripts/setup.sh installs both in .venv); exits 1
naming the first disagreement.
"""
import argparse, json, pathlib, subprocess, sys

import kubernetes_validate
import yaml

# The Kubernetes API version the schemas are checked against.
K8S_VERSION = "1.32"
RENDERS = ["deploy/k8s/base", "deploy/k8s/overlays/online", "deploy/k8s/overlays/gpu-online"]

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fail(msg):
    print(f"check-deploy: {msg}", file=sys.stderr)
    sys.exit(1)


def port(addr):
    return int(addr.rsplit(":", 1)[1])


def host(addr):
    return addr.rsplit(":", 1)[0]


def expected(cfg, role, index):
    """Ports (by name) the role's process opens under cfg, and the host name peers dial."""
    if role == "frontend":
        e = cfg["frontend"]
        return {"thrift": port(e["listen"]), "selector": port(cfg["selector"]), "metrics": port(e["metrics"])}, host(e["advertise"])
    e = {"base": lambda: cfg["base"], "trainer": lambda: cfg["trainer"], "cache": lambda: cfg["caches"][index]}[role]()
    return {"thrift": port(e["listen"]), "metrics": port(e["metrics"])}, host(e["advertise"])


def role_of(args, cfg, where):
    if args[:1] != ["serve"] or len(args) < 2:
        fail(f"{where}: {args} is not `gati serve ROLE ...`")
    role, rest = args[1], args[2:]
    flags = dict(zip(rest[::2], rest[1::2]))
    if role not in ("frontend", "base", "cache", "trainer") or set(flags) - {"--config", "--index", "--device"}:
        fail(f"{where}: {args}: role must be frontend, base, cache or trainer, flags --config, --index and --device")
    if role == "trainer" and "trainer" not in cfg:
        fail(f"{where}: runs the trainer, but the cluster config has no trainer")
    index = int(flags.get("--index", "0"))
    if role == "cache" and index >= len(cfg["caches"]):
        fail(f"{where}: --index {index}, but the config has {len(cfg['caches'])} cache workers")
    return role, index, flags.get("--config"), flags.get("--device", "cpu")


def check_invocation(gati, args, where):
    # clap parses the whole line before --help: an unknown flag or a missing value fails here.
    r = subprocess.run([gati, *args, "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{where}: `gati {' '.join(args)}` is not a valid invocation: {r.stderr.strip()}")


def render(path):
    rendered = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True)
    if rendered.returncode != 0:
        fail(f"kubectl kustomize {path}: {rendered.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    for d in docs:
        for key in ("apiVersion", "kind", "metadata"):
            if key not in d:
                fail(f"{path}: a rendered object has no {key}: {d}")
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{path}: {d['kind']} {d['metadata'].get('name')}: not a valid Kubernetes {K8S_VERSION} object: {e.message}")
    return docs


def check_render(gati, path, docs):
    """The manifests of one render against the cluster config they carry; returns (config, kinds)."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    cm = by_kind["ConfigMap"][0]
    cfg = json.loads(cm["data"]["cluster.json"])
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    roles_seen = set()
    for dep in by_kind["Deployment"]:
        name = f"{path}: Deployment {dep['metadata']['name']}"
        spec = dep["spec"]["template"]["spec"]
        if dep["spec"]["selector"]["matchLabels"].items() - dep["spec"]["template"]["metadata"]["labels"].items():
            fail(f"{name}: its selector does not match its pods' labels")
        c = spec["containers"][0]
        role, index, config, device = role_of(c["args"], cfg, name)
        check_invocation(gati, c["args"], name)
        roles_seen.add((role, index))
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        m = mounts.get(config)
        if not m or volumes[m["name"]].get("configMap", {}).get("name") != cm["metadata"]["name"]:
            fail(f"{name}: --config {config} is not the cluster ConfigMap's mount")
        token_dir = str(pathlib.PurePosixPath(cfg["auth_token_file"]).parent)
        if token_dir not in mounts or "secret" not in volumes[mounts[token_dir]["name"]]:
            fail(f"{name}: auth_token_file {cfg['auth_token_file']} is not on the token Secret's mount")
        if "/plan" != cfg["plan"] or "/plan" not in mounts:
            fail(f"{name}: the plan volume is not mounted at the config's plan {cfg['plan']}")
        state_dir = cfg.get("trainer", {}).get("state_dir")
        if state_dir and role != "frontend":
            # Workers start from the serving version; the trainer writes it.
            m = mounts.get(state_dir)
            if not m or "persistentVolumeClaim" not in volumes[m["name"]] or m.get("readOnly", False) != (role != "trainer"):
                fail(f"{name}: the trainer's state_dir {state_dir} is not mounted (read-only for workers, writable for the trainer)")
        want, advertised = expected(cfg, role, index)
        got = {p["name"]: p["containerPort"] for p in c["ports"]}
        if got != want:
            fail(f"{name}: container ports {got}, the config opens {want}")
        for probe, path_ in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            g = c.get(probe, {}).get("httpGet", {})
            if g.get("path") != path_ or g.get("port") != "metrics":
                fail(f"{name}: {probe} must GET {path_} on the metrics port")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits"):
            fail(f"{name}: resource requests and limits are required")
        if device.startswith("cuda") != ("nvidia.com/gpu" in res["limits"]):
            fail(f"{name}: --device {device}, but its GPU limit is {res['limits'].get('nvidia.com/gpu')}")
        svc = services.get(advertised)
        if svc is None:
            fail(f"{name}: no Service named {advertised!r}, the host its peers dial")
        sp = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        if sp != want or svc["spec"]["selector"].items() - dep["spec"]["template"]["metadata"]["labels"].items():
            fail(f"{path}: Service {advertised}: ports {sp} or selector disagree with {name}")
    if host(cfg["selector_advertise"]) not in services or services[host(cfg["selector_advertise"])]["spec"]["selector"]["app.kubernetes.io/component"] != "frontend":
        fail(f"{path}: selector_advertise {cfg['selector_advertise']}: not a Service of the frontend")
    want_roles = {("frontend", 0), ("base", 0)} | {("cache", i) for i in range(len(cfg["caches"]))}
    if "trainer" in cfg:
        want_roles.add(("trainer", 0))
    if roles_seen != want_roles:
        fail(f"{path}: Deployments run {sorted(roles_seen)}, the config has {sorted(want_roles)}")
    return cfg, by_kind, want_roles


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gati", required=True)
    a = ap.parse_args()
    renders = {path: render(path) for path in RENDERS}
    checked = {path: check_render(a.gati, path, docs) for path, docs in renders.items()}
    cfg, by_kind, want_roles = checked["deploy/k8s/base"]
    for path, (other, _, _) in checked.items():
        # Overlays add to the base config (a trainer), never change it.
        if {k: v for k, v in other.items() if k != "trainer"} != cfg:
            fail(f"{path}: its cluster config differs from deploy/k8s/base/cluster.json beyond a trainer entry")

    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    deps = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"] for d in by_kind["Deployment"]}
    for name, args in deps.items():
        svc = compose["services"].get(name)
        if svc is None or svc.get("command") != args:
            fail(f"compose service {name}: command {svc and svc.get('command')} differs from the Deployment's {args}")
        # SOURCE:TARGET[:ro]; the source may hold a ${VAR:-default}.
        vols = [v.rsplit(":", 2)[1] if v.endswith(":ro") else v.rsplit(":", 1)[1] for v in compose["x-gati"]["volumes"]]
        if "/etc/gati/cluster.json" not in vols or cfg["plan"] not in vols or cfg["auth_token_file"] not in vols:
            fail("compose: the config, token and plan mounts differ from the config's paths")
    prom = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = sorted(t for j in prom["scrape_configs"] for s in j["static_configs"] for t in s["targets"])
    want_targets = sorted(f"{expected(cfg, r, i)[1]}:{expected(cfg, r, i)[0]['metrics']}" for r, i in want_roles)
    if targets != want_targets:
        fail(f"compose Prometheus scrapes {targets}, the config's metrics are {want_targets}")
    objects = sum(len(d) for d in renders.values())
    print(f"check-deploy: ok ({len(renders)} renders, {objects} objects valid for Kubernetes {K8S_VERSION}, compose and Prometheus agree)", file=sys.stderr)


if __name__ == "__main__":
    main()
