"""PartCLIPSeg and the CLIPSeg baseline: tensors in, tensors out.

Shapes: ``B`` images, ``S`` processing size, ``g = S / patch``, ``L = 1 + g*g`` tokens, ``P`` generalized
parts, ``O`` objects, ``N = P + O + 1`` decoder classes (the last is the learned non-object
embedding), ``T`` object-specific classes, ``E`` projection dim, ``D`` reduce dim.

Both implement ``PartSegmentationModel`` (``model/base.py``). The model never reads files, picks
devices or knows protocols; see ``partclipseg.predictor`` and ``partclipseg.postprocess``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..checkpoint import load_state_dict_checked
from ..config import PartCLIPSegConfig
from ..errors import ConfigError
from ..losses import LossConfig, build_targets, clipseg_loss, partclipseg_loss
from ..vocabulary import Vocabulary
from .base import (EAGER_LOGITS_BYTES, EncodedVocabulary, ImageFeatures, LazyLogits, PartSegmentationModel,
                   SegmentationOutput, TextInputs)
from .clip import CLIPTextTower, CLIPVisionTower
from .decoder import CLIPSegDecoder, MaskHead, ObjectPartHead, tokens_to_maps
from .init import init_weights
from .registry import register_architecture


class Adapter(nn.Module):
    """``relu(up(relu(down(x))))``, both linears without bias (CLIP-Adapter)."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, dim // reduction, bias=False)
        self.up = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.up(torch.relu(self.down(x))))


