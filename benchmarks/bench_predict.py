"""CPU speed / memory benchmark of ``partclipseg.predictor.Predictor``.

Full-size model (``get_config("clipseg-rd64-refined")``, random weights, 352 px processing size), one
synthetic 500x375 (W x H) RGB image, ``torch.set_num_threads(2)``, float32 unless said otherwise.
Each case runs in its own subprocess (so peak RSS is per case): 1 warm-up run, then ``--runs`` timed
runs; one JSON line per case on stdout::

    {"case": ..., "min_s": ..., "median_s": ..., "peak_rss_mb": ..., "runs": n, ...}

Run (from the repository root)::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_predict.py                 # all cases, 5 runs
    PYTHONPATH=src .venv/bin/python benchmarks/bench_predict.py --cases vision,pascal_part_116_warm --runs 10
    PYTHONPATH=src .venv/bin/python benchmarks/bench_predict.py --quick         # tiny model, seconds (CI smoke)
    PYTHONPATH=src .venv/bin/python benchmarks/bench_predict.py --profile       # op table of one warm Pascal call

Cases: ``vision`` (set_image), ``pascal_part_116_warm`` / ``ade20k_part_234_warm`` (text cache warm:
set_image + Pred-All predict), ``pascal_part_116_cold`` (text cache emptied before each run),
``pascal_part_116_oracle_warm`` (Oracle-Obj, object "dog" + an elliptic object mask),
``pascal_part_116_warm_bf16`` (bfloat16 model; also score/label agreement with float32) and
``text_pascal_part_116`` (encode_vocabulary with an empty cache). Float32 cases carry the issue's
targets (``target_s``, ``target_rss_mb``, ``meets_target``); ``--quick`` reports no targets.

``partcatseg_pascal_part_116``: the full-size PartCATSeg (``partcatseg-voc``: CLIP ViT-B/16 + DINOv2
ViT-S/14, random weights, official switches on except the text features: float32 unless
``--partcatseg-text-fp16``) with the Pascal-Part-116 vocabulary: ``text_s`` (the one-time encoding, then cached per vocabulary; measured on every
8th name and scaled, the other names get random unit features, unless ``--partcatseg-text-all``), and per
run ``set_image``
(both towers, once per image), the first ``predict`` after it (aggregation + decoder + Pred-All) and a
warm ``predict`` (same image and vocabulary: post-processing only); ``min_s`` / ``median_s`` are the
first predict's; ``warmup_round_s`` holds the warm-up round's stages (the process's first image).
``--threads N`` sets ``torch.set_num_threads`` (default 2) for every case. ``--save FILE`` also writes the records (with the load average before and after) as
JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:  # runs without PYTHONPATH=src too (and in the child processes)
    sys.path.insert(0, _SRC)

CASES = ("vision", "pascal_part_116_warm", "pascal_part_116_cold", "ade20k_part_234_warm",
         "pascal_part_116_oracle_warm", "pascal_part_116_warm_bf16", "text_pascal_part_116",
         "partcatseg_pascal_part_116")
TARGET_S = {"pascal_part_116_warm": 1.5, "pascal_part_116_cold": 2.0, "ade20k_part_234_warm": 3.5}
TARGET_RSS_MB = 1536.0
THREADS = 2
#: the PartCATSeg case's text features: float32 (the official fp16 path runs float16 matmuls, very slow on a
#: CPU; only ``text_s``, the one-time encoding per vocabulary, depends on it); ``--partcatseg-text-fp16`` sets it
PARTCATSEG_TEXT_FP16 = False
#: the PartCATSeg case encodes every ~(names / PARTCATSEG_TEXT_SAMPLE)-th name with the text tower and times
#: it (``text_s`` is scaled to all names); the others get random unit features (``--partcatseg-text-all``:
#: encode every name; the full Pascal-Part-116 set is 174 names x 80 prompts)
PARTCATSEG_TEXT_SAMPLE = 8
PARTCATSEG_TEXT_ALL = False
WIDTH, HEIGHT = 500, 375
QUICK_SIZE = (128, 96)  # --quick: tiny-fast model and a small image
STATS: dict = {}  # filled by time_runs


def synthetic_image(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Deterministic textured RGB uint8 image [H, W, 3]: smooth gradients, stripes and noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 17.0)], axis=-1) * 160.0
    noise = rng.integers(0, 96, size=(height, width, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def object_mask(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A centred ellipse covering about a third of the image (bool [H, W])."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x - width / 2) / (width / 3)) ** 2 + ((y - height / 2) / (height / 3)) ** 2 <= 1.0


def build(quick: bool, seed: int = 0):  # random weights, deterministic
    from partclipseg.config import get_config
    from partclipseg.model import build_model

    torch.manual_seed(seed)
    return build_model(get_config("tiny-fast" if quick else "clipseg-rd64-refined")).eval()


def _busy_cpu_s() -> float:
    """Machine-wide busy CPU seconds so far (/proc/stat: user nice system _ _ irq softirq), nan off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def time_runs(fn, runs: int, before=None) -> list[float]:
    """1 warm-up + ``runs`` timed calls of ``fn``; ``before`` (untimed) runs before each call.

    ``STATS`` gets the peak RSS of the setup (model build, references) and of these calls alone (VmHWM
    reset via /proc/self/clear_refs), and ``foreign_cpu_s``: CPU seconds used by other processes
    meanwhile (over ~0.2 s: timings disturbed, run again on a quiet machine)."""
    STATS["setup_peak_rss_mb"] = _vm_hwm_mb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM
    except OSError:
        pass
    busy, own = _busy_cpu_s(), sum(os.times()[:2])
    times = []
    for i in range(runs + 1):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i:
            times.append(elapsed)
    STATS["foreign_cpu_s"] = round(max(0.0, _busy_cpu_s() - busy - (sum(os.times()[:2]) - own)), 2)
    STATS["timed_peak_rss_mb"] = _vm_hwm_mb()
    return times


