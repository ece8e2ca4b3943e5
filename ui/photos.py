"""Uploaded photos: what they are (size, black and white or not), zips of photos in and out, result names.

The gateway does the real decoding and checks; here only headers and a small thumbnail are read, so a
broken file is still sent and its failure is reported in the gateway's own words.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_ZIP_MEMBERS = 500
MAX_ZIP_MEMBER_BYTES = 100 * 1024 * 1024     # the gateway's own upload limit
MAX_ZIP_TOTAL_BYTES = 1024 * 1024 * 1024     # a zip bomb stops here, not in memory


@dataclass
class Photo:
    name: str
    data: bytes

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) from the header, EXIF rotation applied; None when the header is unreadable."""
        try:
            with Image.open(io.BytesIO(self.data)) as im:
                orientation = im.getexif().get(0x0112, 1)
                return (im.height, im.width) if orientation in (5, 6, 7, 8) else (im.width, im.height)
        except Exception:
            return None

    def getvalue(self) -> bytes:  # the same call as Streamlit's UploadedFile
        return self.data

    def describe(self) -> str:
        size = self.size
        mb = f"{len(self.data) / 1e6:.1f} MB"
        return f"{self.name}: {size[0]}×{size[1]} px, {mb}" if size else f"{self.name}: {mb} (not a readable image)"


def input_kind(data: bytes) -> str | None:
    """"gray" or "color" as a stage sees the decoded photo (all three channels within one level of each
    other, shared/imaging.is_grayscale), for the stages' per-kind speed; None when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
                return "gray"
            rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    except Exception:
        return None
    gray = all(np.abs(rgb[top:top + 256, :, 0] - rgb[top:top + 256, :, c]).max(initial=0) <= 1
               for top in range(0, rgb.shape[0], 256) for c in (1, 2))
    return "gray" if gray else "color"


def is_grayscale(data: bytes) -> bool | None:
    """True for a black-and-white (or toned) photo, from a small thumbnail; None when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
                return True
            im.draft("RGB", (128, 128))
            small = ImageOps.exif_transpose(im).convert("RGB")
            small.thumbnail((128, 128))
    except Exception:
        return None
    rgb = np.asarray(small, dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return bool(np.percentile(spread, 95) <= 24)   # sepia prints count as black and white


def expand_uploads(files: list[tuple[str, bytes]]) -> tuple[list[Photo], list[tuple[str, str]]]:
    """Uploaded files and the photos inside uploaded zips; (photos, [(name, why it was left out)])."""
    photos, problems = [], []
    for name, data in files:
        if not name.lower().endswith(".zip"):
            photos.append(Photo(name, data))
            continue
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [m for m in archive.infolist() if not m.is_dir()]
        except zipfile.BadZipFile:
            problems.append((name, "This zip file could not be opened."))
            continue
        total = 0
        for member in members[:MAX_ZIP_MEMBERS]:
            path = PurePosixPath(member.filename)
            if path.name.startswith(".") or "__MACOSX" in path.parts:
                continue
            if path.suffix.lower() not in PHOTO_SUFFIXES:
                problems.append((f"{name}/{member.filename}", "Not a JPEG or PNG photo, so it was left out."))
                continue
            total += member.file_size
            if member.file_size > MAX_ZIP_MEMBER_BYTES or total > MAX_ZIP_TOTAL_BYTES:
                problems.append((f"{name}/{member.filename}", "Too large to restore here."))
                continue
            try:
                photos.append(Photo(path.name, archive.read(member)))
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as exc:
                problems.append((f"{name}/{member.filename}", f"Could not be read from the zip ({exc})."))
        if len(members) > MAX_ZIP_MEMBERS:
            problems.append((name, f"Only the first {MAX_ZIP_MEMBERS} files of this zip were used."))
    return photos, problems


def result_names(names: list[str]) -> list[str]:
    """The file name of each result: the original name as PNG, numbered when two photos share a name."""
    taken: set[str] = set()
    out = []
    for name in names:
        stem = PurePosixPath(name).stem or "photo"
        candidate, n = f"{stem}.png", 2
        while candidate.lower() in taken:
            candidate, n = f"{stem} ({n}).png", n + 1
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def zip_of(files: list[tuple[str, bytes]]) -> bytes:
    """A zip of (name, data); PNGs are already compressed, so they are stored."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()
