"""Toy language-image pretraining: captions, the CLIP loss, the loop (resume, final model), part
training from the pretrained towers, best-checkpoint selection, the CLI verb and the default-model script."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from partclipseg.cli import main as cli_main
from partclipseg.data.toyworld import COLOUR_WORDS, OBJECT_PARTS, OBJECTS_WITHOUT_PARTS, TEXTURE_WORDS, generate_toy_world
from partclipseg.errors import CheckpointError, ConfigError
from partclipseg.train import load_recipe, train
from partclipseg.train.pretrain import (
    ContrastiveTowers,
    PretrainConfig,
    caption_for,
    clip_loss,
    load_pretrain_recipe,
    pretrain,
)
from partclipseg.train.select import best_checkpoint
from partclipseg.train.select import main as select_main
from partclipseg.weights import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
TINY = ["init=random:tiny-fast", "image_size=32", "batch_size=4", "iterations=4", "checkpoint_period=2",
        "eval_period=4", "log_period=1", "warmup=2"]
PART_WORDS = {p for parts in OBJECT_PARTS.values() for p in parts}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy"), n_train=8, n_val=6, size_range=(64, 96), seed=3)


# ----------------------------------------------------------------------------- captions
def test_captions_are_object_level_and_vary():
    objects = [{"object": "dog", "colour": "brown", "texture": "spotted"},
               {"object": "bus", "colour": "orange", "texture": "plain"}]
    captions = {caption_for(objects, np.random.default_rng(i)) for i in range(60)}
    assert len(captions) > 20  # templates, order and optional words vary
    for text in captions:
        words = set(re.findall(r"[a-z]+", text))
        assert {"dog", "bus"} <= words and not words & PART_WORDS, text
        assert "plain" not in words  # "plain" is never said
        assert "an orange bus" in text or "a bus" in text
    assert caption_for(objects, np.random.default_rng(5)) == caption_for(objects, np.random.default_rng(5))


def test_generator_writes_caption_words(toy: Path):
    for split, n in (("train", 8), ("val", 6)):
        captions = json.loads((toy / "captions" / f"{split}.json").read_text())
        assert sorted(captions) == [f"toy_{split}_{k:06d}" for k in range(n)]
        for words in captions.values():
            assert 1 <= len(words) <= 3
            for w in words:
                assert w["object"] in set(OBJECT_PARTS) | set(OBJECTS_WITHOUT_PARTS)
                assert w["colour"] in COLOUR_WORDS and w["texture"] in TEXTURE_WORDS.values()


# ----------------------------------------------------------------------------- loss
def test_clip_loss_is_symmetric_infonce():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    scale = torch.tensor(2.0)
    i, t = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    logits = scale.exp() * i @ t.T
    by_hand = -(logits.log_softmax(1).diag().mean() + logits.log_softmax(0).diag().mean()) / 2
    assert torch.allclose(clip_loss(img, txt, scale), by_hand, atol=1e-6)
    assert torch.allclose(clip_loss(img, txt, scale), clip_loss(txt, img, scale), atol=1e-6)
    assert clip_loss(img, img * 3, torch.tensor(4.0)) < clip_loss(img, txt, torch.tensor(4.0))


# ----------------------------------------------------------------------------- recipes
def test_pretrain_recipe_and_overrides():
    cfg = load_pretrain_recipe("toy_world_pretrain", ["root=/data", "iterations=7"])
    assert cfg.kind == "pretrain" and cfg.iterations == 7 and cfg.root == "/data" and cfg.init == "random:toy2"
    with pytest.raises(ConfigError, match="unknown pretraining key 'nope'"):
        load_pretrain_recipe("toy_world_pretrain", ["nope=1"])
    with pytest.raises(ConfigError, match="not a pretraining recipe"):
        load_pretrain_recipe("toy_world")
    with pytest.raises(ConfigError, match="partclipseg pretrain"):
        load_recipe("toy_world_pretrain")
    with pytest.raises(ConfigError, match="root"):
        PretrainConfig().validate()


def test_part_recipe_starts_from_towers_and_freezes_text():
    cfg = load_recipe("toy_world")
    assert cfg.trainable == "all-but-text-layers" and cfg.init == "random:toy2" and cfg.eval_protocol == "pred-all"
    assert cfg.supervision == "parts+objects" and not cfg.skip_unseen_images
    assert cfg.keep_checkpoints * cfg.checkpoint_period >= cfg.iterations  # the best checkpoint survives


# ----------------------------------------------------------------------------- the loop
def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_pretrain_learns_resumes_and_hands_over_towers(toy: Path, tmp_path: Path):
    full = pretrain(load_pretrain_recipe("toy_world_pretrain", [f"root={toy}", *TINY]), tmp_path / "full",
                    progress=False)
    # killed after step 2 (its checkpoint), then resumed: the same towers as the uninterrupted run
    half = load_pretrain_recipe("toy_world_pretrain", [f"root={toy}", *TINY, "iterations=4"])
    part = tmp_path / "part"
    pretrain(half, part, progress=False)
    import shutil

    shutil.rmtree(part / "checkpoints" / "step_0000004")
    shutil.rmtree(part / "final")
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(half, part, progress=False)
    # what a write killed half-way leaves: a temporary folder with a torn trainer.pt; resume ignores it
    torn = part / "checkpoints" / "step_0000004.tmp"
    torn.mkdir()
    (torn / "trainer.pt").write_bytes(b"PK\x03\x04 torn")
    pretrain(half, part, resume=True, progress=False)
    assert not torn.exists()
    # a finished run resumes to its final/ at once (untouched); another config is refused, not overwritten
    stamp = (part / "final" / "model.safetensors").stat().st_mtime_ns
    assert pretrain(half, part, resume=True, progress=False) == part / "final"
    assert (part / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    other = load_pretrain_recipe("toy_world_pretrain", [f"root={toy}", *TINY, "iterations=4", "lr=0.5"])
    saved = (part / "config.json").read_text()
    with pytest.raises(ConfigError, match="lr"):
        pretrain(other, part, resume=True, progress=False)
    assert (part / "config.json").read_text() == saved
    a = _tensors(tmp_path / "full" / "checkpoints" / "step_0000004" / "towers.safetensors")
    b = _tensors(part / "checkpoints" / "step_0000004" / "towers.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2, 3, 4]
    assert any(r.get("eval") == "zero-shot" and "top1_unseen" in r for r in steps)
    # final/ is a PartCLIPSeg with the pretrained towers, loadable by the package's loader
    model = load_pretrained(full)
    towers = a
    for name, value in model.state_dict().items():
        if name.startswith(("vision.", "text.")):
            assert torch.equal(value, towers[name]), name
    assert "image_projection.weight" in towers and "logit_scale" in towers
    # part training from the towers: the text layers stay as pretrained, the vision tower moves; of the
    # token embeddings only the rows of words in the training prompts move (with the paper's supervision,
    # not the unseen objects' names; parts+objects prompts them on their object masks)
    run = train(load_recipe("toy_world", [f"root={toy}", f"init={full}", "supervision=parts",
                                          "skip_unseen_images=true", "image_size=32", "iterations=2",
                                          "batch_size=2", "checkpoint_period=1", "eval_period=1", "eval_limit=2",
                                          "log_period=1"]), tmp_path / "parts", progress=False)
    trained = load_pretrained(run)
    moved = False
    for name, value in trained.state_dict().items():
        if name == "text.token_embedding.weight":
            continue
        if name.startswith("text."):
            assert torch.equal(value, towers[name]), name
        elif name.startswith("vision.") and not torch.equal(value, towers[name]):
            moved = True
    assert moved
    from partclipseg.tokenizer import get_tokenizer

    ids, _ = get_tokenizer()(["cow", "bus", "head", "wheel"], padding="longest")  # [BOS, word, EOS]
    before, after = towers["text.token_embedding.weight"], trained.state_dict()["text.token_embedding.weight"]
    unseen_rows, part_rows = ids[:2, 1], ids[2:, 1]
    assert torch.equal(after[unseen_rows], before[unseen_rows])
    assert not torch.equal(after[part_rows], before[part_rows])
    folder, record = best_checkpoint(tmp_path / "parts")
    assert folder.name in ("step_0000001", "step_0000002") and "harmonic" in record


def test_object_crops_pair_one_object_with_its_own_caption(toy: Path):
    from partclipseg.train.pretrain import CaptionSampler, _square_box

    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:25] = True  # a 10 x 20 box: a square of side 24 around it, inside the image
    y0, y1, x0, x1 = _square_box(mask)
    assert (y1 - y0, x1 - x0) == (24, 24) and y0 <= 10 and y1 >= 20 and x0 <= 5 and x1 >= 25
    mask[:] = False
    mask[0:40, 50:60] = True  # taller than wide at the border: cut to the image, shifted inside
    y0, y1, x0, x1 = _square_box(mask)
    assert (y0, y1) == (0, 40) and x1 == 60 and x1 - x0 == 48
    assert _square_box(np.zeros((8, 8), bool)) is None
    config = load_pretrain_recipe("toy_world_pretrain", [f"root={toy}", "image_size=32", "batch_size=6",
                                                          "crop_prob=1"])
    sampler = CaptionSampler(toy, "train", config, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    words = json.loads((toy / "captions" / "train.json").read_text())
    assert len(sampler.crops) == sum(len({w["object"] for w in ws}) for ws in words.values())
    assert all(len(w) == 1 for w in sampler.crop_words)
    pixels, texts = sampler.batch(0)
    assert pixels.shape == (6, 3, 32, 32)
    names = set(OBJECT_PARTS) | set(OBJECTS_WITHOUT_PARTS)
    for text in texts:  # one object per caption
        assert len(set(re.findall(r"[a-z]+", text)) & names) == 1, text
    scenes = CaptionSampler(toy, "train", load_pretrain_recipe("toy_world_pretrain", [f"root={toy}", "image_size=32",
                                                                                      "crop_prob=0"]),
                            (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert len(scenes.crops) == 0  # crop_prob 0: no crops cut (and the scene sampling of before)


def test_skip_unseen_images_keeps_unseen_objects_out_of_part_training(tmp_path: Path):
    from PIL import Image

    from partclipseg.model.base import ResizeNormalise
    from partclipseg.train.data import TrainDataset

    root = generate_toy_world(tmp_path / "toy", n_train=24, n_val=0, size_range=(48, 64), seed=5)
    vocab = json.loads((ROOT / "src" / "partclipseg" / "resources" / "vocab" / "toy_world.json").read_text())
    unseen = {vocab["object_classes"].index(name) for name in vocab["unseen_object_classes"]}

    def objects(record_id: str) -> set[int]:
        return set(np.unique(np.asarray(Image.open(root / "annotations_detectron2_obj" / f"{record_id}.png")))) - {255}

    shown = {}
    for skip in (False, True):
        config = load_recipe("toy_world", [f"root={root}", "supervision=parts", f"skip_unseen_images={str(skip).lower()}"])
        dataset = TrainDataset(config, ResizeNormalise(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB"))
        shown[skip] = {dataset[(k, k)].record_id for k in range(len(dataset))}
    with_unseen = {r for r in shown[False] if objects(r) & unseen}
    assert with_unseen  # the official setting trains on images with a cow or a bus (as background)
    assert shown[True] and not any(objects(r) & unseen for r in shown[True])


def test_object_stage_trains_every_object_mask_and_no_part(tmp_path: Path):
    """``supervision=objects`` (recipe toy_world_objects): images with cow or bus are used; no part label
    survives; every object, unseen ones included, keeps its object label and has an object channel; the
    object term pulls the cow channel up on cow pixels while the part terms are zero."""
    from PIL import Image

    from partclipseg.model.base import ResizeNormalise
    from partclipseg.train import loop as train_loop
    from partclipseg.train.data import TrainDataset

    root = generate_toy_world(tmp_path / "toy", n_train=24, n_val=0, size_range=(48, 64), seed=5)
    vocab = json.loads((ROOT / "src" / "partclipseg" / "resources" / "vocab" / "toy_world.json").read_text())
    cow = vocab["object_classes"].index("cow")
    config = load_recipe("toy_world_objects", [f"root={root}"])
    assert config.supervision == "objects" and not config.skip_unseen_images
    dataset = TrainDataset(config, ResizeNormalise(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB"))
    assert set(dataset.vocabulary.objects) >= {"cow", "bus", "dog", "car"}
    model_index = dataset.object_to_model.tolist()
    assert model_index[cow] == dataset.vocabulary.objects.index("cow")
    samples = [dataset[(k, k)] for k in range(len(dataset))]
    with_cow = [s for s in samples if (s.object_labels == cow).any()]
    assert with_cow  # unseen objects are trained on (their object masks)
    for sample in samples:
        assert (sample.part_labels == -1).all()  # IGNORE
        stem = sample.record_id.split("/", 1)[1]
        raw = np.asarray(Image.open(root / "annotations_detectron2_obj" / "train" / f"{stem}.png")).astype(np.int64)
        # no object relabelled (flips aside: compare the label sets; 255 = ignore -> -1)
        assert set(np.unique(sample.object_labels.numpy())) == set(np.where(raw == 255, -1, raw).ravel().tolist())
    # the loss on a batch holding a cow: part terms zero, the cow channel pushed up on cow pixels
    run = train_loop.setup(load_recipe("toy_world_objects", [f"root={root}", "init=random:tiny-fast", "image_size=32",
                                                            "num_workers=0"]),
                           tmp_path / "run", resume=False, progress=False)
    batch = dataset.collate(with_cow[:2])
    out = run.model(batch["pixel_values"], **run.text.forward_kwargs())
    out.logits.retain_grad()
    losses = run.model.loss(out, batch["part_labels"], batch["object_labels"], run.text, run.dataset.object_to_model,
                            config.loss)
    assert float(losses["generalized_parts"].detach()) == 0 and float(losses["object_specific_parts"].detach()) == 0
    assert float(losses["objects"].detach()) > 0
    losses["total"].backward()
    size = out.logits.shape[-2:]
    labels = torch.nn.functional.interpolate(batch["object_labels"][0][None, None].float(), size=size,
                                             mode="nearest")[0, 0]
    channel = run.text.vocabulary.num_parts + run.text.vocabulary.objects.index("cow")
    grad = out.logits.grad[0, channel]
    assert (labels == cow).any() and float(grad[labels == cow].mean()) < 0  # gradient descent raises the logit
    with pytest.raises(ConfigError, match="skip_unseen_images"):
        load_recipe("toy_world_objects", [f"root={root}", "skip_unseen_images=true"]).validate()
    with pytest.raises(ConfigError, match="supervision must be one of"):
        load_recipe("toy_world", [f"root={root}", "supervision=words"]).validate()


def test_parts_and_objects_supervision_never_touches_an_unseen_part(tmp_path: Path):
    """``supervision=parts+objects`` (recipe toy_world): the test vocabulary; images with a cow or a bus are
    used with their object labels, their part pixels ignore; seen parts keep their (test-vocabulary) labels;
    in a real loss on such a batch the unseen objects' object-specific channels get exactly zero gradient
    while the cow's object channel is raised on cow pixels and the seen classes train."""
    from PIL import Image

    from partclipseg.model.base import ResizeNormalise
    from partclipseg.train import loop as train_loop
    from partclipseg.train.data import TrainDataset

    root = generate_toy_world(tmp_path / "toy", n_train=24, n_val=0, size_range=(48, 64), seed=5)
    vocab = json.loads((ROOT / "src" / "partclipseg" / "resources" / "vocab" / "toy_world.json").read_text())
    unseen = {vocab["object_classes"].index(name) for name in vocab["unseen_object_classes"]}
    cow = vocab["object_classes"].index("cow")
    config = load_recipe("toy_world", [f"root={root}", "cache_resized=false"])  # labels at their own size
    assert config.supervision == "parts+objects" and not config.skip_unseen_images
    dataset = TrainDataset(config, ResizeNormalise(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB"))
    classes = list(dataset.vocabulary.object_specific_classes)
    assert set(dataset.vocabulary.objects) >= {"cow", "bus", "dog"}
    trained = dataset.trained_text_classes.tolist()
    assert trained == [name.split("'s")[0] not in vocab["unseen_object_classes"] for name in classes]
    samples = [dataset[(k, k)] for k in range(len(dataset))]
    with_unseen = [s for s in samples if np.isin(s.object_labels.numpy(), list(unseen)).any()]
    assert with_unseen and any((s.part_labels >= 0).any() for s in samples)
    for sample in samples:
        stem = sample.record_id.split("/", 1)[1]
        raw_obj = np.asarray(Image.open(root / "annotations_detectron2_obj" / "train" / f"{stem}.png")).astype(np.int64)
        raw_part = np.asarray(Image.open(root / "annotations_detectron2_part" / "train" / f"{stem}.png"))
        assert set(np.unique(sample.object_labels.numpy())) == set(np.where(raw_obj == 255, -1, raw_obj).ravel().tolist())
        on_unseen = np.isin(sample.object_labels.numpy(), list(unseen))
        assert (sample.part_labels.numpy()[on_unseen] == -1).all()
        names = {classes[k] for k in np.unique(sample.part_labels.numpy()) if k >= 0}
        expected = {vocab["object_specific_classes"][k] for k in np.unique(raw_part) if k != 255}
        assert names == {n for n in expected if n.split("'s")[0] not in vocab["unseen_object_classes"]}
    run = train_loop.setup(load_recipe("toy_world", [f"root={root}", "init=random:tiny-fast", "image_size=32",
                                                     "num_workers=0"]), tmp_path / "run", resume=False, progress=False)
    batch = dataset.collate([s for s in with_unseen if (s.object_labels == cow).any()][:1]
                            + [s for s in samples if (s.part_labels >= 0).any()][:1])
    out = run.model(batch["pixel_values"], **run.text.forward_kwargs())
    out.logits.retain_grad()
    out.object_part_logits.retain_grad()
    losses = run.model.loss(out, batch["part_labels"], batch["object_labels"], run.text, run.dataset.object_to_model,
                            config.loss, trained_text_classes=run.dataset.trained_text_classes)
    assert float(losses["object_specific_parts"].detach()) > 0
    losses["total"].backward()
    grad = out.object_part_logits.grad
    left_out = [k for k, flag in enumerate(trained) if not flag]
    assert left_out and torch.count_nonzero(grad[:, left_out]) == 0
    assert torch.count_nonzero(grad[:, [k for k, flag in enumerate(trained) if flag]]) > 0
    size = out.logits.shape[-2:]
    labels = torch.nn.functional.interpolate(batch["object_labels"][0][None, None].float(), size=size,
                                             mode="nearest")[0, 0]
    channel = run.text.vocabulary.num_parts + run.text.vocabulary.objects.index("cow")
    assert (labels == cow).any() and float(out.logits.grad[0, channel][labels == cow].mean()) < 0
    with pytest.raises(ConfigError, match="skip_unseen_images"):
        load_recipe("toy_world", [f"root={root}", "skip_unseen_images=true"]).validate()
    with pytest.raises(ConfigError, match="leave the unseen"):
        load_recipe("toy_world", [f"root={root}", "architecture=clipseg"]).validate()


def test_best_checkpoint_picks_highest_harmonic(tmp_path: Path):
    lines = [{"step": 1, "total": 3.0}, {"step": 1, "eval": "pred-all", "seen": 10, "unseen": 5, "harmonic": 6.7},
             {"step": 2, "eval": "pred-all", "seen": 30, "unseen": 20, "harmonic": 24.0},
             {"step": 3, "eval": "pred-all", "seen": 50, "unseen": 30, "harmonic": 37.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "garbage\n")
    for step in (1, 2):  # step 3's checkpoint was not kept: it cannot be chosen
        folder = tmp_path / "checkpoints" / f"step_{step:07d}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights%d" % step)
        (folder / "config.json").write_text("{}")
    folder, record = best_checkpoint(tmp_path)
    assert folder.name == "step_0000002" and record["harmonic"] == 24.0
    assert select_main([str(tmp_path), "--out", str(tmp_path / "best")]) == 0
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"weights2"
    with pytest.raises(CheckpointError):
        best_checkpoint(tmp_path / "empty")
    assert select_main([str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2


def test_cli_pretrain_bad_input_exits_2(capsys, tmp_path: Path):
    assert cli_main(["pretrain", "no_such_recipe", "--out", str(tmp_path / "r")]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    assert cli_main(["pretrain", "toy_world_pretrain", f"root={tmp_path}", "--out", str(tmp_path / "r")]) == 2
    assert "captions" in capsys.readouterr().err


def test_contrastive_towers_pool_the_deepest_decoder_layer():
    from partclipseg.config import get_config

    config = get_config("tiny-fast")
    towers = ContrastiveTowers(config, pool="mean")
    assert towers.layer == max(config.decoder.extract_layers) + 1
    out = towers.encode_image(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, config.projection_dim)


@pytest.mark.slow
def test_default_model_script_smoke(tmp_path: Path):
    env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "make_default_model.sh"), str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for protocol in ("oracle-obj", "pred-all"):
        metrics = json.loads((tmp_path / "work" / "eval" / f"{protocol}.json").read_text())["metrics"]
        assert {"mIoU-base", "mIoU-unbase", "h-IoU"} <= set(metrics)
    assert (tmp_path / "work" / "best" / "model.safetensors").is_file()
    assert load_pretrained(tmp_path / "work" / "best").config.vision.patch_size == 16
    # part training started from the pretrained towers and trained every object's object mask with the parts
    parts = json.loads((tmp_path / "work" / "parts" / "config.json").read_text())
    assert parts["init"].endswith("pretrain/final") and parts["supervision"] == "parts+objects"


def test_zero_shot_script_scores_a_checkpoint_as_its_run_did(toy: Path, tmp_path: Path, capsys):
    """scripts/pretrain_zero_shot.py rebuilds a checkpoint's towers from its run's config: on the run's own
    validation split it reproduces the run's logged zero-shot evaluation of that step; a folder that is not
    a pretraining checkpoint is a one-line error with exit code 2."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pretrain_zero_shot

    run = tmp_path / "run"
    pretrain(load_pretrain_recipe("toy_world_pretrain", [f"root={toy}", *TINY]), run, progress=False)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in logged if r.get("eval") == "zero-shot" and r["step"] == 4)
    out = tmp_path / "zs.json"
    assert pretrain_zero_shot.main([str(run / "checkpoints" / "step_0000004"), "--root", str(toy), "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"][str(run / "checkpoints" / "step_0000004")]
    assert result == {k: v for k, v in logged.items() if k not in ("step", "eval")}
    assert result["images_seen"] + result["images_unseen"] > 0
    capsys.readouterr()
    assert pretrain_zero_shot.main([str(run / "final"), "--root", str(toy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a pretraining checkpoint" in err and err.count("\n") == 1
