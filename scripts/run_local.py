"""Start every stage service, the gateway, a job worker and the UI as local processes; stop them all on Ctrl-C.

Used by `make run`. Each process gets its default port (override with <NAME>_PORT env vars). The console
shows one line per service when it is healthy; each process's own output goes to artifacts/logs/<name>.log
(RUN_LOGS=console keeps it on the console instead).
Jobs: REDIS_URL when set; otherwise a redis-server started here when one is on PATH (data in
~/.cache/photo-restore/redis, append-only file on, so queued and finished jobs survive a restart); otherwise
huey's SQLite backend (gateway/jobs_store.py, JOBS_SQLITE_PATH).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.contract import DEFAULT_PORTS, STAGE_NAMES  # noqa: E402

HOST = os.environ.get("HOST", "127.0.0.1")
LOG_DIR = ROOT / "artifacts" / "logs"


def port_of(name: str) -> int:
    return int(os.environ.get(f"{name.upper()}_PORT", DEFAULT_PORTS[name]))


REDIS_DIR = Path(os.path.expanduser("~/.cache/photo-restore/redis"))


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_command() -> tuple[list[str] | None, str | None]:
    """(argv of a redis-server to start or None, REDIS_URL or None for the SQLite backend)."""
    if os.environ.get("REDIS_URL"):
        return None, os.environ["REDIS_URL"]
    executable = shutil.which("redis-server")
    if executable is None:
        return None, None
    port = int(os.environ.get("REDIS_PORT", 6379))
    url = f"redis://127.0.0.1:{port}/0"
    if redis_answers(port):
        return None, url  # one is already running there
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    return [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(REDIS_DIR),
            "--appendonly", "yes", "--save", ""], url


def commands() -> dict[str, tuple[list[str], str | None]]:
    """name -> (argv, health URL; None: ready when running)."""
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", HOST]
    out = {name: (uvicorn + [f"services.{name}.app:app", "--port", str(port_of(name))],
                  f"http://{HOST}:{port_of(name)}/health") for name in STAGE_NAMES}
    out["gateway"] = (uvicorn + ["gateway.app:app", "--port", str(port_of("gateway"))],
                      f"http://{HOST}:{port_of('gateway')}/health")
    out["worker"] = ([sys.executable, "-m", "gateway.worker"], None)
    if (ROOT / "ui" / "app.py").exists():
        out["ui"] = ([sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"),
                      "--server.port", str(port_of("ui")), "--server.address", HOST,
                      "--server.headless", "true", "--browser.gatherUsageStats", "false",
                      "--client.toolbarMode", "minimal"],
                     f"http://{HOST}:{port_of('ui')}/_stcore/health")
    return out


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def main() -> int:
    # SIGTERM (e.g. from a process manager) must stop the children too, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in STAGE_NAMES:
        env.setdefault(f"{name.upper()}_URL", f"http://{HOST}:{port_of(name)}")
    env.setdefault("GATEWAY_URL", f"http://{HOST}:{port_of('gateway')}")
    processes: dict[str, subprocess.Popen] = {}
    to_console = os.environ.get("RUN_LOGS") == "console"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        redis_argv, redis_url = redis_command()
        if redis_argv is not None:
            processes["redis"] = subprocess.Popen(redis_argv, cwd=ROOT, stdout=subprocess.DEVNULL)
            port = int(os.environ.get("REDIS_PORT", 6379))
            deadline = time.monotonic() + 20
            while not redis_answers(port) and time.monotonic() < deadline:
                time.sleep(0.1)
        if redis_url:
            env["REDIS_URL"] = redis_url
        print(f"[run] jobs: {redis_url or 'SQLite (huey SqliteHuey; no redis-server on PATH)'}", flush=True)
        print(f"[run] starting {len(commands())} processes"
              + ("" if to_console else f" (their logs: {LOG_DIR.relative_to(ROOT)}/<name>.log)"), flush=True)
        for name, (argv, _) in commands().items():
            output = None if to_console else open(LOG_DIR / f"{name}.log", "ab")
            processes[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
                                               if output else None)
        pending = dict((name, url) for name, (_, url) in commands().items())
        deadline = time.monotonic() + 180
        while pending and time.monotonic() < deadline:
            for name, url in list(pending.items()):
                if processes[name].poll() is not None:
                    print(f"{name} exited with code {processes[name].returncode}"
                          + ("" if to_console else f"; see {LOG_DIR / (name + '.log')}"), file=sys.stderr)
                    return 1
                if url is None or healthy(url):
                    del pending[name]
                    print(f"[run] {name:12s} up ({time.monotonic() - started:.0f} s)", flush=True)
            time.sleep(0.3)
        if pending:
            print(f"not healthy after 180 s: {sorted(pending)}", file=sys.stderr)
            return 1
        print("\nAll services are up:")
        for name, (_, url) in commands().items():
            if url is not None:
                print(f"  {name:12s} http://{HOST}:{port_of(name)}")
        print(f"\nTry: curl -F image=@photo.jpg -F colorize=auto -F upscale=none "
              f"http://{HOST}:{port_of('gateway')}/v1/restore -o restored.png\nCtrl-C stops everything.")
        while all(p.poll() is None for p in processes.values()):
            time.sleep(1)
        dead = [n for n, p in processes.items() if p.poll() is not None]
        print(f"stopped unexpectedly: {dead}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # Redis last: a stopping worker puts its running jobs back in the queue.
        redis = processes.pop("redis", None)
        for group in (list(processes.values()), [redis] if redis else []):
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in group:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    sys.exit(main())
