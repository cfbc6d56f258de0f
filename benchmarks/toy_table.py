"""The paper's ablation table in miniature, on the toy world (CPU).

Trains, with the same budget each, (1) the CLIPSeg baseline, (2) PartCLIPSeg without the attention
losses and (3) PartCLIPSeg with L_sep + L_enh, all from scratch in the ``toy`` config, then evaluates
each on the toy world's validation split with Pred-All and Oracle-Obj. Prints one JSON line per
variant and writes ``toy_table.json`` and ``toy_table.md`` (Seen / Unseen / Harmonic mIoU).

    python benchmarks/toy_table.py --out runs/toy_table               # about 20 minutes on 2 cores
    python benchmarks/toy_table.py --out /tmp/toy_smoke --smoke       # seconds: the pipeline only

The toy world is generated into ``OUT/data`` unless ``--data`` points at an existing one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

VARIANTS = [
    ("CLIPSeg baseline", ["architecture=clipseg", "loss.use_attention=false"]),
    ("PartCLIPSeg (no attention losses)", ["loss.use_attention=false"]),
    ("PartCLIPSeg + L_sep + L_enh", ["loss.use_attention=true"]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="an existing ToyWorld folder")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline, numbers mean nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iterations, args.batch_size, args.train_images, args.val_images = 4, 2, 6, 4

    from partclipseg.cli import _keep_freed_memory
    from partclipseg.data.toyworld import generate_toy_world
    from partclipseg.eval_runner import evaluate
    from partclipseg.io import atomic_write_text
    from partclipseg.train import load_recipe, train

    _keep_freed_memory()
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.data or generate_toy_world(args.out / "data", n_train=args.train_images, n_val=args.val_images,
                                           overwrite=True)
    rows = []
    started = time.perf_counter()
    for name, overrides in VARIANTS:
        run = args.out / name.split(" ")[0].lower().replace("+", "") / ("attn" if "L_sep" in name else "plain")
        config = load_recipe("toy_world", [f"root={root}", f"iterations={args.iterations}",
                                           f"batch_size={args.batch_size}", f"eval_period={10 ** 9}",
                                           f"checkpoint_period={args.iterations}", *overrides])
        tic = time.perf_counter()
        final = run / "final" if (run / "final" / "model.safetensors").is_file() else train(
            config, run, resume=(run / "config.json").is_file(), progress=False)
        train_s = time.perf_counter() - tic
        results = {}
        for protocol in ("pred-all", "oracle-obj"):
            res = evaluate("toy_world", root, str(final), protocol, run / f"eval_{protocol}.json", progress=False,
                           print_table=False)
            results[protocol] = res["metrics"]
        row = {"variant": name, "train_seconds": round(train_s, 1), "iterations": args.iterations,
               "batch_size": args.batch_size, "model": str(final),
               **{f"{p}_{k}": results[p][k] for p in results for k in ("mIoU-base", "mIoU-unbase", "h-IoU")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| Variant | Pred-All Seen | Pred-All Unseen | Pred-All Harmonic | Oracle-Obj Seen | Oracle-Obj Unseen | "
             "Oracle-Obj Harmonic |", "|---|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(fmt(r[f"{p}_{k}"]) for p in ("pred-all", "oracle-obj")
                                                         for k in ("mIoU-base", "mIoU-unbase", "h-IoU")) + " |")
    table = "\n".join(lines) + "\n"
    summary = {"rows": rows, "total_seconds": round(time.perf_counter() - started, 1), "smoke": args.smoke,
               "train_images": args.train_images, "val_images": args.val_images}
    atomic_write_text(args.out / "toy_table.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(args.out / "toy_table.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
