"""Random initialisation of a new model.

Follows the official code: CLIP-style initialisation for the towers and the CLIPSeg decoder (the
values are overwritten when CLIPSeg or PartCLIPSeg weights are loaded), PyTorch's default Linear
initialisation with zeroed biases for the new fusion layers, and ``non_object_embedding`` drawn from
Normal(0, E^-0.5) (it stays frozen at that value during official training).
"""
from __future__ import annotations

import torch
from torch import nn

from .clip import CLIPEncoderLayer, CLIPTextTower, CLIPVisionTower, MultiHeadAttention


@torch.no_grad()
def init_weights(model: nn.Module, initializer_range: float = 0.02) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for tower in (m for m in model.modules() if isinstance(m, (CLIPVisionTower, CLIPTextTower))):
        width = tower.config.hidden_size
        layers = len(tower.layers)
        if isinstance(tower, CLIPVisionTower):
            nn.init.normal_(tower.class_embedding, std=width ** -0.5)
            nn.init.normal_(tower.patch_embed.weight, std=initializer_range)
            nn.init.normal_(tower.position_embedding, std=initializer_range)
        else:
            nn.init.normal_(tower.token_embedding.weight, std=initializer_range)
            nn.init.normal_(tower.position_embedding.weight, std=initializer_range)
            nn.init.normal_(tower.projection.weight, std=width ** -0.5)
        in_std = width ** -0.5 * (2 * layers) ** -0.5
        for layer in tower.layers:
            assert isinstance(layer, CLIPEncoderLayer)
            _init_attention(layer.attn, in_std, width ** -0.5)
            nn.init.normal_(layer.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(layer.mlp.fc2.weight, std=in_std)
    core = getattr(model, "non_object_embedding", None)
    if core is not None:
        nn.init.normal_(core, std=core.shape[-1] ** -0.5)


def _init_attention(attn: MultiHeadAttention, in_std: float, out_std: float) -> None:
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        nn.init.normal_(proj.weight, std=in_std)
    nn.init.normal_(attn.out_proj.weight, std=out_std)
