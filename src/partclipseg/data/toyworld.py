"""A procedural "toy world": cartoon animals and vehicles with part labels, in the Pascal-Part-116 layout.

It lets the whole pipeline (language-image pretraining, part training, evaluation, the zero-shot
split) run with no download. Images are 320-640 px a side by default (``size_range``), with textures
and outlines scaled to the image so that parts look alike at any size.

Vocabulary (``toy_world``, :func:`build_vocabulary_json`, shipped as ``resources/vocab/toy_world.json``):
eight objects built from *shared* part types, plus two objects without parts (distractors)::

    bicycle: wheel, saddle, handlebar           bird: head, torso, wing, tail, leg
    bus*:    body, window, door, wheel          car:  body, window, door, wheel
    cat:     head, ear, torso, leg, tail        cow*: head, ear, torso, leg, tail
    dog:     head, ear, torso, leg, tail        horse: head, torso, leg, tail
    ball, box: no part classes                  (* = unseen objects)

Every part of an unseen object exists, as a part name, on some seen object, and part *types* are
drawn alike on every object (heads are discs at the front, legs thin bars under the torso, tails
thin curved strokes, ears small triangles on the head, wheels dark discs at the bottom, windows light
panes at the top, doors panels with seams, wings triangles on the torso...), while objects differ by
shape, proportions and colour palette. That is what makes the unseen objects' parts learnable.

Layout written by :func:`generate_toy_world` (the Pascal-Part-116 layout of
:class:`~partclipseg.data.pascal_part.PascalPart116`)::

    ToyWorld/
      images/{train,val}/<id>.jpg                     RGB, JPEG quality 95
      annotations_detectron2_part/{train,val}/<id>.png  8-bit object-specific labels, 255 = bg / unlabelled
      annotations_detectron2_obj/{train,val}/<id>.png   8-bit object labels, 255 = background
      annotations_detectron2_part/val_obj_label_count.json   {"<id>.png": [object ids]}
      annotations_detectron2_part/val_part_label_count.json  {"<id>.png": [part ids]}
      captions/{train,val}.json                        {"<id>": [{"object", "colour", "texture"}, ...]}

``captions/`` holds object-level caption words per object, back to front (the colour of its largest
painted shape named by the nearest of ``COLOUR_WORDS``, its texture by ``TEXTURE_WORDS``): what toy
language-image pretraining (:mod:`partclipseg.train.pretrain`) turns into sentences. No part words.

Each image holds 1-3 objects (later ones may occlude earlier ones) on a flat, gradient, noise or
sky/ground background, with varied colours, textures, sizes and poses (horizontal flip, small
rotation, scale and aspect jitter, leg stride, head and tail pose). Some object pixels are left
unlabelled (255 in the part map, inside the object map): "other" regions (a horse's neck and mane, a
cow's horns, a bird's beak, a bicycle's frame, lights and bumpers) and, on some objects, the outline.
Unseen objects appear in training images too (the training mapper turns them into background).
Generation is deterministic given the seed, and image ``k`` of a split does not depend on how many
images are asked for.

Command line: ``python -m partclipseg.data.toyworld OUT [--train N] [--val N] [--seed S] [--min-size A]
[--max-size B] [--workers W]``.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..vocabulary import Vocabulary
from .common import DatasetError
from .toy_reader import FOLDER_NAME, NAME, ToyWorld  # noqa: F401  (the reader, re-exported)
from ..io import json_text

__all__ = [
    "COLOUR_WORDS",
    "FOLDER_NAME",
    "OBJECTS_WITHOUT_PARTS",
    "OBJECT_PARTS",
    "UNSEEN_OBJECTS",
    "TEXTURE_WORDS",
    "ToyWorld",
    "build_vocabulary_json",
    "generate_toy_world",
    "main",
    "render_contact_sheet",
    "vocabulary_json_path",
    "vocabulary_json_text",
    "write_vocabulary_json",
]

IGNORE_LABEL = 255

#: object -> its part classes, in label order (objects in alphabetical order)
OBJECT_PARTS: dict[str, tuple[str, ...]] = {
    "bicycle": ("wheel", "saddle", "handlebar"),
    "bird": ("head", "torso", "wing", "tail", "leg"),
    "bus": ("body", "window", "door", "wheel"),
    "car": ("body", "window", "door", "wheel"),
    "cat": ("head", "ear", "torso", "leg", "tail"),
    "cow": ("head", "ear", "torso", "leg", "tail"),
    "dog": ("head", "ear", "torso", "leg", "tail"),
    "horse": ("head", "torso", "leg", "tail"),
}
#: objects drawn as distractors, without part classes (like Pascal's chair)
OBJECTS_WITHOUT_PARTS: tuple[str, ...] = ("ball", "box")
#: the zero-shot split: objects never labelled in training
UNSEEN_OBJECTS: tuple[str, ...] = ("bus", "cow")


# ============================================================================ vocabulary JSON
def _model_vocabulary(names: list[str]) -> dict:
    vocab = Vocabulary.from_names(names)
    return {
        "generalized_part_classes": list(vocab.parts),
        "object_classes_with_parts": list(vocab.objects),
        "text_prompts": list(vocab.prompts),
        "object_specific_to_generalized_part_index": list(vocab.text_to_part),
        "object_specific_to_object_with_parts_index": list(vocab.text_to_object),
        "C_text": vocab.num_text_classes,
        "C_part": vocab.num_parts,
        "C_obj": vocab.num_objects,
        "N_generalized_head_channels": vocab.num_decoder_classes,
        "N_object_specific_head_channels": vocab.num_text_classes + 1,
    }


def build_vocabulary_json() -> dict:
    """The ``toy_world`` vocabulary, with the schema of the shipped benchmark JSONs (e.g. Pascal-Part-116)."""
    classes = [f"{obj}'s {part}" for obj in sorted(OBJECT_PARTS) for part in OBJECT_PARTS[obj]]
    objects = sorted(set(OBJECT_PARTS) | set(OBJECTS_WITHOUT_PARTS))
    unseen_objects = sorted(UNSEEN_OBJECTS)
    seen_objects = [o for o in objects if o not in unseen_objects]
    seen_idx = [i for i, c in enumerate(classes) if c.split("'s", 1)[0] not in unseen_objects]
    unseen_idx = [i for i in range(len(classes)) if i not in seen_idx]
    seen_classes = [classes[i] for i in seen_idx]
    unseen_classes = [classes[i] for i in unseen_idx]
    test_vocab = _model_vocabulary(classes)
    train_vocab = _model_vocabulary(seen_classes)
    n_cls, n_obj = len(classes), len(objects)
    return {
        "dataset": "ToyWorld",
        "source": {
            "generator": "partclipseg.data.toyworld.build_vocabulary_json (procedural toy world, no external data)",
            "images": "partclipseg.data.toyworld.generate_toy_world",
        },
        "ignore_label": IGNORE_LABEL,
        "class_name_format": (
            "object-specific class names are \"<object>'s <part>\"; object = text before the first \"'s\" "
            "(stripped), part = text after it (stripped); CLIPSeg-baseline prompt = name with every \"'s\" "
            "removed (e.g. \"dog's head\" -> \"dog head\"); PartCLIPSeg prompts = bare generalized-part names "
            "followed by bare object names, no template"
        ),
        "counts": {
            "object_specific_classes": n_cls,
            "seen_object_specific_classes": len(seen_classes),
            "unseen_object_specific_classes": len(unseen_classes),
            "object_classes": n_obj,
            "seen_object_classes": len(seen_objects),
            "unseen_object_classes": len(unseen_objects),
            "object_classes_with_parts": test_vocab["C_obj"],
        },
        "object_specific_classes": classes,
        "object_classes": objects,
        "seen_object_classes": seen_objects,
        "unseen_object_classes": unseen_objects,
        "object_classes_without_part_classes": sorted(OBJECTS_WITHOUT_PARTS),
        "seen_object_specific_classes": seen_classes,
        "seen_object_specific_class_indices": seen_idx,
        "unseen_object_specific_classes": unseen_classes,
        "unseen_object_specific_class_indices": unseen_idx,
        "evaluation_set": {
            "base": seen_idx,
            "note": "indices into object_specific_classes; 'base' = seen, everything else = unseen ('unbase')",
        },
        "train_label_remap": {
            "note": "applied by the training data mapper only: object-specific label i -> index of that name in "
                    "seen_object_specific_classes, object label j -> index in seen_object_classes; every value "
                    "not listed becomes ignore_label",
            "object_specific": {str(i): k for k, i in enumerate(seen_idx)},
            "object": {str(objects.index(o)): k for k, o in enumerate(seen_objects)},
        },
        "model_vocabulary_test": test_vocab,
        "model_vocabulary_train": train_vocab,
        "registry_metadata_unused_by_model": {
            "part_classes": test_vocab["generalized_part_classes"],
            "part_base_classes": train_vocab["generalized_part_classes"],
            "note": "'part_classes'/'part_base_classes' as a dataset registration would set them; PartCLIPSeg "
                    "recomputes its own generalized part lists (model_vocabulary_*); only used for "
                    "visualisation colours",
        },
        "annotation_encoding": {
            "part_png": f"annotations_detectron2_part/{{train,val}}/<id>.png, single-channel 8-bit; value k in "
                        f"[0,{n_cls - 1}] = object_specific_classes[k]; 255 = background / unlabeled (ignore)",
            "object_png": f"annotations_detectron2_obj/{{train,val}}/<id>.png, single-channel 8-bit; value j in "
                          f"[0,{n_obj - 1}] = object_classes[j]; 255 = background (ignore)",
            "note": "written by partclipseg.data.toyworld.generate_toy_world; objects without part classes and "
                    "unlabelled object regions are 255 in the part PNG but labelled in the object PNG",
        },
    }


def vocabulary_json_text() -> str:
    """The exact text of the shipped ``toy_world.json``."""
    return json_text(build_vocabulary_json(), indent=1) + "\n"


def vocabulary_json_path() -> Path:
    """Where the package keeps ``toy_world.json`` (source checkout)."""
    return Path(__file__).resolve().parent.parent / "resources" / "vocab" / f"{NAME}.json"


def write_vocabulary_json(path: str | Path | None = None) -> Path:
    """(Re)write ``toy_world.json`` (default: the package resource); returns its path."""
    path = Path(path) if path is not None else vocabulary_json_path()
    path.write_text(vocabulary_json_text(), encoding="utf-8")
    return path


# ============================================================================ geometry helpers
def _ellipse(cx: float, cy: float, rx: float, ry: float, rot: float = 0.0, n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _roundbox(cx: float, cy: float, rx: float, ry: float, p: float = 4.0, n: int = 32) -> np.ndarray:
    """A superellipse (|x/rx|^p + |y/ry|^p = 1): p=2 an ellipse, larger p a rounded box."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / p
    return np.stack([cx + rx * np.sign(c) * np.abs(c) ** e, cy + ry * np.sign(s) * np.abs(s) ** e], 1)


