"""Ordinary mistakes end in one line and exit code 2; hostile files; help texts (issue 9, defects 5, 7, 9)."""
from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partclipseg.cli import build_parser, main
from partclipseg.data import synthetic
from cli_helpers import run_cli

PARTS = "dog's head, dog's leg, cat's head"
SRC = Path(__file__).resolve().parents[1] / "src" / "partclipseg"



def _one_line_exit_2(result, *needles) -> None:
    code, out, err = result
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]  # argparse usage
    assert "Traceback" not in err and len(lines) == 1 and "error" in lines[0], err
    for needle in needles:
        assert needle in err, err


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return synthetic.make_pascal_part(tmp_path_factory.mktemp("voc") / "PascalPart116", n_train=2, n_val=1)


# ---------------------------------------------------------------------------- devices
def test_cuda_without_cuda_is_one_line(capsys, model_dir, image, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _one_line_exit_2(run_cli(capsys, "segment", image, "--model", model_dir, "--parts", PARTS, "--out", tmp_path / "o",
                          "--device", "cuda"), "CUDA is not available")
    _one_line_exit_2(run_cli(capsys, "segment", image, "--model", model_dir, "--parts", PARTS, "--out", tmp_path / "o",
                          "--device", "banana"), "is not a device")


# ---------------------------------------------------------------------------- train mistakes
TRAIN_FAST = ["init=random:tiny-fast", "iterations=1", "batch_size=1", "num_workers=0"]


@pytest.mark.parametrize("override, needle", [
    ("num_workers=-1", "num_workers must be >= 0"),
    ("min_size=0", "min_size must be >= 1"),
    ("lr=NaN", "lr must be a finite number"),
    ("betas=[0.9]", "betas must be two numbers"),
    ("betas=[0.9,0.99,0.999]", "betas must be two numbers"),
    ("flip_prob=7", "flip_prob must be in [0, 1]"),
    ("grad_clip=-1", "grad_clip must be in [0, inf)"),
    ("eval_limit=0", "eval_limit must be >= 1"),
])
def test_train_nonsense_settings_are_refused(capsys, voc, tmp_path, override, needle):
    _one_line_exit_2(run_cli(capsys, "train", "pascal_part_116", f"root={voc}", *TRAIN_FAST, override, "--out",
                          tmp_path / "run"), needle)
    assert not (tmp_path / "run").exists()


def test_train_missing_root_and_list_recipe(capsys, tmp_path):
    _one_line_exit_2(run_cli(capsys, "train", "pascal_part_116", "root=/nonexistent", *TRAIN_FAST, "--out",
                          tmp_path / "run"), "/nonexistent")
    recipe = tmp_path / "r.json"
    recipe.write_text("[1, 2]")
    _one_line_exit_2(run_cli(capsys, "train", recipe, "--out", tmp_path / "run"), "JSON object", "list")


def test_recipe_and_captions_that_are_not_json_in_utf8_are_one_line(capsys, tmp_path):
    """A recipe file or a toy world's captions file in another encoding or damaged: one line naming the
    file (it was a UnicodeDecodeError or JSONDecodeError traceback)."""
    recipe = tmp_path / "latin1.json"
    recipe.write_bytes(b"\xff\xfe{}")
    for verb in ("train", "pretrain"):
        _one_line_exit_2(run_cli(capsys, verb, recipe, "--out", tmp_path / f"run_{verb}"), "latin1.json",
                         "not valid JSON in UTF-8")
    captions = tmp_path / "ToyWorld" / "captions"
    captions.mkdir(parents=True)
    for content, needle in ((b"{bad", "not valid JSON in UTF-8"), (b"\xff{}", "not valid JSON in UTF-8"),
                            (b'["a"]', "must map image names")):
        (captions / "train.json").write_bytes(content)
        _one_line_exit_2(run_cli(capsys, "pretrain", "toy_world_pretrain", f"root={tmp_path / 'ToyWorld'}",
                              "iterations=2", "batch_size=2", "image_size=64", "--out", tmp_path / "pre",
                              "--no-progress"), "train.json", needle)
        assert not (tmp_path / "pre" / "checkpoints").exists()


def test_a_too_long_output_name_is_shortened_and_keeps_its_reason(capsys, voc, tmp_path):
    result = run_cli(capsys, "train", "pascal_part_116", f"root={voc}", *TRAIN_FAST, "--out", tmp_path / ("a" * 300) / "run")
    _one_line_exit_2(result, "characters): File name too long")


def test_train_output_unwritable_or_occupied(capsys, voc, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_exit_2(run_cli(capsys, "train", "pascal_part_116", f"root={voc}", *TRAIN_FAST, "--out", blocker),
                     "is a file")
    _one_line_exit_2(run_cli(capsys, "train", "pascal_part_116", f"root={voc}", *TRAIN_FAST, "--out",
                          blocker / "run"), "not a folder")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("precious")
    _one_line_exit_2(run_cli(capsys, "train", "pascal_part_116", f"root={voc}", *TRAIN_FAST, "--out", occupied),
                     "not empty")
    assert sorted(p.name for p in occupied.iterdir()) == ["thesis.tex"]


# ---------------------------------------------------------------------------- model files
def _bad_config(model_dir: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "bad-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("change, needle", [
    (lambda c: c["vision"].__setitem__("hidden_size", "96"), "vision.hidden_size must be an int"),
    (lambda c: c["vision"].__setitem__("num_layers", None), "vision.num_layers must be an int"),
    (lambda c: c.__setitem__("image_size", 96.0), "image_size must be an int"),
    (lambda c: c["text"].__setitem__("num_heads", 0), "text.num_heads must be >= 1"),
    (lambda c: c["decoder"].__setitem__("extract_layers", "123"), "decoder.extract_layers must be a list"),
    (lambda c: c.__setitem__("image_mean", [0.5]), "image_mean must be a list of 3"),
])
def test_config_json_with_wrong_types(capsys, model_dir, image, tmp_path, change, needle):
    folder = _bad_config(model_dir, tmp_path, change)
    _one_line_exit_2(run_cli(capsys, "segment", image, "--model", folder, "--parts", PARTS, "--out", tmp_path / "o"),
                     needle, "config.json")


def _official_pth(model_dir: Path, path: Path, poison: str | None = None) -> Path:
    """Our saved tiny-fast weights under official key names, optionally with a NaN in one tensor."""
    from safetensors.torch import load_file

    from partclipseg.weights import map_official_key  # noqa: F401 (the mapping is tested elsewhere)

    state = load_file(str(model_dir / "model.safetensors"))
    if poison:
        state[poison] = state[poison].clone()
        state[poison].view(-1)[0] = float("nan")
    torch.save({"model": state}, path)
    return path


def test_non_finite_weights_are_refused_naming_the_tensor(capsys, model_dir, image, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan-model"
    folder.mkdir()
    (folder / "config.json").write_text((model_dir / "config.json").read_text())
    state = load_file(str(model_dir / "model.safetensors"))
    state["decoder.film_mul.weight"][0, 0] = float("inf")
    state["vision.pre_norm.bias"][0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    _one_line_exit_2(run_cli(capsys, "segment", image, "--model", folder, "--parts", PARTS, "--out", tmp_path / "o"),
                     "NaN or infinite", "decoder.film_mul.weight", "vision.pre_norm.bias")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_convert_refuses_non_finite_weights(capsys, ref_dir, tmp_path):
    from safetensors.torch import load_file

    state = {"partclipseg_model." + k: v for k, v in load_file(str(ref_dir / "model.safetensors")).items()}
    key = "partclipseg_model.decoder.film_mul.weight"
    state[key] = state[key].clone()
    state[key].view(-1)[3] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pth")
    _one_line_exit_2(run_cli(capsys, "convert", tmp_path / "nan.pth", tmp_path / "out", "--config",
                          ref_dir / "config.json"), "NaN or infinite", "decoder.film_mul.weight")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_convert_output_and_size_mistakes(capsys, ref_dir, tmp_path):
    from safetensors.torch import load_file

    state = {"partclipseg_model." + k: v for k, v in load_file(str(ref_dir / "model.safetensors")).items()}
    pth = tmp_path / "model_final.pth"
    torch.save({"model": state}, pth)
    existing = tmp_path / "existing-file"
    existing.write_text("keep me")
    _one_line_exit_2(run_cli(capsys, "convert", pth, existing, "--config", ref_dir / "config.json"), "is a file")
    assert existing.read_text() == "keep me"
    _one_line_exit_2(run_cli(capsys, "convert", pth, tmp_path / "m", "--config", ref_dir / "config.json",
                          "--image-size", "-32"), "--image-size must be >= 1")
    assert run_cli(capsys, "convert", pth, tmp_path / "m", "--config", ref_dir / "config.json")[0] == 0
    mode = stat.S_IMODE((tmp_path / "m" / "model.safetensors").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "m" / "config.json").stat().st_mode) == 0o666 & ~_umask()
    before = (tmp_path / "m" / "model.safetensors").stat().st_mtime_ns
    _one_line_exit_2(run_cli(capsys, "convert", pth, tmp_path / "m", "--config", ref_dir / "config.json"),
                     "already holds", "--overwrite")
    assert (tmp_path / "m" / "model.safetensors").stat().st_mtime_ns == before
    assert run_cli(capsys, "convert", pth, tmp_path / "m", "--config", ref_dir / "config.json", "--overwrite")[0] == 0
    bad = tmp_path / "official.json"
    official = json.loads((ref_dir / "config.json").read_text())
    official["vision_config"] = 5
    bad.write_text(json.dumps(official))
    _one_line_exit_2(run_cli(capsys, "convert", pth, tmp_path / "m2", "--config", bad), "vision_config must be an object")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- JSON
def test_every_json_the_package_writes_is_rfc8259(tmp_path):
    from partclipseg.io import json_text
    from partclipseg.outputs import write_outputs
    from partclipseg.result import PartSegmentation
    from partclipseg.vocabulary import Vocabulary

    vocab = Vocabulary.parse(PARTS)
    labels = np.zeros((4, 5), dtype=np.int64)
    confidence = np.full((4, 5), np.nan, dtype=np.float32)
    result = PartSegmentation(vocab, np.zeros((4, 5, 3), np.uint8), labels, labels, labels, confidence, "pred-all")
    write_outputs(result, tmp_path, "x", overlay=False)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-RFC 8259 constant {c}"))

    info = strict((tmp_path / "x.json").read_text())
    assert info["parts"][0]["score"] is None
    assert strict(json_text({"a": [float("inf"), -float("inf"), np.float32("nan"), 1.5]})) == {"a": [None, None, None, 1.5]}
    # no other JSON writer in the package: everything goes through io.json_text
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py") if p.name != "io.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\bjson\.dumps?\(", line)]
    assert not offenders, offenders


# ---------------------------------------------------------------------------- smaller items
def test_object_mask_from_any_channel(capsys, model_dir, image, tmp_path):
    h, w = 40, 60
    region = np.zeros((h, w), bool)
    region[5:30, 10:40] = True
    alpha_only = np.zeros((h, w, 4), np.uint8)
    alpha_only[..., 3] = region * 255
    green_only = np.zeros((h, w, 3), np.uint8)
    green_only[..., 1] = region * 200
    grey = (region * 1).astype(np.uint8)
    for name, array in (("alpha.png", alpha_only), ("green.png", green_only), ("grey.png", grey)):
        Image.fromarray(array).save(tmp_path / name)
        out = tmp_path / f"out-{name}"
        code, _, err = run_cli(capsys, "segment", image, "--model", model_dir, "--parts", PARTS, "--out", out,
                            "--object-mask", tmp_path / name, "--object", "dog")
        assert code == 0, err
        labels = np.asarray(Image.open(next(out.rglob("*labels.png"))))
        assert ((labels != 255) == region).all(), name


def test_oracle_obj_without_object_names_the_flag(capsys, model_dir, image, tmp_path):
    _one_line_exit_2(run_cli(capsys, "segment", image, "--model", model_dir, "--parts", PARTS, "--out", tmp_path / "o",
                          "--protocol", "oracle-obj"), "--object")


def test_too_long_class_name_is_not_echoed_whole(capsys, model_dir, image, tmp_path):
    name = "dog's " + "x" * 30_000 + ",dog's"
    code, out, err = run_cli(capsys, "segment", image, "--model", model_dir, "--parts", name, "--out", tmp_path / "o")
    assert code == 2 and len(err) < 2_500, len(err)
    code, out, err = run_cli(capsys, "segment", image, "--model", model_dir, "--parts", PARTS, "--out", tmp_path / "o",
                          "--object", "z" * 30_000)
    assert code == 2 and len(err) < 2_500, len(err)
    code, out, err = run_cli(capsys, "segment", image, "--box", "1," * 20_000, "--parts", PARTS, "--out", tmp_path / "o")
    assert code == 2 and len(err) < 2_500, len(err)


def test_prepare_partimagenet_refuses_an_output_inside_the_source(capsys, tmp_path):
    source = synthetic.make_partimagenet_original(tmp_path / "PartImageNet_Seg", n_train=1, n_val=1)
    before = sorted(str(p.relative_to(source)) for p in source.rglob("*"))
    _one_line_exit_2(run_cli(capsys, "prepare-partimagenet", source, source / "sub"), "inside")
    assert sorted(str(p.relative_to(source)) for p in source.rglob("*")) == before


def test_huge_label_png_is_refused_before_it_is_decoded(voc, monkeypatch, tmp_path):
    """A small PNG that claims 10000x9999 pixels: refused from its header (size != the image's)."""
    import shutil

    from PIL import ImageFile

    from partclipseg.data import open_dataset
    from partclipseg.data.common import DatasetError

    root = tmp_path / "PascalPart116"
    shutil.copytree(voc, root)
    reader = open_dataset("pascal_part_116", root, "val")
    ref = reader.eval_samples()[0]
    label = next((root / "annotations_detectron2_part" / "val").glob("*.png"))
    Image.new("L", (10_000, 9_999)).save(label, optimize=True)
    assert label.stat().st_size < 200_000
    real_load = ImageFile.ImageFile.load

    def guarded_load(img):
        assert img.size[0] * img.size[1] < 1_000_000, "a huge label image was decoded"
        return real_load(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded_load)
    with pytest.raises(DatasetError, match="does not match"):
        reader.load_eval_sample(ref)


def test_demo_without_gradio_keeps_pillow(capsys, monkeypatch):
    import PIL

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.delitem(sys.modules, "partclipseg.demo", raising=False)
    code, out, err = run_cli(capsys, "demo")
    assert code == 2 and "gradio" in err
    assert f"pillow=={PIL.__version__}" in err and ".[demo]" not in err


def test_demo_port_and_address_mistakes_are_one_line(capsys):
    """A port outside 1..65535, an address that does not resolve or is not this machine's and a port in
    use are refused before the model loads (they were tracebacks from inside gradio)."""
    import socket

    pytest.importorskip("gradio")
    for port in ("-1", "0", "70000", "abc"):
        _one_line_exit_2(run_cli(capsys, "demo", "--port", port), "--port must be a whole number from 1 to 65535")
    _one_line_exit_2(run_cli(capsys, "demo", "--host", "999.1.1.1", "--port", "7999"),
                     "cannot listen on 999.1.1.1:7999", "does not resolve")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _one_line_exit_2(run_cli(capsys, "demo", "--port", str(port)), f"cannot listen on 127.0.0.1:{port}")


# ---------------------------------------------------------------------------- help
def _actions(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from ((f"{name} {a.dest}", a, sub) for a in sub._actions)
        else:
            yield (action.dest, action, parser)


def test_every_option_has_help_and_states_its_default(capsys):
    parser = build_parser()
    missing, no_default = [], []
    for name, action, sub in _actions(parser):
        if action.__class__.__name__ in ("_HelpAction", "_SubParsersAction"):
            continue
        if not action.help:
            missing.append(name)
        elif action.default not in (None, False, [], argparse_suppress()) and \
                "default" not in sub._get_formatter()._get_help_string(action):
            no_default.append(name)
    assert not missing, missing
    assert not no_default, no_default
    seg_help = " ".join(parser._subparsers._group_actions[0].choices["segment"].format_help().split())
    assert "(default: float32)" in seg_help and "overlay" in seg_help
    object_help = seg_help.split("--object OBJECT")[-1].split("--box")[0]
    assert "mask is optional" in object_help
    conv_help = parser._subparsers._group_actions[0].choices["convert"].format_help()
    assert "reference/tiny" not in conv_help and "official checkpoint" in conv_help
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and re.match(r"partclipseg \d+\.\d+", capsys.readouterr().out)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
