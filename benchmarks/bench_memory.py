"""Peak memory of one segmentation at large image sizes and class counts (issue 9, defect 4).

Each case runs in its own subprocess: build the model (random weights, seed 0), ``set_image`` on a
synthetic image, Pred-All ``predict`` and the outputs a user gets (``write_outputs``: label PNG,
overlay, JSON); then, in the same process, the prompt modes (a box, a point, Oracle-Obj with an object
mask). The record holds the process's peak RSS (VmHWM, MiB) after Pred-All + outputs
(``peak_rss_mb``, the issue's number) and after the prompts too (``prompts_peak_rss_mb``), the target
(2048 MiB) and the load average before and after (the machine is shared: timings are contended).

Cases (``--cases``, comma-separated; default all):

* ``objects_1000_1mp_<model>``: a vocabulary of 1000 distinct objects with one part each
  (``"object0's part"`` ...), a 1000x1000 image;
* ``ade20k_4000x3000_<model>``: the ADE20K-Part-234 test vocabulary on a 4000x3000 photo-sized image;

with ``<model>`` = ``default`` (the built-in default model itself, its weights and shape) or ``full``
(``clipseg-rd64-refined``, the official model's shape, random weights). Run from the repository root (``--no-prompts``: Pred-All + outputs only)::

    .venv/bin/python benchmarks/bench_memory.py --out benchmarks/results/memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

CASES = ("objects_1000_1mp_default", "objects_1000_1mp_full", "ade20k_4000x3000_default", "ade20k_4000x3000_full")
TARGET_MB = 2048.0
THREADS = 2


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return round(int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024.0, 1)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages ([] where /proc/loadavg is missing)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return []


def synthetic_image(width: int, height: int):
    import numpy as np

    image = np.empty((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.int64)[None, :]
    y = np.arange(height, dtype=np.int64)[:, None]
    image[..., 0] = x * 255 // max(1, width - 1)
    image[..., 1] = y * 255 // max(1, height - 1)
    image[..., 2] = (x + y) % 256
    return image


def run_case(name: str, out_dir: str, prompts: bool = True) -> dict:
    import numpy as np
    import torch

    from partclipseg.config import get_config
    from partclipseg.model import build_model
    from partclipseg.outputs import write_outputs
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    torch.set_num_threads(THREADS)
    if name.startswith("objects_1000"):
        vocab = Vocabulary.parse([f"object{i}'s part" for i in range(1000)])
        width, height = 1000, 1000
    else:
        vocab = Vocabulary.from_benchmark("ade20k_part_234")
        width, height = 4000, 3000
    torch.manual_seed(0)
    if name.endswith("_default"):
        from partclipseg.weights import load_default_model

        model = load_default_model().eval()
        model_name = f"built-in default model ({model.config.vision.image_size} px, {model.config.vision.num_layers} layers)"
    else:
        model_name = "clipseg-rd64-refined"
        model = build_model(get_config(model_name)).eval()
    image = synthetic_image(width, height)
    start = time.perf_counter()
    predictor = Predictor(model)
    predictor.set_image(image)
    result = predictor.predict(vocab)
    predict_s = time.perf_counter() - start
    write_outputs(result, out_dir, name)
    total_s = time.perf_counter() - start
    record = {"case": name, "image_wh": [width, height], "num_classes": len(vocab), "num_objects": vocab.num_objects,
              "model": model_name, "peak_rss_mb": _vm_hwm_mb(), "target_rss_mb": TARGET_MB,
              "predict_s": round(predict_s, 2), "predict_and_write_s": round(total_s, 2)}
    record["meets_target"] = record["peak_rss_mb"] <= TARGET_MB
    if prompts:
        start = time.perf_counter()
        del result
        y, x = np.mgrid[0:height, 0:width]
        mask = ((x - width / 2) / (width / 3)) ** 2 + ((y - height / 2) / (height / 3)) ** 2 <= 1.0
        del x, y
        box = (width // 10, height // 10, width - width // 10, height - height // 10)
        for kwargs in ({"box": box}, {"point": (width // 2, height // 2)},
                       {"object_name": vocab.objects[0], "object_mask": mask}):
            predictor.predict(vocab, **kwargs)
        record["prompts"] = ["box", "point", "oracle-obj + mask"]
        record["prompts_s"] = round(time.perf_counter() - start, 2)
        record["prompts_peak_rss_mb"] = _vm_hwm_mb()
        record["meets_target"] = record["meets_target"] and record["prompts_peak_rss_mb"] <= TARGET_MB
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--out", default=None, help="write all records to this JSON file (atomically)")
    parser.add_argument("--update", action="store_true",
                        help="keep the records of the cases not run from the existing --out file")
    parser.add_argument("--no-prompts", action="store_true", help="Pred-All and the outputs only")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if args.child:
        print(json.dumps(run_case(args.child, args.work, not args.no_prompts)), flush=True)
        return
    import tempfile

    records = []
    for name in cases:  # one fresh process per case, so peak RSS is the case's own
        before = load_average()
        with tempfile.TemporaryDirectory() as work:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--work", work]
            proc = subprocess.run(cmd + (["--no-prompts"] if args.no_prompts else []), capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            record = {"case": name, "returncode": proc.returncode,
                      "error": proc.stderr.strip().splitlines()[-20:] or [f"exit {proc.returncode}, no record"]}
        else:
            record = json.loads(lines[-1])
        record["load_average_before"], record["load_average_after"] = before, load_average()
        print(json.dumps(record), flush=True)
        records.append(record)
    if args.out:
        from partclipseg.io import atomic_write_text, json_text

        meta = {"machine": f"{platform.platform()} / {platform.machine()} / {os.cpu_count()} cpus",
                "python": platform.python_version(), "threads": THREADS,
                "note": "peak RSS (VmHWM, MiB) of a subprocess per case: model build + set_image + Pred-All predict "
                        "+ write_outputs (label PNG, overlay, JSON) = peak_rss_mb; then box, point and Oracle-Obj "
                        "(+ mask) prompts = prompts_peak_rss_mb; random weights; load averages: the machine is "
                        "shared"}
        if args.update and os.path.exists(args.out):
            with open(args.out) as f:
                kept = [r for r in json.load(f).get("records", []) if r.get("case") not in cases]
            records = sorted(kept + records, key=lambda r: CASES.index(r["case"]) if r.get("case") in CASES else 99)
        atomic_write_text(args.out, json_text({"meta": meta, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
