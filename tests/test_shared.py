"""Unit tests of shared/: contract validation, image codec, tiling, model store."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.contract import (ImageTooLarge, InvalidParams, ModelUnavailable, Param, StageContext, UnsupportedImage,
                             BadRequest, validate_against_schema, validate_params, params_schema)
from shared.imaging import decode_image, encode_jpeg, encode_png
from shared.model_store import ModelFile, ModelStore
from shared.tiling import process_tiled, tile_starts

from .helpers import jpeg_of, photo, png_of, psnr


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# --- contract -----------------------------------------------------------------------------------------
PARAMS = (Param("amount", "float", 1.0, "", minimum=0, maximum=2), Param("mode", "enum", "a", "", choices=("a", "b")),
          Param("n", "int", 3, "", minimum=1, maximum=5), Param("flag", "bool", False, ""))


def test_params_defaults_and_coercion():
    assert validate_params(PARAMS, {}) == {"amount": 1.0, "mode": "a", "n": 3, "flag": False}
    assert validate_params(PARAMS, {"amount": 2, "n": 5.0, "flag": True})["n"] == 5


@pytest.mark.parametrize("given,field", [({"amount": 3}, "amount"), ({"mode": "c"}, "mode"), ({"n": 2.5}, "n"),
                                         ({"flag": 1}, "flag"), ({"bogus": 1}, "bogus"), ({"amount": "x"}, "amount"),
                                         ({"amount": float("nan")}, "amount")])
def test_params_rejections_name_the_field(given, field):
    with pytest.raises(InvalidParams) as info:
        validate_params(PARAMS, given)
    assert info.value.field == field and info.value.status == 422
    assert info.value.body()["error"]["field"] == field


def test_schema_round_trip_validates_the_same():
    schema = params_schema(PARAMS)
    assert validate_against_schema(schema, {"amount": 0.5}) == validate_params(PARAMS, {"amount": 0.5})
    with pytest.raises(InvalidParams):
        validate_against_schema(schema, {"amount": 5})


# --- codec --------------------------------------------------------------------------------------------
def test_rgb_png_round_trip_is_lossless():
    rgb = photo("astronaut")[:64, :80]
    picture = decode_image(png_of(rgb))
    assert picture.rgb.shape == (64, 80, 3) and picture.bit_depth == 8
    back = np.asarray(Image.open(io.BytesIO(encode_png(picture))).convert("RGB"))
    assert np.array_equal(back, rgb)


def test_sixteen_bit_png_keeps_precision():
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    picture = decode_image(png_of(rgb16))
    assert picture.bit_depth == 16
    assert np.abs(picture.rgb * 65535 - rgb16).max() < 0.51
    import cv2
    back = cv2.imdecode(np.frombuffer(encode_png(picture), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back[:, :, ::-1], rgb16)


def test_gray16_and_gray_and_palette_and_alpha():
    gray16 = (np.arange(12 * 10, dtype=np.uint16) * 500).reshape(12, 10)
    p16 = decode_image(png_of(gray16))
    assert p16.bit_depth == 16 and np.allclose(p16.rgb[:, :, 1] * 65535, gray16, atol=0.5)

    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    pg = decode_image(png_of(gray))
    assert np.allclose(pg.rgb[:, :, 0] * 255, gray) and pg.alpha is None
    assert Image.open(io.BytesIO(encode_png(pg))).mode == "L"  # gray stays gray

    pal = Image.fromarray(photo("astronaut")[:16, :16]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    pp = decode_image(buf.getvalue())
    assert np.allclose(pp.rgb * 255, np.asarray(pal.convert("RGB")), atol=0.01)

    rgba = np.dstack([photo("astronaut")[:8, :8], np.linspace(0, 255, 64).reshape(8, 8).astype(np.uint8)])
    pa = decode_image(png_of(rgba))
    assert pa.alpha is not None and np.allclose(pa.alpha * 255, rgba[:, :, 3], atol=0.01)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pa)))), rgba)


def test_exif_orientation_is_applied_and_reset():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :5] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    exif[0x010F] = "TestCamera"
    data = jpeg_of(rgb, quality=100, exif=exif.tobytes())
    picture = decode_image(data)
    assert picture.rgb.shape[:2] == (20, 10)
    assert picture.rgb[:5].mean() > 0.9 and picture.rgb[-5:].mean() < 0.1  # band now on top
    out = Image.open(io.BytesIO(encode_png(picture)))
    assert out.getexif().get(0x0112) == 1 and out.getexif().get(0x010F) == "TestCamera"


def test_icc_profile_kept_and_cmyk_jpeg_decoded():
    icc = b"\x00" * 128 + b"fake-profile-bytes"
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut")[:16, :16]).save(buf, "PNG", icc_profile=icc)
    assert Image.open(io.BytesIO(encode_png(decode_image(buf.getvalue())))).info.get("icc_profile") == icc

    cmyk = Image.fromarray(photo("astronaut")[:32, :32]).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    picture = decode_image(buf.getvalue())
    assert psnr(picture.rgb * 255, np.asarray(cmyk.convert("RGB"))) > 30


def test_jpeg_download_keeps_exif():
    exif = Image.Exif()
    exif[0x010F] = "TestCamera"
    picture = decode_image(jpeg_of(photo("astronaut")[:16, :16], exif=exif.tobytes()))
    assert Image.open(io.BytesIO(encode_jpeg(picture))).getexif().get(0x010F) == "TestCamera"


@pytest.mark.parametrize("data,error", [
    (b"", BadRequest), (b"hello, I am a text file\n", UnsupportedImage),
    (png_header_only(60000, 60000), ImageTooLarge),
])
def test_bad_uploads(data, error):
    with pytest.raises(error):
        decode_image(data)


def test_truncated_jpeg_and_png_and_gif_and_limit():
    jpeg = jpeg_of(photo("astronaut"))
    with pytest.raises(BadRequest) as info:
        decode_image(jpeg[: len(jpeg) // 2])
    assert info.value.code == "corrupt_image"
    png = png_of(photo("astronaut"))
    with pytest.raises(BadRequest):
        decode_image(png[: len(png) // 2])
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    with pytest.raises(UnsupportedImage):
        decode_image(gif.getvalue())
    with pytest.raises(ImageTooLarge):
        decode_image(png_of(np.zeros((100, 100, 3), np.uint8)), max_pixels=9999)


def test_decode_never_modifies_the_upload():
    data = bytearray(jpeg_of(photo("astronaut")[:32, :32]))
    before = bytes(data)
    decode_image(bytes(data))
    assert bytes(data) == before


# --- tiling -------------------------------------------------------------------------------------------
def test_tile_starts_cover_and_overlap():
    for length in (1, 63, 64, 65, 200, 497, 1000):
        starts = tile_starts(length, 64, 16)
        assert starts[0] == 0 and min(starts[-1] + 64, length) == length
        for a, b in zip(starts, starts[1:]):
            assert a + 64 - b >= 16


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_tiling_blends_to_the_exact_result_for_a_local_function(scale):
    image = photo("astronaut")[:150, :230].astype(np.float32) / 255

    def upscale(tile):  # a pointwise op: tiles must reproduce it exactly, seams included
        return np.repeat(np.repeat(tile * 0.5 + 0.1, scale, axis=0), scale, axis=1)

    ctx = StageContext()
    seen = []
    ctx.set_progress = seen.append
    tiled = process_tiled(image, upscale, scale=scale, tile=64, overlap=16, context=8, ctx=ctx)
    assert np.allclose(tiled, upscale(image), atol=1e-5)
    assert len(seen) > 1 and seen == sorted(seen) and seen[-1] == 1.0


def test_tiling_context_hides_the_border_effect_of_a_convolution():
    import cv2
    image = photo("astronaut")[:200, :200].astype(np.float32) / 255
    blur = lambda tile: cv2.GaussianBlur(tile, (0, 0), 2, borderType=cv2.BORDER_REFLECT)
    tiled = process_tiled(image, blur, tile=64, overlap=16, context=12)
    assert psnr(tiled, blur(image), peak=1.0) > 60


# --- model store --------------------------------------------------------------------------------------
def test_model_store_provisions_checks_hash_and_reports_missing(tmp_path):
    payload = b"weights" * 100
    digest = hashlib.sha256(payload).hexdigest()
    store = ModelStore(tmp_path)
    good = ModelFile("m", f"m-{digest[:8]}.bin", "python -m fetch m", sha256=digest[:8],
                     provision=lambda target: target.write_bytes(payload))
    with pytest.raises(ModelUnavailable) as info:
        store.require(good, stage="x")
    assert info.value.status == 503 and "python -m fetch m" in info.value.message
    assert store.fetch(good, allow_download=False).read_bytes() == payload
    assert store.require(good) == tmp_path / good.filename

    unreachable = ModelFile("u", "u.bin", "python -m fetch u", url="http://127.0.0.1:9/u.bin", sha256="00")
    with pytest.raises(ModelUnavailable) as info:
        store.fetch(unreachable, progress=False)
    assert "download" in info.value.message and not (tmp_path / "u.bin").exists()


def test_large_blocks_come_from_the_heap_when_asked(tmp_path):
    """HEAP_LARGE_BLOCKS=heap: a 64 MB block is served from the heap (glibc maps no block on its own), and
    the C library's default maps it; in a fresh process each, since the setting is process-wide."""
    import subprocess
    import sys
    probe = (
        "import ctypes, sys\n"
        "from shared.heap import large_blocks_from_heap\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in 'arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()]\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = Info\n"
        "if sys.argv[1] == 'heap': assert large_blocks_from_heap()\n"
        "block = ctypes.create_string_buffer(64 << 20)\n"
        "print(libc.mallinfo2().hblkhd)\n")
    root = Path(__file__).resolve().parent.parent
    mapped = {mode: int(subprocess.run([sys.executable, "-c", probe, mode], cwd=root, check=True,
                                       capture_output=True, text=True).stdout) for mode in ("heap", "mmap")}
    assert mapped["heap"] < 1 << 20 and mapped["mmap"] >= 64 << 20, mapped


def test_deblur_serves_large_blocks_from_the_heap(monkeypatch):
    from services.deblur.settings import DeblurSettings
    from shared.settings import StageSettings
    monkeypatch.delenv("HEAP_LARGE_BLOCKS", raising=False)
    assert DeblurSettings().heap_large_blocks == "heap" and StageSettings().heap_large_blocks == "mmap"
