"""Prompt time on a photo-sized image: where a box or point prompt spends its time.

One process, the built-in default model, a synthetic image (``bench_memory.synthetic_image``), the
ADE20K-Part-234 test vocabulary (``--vocab``: any benchmark name or ``toy_world``). Records
``set_image``, Pred-All, then a box, a point and a second point on the same image (the SAM pattern:
clicks after one embedding), each with the seconds spent in the post-processing steps it calls
(``stages_s``), and the 8-connected component of the object head's largest class around the pixel
nearest the centre, timed alone with the current run-based ``postprocess.connected_component`` and
with the pixel-growth loop it replaced (max-pool dilation until nothing changes; kept here only to
measure against). Run from the repository root::

    .venv/bin/python benchmarks/bench_prompts.py --out benchmarks/results/bench_prompts.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_SRC = os.path.join(os.path.dirname(_HERE), "src")
for path in (_SRC, _HERE):
    if os.path.isdir(path) and path not in sys.path:
        sys.path.insert(0, path)

STAGES = ("object_labels_of", "mean_scores_inside", "scores_at", "connected_component", "otsu_threshold",
          "object_conditioned", "pred_all")


def _pixel_growth_component(mask, seed):
    """The replaced implementation: grow the seed by 3x3 max-pooling inside the mask until it stops."""
    import torch
    import torch.nn.functional as F

    component = mask.new_zeros(mask.shape)
    component[seed] = True
    if not bool(mask[seed]):
        return component
    allowed, current = mask[None, None].float(), component[None, None].float()
    for i in range(100_000):
        grown = F.max_pool2d(current, 3, stride=1, padding=1) * allowed
        if i % 8 == 7 and torch.equal(grown, current):
            break
        current = grown
    return current[0, 0] > 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--vocab", default="ade20k_part_234")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-previous", action="store_true", help="do not time the replaced component loop")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    import partclipseg.postprocess as postprocess
    import partclipseg.predictor as predictor_module
    from bench_memory import synthetic_image
    from partclipseg.io import atomic_write_text, json_text
    from partclipseg.vocabulary import Vocabulary
    from partclipseg.weights import load_default_model

    torch.set_num_threads(args.threads)
    spent: dict[str, float] = {}

    def timed(module, name):
        real = getattr(module, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        setattr(module, name, wrapper)

    for name in STAGES:
        timed(postprocess if name in ("connected_component", "otsu_threshold") else predictor_module, name)
    vocab = Vocabulary.from_benchmark(args.vocab)
    width, height = args.width, args.height
    predictor = predictor_module.Predictor(load_default_model())
    record = {"image_wh": [width, height], "vocabulary": args.vocab, "num_classes": len(vocab),
              "num_objects": vocab.num_objects, "model": "built-in default", "threads": args.threads,
              "machine": f"{platform.platform()} / {os.cpu_count()} cpus", "torch": torch.__version__,
              "loadavg_before": [round(v, 2) for v in os.getloadavg()], "calls": []}
    image = synthetic_image(width, height)

    def call(label, fn):
        spent.clear()
        start = time.perf_counter()
        result = fn()
        entry = {"call": label, "seconds": round(time.perf_counter() - start, 3),
                 "stages_s": {k: round(v, 3) for k, v in spent.items()}}
        if result is not None and getattr(result, "region_rule", None):
            entry["region_rule"] = result.region_rule
        record["calls"].append(entry)
        print(json.dumps(entry), flush=True)
        return result

    call("set_image", lambda: predictor.set_image(image))
    call("pred-all", lambda: predictor.predict(vocab))
    box = (width // 10, height // 10, width - width // 10, height - height // 10)
    call("box", lambda: predictor.predict(vocab, box=box))
    call("point", lambda: predictor.predict(vocab, point=(width // 2, height // 2)))
    call("second point (same image)", lambda: predictor.predict(vocab, point=(width // 3, height // 3)))

    labels = postprocess.object_labels_of(*_logits_and_parts(predictor, vocab), (height, width))
    counts = torch.bincount(labels.flatten(), minlength=vocab.num_objects + 1)
    largest = int(counts.argmax())  # the object head's largest class (background when it has no object)
    mask = labels == largest
    seed = postprocess.nearest_true(mask, (height // 2, width // 2))
    component = {"label": largest, "mask_pixels": int(mask.sum()), "seed_row_col": list(seed)}
    start = time.perf_counter()
    current = postprocess.connected_component(mask, seed)
    component["run_based_s"] = round(time.perf_counter() - start, 3)
    component["component_pixels"] = int(current.sum())
    if not args.skip_previous:
        start = time.perf_counter()
        previous = _pixel_growth_component(mask, seed)
        component["pixel_growth_s"] = round(time.perf_counter() - start, 3)
        component["same_component"] = bool(torch.equal(previous, current))
    record["point_component"] = component
    print(json.dumps(component), flush=True)
    record["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    atomic_write_text(args.out, json_text(record, indent=1) + "\n")
    return 0


def _logits_and_parts(predictor, vocab):
    """The class-head logits of image 0 and the vocabulary's part count (as the Predictor reads them)."""
    from partclipseg.predictor import _image_logits

    out = predictor._decode(predictor.encode_vocabulary(vocab))
    return _image_logits(out, 0)[0], vocab.num_parts


if __name__ == "__main__":
    sys.exit(main())
