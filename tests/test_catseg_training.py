"""PartCATSeg through the common training interface: the loss of ``model.loss`` (the loop's label
format) against the official training losses of the reference fixtures, batch semantics, trainable
sets, and ``partclipseg train`` end to end (one process and two torchrun processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from partclipseg.errors import ConfigError
from partclipseg.losses import LossConfig
from test_catseg_reference import ATOL, _close, _train_batch, _vocabulary, catseg_ref  # noqa: F401 (fixture)

OFFICIAL = LossConfig(use_attention=False)


def _loop_labels(ref):
    """The fixture's training GT in the loop's format: -1 ignore, dataset object ids, object_to_model."""
    _, classes, objects = _train_batch(ref)
    info = ref["config"]["vocab"]["train"]
    vocab = _vocabulary(ref["config"], "train")
    parts = [torch.where(c == 255, -1, c) for c in classes]
    objs = [torch.where(o == 255, -1, o) for o in objects]
    object_to_model = torch.tensor(vocab.object_label_map(info["obj_classes"]))
    return vocab, parts, objs, object_to_model


def _interface_forward(model, ref, images):
    """The loop's path: train_preprocessor (sample + collate) -> forward(**text.forward_kwargs())."""
    vocab = _vocabulary(ref["config"], "train")
    prep = model.train_preprocessor("RGB")
    pixels = prep.collate([prep.sample(im.permute(1, 2, 0).numpy()) for im in images])
    text = model.tokenize_vocabulary(vocab)
    return model(pixels, **text.forward_kwargs()), text, pixels


@pytest.mark.reference
@pytest.mark.parametrize("per_image", [False, True])
def test_catseg_interface_loss_matches_official_training_losses(catseg_ref, per_image):
    model, expected = catseg_ref["model"], catseg_ref["outputs"]
    images, _, _ = _train_batch(catseg_ref)
    vocab, parts, objs, object_to_model = _loop_labels(catseg_ref)
    lambdas = catseg_ref["config"]["lambdas"]
    config = LossConfig(use_attention=False, per_image=per_image, part_lambda=lambdas["part"],
                        obj_lambda=lambdas["obj"], jsd_lambda=lambdas["jsd"])
    with torch.no_grad():
        out, text, pixels = _interface_forward(model, catseg_ref, images)
        losses = model.loss(out, parts, objs, text, object_to_model, config)
    for key in ("clip_input", "dino_input"):
        if f"train.{key}" in catseg_ref["inputs"]:
            _close(f"train.{key}", pixels[key], catseg_ref["inputs"][f"train.{key}"])
    b = len(images)
    compared = [k for k in ("total", "specific_part", "part", "obj", "jsd") if f"loss.{k}" in expected]
    assert len(compared) == 5
    for key in compared:
        if per_image and b > 1:  # the official number is the pooled one; per image = mean of single-image calls
            continue
        _close(f"loss.{key}", losses[key], expected[f"loss.{key}"])
    if not per_image:  # the pooled loss also exposes every official BCE call
        calls = catseg_ref["summary"]["train_losses"]["bce_calls_in_order"]
        for call in calls:
            key = next(k for k in losses if k.startswith("bce.") and k.split(".", 2)[2] == call["name"])
            assert abs(losses[key].item() - call["value"]) <= ATOL, key


