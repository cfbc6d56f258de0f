"""Training losses of PartCLIPSeg (SPEC §3.2-3.5) and of the CLIPSeg baseline (SPEC §7).

Shapes: ``B`` images, ``S`` logit size, ``T`` object-specific (text) classes, ``P`` generalized parts,
``O`` objects with parts, ``N = P + O + 1`` decoder classes (parts, objects, background last),
``H`` decoder heads, ``L = 1 + R*R`` decoder tokens (CLS first), ``Q = R*R`` patch tokens.

Labels: object-specific *training* labels ``0..T-1`` and dataset object ids (training object space)
sharing one ignore value (255 in the official fixtures, -1 in our readers). ``object_to_model_object``
maps an object id to a model object ``0..O-1``; any other entry (255, -1, ...) = no parts (background).
Vectorised: no Python loop over pixels, parts or objects. ``LossConfig.per_image`` (SPEC §3.5): True =
every term on each image alone, averaged over images (official 8 GPUs x 1 image); False = each term once
over the whole batch (the official code on one GPU's images, e.g. the B=2 reference fixture).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossConfig", "LossTargets", "attention_losses", "build_targets", "clipseg_loss", "merge_attentions",
           "partclipseg_loss", "resize_labels", "segmentation_losses"]

Labels = Union[Tensor, Sequence[Tensor]]
_EPS = 1e-9  # min-max normalisation and cover-ratio epsilon of the official code


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and switches; the defaults are the official settings.

    * ``obj_lambda`` / ``part_lambda``: object / generalized-part BCE weights; ``background_weight``:
      BCE weight of the last (background) channel; ``use_attention``, ``sep_lambda``, ``enh_lambda``,
      ``attn_threshold``: attention control (§3.4); ``per_image``: see the module docstring.
    * ``attn_levels``: decoder layers whose head-mean attentions are averaged (the official ``*kwargs``
      typo pins it to ``[2]``, SPEC §8.2.6; here a real option with that default).
    * ``official_unique_drop_last``: objects of an image = ``unique(objm_tgt)[:-1]`` (drops the largest
      object when the image has no ignore pixel, §8.2.7). False: only the ignore value is dropped.
    * ``official_nan_to_zero``: an empty background term makes the sample's loss NaN -> 0 (the whole
      sample is dropped, §8.2.8). False: only the empty term is skipped.
    * ``object_ce_lambda``: not official (0 = off): weight of an extra per-pixel softmax cross-entropy over
      the O+1 object channels (target: the pixel's model object on ``obj_mask``, else background), the
      decision Pred-All takes (argmax over those channels). The BCE terms score each channel alone.
    * ``object_identity_lambda``: not official (0 = off): weight of a per-pixel softmax cross-entropy over
      the O object channels alone (no background channel), on the ``obj_mask`` pixels only (target: the
      pixel's model object), averaged over those pixels per group (0 for a group without any): which
      object a pixel belongs to, given that it belongs to one. Unlike ``object_ce_lambda`` it leaves the
      object-or-background decision to the BCE terms and weighs nothing on background pixels; it aims at
      the object head's confusions between neighbouring objects (a dog's pixels called a cat's).
    * ``balanced_objects``: not official (False = off). The object term (the O+1 generalized object
      channels) averages its BCE over the ``obj_mask`` pixels and over the other pixels (background,
      unlabelled pixels, objects without parts) separately and weighs the two means half each, as the
      object-specific terms already do (part pixels and background normalised apart, SPEC §3.3); off, it
      is one mean over all pixels, most of which are background. A group (image, or batch) with one kind
      of pixel only keeps the one mean it has (with the official NaN rule, a group with object pixels
      and no other pixel is dropped anyway).
    * ``pixel_stride``: not official (1 = off, every pixel). ``s`` > 1: each training image's BCE terms
      read one pixel of every ``s`` x ``s`` block, at an offset drawn per image and step
      (:class:`PixelSample`: a stratified sample of 1/s^2 of the pixels; the object term, a plain pixel
      mean, is estimated without bias, the part and background terms, ratios of sums, consistently, and
      so is the object term with ``balanced_objects``, whose means use the sample's own counts; an
      image whose sample holds object pixels but no background pixel is dropped by the official NaN rule,
      as at full size), and the mask heads compute the logits of those pixels only (the last
      transposed convolution's kernel equals its stride, so a sampled pixel needs one kernel tap:
      ``MaskHead``). The per-pixel work of the two heads and the loss falls by s^2 (toy world, s = 4:
      a third of a training step). The attention losses need the whole map: not with ``use_attention``.
    * ``jsd_lambda``: PartCATSeg's composition JSD weight (``part_lambda`` / ``obj_lambda`` /
      ``background_weight`` / ``per_image`` apply to PartCATSeg too; the attention settings do not, and
      PartCATSeg refuses ``use_attention=true``).
    """

    obj_lambda: float = 1.0
    part_lambda: float = 1.0
    use_attention: bool = True
    sep_lambda: float = 0.1
    enh_lambda: float = 0.01
    attn_threshold: float = 0.3
    attn_levels: tuple[int, ...] = (2,)
    background_weight: float = 0.05
    per_image: bool = True
    official_unique_drop_last: bool = True
    official_nan_to_zero: bool = True
    jsd_lambda: float = 1.0
    object_ce_lambda: float = 0.0
    object_identity_lambda: float = 0.0
    pixel_stride: int = 1
    balanced_objects: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.pixel_stride, bool) or not isinstance(self.pixel_stride, int) or self.pixel_stride < 1:
            raise ValueError(f"pixel_stride must be an integer >= 1 (1: every pixel), got {self.pixel_stride!r}")
        if self.pixel_stride > 1 and self.use_attention:
            raise ValueError("pixel_stride > 1 samples pixels, but the attention losses need the whole map: "
                             "set use_attention=false or pixel_stride=1")
        levels = (self.attn_levels,) if isinstance(self.attn_levels, int) else tuple(int(v) for v in self.attn_levels)
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"attn_levels must be distinct decoder layer indices, got {self.attn_levels!r}")
        object.__setattr__(self, "attn_levels", levels)


