"""Predictor: protocols against the official inference, caching, prompts, batching, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_reference_model
from partclipseg.config import get_config
from partclipseg.errors import ImageError, PartCLIPSegError, VocabularyError
from partclipseg.model import build_model
from partclipseg.predictor import Predictor, segment_parts

VOCAB = ["dog's head", "dog's leg", "dog's tail", "cat's head", "cat's leg", "car's wheel", "car's window"]


# ---------------------------------------------------------------------------- official inference
@pytest.fixture(scope="module")
def ref_predictor(ref_dir, ref_tensors):
    infer = ref_tensors.get("infer")
    if infer is None:
        pytest.skip("no infer.safetensors in the reference folder")
    model = load_reference_model(ref_dir)
    model.config.image_size = infer["model_input.pixel_values"].shape[-1]  # the processing size used there
    predictor = Predictor(model)
    predictor.set_image(ref_dir / "infer_image.png")
    return predictor


@pytest.mark.reference
def test_pred_all_matches_official_inference(ref_predictor, ref_tensors, ref_vocab):
    infer = ref_tensors["infer"]
    result = ref_predictor.predict(ref_vocab["text_classes"], return_scores=True)
    expected = infer["result.sem_seg_with_bg"].numpy()
    assert result.part_scores.shape == expected.shape
    np.testing.assert_allclose(result.part_scores, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.generalized_part_scores, infer["result.part_sem_seg"].numpy(), atol=1e-5, rtol=0)
    to_dataset_object = np.array(ref_vocab["obj_in_part_to_obj"])
    np.testing.assert_array_equal(to_dataset_object[result.object_labels], infer["result.obj_sem_seg_with_bg"].numpy())
    np.testing.assert_array_equal(result.part_labels, expected.argmax(0))  # the evaluator's argmax


@pytest.mark.reference
def test_oracle_obj_matches_official_inference(ref_predictor, ref_tensors, ref_vocab):
    infer = ref_tensors["infer"]
    gt_objects = infer["sem_seg"].long().numpy()
    ignore = ref_vocab["train_settings"]["ignore_label"]
    names = [ref_vocab["obj_classes"][i] for i in np.unique(gt_objects) if i != ignore]
    with_parts = [n for n in names if n in ref_predictor.encode_vocabulary(ref_vocab["text_classes"]).vocabulary.objects]
    result = ref_predictor.predict(ref_vocab["text_classes"], protocol="oracle-obj", object_name=with_parts,
                                   return_scores=True)
    expected = infer["result.sem_seg"].numpy()
    np.testing.assert_allclose(result.part_scores[:-1], expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(result.part_labels, expected.argmax(0))


# ---------------------------------------------------------------------------- behaviour (random tiny model)
@pytest.fixture()
def predictor():
    torch.manual_seed(0)
    return Predictor(build_model(get_config("tiny-fast")))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (45, 70, 3), dtype=np.uint8), rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)]


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_image_embedded_once_and_text_cached_per_vocabulary(predictor, images):
    vision_calls, text_calls = _count_calls(predictor.model.vision), _count_calls(predictor.model.text)
    predictor.set_image(images[0])
    first = predictor.predict(VOCAB)
    predictor.predict(VOCAB[:3])
    predictor.predict(VOCAB, point=(10, 10))
    assert len(vision_calls) == 1 and len(text_calls) == 2
    predictor.set_image(images[1])
    second = predictor.predict(VOCAB)
    assert len(vision_calls) == 2 and len(text_calls) == 2  # same vocabulary: no text re-encoding
    assert first.size == (45, 70) and second.size == (64, 40)


def test_batched_prediction_equals_single(predictor, images):
    batch = predictor.predict_batch(images, VOCAB, batch_size=2, return_scores=True)
    for image, got in zip(images, batch):
        predictor.set_image(image)
        single = predictor.predict(VOCAB, return_scores=True)
        np.testing.assert_allclose(got.part_scores, single.part_scores, atol=1e-5)
        np.testing.assert_array_equal(got.part_labels, single.part_labels)


def test_chunked_decoding_is_identical(images):
    torch.manual_seed(0)
    model = build_model(get_config("tiny-fast"))
    a, b = Predictor(model, chunk_size=None), Predictor(model, chunk_size=3)
    for p in (a, b):
        p.set_image(images[0])
    ra, rb = a.predict(VOCAB, return_scores=True), b.predict(VOCAB, return_scores=True)
    np.testing.assert_allclose(ra.part_scores, rb.part_scores, atol=1e-6)


def test_three_granularities_are_consistent(predictor, images):
    predictor.set_image(images[0])
    r = predictor.predict(VOCAB)
    v = r.vocabulary
    fg = r.part_labels != len(v)
    owner = np.array(v.text_to_object)[r.part_labels[fg]]
    np.testing.assert_array_equal(owner, r.object_labels[fg])  # Pred-All: a part belongs to the pixel's object
    np.testing.assert_array_equal(r.object_labels == v.num_objects, r.part_labels == len(v))
    assert set(np.unique(r.generalized_part_labels)) <= set(range(v.num_parts + 1))


def test_pred_all_rule_compares_the_two_gates_on_one_model(predictor, images):
    """pred_all_rule="class-argmax" is the argmax of the T+1 object-specific sigmoid scores, computed here
    from the model's own logits; "object-head" is PartCLIPSeg's default; only Pred-All takes the option."""
    import torch.nn.functional as F

    predictor.set_image(images[0])
    default = predictor.predict(VOCAB)
    np.testing.assert_array_equal(predictor.predict(VOCAB, pred_all_rule="object-head").part_labels, default.part_labels)
    by_class = predictor.predict(VOCAB, pred_all_rule="class-argmax")
    encoded = predictor.encode_vocabulary(VOCAB)
    with torch.no_grad():
        out = predictor.model.decode(predictor.model.encode_image(predictor.model.preprocess([images[0]])), encoded)
    scores = torch.sigmoid(F.interpolate(out.object_part_logits, size=(45, 70), mode="bilinear", align_corners=False))
    np.testing.assert_array_equal(by_class.part_labels, scores[0].argmax(0).numpy())
    assert not np.array_equal(by_class.part_labels, default.part_labels)  # the rules differ on this model
    v = by_class.vocabulary  # the object and generalized-part maps follow the winning class
    fg = by_class.part_labels != len(v)
    np.testing.assert_array_equal(np.array(v.text_to_object)[by_class.part_labels[fg]], by_class.object_labels[fg])
    with pytest.raises(PartCLIPSegError, match="unknown pred_all_rule 'max'"):
        predictor.predict(VOCAB, pred_all_rule="max")
    with pytest.raises(PartCLIPSegError, match="Pred-All only"):
        predictor.predict(VOCAB, object_name="dog", pred_all_rule="class-argmax")
    torch.manual_seed(0)
    baseline = Predictor(build_model(get_config("tiny-fast", architecture="clipseg")))
    baseline.set_image(images[0])
    with pytest.raises(PartCLIPSegError, match="no object head"):
        baseline.predict(VOCAB, pred_all_rule="class-argmax")


def test_mask_prompt_with_and_without_object(predictor, images):
    predictor.set_image(images[0])
    mask = np.zeros((45, 70), dtype=bool)
    mask[10:30, 20:50] = True
    r = predictor.predict(VOCAB, object_mask=mask, object_name="cat")
    assert r.mode == "oracle-obj" and r.selected_object == "cat"
    assert (r.part_labels[~mask] == len(VOCAB)).all()
    assert {r.vocabulary.object_of(c) for c in np.unique(r.part_labels[mask])} == {"cat"}
    auto = predictor.predict(VOCAB, object_mask=mask)
    assert auto.mode == "mask" and auto.selected_object in r.vocabulary.objects
    assert {auto.vocabulary.object_of(c) for c in np.unique(auto.part_labels[mask])} == {auto.selected_object}


def test_box_and_point_prompts_select_one_object(predictor, images):
    predictor.set_image(images[0])
    r = predictor.predict(VOCAB, box=(5, 5, 40, 30))
    outside = np.ones((45, 70), dtype=bool)
    outside[5:30, 5:40] = False
    assert r.mode == "box" and (r.part_labels[outside] == len(VOCAB)).all()
    found = {r.vocabulary.object_of(c) for c in np.unique(r.part_labels) if c != len(VOCAB)}
    assert found <= {r.selected_object}
    p = predictor.predict(VOCAB, point=(12, 20))
    assert p.mode == "point" and (p.part_labels != len(VOCAB)).sum() > 1
    if p.region_rule != "object-score":  # that rule may snap to the nearest high-score area (point_region)
        assert p.part_labels[20, 12] != len(VOCAB)
    assert {p.vocabulary.object_of(c) for c in np.unique(p.part_labels) if c != len(VOCAB)} == {p.selected_object}


def test_prompts_on_one_image_reuse_the_object_head_argmax(predictor, images, monkeypatch):
    """Clicks on one image compute the object head's image-size argmax once; the labels equal a fresh
    Predictor's, and a new image or vocabulary computes it again."""
    import partclipseg.predictor as predictor_module

    calls = []
    real = predictor_module.object_labels_of
    monkeypatch.setattr(predictor_module, "object_labels_of", lambda *a: calls.append(1) or real(*a))
    predictor.set_image(images[0])
    prompts = [{"point": (12, 20)}, {"box": (5, 5, 40, 30)}, {"point": (60, 40)}, {"box": (0, 0, 70, 45)}]
    results = [predictor.predict(VOCAB, **kwargs) for kwargs in prompts]
    assert len(calls) == 1
    for kwargs, got in zip(prompts, results):
        fresh = Predictor(predictor.model)
        fresh.set_image(images[0])
        want = fresh.predict(VOCAB, **kwargs)
        np.testing.assert_array_equal(got.part_labels, want.part_labels)
        assert (got.selected_object, got.region_rule) == (want.selected_object, want.region_rule)
    predictor.predict(VOCAB[:3], point=(12, 20))
    assert len(calls) == 6  # + 4 fresh Predictors + the new vocabulary
    predictor.set_image(images[1])
    predictor.predict(VOCAB[:3], point=(12, 20))
    assert len(calls) == 7


