"""ADE20K-Part-234 in the OV-PARTS layout (SPEC §6.2).

::

    ADE20KPart234/
      images/{training,validation}/<ADE id>.jpg
      annotations_detectron2_part/{training,validation}/<ADE id>.png   16-bit, k in [0,233]; 65535 = ignore
      ade20k_instance_{train,val}.json   COCO-style object instances (polygons or RLE), category_id = 0..43

There are no object PNGs: object masks are decoded from the instance json (pycocotools). The part
PNG of an image is ``annotations_detectron2_part/<split folder>/<file_name with .png>`` (derived from
the folder names, not by string replacement on the whole path).

Evaluation ("val", SPEC §5.1): one sample per instance of the val json, plus one per instance of
an *unseen* object class in the train json (on the training image and part PNG); the part map is
restricted to the instance mask. Training: one record per image of the train json, the object map
painted from its instances in file order (later ones overwrite earlier ones).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetReader, SampleRef, TrainRecord, check_labels, image_size, list_files, read_json, read_label_png, read_rgb
from .coco import CocoImage, decode_mask, index_coco
from .common import IGNORE, DatasetError, EvalSample

__all__ = ["ADE20KPart234"]

PART_DIR = "annotations_detectron2_part"
SPLIT_DIRS = {"train": "training", "val": "validation"}
JSON_FILES = {"train": "ade20k_instance_train.json", "val": "ade20k_instance_val.json"}


class ADE20KPart234(DatasetReader):
    """Reader of ADE20K-Part-234 (``ade20k_part_234``)."""

    name = "ade20k_part_234"
    folder_name = "ADE20KPart234"

    def __init__(self, root: str | Path, split: str) -> None:
        super().__init__(root, split)
        self._coco_cache: dict[str, list[CocoImage]] = {}
        self._coco_stats: dict[str, dict] = {}
        self.unseen_object_ids = frozenset(self.object_classes.index(n) for n in self.info["unseen_object_classes"])

    def _looks_like_root(self, path: Path) -> bool:
        return (path / "images").is_dir() and any((path / f).is_file() for f in JSON_FILES.values())

    # ------------------------------------------------------------------ files
    def json_path(self, split: str) -> Path:
        return self.root / JSON_FILES[split]

    def image_dir(self, split: str) -> Path:
        return self.root / "images" / SPLIT_DIRS[split]

    def part_dir(self, split: str) -> Path:
        return self.root / PART_DIR / SPLIT_DIRS[split]

    def image_path(self, split: str, image: CocoImage) -> Path:
        return self.image_dir(split) / image.file_name

    def part_path(self, split: str, image: CocoImage) -> Path:
        return self.part_dir(split) / Path(image.file_name).with_suffix(".png")

    def coco(self, split: str) -> list[CocoImage]:
        """Images of ``ade20k_instance_<split>.json`` (sorted by id) with their valid instances."""
        if split not in self._coco_cache:
            path = self.json_path(split)
            if not path.is_file():
                raise DatasetError(f"{path}: missing file (object instances of the {split} split)")
            images, stats = index_coco(read_json(path), path)
            for image in images:
                for ann in image.annotations:
                    if not 0 <= ann["category_id"] < self.num_objects:
                        raise DatasetError(
                            f"{path}: annotation {ann['id']} of {image.file_name} has category_id "
                            f"{ann['category_id']} outside [0, {self.num_objects - 1}]"
                        )
            self._coco_cache[split], self._coco_stats[split] = images, stats
        return self._coco_cache[split]

    def _plan(self) -> list[tuple[str, bool]]:
        """(json split, only unseen instances) of the evaluation samples of this reader's split."""
        return [("val", False), ("train", True)] if self.split == "val" else [("train", False)]

    def _read_parts(self, split: str, image: CocoImage) -> np.ndarray:
        path = self.part_path(split, image)
        if not path.is_file():
            raise DatasetError(f"{path}: missing part annotation for image {image.file_name}")
        labels = read_label_png(path, (image.height, image.width))
        part = check_labels(labels, self.num_classes, self.ignore_label, path, "part label")
        self._check_same_size(part.shape, (image.height, image.width), path, f"{self.json_path(split).name} ({image.file_name})")
        img_path = self.image_path(split, image)
        self._check_same_size(image_size(img_path), part.shape, img_path, path)
        return part

    def _mask(self, split: str, image: CocoImage, ann: dict) -> np.ndarray:
        where = f"{self.json_path(split)}: annotation {ann['id']} of {image.file_name}"
        return decode_mask(ann["segmentation"], image.height, image.width, where)

    # ------------------------------------------------------------------ check
    def check(self, full: bool = False) -> dict:
        warnings: list[str] = []
        summary: dict = {"dataset": self.name, "split": self.split, "files_read": 0}
        for json_split, only_unseen in self._plan():
            self._require_dir(self.image_dir(json_split), f"{SPLIT_DIRS[json_split]} images")
            self._require_dir(self.part_dir(json_split), f"{SPLIT_DIRS[json_split]} part annotations")
            self._require_file(self.json_path(json_split), f"{json_split} object instances")
            images = self.coco(json_split)
            stats = self._coco_stats[json_split]
            if stats["unmatched_annotations"]:
                warnings.append(f"{self.json_path(json_split).name}: {stats['unmatched_annotations']} annotation(s) "
                                "refer to no image (ignored, as officially)")
            if stats["dropped_invalid_polygons"]:
                warnings.append(f"{self.json_path(json_split).name}: {stats['dropped_invalid_polygons']} instance(s) "
                                "without a valid polygon (dropped, as officially)")
            used = [im for im in images if not only_unseen or any(a["category_id"] in self.unseen_object_ids
                                                                    for a in im.annotations)]
            for image in used:
                if not self.image_path(json_split, image).is_file():
                    raise DatasetError(f"{self.image_path(json_split, image)}: annotation without image "
                                       f"({self.json_path(json_split).name} lists {image.file_name})")
                if not self.part_path(json_split, image).is_file():
                    raise DatasetError(f"{self.part_path(json_split, image)}: image without part annotation "
                                       f"({image.file_name})")
            listed = {Path(im.file_name).with_suffix("").as_posix() for im in images}
            on_disk = {p.stem for p in list_files(self.image_dir(json_split), [".jpg"])}
            extra = on_disk - listed
            if extra:
                warnings.append(f"{len(extra)} image(s) in {self.image_dir(json_split)} are not in "
                                f"{self.json_path(json_split).name} (unused)")
            todo = used if full else used[: self.quick_check_files]
            for image in todo:
                self._read_parts(json_split, image)
                if full:
                    for ann in image.annotations:
                        self._mask(json_split, image, ann)
            summary[f"{json_split}_images"] = len(images)
            summary[f"{json_split}_instances"] = sum(len(im.annotations) for im in images)
            summary["files_read"] += len(todo)
        summary["warnings"] = warnings
        return summary

    # ------------------------------------------------------------------ evaluation
    def eval_samples(self, gt_resize_quirk: bool = True) -> list[SampleRef]:
        refs = []
        for json_split, only_unseen in self._plan():
            for image in self.coco(json_split):
                stem = Path(image.file_name).with_suffix("").as_posix()
                for ann in image.annotations:
                    cid = ann["category_id"]
                    if only_unseen and cid not in self.unseen_object_ids:
                        continue
                    refs.append(SampleRef(
                        sample_id=f"{SPLIT_DIRS[json_split]}/{stem}/{ann['id']}",
                        image_path=self.image_path(json_split, image), label_path=self.part_path(json_split, image),
                        object_id=cid, annotations=[ann], height=image.height, width=image.width,
                        gt_resize_quirk=gt_resize_quirk,
                        meta={"image_id": image.id, "file_name": image.file_name, "json_split": json_split,
                              "annotation_id": ann["id"], "object_id": cid, "object_name": self.object_classes[cid]},
                    ))
        return refs

    def _image_of(self, ref_or_record) -> tuple[str, CocoImage]:
        json_split = ref_or_record.meta["json_split"]
        return json_split, CocoImage(ref_or_record.meta["image_id"], ref_or_record.meta["file_name"],
                                     ref_or_record.height, ref_or_record.width)

    def load_eval_sample(self, ref: SampleRef) -> EvalSample | None:
        json_split, image = self._image_of(ref)
        part = self._read_parts(json_split, image)
        (ann,) = ref.annotations
        mask = self._mask(json_split, image, ann)
        part = np.where(mask, part, IGNORE)
        return self._eval_sample(ref, part, mask, [self.object_classes[ref.object_id]], ref.gt_resize_quirk, {})

    # ------------------------------------------------------------------ training
    def train_records(self) -> list[TrainRecord]:
        records = []
        for image in self.coco(self.split):
            stem = Path(image.file_name).with_suffix("").as_posix()
            records.append(TrainRecord(
                record_id=f"{SPLIT_DIRS[self.split]}/{stem}", image_path=self.image_path(self.split, image),
                label_path=self.part_path(self.split, image), annotations=list(image.annotations),
                height=image.height, width=image.width,
                meta={"image_id": image.id, "file_name": image.file_name, "json_split": self.split},
            ))
        return records

    def load_train_sample(self, record: TrainRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        json_split, image = self._image_of(record)
        part = self._read_parts(json_split, image)
        objects = np.full(part.shape, IGNORE, dtype=np.int64)
        for ann in record.annotations:
            objects[self._mask(json_split, image, ann)] = ann["category_id"]
        return read_rgb(record.image_path), part, objects