@dataclass(frozen=True)
class PixelSample:
    """The pixels a training step's loss reads (``LossConfig.pixel_stride``): in image ``n``, rows
    ``stride*i + offsets[n, 0]`` and columns ``stride*j + offsets[n, 1]`` of the S x S logit grid.
    ``offsets``: one (row, column) pair in ``0..stride-1`` per image (plain ints: reading them never
    synchronises a device)."""

    stride: int
    offsets: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        offsets = tuple((int(a), int(b)) for a, b in self.offsets)
        if any(not (0 <= v < self.stride) for pair in offsets for v in pair):
            raise ValueError(f"pixel offsets must lie in 0..{self.stride - 1}, got {offsets}")
        object.__setattr__(self, "offsets", offsets)

    @classmethod
    def for_positions(cls, stride: int, positions: Sequence[int], seed: int) -> "PixelSample":
        """Offsets uniform over the ``stride`` x ``stride`` block, one per sample, each a function of
        ``(seed, the sample's global position)`` as every other random draw of training
        (``train/data.py``): a resumed run, or one split over processes, reads the same pixels."""
        return cls(stride, tuple(tuple(np.random.default_rng([seed, int(p), 23]).integers(stride, size=2).tolist())
                                 for p in positions))

    def select(self, maps: Tensor) -> Tensor:
        """[B, S, S] (or [B, C, S, S]) -> the sampled pixels [B, (C,) S/stride, S/stride]."""
        if maps.shape[0] != len(self.offsets):
            raise ValueError(f"{len(self.offsets)} pixel offsets for a batch of {maps.shape[0]}")
        s = self.stride
        return torch.stack([maps[n, ..., a::s, b::s] for n, (a, b) in enumerate(self.offsets)])


