"""Output helpers for segmentation results: colours, overlays, heatmaps, label PNGs and COCO RLE.

Pure numpy / PIL (``pycocotools`` only for :func:`mask_to_rle`, imported on use). Shapes:
``image`` is ``[H, W, 3]`` uint8 RGB, ``labels`` is ``[H, W]`` integer class indices, ``heat`` is
``[h, w]`` float. The colour of class ``k`` is always ``palette(num_classes)[k]``, and
``palette(n)[k]`` does not depend on ``n``, so colours are stable across images and vocabularies.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import ImageError, PartCLIPSegError
from .fonts import Font as _Font
from .fonts import text_font
from .io import atomic_path

__all__ = ["LEGEND_MAX_ENTRIES", "LEGEND_MIN_AREA_PERCENT", "LEGEND_MIN_SCORE", "colormap", "heatmap", "label_png_array", "legend_entries",
           "mask_to_rle", "overlay", "palette", "read_label_png", "write_png"]

#: Most classes listed in an overlay legend; the rest are summed up in one "+N more" row.
LEGEND_MAX_ENTRIES = 30
#: A class with less than this percent of the pixels *and* a mean score under ``LEGEND_MIN_SCORE``
#: is left out of the legend (its few pixels stay coloured): a speck the model barely believes in is
#: noise, not a finding. A small confident class, or a large unconfident one, stays listed.
LEGEND_MIN_AREA_PERCENT = 0.1
LEGEND_MIN_SCORE = 0.05

_GOLDEN = 0.6180339887498949
_SATURATIONS, _VALUES = (0.85, 0.60, 0.95), (0.95, 0.78, 0.88, 0.70)
# Piecewise-linear 'jet' colormap: (position, (r, g, b)) anchors in [0, 1].
_JET = ((0.0, (0.0, 0.0, 0.5)), (0.125, (0.0, 0.0, 1.0)), (0.375, (0.0, 1.0, 1.0)),
        (0.625, (1.0, 1.0, 0.0)), (0.875, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0)))
_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (60, 60, 60)

PngData = Union[np.ndarray, Image.Image]


# ------------------------------------------------------------------------ colours
def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours, ``[n, 3]`` uint8 (golden-ratio hues, cycled saturation/value).

    Deterministic; every channel maximum is >= 178 (no near-black) and every channel minimum is
    <= 97 (no near-white).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise PartCLIPSegError(f"palette size must be a non-negative integer, got {n!r}")
    k = np.arange(int(n))
    h = (k * _GOLDEN) % 1.0
    s = np.asarray(_SATURATIONS)[k % len(_SATURATIONS)]
    v = np.asarray(_VALUES)[k % len(_VALUES)]
    sector = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.rint(np.stack([r, g, b], axis=-1).reshape(-1, 3) * 255).astype(np.uint8)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` (any shape ``S``) to 'jet' colours, ``[*S, 3]`` uint8.

    0 is dark blue ``(0, 0, 128)``, 1 is dark red ``(128, 0, 0)``; values outside are clipped.
    """
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    stops = np.array([pos for pos, _ in _JET])
    rgb = np.array([colour for _, colour in _JET])
    channels = [np.interp(x, stops, rgb[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1) * 255).astype(np.uint8)


#: ``overlay`` blends this many pixels at a time (bounded memory on large photos; same pixels).
OVERLAY_BLOCK_PIXELS = 1 << 20


# --------------------------------------------------------------------- validation
def _check_image(image: np.ndarray, alpha: float) -> np.ndarray:
    """Return ``image`` as ``[H, W, 3]`` uint8 (or raise :class:`ImageError`); check ``alpha``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"image must be an HWC uint8 RGB array [H, W, 3], got shape "
                         f"{image.shape} dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image is empty: shape {image.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise PartCLIPSegError(f"alpha must be in [0, 1], got {alpha}")
    return image


def _check_labels(labels: np.ndarray, hw: tuple[int, int] | None = None) -> np.ndarray:
    """Return ``labels`` as an integer ``[H, W]`` array (of size ``hw`` if given)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise PartCLIPSegError(f"labels must be an integer [H, W] array, got shape "
                               f"{labels.shape} dtype {labels.dtype}")
    if hw is not None and labels.shape != hw:
        raise PartCLIPSegError(f"labels shape {labels.shape} does not match the image size {hw}")
    return labels


def _check_range(labels: np.ndarray, num_classes: int, background: int) -> None:
    """Raise unless every label is in ``[0, num_classes)`` or equals ``background``."""
    if labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes):
        return
    values = labels[labels != background]
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        shown = ", ".join(str(v) for v in np.unique(bad)[:5])
        raise PartCLIPSegError(f"labels contain values outside [0, {num_classes}) that are not "
                               f"the background {background}: {shown}")


