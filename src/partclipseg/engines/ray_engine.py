"""The Ray engine: ``partclipseg segment ... --engine ray`` on Ray Data (``pip install 'partclipseg[ray]'``).

The canonical Ray Data batch-inference pattern: a dataset of the job's items (image paths or URIs and
their output names), ``map_batches`` with a callable class (``SegmentWorker``) that loads the model
once per actor, an actor pool of ``workers`` actors (``concurrency``), ``num_gpus`` per actor. Each
actor writes its items' outputs itself (atomically, to a local folder every node sees or to a
``pyarrow`` filesystem URI) and returns one status row per item; the driver collects them and writes
the report.

Retries: an actor that dies (a crash, a lost node) is restarted by Ray and its batch is run again,
up to ``MAX_BATCH_RETRIES`` times; items whose outputs the dead actor had completed are not written
again. An image that cannot be read or segmented is a ``failed`` status, not a failed job.

Without ``address`` a local Ray starts with this machine's CPUs (and GPUs); with ``address``
(``auto`` or ``ray://host:10001``) the job runs on that cluster.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np

from ..errors import PartCLIPSegError
from ..segment_job import (Item, ItemProcessor, Log, Report, SegmentOptions, _stderr, check_vocabulary_fits,
                           finish_report, key_hash, load_model, model_fingerprint, start_job)
from ..storage import JobLock, OutputError, open_store

MAX_BATCH_RETRIES = 3
_COLUMNS = ("name", "source", "status", "error", "note")


def import_ray():
    """``ray`` and ``ray.data``, or a clear message naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise PartCLIPSegError(f"--engine ray needs Ray Data ({exc.name or exc}): "
                               f"pip install -c constraints.txt 'partclipseg[ray]'") from None
    return ray


class SegmentWorker:
    """Ray Data callable class: one model per actor; ``__call__`` segments a batch of item rows."""

    def __init__(self, options: SegmentOptions, out: str, job: str):
        self.error = None
        try:
            self.processor = ItemProcessor(options, open_store(out), expected_job=job, log=lambda message: None)
        except PartCLIPSegError as exc:
            self.processor, self.error = None, str(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [Item(str(s), str(p), str(n)) for s, p, n in zip(batch["source"], batch["path"], batch["name"])]
        if self.error is None:
            try:
                statuses = self.process(items)
            except OutputError as exc:
                statuses = [{"name": it.name, "source": it.source, "status": "fatal", "error": str(exc), "note": None}
                            for it in items]
        else:
            statuses = [{"name": it.name, "source": it.source, "status": "fatal", "error": self.error, "note": None}
                        for it in items]
        return {c: np.array([s[c] or "" for s in statuses], dtype=object) for c in _COLUMNS}

    def process(self, items: list[Item]) -> list[dict[str, Any]]:
        """Segment and write ``items`` (outputs complete from an earlier try of this batch are kept)."""
        return self.processor.process(items, skip_complete=True)


def _connect(ray, address: str | None, log: Log) -> bool:
    """Start or join Ray unless this process already did; True when this call started it."""
    import logging

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = os.cpu_count() or 1
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001  ray.init raises many kinds (a raylet that died on start, a bad address)
        raise PartCLIPSegError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from None
    return True


def run_ray(specs: Sequence[str], out: str, options: SegmentOptions, *, resume: bool, log: Log = _stderr,
            progress: bool = True, address: str | None = None, workers: int | None = None,
            gpus_per_worker: float | None = None, worker_class: type = SegmentWorker) -> Report:
    ray = import_ray()
    if workers is not None and workers < 1:
        raise PartCLIPSegError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise PartCLIPSegError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    # the driver loads the model once: a bad --model fails here, and the job key needs its fingerprint
    model = load_model(options.model, log)
    check_vocabulary_fits(model, options)
    key = options.job_key(model_fingerprint(model))
    del model
    job_hash = key_hash(key)
    job = start_job(specs, out, options, key, job_hash, resume=resume, log=log)
    with job.lock:  # the driver holds the output's job lock; the workers write under it
        statuses: list[dict[str, Any]] = []
        if job.todo:
            started = _connect(ray, address, log)
            try:
                statuses = _run_dataset(ray, job.todo, out, options, job_hash, workers, gpus_per_worker, progress,
                                        worker_class, log, job.lock)
            finally:
                if started:
                    ray.shutdown()
        return finish_report(job.store, job.plan, statuses, job.skipped, engine="ray")


def _run_dataset(ray, todo: list[Item], out: str, options: SegmentOptions, job: str, workers: int | None,
                 gpus_per_worker: float | None, progress: bool, worker_class: type, log: Log,
                 lock: JobLock) -> list[dict]:
    resources = ray.cluster_resources()
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if workers is None:
        workers = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker else int(resources.get("CPU", 1))
        workers = max(1, min(workers, len(todo)))
    import logging
    import sys

    from tqdm import tqdm

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below counts finished images
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    rows = [{"source": it.source, "path": _absolute(it.path), "name": it.name} for it in todo]
    batches = -(-len(rows) // options.batch_size)
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(batches, 4 * workers)))
    map_args = dict(fn_constructor_kwargs={"options": options, "out": _absolute(out), "job": job},
                    batch_size=options.batch_size, batch_format="numpy", concurrency=workers,
                    num_gpus=gpus_per_worker or None, num_cpus=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")  # Ray's own knob, still honoured
        try:
            results = dataset.map_batches(worker_class, **map_args, max_task_retries=MAX_BATCH_RETRIES)
        except TypeError:  # a Ray that dropped extra remote args: its default (retry without limit)
            results = dataset.map_batches(worker_class, **map_args)
    statuses = []
    bar = tqdm(total=len(todo), unit="img", disable=not progress or len(todo) < 2, file=sys.stderr)
    try:
        for row in results.iter_rows():
            lock.check()
            bar.update(1)
            status = {c: (str(row[c]) or None) for c in _COLUMNS}
            if status["status"] == "fatal":
                raise OutputError(status["error"])
            if status["status"] == "failed":
                log(f"error: {status['error']}")
            statuses.append(status)
    except ray.exceptions.RayError as exc:
        raise PartCLIPSegError(f"the Ray job failed (a batch failed {MAX_BATCH_RETRIES + 1} times?): "
                               f"{str(exc).splitlines()[0]}") from None
    finally:
        bar.close()
    return statuses


def _absolute(path: str) -> str:
    from ..storage import is_uri

    return path if is_uri(path) else os.path.abspath(path)
