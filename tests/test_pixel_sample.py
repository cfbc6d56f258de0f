"""Training speed settings of the toy recipe (not official): the loss on sampled pixels
(``loss.pixel_stride``, ``PixelSample``, ``MaskHead`` on sampled pixels), the resized-image cache
(``cache_resized``) and the checks that refuse them where they do not apply."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from partclipseg.config import get_config
from partclipseg.data.toyworld import generate_toy_world
from partclipseg.errors import ConfigError
from partclipseg.losses import LossConfig, PixelSample, build_targets, partclipseg_loss, resize_labels
from partclipseg.model import build_model
from partclipseg.model.decoder import MaskHead
from partclipseg.tokenizer import get_tokenizer
from partclipseg.train import load_recipe, train
from partclipseg.train.data import TrainDataset
from partclipseg.vocabulary import Vocabulary
from train_helpers import full_and_killed_runs, losses


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy"), n_train=6, n_val=2, size_range=(96, 160), seed=5)


@pytest.mark.parametrize("complex_head, stride", [(True, 4), (True, 2), (False, 4), (False, 16)])
def test_mask_head_on_sampled_pixels_equals_the_full_map_there(complex_head, stride):
    torch.manual_seed(0)
    head = MaskHead(8, 16, complex_head).double()
    x = torch.randn(5, 8, 3, 3, dtype=torch.float64)
    full = head(x)
    for row, col in [(0, 0), (stride - 1, 0), (1 % stride, stride - 1)]:
        sampled = head(x, (stride, row, col))
        assert sampled.shape == (5, 1, 48 // stride, 48 // stride)
        torch.testing.assert_close(sampled, full[..., row::stride, col::stride], rtol=0, atol=1e-12)
    # gradients reach the weights the sampled pixels read (and only the taps at the offset in the last conv)
    head.zero_grad()
    head(x, (stride, 1 % stride, 0)).sum().backward()
    last = head[-1].weight.grad
    taps = torch.zeros_like(last, dtype=torch.bool)
    taps[:, :, 1 % stride::stride, 0::stride] = True
    assert last[taps].abs().sum() > 0 and last[~taps].abs().sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        head(x, (3, 0, 0))
    with pytest.raises(ValueError, match="does not fit"):
        head(x, (stride, stride, 0))


def _partcatseg_toy():
    from partclipseg.model.registry import architecture_class

    return build_model(architecture_class("partcatseg").preset_config("partcatseg-toy", None))


def _toy2_model_and_text():
    torch.manual_seed(0)
    model = build_model(get_config("toy2")).double().eval()
    text = model.tokenize_vocabulary(Vocabulary.from_benchmark("toy_world", "test"), get_tokenizer())
    return model, text


def test_partclipseg_heads_on_sampled_pixels_equal_the_full_logits_there():
    model, text = _toy2_model_and_text()
    x = torch.randn(3, 3, 192, 192, dtype=torch.float64)
    sample = PixelSample(4, torch.tensor([[0, 3], [2, 1], [3, 3]]))
    with torch.no_grad():
        full = model(x, **text.forward_kwargs())
        sampled = model(x, **text.forward_kwargs(), pixel_sample=sample)
    assert sampled.logits.shape == (3, full.logits.shape[1], 48, 48)
    for name in ("logits", "object_part_logits"):
        a, b = getattr(sampled, name), getattr(full, name)
        for n, (row, col) in enumerate([(0, 3), (2, 1), (3, 3)]):  # each image at its own offset
            torch.testing.assert_close(a[n], b[n, :, row::4, col::4], rtol=0, atol=1e-12)


def _labels(b: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    part = torch.randint(0, 6, (b, size, size), generator=g)
    part[torch.rand(b, size, size, generator=g) < 0.5] = -1  # half background (unlabelled)
    obj = torch.where(part >= 0, part // 2, -1)  # parts 0-1 of object 0, 2-3 of 1, 4-5 of 2
    return part, obj


def test_sampled_targets_are_the_labels_at_the_sampled_pixels_and_the_loss_is_unbiased():
    t2p, t2o = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    part, obj = _labels(2, 16, 0)
    targets = build_targets(part, obj, t2p, t2o, torch.arange(3), 16)
    sample = PixelSample(4, torch.tensor([[1, 2], [3, 0]]))
    picked = targets.sampled(sample)
    assert torch.equal(picked.tgt[0], targets.tgt[0, 1::4, 2::4]) and torch.equal(picked.obj_mask[1],
                                                                                   targets.obj_mask[1, 3::4, 0::4])
    # the object term is a pixel mean: its mean over the 16 offsets is the full term, exactly
    g = torch.Generator().manual_seed(1)
    logits, os_logits = torch.randn(2, 2 + 3 + 1, 16, 16, generator=g), torch.randn(2, 7, 16, 16, generator=g)
    config = LossConfig(use_attention=False, background_weight=0.5)

    class Out:
        def __init__(self, lg, os_lg):
            self.logits, self.object_part_logits, self.decoder_attentions = lg, os_lg, None

    full = partclipseg_loss(Out(logits, os_logits), targets, config)["objects"]
    terms = []
    for a in range(4):
        for b in range(4):
            s = PixelSample(4, torch.tensor([[a, b], [a, b]]))
            terms.append(partclipseg_loss(Out(s.select(logits), s.select(os_logits)), targets.sampled(s), config)["objects"])
    torch.testing.assert_close(torch.stack(terms).mean(), full, rtol=1e-6, atol=0)
    assert len({round(float(t), 6) for t in terms}) > 1  # each offset alone differs: a sample, not a copy
    with pytest.raises(ValueError, match="multiple of the pixel stride"):
        targets.sampled(PixelSample(3, torch.zeros(2, 2, dtype=torch.long)))


def test_decoding_in_class_chunks_gives_the_same_sampled_logits():
    model, text = _toy2_model_and_text()
    x = torch.randn(2, 3, 192, 192, dtype=torch.float64)
    sample = PixelSample(4, ((1, 2), (3, 0)))
    with torch.no_grad():
        features = model.encode_image(x)
        embeddings = model.class_embeddings(model.encode_text(text.input_ids, text.attention_mask))
        whole = model.decode_classes(features, embeddings, text.text_to_part, text.text_to_object, pixel_sample=sample)
        chunked = model.decode_classes(features, embeddings, text.text_to_part, text.text_to_object, chunk_size=5,
                                       pixel_sample=sample)
        full = model.decode_classes(features, embeddings, text.text_to_part, text.text_to_object)
    for name in ("logits", "object_part_logits"):
        assert getattr(chunked, name).shape == getattr(whole, name).shape
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=0, atol=1e-12)
        torch.testing.assert_close(getattr(whole, name), sample.select(getattr(full, name)), rtol=0, atol=1e-12)


def test_model_loss_with_a_pixel_sample_reads_the_labels_at_the_same_pixels():
    model, text = _toy2_model_and_text()
    info_objects = 8
    part = torch.full((2, 192, 192), -1)
    obj = torch.full((2, 192, 192), -1)
    part[:, 40:120, 30:90], obj[:, 40:150, 30:150] = 0, 0
    x = torch.randn(2, 3, 192, 192, dtype=torch.float64)
    sample = PixelSample(4, torch.tensor([[2, 1], [0, 3]]))
    config = LossConfig(use_attention=False, background_weight=0.5)
    with torch.no_grad():
        out = model(x, **text.forward_kwargs(), pixel_sample=sample)
        full = model(x, **text.forward_kwargs())
        got = model.loss(out, part, obj, text, torch.arange(info_objects), config, pixel_sample=sample)
        targets = build_targets(part, obj, text.text_to_part, text.text_to_object, torch.arange(info_objects), 192)
        full.logits, full.object_part_logits = sample.select(full.logits), sample.select(full.object_part_logits)
        want = partclipseg_loss(full, targets.sampled(sample), config)
    for key in ("objects", "object_specific_parts", "generalized_parts", "total"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="run forward with the same pixel_sample"):  # full logits, sampled loss
        with torch.no_grad():
            model.loss(model(x, **text.forward_kwargs()), part, obj, text, torch.arange(info_objects), config,
                       pixel_sample=sample)


def test_pixel_stride_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="pixel_stride must be an integer >= 1"):
        LossConfig(pixel_stride=0)
    with pytest.raises(ValueError, match="attention losses need the whole map"):
        LossConfig(pixel_stride=4, use_attention=True)
    with pytest.raises(ConfigError, match="loss.pixel_stride needs an architecture"):
        load_recipe("toy_world", ["root=/data", "architecture=clipseg", "supervision=parts",
                                  "loss.pixel_stride=4"]).validate()
    with pytest.raises(ConfigError, match="attention losses need the whole map"):
        load_recipe("toy_world", ["root=/data", "loss.use_attention=true", "loss.pixel_stride=4"])
    with pytest.raises(ConfigError, match="cache_resized keeps images at the processing size"):
        load_recipe("toy_world", ["root=/data", "cache_resized=true", "augmentation=resize_flip"]).validate()
    with pytest.raises(ConfigError, match="cache_resized keeps images at the processing size"):
        load_recipe("toy_world", ["root=/data", "cache_resized=true", "color_aug=true"]).validate()
    with pytest.raises(ConfigError, match="cache_resized must be true or false"):
        load_recipe("toy_world", ["root=/data", "cache_resized=1"]).validate()
    # keys that are checked together are applied together, in any order
    for pair in (["loss.use_attention=true", "loss.pixel_stride=1"], ["loss.pixel_stride=1", "loss.use_attention=true"]):
        assert load_recipe("toy_world", ["root=/data", *pair]).loss.use_attention
    with pytest.raises(ConfigError, match="cannot train on sampled pixels"):
        _partcatseg_toy().check_pixel_stride(4)
    with pytest.raises(ValueError, match="pixel offsets must lie in 0..3"):
        PixelSample(4, ((0, 4),))


class _Counting:
    """Counts the reader's decodes."""

    def __init__(self, reader):
        self.reader, self.calls = reader, 0

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def load_train_sample(self, record):
        self.calls += 1
        return self.reader.load_train_sample(record)


