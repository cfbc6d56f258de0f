"""Do the three segment engines write the same bytes on a folder no test was tuned on?

1. Draws a fresh toy world (``python -m partclipseg.data.toyworld``) with ``--seed`` (default: a random
   seed, recorded in the result) and lays its images out as an input tree with nested folders and
   clashing names: ``A/<id>.jpg`` and ``A/<id>.png`` (same stem, two suffixes), ``B/<id>.jpg`` (the same
   relative path as in ``A``, another image), ``A/deep/1/2/<id>.JPG``, ``A/x/<id>.jpg``, ``B/x/<id>.jpg``
   and ``A/y/x/<id>.jpg`` (same tails), and one corrupt ``A/broken.png`` (a failure every engine must report).
2. Runs the real command line on it three times, each into its own ``--out``: the local engine,
   ``--engine ray --workers 2`` and ``torchrun --nproc_per_node=2 -m partclipseg segment`` (with
   ``--scores --rle`` and the overlay: every output kind).
3. Compares the three output trees file by file: every non-JSON file byte for byte, every JSON file
   as parsed JSON without timing fields (keys with time/seconds/elapsed in their name; the result
   lists the ones it dropped), and the printed summaries without their ``engine`` field.

    .venv/bin/python scripts/check_engines_agree.py --out benchmarks/results/engines_agree.json

Exit code 0 when the three agree, 1 when anything differs (the result names the files).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"time|seconds|elapsed", re.IGNORECASE)


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def lay_out_inputs(world: Path, inputs: Path) -> int:
    """The input tree of the module docstring from the toy world's images; returns the image count."""
    from PIL import Image

    images = world / "ToyWorld" / "images"
    train = sorted((images / "train").glob("*.jpg"))
    val = sorted((images / "val").glob("*.jpg"))
    if not train or len(val) < len(train):
        raise SystemExit(f"{images}: expected train images and at least as many val images")
    stems = [p.stem for p in train]
    placed = 0

    def put(source: Path, target: Path, fmt: str | None = None) -> None:
        nonlocal placed
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt:
            Image.open(source).convert("RGB").save(target, format=fmt)
        else:
            shutil.copyfile(source, target)
        placed += 1

    half = len(train) // 2
    for path in train[:half]:  # A/<id>.jpg + A/<id>.png: one stem, two images
        put(path, inputs / "A" / path.name)
    for path, other in zip(train[:half], train[half:]):
        put(other, inputs / "A" / f"{path.stem}.png", "PNG")
    for path, stem in zip(val, stems):  # B/<id>.jpg: A's relative paths, other images
        put(path, inputs / "B" / f"{stem}.jpg")
    rest = val[len(stems):] or val
    for k, path in enumerate(rest):  # per stem: A/deep/1/2/s.JPG, A/x/s.jpg, B/x/s.jpg, A/y/x/s.jpg
        folder = ("A/deep/1/2", "A/x", "B/x", "A/y/x")[k % 4]
        suffix = ".JPG" if folder == "A/deep/1/2" else ".jpg"
        put(path, inputs / folder / f"{stems[(k // 4) % len(stems)]}{suffix}")
    (inputs / "A" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return placed


def commands(engine: str, inputs: Path, out: Path, batch_size: int) -> list[str]:
    args = ["segment", str(inputs / "A"), str(inputs / "B"), "--vocab", "toy_world", "--out", str(out),
            "--batch-size", str(batch_size), "--scores", "--rle"]
    if engine == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "partclipseg", *args]
    if engine == "ray":
        return [sys.executable, "-m", "partclipseg", *args, "--engine", "ray", "--workers", "2"]
    return [sys.executable, "-m", "partclipseg", *args]


def without_timing(value, dropped: set[str]):
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if TIMING.search(str(key)):
                dropped.add(str(key))
            else:
                kept[key] = without_timing(item, dropped)
        return kept
    if isinstance(value, list):
        return [without_timing(v, dropped) for v in value]
    return value


def compare(reference: Path, other: Path, dropped: set[str]) -> list[str]:
    """Relative paths that differ (or exist in one tree only)."""
    files = {p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file()}
    files |= {p.relative_to(other).as_posix() for p in other.rglob("*") if p.is_file()}
    differ = []
    for name in sorted(files):
        a, b = reference / name, other / name
        if not (a.is_file() and b.is_file()):
            differ.append(f"{name} (only in one)")
        elif name.endswith(".json") and "/" not in name and name.startswith("partclipseg-"):
            if a.read_bytes() != b.read_bytes():
                differ.append(name)
        elif name.endswith(".json"):
            if without_timing(json.loads(a.read_bytes()), dropped) != without_timing(json.loads(b.read_bytes()), dropped):
                differ.append(name)
        elif a.read_bytes() != b.read_bytes():
            differ.append(name)
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="toy world seed (default: a random one, recorded)")
    parser.add_argument("--train", type=int, default=16, help="toy world training images to draw")
    parser.add_argument("--val", type=int, default=24, help="toy world validation images to draw")
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="keep the inputs and outputs in this folder")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10_000, 2**31)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    work = args.keep or Path(tempfile.mkdtemp(prefix="engines_agree_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"seed": seed, "toy_world": {"train": args.train, "val": args.val, "min_size": 160, "max_size": 320},
              "model": "built-in", "vocabulary": "toy_world", "batch_size": args.batch_size,
              "outputs": "labels.png, overlay.png, scores.npz, json (with RLE)", "engines": {}}
    try:
        subprocess.run([sys.executable, "-m", "partclipseg.data.toyworld", str(work / "world"), "--train",
                        str(args.train), "--val", str(args.val), "--seed", str(seed), "--min-size", "160",
                        "--max-size", "320"], check=True, env=env, capture_output=True, text=True)
        result["images"] = lay_out_inputs(work / "world", work / "inputs")
        summaries = {}
        for engine in ("local", "ray", "torchrun"):
            load = load_average()
            start = time.perf_counter()
            done = subprocess.run(commands(engine, work / "inputs", work / engine, args.batch_size), env=env,
                                  capture_output=True, text=True)
            summary = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
            result["engines"][engine] = {"exit_code": done.returncode, "summary": summary,
                                         "wall_s": round(time.perf_counter() - start, 2),
                                         "load_average_before": load}
            if summary is None:
                result["engines"][engine]["stderr_tail"] = done.stderr[-2000:]
            summaries[engine] = {k: v for k, v in (summary or {}).items() if k not in ("engine", "out")}
        dropped: set[str] = set()
        result["differences"] = {engine: compare(work / "local", work / engine, dropped) for engine in ("ray", "torchrun")}
        result["summaries_agree"] = all(s == summaries["local"] and s for s in summaries.values())
        result["timing_fields_dropped"] = sorted(dropped)
        result["files_compared"] = sum(1 for p in (work / "local").rglob("*") if p.is_file())
        result["agree"] = (result["summaries_agree"] and not any(result["differences"].values())
                           and len({e["exit_code"] for e in result["engines"].values()}) == 1)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    sys.path.insert(0, str(ROOT / "src"))
    from partclipseg.io import atomic_write_text, json_text

    text = json_text(result, indent=1)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
