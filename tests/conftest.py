"""Shared test fixtures.

Reference tests read the golden data of the official implementation from fixture folders: by
default every folder under ``tests/fixtures/reference/`` that holds a ``config.json`` (``tiny``, the
shared set, and ``alt``, another architecture, batch size, vocabulary and seeds), or the folders named
by ``PARTCLIPSEG_REFERENCE_DIR`` (several separated by ``os.pathsep``). Every test that uses ``ref_dir``
(directly or through ``ref_vocab``, ``ref_model``, ``ref_tensors``) runs once per folder. Tokenizer
cases come from ``PARTCLIPSEG_TOKENIZER_CASES`` (default: ``tests/fixtures/reference/
tokenizer_cases.json``). Everything (sizes, batch sizes, vocabulary, which outputs exist) is read from
the folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def reference_dirs() -> list[Path]:
    """The golden fixture folders the reference tests run on (see the module docstring)."""
    named = os.environ.get("PARTCLIPSEG_REFERENCE_DIR")
    if named:
        return [Path(p) for p in named.split(os.pathsep) if p]
    found = sorted(p.parent for p in (FIXTURES / "reference").glob("*/config.json"))
    return found or [FIXTURES / "reference" / "tiny"]  # none: the ref_dir fixture reports the missing folder


def tokenizer_cases_path() -> Path:
    return Path(os.environ.get("PARTCLIPSEG_TOKENIZER_CASES", FIXTURES / "reference" / "tokenizer_cases.json"))


@pytest.fixture(scope="session", params=reference_dirs(), ids=lambda p: p.name)
def ref_dir(request) -> Path:
    path = request.param
    if not path.is_dir():
        pytest.fail(f"reference fixture folder not found: {path} (set PARTCLIPSEG_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def ref_vocab(ref_dir: Path) -> dict:
    return json.loads((ref_dir / "vocab_and_losses.json").read_text())


def load_reference_model(path: Path):
    """The official fixture weights (official key names, fp16-exact) in our model, float32, eval."""
    from safetensors.torch import load_file

    from partclipseg.config import PartCLIPSegConfig
    from partclipseg.model import build_model
    from partclipseg.weights import convert_official_state_dict, load_state_dict_checked

    config = PartCLIPSegConfig.load(path / "config.json")
    model = build_model(config)
    load_state_dict_checked(model, convert_official_state_dict(load_file(str(path / "model.safetensors"))), str(path))
    return model.eval()


@pytest.fixture(scope="session")
def ref_model(ref_dir: Path):
    return load_reference_model(ref_dir)


@pytest.fixture(scope="session")
def ref_tensors(ref_dir: Path):
    """name -> dict of tensors for inputs/outputs/train/infer safetensors files present in the folder."""
    from safetensors.torch import load_file

    return {p.stem: load_file(str(p)) for p in sorted(ref_dir.glob("*.safetensors")) if p.stem != "model"}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved tiny-fast model with seeded random weights (for CLI / evaluation tests)."""
    import torch

    from partclipseg.config import get_config
    from partclipseg.model import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    build_model(get_config("tiny-fast")).save_pretrained(path)
    return path


def make_toy_image_tree(root: Path, seed: int = 0) -> list[str]:
    """Two input folders of small random images: ``root/in1`` (22 images in nested folders with clashing
    stems: ``a.jpg``/``a.png``, ``x/img.*`` at several depths, upper-case suffixes; one corrupt file) and
    ``root/in2`` (``a.jpg`` and ``x/img.jpg`` again: the same relative paths as in ``in1``).
    Returns the two folders, as strings."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    layout = ["in1/a.jpg", "in1/a.png", "in1/b.png", "in1/x/img.jpg", "in1/x/img.png", "in1/y/x/img.jpg",
              "in1/z/x/img.jpg", "in1/deep/1/2/c.png", "in1/deep/1/2/c.bmp", "in1/deep/1/c.png", "in1/deep/c.png",
              "in1/m/Case.PNG", "in1/m/d.JPG", "in1/n/00.png", "in1/n/01.png", "in1/n/02.jpg", "in1/n/03.gif",
              "in1/n/04.webp", "in1/n/05.tif", "in1/n/06.ppm", "in1/n/07.jpeg", "in1/n/08.png",
              "in2/a.jpg", "in2/x/img.jpg"]
    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(16, 72, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    (root / "in1" / "n" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return [str(root / "in1"), str(root / "in2")]


def read_tree(root: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file under ``root`` (temporary files included, so leftovers show)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