def test_cached_samples_decode_once_and_match_the_uncached_pipeline(toy_root):
    model = build_model(get_config("toy2"))
    plain = TrainDataset(load_recipe("toy_world", [f"root={toy_root}", "cache_resized=false"]),
                         model.train_preprocessor("RGB"))
    cached = TrainDataset(load_recipe("toy_world", [f"root={toy_root}", "cache_resized=true"]),
                          model.train_preprocessor("RGB"))
    cached.reader = _Counting(cached.reader)
    flipped = 0
    for position in range(12):
        index = position % len(plain)
        a, b = plain[(position, index)], cached[(position, index)]
        torch.testing.assert_close(b.pixel_values, a.pixel_values, rtol=0, atol=0)
        assert b.part_labels.shape == (192, 192) and b.part_labels.dtype == torch.int64
        _, raw_part, raw_obj = plain._load(index)  # the remapped labels before the flip
        want = [resize_labels(torch.from_numpy(x), (192, 192)) for x in (raw_part, raw_obj)]
        if np.random.default_rng([0, position]).random() < 0.5:  # this sample is flipped (toy_world: seed 0)
            flipped += 1
            want = [x.flip(-1) for x in want]  # resized, then flipped
            # the uncached pipeline flips first: the nearest picks may shift by one pixel
            assert (resize_labels(a.part_labels, (192, 192)) != b.part_labels).float().mean() < 0.05
        else:
            assert torch.equal(resize_labels(a.part_labels, (192, 192)), b.part_labels)
        assert torch.equal(b.part_labels, want[0]) and torch.equal(b.object_labels, want[1])
    assert 0 < flipped < 12
    assert cached.reader.calls == len(cached)  # 12 samples of 6 records: each decoded once


