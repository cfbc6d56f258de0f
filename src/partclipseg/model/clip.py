"""CLIP towers: the ViT vision tower (with position-table interpolation) and the text transformer.

Both are pre-norm transformers with ``quick_gelu`` MLPs, as OpenAI CLIP. Parameter names are ours;
``partclipseg.checkpoint.map_official_key`` translates the official / Hugging Face names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig, VisionConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def resize_position_table(table: torch.Tensor, native: int, grid: int) -> torch.Tensor:
    """A ViT position table [1 + native*native, C] for a ``grid x grid`` token grid: the patch rows
    resized bicubically (``align_corners=False``), the CLS row kept; the table itself when the grids agree.
    (The one home of this resize: the vision tower at another input size, and the export of these towers
    into another model at another input size, ``model.partcatseg.toy_towers``.)"""
    if grid == native:
        return table
    c = table.shape[1]
    patches = table[1:].T.reshape(1, c, native, native)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([table[:1], patches.reshape(c, grid * grid).T], dim=0)


class MultiHeadAttention(nn.Module):
    """Self-attention with separate q/k/v/out projections (with bias), as CLIP and CLIPSeg.

    ``forward(x [B, L, D], attn_mask) -> (out [B, L, D], weights [B, H, L, L] or None)``, where
    ``attn_mask`` is additive (broadcastable to [B, H, L, L]). The
    softmax weights are only materialised when ``need_weights`` is set; otherwise the fused
    scaled-dot-product kernel runs.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape
        shape = (b, n, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        weights = None
        if need_weights:
            scores = (q * self.scale) @ k.transpose(-1, -2)
            if is_causal:
                causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            if attn_mask is not None:
                scores = scores + attn_mask
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                 scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out), weights


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(dim, hidden)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)[0]
        return x + self.mlp(self.norm2(x))


class CLIPVisionTower(nn.Module):
    """CLIP ViT. ``forward(pixel_values [B,3,S,S], layers) -> list of hidden states [B, 1+g*g, C]``.

    Hidden state 0 is the embedding output after ``pre_norm``; hidden state ``i+1`` is the output of
    block ``i``. Only the blocks needed for the requested states are run. When ``S`` differs from the
    native size, the patch rows of the position table (a ``g0 x g0`` grid) are resized bicubically
    (``align_corners=False``) to the new grid; the CLS row is kept.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.patch_embed = nn.Conv2d(3, c, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(c))
        self.position_embedding = nn.Parameter(torch.zeros(config.native_grid ** 2 + 1, c))
        self.pre_norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(c, config.num_heads, config.intermediate_size, config.layer_norm_eps)
            for _ in range(config.num_layers))

    def position_table(self, grid: int) -> torch.Tensor:
        """Position embeddings [1 + grid*grid, C] for a ``grid x grid`` token grid."""
        return resize_position_table(self.position_embedding, self.config.native_grid, grid)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        b, c, gh, gw = x.shape
        if gh != gw:
            raise ValueError(f"the vision tower needs a square input, got a {gh}x{gw} token grid")
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(b, 1, c).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.position_table(gh).to(x.dtype)
        return self.pre_norm(x)

    def forward(self, pixel_values: torch.Tensor, hidden_state_indices: list[int] | None = None) -> list[torch.Tensor]:
        """Return the hidden states ``hidden_state_indices`` (default: all ``num_layers + 1``)."""
        wanted = list(range(self.config.num_layers + 1)) if hidden_state_indices is None else hidden_state_indices
        last = max(wanted)
        x = self.embed(pixel_values)
        states = {0: x}
        for i, layer in enumerate(self.layers[:last]):
            x = layer(x)
            states[i + 1] = x
        return [states[i] for i in wanted]


class CLIPTextTower(nn.Module):
    """CLIP text transformer + projection.

    ``forward(input_ids [P, L], attention_mask [P, L] | None) -> [P, projection_dim]``: the final-norm
    hidden state at the end-of-text token (the first occurrence of the largest id, as CLIP's
    ``argmax(input_ids)``), projected without bias and not normalised. Attention is causal; the
    padding mask is applied too, although with right padding it cannot change the pooled output.
    """

    def __init__(self, config: TextConfig, projection_dim: int) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, d)
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(d, config.num_heads, config.intermediate_size, config.layer_norm_eps)
            for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.projection = nn.Linear(d, projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        p, length = input_ids.shape
        if length > self.config.max_position_embeddings:
            raise ValueError(f"token sequence of length {length} exceeds {self.config.max_position_embeddings}")
        positions = torch.arange(length, device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        mask = None
        is_causal = True
        if attention_mask is not None and not bool(attention_mask.all()):
            # additive causal + padding mask with finfo.min, as the official CLIP text model
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
            mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~allowed, torch.finfo(x.dtype).min)
            is_causal = False
        for layer in self.layers:
            x = layer(x, attn_mask=mask, is_causal=is_causal)
        x = self.final_norm(x)
        eos = input_ids.argmax(dim=-1)
        pooled = x[torch.arange(p, device=x.device), eos]
        return self.projection(pooled)
