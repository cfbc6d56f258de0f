"""Post-processing in bounded memory at image size, for objects as well as parts (issue 9, defect 4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from partclipseg import postprocess as pp

# A subprocess: tiny model, 1000 distinct objects (one part each), a 1000x1000 image, Pred-All and the
# written outputs, under an address-space limit; prints its peak RSS. An earlier main needed 8.3 GB here.
CHILD = r"""
import json, resource, sys
import numpy as np, torch
limit = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from partclipseg.config import get_config
from partclipseg.model import build_model
from partclipseg.outputs import write_outputs
from partclipseg.predictor import Predictor
from partclipseg.vocabulary import Vocabulary
torch.manual_seed(0)
predictor = Predictor(build_model(get_config("tiny-fast")).eval())
vocab = Vocabulary.parse([f"object{i}'s part" for i in range(1000)])
predictor.set_image(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8))
for kwargs in ({"box": (100, 100, 900, 900)}, {}):
    result = predictor.predict(vocab, **kwargs)
write_outputs(result, sys.argv[2], "x")
hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
print(json.dumps({"peak_rss_mb": hwm}))
"""


@pytest.mark.slow
def test_thousand_objects_on_a_megapixel_image_stay_small(tmp_path):
    """Was 2872 MB: the box prompt's mean object scores gathered each chunk's pixels into a new tensor
    and kept a small result above it in the C heap, so the heap grew by a chunk per chunk."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", CHILD, "6144", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    assert peak < 1500, peak


def _logits(c: int, s: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c, s, s, generator=g) * 3
    x[3] = x[1]  # exact ties: the first index wins
    x[5] = 40.0  # saturated sigmoid: 1.0 in several channels
    x[6] = 40.0
    return x


