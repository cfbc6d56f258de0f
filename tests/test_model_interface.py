"""The model interface: a new architecture plugs into the Predictor unchanged; the CLIPSeg baseline's
protocol through the Predictor; from_pretrained on the base class; inspect_checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import partclipseg.config as config_module
from partclipseg.checkpoint import inspect_checkpoint
from partclipseg.config import get_config
from partclipseg.errors import CheckpointError, PartCLIPSegError
from partclipseg.model import (EncodedVocabulary, ImageFeatures, PartCLIPSeg, PartSegmentationModel,
                               SegmentationOutput, build_model, registry)
from partclipseg.postprocess import pred_all, upsample
from partclipseg.predictor import Predictor, as_predictor
from partclipseg.preprocess import preprocess
from partclipseg.tokenizer import get_tokenizer

VOCAB = ["dog's head", "dog's leg", "cat's head", "cat's tail"]


class DotProductModel(PartSegmentationModel):
    """A toy third architecture: per-pixel features dotted with mean token embeddings."""

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.text.vocab_size, 8)
        self.pixel = nn.Conv2d(3, 8, 1)

    def init_weights(self):
        nn.init.normal_(self.embed.weight, std=0.5)

    def prompts(self, vocabulary):
        return list(vocabulary.prompts)

    def encode_text_inputs(self, text):
        mask = text.attention_mask[..., None].float()
        emb = (self.embed(text.input_ids) * mask).sum(1) / mask.sum(1)
        emb = torch.cat([emb, emb.new_zeros(1, emb.shape[1])])  # background last
        return EncodedVocabulary(text.vocabulary, emb, text.text_to_part, text.text_to_object)

    def encode_image(self, pixel_values, output_hidden_states=False):
        return ImageFeatures([self.pixel(pixel_values)])

    def decode(self, image_features, encoded, *, chunk_size=None, output_attentions=False, output_hidden_states=False):
        logits = torch.einsum("bcij,nc->bnij", image_features.activations[0], encoded.class_embeddings)
        p = encoded.vocabulary.num_parts
        specific = logits[:, encoded.text_to_part] + logits[:, p + encoded.text_to_object]
        return SegmentationOutput(logits, torch.cat([specific, logits[:, -1:]], dim=1), encoded.class_embeddings)

    def attention_map(self, image_features, encoded, class_index):
        b, g = image_features.activations[0].shape[0], 4
        return torch.rand(b, g * g, g * g)


@pytest.fixture()
def dot_architecture(monkeypatch):
    monkeypatch.setattr(config_module, "ARCHITECTURES", (*config_module.ARCHITECTURES, "dot"))
    registry.register_architecture("dot")(DotProductModel)
    yield DotProductModel
    registry._ARCHITECTURES.pop("dot")


def _pixels(model, image):
    return preprocess([image], model.config.image_size, mean=model.config.image_mean, std=model.config.image_std)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def test_a_new_architecture_works_with_the_unchanged_predictor(dot_architecture, image, tmp_path):
    torch.manual_seed(0)
    model = build_model(get_config("tiny-fast", architecture="dot"))
    assert isinstance(model, DotProductModel) and model.model_type == "dot"
    predictor = Predictor(model)
    predictor.set_image(image)
    result = predictor.predict(VOCAB)
    # the Predictor ran the protocol on this model's own decode output
    encoded = predictor.encode_vocabulary(VOCAB)
    with torch.no_grad():
        out = model.decode(model.encode_image(_pixels(model, image)), encoded)
    expected = pred_all(out.logits[0], out.object_part_logits[0], encoded.text_to_object,
                        encoded.vocabulary.num_parts, image.shape[:2])
    np.testing.assert_array_equal(result.part_labels, expected.part_labels.numpy())
    prompted = predictor.predict(VOCAB, point=(10, 10), attention_for=["dog's head"])
    assert prompted.selected_object in ("dog", "cat") and prompted.attention["dog's head"].shape == image.shape[:2]
    # saving and loading go through the registry
    model.save_pretrained(tmp_path / "dot")
    loaded = PartSegmentationModel.from_pretrained(tmp_path / "dot")
    assert type(loaded) is DotProductModel
    torch.testing.assert_close(loaded.embed.weight, model.embed.weight, atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="not a PartCLIPSeg"):
        PartCLIPSeg.from_pretrained(tmp_path / "dot")


def test_baseline_protocol_through_the_predictor(image):
    torch.manual_seed(0)
    model = build_model(get_config("tiny-fast", architecture="clipseg"))
    predictor = as_predictor(model)
    predictor.set_image(image)
    result = predictor.predict(VOCAB, return_scores=True, attention_for=["cat's tail"])
    encoded = predictor.encode_vocabulary(VOCAB)
    text = model.tokenize_vocabulary(encoded.vocabulary, get_tokenizer())  # the training call shape
    with torch.no_grad():
        out = model(_pixels(model, image), **text.forward_kwargs())
    assert out.object_part_logits is None and out.logits.shape[1] == len(VOCAB) + 1
    scores = torch.sigmoid(upsample(out.logits[0], image.shape[:2]))
    np.testing.assert_array_equal(result.part_labels, scores.argmax(0).numpy())  # plain argmax over T+1
    assert result.attention["cat's tail"].shape == image.shape[:2]
    oracle = predictor.predict(VOCAB, protocol="oracle-obj", object_name="cat")
    assert set(np.unique(oracle.part_labels)) <= {2, 3, 4}  # cat's classes or background
    with pytest.raises(PartCLIPSegError, match="no object head"):
        predictor.predict(VOCAB, point=(3, 3))


def test_inspect_checkpoint_answers_for_every_kind(tmp_path):
    model = build_model(get_config("tiny-fast"))
    model.save_pretrained(tmp_path / "ours")
    assert inspect_checkpoint(tmp_path / "ours").kind == "partclipseg"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"vision_config": {}, "text_config": {}}')
    assert inspect_checkpoint(tmp_path / "hf").kind == "hf-clipseg"
    torch.save({"model": model.state_dict()}, tmp_path / "x.pth")
    assert inspect_checkpoint(tmp_path / "x.pth").kind == "official"
    with pytest.raises(CheckpointError, match="has no config.json"):
        inspect_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="pass the folder"):
        inspect_checkpoint(tmp_path / "ours" / "model.safetensors")
    with pytest.raises(CheckpointError, match="model not found"):
        inspect_checkpoint(tmp_path / "nothing", download=False)
