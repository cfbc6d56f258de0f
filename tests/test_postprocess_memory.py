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
# written outputs, under an address-space limit; prints its peak RSS. Today's main needed 8.3 GB here.
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
@pytest.mark.xfail(reason="open: measured 2875 MB peak (random-noise image, box + Pred-All + write_outputs); the "
                          "post-processing stages alone peak at ~530 MB, the rest is not yet located (suspect: the "
                          "overlay legend with hundreds of present classes)", strict=False)
def test_thousand_objects_on_a_megapixel_image_stay_small(tmp_path):
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
