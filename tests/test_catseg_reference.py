"""PartCATSeg against golden tensors of the official code (``PARTCLIPSEG_PARTCATSEG_REFERENCE_DIR``).

Everything (dims, layer counts, vocabularies, batch size, image sizes, which tensors exist) is read
from the fixture folder; a tensor the folder holds is compared within 1e-5 (integers exactly).
Default folder: the reduced copy in ``tests/fixtures/reference/partcatseg/tiny``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.reference
ATOL = 1e-5
#: plus a term relative to the tensor's largest magnitude: the fixture README notes that summation order
#: (the thread count, and the CPU's kernels: an AMD EPYC here, not the machine that made the fixture)
#: moves float results by up to ~1.4e-5 on the head's logits, whose values reach 13.5 (the final conv's
#: weights are scaled by 8; float32 spacing at 13.5 is 9.5e-7). The error of a sum follows the size of its
#: terms, not of its result, so the bound is per tensor: |ours - official| <= ATOL + RTOL * max|official|
#: (2.3e-5 on those logits, ~1e-5 on tensors of magnitude <= 1).
RTOL = 1e-6
DEFAULT_DIR = Path(__file__).parent / "fixtures" / "reference" / "partcatseg" / "tiny"


def catseg_reference_dir() -> Path:
    return Path(os.environ.get("PARTCLIPSEG_PARTCATSEG_REFERENCE_DIR", DEFAULT_DIR))


def load_catseg_reference_model(path: Path, **official):
    """Our PartCATSeg built from a fixture ``config.json`` with its ``model.safetensors``, eval mode."""
    from partclipseg.model.partcatseg import PartCATSeg, PartCATSegConfig
    from partclipseg.model.partcatseg.weights import load_official_partcatseg_weights

    config = PartCATSegConfig.load(path / "config.json")
    for key, value in official.items():
        setattr(config.official, key, value)
    templates = json.loads((path / "config.json").read_text())["templates"]["list"]
    model = PartCATSeg(config, templates)
    load_official_partcatseg_weights(model, path / "model.safetensors")
    return model.eval()


@pytest.fixture(scope="module")
def catseg_ref():
    from safetensors.torch import load_file

    path = catseg_reference_dir()
    if not (path / "config.json").is_file():
        pytest.fail(f"PartCATSeg reference folder not found: {path} (set PARTCLIPSEG_PARTCATSEG_REFERENCE_DIR)")
    data = {stem: load_file(str(path / f"{stem}.safetensors")) for stem in ("inputs", "outputs", "infer")}
    data["config"] = json.loads((path / "config.json").read_text())
    data["summary"] = json.loads((path / "summary.json").read_text())
    data["model"] = load_catseg_reference_model(path)
    data["dir"] = path
    return data


def _close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours = torch.as_tensor(ours)
    assert tuple(ours.shape) == tuple(theirs.shape), f"{name}: shape {tuple(ours.shape)} vs official {tuple(theirs.shape)}"
    if not theirs.is_floating_point():
        assert torch.equal(ours.long(), theirs.long()), f"{name}: integer values differ"
        return 0.0
    if not theirs.numel():
        return 0.0
    diff = (ours.detach().float() - theirs.float()).abs().max().item()
    bound = ATOL + RTOL * theirs.float().abs().max().item()
    assert diff <= bound, f"{name}: max abs diff {diff:.3g} > {bound:.3g} (= {ATOL} + {RTOL} x max |official|)"
    return diff


def _compare_present(expected: dict, ours: dict, prefix: str = "") -> list[str]:
    """Compare every ``ours`` entry whose ``prefix + name`` the fixture holds; return the names compared."""
    compared = []
    for name, value in ours.items():
        key = prefix + name
        if key in expected:
            _close(key, value, expected[key])
            compared.append(key)
    return compared


def _vocabulary(config: dict, split: str):
    from partclipseg.vocabulary import Vocabulary

    return Vocabulary.from_names(config["vocab"][split]["ori_text_classes"])


def _train_batch(ref) -> tuple[list, torch.Tensor, torch.Tensor]:
    inputs = ref["inputs"]
    b = int(ref["config"]["train_batch"]["B"])
    images = [inputs[f"train.image.{i}"] for i in range(b)]
    classes = torch.stack([inputs[f"train.obj_part_sem_seg.{i}"] for i in range(b)])
    objects = torch.stack([inputs[f"train.sem_seg.{i}"] for i in range(b)])
    return images, classes, objects


def _tower_inputs(ref, model, stage: str, images: list) -> dict:
    """Our preprocessing, checked against the fixture's padded / resized inputs where present."""
    ours = model.preprocess(images)
    rename = {"clip_padded": "clip_images_padded", "dino_padded": "dino_images_padded",
              "clip_input": "clip_input", "dino_input": "dino_input"}
    _compare_present(ref["inputs"], {rename[k]: v for k, v in ours.items() if k in rename}, f"{stage}.")
    return ours


