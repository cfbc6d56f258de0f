"""The package's own CLIP towers (the toy language-image pretraining's) -> PartCATSeg's OpenAI-layout CLIP.

PartCATSeg starts from CLIP; on the toy world, CLIP is the toy pretraining's towers
(``train/pretrain.py``: the CLIPSeg-family ``vision.*`` / ``text.*`` modules, Hugging Face-like names,
plus the pretraining's image head ``image_norm`` / ``image_projection``). Both implementations compute
the same functions once the names and layouts are translated:

* pre-norm blocks, ``quick_gelu`` MLPs, LayerNorm eps 1e-5 (PartCATSeg's ``CLIPLayerNorm`` is
  ``nn.LayerNorm``'s default; a source with another eps is refused), scaled dot-product attention with
  ``head_dim ** -0.5``;
* separate ``q_proj`` / ``k_proj`` / ``v_proj`` -> one packed ``in_proj`` (rows q, k, v, as
  ``nn.MultiheadAttention``);
* ``nn.Linear`` projections without bias (``text.projection``, ``image_projection``: [E, W]) -> OpenAI's
  right-multiplied matrices (``text_projection``, ``proj``: [W, E]), transposed;
* text: causal attention, the end-of-text token (the first position of the largest id, ``argmax``)
  pooled after the final LayerNorm; our padding mask cannot change that token (right padding, causal
  attention), so zero padding (PartCATSeg's ``clip.tokenize``) gives the same features;
* image: the position table (our native grid) is resized to PartCATSeg's ``clip_resolution`` grid once,
  with the same bicubic resize our tower applies at run time (``model.clip.resize_position_table``), so
  at that resolution both towers embed the same tokens.

What differs by design (CAT-Seg): PartCATSeg's dense image features run the **last** block without
attention (``x + out_proj(v_proj(ln_1(x)))``, then the MLP), then ``ln_post`` and ``proj`` on every
token. Equal to our tower: the tokens entering every block, the output of every block but the last one
(and of the last one when it is run with attention), the per-token image head (``ln_post(h) @ proj`` =
``image_projection(image_norm(h))``), the text features. ``tests/test_catseg_toy_towers.py`` checks each.

One key table, ``map_tower_key``: every key of a pretraining checkpoint's ``towers.safetensors``
(``ContrastiveTowers``) or of a saved PartCLIPSeg / CLIPSeg model is mapped to a PartCATSeg key (with
how its value is transformed) or listed in ``UNUSED_TOWER_KEYS`` with the reason; an unknown key raises
``CheckpointError``. ``partcatseg_config_for_towers`` derives the PartCATSeg config (tower shapes from the
source, everything else from a preset). Like ``initial_weights.py``, this module imports no model class:
it works on state dicts and on any model with PartCATSeg's parameter names.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from ..clip import resize_position_table
from ..registry import register_tower_builder
from .config import CLIPTowersConfig, PartCATSegConfig, get_partcatseg_config

#: the preset whose non-CLIP parts (DINOv2, aggregator, sizes, templates) a model from the toy towers takes
TOY_BASE_PRESET = "partcatseg-toy"

#: how a source value becomes (part of) a PartCATSeg value
COPY, TRANSPOSE, POSITIONS, IN_PROJ_Q, IN_PROJ_K, IN_PROJ_V = (
    "copy", "transpose", "positions", "in_proj:q", "in_proj:k", "in_proj:v")
_IN_PROJ_PARTS = (IN_PROJ_Q, IN_PROJ_K, IN_PROJ_V)

_BLOCK = r"(\d+)\."
# (our key pattern, PartCATSeg key template, transform); patterns are full matches, tried in order
_TOWER = r"(vision|text)\."
_TOWER_ROOT = {"vision": "clip_image.", "text": "clip_text."}
TOWER_KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    # image tower
    (r"vision\.patch_embed\.weight", "clip_image.conv1.weight", COPY),
    (r"vision\.class_embedding", "clip_image.class_embedding", COPY),
    (r"vision\.position_embedding", "clip_image.positional_embedding", POSITIONS),
    (r"vision\.pre_norm\.(weight|bias)", r"clip_image.ln_pre.\1", COPY),
    # the pretraining's image head (LayerNorm + linear map W -> E without bias)
    (r"image_norm\.(weight|bias)", r"clip_image.ln_post.\1", COPY),
    (r"image_projection\.weight", "clip_image.proj", TRANSPOSE),
    # text tower
    (r"text\.token_embedding\.weight", "clip_text.token_embedding.weight", COPY),
    (r"text\.position_embedding\.weight", "clip_text.positional_embedding", COPY),
    (r"text\.final_norm\.(weight|bias)", r"clip_text.ln_final.\1", COPY),
    (r"text\.projection\.weight", "clip_text.text_projection", TRANSPOSE),
    # blocks of either tower (\1 = tower, \2 = block index)
    (_TOWER + r"layers\." + _BLOCK + r"norm1\.(weight|bias)", r"\1:transformer.resblocks.\2.ln_1.\3", COPY),
    (_TOWER + r"layers\." + _BLOCK + r"norm2\.(weight|bias)", r"\1:transformer.resblocks.\2.ln_2.\3", COPY),
    (_TOWER + r"layers\." + _BLOCK + r"attn\.q_proj\.(weight|bias)", r"\1:transformer.resblocks.\2.attn.in_proj_\3",
     IN_PROJ_Q),
    (_TOWER + r"layers\." + _BLOCK + r"attn\.k_proj\.(weight|bias)", r"\1:transformer.resblocks.\2.attn.in_proj_\3",
     IN_PROJ_K),
    (_TOWER + r"layers\." + _BLOCK + r"attn\.v_proj\.(weight|bias)", r"\1:transformer.resblocks.\2.attn.in_proj_\3",
     IN_PROJ_V),
    (_TOWER + r"layers\." + _BLOCK + r"attn\.out_proj\.(weight|bias)", r"\1:transformer.resblocks.\2.attn.out_proj.\3",
     COPY),
    (_TOWER + r"layers\." + _BLOCK + r"mlp\.fc1\.(weight|bias)", r"\1:transformer.resblocks.\2.mlp.c_fc.\3", COPY),
    (_TOWER + r"layers\." + _BLOCK + r"mlp\.fc2\.(weight|bias)", r"\1:transformer.resblocks.\2.mlp.c_proj.\3", COPY),
)

#: source key patterns that PartCATSeg has no use for, and why
UNUSED_TOWER_KEYS: dict[str, str] = {
    r"logit_scale": "the pretraining's contrastive temperature; PartCATSeg's costs are plain cosine similarities",
    r"(visual_adapter|non_object_embedding|decoder|class_head|object_part_head)(\..*)?":
        "the PartCLIPSeg / CLIPSeg part model around the towers (pretraining's final/ initialises it freshly and "
        "never trains it); PartCATSeg has its own aggregator",
}

#: PartCATSeg CLIP keys that only the pretraining's image head fills (a saved part model has no image head):
#: without it they keep the fresh OpenAI initialisation (``ln_post`` 1 / 0, ``proj`` N(0, width^-1/2))
IMAGE_HEAD_KEYS = ("clip_image.ln_post.weight", "clip_image.ln_post.bias", "clip_image.proj")


@dataclass(frozen=True)
class TowerTarget:
    """Where a source tensor goes: PartCATSeg key and transform (``COPY``, ``TRANSPOSE``, ``POSITIONS``,
    ``IN_PROJ_Q`` / ``_K`` / ``_V``: the q, k or v third of the packed in-projection)."""

    key: str
    transform: str


def map_tower_key(key: str) -> TowerTarget | None:
    """PartCATSeg's name (and transform) for one of our tower keys, ``None`` if unused; unknown keys
    raise ``CheckpointError``."""
    for pattern in UNUSED_TOWER_KEYS:
        if re.fullmatch(pattern, key):
            return None
    for pattern, template, transform in TOWER_KEY_TABLE:
        match = re.fullmatch(pattern, key)
        if match:
            target = match.expand(template)
            tower, sep, rest = target.partition(":")
            return TowerTarget(_TOWER_ROOT[tower] + rest if sep else target, transform)
    raise CheckpointError(f"unknown key in the CLIP towers: {key!r}")


def convert_tower_state_dict(state: Mapping[str, torch.Tensor], clip: CLIPTowersConfig
                             ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our towers' state dict -> (PartCATSeg ``clip_image.*`` / ``clip_text.*`` tensors in float32, the
    unused source keys). The position table is resized to ``clip.native_grid``; q / k / v are packed
    (all three must be there)."""
    out: dict[str, torch.Tensor] = {}
    thirds: dict[str, dict[str, torch.Tensor]] = {}
    unused: list[str] = []
    for key, value in state.items():
        target = map_tower_key(key)
        if target is None:
            unused.append(key)
            continue
        value = value.detach().float()
        if target.transform == TRANSPOSE:
            out[target.key] = value.T.contiguous()
        elif target.transform == POSITIONS:
            rows = value.shape[0] - 1
            native = int(round(rows ** 0.5))
            if native * native != rows:
                raise CheckpointError(f"{key}: {rows} patch rows are not a square grid")
            out[target.key] = resize_position_table(value, native, clip.native_grid).contiguous()
        elif target.transform in _IN_PROJ_PARTS:
            thirds.setdefault(target.key, {})[target.transform] = value
        else:
            out[target.key] = value.clone()
    for key, parts in thirds.items():
        if len(parts) != 3:
            missing = [p.split(":")[1] for p in _IN_PROJ_PARTS if p not in parts]
            raise CheckpointError(f"{key}: the source lacks the {'/'.join(missing)} projection")
        out[key] = torch.cat([parts[p] for p in _IN_PROJ_PARTS], dim=0)
    return out, unused


