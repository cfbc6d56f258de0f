"""Copy toy-world validation images to examples/images (deterministic choice, small JPEGs).

One image per object class with parts (only that object in it) plus multi-object scenes, taken from a
toy world that no model was trained on (the default-model script's test set):

    python scripts/pick_examples.py runs/default_model/test/ToyWorld examples/images
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

from partclipseg.vocabulary import load_benchmark_info

SINGLES = [("bicycle",), ("bird",), ("bus",), ("car",), ("cat",), ("cow",), ("dog",), ("horse",)]
SCENES = [("car", "bus"), ("horse", "cat"), ("dog", "cow"), ("bicycle", "bird", "dog")]
QUALITY = 85  # JPEG quality of the copies (the toy world writes 95): 20-60 kB per image


def main(root: Path, out: Path) -> None:
    objects = load_benchmark_info("toy_world")["object_classes"]
    counts = json.loads((root / "annotations_detectron2_part" / "val_obj_label_count.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.jpg"):
        old.unlink()
    used = set()
    for wanted in SINGLES + SCENES:
        for name in sorted(counts):
            present = {objects[i] for i in counts[name]}
            if name not in used and present == set(wanted):
                used.add(name)
                target = out / f"{'_'.join(wanted)}.jpg"
                Image.open(root / "images" / "val" / name.replace(".png", ".jpg")).save(target, quality=QUALITY)
                print(f"{target} <- {name} ({', '.join(sorted(present))})")
                break
        else:
            print(f"no validation image holds exactly {', '.join(wanted)}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
