"""Web demo (Gradio): ``partclipseg demo [--model DIR|HUB_ID] [--host 127.0.0.1] [--port N]``.

Each browser session keeps its own Predictor in ``gr.State`` (all wrap the same read-only model; model
calls are serialised by a lock): the image is embedded only when it changes, and two users never see
each other's results. Bad input shows a readable message in the page (status box and toast), never a trace.
"""
from __future__ import annotations

import hashlib
import html
import logging
import os
import atexit
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .dist import default_device
from .errors import PartCLIPSegError
from .io import json_text
from .model import PartSegmentationModel
from .outputs import write_outputs
from .predictor import Predictor, as_predictor
from .preprocess import load_image
from .vocabulary import BENCHMARKS, Vocabulary

BENCHMARK, CUSTOM = "Benchmark vocabulary", "Custom parts"
PRED_ALL, ORACLE_OBJ = "Pred-All", "Oracle-Obj"
PROMPTS = ("none", "point", "box")
MAX_PIXELS = 4_000_000  # larger images are downscaled to this many pixels
MAX_FILE_PIXELS = 64_000_000  # larger images are refused
MAX_CLASSES = 512
COLUMNS = ["part", "object", "pixels %", "mean score"]
CSS = "#overlay img, #attention img {width: 100%; height: 100%; object-fit: contain}"  # outputs fill their box
HELP = """**How to use.** Upload an image (or pick an example), choose a *benchmark vocabulary* (`toy_world` fits the
built-in model) or type *custom parts* (`object's part` names, comma-separated: `dog's head, dog's leg`), press
**Segment**. **Pred-All** segments every object; **Oracle-Obj** the object chosen in *Object*. **Prompts** (Pred-All):
set *Prompt* to `point` and click the object in the input image, or to `box` and click two opposite corners (first
click = corner 1, second = corner 2); a completed prompt runs at once. **Clear prompt**: back to the whole image.
*Mean score*: the mean sigmoid score of the part over its pixels (3 significant digits). Oracle-Obj gives every pixel
the best part of the chosen object even where the model scores all of them low, so its scores can be tiny
(e.g. `2.1e-06`) on pixels the model does not see as that object."""


class DemoError(PartCLIPSegError):
    """Bad input in the page (the message is shown to the user)."""


def find_examples() -> list[Path]:
    """The bundled example images (``examples/images`` of the repository or the working directory)."""
    folders = (Path(__file__).resolve().parents[2] / "examples" / "images", Path.cwd() / "examples" / "images")
    found = ([p for p in sorted(f.glob("*")) if p.suffix.lower() in {".jpg", ".jpeg", ".png"}] for f in folders)
    return next((images for images in found if images), [])


