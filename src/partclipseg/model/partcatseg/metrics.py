"""The official ``PartCATSegEvaluator.evaluate`` figures from its two confusion matrices (numpy).

It differs from PartCLIPSeg's evaluator in ways that change the reported numbers (official quirks,
reproduced as is):

* Pred-All is computed over all T+1 rows/columns **including the background/ignore slot** (whose GT
  column holds every ignored pixel), so ``fwIoU`` / ``pACC`` are dominated by it; Oracle-Obj uses
  the first T rows/columns.
* ``mIoU-<set>`` / ``mRecall-<set>`` average only the set's classes with **IoU > 0** (classes that
  were never predicted correctly are left out), and ``pACC-<set>`` is the **mean** per-class ACC
  over those classes (not a pixel accuracy). ``-un<set>`` likewise over the other classes. Keys are
  absent when no class qualifies; ``h-IoU`` / ``h-Recall`` only when both sides exist.
* ``ACC`` = ``Recall`` = TP / GT pixels.

All figures x100; NaN where undefined (the official JSON writes null).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np


def class_metrics(conf: np.ndarray, class_names: Sequence[str], include_last_class: bool) -> dict[str, float]:
    """Official ``calculate_metrics``: conf [K+1, K+1] pred-major counts."""
    conf = np.asarray(conf, dtype=np.float64)
    if include_last_class:
        tp, pos_gt, pos_pred = conf.diagonal().copy(), conf.sum(axis=0), conf.sum(axis=1)
    else:
        inner = conf[:-1, :-1]
        tp, pos_gt, pos_pred = conf.diagonal()[:-1].copy(), inner.sum(axis=0), inner.sum(axis=1)
    n = tp.shape[0]
    acc = np.full(n, np.nan)
    iou = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = pos_gt / pos_gt.sum()
    has_gt = pos_gt > 0
    acc[has_gt] = tp[has_gt] / pos_gt[has_gt]
    seen = (pos_gt + pos_pred) > 0
    iou[seen] = tp[seen] / (pos_gt + pos_pred - tp)[seen]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN vector -> NaN, as official
        res = {"mIoU": 100 * np.nanmean(iou), "fwIoU": 100 * np.nansum(iou * weights),
               "mACC": 100 * np.nanmean(acc), "pACC": 100 * np.nansum(tp) / np.nansum(pos_gt),
               "mRecall": 100 * np.nanmean(acc)}
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * iou[i]
        res[f"ACC-{name}"] = 100 * acc[i]
        res[f"Recall-{name}"] = 100 * acc[i]
    return res


def _subset(res: dict, class_names: Sequence[str], members: np.ndarray, suffix: str) -> None:
    valid = [i for i in range(len(class_names)) if members[i] and res[f"IoU-{class_names[i]}"] > 0]
    if not valid:
        return
    res[f"mIoU-{suffix}"] = float(np.nanmean([res[f"IoU-{class_names[i]}"] for i in valid]))
    res[f"mRecall-{suffix}"] = float(np.nanmean([res[f"Recall-{class_names[i]}"] for i in valid]))
    res[f"pACC-{suffix}"] = float(np.nansum([res[f"ACC-{class_names[i]}"] for i in valid]) / len(valid))


def _harmonic(res: dict, name: str) -> None:
    a, b = res.get(f"{name}-base"), res.get(f"{name}-unbase")
    if a is not None and b is not None:
        res[f"h-{name.removeprefix('m')}"] = 2 * a * b / (a + b) if a + b != 0 else float("nan")


def partcatseg_official_metrics(conf_oracle: np.ndarray, conf_pred_all: np.ndarray, class_names: Sequence[str],
                                evaluation_set: Mapping[str, Sequence[int]] | None = None) -> dict[str, dict]:
    """``{"oracle_obj": {...}, "pred_all": {...}}`` as the official ``evaluate()`` returns them.

    conf_* [T+1, T+1] (pred-major, index T = background / ignore); ``evaluation_set`` e.g.
    ``{"base": seen class indices}`` adds ``-base`` / ``-unbase`` figures and the harmonic means.
    """
    out = {"oracle_obj": class_metrics(conf_oracle, class_names, include_last_class=False),
           "pred_all": class_metrics(conf_pred_all, class_names, include_last_class=True)}
    for res in out.values():
        for set_name, indices in (evaluation_set or {}).items():
            members = np.zeros(len(class_names), dtype=bool)
            members[np.asarray(list(indices), dtype=int)] = True
            _subset(res, class_names, members, set_name)
            _subset(res, class_names, ~members, f"un{set_name}")
        _harmonic(res, "mIoU")
        _harmonic(res, "mRecall")
    return out
