"""The deployment files: linted and schema-checked offline, consistent with the code.

No Docker engine or cluster runs here, so: hadolint on the Dockerfile, the compose file against
the compose-spec JSON schema (vendored by check-jsonschema), the Kubernetes manifests against
the Kubernetes API's JSON schemas in strict mode (kubernetes-validate, no network), and the rest
(KEDA's ScaledObject, the kustomization, the commands and paths the files share with the code)
checked here against the code itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import msgspec
import pytest
import yaml

from service.settings import PREFIX, JobSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests target (preStop sleep is on by default from 1.30) and the
# newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def _tool(name: str) -> str:
    """A console script of the test extra, next to this interpreter (or on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[test]'"
    return found


def _setting_variables() -> set[str]:
    names = {PREFIX + "CONFIG"}
    for group in msgspec.structs.fields(Settings):
        if isinstance(group.type, type) and issubclass(group.type, msgspec.Struct):
            names |= {PREFIX + f.name.upper() for f in msgspec.structs.fields(group.type)}
    return names


def _cli_commands() -> str:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


# ---- Dockerfile ------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_the_cli_as_a_non_root_user_with_volumes_and_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage: build and runtime"
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-", text, re.M)
    assert "onnxruntime-gpu" in text and "tensorrt" in text and "download.pytorch.org" in text
    runtime = text.split(f"AS {stages[-1][1]}", 1)[1]
    user = re.search(r"^USER\s+(\S+)", runtime, re.M)
    assert user and not user.group(1).startswith(("root", "0")), "runs as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?.*/health/live", runtime, re.M)
    assert re.search(r'^ENTRYPOINT \["vision-api"\]', runtime, re.M)
    command = re.search(r'^CMD \["(\w[\w-]*)"', runtime, re.M)
    assert command and command.group(1) == "serve"
    for word in ("serve", "worker"):
        assert word in _cli_commands()
    volumes = set(re.findall(r'"(/data/[^"]+)"', re.search(r"^VOLUME (.*)$", runtime, re.M)[1]))
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+)", runtime.split("ENV", 1)[1].split("USER", 1)[0]))
    assert {env["VISION_API_ARTIFACTS_DIR"], env["HF_HOME"]} == volumes
    assert {k for k in env if k.startswith(PREFIX)} <= _setting_variables()


def test_the_healthcheck_path_is_served() -> None:
    from service.app import create_app

    paths = {route.path for route in create_app(Settings()).routes}
    assert {"/health/live", "/health/ready"} <= paths


# ---- docker-compose.yml ----------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_redis_the_api_and_a_worker_on_the_gpu() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert services["api"]["command"] == ["serve"]
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["healthcheck"] == {"disable": True}
    for name in ("api", "worker"):
        service = services[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
        assert service["environment"]["VISION_API_REDIS_URL"].startswith("redis://redis:")
        assert set(service["environment"]) - {"HF_TOKEN"} <= _setting_variables()
        mounts = {volume.split(":")[1] for volume in service["volumes"]}
        assert mounts == {"/data/artifacts", "/data/hf"}, name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


# ---- deploy/k8s ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for name, doc in _manifests():
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue  # not Kubernetes API kinds: checked below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc}"
            ) from None
        checked += 1
    assert checked >= 7


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    names = {d["metadata"]["name"] for _, d in _manifests() if d["kind"] == "Namespace"}
    assert names == {kustomization["namespace"]}


def test_api_probes_and_worker_command() -> None:
    api = _one("Deployment", "vision-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["args"] == ["serve"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    port = api["ports"][0]
    assert port["containerPort"] == Settings().server.port
    worker = _one("Deployment", "vision-api-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["worker"]
    for container in (api, worker):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["envFrom"][0]["configMapRef"]["name"] == "vision-api"
    service = _one("Service", "vision-api")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    config = _one("ConfigMap", "vision-api")["data"]
    assert set(config) <= _setting_variables()
    redis = _one("Service", "vision-api-redis")
    assert config["VISION_API_REDIS_URL"].startswith(f"redis://{redis['metadata']['name']}:")


def test_keda_scales_the_workers_on_the_arq_queue() -> None:
    scaled = _one("ScaledObject", "vision-api-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "vision-api-worker"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    # KEDA's redis scaler reads the key's TYPE, then ZCARD for arq's sorted set.
    prefix = _one("ConfigMap", "vision-api")["data"]["VISION_API_REDIS_KEY_PREFIX"]
    assert prefix == JobSettings().redis_key_prefix
    assert metadata["listName"] == f"{prefix}:queue"
    assert int(metadata["listLength"]) >= 1
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    host, port = metadata["address"].rsplit(":", 1)
    assert host == f"vision-api-redis.{namespace}.svc.cluster.local" and port == "6379"
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata are strings"
