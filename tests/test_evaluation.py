"""Metric side of the official PartCLIPSegEvaluator (SPEC §5), checked on hand-computed examples."""
from __future__ import annotations

import json

import numpy as np
import pytest

from partclipseg.evaluation import (ConfusionAccumulator, compute_metrics, format_table, from_sparse,
                                    sample_confusion, to_sparse)

K = 3
NAMES = ["cat's head", "cat's leg", "dog's head"]
SEEN = [0, 2]  # class 1 is unseen; class 2 (seen) never has GT

# -1 = ignore. Class 2 never occurs in the GT.
GT = np.array([[0, 0, 1, -1],
               [0, 1, 1, -1],
               [-1, -1, 0, 1]])
# Pred-All prediction: 3 = background. Class 2 is predicted on one labelled pixel (1,2) and on
# ignored pixels; background is predicted on the labelled pixels (1,0) and (2,3).
PRED_ALL = np.array([[0, 1, 1, 2],
                     [3, 1, 2, 3],
                     [2, 3, 0, 3]])
# labelled pixels (g -> p): (0,0) 0->0, (0,1) 0->1, (0,2) 1->1, (1,0) 0->3, (1,1) 1->1, (1,2) 1->2,
# (2,2) 0->0, (2,3) 1->3
M_ALL = np.array([[2, 0, 0, 0],
                  [1, 2, 0, 0],
                  [0, 1, 0, 0],
                  [1, 1, 0, 0]])
# Oracle-Obj prediction (never background on labelled pixels): (1,0) 0->1, (2,3) 1->0.
PRED_ORACLE = np.array([[0, 1, 1, 3],
                        [1, 1, 2, 0],
                        [2, 3, 0, 0]])
M_ORACLE = np.array([[2, 1, 0, 0],
                     [2, 2, 0, 0],
                     [0, 1, 0, 0],
                     [0, 0, 0, 0]])


def official_matrix(pred, gt, k):
    """The official accumulation: ignore -> K in gt, pred := K there, bincount over all pixels."""
    g = np.where(gt < 0, k, gt)
    p = np.where(g == k, k, pred)
    return np.bincount(((k + 1) * p + g).ravel(), minlength=(k + 1) ** 2).reshape(k + 1, k + 1)


# ----------------------------------------------------------------------------- sample_confusion
def test_sample_confusion_hand_computed():
    m = sample_confusion(PRED_ALL, GT, K)
    assert m.dtype == np.int64 and m.shape == (4, 4)
    np.testing.assert_array_equal(m, M_ALL)
    np.testing.assert_array_equal(sample_confusion(PRED_ORACLE, GT, K), M_ORACLE)
    assert m.sum() == 8  # labelled pixels only; the 4 ignored pixels are not counted


def test_sample_confusion_matches_official_except_ignored_corner():
    off = official_matrix(PRED_ALL, GT, K)
    ours = sample_confusion(PRED_ALL, GT, K)
    assert off[K, K] == 4  # the official matrix parks the 4 ignored pixels in M[K, K]
    diff = off - ours
    diff[K, K] = 0
    assert not diff.any()
    for proto in ("pred-all", "oracle-obj"):
        assert compute_metrics(off, SEEN, NAMES, proto) == compute_metrics(ours, SEEN, NAMES, proto)


def test_sample_confusion_all_ignored_and_dtypes():
    gt = np.full((2, 2), -1, dtype=np.int16)
    assert not sample_confusion(np.full((2, 2), 3, dtype=np.uint8), gt, K).any()
    m = sample_confusion(PRED_ALL.astype(np.uint8), GT.astype(np.int8), K)
    np.testing.assert_array_equal(m, M_ALL)


def test_sample_confusion_large_random_matches_loop():
    rng = np.random.default_rng(0)
    k = 116
    pred = rng.integers(0, k + 1, size=(375, 500))
    gt = rng.integers(-1, k, size=(375, 500))
    ref = np.zeros((k + 1, k + 1), dtype=np.int64)
    keep = gt >= 0
    np.add.at(ref, (pred[keep], gt[keep]), 1)
    np.testing.assert_array_equal(sample_confusion(pred, gt, k), ref)


