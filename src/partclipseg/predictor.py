"""The Predictor: embed an image once, answer any number of vocabularies and prompts (the SAM pattern).

    predictor = Predictor.from_pretrained("path/to/model")
    predictor.set_image("dog.jpg")                       # vision tower runs once
    result = predictor.predict(["dog's head", "dog's leg", "dog's tail"])   # Pred-All
    result = predictor.predict(vocab, point=(120, 80))   # the parts of the object under the point

Text features are cached per vocabulary (a new image with the same vocabulary re-encodes no text),
and the decoder output of the last (image, vocabulary) pair is kept, so changing only the prompt
re-runs post-processing alone (box and point prompts also reuse the object head's image-size argmax:
clicks on one image pay for it once). For large vocabularies the model may keep that output as ``LazyLogits``
(``model.decode_for_inference``: token-grid features, the heads run on the channels a protocol
reads); the protocols read every map in bounded chunks at image size, so memory stays bounded at any
image size and vocabulary size.

Modes of ``predict`` (the prompt decides; ``protocol`` may name it explicitly):

* **pred-all** (no prompt): the object head's argmax picks, per pixel, an object or background; the
  pixel gets the best part of that object (SPEC §4.2).
* **oracle-obj** (``object_name`` given, ``object_mask`` optional): every pixel gets the best part of
  the given object(s) (SPEC §4.1); with ``object_mask`` the pixels outside the mask are background.
* **mask** (``object_mask`` without ``object_name``): the object with the highest mean object score
  inside the mask is chosen; the mask's pixels get that object's best part.
* **box** ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive): the object with the highest mean object
  score inside the box is chosen; its region is the box's pixels where the object head (Pred-All)
  picks that object; the region gets the object's parts, the rest is background.
* **point** ``(x, y)``: the object with the highest object score at the point is chosen; its region is
  the 8-connected area around the point where the object head picks that object.

When the object head's region of a box or point is tiny (under 10% of the box / 0.5% of the image,
at least 16 pixels), the region falls back to the chosen object's own score map (pixels at or above its
Otsu threshold; for a point, the area around it, or around the nearest high pixel when the point itself
is low, so the point may then lie outside), then to the whole box; for a point, to the larger of the
two regions unless it is a speck, else a small window at the point (``postprocess.box_region`` and
``point_region``). The result's ``region_rule`` names the rule used (``PartSegmentation.note`` says it
in words, as it does for Oracle-Obj without a mask, where every pixel gets a part of the object).
"""
from __future__ import annotations

import operator
import os
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch

from .dist import resolve_device
from .errors import PartCLIPSegError
from .evaluation import PROTOCOLS
from .model import EncodedVocabulary, ImageFeatures, PartSegmentationModel, SegmentationOutput
from .model.base import PRED_ALL_RULES
from .postprocess import (ProtocolOutput, ScoreResizedLogits, box_region, mean_scores_inside, object_conditioned,
                          object_labels_of, point_region, pred_all, pred_all_classes, scores_at, single_head,
                          upsample)
from .preprocess import load_image
from .result import PartSegmentation
from .tokenizer import get_tokenizer
from .vocabulary import Vocabulary

__all__ = ["EncodedVocabulary", "PROTOCOLS", "Predictor", "as_predictor", "segment_parts"]


