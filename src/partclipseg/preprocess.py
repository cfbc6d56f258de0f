"""Image loading and the CLIPSeg image processor (SPEC §2.1), outside the model.

Two steps:

* :func:`load_image` turns a file, PIL image, numpy array or torch tensor into an HWC uint8 RGB
  numpy array, with clear :class:`~partclipseg.errors.ImageError` messages for bad input.
* :func:`preprocess` reproduces HF ``ViTImageProcessor`` as configured by
  ``CIDAS/clipseg-rd64-refined``: bilinear resize of the uint8 image to ``size x size`` exactly as
  the authors' Pillow 9.5 computes it (:mod:`partclipseg.resample`, independent of the installed
  Pillow; aspect ratio not kept; rounded to uint8), ``x * (1/255)`` in float64 cast to float32, then
  ``(x - mean) / std`` in float32 with the ImageNet constants. This order of float operations
  reproduces the official ``pixel_values`` bit-exactly.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageError
from .resample import resize_bilinear

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSource",
    "load_image",
    "preprocess",
]

#: ImageNet normalisation constants used by CLIPSeg's processor (not the CLIP constants).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Default limit on width * height of an image file (guards against decompression bombs).
DEFAULT_MAX_PIXELS = 100_000_000

ImageSource = Union[str, os.PathLike, BinaryIO, Image.Image, np.ndarray, torch.Tensor]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_CHANNEL_COUNTS = (1, 3, 4)


# --------------------------------------------------------------------- load_image
def load_image(
    source: ImageSource,
    *,
    exif_transpose: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Load an image as an HWC ``uint8`` RGB numpy array (a new array, C-contiguous).

    Accepted sources:

    * a path (``str`` / ``os.PathLike``) or a binary file object: decoded fully with PIL (so
      truncated files fail here, not later); for multi-frame files the first frame is used;
    * a ``PIL.Image.Image``;
    * a numpy array or torch tensor (moved to the CPU): ``HW``, ``HWC`` or ``CHW`` with 1, 3 or
      4 channels; ``CHW`` is recognised only when the first dimension is 1/3/4 and the last is
      not. dtype ``uint8`` (used as is) or floating point with values in ``[0, 1]`` (scaled by
      255 and rounded).

    Conversions (files and PIL images):

    * EXIF orientation is applied when ``exif_transpose`` is true (the default). The official
      inference code does *not* do this; pass ``exif_transpose=False`` to reproduce it exactly.
      A broken EXIF block gives a warning and the image is used as stored.
    * Alpha is **dropped**, not composited: RGBA/LA/PA and palette images with transparency
      become RGB via ``Image.convert("RGB")`` (a 4-channel array keeps its first 3 channels).
    * Grayscale (``L``, ``1``, 1-channel arrays) is replicated to 3 channels.
    * CMYK, YCbCr, palette, ... are converted with PIL's ``convert("RGB")``.
    * 16-bit grayscale (``I;16*``; ``I`` is treated as 16-bit data, clipped to [0, 65535]) keeps
      the high byte (``>> 8``), i.e. the full 16-bit range maps to 0..255. 16-bit RGB PNGs are
      already reduced to 8 bits by PIL the same way.
    * ``F`` (32-bit float) images must hold values in [0, 1], like float arrays.

    Args:
        source: the image.
        exif_transpose: apply the EXIF orientation tag (files and PIL images only).
        max_pixels: refuse files/PIL images with more than this many pixels (``None``: no limit
            of ours). PIL's own decompression-bomb check (``2 * Image.MAX_IMAGE_PIXELS``) still
            applies when a file is opened and is reported as the same error.

    Raises:
        ImageError: file not found, not an image, corrupt or truncated data, zero-sized image,
            too many pixels, unsupported mode, or an array of the wrong dtype / shape / range.
            The message names the file (or "array"/"tensor") and the problem.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source), exif_transpose=exif_transpose, max_pixels=max_pixels)
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "PIL image"
        return _pil_to_rgb(source, str(name), exif_transpose=exif_transpose, max_pixels=max_pixels)
    if isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
            tensor = tensor.float()  # e.g. bfloat16, which numpy cannot hold
        return _array_to_rgb(tensor.numpy(), "tensor")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "array")
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "") or "stream")
        return _open_and_convert(source, name, exif_transpose=exif_transpose, max_pixels=max_pixels)
    raise ImageError(
        f"unsupported image source of type {type(source).__name__}; "
        "expected a path, file object, PIL image, numpy array or torch tensor"
    )


def _load_file(path: Path, *, exif_transpose: bool, max_pixels: int | None) -> np.ndarray:
    """Open and decode an image file, turning every failure into an ImageError naming the file."""
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    return _open_and_convert(path, str(path), exif_transpose=exif_transpose, max_pixels=max_pixels)


def _open_and_convert(fp: Any, name: str, *, exif_transpose: bool, max_pixels: int | None) -> np.ndarray:
    """``Image.open`` with PIL's exceptions and bomb warnings mapped to ImageError."""
    with warnings.catch_warnings():
        # our own max_pixels check replaces PIL's warning (below 2 * MAX_IMAGE_PIXELS)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
        except Image.DecompressionBombError as exc:
            raise ImageError(
                f"{name}: image is too large to load safely ({exc}); limit max_pixels={max_pixels}"
            ) from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file, or an unsupported/corrupt format") from None
        except Exception as exc:  # decoders raise many types (OSError, SyntaxError, ValueError, ...)
            raise ImageError(f"{name}: cannot open image ({type(exc).__name__}: {exc})") from None
        with img:
            return _pil_to_rgb(img, name, exif_transpose=exif_transpose, max_pixels=max_pixels)


