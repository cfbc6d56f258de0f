"""Inference protocols at image size (SPEC §4), as pure tensor functions.

Models with an object head (``SegmentationOutput.has_object_head``) use ``pred_all`` and
``object_conditioned``; models without one (the CLIPSeg baseline) use ``single_head``. The protocol
names (``PROTOCOLS``) live in ``partclipseg.evaluation``.

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
    """[C, s, s] logits -> a new [C, H, W] float32 tensor (bilinear, align_corners=False)."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.clone()
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


def _running_argmax(best: tuple[torch.Tensor, torch.Tensor] | None, scores: torch.Tensor,
                    offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a chunk of channels [c, H, W] into (best value, best index); ties keep the first index."""
    index = scores.argmax(0)
    value = scores.gather(0, index[None])[0]
    if best is None:
        return value, index + offset
    better = value > best[0]
    return torch.where(better, value, best[0]), torch.where(better, index + offset, best[1])


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
    """Generalized-part map: argmax over the P part channels, background where the object head says so.

    (A visualisation map in the official code: without ``keep_scores`` the argmax is taken on the
    logits, which equals the argmax of the sigmoid scores except where float32 sigmoids saturate.)
    """
    if num_parts == 0:
        return torch.full(size, 0, dtype=torch.long, device=logits.device), None
    up = upsample(logits[:num_parts], size)
    scores = up.sigmoid_() if keep_scores else None
    labels = up.argmax(0)
    labels[object_labels == num_objects] = num_parts
    return labels, scores


def pred_all(logits: torch.Tensor, object_part_logits: torch.Tensor, text_to_object: torch.Tensor,
             num_parts: int, size: tuple[int, int], keep_scores: bool = False, chunk: int = 32) -> ProtocolOutput:
    """Pred-All (SPEC §4.2): the object head's argmax gates which object's parts survive per pixel.

    ``logits`` [P+O+1, s, s], ``object_part_logits`` [T+1, s, s], ``text_to_object`` [T]. Without
    ``keep_scores`` the T+1 channels are processed ``chunk`` at a time (bounded memory); the decision
    is the same argmax over gated sigmoid scores, first index on ties.
    """
    num_objects = logits.shape[0] - num_parts - 1
    obj_scores = object_scores(logits, num_parts, size)
    object_labels = obj_scores.argmax(0)  # O = background
    owner = torch.cat([text_to_object, text_to_object.new_tensor([num_objects])])  # [T+1]
    t1 = object_part_logits.shape[0]
    scores = None
    if keep_scores:
        scores = upsample(object_part_logits, size).sigmoid_()
        scores.masked_fill_(owner[:, None, None] != object_labels[None], 0.0)
        confidence, part_labels = _running_argmax(None, scores, 0)
    else:
        best = None
        for start in range(0, t1, chunk):
            part = upsample(object_part_logits[start:start + chunk], size).sigmoid_()
            part.masked_fill_(owner[start:start + chunk, None, None] != object_labels[None], 0.0)
            best = _running_argmax(best, part, start)
        confidence, part_labels = best
    gen_labels, gen_scores = generalized_parts(logits, num_parts, size, object_labels, num_objects, keep_scores)
    return ProtocolOutput(part_labels, object_labels, gen_labels, confidence,
                          scores, obj_scores if keep_scores else None, gen_scores)


def object_conditioned(logits: torch.Tensor, object_part_logits: torch.Tensor, text_to_object: torch.Tensor,
                       num_parts: int, size: tuple[int, int], objects: list[int],
                       region: torch.Tensor | None = None, keep_scores: bool = False) -> ProtocolOutput:
    """Oracle-Obj (SPEC §4.1) and the prompt modes: parts of the given objects only.

    Classes whose object is not in ``objects`` get score 0 and the background channel is dropped, so
    every pixel gets the best part of the given object(s), as the official Oracle-Obj. Only the
    allowed channels are upsampled; where all of them are 0 the official argmax gives class 0, and so
    does this. Pixels outside ``region`` (bool [H, W], e.g. the object mask) are then background (``T``).
    """
    num_objects = logits.shape[0] - num_parts - 1
    t = object_part_logits.shape[0] - 1
    allowed = torch.isin(text_to_object, text_to_object.new_tensor(objects)).nonzero().flatten()
    allowed_scores = upsample(object_part_logits[allowed], size).sigmoid_()  # [A, H, W]
    confidence, which = _running_argmax(None, allowed_scores, 0)
    part_labels = torch.where(confidence > 0, allowed[which], 0)
    obj_scores = object_scores(logits, num_parts, size)
    given = torch.as_tensor(objects, device=logits.device)
    object_labels = given[obj_scores[objects].argmax(0)]  # each pixel takes its best-scoring given object
    if region is not None:
        part_labels = torch.where(region, part_labels, t)
        confidence = torch.where(region, confidence, 0.0)
        object_labels = torch.where(region, object_labels, num_objects)
    gen_labels, gen_scores = generalized_parts(logits, num_parts, size, object_labels, num_objects, keep_scores)
    scores = None
    if keep_scores:
        scores = allowed_scores.new_zeros(t + 1, *size)
        scores[allowed] = allowed_scores
    return ProtocolOutput(part_labels, object_labels, gen_labels, confidence,
                          scores, obj_scores if keep_scores else None, gen_scores)


def single_head(logits: torch.Tensor, text_to_part: torch.Tensor, text_to_object: torch.Tensor, num_parts: int,
                num_objects: int, size: tuple[int, int], objects: list[int] | None = None,
                region: torch.Tensor | None = None, keep_scores: bool = False) -> ProtocolOutput:
    """Protocols of a model without an object head (the CLIPSeg baseline, SPEC §7).

    ``logits`` [T+1, s, s] (object-specific classes, background last). Pred-All (``objects`` None): a
    plain argmax over the T+1 sigmoid scores. Oracle-Obj (``objects`` given): the classes of other
    objects and the background score 0; pixels outside ``region`` (bool [H, W]) are then background.
    The object and generalized-part maps are read off the winning class.
    """
    t = logits.shape[0] - 1
    scores = torch.sigmoid(upsample(logits, size))
    if objects is not None:
        allowed = torch.isin(text_to_object, torch.tensor(objects, device=scores.device))
        scores = torch.cat([scores[:t] * allowed[:, None, None], scores.new_zeros(1, *size)])
    confidence, labels = scores.max(0)
    if region is not None:
        labels = torch.where(region, labels, t)
    owner = torch.cat([text_to_object, text_to_object.new_tensor([num_objects])])
    part_of = torch.cat([text_to_part, text_to_part.new_tensor([num_parts])])
    return ProtocolOutput(labels, owner[labels], part_of[labels], confidence, scores if keep_scores else None)


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
