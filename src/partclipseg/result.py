"""``PartSegmentation``: what the Predictor returns for one image and one vocabulary.

One pass answers at three granularities: objects, generalized parts ("head" across all objects) and
object-specific parts ("dog's head"). Label maps are numpy arrays at the image size with an
explicit background index (the number of classes of that granularity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .vocabulary import Vocabulary

BACKGROUND = "background"

#: What each region rule means, shown next to a result (``PartSegmentation.note``); rules without a
#: note ("object-head", "mask", Pred-All) need no explanation.
REGION_RULE_NOTES = {
    "whole-image": "Oracle-Obj without a mask: every pixel gets a part of {object} (the official protocol); "
                   "give an object mask, a box or a point to keep the background.",
    "object-score": "the object head's region for {object} at the prompt was tiny; the region is where "
                    "{object}'s own score is high (at or above its Otsu threshold).",
    "box": "neither the object head nor {object}'s score gave a region in the box; the whole box gets "
           "{object}'s parts.",
    "point-window": "neither the object head nor {object}'s score gave a region at the point; a small window "
                    "around the point gets {object}'s parts.",
}


@dataclass
class PartSegmentation:
    """Segmentation of one image.

    * ``part_labels`` [H, W] int: object-specific class index, ``len(vocabulary)`` = background.
    * ``object_labels`` [H, W] int: index into ``vocabulary.objects``, ``num_objects`` = background.
    * ``generalized_part_labels`` [H, W] int: index into ``vocabulary.parts``, ``num_parts`` = background.
    * ``part_confidence`` [H, W] float: sigmoid score of the winning part class (0 on background
      decided by the object head).
    * ``part_scores`` [T+1, H, W], ``object_scores`` [O+1, H, W], ``generalized_part_scores`` [P, H, W]:
      per-class scores, only when asked for (``return_scores=True``).
    * ``attention`` {class name: [H, W] float in [0, 1]}: decoder attention heatmaps, when asked for.
    * ``mode``: "pred-all", "oracle-obj", "mask", "box" or "point"; ``selected_object``: the object
      chosen by a prompt (or given), else None.
    * ``region_rule``: which pixels got the selected object's parts (``REGION_RULE_NOTES``): None
      (Pred-All), "whole-image" (Oracle-Obj without a mask), "mask", or for a box / point the rule of
      ``postprocess.box_region`` / ``point_region`` that gave the region ("object-head", "object-score",
      "box", "point-window"). ``note`` says it in one line.
    """

    vocabulary: Vocabulary
    image: np.ndarray
    part_labels: np.ndarray
    object_labels: np.ndarray
    generalized_part_labels: np.ndarray
    part_confidence: np.ndarray
    mode: str
    selected_object: str | None = None
    part_scores: np.ndarray | None = None
    object_scores: np.ndarray | None = None
    generalized_part_scores: np.ndarray | None = None
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    region_rule: str | None = None

    # ------------------------------------------------------------------ basics
    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.part_labels.shape  # type: ignore[return-value]

    @property
    def background(self) -> int:
        return len(self.vocabulary)

    @property
    def class_names(self) -> list[str]:
        """Object-specific class names, then "background" (index = label value)."""
        return [*self.vocabulary.object_specific_classes, BACKGROUND]

    def present_classes(self) -> list[int]:
        """Object-specific classes with at least one pixel, by decreasing area."""
        counts = np.bincount(self.part_labels.ravel(), minlength=self.background + 1)[: self.background]
        order = np.argsort(-counts, kind="stable")
        return [int(c) for c in order if counts[c] > 0]

    @property
    def note(self) -> str | None:
        """One line on how the selected object's region was chosen, when a user should know (else None)."""
        text = REGION_RULE_NOTES.get(self.region_rule)
        return None if text is None else text.format(object=self.selected_object)

    def mask(self, name: str) -> np.ndarray:
        """Boolean [H, W] mask of an object-specific class."""
        return self.part_labels == self.vocabulary.index(name)

    def segments(self) -> list[dict[str, Any]]:
        """HF pipeline shape: ``[{"label", "mask" (bool [H, W]), "score"}]`` for the present classes.

        ``score`` is the mean sigmoid score of the class over its pixels.
        """
        scores = self.class_mean_scores()  # the JSON's scores (float64 means)
        return [{"label": self.vocabulary.object_specific_classes[c], "mask": self.part_labels == c,
                 "score": float(scores[c])} for c in self.present_classes()]

    # ------------------------------------------------------------------ writers
    def to_label_png(self, path: str | Path | None = None) -> np.ndarray:
        """Dataset-style label map (class k -> k; background 255 as uint8, or 65535 as uint16 when the
        vocabulary has more than 255 classes); written atomically to ``path`` when given."""
        from .viz import label_png_array, write_png

        array = label_png_array(self.part_labels, self.background, len(self.vocabulary))
        if path is not None:
            write_png(path, array)
        return array

    def to_overlay(self, alpha: float = 0.5, legend: bool = True, granularity: str = "part"):
        """The image with coloured classes and a legend (PIL image). ``granularity``: "part" (object-specific),
        "generalized" or "object"."""
        from .viz import overlay

        labels, names, bg = self._granularity(granularity)
        scores = self.class_mean_scores() if granularity == "part" else None
        return overlay(self.image, labels, names, bg, alpha=alpha, legend=legend, class_scores=scores)

    def class_mean_scores(self) -> np.ndarray:
        """[T] mean ``part_confidence`` of each object-specific class over its pixels (0 where absent)."""
        t = self.background
        labels = self.part_labels.ravel()
        sums = np.bincount(labels, weights=self.part_confidence.ravel().astype(np.float64), minlength=t + 1)[:t]
        counts = np.bincount(labels, minlength=t + 1)[:t]
        return sums / np.maximum(counts, 1)

    def attention_overlay(self, name: str, alpha: float = 0.5):
        """The decoder attention heatmap of class ``name`` over the image (PIL image)."""
        from .viz import heatmap

        if name not in self.attention:
            raise KeyError(f"no attention map for {name!r}; ask the Predictor with attention_for=[{name!r}]")
        return heatmap(self.image, self.attention[name], title=name)

    def to_json(self, rle: bool = False) -> dict[str, Any]:
        """Classes with pixel areas and scores (and COCO RLE masks with ``rle=True``, needs pycocotools)."""
        from .viz import mask_to_rle

        h, w = self.size
        total = float(h * w)
        parts = []
        counts = np.bincount(self.part_labels.ravel(), minlength=self.background + 1)
        scores = self.class_mean_scores()  # one pass over the image for every class (no per-class mask)
        for c in self.present_classes():
            area = int(counts[c])
            label = self.vocabulary.object_specific_classes[c]
            entry = {"label": label, "id": c, "object": self.vocabulary.object_of(c), "part": self.vocabulary.part_of(c),
                     "area": area, "area_fraction": area / total, "score": float(scores[c])}
            if rle:  # one [H, W] mask at a time: memory stays at image size
                entry["rle"] = mask_to_rle(self.part_labels == c)
            parts.append(entry)
        objects = self._areas(self.object_labels, list(self.vocabulary.objects))
        generalized = self._areas(self.generalized_part_labels, list(self.vocabulary.parts))
        return {"image_size": {"height": h, "width": w}, "mode": self.mode, "selected_object": self.selected_object,
                "region_rule": self.region_rule, "note": self.note,
                "vocabulary": list(self.vocabulary.object_specific_classes), "background_label": self.background,
                "parts": parts, "objects": objects, "generalized_parts": generalized}

    # ------------------------------------------------------------------ helpers
    def _granularity(self, granularity: str) -> tuple[np.ndarray, list[str], int]:
        v = self.vocabulary
        if granularity == "part":
            return self.part_labels, list(v.object_specific_classes), len(v)
        if granularity == "generalized":
            return self.generalized_part_labels, list(v.parts), v.num_parts
        if granularity == "object":
            return self.object_labels, list(v.objects), v.num_objects
        raise ValueError(f"granularity must be 'part', 'generalized' or 'object', got {granularity!r}")

    @staticmethod
    def _areas(labels: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
        counts = np.bincount(labels.ravel(), minlength=len(names) + 1)
        total = float(labels.size)
        return [{"label": names[i], "area": int(counts[i]), "area_fraction": counts[i] / total}
                for i in np.argsort(-counts[: len(names)], kind="stable") if counts[i] > 0]
