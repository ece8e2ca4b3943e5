"""The batch CLI (python -m cli) against the real stack: a folder with a corrupt photo among good ones."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import collect
from tests.helpers import decode_rgb, jpeg_of, photo, png_of

ROOT = Path(__file__).resolve().parent.parent


def run_cli(gateway: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, GATEWAY_URL=gateway, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def digests(folder: Path) -> dict[str, tuple[str, float]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime) for p in sorted(folder.iterdir())}


@pytest.fixture()
def photo_folder(tmp_path: Path, shared_images: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    # real photos, small so that model stages on a CPU stay quick
    (folder / "small.jpg").write_bytes(jpeg_of(photo("astronaut")[::8, ::8]))     # 64 x 64
    (folder / "coffee.png").write_bytes(png_of(photo("coffee")[::8, ::8]))        # 75 x 50
    good = (shared_images / "small-0014.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(good[: len(good) // 3])                   # truncated JPEG
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_folder_with_a_corrupt_photo(stack, photo_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    before = digests(photo_folder)
    first = run_cli(stack.url("gateway"), str(photo_folder), "-o", str(out), "--colorize", "off", "--upscale", "none")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "2 restored, 0 skipped (already done), 1 failed" in first.stdout
    assert "broken.jpg: HTTP 400 corrupt_image" in first.stdout
    assert sorted(p.name for p in out.iterdir()) == ["coffee.png", "small.png"]
    assert decode_rgb((out / "small.png").read_bytes()).shape[:2] == (64, 64)
    assert decode_rgb((out / "coffee.png").read_bytes()).shape[:2] == (50, 75)
    assert digests(photo_folder) == before, "inputs must never be touched"

    outputs = digests(out)
    second = run_cli(stack.url("gateway"), str(photo_folder), "-o", str(out), "--colorize", "off")
    assert second.returncode == 1
    assert "0 restored, 2 skipped (already done), 1 failed" in second.stdout
    assert digests(out) == outputs, "done photos must not be redone"
    assert digests(photo_folder) == before


def test_advanced_mode_single_file(stack, photo_folder: Path, tmp_path: Path):
    out = tmp_path / "adv"
    chain = json.dumps([{"stage": "sharpen", "params": {"sharpen_amount": 1.0}}])
    result = run_cli(stack.url("gateway"), str(photo_folder / "coffee.png"), "-o", str(out), "--stages", chain)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 restored, 0 skipped (already done), 0 failed" in result.stdout
    original = decode_rgb((photo_folder / "coffee.png").read_bytes())
    restored = decode_rgb((out / "coffee.png").read_bytes())
    assert restored.shape == original.shape and (restored != original).any()


def test_bad_advanced_chain_is_reported_per_file(stack, photo_folder: Path, tmp_path: Path):
    chain = json.dumps([{"stage": "sharpen", "params": {"sharpen_amount": 99}}])
    result = run_cli(stack.url("gateway"), str(photo_folder / "small.jpg"), "-o", str(tmp_path / "x"),
                     "--stages", chain)
    assert result.returncode == 1
    assert "invalid_params" in result.stdout and "sharpen_amount" in result.stdout


def test_outputs_never_overwrite_inputs(tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="overwrite the input"):
        collect([folder], folder, recursive=False)
    # a.jpg and a.png would share a.png: both get their full name instead
    (folder / "a.jpg").write_bytes(b"x")
    targets = sorted(item.target.name for item in collect([folder], tmp_path / "out", recursive=False))
    assert targets == ["a.jpg.png", "a.png.png"]
    # a recursive scan never picks up the output folder inside the input folder
    (folder / "restored").mkdir()
    (folder / "restored" / "a.png").write_bytes(b"x")
    items = collect([folder], folder / "restored", recursive=True)
    assert all("restored" not in item.source.parts for item in items)


def test_unreachable_gateway_is_a_usage_error(photo_folder: Path, tmp_path: Path):
    result = run_cli("http://127.0.0.1:9", str(photo_folder), "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and "not reachable" in result.stderr
