"""Named pretrained models: the registry, the download cache and name resolution.

``list_models()`` describes them; ``resolve_model(name_or_path)`` turns what a user typed into a local
folder (downloading, verifying and converting a named model on first use); ``download(name, to=None)``
fetches one ahead of time.
"""
from __future__ import annotations

from pathlib import Path

from .registry import MODELS, ModelEntry, format_table, get_entry, list_models
from .resolve import looks_like_path, resolve_model
from .store import cache_home, model_dir


def download(name: str, to: str | Path | None = None, progress: bool = True) -> Path:
    """Fetch named model ``name`` into the cache (and copy it to ``to``); returns the folder."""
    from ..errors import PartCLIPSegError
    from .fetch import ensure_model
    from .store import copy_model

    entry = get_entry(name)
    if entry is None:
        raise PartCLIPSegError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if entry.source == "builtin":
        from ..weights import DEFAULT_MODEL_DIR

        return DEFAULT_MODEL_DIR if to is None else copy_model(DEFAULT_MODEL_DIR, Path(to).expanduser(), name=name)
    folder = ensure_model(entry, progress=progress)
    return folder if to is None else copy_model(folder, Path(to).expanduser())


__all__ = ["MODELS", "ModelEntry", "list_models", "format_table", "get_entry", "resolve_model", "looks_like_path",
           "cache_home", "model_dir", "download"]
