"""Toy language-image pretraining: the toy world's CLIP, trained before part training.

PartCLIPSeg starts from CLIP, whose language-image pretraining is what gives the names of unseen
objects a meaning. The toy model has no such weights, so this module trains its vision and text
towers the way CLIP was trained (Radford et al. 2021): a symmetric InfoNCE loss between image and
caption embeddings in a batch, with a learned temperature. The images are toy-world images of
**all** objects, unseen ones (cow, bus) included; the captions are object-level sentences drawn
from varied templates with colour and texture words (``captions/{split}.json`` written by the
generator); no part word and no part mask is used. Part training then starts from these towers
(``init`` = the ``final/`` folder of a pretraining run), as the real model starts from CLIP.

Shapes: ``B`` images (= captions) per batch, ``S`` input size, ``C`` vision width, ``E`` joint
embedding width (the model's ``projection_dim``), ``L`` caption tokens.

Run layout (``out_dir``), like :func:`partclipseg.train.train`::

    config.json                    the PretrainConfig of the run
    metrics.jsonl                  one line per logged step (loss, temperature, lr, seconds) and per evaluation
    checkpoints/step_0000500/      towers.safetensors + trainer.pt (optimizer, step, RNG)
    eval/step_0000500.json         zero-shot object classification on the val split (seen / unseen)
    final/                         a PartCLIPSeg (config.json + model.safetensors) whose vision and text
                                   towers are the pretrained ones; everything else freshly initialised

Checkpoints are written to a temporary folder and renamed; ``resume=True`` continues from the newest
one and reproduces the uninterrupted run (each batch and its captions are a function of the seed and
the step).
"""
from __future__ import annotations

import dataclasses
import os
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import PartCLIPSegConfig, get_config
from ..errors import CheckpointError, ConfigError
from ..io import atomic_path, atomic_write_text, json_text
from ..model import build_model
from ..model.clip import CLIPTextTower, CLIPVisionTower
from ..preprocess import load_image
from ..resample import resize_bilinear
from ..tokenizer import get_tokenizer
from ..weights import save_pretrained
from .checkpoint import check_resume_config, latest_checkpoint, remove_stale_temporaries, trainer_state, trim_metrics, write_checkpoint
from .recipe import _coerce, check_run_settings, parse_overrides, read_recipe

__all__ = ["CaptionSampler", "ContrastiveTowers", "PretrainConfig", "caption_for", "clip_loss", "export_towers",
           "load_pretrain_recipe", "model_from_towers", "part_model_from_towers", "pretrain",
           "pretraining_towers_state", "towers_from_checkpoint", "zero_shot_accuracy"]

RECIPE_KIND = "pretrain"

