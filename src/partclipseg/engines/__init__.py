"""Engines that run a segment job (``partclipseg.segment_job``): which process segments which image.

* ``local``: this process, batches of ``batch_size`` in the sorted order;
* ``torchrun``: chosen automatically under ``torchrun`` (``WORLD_SIZE`` > 1); rank r segments
  items ``r, r + W, r + 2W, ...`` of the sorted list, one GPU per rank when present;
* ``ray``: Ray Data ``map_batches`` over a dataset of the items with an actor pool (``ray`` extra).

All three plan, prepare the output and report the same way (``segment_job.start_job``,
``finish_report``) and process items with the same ``ItemProcessor``; their outputs are byte-identical.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..errors import PartCLIPSegError
from ..segment_job import Log, Report, SegmentOptions, _stderr

ENGINES = ("local", "ray")


def run_segment(specs: Sequence[str], out: str | os.PathLike, options: SegmentOptions, *, engine: str = "local",
                resume: bool = False, log: Log = _stderr, progress: bool = True, ray_address: str | None = None,
                workers: int | None = None, gpus_per_worker: float | None = None) -> Report:
    """Run a segment job; returns its report (on torchrun ranks other than 0: that rank's share)."""
    from ..dist import dist_info

    out = os.fspath(out)
    if engine == "ray":
        if dist_info().distributed:
            raise PartCLIPSegError("--engine ray is not for torchrun: start it as one process")
        from .ray_engine import run_ray

        return run_ray(specs, out, options, resume=resume, log=log, progress=progress, address=ray_address,
                       workers=workers, gpus_per_worker=gpus_per_worker)
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


__all__ = ["ENGINES", "run_segment"]