class Predictor:
    """Wraps any ``PartSegmentationModel``; see the module docstring. ``chunk_size`` bounds classes
    decoded at once. The Predictor only uses the model interface (``model/base.py``): it never asks
    which architecture it holds.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``; ``None``: leave the
    model where it is) moves the model there (in place). A device that does not exist here (CUDA on a
    CPU-only PyTorch, ``cuda:3`` on a one-GPU machine, MPS off a Mac, an unknown name) is a one-line
    ``PartCLIPSegError``, the check ``partclipseg segment --device`` makes."""

    def __init__(self, model: PartSegmentationModel, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, chunk_size: int | None = 32, max_cached_vocabularies: int = 8):
        device = check_device(device)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval()
        self.config = model.config
        self.chunk_size = chunk_size
        self.max_cached_vocabularies = max_cached_vocabularies
        self._text_cache: OrderedDict[tuple[str, ...], EncodedVocabulary] = OrderedDict()
        self._images: list[np.ndarray] = []
        self._features: ImageFeatures | None = None
        self._decoded: tuple[tuple[str, ...], SegmentationOutput] | None = None
        # the object head's argmax of the last prompted image of the kept decoder output: (image index,
        # labels [H, W]); cleared whenever that output changes (set_images, _decode)
        self._object_labels: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_pretrained(cls, source=None, *, device=None, dtype=None, **kwargs) -> "Predictor":
        """A Predictor on a saved folder / hub id / official ``.pth`` (``None``: the built-in default model).
        ``device`` is checked before the model is loaded (see the class docstring)."""
        from .weights import load_default_model, load_pretrained

        check_device(device)  # a missing device fails before any loading or download
        model = load_default_model() if source is None else load_pretrained(source)
        return cls(model, device=device, dtype=dtype, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ images
    def set_image(self, image: Any) -> None:
        """Embed one image (path, PIL image, HWC array or tensor; see ``preprocess.load_image``)."""
        self.set_images([image])

    @torch.inference_mode()
    def set_images(self, images: Sequence[Any]) -> None:
        """Embed a batch of images; ``predict(image_index=i)`` then answers for image ``i``. If an image
        cannot be read, the error leaves no image set (no answer for the images set before)."""
        self._images, self._features, self._decoded, self._object_labels = [], None, None, None
        arrays = [load_image(image) for image in images]
        if not arrays:
            raise PartCLIPSegError("no images given")
        pixels = self.model.preprocess(arrays)
        self._features = self.model.encode_image(pixels.to(self.device))
        self._images = arrays
        self._decoded = self._object_labels = None

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_vocabulary(self, vocabulary: Vocabulary | str | Sequence[str]) -> EncodedVocabulary:
        """Tokenise and encode a vocabulary's prompts once (LRU-cached by class names)."""
        vocab = vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary.parse(vocabulary)
        key = vocab.object_specific_classes
        cached = self._text_cache.get(key)
        if cached is not None:
            self._text_cache.move_to_end(key)
            return cached
        encoded = self.model.encode_vocabulary(vocab, get_tokenizer())
        self._text_cache[key] = encoded
        while len(self._text_cache) > self.max_cached_vocabularies:
            self._text_cache.popitem(last=False)
        return encoded

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def _decode(self, encoded: EncodedVocabulary) -> SegmentationOutput:
        """Decoder output for all embedded images and this vocabulary (the last pair is kept)."""
        key = encoded.vocabulary.object_specific_classes
        if self._decoded is not None and self._decoded[0] == key:
            return self._decoded[1]
        if self._features is None:
            raise PartCLIPSegError("no image set: call set_image() first")
        out = self.model.decode_for_inference(self._features, encoded, chunk_size=self.chunk_size)
        self._decoded, self._object_labels = (key, out), None
        return out

    # ------------------------------------------------------------------ prediction
    @torch.inference_mode()
    def predict(self, vocabulary: Vocabulary | str | Sequence[str], *, protocol: str | None = None,
                object_mask: np.ndarray | None = None, object_name: str | Sequence[str] | None = None,
                box: Sequence[float] | None = None, point: Sequence[float] | None = None,
                return_scores: bool = False, attention_for: Sequence[str] | None = None,
                image_index: int = 0, pred_all_rule: str | None = None) -> PartSegmentation:
        """Segment the parts of image ``image_index`` for ``vocabulary``; see the module docstring.

        ``pred_all_rule`` (Pred-All only; ``None``: the model's own, ``SegmentationOutput.pred_all_rule``):
        ``"object-head"`` (PartCLIPSeg's gating, SPEC §4.2) or ``"class-argmax"`` (PartCATSeg's rule), to
        compare the two on one model with an object head.
        """
        if pred_all_rule is not None and pred_all_rule not in PRED_ALL_RULES:
            raise PartCLIPSegError(f"unknown pred_all_rule {pred_all_rule!r}; expected one of {PRED_ALL_RULES}")
        encoded = self.encode_vocabulary(vocabulary)
        vocab = encoded.vocabulary
        if not self._images:
            raise PartCLIPSegError("no image set: call set_image() first")
        if not 0 <= image_index < len(self._images):
            raise PartCLIPSegError(f"image_index {image_index} out of range ({len(self._images)} image(s) set)")
        image = self._images[image_index]
        size = image.shape[:2]
        mode = check_prompt_arguments(protocol, object_mask, object_name, box, point)
        if pred_all_rule is not None and mode != "pred-all":
            raise PartCLIPSegError(f"pred_all_rule applies to Pred-All only, not to a '{mode}' prediction")
        out = self._decode(encoded)
        if pred_all_rule is not None and not out.has_object_head:
            raise PartCLIPSegError(f"this model ({type(self.model).__name__}) has no object head: its Pred-All has "
                                   f"one rule (argmax over its classes), so pred_all_rule does not apply")
        logits, object_part_logits = _image_logits(out, image_index)
        selected = None
        rule = _DIRECT_REGION_RULE[mode] if mode != "oracle-obj" or object_mask is None else "mask"
        if not out.has_object_head:
            result = self._single_head(logits, encoded, size, mode, object_mask, object_name, return_scores)
            if mode == "oracle-obj":
                selected = ", ".join(vocab.objects[o] for o in self._oracle(vocab, object_name)[1])
        elif mode == "pred-all" and (pred_all_rule or out.pred_all_rule) == "class-argmax":
            result = pred_all_classes(object_part_logits, encoded.text_to_part, encoded.text_to_object,
                                      vocab.num_parts, vocab.num_objects, size, return_scores)
        elif mode == "pred-all":
            result = pred_all(logits, object_part_logits, encoded.text_to_object, vocab.num_parts, size, return_scores)
        else:
            objects, region, rule = self._objects_and_region(mode, vocab, logits, size, object_mask, object_name,
                                                             box, point, image_index)
            classes = self._oracle(vocab, object_name)[0] if mode == "oracle-obj" else None
            selected = ", ".join(vocab.objects[o] for o in objects)
            result = object_conditioned(logits, object_part_logits, encoded.text_to_object,
                                        vocab.num_parts, size, objects, region, return_scores, classes)
        segmentation = _to_result(result, vocab, image, mode, selected, rule)
        for name in attention_for or ():
            segmentation.attention[name] = self._attention_map(encoded, name, segmentation, image_index)
        return segmentation

    def predict_batch(self, images: Sequence[Any], vocabulary, *, batch_size: int = 4, **kwargs) -> list[PartSegmentation]:
        """Embed and segment many images, ``batch_size`` at a time (same vocabulary and options)."""
        images = _batch_of_images(images)
        try:  # an int, numpy or torch integer; not a bool
            size = 0 if isinstance(batch_size, bool) else operator.index(batch_size)
        except TypeError:
            size = 0
        if size < 1:
            raise PartCLIPSegError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        batch_size = size
        if "image_index" in kwargs:
            raise PartCLIPSegError("predict_batch answers for every image it is given: no image_index")
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            self.set_images(chunk)
            results.extend(self.predict(vocabulary, image_index=i, **kwargs) for i in range(len(chunk)))
        return results

    # ------------------------------------------------------------------ helpers
    def _objects_and_region(self, mode, vocab: Vocabulary, logits, size, object_mask, object_name, box, point,
                            image_index: int):
        """(chosen objects, region bool [H, W] or None, region rule) of a prompt (see the module docstring);
        ``logits`` are image ``image_index``'s in the kept decoder output."""
        region = None
        if object_mask is not None:
            region = _mask_tensor(object_mask, size, self.device)
        if mode == "oracle-obj":
            return self._oracle(vocab, object_name)[1], region, "whole-image" if region is None else "mask"
        object_logits = logits[vocab.num_parts:-1]  # [O, s, s] (no background); upsampled in bounded chunks
        if mode == "mask":
            if not bool(region.any()):
                raise PartCLIPSegError("the object mask is empty")
            return [int(mean_scores_inside(object_logits, size, region).argmax())], region, "mask"
        object_labels = self._object_labels_of(logits, vocab, size, image_index)
        if mode == "box":
            x0, y0, x1, y1 = _check_box(box, size)
            inside = torch.zeros(size, dtype=torch.bool, device=self.device)
            inside[y0:y1, x0:x1] = True
            best = int(mean_scores_inside(object_logits, size, inside).argmax())
            region, rule = box_region(object_labels, self._object_score(object_logits, best, size), best,
                                      (x0, y0, x1, y1))
            return [best], region, rule
        x, y = _check_point(point, size)
        best = int(scores_at(object_logits, size, y, x).argmax())
        region, rule = point_region(object_labels, self._object_score(object_logits, best, size), best, (y, x))
        return [best], region, rule

    def _object_labels_of(self, logits, vocab: Vocabulary, size, image_index: int):
        """The object head's argmax [H, W] (``O`` = background), kept for the next prompt on the same image
        and vocabulary (clicks on one image pay for it once; int16 for up to 32766 objects)."""
        if self._object_labels is not None and self._object_labels[0] == image_index:
            return self._object_labels[1]
        labels = object_labels_of(logits, vocab.num_parts, size)
        labels = labels.to(torch.int16 if vocab.num_objects < 2**15 - 1 else torch.int32)
        self._object_labels = (image_index, labels)
        return labels

    @staticmethod
    def _object_score(object_logits: torch.Tensor, index: int, size) -> torch.Tensor:
        """The sigmoid score [H, W] of one object at image size."""
        return upsample(object_logits[index:index + 1], size).sigmoid_()[0]

    def _single_head(self, logits, encoded: EncodedVocabulary, size, mode, object_mask, object_name, keep_scores):
        """A model without an object head (the CLIPSeg baseline): Pred-All and Oracle-Obj only."""
        vocab = encoded.vocabulary
        if mode not in PROTOCOLS:
            raise PartCLIPSegError(f"this model ({type(self.model).__name__}) has no object head: '{mode}' prompts "
                                   f"need a model with one (e.g. PartCLIPSeg)")
        objects = region = classes = None
        if mode == "oracle-obj":
            classes, objects = self._oracle(vocab, object_name)
            if object_mask is not None:
                region = _mask_tensor(object_mask, size, self.device)
        return single_head(logits, encoded.text_to_part, encoded.text_to_object, vocab.num_parts, vocab.num_objects,
                           size, objects, region, keep_scores, classes)

    def _oracle(self, vocab: Vocabulary, object_name: str | Sequence[str]) -> tuple[list[int], list[int]]:
        """Oracle-Obj's (kept classes, their objects) by the model's rule (``model.oracle_classes``: exact
        object names for the PartCLIPSeg family, the official substring rule for PartCATSeg)."""
        names = [object_name] if isinstance(object_name, str) else list(object_name)
        classes = self.model.oracle_classes(vocab, names)
        return classes, sorted({vocab.text_to_object[t] for t in classes})

    @torch.inference_mode()
    def _attention_map(self, encoded: EncodedVocabulary, name: str, seg: PartSegmentation, image_index: int):
        """Head-averaged last-layer decoder attention for a class (the paper's Fig. A2), [H, W] in [0, 1].

        The model gives the token-to-token attention of the class (``attention_map``; PartCLIPSeg: mean
        of the part's and the object's conditions); the query tokens are those inside
        the class's predicted region (all tokens if it is empty); the key map is min-max normalised and
        upsampled bilinearly to the image.
        """
        t = encoded.vocabulary.index(name)
        features = self._features.select(slice(image_index, image_index + 1))
        attn = self.model.attention_map(features, encoded, t)[0]  # [g*g queries, g*g keys]
        g = int(round(attn.shape[0] ** 0.5))
        region = torch.as_tensor(seg.part_labels == t)[None, None].float()
        queries = torch.nn.functional.interpolate(region, size=(g, g), mode="nearest")[0, 0].flatten() > 0
        heat = attn[queries].mean(0) if bool(queries.any()) else attn.mean(0)
        heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-9)
        return upsample(heat.view(1, g, g), seg.size)[0].clamp(0, 1).cpu().numpy()


