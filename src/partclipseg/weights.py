"""Weights I/O for users: loading, saving, CLIPSeg initialisation and the built-in default model.

* ``load_pretrained(path_or_hub_id)`` / ``save_pretrained(model, dir)``: our saved format (a folder
  with ``config.json`` + ``model.safetensors``), a hub id, or an official detectron2 ``.pth``
  (``PartSegmentationModel.from_pretrained`` / ``.save_pretrained`` do the same).
* ``init_from_clipseg`` starts a new model from a ``CIDAS/clipseg-rd64-refined``-style checkpoint with
  the official copies (SPEC §1.10).
* ``load_default_model`` is the model shipped in the package.

File reading and key conversion live in ``partclipseg.checkpoint`` (no model code); model assembly
in ``partclipseg.model.loading``. The names below are re-exported for existing callers.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import (CONFIG_NAME, OFFICIAL_PREFIXES, WEIGHTS_NAME, convert_official_state_dict, download_from_hub,
                         guess_architecture, load_state_dict_checked, looks_like_hub_id, map_official_key,
                         read_config_json, read_official, read_safetensors, read_torch_checkpoint, resolve_config,
                         strip_prefix)
from .config import from_official_config, get_config
from .errors import CheckpointError, ConfigError
from .hub.registry import BUILTIN_MODEL_DIR
from .hf_clipseg import merged_sub_config
from .model import PartSegmentationModel, build_model
from .model.loading import load_pretrained, save_pretrained


def load_official_checkpoint(path: str | os.PathLike, config=None) -> PartSegmentationModel:
    """An official detectron2 checkpoint (``model_final.pth``) -> model (SPEC §1.12)."""
    model_config, state = read_official(Path(path), config)
    model = build_model(model_config)
    load_state_dict_checked(model, state, str(path))
    return model


# ---------------------------------------------------------------------------- CLIPSeg start point
def init_from_clipseg(source: str | os.PathLike, architecture: str = "partclipseg",
                      image_size: int = 352) -> PartSegmentationModel:
    """A new model initialised from a CLIPSeg checkpoint in Hugging Face layout (SPEC §1.10).

    ``source``: a folder like ``CIDAS/clipseg-rd64-refined`` (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``) or that hub id. CLIP towers, FiLM, reduces, decoder layers and the class head
    are loaded; the modules CLIPSeg lacks are set up by the model (``init_from_clipseg_state``; for
    PartCLIPSeg the object-specific head's FiLM and mask head are copies of the decoder's FiLM and the
    class head; the visual adapter, the fusion layers and the non-object embedding keep their fresh
    initialisation).
    """
    path = Path(source)
    if not path.is_dir():
        if not looks_like_hub_id(str(source)):
            raise CheckpointError(f"CLIPSeg checkpoint not found: {source}")
        path = download_from_hub(str(source), patterns=(CONFIG_NAME, WEIGHTS_NAME, "pytorch_model.bin"))
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME} (expected a Hugging Face CLIPSeg folder)")
    hf_config = read_config_json(path / CONFIG_NAME)
    if "vision_config" not in hf_config and "vision_config_dict" not in hf_config:
        raise ConfigError(f"{path / CONFIG_NAME} is not a CLIPSeg config (no vision_config)")
    hf_config = dict(hf_config, vision_config=merged_sub_config(hf_config, "vision"),
                     text_config=merged_sub_config(hf_config, "text"))
    config = from_official_config(hf_config, image_size=image_size, architecture=architecture)
    if (path / WEIGHTS_NAME).is_file():
        raw = read_safetensors(path / WEIGHTS_NAME)
    elif (path / "pytorch_model.bin").is_file():
        raw = read_torch_checkpoint(path / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{path} has neither {WEIGHTS_NAME} nor pytorch_model.bin")
    model = build_model(config)
    model.init_from_clipseg_state(convert_official_state_dict(raw), str(path))
    return model


__all__ = ["save_pretrained", "load_pretrained", "load_official_checkpoint", "init_from_clipseg",
           "map_official_key", "convert_official_state_dict", "load_state_dict_checked", "strip_prefix",
           "read_safetensors", "read_torch_checkpoint", "guess_architecture", "resolve_config",
           "OFFICIAL_PREFIXES", "load_default_model", "default_model_available"]


# ---------------------------------------------------------------------------- built-in default
DEFAULT_MODEL_DIR = BUILTIN_MODEL_DIR  # the "toy" entry of the model registry


def default_model_available() -> bool:
    return (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file() and (DEFAULT_MODEL_DIR / WEIGHTS_NAME).is_file()


def load_default_model() -> PartSegmentationModel:
    """The model shipped in the package; while none is shipped, a tiny model with RANDOM weights
    (seed 0), with a warning that its masks mean nothing."""
    if default_model_available():
        return load_pretrained(DEFAULT_MODEL_DIR)
    import warnings

    warnings.warn("no trained default model is bundled yet: using a tiny model with RANDOM weights; its masks are "
                  "meaningless. Pass --model / model= with real weights.", UserWarning, stacklevel=2)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return build_model(get_config("tiny-fast")).eval()
    finally:
        torch.random.set_rng_state(generator_state)
