"""Named pretrained models: the registry, the download cache and name resolution.

``list_models()`` describes them; ``resolve_model(name_or_path)`` turns what a user typed into a local
folder (downloading, verifying and converting a named model on first use); ``download(name, to=None)``
fetches one ahead of time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .registry import MODELS, WEIGHT_FILES, ModelEntry, WeightFile, format_table, get_entry
from .resolve import looks_like_path, resolve_model
from .store import cache_home, is_cached, model_dir


def list_models() -> list[dict[str, Any]]:
    """One row per named model: name, architecture, trained_on, vocabulary, size, source, licence,
    paper, note and ``cached`` (whether it can be used without network now)."""
    return [{"name": e.name, "architecture": e.architecture, "trained_on": e.trained_on, "vocabulary": e.vocabulary,
             "size": e.size, "source": e.source_text, "url": e.url, "licence": e.licence, "paper": e.paper,
             "note": e.note, "cached": True if e.source == "builtin" else is_cached(e)} for e in MODELS.values()]


def download(name: str, to: str | Path | None = None, progress: bool = True) -> Path:
    """Fetch named model ``name`` (or foreign weight file, ``registry.WEIGHT_FILES``) into the cache (and
    copy it to ``to``); returns the folder."""
    from ..errors import PartCLIPSegError
    from .fetch import ensure_model
    from .store import copy_model

    entry = get_entry(name)
    if entry is None and name in WEIGHT_FILES:  # a training start file (``registry.WEIGHT_FILES``)
        from .fetch import ensure_weight_file

        folder = ensure_weight_file(WEIGHT_FILES[name], progress=progress).parent
        return folder if to is None else copy_model(folder, Path(to).expanduser())
    if entry is None:
        raise PartCLIPSegError(f"unknown model {name!r}; known: {', '.join([*MODELS, *WEIGHT_FILES])}")
    if entry.source == "builtin":
        from .registry import BUILTIN_MODEL_DIR

        return BUILTIN_MODEL_DIR if to is None else copy_model(BUILTIN_MODEL_DIR, Path(to).expanduser(), name=name)
    folder = ensure_model(entry, progress=progress)
    return folder if to is None else copy_model(folder, Path(to).expanduser())


__all__ = ["MODELS", "WEIGHT_FILES", "ModelEntry", "WeightFile", "list_models", "format_table", "get_entry", "resolve_model", "looks_like_path",
           "cache_home", "model_dir", "download"]
