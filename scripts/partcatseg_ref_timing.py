"""Time the official PartCATSeg forward on the CPU: full-size model, random weights, one image, Pascal-Part-116.

    VENV/bin/python scripts/partcatseg_ref_timing.py --clone PART_CATSEG_CLONE --dinov2 DINOV2_CLONE \
        --base-config tests/fixtures/reference/partcatseg/tiny/config.json --threads 1 --runs 2 --out FILE.json

Builds the official model of kaist-cvml/part-catseg (4a9a882) with the same run-time stubs as
``partcatseg_ref_runner.py`` (detectron2 / fvcore / open_clip stand-ins, DINOv2 from the clone, ``clip.load``
-> ``model_vpt.build_model`` of a random OpenAI-layout fp16 state dict), at the sizes of
``configs/zero_shot/partcatseg_voc.yaml``: CLIP ViT-B/16 (OpenAI ``build_model`` of a ViT-B/16-shaped state
dict), DINOv2 ViT-S/14 (the hub's ``dinov2_vits14`` arguments), aggregator hidden 128, 2 layers, 4 heads,
80 ImageNet templates; train vocabulary = the 74 seen classes, test vocabulary = all 116 classes of
Pascal-Part-116 (``src/partclipseg/resources/vocab/pascal_part_116.json``), so the forward runs 59
part-object rows and 117 specific rows.

Not timed: the text features. The official ``__init__`` computes them once (80 prompts per name through
the fp16 text tower, ~14,000 prompts for the two vocabularies: hours in fp16 on a CPU); here the CLIP
model's ``encode_text`` returns seeded random fp16 vectors of the right shape while ``__init__`` runs, so
``class_embeddings`` (normalisation, ", " splits, the background row) runs as written. The forward never
encodes text: it reads the stored features.

The input is what the official test mapper (``ResizeShortestEdge(640, 768)``, Pillow bilinear) makes of
the 500 x 375 synthetic image of ``benchmarks/bench_predict.py``: a 768 x 576 uint8 tensor, with
``height`` / ``width`` = 375 / 500 (the output size), ``instances.gt_classes`` = dog. The call is the
meta-architecture's inference forward under ``torch.no_grad()`` (as detectron2's ``inference_on_dataset``):
normalisation, padding to 32, resize to 384 / 448, CLIP dense features, DINOv2, both aggregation branches
and the decoder, sigmoid, Oracle-Obj masking, ``sem_seg_postprocess`` of both outputs to 375 x 500.
Timed: the first call after building the model, then ``--runs`` more calls (warm). Each call records wall
time, this process's CPU time, the CPU time other processes used meanwhile (``/proc/stat``) and the load
average before it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import partcatseg_ref_runner as rr  # noqa: E402  (the stubs and the official model builder)

FULL = {
    "clip_arch": {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
                  "vision_patch_size": 16, "context_length": 77, "vocab_size": 49408,
                  "transformer_width": 512, "transformer_layers": 12, "transformer_heads": 8},
    "dino_arch": {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4, "patch_size": 14,
                  "img_size": 518, "init_values": 1.0, "interpolate_offset": 0.1, "interpolate_antialias": False,
                  "num_register_tokens": 0, "ffn_layer": "mlp", "block_chunks": 0},
    # configs/zero_shot/partcatseg_voc.yaml
    "head": {"TEXT_GUIDANCE_PROJ_DIM": 128, "APPEARANCE_GUIDANCE_PROJ_DIM": 128, "DECODER_DIMS": [64, 32],
             "DECODER_GUIDANCE_PROJ_DIMS": [32, 16], "NUM_LAYERS": 2, "NUM_HEADS": 4, "HIDDEN_DIMS": 128,
             "POOLING_SIZES": [2, 2], "WINDOW_SIZES": 12},
    "seeds": {"clip": 0, "build": 1, "text": 2},
}


def _busy_cpu_s() -> float:
    """CPU seconds all processes have spent busy so far (/proc/stat: user + nice + system + irq + softirq + steal)."""
    with open("/proc/stat") as handle:
        fields = [float(x) for x in handle.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]) / os.sysconf("SC_CLK_TCK")


def _synthetic_image() -> np.ndarray:
    spec = importlib.util.spec_from_file_location("bench_predict", ROOT / "benchmarks" / "bench_predict.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # imports numpy / torch only at module level
    return bench.synthetic_image()  # [375, 500, 3] uint8


def _test_mapper(image: np.ndarray, short: int = 640, longest: int = 768) -> torch.Tensor:
    """detectron2 ``ResizeShortestEdge(short, longest)`` (``get_output_shape`` + Pillow bilinear) -> [3, H, W] uint8."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > longest:
        scale = longest / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    newh, neww = int(newh + 0.5), int(neww + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clone", type=Path, required=True)
    ap.add_argument("--dinov2", type=Path, required=True)
    ap.add_argument("--base-config", type=Path, required=True,
                    help="a fixture config.json whose merged detectron2 cfg is the starting point")
    ap.add_argument("--vocab", type=Path, default=ROOT / "src" / "partclipseg" / "resources" / "vocab" / "pascal_part_116.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2, help="warm calls after the first")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vocab = json.loads(args.vocab.read_text())
    base = json.loads(args.base_config.read_text())
    rr.install_stubs(args.clone)
    spec = {**FULL, "test_classes": vocab["object_specific_classes"]}
    cfg = rr.make_cfg(spec, base["cfg"])
    for name, classes in ((cfg.DATASETS.TRAIN[0], vocab["seen_object_specific_classes"]),
                          (cfg.DATASETS.TEST[0], vocab["object_specific_classes"])):
        meta = rr.MetadataCatalog.get(name)
        meta.stuff_classes, meta.obj_classes, meta.ignore_label = list(classes), list(vocab["object_classes"]), 255

    # the text features of __init__: random fp16 rows instead of the fp16 text tower (see the docstring)
    from baselines.third_party import model_vpt

    build_clip = model_vpt.build_model
    text_rng = torch.Generator().manual_seed(spec["seeds"]["text"])

    def build_clip_with_random_text(state, *a, **k):
        model = build_clip(state, *a, **k)
        model.encode_text = lambda ids: torch.randn(ids.shape[0], spec["clip_arch"]["embed_dim"],
                                                    generator=text_rng).half()
        return model

    model_vpt.build_model = build_clip_with_random_text
    t0 = time.perf_counter()
    model = rr.build_official(spec, cfg, args.dinov2).eval()
    build_s = time.perf_counter() - t0
    model_vpt.build_model = build_clip
    predictor = model.sem_seg_head.predictor
    counts = {"T": len(predictor.test_ori_text_classes), "P": len(predictor.test_part_classes),
              "O": len(predictor.test_obj_in_part_classes),
              "part_object_rows": int(predictor.text_part_obj_features_test.shape[0]),
              "specific_rows": int(predictor.text_specific_part_features_test.shape[0]),
              "templates": int(predictor.text_part_obj_features_test.shape[1])}
    params = sum(p.numel() for p in model.parameters())

    image = _test_mapper(_synthetic_image())
    dog = vocab["object_classes"].index("dog")
    instances = types.SimpleNamespace(gt_classes=torch.tensor([dog]))
    instances.to = lambda device: instances
    hw = image.shape[-2:]
    batch = [{"image": image, "height": 375, "width": 500, "instances": instances,
              "sem_seg": torch.zeros(hw, dtype=torch.long), "obj_part_sem_seg": torch.zeros(hw, dtype=torch.long)}]
    calls = []
    for i in range(args.runs + 1):
        rr.RECORD.clear()  # the ImageList stub keeps a copy of each padded batch
        load = os.getloadavg()
        busy, own = _busy_cpu_s(), sum(os.times()[:2])
        t0 = time.perf_counter()
        with torch.no_grad():
            result = model(batch)[0]
        wall = time.perf_counter() - t0
        own = sum(os.times()[:2]) - own
        calls.append({"call": "first" if i == 0 else "warm", "wall_s": round(wall, 3), "cpu_s": round(own, 2),
                      "other_cpu_s": round(max(0.0, _busy_cpu_s() - busy - own), 2),
                      "loadavg_before": [round(x, 2) for x in load]})
        print(json.dumps(calls[-1]), file=sys.stderr, flush=True)
    record = {
        "what": "official PartCATSeg inference forward (meta-arch call under torch.no_grad), text features precomputed",
        "repo": "kaist-cvml/part-catseg@4a9a882 + facebookresearch/dinov2@b8931f7 (run-time stubs: "
                "scripts/partcatseg_ref_runner.py)",
        "config": "configs/zero_shot/partcatseg_voc.yaml sizes, random weights", "parameters": params,
        "vocabulary": "Pascal-Part-116 (test: all 116 classes)", **counts,
        "input": {"image_chw": list(image.shape), "from": "bench_predict.synthetic_image() 500x375 through "
                  "ResizeShortestEdge(640, 768)", "output_hw": [375, 500]},
        "output_shapes": {k: list(v.shape) for k, v in result.items() if isinstance(v, torch.Tensor)},
        "threads": args.threads, "torch": torch.__version__, "build_s_without_text": round(build_s, 2),
        "first_call_s": calls[0]["wall_s"], "warm_call_min_s": min(c["wall_s"] for c in calls[1:]) if calls[1:] else None,
        "calls": calls, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "machine": f"{platform.platform()} / {platform.machine()} / {os.cpu_count()} cpus",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
