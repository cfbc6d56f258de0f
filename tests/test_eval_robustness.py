"""evaluate: work files keyed on the run, output checked first, hostile work files (issue 9, defects 2, 5, 9)."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from partclipseg.cli import main
from partclipseg.data import synthetic


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return synthetic.make_pascal_part(tmp_path_factory.mktemp("voc") / "PascalPart116", n_train=1, n_val=2)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    import torch

    from partclipseg.config import get_config
    from partclipseg.model import build_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("model1")
    build_model(get_config("tiny-fast")).save_pretrained(path)
    return path


def _eval(capsys, model, root, protocol, out, *extra) -> tuple[int, str]:
    code = main(["evaluate", "--dataset", "pascal_part_116", "--root", str(root), "--model", str(model),
                 "--protocol", protocol, "--out", str(out), "--no-progress", *map(str, extra)])
    return code, capsys.readouterr().err


def test_work_files_of_another_protocol_model_or_limit_are_refused(capsys, model_dir, other_model, voc, tmp_path):
    out = tmp_path / "r.json"
    assert _eval(capsys, model_dir, voc, "pred-all", out)[0] == 0
    pred_all = json.loads(out.read_text())
    code, err = _eval(capsys, model_dir, voc, "oracle-obj", out)
    assert code == 2 and "protocol: 'pred-all' -> 'oracle-obj'" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert json.loads(out.read_text()) == pred_all  # nothing replaced
    code, err = _eval(capsys, other_model, voc, "pred-all", out)
    assert code == 2 and "model weights (sha256)" in err
    code, err = _eval(capsys, model_dir, voc, "pred-all", out, "--limit", "1")
    assert code == 2 and "limit: None -> 1" in err
    code, err = _eval(capsys, model_dir, voc, "pred-all", out, "--clean-gt")
    assert code == 2 and "gt_resize_quirk" in err
    # --overwrite: the result is that of a fresh run
    assert _eval(capsys, model_dir, voc, "oracle-obj", out, "--overwrite")[0] == 0
    assert _eval(capsys, model_dir, voc, "oracle-obj", tmp_path / "fresh.json")[0] == 0
    assert json.loads(out.read_text())["metrics"] == json.loads((tmp_path / "fresh.json").read_text())["metrics"]
    # the same run again continues (nothing to redo) and gives the same numbers
    assert _eval(capsys, model_dir, voc, "oracle-obj", out)[0] == 0


def test_output_location_is_checked_before_anything_else(capsys, model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = _eval(capsys, model_dir, "/nonexistent-dataset", "pred-all", blocker / "r.json")
    assert code == 2 and "a-file" in err and "not a folder" in err
    (tmp_path / "dir.json").mkdir()
    code, err = _eval(capsys, model_dir, "/nonexistent-dataset", "pred-all", tmp_path / "dir.json")
    assert code == 2 and "is a folder" in err


def test_no_work_folder_when_evaluate_fails_at_once(capsys, model_dir, tmp_path):
    out = tmp_path / "r.json"
    code, err = _eval(capsys, model_dir, tmp_path / "no-such-root", "pred-all", out)
    assert code == 2 and "no-such-root" in err
    assert not out.with_name("r.json.work").exists()


def test_full_file_system_for_out_is_found_first(capsys, model_dir, voc, tmp_path):
    mount = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        filler = mount / "filler"
        with open(filler, "wb") as handle:
            try:
                handle.write(b"\0" * 200_000)
            except OSError:
                pass
        code, err = _eval(capsys, model_dir, voc, "pred-all", mount / "r.json")
        assert code == 2 and "No space left on device" in err
        assert not (mount / "r.json.work").exists()
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.parametrize("line, message", [
    (b"\xff\xfe not utf-8\n", "not UTF-8"),
    (b'{"sample_id": "x", "p": [1], "g": "zz", "n": [1]}\n', "malformed work record"),
    (b'["a list"]\n', "malformed work record"),
    (b'{"sample_id": "x", "p": [999999], "g": [0], "n": [1]}\n', "index out of"),
    (b"{not json\n", "not JSON"),
])
def test_hostile_work_file_is_one_line_and_exit_2(capsys, model_dir, voc, tmp_path, line, message):
    first = tmp_path / "first.json"
    assert _eval(capsys, model_dir, voc, "pred-all", first, "--limit", "1")[0] == 0
    out = tmp_path / "r.json"
    work = out.with_name("r.json.work")
    work.mkdir()
    (work / "key.json").write_bytes(first.with_name("first.json.work").joinpath("key.json").read_bytes())
    (work / "rank0.jsonl").write_bytes(line)
    code, err = _eval(capsys, model_dir, voc, "pred-all", out, "--limit", "1")
    assert code == 2 and message in err and "rank0.jsonl:1" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--limit", "-3"], "--limit must be >= 1"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--train-dataset", "bogus"], "invalid choice: 'bogus'"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "tpu:banana"], "is not a device"),
])
def test_bad_evaluate_arguments(capsys, model_dir, voc, tmp_path, extra, message):
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    try:
        code, err = _eval(capsys, model_dir, voc, "pred-all", tmp_path / "r.json", *extra)
    except SystemExit as exc:  # argparse
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r.json.work").exists() and not (tmp_path / "r.json").exists()