@pytest.mark.parametrize("budget", [1, 3 * 4 * 37 * 53, 10**9])
def test_chunked_decisions_equal_the_whole_tensor_ones(monkeypatch, budget):
    """Labels are identical whatever the chunk size (one channel at a time ... all at once)."""
    monkeypatch.setattr(pp, "CHUNK_BYTES", budget)
    size = (37, 53)
    num_parts, num_objects = 4, 5
    logits = _logits(num_parts + num_objects + 1)
    t = 12
    part_logits = _logits(t + 1, seed=1)
    to_object = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4])
    whole = pp.pred_all(logits, part_logits, to_object, num_parts, size, keep_scores=True)
    chunked = pp.pred_all(logits, part_logits, to_object, num_parts, size, keep_scores=False)
    for name in ("part_labels", "object_labels", "generalized_part_labels", "part_confidence"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name
    assert torch.equal(whole.object_labels, whole.object_scores.argmax(0))
    for objects in ([2], [0, 3]):
        whole = pp.object_conditioned(logits, part_logits, to_object, num_parts, size, objects, keep_scores=True)
        chunked = pp.object_conditioned(logits, part_logits, to_object, num_parts, size, objects)
        for name in ("part_labels", "object_labels", "generalized_part_labels", "part_confidence"):
            assert torch.equal(getattr(whole, name), getattr(chunked, name)), name
    value, index = pp.chunked_argmax(logits, size)
    full = pp.upsample(logits, size).sigmoid()
    assert torch.equal(index, full.argmax(0)) and torch.equal(value, full.max(0).values)


def test_score_resized_logits_are_resized_in_chunks_like_the_whole_tensor(monkeypatch):
    """``resize_scores`` maps (PartCATSeg): chunked protocols give what resizing every score map at once gave."""
    size = (61, 83)  # over 4096 pixels: torch's kernel gives each channel the same numbers in any chunk
    maps = _logits(13, seed=2)
    whole = torch.logit(pp.upsample(maps.sigmoid(), size).clamp_(0.0, 1.0))  # the former Predictor step
    lazy = pp.ScoreResizedLogits(maps)
    assert lazy.shape == maps.shape and len(lazy[2:5]) == 3
    for channels in ([4, 1], [0, 7, 3], slice(2, 9)):
        assert torch.equal(pp.upsample(lazy[channels], size), whole[channels]), channels
    to_part = torch.tensor([0, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    to_object = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4])
    region = torch.zeros(size, dtype=torch.bool)
    region[5:30, 7:40] = True
    for budget in (1, 10**9):
        monkeypatch.setattr(pp, "CHUNK_BYTES", budget)
        for keep in (False, True):
            a = pp.pred_all_classes(lazy, to_part, to_object, 4, 5, size, keep_scores=keep)
            b = pp.pred_all_classes(whole, to_part, to_object, 4, 5, size, keep_scores=keep)
            for name in ("part_labels", "object_labels", "generalized_part_labels", "part_confidence"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (budget, keep, name)
        assert torch.equal(pp.mean_scores_inside(lazy, size, region), whole.sigmoid()[:, region].mean(1))
        torch.testing.assert_close(pp.scores_at(lazy, size, 11, 17), whole.sigmoid()[:, 11, 17], rtol=0, atol=1e-6)
        assert torch.equal(pp.chunked_argmax(lazy, size)[1], whole.sigmoid().argmax(0))


def test_lazy_logits_index_like_the_tensor_they_stand_for():
    from partclipseg.model.base import LazyLogits

    full = torch.randn(2, 7, 6, 5)
    calls = []

    def compute(image, channels):
        calls.append(channels.tolist())
        return full[image, channels].clone()

    lazy = LazyLogits(compute, full.shape, full.device)
    assert lazy.shape == (2, 7, 6, 5) and not calls
    one = lazy[1]
    assert one.shape == (7, 6, 5) and len(one[2:-1]) == 4
    assert torch.equal(one[2:-1].materialize(), full[1, 2:-1])
    assert torch.equal(one[torch.tensor([6, 0, 3])][1:].materialize(), full[1, [0, 3]])
    assert torch.equal(one[torch.arange(7) % 2 == 0].materialize(), full[1, ::2])
    assert torch.equal(one[:, :4, :3][[1, 5]].materialize(), full[1, [1, 5], :4, :3])
    assert one[3:5, :2, :2].shape == (2, 2, 2)
    assert calls[-1] == [3, 4] or calls[-1] == [1, 5]
    assert torch.equal(lazy.materialize(), full)
    with pytest.raises(IndexError):
        lazy[0][3]  # one channel as a 0-d selection: use a slice
    with pytest.raises(IndexError):
        lazy[0][:, 1:, :]  # crops start at the top-left corner


def _tiny_partclipseg(name="tiny-fast"):
    from partclipseg.config import get_config
    from partclipseg.model import build_model

    torch.manual_seed(0)
    return build_model(get_config(name)).eval()


def test_chunked_decode_equals_unchunked_decode():
    """The decoder and both heads in chunks of classes give the one-pass logits (to float rounding: the
    matrix products see other batch sizes) and the same label maps."""
    import numpy as np

    from partclipseg.predictor import Predictor
    from partclipseg.tokenizer import get_tokenizer
    from partclipseg.vocabulary import Vocabulary

    model = _tiny_partclipseg()
    vocab = Vocabulary.parse(["dog's head", "dog's leg", "cat's head", "cat's tail", "car's wheel", "bird's beak"])
    images = [np.random.default_rng(i).integers(0, 256, (45, 61, 3), dtype=np.uint8) for i in range(2)]
    with torch.inference_mode():
        encoded = model.encode_vocabulary(vocab, get_tokenizer())
        features = model.encode_image(model.preprocess(images))
        whole = model.decode(features, encoded)
        for chunk in (1, 2, 5):
            part = model.decode(features, encoded, chunk_size=chunk)
            assert part.logits.shape == whole.logits.shape
            torch.testing.assert_close(part.logits, whole.logits, atol=1e-6, rtol=0)
            torch.testing.assert_close(part.object_part_logits, whole.object_part_logits, atol=1e-6, rtol=0)
    results = []
    for chunk in (None, 2):
        predictor = Predictor(model, chunk_size=chunk)
        predictor.set_image(images[0])
        results.append(predictor.predict(vocab))
    for name in ("part_labels", "object_labels", "generalized_part_labels"):
        np.testing.assert_array_equal(getattr(results[0], name), getattr(results[1], name))


def test_lazy_decode_gives_the_eager_results(monkeypatch):
    """Above ``EAGER_LOGITS_BYTES`` PartCLIPSeg keeps token-grid maps (``LazyLogits``); every protocol and
    prompt gives the labels of the eager decode, and the maps equal the eager ones to float rounding."""
    import numpy as np

    import partclipseg.model.partclipseg as partclipseg_module
    from partclipseg.model.base import LazyLogits
    from partclipseg.predictor import Predictor
    from partclipseg.vocabulary import Vocabulary

    model = _tiny_partclipseg("toy")
    vocab = Vocabulary.parse(["dog's head", "dog's leg", "cat's head", "cat's tail", "car's wheel", "bird's beak"])
    image = np.random.default_rng(3).integers(0, 256, (47, 66, 3), dtype=np.uint8)
    mask = np.zeros(image.shape[:2], bool)
    mask[10:40, 5:50] = True
    prompts = [{}, {"box": (5, 5, 60, 40)}, {"point": (30, 20)}, {"object_mask": mask},
               {"object_name": "cat"}, {"object_name": ["dog", "car"], "object_mask": mask}]
    eager, lazy = Predictor(model, chunk_size=4), Predictor(model, chunk_size=4)
    eager.set_image(image)
    lazy.set_image(image)
    monkeypatch.setattr(partclipseg_module, "EAGER_LOGITS_BYTES", 0)
    encoded = lazy.encode_vocabulary(vocab)
    lazy_out = lazy._decode(encoded)
    monkeypatch.undo()
    eager_out = eager._decode(eager.encode_vocabulary(vocab))
    assert isinstance(lazy_out.logits, LazyLogits) and isinstance(lazy_out.object_part_logits, LazyLogits)
    assert isinstance(eager_out.logits, torch.Tensor)
    torch.testing.assert_close(lazy_out.logits.materialize(), eager_out.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(lazy_out.object_part_logits.materialize(), eager_out.object_part_logits, atol=1e-6,
                               rtol=0)
    for kwargs in prompts:
        a, b = lazy.predict(vocab, return_scores=True, **kwargs), eager.predict(vocab, return_scores=True, **kwargs)
        for name in ("part_labels", "object_labels", "generalized_part_labels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{kwargs} {name}")
        np.testing.assert_allclose(a.part_scores, b.part_scores, atol=1e-6)
        assert (a.mode, a.selected_object, a.region_rule) == (b.mode, b.selected_object, b.region_rule)
        c = lazy.predict(vocab, **kwargs)  # without scores: the bounded-memory path
        np.testing.assert_array_equal(c.part_labels, b.part_labels, err_msg=str(kwargs))


@pytest.mark.parametrize("source,size", [((12, 12), (61, 83)), ((9, 14), (200, 37)), ((24, 24), (24, 24)),
                                         ((30, 20), (7, 11)), ((1, 5), (13, 40))])
def test_scores_at_reads_four_source_pixels_like_the_full_bilinear_resize(source, size):
    """One pixel's scores without resizing at image size: torch's bilinear numbers, at every pixel, for
    enlarging, shrinking, equal and one-row maps, plain logits, lazy maps and ``ScoreResizedLogits``."""
    from partclipseg.model.base import LazyLogits

    g = torch.Generator().manual_seed(sum(source) + sum(size))
    maps = 4 * torch.randn(7, *source, generator=g)
    full = pp.upsample(maps, size).sigmoid()
    resized = pp.upsample(pp.ScoreResizedLogits(maps), size).sigmoid()
    lazy = LazyLogits(lambda i, channels: maps[channels], (1, *maps.shape), "cpu")[0]
    got = torch.stack([torch.stack([pp.scores_at(maps, size, r, c) for c in range(size[1])], -1)
                       for r in range(size[0])], -2)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-5)
    for r, c in [(0, 0), (size[0] - 1, size[1] - 1), (size[0] // 2, size[1] // 3)]:
        torch.testing.assert_close(pp.scores_at(lazy, size, r, c), full[:, r, c], rtol=0, atol=1e-5)
        torch.testing.assert_close(pp.scores_at(pp.ScoreResizedLogits(maps), size, r, c), resized[:, r, c],
                                   rtol=0, atol=1e-5)
