"""The font that draws legends and titles: Pillow's built-in font where it has every glyph, else a
font of the system that does.

Pillow's built-in font covers ASCII only: "café's table", "Hund's Kopf" with an umlaut, Cyrillic or
CJK class names came out as boxes. :func:`text_font` keeps the built-in font for ASCII text and
otherwise takes the first font of ``$PARTCLIPSEG_FONT`` and :data:`SYSTEM_FONTS` that draws every
character of the texts (DejaVu Sans for accents, Greek and Cyrillic; Noto Sans CJK, Arial Unicode,
PingFang or Microsoft YaHei for CJK). When no font found draws them all, the one that draws most is
used and a warning names the characters left as boxes. ``$PARTCLIPSEG_FONT`` (a .ttf/.otf/.ttc
file), when set, draws all text.
"""
from __future__ import annotations

import functools
import os
import threading
import unicodedata
import warnings
import weakref
from typing import Iterable, Union

from PIL import ImageFont

from .errors import PartCLIPSegError

Font = Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]

#: environment variable naming a font file that draws all legend and title text
FONT_ENV = "PARTCLIPSEG_FONT"

#: fonts looked for, in this order, when the built-in font lacks a character (Linux, macOS, Windows)
SYSTEM_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/arial.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/malgun.ttf",
)

# characters that draw nothing of their own (spaces, combining marks, controls, format characters)
_NO_GLYPH_CATEGORIES = {"Zs", "Zl", "Zp", "Mn", "Me", "Cc", "Cf"}
_LOCAL = threading.local()  # a FreeType face is not shared between the threads that render output sets


def text_font(size: int, texts: Iterable[str] = ()) -> Font:
    """A font of ``size`` px that draws every character of ``texts`` (see the module docstring)."""
    chars = frozenset(ch for text in texts if text for ch in str(text)
                      if unicodedata.category(ch) not in _NO_GLYPH_CATEGORIES)
    override = os.environ.get(FONT_ENV)
    if override:
        return _load(override, size, from_env=True)
    builtin = _builtin(size)
    missing = {ch for ch in chars if not draws(builtin, ch)}
    if not missing:
        return builtin
    best, best_missing = builtin, missing
    for path in SYSTEM_FONTS:
        if not os.path.isfile(path):
            continue
        font = _load(path, size)
        if font is None:
            continue
        lacks = {ch for ch in missing if not draws(font, ch)}
        if len(lacks) < len(best_missing):
            best, best_missing = font, lacks
        if not lacks:
            return font
    _warn_missing(frozenset(best_missing))
    return best


def draws(font: Font, ch: str) -> bool:
    """Whether ``font`` has a glyph for ``ch`` (its mask differs from the missing-glyph box). Pillow's
    bitmap font (Pillow < 10.1, or no FreeType) draws printable ASCII only."""
    if not isinstance(font, ImageFont.FreeTypeFont):
        return ch.isascii() and ch.isprintable()
    try:
        return _glyph(font, ch) != _glyph(font, "\uffff")  # U+FFFF is a noncharacter: every font's box
    except (UnicodeError, ValueError, OSError):
        return False


def check_font_file() -> None:
    """A one-line ``PartCLIPSegError`` now when ``$PARTCLIPSEG_FONT`` names no loadable font."""
    if os.environ.get(FONT_ENV):
        text_font(12)


def _glyph(font: Font, ch: str) -> tuple:
    cache = _LOCAL.__dict__.setdefault("glyphs", weakref.WeakKeyDictionary())  # per font, freed with it
    per_font = cache.setdefault(font, {})
    if ch not in per_font:
        mask = font.getmask(ch)
        per_font[ch] = (mask.size, bytes(mask))
    return per_font[ch]


def _builtin(size: int) -> Font:
    fonts = _LOCAL.__dict__.setdefault("builtin", {})
    if size not in fonts:
        try:
            fonts[size] = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
            fonts[size] = ImageFont.load_default()
    return fonts[size]


def _load(path: str, size: int, from_env: bool = False) -> Font | None:
    fonts = _LOCAL.__dict__.setdefault("files", {})
    key = (path, size)
    if key not in fonts:
        try:
            fonts[key] = ImageFont.truetype(path, size)
        except (OSError, ValueError) as exc:
            if from_env:
                raise PartCLIPSegError(f"{FONT_ENV}={path}: not a font file Pillow can load ({exc})") from None
            fonts[key] = None
    return fonts[key]


@functools.lru_cache(maxsize=64)
def _warn_missing(chars: frozenset) -> None:  # once per set of characters
    shown = "".join(sorted(chars))[:20]
    warnings.warn(f"no font found here draws {shown!r} (drawn as boxes); set {FONT_ENV} to a font file that "
                  f"has them", stacklevel=3)
