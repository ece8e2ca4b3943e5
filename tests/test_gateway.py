"""End-to-end tests of the gateway against real stage processes."""
from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest

from .conftest import Process, base_env, free_port, worker_process
from .helpers import decode_rgb, jpeg_of, noisy, photo, png_of, psnr, wait_for
from .test_shared import png_header_only

STAGES = ("denoise", "deblur", "colorize", "upscale", "postprocess", "repair", "tone")


def post(url: str, image: bytes | None, timeout: float = 300, **fields) -> httpx.Response:
    files = {"image": ("photo.png", image, "application/octet-stream")} if image is not None else None
    data = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in fields.items()}
    return httpx.post(url, files=files, data=data, timeout=timeout)


def parse_server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, dur = part.strip().split(";dur=")
        out[name] = float(dur)
    return out


# --- contract of every stage ---------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_serves_the_contract(stack, stage):
    url = stack.url(stage)
    health = httpx.get(url + "/health").json()
    assert health["stage"] == stage and health["status"] in ("ok", "unavailable")
    assert isinstance(health["models"], dict)
    info = httpx.get(url + "/info").json()
    assert info["stage"] == stage and isinstance(info["params"], list)
    for param in info["params"]:
        assert {"name", "type", "default", "description"} <= set(param)
    # bad inputs answer 4xx JSON in the shared error format, whatever the stage
    for files, data, status in [
        (None, None, 400),
        ({"image": ("x.txt", b"just text", "text/plain")}, None, 415),
        ({"image": ("x.png", png_header_only(60000, 60000), "image/png")}, None, 413),
        ({"image": ("x.png", png_of(np.zeros((8, 8, 3), np.uint8)), "image/png")}, {"params": '{"nope": 1}'}, 422),
        ({"image": ("x.png", png_of(np.zeros((8, 8, 3), np.uint8)), "image/png")}, {"params": "[1,"}, 422),
    ]:
        response = httpx.post(url + "/process", files=files, data=data, timeout=60)
        assert response.status_code == status, (stage, status, response.text)
        error = response.json()["error"]
        assert error["stage"] == stage and error["code"] and error["message"]


def test_unavailable_model_stage_answers_503_naming_the_fetch_command(stack):
    for stage in ("deblur", "colorize", "upscale"):
        health = httpx.get(stack.url(stage) + "/health").json()
        if health["status"] != "unavailable":
            continue
        # deblur's auto mode needs no model for a sharp photo; force always runs the network
        params = {"params": '{"mode": "force"}'} if stage == "deblur" else None
        response = httpx.post(stack.url(stage) + "/process", data=params,
                              files={"image": ("x.png", png_of(np.zeros((8, 8, 3), np.uint8)), "image/png")})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "model_unavailable" and "python -m services." in error["message"]


# --- simple mode --------------------------------------------------------------------------------------
def test_simple_mode_restores_a_noisy_photo(stack, shared_images):
    clean = photo("astronaut")[::2, ::2]  # 256 x 256
    response = post(stack.url("gateway") + "/v1/restore", png_of(noisy(clean, 15)), colorize="off", upscale="none")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    timing = parse_server_timing(response.headers["server-timing"])
    assert "denoise" in timing and "post-denoise" in timing and "sharpen" in timing
    assert all(v > 0 for v in timing.values())
    run = response.headers["x-stages-run"].split(",")
    skipped = [s for s in response.headers["x-skipped-stages"].split(",") if s]
    assert set(run) | set(skipped) == {"repair", "denoise", "deblur", "tone", "post-denoise", "sharpen"}
    assert set(run).isdisjoint(skipped)
    restored = decode_rgb(response.content)
    assert restored.shape == clean.shape
    assert psnr(restored, clean) > psnr(noisy(clean, 15), clean) + 2


@pytest.mark.parametrize("name", ["small-0014.jpg", "wolf-gray.jpg", "children-alpha.png"])
def test_simple_mode_on_shared_photos_keeps_size_and_alpha(stack, shared_images, name):
    data = (shared_images / name).read_bytes()
    response = post(stack.url("gateway") + "/v1/restore", data, colorize="auto", upscale="none")
    assert response.status_code == 200, response.text
    from PIL import Image
    import io
    original, restored = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(response.content))
    assert restored.size == original.size
    assert ("A" in restored.mode) == ("A" in original.mode or "transparency" in original.info)


