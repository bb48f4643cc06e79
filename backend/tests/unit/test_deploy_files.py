"""The deployment files, checked without a container engine: the Dockerfile linted (hadolint),
docker-compose.yml valid against the Compose spec and running what the README says (`python -m app
serve`, the worker, health checks, drain time, Caddy in front), the Caddyfile accepted by
`caddy validate`, the GitHub workflow by actionlint. (tests/e2e/test_image_replay.py runs the image's
steps; tests/e2e/test_caddy.py runs the Caddyfile in front of a real API.)"""

import os
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
CADDYFILE = BACKEND_DIR.parent / "Caddyfile"
WORKFLOW = BACKEND_DIR.parent / ".github" / "workflows" / "backend.yml"
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


@pytest.mark.parametrize("tls", ["auto", "internal"])
def test_the_caddyfile_passes_caddy_validate(tls, tmp_path):
    # Caddy keeps its state under XDG_DATA_HOME: a folder of the test's, never the machine's.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "DOMAIN": "api.example.com", "CADDY_TLS": tls}
    command = [tool("caddy"), "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "Valid configuration" in result.stdout, result.stdout + result.stderr


def test_the_caddyfile_is_formatted():
    result = subprocess.run([tool("caddy"), "fmt", str(CADDYFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == CADDYFILE.read_text(), "run `caddy fmt --overwrite ../Caddyfile`"


def test_compose_puts_caddy_in_front_of_the_api_and_trusts_only_it(compose):
    services = compose["services"]
    caddy, api = services["caddy"], services["backend"]
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert caddy["environment"]["API_UPSTREAM"] == "backend:8000"
    caddy_address = caddy["networks"]["default"]["ipv4_address"]
    for name in ("backend", "worker"):
        assert services[name]["environment"]["TRUSTED_PROXIES"] == caddy_address
    # Clients reach the API only through Caddy: its own port is bound to the host's loopback.
    assert all(port.startswith("127.0.0.1:") for port in api["ports"])


def test_the_workflow_passes_actionlint():
    result = subprocess.run([tool("actionlint"), str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_pushes_the_image_from_main_after_the_tests():
    jobs = YAML(typ="safe").load(WORKFLOW.read_text())["jobs"]
    image = jobs["image"]
    assert image["needs"] == "test"
    assert "refs/heads/main" in image["if"] and "push" in image["if"]
    assert image["permissions"]["packages"] == "write"
    build = next(step for step in image["steps"] if step.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["push"] is True and build["with"]["file"] == "backend/Dockerfile"
    login = next(step for step in image["steps"] if step.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "ghcr.io"
