"""The interface every architecture implements: ``PartSegmentationModel`` and its data classes.

The Predictor, the training loop, the evaluator and the demo talk to a model only through this
interface; they never ask which architecture they hold. An architecture is a subclass registered
with ``@register_architecture("name")`` (``partclipseg.model.registry``) for ``config.architecture``.

Shapes: ``B`` images, ``S`` processing size, ``T`` object-specific classes (the vocabulary), ``P``
generalized parts, ``O`` objects, ``N`` decoder classes, ``E`` text-embedding width, ``g`` token-grid
side of the attention maps.

Inference data flow (the Predictor)::

    encoded  = model.encode_vocabulary(vocabulary, tokenizer)     # text only, cached per vocabulary
    features = model.encode_image(pixel_values)                   # image only, cached per image
    output   = model.decode_for_inference(features, encoded, chunk_size=32)  # SegmentationOutput
    # -> partclipseg.postprocess: protocols on output.logits / output.object_part_logits
    #    (tensors, or LazyLogits computed a few channels at a time for large vocabularies)

Training data flow (one call, so that DistributedDataParallel sees ``forward``)::

    prep   = model.train_preprocessor(channel_order)                 # in the data loader's workers:
    inputs = prep.collate([prep.sample(image) for image in batch])   #   augmented uint8 images -> inputs
    text   = model.tokenize_vocabulary(vocabulary, tokenizer).to(device)
    output = ddp_model(inputs, **text.forward_kwargs(), **model.loss_forward_options(loss_config))
    losses = model.loss(output, part_labels, object_labels, text, object_to_model, loss_config)

A recipe picks the trained parameters by one of the class's ``trainable_sets`` (``is_trainable``);
``preset_config`` / ``set_processing_size`` apply the recipe's ``init=random:<preset>`` / ``image_size``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from ..config import PartCLIPSegConfig, get_config
from ..errors import CheckpointError, ConfigError
from ..vocabulary import Vocabulary
from .loading import load_pretrained, save_pretrained


@dataclass
class ImageFeatures:
    """Image-side activations of a batch (opaque to callers except for ``select``).

    CLIPSeg family: ``activations`` are the vision states at ``extract_layers`` after the visual
    adapter, each [B, L, C], shallow to deep; ``hidden_states`` (all ``num_layers + 1`` states
    [B, L, C], before the adapter) only when asked. Another architecture may subclass this.
    """

    activations: list[torch.Tensor]
    hidden_states: list[torch.Tensor] | None = None

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> "ImageFeatures":
        """The features of a subset of images (batch indexing)."""
        return ImageFeatures([a[index] for a in self.activations],
                             None if self.hidden_states is None else [h[index] for h in self.hidden_states])


@dataclass
class TextInputs:
    """A vocabulary tokenised the way one architecture's ``forward`` takes it (``tokenize_vocabulary``).

    * ``input_ids`` / ``attention_mask`` [Q, L]: the prompts (``Q`` depends on the architecture: P+O
      for PartCLIPSeg, T for the CLIPSeg baseline, a multiple of them for a prompt ensemble).
    * ``text_to_part`` / ``text_to_object`` [T] long: each object-specific class's generalized part
      (0..P-1) and object (0..O-1).
    """

    vocabulary: Vocabulary
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    text_to_part: torch.Tensor
    text_to_object: torch.Tensor

    def to(self, device: str | torch.device) -> "TextInputs":
        return TextInputs(self.vocabulary, self.input_ids.to(device), self.attention_mask.to(device),
                          self.text_to_part.to(device), self.text_to_object.to(device))

    def forward_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of ``model.forward`` (every architecture accepts all four)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "text_to_part": self.text_to_part, "text_to_object": self.text_to_object}


@dataclass
class EncodedVocabulary:
    """Text-side tensors of a vocabulary (image independent; the Predictor caches them).

    * ``class_embeddings`` [N, E]: the decoder conditions (for the CLIPSeg family: text features +
      the non-object embedding, last).
    * ``text_to_part`` / ``text_to_object`` [T]: as in ``TextInputs``.
    * ``extras``: architecture-specific cached tensors (PartCLIPSeg: ``"conditions"``, the
      object-specific FiLM scale and shift, each [T+1, D]). Only the model reads them.
    """

    vocabulary: Vocabulary
    class_embeddings: torch.Tensor
    text_to_part: torch.Tensor
    text_to_object: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


#: ``decode_for_inference`` keeps processing-size logit maps up to this many bytes (all images and
#: classes, float32); beyond it an architecture may return ``LazyLogits`` (memory bounded at any
#: vocabulary size, e.g. 1000 objects on the official model's 352 px maps would need 1 GB).
EAGER_LOGITS_BYTES = 256 * 2**20


class LazyLogits:
    """Logit maps [B, C, S, S] that are computed when read, a few channels at a time.

    An architecture keeps what it needs to compute any channel (e.g. token-grid features, 1/16 of
    the maps' size for the CLIPSeg family) instead of every processing-size map.
    ``compute(image_index, channels)`` (``channels`` a long tensor [c]) -> [c, S, S] logits; each
    channel's numbers are those of the eager ``decode`` up to float rounding.

    Indexed like the tensor it stands for, as the protocols (``partclipseg.postprocess``) index logits:
    ``lazy[i]`` (an int) gives image ``i``'s maps [C, S, S]; on those, ``maps[channels]`` (a slice,
    an int sequence, a long or bool tensor) selects channels and ``maps[:, :h, :w]`` (or
    ``maps[channels, :h, :w]``) crops. Nothing is computed until ``materialize()``.
    """

    def __init__(self, compute: Callable[[int, torch.Tensor], torch.Tensor], shape: Sequence[int],
                 device: torch.device, image: int | None = None, channels: torch.Tensor | None = None,
                 crop: tuple[int, int] | None = None) -> None:
        self.compute = compute
        self.full_shape = tuple(int(v) for v in shape)  # (B, C, S, S)
        self.device = torch.device(device)
        self.image = image
        self.channels = channels
        self.crop = crop

    @property
    def shape(self) -> tuple[int, ...]:
        if self.image is None:
            return self.full_shape
        h, w = self.crop or self.full_shape[2:]
        return (int(self.channels.shape[0]), h, w)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> "LazyLogits":
        if self.image is None:
            if not isinstance(index, int) or not -self.full_shape[0] <= index < self.full_shape[0]:
                raise IndexError(f"LazyLogits of {self.full_shape[0]} image(s): index one image by an int, got {index!r}")
            channels = torch.arange(self.full_shape[1], device=self.device)
            return LazyLogits(self.compute, self.full_shape, self.device, index % self.full_shape[0], channels)
        rows = cols = slice(None)
        if isinstance(index, tuple):
            index, rows, cols = (*index, slice(None), slice(None))[:3]
        if isinstance(index, torch.Tensor):
            index = index.to(self.device)
        channels = self.channels[index] if not isinstance(index, slice) or index != slice(None) else self.channels
        if channels.dim() != 1:
            raise IndexError(f"select channels of LazyLogits with a slice, a sequence or a 1-d tensor, got {index!r}")
        crop = self.crop
        if rows != slice(None) or cols != slice(None):
            h, w = self.shape[1:]
            if rows.start not in (None, 0) or cols.start not in (None, 0) or rows.step or cols.step:
                raise IndexError("LazyLogits crop from the top-left corner only (maps[:, :h, :w])")
            crop = (len(range(h)[rows]), len(range(w)[cols]))
        return LazyLogits(self.compute, self.full_shape, self.device, self.image, channels, crop)

    def materialize(self) -> torch.Tensor:
        """The selected maps as a tensor ([B, C, S, S] unindexed, else [c, h, w])."""
        if self.image is None:
            return torch.stack([self[i].materialize() for i in range(self.full_shape[0])])
        maps = self.compute(self.image, self.channels)
        if self.crop is not None:
            maps = maps[:, :self.crop[0], :self.crop[1]]
        return maps


#: how Pred-All reads a model with an object head (``SegmentationOutput.pred_all_rule``): the object head's
#: argmax gates the parts (PartCLIPSeg, SPEC §4.2), or the argmax over the T+1 object-specific scores
#: (PartCATSeg's ``sem_seg_all``)
PRED_ALL_RULES = ("object-head", "class-argmax")


@dataclass
class SegmentationOutput:
    """What ``decode`` / ``forward`` return (all logits at the processing size, before any sigmoid).

    The two logit fields are all that the inference protocols (``partclipseg.postprocess``) read:

    * ``logits`` [B, N, S, S]: the class head.
      - Models with an object head (``object_part_logits`` is not ``None``; PartCLIPSeg, and any
        object / generalized-part model such as PartCATSeg): ``N = P + O + 1`` channels —
        generalized parts (P), objects (O), background (last).
      - Models without one (the CLIPSeg baseline): ``N = T + 1`` — object-specific classes, background.
    * ``object_part_logits`` [B, T+1, S, S]: object-specific parts in vocabulary order, background
      last; ``None`` for a model without an object head.

    Optional outputs, filled when asked for:

    * ``class_embeddings`` [N, E]: the decoder conditions.
    * ``decoder_attentions``: per decoder layer [B, N, heads, L, L] softmax weights
      (``output_attentions`` may name the layers, the others are ``None``).
    * ``decoder_hidden_states``: per decoder layer [B, N, L, D].
    * ``vision_hidden_states``: ``num_layers + 1`` tensors [B, L, C].

    From ``decode_for_inference`` both fields may be ``LazyLogits`` (same shapes, computed when read);
    ``decode`` and ``forward`` always give tensors.

    How the protocols read the logits (defaults: PartCLIPSeg's official inference):

    * ``valid_sizes``: per image, the (rows, cols) of the logit maps that show the image (the rest is
      padding; cropped before resizing to the image); ``None``: the whole map.
    * ``resize_scores``: resize sigmoid scores instead of logits to the image size (PartCATSeg).
    * ``pred_all_rule``: ``"object-head"`` (the object head's argmax gates the parts, SPEC §4.2) or
      ``"class-argmax"`` (argmax over the T+1 object-specific scores, PartCATSeg's ``sem_seg_all``).
    """

    logits: torch.Tensor
    object_part_logits: torch.Tensor | None
    class_embeddings: torch.Tensor | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: list[torch.Tensor] | None = None
    valid_sizes: list[tuple[int, int]] | None = None
    resize_scores: bool = False
    pred_all_rule: str = "object-head"  # one of PRED_ALL_RULES

    @property
    def has_object_head(self) -> bool:
        """True when ``logits`` holds parts/objects/background and ``object_part_logits`` is given."""
        return self.object_part_logits is not None


class TrainPreprocessor:
    """Training-image preprocessing of one architecture (``PartSegmentationModel.train_preprocessor``).

    ``sample(image)``: one augmented HWC uint8 RGB array -> a per-sample item (in a loader worker);
    ``collate(items)``: the items of a batch -> ``forward``'s first argument (anything with ``.to(device)``).
    Picklable: it travels to the data loader's worker processes.
    """

    def sample(self, image: Any) -> Any:
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class ResizeNormalise(TrainPreprocessor):
    """The CLIPSeg family's training input: ``partclipseg.preprocess`` (resize to ``size`` x ``size``,
    normalise; ``channel_order="BGR"`` reverses the channels first, the official training quirk) ->
    [3, S, S] per image, stacked to [B, 3, S, S]."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str

    def sample(self, image: Any) -> torch.Tensor:
        from ..preprocess import preprocess

        return preprocess(image, self.size, mean=self.mean, std=self.std, channel_order=self.channel_order)[0]

    def collate(self, items: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(items))


class PartSegmentationModel(nn.Module):
    """Base class of every architecture (an ``nn.Module`` built from a config).

    Subclasses implement the methods that raise ``NotImplementedError`` here and are registered with
    ``@register_architecture(name)``; ``from_pretrained`` / ``save_pretrained`` / ``encode_vocabulary``
    / ``tokenize_vocabulary`` come from this class.
    """

    model_type: ClassVar[str] = ""  # set by @register_architecture; equals config.architecture
    config_class: ClassVar[type] = PartCLIPSegConfig
    #: the recipe ``trainable`` values ``is_trainable`` understands (``partclipseg train`` refuses others)
    trainable_sets: ClassVar[tuple[str, ...]] = ()
    #: whether ``loss`` takes ``trained_text_classes`` (the recipe's ``supervision=parts+objects`` needs it)
    loss_leaves_out_classes: ClassVar[bool] = False
    #: whether ``loss`` has the generalized object channels' terms that the not-official switches
    #: ``loss.object_ce_lambda`` > 0, ``loss.object_identity_lambda`` > 0 and ``loss.balanced_objects``
    #: change (a recipe setting any of them needs it)
    loss_has_object_channels: ClassVar[bool] = False
    #: whether ``forward`` and ``loss`` take ``pixel_sample`` (a recipe's ``loss.pixel_stride`` > 1 needs it)
    loss_samples_pixels: ClassVar[bool] = False
    #: an ``nn.Embedding`` weight (a token table) read only at ``TextInputs.input_ids``, so that its gradient
    #: lives on those rows: when it trains, part training trains just those rows
    #: (``train.token_rows.TrainedTokenRows``); None: no such table (every trained parameter trains whole)
    prompt_token_table: ClassVar[str | None] = None

    def __init__(self, config: PartCLIPSegConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config

    # ------------------------------------------------------------------ weights I/O
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any) -> "PartSegmentationModel":
        """Load a saved folder, a hub id or an official ``.pth`` (keywords: ``config``, ``device``,
        ``dtype``; see ``partclipseg.model.loading.load_pretrained``). On a subclass, the checkpoint
        must hold that architecture."""
        model = load_pretrained(source, **kwargs)
        if not isinstance(model, cls):
            raise CheckpointError(f"{source} holds a {type(model).__name__} model, not a {cls.__name__}")
        return model

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomically)."""
        return save_pretrained(self, directory)

    def init_weights(self) -> None:
        """Random initialisation of a new model (``build_model`` calls it)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ text side
    def prompts(self, vocabulary: Vocabulary) -> list[str]:
        """The texts the text encoder reads for ``vocabulary`` (order defines ``TextInputs.input_ids``)."""
        raise NotImplementedError

    def tokenize_vocabulary(self, vocabulary: Vocabulary, tokenizer: Any) -> TextInputs:
        """``prompts(vocabulary)`` tokenised (padded to the longest) with the vocabulary's index maps."""
        ids, mask = tokenizer(list(self.prompts(vocabulary)), padding="longest")
        return TextInputs(vocabulary, ids, mask, torch.tensor(vocabulary.text_to_part, dtype=torch.long),
                          torch.tensor(vocabulary.text_to_object, dtype=torch.long))

    def encode_vocabulary(self, vocabulary: Vocabulary, tokenizer: Any) -> EncodedVocabulary:
        """Tokenise and encode a vocabulary on the model's device (image independent)."""
        return self.encode_text_inputs(self.tokenize_vocabulary(vocabulary, tokenizer).to(self.device))

    def encode_text_inputs(self, text: TextInputs) -> EncodedVocabulary:
        """``TextInputs`` -> ``EncodedVocabulary`` (differentiable)."""
        raise NotImplementedError

    def oracle_classes(self, vocabulary: Vocabulary, object_names: Sequence[str]) -> list[int]:
        """Sorted indices of the object-specific classes Oracle-Obj keeps for the named object(s).

        Default (the PartCLIPSeg family's evaluator): the classes whose object is one of
        ``object_names`` (exact names; an unknown name raises ``VocabularyError``). An architecture
        whose official evaluator matches otherwise overrides this.
        """
        from ..errors import VocabularyError

        for name in object_names:
            if name not in vocabulary.objects:
                raise VocabularyError(f"object {name!r} has no part classes in the vocabulary (objects: "
                                      f"{list(vocabulary.objects)})")
        return [t for t, o in enumerate(vocabulary.text_to_object) if vocabulary.objects[o] in object_names]

    # ------------------------------------------------------------------ image side and decoding
    def preprocess(self, images: Sequence[Any]) -> Any:
        """HWC uint8 RGB arrays (``partclipseg.preprocess.load_image``) -> what ``encode_image`` takes
        (anything with ``.to(device)``). Default: ``partclipseg.preprocess`` at ``config.image_size``."""
        from ..preprocess import preprocess

        return preprocess(images, self.config.image_size, mean=self.config.image_mean, std=self.config.image_std)

    def encode_image(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> ImageFeatures:
        """pixel_values [B, 3, S, S] (``partclipseg.preprocess``) -> ``ImageFeatures``."""
        raise NotImplementedError

    def decode(self, image_features: ImageFeatures, encoded: EncodedVocabulary, *, chunk_size: int | None = None,
               output_attentions: bool | Sequence[int] = False,
               output_hidden_states: bool = False) -> SegmentationOutput:
        """Logits of every image in ``image_features`` for ``encoded``'s vocabulary.

        ``chunk_size`` bounds the classes decoded at once (memory only; results do not depend on it).
        """
        raise NotImplementedError

    def decode_for_inference(self, image_features: ImageFeatures, encoded: EncodedVocabulary, *,
                             chunk_size: int | None = None) -> SegmentationOutput:
        """``decode`` for the inference protocols (the Predictor): the logit fields may be ``LazyLogits``
        when the processing-size maps would exceed ``EAGER_LOGITS_BYTES``. Default: ``decode``."""
        return self.decode(image_features, encoded, chunk_size=chunk_size)

    def attention_map(self, image_features: ImageFeatures, encoded: EncodedVocabulary,
                      class_index: int) -> torch.Tensor:
        """Attention of object-specific class ``class_index`` between image tokens: [B, g*g, g*g]
        (queries x keys, row-major token grids, averaged over heads and over the conditions that
        make up the class). The Predictor turns it into the heatmap of the paper's Fig. A2."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, *args: Any,
                **kwargs: Any) -> SegmentationOutput:
        """Encode text and image and decode (training path). Every architecture accepts
        ``forward(pixel_values, **text_inputs.forward_kwargs(), output_attentions=..., output_hidden_states=...)``."""
        raise NotImplementedError

    def loss_forward_options(self, loss_config: Any) -> dict[str, Any]:
        """Extra ``forward`` keywords the loss needs (e.g. the decoder attentions of some layers)."""
        return {}

    def loss(self, output: SegmentationOutput, part_labels: Sequence[torch.Tensor],
             object_labels: Sequence[torch.Tensor], text: TextInputs, object_to_model: torch.Tensor,
             loss_config: Any, trained_text_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training losses of ``output`` against label maps (``part_labels`` / ``object_labels``
        [H, W] each, ``-1`` ignore; ``object_to_model`` maps dataset object ids to vocabulary objects).
        ``trained_text_classes`` [T] bool (``supervision=parts+objects``): the object-specific classes whose
        channels the loss trains; None = all. An architecture that cannot leave classes out raises
        ``ValueError`` for anything but None. Must contain ``"total"`` (the scalar to minimise)."""
        raise NotImplementedError

    def is_trainable(self, name: str, which: str) -> bool:
        """Whether parameter ``name`` is trained under the recipe's ``trainable`` setting ``which``
        (one of ``trainable_sets``)."""
        raise NotImplementedError

    @classmethod
    def preset_config(cls, name: str, image_size: int | None) -> Any:
        """The config of a new model for ``init=random:<name>`` with the recipe's ``image_size``
        (``None``: the preset's). Default: the CLIPSeg-family presets (``partclipseg.config.CONFIGS``)."""
        config = get_config(name, cls.model_type)
        if image_size is not None:
            config.image_size = image_size
        config.validate()
        return config

    def as_architecture(self, architecture: str, seed: int = 0) -> "PartSegmentationModel | None":
        """A model of another registered ``architecture`` that keeps every weight the two share (the rest
        freshly initialised, seeded with ``seed``), or ``None`` when the two share no layout. Lets
        ``partclipseg train`` start e.g. the CLIPSeg baseline from a trained PartCLIPSeg. Default: ``None``."""
        return None

    def set_processing_size(self, image_size: int | None) -> None:
        """Use the recipe's ``image_size`` (``None``: keep the model's) when fine-tuning a saved model."""
        if image_size is not None:
            self.config.image_size = image_size

    def train_preprocessor(self, channel_order: str) -> "TrainPreprocessor":
        """What turns augmented training images into ``forward``'s first argument (runs in the data
        loader's workers, so it holds settings only, never the model). Default: ``preprocess`` at
        ``config.image_size`` with the model's statistics."""
        return ResizeNormalise(self.config.image_size, tuple(self.config.image_mean), tuple(self.config.image_std),
                               channel_order)

    def check_pixel_stride(self, stride: int) -> None:
        """``ConfigError`` unless the heads can compute the logits of pixels sampled at ``stride``
        (``loss.pixel_stride``; architectures with ``loss_samples_pixels`` say when they can)."""
        raise ConfigError(f"{type(self).__name__} cannot train on sampled pixels: set loss.pixel_stride=1")

    def init_from_clipseg_state(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Start from converted CLIPSeg weights (``weights.init_from_clipseg``); only the CLIPSeg family can."""
        raise CheckpointError(f"a {type(self).__name__} cannot start from CLIPSeg weights ({source})")