#: caption templates; ``{}`` = one or more object descriptions ("a white spotted cow and a red car")
TEMPLATES = (
    "a photo of {}.", "a picture of {}.", "a drawing of {}.", "a cartoon of {}.", "an image of {}.",
    "{}.", "there is {} in the picture.", "a toy world scene with {}.", "a rendering of {}.", "{} on a background.",
)


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs (recipe ``kind: "pretrain"``).

    * ``init``: ``"random:<preset>"``, the config preset whose towers are trained.
    * ``image_size``: input size (the part model keeps it as its processing size).
    * ``pool``: the image embedding: ``"mean"`` of the patch tokens (so that every patch token lives
      in a space the text can be matched against, as the decoder needs) or ``"cls"``.
    * ``logit_scale_init`` = 1 / temperature at the start (CLIP: 1/0.07), clamped at ``logit_scale_max``.
    * ``describe_prob``: chance that an object's description carries its colour / texture word.
    * ``crop_prob``: chance that a sample is one object's view (a square crop around the object's box,
      with its one-object caption) instead of the whole scene with the caption of all its objects. The
      box comes from the object map (where each object is; never a part mask): CLIP's web images mostly
      show one main object, and the toy model learns the objects' names several times faster from them.
    """

    kind: str = RECIPE_KIND
    dataset: str = "toy_world"
    root: str = ""
    init: str = "random:toy2"
    image_size: int = 128
    iterations: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    pool: str = "mean"
    logit_scale_init: float = 1 / 0.07
    logit_scale_max: float = 100.0
    describe_prob: float = 0.5
    crop_prob: float = 0.0
    flip_prob: float = 0.5
    channel_order: str = "RGB"
    seed: int = 0
    checkpoint_period: int = 500
    keep_checkpoints: int = 2
    eval_period: int = 500
    log_period: int = 20

    def validate(self) -> None:
        if self.kind != RECIPE_KIND:
            raise ConfigError(f"a pretraining recipe has kind {RECIPE_KIND!r}, got {self.kind!r}")
        if self.dataset != "toy_world":
            raise ConfigError(f"pretraining reads captions of the toy world only, got dataset {self.dataset!r}")
        if not self.root:
            raise ConfigError("root (the toy world folder) is not set: add root=/path/to/ToyWorld")
        if not self.init.startswith("random:"):
            raise ConfigError(f"init must be random:<preset> for pretraining, got {self.init!r}")
        if self.pool not in ("mean", "cls"):
            raise ConfigError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        check_run_settings(self)
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ConfigError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (the loss contrasts the images of a batch)")
        for name in ("describe_prob", "crop_prob", "flip_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_pretrain_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> PretrainConfig:
    """A shipped pretraining recipe by name (``resources/recipes/NAME.json``) or a JSON file, then
    ``key=value`` overrides. Unknown keys are refused."""
    data, source = read_recipe(name_or_path)
    if data.get("kind") != RECIPE_KIND:
        raise ConfigError(f"{source} is not a pretraining recipe (it needs \"kind\": \"{RECIPE_KIND}\"); "
                          f"part-training recipes run with 'partclipseg train'")
    data.update(parse_overrides(overrides))
    config = PretrainConfig()
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown pretraining key {key!r} in {source}; known: {', '.join(sorted(known))}")
        setattr(config, key, _coerce(value, getattr(config, key), key))
    return config


# ---------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _describe(words: dict[str, str], rng: np.random.Generator, describe_prob: float) -> str:
    parts = []
    if rng.random() < describe_prob:
        parts.append(words["colour"])
    if words["texture"] != "plain" and rng.random() < describe_prob:
        parts.append(words["texture"])
    parts.append(words["object"])
    text = " ".join(parts)
    return f"{_article(text)} {text}"


def caption_for(objects: Sequence[dict[str, str]], rng: np.random.Generator, describe_prob: float = 0.5) -> str:
    """An object-level caption for an image's objects (``{"object", "colour", "texture"}`` each):
    a random template around the objects' descriptions in random order, e.g. "a photo of a white
    spotted cow and a red car." No part words."""
    if not objects:
        return "an empty picture."
    order = rng.permutation(len(objects))
    items = [_describe(objects[int(i)], rng, describe_prob) for i in order]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(listed)


