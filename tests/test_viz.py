"""Tests of partclipseg.viz: palette, overlay legend and blending, heatmap, label PNGs, RLE."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partclipseg import viz
from partclipseg.errors import ImageError, PartCLIPSegError
from partclipseg.viz import (colormap, heatmap, label_png_array, legend_entries, mask_to_rle,
                             overlay, palette, read_label_png, write_png)

NAMES = ["cat's head", "cat's body", "cat's leg", "background"]
BG = 3


def _blocks(h: int = 40, w: int = 60) -> np.ndarray:
    """Labels [h, w]: class 1 left half, class 0 top-right quarter, rest background."""
    labels = np.full((h, w), BG, dtype=np.int64)
    labels[:, : w // 2] = 1
    labels[: h // 2, w // 2:] = 0
    return labels


def _grey(h: int = 40, w: int = 60, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


# ------------------------------------------------------------------------ palette
def test_palette_shape_deterministic_and_prefix_stable() -> None:
    p = palette(12)
    assert p.shape == (12, 3) and p.dtype == np.uint8
    np.testing.assert_array_equal(p, palette(12))
    np.testing.assert_array_equal(palette(50)[:12], p)
    assert palette(0).shape == (0, 3)


@pytest.mark.parametrize("n", [2, 10, 20, 40])
def test_palette_distinct_and_not_black_or_white(n: int) -> None:
    p = palette(n).astype(np.float64)
    dist = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    dist[np.eye(n, dtype=bool)] = np.inf
    assert dist.min() > 25
    assert (p.max(axis=1) >= 150).all()  # no near-black
    assert (p.min(axis=1) <= 120).all()  # no near-white / light grey


def test_palette_rejects_negative() -> None:
    with pytest.raises(PartCLIPSegError, match="non-negative"):
        palette(-1)


# ------------------------------------------------------------------------ legend
def test_legend_entries_lists_present_classes_by_area() -> None:
    entries = legend_entries(_blocks(), NAMES, BG)
    assert [(k, name) for k, name, _ in entries] == [(1, "cat's body"), (0, "cat's head")]
    assert [share for *_, share in entries] == pytest.approx([50.0, 25.0])


def test_legend_entries_background_outside_names() -> None:
    labels = np.array([[0, 2], [2, 2]])
    assert legend_entries(labels, ["a", "b"], 2) == [(0, "a", 25.0)]


def test_legend_entries_empty_and_bad_values() -> None:
    assert legend_entries(np.full((5, 5), BG), NAMES, BG) == []
    with pytest.raises(PartCLIPSegError, match="outside"):
        legend_entries(np.array([[0, 7]]), NAMES, BG)
    with pytest.raises(PartCLIPSegError, match="integer"):
        legend_entries(np.zeros((3, 3), dtype=np.float32), NAMES, BG)


# ------------------------------------------------------------------------ overlay
def test_overlay_blends_palette_colour_and_adds_legend_on_the_right() -> None:
    image, labels = _grey(), _blocks()
    out = overlay(image, labels, NAMES, BG, alpha=0.5)
    assert out.mode == "RGB" and out.width > image.shape[1] and out.height >= image.shape[0]
    arr = np.asarray(out)
    colours = palette(len(NAMES)).astype(np.float64)
    for k, (y, x) in [(1, (30, 10)), (0, (5, 45))]:  # interior pixels, away from boundaries
        expected = np.rint(0.5 * 100 + 0.5 * colours[k])
        np.testing.assert_array_equal(arr[y, x], expected)
    np.testing.assert_array_equal(arr[35, 55], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(arr[10, 29], palette(len(NAMES))[1] // 2)  # boundary
    # the image area is not covered by the legend
    assert (arr[:40, :60][labels == BG] == 100).all()


def test_overlay_without_legend_keeps_size_and_title_adds_strip() -> None:
    image = _grey()
    assert overlay(image, _blocks(), NAMES, BG, legend=False).size == (60, 40)
    titled = overlay(image, _blocks(), NAMES, BG, legend=False, title="a cat")
    assert titled.height > 40 and titled.width >= 60


def test_overlay_tiny_huge_and_empty() -> None:
    tiny = overlay(_grey(20, 30), _blocks(20, 30), NAMES, BG, title="tiny image with a long title")
    assert tiny.width > 30 and tiny.height >= 20
    empty = overlay(_grey(20, 30), np.full((20, 30), BG), NAMES, BG)
    assert empty.width > 30  # "no parts found" panel
    big = overlay(_grey(2000, 3000), _blocks(2000, 3000), NAMES, BG)
    assert big.width > 3000 and big.height == 2000


def test_legend_rows_truncate_many_classes_and_empty() -> None:
    names = [f"part {i}" for i in range(50)]
    labels = np.repeat(np.arange(50), np.arange(50) + 1)[None, :]  # class i has i + 1 pixels
    entries = legend_entries(labels, names, background=99)
    rows = viz._legend_rows(entries, palette(50))
    assert len(rows) == viz.LEGEND_MAX_ENTRIES + 1
    assert [text for _, text, _ in rows[:3]] == ["part 49", "part 48", "part 47"]
    np.testing.assert_array_equal(rows[0][0], palette(50)[49])
    assert rows[-1][0] is None and rows[-1][1] == "+20 more"
    assert rows[-1][2] == f"{100 * sum(range(1, 21)) / labels.size:.1f}%"
    assert viz._legend_rows([], palette(3)) == [(None, "no parts found", "")]
    tall = overlay(_grey(1, labels.shape[1]), labels, names, 99)
    assert tall.height > 30 * 12  # 31 rows of >= 12 px text, none cut off


def test_overlay_rejects_bad_input() -> None:
    with pytest.raises(ImageError, match="HWC uint8"):
        overlay(np.zeros((4, 4), np.uint8), np.zeros((4, 4), int), NAMES, BG)
    with pytest.raises(PartCLIPSegError, match="does not match"):
        overlay(_grey(), np.zeros((4, 4), int), NAMES, BG)
    with pytest.raises(PartCLIPSegError, match="alpha"):
        overlay(_grey(), _blocks(), NAMES, BG, alpha=1.5)


# ------------------------------------------------------------------------ heatmap
def test_colormap_extremes() -> None:
    np.testing.assert_array_equal(colormap(np.array([0.0, 0.5, 1.0])),
                                  [[0, 0, 128], [128, 255, 128], [128, 0, 0]])


def test_heatmap_extremes_resize_and_constant() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    heat = np.array([[-3.0, 5.0], [-3.0, 5.0]])  # left low, right high
    out = np.asarray(heatmap(image, heat, alpha=1.0))
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[20, 0], [0, 0, 128])
    np.testing.assert_array_equal(out[20, 59], [128, 0, 0])
    const = np.asarray(heatmap(image, np.full((5, 5), 7.0), alpha=0.5))
    assert (const == [0, 0, 64]).all()
    assert heatmap(image, heat, title="score").height > 40


def test_heatmap_rejects_non_finite() -> None:
    with pytest.raises(PartCLIPSegError, match="finite"):
        heatmap(np.zeros((4, 4, 3), np.uint8), np.array([[np.nan, 1.0]]))


# --------------------------------------------------------------------- label PNGs
def test_label_png_uint8_round_trip(tmp_path: Path) -> None:
    arr = label_png_array(_blocks(), BG, 3)
    assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 1, 255}
    write_png(tmp_path / "l.png", arr)
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), arr)
    assert read_label_png(tmp_path / "l.png").dtype == np.uint8


def test_label_png_uint16_round_trip(tmp_path: Path) -> None:
    labels = np.array([[0, 300, 999], [1000, 1000, 65]])
    arr = label_png_array(labels, 1000, 1000)
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, [[0, 300, 999], [65535, 65535, 65]])
    write_png(tmp_path / "l16.png", arr)
    back = read_label_png(tmp_path / "l16.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, arr)


def test_label_png_array_range_checks() -> None:
    with pytest.raises(PartCLIPSegError, match="outside"):
        label_png_array(np.array([[0, 5]]), 3, 3)
    with pytest.raises(PartCLIPSegError, match="num_classes"):
        label_png_array(np.array([[0]]), 70000, 70000)


def test_write_png_rgb_and_rejects_bad_dtype(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    with Image.open(tmp_path / "rgb.png") as img:
        np.testing.assert_array_equal(np.asarray(img), rgb)
    with pytest.raises(ImageError, match="float32"):
        write_png(tmp_path / "f.png", np.zeros((3, 3), np.float32))
    with pytest.raises(ImageError, match="single-channel"):
        read_label_png(tmp_path / "rgb.png")


def test_write_png_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    write_png(target, np.zeros((3, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    before = target.read_bytes()

    def failing_save(self: Image.Image, fp, *args, **kwargs) -> None:
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(target, np.ones((3, 3), np.uint8))
    with pytest.raises(OSError, match="disk full"):
        write_png(tmp_path / "new.png", np.ones((3, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert target.read_bytes() == before


# -------------------------------------------------------------------------- COCO
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools.decode
def test_mask_to_rle_round_trip() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    mask = np.zeros((13, 17), dtype=bool)
    mask[2:9, 3:11] = True
    mask[10, 16] = True
    rle = mask_to_rle(mask)
    assert rle["size"] == [13, 17] and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))


def test_mask_to_rle_without_pycocotools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(PartCLIPSegError, match=r"pip install 'partclipseg\[coco\]'"):
        mask_to_rle(np.zeros((2, 2), bool))
