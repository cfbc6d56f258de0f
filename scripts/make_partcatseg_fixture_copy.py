"""Make the small default copy of the PartCATSeg golden fixtures used by the test suite.

    python scripts/make_partcatseg_fixture_copy.py SRC_DIR [DST_DIR]

SRC_DIR is an official fixture folder (format ``partcatseg-reference-fixture/1``: config.json,
model/inputs/outputs/infer .safetensors, summary.json, keys_full.txt). DST_DIR defaults to
``tests/fixtures/reference/partcatseg/tiny``. The copy has the same format with less in it:

* ``model.safetensors``: every tensor, but the CLIP token-embedding rows that no fixture prompt
  uses are zeroed (they never enter any computation; git compresses them away);
* ``inputs.safetensors`` without the resized tower inputs (``*.clip_input``, ``*.dino_input``,
  exactly derivable from the padded images, which are kept);
* ``outputs.safetensors`` without ``head.costs.*_cost`` and ``dino.res2`` / ``dino.res3``;
* ``infer.safetensors`` without ``result.costs.*`` (the same tensors as ``head.costs`` of that call).

The reference tests compare whatever a folder holds, so they run unchanged on the full set.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TOKEN_KEY = "sem_seg_head.predictor.clip_model.token_embedding.weight"
DROP = {
    "inputs": lambda k: k.endswith((".clip_input", ".dino_input")),
    "outputs": lambda k: k in ("head.costs.part_obj_cost", "head.costs.specific_part_cost", "dino.res2", "dino.res3"),
    "infer": lambda k: k.startswith("result.costs."),
}


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "summary.json", "keys_full.txt"):
        shutil.copyfile(src / name, dst / name)
    inputs = load_file(str(src / "inputs.safetensors"))
    used = torch.cat([v.flatten() for k, v in inputs.items() if k.startswith("tokens.") and not k.endswith(".counts")])
    model = load_file(str(src / "model.safetensors"))
    keep = torch.zeros(model[TOKEN_KEY].shape[0], dtype=torch.bool)
    keep[used.unique()] = True
    model[TOKEN_KEY] = model[TOKEN_KEY] * keep[:, None].to(model[TOKEN_KEY].dtype)
    save_file(model, str(dst / "model.safetensors"))
    for stem, drop in DROP.items():
        tensors = inputs if stem == "inputs" else load_file(str(src / f"{stem}.safetensors"))
        save_file({k: v.contiguous() for k, v in tensors.items() if not drop(k)}, str(dst / f"{stem}.safetensors"))
    print(f"wrote {dst}: {int(keep.sum())} of {keep.numel()} token rows kept")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else
         Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference" / "partcatseg" / "tiny")