@pytest.mark.parametrize("pred, gt, match", [
    (np.zeros((2, 3), int), np.zeros((3, 2), int), "same"),
    (np.zeros((2, 2, 1), int), np.zeros((2, 2, 1), int), "2-D"),
    (np.zeros((2, 2), float), np.zeros((2, 2), int), "integer"),
    (np.zeros((2, 2), int), np.zeros((2, 2), float), "integer"),
    (np.array([[0, 4]]), np.array([[0, 1]]), r"pred values must lie in 0\.\.3"),
    (np.array([[0, -1]]), np.array([[0, 1]]), "pred values"),
    (np.array([[0, 1]]), np.array([[0, 3]]), r"gt values must lie in 0\.\.2"),
    (np.array([[0, 1]]), np.array([[0, -2]]), "gt values"),
])
def test_sample_confusion_errors(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        sample_confusion(pred, gt, K)


def test_sample_confusion_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        sample_confusion(PRED_ALL, GT, 0)


# ----------------------------------------------------------------------------- sparse / accumulator
def test_sparse_round_trip():
    d = to_sparse(M_ALL)
    assert d == {"p": [0, 1, 1, 2, 3, 3], "g": [0, 0, 1, 1, 0, 1], "n": [2, 1, 2, 1, 1, 1]}
    json.dumps(d)
    back = from_sparse({"sample_id": "x", **d}, K)  # extra keys are ignored
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, M_ALL)
    np.testing.assert_array_equal(from_sparse(to_sparse(np.zeros((4, 4), int)), K), np.zeros((4, 4)))
    # repeated entries add up
    np.testing.assert_array_equal(from_sparse({"p": [1, 1], "g": [0, 0], "n": [2, 3]}, K)[1, 0], 5)


@pytest.mark.parametrize("data, match", [
    ({"p": [0], "g": [0]}, "'n'"),
    ({"p": [0, 1], "g": [0], "n": [1]}, "length"),
    ({"p": [4], "g": [0], "n": [1]}, "out of"),
    ({"p": [0], "g": [-1], "n": [1]}, "out of"),
    ({"p": [0], "g": [0], "n": [-1]}, "negative"),
])
def test_from_sparse_errors(data, match):
    with pytest.raises(ValueError, match=match):
        from_sparse(data, K)


def test_accumulator():
    acc = ConfusionAccumulator(K)
    assert acc.count == 0 and acc.matrix.shape == (4, 4) and not acc.matrix.any()
    acc.add(sample_confusion(PRED_ALL, GT, K))
    acc.add(M_ORACLE)
    assert acc.count == 2
    np.testing.assert_array_equal(acc.matrix, M_ALL + M_ORACLE)
    with pytest.raises(ValueError, match="confusion matrix"):
        acc.add(np.zeros((3, 3), int))


# ----------------------------------------------------------------------------- metrics
def by_name(res):
    return {c["name"]: c for c in res["per_class"]}


