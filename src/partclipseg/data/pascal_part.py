"""Pascal-Part-116 in the OV-PARTS layout (SPEC §6.1).

::

    PascalPart116/
      images/{train,val}/<voc_id>.jpg
      annotations_detectron2_part/{train,val}/<voc_id>.png   8-bit, k in [0,115]; 255 = bg / unlabeled
      annotations_detectron2_obj/{train,val}/<voc_id>.png    8-bit, j in [0,19];  255 = background
      annotations_detectron2_part/val_obj_label_count.json   {"<voc_id>.png": [object ids != 255]}

Images and part PNGs are paired by file stem. The object PNG of a part PNG is found by folder name
(``annotations_detectron2_obj/<split>/<same name>``), not by the official whole-path ``"part" ->
"obj"`` string replacement. Evaluation: one sample per (image, object class in its object PNG),
the part map restricted to that object (SPEC §5.1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetReader, SampleRef, TrainRecord, check_labels, image_size, list_files, read_json, read_label_png, read_rgb
from .common import IGNORE, DatasetError, EvalSample

__all__ = ["PascalPart116"]

PART_DIR = "annotations_detectron2_part"
OBJ_DIR = "annotations_detectron2_obj"
IMAGE_EXT = ".jpg"
LABEL_EXT = ".png"


class PascalPart116(DatasetReader):
    """Reader of Pascal-Part-116 (``pascal_part_116``)."""

    name = "pascal_part_116"
    folder_name = "PascalPart116"

    def __init__(self, root: str | Path, split: str) -> None:
        super().__init__(root, split)
        self.image_dir = self.root / "images" / split
        self.part_dir = self.root / PART_DIR / split
        self.obj_dir = self.root / OBJ_DIR / split
        # label-count file of the official obj-condition registration: gt_root + "_obj_label_count.json"
        self.count_file = self.root / PART_DIR / f"{split}_obj_label_count.json"
        self._pairs_cache: tuple[list[str], list[str], list[str]] | None = None
        self._counts_cache: dict[str, list[int]] | None = None

    def _looks_like_root(self, path: Path) -> bool:
        return (path / "images").is_dir() and (path / PART_DIR).is_dir()

    # ------------------------------------------------------------------ files
    def image_path(self, stem: str) -> Path:
        return self.image_dir / f"{stem}{IMAGE_EXT}"

    def part_path(self, stem: str) -> Path:
        return self.part_dir / f"{stem}{LABEL_EXT}"

    def object_path(self, stem: str) -> Path:
        return self.obj_dir / f"{stem}{LABEL_EXT}"

    def _pairs(self) -> tuple[list[str], list[str], list[str]]:
        """(stems with image and part PNG, stems with only an image, stems with only a part PNG)."""
        if self._pairs_cache is None:
            images = {p.name[: -len(IMAGE_EXT)] for p in list_files(self.image_dir, [IMAGE_EXT])}
            parts = {p.name[: -len(LABEL_EXT)] for p in list_files(self.part_dir, [LABEL_EXT])}
            self._pairs_cache = (sorted(images & parts), sorted(images - parts), sorted(parts - images))
        return self._pairs_cache

    def _read_counts_file(self) -> dict[str, list[int]]:
        data = read_json(self.count_file)
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v) for v in data.values()
        ):
            raise DatasetError(f"{self.count_file}: expected {{\"<id>.png\": [object ids]}}")
        for key, values in data.items():
            bad = [v for v in values if not 0 <= v < self.num_objects]
            if bad:
                raise DatasetError(f"{self.count_file}: entry {key!r} has object ids outside [0, {self.num_objects - 1}]: {bad}")
        return data

    def _object_ids(self, stem: str, counts: dict[str, list[int]] | None) -> list[int]:
        if counts is not None:
            name = f"{stem}{LABEL_EXT}"
            if name not in counts:
                raise DatasetError(f"{self.count_file}: no entry for {name} (regenerate the label-count file)")
            return sorted(set(counts[name]))
        obj = self._read_objects(stem)
        return sorted(int(v) for v in np.unique(obj[obj != IGNORE]))

    def object_counts(self) -> dict[str, list[int]]:
        """``{"<id>.png": [object ids]}`` from ``<split>_obj_label_count.json`` if present, else by scanning."""
        if self._counts_cache is None:
            stems = self._pairs()[0]
            counts = self._read_counts_file() if self.count_file.is_file() else None
            self._counts_cache = {f"{s}{LABEL_EXT}": self._object_ids(s, counts) for s in stems}
        return self._counts_cache

    def _read_parts(self, stem: str) -> np.ndarray:
        path = self.part_path(stem)
        labels = read_label_png(path, image_size(self.image_path(stem)))
        return check_labels(labels, self.num_classes, self.ignore_label, path, "part label")

    def _read_objects(self, stem: str) -> np.ndarray:
        path = self.object_path(stem)
        if not path.is_file():
            raise DatasetError(f"{path}: missing object annotation for {self.part_path(stem).name}")
        labels = read_label_png(path, image_size(self.image_path(stem)))
        return check_labels(labels, self.num_objects, self.ignore_label, path, "object label")

    def _read_pair(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        part, obj = self._read_parts(stem), self._read_objects(stem)
        self._check_same_size(obj.shape, part.shape, self.object_path(stem), self.part_path(stem))
        self._check_same_size(image_size(self.image_path(stem)), part.shape, self.image_path(stem), self.part_path(stem))
        return part, obj

    # ------------------------------------------------------------------ check
    def _other_benchmark(self) -> str | None:
        """A message when the folder holds another benchmark in this layout, else None: the toy world
        (``python -m partclipseg.data.toyworld``) writes its captions beside the Pascal-Part-116 folders."""
        captions = self.root / "captions"
        if captions.is_dir() and any(captions.glob("*.json")):
            return (f"{self.root} holds the toy world (it has captions/*.json), not {self.name}: "
                    f"use the dataset name toy_world")
        return None

    def check(self, full: bool = False) -> dict:
        other = self._other_benchmark()
        if other is not None:
            raise DatasetError(other)
        for folder, what in ((self.image_dir, "images"), (self.part_dir, "part annotations"),
                             (self.obj_dir, "object annotations")):
            self._require_dir(folder, what)
        stems, image_only, part_only = self._pairs()
        if image_only:
            raise DatasetError(
                f"{self.image_path(image_only[0])}: image without part annotation (expected "
                f"{self.part_path(image_only[0])}); {len(image_only)} image(s) in {self.image_dir} lack one"
            )
        if part_only:
            raise DatasetError(
                f"{self.part_path(part_only[0])}: annotation without image (expected {self.image_path(part_only[0])}); "
                f"{len(part_only)} part PNG(s) in {self.part_dir} lack one"
            )
        if not stems:
            raise DatasetError(f"{self.image_dir}: no {IMAGE_EXT} images with part annotations")
        missing_obj = [s for s in stems if not self.object_path(s).is_file()]
        if missing_obj:
            raise DatasetError(
                f"{self.object_path(missing_obj[0])}: missing object annotation for {self.part_path(missing_obj[0]).name}; "
                f"{len(missing_obj)} object PNG(s) missing in {self.obj_dir}"
            )
        warnings = []
        extra_obj = {p.name[: -len(LABEL_EXT)] for p in list_files(self.obj_dir, [LABEL_EXT])} - set(stems)
        if extra_obj:
            warnings.append(f"{len(extra_obj)} object PNG(s) in {self.obj_dir} without part PNG (unused)")
        counts = None
        if self.count_file.is_file():
            counts = self._read_counts_file()
            absent = [s for s in stems if f"{s}{LABEL_EXT}" not in counts]
            if absent:
                raise DatasetError(f"{self.count_file}: no entry for {absent[0]}{LABEL_EXT} ({len(absent)} missing)")
        elif self.split == "val":
            warnings.append(f"{self.count_file} not found: object classes per image are found by scanning the object PNGs")
        todo = stems if full else stems[: self.quick_check_files]
        for stem in todo:
            _, obj = self._read_pair(stem)
            if counts is not None:
                present = set(int(v) for v in np.unique(obj[obj != IGNORE]))
                listed = set(counts[f"{stem}{LABEL_EXT}"])
                if present != listed:
                    raise DatasetError(
                        f"{self.count_file}: entry {stem}{LABEL_EXT} lists objects {sorted(listed)} but "
                        f"{self.object_path(stem)} holds {sorted(present)} (stale label-count file)"
                    )
        return {"dataset": self.name, "split": self.split, "images": len(stems), "files_read": len(todo),
                "label_count_file": str(self.count_file) if counts is not None else None, "warnings": warnings}

    # ------------------------------------------------------------------ evaluation
    def eval_samples(self, gt_resize_quirk: bool = True) -> list[SampleRef]:
        counts = self.object_counts()
        refs = []
        for stem in self._pairs()[0]:
            for obj_id in counts[f"{stem}{LABEL_EXT}"]:
                refs.append(SampleRef(
                    sample_id=f"{self.split}/{stem}/{obj_id}", image_path=self.image_path(stem),
                    label_path=self.part_path(stem), object_path=self.object_path(stem), object_id=obj_id,
                    gt_resize_quirk=gt_resize_quirk,
                    meta={"image_id": stem, "object_id": obj_id, "object_name": self.object_classes[obj_id]},
                ))
        return refs

    def load_eval_sample(self, ref: SampleRef) -> EvalSample | None:
        stem = ref.meta["image_id"]
        part, obj = self._read_pair(stem)
        mask = obj == ref.object_id
        part = np.where(mask, part, IGNORE)
        return self._eval_sample(ref, part, mask, [self.object_classes[ref.object_id]], ref.gt_resize_quirk, {})

    # ------------------------------------------------------------------ training
    def train_records(self) -> list[TrainRecord]:
        return [
            TrainRecord(record_id=f"{self.split}/{stem}", image_path=self.image_path(stem),
                        label_path=self.part_path(stem), object_path=self.object_path(stem), meta={"image_id": stem})
            for stem in self._pairs()[0]
        ]

    def load_train_sample(self, record: TrainRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stem = record.meta["image_id"]
        part, obj = self._read_pair(stem)
        image = read_rgb(self.image_path(stem))
        return image, part, obj
