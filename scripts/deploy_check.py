#!/usr/bin/env python3
"""make deploy-check: the deployment files, checked offline.

1. values.schema.json accepts the scenarios below and rejects bad values (canary.weight 101, ...).
2. `helm lint --strict` and `helm template` of k8s/tollgate for the defaults, canary at 10, 50
   and 100 in each ingress mode (gateway, nginx), no front door, and every option switched on,
   with helm-python-sdk (Helm's Go SDK as a shared library: no helm binary, no cluster, no network).
3. Every rendered manifest validated with kubernetes-validate in strict mode (unexpected fields
   are errors) against Kubernetes 1.27 (the chart's minimum: gRPC probes) and the newest schemas
   it ships. Kinds it has no schema for (the CRDs GRPCRoute, ServiceMonitor, PrometheusRule) are
   validated against k8s/schemas/*.json, strict subsets of the upstream CRD schemas; a kind with
   no schema anywhere fails.
4. The rendered canary weights, tracks, probes and security settings are what the values say.
5. `promtool test rules` on k8s/rules-tests/ and `promtool check rules` on the rules file.
6. The canary gate and rollout test (k8s/tests/test_canary.py, against a fake Prometheus).

Run by `make deploy-check` with the Python of .tools/venv (scripts/tools.sh installs
helm-python-sdk, kubernetes-validate and promtool). Prints one line per check and a summary.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import tempfile
import traceback
from pathlib import Path

import helm_python as helm
import jsonschema
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "k8s" / "tollgate"
SCHEMAS = ROOT / "k8s" / "schemas"
RULES = CHART / "rules" / "tollgate.rules.yaml"
RULE_TESTS = ROOT / "k8s" / "rules-tests"
KUBE_VERSIONS = ["1.27.0", kv.latest_version()]
RELEASE, NAMESPACE = "tollgate", "tollgate"
# kubernetes-validate reads and parses its (large) schema files on every call: parse each once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)
SERVICES = ["router", "token-cache", "casebank", "cost-tracker", "provider-adapter"]
PORTS = {s: (50051 + i, 9101 + i) for i, s in enumerate(SERVICES)}
SECTIONS = {s: s.upper().replace("-", "_") for s in SERVICES}


def canary(weight: int) -> dict:
    return {"canary": {"enabled": True, "weight": weight, "image": {"tag": "1.2.0-rc1"}}}


def deep_merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


NGINX = {"ingress": {"mode": "nginx", "nginx": {"host": "tollgate.example.com", "tlsSecretName": "tollgate-tls"}}}
EVERYTHING = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://docs.example.com/RUNBOOK.md"}},
    "peers": {"discovery": "headless"},
    "mesh": {"inject": True},
    "telemetry": {"otlpEndpoint": "http://otel-collector.observability:4317"},
    "ingress": {"hostnames": ["tollgate.example.com"]},
    "networkPolicy": {"postgres": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
                      "routerFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]},
    "env": {"TOLLGATE_LOG": "info,tollgate=debug"},
    "services": {"router": {"autoscaling": {"enabled": False}, "replicas": 3}},
    "extraConfig": "# service sections, e.g. [provider_adapter], go here\n",
    "imagePullSecrets": [{"name": "regcred"}],
}
SCENARIOS: dict[str, dict] = {
    "defaults": {},
    "gateway-canary-10": canary(10),
    "gateway-canary-50": canary(50),
    "gateway-canary-100": canary(100),
    "nginx": NGINX,
    "nginx-canary-10": deep_merge(NGINX, canary(10)),
    "nginx-canary-50": deep_merge(NGINX, canary(50)),
    "nginx-canary-100": deep_merge(NGINX, canary(100)),
    "no-front-door": {"ingress": {"mode": "none"}},
    "canary-rolled-back": canary(0),
    "everything-on": deep_merge(EVERYTHING, canary(10)),
}
# Values the schema (or the templates) must refuse, with a word the error must contain.
REJECTED: dict[str, tuple[dict, str]] = {
    "canary.weight 101": (deep_merge(canary(0), {"canary": {"weight": 101}}), "weight"),
    "canary.weight -1": (deep_merge(canary(0), {"canary": {"weight": -1}}), "weight"),
    "canary.weight as a string": (deep_merge(canary(0), {"canary": {"weight": "10"}}), "weight"),
    "canary without image tag": ({"canary": {"enabled": True, "weight": 10}}, "tag"),
    "weight while the canary is off": ({"canary": {"enabled": False, "weight": 10}}, "weight"),
    "unknown ingress mode": ({"ingress": {"mode": "traefik"}}, "mode"),
    "unknown top-level key": ({"replicas": 3}, "replicas"),
    "unknown service": ({"services": {"gateway": {}}}, "gateway"),
    "termination grace shorter than the drain":
        ({"terminationGracePeriodSeconds": 10}, "terminationGracePeriodSeconds"),
}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def run(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            self.failed.append(name)
            detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
            print(f"FAIL {name}: {detail}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name}", flush=True)


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path
                docs.append(doc)
    return docs


def crd_schema(doc: dict) -> dict | None:
    group = doc["apiVersion"].split("/")[0].split(".")[0]
    version = doc["apiVersion"].split("/")[-1]
    path = SCHEMAS / f"{doc['kind'].lower()}-{group}-{version}.json"
    return json.loads(path.read_text()) if path.exists() else None


def validate_manifests(docs: list[dict]) -> None:
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "__template"}
        where = f"{doc['__template']}: {doc['kind']}/{doc['metadata']['name']}"
        for version in KUBE_VERSIONS:
            try:
                kv.validate(body, version, strict=True)
            except kv.SchemaNotFoundError:
                schema = crd_schema(body)
                assert schema is not None, f"{where}: no schema for {body['apiVersion']} {body['kind']}"
                errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(body), key=str)
                assert not errors, f"{where}: " + "; ".join(
                    f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise AssertionError(f"{where} (Kubernetes {version}): {path}: {e.message}") from None


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(deployment: dict) -> dict[str, object]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def known_config_keys() -> set[str]:
    """Every key of deploy/tollgate.example.toml (which lists them all), commented-out ones too."""
    keys, section = set(), ""
    for line in (ROOT / "deploy" / "tollgate.example.toml").read_text().splitlines():
        if m := re.match(r"^\[([a-z_.]+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#?\s*([a-z_]+)\s*=", line):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def check_config_keys(where: str, toml_text: str | None, env_names: list[str]) -> None:
    """tollgate stops with exit 64 on an unknown key: every key the deployment sets must exist."""
    known = known_config_keys()
    used = []
    if toml_text is not None:
        def walk(prefix: str, table: dict) -> None:
            for k, v in table.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    used.append(f"{prefix}{k}")
        walk("", tomllib.loads(toml_text))
    for name in env_names:
        if name.startswith("TOLLGATE_") and name not in ("TOLLGATE_LOG", "TOLLGATE_CONFIG"):
            used.append(name[len("TOLLGATE_"):].lower().replace("__", "."))
    unknown = sorted(set(used) - known)
    assert not unknown, f"{where}: keys not in deploy/tollgate.example.toml: {unknown}"


def check_rendered(name: str, values: dict, docs: list[dict]) -> None:
    merged = helm.Chart.load(str(CHART)).merge_values(values)
    canary_on = merged["canary"]["enabled"]
    weight = merged["canary"]["weight"]
    mode = merged["ingress"]["mode"]
    tracks = ["stable", "canary"] if canary_on else ["stable"]
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")

    expected = {f"{RELEASE}-{s}{'-canary' if t == 'canary' else ''}": (s, t) for s in SERVICES for t in tracks}
    assert set(deployments) == set(expected), f"Deployments {sorted(deployments)} != {sorted(expected)}"
    for dname, (svc, track) in expected.items():
        d = deployments[dname]
        pod = d["spec"]["template"]
        assert d["metadata"]["labels"]["track"] == track and pod["metadata"]["labels"]["track"] == track, \
            f"{dname}: track label is not {track}"
        c = pod["spec"]["containers"][0]
        env = env_of(d)
        assert env.get("TOLLGATE_TELEMETRY__TRACK") == track, f"{dname}: TOLLGATE_TELEMETRY__TRACK != {track}"
        grpc, metrics = PORTS[svc]
        assert env.get(f"TOLLGATE_{SECTIONS[svc]}__LISTEN__GRPC") == f"0.0.0.0:{grpc}", f"{dname}: gRPC listen"
        assert env.get(f"TOLLGATE_{SECTIONS[svc]}__LISTEN__METRICS") == f"0.0.0.0:{metrics}", f"{dname}: metrics listen"
        assert c["args"][:3] == ["serve", "--target", svc], f"{dname}: args {c['args']}"
        want_tag = merged["canary"]["image"]["tag"] if track == "canary" else (merged["image"]["tag"] or "0.1.0")
        assert c["image"].endswith(f":{want_tag}"), f"{dname}: image {c['image']} is not tag {want_tag}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == grpc, f"{dname}: {probe} is not a gRPC probe on {grpc}"
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"], \
            f"{dname}: securityContext {sc}"
        assert pod["spec"]["securityContext"]["runAsNonRoot"], f"{dname}: pod runs as root"
        assert c["resources"].get("requests"), f"{dname}: no resource requests"
        # Peers: a canary calls canary peers only, stable calls stable peers only.
        for key, url in env.items():
            if key.startswith("TOLLGATE_PEERS__"):
                assert ("-canary" in str(url)) == (track == "canary"), f"{dname}: {key}={url} crosses tracks"
        svc_obj = services[dname]
        port_names = {p["name"]: p["port"] for p in svc_obj["spec"]["ports"]}
        assert port_names == {"grpc": grpc, "metrics": metrics}, f"Service {dname}: ports {port_names}"
        assert svc_obj["spec"]["selector"]["track"] == track, f"Service {dname}: selector track"
        headless = services[f"{dname}-headless"]
        assert headless["spec"]["clusterIP"] == "None", f"{dname}-headless is not headless"
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-config"]["data"]["tollgate.toml"]
    env_names = [n for d in deployments.values() for n in env_of(d)]
    check_config_keys(name, config, env_names)
    assert len(by_kind(docs, "NetworkPolicy")) == 5, "NetworkPolicy: want one per service"
    pdbs, hpas = by_kind(docs, "PodDisruptionBudget"), by_kind(docs, "HorizontalPodAutoscaler")
    assert set(pdbs) == set(expected), f"PodDisruptionBudgets {sorted(pdbs)} != {sorted(expected)}"
    for dname, (svc, track) in expected.items():
        scaling = merged["services"][{"token-cache": "tokenCache", "cost-tracker": "costTracker",
                                      "provider-adapter": "providerAdapter"}.get(svc, svc)]["autoscaling"]
        replicas = deployments[dname]["spec"].get("replicas")
        if scaling["enabled"]:
            hpa = hpas[dname]["spec"]
            assert replicas is None, f"{dname}: replicas set although an HPA scales it"
            assert hpa["scaleTargetRef"]["name"] == dname
            want_min = merged["canary"]["replicas"] if track == "canary" else scaling["minReplicas"]
            assert hpa["minReplicas"] == want_min and hpa["maxReplicas"] >= scaling["maxReplicas"], f"{dname}: HPA {hpa}"
        else:
            assert dname not in hpas and replicas is not None, f"{dname}: no HPA, so replicas must be set"

    routes = by_kind(docs, "GRPCRoute")
    ingresses = by_kind(docs, "Ingress")
    if mode == "gateway":
        assert not ingresses and len(routes) == 1, "gateway mode: want one GRPCRoute, no Ingress"
        refs = routes[f"{RELEASE}-router"]["spec"]["rules"][0]["backendRefs"]
        got = [(r["name"], r.get("weight")) for r in refs]
        want = ([(f"{RELEASE}-router", 100 - weight), (f"{RELEASE}-router-canary", weight)]
                if canary_on else [(f"{RELEASE}-router", None)])
        assert got == want, f"GRPCRoute backendRefs {got} != {want}"
        assert sum(w or 0 for _, w in got) in (0, 100), "weights do not add up to 100"
    elif mode == "nginx":
        assert not routes, "nginx mode: no GRPCRoute"
        assert set(ingresses) == {f"{RELEASE}-router" + ("-canary" if t == "canary" else "") for t in tracks}
        main = ingresses[f"{RELEASE}-router"]["metadata"]["annotations"]
        assert main["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
        assert "nginx.ingress.kubernetes.io/canary" not in main, "the main Ingress must not be a canary"
        if canary_on:
            ann = ingresses[f"{RELEASE}-router-canary"]["metadata"]["annotations"]
            assert ann["nginx.ingress.kubernetes.io/canary"] == "true"
            assert ann["nginx.ingress.kubernetes.io/canary-weight"] == str(weight), \
                f"canary-weight {ann['nginx.ingress.kubernetes.io/canary-weight']!r} != {weight}"
            assert ann["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
            backend = ingresses[f"{RELEASE}-router-canary"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
            assert backend["service"]["name"] == f"{RELEASE}-router-canary"
    else:
        assert not routes and not ingresses, "mode none: no front door objects"

    rules = by_kind(docs, "PrometheusRule")
    if merged["metrics"]["prometheusRule"]["enabled"]:
        want_rules = yaml.safe_load(RULES.read_text().replace(
            "https://git.internal/tollgate/k8s/RUNBOOK.md", merged["metrics"]["prometheusRule"]["runbookBaseUrl"]))
        got_rules = rules[RELEASE]["spec"]
        assert got_rules == want_rules, "PrometheusRule spec differs from k8s/tollgate/rules/tollgate.rules.yaml"
    else:
        assert not rules
    assert bool(by_kind(docs, "ServiceMonitor")) == merged["metrics"]["serviceMonitor"]["enabled"]


def check_lint(values: dict) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    assert not problems and not report.get("errors"), f"helm lint: {problems or report.get('errors')}"


def check_rejected(values: dict, word: str) -> None:
    try:
        render(values)
    except helm.HelmError as e:
        assert word in str(e), f"refused, but the message does not name {word!r}: {e}"
        return
    raise AssertionError("rendered without error")


def check_promtool() -> None:
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert promtool, "promtool not found (scripts/tools.sh installs the Debian package prometheus)"
    for args in (["check", "rules", str(RULES)],
                 ["test", "rules", *sorted(str(p) for p in RULE_TESTS.glob("*.test.yaml"))]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def check_gate_queries() -> None:
    """The gate's PromQL, run by Prometheus's own engine (promtool) on known series."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import canary_gate

    q = canary_gate.queries("tollgate.v1.Router", "5m", 'namespace="prod"')
    base = 'namespace="prod",grpc_service="tollgate.v1.Router",grpc_method="Complete"'
    series = [
        # canary: 66 calls a minute, 6 Unavailable, 3 InvalidArgument (a caller's error)
        (f'grpc_server_handled_total{{{base},grpc_code="OK",track="canary"}}', "0+57x10"),
        (f'grpc_server_handled_total{{{base},grpc_code="Unavailable",track="canary"}}', "0+6x10"),
        (f'grpc_server_handled_total{{{base},grpc_code="InvalidArgument",track="canary"}}', "0+3x10"),
        # stable: no errors; another namespace's canary must not count
        (f'grpc_server_handled_total{{{base},grpc_code="OK",track="stable"}}', "0+600x10"),
        ('grpc_server_handled_total{namespace="staging",grpc_service="tollgate.v1.Router",'
         'grpc_method="Complete",grpc_code="Internal",track="canary"}', "0+1000x10"),
    ]
    for track, slow in (("canary", True), ("stable", False)):
        for le, per_min in (("0.05", 0 if slow else 60), ("0.1", 0 if slow else 60), ("0.25", 60), ("+Inf", 60)):
            series.append((f'grpc_server_handling_seconds_bucket{{{base},track="{track}",le="{le}"}}', f"0+{per_min}x10"))
    want = {"canary_calls": 330, "canary_error_ratio": 6 / 66, "stable_error_ratio": 0,
            "canary_p95_seconds": 0.2425, "stable_p95_seconds": 0.0475}
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [{"expr": q[name], "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": value}]}
                             for name, value in want.items()],
    }]}
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert promtool, "promtool not found"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gate.test.yaml"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"the gate's queries:\n{proc.stdout}{proc.stderr}"


