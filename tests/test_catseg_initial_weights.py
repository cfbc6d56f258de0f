"""PartCATSeg's official starting point: CAT-Seg (B) + DINOv2 ViT-S/14 (``initial_weights.py``).

Tiny random checkpoints in the two foreign formats (CAT-Seg (B): detectron2 ``{"model": ...,
"iteration": ...}`` with the official head / CLIP names, a ResNet-101 backbone and guidance
projections fed by ResNet channel counts; DINOv2: the flat ``DinoVisionTransformer`` state dict) are
served from 127.0.0.1 (a hub-like server for ``hamacojr/CAT-Seg``, a plain HTTP server for the DINOv2
file); the full-size key lists are checked on the meta device.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from loopback_servers import FileServer, HubServer
from partclipseg.errors import CheckpointError, DownloadError
from partclipseg.hub.registry import WEIGHT_FILES
from partclipseg.model.partcatseg import PartCATSeg, PartCATSegConfig, get_partcatseg_config
from partclipseg.model.partcatseg.initial_weights import (CATSEG_BASE_DINOV2_INIT, NEW_IN_PARTCATSEG,
                                                          SHAPE_MAY_DIFFER, build_from_catseg_base_and_dinov2,
                                                          map_catseg_base_key, map_dinov2_hub_key,
                                                          start_from_catseg_base_and_dinov2)
from partclipseg.model.registry import initial_weights_builder
from test_catseg_reference import catseg_reference_dir
from test_catseg_weights import _official_keys

AGG = "sem_seg_head.predictor.transformer."
CATSEG_MODULES = ("sem_seg_head.predictor.clip_model.", AGG + "conv1.", AGG + "layers.", AGG + "guidance_projection.",
                  AGG + "text_guidance_projection.", AGG + "decoder_guidance_projection.", AGG + "decoder1.",
                  AGG + "decoder2.", AGG + "head.")
GUIDANCE_WEIGHTS = (AGG + "guidance_projection.0.weight", AGG + "decoder_guidance_projection.0.0.weight",
                    AGG + "decoder_guidance_projection.1.0.weight")
R101_CHANNELS = (1024, 512, 256)  # CAT-Seg (B)'s appearance guidance: ResNet-101 res4 / res3 / res2


def _resnet101_keys() -> dict[str, tuple[int, ...]]:
    """detectron2's ResNet-101 (FrozenBN) backbone keys, as in CAT-Seg (B)'s checkpoint."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        keys[f"backbone.{name}.weight"] = (out, inp, k, k)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            keys[f"backbone.{name}.norm.{stat}"] = (out,)

    conv("stem.conv1", 64, 3, 7)
    inp = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (23, 256)], start=2):
        for b in range(blocks):
            if b == 0:
                conv(f"res{stage}.0.shortcut", 4 * width, inp, 1)
            conv(f"res{stage}.{b}.conv1", width, inp if b == 0 else 4 * width, 1)
            conv(f"res{stage}.{b}.conv2", width, width, 3)
            conv(f"res{stage}.{b}.conv3", 4 * width, width, 1)
        inp = 4 * width
    return keys


def catseg_base_shapes(official: dict[str, tuple[int, ...]], channels: tuple[int, int, int] = R101_CHANNELS,
                       tiny_backbone: bool = False) -> dict[str, tuple[int, ...]]:
    """CAT-Seg (B)'s key list derived from a PartCATSeg official key list of the same dims: the modules
    CAT-Seg has (PartCATSeg kept their names), the guidance projections fed ``channels`` (ResNet-101's
    by default), the ResNet-101 backbone (two of its keys when ``tiny_backbone``)."""
    shapes = {k: v for k, v in official.items() if k.startswith(CATSEG_MODULES)}
    for key, c in zip(GUIDANCE_WEIGHTS, channels):
        shapes[key] = (shapes[key][0], c, *shapes[key][2:])
    shapes.update({"backbone.stem.conv1.weight": (8, 3, 7, 7), "backbone.res4.0.conv1.norm.running_var": (16,)}
                  if tiny_backbone else _resnet101_keys())
    return shapes