@dataclass
class LossTargets:
    """Targets at the logit size (SPEC §3.2); build them with :func:`build_targets`.

    * ``tgt`` [B,S,S] object-specific class ``0..T-1`` or ``ignore_index``;
    * ``part_tgt`` [B,S,S] generalized part ``text_to_part[tgt]`` or ignore;
    * ``objm_tgt`` [B,S,S] model object ``0..O-1`` or ignore (unseen objects, objects without parts,
      background and unlabeled pixels);
    * ``mask = tgt != ignore``, ``part_mask`` (identical), ``obj_mask = objm_tgt != ignore`` [B,S,S] bool;
    * ``text_to_part`` / ``text_to_object`` [T] long, ``num_parts`` P, ``num_objects`` O;
    * ``trained`` [T] bool or None: the object-specific classes the object-specific terms train (None:
      all). The others get weight 0 there and the terms are normalised by ``trained.sum() + 1`` channels.
    """

    tgt: Tensor
    part_tgt: Tensor
    objm_tgt: Tensor
    mask: Tensor
    part_mask: Tensor
    obj_mask: Tensor
    text_to_part: Tensor
    text_to_object: Tensor
    num_parts: int
    num_objects: int
    ignore_index: int
    trained: Tensor | None = None

    @property
    def num_text_classes(self) -> int:  # T
        return int(self.text_to_part.numel())

    def object_specific_onehot(self) -> Tensor:
        """``Y_os`` [B,T+1,S,S]: one-hot of ``tgt`` on ``mask``; last channel 1 on ``~obj_mask``."""
        bg = (~self.obj_mask).unsqueeze(1).float()
        return torch.cat([_onehot(self.tgt, self.mask, self.num_text_classes), bg], 1)

    def sampled(self, sample: "PixelSample") -> "LossTargets":
        """The targets at ``sample``'s pixels (every [B,S,S] map -> [B,S/stride,S/stride])."""
        if self.tgt.shape[-1] % sample.stride or self.tgt.shape[-2] % sample.stride:
            raise ValueError(f"targets {tuple(self.tgt.shape)} are not a multiple of the pixel stride {sample.stride}")
        return dataclasses.replace(self, **{name: sample.select(getattr(self, name)) for name in
                                            ("tgt", "part_tgt", "objm_tgt", "mask", "part_mask", "obj_mask")})

    def generalized_onehot(self) -> Tensor:
        """``Y_gen`` [B,N,S,S]: parts on ``part_mask``, objects on ``obj_mask``, background on ``~obj_mask``."""
        return torch.cat([_onehot(self.part_tgt, self.part_mask, self.num_parts),
                          _onehot(self.objm_tgt, self.obj_mask, self.num_objects),
                          (~self.obj_mask).unsqueeze(1).float()], 1)


# ----------------------------------------------------------------------------- targets
def _onehot(labels: Tensor, valid: Tensor, n: int) -> Tensor:
    """[B,S,S] labels -> [B,n,S,S] float one-hot, zero where not ``valid``."""
    return F.one_hot(torch.where(valid, labels, n), n + 1)[..., :n].permute(0, 3, 1, 2).float()


