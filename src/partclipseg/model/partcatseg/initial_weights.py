"""Where a new PartCATSeg starts training: CAT-Seg (B)'s weights + DINOv2 ViT-S/14, as the official recipe.

What the official code does (kaist-cvml/part-catseg 4a9a882, ``configs/zero_shot/partcatseg_*.yaml``,
``train_net.py``), in order:

1. ``PartCATSeg.__init__`` builds the model: DINOv2 by ``torch.hub.load('facebookresearch/dinov2',
   'dinov2_vits14')`` (its LVD-142M weights, ``dinov2_vits14_pretrain.pth``, loaded strictly); the head
   with PyTorch's default initialisation; ``non_object_embedding`` ~ N(0, text_width^-1/2); then
   ``conv2 <- conv1``, ``layers_specific_part <- layers`` (and the unused ``layers_object``): copies of
   the *fresh random* values. (``DINOv2Backbone`` also takes ``backbone.dinov2.*`` from
   ``MODEL.WEIGHTS`` if the file has any; CAT-Seg (B)'s has none.)
2. The trainer loads ``MODEL.WEIGHTS = pretrain_weights/model_final_base.pth`` (CAT-Seg (B): ResNet-101
   + CLIP ViT-B/16, COCO-Stuff) with detectron2's checkpointer: a key whose name and shape match is
   copied, a key whose shape differs is skipped (per tensor: a bias can load while its weight does
   not), unknown keys are ignored, missing keys keep their value.

For the full-size config that gives: both CLIP towers from CAT-Seg (its image attention and positional
table fine-tuned; the text tower is OpenAI's, which CAT-Seg kept frozen, so the official text features,
computed from OpenAI's CLIP at ``__init__``, equal those of the loaded tower), ``conv1``, ``layers``,
the text guidance projection and the decoder from CAT-Seg; the appearance and decoder guidance
projections' *biases* from CAT-Seg but their *weights* new (CAT-Seg (B) fed them ResNet-101 maps of
1024 / 512 / 256 channels, PartCATSeg feeds DINOv2's 384); ``conv2``, ``layers_specific_part``,
``conv_proj_feat`` and ``non_object_embedding`` new; DINOv2 from its hub file.

Two key tables (each foreign key is mapped or listed as unused, with the reason; an unknown key
raises ``CheckpointError``), both through PartCATSeg's own table (``weights.map_official_partcatseg_key``,
the one home of the name correspondences; CAT-Seg and the DINOv2 hub file use the same module names):

* ``map_catseg_base_key``: CAT-Seg (B)'s detectron2 ``checkpoint["model"]``.
* ``map_dinov2_hub_key``: the flat state dict of ``dinov2_vits14_pretrain.pth``.

Our keys that no foreign file fills are listed in ``NEW_IN_PARTCATSEG`` (how each is initialised);
shape differences are tolerated only for the keys in ``SHAPE_MAY_DIFFER``. This module imports no
model class: the loaders work on any model with PartCATSeg's state-dict names.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..registry import register_initial_weights
from .weights import map_official_partcatseg_key

#: the recipe value (``init=``) that starts a PartCATSeg as the official recipe does
CATSEG_BASE_DINOV2_INIT = "catseg_base+dinov2_vits14"

_HEAD = "sem_seg_head.predictor."
_AGG = _HEAD + "transformer."

# ---------------------------------------------------------------------------- CAT-Seg (B)
#: CAT-Seg (B) key patterns that PartCATSeg has no use for, and why
CATSEG_BASE_UNUSED_KEYS: dict[str, str] = {
    r"backbone\.(stem|res\d)\..*": "CAT-Seg (B)'s ResNet-101 appearance backbone (PartCATSeg's is DINOv2)",
    _HEAD.replace(".", r"\.") + r"clip_model\.logit_scale": "CLIP's contrastive temperature, never used",
    _AGG.replace(".", r"\.") + r"layers\.\d+\.swin_block\.block_2\.attn_mask":
        "the shifted-window mask buffer, recomputed from the config",
}

#: CAT-Seg (B) modules PartCATSeg kept under the same names (mapped by PartCATSeg's own table)
CATSEG_BASE_MODULES: tuple[str, ...] = (
    "backbone.dinov2.",  # none in CAT-Seg (B); the official DINOv2Backbone would take them
    _HEAD + "clip_model.",
    _AGG + "conv1.",
    _AGG + "layers.",
    _AGG + "guidance_projection.",
    _AGG + "text_guidance_projection.",
    _AGG + "decoder_guidance_projection.",
    _AGG + "decoder1.",
    _AGG + "decoder2.",
    _AGG + "head.",
)

#: our keys whose shape may differ from CAT-Seg (B)'s; detectron2 skips them, they keep their fresh values
SHAPE_MAY_DIFFER: dict[str, str] = {
    r"aggregator\.appearance_projection\.0\.weight":
        "input channels: CAT-Seg (B)'s ResNet-101 res4 (1024) vs DINOv2 (384); its bias loads",
    r"aggregator\.decoder_guidance_projections\.\d+\.0\.weight":
        "input channels: CAT-Seg (B)'s ResNet-101 res3 / res2 (512 / 256) vs DINOv2 (384); its bias loads",
}

#: our keys no foreign file fills, and how the official code initialises them
NEW_IN_PARTCATSEG: dict[str, str] = {
    r"aggregator\.specific_cost_embed\..*": "a copy of the fresh part_object_cost_embed (official __init__: "
                                            "conv2 <- conv1, before MODEL.WEIGHTS is loaded)",
    r"aggregator\.specific_layers\..*": "a copy of the fresh part_object_layers (official __init__: "
                                        "layers_specific_part <- layers, before MODEL.WEIGHTS is loaded)",
    r"aggregator\.compose_projection\..*": "PyTorch's default Conv2d initialisation (conv_proj_feat)",
    r"background_text_embedding": "N(0, text_width^-1/2) (non_object_embedding)",
}


def map_catseg_base_key(key: str) -> str | None:
    """Our name for a CAT-Seg (B) key, ``None`` if unused; ``CheckpointError`` if unknown."""
    for pattern in CATSEG_BASE_UNUSED_KEYS:
        if re.fullmatch(pattern, key):
            return None
    if key.startswith(CATSEG_BASE_MODULES):
        ours = map_official_partcatseg_key(key)
        if ours is not None:
            return ours
    raise CheckpointError(f"unknown key in the CAT-Seg (B) checkpoint: {key!r}")


# ---------------------------------------------------------------------------- DINOv2 hub file
#: keys of ``dinov2_vits14_pretrain.pth`` that PartCATSeg has no use for, and why
DINOV2_HUB_UNUSED_KEYS: dict[str, str] = {
    r"mask_token": "DINOv2's masked-token embedding, used only by its masked pre-training",
}
_DINOV2_ROOTS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def map_dinov2_hub_key(key: str) -> str | None:
    """Our name for a key of DINOv2's hub checkpoint (``DinoVisionTransformer.state_dict()``, no
    registers, ``block_chunks=0``), ``None`` if unused; ``CheckpointError`` if unknown."""
    for pattern in DINOV2_HUB_UNUSED_KEYS:
        if re.fullmatch(pattern, key):
            return None
    if key in ("cls_token", "pos_embed") or (key.startswith(_DINOV2_ROOTS[2:]) and "." in key):
        ours = map_official_partcatseg_key("backbone.dinov2." + key)
        if ours is not None:
            return ours
    hint = " (DINOv2 with register tokens is not supported)" if key.startswith("register_tokens") else ""
    raise CheckpointError(f"unknown key in the DINOv2 checkpoint: {key!r}{hint}")


# ---------------------------------------------------------------------------- loading
@dataclass
class InitReport:
    """Where each of our tensors came from after ``start_from_catseg_base_and_dinov2``.

    ``from_catseg`` / ``from_dinov2``: our keys copied from each file; ``shape_skipped``: our keys
    left as initialised because CAT-Seg's tensor has another shape (``"key (theirs) vs (ours)"``);
    ``new``: our keys no file fills (``NEW_IN_PARTCATSEG``); ``unused``: foreign keys not used.
    """

    from_catseg: list[str] = field(default_factory=list)
    from_dinov2: list[str] = field(default_factory=list)
    shape_skipped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` (the hub cache's conversion) or ``.pth`` (a state dict or detectron2's
    ``{"model": ...}``, read with ``weights_only=True``) -> its tensors under their own names."""
    from ...checkpoint import read_safetensors, read_torch_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    return read_safetensors(path) if path.suffix == ".safetensors" else read_torch_checkpoint(path)


