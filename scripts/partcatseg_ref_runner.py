"""Run the official PartCATSeg code on the CPU with seeded random weights and write a golden fixture set.

    VENV/bin/python scripts/partcatseg_ref_runner.py --clone PART_CATSEG_CLONE --dinov2 DINOV2_CLONE \
        --out DIR [--spec other] [--threads 2]

Imports the official code of kaist-cvml/part-catseg (commit 4a9a882) and facebookresearch/dinov2
(b8931f7) from clones at run time; nothing of theirs is copied here. What the official code cannot
do on this machine is patched at run time: detectron2 / fvcore / open_clip are replaced by small stub
modules (``configurable``, ``MetadataCatalog``, registries, ``ImageList.from_tensors`` (zero padding to
a multiple of ``size_divisibility``), ``sem_seg_postprocess`` (crop + bilinear)); ``baselines`` packages
are registered empty so that their ``__init__`` (datasets, other meta-archs) is skipped;
``clip.load`` returns ``model_vpt.build_model`` of a random OpenAI-layout fp16 state dict;
``torch.hub.load`` builds DINOv2 from the clone at the spec's size; ``Tensor.cuda`` is the identity
and the meta-arch's ``device`` setter is forced to the CPU.

Needs a venv with torch + torchvision (timm needs it), timm, einops, safetensors, numpy, ftfy,
regex (``pip install torch==2.14.1 torchvision==0.29.1 timm einops safetensors numpy ftfy regex``).
The output folder has the format of the shared ``tiny`` set (``partcatseg-reference-fixture/1``),
including the official ``PartCATSegEvaluator.process`` / ``evaluate`` results (``eval.*``,
``summary.json["evaluator"]``; detectron2's ``SemSegEvaluator`` base is stubbed, ``np.float`` /
``np.int`` are put back). ``keys_full.txt`` (the full-size key list) is copied from ``--keys-full``.
Generation is deterministic (same numbers on re-run). Spec ``other``: CLIP embed 48 (vision 128 x 3,
text 64 x 3, 1 head), DINOv2 48 x 3 (3 heads), hidden 64, 3 aggregation layers, 4 heads, pooling 3,
window 8, a ", " class name, "car" / "cart" objects (the Oracle substring quirk), batch 2 of 96 x 136
images, a 150 x 110 inference image resized to 300 x 220.

Example (venv and clones outside the project):

    python3 -m venv ../ref-catseg/venv
    ../ref-catseg/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm einops safetensors numpy ftfy regex tqdm
    ../ref-catseg/venv/bin/python scripts/partcatseg_ref_runner.py --clone ../ref-catseg/part-catseg \
        --dinov2 ../ref-catseg/dinov2 --out ../ref-catseg/fixtures/other \
        --base-config ../shared/reference/partcatseg/tiny/config.json --keys-full ../shared/reference/partcatseg/keys_full.txt
    PARTCLIPSEG_PARTCATSEG_REFERENCE_DIR=../ref-catseg/fixtures/other python -m pytest -k catseg
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPECS = {
    # other values than the shared "tiny" set: dims, layer counts, heads, pooling, window, vocabulary
    # (with a ", " name and a substring object), batch size 2, non-square images, upscaled output
    "other": {
        "clip_arch": {"embed_dim": 48, "image_resolution": 224, "vision_layers": 3, "vision_width": 128,
                      "vision_patch_size": 16, "context_length": 77, "vocab_size": 49408,
                      "transformer_width": 64, "transformer_layers": 3, "transformer_heads": 1},
        "dino_arch": {"embed_dim": 48, "depth": 3, "num_heads": 3, "mlp_ratio": 4, "patch_size": 14,
                      "img_size": 518, "init_values": 1.0, "interpolate_offset": 0.1,
                      "interpolate_antialias": False, "num_register_tokens": 0, "ffn_layer": "mlp",
                      "block_chunks": 0},
        "head": {"TEXT_GUIDANCE_PROJ_DIM": 8, "APPEARANCE_GUIDANCE_PROJ_DIM": 8, "DECODER_DIMS": [48, 16],
                 "DECODER_GUIDANCE_PROJ_DIMS": [16, 8], "NUM_LAYERS": 3, "NUM_HEADS": 4, "HIDDEN_DIMS": 64,
                 "POOLING_SIZES": [3, 3], "WINDOW_SIZES": 8},
        "train_classes": ["dog's head", "car's wheel", "cart's wheel", "dog's tail", "tv, monitor's screen"],
        "train_objects": ["car", "cart", "dog", "person", "tv, monitor"],
        "test_classes": ["dog's head", "car's wheel", "cart's wheel", "dog's tail", "tv, monitor's screen",
                         "bird's wing", "car's door", "horse's head"],
        "test_objects": ["bird", "car", "cart", "dog", "horse", "person", "tv, monitor"],
        "train_batch": 2, "train_hw": [96, 136], "infer_hw": [150, 110], "infer_out": [300, 220],
        "infer_object": "car", "seeds": {"clip": 21, "build": 22, "post": 23, "data": 24},
        "head_logit_scale": 6.0,
    },
}


# ----------------------------------------------------------------------------- stubs
def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class AttrDict(dict):
    """A detectron2 CfgNode stand-in: attribute access to nested dicts."""

    def __getattr__(self, key):
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return AttrDict(value) if isinstance(value, dict) and not isinstance(value, AttrDict) else value


def configurable(init_func=None, *, from_config=None):
    def wrap(init):
        def wrapped(self, *args, **kwargs):
            if args and isinstance(args[0], AttrDict):
                return init(self, **type(self).from_config(*args, **kwargs))
            return init(self, *args, **kwargs)
        return wrapped
    return wrap(init_func) if init_func is not None else wrap


class Metadata(types.SimpleNamespace):
    pass


class MetadataCatalog:
    _data: dict = {}

    @classmethod
    def get(cls, name):
        return cls._data.setdefault(name, Metadata())


class ImageList:
    def __init__(self, tensor, image_sizes):
        self.tensor, self.image_sizes = tensor, image_sizes

    @staticmethod
    def from_tensors(tensors, size_divisibility=0, pad_value=0.0):
        sizes = [tuple(t.shape[-2:]) for t in tensors]
        h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if size_divisibility > 1:
            h = (h + size_divisibility - 1) // size_divisibility * size_divisibility
            w = (w + size_divisibility - 1) // size_divisibility * size_divisibility
        out = tensors[0].new_full((len(tensors), tensors[0].shape[0], h, w), pad_value)
        for i, t in enumerate(tensors):
            out[i, :, : t.shape[-2], : t.shape[-1]].copy_(t)
        RECORD.setdefault("image_lists", []).append(out.clone())
        return ImageList(out, sizes)


def sem_seg_postprocess(result, img_size, output_height, output_width):
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]


class ShapeSpec(types.SimpleNamespace):
    pass


class _Registry:
    def register(self, *a):
        return (lambda obj: obj) if not a else a[0]


RECORD: dict = {}


class SemSegEvaluatorStub:
    """The parts of detectron2's ``SemSegEvaluator`` that ``PartCATSegEvaluator`` uses."""

    def __init__(self, dataset_name, distributed=True, output_dir=None, *, num_classes=None, ignore_label=None):
        import logging

        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name, self._distributed, self._output_dir = dataset_name, distributed, output_dir
        self._cpu_device = torch.device("cpu")
        self._class_names = meta.stuff_classes
        self._num_classes = len(meta.stuff_classes)
        self._ignore_label = meta.ignore_label if ignore_label is None else ignore_label
        self._logger = logging.getLogger("partcatseg_ref_runner")

    def reset(self):
        self._conf_matrix = np.zeros((self._num_classes + 1, self._num_classes + 1), dtype=np.int64)
        self._predictions = []

    def encode_json_sem_seg(self, sem_seg, input_file_name):
        return []


