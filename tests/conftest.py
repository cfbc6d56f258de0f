"""Shared test fixtures.

Reference tests read the golden data of the official implementation from the folder named by
``PARTCLIPSEG_REFERENCE_DIR`` (default: the copy in ``tests/fixtures/reference/tiny``) and the
tokenizer cases from ``PARTCLIPSEG_TOKENIZER_CASES`` (default: ``tests/fixtures/reference/
tokenizer_cases.json``). Everything (sizes, vocabulary, which outputs exist) is read from there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def reference_dir() -> Path:
    return Path(os.environ.get("PARTCLIPSEG_REFERENCE_DIR", FIXTURES / "reference" / "tiny"))


def tokenizer_cases_path() -> Path:
    return Path(os.environ.get("PARTCLIPSEG_TOKENIZER_CASES", FIXTURES / "reference" / "tokenizer_cases.json"))


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    path = reference_dir()
    if not path.is_dir():
        pytest.fail(f"reference fixture folder not found: {path} (set PARTCLIPSEG_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def ref_vocab(ref_dir: Path) -> dict:
    return json.loads((ref_dir / "vocab_and_losses.json").read_text())