def test_oracle_obj_restricts_classes_to_the_given_object(predictor, images):
    predictor.set_image(images[1])
    r = predictor.predict(VOCAB, protocol="oracle-obj", object_name="dog", return_scores=True)
    assert {r.vocabulary.object_of(c) for c in np.unique(r.part_labels)} == {"dog"}
    not_dog = [i for i, n in enumerate(VOCAB) if not n.startswith("dog")]
    assert (r.part_scores[not_dog] == 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"box": (0, 0, 100, 10)}, "inside the 70x45 image"),
    ({"box": (30, 10, 20, 40)}, "non-empty box"),
    ({"point": (70, 3)}, "outside the 70x45 image"),
    ({"point": (-1, 3)}, "outside"),
    ({"object_mask": np.ones((10, 10), bool)}, "object mask is 10x10"),
    ({"object_mask": np.zeros((45, 70), bool)}, "empty"),
    ({"object_name": "giraffe"}, "giraffe"),
    ({"protocol": "oracle-obj"}, "needs the object: object_name="),
    ({"protocol": "sliding"}, "unknown protocol"),
    ({"box": (0, 0, 5, 5), "point": (1, 1)}, "at most one"),
    ({"box": (0, 0, float("nan"), 5)}, "box must be 4 finite numbers"),
    ({"point": (1, float("inf"))}, "point must be 2 finite numbers"),
    ({"object_name": []}, "non-empty object name"),
    ({"object_name": " "}, "non-empty object name"),
])
def test_bad_prompts_give_clear_errors(predictor, images, kwargs, message):
    predictor.set_image(images[0])
    with pytest.raises(PartCLIPSegError, match=message):
        predictor.predict(VOCAB, **kwargs)


