"""Image codec shared by every stage: JPEG/PNG in, lossless PNG out, metadata and alpha kept.

Pixels travel inside the process as float32 RGB in [0, 1] plus an optional float32 alpha plane, so each
stage sees one representation whatever the file held (grayscale, palette, 16-bit, CMYK, alpha).

Between the gateway and the stages a second lossless format travels when asked for with ``Accept``: the
raster transport (``RASTER_MEDIA_TYPE``), the same integers a PNG would hold, uncompressed, behind a small
header, so a hop costs a copy instead of a PNG encode and decode. Users only ever get PNG or JPEG.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageFile

from .contract import BadRequest, ImageTooLarge, UnsupportedImage

log = logging.getLogger("restore.imaging")

# We check the pixel count ourselves, from the header, with our own limit and error.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 2_000_000
EXIF_ORIENTATION_TAG = 0x0112
SUPPORTED_FORMATS = ("JPEG", "PNG")


def max_pixels_from_env(var: str = "MAX_PIXELS", default: int = DEFAULT_MAX_PIXELS) -> int:
    return int(os.environ.get(var, default))


@dataclass(frozen=True)
class Picture:
    rgb: np.ndarray                    # float32, H x W x 3, values in [0, 1]
    alpha: np.ndarray | None = None    # float32, H x W, values in [0, 1]
    bit_depth: int = 8                 # precision to encode with: 8 or 16
    exif: bytes | None = None          # raw EXIF (TIFF header first, no "Exif\0\0" prefix)
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def replace(self, **changes) -> "Picture":
        return dataclasses.replace(self, **changes)


def probe_size(data: bytes) -> tuple[str, int, int]:
    """Format, width and height from the header alone (nothing is decoded)."""
    if not data:
        raise BadRequest("the uploaded image is empty", code="empty_image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
    except Exception:
        raise UnsupportedImage("the upload is not a JPEG or PNG image") from None
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImage(f"unsupported image format {fmt}; send JPEG or PNG")
    return fmt, width, height


def check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode a JPEG or PNG upload; the pixel limit is checked from the header before decoding."""
    fmt, width, height = probe_size(data)
    check_pixel_limit(width, height, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as im:
            exif_obj = im.getexif()
            orientation = int(exif_obj.get(EXIF_ORIENTATION_TAG, 1) or 1)
            exif = _strip_exif_prefix(im.info.get("exif"))
            icc = im.info.get("icc_profile") or None
            if fmt == "PNG" and _png_bit_depth(data) == 16:
                rgb, alpha = _decode_16bit_png(data)
                bit_depth = 16
            else:
                im.load()
                if im.mode == "CMYK":
                    icc = None  # a CMYK profile does not describe the RGB pixels we produce
                rgb, alpha, bit_depth = _pil_to_arrays(im)
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error) as exc:
        log.info("undecodable %s upload: %r", fmt, exc)  # the decoder's words stay in the log
        raise BadRequest(f"the {fmt} image data is corrupt or truncated", code="corrupt_image") from None
    if orientation != 1:
        rgb = _apply_orientation(rgb, orientation)
        alpha = None if alpha is None else _apply_orientation(alpha, orientation)
        exif = _reset_orientation(exif_obj)
    return Picture(rgb=np.ascontiguousarray(rgb), alpha=None if alpha is None else np.ascontiguousarray(alpha),
                   bit_depth=bit_depth, exif=exif, icc_profile=icc)


def _strip_exif_prefix(exif: bytes | None) -> bytes | None:
    if not exif:
        return None
    return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif


def _reset_orientation(exif_obj: Image.Exif) -> bytes:
    exif_obj[EXIF_ORIENTATION_TAG] = 1
    return _strip_exif_prefix(exif_obj.tobytes())


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: signature(8) length(4) type(4) width(4) height(4) depth(1)
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 8


def _decode_16bit_png(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    # Pillow reduces 16-bit RGB PNGs to 8 bits; OpenCV keeps all 16.
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise OSError("OpenCV could not decode the 16-bit PNG")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return to_float_planes(arr, 65535.0, bgr=True)


def _pil_to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(arr, 0, 1)[:, :, None], 3, axis=2), None, 16
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    rgb, alpha = to_float_planes(arr, 255.0)
    return rgb, alpha, 8


