"""docker-compose.yml, Dockerfiles and the per-service dependency split."""
from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("denoise", "deblur", "colorize", "upscale", "postprocess", "repair", "tone")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_one_service_per_stage_with_health_and_limits():
    services = compose()["services"]
    assert set(STAGES) | {"gateway", "ui"} <= set(services)
    for name in STAGES:
        service = services[name]
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        assert service["build"]["context"] == "."
        assert "healthcheck" in service and service["restart"] == "unless-stopped"
        assert service["deploy"]["replicas"] >= 1 and service["deploy"]["resources"]["limits"]["memory"]
        assert "ports" not in service, f"{name} must not publish a host port, or it cannot be scaled"
    gateway_env = services["gateway"]["environment"]
    for name in STAGES:
        assert gateway_env[f"{name.upper()}_URL"].startswith(f"http://{name}:")


def test_compose_splits_api_and_workers_over_redis():
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:")
    worker = services["worker"]
    assert worker["command"] == ["python", "-m", "gateway.worker"] and "ports" not in worker
    for name in ("gateway", "worker"):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"].startswith("redis://redis:")
        for stage in STAGES:
            assert environment[f"{stage.upper()}_URL"].startswith(f"http://{stage}:")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_validates():
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("folder", [f"services/{s}" for s in STAGES] + ["gateway"])
def test_each_service_has_its_own_dependencies_and_image(folder):
    requirements = (ROOT / folder / "requirements.txt").read_text()
    dockerfile = (ROOT / folder / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile and "shared/" in dockerfile
    if folder in ("services/denoise", "services/postprocess", "services/repair", "services/tone", "gateway"):
        assert "torch" not in requirements, "classical services must not pull in torch"


@pytest.mark.parametrize("stage", STAGES)
def test_no_service_imports_another_service(stage):
    for path in (ROOT / "services" / stage).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("services."):
                    assert name.startswith(f"services.{stage}"), f"{path} imports {name}"
                assert not name.startswith("gateway"), f"{path} imports the gateway"
