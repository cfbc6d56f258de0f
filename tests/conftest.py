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
