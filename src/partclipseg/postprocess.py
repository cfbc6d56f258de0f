"""Inference protocols at image size (SPEC §4), as pure tensor functions.

Models with an object head (``SegmentationOutput.has_object_head``) use ``pred_all`` and
``object_conditioned``; models without one (the CLIPSeg baseline) use ``single_head``. The protocol
names (``PROTOCOLS``) live in ``partclipseg.evaluation``.

All logits are upsampled bilinearly (``align_corners=False``) from the processing size to the image
size *before* the sigmoid, exactly as the official inference; decisions are argmaxes over sigmoid
scores (ties go to the first index), with no thresholds.

Shapes: ``T`` object-specific classes, ``P`` parts, ``O`` objects, ``H x W`` image size.

Memory is bounded at any image size and class count: unless per-class scores are asked for, channels
are upsampled a few at a time (``channels_per_chunk``: about ``CHUNK_BYTES`` per chunk) and merged by
a running argmax. Each channel is upsampled exactly as in one big call, so the labels are identical
(torch's bilinear kernel gives a channel the same numbers whatever the channel count, except for
3-channel inputs, which ``upsample`` resizes as 4, and for outputs of 4096 pixels or fewer, where
channels go in groups of 8; such small images are one chunk unless the vocabulary is huge).
Outputs that live across the chunks are allocated before the loop (a small tensor allocated after a
chunk's temporaries would pin them in the C heap, and the process keeps growing by one chunk per loop).

The logit arguments are ``[C, s, s]`` tensors, ``model.base.LazyLogits`` (computed when a chunk is
upsampled) or ``ScoreResizedLogits`` for models whose sigmoid scores, not logits, are resized to the
image (``SegmentationOutput.resize_scores``); ``upsample`` takes all three, so every protocol resizes
any of them in the same bounded chunks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


CHUNK_BYTES = 48 * 2**20  # float32 working memory of one chunk of upsampled channels


def channels_per_chunk(size: tuple[int, int], budget: int = CHUNK_BYTES) -> int:
    """How many [H, W] float32 channels fit in ``budget`` bytes (at least 1)."""
    return max(1, budget // (4 * int(size[0]) * int(size[1])))


def chunked_argmax(logits: torch.Tensor, size: tuple[int, int], sigmoid: bool = True,
                   chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(best value [H, W], best channel [H, W]) of ``sigmoid(upsample(logits))`` (or of the upsampled
    logits), ``logits`` [C, s, s], computed ``chunk`` channels at a time; ties go to the first channel."""
    chunk = chunk or channels_per_chunk(size)
    best = None
    for start in range(0, logits.shape[0], chunk):
        up = upsample(logits[start:start + chunk], size)
        best = _running_argmax(best, up.sigmoid_() if sigmoid else up, start)
    return best


def upsample(logits: torch.Tensor | ScoreResizedLogits, size: tuple[int, int]) -> torch.Tensor:
    """[C, s, s] logits -> a new [C, H, W] float32 tensor (bilinear, align_corners=False).

    ``ScoreResizedLogits`` resize their sigmoid scores instead and return the logits of those."""
    if isinstance(logits, ScoreResizedLogits):
        return logits.upsample(size)
    logits = as_tensor(logits).float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.clone()
    if logits.shape[0] == 3:  # torch resizes 3-channel (RGB-like) inputs by another kernel: other roundings
        return F.interpolate(torch.cat([logits, logits[:1]])[None], size=size, mode="bilinear",
                             align_corners=False)[0, :3]
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


def as_tensor(maps) -> torch.Tensor:
    """A tensor, or the computed maps of a ``model.base.LazyLogits`` (anything with ``materialize``)."""
    return maps if isinstance(maps, torch.Tensor) else maps.materialize()