def _nearest_index(n_in: int, n_out: int, device) -> Tensor:
    """Source indices of torch's legacy ``nearest`` resize along one axis (its own float arithmetic)."""
    grid = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, n_in, 1)
    return F.interpolate(grid, size=(n_out, 1), mode="nearest").view(n_out).long()


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Label maps [..., H, W] -> [..., h, w]: the pixels the official ``interpolate(gt.float(),
    mode="nearest")`` picks, by indexing (exact for any integer dtype and value)."""
    rows = _nearest_index(labels.shape[-2], size[0], labels.device)
    cols = _nearest_index(labels.shape[-1], size[1], labels.device)
    return labels[..., rows[:, None], cols[None, :]]


def _stack_resized(labels: Labels, size: int) -> Tensor:
    """[B,H,W] tensor or a sequence of [H_i,W_i] maps -> [B,S,S] long (each image resized alone)."""
    if isinstance(labels, Tensor) and labels.dim() == 3:
        return resize_labels(labels, (size, size)).long()
    return torch.stack([resize_labels(torch.as_tensor(x), (size, size)) for x in labels]).long()


def _check_labels(labels: Tensor, n: int, ignore: int, name: str) -> None:
    """Refuse labels outside 0..n-1 other than ``ignore`` (e.g. test-space labels)."""
    if 0 <= ignore < n:
        raise ValueError(f"ignore value {ignore} collides with the {name} classes 0..{n - 1}")
    bad = (labels != ignore) & ((labels < 0) | (labels >= n))
    if bool(bad.any()):
        raise ValueError(f"{name} holds values outside 0..{n - 1} other than the ignore value {ignore}: "
                         f"{sorted(set(labels[bad].tolist()))[:8]} (wrong label space?)")


def _long(values, device) -> Tensor:
    return torch.as_tensor(values, dtype=torch.long, device=device).reshape(-1)  # also the official (1,1,1,T)


def build_targets(part_labels: Labels, object_labels: Labels, text_to_part, text_to_object,
                  object_to_model_object, size: int, ignore_index: int = -1,
                  trained: Tensor | None = None) -> LossTargets:
    """Label maps -> :class:`LossTargets` at the logit size ``size`` (SPEC §3.2, §8.1.7).

    part_labels / object_labels: [B,H,W] or B maps [H_i,W_i] (each resized alone to S x S, legacy
    nearest): training labels 0..T-1 / dataset object ids, or ``ignore_index``. text_to_part /
    text_to_object: [T] (any shape): P and O are their ``max + 1``. object_to_model_object: [#objects],
    model object id, anything outside 0..O-1 = no parts. ``trained`` [T] bool (or None = all): the classes
    the object-specific terms train; a part label of another class raises ``ValueError``. Out-of-range
    labels raise ``ValueError``.
    """
    device = (part_labels if isinstance(part_labels, Tensor) else torch.as_tensor(part_labels[0])).device
    t2p, t2o, lut = (_long(v, device) for v in (text_to_part, text_to_object, object_to_model_object))
    num_text, num_parts, num_objects = t2p.numel(), int(t2p.max()) + 1, int(t2o.max()) + 1
    tgt, obj = _stack_resized(part_labels, size), _stack_resized(object_labels, size)
    if tgt.shape != obj.shape:
        raise ValueError(f"part and object label maps differ in batch size: {tuple(tgt.shape)} vs {tuple(obj.shape)}")
    _check_labels(tgt, num_text, ignore_index, "part_labels")
    _check_labels(obj, lut.numel(), ignore_index, "object_labels")
    mask = tgt != ignore_index
    part_tgt = torch.where(mask, t2p[torch.where(mask, tgt, 0)], ignore_index)
    known = obj != ignore_index
    model_obj = lut[torch.where(known, obj, 0)]
    obj_mask = known & (model_obj >= 0) & (model_obj < num_objects)
    objm_tgt = torch.where(obj_mask, model_obj, ignore_index)
    if trained is not None:
        trained = torch.as_tensor(trained, device=device).reshape(-1).bool()
        if trained.numel() != num_text:
            raise ValueError(f"trained has {trained.numel()} entries for {num_text} object-specific classes")
        if bool((mask & ~trained[torch.where(mask, tgt, 0)]).any()):
            raise ValueError("part_labels hold a class that trained excludes")
    return LossTargets(torch.where(mask, tgt, ignore_index), part_tgt, objm_tgt, mask, part_tgt != ignore_index,
                       obj_mask, t2p, t2o, num_parts, num_objects, ignore_index, trained)


# ----------------------------------------------------------------------------- segmentation terms
def _class_weights(n: int, background: float | None, like: Tensor, trained: Tensor | None = None) -> Tensor:
    """ones(n) with the last entry ``background`` (if given) and 0 for the first n-1 channels not ``trained``."""
    w = torch.ones(n, dtype=like.dtype, device=like.device)
    if trained is not None:
        w[:-1] = trained.to(w)
    w[-1] = 1.0 if background is None else background
    return w


class _ChannelSummedBCE(torch.autograd.Function):
    """Per-pixel ``sum_c w_c BCE(x_c, y_c)`` with a hand-written backward (``_pixel_bce``).

    Autograd of the plain expression materialises several zero-filled [B,C,S,S] gradients (the
    gather's and the background slice's) and a separate softplus backward; here the gradient
    ``w_c (sigmoid(x_c) - y_c)`` is built in one tensor. Same numbers up to float summation order.
    Channels before the last are weighted only when some weight differs from 1 (``trained`` classes).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, idx: Tensor, positive: Tensor, weight: Tensor,
                background: Tensor | None):
        # idx [B,S,S] long: the positive channel per pixel; positive [B,S,S]: its weight w[idx] (0 where
        # none); background [B,S,S] float or None: extra positive weight on the last channel
        softplus = F.softplus(logits)
        w_last = weight[-1]
        channel_weights = bool((weight[:-1] != 1).any())
        if channel_weights:
            total = torch.einsum("bchw,c->bhw", softplus, weight)
        else:
            total = softplus.sum(1)
            if bool(w_last != 1):
                total = total + (w_last - 1) * softplus[:, -1]
        total = total - logits.gather(1, idx.unsqueeze(1)).squeeze(1) * positive
        if background is not None:
            total = total - logits[:, -1] * background
        ctx.save_for_backward(logits, idx, positive, weight, background)
        ctx.has_background, ctx.channel_weights = background is not None, channel_weights
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        logits, idx, positive, weight, background = ctx.saved_tensors
        grad = torch.sigmoid(logits)
        w_last = weight[-1]
        if ctx.channel_weights:
            grad *= weight.view(1, -1, 1, 1)
        elif bool(w_last != 1):
            grad[:, -1] *= w_last
        grad.scatter_add_(1, idx.unsqueeze(1), -positive.unsqueeze(1))
        if ctx.has_background:
            grad[:, -1] -= background
        grad *= grad_total.unsqueeze(1)
        return grad, None, None, None, None


