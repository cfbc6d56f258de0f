"""The package's own CLIP towers (toy pretraining) inside PartCATSeg: the key table, the derived config,
equal computations of both implementations, and ``export_towers(..., "partcatseg")``.

Tiny random towers (no pretraining): every parameter, LayerNorms included, is perturbed so that a
wrong mapping (a transposed matrix, swapped q/k/v, a LayerNorm left at 1 / 0) shows.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from partclipseg.config import PartCLIPSegConfig, TextConfig, VisionConfig, get_config
from partclipseg.errors import CheckpointError, ConfigError
from partclipseg.model import build_model
from partclipseg.model.partcatseg.config import TOY_TEMPLATES, get_partcatseg_config
from partclipseg.model.partcatseg.text import prompt_token_ids
from partclipseg.model.partcatseg.toy_towers import (IMAGE_HEAD_KEYS, UNUSED_TOWER_KEYS, build_from_towers,
                                                     convert_tower_state_dict, map_tower_key,
                                                     partcatseg_config_for_towers)
from partclipseg.tokenizer import get_tokenizer
from partclipseg.train.pretrain import ContrastiveTowers, export_towers, part_model_from_towers
from partclipseg.weights import load_pretrained, save_pretrained

TOL = 1e-5


def _source_config(native: int) -> PartCLIPSegConfig:
    """Small towers of the toy2 kind (2 x width MLPs, 16 px patches), native position grid native / 16."""
    config = get_config("tiny-fast")
    config.vision = VisionConfig(hidden_size=48, num_layers=3, num_heads=4, intermediate_size=96, image_size=native,
                                 patch_size=16)
    config.text = TextConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    config.decoder = dataclasses.replace(config.decoder, extract_layers=(0, 1, 2))
    config.projection_dim = 40
    config.validate()
    return config


def _random_towers(native: int = 64, seed: int = 0) -> ContrastiveTowers:
    towers = ContrastiveTowers(_source_config(native))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in towers.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "norm.weight" in name:
                p.copy_(1 + 0.2 * noise)  # LayerNorm gains
            elif name == "logit_scale":
                continue
            else:
                p.copy_(0.1 * noise)
    return towers.eval()


def _catseg_from(towers: ContrastiveTowers):
    torch.manual_seed(0)
    model, report = build_from_towers(towers.config, towers.state_dict())
    return model.eval(), report


# ----------------------------------------------------------------------------- the key table
def test_every_source_key_is_mapped_or_unused_and_fills_every_clip_key():
    towers = _random_towers()
    keys = set(towers.state_dict())
    for arch in ("partclipseg", "clipseg"):  # a saved part model (pretraining's final/) has more around the towers
        keys |= set(build_model(dataclasses.replace(towers.config, architecture=arch)).state_dict())
    targets: dict[str, list[str]] = {}
    unused = []
    for key in sorted(keys):
        target = map_tower_key(key)
        if target is None:
            unused.append(key)
        else:
            targets.setdefault(target.key, []).append(target.transform)
    assert "logit_scale" in unused and any(k.startswith("decoder.") for k in unused)
    assert all(any(re.fullmatch(p, k) for p in UNUSED_TOWER_KEYS) for k in unused)
    assert not any(k.startswith(("vision.", "text.")) for k in unused)
    model, report = _catseg_from(towers)
    clip_keys = {k for k in model.state_dict() if k.startswith(("clip_image.", "clip_text."))}
    assert set(targets) == clip_keys  # every CLIP tensor of PartCATSeg comes from the source
    assert all(t == ["copy"] or t == ["transpose"] or t == ["positions"] or
               sorted(t) == ["in_proj:k", "in_proj:q", "in_proj:v"] for t in targets.values())
    assert report.fresh == [] and set(report.loaded) == clip_keys and report.unused == ["logit_scale"]


def test_unknown_and_incomplete_sources_are_refused():
    with pytest.raises(CheckpointError, match="unknown key"):
        map_tower_key("vision.layers.0.attn.qkv.weight")
    with pytest.raises(CheckpointError, match="unknown key"):
        map_tower_key("something_new")
    towers = _random_towers()
    state = {k: v for k, v in towers.state_dict().items() if k != "text.layers.1.attn.k_proj.bias"}
    with pytest.raises(CheckpointError, match="lacks the k projection"):
        convert_tower_state_dict(state, partcatseg_config_for_towers(towers.config,
                                                                      get_partcatseg_config("partcatseg-toy")).clip)
    state = {k: v for k, v in towers.state_dict().items() if not k.startswith("text.layers.1.")}
    with pytest.raises(CheckpointError, match="lacks"):
        build_from_towers(towers.config, state)


def test_derived_config_takes_the_tower_shapes_and_keeps_the_preset():
    source = get_config("toy2")
    base = get_partcatseg_config("partcatseg-toy")
    config = partcatseg_config_for_towers(source, base)
    c = config.clip
    assert (c.vision_width, c.vision_layers, c.vision_heads, c.vision_patch_size, c.vision_mlp_hidden) == (96, 4, 4, 16, 192)
    assert (c.text_width, c.text_layers, c.text_heads, c.text_mlp_hidden, c.embed_dim) == (64, 3, 4, 128, 64)
    assert c.image_resolution == config.clip_resolution == 128 and config.cost_grid == 8
    assert config.dino == base.dino and config.templates == TOY_TEMPLATES
    assert config.aggregator == base.aggregator and not config.official.text_features_fp16
    bad = get_config("toy2")
    bad.text.layer_norm_eps = 1e-6
    with pytest.raises(ConfigError, match="layer_norm_eps"):
        partcatseg_config_for_towers(bad, base)
    # a saved config round-trips with the new MLP-width fields (and old configs without them still load)
    from partclipseg.model.partcatseg.config import PartCATSegConfig

    assert PartCATSegConfig.from_dict(config.to_dict()) == config
    old = base.to_dict()
    for k in ("vision_mlp_width", "text_mlp_width"):
        old["clip"].pop(k)
    assert PartCATSegConfig.from_dict(old).clip.vision_mlp_hidden == 4 * base.clip.vision_width


# ----------------------------------------------------------------------------- equal computations
@torch.no_grad()
def test_same_ids_give_the_same_text_features():
    towers = _random_towers()
    model, _ = _catseg_from(towers)
    names = ["dog's head", "cow", "bicycle's handlebar", "a, b"]
    # PartCATSeg's path: zero-padded 77-token prompts through its tower
    ids, counts = prompt_token_ids(names, TOY_TEMPLATES, model.config.clip.context_length)
    theirs = model.clip_text(ids)
    # ours: the same prompts through our tokenizer (padding to the longest, attention mask) and tower
    texts = [t.format(p) for n in names for t in TOY_TEMPLATES for p in n.split(", ")]
    our_ids, mask = get_tokenizer()(texts, padding="longest")
    ours = towers.encode_text(our_ids, mask)
    assert theirs.shape == ours.shape and float(ours.abs().max()) > 0.1
    assert float((theirs - ours).abs().max()) < TOL
    # the per-template features the aggregator reads: our features, normalised (split names averaged)
    features = model.encode_class_names(names[:3])[:-1]  # [K, Tpl, E], last row = background
    expected = F.normalize(ours[: 3 * len(TOY_TEMPLATES)], dim=-1).reshape(3, len(TOY_TEMPLATES), -1)
    assert float((features - expected).abs().max()) < TOL


@pytest.mark.parametrize("native", [64, 128])  # 4 x 4 table resized to the 8 x 8 grid, and one that fits
@torch.no_grad()
def test_same_image_gives_the_same_tokens_and_head(native):
    towers = _random_towers(native)
    model, _ = _catseg_from(towers)
    tower = model.clip_image
    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    states = towers.vision(pixels)  # ours: embedding + every block's output at 128 px
    x = tower.embed(pixels)
    assert float((x - states[0]).abs().max()) < TOL
    for i, block in enumerate(tower.transformer.resblocks):  # every block with attention
        x = block(x)
        assert float((x - states[i + 1]).abs().max()) < TOL, i
    # the image head on every token, and the pretraining's pooled image embedding
    assert float((tower.ln_post(x) @ tower.proj - towers.image_projection(towers.image_norm(x))).abs().max()) < TOL
    pooled = tower.ln_post(states[-1][:, 1:].mean(1)) @ tower.proj
    assert float((pooled - towers.encode_image(pixels)).abs().max()) < TOL
    # CAT-Seg's dense features: the last block without attention (each token keeps its own value), then the head;
    # the same computation written with our tower's modules
    last = towers.vision.layers[-1]
    h = states[-2]
    h = h + last.attn.out_proj(last.attn.v_proj(last.norm1(h)))
    h = h + last.mlp(last.norm2(h))
    dense = tower.forward_dense(pixels)
    assert float((dense - towers.image_projection(towers.image_norm(h))).abs().max()) < TOL
    assert float((dense - towers.image_projection(towers.image_norm(states[-1]))).abs().max()) > 1e-3  # by design


# ----------------------------------------------------------------------------- export_towers
def _fake_pretraining_run(root: Path, towers: ContrastiveTowers) -> Path:
    """What ``pretrain`` leaves: final/ (a PartCLIPSeg with the towers) and the last checkpoint's towers."""
    save_pretrained(part_model_from_towers(towers, seed=0).eval(), root / "final")
    ckpt = root / "checkpoints" / "step_0000004"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in towers.state_dict().items()}, str(ckpt / "towers.safetensors"))
    torch.save({"step": 4}, ckpt / "trainer.pt")
    return root / "final"