def to_float_planes(arr: np.ndarray, peak: float, bgr: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer H x W x C pixels (C = 1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha) as float32 RGB and alpha
    in [0, 1], converted in row blocks straight into the final arrays (no full-size temporaries)."""
    height, width, channels = arr.shape
    rgb = np.empty((height, width, 3), np.float32)
    alpha = np.empty((height, width), np.float32) if channels in (2, 4) else None
    scale = np.float32(1 / peak)

    def convert(rows: slice) -> None:
        block = arr[rows]
        if channels <= 2:
            rgb[rows] = np.multiply(block[:, :, :1], scale, dtype=np.float32)
        else:
            np.multiply(block[:, :, 2::-1] if bgr else block[:, :, :3], scale, out=rgb[rows], dtype=np.float32)
        if alpha is not None:
            np.multiply(block[:, :, -1], scale, out=alpha[rows], dtype=np.float32)
    for_row_blocks(height, convert, arr.size)
    return rgb, alpha


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    # EXIF orientations 2..8 as flips and rotations (np.rot90 turns counter-clockwise).
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(a, 1)[::-1], 8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return arr if op is None else op(arr)


ROW_BLOCK = 256  # rows per block when converting big images, so no full-size float temporary is made
# Conversions of at least this many values share their row blocks out to a few threads: a pass over a
# photo's pixels is a visible part of every hop (bench/simple.py, hops), and numpy and OpenCV release the
# GIL while they convert.
PARALLEL_ELEMENTS = 1 << 20
GRAY_PROBE_ROWS = 8
_CONVERT_THREADS = max(1, min(4, os.cpu_count() or 1))
_convert_pool: ThreadPoolExecutor | None = None
_convert_pool_lock = threading.Lock()


class _RowBlocks:
    """Row blocks handed out one at a time to whichever thread asks: the caller works through them with
    the pool's helpers, and waits only for blocks a helper has started (never for a helper still queued
    behind other work), so calling this from a pool thread cannot deadlock."""

    def __init__(self, blocks: list[slice], work: Callable[[slice], None]):
        self._pending = iter(blocks)
        self._work = work
        self._done = threading.Condition()
        self._busy = 0
        self.error: BaseException | None = None

    def drain(self) -> None:
        while True:
            with self._done:
                block = next(self._pending, None) if self.error is None else None
                if block is None:
                    return
                self._busy += 1
            try:
                self._work(block)
            except BaseException as exc:  # noqa: B036 - handed to the caller, which raises it
                with self._done:
                    self.error = self.error or exc
            finally:
                with self._done:
                    self._busy -= 1
                    self._done.notify_all()

    def wait(self) -> None:
        with self._done:
            self._done.wait_for(lambda: self._busy == 0)
        if self.error is not None:
            raise self.error


def for_row_blocks(rows: int, work: Callable[[slice], None], values: int) -> None:
    """``work(block)`` for every block of ``ROW_BLOCK`` rows out of ``rows``. When the work converts
    ``values`` >= ``PARALLEL_ELEMENTS`` values, blocks run on several threads (``work`` must touch only its
    own rows)."""
    global _convert_pool
    blocks = [slice(top, min(top + ROW_BLOCK, rows)) for top in range(0, rows, ROW_BLOCK)]
    if values < PARALLEL_ELEMENTS or len(blocks) < 2 or _CONVERT_THREADS < 2:
        for block in blocks:
            work(block)
        return
    with _convert_pool_lock:
        if _convert_pool is None:
            _convert_pool = ThreadPoolExecutor(_CONVERT_THREADS - 1, thread_name_prefix="convert")
    shared = _RowBlocks(blocks, work)
    for _ in range(min(_CONVERT_THREADS, len(blocks)) - 1):
        _convert_pool.submit(shared.drain)
    shared.drain()
    shared.wait()


def is_grayscale(rgb: np.ndarray, tolerance: float = 1 / 255) -> bool:
    # A few rows first: a colour photo is almost always told apart there, without a pass over a whole block.
    tops = [0, *range(GRAY_PROBE_ROWS, rgb.shape[0], ROW_BLOCK)]
    for top, bottom in zip(tops, [*tops[1:], rgb.shape[0]]):
        block = rgb[top:bottom]
        if (np.abs(block[:, :, 0] - block[:, :, 1]).max() > tolerance
                or np.abs(block[:, :, 1] - block[:, :, 2]).max() > tolerance):
            return False
    return True


def to_integer(arr: np.ndarray, bit_depth: int, out: np.ndarray | None = None) -> np.ndarray:
    """Round [0, 1] floats to 8- or 16-bit integers (to nearest, out of range saturates), into ``out`` (any
    view of the right shape) if given. The same elementwise operation on every path, so a picture gets the
    same integers whether it is written whole (PNG) or into a strided view (the raster transport)."""
    peak = 65535.0 if bit_depth == 16 else 255.0
    depth = cv2.CV_16U if bit_depth == 16 else cv2.CV_8U
    if out is None:
        out = np.empty(arr.shape, dtype=np.uint16 if bit_depth == 16 else np.uint8)
    whole = arr.dtype == np.float32 and arr.flags.c_contiguous and out.flags.c_contiguous

    def convert(rows: slice) -> None:
        if whole:  # the common case, a colour picture into a whole buffer: no copy of the block first
            block, into = arr[rows], out[rows]
            cv2.multiply(block.reshape(block.shape[0], -1), peak, dst=into.reshape(into.shape[0], -1), dtype=depth)
            return
        block = np.ascontiguousarray(arr[rows], dtype=np.float32)
        out[rows] = cv2.multiply(block.reshape(block.shape[0], -1), peak, dtype=depth).reshape(block.shape)
    for_row_blocks(arr.shape[0], convert, arr.size)
    return out


def encode_png(picture: Picture, compression: int = 1) -> bytes:
    """Lossless PNG with the picture's precision, alpha, EXIF and ICC profile."""
    # OpenCV writes no grey + alpha PNG (2 channels), so such a picture is stored as RGBA.
    gray = picture.alpha is None and is_grayscale(picture.rgb, tolerance=0.0)
    colour = picture.rgb[:, :, :1] if gray else picture.rgb[:, :, ::-1]  # OpenCV writes BGR
    arr = to_integer(colour, picture.bit_depth)
    if picture.alpha is not None:
        arr = np.concatenate([arr, to_integer(picture.alpha[:, :, None], picture.bit_depth)], axis=2)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return _insert_png_chunks(buf.tobytes(), picture.exif, picture.icc_profile)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _insert_png_chunks(png: bytes, exif: bytes | None, icc: bytes | None) -> bytes:
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif)
    if not extra:
        return png
    ihdr_end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    return png[:ihdr_end] + extra + png[ihdr_end:]


