"""Training throughput (images per second) of the toy_world part-training loop, per setting.

Runs ``partclipseg.train.train`` for a few steps on an existing toy world and reports the median
step time after warm-up (data loading, forward, loss, backward and optimizer step included). Each
row changes one thing, so that the effect of each speed change can be read off:

    python benchmarks/bench_train.py --data runs/default_model/data/ToyWorld --steps 12 \\
        --out benchmarks/results/bench_train.json

Rows: the old default (``toy`` config, 96 px, attention losses, torch's thread count), then one
thread per process, then no attention losses, then the ``toy2`` config (192 px, 16 px patches) with a
4-head decoder, then ``toy2`` with its 2-head decoder, then the loss on sampled pixels (``loss.pixel_stride=4``,
session 16; the resized-image cache is off in every row: it helps from the second epoch on). Each setting runs in its own process
(``OMP_NUM_THREADS`` must be set before torch starts).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS = [
    ("old default: toy 96 px, attention losses, default threads", dict(preset="toy", size=96, attention=True, threads=None, heads=None)),
    ("+ 1 thread per process", dict(preset="toy", size=96, attention=True, threads=1, heads=None)),
    ("+ no attention losses", dict(preset="toy", size=96, attention=False, threads=1, heads=None)),
    ("toy2 192 px (16 px patches), 4-head decoder", dict(preset="toy2", size=192, attention=False, threads=1, heads=4)),
    ("toy2: 2-head decoder", dict(preset="toy2", size=192, attention=False, threads=1, heads=None)),
    ("+ loss on sampled pixels (loss.pixel_stride=4)", dict(preset="toy2", size=192, attention=False, threads=1, heads=None,
                                                            pixel_stride=4)),
]


def run_one(data: str, steps: int, preset: str, size: int, attention: bool, heads: int | None, batch: int,
            pixel_stride: int = 1) -> dict:
    from partclipseg.cli import _keep_freed_memory
    from partclipseg.config import get_config
    from partclipseg.model import build_model
    from partclipseg.train import load_recipe, train
    from partclipseg.weights import save_pretrained

    import torch

    _keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        config = get_config(preset)
        config.image_size = size
        if heads is not None:
            config.decoder.num_heads = heads
        torch.manual_seed(0)
        save_pretrained(build_model(config), Path(tmp) / "init")
        recipe = load_recipe("toy_world", [f"root={data}", f"init={Path(tmp) / 'init'}", f"image_size={size}",
                                           f"iterations={steps}", f"batch_size={batch}", "log_period=1",
                                           f"checkpoint_period={10 ** 9}", f"eval_period={10 ** 9}",
                                           f"loss.use_attention={str(attention).lower()}", "trainable=all",
                                           # the resized-image cache helps from the second epoch on only
                                           f"loss.pixel_stride={pixel_stride}", "cache_resized=false",
                                           "loss.balanced_objects=false"])
        train(recipe, Path(tmp) / "run", progress=False)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records if "total" in r]
    steps_s = [b - a for a, b in zip(seconds, seconds[1:])][2:]  # drop warm-up steps
    median = statistics.median(steps_s)
    return {"median_step_s": round(median, 3), "images_per_s": round(batch / median, 2), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a ToyWorld folder")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one setting (JSON)
    args = parser.parse_args(argv)
    if args.one is not None:
        s = json.loads(args.one)
        print(json.dumps(run_one(args.data, args.steps, s["preset"], s["size"], s["attention"], s["heads"],
                                 args.batch_size, s.get("pixel_stride", 1))))
        return 0
    rows = []
    for name, setting in ROWS:
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)
        if setting["threads"] is not None:
            env["OMP_NUM_THREADS"] = str(setting["threads"])
        proc = subprocess.run([sys.executable, __file__, "--data", args.data, "--steps", str(args.steps),
                               "--batch-size", str(args.batch_size), "--one", json.dumps(setting)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        row = {"setting": name, **setting, **json.loads(proc.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "steps": args.steps, "batch_size": args.batch_size,
                                        "load_average": os.getloadavg()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
