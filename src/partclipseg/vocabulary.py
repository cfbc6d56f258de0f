"""Class names and the vocabulary built from them (SPEC §2.2, §2.3, §6.5).

Every object-specific class name has the form ``"<object>'s <part>"`` ("dog's head",
"chest of drawers's door"). From an ordered list of such names (the dataset's label order) the
model needs:

* the *generalized parts* and the *objects that own parts*, each a sorted set of names (Python
  code-point order, so capitalised names sort first);
* for each object-specific class, the index of its part and of its object in those lists;
* the text prompts: the parts, then the objects, as bare names (no template).

The decoder conditions on ``num_parts + num_objects + 1`` classes; the last one is the learned
non-object (background) embedding, which is not a text prompt.

The benchmark vocabularies (Pascal-Part-116, ADE20K-Part-234, PartImageNet) are shipped as JSON
files in ``partclipseg/resources/vocab``; :func:`load_benchmark_info` reads them.
"""
from __future__ import annotations

import copy
import functools
import json
import operator
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Sequence

from .errors import VocabularyError

__all__ = [
    "BENCHMARKS",
    "SPLITS",
    "Vocabulary",
    "baseline_prompt",
    "load_benchmark_info",
    "object_label_to_model_object",
    "parse_class_name",
]

#: Names of the benchmark vocabularies shipped with the package.
BENCHMARKS: tuple[str, ...] = ("pascal_part_116", "ade20k_part_234", "partimagenet", "toy_world")

#: Vocabulary splits: "train" = the seen classes in seen order, "test" = all classes in label order.
SPLITS: tuple[str, ...] = ("test", "train")


def parse_class_name(name: str) -> tuple[str, str]:
    """Split an object-specific class name into ``(object, part)``.

    The name is split at the **first** ``'s`` (or ``'S``: the text encoder reads names in lower case);
    both pieces are stripped of surrounding whitespace: ``"chest of drawers's door"`` ->
    ``("chest of drawers", "door")``.

    Raises:
        VocabularyError: if ``name`` is not a string, contains ``;`` (a separator typed for ``,``), has
            no ``'s``, or the object or part is empty.
    """
    if not isinstance(name, str):
        raise VocabularyError(f"class name {name!r} is not a string (got {type(name).__name__})")
    if ";" in name:  # "dog's head; dog's leg" would be one part named "head; dog's leg"
        raise VocabularyError(f"class name {name!r} contains ';'; separate class names with commas")
    control = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if control is not None:  # a tab or line break: a box in the legend, a broken line in every listing
        raise VocabularyError(f"class name {name!r} contains the control character {control!r}; use spaces")
    # searched in the name itself, not in name.lower(): lower-casing can change the length ("İ" -> "i̇")
    found = re.search("'[sS]", name)
    obj, sep, part = (name[:found.start()], found.group(), name[found.end():]) if found else (name, "", "")
    if not sep:
        curly = re.search("[\u2019\u2018\u02bc\u0060\u00b4\uff07][sS]", name)  # ’s ‘s ʼs `s ´s ＇s
        hint = (f" (it has {curly.group()!r}: type the apostrophe as ')" if curly else "")
        raise VocabularyError(
            f"class name {name!r} has no \"'s\"{hint}; expected the form \"<object>'s <part>\" (e.g. \"dog's head\")"
        )
    obj, part = obj.strip(), part.strip()
    if not obj:
        raise VocabularyError(f"class name {name!r} has an empty object (expected \"<object>'s <part>\")")
    if not part:
        raise VocabularyError(f"class name {name!r} has an empty part (expected \"<object>'s <part>\")")
    return obj, part


def baseline_prompt(name: str) -> str:
    """The CLIPSeg-baseline prompt of an object-specific name (SPEC §2.2, §7).

    Every ``'s`` is removed and runs of whitespace are collapsed to one space:
    ``"cat's head"`` -> ``"cat head"``, ``"chest of drawers's door"`` -> ``"chest of drawers door"``.
    (For all benchmark names this equals the official ``name.replace("'s", "")``.)
    """
    return " ".join(re.sub("'[sS]", "", name).split())


def _check_index(t: int, size: int) -> int:
    """Validate a class index ``t`` in ``[0, size)`` (negative indices are refused)."""
    t = operator.index(t)
    if not 0 <= t < size:
        raise IndexError(f"object-specific class index {t} out of range [0, {size})")
    return t