def install_stubs(clone: Path) -> None:
    reg = _Registry()
    _module("detectron2")
    _module("detectron2.config", configurable=configurable)
    _module("detectron2.data", MetadataCatalog=MetadataCatalog)
    _module("detectron2.modeling", META_ARCH_REGISTRY=reg, SEM_SEG_HEADS_REGISTRY=reg, BACKBONE_REGISTRY=reg,
            Backbone=torch.nn.Module, ShapeSpec=ShapeSpec, build_backbone=None, build_sem_seg_head=None)
    _module("detectron2.modeling.backbone", Backbone=torch.nn.Module)
    _module("detectron2.modeling.postprocessing", sem_seg_postprocess=sem_seg_postprocess)
    _module("detectron2.structures", ImageList=ImageList)
    _module("detectron2.layers", Conv2d=torch.nn.Conv2d, ShapeSpec=ShapeSpec, get_norm=None)
    _module("detectron2.utils")
    _module("detectron2.utils.file_io", PathManager=None)
    _module("detectron2.utils.comm", all_gather=lambda x: [x], is_main_process=lambda: True, synchronize=lambda: None)
    _module("detectron2.evaluation", SemSegEvaluator=SemSegEvaluatorStub)
    _module("detectron2.utils.visualizer", ColorMode=types.SimpleNamespace(SEGMENTATION=None))
    _module("fvcore")
    _module("fvcore.nn")
    _module("fvcore.nn.weight_init")
    _module("open_clip")
    for pkg in ("baselines", "baselines.modeling", "baselines.modeling.transformer", "baselines.modeling.heads",
                "baselines.modeling.backbone"):
        mod = _module(pkg)
        mod.__path__ = [str(clone / pkg.replace(".", "/"))]
    _module("baselines.utils").__path__ = [str(clone / "baselines" / "utils")]
    _module("baselines.utils.visualizer", CustomVisualizer=None)
    _module("baselines.evaluation").__path__ = [str(clone / "baselines" / "evaluation")]
    sys.path.insert(0, str(clone))
    torch.Tensor.cuda = lambda self, *a, **k: self


