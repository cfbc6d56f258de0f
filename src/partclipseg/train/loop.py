"""The training loop: model set-up, optimizer and schedule, DDP, checkpoints, resume, logging.

Run layout (``out_dir``)::

    config.json                  the TrainConfig of the run
    metrics.jsonl                one line per logged step (loss terms, lr, seconds)
    checkpoints/step_0001000/    model.safetensors + config.json + trainer.pt (optimizer, step, RNG)
    eval/step_0001000.json       periodic evaluation results
    final/                       the trained model (config.json + model.safetensors)

Checkpoints are written into a temporary folder and renamed, so a kill never leaves a half
checkpoint; ``resume=True`` continues from the newest one and reproduces the uninterrupted run's
losses (every random choice is a function of the seed and the sample position).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import SAVED, inspect_checkpoint, load_state_dict_checked, read_safetensors
from ..dist import DistInfo, barrier, default_device, dist_info, init_distributed
from ..errors import CheckpointError, ConfigError, PartCLIPSegError
from ..io import atomic_write_text, json_text
from ..losses import PixelSample
from ..model import PartSegmentationModel, TextInputs, build_model
from ..model.registry import architecture_class, initial_weights_builder, tower_builder
from ..tokenizer import get_tokenizer
from ..weights import init_from_clipseg, load_pretrained, save_pretrained
from .data import StepSampler, TrainDataset
from .checkpoint import (check_resume_config, checkpoint_dir, ensure_output_folder, latest_checkpoint,
                         remove_stale_temporaries, save_checkpoint, trim_metrics)
from .recipe import TrainConfig
from .token_rows import TrainedTokenRows


# ---------------------------------------------------------------------------- model set-up
def build_initial_model(config: TrainConfig) -> PartSegmentationModel:
    """``random:<preset>``, ``<registered starting point>:<preset>`` (``model.registry.initial_weights_names``,
    e.g. ``catseg_base+dinov2_vits14:partcatseg-voc``), a saved partclipseg folder (fine-tuning; for an
    architecture with a registered tower builder, a saved model of another architecture gives its CLIP towers:
    ``train.pretrain.export_towers``, e.g. toy pretraining's ``final/`` for PartCATSeg; otherwise the saved
    model's ``as_architecture``, e.g. a PartCLIPSeg for the CLIPSeg baseline) or CLIPSeg weights (HF layout)."""
    if config.init.startswith("random:"):
        model_config = architecture_class(config.architecture).preset_config(config.init.split(":", 1)[1],
                                                                             config.image_size)
        torch.manual_seed(config.seed)
        return build_model(model_config)
    name, _, preset = config.init.partition(":")
    registered = initial_weights_builder(name)
    if registered is not None:  # a registered starting point, e.g. "catseg_base+dinov2_vits14:partcatseg-voc"
        architecture, builder = registered
        if architecture != config.architecture:
            raise ConfigError(f"init {name} starts a {architecture} model but the recipe trains {config.architecture}")
        if not preset:
            raise ConfigError(f"init {name} needs a config preset: init={name}:<preset>")
        model_config = architecture_class(architecture).preset_config(preset, config.image_size)
        torch.manual_seed(config.seed)
        return builder(model_config, progress=dist_info().is_main)
    from ..hub.resolve import resolve_model

    resolved = resolve_model(config.init)  # a named model is fetched; a missing path is refused by name
    path = Path(resolved)
    if _is_saved_model(path):
        model = load_pretrained(path)
        if model.config.architecture != config.architecture and tower_builder(config.architecture) is not None:
            # e.g. toy pretraining's final/ (our CLIP towers) for PartCATSeg: its own CLIP layout takes the
            # towers (and the pretraining's image head when final/ sits beside its checkpoints); the rest is new
            from .pretrain import model_from_towers

            return model_from_towers(path, config.architecture, config.seed, model)
        if model.config.architecture != config.architecture:
            # e.g. the CLIPSeg baseline from a trained PartCLIPSeg (the toy table's shared starting model)
            converted = model.as_architecture(config.architecture, config.seed)
            if converted is None:
                raise ConfigError(f"init {config.init} is a {model.config.architecture} model but the recipe trains "
                                  f"{config.architecture}")
            model = converted
        model.set_processing_size(config.image_size)
        return model
    torch.manual_seed(config.seed)
    return init_from_clipseg(resolved, config.architecture, config.image_size)


def _is_saved_model(path: Path) -> bool:
    """A saved partclipseg folder (``checkpoint.inspect_checkpoint``), as opposed to CLIPSeg weights."""
    if not path.is_dir():
        return False
    try:
        return inspect_checkpoint(path, download=False).kind == SAVED
    except PartCLIPSegError:  # not ours: init_from_clipseg gives the precise message
        return False


def set_trainable(model: PartSegmentationModel, which: str) -> list[str]:
    """Freeze everything except the recipe's trainable set; returns the trainable parameter names.

    The model decides (``is_trainable``; the names are its ``trainable_sets``), e.g. PartCLIPSeg's
    ``"VA+L+F+D"`` = the official rule (visual adapter, text input embeddings, FiLM and decoder).
    """
    names = []
    for name, param in model.named_parameters():
        train = model.is_trainable(name, which)
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


def freeze_object_word_rows(model: nn.Module, vocabulary, tokenizer,
                            token_rows: TrainedTokenRows | None = None) -> list[int]:
    """``freeze_object_words``: zero the gradient of the text token-embedding rows of ``vocabulary``'s
    object names (tokens that also occur in a part name, and the start / end tokens, keep training), so
    that the seen objects' names stay in the pretrained geometry the unseen objects' names keep.
    Returns the frozen token ids. Every trained ``*token_embedding.weight`` table gets the hook; a table
    whose prompt rows train on their own (``token_rows``) gets it on those rows."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    part_tokens = {t for name in vocabulary.parts for t in tokenizer.encode(name)}
    rows = sorted({t for name in vocabulary.objects for t in tokenizer.encode(name)} - part_tokens - special)
    tables = [(p, torch.tensor(rows, dtype=torch.long, device=p.device))
              for n, p in model.named_parameters() if n.endswith("token_embedding.weight") and p.requires_grad]
    if token_rows is not None and token_rows.name.endswith("token_embedding.weight"):
        index = token_rows.lookup[torch.tensor(rows, dtype=torch.long, device=token_rows.lookup.device)]
        tables.append((token_rows.weight, index[index >= 0]))
    if not tables:
        raise ConfigError("freeze_object_words: the text token embeddings do not train in this trainable set "
                          "(use e.g. trainable=all-but-text-layers or VA+L+F+D)")
    for table, index in tables:
        table.register_hook(lambda grad, index=index: grad.index_fill(0, index, 0.0))
    return rows


def parameter_groups(model: nn.Module, config: TrainConfig,
                     token_rows: TrainedTokenRows | None = None) -> list[dict]:
    """detectron2-style groups: one per trainable parameter; weight decay 0 for norm layers and
    embedding tables (``weight_decay_norm`` / ``weight_decay_embed``), ``weight_decay`` otherwise
    (biases included); ``lr_multiplier`` from ``config.lr_multipliers`` (longest matching name prefix,
    1 otherwise; a prefix that matches no trained parameter is refused). ``token_rows``: its ``weight``
    takes its frozen table's place (same group, same position in the order)."""
    groups = []
    seen: set[int] = set()
    used: set[str] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if token_rows is not None and param is token_rows.table:
                param = token_rows.weight
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
                decay = config.weight_decay_norm
            elif isinstance(module, nn.Embedding) or name == "position_embedding":
                decay = config.weight_decay_embed
            else:
                decay = config.weight_decay
            full = f"{module_name}.{name}".lstrip(".")
            prefix = max((p for p in config.lr_multipliers if full.startswith(p)), key=len, default=None)
            if prefix is not None:
                used.add(prefix)
            multiplier = 1.0 if prefix is None else float(config.lr_multipliers[prefix])
            groups.append({"params": [param], "weight_decay": decay, "name": full, "lr_multiplier": multiplier})
    unused = sorted(set(config.lr_multipliers) - used)
    if unused:
        raise ConfigError(f"lr_multipliers prefix(es) {unused} match no trained parameter of this "
                          f"{type(model).__name__} (trainable={config.trainable!r})")
    return groups


def scheduled_lr(config: TrainConfig, step: int) -> float:
    """The base learning rate at ``step`` (0-based; a group's lr is this times its ``lr_multiplier``).

    ``"poly"``: DeepLab's ``WarmupPolyLR``, ``lr * warmup(step) * (1 - step / iterations) ** poly_power``,
    warm-up factor ``warmup_factor`` rising linearly to 1 over ``warmup_iters`` (or constant).
    ``"cosine"``: detectron2's ``WarmupCosineLR`` (``WarmupParamScheduler(CosineParamScheduler(1, 0))``):
    ``lr * 0.5 * (1 + cos(pi * step / iterations))``, during warm-up interpolated from ``warmup_factor``
    times the start value to the value at ``warmup_iters`` (or that start value, constant).
    """
    where = step / config.iterations
    warming = step < config.warmup_iters
    if config.lr_schedule == "poly":
        factor = 1.0
        if warming:
            alpha = step / config.warmup_iters
            factor = config.warmup_factor if config.warmup_method == "constant" else \
                config.warmup_factor * (1 - alpha) + alpha
        return config.lr * factor * (1.0 - where) ** config.poly_power

    def cosine(t: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * t))

    if warming:
        start = config.warmup_factor * cosine(0.0)
        if config.warmup_method == "constant":
            return config.lr * start
        end = cosine(config.warmup_iters / config.iterations)
        return config.lr * (start + (end - start) * step / config.warmup_iters)
    return config.lr * cosine(where)


