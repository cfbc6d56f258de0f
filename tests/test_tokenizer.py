"""Tests of the offline CLIP BPE tokenizer (``partclipseg.tokenizer``).

The reference tests compare against token ids produced by the official tokenizer, read from the
cases file named by ``PARTCLIPSEG_TOKENIZER_CASES`` and from the tiny reference fixture.
"""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from conftest import tokenizer_cases_path
from partclipseg.errors import VocabularyError
from partclipseg.tokenizer import CLIPTokenizer, get_tokenizer


def _load_cases() -> dict | None:
    path = tokenizer_cases_path()
    return json.loads(path.read_text()) if path.is_file() else None


CASES = _load_cases()
DATASETS = sorted(CASES) if CASES else ["<cases file missing>"]


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return get_tokenizer()


# --------------------------------------------------------------------------- reference ids
@pytest.mark.reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_encode_matches_reference_cases(tok: CLIPTokenizer, dataset: str) -> None:
    if CASES is None:
        pytest.fail(f"tokenizer cases file not found: {tokenizer_cases_path()} (set PARTCLIPSEG_TOKENIZER_CASES)")
    entry = CASES[dataset]
    prompts, expected = entry["prompts"], entry["ids"]
    assert len(prompts) == len(expected) > 0
    mismatches = [(p, tok.encode(p), ids) for p, ids in zip(prompts, expected) if tok.encode(p) != ids]
    assert not mismatches, f"{len(mismatches)}/{len(prompts)} prompts of {dataset} differ: {mismatches[:5]}"

    # The batched call gives the same ids, padded with the pad id and masked out.
    input_ids, mask = tok(prompts)
    for row, ids in enumerate(expected):
        assert input_ids[row, : len(ids)].tolist() == ids
        assert (input_ids[row, len(ids):] == tok.pad_token_id).all()
        assert mask[row].tolist() == [1] * len(ids) + [0] * (input_ids.shape[1] - len(ids))


@pytest.mark.reference
def test_tiny_fixture_token_ids(tok: CLIPTokenizer, ref_vocab: dict) -> None:
    spec = ref_vocab["tokenizer"]
    assert (spec["bos"], spec["eos"], spec["pad"]) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert spec["max_length"] == tok.model_max_length
    assert spec["token_ids"], "fixture has no token ids"
    for text, ids in spec["token_ids"].items():
        assert tok.encode(text) == ids, text
    texts = list(spec["token_ids"])
    input_ids, mask = tok(texts, padding=spec["padding"], max_length=spec["max_length"])
    assert input_ids.shape == (len(texts), spec["max_length"])
    for row, text in enumerate(texts):
        n = len(spec["token_ids"][text])
        assert input_ids[row, :n].tolist() == spec["token_ids"][text]
        assert int(mask[row].sum()) == n


# --------------------------------------------------------------------------- vocabulary
def test_vocabulary_size_and_special_ids(tok: CLIPTokenizer) -> None:
    assert tok.vocab_size == len(tok) == len(tok.encoder) == 49408
    assert sorted(tok.encoder.values()) == list(range(49408))
    assert tok.encoder["<|startoftext|>"] == tok.bos_token_id == 49406
    assert tok.encoder["<|endoftext|>"] == tok.eos_token_id == tok.pad_token_id == 49407
    assert tok.model_max_length == 77
    # Byte symbols come first (printable bytes in order), then the same with "</w>".
    assert tok.decoder[0] == "!" and tok.decoder[256] == "!</w>"
    assert tok.encode("<|startoftext|> cat <|endoftext|>") == [49406, 49406, 2368, 49407, 49407]


def test_get_tokenizer_is_a_singleton() -> None:
    assert get_tokenizer() is get_tokenizer()


def test_text_cleaning(tok: CLIPTokenizer) -> None:
    assert tok.encode("  Cat \n\t EAR ") == tok.encode("cat ear")
    assert tok.encode("cat &amp; dog") == tok.encode("cat & dog")
    assert tok.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.encode("cat's") == tok.encode("cat")[:-1] + tok.encode("'s")[1:]


# --------------------------------------------------------------------------- padding
def test_padding_longest_and_max_length(tok: CLIPTokenizer) -> None:
    texts = ["cat", "license plate", "a photo of a cat"]
    lengths = [len(tok.encode(t)) for t in texts]
    ids, mask = tok(texts)  # default: longest
    assert ids.dtype == mask.dtype == torch.int64
    assert ids.shape == mask.shape == (3, max(lengths))
    ids77, mask77 = tok(texts, padding="max_length")
    assert ids77.shape == mask77.shape == (3, 77)
    ids10, _ = tok(texts, padding="max_length", max_length=10)
    assert ids10.shape == (3, 10)
    for row, (text, n) in enumerate(zip(texts, lengths)):
        enc = tok.encode(text)
        for out, m, width in ((ids, mask, max(lengths)), (ids77, mask77, 77)):
            assert out[row].tolist() == enc + [49407] * (width - n)
            assert m[row].tolist() == [1] * n + [0] * (width - n)
    assert torch.equal(ids77[:, : ids.shape[1]], ids)


def test_max_length_boundary(tok: CLIPTokenizer) -> None:
    fits = " ".join(["cat"] * 75)  # 75 tokens + BOS + EOS = 77
    ids, mask = tok([fits], padding="max_length")
    assert ids.shape == (1, 77) and int(mask.sum()) == 77
    with pytest.raises(VocabularyError, match="cat cat"):
        tok([fits + " cat"])
    with pytest.raises(VocabularyError, match="license plate"):
        tok(["license plate"], max_length=3)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "&nbsp;"])
def test_empty_text_is_an_error(tok: CLIPTokenizer, text: str) -> None:
    with pytest.raises(VocabularyError, match="empty"):
        tok.encode(text)
    with pytest.raises(VocabularyError, match="empty"):
        tok(["cat", text])


@pytest.mark.parametrize("text", [None, 3, b"cat", ["cat"]])
def test_non_string_text_is_an_error(tok: CLIPTokenizer, text) -> None:
    with pytest.raises(VocabularyError, match="must be a str"):
        tok.encode(text)
    with pytest.raises(VocabularyError, match="must be a str"):
        tok(["cat", text])


def test_bad_batches_are_errors(tok: CLIPTokenizer) -> None:
    with pytest.raises(VocabularyError, match="empty"):
        tok([])
    with pytest.raises(VocabularyError, match="single string"):
        tok("cat")
    with pytest.raises(ValueError, match="padding"):
        tok(["cat"], padding="do_not_pad")
    with pytest.raises(ValueError, match="max_length"):
        tok(["cat"], max_length=1)


def test_missing_or_corrupt_merges_file(tmp_path) -> None:
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        CLIPTokenizer(missing)
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    with pytest.raises(VocabularyError, match="short.txt.gz"):
        CLIPTokenizer(short)
    truncated = tmp_path / "truncated.txt.gz"
    packed = gzip.compress(b"#version: 0.2\n" + b"i n\n" * 1000)
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(VocabularyError, match="corrupt .*truncated.txt.gz"):
        CLIPTokenizer(truncated)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(VocabularyError, match="garbage.bin"):
        CLIPTokenizer(garbage)
