"""Training: recipes, trainable set, loss goes down, exact resume, DDP equivalence, config errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from partclipseg.config import get_config
from partclipseg.data import synthetic
from partclipseg.data.common import DatasetError
from partclipseg.errors import CheckpointError, ConfigError
from partclipseg.model import PartCLIPSeg
from partclipseg.train import load_recipe, train
from partclipseg.train import loop as train_loop
from partclipseg.train.data import StepSampler
from train_helpers import full_and_killed_runs
from train_helpers import losses as _losses

FAST = ["init=random:tiny-fast", "image_size=96", "batch_size=2", "log_period=1", "eval_period=1000",
        "num_workers=0", "augmentation=flip", "channel_order=RGB", "grad_clip=1.0", "lr=1e-3", "trainable=all"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return synthetic.make_pascal_part(tmp_path_factory.mktemp("voc") / "PascalPart116", n_train=4, n_val=2)


def test_shipped_recipes_hold_the_official_settings():
    for name in ("pascal_part_116", "ade20k_part_234", "partimagenet"):
        cfg = load_recipe(name)
        assert cfg.dataset == name and cfg.iterations == 20000 and cfg.batch_size == 8 and cfg.lr == 1e-4
        assert cfg.grad_clip == 0.01 and cfg.trainable == "VA+L+F+D" and cfg.channel_order == "BGR"
        assert cfg.loss.use_attention and cfg.loss.sep_lambda == 0.1 and cfg.loss.enh_lambda == 0.01
    assert load_recipe("partimagenet").augmentation == "none"
    assert load_recipe("pascal_part_116").augmentation == "resize_flip"
    cfg = load_recipe("pascal_part_116", ["iterations=5", "loss.use_attention=false", "betas=[0.8,0.9]"])
    assert cfg.iterations == 5 and cfg.loss.use_attention is False and cfg.betas == (0.8, 0.9)


def test_official_trainable_set_has_the_official_size():
    with torch.device("meta"):
        model = PartCLIPSeg(get_config("clipseg-rd64-refined"))
    names = train_loop.set_trainable(model, "VA+L+F+D")
    count = sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert count == 27_427_202  # SPEC §1.11
    assert not model.non_object_embedding.requires_grad and not model.vision.patch_embed.weight.requires_grad
    groups = train_loop.parameter_groups(model, load_recipe("pascal_part_116"))
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay["text.token_embedding.weight"] == 0.0 and decay["decoder.layers.0.norm1.weight"] == 0.0
    assert decay["decoder.film_mul.bias"] == 1e-4 and decay["visual_adapter.down.weight"] == 1e-4


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(voc_root, tmp_path):
    final = train(load_recipe("pascal_part_116", [f"root={voc_root}", "iterations=12", *FAST, "eval_period=12"]),
                  tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert (final / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "eval" / "step_0000012.json").read_text())["evaluated_samples"] > 0
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 12 and last["eval"] == "oracle-obj" and last["seen"] is not None


@pytest.mark.slow
def test_killed_run_resumes_with_identical_losses(voc_root, tmp_path, monkeypatch):
    args = [f"root={voc_root}", "iterations=8", "checkpoint_period=3", *FAST]

    def checks_before_resume(killed):
        assert len(_losses(killed)) == 7
        with pytest.raises(ConfigError, match="--resume"):
            train(load_recipe("pascal_part_116", args), killed, progress=False)

    full_and_killed_runs("pascal_part_116", args, tmp_path, monkeypatch, 7, checks_before_resume)
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert kept == ["step_0000003", "step_0000006", "step_0000008"]


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(voc_root, tmp_path):
    args = [f"root={voc_root}", "iterations=3", *FAST]
    train(load_recipe("pascal_part_116", args), tmp_path / "single", progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537", "-m",
           "partclipseg", "train", "pascal_part_116", *args, "--out", str(tmp_path / "ddp"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)
    init = train_loop.build_initial_model(load_recipe("pascal_part_116", args)).state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # the three steps changed the weights, identically in both runs


def test_sampler_shares_one_global_order():
    single = StepSampler(10, 4, seed=1, start=0, iterations=5)
    ranks = [StepSampler(10, 4, seed=1, start=0, iterations=5, rank=r, world_size=2) for r in range(2)]
    for step in range(5):
        assert single.batch_for(step) == ranks[0].batch_for(step) + ranks[1].batch_for(step)
    resumed = StepSampler(10, 4, seed=1, start=3, iterations=5)
    assert list(resumed) == [single.batch_for(3), single.batch_for(4)]
    with pytest.raises(ValueError, match="divisible"):
        StepSampler(10, 3, seed=1, start=0, iterations=5, world_size=2)


@pytest.mark.parametrize("overrides, error, message", [
    (["learning_rate=1"], ConfigError, "unknown recipe key 'learning_rate'"),
    (["loss.lambda_magic=1"], ConfigError, "unknown loss key"),
    (["iterations=ten"], ConfigError, "iterations"),
    (["trainable=some"], ConfigError, "trainable"),
    (["init=/no/such/clipseg"], CheckpointError, "/no/such/clipseg"),
    (["dataset=ade20k_part_234"], DatasetError, "missing folder .training images. in the ADE20K-Part-234 dataset"),
])
def test_inconsistent_configs_are_refused(voc_root, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        cfg = load_recipe("pascal_part_116", [f"root={voc_root}", "iterations=2", *FAST, *overrides])
        train(cfg, tmp_path / "run", progress=False)


def test_unknown_recipe_and_missing_root():
    with pytest.raises(ConfigError, match="shipped recipes"):
        load_recipe("imagenet")
    with pytest.raises(ConfigError, match="root"):
        load_recipe("pascal_part_116").validate()


@pytest.mark.slow
def test_freeze_object_words_keeps_the_object_names_rows(voc_root, tmp_path):
    """``freeze_object_words``: after training, the token-embedding rows of the training objects' names
    equal their initial values, while part-word rows and the end token moved; the rule needs trained
    token embeddings and no embedding weight decay."""
    from partclipseg.tokenizer import get_tokenizer
    from partclipseg.vocabulary import Vocabulary

    overrides = [f"root={voc_root}", "iterations=2", *FAST, "trainable=all-but-text-layers", "freeze_object_words=true"]
    cfg = load_recipe("pascal_part_116", overrides)
    initial = train_loop.build_initial_model(cfg).text.token_embedding.weight.detach().clone()
    final = train(cfg, tmp_path / "run", progress=False)
    trained = load_file(str(final / "model.safetensors"))["text.token_embedding.weight"]
    tok, vocab = get_tokenizer(), Vocabulary.from_benchmark("pascal_part_116", "train")
    object_rows = {t for name in vocab.objects for t in tok.encode(name)} - {tok.bos_token_id, tok.eos_token_id}
    part_rows = {t for name in vocab.parts for t in tok.encode(name)} - {tok.bos_token_id, tok.eos_token_id}
    frozen = sorted(object_rows - part_rows)
    assert len(frozen) >= 10  # "dog", "aeroplane", "pottedplant" pieces, ...
    assert torch.equal(trained[frozen], initial[frozen])
    moved = sorted(part_rows - object_rows)
    assert (trained[moved] - initial[moved]).abs().amax(1).gt(0).all()
    assert not torch.equal(trained[tok.eos_token_id], initial[tok.eos_token_id])
    # without the switch the same rows move
    plain = train(load_recipe("pascal_part_116", overrides[:-1]), tmp_path / "plain", progress=False)
    assert not torch.equal(load_file(str(plain / "model.safetensors"))["text.token_embedding.weight"][frozen],
                           initial[frozen])
    with pytest.raises(ConfigError, match="token embeddings do not train"):
        train(load_recipe("pascal_part_116", [*overrides, "trainable=all-but-text"]), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="weight_decay_embed"):
        load_recipe("pascal_part_116", [*overrides, "weight_decay_embed=0.1"]).validate()


def test_clipseg_baseline_starts_from_a_trained_partclipseg(voc_root, tmp_path):
    """A saved PartCLIPSeg as ``init`` of the CLIPSeg baseline (the toy table's shared starting model):
    every shared weight is taken as it is, the object-specific part head is dropped; the way back gets a
    fresh head; an architecture outside the family is refused by name."""
    from partclipseg.weights import save_pretrained

    torch.manual_seed(0)
    source = train_loop.build_initial_model(load_recipe("pascal_part_116", [f"root={voc_root}", *FAST]))
    save_pretrained(source, tmp_path / "pcs")
    cfg = load_recipe("pascal_part_116", [f"root={voc_root}", *FAST, f"init={tmp_path / 'pcs'}", "architecture=clipseg"])
    baseline = train_loop.build_initial_model(cfg)
    assert baseline.model_type == "clipseg"
    shared = baseline.state_dict()
    assert shared and not any(k.startswith("object_part_head.") for k in shared)
    for key, value in shared.items():
        assert torch.equal(value, source.state_dict()[key]), key
    back = baseline.as_architecture("partclipseg", seed=3)
    assert back.model_type == "partclipseg" and torch.equal(back.decoder.film_mul.weight, source.decoder.film_mul.weight)
    head = [k for k in back.state_dict() if k.startswith("object_part_head.") and k.endswith("weight")]
    assert head and not all(torch.equal(back.state_dict()[k], source.state_dict()[k]) for k in head)
    assert source.as_architecture("partcatseg") is None