def _vm_hwm_mb() -> float:
    """Peak RSS (VmHWM) of this process in MiB; falls back to ru_maxrss (KiB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            return round(int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024.0, 1)
    except (OSError, StopIteration, ValueError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def run_partcatseg_case(runs: int, quick: bool) -> dict:
    """The full-size PartCATSeg with Pascal-Part-116 (see the module docstring); ``--quick``: partcatseg-tiny."""
    from partclipseg.model import build_model
    from partclipseg.model.partcatseg import get_partcatseg_config
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    torch.set_num_threads(THREADS)
    size = QUICK_SIZE if quick else (WIDTH, HEIGHT)
    image = synthetic_image(*size)
    vocab = Vocabulary.from_benchmark("pascal_part_116")
    config = get_partcatseg_config("partcatseg-tiny" if quick else "partcatseg-voc")
    config.official.text_features_fp16 = PARTCATSEG_TEXT_FP16
    t0 = time.perf_counter()
    torch.manual_seed(0)
    predictor = Predictor(build_model(config).eval())
    build_s = time.perf_counter() - t0
    STATS["setup_peak_rss_mb"] = _vm_hwm_mb()
    model = predictor.model
    names = list(dict.fromkeys([*vocab.parts, *vocab.objects, *vocab.object_specific_classes]))
    sample = names if PARTCATSEG_TEXT_ALL else names[::max(1, len(names) // PARTCATSEG_TEXT_SAMPLE)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.encode_class_names(sample)  # the text tower on a sample of the names (cached per name)
    text_sample_s = time.perf_counter() - t0
    fp16 = config.official.text_features_fp16
    if not PARTCATSEG_TEXT_ALL:  # the rest: random unit vectors of the right shape (the timed stages never
        e = config.clip.embed_dim  # depend on the text values)
        generator = torch.Generator().manual_seed(0)
        for name in [n for n in names if (n, fp16) not in model._name_cache]:
            row = torch.randn(len(model.templates), e, generator=generator)
            model._name_cache[(name, fp16)] = row / row.norm(dim=-1, keepdim=True)
    predictor.encode_vocabulary(vocab)  # the vocabulary's features from the per-name cache
    text_s = text_sample_s * len(names) / len(sample)
    busy, own = _busy_cpu_s(), sum(os.times()[:2])
    stages: dict[str, list[float]] = {"set_image": [], "first_predict": [], "warm_predict": []}
    warmup: dict[str, float] = {}
    for i in range(runs + 1):  # the first round warms up (its times are reported apart: ``warmup_round_s``)
        marks = [time.perf_counter()]
        predictor.set_image(image)
        marks.append(time.perf_counter())
        predictor.predict(vocab)
        marks.append(time.perf_counter())
        predictor.predict(vocab)
        marks.append(time.perf_counter())
        for k, stage in enumerate(stages):
            if i:
                stages[stage].append(marks[k + 1] - marks[k])
            else:
                warmup[stage] = round(marks[k + 1] - marks[k], 4)
    STATS["foreign_cpu_s"] = round(max(0.0, _busy_cpu_s() - busy - (sum(os.times()[:2]) - own)), 2)
    STATS["timed_peak_rss_mb"] = _vm_hwm_mb()
    first = stages["first_predict"]
    return {"case": "partcatseg_pascal_part_116", "min_s": round(min(first), 4),
            "median_s": round(statistics.median(first), 4), "runs": runs,
            "stage_min_s": {k: round(min(v), 4) for k, v in stages.items()},
            "stage_median_s": {k: round(statistics.median(v), 4) for k, v in stages.items()},
            "times_s": {k: [round(t, 4) for t in v] for k, v in stages.items()}, "warmup_round_s": warmup,
            "text_s": round(text_s, 2), "text_s_measured_on": f"{len(sample)} of {len(names)} names"
            + ("" if PARTCATSEG_TEXT_ALL else " (scaled by the name count; the other names' features are random "
               "unit vectors)"), "text_sample_s": round(text_sample_s, 2),
            "build_s": round(build_s, 2), "image_wh": list(size), "dtype": "float32",
            "config": "partcatseg-tiny" if quick else "partcatseg-voc",
            "text_features_fp16": config.official.text_features_fp16, "num_text_classes": len(vocab),
            "num_part_object_classes": vocab.num_parts + vocab.num_objects + 1, **STATS,
            "official_forward_note": "measured separately: scripts/partcatseg_ref_timing.py "
                                     "(benchmarks/results/official_partcatseg_forward.json)"}


def run_case(name: str, runs: int, quick: bool, chunk_size: int | None = 32) -> dict:
    """Time one case in this process; returns its JSON record (without the process peak RSS)."""
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    if name == "partcatseg_pascal_part_116":
        return run_partcatseg_case(runs, quick)
    torch.set_num_threads(THREADS)
    size = QUICK_SIZE if quick else (WIDTH, HEIGHT)
    image, mask = synthetic_image(*size), object_mask(size[1], size[0])
    vocab = Vocabulary.from_benchmark("ade20k_part_234" if name.startswith("ade20k") else "pascal_part_116")
    t0 = time.perf_counter()
    model = build(quick)
    extra: dict = {"build_s": round(time.perf_counter() - t0, 2), "image_wh": list(size), "dtype": "float32",
                   "num_text_classes": len(vocab), "num_decoder_classes": vocab.num_decoder_classes,
                   "chunk_size": chunk_size}
    p = Predictor(model, chunk_size=chunk_size)
    if name == "pascal_part_116_warm_bf16":
        # float32 reference first, then convert the same model in place (no second copy held in memory)
        p.set_image(image)
        ref = p.predict(vocab, return_scores=True)
        ref = {"object_scores": ref.object_scores, "part_labels": ref.part_labels, "object_labels": ref.object_labels}
        p = Predictor(model, dtype=torch.bfloat16, chunk_size=chunk_size)
    if name not in ("vision", "text_pascal_part_116"):
        p.encode_vocabulary(vocab)  # warm text cache (the cold case clears it before each run)
    kwargs = {"protocol": "oracle-obj", "object_name": "dog", "object_mask": mask} if "oracle" in name else {}
    clear = p._text_cache.clear if name.startswith("text_") or name.endswith("_cold") else None
    step = {"vision": lambda: p.set_image(image), "text_pascal_part_116": lambda: p.encode_vocabulary(vocab)}.get(
        name, lambda: (p.set_image(image), p.predict(vocab, **kwargs)))
    times = time_runs(step, runs, before=clear)
    if name in ("pascal_part_116_warm", "ade20k_part_234_warm"):
        extra["stage_median_s"] = stage_breakdown(p, vocab, image, runs)
    if name.endswith("bf16"):
        p.set_image(image)
        got = p.predict(vocab, return_scores=True)
        extra.update(
            dtype="bfloat16",
            max_abs_score_diff_vs_fp32=float(np.abs(got.object_scores.astype(np.float64) - ref["object_scores"]).max()),
            label_agreement_vs_fp32=float((got.part_labels == ref["part_labels"]).mean()),
            object_label_agreement_vs_fp32=float((got.object_labels == ref["object_labels"]).mean()))
    record = {"case": name, "min_s": round(min(times), 4), "median_s": round(statistics.median(times), 4),
              "runs": len(times), "times_s": [round(t, 4) for t in times]}
    return {**record, **STATS, **extra}


def stage_breakdown(predictor, vocab, image, runs: int) -> dict:
    """Median seconds of set_image / decoder (+ mask heads) / post-processing (predict on a cached decode)."""
    stages: dict[str, list[float]] = {"set_image": [], "decode": [], "postprocess": []}
    encoded = predictor.encode_vocabulary(vocab)
    for _ in range(runs):
        for stage, fn in (("set_image", lambda: predictor.set_image(image)),
                          ("decode", lambda: predictor._decode(encoded)),
                          ("postprocess", lambda: predictor.predict(vocab))):
            start = time.perf_counter()
            fn()
            stages[stage].append(time.perf_counter() - start)
    return {k: round(statistics.median(v), 4) for k, v in stages.items()}


def profile(quick: bool, chunk_size: int | None = 32, rows: int = 15) -> None:
    """Print torch.profiler tables (by op, by op and shape; self CPU) of one warm Pascal-Part Pred-All call."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    torch.set_num_threads(THREADS)
    image = synthetic_image(*(QUICK_SIZE if quick else (WIDTH, HEIGHT)))
    vocab = Vocabulary.from_benchmark("pascal_part_116")
    predictor = Predictor(build(quick), chunk_size=chunk_size)
    predictor.encode_vocabulary(vocab)
    predictor.set_image(image)
    predictor.predict(vocab)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        predictor.set_image(image)
        predictor.predict(vocab)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows))


