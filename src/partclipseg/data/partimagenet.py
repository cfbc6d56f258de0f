"""PartImageNet after the PartCLIPSeg preprocessing (SPEC §6.3).

::

    PartImageNet/
      images/{train,val}/<wnid>_<n>.JPEG
      train.json, val.json      COCO-style part polygons; category_id in [0,39] indexes the 40
                                original part categories ("Quadruped Head", ...)

(:mod:`partclipseg.data.partimagenet_preprocess` builds this folder from the ``PartImageNet_Seg``
release without touching the source.) The image-level PNGs are not used.

Labels are built from the json: the object of an image is named by the WNID prefix of its file name
(``object_wnids`` of the vocab JSON); each part polygon is painted with the index of
``"<object>'s <part name after the first space, lower-cased>"`` in the 147-class list, and the object
map with the object id, in file order. Evaluation: one sample per val image with all its polygons, no
per-object masking, and no GT resize round trip (the official mapper discards its augmentation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetReader, SampleRef, TrainRecord, image_size, list_files, read_json, read_rgb
from .coco import CocoImage, decode_mask, index_coco
from .common import IGNORE, DatasetError, EvalSample

__all__ = ["PartImageNet", "wnid_of"]

IMAGE_EXT = ".JPEG"


def wnid_of(file_name: str) -> str:
    """The WNID prefix of an ImageNet file name (``n01440764_10029.JPEG`` -> ``n01440764``)."""
    return Path(file_name).name.split("_")[0]


class PartImageNet(DatasetReader):
    """Reader of PartImageNet with the PartCLIPSeg object-specific labels (``partimagenet``)."""

    name = "partimagenet"
    folder_name = "PartImageNet"

    def __init__(self, root: str | Path, split: str) -> None:
        super().__init__(root, split)
        self.wnid_to_object = {wnid: name for name, wnid in self.info["object_wnids"].items()}
        categories = sorted(self.info["supercategory_part_categories"], key=lambda c: c["id"])
        self.part_names = [c["name"].split(" ", 1)[1].lower() for c in categories]
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.image_dir = self.root / "images" / split
        self.json_path = self.root / f"{split}.json"
        self._coco_cache: list[CocoImage] | None = None
        self._coco_stats: dict = {}

    def _looks_like_root(self, path: Path) -> bool:
        return (path / "images").is_dir() and any((path / f"{s}.json").is_file() for s in ("train", "val"))

    # ------------------------------------------------------------------ labels
    def object_id_of(self, file_name: str, where: str = "") -> int:
        wnid = wnid_of(file_name)
        name = self.wnid_to_object.get(wnid)
        if name is None:
            raise DatasetError(f"{where or file_name}: WNID {wnid!r} is not one of the {self.num_objects} PartImageNet "
                               "objects (run the preprocessing, which drops other classes)")
        return self.object_classes.index(name)

    def part_label(self, object_id: int, category_id: int, where: str) -> int:
        """Object-specific label of a part annotation of an image of ``object_id``."""
        if not 0 <= category_id < len(self.part_names):
            raise DatasetError(f"{where}: category_id {category_id} outside [0, {len(self.part_names) - 1}]")
        name = f"{self.object_classes[object_id]}'s {self.part_names[category_id]}"
        label = self._class_index.get(name)
        if label is None:
            raise DatasetError(f"{where}: part category {category_id} gives {name!r}, which is not a PartImageNet class")
        return label

    def coco(self) -> list[CocoImage]:
        """Images of ``<split>.json`` (sorted by id), validated: known WNID, valid part categories."""
        if self._coco_cache is None:
            if not self.json_path.is_file():
                raise DatasetError(f"{self.json_path}: missing file (part annotations of the {self.split} split)")
            images, self._coco_stats = index_coco(read_json(self.json_path), self.json_path)
            for image in images:
                obj = self.object_id_of(image.file_name, f"{self.json_path}: image {image.file_name}")
                for ann in image.annotations:
                    self.part_label(obj, ann["category_id"], f"{self.json_path}: annotation {ann['id']} of {image.file_name}")
            self._coco_cache = images
        return self._coco_cache

    def image_path(self, image: CocoImage) -> Path:
        return self.image_dir / image.file_name

    def _labels(self, image: CocoImage, annotations: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        obj = self.object_id_of(image.file_name)
        part = np.full((image.height, image.width), IGNORE, dtype=np.int64)
        objects = np.full((image.height, image.width), IGNORE, dtype=np.int64)
        for ann in annotations:
            where = f"{self.json_path}: annotation {ann['id']} of {image.file_name}"
            mask = decode_mask(ann["segmentation"], image.height, image.width, where)
            part[mask] = self.part_label(obj, ann["category_id"], where)
            objects[mask] = obj
        return part, objects

    def _check_image(self, image: CocoImage) -> None:
        path = self.image_path(image)
        self._check_same_size(image_size(path), (image.height, image.width), path,
                              f"{self.json_path.name} ({image.file_name})")

    # ------------------------------------------------------------------ check
    def check(self, full: bool = False) -> dict:
        self._require_dir(self.image_dir, f"{self.split} images")
        self._require_file(self.json_path, f"{self.split} part annotations")
        images = self.coco()
        for image in images:
            if not self.image_path(image).is_file():
                raise DatasetError(f"{self.image_path(image)}: annotation without image "
                                   f"({self.json_path.name} lists {image.file_name})")
        warnings = []
        listed = {im.file_name for im in images}
        extra = [p for p in list_files(self.image_dir, [IMAGE_EXT]) if p.name not in listed]
        if extra:
            warnings.append(f"{len(extra)} image(s) in {self.image_dir} are not in {self.json_path.name} (unused)")
        if self._coco_stats.get("unmatched_annotations"):
            warnings.append(f"{self.json_path.name}: {self._coco_stats['unmatched_annotations']} annotation(s) "
                            "refer to no image (ignored, as officially)")
        if self._coco_stats.get("dropped_invalid_polygons"):
            warnings.append(f"{self.json_path.name}: {self._coco_stats['dropped_invalid_polygons']} annotation(s) "
                            "without a valid polygon (dropped, as officially)")
        todo = images if full else images[: self.quick_check_files]
        for image in todo:
            self._check_image(image)
            if full:
                self._labels(image, image.annotations)
        return {"dataset": self.name, "split": self.split, "images": len(images),
                "annotations": sum(len(im.annotations) for im in images), "files_read": len(todo),
                "warnings": warnings}

    # ------------------------------------------------------------------ evaluation
    def eval_samples(self, gt_resize_quirk: bool = True) -> list[SampleRef]:
        refs = []
        for image in self.coco():
            obj = self.object_id_of(image.file_name)
            stem = Path(image.file_name).with_suffix("").as_posix()
            refs.append(SampleRef(
                sample_id=f"{self.split}/{stem}", image_path=self.image_path(image), object_id=obj,
                annotations=list(image.annotations), height=image.height, width=image.width,
                gt_resize_quirk=gt_resize_quirk,
                meta={"image_id": image.id, "file_name": image.file_name, "object_id": obj,
                      "object_name": self.object_classes[obj]},
            ))
        return refs

    def _image_of(self, ref_or_record) -> CocoImage:
        return CocoImage(ref_or_record.meta["image_id"], ref_or_record.meta["file_name"],
                         ref_or_record.height, ref_or_record.width)

    def load_eval_sample(self, ref: SampleRef) -> EvalSample | None:
        image = self._image_of(ref)
        self._check_image(image)
        part, objects = self._labels(image, ref.annotations)
        # the official PartImageNet mapper discards its resize, so there is no GT round trip here
        return self._eval_sample(ref, part, objects != IGNORE, [self.object_classes[ref.object_id]], False, {})

    # ------------------------------------------------------------------ training
    def train_records(self) -> list[TrainRecord]:
        return [
            TrainRecord(record_id=f"{self.split}/{Path(im.file_name).with_suffix('').as_posix()}",
                        image_path=self.image_path(im), annotations=list(im.annotations), height=im.height,
                        width=im.width, meta={"image_id": im.id, "file_name": im.file_name})
            for im in self.coco()
        ]

    def load_train_sample(self, record: TrainRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = self._image_of(record)
        self._check_image(image)
        part, objects = self._labels(image, record.annotations)
        return read_rgb(record.image_path), part, objects