def test_catseg_full_size_catseg_base_and_dinov2_keys_land_as_the_official_recipe():
    """Meta device, full size: every CAT-Seg (B) and DINOv2 hub key is mapped or listed as unused; every
    tensor of our model comes from one file or is one of the listed new parts; the three appearance
    guidance weights (ResNet channels) are skipped while their biases load."""
    official = _official_keys()
    catseg = {k: torch.empty(s, device="meta") for k, s in catseg_base_shapes(official).items()}
    dinov2 = {k[len("backbone.dinov2."):]: torch.empty(s, device="meta") for k, s in official.items()
              if k.startswith("backbone.dinov2.")}
    assert len(dinov2) == 3 + 2 + 12 * 14 + 2  # cls, pos, mask tokens; patch embed; 12 blocks; final norm
    with torch.device("meta"):
        model = PartCATSeg(get_partcatseg_config("partcatseg-voc"))
    report = start_from_catseg_base_and_dinov2(model, {"model": catseg, "iteration": 79999}, dinov2)
    ours = model.state_dict()
    assert sorted(report.from_catseg + report.from_dinov2 + report.new) == sorted(ours)
    assert not set(report.from_catseg) & set(report.from_dinov2)
    assert {k for k in ours if k.startswith(("clip_image.", "clip_text."))} <= set(report.from_catseg)
    assert set(report.from_dinov2) == {k for k in ours if k.startswith("dino.dinov2.")}
    skipped = sorted(s.split(" ")[0] for s in report.shape_skipped)
    assert skipped == ["aggregator.appearance_projection.0.weight", "aggregator.decoder_guidance_projections.0.0.weight",
                       "aggregator.decoder_guidance_projections.1.0.weight"]
    assert {"aggregator.appearance_projection.0.bias", "aggregator.decoder_guidance_projections.0.0.bias",
            "aggregator.decoder_guidance_projections.1.0.bias"} <= set(report.from_catseg)
    new = sorted(set(report.new) - set(skipped))
    assert new and all(any(re.fullmatch(p, k) for p in NEW_IN_PARTCATSEG) for k in new)
    prefixes = {k.rsplit(".", 1)[0].split(".")[1] if k.startswith("aggregator.") else k for k in new}
    assert prefixes == {"specific_cost_embed", "specific_layers", "compose_projection", "background_text_embedding"}
    # unused: the ResNet-101, logit_scale, one shift mask per CAT-Seg layer, DINOv2's mask_token
    assert sorted(set(report.unused) - set(_resnet101_keys())) == [
        "mask_token", "sem_seg_head.predictor.clip_model.logit_scale",
        AGG + "layers.0.swin_block.block_2.attn_mask", AGG + "layers.1.swin_block.block_2.attn_mask"]
    assert len(report.unused) == len(_resnet101_keys()) + 4
    assert all(any(re.fullmatch(p, k) for p in SHAPE_MAY_DIFFER) for k in skipped)


def test_catseg_foreign_key_tables_refuse_unknown_keys():
    assert map_catseg_base_key("sem_seg_head.predictor.transformer.conv1.weight") == \
        "aggregator.part_object_cost_embed.weight"
    assert map_catseg_base_key("backbone.res4.22.conv3.norm.running_var") is None
    assert map_dinov2_hub_key("blocks.3.ls2.gamma") == "dino.dinov2.blocks.3.ls2.gamma"
    assert map_dinov2_hub_key("mask_token") is None
    with pytest.raises(CheckpointError, match="CAT-Seg.*mystery"):
        map_catseg_base_key("sem_seg_head.predictor.transformer.mystery.weight")
    with pytest.raises(CheckpointError, match="CAT-Seg.*conv2"):  # a PartCATSeg module: not in CAT-Seg (B)
        map_catseg_base_key("sem_seg_head.predictor.transformer.conv2.weight")
    with pytest.raises(CheckpointError, match="register tokens"):
        map_dinov2_hub_key("register_tokens")
    with pytest.raises(CheckpointError, match="DINOv2.*head.weight"):
        map_dinov2_hub_key("head.weight")


# ---------------------------------------------------------------------------- tiny files over loopback
@pytest.fixture(scope="module")
def tiny_files():
    """(config, CAT-Seg (B) .pth bytes, its state, DINOv2 .pth bytes, its state) at the fixture's dims."""
    path = catseg_reference_dir()
    official = {k: tuple(v.shape) for k, v in load_file(str(path / "model.safetensors")).items()}
    generator = torch.Generator().manual_seed(5)
    catseg = {k: (torch.randn(s, generator=generator) * 0.05) for k, s in catseg_base_shapes(official, (48, 40, 24), True).items()}
    dinov2 = {k[len("backbone.dinov2."):]: torch.randn(s, generator=generator) * 0.05 for k, s in official.items()
              if k.startswith("backbone.dinov2.")}
    catseg_bytes, dinov2_bytes = io.BytesIO(), io.BytesIO()
    torch.save({"model": catseg, "iteration": 79999}, catseg_bytes)
    torch.save(dinov2, dinov2_bytes)
    return PartCATSegConfig.load(path / "config.json"), catseg_bytes.getvalue(), catseg, dinov2_bytes.getvalue(), dinov2


DINO_PATH = "/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"