# ---------------------------------------------------------------------------- checkpoints
_checkpoint_dir = checkpoint_dir  # (the old private name)


# ---------------------------------------------------------------------------- the loop
@dataclass
class TrainRun:
    """The state of a training run, set up once (``setup``) and advanced by ``train_step``."""

    config: TrainConfig
    out_dir: Path
    info: DistInfo
    device: str
    model: PartSegmentationModel
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    dataset: TrainDataset
    text: TextInputs  # the training vocabulary, tokenised for the model
    optimizer: torch.optim.Optimizer
    start: int  # the first step to run (> 0 when resumed)
    loader: Any
    autocast: Any
    bar: Any = None
    token_rows: TrainedTokenRows | None = None  # the token table's prompt rows, trained on their own

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / "metrics.jsonl"


def setup(config: TrainConfig, out_dir: Path, resume: bool, progress: bool, allow_safe_changes: bool = False) -> TrainRun:
    """Output folder and resume checks, process group, model, data, optimizer; the newest complete
    checkpoint's state when resuming."""
    info = dist_info()
    if config.batch_size % info.world_size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {info.world_size} processes")
    device = default_device(info.local_rank)
    check_run_folder(config, out_dir, resume, allow_safe_changes, info)
    init_distributed(info, device)

    model = build_initial_model(config)
    if config.loss.pixel_stride > 1:
        model.check_pixel_stride(config.loss.pixel_stride)  # recipe validation has checked the architecture
    set_trainable(model, config.trainable)
    model.to(device)
    dataset = TrainDataset(config, model.train_preprocessor(config.channel_order))
    tokenizer = get_tokenizer()
    text = model.tokenize_vocabulary(dataset.vocabulary, tokenizer).to(device)
    # with weight decay on embedding tables every row of the table moves every step: the whole table trains
    token_rows = TrainedTokenRows.attach(model, text.input_ids) if config.weight_decay_embed == 0 else None
    if config.freeze_object_words:
        freeze_object_word_rows(model, dataset.vocabulary, tokenizer, token_rows)
    # fused: one kernel per parameter; the groups hold one parameter each, so the default (for-each) update
    # runs as a loop of small ops (toy_world step, 1 thread: 37 -> 7 ms of a ~480 ms step)
    optimizer = torch.optim.AdamW(parameter_groups(model, config, token_rows), lr=config.lr,
                                  betas=tuple(config.betas), eps=config.eps,
                                  fused=device.split(":")[0] in ("cpu", "cuda") or None)
    start = _resume(out_dir, model, optimizer, info, token_rows) if resume else 0
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", json_text(config.to_dict(), indent=1) + "\n")
    net: nn.Module = model
    if info.distributed:
        if token_rows is not None:  # frozen, so DDP would not average it; its rows are averaged in train_step
            torch.distributed.broadcast(token_rows.table.data, 0)
            token_rows.refresh()
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, [token_rows.name])
        net = nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if device != "cpu" else None,
                                                  **_ddp_buckets(model, device))
    sampler = StepSampler(len(dataset), config.batch_size, config.seed, start, config.iterations,
                          info.rank, info.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate,
                                         num_workers=config.num_workers,
                                         persistent_workers=config.num_workers > 0)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                              enabled=config.precision == "bf16")
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, initial=start, unit="it", desc=f"train {config.dataset}")
    return TrainRun(config, out_dir, info, device, model, net, dataset, text, optimizer, start, loader, autocast, bar,
                    token_rows)


