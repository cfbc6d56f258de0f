"""PartCATSeg config and official key mapping (full size on the meta device; the fixture's weights)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from partclipseg.errors import CheckpointError, ConfigError
from partclipseg.model.partcatseg import PartCATSeg, PartCATSegConfig, get_partcatseg_config
from partclipseg.model.partcatseg.weights import (DROPPED_OFFICIAL_KEYS, convert_official_partcatseg_state_dict,
                                                  load_official_partcatseg_weights, map_official_partcatseg_key)
from test_catseg_reference import catseg_reference_dir


def _official_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (catseg_reference_dir() / "keys_full.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape, _dtype = line.split("\t")
            keys[name] = tuple(json.loads(shape))
    return keys


def test_catseg_every_full_size_official_key_maps_onto_the_full_size_model():
    """keys_full.txt: every official tensor maps to ours with its shape or is dropped for a stated
    reason, and every tensor of our full-size model comes from one official key."""
    official = _official_keys()
    assert len(official) == 804
    with torch.device("meta"):
        ours = PartCATSeg(get_partcatseg_config("partcatseg-voc")).state_dict()
    mapped, dropped = {}, []
    for key, shape in official.items():
        target = map_official_partcatseg_key(key)
        if target is None:
            dropped.append(key)
            continue
        assert target not in mapped, f"two official keys map to {target}"
        mapped[target] = shape
    assert set(mapped) == set(ours)
    for key, shape in mapped.items():
        assert tuple(ours[key].shape) == shape, key
    # dropped: the unused layers_object copy, logit_scale, mask_token, one shift mask per layer of each branch
    per_reason = {p: [k for k in dropped if re.fullmatch(p, k)] for p in DROPPED_OFFICIAL_KEYS}
    assert sum(len(v) for v in per_reason.values()) == len(dropped)
    layers = [k for k in official if k.startswith("sem_seg_head.predictor.transformer.layers.")]
    counts = sorted(len(v) for v in per_reason.values())
    assert counts == sorted([len(layers), 1, 1, 2 * get_partcatseg_config("partcatseg-voc").aggregator.num_layers])


def test_catseg_unknown_official_key_is_refused():
    with pytest.raises(CheckpointError, match="sem_seg_head.predictor.transformer.mystery"):
        map_official_partcatseg_key("sem_seg_head.predictor.transformer.mystery.weight")
    with pytest.raises(CheckpointError, match="clip_model.visual_typo"):
        map_official_partcatseg_key("sem_seg_head.predictor.clip_model.visual_typo.weight")


def test_catseg_fixture_weights_load_strictly_and_shift_masks_equal_the_official_buffers():
    from safetensors.torch import load_file

    path = catseg_reference_dir()
    official = load_file(str(path / "model.safetensors"))
    model = PartCATSeg(PartCATSegConfig.load(path / "config.json"),
                       json.loads((path / "config.json").read_text())["templates"]["list"])
    load_official_partcatseg_weights(model, official)
    converted = convert_official_partcatseg_state_dict({"model": official})
    for key, value in converted.items():
        assert torch.equal(model.state_dict()[key], value.float()), key
    masks = [k for k in official if k.endswith("attn_mask")]
    assert masks
    for key in masks:
        layer = key.split("transformer.")[1]
        group, index = layer.split(".")[0], int(layer.split(".")[1])
        layers = model.aggregator.part_object_layers if group == "layers" else model.aggregator.specific_layers
        assert torch.equal(layers[index].spatial.block_2.attn_mask, official[key].float()), key
    missing = {k: v for k, v in official.items() if not k.startswith("backbone.dinov2.norm")}
    with pytest.raises(CheckpointError, match="missing key.*dino.dinov2.norm"):
        load_official_partcatseg_weights(model, missing)


def test_catseg_fixture_config_equals_the_tiny_preset():
    path = catseg_reference_dir()
    data = json.loads((path / "config.json").read_text())
    if data.get("spec") != "tiny":
        pytest.skip("the fixture folder is not the 'tiny' spec")
    assert PartCATSegConfig.load(path / "config.json") == get_partcatseg_config("partcatseg-tiny")


def test_catseg_config_round_trip_and_strict_loading(tmp_path):
    config = get_partcatseg_config("partcatseg-voc")
    config.save(tmp_path / "config.json")
    assert PartCATSegConfig.load(tmp_path / "config.json") == config
    data = config.to_dict()
    data["aggregator"]["mystery"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="mystery"):
        PartCATSegConfig.load(tmp_path / "bad.json")
    data = config.to_dict()
    data["aggregator"]["hidden_dim"] = 130
    with pytest.raises(ConfigError, match="130"):
        PartCATSegConfig.from_dict(data)
    with pytest.raises(ConfigError, match="unknown PartCATSeg config preset"):
        get_partcatseg_config("nope")


def test_catseg_detectron2_checkpoint_file_loads_and_bad_files_are_refused(tmp_path):
    from safetensors.torch import load_file

    path = catseg_reference_dir()
    official = load_file(str(path / "model.safetensors"))
    torch.save({"model": {k: v.float() for k, v in official.items()}, "iteration": 19999}, tmp_path / "model_final.pth")
    config = PartCATSegConfig.load(path / "config.json")
    templates = json.loads((path / "config.json").read_text())["templates"]["list"]
    a, b = PartCATSeg(config, templates), PartCATSeg(config, templates)
    load_official_partcatseg_weights(a, tmp_path / "model_final.pth")
    load_official_partcatseg_weights(b, path / "model.safetensors")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    with pytest.raises(CheckpointError, match="not found"):
        load_official_partcatseg_weights(a, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_official_partcatseg_weights(a, tmp_path / "junk.pth")


def test_catseg_and_partclipseg_configs_load_strictly_through_one_helper(tmp_path):
    """Both config classes read files and sections through ``config.strict_from_dict`` /
    ``read_config_file``: the same messages for the same mistakes."""
    from partclipseg.config import PartCLIPSegConfig, get_config

    cases = [(PartCATSegConfig, get_partcatseg_config("partcatseg-tiny").to_dict(), "aggregator", "PartCATSeg "),
             (PartCLIPSegConfig, get_config("tiny-fast").to_dict(), "decoder", "")]
    for kind, data, section, label in cases:
        with pytest.raises(ConfigError, match=f"config file not found: {re.escape(str(tmp_path / 'none.json'))}"):
            kind.load(tmp_path / "none.json")
        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(ConfigError, match="is not valid JSON"):
            kind.load(tmp_path / "bad.json")
        with pytest.raises(ConfigError, match=rf"unknown field\(s\) \['mystery'\] in config section '{section}'"):
            kind.from_dict(dict(data, **{section: dict(data[section], mystery=1)}))
        with pytest.raises(ConfigError, match=f"config field '{section}' must be an object, got int"):
            kind.from_dict(dict(data, **{section: 3}))
        with pytest.raises(ConfigError, match=re.escape(f"unknown {label}config field(s) ['zzz']")):
            kind.from_dict(dict(data, zzz=1))
        loaded = kind.from_dict(json.loads(json.dumps(data)))  # JSON lists come back as tuples
        assert loaded == kind.from_dict(data)
