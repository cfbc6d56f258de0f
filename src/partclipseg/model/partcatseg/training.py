"""PartCATSeg behind the common training loop: text inputs, training-image preprocessing, trainable
sets, and the official loss on the loop's label format.

The loop (``partclipseg.train.loop``) calls, without knowing the architecture::

    text   = model.tokenize_vocabulary(vocabulary, tokenizer)        # PartCATSegTextInputs
    inputs = preprocessor.collate([preprocessor.sample(img) ...])    # PartCATSegPixels
    output = ddp_model(inputs, **text.forward_kwargs())              # PartCATSegOutput (logits + costs)
    losses = model.loss(output, part_labels, object_labels, text, object_to_model, loss_config)

Labels (the loop's format): ``part_labels[i]`` [H, W] training classes 0..T-1, ``-1`` ignore;
``object_labels[i]`` [H, W] dataset (training) object ids, ``-1`` ignore; ``object_to_model`` [K] maps
a dataset object id to the vocabulary's object (0..O-1) or ``-1`` (an object without parts). They
become the official 255-ignore maps and lookup tables (``losses.partcatseg_loss``).

Batch semantics (``loss_config.per_image``): ``True`` = each term on each image alone, averaged over
the images — the official run (``--num-gpus 4``, ``IMS_PER_BATCH: 4``: one image per GPU, DDP
averages) and the same for any process count; ``False`` = each term once over the whole batch — the
official code on one process's batch (the reference fixtures; label maps must then share one size,
as the official ``torch.stack`` requires).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ..base import TextInputs, TrainPreprocessor
from .config import PartCATSegConfig
from .losses import IGNORE, partcatseg_loss
from .preprocess import PartCATSegPixels, preprocess_images
from .text import class_ids_to_parts

#: recipe ``trainable`` values (``PartCATSeg.is_trainable``). CLIP's text tower is frozen in all of them
#: (the official code freezes every non-``visual`` CLIP parameter whatever ``CLIP_FINETUNE`` says).
#:
#: * ``"official"`` — ``CLIP_FINETUNE: ""`` of the three PartCATSeg YAMLs: CLIP frozen; DINOv2 and the
#:   aggregator trained. The background embedding (``non_object_embedding``) is left out: it only
#:   enters the text features, which are computed without gradient, so the official optimizer never
#:   changes it either (AdamW skips parameters without a gradient).
#: * ``"clip-attention"`` — CAT-Seg's ``CLIP_FINETUNE: "attention"`` (``base_partcatseg_config.yaml``):
#:   also every CLIP image-tower parameter whose official name contains ``attn`` or ``position``.
#: * ``"clip-image"`` — ``CLIP_FINETUNE: "full"``: also the whole CLIP image tower.
TRAINABLE_SETS = ("official", "clip-attention", "clip-image")


def is_trainable(name: str, which: str) -> bool:
    """The rule of ``TRAINABLE_SETS`` for parameter ``name`` (our names: ``clip_image.*``, ``clip_text.*``,
    ``background_text_embedding``, ``dino.*``, ``aggregator.*``)."""
    if which not in TRAINABLE_SETS:
        raise ConfigError(f"PartCATSeg trainable must be one of {TRAINABLE_SETS}, got {which!r}")
    if name.startswith("clip_text.") or name == "background_text_embedding":
        return False
    if name.startswith("clip_image."):
        if which == "clip-image":
            return True
        # official names: visual.transformer.resblocks.N.attn.*, visual.positional_embedding
        return which == "clip-attention" and (".attn." in name or "positional_embedding" in name)
    return True


@dataclass
class PartCATSegTextInputs(TextInputs):
    """``TextInputs`` of PartCATSeg: the vocabulary is the text side (the model tokenises and caches its
    own prompt ensemble), so ``forward_kwargs`` passes it on; ``input_ids`` / ``attention_mask`` are empty
    [0, context] placeholders."""

    def to(self, device: str | torch.device) -> "PartCATSegTextInputs":
        return PartCATSegTextInputs(self.vocabulary, self.input_ids.to(device), self.attention_mask.to(device),
                                    self.text_to_part.to(device), self.text_to_object.to(device))

    def forward_kwargs(self) -> dict[str, Any]:
        return {**super().forward_kwargs(), "vocabulary": self.vocabulary}


@dataclass(frozen=True)
class PartCATSegTrainPreprocessor(TrainPreprocessor):
    """Training input of PartCATSeg: each augmented HWC uint8 image -> [3, H, W] uint8 (channels reversed
    for ``channel_order="BGR"``; the official ``INPUT.FORMAT`` is RGB); a batch -> ``model.preprocess``'s
    ``PartCATSegPixels`` (two normalisations, zero padding to the batch's multiple of 32, resize to the
    CLIP / DINOv2 inputs: the official meta-architecture's per-batch preprocessing)."""

    config: PartCATSegConfig
    channel_order: str = "RGB"

    def sample(self, image: np.ndarray) -> torch.Tensor:
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        array = np.ascontiguousarray(image[..., ::-1] if self.channel_order == "BGR" else image)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def collate(self, items: Sequence[torch.Tensor]) -> Any:
        items = list(items)
        return PartCATSegPixels(preprocess_images(items, self.config),
                                [(int(t.shape[-2]), int(t.shape[-1])) for t in items])


def _official_maps(part_labels: Sequence[torch.Tensor], object_labels: Sequence[torch.Tensor],
                   object_to_model: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Loop labels (-1 ignore) -> the official 255-ignore class / object maps and the [256] object table."""
    if object_to_model.numel() >= IGNORE:
        raise ConfigError(f"{object_to_model.numel()} dataset objects: the official 255-ignore maps hold at most "
                          f"{IGNORE - 1}")
    device = object_to_model.device
    table = torch.full((IGNORE + 1,), IGNORE, dtype=torch.int64, device=device)
    table[: object_to_model.numel()] = torch.where(object_to_model >= 0, object_to_model.long(),
                                                   torch.full_like(object_to_model.long(), IGNORE))
    classes = [torch.where(t < 0, IGNORE, t.long()) for t in part_labels]
    objects = [torch.where(t < 0, IGNORE, t.long()) for t in object_labels]
    for c in classes:
        if c.numel() and int(c.max()) > IGNORE:
            raise ConfigError(f"class id {int(c.max())} does not fit the official 255-ignore maps")
    return classes, objects, table


def training_loss(output: Any, part_labels: Sequence[torch.Tensor], object_labels: Sequence[torch.Tensor],
                  text: TextInputs, object_to_model: torch.Tensor, loss_config: Any) -> dict[str, torch.Tensor]:
    """``PartCATSeg.loss``: the official loss (``losses.partcatseg_loss``) of a ``PartCATSegOutput``.

    Weights from the recipe's loss section: ``background_weight`` (official 0.05), ``part_lambda``,
    ``obj_lambda``, ``jsd_lambda`` (official 1.0 each); ``per_image`` as in the module docstring.
    Returns ``total``, ``specific_part``, ``part``, ``obj``, ``jsd`` (scalars; with ``per_image=False``
    also the ``bce.{i}.*`` calls and the JSD distributions, as ``partcatseg_loss``).
    """
    costs = getattr(output, "costs", None)
    if costs is None:
        raise ConfigError("PartCATSeg.loss needs the correlation volumes (PartCATSegOutput.costs) of forward")
    vocabulary = text.vocabulary
    b = output.logits.shape[0]
    if len(part_labels) != b or len(object_labels) != b:
        raise ValueError(f"{b} images but {len(part_labels)} part and {len(object_labels)} object label maps")
    classes, objects, object_table = _official_maps(part_labels, object_labels, object_to_model)
    class_table = class_ids_to_parts(vocabulary.text_to_part).to(object_table.device)
    object_index = torch.tensor(vocabulary.text_to_object, dtype=torch.int64, device=object_table.device)
    weights = dict(background_weight=float(loss_config.background_weight),
                   lambda_part=float(loss_config.part_lambda), lambda_obj=float(loss_config.obj_lambda),
                   lambda_jsd=float(loss_config.jsd_lambda))
    po, sp = output.logits.float(), output.object_part_logits.float()
    volumes = {k: v.float() for k, v in costs.items() if k in ("part_obj_cost", "specific_part_cost")}

    if not loss_config.per_image:
        sizes = {tuple(c.shape) for c in classes} | {tuple(o.shape) for o in objects}
        if len(sizes) != 1:
            raise ConfigError(f"loss.per_image=false needs label maps of one size (the official torch.stack), got "
                              f"{sorted(sizes)}; use per_image=true or a fixed-size augmentation")
        return partcatseg_loss(po, sp, volumes, torch.stack(classes), torch.stack(objects), class_table,
                               object_table, object_index, vocabulary.num_parts, **weights)
    terms = ("total", "specific_part", "part", "obj", "jsd")
    sums = {k: po.new_zeros(()) for k in terms}
    for i in range(b):
        one = partcatseg_loss(po[i:i + 1], sp[i:i + 1], {k: v[i:i + 1] for k, v in volumes.items()}, classes[i][None],
                              objects[i][None], class_table, object_table, object_index, vocabulary.num_parts, **weights)
        for k in terms:
            sums[k] = sums[k] + one[k]
    return {k: v / b for k, v in sums.items()}
