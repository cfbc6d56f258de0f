"""From what a user typed as a model to something loadable: the one place where names are resolved.

``resolve_model(source)`` returns a local ``Path`` (an existing file or folder; a named model's verified
cache folder, fetched first if needed; the built-in model's folder for ``"toy"``) or, for text that can
only be a Hugging Face repository id, that id as a ``str``. A value that looks like a path but names
nothing raises ``CheckpointError("no such file or folder: ...")`` instead of reaching the network.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError
from .registry import BUILTIN_MODEL_DIR, MODELS, get_entry

PATH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".json", ".ckpt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_path(text: str) -> bool:
    """Starts with ``.``, ``/`` or ``~``, ends in a checkpoint suffix, or has a first component that is an
    existing local folder (``converted/pascal_part_116`` when ``converted/`` exists)."""
    if text.startswith((".", "/", "~", "\\")) or text.lower().endswith(PATH_SUFFIXES):
        return True
    head = text.replace("\\", "/").split("/", 1)
    return len(head) == 2 and Path(head[0]).is_dir()


def hub_repo_entry(text: str):
    """The registry entry whose hub repository is ``text`` (``CIDAS/clipseg-rd64-refined``), if any."""
    return next((e for e in MODELS.values() if e.hub_repo and e.hub_repo == text), None)


def resolve_model(source: str | os.PathLike, progress: bool = True) -> Path | str:
    """See the module docstring."""
    if isinstance(source, Path) or not isinstance(source, str):
        path = Path(source).expanduser()
        if not path.exists():
            raise CheckpointError(f"no such file or folder: {source}")
        return path
    text = source.strip()
    if not text:  # Path("") is the current folder: never what an empty --model meant
        raise CheckpointError("the model is an empty name: give a named model, a folder or a checkpoint file")
    path = Path(text).expanduser()
    if path.exists():
        return path
    entry = get_entry(text) or hub_repo_entry(text)
    if entry is not None:
        if entry.source == "builtin":
            return BUILTIN_MODEL_DIR
        from .fetch import ensure_model

        return ensure_model(entry, progress=progress)
    if looks_like_path(text):
        raise CheckpointError(f"no such file or folder: {text}")
    if _HUB_ID.fullmatch(text):
        return text
    raise CheckpointError(f"unknown model {text!r}: no such file or folder, and not a named model (known: "
                          f"{', '.join(MODELS)}; see `partclipseg models`)")
