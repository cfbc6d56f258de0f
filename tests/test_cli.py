"""The command line: segment (folders, globs, bad images, resume, prompts) and convert."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from partclipseg.cli import main
from partclipseg.viz import read_label_png

PARTS = "dog's head, dog's leg, cat's head"


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 30, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (25, 35), dtype=np.uint8), "L").save(folder / "gray.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    good = folder / "trunc_src.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    (folder / "truncated.png").write_bytes(good.read_bytes()[:200])
    good.unlink()
    return folder


def _run(capsys, *args) -> tuple[int, dict, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if out.strip() else {}, err


def test_folder_with_bad_images_processes_the_rest(capsys, model_dir, images, tmp_path):
    out = tmp_path / "out"
    code, summary, err = _run(capsys, "segment", images, "--model", model_dir, "--parts", PARTS, "--out", out,
                              "--batch-size", "2")
    assert code == 1
    assert summary["processed"] == 4 and summary["failed"] == 2
    assert "corrupt.jpg" in err and "truncated.png" in err
    for stem, (h, w) in {"a": (40, 60), "rgba": (50, 30), "deep16": (30, 30), "gray": (25, 35)}.items():
        labels = read_label_png(out / f"{stem}.png.labels.png")
        assert labels.shape == (h, w) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2, 255}
        info = json.loads((out / f"{stem}.png.json").read_text())
        assert info["image_size"] == {"height": h, "width": w}
        assert (out / f"{stem}.png.overlay.png").is_file()
    assert not list(out.glob(".*tmp"))


def test_resume_skips_finished_images(capsys, model_dir, images, tmp_path):
    out = tmp_path / "out"
    _run(capsys, "segment", images / "a.png", images / "gray.png", "--model", model_dir, "--parts", PARTS,
         "--out", out)
    (out / "gray.png.json").unlink()  # as if killed before gray's outputs were complete
    before = (out / "a.png.json").stat().st_mtime_ns
    code, summary, err = _run(capsys, "segment", str(images / "*.png"), "--model", model_dir, "--parts", PARTS,
                              "--out", out, "--resume")
    assert summary["skipped"] == 1 and summary["processed"] == 3  # gray, rgba, deep16 (truncated fails)
    assert (out / "a.png.json").stat().st_mtime_ns == before and (out / "gray.png.json").is_file()


def test_prompts_from_the_command_line(capsys, model_dir, images, tmp_path):
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for extra, mode in ((["--object-mask", tmp_path / "mask.png", "--object", "dog"], "oracle-obj"),
                        (["--box", "5,5,40,30"], "box"), (["--point", "20,10"], "point")):
        out = tmp_path / mode
        code, summary, err = _run(capsys, "segment", images / "a.png", "--model", model_dir, "--parts", PARTS,
                                  "--out", out, *extra)
        assert code == 0, err
        assert json.loads((out / "a.png.json").read_text())["mode"] == mode
    code, summary, err = _run(capsys, "segment", images / "a.png", "--model", model_dir, "--parts", PARTS,
                              "--out", tmp_path / "x", "--point", "500,10")
    assert code == 1 and "outside the 60x40 image" in err


@pytest.mark.parametrize("args, message", [
    (["--parts", "dog head"], "dog head"),
    (["--parts", " , "], "no class names"),
    (["--vocab", "coco"], "coco"),
    (["--parts", PARTS, "--object", "zebra", "--object-mask", "m.png"], "zebra"),
])
def test_bad_vocabulary_exits_with_a_clear_message(capsys, model_dir, images, tmp_path, args, message):
    code, _, err = _run(capsys, "segment", images / "a.png", "--model", model_dir, "--out", tmp_path / "o", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_wrong_model_path_is_a_clear_error(capsys, images, tmp_path):
    code, _, err = _run(capsys, "segment", images / "a.png", "--model", tmp_path / "nothing-here", "--parts", PARTS,
                        "--out", tmp_path / "o")
    assert code == 2 and "nothing-here" in err


def test_default_model_says_its_weights_are_random(capsys, images, tmp_path, monkeypatch):
    import partclipseg.weights as weights

    monkeypatch.setattr(weights, "DEFAULT_MODEL_DIR", tmp_path / "no-default")
    code, summary, err = _run(capsys, "segment", images / "a.png", "--parts", PARTS, "--out", tmp_path / "o")
    assert code == 0 and "RANDOM weights" in err


@pytest.mark.reference
def test_convert_official_checkpoint(capsys, ref_dir, ref_model, ref_tensors, tmp_path):
    from safetensors.torch import load_file

    from partclipseg.model import PartCLIPSeg

    state = {"partclipseg_model." + k: v for k, v in load_file(str(ref_dir / "model.safetensors")).items()}
    torch.save({"model": state, "iteration": 7}, tmp_path / "model_final.pth")
    assert main(["convert", str(tmp_path / "model_final.pth"), str(tmp_path / "converted"), "--config",
                 str(ref_dir / "config.json")]) == 0
    converted = PartCLIPSeg.from_pretrained(tmp_path / "converted")
    inputs = ref_tensors["inputs"]
    with torch.no_grad():
        a = converted(inputs["pixel_values"], inputs["input_ids"], inputs["part_index_map"], inputs["obj_index_map"])
        b = ref_model(inputs["pixel_values"], inputs["input_ids"], inputs["part_index_map"], inputs["obj_index_map"])
    assert torch.equal(a.object_part_logits, b.object_part_logits)
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "c2")]) == 2
