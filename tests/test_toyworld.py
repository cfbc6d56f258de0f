"""The procedural toy world: vocabulary JSON, generator, reader (``toy_world``)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partclipseg.data import DATASETS, IGNORE, DatasetError, open_dataset
from partclipseg.data.toyworld import (
    OBJECT_PARTS,
    OBJECTS_WITHOUT_PARTS,
    UNSEEN_OBJECTS,
    ToyWorld,
    build_vocabulary_json,
    generate_toy_world,
    main,
    vocabulary_json_path,
    vocabulary_json_text,
)
from partclipseg.vocabulary import BENCHMARKS, Vocabulary, load_benchmark_info, parse_class_name

N_TRAIN, N_VAL = 12, 6
SIZE_RANGE = (96, 160)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy"), n_train=N_TRAIN, n_val=N_VAL, size_range=SIZE_RANGE,
                              seed=0)


@pytest.fixture(scope="module")
def info() -> dict:
    return load_benchmark_info("toy_world")


# ----------------------------------------------------------------------------- vocabulary JSON
def test_shipped_json_equals_builder(info: dict) -> None:
    assert "toy_world" in BENCHMARKS
    assert info == build_vocabulary_json()
    assert vocabulary_json_path().read_text(encoding="utf-8") == vocabulary_json_text()


def test_json_schema_matches_pascal(info: dict) -> None:
    pascal = load_benchmark_info("pascal_part_116")
    assert set(pascal) <= set(info)
    for key in ("model_vocabulary_test", "model_vocabulary_train", "evaluation_set", "train_label_remap", "counts"):
        assert set(info[key]) == set(pascal[key]), key
    assert info["ignore_label"] == 255
    for key, value in info["counts"].items():
        assert value == (len(info[key]) if key in info else info["model_vocabulary_test"]["C_obj"])
    # train_label_remap: same encoding as Pascal ({"<old label>": new label})
    for remap in (info["train_label_remap"], pascal["train_label_remap"]):
        for table in (remap["object_specific"], remap["object"]):
            assert all(isinstance(k, str) and isinstance(v, int) for k, v in table.items())
    classes, seen = info["object_specific_classes"], info["seen_object_specific_classes"]
    assert {int(k): v for k, v in info["train_label_remap"]["object_specific"].items()} == {
        i: seen.index(c) for i, c in enumerate(classes) if c in seen}
    objects, seen_objects = info["object_classes"], info["seen_object_classes"]
    assert {int(k): v for k, v in info["train_label_remap"]["object"].items()} == {
        j: seen_objects.index(o) for j, o in enumerate(objects) if o in seen_objects}
    assert info["seen_object_specific_class_indices"] == info["evaluation_set"]["base"]
    assert [classes[i] for i in info["seen_object_specific_class_indices"]] == seen
    assert [classes[i] for i in info["unseen_object_specific_class_indices"]] == info["unseen_object_specific_classes"]


def test_zero_shot_split(info: dict) -> None:
    parsed = [parse_class_name(c) for c in info["object_specific_classes"]]
    assert 25 <= len(parsed) <= 35
    assert sorted(info["unseen_object_classes"]) == sorted(UNSEEN_OBJECTS)
    assert set(info["seen_object_classes"]) | set(info["unseen_object_classes"]) == set(info["object_classes"])
    assert not set(info["seen_object_classes"]) & set(info["unseen_object_classes"])
    assert set(info["object_classes_without_part_classes"]) == set(OBJECTS_WITHOUT_PARTS)
    assert set(OBJECTS_WITHOUT_PARTS) <= set(info["seen_object_classes"])
    seen_parts = {p for o, p in parsed if o not in UNSEEN_OBJECTS}
    for obj in UNSEEN_OBJECTS:
        parts = {p for o, p in parsed if o == obj}
        assert parts and parts <= seen_parts, obj
    # the train vocabulary therefore has every generalized part of the test vocabulary
    assert Vocabulary.from_benchmark("toy_world", "train").parts == Vocabulary.from_benchmark("toy_world", "test").parts
    assert {o for o, _ in parsed} == set(OBJECT_PARTS)


# ----------------------------------------------------------------------------- generator
def test_generation_is_deterministic_and_fast(tmp_path: Path, toy_root: Path) -> None:
    start = time.perf_counter()
    a = generate_toy_world(tmp_path / "a", n_train=3, n_val=2, seed=0, size_range=SIZE_RANGE)
    assert time.perf_counter() - start < 2.0
    assert a == tmp_path / "a" / "ToyWorld"
    b = generate_toy_world(tmp_path / "b" / "ToyWorld", n_train=3, n_val=2, seed=0, size_range=SIZE_RANGE, workers=2)
    assert b == tmp_path / "b" / "ToyWorld"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # image k does not depend on how many images are generated
    label = Path("annotations_detectron2_part/train/toy_train_000002.png")
    assert (a / label).read_bytes() == (toy_root / label).read_bytes()
    # another seed gives other scenes
    c = generate_toy_world(tmp_path / "c", n_train=3, n_val=0, seed=1, size_range=SIZE_RANGE)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if "train" in str(f))
    # an existing dataset is not overwritten silently
    with pytest.raises(DatasetError, match="overwrite"):
        generate_toy_world(tmp_path / "a", n_train=1, n_val=1)
    generate_toy_world(tmp_path / "a", n_train=1, n_val=1, overwrite=True)
    assert len(list((a / "images" / "train").iterdir())) == 1


def test_cli(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "out"), "--train", "2", "--val", "1", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"] == 2 and summary["val"] == 1
    root = tmp_path / "out" / "ToyWorld"
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 2
    for image in (root / "images").rglob("*.jpg"):  # the default size: 320-640 px a side
        assert all(320 <= side <= 640 for side in Image.open(image).size), image
    assert json.loads((root / "captions" / "train.json").read_text()).keys() == {"toy_train_000000", "toy_train_000001"}
    assert (root / "annotations_detectron2_part" / "val_obj_label_count.json").is_file()
    assert main([str(tmp_path / "out"), "--train", "1"]) == 2  # exists: refused without --overwrite


def test_module_entry_point_runs_without_warnings(tmp_path: Path) -> None:
    """``python -m partclipseg.data.toyworld`` (a stable entry point) runs cleanly: the package must
    not import the generator module before runpy executes it (that printed a RuntimeWarning)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "partclipseg.data.toyworld",
                           str(tmp_path / "out"), "--train", "1", "--val", "1", "--min-size", "64", "--max-size", "80"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and proc.stderr.strip() == ""
    assert json.loads(proc.stdout)["train"] == 1


