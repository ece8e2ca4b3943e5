"""Issue 11: upload limits, no 500s on pathological input, stage answers checked, bounded memory, hung stages,
no leaks, smaller defects, settings. Everything over HTTP against real uvicorn processes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from shared.contract import STAGE_NAMES

from .conftest import ARTIFACTS, ROOT, Process, base_env, free_port
from .helpers import decode_rgb, photo, png_of

LEAK_MARKERS = ("http://", "127.0.0.1", "/root", "/home", ".cache", "Traceback", "Errno", "torch", "File \"")


def small_png(size: int = 64) -> bytes:
    return png_of(photo("astronaut")[:size, :size])


def post(url: str, image: bytes | None, timeout: float = 120, **fields) -> httpx.Response:
    files = {"image": ("photo.png", image, "image/png")} if image is not None else None
    data = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in fields.items()}
    return httpx.post(url, files=files, data=data, timeout=timeout)


def multipart(image: bytes, fields: dict[str, str] | None = None, boundary: str = "hardening-boundary") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (fields or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def chunked_upload(url: str, head: bytes, filler_bytes: int, timeout: float = 120) -> httpx.Response:
    """A multipart body sent in chunks without Content-Length: ``head`` (an image) then zeros."""
    boundary = "hardening-boundary"

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               "Content-Type: image/png\r\n\r\n").encode() + head
        block = bytes(1 << 20)
        sent = 0
        while sent < filler_bytes:
            piece = block[:min(len(block), filler_bytes - sent)]
            sent += len(piece)
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        return httpx.post(url, content=body(), timeout=timeout,
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError) as exc:
        # the server may answer 413 and close while the client is still sending; that is the point
        raise AssertionError(f"connection dropped without an answer: {exc!r}") from None


def peak_rss_mb(process: Process) -> float:
    for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None):
    assert response.status_code == status, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code, error
    if field:
        assert error.get("field") == field, error
    assert not any(marker in response.text for marker in LEAK_MARKERS), response.text
    return error


def start(processes: list[Process]) -> None:
    log_dir = ARTIFACTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for process in processes:
        process.start(log_dir)
    for process in processes:
        process.wait_ready()


def stop(processes: list[Process]) -> None:
    for process in processes:
        if process.proc is not None and process.proc.poll() is None:
            os.kill(process.proc.pid, signal.SIGCONT)
        process.stop()


def gateway_for(stage_urls: dict[str, str], **env) -> Process:
    gateway_env = base_env()
    for name in STAGE_NAMES:
        # stages a test does not use point at a closed port
        gateway_env[f"{name.upper()}_URL"] = stage_urls.get(name, f"http://127.0.0.1:{free_port()}")
    gateway_env.update({"STAGE_CONNECT_TIMEOUT_S": "1", **env})
    return Process("gateway-hardening", "gateway.app:app", free_port(), gateway_env)


# ---------------------------------------------------------------- 1. upload limits while streaming

def test_chunked_upload_over_the_limit_is_refused_while_streaming(stack):
    # the gateway's /v1/restore limit is derived from MAX_PIXELS (32 MB at 2 MP); 200 MB never gets read whole
    response = chunked_upload(stack.url("gateway") + "/v1/restore", small_png(), 200 * 1024 * 1024)
    assert_error(response, 413, "upload_too_large")
    response = chunked_upload(stack.url("denoise") + "/process", small_png(), 60 * 1024 * 1024)
    assert_error(response, 413, "upload_too_large")


def test_declared_content_length_over_the_limit_is_refused_by_every_stage(stack):
    for name in ("denoise", "deblur", "colorize", "upscale", "postprocess", "gateway"):
        port = int(stack.url(name).rsplit(":", 1)[1])
        path = "/v1/finish" if name == "gateway" else "/process"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         f"Content-Length: {10 ** 12}\r\n\r\n".encode() + b"x" * 1024)
            answer = b""
            while b"upload_too_large" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
            answer = answer.decode("latin-1")
        status_line, _, rest = answer.partition("\r\n")
        assert " 413 " in status_line, answer[:300]
        assert "upload_too_large" in rest


def test_data_after_the_image_end_is_dropped(stack):
    image = small_png()
    padded = image + bytes(20 * 1024 * 1024)
    response = httpx.post(stack.url("gateway") + "/v1/pipeline", content=multipart(
        padded, {"stages": '[{"stage": "denoise", "params": {"strength": 0}}]'}), timeout=120,
        headers={"Content-Type": "multipart/form-data; boundary=hardening-boundary"})
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) < 1024 * 1024
    # a stage given the padded file also reads just the image
    response = post(stack.url("postprocess") + "/process", padded,
                    params={"blur_sigma": 0, "sharpen_amount": 0})
    assert response.status_code == 200
    assert np.array_equal(decode_rgb(response.content), decode_rgb(image))


def test_upload_limit_bounds_gateway_memory():
    gateway = gateway_for({})
    start([gateway])
    try:
        before = peak_rss_mb(gateway)
        response = chunked_upload(gateway.url + "/v1/restore", small_png(), 200 * 1024 * 1024)
        assert_error(response, 413)
        padded = small_png() + bytes(99 * 1024 * 1024)
        response = httpx.post(gateway.url + "/v1/restore", content=multipart(padded), timeout=120,
                              headers={"Content-Type": "multipart/form-data; boundary=hardening-boundary"})
        assert_error(response, 413)
        grown = peak_rss_mb(gateway) - before
        assert grown < 60, f"gateway peak grew by {grown:.0f} MB on refused uploads"
    finally:
        stop([gateway])


# ---------------------------------------------------------------- 2. 422 naming the field, never 500

@pytest.mark.parametrize("stages, field", [
    ('[{"stage": "postprocess", "params": {"blur_sigma": ' + "9" * 400 + "}}]", "stages[0].params.blur_sigma"),
    ('[{"stage": "upscale", "params": {"tile": NaN}}]', "stages[0].params.tile"),
    ('[{"stage": "upscale", "params": {"tile": Infinity}}]', "stages[0].params.tile"),
    ('[{"stage": "postprocess", "params": {"blur_sigma": ' + "1" * 5001 + "}}]", "stages"),
    ("[" * 50000, "stages"),
    ('[{"stage": "denoise", "params": ' + "[" * 50000 + "}]", "stages"),
])
def test_pathological_values_get_422_naming_the_field(stack, stages, field):
    with httpx.Client(timeout=60) as client:
        response = client.post(stack.url("gateway") + "/v1/pipeline", data={"stages": stages},
                               files={"image": ("a.png", small_png(), "image/png")})
        assert_error(response, 422, field=field)
        # the keep-alive connection survives: the next request on it works
        assert client.get(stack.url("gateway") + "/health").status_code == 200


@pytest.mark.parametrize("params, field", [
    ('{"tile": NaN}', "tile"), ('{"tile": Infinity}', "tile"), ('{"tile": 1e999}', "tile"),
    ('{"scale": ' + "9" * 400 + "}", "scale"), ('{"scale": ' + "1" * 5001 + "}", "params"),
    ("[" * 50000, "params"), ('{"' + "a" * 10000 + '": 1}', None),
])
def test_stage_process_rejects_pathological_params(stack, params, field):
    response = post(stack.url("upscale") + "/process", small_png(), params=params)
    error = assert_error(response, 422, field=field)
    assert len(error["message"]) < 300


def test_finish_rejects_non_finite_and_huge_numbers(stack):
    for value in ("nan", "inf", "1e999", "9" * 5001):
        response = post(stack.url("gateway") + "/v1/finish", small_png(), sharpen_amount=value)
        assert_error(response, 422, field="sharpen_amount")
    response = post(stack.url("gateway") + "/v1/finish", small_png(), quality="9" * 5001)
    assert_error(response, 422, field="quality")


# ---------------------------------------------------------------- 3. stage answers checked

@pytest.fixture(scope="module")
def fault_gateway():
    fault = Process("fault-stage", "tests.fault_stage:app", free_port(), base_env())
    gateway = gateway_for({"denoise": fault.url}, STAGE_RETRY_ATTEMPTS="1")
    start([fault, gateway])
    yield fault, gateway
    stop([fault, gateway])


@pytest.mark.parametrize("mode", ["not_png", "text", "empty", "truncated", "wrong_size", "error_str_500",
                                  "error_str_422", "error_list", "redirect", "unauthorized", "leaky_500"])
@pytest.mark.parametrize("position", ["last", "middle"])
def test_unusable_stage_answers_give_502_naming_the_stage(fault_gateway, mode, position):
    fault, gateway = fault_gateway
    httpx.post(fault.url + f"/mode/{mode}", timeout=10).raise_for_status()
    chain = [{"stage": "denoise"}] if position == "last" else [{"stage": "denoise"}, {"stage": "denoise"}]
    response = post(gateway.url + "/v1/pipeline", small_png(), stages=chain)
    error = assert_error(response, 502)
    assert error["stage"] == "denoise" and "denoise" in error["message"]
    httpx.post(fault.url + "/mode/ok", timeout=10).raise_for_status()
    assert post(gateway.url + "/v1/pipeline", small_png(), stages=chain).status_code == 200


# ---------------------------------------------------------------- 4. bounded memory at the largest result

@pytest.fixture(scope="module")
def finish_stack():
    postprocess = Process("postprocess-hardening", "services.postprocess.app:app", free_port(), base_env())
    gateway = gateway_for({"postprocess": postprocess.url}, STAGE_TIMEOUT_S="300")
    start([postprocess, gateway])
    yield postprocess, gateway
    stop([postprocess, gateway])


def black_png(width: int, height: int) -> bytes:
    return png_of(np.zeros((height, width, 3), np.uint8))


def test_finish_pixel_limit_is_the_largest_chain_result(finish_stack):
    _, gateway = finish_stack
    response = post(gateway.url + "/v1/finish", black_png(5700, 5700))  # 32.5 MP > 16 x 2 MP
    assert_error(response, 413)


def test_finish_at_the_largest_result_stays_within_memory_bounds(finish_stack):
    postprocess, gateway = finish_stack
    image = black_png(5600, 5600)  # 31.4 MP, about 100 KB
    results: list[httpx.Response] = []

    def finish(fmt: str, amount: float, sigma: float):
        results.append(post(gateway.url + "/v1/finish", image, timeout=600, sharpen_amount=amount,
                            blur_sigma=sigma, format=fmt))

    # three at once through the gateway; one of them blurs and sharpens (the stage's largest working set)
    jobs = [("png", 0.8, 0.3), ("jpeg", 0.0, 0.0), ("png", 0.0, 0.0)]
    threads = [threading.Thread(target=finish, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200, 200, 200], [r.text[:200] for r in results]
    gateway_peak, stage_peak = peak_rss_mb(gateway), peak_rss_mb(postprocess)
    (ARTIFACTS / "finish_peaks.json").write_text(json.dumps({"gateway_mb": gateway_peak,
                                                             "postprocess_mb": stage_peak}))
    assert gateway_peak < 1024, f"gateway peaked at {gateway_peak:.0f} MB (compose limit 1 GB)"
    assert stage_peak < 1536, f"postprocess peaked at {stage_peak:.0f} MB"


# ---------------------------------------------------------------- 5. weights verified before "available"

def test_corrupt_weights_make_the_model_unavailable_with_its_fetch_command(tmp_path):
    from services.upscale.models import MODELS, model_fetch_command
    from shared.model_store import ModelStore

    model = MODELS["realesr-animevideov3"]
    source = ModelStore().path_for(model.file)
    if not source.is_file():
        pytest.fail(f"{source} is not provisioned; run: {model_fetch_command(model)}")
    data = source.read_bytes()
    (tmp_path / model.file.filename).write_bytes(data[:len(data) // 2])
    env = dict(base_env(), RESTORE_MODEL_DIR=str(tmp_path))
    upscale = Process("upscale-corrupt", "services.upscale.app:app", free_port(), env)
    start([upscale])
    try:
        health = httpx.get(upscale.url + "/health", timeout=30).json()
        assert health["status"] == "unavailable"
        assert health["models"]["realesr-animevideov3"]["available"] is False
        response = post(upscale.url + "/process", small_png(32), params={"model": "realesr-animevideov3"})
        error = assert_error(response, 503, "model_unavailable")
        assert error["fetch_command"] == model_fetch_command(model)
        assert "corrupt" in error["message"]
    finally:
        stop([upscale])


# ---------------------------------------------------------------- 6. hung stage

def test_hung_stage_gives_504_within_its_timeout_and_health_stays_fast():
    denoise = Process("denoise-hung", "services.denoise.app:app", free_port(), base_env())
    gateway = gateway_for({"denoise": denoise.url}, DENOISE_TIMEOUT_S="3", STAGE_HEALTH_TIMEOUT_S="1",
                          STAGE_INFO_CACHE_S="0.5")
    start([denoise, gateway])
    try:
        # the gateway has /info cached from its start; now the stage stops answering anything
        assert post(gateway.url + "/v1/pipeline", small_png(), stages=[{"stage": "denoise"}]).status_code == 200
        os.kill(denoise.proc.pid, signal.SIGSTOP)
        time.sleep(0.6)  # the cached /info is stale now: the gateway must not wait on a refresh
        for path in ("/health", "/v1/stages"):
            started = time.monotonic()
            response = httpx.get(gateway.url + path, timeout=30)
            assert response.status_code == 200 and time.monotonic() - started < 3, path
        assert httpx.get(gateway.url + "/health", timeout=30).json()["stages"]["denoise"] == "down"
        started = time.monotonic()
        response = post(gateway.url + "/v1/pipeline", small_png(), stages=[{"stage": "denoise"}])
        elapsed = time.monotonic() - started
        error = assert_error(response, 504, "stage_timeout")
        assert error["stage"] == "denoise" and elapsed < 3 + 1.5 + 2, elapsed
    finally:
        stop([denoise, gateway])


# ---------------------------------------------------------------- 7. no leaks

def test_errors_and_skip_reasons_do_not_leak_internals(stack, tmp_path):
    response = post(stack.url("gateway") + "/v1/restore", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    assert_error(response, 415)
    truncated = small_png()[:-200]
    assert_error(post(stack.url("gateway") + "/v1/restore", truncated), 400)
    assert_error(post(stack.url("denoise") + "/process", truncated), 400)
    # a stage that is down: no URL in the answer; stages without weights: skip reasons without paths
    empty_models = dict(base_env(), RESTORE_MODEL_DIR=str(tmp_path))
    upscale = Process("upscale-empty", "services.upscale.app:app", free_port(), empty_models)
    deblur = Process("deblur-empty", "services.deblur.app:app", free_port(), empty_models)
    gateway = gateway_for({"upscale": upscale.url, "deblur": deblur.url, "postprocess": stack.url("postprocess"),
                           "repair": stack.url("repair"), "tone": stack.url("tone")})
    start([upscale, deblur, gateway])
    try:
        error = assert_error(post(gateway.url + "/v1/pipeline", small_png(), stages=[{"stage": "denoise"}]), 502)
        assert error["stage"] == "denoise"
        response = post(gateway.url + "/v1/pipeline", small_png(), stages=[{"stage": "upscale"}])
        assert_error(response, 503, "model_unavailable")
        assert "services.upscale.fetch" in response.json()["error"]["fetch_command"]
        gateway.env["DENOISE_URL"] = stack.url("denoise")
        stop([gateway])
        start([gateway])
        # motion-blurred, so that deblur's auto mode needs its (missing) network and is skipped too
        kernel = np.zeros((15, 15), np.float32)
        kernel[7, :] = 1 / 15
        blurred = cv2.filter2D(photo("astronaut")[:64, :64], -1, kernel)
        response = post(gateway.url + "/v1/restore", png_of(blurred), colorize="off", upscale="x2")
        assert response.status_code == 200, response.text[:300]
        reasons = json.loads(response.headers["x-skipped-reasons"])
        assert set(reasons) == {"deblur", "upscale"}
        assert all("fetch it with: python -m services." in r for r in reasons.values()), reasons
        assert not any(marker in response.headers["x-skipped-reasons"] for marker in LEAK_MARKERS), reasons
    finally:
        stop([upscale, deblur, gateway])


# ---------------------------------------------------------------- 9. smaller defects

@pytest.mark.parametrize("value", ["xx2", "x", "2x", "x-2", "nan", "x9"])
def test_bad_upscale_choices_are_refused(stack, value):
    assert_error(post(stack.url("gateway") + "/v1/restore", small_png(), upscale=value), 422, field="upscale")


@pytest.mark.parametrize("path, fields", [("/v1/restore", {"colourise": "on"}), ("/v1/pipeline", {
    "stages": '[{"stage": "denoise"}]', "colorize": "on"}), ("/v1/finish", {"sharpness": "1"}),
    ("/v1/jobs", {"mode": "simple", "stages": "[]"})])
def test_unknown_form_fields_are_named(stack, path, fields):
    unknown = next(k for k in fields if k not in ("stages", "mode") or (path != "/v1/pipeline" and k == "stages"))
    assert_error(post(stack.url("gateway") + path, small_png(), **fields), 422, field=unknown)
    assert_error(post(stack.url("denoise") + "/process", small_png(), extra="1"), 422, field="extra")


def test_long_job_ids_are_not_echoed_and_allow_lists_delete(stack):
    long_id = "j" * 10000
    response = httpx.get(stack.url("gateway") + f"/v1/jobs/{long_id}", timeout=30)
    assert_error(response, 404, "job_not_found")
    assert len(response.content) < 300
    response = httpx.put(stack.url("gateway") + "/v1/jobs/abc", timeout=30)
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "DELETE"} <= allowed


def test_fetch_into_a_full_disk_says_so(tmp_path):
    from services.upscale.models import MODELS, ncnn_dir
    from shared.model_store import ModelStore

    source = ncnn_dir(ModelStore())
    if not source.is_dir():
        pytest.fail(f"{source} is missing; run: python -m services.upscale.fetch --offline")
    cache = tmp_path / "cache"
    cache.mkdir()
    ncnn_bytes = sum(f.stat().st_size for f in source.iterdir())
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={ncnn_bytes + 256 * 1024}", "tmpfs", str(cache)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs a small tmpfs (mount as root) to fill")
    try:
        target = cache / source.name
        target.mkdir()
        for f in source.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        result = subprocess.run([sys.executable, "-m", "services.upscale.fetch", "realesr-animevideov3",
                                 "--offline", "--cache-dir", str(cache)], capture_output=True, text=True,
                                cwd=ROOT, env=base_env(), timeout=300)
        assert result.returncode == 1
        assert f"no space left in {cache}" in result.stdout, result.stdout + result.stderr
        assert "inline_container" not in result.stdout
        assert not (cache / MODELS["realesr-animevideov3"].file.filename).exists()
    finally:
        subprocess.run(["umount", str(cache)], check=False)


def test_compose_publishes_on_loopback_by_default():
    import yaml
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("gateway", "ui"):
        for port in services[name]["ports"]:
            assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), port
    assert "PUBLISH_ADDRESS" in (ROOT / "README.md").read_text()


# ---------------------------------------------------------------- 10. settings and dependencies

@pytest.mark.parametrize("app, env, variable", [
    ("gateway.app:app", {"STAGE_TIMEOUT_S": "soon"}, "STAGE_TIMEOUT_S"),
    ("gateway.app:app", {"DENOISE_URL": "not a url"}, "DENOISE_URL"),
    ("services.denoise.app:app", {"MAX_PIXELS": "-5"}, "MAX_PIXELS"),
    ("services.upscale.app:app", {"UPSCALE_PRECISION": "fp8"}, "UPSCALE_PRECISION"),
    ("services.postprocess.app:app", {"STAGE_CONCURRENCY": "0"}, "STAGE_CONCURRENCY"),
])
def test_a_bad_setting_stops_the_service_with_a_clear_message(app, env, variable):
    result = subprocess.run([sys.executable, "-m", "uvicorn", app, "--port", str(free_port())], cwd=ROOT,
                            env=dict(base_env(), **env), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert variable in result.stderr and "invalid configuration" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def settings_classes():
    from gateway.settings import Settings
    from services.colorize.settings import ColorizeSettings
    from services.deblur.settings import DeblurSettings
    from services.denoise.settings import DenoiseSettings
    from services.postprocess.settings import PostprocessSettings
    from services.upscale.settings import UpscaleSettings
    return [Settings, ColorizeSettings, DeblurSettings, DenoiseSettings, PostprocessSettings, UpscaleSettings]


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    for cls in settings_classes():
        for name in cls.model_fields:
            assert f"`{name.upper()}`" in readme, f"{name.upper()} ({cls.__name__}) is not in the README"


def test_no_service_reads_the_environment_ad_hoc():
    for folder in ("gateway", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert "os.environ.get(" not in text and "os.environ[" not in text, path


def test_runtime_requirements_carry_no_test_packages():
    test_only = ("pytest", "playwright", "ncnn", "rz-colorization", "schemathesis")
    files = [ROOT / "shared" / "requirements.txt", ROOT / "gateway" / "requirements.txt",
             ROOT / "ui" / "requirements.txt", *(ROOT / "services").glob("*/requirements.txt")]
    for path in files:
        names = [line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
                 for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", "-r"))]
        assert not set(names) & set(test_only), (path, names)
    makefile = (ROOT / "Makefile").read_text()
    run_deps = next(line for line in makefile.splitlines() if line.startswith("run:"))
    assert "install-test" not in run_deps and "REQUIREMENTS := " in makefile
    assert "requirements-test" not in next(l for l in makefile.splitlines() if l.startswith("REQUIREMENTS :="))
    test_deps = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "install-test" in test_deps and "provision" in test_deps
    for dockerfile in [*(ROOT / "services").glob("*/Dockerfile"), ROOT / "gateway" / "Dockerfile",
                       ROOT / "ui" / "Dockerfile"]:
        assert "requirements-test" not in dockerfile.read_text(), dockerfile


def test_a_stage_that_never_reads_the_request_is_timed_out():
    """A stage whose event loop is stuck accepts the connection but reads nothing: the gateway's client has no
    write timeout, so its whole-call bound must end the call (as a read timeout: 504), not hang the chain."""
    import asyncio

    from gateway.client import StageHTTP, StageReadTimeout

    async def scenario() -> float:
        stop = asyncio.Event()

        async def never_reads(reader, writer):
            await stop.wait()
            writer.close()

        server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        http = StageHTTP()
        started = time.monotonic()
        try:
            with pytest.raises(StageReadTimeout):
                # far more than the socket buffers take, so the write itself stalls
                await http.request("POST", f"http://127.0.0.1:{port}/process", content=bytes(64 << 20),
                                   read_timeout=1.0, connect_timeout=1.0)
            return time.monotonic() - started
        finally:
            stop.set()
            await http.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario()) < 10


def test_gateway_shuts_down_cleanly():
    """The lifespan's shutdown closes the stage client's HTTP session (a failed shutdown would leave the
    worker's and the gateway's connections to the stages open, and log 'Application shutdown failed')."""
    from fastapi.testclient import TestClient

    import gateway.app as gateway_app

    with TestClient(gateway_app.app) as client:
        session = client.app.state.client.http._open()
        assert not session.closed
    assert session.closed