def test_pred_all_metrics_hand_computed():
    res = compute_metrics(M_ALL, SEEN, NAMES, "pred-all")
    json.dumps(res, allow_nan=False)
    # TP = [2, 2, 0], GT = [4, 4, 0] (background predictions are FN), PR = [2, 3, 1], PR_bg = 2
    head, leg, dog = (by_name(res)[n] for n in NAMES)
    assert (head["gt_pixels"], head["pred_pixels"], leg["gt_pixels"], leg["pred_pixels"]) == (4, 2, 4, 3)
    assert (dog["gt_pixels"], dog["pred_pixels"]) == (0, 1)  # predicted only: an FP of class 2
    assert head["iou"] == pytest.approx(50.0)  # 2 / (4 + 2 - 2)
    assert leg["iou"] == pytest.approx(40.0)  # 2 / (4 + 3 - 2)
    assert dog["iou"] is None and dog["acc"] is None and dog["recall"] is None
    assert head["recall"] == pytest.approx(50.0) and head["acc"] == pytest.approx(50.0)
    assert leg["recall"] == pytest.approx(50.0)
    assert [c["seen"] for c in res["per_class"]] == [True, False, True]
    assert [c["id"] for c in res["per_class"]] == [0, 1, 2]
    # seen = {0, 2}, but class 2 has no GT -> only class 0
    assert res["mIoU-base"] == pytest.approx(50.0)
    assert res["mIoU-unbase"] == pytest.approx(40.0)
    assert res["h-IoU"] == pytest.approx(2 * 50 * 40 / 90)
    assert res["classes_with_gt"] == {"base": 1, "unbase": 1}
    # overall mIoU: nanmean over [0.5, 0.4, 0 (class 2 predicted, no GT), 0 (background)]
    assert res["mIoU"] == pytest.approx(22.5)
    assert res["background"] == {"pred_pixels": 2, "iou": 0.0}
    assert res["fwIoU"] == pytest.approx(45.0)  # (0.5*4 + 0.4*4) / 8
    assert res["pACC"] == pytest.approx(50.0)  # 4 correct of 8 labelled
    assert res["mACC"] == pytest.approx(50.0) and res["mRecall"] == pytest.approx(50.0)
    assert res["mRecall-base"] == pytest.approx(50.0) and res["mRecall-unbase"] == pytest.approx(50.0)
    assert res["h-Recall"] == pytest.approx(50.0)
    assert res["pAcc-base"] == pytest.approx(50.0) and res["pAcc-unbase"] == pytest.approx(50.0)
    assert res["protocol"] == "pred-all" and res["num_classes"] == 3


def test_oracle_metrics_hand_computed():
    res = compute_metrics(M_ORACLE, SEEN, NAMES, "oracle-obj")
    json.dumps(res, allow_nan=False)
    # TP = [2, 2, 0], GT = [4, 4, 0], PR = [3, 4, 1]
    head, leg, dog = (by_name(res)[n] for n in NAMES)
    assert head["iou"] == pytest.approx(40.0)  # 2 / (4 + 3 - 2)
    assert leg["iou"] == pytest.approx(100 / 3)  # 2 / (4 + 4 - 2)
    assert dog["iou"] is None and dog["pred_pixels"] == 1
    assert res["mIoU-base"] == pytest.approx(40.0)
    assert res["mIoU-unbase"] == pytest.approx(100 / 3)
    assert res["h-IoU"] == pytest.approx(8000 / 220)
    assert res["mIoU"] == pytest.approx((40 + 100 / 3) / 2)  # Oracle: only classes with GT
    assert res["fwIoU"] == pytest.approx((0.4 * 4 + 4 / 3) / 8 * 100)
    assert res["pACC"] == pytest.approx(50.0) and res["mACC"] == pytest.approx(50.0)
    assert "background" not in res


def test_oracle_ignores_background_row_pred_all_counts_it():
    # The Pred-All matrix read as Oracle: row K is sliced away, so the two background predictions
    # vanish (GT = [3, 3]) instead of being false negatives (GT = [4, 4]).
    res = compute_metrics(M_ALL, SEEN, NAMES, "oracle-obj")
    head, leg, _ = (by_name(res)[n] for n in NAMES)
    assert (head["gt_pixels"], leg["gt_pixels"]) == (3, 3)
    assert head["iou"] == pytest.approx(200 / 3)  # 2 / (3 + 2 - 2)
    assert leg["iou"] == pytest.approx(50.0)  # 2 / (3 + 3 - 2)


def test_pred_all_column_k_is_ignored():
    m = M_ALL.copy()
    m[0, K] = 7  # a prediction on a GT-background pixel: never penalised
    m[K, K] = 9
    assert compute_metrics(m, SEEN, NAMES, "pred-all") == compute_metrics(M_ALL, SEEN, NAMES, "pred-all")
    assert compute_metrics(m, SEEN, NAMES, "oracle-obj") == compute_metrics(M_ALL, SEEN, NAMES, "oracle-obj")