def test_bad_vocabularies_and_images(predictor, images, tmp_path):
    predictor.set_image(images[0])
    with pytest.raises(VocabularyError):
        predictor.predict([])
    with pytest.raises(VocabularyError, match="dog head"):
        predictor.predict(["dog head"])
    with pytest.raises(PartCLIPSegError, match="no image set"):
        Predictor(predictor.model).predict(VOCAB)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        predictor.set_image(tmp_path / "broken.jpg")
    with pytest.raises(PartCLIPSegError, match="no image set"):  # the image set before is gone too
        predictor.predict(VOCAB)


def test_segment_parts_returns_pipeline_shape(predictor, images):
    out = segment_parts(images[0], parts="dog's head, dog's leg, cat's head", model=predictor)
    assert out and all(set(d) == {"label", "mask", "score"} for d in out)
    union = np.zeros((45, 70), dtype=int)
    for d in out:
        assert d["mask"].shape == (45, 70) and d["mask"].any() and 0 <= d["score"] <= 1
        union += d["mask"]
    assert union.max() == 1  # masks are disjoint


def test_attention_heatmap_on_request(predictor, images):
    predictor.set_image(images[0])
    r = predictor.predict(VOCAB, attention_for=["dog's head"])
    heat = r.attention["dog's head"]
    assert heat.shape == (45, 70) and 0 <= heat.min() and heat.max() <= 1 and heat.max() > 0.5


def test_bfloat16_runs_close_to_float32(images):
    torch.manual_seed(0)
    model = build_model(get_config("tiny-fast"))
    fp32 = Predictor(model)
    fp32.set_image(images[0])
    ref = fp32.predict(VOCAB, return_scores=True)
    copy = build_model(get_config("tiny-fast"))
    copy.load_state_dict(model.state_dict())
    bf16 = Predictor(copy, dtype=torch.bfloat16)
    bf16.set_image(images[0])
    got = bf16.predict(VOCAB, return_scores=True)
    assert np.abs(got.object_scores - ref.object_scores).max() < 0.05  # gated part scores may flip
    assert (got.part_labels == ref.part_labels).mean() > 0.8