# --------------------------------------------------------------------------- text side
def test_catseg_prompt_tokens_match_official_clip_tokenize(catseg_ref):
    from partclipseg.model.partcatseg.text import prompt_token_ids

    model, inputs = catseg_ref["model"], catseg_ref["inputs"]
    checked = 0
    for split in ("train", "test"):
        vocab = _vocabulary(catseg_ref["config"], split)
        lists = {"part_obj": [*vocab.parts, *vocab.objects], "specific": list(vocab.object_specific_classes)}
        for kind, names in lists.items():
            ids, counts = prompt_token_ids(names, model.templates, model.config.clip.context_length)
            _close(f"tokens.{split}.{kind}", ids, inputs[f"tokens.{split}.{kind}"])
            _close(f"tokens.{split}.{kind}.counts", counts, inputs[f"tokens.{split}.{kind}.counts"])
            checked += 1
    assert checked == 4


def test_catseg_vocabulary_maps_match_official(catseg_ref):
    from partclipseg.model.partcatseg.text import class_ids_to_parts, object_ids_to_model_objects

    for split in ("train", "test"):
        vocab, info = _vocabulary(catseg_ref["config"], split), catseg_ref["config"]["vocab"][split]
        assert list(vocab.parts) == info["part_classes"] and list(vocab.objects) == info["obj_in_part_classes"]
        maps = {"text_to_part": class_ids_to_parts(vocab.text_to_part),
                "obj_to_obj_in_part": object_ids_to_model_objects(info["obj_classes"], vocab.objects),
                "text_to_obj_in_part": torch.tensor(vocab.text_to_object),
                "part_index_map": torch.tensor(vocab.text_to_part)[None, None, None],
                "obj_index_map": torch.tensor(vocab.text_to_object)[None, None, None]}
        assert len(_compare_present(catseg_ref["inputs"], maps, f"maps.{split}.")) == 5


@pytest.mark.slow  # the fp16 CLIP text tower is slow on CPUs (about 3x float32)
def test_catseg_text_features_fp16_match_official(catseg_ref):
    """The official text features are computed by the fp16 CLIP (quirk: ``text_features_fp16``)."""
    model = catseg_ref["model"]
    model.clear_text_cache()
    compared = []
    for split in ("train", "test"):
        text = model.text_features(_vocabulary(catseg_ref["config"], split))
        compared += _compare_present(catseg_ref["outputs"], {"part_obj": text.part_object, "specific": text.specific},
                                     f"text.{split}.")
    assert len(compared) == 4


@pytest.mark.slow
def test_catseg_text_features_fp32_switch_matches_official_fp32_run(catseg_ref):
    model = load_catseg_reference_model(catseg_ref["dir"], text_features_fp16=False)
    expected = catseg_ref["outputs"]
    compared = []
    for split in ("train", "test"):
        text = model.text_features(_vocabulary(catseg_ref["config"], split))
        compared += _compare_present(expected, {"part_obj": text.part_object, "specific": text.specific},
                                     f"text_fp32.{split}.")
        # the switch changes the numbers (by about 1e-3 for these weights)
        assert (text.specific - expected[f"text.{split}.specific"]).abs().max() > 1e-5
    assert len(compared) == 4


# --------------------------------------------------------------------------- training call
def test_catseg_training_call_matches_every_official_intermediate(catseg_ref):
    model, expected = catseg_ref["model"], catseg_ref["outputs"]
    images, _, _ = _train_batch(catseg_ref)
    vocab = _vocabulary(catseg_ref["config"], "train")
    with torch.no_grad():
        pre = _tower_inputs(catseg_ref, model, "train", images)
        clip_in = catseg_ref["inputs"].get("train.clip_input", pre["clip_input"])
        dino_in = catseg_ref["inputs"].get("train.dino_input", pre["dino_input"])
        trace: dict = {}
        image = model.encode_pixels(clip_in, dino_in, trace)
        text = model.text_features(vocab)
        part_object, specific, costs = model.aggregate(image, text, trace)
    b = image.features.shape[0]
    trace.update({
        "agg.in.text_part_obj_feats": text.part_object.expand(b, -1, -1, -1),
        "agg.in.text_specific_part_feats": text.specific.expand(b, -1, -1, -1),
        "agg.in.part_index_map": text.part_index[None, None, None],
        "agg.in.obj_index_map": text.object_index[None, None, None],
        "agg.in.num_part_classes": torch.tensor(text.num_parts),
        "head.part_obj_logit": part_object, "head.specific_logit": specific,
    })
    trace.update({f"head.costs.{k}": v for k, v in costs.items()})
    compared = _compare_present(expected, trace)
    stages = {k for k in expected if k.startswith(("agg.", "head.", "clip.", "dino."))}
    assert stages <= set(compared), f"fixture tensors without a counterpart: {sorted(stages - set(compared))}"
    assert "head.specific_logit" in compared and "clip.dense" in compared


