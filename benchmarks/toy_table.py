"""The paper's ablation table in miniature, on the toy world (CPU), with spreads over seeds.

Every variant starts from the **same** pretrained towers (toy language-image pretraining, as every
row of the paper starts from CLIP), or with ``--start`` from the same trained model (an object stage,
recipe ``toy_world_objects``: the toy CLIPSeg, as every row of the paper starts from CLIPSeg's weights): (1) the
CLIPSeg baseline, (2) PartCLIPSeg without the attention losses, (3) PartCLIPSeg with L_sep + L_enh.
Each is trained with the ``toy_world`` recipe and the paper's supervision (``PAPER_SUPERVISION``: seen part
masks only, images with an unseen object skipped; the built-in model's ``parts+objects`` supervision has
no CLIPSeg-baseline counterpart) for the same number of steps with each seed, then
evaluated on the toy world's validation split with Pred-All and Oracle-Obj. Writes ``toy_table.json``
(every run and the per-variant mean, sample standard deviation, min and max over seeds) and
``toy_table.md`` (mean ± standard deviation).

    python benchmarks/toy_table.py --out runs/toy_table --jobs 2 --image-size 128   # from the towers alone
    python benchmarks/toy_table.py --out runs/toy_table --towers runs/default_model/pretrain/final \\
        --data runs/default_model/data/ToyWorld                               # reuse the default model's pretraining
    partclipseg train toy_world_objects root=runs/default_model/data/ToyWorld \\
        init=runs/default_model/pretrain/final --out runs/default_model/objects   # the object stage (16 min)
    python benchmarks/toy_table.py --out runs/toy_table --towers runs/default_model/pretrain/final \\
        --start runs/default_model/objects/final --data runs/default_model/data/ToyWorld \\
        --jobs 2 --iterations 400                                              # the README's table
    python benchmarks/toy_table.py --out /tmp/toy_smoke --smoke               # seconds: the pipeline only
    python benchmarks/toy_table.py --out runs/toy_table --partcatseg          # + a PartCATSeg row (own recipe)

The toy world is generated into ``OUT/data`` unless ``--data`` points at an existing one; the towers
are pretrained into ``OUT/pretrain`` unless ``--towers`` names a pretraining run's ``final/``. Each
architecture's starting model is exported into ``OUT/init/<architecture>`` (``export_towers``; for
PartCATSeg also the pretraining's image head, read from the run's last checkpoint beside ``final/``). A
killed run resumes: finished runs are kept, unfinished ones continue from their checkpoints.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import signal
import statistics
import sys
import time
from pathlib import Path

#: the CLIPSeg-family rows train as the paper does (the toy_world recipe's own supervision is parts+objects;
#: the object cross-entropy term, the balanced object term and copy-paste, not in the paper, are pinned off so
#: that a recipe enabling them cannot reach them; so are the recipe's speed settings, pixel sampling and the
#: resized-image cache: the baseline and the attention losses need every pixel, and the table was measured
#: without them)
PAPER_SUPERVISION = ["supervision=parts", "skip_unseen_images=true", "loss.object_ce_lambda=0", "copy_paste_prob=0",
                     "loss.balanced_objects=false", "loss.pixel_stride=1", "cache_resized=false"]
VARIANTS = [
    ("CLIPSeg baseline", "clipseg", ["architecture=clipseg", "loss.use_attention=false"]),
    ("PartCLIPSeg (no attention losses)", "partclipseg", ["loss.use_attention=false"]),
    ("PartCLIPSeg + L_sep + L_enh", "partclipseg", ["loss.use_attention=true"]),
]
#: ``--partcatseg``: one more row, PartCATSeg with its own recipe (``toy_world_partcatseg``) from the same
#: pretrained towers (``export_towers(..., "partcatseg")``: the ``partcatseg-toy`` preset with the towers'
#: CLIP shapes, the towers mapped into its OpenAI-layout CLIP, DINOv2 and the aggregator new)
PARTCATSEG_VARIANT = ("PartCATSeg", "partcatseg", [])
PROTOCOLS = ("pred-all", "oracle-obj")
KEYS = ("mIoU-base", "mIoU-unbase", "h-IoU")


def summarise(values: list[float | None]) -> dict:
    """mean, sample standard deviation (0 for one value), min and max of the non-missing values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def markdown(summary_rows: list[dict]) -> str:
    lines = ["| Variant | Pred-All Seen | Pred-All Unseen | Pred-All Harmonic | Oracle-Obj Seen | Oracle-Obj Unseen | "
             "Oracle-Obj Harmonic |", "|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(s: dict) -> str:
        return "-" if s["mean"] is None else f"{s['mean']:.1f} ± {s['std']:.1f}"

    for row in summary_rows:
        lines.append(f"| {row['variant']} | " + " | ".join(fmt(row[f"{p}_{k}"]) for p in PROTOCOLS for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def _one_thread() -> None:
    import os

    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def run_one(job: tuple) -> dict:
    """Train one (variant, seed) run (resuming a killed one; a finished one is kept) and evaluate it
    with both protocols; returns the table row."""
    from partclipseg.cli import _keep_freed_memory
    from partclipseg.eval_runner import evaluate
    from partclipseg.io import atomic_write_text
    from partclipseg.train import load_recipe, train

    _keep_freed_memory()
    name, seed, run, recipe, overrides = job
    done = run / "row.json"  # a finished run's row (its training time included) is kept, not re-measured
    if done.is_file() and (run / "final" / "model.safetensors").is_file():
        return json.loads(done.read_text())
    config = load_recipe(recipe, overrides)
    tic = time.perf_counter()
    final = run / "final" if (run / "final" / "model.safetensors").is_file() else train(
        config, run, resume=True, progress=False)
    row = {"variant": name, "seed": seed, "train_seconds": round(time.perf_counter() - tic, 1), "model": str(final)}
    root = next(o.split("=", 1)[1] for o in overrides if o.startswith("root="))
    for protocol in PROTOCOLS:
        res = evaluate("toy_world", root, str(final), protocol, run / f"eval_{protocol}.json", progress=False,
                       print_table=False)
        row.update({f"{protocol}_{k}": res["metrics"][k] for k in KEYS})
    atomic_write_text(done, json.dumps(row) + "\n")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="an existing ToyWorld folder (with captions/)")
    parser.add_argument("--towers", type=Path, default=None, help="a pretraining run's final/ folder to start from")
    parser.add_argument("--start", type=Path, default=None,
                        help="a saved PartCLIPSeg model every CLIPSeg-family row starts from instead of the bare "
                             "towers, e.g. an object stage's final/ (recipe toy_world_objects: the toy CLIPSeg; the "
                             "baseline drops its object-specific part head)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=300, help="part-training steps per run")
    parser.add_argument("--pretrain-iterations", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline, numbers mean nothing")
    parser.add_argument("--partcatseg", action="store_true", help="add a PartCATSeg row (toy_world_partcatseg recipe)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="processing size of the PartCLIPSeg/CLIPSeg runs (default: the toy_world recipe's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each (2 on a 2-core machine)")
    args = parser.parse_args(argv)
    pretrain_overrides, size, catseg_size = [], [], []
    if args.smoke:
        args.iterations, args.batch_size, args.train_images, args.val_images = 2, 2, 6, 4
        args.seeds = args.seeds[:3]
        pretrain_overrides = ["iterations=2", "batch_size=4", "image_size=64", "checkpoint_period=2", "eval_period=2",
                              "warmup=1"]
        size = ["image_size=64"]
        catseg_size = ["min_size=64", "max_size=128", "crop_size=64", "pad_to=64"]
    elif args.pretrain_iterations is not None:
        pretrain_overrides = [f"iterations={args.pretrain_iterations}"]
    if args.image_size is not None and not args.smoke:
        size = [f"image_size={args.image_size}"]

    from partclipseg.cli import _keep_freed_memory
    from partclipseg.data.toyworld import generate_toy_world
    from partclipseg.io import atomic_write_text
    from partclipseg.train.pretrain import export_towers, load_pretrain_recipe, pretrain

    _keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = args.data
    if root is None:
        root = args.out / "data" / "ToyWorld"
        if not (root / "captions" / "val.json").is_file():
            generate_toy_world(root, n_train=args.train_images, n_val=args.val_images, overwrite=True,
                               size_range=(64, 96) if args.smoke else (320, 640), workers=2)
    towers = args.towers
    if towers is None:
        towers = args.out / "pretrain" / "final"
        if not (towers / "model.safetensors").is_file():
            pretrain(load_pretrain_recipe("toy_world_pretrain", [f"root={root}", *pretrain_overrides]),
                     args.out / "pretrain", resume=True, progress=False)
    inits = {arch: args.out / "init" / arch
             for arch in ("partclipseg", "clipseg", *(["partcatseg"] if args.partcatseg else []))}
    if args.start is not None:  # every CLIPSeg-family row from one trained model (as every paper row from CLIPSeg)
        inits.update(partclipseg=args.start, clipseg=args.start)
    for arch, folder in inits.items():
        if not (folder / "model.safetensors").is_file():
            export_towers(towers, folder, arch)

    variants = VARIANTS + ([PARTCATSEG_VARIANT] if args.partcatseg else [])
    jobs = []
    for name, arch, overrides in variants:
        for seed in args.seeds:
            run = args.out / "runs" / f"{name.split(' ')[0].lower()}{'_attn' if 'L_sep' in name else ''}" / f"seed{seed}"
            recipe, start = ("toy_world_partcatseg", [f"init={inits[arch]}", *catseg_size]) if arch == "partcatseg" \
                else ("toy_world", [f"init={inits[arch]}", *size, *PAPER_SUPERVISION])
            jobs.append((name, seed, run, recipe, [f"root={root}", f"seed={seed}", f"iterations={args.iterations}",
                                                   f"batch_size={args.batch_size}", f"eval_period={10 ** 9}",
                                                   f"checkpoint_period={args.iterations}", *start, *overrides]))
    # --jobs > 1: one thread per process (on a 2-core machine two 1-thread runs finish sooner than one
    # 2-thread run); a killed table (SIGTERM) takes its workers with it: leaving the with-block terminates
    # the pool
    if args.jobs > 1:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = []
    with (multiprocessing.get_context("spawn").Pool(args.jobs, initializer=_one_thread) if args.jobs > 1
          else contextlib.nullcontext()) as pool:
        for row in (pool.imap(run_one, jobs) if pool is not None else map(run_one, jobs)):
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary_rows = []
    for name, _, _ in variants:
        mine = [r for r in runs if r["variant"] == name]
        summary_rows.append({"variant": name, "seeds": [r["seed"] for r in mine],
                             **{f"{p}_{k}": summarise([r[f"{p}_{k}"] for r in mine]) for p in PROTOCOLS for k in KEYS}})
    table = markdown(summary_rows)
    summary = {"summary": summary_rows, "runs": runs, "total_seconds": round(time.perf_counter() - started, 1),
               "smoke": args.smoke, "iterations": args.iterations, "batch_size": args.batch_size,
               "seeds": args.seeds, "image_size": args.image_size, "jobs": args.jobs, "towers": str(towers),
               "start": None if args.start is None else str(args.start),
               "data": str(root)}
    atomic_write_text(args.out / "toy_table.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(args.out / "toy_table.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
