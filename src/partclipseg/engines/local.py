"""The local engine: one process, batches of ``batch_size`` items in the sorted order."""
from __future__ import annotations

import sys
from typing import Sequence

from ..segment_job import ItemProcessor, Log, Report, SegmentOptions, _stderr, finish_report, start_job
from ..storage import open_store


def run_local(specs: Sequence[str], out: str, options: SegmentOptions, *, resume: bool, log: Log = _stderr,
              progress: bool = True) -> Report:
    from tqdm import tqdm

    processor = ItemProcessor(options, open_store(out), log=log)
    job = start_job(specs, out, options, processor.key, processor.job, resume=resume, log=log)
    processor.store = job.store
    statuses = []
    with job.lock:
        bar = tqdm(total=len(job.todo), unit="img", disable=not progress or len(job.todo) < 2, file=sys.stderr)
        for start in range(0, len(job.todo), options.batch_size):
            job.lock.check()
            batch = job.todo[start:start + options.batch_size]
            for status in processor.process(batch, skip_complete=False):
                if status["status"] == "failed":
                    tqdm.write(f"error: {status['error']}", file=sys.stderr)
                statuses.append(status)
            bar.update(len(batch))
        bar.close()
        return finish_report(job.store, job.plan, statuses, job.skipped, engine="local")
