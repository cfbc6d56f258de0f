"""Plain CLIPSeg models in Hugging Face layout (``CLIPSegForImageSegmentation``): config and weights.

Sits beside ``checkpoint`` (no model code): ``read_hf_clipseg(folder)`` gives a config for the package's
``clipseg`` architecture and the converted state dict; ``model.loading`` assembles the model.

A folder written by ``transformers`` (``config.json`` with ``model_type: clipseg`` + ``model.safetensors``
or ``pytorch_model.bin``, optionally ``preprocessor_config.json``) becomes a model of this package:

* the parameter names go through the one official/HF key mapping, ``checkpoint.convert_official_state_dict``;
* every ``CLIPSegConfig`` option that changes the computation is honoured: tower widths, depths, heads,
  MLP sizes, layer-norm eps (the decoder takes the vision tower's, as ``transformers`` does),
  ``extract_layers``, ``reduce_dim``, ``decoder_num_attention_heads``, ``decoder_intermediate_size``,
  ``conditional_layer``, ``use_complex_transposed_convolution``, native image size and patch size,
  ``projection_dim``, text ``vocab_size``/``max_position_embeddings``; the end-of-text rule
  (``eos_token_id == 2``: largest id, as the legacy configs; otherwise the first ``eos_token_id``,
  which is the same position when it is the largest id of the vocabulary);
* options it cannot honour are refused by name (``ConfigError``): a vision/text ``hidden_act`` other than
  ``quick_gelu``, ``num_channels != 3``, a non-square ``image_size``/``patch_size``, an ``eos_token_id``
  that is neither 2 nor ``vocab_size - 1``, a ``conditional_layer`` outside the decoder (``transformers``
  then silently never conditions), a patch size that is not a multiple of 4 with the complex head.
  ``decoder_hidden_act`` is ignored because ``transformers`` forces ReLU in the decoder; dropout options
  do not change inference.

The model has no visual adapter and no learned background (``visual_adapter=False``,
``background="none"``): each prompt is an independent mask, as in ``transformers``; the Predictor adds
a constant 0-logit background row so that its label map marks pixels where no prompt passes 0.5.
The processing size and normalisation come from ``preprocessor_config.json`` when present (352 and the
ImageNet mean/std of the CLIPSeg processor otherwise).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import convert_official_state_dict, read_safetensors, read_torch_checkpoint
from .config import PartCLIPSegConfig, from_official_config
from .errors import CheckpointError, ConfigError

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CLIPSEG_PROCESSING_SIZE = 352


def merged_sub_config(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``text_config``/``vision_config`` with the legacy ``*_config_dict`` values on top (what
    ``transformers`` does for configs written before 4.27)."""
    base = dict(data.get(f"{name}_config") or {})
    base.update(data.get(f"{name}_config_dict") or {})
    return base


def _square(value: Any, field: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"unsupported {field} {value!r}: only square sizes are supported")
        value = value[0]
    return int(value)


def hf_clipseg_config(data: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> PartCLIPSegConfig:
    """HF ``CLIPSegConfig`` JSON (+ optional ``preprocessor_config.json``) -> our config, or a
    ``ConfigError`` naming the option that cannot be honoured."""
    vision, text = merged_sub_config(data, "vision"), merged_sub_config(data, "text")
    if int(vision.get("num_channels", 3)) != 3:
        raise ConfigError(f"unsupported vision_config.num_channels {vision['num_channels']} (RGB only)")
    vision["image_size"] = _square(vision.get("image_size", 224), "vision_config.image_size")
    vision["patch_size"] = _square(vision.get("patch_size", 32), "vision_config.patch_size")
    vocab_size = int(text.get("vocab_size", 49408))
    eos = text.get("eos_token_id", 49407)
    if isinstance(eos, list):
        eos = eos[0] if len(eos) == 1 else eos
    if eos not in (2, vocab_size - 1):
        raise ConfigError(f"unsupported text_config.eos_token_id {eos!r}: the text tower pools at the largest "
                          f"token id, which is the end-of-text token only when eos_token_id is 2 (legacy) or "
                          f"vocab_size - 1 ({vocab_size - 1})")
    layers = list(data.get("extract_layers", (3, 6, 9)))
    conditional = int(data.get("conditional_layer", 0))
    if not 0 <= conditional < len(layers):
        raise ConfigError(f"unsupported conditional_layer {conditional}: the decoder has {len(layers)} layers, so "
                          f"the prompt would never condition it")
    patch = vision["patch_size"]
    complex_head = bool(data.get("use_complex_transposed_convolution", False))
    if patch % 4:
        why = " (use_complex_transposed_convolution up-samples twice by patch/4)" if complex_head else ""
        raise ConfigError(f"unsupported vision_config.patch_size {patch}: must be a multiple of 4{why}")
    if complex_head and int(data.get("reduce_dim", 64)) % 2:
        raise ConfigError(f"unsupported reduce_dim {data['reduce_dim']}: the complex head halves it")
    flat = dict(data, vision_config=vision, text_config=text)
    flat.pop("vision_config_dict", None)
    flat.pop("text_config_dict", None)
    size, mean, std = _processing(preprocessor, vision["image_size"], patch)
    config = from_official_config(flat, image_size=size, architecture="clipseg")
    config.visual_adapter = False
    config.background = "none"
    if mean is not None:
        config.image_mean, config.image_std = mean, std
    config.validate()
    return config


def _processing(preprocessor: dict[str, Any] | None, native: int, patch: int):
    """Processing size and normalisation: the preprocessor's, else 352 (or the native size when 352 is
    not a multiple of the patch size) and the package default normalisation."""
    size, mean, std = None, None, None
    if preprocessor:
        raw = preprocessor.get("size")
        if isinstance(raw, dict):
            raw = raw.get("height", raw.get("shortest_edge"))
        if raw is not None:
            size = _square(raw, "preprocessor size")
        if preprocessor.get("image_mean") and preprocessor.get("image_std"):
            mean = tuple(float(x) for x in preprocessor["image_mean"])
            std = tuple(float(x) for x in preprocessor["image_std"])
    if size is None:
        size = CLIPSEG_PROCESSING_SIZE if CLIPSEG_PROCESSING_SIZE % patch == 0 else native
    if size % patch:
        size = max(patch, round(size / patch) * patch)
    return size, mean, std


def read_hf_clipseg(folder: str | Path) -> tuple[PartCLIPSegConfig, dict[str, torch.Tensor]]:
    """Config and converted state dict of a ``CLIPSegForImageSegmentation`` folder (``config.json`` +
    ``model.safetensors`` or ``pytorch_model.bin``, optional ``preprocessor_config.json``)."""
    folder = Path(folder)
    data = _read_json(folder / "config.json")
    preprocessor_path = folder / "preprocessor_config.json"
    preprocessor = _read_json(preprocessor_path) if preprocessor_path.is_file() else None
    config = hf_clipseg_config(data, preprocessor)
    weights = next((folder / n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} has neither {' nor '.join(HF_WEIGHT_FILES)}")
    raw = read_safetensors(weights) if weights.suffix == ".safetensors" else read_torch_checkpoint(weights)
    return config, convert_official_state_dict(raw)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data
