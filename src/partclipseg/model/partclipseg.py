"""PartCLIPSeg and the CLIPSeg baseline: tensors in, tensors out.

Shapes: ``B`` images, ``S`` processing size, ``g = S / patch``, ``L = 1 + g*g`` tokens, ``P`` generalized
parts, ``O`` objects, ``N = P + O + 1`` decoder classes (the last is the learned non-object
embedding), ``T`` object-specific classes, ``E`` projection dim, ``D`` reduce dim.

The model never reads files, picks devices or knows protocols; see ``partclipseg.predictor``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..config import PartCLIPSegConfig
from .clip import CLIPTextTower, CLIPVisionTower
from .decoder import CLIPSegDecoder, MaskHead, ObjectPartHead, tokens_to_maps


class Adapter(nn.Module):
    """``relu(up(relu(down(x))))``, both linears without bias (CLIP-Adapter)."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, dim // reduction, bias=False)
        self.up = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.up(torch.relu(self.down(x))))


@dataclass
class ImageFeatures:
    """Per-image vision activations after the visual adapter, each [B, L, C], shallow to deep.

    ``hidden_states`` (all ``num_layers + 1`` states [B, L, C], before the adapter) only when asked.
    """

    activations: list[torch.Tensor]
    hidden_states: list[torch.Tensor] | None = None

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> "ImageFeatures":
        """The features of a subset of images (batch indexing)."""
        return ImageFeatures([a[index] for a in self.activations],
                             None if self.hidden_states is None else [h[index] for h in self.hidden_states])


@dataclass
class SegmentationOutput:
    """What a forward pass returns (all logits at the processing size, before any sigmoid).

    * ``logits`` [B, N, S, S]: PartCLIPSeg: generalized parts (P), objects (O), background (last).
      CLIPSeg baseline: object-specific classes (T) then background.
    * ``object_part_logits`` [B, T+1, S, S]: object-specific parts in vocabulary order, background
      last (PartCLIPSeg only).
    * ``class_embeddings`` [N, E]: the decoder conditions (text features + non-object embedding).
    * ``decoder_attentions``: per decoder layer [B, N, heads, L, L] softmax weights (when asked;
      ``output_attentions`` may name the layers, the others are ``None``).
    * ``decoder_hidden_states``: per decoder layer [B, N, L, D] (when asked).
    * ``vision_hidden_states``: ``num_layers + 1`` tensors [B, L, C] (when asked).
    """

    logits: torch.Tensor
    object_part_logits: torch.Tensor | None
    class_embeddings: torch.Tensor
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: list[torch.Tensor] | None = None