def _pixel_bce(logits: Tensor, labels: Tensor, valid: Tensor, weight: Tensor, background: Tensor | None = None):
    """logits [B,C,S,S] -> per-pixel ``sum_c w_c BCE(x_c, y_c)`` [B,S,S], ``y`` = one-hot of ``labels`` on
    ``valid`` (+1 on the last channel where ``background``), via ``BCE = softplus(x) - x*y`` (no one-hot).
    ``weight`` [C]: ``_class_weights`` (the first C-1 entries 1 or 0, the last any value)."""
    if bool(((weight[:-1] != 1) & (weight[:-1] != 0)).any()):
        raise ValueError("_pixel_bce: the channels before the last must have weight 1 or 0")
    idx = torch.where(valid, labels, 0)
    positive = (weight[idx] * valid).to(logits.dtype)
    extra = None if background is None else (weight[-1] * background).to(logits.dtype)
    return _ChannelSummedBCE.apply(logits, idx, positive, weight.to(logits.dtype), extra)


def _group_sum(x: Tensor, per_image: bool) -> Tensor:
    """[B,...] -> [B] per-image sums (per_image) or [1] batch sum."""
    s = x.flatten(1).sum(1) if x.dim() > 1 else x
    return s if per_image else s.sum(0, keepdim=True)


def _objects_term(l_obj: Tensor, obj_mask: Tensor, balanced: bool, g) -> Tensor:
    """Per-group ([G]) mean of the object term's per-pixel channel sums ``l_obj`` [B,S,S]: over all pixels
    (official), or (``balanced``) the mean over the ``obj_mask`` pixels and the mean over the others, half
    each where the group has both kinds (the one it has otherwise)."""
    if not balanced:
        return g(l_obj) / g(torch.ones_like(l_obj))
    on, off = obj_mask.to(l_obj.dtype), (~obj_mask).to(l_obj.dtype)
    n_on, n_off = g(on), g(off)
    has_on, has_off = (n_on > 0).to(l_obj.dtype), (n_off > 0).to(l_obj.dtype)
    mean_on, mean_off = g(l_obj * on) / n_on.clamp(min=1), g(l_obj * off) / n_off.clamp(min=1)
    return (has_on * mean_on + has_off * mean_off) / (has_on + has_off)


def _segmentation_terms(logits: Tensor, object_part_logits: Tensor, targets: LossTargets, config: LossConfig):
    """The four BCE terms per group ([G], G = B or 1) and the groups whose background term is empty."""
    t, p, o = targets.num_text_classes, targets.num_parts, targets.num_objects
    size = tuple(targets.tgt.shape)
    if logits.shape != (size[0], p + o + 1, *size[1:]) or object_part_logits.shape != (size[0], t + 1, *size[1:]):
        raise ValueError(f"logits {tuple(logits.shape)} / object_part_logits {tuple(object_part_logits.shape)} do "
                         f"not fit targets {size} with P={p}, O={o}, T={t}")
    bg, bg_w = ~targets.obj_mask, config.background_weight
    g = lambda x: _group_sum(x, config.per_image)  # noqa: E731
    l_os = _pixel_bce(object_part_logits, targets.tgt, targets.mask,
                      _class_weights(t + 1, bg_w, logits, targets.trained), bg)
    os_channels = t + 1 if targets.trained is None else int(targets.trained.sum()) + 1
    l_part = _pixel_bce(logits[:, :p], targets.part_tgt, targets.part_mask, _class_weights(p, None, logits))
    l_obj = _pixel_bce(logits[:, p:], targets.objm_tgt, targets.obj_mask, _class_weights(o + 1, bg_w, logits), bg)
    n_part, n_obj, n_bg = g(targets.part_mask.float()), g(targets.obj_mask.float()), g(bg.float())
    has_part, bg_gated = n_part > 0, n_obj > 0  # official: background term gated on obj_mask, taken on ~obj_mask
    zero = logits.new_zeros(())
    terms = {
        "object_specific_parts": torch.where(has_part, g(l_os * targets.mask) / (n_part.clamp(min=1) * os_channels),
                                             zero),
        "generalized_parts": torch.where(has_part, g(l_part * targets.part_mask) / (n_part.clamp(min=1) * p), zero),
        "object_specific_background": torch.where(bg_gated & (n_bg > 0),
                                                  g(l_os * bg) / (n_bg.clamp(min=1) * os_channels), zero),
        "objects": _objects_term(l_obj, targets.obj_mask, config.balanced_objects, g) / (o + 1),
    }
    # L_seg = L_os + obj_lambda * L_obj + part_lambda * L_part (SPEC §3.3.4)
    terms["segmentation"] = (terms["object_specific_parts"] + terms["object_specific_background"]
                             + config.obj_lambda * terms["objects"] + config.part_lambda * terms["generalized_parts"])
    if config.object_ce_lambda > 0:  # not official: see LossConfig
        object_index = torch.where(targets.obj_mask, targets.objm_tgt, o)
        ce = F.cross_entropy(logits[:, p:], object_index, reduction="none")  # [B,S,S]
        terms["objects_ce"] = g(ce) / g(torch.ones_like(ce))
        terms["segmentation"] = terms["segmentation"] + config.object_ce_lambda * terms["objects_ce"]
    if config.object_identity_lambda > 0:  # not official: see LossConfig
        on = targets.obj_mask
        ce = F.cross_entropy(logits[:, p:p + o], torch.where(on, targets.objm_tgt, 0), reduction="none")  # [B,S,S]
        terms["object_identity"] = torch.where(n_obj > 0, g(ce * on.to(ce.dtype)) / n_obj.clamp(min=1), zero)
        terms["segmentation"] = terms["segmentation"] + config.object_identity_lambda * terms["object_identity"]
    return terms, bg_gated & (n_bg == 0)


