"""`partclipseg segment` against mistakes that used to cost results: a class name too long for the text
tower (it failed every image and replaced an earlier job's outputs), an input replaced under the same
name before `--resume` (its stale outputs were kept), a repeated prompt option (the last one silently
won), argparse errors (a usage block), and which value the label PNG uses for background."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"



def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("note:")]  # the built-in model's note


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "dog.jpg", folder / "x.jpg")
    shutil.copy(EXAMPLES / "car.jpg", folder / "y.jpg")
    return folder


def test_too_long_class_name_is_one_line_and_keeps_earlier_outputs(capsys, photos, tmp_path):
    out = tmp_path / "out"
    assert run_cli(capsys, "segment", photos, "--vocab", "toy_world", "--out", out)[0] == 0
    before = _tree(out)
    long_name = "长" * 60 + "的猫's 头"  # ~190 tokens: over CLIP's 77
    code, stdout, err = run_cli(capsys, "segment", photos, "--parts", f"{long_name}, dog's leg", "--out", out)
    errors = _errors(err)
    assert code == 2 and len(errors) == 1 and "tokenises to" in errors[0] and "--parts/--vocab" in errors[0], err
    assert errors[0].count("\n") == 0 and not stdout.strip()  # no per-image failures, no summary
    assert _tree(out) == before  # nothing deleted, nothing replaced


def test_resume_redoes_an_input_replaced_under_the_same_name(capsys, photos, tmp_path):
    out = tmp_path / "out"
    assert run_cli(capsys, "segment", photos, "--vocab", "toy_world", "--out", out)[0] == 0
    record = json.loads((out / "x.jpg.json").read_text())["input_file"]
    data = (photos / "x.jpg").read_bytes()
    assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    y_before = (out / "y.jpg.labels.png").read_bytes()
    shutil.copy(EXAMPLES / "horse.jpg", photos / "x.jpg")  # replaced; y.jpg only touched
    (photos / "y.jpg").touch()
    code, stdout, err = run_cli(capsys, "segment", photos, "--vocab", "toy_world", "--out", out, "--resume")
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and summary["processed"] == 1 and summary["skipped"] == 1, (stdout, err)
    with Image.open(EXAMPLES / "horse.jpg") as horse, Image.open(out / "x.jpg.labels.png") as labels:
        assert labels.size == horse.size
    assert (out / "y.jpg.labels.png").read_bytes() == y_before
    # a third run has nothing left to do
    code, stdout, _ = run_cli(capsys, "segment", photos, "--vocab", "toy_world", "--out", out, "--resume")
    assert json.loads(stdout.strip().splitlines()[-1])["skipped"] == 2


def test_json_names_the_label_png_background_value(capsys, photos, tmp_path):
    out = tmp_path / "out"
    assert run_cli(capsys, "segment", photos / "x.jpg", "--vocab", "toy_world", "--out", out)[0] == 0
    info = json.loads((out / "x.jpg.json").read_text())
    labels = np.asarray(Image.open(out / "x.jpg.labels.png"))
    assert info["files"]["labels_background"] == 255 and labels.dtype == np.uint8
    assert info["background_label"] == len(info["vocabulary"])  # the in-memory index, documented apart
    part_area = sum(p["area"] for p in info["parts"])
    assert (labels != 255).sum() == part_area  # every non-background PNG pixel is a listed part


@pytest.mark.parametrize("repeated", [["--point", "1,2", "--point", "3,4"],
                                      ["--box", "0,0,5,5", "--box", "1,1,6,6"],
                                      ["--object", "dog", "--object", "cat"]])
def test_a_prompt_given_twice_is_refused_in_one_line(capsys, photos, tmp_path, repeated):
    code, stdout, err = run_cli(capsys, "segment", photos, "--vocab", "toy_world", *repeated, "--out", tmp_path / "o")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{repeated[0]} given twice" in lines[0], err
    assert not (tmp_path / "o").exists()


def test_argparse_errors_are_one_line_without_the_usage_block(capsys, tmp_path):
    for args in (["segment", "a.jpg", "--point", "10", "--out", tmp_path / "o"],
                 ["segment", "a.jpg", "--batch-size", "x", "--out", tmp_path / "o"],
                 ["evaluate", "--dataset", "toy_world", "--root", tmp_path, "--protocol", "pred-all", "--limit", "0",
                  "--out", tmp_path / "e.json"]):
        code, _, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0], err
        assert not lines[0].startswith("usage:")


def test_too_long_name_is_caught_for_partcatseg_too(tmp_path):
    """PartCATSeg tokenises its own prompt ensemble at encoding time: the check reads every model's prompts."""
    from partclipseg.errors import VocabularyError
    from partclipseg.model import build_model
    from partclipseg.model.partcatseg import get_partcatseg_config
    from partclipseg.segment_job import SegmentOptions, check_vocabulary_fits

    model = build_model(get_partcatseg_config("partcatseg-tiny"))
    check_vocabulary_fits(model, SegmentOptions(classes=("dog's head", "dog's leg")))
    with pytest.raises(VocabularyError, match="tokenises to"):
        check_vocabulary_fits(model, SegmentOptions(classes=("长" * 60 + "的猫's 头", "dog's leg")))


def test_resume_does_not_reread_inputs_untouched_since(capsys, photos, tmp_path, monkeypatch):
    import partclipseg.segment_job as segment_job

    out = tmp_path / "out"
    assert run_cli(capsys, "segment", photos, "--vocab", "toy_world", "--out", out)[0] == 0
    reads = []
    original = segment_job.read_input_bytes
    monkeypatch.setattr(segment_job, "read_input_bytes", lambda path: reads.append(path) or original(path))
    code, stdout, _ = run_cli(capsys, "segment", photos, "--vocab", "toy_world", "--out", out, "--resume")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["skipped"] == 2 and reads == []
    (photos / "x.jpg").touch()  # newer than its outputs, same bytes: hashed once, still done
    os.utime(photos / "x.jpg", ns=(10**19, 10**19))
    code, stdout, _ = run_cli(capsys, "segment", photos, "--vocab", "toy_world", "--out", out, "--resume")
    assert json.loads(stdout.strip().splitlines()[-1])["skipped"] == 2 and len(reads) == 1
