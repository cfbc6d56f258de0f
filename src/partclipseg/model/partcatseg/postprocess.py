"""PartCATSeg inference protocols and the official evaluator's per-pixel maps.

* Oracle-Obj (``sem_seg``): sigmoid(specific logits) of the T classes, every class not belonging
  to the given object set to -1, cropped to the unpadded image and resized to the output size.
* Pred-All (``sem_seg_all``): sigmoid of all T+1 channels (background last), nothing masked.

Sigmoid is applied **before** upsampling (official). Shapes: logits [T+1, 4g, 4g] for one image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...vocabulary import parse_class_name

IGNORE = 255


def oracle_masked_classes(class_names: Sequence[str], object_name: str, substring_match: bool = True) -> list[int]:
    """Indices of the classes Oracle-Obj sets to -1 for ``object_name``.

    ``substring_match`` (official): a class is kept when ``object_name`` occurs anywhere in its name
    (``"car"`` keeps ``"cart's wheel"``); otherwise when its object part equals ``object_name``.
    """
    if substring_match:
        return [i for i, name in enumerate(class_names) if object_name not in name]
    return [i for i, name in enumerate(class_names) if parse_class_name(name)[0] != object_name]


def resize_to_output(maps: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """detectron2 ``sem_seg_postprocess``: crop [K, h, w] to ``image_size`` then bilinear to ``output_size``."""
    maps = maps[:, : image_size[0], : image_size[1]]
    return F.interpolate(maps[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]


def oracle_obj(specific_logits: torch.Tensor, class_names: Sequence[str], object_name: str,
               image_size: tuple[int, int], output_size: tuple[int, int], substring_match: bool = True) -> torch.Tensor:
    """[T+1, h, w] logits -> [T, H0, W0] scores (sigmoid, other objects' classes = -1)."""
    scores = specific_logits.sigmoid()[:-1].clone()
    scores[oracle_masked_classes(class_names, object_name, substring_match)] = -1.0
    return resize_to_output(scores, image_size, output_size)


def pred_all(specific_logits: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """[T+1, h, w] logits -> [T+1, H0, W0] sigmoid scores (background last)."""
    return resize_to_output(specific_logits.sigmoid(), image_size, output_size)


def evaluation_maps(oracle_scores: torch.Tensor, all_scores: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official evaluator's per-pixel maps for one image.

    oracle_scores [T, H0, W0], all_scores [T+1, H0, W0], gt [h, w] class ids at mapper resolution
    (255 = ignore), nearest-resized (legacy ``nearest``) to (H0, W0). Ignore pixels become T in the
    GT and in both predictions. Returns ``gt``, ``pred_oracle``, ``pred_all`` [H0, W0] int64.
    """
    t = oracle_scores.shape[0]
    size = tuple(oracle_scores.shape[-2:])
    gt = F.interpolate(gt[None, None].double(), size=size, mode="nearest")[0, 0].long()
    ignore = gt == IGNORE
    pred_oracle = oracle_scores.argmax(dim=0)
    pred_oracle[ignore] = t
    pred_everything = all_scores.argmax(dim=0)
    pred_everything[ignore] = t
    gt = gt.masked_fill(ignore, t)
    return {"gt": gt, "pred_oracle": pred_oracle, "pred_all": pred_everything}


def confusion(pred: torch.Tensor, gt: torch.Tensor, num_classes_with_ignore: int) -> torch.Tensor:
    """[K, K] int64 confusion matrix, pred-major: ``bincount(K * pred + gt)``."""
    k = num_classes_with_ignore
    return torch.bincount((k * pred.reshape(-1) + gt.reshape(-1)).long(), minlength=k * k).reshape(k, k)