class CLIPSegCore(nn.Module):
    """Shared parts: CLIP towers, visual adapter, non-object embedding, decoder, class head."""

    def __init__(self, config: PartCLIPSegConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        v, e = config.vision, config.projection_dim
        self.vision = CLIPVisionTower(v)
        self.text = CLIPTextTower(config.text, e)
        self.visual_adapter = Adapter(v.hidden_size, config.visual_adapter_reduction) if config.visual_adapter else None
        self.non_object_embedding = nn.Parameter(torch.zeros(1, e)) if config.background == "learned" else None
        self.decoder = CLIPSegDecoder(config.decoder, v.hidden_size, e)
        self.class_head = MaskHead(config.decoder.reduce_dim, v.patch_size,
                                   config.decoder.complex_transposed_convolution)

    # ------------------------------------------------------------------ weights I/O
    @classmethod
    def from_pretrained(cls, source, **kwargs) -> "CLIPSegCore":
        """Load a saved folder, a hub id or an official ``.pth`` (see ``partclipseg.weights.load_pretrained``)."""
        from ..errors import CheckpointError
        from ..weights import load_pretrained

        model = load_pretrained(source, **kwargs)
        if not isinstance(model, cls):
            raise CheckpointError(f"{source} holds a {type(model).__name__} model, not a {cls.__name__}")
        return model

    def save_pretrained(self, directory):
        """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
        from ..weights import save_pretrained

        return save_pretrained(self, directory)

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

    def decode_features(self, features: ImageFeatures, class_embeddings: torch.Tensor,
                        output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False,
                        chunk_size: int | None = None):
        """Shared decoder -> (maps [B, N, D, g, g], class logits [B, N, S, S], attentions, hidden states).

        Classes are decoded independently, so ``chunk_size`` (classes per pass, for memory) does not
        change the result.
        """
        n = class_embeddings.shape[0]
        step = chunk_size or n
        parts = []
        for start in range(0, n, step):
            tokens, attentions, hidden = self.decoder(features.activations, class_embeddings[start:start + step],
                                                      need_weights=output_attentions,
                                                      need_hidden_states=output_hidden_states)
            maps = tokens_to_maps(tokens)
            parts.append((maps, self._class_logits(maps), attentions, hidden))
        if len(parts) == 1:
            return parts[0]
        maps = torch.cat([p[0] for p in parts], dim=1)
        logits = torch.cat([p[1] for p in parts], dim=1)
        attentions = (tuple(None if ls[0] is None else torch.cat(ls, dim=1) for ls in zip(*[p[2] for p in parts]))
                      if parts[0][2] is not None else None)
        hidden = tuple(torch.cat(ls, dim=1) for ls in zip(*[p[3] for p in parts])) if output_hidden_states else None
        return maps, logits, attentions, hidden

    def _class_logits(self, maps: torch.Tensor) -> torch.Tensor:
        """Class head: maps [B, C, D, g, g] -> logits [B, C, S, S]."""
        b, c, d, g, _ = maps.shape
        logits = self.class_head(maps.reshape(b * c, d, g, g))
        return logits.view(b, c, *logits.shape[-2:])


class PartCLIPSeg(CLIPSegCore):
    """PartCLIPSeg: generalized-part/object head and object-specific part head (SPEC §1)."""

    def __init__(self, config: PartCLIPSegConfig) -> None:
        super().__init__(config)
        self.object_part_head = ObjectPartHead(config.decoder.reduce_dim, config.projection_dim,
                                               config.vision.patch_size,
                                               config.decoder.complex_transposed_convolution)

    def decode(self, features: ImageFeatures, class_embeddings: torch.Tensor, text_to_part: torch.Tensor,
               text_to_object: torch.Tensor, output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False,
               conditions: tuple[torch.Tensor, torch.Tensor] | None = None,
               chunk_size: int | None = None) -> SegmentationOutput:
        """Decode image features for a vocabulary.

        ``class_embeddings`` [N, E] (P parts, O objects, non-object); ``text_to_part`` / ``text_to_object``
        [T] index the object-specific classes into parts (0..P-1) and objects (0..O-1). ``conditions``
        may carry precomputed ``object_part_head.class_conditions`` (they depend on text only).
        ``chunk_size`` bounds the classes decoded at once (memory only; results are unchanged).
        """
        text_to_part, text_to_object = _index(text_to_part, class_embeddings), _index(text_to_object, class_embeddings)
        num_parts = class_embeddings.shape[0] - 1 - (int(text_to_object.max()) + 1 if text_to_object.numel() else 0)
        maps, logits, attentions, hidden = self.decode_features(features, class_embeddings, output_attentions,
                                                                output_hidden_states, chunk_size)
        object_part_logits = self.object_part_head(
            maps, class_embeddings, text_to_part, text_to_object, num_parts,
            object_index_offset_bug=self.config.official.object_text_index_offset_bug, conditions=conditions,
            chunk_size=chunk_size)
        return SegmentationOutput(logits, object_part_logits, class_embeddings, attentions, hidden,
                                  features.hidden_states)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, text_to_part: torch.Tensor,
                text_to_object: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False) -> SegmentationOutput:
        """pixel_values [B,3,S,S]; input_ids [P+O, L] (prompts = parts then objects); index maps [T]."""
        features = self.encode_image(pixel_values, output_hidden_states)
        class_embeddings = self.class_embeddings(self.encode_text(input_ids, attention_mask))
        return self.decode(features, class_embeddings, text_to_part, text_to_object,
                           output_attentions, output_hidden_states)


class CLIPSegBaseline(CLIPSegCore):
    """The CLIPSeg baseline (SPEC §7): one prompt per object-specific class, background last."""

    def decode(self, features: ImageFeatures, class_embeddings: torch.Tensor, output_attentions: bool | Sequence[int] = False,
               output_hidden_states: bool = False, chunk_size: int | None = None) -> SegmentationOutput:
        """Decode image features for class embeddings [T+1, E] (T prompts + non-object).

        With ``background="none"`` the class embeddings are the T prompts alone and a constant zero
        logit row is appended as the background, so ``logits`` is [B, T+1, S, S] either way.
        """
        _, logits, attentions, hidden = self.decode_features(features, class_embeddings, output_attentions,
                                                             output_hidden_states, chunk_size)
        if self.non_object_embedding is None:
            logits = torch.cat([logits, logits.new_zeros(logits.shape[0], 1, *logits.shape[2:])], dim=1)
        return SegmentationOutput(logits, None, class_embeddings, attentions, hidden, features.hidden_states)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | Sequence[int] = False, output_hidden_states: bool = False) -> SegmentationOutput:
        """pixel_values [B,3,S,S]; input_ids [T, L] -> logits [B, T+1, S, S]."""
        features = self.encode_image(pixel_values, output_hidden_states)
        class_embeddings = self.class_embeddings(self.encode_text(input_ids, attention_mask))
        return self.decode(features, class_embeddings, output_attentions, output_hidden_states)


def _index(values, like: torch.Tensor) -> torch.Tensor:
    """Index map (sequence or tensor of any shape, e.g. the official (1,1,1,T)) -> flat long [T]."""
    return torch.as_tensor(values, dtype=torch.long, device=like.device).reshape(-1)


def build_model(config: PartCLIPSegConfig) -> CLIPSegCore:
    """A randomly initialised model of ``config.architecture``."""
    from .init import init_weights

    model = PartCLIPSeg(config) if config.architecture == "partclipseg" else CLIPSegBaseline(config)
    init_weights(model)
    return model
