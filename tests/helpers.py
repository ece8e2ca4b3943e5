"""Small helpers for tests: make images, encode them, measure them."""
from __future__ import annotations

import io
import time

import cv2
import numpy as np
from PIL import Image


def png_of(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB / RGBA / gray uint8 or uint16 array (RGB order)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def jpeg_of(array: np.ndarray, quality: int = 92, **pil_kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=quality, **pil_kwargs)
    return out.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """Decoded pixels as RGB(A) in their stored dtype."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert arr is not None, "response is not a decodable image"
    if arr.ndim == 3 and arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def noisy(array: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(array.astype(np.float64) + rng.normal(0, sigma, array.shape), 0, 255).astype(np.uint8)


def photo(name: str = "astronaut") -> np.ndarray:
    """A real photo from scikit-image's bundled data (RGB uint8)."""
    import skimage.data
    return getattr(skimage.data, name)()


def wait_for(predicate, timeout: float = 120, interval: float = 0.05):
    """The first truthy value of ``predicate()``, polled until ``timeout``; AssertionError after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
