"""Training data: seen-only relabelling, augmentation, preprocessing and a deterministic step sampler.

Every random decision is a function of ``(seed, global sample position)``: the sample order of an
epoch is a seeded permutation, and each sample's augmentation uses a generator seeded with its
position. So a run resumed at step k, or split over any number of processes, sees exactly the same
images, flips and crops as an uninterrupted single-process run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import open_dataset
from ..data.common import IGNORE, DatasetError, nearest_resize, resize_shortest_edge_shape
from ..errors import ConfigError
from ..losses import resize_labels
from ..resample import resize_bilinear
from ..vocabulary import Vocabulary, load_benchmark_info
from .recipe import TrainConfig


@dataclass
class TrainSample:
    """One augmented training sample: ``pixel_values`` = the model's per-sample input (its
    ``train_preprocessor().sample``: [3,S,S] pixels for the CLIPSeg family); part labels [H,W] (seen
    classes 0..T-1, -1 ignore; all -1 with ``supervision="objects"``; with ``"parts+objects"`` the test
    vocabulary's indices of the seen objects' classes); object labels [H,W] (seen object ids, or with
    ``supervision="objects"`` / ``"parts+objects"`` the dataset's object ids of every object; -1 ignore)."""

    pixel_values: Any
    part_labels: torch.Tensor
    object_labels: torch.Tensor
    position: int
    record_id: str


def _remap_table(mapping: dict[str, int], size: int) -> np.ndarray:
    table = np.full(size + 1, IGNORE, dtype=np.int64)  # last entry: IGNORE -> IGNORE
    for src, dst in mapping.items():
        table[int(src)] = int(dst)
    return table


class TrainDataset(torch.utils.data.Dataset):
    """Items are ``(position, record index)`` pairs produced by :class:`StepSampler`; ``preprocessor``
    (``model.train_preprocessor(config.channel_order)``) turns augmented images into model inputs."""

    def __init__(self, config: TrainConfig, preprocessor: Any) -> None:
        self.config = config
        self.preprocessor = preprocessor
        self.reader = open_dataset(config.dataset, config.root, "train")
        self.reader.check(full=False)  # a missing or malformed dataset folder: a DatasetError naming it
        self.records = self.reader.train_records()
        if not self.records:
            raise DatasetError(f"{config.dataset} at {config.root} has no training images")
        info = load_benchmark_info(config.dataset)
        self.objects_only = config.supervision == "objects"
        #: [T] bool: the vocabulary classes the object-specific terms train (None: all of them)
        self.trained_text_classes: torch.Tensor | None = None
        if config.supervision == "parts+objects":  # test vocabulary; seen parts, every object's object label
            self.vocabulary = Vocabulary.from_benchmark(config.dataset, "test")
            classes = info["object_specific_classes"]  # the seen classes: the training remap's keys
            seen = {src: self.vocabulary.index(classes[int(src)])
                    for src in info["train_label_remap"]["object_specific"]}
            self.part_table = _remap_table(seen, len(classes))
            n_objects = len(info["object_classes"])
            self.object_table = _remap_table({str(i): i for i in range(n_objects)}, n_objects)
            self.object_to_model = torch.tensor(self.vocabulary.object_label_map(info["object_classes"]))
            trained = torch.zeros(len(self.vocabulary), dtype=torch.bool)
            trained[sorted(seen.values())] = True
            self.trained_text_classes = trained
        elif self.objects_only:  # every object keeps its label (full object ids); no part label is used
            n_parts, n_objects = len(info["object_specific_classes"]), len(info["object_classes"])
            self.part_table = _remap_table({}, n_parts)
            self.object_table = _remap_table({str(i): i for i in range(n_objects)}, n_objects)
            self.vocabulary = Vocabulary.from_benchmark(config.dataset, "test")
            self.object_to_model = torch.tensor(self.vocabulary.object_label_map(info["object_classes"]))
        else:
            remap = info["train_label_remap"]
            self.part_table = _remap_table(remap["object_specific"], len(info["object_specific_classes"]))
            self.object_table = _remap_table(remap["object"], len(info["object_classes"]))
            self.vocabulary = Vocabulary.from_benchmark(config.dataset, "train")
            self.object_to_model = torch.tensor(self.vocabulary.object_label_map(info["seen_object_classes"]))
        #: copy_paste_prob: the last two loaded records (the donor of position p is the record at p ^ 1,
        #: which the same process loads next or just loaded: no extra decoding)
        self._recent: dict[int, tuple | None] = {}
        #: cache_resized: record index -> (image [S,S,3] uint8, part / object labels [S,S] int16) or None
        self._resized: dict[int, tuple | None] = {}
        self.cache_size = None
        if config.cache_resized:
            self.cache_size = getattr(preprocessor, "size", None)
            if not isinstance(self.cache_size, int):
                raise ConfigError(f"cache_resized needs a model whose training input has one fixed size; "
                                  f"{type(preprocessor).__name__} has none: set cache_resized=false")
        unseen = [info["object_classes"].index(name) for name in info["unseen_object_classes"]]
        self.unseen_objects = np.asarray(unseen if config.skip_unseen_images else [], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The remapped sample, or None when it shows an unseen object and the recipe skips such images."""
        image, part, obj = self.reader.load_train_sample(self.records[index])
        if self.unseen_objects.size and np.isin(obj, self.unseen_objects).any():
            return None
        part = self.part_table[np.where(part == IGNORE, -1, part)]
        obj = self.object_table[np.where(obj == IGNORE, -1, obj)]
        return image, part, obj

    def __getitem__(self, item: tuple[int, int]) -> TrainSample:
        position, index = item
        # the official mapper draws another random image when no seen part is labelled; we take the next
        # (also past images with an unseen object, with skip_unseen_images). supervision=objects or
        # parts+objects: the next image with an object label.
        needed = 1 if self.config.supervision == "parts" else 2
        for offset in range(len(self.records)):
            i = (index + offset) % len(self.records)
            sample = (self._load_recent(i) if self.config.copy_paste_prob
                      else self._load_resized(i) if self.cache_size else self._load(i))
            if sample is not None and (sample[needed] != IGNORE).any():
                image, part, obj = sample
                break
        else:
            what = "a seen part label" if needed == 1 else "an object label"
            raise ValueError(f"no training image of {self.config.dataset} has {what}"
                             + (" and no unseen object" if self.unseen_objects.size else ""))
        if self.config.copy_paste_prob:
            pasted = self._copy_paste(image, part, obj, position, i)
            # the cached record's arrays are the donor of the partner position: never hand them out
            image, part, obj = (a.copy() if a is b else a for a, b in zip(pasted, (image, part, obj)))
        rng = np.random.default_rng([self.config.seed, position])
        image, part, obj = augment(image, part, obj, self.config, rng)
        return TrainSample(self.preprocessor.sample(image), torch.from_numpy(part), torch.from_numpy(obj), position,
                           self.records[i].record_id)

    def _load_resized(self, index: int):
        """``_load`` at the processing size, decoded once and kept (``cache_resized``): the image resized
        as the preprocessor resizes it (Pillow 9.5 bilinear), the labels as the loss resizes them
        (``losses.resize_labels``), both before the flip; returned as new arrays."""
        if index not in self._resized:
            sample = self._load(index)
            if sample is not None:
                size = self.cache_size
                image, part, obj = sample
                part, obj = (resize_labels(torch.from_numpy(x), (size, size)).numpy().astype(np.int16)
                             for x in (part, obj))
                sample = (resize_bilinear(image, size, size), part, obj)
            self._resized[index] = sample
        sample = self._resized[index]
        if sample is None:
            return None
        image, part, obj = sample
        return image.copy(), part.astype(np.int64), obj.astype(np.int64)

    def _load_recent(self, index: int):
        """``_load`` through a cache of the last two records (their arrays are never written to)."""
        if index not in self._recent:
            if len(self._recent) >= 2:
                del self._recent[next(iter(self._recent))]
            self._recent[index] = self._load(index)
        return self._recent[index]

    def _copy_paste(self, image: np.ndarray, part: np.ndarray, obj: np.ndarray, position: int, index: int):
        """``copy_paste_prob``: one object of a donor pasted onto the sample (see ``paste_object``). The
        donor is the record at the partner position ``position ^ 1`` of the same epoch order (the other
        image of the pair (2k, 2k+1), which one process loads back to back when its share of the batch is
        even), or the next record when that is the sample itself; the draws come from a generator of
        their own, seeded by ``(seed, position)``: a function of the position, as every other draw."""
        rng = np.random.default_rng([self.config.seed, position, 11])
        if rng.random() >= self.config.copy_paste_prob:
            return image, part, obj
        donor_index = record_at(self.config.seed, len(self.records), position ^ 1)
        if donor_index == index:
            donor_index = (index + 1) % len(self.records)
            if donor_index == index:  # a one-image dataset: no other image to take an object from
                return image, part, obj
        donor = self._load_recent(donor_index)
        if donor is None:
            return image, part, obj
        pasted = paste_object(image, part, obj, *donor, rng)
        if self.config.supervision == "parts" and not (pasted[1] != IGNORE).any():
            return image, part, obj  # the paste covered every seen part label: keep the sample as it was
        return pasted

    def collate(self, samples: list[TrainSample]) -> dict:
        """A batch: ``pixel_values`` = the preprocessor's batch input, label maps as lists (sizes may differ)."""
        return {"pixel_values": self.preprocessor.collate([s.pixel_values for s in samples]),
                "part_labels": [s.part_labels for s in samples], "object_labels": [s.object_labels for s in samples],
                "positions": [s.position for s in samples], "record_ids": [s.record_id for s in samples]}


def paste_object(image: np.ndarray, part: np.ndarray, obj: np.ndarray, donor_image: np.ndarray,
                 donor_part: np.ndarray, donor_obj: np.ndarray, rng: np.random.Generator,
                 width_range: tuple[float, float] = (0.3, 0.6), max_height: float = 0.9):
    """Simple copy-paste (Ghiasi et al. 2021): one labelled object of the donor, in front of the sample.

    Shapes: ``image`` [H,W,3] uint8, ``part`` / ``obj`` [H,W] int64 (``IGNORE`` = -1); the donor's the same
    at its own size. One object label present in ``donor_obj`` is drawn (labels are per class: every
    instance of that class in the donor comes along); the box of its pixels, whatever its size, is scaled
    (image bilinear, labels nearest) to a width drawn from ``width_range`` x W (at most ``max_height`` x H
    tall) and placed at a uniform position; where the scaled mask holds that object, the sample's image,
    part and object labels become the donor's. Returns new arrays; a donor without an object label, or
    one that would shrink below 4 px, leaves the sample as it was."""
    labels = np.unique(donor_obj[donor_obj != IGNORE])
    if labels.size == 0:
        return image, part, obj
    chosen = labels[int(rng.integers(labels.size))]
    ys, xs = np.nonzero(donor_obj == chosen)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = image.shape[:2]
    scale = rng.uniform(*width_range) * w / (x1 - x0)
    scale = min(scale, max_height * h / (y1 - y0))
    nh, nw = int(round((y1 - y0) * scale)), int(round((x1 - x0) * scale))
    if nh < 4 or nw < 4:
        return image, part, obj
    crop_image = resize_bilinear(np.ascontiguousarray(donor_image[y0:y1, x0:x1]), nh, nw)
    crop_part = nearest_resize(np.ascontiguousarray(donor_part[y0:y1, x0:x1]), (nh, nw))
    crop_obj = nearest_resize(np.ascontiguousarray(donor_obj[y0:y1, x0:x1]), (nh, nw))
    top, left = int(rng.integers(h - nh + 1)), int(rng.integers(w - nw + 1))
    mask = crop_obj == chosen
    image, part, obj = image.copy(), part.copy(), obj.copy()
    window = (slice(top, top + nh), slice(left, left + nw))
    image[window][mask] = crop_image[mask]
    part[window][mask] = crop_part[mask]
    obj[window][mask] = chosen
    return image, part, obj


def augment(image: np.ndarray, part: np.ndarray, obj: np.ndarray, config: TrainConfig, rng: np.random.Generator):
    """The recipe's augmentation, in detectron2's order: ResizeShortestEdge (``"resize_flip"``: PIL bilinear
    image, as Pillow 9.5; nearest labels), random crop (``crop_size``), SSD colour jitter (``color_aug``),
    horizontal flip (``"resize_flip"``, ``"flip"``), then ``pad_to`` (the official mappers' fixed-size pad)."""
    if config.augmentation == "resize_flip":
        h, w = image.shape[:2]
        size = resize_shortest_edge_shape(h, w, config.min_size, config.max_size)
        if size != (h, w):
            image = resize_bilinear(image, size[0], size[1])  # detectron2's PIL bilinear (Pillow 9.5 bytes)
            part, obj = nearest_resize(part, size), nearest_resize(obj, size)
    if config.crop_size:
        image, part, obj = random_crop(image, part, obj, config.crop_size, rng)
    if config.color_aug:
        image = color_aug_ssd(image, rng)
    if config.augmentation in ("resize_flip", "flip") and rng.random() < config.flip_prob:
        image, part, obj = image[:, ::-1], part[:, ::-1], obj[:, ::-1]
    if config.pad_to:
        image, part, obj = pad_or_crop_to(image, config.pad_to), pad_or_crop_to(part, config.pad_to, IGNORE), \
            pad_or_crop_to(obj, config.pad_to, IGNORE)
    return np.ascontiguousarray(image), np.ascontiguousarray(part), np.ascontiguousarray(obj)


def random_crop(image: np.ndarray, part: np.ndarray, obj: np.ndarray, size: int, rng: np.random.Generator):
    """detectron2 ``RandomCrop("absolute", (size, size))`` (``SINGLE_CATEGORY_MAX_AREA: 1.0`` = no area
    constraint): a ``min(size, H) x min(size, W)`` window at a uniform offset."""
    h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    return image[window], part[window], obj[window]


def pad_or_crop_to(array: np.ndarray, size: int, value: int = 128) -> np.ndarray:
    """The official mappers' ``F.pad(x, [0, size - W, 0, size - H], value)``: pad at the bottom/right
    (image 128, labels ignore) or, for a side longer than ``size``, keep its first ``size`` pixels."""
    array = array[:size, :size]
    h, w = array.shape[:2]
    if (h, w) == (size, size):
        return array
    out = np.full((size, size, *array.shape[2:]), value, dtype=array.dtype)
    out[:h, :w] = array
    return out


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator, brightness: float = 32, contrast=(0.5, 1.5),
                  saturation=(0.5, 1.5), hue: int = 18) -> np.ndarray:
    """detectron2's ``ColorAugSSDTransform`` (SSD photometric distortion) on an HWC uint8 RGB image: brightness
    +-32, then contrast x[0.5, 1.5] before or after saturation x[0.5, 1.5] and hue +-18 (OpenCV's 0..179 hue
    units), each applied with probability 1/2. The HSV round trip is our own float conversion (not OpenCV's
    uint8 one: values may differ by a few grey levels; OpenCV is not a dependency)."""
    def convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def do_contrast(x):
        return convert(x, alpha=rng.uniform(*contrast)) if rng.integers(2) else x

    def do_saturation(x):
        if not rng.integers(2):
            return x
        hsv = _rgb_to_hsv(x)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(*saturation))
        return _hsv_to_rgb(hsv)

    def do_hue(x):
        if not rng.integers(2):
            return x
        hsv = _rgb_to_hsv(x)
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(-hue, hue + 1))) % 180
        return _hsv_to_rgb(hsv)

    if rng.integers(2):
        image = convert(image, beta=rng.uniform(-brightness, brightness))
    if rng.integers(2):
        return do_hue(do_saturation(do_contrast(image)))
    return do_contrast(do_hue(do_saturation(image)))