def _image_logits(out: SegmentationOutput, index: int):
    """Image ``index``'s (logits, object_part_logits) as the protocols read them: cropped to its
    ``valid_sizes`` frame; with ``resize_scores`` wrapped as ``ScoreResizedLogits`` (the protocols then
    resize sigmoid scores, in the same bounded chunks as logits)."""
    maps = [out.logits[index], None if out.object_part_logits is None else out.object_part_logits[index]]
    if out.valid_sizes is not None:
        h, w = out.valid_sizes[index]
        maps = [None if m is None else m[:, :h, :w] for m in maps]
    if out.resize_scores:
        maps = [None if m is None else ScoreResizedLogits(m) for m in maps]
    return maps[0], maps[1]


# ---------------------------------------------------------------------------- validation helpers
_ONE_IMAGE = "predict_batch takes a list of images; for one image use set_image() and predict()"


_UNAMBIGUOUS = ("pass a list of 2-D arrays (list(images)) or add a channel axis (images[..., None], "
                "N x H x W x 1)")


def _batch_of_images(images) -> Sequence[Any]:
    """``images`` as something ``predict_batch`` can slice, or a one-line error when it is one image.

    A list or tuple of images, a 4-D array or tensor (N images of HWC or CHW), a 3-D stack of N
    grayscale images (N, H, W) whose first and last dimensions are not 1, 3 or 4 (else it reads as one
    HWC or CHW image, as :func:`~partclipseg.preprocess.load_image` reads it: the error says so and how
    to pass such grayscale images), or any other iterable of images (a generator: read into a list)."""
    if isinstance(images, (str, bytes, os.PathLike)) or hasattr(images, "getpixel"):  # a path or a PIL image
        raise PartCLIPSegError(_ONE_IMAGE)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        shape = tuple(images.shape)
        if len(shape) < 3:
            raise PartCLIPSegError(f"{_ONE_IMAGE} (an array of shape {shape} is not a stack of images: a stack "
                                   f"is N x H x W x C, N x C x H x W, or N x H x W grayscale with N and W not "
                                   f"1, 3 or 4)")
        if len(shape) == 3 and shape[-1] in (1, 3, 4):
            raise PartCLIPSegError(f"{_ONE_IMAGE} (an array of shape {shape} reads as one H x W x {shape[-1]} "
                                   f"image; for {shape[0]} grayscale images {shape[-1]} pixels wide, "
                                   f"{_UNAMBIGUOUS})")
        if len(shape) == 3 and shape[0] in (1, 3, 4):
            raise PartCLIPSegError(f"{_ONE_IMAGE} (an array of shape {shape} is ambiguous: one {shape[0]} x H x W "
                                   f"image or N = {shape[0]} grayscale H x W images; a 3-D array whose first axis "
                                   f"is 1, 3 or 4 is read as one CHW image. For grayscale images, {_UNAMBIGUOUS})")
        if len(shape) > 4:
            raise PartCLIPSegError(f"predict_batch takes at most 4-D arrays of images, got shape {shape}")
        return images
    if isinstance(images, (list, tuple)):
        return images
    try:
        return list(images)
    except TypeError:
        raise PartCLIPSegError(f"{_ONE_IMAGE} (got {type(images).__name__})") from None


