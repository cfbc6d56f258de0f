"""An evaluation's work files belong to the dataset as it was: regenerated or relabelled in place, the
same --out is refused (it used to reuse the old samples' confusion matrices and report mixed numbers)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from partclipseg.data import open_dataset
from partclipseg.data.toyworld import generate_toy_world
from partclipseg.eval_work import dataset_fingerprint
from cli_helpers import run_cli



def _evaluate(capsys, root: Path, out: Path, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "evaluate", "--dataset", "toy_world", "--root", root, "--protocol", "pred-all",
                "--out", out, "--no-progress", *extra)


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]


def test_regenerated_dataset_is_not_mixed_with_old_work(capsys, tmp_path):
    root = generate_toy_world(tmp_path / "tw", n_train=0, n_val=3, size_range=(64, 96), seed=1)
    out = tmp_path / "e" / "r.json"
    assert _evaluate(capsys, root, out)[0] == 0
    first = _metrics(out)
    assert _evaluate(capsys, root, out)[0] == 0 and _metrics(out) == first  # unchanged: accepted, same numbers

    generate_toy_world(tmp_path / "tw", n_train=0, n_val=3, size_range=(64, 96), seed=7, overwrite=True)
    code, stdout, err = _evaluate(capsys, root, out)
    errors = [line for line in err.splitlines() if not line.startswith("note:")]
    assert code == 2 and len(errors) == 1 and "dataset files" in errors[0], (stdout, err)
    assert _metrics(out) == first  # the old result stays until --overwrite

    assert _evaluate(capsys, root, out, "--overwrite")[0] == 0
    fresh = tmp_path / "e" / "fresh.json"
    assert _evaluate(capsys, root, fresh)[0] == 0
    assert _metrics(out) == _metrics(fresh) != first


def test_fingerprint_follows_a_relabelled_file_and_nothing_else(tmp_path, monkeypatch):
    root = generate_toy_world(tmp_path / "tw", n_train=0, n_val=2, size_range=(64, 96), seed=2)
    refs = open_dataset("toy_world", root, "val").eval_samples()
    before = dataset_fingerprint(refs, root)
    monkeypatch.chdir(tmp_path)  # the same files by a relative path: the same fingerprint
    relative = open_dataset("toy_world", Path("tw") / root.name, "val")
    assert dataset_fingerprint(relative.eval_samples(), relative.root) == before
    label = Path(refs[0].label_path)
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))  # edited in place
    assert dataset_fingerprint(refs, root) != before


def test_same_dataset_by_another_path_and_an_older_key_are_accepted(capsys, tmp_path, monkeypatch):
    root = generate_toy_world(tmp_path / "tw", n_train=0, n_val=2, size_range=(64, 96), seed=3)
    out = tmp_path / "e" / "r.json"
    assert _evaluate(capsys, root, out)[0] == 0
    monkeypatch.chdir(tmp_path)
    assert _evaluate(capsys, Path("tw") / root.name, out)[0] == 0  # not "regenerated or edited since"
    # work files and a result from before the fingerprint was recorded: continued, not refused
    for path in (out, out.with_name(out.name + ".work") / "key.json"):
        data = json.loads(path.read_text())
        (data["work_key"] if "work_key" in data else data).pop("dataset_files")
        path.write_text(json.dumps(data))
    assert _evaluate(capsys, root, out)[0] == 0
