"""Command line: ``partclipseg segment | evaluate | train | pretrain | convert | prepare-partimagenet | demo | models |
download``.

Argument parsing and reporting only; the work is done by the Predictor, the weights module and
the writers. Exit codes: 0 success, 1 some inputs failed (the others were processed), 2 bad usage,
model or vocabulary.
"""
from __future__ import annotations

import argparse
import errno
import re
import sys
from pathlib import Path
from typing import Sequence

from .dist import resolve_device
from .errors import PartCLIPSegError
from .io import json_text

MODEL_HELP = ("a named model (partclipseg models), a saved model folder, a hub id or an official .pth (default: the built-in toy-world model)")
TOY_NOTE = ("note: no --model given: the built-in model only knows the synthetic toy world; for real photographs "
            "use a pretrained model, e.g. `partclipseg segment photo.jpg --model pascal_part_116 --parts \"dog's head, "
            "dog's leg\" --out out/` (list: `partclipseg models`)")

def _floats(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


MAX_ECHO = 200  # longest user text echoed back in an error message


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be a whole number from 1 to 65535, got {_short(text)!r}")
    return port


def _positive_int(what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {_short(text)!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be >= 1, got {value}")
        return value
    return parse


def _short(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters for an error message (a 30 KB argument is not echoed whole)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines end with ``(default: X)`` for every option with a real default not already stated."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, [], argparse.SUPPRESS) \
                and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with errors in one line (no usage block: ``--help`` has it) and cut short: a huge bad
    argument is not echoed back whole."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {_short(message, 4 * MAX_ECHO)} (see {self.prog} --help)\n")


class _Once(argparse.Action):
    """An option that may be given once: a second ``--point`` (``--box``, ``--object``, ...) would silently
    replace the first, while ``--attention`` is repeatable; a segment job takes one prompt."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{self.option_strings[0]} given twice: a job takes one {self.dest.replace('_', ' ')} "
                         f"(segment the images again for another)")
        setattr(namespace, self.dest, values)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("partclipseg")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from .evaluation import PROTOCOLS
    from .vocabulary import BENCHMARKS

    parser = _Parser(prog="partclipseg", description="Open-vocabulary part segmentation (PartCLIPSeg).",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    helpful = {"formatter_class": _HelpFormatter}

    seg = sub.add_parser("segment", help="segment the parts of images for any vocabulary", **helpful)
    seg.add_argument("images", nargs="+", help="image files, folders (searched recursively), glob patterns or "
                                               "pyarrow filesystem URIs (s3://, gs://, file://)")
    seg.add_argument("--model", default=None, help=MODEL_HELP)
    vocab = seg.add_mutually_exclusive_group()
    vocab.add_argument("--parts", help="comma-separated object-specific parts, e.g. \"dog's head, dog's leg\"")
    vocab.add_argument("--vocab", help=f"a benchmark vocabulary: {', '.join(BENCHMARKS)}")
    seg.add_argument("--object-mask", type=Path, action=_Once, metavar="MASK",
                     help="image of the object's mask: a pixel is object where any of its grey, colour or alpha "
                          "values is non-zero; alone, the model picks the object inside it")
    seg.add_argument("--object", action=_Once, metavar="OBJECT",
                     help="the object class (Oracle-Obj): every pixel gets that object's best part; "
                          "with --object-mask only the mask's pixels do (the mask is optional)")
    seg.add_argument("--box", type=lambda t: _floats(t, 4, "--box"), action=_Once, metavar="BOX",
                     help="x0,y0,x1,y1 in pixels")
    seg.add_argument("--point", type=lambda t: _floats(t, 2, "--point"), action=_Once, metavar="POINT",
                     help="x,y in pixels")
    seg.add_argument("--protocol", choices=PROTOCOLS, default=None,
                     help="pred-all: the model finds the objects; oracle-obj: the object is given by --object "
                          "(default: decided by the prompts given)")
    seg.add_argument("--out", required=True, help="output folder or pyarrow filesystem URI")
    seg.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    seg.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                     help="precision of the model's computations")
    seg.add_argument("--batch-size", type=_positive_int("--batch-size"), default=1, help="images embedded at once")
    seg.add_argument("--resume", action="store_true",
                     help="skip images whose outputs this job (same model, vocabulary, options) completed")
    seg.add_argument("--scores", action="store_true", help="also save per-class score maps (.scores.npz)")
    seg.add_argument("--attention", action="append", default=[], metavar="CLASS",
                     help="also save the decoder attention heatmap of CLASS (repeatable)")
    seg.add_argument("--rle", action="store_true", help="COCO RLE masks in the JSON (needs pycocotools)")
    seg.add_argument("--no-overlay", action="store_true",
                     help="do not write the coloured overlay image (S.overlay.png); label map and JSON only")
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

    ev = sub.add_parser("evaluate", help="evaluate a model on a benchmark (Pred-All / Oracle-Obj)", **helpful)
    ev.add_argument("--dataset", required=True, choices=BENCHMARKS, help="the benchmark")
    ev.add_argument("--root", type=Path, required=True, help="the dataset folder (published layout)")
    ev.add_argument("--model", default=None, help=MODEL_HELP)
    ev.add_argument("--protocol", choices=PROTOCOLS, required=True,
                    help="pred-all: the model finds the objects; oracle-obj: each sample's true objects are given")
    ev.add_argument("--train-dataset", default=None, choices=BENCHMARKS,
                    help="for cross-dataset runs: the dataset the model was trained on")
    ev.add_argument("--limit", type=_positive_int("--limit"), default=None, help="evaluate the first N samples only")
    ev.add_argument("--out", type=Path, required=True,
                    help="results JSON (work files go to OUT.work/; a killed run resumes from them)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace the results and work files of another run (other model, protocol, dataset, ...)")
    ev.add_argument("--clean-gt", action="store_true",
                    help="use the annotation as is (default: the official 800-short-side GT round trip)")
    ev.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ev.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="precision of the model's computations")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")

    tr = sub.add_parser("train", help="train a model with a recipe (works under torchrun)", **helpful)
    tr.add_argument("recipe", help=f"a shipped recipe name ({', '.join(BENCHMARKS)}) or a recipe JSON file")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. root=datasets/PascalPart116 iterations=100")
    tr.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics, final model)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest complete checkpoint (same config)")
    tr.add_argument("--allow-safe-changes", action="store_true",
                    help="with --resume: let these keys differ from the run's config: "
                         "iterations, checkpoint_period, keep_checkpoints, eval_period, eval_protocol, eval_limit, "
                         "log_period, num_workers, root")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    pre = sub.add_parser("pretrain", help="toy language-image pretraining of the vision and text towers (CLIP-style)",
                         **helpful)
    pre.add_argument("recipe", help="a shipped pretraining recipe (toy_world_pretrain) or a recipe JSON file")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. root=datasets/ToyWorld iterations=100")
    pre.add_argument("--out", type=Path, required=True,
                     help="run folder (checkpoints, metrics; final/ = a model to start part training from)")
    pre.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")

    prep = sub.add_parser("prepare-partimagenet",
                          help="build the PartCLIPSeg PartImageNet layout from PartImageNet_Seg (source untouched)",
                          **helpful)
    prep.add_argument("source", type=Path, help="the extracted PartImageNet_Seg folder")
    prep.add_argument("out", type=Path, help="a new (or empty) output folder")
    prep.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")

    conv = sub.add_parser("convert", help="convert an official PartCLIPSeg/CLIPSeg .pth to a saved model folder",
                          **helpful)
    conv.add_argument("checkpoint", type=Path, help="the official checkpoint (.pth, e.g. model_final.pth)")
    conv.add_argument("out_dir", type=Path, help="a new (or empty) folder for config.json + model.safetensors")
    conv.add_argument("--config", default=None,
                      help="the checkpoint's model config: an official/Hugging Face CLIPSeg config JSON, our "
                           "config.json, or a preset name (tiny, toy, ...; default: clipseg-rd64-refined)")
    conv.add_argument("--image-size", type=_positive_int("--image-size"), default=None,
                      help="processing size in pixels (default: 352)")
    conv.add_argument("--overwrite", action="store_true", help="replace a model already saved in out_dir")

    demo = sub.add_parser("demo", help="serve the interactive web demo (needs the 'demo' extra: gradio)", **helpful)
    demo.add_argument("--model", default=None, help=MODEL_HELP)
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    demo.add_argument("--port", type=_port, default=None, help="port (default: 7860 or the next free one)")
    demo.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    sub.add_parser("models", help="list the named pretrained models (name, training data, size, source, cached)",
                   **helpful)
    dl = sub.add_parser("download", help="fetch a named model into the cache (or into --to DIR, for offline machines)",
                        **helpful)
    dl.add_argument("name", help="a model name from `partclipseg models`, or a training start file "
                                 "(catseg_base, dinov2_vits14)")
    dl.add_argument("--to", type=Path, default=None,
                    help="also copy the verified model folder here; use it elsewhere with --model DIR")
    return parser


# Operating-system errors that are the user's to fix (a full disk, a read-only or missing place, a
# file where a folder belongs, ...): one line and exit code 2, not a traceback.
USER_OS_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                            errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENOENT, errno.EFBIG,
                            errno.ENOTEMPTY})


# Options whose value may begin with '-' (a negative coordinate): argparse would read "--box -10,0,5,5" as
# an option "-10,0,5,5" and answer "expected one argument"; joined as "--box=-10,0,5,5" the value reaches
# the prompt checks, which name the problem. Only in `segment`, before a "--", and for the option's
# unambiguous abbreviations too ("--bo", "--po": no other segment option begins so).
_NUMBER_LIST_OPTIONS = ("--box", "--point")


def _takes_number_list(word: str) -> bool:
    return len(word) >= 4 and any(option.startswith(word) for option in _NUMBER_LIST_OPTIONS)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    if not argv or argv[0] != "segment":
        return list(argv)
    joined: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--":
            return joined + list(argv[i:])
        if _takes_number_list(argv[i]) and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        if args.command == "segment":
            return _segment(args)
        if args.command == "convert":
            return _convert(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "train":
            return _train(args)
        if args.command == "pretrain":
            from .train.pretrain import load_pretrain_recipe, pretrain

            _keep_freed_memory()
            final = pretrain(load_pretrain_recipe(args.recipe, args.overrides), args.out, resume=args.resume,
                             progress=not args.no_progress)
            print(f"pretrained towers (in a model to train parts from): {final}")
            return 0
        if args.command == "demo":
            _check_listen_address(args.host, args.port)
            _toy_note(args)
            return _demo(args)
        if args.command == "models":
            from .hub import format_table, list_models

            print(format_table(list_models()))
            return 0
        if args.command == "download":
            from .hub import download
            from .hub.fetch import describe

            print(describe(download(args.name, args.to)))
            return 0
        if args.command == "prepare-partimagenet":
            from .data.partimagenet_preprocess import preprocess_partimagenet

            print(json_text(preprocess_partimagenet(args.source, args.out, link=not args.copy), indent=1))
            return 0
    except PartCLIPSegError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        where = f"{_short(str(exc.filename))}: " if exc.filename else ""  # the ": " survives a shortened name
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2


def _toy_note(args) -> None:
    """Say once, on stderr, that the default model is the toy-world one."""
    if getattr(args, "model", None) is None:
        print(TOY_NOTE, file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    """An error message on one line, with very long user text cut (see ``_short``)."""
    return _short(" ".join(str(exc).split()), 2000)


# ---------------------------------------------------------------------------- train
def _train(args) -> int:
    from .train import load_recipe, train

    _keep_freed_memory()
    final = train(load_recipe(args.recipe, args.overrides), args.out, resume=args.resume,
                  progress=not args.no_progress, allow_safe_changes=args.allow_safe_changes)
    print(f"final model: {final}")
    return 0


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
def check_convert_output(out_dir: Path, overwrite: bool) -> None:
    """``convert``'s output folder: not a file, writable, and holding no saved model unless ``overwrite``."""
    from .errors import OutputError
    from .io import check_writable_folder
    from .weights import CONFIG_NAME, WEIGHTS_NAME

    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is a file: give a new folder for the converted model")
    check_writable_folder(out_dir, "output folder")
    present = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if (out_dir / n).exists()]
    if present and not overwrite:
        raise OutputError(f"{out_dir} already holds {' and '.join(present)}: pass --overwrite to replace them")


def _convert(args) -> int:
    from .weights import load_pretrained, save_pretrained

    check_convert_output(args.out_dir, args.overwrite)
    model = load_pretrained(args.checkpoint, config=args.config)
    if args.image_size is not None:
        model.config.image_size = args.image_size
        model.config.validate()
    save_pretrained(model, args.out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir}/config.json and model.safetensors ({type(model).__name__}, {n:,} parameters)")
    return 0


# ---------------------------------------------------------------------------- demo
def demo_install_hint() -> str:
    """How to install the demo's dependency without replacing the installed Pillow (gradio pins Pillow)."""
    try:
        from importlib.metadata import version

        pillow = version("pillow")
    except Exception:  # noqa: BLE001
        return "pip install 'gradio>=6'"
    return (f"pip install 'gradio>=6' 'pillow=={pillow}' (this keeps the installed Pillow {pillow}; if pip "
            f"reports a conflict, install the demo in its own virtualenv)")


def _demo(args) -> int:
    try:
        from .demo import launch
    except ImportError as exc:
        raise PartCLIPSegError(f"the demo needs gradio, which is not importable ({exc}): {demo_install_hint()}") from None
    launch(args.model, host=args.host, port=args.port, device=resolve_device(args.device))
    return 0


def _check_listen_address(host: str, port: int | None) -> None:
    """One line (exit code 2) when the demo could not listen on ``host``:``port`` (an address that is
    not this machine's or does not resolve, a port in use), before the model is loaded; ``port=None``
    checks the address only (the demo then takes 7860 or the next free port)."""
    import socket

    where = f"{host}:{port}" if port is not None else host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise PartCLIPSegError(f"cannot listen on {where}: the address does not resolve ({exc})") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise PartCLIPSegError(f"cannot listen on {where}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------- evaluate
def _evaluate(args) -> int:
    import torch

    from .eval_runner import evaluate

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    _toy_note(args)
    device = resolve_device(args.device)
    results = evaluate(args.dataset, args.root, args.model, args.protocol, args.out, train_dataset=args.train_dataset,
                       limit=args.limit, gt_resize_quirk=not args.clean_gt, device=device, dtype=dtype,
                       progress=not args.no_progress, overwrite=args.overwrite)
    if results is not None:
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- segment
def _segment(args) -> int:
    """Parse the segment arguments into a job (``segment_job``) and run it on the chosen engine."""
    from .dist import dist_info
    from .engines import run_segment
    from .masks import load_object_mask
    from .segment_job import SegmentOptions
    from .vocabulary import Vocabulary

    if args.vocab:
        vocabulary = Vocabulary.from_benchmark(args.vocab)
    elif args.parts:
        vocabulary = Vocabulary.parse(args.parts)
    else:
        raise PartCLIPSegError("give the parts to find: --parts \"dog's head, dog's leg\" or --vocab NAME")
    if args.object is not None and args.object not in vocabulary.objects:
        raise PartCLIPSegError(f"--object {_short(args.object)!r} has no part classes in the vocabulary "
                               f"(objects: {_short(', '.join(vocabulary.objects))})")
    if args.protocol == "oracle-obj" and not args.object:
        raise PartCLIPSegError("--protocol oracle-obj needs --object NAME (the object whose parts to find)")
    mask = None
    if args.object_mask is not None:
        mask = load_object_mask(args.object_mask)
    if args.device is not None:
        resolve_device(args.device)  # a one-line error for a device that is not there
    options = SegmentOptions(
        classes=tuple(vocabulary.object_specific_classes), model=args.model, device=args.device, dtype=args.dtype,
        protocol=args.protocol, object_name=args.object, object_mask=mask, box=args.box, point=args.point,
        scores=args.scores, attention=tuple(args.attention), rle=args.rle, overlay=not args.no_overlay,
        batch_size=args.batch_size)
    if dist_info().is_main:
        _toy_note(args)
    try:
        report = run_segment(args.images, args.out, options, engine=args.engine, resume=args.resume,
                             ray_address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    except PartCLIPSegError:
        if not dist_info().is_main:  # under torchrun rank 0 alone reports the error
            return 2
        raise
    if not dist_info().is_main:
        return report.exit_code
    for note in report.notes:  # e.g. what Oracle-Obj without a mask does; once per distinct text
        print(f"note: {note}", file=sys.stderr)
    print(json_text(report.summary()))
    return report.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