@dataclass
class TowerReport:
    """``loaded``: PartCATSeg keys filled from the source; ``fresh``: ``IMAGE_HEAD_KEYS`` left as
    initialised (the source had no image head); ``unused``: source keys not used."""

    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def load_towers(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "towers") -> TowerReport:
    """Copy our towers (``state``) into a PartCATSeg's ``clip_image`` / ``clip_text`` (strict: every CLIP
    tensor of the model must come with its shape, except the image head when the source has none; a
    source tensor with no place in the model is refused). Clears the model's text cache."""
    converted, unused = convert_tower_state_dict(state, model.config.clip)
    ours = model.state_dict()
    for key, value in converted.items():
        if key not in ours:
            raise CheckpointError(f"{source}: {key} has no place in the model (the config has fewer layers?)")
        if tuple(value.shape) != tuple(ours[key].shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the model needs "
                                  f"{tuple(ours[key].shape)} (the config does not match the towers)")
    has_head = any(k in converted for k in IMAGE_HEAD_KEYS)
    lacking = [k for k in ours if k.startswith(("clip_image.", "clip_text.")) and k not in converted
               and (has_head or k not in IMAGE_HEAD_KEYS)]
    if lacking:
        raise CheckpointError(f"{source} lacks {len(lacking)} CLIP tensor(s) of the model: {lacking[:5]}")
    with torch.no_grad():
        for key, value in converted.items():
            ours[key].copy_(value.to(dtype=ours[key].dtype, device=ours[key].device))
    model.clear_text_cache()
    return TowerReport(sorted(converted), [] if has_head else list(IMAGE_HEAD_KEYS), unused)