def encode_jpeg(picture: Picture, quality: int = 92) -> bytes:
    """JPEG for downloads (alpha is composited on white; EXIF and ICC kept)."""
    rgb = picture.rgb
    if picture.alpha is not None:
        a = picture.alpha[:, :, None]
        rgb = rgb * a + (1 - a)
    im = Image.fromarray(to_integer(rgb, 8), "RGB")
    out = io.BytesIO()
    kwargs = {}
    if picture.exif:
        kwargs["exif"] = b"Exif\x00\x00" + picture.exif
    if picture.icc_profile:
        kwargs["icc_profile"] = picture.icc_profile
    im.save(out, "JPEG", quality=quality, **kwargs)
    return out.getvalue()


# ---------------------------------------------------------------- raster transport (gateway <-> stages)

RASTER_MEDIA_TYPE = "application/x-restore-raster"
PNG_MEDIA_TYPE = "image/png"
JPEG_MEDIA_TYPE = "image/jpeg"
# Media types a stage takes as a whole request body (the image alone, params in a header)
RAW_BODY_TYPES = (PNG_MEDIA_TYPE, JPEG_MEDIA_TYPE, RASTER_MEDIA_TYPE)
RASTER_MAGIC = b"RRASTER1"
_RASTER_FIXED = struct.Struct("<8sIIBBII")  # magic, width, height, channels, bit depth, EXIF and ICC lengths
_CHANNEL_LAYOUTS = {1: (True, False), 2: (True, True), 3: (False, False), 4: (False, True)}  # -> (gray, alpha)


