"""The PartCATSeg model (CVPR 2025, kaist-cvml/part-catseg): CLIP ViT-B/16 costs, DINOv2 guidance,
disentangled object / generalized-part / object-specific-part aggregation.

Stages (B images, T object-specific classes, N+1 = P parts + O objects + background, E = CLIP embed):

* ``text_features(vocabulary) -> PartCATSegText``: per-template text features of the
  part-object names [N+1, Tpl, E] and of the specific names [T+1, Tpl, E] (cached per vocabulary).
* ``encode_pixels(clip_input [B,3,384,384], dino_input [B,3,448,448]) -> PartCATSegImage``: dense CLIP
  features [B, E, 24, 24] and DINOv2 guidance maps (res4 24², res3 48², res2 96²).
* ``aggregate(image, text) -> (part_object_logits [B, N+1, 96, 96], specific_logits [B, T+1, 96, 96], costs)``.
* ``run(images, vocabulary)``: the three stages on uint8 images (the official forward's outputs).

The ``PartSegmentationModel`` interface (``base.py``) wraps them: ``preprocess`` (uint8 images ->
``PartCATSegPixels``), ``encode_vocabulary`` -> ``EncodedVocabulary`` (``extras["text"]`` holds the
``PartCATSegText``), ``encode_image`` -> ``PartCATSegImage``, ``decode`` -> ``SegmentationOutput`` with
``logits`` = the part-object logits [B, P+O+1, h, w] and ``object_part_logits`` = the specific logits
[B, T+1, h, w] (official layouts: parts, objects, background last), ``valid_sizes`` the image frames.

Parameter roots: ``clip_image`` / ``clip_text`` (OpenAI layout below), ``background_text_embedding``
(the official ``non_object_embedding``), ``dino.dinov2`` (DINOv2 layout below), ``aggregator``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, PartCLIPSegError
from ...vocabulary import Vocabulary
from ..base import EncodedVocabulary, PartSegmentationModel, SegmentationOutput, TextInputs
from ..registry import register_architecture
from .aggregator import PartCATSegAggregator
from .clip import CLIPImageTower, CLIPTextTower
from .config import PartCATSegConfig, get_partcatseg_config
from .dinov2 import DinoV2Backbone
from .init import copy_part_object_branch, init_clip_towers, init_dinov2
from .preprocess import PartCATSegPixels, preprocess_images
from .templates import IMAGENET_TEMPLATES
from .text import per_template_features, prompt_token_ids, prompts_of
from .training import (TRAINABLE_SETS, PartCATSegTextInputs, PartCATSegTrainPreprocessor, is_trainable,
                       training_loss)


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
    """features [B, E, g, g] (dense CLIP, CLS dropped); guidance = (res4, res3, res2) DINOv2 maps;
    image_sizes / padded_size: each image's (H, W) and the batch's padded (Hp, Wp) (``None`` when
    unknown: the logits then cover the whole frame)."""

    features: torch.Tensor
    guidance: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    image_sizes: list[tuple[int, int]] | None = None
    padded_size: tuple[int, int] | None = None

    def select(self, index) -> "PartCATSegImage":
        """The features of a subset of images (batch indexing)."""
        sizes = None
        if self.image_sizes is not None:
            sizes = [self.image_sizes[i] for i in range(len(self.image_sizes))[index]] \
                if isinstance(index, slice) else [self.image_sizes[int(i)] for i in index]
        return PartCATSegImage(self.features[index], tuple(g[index] for g in self.guidance), sizes, self.padded_size)


@dataclass
class PartCATSegOutput(SegmentationOutput):
    """``SegmentationOutput`` plus ``costs``: the aggregator's correlation volumes (``part_obj_cost``
    [B, Tpl, P+O+1, g, g], ``specific_part_cost`` [B, Tpl, T+1, g, g] and their embeddings), which the
    training loss's composition JSD reads."""

    costs: dict[str, torch.Tensor] | None = None