# ------------------------------------------------------------------------ overlay
def legend_entries(labels: np.ndarray, names: Sequence[str], background: int,
                   class_scores: Sequence[float] | None = None) -> list[tuple[int, str, float]]:
    """``(class index, name, percent of all pixels)`` of each class present in ``labels`` [H, W],
    largest area first (ties by index); ``background`` is never listed. With ``class_scores``
    ([len(names)] mean score per class) a class that is both ~0 in area (under
    ``LEGEND_MIN_AREA_PERCENT`` of the pixels) and ~0 in score (under ``LEGEND_MIN_SCORE``) is dropped:
    noise, not a finding."""
    labels = _check_labels(labels)
    _check_range(labels, len(names), background)
    values = labels[labels != background].astype(np.intp, copy=False)
    counts = np.bincount(values, minlength=len(names))  # [len(names)]
    present = [k for k in np.argsort(-counts, kind="stable") if counts[k] > 0]
    entries = [(int(k), str(names[k]), 100.0 * float(counts[k]) / labels.size) for k in present]
    if class_scores is None:
        return entries
    return [e for e in entries
            if not (e[2] < LEGEND_MIN_AREA_PERCENT and float(class_scores[e[0]]) < LEGEND_MIN_SCORE)]


def _boundaries(labels: np.ndarray, background: int, thickness: int) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another label, grown to ``thickness``.

    ``labels`` is ``[H, W]`` int; returns ``[H, W]`` bool."""
    edge = np.zeros(labels.shape, dtype=bool)
    diff_v, diff_h = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    for _ in range(thickness):
        edge[1:] |= diff_v
        edge[:-1] |= diff_v
        edge[:, 1:] |= diff_h
        edge[:, :-1] |= diff_h
        diff_v, diff_h = edge[1:] | edge[:-1], edge[:, 1:] | edge[:, :-1]
    return edge & (labels != background)


def _blend(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colours`` rounded, both ``[..., 3]``; uint8 result."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, names: Sequence[str], background: int, *,
            alpha: float = 0.5, legend: bool = True, title: str | None = None,
            class_scores: Sequence[float] | None = None) -> Image.Image:
    """Class colours blended on ``image`` ``[H, W, 3]`` with thin boundaries, legend on the right.

    ``labels`` ``[H, W]`` holds indices into ``names`` (or ``background``, left uncoloured). The
    legend (from :func:`legend_entries`) lists the present classes with swatch, name and share.
    Returns an RGB image ``[H', W']`` with ``W' >= W`` (``W' > W`` when ``legend``).
    """
    image = _check_image(image, alpha)
    labels = _check_labels(labels, image.shape[:2])
    colours = palette(len(names))
    entries = legend_entries(labels, names, background, class_scores)  # also validates the label range
    out = image.copy()
    rows = max(1, OVERLAY_BLOCK_PIXELS // image.shape[1])
    for top in range(0, image.shape[0], rows):  # row blocks: the float blend never holds a whole photo
        block = slice(top, top + rows)
        fg = labels[block] != background
        out[block][fg] = _blend(image[block][fg], colours[labels[block][fg]], alpha)
    edge = _boundaries(labels, background, max(1, round(max(labels.shape) / 1000)))
    out[edge] = colours[labels[edge]] // 2
    legend_rows = _legend_rows(entries, colours) if legend else []
    font, size = _font(image.shape[0], [name for _, name, _ in legend_rows] + [title])
    panel = _legend_panel(legend_rows, font, size) if legend else None
    return _compose(Image.fromarray(out), panel, title, font, size)


# ------------------------------------------------------------------------ heatmap
def heatmap(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5,
            title: str | None = None) -> Image.Image:
    """Min-max normalised ``heat`` ``[h, w]`` in 'jet' colours blended on ``image`` ``[H, W, 3]``.

    ``heat`` is resized bilinearly to ``[H, W]`` when its size differs; a constant map is all 0
    (dark blue). Returns an RGB image of size ``W x H`` (taller when ``title`` is given).
    """
    image = _check_image(image, alpha)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0 or not np.isfinite(heat).all():
        raise PartCLIPSegError(f"heat must be a non-empty finite [H, W] float array, got shape "
                               f"{heat.shape}")
    lo, hi = float(heat.min()), float(heat.max())
    norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    h, w = image.shape[:2]
    if norm.shape != (h, w):
        resized = Image.fromarray(norm.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR)
        norm = np.asarray(resized, dtype=np.float64)
    out = _blend(image, colormap(norm), alpha)
    font, size = _font(h, [title])
    return _compose(Image.fromarray(out), None, title, font, size)


# ------------------------------------------------------------------------ drawing
def _font(image_height: int, texts: Sequence[str | None] = ()) -> tuple[_Font, int]:
    """A font of ~14 px for a 512 px image (12..48 px) that draws ``texts`` (``fonts.text_font``:
    Pillow's built-in font for ASCII), and that size."""
    size = int(np.clip(round(image_height / 36), 12, 48))
    font = text_font(size, [t for t in texts if t])
    return font, (size if isinstance(font, ImageFont.FreeTypeFont) else 11)  # Pillow < 10.1: fixed 11 px


def _text_width(font: _Font, text: str) -> int:
    return _cached_text_width(font, text) if text else 0


@functools.lru_cache(maxsize=4096)
def _cached_text_width(font: _Font, text: str) -> int:  # class names recur in every legend of a job
    return int(math.ceil(font.getbbox(text)[2]))


def _text_offset(font: _Font, box_height: int) -> int:
    """y at which to draw text so that it is vertically centred in a box of ``box_height``."""
    _, top, _, bottom = font.getbbox("Ag%")
    return (box_height - (bottom - top)) // 2 - top


def _fit(font: _Font, text: str, max_width: int) -> str:
    """``text``, shortened with "..." at the end if wider than ``max_width`` pixels."""
    if _text_width(font, text) <= max_width:
        return text
    for end in range(len(text) - 1, 0, -1):
        if _text_width(font, text[:end] + "...") <= max_width:
            return text[:end] + "..."
    return "..."


def _format_share(percent: float) -> str:
    return "<0.1%" if 0 < percent < 0.05 else f"{percent:.1f}%"


def _draw_row(draw: ImageDraw.ImageDraw, font: _Font, size: int, y: int, width: int,
              colour: np.ndarray | None, name: str, share: str) -> None:
    """One legend row of height ``1.5 * size`` at ``y``: swatch, name, right-aligned share."""
    pad, row_h = size // 2 + 2, round(1.5 * size)
    if colour is not None:
        top = y + (row_h - size) // 2
        draw.rectangle([pad, top, pad + size - 1, top + size - 1],
                       fill=tuple(int(c) for c in colour), outline=_GREY)
    text_y = y + _text_offset(font, row_h)
    draw.text((2 * pad + size, text_y), name, fill=_BLACK, font=font)
    draw.text((width - pad - _text_width(font, share), text_y), share, fill=_BLACK, font=font)


def _legend_rows(entries: list[tuple[int, str, float]],
                 colours: np.ndarray) -> list[tuple[np.ndarray | None, str, str]]:
    """Legend rows ``(swatch colour [3] or None, text, share)``: the top
    :data:`LEGEND_MAX_ENTRIES` entries, then "+N more"; "no parts found" when empty."""
    rows = [(colours[k], name, _format_share(share))
            for k, name, share in entries[:LEGEND_MAX_ENTRIES]]
    rest = entries[LEGEND_MAX_ENTRIES:]
    if rest:
        rows.append((None, f"+{len(rest)} more", _format_share(sum(e[2] for e in rest))))
    return rows or [(None, "no parts found", "")]


def _legend_panel(rows: list[tuple[np.ndarray | None, str, str]], font: _Font,
                  size: int) -> Image.Image:
    """White panel with one row (swatch, name, share) per entry of ``rows``."""
    pad, row_h = size // 2 + 2, round(1.5 * size)
    rows = [(c, _fit(font, name, 16 * size), share) for c, name, share in rows]
    name_w = max(_text_width(font, name) for _, name, _ in rows)
    share_w = max(_text_width(font, share) for _, _, share in rows)
    width = 2 * pad + size + name_w + pad + share_w + pad
    panel = Image.new("RGB", (width, 2 * pad + row_h * len(rows)), _WHITE)
    draw = ImageDraw.Draw(panel)
    for i, (colour, name, share) in enumerate(rows):
        _draw_row(draw, font, size, pad + i * row_h, width, colour, name, share)
    return panel


def _compose(content: Image.Image, panel: Image.Image | None, title: str | None, font: _Font,
             size: int) -> Image.Image:
    """``content`` with ``panel`` to its right and ``title`` in a strip above, on white."""
    width = content.width + (panel.width if panel is not None else 0)
    body_h = max(content.height, panel.height if panel is not None else 0)
    pad, title_h, text = size // 2 + 2, 0, ""
    if title:
        text = _fit(font, str(title), max(width, 40 * size) - 2 * pad)
        width, title_h = max(width, _text_width(font, text) + 2 * pad), round(1.5 * size)
    canvas = Image.new("RGB", (width, title_h + body_h), _WHITE)
    canvas.paste(content, (0, title_h))
    if panel is not None:
        canvas.paste(panel, (content.width, title_h))
    if text:
        draw = ImageDraw.Draw(canvas)
        draw.text((pad, _text_offset(font, title_h)), text, fill=_BLACK, font=font)
    return canvas


# --------------------------------------------------------------------- label PNGs
def label_png_array(labels: np.ndarray, background: int, num_classes: int) -> np.ndarray:
    """Dataset-style label map ``[H, W]``: class ``k`` -> ``k``, ``background`` -> max value.

    uint8 with background 255 when ``num_classes <= 255`` (Pascal-Part), else uint16 with
    background 65535 (ADE20K-Part). Labels must be in ``[0, num_classes)`` or equal ``background``.
    """
    labels = _check_labels(labels)
    if isinstance(num_classes, bool) or not 0 <= int(num_classes) <= 65535:
        raise PartCLIPSegError(f"num_classes must be in [0, 65535], got {num_classes!r}")
    _check_range(labels, int(num_classes), background)
    dtype = np.uint8 if num_classes <= 255 else np.uint16
    return np.where(labels == background, np.iinfo(dtype).max, labels).astype(dtype)


def _to_png_image(data: PngData) -> Image.Image:
    """A PIL image for ``data``: uint8 ``[H, W]``/``[H, W, 1|3|4]`` or uint16 ``[H, W]``."""
    if isinstance(data, Image.Image):
        return data
    arr = np.asarray(data)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint16 and arr.ndim == 2:
        h, w = arr.shape
        return Image.frombytes("I;16", (w, h), np.ascontiguousarray(arr, dtype="<u2").tobytes())
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        return Image.fromarray(np.ascontiguousarray(arr))
    raise ImageError(f"cannot write PNG from an array of shape {arr.shape} dtype {arr.dtype}: "
                     f"need uint8 [H, W], [H, W, 3], [H, W, 4] or uint16 [H, W] "
                     f"(use label_png_array for label maps)")


def encode_png(data: PngData) -> bytes:
    """``data`` (array or PIL image) as PNG file bytes (deterministic for equal data)."""
    import io

    buffer = io.BytesIO()
    _to_png_image(data).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | os.PathLike, data: PngData) -> None:
    """Write ``data`` (array or PIL image) as a PNG at ``path`` atomically (temp file + rename)."""
    img = _to_png_image(data)  # validate before creating anything
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