class CaptionSampler:
    """Images of a toy-world split at the input size (decoded once, kept as uint8) with their caption
    words; ``batch(step)`` is a function of ``(seed, step)`` only."""

    def __init__(self, root: str | Path, split: str, config: PretrainConfig, mean, std) -> None:
        root = Path(root)
        folder = root if (root / "captions").is_dir() else root / "ToyWorld"
        path = folder / "captions" / f"{split}.json"
        if not path.is_file():
            raise ConfigError(f"{path} not found: pretraining needs a toy world written by this version of "
                              f"python -m partclipseg.data.toyworld (it writes captions/)")
        try:
            captions = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON in UTF-8: {exc}") from None
        if not isinstance(captions, dict) or not all(isinstance(c, list) for c in captions.values()):
            raise ConfigError(f"{path} must map image names to lists of their objects' words (a JSON object)")
        self.stems = sorted(captions)
        if not self.stems:
            raise ConfigError(f"{path} lists no images")
        self.words = [captions[s] for s in self.stems]
        self.config, self.mean, self.std = config, mean, std
        size = config.image_size
        object_index = _object_index()

        def decode(stem: str, words: list) -> tuple[np.ndarray, list[tuple[np.ndarray, dict]]]:
            image = load_image(folder / "images" / split / f"{stem}.jpg")
            scene = resize_bilinear(image, size, size)  # the processor's resize
            views = []
            if config.crop_prob > 0:
                objects = np.asarray(Image.open(folder / "annotations_detectron2_obj" / split / f"{stem}.png"))
                for name in dict.fromkeys(w["object"] for w in words):  # each object class once
                    box = _square_box(objects == object_index[name])
                    if box is not None:
                        y0, y1, x0, x1 = box
                        views.append((resize_bilinear(image[y0:y1, x0:x1], size, size),
                                      next(w for w in words if w["object"] == name)))
            return scene, views

        # decoding and resizing release the GIL for much of their time: two threads take ~0.7x the time
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(decode, self.stems, self.words))
        scenes = [scene for scene, _ in decoded]
        crops = [crop for _, views in decoded for crop, _ in views]
        self.crop_words = [[word] for _, views in decoded for _, word in views]
        self.images = np.stack(scenes)  # [n, S, S, 3] uint8
        self.crops = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)  # [m, S, S, 3]

    def __len__(self) -> int:
        return len(self.stems)

    def pixels(self, indices: Sequence[int], flips: Sequence[bool] | None = None,
               crops: Sequence[bool] | None = None) -> torch.Tensor:
        """[B, 3, S, S] normalised pixel values of cached images (``crops[j]``: index j is an object
        view, else a scene; optionally h-flipped): the package's preprocessing (the cache holds the
        S x S bilinear resize), normalised in float32."""
        crops = [False] * len(indices) if crops is None else crops
        x = torch.from_numpy(np.stack([(self.crops if c else self.images)[int(i)] for i, c in zip(indices, crops)]))
        x = x.permute(0, 3, 1, 2).float()
        if flips is not None and any(flips):
            flip = torch.as_tensor(list(flips))
            x[flip] = x[flip].flip(-1)
        if self.config.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """(pixel values [B, 3, S, S], captions [B]) of a training step: epoch-wise permutations."""
        b, n, m = self.config.batch_size, len(self), len(self.crops)
        indices, flips, crops, texts = [], [], [], []
        for j in range(b):
            position = step * b + j
            rng = np.random.default_rng([self.config.seed, position, 13])
            crop = m > 0 and bool(rng.random() < self.config.crop_prob)
            count = m if crop else n
            perm = np.random.default_rng([self.config.seed, position // count, 11 + crop]).permutation(count)
            i = int(perm[position % count])
            indices.append(i)
            crops.append(crop)
            flips.append(bool(rng.random() < self.config.flip_prob))
            texts.append(caption_for((self.crop_words if crop else self.words)[i], rng, self.config.describe_prob))
        return self.pixels(indices, flips, crops), texts


def _object_index() -> dict[str, int]:
    from ..data.toyworld import build_vocabulary_json

    return {name: j for j, name in enumerate(build_vocabulary_json()["object_classes"])}


def _square_box(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of a square around ``mask``'s pixels [H, W] (side = the longer box side plus
    ``margin`` on each side), shifted to lie inside the image and cut to it where it is larger."""
    ys, xs = np.nonzero(mask)
    if ys.size < 16:
        return None
    h, w = mask.shape
    side = (1 + 2 * margin) * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    cy, cx = (ys.max() + ys.min() + 1) / 2, (xs.max() + xs.min() + 1) / 2
    out = []
    for centre, limit in ((cy, h), (cx, w)):
        length = min(int(round(side)), limit)
        start = int(round(min(max(centre - length / 2, 0), limit - length)))
        out += [start, start + length]
    return out[0], out[1], out[2], out[3]


# ---------------------------------------------------------------------------- the model
class ContrastiveTowers(nn.Module):
    """The part model's vision and text towers plus what CLIP adds for pretraining: an image head
    (LayerNorm + linear C -> E, without bias) and the learned temperature (``logit_scale``, log of
    1/temperature). Parameter names ``vision.*`` and ``text.*`` are those of :class:`PartCLIPSeg`.

    ``encode_image(pixels [B,3,S,S]) -> [B, E]`` pools the hidden state after the deepest layer the
    decoder reads (``max(extract_layers) + 1``; later layers never reach the decoder);
    ``encode_text(ids [B,L], mask) -> [B, E]``; both unnormalised.
    """

    def __init__(self, config: PartCLIPSegConfig, pool: str = "mean", logit_scale_init: float = 1 / 0.07) -> None:
        super().__init__()
        self.config, self.pool = config, pool
        self.vision = CLIPVisionTower(config.vision)
        self.text = CLIPTextTower(config.text, config.projection_dim)
        self.image_norm = nn.LayerNorm(config.vision.hidden_size, eps=config.vision.layer_norm_eps)
        self.image_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.layer = max(config.decoder.extract_layers) + 1

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision(pixel_values, [self.layer])[0]  # [B, 1+g*g, C]
        pooled = hidden[:, 1:].mean(1) if self.pool == "mean" else hidden[:, 0]
        return self.image_projection(self.image_norm(pooled))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text(input_ids, attention_mask)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: image i matches caption i. features [B, E] (unnormalised), scalar
    ``logit_scale`` (log of 1/temperature) -> scalar loss (mean of image->text and text->image CE)."""
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * img @ txt.T  # [B, B]
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _build(config: PretrainConfig) -> ContrastiveTowers:
    model_config = get_config(config.init.split(":", 1)[1])
    model_config.image_size = config.image_size
    model_config.validate()
    torch.manual_seed(config.seed)
    towers = ContrastiveTowers(model_config, config.pool, config.logit_scale_init)
    reference = build_model(model_config)  # the package's initialisation of the towers
    towers.vision.load_state_dict(reference.vision.state_dict())
    towers.text.load_state_dict(reference.text.state_dict())
    nn.init.normal_(towers.image_projection.weight, std=model_config.vision.hidden_size ** -0.5)
    return towers


def towers_from_checkpoint(ckpt: str | Path) -> tuple[PretrainConfig, ContrastiveTowers]:
    """(the run's config, its towers) of a pretraining checkpoint ``RUN/checkpoints/step_*``: the towers
    are built from ``RUN/config.json`` and loaded from the checkpoint's ``towers.safetensors``."""
    from ..weights import read_safetensors

    ckpt = Path(ckpt)
    towers_file, run_config = ckpt / CHECKPOINT_FILES[0], ckpt.parents[1] / "config.json"
    if not towers_file.is_file() or not run_config.is_file():
        raise CheckpointError(f"{ckpt} is not a pretraining checkpoint (needs {towers_file.name} and {run_config})")
    config = load_pretrain_recipe(str(run_config))
    towers = _build(config)
    towers.load_state_dict(read_safetensors(towers_file))
    return config, towers


def part_model_from_towers(towers: ContrastiveTowers, seed: int = 0):
    """A new PartCLIPSeg of the towers' config: pretrained ``vision``/``text``, the rest initialised
    as the package initialises a new model (seeded)."""
    torch.manual_seed(seed)
    model = build_model(towers.config)
    model.vision.load_state_dict(towers.vision.state_dict())
    model.text.load_state_dict(towers.text.state_dict())
    return model


def export_towers(source: str | Path, out: str | Path, architecture: str = "partclipseg", seed: int = 0) -> Path:
    """``model_from_towers(source, architecture, seed)`` saved to ``out``. Lets every variant start from
    the same towers."""
    return save_pretrained(model_from_towers(source, architecture, seed).eval(), out)


def model_from_towers(source: str | Path, architecture: str = "partclipseg", seed: int = 0, source_model=None):
    """A new model of ``architecture`` with the vision and text towers of the saved model ``source`` (e.g.
    a pretraining run's ``final/``; ``source_model``: it, already loaded), the rest freshly initialised
    (seeded with ``seed``).

    ``"partclipseg"`` and the ``"clipseg"`` baseline take the towers' modules as they are. An architecture
    with its own CLIP layout (``model.registry.tower_builder``: PartCATSeg's OpenAI-layout CLIP, its config
    = the ``partcatseg-toy`` preset with the towers' shapes) gets them through its key table, together with
    the pretraining's image head (``image_norm`` / ``image_projection``, which ``final/`` does not keep)
    when ``source`` is a pretraining run's ``final/`` beside its ``checkpoints/``
    (``pretraining_towers_state``); without the head, its image head stays freshly initialised (a warning
    says so)."""
    from ..model.registry import tower_builder
    from ..weights import load_pretrained

    source_model = source_model if source_model is not None else load_pretrained(source)
    builder = tower_builder(architecture)
    torch.manual_seed(seed)
    if builder is not None:
        state, head = pretraining_towers_state(source, source_model)
        if head is None:
            import warnings

            warnings.warn(f"{source} is not a pretraining run's final/ beside its checkpoints: the {architecture} "
                          f"model's image head (the pretraining's image_norm / image_projection) starts fresh",
                          stacklevel=2)
        return builder(source_model.config, state, str(source))[0]
    config = PartCLIPSegConfig.from_dict({**source_model.config.to_dict(), "architecture": architecture})
    model = build_model(config)
    model.vision.load_state_dict(source_model.vision.state_dict())
    model.text.load_state_dict(source_model.text.state_dict())
    return model


#: the keys of a pretraining checkpoint's ``towers.safetensors`` that ``final/`` does not keep
IMAGE_HEAD_KEYS = ("image_norm.weight", "image_norm.bias", "image_projection.weight")


def pretraining_towers_state(source: str | Path, source_model=None) -> tuple[dict[str, torch.Tensor], Path | None]:
    """The state dict of the saved model ``source`` plus, when ``source`` is a pretraining run's ``final/``,
    the pretraining's image head from the run's newest checkpoint (``checkpoints/step_*/towers.safetensors``,
    used only if its ``vision.*`` / ``text.*`` tensors equal ``final/``'s: the same towers). Returns the
    state and the checkpoint file the head came from (``None``: no head)."""
    from ..weights import load_pretrained, read_safetensors

    source = Path(source)
    model = source_model if source_model is not None else load_pretrained(source)
    state = dict(model.state_dict())
    ckpt = latest_checkpoint(source.parent, CHECKPOINT_FILES)
    if ckpt is None:
        return state, None
    towers = read_safetensors(ckpt / "towers.safetensors")
    same = all(k in towers and torch.equal(towers[k], v) for k, v in state.items() if k.startswith(("vision.", "text.")))
    if not same or not all(k in towers for k in IMAGE_HEAD_KEYS):
        return state, None
    state.update({k: towers[k] for k in IMAGE_HEAD_KEYS})
    return state, ckpt / "towers.safetensors"


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def zero_shot_accuracy(towers: ContrastiveTowers, sampler: CaptionSampler, unseen: Sequence[str],
                       device: str = "cpu", batch: int = 64) -> dict[str, Any]:
    """Zero-shot object classification, CLIP style: for every image with a single object, the
    object whose prompt "a photo of a NAME." is nearest wins. Returns top-1 accuracy (%) over seen
    and unseen objects, the number of images of each, and top-1 per object (``top1_per_object``)."""
    from ..data.toyworld import OBJECT_PARTS, OBJECTS_WITHOUT_PARTS

    names = sorted(set(OBJECT_PARTS) | set(OBJECTS_WITHOUT_PARTS))
    ids, mask = get_tokenizer()([f"a photo of {_article(n)} {n}." for n in names], padding="longest")
    was_training = towers.training
    towers.eval()
    text = F.normalize(towers.encode_text(ids.to(device), mask.to(device)), dim=-1)
    single = [(i, w[0]["object"]) for i, w in enumerate(sampler.words) if len(w) == 1]
    correct = {"seen": 0, "unseen": 0}
    total = {"seen": 0, "unseen": 0}
    per_object: dict[str, list[int]] = {}
    for start in range(0, len(single), batch):
        chunk = single[start:start + batch]
        img = F.normalize(towers.encode_image(sampler.pixels([i for i, _ in chunk]).to(device)), dim=-1)
        pred = (img @ text.T).argmax(1).tolist()
        for (_, name), p in zip(chunk, pred):
            group = "unseen" if name in unseen else "seen"
            total[group] += 1
            correct[group] += int(names[p] == name)
            per_object.setdefault(name, [0, 0])[0] += int(names[p] == name)
            per_object[name][1] += 1
    if was_training:
        towers.train()
    return {f"top1_{g}": (100.0 * correct[g] / total[g] if total[g] else None) for g in total} | \
        {f"images_{g}": total[g] for g in total} | \
        {"top1_per_object": {n: round(100.0 * c / t, 1) for n, (c, t) in sorted(per_object.items())}}


# ---------------------------------------------------------------------------- checkpoints
#: What a complete pretraining checkpoint holds (written and resumed by ``train.checkpoint``).
CHECKPOINT_FILES = ("towers.safetensors", "trainer.pt")


def _save_checkpoint(out_dir: Path, towers: ContrastiveTowers, optimizer, step: int, config: PretrainConfig) -> Path:
    from safetensors.torch import save_file

    def write_towers(folder: Path) -> None:
        with atomic_path(folder / "towers.safetensors") as part:
            save_file({k: v.detach().contiguous() for k, v in towers.state_dict().items()}, str(part))

    return write_checkpoint(out_dir, step, write_towers, trainer_state(optimizer, step, config),
                            config.keep_checkpoints, CHECKPOINT_FILES)


def _lr(config: PretrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to 0 (CLIP's schedule)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    t = (step - config.warmup) / max(1, config.iterations - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * t))


def _parameter_groups(towers: ContrastiveTowers, weight_decay: float) -> list[dict]:
    """CLIP's rule: weight decay on matrices only (not on gains, biases, embeddings, temperature)."""
    decay, no_decay = [], []
    for name, param in towers.named_parameters():
        if param.ndim >= 2 and "embedding" not in name:
            decay.append(param)
        else:
            no_decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------- the loop
def pretrain(config: PretrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Pretrain per ``config``; returns the ``final/`` folder (a PartCLIPSeg with the pretrained towers)."""
    from ..data.toyworld import UNSEEN_OBJECTS

    config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and (out_dir / "config.json").is_file() and not resume:
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose a new folder")
    ckpt = None
    if resume:
        remove_stale_temporaries(out_dir)
        ckpt = latest_checkpoint(out_dir, CHECKPOINT_FILES)
        done_step = 0 if ckpt is None else int(ckpt.name.split("_")[1])
        check_resume_config(out_dir, config.to_dict(), done_step, allow_safe_changes=False,
                            defaults=type(config)().to_dict())
        if ckpt is None:  # after the checks: a refused folder gets its one line only
            print(f"--resume: no checkpoint in {out_dir} yet; starting at step 0")
        final = out_dir / "final"
        if done_step >= config.iterations and (final / "model.safetensors").is_file():
            return final  # finished: nothing to decode, train or rewrite
    device = "cuda" if torch.cuda.is_available() else "cpu"
    towers = _build(config).to(device)
    sampler = CaptionSampler(config.root, "train", config, towers.config.image_mean, towers.config.image_std)
    val_root = Path(config.root)
    val = None
    try:
        val = CaptionSampler(val_root, "val", config, towers.config.image_mean, towers.config.image_std)
    except ConfigError:
        pass
    tokenizer = get_tokenizer()
    optimizer = torch.optim.AdamW(_parameter_groups(towers, config.weight_decay), lr=config.lr,
                                  betas=tuple(config.betas), eps=1e-6)
    start = 0
    if ckpt is not None:
        from ..weights import read_safetensors

        state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
        towers.load_state_dict(read_safetensors(ckpt / "towers.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        torch.random.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        trim_metrics(out_dir / "metrics.jsonl", start)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.json", json_text(config.to_dict(), indent=1) + "\n")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, initial=start, unit="it", desc="pretrain")
    metrics_file = out_dir / "metrics.jsonl"
    towers.train()
    tic = time.perf_counter()
    max_scale = math.log(config.logit_scale_max)
    for step in range(start, config.iterations):
        lr = _lr(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels, texts = sampler.batch(step)
        ids, mask = tokenizer(texts, padding="longest")
        loss = clip_loss(towers.encode_image(pixels.to(device)), towers.encode_text(ids.to(device), mask.to(device)),
                         towers.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(towers.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            towers.logit_scale.clamp_(0, max_scale)
        done = step + 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {done}")
        if done % config.log_period == 0 or done == config.iterations:
            with open(metrics_file, "a") as handle:
                handle.write(json_text({"step": done, "loss": value, "lr": lr,
                                         "temperature": float(towers.logit_scale.detach().exp().reciprocal()),
                                         "seconds": round(time.perf_counter() - tic, 3)}) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}")
        if done % config.checkpoint_period == 0 or done == config.iterations:
            _save_checkpoint(out_dir, towers, optimizer, done, config)
        if val is not None and (done % config.eval_period == 0 or done == config.iterations):
            result = zero_shot_accuracy(towers, val, UNSEEN_OBJECTS, device)
            atomic_write_text(out_dir / "eval" / f"step_{done:07d}.json", json_text(result, indent=1) + "\n")
            with open(metrics_file, "a") as handle:
                handle.write(json_text({"step": done, "eval": "zero-shot", **result}) + "\n")
    if bar is not None:
        bar.close()
    final = out_dir / "final"
    model = part_model_from_towers(towers.cpu(), config.seed)
    save_pretrained(model.eval(), final)
    return final
