"""Zero-shot object classification of toy language-image pretraining checkpoints on any toy-world split.

The pretraining run evaluates itself on its validation split's one-object images (96 of them in the
default model's world, so one image moves a per-object figure by 9-14 points); this script scores the
same towers on a larger split, e.g. the default model's 300-image test set:

    python scripts/pretrain_zero_shot.py --root runs/default_model/test/ToyWorld --split val \\
        runs/default_model/pretrain/checkpoints/step_0004000 [more checkpoint folders...] [--out F.json]

Each checkpoint is loaded with ``partclipseg.train.pretrain.towers_from_checkpoint`` (the run's
``config.json`` gives the towers' shape and input size). Prints one JSON line per checkpoint (``zero_shot_accuracy``'s fields).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="pretraining checkpoint folders (step_*)")
    parser.add_argument("--root", required=True, type=Path, help="a toy world (the folder holding captions/)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as one JSON file")
    args = parser.parse_args(argv)

    from partclipseg.data.toyworld import UNSEEN_OBJECTS
    from partclipseg.errors import PartCLIPSegError
    from partclipseg.train.pretrain import CaptionSampler, towers_from_checkpoint, zero_shot_accuracy

    results = {}
    try:
        for ckpt in args.checkpoints:
            config, towers = towers_from_checkpoint(ckpt)
            sampler = CaptionSampler(args.root, args.split, config, towers.config.image_mean, towers.config.image_std)
            results[str(ckpt)] = zero_shot_accuracy(towers, sampler, UNSEEN_OBJECTS)
            print(json.dumps({"checkpoint": str(ckpt), **results[str(ckpt)]}), flush=True)
    except PartCLIPSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        from partclipseg.io import atomic_write_text, json_text

        atomic_write_text(args.out, json_text({"root": str(args.root), "split": args.split, "results": results},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
