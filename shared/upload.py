"""Reading uploads with a byte limit enforced while the body streams in, and trimming what follows an image.

Both the gateway's endpoints and every stage's ``/process`` read their multipart bodies here, so a client
cannot make a service hold more than the limit, whether it declares a Content-Length or sends chunks.
"""
from __future__ import annotations

import logging
import struct
from typing import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .contract import BadRequest, ImageTooLarge, InvalidParams
from .imaging import png_chunks

log = logging.getLogger("restore.upload")

# Text fields are small JSON documents or single values; the image is the only large part.
MAX_FIELD_BYTES = 256 * 1024
MAX_FIELDS = 32


class UploadTooLarge(ImageTooLarge):
    code = "upload_too_large"


async def _limited(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise UploadTooLarge(f"the upload exceeds the {max_bytes}-byte limit")
        yield chunk


def refuse_declared_over(request: Request, max_bytes: int) -> None:
    """413 for a body whose declared Content-Length is over the limit, before anything is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise UploadTooLarge(f"the upload ({declared} bytes) exceeds the {max_bytes}-byte limit")


async def read_multipart(request: Request, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """The multipart ``image`` file (trimmed to the image's own end) and the text fields.

    The limit counts the body's bytes as they arrive; a declared Content-Length over it is refused before
    anything is read.
    """
    refuse_declared_over(request, max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("send multipart/form-data with an 'image' file field", code="missing_image")
    parser = MultiPartParser(request.headers, _limited(request.stream(), max_bytes), max_files=1,
                             max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    # The image ends up in memory whole anyway (and the limit bounds it): spooling it to disk past 1 MB
    # would only add a write and a read on every hop.
    parser.spool_max_size = max_bytes
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        # starlette's messages name the broken rule (too many fields, part too large), never our internals
        raise BadRequest(f"malformed multipart body: {exc.message}", code="bad_multipart") from None
    try:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise InvalidParams("the 'image' file field is missing", field="image", status=400,
                                code="missing_image")
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if key == "image":
                continue
            if not isinstance(value, str):
                raise InvalidParams(f"field '{key}' must be a text field, not a file", field=key)
            fields[key] = value
        data = await upload.read()
    finally:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                await value.close()
    return trim_to_image(data), fields


async def read_raw_image(request: Request, max_bytes: int) -> bytes:
    """A request whose whole body is the image (trimmed to the image's own end), under the same limit."""
    refuse_declared_over(request, max_bytes)
    chunks = [chunk async for chunk in _limited(request.stream(), max_bytes)]
    return trim_to_image(b"".join(chunks))


def reject_unknown_fields(fields: dict[str, str], known: set[str] | frozenset[str]) -> None:
    """422 naming the first form field the endpoint does not take (a typo would otherwise be ignored)."""
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise InvalidParams(f"unknown form field '{_short(unknown[0])}'; this endpoint takes {sorted(known)}",
                            field=_short(unknown[0]))


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def trim_to_image(data: bytes) -> bytes:
    """The bytes up to the end of the PNG or JPEG stream; what follows (padding, appended files) is dropped.

    Unknown or damaged structure is returned unchanged, for the decoder to judge.
    """
    end = None
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        end = _png_end(data)
    elif data.startswith(b"\xff\xd8"):
        end = _jpeg_end(data)
    if end is not None and end < len(data):
        log.info("dropped %d bytes after the image's end", len(data) - end)
        return data[:end]
    return data


def _png_end(data: bytes) -> int | None:
    for kind, start, length in png_chunks(data):
        if kind == b"IEND":
            end = start + length + 4   # its CRC
            return end if end <= len(data) else None
    return None


# Markers without a length field: TEM, RST0-7.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _jpeg_end(data: bytes) -> int | None:
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return pos + 2
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker that is not RST
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return None
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    pos += 1 if following == 0xFF else 2
                    continue
                break
    return None