def _finish(terms: dict, total: Tensor, empty: Tensor, config: LossConfig) -> dict:
    """Apply the NaN rule per group, then average the groups (images) -> scalars."""
    keep = ~empty if config.official_nan_to_zero else torch.ones_like(empty)  # official: NaN sample -> 0, all terms
    out = {k: torch.where(keep, v, 0.0).mean() for k, v in terms.items()}
    out["total"] = torch.where(keep, total, 0.0).mean()
    return out


def segmentation_losses(logits: Tensor, object_part_logits: Tensor, targets: LossTargets,
                        config: LossConfig = LossConfig()) -> dict:
    """The BCE terms of SPEC §3.3, ``segmentation`` (L_seg) and ``total`` (L_seg after the NaN rule).

    logits [B,N,S,S] (P parts, O objects, background); object_part_logits [B,T+1,S,S]. BCE = weighted
    element-wise BCE-with-logits averaged over pixels x channels: ``object_specific_parts`` (part pixels,
    T+1 channels), ``generalized_parts`` (part pixels, P channels, weight 1), ``object_specific_background``
    (``~obj_mask`` pixels; only if there is an ``obj_mask`` pixel; empty = official NaN, see
    ``LossConfig``) and ``objects`` (all pixels, O+1 channels). Scalars: mean over images or batch value.
    """
    terms, empty = _segmentation_terms(logits, object_part_logits, targets, config)
    return _finish(terms, terms["segmentation"], empty, config)


# ----------------------------------------------------------------------------- attention terms
def _level_mean(decoder_attentions: Sequence[Tensor], levels: Sequence[int]) -> Tensor:
    """Per-layer [B,N,H,L,L] softmax weights -> head mean averaged over ``levels`` [B,N,L,L]."""
    if any(not 0 <= v < len(decoder_attentions) for v in levels):
        raise ValueError(f"attn_levels {tuple(levels)} out of range for {len(decoder_attentions)} decoder layers")
    return torch.stack([decoder_attentions[v].mean(2) for v in levels]).mean(0)


def _split_classes(num_classes: int, text_to_part: Tensor, text_to_object: Tensor) -> tuple[int, int]:
    p, o = int(text_to_part.max()) + 1, int(text_to_object.max()) + 1
    if p + o + 1 != num_classes:
        raise ValueError(f"attentions have {num_classes} classes, expected P + O + 1 = {p} + {o} + 1")
    return p, o


def merge_attentions(decoder_attentions: Sequence[Tensor], text_to_part, text_to_object,
                     levels: Sequence[int] = (2,)) -> Tensor:
    """Official ``merge_attention`` -> [B, T+O, L, L] (CLS kept): with ``A`` = head mean averaged over
    ``levels``, class t < T gets ``(A[p(t)] + A[P + o(t)]) / 2``, class T + o gets ``A[P + o]``."""
    a = _level_mean(decoder_attentions, levels)
    t2p, t2o = _long(text_to_part, a.device), _long(text_to_object, a.device)
    p, o = _split_classes(a.shape[1], t2p, t2o)
    return torch.cat([(a[:, t2p] + a[:, p + t2o]) / 2, a[:, p:p + o]], 1)


def _gaussian_kernel(like: Tensor) -> Tensor:
    """The official 3x3 'Gaussian' (sigma 0.5) with exponent ``-((x - mu) / (2 sigma))^2``, sum 1."""
    g = torch.exp(-((torch.arange(3, dtype=torch.float32, device=like.device) - 1.0) / (2 * 0.5)) ** 2)
    return (torch.outer(g, g) / torch.outer(g, g).sum()).to(like.dtype).view(1, 1, 3, 3)


