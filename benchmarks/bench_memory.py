"""Peak memory of one segmentation at large image sizes and class counts (issue 9, defect 4).

Each case runs in its own subprocess: build the model (random weights, seed 0), ``set_image`` on a
synthetic image, Pred-All ``predict`` and the outputs a user gets (``write_outputs``: label PNG,
overlay, JSON). The record holds the process's peak RSS (VmHWM) in MiB and the target (2048 MiB).

Cases (``--cases``, comma-separated; default all):

* ``objects_1000_1mp_<model>``: a vocabulary of 1000 distinct objects with one part each
  (``"object0's part"`` ...), a 1000x1000 image;
* ``ade20k_4000x3000_<model>``: the ADE20K-Part-234 test vocabulary on a 4000x3000 photo-sized image;

with ``<model>`` = ``default`` (the built-in model's shape, ``toy``) or ``full`` (``clipseg-rd64-refined``,
the official model's shape). Run from the repository root::

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


def synthetic_image(width: int, height: int):
    import numpy as np

    image = np.empty((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.int64)[None, :]
    y = np.arange(height, dtype=np.int64)[:, None]
    image[..., 0] = x * 255 // max(1, width - 1)
    image[..., 1] = y * 255 // max(1, height - 1)
    image[..., 2] = (x + y) % 256
    return image


def run_case(name: str, out_dir: str) -> dict:
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
    model = build_model(get_config("toy" if name.endswith("_default") else "clipseg-rd64-refined")).eval()
    image = synthetic_image(width, height)
    start = time.perf_counter()
    predictor = Predictor(model)
    predictor.set_image(image)
    result = predictor.predict(vocab)
    predict_s = time.perf_counter() - start
    write_outputs(result, out_dir, name)
    total_s = time.perf_counter() - start
    peak = _vm_hwm_mb()
    return {"case": name, "image_wh": [width, height], "num_classes": len(vocab), "num_objects": vocab.num_objects,
            "model": "toy" if name.endswith("_default") else "clipseg-rd64-refined",
            "peak_rss_mb": peak, "target_rss_mb": TARGET_MB, "meets_target": peak <= TARGET_MB,
            "predict_s": round(predict_s, 2), "predict_and_write_s": round(total_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default=None, help="write all records to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.work)), flush=True)
        return
    import tempfile

    records = []
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory() as work:
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--work", work], capture_output=True,
                                  text=True)
        if proc.returncode:
            record = {"case": name, "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
        else:
            record = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(record), flush=True)
        records.append(record)
    if args.out:
        meta = {"machine": platform.machine(), "python": platform.python_version(), "threads": THREADS,
                "note": "peak RSS (VmHWM) of a subprocess per case: model build + set_image + Pred-All predict + "
                        "write_outputs (label PNG, overlay, JSON); random weights"}
        with open(args.out, "w") as f:
            f.write(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
