"""The PartCATSeg model (CVPR 2025, kaist-cvml/part-catseg): CLIP ViT-B/16 costs, DINOv2 guidance,
disentangled object / generalized-part / object-specific-part aggregation.

Stages (B images, T object-specific classes, N+1 = P parts + O objects + background, E = CLIP embed):

* ``encode_vocabulary(vocabulary) -> PartCATSegText``: per-template text features of the
  part-object names [N+1, Tpl, E] and of the specific names [T+1, Tpl, E] (cached per vocabulary).
* ``encode_image(clip_input [B,3,384,384], dino_input [B,3,448,448]) -> PartCATSegImage``: dense CLIP
  features [B, E, 24, 24] and DINOv2 guidance maps (res4 24², res3 48², res2 96²).
* ``decode(image, text) -> (part_object_logits [B, N+1, 96, 96], specific_logits [B, T+1, 96, 96], costs)``.

Parameter roots: ``clip_image`` / ``clip_text`` (OpenAI layout below), ``background_text_embedding``
(the official ``non_object_embedding``), ``dino.dinov2`` (DINOv2 layout below), ``aggregator``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...vocabulary import Vocabulary
from .aggregator import PartCATSegAggregator
from .clip import CLIPImageTower, CLIPTextTower
from .config import PartCATSegConfig
from .dinov2 import DinoV2Backbone
from .preprocess import preprocess_images
from .templates import IMAGENET_TEMPLATES
from .text import per_template_features, prompt_token_ids


@dataclass
class PartCATSegText:
    """Text features of one vocabulary (float32, on the model's device).

    part_object [N+1, Tpl, E]; specific [T+1, Tpl, E]; part_index / object_index [T] int64
    (generalized-part id / object id of each class); num_parts = P.
    """

    vocabulary: Vocabulary
    part_object: torch.Tensor
    specific: torch.Tensor
    part_index: torch.Tensor
    object_index: torch.Tensor

    @property
    def num_parts(self) -> int:
        return self.vocabulary.num_parts


@dataclass
class PartCATSegImage:
    """features [B, E, g, g] (dense CLIP, CLS dropped); guidance = (res4, res3, res2) DINOv2 maps."""

    features: torch.Tensor
    guidance: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PartCATSeg(nn.Module):
    def __init__(self, config: PartCATSegConfig, templates: Sequence[str] = IMAGENET_TEMPLATES) -> None:
        super().__init__()
        if len(templates) != config.aggregator.num_templates:
            raise ValueError(f"{len(templates)} templates for a model built for {config.aggregator.num_templates}")
        self.config = config
        self.templates = tuple(templates)
        self.clip_image = CLIPImageTower(config.clip)
        self.clip_text = CLIPTextTower(config.clip)
        self.background_text_embedding = nn.Parameter(torch.zeros(1, config.clip.embed_dim))
        self.dino = DinoV2Backbone(config.dino, config.guidance_sizes)
        self.aggregator = PartCATSegAggregator(config)
        self._text_cache: dict[tuple[str, ...], PartCATSegText] = {}
        self._name_cache: dict[tuple[str, bool], torch.Tensor] = {}  # (name, fp16) -> [Tpl, E]
        # CLIP is frozen in the official recipe (CLIP_FINETUNE: "")
        for p in (*self.clip_image.parameters(), *self.clip_text.parameters()):
            p.requires_grad_(False)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_class_names(self, names: Sequence[str]) -> torch.Tensor:
        """names (K) -> per-template features [K+1, Tpl, E] float32, last row = normalised background.

        With ``config.official.text_features_fp16`` the CLIP text tower and the per-template
        normalisation run in float16, as the official ``__init__`` does. Each name's features are
        cached (a name shared by several vocabularies is encoded once); the prompts of all
        uncached names are encoded in one batch.
        """
        device = self.background_text_embedding.device
        fp16 = self.config.official.text_features_fp16
        todo = [n for n in dict.fromkeys(names) if (n, fp16) not in self._name_cache]
        if todo:
            ids, counts = prompt_token_ids(todo, self.templates, self.config.clip.context_length)
            encoded = self.clip_text(ids.to(device), dtype=torch.float16 if fp16 else torch.float32)
            features = per_template_features(encoded, counts, len(self.templates)).float()
            self._name_cache.update({(n, fp16): f for n, f in zip(todo, features)})
        bg = self.background_text_embedding / self.background_text_embedding.norm(dim=-1, keepdim=True)
        bg = bg.expand(1, len(self.templates), -1).float()
        return torch.cat([torch.stack([self._name_cache[(n, fp16)] for n in names]), bg], dim=0)

    def encode_vocabulary(self, vocabulary: Vocabulary | Sequence[str]) -> PartCATSegText:
        """Text features of a vocabulary, cached per class list (cleared by ``clear_text_cache``)."""
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary.from_names(vocabulary)
        key = (vocabulary.object_specific_classes, self.config.official.text_features_fp16)
        cached = self._text_cache.get(key)
        if cached is not None and cached.specific.device == self.background_text_embedding.device:
            return cached
        part_object = self.encode_class_names([*vocabulary.parts, *vocabulary.objects])
        specific = self.encode_class_names(list(vocabulary.object_specific_classes))
        device = part_object.device
        text = PartCATSegText(vocabulary, part_object, specific,
                              torch.tensor(vocabulary.text_to_part, dtype=torch.int64, device=device),
                              torch.tensor(vocabulary.text_to_object, dtype=torch.int64, device=device))
        self._text_cache[key] = text
        return text

    def clear_text_cache(self) -> None:
        """Forget cached text features (call after changing CLIP text weights or the background embedding)."""
        self._text_cache.clear()
        self._name_cache.clear()

    def _apply(self, fn, *args, **kwargs):  # moving the model invalidates cached tensors
        self.clear_text_cache()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ image
    def preprocess(self, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """uint8 RGB [3, H, W] images -> ``clip_input`` / ``dino_input`` (see ``preprocess.py``)."""
        return preprocess_images(images, self.config)

    def encode_image(self, clip_input: torch.Tensor, dino_input: torch.Tensor,
                     trace: dict | None = None) -> PartCATSegImage:
        """clip_input [B, 3, Rc, Rc], dino_input [B, 3, Rd, Rd] -> dense CLIP features and guidance."""
        dense = self.clip_image.forward_dense(clip_input)              # [B, 1 + g*g, E]
        g = self.config.cost_grid
        if dense.shape[1] != g * g + 1:
            raise ValueError(f"CLIP gave {dense.shape[1] - 1} tokens, the aggregator expects {g}x{g}")
        features = dense[:, 1:].transpose(1, 2).reshape(dense.shape[0], -1, g, g)
        dino_out = {} if trace is not None else None
        res2, res3, res4 = self.dino(dino_input, dino_out)
        if trace is not None:
            trace["clip.dense"] = dense
            trace.update({f"dino.{k}": v for k, v in dino_out.items()})
            trace.update({"dino.res2": res2, "dino.res3": res3, "dino.res4": res4})
        return PartCATSegImage(features, (res4, res3, res2))

    # ------------------------------------------------------------------ decode
    def decode(self, image: PartCATSegImage, text: PartCATSegText, trace: dict | None = None):
        """-> (part_object_logits [B, N+1, 4g, 4g], specific_logits [B, T+1, 4g, 4g], costs dict).

        ``trace`` (optional) receives the aggregator intermediates as ``agg.*``.
        """
        b = image.features.shape[0]
        agg_trace = {} if trace is not None else None
        out = self.aggregator(image.features, text.part_object.expand(b, -1, -1, -1),
                              text.specific.expand(b, -1, -1, -1), image.guidance, text.part_index,
                              text.object_index, text.num_parts, agg_trace)
        if trace is not None:
            trace.update({f"agg.{k}": v for k, v in agg_trace.items()})
        return out

    def forward(self, images: Sequence[torch.Tensor], vocabulary: Vocabulary | Sequence[str]):
        """uint8 RGB images + vocabulary -> ``decode``'s outputs (logits at 4g x 4g, padded-image frame)."""
        inputs = self.preprocess(images)
        return self.decode(self.encode_image(inputs["clip_input"], inputs["dino_input"]),
                           self.encode_vocabulary(vocabulary))
