"""The work files of a resumable evaluation (``<out>.work/``), keyed on everything that changes the result.

``key.json`` in the work folder holds the *work key*: the model's identity (a SHA-256 of its config
and weights as evaluated), the protocol, dataset, dataset root, the evaluated files' fingerprint (paths,
sizes, modification times, annotations), GT handling, sample limit and dtype.
A run only continues work files with its own key; work of another run (an Oracle-Obj run after a
Pred-All one, another model, ...) is refused, or discarded with ``overwrite``. The results JSON
carries the same key, so a finished result of another run is not silently replaced either.

Each ``rank<R>.jsonl`` line is one finished sample: ``{"sample_id", "p", "g", "n"}`` (a sparse
confusion matrix) or ``{"sample_id", "skipped"}``. A torn last line (a kill during the write) is
ignored; any other unreadable line is an error naming the file and line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import OutputError, PartCLIPSegError
from .io import atomic_write_text, json_text

KEY_NAME = "key.json"


def model_fingerprint(model) -> str:
    """SHA-256 of a model's config and parameters (names, dtypes, shapes, bytes) as they are evaluated."""
    import torch

    digest = hashlib.sha256()
    digest.update(json_text(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(refs, root: str | Path) -> str:
    """SHA-256 of the evaluated samples as they are on disk: each sample's id, object and annotations, and
    the path (relative to the dataset folder ``root``), size and modification time of every file it reads.
    A dataset regenerated or relabelled in place changes it, so its samples are not mixed with work files
    of the old one; the same files reached by another path do not."""
    digest = hashlib.sha256()
    seen: set[str] = set()
    base = os.path.realpath(root)
    for ref in refs:
        digest.update(json_text({"id": ref.sample_id, "object": ref.object_id, "annotations": ref.annotations},
                                sort_keys=True).encode())
        for path in (ref.image_path, ref.label_path, ref.object_path):
            if path is None or str(path) in seen:
                continue
            seen.add(str(path))
            shown = os.path.relpath(os.path.realpath(path), base)
            try:
                st = os.stat(path)
                digest.update(f"{shown}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:  # reading the sample reports it
                digest.update(f"{shown}|missing".encode())
    return digest.hexdigest()


def work_key(*, model_source: Any, fingerprint: str, protocol: str, dataset: str, root: str | Path,
             gt_resize_quirk: bool, limit: int | None, dtype: Any, dataset_files: str | None = None) -> dict[str, Any]:
    """Everything that changes an evaluation's numbers (see the module docstring); ``dataset_files``:
    :func:`dataset_fingerprint` of the samples evaluated."""
    return {"model": str(model_source) if isinstance(model_source, (str, Path)) else None,
            "model_sha256": fingerprint, "protocol": protocol, "dataset": dataset,
            "root": str(Path(root).resolve()), "dataset_files": dataset_files,
            "gt_resize_quirk": bool(gt_resize_quirk), "limit": limit,
            "dtype": str(dtype).replace("torch.", "") if dtype is not None else "float32"}


def same_work(old: Any, new: dict) -> bool:
    """Keys equal in everything but the model's name (a moved model folder with the same weights is the same)
    and, for a key written before it was recorded (no ``dataset_files``), the dataset files' fingerprint."""
    if not isinstance(old, dict):
        return False
    ignored = {"model"} | ({"dataset_files"} if "dataset_files" not in old else set())
    return {k: v for k, v in old.items() if k not in ignored} == {k: v for k, v in new.items() if k not in ignored}


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in new if k != "model" and old.get(k) != new.get(k) and (k != "dataset_files" or k in old)]
    shown = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if k == "model_sha256":
            a, b = (str(a)[:12] if a else a), str(b)[:12]
            k = "model weights (sha256)"
        elif k == "dataset_files":
            a, b = (str(a)[:12] if a else a), (str(b)[:12] if b else b)
            k = "dataset files (sizes, times; regenerated or edited since)"
        shown.append(f"{k}: {a!r} -> {b!r}")
    return "; ".join(shown)


def prepare_work_dir(work_dir: Path, key: dict, overwrite: bool) -> None:
    """Create ``work_dir`` for ``key``, continue it when its key matches, else refuse (or wipe with ``overwrite``)."""
    work_dir = Path(work_dir)
    key_path = work_dir / KEY_NAME
    if work_dir.exists() and not work_dir.is_dir():
        raise OutputError(f"{work_dir} is a file; the evaluation needs that name for its work folder")
    if work_dir.is_dir() and any(work_dir.iterdir()):
        try:
            old = json.loads(key_path.read_text())
        except (OSError, ValueError):
            old = None
        if not same_work(old, key):
            if not overwrite:
                why = (_differences(old, key) if isinstance(old, dict) else "it has no readable key.json")
                raise OutputError(f"{work_dir} holds the work of another evaluation ({why}); pass --overwrite to "
                                  f"discard it, or choose another --out")
            shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not key_path.is_file():
        atomic_write_text(key_path, json_text(key, indent=1) + "\n")


def check_results_file(out: Path, key: dict, overwrite: bool) -> None:
    """Refuse to replace an existing results JSON of another evaluation unless ``overwrite``."""
    out = Path(out)
    if overwrite or not out.exists():
        return
    try:
        old = json.loads(out.read_text()).get("work_key")
    except (OSError, ValueError, AttributeError):
        old = None
    if not same_work(old, key):
        why = _differences(old, key) if isinstance(old, dict) else "it is not a result of this evaluation"
        raise OutputError(f"{out} already holds another result ({why}); pass --overwrite to replace it, or choose "
                          f"another --out")


def _check_record(record: Any, num_classes: int, where: str) -> dict:
    from .evaluation import from_sparse

    if not isinstance(record, dict) or not isinstance(record.get("sample_id"), str):
        raise PartCLIPSegError(f"{where}: malformed work record (needs a \"sample_id\" string)")
    if "skipped" not in record:
        try:
            from_sparse(record, num_classes)
        except ValueError as exc:
            raise PartCLIPSegError(f"{where}: malformed work record: {exc}") from None
    return record


def read_work(work_dir: Path, num_classes: int | None = None) -> dict[str, dict]:
    """sample_id -> record from every ``rank*.jsonl`` (a torn last line is ignored).

    Any other undecodable or malformed line raises ``PartCLIPSegError`` naming file and line; the
    records are checked against ``num_classes`` when given.
    """
    done: dict[str, dict] = {}
    for path in sorted(Path(work_dir).glob("rank*.jsonl")):
        data = path.read_bytes()
        lines = data.split(b"\n")
        complete = lines[:-1]  # the part after the last newline is a torn line (or empty)
        for number, raw in enumerate(complete, 1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise PartCLIPSegError(f"{where}: work file line is not UTF-8 text; pass --overwrite to start "
                                       f"the evaluation afresh") from None
            except json.JSONDecodeError as exc:
                raise PartCLIPSegError(f"{where}: work file line is not JSON ({exc.msg}); pass --overwrite to "
                                       f"start the evaluation afresh") from None
            if num_classes is not None:
                _check_record(record, num_classes, where)
            elif not (isinstance(record, dict) and isinstance(record.get("sample_id"), str)):
                raise PartCLIPSegError(f"{where}: malformed work record (needs a \"sample_id\" string)")
            done[record["sample_id"]] = record
    return done
