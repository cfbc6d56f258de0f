"""CAT-Seg cost aggregation: spatial (Swin windows, appearance-guided) and class (text-guided) layers.

Cost embeddings are 5-D: ``[B, C, K, H, W]`` (batch, hidden channels, classes, grid). One
``AggregationLayer`` = ``SpatialAggregation`` (two Swin blocks, shift 0 then ``window // 2``, each
class separately) followed by ``ClassAggregation`` (attention across the K classes at every pooled
grid position).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WindowAttention(nn.Module):
    """Window self-attention; q, k see ``[x, guidance]``, v sees x only. x: [Bw, N, C + G] -> [Bw, N, C]."""

    def __init__(self, dim: int, guidance_dim: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, _ = x.shape
        q = self.q(x).reshape(bw, n, self.heads, -1).transpose(1, 2)
        k = self.k(x).reshape(bw, n, self.heads, -1).transpose(1, 2)
        v = self.v(x[..., :self.dim]).reshape(bw, n, self.heads, -1).transpose(1, 2)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if mask is not None:  # mask [nW, N, N]; windows are batch-major
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, -1)
        return self.proj(out)


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * H/w * W/w, w*w, C] (row-major windows)."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _unwindows(x: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of ``_windows``: [B * nW, w*w, C] -> [B, H, W, C]."""
    c = x.shape[-1]
    b = x.shape[0] // ((h // w) * (wd // w))
    return x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)


class SwinBlock(nn.Module):
    """Swin block with appearance guidance. ``forward(x [B', H*W, C], guidance [B', H*W, G]) -> same as x``.

    If the grid is not larger than the window, the window is the whole grid and there is no shift.
    Shifted windows mask cross-region pairs with -100 (Swin's mask).
    """

    def __init__(self, dim: int, guidance_dim: int, resolution: tuple[int, int], heads: int, window: int,
                 shift: int) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance_dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(4 * dim, dim)
        self.register_buffer("attn_mask", self._shift_mask() if shift else None, persistent=False)

    def _shift_mask(self) -> torch.Tensor:
        h, w = self.resolution
        region = torch.zeros(1, h, w, 1)
        cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        label = 0
        for hs in cuts:
            for ws in cuts:
                region[:, hs, ws, :] = label
                label += 1
        ids = _windows(region, self.window).squeeze(-1)  # [nW, w*w]
        diff = ids[:, None, :] - ids[:, :, None]
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        h, w = self.resolution
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"Swin block expects {h}x{w} tokens, got {length}")
        y = self.norm1(x).view(b, h, w, c)
        if guidance is not None:
            y = torch.cat([y, guidance.view(b, h, w, -1)], dim=-1)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(_windows(y, self.window), self.attn_mask)
        y = _unwindows(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Two Swin blocks over each class's cost map. x [B, C, K, H, W], guidance [B, G, H, W] -> x's shape."""

    def __init__(self, dim: int, guidance_dim: int, resolution: tuple[int, int], heads: int, window: int) -> None:
        super().__init__()
        self.block_1 = SwinBlock(dim, guidance_dim, resolution, heads, window, 0)
        self.block_2 = SwinBlock(dim, guidance_dim, resolution, heads, window, window // 2)
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        b, c, k, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b * k, h * w, c)
        if guidance is not None:
            g = guidance.flatten(2).transpose(1, 2)  # [B, HW, G]
            guidance = self.guidance_norm(g.repeat_interleave(k, dim=0))
        x = self.block_2(self.block_1(x, guidance), guidance)
        return x.reshape(b, k, h, w, c).permute(0, 4, 1, 2, 3)


def query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """PartCATSeg's ``QueryAttention``: softmax over the *queries*, + eps, then renormalised over keys.

    q [N, L, H, D], k / v [N, S, H, D] -> [N, L, H, D].
    """
    scores = torch.einsum("nlhd,nshd->nlsh", q, k) / q.shape[-1] ** 0.5
    a = scores.softmax(dim=1) + eps
    a = a / a.sum(dim=2, keepdim=True)
    return torch.einsum("nshd,nlsh->nlhd", v, a)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """CAT-Seg's linear attention (elu + 1 feature map). Shapes as ``query_attention``."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, v / length)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * length


class ClassAggregation(nn.Module):
    """Attention across classes at every position of the ``pooling``-averaged grid.

    ``forward(x [B, C, K, H, W], text_guidance [B, K, Gt]) -> x + upsample(block(pool(x)))``, the block
    being pre-norm attention (q, k from ``[norm1(x), guidance]``, v from ``norm1(x)``; no output
    projection) and a ReLU MLP (4x); the upsampling is bilinear with ``align_corners=True``.
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int, pooling: tuple[int, int], attention: str) -> None:
        super().__init__()
        self.heads = heads
        self.pool = nn.AvgPool2d(tuple(pooling))
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.attend = query_attention if attention == "query" else linear_attention
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, text_guidance: torch.Tensor) -> torch.Tensor:
        b, c, k, h, w = x.shape
        pooled = self.pool(x.transpose(1, 2).reshape(b * k, c, h, w))
        hp, wp = pooled.shape[-2:]
        y = pooled.reshape(b, k, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, k, c)
        g = text_guidance.repeat_interleave(hp * wp, dim=0)
        n = self.norm1(y)
        qk_in = torch.cat([n, g], dim=-1)
        split = (b * hp * wp, k, self.heads, c // self.heads)
        out = self.attend(self.q(qk_in).view(split), self.k(qk_in).view(split), self.v(n).view(split))
        y = y + out.reshape(b * hp * wp, k, c)
        y = y + self.mlp(self.norm2(y))
        y = y.reshape(b, hp, wp, k, c).permute(0, 3, 4, 1, 2).reshape(b * k, c, hp, wp)
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
        return x + y.reshape(b, k, c, h, w).transpose(1, 2)


class AggregationLayer(nn.Module):
    """Spatial then class aggregation. x [B, C, K, H, W] -> same shape.

    ``trace`` (optional dict) receives ``"spatial.out"`` (after the Swin blocks).
    """

    def __init__(self, dim: int, text_guidance_dim: int, appearance_guidance_dim: int, heads: int,
                 resolution: tuple[int, int], pooling: tuple[int, int], window: int, attention: str) -> None:
        super().__init__()
        self.spatial = SpatialAggregation(dim, appearance_guidance_dim, resolution, heads, window)
        self.classwise = ClassAggregation(dim, text_guidance_dim, heads, pooling, attention)

    def forward(self, x: torch.Tensor, appearance_guidance: torch.Tensor, text_guidance: torch.Tensor,
                trace: dict | None = None) -> torch.Tensor:
        x = self.spatial(x, appearance_guidance)
        if trace is not None:
            trace["spatial.out"] = x
        return self.classwise(x, text_guidance)