def _ddp_buckets(model: nn.Module, device: str) -> dict[str, Any]:
    """DDP's bucket sizes. On CPU (gloo) one bucket for all the gradients (``bucket_cap_mb`` above their
    size; torch 2.13 applies it to the first bucket too), averaged once after the whole backward instead
    of all-reduces started during it: a toy_world step of 2 x 2 images on session 21's 2-core AMD EPYC,
    two runs each back to back, took 0.153 / 0.153 s with the default buckets and 0.149 / 0.151 s with
    one (a small gain; one earlier pair in a slow spell of that shared machine showed 0.196 / 0.163 s).
    On GPUs (NCCL) the overlap pays: defaults."""
    if device.split(":")[0] != "cpu":
        return {}
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2 ** 20
    return {"bucket_cap_mb": math.ceil(size_mb) + 1}


def check_run_folder(config: TrainConfig, out_dir: Path, resume: bool, allow_safe_changes: bool,
                     info: DistInfo) -> None:
    """``out_dir`` is new, empty, or (with ``resume``) a run with this config (``checkpoint.check_resume_config``);
    stale temporaries of an interrupted checkpoint write are removed."""
    ensure_output_folder(out_dir, resume)
    if not resume:
        return
    if info.is_main:
        remove_stale_temporaries(out_dir)
    ckpt = latest_checkpoint(out_dir)
    step = 0 if ckpt is None else int(ckpt.name.split("_")[1])
    changed = check_resume_config(out_dir, config.to_dict(), step, allow_safe_changes,
                                  defaults=type(config)().to_dict())
    if ckpt is None and info.is_main:  # after the checks: a refused folder gets its one line only
        print(f"--resume: no checkpoint in {out_dir} yet; starting at step 0")
    if changed and info.is_main:
        print("resume with changed settings: " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))