def test_simple_mode_names_unavailable_stages_as_skipped(stack):
    unavailable = {s for s in ("deblur", "colorize", "upscale")
                   if httpx.get(stack.url(s) + "/health").json()["status"] == "unavailable"}
    if not unavailable:
        pytest.skip("every model stage is installed here; nothing is skipped")
    response = post(stack.url("gateway") + "/v1/restore", png_of(photo("astronaut")[:64, :64]),
                    colorize="on", upscale="x2")
    assert response.status_code == 200
    skipped = set(response.headers["x-skipped-stages"].split(","))
    if response.headers.get("x-deblur-decision") in ("sharp", "defocus"):
        unavailable.discard("deblur")  # deblur's auto mode needed no network for this photo
    assert unavailable <= skipped
    assert set(json.loads(response.headers["x-skipped-reasons"])) == skipped


@pytest.mark.parametrize("fields,field", [({"colorize": "maybe"}, "colorize"), ({"upscale": "x9"}, "upscale"),
                                          ({"upscale": "0.5"}, "upscale"), ({"upscale": "big"}, "upscale")])
def test_simple_mode_rejects_bad_choices(stack, fields, field):
    response = post(stack.url("gateway") + "/v1/restore", png_of(np.zeros((8, 8, 3), np.uint8)), **fields)
    assert response.status_code == 422 and response.json()["error"]["field"] == field


# --- advanced mode ------------------------------------------------------------------------------------
def steps_of(*named: tuple[str, dict]):
    from gateway.chains import STEPS, Step
    return [Step(name, STEPS[name][0], {**params, **STEPS[name][1]}) for name, params in named]


def test_post_denoise_then_sharpen_go_to_postprocess_as_one_call():
    """postprocess blurs, then sharpens: post-denoise followed by sharpen is one call with post-denoise's blur
    and sharpen's unsharp mask; any other neighbours, or the other order, stay separate calls."""
    from gateway.chains import call_of, fused_run
    steps = steps_of(("denoise", {}), ("post-denoise", {"blur_sigma": 0.8}),
                     ("sharpen", {"sharpen_amount": 1.5, "sharpen_radius": 2.0}))
    assert [s.name for s in fused_run(steps, 0)] == ["denoise"]
    run = fused_run(steps, 1)
    assert [s.name for s in run] == ["post-denoise", "sharpen"]
    call = call_of(run)
    assert call.service == "postprocess"
    assert call.params == {"blur_sigma": 0.8, "sharpen_amount": 1.5, "sharpen_radius": 2.0}
    assert [s.name for s in fused_run(steps, 1, fuse=False)] == ["post-denoise"]
    assert len(fused_run(steps_of(("sharpen", {}), ("post-denoise", {})), 0)) == 1
    assert len(fused_run(steps_of(("post-denoise", {}), ("post-denoise", {})), 0)) == 1
    # left unset, post-denoise's blur is the service's default in the fused call too (not sharpen's pinned 0)
    assert call_of(fused_run(steps_of(("post-denoise", {}), ("sharpen", {})), 0)).params == {}


def test_a_fused_call_is_reported_as_both_steps_timed_by_the_stages_parts():
    from gateway.chains import fused_run, split_timing
    run = fused_run(steps_of(("post-denoise", {}), ("sharpen", {})), 0)
    parts = {"x-postprocess-ms": json.dumps({"blur": 10.0, "sharpen": 30.0})}
    assert [(t.name, t.gateway_ms, t.stage_ms) for t in split_timing(run, 100.0, 80.0, parts)] == \
        [("post-denoise", 25.0, 20.0), ("sharpen", 75.0, 60.0)]
    for unusable in ({}, {"x-postprocess-ms": "not json"}, {"x-postprocess-ms": '{"blur": 1}'}):
        assert [(t.gateway_ms, t.stage_ms) for t in split_timing(run, 100.0, None, unusable)] == \
            [(50.0, None), (50.0, None)]


def test_the_fused_chain_reports_every_step_and_matches_one_postprocess_call(stack):
    image = png_of(noisy(photo("coffee")[:120, :160], 10))
    chain = [{"stage": "post-denoise", "params": {"blur_sigma": 1.0}}, {"stage": "sharpen"}]
    response = post(stack.url("gateway") + "/v1/pipeline", image, stages=chain)
    assert response.status_code == 200, response.text
    assert response.headers["x-stages-run"] == "post-denoise,sharpen"
    times = json.loads(response.headers["x-stage-times"])
    assert list(times) == ["post-denoise", "sharpen"] and all(t["gateway_ms"] > 0 for t in times.values())
    direct = post(stack.url("postprocess") + "/process", image, params={"blur_sigma": 1.0})
    assert direct.status_code == 200 and response.content == direct.content
    assert set(json.loads(direct.headers["x-postprocess-ms"])) == {"blur", "sharpen"}