@dataclass(frozen=True)
class Vocabulary:
    """An ordered vocabulary of object-specific classes and everything derived from it.

    Build it with :meth:`from_names`, :meth:`parse` or :meth:`from_benchmark`; the constructor
    takes the same sequence of names as :meth:`from_names` and validates it.

    Attributes:
        object_specific_classes: the names (stripped), in the given (label) order.
        parts: sorted set of generalized part names (code-point order).
        objects: sorted set of object names (only objects that own a part class appear).
        text_to_part: for each object-specific class t, the index of its part in ``parts``
            (the model's ``part_index_map``).
        text_to_object: for each t, the index of its object in ``objects`` (``obj_index_map``).
    """

    object_specific_classes: tuple[str, ...]
    parts: tuple[str, ...] = field(init=False, repr=False)
    objects: tuple[str, ...] = field(init=False, repr=False)
    text_to_part: tuple[int, ...] = field(init=False, repr=False)
    text_to_object: tuple[int, ...] = field(init=False, repr=False)
    _parsed: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = self.object_specific_classes
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise VocabularyError(
                f"expected a sequence of class names, got {type(names).__name__} "
                "(use Vocabulary.parse for a comma-separated string)"
            )
        names = tuple(names)
        if not names:
            raise VocabularyError("the vocabulary is empty: give at least one \"<object>'s <part>\" name")
        stripped: list[str] = []
        parsed: list[tuple[str, str]] = []
        seen: dict[tuple[str, str], int] = {}
        for i, name in enumerate(names):
            obj, part = parse_class_name(name)  # also rejects non-str entries
            if (obj, part) in seen:
                j = seen[(obj, part)]
                raise VocabularyError(
                    f"duplicate class name {name!r} at position {i} (same as {names[j]!r} at position {j})"
                )
            seen[(obj, part)] = i
            stripped.append(name.strip())
            parsed.append((obj, part))
        parts = tuple(sorted({p for _, p in parsed}))
        objects = tuple(sorted({o for o, _ in parsed}))
        from .tokenizer import normalize_text  # what the text encoder reads

        for kind, found in (("object", objects), ("part", parts)):
            folded: dict[str, str] = {}
            for item in found:
                other = folded.setdefault(normalize_text(item), item)
                if other != item:
                    why = ("are the same letters in two Unicode forms (composed and decomposed accents)"
                           if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", item)
                           else "differ only in letter case or spacing")
                    raise VocabularyError(
                        f"{kind} names {other!r} and {item!r} {why}: the model reads names in lower case, in one "
                        f"Unicode form, with every run of spaces as one, so they would be one {kind} to it; "
                        f"write them the same way")
        part_pos = {p: i for i, p in enumerate(parts)}
        obj_pos = {o: i for i, o in enumerate(objects)}
        setattr_ = object.__setattr__  # frozen dataclass: derived fields are set once, here
        setattr_(self, "object_specific_classes", tuple(stripped))
        setattr_(self, "parts", parts)
        setattr_(self, "objects", objects)
        setattr_(self, "text_to_part", tuple(part_pos[p] for _, p in parsed))
        setattr_(self, "text_to_object", tuple(obj_pos[o] for o, _ in parsed))
        setattr_(self, "_parsed", tuple(parsed))

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_names(cls, names: Sequence[str]) -> "Vocabulary":
        """Build from an ordered list of object-specific names ("dog's head", label order).

        Raises:
            VocabularyError: empty list, a duplicate (after stripping), or a malformed name;
                the message names the offending entry.
        """
        return cls(tuple(names) if not isinstance(names, str) else names)  # str is refused in __post_init__

    @classmethod
    def parse(cls, text_or_list: str | Sequence[str]) -> "Vocabulary":
        """Build from a comma-separated string (``"dog's head, dog's leg"``) or a list of names.

        In a string, empty pieces (e.g. from a trailing comma) are skipped. Names therefore
        cannot contain commas when given as a string.
        """
        if isinstance(text_or_list, str):
            names = [piece.strip() for piece in text_or_list.split(",")]
            names = [n for n in names if n]
            if not names:
                raise VocabularyError(f"no class names found in {text_or_list!r}")
            return cls.from_names(names)
        return cls.from_names(text_or_list)

    @classmethod
    def from_benchmark(cls, name: str, split: str = "test") -> "Vocabulary":
        """The vocabulary of a shipped benchmark (one of :data:`BENCHMARKS`).

        ``split="test"``: all object-specific classes in label order; ``split="train"``: the
        seen classes in seen order (the training label space after the seen remap).
        """
        info = _benchmark_info(name)
        return cls.from_names(_split_classes(info, split))

    # ----------------------------------------------------------------- sizes
    def __len__(self) -> int:
        """Number of object-specific classes."""
        return len(self.object_specific_classes)

    @property
    def num_text_classes(self) -> int:
        """Number of object-specific classes (``C_text``)."""
        return len(self.object_specific_classes)

    @property
    def num_parts(self) -> int:
        """Number of generalized parts (``C_part``)."""
        return len(self.parts)

    @property
    def num_objects(self) -> int:
        """Number of objects that own at least one part class (``C_obj``)."""
        return len(self.objects)

    @property
    def num_decoder_classes(self) -> int:
        """``C_part + C_obj + 1``: parts, objects, then the learned non-object (background) class."""
        return len(self.parts) + len(self.objects) + 1

    # ----------------------------------------------------------------- prompts
    @property
    def prompts(self) -> tuple[str, ...]:
        """Text-tower inputs of PartCLIPSeg: the part names, then the object names (bare)."""
        return self.parts + self.objects

    @property
    def baseline_prompts(self) -> tuple[str, ...]:
        """Text-tower inputs of the CLIPSeg baseline: one per class, ``'s`` removed (label order)."""
        return tuple(baseline_prompt(n) for n in self.object_specific_classes)

    # ----------------------------------------------------------------- lookups
    def object_of(self, t: int) -> str:
        """Object name of object-specific class ``t``."""
        return self._parsed[_check_index(t, len(self))][0]

    def part_of(self, t: int) -> str:
        """Generalized-part name of object-specific class ``t``."""
        return self._parsed[_check_index(t, len(self))][1]

    def index(self, name: str) -> int:
        """Label index of an object-specific name (compared after parsing, so spacing may differ)."""
        key = parse_class_name(name)
        try:
            return self._parsed.index(key)
        except ValueError:
            raise VocabularyError(f"class {name!r} is not in this vocabulary") from None

    def classes_of_object(self, name: str, *, strict: bool = False) -> list[int]:
        """Label indices of the object-specific classes of object ``name``, in label order.

        An object without part classes (or an unknown name) gives ``[]``, unless ``strict`` is
        true, in which case it raises :class:`VocabularyError`.
        """
        found = [t for t, (obj, _) in enumerate(self._parsed) if obj == name]
        if strict and not found:
            raise VocabularyError(f"object {name!r} has no class in this vocabulary (objects: {list(self.objects)})")
        return found

    def object_label_map(self, object_classes: Sequence[str]) -> tuple[int, ...]:
        """Map dataset object labels to model object indices.

        For each dataset object name ``object_classes[j]`` give its index in :attr:`objects`, or
        ``-1`` if that object has no part class in this vocabulary (SPEC §2.3, last bullet).
        """
        pos = {o: i for i, o in enumerate(self.objects)}
        return tuple(pos.get(o, -1) for o in object_classes)