def test_catseg_training_loss_matches_official(catseg_ref):
    from partclipseg.losses import LossConfig
    from partclipseg.model.partcatseg.losses import partcatseg_loss
    from partclipseg.model.partcatseg.text import class_ids_to_parts, object_ids_to_model_objects

    model, expected, summary = catseg_ref["model"], catseg_ref["outputs"], catseg_ref["summary"]
    images, classes, objects = _train_batch(catseg_ref)
    info = catseg_ref["config"]["vocab"]["train"]
    vocab = _vocabulary(catseg_ref["config"], "train")
    lambdas = catseg_ref["config"]["lambdas"]
    with torch.no_grad():
        text = model.text_features(vocab)
        part_object, specific, costs = model.run(images, vocab)
        losses = partcatseg_loss(part_object, specific, costs, classes, objects, class_ids_to_parts(vocab.text_to_part),
                                 object_ids_to_model_objects(info["obj_classes"], vocab.objects), text.object_index,
                                 vocab.num_parts, LossConfig().background_weight, lambdas["part"], lambdas["obj"],
                                 lambdas["jsd"])
    compared = _compare_present(expected, losses, "loss.")
    assert {k for k in expected if k.startswith("loss.")} == set(compared)
    calls = summary["train_losses"]["bce_calls_in_order"]
    ours = [k for k in losses if k.startswith("bce.")]
    assert [c["name"] for c in calls] == [k.split(".", 2)[2] for k in ours]
    for call, key in zip(calls, ours):
        assert abs(losses[key].item() - call["value"]) <= ATOL, key


def test_catseg_loss_gradients_reach_trainable_parts_only(catseg_ref):
    """One backward pass: DINOv2 and the aggregator get gradients, frozen CLIP does not."""
    from partclipseg.model.partcatseg.losses import partcatseg_loss
    from partclipseg.model.partcatseg.text import class_ids_to_parts, object_ids_to_model_objects

    model = load_catseg_reference_model(catseg_ref["dir"]).train()
    images, classes, objects = _train_batch(catseg_ref)
    info = catseg_ref["config"]["vocab"]["train"]
    vocab = _vocabulary(catseg_ref["config"], "train")
    text = catseg_ref["model"].text_features(vocab)  # frozen CLIP: reuse the shared model's features
    pre = model.preprocess(images)
    part_object, specific, costs = model.aggregate(model.encode_pixels(pre["clip_input"], pre["dino_input"]), text)
    loss = partcatseg_loss(part_object, specific, costs, classes, objects, class_ids_to_parts(vocab.text_to_part),
                           object_ids_to_model_objects(info["obj_classes"], vocab.objects), text.object_index,
                           vocab.num_parts)["total"]
    loss.backward()
    assert all(p.grad is None for p in model.clip_image.parameters())
    assert model.dino.dinov2.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.aggregator.specific_cost_embed.weight.grad.abs().sum() > 0
    assert model.aggregator.part_object_cost_embed.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- inference call
def _inference(catseg_ref, model):
    from partclipseg.model.partcatseg.postprocess import oracle_obj, pred_all

    inputs, info = catseg_ref["inputs"], catseg_ref["config"]["vocab"]["test"]
    vocab = _vocabulary(catseg_ref["config"], "test")
    image = inputs["infer.image"]
    with torch.no_grad():
        pre = _tower_inputs(catseg_ref, model, "infer", [image])
        clip_in = inputs.get("infer.clip_input", pre["clip_input"])
        dino_in = inputs.get("infer.dino_input", pre["dino_input"])
        trace: dict = {}
        features = model.encode_pixels(clip_in, dino_in, trace)
        text = model.text_features(vocab)
        part_object, specific, costs = model.aggregate(features, text, trace)
    object_name = info["obj_classes"][int(inputs["infer.instances.gt_classes"][0])]
    image_size = tuple(image.shape[-2:])
    out_size = tuple(int(x) for x in inputs["infer.height_width"])
    trace["head.part_obj_logit"], trace["head.specific_logit"] = part_object, specific
    trace.update({f"result.costs.{k}": v for k, v in costs.items()})
    trace["result.sem_seg"] = oracle_obj(specific[0], vocab.object_specific_classes, object_name, image_size, out_size,
                                         model.config.official.oracle_substring_match)
    trace["result.sem_seg_all"] = pred_all(specific[0], image_size, out_size)
    return trace, vocab, object_name


