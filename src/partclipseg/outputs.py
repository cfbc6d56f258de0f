"""The files of one segmented image: rendered to bytes, then written atomically to an output store.

For an output name ``N`` (the image's path relative to its input folder, suffix kept, e.g.
``x/dog.jpg``) in the output root:

* ``N.labels.png`` — dataset-style label map (class k -> k, background 255, or uint16 with 65535);
* ``N.overlay.png`` — the image with coloured parts and a legend (unless disabled);
* ``N.attention.<k>.png`` — decoder attention heatmaps, when asked for;
* ``N.scores.npz`` — per-class score maps (float16), when asked for;
* ``N.json`` — classes, areas, scores (+ COCO RLE); written **last**, so its presence marks a
  complete output set (``--resume`` relies on it).

Every file is a deterministic function of the result (no timestamps), so equal predictions give
byte-identical outputs whichever engine wrote them.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from .io import json_text
from .result import PartSegmentation

OUTPUT_KINDS = ("labels.png", "overlay.png", "scores.npz", "json")  # + attention.<k>.png


def json_path(out_dir: Path, stem: str) -> Path:
    return Path(out_dir) / f"{stem}.json"


def outputs_complete(out_dir: Path, stem: str) -> bool:
    return json_path(out_dir, stem).is_file()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` (readable by ``np.load``) with fixed zip timestamps: equal arrays, equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def render_outputs(result: PartSegmentation, name: str, *, overlay: bool = True, scores: bool = False,
                   rle: bool = False, source: str | None = None, job: str | None = None,
                   input_file: dict | None = None) -> list[tuple[str, bytes]]:
    """``[(relative file name, bytes), ...]`` of one image's output set, the JSON last. ``job``: the
    segment job's key hash, kept in the JSON (``--resume`` trusts only outputs of the same job);
    ``input_file``: the input's ``{"bytes", "sha256"}`` (``--resume`` redoes an image replaced since)."""
    from .viz import encode_png, label_png_array

    base = name.rsplit("/", 1)[-1]
    files: list[tuple[str, bytes]] = []
    label_png = label_png_array(result.part_labels, result.background, len(result.vocabulary))
    files.append((f"{name}.labels.png", encode_png(label_png)))
    if overlay:
        files.append((f"{name}.overlay.png", encode_png(result.to_overlay())))
    attention_files = {}
    for k, class_name in enumerate(result.attention):
        files.append((f"{name}.attention.{k}.png", encode_png(result.attention_overlay(class_name))))
        attention_files[class_name] = f"{base}.attention.{k}.png"
    if scores:
        if result.part_scores is None:
            raise ValueError("scores were not computed: predict(..., return_scores=True)")
        arrays = {"part_scores": result.part_scores, "object_scores": result.object_scores}
        if result.generalized_part_scores is not None:
            arrays["generalized_part_scores"] = result.generalized_part_scores
        files.append((f"{name}.scores.npz",
                      npz_bytes({k: v.astype(np.float16) for k, v in arrays.items() if v is not None})))
    info = result.to_json(rle=rle)
    info["source"] = source
    if job is not None:
        info["job"] = job
    if input_file is not None:
        info["input_file"] = input_file
    # the PNG's background value (255, or 65535 for more than 255 classes); "background_label" above is
    # the in-memory label index (the number of classes)
    info["files"] = {"labels": f"{base}.labels.png", "labels_background": int(np.iinfo(label_png.dtype).max),
                     "overlay": f"{base}.overlay.png" if overlay else None,
                     "attention": attention_files, "scores": f"{base}.scores.npz" if scores else None}
    files.append((f"{name}.json", (json_text(info, indent=1) + "\n").encode("utf-8")))
    return files


def write_outputs(result: PartSegmentation, out_dir: str | Path, stem: str, *, overlay: bool = True,
                  scores: bool = False, rle: bool = False, source: str | None = None) -> list[Path]:
    """Write the output set of one image into a local folder; returns the written paths (JSON last)."""
    from .storage import LocalStore

    store = LocalStore(out_dir)
    written = []
    for name, data in render_outputs(result, stem, overlay=overlay, scores=scores, rle=rle, source=source):
        store.write_bytes(name, data)
        written.append(store.local_path(name))
    return written
