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
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from ..config import get_config
from ..errors import CheckpointError, ConfigError
from ..eval_runner import barrier, dist_info, init_distributed
from ..io import atomic_write_text
from ..losses import build_targets, clipseg_loss, partclipseg_loss
from ..model import CLIPSegCore, build_model
from ..tokenizer import get_tokenizer
from ..weights import init_from_clipseg, load_pretrained, save_pretrained
from .data import StepSampler, TrainDataset, collate
from .recipe import TrainConfig

OFFICIAL_TRAINABLE = ("visual_adapter.", "text.token_embedding.", "text.position_embedding.", "decoder.",
                      "class_head.", "object_part_head.")


# ---------------------------------------------------------------------------- model set-up
def build_initial_model(config: TrainConfig) -> CLIPSegCore:
    """``random:<preset>``, a saved partclipseg folder (fine-tuning) or CLIPSeg weights (HF layout)."""
    if config.init.startswith("random:"):
        model_config = get_config(config.init.split(":", 1)[1], config.architecture)
        model_config.image_size = config.image_size
        model_config.validate()
        torch.manual_seed(config.seed)
        return build_model(model_config)
    path = Path(config.init)
    if path.is_dir() and (path / "config.json").is_file() and '"format": "partclipseg"' in (path / "config.json").read_text():
        model = load_pretrained(path)
        if model.config.architecture != config.architecture:
            raise ConfigError(f"init {path} is a {model.config.architecture} model but the recipe trains "
                              f"{config.architecture}")
        model.config.image_size = config.image_size
        return model
    if not path.exists() and "/" not in config.init:
        raise CheckpointError(f"init weights not found: {config.init} (a CLIPSeg folder, a hub id, a saved "
                              f"partclipseg folder, or random:<preset>)")
    torch.manual_seed(config.seed)
    return init_from_clipseg(config.init, config.architecture, config.image_size)


def set_trainable(model: CLIPSegCore, which: str) -> list[str]:
    """Freeze everything except the recipe's trainable set; returns the trainable parameter names.

    ``"VA+L+F+D"`` = the official rule (names containing visual_adapter, the text input embeddings,
    film or decoder; in our naming the decoder's heads are ``class_head`` and ``object_part_head``).
    ``"all"`` = every parameter that reaches the loss (ViT blocks after the last extracted layer do not);
    ``"all-but-text"`` = the same without the text tower (``text.*``).
    """
    used_layers = max(model.config.decoder.extract_layers) + 1
    names = []
    for name, param in model.named_parameters():
        if which in ("all", "all-but-text"):
            unused = name.startswith("vision.layers.") and int(name.split(".")[2]) >= used_layers
            train = not unused and not (which == "all-but-text" and name.startswith("text."))
        else:
            train = name.startswith(OFFICIAL_TRAINABLE)
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """detectron2-style groups: one per trainable parameter; weight decay 0 for norm layers and
    embedding tables (``weight_decay_norm`` / ``weight_decay_embed``), ``weight_decay`` otherwise
    (biases included)."""
    groups = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
                decay = config.weight_decay_norm
            elif isinstance(module, nn.Embedding) or name == "position_embedding":
                decay = config.weight_decay_embed
            else:
                decay = config.weight_decay
            groups.append({"params": [param], "weight_decay": decay, "name": f"{module_name}.{name}".lstrip(".")})
    return groups


def poly_lr(config: TrainConfig, step: int) -> float:
    """WarmupPolyLR without warm-up: ``lr * (1 - step / iterations) ** poly_power``."""
    return config.lr * (1.0 - step / config.iterations) ** config.poly_power


# ---------------------------------------------------------------------------- checkpoints
def _checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step:07d}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    folders = sorted(p for p in (out_dir / "checkpoints").glob("step_*") if (p / "trainer.pt").is_file())
    return folders[-1] if folders else None


