"""Command line: ``partclipseg segment | evaluate | train | pretrain | convert | prepare-partimagenet | demo``.

Argument parsing and reporting only; the work is done by the Predictor, the weights module and
the writers. Exit codes: 0 success, 1 some inputs failed (the others were processed), 2 bad usage,
model or vocabulary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import PartCLIPSegError


def _floats(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from .evaluation import PROTOCOLS
    from .vocabulary import BENCHMARKS

    parser = argparse.ArgumentParser(prog="partclipseg", description="Open-vocabulary part segmentation (PartCLIPSeg).")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment the parts of images for any vocabulary")
    seg.add_argument("images", nargs="+", help="image files, folders (searched recursively), glob patterns or "
                                               "pyarrow filesystem URIs (s3://, gs://, file://)")
    seg.add_argument("--model", default=None, help="saved model folder, hub id or official .pth (default: built-in)")
    vocab = seg.add_mutually_exclusive_group()
    vocab.add_argument("--parts", help="comma-separated object-specific parts, e.g. \"dog's head, dog's leg\"")
    vocab.add_argument("--vocab", help=f"a benchmark vocabulary: {', '.join(BENCHMARKS)}")
    seg.add_argument("--object-mask", type=Path, help="PNG mask of the object (non-zero = object)")
    seg.add_argument("--object", help="object class of --object-mask (Oracle-Obj); without it the model picks")
    seg.add_argument("--box", type=lambda t: _floats(t, 4, "--box"), help="x0,y0,x1,y1 in pixels")
    seg.add_argument("--point", type=lambda t: _floats(t, 2, "--point"), help="x,y in pixels")
    seg.add_argument("--protocol", choices=PROTOCOLS, default=None)
    seg.add_argument("--out", required=True, help="output folder or pyarrow filesystem URI")
    seg.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    seg.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    seg.add_argument("--batch-size", type=int, default=1)
    seg.add_argument("--resume", action="store_true",
                     help="skip images whose outputs this job (same model, vocabulary, options) completed")
    seg.add_argument("--scores", action="store_true", help="also save per-class score maps (.scores.npz)")
    seg.add_argument("--attention", action="append", default=[], metavar="CLASS",
                     help="also save the decoder attention heatmap of CLASS (repeatable)")
    seg.add_argument("--rle", action="store_true", help="COCO RLE masks in the JSON (needs pycocotools)")
    seg.add_argument("--no-overlay", action="store_true")
    seg.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local: this process (under torchrun: one shard per rank); ray: Ray Data actors on a local "
                          "or remote Ray cluster (needs the 'ray' extra). Default: local")
    seg.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="Ray cluster to join (auto, ray://host:10001); default: start a local Ray with this "
                          "machine's CPUs and GPUs")
    seg.add_argument("--workers", type=int, default=None, metavar="N",
                     help="Ray actors (model copies); default: one per GPU, or per CPU without GPUs")
    seg.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                     help="GPUs per Ray actor (fractions share a GPU); default: 1 when the cluster has GPUs, else 0")

    ev = sub.add_parser("evaluate", help="evaluate a model on a benchmark (Pred-All / Oracle-Obj)")
    ev.add_argument("--dataset", required=True, choices=BENCHMARKS)
    ev.add_argument("--root", type=Path, required=True, help="the dataset folder (published layout)")
    ev.add_argument("--model", default=None, help="saved model folder, hub id or official .pth (default: built-in)")
    ev.add_argument("--protocol", choices=PROTOCOLS, required=True)
    ev.add_argument("--train-dataset", default=None, help="for cross-dataset runs: the dataset the model was trained on")
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    ev.add_argument("--out", type=Path, required=True, help="results JSON (work files go to OUT.work/)")
    ev.add_argument("--clean-gt", action="store_true",
                    help="use the annotation as is (default: the official 800-short-side GT round trip)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ev.add_argument("--no-progress", action="store_true")

    tr = sub.add_parser("train", help="train a model with a recipe (works under torchrun)")
    tr.add_argument("recipe", help=f"a shipped recipe name ({', '.join(BENCHMARKS)}) or a recipe JSON file")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. root=datasets/PascalPart116 iterations=100")
    tr.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics, final model)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    tr.add_argument("--no-progress", action="store_true")

    pre = sub.add_parser("pretrain", help="toy language-image pretraining of the vision and text towers (CLIP-style)")
    pre.add_argument("recipe", help="a shipped pretraining recipe (toy_world_pretrain) or a recipe JSON file")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. root=datasets/ToyWorld iterations=100")
    pre.add_argument("--out", type=Path, required=True,
                     help="run folder (checkpoints, metrics; final/ = a model to start part training from)")
    pre.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    pre.add_argument("--no-progress", action="store_true")

    prep = sub.add_parser("prepare-partimagenet",
                          help="build the PartCLIPSeg PartImageNet layout from PartImageNet_Seg (source untouched)")
    prep.add_argument("source", type=Path, help="the extracted PartImageNet_Seg folder")
    prep.add_argument("out", type=Path, help="a new (or empty) output folder")
    prep.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")

    conv = sub.add_parser("convert", help="convert an official PartCLIPSeg/CLIPSeg .pth to a saved model folder")
    conv.add_argument("checkpoint", type=Path)
    conv.add_argument("out_dir", type=Path)
    conv.add_argument("--config", default=None,
                      help="official config JSON (format of reference/tiny/config.json), our config.json, or a "
                           "preset name (default: clipseg-rd64-refined)")
    conv.add_argument("--image-size", type=int, default=None, help="processing size (default 352)")

    demo = sub.add_parser("demo", help="serve the interactive web demo (needs the 'demo' extra: gradio)")
    demo.add_argument("--model", default=None, help="saved model folder, hub id or official .pth (default: built-in)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    demo.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "segment":
            return _segment(args)
        if args.command == "convert":
            return _convert(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "train":
            from .train import load_recipe, train

            _keep_freed_memory()
            final = train(load_recipe(args.recipe, args.overrides), args.out, resume=args.resume,
                          progress=not args.no_progress)
            print(f"final model: {final}")
            return 0
        if args.command == "pretrain":
            from .train.pretrain import load_pretrain_recipe, pretrain

            _keep_freed_memory()
            final = pretrain(load_pretrain_recipe(args.recipe, args.overrides), args.out, resume=args.resume,
                             progress=not args.no_progress)
            print(f"pretrained towers (in a model to train parts from): {final}")
            return 0
        if args.command == "demo":
            return _demo(args)
        if args.command == "prepare-partimagenet":
            from .data.partimagenet_preprocess import preprocess_partimagenet

            print(json.dumps(preprocess_partimagenet(args.source, args.out, link=not args.copy), indent=1))
            return 0
    except PartCLIPSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2


def _keep_freed_memory() -> None:
    """glibc only: keep freed memory in the heap instead of returning it to the OS (no mmap for big
    blocks, no trimming). Training allocates and frees the same large tensors every step; without this
    each step pays for fresh page faults (measured: 1.98 s -> 1.07 s per toy step with attention)."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**30)


