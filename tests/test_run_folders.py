"""Mistakes about run and dataset folders end in one line: ``--resume`` into a run of another kind,
``--resume`` into a folder that holds no run yet (a note, then step 0), and a toy-world folder read as
Pascal-Part-116 (same layout, so it used to score 0 without a word)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from partclipseg.data import open_dataset
from partclipseg.data.common import DatasetError
from partclipseg.data.toyworld import generate_toy_world
from partclipseg.errors import ConfigError
from partclipseg.train import load_recipe
from partclipseg.train.checkpoint import check_resume_config, run_kind
from partclipseg.train.pretrain import load_pretrain_recipe
from cli_helpers import run_cli

TINY_PRETRAIN = ["init=random:tiny-fast", "image_size=32", "batch_size=4", "iterations=1", "checkpoint_period=1",
                 "eval_period=1000", "log_period=1", "warmup=0"]
TINY_PARTS = ["init=random:tiny-fast", "image_size=32", "batch_size=2", "iterations=1", "checkpoint_period=1",
              "eval_period=1000", "log_period=1", "num_workers=0"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy"), n_train=4, n_val=3, size_range=(64, 96), seed=5)



def _run_folder(path: Path, config: dict) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_run_kind_names_the_verb_and_the_architecture():
    assert run_kind({"kind": "pretrain", "dataset": "toy_world"}) == "pretraining"
    assert run_kind({"dataset": "toy_world"}) == "partclipseg part-training"  # configs from before the key
    assert run_kind({"architecture": "partcatseg"}) == "partcatseg part-training"


@pytest.mark.parametrize("saved, verb, recipe, needle", [
    ("toy_world", "pretrain", "toy_world_pretrain", "holds a partclipseg part-training run, not a pretraining run"),
    ("toy_world_pretrain", "train", "toy_world", "holds a pretraining run, not a partclipseg part-training run"),
    ("toy_world", "train", "toy_world_partcatseg", "not a partcatseg part-training run"),
])
def test_resume_into_another_kind_of_run_is_one_line(capsys, toy, tmp_path, saved, verb, recipe, needle):
    loader = load_pretrain_recipe if saved.endswith("pretrain") else load_recipe
    out = _run_folder(tmp_path / "run", loader(saved, [f"root={toy}"]).to_dict())
    before = (out / "config.json").read_text()
    code, stdout, err = run_cli(capsys, verb, recipe, f"root={toy}", "--out", out, "--resume", "--no-progress")
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert " -> " not in err  # not the key-by-key config diff
    assert "no checkpoint" not in stdout  # the other kind's checkpoints are not "no checkpoint"
    assert sorted(p.name for p in out.iterdir()) == ["config.json"] and (out / "config.json").read_text() == before


def test_same_kind_with_other_settings_still_lists_them(toy, tmp_path):
    config = load_recipe("toy_world", [f"root={toy}"])
    out = _run_folder(tmp_path / "run", config.to_dict())
    changed = load_recipe("toy_world", [f"root={toy}", "lr=0.5"])
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.5"):
        check_resume_config(out, changed.to_dict(), 0, allow_safe_changes=False)
    assert check_resume_config(out, config.to_dict(), 0, allow_safe_changes=False) == {}


@pytest.mark.parametrize("verb, recipe, extra", [("pretrain", "toy_world_pretrain", TINY_PRETRAIN),
                                                 ("train", "toy_world", TINY_PARTS)])
def test_resume_without_a_run_yet_says_it_starts_at_step_0(capsys, toy, tmp_path, verb, recipe, extra):
    out = tmp_path / "new"
    code, stdout, err = run_cli(capsys, verb, recipe, f"root={toy}", *extra, "--out", out, "--resume", "--no-progress")
    assert code == 0, (stdout, err)
    assert f"--resume: no checkpoint in {out} yet; starting at step 0" in stdout
    assert (out / "final" / "model.safetensors").is_file()
    # resuming the finished run says nothing of the kind
    code, stdout, err = run_cli(capsys, verb, recipe, f"root={toy}", *extra, "--out", out, "--resume", "--no-progress")
    assert code == 0 and "no checkpoint" not in stdout, (stdout, err)


def test_toy_world_folder_is_not_read_as_pascal_part(capsys, toy, tmp_path):
    with pytest.raises(DatasetError, match="holds the toy world .* not pascal_part_116"):
        open_dataset("pascal_part_116", toy, "val").check()
    assert isinstance(open_dataset("toy_world", toy, "val").check(), dict)  # the right name reads it
    code, stdout, err = run_cli(capsys, "evaluate", "--dataset", "pascal_part_116", "--root", toy, "--protocol",
                             "oracle-obj", "--limit", "1", "--out", tmp_path / "e.json", "--no-progress")
    errors = [line for line in err.splitlines() if not line.startswith("note:")]  # the no --model note
    assert code == 2 and len(errors) == 1 and "use the dataset name toy_world" in errors[0], (stdout, err)
    assert not (tmp_path / "e.json").exists()
    # a Pascal-Part-116 folder (no captions/*.json) is still read as one
    (toy / "captions").rename(toy / "captions_away")
    try:
        open_dataset("pascal_part_116", toy, "val").check()
        (toy / "captions").mkdir()  # a folder of that name without caption files is no toy world
        open_dataset("pascal_part_116", toy, "val").check()
    finally:
        if (toy / "captions").is_dir():
            (toy / "captions").rmdir()
        (toy / "captions_away").rename(toy / "captions")