def test_export_towers_builds_a_partcatseg_with_the_pretrained_towers(tmp_path: Path):
    towers = _random_towers()
    final = _fake_pretraining_run(tmp_path / "run", towers)
    out = export_towers(final, tmp_path / "init", "partcatseg", seed=3)
    model = load_pretrained(out)
    assert model.config.architecture == "partcatseg" and model.config.clip.vision_mlp_hidden == 96
    reference, _ = _catseg_from(towers)
    ours, theirs = model.state_dict(), reference.state_dict()
    for key in ours:
        if key.startswith(("clip_image.", "clip_text.")):
            assert torch.equal(ours[key], theirs[key]), key  # head included: from the checkpoint
    assert torch.equal(ours["clip_image.ln_post.weight"], towers.image_norm.weight)
    # the rest is freshly initialised from the seed: the same seed gives the same model
    again = load_pretrained(export_towers(final, tmp_path / "again", "partcatseg", seed=3)).state_dict()
    other = load_pretrained(export_towers(final, tmp_path / "other", "partcatseg", seed=4)).state_dict()
    assert all(torch.equal(ours[k], again[k]) for k in ours)
    assert not torch.equal(ours["background_text_embedding"], other["background_text_embedding"])
    assert not torch.equal(ours["dino.dinov2.pos_embed"], other["dino.dinov2.pos_embed"])
    # a saved model that is not a pretraining run's final/: the towers come, the image head starts fresh
    saved = save_pretrained(part_model_from_towers(towers), tmp_path / "saved")
    with pytest.warns(UserWarning, match="image head"):
        plain = export_towers(saved, tmp_path / "nohead", "partcatseg")
    fresh = load_pretrained(plain).state_dict()
    assert torch.equal(fresh["clip_text.text_projection"], theirs["clip_text.text_projection"])
    assert not torch.equal(fresh["clip_image.proj"], theirs["clip_image.proj"])
    assert set(IMAGE_HEAD_KEYS) <= set(fresh)


def test_partcatseg_recipe_starts_from_a_pretraining_run_final(tmp_path: Path):
    """``init=PRETRAIN_RUN/final`` in a PartCATSeg recipe = ``export_towers(final, ..., "partcatseg",
    seed=<the recipe's>)`` without the detour through a folder."""
    from partclipseg.train import load_recipe
    from partclipseg.train.loop import build_initial_model

    towers = _random_towers()
    final = _fake_pretraining_run(tmp_path / "run", towers)
    config = load_recipe("toy_world_partcatseg", ["root=/data", f"init={final}", "seed=5"])
    model = build_initial_model(config)
    exported = load_pretrained(export_towers(final, tmp_path / "init", "partcatseg", seed=5)).state_dict()
    assert model.config.architecture == "partcatseg"
    assert all(torch.equal(v, exported[k]) for k, v in model.state_dict().items())
    # an architecture without a tower builder still refuses a model of another architecture
    with pytest.raises(ConfigError, match="is a partcatseg model but the recipe trains partclipseg"):
        build_initial_model(load_recipe("toy_world", ["root=/data", f"init={tmp_path / 'init'}"]))
