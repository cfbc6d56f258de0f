"""The web demo: its handlers (fast, no browser) and one end-to-end run in headless Chromium.

The browser test drives Debian's Chromium (``/usr/bin/chromium``) with Playwright and is skipped when
either is missing. It saves a screenshot in its tmp dir; to refresh the README's ``docs/demo.png``:

    PARTCLIPSEG_DEMO_SCREENSHOT=docs/demo.png python -m pytest -q tests/test_demo.py -k browser
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")

from partclipseg import demo as demo_mod  # noqa: E402
from partclipseg.cli import build_parser  # noqa: E402
from partclipseg.config import get_config  # noqa: E402
from partclipseg.demo import BENCHMARK, CUSTOM, ORACLE_OBJ, PRED_ALL, DemoApp, Session  # noqa: E402
from partclipseg.model import build_model  # noqa: E402
from partclipseg.predictor import Predictor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio's own pandas 3 deprecations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
PARTS = "dog's head, dog's torso, dog's leg, dog's tail"


# ---------------------------------------------------------------------------- handlers (no browser)
class CountingPredictor(Predictor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_image_calls = 0

    def set_image(self, image):
        self.set_image_calls += 1
        super().set_image(image)


@pytest.fixture(scope="module")
def app():
    torch.manual_seed(0)
    model = build_model(get_config("tiny-fast")).eval()
    return DemoApp(lambda: CountingPredictor(model))


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape in (("a", (40, 60, 3)), ("b", (50, 30, 3))):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[name])
    paths["garbage"] = str(tmp_path / "garbage.jpg")
    Path(paths["garbage"]).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return paths


def run(app, state, image, text=PARTS, *, source=CUSTOM, protocol=PRED_ALL, obj=None, prompt="none"):
    return app.segment(state, image, source, "toy_world", text, protocol, obj, prompt)


def test_good_input_gives_overlay_table_and_files(app, images):
    state, overlay, table, status, attn_choices, _, files = run(app, None, images["a"], protocol=ORACLE_OBJ, obj="dog")
    assert isinstance(state, Session) and overlay is not None, status
    assert "Found" in status and len(table) >= 1 and set(table["part"]) <= set(s.strip() for s in PARTS.split(","))
    assert attn_choices["choices"] == list(table["part"])
    assert [Path(f).name for f in files] == ["a.labels.png", "a.json"] and all(Path(f).is_file() for f in files)
    heat, note = app.attention(state, table["part"][0])
    assert heat is not None and "Attention" in note
    state.close()
    assert not Path(files[0]).exists()


def test_status_says_what_oracle_obj_without_a_mask_does(app, images):
    status = run(app, None, images["a"], protocol=ORACLE_OBJ, obj="dog")[3].replace("\\", "")
    assert "Note:" in status and "every pixel gets a part of dog" in status, status
    assert "Note:" not in run(app, None, images["a"])[3]  # Pred-All: nothing to explain


@pytest.mark.parametrize("case, expected", [
    ("no image", "no image"),
    ("empty parts", "part list is empty"),
    ("malformed parts", "'dog head'"),
    ("unreadable file", "garbage.jpg"),
    ("huge image", "pixels"),
    ("point outside", "outside"),
    ("box outside", "not a non-empty box inside"),
    ("oracle without object", "Oracle-Obj needs the object"),
])
def test_bad_input_gives_a_readable_message_and_the_app_keeps_working(app, images, monkeypatch, case, expected):
    state = app.session(None)
    kwargs = {}
    image = images["a"]
    if case == "no image":
        image = None
    elif case == "empty parts":
        kwargs["text"] = " , "
    elif case == "malformed parts":
        kwargs["text"] = "dog head"
    elif case == "unreadable file":
        image = images["garbage"]
    elif case == "huge image":
        monkeypatch.setattr(demo_mod, "MAX_FILE_PIXELS", 1000)
    elif case == "point outside":
        state.clicks, kwargs["prompt"] = [(500, 5)], "point"
    elif case == "box outside":
        state.clicks, kwargs["prompt"] = [(10, 10), (900, 20)], "box"
    else:
        kwargs["protocol"] = ORACLE_OBJ
    with pytest.warns(UserWarning):  # gr.Warning outside a request: the toast becomes a warning
        out = run(app, state, image, **kwargs)
    status = out[3]
    assert out[1] is None and status.startswith("**Error:**") and "Traceback" not in status
    assert expected in status.replace("\\", ""), status
    monkeypatch.undo()
    state.clicks = []
    again = run(app, state, images["a"])
    assert again[1] is not None and "Found" in again[3]


def test_image_embedded_once_while_text_and_prompt_change(app, images):
    state = run(app, None, images["a"])[0]
    run(app, state, images["a"], "dog's head, cat's head")
    run(app, state, images["a"], "", source=BENCHMARK)
    state.clicks = [(3, 4)]
    out = run(app, state, images["a"], prompt="point")
    assert "image embedding reused" in out[3] and out[0].last.get("point") == (3.0, 4.0)
    assert state.predictor.set_image_calls == 1
    run(app, state, images["b"])
    assert state.predictor.set_image_calls == 2


def test_clicks_make_point_and_box_prompts(app, images):
    state = app.session(None)
    settings = (images["a"], CUSTOM, "toy_world", PARTS, PRED_ALL, None)
    click = lambda mode, x, y: app.click(state, *settings, mode, gr.SelectData(None, {"index": [x, y], "value": None}))
    out = click("point", 10, 12)
    assert out[0].last["point"] == (10.0, 12.0) and out[1] is not None
    out = click("box", 5, 30)
    assert "corner 1" in out[3] and out[1] == gr.update()
    out = click("box", 20, 8)
    assert out[0].last["box"] == (5.0, 8.0, 21.0, 31.0) and out[1] is not None
    assert "choose Prompt" in click("none", 1, 1)[3]
    assert app.clear_prompt(state)[0].clicks == []


def test_two_sessions_do_not_share_results(app, images):
    one = run(app, None, images["a"], protocol=ORACLE_OBJ, obj="dog")
    two = run(app, None, images["b"], "cat's head, cat's tail", protocol=ORACLE_OBJ, obj="cat")
    assert one[0] is not two[0] and one[0].predictor is not two[0].predictor
    assert set(one[2]["part"]).isdisjoint(two[2]["part"]) and one[0].workdir != two[0].workdir
    assert app.attention(one[0], one[2]["part"][0])[0] is not None
    assert one[0].predictor._images[0].shape[:2] == (40, 60) and two[0].predictor._images[0].shape[:2] == (50, 30)
    assert one[0].last["object_name"] == "dog" and two[0].last["object_name"] == "cat"


def test_large_image_is_downscaled_and_clicks_follow(app, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "MAX_PIXELS", 600)
    path = tmp_path / "big.png"
    Image.new("RGB", (60, 40), (200, 10, 10)).save(path)
    state = app.session(None)
    state.clicks = [(59, 39)]
    out = run(app, state, str(path), prompt="point")
    assert state.image.shape[:2] == (20, 30) and out[0].last["point"] == (29.5, 19.5), out[3]


def test_unreadable_upload_is_a_readable_page_error(tmp_path):
    from gradio.data_classes import ImageData

    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    component = demo_mod._readable_upload_errors(gr.Image(type="filepath", image_mode=None, render=False))
    with pytest.raises(gr.Error, match="cannot read the uploaded file notes.png"):
        component.preprocess(ImageData(path=str(bad), orig_name="notes.png"))


def test_cli_registers_demo(monkeypatch):
    args = build_parser().parse_args(["demo", "--model", "m", "--host", "0.0.0.0", "--port", "8123"])
    assert (args.command, args.model, args.host, args.port) == ("demo", "m", "0.0.0.0", 8123)
    seen = {}
    monkeypatch.setattr(demo_mod, "launch",
                        lambda model, host, port, device=None: seen.update(model=model, host=host, port=port))
    from partclipseg.cli import main

    assert main(["demo", "--port", "8124"]) == 0 and seen == {"model": None, "host": "127.0.0.1", "port": 8124}


# ---------------------------------------------------------------------------- browser end to end
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    demo = demo_mod.launch(None, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def page(request):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    served = request.getfixturevalue("served")  # only once the browser is known to be there
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(served)
        yield page
        browser.close()


def test_browser_end_to_end(page, tmp_path):
    from playwright.sync_api import expect

    status = page.locator("#status")
    page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLES / "dog.jpg"))
    expect(page.locator("#input-image img")).to_be_visible()
    page.wait_for_timeout(500)  # let the image's change event settle

    parts = page.locator("#parts textarea")
    parts.fill("dog head")  # malformed: no "'s"
    page.locator("#run").click()
    expect(status).to_contain_text("dog head", timeout=30_000)
    expect(status).to_contain_text("Error")
    expect(page.locator(".toast-body").first).to_contain_text("dog head")
    for close in page.locator(".toast-close").all():
        close.click()

    parts.fill(PARTS)  # a point prompt: clicking the input image runs at once
    page.locator("#prompt label", has_text="point").click()
    page.locator("#input-image img").click()
    expect(status).to_contain_text("mode point", timeout=30_000)
    expect(status).to_contain_text("image embedded")
    page.locator("#prompt label", has_text="box").click()  # a box prompt: two clicks, opposite corners
    img = page.locator("#input-image img")
    cx, cy = img.bounding_box()["width"] / 2, img.bounding_box()["height"] / 2
    img.click(position={"x": cx - 20, "y": cy - 15})
    expect(status).to_contain_text("corner 1")
    img.click(position={"x": cx + 20, "y": cy + 15})
    expect(status).to_contain_text("mode box", timeout=30_000)
    page.locator("#clear-prompt").click()
    expect(page.locator("#prompt input[value=none]")).to_be_checked()

    page.locator("#protocol label", has_text=ORACLE_OBJ).click()
    page.locator("#object input").click()
    page.locator("ul[role=listbox] li", has_text="dog").first.click()
    page.locator("#run").click()
    expect(status).to_contain_text("Found", timeout=30_000)
    expect(status).to_contain_text("image embedding reused")  # the session's Predictor kept the embedding
    expect(page.locator("#overlay img")).to_be_visible()
    table = page.locator("#parts-table")
    found = [name for name in (s.strip() for s in PARTS.split(",")) if table.get_by_text(name, exact=True).count()]
    assert found, table.inner_text()
    link = page.locator("#downloads a[href$='dog.json']")
    expect(link).to_have_count(1)
    assert {p["label"] for p in page.request.get(link.get_attribute("href")).json()["parts"]} == set(found)
    expect(page.locator("#downloads a[href$='dog.labels.png']")).to_have_count(1)

    page.locator("#attention-part input").click()
    page.locator("ul[role=listbox] li", has_text=found[0]).first.click()
    expect(page.locator("#attention img")).to_be_visible(timeout=30_000)

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("PARTCLIPSEG_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PARTCLIPSEG_DEMO_SCREENSHOT"])

    other = page.context.browser.new_page()  # a second user: own session, own embedding, own result
    other.goto(page.url)
    other.locator("#input-image input[type=file]").set_input_files(str(EXAMPLES / "car_bus.jpg"))
    expect(other.locator("#input-image img")).to_be_visible()
    other.wait_for_timeout(500)
    other.locator("#run").click()
    expect(other.locator("#status")).to_contain_text("Found", timeout=30_000)  # toy_world, the default vocabulary
    expect(other.locator("#status")).to_contain_text("image embedded")
    expect(status).to_contain_text("Attention of")  # the first page is untouched
    assert {p["label"] for p in page.request.get(link.get_attribute("href")).json()["parts"]} == set(found)
    other.close()


# ---------------------------------------------------------------------------- PartCATSeg behind the demo
def test_catseg_model_folder_runs_through_the_demo(images, tmp_path):
    """``partclipseg demo --model <saved tiny PartCATSeg folder>``: the page builds and the handlers segment
    with it (Pred-All, Oracle-Obj by PartCATSeg's official rule); asking for an attention map (PartCATSeg
    has none) gives a readable message."""
    from partclipseg.model.partcatseg import get_partcatseg_config

    torch.manual_seed(0)
    config = get_partcatseg_config("partcatseg-tiny")
    config.official.text_features_fp16 = False  # fp16 matmuls are slow on a CPU; the rule is the same
    folder = tmp_path / "tiny_partcatseg"
    build_model(config).save_pretrained(folder)
    assert isinstance(demo_mod.build_demo(str(folder)), gr.Blocks)  # what `partclipseg demo --model` serves
    app = DemoApp(demo_mod._predictor_factory(str(folder)))
    parts = "cat's head, cat's leg, dog's head"
    state, overlay, table, status, attn_choices, _, files = run(app, None, images["a"], parts)
    assert type(state.predictor.model).__name__ == "PartCATSeg"
    assert overlay is not None and "Found" in status, status
    assert set(table["part"]) <= {"cat's head", "cat's leg", "dog's head"}
    assert [Path(f).name for f in files] == ["a.labels.png", "a.json"]
    state, overlay, table, status, *_ = run(app, state, images["a"], parts, protocol=ORACLE_OBJ, obj="cat")
    assert overlay is not None and "Found" in status, status
    assert set(table["part"]) <= {"cat's head", "cat's leg"} and len(table) >= 1
    heat, note = app.attention(state, table["part"][0])
    assert heat is None and "no token-to-token attention maps" in note.replace("\\", "") and "unexpected" not in note
    state.close()