class CLIPSegCore(PartSegmentationModel):
    """The CLIPSeg family's shared parts: CLIP towers, visual adapter, non-object embedding, decoder, class head."""

    # the official trainable set "VA+L+F+D": visual adapter, text input embeddings, FiLM and decoder
    # (in our naming the decoder's heads are class_head and object_part_head)
    official_trainable = ("visual_adapter.", "text.token_embedding.", "text.position_embedding.", "decoder.",
                          "class_head.", "object_part_head.")
    # modules a CLIPSeg checkpoint does not hold (init_from_clipseg keeps their fresh values)
    new_vs_clipseg = ("visual_adapter.", "non_object_embedding", "object_part_head.")
    trainable_sets = ("VA+L+F+D", "all", "all-but-text", "all-but-text-layers")
    prompt_token_table = "text.token_embedding.weight"  # the text tower reads it at the prompts' token ids only

    def __init__(self, config: PartCLIPSegConfig) -> None:
        super().__init__(config)
        v, e = config.vision, config.projection_dim
        self.vision = CLIPVisionTower(v)
        self.text = CLIPTextTower(config.text, e)
        self.visual_adapter = Adapter(v.hidden_size, config.visual_adapter_reduction) if config.visual_adapter else None
        self.non_object_embedding = nn.Parameter(torch.zeros(1, e)) if config.background == "learned" else None
        self.decoder = CLIPSegDecoder(config.decoder, v.hidden_size, e)
        self.class_head = MaskHead(config.decoder.reduce_dim, v.patch_size,
                                   config.decoder.complex_transposed_convolution)

    def init_weights(self) -> None:
        init_weights(self)

    def as_architecture(self, architecture: str, seed: int = 0) -> "CLIPSegCore | None":
        """The other member of the CLIPSeg family with this model's weights: PartCLIPSeg -> CLIPSeg baseline
        drops the object-specific part head (``object_part_head``); CLIPSeg -> PartCLIPSeg gets a fresh one.
        Every other weight (towers, adapter, non-object embedding, decoder, class head) is shared as it is.
        ``None`` for an architecture outside the family."""
        from .registry import architecture_class, build_model

        target = architecture_class(architecture)
        if not issubclass(target, CLIPSegCore):
            return None
        config = PartCLIPSegConfig.from_dict({**self.config.to_dict(), "architecture": architecture})
        torch.manual_seed(seed)
        model = build_model(config)
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        others = [k for k in (*missing, *unexpected) if not k.startswith("object_part_head.")]
        if others:  # a layout difference beyond the object-specific head: not the same family after all
            raise ValueError(f"{self.model_type} -> {architecture}: unexpected weight differences {others[:5]}")
        return model

    def is_trainable(self, name: str, which: str) -> bool:
        """``"VA+L+F+D"``: the official rule; ``"all"``: every parameter that reaches the loss (ViT blocks
        after the last extracted layer do not); ``"all-but-text"``: the same without the text tower
        (after toy language-image pretraining the unseen objects' names keep their meaning);
        ``"all-but-text-layers"``: the same but the text *token embeddings* train (the "L" of the
        official set): words no pretraining caption holds (the part names) get their own input
        vectors, while the rows of words no training prompt holds (the unseen objects' names) get no
        gradient and keep their pretrained meaning through the frozen text layers."""
        if which in ("all", "all-but-text", "all-but-text-layers"):
            if which == "all-but-text" and name.startswith("text."):
                return False
            if which == "all-but-text-layers" and name.startswith("text."):
                return name.startswith("text.token_embedding.")
            used_layers = max(self.config.decoder.extract_layers) + 1
            return not (name.startswith("vision.layers.") and int(name.split(".")[2]) >= used_layers)
        return name.startswith(self.official_trainable)

    def init_from_clipseg_state(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Load converted CLIPSeg weights; the modules CLIPSeg lacks keep their fresh initialisation."""
        state = {k: v for k, v in state_dict.items() if not k.startswith(self.new_vs_clipseg)}
        load_state_dict_checked(self, state, source, allow_missing=self.new_vs_clipseg)

    # ------------------------------------------------------------------ encoders
    def encode_image(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> ImageFeatures:
        """pixel_values [B, 3, S, S] -> activations at ``extract_layers`` (+ visual adapter)."""
        indices = [i + 1 for i in self.config.decoder.extract_layers]
        if output_hidden_states:
            hidden = self.vision(pixel_values)
            picked = [hidden[i] for i in indices]
        else:
            hidden = None
            picked = self.vision(pixel_values, indices)
        if self.visual_adapter is None:
            return ImageFeatures(list(picked), hidden)
        ratio = self.config.visual_adapter_ratio
        activations = [ratio * self.visual_adapter(a) + (1.0 - ratio) * a for a in picked]
        return ImageFeatures(activations, hidden)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [P, L] -> text features [P, E] (not normalised)."""
        return self.text(input_ids, attention_mask)

    def class_embeddings(self, text_features: torch.Tensor) -> torch.Tensor:
        """Append the non-object embedding: [P, E] -> [P + 1, E] (unchanged with ``background="none"``)."""
        if self.non_object_embedding is None:
            return text_features
        return torch.cat([text_features, self.non_object_embedding.to(text_features.dtype)], dim=0)

    def encode_text_inputs(self, text: TextInputs) -> EncodedVocabulary:
        embeddings = self.class_embeddings(self.encode_text(text.input_ids, text.attention_mask))
        encoded = EncodedVocabulary(text.vocabulary, embeddings, text.text_to_part, text.text_to_object)
        encoded.extras.update(self._text_extras(encoded))
        return encoded

    def _text_extras(self, encoded: EncodedVocabulary) -> dict[str, Any]:
        """Architecture-specific text-side tensors worth caching (none here)."""
        return {}

    def _attention_rows(self, encoded: EncodedVocabulary, class_index: int) -> list[int]:
        """The decoder conditions (rows of ``class_embeddings``) that make up an object-specific class."""
        raise NotImplementedError

    def attention_map(self, image_features: ImageFeatures, encoded: EncodedVocabulary,
                      class_index: int) -> torch.Tensor:
        """Last decoder layer's attention for the class's conditions, mean over heads then conditions,
        CLS token dropped: [B, g*g, g*g]."""
        rows = self._attention_rows(encoded, class_index)
        _, attentions, _ = self.decoder(image_features.activations, encoded.class_embeddings[rows], need_weights=True)
        return attentions[-1].float().mean(2).mean(1)[:, 1:, 1:]

    def decode_features(self, features: ImageFeatures, class_embeddings: torch.Tensor,
                        output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False,
                        chunk_size: int | None = None, class_logits: bool = True, pixel_sample=None):
        """Shared decoder -> (maps [B, N, D, g, g], class logits [B, N, S, S], attentions, hidden states).

        Classes are decoded independently, so ``chunk_size`` (classes per pass, for memory) does not
        change the result. The chunks are written into tensors allocated once (no concatenated copy).
        ``class_logits=False`` skips the class head (logits ``None``; ``decode_for_inference`` runs it
        on demand). ``pixel_sample`` (a ``losses.PixelSample``, training): class logits at its pixels only,
        [B, N, S/stride, S/stride].
        """
        n = class_embeddings.shape[0]
        step = chunk_size or n
        maps = logits = None
        chunk_attentions, chunk_hidden = [], []
        for start in range(0, n, step):
            tokens, attentions, hidden = self.decoder(features.activations, class_embeddings[start:start + step],
                                                      need_weights=output_attentions,
                                                      need_hidden_states=output_hidden_states)
            chunk_maps = tokens_to_maps(tokens)
            del tokens
            chunk_logits = self._class_logits(chunk_maps, pixel_sample) if class_logits else None
            if step >= n:
                return chunk_maps, chunk_logits, attentions, hidden
            if maps is None:
                maps = chunk_maps.new_empty(chunk_maps.shape[0], n, *chunk_maps.shape[2:])
                if class_logits:
                    logits = chunk_logits.new_empty(chunk_logits.shape[0], n, *chunk_logits.shape[2:])
            rows = slice(start, start + chunk_maps.shape[1])
            maps[:, rows] = chunk_maps
            if class_logits:
                logits[:, rows] = chunk_logits
            chunk_attentions.append(attentions)
            chunk_hidden.append(hidden)
        attentions = (tuple(None if ls[0] is None else torch.cat(ls, dim=1) for ls in zip(*chunk_attentions))
                      if chunk_attentions[0] is not None else None)
        hidden = tuple(torch.cat(ls, dim=1) for ls in zip(*chunk_hidden)) if output_hidden_states else None
        return maps, logits, attentions, hidden

    def check_pixel_stride(self, stride: int) -> None:
        """``ConfigError`` unless the mask heads can compute sampled pixels at ``stride``
        (``loss.pixel_stride``): it must divide their last transposed convolution's kernel."""
        kernel = self.class_head[-1].kernel_size[0]
        if kernel % stride:
            raise ConfigError(f"loss.pixel_stride={stride} does not divide the mask head's last {kernel} x {kernel} "
                              f"transposed convolution: use a divisor of {kernel}")

    def _class_logits(self, maps: torch.Tensor, pixel_sample=None) -> torch.Tensor:
        """Class head: maps [B, C, D, g, g] -> logits [B, C, S, S] (at ``pixel_sample``'s pixels if given)."""
        b, c, d, g, _ = maps.shape
        flat = maps.reshape(b * c, d, g, g)
        logits = self.class_head(flat) if pixel_sample is None else self.class_head.sampled(flat, pixel_sample)
        return logits.view(b, c, *logits.shape[-2:])


@register_architecture("partclipseg")
class PartCLIPSeg(CLIPSegCore):
    """PartCLIPSeg: generalized-part/object head and object-specific part head (SPEC §1)."""

    loss_leaves_out_classes = True
    loss_has_object_channels = True
    loss_samples_pixels = True

    def __init__(self, config: PartCLIPSegConfig) -> None:
        super().__init__(config)
        self.object_part_head = ObjectPartHead(config.decoder.reduce_dim, config.projection_dim,
                                               config.vision.patch_size,
                                               config.decoder.complex_transposed_convolution)

    # ------------------------------------------------------------------ interface
    def prompts(self, vocabulary: Vocabulary) -> list[str]:
        """Generalized parts then objects (``Vocabulary.prompts``)."""
        return list(vocabulary.prompts)

    def _text_extras(self, encoded: EncodedVocabulary) -> dict[str, Any]:
        conditions = self.object_part_head.class_conditions(
            encoded.class_embeddings, encoded.text_to_part, encoded.text_to_object, encoded.vocabulary.num_parts,
            self.config.official.object_text_index_offset_bug)
        return {"conditions": conditions}

    def _attention_rows(self, encoded: EncodedVocabulary, class_index: int) -> list[int]:
        vocab = encoded.vocabulary  # the part's and the object's conditions
        return [vocab.text_to_part[class_index], vocab.num_parts + vocab.text_to_object[class_index]]

    def decode(self, image_features: ImageFeatures, encoded: EncodedVocabulary, *, chunk_size: int | None = None,
               output_attentions: bool | Sequence[int] = False,
               output_hidden_states: bool = False) -> SegmentationOutput:
        return self.decode_classes(image_features, encoded.class_embeddings, encoded.text_to_part,
                                   encoded.text_to_object, output_attentions, output_hidden_states,
                                   conditions=encoded.extras.get("conditions"), chunk_size=chunk_size)

    def decode_for_inference(self, image_features: ImageFeatures, encoded: EncodedVocabulary, *,
                             chunk_size: int | None = None) -> SegmentationOutput:
        """``decode``, or when the processing-size logits of both heads would exceed ``EAGER_LOGITS_BYTES``,
        ``LazyLogits``: the decoder runs once (in ``chunk_size`` chunks) and keeps the token-grid maps
        [B, N, D, g, g] and the object-specific head's two visual sides; the class head and the
        object-specific head's FiLM + mask head run on the channels the protocols read, when they read them."""
        vocab = encoded.vocabulary
        features = image_features
        b = features.activations[0].shape[0]
        n, t1 = encoded.class_embeddings.shape[0], len(vocab) + 1
        g = self.config.grid_size
        side = self.class_head.output_side(g)
        if 4 * b * (n + t1) * side * side <= EAGER_LOGITS_BYTES:
            return self.decode(features, encoded, chunk_size=chunk_size)
        text_to_part = _index(encoded.text_to_part, encoded.class_embeddings)
        text_to_object = _index(encoded.text_to_object, encoded.class_embeddings)
        conditions = encoded.extras.get("conditions")
        head = self.object_part_head
        if conditions is None:
            conditions = head.class_conditions(encoded.class_embeddings, text_to_part, text_to_object,
                                               vocab.num_parts, self.config.official.object_text_index_offset_bug)
        maps, _, _, _ = self.decode_features(features, encoded.class_embeddings, chunk_size=chunk_size,
                                             class_logits=False)
        sides = head.visual_sides(maps)
        rows = head.class_rows(text_to_part, text_to_object, vocab.num_parts, n)

        def class_logits(image: int, channels: torch.Tensor) -> torch.Tensor:
            return self._class_logits(maps[image:image + 1, channels])[0]

        def object_part_logits(image: int, channels: torch.Tensor) -> torch.Tensor:
            one = tuple(side_maps[image:image + 1] for side_maps in sides)
            return head.class_logits(one, rows, conditions, channels)[0]

        device = maps.device
        return SegmentationOutput(LazyLogits(class_logits, (b, n, side, side), device),
                                  LazyLogits(object_part_logits, (b, t1, side, side), device),
                                  encoded.class_embeddings, vision_hidden_states=features.hidden_states)

    def loss_forward_options(self, loss_config: LossConfig) -> dict[str, Any]:
        """The attention losses read the decoder attentions of ``attn_levels``."""
        return {"output_attentions": list(loss_config.attn_levels)} if loss_config.use_attention else {}

    def loss(self, output: SegmentationOutput, part_labels, object_labels, text: TextInputs,
             object_to_model: torch.Tensor, loss_config: LossConfig,
             trained_text_classes: torch.Tensor | None = None, pixel_sample=None) -> dict[str, torch.Tensor]:
        """``pixel_sample``: the ``losses.PixelSample`` the output was computed at (``forward(...,
        pixel_sample=)``); the targets are taken at the same pixels."""
        stride = 1 if pixel_sample is None else pixel_sample.stride
        full_side = self.class_head.output_side(self.config.grid_size)
        if output.logits.shape[-1] * stride != full_side:
            raise ValueError(f"logits of side {output.logits.shape[-1]} are not this model's {full_side}-pixel maps "
                             f"sampled at stride {stride}: run forward with the same pixel_sample as the loss")
        targets = build_targets(part_labels, object_labels, text.text_to_part, text.text_to_object, object_to_model,
                                output.logits.shape[-1] * stride, trained=trained_text_classes)
        if pixel_sample is not None:
            targets = targets.sampled(pixel_sample)
        return partclipseg_loss(output, targets, loss_config)

    def init_from_clipseg_state(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """As the official code: the object-specific head's FiLM and mask head start as copies of the
        decoder's FiLM and the class head (SPEC §1.10)."""
        super().init_from_clipseg_state(state_dict, source)
        with torch.no_grad():
            head = self.object_part_head
            head.film_mul.load_state_dict(self.decoder.film_mul.state_dict())
            head.film_add.load_state_dict(self.decoder.film_add.state_dict())
            head.mask_head.load_state_dict(self.class_head.state_dict())

    # ------------------------------------------------------------------ tensors in, tensors out
    def decode_classes(self, features: ImageFeatures, class_embeddings: torch.Tensor, text_to_part: torch.Tensor,
                       text_to_object: torch.Tensor, output_attentions: bool | Sequence[int] = False,
                       output_hidden_states: bool = False,
                       conditions: tuple[torch.Tensor, torch.Tensor] | None = None,
                       chunk_size: int | None = None, pixel_sample=None) -> SegmentationOutput:
        """Decode image features for explicit class embeddings.

        ``class_embeddings`` [N, E] (P parts, O objects, non-object); ``text_to_part`` / ``text_to_object``
        [T] index the object-specific classes into parts (0..P-1) and objects (0..O-1). ``conditions``
        may carry precomputed ``object_part_head.class_conditions`` (they depend on text only).
        ``chunk_size`` bounds the classes decoded at once (memory only; results are unchanged).
        ``pixel_sample`` (training, ``LossConfig.pixel_stride``): both heads' logits at its pixels only.
        """
        text_to_part, text_to_object = _index(text_to_part, class_embeddings), _index(text_to_object, class_embeddings)
        num_parts = class_embeddings.shape[0] - 1 - (int(text_to_object.max()) + 1 if text_to_object.numel() else 0)
        maps, logits, attentions, hidden = self.decode_features(features, class_embeddings, output_attentions,
                                                                output_hidden_states, chunk_size,
                                                                pixel_sample=pixel_sample)
        object_part_logits = self.object_part_head(
            maps, class_embeddings, text_to_part, text_to_object, num_parts,
            object_index_offset_bug=self.config.official.object_text_index_offset_bug, conditions=conditions,
            chunk_size=chunk_size, pixel_sample=pixel_sample)
        return SegmentationOutput(logits, object_part_logits, class_embeddings, attentions, hidden,
                                  features.hidden_states)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, text_to_part: torch.Tensor,
                text_to_object: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False,
                pixel_sample=None) -> SegmentationOutput:
        """pixel_values [B,3,S,S]; input_ids [P+O, L] (prompts = parts then objects); index maps [T].
        ``pixel_sample``: a ``losses.PixelSample`` (training): logits [.., S/stride, S/stride] at its pixels."""
        features = self.encode_image(pixel_values, output_hidden_states)
        class_embeddings = self.class_embeddings(self.encode_text(input_ids, attention_mask))
        return self.decode_classes(features, class_embeddings, text_to_part, text_to_object,
                                   output_attentions, output_hidden_states, pixel_sample=pixel_sample)


@register_architecture("clipseg")
class CLIPSegBaseline(CLIPSegCore):
    """The CLIPSeg baseline (SPEC §7): one prompt per object-specific class, background last; no object head
    (``object_part_logits`` is ``None``), so the predictor uses ``postprocess.single_head``."""

    def prompts(self, vocabulary: Vocabulary) -> list[str]:
        """One prompt per object-specific class (``Vocabulary.baseline_prompts``)."""
        return list(vocabulary.baseline_prompts)

    def _attention_rows(self, encoded: EncodedVocabulary, class_index: int) -> list[int]:
        return [class_index]

    def decode(self, image_features: ImageFeatures, encoded: EncodedVocabulary, *, chunk_size: int | None = None,
               output_attentions: bool | Sequence[int] = False,
               output_hidden_states: bool = False) -> SegmentationOutput:
        return self.decode_classes(image_features, encoded.class_embeddings, output_attentions, output_hidden_states,
                                   chunk_size)

    def decode_classes(self, features: ImageFeatures, class_embeddings: torch.Tensor,
                       output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False,
                       chunk_size: int | None = None) -> SegmentationOutput:
        """Logits [B, T+1, S, S] for class embeddings [T+1, E] (T prompts + non-object).

        With ``background="none"`` (plain CLIPSeg) the class embeddings are the T prompts alone and a
        constant zero logit row is appended as the background, so ``logits`` is [B, T+1, S, S] either way.
        """
        _, logits, attentions, hidden = self.decode_features(features, class_embeddings, output_attentions,
                                                             output_hidden_states, chunk_size)
        if self.non_object_embedding is None:
            logits = torch.cat([logits, logits.new_zeros(logits.shape[0], 1, *logits.shape[2:])], dim=1)
        return SegmentationOutput(logits, None, class_embeddings, attentions, hidden, features.hidden_states)

    def loss(self, output: SegmentationOutput, part_labels, object_labels, text: TextInputs,
             object_to_model: torch.Tensor, loss_config: LossConfig,
             trained_text_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if trained_text_classes is not None:
            raise ValueError("the CLIPSeg baseline trains every class of its vocabulary (no trained_text_classes)")
        return clipseg_loss(output.logits, part_labels, -1, loss_config)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False, *,
                text_to_part: torch.Tensor | None = None,
                text_to_object: torch.Tensor | None = None) -> SegmentationOutput:
        """pixel_values [B,3,S,S]; input_ids [T, L] -> logits [B, T+1, S, S]. The index maps are accepted
        for the common call shape and not needed (one prompt per class)."""
        features = self.encode_image(pixel_values, output_hidden_states)
        class_embeddings = self.class_embeddings(self.encode_text(input_ids, attention_mask))
        return self.decode_classes(features, class_embeddings, output_attentions, output_hidden_states)


def _index(values, like: torch.Tensor) -> torch.Tensor:
    """Index map (sequence or tensor of any shape, e.g. the official (1,1,1,T)) -> flat long [T]."""
    return torch.as_tensor(values, dtype=torch.long, device=like.device).reshape(-1)
