"""PartCATSeg behind the common interface: registry, save/load, official .pth, Predictor, CLI.

Everything runs on the tiny fixture model (``PARTCLIPSEG_PARTCATSEG_REFERENCE_DIR``, default the shared
``tiny`` set): the Predictor's Pred-All / Oracle-Obj scores are checked within 1e-5 against the official
protocols (``partcatseg.postprocess``, themselves checked against the fixture) applied to the fixture's
official logits.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_catseg_reference import catseg_reference_dir, load_catseg_reference_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    path = catseg_reference_dir()
    config = json.loads((path / "config.json").read_text())
    inputs = load_file(str(path / "inputs.safetensors"))
    infer = load_file(str(path / "infer.safetensors"))
    return {"dir": path, "config": config, "inputs": inputs, "infer": infer,
            # float32 text features: the fp16 CLIP text tower (official switch, checked by the reference
            # tests) is slow on a CPU; the protocols are compared on this model's own logits
            "model": load_catseg_reference_model(path, text_features_fp16=False)}


def _vocab(tiny):
    from partclipseg.vocabulary import Vocabulary

    return Vocabulary.from_names(tiny["config"]["vocab"]["test"]["ori_text_classes"])


def _image(tiny) -> np.ndarray:
    return tiny["inputs"]["infer.image"].permute(1, 2, 0).contiguous().numpy()  # HWC uint8


def test_catseg_is_a_registered_architecture():
    from partclipseg.config import ARCHITECTURES
    from partclipseg.model import PartSegmentationModel, architecture_class, build_model
    from partclipseg.model.partcatseg import PartCATSeg, get_partcatseg_config

    assert "partcatseg" in ARCHITECTURES and architecture_class("partcatseg") is PartCATSeg
    model = build_model(get_partcatseg_config("partcatseg-tiny"))
    assert isinstance(model, PartSegmentationModel) and model.config.architecture == "partcatseg"
    assert model.background_text_embedding.abs().sum() > 0  # init_weights: the official N(0, text_width^-1/2)


def test_catseg_save_and_from_pretrained_round_trip(tiny, tmp_path):
    from partclipseg.checkpoint import SAVED, inspect_checkpoint
    from partclipseg.model import PartSegmentationModel
    from partclipseg.model.partcatseg import PartCATSeg

    model = tiny["model"]
    model.save_pretrained(tmp_path / "m")
    assert inspect_checkpoint(tmp_path / "m").kind == SAVED
    loaded = PartSegmentationModel.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, PartCATSeg) and loaded.config == model.config and loaded.templates == model.templates
    theirs = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    pixels = model.preprocess([tiny["inputs"]["infer.image"]])
    with torch.no_grad():
        a, b = model.encode_image(pixels), loaded.encode_image(pixels)
    assert torch.equal(a.features, b.features) and all(torch.equal(x, y) for x, y in zip(a.guidance, b.guidance))


def test_catseg_official_pth_loads_and_converts(tiny, tmp_path, capsys):
    from partclipseg.checkpoint import guess_architecture, read_torch_checkpoint
    from partclipseg.cli import main
    from partclipseg.model.loading import load_pretrained

    official = load_file(str(tiny["dir"] / "model.safetensors"))  # official key names
    pth = tmp_path / "partcatseg_tiny.pth"
    torch.save({"model": official, "iteration": 1}, pth)
    assert guess_architecture(read_torch_checkpoint(pth)) == "partcatseg"
    model = load_pretrained(pth, config=str(tiny["dir"] / "config.json"))
    ref = tiny["model"].state_dict()
    assert set(model.state_dict()) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert main(["convert", str(pth), str(tmp_path / "out"), "--config", str(tiny["dir"] / "config.json")]) == 0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "partcatseg" and saved["format"] == "partclipseg"
    assert "PartCATSeg" in capsys.readouterr().out


def _official_protocols(tiny, size):
    from partclipseg.model.partcatseg.postprocess import oracle_obj, pred_all

    vocab = _vocab(tiny)
    with torch.no_grad():
        logits = tiny["model"].run([tiny["inputs"]["infer.image"]], vocab)[1][0]  # [T+1, 4g, 4g]
    info = tiny["config"]["vocab"]["test"]
    object_name = info["obj_classes"][int(tiny["inputs"]["infer.instances.gt_classes"][0])]
    return (pred_all(logits, size, size), oracle_obj(logits, vocab.object_specific_classes, object_name, size, size),
            object_name)


def test_catseg_predictor_protocols_match_the_official_ones(tiny):
    from partclipseg.predictor import Predictor

    image = _image(tiny)
    size = image.shape[:2]
    official_all, official_oracle, object_name = _official_protocols(tiny, size)
    # official protocols (partcatseg.postprocess, checked against the fixture) on the official forward's logits
    predictor = Predictor(tiny["model"])
    predictor.set_image(image)
    vocab = _vocab(tiny)
    result = predictor.predict(vocab, return_scores=True)
    scores = torch.as_tensor(result.part_scores)
    assert tuple(scores.shape) == (len(vocab) + 1, *size)
    assert (scores - official_all).abs().max().item() <= ATOL
    assert np.array_equal(result.part_labels, official_all.argmax(0).numpy())

    oracle = predictor.predict(vocab, object_name=object_name, return_scores=True)
    allowed = [t for t, name in enumerate(vocab.object_specific_classes) if object_name in name]
    ours = torch.as_tensor(oracle.part_scores)
    assert (ours[allowed] - official_oracle[allowed]).abs().max().item() <= ATOL
    assert np.array_equal(oracle.part_labels, official_oracle.argmax(0).numpy())


def test_catseg_predictor_logits_layout_and_prompts(tiny):
    from partclipseg.predictor import Predictor

    model, vocab = tiny["model"], _vocab(tiny)
    image = _image(tiny)
    predictor = Predictor(model)
    predictor.set_image(image)
    out = predictor._decode(predictor.encode_vocabulary(vocab))
    s = model.config.logit_size
    assert tuple(out.logits.shape) == (1, vocab.num_parts + vocab.num_objects + 1, s, s)
    assert tuple(out.object_part_logits.shape) == (1, len(vocab) + 1, s, s)
    with torch.no_grad():
        part_object, specific, _ = model.run([tiny["inputs"]["infer.image"]], vocab)
    assert torch.equal(out.logits, part_object) and torch.equal(out.object_part_logits, specific)
    h, w = image.shape[:2]
    for kwargs in ({"point": (w // 2, h // 2)}, {"box": (0, 0, w // 2, h // 2)}):
        seg = predictor.predict(vocab, **kwargs)
        assert seg.part_labels.shape == (h, w)
        assert set(np.unique(seg.part_labels)) <= set(range(len(vocab) + 1))


def test_catseg_crop_switch_uses_the_image_share_of_the_padded_frame(tiny):
    from partclipseg.model.partcatseg import PartCATSeg, PartCATSegImage

    config = tiny["model"].config
    image = PartCATSegImage(torch.zeros(1), (), [(100, 60)], (128, 64))
    s = config.logit_size
    assert tiny["model"].valid_sizes(image) == [(min(100, s), min(60, s))]  # official: by pixels
    config2 = type(config).from_dict(config.to_dict())
    config2.official.crop_logits_by_pixels = False
    assert PartCATSeg.valid_sizes(type("M", (), {"config": config2})(), image) == [
        (int(np.ceil(s * 100 / 128)), int(np.ceil(s * 60 / 64)))]


def test_catseg_cli_segment_runs_on_a_saved_tiny_model(tiny, tmp_path):
    from PIL import Image

    from partclipseg.cli import main

    tiny["model"].save_pretrained(tmp_path / "model")
    Image.fromarray(_image(tiny)).save(tmp_path / "img.png")
    names = ",".join(_vocab(tiny).object_specific_classes)
    rc = main(["segment", str(tmp_path / "img.png"), "--model", str(tmp_path / "model"), "--parts", names,
               "--out", str(tmp_path / "out")])
    assert rc == 0
    assert any((tmp_path / "out").iterdir())


def test_catseg_registry_entries_name_the_official_checkpoints():
    from partclipseg.hub.registry import MODELS
    from partclipseg.model.partcatseg import get_partcatseg_config

    ids = {e.filename: e.gdrive_id for e in MODELS.values() if e.architecture == "partcatseg"}
    assert ids == {"partcatseg_voc.pth": "1JUJjJQLMKE96H5SLNs4EMm4jiU6fPgRb",
                   "partcatseg_ade.pth": "1MKQEk71o9Xvs4aBY_GLyGa1lWTaW10fv",
                   "partcatseg_partimagenet_seg.pth": "1zvV6achGzDS_tAwulaSkFYblMTghMHO6"}
    for entry in MODELS.values():
        if entry.architecture == "partcatseg":
            get_partcatseg_config(entry.config_preset)  # the preset exists


def test_catseg_named_model_downloads_from_a_local_drive_and_converts(tiny, tmp_path, monkeypatch):
    """A registry entry of architecture partcatseg, served by a loopback 'Drive': download, convert, load."""
    import io

    from loopback_servers import FileServer

    from partclipseg.hub.registry import MODELS, ModelEntry
    from partclipseg.model.loading import load_pretrained

    buffer = io.BytesIO()
    torch.save({"model": load_file(str(tiny["dir"] / "model.safetensors"))}, buffer)
    monkeypatch.setenv("PARTCLIPSEG_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setitem(MODELS, "test_partcatseg", ModelEntry(
        name="test_partcatseg", architecture="partcatseg", trained_on="fixture", vocabulary="any", size="-",
        source="gdrive", licence="test", gdrive_id="CATID", filename="test_partcatseg.pth",
        config_preset=str(tiny["dir"] / "config.json")))
    with FileServer({"/uc?id=CATID": buffer.getvalue()}) as server:
        monkeypatch.setenv("PARTCLIPSEG_GDRIVE_URL", server.url + "/uc?id={id}")
        model = load_pretrained("test_partcatseg")
    assert sorted(p.name for p in (tmp_path / "cache" / "models" / "test_partcatseg").iterdir()) == [
        "config.json", "manifest.json", "model.safetensors"]
    reference = tiny["model"].state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


@pytest.mark.slow  # ~1 min on 2 cores (both protocols pass; one runs here to keep the suite short)
@pytest.mark.parametrize("protocol", ["oracle-obj"])
def test_catseg_evaluate_runs_on_a_synthetic_benchmark(tiny, tmp_path, capsys, protocol):
    from partclipseg.cli import main
    from partclipseg.data import synthetic

    root = synthetic.make_pascal_part(tmp_path / "pascal", n_train=1, n_val=1)
    tiny["model"].save_pretrained(tmp_path / "model")
    out = tmp_path / "r.json"
    code = main(["evaluate", "--dataset", "pascal_part_116", "--root", str(root), "--model", str(tmp_path / "model"),
                 "--protocol", protocol, "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "| Protocol | Seen | Unseen | Harmonic |" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["evaluated_samples"] > 0
    assert sum(c["gt_pixels"] for c in results["metrics"]["per_class"]) > 0
    assert all(c["iou"] is None or 0 <= c["iou"] <= 100 for c in results["metrics"]["per_class"])


def test_catseg_is_not_configured_by_a_partclipseg_config():
    from partclipseg.config import PartCLIPSegConfig
    from partclipseg.errors import ConfigError

    with pytest.raises(ConfigError, match="PartCATSegConfig"):
        PartCLIPSegConfig(architecture="partcatseg")


def test_catseg_predictor_oracle_obj_uses_the_model_rule_where_exact_and_substring_differ(tiny):
    """Official PartCATSeg Oracle-Obj keeps every class whose name contains the object's name ("cat" keeps
    "bobcat's tail"); the Predictor asks the model (``oracle_classes``), so it does too, and the exact rule
    returns with ``official.oracle_substring_match = False``."""
    from partclipseg.errors import VocabularyError
    from partclipseg.model.partcatseg.postprocess import oracle_obj
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    model = tiny["model"]
    vocab = Vocabulary.from_names(["cat's head", "bobcat's tail", "dog's leg"])
    image = _image(tiny)
    size = image.shape[:2]
    predictor = Predictor(model)
    predictor.set_image(image)
    with torch.no_grad():
        logits = model.run([tiny["inputs"]["infer.image"]], vocab)[1][0]
    official = oracle_obj(logits, vocab.object_specific_classes, "cat", size, size)  # [T, H, W], masked = -1
    assert [t for t in range(len(vocab)) if bool((official[t] >= 0).all())] == [0, 1]

    result = predictor.predict(vocab, object_name="cat", return_scores=True)
    scores = torch.as_tensor(result.part_scores)
    assert (scores[:2] - official[:2]).abs().max().item() <= ATOL
    assert float(scores[2:].abs().max()) == 0.0
    top2 = official.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 10 * ATOL).numpy()  # labels compared where the two kept classes do not tie
    assert clear.mean() > 0.9
    assert np.array_equal(result.part_labels[clear], official.argmax(0).numpy()[clear])
    assert set(np.unique(result.part_labels)) == {0, 1}
    assert result.selected_object == "bobcat, cat"

    model.config.official.oracle_substring_match = False
    try:
        exact = predictor.predict(vocab, object_name="cat", return_scores=True)
        assert model.oracle_classes(vocab, ["cat"]) == [0]
        with pytest.raises(VocabularyError, match="'ca'"):
            predictor.predict(vocab, object_name="ca")
    finally:
        model.config.official.oracle_substring_match = True
    exact_scores = torch.as_tensor(exact.part_scores)
    assert float(exact_scores[1:].abs().max()) == 0.0 and exact.selected_object == "cat"
    assert set(np.unique(exact.part_labels)) == {0}  # the rules give different segmentations here
    assert model.oracle_classes(vocab, ["ca"]) == [0, 1]  # substring rule: "ca" is inside "cat" and "bobcat"
    with pytest.raises(VocabularyError, match="'bird'"):
        predictor.predict(vocab, object_name="bird")