# ----------------------------------------------------------------------------- reader
def test_registry_and_check_full(toy_root: Path) -> None:
    assert DATASETS["toy_world"] is ToyWorld
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        reader = open_dataset("toy_world", toy_root.parent, split)  # the parent folder is accepted
        assert isinstance(reader, ToyWorld) and reader.root == toy_root
        summary = reader.check(full=True)
        assert summary["images"] == n and summary["files_read"] == n and summary["warnings"] == []
        assert reader.num_classes == 35 and reader.num_objects == 10


def test_labels_in_range_and_consistent(toy_root: Path, info: dict) -> None:
    classes, objects = info["object_specific_classes"], info["object_classes"]
    object_of_class = np.array([objects.index(parse_class_name(c)[0]) for c in classes])
    unlabelled_inside = 0
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        stems = sorted(p.stem for p in (toy_root / "images" / split).glob("*.jpg"))
        assert len(stems) == n
        for stem in stems:
            part = png(toy_root / "annotations_detectron2_part" / split / f"{stem}.png")
            obj = png(toy_root / "annotations_detectron2_obj" / split / f"{stem}.png")
            with Image.open(toy_root / "images" / split / f"{stem}.jpg") as img:
                assert img.mode == "RGB" and img.size == part.shape[::-1] == obj.shape[::-1]
            assert SIZE_RANGE[0] <= min(part.shape) and max(part.shape) <= SIZE_RANGE[1]
            assert Image.open(toy_root / "annotations_detectron2_part" / split / f"{stem}.png").mode == "L"
            assert set(np.unique(part)) <= set(range(len(classes))) | {255}
            assert set(np.unique(obj)) <= set(range(len(objects))) | {255}
            labelled = part != 255
            assert (obj[labelled] != 255).all()  # parts only inside objects
            assert (object_of_class[part[labelled]] == obj[labelled]).all()  # the part's object is the pixel's object
            assert (obj == 255).any()  # some background
            unlabelled_inside += int(((obj != 255) & ~labelled).sum())
    assert unlabelled_inside > 0


def test_eval_samples(toy_root: Path, info: dict) -> None:
    reader = ToyWorld(toy_root, "val")
    refs = reader.eval_samples()
    counts = json.loads((toy_root / "annotations_detectron2_part" / "val_obj_label_count.json").read_text())
    assert len(refs) == sum(len(v) for v in counts.values())
    assert len({r.sample_id for r in refs}) == len(refs)
    pairs = {(r.meta["image_id"], r.object_id) for r in refs}
    assert pairs == {(k[:-4], j) for k, v in counts.items() for j in v}
    no_parts = {info["object_classes"].index(o) for o in OBJECTS_WITHOUT_PARTS}
    n_loaded = n_skipped = 0
    for ref in refs:
        sample = reader.load_eval_sample(ref)
        name = info["object_classes"][ref.object_id]
        if ref.object_id in no_parts:
            assert sample is None  # no part pixel: skipped
            n_skipped += 1
            continue
        assert sample is not None and sample.object_names == [name]
        values = set(np.unique(sample.part_labels)) - {IGNORE}
        assert values and all(info["object_specific_classes"][v].startswith(f"{name}'s ") for v in values)
        assert not (sample.part_labels[~sample.object_mask] != IGNORE).any()
        n_loaded += 1
    assert n_loaded > 0 and n_skipped > 0  # seed 0: the 6 val images hold a box and a ball


def test_train_records_and_unseen_objects(toy_root: Path, info: dict) -> None:
    reader = open_dataset("toy_world", toy_root, "train")
    records = reader.train_records()
    assert len(records) == N_TRAIN
    unseen = {info["object_classes"].index(o) for o in info["unseen_object_classes"]}
    with_unseen = 0
    for record in records:
        image, part, obj = reader.load_train_sample(record)
        assert image.dtype == np.uint8 and image.shape == part.shape + (3,) and obj.shape == part.shape
        with_unseen += bool(set(np.unique(obj)) & unseen)
    assert with_unseen >= 1  # unseen objects appear in training images (as background after the seen remap)
    # the seen remap of the training mapper turns their parts into ignore
    remap = {int(k): v for k, v in info["train_label_remap"]["object_specific"].items()}
    for i in info["unseen_object_specific_class_indices"]:
        assert i not in remap
