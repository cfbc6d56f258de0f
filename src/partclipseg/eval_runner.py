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

from .dist import DistInfo, barrier, default_device, dist_info, init_distributed
from .errors import PartCLIPSegError
from .eval_work import check_results_file, dataset_fingerprint, model_fingerprint, prepare_work_dir, read_work, work_key
from .io import atomic_write_text, check_writable_file, json_text
from .evaluation import PROTOCOLS


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


@dataclass
class EvalJob:
    """Everything one evaluation run needs, set up once (``prepare``)."""

    dataset: str
    protocol: str
    reader: Any  # a partclipseg.data DatasetReader
    refs: list  # the samples to evaluate, in the reader's sorted order
    vocab: Any  # the test dataset's full Vocabulary
    base_classes: list  # the seen classes (evaluation_set.base)
    predictor: Any
    work_dir: Path
    info: DistInfo
    key: dict  # eval_work.work_key: everything that changes the numbers

    @property
    def num_classes(self) -> int:
        return len(self.vocab)


def prepare(dataset: str, root: str | Path, model: Any, protocol: str, out: Path, *, limit: int | None,
            gt_resize_quirk: bool, device: str | None, dtype: Any, overwrite: bool = False) -> EvalJob:
    """Check the arguments and the output place, join the process group, open the dataset and the model,
    then the work folder (``eval_work``: work and results of another evaluation are refused unless
    ``overwrite``). The work folder is only created once all of that succeeded."""
    from .data import open_dataset
    from .predictor import as_predictor
    from .vocabulary import Vocabulary, load_benchmark_info

    if protocol not in PROTOCOLS:
        raise PartCLIPSegError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PartCLIPSegError(f"limit must be a positive number of samples, got {limit!r}")
    check_writable_file(out, "--out")  # before any work: a run must not fail only when it writes its result
    info = dist_info()
    device = device or default_device(info.local_rank)
    init_distributed(info, device)
    work_dir = out.with_name(out.name + ".work")
    reader = open_dataset(dataset, root, "val")
    reader.check(full=False)
    refs = reader.eval_samples(gt_resize_quirk=gt_resize_quirk)
    if limit is not None:
        refs = refs[:limit]
    predictor = as_predictor(model, device, dtype)
    key = work_key(model_source=model, fingerprint=model_fingerprint(predictor.model), protocol=protocol,
                   dataset=dataset, root=root, gt_resize_quirk=gt_resize_quirk, limit=limit, dtype=dtype,
                   dataset_files=dataset_fingerprint(refs, reader.root))
    if info.is_main:
        check_results_file(out, key, overwrite)
        prepare_work_dir(work_dir, key, overwrite)
    barrier(info)
    return EvalJob(dataset, protocol, reader, refs, Vocabulary.from_benchmark(dataset, "test"),
                   load_benchmark_info(dataset)["evaluation_set"]["base"], predictor, work_dir, info, key)


def sample_prompt(job: EvalJob, sample) -> dict:
    """``predict`` keywords of a sample: Oracle-Obj names the sample's ground-truth objects."""
    if job.protocol != "oracle-obj":
        return {}
    names = [n for n in sample.object_names if n in job.vocab.objects]
    if not names:
        raise PartCLIPSegError(f"sample {sample.sample_id}: none of its objects {sample.object_names} has part classes")
    return {"protocol": "oracle-obj", "object_name": names}


def run_shard(job: EvalJob, progress: bool) -> None:
    """Evaluate this rank's samples not yet done; one work-file line per finished sample."""
    from .evaluation import ConfusionAccumulator, compute_metrics, from_sparse, sample_confusion, to_sparse
    from .preprocess import load_image

    info, k = job.info, job.num_classes
    done = read_work(job.work_dir, k)
    mine = [r for i, r in enumerate(job.refs) if i % info.world_size == info.rank and r.sample_id not in done]
    running = ConfusionAccumulator(k)
    for record in done.values():
        if "p" in record:
            running.add(from_sparse(record, k))
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(job.refs), initial=len(done), unit="sample", desc=f"{job.dataset} {job.protocol}")
    current_image = None
    work_file = job.work_dir / f"rank{info.rank}.jsonl"
    _drop_torn_tail(work_file)
    with open(work_file, "a") as handle:
        for i, ref in enumerate(mine):
            sample = job.reader.load_eval_sample(ref)
            if sample is None:
                _append(handle, {"sample_id": ref.sample_id, "skipped": "no labelled part pixel"})
            else:
                if sample.image_path != current_image:
                    # raw pixel frame (no EXIF rotation), like the labels and the official inference
                    job.predictor.set_image(load_image(sample.image_path, exif_transpose=False))
                    current_image = sample.image_path
                result = job.predictor.predict(job.vocab, **sample_prompt(job, sample))
                matrix = sample_confusion(result.part_labels, sample.part_labels, k)
                running.add(matrix)
                _append(handle, {"sample_id": ref.sample_id, **to_sparse(matrix)})
            if bar is not None:
                bar.update(info.world_size if info.distributed else 1)
                if i % 20 == 0 and running.count:
                    m = compute_metrics(running.matrix, job.base_classes, job.vocab.object_specific_classes,
                                        job.protocol)
                    bar.set_postfix(h_iou=_fmt(m.get("h-IoU")), seen=_fmt(m.get("mIoU-base")))
    if bar is not None:
        bar.close()


