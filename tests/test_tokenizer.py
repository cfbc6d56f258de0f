"""Tests of the offline CLIP BPE tokenizer (``partclipseg.tokenizer``).

The reference tests compare against token ids produced by the official tokenizer, read from the
cases file named by ``PARTCLIPSEG_TOKENIZER_CASES`` and from the reference fixtures; a generated
corpus of awkward text is compared with the official fast tokenizer built by ``transformers``
(a test-only dependency) from the same vocabulary and merges.
"""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from conftest import tokenizer_cases_path
from partclipseg.errors import VocabularyError
from partclipseg.tokenizer import CLIPTokenizer, _default_merges_path, _read_merges, get_tokenizer


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


def test_text_normalisation(tok: CLIPTokenizer) -> None:
    assert tok.encode("  Cat \n\t EAR ") == tok.encode("cat ear")
    assert tok.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.encode("cat's") == tok.encode("cat")[:-1] + tok.encode("'s")[1:]
    # the official fast tokenizer: NFC (a decomposed accent is the composed letter), no HTML unescaping
    assert tok.encode("cafe\u0301") == tok.encode("café")
    assert tok.encode("cat &amp; dog") == tok.encode("cat & amp ; dog") != tok.encode("cat & dog")
    assert tok.normalize("A\u030angstro\u0308m\u3000&amp;\t\tX") == "ångström &amp; x"


# --------------------------------------------------------------------------- official fast tokenizer
_PIECES = [
    # composed and decomposed accents
    "café", "cafe\u0301", "Ångström", "A\u030angstro\u0308m", "naïve", "nai\u0308ve", "Ñandú", "N\u0303andu\u0301",
    "Ḍ\u0307", "e\u0301\u0301", "\u0301alone",
    # HTML entities
    "&amp;", "&lt;tail&gt;", "&#39;s", "&quot;head&quot;", "&nbsp;", "&eacute;", "&amp;amp;",
    # curly quotes and apostrophes
    "dog’s head", "‘ear’", "“leg”", "cat′s", "DOG'S", "it'll", "we've", "I'M", "they'd", "can't", "’ll",
    # fullwidth forms
    "ｃａｔ", "ＨＥＡＤ", "１２３", "！？", "ｃａｔ’ｓ",
    # ligatures and special letters
    "ﬁsh", "ﬂower", "æsthetic", "Œuvre", "straße", "ẞ", "Ǆ", "ﬀ", "İstanbul", "ΟΔΟΣ", "ΣΑΣ", "ǅemal",
    # emoji (with joiners, modifiers and variation selectors)
    "🐱", "🐶‍🦺", "👍🏽", "❤️", "🇫🇷", "cat🐱head",
    # CJK and other scripts
    "猫の頭", "고양이 머리", "狗头", "ｶﾀｶﾅ", "кошка", "قطة", "बिल्ली", "ไก่",
    # whitespace of every kind
    " ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u200b", "\u2028", "\u0085", "\x1c", "\x0b", "   ",
    # digits and numbers
    "123", "2024", "٣٤", "²", "Ⅻ", "½", "3.14", "1st", "x2",
    # punctuation and symbols
    "...", "!?", "--", "(left)", "#1", "@", "_", "\\", "/", "'", "''", "'s's", "—", "·", "©", "€5",
    # special tokens written in the text
    "<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|endoftext", "<|startoftext|>cat",
    # ordinary prompts
    "dog's head", "license plate", "chest of drawers", "American alligator", "head", "Cat", "LEG",
]
_SEPARATORS = ["", " ", "  ", "\t", "\n", "\u00a0", "-"]


def _corpus(size: int, seed: int = 0) -> list[str]:
    """Every piece alone, then random mixtures of 1-6 pieces with random separators."""
    import random

    rng = random.Random(seed)
    texts = list(_PIECES)
    while len(texts) < size:
        parts = [rng.choice(_PIECES) for _ in range(rng.randint(1, 6))]
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(_SEPARATORS) + part
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def official_fast():
    """The official fast tokenizer (transformers 5 ``CLIPTokenizer``, tokenizers backend) on the same
    vocabulary and merges. The ``vocab=``/``merges=`` form gives the official pipeline; the
    ``vocab_file=``/``merges_file=`` form would silently give other ids."""
    transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e '.[dev]')")
    tok = get_tokenizer()
    return transformers.CLIPTokenizer(vocab=dict(tok.encoder), merges=_read_merges(_default_merges_path()))


def test_official_fast_tokenizer_is_what_we_compare_with(official_fast) -> None:
    cases = json.loads(tokenizer_cases_path().read_text())
    for entry in cases.values():
        for prompt, ids in zip(entry["prompts"], entry["ids"]):
            assert official_fast(prompt)["input_ids"] == ids, prompt


def test_matches_official_fast_tokenizer_on_generated_corpus(tok: CLIPTokenizer, official_fast) -> None:
    corpus = _corpus(3000)
    mismatches, empty = [], 0
    for text in corpus:
        expected = official_fast(text)["input_ids"]
        if expected == [tok.bos_token_id, tok.eos_token_id]:  # nothing but whitespace: we refuse it
            empty += 1
            with pytest.raises(VocabularyError, match="empty"):
                tok.encode(text)
            continue
        got = tok.encode(text, max_length=None)
        if got != expected:
            mismatches.append((text, got, expected))
    assert not mismatches, f"{len(mismatches)}/{len(corpus)} texts differ: {mismatches[:5]}"
    assert 0 < empty < len(corpus) // 10
    # the batched call pads those same ids
    sample = [t for t in corpus[:400] if official_fast(t)["input_ids"][1:-1]][:64]
    ids, mask = tok(sample, max_length=512)
    for row, text in enumerate(sample):
        expected = official_fast(text)["input_ids"]
        assert ids[row, : len(expected)].tolist() == expected and int(mask[row].sum()) == len(expected)


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
@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "\u3000\u00a0"])
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