def anchor(heading: str) -> str:
    """A Markdown heading's anchor as GitHub and GitLab make it."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def check_alerts_documented_and_tested() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    runbook = (ROOT / "k8s" / "RUNBOOK.md").read_text()
    anchors = {anchor(line.lstrip("#")) for line in runbook.splitlines() if line.startswith("#")}
    tests = [yaml.safe_load(p.read_text()) for p in RULE_TESTS.glob("*.test.yaml")]
    cases = [c for t in tests for group in t["tests"] for c in group.get("alert_rule_test", [])]
    problems = []
    for a in alerts:
        name = a["alert"]
        if a.get("labels", {}).get("severity") not in ("critical", "warning"):
            problems.append(f"{name}: severity label must be critical or warning")
        ann = a.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                problems.append(f"{name}: no {key} annotation")
        url = ann.get("runbook_url", "")
        if not url.startswith("https://git.internal/tollgate/k8s/RUNBOOK.md#") or url.split("#")[1] not in anchors:
            problems.append(f"{name}: runbook_url {url} has no heading in k8s/RUNBOOK.md")
        mine = [c for c in cases if c["alertname"] == name]
        if not any(c.get("exp_alerts") for c in mine):
            problems.append(f"{name}: no promtool case where it fires")
        if not any(not c.get("exp_alerts") for c in mine):
            problems.append(f"{name}: no promtool case where it stays silent")
    assert alerts and not problems, "; ".join(problems)


def check_compose() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    for svc in SERVICES:
        c = compose[svc]
        assert c["command"] == ["serve", "--target", svc], f"compose {svc}: command {c['command']}"
        env = c["environment"]
        assert ("DATABASE_URL" in env) == (svc in ("casebank", "cost-tracker")), f"compose {svc}: DATABASE_URL"
        assert ("REDIS_URL" in env) == (svc == "token-cache"), f"compose {svc}: REDIS_URL"
        for peer in SERVICES:
            assert env[f"TOLLGATE_PEERS__{SECTIONS[peer]}"] == f"http://{peer}:{PORTS[peer][0]}"
        assert c["read_only"] and c["image"] == compose["router"]["image"]
        check_config_keys(f"compose {svc}", None, list(env))
    dockerfile_env = re.findall(r"(TOLLGATE_[A-Z_]+)=", (ROOT / "deploy" / "Dockerfile").read_text())
    assert len(dockerfile_env) == 11, dockerfile_env
    check_config_keys("deploy/Dockerfile", None, dockerfile_env)
    for needed in ("postgres", "redis", "otel-collector", "prometheus"):
        assert needed in compose, f"compose: no {needed}"
    assert "pgvector" in compose["postgres"]["image"]
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert promtool, "promtool not found"
    proc = subprocess.run([promtool, "check", "config", "--syntax-only", str(ROOT / "deploy" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool check config deploy/prometheus.yml:\n{proc.stdout}{proc.stderr}"


def check_dashboards() -> None:
    """Every dashboard query is PromQL that Prometheus's engine accepts (promtool evaluates each
    on an empty TSDB: a parse error fails the test) and names only metrics the rules or the
    services' agreed metric names provide."""
    exprs = []
    for path in sorted((ROOT / "deploy" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                exprs.append((f"{path.name}: {panel['title']}", target["expr"].replace("$namespace", ".*")))
    assert exprs, "no dashboard queries"
    test = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [],
        "promql_expr_test": [{"expr": e, "eval_time": "1m", "exp_samples": []} for _, e in exprs]}]}
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert promtool, "promtool not found"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboards.test.yaml"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"dashboard queries:\n{proc.stdout}{proc.stderr}"
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    for where, e in exprs:
        for name in re.findall(r"\b(tollgate[:_][a-z0-9_:]+|grpc_server_[a-z_]+|up)\b(?=[{\[ )])", e):
            if ":" in name:
                assert name in recorded, f"{where}: {name} is not a recording rule"


