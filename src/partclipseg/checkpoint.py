"""Checkpoint files: reading, key conversion and "what is in this folder/file?" — no model code.

This module sits below ``partclipseg.model`` (it imports only the config): model assembly
(``PartSegmentationModel.from_pretrained``) is built on top of it.

* ``inspect_checkpoint(source)`` is the one answer to "what is at this path / hub id?" for every
  caller (loading, training initialisation, conversion): a saved partclipseg folder, a Hugging Face
  CLIPSeg folder, or an official ``.pth``/``.bin`` file.
* ``read_safetensors`` / ``read_torch_checkpoint`` read tensors safely (``torch.load`` with
  ``weights_only=True``; pickled code in an unknown file is never executed).
* ``map_official_key`` is the single table where official / Hugging Face CLIPSeg parameter names are
  translated to ours (timm-style checkpoint filter); ``convert_official_state_dict`` applies it.
* ``load_state_dict_checked`` copies a state dict into any ``nn.Module`` and refuses missing,
  unexpected or mis-shaped keys.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import PartCLIPSegConfig, get_config, read_config_file
from .errors import CheckpointError, ConfigError, DownloadError
from .io import atomic_path, atomic_write_text, json_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OFFICIAL_PREFIXES = {"partclipseg": "partclipseg_model.", "clipseg": "clipseg_model."}

# Official parameters that no output depends on (SPEC §8.2.13): dropped on conversion.
_IGNORED_OFFICIAL = re.compile(
    r"^(clip\.logit_scale|clip\.(text|vision)_model\.embeddings\.position_ids|clip\.vision_model\.post_layernorm\.\w+"
    r"|clip\.visual_projection\.weight|text_adapter\.fc\.\d\.weight|tunable_linear\.weight)$")

# (official pattern, our name); applied in order, first match wins.
_KEY_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in [
    (r"^clip\.vision_model\.embeddings\.patch_embedding\.weight$", "vision.patch_embed.weight"),
    (r"^clip\.vision_model\.embeddings\.class_embedding$", "vision.class_embedding"),
    (r"^clip\.vision_model\.embeddings\.position_embedding\.weight$", "vision.position_embedding"),
    (r"^clip\.vision_model\.pre_layrnorm\.(weight|bias)$", r"vision.pre_norm.\1"),
    (r"^clip\.text_model\.embeddings\.(token|position)_embedding\.weight$", r"text.\1_embedding.weight"),
    (r"^clip\.text_model\.final_layer_norm\.(weight|bias)$", r"text.final_norm.\1"),
    (r"^clip\.text_projection\.weight$", "text.projection.weight"),
    (r"^clip\.(vision|text)_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)$",
     r"\1.layers.\2.attn.\3_proj.\4"),
    (r"^clip\.(vision|text)_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)$", r"\1.layers.\2.norm\3.\4"),
    (r"^clip\.(vision|text)_model\.encoder\.layers\.(\d+)\.mlp\.fc([12])\.(weight|bias)$", r"\1.layers.\2.mlp.fc\3.\4"),
    (r"^visual_adapter\.fc\.0\.weight$", "visual_adapter.down.weight"),
    (r"^visual_adapter\.fc\.2\.weight$", "visual_adapter.up.weight"),
    (r"^non_object_embedding$", "non_object_embedding"),
    (r"^decoder\.film_(mul|add)\.(weight|bias)$", r"decoder.film_\1.\2"),
    (r"^decoder\.reduces\.(\d+)\.(weight|bias)$", r"decoder.reduces.\1.\2"),
    (r"^decoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)$", r"decoder.layers.\1.attn.\2_proj.\3"),
    (r"^decoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)$", r"decoder.layers.\1.norm\2.\3"),
    (r"^decoder\.layers\.(\d+)\.mlp\.fc([12])\.(weight|bias)$", r"decoder.layers.\1.fc\2.\3"),
    (r"^decoder\.transposed_convolution\.(\d)\.(weight|bias)$", r"class_head.\1.\2"),
    (r"^decoder\.transposed_convolution\.(weight|bias)$", r"class_head.0.\1"),
    (r"^decoder\.part_obj_with_cond_embed\.(\d)\.(weight|bias)$", r"object_part_head.mask_head.\1.\2"),
    (r"^decoder\.part_obj_with_cond_embed\.(weight|bias)$", r"object_part_head.mask_head.0.\1"),
    (r"^decoder\.part_obj_mlp\.0\.(weight|bias)$", r"object_part_head.visual_fuse.\1"),
    (r"^decoder\.reduce_cond_embed\.(weight|bias)$", r"object_part_head.text_fuse.\1"),
    (r"^decoder\.cond_film_(mul|add)\.(weight|bias)$", r"object_part_head.film_\1.\2"),
]]


def map_official_key(key: str) -> str | None:
    """Official/HF CLIPSeg parameter name (prefix already stripped) -> ours; ``None`` if unused.

    Raises ``CheckpointError`` for a name that is neither mapped nor known to be unused.
    """
    if _IGNORED_OFFICIAL.match(key):
        return None
    for pattern, replacement in _KEY_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    raise CheckpointError(f"unexpected key {key!r} in checkpoint")


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a detectron2 meta-architecture prefix (``partclipseg_model.`` / ``clipseg_model.``)
    and a DDP ``module.`` prefix, if every key has it."""
    out = dict(state_dict)
    for prefix in ("module.", *OFFICIAL_PREFIXES.values()):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official PartCLIPSeg / CLIPSeg / HF CLIPSeg state dict -> our names (unused keys dropped).

    All unexpected keys are reported together in one ``CheckpointError``.
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in strip_prefix(state_dict).items():
        try:
            ours = map_official_key(key)
        except CheckpointError:
            unexpected.append(key)
            continue
        if ours is not None:
            out[ours] = value
    if unexpected:
        raise CheckpointError(f"{len(unexpected)} unexpected key(s) in checkpoint: {_names(unexpected)}")
    return out


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                            allow_missing: tuple[str, ...] = ()) -> list[str]:
    """Copy ``state_dict`` into ``model``; refuse missing, unexpected or mis-shaped keys.

    Keys starting with one of ``allow_missing`` may be absent; the absent ones are returned.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    tolerated = [k for k in missing if k.startswith(allow_missing)] if allow_missing else []
    missing = [k for k in missing if k not in tolerated]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} key(s) with the wrong shape (checkpoint vs model): {_names(mis_shaped)}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model config: " + "; ".join(problems))
    check_finite(state_dict, source)
    with torch.no_grad():
        for key, value in state_dict.items():
            expected[key].copy_(value.to(expected[key].dtype))
    return tolerated


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights with NaN or infinite values (``CheckpointError`` naming the tensors)."""
    bad = non_finite_tensors(state_dict)
    if bad:
        raise CheckpointError(f"checkpoint {source} has NaN or infinite values in {len(bad)} tensor(s): {_names(bad)}")


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------- reading files
def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``.pth``/``.bin``: ``ckpt["model"]`` (detectron2) or a bare state dict."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # pickle, zip and weights-only errors all end here
        reason = _unreadable_reason(exc)
        raise CheckpointError(
            f"cannot read checkpoint {path} safely (torch.load with weights_only=True): {reason}. Only tensor "
            f"checkpoints are loaded; pickled code is never executed.") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    return state


