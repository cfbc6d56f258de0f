"""Weights I/O: official checkpoint path, our format, CLIPSeg initialisation, bad checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES
from partclipseg.config import PartCLIPSegConfig, get_config
from partclipseg.errors import CheckpointError, ConfigError
from partclipseg.model import PartCLIPSeg
from partclipseg.weights import (convert_official_state_dict, init_from_clipseg, load_pretrained, map_official_key,
                                 save_pretrained)


def _official_state(ref_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ref_dir / "model.safetensors"))


def _write_detectron2_pth(ref_dir: Path, path: Path, prefix: str = "partclipseg_model.") -> Path:
    state = {prefix + k: v.float() if v.is_floating_point() else v for k, v in _official_state(ref_dir).items()}
    torch.save({"model": state, "iteration": 19999,
                "trainer": {"iteration": 19999, "hooks": {"LRScheduler": {"last_epoch": 19999}}}}, path)
    return path


def _outputs(model, inputs):
    with torch.no_grad():
        out = model(inputs["pixel_values"], inputs["input_ids"], inputs["part_index_map"], inputs["obj_index_map"],
                    inputs["attention_mask"])
    return out.logits, out.object_part_logits


@pytest.mark.reference
def test_official_pth_and_saved_folder_give_identical_outputs(ref_dir, ref_model, ref_tensors, tmp_path):
    pth = _write_detectron2_pth(ref_dir, tmp_path / "model_final.pth")
    official = load_pretrained(pth, config=ref_dir / "config.json")
    saved = save_pretrained(official, tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    reloaded = PartCLIPSeg.from_pretrained(saved)
    inputs = ref_tensors["inputs"]
    a, b, c = _outputs(ref_model, inputs), _outputs(official, inputs), _outputs(reloaded, inputs)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(y, z)
    torch.testing.assert_close(a[0], ref_tensors["outputs"]["logits"], atol=1e-5, rtol=0)


def test_every_full_model_key_maps_onto_our_full_model():
    """keys_full.txt (the official 484 entries) maps exactly onto our full-size model, shapes included."""
    lines = (FIXTURES / "reference" / "keys_full.txt").read_text().splitlines()
    official = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, _dtype = line.split("\t")
        official[name] = tuple(json.loads(shape))
    assert len(official) == 484
    with torch.device("meta"):
        ours = PartCLIPSeg(get_config("clipseg-rd64-refined")).state_dict()
    mapped = {map_official_key(k): shape for k, shape in official.items()}
    mapped.pop(None)
    assert set(mapped) == set(ours)
    for key, shape in mapped.items():
        assert tuple(ours[key].shape) == shape, key


def test_unknown_missing_and_misshaped_keys_are_refused(ref_dir, tmp_path):
    config = ref_dir / "config.json"
    state = _official_state(ref_dir)
    bad = dict(state, **{"decoder.mystery.weight": torch.zeros(1)})
    torch.save({"model": bad}, tmp_path / "unexpected.pth")
    with pytest.raises(CheckpointError, match="decoder.mystery.weight"):
        load_pretrained(tmp_path / "unexpected.pth", config=config)
    missing = {k: v for k, v in state.items() if not k.startswith("decoder.reduce_cond_embed")}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing key.*object_part_head.text_fuse"):
        load_pretrained(tmp_path / "missing.pth", config=config)
    # the tiny weights into the full-size config: every shape is named as wrong
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_pretrained(tmp_path / "bare.pth", config=PartCLIPSegConfig(
            **{**get_config("tiny").__dict__, "projection_dim": 256}))


def test_unreadable_and_unsafe_files_are_refused(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_pretrained(tmp_path / "garbage.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"model": {"x": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    # \S*: in a process that has imported ray, print is ray's safe_print
    with pytest.raises(CheckpointError, match=r"weights_only=True.*pickled Python objects other than tensors "
                                              r"\(Unsupported global: GLOBAL \S*print was not an allowed global by default\)\. Only") as info:
        load_pretrained(tmp_path / "evil.pth")
    # torch's own advice (load with weights_only=False, i.e. run the pickled code) is not passed on
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)
    # a damaged pickle is not called "pickled objects": torch gives the same first line for both
    (tmp_path / "damaged.pth").write_bytes(b"\x80\x02garbage" * 3)
    with pytest.raises(CheckpointError, match=r"damaged or not a tensor checkpoint \(Unsupported operand") as info:
        load_pretrained(tmp_path / "damaged.pth")
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)
    torch.save({"something": 1}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_pretrained(tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_pretrained(tmp_path / "does-not-exist.pth")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path / "empty_folder")


def test_mismatched_config_file_is_refused(ref_dir, tmp_path):
    saved = save_pretrained(load_pretrained(_write_detectron2_pth(ref_dir, tmp_path / "m.pth"),
                                            config=ref_dir / "config.json"), tmp_path / "saved")
    config = json.loads((saved / "config.json").read_text())
    config["decoder"]["reduce_dim"] *= 2  # still divisible by the heads, another shape
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_pretrained(saved)
    config["decoder"]["bogus"] = 1
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="bogus"):
        load_pretrained(saved)


def test_clipseg_baseline_checkpoint_is_recognised(ref_dir, tmp_path):
    state = {k: v for k, v in _official_state(ref_dir).items()
             if not any(s in k for s in ("cond", "part_obj"))}
    torch.save({"model": {"clipseg_model." + k: v for k, v in state.items()}}, tmp_path / "clipseg.pth")
    model = load_pretrained(tmp_path / "clipseg.pth", config=ref_dir / "config.json")
    assert type(model).__name__ == "CLIPSegBaseline"
    with pytest.raises(CheckpointError, match="CLIPSegBaseline"):
        PartCLIPSeg.from_pretrained(tmp_path / "clipseg.pth", config=ref_dir / "config.json")


def test_init_from_clipseg_copies_film_and_head(ref_dir, tmp_path):
    """A Hugging Face CLIPSeg folder (keys clip.* / decoder.*) initialises PartCLIPSeg (SPEC §1.10)."""
    hf_state = {k: v.float() for k, v in _official_state(ref_dir).items()
                if (k.startswith("clip.") or k.startswith("decoder.")) and not any(
                    s in k for s in ("cond_film", "part_obj", "reduce_cond_embed", "position_ids"))}
    folder = tmp_path / "clipseg-rd64-refined"
    folder.mkdir()
    save_file(hf_state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text((ref_dir / "config.json").read_text())
    model = init_from_clipseg(folder, image_size=96)
    assert isinstance(model, PartCLIPSeg) and model.config.image_size == 96
    ours = convert_official_state_dict(hf_state)
    state = model.state_dict()
    for key, value in ours.items():
        assert torch.equal(state[key], value), key
    head = model.object_part_head
    assert torch.equal(head.film_mul.weight, model.decoder.film_mul.weight)
    assert torch.equal(head.film_add.bias, model.decoder.film_add.bias)
    for a, b in zip(head.mask_head.state_dict().values(), model.class_head.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.count_nonzero(head.visual_fuse.bias) == 0 and torch.count_nonzero(head.text_fuse.bias) == 0
    std = model.non_object_embedding.std().item()
    assert 0.5 * 512 ** -0.5 < std < 1.5 * 512 ** -0.5
    with pytest.raises(CheckpointError, match="neither"):
        (folder / "model.safetensors").unlink()
        init_from_clipseg(folder)


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: set its constant too, and let monkeypatch
    # restore it, so that later tests in this process are not offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="hub"):
        load_pretrained("nobody-here/no-such-partclipseg-model")