def _unwrap(state: Mapping[str, Any], source: str) -> Mapping[str, torch.Tensor]:
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source} holds no state dict")
    return state


def _copy(ours: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    with torch.no_grad():
        ours[key].copy_(value.to(dtype=ours[key].dtype, device=ours[key].device))


def load_dinov2_hub(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "DINOv2 checkpoint",
                    report: InitReport | None = None) -> InitReport:
    """Copy a DINOv2 hub state dict into ``dino.dinov2.*`` (strict: every DINOv2 tensor of ours must come,
    with its shape, as ``torch.hub``'s ``load_state_dict(strict=True)`` demands)."""
    report = report if report is not None else InitReport()
    state = _unwrap(state, source)
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = map_dinov2_hub_key(key)
        if target is None:
            report.unused.append(key)
        elif target not in ours:
            raise CheckpointError(f"{source}: {key} has no place in the model (config has fewer DINOv2 blocks?)")
        elif tuple(value.shape) != tuple(ours[target].shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the model's DINOv2 needs "
                                  f"{tuple(ours[target].shape)} (config.dino does not match the file)")
        else:
            mapped[target] = value
    missing = [k for k in ours if k.startswith("dino.dinov2.") and k not in mapped]
    if missing:
        raise CheckpointError(f"{source} lacks {len(missing)} DINOv2 tensor(s) of the model: {missing[:5]}")
    for key, value in mapped.items():
        _copy(ours, key, value)
    report.from_dinov2.extend(mapped)
    return report


def load_catseg_base(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "CAT-Seg checkpoint",
                     report: InitReport | None = None) -> InitReport:
    """Copy CAT-Seg (B)'s tensors into the model as detectron2's checkpointer does (name and shape match:
    copied; shape differs: skipped), refusing a shape difference outside ``SHAPE_MAY_DIFFER`` (a config
    that does not fit the file) and a file that lacks one of our tensors outside ``NEW_IN_PARTCATSEG``
    and the DINOv2 ones (the official code would silently keep random values there)."""
    report = report if report is not None else InitReport()
    state = _unwrap(state, source)
    ours = model.state_dict()
    loaded = []
    for key, value in state.items():
        target = map_catseg_base_key(key)
        if target is None:
            report.unused.append(key)
            continue
        if target not in ours:
            raise CheckpointError(f"{source}: {key} has no place in the model (config has fewer layers?)")
        if tuple(value.shape) != tuple(ours[target].shape):
            if any(re.fullmatch(p, target) for p in SHAPE_MAY_DIFFER):
                report.shape_skipped.append(f"{target} {tuple(value.shape)} vs {tuple(ours[target].shape)}")
                continue
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the model needs "
                                  f"{tuple(ours[target].shape)} (the config does not match CAT-Seg (B))")
        _copy(ours, target, value)
        loaded.append(target)
    report.from_catseg.extend(loaded)
    filled = set(loaded) | {s.split(" ", 1)[0] for s in report.shape_skipped}
    lacking = [k for k in ours if k not in filled and not k.startswith("dino.dinov2.")
               and not any(re.fullmatch(p, k) for p in NEW_IN_PARTCATSEG)]
    if lacking:
        raise CheckpointError(f"{source} lacks {len(lacking)} tensor(s) CAT-Seg (B) has: {lacking[:5]}")
    return report


