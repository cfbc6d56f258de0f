"""Per-pixel confusion of a model's object head on a toy-world (or any Pascal-Part-layout) split.

Pred-All labels a pixel with a part of the object that the object head picks there, so the object
head bounds Pred-All: this shows, for every ground-truth object, where its pixels go (each object of
the model vocabulary, or background), and each object's IoU. Per image it also records each object's
share of pixels given to that object (``per_image``; an object counts as *found* from 50%), the
smallest object's share of the image and the largest overlap of two objects' boxes (intersection over
the smaller box), and sums up how many one-object and several-object images have every object found
(``found``). Uses only the public Predictor API (``predict(..., protocol="pred-all").object_labels``).

    python scripts/object_confusion.py --root runs/default_model/test/ToyWorld \\
        --out benchmarks/results/default_model_run/object_confusion.json        # the built-in model
    python scripts/object_confusion.py --model runs/x/best --root DIR --dataset toy_world
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def confusion(model: str | None, root: Path, dataset: str, split: str, limit: int | None) -> dict:
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary, load_benchmark_info

    info = load_benchmark_info(dataset)
    vocab = Vocabulary.parse(info["object_specific_classes"])
    objects = list(vocab.objects)
    names = objects + ["background"]
    # dataset object id -> row (-1: an object the vocabulary has no part of, left out)
    rows = np.array([objects.index(o) if o in objects else -1 for o in info["object_classes"]] + [-1] * 256)[:256]
    rows[255] = len(objects)
    predictor = Predictor.from_pretrained(model)
    matrix = np.zeros((len(names), len(names)), np.int64)
    images = sorted((root / "images" / split).glob("*.jpg"))[:limit]
    per_image = []
    for path in images:
        predictor.set_image(np.array(Image.open(path).convert("RGB")))
        predicted = predictor.predict(vocab, protocol="pred-all").object_labels
        truth = rows[np.array(Image.open(root / "annotations_detectron2_obj" / split / f"{path.stem}.png"))]
        keep = truth >= 0
        np.add.at(matrix, (truth[keep], predicted[keep]), 1)
        per_image.append(_image_record(path.stem, truth, predicted, names))
    # null where the split shows no pixel of that object
    recall = {n: round(100.0 * matrix[i, i] / matrix[i].sum(), 1) if matrix[i].sum() else None
              for i, n in enumerate(names)}
    iou = {n: round(100.0 * matrix[i, i] / (matrix[i].sum() + matrix[:, i].sum() - matrix[i, i]), 1)
           if matrix[i].sum() else None for i, n in enumerate(names)}
    share = {n: {m: round(100.0 * matrix[i, j] / max(matrix[i].sum(), 1), 1) for j, m in enumerate(names)
                 if matrix[i, j]} for i, n in enumerate(names)}
    found = {}
    for kind, records in (("one_object", [r for r in per_image if len(r["objects"]) == 1]),
                          ("several_objects", [r for r in per_image if len(r["objects"]) > 1])):
        found[kind] = {"images": len(records), "all_found": sum(r["all_found"] for r in records),
                       "mean_object_share": round(float(np.mean([v for r in records for v in r["objects"].values()]))
                                                  if records else float("nan"), 3)}
    return {"model": model or "built-in default model", "root": str(root), "split": split, "images": len(images),
            "objects": names, "pixels": matrix.tolist(), "recall_percent": recall, "iou_percent": iou,
            "row_percent": share, "found": found, "per_image": per_image}


def _image_record(stem: str, truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """One image: each ground-truth object's share of pixels the object head gives it, the smallest
    object's share of the image and the largest box overlap of two objects (over the smaller box)."""
    present = [int(i) for i in np.unique(truth) if 0 <= i < len(names) - 1]
    shares, image_share, boxes = {}, [], []
    for i in present:
        mask = truth == i
        shares[names[i]] = round(float((predicted[mask] == i).mean()), 3)
        image_share.append(float(mask.mean()))
        ys, xs = np.nonzero(mask)
        boxes.append((ys.min(), ys.max() + 1, xs.min(), xs.max() + 1))
    overlap = 0.0
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            (y0, y1, x0, x1), (v0, v1, u0, u1) = boxes[a], boxes[b]
            inter = max(0, min(y1, v1) - max(y0, v0)) * max(0, min(x1, u1) - max(x0, u0))
            overlap = max(overlap, inter / min((y1 - y0) * (x1 - x0), (v1 - v0) * (u1 - u0)))
    return {"image": stem, "objects": shares, "all_found": bool(shares) and all(v >= 0.5 for v in shares.values()),
            "smallest_share": round(min(image_share), 4) if image_share else None, "box_overlap": round(overlap, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved folder / name (default: the built-in model)")
    parser.add_argument("--root", type=Path, required=True, help="the dataset folder (e.g. .../ToyWorld)")
    parser.add_argument("--dataset", default="toy_world")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="the first N images (sorted)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = confusion(args.model, args.root, args.dataset, args.split, args.limit)
    text = json.dumps(result, indent=1) + "\n"
    if args.out is not None:
        from partclipseg.io import atomic_write_text

        atomic_write_text(args.out, text)
    print(json.dumps({"recall_percent": result["recall_percent"], "iou_percent": result["iou_percent"],
                      "found": result["found"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
