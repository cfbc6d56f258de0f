"""Named models: download, resume, verification, locking and messages, against servers on 127.0.0.1.

Stand-ins: a Drive-like HTTP server (``PARTCLIPSEG_GDRIVE_URL`` points ``gdown`` at it) serving an
official-format ``.pth`` built from the fixture weights, and a hub-like server (``HF_ENDPOINT``)
serving a CLIPSeg model in ``transformers`` layout. Registry entries for those models are added by the
tests (``MODELS`` / ``tests/cli_with_test_models.py``); everything after the lookup is the real code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from loopback_servers import FileServer, HubServer
from partclipseg.cli import main
from partclipseg.errors import CheckpointError, DownloadError
from partclipseg.hub.registry import MODELS, ModelEntry
from partclipseg.predictor import Predictor, segment_parts
from partclipseg.train import load_recipe
from partclipseg.train.loop import build_initial_model
from partclipseg.weights import load_pretrained

TESTS = Path(__file__).parent
DRIVE_PATH = "/uc?id=TESTID"


@pytest.fixture(scope="module")
def drive_entry(ref_dir) -> dict:
    """A Drive model whose file is the golden fixture's official checkpoint (converted with its config)."""
    return dict(name="test_pascal", architecture="partclipseg", trained_on="fixture", vocabulary="any",
                size="~16 MB", source="gdrive", licence="test", gdrive_id="TESTID", filename="test_oracle.pth",
                config_preset=str(ref_dir / "config.json"))