def start_from_catseg_base_and_dinov2(model: torch.nn.Module, catseg: Mapping[str, torch.Tensor],
                                      dinov2: Mapping[str, torch.Tensor], *, catseg_source: str = "CAT-Seg (B)",
                                      dinov2_source: str = "DINOv2 ViT-S/14") -> InitReport:
    """The official starting point on a freshly built and initialised model (``build_model``: its
    ``init_weights`` already made the official ``__init__`` copies, conv2 <- conv1 and
    layers_specific_part <- layers, ``init.copy_part_object_branch``): DINOv2's hub weights, then CAT-Seg
    (B)'s (see the module docstring). Returns the ``InitReport``."""
    report = load_dinov2_hub(model, dinov2, dinov2_source)
    load_catseg_base(model, catseg, catseg_source, report)
    filled = set(report.from_catseg) | set(report.from_dinov2)
    report.new = [k for k in model.state_dict() if k not in filled]
    model.clear_text_cache()
    return report


@register_initial_weights(CATSEG_BASE_DINOV2_INIT, "partcatseg")
def build_from_catseg_base_and_dinov2(config: Any, progress: bool = True) -> torch.nn.Module:
    """A new PartCATSeg of ``config`` started from CAT-Seg (B) + DINOv2 ViT-S/14 (fetched into the cache
    on first use: ``hub.registry.WEIGHT_FILES`` ``catseg_base`` and ``dinov2_vits14``). Seed the global
    RNG first for reproducible new parts."""
    from ...hub.fetch import ensure_weight_file
    from ...hub.registry import get_weight_file
    from ..registry import build_model

    catseg_path = ensure_weight_file(get_weight_file("catseg_base"), progress=progress)
    dinov2_path = ensure_weight_file(get_weight_file("dinov2_vits14"), progress=progress)
    model = build_model(config)
    start_from_catseg_base_and_dinov2(model, read_weight_file(catseg_path), read_weight_file(dinov2_path),
                                      catseg_source=str(catseg_path), dinov2_source=str(dinov2_path))
    return model