def _resume(out_dir: Path, model: PartSegmentationModel, optimizer, info: DistInfo,
            token_rows: TrainedTokenRows | None = None) -> int:
    """Load the newest checkpoint (model, optimizer, RNG); returns its step (0 when there is none)."""
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return 0
    state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
    load_state_dict_checked(model, read_safetensors(ckpt / "model.safetensors"), str(ckpt))
    optimizer_state = state["optimizer"]
    if token_rows is not None:
        token_rows.refresh()
        optimizer_state = token_rows.rows_optimizer_state(optimizer, optimizer_state)
    optimizer.load_state_dict(optimizer_state)
    torch.random.set_rng_state(state["torch_rng"])
    start = int(state["step"])
    if info.is_main:
        trim_metrics(out_dir / "metrics.jsonl", start)
    return start


def train_step(run: TrainRun, step: int, batch: dict) -> tuple[float, dict]:
    """One optimizer step at ``step`` (0-based): returns (learning rate, loss terms)."""
    config, device = run.config, run.device
    lr = scheduled_lr(config, step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_multiplier", 1.0)
    pixels = batch["pixel_values"].to(device)
    # loss.pixel_stride: the pixels this step's loss reads, a function of each sample's position
    sampled = {} if config.loss.pixel_stride == 1 else {
        "pixel_sample": PixelSample.for_positions(config.loss.pixel_stride, batch["positions"], config.seed)}
    with run.autocast:
        out = run.net(pixels, **run.text.forward_kwargs(), **run.model.loss_forward_options(config.loss), **sampled)
    out.logits = out.logits.float()
    if out.object_part_logits is not None:
        out.object_part_logits = out.object_part_logits.float()
    losses = run.model.loss(out, [t.to(device) for t in batch["part_labels"]],
                            [t.to(device) for t in batch["object_labels"]], run.text,
                            run.dataset.object_to_model.to(device), config.loss,
                            trained_text_classes=None if run.dataset.trained_text_classes is None
                            else run.dataset.trained_text_classes.to(device), **sampled)
    run.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    if run.token_rows is not None and run.info.distributed:
        run.token_rows.all_reduce(run.info.world_size)
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for group in run.optimizer.param_groups for p in group["params"]],
                                       config.grad_clip)
    run.optimizer.step()
    if run.token_rows is not None:
        run.token_rows.write_back()
    return lr, losses


