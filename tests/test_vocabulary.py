"""Tests of partclipseg.vocabulary (SPEC §2.2, §2.3, §6.5)."""
from __future__ import annotations

import dataclasses

import pytest

from partclipseg.errors import VocabularyError
from partclipseg.vocabulary import (
    BENCHMARKS,
    Vocabulary,
    baseline_prompt,
    load_benchmark_info,
    object_label_to_model_object,
    parse_class_name,
)

TINY = ["cat's tail", "cat's head", "cat's leg", "dog's head", "dog's leg", "dog's ear"]


# ----------------------------------------------------------------- parse_class_name
@pytest.mark.parametrize(
    "name, expected",
    [
        ("dog's head", ("dog", "head")),
        ("  chest of drawers's door ", ("chest of drawers", "door")),
        ("car's license plate", ("car", "license plate")),
        ("American alligator's foot", ("American alligator", "foot")),
        ("a's b's c", ("a", "b's c")),  # split at the first "'s"
        ("İstanbul's tower", ("İstanbul", "tower")),  # "İ".lower() is two characters
        ("İİ dog'S head", ("İİ dog", "head")),
    ],
)
def test_parse_class_name(name, expected):
    assert parse_class_name(name) == expected


@pytest.mark.parametrize("bad", ["dog head", "'s head", "dog's", "  's  ", ""])
def test_parse_class_name_rejects_malformed(bad):
    with pytest.raises(VocabularyError) as err:
        parse_class_name(bad)
    assert repr(bad) in str(err.value)


def test_parse_class_name_rejects_non_str():
    with pytest.raises(VocabularyError, match="not a string"):
        parse_class_name(42)  # type: ignore[arg-type]


def test_baseline_prompt():
    assert baseline_prompt("cat's head") == "cat head"
    assert baseline_prompt("chest of drawers's door") == "chest of drawers door"
    assert baseline_prompt("  dog 's   left  ear ") == "dog left ear"


# ----------------------------------------------------------------- Vocabulary
def test_tiny_vocabulary_derivations():
    v = Vocabulary.from_names(TINY)
    assert v.object_specific_classes == tuple(TINY)
    assert v.parts == ("ear", "head", "leg", "tail")
    assert v.objects == ("cat", "dog")
    assert v.prompts == ("ear", "head", "leg", "tail", "cat", "dog")
    assert v.text_to_part == (3, 1, 2, 1, 2, 0)
    assert v.text_to_object == (0, 0, 0, 1, 1, 1)
    assert (v.num_text_classes, v.num_parts, v.num_objects, v.num_decoder_classes) == (6, 4, 2, 7)
    assert len(v) == 6
    assert v.baseline_prompts == ("cat tail", "cat head", "cat leg", "dog head", "dog leg", "dog ear")
    assert v.object_of(3) == "dog" and v.part_of(3) == "head"
    assert v.classes_of_object("dog") == [3, 4, 5]
    assert v.classes_of_object("chair") == []
    with pytest.raises(VocabularyError, match="chair"):
        v.classes_of_object("chair", strict=True)
    assert v.index("dog 's  ear") == 5
    with pytest.raises(IndexError):
        v.object_of(6)
    with pytest.raises(IndexError):
        v.part_of(-1)


