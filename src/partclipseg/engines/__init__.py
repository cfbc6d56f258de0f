"""Engines that run a segment job (``partclipseg.segment_job``): which process segments which image.

* ``local``: this process, batches of ``batch_size`` in the sorted order;
* ``torchrun``: chosen automatically under ``torchrun`` (``WORLD_SIZE`` > 1); rank r segments
  items ``r, r + W, r + 2W, ...`` of the sorted list, one GPU per rank when present;
* ``ray``: Ray Data ``map_batches`` over a dataset of the items with an actor pool (``ray`` extra).

All three plan, prepare the output and report the same way (``start_job``) and process items
with the same ``ItemProcessor``; their outputs are byte-identical.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from ..segment_job import (ItemProcessor, Log, Plan, Report, SegmentOptions, _stderr, check_no_input_overwritten,
                           output_complete, plan_inputs, prepare_output)
from ..storage import OutputStore, open_store

ENGINES = ("local", "ray")


@dataclass
class StartedJob:
    plan: Plan
    store: OutputStore
    todo: list
    skipped: int


def start_job(specs: Sequence[str], out: str, options: SegmentOptions, key: dict, job: str, *, resume: bool,
              log: Log = _stderr) -> StartedJob:
    """Plan the inputs, check and prepare the output, and find what is left to do."""
    plan = plan_inputs(specs, out)
    for _, message in plan.problems:
        log(f"error: {message}")
    if plan.earlier_outputs:
        log(f"note: {plan.earlier_outputs} file(s) among the inputs are outputs of an earlier run; not segmented")
    check_no_input_overwritten(plan, options, out)
    store = open_store(out)
    prepare_output(store, key, plan.items, resume=resume, log=log, model_source=options.model)
    todo = [it for it in plan.items if not (resume and output_complete(store, it.name, job))]
    skipped = len(plan.items) - len(todo)
    if skipped:
        log(f"resume: {skipped} image(s) already done")
    return StartedJob(plan, store, todo, skipped)


def run_segment(specs: Sequence[str], out: str | os.PathLike, options: SegmentOptions, *, engine: str = "local",
                resume: bool = False, log: Log = _stderr, progress: bool = True, ray_address: str | None = None,
                workers: int | None = None, gpus_per_worker: float | None = None) -> Report:
    """Run a segment job; returns its report (on torchrun ranks other than 0: that rank's share)."""
    from ..eval_runner import dist_info

    out = os.fspath(out)
    if engine == "ray":
        if dist_info().distributed:
            from ..errors import PartCLIPSegError

            raise PartCLIPSegError("--engine ray is not for torchrun: start it as one process")
        from .ray_engine import run_ray

        return run_ray(specs, out, options, resume=resume, log=log, progress=progress, address=ray_address,
                       workers=workers, gpus_per_worker=gpus_per_worker)
    from ..errors import PartCLIPSegError

    if engine != "local":
        raise PartCLIPSegError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    ray_only = [flag for flag, value in (("--ray-address", ray_address), ("--workers", workers),
                                         ("--gpus-per-worker", gpus_per_worker)) if value is not None]
    if ray_only:
        raise PartCLIPSegError(f"{', '.join(ray_only)}: only with --engine ray")
    if dist_info().distributed:
        from .torchrun import run_torchrun

        return run_torchrun(specs, out, options, resume=resume, log=log, progress=progress)
    from .local import run_local

    return run_local(specs, out, options, resume=resume, log=log, progress=progress)


__all__ = ["ENGINES", "ItemProcessor", "run_segment", "start_job"]
