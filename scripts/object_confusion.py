"""Per-pixel confusion of a model's object head on a toy-world (or any Pascal-Part-layout) split.

Pred-All labels a pixel with a part of the object that the object head picks there, so the object
head bounds Pred-All: this shows, for every ground-truth object, where its pixels go (each object of
the model vocabulary, or background), and each object's IoU. Uses only the public Predictor API
(``predict(..., protocol="pred-all").object_labels``).

    python scripts/object_confusion.py --root runs/default_model/test/ToyWorld --limit 100 \\
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
    for path in images:
        predictor.set_image(np.array(Image.open(path).convert("RGB")))
        predicted = predictor.predict(vocab, protocol="pred-all").object_labels
        truth = rows[np.array(Image.open(root / "annotations_detectron2_obj" / split / f"{path.stem}.png"))]
        keep = truth >= 0
        np.add.at(matrix, (truth[keep], predicted[keep]), 1)
    # null where the split shows no pixel of that object
    recall = {n: round(100.0 * matrix[i, i] / matrix[i].sum(), 1) if matrix[i].sum() else None
              for i, n in enumerate(names)}
    iou = {n: round(100.0 * matrix[i, i] / (matrix[i].sum() + matrix[:, i].sum() - matrix[i, i]), 1)
           if matrix[i].sum() else None for i, n in enumerate(names)}
    share = {n: {m: round(100.0 * matrix[i, j] / max(matrix[i].sum(), 1), 1) for j, m in enumerate(names)
                 if matrix[i, j]} for i, n in enumerate(names)}
    return {"model": model or "built-in default model", "root": str(root), "split": split, "images": len(images),
            "objects": names, "pixels": matrix.tolist(), "recall_percent": recall, "iou_percent": iou,
            "row_percent": share}


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
    print(json.dumps({"recall_percent": result["recall_percent"], "iou_percent": result["iou_percent"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