def test_catseg_inference_call_matches_every_official_output(catseg_ref):
    from partclipseg.model.partcatseg.postprocess import confusion, evaluation_maps, oracle_masked_classes

    expected, inputs = catseg_ref["infer"], catseg_ref["inputs"]
    trace, vocab, object_name = _inference(catseg_ref, catseg_ref["model"])
    assert object_name == catseg_ref["summary"]["infer"]["object_name"]
    masked = oracle_masked_classes(vocab.object_specific_classes, object_name)
    trace["oracle.select_mask"] = torch.tensor(masked)
    trace["label.oracle_argmax"] = trace["result.sem_seg"].argmax(dim=0)
    trace["label.pred_all_argmax"] = trace["result.sem_seg_all"].argmax(dim=0)
    maps = evaluation_maps(trace["result.sem_seg"], trace["result.sem_seg_all"], inputs["infer.obj_part_sem_seg"])
    trace.update({f"eval.{k}": v for k, v in maps.items()})
    k = len(vocab) + 1
    trace["eval.conf_oracle"] = confusion(maps["pred_oracle"], maps["gt"], k)
    trace["eval.conf_pred_all"] = confusion(maps["pred_all"], maps["gt"], k)
    compared = _compare_present(expected, trace)
    missing = sorted(set(expected) - set(compared) - {k for k in expected if k.startswith("agg.in.")})
    assert not missing, f"fixture tensors without a counterpart: {missing}"
    assert masked == catseg_ref["summary"]["infer"]["masked_classes"]


def test_catseg_oracle_exact_object_switch_differs_only_on_substring_names():
    from partclipseg.model.partcatseg.postprocess import oracle_masked_classes

    names = ["car's wheel", "cart's wheel", "cat's head"]
    assert oracle_masked_classes(names, "car") == [2]              # official: "car" in "cart's wheel"
    assert oracle_masked_classes(names, "car", substring_match=False) == [1, 2]


def test_catseg_batch_rows_equal_single_image_runs(catseg_ref):
    """Two different images in one batch give each image's own outputs (batch dimension honoured)."""
    model, inputs = catseg_ref["model"], catseg_ref["inputs"]
    from partclipseg.vocabulary import Vocabulary

    vocab = Vocabulary.from_names(_vocabulary(catseg_ref["config"], "test").object_specific_classes[:2])
    a = inputs["infer.image"]
    b = torch.flip(a, dims=[-1])
    with torch.no_grad():
        pair = model.run([a, b], vocab)
        single = [model.run([x], vocab) for x in (a, b)]
    for i in range(2):
        torch.testing.assert_close(pair[0][i], single[i][0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pair[1][i], single[i][1][0], atol=1e-5, rtol=1e-5)


def test_catseg_official_evaluator_figures_match_summary(catseg_ref):
    """Official ``evaluate()`` on this one image's confusion matrices (incl. its IoU > 0 subset rule)."""
    import math

    from partclipseg.model.partcatseg.metrics import partcatseg_official_metrics

    infer, config = catseg_ref["infer"], catseg_ref["config"]
    test_names = config["vocab"]["test"]["ori_text_classes"]
    seen = [test_names.index(n) for n in config["vocab"]["train"]["ori_text_classes"]]
    ours = partcatseg_official_metrics(infer["eval.conf_oracle"].numpy(), infer["eval.conf_pred_all"].numpy(),
                                       test_names, {"base": seen})
    expected = catseg_ref["summary"]["evaluator"]
    for protocol in ("oracle_obj", "pred_all"):
        assert set(ours[protocol]) == set(expected[protocol]), protocol
        for key, value in expected[protocol].items():
            mine = ours[protocol][key]
            if value is None:
                assert math.isnan(mine), f"{protocol} {key}: {mine} vs official NaN"
            else:
                assert abs(mine - value) <= 1e-9 * max(1.0, abs(value)), f"{protocol} {key}: {mine} vs {value}"