def accepts_raster(accept_header: str | None) -> bool:
    """Whether a request's ``Accept`` header asks for the raster transport (stages answer PNG otherwise)."""
    for item in (accept_header or "").split(","):
        media, *options = [part.strip().lower() for part in item.split(";")]
        if media == RASTER_MEDIA_TYPE:
            quality = next((o[2:] for o in options if o.startswith("q=")), "1")
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def encode_transport(picture: Picture) -> tuple[bytearray, str]:
    """The picture in the raster transport: a fixed header, EXIF, ICC, then the pixel integers row-major.

    Holds exactly what ``encode_png`` would store (same rounding, grey as one channel, alpha, 16 bits,
    EXIF, ICC), so a picture that crosses a hop this way decodes to the same arrays as through PNG. The
    integers are written straight into the returned buffer: no intermediate copies."""
    gray = is_grayscale(picture.rgb, tolerance=0.0)
    colour_channels = 1 if gray else 3
    channels = colour_channels + (picture.alpha is not None)
    itemsize = 2 if picture.bit_depth == 16 else 1
    exif, icc = picture.exif or b"", picture.icc_profile or b""
    header = _RASTER_FIXED.pack(RASTER_MAGIC, picture.width, picture.height, channels,
                                16 if itemsize == 2 else 8, len(exif), len(icc))
    offset = len(header) + len(exif) + len(icc)
    buf = bytearray(offset + picture.pixels * channels * itemsize)
    buf[:offset] = header + exif + icc
    pixels = np.frombuffer(buf, dtype="<u2" if itemsize == 2 else np.uint8, offset=offset)
    pixels = pixels.reshape(picture.height, picture.width, channels)
    to_integer(picture.rgb[:, :, :1] if gray else picture.rgb, picture.bit_depth, out=pixels[:, :, :colour_channels])
    if picture.alpha is not None:
        to_integer(picture.alpha, picture.bit_depth, out=pixels[:, :, colour_channels])
    return buf, RASTER_MEDIA_TYPE


def encode_for(picture: Picture, raster: bool) -> tuple[bytes | bytearray, str]:
    """The raster transport when the receiver asked for it, else lossless PNG."""
    return encode_transport(picture) if raster else (encode_png(picture), PNG_MEDIA_TYPE)