@pytest.fixture(scope="module")
def official_pth(ref_dir) -> bytes:
    """The fixture weights as an official detectron2 checkpoint (``{"model": {"partclipseg_model.<key>": ...}}``)."""
    state = load_file(str(ref_dir / "model.safetensors"))
    prefix = "partclipseg_model."
    state = {k if k.startswith(prefix) else prefix + k: v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save({"model": state, "iteration": 20000}, buffer)
    return buffer.getvalue()


@pytest.fixture()
def home(tmp_path, monkeypatch, request):
    """An empty cache, the test model registered, and HOME moved (gdown keeps cookies there)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PARTCLIPSEG_HOME", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if "drive_entry" in request.fixturenames:
        monkeypatch.setitem(MODELS, "test_pascal", ModelEntry(**request.getfixturevalue("drive_entry")))
    return cache


def _point_drive_at(monkeypatch, server_url: str) -> None:
    monkeypatch.setenv("PARTCLIPSEG_GDRIVE_URL", server_url + "/uc?id={id}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_first_use_downloads_and_converts_then_loads_without_network(drive_entry, home, official_pth, ref_model,
                                                                     monkeypatch):
    with FileServer({DRIVE_PATH: official_pth}) as server:
        _point_drive_at(monkeypatch, server.url)
        model = load_pretrained("test_pascal")
    assert len(server.gets(DRIVE_PATH)) == 1
    folder = home / "models" / "test_pascal"
    assert sorted(os.listdir(folder)) == ["config.json", "manifest.json", "model.safetensors"]  # .pth converted away
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["download"]["sha256"] == _sha(official_pth)
    assert manifest["download"]["bytes"] == len(official_pth)
    assert manifest["files"]["model.safetensors"]["sha256"] == _sha((folder / "model.safetensors").read_bytes())
    reference = ref_model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    # the server is gone: the cached, verified copy is used, and the default Predictor path takes the name too
    predictor = Predictor.from_pretrained("test_pascal")
    assert torch.equal(predictor.model.decoder.film_mul.weight, ref_model.decoder.film_mul.weight)
    segments = segment_parts(np.full((30, 40, 3), 128, np.uint8), "dog's head, dog's leg", model="test_pascal")
    assert isinstance(segments, list)
    # train init=NAME: a saved partclipseg model by name starts fine-tuning
    size = predictor.model.config.image_size
    started = build_initial_model(load_recipe("pascal_part_116", ["init=test_pascal", f"image_size={size}"]))
    assert torch.equal(started.decoder.film_mul.weight, ref_model.decoder.film_mul.weight)


def test_connection_cut_mid_file_is_resumed_with_a_range_request(drive_entry, home, official_pth, monkeypatch):
    cut = len(official_pth) // 2
    with FileServer({DRIVE_PATH: official_pth}, cut_after=cut, cuts=1) as server:
        _point_drive_at(monkeypatch, server.url)
        folder = load_pretrained("test_pascal") and home / "models" / "test_pascal"
    ranges = [r for _, _, r in server.gets(DRIVE_PATH) if r]
    assert ranges, server.log
    offset = int(ranges[-1].split("=")[1].rstrip("-"))
    assert 0 < offset <= cut
    assert json.loads((folder / "manifest.json").read_text())["download"]["sha256"] == _sha(official_pth)


def test_partial_file_is_kept_and_the_next_run_resumes_it(drive_entry, home, official_pth, monkeypatch):
    monkeypatch.setenv("PARTCLIPSEG_DOWNLOAD_RETRIES", "0")
    cut = len(official_pth) // 3
    folder = home / "models" / "test_pascal"
    with FileServer({DRIVE_PATH: official_pth}, cut_after=cut, cuts=1) as server:
        _point_drive_at(monkeypatch, server.url)
        with pytest.raises(DownloadError, match="kept in .*running again resumes"):
            load_pretrained("test_pascal")
        parts = list(folder.glob("test_oracle.pth*.part"))
        assert len(parts) == 1 and 0 < parts[0].stat().st_size <= cut
        assert not (folder / "manifest.json").exists() and not (folder / "model.safetensors").exists()
        kept = parts[0].stat().st_size
        load_pretrained("test_pascal")
    assert ("GET", DRIVE_PATH, f"bytes={kept}-") in server.log
    assert sorted(os.listdir(folder)) == ["config.json", "manifest.json", "model.safetensors"]
    assert json.loads((folder / "manifest.json").read_text())["download"]["sha256"] == _sha(official_pth)


def test_truncated_or_altered_cached_files_are_refused_by_name(drive_entry, home, official_pth, monkeypatch):
    with FileServer({DRIVE_PATH: official_pth}) as server:
        _point_drive_at(monkeypatch, server.url)
        load_pretrained("test_pascal")
    weights = home / "models" / "test_pascal" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        load_pretrained("test_pascal")
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0xFF
    weights.write_bytes(bytes(altered))
    with pytest.raises(CheckpointError, match=r"model\.safetensors was changed"):
        load_pretrained("test_pascal")
    weights.write_bytes(original)
    config = weights.with_name("config.json")
    data = json.loads(config.read_text())
    data["image_size"] *= 2
    config.write_text(json.dumps(data, indent=2) + "\n")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_pretrained("test_pascal")


def test_a_wrong_size_from_the_registry_is_refused_and_removed(drive_entry, home, official_pth, monkeypatch):
    monkeypatch.setitem(MODELS, "test_pascal", ModelEntry(**dict(drive_entry, bytes=len(official_pth) + 1)))
    with FileServer({DRIVE_PATH: official_pth}) as server:
        _point_drive_at(monkeypatch, server.url)
        with pytest.raises(DownloadError, match="test_oracle.pth has .* bytes, expected"):
            load_pretrained("test_pascal")
    assert not list((home / "models" / "test_pascal").glob("*"))


def _cli_env(home: Path, tmp_path: Path, entries: list[dict], **extra: str) -> dict[str, str]:
    env = dict(os.environ, PARTCLIPSEG_HOME=str(home), HOME=str(tmp_path / "home"),
               PARTCLIPSEG_TEST_MODELS=json.dumps(entries),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TESTS / "cli_with_test_models.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_processes_fetching_at_once_share_one_download(drive_entry, home, official_pth, tmp_path):
    """Both processes find the model's lock taken (held here until both say they wait), then one
    downloads and the other uses its result: one transfer, two successes, no corrupted file."""
    import time

    from partclipseg.hub.store import lock_for

    folder = home / "models" / "test_pascal"
    with FileServer({DRIVE_PATH: official_pth}, chunk=1 << 16, delay=0.005) as server:
        env = _cli_env(home, tmp_path, [drive_entry], PARTCLIPSEG_GDRIVE_URL=server.url + "/uc?id={id}")
        logs = [tmp_path / f"err{i}.txt" for i in range(2)]
        lock = lock_for(folder)
        lock.acquire()
        procs = []
        try:
            for log in logs:
                with open(log, "w") as handle:
                    procs.append(subprocess.Popen(
                        [sys.executable, str(TESTS / "cli_with_test_models.py"), "download", "test_pascal"],
                        env=env, stdout=subprocess.PIPE, stderr=handle, text=True))
            deadline = time.monotonic() + 240
            while not all("waiting for another process" in log.read_text() for log in logs):
                assert time.monotonic() < deadline, [log.read_text() for log in logs]
                assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
                time.sleep(0.2)
        finally:
            lock.release()
        outs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out, log in zip(procs, outs, logs):
        assert proc.returncode == 0, log.read_text()
        assert "manifest.json" in out
    assert len(server.gets(DRIVE_PATH)) == 1  # one transfer: the second process used the first one's result
    assert sorted(os.listdir(folder)) == ["config.json", "manifest.json", "model.safetensors"]
    assert load_pretrained(folder) is not None


def test_offline_gives_the_url_the_manual_way_and_the_folder(drive_entry, home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARTCLIPSEG_DOWNLOAD_RETRIES", "1")
    url = f"http://127.0.0.1:{_closed_port()}"
    _point_drive_at(monkeypatch, url)
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    code = main(["segment", str(image), "--model", "test_pascal", "--parts", "dog's head",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    folder = home / "models" / "test_pascal"
    for needle in (f"{url}/uc?id=TESTID", "https://drive.google.com/file/d/TESTID/view",
                   "gdown TESTID -O test_oracle.pth",
                   str(folder / "test_oracle.pth"), "partclipseg download test_pascal --to DIR"):
        assert needle in err, needle
    assert not folder.exists() or not any(folder.iterdir())  # nothing half-written left
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_file_put_in_the_folder_by_hand_is_converted_without_network(drive_entry, home, official_pth, monkeypatch):
    _point_drive_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    folder = home / "models" / "test_pascal"
    folder.mkdir(parents=True)
    (folder / "test_oracle.pth").write_bytes(official_pth)
    load_pretrained("test_pascal")
    assert json.loads((folder / "manifest.json").read_text())["download"]["sha256"] == _sha(official_pth)


# ---------------------------------------------------------------------------- names and paths
def test_path_like_values_that_do_not_exist_are_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "converted").mkdir()
    for value in ("converted/pascal_part_116", "./nothing", "~/nothing-here-xyz", "/no/such/dir",
                  "weights.pth", "model.safetensors"):
        with pytest.raises(CheckpointError, match="no such file or folder"):
            load_pretrained(value)
    with pytest.raises(CheckpointError, match="unknown model 'pascal_part'.*pascal_part_116"):
        load_pretrained("pascal_part")
    for empty in ("", "  "):  # not the current folder
        with pytest.raises(CheckpointError, match="empty name"):
            load_pretrained(empty)


def test_toy_name_is_the_builtin_model_and_no_model_prints_one_note(tmp_path, capsys):
    from partclipseg.weights import load_default_model

    assert torch.equal(load_pretrained("toy").decoder.film_mul.weight, load_default_model().decoder.film_mul.weight)
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(image)
    assert main(["segment", str(image), "--parts", "dog's head", "--out", str(tmp_path / "a"), "--no-overlay"]) == 0
    err = capsys.readouterr().err
    assert err.count("only knows the synthetic toy world") == 1
    assert "--model pascal_part_116" in err
    assert main(["segment", str(image), "--model", "toy", "--parts", "dog's head", "--out", str(tmp_path / "b"),
                 "--no-overlay"]) == 0
    assert "toy world" not in capsys.readouterr().err


def test_models_command_lists_every_named_model(capsys, home):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("pascal_part_116", "ade20k_part_234", "clipseg_pascal_part_116", "clipseg-rd64-refined", "toy"):
        assert name in out
    for word in ("architecture", "trained on", "licence", "paper", "cached", "1ytZpfutk__67GLwB-4jMClehJlnAzYFS",
                 "CIDAS/clipseg-rd64-refined", "partclipseg_ade_oracle.pth", "commented out"):
        assert word in out, word


def test_download_to_copies_a_verified_folder(drive_entry, home, official_pth, monkeypatch, tmp_path, capsys):
    with FileServer({DRIVE_PATH: official_pth}) as server:
        _point_drive_at(monkeypatch, server.url)
        assert main(["download", "test_pascal", "--to", str(tmp_path / "copy")]) == 0
    assert sorted(os.listdir(tmp_path / "copy")) == ["config.json", "manifest.json", "model.safetensors"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.safetensors").write_bytes(b"something else")
    assert main(["download", "test_pascal", "--to", str(tmp_path / "other")]) == 2
    assert "already holds model files" in capsys.readouterr().err
    assert (tmp_path / "other" / "model.safetensors").read_bytes() == b"something else"
    (tmp_path / "a_file").write_text("mine")
    assert main(["download", "toy", "--to", str(tmp_path / "a_file")]) == 2  # not "File exists"
    assert "is a file, not a folder" in capsys.readouterr().err and (tmp_path / "a_file").read_text() == "mine"


# ---------------------------------------------------------------------------- the hub path
HUB_ENTRY = dict(name="test_hub_clipseg", architecture="clipseg (HF)", trained_on="random", vocabulary="any text",
                 size="~3 MB", source="hub", licence="test", hub_repo="tester/tiny-clipseg")


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """A random small ``CLIPSegForImageSegmentation`` (real CLIP vocabulary size, so the package
    tokenizer works), as ``config.json`` + ``pytorch_model.bin`` (no safetensors, no preprocessor)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.CLIPSegConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16, extract_layers=[0, 2], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=24, use_complex_transposed_convolution=True)
    model = transformers.CLIPSegForImageSegmentation(config).eval()
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {"tester/tiny-clipseg/config.json": (folder / "config.json").read_bytes(),
            "tester/tiny-clipseg/pytorch_model.bin": buffer.getvalue()}, model


