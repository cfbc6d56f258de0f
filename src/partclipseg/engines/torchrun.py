"""The torchrun engine: ``torchrun --nproc_per_node=N -m partclipseg segment ...``.

Rank 0 plans the job, takes the output's job lock (held until the report is written: the ranks of
one job write under it, another job is refused) and prepares the output; the plan goes to every rank, and rank r segments
items ``r, r + W, r + 2W, ...`` of the sorted list (one GPU per rank when present: ``cuda:LOCAL_RANK``).
The statuses come back to rank 0, which writes the report. A failure to plan or an unwritable
output on any rank ends every rank with the same message.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from ..errors import PartCLIPSegError
from ..segment_job import ItemProcessor, Log, Report, SegmentOptions, _stderr, finish_report, start_job
from ..storage import JobLock, OutputError, open_store


def run_torchrun(specs: Sequence[str], out: str, options: SegmentOptions, *, resume: bool, log: Log = _stderr,
                 progress: bool = True) -> Report:
    from ..dist import leave_distributed

    try:
        return _run_torchrun(specs, out, options, resume=resume, log=log, progress=progress)
    finally:
        leave_distributed()


def _run_torchrun(specs: Sequence[str], out: str, options: SegmentOptions, *, resume: bool, log: Log,
                  progress: bool) -> Report:
    import torch.distributed as dist

    from ..dist import default_device, dist_info, init_distributed
    info = dist_info()
    device = options.device or default_device(info.local_rank)
    init_distributed(info, device)
    quiet = (lambda message: None) if info.rank else log
    error = None
    try:
        processor = ItemProcessor(options, open_store(out), device=device, log=quiet)
    except PartCLIPSegError as exc:
        processor, error = None, str(exc)
    errors = _all_gather(error)
    if any(errors):
        raise PartCLIPSegError(next(e for e in errors if e))

    shared: list[Any] = [None]
    lock = None
    if info.rank == 0:
        try:
            job = start_job(specs, out, options, processor.key, processor.job, resume=resume, log=log)
            shared[0] = {"job": processor.job, "plan": job.plan, "todo": job.todo, "skipped": job.skipped}
            lock = job.lock
        except PartCLIPSegError as exc:
            shared[0] = {"error": str(exc)}
    try:
        dist.broadcast_object_list(shared, src=0)
        return _run_share(shared[0], processor, info, options, out, progress, log, lock)
    finally:
        if lock is not None:
            lock.release()


def _run_share(state: dict, processor: ItemProcessor, info, options: SegmentOptions, out: str, progress: bool,
               log: Log, lock: JobLock | None) -> Report:
    """This rank's items; rank 0 (``lock``: the job lock it holds) gathers the statuses and reports."""
    if "error" in state:
        raise PartCLIPSegError(state["error"])
    error = None
    if state["job"] != processor.job:
        error = f"rank {info.rank} loaded other weights than rank 0 (model {options.model or '(built-in)'})"
    store = open_store(out)
    processor.store = store
    mine = state["todo"][info.rank::info.world_size]
    statuses, fatal = [], error
    bar = None
    if progress and info.rank == 0 and len(mine) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(state["todo"]), unit="img", file=sys.stderr)
    for start in range(0, len(mine), options.batch_size) if fatal is None else ():
        batch = mine[start:start + options.batch_size]
        try:
            if lock is not None:
                lock.check()
            statuses += processor.process(batch, skip_complete=False)
        except OutputError as exc:
            fatal = str(exc)
            break
        if bar is not None:
            bar.update(len(batch) * info.world_size)
    if bar is not None:
        bar.close()
    gathered = _all_gather({"statuses": statuses, "fatal": fatal})
    fatals = [g["fatal"] for g in gathered if g["fatal"]]
    if fatals:
        raise OutputError(fatals[0])
    if info.rank:
        return Report(processed=sum(s["status"] == "ok" for s in statuses), out=str(out), engine="torchrun")
    for status in (s for g in gathered for s in g["statuses"]):
        if status["status"] == "failed":
            log(f"error: {status['error']}")
    all_statuses = [s for g in gathered for s in g["statuses"]]
    report = finish_report(store, state["plan"], all_statuses, state["skipped"], engine="torchrun")
    report.engine = f"torchrun ({info.world_size} processes)"
    return report


def _all_gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