def _smooth(maps: Tensor) -> Tensor:
    """Reflect-pad 1 + 3x3 kernel, [M,R,R] -> [M,R,R]."""
    return F.conv2d(F.pad(maps.unsqueeze(1), (1, 1, 1, 1), mode="reflect"), _gaussian_kernel(maps)).squeeze(1)


def _present(labels: Tensor, valid: Tensor, n: int) -> Tensor:
    """[B,S,S] labels -> [B,n] bool: class present on a ``valid`` pixel of the image."""
    idx = torch.where(valid, labels, n).flatten(1)
    return torch.zeros(idx.shape[0], n + 1, device=idx.device).scatter_(1, idx, 1.0)[:, :n] > 0


def _attention_terms(decoder_attentions, targets: LossTargets, text_to_part, text_to_object, config: LossConfig):
    """``loss_sep`` / ``loss_enh`` per group [G] (SPEC §3.4), vectorised over images, parts and objects."""
    a = _level_mean(decoder_attentions, config.attn_levels)[..., 1:, 1:]  # [B,N,Q,Q], CLS dropped
    b, _, q, _ = a.shape
    r = math.isqrt(q)
    if r * r != q or b != targets.tgt.shape[0]:
        raise ValueError(f"attentions {tuple(a.shape)} (CLS dropped) do not fit a square grid / the batch")
    t2p, t2o = _long(text_to_part, a.device), _long(text_to_object, a.device)
    p, o = _split_classes(a.shape[1], t2p, t2o)
    t, ign = t2p.numel(), targets.ignore_index
    # token-level masks: the S x S targets nearest-resized to R x R (the official resize of the one-hots)
    tgt_r = resize_labels(targets.tgt, (r, r)).flatten(1)  # [B,Q]
    objm_r = resize_labels(targets.objm_tgt, (r, r)).flatten(1)
    on_part = tgt_r != ign
    lbl = torch.where(on_part, tgt_r, 0)
    # a_bar[b,t,k] = (1/Q) sum_{q: tgt_r[b,q]=t} merged_t[q,k]: gather one merged row per query, then scatter
    bi, qi = torch.arange(b, device=a.device)[:, None], torch.arange(q, device=a.device)[None]
    rows = (a[bi, t2p[lbl], qi] + a[bi, p + t2o[lbl], qi]) / 2  # [B,Q(query),Q(key)]
    select = F.one_hot(lbl, t).to(a.dtype) * on_part.unsqueeze(-1)  # [B,Q,T]
    avg = torch.einsum("bqt,bqk->btk", select, rows) / q  # [B,T,Q]
    lo, hi = avg.amin(-1, keepdim=True), avg.amax(-1, keepdim=True)
    norm = (avg - lo) / (hi - lo + _EPS)
    smooth_raw = _smooth(avg.reshape(b * t, r, r)).view(b, t, q)
    smooth_norm = _smooth(norm.reshape(b * t, r, r)).view(b, t, q)
    # parts: every class present in the image at S x S (not only the object's); objects per image
    parts = _present(targets.tgt, targets.mask, t)  # [B,T]
    objs = _present(targets.objm_tgt, targets.obj_mask, o)  # [B,O]
    if config.official_unique_drop_last:  # unique()[:-1]: without an ignore pixel the largest object goes
        no_ignore = targets.obj_mask.flatten(1).all(1)
        largest = torch.where(objs, torch.arange(o, device=a.device), -1).amax(1)
        drop = F.one_hot(largest.clamp(min=0), o).bool() & (no_ignore & (largest >= 0)).unsqueeze(1)
        objs = objs & ~drop
    valid = objs & parts.any(1, keepdim=True)  # (image, object) pairs that count
    n_obj = valid.sum(1).to(a.dtype)  # [B]
    # separation: thresholds and counts only -> no gradient
    hits = ((smooth_norm > config.attn_threshold) & parts.unsqueeze(-1)).sum(1)  # [B,Q] parts covering a key
    in_obj = (objm_r.unsqueeze(1) == torch.arange(o, device=a.device).view(1, o, 1)) & (objm_r != ign).unsqueeze(1)
    cover = hits.unsqueeze(1) * in_obj  # [B,O,Q]
    sep = (cover > 1).sum(-1).to(a.dtype) / ((cover >= 1).sum(-1).to(a.dtype) + _EPS)
    sep_sum = (sep * valid).sum(1)
    # enhancement: 1 - min(1, min over parts of max of the smoothed raw map); equal for every object
    mmax = smooth_raw.amax(-1).masked_fill(~parts, math.inf).amin(1).clamp(max=1.0)
    enh_sum = n_obj * (1.0 - mmax)
    g = lambda x: _group_sum(x, config.per_image)  # noqa: E731
    denom = g(n_obj).clamp(min=1) * (1 if config.per_image else b)
    return {"loss_sep": g(sep_sum) / denom, "loss_enh": g(enh_sum) / denom}


