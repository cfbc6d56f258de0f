"""Throughput of ``partclipseg segment`` on three engines: one process, ``--engine ray`` with 2 workers,
``torchrun`` with 2 processes (gloo on CPUs), for the built-in model and the full-size config.

Each (model, engine) pair runs the real command twice in a fresh output folder: on ``--small`` images
and on ``--images`` images (default 200; synthetic 320x240 JPEGs in nested folders). Reported per pair:

* ``wall_s`` / ``images_per_s``: the whole command on ``--images`` images (start-up included:
  Python, torch, the model, Ray and its actors);
* ``steady_images_per_s``: ``(images - small) / (wall_s - wall_small_s)``, start-up cancelled out.

The full-size config (``clipseg-rd64-refined``, ViT-B/16 at 352 px, random weights: speed only) and the
built-in model both use the ``toy_world`` vocabulary (35 classes). The outputs of the three engines are
compared byte for byte (``identical_outputs``). Every process runs ``OMP_NUM_THREADS`` threads (default 1:
the local engine uses one core, the 2-process engines two). Each run records the load average
(``/proc/loadavg``) before and after it: on a shared machine the numbers are only as good as that.
One JSON document goes to ``--out`` (rewritten after every run, so an interrupted benchmark keeps what
it measured) and to stdout.

    .venv/bin/python benchmarks/bench_scale.py --out benchmarks/results/bench_scale.json
    .venv/bin/python benchmarks/bench_scale.py --smoke --out /tmp/bench_scale.json    # seconds-scale check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("local", "ray", "torchrun")


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` textured 320x240 JPEGs in 10 sub-folders (same stems in each)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    for i in range(count):
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([np.sin(x / 23 + phase[0]), np.cos(y / 17 + phase[1]), np.sin((x + y) / 31 + phase[2])], -1)
        pixels = np.clip(128 + 90 * base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"d{i % 10}" / f"img{i // 10:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)


def command(engine: str, images: Path, model: str | None, out: Path, batch_size: int) -> list[str]:
    args = ["segment", str(images), "--vocab", "toy_world", "--out", str(out), "--batch-size", str(batch_size),
            "--no-overlay"]
    if model:
        args += ["--model", model]
    if engine == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "partclipseg", *args]
    if engine == "ray":
        return [sys.executable, "-m", "partclipseg", *args, "--engine", "ray", "--workers", "2"]
    return [sys.executable, "-m", "partclipseg", *args]


def timed(cmd: list[str], env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where /proc/loadavg does not exist)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def write_results(results: dict, out: Path | None) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from partclipseg.io import atomic_write_text, json_text

    text = json_text(results, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
    return text


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--models", default="builtin,full")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="OMP_NUM_THREADS of every process (default: this one's, else 1)")
    parser.add_argument("--smoke", action="store_true", help="6 images, built-in model, local engine only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.images, args.small, args.models, args.engines = 6, 2, "builtin", "local"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.threads)}
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
               "images": args.images, "small": args.small, "batch_size": args.batch_size, "vocabulary": "toy_world",
               "image_size": "320x240", "threads_per_process": args.threads, "nice": os.nice(0),
               "full_model_weights": "random (speed only)", "load_average_at_start": load_average(), "runs": []}
    try:
        make_images(work / "big", args.images)
        make_images(work / "small", args.small)
        models = {}
        for name in args.models.split(","):
            if name == "builtin":
                models[name] = None
            elif name == "full":
                import torch

                from partclipseg.config import get_config
                from partclipseg.model import build_model

                torch.manual_seed(0)
                build_model(get_config("clipseg-rd64-refined")).save_pretrained(work / "full_model")
                models[name] = str(work / "full_model")
            else:
                raise SystemExit(f"unknown model {name!r}: builtin or full")
        for model_name, model in models.items():
            reference = None
            for engine in args.engines.split(","):
                load_before = load_average()
                wall_small, _ = timed(command(engine, work / "small", model, work / "o_small", args.batch_size), env)
                wall, summary = timed(command(engine, work / "big", model, work / "o_big", args.batch_size), env)
                outputs = tree(work / "o_big")
                reference = reference or outputs
                run = {"model": model_name, "engine": engine if engine == "local" else f"{engine} x2",
                       "images": args.images, "small": args.small, "processed": summary["processed"], "wall_s": round(wall, 2), "wall_small_s": round(wall_small, 2),
                       "images_per_s": round(args.images / wall, 3),
                       "steady_images_per_s": (round((args.images - args.small) / (wall - wall_small), 3)
                                               if wall > wall_small else None),  # None: start-up noise dominates
                       "identical_outputs": outputs == reference,
                       "load_average_before": load_before, "load_average_after": load_average()}
                results["runs"].append(run)
                write_results(results, args.out)
                print(f"{model_name} {run['engine']}: {run['images_per_s']} images/s, load {run['load_average_after']}",
                      file=sys.stderr, flush=True)
                shutil.rmtree(work / "o_small")
                shutil.rmtree(work / "o_big")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = load_average()
    print(write_results(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