def test_chunked_post_processing_equals_full_argmax():
    from partclipseg.postprocess import pred_all

    torch.manual_seed(3)
    p, o, t = 5, 3, 11
    logits = torch.randn(p + o + 1, 24, 24) * 3
    part_logits = torch.randn(t + 1, 24, 24) * 3
    part_logits[:, :4, :4] = 40.0  # saturated sigmoids: ties resolved to the first index
    text_to_object = torch.randint(0, o, (t,))
    full = pred_all(logits, part_logits, text_to_object, p, (37, 50), keep_scores=True)
    for chunk in (1, 4, 32):
        got = pred_all(logits, part_logits, text_to_object, p, (37, 50), keep_scores=False, chunk=chunk)
        assert torch.equal(got.part_labels, full.part_labels)
        assert torch.equal(got.part_labels, full.part_scores.argmax(0))
        torch.testing.assert_close(got.part_confidence, full.part_scores.max(0).values)


def test_json_and_segments_give_each_class_its_area_and_mean_score():
    from partclipseg.result import PartSegmentation
    from partclipseg.vocabulary import Vocabulary

    vocab = Vocabulary.parse("dog's head, dog's leg, cat's head, cat's tail")
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2, 4], size=(37, 53), p=[0.5, 0.2, 0.1, 0.2])  # 4 = background; class 3 absent
    confidence = rng.random((37, 53)).astype(np.float32)
    zeros = np.zeros_like(labels)
    result = PartSegmentation(vocab, np.zeros((37, 53, 3), np.uint8), labels, zeros, zeros, confidence, "pred-all")
    parts = result.to_json()["parts"]
    assert [p["id"] for p in parts] == [0, 1, 2]  # present classes, largest first
    for p in parts:
        mask = labels == p["id"]
        assert p["area"] == int(mask.sum()) and p["area_fraction"] == mask.sum() / labels.size
        assert abs(p["score"] - confidence[mask].astype(np.float64).mean()) < 1e-12
    segments = result.segments()
    assert [s["label"] for s in segments] == [p["label"] for p in parts]
    assert [s["score"] for s in segments] == [p["score"] for p in parts]
    assert all(np.array_equal(s["mask"], labels == p["id"]) for s, p in zip(segments, parts))


def test_predict_batch_refuses_what_it_cannot_batch(predictor, images, tmp_path):
    """A single path (a string is not a list of images), a batch size that is not an integer >= 1 and an
    image_index (the batch answers for every image) are one-line errors, not a walk over characters,
    an empty answer or a raw TypeError."""
    from PIL import Image

    path = tmp_path / "one.png"
    Image.fromarray(images[0]).save(path)
    for one in (str(path), path):
        with pytest.raises(PartCLIPSegError, match="takes a list of images"):
            predictor.predict_batch(one, VOCAB)
    for size in (0, -1, 1.5, True):
        with pytest.raises(PartCLIPSegError, match="batch_size must be an integer >= 1"):
            predictor.predict_batch(images[:2], VOCAB, batch_size=size)
    with pytest.raises(PartCLIPSegError, match="no image_index"):
        predictor.predict_batch(images[:2], VOCAB, image_index=1)
    assert len(predictor.predict_batch([path, images[1]], VOCAB, batch_size=1)) == 2
    # one image as a PIL image, an HWC array or a CHW tensor is refused (a CHW tensor gave one result
    # per channel); a numpy integer batch size, a stack of grayscale images and a generator are batches
    chw = torch.from_numpy(images[0]).permute(2, 0, 1).contiguous()
    for one in (Image.fromarray(images[0]), images[0], chw, images[0][..., 0]):
        with pytest.raises(PartCLIPSegError, match="takes a list of images"):
            predictor.predict_batch(one, VOCAB)
    gray = np.stack([images[0][..., 0], images[0][..., 1]])  # 2 x H x W
    by_stack = predictor.predict_batch(gray, VOCAB, batch_size=np.int64(2))
    by_list = predictor.predict_batch(list(gray), VOCAB, batch_size=torch.tensor(1))
    by_generator = predictor.predict_batch((g for g in gray), VOCAB)
    assert len(by_stack) == len(by_list) == len(by_generator) == 2
    for a, b, c in zip(by_stack, by_list, by_generator):
        np.testing.assert_array_equal(a.part_labels, b.part_labels)
        np.testing.assert_array_equal(a.part_labels, c.part_labels)
