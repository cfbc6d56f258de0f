"""Inference protocols at image size (SPEC §4), as pure tensor functions.

All logits are upsampled bilinearly (``align_corners=False``) from the processing size to the image
size *before* the sigmoid, exactly as the official inference; decisions are argmaxes over sigmoid
scores (ties go to the first index), with no thresholds.

Shapes: ``T`` object-specific classes, ``P`` parts, ``O`` objects, ``H x W`` image size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, s, s] logits -> [C, H, W] (bilinear, align_corners=False), float32."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


@dataclass
class ProtocolOutput:
    """Label maps and (optionally) the scores behind them, at image size.

    * ``part_labels`` [H, W] long: object-specific class, ``T`` = background.
    * ``object_labels`` [H, W] long: object index, ``O`` = background.
    * ``generalized_part_labels`` [H, W] long: generalized part, ``P`` = background.
    * ``part_confidence`` [H, W]: the score of the winning object-specific class.
    * ``part_scores`` [T+1, H, W] (Pred-All: gated sigmoid scores, as the official ``sem_seg_with_bg``;
      object-conditioned: sigmoid scores with the other objects' classes set to 0 and background 0),
      ``object_scores`` [O+1, H, W] and ``generalized_part_scores`` [P, H, W] (sigmoid), when kept.
    """

    part_labels: torch.Tensor
    object_labels: torch.Tensor
    generalized_part_labels: torch.Tensor
    part_confidence: torch.Tensor
    part_scores: torch.Tensor | None = None
    object_scores: torch.Tensor | None = None
    generalized_part_scores: torch.Tensor | None = None


def object_scores(logits: torch.Tensor, num_parts: int, size: tuple[int, int]) -> torch.Tensor:
    """Class-head logits [P+O+1, s, s] -> object/background sigmoid scores [O+1, H, W]."""
    return torch.sigmoid(upsample(logits[num_parts:], size))


def generalized_parts(logits: torch.Tensor, num_parts: int, size: tuple[int, int],
                      object_labels: torch.Tensor, num_objects: int, keep_scores: bool):
    """Generalized-part map: argmax over the P part channels, background where the object head says so."""
    if num_parts == 0:
        return torch.full(size, 0, dtype=torch.long, device=logits.device), None
    scores = torch.sigmoid(upsample(logits[:num_parts], size))
    labels = scores.argmax(0)
    labels[object_labels == num_objects] = num_parts
    return labels, scores if keep_scores else None


def pred_all(logits: torch.Tensor, object_part_logits: torch.Tensor, text_to_object: torch.Tensor,
             num_parts: int, size: tuple[int, int], keep_scores: bool = False) -> ProtocolOutput:
    """Pred-All (SPEC §4.2): the object head's argmax gates which object's parts survive per pixel.

    ``logits`` [P+O+1, s, s], ``object_part_logits`` [T+1, s, s], ``text_to_object`` [T].
    """
    num_objects = logits.shape[0] - num_parts - 1
    obj_scores = object_scores(logits, num_parts, size)
    object_labels = obj_scores.argmax(0)  # O = background
    owner = torch.cat([text_to_object, text_to_object.new_tensor([num_objects])])  # [T+1]
    scores = torch.sigmoid(upsample(object_part_logits, size))
    scores.mul_(owner[:, None, None] == object_labels[None])
    confidence, part_labels = scores.max(0)
    gen_labels, gen_scores = generalized_parts(logits, num_parts, size, object_labels, num_objects, keep_scores)
    return ProtocolOutput(part_labels, object_labels, gen_labels, confidence,
                          scores if keep_scores else None, obj_scores if keep_scores else None, gen_scores)


def object_conditioned(logits: torch.Tensor, object_part_logits: torch.Tensor, text_to_object: torch.Tensor,
                       num_parts: int, size: tuple[int, int], objects: list[int],
                       region: torch.Tensor | None = None, keep_scores: bool = False) -> ProtocolOutput:
    """Oracle-Obj (SPEC §4.1) and the prompt modes: parts of the given objects only.

    Classes whose object is not in ``objects`` get score 0 and the background channel is dropped, so
    every pixel gets the best part of the given object(s), as the official Oracle-Obj. Pixels outside
    ``region`` (bool [H, W], e.g. the object mask) are then labelled background (``T``).
    """
    num_objects = logits.shape[0] - num_parts - 1
    t = object_part_logits.shape[0] - 1
    allowed = torch.isin(text_to_object, text_to_object.new_tensor(objects))
    scores = torch.sigmoid(upsample(object_part_logits[:t], size))
    scores.mul_(allowed[:, None, None])
    confidence, part_labels = scores.max(0)
    obj_scores = object_scores(logits, num_parts, size)
    object_labels = torch.full(size, num_objects, dtype=torch.long, device=scores.device)
    if region is not None:
        part_labels = torch.where(region, part_labels, t)
        confidence = torch.where(region, confidence, 0.0)
        # each pixel of the region takes its best-scoring given object
        chosen = obj_scores[objects].argmax(0)
        object_labels = torch.where(region, torch.as_tensor(objects, device=scores.device)[chosen], num_objects)
    else:
        object_labels = torch.as_tensor(objects, device=scores.device)[obj_scores[objects].argmax(0)]
    gen_labels, gen_scores = generalized_parts(logits, num_parts, size, object_labels, num_objects, keep_scores)
    if keep_scores:
        scores = torch.cat([scores, scores.new_zeros(1, *size)])
    return ProtocolOutput(part_labels, object_labels, gen_labels, confidence,
                          scores if keep_scores else None, obj_scores if keep_scores else None, gen_scores)


def connected_component(mask: torch.Tensor, seed: tuple[int, int], max_iterations: int = 100_000) -> torch.Tensor:
    """The 8-connected component of ``mask`` (bool [H, W]) containing ``seed`` = (row, col)."""
    component = torch.zeros_like(mask)
    if not bool(mask[seed]):
        component[seed] = True
        return component
    component[seed] = True
    allowed = mask[None, None].float()
    current = component[None, None].float()
    for i in range(max_iterations):
        grown = F.max_pool2d(current, 3, stride=1, padding=1) * allowed
        if i % 8 == 7 and torch.equal(grown, current):
            break
        current = grown
    return current[0, 0] > 0