# --------------------------------------------------------------------- benchmark data
def _normalise_benchmark_name(name: str) -> str:
    """Lower-case and turn "-" into "_" ("Pascal-Part-116" -> "pascal_part_116")."""
    if not isinstance(name, str):
        raise VocabularyError(f"benchmark name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise VocabularyError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    return key


@functools.lru_cache(maxsize=None)
def _read_benchmark_json(key: str) -> dict[str, Any]:
    """Parse the shipped JSON once (shared object: never hand it out unprotected)."""
    path = resources.files("partclipseg").joinpath("resources", "vocab", f"{key}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _benchmark_info(name: str) -> dict[str, Any]:
    """The cached (shared, read-only by convention) info dict of a benchmark."""
    return _read_benchmark_json(_normalise_benchmark_name(name))


def load_benchmark_info(name: str) -> dict[str, Any]:
    """The raw JSON of a benchmark vocabulary (SPEC §6.5), as a dict.

    The file is parsed once and cached; each call returns a deep copy, so callers may modify it.

    Raises:
        VocabularyError: unknown benchmark name (the message lists the known ones).
    """
    return copy.deepcopy(_benchmark_info(name))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise VocabularyError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def _split_classes(info: dict[str, Any], split: str) -> list[str]:
    """Object-specific names of a split: all (label order) for test, seen (seen order) for train."""
    key = "object_specific_classes" if _check_split(split) == "test" else "seen_object_specific_classes"
    return info[key]


def _split_object_classes(info: dict[str, Any], split: str) -> list[str]:
    """Dataset object names whose positions are the object labels of a split.

    Test labels index ``object_classes``; training labels are remapped to ``seen_object_classes``.
    """
    key = "object_classes" if _check_split(split) == "test" else "seen_object_classes"
    return info[key]


def object_label_to_model_object(info: dict[str, Any] | str, split: str = "test") -> tuple[int, ...]:
    """For each dataset object label j of ``split``, the model object index, or -1 (no parts).

    ``info`` is a benchmark info dict (:func:`load_benchmark_info`) or a benchmark name. For
    ``split="test"`` j indexes ``object_classes``; for ``split="train"`` j indexes
    ``seen_object_classes`` (the labels after the training mapper's seen remap). The model object
    indices refer to :attr:`Vocabulary.objects` of the same split. Callers that need the official
    ignore value instead of -1 (255 / 65535) substitute it themselves.
    """
    if isinstance(info, str):
        info = _benchmark_info(info)
    vocab = Vocabulary.from_names(_split_classes(info, split))
    return vocab.object_label_map(_split_object_classes(info, split))
