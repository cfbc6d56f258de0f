"""Part-training step time before and after session 21's two speed changes, measured side by side.

``before``: the whole text token table trains (a dense [49408, 64] gradient, AdamW update and norm every
step) and DDP uses its default gradient buckets; ``after`` (the code as it is): only the prompts' rows of
the table train (``train/token_rows.py``, the same weights bit for bit) and DDP on CPU averages every
gradient in one bucket after the backward. Each measurement is a fresh ``torchrun`` of ``--procs``
processes, one thread each, as ``scripts/make_default_model.sh`` runs part training (``THREADS=1
PROCS=2``), on the shipped toy_world recipe; ``train_step`` only (ten batches loaded first and reused),
median over the steps after ``--warmup``. The variants alternate ``--repeats`` times, so that a slow
spell of a shared machine does not fall on one of them:

    python benchmarks/bench_train_step.py --data runs/default_model/data/ToyWorld \\
        --init runs/default_model/pretrain/final --out benchmarks/results/bench_train_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("before", "after")


def worker(args: argparse.Namespace) -> None:
    import torch

    from partclipseg.cli import _keep_freed_memory
    from partclipseg.train import load_recipe
    from partclipseg.train import loop

    _keep_freed_memory()
    if args.variant == "before":
        loop.TrainedTokenRows.attach = classmethod(lambda cls, model, ids: None)
        loop._ddp_buckets = lambda model, device: {}
    config = load_recipe("toy_world", [f"root={args.data}", f"init={args.init}", f"iterations={10 ** 6}",
                                       f"eval_period={10 ** 9}", f"checkpoint_period={10 ** 9}"])
    config.validate()
    with tempfile.TemporaryDirectory() as tmp:
        run = loop.setup(config, Path(tmp) / "run", False, False)
        run.model.train()
        batches = [batch for _, batch in zip(range(10), run.loader)]
        seconds = []
        for step in range(args.warmup + args.steps):
            tic = time.perf_counter()
            loop.train_step(run, step, batches[step % len(batches)])
            seconds.append(time.perf_counter() - tic)
        if run.info.is_main:
            print("RESULT " + json.dumps({"median_s": statistics.median(seconds[args.warmup:]),
                                          "mean_s": statistics.mean(seconds[args.warmup:])}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def measure(args: argparse.Namespace, variant: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="33554432",
               MALLOC_TRIM_THRESHOLD_="8589934592")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
           __file__, "--worker", "--variant", variant, "--data", args.data, "--init", args.init,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a toy world's ToyWorld folder")
    parser.add_argument("--init", required=True, help="the pretrained towers (PRETRAIN_RUN/final)")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            runs[variant].append(measure(args, variant))
            print(f"repeat {repeat} {variant}: {runs[variant][-1]['median_s']:.4f} s a step", flush=True)
    batch = 4  # the recipe's batch, split over the processes
    summary = {}
    for variant, results in runs.items():
        median = statistics.median(r["median_s"] for r in results)
        summary[variant] = {"median_step_s": round(median, 4), "images_per_s": round(batch / median, 2),
                            "per_repeat_median_s": [round(r["median_s"], 4) for r in results]}
    summary["speedup"] = round(summary["before"]["median_step_s"] / summary["after"]["median_step_s"], 3)
    record = {"benchmark": "bench_train_step", "machine": platform.processor() or platform.machine(),
              "cpu": _cpu_name(), "procs": args.procs, "threads_per_proc": 1, "steps": args.steps,
              "warmup": args.warmup, "repeats": args.repeats, "recipe": "toy_world (batch 4, 192 px)",
              **summary}
    text = json.dumps(record, indent=1)
    print(text)
    if args.out:
        from partclipseg.io import atomic_write_text

        atomic_write_text(Path(args.out), text + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
