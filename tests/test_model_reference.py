"""The model against golden outputs of the official code (``PARTCLIPSEG_REFERENCE_DIR``).

Sizes, batch size, vocabulary and the list of outputs are read from the fixture folder.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.reference
ATOL = 1e-5


def _run(model, inputs: dict, prefix: str = "", **kwargs):
    with torch.no_grad():
        return model(inputs[prefix + "pixel_values"], inputs[prefix + "input_ids"], inputs[prefix + "part_index_map"],
                     inputs[prefix + "obj_index_map"], inputs[prefix + "attention_mask"], **kwargs)


def _close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} vs official {tuple(theirs.shape)}"
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert diff <= ATOL, f"{name}: max abs diff {diff:.3g} > {ATOL}"


def test_model_forward_matches_every_official_output(ref_model, ref_tensors):
    inputs, expected = ref_tensors["inputs"], ref_tensors["outputs"]
    out = _run(ref_model, inputs, output_attentions=True, output_hidden_states=True)
    b = inputs["pixel_values"].shape[0]
    ours = {
        "logits": out.logits,
        "part_obj_logits": out.object_part_logits,
        # official: (B*N, E), image-major
        "conditional_embeddings": out.class_embeddings.repeat(b, 1),
    }
    for i, a in enumerate(out.decoder_attentions):
        ours[f"decoder_attentions.{i}"] = a.flatten(0, 1)  # ours [B, N, H, L, L] -> official [B*N, H, L, L]
    for i, h in enumerate(out.decoder_hidden_states):
        ours[f"decoder_hidden_states.{i}"] = h.flatten(0, 1)
    for i, h in enumerate(out.vision_hidden_states):
        ours[f"vision_hidden_states.{i}"] = h
    not_computed = {"pooled_output"}  # CLIP's pooled image embedding: no mask depends on it (SPEC §1.3.5)
    checked = 0
    for name, theirs in expected.items():
        if name in not_computed:
            continue
        assert name in ours, f"official output {name!r} has no counterpart"
        _close(name, ours[name], theirs)
        checked += 1
    assert checked >= 5


def test_interpolated_position_embeddings_match(ref_model, ref_tensors):
    """The meta-arch fixtures run at a processing size other than the native one (bicubic table)."""
    cases = [name for name, data in ref_tensors.items() if "model_input.pixel_values" in data and "logits" in data]
    assert cases, "no fixture file holds model_input.* with logits"
    for name in cases:
        data = ref_tensors[name]
        out = _run(ref_model, data, prefix="model_input.")
        _close(f"{name} logits", out.logits, data["logits"])
        _close(f"{name} part_obj_logits", out.object_part_logits, data["part_obj_logits"])


def test_batch_of_one_equals_batch_row(ref_model, ref_tensors):
    inputs = ref_tensors["inputs"]
    full = _run(ref_model, inputs)
    for i in range(inputs["pixel_values"].shape[0]):
        single = dict(inputs, pixel_values=inputs["pixel_values"][i:i + 1])
        out = _run(ref_model, single)
        assert out.logits.shape[0] == 1 and out.object_part_logits.shape[0] == 1
        torch.testing.assert_close(out.logits[0], full.logits[i], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.object_part_logits[0], full.object_part_logits[i], atol=ATOL, rtol=0)


def test_trimmed_prompts_give_identical_outputs(ref_model, ref_tensors, ref_vocab):
    """Padding to the longest prompt instead of 77 tokens changes nothing (pooled at the end token)."""
    from partclipseg.tokenizer import get_tokenizer
    from partclipseg.vocabulary import Vocabulary

    vocab = Vocabulary.from_names(ref_vocab["text_classes"])
    ids77, mask77 = get_tokenizer()(list(vocab.prompts), padding="max_length")
    torch.testing.assert_close(ids77, ref_tensors["inputs"]["input_ids"], atol=0, rtol=0)
    ids, mask = get_tokenizer()(list(vocab.prompts), padding="longest")
    assert ids.shape[1] < 77
    with torch.no_grad():
        full = ref_model.encode_text(ids77, mask77)
        trimmed = ref_model.encode_text(ids, mask)
    torch.testing.assert_close(trimmed, full, atol=ATOL, rtol=0)


def test_object_text_index_switch_changes_only_the_object_specific_head(ref_dir, ref_tensors):
    from conftest import load_reference_model

    official = load_reference_model(ref_dir)
    fixed = load_reference_model(ref_dir)
    fixed.config.official.object_text_index_offset_bug = False
    inputs = ref_tensors["inputs"]
    a, b = _run(official, inputs), _run(fixed, inputs)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    assert (a.object_part_logits - b.object_part_logits).abs().max() > 1e-3
    _close("part_obj_logits (official switch)", a.object_part_logits, ref_tensors["outputs"]["part_obj_logits"])