@dataclass
class Session:
    """One browser session: its Predictor and what it shows."""

    predictor: Any
    image_key: str | None = None  # hash of the embedded file
    image: np.ndarray | None = None  # the embedded image (downscaled when large)
    scale: tuple[float, float] = (1.0, 1.0)  # embedded pixels per uploaded pixel (x, y)
    clicks: list[tuple[int, int]] = field(default_factory=list)  # prompt clicks, uploaded-image pixels
    click_mode: str = "none"  # the prompt kind of the clicks
    last: dict | None = None  # predict() arguments of the result on show
    workdir: Path | None = None  # downloads

    def files_dir(self) -> Path:
        self.workdir = self.workdir or Path(tempfile.mkdtemp(prefix="session-", dir=demo_files_root()))
        return self.workdir

    def close(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


_FILES_ROOT: Path | None = None


def demo_files_root() -> Path:
    """The process's one folder for download files (``partclipseg-demo-*`` in the temp folder), removed at
    exit, also when the server is stopped with SIGTERM (see ``launch``)."""
    global _FILES_ROOT
    if _FILES_ROOT is None or not _FILES_ROOT.is_dir():
        _FILES_ROOT = Path(tempfile.mkdtemp(prefix="partclipseg-demo-"))
        atexit.register(shutil.rmtree, _FILES_ROOT, True)
    return _FILES_ROOT


def _exit_on_sigterm() -> None:
    """SIGTERM ends the server like Ctrl+C: ``atexit`` clean-up (the download folder) runs."""
    import threading as _threading

    if _threading.current_thread() is _threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def format_score(value: float) -> str:
    """A score for the table: 3 significant digits, so that 2.1e-06 does not show as 0."""
    return f"{value:.3g}"


def _md(text: str) -> str:  # text shown literally in Markdown
    return re.sub(r"([\\`*_{}\[\]<>()#+\-!|~])", r"\\\1", text)


class DemoApp:
    """The page's event handlers as plain methods (testable without a browser). Those that change the result
    return ``(state, overlay, table, status, attention choices, attention image, files)``."""

    def __init__(self, predictor_factory: Callable[[], Any]):
        self.new_predictor = predictor_factory
        self.lock = threading.Lock()  # one model call at a time: the model is shared

    def session(self, state: Any) -> Session:
        return state if isinstance(state, Session) else Session(self.new_predictor())

    @staticmethod
    def vocabulary(source: str, benchmark: str | None, text: str | None) -> Vocabulary:
        if source == CUSTOM and not any(name.strip() for name in (text or "").split(",")):
            raise DemoError("the part list is empty: type names like \"dog's head, dog's leg\" (or pick a benchmark)")
        vocab = Vocabulary.parse(text) if source == CUSTOM else Vocabulary.from_benchmark(benchmark)
        if len(vocab) > MAX_CLASSES:
            raise DemoError(f"{len(vocab)} part names are too many for the demo (at most {MAX_CLASSES})")
        return vocab

    def objects_for(self, source: str, benchmark: str | None, text: str | None, current: str | None = None):
        try:
            objects = list(self.vocabulary(source, benchmark, text).objects)
        except PartCLIPSegError:  # the message is shown when the user runs it
            objects = []
        return gr.update(choices=objects, value=current if current in objects else None)

    def _embed(self, sess: Session, image_path: str | None) -> bool:
        """Embed the image unless it is the one already embedded; True when it ran."""
        if not image_path:
            raise DemoError("no image: upload one or pick an example first")
        path = Path(image_path)
        try:
            key = hashlib.sha1(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise DemoError(f"cannot read the uploaded file {path.name}: {exc.strerror or exc}") from None
        if key == sess.image_key:
            return False
        try:
            array = load_image(path, max_pixels=MAX_FILE_PIXELS)
        except PartCLIPSegError as exc:
            raise DemoError(str(exc).replace(str(path), path.name)) from None
        h, w = array.shape[:2]
        if h * w > MAX_PIXELS:  # downscaled; clicks are mapped with sess.scale
            f = (MAX_PIXELS / (h * w)) ** 0.5
            array = np.asarray(Image.fromarray(array).resize((max(1, int(w * f)), max(1, int(h * f))), Image.BILINEAR))
        sess.image_key, sess.last = None, None
        sess.predictor.set_image(array)
        sess.image_key, sess.image, sess.scale = key, array, (array.shape[1] / w, array.shape[0] / h)
        return True

    def _prompt(self, sess: Session, mode: str) -> dict:
        sx, sy = sess.scale
        if mode == "point" and sess.clicks:
            x, y = sess.clicks[-1]
            return {"point": (x * sx, y * sy)}
        if mode == "box" and len(sess.clicks) == 1:
            raise DemoError("box prompt: click the second corner in the input image (or press Clear prompt)")
        if mode == "box" and len(sess.clicks) == 2:
            (xa, ya), (xb, yb) = sess.clicks
            return {"box": (min(xa, xb) * sx, min(ya, yb) * sy, (max(xa, xb) + 1) * sx, (max(ya, yb) + 1) * sy)}
        return {}

    def segment(self, state, image_path, source, benchmark, text, protocol, object_name, prompt_mode):
        sess = self.session(state)
        try:
            vocab = self.vocabulary(source, benchmark, text)
            if protocol == ORACLE_OBJ and object_name not in vocab.objects:
                raise DemoError(f"Oracle-Obj needs the object: choose one of {', '.join(vocab.objects)} in Object")
            start = time.perf_counter()
            with self.lock:
                embedded = self._embed(sess, image_path)
                kwargs = self._prompt(sess, prompt_mode)
                if protocol == ORACLE_OBJ and kwargs:
                    raise DemoError("Oracle-Obj takes no point or box: press Clear prompt or switch to Pred-All")
                kwargs = {"protocol": "oracle-obj", "object_name": object_name} if protocol == ORACLE_OBJ else kwargs
                result = sess.predictor.predict(vocab, **kwargs)
            sess.last = {"vocabulary": vocab, **kwargs}
            info = result.to_json()
            rows = [[p["label"], p["object"], round(100 * p["area_fraction"], 2), format_score(p["score"])]
                    for p in info["parts"]]
            files = self._write_files(sess, result, image_path)
            chosen = f", object: {result.selected_object}" if result.selected_object else ""
            status = (f"Found **{len(rows)}** part(s) of {len(vocab)} names — mode {result.mode}{_md(chosen)} "
                      f"({'image embedded' if embedded else 'image embedding reused'}, "
                      f"{time.perf_counter() - start:.1f} s).") + ("" if rows else " No part found: try other names.")
            status += f"\n\n*Note:* {_md(result.note)}" if result.note else ""
            return (sess, self._draw_prompt(result.to_overlay(), kwargs), pd.DataFrame(rows, columns=COLUMNS), status,
                    gr.update(choices=[row[0] for row in rows], value=None), None, files)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message in the page
            return self._cleared(sess, self._error(exc))

    def click(self, state, image_path, source, benchmark, text, protocol, object_name, prompt_mode,
              evt: gr.SelectData = None):  # a plain class annotation: Gradio fills in the event data
        """A click on the input image: a point prompt, or one corner of a box prompt."""
        sess = self.session(state)
        index = getattr(evt, "index", None)
        if prompt_mode not in ("point", "box"):
            return self._no_run(sess, "Clicks set a prompt: choose Prompt `point` or `box` first.")
        if not (isinstance(index, (list, tuple)) and len(index) == 2):
            return self._no_run(sess, self._error(DemoError("click inside the image")))
        x, y = int(index[0]), int(index[1])
        if prompt_mode != sess.click_mode:  # clicks of another prompt kind do not mix
            sess.clicks, sess.click_mode = [], prompt_mode
        if prompt_mode == "box" and len(sess.clicks) != 1:
            sess.clicks = [(x, y)]
            return self._no_run(sess, f"Box corner 1 at ({x}, {y}): now click the opposite corner.")
        sess.clicks = [(x, y)] if prompt_mode == "point" else [*sess.clicks, (x, y)]
        return self.segment(sess, image_path, source, benchmark, text, protocol, object_name, prompt_mode)

    def clear_prompt(self, state):
        (sess := self.session(state)).clicks.clear()
        return sess, "Prompt cleared: the next run segments the whole image.", "none"

    def image_changed(self, state):
        """A new image (or none): forget the prompt and the results on show."""
        if isinstance(state, Session):
            state.clicks, state.last = [], None
        return self._cleared(state, "")

    def attention(self, state, name):
        """The decoder attention heatmap of a part of the result on show: (image, status)."""
        sess = self.session(state)
        try:
            if not name or sess.last is None:
                raise DemoError("run the segmentation first, then choose one of the parts found")
            with self.lock:
                result = sess.predictor.predict(**sess.last, attention_for=[name])
            return result.attention_overlay(name), f"Attention of {_md(name)} (decoder, last layer)."
        except Exception as exc:  # noqa: BLE001
            return None, self._error(exc)

    @staticmethod
    def _error(exc: BaseException) -> str:
        """The status line (and a toast) for a failure; an unexpected one's trace goes to the server log only."""
        message = str(exc)
        if not isinstance(exc, PartCLIPSegError):
            logging.getLogger(__name__).exception("demo handler failed")
            message = f"unexpected {type(exc).__name__}: {exc}"
        gr.Warning(html.escape(message))
        return f"**Error:** {_md(message)}"

    @staticmethod
    def _no_run(sess: Session, status: str):  # outputs unchanged but the status
        return sess, gr.update(), gr.update(), status, gr.update(), gr.update(), gr.update()

    @staticmethod
    def _cleared(sess: Session | None, status: str):  # no result on show
        return sess, None, pd.DataFrame(columns=COLUMNS), status, gr.update(choices=[], value=None), None, None

    @staticmethod
    def _write_files(sess: Session, result, image_path: str) -> list[str]:
        """The downloads: the label PNG and the JSON of ``outputs.write_outputs`` (no overlay)."""
        stem = re.sub(r"[^\w.-]", "_", Path(image_path).stem)[:64] or "image"
        return [str(p) for p in write_outputs(result, sess.files_dir(), stem, overlay=False,
                                              source=Path(image_path).name)]

    @staticmethod
    def _draw_prompt(overlay: Image.Image, kwargs: dict) -> Image.Image:
        draw, r = ImageDraw.Draw(overlay), max(3, round(max(overlay.size) / 100))
        if "point" in kwargs:
            (x, y), width = kwargs["point"], max(1, r // 3)
            draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), fill=(255, 0, 0), width=width)
        if "box" in kwargs:
            x0, y0, x1, y1 = kwargs["box"]
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 0, 0), width=max(1, r // 2))
        return overlay


def _readable_upload_errors(image: gr.Image) -> gr.Image:
    """Make the upload errors of ``image`` (not an image, too big for PIL) read well in the page. (Patched on
    the instance: a gr.Image subclass would make Gradio write a ``.pyi`` file beside this module.)"""
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except Exception as exc:  # noqa: BLE001
            name = Path(getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "file").name
            raise gr.Error(html.escape(f"cannot read the uploaded file {name}: not a supported image "
                                       f"({type(exc).__name__})"), print_exception=False) from None

    image.preprocess = checked
    return image


def _predictor_factory(model: Any, device: str | None = None) -> Callable[[], Any]:
    if model is None or isinstance(model, (str, os.PathLike, PartSegmentationModel)):
        shared = as_predictor(model, device or default_device()).model.eval()
        return lambda: Predictor(shared)
    if callable(model):
        return model
    raise TypeError(f"model: None, a folder / hub id, a model or a Predictor factory, not {type(model).__name__}")


def build_demo(model: Any = None, *, device: str | None = None) -> gr.Blocks:
    """The demo page. ``model``: None (built-in default), a folder / hub id / ``.pth``, a loaded model, or a
    zero-argument callable returning a fresh Predictor (one is made per browser session)."""
    app = DemoApp(_predictor_factory(model, device))
    examples = find_examples()
    with gr.Blocks(title="PartCLIPSeg demo", analytics_enabled=False) as demo:
        state = gr.State(None, delete_callback=lambda s: s.close() if isinstance(s, Session) else None)
        gr.Markdown("# PartCLIPSeg: open-vocabulary part segmentation\n" + HELP, elem_id="help")
        with gr.Row():
            with gr.Column(scale=1):
                image = _readable_upload_errors(gr.Image(
                    type="filepath", image_mode=None, sources=["upload", "clipboard"], height=360,
                    label="Input image (click here for point / box prompts)", elem_id="input-image"))
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples (toy world)")
                source = gr.Radio([BENCHMARK, CUSTOM], value=BENCHMARK, label="Vocabulary", elem_id="vocab-source")
                benchmark = gr.Dropdown(list(BENCHMARKS), value="toy_world", label=BENCHMARK, elem_id="benchmark")
                parts = gr.Textbox(label="Custom parts (comma-separated \"object's part\" names)",
                                   placeholder="dog's head, dog's leg, cat's tail", elem_id="parts")
                with gr.Row():
                    protocol = gr.Radio([PRED_ALL, ORACLE_OBJ], value=PRED_ALL, label="Protocol", elem_id="protocol")
                    # allow_custom_value: a value left over from the previous part list (the choices update
                    # races with a click on Segment) reaches segment(), which checks it against the parts it
                    # got in the same request, instead of failing every output in Gradio's own check
                    obj = gr.Dropdown(list(Vocabulary.from_benchmark("toy_world").objects), value=None,
                                      label="Object (Oracle-Obj)", elem_id="object", allow_custom_value=True)
                with gr.Row():
                    prompt = gr.Radio(list(PROMPTS), value="none", label="Prompt (click the image)", elem_id="prompt")
                    clear = gr.Button("Clear prompt", elem_id="clear-prompt")
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="status")
                overlay = gr.Image(type="pil", format="png", label="Parts (overlay with legend)", interactive=False,
                                   height=360, elem_id="overlay")
                table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), label="Parts found", interactive=False,
                                     elem_id="parts-table")
                attn_name = gr.Dropdown([], value=None, label="Attention heatmap of part", elem_id="attention-part")
                attn = gr.Image(type="pil", format="png", label="Decoder attention", interactive=False, height=300,
                                elem_id="attention")
                files = gr.File(label="Downloads: label PNG and JSON", file_count="multiple", interactive=False,
                                elem_id="downloads")
        settings, results = [image, source, benchmark, parts, protocol, obj, prompt], [
            state, overlay, table, status, attn_name, attn, files]
        run.click(app.segment, [state, *settings], results)
        parts.submit(app.segment, [state, *settings], results)
        image.select(app.click, [state, *settings], results)
        image.change(app.image_changed, [state], results)
        clear.click(app.clear_prompt, [state], [state, status, prompt])
        prompt.input(lambda s: app.clear_prompt(s)[:2], [state], [state, status])
        for box, kind in ((parts, CUSTOM), (benchmark, BENCHMARK)):  # editing one selects it, in the browser
            box.change(None, None, [source], js=f"() => {json_text(kind)}").then(
                app.objects_for, [source, benchmark, parts, obj], [obj])
        source.input(app.objects_for, [source, benchmark, parts, obj], [obj])
        attn_name.input(app.attention, [state, attn_name], [attn, status])
    return demo


def launch(model: Any = None, host: str = "127.0.0.1", port: int | None = None, *, prevent_thread_lock: bool = False,
           device: str | None = None):
    """Build and serve the demo, print its URL, and (unless ``prevent_thread_lock``) block until Ctrl+C or SIGTERM."""
    demo = build_demo(model, device=device).queue(default_concurrency_limit=4)
    demo_files_root()
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=False,
                max_file_size="50mb", css=CSS)
    print(f"PartCLIPSeg demo running at {demo.local_url}", flush=True)
    if not prevent_thread_lock:
        _exit_on_sigterm()
        demo.block_thread()  # until Ctrl+C
    return demo
