"""Benchmark evaluation loop: samples -> Predictor -> per-sample confusion matrices -> metrics.

* **Resumable**: every finished sample appends one line (its sparse confusion matrix, or a skip) to
  ``<out>.work/rank<R>.jsonl``; a restarted run reads all those files and continues with the samples
  not yet done. A torn last line (a kill during the write) is ignored and that sample redone.
* **Shardable**: under ``torchrun`` each rank evaluates samples ``rank::world_size``; rank 0 sums the
  matrices of all ranks after a barrier. Integer sums: the result equals the single-process one.
* **Deterministic**: samples come in the reader's sorted order; samples without any labelled part
  pixel are skipped and counted (the official code substitutes random other samples).

Cross-dataset (``train_dataset`` differs from ``dataset``): the model is evaluated with the *test*
dataset's full vocabulary and ground truth. Seen/unseen are the test dataset's own splits (as the
official evaluator reads them from the test registration); since the source model saw none of the
test dataset's classes as such, the result also reports ``mIoU_all`` (the mean IoU over every class
with ground truth), and says so under ``"cross_dataset"``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PartCLIPSegError
from .eval_work import check_results_file, model_fingerprint, prepare_work_dir, read_work, work_key
from .io import atomic_write_text, check_writable_file, json_text

PROTOCOLS = ("pred-all", "oracle-obj")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank information from the torchrun environment variables."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(info: DistInfo, device: str) -> None:
    import torch.distributed as dist

    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def _drop_torn_tail(path: Path) -> None:
    """Cut a partly written last line (a kill during the write) so that appends start on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _append(handle, record: dict) -> None:
    handle.write(json_text(record, separators=(",", ":")) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def evaluate(dataset: str, root: str | Path, model: Any, protocol: str, out: str | Path, *,
             train_dataset: str | None = None, limit: int | None = None, gt_resize_quirk: bool = True,
             device: str | None = None, dtype: Any = None, progress: bool = True,
             print_table: bool = True, overwrite: bool = False) -> dict | None:
    """Evaluate ``model`` (folder / hub id / .pth / model / Predictor) on a benchmark; write ``out`` (JSON).

    Work files (``<out>.work/``) and ``out`` belong to one evaluation (``eval_work.work_key``); those of
    another are refused unless ``overwrite``. Returns the results dict on rank 0 (None on other ranks).
    """
    import torch

    from .data import open_dataset
    from .evaluation import ConfusionAccumulator, compute_metrics, format_table, from_sparse, sample_confusion, to_sparse
    from .model import CLIPSegCore
    from .predictor import Predictor
    from .preprocess import load_image
    from .vocabulary import Vocabulary, load_benchmark_info

    if protocol not in PROTOCOLS:
        raise PartCLIPSegError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PartCLIPSegError(f"limit must be a positive number of samples, got {limit!r}")
    info = dist_info()
    device = device or (f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    work_dir = out.with_name(out.name + ".work")
    check_writable_file(out, "--out")  # before any work: a run must not fail only when it writes its result
    init_distributed(info, device)

    reader = open_dataset(dataset, root, "val")
    reader.check(full=False)
    refs = reader.eval_samples(gt_resize_quirk=gt_resize_quirk)
    if limit is not None:
        refs = refs[:limit]
    vocab = Vocabulary.from_benchmark(dataset, "test")
    meta = load_benchmark_info(dataset)
    num_classes = len(vocab)

    if isinstance(model, Predictor):
        predictor = model
    elif isinstance(model, CLIPSegCore):
        predictor = Predictor(model, device=device, dtype=dtype)
    else:
        predictor = Predictor.from_pretrained(model, device=device, dtype=dtype)

    key = work_key(model_source=model, fingerprint=model_fingerprint(predictor.model), protocol=protocol,
                   dataset=dataset, root=root, gt_resize_quirk=gt_resize_quirk, limit=limit, dtype=dtype)
    if info.rank == 0:
        check_results_file(out, key, overwrite)
        prepare_work_dir(work_dir, key, overwrite)
    barrier(info)
    done = read_work(work_dir, num_classes)
    mine = [r for i, r in enumerate(refs) if i % info.world_size == info.rank and r.sample_id not in done]
    running = ConfusionAccumulator(num_classes)
    for record in done.values():
        if "p" in record:
            running.add(from_sparse(record, num_classes))
    bar = None
    if progress and info.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(refs), initial=len(done), unit="sample", desc=f"{dataset} {protocol}")
    current_image = None
    work_file = work_dir / f"rank{info.rank}.jsonl"
    _drop_torn_tail(work_file)
    with open(work_file, "a") as handle:
        for k, ref in enumerate(mine):
            sample = reader.load_eval_sample(ref)
            if sample is None:
                _append(handle, {"sample_id": ref.sample_id, "skipped": "no labelled part pixel"})
            else:
                if sample.image_path != current_image:
                    # raw pixel frame (no EXIF rotation), like the labels and the official inference
                    predictor.set_image(load_image(sample.image_path, exif_transpose=False))
                    current_image = sample.image_path
                kwargs = {}
                if protocol == "oracle-obj":
                    names = [n for n in sample.object_names if n in vocab.objects]
                    if not names:
                        raise PartCLIPSegError(f"sample {sample.sample_id}: none of its objects {sample.object_names} "
                                               f"has part classes")
                    kwargs = {"protocol": "oracle-obj", "object_name": names}
                result = predictor.predict(vocab, **kwargs)
                matrix = sample_confusion(result.part_labels, sample.part_labels, num_classes)
                running.add(matrix)
                _append(handle, {"sample_id": ref.sample_id, **to_sparse(matrix)})
            if bar is not None:
                bar.update(info.world_size if info.distributed else 1)
                if k % 20 == 0 and running.count:
                    m = compute_metrics(running.matrix, meta["evaluation_set"]["base"], vocab.object_specific_classes,
                                        protocol)
                    bar.set_postfix(h_iou=_fmt(m.get("h-IoU")), seen=_fmt(m.get("mIoU-base")))
    if bar is not None:
        bar.close()
    barrier(info)
    if info.rank != 0:
        return None

    records = read_work(work_dir, num_classes)
    wanted = {r.sample_id for r in refs}
    missing = wanted - set(records)
    if missing:
        raise PartCLIPSegError(f"{len(missing)} sample(s) have no result in {work_dir} (e.g. {sorted(missing)[:3]})")
    total = ConfusionAccumulator(num_classes)
    skipped = 0
    for sample_id in sorted(wanted):
        record = records[sample_id]
        if "p" in record:
            total.add(from_sparse(record, num_classes))
        else:
            skipped += 1
    metrics = compute_metrics(total.matrix, meta["evaluation_set"]["base"], vocab.object_specific_classes, protocol)
    results = {
        "dataset": dataset, "protocol": protocol, "model": str(model) if isinstance(model, (str, Path)) else None,
        "num_samples": len(refs), "evaluated_samples": total.count, "skipped_samples_without_part_gt": skipped,
        "gt_resize_quirk": gt_resize_quirk, "limit": limit, "metrics": metrics, "work_key": key,
    }
    if train_dataset and train_dataset != dataset:
        gt_classes = [c for c in metrics["per_class"] if c["gt_pixels"] > 0]
        results["cross_dataset"] = {
            "train_dataset": train_dataset, "test_dataset": dataset,
            "vocabulary": f"full {dataset} test vocabulary ({num_classes} classes)",
            "mIoU_all": float(np.mean([c["iou"] for c in gt_classes])) if gt_classes else None,  # x100 already
            "note": "seen/unseen are the test dataset's own splits; mIoU_all averages every class with ground truth",
        }
    atomic_write_text(out, json_text(results, indent=1) + "\n")
    if print_table:
        print(format_table({protocol: metrics}))
    return results


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"
