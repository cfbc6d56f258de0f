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
from ..errors import CheckpointError
from .registry import build_model


def load_pretrained(source: str | os.PathLike, *, config: PartCLIPSegConfig | str | os.PathLike | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """Load a model (in eval mode) from a saved folder, a hub id, or an official ``.pth`` checkpoint.

    ``config`` is only used for official checkpoints, which carry none: a ``PartCLIPSegConfig``, a
    preset name, or a JSON file (ours or the official/HF config format). Default: the full
    CLIPSeg-rd64-refined shape.
    """
    info = inspect_checkpoint(source)
    if info.kind == HF_CLIPSEG:
        raise CheckpointError(f"{info.path} holds a Hugging Face CLIPSeg model, not a PartCLIPSeg one; start "
                              f"training from it with init_from_clipseg() instead")
    if info.kind == OFFICIAL:
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