def collect(job: EvalJob) -> tuple[dict, int, int]:
    """Sum every rank's matrices (rank 0, after the barrier): (metrics, evaluated, skipped)."""
    from .evaluation import ConfusionAccumulator, compute_metrics, from_sparse

    records = read_work(job.work_dir, job.num_classes)
    wanted = {r.sample_id for r in job.refs}
    missing = wanted - set(records)
    if missing:
        raise PartCLIPSegError(f"{len(missing)} sample(s) have no result in {job.work_dir} "
                               f"(e.g. {sorted(missing)[:3]})")
    total = ConfusionAccumulator(job.num_classes)
    skipped = 0
    for sample_id in sorted(wanted):
        record = records[sample_id]
        if "p" in record:
            total.add(from_sparse(record, job.num_classes))
        else:
            skipped += 1
    metrics = compute_metrics(total.matrix, job.base_classes, job.vocab.object_specific_classes, job.protocol)
    return metrics, total.count, skipped


def report(job: EvalJob, metrics: dict, evaluated: int, skipped: int, *, model: Any, limit: int | None,
           gt_resize_quirk: bool, train_dataset: str | None) -> dict:
    """The results dict (with the cross-dataset summary when ``train_dataset`` differs)."""
    results = {
        "dataset": job.dataset, "protocol": job.protocol,
        "model": str(model) if isinstance(model, (str, Path)) else None,
        "num_samples": len(job.refs), "evaluated_samples": evaluated, "skipped_samples_without_part_gt": skipped,
        "gt_resize_quirk": gt_resize_quirk, "limit": limit, "metrics": metrics, "work_key": job.key,
    }
    if train_dataset and train_dataset != job.dataset:
        gt_classes = [c for c in metrics["per_class"] if c["gt_pixels"] > 0]
        results["cross_dataset"] = {
            "train_dataset": train_dataset, "test_dataset": job.dataset,
            "vocabulary": f"full {job.dataset} test vocabulary ({job.num_classes} classes)",
            "mIoU_all": float(np.mean([c["iou"] for c in gt_classes])) if gt_classes else None,  # x100 already
            "note": "seen/unseen are the test dataset's own splits; mIoU_all averages every class with ground truth",
        }
    return results


def evaluate(dataset: str, root: str | Path, model: Any, protocol: str, out: str | Path, *,
             train_dataset: str | None = None, limit: int | None = None, gt_resize_quirk: bool = True,
             device: str | None = None, dtype: Any = None, progress: bool = True,
             print_table: bool = True, overwrite: bool = False) -> dict | None:
    """Evaluate ``model`` (folder / hub id / .pth / model / Predictor) on a benchmark; write ``out`` (JSON).

    Work files (``<out>.work/``) and ``out`` belong to one evaluation (``eval_work.work_key``); those of
    another are refused unless ``overwrite``.

    Set-up (``prepare``), this rank's samples (``run_shard``), then on rank 0 the sum over ranks
    (``collect``) and the results (``report``). Returns the results dict on rank 0 (None on other ranks).
    """
    from .evaluation import format_table

    out = Path(out)
    job = prepare(dataset, root, model, protocol, out, limit=limit, gt_resize_quirk=gt_resize_quirk,
                  device=device, dtype=dtype, overwrite=overwrite)
    run_shard(job, progress)
    barrier(job.info)
    if not job.info.is_main:
        return None
    metrics, evaluated, skipped = collect(job)
    results = report(job, metrics, evaluated, skipped, model=model, limit=limit, gt_resize_quirk=gt_resize_quirk,
                     train_dataset=train_dataset)
    atomic_write_text(out, json_text(results, indent=1) + "\n")
    if print_table:
        print(format_table({protocol: metrics}))
    return results


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"
