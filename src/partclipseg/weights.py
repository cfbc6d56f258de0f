"""Weights I/O: our saved-model format, official PartCLIPSeg checkpoints, CLIPSeg initialisation.

* ``save_pretrained(model, dir)`` writes ``config.json`` + ``model.safetensors`` atomically.
* ``load_pretrained(path_or_hub_id)`` reads that format from a folder or the Hugging Face hub, or an
  official detectron2 ``.pth`` (``{"model": {"partclipseg_model.<key>": tensor}}``).
* ``map_official_key`` is the single place where official / Hugging Face CLIPSeg parameter names are
  translated to ours (timm-style checkpoint filter); ``convert_official_state_dict`` applies it.
* ``init_from_clipseg`` starts a new model from a ``CIDAS/clipseg-rd64-refined``-style checkpoint with
  the official copies (SPEC §1.10).

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors: pickled code in an
unknown file is never executed.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

from .config import PartCLIPSegConfig, from_official_config, get_config
from .errors import CheckpointError, ConfigError
from .io import atomic_path, atomic_write_text, json_text
from .model import CLIPSegBaseline, CLIPSegCore, PartCLIPSeg, build_model

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


def load_state_dict_checked(model: CLIPSegCore, state_dict: Mapping[str, torch.Tensor], source: str,
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
        raise CheckpointError(
            f"cannot read checkpoint {path} safely (torch.load with weights_only=True): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Only tensor checkpoints are loaded; pickled code "
            f"is never executed.") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    return state


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None


def guess_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    if any(k.startswith(OFFICIAL_PREFIXES["clipseg"]) for k in keys):
        return "clipseg"
    if any("part_obj" in k or "object_part_head" in k for k in keys):
        return "partclipseg"
    return "clipseg"


# ---------------------------------------------------------------------------- our format
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


def save_pretrained(model: CLIPSegCore, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (float tensors as stored in the model)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        write_safetensors(state, tmp)
    atomic_write_text(directory / CONFIG_NAME, json_text(model.config.to_dict(), indent=2) + "\n")
    return directory


def load_pretrained(source: str | os.PathLike, *, config: PartCLIPSegConfig | str | os.PathLike | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CLIPSegCore:
    """Load a model from a saved folder, a hub id, or an official ``.pth`` checkpoint.

    ``config`` is only used for official checkpoints, which carry none: a ``PartCLIPSegConfig``, a
    preset name, or a JSON file (ours or the official/HF config format). Default: the full
    CLIPSeg-rd64-refined shape.
    """
    path = Path(source)
    if path.is_dir():
        model = _load_folder(path)
    elif path.is_file():
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path}: pass the folder that holds {WEIGHTS_NAME} and {CONFIG_NAME}")
        model = load_official_checkpoint(path, config)
    elif _looks_like_hub_id(str(source)):
        model = _load_folder(_download(str(source)))
    else:
        raise CheckpointError(f"model not found: {source} is neither a folder, a checkpoint file nor a hub id")
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _load_folder(path: Path) -> CLIPSegCore:
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME}; a saved model is a folder with {CONFIG_NAME} + {WEIGHTS_NAME}")
    config = PartCLIPSegConfig.load(config_path)
    if not weights_path.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}")
    raw = json.loads(config_path.read_text())
    state = read_safetensors(weights_path)
    if raw.get("format") != "partclipseg":
        raise CheckpointError(f"{path} holds a Hugging Face CLIPSeg model, not a PartCLIPSeg one; start training "
                              f"from it with init_from_clipseg() instead")
    model = build_model(config)
    load_state_dict_checked(model, state, str(weights_path))
    return model


def load_official_checkpoint(path: str | os.PathLike,
                             config: PartCLIPSegConfig | str | os.PathLike | None = None) -> CLIPSegCore:
    """An official detectron2 checkpoint (``model_final.pth``) -> model (SPEC §1.12)."""
    path = Path(path)
    raw = read_torch_checkpoint(path)
    architecture = guess_architecture(raw)
    cfg = resolve_config(config, architecture)
    if cfg.architecture != architecture:
        raise CheckpointError(f"{path} is a {architecture} checkpoint but the config says {cfg.architecture}")
    model = build_model(cfg)
    load_state_dict_checked(model, convert_official_state_dict(raw), str(path))
    return model


def resolve_config(config: PartCLIPSegConfig | str | os.PathLike | None, architecture: str) -> PartCLIPSegConfig:
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


# ---------------------------------------------------------------------------- CLIPSeg start point
CLIPSEG_NEW_MODULES = ("visual_adapter.", "non_object_embedding", "object_part_head.")


def init_from_clipseg(source: str | os.PathLike, architecture: str = "partclipseg",
                      image_size: int = 352) -> CLIPSegCore:
    """A new model initialised from a CLIPSeg checkpoint in Hugging Face layout (SPEC §1.10).

    ``source``: a folder like ``CIDAS/clipseg-rd64-refined`` (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``) or that hub id. CLIP towers, FiLM, reduces, decoder layers and the class head
    are loaded; ``object_part_head.film_*`` and ``object_part_head.mask_head`` are copied from the
    decoder's FiLM and the class head; the visual adapter, the fusion layers and the non-object
    embedding keep their fresh initialisation.
    """
    path = Path(source)
    if not path.is_dir():
        if not _looks_like_hub_id(str(source)):
            raise CheckpointError(f"CLIPSeg checkpoint not found: {source}")
        path = _download(str(source), patterns=("config.json", "model.safetensors", "pytorch_model.bin"))
    try:
        hf_config = json.loads((path / CONFIG_NAME).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {CONFIG_NAME} (expected a Hugging Face CLIPSeg folder)") from None
    if "vision_config" not in hf_config:
        raise ConfigError(f"{path / CONFIG_NAME} is not a CLIPSeg config (no vision_config)")
    config = from_official_config(hf_config, image_size=image_size, architecture=architecture)
    if (path / WEIGHTS_NAME).is_file():
        raw = read_safetensors(path / WEIGHTS_NAME)
    elif (path / "pytorch_model.bin").is_file():
        raw = read_torch_checkpoint(path / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{path} has neither {WEIGHTS_NAME} nor pytorch_model.bin")
    model = build_model(config)
    state = {k: v for k, v in convert_official_state_dict(raw).items() if not k.startswith(CLIPSEG_NEW_MODULES)}
    load_state_dict_checked(model, state, str(path), allow_missing=CLIPSEG_NEW_MODULES)
    if isinstance(model, PartCLIPSeg):
        with torch.no_grad():
            head = model.object_part_head
            head.film_mul.load_state_dict(model.decoder.film_mul.state_dict())
            head.film_add.load_state_dict(model.decoder.film_add.state_dict())
            head.mask_head.load_state_dict(model.class_head.state_dict())
    return model


# ---------------------------------------------------------------------------- hub
def _looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not os.path.exists(text)


def _download(repo_id: str, patterns: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except Exception as exc:
        raise CheckpointError(f"could not get {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline? Pass a local folder "
                              f"instead.") from None


__all__ = ["save_pretrained", "load_pretrained", "load_official_checkpoint", "init_from_clipseg",
           "map_official_key", "convert_official_state_dict", "load_state_dict_checked", "strip_prefix",
           "PartCLIPSeg", "CLIPSegBaseline"]


# ---------------------------------------------------------------------------- built-in default
DEFAULT_MODEL_DIR = Path(__file__).parent / "resources" / "default_model"


def default_model_available() -> bool:
    return (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file() and (DEFAULT_MODEL_DIR / WEIGHTS_NAME).is_file()


def load_default_model() -> CLIPSegCore:
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
