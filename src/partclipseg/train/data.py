"""Training data: seen-only relabelling, augmentation, preprocessing and a deterministic step sampler.

Every random decision is a function of ``(seed, global sample position)``: the sample order of an
epoch is a seeded permutation, and each sample's augmentation uses a generator seeded with its
position. So a run resumed at step k, or split over any number of processes, sees exactly the same
images, flips and crops as an uninterrupted single-process run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import open_dataset
from ..data.common import IGNORE, DatasetError, nearest_resize, resize_shortest_edge_shape
from ..preprocess import preprocess
from ..resample import resize_bilinear
from ..vocabulary import Vocabulary, load_benchmark_info
from .recipe import TrainConfig


@dataclass
class TrainSample:
    """One augmented training sample: pixel values [3,S,S]; part labels [H,W] (seen classes 0..T-1,
    -1 ignore); object labels [H,W] (seen object ids, -1 ignore)."""

    pixel_values: torch.Tensor
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
    """Items are ``(position, record index)`` pairs produced by :class:`StepSampler`."""

    def __init__(self, config: TrainConfig, image_size: int, mean, std) -> None:
        self.config = config
        self.image_size, self.mean, self.std = image_size, mean, std
        self.reader = open_dataset(config.dataset, config.root, "train")
        self.reader.check(full=False)  # a missing or malformed dataset folder: a DatasetError naming it
        self.records = self.reader.train_records()
        if not self.records:
            raise DatasetError(f"{config.dataset} at {config.root} has no training images")
        info = load_benchmark_info(config.dataset)
        remap = info["train_label_remap"]
        self.part_table = _remap_table(remap["object_specific"], len(info["object_specific_classes"]))
        self.object_table = _remap_table(remap["object"], len(info["object_classes"]))
        self.vocabulary = Vocabulary.from_benchmark(config.dataset, "train")
        self.object_to_model = torch.tensor(self.vocabulary.object_label_map(info["seen_object_classes"]))
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
        # (also past images with an unseen object, with skip_unseen_images)
        for offset in range(len(self.records)):
            i = (index + offset) % len(self.records)
            sample = self._load(i)
            if sample is not None and (sample[1] != IGNORE).any():
                image, part, obj = sample
                break
        else:
            raise ValueError(f"no training image of {self.config.dataset} has a seen part label"
                             + (" and no unseen object" if self.unseen_objects.size else ""))
        rng = np.random.default_rng([self.config.seed, position])
        image, part, obj = augment(image, part, obj, self.config, rng)
        pixels = preprocess(image, self.image_size, mean=self.mean, std=self.std,
                            channel_order=self.config.channel_order)[0]
        return TrainSample(pixels, torch.from_numpy(part), torch.from_numpy(obj), position, self.records[i].record_id)


def augment(image: np.ndarray, part: np.ndarray, obj: np.ndarray, config: TrainConfig, rng: np.random.Generator):
    """ResizeShortestEdge (PIL bilinear image, as Pillow 9.5; nearest labels) and/or horizontal flip, per the recipe."""
    if config.augmentation == "resize_flip":
        h, w = image.shape[:2]
        size = resize_shortest_edge_shape(h, w, config.min_size, config.max_size)
        if size != (h, w):
            image = resize_bilinear(image, size[0], size[1])  # detectron2's PIL bilinear (Pillow 9.5 bytes)
            part, obj = nearest_resize(part, size), nearest_resize(obj, size)
    if config.augmentation in ("resize_flip", "flip") and rng.random() < config.flip_prob:
        image, part, obj = image[:, ::-1], part[:, ::-1], obj[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(part), np.ascontiguousarray(obj)


def collate(samples: list[TrainSample]) -> dict:
    return {"pixel_values": torch.stack([s.pixel_values for s in samples]),
            "part_labels": [s.part_labels for s in samples], "object_labels": [s.object_labels for s in samples],
            "positions": [s.position for s in samples], "record_ids": [s.record_id for s in samples]}


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
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch, 7]).permutation(self.n)}
        return self._perms[epoch]

    def batch_for(self, step: int) -> list[tuple[int, int]]:
        local = self.batch // self.world
        out = []
        for j in range(self.rank * local, (self.rank + 1) * local):
            position = step * self.batch + j
            out.append((position, int(self._perm(position // self.n)[position % self.n])))
        return out

    def __iter__(self):
        for step in range(self.start, self.iterations):
            yield self.batch_for(step)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)