def test_empty_class_not_predicted_is_excluded_everywhere():
    # 4 classes; class 3 has neither GT nor predictions; no background prediction.
    names = NAMES + ["dog's leg"]
    m = np.zeros((5, 5), int)
    m[0, 0], m[1, 1], m[0, 1] = 3, 1, 1  # IoU0 = 3/4, IoU1 = 1/2
    res = compute_metrics(m, [0, 3], names, "pred-all")
    assert res["mIoU"] == pytest.approx(62.5)  # NaN entries (class 2, 3, background) skipped
    assert res["background"] == {"pred_pixels": 0, "iou": None}
    assert res["mIoU-base"] == pytest.approx(75.0) and res["mIoU-unbase"] == pytest.approx(50.0)
    assert by_name(res)["dog's leg"]["iou"] is None


def test_harmonic_edge_cases():
    m = np.zeros((4, 4), int)
    m[0, 0] = 5  # class 0 perfect
    m[2, 1] = 5  # class 1 never right (predicted as class 2, which has no GT)
    res = compute_metrics(m, [0], NAMES, "oracle-obj")
    assert res["mIoU-base"] == pytest.approx(100.0) and res["mIoU-unbase"] == 0.0
    assert res["h-IoU"] == 0.0 and res["h-Recall"] == 0.0
    # both sides 0 -> 0 (defined; the official 0/0 gives NaN)
    m2 = np.zeros((4, 4), int)
    m2[1, 0] = m2[0, 1] = 2
    assert compute_metrics(m2, [0], NAMES, "oracle-obj")["h-IoU"] == 0.0
    # no unseen class with GT -> unseen and harmonic undefined
    res = compute_metrics(m, [0, 1, 2], NAMES, "pred-all")
    assert res["mIoU-unbase"] is None and res["h-IoU"] is None and res["pAcc-unbase"] is None
    assert res["mIoU-base"] == pytest.approx(50.0)  # mean(1, 0); class 2 has no GT
    # empty matrix: everything undefined, still JSON-clean
    res = compute_metrics(np.zeros((4, 4), int), SEEN, NAMES, "pred-all")
    assert all(res[k] is None for k in ("mIoU", "fwIoU", "mACC", "pACC", "mIoU-base", "h-IoU"))
    json.dumps(res, allow_nan=False)


def test_metrics_from_accumulated_samples():
    acc = ConfusionAccumulator(K)
    acc.add(sample_confusion(PRED_ALL, GT, K))
    acc.add(sample_confusion(PRED_ALL, GT, K))
    res = compute_metrics(acc.matrix, SEEN, NAMES, "pred-all")
    assert res["mIoU-base"] == pytest.approx(50.0) and res["mIoU-unbase"] == pytest.approx(40.0)
    assert by_name(res)["cat's head"]["gt_pixels"] == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"protocol": "pred-obj"}, "protocol"),
    ({"matrix": np.zeros((3, 3), int)}, r"\[4, 4\]"),
    ({"seen": [3]}, "seen index"),
    ({"seen": [-1]}, "seen index"),
    ({"matrix": -np.ones((4, 4), int)}, "non-negative"),
    ({"class_names": []}, "empty"),
])
def test_compute_metrics_errors(kwargs, match):
    args = {"matrix": M_ALL, "seen": SEEN, "class_names": NAMES, "protocol": "pred-all", **kwargs}
    with pytest.raises(ValueError, match=match):
        compute_metrics(**args)


def test_format_table():
    results = {"oracle-obj": compute_metrics(M_ORACLE, SEEN, NAMES, "oracle-obj"),
               "pred-all": compute_metrics(M_ALL, SEEN, NAMES, "pred-all")}
    assert format_table(results) == (
        "| Protocol | Seen | Unseen | Harmonic |\n"
        "|---|---:|---:|---:|\n"
        "| Oracle-Obj | 40.0 | 33.3 | 36.4 |\n"
        "| Pred-All | 50.0 | 40.0 | 44.4 |")
    assert format_table({"pred-all": {"mIoU-base": 12.34, "mIoU-unbase": None, "h-IoU": None}}).endswith(
        "| Pred-All | 12.3 | - | - |")
