"""Build the PartCLIPSeg PartImageNet layout from the original ``PartImageNet_Seg`` release (SPEC §6.3),
without modifying the source.

Source (as released, and as the official ``datasets/partimagenet_preprocess.py`` expects it)::

    PartImageNet/
      images/{train,val,test}/<wnid>_<n>.JPEG
      annotations/{train,val,test}/<wnid>_<n>.png
      annotations/train/train.json, annotations/val/val.json     (also accepted: annotations/<split>.json
                                                                   or <split>.json at the top)

Output (a new folder; the reader :class:`~partclipseg.data.partimagenet.PartImageNet` reads it)::

    <out>/images/{train,val}/...     hard links to (or copies of) the kept images
    <out>/annotations/{train,val}/*.png   likewise (not used by PartCLIPSeg, kept for completeness)
    <out>/train.json, <out>/val.json

Filtering rules (the official ones): a file is kept in ``train`` if its WNID is one of the 25 *seen*
objects, in ``val`` if it is one of the 40 objects; the json ``images`` are filtered to the kept
files that exist, and ``annotations`` to those images. Differences from the official script:

* the source is never modified: the official script deletes files and moves the jsons in place;
* the WNIDs come from the vocab JSON's ``object_wnids`` (the official script derives them from
  ImageNet's ``LOC_synset_mapping.txt``; the 40 names map to the same 40 WNIDs);
* the json ``categories`` are kept as released (the 40 part categories that ``category_id``
  indexes); the official script overwrites them with an unused 143-entry object-specific list;
* ``test`` is not copied (the official script leaves it in place; nothing uses it).

Hard links share the file data with the source: do not edit the output images in place.

Command line: ``python -m partclipseg.data.partimagenet_preprocess SOURCE OUT [--copy]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_text, json_text
from ..vocabulary import load_benchmark_info
from .base import list_files, read_json
from .common import DatasetError
from .partimagenet import wnid_of

__all__ = ["find_source_json", "main", "preprocess_partimagenet"]

SPLITS = ("train", "val")


def find_source_json(source: Path, split: str) -> Path:
    """The part-annotation json of ``split`` in the original release."""
    candidates = [source / "annotations" / split / f"{split}.json", source / "annotations" / f"{split}.json",
                  source / f"{split}.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"{candidates[0]}: missing file (PartImageNet {split} part annotations; also looked for "
                       f"{candidates[1]} and {candidates[2]})")


def _place(src: Path, dst: Path, link: bool, counts: dict) -> None:
    if link:
        try:
            os.link(src, dst)
            counts["linked"] += 1
            return
        except OSError:
            counts["copied_instead_of_linked"] += 1
    shutil.copy2(src, dst)
    counts["copied"] += 1


def _is_inside(path: Path, other: Path) -> bool:
    try:
        path.relative_to(other)
        return True
    except ValueError:
        return False


def preprocess_partimagenet(source: str | Path, out: str | Path, link: bool = True) -> dict:
    """Write the filtered PartImageNet layout for PartCLIPSeg into the new folder ``out``.

    Args:
        source: the extracted ``PartImageNet_Seg`` release (``images/``, ``annotations/``).
        out: a folder that does not exist yet (or is empty).
        link: hard-link the images and PNGs (falling back to copying across file systems);
            ``False`` copies them.

    Returns:
        counts per split (kept / dropped images, PNGs, json images and annotations) and how files
        were placed.
    """
    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.is_dir():
        raise DatasetError(f"{source}: source folder not found")
    if source == out or _is_inside(source, out) or _is_inside(out, source):
        raise DatasetError(f"{out}: the output folder must not be the source folder, inside it or contain it "
                           f"({source}): the source stays untouched")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: output folder exists and is not empty (choose a new folder)")
    jsons = {split: find_source_json(source, split) for split in SPLITS}
    for split in SPLITS:
        if not (source / "images" / split).is_dir():
            raise DatasetError(f"{source / 'images' / split}: missing folder ({split} images of PartImageNet_Seg)")
    data = {split: read_json(jsons[split]) for split in SPLITS}
    for split in SPLITS:
        if not isinstance(data[split], dict) or not isinstance(data[split].get("images"), list) or not isinstance(
            data[split].get("annotations"), list
        ):
            raise DatasetError(f"{jsons[split]}: not a COCO-style json (need 'images' and 'annotations' lists)")

    info = load_benchmark_info("partimagenet")
    wnids = info["object_wnids"]
    valid = {
        "train": {wnids[name] for name in info["seen_object_classes"]},
        "val": set(wnids.values()),
    }
    placed = {"linked": 0, "copied": 0, "copied_instead_of_linked": 0}
    result: dict = {"source": str(source), "out": str(out), "link": link}
    for split in SPLITS:
        counts = {}
        image_out = out / "images" / split
        image_out.mkdir(parents=True, exist_ok=True)
        kept_names = set()
        dropped = 0
        for path in list_files(source / "images" / split, [""]):
            if wnid_of(path.name) in valid[split]:
                _place(path, image_out / path.name, link, placed)
                kept_names.add(path.name)
            else:
                dropped += 1
        counts["images"], counts["images_dropped"] = len(kept_names), dropped
        png_out = out / "annotations" / split
        png_out.mkdir(parents=True, exist_ok=True)
        kept_png = dropped_png = 0
        for path in list_files(source / "annotations" / split, [".png"]):
            if wnid_of(path.name) in valid[split]:
                _place(path, png_out / path.name, link, placed)
                kept_png += 1
            else:
                dropped_png += 1
        counts["annotation_pngs"], counts["annotation_pngs_dropped"] = kept_png, dropped_png

        coco = dict(data[split])
        images = []
        for k, entry in enumerate(coco["images"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or "id" not in entry:
                raise DatasetError(f"{jsons[split]}: images[{k}] needs 'id' and 'file_name'")
            name = entry["file_name"]
            if wnid_of(name) in valid[split] and (image_out / name).is_file():
                images.append(entry)
        image_ids = {entry["id"] for entry in images}
        annotations = [a for a in coco["annotations"] if isinstance(a, dict) and a.get("image_id") in image_ids]
        counts["json_images"], counts["json_images_dropped"] = len(images), len(coco["images"]) - len(images)
        counts["json_annotations"] = len(annotations)
        counts["json_annotations_dropped"] = len(coco["annotations"]) - len(annotations)
        coco["images"], coco["annotations"] = images, annotations
        coco["partclipseg_preprocess"] = {
            "split": split,
            "kept": "seen objects" if split == "train" else "the 40 PartImageNet objects",
        }
        atomic_write_text(out / f"{split}.json", json_text(coco))
        result[split] = counts
    result["files"] = placed
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m partclipseg.data.partimagenet_preprocess",
        description="Build the PartCLIPSeg PartImageNet layout from PartImageNet_Seg into a new folder "
                    "(the source is not modified).",
    )
    parser.add_argument("source", type=Path, help="the extracted PartImageNet_Seg folder")
    parser.add_argument("out", type=Path, help="a new (or empty) output folder")
    parser.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
    args = parser.parse_args(argv)
    try:
        counts = preprocess_partimagenet(args.source, args.out, link=not args.copy)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json_text(counts, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