def test_advanced_chain_in_any_order_with_params(stack):
    image = png_of(noisy(photo("coffee")[:200, :240], 10))
    stages = [{"stage": "sharpen", "params": {"sharpen_amount": 1.5}},
              {"stage": "denoise", "params": {"strength": 0.5}},
              {"stage": "post-denoise", "params": {"blur_sigma": 1.0}}]
    response = post(stack.url("gateway") + "/v1/pipeline", image, stages=stages)
    assert response.status_code == 200, response.text
    assert list(parse_server_timing(response.headers["server-timing"])) == ["sharpen", "denoise", "post-denoise"]
    assert decode_rgb(response.content).shape == (200, 240, 3)


def test_advanced_chain_equals_calling_the_stage_directly(stack):
    image = png_of(photo("coffee")[:120, :160])
    params = {"blur_sigma": 0.0, "sharpen_amount": 1.0, "sharpen_radius": 2.0, "sharpen_threshold": 0.0}
    via_gateway = post(stack.url("gateway") + "/v1/pipeline", image, stages=[{"stage": "postprocess", "params": params}])
    direct = post(stack.url("postprocess") + "/process", image, params=params)
    assert via_gateway.status_code == direct.status_code == 200
    assert np.array_equal(decode_rgb(via_gateway.content), decode_rgb(direct.content))


@pytest.mark.parametrize("stages,field", [
    ([{"stage": "teleport"}], "stages[0].stage"),
    ([{"stage": "denoise", "params": {"strength": 99}}], "stages[0].params.strength"),
    ([{"stage": "denoise"}, {"stage": "sharpen", "params": {"blur_sigma": 1}}], "stages[1].params.blur_sigma"),
    ({"stage": "denoise"}, "stages"),
    ("not json", "stages"),
])
def test_advanced_chain_rejects_bad_stage_lists(stack, stages, field):
    raw = stages if isinstance(stages, str) else json.dumps(stages)
    response = httpx.post(stack.url("gateway") + "/v1/pipeline",
                          files={"image": ("x.png", png_of(np.zeros((8, 8, 3), np.uint8)), "image/png")},
                          data={"stages": raw})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_advanced_chain_with_an_unavailable_stage_answers_503_naming_it(stack):
    unavailable = [s for s in ("deblur", "colorize", "upscale")
                   if httpx.get(stack.url(s) + "/health").json()["status"] == "unavailable"]
    if not unavailable:
        pytest.skip("every model stage is installed here")
    response = post(stack.url("gateway") + "/v1/pipeline", png_of(photo("coffee")[:32, :32]),
                    stages=[{"stage": "denoise"}, {"stage": unavailable[0]}])
    assert response.status_code == 503
    assert response.json()["error"]["stage"] == unavailable[0]


