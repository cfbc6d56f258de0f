"""Training checkpoints that survive kills and full disks, and the resume-time config check.

A checkpoint is the folder ``checkpoints/step_NNNNNNN/`` with ``model.safetensors``, ``config.json``
and ``trainer.pt`` (optimizer, step, RNG). It is built in ``step_NNNNNNN.tmp/``: every file is
written under a temporary name, fsynced and renamed; the folder is fsynced and renamed to its final
name last. So a folder with a final name is always complete, and ``latest_checkpoint`` looks at
those only; leftovers of an interrupted write (``*.tmp`` folders) are removed on resume.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, OutputError
from ..io import atomic_path, atomic_write_text, fsync_dir

CHECKPOINT_FILES = ("model.safetensors", "config.json", "trainer.pt")
_COMPLETE_NAME = re.compile(r"^step_\d{7}$")

# Recipe keys that may change when a run is resumed with --allow-safe-changes (documented in the
# README): they decide how long the run goes on and what it reports, not what a step computes.
# ``iterations`` also stretches the poly learning-rate schedule from the resumed step on.
SAFE_RESUME_CHANGES = ("iterations", "checkpoint_period", "keep_checkpoints", "eval_period", "eval_protocol",
                       "eval_limit", "log_period", "num_workers", "root")


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:07d}"


def complete_checkpoints(out_dir: Path, files: tuple[str, ...] = CHECKPOINT_FILES) -> list[Path]:
    """Checkpoint folders with a final name and every one of ``files``, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if _COMPLETE_NAME.match(p.name) and p.is_dir() and all((p / f).is_file() for f in files))


def latest_checkpoint(out_dir: Path, files: tuple[str, ...] = CHECKPOINT_FILES) -> Path | None:
    found = complete_checkpoints(out_dir, files)
    return found[-1] if found else None


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete what an interrupted checkpoint write left behind (``*.tmp`` folders); returns them."""
    folder = Path(out_dir) / "checkpoints"
    stale = [p for p in folder.iterdir() if not _COMPLETE_NAME.match(p.name)] if folder.is_dir() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def save_checkpoint(out_dir: Path, model, optimizer, step: int, config, keep: int,
                    optimizer_state: dict | None = None) -> Path:
    """Write checkpoint ``step`` of a part-training run (the model as a saved folder + ``trainer.pt``).
    ``optimizer_state``: what to save in place of ``optimizer.state_dict()``."""
    from ..weights import save_pretrained

    return write_checkpoint(out_dir, step, lambda folder: save_pretrained(model, folder),
                            trainer_state(optimizer, step, config, optimizer_state), keep)


def trainer_state(optimizer, step: int, config, optimizer_state: dict | None = None) -> dict[str, Any]:
    """What ``trainer.pt`` holds: step, optimizer state (``optimizer.state_dict()`` unless given), the run's
    config and the torch RNG state."""
    return {"step": step, "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "config": config.to_dict(), "torch_rng": torch.random.get_rng_state()}


def write_checkpoint(out_dir: Path, step: int, write_weights, trainer: dict[str, Any], keep: int,
                     files: tuple[str, ...] = CHECKPOINT_FILES) -> Path:
    """Write checkpoint ``step`` (see the module docstring) and keep the newest ``keep`` complete ones.

    ``write_weights(folder)`` writes the weight files (each atomically) into the temporary folder; then
    ``trainer.pt`` is written, the folder flushed and renamed to its final name last. ``files`` are the
    names a complete checkpoint holds. A full or read-only disk raises ``OutputError`` and leaves the
    earlier checkpoints as they were.
    """
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_weights(tmp)
        with atomic_path(tmp / "trainer.pt") as part:
            torch.save(trainer, part)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(final.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write checkpoint {final}: {exc.strerror or exc} (earlier checkpoints are "
                          f"kept; free space and resume with --resume)") from None
    for old in complete_checkpoints(out_dir, files)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------- resume config check
def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"key": (saved, new)}`` for every (dotted) key whose value differs."""
    a, b = _flatten(saved), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def run_kind(config: dict[str, Any]) -> str:
    """What a run's config trains: ``"pretraining"`` (``"kind": "pretrain"``) or ``"<architecture>
    part-training"`` (a config without ``architecture`` predates the key: ``partclipseg``)."""
    if config.get("kind") == "pretrain":
        return "pretraining"
    return f"{config.get('architecture', 'partclipseg')} part-training"


def check_resume_config(out_dir: Path, new: dict[str, Any], resumed_step: int, allow_safe_changes: bool,
                        defaults: dict[str, Any] | None = None) -> dict:
    """Refuse to resume the run in ``out_dir`` with a config other than its own.

    Differences are listed; with ``allow_safe_changes`` the keys of ``SAFE_RESUME_CHANGES`` may
    differ (``iterations`` not below the resumed step). A (dotted) key that the saved config lacks and
    ``defaults`` (the config class's defaults) holds was added after the run was started: the run did
    what the default does, so it counts as the default. Returns the accepted differences.
    """
    path = Path(out_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); cannot check that --resume continues the same run") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    saved_kind, new_kind = run_kind(saved), run_kind(new)
    if saved_kind != new_kind:
        verb = "pretrain" if saved_kind == "pretraining" else "train"
        raise ConfigError(f"{out_dir} holds a {saved_kind} run, not a {new_kind} run: resume it with "
                          f"`partclipseg {verb}` and its recipe, or choose another folder")
    if defaults:
        flat_saved = _flatten(saved)
        saved = {**{k: v for k, v in _flatten(defaults).items() if k not in flat_saved}, **flat_saved}
    diff = config_differences(saved, new)
    if not diff:
        return {}
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
    unsafe = [k for k in diff if k not in SAFE_RESUME_CHANGES]
    if not allow_safe_changes:
        hint = (" (these may change with --allow-safe-changes)" if not unsafe else "")
        raise ConfigError(f"--resume with another config than the run's {path}: {shown}{hint}")
    if unsafe:
        raise ConfigError(f"--resume cannot change {', '.join(unsafe)} of the run in {out_dir} ({shown}); only "
                          f"{', '.join(SAFE_RESUME_CHANGES)} may change")
    if "iterations" in diff and int(new["iterations"]) < resumed_step:
        raise ConfigError(f"iterations={new['iterations']} is below the resumed step {resumed_step}")
    return diff


def ensure_output_folder(out_dir: Path, resume: bool) -> None:
    """The run folder must be new, empty, or (with ``resume``) a run; never a file or a foreign folder."""
    from ..io import check_writable_folder

    out_dir = Path(out_dir)
    check_writable_folder(out_dir, "--out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        is_run = (out_dir / "config.json").is_file() or (out_dir / "checkpoints").is_dir()
        if is_run and not resume:
            raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose a new folder")
        if not is_run:
            raise OutputError(f"--out {out_dir} is not empty and holds no run; choose a new or empty folder")


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines after the resumed checkpoint (they will be recomputed identically)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))