@register_architecture("partcatseg")
class PartCATSeg(PartSegmentationModel):
    """PartCATSeg behind the common interface (see the module docstring)."""

    config_class = PartCATSegConfig
    trainable_sets = TRAINABLE_SETS
    #: prompts per text-tower batch in ``encode_class_names`` (whole names: at least one name's prompts)
    text_batch_prompts = 1024

    def __init__(self, config: PartCATSegConfig, templates: Sequence[str] | None = None) -> None:
        super().__init__(config)
        templates = templates if templates is not None else (config.templates or IMAGENET_TEMPLATES)
        if len(templates) != config.aggregator.num_templates:
            raise ValueError(f"{len(templates)} templates for a model built for {config.aggregator.num_templates}")
        self.templates = tuple(templates)
        self.clip_image = CLIPImageTower(config.clip)
        self.clip_text = CLIPTextTower(config.clip)
        self.background_text_embedding = nn.Parameter(torch.zeros(1, config.clip.embed_dim))
        self.dino = DinoV2Backbone(config.dino, config.guidance_sizes)
        self.aggregator = PartCATSegAggregator(config)
        self._text_cache: dict[tuple[str, ...], PartCATSegText] = {}
        self._name_cache: dict[tuple[str, bool], torch.Tensor] = {}  # (name, fp16) -> [Tpl, E]
        # CLIP is frozen in the official recipe (CLIP_FINETUNE: ""; partclipseg train sets what its recipe says)
        for p in (*self.clip_image.parameters(), *self.clip_text.parameters()):
            p.requires_grad_(False)

    def init_weights(self) -> None:
        """A new model, initialised as the official code builds one (``init.py``): OpenAI CLIP and DINOv2
        initialisations, the object-specific aggregator branch copied from the part-object branch, the
        background embedding ~ N(0, text_width^-1/2) as the official ``non_object_embedding``."""
        init_clip_towers(self.clip_image, self.clip_text)
        init_dinov2(self.dino.dinov2)
        copy_part_object_branch(self.aggregator)
        nn.init.normal_(self.background_text_embedding, std=self.config.clip.text_width ** -0.5)
        self.clear_text_cache()

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_class_names(self, names: Sequence[str]) -> torch.Tensor:
        """names (K) -> per-template features [K+1, Tpl, E] float32, last row = normalised background.

        With ``config.official.text_features_fp16`` the CLIP text tower and the per-template
        normalisation run in float16, as the official ``__init__`` does. Each name's features are
        cached (a name shared by several vocabularies is encoded once); uncached names are encoded
        in batches of about ``text_batch_prompts`` prompts (memory: the full-size tower holds
        ~10 GB of activations for Pascal-Part-116's 14,000 prompts in one batch).
        """
        device = self.background_text_embedding.device
        fp16 = self.config.official.text_features_fp16
        todo = [n for n in dict.fromkeys(names) if (n, fp16) not in self._name_cache]
        per_batch = max(1, self.text_batch_prompts // len(self.templates))  # names per text-tower batch
        for start in range(0, len(todo), per_batch):
            batch = todo[start:start + per_batch]
            ids, counts = prompt_token_ids(batch, self.templates, self.config.clip.context_length)
            if not fp16:  # causal attention: the pooled EOT token never sees the padding after it, so the
                # padding past the batch's last EOT is dropped (~3x less work than 77 tokens; float32 sums
                # move by rounding only). The fp16 path keeps all 77 to match the official bits.
                ids = ids[:, : int(ids.argmax(dim=-1).max()) + 1]
            encoded = self.clip_text(ids.to(device), dtype=torch.float16 if fp16 else torch.float32)
            features = per_template_features(encoded, counts, len(self.templates)).float()
            self._name_cache.update({(n, fp16): f for n, f in zip(batch, features)})
        bg = self.background_text_embedding / self.background_text_embedding.norm(dim=-1, keepdim=True)
        bg = bg.expand(1, len(self.templates), -1).float()
        return torch.cat([torch.stack([self._name_cache[(n, fp16)] for n in names]), bg], dim=0)

    def text_features(self, vocabulary: Vocabulary | Sequence[str]) -> PartCATSegText:
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

    # interface: PartCATSeg tokenises its prompts itself (CLIP BPE, ``text.prompt_token_ids``)
    def prompts(self, vocabulary: Vocabulary) -> list[str]:
        """Every prompt the text tower reads: part-object names then specific names, each templated."""
        names = [*vocabulary.parts, *vocabulary.objects, *vocabulary.object_specific_classes]
        return [p for name in names for p in prompts_of(name, self.templates)]

    def encode_vocabulary(self, vocabulary: Vocabulary, tokenizer: Any = None) -> EncodedVocabulary:
        """``EncodedVocabulary`` of ``vocabulary`` (``tokenizer`` unused): ``class_embeddings`` [P+O+1, E] =
        the template-mean part-object features, ``extras["text"]`` = the ``PartCATSegText``."""
        text = self.text_features(vocabulary)
        return EncodedVocabulary(text.vocabulary, text.part_object.mean(1), text.part_index, text.object_index,
                                 {"text": text})

    def encode_text_inputs(self, text: TextInputs) -> EncodedVocabulary:
        """The vocabulary of ``text`` encoded (its token ids are not used: see ``encode_vocabulary``)."""
        return self.encode_vocabulary(text.vocabulary)

    def oracle_classes(self, vocabulary: Vocabulary, object_names: Sequence[str]) -> list[int]:
        """Oracle-Obj's kept classes, by the official evaluator's rule when ``official.oracle_substring_match``
        (a class is kept when a given object name occurs anywhere in its name: ``"car"`` keeps
        ``"cart's wheel"``; ``postprocess.oracle_masked_classes``), else the exact object rule. A name
        that keeps no class raises ``VocabularyError``."""
        if not self.config.official.oracle_substring_match:
            return super().oracle_classes(vocabulary, object_names)
        from ...errors import VocabularyError
        from .postprocess import oracle_masked_classes

        names = vocabulary.object_specific_classes
        kept: set[int] = set()
        for name in object_names:
            kept_here = set(range(len(names))) - set(oracle_masked_classes(names, name, substring_match=True))
            if not kept_here:
                raise VocabularyError(f"object {name!r} has no part classes in the vocabulary (objects: "
                                      f"{list(vocabulary.objects)})")
            kept |= kept_here
        return sorted(kept)

    # ------------------------------------------------------------------ image
    def preprocess(self, images: Sequence[Any]) -> PartCATSegPixels:
        """uint8 RGB images ([3, H, W] tensors or [H, W, 3] arrays) -> ``PartCATSegPixels`` (``preprocess.py``)."""
        tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) if isinstance(im, np.ndarray) else im
                   for im in images]
        out = preprocess_images(tensors, self.config)
        return PartCATSegPixels(out, [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors])

    def encode_pixels(self, clip_input: torch.Tensor, dino_input: torch.Tensor,
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

    def encode_image(self, pixel_values: PartCATSegPixels, output_hidden_states: bool = False) -> PartCATSegImage:
        """``preprocess``'s output -> ``PartCATSegImage`` (with the image frames for ``decode``)."""
        if not isinstance(pixel_values, PartCATSegPixels):
            raise PartCLIPSegError("PartCATSeg.encode_image takes PartCATSeg.preprocess(images) (two normalisations "
                                   "of uint8 images), not a pixel tensor")
        image = self.encode_pixels(pixel_values["clip_input"], pixel_values["dino_input"])
        if "image_sizes" in pixel_values:
            image.image_sizes, image.padded_size = pixel_values.image_sizes, pixel_values.padded_size
        return image

    # ------------------------------------------------------------------ decode
    def aggregate(self, image: PartCATSegImage, text: PartCATSegText, trace: dict | None = None):
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

    def valid_sizes(self, image: PartCATSegImage) -> list[tuple[int, int]] | None:
        """Each image's region of the [4g, 4g] logit maps (rows, cols from the top-left).

        Official (``official.crop_logits_by_pixels``): detectron2's ``sem_seg_postprocess`` crops the
        logit maps by the image's *pixel* size, which keeps the padding whenever the image is larger
        than the logit grid (the padding is then stretched into the output). Otherwise the crop is
        the image's share of the padded frame, rounded up.
        """
        if image.image_sizes is None or image.padded_size is None:
            return None
        s = self.config.logit_size
        if self.config.official.crop_logits_by_pixels:
            return [(min(h, s), min(w, s)) for h, w in image.image_sizes]
        hp, wp = image.padded_size
        return [(min(s, math.ceil(s * h / hp)), min(s, math.ceil(s * w / wp))) for h, w in image.image_sizes]

    def decode(self, image_features: PartCATSegImage, encoded: EncodedVocabulary, *, chunk_size: int | None = None,
               output_attentions: bool | Sequence[int] = False,
               output_hidden_states: bool = False) -> SegmentationOutput:
        """``logits`` [B, P+O+1, 4g, 4g] (parts, objects, background), ``object_part_logits`` [B, T+1, 4g, 4g];
        ``valid_sizes`` gives each image's frame (``chunk_size`` unused: all classes aggregate together)."""
        if output_attentions:
            raise PartCLIPSegError("PartCATSeg has no decoder attention maps")
        text = encoded.extras.get("text")
        if not isinstance(text, PartCATSegText):
            text = self.text_features(encoded.vocabulary)
        part_object, specific, costs = self.aggregate(image_features, text)
        return PartCATSegOutput(part_object, specific, class_embeddings=encoded.class_embeddings,
                                valid_sizes=self.valid_sizes(image_features), resize_scores=True,
                                pred_all_rule="class-argmax", costs=costs)

    def attention_map(self, image_features: PartCATSegImage, encoded: EncodedVocabulary,
                      class_index: int) -> torch.Tensor:
        raise PartCLIPSegError("PartCATSeg has no token-to-token attention maps (cost aggregation, no decoder "
                               "attention)")

    # ------------------------------------------------------------------ whole model
    def run(self, images: Sequence[torch.Tensor], vocabulary: Vocabulary | Sequence[str]):
        """uint8 RGB images + vocabulary -> ``aggregate``'s outputs (logits at 4g x 4g, padded-image frame)."""
        inputs = self.preprocess(images)
        return self.aggregate(self.encode_pixels(inputs["clip_input"], inputs["dino_input"]),
                              self.text_features(vocabulary))

    def forward(self, pixel_values: PartCATSegPixels, input_ids: Any = None, *args: Any,
                vocabulary: Vocabulary | None = None, **kwargs: Any) -> PartCATSegOutput:
        """Interface forward: ``preprocess``'s output and ``vocabulary=`` (``tokenize_vocabulary(...).forward_kwargs()``
        passes it; PartCATSeg's text side is the vocabulary, the token arguments are unused) -> ``decode``'s
        output with the correlation volumes (``costs``) for the loss."""
        if vocabulary is None:
            raise PartCLIPSegError("PartCATSeg.forward needs vocabulary= (pass **model.tokenize_vocabulary(...)"
                                   ".forward_kwargs())")
        return self.decode(self.encode_image(pixel_values), self.encode_vocabulary(vocabulary))

    # ------------------------------------------------------------------ training (training.py)
    def tokenize_vocabulary(self, vocabulary: Vocabulary, tokenizer: Any = None) -> PartCATSegTextInputs:
        """The vocabulary for ``forward`` (``tokenizer`` unused: the model tokenises its own prompt ensemble)."""
        empty = torch.zeros(0, self.config.clip.context_length, dtype=torch.int64)
        return PartCATSegTextInputs(vocabulary, empty, empty.clone(),
                                    torch.tensor(vocabulary.text_to_part, dtype=torch.long),
                                    torch.tensor(vocabulary.text_to_object, dtype=torch.long))

    def is_trainable(self, name: str, which: str) -> bool:
        """See ``training.TRAINABLE_SETS`` (``"official"``: CLIP frozen, DINOv2 and the aggregator trained)."""
        return is_trainable(name, which)

    @classmethod
    def preset_config(cls, name: str, image_size: int | None) -> PartCATSegConfig:
        """``PARTCATSEG_CONFIGS[name]``; the input sizes are the config's (``clip_resolution``,
        ``dino_resolution``), so ``image_size`` must be ``None``."""
        _refuse_image_size(image_size)
        return get_partcatseg_config(name)

    def set_processing_size(self, image_size: int | None) -> None:
        _refuse_image_size(image_size)

    def train_preprocessor(self, channel_order: str) -> PartCATSegTrainPreprocessor:
        return PartCATSegTrainPreprocessor(self.config, channel_order)

    def loss_forward_options(self, loss_config: Any) -> dict[str, Any]:
        """No extra forward outputs; refuses loss settings PartCATSeg has no term for."""
        if getattr(loss_config, "use_attention", False):
            raise ConfigError("PartCATSeg has no attention losses: set loss.use_attention=false in the recipe")
        return {}

    def loss(self, output: SegmentationOutput, part_labels, object_labels, text: TextInputs,
             object_to_model: torch.Tensor, loss_config: Any,
             trained_text_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The official training loss (``training.training_loss``; exact against the reference fixtures)."""
        if trained_text_classes is not None:
            raise ValueError("PartCATSeg's loss trains every class of its vocabulary (no trained_text_classes)")
        return training_loss(output, part_labels, object_labels, text, object_to_model, loss_config)


def _refuse_image_size(image_size: int | None) -> None:
    if image_size is not None:
        raise ConfigError(f"PartCATSeg's input sizes come from its config (clip_resolution, dino_resolution), not "
                          f"image_size={image_size}: set image_size=null in the recipe")
