"""The reader API shared by the benchmark readers, and small file helpers they use.

A reader is built from ``(root, split)`` and offers:

* :meth:`DatasetReader.check` — validate the folder, raising :class:`DatasetError` that names the
  missing or malformed file (``full=True`` reads every annotation);
* :meth:`DatasetReader.eval_samples` / :meth:`DatasetReader.load_eval_sample` — the evaluation
  samples of SPEC §5.1 as light :class:`SampleRef` descriptors, loaded one at a time into
  :class:`~partclipseg.data.common.EvalSample` (or ``None`` when the sample has no labelled part pixel);
* :meth:`DatasetReader.train_records` / :meth:`DatasetReader.load_train_sample` — the training
  records (no augmentation, no seen remap) as ``(image, part_labels, object_labels)``.

Everything is in the raw pixel frame of the files: images are read without applying EXIF
orientation, so that they line up with the label maps (and with the official inference, which
reads images with plain PIL).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageError
from ..preprocess import load_image
from ..viz import read_label_png as read_label_image
from ..vocabulary import load_benchmark_info
from .common import IGNORE, DatasetError, EvalSample, gt_round_trip

__all__ = [
    "DatasetReader",
    "SampleRef",
    "TrainRecord",
    "check_labels",
    "image_size",
    "list_files",
    "read_json",
    "read_label_png",
    "read_rgb",
]

SPLITS = ("train", "val")


@dataclass
class SampleRef:
    """A light descriptor of one evaluation sample (no pixels); :meth:`DatasetReader.load_eval_sample`
    turns it into an :class:`EvalSample`.

    * ``sample_id``: unique and stable: ``"<split folder>/<image stem>/<object id>"`` (Pascal),
      ``"<split folder>/<image stem>/<annotation id>"`` (ADE), ``"<split>/<image stem>"`` (PartImageNet).
    * ``image_path``: the image; ``label_path``: the part PNG (``None`` for PartImageNet);
      ``object_path``: the object PNG (Pascal only).
    * ``object_id``: the sample's object class (Pascal, ADE) or the image's object (PartImageNet).
    * ``annotations``: the COCO annotations of the sample (ADE: the one instance; PartImageNet: all
      part polygons of the image); empty for Pascal.
    * ``height`` / ``width``: the size recorded in the annotation json (``None`` for Pascal).
    * ``gt_resize_quirk``: apply the official GT resize round trip when loading (SPEC §5.2).
    """

    sample_id: str
    image_path: Path
    label_path: Path | None = None
    object_path: Path | None = None
    object_id: int | None = None
    annotations: list = field(default_factory=list, repr=False)
    height: int | None = None
    width: int | None = None
    gt_resize_quirk: bool = True
    meta: dict = field(default_factory=dict)


@dataclass
class TrainRecord:
    """One training image (no pixels): paths, and for json datasets its annotations."""

    record_id: str
    image_path: Path
    label_path: Path | None = None
    object_path: Path | None = None
    annotations: list = field(default_factory=list, repr=False)
    height: int | None = None
    width: int | None = None
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- file helpers
def list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files in ``folder`` whose name ends with one of ``suffixes`` (case-sensitive, as the official
    loaders), sorted by name. Hidden files, including macOS ``._*`` resource forks, are skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".") and p.name.endswith(tuple(suffixes)) and p.is_file()),
        key=lambda p: p.name,
    )


def read_json(path: Path) -> Any:
    """Parse a json file; a missing or unreadable file raises :class:`DatasetError` naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable json ({type(exc).__name__}: {exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (raw pixel frame, no EXIF rotation)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return height, width


def read_rgb(path: Path) -> np.ndarray:
    """HWC uint8 RGB image, raw pixel frame (no EXIF rotation, so it lines up with the labels)."""
    try:
        return load_image(path, exif_transpose=False)
    except ImageError as exc:
        raise DatasetError(str(exc)) from None


def read_label_png(path: Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """A single-channel label PNG (8-bit, 16-bit or palette indices) as an int64 array, values as stored
    (``viz.read_label_png``, with its errors as ``DatasetError``). With ``expected_size`` (height, width)
    the size in the file's header is checked before any pixel is decoded."""
    try:
        return read_label_image(path, expected_size=expected_size).astype(np.int64)
    except ImageError as exc:
        raise DatasetError(str(exc)) from None


def check_labels(labels: np.ndarray, num_classes: int, ignore_value: int, path: Path | str, what: str) -> np.ndarray:
    """Validate stored label values (``[0, num_classes)`` or ``ignore_value``) and map the ignore value
    to :data:`IGNORE`. Returns a new int64 array."""
    labels = np.asarray(labels, dtype=np.int64)
    bad = (labels != ignore_value) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = np.unique(labels[bad])
        shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
        raise DatasetError(
            f"{path}: {what} values outside [0, {num_classes - 1}] other than the ignore value {ignore_value}: {shown}"
        )
    out = labels.copy()
    out[labels == ignore_value] = IGNORE
    return out


# ----------------------------------------------------------------------------- the reader base
class DatasetReader:
    """Base class of the benchmark readers (see the module docstring for the API)."""

    #: benchmark key (``vocabulary.BENCHMARKS``) and the folder name of the published dataset
    name: ClassVar[str] = ""
    folder_name: ClassVar[str] = ""
    #: number of files read in full by ``check(full=False)``
    quick_check_files: ClassVar[int] = 3

    def __init__(self, root: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
        root = Path(root)
        # convenience: accept the parent folder (e.g. ``datasets/``) that holds the dataset folder
        if self.folder_name and not self._looks_like_root(root) and self._looks_like_root(root / self.folder_name):
            root = root / self.folder_name
        self.root = root
        self.split = split
        self.info = load_benchmark_info(self.name)
        self.ignore_label: int = int(self.info["ignore_label"])
        self.classes: list[str] = list(self.info["object_specific_classes"])
        self.object_classes: list[str] = list(self.info["object_classes"])
        self.num_classes = len(self.classes)
        self.num_objects = len(self.object_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r})"

    # -- to override
    def _looks_like_root(self, path: Path) -> bool:
        return (path / "images").is_dir()

    def check(self, full: bool = False) -> dict:
        """Validate the folder; raise :class:`DatasetError` naming the first problem found.

        ``full=False`` checks the structure and reads a few files; ``full=True`` reads every
        annotation. Returns a summary (counts, and ``warnings`` for harmless oddities)."""
        raise NotImplementedError

    def eval_samples(self, gt_resize_quirk: bool = True) -> list[SampleRef]:
        raise NotImplementedError

    def load_eval_sample(self, ref: SampleRef) -> EvalSample | None:
        raise NotImplementedError

    def train_records(self) -> list[TrainRecord]:
        raise NotImplementedError

    def load_train_sample(self, record: TrainRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- shared helpers
    def _require_dir(self, path: Path, what: str) -> None:
        if not path.is_dir():
            raise DatasetError(f"{path}: missing folder ({what}) in the {self.info['dataset']} dataset at {self.root}")

    def _require_file(self, path: Path, what: str) -> None:
        if not path.is_file():
            raise DatasetError(f"{path}: missing file ({what}) in the {self.info['dataset']} dataset at {self.root}")

    def _check_same_size(self, shape: tuple[int, int], other: tuple[int, int], path: Path, other_path: Path | str) -> None:
        if tuple(shape) != tuple(other):
            raise DatasetError(
                f"{path}: size {shape[1]}x{shape[0]} (WxH) does not match {other_path} ({other[1]}x{other[0]})"
            )

    def _eval_sample(self, ref: SampleRef, part: np.ndarray, object_mask: np.ndarray, object_names: list[str],
                     round_trip: bool, meta: dict) -> EvalSample | None:
        """Build the EvalSample (optionally with the GT round trip); None without a labelled pixel."""
        if round_trip:
            part = gt_round_trip(part)
            object_mask = gt_round_trip(object_mask.astype(np.int64)) > 0
        if not (part != IGNORE).any():
            return None
        meta = {"dataset": self.name, "split": self.split, "gt_resize_quirk_applied": round_trip, **ref.meta, **meta}
        return EvalSample(sample_id=ref.sample_id, image_path=ref.image_path, part_labels=part,
                          object_names=object_names, object_mask=object_mask, meta=meta)