def test_hub_offline_message_names_the_repo_and_folder(home, monkeypatch):
    monkeypatch.setitem(MODELS, "test_hub_clipseg", ModelEntry(**HUB_ENTRY))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    folder = home / "models" / "test_hub_clipseg"
    with pytest.raises(DownloadError) as info:
        load_pretrained("test_hub_clipseg")
    message = str(info.value)
    for needle in ("https://huggingface.co/tester/tiny-clipseg", "hf download tester/tiny-clipseg",
                   str(folder), "partclipseg download test_hub_clipseg --to DIR"):
        assert needle in message, needle
    assert not folder.exists()


def test_hub_model_downloads_converts_bin_and_runs_offline_from_a_copied_folder(home, hf_files, monkeypatch, tmp_path):
    files, hf_model = hf_files
    monkeypatch.setitem(MODELS, "test_hub_clipseg", ModelEntry(**HUB_ENTRY))
    with HubServer(files) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert main(["download", "test_hub_clipseg", "--to", str(tmp_path / "copy")]) == 0
    assert any("pytorch_model.bin" in p for _, p, _ in server.gets())
    cached = home / "models" / "test_hub_clipseg"
    assert sorted(p.name for p in cached.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path / "copy")) == ["config.json", "manifest.json", "model.safetensors"]
    assert load_pretrained("test_hub_clipseg") is not None  # second use: server gone, cache verified

    image = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    parts = "cat's head, cat's leg, dog's tail"
    env = _cli_env(home, tmp_path, [HUB_ENTRY], HF_HUB_OFFLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    proc = _cli("segment", str(image), "--model", str(tmp_path / "copy"), "--parts", parts, "--scores", "--out",
                str(tmp_path / "out"), env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    scores = np.load(tmp_path / "out" / "photo.png.scores.npz")["part_scores"].astype(np.float32)

    # reference: transformers' own forward on the same pixels and token ids, sigmoid at image size
    from partclipseg.postprocess import upsample
    from partclipseg.preprocess import load_image, preprocess
    from partclipseg.tokenizer import get_tokenizer
    from partclipseg.vocabulary import Vocabulary

    ours = load_pretrained(tmp_path / "copy")
    vocab = Vocabulary.parse(parts)
    pixels = preprocess([load_image(image)], ours.config.image_size, mean=ours.config.image_mean,
                        std=ours.config.image_std)
    ids, mask = get_tokenizer()(list(vocab.baseline_prompts), padding="longest")
    with torch.no_grad():
        logits = hf_model(pixel_values=pixels.repeat(len(vocab), 1, 1, 1), input_ids=ids, attention_mask=mask).logits
    expected = torch.sigmoid(upsample(logits, (40, 56))).numpy()
    assert scores.shape == (len(vocab) + 1, 40, 56)  # prompts in order, then the background (constant 0.5)
    np.testing.assert_allclose(scores[:-1], expected, atol=2e-3)
    np.testing.assert_allclose(scores[-1], 0.5, atol=1e-3)
