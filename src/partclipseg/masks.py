"""Object masks given by the user (``--object-mask``, ``Predictor.predict(object_mask=...)``).

A pixel belongs to the object where **any** of its values is non-zero: the grey value, any colour
channel, or the alpha channel. So a white-on-black mask, a red-on-black mask and an opaque shape on a
transparent background all work. (A mask with an opaque black background is therefore all object:
save masks with a black or fully transparent background.) Palette images count their palette
colours (and transparency), not the palette index.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError

MAX_MASK_PIXELS = 100_000_000


def mask_from_array(array) -> np.ndarray:
    """[H, W] or [H, W, C] values -> bool [H, W]: True where any channel is non-zero."""
    array = np.asarray(array)
    if array.ndim == 3:
        return (array != 0).any(axis=2)
    if array.ndim == 2:
        return array != 0
    raise ImageError(f"an object mask must be [H, W] or [H, W, C], got shape {array.shape}")


def load_object_mask(path: str | os.PathLike, max_pixels: int = MAX_MASK_PIXELS) -> np.ndarray:
    """Read a mask image as bool [H, W] (raw pixel frame, no EXIF rotation); see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: object mask file not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(f"{path}: object mask is too large ({width}x{height} > {max_pixels:,} pixels)")
                if img.mode == "P":
                    img = img.convert("RGBA")
                elif img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
                    img = img.convert("RGBA")
                img.load()
                array = np.asarray(img)
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types
            raise ImageError(f"{path}: not a readable mask image ({type(exc).__name__}: {exc})") from None
    return mask_from_array(array)
