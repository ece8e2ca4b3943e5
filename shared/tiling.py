"""One tiling engine for every model: bounded memory for any image size, seamless output.

The image is cut into overlapping tiles; each tile is also given ``context`` extra input pixels on every
side (cropped away after the model) so the network sees its neighbourhood. Where two tiles overlap, their
outputs are cross-faded with linear ramps that sum to exactly one, so no weight image has to be stored:
the output buffer is the only full-size allocation.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np

TileFn = Callable[[np.ndarray], np.ndarray]


class TileProgress(Protocol):
    """What the tiler needs of a stage context (``StageContext`` or one of its ``sub_progress`` views)."""

    def set_progress(self, progress: float) -> None: ...

    def check_aborted(self) -> None: ...


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` shared pixels."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be in [0, tile)")
    count = math.ceil((length - overlap) / (tile - overlap))
    # Spread the tiles evenly so the last one ends exactly at the border.
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp_weights(out_len: int, out_start: int, scale: float, starts: list[int], index: int,
                  tile: int, length: int, overlap: int) -> np.ndarray:
    """Weights (in output pixels) for tile ``index`` along one axis; they partition unity across tiles.

    Each pair of neighbours cross-fades over a zone of ``overlap`` pixels centred in their shared span, so
    at most two tiles ever contribute to a pixel and their weights add up to one.
    """
    coords = (np.arange(out_len, dtype=np.float64) + out_start + 0.5) / scale  # input-space centres
    weight = np.ones(out_len, dtype=np.float64)

    def zone(left: int) -> tuple[float, float]:
        shared_start, shared_end = starts[left + 1], min(starts[left] + tile, length)
        width = max(min(overlap, shared_end - shared_start), 1e-6)
        middle = (shared_start + shared_end) / 2
        return middle - width / 2, width

    if index > 0:
        low, width = zone(index - 1)
        weight = np.minimum(weight, np.clip((coords - low) / width, 0, 1))
    if index + 1 < len(starts):
        low, width = zone(index)
        weight = np.minimum(weight, np.clip(1 - (coords - low) / width, 0, 1))
    return weight.astype(np.float32)


def process_tiled(image: np.ndarray, fn: TileFn, *, scale: int = 1, tile: int = 256, overlap: int = 16,
                  context: int = 16, ctx: TileProgress | None = None,
                  out_channels: int | None = None) -> np.ndarray:
    """Run ``fn`` (H x W x C float32 -> sH x sW x C') over ``image`` tile by tile.

    ``tile`` and ``overlap`` are in input pixels; ``scale`` is the model's integer output factor.
    An image no larger than one tile is processed in a single call, identical to the untiled path.
    ``ctx`` (optional) is asked ``check_aborted()`` before every tile and told ``set_progress`` after each.
    """
    height, width = image.shape[:2]
    if height <= tile and width <= tile:
        if ctx:
            ctx.check_aborted()
        result = fn(image)
        if ctx:
            ctx.set_progress(1.0)
        return result
    if overlap * 4 > tile:
        raise ValueError("overlap must be at most a quarter of the tile size")
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total, done = len(ys) * len(xs), 0
    output: np.ndarray | None = None
    for iy, y0 in enumerate(ys):
        y1 = min(y0 + tile, height)
        for ix, x0 in enumerate(xs):
            x1 = min(x0 + tile, width)
            cy0, cy1 = max(0, y0 - context), min(height, y1 + context)
            cx0, cx1 = max(0, x0 - context), min(width, x1 + context)
            if ctx:
                ctx.check_aborted()
            result = fn(image[cy0:cy1, cx0:cx1])
            if result.shape[0] != (cy1 - cy0) * scale or result.shape[1] != (cx1 - cx0) * scale:
                raise ValueError(f"tile function returned {result.shape[:2]}, expected "
                                 f"{((cy1 - cy0) * scale, (cx1 - cx0) * scale)}")
            if output is None:
                channels = out_channels or (result.shape[2] if result.ndim == 3 else 1)
                shape = (height * scale, width * scale) + ((channels,) if result.ndim == 3 else ())
                output = np.zeros(shape, dtype=np.float32)
            core = result[(y0 - cy0) * scale:(y1 - cy0) * scale, (x0 - cx0) * scale:(x1 - cx0) * scale]
            wy = _ramp_weights(core.shape[0], y0 * scale, scale, ys, iy, tile, height, overlap)
            wx = _ramp_weights(core.shape[1], x0 * scale, scale, xs, ix, tile, width, overlap)
            weight = wy[:, None] * wx[None, :]
            if core.ndim == 3:
                weight = weight[:, :, None]
            output[y0 * scale:y1 * scale, x0 * scale:x1 * scale] += core * weight
            done += 1
            if ctx:
                ctx.set_progress(done / total)
    assert output is not None
    return output
