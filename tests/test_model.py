"""Model behaviour that needs no reference data: shapes, batch sizes, vocabularies, configs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from partclipseg.config import PartCLIPSegConfig, get_config
from partclipseg.errors import ConfigError
from partclipseg.model import build_model
from partclipseg.preprocess import preprocess
from partclipseg.tokenizer import get_tokenizer
from partclipseg.vocabulary import Vocabulary


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(get_config("tiny-fast")).eval()


def _run(model, images, names):
    vocab = Vocabulary.from_names(names)
    ids, mask = get_tokenizer()(list(vocab.prompts))
    pixels = preprocess(images, model.config.image_size)
    with torch.no_grad():
        return vocab, model(pixels, ids, vocab.text_to_part, vocab.text_to_object, mask)


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes_for_any_batch(tiny, batch):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 7 * i, 90 - 5 * i, 3), dtype=np.uint8) for i in range(batch)]  # non-square
    vocab, out = _run(tiny, images, ["dog's head", "dog's leg", "cat's head"])
    s = tiny.config.image_size
    assert out.logits.shape == (batch, vocab.num_decoder_classes, s, s)
    assert out.object_part_logits.shape == (batch, len(vocab) + 1, s, s)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.object_part_logits).all()


def test_vocabulary_of_one_class(tiny):
    image = np.full((30, 50, 3), 128, dtype=np.uint8)
    vocab, out = _run(tiny, [image], ["knife's handle"])
    assert vocab.num_decoder_classes == 3  # handle, knife, background
    assert out.logits.shape[:2] == (1, 3) and out.object_part_logits.shape[:2] == (1, 2)


def test_batch_rows_are_independent(tiny):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(2)]
    _, both = _run(tiny, images, ["dog's head", "cat's tail"])
    _, second = _run(tiny, images[1:], ["dog's head", "cat's tail"])
    torch.testing.assert_close(both.object_part_logits[1:], second.object_part_logits, atol=1e-5, rtol=0)


def test_clipseg_baseline_shapes():
    model = build_model(get_config("tiny-fast", architecture="clipseg")).eval()
    vocab = Vocabulary.from_names(["dog's head", "cat's head"])
    ids, mask = get_tokenizer()(list(vocab.baseline_prompts))
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 96, 96), ids, mask)
    assert out.logits.shape == (2, 3, 96, 96) and out.object_part_logits is None


def test_config_json_round_trip_and_validation(tmp_path):
    config = get_config("clipseg-rd64-refined")
    config.save(tmp_path / "config.json")
    assert PartCLIPSegConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ConfigError, match="extract_layers"):
        PartCLIPSegConfig(decoder=type(config.decoder)(extract_layers=(3, 6, 12)))
    with pytest.raises(ConfigError, match="unknown config preset"):
        get_config("huge")
    with pytest.raises(ConfigError, match="architecture"):
        PartCLIPSegConfig(architecture="segformer")


def test_non_square_pixel_values_are_refused(tiny):
    with pytest.raises(ValueError, match="square"):
        tiny.encode_image(torch.zeros(1, 3, 96, 64))


def test_attentions_of_selected_layers_only(tiny):
    vocab = Vocabulary.from_names(["dog's head", "cat's tail"])
    ids, mask = get_tokenizer()(list(vocab.prompts))
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        every = tiny(pixels, ids, vocab.text_to_part, vocab.text_to_object, mask, output_attentions=True)
        last = tiny(pixels, ids, vocab.text_to_part, vocab.text_to_object, mask, output_attentions=[2])
    assert last.decoder_attentions[0] is None and last.decoder_attentions[1] is None
    torch.testing.assert_close(last.decoder_attentions[2], every.decoder_attentions[2])
    torch.testing.assert_close(last.object_part_logits, every.object_part_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("patch_size", [16, 8])
def test_mask_head_fast_path_matches_layer_by_layer_convolutions(patch_size):
    """MaskHead runs its two transposed convolutions as matrix products on a channels-last map; values
    and gradients (input and every weight) equal torch's own layers applied one after another."""
    from partclipseg.model.decoder import MaskHead

    torch.manual_seed(0)
    head = MaskHead(8, patch_size, complex_head=True).double()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    reference = x
    for layer in head:  # nn.Sequential's own forward, layer by layer (torch's ConvTranspose2d kernels)
        reference = layer(reference)
    out = head(x)
    assert out.shape == (3, 1, head.output_side(5), head.output_side(6)) == reference.shape
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, *head.parameters()], grad)
    theirs = torch.autograd.grad(reference, [x, *head.parameters()], grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