# ---------------------------------------------------------------------------- convert
def _convert(args) -> int:
    from .weights import load_pretrained, save_pretrained

    model = load_pretrained(args.checkpoint, config=args.config)
    if args.image_size is not None:
        model.config.image_size = args.image_size
        model.config.validate()
    save_pretrained(model, args.out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir}/config.json and model.safetensors ({type(model).__name__}, {n:,} parameters)")
    return 0


# ---------------------------------------------------------------------------- demo
def _demo(args) -> int:
    try:
        from .demo import launch
    except ImportError as exc:
        raise PartCLIPSegError(f"the demo needs gradio ({exc}): pip install -c constraints.txt -e '.[demo]'") from None
    launch(args.model, host=args.host, port=args.port)
    return 0


# ---------------------------------------------------------------------------- evaluate
def _evaluate(args) -> int:
    import torch

    from .eval_runner import evaluate

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    results = evaluate(args.dataset, args.root, args.model, args.protocol, args.out, train_dataset=args.train_dataset,
                       limit=args.limit, gt_resize_quirk=not args.clean_gt, device=args.device, dtype=dtype,
                       progress=not args.no_progress)
    if results is not None:
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- segment
def _segment(args) -> int:
    """Parse the segment arguments into a job (``segment_job``) and run it on the chosen engine."""
    from .dist import dist_info
    from .engines import run_segment
    from .segment_job import SegmentOptions
    from .vocabulary import Vocabulary

    if args.vocab:
        vocabulary = Vocabulary.from_benchmark(args.vocab)
    elif args.parts:
        vocabulary = Vocabulary.parse(args.parts)
    else:
        raise PartCLIPSegError("give the parts to find: --parts \"dog's head, dog's leg\" or --vocab NAME")
    if args.object and args.object not in vocabulary.objects:
        raise PartCLIPSegError(f"--object {args.object!r} has no part classes in the vocabulary "
                               f"(objects: {', '.join(vocabulary.objects)})")
    if args.batch_size < 1:
        raise PartCLIPSegError("--batch-size must be >= 1")
    mask = None
    if args.object_mask is not None:
        from .preprocess import load_image

        mask = load_image(args.object_mask, exif_transpose=False)[..., 0] > 0
    options = SegmentOptions(
        classes=tuple(vocabulary.object_specific_classes), model=args.model, device=args.device, dtype=args.dtype,
        protocol=args.protocol, object_name=args.object, object_mask=mask, box=args.box, point=args.point,
        scores=args.scores, attention=tuple(args.attention), rle=args.rle, overlay=not args.no_overlay,
        batch_size=args.batch_size)
    try:
        report = run_segment(args.images, args.out, options, engine=args.engine, resume=args.resume,
                             ray_address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    except PartCLIPSegError:
        if not dist_info().is_main:  # under torchrun rank 0 alone reports the error
            return 2
        raise
    if not dist_info().is_main:
        return report.exit_code
    print(json.dumps(report.summary()))
    return report.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
