"""Test fixtures: every stage service and the gateway run as real uvicorn processes on free loopback ports."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "images"
ARTIFACTS = ROOT / "artifacts"
STAGE_APPS = {name: f"services.{name}.app:app" for name in ("denoise", "deblur", "colorize", "upscale",
                                                             "postprocess", "repair", "tone")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    name: str
    app: str
    port: int
    env: dict
    proc: subprocess.Popen | None = None
    argv: list[str] | None = None   # a non-HTTP process (a job worker); None: uvicorn serving ``app``

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = open(log_dir / f"{self.name}.log", "ab")
        argv = self.argv or [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port",
                             str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        if self.argv is not None:  # a worker has no port: alive is ready (it reads the queue when it can)
            time.sleep(0.5)
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see artifacts/logs")
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see artifacts/logs")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Stack:
    processes: dict[str, Process] = field(default_factory=dict)
    log_dir: Path = ARTIFACTS / "logs"
    redis_url: str = ""   # the job store of the stack's gateway and worker

    def url(self, name: str) -> str:
        return self.processes[name].url

    def restart(self, name: str) -> None:
        process = self.processes[name]
        process.stop()
        process.start(self.log_dir)
        process.wait_ready()


class RedisServer:
    """A throwaway redis-server on a free loopback port (no persistence: the tests kill clients, not it)."""

    def __init__(self, log_dir: Path):
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server; .ci/run does it)")
        self.port = free_port()
        self.proc = subprocess.Popen([executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(log_dir)],
                                     stdout=open(log_dir / f"redis-{self.port}.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def worker_process(name: str, env: dict) -> Process:
    return Process(name, "", 0, env, argv=[sys.executable, "-m", "gateway.worker"])


def base_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def stack() -> Stack:
    """Every stage and the gateway, started once for the test session."""
    log_dir = ARTIFACTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = base_env()
    stack = Stack(log_dir=log_dir)
    for name, app in STAGE_APPS.items():
        stack.processes[name] = Process(name, app, free_port(), env)
    gateway_env = dict(env)
    for name in STAGE_APPS:
        gateway_env[f"{name.upper()}_URL"] = stack.processes[name].url
    # short enough that a dead stage is reported quickly, long enough for real CPU models on small test images
    gateway_env.setdefault("STAGE_TIMEOUT_S", "300")
    gateway_env.setdefault("STAGE_CONNECT_TIMEOUT_S", "2")
    redis = RedisServer(log_dir)
    gateway_env.update(REDIS_URL=redis.url, JOBS_QUEUE_NAME="stack")
    stack.redis_url = redis.url
    stack.processes["gateway"] = Process("gateway", "gateway.app:app", free_port(), gateway_env)
    stack.processes["worker"] = worker_process("worker", gateway_env)
    try:
        for process in stack.processes.values():
            process.start(log_dir)
        for process in stack.processes.values():
            process.wait_ready()
        yield stack
    finally:
        for process in stack.processes.values():
            process.stop()
        redis.stop()


@pytest.fixture(scope="session")
def shared_images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.fail(f"test images not found at {SHARED_IMAGES}")
    return SHARED_IMAGES
