"""Model assembly from checkpoint files: ``checkpoint`` reads and converts, the registry builds.

``load_pretrained`` backs ``PartSegmentationModel.from_pretrained``; ``save_pretrained`` backs
``save_pretrained``. This module imports no model class: the registry names the class.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (HF_CLIPSEG, OFFICIAL, inspect_checkpoint, load_state_dict_checked, read_official,
                          read_saved, write_saved)
from ..config import PartCLIPSegConfig
from ..hf_clipseg import read_hf_clipseg
from .registry import build_model


def load_pretrained(source: str | os.PathLike, *, config: PartCLIPSegConfig | str | os.PathLike | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """Load a model (in eval mode) from a named model (``partclipseg models``), a saved folder, a
    Hugging Face CLIPSeg folder, a hub id, or an official ``.pth`` checkpoint.

    ``config`` is only used for official checkpoints, which carry none: a ``PartCLIPSegConfig``, a
    preset name, or a JSON file (ours or the official/HF config format). Default: the full
    CLIPSeg-rd64-refined shape.
    """
    from ..hub.resolve import resolve_model
    from ..hub.store import MANIFEST, verify

    resolved = resolve_model(source)  # named models are fetched / verified; a missing path is refused by name
    if not isinstance(resolved, str) and resolved.is_dir() and (resolved / MANIFEST).is_file():
        verify(resolved)  # a folder from the cache or `partclipseg download --to`: sizes and sha256 re-checked
    info = inspect_checkpoint(resolved)
    if info.kind == HF_CLIPSEG:
        model_config, state = read_hf_clipseg(info.path)
        where = str(info.path)
    elif info.kind == OFFICIAL:
        model_config, state = read_official(info.path, config)
        where = str(info.path)
    else:
        model_config, state = read_saved(info.path)
        where = str(Path(info.path) / "model.safetensors")
    model = build_model(model_config)
    load_state_dict_checked(model, state, where)
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def save_pretrained(model: Any, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (tensors as stored in the model) into ``directory``."""
    return write_saved(model.state_dict(), model.config, directory)
