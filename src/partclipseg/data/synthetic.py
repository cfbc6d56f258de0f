"""Tiny synthetic datasets in the exact on-disk layout of each benchmark (for tests and smoke runs).

Each generator writes a handful of small images (sizes cycle through :data:`SIZES`) with simple
shapes: an object is an ellipse or a rectangle, its parts are horizontal bands of it (top 30%: the
first part, 30-85%: the second, whose left quarter is the third), and its bottom 15% is left
unlabelled (the ignore value inside the object). Labels use the real class indices of the vocab
JSONs. The scenes are fixed (see ``PASCAL_*_SCENES``, ``ADE_*_SCENES``, ``PARTIMAGENET_*_SCENES``);
``seed`` only jitters positions by a pixel or two and the image noise. Scenes cycle when more
images than scenes are asked for.

* :func:`make_pascal_part`: Pascal-Part-116 (8-bit PNGs, 255 = background, object PNGs,
  ``val_obj_label_count.json``; a macOS ``._*`` file to be skipped).
* :func:`make_ade20k_part`: ADE20K-Part-234 (16-bit part PNGs, 65535 = ignore; instance jsons with
  polygons, a compressed RLE, an uncompressed RLE, and an invalid polygon that the loader drops).
* :func:`make_partimagenet_original`: the original ``PartImageNet_Seg`` layout, including files the
  preprocessing must drop (unseen objects in train, WNIDs outside the 40 objects, a json entry
  without image, a ``test`` split).
* :func:`make_partimagenet`: the preprocessed PartImageNet layout (original -> preprocessing).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..vocabulary import load_benchmark_info
from ..io import json_text

__all__ = [
    "ADE_TRAIN_SCENES",
    "ADE_VAL_SCENES",
    "PARTIMAGENET_TRAIN_SCENES",
    "PARTIMAGENET_VAL_SCENES",
    "PASCAL_TRAIN_SCENES",
    "PASCAL_VAL_SCENES",
    "SIZES",
    "make_ade20k_part",
    "make_partimagenet",
    "make_partimagenet_original",
    "make_pascal_part",
]

#: image sizes (height, width), cycled over the images of a split
SIZES: tuple[tuple[int, int], ...] = ((60, 80), (75, 100), (90, 90), (75, 50))

# a scene = list of objects (name, shape, box as fractions (y0, x0, y1, x1)[, encoding for ADE])
_LEFT = (0.1, 0.05, 0.9, 0.45)
_RIGHT = (0.15, 0.55, 0.9, 0.95)
_CENTRE = (0.1, 0.15, 0.9, 0.85)

#: Pascal val scenes: dog (unseen) + chair (no parts); cat (seen); boat (no parts); person + bird
PASCAL_VAL_SCENES = (
    (("dog", "ellipse", _LEFT), ("chair", "rect", _RIGHT)),
    (("cat", "ellipse", _CENTRE),),
    (("boat", "rect", _CENTRE),),
    (("person", "rect", _LEFT), ("bird", "ellipse", _RIGHT)),
)
PASCAL_TRAIN_SCENES = (
    (("horse", "ellipse", _LEFT), ("dog", "rect", _RIGHT)),
    (("aeroplane", "ellipse", _CENTRE),),
    (("sofa", "rect", _LEFT), ("person", "rect", _RIGHT)),
    (("car", "rect", _CENTRE),),
)
#: ADE val scenes: person (polygon) + bench (unseen, compressed RLE); car; stool (unseen) + a lamp whose
#: only polygon is invalid (dropped by the loader); table (uncompressed RLE)
ADE_VAL_SCENES = (
    (("person", "ellipse", _LEFT, "polygon"), ("bench", "rect", _RIGHT, "rle")),
    (("car", "rect", _CENTRE, "polygon"),),
    (("stool", "ellipse", _LEFT, "polygon"), ("lamp", "rect", _RIGHT, "invalid")),
    (("table", "rect", _CENTRE, "rle_uncompressed"),),
)
#: ADE train scenes: chair + desk (unseen); bed; oven (unseen, RLE) + person; sofa
ADE_TRAIN_SCENES = (
    (("chair", "rect", _LEFT, "polygon"), ("desk", "rect", _RIGHT, "polygon")),
    (("bed", "ellipse", _CENTRE, "polygon"),),
    (("oven", "ellipse", _LEFT, "rle"), ("person", "rect", _RIGHT, "polygon")),
    (("sofa", "rect", _CENTRE, "polygon"),),
)
#: PartImageNet scenes: one object per image (the WNID's object)
PARTIMAGENET_TRAIN_SCENES = ("tiger", "goldfish", "ambulance", "warplane")  # all seen
PARTIMAGENET_VAL_SCENES = ("tiger", "jeep", "goldfish", "airliner")  # seen, unseen, seen, unseen
#: extra files of the original release that the preprocessing must drop
PARTIMAGENET_DROPPED = {"train": ("impala", "n01530575"), "val": ("n01518878",)}

# the parts drawn for an object (top band, middle band, left of the middle band); others: the first 3
_PASCAL_PARTS = {
    "dog": ("head", "torso", "leg"), "cat": ("head", "torso", "tail"), "person": ("head", "torso", "leg"),
    "bird": ("head", "torso", "wing"), "horse": ("head", "torso", "leg"), "aeroplane": ("body", "wing", "tail"),
    "car": ("window", "side", "wheel"),
}
_ADE_PARTS = {
    "person": ("head", "torso", "leg"), "car": ("window", "door", "wheel"),
    "bench": ("back", "seat", "leg"), "stool": ("seat", "leg"), "table": ("top", "leg", "drawer"),
    "chair": ("back", "seat", "leg"), "desk": ("top", "drawer", "leg"), "bed": ("headboard", "side rail", "leg"),
    "oven": ("top", "door", "button panel"), "sofa": ("back", "seat cushion", "arm"), "lamp": ("shade", "base"),
}


# ----------------------------------------------------------------------------- drawing helpers
def _size(k: int) -> tuple[int, int]:
    return SIZES[k % len(SIZES)]


def _box(frac: tuple[float, float, float, float], h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    y0, x0, y1, x1 = frac
    jy, jx = (int(v) for v in rng.integers(-1, 2, size=2))
    return (max(0, int(y0 * h) + jy), max(0, int(x0 * w) + jx), min(h, int(y1 * h) + jy), min(w, int(x1 * w) + jx))


def _shape_mask(shape: str, box: tuple[int, int, int, int], h: int, w: int) -> np.ndarray:
    y0, x0, y1, x1 = box
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "ellipse":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=1)
    else:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=1)
    return np.asarray(canvas) > 0


def _shape_polygon(shape: str, box: tuple[int, int, int, int]) -> list[float]:
    y0, x0, y1, x1 = box
    if shape == "rect":
        return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
    cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return [round(float(v), 2) for a in angles for v in (cx + rx * np.cos(a), cy + ry * np.sin(a))]


def _part_regions(mask: np.ndarray, box: tuple[int, int, int, int], n_parts: int) -> list[np.ndarray]:
    """Sub-regions of ``mask``: top 30%, 30-85% (minus its left quarter), that left quarter; the bottom
    15% stays unlabelled."""
    y0, x0, y1, x1 = box
    rows = np.arange(mask.shape[0])[:, None]
    cols = np.arange(mask.shape[1])[None, :]
    a = y0 + 0.3 * (y1 - y0)
    b = y0 + 0.85 * (y1 - y0)
    c = x0 + 0.25 * (x1 - x0)
    top = mask & (rows < a)
    middle = mask & (rows >= a) & (rows < b)
    left = middle & (cols < c)
    regions = [top, middle & ~left, left] if n_parts >= 3 else [top, middle]
    return regions[:n_parts]


def _parts_of(obj: str, classes: list[str], choice: dict) -> list[int]:
    names = choice.get(obj)
    if names is None:
        names = tuple(c.split("'s ", 1)[1] for c in classes if c.split("'s", 1)[0] == obj)[:3]
    return [classes.index(f"{obj}'s {p}") for p in names]


def _write_image(path: Path, labels: np.ndarray, rng: np.random.Generator) -> None:
    """A JPEG whose colours follow ``labels`` (any int map), plus noise."""
    palette = np.random.default_rng(12345).integers(40, 256, size=(70000, 3))
    rgb = np.where(labels[..., None] >= 0, palette[np.clip(labels, 0, None) % len(palette)], 20)
    rgb = np.clip(rgb + rng.integers(-12, 13, size=rgb.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=92)


def _write_png(path: Path, labels: np.ndarray, dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(dtype)).save(path)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(data))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# ----------------------------------------------------------------------------- Pascal-Part-116
def make_pascal_part(root: str | Path, n_train: int = 4, n_val: int = 4, seed: int = 0) -> Path:
    """Write a tiny Pascal-Part-116 (OV-PARTS layout) under ``root``; returns ``root``."""
    root = Path(root)
    info = load_benchmark_info("pascal_part_116")
    classes, objects = info["object_specific_classes"], info["object_classes"]
    no_parts = set(info["object_classes_without_part_classes"])
    rng = np.random.default_rng(seed)
    ignore = info["ignore_label"]
    for split, n, scenes in (("train", n_train, PASCAL_TRAIN_SCENES), ("val", n_val, PASCAL_VAL_SCENES)):
        obj_counts, part_counts = {}, {}
        for k in range(n):
            h, w = _size(k)
            stem = f"2008_{k + 1:06d}" if split == "train" else f"2009_{k + 1:06d}"
            part = np.full((h, w), ignore, dtype=np.int64)
            obj = np.full((h, w), ignore, dtype=np.int64)
            for name, shape, frac in scenes[k % len(scenes)]:
                box = _box(frac, h, w, rng)
                mask = _shape_mask(shape, box, h, w)
                obj[mask] = objects.index(name)
                if name not in no_parts:
                    ids = _parts_of(name, classes, _PASCAL_PARTS)
                    for label, region in zip(ids, _part_regions(mask, box, len(ids))):
                        part[region] = label
            _write_image(root / "images" / split / f"{stem}.jpg", np.where(part != ignore, part, obj + 200), rng)
            _write_png(root / "annotations_detectron2_part" / split / f"{stem}.png", part, np.uint8)
            _write_png(root / "annotations_detectron2_obj" / split / f"{stem}.png", obj, np.uint8)
            obj_counts[f"{stem}.png"] = [int(v) for v in np.unique(obj) if v != ignore]
            part_counts[f"{stem}.png"] = [int(v) for v in np.unique(part) if v != ignore]
        if split == "val":
            _write_json(root / "annotations_detectron2_part" / "val_obj_label_count.json", obj_counts)
            _write_json(root / "annotations_detectron2_part" / "val_part_label_count.json", part_counts)
            # macOS resource fork shipped in the tarball; readers must skip it
            (root / "images" / "val" / "._2009_000001.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    return root


# ----------------------------------------------------------------------------- ADE20K-Part-234
def make_ade20k_part(root: str | Path, n_train: int = 4, n_val: int = 4, seed: int = 0) -> Path:
    """Write a tiny ADE20K-Part-234 (OV-PARTS layout) under ``root``; returns ``root``."""
    from .coco import decode_mask, require_pycocotools

    mask_utils = require_pycocotools()
    root = Path(root)
    info = load_benchmark_info("ade20k_part_234")
    classes, objects = info["object_specific_classes"], info["object_classes"]
    ignore = info["ignore_label"]
    rng = np.random.default_rng(seed)
    for split, folder, n, scenes in (("train", "training", n_train, ADE_TRAIN_SCENES),
                                     ("val", "validation", n_val, ADE_VAL_SCENES)):
        images, annotations = [], []
        for k in range(n):
            h, w = _size(k)
            file_name = f"ADE_{split}_{k + 1:08d}.jpg"
            part = np.full((h, w), ignore, dtype=np.int64)
            obj = np.full((h, w), -1, dtype=np.int64)
            images.append({"id": k + 1, "file_name": file_name, "height": h, "width": w})
            for name, shape, frac, encoding in scenes[k % len(scenes)]:
                box = _box(frac, h, w, rng)
                polygon = _shape_polygon(shape, box)
                if encoding == "invalid":
                    segmentation = [polygon[:4]]  # fewer than 3 points: the loader drops the instance
                    mask = np.zeros((h, w), dtype=bool)
                elif encoding == "polygon":
                    segmentation = [polygon]
                    mask = decode_mask(segmentation, h, w, file_name)
                else:
                    mask = _shape_mask(shape, box, h, w)
                    if encoding == "rle":
                        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                        segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
                    else:
                        segmentation = _uncompressed_rle(mask)
                obj[mask] = objects.index(name)
                ids = _parts_of(name, classes, _ADE_PARTS)
                for label, region in zip(ids, _part_regions(mask, box, len(ids))):
                    part[region] = label
                annotations.append({
                    "id": len(annotations) + 1, "image_id": k + 1, "category_id": objects.index(name),
                    "segmentation": segmentation, "area": float(mask.sum()), "bbox": _bbox_of(mask), "iscrowd": 0,
                })
            _write_image(root / "images" / folder / file_name, np.where(part != ignore, part, obj + 300), rng)
            _write_png(root / "annotations_detectron2_part" / folder / file_name.replace(".jpg", ".png"), part, np.uint16)
        categories = [{"id": i, "name": name} for i, name in enumerate(objects)]
        _write_json(root / f"ade20k_instance_{split}.json",
                    {"images": images, "annotations": annotations, "categories": categories})
    return root


# ----------------------------------------------------------------------------- PartImageNet
def _partimagenet_parts(obj: str, info: dict) -> list[tuple[int, str]]:
    """(original part category id, part name) of an object's super-category."""
    superclass = next(s for s, members in info["superclass_to_objects"].items() if obj in members)
    return [(c["id"], c["name"].split(" ", 1)[1]) for c in info["supercategory_part_categories"]
            if c["supercategory"] == superclass]


