"""Model assembly from checkpoint files: ``checkpoint`` reads and converts, the registry builds.

``load_pretrained`` backs ``PartSegmentationModel.from_pretrained``; ``save_pretrained`` backs
``save_pretrained``. This module imports no model class: the registry names the class.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (CONFIG_NAME, HF_CLIPSEG, OFFICIAL, WEIGHTS_NAME, inspect_checkpoint, load_state_dict_checked,
                          read_config_json, read_safetensors, write_saved)
from ..config import PartCLIPSegConfig
from ..errors import CheckpointError, ConfigError
from ..hf_clipseg import read_hf_clipseg
from ..official_checkpoint import read_official_any
from .registry import architecture_class, build_model


def read_saved_any(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """Config and state dict of a saved folder of any registered architecture: the config class is the
    one registered for the config's ``architecture`` (CLIPSeg family) or ``model_type`` (PartCATSeg)."""
    raw = read_config_json(path / CONFIG_NAME)
    name = raw.get("architecture", raw.get("model_type", "partclipseg"))
    if not isinstance(name, str):
        raise ConfigError(f"{path / CONFIG_NAME}: architecture must be a string, got {name!r}")
    config_class = architecture_class(name).config_class
    try:
        config = config_class.load(path / CONFIG_NAME)
    except ConfigError as exc:
        where = str(path / CONFIG_NAME)
        raise ConfigError(str(exc) if where in str(exc) else f"{where}: {exc}") from None
    if not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}")
    return config, read_safetensors(path / WEIGHTS_NAME)


def load_pretrained(source: str | os.PathLike, *, config: PartCLIPSegConfig | str | os.PathLike | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """Load a model (in eval mode) from a named model (``partclipseg models``), a saved folder, a
    Hugging Face CLIPSeg folder, a hub id, or an official ``.pth`` checkpoint.

    ``config`` is only used for official checkpoints, which carry none: a ``PartCLIPSegConfig``, a
    preset name, or a JSON file (ours or the official/HF config format). Default: the full
    CLIPSeg-rd64-refined shape.
    """
    from ..dist import resolve_device
    from ..hub.resolve import resolve_model
    from ..hub.store import MANIFEST, verify

    if device is not None:  # a device that is not there: one line before anything is read or fetched
        resolve_device(device, option="device=")
    resolved = resolve_model(source)  # named models are fetched / verified; a missing path is refused by name
    if not isinstance(resolved, str) and resolved.is_dir() and (resolved / MANIFEST).is_file():
        verify(resolved)  # a folder from the cache or `partclipseg download --to`: sizes and sha256 re-checked
    info = inspect_checkpoint(resolved)
    if info.kind == HF_CLIPSEG:
        model_config, state = read_hf_clipseg(info.path)
        where = str(info.path)
    elif info.kind == OFFICIAL:
        model_config, state = read_official_any(info.path, config)
        where = str(info.path)
    else:
        model_config, state = read_saved_any(info.path)
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