def _pil_to_rgb(img: Image.Image, name: str, *, exif_transpose: bool, max_pixels: int | None) -> np.ndarray:
    """Check size, decode fully, apply EXIF orientation and convert a PIL image to HWC uint8 RGB."""
    width, height = img.size
    if width == 0 or height == 0:
        raise ImageError(f"{name}: zero-sized image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: image is too large ({width}x{height} = {width * height} pixels > max_pixels={max_pixels})"
        )
    try:
        img.load()  # force the full decode so that truncated/corrupt data fails here
    except Exception as exc:
        raise ImageError(
            f"{name}: cannot decode image data, the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from None
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:  # a broken EXIF block should not make the image unusable
            warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({exc})", stacklevel=3)
    return _pil_mode_to_rgb(img, name)


def _pil_mode_to_rgb(img: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded PIL image of any supported mode to HWC uint8 RGB."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(img).astype(np.int64)
        gray = (np.clip(gray, 0, 65535) >> 8).astype(np.uint8)
        return _gray_to_rgb(gray)
    if mode == "F":
        return _array_to_rgb(np.asarray(img, dtype=np.float32), name)
    if mode != "RGB":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "palette images with transparency ..."
                img = img.convert("RGB")
        except Exception as exc:
            raise ImageError(f"{name}: cannot convert image mode {mode!r} to RGB ({exc})") from None
    return np.array(img, dtype=np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Replicate an HW array to HWC with 3 identical channels."""
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """Validate an HW/HWC/CHW uint8-or-float array and return HWC uint8 RGB (a new array)."""
    if array.ndim == 2:
        hwc = array[:, :, None]
    elif array.ndim == 3:
        if array.shape[-1] in _CHANNEL_COUNTS:
            hwc = array
        elif array.shape[0] in _CHANNEL_COUNTS:
            hwc = array.transpose(1, 2, 0)
        else:
            raise ImageError(
                f"{name}: cannot find the channel axis in shape {tuple(array.shape)}; "
                "expected HWC or CHW with 1, 3 or 4 channels"
            )
    else:
        raise ImageError(
            f"{name}: expected 2 (HW) or 3 (HWC/CHW) dimensions, got shape {tuple(array.shape)}"
            + ("; pass a batch as a list of images" if array.ndim == 4 else "")
        )
    if hwc.shape[0] == 0 or hwc.shape[1] == 0:
        raise ImageError(f"{name}: zero-sized image (shape {tuple(array.shape)})")

    if array.dtype == np.uint8:
        data = hwc
    elif np.issubdtype(array.dtype, np.floating):
        values = hwc.astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageError(f"{name}: float image contains NaN or infinity")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"{name}: float image values must lie in [0, 1], got [{low:g}, {high:g}] "
                "(convert 0..255 data to uint8 first)"
            )
        data = np.round(values * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"{name}: unsupported dtype {array.dtype}; expected uint8, or float with values in [0, 1]"
        )

    channels = data.shape[2]
    if channels == 1:
        return _gray_to_rgb(data[:, :, 0])
    return np.array(data[:, :, :3], dtype=np.uint8, order="C")  # 4 channels: alpha dropped


# --------------------------------------------------------------------- preprocess
def _as_list(images: Any) -> list[Any]:
    """One image, a list/tuple of images, or a 4-D batch array/tensor -> list of images."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def _channel_constants(values: Sequence[float], what: str) -> np.ndarray:
    """Validate mean/std: 3 finite numbers (std also > 0), as a float32 array."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise ConfigError(f"{what} must be 3 finite numbers, got {values!r}")
    if what == "std" and (arr <= 0).any():
        raise ConfigError(f"std must be positive, got {values!r}")
    return arr


def preprocess(
    images: ImageSource | Sequence[ImageSource],
    size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channel_order: str = "RGB",
) -> torch.Tensor:
    """The CLIPSeg image processor: images -> ``pixel_values`` [B, 3, size, size] float32 (CPU).

    Each image (anything :func:`load_image` accepts, normally an HWC uint8 RGB array; a list or
    a 4-D batch gives several) is, independently:

    1. if ``channel_order == "BGR"``, reversed along the channel axis first. This reproduces the
       official *training* pipeline, where detectron2 reads BGR and the processor treats it as
       RGB; inference in the official code uses RGB (the default);
    2. resized to exactly ``size x size`` with Pillow 9.5's bilinear filter on the uint8 image
       (:func:`partclipseg.resample.resize_bilinear`: aspect ratio not kept, antialiased when
       downscaling, rounded to uint8; the same bytes whatever Pillow is installed);
    3. rescaled: ``float32(float64(x) * (1/255))``;
    4. normalised in float32: ``(x - mean) / std`` (ImageNet constants by default);
    5. transposed to CHW.

    These float operations are those of HF ``ViTImageProcessor`` and reproduce the official
    ``pixel_values`` exactly. The official model uses ``size=352``.

    Raises:
        ImageError: an image is unusable (see :func:`load_image`) or no image was given.
        ConfigError: bad ``size``, ``mean``, ``std`` or ``channel_order``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    order = channel_order.upper() if isinstance(channel_order, str) else channel_order
    if order not in ("RGB", "BGR"):
        raise ConfigError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    mean_arr = _channel_constants(mean, "mean")
    std_arr = _channel_constants(std, "std")

    items = _as_list(images)
    if not items:
        raise ImageError("no images given to preprocess")

    out = np.empty((len(items), 3, size, size), dtype=np.float32)
    for i, item in enumerate(items):
        rgb = load_image(item)
        if order == "BGR":
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        resized = resize_bilinear(rgb, size, size)
        scaled = (resized.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
        normalised = (scaled - mean_arr) / std_arr
        out[i] = normalised.transpose(2, 0, 1)
    return torch.from_numpy(out)