def _rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV in OpenCV's ranges (H 0..179, S and V 0..255)."""
    x = image.astype(np.float32) / 255.0
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, delta / np.maximum(v, 1e-12), 0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(delta, 1e-12)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(delta > 0, (h * 60) % 360, 0)
    return np.stack([np.round(h / 2) % 180, np.round(s * 255), np.round(v * 255)], -1).astype(np.uint8)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h = hsv[..., 0].astype(np.float32) * 2 / 60
    s, v = hsv[..., 1].astype(np.float32) / 255, hsv[..., 2].astype(np.float32) / 255
    c = v * s
    x = c * (1 - np.abs(h % 2 - 1))
    m = v - c
    sector = np.floor(h).astype(int) % 6
    zero = np.zeros_like(c)
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    rgb = np.zeros(hsv.shape, dtype=np.float32)
    for k, (r, g, b) in enumerate(table):
        here = sector == k
        rgb[here] = np.stack([r, g, b], -1)[here]
    return np.clip(np.round((rgb + m[..., None]) * 255), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The record order of ``epoch``: a permutation of ``n`` seeded by ``(seed, epoch)`` (read-only)."""
    order = np.random.default_rng([seed, epoch, 7]).permutation(n)
    order.flags.writeable = False
    return order


def record_at(seed: int, n: int, position: int) -> int:
    """The record index at global sample ``position``: epoch ``position // n``'s order, at ``position % n``."""
    seed, n, position = int(seed), int(n), int(position)
    return int(_epoch_order(seed, position // n, n)[position % n])


class StepSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start..iterations-1``, this rank's share of the global batch as
    ``(position, record index)`` pairs. Position ``p = step * batch + j``; epoch ``p // n`` uses a
    permutation seeded by ``(seed, epoch)``; rank ``r`` of ``W`` takes ``j`` in
    ``[r * batch / W, (r + 1) * batch / W)``."""

    def __init__(self, num_records: int, batch_size: int, seed: int, start: int, iterations: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch, self.seed = num_records, batch_size, seed
        self.start, self.iterations, self.rank, self.world = start, iterations, rank, world_size

    def batch_for(self, step: int) -> list[tuple[int, int]]:
        local = self.batch // self.world
        out = []
        for j in range(self.rank * local, (self.rank + 1) * local):
            position = step * self.batch + j
            out.append((position, record_at(self.seed, self.n, position)))
        return out

    def __iter__(self):
        for step in range(self.start, self.iterations):
            yield self.batch_for(step)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)
