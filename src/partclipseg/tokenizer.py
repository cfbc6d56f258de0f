"""Offline CLIP byte-pair-encoding tokenizer.

A self-contained implementation of the tokenizer used by OpenAI CLIP (and therefore by CLIPSeg /
PartCLIPSeg). It reads CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``, bundled with this
package) and needs no network access and no third-party tokenizer library.

Vocabulary layout (49408 tokens): the 256 byte symbols, the same 256 symbols with ``</w>``
appended, one token per merge (the first 49152 - 256 - 2 merges), then ``<|startoftext|>``
(49406) and ``<|endoftext|>`` (49407).
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import os
import zlib
from collections.abc import Sequence

import regex
import torch

from .errors import VocabularyError

__all__ = ["CLIPTokenizer", "get_tokenizer"]

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2
_PRETOKENIZE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


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
    """CLIP's byte-level BPE tokenizer.

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
        self.byte_encoder = _bytes_to_unicode()
        symbols = list(self.byte_encoder.values())  # printable bytes first: CLIP's id order
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_BOS, _EOS]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        if len(self.encoder) != self.vocab_size:
            raise VocabularyError(
                f"corrupt CLIP BPE merges file {path}: {len(self.encoder)} distinct tokens, expected {self.vocab_size}"
            )
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self._cache: dict[str, list[int]] = {_BOS: [self.bos_token_id], _EOS: [self.eos_token_id]}

    def __len__(self) -> int:
        return self.vocab_size

    @staticmethod
    def clean(text: str) -> str:
        """CLIP's text normalisation: html-unescape (twice), collapse whitespace, strip, lower-case."""
        text = html.unescape(html.unescape(text))
        return _WHITESPACE.sub(" ", text).strip().lower()

    def _bpe(self, word: str) -> list[int]:
        """Token ids of one pre-tokenised word (cached)."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        parts = [self.byte_encoder[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        ranks = self.bpe_ranks
        while len(parts) > 1:
            # The adjacent pair with the lowest merge rank is merged everywhere it occurs.
            best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        self._cache[word] = ids
        return ids

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Return ``[BOS, ...token ids, EOS]`` for ``text`` (no padding).

        Raises ``VocabularyError`` if ``text`` is not a str, is empty after cleaning, or (when
        ``max_length`` is given) needs more than ``max_length`` tokens including BOS/EOS.
        """
        if not isinstance(text, str):
            raise VocabularyError(f"text to tokenise must be a str, got {type(text).__name__}: {text!r}")
        words = _PRETOKENIZE.findall(self.clean(text))
        if not words:
            raise VocabularyError(f"text to tokenise is empty or whitespace-only: {text!r}")
        ids = [self.bos_token_id]
        for word in words:
            ids.extend(self._bpe(word))
        ids.append(self.eos_token_id)
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


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> CLIPTokenizer:
    """The shared tokenizer on the packaged merges file (loaded once)."""
    return CLIPTokenizer()