class ScoreResizedLogits:
    """Logit maps [C, s, s] whose sigmoid scores are resized to the image (``resize_scores``, e.g.
    PartCATSeg): at image size a channel is ``logit(clamp(upsample(sigmoid(maps)), 0, 1))``, so the
    protocols' own sigmoid gives the resized scores.

    Indexing selects channels (``maps[index]``, any index a tensor takes on its first dimension);
    ``upsample`` (``postprocess.upsample``) resizes only the channels selected, so the protocols
    resize these maps in their bounded chunks as they do plain logits.
    """

    def __init__(self, maps: torch.Tensor) -> None:
        self.maps = maps

    @property
    def shape(self) -> torch.Size:
        return self.maps.shape

    @property
    def device(self) -> torch.device:
        return self.maps.device

    def __len__(self) -> int:
        return self.maps.shape[0]

    def __getitem__(self, index) -> "ScoreResizedLogits":
        return ScoreResizedLogits(self.maps[index])

    def upsample(self, size: tuple[int, int]) -> torch.Tensor:
        """[C, H, W] float32 logits of the resized sigmoid scores."""
        return torch.logit(upsample(as_tensor(self.maps).float().sigmoid(), size).clamp_(0.0, 1.0))


def _running_argmax(best: tuple[torch.Tensor, torch.Tensor] | None, scores: torch.Tensor,
                    offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a chunk of channels [c, H, W] into (best value, best index); ties keep the first index.

    Channel by channel with element-wise ops (in place): an ``argmax`` over the channel dimension of a
    channel-first tensor is a strided reduction, about 100x slower at image size.
    """
    first = 0
    if best is None:
        value = scores[0].clone()
        index = torch.full(value.shape, offset, dtype=torch.long, device=scores.device)
        first = 1
    else:
        value, index = best
    for c in range(first, scores.shape[0]):
        channel = scores[c]
        index.masked_fill_(channel > value, offset + c)
        torch.maximum(value, channel, out=value)
    return value, index


@dataclass
class ProtocolOutput:
    """Label maps and (optionally) the scores behind them, at image size.

    * ``part_labels`` [H, W] long: object-specific class, ``T`` = background.
    * ``object_labels`` [H, W] long: object index, ``O`` = background.
    * ``generalized_part_labels`` [H, W] long: generalized part, ``P`` = background.
    * ``part_confidence`` [H, W]: the score of the winning object-specific class.
    * ``part_scores`` [T+1, H, W] (Pred-All: gated sigmoid scores, as the official ``sem_seg_with_bg``;
      object-conditioned: sigmoid scores with the other objects' classes set to 0 and background 0),
      ``object_scores`` [O+1, H, W] and ``generalized_part_scores`` [P, H, W] (sigmoid), when kept.
    """

    part_labels: torch.Tensor
    object_labels: torch.Tensor
    generalized_part_labels: torch.Tensor
    part_confidence: torch.Tensor
    part_scores: torch.Tensor | None = None
    object_scores: torch.Tensor | None = None
    generalized_part_scores: torch.Tensor | None = None


def object_scores(logits: torch.Tensor, num_parts: int, size: tuple[int, int]) -> torch.Tensor:
    """Class-head logits [P+O+1, s, s] -> object/background sigmoid scores [O+1, H, W]."""
    return torch.sigmoid(upsample(logits[num_parts:], size))


def object_labels_of(logits: torch.Tensor, num_parts: int, size: tuple[int, int]) -> torch.Tensor:
    """The object head's argmax [H, W] (``O`` = background), in bounded memory."""
    return chunked_argmax(logits[num_parts:], size)[1]


def generalized_parts(logits: torch.Tensor, num_parts: int, size: tuple[int, int],
                      object_labels: torch.Tensor, num_objects: int, keep_scores: bool):
    """Generalized-part map: argmax over the P part channels, background where the object head says so.

    (A visualisation map in the official code: without ``keep_scores`` the argmax is taken on the
    logits, which equals the argmax of the sigmoid scores except where float32 sigmoids saturate.)
    """
    if num_parts == 0:
        return torch.full(size, 0, dtype=torch.long, device=logits.device), None
    scores = None
    if keep_scores:
        scores = upsample(logits[:num_parts], size).sigmoid_()
        labels = scores.argmax(0)
    else:
        labels = chunked_argmax(logits[:num_parts], size, sigmoid=False)[1]
    labels[object_labels == num_objects] = num_parts
    return labels, scores


def pred_all(logits: torch.Tensor, object_part_logits: torch.Tensor, text_to_object: torch.Tensor,
             num_parts: int, size: tuple[int, int], keep_scores: bool = False, chunk: int | None = None) -> ProtocolOutput:
    """Pred-All (SPEC §4.2): the object head's argmax gates which object's parts survive per pixel.

    ``logits`` [P+O+1, s, s], ``object_part_logits`` [T+1, s, s], ``text_to_object`` [T]. Without
    ``keep_scores`` the channels are processed ``chunk`` at a time (default: ``channels_per_chunk``;
    bounded memory); the decision is the same argmax over gated sigmoid scores, first index on ties.
    """
    num_objects = logits.shape[0] - num_parts - 1
    chunk = chunk or channels_per_chunk(size)
    obj_scores = object_scores(logits, num_parts, size) if keep_scores else None
    object_labels = obj_scores.argmax(0) if keep_scores else chunked_argmax(logits[num_parts:], size, chunk=chunk)[1]
    owner = torch.cat([text_to_object, text_to_object.new_tensor([num_objects])])  # [T+1]
    t1 = object_part_logits.shape[0]
    scores = None
    if keep_scores:
        scores = upsample(object_part_logits, size).sigmoid_()
        scores.masked_fill_(owner[:, None, None] != object_labels[None], 0.0)
        confidence, part_labels = _running_argmax(None, scores, 0)
    else:
        best = None
        for start in range(0, t1, chunk):
            part = upsample(object_part_logits[start:start + chunk], size).sigmoid_()
            part.masked_fill_(owner[start:start + chunk, None, None] != object_labels[None], 0.0)
            best = _running_argmax(best, part, start)
        confidence, part_labels = best
    gen_labels, gen_scores = generalized_parts(logits, num_parts, size, object_labels, num_objects, keep_scores)
    return ProtocolOutput(part_labels, object_labels, gen_labels, confidence,
                          scores, obj_scores if keep_scores else None, gen_scores)


def pred_all_classes(object_part_logits: torch.Tensor, text_to_part: torch.Tensor, text_to_object: torch.Tensor,
                     num_parts: int, num_objects: int, size: tuple[int, int],
                     keep_scores: bool = False) -> ProtocolOutput:
    """Pred-All as PartCATSeg's ``sem_seg_all``: argmax over all T+1 object-specific sigmoid scores
    (background last, nothing gated). ``object_part_logits`` [T+1, s, s]; the object and generalized-part
    maps follow from the winning class (background -> ``O`` / ``P``). Without ``keep_scores`` the
    channels are resized in bounded chunks (same labels)."""
    scores = None
    if keep_scores:
        scores = upsample(object_part_logits, size).sigmoid_()
        confidence, part_labels = _running_argmax(None, scores, 0)
    else:
        confidence, part_labels = chunked_argmax(object_part_logits, size)
    owner = torch.cat([text_to_object, text_to_object.new_tensor([num_objects])])
    part_of = torch.cat([text_to_part, text_to_part.new_tensor([num_parts])])
    return ProtocolOutput(part_labels, owner[part_labels], part_of[part_labels], confidence, scores)


def object_conditioned(logits: torch.Tensor, object_part_logits: torch.Tensor, text_to_object: torch.Tensor,
                       num_parts: int, size: tuple[int, int], objects: list[int],
                       region: torch.Tensor | None = None, keep_scores: bool = False,
                       classes: Sequence[int] | None = None) -> ProtocolOutput:
    """Oracle-Obj (SPEC §4.1) and the prompt modes: parts of the given objects only.

    Classes whose object is not in ``objects`` (or, when ``classes`` is given, the classes not in it:
    the model's Oracle-Obj rule, ``PartSegmentationModel.oracle_classes``) get score 0 and the
    background channel is dropped, so every pixel gets the best allowed part, as the official
    Oracle-Obj. Only the allowed channels are upsampled; where all of them are 0 the official argmax
    gives class 0, and so does this. Pixels outside ``region`` (bool [H, W], e.g. the object mask) are
    then background (``T``).
    """
    num_objects = logits.shape[0] - num_parts - 1
    t = object_part_logits.shape[0] - 1
    if classes is not None:
        allowed = torch.as_tensor(sorted(classes), dtype=torch.long, device=text_to_object.device)
    else:
        allowed = torch.isin(text_to_object, text_to_object.new_tensor(objects)).nonzero().flatten()
    given = torch.as_tensor(objects, device=logits.device)
    allowed_scores = obj_scores = None
    if keep_scores:
        allowed_scores = upsample(object_part_logits[allowed], size).sigmoid_()  # [A, H, W]
        confidence, which = _running_argmax(None, allowed_scores, 0)
        obj_scores = object_scores(logits, num_parts, size)
        object_labels = given[obj_scores[objects].argmax(0)]  # each pixel takes its best-scoring given object
    else:
        confidence, which = chunked_argmax(object_part_logits[allowed], size)
        object_labels = given[chunked_argmax(logits[num_parts + given], size)[1]]
    part_labels = torch.where(confidence > 0, allowed[which], 0)
    if region is not None:
        part_labels = torch.where(region, part_labels, t)
        confidence = torch.where(region, confidence, 0.0)
        object_labels = torch.where(region, object_labels, num_objects)
    gen_labels, gen_scores = generalized_parts(logits, num_parts, size, object_labels, num_objects, keep_scores)
    scores = None
    if keep_scores:
        scores = allowed_scores.new_zeros(t + 1, *size)
        scores[allowed] = allowed_scores
    return ProtocolOutput(part_labels, object_labels, gen_labels, confidence,
                          scores, obj_scores if keep_scores else None, gen_scores)


def single_head(logits: torch.Tensor, text_to_part: torch.Tensor, text_to_object: torch.Tensor, num_parts: int,
                num_objects: int, size: tuple[int, int], objects: list[int] | None = None,
                region: torch.Tensor | None = None, keep_scores: bool = False,
                classes: Sequence[int] | None = None) -> ProtocolOutput:
    """Protocols of a model without an object head (the CLIPSeg baseline, SPEC §7).

    ``logits`` [T+1, s, s] (object-specific classes, background last). Pred-All (``objects`` None): a
    plain argmax over the T+1 sigmoid scores. Oracle-Obj (``objects`` given): the classes of other
    objects (or the classes not in ``classes``, when given) and the background score 0; pixels outside
    ``region`` (bool [H, W]) are then background.
    The object and generalized-part maps are read off the winning class.
    """
    t = logits.shape[0] - 1
    allowed = None
    if classes is not None:  # the model's Oracle-Obj rule (``oracle_classes``)
        allowed = torch.zeros(t, dtype=torch.bool, device=logits.device)
        allowed[torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)] = True
    elif objects is not None:
        allowed = torch.isin(text_to_object, torch.tensor(objects, device=logits.device))
    scores = None
    if keep_scores:
        scores = torch.sigmoid(upsample(logits, size))
        if allowed is not None:
            scores = torch.cat([scores[:t] * allowed[:, None, None], scores.new_zeros(1, *size)])
        confidence, labels = scores.max(0)
    elif allowed is None:
        confidence, labels = chunked_argmax(logits, size)
    else:  # other objects' classes and the background score 0: the best allowed class, or class 0 where all are 0
        kept = allowed.nonzero().flatten()
        confidence, which = chunked_argmax(logits[kept], size)
        labels = torch.where(confidence > 0, kept[which], 0)
    if region is not None:
        labels = torch.where(region, labels, t)
    owner = torch.cat([text_to_object, text_to_object.new_tensor([num_objects])])
    part_of = torch.cat([text_to_part, text_to_part.new_tensor([num_parts])])
    return ProtocolOutput(labels, owner[labels], part_of[labels], confidence, scores)


def connected_component(mask: torch.Tensor, seed: tuple[int, int]) -> torch.Tensor:
    """The 8-connected component of ``mask`` (bool [H, W]) containing ``seed`` = (row, col); just the seed
    pixel when it is not in the mask.

    Works on the mask's horizontal runs, not its pixels: runs in neighbouring rows touch (8-connected)
    when their column spans overlap after widening one of them by a pixel on each side; the seed's run
    is grown breadth-first over that run graph, all arrays at a time (numpy), so the cost grows with
    the number of runs and the component's depth in runs, not with pixels x diameter (a 12-megapixel
    map of a few smooth regions takes ~0.1 s).
    """
    array = mask.detach().cpu().numpy().astype(bool, copy=False)
    h, w = array.shape
    component = np.zeros((h, w), dtype=bool)
    if not array[seed]:
        component[seed] = True
        return torch.from_numpy(component).to(mask.device)
    edges = np.zeros((h, w + 2), dtype=np.int8)
    edges[:, 1:-1] = array
    steps = np.diff(edges, axis=1)  # [H, W + 1]: +1 where a run starts, -1 one past where it ends
    rows, starts = np.nonzero(steps == 1)  # runs in raster order
    ends = np.nonzero(steps == -1)[1]  # exclusive; the i-th end belongs to the i-th start
    rows, starts, ends = rows.astype(np.int64), starts.astype(np.int64), ends.astype(np.int64)
    stride = w + 2  # a row's keys stay below the next row's: columns and ends are at most w
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    # run i touches the runs j of row + 1 with start_j <= end_i (= its last column + 1) and end_j >= start_i
    below = (rows + 1) * stride
    first = np.searchsorted(end_keys, below + starts, side="left")
    stop = np.searchsorted(start_keys, below + ends, side="right")
    counts = np.maximum(stop - first, 0)
    upper = np.repeat(np.arange(len(rows)), counts)
    lower = _expand_ranges(first, counts)
    source = np.concatenate([upper, lower])  # both directions, as CSR rows
    target = np.concatenate([lower, upper])
    order = np.argsort(source, kind="stable")
    target = target[order]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.bincount(source, minlength=len(rows)), out=offsets[1:])
    seed_run = int(np.searchsorted(start_keys, seed[0] * stride + seed[1], side="right")) - 1
    visited = np.zeros(len(rows), dtype=bool)
    visited[seed_run] = True
    frontier = np.array([seed_run])
    while len(frontier):
        degree = offsets[frontier + 1] - offsets[frontier]
        neighbours = target[_expand_ranges(offsets[frontier], degree)]
        frontier = np.unique(neighbours[~visited[neighbours]])
        visited[frontier] = True
    flat = np.zeros(h * (w + 1) + 1, dtype=np.int8)  # +1 at each kept run's start, -1 past its end
    kept = np.nonzero(visited)[0]
    flat[rows[kept] * (w + 1) + starts[kept]] = 1
    flat[rows[kept] * (w + 1) + ends[kept]] = -1  # never a kept start: runs of a row are a pixel apart
    component = np.cumsum(flat[:-1], dtype=np.int8).reshape(h, w + 1)[:, :w] > 0
    return torch.from_numpy(np.ascontiguousarray(component)).to(mask.device)


