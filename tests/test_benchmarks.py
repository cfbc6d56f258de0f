"""The benchmark scripts run end to end at smoke size (their numbers are not checked here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import toy_table  # noqa: E402


@pytest.mark.slow
def test_toy_table_smoke(tmp_path):
    # --jobs 2: the runs go through a process pool; the rows come back in variant x seed order
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_table.py"), "--out", str(tmp_path), "--smoke",
                           "--jobs", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "toy_table.json").read_text())
    names = ["CLIPSeg baseline", "PartCLIPSeg (no attention losses)", "PartCLIPSeg + L_sep + L_enh"]
    assert [r["variant"] for r in summary["summary"]] == names
    assert [(r["variant"], r["seed"]) for r in summary["runs"]] == [(n, s) for n in names for s in (0, 1, 2)]
    for row in summary["summary"]:
        assert row["seeds"] == [0, 1, 2] and row["oracle-obj_h-IoU"]["n"] == 3
    table = (tmp_path / "toy_table.md").read_text()
    assert table.count("\n") == 5 and "| Oracle-Obj Seen |" in table.splitlines()[0] and "±" in table
    for row in summary["runs"]:
        assert Path(row["model"], "model.safetensors").is_file()
    # every variant started from the same pretrained towers
    from safetensors.torch import load_file

    towers = load_file(str(Path(summary["towers"]) / "model.safetensors"))
    for arch in ("partclipseg", "clipseg"):
        init = load_file(str(tmp_path / "init" / arch / "model.safetensors"))
        assert all(torch_equal(init[k], towers[k]) for k in towers if k.startswith(("vision.", "text.")))
    # --start: every CLIPSeg-family row from one trained PartCLIPSeg (the baseline without its object-specific head)
    start = Path(summary["runs"][3]["model"])  # PartCLIPSeg, seed 0
    again = tmp_path / "from_start"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_table.py"), "--out", str(again), "--smoke",
                           "--seeds", "0", "--data", summary["data"], "--towers", summary["towers"], "--start", str(start)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((again / "toy_table.json").read_text())
    assert second["start"] == str(start) and [r["variant"] for r in second["runs"]] == names
    for row in second["runs"]:
        assert json.loads((Path(row["model"]).parent / "config.json").read_text())["init"] == str(start)


@pytest.mark.slow
def test_toy_table_partcatseg_row_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_table.py"), "--out", str(tmp_path), "--smoke",
                           "--partcatseg", "--seeds", "0"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "toy_table.json").read_text())
    assert [r["variant"] for r in summary["summary"]][-1] == "PartCATSeg"
    row = summary["runs"][-1]
    assert row["variant"].startswith("PartCATSeg") and row["oracle-obj_mIoU-base"] is not None
    config = json.loads((Path(row["model"]) / "config.json").read_text())
    assert config["model_type"] == "partcatseg"
    assert (tmp_path / "toy_table.md").read_text().count("\n") == 6
    # the row started from the pretrained towers (image head from the pretraining's last checkpoint), and the
    # text tower stayed frozen
    from safetensors.torch import load_file

    ckpt = sorted((tmp_path / "pretrain" / "checkpoints").iterdir())[-1]
    towers = load_file(str(ckpt / "towers.safetensors"))
    init = load_file(str(tmp_path / "init" / "partcatseg" / "model.safetensors"))
    trained = load_file(str(Path(row["model"]) / "model.safetensors"))
    assert torch_equal(init["clip_text.token_embedding.weight"], towers["text.token_embedding.weight"])
    assert torch_equal(init["clip_image.ln_post.weight"], towers["image_norm.weight"])
    assert torch_equal(init["clip_image.proj"], towers["image_projection.weight"].T)
    assert all(torch_equal(trained[k], init[k]) for k in init if k.startswith("clip_text."))


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_summarise_gives_mean_and_sample_spread():
    s = toy_table.summarise([10.0, 20.0, None, 30.0])
    assert s == {"mean": 20.0, "std": 10.0, "min": 10.0, "max": 30.0, "n": 3}
    assert toy_table.summarise([None])["mean"] is None
    row = {"variant": "v", **{f"{p}_{k}": toy_table.summarise([1.0, 3.0]) for p in toy_table.PROTOCOLS
                              for k in toy_table.KEYS}}
    assert "| v | 2.0 ± 1.4 |" in toy_table.markdown([row])


def test_bench_scale_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--smoke", "--out",
                           str(tmp_path / "scale.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "scale.json").read_text())
    (run,) = result["runs"]
    assert run["engine"] == "local" and run["processed"] == result["images"] == 6 and run["images_per_s"] > 0


def test_toy_table_keeps_a_finished_runs_row(tmp_path):
    """A rerun of the table returns a finished run's stored row (its training time included) without
    training or evaluating again; a run without ``final/`` is not taken as finished."""
    run = tmp_path / "runs" / "partclipseg" / "seed0"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.safetensors").write_bytes(b"not read")
    row = {"variant": "PartCLIPSeg (no attention losses)", "seed": 0, "train_seconds": 412.5, "model": str(run / "final")}
    (run / "row.json").write_text(json.dumps(row))
    job = (row["variant"], 0, run, "toy_world", [f"root={tmp_path}/missing", "seed=0"])
    assert toy_table.run_one(job) == row
    (run / "final" / "model.safetensors").unlink()  # unfinished: it goes to training, which refuses this folder
    from partclipseg.errors import PartCLIPSegError

    with pytest.raises(PartCLIPSegError, match="not empty and holds no run"):
        toy_table.run_one(job)


def test_object_confusion_counts_every_labelled_pixel(tmp_path):
    """scripts/object_confusion.py: every pixel of an object with parts or of the background is counted
    once, in the row of its ground-truth object; objects absent from the split get null recall."""
    from PIL import Image

    from partclipseg.data.toyworld import generate_toy_world
    from partclipseg.vocabulary import load_benchmark_info

    sys.path.insert(0, str(ROOT / "scripts"))
    import object_confusion

    root = generate_toy_world(tmp_path, n_train=0, n_val=2, size_range=(64, 80), overwrite=True, seed=5)
    result = object_confusion.confusion(None, Path(root), "toy_world", "val", None)
    info = load_benchmark_info("toy_world")
    with_parts = [info["object_classes"].index(o) for o in result["objects"][:-1]] + [255]
    rows = np.array(result["pixels"])
    for i, value in enumerate(with_parts):
        expected = sum(int((np.array(Image.open(p)) == value).sum())
                       for p in sorted((Path(root) / "annotations_detectron2_obj" / "val").glob("*.png")))
        assert rows[i].sum() == expected, result["objects"][i]
        assert (result["recall_percent"][result["objects"][i]] is None) == (expected == 0)
    found = result["found"]
    assert found["one_object"]["images"] + found["several_objects"]["images"] == \
        sum(1 for r in result["per_image"] if r["objects"]) and len(result["per_image"]) == 2


def test_object_confusion_per_image_record():
    """An object is found from half its pixels; the smallest share and the box overlap (over the smaller box)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import object_confusion

    names = ["a", "b", "background"]
    truth = np.full((10, 10), 2)
    truth[0:4, 0:5] = 0  # a: 20 px, box rows 0-3, cols 0-4
    truth[2:10, 3:8] = 1  # b: 40 px (overwrites 4 of a's pixels: a keeps 16), box rows 2-9, cols 3-7
    predicted = np.full((10, 10), 2)
    predicted[truth == 0] = 0
    predicted[5:10, 3:8] = 1  # 25 of b's 40 pixels
    record = object_confusion._image_record("x", truth, predicted, names)
    assert record["objects"] == {"a": 1.0, "b": 0.625} and record["all_found"]
    assert record["smallest_share"] == 0.16
    # a's box (rows 0-3, cols 0-4, 20 px) meets b's (rows 2-9, cols 3-7, 40 px) in rows 2-3, cols 3-4: 4 px
    assert record["box_overlap"] == 0.2
    predicted[5:7, 3:8] = 2  # b: 15 of 40
    assert not object_confusion._image_record("x", truth, predicted, names)["all_found"]