@pytest.mark.reference
def test_catseg_loss_batch_semantics(catseg_ref):
    """per_image: the mean of single-image losses; pooled: one loss over the batch (a batch of the same
    image twice equals the single image; two different images do not equal their mean)."""
    model = catseg_ref["model"]
    images, _, _ = _train_batch(catseg_ref)
    vocab, parts, objs, object_to_model = _loop_labels(catseg_ref)
    image, part, obj = images[0], parts[0], objs[0]
    flipped = (image.flip(-1), part.flip(-1)[:, :110], obj.flip(-1)[:, :110])  # another size: per_image only
    with torch.no_grad():
        single, text, _ = _interface_forward(model, catseg_ref, [image])
        one = model.loss(single, [part], [obj], text, object_to_model, OFFICIAL)
        other_out, _, _ = _interface_forward(model, catseg_ref, [flipped[0][:, :, :110]])
        other = model.loss(other_out, [flipped[1]], [flipped[2]], text, object_to_model, OFFICIAL)
        pair, _, _ = _interface_forward(model, catseg_ref, [image, flipped[0][:, :, :110]])
        both = model.loss(pair, [part, flipped[1]], [obj, flipped[2]], text, object_to_model, OFFICIAL)
        twice, _, _ = _interface_forward(model, catseg_ref, [image, image])
        pooled = model.loss(twice, [part, part], [obj, obj], text, object_to_model,
                            LossConfig(use_attention=False, per_image=False))
    # the pair is padded to the batch's size, which moves its logits: compare with the pair's own rows
    with torch.no_grad():
        rows = [model.loss(type(pair)(pair.logits[i:i + 1], pair.object_part_logits[i:i + 1],
                                      costs={k: v[i:i + 1] for k, v in pair.costs.items()}),
                           [[part, flipped[1]][i]], [[obj, flipped[2]][i]], text, object_to_model, OFFICIAL)
                for i in range(2)]
    for key in ("total", "jsd", "obj"):
        torch.testing.assert_close(both[key], (rows[0][key] + rows[1][key]) / 2)
        torch.testing.assert_close(pooled[key], one[key], atol=1e-6, rtol=1e-5)
    assert abs(one["total"].item() - other["total"].item()) > 1e-4  # the two images differ
    with pytest.raises(ConfigError, match="one size"):
        model.loss(pair, [part, flipped[1]], [obj, flipped[2]], text, object_to_model,
                   LossConfig(use_attention=False, per_image=False))


def test_catseg_trainable_sets():
    from partclipseg.model.partcatseg import PartCATSeg, get_partcatseg_config
    from partclipseg.train.loop import set_trainable

    with torch.device("meta"):
        model = PartCATSeg(get_partcatseg_config("partcatseg-voc"))
    official = set(set_trainable(model, "official"))
    assert official and not any(n.startswith(("clip_image.", "clip_text.")) for n in official)
    assert "background_text_embedding" not in official  # no gradient path (official: never updated)
    assert any(n.startswith("dino.") for n in official) and any(n.startswith("aggregator.") for n in official)
    attention = set(set_trainable(model, "clip-attention")) - official
    assert "clip_image.positional_embedding" in attention
    assert "clip_image.transformer.resblocks.11.attn.in_proj_weight" in attention
    assert not any(".mlp." in n or n.startswith("clip_text.") for n in attention)
    full = set(set_trainable(model, "clip-image")) - official
    assert attention < full and all(n.startswith("clip_image.") for n in full)
    with pytest.raises(ConfigError, match="trainable"):
        model.is_trainable("aggregator.x", "VA+L+F+D")


# --------------------------------------------------------------------------- recipes
def test_catseg_recipes_hold_the_official_settings():
    from partclipseg.train import load_recipe

    for name, dataset in (("partcatseg_pascal_part_116", "pascal_part_116"),
                          ("partcatseg_ade20k_part_234", "ade20k_part_234"), ("partcatseg_partimagenet", "partimagenet")):
        cfg = load_recipe(name, ["root=/data"])
        cfg.validate()
        assert (cfg.dataset, cfg.architecture, cfg.trainable, cfg.image_size) == (dataset, "partcatseg", "official", None)
        assert (cfg.iterations, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.grad_clip) == (20000, 4, 2e-4, 1e-4, 0.01)
        assert cfg.lr_schedule == "cosine" and cfg.warmup_iters == 0 and cfg.lr_multipliers == {"dino.": 0.01}
        assert cfg.channel_order == "RGB" and cfg.pad_to == 384 and cfg.seed == 12345678
        assert not cfg.loss.use_attention and cfg.loss.background_weight == 0.05 and cfg.loss.per_image
        assert cfg.loss.jsd_lambda == cfg.loss.part_lambda == cfg.loss.obj_lambda == 1.0
        assert cfg.init == "catseg_base+dinov2_vits14:partcatseg-voc"  # registered start + the model preset
    voc = load_recipe("partcatseg_pascal_part_116")
    assert (voc.augmentation, voc.min_size, voc.max_size, voc.crop_size, voc.color_aug) == ("resize_flip", 384, 768, 384, True)
    pin = load_recipe("partcatseg_partimagenet")
    assert (pin.augmentation, pin.crop_size, pin.color_aug) == ("none", 0, False)
    text = (Path(__file__).parents[1] / "src/partclipseg/resources/recipes/partcatseg_pascal_part_116.json").read_text()
    sources = json.loads(text)["_sources"]
    assert set(sources) == set(json.loads(text)) - {"_comment", "_sources"}  # every value names its origin