def test_vocabulary_is_frozen_and_hashable():
    v = Vocabulary.from_names(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.parts = ()  # type: ignore[misc]
    assert v == Vocabulary(tuple(TINY)) and hash(v) == hash(Vocabulary(TINY))


def test_code_point_sort_puts_capitals_first():
    v = Vocabulary.from_names(["airliner's wing", "Komodo dragon's head", "American alligator's tail"])
    assert v.objects == ("American alligator", "Komodo dragon", "airliner")


def test_names_are_stripped():
    v = Vocabulary.from_names(["  dog's head  ", "dog's leg"])
    assert v.object_specific_classes == ("dog's head", "dog's leg")


def test_from_names_rejects_empty():
    with pytest.raises(VocabularyError, match="empty"):
        Vocabulary.from_names([])


@pytest.mark.parametrize("dup", ["dog's head", " dog's head ", "dog 's  head"])
def test_from_names_rejects_duplicates(dup):
    with pytest.raises(VocabularyError, match="duplicate") as err:
        Vocabulary.from_names(["dog's head", "dog's leg", dup])
    assert repr(dup) in str(err.value)


@pytest.mark.parametrize("bad", ["dog head", "dog's ", None, 3])
def test_from_names_rejects_malformed_entries(bad):
    with pytest.raises(VocabularyError) as err:
        Vocabulary.from_names(["dog's head", bad])
    assert repr(bad) in str(err.value)


def test_from_names_rejects_bare_string():
    with pytest.raises(VocabularyError, match="parse"):
        Vocabulary.from_names("dog's head")


def test_parse_comma_separated_and_list():
    v = Vocabulary.parse("dog's head, dog's leg,cat's tail,")
    assert v.object_specific_classes == ("dog's head", "dog's leg", "cat's tail")
    assert Vocabulary.parse(["dog's head", "dog's leg", "cat's tail"]) == v
    with pytest.raises(VocabularyError):
        Vocabulary.parse(" , ")
    with pytest.raises(VocabularyError, match="dog leg"):
        Vocabulary.parse("dog's head, dog leg")
    # a semicolon typed for a comma: one part "head; dog's leg" without this check
    with pytest.raises(VocabularyError, match=r"contains ';'; separate class names with commas"):
        Vocabulary.parse("dog's head; dog's leg")


@pytest.mark.reference
def test_tiny_reference_vocabulary(ref_vocab):
    v = Vocabulary.from_names(ref_vocab["text_classes"])
    assert list(v.parts) == ref_vocab["part_classes"]
    assert list(v.objects) == ref_vocab["obj_in_part_classes"]
    assert list(v.prompts) == ref_vocab["text_prompts"]
    assert list(v.text_to_part) == ref_vocab["text_to_part"]
    assert list(v.text_to_object) == ref_vocab["text_to_obj_in_part"]
    assert v.num_text_classes == ref_vocab["T"]
    assert v.num_parts == ref_vocab["P"]
    assert v.num_objects == ref_vocab["O"]
    assert v.num_decoder_classes == ref_vocab["K"]
    # dataset object label -> model object index (official ignore value 255 for "no parts")
    mapped = v.object_label_map(ref_vocab["obj_classes"])
    assert [255 if m < 0 else m for m in mapped] == ref_vocab["obj_to_obj_in_part"]
    # inverse: model object -> dataset object label, plus background = len(obj_classes)
    inverse = [ref_vocab["obj_classes"].index(o) for o in v.objects] + [len(ref_vocab["obj_classes"])]
    assert inverse == ref_vocab["obj_in_part_to_obj"]


# ----------------------------------------------------------------- benchmarks
EXPECTED_SIZES = {  # SPEC §2.3 table: (C_text, C_part, C_obj)
    ("pascal_part_116", "train"): (74, 41, 11),
    ("pascal_part_116", "test"): (116, 42, 16),
    ("ade20k_part_234", "train"): (176, 83, 33),
    ("ade20k_part_234", "test"): (234, 85, 44),
    ("partimagenet", "train"): (92, 13, 25),
    ("partimagenet", "test"): (147, 13, 40),
    ("toy_world", "train"): (26, 12, 6),  # the project's own toy world (data/toyworld.py)
    ("toy_world", "test"): (35, 12, 8),
}


@pytest.mark.parametrize("name", BENCHMARKS)
@pytest.mark.parametrize("split", ["test", "train"])
def test_benchmark_vocabulary_matches_json(name, split):
    info = load_benchmark_info(name)
    mv = info[f"model_vocabulary_{split}"]
    v = Vocabulary.from_benchmark(name, split)
    key = "object_specific_classes" if split == "test" else "seen_object_specific_classes"
    assert list(v.object_specific_classes) == info[key]
    assert list(v.parts) == mv["generalized_part_classes"]
    assert list(v.objects) == mv["object_classes_with_parts"]
    assert list(v.prompts) == mv["text_prompts"]
    assert list(v.text_to_part) == mv["object_specific_to_generalized_part_index"]
    assert list(v.text_to_object) == mv["object_specific_to_object_with_parts_index"]
    assert (v.num_text_classes, v.num_parts, v.num_objects) == (mv["C_text"], mv["C_part"], mv["C_obj"])
    assert (v.num_text_classes, v.num_parts, v.num_objects) == EXPECTED_SIZES[(name, split)]
    assert v.num_decoder_classes == mv["N_generalized_head_channels"]
    # the baseline prompt is the official name.replace("'s", "") for every benchmark name
    assert list(v.baseline_prompts) == [n.replace("'s", "") for n in v.object_specific_classes]


def test_benchmark_name_normalisation_and_errors():
    assert Vocabulary.from_benchmark("Pascal-Part-116") == Vocabulary.from_benchmark("pascal_part_116")
    with pytest.raises(VocabularyError) as err:
        Vocabulary.from_benchmark("coco_parts")
    for known in BENCHMARKS:
        assert known in str(err.value)
    with pytest.raises(VocabularyError, match="split"):
        Vocabulary.from_benchmark("pascal_part_116", split="val")


def test_load_benchmark_info_returns_independent_copies():
    a = load_benchmark_info("pascal_part_116")
    a["object_classes"].clear()
    b = load_benchmark_info("pascal_part_116")
    assert len(b["object_classes"]) == 20
    assert b["ignore_label"] == 255


def test_object_label_to_model_object_pascal():
    info = load_benchmark_info("pascal_part_116")
    test_map = object_label_to_model_object(info, "test")
    assert len(test_map) == len(info["object_classes"]) == 20
    no_parts = set(info["object_classes_without_part_classes"])
    objects = info["model_vocabulary_test"]["object_classes_with_parts"]
    for j, name in enumerate(info["object_classes"]):
        assert test_map[j] == (-1 if name in no_parts else objects.index(name))
    assert [info["object_classes"][j] for j, m in enumerate(test_map) if m < 0] == ["boat", "chair", "diningtable", "sofa"]

    train_map = object_label_to_model_object("pascal_part_116", "train")
    seen = info["seen_object_classes"]
    train_objects = info["model_vocabulary_train"]["object_classes_with_parts"]
    assert len(train_map) == len(seen) == 15
    for j, name in enumerate(seen):
        assert train_map[j] == (-1 if name in no_parts else train_objects.index(name))


@pytest.mark.parametrize("name", ["ade20k_part_234", "partimagenet"])
def test_object_label_to_model_object_every_object_has_parts(name):
    info = load_benchmark_info(name)
    for split, key in (("test", "object_classes"), ("train", "seen_object_classes")):
        mapping = object_label_to_model_object(info, split)
        assert len(mapping) == len(info[key])
        assert sorted(mapping) == list(range(len(info[key])))  # a permutation: every object has parts


def test_names_that_differ_only_in_letter_case_are_refused_and_the_separator_ignores_case():
    """The text encoder lower-cases every prompt, so "Dog" and "dog" would be one object to the model:
    such vocabularies are refused in one line. An upper-case "'S" separates object and part as "'s" does."""
    from partclipseg.vocabulary import baseline_prompt

    for names, kind in (("Dog's Head, dog's leg", "object names 'Dog' and 'dog'"),
                        ("dog's head, Dog's Head", "object names 'Dog' and 'dog'"),
                        ("dog's head, cat's Head", "part names 'Head' and 'head'"),
                        ("big  dog's head, big dog's leg", "object names 'big  dog' and 'big dog'"),
                        ("dog's front  leg, cat's front leg", "part names 'front  leg' and 'front leg'"),
                        ("cafe\u0301's door, caf\u00e9's roof", "object names")):  # NFC: one name
        with pytest.raises(VocabularyError, match=kind):
            Vocabulary.parse(names)
    assert parse_class_name("DOG'S Head") == ("DOG", "Head")
    assert parse_class_name("chest of drawers'S door") == ("chest of drawers", "door")
    assert baseline_prompt("DOG'S Head") == "DOG Head"
    vocab = Vocabulary.parse("Dog's Head, Dog's Leg")  # one spelling per name: accepted as written
    assert vocab.objects == ("Dog",) and vocab.parts == ("Head", "Leg")


@pytest.mark.parametrize("names, needle", [
    (["dog\u2019s head"], "it has '\u2019s': type the apostrophe as '"),  # a typographic apostrophe
    (["dog\uff07s head"], "type the apostrophe as '"),
    (["dog's\thead"], "control character '\\t'"),
    (["dog's head\ncat's leg"], "control character '\\n'"),
    (["caf\u00e9's table", "cafe\u0301's leg"], "two Unicode forms"),  # composed vs decomposed é
    (["Dog's head", "dog's leg"], "differ only in letter case or spacing"),
])
def test_vocabulary_mistakes_name_their_cause(names, needle):
    with pytest.raises(VocabularyError) as info:
        Vocabulary.from_names(names)
    assert needle in str(info.value) and "\n" not in str(info.value)
