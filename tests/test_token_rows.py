"""Part training trains the text token table's prompt rows on their own (``train.token_rows``): the same
numbers as training the whole table, checkpoints in the same format, resumable across the two."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from partclipseg.config import get_config
from partclipseg.data.toyworld import generate_toy_world
from partclipseg.model import build_model
from partclipseg.tokenizer import get_tokenizer
from partclipseg.train import load_recipe, train
from partclipseg.train import loop as train_loop
from partclipseg.train.token_rows import TrainedTokenRows
from partclipseg.vocabulary import Vocabulary
from train_helpers import losses


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy"), n_train=6, n_val=2, size_range=(96, 160), seed=5)


def _model_and_text():
    torch.manual_seed(0)
    model = build_model(get_config("toy2"))
    text = model.tokenize_vocabulary(Vocabulary.from_benchmark("toy_world", "test"), get_tokenizer())
    return model, text


def test_the_trained_rows_are_the_prompts_token_ids_and_the_text_tower_reads_them():
    model, text = _model_and_text()
    train_loop.set_trainable(model, "all-but-text-layers")
    with torch.no_grad():
        before = model.encode_text(text.input_ids, text.attention_mask)
    rows = TrainedTokenRows.attach(model, text.input_ids)
    table = model.text.token_embedding.weight
    assert rows.name == "text.token_embedding.weight" and rows.table is table and not table.requires_grad
    assert torch.equal(rows.rows, torch.unique(text.input_ids)) and 10 < rows.rows.numel() < 1000
    assert torch.equal(rows.weight, table[rows.rows]) and rows.weight.requires_grad
    out = model.encode_text(text.input_ids, text.attention_mask)
    assert torch.equal(out, before)  # the same embeddings, now read from the trained rows
    out.sum().backward()
    assert table.grad is None and rows.weight.grad.abs().sum(1).gt(0).all()
    # a moved row reaches the output; ids outside the rows still read the table
    with torch.no_grad():
        rows.weight[0] += 1.0
        assert not torch.equal(model.encode_text(text.input_ids, text.attention_mask), before)
        other = torch.tensor([[49406, 1000, 49407]])
        assert 1000 not in rows.rows.tolist()
        assert torch.equal(model.text.token_embedding(other), table[other])
    rows.detach()
    assert table.requires_grad and torch.equal(table[rows.rows], rows.weight)  # written back
    assert torch.equal(model.text.token_embedding(text.input_ids), table[text.input_ids])  # hook removed


def test_no_rows_when_the_table_does_not_train_or_the_model_has_none_or_is_not_a_plain_lookup():
    model, text = _model_and_text()
    train_loop.set_trainable(model, "all-but-text")
    assert TrainedTokenRows.attach(model, text.input_ids) is None
    holder = type("Holder", (nn.Module,), {"prompt_token_table": "embed.weight"})()
    for options in ({"padding_idx": 0}, {"max_norm": 1.0}, {"scale_grad_by_freq": True}, {"sparse": True}):
        holder.embed = nn.Embedding(6, 2, **options)
        assert TrainedTokenRows.attach(holder, torch.tensor([[1, 4]])) is None, options
        assert holder.embed.weight.requires_grad
    from partclipseg.model.registry import architecture_class

    catseg = build_model(architecture_class("partcatseg").preset_config("partcatseg-toy", None))
    assert TrainedTokenRows.attach(catseg, text.input_ids) is None


def test_the_rows_gradient_is_averaged_over_processes(monkeypatch):
    import torch.distributed as dist

    holder = type("Holder", (nn.Module,), {"prompt_token_table": "embed.weight"})()
    holder.embed = nn.Embedding(6, 2)
    rows = TrainedTokenRows.attach(holder, torch.tensor([[1, 4]]))
    rows.weight.grad = torch.arange(4.0).view(2, 2)
    calls = []

    def all_reduce(tensor):  # stands in for a second process holding the same gradient + 1
        calls.append(tuple(tensor.shape))
        tensor.mul_(2).add_(1)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    rows.all_reduce(world_size=2)
    assert calls == [(2, 2)]  # one all-reduce, of the two rows only
    assert torch.equal(rows.weight.grad, torch.arange(4.0).view(2, 2) + 1)  # g / 2 + (g / 2 + 1), as DDP: g/n summed
    rows.weight.grad = None
    with pytest.raises(RuntimeError, match="got no gradient"):
        rows.all_reduce(world_size=2)


def _args(root: Path, *extra: str) -> list[str]:
    # grad_clip far below the gradient norm: the clip factor (from the norm over the trained tensors) scales
    # every step; evaluation every 3 steps runs with the rows' hook in place
    return [f"root={root}", "init=random:toy2", "image_size=64", "iterations=6", "batch_size=2", "checkpoint_period=2",
            "eval_period=3", "eval_limit=2", "grad_clip=1e-4", "log_period=1", "num_workers=0", *extra]


def _whole_table(monkeypatch) -> None:
    """Part training as before ``token_rows``: the whole table trains."""
    monkeypatch.setattr(train_loop.TrainedTokenRows, "attach", classmethod(lambda cls, model, ids: None))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def test_with_weight_decay_on_embeddings_the_whole_table_trains(toy_root, tmp_path):
    args = _args(toy_root, "weight_decay_embed=0.5", "iterations=2")
    train(load_recipe("toy_world", args), tmp_path / "run", progress=False)
    init = train_loop.build_initial_model(load_recipe("toy_world", args)).state_dict()["text.token_embedding.weight"]
    table = _weights(tmp_path / "run")["text.token_embedding.weight"]
    assert bool(((table - init).abs().sum(1) > 0).all())  # every row decayed, not only the prompts' rows


@pytest.mark.parametrize("extra", [(), ("freeze_object_words=true",)])
def test_training_the_rows_equals_training_the_whole_table(toy_root, tmp_path, monkeypatch, extra):
    args = _args(toy_root, *extra)
    train(load_recipe("toy_world", args), tmp_path / "rows", progress=False)
    with monkeypatch.context() as patch:
        _whole_table(patch)
        train(load_recipe("toy_world", args), tmp_path / "whole", progress=False)
    rows, whole = _weights(tmp_path / "rows"), _weights(tmp_path / "whole")
    assert losses(tmp_path / "rows") == losses(tmp_path / "whole")
    evals = [(tmp_path / run / "eval" / "step_0000003.json").read_text() for run in ("rows", "whole")]
    assert evals[0] == evals[1]  # the evaluation during training saw the same model
    for key in whole:  # bitwise: the AdamW update is elementwise, the clip norm sums the same values
        assert torch.equal(rows[key], whole[key]), key
    init = train_loop.build_initial_model(load_recipe("toy_world", args)).state_dict()
    table = "text.token_embedding.weight"
    moved = (rows[table] - init[table]).abs().sum(1) > 0
    prompt_ids = set(train_loop.build_initial_model(load_recipe("toy_world", args)).tokenize_vocabulary(
        Vocabulary.from_benchmark("toy_world", "test"), get_tokenizer()).input_ids.unique().tolist())
    assert 0 < int(moved.sum()) <= len(prompt_ids)  # only prompt rows moved, and some did
    assert set(moved.nonzero().flatten().tolist()) <= prompt_ids
    # the checkpoint's optimizer state holds table-sized moments, as before
    state = torch.load(tmp_path / "rows" / "checkpoints" / "step_0000006" / "trainer.pt", weights_only=True)
    shapes = {tuple(v["exp_avg"].shape) for v in state["optimizer"]["state"].values()}
    assert tuple(init[table].shape) in shapes


@pytest.mark.parametrize("killed_by", ["rows", "whole"])
def test_a_run_killed_in_either_form_resumes_in_the_other(toy_root, tmp_path, monkeypatch, killed_by):
    args = _args(toy_root)
    train(load_recipe("toy_world", args), tmp_path / "full", progress=False)
    real_schedule = train_loop.scheduled_lr

    def killed(config, step):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_schedule(config, step)

    with monkeypatch.context() as patch:
        if killed_by == "whole":
            _whole_table(patch)
        patch.setattr(train_loop, "scheduled_lr", killed)
        with pytest.raises(KeyboardInterrupt):
            train(load_recipe("toy_world", args), tmp_path / "killed", progress=False)
    with monkeypatch.context() as patch:
        if killed_by == "rows":
            _whole_table(patch)
        train(load_recipe("toy_world", args), tmp_path / "killed", resume=True, progress=False)
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert losses(tmp_path / "full") == losses(tmp_path / "killed")


def test_ddp_averages_all_gradients_in_one_bucket_on_cpu():
    model, _ = _model_and_text()
    train_loop.set_trainable(model, "all-but-text-layers")
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    cap = train_loop._ddp_buckets(model, "cpu")["bucket_cap_mb"]
    assert cap * 2 ** 20 > trained
    assert train_loop._ddp_buckets(model, "cuda:0") == {}


WHOLE_TABLE_CLI = """
import sys
from partclipseg.train import loop
loop.TrainedTokenRows.attach = classmethod(lambda cls, model, ids: None)  # the whole table trains
loop._ddp_buckets = lambda model, device: {}  # DDP's default buckets
from partclipseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_train_the_rows_as_they_train_the_whole_table(toy_root, tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "whole_table_cli.py").write_text(WHOLE_TABLE_CLI)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    args = ["train", "toy_world", *(a for a in _args(toy_root) if not a.startswith("batch_size=")), "batch_size=4",
            "--no-progress"]
    runs = {"rows": ["-m", "partclipseg"], "whole": [str(tmp_path / "whole_table_cli.py")]}
    for name, program in runs.items():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *program, *args,
               "--out", str(tmp_path / name)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows, whole = _weights(tmp_path / "rows"), _weights(tmp_path / "whole")
    assert all(torch.equal(rows[k], whole[k]) for k in whole)
    assert losses(tmp_path / "rows") == losses(tmp_path / "whole")