def attention_losses(decoder_attentions: Sequence[Tensor], targets: LossTargets, text_to_part, text_to_object,
                     config: LossConfig = LossConfig()) -> dict:
    """Attention-control losses ``loss_sep`` and ``loss_enh`` (SPEC §3.4, official semantics).

    decoder_attentions: one [B,N,H,L,L] tensor per decoder layer (softmax weights, CLS first); head
    mean over ``attn_levels``, merged as :func:`merge_attentions`, CLS row/column dropped. Per image:
    ``ā_t`` = mean over **all** Q queries of class t's map with the queries outside part t zeroed (the
    R x R nearest resize of the targets); min-max normalised (eps 1e-9); both maps reflect-padded and
    smoothed (official kernel). Parts = every class present at S x S (a part absent from the R x R grid
    has ā = 0, so ``mmax = 0``: L_enh = 1 for that image, without gradient, as in the official code);
    objects = ``unique(objm_tgt)[:-1]`` (or minus the ignore value, see ``LossConfig``). Per object:
    ``cover`` = number of parts whose smoothed normalised map is > ``attn_threshold`` inside the object;
    ``sep = #(cover > 1) / (#(cover >= 1) + 1e-9)``; ``enh = 1 - min(1, min_t max smooth(ā_t))``. Both
    are summed over (image, object) pairs and divided by ``max(n_obj, 1) * B`` (batch mode; n_obj counts
    pairs over the batch) or by ``max(n_obj_b, 1)`` per image, then averaged (``per_image``).

    ``loss_sep`` has **no gradient**: it is built from threshold comparisons and counts only (as in the
    official code: it changes the logged value, never the parameters). ``loss_enh`` is differentiable
    through the max, the smoothing and the attention weights.
    """
    return {k: v.mean() for k, v in _attention_terms(decoder_attentions, targets, text_to_part,
                                                       text_to_object, config).items()}


def partclipseg_loss(outputs, targets: LossTargets, config: LossConfig = LossConfig()) -> dict:
    """The full official training loss: the four BCE terms, ``segmentation``, ``loss_sep``/``loss_enh``
    (if used) and ``total = L_seg + sep_lambda loss_sep + enh_lambda loss_enh`` (per group, then the NaN
    rule, then the mean over images / the batch value). outputs: a ``SegmentationOutput`` (``logits``
    [B,N,S,S], ``object_part_logits`` [B,T+1,S,S], ``decoder_attentions`` from ``output_attentions=True``).
    """
    terms, empty = _segmentation_terms(outputs.logits, outputs.object_part_logits, targets, config)
    total = terms["segmentation"]
    if config.use_attention:
        if outputs.decoder_attentions is None:
            raise ValueError("use_attention needs decoder attentions: run the model with output_attentions=True")
        terms.update(_attention_terms(outputs.decoder_attentions, targets, targets.text_to_part,
                                      targets.text_to_object, config))
        total = total + config.sep_lambda * terms["loss_sep"] + config.enh_lambda * terms["loss_enh"]
    return _finish(terms, total, empty, config)


# ----------------------------------------------------------------------------- CLIPSeg baseline
def clipseg_loss(logits: Tensor, part_labels: Labels, ignore_index: int = -1,
                 config: LossConfig = LossConfig()) -> dict:
    """CLIPSeg baseline loss (SPEC §7): one weighted BCE over all pixels and all T+1 channels.

    logits [B,T+1,S,S] (object-specific classes, background last); part_labels as in
    :func:`build_targets`. Target = one-hot of the label on labelled pixels, background = 1 on every
    ignore pixel (unlabelled, part-less and unseen objects). Every image has S*S pixels, so the
    per-image mean and the batch mean coincide. Returns ``{"object_specific": L, "total": L}``.
    """
    t = logits.shape[1] - 1
    tgt = _stack_resized(part_labels, logits.shape[-1]).to(logits.device)
    if logits.shape[-2] != logits.shape[-1] or tgt.shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} must be square and match {tgt.shape[0]} label maps")
    _check_labels(tgt, t, ignore_index, "part_labels")
    mask = tgt != ignore_index
    per_pixel = _pixel_bce(logits, tgt, mask, _class_weights(t + 1, config.background_weight, logits), ~mask)
    g = lambda x: _group_sum(x, config.per_image)  # noqa: E731
    loss = (g(per_pixel) / (g(torch.ones_like(per_pixel)) * (t + 1))).mean()
    return {"object_specific": loss, "total": loss}
