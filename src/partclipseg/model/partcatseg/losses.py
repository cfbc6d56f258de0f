"""PartCATSeg training loss (``PartCATSeg.forward`` in training mode, official).

Inputs at GT resolution H x W after upsampling the logits (bilinear, align_corners=False, as logits):
``class_targets`` [B, H, W] object-specific class ids (255 = ignore), ``object_targets`` [B, H, W]
dataset object ids (255 = background / ignore), ``class_to_part`` / ``object_to_model_object``
[256] lookup tables (``text.class_ids_to_parts`` / ``text.object_ids_to_model_objects``).

Terms (BCE with per-channel weight 1, ``background_weight`` on the background channel, mean over
all selected elements):

0. specific [B, T+1] on part-labelled pixels (if any);
1. generalized parts (first P part-object channels) on part-labelled pixels (if any);
2. specific on non-object pixels (object id maps to 255), added to 0 (only if there are both
   object and non-object pixels);
3. objects + background (last O+1 part-object channels) on all pixels, ignore included.

JSD between the object distribution of the raw part-object costs and the specific costs summed
into their objects (template-averaged, softmax over classes + 1e-10). total = specific + lambda_part
* part + lambda_obj * obj + lambda_jsd * jsd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def jensen_shannon_divergence(p: torch.Tensor, q: torch.Tensor, dim: int, eps: float = 1e-10) -> torch.Tensor:
    """Mean over the other axes of JSD(p, q) along ``dim`` (natural log; ``eps`` added to both)."""
    p, q = p + eps, q + eps
    m = 0.5 * (p + q)
    jsd = 0.5 * (p * (p.log() - m.log())).sum(dim=dim) + 0.5 * (q * (q.log() - m.log())).sum(dim=dim)
    return jsd.mean()


def composition_jsd(part_object_cost: torch.Tensor, specific_cost: torch.Tensor, object_index: torch.Tensor,
                    num_parts: int, eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """JSD between object costs and specific costs summed per object.

    part_object_cost [B, Tpl, N+1, g, g], specific_cost [B, Tpl, T+1, g, g], object_index [T].
    Returns (jsd, p_mapped_specific [B, O+1, g*g], q_objects [B, O+1, g*g]).
    """
    b, _, _, h, w = part_object_cost.shape
    objects = part_object_cost.transpose(1, 2)[:, num_parts:].mean(dim=2).reshape(b, -1, h * w)
    specific = specific_cost.transpose(1, 2).mean(dim=2).reshape(b, -1, h * w)
    specific = specific.softmax(dim=1) + eps
    objects = objects.softmax(dim=1) + eps
    num_objects = objects.shape[1] - 1
    mapping = torch.cat([object_index, object_index.new_tensor([num_objects])])
    index = mapping[None, :, None].expand(b, -1, specific.shape[-1])
    mapped = torch.zeros_like(objects).scatter_reduce(1, index, specific, reduce="sum", include_self=False)
    return jensen_shannon_divergence(mapped, objects, dim=1), mapped, objects


def partcatseg_loss(part_object_logits: torch.Tensor, specific_logits: torch.Tensor, costs: dict,
                    class_targets: torch.Tensor, object_targets: torch.Tensor, class_to_part: torch.Tensor,
                    object_to_model_object: torch.Tensor, object_index: torch.Tensor, num_parts: int,
                    background_weight: float = 0.05, lambda_part: float = 1.0, lambda_obj: float = 1.0,
                    lambda_jsd: float = 1.0) -> dict[str, torch.Tensor]:
    """The official loss. Logits [B, N+1, h, w] / [B, T+1, h, w]; targets [B, H, W] int64.

    Returns ``total``, ``specific_part``, ``part``, ``obj``, ``jsd`` and ``bce.{i}.{name}`` (each BCE call
    in call order) plus ``jsd.p_mapped_specific_part_costs`` / ``jsd.q_obj_costs``.
    """
    size = class_targets.shape[-2:]
    po = F.interpolate(part_object_logits, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    sp = F.interpolate(specific_logits, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    num_classes = sp.shape[-1] - 1
    num_objects = po.shape[-1] - 1 - num_parts
    part_targets = class_to_part.to(class_targets.device)[class_targets]
    object_targets = object_to_model_object.to(object_targets.device)[object_targets]
    labelled = class_targets != IGNORE
    part_mask = part_targets != IGNORE
    obj_mask = object_targets != IGNORE

    po_t = torch.zeros_like(po)
    sp_t = torch.zeros_like(sp)
    po_t[..., :num_parts][part_mask] = F.one_hot(part_targets[part_mask], num_parts).to(po.dtype)
    po_t[..., num_parts:-1][obj_mask] = F.one_hot(object_targets[obj_mask], num_objects).to(po.dtype)
    sp_t[..., :num_classes][labelled] = F.one_hot(class_targets[labelled], num_classes).to(sp.dtype)
    po_t[..., -1][~obj_mask] = 1
    sp_t[..., -1][~obj_mask] = 1
    po_w = torch.ones(po.shape[-1], device=po.device)
    sp_w = torch.ones(sp.shape[-1], device=sp.device)
    po_w[-1] = background_weight
    sp_w[-1] = background_weight

    out: dict[str, torch.Tensor] = {}
    zero = po.new_zeros(())
    specific_loss, part_loss = zero, zero
    if part_mask.any():
        specific_loss = F.binary_cross_entropy_with_logits(sp[part_mask], sp_t[part_mask], weight=sp_w)
        out["bce.0.specific_part.part_pixels"] = specific_loss
        part_loss = F.binary_cross_entropy_with_logits(po[..., :num_parts][part_mask], po_t[..., :num_parts][part_mask],
                                                       weight=po_w[:num_parts])
        out["bce.1.part.part_pixels"] = part_loss
    if obj_mask.any() and (~obj_mask).any():
        extra = F.binary_cross_entropy_with_logits(sp[~obj_mask], sp_t[~obj_mask], weight=sp_w)
        out["bce.2.specific_part.non_object_pixels"] = extra
        specific_loss = specific_loss + extra
    obj_loss = F.binary_cross_entropy_with_logits(po[..., num_parts:], po_t[..., num_parts:], weight=po_w[num_parts:])
    out["bce.3.obj.all_pixels"] = obj_loss
    jsd, mapped, objects = composition_jsd(costs["part_obj_cost"], costs["specific_part_cost"],
                                           object_index.to(po.device), num_parts)
    out.update({"jsd.p_mapped_specific_part_costs": mapped, "jsd.q_obj_costs": objects})
    total = specific_loss + lambda_part * part_loss + lambda_obj * obj_loss + lambda_jsd * jsd
    out.update({"specific_part": specific_loss, "part": part_loss, "obj": obj_loss, "jsd": jsd, "total": total})
    return out
