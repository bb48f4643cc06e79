"""The Dockerfile and docker-compose.yml: linted (hadolint), valid against the Compose spec, and
running what the README says (`python -m app serve`, the worker, health checks, drain time)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from app.config import Settings
from app.services.messaging.worker import LEASE_USE

BACKEND_DIR = Path(__file__).resolve().parents[2]
DOCKERFILE = BACKEND_DIR / "Dockerfile"
COMPOSE = BACKEND_DIR.parent / "docker-compose.yml"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is a dev dependency (uv sync)"
    return path


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match[1])


@pytest.fixture(scope="module")
def compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_file_is_valid_against_the_compose_spec():
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_serves_with_python_m_app_serve_and_checks_health():
    text = DOCKERFILE.read_text()
    assert 'CMD ["python", "-m", "app", "serve"]' in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "HOST=0.0.0.0" in text


def test_compose_runs_the_api_and_the_worker_with_health_checks_and_time_to_drain(compose):
    services = compose["services"]
    api, worker = services["backend"], services["worker"]
    assert "command" not in api  # the image's: python -m app serve
    assert worker["command"] == ["python", "-m", "app", "worker"]
    assert not worker["healthcheck"].get("disable")
    probe = f"http://127.0.0.1:{worker['environment']['WORKER_METRICS_PORT']}/health"
    assert probe in " ".join(worker["healthcheck"]["test"])  # the worker's own /health (its probe port)
    for service in (api, worker):
        assert service["environment"]["DATABASE_URL"]  # the shared settings reached both
    grace = float(api["environment"]["GRACEFUL_TIMEOUT_SECONDS"])
    assert seconds(api["stop_grace_period"]) > grace
    assert seconds(worker["stop_grace_period"]) > Settings().outbox_lease_seconds * LEASE_USE
