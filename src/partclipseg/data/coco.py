"""COCO-style annotation jsons (ADE20K-Part-234 instances, PartImageNet part polygons).

:func:`index_coco` reads a json the way detectron2's ``load_coco_json`` does for these datasets:
images sorted by id, each with its annotations in file order; polygons with fewer than 3 points
(or an odd number of coordinates) are dropped, and an instance left without a valid polygon is
dropped; uncompressed RLE is accepted. Unlike the official loader it validates everything and
raises :class:`DatasetError` naming the json and the offending entry.

Masks are decoded with pycocotools (imported lazily), so they are pixel-identical to the official
mappers' masks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from .common import DatasetError

__all__ = ["CocoImage", "decode_mask", "index_coco", "require_pycocotools"]


def require_pycocotools():
    """``pycocotools.mask``, or an ImportError that says how to install it."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading COCO-style annotations (ADE20K-Part-234 instances, PartImageNet polygons) needs "
            "pycocotools: pip install pycocotools  (or: pip install 'partclipseg[coco]')"
        ) from exc
    return mask_utils


@dataclass
class CocoImage:
    """One ``images`` entry of a COCO json with its (valid) annotations in file order."""

    id: Any
    file_name: str
    height: int
    width: int
    annotations: list[dict] = field(default_factory=list)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _normalise_segmentation(segm: Any, where: str) -> Any:
    """The segmentation to keep, ``None`` if the official loader would drop the instance."""
    if isinstance(segm, dict):
        counts, size = segm.get("counts"), segm.get("size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
            raise DatasetError(f"{where}: RLE segmentation needs 'size' = [height, width], got {size!r}")
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts):
                raise DatasetError(f"{where}: uncompressed RLE 'counts' must be non-negative integers")
        elif not isinstance(counts, (str, bytes)):
            raise DatasetError(f"{where}: RLE segmentation needs 'counts' (a string or a list of integers)")
        return segm
    if isinstance(segm, list) and segm:
        polygons = []
        for poly in segm:
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                raise DatasetError(f"{where}: a polygon must be a flat list of numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2 == 0 and len(poly) >= 6:
                polygons.append([float(v) for v in poly])
        return polygons or None
    # the official loader keeps such an instance without a mask and its mapper then crashes
    raise DatasetError(f"{where}: missing or empty 'segmentation' (need polygons or RLE)")


def index_coco(data: Any, path: Path) -> tuple[list[CocoImage], dict]:
    """Validate a parsed COCO json; return its images (sorted by id, with annotations) and counts."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise DatasetError(f"{path}: not a COCO-style json (need top-level 'images' and 'annotations' lists)")
    images: dict[Any, CocoImage] = {}
    for k, entry in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where} is not an object")
        missing = [key for key in ("id", "file_name", "height", "width") if key not in entry]
        if missing:
            raise DatasetError(f"{where} lacks {', '.join(missing)}")
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            raise DatasetError(f"{where}: 'file_name' must be a non-empty string")
        if not (_is_int(entry["height"]) and _is_int(entry["width"]) and entry["height"] > 0 and entry["width"] > 0):
            raise DatasetError(f"{where} ({entry['file_name']}): 'height'/'width' must be positive integers")
        if entry["id"] in images:
            raise DatasetError(f"{where} ({entry['file_name']}): duplicate image id {entry['id']!r}")
        images[entry["id"]] = CocoImage(entry["id"], entry["file_name"], int(entry["height"]), int(entry["width"]))
    seen_ids: set = set()
    stats = {"annotations": len(data["annotations"]), "unmatched_annotations": 0, "dropped_invalid_polygons": 0}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is not an object")
        if "id" in ann:
            where += f" (id {ann['id']})"
            if ann["id"] in seen_ids:
                raise DatasetError(f"{where}: duplicate annotation id")
            seen_ids.add(ann["id"])
        for key in ("image_id", "category_id"):
            if key not in ann:
                raise DatasetError(f"{where} lacks '{key}'")
        if not _is_int(ann["category_id"]):
            raise DatasetError(f"{where}: 'category_id' must be an integer, got {ann['category_id']!r}")
        if ann.get("ignore", 0):
            raise DatasetError(f"{where}: 'ignore' annotations are not supported (as in the official loader)")
        image = images.get(ann["image_id"])
        if image is None:
            stats["unmatched_annotations"] += 1  # the official loader silently drops these
            continue
        segm = _normalise_segmentation(ann.get("segmentation"), f"{where} of {image.file_name}")
        if segm is None:
            stats["dropped_invalid_polygons"] += 1
            continue
        if isinstance(segm, dict) and tuple(segm["size"]) != (image.height, image.width):
            raise DatasetError(
                f"{where} of {image.file_name}: RLE size {list(segm['size'])} does not match the image "
                f"size {[image.height, image.width]} (height, width)"
            )
        kept = dict(ann)
        kept["segmentation"] = segm
        kept.setdefault("id", k)
        image.annotations.append(kept)
    ordered = [images[key] for key in sorted(images, key=_sort_key)]
    stats["images"] = len(ordered)
    return ordered, stats


def _sort_key(value: Any) -> tuple:
    # ids are integers in practice; fall back to a total order over mixed types
    return (0, value, "") if _is_int(value) else (1, 0, str(value))


def decode_mask(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """Binary ``[height, width]`` mask of a (normalised) segmentation, as the official mappers decode it."""
    mask_utils = require_pycocotools()
    try:
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, *segm["size"])
        else:
            rle = segm
        with warnings.catch_warnings():
            # pycocotools' Cython decoder trips numpy 2's __array__(copy=...) deprecation; harmless
            warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
            mask = mask_utils.decode(rle)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{where}: cannot decode segmentation ({type(exc).__name__}: {exc})") from None
    if mask.shape != (height, width):
        raise DatasetError(f"{where}: decoded mask has size {mask.shape}, expected {(height, width)}")
    return mask.astype(bool)
