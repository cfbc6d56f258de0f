"""Pick the best periodic checkpoint of a training run by validation harmonic mIoU.

``partclipseg train`` evaluates every ``eval_period`` steps and appends
``{"step", "eval", "seen", "unseen", "harmonic"}`` lines to ``metrics.jsonl``; checkpoints live in
``checkpoints/step_XXXXXXX/`` (keep enough of them, ``keep_checkpoints``, for the best to survive).

    python -m partclipseg.train.select RUN --out DIR   # copies config.json + model.safetensors of the best
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from ..errors import CheckpointError
from ..io import atomic_path, atomic_write_text, json_text

__all__ = ["best_checkpoint", "main"]


def best_checkpoint(run_dir: str | Path) -> tuple[Path, dict]:
    """(checkpoint folder, its evaluation record) with the highest harmonic mIoU among the
    evaluations whose checkpoint still exists; ties go to the higher seen + unseen, then the later step."""
    run_dir = Path(run_dir)
    records = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "harmonic" in record and "step" in record:
                folder = run_dir / "checkpoints" / f"step_{int(record['step']):07d}"
                if (folder / "model.safetensors").is_file():
                    records.append((folder, record))
    if not records:
        raise CheckpointError(f"{run_dir}: no evaluated checkpoint (metrics.jsonl evaluations with a kept checkpoint)")

    def key(item):
        r = item[1]
        return (r["harmonic"] or 0.0, (r["seen"] or 0.0) + (r["unseen"] or 0.0), r["step"])

    return max(records, key=key)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m partclipseg.train.select", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a partclipseg train run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the best model (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    try:
        folder, record = best_checkpoint(args.run)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        with atomic_path(args.out / name) as tmp:
            shutil.copyfile(folder / name, tmp)
    atomic_write_text(args.out / "selected.json", json_text({"checkpoint": str(folder), **record}, indent=1) + "\n")
    print(json_text({"checkpoint": str(folder), **record}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
