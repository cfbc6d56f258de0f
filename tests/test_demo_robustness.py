"""The demo under a hurried user and a stopped server (issue 9: demo race, scores, SIGTERM clean-up)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")

from partclipseg import demo as demo_mod  # noqa: E402
from partclipseg.config import get_config  # noqa: E402
from partclipseg.demo import CUSTOM, ORACLE_OBJ, DemoApp  # noqa: E402
from partclipseg.model import build_model  # noqa: E402
from partclipseg.predictor import Predictor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def app():
    torch.manual_seed(0)
    model = build_model(get_config("tiny-fast")).eval()
    return DemoApp(lambda: Predictor(model))


def test_oracle_obj_scores_are_shown_with_significant_digits(app, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    out = app.segment(None, str(path), CUSTOM, "toy_world", "cat's head, cat's tail", ORACLE_OBJ, "cat", "none")
    table = out[2]
    assert list(table.columns)[-1] == "mean score" and len(table)
    shown = [float(v) for v in table["mean score"]]
    info = out[-1][1]
    import json

    exact = {p["label"]: p["score"] for p in json.loads(Path(info).read_text())["parts"]}
    for label, value in zip(table["part"], shown):
        assert value == pytest.approx(exact[label], rel=5e-3)  # 3 significant digits, never a bare 0
    assert demo_mod.format_score(2.1234e-06) == "2.12e-06" and demo_mod.format_score(0.5) == "0.5"


def test_stale_object_choice_reaching_a_run_is_a_message_not_an_error_badge(app, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    # the object list of the new parts is empty, the click still carries the old choice "cat"
    out = app.segment(None, str(path), CUSTOM, "toy_world", "cat head", ORACLE_OBJ, "cat", "none")
    assert "Error" in out[3] and "cat head" in out[3]
    out = app.segment(None, str(path), CUSTOM, "toy_world", "dog's head", ORACLE_OBJ, "cat", "none")
    assert "needs the object: choose one of dog" in out[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=os.pathsep.join(sys.path), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "partclipseg", "demo", "--port", str(_free_port()), "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "running at" in line:
            return proc, line.split("running at", 1)[1].strip()
        if proc.poll() is not None:
            break
    proc.kill()
    pytest.fail("the demo did not start")


def test_sigterm_removes_the_download_folders(tmp_path):
    proc, url = _start_demo(tmp_path)
    try:
        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        client.predict(handle_file(str(EXAMPLES / "dog.jpg")), "Benchmark vocabulary", "toy_world", "", "Pred-All",
                       None, "none", api_name="/segment")
        folders = list(tmp_path.glob("partclipseg-demo-*"))
        assert folders and list(folders[0].rglob("*.json"))  # a session wrote its downloads
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not list(tmp_path.glob("partclipseg-demo-*"))


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    demo = demo_mod.launch(None, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(demo.local_url)
        yield page
        browser.close()
    demo.close()


def test_browser_typing_and_clicking_without_waiting(page):
    """Oracle-Obj "cat" -> Segment -> new parts typed and Segment clicked at once, several times: every run
    ends in a result or a readable message, never in Gradio's red error badges."""
    from playwright.sync_api import expect

    status = page.locator("#status")
    page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLES / "dog.jpg"))
    expect(page.locator("#input-image img")).to_be_visible()
    page.wait_for_timeout(500)
    parts = page.locator("#parts textarea")
    parts.fill("cat's head, cat's tail")
    page.locator("#protocol label", has_text=ORACLE_OBJ).click()
    page.locator("#object input").click()
    page.locator("ul[role=listbox] li", has_text="cat").first.click()
    page.locator("#run").click()
    expect(status).to_contain_text("Found", timeout=30_000)
    for round_ in range(4):
        parts.fill("cat head" if round_ % 2 == 0 else "cat's head, cat's leg")
        page.locator("#run").click()  # no wait for the object list to follow the new parts
        page.wait_for_timeout(1500)
        expect(status).not_to_be_empty(timeout=30_000)
        badges = page.locator(".error, [data-testid=error]").filter(has_text="Error")
        assert badges.count() == 0, badges.all_inner_texts()
        for close in page.locator(".toast-close").all():
            close.click()
        text = status.inner_text()
        assert "Found" in text or "cat head" in text or "Oracle-Obj needs" in text, text