def decode_transport(data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Inverse of ``encode_transport``; sizes are checked against the header before any pixel is read."""
    if len(data) < _RASTER_FIXED.size:
        raise BadRequest("the raster image is truncated (no complete header)", code="corrupt_image")
    magic, width, height, channels, bit_depth, exif_len, icc_len = _RASTER_FIXED.unpack_from(data)
    if magic != RASTER_MAGIC:
        raise UnsupportedImage("the upload is not a raster-transport image")
    if channels not in _CHANNEL_LAYOUTS or bit_depth not in (8, 16) or width == 0 or height == 0:
        raise BadRequest(f"the raster header is invalid ({width}x{height}, {channels} channels, "
                         f"{bit_depth} bits)", code="corrupt_image")
    check_pixel_limit(width, height, max_pixels)
    offset = _RASTER_FIXED.size + exif_len + icc_len
    expected = offset + width * height * channels * (bit_depth // 8)
    if len(data) != expected:
        raise BadRequest(f"the raster image holds {len(data)} bytes; its header announces {expected}",
                         code="corrupt_image")
    view = memoryview(data)
    exif = bytes(view[_RASTER_FIXED.size:_RASTER_FIXED.size + exif_len]) or None
    icc = bytes(view[_RASTER_FIXED.size + exif_len:offset]) or None
    pixels = np.frombuffer(data, dtype="<u2" if bit_depth == 16 else np.uint8, offset=offset)
    pixels = pixels.reshape(height, width, channels)
    # The same float conversion as the PNG decoders, so both paths give identical arrays.
    rgb, alpha = to_float_planes(pixels, 65535.0 if bit_depth == 16 else 255.0)
    return Picture(rgb=rgb, alpha=alpha, bit_depth=bit_depth, exif=exif, icc_profile=icc)


def decode_any(data: bytes | bytearray | memoryview, media_type: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """A JPEG/PNG upload or a raster-transport image, recognised by its first bytes (``media_type`` as
    declared by the sender is only a hint: the bytes decide, so a mislabelled part still decodes right)."""
    if bytes(data[:len(RASTER_MAGIC)]) == RASTER_MAGIC:
        return decode_transport(data, max_pixels)
    return decode_image(bytes(data) if not isinstance(data, bytes) else data, max_pixels)


# --- checking an image answer without decoding it into memory -------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
INFLATE_STEP = 1 << 20


def _png_raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits_per_pixel + 7) // 8) if w and h else 0
    if not interlaced:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7)


def verify_png(data: bytes, max_pixels: int, inflate: bool = True) -> tuple[int, int]:
    """Width and height of a complete, intact PNG; ValueError saying what is wrong otherwise.

    Every chunk's CRC is checked and (``inflate``) the image data is inflated in 1 MB steps and counted, so a
    32 MP upload is checked in a few MB of memory instead of being decoded.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos, size, inflater, raw, expected, dims, ended = 8, len(data), zlib.decompressobj(), 0, None, None, False
    view = memoryview(data)  # chunks are checked in place, not copied
    while pos + 12 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            raise ValueError("truncated PNG chunk")
        payload = view[pos + 8:pos + 8 + length]
        if zlib.crc32(view[pos + 4:pos + 8 + length]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise ValueError(f"bad CRC in PNG chunk {kind!r}")
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", payload[:13])
            if colour not in _PNG_CHANNELS or not width or not height:
                raise ValueError("invalid PNG header")
            check_pixel_limit(width, height, max_pixels)
            dims = (width, height)
            expected = _png_raw_size(width, height, depth * _PNG_CHANNELS[colour], interlace == 1)
        elif kind == b"IDAT":
            if expected is None:
                raise ValueError("PNG image data before its header")
            if not inflate:
                pos = end
                continue
            chunk = payload
            while chunk:
                raw += len(inflater.decompress(chunk, INFLATE_STEP))
                chunk = inflater.unconsumed_tail
                if raw > expected:
                    raise ValueError("PNG image data longer than its size")
        elif kind == b"IEND":
            ended = True
            break
        pos = end
    if dims is None or not ended:
        raise ValueError("incomplete PNG")
    if not inflate:
        return dims
    while not inflater.eof and (rest := inflater.decompress(b"", INFLATE_STEP)):
        raw += len(rest)
    if not inflater.eof or raw != expected:
        raise ValueError("PNG image data is incomplete")
    return dims


# Media types of image answers between stages and the gateway, and how each is checked.
def verify_raster(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Width and height of a complete raster-transport image (header sane, length exact); ValueError otherwise."""
    if len(data) < _RASTER_FIXED.size:
        raise ValueError("truncated raster header")
    magic, width, height, channels, bit_depth, exif_len, icc_len = _RASTER_FIXED.unpack_from(data)
    if magic != RASTER_MAGIC or channels not in _CHANNEL_LAYOUTS or bit_depth not in (8, 16) or not width or not height:
        raise ValueError("invalid raster header")
    check_pixel_limit(width, height, max_pixels)
    expected = _RASTER_FIXED.size + exif_len + icc_len + width * height * channels * (bit_depth // 8)
    if len(data) != expected:
        raise ValueError(f"raster image of {len(data)} bytes, its header says {expected}")
    return width, height


def verify_png_transfer(data: bytes, max_pixels: int) -> tuple[int, int]:
    """A stage's PNG answer: complete, every chunk's CRC intact, within the limit. The stage's own encoder
    wrote it, so what could go wrong is the transfer, which the CRCs cover without inflating the pixels."""
    return verify_png(data, max_pixels, inflate=False)


ANSWER_CHECKS = {PNG_MEDIA_TYPE: verify_png_transfer, RASTER_MEDIA_TYPE: verify_raster}


def verify_image_answer(data: bytes, content_type: str, max_pixels: int) -> tuple[int, int]:
    """Size of a stage's image answer of the given media type, checked whole; ValueError if unusable."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    check = ANSWER_CHECKS.get(media_type)
    if check is None:
        raise ValueError(f"unexpected content type {media_type or 'none'!r}")
    return check(data, max_pixels)


def is_raster(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[:len(RASTER_MAGIC)]) == RASTER_MAGIC


def media_type_of(data: bytes | bytearray | memoryview) -> str:
    """The media type to label an image sent on with: the raster transport, JPEG, else PNG (the decoder
    goes by the bytes; the label is for the reader)."""
    if is_raster(data):
        return RASTER_MEDIA_TYPE
    return JPEG_MEDIA_TYPE if bytes(data[:2]) == b"\xff\xd8" else PNG_MEDIA_TYPE


def transport_size(data: bytes) -> tuple[int, int]:
    """Width and height of an upload (after its EXIF orientation) or of a raster-transport image."""
    if is_raster(data):
        return verify_raster(data, 1 << 40)
    return oriented_size(data)


def oriented_size(data: bytes) -> tuple[int, int]:
    """Width and height of an upload as the stages see it (after its EXIF orientation); nothing is decoded."""
    return _oriented(data, *probe_size(data))


def _oriented(data: bytes, fmt: str, width: int, height: int) -> tuple[int, int]:
    try:
        if fmt == "PNG":
            # Pillow's getexif() decodes a whole PNG (its eXIf chunk may follow the pixels): walk the chunks
            exif = Image.Exif()
            exif.load(next((data[start:start + length] for kind, start, length in png_chunks(data)
                            if kind == b"eXIf"), b""))
        else:
            with Image.open(io.BytesIO(data)) as im:
                exif = im.getexif()
        orientation = int(exif.get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def png_chunks(data: bytes):
    """(kind, payload offset, payload length) of each chunk of a PNG whose header is present, up to IEND,
    by jumping from chunk header to chunk header (no CRC check, nothing inflated)."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, pos + 8, length
        if kind == b"IEND":
            return
        pos += 12 + length


def verify_upload(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The oriented size of an intact JPEG or PNG upload within ``max_pixels``; 4xx errors otherwise.

    The gateway's check before any stage is called, at a fraction of a decode: a PNG is inflated and
    counted with every CRC checked; a JPEG's whole entropy-coded stream is decoded at 1/8 scale.
    """
    fmt, width, height = check_upload_header(data, max_pixels)
    verify_upload_data(data, fmt, width, height, max_pixels)
    return _oriented(data, fmt, width, height)


def check_upload_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Format, width and height from the header of a JPEG or PNG within ``max_pixels`` (nothing decoded)."""
    fmt, width, height = probe_size(data)
    check_pixel_limit(width, height, max_pixels)
    return fmt, width, height


_UNDECODABLE = (OSError, SyntaxError, ValueError, struct.error, zlib.error)


def check_png(data: bytes, max_pixels: int, inflate: bool = True) -> None:
    """400 unless every chunk of the PNG is intact and (``inflate``) its image data inflates to its size."""
    try:
        verify_png(data, max_pixels, inflate=inflate)
    except _UNDECODABLE as exc:
        log.info("undecodable PNG upload: %r", exc)
        raise BadRequest("the PNG image data is corrupt or truncated", code="corrupt_image") from None


def verify_upload_data(data: bytes, fmt: str, width: int, height: int, max_pixels: int) -> None:
    """The rest of ``verify_upload`` once the header is checked: the image data is intact, else 400."""
    if fmt == "PNG":
        check_png(data, max_pixels)
        return
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
    except _UNDECODABLE as exc:
        log.info("undecodable %s upload: %r", fmt, exc)
        raise BadRequest(f"the {fmt} image data is corrupt or truncated", code="corrupt_image") from None


def png_to_jpeg(png: bytes, quality: int = 92) -> bytes:
    """JPEG of a PNG result, converted in 8-bit row blocks (no float copy of the image); alpha is composited
    on white, EXIF and ICC are kept."""
    with Image.open(io.BytesIO(png)) as im:
        exif = _strip_exif_prefix(im.info.get("exif"))
        icc = im.info.get("icc_profile") or None
    arr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise BadRequest("the image data is corrupt or truncated", code="corrupt_image")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    rgb = np.empty(arr.shape[:2] + (3,), np.uint8)
    peak = np.float32(65535.0 if arr.dtype == np.uint16 else 255.0)
    for top in range(0, arr.shape[0], ROW_BLOCK):
        block = arr[top:top + ROW_BLOCK].astype(np.float32) * (np.float32(255.0) / peak)
        colour = np.repeat(block[:, :, :1], 3, axis=2) if block.shape[2] <= 2 else block[:, :, 2::-1]
        if block.shape[2] in (2, 4):
            alpha = block[:, :, -1:] * np.float32(1 / 255)
            colour = colour * alpha + np.float32(255.0) * (1 - alpha)
        rgb[top:top + ROW_BLOCK] = np.clip(colour + np.float32(0.5), 0, 255)
    del arr
    out = io.BytesIO()
    kwargs = {}
    if exif:
        kwargs["exif"] = b"Exif\x00\x00" + exif
    if icc:
        kwargs["icc_profile"] = icc
    Image.fromarray(rgb, "RGB").save(out, "JPEG", quality=quality, **kwargs)
    return out.getvalue()