def test_catseg_initial_model_from_served_catseg_base_and_dinov2(tiny_files, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from partclipseg.model import build_model

    config, catseg_bytes, catseg, dinov2_bytes, dinov2 = tiny_files
    monkeypatch.setenv("PARTCLIPSEG_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert initial_weights_builder(CATSEG_BASE_DINOV2_INIT) == ("partcatseg", build_from_catseg_base_and_dinov2)
    with HubServer({"hamacojr/CAT-Seg/model_final_base.pth": catseg_bytes}) as hub, \
            FileServer({DINO_PATH: dinov2_bytes}) as plain:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setitem(WEIGHT_FILES, "dinov2_vits14",
                            dataclasses.replace(WEIGHT_FILES["dinov2_vits14"], file_url=plain.url + DINO_PATH))
        torch.manual_seed(3)
        model = build_from_catseg_base_and_dinov2(config, progress=False)
    assert hub.gets("model_final_base.pth") and plain.gets(DINO_PATH)
    torch.manual_seed(3)
    fresh = build_model(config).state_dict()  # the same random draws as the new parts
    ours = model.state_dict()
    # CAT-Seg's tensors where name and shape match (the guidance projections' biases too)
    for key, value in catseg.items():
        target = map_catseg_base_key(key)
        if target is not None and tuple(value.shape) == tuple(ours[target].shape):
            assert torch.equal(ours[target], value), key
    assert torch.equal(ours["aggregator.appearance_projection.0.bias"], catseg[AGG + "guidance_projection.0.bias"])
    for key, value in dinov2.items():
        if key != "mask_token":
            assert torch.equal(ours["dino.dinov2." + key], value), key
    # new parts: exactly the official initialisation
    for key in ("aggregator.appearance_projection.0.weight", "aggregator.decoder_guidance_projections.0.0.weight",
                "aggregator.decoder_guidance_projections.1.0.weight", "background_text_embedding"):
        assert torch.equal(ours[key], fresh[key]), key
    for key in [k for k in ours if k.startswith("aggregator.compose_projection.")]:
        assert torch.equal(ours[key], fresh[key]), key
    copies = {"aggregator.specific_cost_embed.": "aggregator.part_object_cost_embed.",
              "aggregator.specific_layers.": "aggregator.part_object_layers."}
    for new, origin in copies.items():
        keys = [k for k in ours if k.startswith(new)]
        assert keys
        for key in keys:  # the fresh random values of the CAT-Seg modules, not CAT-Seg's weights
            assert torch.equal(ours[key], fresh[origin + key[len(new):]]), key
    assert not torch.equal(ours["aggregator.specific_cost_embed.weight"], ours["aggregator.part_object_cost_embed.weight"])
    # cached: converted to safetensors with the files' own key names, the .pth gone; no network needed again
    for name, keys in (("catseg_base", catseg), ("dinov2_vits14", dinov2)):
        folder = tmp_path / "cache" / "weights" / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["manifest.json", WEIGHT_FILES[name].filename.replace(".pth", ".safetensors")])
        assert json.loads((folder / "manifest.json").read_text())["download"]["bytes"] > 0
    from partclipseg.cli import main

    assert main(["download", "catseg_base", "--to", str(tmp_path / "copy")]) == 0  # cached: no network
    assert (tmp_path / "copy" / "model_final_base.safetensors").is_file()
    again = build_from_catseg_base_and_dinov2(config, progress=False)
    assert torch.equal(again.state_dict()["clip_image.proj"], ours["clip_image.proj"])
    text = again.text_features(["cat's head", "dog's leg"])  # the text tower works from CAT-Seg's weights
    assert text.specific.shape[0] == 3 and torch.isfinite(text.specific).all()


def test_catseg_initial_weights_refuse_files_that_do_not_fit(tiny_files, tmp_path, monkeypatch):
    from partclipseg.model import build_model

    config, _, catseg, _, dinov2 = tiny_files
    model = build_model(config)
    lacking = {k: v for k, v in catseg.items() if not k.endswith("clip_model.ln_final.weight")}
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*clip_text.ln_final.weight"):
        start_from_catseg_base_and_dinov2(model, {"model": lacking}, dinov2)
    wrong = dict(catseg, **{AGG + "conv1.weight": torch.zeros(3, 80, 7, 7)})
    with pytest.raises(CheckpointError, match="conv1.weight has shape .*does not match CAT-Seg"):
        start_from_catseg_base_and_dinov2(model, {"model": wrong}, dinov2)
    with pytest.raises(CheckpointError, match="lacks 1 DINOv2 tensor"):
        start_from_catseg_base_and_dinov2(model, catseg, {k: v for k, v in dinov2.items() if k != "norm.bias"})
    # offline: one message with the URL and where to put the file by hand
    monkeypatch.setenv("PARTCLIPSEG_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(WEIGHT_FILES, "dinov2_vits14",
                        dataclasses.replace(WEIGHT_FILES["dinov2_vits14"], file_url="http://127.0.0.1:9/x.pth"))
    from partclipseg.hub.fetch import ensure_weight_file

    with pytest.raises(DownloadError, match=r"127\.0\.0\.1:9/x\.pth.*put it as .*weights/dinov2_vits14/"
                                            r"dinov2_vits14_pretrain\.pth"):
        ensure_weight_file(WEIGHT_FILES["dinov2_vits14"], progress=False)
