"""The raster transport between gateway and stages: lossless, same arrays as PNG, negotiated with Accept."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from shared.contract import BadRequest, ImageTooLarge
from shared.imaging import (PNG_MEDIA_TYPE, RASTER_MEDIA_TYPE, Picture, accepts_raster, decode_any, decode_image,
                            decode_transport, encode_png, encode_transport)

from .helpers import photo, png_of

EXIF = b"II*\x00\x08\x00\x00\x00\x01\x00\x0e\x01\x02\x00\x06\x00\x00\x00\x1a\x00\x00\x00\x00\x00\x00\x00hello\x00"


def pictures() -> dict[str, Picture]:
    rng = np.random.default_rng(0)
    rgb = rng.random((37, 53, 3), dtype=np.float32)
    gray = np.repeat(rng.random((37, 53, 1), dtype=np.float32), 3, axis=2)
    alpha = rng.random((37, 53), dtype=np.float32)
    return {
        "rgb8": Picture(rgb=rgb),
        "rgba8 exif icc": Picture(rgb=rgb, alpha=alpha, exif=EXIF, icc_profile=b"fake-icc" * 40),
        "gray8": Picture(rgb=gray),
        "gray-alpha8": Picture(rgb=gray, alpha=alpha),
        "rgb16": Picture(rgb=rgb, bit_depth=16),
        "rgba16": Picture(rgb=rgb, alpha=alpha, bit_depth=16),
        "gray16": Picture(rgb=gray, bit_depth=16),
        "gray-alpha16": Picture(rgb=gray, alpha=alpha, bit_depth=16),
    }


@pytest.mark.parametrize("name", list(pictures()))
def test_transport_decodes_to_the_same_arrays_as_png(name):
    picture = pictures()[name]
    via_png = decode_image(encode_png(picture))
    data, media_type = encode_transport(picture)
    assert media_type == RASTER_MEDIA_TYPE
    via_raster = decode_any(bytes(data), media_type)
    assert np.array_equal(via_raster.rgb, via_png.rgb)
    assert (via_raster.alpha is None) == (via_png.alpha is None)
    if via_png.alpha is not None:
        assert np.array_equal(via_raster.alpha, via_png.alpha)
    assert via_raster.bit_depth == via_png.bit_depth == picture.bit_depth
    assert via_raster.exif == via_png.exif and via_raster.icc_profile == via_png.icc_profile
    # a second hop changes nothing (the integers are stable)
    again, _ = encode_transport(via_raster)
    assert bytes(again) == bytes(data)


def test_transport_rejects_bad_data():
    data, _ = encode_transport(pictures()["rgb8"])
    with pytest.raises(BadRequest, match="announces"):
        decode_transport(bytes(data[:-1]))
    with pytest.raises(BadRequest, match="truncated"):
        decode_transport(bytes(data[:10]))
    with pytest.raises(ImageTooLarge):
        decode_transport(bytes(data), max_pixels=100)
    corrupt = bytearray(data)
    corrupt[16] = 9  # channel count
    with pytest.raises(BadRequest, match="invalid"):
        decode_transport(bytes(corrupt))


def test_accept_negotiation_parsing():
    assert accepts_raster(RASTER_MEDIA_TYPE)
    assert accepts_raster(f"{RASTER_MEDIA_TYPE}, image/png;q=0.5")
    assert accepts_raster(f"image/png, {RASTER_MEDIA_TYPE};q=0.3")
    assert not accepts_raster(f"{RASTER_MEDIA_TYPE};q=0")
    assert not accepts_raster("image/png")
    assert not accepts_raster("*/*")
    assert not accepts_raster(None)


def test_stage_answers_raster_only_when_asked(stack):
    url = stack.url("postprocess") + "/process"
    image = png_of(photo()[100:148, 150:214])
    params = {"params": json.dumps({"blur_sigma": 1.0, "sharpen_amount": 0.5})}
    plain = httpx.post(url, files={"image": ("a.png", image, "image/png")}, data=params, timeout=60)
    assert plain.status_code == 200 and plain.headers["content-type"] == PNG_MEDIA_TYPE
    assert plain.content.startswith(b"\x89PNG")
    asked = httpx.post(url, files={"image": ("a.png", image, "image/png")}, data=params, timeout=60,
                       headers={"Accept": f"{RASTER_MEDIA_TYPE}, image/png;q=0.5"})
    assert asked.status_code == 200 and asked.headers["content-type"] == RASTER_MEDIA_TYPE
    assert np.array_equal(decode_any(asked.content).rgb, decode_image(plain.content).rgb)
    # a stage also takes the raster transport as input, with the same result as the PNG
    again = httpx.post(url, files={"image": ("a.raw", asked.content, RASTER_MEDIA_TYPE)}, data=params, timeout=60)
    reference = httpx.post(url, files={"image": ("a.png", plain.content, "image/png")}, data=params, timeout=60)
    assert again.status_code == 200 and again.content == reference.content


def test_stage_takes_the_image_as_the_whole_body_with_params_in_a_header(stack):
    """The gateway's hops: the image alone as the body (PNG, JPEG or raster) and X-Stage-Params; the same
    answer as the multipart form, and the same 4xx errors for what is wrong."""
    from .helpers import jpeg_of
    url = stack.url("postprocess") + "/process"
    image = png_of(photo()[100:148, 150:214])
    params = json.dumps({"blur_sigma": 1.0, "sharpen_amount": 0.5})
    form = httpx.post(url, files={"image": ("a.png", image, "image/png")}, data={"params": params}, timeout=60)

    def raw(body: bytes, media_type: str, header: str | None = params, **headers) -> httpx.Response:
        sent = {"Content-Type": media_type, **headers}
        if header is not None:
            sent["X-Stage-Params"] = header
        return httpx.post(url, content=body, headers=sent, timeout=60)

    plain = raw(image, "image/png")
    assert plain.status_code == 200 and plain.content == form.content
    asked = raw(image, "image/png", Accept=RASTER_MEDIA_TYPE)
    assert asked.headers["content-type"] == RASTER_MEDIA_TYPE
    assert raw(asked.content, RASTER_MEDIA_TYPE).content == raw(form.content, "image/png").content  # same pixels
    defaults = httpx.post(url, files={"image": ("a.png", image, "image/png")}, timeout=60)
    assert raw(image, "image/png", header=None).content == defaults.content  # no header: the defaults
    assert raw(jpeg_of(photo()[:64, :64]), "image/jpeg").status_code == 200
    assert raw(image + b"trailing bytes", "image/png").content == form.content  # cut at the image's end

    for response, status, field in [
            (raw(image, "image/png", header="{not json"), 422, "params"),
            (raw(image, "image/png", header='{"blur_sigma": -3}'), 422, "blur_sigma"),
            (raw(image, "image/png", header='{"no_such": 1}'), 422, "no_such"),
            (raw(b"", "image/png"), 400, None),
            (raw(image[:len(image) // 2], "image/png"), 400, None),
            (raw(b"%PDF-1.4 not an image", "image/png"), 415, None),
            (raw(asked.content[:-5], RASTER_MEDIA_TYPE), 400, None)]:
        assert response.status_code == status, (status, response.text)
        error = response.json()["error"]
        assert error["message"] and (field is None or error["field"] == field), error
    # over denoise's body limit (an image of MAX_PIXELS cannot need it): refused from the Content-Length
    too_large = httpx.post(stack.url("denoise") + "/process", content=image + bytes(40 * 1024 * 1024),
                           headers={"Content-Type": "image/png"}, timeout=60)
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "upload_too_large"


CHAIN = [{"stage": "denoise"}, {"stage": "post-denoise", "params": {"blur_sigma": 0.8}},
         {"stage": "sharpen", "params": {"sharpen_amount": 0.6}}]


@pytest.mark.parametrize("kind", ["rgb8", "rgba16"])
def test_gateway_chain_result_identical_to_png_hops(stack, kind):
    """The gateway's chain (raster between stages) gives the bytes that PNG hop by hop gives, where the hops
    are the calls the gateway makes: post-denoise and sharpen fuse into one postprocess call."""
    rng = np.random.default_rng(1)
    base = photo()[100:172, 150:246].astype(np.float32) / 255
    noisy = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)
    picture = Picture(rgb=noisy, bit_depth=8) if kind == "rgb8" else \
        Picture(rgb=noisy, alpha=np.linspace(0, 1, 72 * 96, dtype=np.float32).reshape(72, 96), bit_depth=16)
    upload = encode_png(picture)
    current = upload
    for step, pinned in (("denoise", {}), ("postprocess", {"blur_sigma": 0.8, "sharpen_amount": 0.6})):
        reply = httpx.post(stack.url(step) + "/process", files={"image": ("a.png", current, "image/png")},
                           data={"params": json.dumps(pinned)}, timeout=120)
        assert reply.status_code == 200, reply.text
        current = reply.content
    through_gateway = httpx.post(stack.url("gateway") + "/v1/pipeline",
                                 files={"image": ("a.png", upload, "image/png")},
                                 data={"stages": json.dumps(CHAIN)}, timeout=300)
    assert through_gateway.status_code == 200, through_gateway.text
    assert through_gateway.headers["content-type"] == PNG_MEDIA_TYPE
    assert through_gateway.content == current


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_conversions_shared_out_to_threads_match_one_thread(monkeypatch, bit_depth):
    """A photo-sized picture is converted in row blocks on several threads: the same integers and floats
    as one pass on one thread, out-of-range values saturating alike."""
    import shared.imaging as imaging
    rng = np.random.default_rng(1)
    rgb = rng.uniform(-0.2, 1.2, (1100, 700, 3)).astype(np.float32)
    alpha = rng.random((1100, 700), dtype=np.float32)
    picture = Picture(rgb=rgb, alpha=alpha, bit_depth=bit_depth)
    threaded, _ = encode_transport(picture)
    threaded_back = decode_transport(threaded)
    monkeypatch.setattr(imaging, "PARALLEL_ELEMENTS", 1 << 40)
    single, _ = encode_transport(picture)
    single_back = decode_transport(single)
    assert bytes(threaded) == bytes(single)
    assert np.array_equal(threaded_back.rgb, single_back.rgb) and np.array_equal(threaded_back.alpha, single_back.alpha)


def test_row_blocks_raise_the_work_error_and_nest_without_deadlock():
    import threading

    from shared.imaging import PARALLEL_ELEMENTS, ROW_BLOCK, for_row_blocks
    rows = ROW_BLOCK * 6
    seen = np.zeros(rows, np.int32)

    def inner(block: slice) -> None:
        seen[block] += 1

    def outer(block: slice) -> None:  # runs on pool threads too, and starts its own blocked work there
        for_row_blocks(rows, lambda b: None, PARALLEL_ELEMENTS)
        inner(block)

    finished = threading.Event()
    worker = threading.Thread(target=lambda: (for_row_blocks(rows, outer, PARALLEL_ELEMENTS), finished.set()),
                              daemon=True)
    worker.start()
    assert finished.wait(30), "nested row-block work deadlocked"
    assert (seen == 1).all()

    def failing(block: slice) -> None:
        if block.start == ROW_BLOCK * 3:
            raise ValueError("block 3 failed")
    with pytest.raises(ValueError, match="block 3 failed"):
        for_row_blocks(rows, failing, PARALLEL_ELEMENTS)


@pytest.mark.parametrize("height", [1, 8, 9, 300, 1000])
def test_grayscale_found_anywhere_in_the_picture(height):
    from shared.imaging import is_grayscale
    gray = np.repeat(np.linspace(0, 1, height * 5, dtype=np.float32).reshape(height, 5, 1), 3, axis=2)
    assert is_grayscale(gray, tolerance=0.0)
    for row in {0, height // 2, height - 1}:
        tinted = gray.copy()
        tinted[row, 3, 1] += 0.01
        assert not is_grayscale(tinted, tolerance=0.0), row
