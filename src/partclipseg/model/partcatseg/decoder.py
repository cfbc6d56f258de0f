"""CAT-Seg's guided upsampling decoder: two x2 ``GuidedUp`` stages and a 3x3 head to one logit per class.

``CostDecoder.forward(x [B, C, K, g, g], guidance ([B, G1, 2g, 2g], [B, G2, 4g, 4g])) -> [B, K, 4g, 4g]``.
"""
from __future__ import annotations

import torch
from torch import nn


class GuidedUp(nn.Module):
    """ConvTranspose2d(k2, s2) to ``in - guidance`` channels, concat the (per-class repeated) guidance,
    then (Conv3x3 no bias -> GroupNorm(out // 16) -> ReLU) x 2. x [B*K, in, h, w] -> [B*K, out, 2h, 2w]."""

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(out_channels // 16, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(out_channels // 16, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        guidance = guidance.repeat_interleave(x.shape[0] // guidance.shape[0], dim=0)
        return self.double_conv(torch.cat([x, guidance], dim=1))


class CostDecoder(nn.Module):
    def __init__(self, hidden_dim: int, decoder_dims: tuple[int, int], guidance_dims: tuple[int, int]) -> None:
        super().__init__()
        self.up1 = GuidedUp(hidden_dim, decoder_dims[0], guidance_dims[0])
        self.up2 = GuidedUp(decoder_dims[0], decoder_dims[1], guidance_dims[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, guidance: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, c, k, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * k, c, h, w)
        y = self.head(self.up2(self.up1(y, guidance[0]), guidance[1]))
        return y.reshape(b, k, *y.shape[-2:])