def save_checkpoint(out_dir: Path, model: CLIPSegCore, optimizer, step: int, config: TrainConfig) -> Path:
    final = _checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "config": config.to_dict(),
                "torch_rng": torch.random.get_rng_state()}, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    folders = sorted(p for p in (out_dir / "checkpoints").glob("step_*") if not p.name.endswith(".tmp"))
    for old in folders[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines after the resumed checkpoint (they will be recomputed identically)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------- the loop
def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train per ``config``; returns the folder of the final model. Works under ``torchrun``."""
    config.validate()
    out_dir = Path(out_dir)
    info = dist_info()
    if config.batch_size % info.world_size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {info.world_size} processes")
    device = f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    init_distributed(info, device)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume and (out_dir / "config.json").is_file():
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose a new folder")

    model = build_initial_model(config)
    set_trainable(model, config.trainable)
    model.to(device)
    dataset = TrainDataset(config, model.config.image_size, model.config.image_mean, model.config.image_std)
    vocab = dataset.vocabulary
    prompts = vocab.baseline_prompts if config.architecture == "clipseg" else vocab.prompts
    input_ids, attention_mask = (t.to(device) for t in get_tokenizer()(list(prompts), padding="longest"))
    text_to_part = torch.tensor(vocab.text_to_part, device=device)
    text_to_object = torch.tensor(vocab.text_to_object, device=device)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, betas=tuple(config.betas),
                                  eps=config.eps)
    start = 0
    if resume and (ckpt := latest_checkpoint(out_dir)) is not None:
        state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
        from ..weights import load_state_dict_checked, read_safetensors

        load_state_dict_checked(model, read_safetensors(ckpt / "model.safetensors"), str(ckpt))
        optimizer.load_state_dict(state["optimizer"])
        torch.random.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        if info.rank == 0:
            _trim_metrics(out_dir / "metrics.jsonl", start)
    if info.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=1) + "\n")
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if device != "cpu" else None)
    sampler = StepSampler(len(dataset), config.batch_size, config.seed, start, config.iterations,
                          info.rank, info.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers,
                                         persistent_workers=config.num_workers > 0)
    bar = None
    if progress and info.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, initial=start, unit="it", desc=f"train {config.dataset}")
    use_attention = config.architecture == "partclipseg" and config.loss.use_attention
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                              enabled=config.precision == "bf16")
    model.train()
    metrics_file = out_dir / "metrics.jsonl"
    tic = time.perf_counter()
    step = start
    for step, batch in zip(range(start, config.iterations), loader):
        lr = poly_lr(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels = batch["pixel_values"].to(device)
        with autocast:
            if config.architecture == "partclipseg":
                out = net(pixels, input_ids, text_to_part, text_to_object, attention_mask,
                          output_attentions=list(config.loss.attn_levels) if use_attention else False)
            else:
                out = net(pixels, input_ids, attention_mask)
        out.logits = out.logits.float()
        if out.object_part_logits is not None:
            out.object_part_logits = out.object_part_logits.float()
        if config.architecture == "partclipseg":
            targets = build_targets([t.to(device) for t in batch["part_labels"]],
                                    [t.to(device) for t in batch["object_labels"]], text_to_part, text_to_object,
                                    dataset.object_to_model.to(device), out.logits.shape[-1])
            losses = partclipseg_loss(out, targets, config.loss)
        else:
            losses = clipseg_loss(out.logits, [t.to(device) for t in batch["part_labels"]], -1, config.loss)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
        optimizer.step()
        done = step + 1
        loss_value = float(losses["total"].detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {done}")
        if info.rank == 0:
            if done % config.log_period == 0 or done == config.iterations:
                record = {"step": done, "lr": lr, "seconds": round(time.perf_counter() - tic, 3),
                          **{k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1}}
                with open(metrics_file, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if done % config.checkpoint_period == 0 or done == config.iterations:
            if info.rank == 0:
                save_checkpoint(out_dir, model, optimizer, done, config)
            barrier(info)
        if done % config.eval_period == 0 and done < config.iterations:
            _evaluate(model, config, out_dir, done)
    if bar is not None:
        bar.close()
    final = out_dir / "final"
    if info.rank == 0:
        model.eval()
        save_pretrained(model, final)
    if config.eval_period <= config.iterations:  # a final evaluation, unless evaluation is switched off
        _evaluate(model, config, out_dir, config.iterations)
    barrier(info)
    return final


def _evaluate(model: CLIPSegCore, config: TrainConfig, out_dir: Path, step: int) -> None:
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
            handle.write(json.dumps({"step": step, "eval": config.eval_protocol, "seen": m["mIoU-base"],
                                     "unseen": m["mIoU-unbase"], "harmonic": m["h-IoU"]}) + "\n")
    if was_training:
        model.train()
