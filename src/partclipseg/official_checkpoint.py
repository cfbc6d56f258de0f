"""Official checkpoints of every architecture -> (config, our state dict), without building a model.

``read_official_any`` reads a ``.pth`` once and dispatches on ``checkpoint.guess_architecture``: the
CLIPSeg family's key table is ``checkpoint.map_official_key``, PartCATSeg's is
``model/partcatseg/weights.map_official_partcatseg_key`` (imported lazily, with its config class; no
model class is imported). Used by ``model.loading.load_pretrained``, ``weights.load_official_checkpoint``
and the hub's download-and-convert.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import convert_official_state_dict, guess_architecture, read_torch_checkpoint, resolve_config
from .errors import CheckpointError


def read_official_partcatseg(raw: dict[str, torch.Tensor], path: Path, config: Any
                             ) -> tuple[Any, dict[str, torch.Tensor]]:
    """Config (``config``: a ``PartCATSegConfig``, a preset name, a JSON file; default ``partcatseg-voc``)
    and converted state dict of an official PartCATSeg ``.pth`` (key table: ``partcatseg/weights.py``)."""
    from .model.partcatseg.config import PartCATSegConfig, get_partcatseg_config  # no model class: a config and
    from .model.partcatseg.weights import convert_official_partcatseg_state_dict  # the key table (lazy: no cycle)

    if config is None:
        config = get_partcatseg_config("partcatseg-voc")
    elif isinstance(config, (str, os.PathLike)):
        looks_like_file = Path(config).exists() or str(config).endswith(".json")
        config = PartCATSegConfig.load(config) if looks_like_file else get_partcatseg_config(str(config))
    if not isinstance(config, PartCATSegConfig):
        raise CheckpointError(f"{path} is a PartCATSeg checkpoint but the config is a {type(config).__name__}")
    return config, convert_official_partcatseg_state_dict(raw)


def read_official_any(path: Path, config: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """An official checkpoint of any architecture (PartCATSeg's keys are recognised by ``guess_architecture``)."""
    raw = read_torch_checkpoint(path)  # read once: official files are large
    architecture = guess_architecture(raw)
    if architecture == "partcatseg":
        return read_official_partcatseg(raw, path, config)
    cfg = resolve_config(config, architecture)
    if cfg.architecture != architecture:
        raise CheckpointError(f"{path} is a {architecture} checkpoint but the config says {cfg.architecture}")
    return cfg, convert_official_state_dict(raw)
