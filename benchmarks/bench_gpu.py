"""CUDA checks and GPU benchmarks in one run: the script for a lent GPU machine.

Each section runs on its own (a failing one records its error and the next one runs) and the results
file is rewritten after every section, so a run stopped at its time limit still returns what it did::

    PYTHONPATH=src python3 benchmarks/bench_gpu.py --out DIR            # on the GPU machine
    PYTHONPATH=src python benchmarks/bench_gpu.py --out DIR --quick     # CPU smoke (tiny sizes, seconds)

Sections (``--sections``; results in ``DIR/bench_gpu.json``):

* ``env``: torch, CUDA, the GPU.
* ``reference``: every golden fixture folder of the official code (``tests/fixtures/reference/*``) on the
  device: every model output and the training losses (BCE terms, L_sep, L_enh, totals) against the
  official CPU values: with torch's TF32 switches as a process finds them (``torch_default``), in float32
  with TF32 off, with TF32 on for matrix products and convolutions, and under bf16 autocast (max abs
  differences; the CPU tests demand 1e-5).
* ``predict_full``: the full-size model (``clipseg-rd64-refined``, random weights, 352 px) through the
  ``Predictor`` on one 500x375 image: ``set_image``, Pred-All with the Pascal-Part-116 (warm and cold text
  cache) and ADE20K-Part-234 vocabularies, Oracle-Obj; float32 and bfloat16 (with the labels' agreement
  with float32 and with the CPU); ``predict_batch`` throughput at batch 1, 8 and 32.
* ``partcatseg_full``: the full-size PartCATSeg (``partcatseg-voc``, random weights): ``set_image`` and
  Pred-All with the Pascal-Part-116 vocabulary (text features encoded once, then cached).
* ``train_official``: ``partclipseg train pascal_part_116`` (the official recipe: batch 8, VA+L+F+D,
  BGR, resize+flip, attention losses) on a synthetic Pascal-Part-116 in the published layout, from a
  random full-size model: median step time and peak GPU memory in float32 and bf16 autocast, the time of
  20k steps that follows, and a kill/resume check (the run's checkpoint at half-way resumed: losses of
  the resumed steps against the uninterrupted run).
* ``builtin_segment``: ``partclipseg segment examples/images --vocab toy_world`` with the built-in model on
  the GPU and on the CPU: per-image label agreement.
* ``toy_evaluate``: ``partclipseg evaluate`` (Pred-All, Oracle-Obj) of the built-in model on a freshly drawn
  toy world on the GPU and on the CPU: the mIoUs of both.
* ``toy_train``: the built-in model's part-training recipe (``toy_world``) on the GPU: images per second
  (the CPU gives 18 with two processes; ``benchmarks/results/default_model_run``).
* ``large_image``: a 12-megapixel photo (4000x3000) through the full-size model with the ADE20K-Part-234
  vocabulary: set_image followed by Pred-All, a box or a point prompt; seconds and peak GPU memory.
* ``segment_job``: ``partclipseg segment`` over synthetic 500x375 photos with a saved full-size model,
  ``--batch-size 8``: images per second end to end (reading, model, writing label maps, overlays, JSON),
  without overlays, and for another checkout's package (``--baseline-src``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

SECTIONS = ("env", "reference", "predict_full", "partcatseg_full", "train_official", "builtin_segment",
            "toy_evaluate", "toy_train", "segment_job", "large_image")
WIDTH, HEIGHT = 500, 375
#: torch's TF32 switches as this process started (before any section changes them)
DEFAULT_TF32_FLAGS = {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


# ---------------------------------------------------------------------------------------------- helpers
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, runs: int) -> list[float]:
    """1 warm-up + ``runs`` timed calls (the GPU synchronised around each)."""
    out = []
    for i in range(runs + 1):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i:
            out.append(time.perf_counter() - t0)
    return out


def med(times: list[float]) -> float:
    return round(statistics.median(times), 5)


def peak_gpu_mib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cli(*args: str, timeout: float = 600, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """``python -m partclipseg ARGS`` in a child process: (wall seconds, the finished process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "partclipseg", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"partclipseg {' '.join(args[:2])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, proc


def synthetic_image(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 17.0)], axis=-1) * 160.0
    return np.clip(base + rng.integers(0, 96, size=(height, width, 3)), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def scratch(prefix: str):
    """A temporary folder (Path), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def draw_toy_world(folder: Path, train: int, val: int, seed: int, quick: bool) -> None:
    """``python -m partclipseg.data.toyworld`` (64-96 px images with ``quick``)."""
    subprocess.run([sys.executable, "-m", "partclipseg.data.toyworld", str(folder), "--train", str(train), "--val",
                    str(val), "--seed", str(seed), "--workers", "1" if quick else str(min(8, os.cpu_count() or 1)),
                    *(["--min-size", "64", "--max-size", "96"] if quick else [])],
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True, capture_output=True)


def full_config(quick: bool):
    from partclipseg.config import get_config

    return get_config("tiny-fast" if quick else "clipseg-rd64-refined")


def tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


# ---------------------------------------------------------------------------------------------- sections
def section_env(args) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpus=torch.cuda.device_count())
    return info


def _reference_model(path: Path):
    from safetensors.torch import load_file

    from partclipseg.config import PartCLIPSegConfig
    from partclipseg.model import build_model
    from partclipseg.weights import convert_official_state_dict, load_state_dict_checked

    model = build_model(PartCLIPSegConfig.load(path / "config.json"))
    load_state_dict_checked(model, convert_official_state_dict(load_file(str(path / "model.safetensors"))), str(path))
    return model.eval()


def section_reference(args) -> dict:
    """Golden outputs and losses of the official code, computed on the device (see the module docstring)."""
    from safetensors.torch import load_file

    from partclipseg.losses import LossConfig, attention_losses, build_targets, segmentation_losses

    dev, result = device(), {}
    folders = sorted(p.parent for p in (ROOT / "tests" / "fixtures" / "reference").glob("*/config.json"))
    for folder in folders:
        model = _reference_model(folder).to(dev)
        vocab = json.loads((folder / "vocab_and_losses.json").read_text())
        inputs = {k: v.to(dev) for k, v in load_file(str(folder / "inputs.safetensors")).items()}
        expected = load_file(str(folder / "outputs.safetensors"))
        train = {k: v.to(dev) for k, v in load_file(str(folder / "train.safetensors")).items()}
        per_mode = {}
        for mode in ("torch_default", "fp32", "tf32", "bf16_autocast"):
            if mode != "torch_default":  # torch_default: the flags as a user's process finds them
                tf32(mode == "tf32")
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
                out = model(inputs["pixel_values"], inputs["input_ids"], inputs["part_index_map"],
                            inputs["obj_index_map"], inputs["attention_mask"], output_attentions=True,
                            output_hidden_states=True)
                train_out = model(*(train["model_input." + k] for k in ("pixel_values", "input_ids", "part_index_map",
                                                                         "obj_index_map", "attention_mask")),
                                  output_attentions=True)
            b = inputs["pixel_values"].shape[0]
            ours = {"logits": out.logits, "part_obj_logits": out.object_part_logits,
                    "conditional_embeddings": out.class_embeddings.repeat(b, 1)}
            for i, a in enumerate(out.decoder_attentions):
                ours[f"decoder_attentions.{i}"] = a.flatten(0, 1)
            for i, h in enumerate(out.vision_hidden_states):
                ours[f"vision_hidden_states.{i}"] = h
            diffs = {name: float((ours[name].float().cpu() - theirs.float()).abs().max())
                     for name, theirs in expected.items() if name in ours}
            # losses: the fixture's logits (official) + our attentions, as tests/test_losses.py
            s = vocab["train_settings"]
            n = len([k for k in train if k.startswith("obj_part_sem_seg")])
            targets = build_targets([train[f"obj_part_sem_seg{i}"].long() for i in range(n)],
                                    [train[f"sem_seg{i}"].long() for i in range(n)], vocab["text_to_part"],
                                    vocab["text_to_obj_in_part"], vocab["obj_to_obj_in_part"],
                                    train["logits"].shape[-1], s["ignore_label"])
            config = LossConfig(obj_lambda=s["obj_lambda"], part_lambda=s["part_lambda"], sep_lambda=s["attn_sep_lambda"],
                                enh_lambda=s["attn_enh_lambda"], attn_threshold=s["attn_mask_threshold"],
                                attn_levels=tuple(s["attn_level"]), background_weight=s["class_weight_bg"],
                                per_image=False)
            seg = segmentation_losses(train["logits"], train["part_obj_logits"], targets, config)
            att = attention_losses([a.float() for a in train_out.decoder_attentions], targets, vocab["text_to_part"],
                                   vocab["text_to_obj_in_part"], config)
            ref = vocab["train_losses"]
            diffs["loss_sem_seg_noattn"] = abs(float(seg["total"]) - ref["noattn"]["loss_dict"]["loss_sem_seg"])
            diffs["loss_sep"] = abs(float(att["loss_sep"]) - ref["attn"]["loss_sep"])
            diffs["loss_enh"] = abs(float(att["loss_enh"]) - ref["attn"]["loss_enh"])
            per_mode[mode] = {"max_abs_diff": max(diffs.values()), "worst": max(diffs, key=diffs.get),
                              "outputs_checked": len(diffs), "diffs": {k: float(f"{v:.3g}") for k, v in diffs.items()}}
        tf32(False)
        per_mode["fp32_within_1e-5"] = per_mode["fp32"]["max_abs_diff"] <= 1e-5
        per_mode["torch_default_flags"] = DEFAULT_TF32_FLAGS
        result[folder.name] = per_mode
    return result


def section_predict_full(args) -> dict:
    from partclipseg.model import build_model
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    runs = 2 if args.quick else 10
    size = (128, 96) if args.quick else (WIDTH, HEIGHT)
    image = synthetic_image(*size)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    mask = ((x - size[0] / 2) / (size[0] / 3)) ** 2 + ((y - size[1] / 2) / (size[1] / 3)) ** 2 <= 1.0
    pascal, ade = Vocabulary.from_benchmark("pascal_part_116"), Vocabulary.from_benchmark("ade20k_part_234")
    torch.manual_seed(0)
    model = build_model(full_config(args.quick)).eval()
    cpu_labels = Predictor(model, device="cpu").predict_batch([image], pascal)[0].part_labels if not args.quick else None
    result, labels = {"image_wh": list(size), "runs": runs}, {}
    for dtype in (torch.float32, torch.bfloat16):
        name = "fp32" if dtype == torch.float32 else "bf16"
        reset_peak()
        p = Predictor(model, device=device(), dtype=dtype)
        p.encode_vocabulary(pascal)
        p.encode_vocabulary(ade)
        row = {"set_image_s": med(timed(lambda: p.set_image(image), runs)),
               "pascal_pred_all_s": med(timed(lambda: (p.set_image(image), p.predict(pascal)), runs)),
               "ade_pred_all_s": med(timed(lambda: (p.set_image(image), p.predict(ade)), runs)),
               "pascal_oracle_s": med(timed(lambda: (p.set_image(image), p.predict(
                   pascal, protocol="oracle-obj", object_name="dog", object_mask=mask)), runs))}
        clear = p._text_cache.clear
        row["pascal_cold_text_s"] = med(timed(lambda: (clear(), p.set_image(image), p.predict(pascal)), max(2, runs // 3)))
        for batch in (1, 8, 32):
            images = [synthetic_image(*size, seed=k) for k in range(max(batch, 8 if args.quick else 32))]
            t = timed(lambda: p.predict_batch(images, pascal, batch_size=batch), 1 if batch == 1 else 2)
            row[f"pascal_images_per_s_batch{batch}"] = round(len(images) / min(t), 1)
        row["peak_gpu_mib"] = peak_gpu_mib()
        p.set_image(image)
        labels[name] = p.predict(pascal).part_labels
        if cpu_labels is not None:
            row["label_agreement_vs_cpu_fp32"] = round(float((labels[name] == cpu_labels).mean()), 5)
        result[name] = row
        del p
    result["bf16_label_agreement_vs_fp32"] = round(float((labels["bf16"] == labels["fp32"]).mean()), 5)
    return result


def section_partcatseg_full(args) -> dict:
    from partclipseg.model import build_model
    from partclipseg.model.partcatseg import get_partcatseg_config
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    runs = 2 if args.quick else 8
    size = (128, 96) if args.quick else (WIDTH, HEIGHT)
    image = synthetic_image(*size)
    vocab = Vocabulary.from_benchmark("pascal_part_116")
    config = get_partcatseg_config("partcatseg-tiny" if args.quick else "partcatseg-voc")
    if args.quick:  # float16 text matmuls are very slow on a CPU
        config.official.text_features_fp16 = False
    torch.manual_seed(0)
    reset_peak()
    model = build_model(config).eval()
    p = Predictor(model, device=device())
    sync()
    t0 = time.perf_counter()
    p.encode_vocabulary(vocab)
    sync()
    text_s = time.perf_counter() - t0
    row = {"text_encode_once_s": round(text_s, 2), "image_wh": list(size), "runs": runs,
           "set_image_s": med(timed(lambda: p.set_image(image), runs)),
           "pred_all_s": med(timed(lambda: (p.set_image(image), p.predict(vocab)), runs)),
           "peak_gpu_mib": peak_gpu_mib(), "text_features_fp16": config.official.text_features_fp16}
    p.set_image(image)
    gpu_labels = p.predict(vocab).part_labels
    if not args.quick:
        cpu = Predictor(model, device="cpu")
        cpu.set_image(image)
        row["label_agreement_vs_cpu"] = round(float((cpu.predict(vocab).part_labels == gpu_labels).mean()), 5)
    return row


def _step_times(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records if "total" in r]
    return [b - a for a, b in zip(seconds, seconds[1:])]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["total"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "total" in json.loads(line)]


def section_train_official(args) -> dict:
    from partclipseg.data import synthetic
    from partclipseg.train import load_recipe, train

    steps = 4 if args.quick else 40
    with scratch("gpu_train_") as tmp:
        root = synthetic.make_pascal_part(tmp / "PascalPart116", n_train=8 if args.quick else 32, n_val=2)
        base = [f"root={root}", f"iterations={steps}", "log_period=1", f"eval_period={10 ** 9}",
                f"checkpoint_period={steps // 2}", f"num_workers={0 if args.quick else 6}"]
        base.append("init=random:" + ("tiny-fast" if args.quick else "clipseg-rd64-refined"))
        if args.quick:
            base += ["image_size=96", "batch_size=2"]
        result = {"recipe": "pascal_part_116", "steps": steps}
        for precision in ("fp32", "bf16"):
            reset_peak()
            run = tmp / f"run_{precision}"
            config = load_recipe("pascal_part_116", [*base, f"precision={precision}"])
            t0 = time.perf_counter()
            train(config, run, progress=False)
            wall = time.perf_counter() - t0
            times = _step_times(run)[3:] or _step_times(run)  # warm-up steps dropped
            step = statistics.median(times)
            result[precision] = {"median_step_s": round(step, 4), "images_per_s": round(config.batch_size / step, 1),
                                 "hours_for_20k_steps": round(step * 20000 / 3600, 2), "wall_s": round(wall, 1),
                                 "peak_gpu_mib": peak_gpu_mib(), "batch_size": config.batch_size,
                                 "image_size": config.image_size, "first_loss": _losses(run)[0],
                                 "last_loss": _losses(run)[-1]}
        # kill/resume: the fp32 run's half-way checkpoint, resumed, against the uninterrupted run
        full, killed = tmp / "run_fp32", tmp / "run_killed"
        shutil.copytree(full, killed)
        shutil.rmtree(killed / "final")
        for ckpt in (killed / "checkpoints").iterdir():
            if int(ckpt.name.split("_")[1]) > steps // 2:
                shutil.rmtree(ckpt)
        train(load_recipe("pascal_part_116", [*base, "precision=fp32"]), killed, resume=True, progress=False)
        a, b = _losses(full), _losses(killed)
        result["resume"] = {"resumed_from_step": steps // 2, "steps_compared": len(b),
                            "max_abs_loss_diff": max(abs(x - y) for x, y in zip(a, b)), "same_length": len(a) == len(b)}
        return result


def _label_maps(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.labels.png"))}


def section_builtin_segment(args) -> dict:
    with scratch("gpu_seg_") as tmp:
        result, maps = {}, {}
        for dev in ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",):
            wall, _ = cli("segment", str(ROOT / "examples" / "images"), "--vocab", "toy_world", "--device", dev,
                          "--out", str(tmp / dev))
            maps[dev] = _label_maps(tmp / dev)
            result[f"{dev}_wall_s"] = round(wall, 1)
        result["images"] = len(maps["cpu"])
        if "cuda" in maps:
            agree = {k: round(float((maps["cuda"][k] == v).mean()), 5) for k, v in maps["cpu"].items()}
            result["label_agreement_cuda_vs_cpu"] = agree
            result["min_agreement"] = min(agree.values())
            result["identical_images"] = sum(bool((maps["cuda"][k] == v).all()) for k, v in maps["cpu"].items())
        return result


def section_toy_evaluate(args) -> dict:
    with scratch("gpu_eval_") as tmp:
        n = 8 if args.quick else 100
        draw_toy_world(tmp / "data", 0, n, 4242, args.quick)
        result = {"images": n, "seed": 4242}
        for protocol in ("pred-all", "oracle-obj"):
            for dev in ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",):
                out = tmp / f"{protocol}_{dev}.json"
                wall, _ = cli("evaluate", "--dataset", "toy_world", "--root", str(tmp / "data" / "ToyWorld"),
                              "--protocol", protocol, "--device", dev, "--out", str(out), "--no-progress")
                data = json.loads(out.read_text())["metrics"]
                result[f"{protocol}_{dev}"] = {k: data.get(k) for k in ("mIoU-base", "mIoU-unbase", "h-IoU", "mIoU")} | {"wall_s": round(wall, 1)}
        return result


def section_toy_train(args) -> dict:
    from partclipseg.train import load_recipe, train
    from partclipseg.weights import DEFAULT_MODEL_DIR

    with scratch("gpu_toy_") as tmp:
        draw_toy_world(tmp / "data", 16 if args.quick else 400, 2, 1, args.quick)
        steps = 6 if args.quick else 120
        over = [f"root={tmp / 'data' / 'ToyWorld'}", f"iterations={steps}", "log_period=1", f"eval_period={10 ** 9}",
                f"checkpoint_period={10 ** 9}", f"num_workers={0 if args.quick else 8}",
                f"init={DEFAULT_MODEL_DIR}"]
        if args.quick:
            over += ["image_size=64", "batch_size=2"]
        config = load_recipe("toy_world", over)
        reset_peak()
        train(config, tmp / "run", progress=False)
        step = statistics.median(_step_times(tmp / "run")[5:] or _step_times(tmp / "run"))
        return {"recipe": "toy_world", "batch_size": config.batch_size, "image_size": config.image_size,
                "median_step_s": round(step, 4), "images_per_s": round(config.batch_size / step, 1),
                "peak_gpu_mib": peak_gpu_mib(), "cpu_images_per_s_for_comparison": 18.0}


def section_segment_job(args) -> dict:
    """A warm-up job first (a fresh machine's first job pays one-time costs), then an 8- and a 72-image job:
    the steady rate is the difference (start-up cancels); the same with ``--no-overlay``, and with the
    package at ``--baseline-src`` (another checkout's ``src``) when given."""
    from PIL import Image

    from partclipseg.model import build_model

    with scratch("gpu_job_") as tmp:
        torch.manual_seed(0)
        build_model(full_config(args.quick)).save_pretrained(tmp / "model")
        small, big = (2, 6) if args.quick else (8, 72)
        for n in (small, big):
            (tmp / f"in{n}").mkdir()
            for k in range(n):
                Image.fromarray(synthetic_image(seed=k)).save(tmp / f"in{n}" / f"{k:03d}.jpg", quality=90)

        def job(n: int, *extra: str, src: Path | None = None) -> float:
            out = tmp / f"out_{len(list(tmp.iterdir()))}"
            return cli("segment", str(tmp / f"in{n}"), "--model", str(tmp / "model"), "--vocab", "pascal_part_116",
                       "--batch-size", "8", *extra, "--out", str(out),
                       env={"PYTHONPATH": str(src)} if src is not None else None)[0]

        job(small)  # warm-up
        result = {"model": "clipseg-rd64-refined (random weights)", "vocab": "pascal_part_116", "batch_size": 8,
                  "images": [small, big], "note": "steady rate: (big - small) / (wall(big) - wall(small)), after a "
                                                  "warm-up job"}
        variants = [("this_checkout", (), None), ("this_checkout_no_overlay", ("--no-overlay",), None)]
        if args.baseline_src is not None:
            variants.append(("baseline", (), args.baseline_src))
        for name, extra, src in variants:
            walls = [job(small, *extra, src=src), job(big, *extra, src=src)]
            result[name] = {"wall_s": [round(w, 2) for w in walls],
                            "steady_images_per_s": round((big - small) / (walls[1] - walls[0]), 1)}
        return result


def section_large_image(args) -> dict:
    from partclipseg.model import build_model
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    w, h = (400, 300) if args.quick else (4000, 3000)
    image = synthetic_image(w, h)
    vocab = Vocabulary.from_benchmark("ade20k_part_234")
    torch.manual_seed(0)
    p = Predictor(build_model(full_config(args.quick)).eval(), device=device())
    p.encode_vocabulary(vocab)
    reset_peak()
    row = {"image_wh": [w, h], "vocab": "ade20k_part_234"}
    for name, kwargs in (("pred_all", {}), ("box", {"box": (w * 0.3, h * 0.3, w * 0.7, h * 0.7)}),
                         ("point", {"point": (w * 0.5, h * 0.5)})):
        runs = timed(lambda: (p.set_image(image), p.predict(vocab, **kwargs)), 1 if args.quick else 3)
        row[f"set_image_and_{name}_s"] = med(runs)
    row["peak_gpu_mib"] = peak_gpu_mib()
    return row


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run of every section")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="segment_job: also time the package in this folder (another checkout's src)")
    args = parser.parse_args(argv)
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = globals()[f"section_{name}"](args)
        except Exception as exc:  # noqa: BLE001 - recorded; the next section still runs
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:3000], "traceback": traceback.format_exc()[-3000:]}
        results[name]["section_s"] = round(time.perf_counter() - t0, 1)
        print(f"[bench_gpu] {name}: {results[name]['section_s']} s"
              + (f" ERROR {results[name]['error'][:300]}" if "error" in results[name] else ""), flush=True)
        tmp = args.out / "bench_gpu.json.tmp"
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, args.out / "bench_gpu.json")
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
