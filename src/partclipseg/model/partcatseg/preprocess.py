"""PartCATSeg image preprocessing (the official meta-arch, before the towers).

Each uint8 RGB image [3, H, W] is normalised twice (CLIP and DINOv2 statistics), zero-padded at the
bottom/right to the batch's largest size rounded up to ``size_divisibility`` (detectron2
``ImageList.from_tensors``), and the whole padded batch is resized bilinearly (align_corners=False,
no antialias, aspect ratio not kept) to ``clip_resolution`` and ``dino_resolution``. The padding is
never removed (the logits are later resized to the unpadded size: official behaviour).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .config import PartCATSegConfig


def pad_batch(images: Sequence[torch.Tensor], divisibility: int) -> torch.Tensor:
    """[3, Hi, Wi] float images -> [B, 3, Hp, Wp], zero-padded bottom/right, Hp/Wp multiples of ``divisibility``."""
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    if divisibility > 1:
        h = (h + divisibility - 1) // divisibility * divisibility
        w = (w + divisibility - 1) // divisibility * divisibility
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]] = im
    return out


def normalise(images: Sequence[torch.Tensor], mean: Sequence[float], std: Sequence[float]) -> list[torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return [(im.float() - m.to(im.device)) / s.to(im.device) for im in images]


def check_images(images: Sequence[torch.Tensor]) -> None:
    if isinstance(images, torch.Tensor) or not images:
        raise ValueError("images must be a non-empty list of [3, H, W] tensors")
    for i, im in enumerate(images):
        if not isinstance(im, torch.Tensor) or im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"image {i} must be a [3, H, W] RGB tensor, got "
                             f"{tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__}")


def preprocess_images(images: Sequence[torch.Tensor], config: PartCATSegConfig) -> dict[str, torch.Tensor]:
    """uint8 (0..255) RGB images -> ``clip_padded`` / ``dino_padded`` [B, 3, Hp, Wp] and ``clip_input``
    [B, 3, Rc, Rc] / ``dino_input`` [B, 3, Rd, Rd] (Rc = clip_resolution, Rd = dino_resolution)."""
    check_images(images)
    out = {}
    for name, mean, std, size in (("clip", config.clip_pixel_mean, config.clip_pixel_std, config.clip_resolution),
                                  ("dino", config.dino_pixel_mean, config.dino_pixel_std, config.dino_resolution)):
        padded = pad_batch(normalise(images, mean, std), config.size_divisibility)
        out[f"{name}_padded"] = padded
        out[f"{name}_input"] = F.interpolate(padded, size=(size, size), mode="bilinear", align_corners=False)
    return out


class PartCATSegPixels(dict):
    """``preprocess``'s output: ``clip_input`` [B, 3, Rc, Rc], ``dino_input`` [B, 3, Rd, Rd], the padded
    batches ``clip_padded`` / ``dino_padded`` [B, 3, Hp, Wp] and ``image_sizes`` [B, 2] int64 (each
    image's (H, W); the ``image_sizes`` property lists them) — all tensors, so that
    DistributedDataParallel's input scattering (which rebuilds a dict subclass from its items) keeps it
    whole; ``padded_size`` = (Hp, Wp)."""

    def __init__(self, tensors: Any, image_sizes: Sequence[tuple[int, int]] | None = None) -> None:
        super().__init__(tensors)
        if image_sizes is not None:
            self["image_sizes"] = torch.tensor([list(s) for s in image_sizes], dtype=torch.int64).view(-1, 2)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return [(int(h), int(w)) for h, w in self["image_sizes"].tolist()]

    @property
    def padded_size(self) -> tuple[int, int]:
        return tuple(int(x) for x in self["clip_padded"].shape[-2:])

    def to(self, device: str | torch.device) -> "PartCATSegPixels":
        return PartCATSegPixels({k: v.to(device) for k, v in self.items()})
