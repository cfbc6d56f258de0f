"""Official PartCATSeg checkpoints (detectron2 ``checkpoint['model']``) -> ``PartCATSeg`` state dicts.

One table, ``map_official_partcatseg_key``: every official key maps to one of ours or is dropped
for a stated reason (``DROPPED_OFFICIAL_KEYS``). Unknown keys raise ``CheckpointError``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ...errors import CheckpointError

_HEAD = "sem_seg_head.predictor."
_AGG = _HEAD + "transformer."

#: official key patterns that have no counterpart, and why
DROPPED_OFFICIAL_KEYS: dict[str, str] = {
    r"backbone\.dinov2\.mask_token": "DINOv2's masked-token embedding, used only by masked pre-training",
    r"sem_seg_head\.predictor\.clip_model\.logit_scale": "CLIP's contrastive temperature, never used",
    r"sem_seg_head\.predictor\.transformer\.layers_object\..*":
        "the official split-pass object layers: built and frozen but never called (code in a string literal)",
    r"sem_seg_head\.predictor\.transformer\.(layers|layers_specific_part)\.\d+\.swin_block\.block_2\.attn_mask":
        "the shifted-window mask buffer, recomputed from the config",
}

# (official prefix, our prefix), first match wins
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("backbone.dinov2.", "dino.dinov2."),
    (_HEAD + "non_object_embedding", "background_text_embedding"),
    (_HEAD + "clip_model.visual.", "clip_image."),
    (_HEAD + "clip_model.", "clip_text."),
    (_AGG + "conv1.", "aggregator.part_object_cost_embed."),
    (_AGG + "conv2.", "aggregator.specific_cost_embed."),
    (_AGG + "conv_proj_feat.", "aggregator.compose_projection."),
    (_AGG + "guidance_projection.", "aggregator.appearance_projection."),
    (_AGG + "text_guidance_projection.", "aggregator.text_projection."),
    (_AGG + "decoder_guidance_projection.", "aggregator.decoder_guidance_projections."),
    (_AGG + "decoder1.up.", "aggregator.decoder.up1.up."),
    (_AGG + "decoder1.conv.", "aggregator.decoder.up1."),
    (_AGG + "decoder2.up.", "aggregator.decoder.up2.up."),
    (_AGG + "decoder2.conv.", "aggregator.decoder.up2."),
    (_AGG + "head.", "aggregator.decoder.head."),
    (_AGG + "layers_specific_part.", "aggregator.specific_layers."),
    (_AGG + "layers.", "aggregator.part_object_layers."),
)

# inside one aggregation layer
_LAYER_PARTS: tuple[tuple[str, str], ...] = (
    ("swin_block.", "spatial."),
    ("attention.attention.", "classwise."),
    ("attention.MLP.", "classwise.mlp."),
    ("attention.norm", "classwise.norm"),
)
_CLIP_TEXT_ROOTS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def map_official_partcatseg_key(key: str) -> str | None:
    """Our name for an official key, ``None`` if it is dropped; ``CheckpointError`` if unknown."""
    for pattern in DROPPED_OFFICIAL_KEYS:
        if re.fullmatch(pattern, key):
            return None
    for official, ours in _PREFIXES:
        if not key.startswith(official):
            continue
        rest = key[len(official):]
        if ours == "clip_text." and not rest.startswith(_CLIP_TEXT_ROOTS):
            break
        if ours.endswith("_layers."):
            index, _, inner = rest.partition(".")
            for official_inner, our_inner in _LAYER_PARTS:
                if inner.startswith(official_inner):
                    return f"{ours}{index}.{our_inner}{inner[len(official_inner):]}"
            break
        return ours + rest
    raise CheckpointError(f"unknown key in the official PartCATSeg checkpoint: {key!r}")


def convert_official_partcatseg_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official state dict (or a detectron2 checkpoint holding it under ``"model"``) -> ours, float32."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        ours = map_official_partcatseg_key(key)
        if ours is None:
            continue
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        out[ours] = value.float() if value.is_floating_point() else value
    return out


def load_official_partcatseg_weights(model, checkpoint, source: str = "checkpoint") -> None:
    """Load an official state dict / detectron2 checkpoint dict / ``.pth`` / ``.safetensors`` path into
    ``model`` (strict: missing, unexpected or mis-shaped keys raise ``CheckpointError``; ``.pth`` files are
    read with ``weights_only=True``)."""
    from pathlib import Path

    from ...checkpoint import load_state_dict_checked, read_safetensors, read_torch_checkpoint

    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        source = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        checkpoint = read_safetensors(path) if path.suffix == ".safetensors" else read_torch_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} does not hold a state dict")
    load_state_dict_checked(model, convert_official_partcatseg_state_dict(checkpoint), source)
    model.clear_text_cache()
