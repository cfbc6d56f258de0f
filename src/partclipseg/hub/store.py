"""The model cache: ``$PARTCLIPSEG_HOME/models/<name>/`` (default ``~/.cache/partclipseg``).

A cached model is a folder with the model files and ``manifest.json``, written **last**: a folder
without a manifest is never loaded (a killed download or conversion leaves nothing a load would take).
The manifest records the byte count and sha256 of every model file (and of the original download);
each later load re-checks them and refuses a changed or truncated file, naming it.

Work on one model holds ``<name>.lock`` (``filelock``), so two processes fetching the same model wait
for each other instead of writing the same files; the second finds the first one's result.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from ..errors import CheckpointError
from ..io import atomic_write_text, json_text
from .registry import ModelEntry

MANIFEST = "manifest.json"
HOME_ENV = "PARTCLIPSEG_HOME"


def cache_home() -> Path:
    """``$PARTCLIPSEG_HOME``, else ``~/.cache/partclipseg``."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "partclipseg"


def model_dir(entry: ModelEntry | str) -> Path:
    name = entry if isinstance(entry, str) else entry.name
    return cache_home() / "models" / name


def weights_dir(name: str) -> Path:
    """The cache folder of foreign weight file ``name`` (``registry.WEIGHT_FILES``)."""
    return cache_home() / "weights" / name


def lock_for(folder: Path):
    """An inter-process lock beside ``folder`` (``<folder>.lock``)."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.parent / f"{folder.name}.lock"))


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def write_manifest(folder: Path, files: Iterable[str], **info: Any) -> dict[str, Any]:
    """Hash ``files`` (names inside ``folder``) and write the manifest (atomically, last)."""
    manifest = dict(info, files={name: file_record(folder / name) for name in files})
    atomic_write_text(folder / MANIFEST, json_text(manifest, indent=1) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is damaged (not JSON); delete {folder} and fetch the model again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path} is damaged (no file list); delete {folder} and fetch the model again")
    return manifest


def verify(folder: Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-check the byte count and sha256 of every file the manifest lists; ``CheckpointError`` names
    the first changed, truncated or missing file."""
    manifest = manifest if manifest is not None else read_manifest(folder)
    if manifest is None:
        raise CheckpointError(f"{folder} has no {MANIFEST}: not a complete model folder")
    again = f"delete {folder} and fetch it again (partclipseg download {manifest.get('name', '<name>')})"
    for name, record in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"model file {path} is missing; {again}")
        size = path.stat().st_size
        if size != record["bytes"]:
            state = "truncated" if size < record["bytes"] else "changed"
            raise CheckpointError(f"model file {path} is {state}: {size} bytes, {record['bytes']} recorded when it "
                                  f"was downloaded; {again}")
        if sha256_of(path) != record["sha256"]:
            raise CheckpointError(f"model file {path} was changed since it was downloaded (sha256 differs from the "
                                  f"recorded {record['sha256'][:16]}...); {again}")
    return manifest


def is_cached(entry: ModelEntry) -> bool:
    """A complete manifest exists (cheap: no hashing)."""
    try:
        return read_manifest(model_dir(entry)) is not None
    except CheckpointError:
        return False


def copy_model(folder: Path, target: Path, name: str | None = None) -> Path:
    """Copy a model folder's files (manifest last) into ``target`` (created if needed; it must not hold
    other model files). A folder without a manifest (the built-in model) gets one written for it."""
    manifest = verify(folder) if read_manifest(folder) is not None else None
    names = list(manifest["files"]) if manifest else [n for n in ("config.json", "model.safetensors")
                                                      if (folder / n).is_file()]
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"--to {target} is a file, not a folder; give a new or empty folder")
    target.mkdir(parents=True, exist_ok=True)
    existing = [n for n in (*names, MANIFEST) if (target / n).exists()]
    if existing and (manifest is None or read_manifest(target) != manifest):
        raise CheckpointError(f"{target} already holds model files ({', '.join(existing)}); choose an empty "
                              f"folder")
    for file_name in names:
        tmp = target / f".{file_name}.copying"
        shutil.copyfile(folder / file_name, tmp)
        os.replace(tmp, target / file_name)
    if manifest is None:
        write_manifest(target, names, name=name, source="package")
    else:
        atomic_write_text(target / MANIFEST, json_text(manifest, indent=1) + "\n")
    return target
