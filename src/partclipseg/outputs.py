"""Writing a ``PartSegmentation`` to disk: one output set per image, every file atomic.

For an output stem ``S`` in folder ``OUT``:

* ``S.labels.png`` — dataset-style label map (class k -> k, background 255, or uint16 with 65535);
* ``S.overlay.png`` — the image with coloured parts and a legend (unless disabled);
* ``S.attention.<k>.png`` — decoder attention heatmaps, when asked for;
* ``S.scores.npz`` — per-class score maps, when asked for;
* ``S.json`` — classes, areas, scores (+ COCO RLE); written **last**, so its presence marks a
  complete output set (``--resume`` relies on it).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes, atomic_write_text, json_text
from .result import PartSegmentation


def json_path(out_dir: Path, stem: str) -> Path:
    return Path(out_dir) / f"{stem}.json"


def outputs_complete(out_dir: Path, stem: str) -> bool:
    return json_path(out_dir, stem).is_file()


def write_outputs(result: PartSegmentation, out_dir: str | Path, stem: str, *, overlay: bool = True,
                  scores: bool = False, rle: bool = False, source: str | None = None) -> list[Path]:
    """Write the output set of one image; returns the written paths (JSON last)."""
    from .viz import write_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    labels_path = out_dir / f"{stem}.labels.png"
    result.to_label_png(labels_path)
    written.append(labels_path)
    if overlay:
        path = out_dir / f"{stem}.overlay.png"
        write_png(path, result.to_overlay())
        written.append(path)
    attention_files = {}
    for k, name in enumerate(result.attention):
        path = out_dir / f"{stem}.attention.{k}.png"
        write_png(path, result.attention_overlay(name))
        attention_files[name] = path.name
        written.append(path)
    if scores:
        if result.part_scores is None:
            raise ValueError("scores were not computed: predict(..., return_scores=True)")
        buffer = io.BytesIO()
        arrays = {"part_scores": result.part_scores, "object_scores": result.object_scores}
        if result.generalized_part_scores is not None:
            arrays["generalized_part_scores"] = result.generalized_part_scores
        np.savez_compressed(buffer, **{k: v.astype(np.float16) for k, v in arrays.items() if v is not None})
        path = out_dir / f"{stem}.scores.npz"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    info = result.to_json(rle=rle)
    info["source"] = source
    info["files"] = {"labels": labels_path.name, "overlay": f"{stem}.overlay.png" if overlay else None,
                     "attention": attention_files, "scores": f"{stem}.scores.npz" if scores else None}
    path = json_path(out_dir, stem)
    atomic_write_text(path, json_text(info, indent=1) + "\n")
    written.append(path)
    return written
