"""Random initialisation of a new PartCATSeg (``init=random:<preset>``), as the official code builds one.

* CLIP towers: OpenAI's ``CLIP.initialize_parameters`` and ``VisionTransformer.__init__`` (token
  embedding N(0, 0.02), text positions N(0, 0.01); image class / position / projection
  N(0, width^-1/2); per block: packed in-projection N(0, width^-1/2), out-projection and ``c_proj``
  N(0, width^-1/2 (2 layers)^-1/2), ``c_fc`` N(0, (2 width)^-1/2); text projection N(0, width^-1/2);
  biases 0, LayerNorms 1 / 0). The official model then loads pretrained CLIP; a toy model trains these.
* DINOv2: timm-style ViT init of ``DinoVisionTransformer.init_weights`` (position table trunc-normal
  0.02, class token N(0, 1e-6), Linear layers trunc-normal 0.02 with zero bias; LayerScale at
  ``layer_scale_init``).
* Aggregator: the module constructors' defaults, then, as ``PartCATSeg.__init__`` does, the
  object-specific branch copied from the part-object branch (``conv2 <- conv1``,
  ``layers_specific_part <- layers``).
* Background embedding (``non_object_embedding``): N(0, embed^-1/2).
"""
from __future__ import annotations

import torch
from torch import nn

from .clip import CLIPImageTower, CLIPTextTower, CLIPTransformer


def _init_clip_blocks(transformer: CLIPTransformer, width: int, layers: int) -> None:
    attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.zeros_(block.attn.in_proj_bias)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(block.attn.out_proj.bias)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


@torch.no_grad()
def init_clip_towers(image: CLIPImageTower, text: CLIPTextTower) -> None:
    c = image.config
    scale = c.vision_width ** -0.5
    for p in (image.class_embedding, image.positional_embedding, image.proj):
        nn.init.normal_(p, std=scale)
    _init_clip_blocks(image.transformer, c.vision_width, c.vision_layers)
    nn.init.normal_(text.token_embedding.weight, std=0.02)
    nn.init.normal_(text.positional_embedding, std=0.01)
    _init_clip_blocks(text.transformer, c.text_width, c.text_layers)
    nn.init.normal_(text.text_projection, std=c.text_width ** -0.5)


@torch.no_grad()
def init_dinov2(dinov2: nn.Module) -> None:
    nn.init.trunc_normal_(dinov2.pos_embed, std=0.02)
    nn.init.normal_(dinov2.cls_token, std=1e-6)
    for module in dinov2.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@torch.no_grad()
def copy_part_object_branch(aggregator: nn.Module) -> None:
    """The official ``__init__``'s copies: conv2 <- conv1, layers_specific_part <- layers."""
    aggregator.specific_cost_embed.load_state_dict(aggregator.part_object_cost_embed.state_dict())
    aggregator.specific_layers.load_state_dict(aggregator.part_object_layers.state_dict())
