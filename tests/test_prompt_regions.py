"""Prompt regions (issue 12 item 4): a box or point gives the chosen object's parts over a region, never a
single pixel; the rule used is named in the result; Oracle-Obj without a mask says what it does; the
legend drops ~0-area ~0-score classes. Pure functions on hand-built score maps, then the Predictor/CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from partclipseg.cli import main
from partclipseg.config import get_config
from partclipseg.model import build_model
from partclipseg.postprocess import (REGION_RULES, TINY_MIN_PIXELS, box_region, connected_component, nearest_true,
                                     otsu_threshold, point_region, tiny_area)
from partclipseg.predictor import Predictor
from partclipseg.result import REGION_RULE_NOTES
from partclipseg.viz import LEGEND_MIN_AREA_PERCENT, LEGEND_MIN_SCORE, legend_entries

BG = 3  # three objects, index 3 = background in the object-label maps below


def _blob_scores(size=(60, 80), blob=(slice(20, 40), slice(30, 60)), high=0.6, low=0.02, seed=0):
    """[H, W] sigmoid-like scores: ``high`` (+ noise) on a blob, ``low`` (+ noise) elsewhere."""
    g = torch.Generator().manual_seed(seed)
    score = low + 0.01 * torch.rand(size, generator=g)
    score[blob] = high + 0.05 * torch.rand(size, generator=g)[blob]
    return score


# ---------------------------------------------------------------------------- pure functions
def test_tiny_area_is_a_share_with_a_floor_and_a_ceiling():
    assert tiny_area(100_000, 0.005) == 500
    assert tiny_area(1000, 0.005) == TINY_MIN_PIXELS
    assert tiny_area(10, 0.5) == 10  # never more than the reference itself


def test_otsu_threshold_separates_two_modes_and_handles_constants():
    values = torch.cat([torch.full((900,), 0.01), torch.full((100,), 0.8)]) + 0.001 * torch.rand(1000)
    t = otsu_threshold(values)
    assert 0.02 < t <= 0.8
    assert int((values >= t).sum()) == 100
    assert otsu_threshold(torch.full((50,), 0.3)) == pytest.approx(0.3)
    assert bool((torch.full((50,), 0.3) >= otsu_threshold(torch.full((50,), 0.3))).all())


def test_nearest_true_finds_the_closest_pixel():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0, 9] = mask[6, 2] = True
    assert nearest_true(mask, (8, 1)) == (6, 2)
    assert nearest_true(mask, (1, 8)) == (0, 9)


def test_point_region_uses_the_object_head_when_its_region_is_large():
    labels = torch.full((60, 80), BG)
    labels[10:50, 10:70] = 1
    region, rule = point_region(labels, _blob_scores(), 1, (30, 40))
    assert rule == "object-head"
    assert int(region.sum()) == 40 * 60 and bool(region[10:50, 10:70].all())


def test_point_region_grows_from_the_score_when_the_head_says_background():
    labels = torch.full((60, 80), BG)  # the object head picks background everywhere: the old single pixel
    score = _blob_scores()
    region, rule = point_region(labels, score, 0, (30, 45))
    assert rule == "object-score"
    assert torch.equal(region, score >= otsu_threshold(score))  # one blob: the blob, exactly
    assert int(region.sum()) == 20 * 30


def test_point_region_snaps_to_the_nearest_high_area_and_keeps_its_component_only():
    labels = torch.full((60, 80), BG)
    score = _blob_scores()
    score[45:55, 5:15] = 0.65  # a second blob, far from the point
    region, rule = point_region(labels, score, 0, (30, 25))  # just left of the first blob, below threshold
    assert rule == "object-score"
    assert bool(region[20:40, 30:60].all()) and not bool(region[45:55, 5:15].any())


def test_point_region_keeps_a_small_object_the_model_found():
    labels = torch.full((200, 200), BG)
    labels[50:60, 50:60] = 1  # 100 px: under the 0.5 % (200 px) of the image, but a real find
    score = torch.zeros(200, 200)
    score[50:60, 50:60] = 0.8
    score[150:190, 10:40] = 0.9  # a larger high area elsewhere, not connected to the point
    region, rule = point_region(labels, score, 1, (55, 55))
    assert rule == "object-head" and torch.equal(region, labels == 1)


def test_point_region_falls_back_to_a_window_when_the_score_has_no_region_either():
    labels = torch.full((60, 80), BG)
    score = torch.zeros(60, 80)
    score[5, 5] = 0.9  # a lone speck: Otsu keeps 1 pixel
    region, rule = point_region(labels, score, 0, (30, 40))
    assert rule == "point-window"
    assert int(region.sum()) >= tiny_area(60 * 80, 0.005) * 0.8 and bool(region[30, 40])
    assert not bool(region[5, 5])


def test_box_region_rules_in_order():
    score = _blob_scores()
    box = (25, 15, 65, 45)  # x0, y0, x1, y1 around the blob
    labels = torch.full((60, 80), BG)
    labels[15:45, 25:65] = 2
    region, rule = box_region(labels, score, 2, box)
    assert rule == "object-head" and int(region.sum()) == 30 * 40
    region, rule = box_region(torch.full((60, 80), BG), score, 2, box)
    assert rule == "object-score"
    assert bool(region[20:40, 30:60].all()) and int(region.sum()) == 20 * 30
    region, rule = box_region(torch.full((60, 80), BG), torch.zeros(60, 80), 2, box)
    assert rule == "object-score" and int(region.sum()) == 30 * 40  # a flat score: all of it is "high"
    speck = torch.zeros(60, 80)
    speck[16, 26] = 1.0
    region, rule = box_region(torch.full((60, 80), BG), speck, 2, box)
    assert rule == "box" and int(region.sum()) == 30 * 40 and not bool(region[:15].any())


def test_every_rule_that_needs_a_note_has_one():
    assert set(REGION_RULE_NOTES) <= set(REGION_RULES) | {"whole-image", "mask"}
    assert {"whole-image", "object-score", "box", "point-window"} <= set(REGION_RULE_NOTES)


def test_legend_drops_classes_with_both_tiny_area_and_tiny_score():
    labels = np.full((100, 100), 4)
    labels[:50] = 0                 # large, confident
    labels[50:60] = 1               # large, ~0 score: kept (it is painted)
    labels[99, :5] = 2              # 5 px = 0.05 %, confident: kept
    labels[98, :5] = 3              # 5 px, ~0 score: dropped
    names = ["a", "b", "c", "d"]
    scores = [0.9, 0.001, 0.7, LEGEND_MIN_SCORE / 2]
    assert 5 / 100 < LEGEND_MIN_AREA_PERCENT
    assert [e[1] for e in legend_entries(labels, names, 4, scores)] == ["a", "b", "c"]
    assert [e[1] for e in legend_entries(labels, names, 4)] == ["a", "b", "c", "d"]  # no scores: all listed


# ---------------------------------------------------------------------------- Predictor and CLI
VOCAB = ["dog's head", "dog's leg", "dog's tail", "cat's head", "cat's leg", "car's wheel", "car's window"]


@pytest.fixture()
def predictor():
    torch.manual_seed(0)
    predictor = Predictor(build_model(get_config("tiny-fast")))
    predictor.set_image(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8))
    return predictor


def _background_everywhere(predictor, monkeypatch):
    """Make the object head pick background at every pixel (the failure seen with the toy model)."""
    real = predictor.model.decode

    def decode(*args, **kwargs):
        out = real(*args, **kwargs)
        out.logits[:, -1] = out.logits.max() + 10.0  # background wins the object argmax
        return out

    monkeypatch.setattr(predictor.model, "decode", decode)
    predictor._decoded = None


def test_point_and_box_never_give_a_single_pixel_when_the_head_says_background(predictor, monkeypatch):
    _background_everywhere(predictor, monkeypatch)
    bg = len(VOCAB)
    p = predictor.predict(VOCAB, point=(30, 20))
    assert p.region_rule in ("object-score", "point-window")
    area = int((p.part_labels != bg).sum())
    assert area >= tiny_area(45 * 70, 0.005) and p.part_labels[20, 30] != bg
    assert {p.vocabulary.object_of(c) for c in np.unique(p.part_labels) if c != bg} == {p.selected_object}
    assert p.note and p.selected_object in p.note
    info = p.to_json()
    assert info["region_rule"] == p.region_rule and info["note"] == p.note
    b = predictor.predict(VOCAB, box=(5, 5, 40, 30))
    assert b.region_rule in ("object-score", "box")
    inside = int((b.part_labels[5:30, 5:40] != bg).sum())
    assert inside >= tiny_area(25 * 35, 0.10) and (b.part_labels[30:] == bg).all()


def test_region_rules_of_the_other_modes(predictor):
    assert predictor.predict(VOCAB).region_rule is None and predictor.predict(VOCAB).note is None
    oracle = predictor.predict(VOCAB, protocol="oracle-obj", object_name="dog")
    assert oracle.region_rule == "whole-image" and "every pixel gets a part of dog" in oracle.note
    assert (oracle.part_labels != len(VOCAB)).all()  # the official meaning is kept
    mask = np.zeros((45, 70), dtype=bool)
    mask[10:30, 20:50] = True
    assert predictor.predict(VOCAB, object_mask=mask, object_name="dog").region_rule == "mask"
    assert predictor.predict(VOCAB, object_mask=mask).region_rule == "mask"
    point = predictor.predict(VOCAB, point=(30, 20))
    assert point.region_rule in REGION_RULES and int((point.part_labels != len(VOCAB)).sum()) > 1


def test_cli_says_what_oracle_obj_without_a_mask_does(capsys, model_dir, tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    code = main(["segment", str(tmp_path / "a.png"), "--model", str(model_dir), "--parts", "dog's head, dog's leg, cat's head",
                 "--object", "dog", "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert err.count("note: Oracle-Obj without a mask: every pixel gets a part of dog") == 1
    assert json.loads((tmp_path / "o" / "a.png.json").read_text())["region_rule"] == "whole-image"


def test_region_rules_of_a_model_without_an_object_head():
    torch.manual_seed(0)
    baseline = Predictor(build_model(get_config("tiny-fast", architecture="clipseg")))
    baseline.set_image(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    assert baseline.predict(VOCAB).region_rule is None
    oracle = baseline.predict(VOCAB, protocol="oracle-obj", object_name="cat")
    assert oracle.region_rule == "whole-image" and "part of cat" in oracle.note
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 5:20] = True
    assert baseline.predict(VOCAB, object_name="cat", object_mask=mask).region_rule == "mask"


def _flood_fill(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """Reference: the 8-connected component of ``mask`` at ``seed`` by a plain pixel queue."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[seed] = True
    if not mask[seed]:
        return out
    queue = [seed]
    while queue:
        r, c = queue.pop()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not out[rr, cc]:
                    out[rr, cc] = True
                    queue.append((rr, cc))
    return out


