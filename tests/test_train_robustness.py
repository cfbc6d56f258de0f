"""Training runs that are killed, starved of disk, or resumed with another config (issue 9, defects 1 and 8)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from partclipseg.cli import main
from partclipseg.data import synthetic
from partclipseg.errors import ConfigError
from partclipseg.train import load_recipe, train

FAST = ["init=random:tiny-fast", "image_size=96", "batch_size=2", "log_period=1", "eval_period=1000",
        "num_workers=0", "augmentation=flip", "channel_order=RGB", "grad_clip=1.0", "lr=1e-3", "trainable=all",
        "iterations=4", "checkpoint_period=2"]

# Runs train() in a child process that dies (os._exit, like SIGKILL: no clean-up runs) while the
# checkpoint of step 4 is written: after writing the K-th checkpoint file it truncates that file to
# half (a write cut short) and exits; "rename" exits just before the checkpoint folder gets its final name.
KILLER = r"""
import os, sys
from pathlib import Path
out, root, point = sys.argv[1], sys.argv[2], sys.argv[3]
TARGET = "step_0000004"
count = [0]

def hit(path):
    path = str(path)
    if TARGET not in path:
        return
    count[0] += 1
    if point != "rename" and count[0] == int(point):
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.truncate(size // 2)
        os._exit(137)

import torch, safetensors.torch
real_torch_save, real_save_file, real_write_bytes = torch.save, safetensors.torch.save_file, Path.write_bytes
def torch_save(obj, f, *a, **k):
    real_torch_save(obj, f, *a, **k); hit(f)
def save_file(tensors, filename, *a, **k):
    real_save_file(tensors, filename, *a, **k); hit(filename)
def write_bytes(self, data):
    n = real_write_bytes(self, data); hit(self); return n
torch.save, safetensors.torch.save_file, Path.write_bytes = torch_save, save_file, write_bytes
real_rename, real_replace = os.rename, os.replace
def guard(real):
    def f(src, dst, *a, **k):
        if point == "rename" and str(dst).endswith(TARGET):
            os._exit(137)
        return real(src, dst, *a, **k)
    return f
os.rename, os.replace = guard(real_rename), guard(real_replace)

from partclipseg.train import load_recipe, train
train(load_recipe("pascal_part_116", [f"root={root}", *sys.argv[4:]]), out, progress=False)
os._exit(0)
"""


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return synthetic.make_pascal_part(tmp_path_factory.mktemp("voc") / "PascalPart116", n_train=4, n_val=2)


@pytest.fixture(scope="module")
def reference_run(voc_root, tmp_path_factory):
    """The uninterrupted run's final weights."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(load_recipe("pascal_part_116", [f"root={voc_root}", *FAST]), out, progress=False)
    return load_file(str(out / "final" / "model.safetensors"))


def _assert_same_final(out: Path, reference: dict) -> None:
    final = load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def _child_env() -> dict:
    """The child computes with as many threads as this process (bit-identical steps)."""
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=os.pathsep.join(sys.path))


@pytest.mark.parametrize("point", [pytest.param("1", marks=pytest.mark.slow), pytest.param("2", marks=pytest.mark.slow),
                                   "3", pytest.param("rename", marks=pytest.mark.slow)])
def test_kill_while_writing_a_checkpoint_file_then_resume(voc_root, reference_run, tmp_path, point):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(out), str(voc_root), point, *FAST], env=_child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not (out / "final").exists()
    train(load_recipe("pascal_part_116", [f"root={voc_root}", *FAST]), out, resume=True, progress=False)
    _assert_same_final(out, reference_run)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]


def _train_fails_with_one_line(capsys, out: Path, voc_root: Path, message: str) -> None:
    capsys.readouterr()
    code = main(["train", "pascal_part_116", f"root={voc_root}", *FAST, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err[-2000:]


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_good_one(voc_root, reference_run, tmp_path,
                                                                       monkeypatch, capsys):
    """ENOSPC simulated in the writer of trainer.pt (half the file written, then the error)."""
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "step_0000004" in str(f):
            real_save(obj, f, *args, **kwargs)
            Path(f).write_bytes(Path(f).read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    out = tmp_path / "run"
    cfg = load_recipe("pascal_part_116", [f"root={voc_root}", *FAST])
    monkeypatch.setattr(torch, "save", full_disk)
    _train_fails_with_one_line(capsys, out, voc_root, "No space left on device")
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002"]
    train(cfg, out, resume=True, progress=False)
    _assert_same_final(out, reference_run)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_tmpfs_during_a_checkpoint_then_resume_after_space_is_freed(voc_root, reference_run, tmp_path, capsys):
    """A real full file system: a tmpfs with room for one checkpoint but not two (needs root to mount)."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(mount, "26m"):
        pytest.skip("cannot mount a tmpfs here (not root); the simulated ENOSPC test covers the writer")
    try:
        out = mount / "run"
        cfg = load_recipe("pascal_part_116", [f"root={voc_root}", *FAST])
        _train_fails_with_one_line(capsys, out, voc_root, "No space left on device")
        assert (out / "checkpoints" / "step_0000002" / "trainer.pt").is_file()
        subprocess.run(["mount", "-o", "remount,size=200m", str(mount)], check=True)
        train(cfg, out, resume=True, progress=False)
        _assert_same_final(out, reference_run)
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_resume_removes_stale_temporaries_and_ignores_incomplete_folders(tmp_path):
    from partclipseg.train import checkpoint as train_checkpoint

    ckpts = tmp_path / "checkpoints"
    for name in ("step_0000002", "step_0000004.tmp", "step_0000006"):
        (ckpts / name).mkdir(parents=True)
    for f in train_checkpoint.CHECKPOINT_FILES:
        (ckpts / "step_0000002" / f).write_bytes(b"x")
        (ckpts / "step_0000004.tmp" / f).write_bytes(b"x")
    (ckpts / "step_0000006" / "model.safetensors").write_bytes(b"x")  # no trainer.pt: not complete
    assert train_checkpoint.latest_checkpoint(tmp_path).name == "step_0000002"
    train_checkpoint.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002", "step_0000006"]


# ---------------------------------------------------------------------------- defect 8: resume config
def test_resume_with_another_config_is_refused_listing_the_keys(voc_root, tmp_path):
    out = tmp_path / "run"
    args = [f"root={voc_root}", *FAST]
    train(load_recipe("pascal_part_116", [*args, "iterations=2"]), out, progress=False)
    saved = (out / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.002.*seed"):
        train(load_recipe("pascal_part_116", [*args, "iterations=2", "lr=2e-3", "seed=5"]), out, resume=True,
              progress=False)
    assert (out / "config.json").read_text() == saved
    with pytest.raises(ConfigError, match="iterations: 2 -> 4.*--allow-safe-changes"):
        train(load_recipe("pascal_part_116", args), out, resume=True, progress=False)
    with pytest.raises(ConfigError, match="cannot change lr"):
        train(load_recipe("pascal_part_116", [*args, "lr=2e-3"]), out, resume=True, progress=False,
              allow_safe_changes=True)
    assert (out / "config.json").read_text() == saved


def test_resume_with_more_iterations_is_allowed_with_the_flag(voc_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = [f"root={voc_root}", *FAST]
    assert main(["train", "pascal_part_116", *args, "iterations=2", "--out", str(out), "--no-progress"]) == 0
    assert main(["train", "pascal_part_116", *args, "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "iterations: 2 -> 4" in capsys.readouterr().err
    assert main(["train", "pascal_part_116", *args, "--out", str(out), "--resume", "--allow-safe-changes",
                 "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["iterations"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