@pytest.mark.parametrize("overrides, message", [
    (["image_size=384"], "image_size=null"),
    (["trainable=VA+L+F+D"], "trainable must be one of"),
    (["loss.use_attention=true"], "use_attention=false"),
    (['lr_multipliers={"clip_image.": 0.1}'], "match no trained parameter"),
    (["lr_schedule=step"], "lr_schedule must be one of"),
    (["lr_multipliers=[1]"], "must be a JSON object"),
    (["crop_size=-1"], "crop_size must be an integer"),
])
def test_catseg_recipe_errors_name_the_problem(tmp_path, overrides, message):
    from partclipseg.data import synthetic
    from partclipseg.train import load_recipe, train

    root = synthetic.make_pascal_part(tmp_path / "voc", n_train=2, n_val=1)
    with pytest.raises(ConfigError, match=message):
        train(load_recipe("partcatseg_pascal_part_116", [f"root={root}", "init=random:partcatseg-toy",
                                                         "iterations=1", "num_workers=0", *overrides]),
              tmp_path / "run", progress=False)


def test_catseg_cosine_schedule_and_warmup():
    from partclipseg.train import load_recipe
    from partclipseg.train.loop import scheduled_lr

    cfg = load_recipe("partcatseg_pascal_part_116", ["iterations=100"])
    assert scheduled_lr(cfg, 0) == pytest.approx(2e-4) and scheduled_lr(cfg, 50) == pytest.approx(1e-4)
    assert scheduled_lr(cfg, 100) == pytest.approx(0.0, abs=1e-12)
    warm = load_recipe("partcatseg_pascal_part_116", ["iterations=100", "warmup_iters=10", "warmup_factor=0.1"])
    end = 2e-4 * 0.5 * (1 + np.cos(np.pi * 0.1))
    assert scheduled_lr(warm, 0) == pytest.approx(2e-5) and scheduled_lr(warm, 5) == pytest.approx((2e-5 + end) / 2)
    assert scheduled_lr(warm, 10) == pytest.approx(end)


# --------------------------------------------------------------------------- partclipseg train
FAST = ["init=random:partcatseg-toy", "iterations=2", "batch_size=2", "num_workers=0", "log_period=1",
        "eval_period=1000", "lr=1e-3", "grad_clip=1.0", "min_size=64", "max_size=128", "crop_size=64", "pad_to=64",
        "trainable=clip-attention"]