def log_step(run: TrainRun, done: int, lr: float, losses: dict, seconds: float) -> None:
    """Check the loss is finite; on rank 0 append the metrics line (every ``log_period``) and tick the bar."""
    loss_value = float(losses["total"].detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"loss became {loss_value} at step {done}")
    if not run.info.is_main:
        return
    if done % run.config.log_period == 0 or done == run.config.iterations:
        record = {"step": done, "lr": lr, "seconds": round(seconds, 3),
                  **{k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1}}
        with open(run.metrics_file, "a") as handle:
            handle.write(json_text(record) + "\n")
    if run.bar is not None:
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")


def after_step(run: TrainRun, done: int) -> None:
    """Periodic checkpoint (rank 0 writes, all wait) and periodic evaluation."""
    config = run.config
    if done % config.checkpoint_period == 0 or done == config.iterations:
        if run.info.is_main:
            optimizer_state = None if run.token_rows is None else run.token_rows.full_optimizer_state(run.optimizer)
            save_checkpoint(run.out_dir, run.model, run.optimizer, done, config, config.keep_checkpoints,
                            optimizer_state)
        barrier(run.info)
    if done % config.eval_period == 0 and done < config.iterations:
        _evaluate(run.model, config, run.out_dir, done)


def finish(run: TrainRun) -> Path:
    """Save the final model (rank 0), run the final evaluation (unless evaluation is off)."""
    if run.bar is not None:
        run.bar.close()
    final = run.out_dir / "final"
    if run.info.is_main:
        run.model.eval()
        save_pretrained(run.model, final)
    if run.config.eval_period <= run.config.iterations:  # a final evaluation, unless evaluation is switched off
        _evaluate(run.model, run.config, run.out_dir, run.config.iterations)
    barrier(run.info)
    return final


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          allow_safe_changes: bool = False) -> Path:
    """Train per ``config``; returns the folder of the final model. Works under ``torchrun``.

    ``setup`` -> ``train_step`` / ``log_step`` / ``after_step`` per step -> ``finish``. ``resume``
    continues the run in ``out_dir`` from its newest complete checkpoint; its config must equal the
    run's, except the keys of ``checkpoint.SAFE_RESUME_CHANGES`` with ``allow_safe_changes``.
    """
    config.validate()
    run = setup(config, Path(out_dir), resume, progress, allow_safe_changes)
    run.model.train()
    tic = time.perf_counter()
    try:
        for step, batch in zip(range(run.start, config.iterations), run.loader):
            lr, losses = train_step(run, step, batch)
            log_step(run, step + 1, lr, losses, time.perf_counter() - tic)
            after_step(run, step + 1)
        return finish(run)
    finally:  # finished or stopped by an error, the model is a whole one again (the table's hook removed)
        if run.token_rows is not None:
            run.token_rows.detach()


def _evaluate(model: PartSegmentationModel, config: TrainConfig, out_dir: Path, step: int) -> None:
    """Periodic evaluation on the dataset's val split (all ranks take part; rank 0 writes)."""
    from ..eval_runner import evaluate

    from ..data import open_dataset
    from ..data.common import DatasetError

    root = Path(config.root)
    try:
        open_dataset(config.dataset, root, "val").check(full=False)
    except DatasetError:  # no usable val split: nothing to evaluate
        return
    was_training = model.training
    model.eval()
    out = out_dir / "eval" / f"step_{step:07d}.json"
    results = evaluate(config.dataset, root, model, config.eval_protocol, out, limit=config.eval_limit,
                       progress=False, print_table=False)
    if results is not None:
        m = results["metrics"]
        with open(out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json_text({"step": step, "eval": config.eval_protocol, "seen": m["mIoU-base"],
                                     "unseen": m["mIoU-unbase"], "harmonic": m["h-IoU"]}) + "\n")
    if was_training:
        model.train()