def test_a_killed_run_with_pixel_sampling_and_the_cache_resumes_exactly(toy_root, tmp_path, monkeypatch):
    init = tmp_path / "init"
    from partclipseg.weights import save_pretrained

    config = get_config("toy2")
    config.image_size = 64
    torch.manual_seed(0)
    save_pretrained(build_model(config), init)
    args = [f"root={toy_root}", f"init={init}", "image_size=64", "iterations=6", "batch_size=2", "log_period=1",
            "checkpoint_period=3", "eval_period=1000", "num_workers=0", "loss.pixel_stride=4", "cache_resized=true"]
    full_and_killed_runs("toy_world", args, tmp_path, monkeypatch, 5)
    assert losses(tmp_path / "killed") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 6
    drawn = []
    real_draw = PixelSample.for_positions

    def record(stride, positions, seed):
        sample = real_draw(stride, positions, seed)
        drawn.append((list(positions), sample.offsets))
        return sample

    monkeypatch.setattr(PixelSample, "for_positions", staticmethod(record))
    train(load_recipe("toy_world", [*args, "iterations=3"]), tmp_path / "short", progress=False)
    assert [p for p, _ in drawn] == [[0, 1], [2, 3], [4, 5]]
    offsets = [pair for _, o in drawn for pair in o]
    assert len(offsets) == 6 and all(0 <= v < 4 for pair in offsets for v in pair)
    assert len(set(offsets)) > 1  # a new draw per sample
    again = real_draw(4, [4, 5], 0).offsets  # a function of (seed, position): the same pixels every time
    assert again == drawn[2][1] and real_draw(4, [4, 5], 1).offsets != again


def test_a_stride_the_mask_head_cannot_sample_is_refused_before_training(toy_root, tmp_path):
    with pytest.raises(ConfigError, match="pixel_stride=3 does not divide the mask head's last 4 x 4"):
        train(load_recipe("toy_world", [f"root={toy_root}", "init=random:toy2", "image_size=64", "iterations=1",
                                        "loss.pixel_stride=3", "num_workers=0"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