MAX_LABEL_PIXELS = 100_000_000


def read_label_png(path: str | os.PathLike, expected_size: tuple[int, int] | None = None,
                   max_pixels: int = MAX_LABEL_PIXELS) -> np.ndarray:
    """Read a single-channel label PNG: ``[H, W]`` with the values as stored — uint8 (modes L, P:
    indices; mode 1 as 0/1) or uint16 (16-bit). The one label-PNG reader (datasets use it too).

    The size in the file's header is checked *before* the pixels are decoded: against
    ``expected_size`` ``(height, width)`` when given, and against ``max_pixels``, so a small file that
    claims a huge size is refused without allocating it.

    Raises ``ImageError`` for a missing or unreadable file, a wrong or too large size, and for a
    multi-channel image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own size checks below
            with Image.open(path) as img:
                width, height = img.size
                if expected_size is not None and (height, width) != tuple(expected_size):
                    raise ImageError(f"{os.fspath(path)}: size {width}x{height} (WxH) does not match its image "
                                     f"({expected_size[1]}x{expected_size[0]})")
                if width * height > max_pixels:
                    raise ImageError(f"{os.fspath(path)}: {width}x{height} label image is larger than "
                                     f"{max_pixels:,} pixels")
                mode, arr = img.mode, np.array(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{os.fspath(path)}: file not found") from None
    except Exception as exc:  # PIL's errors for broken / non-image files
        raise ImageError(f"{os.fspath(path)}: not a readable label image ({type(exc).__name__}: {exc})") from None
    if mode in ("L", "P", "1"):
        return arr.astype(np.uint8, copy=False)
    if mode.startswith("I;16") or (mode == "I" and arr.min(initial=0) >= 0
                                    and arr.max(initial=0) <= 65535):
        return arr.astype(np.uint16)
    raise ImageError(f"{os.fspath(path)}: not a single-channel label PNG (mode {mode}); "
                     f"expected mode L, P or I;16")


# -------------------------------------------------------------------------- COCO
def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of a binary ``[H, W]`` mask.

    Non-zero values are foreground. Needs the optional ``pycocotools`` package.
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise PartCLIPSegError("mask_to_rle needs pycocotools: pip install 'partclipseg[coco]' "
                               "(or pip install pycocotools)") from exc
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "biu":
        raise PartCLIPSegError(f"mask must be a bool or integer [H, W] array, got shape "
                               f"{mask.shape} dtype {mask.dtype}")
    rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
