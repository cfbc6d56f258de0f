"""Pillow 9.5's bilinear resize of uint8 images, re-stated in numpy (independent of the installed Pillow).

The official processor resizes with ``PIL.Image.resize(size, BILINEAR)`` and the authors pin
``Pillow~=9.5`` (SPEC §2.1). Pillow 13 changed that resize by one grey level at some pixels, so
calling the installed Pillow would make our numbers depend on its version. This module computes what
Pillow 9.5 (through 12.3) computes, bit for bit:

* Separable, two passes: horizontal first, its result rounded to uint8, then vertical. An axis whose
  size does not change is not resampled.
* Per output position ``i`` of an axis of input size ``n`` and output size ``m`` (all in float64):
  ``scale = n / m``, ``filterscale = max(scale, 1)`` (the triangle filter is widened by the reduction
  factor, i.e. antialiased when downscaling), ``support = filterscale``, ``center = (i + 0.5) * scale``,
  taps ``x`` from ``xmin = max(int(center - support + 0.5), 0)`` up to
  ``min(int(center + support + 0.5), n)`` (exclusive; ``int`` truncates toward zero), weight
  ``w(x) = max(0, 1 - |(x - center + 0.5) / filterscale|)``, each weight divided by their sum
  (accumulated in tap order) when the sum is non-zero.
* Fixed point: every weight becomes ``int(w * 2**22 + 0.5)`` (``- 0.5`` for negative weights), the
  output is ``(2**21 + sum(pixel * weight)) >> 22`` clipped to [0, 255], accumulated in int32.

Each pass gathers whole rows: the data is laid out with the resampled axis first (the horizontal pass
transposes bands of 64 rows), so every tap is one contiguous ``take``; the work is
``O(output * taps)`` per pass, vectorised over the other axis.
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["PRECISION_BITS", "bilinear_coefficients", "resize_bilinear"]

#: Fixed-point fraction bits of Pillow's 8-bit resampling (32 - 8 - 2).
PRECISION_BITS = 22
_ROW_BAND = 64  # rows per block of the horizontal pass (keeps its transposed copy in cache)


@functools.lru_cache(maxsize=64)
def bilinear_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of one axis: ``(index [m, k] int64, weights [m, k] int32)`` for ``in_size -> out_size``.

    Output ``i`` is ``sum_j weights[i, j] * x[index[i, j]]`` (fixed point, 22 fraction bits). Rows
    with fewer than ``k`` taps are padded with zero weights at valid indices. Read-only (cached).
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = float(in_size) / float(out_size)
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the triangle's support (1.0) widened by the reduction factor
    ksize = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size) - xmin  # tap counts
    inv = 1.0 / filterscale
    taps = np.arange(ksize, dtype=np.int64)
    positions = (xmin[:, None] + taps[None, :]).astype(np.float64)
    weights = np.maximum(0.0, 1.0 - np.abs((positions - centers[:, None] + 0.5) * inv))
    weights[taps[None, :] >= xmax[:, None]] = 0.0
    total = np.zeros(out_size, dtype=np.float64)
    for j in range(ksize):  # sequential sum, in tap order, as Pillow accumulates it
        total += weights[:, j]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0.0)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    # padded taps (weight 0) read the last pixel instead of running past the end
    index = np.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    index.setflags(write=False)
    fixed.setflags(write=False)
    return index, fixed


def _resample_first_axis(data: np.ndarray, out_size: int) -> np.ndarray:
    """Resample axis 0 of a C-contiguous uint8 array [n, ...] to [out_size, ...] (one Pillow pass)."""
    index, weights = bilinear_coefficients(data.shape[0], out_size)
    rows = data.reshape(data.shape[0], -1)
    acc = np.full((out_size, rows.shape[1]), 1 << (PRECISION_BITS - 1), dtype=np.int32)
    tap = np.empty_like(acc)
    ksize = weights.shape[1]
    for j in range(ksize):
        column = weights[:, j]
        if not column.any():
            continue
        np.multiply(rows.take(index[:, j], axis=0), column[:, None], out=tap, dtype=np.int32)
        acc += tap
    np.right_shift(acc, PRECISION_BITS, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8).reshape((out_size,) + data.shape[1:])


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an HW or HWC uint8 image to ``height x width`` exactly as Pillow 9.5's ``BILINEAR``.

    Shapes: ``image`` [H, W] or [H, W, C] uint8 -> [height, width] or [height, width, C] uint8
    (a new C-contiguous array). The aspect ratio is not kept.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an HW or HWC uint8 image, got {image.dtype} of shape {image.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    out = image
    if image.shape[1] != width:  # horizontal pass, on bands of rows turned column-major (cache-sized)
        out = np.empty((image.shape[0], width) + image.shape[2:], dtype=np.uint8)
        for start in range(0, image.shape[0], _ROW_BAND):
            band = np.ascontiguousarray(np.swapaxes(image[start:start + _ROW_BAND], 0, 1))
            out[start:start + _ROW_BAND] = np.swapaxes(_resample_first_axis(band, width), 0, 1)
    if image.shape[0] != height:
        out = _resample_first_axis(np.ascontiguousarray(out), height)
    return out if out is not image else image.copy()