# ----------------------------------------------------------------------------- model
def random_clip_state(arch: dict, seed: int) -> dict:
    """OpenAI-layout CLIP state dict, fp16, seeded (OpenAI init stds; biases N(0, .02); LN 1 + N(0, .1))."""
    g = torch.Generator().manual_seed(seed)

    def n(*shape, std):
        return torch.randn(*shape, generator=g) * std

    sd = {}
    vw, vl, tw, tl, e = (arch[k] for k in ("vision_width", "vision_layers", "transformer_width",
                                           "transformer_layers", "embed_dim"))
    grid = arch["image_resolution"] // arch["vision_patch_size"]
    sd["visual.conv1.weight"] = n(vw, 3, arch["vision_patch_size"], arch["vision_patch_size"], std=0.02)
    sd["visual.class_embedding"] = n(vw, std=vw ** -0.5)
    sd["visual.positional_embedding"] = n(grid * grid + 1, vw, std=vw ** -0.5)
    sd["visual.proj"] = n(vw, e, std=vw ** -0.5)
    sd["token_embedding.weight"] = n(arch["vocab_size"], tw, std=0.02)
    sd["positional_embedding"] = n(arch["context_length"], tw, std=0.01)
    sd["text_projection"] = n(tw, e, std=tw ** -0.5)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    for prefix, width, layers in (("visual.", vw, vl), ("", tw, tl)):
        for name in ("ln_pre", "ln_post") if prefix else ("ln_final",):
            sd[f"{prefix}{name}.weight"] = 1 + n(width, std=0.1)
            sd[f"{prefix}{name}.bias"] = n(width, std=0.02)
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            sd[b + "attn.in_proj_weight"] = n(3 * width, width, std=width ** -0.5)
            sd[b + "attn.in_proj_bias"] = n(3 * width, std=0.02)
            sd[b + "attn.out_proj.weight"] = n(width, width, std=width ** -0.5 * (2 * layers) ** -0.5)
            sd[b + "attn.out_proj.bias"] = n(width, std=0.02)
            sd[b + "mlp.c_fc.weight"] = n(4 * width, width, std=(2 * width) ** -0.5)
            sd[b + "mlp.c_fc.bias"] = n(4 * width, std=0.02)
            sd[b + "mlp.c_proj.weight"] = n(width, 4 * width, std=width ** -0.5 * (2 * layers) ** -0.5)
            sd[b + "mlp.c_proj.bias"] = n(width, std=0.02)
            for ln in ("ln_1", "ln_2"):
                sd[b + ln + ".weight"] = 1 + n(width, std=0.1)
                sd[b + ln + ".bias"] = n(width, std=0.02)
    sd = {k: v.half() for k, v in sd.items()}
    sd.update({"input_resolution": torch.tensor(arch["image_resolution"]),
               "context_length": torch.tensor(arch["context_length"]), "vocab_size": torch.tensor(arch["vocab_size"])})
    return sd


