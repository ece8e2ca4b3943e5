"""Per-request balancing over stage replicas: three real postprocess processes behind one gateway."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.balancer import ReplicaSet, resolve

from .conftest import STAGE_APPS, Process, base_env, free_port
from .helpers import photo, png_of

REPLICAS = 3
REQUESTS = 30


def access_log_process(name: str, port: int, env: dict) -> Process:
    """A postprocess replica with uvicorn's access log on, so each replica's requests can be counted."""
    argv = [sys.executable, "-m", "uvicorn", "services.postprocess.app:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "info"]
    process = Process(name, "services.postprocess.app:app", port, env)
    process.argv = argv
    return process


def served(process: Process, log_dir) -> int:
    return (log_dir / f"{process.name}.log").read_text().count('"POST /process')


@pytest.fixture
def replicated(stack, tmp_path):
    env = base_env()
    replicas = [access_log_process(f"postprocess-replica-{i}-{time.monotonic_ns()}", free_port(), env)
                for i in range(REPLICAS)]
    gateway_env = dict(env)
    for name in (s for s in STAGE_APPS if s != "postprocess"):
        gateway_env[f"{name.upper()}_URL"] = stack.url(name)
    gateway_env["POSTPROCESS_URL"] = ",".join(r.url for r in replicas)
    gateway_env.update(REDIS_URL=stack.redis_url, JOBS_QUEUE_NAME="balancer", STAGE_CONNECT_TIMEOUT_S="2")
    gateway = Process("gateway-replicas", "gateway.app:app", free_port(), gateway_env)
    started = replicas + [gateway]
    try:
        for process in started:
            process.start(stack.log_dir)
        for process in replicas:
            process.wait_ready()
        gateway.wait_ready()
        yield gateway, replicas, stack.log_dir
    finally:
        for process in started:
            process.stop()


def sharpen(gateway_url: str, image: bytes) -> int:
    response = httpx.post(gateway_url + "/v1/pipeline", files={"image": ("p.png", image, "image/png")},
                          data={"stages": json.dumps([{"stage": "sharpen", "params": {"sharpen_amount": 0.5}}])},
                          timeout=60)
    return response.status_code


def test_requests_spread_evenly_over_three_replicas(replicated):
    gateway, replicas, log_dir = replicated
    image = png_of(photo("coffee")[:96, :96])
    before = [served(r, log_dir) for r in replicas]  # /health probes are GETs, not counted
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda _: sharpen(gateway.url, image), range(REQUESTS)))
    assert codes == [200] * REQUESTS
    counts = [served(r, log_dir) - b for r, b in zip(replicas, before)]
    print(f"\nrequests per replica: {counts}")
    assert sum(counts) == REQUESTS
    assert all(abs(c - REQUESTS / REPLICAS) <= 3 for c in counts), counts


def test_a_replica_killed_mid_run_fails_no_request(replicated):
    gateway, replicas, log_dir = replicated
    image = png_of(photo("coffee")[:96, :96])
    done = []

    def one(_):
        code = sharpen(gateway.url, image)
        done.append(code)
        return code

    def killer():
        while len(done) < REQUESTS // 3:
            time.sleep(0.01)
        replicas[0].kill()

    thread = threading.Thread(target=killer)
    thread.start()
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(one, range(REQUESTS)))
    thread.join()
    assert replicas[0].proc.poll() is not None, "the replica was not killed during the run"
    assert codes == [200] * REQUESTS
    survivors = [served(r, log_dir) for r in replicas[1:]]
    print(f"\nrequests on the surviving replicas: {survivors}")


def test_a_name_with_several_addresses_is_one_replica_per_address(monkeypatch):
    addresses = ["10.0.0.7", "10.0.0.5"]

    def fake_getaddrinfo(host, port, *args, **kwargs):
        assert host == "upscale"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert resolve("http://upscale:8104") == ["http://10.0.0.5:8104", "http://10.0.0.7:8104"]
    assert resolve("http://127.0.0.1:8104") == ["http://127.0.0.1:8104"]
    replicas = ReplicaSet("http://upscale:8104", resolve_interval=0.0)
    assert sorted(r.url for r in replicas.replicas()) == ["http://10.0.0.5:8104", "http://10.0.0.7:8104"]
    addresses.append("10.0.0.9")  # a new pod: found at the next resolution
    assert len(replicas.replicas()) == 3
    first, second = replicas.acquire(), replicas.acquire()
    assert first.url != second.url  # least outstanding: a busy replica is not chosen again
    replicas.release(first, failed=True)
    assert replicas.acquire(exclude={second.url}).url not in (first.url, second.url)  # failed one ejected
