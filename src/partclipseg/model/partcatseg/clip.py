"""OpenAI CLIP towers in the OpenAI layout (``model_vpt.CLIP`` of PartCATSeg / CAT-Seg).

Parameter names follow OpenAI's state dict below the tower roots (``conv1``, ``class_embedding``,
``transformer.resblocks.{i}.attn.in_proj_weight``, ``ln_post``, ``proj``, ...), so that official
checkpoints map by prefix only.

* ``CLIPImageTower.forward_dense(x [B, 3, S, S]) -> [B, 1 + g*g, E]``: every token through
  ``ln_post`` and ``proj``; the last block runs *without attention* (``x + out_proj(v_proj(ln_1(x)))``,
  then the MLP), CAT-Seg's dense CLIP features.
* ``CLIPTextTower.forward(ids [P, 77]) -> [P, E]``: causal transformer, pooled at ``argmax(ids)``.
  ``dtype=torch.float16`` reproduces the official fp16 text features (weights cast to fp16 as
  ``convert_weights`` does; embeddings, positional table and LayerNorms stay fp32, LayerNorm
  computed in fp32 and cast back).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPTowersConfig


class CLIPLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (OpenAI's fp16 handling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELUMLP(nn.Module):
    """``c_proj(quick_gelu(c_fc(x)))``; hidden width ``hidden`` (OpenAI: 4 x width)."""

    def __init__(self, width: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = 4 * width if hidden is None else hidden
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))


class PackedSelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (packed ``in_proj``, ``out_proj``), batch-first math.

    ``forward(x [B, L, D], mask [L, L] additive | None) -> [B, L, D]``.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[None, None])
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))

    def value_only(self, x: torch.Tensor) -> torch.Tensor:
        """``out_proj(v_proj(x))``: the attention-free path of the dense last block."""
        d = x.shape[-1]
        v = F.linear(x, self.in_proj_weight[2 * d:], self.in_proj_bias[2 * d:])
        return self.out_proj(v)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))`` (OpenAI names)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int | None = None) -> None:
        super().__init__()
        self.attn = PackedSelfAttention(width, heads)
        self.ln_1 = CLIPLayerNorm(width)
        self.mlp = QuickGELUMLP(width, mlp_hidden)
        self.ln_2 = CLIPLayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """No attention: every token keeps its own value (``x + out_proj(v_proj(ln_1(x)))``)."""
        x = x + self.attn.value_only(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CLIPTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_hidden: int | None = None) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_hidden) for _ in range(layers))


class CLIPImageTower(nn.Module):
    """CLIP ViT (OpenAI ``VisualTransformer``) producing dense per-token features."""

    def __init__(self, config: CLIPTowersConfig) -> None:
        super().__init__()
        self.config = config
        w = config.vision_width
        self.conv1 = nn.Conv2d(3, w, kernel_size=config.vision_patch_size, stride=config.vision_patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(config.native_grid ** 2 + 1, w))
        self.ln_pre = CLIPLayerNorm(w)
        self.transformer = CLIPTransformer(w, config.vision_layers, config.vision_heads, config.vision_mlp_hidden)
        self.ln_post = CLIPLayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, config.embed_dim))

    def position_table(self, grid: int) -> torch.Tensor:
        """[1 + grid*grid, W]: the patch rows resized bicubically (align_corners=False), CLS kept."""
        table = self.positional_embedding
        native = self.config.native_grid
        if grid * grid + 1 == table.shape[0]:
            return table
        w = table.shape[1]
        patches = table[1:].reshape(1, native, native, w).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([table[:1], patches.reshape(w, grid * grid).T], dim=0)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] (CLIP-normalised) -> the tokens entering block 0 [B, 1 + g*g, W] (after ``ln_pre``)."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype))
        b, w, gh, gw = x.shape
        if gh != gw:
            raise ValueError(f"the CLIP image tower needs a square input, got a {gh}x{gw} token grid")
        x = x.reshape(b, w, gh * gw).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(b, 1, w), x], dim=1)
        return self.ln_pre(x + self.position_table(gh).to(x.dtype))

    def forward_dense(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] (CLIP-normalised) -> [B, 1 + g*g, E], g = S / patch."""
        x = self.embed(pixels)
        blocks = self.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        x = blocks[-1].forward_dense(x)
        return self.ln_post(x) @ self.proj


class CLIPTextTower(nn.Module):
    """CLIP text transformer (OpenAI names at the CLIP root: ``token_embedding``, ``transformer``, ...)."""

    def __init__(self, config: CLIPTowersConfig) -> None:
        super().__init__()
        self.config = config
        w = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, w))
        self.transformer = CLIPTransformer(w, config.text_layers, config.text_heads, config.text_mlp_hidden)
        self.ln_final = CLIPLayerNorm(w)
        self.text_projection = nn.Parameter(torch.zeros(w, config.embed_dim))

    def forward(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ids [P, L] (L <= context) -> [P, E] in ``dtype`` (see the module docstring for fp16)."""
        p, length = ids.shape
        if length > self.config.context_length:
            raise ValueError(f"token sequence of length {length} exceeds {self.config.context_length}")
        x = self.token_embedding(ids).to(dtype) + self.positional_embedding[:length].to(dtype)
        mask = torch.full((length, length), float("-inf"), device=ids.device).triu_(1).to(dtype)
        for block in self.transformer.resblocks:
            x = _cast_block(block, dtype)(x, mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(p, device=ids.device), ids.argmax(dim=-1)]
        return pooled @ self.text_projection.to(dtype)


def _cast_block(block: ResidualAttentionBlock, dtype: torch.dtype):
    """``block.forward`` with its Linear weights in ``dtype`` (LayerNorm parameters stay fp32)."""
    if dtype == block.mlp.c_fc.weight.dtype:
        return block

    def run(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = block.attn
        h = block.ln_1(x)
        b, n, d = h.shape
        qkv = F.linear(h, a.in_proj_weight.to(dtype), a.in_proj_bias.to(dtype))
        q, k, v = qkv.view(b, n, 3, a.heads, d // a.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[None, None])
        out = F.linear(out.transpose(1, 2).reshape(b, n, d), a.out_proj.weight.to(dtype), a.out_proj.bias.to(dtype))
        x = x + out
        h = F.linear(block.ln_2(x), block.mlp.c_fc.weight.to(dtype), block.mlp.c_fc.bias.to(dtype))
        h = h * torch.sigmoid(1.702 * h)
        return x + F.linear(h, block.mlp.c_proj.weight.to(dtype), block.mlp.c_proj.bias.to(dtype))

    return run