def build_official(spec: dict, cfg: AttrDict, dinov2_clone: Path):
    from baselines.third_party import clip as official_clip
    from baselines.third_party import model_vpt
    import baselines.modeling.backbone.dinov2_backbone as dino_mod
    from baselines.modeling.heads.part_cat_seg_head import PartCATSegHead
    from baselines.partcatseg import PartCATSeg

    def load(name, device="cpu", jit=False, prompt_depth=0, prompt_length=0):
        state = random_clip_state(spec["clip_arch"], spec["seeds"]["clip"])
        return model_vpt.build_model(state, prompt_depth, prompt_length).to(device), None

    official_clip.load = load

    def hub_load(repo, name, *a, **k):
        sys.path.insert(0, str(dinov2_clone))
        from dinov2.layers import MemEffAttention, NestedTensorBlock
        from dinov2.models.vision_transformer import DinoVisionTransformer

        d = spec["dino_arch"]
        return DinoVisionTransformer(
            img_size=d["img_size"], patch_size=d["patch_size"], embed_dim=d["embed_dim"], depth=d["depth"],
            num_heads=d["num_heads"], mlp_ratio=d["mlp_ratio"], init_values=d["init_values"],
            block_chunks=d["block_chunks"], num_register_tokens=d["num_register_tokens"],
            interpolate_antialias=d["interpolate_antialias"], interpolate_offset=d["interpolate_offset"],
            ffn_layer=d["ffn_layer"], block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention))

    dino_mod.torch.hub.load = hub_load

    class CPUPartCATSeg(PartCATSeg):
        @property
        def device(self):
            return self.pixel_mean.device

        @device.setter
        def device(self, value):
            PartCATSeg.device.fset(self, "cpu")

    def build_backbone(c):
        return dino_mod.DINOv2Backbone(c, None)

    def build_head(c, shape):
        return PartCATSegHead(c, shape)

    import baselines.partcatseg as meta
    meta.build_backbone, meta.build_sem_seg_head = build_backbone, build_head
    torch.manual_seed(spec["seeds"]["build"])
    return CPUPartCATSeg(cfg)


def perturb(model, spec: dict) -> None:
    """Give the copied branches their own values and every bias / norm / gamma a non-default value;
    round head + DINOv2 to fp16-representable values (as the shared set)."""
    g = torch.Generator().manual_seed(spec["seeds"]["post"])
    agg = model.sem_seg_head.predictor.transformer
    with torch.no_grad():
        for module in (agg.conv2, agg.layers_specific_part):
            for name, p in module.named_parameters():
                p.copy_(p + torch.randn(p.shape, generator=g) * max(float(p.std()) if p.numel() > 1 else 0.0, 0.02))
        for root in (agg, model.backbone.dinov2):
            for name, p in root.named_parameters():
                if name.startswith("layers_object"):
                    continue
                if p.ndim <= 1 or "cls_token" in name or "gamma" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
        agg.head.weight.mul_(spec["head_logit_scale"])
        for root in (agg, model.backbone.dinov2):
            for p in root.parameters():
                p.copy_(p.half().float())


# ----------------------------------------------------------------------------- run
def make_cfg(spec: dict, base_cfg: dict) -> AttrDict:
    cfg = copy.deepcopy(base_cfg)
    head = cfg["MODEL"]["SEM_SEG_HEAD"]
    head.update(spec["head"])
    e, d = spec["clip_arch"]["embed_dim"], spec["dino_arch"]["embed_dim"]
    head.update({"TEXT_GUIDANCE_DIM": e, "APPEARANCE_GUIDANCE_DIM": d, "DECODER_GUIDANCE_DIMS": [d, d],
                 "NUM_CLASSES": len(spec["test_classes"])})
    cfg["MODEL"]["WEIGHTS"] = ""
    return AttrDict(cfg)


def vocab_info(classes, objects, predictor, prefix) -> dict:
    p = predictor
    t = len(classes)
    return {"T": t, "P": len(getattr(p, f"{prefix}_part_classes")), "O": len(getattr(p, f"{prefix}_obj_in_part_classes")),
            "ori_text_classes": list(classes), "text_classes": getattr(p, f"{prefix}_text_classes"),
            "obj_classes": list(objects), "part_classes": getattr(p, f"{prefix}_part_classes"),
            "obj_in_part_classes": getattr(p, f"{prefix}_obj_in_part_classes"),
            "text_to_part": getattr(p, f"{prefix}_text_to_part_map")[:t].tolist(),
            "text_to_obj_in_part": getattr(p, f"{prefix}_text_to_obj_in_part_map").tolist(),
            "obj_to_obj_in_part": getattr(p, f"{prefix}_obj_to_obj_in_part_map")[:len(objects)].tolist()}


