"""Where Pred-All loses to Oracle-Obj: the object head's two kinds of error, in mIoU points.

Pred-All (SPEC §4.2) labels a pixel with the best part of the object the object head picks there
(``o*``, background included); Oracle-Obj (§4.1) with the best part of the sample's own object. On a
sample's labelled pixels ``o*`` is either right, *background* (the pixel is lost), or *another object*
(it gets that object's part). This scores the same predictions four ways, with the official evaluator's
samples, ground truth and metrics (``compute_metrics``):

* ``pred_all``: the official Pred-All (equals ``partclipseg evaluate --protocol pred-all``);
* ``no_background_errors``: where ``o*`` is background, the best-scoring *object* instead (wrong
  objects kept);
* ``no_wrong_object_errors``: where ``o*`` is another object, the sample's object instead (background
  kept);
* ``oracle_obj``: both corrected, which is Oracle-Obj (equals ``--protocol oracle-obj``).

Besides, ``class_argmax_rule`` scores PartCATSeg's Pred-All rule on the same model (``predict(...,
pred_all_rule="class-argmax")``: the argmax over the object-specific classes and their own background
channel, no object gate), and ``background_by_rule`` says for both rules where "background" falls: the
share of every class's labelled pixels *not* called background, and the share of true background (and
of objects without part classes) given a part, which the official Pred-All never counts (SPEC §5.3).

A diagnosis, not a protocol: the corrections use the ground truth. For models with an object head
(PartCLIPSeg's Pred-All rule; a model without one is refused). Uses only the public Predictor API
(``predict(protocol="pred-all", return_scores=True)`` and one ``oracle-obj`` prediction per object).

    python scripts/pred_all_breakdown.py --root runs/default_model/test/ToyWorld \\
        --out benchmarks/results/default_model_run/pred_all_breakdown.json      # the built-in model
    python scripts/pred_all_breakdown.py --model runs/x/best --root DIR --dataset toy_world --limit 50
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("pred_all", "no_background_errors", "no_wrong_object_errors", "oracle_obj")
SCORED = VARIANTS + ("class_argmax_rule",)  # every mIoU row of the output


def breakdown(model: str | None, root: Path, dataset: str, limit: int | None) -> dict:
    from partclipseg.data import open_dataset
    from partclipseg.errors import PartCLIPSegError
    from partclipseg.evaluation import ConfusionAccumulator, compute_metrics, sample_confusion
    from partclipseg.predictor import Predictor
    from partclipseg.preprocess import load_image
    from partclipseg.vocabulary import Vocabulary, load_benchmark_info

    vocab = Vocabulary.from_benchmark(dataset, "test")
    info = load_benchmark_info(dataset)
    base = info["evaluation_set"]["base"]
    k, num_objects = len(vocab), vocab.num_objects
    reader = open_dataset(dataset, root, "val")
    reader.check(full=False)
    refs = reader.eval_samples()[:limit]
    predictor = Predictor.from_pretrained(model)
    with_parts = np.array([o in vocab.objects for o in info["object_classes"]] + [False] * 256)[:256]
    totals = {v: ConfusionAccumulator(k) for v in SCORED}
    pixels = {"right_object": 0, "background": 0, "wrong_object": 0}
    # per rule: [true-background pixels given a part, true-background pixels, pixels of objects without part
    # classes given a part, such pixels]; per class: [part pixels not called background, part pixels]
    rules = {"object-head": np.zeros(4, np.int64), "class-argmax": np.zeros(4, np.int64)}
    kept = {rule: np.zeros((k, 2), np.int64) for rule in rules}
    current, cache = None, None
    for ref in refs:
        if ref.image_path != current:  # one image, several samples: predict once (also for an image
            # whose samples have no labelled part pixel: it still counts in the background statistics)
            predictor.set_image(load_image(ref.image_path, exif_transpose=False))
            current = ref.image_path
            # the object-head rule by name: a model without an object head is refused in one line
            official = predictor.predict(vocab, protocol="pred-all", pred_all_rule="object-head", return_scores=True)
            object_labels = official.object_labels  # o*: [H, W], num_objects = background
            best_object = official.object_scores[:num_objects].argmax(0)  # background left out
            best_part_of = np.stack([predictor.predict(vocab, protocol="oracle-obj", object_name=o).part_labels
                                     for o in vocab.objects])  # [O, H, W]: each object's best part per pixel
            by_class = predictor.predict(vocab, protocol="pred-all", pred_all_rule="class-argmax").part_labels
            cache = (official.part_labels, object_labels, best_object, best_part_of, by_class)
            if ref.object_path is not None:  # Pascal layout: every object of the image, 255 = background
                objects_png = np.array(Image.open(ref.object_path))
                for rule, labels in (("object-head", official.part_labels), ("class-argmax", by_class)):
                    a_part, bg, partless = labels != k, objects_png == 255, ~with_parts[objects_png] & (objects_png != 255)
                    rules[rule] += [(a_part & bg).sum(), bg.sum(), (a_part & partless).sum(), partless.sum()]
        sample = reader.load_eval_sample(ref)
        if sample is None:
            continue
        part_labels, object_labels, best_object, best_part_of, by_class = cache
        names = [n for n in sample.object_names if n in vocab.objects]
        if len(names) != 1:
            raise PartCLIPSegError(f"sample {sample.sample_id} has {len(names)} objects of the vocabulary; "
                             "the breakdown needs one object per sample (Pascal-style samples)")
        own = vocab.objects.index(names[0])
        gt = sample.part_labels
        labelled = gt >= 0
        predictions, counts = compose(part_labels, object_labels, best_object, best_part_of, own, k, labelled)
        for name, count in counts.items():
            pixels[name] += count
        for variant, prediction in predictions.items():
            totals[variant].add(sample_confusion(prediction, gt, k))
        totals["class_argmax_rule"].add(sample_confusion(by_class, gt, k))
        for rule, labels in (("object-head", part_labels), ("class-argmax", by_class)):
            np.add.at(kept[rule], (gt[labelled], 0), labels[labelled] != k)
            np.add.at(kept[rule], (gt[labelled], 1), 1)
    metrics, per_class = {}, {}
    for variant in SCORED:
        protocol = "oracle-obj" if variant == "oracle_obj" else "pred-all"
        m = compute_metrics(totals[variant].matrix, base, vocab.object_specific_classes, protocol)
        metrics[variant] = {"seen": m.get("mIoU-base"), "unseen": m.get("mIoU-unbase"), "harmonic": m.get("h-IoU")}
        per_class[variant] = {c["name"]: c["iou"] for c in m["per_class"] if c["iou"] is not None}
    total = sum(pixels.values())
    pct = lambda a, b: round(100.0 * a / b, 1) if b else None  # noqa: E731
    background = {rule: {"true_background_given_a_part_percent": pct(c[0], c[1]),
                         "objects_without_parts_given_a_part_percent": pct(c[2], c[3]),
                         "part_pixels_not_called_background": [int(v) for v in kept[rule].sum(0)],  # [kept, all]
                         "part_pixels_not_called_background_percent": {
                             vocab.object_specific_classes[t]: pct(*kept[rule][t]) for t in range(k) if kept[rule][t, 1]}}
                  for rule, c in rules.items()}
    return {"model": model or "built-in default model", "root": str(root), "dataset": dataset,
            "samples": totals["pred_all"].count, "metrics": metrics, "per_class_iou": per_class,
            "labelled_pixels": pixels,
            "labelled_pixels_percent": {n: round(100.0 * v / max(total, 1), 1) for n, v in pixels.items()},
            "background_by_rule": background}


def compose(part_labels: np.ndarray, object_labels: np.ndarray, best_object: np.ndarray, best_part_of: np.ndarray,
            own: int, k: int, labelled: np.ndarray) -> tuple[dict, dict]:
    """The four predictions of one sample and its labelled pixels' object-head outcome counts.

    ``part_labels`` [H, W] the official Pred-All (``k`` = background); ``object_labels`` [H, W] the object
    head's argmax ``o*`` (``O`` = background, ``O`` = ``best_part_of.shape[0]``); ``best_object`` [H, W]
    its argmax without background; ``best_part_of`` [O, H, W] each object's best part per pixel (the
    Oracle-Obj prediction for that object); ``own`` the sample's object; ``labelled`` bool [H, W].
    """
    num_objects = best_part_of.shape[0]
    is_background = object_labels == num_objects
    is_other = ~is_background & (object_labels != own)
    rows, cols = np.indices(object_labels.shape)
    no_background = np.where(is_background, best_object, object_labels)
    predictions = {
        "pred_all": part_labels,
        "no_background_errors": best_part_of[no_background, rows, cols],
        "no_wrong_object_errors": np.where(is_background, k, best_part_of[own]),
        "oracle_obj": best_part_of[own],
    }
    counts = {"background": int((is_background & labelled).sum()), "wrong_object": int((is_other & labelled).sum()),
              "right_object": int((~is_background & ~is_other & labelled).sum())}
    return predictions, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved folder / name (default: the built-in model)")
    parser.add_argument("--root", type=Path, required=True, help="the dataset folder (e.g. .../ToyWorld)")
    parser.add_argument("--dataset", default="toy_world")
    parser.add_argument("--limit", type=int, default=None, help="the first N samples")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be a positive number of samples, got {args.limit}")
    from partclipseg.errors import PartCLIPSegError

    try:
        result = breakdown(args.model, args.root, args.dataset, args.limit)
    except PartCLIPSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1) + "\n"
    if args.out is not None:
        from partclipseg.io import atomic_write_text

        atomic_write_text(args.out, text)
    print(json.dumps({"metrics": result["metrics"], "labelled_pixels_percent": result["labelled_pixels_percent"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
