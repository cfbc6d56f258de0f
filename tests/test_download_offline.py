"""Downloads on a machine without network: a host name that does not resolve fails at once, in one line.

The hosts are ``*.nonexistent.invalid`` (RFC 6761: ``.invalid`` never resolves), reached through the same
overrides as ``tests/test_hub.py`` (``PARTCLIPSEG_GDRIVE_URL``, ``HF_ENDPOINT``, registry entries added by
the test), directly or as the target of a redirect from a server on 127.0.0.1. The CLI runs in a child
process so that its real stderr (``gdown`` prints, ``huggingface_hub`` logs) is what is checked; the
child times ``main()`` itself, after its imports. Transient failures (HTTP 503 once, on 127.0.0.1) are
still retried, with one short line each, and the download succeeds.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loopback_servers import FileServer, HubServer

TESTS = Path(__file__).parent
NOWHERE = "nonexistent.invalid"
RUNNER = """
import json, os, sys, time
import gdown, huggingface_hub, requests, torch  # imported before the clock starts
import partclipseg.hf_clipseg, partclipseg.hub.fetch
from partclipseg.cli import main
from partclipseg.hub.registry import MODELS, WEIGHT_FILES, ModelEntry, WeightFile
for fields in json.loads(os.environ.get("TEST_MODELS", "[]")):
    MODELS[fields["name"]] = ModelEntry(**fields)
for fields in json.loads(os.environ.get("TEST_WEIGHT_FILES", "[]")):
    WEIGHT_FILES[fields["name"]] = WeightFile(**fields)
start = time.perf_counter()
code = main(sys.argv[1:])
with open(os.environ["TEST_ELAPSED"], "w") as handle:
    handle.write(repr(time.perf_counter() - start))