@pytest.mark.parametrize("density", [0.3, 0.45, 0.6, 0.9])
def test_connected_component_equals_a_pixel_flood_fill(density):
    rng = np.random.default_rng(int(density * 100))
    for shape in [(1, 1), (1, 17), (23, 1), (31, 47), (64, 64)]:
        mask = rng.random(shape) < density
        for _ in range(12):
            seed = (int(rng.integers(shape[0])), int(rng.integers(shape[1])))
            got = connected_component(torch.from_numpy(mask), seed)
            assert got.dtype == torch.bool and tuple(got.shape) == shape
            np.testing.assert_array_equal(got.numpy(), _flood_fill(mask, seed), err_msg=f"{shape} {seed}")


def test_connected_component_joins_diagonals_and_follows_a_spiral():
    diagonal = torch.eye(6, dtype=torch.bool)
    assert bool(connected_component(diagonal, (0, 0)).equal(diagonal))  # corner-to-corner steps join
    anti = torch.zeros(5, 5, dtype=torch.bool)
    anti[[0, 1, 2], [2, 1, 0]] = True
    anti[4, 4] = True
    got = connected_component(anti, (2, 0))
    assert int(got.sum()) == 3 and not bool(got[4, 4])
    spiral = np.zeros((41, 41), dtype=bool)  # a one-pixel corridor winding inwards: a deep component
    top, left, bottom, right = 0, 0, 40, 40
    while top <= bottom and left <= right:
        spiral[top, left:right + 1] = True
        spiral[top:bottom + 1, right] = True
        spiral[bottom, left:right + 1] = True
        spiral[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    got = connected_component(torch.from_numpy(spiral), (0, 0))
    np.testing.assert_array_equal(got.numpy(), _flood_fill(spiral, (0, 0)))
    assert not bool(connected_component(torch.from_numpy(spiral), (1, 1))[0, 0])  # a gap pixel: itself only