def check_canary_script() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "k8s" / "tests" / "test_canary.py")],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"k8s/tests/test_canary.py failed:\n{proc.stdout}{proc.stderr}")
    sys.stdout.write("".join(f"       {line}\n" for line in proc.stdout.splitlines()))


def main() -> int:
    checks = Checks()
    for name, values in SCENARIOS.items():
        holder: dict = {}

        def do_render(v=values, h=holder) -> None:
            h["docs"] = render(v)

        checks.run(f"render {name}", do_render)
        if "docs" not in holder:
            continue
        checks.run(f"kubernetes-validate --strict {name} ({len(holder['docs'])} manifests, "
                   f"Kubernetes {' and '.join(KUBE_VERSIONS)})", validate_manifests, holder["docs"])
        checks.run(f"rendered objects {name}", check_rendered, name, values, holder["docs"])
    for name in ("defaults", "gateway-canary-50", "nginx-canary-10", "everything-on"):
        checks.run(f"helm lint --strict {name}", check_lint, SCENARIOS[name])
    for name, (values, word) in REJECTED.items():
        checks.run(f"refuses {name}", check_rejected, values, word)
    checks.run("promtool check rules + test rules", check_promtool)
    checks.run("every alert: severity, annotations, a RUNBOOK.md heading, firing and silent tests",
               check_alerts_documented_and_tested)
    checks.run("deploy/compose.yaml and deploy/prometheus.yml", check_compose)
    checks.run("deploy/dashboards: every query is valid PromQL", check_dashboards)
    checks.run("canary gate queries on Prometheus's engine (promtool)", check_gate_queries)
    checks.run("canary gate and rollout (fake Prometheus, fake helm)", check_canary_script)
    print(f"deploy-check: {checks.passed} passed, {len(checks.failed)} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        sys.exit(main())
