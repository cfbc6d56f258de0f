"""What every dataset reader produces, and the ground-truth helpers they share.

Label conventions in memory (whatever the files use): object-specific part labels and object labels
are ``int64`` arrays with ``IGNORE = -1`` for unlabelled / background / ignored pixels. Part labels
index the dataset's full ``object_specific_classes`` list (the test label space); object labels
index its ``object_classes`` list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PartCLIPSegError

IGNORE = -1


class DatasetError(PartCLIPSegError):
    """A dataset folder is missing files or holds malformed annotations (the message says which)."""


@dataclass
class EvalSample:
    """One evaluation sample (SPEC §5.1).

    * ``sample_id``: unique and stable across runs (used for resume and sharding).
    * ``image_path``: the image to segment (read by the Predictor, RGB).
    * ``part_labels`` [H, W] int64: ground truth in the full label space, ``IGNORE`` elsewhere, at the
      image size (after the official GT resize round trip when that switch is on).
    * ``object_names``: the ground-truth object classes of the sample (for Oracle-Obj).
    * ``object_mask`` [H, W] bool: the sample's object region.
    """

    sample_id: str
    image_path: Path
    part_labels: np.ndarray
    object_names: list[str]
    object_mask: np.ndarray
    meta: dict = field(default_factory=dict)


def resize_shortest_edge_shape(height: int, width: int, short: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` output size: short side -> ``short``, long side <= ``max_size``,
    each side rounded as ``int(x + 0.5)``."""
    scale = short / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def nearest_resize(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map -> ``size`` with torch's legacy ``nearest`` (floor of the scaled index), as the official
    mappers and evaluator do (on float arrays)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    tensor = torch.from_numpy(labels.astype(np.float64))[None, None]
    return F.interpolate(tensor, size=size, mode="nearest")[0, 0].numpy().astype(labels.dtype)


def gt_round_trip(labels: np.ndarray) -> np.ndarray:
    """The official evaluation GT (SPEC §5.2): nearest-resize to the 800-short-side training size and
    back to the original size. For typical images this shifts most rows/columns by one pixel."""
    h, w = labels.shape
    return nearest_resize(nearest_resize(labels, resize_shortest_edge_shape(h, w)), (h, w))
