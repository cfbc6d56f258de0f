"""Offline CLIP byte-pair-encoding tokenizer, identical to the official fast tokenizer.

The official processor tokenizes with ``CLIPTokenizerFast`` (the ``tokenizers`` pipeline of CLIP's
``tokenizer.json``). This module builds the same pipeline with the ``tokenizers`` library from CLIP's
merges file (``bpe_simple_vocab_16e6.txt.gz``, bundled with this package; no network access):

* normaliser: Unicode NFC, every run of whitespace replaced by one space, lower-casing;
* pre-tokeniser: CLIP's split pattern (``<|startoftext|>``, ``<|endoftext|>``, ``'s 't 're 've 'm 'll 'd``,
  runs of letters, single digits, runs of other non-space characters; whitespace dropped), then the
  byte-level mapping;
* model: byte-level BPE with the end-of-word suffix ``</w>``;
* ``<|startoftext|>`` and ``<|endoftext|>`` written in the text are the special tokens themselves.

Unlike the slow/original CLIP tokenizer there is no ftfy and no ``html.unescape``: ``&amp;`` stays
``& amp ;``, as the official fast tokenizer leaves it.

Vocabulary layout (49408 tokens): the 256 byte symbols, the same 256 symbols with ``</w>``
appended, one token per merge (the first 49152 - 256 - 2 merges), then ``<|startoftext|>``
(49406) and ``<|endoftext|>`` (49407).
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources
import os
import zlib
from collections.abc import Sequence

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

from .errors import VocabularyError

__all__ = ["CLIPTokenizer", "get_tokenizer"]

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2
#: CLIP's split pattern, as in the official tokenizer.json (the matches are the words).
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 style reversible map from each byte to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the remaining bytes (control characters, space,
    ...) map to code points 256, 257, ... in increasing byte order. The dict's insertion order
    (printable bytes first, then the others) is the order of the first 256 vocabulary entries.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def _default_merges_path():
    return importlib.resources.files("partclipseg") / "resources" / "bpe_simple_vocab_16e6.txt.gz"


def _read_merges(path) -> list[tuple[str, str]]:
    """Return the merges used by CLIP from ``path`` (gzip-compressed or plain text)."""
    try:
        raw = path.read_bytes() if hasattr(path, "read_bytes") else open(path, "rb").read()
    except FileNotFoundError:
        raise FileNotFoundError(f"CLIP BPE merges file not found: {path}") from None
    except OSError as exc:
        raise VocabularyError(f"cannot read CLIP BPE merges file {path}: {exc}") from exc
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        lines = raw.decode("utf-8").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise VocabularyError(f"corrupt CLIP BPE merges file {path}: {exc}") from exc
    selected = lines[1 : _N_MERGES + 1]
    if len(selected) < _N_MERGES:
        raise VocabularyError(
            f"corrupt CLIP BPE merges file {path}: expected at least {_N_MERGES} merges after the "
            f"header line, found {len(selected)}"
        )
    merges = []
    for number, line in enumerate(selected, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise VocabularyError(f"corrupt CLIP BPE merges file {path}: line {number} is not 'a b': {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer, as the official ``CLIPTokenizerFast``.

    ``encode(text)`` gives ``[BOS, ...ids, EOS]``; calling the tokenizer on a list of texts gives
    padded ``(input_ids, attention_mask)`` tensors like the official/HF tokenizer.
    """

    bos_token_id = 49406
    eos_token_id = 49407
    pad_token_id = 49407
    vocab_size = 49408
    model_max_length = 77

    def __init__(self, merges_path: str | os.PathLike | None = None):
        path = _default_merges_path() if merges_path is None else merges_path
        merges = _read_merges(path)
        symbols = list(_bytes_to_unicode().values())  # printable bytes first: CLIP's id order
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_BOS, _EOS]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        if len(self.encoder) != self.vocab_size:
            raise VocabularyError(
                f"corrupt CLIP BPE merges file {path}: {len(self.encoder)} distinct tokens, expected {self.vocab_size}"
            )
        self.decoder = {i: token for token, i in self.encoder.items()}
        self._tokenizer = _fast_pipeline(self.encoder, merges)

    def __len__(self) -> int:
        return self.vocab_size

    def normalize(self, text: str) -> str:
        """The official normalisation: NFC, whitespace runs -> one space, lower-case (no strip)."""
        return self._tokenizer.normalizer.normalize_str(text)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Return ``[BOS, ...token ids, EOS]`` for ``text`` (no padding).

        Raises ``VocabularyError`` if ``text`` is not a str, is empty after normalisation (whitespace only), or (when
        ``max_length`` is given) needs more than ``max_length`` tokens including BOS/EOS.
        """
        if not isinstance(text, str):
            raise VocabularyError(f"text to tokenise must be a str, got {type(text).__name__}: {text!r}")
        words = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not words:
            raise VocabularyError(f"text to tokenise is empty or whitespace-only: {text!r}")
        ids = [self.bos_token_id, *words, self.eos_token_id]
        if max_length is not None and len(ids) > max_length:
            raise VocabularyError(
                f"text {text!r} tokenises to {len(ids)} tokens (with BOS/EOS), more than max_length={max_length}"
            )
        return ids

    def __call__(
        self, texts: Sequence[str], padding: str = "longest", max_length: int = 77
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a batch into ``(input_ids, attention_mask)``, both ``[P, L]`` int64.

        ``padding="longest"`` pads to the longest text of the batch, ``"max_length"`` to
        ``max_length`` (77 = CLIP's context). Padding uses id 49407 and mask 0; texts longer
        than ``max_length`` raise ``VocabularyError`` (never truncated).
        """
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        if isinstance(texts, (str, bytes)):
            raise VocabularyError(f"expected a list of texts, got a single string: {texts!r}")
        texts = list(texts)
        if not texts:
            raise VocabularyError("the list of texts to tokenise is empty")
        encoded = [self.encode(text, max_length=max_length) for text in texts]
        length = max_length if padding == "max_length" else max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), length), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.int64)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


def _normalizer() -> normalizers.Normalizer:
    """The official normaliser: NFC, every run of whitespace one space, lower case."""
    return normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])


@functools.lru_cache(maxsize=None)
def _shared_normalizer() -> normalizers.Normalizer:
    return _normalizer()


def normalize_text(text: str) -> str:
    """``text`` as the text encoder reads it (the official normaliser; no merges file needed): two names
    equal here are one name to the model."""
    return _shared_normalizer().normalize_str(text)


def _fast_pipeline(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """The official fast tokenizer's pipeline (see the module docstring), without BOS/EOS."""
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                     end_of_word_suffix="</w>", fuse_unk=False, unk_token=_EOS))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in (_BOS, _EOS)])
    return tokenizer


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> CLIPTokenizer:
    """The shared tokenizer on the packaged merges file (loaded once)."""
    return CLIPTokenizer()