def _partimagenet_polygons(box: tuple[int, int, int, int], n: int) -> list[list[float]]:
    """``n`` rectangles tiling the box: a big one (the body), then small ones at its edges (overlapping it)."""
    y0, x0, y1, x1 = box
    hh, ww = y1 - y0, x1 - x0
    rects = [
        (y0 + 0.25 * hh, x0 + 0.2 * ww, y0 + 0.8 * hh, x0 + 0.8 * ww),
        (y0, x0, y0 + 0.35 * hh, x0 + 0.35 * ww),
        (y0 + 0.75 * hh, x0 + 0.2 * ww, y1, x0 + 0.5 * ww),
        (y0 + 0.3 * hh, x0 + 0.75 * ww, y0 + 0.6 * hh, x1),
        (y0, x0 + 0.5 * ww, y0 + 0.3 * hh, x1),
    ]
    return [[round(v, 1) for v in (rx0, ry0, rx1, ry0, rx1, ry1, rx0, ry1)] for ry0, rx0, ry1, rx1 in rects[:n]]


def make_partimagenet_original(root: str | Path, n_train: int = 4, n_val: int = 4, seed: int = 0) -> Path:
    """Write a tiny original ``PartImageNet_Seg`` release under ``root``; returns ``root``.

    Besides ``n_train`` / ``n_val`` images of the 40 objects (train: seen objects only) it writes files
    that the preprocessing drops (:data:`PARTIMAGENET_DROPPED`), a val json entry without an image file,
    and a one-image ``test`` split."""
    from .coco import decode_mask

    root = Path(root)
    info = load_benchmark_info("partimagenet")
    wnids = info["object_wnids"]
    categories = info["supercategory_part_categories"]
    rng = np.random.default_rng(seed)
    for split, n, scenes in (("train", n_train, PARTIMAGENET_TRAIN_SCENES), ("val", n_val, PARTIMAGENET_VAL_SCENES),
                             ("test", 1, ("tiger",))):
        entries = [scenes[k % len(scenes)] for k in range(n)] + list(PARTIMAGENET_DROPPED.get(split, ()))
        images, annotations = [], []
        for k, entry in enumerate(entries):
            h, w = _size(k)
            foreign = entry not in wnids  # a WNID outside the 40 objects: drawn like a tiger
            wnid = entry if foreign else wnids[entry]
            obj = "tiger" if foreign else entry
            file_name = f"{wnid}_{1000 + k}.JPEG"
            png = np.full((h, w), 40, dtype=np.int64)  # PartImageNet PNGs: 0..39 parts, 40 background
            box = _box(_CENTRE, h, w, rng)
            parts = _partimagenet_parts(obj, info)
            images.append({"id": k + 1, "file_name": file_name, "height": h, "width": w})
            for (cat_id, _), polygon in zip(parts, _partimagenet_polygons(box, len(parts))):
                mask = decode_mask([polygon], h, w, file_name)
                png[mask] = cat_id
                annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": cat_id,
                                    "segmentation": [polygon], "area": float(mask.sum()), "bbox": _bbox_of(mask),
                                    "iscrowd": 0})
            _write_image(root / "images" / split / file_name, np.where(png != 40, png, -1), rng)
            _write_png(root / "annotations" / split / file_name.replace(".JPEG", ".png"), png, np.uint8)
        if split == "val":  # a json entry whose image is not in the release: dropped by the preprocessing
            images.append({"id": len(images) + 1, "file_name": f"{wnids['tiger']}_9999.JPEG", "height": 60, "width": 80})
            annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": 1,
                                "segmentation": [[5.0, 5.0, 50.0, 5.0, 50.0, 40.0, 5.0, 40.0]], "area": 1575.0,
                                "bbox": [5.0, 5.0, 45.0, 35.0], "iscrowd": 0})
        _write_json(root / "annotations" / split / f"{split}.json",
                    {"images": images, "annotations": annotations, "categories": categories})
    return root


def make_partimagenet(root: str | Path, n_train: int = 4, n_val: int = 4, seed: int = 0) -> Path:
    """Write a tiny preprocessed PartImageNet (the layout the reader expects) under ``root``.

    ``root`` must not exist or be empty. Built by running the preprocessing (copying) on a temporary
    original release made by :func:`make_partimagenet_original`."""
    from .partimagenet_preprocess import preprocess_partimagenet

    with tempfile.TemporaryDirectory(prefix="partimagenet_seg_") as tmp:
        make_partimagenet_original(Path(tmp) / "PartImageNet_Seg", n_train=n_train, n_val=n_val, seed=seed)
        preprocess_partimagenet(Path(tmp) / "PartImageNet_Seg", root, link=False)
    return Path(root)
