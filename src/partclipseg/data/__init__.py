"""Benchmark datasets: readers for the published layouts, evaluation samples, synthetic generators.

* :data:`DATASETS` maps a benchmark name to its reader class; :func:`open_dataset` builds one.
* Readers (``pascal_part``, ``ade20k_part``, ``partimagenet``) share the API of
  :class:`~partclipseg.data.base.DatasetReader`: ``check``, ``eval_samples`` / ``load_eval_sample``,
  ``train_records`` / ``load_train_sample``.
* :mod:`~partclipseg.data.partimagenet_preprocess` builds the PartImageNet layout from the original
  release (non-destructively); :mod:`~partclipseg.data.synthetic` writes tiny datasets in each layout.
"""
from __future__ import annotations

from pathlib import Path

from .ade20k_part import ADE20KPart234
from .base import DatasetReader, SampleRef, TrainRecord
from .common import IGNORE, DatasetError, EvalSample
from .partimagenet import PartImageNet
from .pascal_part import PascalPart116
from .toy_reader import ToyWorld

__all__ = [
    "DATASETS",
    "IGNORE",
    "ADE20KPart234",
    "DatasetError",
    "DatasetReader",
    "EvalSample",
    "PartImageNet",
    "PascalPart116",
    "SampleRef",
    "ToyWorld",
    "TrainRecord",
    "open_dataset",
]

#: benchmark name -> reader class
DATASETS: dict[str, type[DatasetReader]] = {
    "pascal_part_116": PascalPart116,
    "ade20k_part_234": ADE20KPart234,
    "partimagenet": PartImageNet,
    "toy_world": ToyWorld,
}


def open_dataset(name: str, root: str | Path, split: str) -> DatasetReader:
    """The reader of benchmark ``name`` for the dataset folder ``root`` (or its parent) and ``split``."""
    key = str(name).strip().lower().replace("-", "_")
    cls = DATASETS.get(key)
    if cls is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return cls(root, split)