def _expand_ranges(firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of ``range(first, first + count)`` for each pair (numpy, no Python loop)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    group_starts = np.cumsum(counts) - counts
    return np.repeat(firsts - group_starts, counts) + np.arange(total)


# ---------------------------------------------------------------------------- prompt regions
#: The rules that give a box or point prompt its region, in the order they are tried (see ``prompt_region``).
REGION_RULES = ("object-head", "object-score", "box", "point-window")
#: A box's region is tiny below this share of the box's pixels.
TINY_SHARE_OF_BOX = 0.10
#: A point's region is tiny below this share of the image's pixels.
TINY_SHARE_OF_IMAGE = 0.005
#: ... and any region is tiny below this many pixels.
TINY_MIN_PIXELS = 16


def tiny_area(reference_pixels: int, share: float) -> int:
    """The area (pixels) below which a region is tiny: ``share`` of ``reference_pixels``, at least
    ``TINY_MIN_PIXELS`` and at most ``reference_pixels``."""
    return min(reference_pixels, max(TINY_MIN_PIXELS, int(round(share * reference_pixels))))


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a tensor of scores (any shape): the cut that maximises the between-class
    variance of a ``bins``-bin histogram over [min, max] (the lower edge of the upper class; the middle
    one when several cuts tie, e.g. across an empty gap). A constant input returns its value, so
    ``values >= threshold`` is never empty."""
    values = values.float().flatten()
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return lo
    hist = torch.histc(values, bins=bins, min=lo, max=hi).double()  # [bins]
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64, device=hist.device)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = hist.cumsum(0)[:-1]  # below cut k+1, k = 0 .. bins-2
    weight_high = hist.sum() - weight_low
    sum_low = (hist * centres).cumsum(0)[:-1]
    mean_low = sum_low / weight_low.clamp_min(1)
    mean_high = ((hist * centres).sum() - sum_low) / weight_high.clamp_min(1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between[(weight_low == 0) | (weight_high == 0)] = -1
    best = (between >= between.max() * (1 - 1e-9)).nonzero().flatten()  # an empty gap ties: take its middle
    return float(edges[int(best[len(best) // 2]) + 1])


def nearest_true(mask: torch.Tensor, seed: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) of the ``True`` pixel of ``mask`` (bool [H, W], not all False) nearest to ``seed``
    (Euclidean; ties: first in raster order)."""
    rows, cols = mask.nonzero(as_tuple=True)
    distance = (rows - seed[0]) ** 2 + (cols - seed[1]) ** 2
    k = int(distance.argmin())
    return int(rows[k]), int(cols[k])


def point_region(object_labels: torch.Tensor, score: torch.Tensor, chosen: int, seed: tuple[int, int],
                 tiny_share: float = TINY_SHARE_OF_IMAGE) -> tuple[torch.Tensor, str]:
    """The region of a point prompt on the chosen object: (bool [H, W], rule).

    ``object_labels`` [H, W] (the object head's Pred-All argmax, ``O`` = background), ``score`` [H, W]
    (the chosen object's sigmoid score), ``chosen`` its index, ``seed`` = (row, col). Rules, in order;
    the first region that is not tiny (``tiny_area(H * W, tiny_share)``) wins:

    1. ``"object-head"``: the 8-connected area around the point where the object head picks ``chosen``;
    2. ``"object-score"``: the 8-connected area around the point where ``score`` is at least its Otsu
       threshold over the image (high relative to the object's own score distribution; no absolute
       number, so it holds for any model); where the point itself is below the threshold, the area
       around the nearest pixel above it;
    3. when both are tiny, the larger of the two (first on ties) if it has ``TINY_MIN_PIXELS`` or more
       (a small object found by the model beats a guess), with that region's rule;
    4. ``"point-window"``: the square of ``tiny_area`` pixels centred on the point (clipped to the image).
    """
    h, w = score.shape
    tiny = tiny_area(h * w, tiny_share)
    head = connected_component(object_labels == chosen, seed)
    if int(head.sum()) >= tiny:
        return head, "object-head"
    high = score >= otsu_threshold(score)
    start = seed if bool(high[seed]) else nearest_true(high, seed)
    grown = connected_component(high, start)
    if int(grown.sum()) >= tiny:
        return grown, "object-score"
    region, rule = max(((head, "object-head"), (grown, "object-score")), key=lambda c: int(c[0].sum()))
    if int(region.sum()) >= TINY_MIN_PIXELS:
        return region, rule
    return _window(seed, tiny, (h, w), score.device), "point-window"


def box_region(object_labels: torch.Tensor, score: torch.Tensor, chosen: int, box: tuple[int, int, int, int],
               tiny_share: float = TINY_SHARE_OF_BOX) -> tuple[torch.Tensor, str]:
    """The region of a box prompt on the chosen object: (bool [H, W], rule).

    ``box`` = (x0, y0, x1, y1) in pixels, exclusive ends; other arguments as ``point_region``. Rules, in
    order; the first region that is not tiny (``tiny_area(box pixels, tiny_share)``) wins:

    1. ``"object-head"``: the box's pixels where the object head picks ``chosen``;
    2. ``"object-score"``: the box's pixels where ``score`` is at least its Otsu threshold over the box;
    3. ``"box"``: the whole box.
    """
    x0, y0, x1, y1 = box
    inside = torch.zeros_like(object_labels, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    tiny = tiny_area((x1 - x0) * (y1 - y0), tiny_share)
    region = inside & (object_labels == chosen)
    if int(region.sum()) >= tiny:
        return region, "object-head"
    region = inside & (score >= otsu_threshold(score[y0:y1, x0:x1]))
    if int(region.sum()) >= tiny:
        return region, "object-score"
    return inside, "box"


def _window(seed: tuple[int, int], area: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A bool [H, W] square of about ``area`` pixels centred on ``seed`` = (row, col), clipped to the image."""
    side = max(1, int(round(area ** 0.5)))
    r0, c0 = max(0, seed[0] - side // 2), max(0, seed[1] - side // 2)
    window = torch.zeros(size, dtype=torch.bool, device=device)
    window[r0:r0 + side, c0:c0 + side] = True
    return window


def mean_scores_inside(logits: torch.Tensor, size: tuple[int, int], region: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid score inside ``region`` (bool [H, W]) of each channel of ``logits`` [C, s, s] -> [C]."""
    chunk = channels_per_chunk(size)
    pixels = region.flatten().nonzero().flatten()  # the region's pixels in raster order, as region indexing
    means = torch.empty(logits.shape[0], dtype=torch.float32, device=region.device)
    for start in range(0, logits.shape[0], chunk):
        scores = upsample(logits[start:start + chunk], size).sigmoid_()
        inside = scores.view(scores.shape[0], -1).index_select(1, pixels)  # [c, n] = scores[:, region]
        del scores
        torch.mean(inside, 1, out=means[start:start + inside.shape[0]])
        del inside
    return means


def scores_at(logits: torch.Tensor, size: tuple[int, int], row: int, col: int) -> torch.Tensor:
    """Sigmoid scores [C] of every channel of ``logits`` [C, s, s] upsampled to ``size``, at one pixel.

    Reads the (up to) four source pixels that torch's bilinear resize (``align_corners=False``) blends
    for that pixel, so nothing is resized at image size; equal to ``upsample(...)[:, row, col]`` up to
    float rounding. ``ScoreResizedLogits`` blend their sigmoid scores instead, as their ``upsample``."""
    resize_scores = isinstance(logits, ScoreResizedLogits)
    maps = logits.maps if resize_scores else logits
    h, w = (int(v) for v in maps.shape[-2:])
    (r0, r1), (wr0, wr1) = _bilinear_source(row, h, int(size[0]))
    (c0, c1), (wc0, wc1) = _bilinear_source(col, w, int(size[1]))
    chunk = channels_per_chunk((h, w))
    scores = torch.empty(maps.shape[0], dtype=torch.float32, device=maps.device)
    for start in range(0, maps.shape[0], chunk):
        source = as_tensor(maps[start:start + chunk]).float()
        if resize_scores:
            source = source.sigmoid()
        value = (wr0 * (wc0 * source[:, r0, c0] + wc1 * source[:, r0, c1])
                 + wr1 * (wc0 * source[:, r1, c0] + wc1 * source[:, r1, c1]))
        scores[start:start + source.shape[0]] = value.clamp(0.0, 1.0) if resize_scores else value.sigmoid()
    return scores


def _bilinear_source(index: int, source_size: int, output_size: int) -> tuple[tuple[int, int], tuple[float, float]]:
    """The two source indices and their weights that a bilinear resize (``align_corners=False``, output
    size given) blends for output ``index``: torch's rule (source = (index + 0.5) * in / out - 0.5,
    clamped at 0; the upper neighbour clamped to the last index)."""
    scale = np.float32(source_size) / np.float32(output_size)  # in float32, as torch's CPU kernel
    position = max(scale * np.float32(index + 0.5) - np.float32(0.5), np.float32(0.0))
    low = min(int(position), source_size - 1)
    high = low + 1 if low < source_size - 1 else low
    upper = np.float32(position - np.float32(low))
    return (low, high), (float(np.float32(1.0) - upper), float(upper))
