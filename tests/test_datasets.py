"""Dataset readers, evaluation samples, PartImageNet preprocessing and synthetic generators (SPEC §3.1, §5.1-5.2, §6)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")

from partclipseg.data import DATASETS, IGNORE, DatasetError, open_dataset  # noqa: E402
from partclipseg.data.ade20k_part import ADE20KPart234  # noqa: E402
from partclipseg.data.common import gt_round_trip  # noqa: E402
from partclipseg.data.partimagenet import PartImageNet  # noqa: E402
from partclipseg.data.partimagenet_preprocess import main as preprocess_main  # noqa: E402
from partclipseg.data.partimagenet_preprocess import preprocess_partimagenet  # noqa: E402
from partclipseg.data.pascal_part import PascalPart116  # noqa: E402
from partclipseg.data.synthetic import (  # noqa: E402
    make_ade20k_part,
    make_partimagenet,
    make_partimagenet_original,
    make_pascal_part,
)
from partclipseg.vocabulary import load_benchmark_info  # noqa: E402

PASCAL = load_benchmark_info("pascal_part_116")
ADE = load_benchmark_info("ade20k_part_234")
PIN = load_benchmark_info("partimagenet")


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def classes_of(info: dict, obj: str) -> set[int]:
    return {i for i, c in enumerate(info["object_specific_classes"]) if c.split("'s", 1)[0] == obj}


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory) -> Path:
    return make_pascal_part(tmp_path_factory.mktemp("pascal") / "PascalPart116")


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    return make_ade20k_part(tmp_path_factory.mktemp("ade") / "ADE20KPart234")


@pytest.fixture(scope="module")
def pin_original(tmp_path_factory) -> Path:
    return make_partimagenet_original(tmp_path_factory.mktemp("pin") / "PartImageNet_Seg")


@pytest.fixture(scope="module")
def pin_root(pin_original: Path) -> Path:
    out = pin_original.parent / "PartImageNet"
    preprocess_partimagenet(pin_original, out)
    return out


# ----------------------------------------------------------------------------- registry
def test_registry_and_open_dataset(pascal_root: Path) -> None:
    assert set(DATASETS) == {"pascal_part_116", "ade20k_part_234", "partimagenet", "toy_world"}
    assert DATASETS["pascal_part_116"] is PascalPart116 and DATASETS["ade20k_part_234"] is ADE20KPart234
    assert DATASETS["partimagenet"] is PartImageNet
    reader = open_dataset("pascal_part_116", pascal_root, "val")
    assert isinstance(reader, PascalPart116) and reader.root == pascal_root
    # the parent folder holding "PascalPart116" is accepted too
    assert open_dataset("pascal_part_116", pascal_root.parent, "val").root == pascal_root
    with pytest.raises(DatasetError, match="pascal_part_116, ade20k_part_234, partimagenet"):
        open_dataset("coco", pascal_root, "val")
    with pytest.raises(DatasetError, match="split"):
        open_dataset("pascal_part_116", pascal_root, "test")


@pytest.mark.parametrize("maker", [make_pascal_part, make_ade20k_part, make_partimagenet_original, make_partimagenet])
def test_generators_are_deterministic_and_fast(maker, tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    a = maker(tmp_path / "a")
    assert time.perf_counter() - start < 1.0
    b = maker(tmp_path / "b")
    assert {k: v[0::2] for k, v in snapshot(a).items()} == {k: v[0::2] for k, v in snapshot(b).items()}


# ----------------------------------------------------------------------------- Pascal-Part-116
def test_pascal_check_full_passes(pascal_root: Path) -> None:
    for split in ("train", "val"):
        summary = open_dataset("pascal_part_116", pascal_root, split).check(full=True)
        assert summary["images"] == 4  # the macOS ._ file is skipped
    assert (pascal_root / "images" / "val" / "._2009_000001.jpg").exists()


def test_pascal_eval_samples(pascal_root: Path) -> None:
    reader = PascalPart116(pascal_root, "val")
    refs = reader.eval_samples()
    # dog(11) + chair(8); cat(7); boat(3); bird(2) + person(14): one sample per (image, object class)
    assert [r.sample_id for r in refs] == [
        "val/2009_000001/8", "val/2009_000001/11", "val/2009_000002/7", "val/2009_000003/3",
        "val/2009_000004/2", "val/2009_000004/14",
    ]
    assert reader.eval_samples() == refs  # stable
    loaded = {r.sample_id: reader.load_eval_sample(r) for r in refs}
    # objects without part classes (chair, boat) give no labelled part pixel -> skipped
    assert loaded["val/2009_000001/8"] is None and loaded["val/2009_000003/3"] is None
    dog = loaded["val/2009_000001/11"]
    assert dog.object_names == ["dog"] and dog.image_path == pascal_root / "images/val/2009_000001.jpg"
    assert dog.part_labels.dtype == np.int64 and dog.part_labels.shape == (60, 80)
    # same samples without the label-count file (scanning the object PNGs)
    count_file = pascal_root / "annotations_detectron2_part" / "val_obj_label_count.json"
    saved = count_file.read_bytes()
    count_file.unlink()
    try:
        assert [r.sample_id for r in PascalPart116(pascal_root, "val").eval_samples()] == [r.sample_id for r in refs]
    finally:
        count_file.write_bytes(saved)


def test_pascal_gt_masked_to_object_and_ignore(pascal_root: Path) -> None:
    reader = PascalPart116(pascal_root, "val")
    refs = {r.sample_id: r for r in reader.eval_samples(gt_resize_quirk=False)}
    part = png(pascal_root / "annotations_detectron2_part/val/2009_000004.png")
    obj = png(pascal_root / "annotations_detectron2_obj/val/2009_000004.png")
    for sid, name in (("val/2009_000004/2", "bird"), ("val/2009_000004/14", "person")):
        sample = reader.load_eval_sample(refs[sid])
        oid = PASCAL["object_classes"].index(name)
        expected = np.where((obj == oid) & (part != 255), part, IGNORE)
        np.testing.assert_array_equal(sample.part_labels, expected)  # quirk off = the file, masked
        np.testing.assert_array_equal(sample.object_mask, obj == oid)
        labelled = set(np.unique(sample.part_labels)) - {IGNORE}
        assert labelled and labelled <= classes_of(PASCAL, name)
        assert (sample.object_mask & (sample.part_labels == IGNORE)).any()  # unlabelled pixels inside the object
        assert not (sample.part_labels == 255).any()


def test_pascal_resize_quirk(pascal_root: Path) -> None:
    reader = PascalPart116(pascal_root, "val")
    on = {r.sample_id: reader.load_eval_sample(r) for r in reader.eval_samples(gt_resize_quirk=True)}
    off = {r.sample_id: reader.load_eval_sample(r) for r in reader.eval_samples(gt_resize_quirk=False)}
    cat_on, cat_off = on["val/2009_000002/7"], off["val/2009_000002/7"]  # 75 x 100 image: 75 -> 800 -> 75
    assert cat_on.part_labels.shape == cat_off.part_labels.shape == (75, 100)
    np.testing.assert_array_equal(cat_on.part_labels, gt_round_trip(cat_off.part_labels))
    changed_rows = (cat_on.part_labels != cat_off.part_labels).any(axis=1).sum()
    assert changed_rows > 0
    assert cat_on.meta["gt_resize_quirk_applied"] and not cat_off.meta["gt_resize_quirk_applied"]
    # 75 x 50: the short side scales by exactly 16 (50 -> 800, 75 -> 1200), so the round trip is the identity
    np.testing.assert_array_equal(on["val/2009_000004/2"].part_labels, off["val/2009_000004/2"].part_labels)


def test_pascal_train_sample(pascal_root: Path) -> None:
    reader = PascalPart116(pascal_root, "train")
    records = reader.train_records()
    assert [r.record_id for r in records] == [f"train/2008_{k:06d}" for k in range(1, 5)]
    image, part, obj = reader.load_train_sample(records[0])  # horse + dog
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8
    assert part.dtype == obj.dtype == np.int64 and part.shape == obj.shape == (60, 80)
    assert set(np.unique(obj)) == {IGNORE, 11, 12}
    # full label space, no seen remap: the unseen dog's parts are still there
    assert set(np.unique(part)) - {IGNORE} & classes_of(PASCAL, "dog")
    assert set(np.unique(part[obj == 12])) - {IGNORE} <= classes_of(PASCAL, "horse")


# ----------------------------------------------------------------------------- ADE20K-Part-234
def test_ade_check_and_eval_samples(ade_root: Path) -> None:
    for split in ("train", "val"):
        ADE20KPart234(ade_root, split).check(full=True)
    reader = ADE20KPart234(ade_root, "val")
    refs = reader.eval_samples()
    # val: person + bench, car, stool (+ a lamp whose only polygon is invalid: dropped), table;
    # train: only the instances of unseen objects (desk, oven)
    assert [r.sample_id for r in refs] == [
        "validation/ADE_val_00000001/1", "validation/ADE_val_00000001/2", "validation/ADE_val_00000002/3",
        "validation/ADE_val_00000003/4", "validation/ADE_val_00000004/6",
        "training/ADE_train_00000001/2", "training/ADE_train_00000003/4",
    ]
    names = [ADE["object_classes"][r.object_id] for r in refs]
    assert names == ["person", "bench", "car", "stool", "table", "desk", "oven"]
    assert refs[-1].image_path == ade_root / "images/training/ADE_train_00000003.jpg"
    for ref, name in zip(refs, names):
        sample = reader.load_eval_sample(ref)
        assert sample is not None and sample.object_names == [name]
        labelled = set(np.unique(sample.part_labels)) - {IGNORE}
        assert labelled and labelled <= classes_of(ADE, name)


def test_ade_gt_masked_to_instance_rle_and_ignore(ade_root: Path) -> None:
    reader = ADE20KPart234(ade_root, "val")
    refs = {r.sample_id: r for r in reader.eval_samples(gt_resize_quirk=False)}
    raw = png(ade_root / "annotations_detectron2_part/validation/ADE_val_00000001.png")
    assert raw.max() == 65535  # 16-bit file with the ignore value
    bench = reader.load_eval_sample(refs["validation/ADE_val_00000001/2"])  # compressed RLE instance
    person = reader.load_eval_sample(refs["validation/ADE_val_00000001/1"])  # polygon instance
    for sample in (bench, person):
        np.testing.assert_array_equal(sample.part_labels, np.where(sample.object_mask & (raw != 65535), raw, IGNORE))
    assert not (bench.object_mask & person.object_mask).any()
    # the image's part PNG holds both objects' parts; each sample keeps only its own
    assert set(np.unique(raw)) - {65535} == (set(np.unique(bench.part_labels)) | set(np.unique(person.part_labels))) - {IGNORE}
    table = reader.load_eval_sample(refs["validation/ADE_val_00000004/6"])  # uncompressed RLE instance
    assert table.object_mask.sum() > 0
    # quirk on = round trip of the clean GT
    quirk = reader.load_eval_sample(reader.eval_samples()[1])
    np.testing.assert_array_equal(quirk.part_labels, gt_round_trip(bench.part_labels))


def test_ade_train_sample(ade_root: Path) -> None:
    reader = ADE20KPart234(ade_root, "train")
    records = reader.train_records()
    assert len(records) == 4
    image, part, obj = reader.load_train_sample(records[2])  # oven (RLE) + person (polygon)
    assert image.shape == (90, 90, 3)
    oven, person = ADE["object_classes"].index("oven"), ADE["object_classes"].index("person")
    assert set(np.unique(obj)) == {IGNORE, oven, person}
    assert set(np.unique(part[obj == oven])) - {IGNORE} <= classes_of(ADE, "oven")
    assert not (part == 65535).any() and (part == IGNORE).any()


# ----------------------------------------------------------------------------- PartImageNet
def test_partimagenet_preprocess_is_non_destructive(pin_original: Path, tmp_path: Path) -> None:
    before = snapshot(pin_original)
    out = tmp_path / "PartImageNet"
    counts = preprocess_partimagenet(pin_original, out, link=True)
    assert snapshot(pin_original) == before  # the source is untouched
    tiger = PIN["object_wnids"]["tiger"]
    impala = PIN["object_wnids"]["impala"]
    train = sorted(p.name for p in (out / "images/train").iterdir())
    val = sorted(p.name for p in (out / "images/val").iterdir())
    assert len(train) == 4 and not any(n.startswith((impala, "n01530575")) for n in train)  # seen objects only
    assert len(val) == 4 and not any(n.startswith("n01518878") for n in val)  # the 40 objects only
    assert not (out / "images/test").exists()
    assert counts["train"]["images_dropped"] == 2 and counts["val"]["images_dropped"] == 1
    assert counts["val"]["json_images"] == 4 and counts["val"]["json_images_dropped"] == 2  # incl. the missing file
    data = json.loads((out / "val.json").read_text())
    assert {im["file_name"] for im in data["images"]} == set(val)
    assert {a["image_id"] for a in data["annotations"]} == {im["id"] for im in data["images"]}
    assert len(data["categories"]) == 40  # kept as released
    assert os.path.samefile(out / "images/train" / f"{tiger}_1000.JPEG", pin_original / "images/train" / f"{tiger}_1000.JPEG")
    # refuses to write into the source or a non-empty folder
    with pytest.raises(DatasetError, match="source"):
        preprocess_partimagenet(pin_original, pin_original)
    with pytest.raises(DatasetError, match="not empty"):
        preprocess_partimagenet(pin_original, out)
    # command line, copying
    assert preprocess_main([str(pin_original), str(tmp_path / "copy"), "--copy"]) == 0
    assert not os.path.samefile(tmp_path / "copy/images/val" / val[0], pin_original / "images/val" / val[0])
    assert snapshot(pin_original) == before


def test_partimagenet_reader(pin_root: Path) -> None:
    for split in ("train", "val"):
        PartImageNet(pin_root, split).check(full=True)
    reader = open_dataset("partimagenet", pin_root, "val")
    refs = reader.eval_samples()
    w = PIN["object_wnids"]
    assert [r.sample_id for r in refs] == [
        f"val/{w['tiger']}_1000", f"val/{w['jeep']}_1001", f"val/{w['goldfish']}_1002", f"val/{w['airliner']}_1003",
    ]
    for ref, name in zip(refs, ["tiger", "jeep", "goldfish", "airliner"]):
        on = reader.load_eval_sample(ref)
        off = reader.load_eval_sample(reader.eval_samples(gt_resize_quirk=False)[refs.index(ref)])
        # no GT round trip for PartImageNet (the official mapper discards its augmentation)
        np.testing.assert_array_equal(on.part_labels, off.part_labels)
        assert not on.meta["gt_resize_quirk_applied"]
        assert on.object_names == [name]
        labelled = set(np.unique(on.part_labels)) - {IGNORE}
        # every part polygon of the object is painted; later polygons overwrite earlier ones
        assert labelled == classes_of(PIN, name)
        np.testing.assert_array_equal(on.object_mask, on.part_labels != IGNORE)
    # the original PNG (0..39 parts, 40 background) agrees with the polygons on the object region
    first = reader.load_eval_sample(refs[0])
    assert ((png(pin_root / f"annotations/val/{w['tiger']}_1000.png") != 40) == first.object_mask).all()
    image, part, obj = PartImageNet(pin_root, "train").load_train_sample(PartImageNet(pin_root, "train").train_records()[0])
    assert image.shape == (60, 80, 3) and set(np.unique(obj)) == {IGNORE, PIN["object_classes"].index("tiger")}
    assert set(np.unique(part)) - {IGNORE} == classes_of(PIN, "tiger")


# ----------------------------------------------------------------------------- malformed folders
def test_pascal_malformed(tmp_path: Path) -> None:
    root = make_pascal_part(tmp_path / "PascalPart116")
    reader = lambda: PascalPart116(root, "val")  # noqa: E731 - fresh caches each time
    part = root / "annotations_detectron2_part/val/2009_000004.png"
    saved = part.read_bytes()
    # out-of-range value in the 4th file: only the full check reads it
    bad = png(part)
    bad[0, 0] = 200
    Image.fromarray(bad.astype(np.uint8)).save(part)
    reader().check(full=False)
    with pytest.raises(DatasetError, match=r"2009_000004\.png.*200"):
        reader().check(full=True)
    # mismatched size between part and object PNG
    Image.fromarray(np.full((70, 90), 255, dtype=np.uint8)).save(part)
    with pytest.raises(DatasetError, match=r"2009_000004\.png.*does not match"):
        reader().check(full=True)
    part.write_bytes(saved)
    reader().check(full=True)
    # stale label-count file
    count_file = root / "annotations_detectron2_part/val_obj_label_count.json"
    counts = json.loads(count_file.read_text())
    counts["2009_000002.png"] = [7, 9]
    count_file.write_text(json.dumps(counts))
    with pytest.raises(DatasetError, match=r"2009_000002\.png.*stale"):
        reader().check(full=True)
    count_file.write_text("{broken")
    with pytest.raises(DatasetError, match="val_obj_label_count.json"):
        reader().check()
    count_file.unlink()
    # missing object PNG
    (root / "annotations_detectron2_obj/val/2009_000003.png").unlink()
    with pytest.raises(DatasetError, match=r"2009_000003\.png.*missing object annotation"):
        reader().check()
    # deleted part PNG -> image without annotation
    deleted = root / "annotations_detectron2_part/val/2009_000002.png"
    saved = deleted.read_bytes()
    deleted.unlink()
    with pytest.raises(DatasetError, match=r"2009_000002\.jpg: image without part annotation"):
        reader().check()
    deleted.write_bytes(saved)
    # annotation without image
    (root / "images/val/2009_000001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2009_000001\.png: annotation without image"):
        reader().check()
    # missing folder
    (root / "images/val").rename(root / "images/elsewhere")
    with pytest.raises(DatasetError, match=r"images/val: missing folder"):
        reader().check()


def test_ade_malformed(tmp_path: Path) -> None:
    root = make_ade20k_part(tmp_path / "ADE20KPart234")
    reader = lambda split="val": ADE20KPart234(root, split)  # noqa: E731
    val_json = root / "ade20k_instance_val.json"
    saved = val_json.read_text()
    # label value out of range in a 16-bit part PNG
    part = root / "annotations_detectron2_part/validation/ADE_val_00000004.png"
    labels = png(part)
    labels[1, 1] = 300
    Image.fromarray(labels.astype(np.uint16)).save(part)
    with pytest.raises(DatasetError, match=r"ADE_val_00000004\.png.*300"):
        reader().check(full=True)
    labels[1, 1] = 65535
    Image.fromarray(labels.astype(np.uint16)).save(part)
    # object category out of range
    data = json.loads(saved)
    data["annotations"][0]["category_id"] = 44
    val_json.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"ade20k_instance_val\.json.*category_id 44"):
        reader().check()
    # RLE of the wrong size
    data = json.loads(saved)
    data["annotations"][1]["segmentation"]["size"] = [10, 10]
    val_json.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"ade20k_instance_val\.json.*RLE size"):
        reader().check()
    # image size vs json
    data = json.loads(saved)
    data["images"][2]["height"] = 91
    val_json.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"ADE_val_00000003\.png.*does not match"):
        reader().check(full=True)
    # broken and missing json
    val_json.write_text(saved[:100])
    with pytest.raises(DatasetError, match=r"ade20k_instance_val\.json: unreadable json"):
        reader().check()
    val_json.unlink()
    with pytest.raises(DatasetError, match=r"ade20k_instance_val\.json"):
        reader().check()
    val_json.write_text(saved)
    reader().check(full=True)
    # the val split also needs the training part PNG of an unseen (oven) instance
    (root / "annotations_detectron2_part/training/ADE_train_00000003.png").unlink()
    with pytest.raises(DatasetError, match=r"ADE_train_00000003\.png: image without part annotation"):
        reader().check()
    # json image without image file
    (root / "images/validation/ADE_val_00000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"ADE_val_00000002\.jpg: annotation without image"):
        reader().check()


def test_partimagenet_malformed(tmp_path: Path) -> None:
    root = make_partimagenet(tmp_path / "PartImageNet")
    val_json = root / "val.json"
    saved = val_json.read_text()
    data = json.loads(saved)
    name = data["images"][1]["file_name"]
    data["images"][1]["width"] = 99
    val_json.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"{name}.*does not match"):
        PartImageNet(root, "val").check(full=True)
    data = json.loads(saved)
    data["images"][0]["file_name"] = "n01518878_1.JPEG"
    val_json.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"n01518878_1\.JPEG.*WNID"):
        PartImageNet(root, "val").check()
    data = json.loads(saved)
    data["annotations"][0]["category_id"] = 25  # "Car Tier" on a tiger
    val_json.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"val\.json.*tiger's tier"):
        PartImageNet(root, "val").check()
    val_json.write_text("[")
    with pytest.raises(DatasetError, match=r"val\.json: unreadable json"):
        PartImageNet(root, "val").check()
    val_json.unlink()
    with pytest.raises(DatasetError, match=r"val\.json"):
        PartImageNet(root, "val").check()
    val_json.write_text(saved)
    (root / "images/val" / name).unlink()
    with pytest.raises(DatasetError, match=rf"{name}: annotation without image"):
        PartImageNet(root, "val").check()
