"""The ``segment`` job: plan -> process items -> report, shared by every engine.

1. **Plan** (``plan_inputs``): expand files, folders (recursively) and glob patterns (local paths or
   ``pyarrow`` URIs) into a sorted list of ``Item``s, refusing what cannot be an image file (FIFOs,
   devices, sockets: they would block a reader forever) and giving every item a unique output
   *name*: its path relative to the folder (or glob base) it was found in, suffix kept
   (``x/dog.jpg`` -> ``x/dog.jpg.labels.png``). Names that clash (same relative path under two
   input folders) take as many parent folders of the real path as make them unique. No output may
   land on an input: a clash is refused before anything is written. Files under the inputs that are
   outputs of an earlier run (``N.labels.png`` / ``N.overlay.png`` / ``N.attention.<k>.png`` next to
   ``N`` or ``N.json``) are not inputs.
2. **Prepare the output** (``start_job``, ``prepare_output``): the folder/URI must be writable and
   free: the job takes its lock (``storage.LOCK_FILE``; a second job on the same output is refused, a
   killed job's lock is taken over) and holds it until the report is written; the job's identity
   (model weights fingerprint, dtype, vocabulary, prompts, output options) is kept in
   ``partclipseg-job.json``. ``--resume`` into an output made by another job is refused, naming what
   differs; a run without ``--resume`` redoes every image (it first removes their ``N.json``, the
   completion marker, so that an interrupted redo resumes correctly).
3. **Process** (``ItemProcessor``): one model per process (or Ray actor); per batch of items: read,
   embed, predict, render and write each output set atomically, JSON last. An image that fails is a
   ``failed`` status with its message; an unwritable output aborts the job.
4. **Report** (``finish_report``): counts, and ``partclipseg-failures.jsonl`` listing every failed
   input with its message.

The engines (``partclipseg.engines``: local, torchrun, ray) only decide which process handles which
items. Every output file is a deterministic function of the image, model and options, so all
engines write the same bytes.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import posixpath
import re
import stat
import sys
import threading
import warnings
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import PartCLIPSegError, VocabularyError
from .fonts import check_font_file
from .io import json_text
from .storage import (LOCK_FILE, JobLock, OutputError, OutputStore, arrow_filesystem, file_kind, is_uri, open_store,
                      read_input_bytes)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
JOB_FILE = "partclipseg-job.json"
FAILURES_FILE = "partclipseg-failures.jsonl"
JOB_FORMAT = "partclipseg-segment-job/1"
#: threads that render and write output sets while the model segments the batch's next image (one
#: image's output set is written by one thread, its JSON last)
WRITER_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1))
#: the results waiting for a writer thread hold at most this many bytes of arrays (one result always may):
#: a result is ~31 bytes a pixel (6 MB at 500x375, 370 MB at 12 MP), several times that with --scores
WRITER_BYTES = 256 * 2 ** 20
_EARLIER_OUTPUT = re.compile(r"^(?P<source>.+)\.(?:labels|overlay|attention\.\d+)\.png$")

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ============================================================================ options
@dataclass(frozen=True)
class SegmentOptions:
    """Everything that decides an image's outputs, plus how to run the model (picklable)."""

    classes: tuple[str, ...]  # the vocabulary's object-specific class names
    model: str | None = None  # folder / hub id / .pth; None: the built-in model
    device: str | None = None  # None: cuda (this process's GPU) when available, else cpu
    dtype: str = "float32"
    protocol: str | None = None
    object_name: str | None = None
    object_mask: np.ndarray | None = field(default=None, compare=False)  # [H, W] bool
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    scores: bool = False
    attention: tuple[str, ...] = ()
    rle: bool = False
    overlay: bool = True
    batch_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PartCLIPSegError(f"--batch-size must be an integer >= 1, got {self.batch_size!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise PartCLIPSegError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        self.check_prompts()

    def check_prompts(self) -> None:
        """What can be wrong with the prompts whatever the image (which go together, box and point numbers,
        the object and the attention classes in the vocabulary): one-line errors before any output is
        touched, instead of one failure per image. A box or point outside an image still fails that image."""
        from .predictor import check_prompt_arguments

        check_prompt_arguments(self.protocol, self.object_mask, self.object_name, self.box, self.point)
        vocabulary = self.vocabulary()
        if self.object_name is not None and self.object_name not in vocabulary.objects:
            raise PartCLIPSegError(f"--object {self.object_name!r} has no part classes in the vocabulary "
                                   f"(objects: {', '.join(vocabulary.objects)})")
        for name in self.attention:
            try:
                vocabulary.index(name)
            except PartCLIPSegError as exc:
                raise PartCLIPSegError(f"--attention: {exc}") from None

    def vocabulary(self):
        from .vocabulary import Vocabulary

        return Vocabulary.from_names(list(self.classes))

    def output_files(self, name: str) -> list[str]:
        """The relative file names an item named ``name`` gets (JSON last)."""
        files = [f"{name}.labels.png"]
        if self.overlay:
            files.append(f"{name}.overlay.png")
        files += [f"{name}.attention.{k}.png" for k in range(len(self.attention))]
        if self.scores:
            files.append(f"{name}.scores.npz")
        return files + [f"{name}.json"]

    def job_key(self, model_fingerprint: str) -> dict[str, Any]:
        """What makes two runs' outputs interchangeable (device and batch size do not change them)."""
        mask = None
        if self.object_mask is not None:
            m = np.ascontiguousarray(self.object_mask, dtype=bool)
            mask = hashlib.sha256(repr(m.shape).encode() + m.tobytes()).hexdigest()[:16]
        return {"model": model_fingerprint, "dtype": self.dtype, "vocabulary": list(self.classes),
                "protocol": self.protocol, "object": self.object_name, "object_mask": mask,
                "box": list(self.box) if self.box else None, "point": list(self.point) if self.point else None,
                "scores": self.scores, "attention": list(self.attention), "rle": self.rle, "overlay": self.overlay}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json_text(key, sort_keys=True).encode()).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """sha256 of a model's config and every tensor (name, dtype, shape, bytes); first 16 hex digits."""
    import torch

    digest = hashlib.sha256(json_text(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def check_vocabulary_fits(model, options: "SegmentOptions") -> None:
    """Tokenise the vocabulary's prompts as ``model`` builds them (no text encoding): a class name too long
    for the text tower is a mistake about the vocabulary, refused in one line before any output is touched,
    not one failure per image."""
    from .tokenizer import get_tokenizer

    try:
        get_tokenizer()(list(model.prompts(options.vocabulary())), padding="longest")  # every architecture's texts
    except PartCLIPSegError as exc:
        raise VocabularyError(f"--parts/--vocab: {exc}") from None


def load_model(source: str | None, log: Log = _stderr):
    """The model of ``--model`` (None: the built-in one), on the CPU; warnings go to ``log``."""
    from .weights import load_default_model, load_pretrained

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_default_model() if source is None else load_pretrained(source)
    for w in caught:
        log(f"warning: {w.message}")
    return model


# ============================================================================ plan
@dataclass(frozen=True)
class Item:
    """One input image: ``source`` as the user named it (reported, kept in the JSON), ``path`` to read
    it from any process (absolute path or URI), ``name`` its unique output name."""

    source: str
    path: str
    name: str


@dataclass
class Plan:
    items: list[Item]
    problems: list[tuple[str, str]]  # (input, message): refused or missing inputs
    earlier_outputs: int = 0  # files skipped as outputs of an earlier run


@dataclass
class _Found:
    source: str  # as reported
    path: str  # absolute path or URI
    relative: str  # posix path relative to its folder / glob base
    identity: tuple[str, ...]  # components of the real path, for clash resolution


def _is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _earlier_output(name: str, siblings: set[str]) -> bool:
    match = _EARLIER_OUTPUT.match(name)
    if not match:
        return False
    source = match["source"]
    return f"{source}.json" in siblings or (source in siblings and _is_image_name(source))


def _real_components(path: str) -> tuple[str, ...]:
    return tuple(p for p in Path(os.path.realpath(path)).parts if p not in ("/", "\\") and not p.endswith(":\\"))


def _walk_local(folder: str, source_prefix: str, skip: str | None, plan: Plan, found: list[_Found]) -> None:
    """Images under ``folder`` (recursive, sorted; hidden entries and symlinked folders skipped)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and (skip is None or os.path.realpath(os.path.join(dirpath, d)) != skip))
        siblings = set(filenames)
        rel_dir = os.path.relpath(dirpath, folder)
        for filename in sorted(filenames):
            if not _is_image_name(filename):
                continue
            if _earlier_output(filename, siblings):
                plan.earlier_outputs += 1
                continue
            full = os.path.join(dirpath, filename)
            shown = os.path.join(source_prefix, rel_dir, filename) if rel_dir != "." else os.path.join(source_prefix, filename)
            if not _regular_or_problem(full, shown, plan):
                continue
            relative = filename if rel_dir == "." else Path(rel_dir, filename).as_posix()
            found.append(_Found(shown, os.path.abspath(full), relative, _real_components(full)))


def _regular_or_problem(path: str, shown: str, plan: Plan) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        plan.problems.append((shown, f"{shown}: cannot read ({exc.strerror})"))
        return False
    if not stat.S_ISREG(mode):
        plan.problems.append((shown, f"{shown}: {file_kind(mode)}, not a regular file; refused"))
        return False
    return True


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    static = []
    for part in parts:
        if glob.has_magic(part):
            break
        static.append(part)
    return str(Path(*static)) if static else "."


def _expand_local(spec: str, skip: str | None, plan: Plan, found: list[_Found]) -> None:
    try:
        mode = os.stat(spec).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        before = len(found) + len(plan.problems)
        _walk_local(spec, spec, skip, plan, found)
        if len(found) + len(plan.problems) == before:
            plan.problems.append((spec, f"{spec}: folder has no images"))
        return
    if mode is not None:
        if _regular_or_problem(spec, spec, plan):
            found.append(_Found(spec, os.path.abspath(spec), Path(spec).name, _real_components(spec)))
        return
    if not glob.has_magic(spec):
        plan.problems.append((spec, f"{spec}: no such file"))
        return
    base = _glob_base(spec)
    matches = sorted(m for m in glob.glob(spec, recursive=True) if _is_image_name(os.path.basename(m)))
    kept = 0
    for match in matches:
        if os.path.isdir(match):
            continue
        siblings = {name for name in os.listdir(os.path.dirname(match) or ".")} \
            if _EARLIER_OUTPUT.match(os.path.basename(match)) else set()
        if _earlier_output(os.path.basename(match), siblings):
            plan.earlier_outputs += 1
            continue
        if _regular_or_problem(match, match, plan):
            found.append(_Found(match, os.path.abspath(match), Path(os.path.relpath(match, base)).as_posix(),
                                _real_components(match)))
        kept += 1
    if not kept:
        plan.problems.append((spec, f"{spec}: no such file"))


def _expand_uri(spec: str, plan: Plan, found: list[_Found]) -> None:
    from pyarrow import fs as pafs

    filesystem, base = arrow_filesystem(spec)
    scheme = spec.split("://", 1)[0]
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.File:
        found.append(_Found(spec, spec, posixpath.basename(base), (scheme, *base.strip("/").split("/"))))
        return
    if info.type != pafs.FileType.Directory:
        plan.problems.append((spec, f"{spec}: no such file" if info.type == pafs.FileType.NotFound
                              else f"{spec}: not a regular file; refused"))
        return
    root = spec.rstrip("/")
    entries = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    by_dir: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        by_dir[posixpath.dirname(entry.path)].add(entry.base_name)
    before = len(found) + len(plan.problems)
    for entry in sorted(entries, key=lambda e: e.path):
        relative = posixpath.relpath(entry.path, base.rstrip("/") or "/")
        if any(part.startswith(".") for part in relative.split("/")) or not _is_image_name(entry.base_name):
            continue
        if _earlier_output(entry.base_name, by_dir[posixpath.dirname(entry.path)]):
            plan.earlier_outputs += 1
            continue
        shown = f"{root}/{relative}"
        if entry.type != pafs.FileType.File:
            if entry.type != pafs.FileType.Directory:
                plan.problems.append((shown, f"{shown}: not a regular file; refused"))
            continue
        found.append(_Found(shown, shown, relative, (scheme, *entry.path.strip("/").split("/"))))
    if len(found) + len(plan.problems) == before:
        plan.problems.append((spec, f"{spec}: folder has no images"))


def _unique_names(found: list[_Found]) -> list[str]:
    """Relative names; clashing ones take parent folders of their real paths until they differ."""
    names = [f.relative for f in found]
    depth = [len(n.split("/")) for n in names]
    while True:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(names):
            groups[name].append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return names
        for group in clashes:  # real paths are distinct, so enough parent folders always separate them
            k = max(depth[i] for i in group) + 1
            longest = max(len(found[i].identity) for i in group)
            while k < longest and len({found[i].identity[-k:] for i in group}) < len(group):
                k += 1
            for i in group:
                names[i] = "/".join(found[i].identity[-k:])
                depth[i] = k


def plan_inputs(specs: Sequence[str], out: str | os.PathLike | None = None) -> Plan:
    """Expand ``specs`` (files, folders, globs, URIs) into the job's items; see the module docstring."""
    plan = Plan([], [])
    found: list[_Found] = []
    out_text = os.fspath(out) if out is not None else None
    skip = os.path.realpath(out_text) if out_text is not None and not is_uri(out_text) else None
    for spec in specs:
        spec = os.fspath(spec)
        if is_uri(spec):
            _expand_uri(spec, plan, found)
        else:
            _expand_local(spec, skip, plan, found)
    unique: dict[str, _Found] = {}
    for f in found:  # the same file named twice is one item
        unique.setdefault("/".join(f.identity) if is_uri(f.path) else os.path.realpath(f.path), f)
    found = list(unique.values())
    names = _unique_names(found)
    plan.items = sorted((Item(f.source, f.path, n) for f, n in zip(found, names)), key=lambda it: it.name)
    return plan


def check_no_input_overwritten(plan: Plan, options: SegmentOptions, out: str) -> None:
    """Refuse a plan whose outputs (or job files) would replace one of its inputs."""
    if is_uri(out):
        out_root = out.rstrip("/")
        inside = {it.path[len(out_root) + 1:]: it for it in plan.items if it.path.startswith(out_root + "/")}
    else:
        out_root = os.path.realpath(out)
        inside = {}
        for it in plan.items:
            if is_uri(it.path):
                continue
            real = os.path.realpath(it.path)
            if real.startswith(out_root + os.sep):
                inside[Path(os.path.relpath(real, out_root)).as_posix()] = it
    if not inside:
        return
    for reserved in (JOB_FILE, FAILURES_FILE, LOCK_FILE):
        if reserved in inside:
            raise PartCLIPSegError(f"input {inside[reserved].source} has the name of the job file {reserved} in "
                                   f"--out {out}: choose another --out")
    for it in plan.items:
        for name in options.output_files(it.name):
            victim = inside.get(name)
            if victim is not None:
                raise PartCLIPSegError(f"input {victim.source} would be overwritten by an output of {it.source} "
                                       f"({name}); choose another --out")


# ============================================================================ output
def output_complete(store: OutputStore, name: str, job: str, source_path: str | None = None) -> bool:
    """True when ``name``'s JSON exists, was written by a job with key hash ``job`` and (given the input's
    ``source_path``, a local file) was made from the input as it is now: same size, and not modified after
    the JSON was written or, if it was, the same sha256."""
    try:
        data = store.read_bytes(f"{name}.json")
    except OSError:
        return False
    if data is None:
        return False
    try:
        info = json.loads(data)
        if info.get("job") != job:
            return False
        return source_path is None or _input_unchanged(source_path, info.get("input_file"),
                                                       _written_ns(store, f"{name}.json"))
    except (ValueError, AttributeError, TypeError, KeyError):
        return False


def input_identity(data: bytes) -> dict[str, Any]:
    """What the JSON records of the input it was made from."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _written_ns(store: OutputStore, name: str) -> int | None:
    """When a local output file was last written (ns), else None (a remote store: the input is re-hashed)."""
    path = store.local_path(name)  # None on a remote filesystem
    try:
        return os.stat(path).st_mtime_ns if path is not None else None
    except OSError:
        return None


def _input_unchanged(path: str, recorded: dict | None, written_ns: int | None) -> bool:
    """Whether the local input ``path`` still is the recorded one: the same size and either not modified
    since the output was written (no read) or the same sha256. URIs are not re-read (True); an output set
    without a record predates it (True); an input that cannot be read now is processed again (False), which
    reports why."""
    if recorded is None or is_uri(path):
        return True
    try:
        st = os.stat(path)
        if st.st_size != recorded["bytes"]:
            return False
        if written_ns is not None and st.st_mtime_ns <= written_ns:
            return True
        return input_identity(read_input_bytes(path))["sha256"] == recorded["sha256"]
    except (OSError, PartCLIPSegError):
        return False


def _key_differences(old: dict, new: dict) -> list[str]:
    labels = {"model": "model weights", "object_mask": "object mask", "object": "object (--object)"}
    return [labels.get(k, k) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def prepare_output(store: OutputStore, key: dict, items: Sequence[Item], *, resume: bool, log: Log = _stderr,
                   model_source: str | None = None) -> None:
    """Check that ``store`` is writable, refuse ``--resume`` into another job's output, record the job.

    Without ``resume`` the completion markers (JSON) of the planned items are removed first."""
    store.prepare()
    old = None
    data = store.read_bytes(JOB_FILE)
    if data is not None:
        try:
            old = json.loads(data)
            if not isinstance(old, dict) or old.get("format") != JOB_FORMAT or not isinstance(old.get("key"), dict):
                raise ValueError
        except ValueError:
            raise PartCLIPSegError(f"{store.root}/{JOB_FILE} exists but is not a partclipseg segment job file; "
                                   f"choose another --out") from None
    if old is not None and old["key"] != key:
        differs = ", ".join(_key_differences(old["key"], key))
        if resume:
            raise PartCLIPSegError(f"--resume: the outputs in {store.root} were made with another {differs}; "
                                   f"use a new --out, or run without --resume to redo every image")
        log(f"note: {store.root} holds outputs made with another {differs}: redoing every image given "
            f"(outputs there of images not given stay from the earlier job)")
    if not resume:
        _remove_markers(store, items)
    record = {"format": JOB_FORMAT, "job": key_hash(key), "key": key, "model_source": model_source}
    store.write_bytes(JOB_FILE, (json_text(record, indent=1) + "\n").encode())


def _remove_markers(store: OutputStore, items: Sequence[Item]) -> None:
    for it in items:
        store.delete(f"{it.name}.json")


@dataclass
class StartedJob:
    plan: Plan
    store: OutputStore
    todo: list
    skipped: int
    lock: JobLock  # held until the engine has written the report; release() it (also on errors)


def start_job(specs: Sequence[str], out: str, options: SegmentOptions, key: dict, job: str, *, resume: bool,
              log: Log = _stderr) -> StartedJob:
    """Plan the inputs, take the output's job lock, check and prepare the output, find what is left to do."""
    plan = plan_inputs(specs, out)
    if not plan.items:  # nothing to segment: a command-line mistake, reported before --out is touched
        shown = "; ".join(message for _, message in plan.problems[:3]) or "no image among the inputs"
        more = f" (+{len(plan.problems) - 3} more)" if len(plan.problems) > 3 else ""
        raise PartCLIPSegError(f"nothing to segment: {shown}{more}")
    for _, message in plan.problems:
        log(f"error: {message}")
    if plan.earlier_outputs:
        log(f"note: {plan.earlier_outputs} file(s) among the inputs are outputs of an earlier run; not segmented")
    check_no_input_overwritten(plan, options, out)
    store = open_store(out)
    store.prepare()
    lock = store.lock(log)
    try:
        prepare_output(store, key, plan.items, resume=resume, log=log, model_source=options.model)
        todo = [it for it in plan.items if not (resume and output_complete(store, it.name, job, it.path))]
    except BaseException:
        lock.release()
        raise
    skipped = len(plan.items) - len(todo)
    if skipped:
        log(f"resume: {skipped} image(s) already done")
    return StartedJob(plan, store, todo, skipped, lock)


# ============================================================================ process
def item_status(item: Item, status: str, error: str | None = None, note: str | None = None) -> dict[str, Any]:
    """``status``: ok (written now), failed (``error`` says why); ``note``: the result's note (how its
    region was chosen, e.g. Oracle-Obj without a mask), reported once per distinct text."""
    return {"name": item.name, "source": item.source, "status": status, "error": error, "note": note}


class ItemProcessor:
    """One model in one process; writes the outputs of batches of items into ``store``."""

    def __init__(self, options: SegmentOptions, store: OutputStore, *, device: str | None = None,
                 expected_job: str | None = None, log: Log = _stderr, model=None):
        import torch

        from .dist import default_device
        from .predictor import Predictor

        self.options = options
        self.store = store
        self._writer_pool = None
        self.vocabulary = options.vocabulary()
        model = load_model(options.model, log) if model is None else model
        check_vocabulary_fits(model, options)
        check_font_file()  # a bad $PARTCLIPSEG_FONT: one line now, not a failure per image
        self.key = options.job_key(model_fingerprint(model))
        self.job = key_hash(self.key)
        if expected_job is not None and self.job != expected_job:
            raise PartCLIPSegError(f"the model {options.model or '(built-in)'} loaded by this worker differs from the "
                                   f"one the job was planned with (weights fingerprint {self.key['model']}); "
                                   f"every worker must see the same weights")
        device = device or options.device or default_device()
        dtype = torch.bfloat16 if options.dtype == "bfloat16" else torch.float32
        try:
            self.predictor = Predictor(model, device=device, dtype=dtype)
        except (RuntimeError, AssertionError) as exc:  # e.g. CUDA asked for but not available
            raise PartCLIPSegError(f"cannot put the model on {device!r}: {exc}") from None
        o = options
        self.predict_kwargs = dict(protocol=o.protocol, object_mask=o.object_mask, object_name=o.object_name,
                                   box=o.box, point=o.point, return_scores=o.scores,
                                   attention_for=list(o.attention) or None)

    def process(self, items: Sequence[Item], *, skip_complete: bool = True) -> list[dict[str, Any]]:
        """Segment and write ``items`` (one model batch); one status per item, in order.

        ``skip_complete``: an item whose complete output of this job exists already (a batch retried
        after a worker died) is not written again; it counts as ``ok``. ``OutputError`` propagates."""
        from .preprocess import load_image

        statuses: dict[int, dict[str, Any]] = {}
        loaded: list[tuple[int, Item, np.ndarray]] = []
        identities: dict[int, dict[str, Any]] = {}
        for i, item in enumerate(items):
            if skip_complete and output_complete(self.store, item.name, self.job, item.path):
                statuses[i] = item_status(item, "ok")
                continue
            try:
                data = read_input_bytes(item.path)
                identities[i] = input_identity(data)
                stream = io.BytesIO(data)
                stream.name = item.source
                loaded.append((i, item, load_image(stream)))
            except PartCLIPSegError as exc:
                statuses[i] = item_status(item, "failed", _with_source(str(exc), item.source))
        if loaded:
            try:
                self.predictor.set_images([array for _, _, array in loaded])
            except PartCLIPSegError as exc:
                if len(loaded) == 1:
                    statuses[loaded[0][0]] = item_status(loaded[0][1], "failed", _with_source(str(exc), loaded[0][1].source))
                    loaded = []
                else:  # find the image the batch failed on: one at a time
                    for i, item, _ in loaded:
                        statuses[i] = self.process([item], skip_complete=False)[0]
                    loaded = []
        # the model's next image overlaps the rendering (overlay, PNG encoding: zlib runs without the GIL) and
        # writing of the previous ones: on a GPU these took ~85% of a full-size job's time when run in turn
        pending: list[tuple[int, Item, Any, int]] = []  # (index, item, write, bytes of the result's arrays)
        stop = threading.Event()  # set on any error: writes not yet begun skip every file, begun ones stop
        last_size = 0
        try:
            for k, (i, item, _) in enumerate(loaded):
                if any(f.done() and isinstance(f.exception(), OutputError) for _, _, f, _ in pending):
                    break  # a write failed (a full disk, ...): it is raised below, after the others end
                # room for a result like the last one first (a batch's images are usually alike): a result
                # over the budget (a 12 MP photo) is made only once the previous one is written, as before
                _wait_for_room(pending, last_size)
                try:
                    result = self.predictor.predict(self.vocabulary, image_index=k, **self.predict_kwargs)
                except PartCLIPSegError as exc:
                    statuses[i] = item_status(item, "failed", _with_source(str(exc), item.source))
                    continue
                size = last_size = _result_bytes(result)
                # bounded memory: the results waiting to be written hold at most WRITER_BYTES (or one result),
                # so large photos and score maps are written one at a time, as before the threads
                _wait_for_room(pending, size)
                pending.append((i, item, self._writers().submit(self._write, result, item, identities[i], stop), size))
                del result
        except BaseException:  # Ctrl-C, an error: no output set is begun or completed after this raises
            stop.set()
            _wait_uninterrupted([future for _, _, future, _ in pending])
            raise
        _wait_uninterrupted([future for _, _, future, _ in pending])  # every write ends before the call returns
        for i, item, future, _ in pending:
            try:
                statuses[i] = item_status(item, "ok", note=future.result())
            except OutputError:
                raise
            except PartCLIPSegError as exc:
                statuses[i] = item_status(item, "failed", _with_source(str(exc), item.source))
        return [statuses[i] for i in range(len(items))]

    def _writers(self):
        """The threads that render and write the output sets (``WRITER_THREADS``), made on first use."""
        if self._writer_pool is None:
            self._writer_pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="partclipseg-write")
        return self._writer_pool

    def _write(self, result, item: Item, input_file: dict[str, Any], stop: threading.Event) -> str | None:
        """Render one image's output set and write it, the JSON (the completion mark) last; returns the result's
        note. Once ``stop`` is set no further file of it is written (its JSON in particular)."""
        from .outputs import render_outputs

        if stop.is_set():
            raise _Stopped()
        files = render_outputs(result, item.name, overlay=self.options.overlay, scores=self.options.scores,
                               rle=self.options.rle, source=item.source, job=self.job, input_file=input_file)
        for name, payload in files:
            if stop.is_set():
                raise _Stopped()
            self.store.write_bytes(name, payload)
        return result.note


class _Stopped(Exception):
    """A write given up because its batch raised (never reported: the batch's own error is)."""


def _wait_for_room(pending: Sequence[tuple[int, Item, Any, int]], size: int) -> None:
    """Wait until the unfinished writes of ``pending`` and ``size`` more bytes fit in ``WRITER_BYTES``, or no
    write is unfinished."""
    while True:
        busy = [(future, nbytes) for _, _, future, nbytes in pending if not future.done()]
        if not busy or sum(nbytes for _, nbytes in busy) + size <= WRITER_BYTES:
            return
        wait([future for future, _ in busy], return_when=FIRST_COMPLETED)


def _result_bytes(result) -> int:
    """Bytes of the arrays a result holds (image, label maps, confidence, score maps, attention maps)."""
    arrays = [v for v in vars(result).values() if isinstance(v, np.ndarray)]
    arrays += [v for v in result.attention.values() if isinstance(v, np.ndarray)]
    return sum(int(a.nbytes) for a in arrays)


def _wait_uninterrupted(futures) -> None:
    """Wait for ``futures``; a Ctrl-C meanwhile is raised once they are all done (writes are short)."""
    interrupted = None
    while True:
        try:
            wait(futures)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _with_source(message: str, source: str) -> str:
    return message if source in message else f"{source}: {message}"


# ============================================================================ report
@dataclass
class Report:
    processed: int = 0
    skipped: int = 0  # complete before this run (--resume)
    failed: int = 0
    out: str = ""
    engine: str = "local"
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # distinct result notes, in item order

    def summary(self) -> dict[str, Any]:
        return {"processed": self.processed, "skipped": self.skipped, "failed": self.failed, "out": self.out,
                "engine": self.engine}

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def finish_report(store: OutputStore, plan: Plan, statuses: Sequence[dict[str, Any]], skipped: int,
                  engine: str) -> Report:
    """Count the statuses and write ``partclipseg-failures.jsonl`` (every failed input of this run)."""
    failures = [{"source": source, "name": None, "error": message} for source, message in plan.problems]
    failures += [{"source": s["source"], "name": s["name"], "error": s["error"]}
                 for s in sorted(statuses, key=lambda s: s["name"]) if s["status"] == "failed"]
    ok = sum(1 for s in statuses if s["status"] == "ok")
    lines = "".join(json_text(f, ensure_ascii=False) + "\n" for f in failures)
    store.write_bytes(FAILURES_FILE, lines.encode("utf-8"))
    notes = list(dict.fromkeys(s["note"] for s in sorted(statuses, key=lambda s: s["name"]) if s.get("note")))
    return Report(processed=ok, skipped=skipped, failed=len(failures), out=store.root, engine=engine,
                  failures=failures, notes=notes)


def options_as_dict(options: SegmentOptions) -> dict[str, Any]:  # for logs and benchmarks
    data = asdict(options)
    data["object_mask"] = None if options.object_mask is None else list(np.shape(options.object_mask))
    return data