def _poly(*points: tuple[float, float]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return _poly((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def _bezier(p0, p1, p2, n: int = 10) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _stroke(points, w0: float, w1: float | None = None) -> np.ndarray:
    """A thick polyline (width tapering from ``w0`` to ``w1``) as one polygon."""
    pts = np.asarray(points, dtype=np.float64)
    widths = np.linspace(w0, w0 if w1 is None else w1, len(pts))[:, None]
    d = np.gradient(pts, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-d[:, 1], d[:, 0]], 1)
    return np.concatenate([pts + normal * widths / 2, (pts - normal * widths / 2)[::-1]])


# ============================================================================ shapes and palettes
# texture patterns (per object fields): 0 flat, 1 smooth noise, 2 stripes, 3 spots, 4 grain
FLAT, MOTTLED, STRIPES, SPOTS, GRAIN = range(5)


@dataclass
class _Shape:
    pts: np.ndarray  # polygon in object units
    part: str | None  # part name, None = unlabelled ("other")
    colour: np.ndarray  # RGB 0-255
    pattern: int = FLAT
    delta: np.ndarray | None = None  # colour change at pattern value 1
    alpha: float = 1.0  # < 1: see-through (keeps some of what is behind)


def _rgb(c) -> np.ndarray:
    return np.clip(np.asarray(c, dtype=np.float64), 0, 255)


def _jitter(c, rng: np.random.Generator, amount: float = 16.0) -> np.ndarray:
    return _rgb(np.asarray(c, dtype=np.float64) * rng.uniform(0.85, 1.15) + rng.uniform(-amount, amount, 3))


def _pick(options, rng: np.random.Generator):
    return options[int(rng.integers(len(options)))]


FUR = {
    "dog": [(150, 100, 55), (215, 170, 95), (70, 50, 35), (35, 30, 30), (235, 225, 210), (160, 150, 140)],
    "cat": [(225, 135, 50), (130, 130, 135), (40, 38, 40), (240, 235, 225), (200, 175, 140)],
    "horse": [(120, 70, 35), (165, 90, 45), (50, 35, 25), (215, 210, 205), (140, 130, 125), (90, 55, 35)],
    "cow": [(245, 245, 240), (150, 95, 55), (60, 45, 35), (200, 160, 115)],
}
BIRD = [(50, 110, 210), (210, 45, 40), (235, 200, 40), (60, 160, 70), (140, 100, 60), (90, 90, 100)]
VEHICLE = [(200, 30, 35), (30, 80, 190), (240, 240, 235), (40, 40, 45), (60, 150, 70), (235, 190, 30),
           (150, 155, 160), (230, 110, 30), (120, 40, 140)]
BUS = [(240, 190, 20), (200, 35, 35), (235, 235, 230), (35, 90, 180), (40, 140, 80)]
GLASS = [(170, 210, 235), (190, 220, 240), (150, 185, 210), (210, 225, 235)]


def _texture(rng: np.random.Generator, colour: np.ndarray, species: str) -> tuple[int, np.ndarray]:
    """A fur texture (pattern, colour delta) for an animal of ``species`` with main ``colour``."""
    r = rng.uniform()
    if species == "cow" and r < 0.65:
        return SPOTS, _rgb(_pick([(35, 30, 30), (120, 70, 40)], rng)) - colour
    if species == "cat" and r < 0.5:
        return STRIPES, -0.45 * colour
    if species == "dog" and r < 0.25:
        return SPOTS, _rgb(_pick([(40, 35, 30), (240, 235, 225)], rng)) - colour
    if r < 0.8:
        return MOTTLED, 0.18 * colour + 8
    return GRAIN, 0.08 * colour + 6


# ============================================================================ object builders
# Each builder gets (rng, min_w): min_w is the thinnest stroke, in object units, that stays >= ~2 px.
# Coordinates: x forward (the object faces +x), y down; shapes are listed back to front.

_QUAD = {  # torso length, height, roundness, leg length, leg width, head radius
    "dog": dict(L=1.0, H=0.42, p=2.6, leg=0.42, lw=0.11, r=0.2),
    "cat": dict(L=0.9, H=0.34, p=2.4, leg=0.36, lw=0.085, r=0.18),
    "horse": dict(L=1.1, H=0.44, p=2.5, leg=0.72, lw=0.1, r=0.0),
    "cow": dict(L=1.15, H=0.56, p=4.5, leg=0.42, lw=0.14, r=0.21),
}


def _quadruped(species: str, rng: np.random.Generator, min_w: float) -> list[_Shape]:
    q = _QUAD[species]
    L, H = q["L"] * rng.uniform(0.92, 1.08), q["H"] * rng.uniform(0.9, 1.1)
    fur = _jitter(_pick(FUR[species], rng), rng)
    pattern, delta = _texture(rng, fur, species)
    dark = _jitter((45, 35, 30), rng, 10)
    shade = 0.7
    shapes: list[_Shape] = []

    def fur_shape(pts, part, factor=1.0, colour=None):
        c = fur * factor if colour is None else colour
        return _Shape(pts, part, _rgb(c), pattern, None if delta is None else delta * factor)

    # tail (behind the torso)
    tx, ty = -L / 2 + 0.04, -H * 0.3
    if species == "dog":
        up = rng.uniform(0.1, 0.35)
        line = _bezier((tx, ty), (tx - 0.14, ty - 0.05), (tx - 0.2, ty - up))
        shapes.append(fur_shape(_stroke(line, max(0.07, min_w * 1.3), max(0.04, min_w)), "tail"))
    elif species == "cat":
        up = rng.uniform(0.2, 0.45)
        line = _bezier((tx, ty + 0.05), (tx - 0.38, ty + 0.1), (tx - 0.3, ty - up), n=12)
        shapes.append(fur_shape(_stroke(line, max(0.055, min_w * 1.2), max(0.045, min_w)), "tail"))
    elif species == "horse":
        mane = _jitter(_pick([(40, 30, 25), (90, 60, 35), (225, 215, 190)], rng), rng, 10)
        line = _bezier((tx, ty), (tx - 0.22, ty + 0.05), (tx - 0.14 - rng.uniform(0, 0.1), H / 2 + 0.3), n=12)
        shapes.append(_Shape(_stroke(line, max(0.06, min_w), 0.13), "tail", mane, MOTTLED, 0.2 * mane + 5))
    else:  # cow: thin hanging tail with a tuft
        end = (tx - 0.1, H / 2 + 0.12)
        line = _bezier((tx, ty), (tx - 0.12, ty + 0.15), end)
        shapes.append(fur_shape(_stroke(line, max(0.03, min_w), max(0.03, min_w)), "tail"))
        shapes.append(_Shape(_ellipse(end[0], end[1] + 0.03, 0.045, 0.07), "tail", dark))

    # legs: far pair (darker) then near pair, their tops hidden under the torso
    leg_len, lw = q["leg"] * rng.uniform(0.9, 1.1), max(q["lw"], min_w * 1.4)
    stride = rng.uniform(0.0, 0.35)
    xf, xb = L / 2 - 0.17 * L, -L / 2 + 0.17 * L
    legs = [(xb + 0.08 * L, shade, stride), (xf + 0.08 * L, shade, -stride), (xb, 1.0, -stride), (xf, 1.0, stride)]
    hoof = species in ("horse", "cow")
    for x, factor, angle in legs:
        top = np.array([x, H * 0.1])
        bottom = top + leg_len * np.array([math.sin(angle * 0.6), math.cos(angle * 0.6)])
        shapes.append(fur_shape(_stroke([top, bottom], lw, lw * 0.8), "leg", factor))
        if hoof:
            shapes.append(_Shape(_stroke([top + 0.86 * (bottom - top), bottom + 0.02 * (bottom - top)], lw * 0.95),
                                 "leg", dark * factor))
        elif species == "dog" and rng.uniform() < 0.3:  # white socks
            shapes.append(_Shape(_stroke([top + 0.8 * (bottom - top), bottom], lw * 0.8), "leg",
                                 _jitter((235, 230, 220), rng, 8) * factor))

    # torso
    shapes.append(fur_shape(_roundbox(0.0, 0.0, L / 2, H / 2, q["p"]), "torso"))
    if species == "dog" and rng.uniform() < 0.25:  # collar: unlabelled
        shapes.append(_Shape(_stroke([(L / 2 - 0.12, -H * 0.48), (L / 2 + 0.03, -H * 0.05)], max(0.05, min_w)),
                             None, _jitter(_pick([(200, 30, 30), (30, 60, 200), (30, 150, 60)], rng), rng)))

    # head (+ ears)
    drop = rng.uniform(-0.06, 0.1)
    if species == "horse":
        # neck and mane: unlabelled "other" regions
        a, b = (L / 2 - 0.3, -H * 0.3), (L / 2 - 0.02, H * 0.05)
        c, d = (L / 2 + 0.26, -H / 2 - 0.36 + drop), (L / 2 + 0.06, -H / 2 - 0.46 + drop)
        shapes.append(fur_shape(_poly(a, b, c, d), None))
        shapes.append(_Shape(_stroke(_bezier(a, ((a[0] + d[0]) / 2 - 0.03, (a[1] + d[1]) / 2), d),
                                     max(0.06, min_w)), None, mane))
        hx, hy = L / 2 + 0.25, -H / 2 - 0.38 + drop
        ang = rng.uniform(0.6, 1.0)
        shapes.append(fur_shape(_ellipse(hx, hy, 0.26, 0.1, ang), "head"))
        shapes.append(_Shape(_ellipse(hx - 0.08 * math.cos(ang) + 0.01, hy - 0.1 * math.sin(ang),
                                      max(0.022, min_w / 2), max(0.022, min_w / 2), n=10), "head", dark))
        return shapes

    r = q["r"] * rng.uniform(0.9, 1.1)
    if species == "cow":
        hx, hy = L / 2 + 0.1, -H * 0.3 + drop
        horn = _jitter((230, 220, 190), rng, 8)
        for side in (-1, 1):  # horns (unlabelled), ears sticking out sideways
            shapes.append(_Shape(_stroke(_bezier((hx + side * 0.5 * r, hy - 0.7 * r),
                                                 (hx + side * 0.95 * r, hy - 0.9 * r),
                                                 (hx + side * 0.85 * r, hy - 1.35 * r)),
                                         max(0.05, min_w), max(0.03, min_w * 0.8)), None, horn))
            shapes.append(fur_shape(_poly((hx + side * 0.6 * r, hy - 0.6 * r), (hx + side * 0.55 * r, hy - 0.1 * r),
                                          (hx + side * 1.75 * r, hy - 0.6 * r)), "ear"))
        shapes.append(fur_shape(_roundbox(hx, hy, 0.8 * r, r, 3.0), "head"))
        muzzle = _jitter((225, 170, 160), rng, 10)
        shapes.append(_Shape(_ellipse(hx, hy + 0.65 * r, 0.72 * r, 0.42 * r), "head", muzzle))
        for side in (-1, 1):
            shapes.append(_Shape(_ellipse(hx + side * 0.35 * r, hy - 0.15 * r, max(0.025, min_w / 2),
                                          max(0.025, min_w / 2), n=10), "head", dark))
        return shapes

    hx, hy = L / 2 + 0.2 * r, -H / 2 - 0.35 * r + drop
    ears: list[_Shape] = []
    if species == "cat" or rng.uniform() < 0.45:  # upright pointed ears
        tall = 1.05 if species == "cat" else 0.8
        for dx, factor in ((-0.55, shade), (0.25, 1.0)):
            bx = hx + dx * r
            ears.append(fur_shape(_poly((bx - 0.36 * r, hy - 0.5 * r), (bx + 0.42 * r, hy - 0.58 * r),
                                        (bx - 0.02 * r, hy - (0.55 + tall) * r)), "ear", factor))
        shapes.extend(ears)
        ears = []
    else:  # floppy ears, hanging down the side of the head (drawn over it)
        ear_colour = _jitter(fur * 0.65, rng, 8)
        bx = hx - 0.25 * r
        ears.append(_Shape(_poly((bx - 0.35 * r, hy - 0.75 * r), (bx + 0.3 * r, hy - 0.8 * r),
                                 (bx - 0.05 * r, hy + 0.55 * r), (bx - 0.45 * r, hy + 0.35 * r)), "ear", ear_colour))
    shapes.append(fur_shape(_ellipse(hx, hy, r, r * 0.95), "head"))
    if species == "dog":  # snout and nose
        shapes.append(fur_shape(_ellipse(hx + 0.85 * r, hy + 0.3 * r, 0.6 * r, 0.42 * r), "head", 1.08))
        shapes.append(_Shape(_ellipse(hx + 1.35 * r, hy + 0.18 * r, max(0.2 * r, min_w / 2), max(0.15 * r, min_w / 2),
                                      n=12), "head", dark))
    else:
        shapes.append(_Shape(_poly((hx + 0.88 * r, hy + 0.05 * r), (hx + 1.02 * r, hy + 0.05 * r),
                                   (hx + 0.95 * r, hy + 0.22 * r)), "head", _jitter((230, 150, 160), rng, 8)))
    shapes.append(_Shape(_ellipse(hx + 0.45 * r, hy - 0.2 * r, max(0.13 * r, min_w / 2), max(0.13 * r, min_w / 2),
                                  n=10), "head", _jitter((25, 25, 20), rng, 8)))
    shapes.extend(ears)
    return shapes


def _bird(rng: np.random.Generator, min_w: float) -> list[_Shape]:
    body = _jitter(_pick(BIRD, rng), rng)
    wing_c = _jitter(body * rng.uniform(0.5, 0.8), rng, 12) if rng.uniform() < 0.6 else _jitter(_pick(BIRD, rng), rng)
    belly_pattern = (MOTTLED, 0.15 * body + 6)
    orange = _jitter((235, 150, 40), rng, 12)
    rx, ry = 0.34 * rng.uniform(0.9, 1.1), 0.2 * rng.uniform(0.9, 1.1)
    flying = rng.uniform() < 0.35
    shapes: list[_Shape] = []
    if not flying:  # legs and feet
        lw = max(0.04, min_w)
        for x in (-0.05, 0.06):
            top, bottom = (x, ry * 0.6), (x - 0.03, ry + 0.2)
            shapes.append(_Shape(_stroke([top, bottom], lw), "leg", orange))
            shapes.append(_Shape(_stroke([(bottom[0] - 0.02, bottom[1]), (bottom[0] + 0.09, bottom[1])], lw),
                                 "leg", orange))
    tail = _poly((-rx + 0.06, -0.05), (-rx - 0.3, -0.16 - rng.uniform(0, 0.08)), (-rx - 0.33, 0.03),
                 (-rx + 0.06, 0.07))
    shapes.append(_Shape(tail, "tail", wing_c, MOTTLED, 0.12 * wing_c + 4))
    if flying:  # far wing raised behind the body
        shapes.append(_Shape(_poly((0.12, -0.1), (-0.12, -0.12), (-0.1, -0.55), (0.1, -0.45)), "wing", wing_c * 0.75))
    shapes.append(_Shape(_ellipse(0.0, 0.0, rx, ry), "torso", body, *belly_pattern))
    hr = 0.13 * rng.uniform(0.9, 1.15)
    hx, hy = rx - 0.04, -ry - 0.02 + rng.uniform(-0.04, 0.04)
    shapes.append(_Shape(_poly((hx + 0.7 * hr, hy - 0.3 * hr), (hx + 1.9 * hr, hy + 0.05 * hr),
                               (hx + 0.7 * hr, hy + 0.4 * hr)), None, orange))  # beak: unlabelled
    shapes.append(_Shape(_ellipse(hx, hy, hr, hr), "head", body, *belly_pattern))
    shapes.append(_Shape(_ellipse(hx + 0.35 * hr, hy - 0.2 * hr, max(0.2 * hr, min_w / 2), max(0.2 * hr, min_w / 2),
                                  n=10), "head", _jitter((20, 20, 20), rng, 5)))
    if flying:
        wing = _poly((0.16, -0.06), (-0.1, -0.08), (-0.38, -0.62), (0.12, -0.38))
    else:
        wing = _poly((0.18, -0.06), (-0.02, -0.15), (-rx - 0.08, -0.02), (-0.05, 0.12))
    shapes.append(_Shape(wing, "wing", wing_c, MOTTLED, 0.15 * wing_c + 4))
    return shapes


def _wheel(cx: float, cy: float, r: float, rng: np.random.Generator, min_w: float, spokes: bool) -> list[_Shape]:
    tyre = _jitter((32, 32, 34), rng, 8)
    if not spokes:  # car / bus: dark disc with a grey hub
        hub = _jitter((165, 165, 170), rng, 15)
        return [_Shape(_ellipse(cx, cy, r, r), "wheel", tyre, GRAIN, np.full(3, 8.0)),
                _Shape(_ellipse(cx, cy, 0.48 * r, 0.48 * r, n=16), "wheel", hub),
                _Shape(_ellipse(cx, cy, 0.15 * r, 0.15 * r, n=10), "wheel", hub * 0.6)]
    ring = max(0.16 * r, min_w)
    out = [_Shape(_ellipse(cx, cy, r, r, n=32), "wheel", tyre),
           _Shape(_ellipse(cx, cy, r - ring, r - ring, n=32), "wheel", _rgb((200, 200, 200)), alpha=0.35)]
    sw = max(0.02, min_w * 0.6)
    for k in range(3):
        a = k * np.pi / 3 + rng.uniform(0, np.pi)
        dx, dy = (r - ring) * math.cos(a), (r - ring) * math.sin(a)
        out.append(_Shape(_stroke([(cx - dx, cy - dy), (cx + dx, cy + dy)], sw), "wheel", _rgb((120, 120, 125))))
    out.append(_Shape(_ellipse(cx, cy, max(0.05, min_w / 2), max(0.05, min_w / 2), n=10), "wheel", tyre))
    return out


def _door(x0: float, y0: float, x1: float, y1: float, colour: np.ndarray, min_w: float) -> list[_Shape]:
    seam = max(0.012, min_w * 0.5)
    handle_y = y0 + 0.3 * (y1 - y0)
    return [_Shape(_rect(x0, y0, x1, y1), "door", colour * 0.45),
            _Shape(_rect(x0 + seam, y0 + seam, x1 - seam, y1 - seam), "door", colour * 0.92, MOTTLED, 0.06 * colour),
            _Shape(_rect(x1 - 0.35 * (x1 - x0), handle_y, x1 - 0.12 * (x1 - x0), handle_y + max(0.02, min_w * 0.5)),
                   "door", colour * 0.35)]


def _window(pts: np.ndarray, rng: np.random.Generator) -> _Shape:
    glass = _jitter(_pick(GLASS, rng), rng, 10)
    return _Shape(pts, "window", glass, MOTTLED, np.full(3, 20.0))


def _car(rng: np.random.Generator, min_w: float) -> list[_Shape]:
    paint = _jitter(_pick(VEHICLE, rng), rng)
    shine = (MOTTLED, 0.1 * paint + 6)
    h = 0.24 * rng.uniform(0.9, 1.1)  # lower body height
    cab = 0.2 * rng.uniform(0.85, 1.15)
    cx0, cx1 = -0.32 + rng.uniform(-0.04, 0.04), 0.22 + rng.uniform(-0.04, 0.06)
    shapes = [
        _Shape(_poly((cx0, -h / 2 + 0.02), (cx0 + 0.1, -h / 2 - cab), (cx1 - 0.1, -h / 2 - cab),
                     (cx1 + 0.05, -h / 2 + 0.02)), "body", paint, *shine),
        _Shape(_roundbox(0.0, 0.0, 0.5, h / 2, 5.0), "body", paint, *shine),
    ]
    mid = (cx0 + cx1) / 2 - 0.02
    top, bottom = -h / 2 - cab + 0.035, -h / 2 - 0.01
    back = _poly((cx0 + 0.06, bottom), (cx0 + 0.12, top), (mid - 0.015, top), (mid - 0.015, bottom))
    front = _poly((mid + 0.015, bottom), (mid + 0.015, top), (cx1 - 0.11, top), (cx1 - 0.01, bottom))
    shapes.extend([_window(back, rng), _window(front, rng)])
    shapes.extend(_door(mid + 0.01, -h / 2 + 0.015, cx1 - 0.02, h / 2 - 0.05, paint, min_w))
    # unlabelled: head/tail lights and bumpers
    shapes.append(_Shape(_ellipse(0.47, -0.03, max(0.035, min_w / 2), max(0.03, min_w / 2), n=12), None,
                         _rgb((250, 235, 150))))
    shapes.append(_Shape(_rect(-0.5, -0.06, -0.46, 0.0), None, _rgb((200, 30, 30))))
    shapes.append(_Shape(_rect(-0.52, h / 2 - 0.05, 0.52, h / 2 + 0.005), None, _jitter((60, 60, 60), rng, 10)))
    r = 0.1 * rng.uniform(0.9, 1.1)
    for x in (-0.29, 0.3):
        shapes.extend(_wheel(x, h / 2 - 0.02, r, rng, min_w, spokes=False))
    return shapes


def _bus(rng: np.random.Generator, min_w: float) -> list[_Shape]:
    paint = _jitter(_pick(BUS, rng), rng)
    shine = (MOTTLED, 0.08 * paint + 5)
    top, bottom = -0.38 * rng.uniform(0.9, 1.05), 0.1
    shapes = [_Shape(_roundbox(0.0, (top + bottom) / 2, 0.5, (bottom - top) / 2, 8.0), "body", paint, *shine)]
    if rng.uniform() < 0.5:  # decorative band (part of the body)
        band = _jitter(_pick(BUS, rng), rng)
        shapes.append(_Shape(_rect(-0.49, bottom - 0.1, 0.49, bottom - 0.06), "body", band))
    n = int(rng.integers(4, 7))
    wy0, wy1 = top + 0.05, top + 0.05 + 0.4 * (bottom - top)
    x0, x1 = -0.45, 0.24
    step = (x1 - x0) / n
    for k in range(n):
        shapes.append(_window(_rect(x0 + k * step + 0.012, wy0, x0 + (k + 1) * step - 0.012, wy1), rng))
    shapes.append(_window(_rect(0.43, wy0, 0.49, wy1 + 0.03), rng))  # windscreen
    shapes.extend(_door(0.28, wy0 - 0.01, 0.39, bottom - 0.02, paint, min_w))
    shapes.append(_Shape(_rect(0.45, bottom - 0.1, 0.5, bottom - 0.05), None, _rgb((250, 235, 150))))  # light
    shapes.append(_Shape(_rect(-0.5, bottom - 0.03, 0.5, bottom + 0.01), None, _jitter((55, 55, 55), rng, 10)))
    r = 0.085 * rng.uniform(0.9, 1.1)
    for x in (-0.3, 0.18):
        shapes.extend(_wheel(x, bottom, r, rng, min_w, spokes=False))
    return shapes


def _bicycle(rng: np.random.Generator, min_w: float) -> list[_Shape]:
    frame = _jitter(_pick(VEHICLE, rng), rng)
    r = 0.2 * rng.uniform(0.9, 1.1)
    rear, front = np.array([-0.33, 0.1]), np.array([0.33, 0.1])
    crank = np.array([-0.02, 0.12])
    seat = np.array([-0.1, -0.17])
    head = np.array([0.22, -0.19])
    fw = max(0.035, min_w)
    shapes = _wheel(*rear, r, rng, min_w, spokes=True) + _wheel(*front, r, rng, min_w, spokes=True)
    for a, b in ((rear, crank), (rear, seat), (crank, seat), (seat, head), (crank, head), (head, front)):
        shapes.append(_Shape(_stroke([a, b], fw), None, frame))  # frame: unlabelled
    shapes.append(_Shape(_ellipse(*crank, max(0.05, min_w), max(0.05, min_w), n=12), None, _rgb((90, 90, 95))))
    saddle = _jitter(_pick([(30, 30, 30), (100, 60, 35)], rng), rng, 8)
    shapes.append(_Shape(_stroke([seat, seat + (0, -0.04)], fw * 0.8), None, _rgb((150, 150, 150))))
    shapes.append(_Shape(_poly(seat + (-0.09, -0.08), seat + (0.08, -0.09), seat + (0.04, -0.02),
                               seat + (-0.08, -0.02)), "saddle", saddle))
    bar = _jitter(_pick([(40, 40, 40), (170, 170, 175)], rng), rng, 8)
    hw = max(0.045, min_w)
    shapes.append(_Shape(_stroke([head, head + (-0.02, -0.12), head + (-0.13, -0.13)], hw), "handlebar", bar))
    return shapes


def _ball(rng: np.random.Generator, min_w: float) -> list[_Shape]:
    colours = [_jitter(_pick(VEHICLE, rng), rng) for _ in range(3)]
    shapes = [_Shape(_ellipse(0, 0, 0.5, 0.5, n=32), None, colours[0])]
    k = int(rng.integers(3, 6))
    a0 = rng.uniform(0, np.pi)
    for i in range(0, 2 * k, 2):  # alternating wedges
        a, b = a0 + i * np.pi / k, a0 + (i + 1) * np.pi / k
        arc = [(0.5 * math.cos(t), 0.5 * math.sin(t)) for t in np.linspace(a, b, 6)]
        shapes.append(_Shape(_poly((0.0, 0.0), *arc), None, colours[1 + (i // 2) % 2]))
    return shapes


def _box(rng: np.random.Generator, min_w: float) -> list[_Shape]:
    card = _jitter(_pick([(190, 145, 95), (165, 120, 75), (120, 120, 125), (60, 100, 160)], rng), rng)
    w, h, d = 0.7, 0.5 * rng.uniform(0.8, 1.3), 0.18
    front = _rect(-w / 2, -h / 2, w / 2, h / 2)
    top = _poly((-w / 2, -h / 2), (-w / 2 + d, -h / 2 - d), (w / 2 + d, -h / 2 - d), (w / 2, -h / 2))
    side = _poly((w / 2, -h / 2), (w / 2 + d, -h / 2 - d), (w / 2 + d, h / 2 - d), (w / 2, h / 2))
    tape = max(0.06, min_w)
    return [_Shape(side, None, card * 0.7, GRAIN, card * 0.05), _Shape(top, None, card * 1.12, GRAIN, card * 0.05),
            _Shape(front, None, card, MOTTLED, card * 0.1),
            _Shape(_rect(-tape / 2, -h / 2, tape / 2, h / 2), None, _jitter((215, 200, 160), rng, 10))]


BUILDERS: dict[str, Callable[[np.random.Generator, float], list[_Shape]]] = {
    "dog": lambda rng, w: _quadruped("dog", rng, w),
    "cat": lambda rng, w: _quadruped("cat", rng, w),
    "horse": lambda rng, w: _quadruped("horse", rng, w),
    "cow": lambda rng, w: _quadruped("cow", rng, w),
    "bird": _bird,
    "car": _car,
    "bus": _bus,
    "bicycle": _bicycle,
    "ball": _ball,
    "box": _box,
}


# ============================================================================ rendering
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bilinear upsampling of a coarse random grid)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = Image.fromarray(rng.uniform(-1, 1, (gh, gw)).astype(np.float32))
    return np.asarray(grid.resize((w, h), Image.BILINEAR), dtype=np.float64)


def _fields(rng: np.random.Generator, h: int, w: int, unit: float = 1.0) -> np.ndarray:
    """Texture fields (FLAT, MOTTLED, STRIPES, SPOTS, GRAIN) for one object over an h x w box, [5, h, w].

    ``unit`` scales the texture features (stripe period, spot and mottle sizes) with the image, so
    that a texture looks the same at any resolution."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = rng.uniform(0, np.pi)
    period = rng.uniform(4.0, 8.0) * unit
    phase = (xx * math.cos(a) + yy * math.sin(a)) * 2 * np.pi / period + 0.8 * _smooth_noise(rng, h, w, 12 * unit)
    stripes = (np.sin(phase) > 0.3).astype(np.float64)
    spots = (_smooth_noise(rng, h, w, rng.uniform(6, 11) * unit) > 0.35).astype(np.float64)
    return np.stack([np.zeros((h, w)), _smooth_noise(rng, h, w, 6 * unit), stripes, spots, rng.normal(0, 1, (h, w))])


def _background(rng: np.random.Generator, h: int, w: int, unit: float = 1.0) -> np.ndarray:
    kind = int(rng.integers(4))
    c1, c2 = rng.uniform(30, 235, 3), rng.uniform(30, 235, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 0:  # flat
        img = np.broadcast_to(c1, (h, w, 3)).astype(np.float64)
    elif kind == 1:  # linear gradient
        a = rng.uniform(0, 2 * np.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        img = c1 + t[..., None] * (c2 - c1)
    elif kind == 2:  # noise texture
        t = (_smooth_noise(rng, h, w, rng.uniform(5, 20) * unit) + 1) / 2
        img = c1 + t[..., None] * (c2 - c1)
    else:  # sky and ground
        sky = rng.uniform([120, 160, 200], [200, 220, 255])
        ground = _pick([(70, 140, 60), (120, 100, 70), (140, 140, 135), (190, 170, 120)], rng) + rng.uniform(-20, 20, 3)
        horizon = rng.uniform(0.35, 0.75) * h
        t = (yy / h)[..., None]
        img = np.where((yy < horizon)[..., None], sky - 40 * t, ground + 25 * _smooth_noise(rng, h, w, 8 * unit)[..., None])
    return img + rng.normal(0, 4, (h, w, 1)) * rng.uniform(0.0, 1.5)


def _choose_objects(rng: np.random.Generator) -> list[str]:
    names = sorted(OBJECT_PARTS) + list(OBJECTS_WITHOUT_PARTS)
    weights = np.array([1.0] * len(OBJECT_PARTS) + [0.5] * len(OBJECTS_WITHOUT_PARTS))
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    picks = rng.choice(len(names), size=n, p=weights / weights.sum())
    return [names[int(i)] for i in picks]


@dataclass
class _Placed:
    name: str
    shapes: list[_Shape]
    pts: list[np.ndarray]  # polygons in pixels
    bottom: float


def _place(name: str, n: int, h: int, w: int, rng: np.random.Generator) -> _Placed:
    """Build object ``name`` and pose it (size, flip, rotation, aspect) somewhere in an h x w image."""
    short = min(h, w)
    lo, hi = {1: (0.6, 0.95), 2: (0.45, 0.7), 3: (0.36, 0.55)}[n]
    target = max(rng.uniform(lo, hi) * w, 40.0)  # object width in pixels
    if name in OBJECTS_WITHOUT_PARTS:
        target = max(target * 0.55, 24.0)
    flip = rng.uniform() < 0.5
    angle = math.radians(rng.uniform(-22, 22) if name == "bird" else rng.uniform(-10, 10))
    aspect = rng.uniform(0.9, 1.1)
    seed = int(rng.integers(2**62))
    # build twice: once to measure, once with strokes of >= ~2 px at the final scale
    shapes = BUILDERS[name](np.random.default_rng(seed), 0.0)
    allpts = np.concatenate([s.pts for s in shapes])
    extent = allpts.max(0) - allpts.min(0)
    scale = target / extent[0]
    scale = min(scale, 0.95 * short / max(extent[1] * aspect, 1e-6), 0.95 * w / extent[0])
    shapes = BUILDERS[name](np.random.default_rng(seed), 2.2 / scale)
    allpts = np.concatenate([s.pts for s in shapes])
    centre = (allpts.max(0) + allpts.min(0)) / 2
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    posed = [((shape.pts - centre) * scale * np.array([-1.0 if flip else 1.0, aspect])) @ rot.T for shape in shapes]
    everything = np.concatenate(posed)
    low, high = everything.min(0), everything.max(0)
    # anywhere in the image, at most ~5% (x) / 3% (y) of the object's extent outside it on each side
    slack = np.array([0.05, 0.03]) * (high - low)
    offset = []
    for axis, limit in ((0, w), (1, h)):
        a, b = -low[axis] - slack[axis], limit - high[axis] + slack[axis]
        offset.append(rng.uniform(a, b) if b > a else (limit - low[axis] - high[axis]) / 2)
    out = [p + np.asarray(offset) for p in posed]
    return _Placed(name, shapes, out, float(high[1] + offset[1]))


#: colour words of the captions, with their RGB anchors (nearest anchor names a colour)
COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "white": (238, 236, 230), "black": (38, 34, 32), "grey": (140, 140, 142), "brown": (130, 82, 45),
    "tan": (205, 168, 115), "red": (200, 38, 36), "orange": (228, 128, 42), "yellow": (236, 196, 36),
    "green": (52, 148, 72), "blue": (38, 88, 198), "purple": (122, 42, 142), "pink": (228, 150, 168),
}
#: texture words of the captions, by pattern (``plain`` also for a faint mottle or grain)
TEXTURE_WORDS = {FLAT: "plain", MOTTLED: "mottled", STRIPES: "striped", SPOTS: "spotted", GRAIN: "speckled"}


def _colour_word(rgb: np.ndarray) -> str:
    names = list(COLOUR_WORDS)
    anchors = np.asarray([COLOUR_WORDS[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((anchors - rgb) ** 2).sum(1)))]


def _describe(o: "_Placed", sid: np.ndarray) -> dict[str, str]:
    """Object-level words for a caption: the object's name, and the colour and texture of its largest
    visible shape (no part words). ``sid``: the shape id (1-based) of each visible object pixel."""
    counts = np.bincount(sid, minlength=len(o.shapes) + 1)[1:].astype(np.float64)
    for i, shape in enumerate(o.shapes):  # the paint / fur, not see-through spokes, tyres or glass
        if shape.alpha < 1 or shape.part in ("wheel", "window"):
            counts[i] *= 0.01
    main = o.shapes[int(np.argmax(counts))]
    texture = main.pattern
    if texture in (MOTTLED, GRAIN) and (main.delta is None or float(np.abs(main.delta).mean()) < 18):
        texture = FLAT
    return {"object": o.name, "colour": _colour_word(main.colour), "texture": TEXTURE_WORDS[texture]}


def _render_scene(rng: np.random.Generator, h: int, w: int, class_index: dict[str, int],
                  object_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, str]]]:
    """One scene: image [h,w,3] uint8, part and object maps [h,w] uint8, and per object (back to
    front) its caption words ``{"object", "colour", "texture"}``."""
    names = _choose_objects(rng)
    unit = max(1.0, min(h, w) / 128.0)  # texture and threshold scale relative to a 128 px image
    for _attempt in range(8):
        placed = sorted((_place(name, len(names), h, w, rng) for name in names), key=lambda o: o.bottom)
        image = _background(rng, h, w, unit)
        part = np.full((h, w), IGNORE_LABEL, dtype=np.uint8)
        obj = np.full((h, w), IGNORE_LABEL, dtype=np.uint8)
        inst = np.zeros((h, w), dtype=np.int16)
        shape_id = np.zeros((h, w), dtype=np.int32)
        areas = []
        for k, o in enumerate(placed, 1):
            canvas = Image.new("I", (w, h), 0)
            draw = ImageDraw.Draw(canvas)
            for i, pts in enumerate(o.pts, 1):
                draw.polygon([tuple(p) for p in pts.tolist()], fill=i)
            ids = np.asarray(canvas)
            mask = ids > 0
            areas.append(int(mask.sum()))
            if not areas[-1]:
                continue
            n = len(o.shapes) + 1
            base = np.zeros((n, 3))
            delta = np.zeros((n, 3))
            pattern = np.zeros(n, dtype=np.int64)
            alpha = np.ones(n)
            labels = np.full(n, IGNORE_LABEL, dtype=np.uint8)
            for i, shape in enumerate(o.shapes, 1):
                base[i] = shape.colour
                if shape.delta is not None:
                    delta[i] = shape.delta
                pattern[i] = shape.pattern
                alpha[i] = shape.alpha
                if shape.part is not None:
                    labels[i] = class_index[f"{o.name}'s {shape.part}"]
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
            fields = _fields(rng, int(y1 - y0 + 1), int(x1 - x0 + 1), unit)  # over the object's box only
            sid = ids[ys, xs]
            colour = base[sid] + fields[pattern[sid], ys - y0, xs - x0][:, None] * delta[sid]
            # soft top-down shading over the object's extent
            colour *= (1.08 - 0.2 * (ys - y0) / max(y1 - y0, 1))[:, None]
            a = alpha[sid][:, None]
            image[ys, xs] = a * colour + (1 - a) * image[ys, xs]
            part[ys, xs] = labels[sid]
            obj[ys, xs] = object_index[o.name]
            inst[ys, xs] = k
            shape_id[ys, xs] = sid
            if rng.uniform() < 0.3 and areas[-1] > 600 * unit ** 2:  # outlined (cartoon) object: outline unlabelled
                inner = mask.copy()
                for _ in range(max(1, round(unit / 2))):  # outline ~1 px per 256 px of image side
                    prev = inner.copy()
                    inner[1:, :] &= prev[:-1, :]
                    inner[:-1, :] &= prev[1:, :]
                    inner[:, 1:] &= prev[:, :-1]
                    inner[:, :-1] &= prev[:, 1:]
                edge = mask & ~inner
                image[edge] = rng.uniform(10, 50)
                part[edge] = IGNORE_LABEL
        ok = True
        for k, o in enumerate(placed, 1):
            visible = inst == k
            if visible.sum() < 0.45 * areas[k - 1] or not areas[k - 1]:
                ok = False
            elif o.name in OBJECT_PARTS and ((part != IGNORE_LABEL) & visible).sum() < 20 * unit ** 2:
                ok = False
        if ok:
            break
    image = image + rng.normal(0, 2.5, image.shape)
    words = [_describe(o, shape_id[inst == k]) for k, o in enumerate(placed, 1) if (inst == k).any()]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), part, obj, words


def _dataset_dir(root: str | Path) -> Path:
    root = Path(root)
    return root if root.name == FOLDER_NAME else root / FOLDER_NAME


def _write_image(job: tuple) -> tuple[str, list[int], list[int], list[dict[str, str]]]:
    """Render and write image ``k`` of a split; returns (stem, object ids, part ids, caption words)."""
    out, split, split_id, k, seed, lo, hi = job
    info = _vocabulary_cached()
    rng = np.random.default_rng([seed, split_id, k])
    h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    image, part, obj, words = _render_scene(rng, h, w, info["class_index"], info["object_index"])
    stem = f"toy_{split}_{k:06d}"
    Image.fromarray(image).save(out / "images" / split / f"{stem}.jpg", quality=95)
    Image.fromarray(part).save(out / "annotations_detectron2_part" / split / f"{stem}.png")
    Image.fromarray(obj).save(out / "annotations_detectron2_obj" / split / f"{stem}.png")
    return (stem, [int(v) for v in np.unique(obj) if v != IGNORE_LABEL],
            [int(v) for v in np.unique(part) if v != IGNORE_LABEL], words)


_VOCAB_CACHE: dict = {}


def _vocabulary_cached() -> dict:
    if not _VOCAB_CACHE:
        info = build_vocabulary_json()
        _VOCAB_CACHE["class_index"] = {c: i for i, c in enumerate(info["object_specific_classes"])}
        _VOCAB_CACHE["object_index"] = {o: j for j, o in enumerate(info["object_classes"])}
    return _VOCAB_CACHE


def generate_toy_world(root: str | Path, n_train: int = 1000, n_val: int = 200,
                       size_range: tuple[int, int] = (320, 640), seed: int = 0, overwrite: bool = False,
                       workers: int = 1) -> Path:
    """Write the toy world in the Pascal-Part-116 layout; returns the dataset folder.

    The dataset folder is ``root`` itself if it is named ``ToyWorld``, else ``root/ToyWorld``.
    Image heights and widths are drawn independently from ``size_range`` (inclusive). Image ``k`` of a
    split depends only on ``(seed, split, k)``. An existing non-empty dataset folder is refused unless
    ``overwrite`` (which deletes its ``images``, ``annotations_detectron2_*`` and ``captions`` folders
    first). ``workers`` > 1 renders in that many processes (same files).

    ``captions/{train,val}.json`` holds, per image stem, the object-level caption words of each
    object (``{"object", "colour", "texture"}``, back to front): what language-image pretraining
    reads (no part words).
    """
    out = _dataset_dir(root)
    lo, hi = int(size_range[0]), int(size_range[1])
    if not 16 <= lo <= hi:
        raise ValueError(f"size_range must be (min, max) with 16 <= min <= max, got {size_range}")
    if n_train < 0 or n_val < 0:
        raise ValueError("n_train and n_val must be >= 0")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out}: folder exists and is not empty (pass overwrite=True / --overwrite)")
        for sub in ("images", "annotations_detectron2_part", "annotations_detectron2_obj", "captions"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        for sub in ("images", "annotations_detectron2_part", "annotations_detectron2_obj"):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        jobs = [(out, split, split_id, k, int(seed), lo, hi) for k in range(n)]
        if workers > 1 and n > 1:
            import multiprocessing

            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(min(workers, n)) as pool:
                done = pool.map(_write_image, jobs, chunksize=max(1, n // (8 * workers)))
        else:
            done = [_write_image(job) for job in jobs]
        obj_counts = {f"{stem}.png": objs for stem, objs, _, _ in done}
        part_counts = {f"{stem}.png": parts for stem, _, parts, _ in done}
        captions = {stem: words for stem, _, _, words in done}
        (out / "captions").mkdir(exist_ok=True)
        (out / "captions" / f"{split}.json").write_text(json_text(captions))
        if split == "val":
            (out / "annotations_detectron2_part" / "val_obj_label_count.json").write_text(json_text(obj_counts))
            (out / "annotations_detectron2_part" / "val_part_label_count.json").write_text(json_text(part_counts))
    return out


# ============================================================================ contact sheet
_SHEET_COLOURS = ((230, 40, 40), (255, 150, 0), (255, 240, 0), (0, 210, 255), (255, 0, 200), (0, 170, 0),
                  (150, 80, 20), (30, 80, 255), (175, 130, 255), (255, 255, 255), (0, 255, 170), (255, 150, 190))


def _part_palette(n: int) -> np.ndarray:
    return np.array([_SHEET_COLOURS[k % len(_SHEET_COLOURS)] for k in range(n)], dtype=np.uint8)


def render_contact_sheet(dataset: str | Path, path: str | Path, split: str = "train", n: int = 12,
                         columns: int = 4, tile: int = 160) -> Path:
    """A PNG of ``n`` images of a split next to their part maps coloured by generalized part
    (same colour for the same part type on every object; grey = object pixel without a part label)."""
    from .base import list_files

    dataset = _dataset_dir(dataset) if not (Path(dataset) / "images").is_dir() else Path(dataset)
    info = build_vocabulary_json()
    parts = info["model_vocabulary_test"]["generalized_part_classes"]
    part_of = [parts.index(c.split("'s ", 1)[1]) for c in info["object_specific_classes"]]
    palette = _part_palette(len(parts))
    files = list_files(dataset / "images" / split, [".jpg"])[:n]
    rows = math.ceil(len(files) / columns)
    legend_h = 14 * math.ceil(len(parts) / 6) + 6
    sheet = Image.new("RGB", (columns * 2 * tile + (columns - 1) * 6, rows * (tile + 14) + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, f in enumerate(files):
        stem = f.name[:-4]
        img = Image.open(f).convert("RGB")
        part = np.asarray(Image.open(dataset / "annotations_detectron2_part" / split / f"{stem}.png")).astype(np.int64)
        obj = np.asarray(Image.open(dataset / "annotations_detectron2_obj" / split / f"{stem}.png"))
        colours = np.zeros(part.shape + (3,), dtype=np.uint8)
        labelled = part != IGNORE_LABEL
        colours[labelled] = palette[np.asarray(part_of)[part[labelled]]]
        colours[~labelled & (obj != IGNORE_LABEL)] = 110
        x, y = (i % columns) * (2 * tile + 6), (i // columns) * (tile + 14)
        scale = tile / max(img.size)
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        sheet.paste(img.resize(size, Image.BILINEAR), (x, y))
        sheet.paste(Image.fromarray(colours).resize(size, Image.NEAREST), (x + tile, y))
        names = [info["object_classes"][j] for j in np.unique(obj) if j != IGNORE_LABEL]
        draw.text((x, y + tile + 1), f"{stem}: {', '.join(names)}", fill=(0, 0, 0))
    y0 = rows * (tile + 14) + 3
    for k, name in enumerate(parts):
        x, y = (k % 6) * 110, y0 + (k // 6) * 14
        draw.rectangle((x, y + 1, x + 10, y + 11), fill=tuple(int(v) for v in palette[k]))
        draw.text((x + 14, y), name, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ============================================================================ command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m partclipseg.data.toyworld",
        description="Write the procedural toy world (cartoon animals and vehicles with part labels) in the "
                    "Pascal-Part-116 layout, readable as the 'toy_world' dataset.",
    )
    parser.add_argument("out", type=Path,
                        help="output folder (the data goes to OUT/ToyWorld unless OUT is named ToyWorld)")
    parser.add_argument("--train", type=int, default=1000, help="number of training images (default 1000)")
    parser.add_argument("--val", type=int, default=200, help="number of validation images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--min-size", type=int, default=320, help="smallest image side (default 320)")
    parser.add_argument("--max-size", type=int, default=640, help="largest image side (default 640)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing toy world in OUT")
    parser.add_argument("--workers", type=int, default=1, help="render in this many processes (default 1)")
    parser.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG of 12 train images")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate_toy_world(args.out, n_train=args.train, n_val=args.val,
                                 size_range=(args.min_size, args.max_size), seed=args.seed, overwrite=args.overwrite,
                                 workers=args.workers)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    if args.sheet is not None:
        render_contact_sheet(out, args.sheet)
    print(json_text({"dataset": str(out), "train": args.train, "val": args.val, "seed": args.seed,
                      "seconds": round(seconds, 2)}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