def partcatseg_config_for_towers(source: Any, base: PartCATSegConfig) -> PartCATSegConfig:
    """``base`` (e.g. the ``partcatseg-toy`` preset) with CLIP towers of the shape of ``source`` (a
    ``PartCLIPSegConfig``: ``vision``, ``text``, ``projection_dim``): widths, layers, heads, MLP widths,
    patch size, context length, vocabulary; ``image_resolution = base.clip_resolution`` (the size the
    towers run at; the position table is resized to it). The cost grid and guidance sizes follow
    ``clip_resolution / patch``. Towers whose computation PartCATSeg's CLIP cannot reproduce are refused."""
    v, t = source.vision, source.text
    for name, eps in (("vision", v.layer_norm_eps), ("text", t.layer_norm_eps)):
        if eps != 1e-5:
            raise ConfigError(f"the {name} tower's layer_norm_eps is {eps}; PartCATSeg's CLIP LayerNorms use 1e-5")
    resolution = base.clip_resolution
    if resolution % v.patch_size:
        raise ConfigError(f"clip_resolution {resolution} is not a multiple of the towers' patch size {v.patch_size}")
    clip = CLIPTowersConfig(
        embed_dim=source.projection_dim, image_resolution=resolution, vision_width=v.hidden_size,
        vision_layers=v.num_layers, vision_heads=v.num_heads, vision_patch_size=v.patch_size,
        context_length=t.max_position_embeddings, vocab_size=t.vocab_size, text_width=t.hidden_size,
        text_layers=t.num_layers, text_heads=t.num_heads, vision_mlp_width=v.intermediate_size,
        text_mlp_width=t.intermediate_size)
    g = resolution // v.patch_size
    aggregator = dataclasses.replace(base.aggregator, feature_resolution=(g, g))
    return dataclasses.replace(base, clip=clip, aggregator=aggregator, guidance_sizes=(4 * g, 2 * g, g))


@register_tower_builder("partcatseg")
def build_from_towers(source_config: Any, state: Mapping[str, torch.Tensor], source: str = "towers",
                      base: PartCATSegConfig | None = None) -> tuple[torch.nn.Module, TowerReport]:
    """A new PartCATSeg (``base``, default the ``partcatseg-toy`` preset, with the towers' CLIP shapes:
    ``partcatseg_config_for_towers``) whose CLIP towers are ``state``'s (``load_towers``); DINOv2, the
    aggregator and the background embedding initialised as ``init=random`` does (seed the global RNG
    first). Returns the model and the ``TowerReport``."""
    from ..registry import build_model

    config = partcatseg_config_for_towers(source_config, base or get_partcatseg_config(TOY_BASE_PRESET))
    model = build_model(config)
    return model, load_towers(model, state, source)
