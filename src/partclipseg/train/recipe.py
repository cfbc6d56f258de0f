"""Training recipes: a plain dataclass, named JSON recipes shipped in the package, ``key=value`` overrides.

``load_recipe("pascal_part_116", ["iterations=100", "loss.use_attention=false"])`` returns a
``TrainConfig``. The shipped recipes (``resources/recipes/*.json``) hold the official settings
(SPEC §3.6); a recipe may also be a path to a JSON file. Unknown keys are refused.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..losses import LossConfig

AUGMENTATIONS = ("resize_flip", "flip", "none")
SUPERVISIONS = ("parts", "objects", "parts+objects")
LR_SCHEDULES = ("poly", "cosine")
WARMUP_METHODS = ("linear", "constant")


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults = the official recipe (SPEC §3.6).

    * ``init``: CLIPSeg weights in Hugging Face layout (folder or hub id) for a new model, a saved
      partclipseg folder to fine-tune, a named model (``partclipseg models``: fetched on first use), or
      ``"random:<preset>"`` (a config preset with random weights).
    * ``architecture``: a registered architecture (``partclipseg``, ``clipseg``, ``partcatseg``).
    * ``image_size``: the processing size of the CLIPSeg family; ``null`` = the model's own (PartCATSeg,
      whose CLIP / DINOv2 input sizes are model-config fields, requires ``null``).
    * ``trainable``: one of the architecture's ``trainable_sets``. PartCLIPSeg: ``"VA+L+F+D"`` (official:
      visual adapter, text input embeddings, FiLMs, decoder and both heads), ``"all"`` (every parameter
      that reaches the loss), ``"all-but-text"`` (all but the text tower: after toy language-image
      pretraining, the names of unseen objects keep the meaning pretraining gave them, as with CLIP's
      frozen text tower) or ``"all-but-text-layers"`` (the same, but the text token embeddings train:
      the part names, which no pretraining caption holds, get input vectors of their own; words of no
      training prompt get no gradient). PartCATSeg: ``"official"``, ``"clip-attention"``, ``"clip-image"``
      (``model/partcatseg/training.py``).
    * Schedule: ``lr_schedule`` ``"poly"`` (detectron2/DeepLab ``WarmupPolyLR``: ``lr * (1 - step/iterations)
      ** poly_power``) or ``"cosine"`` (detectron2 ``WarmupCosineLR`` to 0); ``warmup_iters`` steps of
      ``warmup_method`` warm-up from ``warmup_factor`` (detectron2's ``SOLVER.WARMUP_*``; 0 = none).
    * ``lr_multipliers``: ``{parameter-name prefix: factor}``; a parameter's lr is ``lr * factor`` of the
      longest matching prefix (1 otherwise), e.g. ``{"dino.": 0.01}`` = detectron2's
      ``BACKBONE_MULTIPLIER`` for PartCATSeg's DINOv2. Every prefix must match a trained parameter.
    * ``batch_size`` is the *global* batch (split over torchrun processes); the loss is per image
      (``loss.per_image``), as the official 8 GPUs x 1 image.
    * ``augmentation``: ``"resize_flip"`` (short side ``min_size``, long side <= ``max_size``, then
      h-flip with ``flip_prob``; Pascal/ADE), ``"flip"``, or ``"none"`` (PartImageNet, official). Then, in
      detectron2's order: ``crop_size`` (> 0: random ``crop_size`` square crop after the resize),
      ``color_aug`` (SSD colour jitter before the flip), ``pad_to`` (> 0: pad with 128 / ignore, or cut,
      at the bottom/right to exactly ``pad_to`` square: the official PartCATSeg mappers).
    * ``copy_paste_prob`` (not official; 0 = off): with this probability a training sample gets one object
      of another training image pasted onto it before the augmentation (Ghiasi et al. 2021, "Simple
      Copy-Paste"): one object label of a donor image drawn at random (labels are per class, so every
      instance of that class comes along), its pixels' image, part and object labels cut out along the
      object mask, the box scaled to 30-60% of the image width (at most 90% of its height; small objects
      are enlarged) and placed at a random position in front of whatever is there. It makes scenes of
      objects that the data never shows together (a dog beside a cow), with exact labels. The donor is
      the record at the partner position ``position ^ 1`` of the same epoch order; with
      ``supervision="parts"`` a paste that would cover every seen part label is dropped. Its random
      draws come from a generator of their own, so 0 leaves every other draw of a run unchanged.
    * ``cache_resized`` (not official; false = off): each training image is decoded once and kept in memory
      at the model's processing size (image: the preprocessor's own resize; labels: the loss's nearest
      resize), and the flip is applied to those arrays, not before the resize: the labels a flipped
      sample reaches the loss with may differ from the uncached ones by a one-pixel shift of the nearest
      picks. It saves the decoding and resizing of every later epoch (toy world: ~13 of ~14 ms an image);
      memory: S*S*7 bytes an image in each process that loads data (each loader worker keeps its own
      cache with ``num_workers`` > 0; 192 px: 6000 images = 1.5 GB). Only with ``augmentation``
      ``"flip"`` or ``"none"``, no ``crop_size`` / ``pad_to`` / ``color_aug`` and no copy-paste.
    * ``channel_order``: ``"BGR"`` reproduces the official training input (detectron2 default format).
    * ``skip_unseen_images``: False (official) keeps training images in which an unseen object appears
      (the mapper turns its pixels into background, so the background channel learns to fire on unseen
      objects); True skips them (the strict inductive zero-shot setting of ZS3Net, Bucher et al. 2019:
      no training image shows an unseen object).
    * ``freeze_object_words``: False (official) lets every trained text token-embedding row move; True
      keeps the rows of the training objects' names at their initial values (the gradient of those
      rows is zeroed; tokens that also occur in a part name, and the start / end tokens, still train).
      Words of no training prompt (the unseen objects' names) get no gradient either way, so with
      trained token embeddings the seen names drift away from the pretrained rows the unseen names keep
      (toy world, 1000 steps: cosine to the pretrained row 0.52-0.91, norms +25-50%). Needs a trainable
      set in which the token embeddings train, and ``weight_decay_embed: 0``. Not used by the toy
      recipe: there it lowered validation Pred-All (step 4000: 20.0 / 2.2 seen / unseen against
      21.1 / 5.2; ``benchmarks/results/default_model_run/experiments.json``).
    * ``supervision``: ``"parts"`` (the paper's training: seen object-specific part masks, object masks of
      the seen objects) or ``"objects"`` (an object-segmentation stage: the vocabulary is the benchmark's
      whole test vocabulary, so every object, unseen ones included, gets an object channel; the object
      masks of all objects are the targets; no part label is used, so the part terms are zero and only the
      object head's BCE and the object-specific background term train). This is the toy world's analogue
      of CLIPSeg's referring-segmentation training (PhraseCut), from which the real PartCLIPSeg starts:
      object names of the unseen objects are placed on object masks, no part of an unseen object is ever
      labelled. Not combinable with ``skip_unseen_images``.
      ``"parts+objects"``: part training that keeps the object stage's supervision. The vocabulary is the
      whole test vocabulary; the part targets are the seen objects' part masks (an unseen object's part
      pixels are ignore), the object targets are the object masks of every object; the object-specific
      channels of the unseen objects are left out of the object-specific terms (weight 0, and the terms
      are normalised by the trained channels: T_seen + 1), so those terms equal the paper's on the
      training vocabulary, and no part of an unseen object gets any signal, positive or negative. Without
      it, part training only ever tells the object head about the seen objects, and the unseen objects'
      object channels drift (toy world: validation Pred-All unseen 10.9 at step 1000 -> 8.5 at 3500).
      Images are kept when they hold any object label. Not combinable with ``skip_unseen_images``; only
      for architectures whose ``loss`` takes ``trained_text_classes`` (``loss_leaves_out_classes``: PartCLIPSeg).
    """

    dataset: str = "pascal_part_116"
    root: str = ""
    architecture: str = "partclipseg"
    init: str = "CIDAS/clipseg-rd64-refined"
    image_size: int | None = 352
    iterations: int = 20000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    poly_power: float = 0.9
    lr_schedule: str = "poly"
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    warmup_method: str = "linear"
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    grad_clip: float = 0.01
    trainable: str = "VA+L+F+D"
    precision: str = "fp32"
    seed: int = 12345678
    augmentation: str = "resize_flip"
    min_size: int = 800
    max_size: int = 1333
    flip_prob: float = 0.5
    crop_size: int = 0
    color_aug: bool = False
    pad_to: int = 0
    copy_paste_prob: float = 0.0
    cache_resized: bool = False
    channel_order: str = "BGR"
    skip_unseen_images: bool = False
    freeze_object_words: bool = False
    supervision: str = "parts"
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint_period: int = 1000
    keep_checkpoints: int = 3
    eval_period: int = 1000
    eval_protocol: str = "oracle-obj"
    eval_limit: int | None = None
    log_period: int = 20
    num_workers: int = 2

    def validate(self) -> None:
        from ..model.registry import architecture_class

        sets = architecture_class(self.architecture).trainable_sets  # an unknown architecture: ConfigError
        if self.trainable not in sets:
            raise ConfigError(f"trainable must be one of {sets} for {self.architecture}, got {self.trainable!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_method not in WARMUP_METHODS:
            raise ConfigError(f"warmup_method must be one of {WARMUP_METHODS}, got {self.warmup_method!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        if self.supervision not in SUPERVISIONS:
            raise ConfigError(f"supervision must be one of {SUPERVISIONS}, got {self.supervision!r}")
        if self.supervision != "parts" and self.skip_unseen_images:
            raise ConfigError(f"supervision={self.supervision} trains on the object masks of every object, unseen "
                              "ones included: set skip_unseen_images=false")
        if self.supervision == "parts+objects" and not architecture_class(self.architecture).loss_leaves_out_classes:
            raise ConfigError(f"supervision=parts+objects needs an architecture whose loss can leave the unseen "
                              f"objects' classes out (partclipseg), got {self.architecture!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.eval_protocol not in ("pred-all", "oracle-obj"):
            raise ConfigError(f"eval_protocol must be 'pred-all' or 'oracle-obj', got {self.eval_protocol!r}")
        check_run_settings(self)
        if self.image_size is not None and (isinstance(self.image_size, bool) or int(self.image_size) <= 0):
            raise ConfigError(f"image_size must be positive or null (the model's own), got {self.image_size!r}")
        if not self.root:
            raise ConfigError("root (the dataset folder) is not set: add root=/path/to/dataset")
        if not self.init:
            raise ConfigError("init is not set: CLIPSeg weights (folder or hub id) or random:<preset>")
        self._validate_numbers()
        if self.cache_resized and (self.augmentation not in ("flip", "none") or self.crop_size or self.pad_to
                                   or self.copy_paste_prob or self.color_aug):
            raise ConfigError("cache_resized keeps images at the processing size: it needs augmentation 'flip' or "
                              "'none', crop_size=0, pad_to=0, color_aug=false and copy_paste_prob=0")
        if self.loss.pixel_stride > 1 and not architecture_class(self.architecture).loss_samples_pixels:
            raise ConfigError(f"loss.pixel_stride needs an architecture whose heads and loss can run on sampled "
                              f"pixels (partclipseg), got {self.architecture!r}: set loss.pixel_stride=1")
        if not architecture_class(self.architecture).loss_has_object_channels:
            for key, value, off in (("object_ce_lambda", self.loss.object_ce_lambda, "0"),
                                    ("object_identity_lambda", self.loss.object_identity_lambda, "0"),
                                    ("balanced_objects", self.loss.balanced_objects, "false")):
                if value:
                    raise ConfigError(f"loss.{key} needs an architecture whose loss has the generalized object "
                                      f"channels' terms (partclipseg), got {self.architecture!r}: set loss.{key}={off}")

    def _validate_numbers(self) -> None:
        """Ranges of the numeric settings (finite, in range); every problem names its key."""
        def number(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False,
                   high_open: bool = False) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            too_low = value <= low if low_open else value < low
            too_high = value >= high if high_open else value > high
            if too_low or too_high:
                left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
                raise ConfigError(f"{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}")

        number("lr", self.lr, 0, low_open=True)
        number("eps", self.eps, 0, low_open=True)
        for name in ("weight_decay", "weight_decay_norm", "weight_decay_embed", "poly_power"):
            number(name, getattr(self, name), 0)
        number("grad_clip", self.grad_clip, 0)  # 0 = no clipping
        number("flip_prob", self.flip_prob, 0, 1)
        number("copy_paste_prob", self.copy_paste_prob, 0, 1)
        number("warmup_factor", self.warmup_factor, 0, 1, low_open=True)
        for name in ("warmup_iters", "crop_size", "pad_to"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0 (0: off), got {value!r}")
        if not isinstance(self.freeze_object_words, bool):
            raise ConfigError(f"freeze_object_words must be true or false, got {self.freeze_object_words!r}")
        if self.freeze_object_words and self.weight_decay_embed > 0:
            raise ConfigError("freeze_object_words needs weight_decay_embed=0 (weight decay would still shrink "
                              "the frozen rows)")
        if not isinstance(self.cache_resized, bool):
            raise ConfigError(f"cache_resized must be true or false, got {self.cache_resized!r}")
        if not isinstance(self.color_aug, bool):
            raise ConfigError(f"color_aug must be true or false, got {self.color_aug!r}")
        if not isinstance(self.lr_multipliers, dict):
            raise ConfigError(f"lr_multipliers must be an object {{parameter-name prefix: factor}}, got "
                              f"{self.lr_multipliers!r}")
        for prefix, factor in self.lr_multipliers.items():
            if not isinstance(prefix, str) or not prefix:
                raise ConfigError(f"lr_multipliers keys must be non-empty parameter-name prefixes, got {prefix!r}")
            number(f"lr_multipliers[{prefix!r}]", factor, 0)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers [beta1, beta2], got {self.betas!r}")
        for k, beta in enumerate(self.betas):
            number(f"betas[{k}]", beta, 0, 1, high_open=True)
        for name in ("min_size", "max_size"):
            if isinstance(getattr(self, name), bool) or int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_size < self.min_size:
            raise ConfigError(f"max_size {self.max_size} is below min_size {self.min_size}")
        if isinstance(self.num_workers, bool) or int(self.num_workers) < 0:
            raise ConfigError(f"num_workers must be >= 0 (0: load data in the main process), got {self.num_workers!r}")
        if self.eval_limit is not None and (isinstance(self.eval_limit, bool) or int(self.eval_limit) < 1):
            raise ConfigError(f"eval_limit must be >= 1 or null, got {self.eval_limit!r}")
        if isinstance(self.seed, bool) or not 0 <= int(self.seed) < 2**63:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("obj_lambda", "part_lambda", "sep_lambda", "enh_lambda", "background_weight",
                     "object_ce_lambda", "object_identity_lambda"):
            number(f"loss.{name}", getattr(self.loss, name), 0)
        number("loss.attn_threshold", self.loss.attn_threshold, 0, 1)
        number("loss.jsd_lambda", self.loss.jsd_lambda, 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_run_settings(config: Any) -> None:
    """The settings every training or pretraining recipe shares: positive step counts, batch and periods,
    and the channel order. ``config`` is a ``TrainConfig`` or a ``PretrainConfig`` (each checks its
    ``image_size``: a part-training recipe may leave it to the model)."""
    if config.channel_order not in ("RGB", "BGR"):
        raise ConfigError(f"channel_order must be 'RGB' or 'BGR', got {config.channel_order!r}")
    for name in ("iterations", "batch_size", "checkpoint_period", "eval_period", "log_period", "keep_checkpoints"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def read_recipe(name_or_path: str) -> tuple[dict[str, Any], str]:
    """(the recipe's keys without ``_comment`` and ``_sources``, where it came from) of a shipped recipe by
    name (``resources/recipes/NAME.json``) or a JSON file; unreadable or unknown recipes raise ``ConfigError``."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"recipe file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"recipe {path} is not valid JSON in UTF-8: {exc}") from None
        source = str(path)
    elif name_or_path in recipe_names():
        data = json.loads(resources.files("partclipseg").joinpath("resources", "recipes",
                                                                   f"{name_or_path}.json").read_text())
        source = f"recipe {name_or_path!r}"
    else:
        raise ConfigError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(recipe_names())}")
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object of recipe keys, not a {type(data).__name__}")
    data.pop("_comment", None)
    sources = data.pop("_sources", {})  # documentation: the official file and key behind each value
    if not isinstance(sources, dict) or set(sources) - set(data):
        raise ConfigError(f"{source}: _sources must be an object whose keys are recipe keys of this recipe")
    return data, source


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> ``{"key": "value"}`` (values are coerced by the loader)."""
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parsed[key.strip()] = value
    return parsed


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert a JSON value or an override string to the type of the current value."""
    if isinstance(value, str) and not isinstance(current, str):
        text = value.strip()
        if text.lower() in ("none", "null"):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            if text.lower() in ("true", "false"):
                value = text.lower() == "true"
            else:
                raise ConfigError(f"cannot read {key}={value!r} as a {type(current).__name__}") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, (int, float)) \
            and float(value).is_integer():
        return int(value)
    if isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, dict) and not isinstance(value, dict):
        raise ConfigError(f"{key} must be a JSON object, got {value!r}")
    if current is not None and value is not None and not isinstance(value, type(current)):
        raise ConfigError(f"{key} must be a {type(current).__name__}, got {value!r}")
    return value


def apply_overrides(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Set fields from ``{"key": value, "loss.key": value}``; unknown keys raise ``ConfigError``."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    loss_fields = {f.name for f in dataclasses.fields(LossConfig)}
    loss_updates: dict[str, Any] = {}
    for key, value in values.items():
        if key == "loss" and isinstance(value, dict):
            for sub, v in value.items():
                loss_updates[sub] = v
            continue
        if key.startswith("loss."):
            loss_updates[key[5:]] = value
            continue
        if key not in fields:
            raise ConfigError(f"unknown recipe key {key!r} in {source}; known: {', '.join(sorted(fields))}")
        setattr(config, key, _coerce(value, getattr(config, key), key))
    coerced: dict[str, Any] = {}
    for sub, value in loss_updates.items():
        if sub not in loss_fields:
            raise ConfigError(f"unknown loss key {sub!r} in {source}; known: {', '.join(sorted(loss_fields))}")
        coerced[sub] = _coerce(value, getattr(config.loss, sub), f"loss.{sub}")
    try:  # all keys at once: the checks that relate two keys see the new value of both, in any order
        config.loss = dataclasses.replace(config.loss, **coerced)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss: {exc}") from None
    return config


def recipe_names() -> list[str]:
    folder = resources.files("partclipseg").joinpath("resources", "recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A shipped recipe by name, or a JSON file, then ``key=value`` overrides."""
    data, source = read_recipe(name_or_path)
    if data.get("kind") == "pretrain":
        raise ConfigError(f"{source} is a pretraining recipe: run it with 'partclipseg pretrain'")
    config = apply_overrides(TrainConfig(), data, source)
    return apply_overrides(config, parse_overrides(overrides), "overrides")