@pytest.mark.slow
def test_catseg_two_process_ddp_equals_single_process(tmp_path):
    """torchrun x 2 (gloo) = one process with the same global batch (per-image loss, lr multipliers,
    colour jitter and crops drawn per sample position)."""
    from partclipseg.data import synthetic
    from partclipseg.train import load_recipe, train
    from partclipseg.train import loop as train_loop

    root = synthetic.make_pascal_part(tmp_path / "voc", n_train=4, n_val=1)
    args = [f"root={root}", *FAST]
    train(load_recipe("partcatseg_pascal_part_116", args), tmp_path / "single", progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541", "-m",
           "partclipseg", "train", "partcatseg_pascal_part_116", *args, "--out", str(tmp_path / "ddp"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    assert set(a) == set(b)
    # Equal up to float rounding: the two runs reduce the batch's gradients in another order, and Adam's
    # first steps turn last-bit differences of near-zero gradients into updates of up to +-lr, so a few
    # elements (here 1 of 4608 in one tensor, 9e-5) may differ by at most lr x steps; all others agree
    # within 1e-5. A wrong gradient split or a rank missing from the mean moves far more elements.
    lr, steps = 1e-3, 2
    different = total = 0
    for key in a:
        close = torch.isclose(b[key], a[key], atol=1e-5, rtol=1e-4)
        different += int((~close).sum())
        total += close.numel()
        assert (b[key] - a[key]).abs().max().item() <= lr * steps * 1.01, key
    assert different <= max(1, total // 10000), f"{different} of {total} weights differ"
    init = train_loop.build_initial_model(load_recipe("partcatseg_pascal_part_116", args)).state_dict()
    moved = {k: (a[k] - init[k]).abs().max().item() for k in a}
    assert max(v for k, v in moved.items() if k.startswith("aggregator.")) > 1e-4
    assert max(v for k, v in moved.items() if k.startswith("dino.")) > 0  # trained at lr x 0.01
    assert max(v for k, v in moved.items() if k.startswith("clip_text.")) == 0  # frozen
    assert moved["clip_image.positional_embedding"] > 0 and moved["clip_image.transformer.resblocks.0.mlp.c_fc.weight"] == 0
    losses = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2] and all(np.isfinite(r["total"]) for r in losses)


def test_official_partcatseg_augmentations():
    from partclipseg.train.data import _hsv_to_rgb, _rgb_to_hsv, color_aug_ssd, pad_or_crop_to, random_crop

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    labels = rng.integers(-1, 5, (50, 70))
    padded = pad_or_crop_to(image, 64)
    assert padded.shape == (64, 64, 3) and (padded[50:] == 128).all() and np.array_equal(padded[:50, :64], image[:, :64])
    cut = pad_or_crop_to(labels, 40, -1)  # the official F.pad with a negative size cuts at the bottom/right
    assert np.array_equal(cut, labels[:40, :40])
    assert (pad_or_crop_to(labels, 64, -1)[50:] == -1).all()
    crops = {random_crop(image, labels, labels, 32, np.random.default_rng(s))[0].tobytes() for s in range(5)}
    assert len(crops) > 1 and all(len(c) == 32 * 32 * 3 for c in crops)
    assert random_crop(image, labels, labels, 64, rng)[0].shape == (50, 64, 3)  # min(size, side)
    # round trip: a few grey levels at most (2-degree hue steps, as with uint8 HSV in OpenCV)
    assert np.abs(_hsv_to_rgb(_rgb_to_hsv(image)).astype(int) - image).max() <= 5
    jittered = [color_aug_ssd(image, np.random.default_rng(s)) for s in range(8)]
    assert all(j.shape == image.shape and j.dtype == np.uint8 for j in jittered)
    assert len({j.tobytes() for j in jittered}) > 4


def test_catseg_named_starting_point_reaches_its_builder_with_the_preset(monkeypatch):
    """``init=<registered start>:<preset>`` builds the preset's config and calls the registered builder
    (``model.registry.initial_weights_builder``) after seeding; a missing preset or another architecture
    is refused by name."""
    from partclipseg.errors import ConfigError
    from partclipseg.model import registry
    from partclipseg.model.partcatseg import CATSEG_BASE_DINOV2_INIT
    from partclipseg.train import load_recipe
    from partclipseg.train.loop import build_initial_model

    calls = []

    def fake_builder(config, progress=True):
        calls.append((config, torch.rand(1).item()))
        return "built"

    monkeypatch.setitem(registry._INITIAL_WEIGHTS, CATSEG_BASE_DINOV2_INIT, ("partcatseg", fake_builder))
    cfg = load_recipe("partcatseg_pascal_part_116", ["root=/data", f"init={CATSEG_BASE_DINOV2_INIT}:partcatseg-toy"])
    assert build_initial_model(cfg) == "built"
    config, draw = calls[0]
    assert config == registry.architecture_class("partcatseg").preset_config("partcatseg-toy", None)
    torch.manual_seed(cfg.seed)
    assert draw == torch.rand(1).item()  # seeded with the recipe's seed before the builder runs
    no_preset = load_recipe("partcatseg_pascal_part_116", ["root=/data", f"init={CATSEG_BASE_DINOV2_INIT}"])
    with pytest.raises(ConfigError, match="needs a config preset"):
        build_initial_model(no_preset)
    other = load_recipe("pascal_part_116", ["root=/data", f"init={CATSEG_BASE_DINOV2_INIT}:partcatseg-toy"])
    with pytest.raises(ConfigError, match="starts a partcatseg model but the recipe trains partclipseg"):
        build_initial_model(other)