def test_bench_gpu_quick_on_the_cpu(tmp_path):
    """The GPU script's sections run (on whatever device there is) and check what they claim: the official
    golden outputs within 1e-5 in float32, a resumed training run equal to the uninterrupted one."""
    sections = "env,reference,train_official,large_image"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--quick", "--sections",
                           sections, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert all("error" not in result[s] for s in sections.split(","))
    folders = {p.parent.name for p in (ROOT / "tests" / "fixtures" / "reference").glob("*/config.json")}
    assert folders and folders <= set(result["reference"])
    for name in folders:
        assert result["reference"][name]["fp32"]["max_abs_diff"] <= 1e-5
        assert result["reference"][name]["fp32"]["outputs_checked"] >= 10
    resume = result["train_official"]["resume"]
    assert resume["same_length"] and resume["max_abs_loss_diff"] == 0.0
    assert result["train_official"]["fp32"]["last_loss"] < result["train_official"]["fp32"]["first_loss"]


@pytest.mark.slow
def test_gpu_recipe_lab_smoke_compares_variants_at_equal_steps(tmp_path):
    """benchmarks/gpu_recipe_lab.sh at smoke size on the CPU: each variant's overrides reach its run, the
    summary holds every evaluated step of every variant, and missing towers are refused with exit 2."""
    import os

    script = ROOT / "benchmarks" / "gpu_recipe_lab.sh"
    towers = ROOT / "src" / "partclipseg" / "resources" / "default_model"
    env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, OUT=str(tmp_path / "out"), W=str(tmp_path / "work"),
               OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(script), str(towers), "base", "ce:loss.object_ce_lambda=0.5,lr=0.002"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary) == ["base", "ce"]
    assert summary["ce"]["overrides"] == ["loss.object_ce_lambda=0.5", "lr=0.002"]
    for entry in summary.values():
        assert entry["last_step"] == 4 and sorted(entry["val_pred_all"]) == ["2", "4"]
    config = json.loads((tmp_path / "work" / "ce" / "config.json").read_text())
    assert config["loss"]["object_ce_lambda"] == 0.5 and config["lr"] == 0.002
    base = json.loads((tmp_path / "work" / "base" / "config.json").read_text())
    recipe_loss = json.loads((ROOT / "src/partclipseg/resources/recipes/toy_world.json").read_text())["loss"]
    assert base["loss"]["object_ce_lambda"] == recipe_loss.get("object_ce_lambda", 0.0)
    assert (tmp_path / "out" / "logs.tgz").stat().st_size > 0
    bad = subprocess.run(["bash", str(script), str(tmp_path / "nothing"), "base"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "model.safetensors" in bad.stderr
    for names in (["data"], ["logs"], [":lr=0.002"], ["a", "a"], ["a/b"]):  # would clobber the world, logs or a run
        bad = subprocess.run(["bash", str(script), str(towers), *names], env=env, capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and "variant name" in bad.stderr, (names, bad.stderr)
    assert (tmp_path / "work" / "data" / "ToyWorld").is_dir() and (tmp_path / "work" / "ce").is_dir()
    # a failing variant (a bad override) makes the whole lab fail, after the others finished
    failed = subprocess.run(["bash", str(script), str(towers), "base", "broken:lr=-1"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1 and "broken" in failed.stderr, failed.stderr[-2000:]


def test_pred_all_breakdown_ends_are_the_two_protocols(tmp_path):
    """scripts/pred_all_breakdown.py: its uncorrected variant is `evaluate --protocol pred-all` and its
    fully corrected one `--protocol oracle-obj`, figure for figure (same samples, GT and metrics)."""
    from partclipseg.data.toyworld import generate_toy_world
    from partclipseg.eval_runner import evaluate

    sys.path.insert(0, str(ROOT / "scripts"))
    import pred_all_breakdown

    root = generate_toy_world(tmp_path / "w", n_train=0, n_val=3, size_range=(96, 128), overwrite=True, seed=11)
    result = pred_all_breakdown.breakdown(None, Path(root), "toy_world", None)
    for variant, protocol in (("pred_all", "pred-all"), ("oracle_obj", "oracle-obj")):
        out = tmp_path / f"{protocol}.json"
        evaluate("toy_world", root, None, protocol, out, progress=False)
        official = json.loads(out.read_text())["metrics"]
        assert result["metrics"][variant] == {"seen": official["mIoU-base"], "unseen": official["mIoU-unbase"],
                                              "harmonic": official["h-IoU"]}, variant
    assert result["samples"] > 0 and sum(result["labelled_pixels_percent"].values()) == pytest.approx(100, abs=0.2)
    # the official rule calls a labelled pixel background exactly where the object head says background
    pixels = result["labelled_pixels"]
    assert result["background_by_rule"]["object-head"]["part_pixels_not_called_background"] == \
        [pixels["right_object"] + pixels["wrong_object"], sum(pixels.values())]
    assert tuple(result["metrics"]) == pred_all_breakdown.VARIANTS + ("class_argmax_rule",)


def test_pred_all_breakdown_corrects_one_kind_of_error_at_a_time():
    """Pixel by pixel: background -> the best object's part; another object -> the own object's part."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pred_all_breakdown

    k, own = 9, 1  # 3 objects (0, 1, 2; 3 = background), classes 0..8, 9 = background
    object_labels = np.array([[1, 3, 0, 2]])  # right, background, wrong, wrong
    best_object = np.array([[1, 2, 0, 2]])
    best_part_of = np.array([[[0, 1, 2, 0]], [[3, 4, 5, 3]], [[6, 7, 8, 6]]])  # [O, 1, 4]
    part_labels = np.array([[3, 9, 2, 6]])  # the official Pred-All of these inputs
    labelled = np.array([[True, True, True, False]])
    predictions, counts = pred_all_breakdown.compose(part_labels, object_labels, best_object, best_part_of, own, k,
                                                     labelled)
    assert predictions["pred_all"].tolist() == [[3, 9, 2, 6]]
    assert predictions["no_background_errors"].tolist() == [[3, 7, 2, 6]]
    assert predictions["no_wrong_object_errors"].tolist() == [[3, 9, 5, 3]]
    assert predictions["oracle_obj"].tolist() == [[3, 4, 5, 3]]
    assert counts == {"background": 1, "wrong_object": 1, "right_object": 1}


def test_pred_all_breakdown_refuses_a_model_without_an_object_head(tmp_path):
    """The CLIPSeg baseline has no object head to break down: one error line, exit 2."""
    from partclipseg.config import get_config
    from partclipseg.data.toyworld import generate_toy_world
    from partclipseg.model import build_model

    root = generate_toy_world(tmp_path / "w", n_train=0, n_val=1, size_range=(64, 80), overwrite=True, seed=3)
    build_model(get_config("tiny-fast", architecture="clipseg")).save_pretrained(tmp_path / "baseline")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "pred_all_breakdown.py"), "--root", str(root),
                           "--model", str(tmp_path / "baseline")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "no object head" in proc.stderr