def _unreadable_reason(exc: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` failed. torch's own text on a weights-only
    failure goes on to suggest ``weights_only=False`` (which would run the file's pickled code); only
    its specific reason is kept."""
    text = str(exc)
    first_line = text.splitlines()[0] if text else ""
    if not first_line.startswith("Weights only load failed"):
        return f"{type(exc).__name__}: {first_line}"
    _, marker, rest = text.partition("WeightsUnpickler error:")
    detail = rest.strip().splitlines()[0].split(" Please ")[0].strip().rstrip(".") if marker and rest.strip() else ""
    if detail.startswith("Unsupported global"):
        return f"it holds pickled Python objects other than tensors ({detail})"
    return f"the file is damaged or not a tensor checkpoint ({detail or 'the unpickler refused it'})"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None


#: a key only official PartCATSeg checkpoints hold (its key table: model/partcatseg/weights.py)
PARTCATSEG_MARKER = "sem_seg_head.predictor.transformer.layers_specific_part."


def guess_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    if any(k.startswith(PARTCATSEG_MARKER) for k in keys):
        return "partcatseg"
    if any(k.startswith(OFFICIAL_PREFIXES["clipseg"]) for k in keys):
        return "clipseg"
    if any("part_obj" in k or "object_part_head" in k for k in keys):
        return "partclipseg"
    return "clipseg"


# ---------------------------------------------------------------------------- what is at a path
SAVED, HF_CLIPSEG, OFFICIAL = "partclipseg", "hf-clipseg", "official"


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``inspect_checkpoint`` found.

    * ``kind``: ``"partclipseg"`` (our saved folder: ``config.json`` with ``"format": "partclipseg"`` +
      ``model.safetensors``), ``"hf-clipseg"`` (a Hugging Face CLIPSeg folder: its ``config.json`` has
      ``vision_config``), or ``"official"`` (a ``.pth``/``.bin`` tensor file, e.g. detectron2's).
    * ``path``: the local folder or file (a hub id is downloaded first).
    """

    kind: str
    path: Path


def inspect_checkpoint(source: str | os.PathLike, *, download: bool = True,
                       patterns: tuple[str, ...] = ("config.json", "model.safetensors", "preprocessor_config.json")
                       ) -> CheckpointInfo:
    """What is at ``source`` (folder, file or, with ``download``, a hub id fetched with ``patterns``).

    Raises ``CheckpointError`` (or ``ConfigError`` for a malformed ``config.json``) with a one-line
    reason when it is none of the known kinds.
    """
    path = Path(source)
    if not path.exists():
        if not (download and looks_like_hub_id(str(source))):
            raise CheckpointError(f"model not found: {source} is neither a folder, a checkpoint file nor a hub id")
        path = download_from_hub(str(source), patterns)
    if path.is_file():
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path}: pass the folder that holds {WEIGHTS_NAME} and {CONFIG_NAME}")
        return CheckpointInfo(OFFICIAL, path)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME}; a saved model is a folder with {CONFIG_NAME} + "
                              f"{WEIGHTS_NAME}")
    raw = read_config_json(config_path)
    if raw.get("format") == "partclipseg":
        return CheckpointInfo(SAVED, path)
    if raw.get("model_type") == "clipseg" or "vision_config" in raw or "vision_config_dict" in raw:
        return CheckpointInfo(HF_CLIPSEG, path)  # transformers' CLIPSeg (legacy configs: *_config_dict)
    # let the config loader give its precise message
    PartCLIPSegConfig.load(config_path)
    raise CheckpointError(f"{config_path} is not a partclipseg or CLIPSeg config")  # pragma: no cover


def read_config_json(path: Path) -> dict:
    """The JSON object of a ``config.json``; ``ConfigError`` when it is not one (``config.read_config_file``)."""
    return read_config_file(Path(path), require_object=True)


def read_saved(path: Path) -> tuple[PartCLIPSegConfig, dict[str, torch.Tensor]]:
    """Config and state dict of a saved partclipseg folder."""
    config = PartCLIPSegConfig.load(path / CONFIG_NAME)
    if not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}")
    return config, read_safetensors(path / WEIGHTS_NAME)


def read_official(path: Path, config: PartCLIPSegConfig | str | os.PathLike | None = None
                  ) -> tuple[PartCLIPSegConfig, dict[str, torch.Tensor]]:
    """Config and converted state dict of an official checkpoint (which carries no config)."""
    raw = read_torch_checkpoint(path)
    architecture = guess_architecture(raw)
    cfg = resolve_config(config, architecture)
    if cfg.architecture != architecture:
        raise CheckpointError(f"{path} is a {architecture} checkpoint but the config says {cfg.architecture}")
    return cfg, convert_official_state_dict(raw)


def write_saved(state_dict: Mapping[str, torch.Tensor], config: PartCLIPSegConfig,
                directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` atomically (weights first)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        write_safetensors(state, tmp)
    atomic_write_text(directory / CONFIG_NAME, json_text(config.to_dict(), indent=2) + "\n")
    return directory


def write_safetensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``safetensors.save_file``, with its I/O failures (a full disk, ...) raised as ``OSError``."""
    try:
        save_file(dict(state), str(path), metadata={"format": "pt", "library": "partclipseg"})
    except OSError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for I/O errors
        match = re.search(r"os error (\d+)", str(exc))
        if match is None:
            raise
        code = int(match.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def resolve_config(config: PartCLIPSegConfig | str | os.PathLike | None, architecture: str) -> PartCLIPSegConfig:
    """The config for an official checkpoint: a config object, a preset name, or a JSON file (ours, or
    the official/HF format, which does not name the architecture). Default: the full rd64 shape."""
    if config is None:
        return get_config("clipseg-rd64-refined", architecture)
    if isinstance(config, PartCLIPSegConfig):
        return config
    if isinstance(config, str) and not Path(config).exists() and not config.endswith(".json"):
        return get_config(config, architecture)
    cfg = PartCLIPSegConfig.load(config)
    raw = json.loads(Path(config).read_text())
    if raw.get("format") != "partclipseg":  # official configs do not name the architecture
        cfg.architecture = architecture
    return cfg


# ---------------------------------------------------------------------------- hub
def looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not os.path.exists(text)


def download_from_hub(repo_id: str, patterns: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except Exception as exc:
        raise DownloadError(f"no such file or folder: {repo_id}, and it could not be fetched as a Hugging Face hub "
                            f"repository either ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); offline? pass a local folder (see "
                            f"`partclipseg models` and `partclipseg download NAME --to DIR`)") from None