def check_prompt_arguments(protocol=None, object_mask=None, object_name=None, box=None, point=None) -> str:
    """The checks of a prediction's prompts that need no image: the protocol, which prompts go together,
    an object mask with at least one pixel set, a non-empty object name, a box of four finite numbers
    with 0 <= x0 < x1 and 0 <= y0 < y1, a point of two finite numbers >= 0. Returns the mode ("pred-all",
    "oracle-obj", "mask", "box", "point"); raises ``PartCLIPSegError`` with one line otherwise. Whether a
    box or point lies inside the image is checked per image (``predict``). ``partclipseg segment`` runs this before it touches its output folder."""
    mode = _check_prompts(protocol, object_mask, object_name, box, point)
    if object_mask is not None and not bool(object_mask.any() if isinstance(object_mask, torch.Tensor)
                                            else np.asarray(object_mask).any()):
        raise PartCLIPSegError("the object mask is empty")
    if object_name is not None:
        names = [object_name] if isinstance(object_name, str) else object_name
        try:
            names = list(names)
        except TypeError:
            raise PartCLIPSegError(f"object_name must be an object name or a list of them, got {object_name!r}") from None
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise PartCLIPSegError(f"object_name must be a non-empty object name or a non-empty list of them, "
                                   f"got {object_name!r}")
    if box is not None:
        x0, y0, x1, y1 = _numbers(box, 4, "box", "x0,y0,x1,y1")
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise PartCLIPSegError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is not a non-empty box: need 0 <= x0 < x1 and "
                                   f"0 <= y0 < y1 (x0,y0 = top-left corner, x1,y1 = bottom-right corner)")
    if point is not None:
        x, y = _numbers(point, 2, "point", "x,y")
        if x < 0 or y < 0:
            raise PartCLIPSegError(f"point {x:g},{y:g} is outside the image (a negative coordinate)")
    return mode