def run_official_evaluator(cfg, spec, result, image, parts, infer, out_dir: Path) -> dict:
    """``PartCATSegEvaluator.process`` + ``evaluate`` on the one inference image (``np.float`` / ``np.int``
    put back, its ``device = "cuda"`` read as the CPU). Adds ``eval.*`` to ``infer``: its two confusion
    matrices and the per-pixel maps it keeps local, re-derived and checked against the matrices."""
    from PIL import Image

    np.float, np.int = float, int
    from baselines.evaluation.partcatseg_evaluation import PartCATSegEvaluator

    class CPUEvaluator(PartCATSegEvaluator):
        device = property(lambda self: "cpu", lambda self, value: None)

    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    meta.evaluation_set = {"base": [spec["test_classes"].index(c) for c in spec["train_classes"]]}
    evaluator = CPUEvaluator(name, distributed=False, output_dir=None, visualize=False)
    evaluator.reset()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "infer_image.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(png)
    classes = [int(c) for c in parts.unique() if int(c) != 255]
    instances = types.SimpleNamespace(gt_classes=torch.tensor(classes),
                                      gt_masks=torch.stack([parts == c for c in classes]))
    evaluator.process([{"file_name": str(png), "obj_part_instances": instances, "image": image.float()}], [result])
    png.unlink()
    t = len(spec["test_classes"])
    infer["eval.conf_oracle"] = torch.from_numpy(evaluator._conf_matrix.copy())
    infer["eval.conf_pred_all"] = torch.from_numpy(evaluator._conf_matrix_pred_all.copy())
    size = tuple(result["sem_seg"].shape[-2:])
    gt = F.interpolate(parts[None, None].double(), size=size, mode="nearest")[0, 0].long()
    ignore = gt == 255
    pred_oracle, pred_everything = result["sem_seg"].argmax(0), result["sem_seg_all"].argmax(0)
    pred_oracle[ignore], pred_everything[ignore] = t, t
    gt[ignore] = t
    for key, pred in (("eval.conf_oracle", pred_oracle), ("eval.conf_pred_all", pred_everything)):
        conf = torch.bincount(((t + 1) * pred + gt).reshape(-1), minlength=(t + 1) ** 2).reshape(t + 1, t + 1)
        assert torch.equal(conf, infer[key]), f"re-derived {key} differs from the official one"
    infer.update({"eval.gt": gt, "eval.pred_oracle": pred_oracle, "eval.pred_all": pred_everything})
    results = evaluator.evaluate()

    def clean(value):
        value = float(value)
        return None if math.isnan(value) else value

    return {k: {m: clean(v) for m, v in res.items()} for k, res in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clone", type=Path, required=True)
    ap.add_argument("--dinov2", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--spec", default="other", choices=sorted(SPECS))
    ap.add_argument("--base-config", type=Path, required=True,
                    help="a fixture config.json whose merged detectron2 cfg is the starting point")
    ap.add_argument("--keys-full", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = SPECS[args.spec]
    base = json.loads(args.base_config.read_text())
    install_stubs(args.clone)
    from safetensors.torch import save_file

    cfg = make_cfg(spec, base["cfg"])
    for split, classes, objects in (("train", spec["train_classes"], spec["train_objects"]),
                                    ("test", spec["test_classes"], spec["test_objects"])):
        name = cfg.DATASETS.TRAIN[0] if split == "train" else cfg.DATASETS.TEST[0]
        meta = MetadataCatalog.get(name)
        meta.stuff_classes, meta.obj_classes, meta.ignore_label = list(classes), list(objects), 255
    model = build_official(spec, cfg, args.dinov2)
    perturb(model, spec)
    predictor = model.sem_seg_head.predictor
    agg = predictor.transformer
    templates = base["templates"]["list"]
    from baselines.third_party import clip as official_clip

    # ------------------------------------------------------------------ data
    g = torch.Generator().manual_seed(spec["seeds"]["data"])
    h, w = spec["train_hw"]
    b = spec["train_batch"]
    t_train, o_train = len(spec["train_classes"]), len(spec["train_objects"])
    batch = []
    inputs: dict = {}
    for i in range(b):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        objects = torch.full((h, w), 255, dtype=torch.long)
        parts = torch.full((h, w), 255, dtype=torch.long)
        for _ in range(6):  # random rectangles: an object id, and part ids of that object on a sub-rectangle
            y0, x0 = int(torch.randint(0, h - 20, (1,), generator=g)), int(torch.randint(0, w - 20, (1,), generator=g))
            oid = int(torch.randint(0, o_train, (1,), generator=g))
            objects[y0:y0 + 30, x0:x0 + 40] = oid
            owned = [c for c, n in enumerate(spec["train_classes"]) if n.split("'s")[0] == spec["train_objects"][oid]]
            if owned:
                cid = owned[int(torch.randint(0, len(owned), (1,), generator=g))]
                parts[y0 + 5:y0 + 20, x0 + 5:x0 + 25] = cid
        batch.append({"image": image, "sem_seg": objects, "obj_part_sem_seg": parts})
        inputs.update({f"train.image.{i}": image, f"train.sem_seg.{i}": objects, f"train.obj_part_sem_seg.{i}": parts})

    # ------------------------------------------------------------------ hooks
    rec: dict = {}

    def hook(name):
        def fn(mod, args, out):
            rec[name] = out.detach().clone()
        return fn

    handles = [agg.conv1.register_forward_hook(hook("agg.conv1.out")),
               agg.conv2.register_forward_hook(hook("agg.conv2.out")),
               agg.conv_proj_feat.register_forward_hook(hook("agg.conv_proj_feat.out")),
               agg.guidance_projection.register_forward_hook(hook("agg.guidance_projection.out"))]
    for i, proj in enumerate(agg.decoder_guidance_projection):
        handles.append(proj.register_forward_hook(hook(f"agg.decoder_guidance_projection.{i}.out")))
    calls = []

    def text_hook(mod, args, out):
        kind = "part_obj" if not calls else "specific"
        calls.append(kind)
        rec[f"agg.text_ensembled.{kind}"] = args[0].detach().clone()
        rec[f"agg.text_guidance_projection.{kind}.out"] = out.detach().clone()

    handles.append(agg.text_guidance_projection.register_forward_hook(text_hook))
    for group in ("layers", "layers_specific_part"):
        for i, layer in enumerate(getattr(agg, group)):
            if i < len(getattr(agg, group)) - 1:
                handles.append(layer.register_forward_hook(hook(f"agg.{group}.{i}.out")))
            handles.append(layer.swin_block.register_forward_hook(hook(f"agg.{group}.{i}.swin_block.out")))

    def agg_pre(mod, args):
        names = ["agg.img_feats", "agg.in.text_part_obj_feats", "agg.in.text_specific_part_feats", None,
                 "agg.in.part_index_map", "agg.in.obj_index_map", "agg.in.num_part_classes"]
        for n_, a in zip(names, args):
            if n_:
                rec[n_] = torch.as_tensor(a).detach().clone()

    handles.append(agg.register_forward_pre_hook(agg_pre))
    handles.append(model.sem_seg_head.register_forward_hook(
        lambda m, a, out: rec.update({"head.part_obj_logit": out[0].detach().clone(),
                                      "head.specific_logit": out[1].detach().clone(),
                                      **{f"head.costs.{k}": v.detach().clone() for k, v in out[2].items()}})))
    clip_model = predictor.clip_model
    encode_image = clip_model.encode_image

    def enc(x, *a, **k):
        out = encode_image(x, *a, **k)
        rec["clip_input"], rec["clip.dense"] = x.detach().clone(), out.detach().clone()
        return out

    clip_model.encode_image = enc
    dinov2 = model.backbone.dinov2
    forward_features = dinov2.forward_features

    def ff(x, *a, **k):
        out = forward_features(x, *a, **k)
        rec["dino_input"] = x.detach().clone()
        rec.update({f"dino.{k_}": v.detach().clone() for k_, v in out.items()
                    if k_ in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm")})
        return out

    dinov2.forward_features = ff
    handles.append(model.backbone.register_forward_hook(
        lambda m, a, out: rec.update({f"dino.{k}": v.detach().clone() for k, v in out.items()})))
    bce_calls = []
    bce = F.binary_cross_entropy_with_logits

    def bce_rec(inp, target, weight=None, **k):
        out = bce(inp, target, weight=weight, **k)
        # clone: the official code adds the third call into the first one's tensor in place
        bce_calls.append({"input_shape": list(inp.shape), "value": float(out.detach()), "weight": weight.tolist(),
                          "out": out.detach().clone()})
        return out

    jsd_rec = {}
    jsd = model.jensen_shannon_divergence

    def jsd_wrap(p, q, dim, eps=1e-10):
        jsd_rec.update(p=p.detach().clone(), q=q.detach().clone())
        out = jsd(p, q, dim, eps)
        jsd_rec["out"] = out
        return out

    model.jensen_shannon_divergence = jsd_wrap

    # ------------------------------------------------------------------ training call
    RECORD.clear()
    model.train()
    F.binary_cross_entropy_with_logits = bce_rec
    try:
        losses = model(batch)
    finally:
        F.binary_cross_entropy_with_logits = bce
    outputs = {k: v for k, v in rec.items() if k not in ("clip_input", "dino_input")}
    clip_padded, dino_padded = RECORD["image_lists"]
    inputs.update({"train.clip_images_padded": clip_padded, "train.dino_images_padded": dino_padded,
                   "train.clip_input": rec["clip_input"], "train.dino_input": rec["dino_input"]})
    names = ["specific_part.part_pixels", "part.part_pixels", "specific_part.non_object_pixels", "obj.all_pixels"]
    if len(bce_calls) != 4:
        raise SystemExit(f"expected 4 BCE calls, got {len(bce_calls)}: pick other GT rectangles")
    for i, (call, name) in enumerate(zip(bce_calls, names)):
        call["name"] = name
        outputs[f"loss.bce.{i}.{name}"] = call.pop("out")
    outputs["loss.specific_part"] = (outputs["loss.bce.0.specific_part.part_pixels"]
                                     + outputs["loss.bce.2.specific_part.non_object_pixels"])
    outputs["loss.part"], outputs["loss.obj"] = outputs["loss.bce.1.part.part_pixels"], outputs["loss.bce.3.obj.all_pixels"]
    outputs["loss.jsd"] = jsd_rec["out"].detach()
    outputs["loss.jsd.p_mapped_specific_part_costs"], outputs["loss.jsd.q_obj_costs"] = jsd_rec["p"], jsd_rec["q"]
    outputs["loss.total"] = losses["loss_sem_seg"].detach()
    recomputed = (outputs["loss.specific_part"] + outputs["loss.part"] + outputs["loss.obj"] + outputs["loss.jsd"])
    assert torch.equal(recomputed, outputs["loss.total"]), "loss terms do not add up to the official total"

    # text features (fp16, as the official __init__) and the fp32 diagnostic
    for split in ("train", "test"):
        suffix = "" if split == "train" else "_test"
        outputs[f"text.{split}.part_obj"] = getattr(predictor, f"text_part_obj_features{suffix}").clone()
        outputs[f"text.{split}.specific"] = getattr(predictor, f"text_specific_part_features{suffix}").clone()
        part_obj = getattr(predictor, f"{split}_part_classes") + getattr(predictor, f"{split}_obj_in_part_classes")
        specific = getattr(predictor, f"{split}_ori_text_classes")
        for kind, names_ in (("part_obj", part_obj), ("specific", specific)):
            outputs[f"text_fp32.{split}.{kind}"] = predictor.class_embeddings(names_, templates, clip_model).permute(1, 0, 2).float()
            rows, counts = [], []
            for n_ in names_:
                texts = ([t.format(s) for t in templates for s in n_.split(", ")] if ", " in n_
                         else [t.format(n_) for t in templates])
                rows.append(official_clip.tokenize(texts))
                counts.append(len(texts))
            inputs[f"tokens.{split}.{kind}"] = torch.cat(rows)
            inputs[f"tokens.{split}.{kind}.counts"] = torch.tensor(counts)
        tt = len(specific)
        inputs[f"maps.{split}.text_to_part"] = getattr(model, f"{split}_text_to_part_map").clone()
        inputs[f"maps.{split}.obj_to_obj_in_part"] = getattr(model, f"{split}_obj_to_obj_in_part_map").clone()
        inputs[f"maps.{split}.text_to_obj_in_part"] = getattr(model, f"{split}_text_to_obj_in_part_map").clone()
        inputs[f"maps.{split}.part_index_map"] = getattr(predictor, f"{split}_text_to_part_map")[None, None, None, :tt].clone()
        inputs[f"maps.{split}.obj_index_map"] = getattr(predictor, f"{split}_text_to_obj_in_part_map")[None, None, None, :].clone()

    # ------------------------------------------------------------------ inference call
    rec.clear()
    calls.clear()
    RECORD.clear()
    model.eval()
    ih, iw = spec["infer_hw"]
    image = torch.randint(0, 256, (3, ih, iw), generator=g, dtype=torch.uint8)
    test_objects = spec["test_objects"]
    oid = test_objects.index(spec["infer_object"])
    sem = torch.full((ih, iw), 255, dtype=torch.long)
    sem[20:120, 10:90] = oid
    owned = [c for c, n in enumerate(spec["test_classes"]) if n.split("'s")[0] == spec["infer_object"]]
    parts = torch.full((ih, iw), 255, dtype=torch.long)
    for k, c in enumerate(owned):
        parts[25 + 40 * k:55 + 40 * k, 15:85] = c
    instances = types.SimpleNamespace(gt_classes=torch.tensor([oid]))
    instances.to = lambda device: instances
    out_h, out_w = spec["infer_out"]
    result = model([{"image": image, "height": out_h, "width": out_w, "instances": instances,
                     "sem_seg": sem, "obj_part_sem_seg": parts}])[0]
    infer = {k: v for k, v in rec.items() if k not in ("clip_input", "dino_input", "dino.res2", "dino.res3",
                                                       "dino.x_norm_clstoken", "dino.x_prenorm")}
    infer = {k: v for k, v in infer.items() if not k.startswith(("agg.conv", "agg.layers", "agg.img_feats", "head.costs"))}
    infer["result.sem_seg"], infer["result.sem_seg_all"] = result["sem_seg"], result["sem_seg_all"]
    infer.update({f"result.costs.{k}": v for k, v in result["costs"].items()})
    infer["label.oracle_argmax"] = result["sem_seg"].argmax(dim=0)
    infer["label.pred_all_argmax"] = result["sem_seg_all"].argmax(dim=0)
    masked = [i for i in range(result["sem_seg"].shape[0]) if bool((result["sem_seg"][i] == -1.0).all())]
    infer["oracle.select_mask"] = torch.tensor(masked, dtype=torch.long)
    clip_padded, dino_padded = RECORD["image_lists"]
    inputs.update({"infer.image": image, "infer.sem_seg": sem, "infer.obj_part_sem_seg": parts,
                   "infer.instances.gt_classes": torch.tensor([oid]), "infer.height_width": torch.tensor([out_h, out_w]),
                   "infer.clip_images_padded": clip_padded, "infer.dino_images_padded": dino_padded,
                   "infer.clip_input": rec["clip_input"], "infer.dino_input": rec["dino_input"]})
    for h_ in handles:
        h_.remove()
    evaluator_results = run_official_evaluator(cfg, spec, result, image, parts, infer, out_dir=args.out)

    # ------------------------------------------------------------------ write
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    def fp16_if_exact(v):
        if v.is_floating_point() and torch.equal(v.half().float(), v.float()):
            return v.half()
        return v.float() if v.is_floating_point() else v

    state = {k: fp16_if_exact(v.detach()).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    for name, tensors in (("inputs", inputs), ("outputs", outputs), ("infer", infer)):
        save_file({k: torch.as_tensor(v).detach().clone().contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
    config = {
        "format": "partcatseg-reference-fixture/1", "spec": args.spec, "cfg": cfg,
        "clip_arch": {**spec["clip_arch"], "vision_heads": spec["clip_arch"]["vision_width"] // 64},
        "dino_arch": spec["dino_arch"], "templates": base["templates"], "sizes": base["sizes"],
        "normalisation": base["normalisation"], "lambdas": {"part": model.lambda_part, "obj": model.lambda_obj,
                                                           "jsd": model.lambda_jsd},
        "train_batch": {"B": b, "image_hw": [h, w]}, "infer_input": {"image_hw": [ih, iw], "height": out_h, "width": out_w},
        "seeds": spec["seeds"], "head_logit_scale": spec["head_logit_scale"], "ignore_label": 255, "bg_on": True,
        "official": base["official"],
        "vocab": {"train": vocab_info(spec["train_classes"], spec["train_objects"], predictor, "train"),
                  "test": vocab_info(spec["test_classes"], spec["test_objects"], predictor, "test")},
    }
    (out / "config.json").write_text(json.dumps(config, indent=1, default=lambda o: dict(o)) + "\n")
    summary = {"train_losses": {"bce_calls_in_order": bce_calls, **{k.split(".", 1)[1]: float(v) for k, v in outputs.items()
                                                                   if k.startswith("loss.") and v.ndim == 0}},
               "infer": {"object_id": oid, "object_name": spec["infer_object"], "masked_classes": masked,
                         "kept_classes": [i for i in range(len(spec["test_classes"])) if i not in masked],
                         "result_keys": sorted(result)},
               "vocab": config["vocab"], "evaluator": evaluator_results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.keys_full:
        shutil.copyfile(args.keys_full, out / "keys_full.txt")
    print(json.dumps({"out": str(out), "loss_total": float(outputs["loss.total"]), "masked": masked,
                      "bce": [c["value"] for c in bce_calls]}))


if __name__ == "__main__":
    main()
