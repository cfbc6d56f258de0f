"""Copy a few toy-world validation images to examples/images (deterministic choice).

    python scripts/pick_examples.py runs/default_model/data/ToyWorld examples/images
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from partclipseg.vocabulary import load_benchmark_info

WANTED = [("dog",), ("cow",), ("car", "bus"), ("horse", "cat"), ("bird",), ("bicycle",)]


def main(root: Path, out: Path) -> None:
    objects = load_benchmark_info("toy_world")["object_classes"]
    counts = json.loads((root / "annotations_detectron2_part" / "val_obj_label_count.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        old.unlink()
    used = set()
    for wanted in WANTED:
        for name in sorted(counts):
            present = {objects[i] for i in counts[name]}
            if name not in used and set(wanted) <= present and len(present) <= len(wanted) + 1:
                used.add(name)
                target = out / f"{'_'.join(wanted)}.jpg"
                shutil.copyfile(root / "images" / "val" / name.replace(".png", ".jpg"), target)
                print(f"{target} <- {name} ({', '.join(sorted(present))})")
                break


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
