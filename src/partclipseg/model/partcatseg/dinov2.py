"""DINOv2 ViT (facebookresearch/dinov2 ``DinoVisionTransformer``, no registers) as the appearance backbone.

Parameter names follow DINOv2's state dict (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``).

``DinoV2Backbone.forward(pixels [B, 3, R, R]) -> (res2, res3, res4)``: the final-norm patch tokens
as a [B, C, R/14, R/14] map, bilinearly resized (align_corners=False) to ``guidance_sizes``
(96, 48, 24 in the official model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DinoV2Config


class DinoAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DinoMLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DinoBlock(nn.Module):
    """``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        d = config.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = DinoAttention(d, config.num_heads)
        self.ls1 = LayerScale(d, config.layer_scale_init)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = DinoMLP(d, int(d * config.mlp_ratio))
        self.ls2 = LayerScale(d, config.layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2(nn.Module):
    """``forward_features(pixels [B, 3, H, W]) -> dict`` of ``x_prenorm`` [B, 1+N, C],
    ``x_norm_clstoken`` [B, C] and ``x_norm_patchtokens`` [B, N, C] (row-major patches)."""

    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.native_grid ** 2 + 1, d))
        self.blocks = nn.ModuleList(DinoBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def position_table(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1, 1 + gh*gw, C]. Official interpolation: bicubic with ``scale_factor = (g + offset) / M``
        (not ``size``), so source coordinates are ``M / (g + offset)`` apart."""
        table = self.pos_embed
        m = self.config.native_grid
        if grid_h * grid_w == m * m and grid_h == grid_w:
            return table
        c = table.shape[-1]
        patches = table[:, 1:].float().reshape(1, m, m, c).permute(0, 3, 1, 2)
        offset = self.config.interpolate_offset
        if offset:
            kwargs = {"scale_factor": ((grid_h + offset) / m, (grid_w + offset) / m)}
        else:
            kwargs = {"size": (grid_h, grid_w)}
        patches = F.interpolate(patches, mode="bicubic", antialias=self.config.interpolate_antialias, **kwargs)
        if tuple(patches.shape[-2:]) != (grid_h, grid_w):
            raise ValueError(f"DINOv2 position table resized to {tuple(patches.shape[-2:])}, "
                             f"expected {(grid_h, grid_w)}")
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, c)
        return torch.cat([table[:, :1].float(), patches], dim=1).to(table.dtype)

    def forward_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        _, _, h, w = pixels.shape
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"DINOv2 input {h}x{w} is not a multiple of the patch size {p}")
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_table(h // p, w // p)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        return {"x_prenorm": x, "x_norm_clstoken": x_norm[:, 0], "x_norm_patchtokens": x_norm[:, 1:]}


class DinoV2Backbone(nn.Module):
    """Appearance guidance: DINOv2 patch tokens resized to the three guidance sizes."""

    def __init__(self, config: DinoV2Config, guidance_sizes: tuple[int, int, int]) -> None:
        super().__init__()
        self.dinov2 = DinoV2(config)
        self.guidance_sizes = tuple(guidance_sizes)

    def forward(self, pixels: torch.Tensor, features: dict | None = None) -> tuple[torch.Tensor, ...]:
        """pixels [B, 3, R, R] (DINO-normalised) -> (res2 [B,C,96,96], res3 [B,C,48,48], res4 [B,C,24,24]).

        ``features``, when given, receives the ``forward_features`` outputs (for inspection).
        """
        out = self.dinov2.forward_features(pixels)
        if features is not None:
            features.update(out)
        b, _, h, w = pixels.shape
        p = self.dinov2.config.patch_size
        tokens = out["x_norm_patchtokens"]
        grid = tokens.reshape(b, h // p, w // p, tokens.shape[-1]).permute(0, 3, 1, 2)
        return tuple(F.interpolate(grid, size=(s, s), mode="bilinear", align_corners=False)
                     for s in self.guidance_sizes)
