"""Legend and title text in any script: Pillow's built-in font draws ASCII only, so accented, Greek,
Cyrillic or CJK class names take a system font that has them (``partclipseg.fonts``)."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import ImageFont

from partclipseg import fonts, viz
from partclipseg.errors import PartCLIPSegError

DEJAVU = next((p for p in fonts.SYSTEM_FONTS if "DejaVuSans.ttf" in p and os.path.isfile(p)), None)
needs_dejavu = pytest.mark.skipif(DEJAVU is None, reason="DejaVu Sans is not installed here")


@pytest.fixture(autouse=True)
def _no_env_font(monkeypatch):
    monkeypatch.delenv(fonts.FONT_ENV, raising=False)


def _builtin(size: int = 14):
    return ImageFont.load_default(size=size)


def test_builtin_font_lacks_accents_so_the_check_is_needed():
    font = _builtin()
    assert fonts.draws(font, "a") and fonts.draws(font, "'")
    assert not fonts.draws(font, "é") and not fonts.draws(font, "狗")


def test_ascii_keeps_the_builtin_font():
    font = fonts.text_font(14, ["dog's head", "+3 more", "12.5%"])
    assert font.path is not None and not isinstance(font.path, str)  # the built-in face (read from memory)
    assert all(fonts.draws(font, ch) for ch in "dog's head")


@needs_dejavu
def test_accents_greek_cyrillic_take_a_font_that_draws_them():
    text = "café's table, Hund's Kopf ü, собака, σκύλος"
    font = fonts.text_font(14, [text])
    assert isinstance(font, ImageFont.FreeTypeFont) and font.path == DEJAVU
    assert all(fonts.draws(font, ch) for ch in text if not ch.isspace())


@needs_dejavu
def test_overlay_legend_draws_the_accent_not_a_box(monkeypatch):
    image = np.full((120, 160, 3), 200, np.uint8)
    labels = np.full((120, 160), 2, np.int64)
    labels[20:60, 20:60], labels[70:110, 80:150] = 0, 1
    names = ["cafe", "caf\u00e9"]
    font, size = viz._font(120, names)  # what overlay picks for this legend
    assert fonts.draws(font, "\u00e9") and font.path == DEJAVU and size == 12
    drawn = np.asarray(viz.overlay(image, labels, names, 2))
    monkeypatch.setattr(fonts, "SYSTEM_FONTS", ())  # the old behaviour: the built-in font, "é" as a box
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boxed = np.asarray(viz.overlay(image, labels, names, 2))
    assert drawn.shape != boxed.shape or not np.array_equal(drawn, boxed)
    assert np.array_equal(drawn[:, :160], boxed[:, :160])  # the picture itself is the same


def test_no_font_draws_it_warns_once_and_names_the_characters(monkeypatch):
    monkeypatch.setattr(fonts, "SYSTEM_FONTS", ())
    fonts._warn_missing.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        font = fonts.text_font(14, ["狗的头"])
        fonts.text_font(14, ["狗的头"])
    assert isinstance(font, ImageFont.FreeTypeFont)  # drawn with the built-in font, as boxes
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "狗" in messages[0] and fonts.FONT_ENV in messages[0]


@needs_dejavu
def test_env_font_draws_all_text(monkeypatch):
    monkeypatch.setenv(fonts.FONT_ENV, DEJAVU)
    assert fonts.text_font(14, ["dog's head"]).path == DEJAVU


def test_env_font_that_cannot_load_is_one_line(monkeypatch, tmp_path):
    bad = tmp_path / "not_a_font.ttf"
    bad.write_text("hello")
    monkeypatch.setenv(fonts.FONT_ENV, str(bad))
    with pytest.raises(PartCLIPSegError, match=f"{fonts.FONT_ENV}=.*not_a_font.ttf: not a font file"):
        fonts.text_font(15, ["x"])


def test_bitmap_builtin_font_draws_ascii_and_refuses_the_rest(monkeypatch):
    """Pillow < 10.1 (or no FreeType): the built-in font is a fixed bitmap font; legends still draw."""
    bitmap = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else None
    if bitmap is None:
        pytest.skip("this Pillow has no separate bitmap default font")
    assert fonts.draws(bitmap, "a") and not fonts.draws(bitmap, "\u00e9") and not fonts.draws(bitmap, "\u72d7")
    original = ImageFont.load_default

    def old_pillow(size=None):
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap

    monkeypatch.setattr(ImageFont, "load_default", old_pillow)
    monkeypatch.setattr(fonts, "_LOCAL", type(fonts._LOCAL)())  # no cached built-in fonts
    image = np.full((60, 80, 3), 200, np.uint8)
    labels = np.zeros((60, 80), np.int64)
    out = viz.overlay(image, labels, ["dog's head"], 1, title="a title")  # used to raise UnicodeEncodeError
    assert out.width > 80
    monkeypatch.setattr(ImageFont, "load_default", original)


def test_bad_env_font_fails_the_segment_job_up_front(monkeypatch, tmp_path, capsys):
    from partclipseg.cli import main

    bad = tmp_path / "x.ttf"
    bad.write_text("no font")
    monkeypatch.setenv(fonts.FONT_ENV, str(bad))
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(image)
    code = main(["segment", str(image), "--vocab", "toy_world", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and fonts.FONT_ENV in err and not (tmp_path / "o").exists()