sys.exit(code)
"""
HUB_MODEL = dict(name="offline_hub_clipseg", architecture="clipseg (HF)", trained_on="random", vocabulary="any text",
                 size="~3 MB", source="hub", licence="test", hub_repo="tester/tiny-clipseg")
DRIVE_MODEL = dict(name="offline_drive", architecture="partclipseg", trained_on="fixture", vocabulary="any",
                   size="~16 MB", source="gdrive", licence="test", gdrive_id="TESTID", filename="test_oracle.pth",
                   config_preset="partclipseg-voc")
HUB_WEIGHTS = dict(name="offline_hub_weights", description="a hub weight file", source="hub",
                   hub_repo="tester/weights", filename="w.pth", key_format="catseg_base", size="not measured",
                   licence="test")
URL_WEIGHTS = dict(name="offline_url_weights", description="a plain URL weight file", source="url",
                   filename="w.pth", key_format="dinov2_hub", size="not measured", licence="test",
                   file_url=f"http://{NOWHERE}/files/w.pth")
RETRY_WORDS = ("Retry", "retry", "retrying", "Trying to resume", "thrown while requesting")


@pytest.fixture()
def weights_pth() -> bytes:
    buffer = io.BytesIO()
    torch.save({"layer.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, buffer)
    return buffer.getvalue()


def _run(tmp_path: Path, *args: str, models=(), weight_files=(), **env_extra: str):
    """The CLI in a child process: (exit code, stderr, seconds spent in ``main()``)."""
    elapsed = tmp_path / "elapsed.txt"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env.update(PARTCLIPSEG_HOME=str(tmp_path / "cache"), HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"),
               OMP_NUM_THREADS="1", TEST_MODELS=json.dumps(list(models)),
               TEST_WEIGHT_FILES=json.dumps(list(weight_files)), TEST_ELAPSED=str(elapsed),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **env_extra)
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr, float(elapsed.read_text())


def _assert_one_line_unresolved(code: int, err: str, seconds: float, host: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert seconds < 5, (seconds, err)  # the old code retried for 24-27 s (hub) or printed 3 retries (Drive)
    assert len(lines) == 1, err
    assert lines[0].startswith("error: could not download"), err
    assert f"the host {host} could not be resolved" in err and "offline?" in err, err
    assert "Traceback" not in err
    for word in RETRY_WORDS:
        assert word not in err, word
    for needle in needles:
        assert needle in err, needle


# ---------------------------------------------------------------------------- a host that does not resolve
def test_hub_model_with_an_unresolvable_host_fails_at_once(tmp_path):
    code, err, seconds = _run(tmp_path, "download", HUB_MODEL["name"], "--to", str(tmp_path / "x"),
                              models=[HUB_MODEL], HF_ENDPOINT=f"http://{NOWHERE}")
    folder = tmp_path / "cache" / "models" / HUB_MODEL["name"]
    _assert_one_line_unresolved(code, err, seconds, NOWHERE, "hf download tester/tiny-clipseg", str(folder),
                                f"partclipseg download {HUB_MODEL['name']} --to DIR")
    assert not folder.exists() and not (tmp_path / "x").exists()


def test_drive_model_with_an_unresolvable_host_fails_at_once_from_segment(tmp_path):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(image)
    code, err, seconds = _run(tmp_path, "segment", str(image), "--model", DRIVE_MODEL["name"], "--parts",
                              "dog's head", "--out", str(tmp_path / "out"), models=[DRIVE_MODEL],
                              PARTCLIPSEG_GDRIVE_URL=f"http://{NOWHERE}/uc?id={{id}}",
                              PARTCLIPSEG_DOWNLOAD_RETRIES="5")
    folder = tmp_path / "cache" / "models" / DRIVE_MODEL["name"]
    _assert_one_line_unresolved(code, err, seconds, NOWHERE, f"http://{NOWHERE}/uc?id=TESTID",
                                "https://drive.google.com/file/d/TESTID/view", "gdown TESTID -O test_oracle.pth",
                                str(folder / "test_oracle.pth"))
    assert not folder.exists()


@pytest.mark.parametrize("fields", [HUB_WEIGHTS, URL_WEIGHTS], ids=["hub", "url"])
def test_weight_files_with_an_unresolvable_host_fail_at_once(tmp_path, fields):
    code, err, seconds = _run(tmp_path, "download", fields["name"], weight_files=[fields],
                              HF_ENDPOINT=f"http://{NOWHERE}")
    target = tmp_path / "cache" / "weights" / fields["name"] / "w.pth"
    _assert_one_line_unresolved(code, err, seconds, NOWHERE, f"put it as {target}")


class RedirectingServer(FileServer):
    """Answers ``redirects`` (path -> URL) with a 302, the way Drive and the hub send a download elsewhere."""

    def __init__(self, files, redirects: dict[str, str], headers: dict[str, str] | None = None, **kw) -> None:
        super().__init__(files, **kw)
        self.redirects, self.headers = redirects, headers or {}

    def _handle(self, handler, head):
        target = self.redirects.get(handler.path.split("?")[0])
        if target is None:
            return super()._handle(handler, head)
        self.log.append((handler.command, handler.path, None))
        handler.send_response(302)
        handler.send_header("Location", target)
        for key, value in self.headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


def test_a_redirect_to_an_unresolvable_host_is_not_retried_by_gdown(tmp_path):
    host = f"cdn.{NOWHERE}"
    with RedirectingServer({}, {"/uc": f"http://{host}/file"}) as server:
        code, err, seconds = _run(tmp_path, "download", DRIVE_MODEL["name"], models=[DRIVE_MODEL],
                                  PARTCLIPSEG_GDRIVE_URL=server.url + "/uc?id={id}",
                                  PARTCLIPSEG_DOWNLOAD_RETRIES="5")
    _assert_one_line_unresolved(code, err, seconds, host, "gdown TESTID -O test_oracle.pth")
    assert len(server.gets("/uc")) == 1  # asked once, not once per retry


def test_a_hub_redirect_to_an_unresolvable_cdn_is_not_retried(tmp_path, weights_pth):
    """The hub answers the file's HEAD with a redirect to a CDN host (as huggingface.co does for large files);
    that host has no DNS answer: ``huggingface_hub`` would retry the GET 5 times, 1 s apart."""
    import hashlib

    host = f"cdn.{NOWHERE}"
    headers = {"X-Repo-Commit": HubServer.COMMIT, "X-Linked-Etag": '"' + hashlib.sha256(weights_pth).hexdigest() + '"',
               "X-Linked-Size": str(len(weights_pth))}

    class Server(RedirectingServer, HubServer):
        pass

    with Server({}, {"/tester/weights/resolve/main/w.pth": f"http://{host}/blob/w.pth"}, headers) as server:
        code, err, seconds = _run(tmp_path, "download", HUB_WEIGHTS["name"], weight_files=[HUB_WEIGHTS],
                                  HF_ENDPOINT=server.url)
    _assert_one_line_unresolved(code, err, seconds, host)
    assert server.log, "the hub stand-in was never asked"


# ---------------------------------------------------------------------------- transient failures
class FlakyServer(HubServer):
    """Answers the first ``failures`` requests for each path in ``flaky`` with HTTP 503, then serves."""

    def __init__(self, files, flaky: set[str], failures: int = 1, plain: bool = False) -> None:
        super().__init__(files)
        self.left = {path: failures for path in flaky}
        self.plain = plain

    def lookup(self, path):
        return FileServer.lookup(self, path) if self.plain else super().lookup(path)

    def _handle(self, handler, head):
        path = handler.path.split("?")[0]
        if self.left.get(path, 0) > 0:
            self.left[path] -= 1
            self.log.append((handler.command, handler.path, "503"))
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        super()._handle(handler, head)


def _assert_converted(tmp_path: Path, name: str, weights_pth: bytes) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / "cache" / "weights" / name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["download"]["bytes"] == len(weights_pth)
    assert torch.equal(load_file(str(folder / "w.safetensors"))["layer.weight"],
                       torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_a_503_from_the_hub_is_retried_with_one_short_line(tmp_path, weights_pth):
    """``huggingface_hub`` asks once without retries, then again with its own (logged) retries: two 503s
    make one logged retry, folded here into one short line."""
    path = "/tester/weights/resolve/main/w.pth"
    with FlakyServer({"tester/weights/w.pth": weights_pth}, {path}, failures=2) as server:
        code, err, _ = _run(tmp_path, "download", HUB_WEIGHTS["name"], weight_files=[HUB_WEIGHTS],
                            HF_ENDPOINT=server.url)
    assert code == 0, err
    assert len([r for r in server.log if r[2] == "503"]) == 2, server.log
    retries = [line for line in err.splitlines() if "retry" in line.lower()]
    assert retries == ["retrying (1/5) in 1s: HTTP Error 503"], err
    assert "thrown while requesting" not in err and "Traceback" not in err
    _assert_converted(tmp_path, HUB_WEIGHTS["name"], weights_pth)


def test_a_503_from_a_plain_url_is_retried_and_resumes(tmp_path, weights_pth):
    fields = dict(URL_WEIGHTS, file_url="{url}/files/w.pth")
    with FlakyServer({"/files/w.pth": weights_pth}, {"/files/w.pth"}, plain=True) as server:
        fields["file_url"] = fields["file_url"].format(url=server.url)
        code, err, _ = _run(tmp_path, "download", fields["name"], weight_files=[fields])
    assert code == 0, err
    assert len(server.gets("/files/w.pth")) == 2, server.log  # the 503, then the file
    retries = [line for line in err.splitlines() if "retry" in line.lower()]
    assert len(retries) == 1 and retries[0].startswith("retrying (1/3) in ") and retries[0].endswith(
        ": HTTP 503 Service Unavailable"), err
    assert "Traceback" not in err
    _assert_converted(tmp_path, fields["name"], weights_pth)


# ---------------------------------------------------------------------------- messages
def test_long_reasons_are_shortened_at_a_word_boundary():
    from partclipseg.hub.fetch import MAX_REASON, _reason

    words = " ".join(f"word{i}" for i in range(200))
    reason = _reason(RuntimeError(words + "."))
    assert len(reason) <= MAX_REASON and reason.endswith("...")
    last = reason[:-3].split()[-1]
    assert last in words.split(), last  # a whole word before the "...", never a piece of one
    assert _reason(RuntimeError("short message.")) == "RuntimeError: short message"
