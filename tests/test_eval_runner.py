"""End-to-end benchmark evaluation on the synthetic datasets: CLI, resume, torchrun sharding."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from partclipseg.cli import main
from partclipseg.data import synthetic

MAKERS = {"pascal_part_116": synthetic.make_pascal_part, "ade20k_part_234": synthetic.make_ade20k_part,
          "partimagenet": synthetic.make_partimagenet}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    return {name: make(base / name) for name, make in MAKERS.items()}


def _evaluate(capsys, model_dir, root, dataset, protocol, out, *extra) -> dict:
    code = main(["evaluate", "--dataset", dataset, "--root", str(root), "--model", str(model_dir), "--protocol",
                 protocol, "--out", str(out), "--no-progress", *map(str, extra)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| Protocol | Seen | Unseen | Harmonic |" in printed
    return json.loads(Path(out).read_text())


@pytest.mark.parametrize("dataset", sorted(MAKERS))
@pytest.mark.parametrize("protocol", ["pred-all", "oracle-obj"])
def test_evaluate_each_synthetic_dataset(capsys, model_dir, roots, tmp_path, dataset, protocol):
    results = _evaluate(capsys, model_dir, roots[dataset], dataset, protocol, tmp_path / "r.json")
    m = results["metrics"]
    assert results["evaluated_samples"] + results["skipped_samples_without_part_gt"] == results["num_samples"] > 0
    assert m["classes_with_gt"]["base"] > 0
    for c in m["per_class"]:
        assert (c["iou"] is None) == (c["gt_pixels"] == 0) or protocol == "pred-all"
        if c["iou"] is not None:
            assert 0 <= c["iou"] <= 100
    gt_total = sum(c["gt_pixels"] for c in m["per_class"])
    assert gt_total > 0


def test_pascal_skips_objects_without_parts(capsys, model_dir, roots, tmp_path):
    results = _evaluate(capsys, model_dir, roots["pascal_part_116"], "pascal_part_116", "oracle-obj",
                        tmp_path / "r.json")
    assert results["skipped_samples_without_part_gt"] >= 1  # chair / boat samples
    assert results["gt_resize_quirk"] is True
    clean = _evaluate(capsys, model_dir, roots["pascal_part_116"], "pascal_part_116", "oracle-obj",
                      tmp_path / "clean.json", "--clean-gt")
    assert clean["gt_resize_quirk"] is False
    gt = lambda r: [c["gt_pixels"] for c in r["metrics"]["per_class"]]  # noqa: E731
    assert gt(clean) != gt(results)  # the round trip moves label pixels


@pytest.mark.slow
def test_resume_after_a_kill_gives_identical_results(capsys, model_dir, roots, tmp_path):
    root = roots["ade20k_part_234"]
    full = tmp_path / "full.json"
    _evaluate(capsys, model_dir, root, "ade20k_part_234", "pred-all", full)
    killed = tmp_path / "killed.json"
    work_src = full.with_name("full.json.work") / "rank0.jsonl"
    lines = work_src.read_text().splitlines()
    work = killed.with_name("killed.json.work")
    work.mkdir()
    (work / "key.json").write_bytes((work_src.parent / "key.json").read_bytes())  # written when the run began
    # two samples finished, the third torn mid-write
    (work / "rank0.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    resumed = _evaluate(capsys, model_dir, root, "ade20k_part_234", "pred-all", killed)
    assert resumed == json.loads(full.read_text())
    assert len(read_lines(work / "rank0.jsonl")) == len(lines)


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_process_torchrun_equals_single_process(capsys, model_dir, roots, tmp_path):
    root = roots["pascal_part_116"]
    single = _evaluate(capsys, model_dir, root, "pascal_part_116", "pred-all", tmp_path / "single.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m",
           "partclipseg", "evaluate", "--dataset", "pascal_part_116", "--root", str(root), "--model", str(model_dir),
           "--protocol", "pred-all", "--out", str(tmp_path / "dist.json"), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist = json.loads((tmp_path / "dist.json").read_text())
    assert dist["metrics"] == single["metrics"] and dist["num_samples"] == single["num_samples"]
    work = tmp_path / "dist.json.work"
    assert {p.name for p in work.glob("rank*.jsonl")} == {"rank0.jsonl", "rank1.jsonl"}
    ids0 = {json.loads(l)["sample_id"] for l in read_lines(work / "rank0.jsonl")}
    ids1 = {json.loads(l)["sample_id"] for l in read_lines(work / "rank1.jsonl")}
    assert ids0 and ids1 and not ids0 & ids1


def test_cross_dataset_is_explicit(capsys, model_dir, roots, tmp_path):
    results = _evaluate(capsys, model_dir, roots["pascal_part_116"], "pascal_part_116", "oracle-obj",
                        tmp_path / "x.json", "--train-dataset", "ade20k_part_234")
    cross = results["cross_dataset"]
    assert cross["train_dataset"] == "ade20k_part_234" and cross["test_dataset"] == "pascal_part_116"
    assert cross["mIoU_all"] is not None


def test_malformed_dataset_gives_a_clear_error(capsys, model_dir, tmp_path):
    root = synthetic.make_pascal_part(tmp_path / "broken")
    victim = sorted((Path(root) / "annotations_detectron2_part" / "val").glob("*.png"))[0]
    victim.unlink()
    code = main(["evaluate", "--dataset", "pascal_part_116", "--root", str(root), "--model", str(model_dir),
                 "--protocol", "pred-all", "--out", str(tmp_path / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and victim.stem in err and "Traceback" not in err


def test_prepare_partimagenet_command(capsys, model_dir, tmp_path):
    source = synthetic.make_partimagenet_original(tmp_path / "PartImageNet_Seg")
    before = sorted(p.relative_to(source) for p in Path(source).rglob("*"))
    assert main(["prepare-partimagenet", str(source), str(tmp_path / "PartImageNet")]) == 0
    capsys.readouterr()
    assert sorted(p.relative_to(source) for p in Path(source).rglob("*")) == before  # source untouched
    results = _evaluate(capsys, model_dir, tmp_path / "PartImageNet", "partimagenet", "oracle-obj", tmp_path / "r.json")
    assert results["evaluated_samples"] > 0