# --- bad input at the gateway ---------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/v1/restore", "/v1/pipeline", "/v1/finish", "/v1/jobs"])
def test_gateway_survives_bad_inputs(stack, endpoint):
    url = stack.url("gateway") + endpoint
    jpeg = jpeg_of(photo("astronaut"))
    cases = [
        (httpx.post(url, timeout=30), 400),  # empty body
        (httpx.post(url, content=b"", headers={"content-type": "multipart/form-data; boundary=x"}), 400),
        (post(url, b""), 400),
        (post(url, jpeg[: len(jpeg) // 3]), 400),
        (post(url, b"%PDF-1.4 this is not an image"), 415),
        (post(url, png_header_only(60000, 60000)), 413),
    ]
    if endpoint != "/v1/finish":
        big = np.zeros((1500, 1500, 3), np.uint8)  # 2.25 MP > the 2 MP default limit
        cases.append((post(url, png_of(big)), 413))
    for response, status in cases:
        assert response.status_code == status, (endpoint, status, response.text)
        assert response.json()["error"]["message"]
    assert httpx.get(stack.url("gateway") + "/health").status_code == 200


def png_with_idat(png: bytes, payload: bytes) -> bytes:
    """``png`` with its image data replaced by ``payload`` in one IDAT chunk whose CRC is right."""
    import struct
    import zlib
    pos, chunks = 8, []
    while pos < len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        chunks.append((kind, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    out = bytearray(png[:8])
    idat_done = False
    for kind, data in chunks:
        if kind == b"IDAT":
            if idat_done:
                continue
            data, idat_done = payload, True
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return bytes(out)


@pytest.mark.parametrize("endpoint", ["/v1/restore", "/v1/pipeline"])
@pytest.mark.parametrize("damage", ["crc", "deflate"])
def test_corrupt_image_data_is_the_gateways_400(stack, endpoint, damage):
    """Damage the transfer could do (a chunk's CRC no longer matches) is found by the gateway's own check (run
    while the first stage starts); image data that is broken inside intact chunks is found by the first stage's
    decode. Either way
    the gateway answers it as the upload's fault (no stage named), not as whichever stage met it."""
    png = png_of(photo("coffee")[:96, :128])
    if damage == "crc":
        broken = bytearray(png)
        broken[len(broken) // 2] ^= 0xFF  # inside IDAT
    else:
        import zlib
        broken = png_with_idat(png, zlib.compress(b"\x00" * 50)[:-6] + b"not deflate at all")
    response = post(stack.url("gateway") + endpoint, bytes(broken), stages=[{"stage": "denoise"}]) \
        if endpoint == "/v1/pipeline" else post(stack.url("gateway") + endpoint, bytes(broken))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "corrupt_image" and error["stage"] is None, error
    # the deflate damage passed the gateway's chunk check and was met by the chain's first stage
    assert ("while decoding it for" in error["message"]) == (damage == "deflate"), error
    assert httpx.get(stack.url("gateway") + "/health").status_code == 200


def test_finish_answers_broken_image_data_inside_intact_chunks_with_400(stack):
    """/v1/finish inflates a PNG to check it (nothing else decodes it before the stage): deflate data that is
    not deflate is the upload's 400, not a 500."""
    broken = png_with_idat(png_of(photo("coffee")[:64, :64]), b"garbage" * 10)
    response = post(stack.url("gateway") + "/v1/finish", broken)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "corrupt_image"


def test_a_bad_param_after_a_corrupt_upload_names_the_upload(stack):
    broken = png_with_idat(png_of(photo("coffee")[:64, :64]), b"garbage" * 10)
    response = post(stack.url("gateway") + "/v1/pipeline", broken,
                    stages=[{"stage": "denoise", "params": {"strength": 99}}])
    assert response.status_code == 400 and response.json()["error"]["code"] == "corrupt_image", response.text


def test_empty_advanced_chain_returns_the_upload_pixel_for_pixel(stack):
    original = photo("coffee")[:40, :50]
    response = post(stack.url("gateway") + "/v1/pipeline", jpeg_of(original), stages=[])
    assert response.status_code == 200 and response.headers["server-timing"] == ""
    from PIL import Image
    import io
    expected = np.asarray(Image.open(io.BytesIO(jpeg_of(original))).convert("RGB"))
    assert np.array_equal(decode_rgb(response.content), expected)


# --- finishing ----------------------------------------------------------------------------------------
def test_finish_adjusts_and_downloads_png_and_jpeg(stack):
    from PIL import Image
    import io
    exif = Image.Exif()
    exif[0x010F] = "OldCamera"
    source = jpeg_of(photo("astronaut")[:200, :300], exif=exif.tobytes())
    url = stack.url("gateway") + "/v1/finish"
    plain = post(url, source)
    sharp = post(url, source, sharpen_amount=2.0, sharpen_radius=1.5)
    blurred = post(url, source, blur_sigma=2.0)
    jpeg = post(url, source, sharpen_amount=1.0, format="jpeg", quality=80)
    assert all(r.status_code == 200 for r in (plain, sharp, blurred, jpeg))
    base = decode_rgb(plain.content).astype(float)
    detail = lambda a: np.abs(np.diff(a.astype(float), axis=1)).mean()
    assert detail(decode_rgb(sharp.content)) > detail(base) * 1.2
    assert detail(decode_rgb(blurred.content)) < detail(base) * 0.8
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).getexif().get(0x010F) == "OldCamera"
    assert post(url, source, sharpen_amount="lots").status_code == 422
    assert post(url, source, format="gif").status_code == 422


def test_stages_listing(stack):
    listing = httpx.get(stack.url("gateway") + "/v1/stages").json()
    assert set(listing["services"]) == set(STAGES)
    for service, entry in listing["services"].items():
        assert entry["status"] in ("ok", "unavailable")
        assert entry["info"]["stage"] == service
    assert listing["steps"]["sharpen"]["service"] == "postprocess"
    # what the UI prices as one call: the pair, and the params each step gives it
    postprocess_params = {p["name"] for p in listing["services"]["postprocess"]["info"]["params"]}
    [fusion] = listing["fusions"]
    assert fusion["steps"] == ["post-denoise", "sharpen"] and fusion["service"] == "postprocess"
    assert set(fusion["takes"][0]) | set(fusion["takes"][1]) == postprocess_params
    health = httpx.get(stack.url("gateway") + "/health").json()
    assert health["status"] == "ok" and set(health["stages"]) == set(STAGES)


# --- jobs ---------------------------------------------------------------------------------------------

def slow_chain(count: int = 4) -> list[dict]:
    # denoise with a fixed strong sigma on a ~1 MP image takes a noticeable time per step on this CPU
    return [{"stage": "denoise", "params": {"sigma": 20}} for _ in range(count)]


@pytest.fixture(scope="module")
def big_noisy_png() -> bytes:
    image = np.tile(photo("astronaut"), (2, 2, 1))[:1000, :1000]
    return png_of(noisy(image, 20))


def test_job_progress_and_result(stack, big_noisy_png):
    gateway = stack.url("gateway")
    created = post(gateway + "/v1/jobs", big_noisy_png, mode="advanced", stages=slow_chain(3))
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert len(job_id) >= 20
    seen_stages = set()

    def finished():
        status = httpx.get(f"{gateway}/v1/jobs/{job_id}").json()
        seen_stages.add(len(status["stages_done"]))
        return status if status["state"] in ("done", "failed") else None

    status = wait_for(finished, timeout=300)
    assert status["state"] == "done", status
    assert len(status["stages_done"]) == 3 and status["progress"] == 1.0
    assert len(seen_stages) >= 2  # progress was observed advancing
    result = httpx.get(f"{gateway}/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and decode_rgb(result.content).shape == (1000, 1000, 3)
    assert "denoise" in result.headers["server-timing"]


def test_job_simple_mode_and_unknown_job(stack):
    gateway = stack.url("gateway")
    created = post(gateway + "/v1/jobs", png_of(photo("coffee")[:64, :64]), mode="simple", colorize="off")
    assert created.status_code == 202
    status = wait_for(lambda: (s := httpx.get(f"{gateway}/v1/jobs/{created.json()['id']}").json())["state"]
                      in ("done", "failed") and s)
    assert status["state"] == "done", status
    assert httpx.get(f"{gateway}/v1/jobs/nope").status_code == 404
    assert post(gateway + "/v1/jobs", png_of(photo("coffee")[:8, :8]), mode="sideways").status_code == 422


def test_job_cancel(stack, big_noisy_png):
    gateway = stack.url("gateway")
    job_id = post(gateway + "/v1/jobs", big_noisy_png, mode="advanced", stages=slow_chain(6)).json()["id"]
    wait_for(lambda: httpx.get(f"{gateway}/v1/jobs/{job_id}").json()["state"] == "running")
    cancelled = httpx.delete(f"{gateway}/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    time.sleep(0.5)
    status = httpx.get(f"{gateway}/v1/jobs/{job_id}").json()
    assert status["state"] == "cancelled" and len(status["stages_done"]) < 6
    assert httpx.get(f"{gateway}/v1/jobs/{job_id}/result").status_code == 409


@pytest.fixture(scope="module")
def small_queue_gateway(stack):
    """A second gateway and worker over the same stages with a one-slot queue and a 2 s result lifetime."""
    env = base_env()
    for name in STAGES:
        env[f"{name.upper()}_URL"] = stack.url(name)
    env.update(REDIS_URL=stack.redis_url, JOBS_QUEUE_NAME="small", JOBS_MAX_QUEUED="1", JOBS_WORKERS="1",
               JOBS_RESULT_TTL_S="2", JOBS_REAP_INTERVAL_S="0.5")
    process = Process("gateway-small-queue", "gateway.app:app", free_port(), env)
    worker = worker_process("worker-small-queue", env)
    for each in (process, worker):
        each.start(stack.log_dir)
        each.wait_ready()
    yield process.url
    process.stop()
    worker.stop()


def test_job_queue_full_gives_429_and_results_expire(small_queue_gateway, big_noisy_png):
    url = small_queue_gateway
    first = post(url + "/v1/jobs", big_noisy_png, mode="advanced", stages=slow_chain(2))
    assert first.status_code == 202
    wait_for(lambda: httpx.get(f"{url}/v1/jobs/{first.json()['id']}").json()["state"] == "running")
    second = post(url + "/v1/jobs", big_noisy_png, mode="advanced", stages=slow_chain(1))
    assert second.status_code == 202  # fills the single queue slot
    third = post(url + "/v1/jobs", big_noisy_png, mode="advanced", stages=slow_chain(1))
    assert third.status_code == 429 and int(third.headers["retry-after"]) > 0
    assert third.json()["error"]["code"] == "queue_full"
    for job in (first, second):
        job_id = job.json()["id"]
        wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "done", timeout=300)
    job_id = second.json()["id"]
    assert httpx.get(f"{url}/v1/jobs/{job_id}/result").status_code == 200
    time.sleep(2.5)
    assert httpx.get(f"{url}/v1/jobs/{job_id}/result").status_code == 404
    assert httpx.get(f"{url}/v1/jobs/{job_id}").status_code == 404


# --- a stage that dies ----------------------------------------------------------------------------------
def test_stage_killed_mid_run_gives_502_in_bounded_time_then_recovers(stack, big_noisy_png):
    gateway = stack.url("gateway")
    outcome = {}

    def call():
        started = time.monotonic()
        outcome["response"] = post(gateway + "/v1/pipeline", big_noisy_png, stages=slow_chain(3), timeout=120)
        outcome["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(1.0)  # the denoise stage is busy with the first step now
    stack.processes["denoise"].kill()
    worker.join(60)
    assert not worker.is_alive(), "gateway did not answer within 60 s of the stage dying"
    response = outcome["response"]
    assert response.status_code in (502, 504), response.text
    error = response.json()["error"]
    assert error["stage"] == "denoise" and error["code"] in ("stage_unreachable", "stage_timeout")
    assert outcome["seconds"] < 60

    stack.restart("denoise")
    again = post(gateway + "/v1/pipeline", png_of(photo("coffee")[:64, :64]), stages=[{"stage": "denoise"}])
    assert again.status_code == 200


def test_stage_down_before_the_call_gives_502_quickly(stack):
    gateway = stack.url("gateway")
    stack.processes["postprocess"].kill()
    try:
        started = time.monotonic()
        response = post(gateway + "/v1/pipeline", png_of(photo("coffee")[:32, :32]), stages=["sharpen"])
        assert response.status_code == 502 and response.json()["error"]["stage"] == "sharpen"
        assert time.monotonic() - started < 20
    finally:
        stack.restart("postprocess")
    assert post(gateway + "/v1/pipeline", png_of(photo("coffee")[:32, :32]), stages=["sharpen"]).status_code == 200


@pytest.mark.parametrize("case", ["check fails first", "chain fails first", "chain ends first", "both pass"])
def test_the_upload_check_runs_beside_the_chain_and_its_failure_is_the_answer(case):
    """The gateway checks a PNG upload's chunks while the chain already runs: a failed check cancels the chain
    and is the answer whatever the chain did; a passed check leaves the chain's own outcome or error."""
    import asyncio
    import threading

    from gateway.app import checked_while_running
    from shared.contract import BadRequest, StageError

    chain_cancelled = threading.Event()
    check_may_end = threading.Event()

    def check() -> None:
        if case != "check fails first":
            check_may_end.wait(5)
        if case != "both pass":
            raise BadRequest("a PNG chunk's CRC does not match", code="corrupt_image")

    async def chain():
        try:
            if case == "check fails first":
                await asyncio.sleep(5)
            if case == "chain fails first":
                check_may_end.set()
                raise StageError("stage 'denoise' is unreachable", code="stage_unreachable", status=502)
            check_may_end.set()
            return "outcome"
        except asyncio.CancelledError:
            chain_cancelled.set()
            raise

    async def scenario():
        return await asyncio.wait_for(checked_while_running(check, chain()), 10)

    if case == "both pass":
        assert asyncio.run(scenario()) == "outcome"
        return
    with pytest.raises(BadRequest, match="CRC"):
        asyncio.run(scenario())
    assert chain_cancelled.is_set() == (case == "check fails first")
