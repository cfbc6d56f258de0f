"""Segmentation metrics of the official ``PartCLIPSegEvaluator`` (SPEC §5), in plain numpy.

Pipeline: one ``sample_confusion`` per sample -> sum them (``ConfusionAccumulator``) ->
``compute_metrics`` once per protocol -> ``format_table`` for the paper-style summary.

Notation: ``K`` = number of object-specific part classes; index ``K`` = background / "no part"
(predictions) and the slot the official code uses for ignored GT. ``M[p, g]`` counts pixels with
prediction ``p`` (row) and ground truth ``g`` (column). Reference for every definition:
``baselines/evaluation/partclipseg_evaluation.py`` (``PartCLIPSegEvaluator.process`` / ``.evaluate``)
of gh:kaist-cvml/part-clipseg. The "Boundary IoU" / ``h-bIoU`` of that file is not reproduced
(SPEC §8.2.10).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

#: the evaluation protocols (SPEC §4): the one list for the Predictor, the evaluator and the CLI
PROTOCOLS = ("pred-all", "oracle-obj")
_DISPLAY = {"pred-all": "Pred-All", "oracle-obj": "Oracle-Obj"}


# --------------------------------------------------------------------------- confusion matrices
def sample_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of one sample over its labelled pixels.

    Args:
        pred: [H, W] integer prediction, values in ``0..K`` (``K = num_classes`` = background).
        gt: [H, W] integer ground truth, values in ``0..K-1``, ``-1`` = ignore (unlabelled pixel,
            pixel of another object, ...).
        num_classes: ``K``.

    Returns:
        [K+1, K+1] int64 ``M[p, g]`` counting the pixels with ``gt != -1``. Column ``K`` and so
        ``M[K, K]`` are always 0.

    Equivalence with the official accumulation (SPEC §5.3): the official code maps ignore to ``K``,
    forces ``p := K`` on those pixels and bincounts all pixels, so its matrix equals this one plus
    ``n_ignored`` in ``M[K, K]`` only. That entry is never read: Oracle-Obj slices ``M[:K, :K]`` and
    Pred-All zeroes column ``K`` before computing anything. Hence ``compute_metrics`` gives the same
    figures on either matrix.

    Raises:
        ValueError: non-integer dtype, not 2-D, different shapes, or a value out of range.
    """
    k = _check_num_classes(num_classes)
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    for name, arr in (("pred", pred), ("gt", gt)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D [H, W] label map, got shape {tuple(arr.shape)}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same [H, W] shape, got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")
    p = pred.ravel().astype(np.int64, copy=False)
    g = gt.ravel().astype(np.int64, copy=False)
    if p.size:
        lo, hi = int(p.min()), int(p.max())
        if lo < 0 or hi > k:
            raise ValueError(f"pred values must lie in 0..{k} ({k} = background), got range {lo}..{hi}")
        lo, hi = int(g.min()), int(g.max())
        if lo < -1 or hi >= k:
            raise ValueError(f"gt values must lie in 0..{k - 1}, with -1 = ignore, got range {lo}..{hi}")
    labelled = g >= 0
    flat = p[labelled] * (k + 1) + g[labelled]
    return np.bincount(flat, minlength=(k + 1) ** 2).reshape(k + 1, k + 1).astype(np.int64, copy=False)


def to_sparse(matrix: np.ndarray) -> dict[str, list[int]]:
    """[K+1, K+1] counts -> ``{"p": rows, "g": columns, "n": counts}`` of the non-zero entries
    (plain Python ints, JSON-ready, row-major order)."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square 2-D, got shape {tuple(m.shape)}")
    rows, cols = np.nonzero(m)
    return {"p": rows.tolist(), "g": cols.tolist(), "n": [int(v) for v in m[rows, cols]]}


def from_sparse(data: Mapping, num_classes: int) -> np.ndarray:
    """Inverse of ``to_sparse``: -> [K+1, K+1] int64 (repeated entries add up; other keys of
    ``data`` are ignored)."""
    k = _check_num_classes(num_classes)
    try:
        p, g, n = (np.asarray(data[key], dtype=np.int64).reshape(-1) for key in ("p", "g", "n"))
    except KeyError as exc:
        raise ValueError(f"sparse confusion matrix lacks key {exc.args[0]!r} (needs 'p', 'g', 'n')") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sparse confusion matrix has non-integer entries: {exc}") from None
    if not (len(p) == len(g) == len(n)):
        raise ValueError(f"sparse confusion matrix lists differ in length: p={len(p)}, g={len(g)}, n={len(n)}")
    if len(p) and (p.min() < 0 or p.max() > k or g.min() < 0 or g.max() > k):
        raise ValueError(f"sparse confusion matrix index out of 0..{k} for num_classes={k}")
    if len(n) and n.min() < 0:
        raise ValueError("sparse confusion matrix has negative counts")
    m = np.zeros((k + 1, k + 1), dtype=np.int64)
    np.add.at(m, (p, g), n)
    return m


class ConfusionAccumulator:
    """Running sum of per-sample [K+1, K+1] confusion matrices.

    ``matrix`` is the sum (int64), ``count`` the number of matrices added.
    """

    def __init__(self, num_classes: int):
        self.num_classes = _check_num_classes(num_classes)
        self.matrix = np.zeros((self.num_classes + 1,) * 2, dtype=np.int64)
        self.count = 0

    def add(self, matrix: np.ndarray) -> None:
        m = np.asarray(matrix)
        if m.shape != self.matrix.shape:
            raise ValueError(f"expected a {self.matrix.shape} confusion matrix, got {tuple(m.shape)}")
        self.matrix += m.astype(np.int64, copy=False)
        self.count += 1


# --------------------------------------------------------------------------- metrics
def compute_metrics(matrix: np.ndarray, seen: Sequence[int], class_names: Sequence[str], protocol: str) -> dict:
    """Official ``PartCLIPSegEvaluator.evaluate`` figures from a summed [K+1, K+1] matrix.

    Args:
        matrix: [K+1, K+1] counts ``M[p, g]`` (from ``sample_confusion`` or the official one).
        seen: indices (into ``class_names``) of the seen classes (``evaluation_set["base"]``).
        class_names: the K object-specific class names.
        protocol: ``"pred-all"`` or ``"oracle-obj"``.

    Per-class counts (SPEC §5.3; official ``evaluate``):

    * Oracle-Obj uses ``A = M[:K, :K]`` only (a prediction ``K`` on a labelled pixel would be dropped,
      but Oracle never predicts ``K``). Pred-All uses all rows of ``M`` with column ``K`` zeroed, so a
      background prediction on a part pixel is a false negative of that part.
    * ``TP_c = A[c, c]``, ``GT_c = sum_p A[p, c]``, ``PR_c = sum_g A[c, g]`` (labelled pixels only).

    Figures, all x100, ``None`` where undefined (NaN):

    * per-class ``iou = TP/(GT+PR-TP)`` for ``GT_c > 0``, else ``None``. (The official log prints
      ``IoU-<name>`` = 0 in Pred-All for a class predicted but absent from the GT; here it is
      ``None``; that 0 only enters the overall ``mIoU`` below.)
    * per-class ``recall = TP/GT`` and ``acc`` = the official ``ACC`` = ``TP/GT`` too (its comment
      says ``TP/(TP+FP)``, the code divides by ``pos_gt``), for ``GT_c > 0``.
    * ``mIoU-base`` / ``mIoU-unbase``: mean IoU over seen / other classes with ``GT_c > 0``
      (SPEC §5.4); ``None`` if the side has no such class.
    * ``h-IoU = 2ab/(a+b)``; ``None`` if a side is ``None``; 0 if ``a + b == 0`` (the official 0/0
      gives NaN there). ``h-Recall`` likewise from ``mRecall-base`` / ``mRecall-unbase``
      (mean recall over the side's classes with GT).
    * ``pAcc-base`` / ``pAcc-unbase``: ``sum TP / sum GT`` over the side's classes.
    * ``mIoU`` (overall, not a paper metric): official ``nanmean`` of its IoU vector. Oracle: K
      entries, NaN without GT -> mean over classes with GT. Pred-All: K+1 entries, defined where
      ``GT+PR > 0``: classes predicted but absent from the GT count as 0, and the background entry
      (``TP = 0``, ``GT = 0``, ``PR`` = part pixels predicted background) is 0 when any part pixel
      was predicted background, NaN otherwise.
    * ``fwIoU = sum_c IoU_c * GT_c / sum GT`` (official ``nansum(iou * pos_gt/sum(pos_gt))``: only
      classes with GT weigh); ``None`` when there is no labelled pixel (official: 0).
    * ``mACC`` = mean ``acc`` over classes with GT (hence equal to ``mRecall``);
      ``pACC = sum TP / sum GT`` (fraction of labelled pixels predicted correctly).

    Returns:
        JSON-serialisable dict with the keys above plus ``protocol``, ``num_classes``,
        ``classes_with_gt`` {"base", "unbase"}, ``background`` {"pred_pixels", "iou"} (Pred-All only;
        the background entry of the overall mIoU) and ``per_class``: list of {name, id, seen,
        gt_pixels, pred_pixels, iou, acc, recall}.
    """
    proto = str(protocol).lower().replace("_", "-")
    if proto not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    k = len(class_names)
    if k == 0:
        raise ValueError("class_names is empty")
    m = np.asarray(matrix)
    if m.shape != (k + 1, k + 1):
        raise ValueError(f"confusion matrix must be [{k + 1}, {k + 1}] for {k} classes, got {tuple(m.shape)}")
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError("confusion matrix must hold finite non-negative counts")
    seen_mask = np.zeros(k, dtype=bool)
    for i in seen:
        if isinstance(i, bool) or int(i) != i or not 0 <= int(i) < k:
            raise ValueError(f"seen index {i!r} is not a class index in 0..{k - 1}")
        seen_mask[int(i)] = True

    if proto == "oracle-obj":
        a = m[:k, :k]
    else:
        a = m.copy()
        a[:, k] = 0.0
    tp = np.diag(a).copy()
    gt = a.sum(axis=0)
    pr = a.sum(axis=1)
    union = gt + pr - tp
    has_gt = gt > 0
    ratio = np.full_like(tp, np.nan)
    ratio[has_gt] = tp[has_gt] / gt[has_gt]  # recall == official ACC
    iou = np.full_like(tp, np.nan)
    iou[has_gt] = tp[has_gt] / union[has_gt]
    # the official overall-mIoU vector: Pred-All also defines IoU where only predictions exist
    iou_overall = iou.copy()
    if proto == "pred-all":
        only_pred = ~has_gt & (pr > 0)
        iou_overall[only_pred] = tp[only_pred] / union[only_pred]

    total_gt = gt.sum()
    c_iou, c_ratio, c_gt, c_tp = iou[:k], ratio[:k], gt[:k], tp[:k]
    res: dict = {"protocol": proto, "num_classes": k}
    for side, mask in (("base", seen_mask), ("unbase", ~seen_mask)):
        sel = mask & has_gt[:k]
        res[f"mIoU-{side}"] = _pct(_mean(c_iou[sel]))
        res[f"mRecall-{side}"] = _pct(_mean(c_ratio[sel]))
        res[f"pAcc-{side}"] = _pct(c_tp[mask].sum() / c_gt[mask].sum() if c_gt[mask].sum() > 0 else math.nan)
    res["h-IoU"] = _harmonic(res["mIoU-base"], res["mIoU-unbase"])
    res["h-Recall"] = _harmonic(res["mRecall-base"], res["mRecall-unbase"])
    res["mIoU"] = _pct(_mean(iou_overall[~np.isnan(iou_overall)]))
    res["fwIoU"] = _pct(float(np.sum(iou[has_gt] * gt[has_gt])) / total_gt if total_gt > 0 else math.nan)
    res["mACC"] = _pct(_mean(ratio[has_gt]))
    res["pACC"] = _pct(tp.sum() / total_gt if total_gt > 0 else math.nan)
    res["mRecall"] = res["mACC"]
    res["classes_with_gt"] = {"base": int((seen_mask & has_gt[:k]).sum()),
                              "unbase": int((~seen_mask & has_gt[:k]).sum())}
    if proto == "pred-all":
        res["background"] = {"pred_pixels": int(pr[k]), "iou": _pct(iou_overall[k])}
    res["per_class"] = [
        {"name": str(class_names[c]), "id": c, "seen": bool(seen_mask[c]), "gt_pixels": int(gt[c]),
         "pred_pixels": int(pr[c]), "iou": _pct(iou[c]), "acc": _pct(ratio[c]), "recall": _pct(ratio[c])}
        for c in range(k)
    ]
    return res


def format_table(results: Mapping[str, Mapping]) -> str:
    """Paper layout (Seen / Unseen / Harmonic mIoU, one decimal), one Markdown row per protocol.

    Args:
        results: protocol (``"pred-all"``, ``"oracle-obj"``) -> ``compute_metrics`` dict; rows keep
            the mapping's order; undefined values print as ``-``.
    """
    lines = ["| Protocol | Seen | Unseen | Harmonic |", "|---|---:|---:|---:|"]
    for protocol, metrics in results.items():
        name = _DISPLAY.get(str(protocol).lower().replace("_", "-"), str(protocol))
        cells = [_fmt(metrics.get(key)) for key in ("mIoU-base", "mIoU-unbase", "h-IoU")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def _pct(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else 100.0 * value


def _harmonic(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"
