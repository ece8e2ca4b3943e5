"""deploy/k8s validated offline: kustomize renders it, every object matches the Kubernetes schemas, and it
agrees with the code (selectors, probe paths, environment variables, fetch commands)."""
from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shared.contract import DEFAULT_PORTS, STAGE_NAMES

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# Module of the app each Deployment's main container serves (None: no HTTP app, e.g. the worker).
APPS = {**{stage: f"services.{stage}.app" for stage in STAGE_NAMES}, "gateway": "gateway.app", "worker": None,
        "ui": None, "redis": None}
# Source folders whose code reads the environment of each container.
SOURCES = {**{stage: [f"services/{stage}", "shared"] for stage in STAGE_NAMES},
           "gateway": ["gateway", "shared"], "worker": ["gateway", "shared"], "ui": ["ui"]}
STREAMLIT_HEALTH = "/_stcore/health"   # served by Streamlit itself


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render deploy/k8s (kubectl kustomize)")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    version = kubernetes_validate.latest_version()
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_deployment_and_service_per_stage_gateway_ui_redis_and_workers(rendered):
    deployments, services = of_kind(rendered, "Deployment"), of_kind(rendered, "Service")
    present_stages = [s for s in STAGE_NAMES if (ROOT / "services" / s / "app.py").is_file()]
    for name in present_stages + ["gateway", "ui", "redis"]:
        assert name in deployments and name in services, name
    assert "worker" in deployments
    for stage in present_stages:
        assert services[stage]["spec"]["ports"][0]["port"] == DEFAULT_PORTS[stage]
        # Headless: the name resolves to every pod, which the gateway balances per request.
        assert services[stage]["spec"].get("clusterIP") == "None"


def test_every_service_selector_matches_a_deployment(rendered):
    deployments = of_kind(rendered, "Deployment").values()
    for name, service in of_kind(rendered, "Service").items():
        selector = service["spec"]["selector"]
        matches = [d for d in deployments
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        ports = {p["containerPort"] for c in containers(matches[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name} targets a port no container opens"


def test_every_http_probe_path_exists_in_its_app(rendered):
    for name, deployment in of_kind(rendered, "Deployment").items():
        for container in containers(deployment):
            for kind in ("readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if name != "redis" and name != "worker":
                    assert probe is not None, f"{name} has no {kind}"
                if probe is None or "httpGet" not in probe:
                    continue
                path = probe["httpGet"]["path"]
                if name == "ui":
                    assert path == STREAMLIT_HEALTH
                    continue
                app = importlib.import_module(APPS[name]).app
                routes = {getattr(r, "path", None) for r in app.routes}
                assert path in routes, f"{name}: probe path {path} is not served"
                assert probe["httpGet"]["port"] in {p["containerPort"] for p in container["ports"]}


def names_read(folders: list[str]) -> set[str]:
    """Environment variable names the code can read: upper-case string constants, the fields of the
    pydantic-settings classes (their names upper-cased), plus the gateway's per-stage names (built as
    f"{stage.upper()}_URL" and "_TIMEOUT_S")."""
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", node.value):
                    names.add(node.value)
                if isinstance(node, ast.ClassDef) and node.name.endswith("Settings"):
                    names |= {item.target.id.upper() for item in node.body
                              if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    if "gateway" in folders:
        names |= {f"{s.upper()}{suffix}" for s in STAGE_NAMES for suffix in ("_URL", "_TIMEOUT_S")}
    return names


def test_every_env_var_set_is_read_by_the_code(rendered):
    config_maps = of_kind(rendered, "ConfigMap")
    for name, deployment in of_kind(rendered, "Deployment").items():
        if name == "redis":
            continue
        read = names_read(SOURCES[name])
        for container in containers(deployment):
            names = [e["name"] for e in container.get("env", [])]
            for source in container.get("envFrom", []):
                names += list(config_maps[source["configMapRef"]["name"]]["data"])
            for env_name in names:
                assert env_name in read, f"{name} sets {env_name}, which its code never reads"


def mebibytes(quantity: str) -> int:
    return int(quantity[:-2]) * (1024 if quantity.endswith("Gi") else 1)


def test_resources_and_autoscalers(rendered):
    deployments = of_kind(rendered, "Deployment")
    for name, deployment in deployments.items():
        for container in containers(deployment):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
            for amounts in (resources["requests"], resources["limits"]):
                assert re.fullmatch(r"\d+(\.\d+)?m?", str(amounts["cpu"])), (name, amounts)
                assert re.fullmatch(r"\d+(Mi|Gi)", str(amounts["memory"])), (name, amounts)
            assert mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])
    autoscalers = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(rendered, "HorizontalPodAutoscaler").values()}
    for name in [s for s in STAGE_NAMES if s in deployments] + ["worker"]:
        assert name in autoscalers, f"no HorizontalPodAutoscaler for {name}"
        assert autoscalers[name]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_model_cache_job_runs_each_model_stage_fetch_command(rendered):
    job = of_kind(rendered, "Job")["fetch-models"]
    commands = [" ".join(c["command"]) for c in job["spec"]["template"]["spec"]["initContainers"]]
    fetchers = sorted(p.parent.name for p in (ROOT / "services").glob("*/fetch.py"))
    assert fetchers, "no stage has a fetch command"
    for stage in fetchers:
        assert f"python -m services.{stage}.fetch" in commands, f"the model Job does not fetch {stage}"
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim in of_kind(rendered, "PersistentVolumeClaim")
    for stage in fetchers:  # and the stages mount that same cache
        volumes = of_kind(rendered, "Deployment")[stage]["spec"]["template"]["spec"]["volumes"]
        assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim
