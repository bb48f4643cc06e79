"""A real API process (`uvicorn app.main:app`) on a free port, against the test database and Redis."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.smtp import HOST, free_port

BACKEND_DIR = Path(__file__).resolve().parent.parent
# Generous: a cold start compiles bytecode and imports under coverage, on a machine that may be busy.
STARTUP_SECONDS = 120


@contextmanager
def api_process(log_path: Path, **settings: str) -> Iterator[str]:
    """Start the API with these extra settings (environment variables); yield its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings}
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
