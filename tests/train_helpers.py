"""Shared by the training tests: a run killed part-way and resumed, beside an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import pytest

from partclipseg.train import load_recipe, train
from partclipseg.train import loop as train_loop


def losses(run: Path) -> list[float]:
    """The logged total loss of every step of a run folder."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["total"] for r in records if "total" in r]


def full_and_killed_runs(recipe: str, args: Sequence[str], tmp_path: Path, monkeypatch, kill_at: int,
                         before_resume: Callable[[Path], None] | None = None) -> tuple[Path, Path]:
    """Train ``recipe`` with ``args`` into ``tmp_path/full``; train it again into ``tmp_path/killed``,
    interrupted (KeyboardInterrupt) when step ``kill_at`` starts, then resumed there to the end.
    ``before_resume(killed_dir)`` runs between the kill and the resume."""
    train(load_recipe(recipe, args), tmp_path / "full", progress=False)
    real_schedule = train_loop.scheduled_lr

    def killed(config, step):
        if step == kill_at:
            raise KeyboardInterrupt("simulated kill")
        return real_schedule(config, step)

    monkeypatch.setattr(train_loop, "scheduled_lr", killed)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(recipe, args), tmp_path / "killed", progress=False)
    monkeypatch.setattr(train_loop, "scheduled_lr", real_schedule)
    if before_resume is not None:
        before_resume(tmp_path / "killed")
    train(load_recipe(recipe, args), tmp_path / "killed", resume=True, progress=False)
    return tmp_path / "full", tmp_path / "killed"