def _numbers(values, count: int, what: str, form: str) -> list[float]:
    """``count`` finite numbers from ``values`` or a one-line error naming ``what``."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PartCLIPSegError(f"{what} must be {count} numbers {form}, got {values!r}") from None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise PartCLIPSegError(f"{what} must be {count} finite numbers {form}, got {values!r}")
    return numbers


def _check_prompts(protocol, object_mask, object_name, box, point) -> str:
    if protocol is not None and protocol not in PROTOCOLS:
        raise PartCLIPSegError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    prompts = [n for n, v in (("object_mask", object_mask), ("box", box), ("point", point)) if v is not None]
    if len(prompts) > 1:
        raise PartCLIPSegError(f"give at most one of object_mask, box and point (got {', '.join(prompts)})")
    if object_name is not None:
        if prompts and prompts[0] != "object_mask":
            raise PartCLIPSegError("object_name goes with object_mask (or alone), not with a box or a point")
        mode = "oracle-obj"
    elif prompts:
        mode = {"object_mask": "mask", "box": "box", "point": "point"}[prompts[0]]
    else:
        mode = "pred-all"
    if protocol == "oracle-obj" and mode != "oracle-obj":
        raise PartCLIPSegError("the oracle-obj protocol needs the object: object_name= (--object on the command "
                               "line)")
    if protocol == "pred-all" and mode != "pred-all":
        raise PartCLIPSegError(f"the pred-all protocol takes no prompt (got {mode})")
    return mode


def _mask_tensor(mask, size, device) -> torch.Tensor:
    """An object mask (any non-zero grey, colour or alpha value = object; see ``masks``) -> bool [H, W]."""
    from .masks import mask_from_array

    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = mask_from_array(mask)
    if array.shape != tuple(size):
        raise PartCLIPSegError(f"object mask is {array.shape[1]}x{array.shape[0]} (WxH) but the image is "
                               f"{size[1]}x{size[0]}")
    return torch.as_tensor(array, device=device)


def _check_box(box, size) -> tuple[int, int, int, int]:
    h, w = size
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise PartCLIPSegError(f"box must be four numbers x0,y0,x1,y1, got {box!r}") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise PartCLIPSegError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is not a non-empty box inside the {w}x{h} image "
                               f"(need 0 <= x0 < x1 <= {w}, 0 <= y0 < y1 <= {h})")
    return int(x0), int(y0), max(int(np.ceil(x1)), int(x0) + 1), max(int(np.ceil(y1)), int(y0) + 1)


def _check_point(point, size) -> tuple[int, int]:
    h, w = size
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise PartCLIPSegError(f"point must be two numbers x,y, got {point!r}") from None
    if not (0 <= x < w and 0 <= y < h):
        raise PartCLIPSegError(f"point {x:g},{y:g} is outside the {w}x{h} image")
    return int(x), int(y)


#: The region rule of the modes whose region does not depend on the scores.
_DIRECT_REGION_RULE = {"pred-all": None, "oracle-obj": "whole-image", "mask": "mask", "box": None, "point": None}


def _to_result(out: ProtocolOutput, vocab: Vocabulary, image: np.ndarray, mode: str,
               selected: str | None, region_rule: str | None = None) -> PartSegmentation:
    def np_(t):
        return None if t is None else t.cpu().numpy()

    return PartSegmentation(vocab, image, np_(out.part_labels), np_(out.object_labels),
                            np_(out.generalized_part_labels), np_(out.part_confidence), mode, selected,
                            np_(out.part_scores), np_(out.object_scores), np_(out.generalized_part_scores),
                            region_rule=region_rule)


def check_device(device: str | torch.device | int | None) -> str | None:
    """``device`` (a name, a ``torch.device`` or a CUDA index) as a device name that exists here, ``None``
    for ``None``; else a one-line ``PartCLIPSegError`` (``dist.resolve_device``, the check of
    ``--device``: CUDA needs a CUDA build and a GPU of that index, MPS needs MPS, other devices are
    refused), naming ``device=``."""
    return None if device is None else resolve_device(device, option="device=")


def _same_device(wanted: str, have: torch.device) -> bool:
    """Whether a checked device name is the device ``have`` (``"cuda"``: the current CUDA device)."""
    want = torch.device(wanted)
    if want.type != have.type:
        return False
    if want.index is None and want.type == "cuda":
        want = torch.device("cuda", torch.cuda.current_device())
    return want.index is None or have.index is None or want.index == have.index


def as_predictor(model: Any = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> Predictor:
    """A Predictor for ``model``: a Predictor (returned as is), a model (wrapped, moved to ``device`` /
    ``dtype`` when given), a folder / hub id / ``.pth``, or None for the built-in default model."""
    if isinstance(model, Predictor):
        return model
    if isinstance(model, PartSegmentationModel):
        return Predictor(model, device=device, dtype=dtype)
    return Predictor.from_pretrained(model, device=device, dtype=dtype)


def segment_parts(image: Any, parts: Vocabulary | str | Sequence[str], model: Any = None, *,
                  device: str | torch.device | None = None, **kwargs) -> list[dict]:
    """One call: ``[{"label", "mask", "score"}]`` for the parts found in ``image`` (HF pipeline shape).

    ``model``: a Predictor, a model, a folder / hub id / ``.pth``, or None for the built-in default.
    ``device``: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``).
    ``None`` (the default) leaves the model where it is: on the CPU for a model loaded from a name,
    folder or file; a model passed in stays on its device. A model passed in is moved to ``device``
    in place (as ``Predictor(model, device=...)`` does). A Predictor passed in is not moved: a
    ``device`` other than the Predictor's is a ``PartCLIPSegError`` (build the Predictor on that
    device instead). A device that does not exist here is a one-line ``PartCLIPSegError``.
    Other keyword arguments go to ``Predictor.predict`` (prompts, protocol).
    """
    if device is not None:
        checked = check_device(device)
        if isinstance(model, Predictor) and not _same_device(checked, model.device):
            raise PartCLIPSegError(f"segment_parts: device={checked!r} but the Predictor passed as model is on "
                                   f"{model.device}; leave device out to use it there, or build the Predictor on "
                                   f"{checked} (Predictor.from_pretrained(..., device={checked!r}))")
    predictor = as_predictor(model, device)
    predictor.set_image(image)
    return predictor.predict(parts, **kwargs).segments()