def child(name: str, runs: int, quick: bool, chunk_size: int) -> None:
    record = run_case(name, runs, quick, chunk_size)
    # process-lifetime peak; clear_refs also resets ru_maxrss, hence the max with the setup peak
    record["peak_rss_mb"] = max(record["setup_peak_rss_mb"], record["timed_peak_rss_mb"], _vm_hwm_mb(),
                                round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1))
    record.update(machine=f"{platform.platform()} / {platform.machine()} / {os.cpu_count()} cpus",
                  torch=torch.__version__, threads=THREADS, quick=quick)
    if not quick and not name.endswith("bf16") and not name.startswith("partcatseg"):  # the targets
        record.update(target_rss_mb=TARGET_RSS_MB, **({"target_s": TARGET_S[name]} if name in TARGET_S else {}))
        record["meets_target"] = (record["peak_rss_mb"] <= TARGET_RSS_MB
                                  and record["median_s"] <= record.get("target_s", float("inf")))
    print(json.dumps(record), flush=True)


def main(argv=None) -> int:
    global PARTCATSEG_TEXT_FP16, PARTCATSEG_TEXT_ALL, THREADS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (after 1 warm-up)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--quick", action="store_true", help="tiny-fast config: a smoke run in seconds")
    parser.add_argument("--chunk-size", type=int, default=32, help="Predictor(chunk_size=...); 0: no chunking")
    parser.add_argument("--profile", action="store_true", help="profile one warm pascal_part_116 call instead")
    parser.add_argument("--save", help="also write the records and the load average to this JSON file")
    parser.add_argument("--partcatseg-text-fp16", action="store_true",
                        help="PartCATSeg case: fp16 text features as the official code (slow on a CPU)")
    parser.add_argument("--partcatseg-text-all", action="store_true",
                        help="PartCATSeg case: encode every name of the vocabulary (default: a sample, scaled)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads (default 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    PARTCATSEG_TEXT_FP16, PARTCATSEG_TEXT_ALL = args.partcatseg_text_fp16, args.partcatseg_text_all
    THREADS = args.threads
    if args.profile or args.child:
        for name in cases if args.child else ():
            child(name, args.runs, args.quick, args.chunk_size or None)
        return profile(args.quick, args.chunk_size or None) if args.profile else 0
    failed = 0
    records, load_before = [], _loadavg()
    for name in cases:  # one fresh process per case, so peak RSS is the case's own
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--cases", name, "--runs", str(args.runs),
               "--chunk-size", str(args.chunk_size), "--threads", str(args.threads)] + \
            (["--partcatseg-text-fp16"] if args.partcatseg_text_fp16 else [])
        cmd += ["--partcatseg-text-all"] if args.partcatseg_text_all else []
        proc = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            failed += 1
            print(json.dumps({"case": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1],
                              "returncode": proc.returncode}), flush=True)
            sys.stderr.write(proc.stderr)
        else:
            print(lines[-1], flush=True)
            records.append(json.loads(lines[-1]))
    if args.save:
        from partclipseg.io import atomic_write_text, json_text

        atomic_write_text(args.save, json_text({"records": records, "loadavg_before": load_before,
                                                "loadavg_after": _loadavg(), "nproc": os.cpu_count()},
                                               indent=1) + "\n")
    return 1 if failed else 0


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (/proc/loadavg), None off Linux."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
